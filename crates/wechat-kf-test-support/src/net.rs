//! Ports: bound to 0 and read back, never released and handed on.

use std::net::SocketAddr;

/// Serves `app` in the background on a loopback port of its own; the URL of `path` on it
/// (`serve(app, "/hook")` → `http://127.0.0.1:PORT/hook`). The server runs until the runtime
/// stops.
pub async fn serve(app: axum::Router, path: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        // The test ends by dropping the runtime, never by an error here worth a panic.
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}{path}")
}

/// A loopback address where connections are refused, for as long as this value lives: a
/// socket bound to `127.0.0.1:0` that never listens. Holding the port keeps another test from
/// taking it, which "bind, read the port, close" cannot promise.
#[derive(Debug)]
pub struct ClosedPort {
    // Kept only to hold the port.
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds the port.
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a loopback port");
        let addr = socket.local_addr().expect("the bound address");
        ClosedPort {
            _socket: socket,
            addr,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_refuses_connections() {
        let closed = ClosedPort::new();
        let error = tokio::net::TcpStream::connect(closed.addr())
            .await
            .expect_err("nothing listens");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_served_router_answers_at_the_returned_url() {
        let app = axum::Router::new().route("/hook", axum::routing::get(|| async { "here" }));
        let url = serve(app, "/hook").await;
        let addr = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/hook"))
            .expect("http://ADDR/hook");
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /hook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.ends_with("here"), "{response}");
    }
}
