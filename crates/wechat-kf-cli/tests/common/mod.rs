//! Helpers shared by the `serve` tests (each test file uses some of them). What other crates'
//! tests share too (skipping, the test emulator, ports, child processes) is in
//! `wechat-kf-test-support`.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

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
