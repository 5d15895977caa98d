//! Inbound media downloaded before delivery: Chinese file names, an expired media_id and a
//! busy one (recorded, never blocking), voice notes converted to WAV, a missing converter, and
//! uploads to an S3-compatible object store (`WECHAT_KF_S3_ENDPOINT`: CI runs moto's server).

use std::path::Path;
use std::time::Duration;

use object_store::{Attribute, ObjectStore};
use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::config::{FirstStart, Secret, VoiceTarget};

use crate::common::*;

pub(crate) const VOICE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../wechat-kf/tests/fixtures/voice/sine440-2s.amr"
);

/// Uploads bytes through the emulator's control API (as if a customer had sent them).
pub async fn upload(emu: &RunningEmulator, kind: &str, filename: &str, bytes: Vec<u8>) -> String {
    let response: Value = reqwest::Client::new()
        .post(format!("{}/emulator/media", emu.base_url()))
        .query(&[("type", kind), ("filename", filename)])
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["media_id"].as_str().unwrap().to_owned()
}

fn media_message(kf: &str, customer: &str, kind: &str, media_id: &str) -> Value {
    json!({"open_kfid": kf, "external_userid": customer, "msgtype": kind, kind: {"media_id": media_id}})
}

/// The customer sends one media file; its msgid.
pub(crate) async fn send_media(
    emu: &RunningEmulator,
    kf: &str,
    customer: &str,
    kind: &str,
    filename: &str,
    bytes: Vec<u8>,
) -> String {
    let media_id = upload(emu, kind, filename, bytes).await;
    emu.emulator()
        .customer_send(media_message(kf, customer, kind, &media_id))
        .unwrap()
        .remove(0)
}

/// The customer sends "报价单（最终版）.pdf" and "截图 2024.png" (and a text); the msgids and the
/// two files' bytes.
async fn send_pdf_and_png(
    emu: &RunningEmulator,
    kf: &str,
    customer: &str,
    and_text: Option<&str>,
) -> (Vec<String>, Vec<u8>, Vec<u8>) {
    let pdf: Vec<u8> = b"%PDF-1.4 quotation ".repeat(50);
    let file_id = upload(emu, "file", "报价单（最终版）.pdf", pdf.clone()).await;
    let png: Vec<u8> = [b"\x89PNG\r\n\x1a\n".as_slice(), &[7u8; 300]].concat();
    let image_id = upload(emu, "image", "截图 2024.png", png.clone()).await;
    let mut messages = vec![
        media_message(kf, customer, "file", &file_id),
        media_message(kf, customer, "image", &image_id),
    ];
    messages.extend(and_text.map(|t| text(kf, customer, t)));
    let ids = emu.emulator().customer_send(json!(messages)).unwrap();
    (ids, pdf, png)
}

pub(crate) async fn delivered(sink: &Sink, msgid: &str) -> (Value, Value) {
    wait_for("the media message", Duration::from_secs(20), || async {
        sink.delivered(msgid).is_some()
    })
    .await;
    sink.delivered(msgid).unwrap()
}

pub(crate) fn ffmpeg_available() -> bool {
    wechat_kf_test_support::require_command("ffmpeg")
}

#[tokio::test]
async fn media_is_downloaded_before_delivery_under_its_chinese_file_name() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("media");
    let dir = tempfile::tempdir().unwrap();
    let media_dir = dir.path().join("媒体");
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(media_dir.clone());
    let running = start_on_emulator_clock(&emu, config).await;

    let (ids, pdf, png) = send_pdf_and_png(&emu, &kf, "wmM", Some("请看附件")).await;

    let (message, record) = delivered(&sink, &ids[0]).await;
    // The message itself is WeChat's JSON, untouched; the record rides beside it.
    let keys: Vec<&String> = message.as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| k.starts_with('_')), "{keys:?}");
    assert_eq!(message["file"]["media_id"], record["media_id"]);
    assert_eq!(record["msgid"], ids[0].as_str());
    assert_eq!(record["msgtype"], "file");
    assert_eq!(record["file_name"], "报价单（最终版）.pdf");
    let path = Path::new(record["path"].as_str().unwrap());
    assert!(path.is_absolute());
    assert!(path.starts_with(std::fs::canonicalize(&media_dir).unwrap()));
    assert_eq!(std::fs::read(path).unwrap(), pdf);
    assert_eq!(record["size"], pdf.len());
    assert!(record["content_type"].is_string());

    let (_, record) = delivered(&sink, &ids[1]).await;
    assert_eq!(record["file_name"], "截图 2024.png");
    assert_eq!(
        std::fs::read(record["path"].as_str().unwrap()).unwrap(),
        png
    );
    let (_, record) = delivered(&sink, &ids[2]).await;
    assert!(record.is_null(), "texts have no media record");
    assert_eq!(
        metric(
            &running,
            "wechat_kf_media_downloads_total{kind=\"file\",result=\"ok\"}"
        ),
        1
    );
    // The record is stored with the message.
    let rows = running
        .store()
        .message_rows(kf.clone().into())
        .await
        .unwrap();
    assert!(rows[0].media.as_deref().unwrap().contains("报价单"));
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn an_expired_or_busy_media_id_is_recorded_and_the_message_still_delivered() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("expired");
    // The file was uploaded two days before the customer sent it; the service starts a day
    // and a half later: the media_id (3 days) is gone, the message (kept 3 days) is not.
    let old_id = upload(&emu, "file", "合同.docx", b"old contract bytes".to_vec()).await;
    emu.emulator().advance_clock(Duration::from_secs(48 * 3600));
    let expired_msg = emu
        .emulator()
        .customer_send(media_message(&kf, "wmE", "file", &old_id))
        .unwrap()
        .remove(0);
    emu.emulator().advance_clock(Duration::from_secs(36 * 3600));
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.pull.first_start = FirstStart::Replay;
    let running = start_on_emulator_clock(&emu, config).await;
    let (message, record) = delivered(&sink, &expired_msg).await;
    assert_eq!(message["msgtype"], "file");
    assert_eq!(record["error"]["kind"], "media_id_invalid");
    assert_eq!(record["error"]["errcode"], 40007);
    assert!(record["path"].is_null());

    // A media_id WeChat keeps answering "busy" (45033) beyond the client's retries.
    let busy_id = upload(&emu, "image", "忙.png", vec![9u8; 64]).await;
    emu.emulator()
        .inject_fault(json!({"path": "media/get", "kind": "media_busy", "count": 10}))
        .unwrap();
    let busy_msg = emu
        .emulator()
        .customer_send(media_message(&kf, "wmE", "image", &busy_id))
        .unwrap()
        .remove(0);
    let (_, record) = delivered(&sink, &busy_msg).await;
    assert_eq!(record["error"]["kind"], "busy");
    assert_eq!(record["error"]["errcode"], 45033);
    emu.emulator().clear_faults();
    assert_eq!(
        metric(
            &running,
            "wechat_kf_media_downloads_total{kind=\"file\",result=\"failed\"}"
        ),
        1
    );
    wait_until_acks_recorded(&running).await;
    running.shutdown().await;
    emu.shutdown().await;
}

/// A file over `media.max_bytes` is refused from its declared length, never written (not
/// downloaded and deleted afterwards), and recorded as `too_large`; the message is delivered.
#[tokio::test]
async fn a_file_over_max_bytes_is_recorded_too_large_and_never_written() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("big");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.media.max_bytes = 1000;
    let running = start_on_emulator_clock(&emu, config).await;
    let msgid = send_media(&emu, &kf, "wmB", "file", "big.bin", vec![7u8; 5000]).await;
    let (_, record) = delivered(&sink, &msgid).await;
    assert_eq!(record["error"]["kind"], "too_large", "{record}");
    assert_eq!(record["size"], 5000);
    assert!(record["path"].is_null());
    let mut left = Vec::new();
    for entry in walk(&dir.path().join("media")) {
        left.push(entry);
    }
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        metric(
            &running,
            "wechat_kf_media_downloads_total{kind=\"file\",result=\"too_large\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test]
async fn a_voice_note_is_downloaded_and_converted_to_wav() {
    if !ffmpeg_available() {
        return;
    }
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("voice");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.media.voice_convert_to = Some(VoiceTarget::Wav);
    let running = start_on_emulator_clock(&emu, config).await;
    let amr = std::fs::read(VOICE).unwrap();
    let msgid = send_media(&emu, &kf, "wmV", "voice", "语音留言.amr", amr.clone()).await;
    let (_, record) = delivered(&sink, &msgid).await;
    assert_eq!(record["file_name"], "语音留言.amr");
    assert_eq!(
        std::fs::read(record["path"].as_str().unwrap()).unwrap(),
        amr
    );
    let converted = &record["converted"];
    assert_eq!(converted["format"], "wav", "{record}");
    assert_eq!(converted["content_type"], "audio/wav");
    assert_eq!(converted["file_name"], "语音留言.wav");
    let wav = std::fs::read(converted["path"].as_str().unwrap()).unwrap();
    let info = wechat_kf::voice::WavInfo::parse(&wav).expect("a WAV file");
    assert_eq!(info.channels, 1);
    assert!(
        (info.duration_secs() - 2.0).abs() < 0.1,
        "{}",
        info.duration_secs()
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_voice_conversions_total{format=\"wav\",result=\"ok\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

/// A server file name cannot be the converter's staging name (it once was fixed, in the
/// message's directory, and the conversion overwrote the original), and the emulator's
/// placeholder voice note (a customer message injected without a media_id) is real AMR that
/// converts.
#[tokio::test]
async fn conversions_never_replace_the_original_and_the_placeholder_voice_converts() {
    if !ffmpeg_available() {
        return;
    }
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("names");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.media.voice_convert_to = Some(VoiceTarget::Wav);
    let running = start_on_emulator_clock(&emu, config).await;
    let amr = std::fs::read(VOICE).unwrap();
    let mut msgids = Vec::new();
    for name in [".wechat-kf-convert.part", "语音.wav"] {
        msgids.push(send_media(&emu, &kf, "wmN", "voice", name, amr.clone()).await);
    }
    for (msgid, original, converted) in [
        (
            &msgids[0],
            ".wechat-kf-convert.part",
            ".wechat-kf-convert.wav",
        ),
        (&msgids[1], "语音.wav", "语音-converted.wav"),
    ] {
        let (_, record) = delivered(&sink, msgid).await;
        assert_eq!(record["file_name"], original, "{record}");
        assert_eq!(
            std::fs::read(record["path"].as_str().unwrap()).unwrap(),
            amr,
            "the original is intact: {record}"
        );
        assert_eq!(record["converted"]["file_name"], converted, "{record}");
        let wav = std::fs::read(record["converted"]["path"].as_str().unwrap()).unwrap();
        assert!(wechat_kf::voice::WavInfo::parse(&wav).is_some());
    }

    let placeholder = emu
        .emulator()
        .customer_send(json!({"open_kfid": kf, "external_userid": "wmN", "msgtype": "voice"}))
        .unwrap()
        .remove(0);
    let (_, record) = delivered(&sink, &placeholder).await;
    assert_eq!(record["file_name"], "voice.amr", "{record}");
    assert_eq!(record["converted"]["file_name"], "voice.wav", "{record}");
    let wav = std::fs::read(record["converted"]["path"].as_str().unwrap()).unwrap();
    let info = wechat_kf::voice::WavInfo::parse(&wav).unwrap();
    assert!(
        (info.duration_secs() - 2.0).abs() < 0.1,
        "{}",
        info.duration_secs()
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn without_a_converter_the_voice_note_is_delivered_with_the_error_recorded() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("no-ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.media.voice_convert_to = Some(VoiceTarget::Mp3);
    config.media.ffmpeg = Some(dir.path().join("no-such-ffmpeg"));
    let running = start_on_emulator_clock(&emu, config).await;
    let msgid = send_media(
        &emu,
        &kf,
        "wmV",
        "voice",
        "语音.amr",
        std::fs::read(VOICE).unwrap(),
    )
    .await;
    let (message, record) = delivered(&sink, &msgid).await;
    assert_eq!(message["msgtype"], "voice");
    assert!(Path::new(record["path"].as_str().unwrap()).exists());
    assert_eq!(record["converted"]["format"], "mp3");
    assert_eq!(
        record["converted"]["error"]["kind"], "converter_unavailable",
        "{record}"
    );
    assert!(
        record["converted"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ffmpeg")
    );
    running.shutdown().await;
    emu.shutdown().await;
}

/// `media.object_store_options` for an S3-compatible test server (which ignores the keys).
fn s3_options(endpoint: &str) -> std::collections::BTreeMap<String, Secret> {
    [
        ("endpoint", endpoint),
        ("allow_http", "true"),
        ("region", "us-east-1"),
        ("access_key_id", "test-key"),
        ("secret_access_key", "test-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Secret::new(v)))
    .collect()
}

/// A fresh bucket on the S3-compatible server at `WECHAT_KF_S3_ENDPOINT`, with a client of its
/// own to read objects back.
pub(crate) struct TestBucket {
    endpoint: String,
    name: String,
    reader: object_store::aws::AmazonS3,
}

impl TestBucket {
    /// `None` (the test is skipped) without `WECHAT_KF_S3_ENDPOINT`.
    pub(crate) async fn create() -> Option<TestBucket> {
        let endpoint = require_env("WECHAT_KF_S3_ENDPOINT")?
            .trim_end_matches('/')
            .to_owned();
        let name = format!("kf-media-{}", uuid::Uuid::new_v4().simple());
        let created = reqwest::Client::new()
            .put(format!("{endpoint}/{name}"))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{}", created.status());
        let reader = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test-key")
            .with_secret_access_key("test-secret")
            .with_bucket_name(&name)
            .build()
            .unwrap();
        Some(TestBucket {
            endpoint,
            name,
            reader,
        })
    }

    /// Points the service's media uploads at this bucket under `prefix`.
    pub(crate) fn configure(&self, config: &mut wechat_kf_service::config::Config, prefix: &str) {
        config.media.object_store = Some(format!("s3://{}/{prefix}", self.name));
        config.media.object_store_options = s3_options(&self.endpoint);
    }

    /// Asserts that a media record names an object of this bucket holding `bytes` with the
    /// record's content type; returns the key.
    pub(crate) async fn assert_holds(&self, record: &Value, bytes: &[u8]) -> String {
        let key = record["key"].as_str().unwrap_or_else(|| panic!("{record}"));
        assert_eq!(record["url"], format!("s3://{}/{key}", self.name));
        let object = self
            .reader
            .get(&object_store::path::Path::parse(key).unwrap())
            .await
            .unwrap();
        let content_type = object.attributes.get(&Attribute::ContentType).cloned();
        assert_eq!(
            content_type.as_deref(),
            record["content_type"].as_str(),
            "{record}"
        );
        assert_eq!(&object.bytes().await.unwrap()[..], bytes);
        key.to_owned()
    }
}

#[tokio::test]
async fn media_is_uploaded_to_an_s3_bucket_and_no_local_copy_is_kept() {
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("s3");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    bucket.configure(&mut config, "inbound/");
    let running = start_on_emulator_clock(&emu, config).await;

    let (ids, pdf, png) = send_pdf_and_png(&emu, &kf, "wmS", None).await;

    for (msgid, name, bytes) in [
        (&ids[0], "报价单（最终版）.pdf", &pdf),
        (&ids[1], "截图 2024.png", &png),
    ] {
        let (_, record) = delivered(&sink, msgid).await;
        assert!(record["error"].is_null(), "{record}");
        assert!(record["path"].is_null(), "no local copy kept: {record}");
        let key = bucket.assert_holds(&record, bytes).await;
        // The key keeps the file name readable: not percent-encoded.
        assert_eq!(key, format!("inbound/{kf}/{msgid}/{name}"));
    }
    assert_eq!(
        metric(
            &running,
            "wechat_kf_media_uploads_total{kind=\"image\",result=\"ok\"}"
        ),
        1
    );
    wait_until_acks_recorded(&running).await;
    running.shutdown().await;
    // The staging directory went with the service.
    let staged: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("wechat-kf-media-")
        })
        .map(|e| e.path())
        .collect();
    assert!(staged.iter().all(|p| !p.join(&kf).exists()), "{staged:?}");
    emu.shutdown().await;
}

#[tokio::test]
async fn a_converted_voice_note_is_uploaded_beside_the_original() {
    if !ffmpeg_available() {
        return;
    }
    let Some(bucket) = TestBucket::create().await else {
        return;
    };
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("s3-voice");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.media.voice_convert_to = Some(VoiceTarget::Wav);
    bucket.configure(&mut config, "");
    let running = start_on_emulator_clock(&emu, config).await;
    let amr = std::fs::read(VOICE).unwrap();
    let msgid = send_media(&emu, &kf, "wmV", "voice", "语音留言.amr", amr.clone()).await;
    let (_, record) = delivered(&sink, &msgid).await;
    // Kept locally (download_dir) and uploaded: both the path and the key.
    assert_eq!(
        std::fs::read(record["path"].as_str().unwrap()).unwrap(),
        amr
    );
    let key = bucket.assert_holds(&record, &amr).await;
    assert_eq!(key, format!("{kf}/{msgid}/语音留言.amr"));
    let converted = &record["converted"];
    let wav = std::fs::read(converted["path"].as_str().unwrap()).unwrap();
    let key = bucket.assert_holds(converted, &wav).await;
    assert_eq!(key, format!("{kf}/{msgid}/语音留言.wav"));
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_object_store_is_recorded_and_the_local_copy_still_delivered() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("s3-down");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    config.media.object_store = Some("s3://kf-media".into());
    // Nothing listens there: connections are refused.
    let closed = wechat_kf_test_support::ClosedPort::new();
    config.media.object_store_options = s3_options(&closed.url());
    let running = start_on_emulator_clock(&emu, config).await;

    let msgid = send_media(&emu, &kf, "wmD", "file", "说明.txt", b"manual".to_vec()).await;
    let (_, record) = delivered(&sink, &msgid).await;
    assert_eq!(record["upload_error"]["kind"], "upload_failed");
    assert!(record["url"].is_null());
    assert_eq!(
        std::fs::read(record["path"].as_str().unwrap()).unwrap(),
        b"manual"
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_media_uploads_total{kind=\"file\",result=\"failed\"}"
        ),
        1
    );
    wait_until_acks_recorded(&running).await;
    running.shutdown().await;
    emu.shutdown().await;
}

/// One customer's slow download never holds up another customer: the text customer B sends
/// right after customer A's file (whose `media/get` takes 15 s) reaches the bot while A's file
/// is still downloading, and A's own later text still comes after A's file.
#[tokio::test]
async fn a_slow_download_holds_up_only_its_own_customer() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("slow");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.media.download_dir = Some(dir.path().join("media"));
    let running = start_on_emulator_clock(&emu, config).await;
    let media_id = upload(&emu, "file", "慢.pdf", b"%PDF-1.4 slow".to_vec()).await;
    emu.emulator()
        .inject_fault(json!({"path": "media/get", "kind": "delay", "delay_ms": 15_000}))
        .unwrap();
    let ids = emu
        .emulator()
        .customer_send(json!([
            media_message(&kf, "wmA", "file", &media_id),
            text(&kf, "wmB", "B, right after A's file"),
            text(&kf, "wmA", "A, after its own file"),
        ]))
        .unwrap();
    let (file, b_text, a_text) = (&ids[0], &ids[1], &ids[2]);

    // Bounded well below the 15 s download: B's text is not behind it.
    wait_for("B's text", Duration::from_secs(10), || async {
        sink.delivered(b_text).is_some()
    })
    .await;
    assert!(
        sink.delivered(file).is_none(),
        "A's file is still downloading"
    );
    assert!(
        sink.delivered(a_text).is_none(),
        "A's text waits behind A's file"
    );

    wait_for("A's file and text", Duration::from_secs(40), || async {
        sink.delivered(a_text).is_some()
    })
    .await;
    let (_, record) = sink.delivered(file).unwrap();
    assert_eq!(record["file_name"], "慢.pdf", "{record}");
    let order = &sink.acked_per_customer()[&(kf.clone(), "wmA".to_owned())];
    assert_eq!(order, &[file.clone(), a_text.clone()]);
    running.shutdown().await;
    emu.shutdown().await;
}
