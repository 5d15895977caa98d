//! Voice notes: what WeChat delivers and how to turn it into something a browser or a speech
//! service can use (feature `voice`, on by default).
//!
//! `media/get` returns a customer's voice note as **AMR-NB** (`#!AMR\n`, 8 kHz; the default,
//! `voice_format` = 0 in `sync_msg`) or as **SILK v3** (`#!SILK_V3`, usually after one `0x02`
//! byte; `voice_format` = 1). Neither plays in a browser, and most speech-to-text services want
//! WAV/PCM, Ogg/Opus or MP3. [`convert`] does that:
//!
//! | Input | Decoder | Needs |
//! |---|---|---|
//! | AMR-NB, AMR-WB | ffmpeg's built-in decoder, run as a child process | `ffmpeg` on `PATH` (or [`Converter::ffmpeg`]) |
//! | SILK v3 | the SILK SDK, compiled in | feature `voice-silk` (a C compiler and libclang at build time) |
//!
//! | Target | Produced by |
//! |---|---|
//! | [`Target::Wav`] (16-bit PCM, mono, 16 kHz by default) | this module (header) from ffmpeg's or SILK's PCM |
//! | [`Target::OggOpus`], [`Target::Mp3`] | ffmpeg (`libopus`, `libmp3lame`) |
//!
//! So SILK to WAV needs no ffmpeg. When a converter is missing, [`VoiceError::ConverterUnavailable`]
//! names what to install. ffmpeg runs with its input and output on pipes (no temporary files),
//! its input format forced, with an environment holding nothing but `PATH` (the service's
//! secrets stay out of it), under a timeout, and is killed if the future is dropped. SILK is
//! decoded on a blocking thread, never on an async worker, under the same timeout.
//!
//! A voice note is customer input, so its output is bounded: audio longer than
//! [`Converter::max_duration`] (default 5 minutes; WeChat's notes are at most 60 s) is refused
//! and never fully decoded (a megabyte of AMR silence frames would otherwise expand to hours),
//! and output larger than [`Converter::max_output_bytes`] (default 64 MiB) is refused.
//!
//! ```no_run
//! # async fn demo(bytes: Vec<u8>) -> Result<(), wechat_kf::voice::VoiceError> {
//! use wechat_kf::voice::{Target, WavInfo, convert, detect_format};
//!
//! println!("{:?}", detect_format(&bytes)); // Some(AmrNb)
//! let wav = convert(&bytes, Target::Wav).await?;
//! let info = WavInfo::parse(&wav).unwrap();
//! println!("{:.1} s at {} Hz", info.duration_secs(), info.sample_rate);
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default largest output accepted from the converter (a 60 s note is ~2 MB of 16 kHz WAV).
const MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Default longest audio converted.
const MAX_DURATION: Duration = Duration::from_secs(300);

/// How much of ffmpeg's stderr is kept for an error message.
const MAX_STDERR_BYTES: usize = 2048;

/// The formats WeChat delivers voice notes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VoiceFormat {
    /// AMR narrow band, `#!AMR\n` (the default, `voice_format` = 0).
    AmrNb,
    /// AMR wide band, `#!AMR-WB\n` (not documented for WeChat; decoded all the same).
    AmrWb,
    /// Skype SILK v3, `#!SILK_V3`, usually after one `0x02` byte (`voice_format` = 1).
    Silk,
}

impl VoiceFormat {
    /// The usual file extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            VoiceFormat::AmrNb | VoiceFormat::AmrWb => "amr",
            VoiceFormat::Silk => "silk",
        }
    }
}

/// Recognises a voice note by its first bytes; `None` for anything else.
///
/// ```
/// use wechat_kf::voice::{VoiceFormat, detect_format};
/// assert_eq!(detect_format(b"#!AMR\n\x3c..."), Some(VoiceFormat::AmrNb));
/// assert_eq!(detect_format(b"\x02#!SILK_V3\x0c\x00"), Some(VoiceFormat::Silk));
/// assert_eq!(detect_format(b"{\"errcode\":40007}"), None);
/// ```
pub fn detect_format(bytes: &[u8]) -> Option<VoiceFormat> {
    if bytes.starts_with(b"#!AMR\n") {
        Some(VoiceFormat::AmrNb)
    } else if bytes.starts_with(b"#!AMR-WB\n") {
        Some(VoiceFormat::AmrWb)
    } else if bytes.starts_with(b"#!SILK_V3") || bytes.starts_with(b"\x02#!SILK_V3") {
        Some(VoiceFormat::Silk)
    } else {
        None
    }
}

/// What to convert a voice note into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// RIFF WAVE, 16-bit little-endian PCM, mono, at the converter's sample rate (16 kHz by
    /// default): plays in every browser, accepted by every speech service.
    Wav,
    /// Raw 16-bit little-endian PCM, mono, no header.
    Pcm16,
    /// Opus in Ogg (`audio/ogg; codecs=opus`), 24 kbit/s: small, plays in modern browsers.
    OggOpus,
    /// MP3, 32 kbit/s: plays everywhere.
    Mp3,
}

impl Target {
    /// The MIME type of the output.
    pub fn mime_type(self) -> &'static str {
        match self {
            Target::Wav => "audio/wav",
            Target::Pcm16 => "audio/L16",
            Target::OggOpus => "audio/ogg; codecs=opus",
            Target::Mp3 => "audio/mpeg",
        }
    }

    /// The usual file extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            Target::Wav => "wav",
            Target::Pcm16 => "pcm",
            Target::OggOpus => "ogg",
            Target::Mp3 => "mp3",
        }
    }
}

/// Why a voice note could not be converted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoiceError {
    /// The bytes are not AMR or SILK (perhaps an error page saved as a file, or another format).
    #[error("not a voice note this library knows (expected AMR `#!AMR` or SILK `#!SILK_V3`)")]
    UnknownFormat,
    /// The converter this input or target needs is not available.
    #[error("{converter} is needed to convert this voice note but is not available: {install}")]
    ConverterUnavailable {
        /// What is missing, e.g. `ffmpeg (not found at "ffmpeg")`.
        converter: String,
        /// What to do about it.
        install: &'static str,
    },
    /// The converter ran but failed (corrupt input, missing encoder, ...).
    #[error("voice conversion failed: {message}")]
    ConversionFailed {
        /// What went wrong, with the end of ffmpeg's error output.
        message: String,
    },
    /// The converter did not finish in time; it was killed.
    #[error("voice conversion took longer than {0:?} and was stopped")]
    Timeout(Duration),
    /// The audio is longer than [`Converter::max_duration`]; it was not converted.
    #[error("the voice note is longer than {0:?}; not converted")]
    TooLong(Duration),
    /// The output would be larger than [`Converter::max_output_bytes`]; it was not kept.
    #[error("the converted voice note is larger than {0} bytes; not kept")]
    OutputTooLarge(u64),
    /// Talking to the converter process failed.
    #[error("voice conversion: {0}")]
    Io(#[from] std::io::Error),
}

/// What to tell someone who has no ffmpeg.
const INSTALL_FFMPEG: &str = "install ffmpeg (Debian/Ubuntu: `apt-get install ffmpeg`, \
     Alpine: `apk add ffmpeg`, macOS: `brew install ffmpeg`) or point Converter::ffmpeg at it";

/// What to tell someone whose build cannot decode SILK.
#[cfg(not(feature = "voice-silk"))]
const INSTALL_SILK: &str = "build wechat-kf with the `voice-silk` feature (needs a C compiler \
     and libclang), or pull messages with voice_format = 0 to receive AMR instead";

/// Converts voice notes; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Converter {
    ffmpeg: OsString,
    sample_rate: u32,
    timeout: Duration,
    max_duration: Duration,
    max_output_bytes: u64,
}

impl Default for Converter {
    fn default() -> Self {
        Self {
            ffmpeg: OsString::from("ffmpeg"),
            sample_rate: 16_000,
            timeout: Duration::from_secs(30),
            max_duration: MAX_DURATION,
            max_output_bytes: MAX_OUTPUT_BYTES,
        }
    }
}

impl Converter {
    /// ffmpeg from `PATH`, 16 kHz output, a 30 s timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ffmpeg executable to run (default `ffmpeg`, looked up on `PATH`).
    pub fn ffmpeg(mut self, program: impl Into<PathBuf>) -> Self {
        self.ffmpeg = program.into().into_os_string();
        self
    }

    /// Output sample rate in Hz for every target (default 16,000, what speech services expect;
    /// AMR-NB itself carries 8 kHz). Opus accepts 8, 12, 16, 24 and 48 kHz; SILK decodes to
    /// 8, 12, 16, 24, 32, 44.1 and 48 kHz.
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.sample_rate = hz;
        self
    }

    /// How long one conversion may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest audio converted (default 5 minutes): a longer note is [`VoiceError::TooLong`],
    /// found out after decoding at most a little more than this much audio.
    pub fn max_duration(mut self, limit: Duration) -> Self {
        self.max_duration = limit;
        self
    }

    /// Largest output kept (default 64 MiB): more is [`VoiceError::OutputTooLarge`], and
    /// ffmpeg is stopped once it has written that much.
    pub fn max_output_bytes(mut self, limit: u64) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// The most PCM bytes [`max_duration`](Self::max_duration) of audio can take, plus one
    /// 20 ms frame of slack.
    fn max_pcm_bytes(&self) -> u64 {
        let per_second = u64::from(self.sample_rate) * 2;
        let millis = u64::try_from(self.max_duration.as_millis()).unwrap_or(u64::MAX);
        millis.saturating_add(20).saturating_mul(per_second) / 1000
    }

    /// Refuses PCM longer than [`max_duration`](Self::max_duration).
    fn check_pcm_duration(&self, pcm: &[u8]) -> Result<(), VoiceError> {
        let per_second = u64::from(self.sample_rate.max(1)) * 2;
        let millis = (pcm.len() as u64).saturating_mul(1000) / per_second;
        if u128::from(millis) > self.max_duration.as_millis() {
            return Err(VoiceError::TooLong(self.max_duration));
        }
        Ok(())
    }

    fn check_output(&self, output: Vec<u8>) -> Result<Vec<u8>, VoiceError> {
        if output.len() as u64 > self.max_output_bytes {
            return Err(VoiceError::OutputTooLarge(self.max_output_bytes));
        }
        Ok(output)
    }

    /// Converts a voice note (AMR or SILK) into `target`: decoded to PCM first (bounded by
    /// [`max_duration`](Self::max_duration)), then written as `target`.
    pub async fn convert(&self, input: &[u8], target: Target) -> Result<Vec<u8>, VoiceError> {
        let format = detect_format(input).ok_or(VoiceError::UnknownFormat)?;
        let pcm = match format {
            VoiceFormat::AmrNb | VoiceFormat::AmrWb => {
                // ffmpeg decodes no more than max_duration (plus slack to tell "longer" from
                // "exactly as long"), and its output is cut off at that many PCM bytes.
                let max_secs = self.max_duration.as_secs_f64() + 0.02;
                let mut args: Vec<String> = ["-f", "amr", "-i", "pipe:0", "-vn", "-ac", "1"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                args.extend(["-ar".to_string(), self.sample_rate.to_string()]);
                args.extend(["-t".to_string(), format!("{max_secs:.3}")]);
                args.extend(pcm_output_args());
                // A second of slack over what -t lets through: past it, ffmpeg ignored -t.
                let slack = u64::from(self.sample_rate) * 2;
                match self
                    .run_ffmpeg(&args, input, self.max_pcm_bytes().saturating_add(slack))
                    .await
                {
                    Err(VoiceError::OutputTooLarge(_)) => {
                        return Err(VoiceError::TooLong(self.max_duration));
                    }
                    other => other?,
                }
            }
            VoiceFormat::Silk => self.decode_silk_bounded(input).await?,
        };
        self.check_pcm_duration(&pcm)?;
        let output = match target {
            Target::Wav | Target::Pcm16 => self.finish_pcm(pcm, target)?,
            Target::OggOpus | Target::Mp3 => {
                let mut args: Vec<String> = ["-f", "s16le", "-ac", "1", "-ar"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                args.push(self.sample_rate.to_string());
                args.extend(["-i".to_string(), "pipe:0".to_string()]);
                args.extend(encoded_output_args(target));
                self.run_ffmpeg(&args, &pcm, self.max_output_bytes).await?
            }
        };
        self.check_output(output)
    }

    /// SILK decoding on a blocking thread (the SDK is synchronous C), under the timeout; a
    /// note whose packet count already says it is too long is refused before decoding.
    async fn decode_silk_bounded(&self, input: &[u8]) -> Result<Vec<u8>, VoiceError> {
        if silk_packets(input).saturating_mul(20) > self.max_duration.as_millis() {
            return Err(VoiceError::TooLong(self.max_duration));
        }
        let input = input.to_vec();
        let rate = self.sample_rate;
        let decode = tokio::task::spawn_blocking(move || decode_silk(&input, rate));
        // On timeout the thread cannot be stopped, but its packet count was bounded above, so
        // it finishes soon; its result is dropped.
        match tokio::time::timeout(self.timeout, decode).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(VoiceError::ConversionFailed {
                message: format!("the SILK decoder stopped: {join}"),
            }),
            Err(_) => Err(VoiceError::Timeout(self.timeout)),
        }
    }

    fn finish_pcm(&self, pcm: Vec<u8>, target: Target) -> Result<Vec<u8>, VoiceError> {
        if pcm.len() < 2 {
            return Err(VoiceError::ConversionFailed {
                message: "no audio could be decoded from the voice note".into(),
            });
        }
        Ok(match target {
            Target::Wav => pcm_to_wav(&pcm, self.sample_rate, 1),
            _ => pcm,
        })
    }

    /// Runs ffmpeg with `input` on stdin; returns stdout, at most `max_output` bytes (more is
    /// [`VoiceError::OutputTooLarge`]).
    async fn run_ffmpeg(
        &self,
        args: &[String],
        input: &[u8],
        max_output: u64,
    ) -> Result<Vec<u8>, VoiceError> {
        let mut command = tokio::process::Command::new(&self.ffmpeg);
        // Nothing of the caller's environment (a service's secrets, tokens, keys) reaches the
        // converter: only PATH, which ffmpeg needs to be found.
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        #[cfg(windows)]
        if let Some(root) = std::env::var_os("SystemRoot") {
            command.env("SystemRoot", root);
        }
        command
            .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Err(VoiceError::ConverterUnavailable {
                    converter: format!("ffmpeg (not found or not executable at {:?})", self.ffmpeg),
                    install: INSTALL_FFMPEG,
                });
            }
            Err(error) => return Err(VoiceError::Io(error)),
        };
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(VoiceError::Io(std::io::Error::other(
                "the converter's pipes are missing",
            )));
        };
        let run = async {
            let feed = async {
                // ffmpeg may stop reading early (bad input): a broken pipe is not our error,
                // its exit status and message are.
                let _ = stdin.write_all(input).await;
                let _ = stdin.shutdown().await;
                drop(stdin);
            };
            let read_out = async {
                let mut out = Vec::new();
                stdout
                    .take(max_output.saturating_add(1))
                    .read_to_end(&mut out)
                    .await
                    .map(|_| out)
            };
            let read_err = async {
                let mut err = Vec::new();
                let _ = stderr.take(64 * 1024).read_to_end(&mut err).await;
                err
            };
            let ((), out, err) = tokio::join!(feed, read_out, read_err);
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out?, err))
        };
        let (status, out, err) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| VoiceError::Timeout(self.timeout))??;
        if out.len() as u64 > max_output {
            return Err(VoiceError::OutputTooLarge(max_output));
        }
        if !status.success() {
            return Err(VoiceError::ConversionFailed {
                message: format!("ffmpeg exited with {status}: {}", tail(&err)),
            });
        }
        if out.is_empty() {
            return Err(VoiceError::ConversionFailed {
                message: format!("ffmpeg produced no output: {}", tail(&err)),
            });
        }
        Ok(out)
    }
}

/// Converts a voice note with the default [`Converter`] (ffmpeg on `PATH`, 16 kHz, 30 s).
pub async fn convert(input: &[u8], target: Target) -> Result<Vec<u8>, VoiceError> {
    Converter::default().convert(input, target).await
}

fn pcm_output_args() -> Vec<String> {
    ["-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn encoded_output_args(target: Target) -> Vec<String> {
    let args: &[&str] = match target {
        Target::OggOpus => &["-c:a", "libopus", "-b:a", "24k", "-f", "ogg", "pipe:1"],
        _ => &["-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3", "pipe:1"],
    };
    args.iter().map(|s| s.to_string()).collect()
}

/// The last line(s) of ffmpeg's error output, bounded.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return "(no error output)".into();
    }
    let mut start = text.len().saturating_sub(MAX_STDERR_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].replace('\n', " | ")
}

/// The number of packets in a SILK v3 stream (each one 20 ms in WeChat's notes): after the
/// header, packets are a 16-bit little-endian length and that many bytes, until a negative
/// length or the end. Read without decoding, to refuse an over-long note cheaply.
fn silk_packets(input: &[u8]) -> u128 {
    let body = input.strip_prefix(b"\x02").unwrap_or(input);
    let Some(mut rest) = body.strip_prefix(b"#!SILK_V3") else {
        return 0;
    };
    let mut packets = 0u128;
    while let [a, b, tail @ ..] = rest {
        let length = i16::from_le_bytes([*a, *b]);
        let Ok(length) = usize::try_from(length) else {
            break;
        };
        packets += 1;
        rest = tail.get(length..).unwrap_or(&[]);
    }
    packets
}

#[cfg(feature = "voice-silk")]
fn decode_silk(input: &[u8], sample_rate: u32) -> Result<Vec<u8>, VoiceError> {
    let rate = i32::try_from(sample_rate).map_err(|_| VoiceError::ConversionFailed {
        message: format!("unsupported sample rate {sample_rate}"),
    })?;
    silk_codec::decode_silk(input, rate).map_err(|e| VoiceError::ConversionFailed {
        message: format!("SILK decoding failed: {e}"),
    })
}

#[cfg(not(feature = "voice-silk"))]
fn decode_silk(_input: &[u8], _sample_rate: u32) -> Result<Vec<u8>, VoiceError> {
    Err(VoiceError::ConverterUnavailable {
        converter: "a SILK v3 decoder".into(),
        install: INSTALL_SILK,
    })
}

/// Wraps 16-bit little-endian PCM in a RIFF WAVE header. An odd trailing byte is dropped.
///
/// ```
/// let wav = wechat_kf::voice::pcm_to_wav(&[0, 0, 0xff, 0x7f], 16_000, 1);
/// let info = wechat_kf::voice::WavInfo::parse(&wav).unwrap();
/// assert_eq!((info.sample_rate, info.channels, info.frames()), (16_000, 1, 2));
/// ```
pub fn pcm_to_wav(pcm: &[u8], sample_rate: u32, channels: u16) -> Vec<u8> {
    let data = &pcm[..pcm.len() - pcm.len() % 2];
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX - 36) & !1;
    let data = &data[..data_len as usize];
    let block_align = channels.saturating_mul(2);
    let byte_rate = sample_rate.saturating_mul(u32::from(block_align));
    let mut wav = Vec::with_capacity(44 + data.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVE");
    wav.extend_from_slice(b"fmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&channels.to_le_bytes());
    wav.extend_from_slice(&sample_rate.to_le_bytes());
    wav.extend_from_slice(&byte_rate.to_le_bytes());
    wav.extend_from_slice(&block_align.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(data);
    wav
}

/// The format of a PCM WAV file and where its samples are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// Bits per sample.
    pub bits_per_sample: u16,
    /// Offset of the sample data in the file.
    pub data_offset: usize,
    /// Length of the sample data in bytes (as present in the file).
    pub data_len: usize,
}

impl WavInfo {
    /// Reads a RIFF WAVE header (PCM); `None` when the bytes are not one.
    pub fn parse(bytes: &[u8]) -> Option<WavInfo> {
        if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return None;
        }
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
        };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let mut at = 12;
        let mut format = None;
        while at + 8 <= bytes.len() {
            let id = bytes.get(at..at + 4)?;
            let size = u32_at(at + 4)? as usize;
            let body = at + 8;
            if id == b"fmt " {
                let tag = u16_at(body)?;
                if tag != 1 && tag != 0xFFFE {
                    return None;
                }
                format = Some((u32_at(body + 4)?, u16_at(body + 2)?, u16_at(body + 14)?));
            } else if id == b"data" {
                let (sample_rate, channels, bits_per_sample) = format?;
                let data_len = size.min(bytes.len() - body);
                return Some(WavInfo {
                    sample_rate,
                    channels,
                    bits_per_sample,
                    data_offset: body,
                    data_len,
                });
            }
            at = body.checked_add(size)?.checked_add(size % 2)?;
        }
        None
    }

    /// Sample frames (one sample per channel) in the data.
    pub fn frames(&self) -> usize {
        let frame = usize::from(self.channels) * usize::from(self.bits_per_sample / 8);
        self.data_len.checked_div(frame).unwrap_or(0)
    }

    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.frames() as f64 / f64::from(self.sample_rate)
        }
    }
}

impl fmt::Display for VoiceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VoiceFormat::AmrNb => "AMR-NB",
            VoiceFormat::AmrWb => "AMR-WB",
            VoiceFormat::Silk => "SILK v3",
        })
    }
}
