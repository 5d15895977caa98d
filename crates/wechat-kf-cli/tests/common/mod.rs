//! Helpers shared by the `serve` tests (each test file uses some of them).
#![allow(dead_code)]

use std::net::TcpListener;

/// The `wechat-kf` binary under test: this build's, or `WECHAT_KF_SERVE_BIN`.
pub fn binary() -> String {
    std::env::var("WECHAT_KF_SERVE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_wechat-kf").to_owned())
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `app` on a free loopback port in the background; the URL of `path` on it.
pub async fn serve(app: axum::Router, path: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
