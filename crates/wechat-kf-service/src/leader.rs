//! Several instances on one PostgreSQL database: one leads, the others stand by.
//!
//! The pipeline (pullers, deliverer, reply sender) relies on being the only writer of its store:
//! `seq` must grow in commit order and a message must have one deliverer. So of the instances
//! sharing a database (and schema), exactly one runs it: the holder of a session-level advisory
//! lock on a connection of its own. The others answer `/healthz` with 200 and everything else,
//! `/readyz` included, with 503 (so a load balancer sends callbacks and reply-API calls to the
//! leader), and try the lock again every `storage.standby_poll`. When the leader stops, or its
//! lock connection dies, PostgreSQL releases the lock and a standby takes over, resuming from the
//! committed cursors and deliveries exactly as a restart would.
//!
//! SQLite needs none of this: its file belongs to one process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use crate::Error;

/// The advisory lock's first key (the second is the schema's hash, so that schemas of one
/// database are led separately).
const LOCK_CLASS: i32 = 7_428_102;

/// How often the leader checks that its lock connection is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// This instance's leadership of a PostgreSQL database: dropping it releases the lock.
pub struct LeaderLock {
    client: Arc<Client>,
    pid: i32,
    lost: watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Drop for LeaderLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl LeaderLock {
    /// Takes the lock for the database (and `search_path` schema) of `url` if no other
    /// instance holds it.
    pub async fn try_acquire(url: &str) -> Result<Option<LeaderLock>, Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| Error::Store(format!("cannot connect to PostgreSQL: {e}")))?;
        let (lost_tx, lost) = watch::channel(false);
        let lost_tx = Arc::new(lost_tx);
        let on_close = lost_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL leader-lock connection closed");
            }
            let _ = on_close.send(true);
        });
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema())), pg_backend_pid()",
                &[&LOCK_CLASS],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let pid: i32 = row.get(1);
        // A half-open connection (network partition) would not end the connection task for a
        // long time; a failing query notices within a heartbeat.
        let client = Arc::new(client);
        let probe = client.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let alive = tokio::time::timeout(HEARTBEAT, probe.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        });
        Ok(Some(LeaderLock {
            client,
            pid,
            lost,
            heartbeat,
        }))
    }

    /// The PostgreSQL backend process holding the lock (`pg_terminate_backend(pid)` hands the
    /// leadership to a standby).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Resolves when the lock is lost (its connection closed or stopped answering).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Whether the lock's connection is still open.
    pub fn is_held(&self) -> bool {
        !*self.lost.borrow() && !self.client.is_closed()
    }
}

/// Whether a database location is a PostgreSQL URL.
pub(crate) fn is_postgres(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Waits until this instance leads the PostgreSQL database at `location` (immediately for
/// SQLite, which returns `None`). While another instance leads, answers on `listen` as a
/// standby.
pub(crate) async fn lead(
    location: &str,
    listen: SocketAddr,
    poll: Duration,
) -> Result<Option<LeaderLock>, Error> {
    if !is_postgres(location) {
        return Ok(None);
    }
    if let Some(lock) = LeaderLock::try_acquire(location).await? {
        return Ok(Some(lock));
    }
    tracing::info!("standby: another instance leads this database; waiting for its lock");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {listen}"), e))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, standby_router()).with_graceful_shutdown(async move {
            // Also resolves when `lead` is dropped (the service was stopped while standing by).
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "standby HTTP server stopped");
        }
    });
    let lock = loop {
        tokio::time::sleep(poll).await;
        match LeaderLock::try_acquire(location).await {
            Ok(Some(lock)) => break lock,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "standby: cannot try the leader lock"),
        }
    };
    let _ = stop.send(());
    let _ = server.await;
    tracing::info!("this instance now leads the database");
    Ok(Some(lock))
}

/// What a standby answers: alive, not ready, nothing else.
fn standby_router() -> Router {
    const STANDBY: &str = "standby: another instance leads this database\n";
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, STANDBY).into_response() })
}
