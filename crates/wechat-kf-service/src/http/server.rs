//! The HTTP server's accept loop, with what a hostile client must not be able to hold: a
//! request's headers and body must arrive within `read_timeout`, a kept-alive connection
//! without a request in flight is closed after `idle_timeout`, and at most `max_connections`
//! are open (on every listener together). At the cap the oldest connection without a request in
//! flight (an idle keep-alive, or one still trickling its headers) is closed to make room, so a
//! flood of half-sent requests cannot lock out `/healthz` or WeChat's next callback; one WARN
//! line says when the cap is reached, one INFO line when it is relieved. On shutdown the server
//! stops accepting, lets requests in flight finish for `shutdown_grace`, then closes the rest.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// What a client may hold, and the shutdown grace (`[http]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Headers within this long of the connection's opening (or of its previous response, up
    /// to `idle_timeout`); the body within this long of the headers.
    pub(crate) read_timeout: Duration,
    /// A kept-alive connection without a request in flight is closed after this long.
    pub(crate) idle_timeout: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// How long requests in flight may go on after shutdown began.
    pub(crate) shutdown_grace: Duration,
}

/// The open connections of every listener: the cap is shared.
pub(crate) struct Connections {
    limits: Limits,
    metrics: Arc<Metrics>,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// At the cap (logged once per episode).
    saturated: AtomicBool,
    epoch: Instant,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One connection's state, as the accept loop and its watchdog see it.
struct Conn {
    id: u64,
    /// Requests whose headers arrived and whose handler has not answered yet.
    in_flight: AtomicUsize,
    /// Of those, the requests whose body is still arriving: the client, not the service, is
    /// what they wait for, so at the cap such a connection may be closed like an idle one.
    receiving: AtomicUsize,
    /// Requests served so far (0: still waiting for the first request's headers).
    served: AtomicU64,
    /// Milliseconds since [`Connections::epoch`] when the connection opened or last went idle.
    idle_since_ms: AtomicU64,
    /// Closed to make room at the cap.
    evict: CancellationToken,
}

impl Connections {
    pub(crate) fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            metrics,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis().min(u64::MAX as u128) as u64
    }

    /// Registers a new connection, closing the oldest one without a request in flight when at
    /// the cap (else the oldest one still receiving a request body: a client sending slowly
    /// must not hold a slot the service needs); `None` when every open connection has a request
    /// the service is working on (the new one is refused).
    fn admit(&self) -> Option<Arc<Conn>> {
        let max = self.limits.max_connections;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= max {
            if !self.saturated.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_connections = max,
                    "connection limit reached (http.max_connections): closing the oldest \
                     connection without a request in flight for each new one"
                );
            }
            let victim = open
                .values()
                .filter_map(|c| {
                    let idle = c.in_flight.load(Ordering::Relaxed) == 0;
                    let receiving = c.receiving.load(Ordering::Relaxed) > 0;
                    // Idle ones first, then those waiting for their client's body.
                    (idle || receiving)
                        .then(|| (!idle, c.idle_since_ms.load(Ordering::Relaxed), c.id))
                })
                .min()
                .map(|(_, _, id)| id);
            let Some(victim) = victim else {
                Metrics::add(&self.metrics.connections_refused, 1);
                return None;
            };
            if let Some(conn) = open.remove(&victim) {
                conn.evict.cancel();
            }
            Metrics::add(&self.metrics.connections_shed, 1);
        } else if open.len() < max - max / 4 && self.saturated.swap(false, Ordering::Relaxed) {
            tracing::info!(
                open = open.len(),
                max_connections = max,
                "connections below the limit again"
            );
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evict: CancellationToken::new(),
        });
        open.insert(conn.id, conn.clone());
        self.metrics
            .connections_open
            .store(open.len() as i64, Ordering::Relaxed);
        Some(conn)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&id);
        self.metrics
            .connections_open
            .store(open.len() as i64, Ordering::Relaxed);
    }

    /// When an idle connection is closed: `None` while a request is in flight.
    fn deadline(&self, conn: &Conn) -> Option<Instant> {
        if conn.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let timeout = if conn.served.load(Ordering::Relaxed) == 0 {
            self.limits.read_timeout
        } else {
            self.limits.idle_timeout
        };
        let since = Duration::from_millis(conn.idle_since_ms.load(Ordering::Relaxed));
        Some(self.epoch + since + timeout)
    }
}

/// A request in flight on a connection; the connection is idle again when the last one ends.
struct Busy {
    conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl Busy {
    fn start(conn: Arc<Conn>, connections: Arc<Connections>) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.served.fetch_add(1, Ordering::Relaxed);
        Busy { conn, connections }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since_ms
            .store(self.connections.now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown`, then for at most the shutdown grace.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(e) => {
                // Out of file descriptors, most likely: say so once, and do not spin.
                if !accept_failing {
                    tracing::error!(error = %e, "cannot accept connections; retrying");
                    accept_failing = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let Some(conn) = connections.admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            router.clone(),
            conn,
            connections.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    let grace = connections.limits.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            grace_ms = grace.as_millis() as u64,
            "shutdown grace over: closing connections with requests still unfinished"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// How often a connection with a request in flight looks at its state again.
const BUSY_TICK: Duration = Duration::from_millis(250);

/// Serves one connection until it ends, times out, is evicted, or shutdown closes it.
async fn connection(
    stream: TcpStream,
    router: Router,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) {
    let read_timeout = connections.limits.read_timeout;
    let service = {
        let (conn, connections) = (conn.clone(), connections.clone());
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::start(conn.clone(), connections.clone());
            let router = router.clone();
            let conn = conn.clone();
            async move {
                // The body must arrive within the read timeout of the headers.
                let receiving = (!request.body().is_end_stream()).then(|| Receiving::start(&conn));
                let request = request
                    .map(|body| Body::new(Deadline::new(Body::new(body), read_timeout, receiving)));
                let response = router.oneshot(request).await;
                drop(busy);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Header timeouts are the watchdog's below (hyper's would need its timer and would not
    // tell the first request from a kept-alive connection's next one).
    builder.keep_alive(true).header_read_timeout(None);
    let mut served = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut closing = false;
    loop {
        let wake = connections
            .deadline(&conn)
            .unwrap_or_else(|| Instant::now() + BUSY_TICK);
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = conn.evict.cancelled() => break,
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake) => {
                if connections.deadline(&conn).is_some_and(|d| d <= Instant::now()) {
                    Metrics::add(&connections.metrics.connections_timed_out, 1);
                    break;
                }
            }
        }
    }
    connections.remove(conn.id);
}

/// The error a body that did not arrive in time ends with.
#[derive(Debug)]
pub(crate) struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within http.read_timeout")
    }
}

impl std::error::Error for BodyTimeout {}

/// Whether a body error (anywhere in its source chain) is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request body still arriving on its connection ([`Conn::receiving`]) until dropped.
struct Receiving(Arc<Conn>);

impl Receiving {
    fn start(conn: &Arc<Conn>) -> Receiving {
        conn.receiving.fetch_add(1, Ordering::Relaxed);
        Receiving(conn.clone())
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body that fails with [`BodyTimeout`] unless it ends before its deadline.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    /// Dropped when the body has arrived (or failed).
    receiving: Option<Receiving>,
}

impl Deadline {
    fn new(inner: Body, timeout: Duration, receiving: Option<Receiving>) -> Deadline {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            receiving,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
                this.receiving = None;
            }
            return Poll::Ready(frame);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves a router with `/healthz` and a `/slow` that reads its body, under `limits`; its
    /// address, the shutdown token and the server task.
    async fn start(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        Arc<Metrics>,
        tokio::task::JoinHandle<()>,
    ) {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/slow",
                post(|body: Bytes| async move { format!("{}\n", body.len()) }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router,
            Connections::new(limits, metrics.clone()),
            shutdown.clone(),
        ));
        (addr, shutdown, metrics, server)
    }

    fn limits() -> Limits {
        Limits {
            read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            max_connections: 4,
            shutdown_grace: Duration::from_millis(300),
        }
    }

    /// Reads until the peer closes (bounded); what it sent.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server did not close the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get_healthz(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_to_close(&mut stream).await
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_headers_is_closed_after_the_read_timeout() {
        let (addr, shutdown, metrics, server) = start(limits()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .unwrap();
        assert_eq!(read_to_close(&mut stream).await, "");
        assert_eq!(metrics.connections_timed_out.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_kept_alive_connection_without_a_request_is_closed_after_the_idle_timeout() {
        let (addr, shutdown, _, server) = start(limits()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_that_never_arrives_fails_the_request_after_the_read_timeout() {
        let (addr, shutdown, _, server) = start(limits()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        // axum's `Bytes` rejection of a failed body is a 400 (the reply API answers 408).
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }

    /// Opens the cap's 4 connections, each sending `partial` (accepted in order, so the first
    /// is the oldest), then checks that `/healthz` still answers 10 times.
    async fn fill_the_cap(addr: std::net::SocketAddr, partial: &[u8]) -> Vec<TcpStream> {
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(partial).await.unwrap();
            held.push(stream);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every request has reached its handler (or its headers are pending) by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..10 {
            let answer = get_healthz(addr).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        held
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_makes_room_so_health_still_answers() {
        let mut limits = limits();
        limits.read_timeout = Duration::from_secs(30);
        let (addr, shutdown, metrics, server) = start(limits).await;
        let mut held = fill_the_cap(addr, b"GET /healthz HTTP/1.1\r\n").await;
        // Half-sent connections were closed to make room, the oldest first.
        assert_eq!(read_to_close(&mut held[0]).await, "");
        assert!(metrics.connections_shed.load(Ordering::Relaxed) >= 1);
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn at_the_cap_bodies_that_never_finish_make_room_too_so_health_still_answers() {
        let mut limits = limits();
        limits.read_timeout = Duration::from_secs(30);
        let (addr, shutdown, metrics, server) = start(limits).await;
        // Headers complete, the body cut short: the handler is reading it.
        let partial = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123";
        let mut held = fill_the_cap(addr, partial).await;
        assert_eq!(metrics.connections_refused.load(Ordering::Relaxed), 0);
        assert!(metrics.connections_shed.load(Ordering::Relaxed) >= 1);
        read_to_close(&mut held[0]).await;
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_a_half_sent_request_once_the_grace_is_over() {
        let mut limits = limits();
        limits.read_timeout = Duration::from_secs(30);
        limits.shutdown_grace = Duration::from_millis(200);
        let (addr, shutdown, _, server) = start(limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(
            stopped.is_ok(),
            "the server waited for the half-sent request"
        );
        read_to_close(&mut stream).await;
    }
}
