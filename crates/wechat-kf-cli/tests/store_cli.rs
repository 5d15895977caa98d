//! `wechat-kf store …` beside a running `serve`: what the service holds, read-only, one JSON
//! object per line, no message content.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wechat_kf_test_support::{ClosedPort, Spawned, TestEmulator};

mod common;

fn store(args: &[&str]) -> Output {
    Command::new(common::binary())
        .arg("store")
        .args(args)
        .env_remove("WECHAT_KF_CONFIG")
        .env_remove("WECHAT_KF_DB")
        .env_remove("WECHAT_KF_CORP_ID")
        .env_remove("WECHAT_KF_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn store_lists_messages_and_failing_deliveries_while_serve_runs() {
    if !common::serve_available() {
        return;
    }
    let emu = TestEmulator::new().unlimited().start().await;
    let kf = emu.emulator().create_account("stored");
    let e = emu.emulator().config();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let db = db.to_str().unwrap();
    // The bot is down: the delivery keeps failing.
    let bot = ClosedPort::new();
    let mut serve = Spawned::spawn(
        Command::new(common::binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--db", db])
            .args(["--webhook", &format!("{}/hook", bot.url())])
            .env_remove("WECHAT_KF_CONFIG")
            .env("WECHAT_KF_CORP_ID", &e.corp_id)
            .env("WECHAT_KF_SECRET", &e.secret)
            .env("WECHAT_KF_CALLBACK_TOKEN", &e.callback_token)
            .env("WECHAT_KF_ENCODING_AES_KEY", &e.encoding_aes_key)
            .env("WECHAT_KF_BASE_URL", emu.base_url())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
    );
    let url = common::serve_url(&mut serve).await;
    emu.emulator()
        .set_callback_url(Some(format!("{url}/callback")));
    let msgid = emu
        .emulator()
        .customer_send(
            json!({"open_kfid": kf, "external_userid": "wmStore", "msgtype": "text",
                              "text": {"content": "secret plans"}}),
        )
        .unwrap()
        .remove(0);

    let deadline = Instant::now() + Duration::from_secs(20);
    let messages = loop {
        let out = store(&["messages", "--db", db, "--open-kfid", &kf, "--failed"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = lines(&out);
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "{}", serve.transcript());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["msgid"], msgid.as_str());
    assert_eq!(messages[0]["state"], "pending");
    assert_eq!(messages[0]["last_error"], "connection refused");
    assert!(messages[0]["attempts"].as_u64().unwrap() >= 1);
    let all = store(&["messages", "--db", db, "--customer", "wmStore"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains("secret plans"));

    let out = store(&["deliveries", "--db", db, "--failed", "--limit", "5"]);
    let deliveries = lines(&out);
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["msgids"], json!([msgid]));
    assert_eq!(deliveries[0]["customers"], json!([format!("{kf}/wmStore")]));
    let out = store(&["sends", "--db", db]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());

    // The sandbox's store lives inside serve; a limit out of range is refused before opening.
    let out = store(&["messages"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("wechat-kf: store: "), "{stderr}");
    assert!(stderr.contains("GET /v1/messages"), "{stderr}");
    let out = store(&["messages", "--db", db, "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
    drop(serve);
    emu.shutdown().await;
}
