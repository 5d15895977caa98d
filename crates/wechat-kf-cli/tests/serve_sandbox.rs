//! `wechat-kf serve --echo` without credentials: the sandbox works as the README shows — the
//! printed curl command sends a customer message, the echo reaches the emulator's outbox, the
//! message appears on stdout as a JSON line, and SIGTERM stops the service cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wechat_kf_test_support::{Spawned, Stream};

mod common;
use common::binary;

#[tokio::test]
async fn the_sandbox_answers_a_customer_with_an_echo_in_one_command() {
    if !common::serve_available() {
        return;
    }
    // Both on ports of their own: the service prints its address, the banner the emulator's.
    let mut command = Command::new(binary());
    command
        .args(["serve", "--echo"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--emulator-listen", "127.0.0.1:0"])
        .env_remove("WECHAT_KF_CORP_ID")
        .env_remove("WECHAT_KF_SECRET")
        .env_remove("WECHAT_KF_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let mut child = Spawned::spawn(&mut command);
    let service = common::serve_url(&mut child).await;

    // The banner names the emulator and the curl command.
    let timeout = Duration::from_secs(20);
    let emulator = child.url_after(Stream::Stderr, "emulator:", timeout).await;
    let banner = child
        .read_until(Stream::Stderr, timeout, "the sandbox banner", |l| {
            l.contains("outbox")
        })
        .await
        .join("\n");
    assert!(
        banner.contains(&format!("{emulator}/emulator/customer/send")),
        "{banner}"
    );

    let http = reqwest::Client::new();
    let state: Value = http
        .get(format!("{emulator}/emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let open_kfid = state["accounts"][0]["open_kfid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(banner.contains(&open_kfid));

    let sent: Value = http
        .post(format!("{emulator}/emulator/customer/send"))
        .json(&json!({"open_kfid": open_kfid, "external_userid": "wmDemoCustomer", "msgtype": "text", "text": {"content": "hello"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msgid = sent["msgids"][0].as_str().unwrap().to_owned();

    // The message is written to stdout as one JSON line...
    let line = child
        .next_line(Stream::Stdout, Duration::from_secs(10))
        .await;
    let message: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(message["msgid"], msgid.as_str());
    assert_eq!(message["text"]["content"], "hello");
    // ...and answered with an echo.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outbox: Value = http
            .get(format!("{emulator}/emulator/outbox?open_kfid={open_kfid}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if outbox["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["request"]["text"]["content"] == "echo: hello")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no echo in the outbox: {outbox}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = http.get(format!("{service}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn the_sandbox_prints_the_emulators_credentials_and_takes_an_api_token_flag() {
    if !common::serve_available() {
        return;
    }
    let mut command = Command::new(binary());
    command
        .args(["serve", "--api-token", "flag-token"])
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("WECHAT_KF_CORP_ID")
        .env_remove("WECHAT_KF_SECRET")
        .env_remove("WECHAT_KF_CONFIG")
        .env_remove("WECHAT_KF_API_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let mut child = Spawned::spawn(&mut command);
    let timeout = Duration::from_secs(20);
    let start = child
        .read_until(Stream::Stderr, timeout, "the listening line", |l| {
            l.contains(common::SERVE_LISTENING)
        })
        .await
        .join("\n");
    assert!(
        start.contains("reply API:   on at /v1/* (bearer api.token)"),
        "{start}"
    );
    let service = start
        .rsplit(common::SERVE_LISTENING)
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let export = child
        .read_until(Stream::Stderr, timeout, "the export line", |l| {
            l.contains("export WECHAT_KF_BASE_URL=")
        })
        .await
        .pop()
        .unwrap();
    assert!(!export.contains("flag-token"), "{export}");
    // The printed line, as a shell would read it, points `wechat-kf token` at the emulator.
    let vars: Vec<(String, String)> = export
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars.len(), 3, "{export}");
    let token = Command::new(binary())
        .arg("token")
        .env_remove("WECHAT_KF_CONFIG")
        .envs(vars)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    assert!(String::from_utf8_lossy(&token.stdout).starts_with("expires_at="));
    // The flag's token opens the reply API.
    let http = reqwest::Client::new();
    let status = http
        .get(format!("{service}/v1/sessions/wkX/wmX"))
        .bearer_auth("flag-token")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
