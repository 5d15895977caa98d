//! Media downloads against the emulator: the server's (Chinese, hostile) file names, expired
//! media ids, 45033 retries, files over 20 MB, and never a partial or error file on disk.
#![cfg(feature = "client")]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf::client::{Client, ErrCode, Error, RetryPolicy};
use wechat_kf_emulator::{Config, RunningEmulator};

/// Bytes that start like an AMR-NB file; the control API does not check formats.
const AMR: &[u8] =
    b"#!AMR\n\x3c\x48\xf5\x1f\x96\x66\x79\xe1\xe0\x01\xe7\x8a\xf0\x00\x00\x00\xc0\x00";

async fn start() -> (RunningEmulator, Client) {
    let config = Config::generated();
    let (corp_id, secret) = (config.corp_id.clone(), config.secret.clone());
    let running = wechat_kf_test_support::TestEmulator::with_config(config)
        .start()
        .await;
    let client = Client::builder(corp_id, secret)
        .base_url(running.base_url())
        .retry_policy(RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            multiplier: 2.0,
        })
        .build()
        .unwrap();
    (running, client)
}

/// Stores a file in the emulator through its control API; `query` is already percent-encoded.
async fn put_media(running: &RunningEmulator, query: &str, bytes: Vec<u8>) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/emulator/media?{query}", running.base_url()))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    body["media_id"].as_str().unwrap().to_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn media_get_calls(running: &RunningEmulator) -> u64 {
    let snapshot = running.emulator().state_snapshot();
    let calls = &snapshot["counters"]["calls"];
    calls["media/get"]
        .as_u64()
        .or_else(|| calls["/cgi-bin/media/get"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_voice_note_round_trips_with_its_chinese_file_name() {
    let (running, client) = start().await;
    let media_id = put_media(
        &running,
        "type=voice&filename=%E8%AF%AD%E9%9F%B3.amr&content_type=audio/amr",
        AMR.to_vec(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();

    let (path, info) = client
        .media()
        .download_to_dir(media_id.as_str(), dir.path())
        .await
        .unwrap();
    assert_eq!(path, dir.path().join("语音.amr"));
    assert_eq!(std::fs::read(&path).unwrap(), AMR);
    assert_eq!(info.filename.as_deref(), Some("语音.amr"));
    assert_eq!(info.content_type.as_deref(), Some("audio/amr"));
    assert_eq!(info.content_length, Some(AMR.len() as u64));

    // A second download never overwrites the first.
    let (second, _) = client
        .media()
        .download_to_dir(media_id.as_str(), dir.path())
        .await
        .unwrap();
    assert_eq!(second, dir.path().join("语音 (1).amr"));
    assert_eq!(files_in(dir.path()), ["语音 (1).amr", "语音.amr"]);

    // Into any AsyncWrite.
    let mut buffer: Vec<u8> = Vec::new();
    let info = client
        .media()
        .download_to_writer(media_id.as_str(), &mut buffer)
        .await
        .unwrap();
    assert_eq!(buffer, AMR);
    assert_eq!(info.filename.as_deref(), Some("语音.amr"));

    // Into a path of our choosing, replacing what was there.
    let chosen = dir.path().join("chosen.amr");
    std::fs::write(&chosen, b"old").unwrap();
    client
        .media()
        .download_to_file(media_id.as_str(), &chosen)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&chosen).unwrap(), AMR);
    assert_eq!(files_in(dir.path()).len(), 3, "no temporary file is left");
    running.shutdown().await;
}

#[tokio::test]
async fn a_hostile_file_name_cannot_leave_the_target_directory() {
    let (running, client) = start().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("inbox");
    std::fs::create_dir(&dir).unwrap();
    for (query, expected) in [
        ("type=file&filename=..%2F..%2Fevil.txt", "evil.txt"),
        ("type=file&filename=..%5C..%5Cwin.txt", "win.txt"),
        ("type=file&filename=%2Fetc%2Fpasswd", "passwd"),
        ("type=file&filename=..", "MEDIA_ID"),
    ] {
        let media_id = put_media(&running, query, b"hello world".to_vec()).await;
        let (path, _) = client
            .media()
            .download_to_dir(media_id.as_str(), &dir)
            .await
            .unwrap();
        assert_eq!(path.parent(), Some(dir.as_path()), "{query}");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if expected == "MEDIA_ID" {
            assert!(media_id.starts_with(&name), "{name} from {media_id}");
        } else {
            assert_eq!(name, expected, "{query}");
        }
    }
    assert_eq!(files_in(root.path()), ["inbox"]);
    running.shutdown().await;
}

#[tokio::test]
async fn an_expired_media_id_is_an_error_and_no_file_is_written() {
    let (running, client) = start().await;
    let media_id = put_media(
        &running,
        "type=voice&filename=%E8%AF%AD%E9%9F%B3.amr&content_type=audio/amr",
        AMR.to_vec(),
    )
    .await;
    running
        .emulator()
        .advance_clock(Duration::from_secs(3 * 86_400 + 1));
    let dir = tempfile::tempdir().unwrap();

    let error = client
        .media()
        .download_to_dir(media_id.as_str(), dir.path())
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(ErrCode::InvalidMediaId), "{error}");

    let target = dir.path().join("voice.amr");
    std::fs::write(&target, b"keep me").unwrap();
    let error = client
        .media()
        .download_to_file(media_id.as_str(), &target)
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(ErrCode::InvalidMediaId));
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

    let mut buffer: Vec<u8> = Vec::new();
    let error = client
        .media()
        .download_to_writer(media_id.as_str(), &mut buffer)
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(ErrCode::InvalidMediaId));
    assert!(buffer.is_empty(), "the error body is never written");
    assert_eq!(files_in(dir.path()), ["voice.amr"]);
    running.shutdown().await;
}

fn gettoken_calls(running: &RunningEmulator) -> u64 {
    running.emulator().state_snapshot()["counters"]["gettoken"]
        .as_u64()
        .unwrap_or(0)
}

/// Files a customer sent that read like WeChat's error envelope, under every Content-Type a
/// server might declare. WeChat marks a file with `Content-Disposition`, so each one is the
/// file: downloaded once, kept byte for byte, and the access token is never thrown away.
#[tokio::test]
async fn a_file_that_reads_like_a_wechat_error_is_downloaded_once_as_a_file() {
    let (running, client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    for (n, (body, content_type)) in [
        (
            r#"{"errcode":40014,"errmsg":"invalid access_token"}"#,
            "text/plain",
        ),
        (r#"{"errcode":42001,"errmsg":"access_token expired"}"#, ""),
        (
            r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
            "application/octet-stream",
        ),
        (r#"{"errcode":-1,"errmsg":"system busy"}"#, "text/plain"),
        (r#"{"errcode":45033,"errmsg":"busy"}"#, "application/json"),
    ]
    .into_iter()
    .enumerate()
    {
        let query = if content_type.is_empty() {
            format!("type=file&filename=forged{n}.txt")
        } else {
            format!("type=file&filename=forged{n}.txt&content_type={content_type}")
        };
        let media_id = put_media(&running, &query, body.as_bytes().to_vec()).await;
        let before = media_get_calls(&running);
        let (path, _) = client
            .media()
            .download_to_dir(media_id.as_str(), dir.path())
            .await
            .unwrap_or_else(|e| panic!("{body} as {content_type:?}: {e}"));
        assert_eq!(std::fs::read(&path).unwrap(), body.as_bytes());
        assert_eq!(
            media_get_calls(&running) - before,
            1,
            "{body}: downloaded once"
        );
    }
    assert_eq!(
        gettoken_calls(&running),
        1,
        "one token for every download: a file never invalidates it"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_json_file_served_as_application_json_is_downloaded() {
    let (running, client) = start().await;
    let body = br#"{"order":42,"items":["tea"],"errmsg":"not ours"}"#;
    let media_id = put_media(
        &running,
        "type=file&filename=order.json&content_type=application/json",
        body.to_vec(),
    )
    .await;
    let downloaded = client.media().download(media_id.as_str()).await.unwrap();
    assert_eq!(downloaded.bytes.as_ref(), body);
    assert_eq!(downloaded.info.filename.as_deref(), Some("order.json"));
    assert_eq!(
        downloaded.info.content_type.as_deref(),
        Some("application/json")
    );
    running.shutdown().await;
}

#[tokio::test]
async fn downloads_refused_with_45033_are_retried_with_backoff_then_succeed() {
    let (running, client) = start().await;
    let media_id = put_media(
        &running,
        "type=image&filename=a.png",
        b"\x89PNG....".to_vec(),
    )
    .await;
    running
        .emulator()
        .inject_fault(json!({"path": "media/get", "kind": "media_busy", "count": 2}))
        .unwrap();
    let before = media_get_calls(&running);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = client
        .media()
        .download_to_dir(media_id.as_str(), dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"\x89PNG....");
    assert_eq!(
        media_get_calls(&running) - before,
        3,
        "two refusals, then success"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn downloads_still_busy_after_the_retry_budget_fail_without_a_file() {
    let (running, client) = start().await;
    let media_id = put_media(&running, "type=file&filename=b.txt", b"content!".to_vec()).await;
    running
        .emulator()
        .inject_fault(json!({"path": "media/get", "kind": "media_busy", "count": 10}))
        .unwrap();
    let before = media_get_calls(&running);
    let dir = tempfile::tempdir().unwrap();
    let error = client
        .media()
        .download_to_dir(media_id.as_str(), dir.path())
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(ErrCode::ConcurrencyLimit));
    assert!(error.is_rate_limited());
    assert_eq!(
        media_get_calls(&running) - before,
        4,
        "1 try + 3 retries, bounded"
    );
    assert!(files_in(dir.path()).is_empty());
    running.shutdown().await;
}

#[tokio::test]
async fn files_over_20_mb_are_fetched_in_ranges() {
    let (running, client) = start().await;
    let size = 21 * 1024 * 1024 + 123;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let media_id = put_media(&running, "type=file&filename=big.bin", data.clone()).await;
    // One request for the whole file is refused with 830002.
    let error = client
        .media()
        .download(media_id.as_str())
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), Some(ErrCode::MediaNeedsRange));
    let dir = tempfile::tempdir().unwrap();
    let (path, info) = client
        .media()
        .download_to_dir(media_id.as_str(), dir.path())
        .await
        .unwrap();
    assert_eq!(info.content_length, Some(size as u64));
    assert_eq!(info.filename.as_deref(), Some("big.bin"));
    let written = std::fs::read(path).unwrap();
    assert_eq!(written.len(), data.len());
    assert!(written == data);
    running.shutdown().await;
}

/// A server that promises 1000 bytes and hangs up after 10.
async fn truncating_server() -> String {
    use axum::body::Body;
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/cgi-bin/gettoken",
            get(|| async { axum::Json(json!({"errcode":0,"access_token":"T","expires_in":7200})) }),
        )
        .route(
            "/cgi-bin/media/get",
            get(|| async {
                let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![
                    Ok(b"0123456789"),
                    Err(std::io::Error::other("connection lost")),
                ];
                axum::http::Response::builder()
                    .header(header::CONTENT_TYPE, "audio/amr")
                    .header(header::CONTENT_LENGTH, "1000")
                    .header(
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"cut.amr\"",
                    )
                    .body(Body::from_stream(futures::stream::iter(chunks)))
                    .unwrap()
            }),
        );
    wechat_kf_test_support::serve(app, "").await
}

#[tokio::test]
async fn a_download_cut_off_midway_leaves_no_partial_file() {
    let base = truncating_server().await;
    let client = Client::builder("wwCORP", "SECRET")
        .base_url(base)
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let error = client
        .media()
        .download_to_dir("m1", dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Transport { .. } | Error::Decode { .. }),
        "{error}"
    );
    let target = dir.path().join("cut.amr");
    let error = client.media().download_to_file("m1", &target).await;
    assert!(error.is_err());
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

/// How a [`bottomless_server`] answers `media/get`.
const PIECE: usize = 64 * 1024;
/// What a bottomless body would reach if nobody stopped reading it.
const BOTTOM: u64 = 256 * 1024 * 1024;

/// A server whose `media/get` bodies are as long as a reader keeps reading (up to [`BOTTOM`]):
/// `media_id=declared` declares 1 GiB, `chunked` declares nothing, `ranged` is only served in
/// ranges (830002 without one) of unknown total. Counts the bytes its bodies produced.
async fn bottomless_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::body::Body;
    use axum::extract::Query;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::routing::get;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let body = move || {
        let counter = counter.clone();
        Body::from_stream(futures::stream::unfold(0u64, move |sent| {
            let counter = counter.clone();
            async move {
                (sent < BOTTOM).then(|| {
                    counter.fetch_add(PIECE as u64, Ordering::Relaxed);
                    (
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; PIECE])),
                        sent + PIECE as u64,
                    )
                })
            }
        }))
    };
    let app = axum::Router::new()
        .route(
            "/cgi-bin/gettoken",
            get(|| async { axum::Json(json!({"errcode":0,"access_token":"T","expires_in":7200})) }),
        )
        .route(
            "/cgi-bin/media/get",
            get(
                move |Query(query): Query<std::collections::HashMap<String, String>>,
                      headers: HeaderMap| async move {
                    let media_id = query.get("media_id").cloned().unwrap_or_default();
                    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
                    let file = axum::http::Response::builder()
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(
                            header::CONTENT_DISPOSITION,
                            "attachment; filename=\"big.bin\"",
                        );
                    match (media_id.as_str(), range) {
                        ("declared", _) => file
                            .header(header::CONTENT_LENGTH, (1u64 << 30).to_string())
                            .body(body()),
                        ("ranged", Some(range)) => {
                            let (from, to) =
                                range.trim_start_matches("bytes=").split_once('-').unwrap();
                            file.status(StatusCode::PARTIAL_CONTENT)
                                .header(header::CONTENT_RANGE, format!("bytes {from}-{to}/*"))
                                .body(body())
                        }
                        ("ranged", None) => axum::http::Response::builder()
                            .header(header::CONTENT_TYPE, "application/json")
                            .header("error-code", "830002")
                            .body(Body::from(r#"{"errcode":830002,"errmsg":"use range"}"#)),
                        _ => file.body(body()),
                    }
                    .unwrap()
                },
            ),
        );
    (wechat_kf_test_support::serve(app, "").await, produced)
}

#[tokio::test]
async fn downloads_over_the_size_limit_stop_before_the_limit_is_written() {
    use std::sync::atomic::Ordering;
    let (base, produced) = bottomless_server().await;
    let client = Client::builder("wwCORP", "SECRET")
        .base_url(base)
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    const LIMIT: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();

    // Declared over the limit: refused without reading the body.
    let error = client
        .media()
        .max_bytes(LIMIT)
        .download_to_dir("declared", dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TooLarge { limit: LIMIT, declared: Some(d), .. } if d == 1 << 30),
        "{error}"
    );

    // Chunked, and in ranges of unknown total: stopped the moment the limit is crossed.
    for media_id in ["chunked", "ranged"] {
        let mut written: Vec<u8> = Vec::new();
        let error = client
            .media()
            .max_bytes(LIMIT)
            .download_to_writer(media_id, &mut written)
            .await
            .unwrap_err();
        assert!(error.is_too_large(), "{media_id}: {error}");
        assert!(
            written.len() as u64 <= LIMIT,
            "{media_id}: {}",
            written.len()
        );
        let error = client
            .media()
            .max_bytes(LIMIT)
            .download_to_dir(media_id, dir.path())
            .await
            .unwrap_err();
        assert!(error.is_too_large(), "{media_id}: {error}");
    }
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    // Five bodies of up to 256 MiB each were offered; the reader stopped each within a few
    // socket buffers of the limit.
    let total = produced.load(Ordering::Relaxed);
    assert!(total < 5 * 16 * 1024 * 1024, "{total} bytes produced");
}
