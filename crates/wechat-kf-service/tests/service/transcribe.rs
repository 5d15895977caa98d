//! Voice notes transcribed through an OpenAI-compatible `/audio/transcriptions` endpoint
//! (`[responder.transcription]`, here the stand-in): the customer's AMR note is converted to
//! WAV, the WAV is what the endpoint gets, and the transcript rides in the webhook body's media
//! record; a failed conversion or an endpoint error is recorded, never blocking the message.

use std::time::Duration;

use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::RunningService;
use wechat_kf_service::config::{Config, Secret, TranscriptionConfig};
use wechat_kf_test_support::llm::{OpenAiStandIn, Reply};

use crate::common::*;
use crate::media::{TestBucket, VOICE, delivered, ffmpeg_available, send_media};

/// A service delivering to `sink`, downloading media into a temporary directory and
/// transcribing voice through `model` (no `media.voice_convert_to`: transcription implies WAV).
fn transcribing_config(
    emu: &RunningEmulator,
    sink: &Sink,
    model: &OpenAiStandIn,
    dir: &tempfile::TempDir,
) -> Config {
    let mut config = config(emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    // The key is the responder's: transcription falls back to it.
    config.responder.api_key = Some(Secret::new("sk-responder"));
    config.responder.transcription = Some(TranscriptionConfig {
        base_url: Some(model.base_url()),
        language: Some("zh".to_owned()),
        timeout: Duration::from_secs(20),
        ..TranscriptionConfig::default()
    });
    config
}

async fn stop(running: RunningService, emu: RunningEmulator) {
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_voice_note_reaches_the_webhook_with_its_transcript() {
    if !ffmpeg_available() {
        return;
    }
    let emu = emulator().await;
    let sink = Sink::start().await;
    let model = OpenAiStandIn::start().await;
    model.set_transcript("我想查一下订单");
    let kf = emu.emulator().create_account("transcribe");
    let dir = tempfile::tempdir().unwrap();
    let running =
        start_on_emulator_clock(&emu, transcribing_config(&emu, &sink, &model, &dir)).await;

    let amr = std::fs::read(VOICE).unwrap();
    let msgid = send_media(&emu, &kf, "wmT", "voice", "语音留言.amr", amr).await;
    let (message, record) = delivered(&sink, &msgid).await;

    assert_eq!(message["msgtype"], "voice");
    assert_eq!(record["transcript"], "我想查一下订单", "{record}");
    assert!(record.get("transcript_error").is_none(), "{record}");
    assert_eq!(record["converted"]["format"], "wav", "{record}");
    // The endpoint got the WAV (a format OpenAI accepts), never the AMR.
    let requests = model.transcriptions();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.problem, None);
    assert_eq!(
        request.authorization.as_deref(),
        Some("Bearer sk-responder")
    );
    assert_eq!(request.body["model"], "whisper-1");
    assert_eq!(request.body["language"], "zh");
    let file = request.file.as_ref().unwrap();
    assert_eq!(file.file_name, "voice.wav");
    assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
    let wav = std::fs::read(record["converted"]["path"].as_str().unwrap()).unwrap();
    assert_eq!(file.bytes, wav);
    let info = wechat_kf::voice::WavInfo::parse(&file.bytes).expect("a WAV file");
    assert_eq!(info.channels, 1);
    assert_eq!(
        metric(&running, "wechat_kf_transcriptions_total{result=\"ok\"}"),
        1
    );
    // Stored with the message, so a redelivery carries it too.
    let rows = running
        .store()
        .message_rows(kf.clone().into())
        .await
        .unwrap();
    assert!(rows[0].media.as_deref().unwrap().contains("我想查一下订单"));
    stop(running, emu).await;
}

#[tokio::test]
async fn an_endpoint_error_is_recorded_and_the_voice_note_delivered_anyway() {
    if !ffmpeg_available() {
        return;
    }
    let emu = emulator().await;
    let sink = Sink::start().await;
    let model = OpenAiStandIn::start().await;
    model.push_transcription(Reply::status(401));
    let kf = emu.emulator().create_account("transcribe-401");
    let dir = tempfile::tempdir().unwrap();
    let running =
        start_on_emulator_clock(&emu, transcribing_config(&emu, &sink, &model, &dir)).await;

    let amr = std::fs::read(VOICE).unwrap();
    let msgid = send_media(&emu, &kf, "wmT", "voice", "语音.amr", amr).await;
    let (_, record) = delivered(&sink, &msgid).await;

    assert!(record.get("transcript").is_none(), "{record}");
    assert_eq!(record["transcript_error"]["kind"], "http_401", "{record}");
    assert!(record["converted"]["path"].is_string(), "{record}");
    assert_eq!(model.transcriptions().len(), 1, "a 401 is not retried");
    assert_eq!(
        metric(
            &running,
            "wechat_kf_transcriptions_total{result=\"http_401\"}"
        ),
        1
    );
    stop(running, emu).await;
}

#[tokio::test]
async fn a_voice_note_that_could_not_be_converted_is_not_sent_for_transcription() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("transcribe-no-ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let mut config = transcribing_config(&emu, &sink, &model, &dir);
    config.media.ffmpeg = Some(dir.path().join("no-such-ffmpeg"));
    let running = start_on_emulator_clock(&emu, config).await;

    let amr = std::fs::read(VOICE).unwrap();
    let msgid = send_media(&emu, &kf, "wmT", "voice", "语音.amr", amr).await;
    let (_, record) = delivered(&sink, &msgid).await;

    assert_eq!(
        record["converted"]["error"]["kind"], "converter_unavailable",
        "{record}"
    );
    assert_eq!(
        record["transcript_error"]["kind"], "not_converted",
        "{record}"
    );
    assert!(
        record["transcript_error"]["message"]
            .as_str()
            .unwrap()
            .contains("converter_unavailable")
    );
    assert!(model.transcriptions().is_empty());
    assert_eq!(
        metric(
            &running,
            "wechat_kf_transcriptions_total{result=\"not_converted\"}"
        ),
        1
    );
    stop(running, emu).await;
}

/// Without a `download_dir` the files are only staged for the upload: the transcription reads
/// the staged conversion before it is uploaded and removed.
#[tokio::test]
async fn a_voice_note_staged_for_an_object_store_is_transcribed_before_it_goes() {
    if !ffmpeg_available() {
        return;
    }
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let emu = emulator().await;
    let sink = Sink::start().await;
    let model = OpenAiStandIn::start().await;
    model.set_transcript("请帮我开发票");
    let kf = emu.emulator().create_account("transcribe-s3");
    let dir = tempfile::tempdir().unwrap();
    let mut config = transcribing_config(&emu, &sink, &model, &dir);
    config.media.download_dir = None;
    bucket.configure(&mut config, "voice");
    let running = start_on_emulator_clock(&emu, config).await;

    let amr = std::fs::read(VOICE).unwrap();
    let msgid = send_media(&emu, &kf, "wmT", "voice", "语音.amr", amr.clone()).await;
    let (_, record) = delivered(&sink, &msgid).await;

    assert_eq!(record["transcript"], "请帮我开发票", "{record}");
    assert!(record.get("path").is_none(), "{record}");
    bucket.assert_holds(&record, &amr).await;
    let sent = model.transcriptions()[0].file.clone().unwrap().bytes;
    bucket.assert_holds(&record["converted"], &sent).await;
    stop(running, emu).await;
}
