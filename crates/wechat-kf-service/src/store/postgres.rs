//! The PostgreSQL store (`tokio-postgres`), selected by a `postgres://` database URL.
//!
//! A pool of connections (`deadpool-postgres`, `storage.pool_size`), each method one
//! transaction on a connection of its own, statements prepared once per connection. Transactions
//! therefore run concurrently, and `seq` (a `BIGSERIAL`) no longer increases in commit order
//! across accounts: a lower seq may commit after a higher one. What keeps delivery correct:
//! - Per account, pages are committed by the account's one puller, one after the other, so an
//!   account's seqs do increase in commit order (the order of its messages).
//! - The deliverer learns of new messages from the pullers themselves (in memory), never by
//!   scanning for seqs above a mark; it scans the table only when it starts, before any puller.
//! - What a scan at start could miss is a page commit of a *previous* leader still in flight
//!   (its lock lost, its transaction not yet finished). [`Store::fence`], called by a new leader
//!   before it scans, waits for those (each page commit holds the fence shared) and makes any
//!   later one fail (it carries the old epoch).
//!
//! Of several instances sharing a database only the leader writes (see
//! [`leader`](crate::leader)).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Transaction,
};
use tokio_postgres::{Client, NoTls};

use super::*;

/// Versioned schema migrations, applied in order; `wechat_kf_schema.version` is the number
/// applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema (same shape as the SQLite one).
    "
    CREATE TABLE cursors (
        open_kfid TEXT PRIMARY KEY,
        cursor TEXT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE messages (
        seq BIGSERIAL PRIMARY KEY,
        open_kfid TEXT NOT NULL,
        msgid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        send_time BIGINT NOT NULL,
        origin BIGINT,
        kind TEXT NOT NULL,
        raw TEXT NOT NULL,
        decode_error TEXT,
        stored_at BIGINT NOT NULL,
        delivered_at BIGINT,
        UNIQUE (open_kfid, msgid)
    );
    CREATE INDEX messages_pending ON messages(seq) WHERE delivered_at IS NULL;
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        seqs TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        last_error TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE replies (
        id BIGSERIAL PRIMARY KEY,
        delivery_id TEXT,
        endpoint TEXT NOT NULL,
        lane TEXT NOT NULL,
        body TEXT NOT NULL,
        msgid TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        last_error TEXT,
        created_at BIGINT NOT NULL,
        finished_at BIGINT
    );
    CREATE INDEX replies_pending ON replies(next_attempt_at) WHERE state = 'pending';
    CREATE TABLE api_sends (
        key TEXT NOT NULL,
        msgid TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (key, msgid)
    );
    CREATE TABLE sessions (
        open_kfid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        last_customer_msg_at BIGINT NOT NULL,
        PRIMARY KEY (open_kfid, external_userid)
    );
    ",
    // 2: first-start catch-ups, skipped messages, media records, session views, reply results.
    "
    ALTER TABLE cursors ADD COLUMN catch_up_before BIGINT;
    ALTER TABLE messages ADD COLUMN skipped BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE messages ADD COLUMN media TEXT;
    ALTER TABLE sessions ADD COLUMN view TEXT;
    ALTER TABLE sessions ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE replies ADD COLUMN position BIGINT;
    ALTER TABLE replies ADD COLUMN result TEXT;
    ALTER TABLE replies ADD COLUMN reported BOOLEAN NOT NULL DEFAULT TRUE;
    CREATE INDEX replies_unreported ON replies(id) WHERE NOT reported;
    CREATE INDEX replies_lane_pending ON replies(lane, next_attempt_at) WHERE state = 'pending';
    ",
    // 3: the callback replay cache (shared by every instance on the database); the request
    // fingerprint of reply-API sends.
    "
    CREATE TABLE callback_replays (
        key TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX callback_replays_expiry ON callback_replays(expires_at);
    ALTER TABLE api_sends ADD COLUMN request_sha256 TEXT;
    ",
    // 4: the write fence's epoch (see `Store::fence`).
    "
    CREATE TABLE wechat_kf_fence (epoch BIGINT NOT NULL);
    INSERT INTO wechat_kf_fence (epoch) VALUES (0);
    ",
    // 5: whose turn it is (who wrote each item, why the bot may not answer it) and the items
    // held while a human has the session (1 held, 0 released as history).
    "
    ALTER TABLE messages ADD COLUMN author TEXT;
    ALTER TABLE messages ADD COLUMN no_reply TEXT;
    ALTER TABLE messages ADD COLUMN held SMALLINT;
    CREATE INDEX messages_held ON messages(open_kfid, external_userid) WHERE held = 1;
    CREATE INDEX sessions_last_customer ON sessions(last_customer_msg_at);
    ",
    // 6: the responder's memory of each (account, customer) conversation.
    "
    CREATE TABLE memory (
        id BIGSERIAL PRIMARY KEY,
        open_kfid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE INDEX memory_pair ON memory(open_kfid, external_userid, id);
    ",
];

/// An `origin` column (BIGINT) as the library's `u32`; a value out of range is unknown.
fn origin_of(origin: Option<i64>) -> Option<u32> {
    origin.and_then(|o| u32::try_from(o).ok())
}

/// Connections opened when none is free, at most (`storage.pool_size`).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long opening one connection may take before the caller gets an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock class of the write fence (see [`Store::fence`]); its second key is the
/// schema's hash, as for the leader lock.
const FENCE_CLASS: i32 = 7_428_103;

/// The PostgreSQL [`Store`].
pub struct PostgresStore {
    pool: Pool,
    /// The epoch this instance fenced the store with ([`Store::fence`]); 0 before (tests, the
    /// CLI): page commits are then not checked.
    epoch: AtomicI64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (a pool of up to [`DEFAULT_POOL_SIZE`] connections) and runs the
    /// migrations.
    pub async fn connect(url: &str) -> Result<PostgresStore, Error> {
        PostgresStore::open(url, None, DEFAULT_POOL_SIZE).await
    }

    /// Connects, creating and using `schema` (tests use a throwaway schema each), and runs the
    /// migrations.
    pub async fn connect_in_schema(
        url: &str,
        schema: Option<&str>,
    ) -> Result<PostgresStore, Error> {
        PostgresStore::open(url, schema, DEFAULT_POOL_SIZE).await
    }

    /// Connects with a pool of up to `pool_size` connections, creating and using `schema` when
    /// given, and runs the migrations.
    pub async fn open(
        url: &str,
        schema: Option<&str>,
        pool_size: usize,
    ) -> Result<PostgresStore, Error> {
        let mut config = parse_url(url)?;
        if let Some(schema) = schema {
            if !schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(Error::Config(format!("invalid schema name {schema:?}")));
            }
            // Created once on a connection of its own; every pooled connection then uses it.
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| connect_error(url, &e))?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
            add_option(&mut config, &format!("-c search_path={schema}"));
        }
        let pool = build_pool(config, pool_size)?;
        let mut client = pool.get().await.map_err(|e| pool_error(url, e))?;
        migrate(&mut client).await?;
        drop(client);
        Ok(PostgresStore {
            pool,
            epoch: AtomicI64::new(0),
        })
    }

    /// Connects to read beside a running service: every transaction read-only, no migration
    /// (the schema must be this program's).
    pub async fn connect_read_only(url: &str) -> Result<PostgresStore, Error> {
        let mut config = parse_url(url)?;
        add_option(&mut config, "-c default_transaction_read_only=on");
        // A reader asks one thing at a time.
        let pool = build_pool(config, 2)?;
        let client = pool.get().await.map_err(|e| pool_error(url, e))?;
        let version: i64 = match client
            .query_opt("SELECT version FROM wechat_kf_schema", &[])
            .await
        {
            Ok(row) => row.map_or(0, |r| r.get(0)),
            // No schema table: nothing was ever migrated here.
            Err(e) if e.as_db_error().is_some() => 0,
            Err(e) => return Err(e.into()),
        };
        if version != MIGRATIONS.len() as i64 {
            return Err(schema_mismatch(version, MIGRATIONS.len()));
        }
        drop(client);
        Ok(PostgresStore {
            pool,
            epoch: AtomicI64::new(0),
        })
    }

    /// A pooled connection (waits while every one is busy).
    async fn connection(&self) -> Result<Object, Error> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Closed => Error::StoreClosed,
            PoolError::Backend(e) => e.into(),
            other => Error::Store(format!("postgres pool: {other}")),
        })
    }

    /// Inside a page commit: holds the fence shared (a successor's [`Store::fence`] waits for
    /// this transaction) and fails when another instance fenced the store since this one did.
    async fn check_fence(&self, tx: &Transaction<'_>) -> Result<(), Error> {
        let mine = self.epoch.load(Ordering::Acquire);
        if mine == 0 {
            return Ok(());
        }
        let stmt = tx.prepare_cached(HOLD_FENCE).await?;
        let current: i64 = tx.query_one(&stmt, &[&FENCE_CLASS]).await?.get(0);
        if current != mine {
            return Err(Error::LeadershipLost);
        }
        Ok(())
    }
}

/// Takes the fence shared for the transaction and reads the current epoch.
const HOLD_FENCE: &str = "SELECT epoch FROM wechat_kf_fence, \
     pg_advisory_xact_lock_shared($1, hashtext(current_schema()))";

fn parse_url(url: &str) -> Result<tokio_postgres::Config, Error> {
    // Never echo the URL: it may hold a password.
    url.parse()
        .map_err(|_| Error::Config("the PostgreSQL URL cannot be parsed".into()))
}

/// Appends a server option (`-c name=value`) to the URL's own `options`.
fn add_option(config: &mut tokio_postgres::Config, option: &str) {
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {option}"),
        _ => option.to_owned(),
    };
    config.options(options);
}

fn build_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, Error> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // `is_closed` only: a dead connection fails its next statement, which the caller
            // retries like any other store error.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Store(format!("postgres pool: {e}")))
}

/// A pool error at start, naming the database like [`connect_error`].
fn pool_error(url: &str, error: PoolError) -> Error {
    match error {
        PoolError::Backend(e) => connect_error(url, &e),
        PoolError::Timeout(_) => Error::Store("cannot connect to PostgreSQL: timed out".into()),
        other => Error::Store(format!("postgres pool: {other}")),
    }
}
/// Why connecting failed, naming the database (never the URL: it may hold a password) and
/// the server's own message (`database "kf" does not exist`), which the error's `Display`
/// leaves out.
pub(crate) fn connect_error(url: &str, error: &tokio_postgres::Error) -> Error {
    let database = url
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_owned))
        .unwrap_or_else(|| "(default)".into());
    let cause = match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(e) = source {
                text = format!("{text}: {e}");
                source = e.source();
            }
            text
        }
    };
    Error::Store(format!(
        "cannot connect to PostgreSQL database {database:?}: {cause}"
    ))
}

/// `store messages`: $1 account, $2 customer, $3 failed only, $4 limit.
const LIST_MESSAGES: &str = "SELECT m.seq, m.open_kfid, m.external_userid, m.msgid, m.kind, \
     m.send_time, m.stored_at, m.delivered_at IS NOT NULL, m.skipped, m.delivered_at, \
     m.decode_error, m.media IS NOT NULL, d.id, d.attempts, d.last_error \
     FROM messages m LEFT JOIN deliveries d ON m.delivered_at IS NULL \
     AND ',' || d.seqs || ',' LIKE '%,' || m.seq::text || ',%' \
     WHERE ($1::text IS NULL OR m.open_kfid = $1) AND ($2::text IS NULL OR m.external_userid = $2) \
     AND (NOT $3 OR m.decode_error IS NOT NULL OR d.last_error IS NOT NULL) \
     ORDER BY m.seq DESC LIMIT $4";

/// `store deliveries`: $1 account, $2 customer, $3 failed only, $4 limit.
const LIST_DELIVERIES: &str = "SELECT d.id, d.seqs, d.attempts, d.next_attempt_at, d.last_error, \
     d.created_at FROM deliveries d WHERE (NOT $3 OR d.last_error IS NOT NULL) \
     AND (($1::text IS NULL AND $2::text IS NULL) OR EXISTS (SELECT 1 FROM messages m WHERE \
     ($1::text IS NULL OR m.open_kfid = $1) AND ($2::text IS NULL OR m.external_userid = $2) \
     AND ',' || d.seqs || ',' LIKE '%,' || m.seq::text || ',%')) \
     ORDER BY d.created_at DESC, d.id DESC LIMIT $4";

/// `store sends`: $1 lane pattern, $2 failed only, $3 limit.
const LIST_SENDS: &str = "SELECT id, endpoint, lane, msgid, state, attempts, last_error, created_at, \
     finished_at, delivery_id, CASE WHEN state = 'pending' THEN next_attempt_at END FROM replies WHERE ($1::text IS NULL OR lane LIKE $1 ESCAPE '\\') \
     AND (NOT $2 OR state IN ('failed', 'refused') OR (state = 'pending' AND last_error IS NOT NULL)) \
     ORDER BY id DESC LIMIT $3";

/// A page's msgids already stored: $1 account, $2 msgids.
const SELECT_STORED: &str = "SELECT msgid FROM messages WHERE open_kfid = $1 AND msgid = ANY($2)";

/// The session views of a page's customers: $1 account, $2 customers.
const SELECT_VIEWS: &str = "SELECT external_userid, view FROM sessions \
     WHERE open_kfid = $1 AND external_userid = ANY($2)";

/// A page's new messages, one statement: $1 account, $2 now; then one array per column of
/// [`MessageColumns`] (a new column is one more array here and there).
const INSERT_MESSAGES: &str = "INSERT INTO messages (open_kfid, stored_at, msgid, external_userid, \
     send_time, origin, kind, raw, decode_error, skipped, delivered_at, author, no_reply, held) \
     SELECT $1, $2::bigint, m, e, t, o, k, r, d, s, CASE WHEN s THEN $2::bigint END, a, n, h \
     FROM UNNEST($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], \
     $9::text[], $10::bool[], $11::text[], $12::text[], $13::smallint[]) \
     WITH ORDINALITY AS u(m, e, t, o, k, r, d, s, a, n, h, i) \
     ORDER BY i RETURNING seq, msgid";

/// A page's customers' sessions, one statement: $1 account, $2 customers, $3 last customer
/// message times, $4 views, $5 now.
const UPSERT_SESSIONS: &str = "INSERT INTO sessions (open_kfid, external_userid, \
     last_customer_msg_at, view, updated_at) \
     SELECT $1, e, t, v, $5 FROM UNNEST($2::text[], $3::bigint[], $4::text[]) AS u(e, t, v) \
     ON CONFLICT (open_kfid, external_userid) DO UPDATE SET \
     last_customer_msg_at = GREATEST(sessions.last_customer_msg_at, excluded.last_customer_msg_at), \
     view = COALESCE(excluded.view, sessions.view), updated_at = excluded.updated_at";

/// An account's cursor: $1 account, $2 cursor (NULL keeps it), $3 now, $4 catch-up.
const UPSERT_CURSOR: &str = "INSERT INTO cursors (open_kfid, cursor, updated_at, catch_up_before) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (open_kfid) DO UPDATE SET \
     cursor = COALESCE(excluded.cursor, cursors.cursor), updated_at = excluded.updated_at, \
     catch_up_before = excluded.catch_up_before";

/// The columns of a page's new messages, one array each, for [`INSERT_MESSAGES`].
struct MessageColumns<'a> {
    msgids: Vec<&'a str>,
    customers: Vec<&'a str>,
    send_times: Vec<i64>,
    origins: Vec<Option<i64>>,
    kinds: Vec<&'a str>,
    raws: Vec<&'a str>,
    errors: Vec<Option<&'a str>>,
    skips: Vec<bool>,
    authors: Vec<&'static str>,
    no_replies: Vec<Option<&'static str>>,
    helds: Vec<Option<i16>>,
}

impl<'a> MessageColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        MessageColumns {
            msgids: Vec::with_capacity(n),
            customers: Vec::with_capacity(n),
            send_times: Vec::with_capacity(n),
            origins: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            raws: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            skips: Vec::with_capacity(n),
            authors: Vec::with_capacity(n),
            no_replies: Vec::with_capacity(n),
            helds: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, row: &'a policy::PlannedRow) {
        let m = &row.message;
        self.msgids.push(m.msgid.as_str());
        self.customers.push(m.external_userid.as_str());
        self.send_times.push(m.send_time);
        self.origins.push(m.origin.map(i64::from));
        self.kinds.push(m.kind.as_str());
        self.raws.push(m.payload.raw());
        self.errors.push(m.decode_error.as_deref());
        self.skips.push(row.finished());
        self.authors.push(row.turn.from.as_str());
        self.no_replies.push(row.turn.stored_no_reply());
        self.helds.push(row.held.then_some(1));
    }
}

/// The console's conversation list: $1 account, $2 limit. One row per customer: its last
/// message, message count and session view.
const CONVERSATIONS: &str = "SELECT m.open_kfid, m.external_userid, m.seq, m.msgid, m.send_time, \
     m.origin, m.kind, m.raw, m.delivered_at IS NOT NULL, m.skipped, m.media, c.n, s.view \
     FROM (SELECT MAX(seq) AS last, COUNT(*) AS n FROM messages WHERE external_userid <> '' \
     AND ($1::text IS NULL OR open_kfid = $1) GROUP BY open_kfid, external_userid) c \
     JOIN messages m ON m.seq = c.last \
     LEFT JOIN sessions s ON s.open_kfid = m.open_kfid AND s.external_userid = m.external_userid \
     ORDER BY m.seq DESC LIMIT $2";

/// A conversation's messages, newest first: $1 account, $2 customer, $3 limit.
const HISTORY_MESSAGES: &str = "SELECT seq, msgid, send_time, origin, kind, raw, \
     delivered_at IS NOT NULL, skipped, media FROM messages \
     WHERE open_kfid = $1 AND external_userid = $2 ORDER BY seq DESC LIMIT $3";

/// A conversation's queued replies, newest first: $1 lane, $2 limit.
const HISTORY_REPLIES: &str = "SELECT id, endpoint, msgid, body, state, last_error, result, \
     created_at, finished_at FROM replies WHERE lane = $1 ORDER BY id DESC LIMIT $2";

/// A [`HistoryMessage`] from columns `at..at + 9` (seq, msgid, send_time, origin, kind, raw,
/// delivered, skipped, media).
fn history_message(r: &tokio_postgres::Row, at: usize) -> HistoryMessage {
    HistoryMessage {
        seq: r.get(at),
        msgid: MsgId::from(r.get::<_, String>(at + 1)),
        send_time: r.get(at + 2),
        origin: r
            .get::<_, Option<i64>>(at + 3)
            .and_then(|o| u32::try_from(o).ok()),
        kind: r.get(at + 4),
        raw: r.get(at + 5),
        state: message_state(r.get(at + 6), r.get(at + 7)).into(),
        media: r.get(at + 8),
    }
}

/// A stored count as the listings' `u32`.
fn count(n: i64) -> u32 {
    n.clamp(0, u32::MAX as i64) as u32
}

/// Applies a delivery's memory writes: appends (dropping a pair's entries beyond
/// [`MEMORY_KEPT`]) and clears.
async fn write_memory(tx: &Transaction<'_>, writes: &[MemoryWrite]) -> Result<(), Error> {
    for write in writes {
        match write {
            MemoryWrite::Append {
                open_kfid,
                external_userid,
                entry,
            } => {
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO memory (open_kfid, external_userid, role, content, at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .await?;
                tx.execute(
                    &insert,
                    &[
                        &open_kfid.as_str(),
                        &external_userid.as_str(),
                        &entry.role.as_str(),
                        &entry.content,
                        &entry.at_ms,
                    ],
                )
                .await?;
                let trim = tx
                    .prepare_cached(
                        "DELETE FROM memory WHERE open_kfid = $1 AND external_userid = $2 AND id <= \
                         (SELECT id FROM memory WHERE open_kfid = $1 AND external_userid = $2 \
                          ORDER BY id DESC LIMIT 1 OFFSET $3)",
                    )
                    .await?;
                tx.execute(
                    &trim,
                    &[
                        &open_kfid.as_str(),
                        &external_userid.as_str(),
                        &(MEMORY_KEPT as i64),
                    ],
                )
                .await?;
            }
            MemoryWrite::Clear {
                open_kfid,
                external_userid,
            } => {
                let clear = tx
                    .prepare_cached(
                        "DELETE FROM memory WHERE open_kfid = $1 AND external_userid = $2",
                    )
                    .await?;
                tx.execute(&clear, &[&open_kfid.as_str(), &external_userid.as_str()])
                    .await?;
            }
        }
    }
    Ok(())
}

async fn migrate(client: &mut Client) -> Result<(), Error> {
    let tx = client.transaction().await?;
    // Two instances starting at once must not both migrate.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7428101); \
         CREATE TABLE IF NOT EXISTS wechat_kf_schema (version BIGINT NOT NULL); \
         INSERT INTO wechat_kf_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM wechat_kf_schema)",
    )
    .await?;
    let current: i64 = tx
        .query_one("SELECT version FROM wechat_kf_schema", &[])
        .await?
        .get(0);
    if current > MIGRATIONS.len() as i64 {
        return Err(Error::Store(format!(
            "the database has schema version {current}, newer than this program ({}); upgrade wechat-kf",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "UPDATE wechat_kf_schema SET version = $1",
            &[&((index + 1) as i64)],
        )
        .await?;
        tracing::info!(version = index + 1, "applied PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

/// A statement prepared once per connection (`deadpool-postgres` caches it), saving the
/// parse round trip of every later use.
macro_rules! cached {
    ($client:ident, $sql:expr) => {
        &$client.prepare_cached($sql).await?
    };
}

/// Runs `$body` with a pooled connection as `$client`.
macro_rules! with_client {
    ($self:ident, $client:ident, $body:expr) => {{
        #[allow(unused_mut)]
        let mut $client = $self.connection().await?;
        $body
    }};
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                client.simple_query("SELECT 1").await?;
                Ok(())
            })
        })
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountCursor>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT open_kfid, cursor, catch_up_before FROM cursors ORDER BY open_kfid"),
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| AccountCursor {
                        open_kfid: OpenKfId::from(r.get::<_, String>(0)),
                        cursor: r.get(1),
                        catch_up_before: r.get(2),
                    })
                    .collect())
            })
        })
    }

    fn fence(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                // Exclusive: waits for every page commit holding the fence shared (a previous
                // leader's, still in flight); one that asks for it later reads the new epoch.
                tx.execute(
                    cached!(
                        tx,
                        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))"
                    ),
                    &[&FENCE_CLASS],
                )
                .await?;
                let epoch: i64 = tx
                    .query_one(
                        cached!(
                            tx,
                            "UPDATE wechat_kf_fence SET epoch = epoch + 1 RETURNING epoch"
                        ),
                        &[],
                    )
                    .await?
                    .get(0);
                tx.commit().await?;
                self.epoch.store(epoch, Ordering::Release);
                Ok(())
            })
        })
    }

    fn add_account(&self, open_kfid: OpenKfId, now_ms: i64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                client
                    .execute(
                        cached!(client, "INSERT INTO cursors (open_kfid, cursor, updated_at) VALUES ($1, NULL, $2) \
                         ON CONFLICT (open_kfid) DO NOTHING"),
                        &[&open_kfid.as_str(), &now_ms],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn commit_page(&self, page: PageWrite) -> BoxFuture<'_, Result<PageOutcome, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                // Read what the page-commit policy needs, ask it for the plan, write the plan
                // (see [`policy::plan_page`]). The fence is taken first, in the same round trip
                // as the read (the two are pipelined on the connection).
                let msgids: Vec<&str> = policy::msgids(&page)
                    .into_iter()
                    .map(MsgId::as_str)
                    .collect();
                let stored = async {
                    let stmt = tx.prepare_cached(SELECT_STORED).await?;
                    Ok::<_, Error>(
                        tx.query(&stmt, &[&page.open_kfid.as_str(), &msgids])
                            .await?,
                    )
                };
                let ((), stored) = tokio::try_join!(self.check_fence(&tx), stored)?;
                let already_stored: HashSet<MsgId> = stored
                    .iter()
                    .map(|r| MsgId::from(r.get::<_, String>(0)))
                    .collect();
                let customers: Vec<&str> = policy::customers_to_observe(&page, &already_stored)
                    .into_iter()
                    .map(ExternalUserId::as_str)
                    .collect();
                let mut views = HashMap::with_capacity(customers.len());
                if !customers.is_empty() {
                    let stmt = tx.prepare_cached(SELECT_VIEWS).await?;
                    let rows = tx
                        .query(&stmt, &[&page.open_kfid.as_str(), &customers])
                        .await?;
                    for row in rows {
                        let view: Option<String> = row.get(1);
                        views.insert(
                            ExternalUserId::from(row.get::<_, String>(0)),
                            parse_view(view.as_deref()),
                        );
                    }
                }
                let plan = policy::plan_page(page, &already_stored, views);

                let mut columns = MessageColumns::with_capacity(plan.rows.len());
                for row in &plan.rows {
                    columns.push(row);
                }
                // One statement for the page; ordinality keeps seq in page order. No
                // `ON CONFLICT`: the plan only holds msgids the store does not have, so a
                // conflict means the read above is stale, and failing the transaction (the
                // page is pulled again) is better than committing a plan built on it.
                let seqs = if plan.rows.is_empty() {
                    Vec::new()
                } else {
                    let stmt = tx.prepare_cached(INSERT_MESSAGES).await?;
                    let rows = tx
                        .query(
                            &stmt,
                            &[
                                &plan.open_kfid.as_str(),
                                &plan.now_ms,
                                &columns.msgids,
                                &columns.customers,
                                &columns.send_times,
                                &columns.origins,
                                &columns.kinds,
                                &columns.raws,
                                &columns.errors,
                                &columns.skips,
                                &columns.authors,
                                &columns.no_replies,
                                &columns.helds,
                            ],
                        )
                        .await?;
                    let inserted: HashMap<String, i64> = rows
                        .iter()
                        .map(|r| (r.get::<_, String>(1), r.get::<_, i64>(0)))
                        .collect();
                    columns
                        .msgids
                        .iter()
                        .map(|msgid| {
                            inserted.get(*msgid).copied().ok_or_else(|| {
                                Error::Store(
                                    "PostgreSQL did not return the seq of a stored message".into(),
                                )
                            })
                        })
                        .collect::<Result<Vec<i64>, Error>>()?
                };
                if !plan.sessions.is_empty() {
                    let customers: Vec<&str> = plan
                        .sessions
                        .iter()
                        .map(|s| s.external_userid.as_str())
                        .collect();
                    let times: Vec<i64> = plan
                        .sessions
                        .iter()
                        .map(|s| s.last_customer_msg_at.unwrap_or(0))
                        .collect();
                    let views: Vec<Option<String>> = plan
                        .sessions
                        .iter()
                        .map(|s| s.view.as_ref().map(encode_view))
                        .collect();
                    // One statement for the page's customers (each once in the plan).
                    let stmt = tx.prepare_cached(UPSERT_SESSIONS).await?;
                    tx.execute(
                        &stmt,
                        &[
                            &plan.open_kfid.as_str(),
                            &customers,
                            &times,
                            &views,
                            &plan.now_ms,
                        ],
                    )
                    .await?;
                }
                insert_replies(&tx, &plan.replies, plan.now_ms).await?;
                let stmt = tx.prepare_cached(UPSERT_CURSOR).await?;
                tx.execute(
                    &stmt,
                    &[
                        &plan.open_kfid.as_str(),
                        &plan.next_cursor,
                        &plan.now_ms,
                        &plan.catch_up_before,
                    ],
                )
                .await?;
                let mut released = Vec::new();
                if !plan.release.is_empty() {
                    let customers: Vec<&str> =
                        plan.release.iter().map(ExternalUserId::as_str).collect();
                    let rows = tx
                        .query(
                            "UPDATE messages SET held = 0 WHERE open_kfid = $1 \
                             AND external_userid = ANY($2) AND held = 1 RETURNING seq, \
                             external_userid, stored_at, decode_error IS NOT NULL, raw, author, \
                             no_reply, origin",
                            &[&plan.open_kfid.as_str(), &customers],
                        )
                        .await?;
                    released = rows
                        .iter()
                        .map(|r| StoredMessage {
                            seq: r.get(0),
                            lane: Lane::new(plan.open_kfid.clone(), r.get::<_, String>(1)),
                            stored_at_ms: r.get(2),
                            invalid: r.get(3),
                            payload: Some(Payload::Raw(Arc::from(r.get::<_, String>(4)))),
                            media: None,
                            turn: Turn::read(r.get(5), r.get(6), origin_of(r.get(7))),
                            item: ItemKind::History,
                        })
                        .collect();
                    released.sort_by_key(|m| m.seq);
                }
                tx.commit().await?;
                Ok(plan.into_outcome(&seqs, released))
            })
        })
    }

    fn sessions_last_written_between(
        &self,
        since: i64,
        until: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CustomerView>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        "SELECT open_kfid, external_userid, view FROM sessions \
                         WHERE last_customer_msg_at BETWEEN $1 AND $2 \
                         ORDER BY last_customer_msg_at LIMIT $3",
                        &[&since, &until, &(limit as i64)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let view: Option<String> = r.get(2);
                        (
                            OpenKfId::from(r.get::<_, String>(0)),
                            ExternalUserId::from(r.get::<_, String>(1)),
                            parse_view(view.as_deref()),
                        )
                    })
                    .collect())
            })
        })
    }

    fn recent_messages(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        "SELECT kind, raw FROM messages WHERE open_kfid = $1 AND external_userid = $2 \
                         ORDER BY seq DESC LIMIT $3",
                        &[&open_kfid.as_str(), &external_userid.as_str(), &(limit as i64)],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    fn record_session_change(
        &self,
        change: SessionChange,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<StoredMessage, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = change.row(MsgId::from(format!(
                    "session:{}",
                    uuid::Uuid::new_v4().simple()
                )));
                let seq: i64 = client
                    .query_one(
                        "INSERT INTO messages (open_kfid, msgid, external_userid, send_time, kind, raw, \
                         stored_at, author, no_reply) VALUES ($1, $2, $3, $4, $5, $6, $7, 'system', \
                         'system_event') RETURNING seq",
                        &[
                            &change.open_kfid.as_str(),
                            &row.msgid.as_str(),
                            &row.external_userid.as_str(),
                            &row.send_time,
                            &row.kind,
                            &row.payload.raw(),
                            &now_ms,
                        ],
                    )
                    .await?
                    .get(0);
                Ok(change.into_stored(row, seq, now_ms))
            })
        })
    }

    fn pending_messages(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT seq, open_kfid, external_userid, stored_at, decode_error IS NOT NULL, \
                         author, no_reply, origin, kind, held FROM messages \
                         WHERE delivered_at IS NULL AND seq > $1 AND (held IS NULL OR held = 0) \
                         ORDER BY seq LIMIT $2"),
                        &[&after_seq, &(limit as i64)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| StoredMessage {
                        seq: r.get(0),
                        lane: Lane::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                        stored_at_ms: r.get(3),
                        invalid: r.get(4),
                        payload: None,
                        media: None,
                        turn: Turn::read(r.get(5), r.get(6), origin_of(r.get(7))),
                        item: ItemKind::of_row(r.get(8), r.get::<_, Option<i16>>(9).map(i64::from)),
                    })
                    .collect())
            })
        })
    }

    fn open_deliveries(&self) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT id, seqs, attempts, next_attempt_at, last_error FROM deliveries \
                         ORDER BY created_at, id"),
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| DeliveryRecord {
                        id: r.get(0),
                        seqs: decode_seqs(r.get(1)),
                        attempts: r.get::<_, i64>(2).clamp(0, u32::MAX as i64) as u32,
                        next_attempt_at_ms: r.get(3),
                        last_error: r.get(4),
                    })
                    .collect())
            })
        })
    }

    fn load_payloads(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<LoadedPayload>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(
                            client,
                            "SELECT seq, raw, media FROM messages WHERE seq = ANY($1)"
                        ),
                        &[&seqs],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| LoadedPayload {
                        seq: r.get(0),
                        raw: r.get(1),
                        media: r.get(2),
                    })
                    .collect())
            })
        })
    }

    fn record_media(&self, media: Vec<(i64, String)>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let (seqs, jsons): (Vec<i64>, Vec<String>) = media.into_iter().unzip();
                client
                    .execute(
                        cached!(client, "UPDATE messages SET media = u.j FROM UNNEST($1::bigint[], $2::text[]) AS u(s, j) \
                         WHERE messages.seq = u.s"),
                        &[&seqs, &jsons],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn messages_without_media(
        &self,
        msgtypes: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<MediaJob>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(
                            client,
                            "SELECT seq, open_kfid, raw FROM messages WHERE delivered_at IS NULL \
                         AND media IS NULL AND kind = ANY($1) ORDER BY seq LIMIT $2"
                        ),
                        &[&msgtypes, &(limit as i64)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| MediaJob {
                        seq: r.get(0),
                        open_kfid: OpenKfId::from(r.get::<_, String>(1)),
                        raw: r.get(2),
                    })
                    .collect())
            })
        })
    }

    fn session(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
    ) -> BoxFuture<'_, Result<Option<SessionView>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_opt(
                        cached!(client, "SELECT view FROM sessions WHERE open_kfid = $1 AND external_userid = $2"),
                        &[&open_kfid.as_str(), &external_userid.as_str()],
                    )
                    .await?;
                Ok(row
                    .and_then(|r| r.get::<_, Option<String>>(0))
                    .map(|t| parse_view(Some(&t))))
            })
        })
    }

    fn update_session(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        update: SessionUpdate,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<SessionView, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                let row = tx
                    .query_opt(
                        cached!(tx, "SELECT view FROM sessions WHERE open_kfid = $1 AND external_userid = $2 FOR UPDATE"),
                        &[&open_kfid.as_str(), &external_userid.as_str()],
                    )
                    .await?;
                let text: Option<String> = row.and_then(|r| r.get(0));
                let mut view = parse_view(text.as_deref());
                update.apply(&mut view);
                tx.execute(
                    cached!(tx, "INSERT INTO sessions (open_kfid, external_userid, last_customer_msg_at, view, updated_at) \
                     VALUES ($1, $2, 0, $3, $4) ON CONFLICT (open_kfid, external_userid) DO UPDATE SET \
                     view = excluded.view, updated_at = excluded.updated_at"),
                    &[
                        &open_kfid.as_str(),
                        &external_userid.as_str(),
                        &encode_view(&view),
                        &now_ms,
                    ],
                )
                .await?;
                tx.commit().await?;
                Ok(view)
            })
        })
    }

    fn reply_results(&self, limit: usize) -> BoxFuture<'_, Result<Vec<(i64, String)>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT id, result FROM replies WHERE NOT reported AND result IS NOT NULL \
                         ORDER BY id LIMIT $1"),
                        &[&(limit as i64)],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    fn begin_deliveries(
        &self,
        records: Vec<DeliveryRecord>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                // A known delivery keeps its order (created_at) and last error.
                upsert_deliveries(&tx, &records, false, now_ms).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    fn finish_deliveries(&self, finish: FinishDeliveries) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                // One statement per kind of write for the whole batch of acknowledgements.
                let seqs: Vec<i64> = finish
                    .acks
                    .iter()
                    .flat_map(|a| a.seqs.iter().copied())
                    .collect();
                if !seqs.is_empty() {
                    let stmt = tx.prepare_cached(MARK_DELIVERED).await?;
                    tx.execute(&stmt, &[&finish.now_ms, &seqs]).await?;
                }
                let finished: Vec<&str> = finish
                    .acks
                    .iter()
                    .map(|a| a.delivery_id.as_str())
                    .chain(finish.failures.iter().map(|f| f.old_id.as_str()))
                    .collect();
                if !finished.is_empty() {
                    let stmt = tx
                        .prepare_cached("DELETE FROM deliveries WHERE id = ANY($1)")
                        .await?;
                    tx.execute(&stmt, &[&finished]).await?;
                }
                let reported: Vec<i64> = finish
                    .acks
                    .iter()
                    .flat_map(|a| a.reported.iter().copied())
                    .collect();
                if !reported.is_empty() {
                    let stmt = tx
                        .prepare_cached("UPDATE replies SET reported = TRUE WHERE id = ANY($1)")
                        .await?;
                    tx.execute(&stmt, &[&reported]).await?;
                }
                let replies: Vec<NewReply> = finish
                    .acks
                    .iter()
                    .flat_map(|a| a.replies.iter().cloned())
                    .collect();
                insert_replies(&tx, &replies, finish.now_ms).await?;
                for ack in &finish.acks {
                    write_memory(&tx, &ack.memory).await?;
                }
                let retries: Vec<DeliveryRecord> = finish
                    .failures
                    .iter()
                    .flat_map(|f| f.retries.iter().cloned())
                    .collect();
                upsert_deliveries(&tx, &retries, true, finish.now_ms).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    fn memory(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<MemoryEntry>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(
                            client,
                            "SELECT role, content, at FROM memory \
                             WHERE open_kfid = $1 AND external_userid = $2 \
                             ORDER BY id DESC LIMIT $3"
                        ),
                        &[
                            &open_kfid.as_str(),
                            &external_userid.as_str(),
                            &(limit as i64),
                        ],
                    )
                    .await?;
                let mut out: Vec<MemoryEntry> = rows
                    .iter()
                    .filter_map(|r| {
                        // A role a later version wrote is skipped, not an error.
                        Some(MemoryEntry {
                            role: MemoryRole::parse(r.get::<_, &str>(0))?,
                            content: r.get(1),
                            at_ms: r.get(2),
                        })
                    })
                    .collect();
                out.reverse();
                Ok(out)
            })
        })
    }

    fn due_replies(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ReplyRecord>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT id, endpoint, lane, body, msgid, attempts, delivery_id, position FROM replies \
                         WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2"),
                        &[&now_ms, &(limit as i64)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| ReplyRecord {
                        id: r.get(0),
                        endpoint: ReplyEndpoint::parse(r.get(1)).unwrap_or(ReplyEndpoint::SendMsg),
                        lane: r.get(2),
                        body: r.get(3),
                        msgid: MsgId::from(r.get::<_, String>(4)),
                        attempts: r.get::<_, i64>(5).clamp(0, u32::MAX as i64) as u32,
                        delivery_id: r.get(6),
                        position: r
                            .get::<_, Option<i64>>(7)
                            .and_then(|p| u32::try_from(p).ok()),
                    })
                    .collect())
            })
        })
    }

    fn next_reply_due(&self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_one(
                        cached!(
                            client,
                            "SELECT MIN(next_attempt_at) FROM replies WHERE state = 'pending'"
                        ),
                        &[],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
    }

    fn finish_replies(
        &self,
        outcomes: Vec<ReplyOutcome>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                let retried: Vec<&str> = outcomes
                    .iter()
                    .filter_map(|o| match o {
                        ReplyOutcome::Retry { lane, .. } => Some(lane.as_str()),
                        ReplyOutcome::Finished { .. } => None,
                    })
                    .collect();
                if !retried.is_empty() {
                    // Before pushing their later replies back (see `lock_lanes`).
                    lock_lanes(&tx, &retried).await?;
                }
                for outcome in &outcomes {
                    match outcome {
                        ReplyOutcome::Finished {
                            id,
                            state,
                            error,
                            result,
                        } => {
                            tx.execute(
                                cached!(tx, "UPDATE replies SET state = $2, attempts = attempts + 1, finished_at = $3, \
                                 last_error = $4, result = $5, \
                                 reported = NOT (position IS NOT NULL AND $5::text IS NOT NULL) WHERE id = $1"),
                                &[id, &state.as_str(), &now_ms, error, result],
                            )
                            .await?;
                        }
                        ReplyOutcome::Retry {
                            id,
                            lane,
                            attempts,
                            next_attempt_at_ms,
                            error,
                            body,
                        } => {
                            tx.execute(
                                cached!(tx, "UPDATE replies SET attempts = $2, next_attempt_at = $3, last_error = $4, \
                                 body = COALESCE($5, body) WHERE id = $1"),
                                &[id, &i64::from(*attempts), next_attempt_at_ms, error, body],
                            )
                            .await?;
                            tx.execute(
                                cached!(tx, "UPDATE replies SET next_attempt_at = GREATEST(next_attempt_at, $3) \
                                 WHERE state = 'pending' AND lane = $2 AND id > $1"),
                                &[id, lane, next_attempt_at_ms],
                            )
                            .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(())
            })
        })
    }

    fn api_send(&self, key: String, msgid: MsgId) -> BoxFuture<'_, Result<Option<ApiSend>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_opt(
                        cached!(client, "SELECT response, request_sha256 FROM api_sends WHERE key = $1 AND msgid = $2"),
                        &[&key, &msgid.as_str()],
                    )
                    .await?;
                Ok(row.map(|r| ApiSend {
                    response: r.get(0),
                    request_sha256: r.get(1),
                }))
            })
        })
    }

    fn record_api_send(
        &self,
        key: String,
        msgid: MsgId,
        record: ApiSend,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                client
                    .execute(
                        cached!(client, "INSERT INTO api_sends (key, msgid, response, request_sha256, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key, msgid) DO UPDATE SET \
                         response = excluded.response, request_sha256 = excluded.request_sha256"),
                        &[
                            &key,
                            &msgid.as_str(),
                            &record.response,
                            &record.request_sha256,
                            &now_ms,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn first_callback(
        &self,
        key: String,
        expires_at: i64,
        now: i64,
    ) -> BoxFuture<'_, Result<bool, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                client
                    .execute(
                        cached!(client, "DELETE FROM callback_replays WHERE expires_at < $1"),
                        &[&now],
                    )
                    .await?;
                let inserted = client
                    .execute(
                        cached!(
                            client,
                            "INSERT INTO callback_replays (key, expires_at) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING"
                        ),
                        &[&key, &expires_at],
                    )
                    .await?;
                Ok(inserted == 1)
            })
        })
    }

    fn remembered_callbacks(
        &self,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, Error>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(
                            client,
                            "SELECT key, expires_at FROM callback_replays \
                         WHERE expires_at >= $1 LIMIT $2"
                        ),
                        &[&now, &limit],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    fn last_send_time(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_one(
                        cached!(client, "SELECT MAX(send_time) FROM messages WHERE open_kfid = $1 AND send_time > 0"),
                        &[&open_kfid.as_str()],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
    }

    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                let mut n = tx
                    .execute(
                        cached!(
                            tx,
                            "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages \
                         WHERE delivered_at IS NOT NULL AND delivered_at < $1 LIMIT 5000)"
                        ),
                        &[&before_ms],
                    )
                    .await?;
                n += tx
                    .execute(
                        cached!(
                            tx,
                            "DELETE FROM replies WHERE id IN (SELECT id FROM replies \
                         WHERE state <> 'pending' AND finished_at < $1 LIMIT 5000)"
                        ),
                        &[&before_ms],
                    )
                    .await?;
                n += tx
                    .execute(
                        cached!(
                            tx,
                            "DELETE FROM memory WHERE id IN (SELECT id FROM memory \
                         WHERE at < $1 LIMIT 5000)"
                        ),
                        &[&before_ms],
                    )
                    .await?;
                n += tx
                    .execute(
                        cached!(tx, "DELETE FROM api_sends WHERE created_at < $1"),
                        &[&before_ms],
                    )
                    .await?;
                n += tx
                    .execute(
                        cached!(
                            tx,
                            "DELETE FROM sessions WHERE (open_kfid, external_userid) IN \
                         (SELECT open_kfid, external_userid FROM sessions \
                         WHERE updated_at < $1 AND last_customer_msg_at * 1000 < $1 LIMIT 5000)"
                        ),
                        &[&before_ms],
                    )
                    .await?;
                tx.commit().await?;
                Ok(n)
            })
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_one(
                        cached!(
                            client,
                            "SELECT (SELECT COUNT(*) FROM messages), \
                         (SELECT COUNT(*) FROM messages WHERE delivered_at IS NULL), \
                         (SELECT COUNT(*) FROM deliveries), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'pending'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'sent'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'failed'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'refused'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'joined'), \
                         (SELECT COUNT(*) FROM messages WHERE skipped), \
                         (SELECT COUNT(*) FROM sessions WHERE view IS NOT NULL)"
                        ),
                        &[],
                    )
                    .await?;
                let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
                Ok(StoreStats {
                    messages: n(0),
                    pending: n(1),
                    deliveries: n(2),
                    replies_pending: n(3),
                    replies_sent: n(4),
                    replies_failed: n(5),
                    replies_refused: n(6),
                    replies_joined: n(7),
                    skipped: n(8),
                    sessions: n(9),
                })
            })
        })
    }

    fn messages(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Vec<(MsgId, bool)>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT msgid, delivered_at IS NOT NULL FROM messages WHERE open_kfid = $1 ORDER BY seq"),
                        &[&open_kfid.as_str()],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| (MsgId::from(r.get::<_, String>(0)), r.get(1)))
                    .collect())
            })
        })
    }

    fn message_rows(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Vec<MessageRow>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let rows = client
                    .query(
                        cached!(client, "SELECT msgid, send_time, delivered_at IS NOT NULL, skipped, media FROM messages \
                         WHERE open_kfid = $1 ORDER BY seq"),
                        &[&open_kfid.as_str()],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| MessageRow {
                        msgid: MsgId::from(r.get::<_, String>(0)),
                        send_time: r.get(1),
                        delivered: r.get(2),
                        skipped: r.get(3),
                        media: r.get(4),
                    })
                    .collect())
            })
        })
    }

    fn list_messages(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<MessageListing>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let kf = query.open_kfid.as_ref().map(OpenKfId::as_str);
                let customer = query.external_userid.as_ref().map(ExternalUserId::as_str);
                let limit = query.limit as i64;
                let rows = client
                    .query(
                        cached!(client, LIST_MESSAGES),
                        &[&kf, &customer, &query.failed, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| MessageListing {
                        seq: r.get(0),
                        open_kfid: OpenKfId::from(r.get::<_, String>(1)),
                        external_userid: ExternalUserId::from(r.get::<_, String>(2)),
                        msgid: MsgId::from(r.get::<_, String>(3)),
                        kind: r.get(4),
                        send_time: r.get(5),
                        stored_at_ms: r.get(6),
                        state: message_state(r.get(7), r.get(8)).into(),
                        delivered_at_ms: r.get(9),
                        decode_error: r.get(10),
                        media: r.get(11),
                        delivery: r.get(12),
                        attempts: r.get::<_, Option<i64>>(13).map(count),
                        last_error: r.get(14),
                    })
                    .collect())
            })
        })
    }

    fn list_deliveries(
        &self,
        query: ListQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryListing>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let kf = query.open_kfid.as_ref().map(OpenKfId::as_str);
                let customer = query.external_userid.as_ref().map(ExternalUserId::as_str);
                let limit = query.limit as i64;
                let rows = client
                    .query(
                        cached!(client, LIST_DELIVERIES),
                        &[&kf, &customer, &query.failed, &limit],
                    )
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let seqs = decode_seqs(&r.get::<_, String>(1));
                    let members = client
                        .query(
                            cached!(
                                client,
                                "SELECT seq, msgid, open_kfid, external_userid FROM messages \
                             WHERE seq = ANY($1)"
                            ),
                            &[&seqs],
                        )
                        .await?;
                    let by_seq: HashMap<i64, (String, String, String)> = members
                        .iter()
                        .map(|m| (m.get(0), (m.get(1), m.get(2), m.get(3))))
                        .collect();
                    let mut listing = DeliveryListing {
                        id: r.get(0),
                        attempts: count(r.get(2)),
                        next_attempt_at_ms: r.get(3),
                        last_error: r.get(4),
                        created_at_ms: r.get(5),
                        msgids: Vec::new(),
                        customers: Vec::new(),
                    };
                    for seq in &seqs {
                        if let Some((msgid, kf, customer)) = by_seq.get(seq) {
                            listing.msgids.push(msgid.as_str().into());
                            let lane = format!("{kf}/{customer}");
                            if !listing.customers.contains(&lane) {
                                listing.customers.push(lane);
                            }
                        }
                    }
                    out.push(listing);
                }
                Ok(out)
            })
        })
    }

    fn list_sends(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<SendListing>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let pattern = query.lane_pattern();
                let limit = query.limit as i64;
                let rows = client
                    .query(
                        cached!(client, LIST_SENDS),
                        &[&pattern, &query.failed, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| SendListing {
                        id: r.get(0),
                        endpoint: r.get(1),
                        lane: r.get(2),
                        msgid: MsgId::from(r.get::<_, String>(3)),
                        state: r.get(4),
                        attempts: count(r.get(5)),
                        last_error: r.get(6),
                        created_at_ms: r.get(7),
                        finished_at_ms: r.get(8),
                        delivery: r.get(9),
                        next_attempt_at_ms: r.get(10),
                    })
                    .collect())
            })
        })
    }

    fn conversations(
        &self,
        open_kfid: Option<OpenKfId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ConversationRow>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let kf = open_kfid.as_ref().map(OpenKfId::as_str);
                let limit = limit as i64;
                let rows = client.query(CONVERSATIONS, &[&kf, &limit]).await?;
                Ok(rows
                    .iter()
                    .map(|r| ConversationRow {
                        open_kfid: OpenKfId::from(r.get::<_, String>(0)),
                        external_userid: ExternalUserId::from(r.get::<_, String>(1)),
                        last: history_message(r, 2),
                        messages: count(r.get(11)),
                        view: r.get::<_, Option<String>>(12).map(|t| parse_view(Some(&t))),
                    })
                    .collect())
            })
        })
    }

    fn history(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<History, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let limit = limit as i64;
                let rows = client
                    .query(
                        HISTORY_MESSAGES,
                        &[&open_kfid.as_str(), &external_userid.as_str(), &limit],
                    )
                    .await?;
                let mut messages: Vec<HistoryMessage> =
                    rows.iter().map(|r| history_message(r, 0)).collect();
                messages.reverse();
                let lane = format!("{open_kfid}/{external_userid}");
                let rows = client.query(HISTORY_REPLIES, &[&lane, &limit]).await?;
                let mut replies: Vec<HistoryReply> = rows
                    .iter()
                    .map(|r| HistoryReply {
                        id: r.get(0),
                        endpoint: r.get(1),
                        msgid: MsgId::from(r.get::<_, String>(2)),
                        body: r.get(3),
                        state: r.get(4),
                        last_error: r.get(5),
                        result: r.get(6),
                        created_at_ms: r.get(7),
                        finished_at_ms: r.get(8),
                    })
                    .collect();
                replies.reverse();
                Ok(History { messages, replies })
            })
        })
    }

    fn media_record(
        &self,
        open_kfid: OpenKfId,
        msgid: MsgId,
    ) -> BoxFuture<'_, Result<Option<String>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_opt(
                        "SELECT media FROM messages WHERE open_kfid = $1 AND msgid = $2",
                        &[&open_kfid.as_str(), &msgid.as_str()],
                    )
                    .await?;
                Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
            })
        })
    }

    fn stored_message(
        &self,
        open_kfid: OpenKfId,
        msgid: MsgId,
    ) -> BoxFuture<'_, Result<Option<(StoredMessage, &'static str)>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_opt(
                        "SELECT seq, open_kfid, external_userid, stored_at, decode_error IS NOT NULL, \
                         author, no_reply, origin, kind, held, delivered_at IS NOT NULL, skipped \
                         FROM messages WHERE open_kfid = $1 AND msgid = $2",
                        &[&open_kfid.as_str(), &msgid.as_str()],
                    )
                    .await?;
                Ok(row.map(|r| {
                    (
                        StoredMessage {
                            seq: r.get(0),
                            lane: Lane::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                            stored_at_ms: r.get(3),
                            invalid: r.get(4),
                            payload: None,
                            media: None,
                            turn: Turn::read(r.get(5), r.get(6), origin_of(r.get(7))),
                            item: ItemKind::of_row(
                                r.get(8),
                                r.get::<_, Option<i16>>(9).map(i64::from),
                            ),
                        },
                        message_state(r.get(10), r.get(11)),
                    )
                }))
            })
        })
    }

    fn record_finished_reply(
        &self,
        reply: FinishedReply,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                client
                    .execute(
                        "INSERT INTO replies (delivery_id, endpoint, lane, body, msgid, state, \
                         attempts, next_attempt_at, last_error, created_at, finished_at, position, \
                         result, reported) \
                         VALUES (NULL, $1, $2, $3, $4, $5, 1, $6, $7, $6, $6, NULL, $8, TRUE)",
                        &[
                            &reply.endpoint.as_str(),
                            &reply.lane,
                            &reply.body,
                            &reply.msgid.as_str(),
                            &reply.state.as_str(),
                            &now_ms,
                            &reply.error,
                            &reply.result,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // No new transaction starts; those in progress finish on their connections, which
            // the pool then drops. Waits (briefly) for them, as the single connection's lock did.
            self.pool.close();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while self.pool.status().size > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

/// Queues replies with one statement (and one read of their lanes' pending replies).
async fn insert_replies(
    tx: &Transaction<'_>,
    replies: &[NewReply],
    now_ms: i64,
) -> Result<(), Error> {
    if replies.is_empty() {
        return Ok(());
    }
    // A new reply never overtakes a pending one of its lane (order), and joins the flush of a
    // held text when there is one (the joiner's window).
    let lanes: Vec<&str> = replies
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.lane.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut latest: HashMap<String, i64> = HashMap::with_capacity(lanes.len());
    if !lanes.is_empty() {
        lock_lanes(tx, &lanes).await?;
        let stmt = tx.prepare_cached(LATEST_PENDING).await?;
        for row in tx.query(&stmt, &[&lanes, &now_ms]).await? {
            latest.insert(row.get(0), row.get(1));
        }
    }
    let n = replies.len();
    let mut delivery_ids = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n);
    let mut reply_lanes = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut msgids = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut due = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut finished: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut positions: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut reported = Vec::with_capacity(n);
    for reply in replies {
        let failed = reply.error.is_some();
        let next_attempt_at = if failed {
            now_ms
        } else {
            // Later replies of the same lane in this batch see the earlier ones, as they would
            // one statement each.
            *latest
                .entry(reply.lane.clone())
                .or_insert(now_ms + reply.hold_ms.max(0))
        };
        let position = reply.position.map(i64::from);
        delivery_ids.push(reply.delivery_id.as_deref());
        endpoints.push(reply.endpoint.as_str());
        reply_lanes.push(reply.lane.as_str());
        bodies.push(reply.body.as_str());
        msgids.push(reply.msgid.as_str());
        states.push(if failed { "failed" } else { "pending" });
        due.push(next_attempt_at);
        errors.push(reply.error.as_deref());
        finished.push(failed.then_some(now_ms));
        reported.push(!(position.is_some() && reply.result.is_some()));
        positions.push(position);
        results.push(reply.result.as_deref());
    }
    let stmt = tx.prepare_cached(INSERT_REPLIES).await?;
    tx.execute(
        &stmt,
        &[
            &now_ms,
            &delivery_ids,
            &endpoints,
            &reply_lanes,
            &bodies,
            &msgids,
            &states,
            &due,
            &errors,
            &finished,
            &positions,
            &results,
            &reported,
        ],
    )
    .await?;
    Ok(())
}

/// Serializes the reply writes of these lanes until the transaction ends: a new reply reads
/// its lane's pending ones (it must not overtake them) while a retry pushes the lane's later ones
/// back, and with concurrent transactions neither would see the other's uncommitted row.
/// Locks are taken in one order (by hash) so that two transactions cannot wait for each other.
async fn lock_lanes(tx: &Transaction<'_>, lanes: &[&str]) -> Result<(), Error> {
    let stmt = tx.prepare_cached(LOCK_LANES).await?;
    tx.execute(&stmt, &[&LANE_CLASS, &lanes]).await?;
    Ok(())
}

/// The advisory lock class of reply lanes ([`lock_lanes`]).
const LANE_CLASS: i32 = 7_428_104;

/// Locks lanes in hash order (the subquery's order is kept by `OFFSET 0`): $1 class, $2 lanes.
const LOCK_LANES: &str = "SELECT pg_advisory_xact_lock($1, h) FROM (SELECT DISTINCT hashtext(l) AS h \
     FROM UNNEST($2::text[]) AS u(l) ORDER BY h OFFSET 0) AS s";

/// The latest due time of each lane's pending replies not yet due: $1 lanes, $2 now.
const LATEST_PENDING: &str = "SELECT lane, MAX(next_attempt_at) FROM replies \
     WHERE lane = ANY($1) AND state = 'pending' AND next_attempt_at >= $2 GROUP BY lane";

/// Replies in order, one statement: $1 now, then one array per column.
const INSERT_REPLIES: &str = "INSERT INTO replies (created_at, attempts, delivery_id, endpoint, \
     lane, body, msgid, state, next_attempt_at, last_error, finished_at, position, result, reported) \
     SELECT $1::bigint, 0, d, e, l, b, m, s, n, err, f, p, r, rep \
     FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::bigint[], $9::text[], $10::bigint[], $11::bigint[], $12::text[], $13::bool[]) \
     WITH ORDINALITY AS u(d, e, l, b, m, s, n, err, f, p, r, rep, i) ORDER BY i";

/// Marks messages delivered: $1 now, $2 seqs.
const MARK_DELIVERED: &str =
    "UPDATE messages SET delivered_at = $1 WHERE seq = ANY($2) AND delivered_at IS NULL";

/// Deliveries, one statement: $1 now, $2 ids, $3 seq lists, $4 attempts, $5 due times, $6 last
/// errors. A known one keeps its order (`created_at`) and takes what `$7` says: only the
/// attempt count (before an attempt), or everything (a rescheduled retry).
const UPSERT_DELIVERIES: &str = "INSERT INTO deliveries (created_at, id, seqs, attempts, \
     next_attempt_at, last_error) \
     SELECT $1::bigint, i, s, a, n, e FROM UNNEST($2::text[], $3::text[], $4::bigint[], \
     $5::bigint[], $6::text[]) AS u(i, s, a, n, e) \
     ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts, \
     seqs = CASE WHEN $7 THEN excluded.seqs ELSE deliveries.seqs END, \
     next_attempt_at = CASE WHEN $7 THEN excluded.next_attempt_at ELSE deliveries.next_attempt_at END, \
     last_error = CASE WHEN $7 THEN excluded.last_error ELSE deliveries.last_error END";

/// Writes delivery records with one statement ([`UPSERT_DELIVERIES`]); `replace`: a known one
/// takes every column, not only its attempt count. A repeated id counts once (its last record).
async fn upsert_deliveries(
    tx: &Transaction<'_>,
    records: &[DeliveryRecord],
    replace: bool,
    now_ms: i64,
) -> Result<(), Error> {
    let mut seen = HashSet::with_capacity(records.len());
    // The last record of an id wins, as it would one statement each.
    let unique: Vec<&DeliveryRecord> = records
        .iter()
        .rev()
        .filter(|r| seen.insert(r.id.as_str()))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if unique.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = unique.iter().map(|r| r.id.as_str()).collect();
    let seqs: Vec<String> = unique.iter().map(|r| encode_seqs(&r.seqs)).collect();
    let attempts: Vec<i64> = unique.iter().map(|r| i64::from(r.attempts)).collect();
    let due: Vec<i64> = unique.iter().map(|r| r.next_attempt_at_ms).collect();
    let errors: Vec<Option<&str>> = unique.iter().map(|r| r.last_error.as_deref()).collect();
    let stmt = tx.prepare_cached(UPSERT_DELIVERIES).await?;
    tx.execute(
        &stmt,
        &[&now_ms, &ids, &seqs, &attempts, &due, &errors, &replace],
    )
    .await?;
    Ok(())
}
