//! Helpers shared by the `serve` tests (each test file uses some of them). What other crates'
//! tests share too (skipping, the test emulator, ports, child processes) is in
//! `wechat-kf-test-support`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_test_support::{Spawned, Stream};

/// What `wechat-kf serve` prints on stderr once it has started (and is ready), before its URL.
pub const SERVE_LISTENING: &str = "wechat-kf serve: listening on ";

/// The `wechat-kf` binary under test: this build's, or `WECHAT_KF_SERVE_BIN`.
pub fn binary() -> String {
    std::env::var("WECHAT_KF_SERVE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_wechat-kf").to_owned())
}

/// Whether `serve` exists in the binary under test (`WECHAT_KF_SERVE_BIN` may name an older
/// build); skipped without it, failing under `WECHAT_KF_CI=1`.
pub fn serve_available() -> bool {
    let available = Command::new(binary())
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    wechat_kf_test_support::require(
        available,
        "`wechat-kf serve` is not wired into this build of wechat-kf",
    )
}

/// Waits until a `wechat-kf serve` started with `--listen 127.0.0.1:0` has started; the base
/// URL it printed (`http://127.0.0.1:PORT`).
pub async fn serve_url(serve: &mut Spawned) -> String {
    serve
        .url_after(Stream::Stderr, SERVE_LISTENING, Duration::from_secs(20))
        .await
}

/// Starts `wechat-kf serve` against the emulator (its credentials in the environment) with the
/// SQLite file `db`, the webhook (signed with `crash-secret`) and a config file, on a port of
/// its own; [`wait_ready`] points the emulator's callbacks at it.
pub fn spawn_against(
    emu: &RunningEmulator,
    db: &Path,
    webhook: &str,
    config_file: &Path,
) -> Spawned {
    let mut command = serve_command(emu, db, config_file);
    command
        .args(["--webhook", webhook])
        .env("WECHAT_KF_WEBHOOK_SECRET", "crash-secret");
    Spawned::spawn(&mut command)
}

/// [`spawn_against`] with other flags instead of the webhook (e.g. a responder's).
pub fn spawn_with(emu: &RunningEmulator, db: &Path, config_file: &Path, args: &[&str]) -> Spawned {
    let mut command = serve_command(emu, db, config_file);
    command.args(args);
    Spawned::spawn(&mut command)
}

fn serve_command(emu: &RunningEmulator, db: &Path, config_file: &Path) -> Command {
    let e = emu.emulator().config();
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .args(["--config", config_file.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--db", db.to_str().unwrap()])
        .env("WECHAT_KF_CORP_ID", &e.corp_id)
        .env("WECHAT_KF_SECRET", &e.secret)
        .env("WECHAT_KF_CALLBACK_TOKEN", &e.callback_token)
        .env("WECHAT_KF_ENCODING_AES_KEY", &e.encoding_aes_key)
        .env("WECHAT_KF_BASE_URL", emu.base_url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// Waits until a `serve` from [`spawn_against`] has started (exiting first fails the test with
/// its output) and points the emulator's callbacks at it.
pub async fn wait_ready(emu: &RunningEmulator, child: &mut Spawned) {
    let url = serve_url(child).await;
    emu.emulator()
        .set_callback_url(Some(format!("{url}/callback")));
}

/// POSTs to the emulator's control API; its JSON answer (a failure fails the test).
pub async fn control(emu: &RunningEmulator, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", emu.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// The emulator's count of calls to an API path.
pub fn calls(emu: &RunningEmulator, path: &str) -> u64 {
    emu.emulator().state_snapshot()["counters"]["calls"][path]
        .as_u64()
        .unwrap_or(0)
}
