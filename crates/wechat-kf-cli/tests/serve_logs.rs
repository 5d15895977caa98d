//! What `wechat-kf serve` logs at INFO while it works: one line per pull and per delivery
//! (account, counts, target host, status, attempt), a failed delivery with its host and cause,
//! and never a message's content.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::json;
use wechat_kf_test_support::{Spawned, Stream, TestEmulator};

mod common;

/// The start of a delivery's INFO line (after the timestamp).
const DELIVERED: &str = "INFO wechat_kf_service::delivery: delivered ";

#[tokio::test(flavor = "multi_thread")]
async fn pulls_and_deliveries_are_logged_with_counts_hosts_and_causes_but_no_content() {
    if !common::serve_available() {
        return;
    }
    let emu = TestEmulator::new().unlimited().start().await;
    let kf = emu.emulator().create_account("logged");
    // The bot fails the first delivery, then acknowledges.
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let webhook = wechat_kf_test_support::serve(app, "/hook").await;
    let host = webhook
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let e = emu.emulator().config();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kf.toml");
    std::fs::write(&config, "[webhook]\nretry_initial = \"50ms\"\n").unwrap();
    let mut serve = Spawned::spawn(
        Command::new(common::binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--db", ":memory:"])
            .args(["--webhook", &webhook])
            .arg("--config")
            .arg(&config)
            .env("WECHAT_KF_CORP_ID", &e.corp_id)
            .env("WECHAT_KF_SECRET", &e.secret)
            .env("WECHAT_KF_CALLBACK_TOKEN", &e.callback_token)
            .env("WECHAT_KF_ENCODING_AES_KEY", &e.encoding_aes_key)
            .env("WECHAT_KF_BASE_URL", emu.base_url())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null()),
    );
    let url = common::serve_url(&mut serve).await;
    emu.emulator()
        .set_callback_url(Some(format!("{url}/callback")));
    emu.emulator()
        .customer_send(
            json!({"open_kfid": kf, "external_userid": "wmLog", "msgtype": "text",
                              "text": {"content": "private words"}}),
        )
        .unwrap();
    let timeout = Duration::from_secs(20);
    // The pull's line comes when its round ends, which may be after the delivery.
    let (mut pulled, mut delivered) = (false, false);
    let lines = serve
        .read_until(
            Stream::Stderr,
            timeout,
            "the pull and delivery lines",
            |l| {
                pulled |= l.contains(" pulled ") && l.contains("messages=1");
                delivered |= l.contains(DELIVERED);
                pulled && delivered
            },
        )
        .await;
    let text = lines.join("\n");
    let pulled = lines
        .iter()
        .find(|l| l.contains(" pulled ") && l.contains("messages=1"))
        .unwrap_or_else(|| panic!("no pull line: {text}"));
    assert!(pulled.contains(&kf), "{pulled}");
    assert!(pulled.contains("cursor_moved=true"), "{pulled}");
    let failed = lines
        .iter()
        .find(|l| l.contains("failed: HTTP 500"))
        .unwrap_or_else(|| panic!("no failure line: {text}"));
    assert!(
        failed.contains(&format!("delivery to {host} failed")),
        "{failed}"
    );
    assert!(failed.contains("attempt=1"), "{failed}");
    let delivered = lines.iter().find(|l| l.contains(DELIVERED)).unwrap();
    assert!(delivered.contains(&format!("to=\"{host}\"")), "{delivered}");
    assert!(delivered.contains("messages=1"), "{delivered}");
    assert!(delivered.contains("attempt=2"), "{delivered}");
    assert!(delivered.contains("status=200"), "{delivered}");
    assert!(!serve.transcript().contains("private words"));
    drop(serve);
    emu.shutdown().await;
}
