//! Several instances on one store: one leads, the others stand by.
//!
//! The pipeline (pullers, deliverer, reply sender) relies on being the only writer of its store:
//! an account must have one puller and a message one deliverer. So of the instances
//! sharing a database, exactly one runs it: the holder of its lock — on PostgreSQL a
//! session-level advisory lock (per schema) on a connection of its own, on SQLite an exclusive
//! `flock` on `<file>.lock` beside the database. The others answer `/healthz` with 200 and
//! everything else, `/readyz` included, with 503 (so a load balancer sends callbacks and
//! reply-API calls to the leader). On PostgreSQL a standby waits for the lock on one connection
//! of its own (the server grants it the moment the leader's lock connection ends); on SQLite it
//! tries the lock file every `storage.standby_poll`. When the leader stops or dies (or its
//! PostgreSQL lock connection does), the lock is released and a standby takes over, resuming
//! from the committed cursors and deliveries exactly as a restart would (after fencing the
//! store, see `Store::fence`, so that a page commit the old leader still had in flight is not
//! missed). An in-memory SQLite database (`:memory:`) belongs to its process and needs no lock.

use std::io::{Read, Seek, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::http::server::{self, Connections, Limits};
use crate::metrics::Metrics;
use crate::store::{connect_error, is_postgres};

/// The advisory lock's first key (the second is the schema's hash, so that schemas of one
/// database are led separately).
const LOCK_CLASS: i32 = 7_428_102;

/// How often the leader checks that its lock connection is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a standby's attempt to take the lock may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// This instance's leadership of its store: dropping it releases the lock.
pub struct LeaderLock {
    held: Held,
}

enum Held {
    Postgres {
        client: Arc<Client>,
        pid: i32,
        lost: watch::Receiver<bool>,
        heartbeat: tokio::task::JoinHandle<()>,
    },
    /// Released by the kernel when the file is closed, at the latest when the process ends.
    File { _file: std::fs::File, path: PathBuf },
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.held {
            Held::Postgres { pid, .. } => f
                .debug_struct("LeaderLock")
                .field("backend_pid", pid)
                .finish_non_exhaustive(),
            Held::File { path, .. } => f
                .debug_struct("LeaderLock")
                .field("lock_file", path)
                .finish_non_exhaustive(),
        }
    }
}

impl Drop for LeaderLock {
    fn drop(&mut self) {
        if let Held::Postgres { heartbeat, .. } = &self.held {
            heartbeat.abort();
        }
    }
}

impl LeaderLock {
    /// Takes the lock of the SQLite database at `path` (an exclusive `flock` on `<path>.lock`,
    /// into which this process then writes its id) if no other process holds it.
    pub fn try_acquire_file(path: &str) -> Result<Option<LeaderLock>, Error> {
        let lock_path = PathBuf::from(format!("{path}.lock"));
        let cannot = |e| Error::io(format!("lock file {}", lock_path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(cannot)?;
        // Fully qualified: std's inherent `File::try_lock` is newer than the MSRV.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Ok(None),
            Err(fs4::TryLockError::Error(e)) => return Err(cannot(e)),
        }
        // Names the leader for whoever finds the file (and the standby's log line).
        let named = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        if let Err(e) = named {
            tracing::warn!(error = %e, "cannot write this process's id into the lock file");
        }
        Ok(Some(LeaderLock {
            held: Held::File {
                _file: file,
                path: lock_path,
            },
        }))
    }

    /// Takes the lock for the database (and `search_path` schema) of `url` if no other
    /// instance holds it.
    pub async fn try_acquire(url: &str) -> Result<Option<LeaderLock>, Error> {
        let connection = LockConnection::open(url).await?;
        Ok(connection.take(None).await?.ok())
    }

    /// Leads with the lock `connection` now holds (backend `pid`).
    fn held_on(connection: LockConnection, pid: i32) -> LeaderLock {
        let LockConnection {
            client,
            lost,
            lost_tx,
        } = connection;
        // A half-open connection (network partition) would not end the connection task for a
        // long time; a failing query notices within a heartbeat.
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
        LeaderLock {
            held: Held::Postgres {
                client,
                pid,
                lost,
                heartbeat,
            },
        }
    }

    /// The PostgreSQL backend process holding the lock (`pg_terminate_backend(pid)` hands the
    /// leadership to a standby); `None` for a SQLite lock file.
    pub fn backend_pid(&self) -> Option<i32> {
        match &self.held {
            Held::Postgres { pid, .. } => Some(*pid),
            Held::File { .. } => None,
        }
    }

    /// Resolves when the lock is lost (its PostgreSQL connection closed or stopped answering);
    /// a lock file is never lost while this process lives.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let lost = match &self.held {
            Held::Postgres { lost, .. } => Some(lost.clone()),
            Held::File { .. } => None,
        };
        async move {
            match lost {
                Some(mut lost) => {
                    let _ = lost.wait_for(|lost| *lost).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Whether the lock is still held (for PostgreSQL: its connection is still open).
    pub fn is_held(&self) -> bool {
        match &self.held {
            Held::Postgres { client, lost, .. } => !*lost.borrow() && !client.is_closed(),
            Held::File { .. } => true,
        }
    }
}

/// A connection on which the PostgreSQL leader lock is asked for. A standby keeps one while it
/// waits (a new connection per attempt would cost the server a backend each time), and it
/// becomes the leader's lock connection once the lock is granted.
struct LockConnection {
    client: Arc<Client>,
    lost: watch::Receiver<bool>,
    lost_tx: Arc<watch::Sender<bool>>,
}

impl LockConnection {
    async fn open(url: &str) -> Result<LockConnection, Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| connect_error(url, &e))?;
        let (lost_tx, lost) = watch::channel(false);
        let lost_tx = Arc::new(lost_tx);
        let on_close = lost_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL leader-lock connection closed");
            }
            let _ = on_close.send(true);
        });
        Ok(LockConnection {
            client: Arc::new(client),
            lost,
            lost_tx,
        })
    }

    /// Asks for the lock: at once (`wait` `None`), or waiting up to `wait` for the leader to
    /// release it, so that a standby takes over the moment the leader's lock connection ends
    /// rather than at its next poll. Gives the connection back when the lock is held by
    /// another instance.
    async fn take(self, wait: Option<Duration>) -> Result<Result<LeaderLock, Self>, Error> {
        let row = self
            .client
            .query_one("SELECT current_schema() IS NOT NULL, pg_backend_pid()", &[])
            .await?;
        // False when no schema of the search_path exists (current_schema() is NULL, and the
        // lock functions would answer NULL without locking).
        if !row.get::<_, bool>(0) {
            return Err(Error::Config(
                "PostgreSQL: no schema of the connection's search_path exists; create it \
                 or fix the URL's search_path option"
                    .into(),
            ));
        }
        let pid: i32 = row.get(1);
        let granted = match wait {
            None => self
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                    &[&LOCK_CLASS],
                )
                .await?
                .get::<_, bool>(0),
            Some(wait) => {
                // The server bounds the wait (a client-side timeout would leave the request
                // queued, and a lock granted to nobody who knows).
                let ms = wait.as_millis().clamp(1, i32::MAX as u128);
                self.client
                    .batch_execute(&format!("SET lock_timeout = {ms}"))
                    .await?;
                let result = self
                    .client
                    .execute(
                        "SELECT pg_advisory_lock($1, hashtext(current_schema()))",
                        &[&LOCK_CLASS],
                    )
                    .await;
                match result {
                    Ok(_) => {
                        self.client.batch_execute("SET lock_timeout = 0").await?;
                        true
                    }
                    Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => false,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(if granted {
            Ok(LeaderLock::held_on(self, pid))
        } else {
            Err(self)
        })
    }
}

/// The process id written into the lock file of the SQLite database at `path` by its leader,
/// if it can be read.
pub fn lock_file_owner(path: &str) -> Option<u32> {
    let mut text = String::new();
    std::fs::File::open(format!("{path}.lock"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// What leadership of a store location is held by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock<'a> {
    /// A PostgreSQL advisory lock (the location is the URL).
    Advisory,
    /// A `flock` beside this SQLite file (a path, or a `file:` URI's path).
    File(&'a str),
    /// Nothing: an in-memory SQLite database belongs to its process.
    None,
}

/// The lock a store location is led by.
fn lock_of(location: &str) -> Lock<'_> {
    if is_postgres(location) {
        return Lock::Advisory;
    }
    let (path, query) = match location.strip_prefix("file:") {
        Some(uri) => uri.split_once('?').unwrap_or((uri, "")),
        None => (location, ""),
    };
    let in_memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    if in_memory {
        Lock::None
    } else {
        Lock::File(path)
    }
}

/// Takes the lock of the store at `location` if it is free.
async fn try_acquire(location: &str, lock: Lock<'_>) -> Result<Option<LeaderLock>, Error> {
    match lock {
        Lock::Advisory => LeaderLock::try_acquire(location).await,
        Lock::File(path) => LeaderLock::try_acquire_file(path),
        Lock::None => Ok(None),
    }
}

/// Waits until this instance leads the store at `location` (`None` at once for an in-memory
/// SQLite database). While another instance leads, answers as a standby on `listener` (the
/// service's own socket, which it serves on once it leads).
pub(crate) async fn lead(
    location: &str,
    listener: &TcpListener,
    poll: Duration,
    limits: Limits,
    callbacks: Option<Router>,
) -> Result<Option<LeaderLock>, Error> {
    let kind = lock_of(location);
    if kind == Lock::None {
        return Ok(None);
    }
    if let Some(lock) = try_acquire(location, kind).await? {
        return Ok(Some(lock));
    }
    let owner = match kind {
        Lock::File(path) => lock_file_owner(path),
        _ => None,
    };
    match owner {
        Some(pid) => tracing::info!(
            leader_pid = pid,
            "standby: another process leads this SQLite database; waiting for its lock"
        ),
        _ => tracing::info!("standby: another instance leads this database; waiting for its lock"),
    }
    let listener = listener
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| Error::io("cannot answer as a standby on the listening socket", e))?;
    // The service's own limits (a half-sent request must not hold up the takeover either);
    // dropping `stop` (when `lead` is dropped: the service was stopped while standing by)
    // stops the standby server too.
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        standby_router(callbacks.filter(|_| kind == Lock::Advisory)),
        Connections::new(limits, Arc::new(Metrics::new())),
        stop.child_token(),
    ));
    let stop = stop.drop_guard();
    let lock = match kind {
        Lock::Advisory => wait_for_advisory(location, poll).await,
        _ => loop {
            tokio::time::sleep(poll).await;
            // Bounded: an unreachable database must not stall the polling.
            match tokio::time::timeout(POLL_TIMEOUT, try_acquire(location, kind)).await {
                Ok(Ok(Some(lock))) => break lock,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "standby: cannot try the leader lock"),
                Err(_) => tracing::warn!("standby: trying the leader lock timed out"),
            }
        },
    };
    drop(stop);
    let _ = server.await;
    tracing::info!("this instance now leads the database");
    Ok(Some(lock))
}

/// A PostgreSQL standby's wait: on one connection, kept while it works, the lock is asked for
/// with waits of `poll` (the server queues the request, so the lock passes to this instance the
/// moment the leader's connection ends); a broken connection is replaced after a pause of `poll`.
async fn wait_for_advisory(url: &str, poll: Duration) -> LeaderLock {
    let mut connection: Option<LockConnection> = None;
    loop {
        let open = match connection.take() {
            Some(open) if !open.client.is_closed() => open,
            _ => match tokio::time::timeout(POLL_TIMEOUT, LockConnection::open(url)).await {
                Ok(Ok(open)) => open,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "standby: cannot connect to try the leader lock");
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!("standby: connecting to try the leader lock timed out");
                    tokio::time::sleep(poll).await;
                    continue;
                }
            },
        };
        // Bounded on this side too: a half-open connection must not stall the standby. Dropping
        // the connection then releases whatever the server granted it.
        match tokio::time::timeout(poll + POLL_TIMEOUT, open.take(Some(poll))).await {
            Ok(Ok(Ok(lock))) => return lock,
            Ok(Ok(Err(open))) => connection = Some(open),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "standby: cannot try the leader lock");
                tokio::time::sleep(poll).await;
            }
            Err(_) => {
                tracing::warn!("standby: trying the leader lock timed out");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// What a standby answers: alive, not ready, callbacks when it can pass their wakes to the
/// leader (PostgreSQL), nothing else.
fn standby_router(callbacks: Option<Router>) -> Router {
    const STANDBY: &str = "standby: another instance leads this database\n";
    let router = Router::new().route("/healthz", get(|| async { "ok\n" }));
    callbacks
        .map_or(router.clone(), |callbacks| router.merge(callbacks))
        .fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, STANDBY).into_response() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_locations_name_their_file_unless_in_memory() {
        assert_eq!(lock_of("kf.db"), Lock::File("kf.db"));
        assert_eq!(lock_of("/var/lib/kf.db"), Lock::File("/var/lib/kf.db"));
        assert_eq!(lock_of("file:kf.db?cache=shared"), Lock::File("kf.db"));
        assert_eq!(lock_of("postgres://u@h/db"), Lock::Advisory);
        for memory in [
            ":memory:",
            "file::memory:",
            "file:x?mode=memory&cache=shared",
            "",
        ] {
            assert_eq!(lock_of(memory), Lock::None, "{memory}");
        }
    }
}
