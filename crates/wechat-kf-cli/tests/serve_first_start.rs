//! `wechat-kf serve --first-start … --media-dir …`: the flags reach the service. A backlog
//! waits in the emulator; with `since:1h` only the recent message is delivered, with its media
//! downloaded into the directory. A bad policy is refused with exit code 2.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

mod common;
use common::binary;

#[test]
fn an_unknown_first_start_policy_is_refused_with_exit_code_2() {
    let output = Command::new(binary())
        .args(["serve", "--first-start", "yesterday"])
        .env_remove("WECHAT_KF_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("first-start"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

type Bodies = Arc<Mutex<Vec<Value>>>;

async fn hook(State(bodies): State<Bodies>, body: Bytes) -> &'static str {
    if let Ok(value) = serde_json::from_slice(&body) {
        bodies.lock().unwrap().push(value);
    }
    "{}"
}

#[tokio::test]
async fn the_first_start_and_media_flags_reach_the_service() {
    let emu = wechat_kf_test_support::TestEmulator::new()
        .unlimited_sync()
        .start()
        .await;
    let kf = emu.emulator().create_account("flags");
    let now = emu.emulator().now();
    let image_id: Value = reqwest::Client::new()
        .post(format!("{}/emulator/media", emu.base_url()))
        .query(&[("type", "image"), ("filename", "照片.png")])
        .body(vec![5u8; 100])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = emu
        .emulator()
        .customer_send(json!([
            {"open_kfid": kf, "external_userid": "wmF", "msgtype": "text",
             "text": {"content": "两小时前"}, "send_time": now - 7200},
            {"open_kfid": kf, "external_userid": "wmF", "msgtype": "image",
             "image": {"media_id": image_id["media_id"]}, "send_time": now - 1800},
        ]))
        .unwrap();

    let bodies: Bodies = Arc::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(bodies.clone());
    let webhook = wechat_kf_test_support::serve(app, "/hook").await;

    let dir = tempfile::tempdir().unwrap();
    let media_dir = dir.path().join("media");
    let e = emu.emulator().config();
    let mut child = Command::new(binary())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--db", dir.path().join("kf.db").to_str().unwrap()])
        .args(["--webhook", &webhook])
        .args(["--first-start", "since:1h"])
        .args(["--media-dir", media_dir.to_str().unwrap()])
        .env_remove("WECHAT_KF_CONFIG")
        .env("WECHAT_KF_CORP_ID", &e.corp_id)
        .env("WECHAT_KF_SECRET", &e.secret)
        .env("WECHAT_KF_CALLBACK_TOKEN", &e.callback_token)
        .env("WECHAT_KF_ENCODING_AES_KEY", &e.encoding_aes_key)
        .env("WECHAT_KF_BASE_URL", emu.base_url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let seen: Vec<Value> = bodies.lock().unwrap().clone();
        if let Some(body) = seen.iter().find(|b| {
            b["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["msgid"] == ids[1].as_str()))
        }) {
            break (seen.clone(), body.clone());
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the service exited: {status}");
        }
        assert!(Instant::now() < deadline, "nothing delivered: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let (all, body) = delivered;
    let msgids: Vec<&str> = all
        .iter()
        .flat_map(|b| b["messages"].as_array().into_iter().flatten())
        .filter_map(|m| m["msgid"].as_str())
        .collect();
    assert_eq!(
        msgids,
        vec![ids[1].as_str()],
        "the older message is skipped"
    );
    let record = &body["media"][ids[1].as_str()];
    assert_eq!(record["file_name"], "照片.png", "{body}");
    let path = record["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), vec![5u8; 100]);
    // The choice and the number of skipped messages are logged; the messages themselves not.
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("pulling without a cursor"), "{log}");
    let caught_up = log
        .lines()
        .find(|l| l.contains("caught up"))
        .unwrap_or_else(|| panic!("no caught-up line: {log}"));
    assert!(
        caught_up.contains("skipped=1") && caught_up.contains("delivered=1"),
        "{caught_up}"
    );
    assert!(
        !log.contains("两小时前"),
        "message content in the log: {log}"
    );
    emu.shutdown().await;
}
