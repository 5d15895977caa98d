//! `wechat-kf serve`'s configuration as a user meets it: the `export` lines the emulator prints,
//! pasted into `serve`'s environment, make it accept the emulator's callbacks; a wrong setting
//! stops the start with one line saying where it is.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

mod common;
use common::{binary, serve_url};
use wechat_kf_test_support::Spawned;

/// `serve` (or any command) without the test machine's own `WECHAT_KF_*` settings.
fn clean_command() -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WECHAT_KF_") {
            command.env_remove(name);
        }
    }
    command
}

/// Starts `wechat-kf emulator` and returns it with the variables of its `export` lines.
fn emulator(args: &[&str]) -> (Child, BTreeMap<String, String>) {
    let (child, exports, _) = emulator_printing(args);
    (child, exports)
}

/// [`emulator`], and every line it printed up to its control-API line.
fn emulator_printing(args: &[&str]) -> (Child, BTreeMap<String, String>, Vec<String>) {
    let mut child = Command::new(binary())
        .arg("emulator")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exports = BTreeMap::new();
    let mut printed = Vec::new();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        if let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            exports.insert(name.to_owned(), value.to_owned());
        }
        let end = line.starts_with("# control API");
        printed.push(line);
        if end {
            break;
        }
    }
    (child, exports, printed)
}

type Bodies = Arc<Mutex<Vec<Value>>>;

async fn hook(State(bodies): State<Bodies>, body: Bytes) -> &'static str {
    if let Ok(value) = serde_json::from_slice(&body) {
        bodies.lock().unwrap().push(value);
    }
    "{}"
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test]
async fn the_emulators_export_lines_pasted_into_serve_make_it_accept_the_callbacks() {
    let (mut emu, exports) = emulator(&["--listen", "127.0.0.1:0"]);
    for name in [
        "WECHAT_KF_BASE_URL",
        "WECHAT_KF_CORP_ID",
        "WECHAT_KF_SECRET",
        "WECHAT_KF_CALLBACK_TOKEN",
        "WECHAT_KF_ENCODING_AES_KEY",
    ] {
        assert!(
            exports.contains_key(name),
            "{name} not printed: {exports:?}"
        );
    }
    let base = exports["WECHAT_KF_BASE_URL"].clone();
    let http = reqwest::Client::new();
    let account: Value = http
        .post(format!("{base}/emulator/accounts"))
        .json(&json!({"name": "pasted"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let open_kfid = account["open_kfid"].as_str().unwrap().to_owned();

    let bodies: Bodies = Arc::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(bodies.clone());
    let webhook = wechat_kf_test_support::serve(app, "/hook").await;
    // Only the pasted variables configure WeChat: no file, no credential flag.
    let mut serve = Spawned::spawn(
        clean_command()
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--db", ":memory:", "--webhook", &webhook])
            .envs(&exports)
            .env("RUST_LOG", "info"),
    );
    let url = serve_url(&mut serve).await;
    // The emulator learns where serve listens, as an operator enters the URL in WeCom.
    let set: reqwest::Response = http
        .put(format!("{base}/emulator/callback/url"))
        .json(&json!({"url": format!("{url}/callback")}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let log = || serve.transcript();

    let sent: Value = http
        .post(format!("{base}/emulator/customer/send"))
        .json(
            &json!({"open_kfid": open_kfid, "external_userid": "wmPasted", "msgtype": "text",
                      "text": {"content": "hello from the emulator"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msgid = sent["msgids"][0].as_str().unwrap().to_owned();
    // The safety pull runs every 2 minutes: a delivery within seconds came from the callback.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = bodies.lock().unwrap().iter().any(|b| {
            b["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["msgid"] == msgid.as_str()))
        });
        if delivered {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let callbacks: Value = http
        .get(format!("{base}/emulator/callbacks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let attempts = callbacks["attempts"].as_array().unwrap();
    assert!(
        attempts
            .iter()
            .any(|a| a["open_kfid"] == open_kfid.as_str()),
        "{callbacks}"
    );
    assert!(
        attempts.iter().all(|a| a["status"] == 200),
        "serve refused a callback: {callbacks}"
    );
    drop(serve);
    stop(&mut emu);
}

/// Runs `serve` with a config file until it exits; (exit code, stderr).
fn serve_with_config(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kf.toml");
    std::fs::write(&path, toml).unwrap();
    let output = clean_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

#[test]
fn a_wrong_setting_stops_serve_at_start_with_one_line_saying_where() {
    let (code, stderr) =
        serve_with_config("[pull]\npage_size = 100\n\nfirst_start = \"yesterday\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("kf.toml:4:1: pull.first_start: \"yesterday\" is not from-now"),
        "{stderr}"
    );
    // An option the S3 client does not know is found when the media fetcher builds the client
    // at start (the configuration imports nothing of the media module).
    let (code, stderr) = serve_with_config(
        "[media]\nobject_store = \"s3://kf-media\"\n[media.object_store_options]\ncolour = \"blue\"\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("\"colour\" is not an S3 option"),
        "{stderr}"
    );
    let (code, stderr) = serve_with_config("[media]\nobject_store = \"gs://kf-media\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("media.object_store: \"gs://kf-media\" is not s3://<bucket>"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_emulator_without_accounts_says_how_to_create_one_and_serve_says_it_pulls_nothing() {
    let (mut emu, exports, printed) = emulator_printing(&["--listen", "127.0.0.1:0"]);
    let base = exports["WECHAT_KF_BASE_URL"].clone();
    let text = printed.join("\n");
    assert!(text.contains("# no accounts yet"), "{text}");
    let curl = printed
        .iter()
        .find(|l| l.contains("curl"))
        .unwrap_or_else(|| panic!("no curl line: {text}"));
    assert!(
        curl.starts_with('#') && curl.contains(&format!("{base}/emulator/accounts")),
        "{curl}"
    );
    let mut serve = Spawned::spawn(
        clean_command()
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--db", ":memory:"])
            .envs(&exports)
            .env("RUST_LOG", "warn"),
    );
    let lines = serve
        .read_until(
            wechat_kf_test_support::Stream::Stderr,
            Duration::from_secs(20),
            "the listening line",
            |l| l.contains(common::SERVE_LISTENING),
        )
        .await
        .join("\n");
    assert!(lines.contains("wechat-kf serve: what runs"), "{lines}");
    assert!(
        lines.contains("accounts:    none: nothing is pulled"),
        "{lines}"
    );
    assert!(lines.contains("no KF account to pull"), "{lines}");
    assert!(
        lines.contains("messages:    to stdout as JSON Lines"),
        "{lines}"
    );
    assert!(
        lines.contains("reply API:   off: set --api-token"),
        "{lines}"
    );
    drop(serve);
    stop(&mut emu);
}

#[tokio::test]
async fn a_secret_wechat_rejects_stops_serve_with_the_setting_named() {
    let (mut emu, mut exports) = emulator(&["--listen", "127.0.0.1:0"]);
    exports.insert("WECHAT_KF_SECRET".into(), "wrong-secret-value".into());
    let output = clean_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--db", ":memory:"])
        .envs(&exports)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("wechat-kf: serve: "), "{stderr}");
    assert!(
        stderr.contains("wechat.secret: WeChat rejected the secret for this corp id (40001)"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-value"), "{stderr}");
    stop(&mut emu);
}
