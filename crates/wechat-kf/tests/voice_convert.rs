//! Voice-note conversion (feature `voice`): format detection, the WAV writer, clear errors when
//! no converter is available, and real conversions of `fixtures/voice/sine440-2s.amr` (a 2 s,
//! 440 Hz sine we encoded; see the README there) checked by decoding the output.
//!
//! Conversions through ffmpeg need `ffmpeg` on `PATH`: without it those tests print "skipped:
//! ffmpeg not found" and pass, unless `WECHAT_KF_CI=1`, where a missing ffmpeg is a failure.
//! SILK tests need the `voice-silk` feature.
#![cfg(feature = "voice")]

use std::time::Duration;

use wechat_kf::voice::{
    Converter, Target, VoiceError, VoiceFormat, WavInfo, convert, detect_format, pcm_to_wav,
};

const AMR: &[u8] = include_bytes!("fixtures/voice/sine440-2s.amr");

fn ffmpeg_available() -> bool {
    wechat_kf_test_support::require_command("ffmpeg")
}

/// Writes an executable stand-in for ffmpeg. A child `sh` writes it, so this process never holds
/// a writable descriptor to it: written here, a test running in parallel could fork with that
/// descriptor inherited, and executing the script would then fail with ETXTBSY ("Text file busy").
#[cfg(unix)]
fn fake_ffmpeg(dir: &std::path::Path, script: &str) -> std::path::PathBuf {
    let path = dir.join("ffmpeg");
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            r#"printf '%s' "$1" > "$2" && chmod 755 "$2""#,
            "sh",
            script,
        ])
        .arg(&path)
        .status()
        .expect("sh runs");
    assert!(status.success(), "writing the fake ffmpeg failed");
    path
}

fn samples(wav: &[u8]) -> (WavInfo, Vec<i16>) {
    let info = WavInfo::parse(wav).expect("a WAV header");
    let data = &wav[info.data_offset..info.data_offset + info.data_len];
    let samples = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    (info, samples)
}

fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

/// Zero crossings per second divided by two: the frequency of a pure tone.
fn tone_hz(samples: &[i16], sample_rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 / (samples.len() as f64 / f64::from(sample_rate)) / 2.0
}

fn assert_is_the_test_tone(wav: &[u8], sample_rate: u32) {
    let (info, samples) = samples(wav);
    assert_eq!(info.sample_rate, sample_rate);
    assert_eq!((info.channels, info.bits_per_sample), (1, 16));
    let duration = info.duration_secs();
    assert!((1.8..=2.2).contains(&duration), "duration {duration} s");
    let level = rms(&samples);
    assert!(level > 1000.0, "silent output: rms {level}");
    let hz = tone_hz(&samples, sample_rate);
    assert!((396.0..=484.0).contains(&hz), "tone {hz} Hz");
}

// ---- without any converter --------------------------------------------------------------------

#[test]
fn voice_notes_are_recognised_by_their_first_bytes() {
    assert_eq!(detect_format(AMR), Some(VoiceFormat::AmrNb));
    assert_eq!(detect_format(b"#!AMR-WB\n\x04"), Some(VoiceFormat::AmrWb));
    assert_eq!(detect_format(b"#!SILK_V3\x0c\x00"), Some(VoiceFormat::Silk));
    assert_eq!(
        detect_format(b"\x02#!SILK_V3\x0c\x00"),
        Some(VoiceFormat::Silk)
    );
    for other in [
        &b""[..],
        b"#!AM",
        b"{\"errcode\":40007,\"errmsg\":\"invalid media_id\"}",
        b"RIFF\0\0\0\0WAVE",
        b"\x03#!SILK_V3",
    ] {
        assert_eq!(detect_format(other), None, "{other:?}");
    }
    assert_eq!(VoiceFormat::Silk.extension(), "silk");
    assert_eq!(VoiceFormat::AmrNb.to_string(), "AMR-NB");
}

#[test]
fn the_wav_writer_produces_a_header_any_reader_accepts() {
    let pcm: Vec<u8> = (0..16_000i16)
        .flat_map(|i| (i.wrapping_mul(7)).to_le_bytes())
        .collect();
    let wav = pcm_to_wav(&pcm, 16_000, 1);
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(
        u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize,
        wav.len() - 8
    );
    let info = WavInfo::parse(&wav).unwrap();
    assert_eq!(info.data_offset, 44);
    assert_eq!(info.data_len, pcm.len());
    assert_eq!(info.frames(), 16_000);
    assert!((info.duration_secs() - 1.0).abs() < 1e-9);
    assert_eq!(&wav[44..], &pcm[..]);
    // An odd trailing byte is not half a sample.
    assert_eq!(
        WavInfo::parse(&pcm_to_wav(&[1, 2, 3], 8000, 1))
            .unwrap()
            .data_len,
        2
    );
    assert!(WavInfo::parse(b"RIFF....WAVEjunk").is_none());
    assert!(WavInfo::parse(AMR).is_none());
}

#[tokio::test]
async fn bytes_that_are_no_voice_note_are_refused_before_any_converter_runs() {
    let converter = Converter::new().ffmpeg("/nonexistent/ffmpeg");
    let error = converter
        .convert(
            br#"{"errcode":40007,"errmsg":"invalid media_id"}"#,
            Target::Wav,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, VoiceError::UnknownFormat), "{error}");
    assert!(error.to_string().contains("#!AMR"));
}

#[tokio::test]
async fn a_missing_ffmpeg_is_a_clear_error_naming_what_to_install() {
    let converter = Converter::new().ffmpeg("/nonexistent/bin/ffmpeg");
    for target in [Target::Wav, Target::OggOpus, Target::Mp3, Target::Pcm16] {
        let error = converter.convert(AMR, target).await.unwrap_err();
        match &error {
            VoiceError::ConverterUnavailable { converter, install } => {
                assert!(converter.contains("/nonexistent/bin/ffmpeg"), "{converter}");
                assert!(install.contains("apt-get install ffmpeg"), "{install}");
            }
            other => panic!("{target:?}: {other}"),
        }
        assert!(error.to_string().contains("ffmpeg"));
    }
}

#[cfg(not(feature = "voice-silk"))]
#[tokio::test]
async fn silk_without_the_voice_silk_feature_says_how_to_get_it() {
    let error = convert(b"\x02#!SILK_V3\x0c\x00abc", Target::Wav)
        .await
        .unwrap_err();
    match error {
        VoiceError::ConverterUnavailable { install, .. } => {
            assert!(install.contains("voice-silk") && install.contains("voice_format = 0"));
        }
        other => panic!("{other}"),
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_converter_that_hangs_is_stopped_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(dir.path(), "#!/bin/sh\nexec sleep 30\n");
    let converter = Converter::new()
        .ffmpeg(&fake)
        .timeout(Duration::from_millis(300));
    let error = converter.convert(AMR, Target::Wav).await.unwrap_err();
    assert!(matches!(error, VoiceError::Timeout(_)), "{error}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_converter_that_fails_reports_its_error_output() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_ffmpeg(
        dir.path(),
        "#!/bin/sh\necho 'Unknown encoder libopus' >&2\nexit 1\n",
    );
    let error = Converter::new()
        .ffmpeg(&fake)
        .convert(AMR, Target::OggOpus)
        .await
        .unwrap_err();
    match error {
        VoiceError::ConversionFailed { message } => {
            assert!(message.contains("Unknown encoder libopus"), "{message}")
        }
        other => panic!("{other}"),
    }
}

/// The converter is a child process fed customer input: it gets nothing of the service's
/// environment (the WeChat secret, API tokens, the EncodingAESKey live there), only `PATH`.
#[cfg(unix)]
#[tokio::test]
async fn the_converter_runs_with_nothing_of_the_environment_but_path() {
    // Variables every test process has: cargo sets them, and HOME is the user's.
    let inherited: Vec<String> = std::env::vars()
        .map(|(key, _)| key)
        .filter(|key| key != "PATH")
        .collect();
    assert!(
        inherited.iter().any(|k| k.starts_with("CARGO")),
        "{inherited:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    // Prints its environment where the audio would go.
    let fake = fake_ffmpeg(
        dir.path(),
        "#!/bin/sh
exec env
",
    );
    let output = Converter::new()
        .ffmpeg(&fake)
        .convert(AMR, Target::Pcm16)
        .await
        .unwrap();
    let seen = String::from_utf8(output).unwrap();
    let keys: Vec<&str> = seen
        .lines()
        .filter_map(|line| line.split_once('=').map(|(key, _)| key))
        .collect();
    assert!(keys.contains(&"PATH"), "{seen}");
    for key in &keys {
        // What the shell itself adds is fine; nothing may come from this process.
        assert!(
            *key == "PATH" || !inherited.iter().any(|k| k == key) || *key == "PWD",
            "{key} reached the converter"
        );
    }
}

/// A few hundred kilobytes of AMR frames are minutes of audio: refused at the duration limit,
/// decoding no more than that.
#[tokio::test]
async fn a_voice_note_longer_than_the_limit_is_refused_not_converted() {
    if !ffmpeg_available() {
        return;
    }
    // The fixture's 100 frames of 32 bytes (2 s), repeated to 200 s.
    let frames = &AMR[6..];
    let mut bomb = b"#!AMR\n".to_vec();
    for _ in 0..100 {
        bomb.extend_from_slice(frames);
    }
    let converter = Converter::new().max_duration(Duration::from_secs(10));
    for target in [Target::Wav, Target::Mp3] {
        let error = converter.convert(&bomb, target).await.unwrap_err();
        assert!(
            matches!(error, VoiceError::TooLong(_)),
            "{target:?}: {error}"
        );
    }
    // At the limit exactly, the note converts.
    let wav = Converter::new()
        .max_duration(Duration::from_secs(2))
        .convert(AMR, Target::Wav)
        .await
        .unwrap();
    assert!(WavInfo::parse(&wav).unwrap().duration_secs() <= 2.0);
    // And the output cap holds whatever the duration.
    let error = Converter::new()
        .max_output_bytes(10_000)
        .convert(AMR, Target::Wav)
        .await
        .unwrap_err();
    assert!(
        matches!(error, VoiceError::OutputTooLarge(10_000)),
        "{error}"
    );
}

// ---- with ffmpeg ------------------------------------------------------------------------------

#[tokio::test]
async fn amr_becomes_a_16_khz_wav_of_the_same_tone_and_length() {
    if !ffmpeg_available() {
        return;
    }
    let wav = convert(AMR, Target::Wav).await.unwrap();
    assert_is_the_test_tone(&wav, 16_000);
    let narrow = Converter::new()
        .sample_rate(8_000)
        .convert(AMR, Target::Wav)
        .await
        .unwrap();
    assert_is_the_test_tone(&narrow, 8_000);
    let pcm = convert(AMR, Target::Pcm16).await.unwrap();
    assert_eq!(pcm.len(), wav.len() - 44);
}

#[tokio::test]
async fn amr_becomes_ogg_opus_and_mp3_that_decode_back_to_the_tone() {
    if !ffmpeg_available() {
        return;
    }
    let ogg = convert(AMR, Target::OggOpus).await.unwrap();
    assert_eq!(&ogg[..4], b"OggS");
    assert!(ogg.windows(8).any(|w| w == b"OpusHead"));
    let mp3 = convert(AMR, Target::Mp3).await.unwrap();
    let frame_sync = mp3.len() > 2 && mp3[0] == 0xff && mp3[1] & 0xe0 == 0xe0;
    assert!(mp3.starts_with(b"ID3") || frame_sync, "{:?}", &mp3[..4]);
    // Decode both back with ffmpeg: still 2 s of 440 Hz.
    for (bytes, format) in [(&ogg, "ogg"), (&mp3, "mp3")] {
        let wav = decode_with_ffmpeg(bytes, format);
        let (info, samples) = samples(&wav);
        assert!(
            (1.8..=2.3).contains(&info.duration_secs()),
            "{format}: {} s",
            info.duration_secs()
        );
        assert!(rms(&samples) > 1000.0, "{format} is silent");
        let hz = tone_hz(&samples, info.sample_rate);
        assert!((396.0..=484.0).contains(&hz), "{format}: {hz} Hz");
    }
}

fn decode_with_ffmpeg(bytes: &[u8], format: &str) -> Vec<u8> {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(format!("in.{format}"));
    let output = dir.path().join("out.wav");
    std::fs::File::create(&input)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&input)
        .args(["-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le"])
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(output).unwrap()
}

#[tokio::test]
async fn a_truncated_amr_file_fails_cleanly() {
    if !ffmpeg_available() {
        return;
    }
    let error = convert(b"#!AMR\n", Target::Wav).await.unwrap_err();
    assert!(
        matches!(error, VoiceError::ConversionFailed { .. }),
        "{error}"
    );
}

// ---- SILK (feature voice-silk) ----------------------------------------------------------------

#[cfg(feature = "voice-silk")]
fn silk_tone(with_prefix: bool) -> Vec<u8> {
    let rate = 24_000usize;
    let pcm: Vec<u8> = (0..rate * 2)
        .flat_map(|i| {
            let t = i as f64 / rate as f64;
            let v = (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 0.3 * 32767.0;
            (v as i16).to_le_bytes()
        })
        .collect();
    // `tencent = true` writes the 0x02 byte WeChat puts before `#!SILK_V3`.
    silk_codec::encode_silk(&pcm, rate as i32, 24_000, with_prefix).unwrap()
}

#[cfg(feature = "voice-silk")]
#[tokio::test]
async fn silk_becomes_wav_without_ffmpeg() {
    for with_prefix in [true, false] {
        let silk = silk_tone(with_prefix);
        assert_eq!(silk.first() == Some(&0x02), with_prefix);
        assert_eq!(detect_format(&silk), Some(VoiceFormat::Silk));
        let converter = Converter::new().ffmpeg("/nonexistent/ffmpeg");
        let wav = converter.convert(&silk, Target::Wav).await.unwrap();
        assert_is_the_test_tone(&wav, 16_000);
    }
}

#[cfg(feature = "voice-silk")]
#[tokio::test]
async fn corrupt_silk_is_an_error_or_shorter_audio_never_a_panic() {
    let mut silk = silk_tone(true);
    silk.truncate(silk.len() / 2 + 1);
    match convert(&silk, Target::Wav).await {
        Ok(wav) => {
            let info = WavInfo::parse(&wav).expect("a WAV header");
            assert!(info.duration_secs() < 1.5, "{} s", info.duration_secs());
        }
        Err(error) => assert!(
            matches!(error, VoiceError::ConversionFailed { .. }),
            "{error}"
        ),
    }
    for bad in [
        &b"\x02#!SILK_V3\xff\x7f"[..],
        b"\x02#!SILK_V3\x05\x00ab",
        b"#!SILK_V3\x00",
    ] {
        let result = convert(bad, Target::Wav).await;
        assert!(
            matches!(result, Err(VoiceError::ConversionFailed { .. })),
            "{bad:?}: {:?}",
            result.map(|wav| wav.len())
        );
    }
}

#[cfg(feature = "voice-silk")]
#[tokio::test]
async fn silk_becomes_ogg_opus_through_ffmpeg() {
    if !ffmpeg_available() {
        return;
    }
    let ogg = convert(&silk_tone(true), Target::OggOpus).await.unwrap();
    assert_eq!(&ogg[..4], b"OggS");
    let wav = decode_with_ffmpeg(&ogg, "ogg");
    let (info, samples) = samples(&wav);
    assert!((1.8..=2.3).contains(&info.duration_secs()));
    assert!(rms(&samples) > 1000.0);
}

#[cfg(feature = "voice-silk")]
#[tokio::test]
async fn a_silk_note_longer_than_the_limit_is_refused_before_decoding() {
    let silk = silk_tone(true);
    let error = Converter::new()
        .max_duration(Duration::from_secs(1))
        .convert(&silk, Target::Wav)
        .await
        .unwrap_err();
    assert!(matches!(error, VoiceError::TooLong(_)), "{error}");
    let wav = Converter::new()
        .max_duration(Duration::from_secs(2))
        .convert(&silk, Target::Wav)
        .await
        .unwrap();
    assert!(WavInfo::parse(&wav).unwrap().duration_secs() <= 2.0);
}

// ---- the emulator's placeholder media ---------------------------------------------------------

/// What a customer media message injected into the emulator without a media_id downloads as:
/// real media that a bot can play, show or convert.
#[tokio::test]
async fn the_emulators_placeholder_media_are_real_files() {
    use wechat_kf_emulator::fixtures;
    if !ffmpeg_available() {
        return;
    }
    assert_eq!(detect_format(fixtures::VOICE_AMR), Some(VoiceFormat::AmrNb));
    assert_eq!(detect_format(fixtures::VOICE_SILK), Some(VoiceFormat::Silk));
    let wav = convert(fixtures::VOICE_AMR, Target::Wav).await.unwrap();
    assert_is_the_test_tone(&wav, 16_000);
    // The video's sound track is the same tone; its picture decodes too.
    let wav = decode_with_ffmpeg(fixtures::VIDEO_MP4, "mp4");
    assert_is_the_test_tone(&wav, 16_000);
    for (bytes, format) in [(fixtures::IMAGE_PNG, "png"), (fixtures::VIDEO_MP4, "mp4")] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join(format!("in.{format}"));
        std::fs::write(&input, bytes).unwrap();
        let output = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-i"])
            .arg(&input)
            .args([
                "-frames:v",
                "1",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "gray",
                "pipe:1",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{format}");
        assert_eq!(output.stdout.len(), 64 * 48, "{format}: one 64×48 picture");
    }
}

#[cfg(feature = "voice-silk")]
#[tokio::test]
async fn the_emulators_silk_clip_decodes_to_the_test_tone() {
    let wav = convert(wechat_kf_emulator::fixtures::VOICE_SILK, Target::Wav)
        .await
        .unwrap();
    assert_is_the_test_tone(&wav, 16_000);
}
