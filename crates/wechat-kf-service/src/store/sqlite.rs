//! The SQLite store: one connection owned by a dedicated thread, fed jobs through a channel.
//!
//! One writer serializes every transaction, which keeps `seq` (the `AUTOINCREMENT` rowid) in
//! commit order — the deliverer relies on that. WAL lets the file be read by other processes
//! (backups, inspection) while the service writes. `synchronous=NORMAL` (the default) survives a
//! killed process but not a power loss; `FULL` survives both.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};

use super::*;

/// Versioned schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "
    CREATE TABLE cursors (
        open_kfid TEXT PRIMARY KEY,
        cursor TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        open_kfid TEXT NOT NULL,
        msgid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        send_time INTEGER NOT NULL,
        origin INTEGER,
        kind TEXT NOT NULL,
        raw TEXT NOT NULL,
        decode_error TEXT,
        stored_at INTEGER NOT NULL,
        delivered_at INTEGER,
        UNIQUE (open_kfid, msgid)
    );
    CREATE INDEX messages_pending ON messages(seq) WHERE delivered_at IS NULL;
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        seqs TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE replies (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT,
        endpoint TEXT NOT NULL,
        lane TEXT NOT NULL,
        body TEXT NOT NULL,
        msgid TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX replies_pending ON replies(next_attempt_at) WHERE state = 'pending';
    CREATE TABLE api_sends (
        key TEXT NOT NULL,
        msgid TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (key, msgid)
    ) WITHOUT ROWID;
    CREATE TABLE sessions (
        open_kfid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        last_customer_msg_at INTEGER NOT NULL,
        PRIMARY KEY (open_kfid, external_userid)
    ) WITHOUT ROWID;
    ",
    // 2: first-start catch-ups, skipped messages, media records, session views, reply results.
    "
    ALTER TABLE cursors ADD COLUMN catch_up_before INTEGER;
    ALTER TABLE messages ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN media TEXT;
    ALTER TABLE sessions ADD COLUMN view TEXT;
    ALTER TABLE sessions ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE replies ADD COLUMN position INTEGER;
    ALTER TABLE replies ADD COLUMN result TEXT;
    ALTER TABLE replies ADD COLUMN reported INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX replies_unreported ON replies(id) WHERE reported = 0;
    CREATE INDEX replies_lane_pending ON replies(lane, next_attempt_at) WHERE state = 'pending';
    ",
    // 3: the callback replay cache; the request fingerprint of reply-API sends.
    "
    CREATE TABLE callback_replays (
        key TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX callback_replays_expiry ON callback_replays(expires_at);
    ALTER TABLE api_sends ADD COLUMN request_sha256 TEXT;
    ",
    // 4: whose turn it is (who wrote each item, why the bot may not answer it) and the items
    // held while a human has the session (1 held, 0 released as history).
    "
    ALTER TABLE messages ADD COLUMN author TEXT;
    ALTER TABLE messages ADD COLUMN no_reply TEXT;
    ALTER TABLE messages ADD COLUMN held INTEGER;
    CREATE INDEX messages_held ON messages(open_kfid, external_userid) WHERE held = 1;
    CREATE INDEX sessions_last_customer ON sessions(last_customer_msg_at);
    ",
    // 5: the responder's memory of each (account, customer) conversation.
    "
    CREATE TABLE memory (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        open_kfid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX memory_pair ON memory(open_kfid, external_userid, id);
    ",
];

// A pending message's delivery is the one whose comma-separated `seqs` holds its seq.

/// `store messages`: ?1 account, ?2 customer, ?3 failed only, ?4 limit.
const LIST_MESSAGES: &str = "SELECT m.seq, m.open_kfid, m.external_userid, m.msgid, m.kind, \
     m.send_time, m.stored_at, m.delivered_at IS NOT NULL, m.skipped <> 0, m.delivered_at, \
     m.decode_error, m.media IS NOT NULL, d.id, d.attempts, d.last_error \
     FROM messages m LEFT JOIN deliveries d ON m.delivered_at IS NULL \
     AND ',' || d.seqs || ',' LIKE '%,' || m.seq || ',%' \
     WHERE (?1 IS NULL OR m.open_kfid = ?1) AND (?2 IS NULL OR m.external_userid = ?2) \
     AND (NOT ?3 OR m.decode_error IS NOT NULL OR d.last_error IS NOT NULL) \
     ORDER BY m.seq DESC LIMIT ?4";

/// `store deliveries`: ?1 account, ?2 customer, ?3 failed only, ?4 limit.
const LIST_DELIVERIES: &str = "SELECT d.id, d.seqs, d.attempts, d.next_attempt_at, d.last_error, \
     d.created_at FROM deliveries d WHERE (NOT ?3 OR d.last_error IS NOT NULL) \
     AND ((?1 IS NULL AND ?2 IS NULL) OR EXISTS (SELECT 1 FROM messages m WHERE \
     (?1 IS NULL OR m.open_kfid = ?1) AND (?2 IS NULL OR m.external_userid = ?2) \
     AND ',' || d.seqs || ',' LIKE '%,' || m.seq || ',%')) \
     ORDER BY d.created_at DESC, d.id DESC LIMIT ?4";

/// `store sends`: ?1 lane pattern, ?2 failed only, ?3 limit.
const LIST_SENDS: &str = "SELECT id, endpoint, lane, msgid, state, attempts, last_error, created_at, \
     finished_at, delivery_id, CASE WHEN state = 'pending' THEN next_attempt_at END FROM replies WHERE (?1 IS NULL OR lane LIKE ?1 ESCAPE '\\') \
     AND (NOT ?2 OR state IN ('failed', 'refused') OR (state = 'pending' AND last_error IS NOT NULL)) \
     ORDER BY id DESC LIMIT ?3";

/// The console's conversation list: ?1 account, ?2 limit. One row per customer: its last
/// message, message count and session view.
const CONVERSATIONS: &str = "SELECT m.open_kfid, m.external_userid, m.seq, m.msgid, m.send_time, \
     m.origin, m.kind, m.raw, m.delivered_at IS NOT NULL, m.skipped <> 0, m.media, c.n, s.view \
     FROM (SELECT MAX(seq) AS last, COUNT(*) AS n FROM messages WHERE external_userid <> '' \
     AND (?1 IS NULL OR open_kfid = ?1) GROUP BY open_kfid, external_userid) c \
     JOIN messages m ON m.seq = c.last \
     LEFT JOIN sessions s ON s.open_kfid = m.open_kfid AND s.external_userid = m.external_userid \
     ORDER BY m.seq DESC LIMIT ?2";

/// A conversation's messages, newest first: ?1 account, ?2 customer, ?3 limit.
const HISTORY_MESSAGES: &str = "SELECT seq, msgid, send_time, origin, kind, raw, \
     delivered_at IS NOT NULL, skipped <> 0, media FROM messages \
     WHERE open_kfid = ?1 AND external_userid = ?2 ORDER BY seq DESC LIMIT ?3";

/// A conversation's queued replies, newest first: ?1 lane, ?2 limit.
const HISTORY_REPLIES: &str = "SELECT id, endpoint, msgid, body, state, last_error, result, \
     created_at, finished_at FROM replies WHERE lane = ?1 ORDER BY id DESC LIMIT ?2";

/// A [`HistoryMessage`] from columns `at..at + 9` (seq, msgid, send_time, origin, kind, raw,
/// delivered, skipped, media).
fn history_message(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<HistoryMessage> {
    Ok(HistoryMessage {
        seq: r.get(at)?,
        msgid: MsgId::from(r.get::<_, String>(at + 1)?),
        send_time: r.get(at + 2)?,
        origin: r
            .get::<_, Option<i64>>(at + 3)?
            .and_then(|o| u32::try_from(o).ok()),
        kind: r.get(at + 4)?,
        raw: r.get(at + 5)?,
        state: message_state(r.get(at + 6)?, r.get(at + 7)?).into(),
        media: r.get(at + 8)?,
    })
}

/// Rows deleted per purge call, so one call never holds the writer for long.
const PURGE_CHUNK: i64 = 5000;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A callback to remember: key, expiry, `now`, and where its answer goes.
type Remember = (
    String,
    i64,
    i64,
    tokio::sync::oneshot::Sender<Result<bool, Error>>,
);

/// The SQLite [`Store`].
pub struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Callbacks waiting to be remembered. One transaction takes every callback that queued
    /// while the writer was busy (group commit): one transaction per callback made the single
    /// writer the limit of the callback endpoint's rate.
    callbacks: std::sync::Arc<Mutex<Vec<Remember>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` (`:memory:` for a private in-memory
    /// one), sets WAL and the durability level, and runs the migrations. Blocking.
    pub fn open(path: &str, synchronous: Synchronous) -> Result<SqliteStore, Error> {
        let mut conn = Connection::open(path)
            .map_err(|e| Error::Store(format!("cannot open SQLite database {path:?}: {e}")))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // journal_mode answers with a row, so it is queried rather than executed.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && path != ":memory:" {
            tracing::warn!(mode, "SQLite did not switch to WAL");
        }
        let sync = match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; \
             PRAGMA cache_size = -4000;"
        ))?;
        if path != ":memory:" {
            quick_check(&conn, path)?;
        }
        migrate(&mut conn)?;
        SqliteStore::serve(conn)
    }

    /// Opens the database at `path` read-only, beside a running service (no migration; WAL
    /// lets it read while the service writes). Blocking.
    pub fn open_read_only(path: &str) -> Result<SqliteStore, Error> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::Store(format!("cannot open SQLite database {path:?}: {e}")))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != MIGRATIONS.len() as i64 {
            return Err(schema_mismatch(version, MIGRATIONS.len()));
        }
        SqliteStore::serve(conn)
    }

    /// Starts the thread that owns `conn`.
    fn serve(mut conn: Connection) -> Result<SqliteStore, Error> {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = std::thread::Builder::new()
            .name("wechat-kf-sqlite".into())
            .spawn(move || {
                // Runs until every sender is gone, so queued transactions finish on shutdown.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| Error::io("cannot start the SQLite thread", e))?;
        Ok(SqliteStore {
            jobs: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            callbacks: std::sync::Arc::default(),
        })
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, Error>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(Error::StoreClosed);
            }
            rx.await.unwrap_or(Err(Error::StoreClosed))
        })
    }
}

/// Refuses a damaged database: a page SQLite cannot read may hold anything (a cursor, an
/// undelivered message), and a service that starts on it may lose or repeat messages while it
/// reports ready. `quick_check` reads every page once (seconds for a large file).
fn quick_check(conn: &Connection, path: &str) -> Result<(), Error> {
    let damaged = |detail: String| {
        Error::Store(format!(
            "the SQLite database {path:?} is damaged ({detail}); stop, restore it from a backup \
             (or move it aside to start afresh: WeChat still holds 3 days of messages) and start again"
        ))
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| damaged(e.to_string()))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| damaged(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    let detail: Vec<String> = rows.iter().map(|r| crate::ids::bounded(r, 120)).collect();
    Err(damaged(format!(
        "PRAGMA quick_check: {}",
        detail.join("; ")
    )))
}

/// Applies the migrations not yet applied, each in its own transaction.
/// Applies a delivery's memory writes: appends (dropping a pair's entries beyond
/// [`MEMORY_KEPT`]) and clears.
fn write_memory(tx: &rusqlite::Transaction<'_>, writes: &[MemoryWrite]) -> Result<(), Error> {
    for write in writes {
        match write {
            MemoryWrite::Append {
                open_kfid,
                external_userid,
                entry,
            } => {
                tx.prepare_cached(
                    "INSERT INTO memory (open_kfid, external_userid, role, content, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    open_kfid.as_str(),
                    external_userid.as_str(),
                    entry.role.as_str(),
                    entry.content,
                    entry.at_ms
                ])?;
                tx.prepare_cached(
                    "DELETE FROM memory WHERE open_kfid = ?1 AND external_userid = ?2 AND id <= \
                     (SELECT id FROM memory WHERE open_kfid = ?1 AND external_userid = ?2 \
                      ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                )?
                .execute(params![
                    open_kfid.as_str(),
                    external_userid.as_str(),
                    MEMORY_KEPT as i64
                ])?;
            }
            MemoryWrite::Clear {
                open_kfid,
                external_userid,
            } => {
                tx.prepare_cached(
                    "DELETE FROM memory WHERE open_kfid = ?1 AND external_userid = ?2",
                )?
                .execute(params![open_kfid.as_str(), external_userid.as_str()])?;
            }
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() as i64 {
        return Err(Error::Store(format!(
            "the database has schema version {current}, newer than this program ({}); \
             upgrade wechat-kf",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", index + 1))?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied SQLite migration");
    }
    Ok(())
}

/// Reads what the page-commit policy needs, asks it for the plan and writes the plan, in one
/// transaction (see [`policy::plan_page`]).
fn commit_page(conn: &mut Connection, page: PageWrite) -> Result<PageOutcome, Error> {
    let tx = conn.transaction()?;
    let plan = {
        let mut exists = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE open_kfid = ?1 AND msgid = ?2)",
        )?;
        let mut already_stored = HashSet::new();
        for msgid in policy::msgids(&page) {
            let params = params![page.open_kfid.as_str(), msgid.as_str()];
            if exists.query_row(params, |r| r.get::<_, bool>(0))? {
                already_stored.insert(msgid.clone());
            }
        }
        let mut load_view = tx.prepare_cached(
            "SELECT view FROM sessions WHERE open_kfid = ?1 AND external_userid = ?2",
        )?;
        let mut views = HashMap::new();
        for customer in policy::customers_to_observe(&page, &already_stored) {
            let text: Option<Option<String>> = load_view
                .query_row(params![page.open_kfid.as_str(), customer.as_str()], |r| {
                    r.get(0)
                })
                .optional()?;
            views.insert(customer.clone(), parse_view(text.flatten().as_deref()));
        }
        policy::plan_page(page, &already_stored, views)
    };
    let mut seqs = Vec::with_capacity(plan.rows.len());
    {
        // No `ON CONFLICT`: the plan only holds msgids the store does not have, so a conflict
        // means the read above is stale, and failing the transaction (the page is pulled
        // again) is better than committing a plan built on it.
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (open_kfid, msgid, external_userid, send_time, origin, kind, raw, \
             decode_error, stored_at, skipped, delivered_at, author, no_reply, held) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, CASE WHEN ?10 THEN ?9 END, ?11, ?12, \
             CASE WHEN ?13 THEN 1 END)",
        )?;
        for row in &plan.rows {
            let m = &row.message;
            insert.execute(params![
                plan.open_kfid.as_str(),
                m.msgid.as_str(),
                m.external_userid.as_str(),
                m.send_time,
                m.origin,
                m.kind,
                m.payload.raw(),
                m.decode_error,
                plan.now_ms,
                row.finished(),
                row.turn.from.as_str(),
                row.turn.stored_no_reply(),
                row.held,
            ])?;
            seqs.push(tx.last_insert_rowid());
        }
        let mut session = tx.prepare_cached(
            "INSERT INTO sessions (open_kfid, external_userid, last_customer_msg_at, view, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (open_kfid, external_userid) DO UPDATE SET last_customer_msg_at = \
             MAX(last_customer_msg_at, excluded.last_customer_msg_at), \
             view = COALESCE(excluded.view, sessions.view), updated_at = excluded.updated_at",
        )?;
        for write in &plan.sessions {
            session.execute(params![
                plan.open_kfid.as_str(),
                write.external_userid.as_str(),
                write.last_customer_msg_at.unwrap_or(0),
                write.view.as_ref().map(encode_view),
                plan.now_ms
            ])?;
        }
        for reply in &plan.replies {
            insert_reply(&tx, reply, plan.now_ms)?;
        }
        tx.prepare_cached(
            "INSERT INTO cursors (open_kfid, cursor, updated_at, catch_up_before) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (open_kfid) DO UPDATE SET cursor = COALESCE(excluded.cursor, cursors.cursor), \
             updated_at = excluded.updated_at, catch_up_before = excluded.catch_up_before",
        )?
        .execute(params![
            plan.open_kfid.as_str(),
            plan.next_cursor,
            plan.now_ms,
            plan.catch_up_before
        ])?;
    }
    let mut released = Vec::new();
    if !plan.release.is_empty() {
        let mut release = tx.prepare_cached(
            "UPDATE messages SET held = 0 WHERE open_kfid = ?1 AND external_userid = ?2 AND held = 1 \
             RETURNING seq, stored_at, decode_error IS NOT NULL, raw, author, no_reply, origin",
        )?;
        for customer in &plan.release {
            let rows =
                release.query_map(params![plan.open_kfid.as_str(), customer.as_str()], |r| {
                    let author: Option<String> = r.get(4)?;
                    let no_reply: Option<String> = r.get(5)?;
                    let raw: String = r.get(3)?;
                    Ok(StoredMessage {
                        seq: r.get(0)?,
                        lane: Lane {
                            open_kfid: plan.open_kfid.clone(),
                            external_userid: customer.clone(),
                        },
                        stored_at_ms: r.get(1)?,
                        invalid: r.get(2)?,
                        payload: Some(Payload::Raw(Arc::from(raw))),
                        media: None,
                        turn: Turn::read(author.as_deref(), no_reply.as_deref(), r.get(6)?),
                        item: ItemKind::History,
                    })
                })?;
            let mut rows = rows.collect::<Result<Vec<_>, _>>()?;
            rows.sort_by_key(|m| m.seq);
            released.extend(rows);
        }
    }
    tx.commit()?;
    Ok(plan.into_outcome(&seqs, released))
}

/// Remembers a batch of callbacks in one transaction, each answered as if alone (a key twice in
/// the batch: the second is a replay).
fn remember_callbacks(conn: &mut Connection, batch: Vec<Remember>) {
    let mut write = || -> Result<Vec<bool>, Error> {
        let tx = conn.transaction()?;
        // The earliest `now` of the batch: never forgets a key another member still counts.
        let now = batch.iter().map(|c| c.2).min().unwrap_or(0);
        tx.prepare_cached("DELETE FROM callback_replays WHERE expires_at < ?1")?
            .execute(params![now])?;
        let mut firsts = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO callback_replays (key, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO NOTHING",
            )?;
            for (key, expires_at, _, _) in &batch {
                firsts.push(insert.execute(params![key, expires_at])? == 1);
            }
        }
        tx.commit()?;
        Ok(firsts)
    };
    match write() {
        Ok(firsts) => {
            for ((_, _, _, answer), first) in batch.into_iter().zip(firsts) {
                let _ = answer.send(Ok(first));
            }
        }
        Err(e) => {
            let text = e.to_string();
            for (_, _, _, answer) in batch {
                let _ = answer.send(Err(Error::Store(text.clone())));
            }
        }
    }
}

fn insert_reply(
    tx: &rusqlite::Transaction<'_>,
    reply: &NewReply,
    now_ms: i64,
) -> Result<(), Error> {
    let state = if reply.error.is_some() {
        "failed"
    } else {
        "pending"
    };
    // A new reply never overtakes a pending one of its lane (order), and joins the flush of a
    // held text when there is one (the joiner's window).
    tx.prepare_cached(
        "INSERT INTO replies (delivery_id, endpoint, lane, body, msgid, state, attempts, \
         next_attempt_at, last_error, created_at, finished_at, position, result, reported) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, \
         CASE WHEN ?6 = 'failed' THEN ?7 ELSE COALESCE((SELECT MAX(next_attempt_at) FROM replies \
           WHERE lane = ?3 AND state = 'pending' AND next_attempt_at >= ?7), ?7 + ?11) END, \
         ?8, ?7, CASE WHEN ?6 = 'failed' THEN ?7 END, ?9, ?10, \
         CASE WHEN ?9 IS NOT NULL AND ?10 IS NOT NULL THEN 0 ELSE 1 END)",
    )?
    .execute(params![
        reply.delivery_id,
        reply.endpoint.as_str(),
        reply.lane,
        reply.body,
        reply.msgid.as_str(),
        state,
        now_ms,
        reply.error,
        reply.position,
        reply.result,
        reply.hold_ms.max(0),
    ])?;
    Ok(())
}

fn insert_delivery(
    tx: &rusqlite::Transaction<'_>,
    record: &DeliveryRecord,
    now_ms: i64,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO deliveries (id, seqs, attempts, next_attempt_at, last_error, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        record.id,
        encode_seqs(&record.seqs),
        record.attempts,
        record.next_attempt_at_ms,
        record.last_error,
        now_ms,
    ])?;
    Ok(())
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.call(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }

    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountCursor>, Error>> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT open_kfid, cursor, catch_up_before FROM cursors ORDER BY open_kfid",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(AccountCursor {
                    open_kfid: OpenKfId::from(r.get::<_, String>(0)?),
                    cursor: r.get(1)?,
                    catch_up_before: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn fence(&self) -> BoxFuture<'_, Result<(), Error>> {
        // One process holds the lock file and writes through one connection: nothing of a
        // previous writer can still be in flight.
        Box::pin(async { Ok(()) })
    }

    fn add_account(&self, open_kfid: OpenKfId, now_ms: i64) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO cursors (open_kfid, cursor, updated_at) VALUES (?1, NULL, ?2) \
                 ON CONFLICT (open_kfid) DO NOTHING",
            )?
            .execute(params![open_kfid.as_str(), now_ms])?;
            Ok(())
        })
    }

    fn commit_page(&self, page: PageWrite) -> BoxFuture<'_, Result<PageOutcome, Error>> {
        self.call(move |conn| commit_page(conn, page))
    }

    fn sessions_last_written_between(
        &self,
        since: i64,
        until: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CustomerView>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT open_kfid, external_userid, view FROM sessions \
                 WHERE last_customer_msg_at BETWEEN ?1 AND ?2 ORDER BY last_customer_msg_at LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![since, until, limit as i64], |r| {
                let open_kfid: String = r.get(0)?;
                let external_userid: String = r.get(1)?;
                let view: Option<String> = r.get(2)?;
                Ok((open_kfid.into(), external_userid.into(), parse_view(view.as_deref())))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn recent_messages(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, raw FROM messages WHERE open_kfid = ?1 AND external_userid = ?2 \
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![open_kfid.as_str(), external_userid.as_str(), limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn record_session_change(
        &self,
        change: SessionChange,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<StoredMessage, Error>> {
        self.call(move |conn| {
            let row = change.row(MsgId::from(format!("session:{}", uuid::Uuid::new_v4().simple())));
            conn.prepare_cached(
                "INSERT INTO messages (open_kfid, msgid, external_userid, send_time, kind, raw, \
                 stored_at, author, no_reply) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'system', 'system_event')",
            )?
            .execute(params![
                change.open_kfid.as_str(),
                row.msgid.as_str(),
                row.external_userid.as_str(),
                row.send_time,
                row.kind,
                row.payload.raw(),
                now_ms,
            ])?;
            let seq = conn.last_insert_rowid();
            Ok(change.into_stored(row, seq, now_ms))
        })
    }

    fn pending_messages(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, open_kfid, external_userid, stored_at, decode_error IS NOT NULL, \
                 author, no_reply, origin, kind, held FROM messages \
                 WHERE delivered_at IS NULL AND seq > ?1 AND (held IS NULL OR held = 0) \
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
                let open_kfid: String = r.get(1)?;
                let external_userid: String = r.get(2)?;
                let author: Option<String> = r.get(5)?;
                let no_reply: Option<String> = r.get(6)?;
                let kind: String = r.get(8)?;
                let held: Option<i64> = r.get(9)?;
                Ok(StoredMessage {
                    seq: r.get(0)?,
                    lane: Lane::new(open_kfid, external_userid),
                    stored_at_ms: r.get(3)?,
                    invalid: r.get(4)?,
                    payload: None,
                    media: None,
                    turn: Turn::read(author.as_deref(), no_reply.as_deref(), r.get(7)?),
                    item: ItemKind::of_row(&kind, held),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn open_deliveries(&self) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, Error>> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, seqs, attempts, next_attempt_at, last_error FROM deliveries ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                let seqs: String = r.get(1)?;
                Ok(DeliveryRecord {
                    id: r.get(0)?,
                    seqs: decode_seqs(&seqs),
                    attempts: r.get(2)?,
                    next_attempt_at_ms: r.get(3)?,
                    last_error: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn load_payloads(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<LoadedPayload>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT raw, media FROM messages WHERE seq = ?1")?;
            let mut out = Vec::with_capacity(seqs.len());
            for seq in seqs {
                if let Some((raw, media)) = stmt
                    .query_row([seq], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))
                    .optional()?
                {
                    out.push(LoadedPayload { seq, raw, media });
                }
            }
            Ok(out)
        })
    }

    fn record_media(&self, media: Vec<(i64, String)>) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut update =
                    tx.prepare_cached("UPDATE messages SET media = ?2 WHERE seq = ?1")?;
                for (seq, json) in &media {
                    update.execute(params![seq, json])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn messages_without_media(
        &self,
        msgtypes: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<MediaJob>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, open_kfid, kind, raw FROM messages \
                 WHERE delivered_at IS NULL AND media IS NULL ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, open_kfid, kind, raw) = row?;
                if msgtypes.contains(&kind) {
                    out.push(MediaJob {
                        seq,
                        open_kfid: open_kfid.into(),
                        raw,
                    });
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn session(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
    ) -> BoxFuture<'_, Result<Option<SessionView>, Error>> {
        self.call(move |conn| {
            let text: Option<Option<String>> = conn
                .prepare_cached(
                    "SELECT view FROM sessions WHERE open_kfid = ?1 AND external_userid = ?2",
                )?
                .query_row(params![open_kfid.as_str(), external_userid.as_str()], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(text.flatten().map(|t| parse_view(Some(&t))))
        })
    }

    fn update_session(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        update: SessionUpdate,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<SessionView, Error>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let text: Option<Option<String>> = tx
                .prepare_cached(
                    "SELECT view FROM sessions WHERE open_kfid = ?1 AND external_userid = ?2",
                )?
                .query_row(
                    params![open_kfid.as_str(), external_userid.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            let mut view = parse_view(text.flatten().as_deref());
            update.apply(&mut view);
            tx.prepare_cached(
                "INSERT INTO sessions (open_kfid, external_userid, last_customer_msg_at, view, updated_at) \
                 VALUES (?1, ?2, 0, ?3, ?4) ON CONFLICT (open_kfid, external_userid) DO UPDATE SET \
                 view = excluded.view, updated_at = excluded.updated_at",
            )?
            .execute(params![
                open_kfid.as_str(),
                external_userid.as_str(),
                encode_view(&view),
                now_ms
            ])?;
            tx.commit()?;
            Ok(view)
        })
    }

    fn reply_results(&self, limit: usize) -> BoxFuture<'_, Result<Vec<(i64, String)>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, result FROM replies WHERE reported = 0 AND result IS NOT NULL \
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn begin_deliveries(
        &self,
        records: Vec<DeliveryRecord>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                // A known delivery keeps its order (created_at) and last error.
                let mut begin = tx.prepare_cached(
                    "INSERT INTO deliveries (id, seqs, attempts, next_attempt_at, last_error, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts",
                )?;
                for record in &records {
                    begin.execute(params![
                        record.id,
                        encode_seqs(&record.seqs),
                        record.attempts,
                        record.next_attempt_at_ms,
                        record.last_error,
                        now_ms,
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn finish_deliveries(&self, finish: FinishDeliveries) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut delivered = tx.prepare_cached(
                    "UPDATE messages SET delivered_at = ?1 WHERE seq = ?2 AND delivered_at IS NULL",
                )?;
                let mut delete = tx.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?;
                let mut reported =
                    tx.prepare_cached("UPDATE replies SET reported = 1 WHERE id = ?1")?;
                for ack in &finish.acks {
                    for seq in &ack.seqs {
                        delivered.execute(params![finish.now_ms, seq])?;
                    }
                    delete.execute([&ack.delivery_id])?;
                    for id in &ack.reported {
                        reported.execute([id])?;
                    }
                    for reply in &ack.replies {
                        insert_reply(&tx, reply, finish.now_ms)?;
                    }
                    write_memory(&tx, &ack.memory)?;
                }
                for failure in &finish.failures {
                    delete.execute([&failure.old_id])?;
                    for record in &failure.retries {
                        insert_delivery(&tx, record, finish.now_ms)?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn memory(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<MemoryEntry>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT role, content, at FROM memory WHERE open_kfid = ?1 AND external_userid = ?2 \
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![open_kfid.as_str(), external_userid.as_str(), limit as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (role, content, at_ms) = row?;
                // A role a later version wrote is skipped, not an error.
                if let Some(role) = MemoryRole::parse(&role) {
                    out.push(MemoryEntry {
                        role,
                        content,
                        at_ms,
                    });
                }
            }
            out.reverse();
            Ok(out)
        })
    }

    fn due_replies(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ReplyRecord>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, endpoint, lane, body, msgid, attempts, delivery_id, position FROM replies \
                 WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
                let endpoint: String = r.get(1)?;
                Ok((
                    endpoint,
                    ReplyRecord {
                        id: r.get(0)?,
                        endpoint: ReplyEndpoint::SendMsg,
                        lane: r.get(2)?,
                        body: r.get(3)?,
                        msgid: MsgId::from(r.get::<_, String>(4)?),
                        attempts: r.get(5)?,
                        delivery_id: r.get(6)?,
                        position: r.get(7)?,
                    },
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (endpoint, mut record) = row?;
                record.endpoint = ReplyEndpoint::parse(&endpoint).unwrap_or(ReplyEndpoint::SendMsg);
                out.push(record);
            }
            Ok(out)
        })
    }

    fn next_reply_due(&self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.call(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_attempt_at) FROM replies WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
    }

    fn finish_replies(
        &self,
        outcomes: Vec<ReplyOutcome>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            for outcome in &outcomes {
                match outcome {
                    ReplyOutcome::Finished {
                        id,
                        state,
                        error,
                        result,
                    } => {
                        tx.prepare_cached(
                            "UPDATE replies SET state = ?2, attempts = attempts + 1, finished_at = ?3, \
                             last_error = ?4, result = ?5, \
                             reported = CASE WHEN position IS NOT NULL AND ?5 IS NOT NULL THEN 0 ELSE 1 END \
                             WHERE id = ?1",
                        )?
                        .execute(params![id, state.as_str(), now_ms, error, result])?;
                    }
                    ReplyOutcome::Retry {
                        id,
                        lane,
                        attempts,
                        next_attempt_at_ms,
                        error,
                        body,
                    } => {
                        tx.prepare_cached(
                            "UPDATE replies SET attempts = ?2, next_attempt_at = ?3, last_error = ?4, \
                             body = COALESCE(?5, body) WHERE id = ?1",
                        )?
                        .execute(params![id, attempts, next_attempt_at_ms, error, body])?;
                        // Later replies to the same customer wait, so order is kept.
                        tx.prepare_cached(
                            "UPDATE replies SET next_attempt_at = MAX(next_attempt_at, ?3) \
                             WHERE state = 'pending' AND lane = ?2 AND id > ?1",
                        )?
                        .execute(params![id, lane, next_attempt_at_ms])?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn api_send(&self, key: String, msgid: MsgId) -> BoxFuture<'_, Result<Option<ApiSend>, Error>> {
        self.call(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT response, request_sha256 FROM api_sends WHERE key = ?1 AND msgid = ?2",
                )?
                .query_row(params![key, msgid.as_str()], |r| {
                    Ok(ApiSend {
                        response: r.get(0)?,
                        request_sha256: r.get(1)?,
                    })
                })
                .optional()?)
        })
    }

    fn record_api_send(
        &self,
        key: String,
        msgid: MsgId,
        record: ApiSend,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO api_sends (key, msgid, response, request_sha256, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                key,
                msgid.as_str(),
                record.response,
                record.request_sha256,
                now_ms
            ])?;
            Ok(())
        })
    }

    fn first_callback(
        &self,
        key: String,
        expires_at: i64,
        now: i64,
    ) -> BoxFuture<'_, Result<bool, Error>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queue = self.callbacks.clone();
        let first_in_queue = {
            let mut waiting = queue.lock().unwrap_or_else(|e| e.into_inner());
            waiting.push((key, expires_at, now, answer));
            waiting.len() == 1
        };
        // The first to queue schedules the transaction; the others ride along with it.
        if first_in_queue {
            let job: Job = Box::new(move |conn| {
                let batch = std::mem::take(&mut *queue.lock().unwrap_or_else(|e| e.into_inner()));
                remember_callbacks(conn, batch);
            });
            let sent = self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|jobs| jobs.send(job).is_ok());
            if !sent {
                // Closed: dropping the answers makes every waiter see `StoreClosed`.
                self.callbacks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
        }
        Box::pin(async move { answered.await.unwrap_or(Err(Error::StoreClosed)) })
    }

    fn remembered_callbacks(
        &self,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, Error>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |conn| {
            let mut select = conn.prepare_cached(
                "SELECT key, expires_at FROM callback_replays WHERE expires_at >= ?1 LIMIT ?2",
            )?;
            let rows = select.query_map(params![now, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn last_send_time(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.call(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT MAX(send_time) FROM messages WHERE open_kfid = ?1 AND send_time > 0",
                )?
                .query_row(params![open_kfid.as_str()], |r| r.get(0))?)
        })
    }

    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let mut n = tx.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages \
                 WHERE delivered_at IS NOT NULL AND delivered_at < ?1 LIMIT ?2)",
                params![before_ms, PURGE_CHUNK],
            )?;
            n += tx.execute(
                "DELETE FROM replies WHERE id IN (SELECT id FROM replies \
                 WHERE state <> 'pending' AND finished_at < ?1 LIMIT ?2)",
                params![before_ms, PURGE_CHUNK],
            )?;
            n += tx.execute(
                "DELETE FROM api_sends WHERE created_at < ?1",
                params![before_ms],
            )?;
            // A view untouched for the whole retention (far past the 48-hour window) holds
            // nothing a send could use; a customer who writes again starts a new one.
            n += tx.execute(
                "DELETE FROM sessions WHERE (open_kfid, external_userid) IN \
                 (SELECT open_kfid, external_userid FROM sessions \
                 WHERE updated_at < ?1 AND last_customer_msg_at * 1000 < ?1 LIMIT ?2)",
                params![before_ms, PURGE_CHUNK],
            )?;
            // A conversation remembered for the whole retention without a word is forgotten.
            n += tx.execute(
                "DELETE FROM memory WHERE id IN (SELECT id FROM memory WHERE at < ?1 LIMIT ?2)",
                params![before_ms, PURGE_CHUNK],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, Error>> {
        self.call(|conn| {
            let count = |sql: &str| -> Result<u64, Error> {
                Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
            };
            Ok(StoreStats {
                messages: count("SELECT COUNT(*) FROM messages")?,
                pending: count("SELECT COUNT(*) FROM messages WHERE delivered_at IS NULL")?,
                deliveries: count("SELECT COUNT(*) FROM deliveries")?,
                replies_pending: count("SELECT COUNT(*) FROM replies WHERE state = 'pending'")?,
                replies_sent: count("SELECT COUNT(*) FROM replies WHERE state = 'sent'")?,
                replies_failed: count("SELECT COUNT(*) FROM replies WHERE state = 'failed'")?,
                replies_refused: count("SELECT COUNT(*) FROM replies WHERE state = 'refused'")?,
                replies_joined: count("SELECT COUNT(*) FROM replies WHERE state = 'joined'")?,
                skipped: count("SELECT COUNT(*) FROM messages WHERE skipped <> 0")?,
                sessions: count("SELECT COUNT(*) FROM sessions WHERE view IS NOT NULL")?,
            })
        })
    }

    fn messages(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Vec<(MsgId, bool)>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT msgid, delivered_at IS NOT NULL FROM messages WHERE open_kfid = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([open_kfid.as_str()], |r| {
                Ok((MsgId::from(r.get::<_, String>(0)?), r.get(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn message_rows(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Vec<MessageRow>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT msgid, send_time, delivered_at IS NOT NULL, skipped <> 0, media FROM messages \
                 WHERE open_kfid = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([open_kfid.as_str()], |r| {
                Ok(MessageRow {
                    msgid: MsgId::from(r.get::<_, String>(0)?),
                    send_time: r.get(1)?,
                    delivered: r.get(2)?,
                    skipped: r.get(3)?,
                    media: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn list_messages(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<MessageListing>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(LIST_MESSAGES)?;
            let rows = stmt.query_map(
                params![
                    query.open_kfid.as_ref().map(OpenKfId::as_str),
                    query.external_userid.as_ref().map(ExternalUserId::as_str),
                    query.failed,
                    query.limit as i64,
                ],
                |r| {
                    let delivered: bool = r.get(7)?;
                    let skipped: bool = r.get(8)?;
                    Ok(MessageListing {
                        seq: r.get(0)?,
                        open_kfid: OpenKfId::from(r.get::<_, String>(1)?),
                        external_userid: ExternalUserId::from(r.get::<_, String>(2)?),
                        msgid: MsgId::from(r.get::<_, String>(3)?),
                        kind: r.get(4)?,
                        send_time: r.get(5)?,
                        stored_at_ms: r.get(6)?,
                        state: message_state(delivered, skipped).into(),
                        delivered_at_ms: r.get(9)?,
                        decode_error: r.get(10)?,
                        media: r.get(11)?,
                        delivery: r.get(12)?,
                        attempts: r.get(13)?,
                        last_error: r.get(14)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn list_deliveries(
        &self,
        query: ListQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryListing>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(LIST_DELIVERIES)?;
            let rows = stmt.query_map(
                params![
                    query.open_kfid.as_ref().map(OpenKfId::as_str),
                    query.external_userid.as_ref().map(ExternalUserId::as_str),
                    query.failed,
                    query.limit as i64,
                ],
                |r| {
                    let seqs: String = r.get(1)?;
                    Ok((
                        DeliveryListing {
                            id: r.get(0)?,
                            attempts: r.get(2)?,
                            next_attempt_at_ms: r.get(3)?,
                            last_error: r.get(4)?,
                            created_at_ms: r.get(5)?,
                            msgids: Vec::new(),
                            customers: Vec::new(),
                        },
                        decode_seqs(&seqs),
                    ))
                },
            )?;
            let rows = rows.collect::<Result<Vec<_>, _>>()?;
            let mut member = conn.prepare_cached(
                "SELECT msgid, open_kfid, external_userid FROM messages WHERE seq = ?1",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (mut listing, seqs) in rows {
                for seq in seqs {
                    let found: Option<(String, String, String)> = member
                        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()?;
                    if let Some((msgid, kf, customer)) = found {
                        listing.msgids.push(msgid.into());
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
    }

    fn list_sends(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<SendListing>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(LIST_SENDS)?;
            let rows = stmt.query_map(
                params![query.lane_pattern(), query.failed, query.limit as i64],
                |r| {
                    Ok(SendListing {
                        id: r.get(0)?,
                        endpoint: r.get(1)?,
                        lane: r.get(2)?,
                        msgid: MsgId::from(r.get::<_, String>(3)?),
                        state: r.get(4)?,
                        attempts: r.get(5)?,
                        last_error: r.get(6)?,
                        created_at_ms: r.get(7)?,
                        finished_at_ms: r.get(8)?,
                        delivery: r.get(9)?,
                        next_attempt_at_ms: r.get(10)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn conversations(
        &self,
        open_kfid: Option<OpenKfId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ConversationRow>, Error>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(CONVERSATIONS)?;
            let kf = open_kfid.as_ref().map(OpenKfId::as_str);
            let rows = stmt.query_map(params![kf, limit as i64], |r| {
                let last = history_message(r, 2)?;
                Ok(ConversationRow {
                    open_kfid: OpenKfId::from(r.get::<_, String>(0)?),
                    external_userid: ExternalUserId::from(r.get::<_, String>(1)?),
                    last,
                    messages: u32::try_from(r.get::<_, i64>(11)?).unwrap_or(u32::MAX),
                    view: r
                        .get::<_, Option<String>>(12)?
                        .map(|t| parse_view(Some(&t))),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn history(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<History, Error>> {
        self.call(move |conn| {
            let mut messages = conn
                .prepare_cached(HISTORY_MESSAGES)?
                .query_map(
                    params![open_kfid.as_str(), external_userid.as_str(), limit as i64],
                    |r| history_message(r, 0),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            messages.reverse();
            let lane = format!("{open_kfid}/{external_userid}");
            let mut replies = conn
                .prepare_cached(HISTORY_REPLIES)?
                .query_map(params![lane, limit as i64], |r| {
                    Ok(HistoryReply {
                        id: r.get(0)?,
                        endpoint: r.get(1)?,
                        msgid: MsgId::from(r.get::<_, String>(2)?),
                        body: r.get(3)?,
                        state: r.get(4)?,
                        last_error: r.get(5)?,
                        result: r.get(6)?,
                        created_at_ms: r.get(7)?,
                        finished_at_ms: r.get(8)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            replies.reverse();
            Ok(History { messages, replies })
        })
    }

    fn media_record(
        &self,
        open_kfid: OpenKfId,
        msgid: MsgId,
    ) -> BoxFuture<'_, Result<Option<String>, Error>> {
        self.call(move |conn| {
            let media: Option<Option<String>> = conn
                .prepare_cached("SELECT media FROM messages WHERE open_kfid = ?1 AND msgid = ?2")?
                .query_row(params![open_kfid.as_str(), msgid.as_str()], |r| r.get(0))
                .optional()?;
            Ok(media.flatten())
        })
    }

    fn stored_message(
        &self,
        open_kfid: OpenKfId,
        msgid: MsgId,
    ) -> BoxFuture<'_, Result<Option<(StoredMessage, &'static str)>, Error>> {
        self.call(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT seq, open_kfid, external_userid, stored_at, decode_error IS NOT NULL, \
                     author, no_reply, origin, kind, held, delivered_at IS NOT NULL, skipped <> 0 \
                     FROM messages WHERE open_kfid = ?1 AND msgid = ?2",
                )?
                .query_row(params![open_kfid.as_str(), msgid.as_str()], |r| {
                    let open_kfid: String = r.get(1)?;
                    let external_userid: String = r.get(2)?;
                    let author: Option<String> = r.get(5)?;
                    let no_reply: Option<String> = r.get(6)?;
                    let kind: String = r.get(8)?;
                    let held: Option<i64> = r.get(9)?;
                    Ok((
                        StoredMessage {
                            seq: r.get(0)?,
                            lane: Lane::new(open_kfid, external_userid),
                            stored_at_ms: r.get(3)?,
                            invalid: r.get(4)?,
                            payload: None,
                            media: None,
                            turn: Turn::read(author.as_deref(), no_reply.as_deref(), r.get(7)?),
                            item: ItemKind::of_row(&kind, held),
                        },
                        message_state(r.get(10)?, r.get(11)?),
                    ))
                })
                .optional()?;
            Ok(row)
        })
    }

    fn record_finished_reply(
        &self,
        reply: FinishedReply,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO replies (delivery_id, endpoint, lane, body, msgid, state, attempts, \
                 next_attempt_at, last_error, created_at, finished_at, position, result, reported) \
                 VALUES (NULL, ?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?6, ?6, NULL, ?8, 1)",
            )?
            .execute(params![
                reply.endpoint.as_str(),
                reply.lane,
                reply.body,
                reply.msgid.as_str(),
                reply.state.as_str(),
                now_ms,
                reply.error,
                reply.result,
            ])?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // Dropping the sender lets the worker drain its queue and stop.
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        Box::pin(async move {
            if let Some(worker) = worker {
                let _ = tokio::task::spawn_blocking(move || worker.join()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(msgid: &str, customer: &str) -> NewMessage {
        let raw = format!(
            r#"{{"msgid":"{msgid}","open_kfid":"wk1","external_userid":"{customer}","send_time":1,"origin":3,"msgtype":"text","text":{{"content":"x"}}}}"#
        );
        NewMessage {
            msgid: msgid.into(),
            external_userid: customer.into(),
            send_time: 1,
            origin: Some(3),
            kind: "text".into(),
            payload: Payload::Raw(Arc::from(raw)),
            decode_error: None,
        }
    }

    fn page(msgids: &[&str], cursor: &str) -> PageWrite {
        PageWrite {
            open_kfid: "wk1".into(),
            messages: msgids.iter().map(|m| message(m, "wm1")).collect(),
            next_cursor: Some(cursor.into()),
            now_ms: 1000,
            skip_before: None,
            catch_up_before: None,
            turns: Default::default(),
            actions: Vec::new(),
        }
    }

    fn reply(msgid: &str, lane: &str) -> NewReply {
        NewReply {
            endpoint: ReplyEndpoint::SendMsg,
            lane: lane.into(),
            body: "{}".into(),
            msgid: msgid.into(),
            delivery_id: None,
            position: None,
            hold_ms: 0,
            error: None,
            result: None,
        }
    }

    #[tokio::test]
    async fn a_page_and_its_cursor_commit_together_and_msgids_are_stored_once() {
        let store = SqliteStore::open(":memory:", Synchronous::Normal).unwrap();
        let first = store.commit_page(page(&["a", "b"], "c1")).await.unwrap();
        assert_eq!(first.stored.len(), 2);
        assert!(first.stored[0].seq < first.stored[1].seq);
        let again = store.commit_page(page(&["b", "c"], "c2")).await.unwrap();
        assert_eq!(again.stored.len(), 1);
        assert_eq!(again.duplicates, 1);
        assert_eq!(
            store.accounts().await.unwrap(),
            vec![AccountCursor {
                open_kfid: "wk1".into(),
                cursor: Some("c2".to_owned()),
                catch_up_before: None,
            }]
        );
        let pending = store.pending_messages(0, 10).await.unwrap();
        assert_eq!(pending.len(), 3);
        store.close().await;
    }

    #[tokio::test]
    async fn acknowledged_messages_leave_the_pending_set_and_replies_are_queued() {
        let store = SqliteStore::open(":memory:", Synchronous::Normal).unwrap();
        let out = store.commit_page(page(&["a", "b"], "c1")).await.unwrap();
        let seqs: Vec<i64> = out.stored.iter().map(|m| m.seq).collect();
        let record = DeliveryRecord {
            id: "d1".into(),
            seqs: seqs.clone(),
            attempts: 0,
            next_attempt_at_ms: 0,
            last_error: None,
        };
        store
            .begin_deliveries(vec![record.clone()], 1)
            .await
            .unwrap();
        assert_eq!(store.open_deliveries().await.unwrap(), vec![record]);
        let reply = NewReply {
            delivery_id: Some("d1".into()),
            ..reply("r1", "wk1/wm1")
        };
        store
            .finish_deliveries(FinishDeliveries {
                now_ms: 2,
                acks: vec![Ack {
                    delivery_id: "d1".into(),
                    seqs,
                    replies: vec![reply],
                    reported: vec![],
                    memory: Vec::new(),
                }],
                failures: vec![],
            })
            .await
            .unwrap();
        assert!(store.pending_messages(0, 10).await.unwrap().is_empty());
        assert!(store.open_deliveries().await.unwrap().is_empty());
        let due = store.due_replies(10, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(store.purge(3).await.unwrap(), 2);
        store.close().await;
    }

    #[tokio::test]
    async fn a_retried_reply_holds_back_later_replies_of_its_lane() {
        let store = SqliteStore::open(":memory:", Synchronous::Normal).unwrap();
        store
            .finish_deliveries(FinishDeliveries {
                now_ms: 0,
                acks: vec![Ack {
                    delivery_id: "d".into(),
                    seqs: vec![],
                    replies: vec![reply("r1", "a"), reply("r2", "a"), reply("r3", "b")],
                    reported: vec![],
                    memory: Vec::new(),
                }],
                failures: vec![],
            })
            .await
            .unwrap();
        let due = store.due_replies(0, 10).await.unwrap();
        assert_eq!(due.len(), 3);
        store
            .finish_replies(
                vec![ReplyOutcome::Retry {
                    id: due[0].id,
                    lane: "a".into(),
                    attempts: 1,
                    next_attempt_at_ms: 100,
                    error: "busy".into(),
                    body: None,
                }],
                0,
            )
            .await
            .unwrap();
        let due: Vec<MsgId> = store
            .due_replies(50, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.msgid)
            .collect();
        assert_eq!(due, vec!["r3"]);
        assert_eq!(store.next_reply_due().await.unwrap(), Some(0));
        store.close().await;
    }

    #[tokio::test]
    async fn held_texts_flush_together_and_new_replies_never_overtake_pending_ones() {
        let store = SqliteStore::open(":memory:", Synchronous::Normal).unwrap();
        let queue = |now_ms: i64, replies: Vec<NewReply>| {
            store.finish_deliveries(FinishDeliveries {
                now_ms,
                acks: vec![Ack {
                    delivery_id: format!("d{now_ms}"),
                    seqs: vec![],
                    replies,
                    reported: vec![],
                    memory: Vec::new(),
                }],
                failures: vec![],
            })
        };
        let held = |msgid: &str| NewReply {
            hold_ms: 300,
            ..reply(msgid, "wk/wm")
        };
        // A text held 300 ms at t=0; another text 100 ms later joins its flush (t=300).
        queue(0, vec![held("a")]).await.unwrap();
        queue(100, vec![held("b")]).await.unwrap();
        // An image (not held) queued behind them waits for them too.
        queue(150, vec![reply("c", "wk/wm")]).await.unwrap();
        // Another customer's reply is not held back.
        queue(150, vec![reply("x", "wk/other")]).await.unwrap();
        let due = |at: i64| {
            let store = &store;
            async move {
                store
                    .due_replies(at, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.msgid)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(due(299).await, vec!["x"]);
        assert_eq!(due(300).await, vec!["a", "b", "c", "x"]);
        // After the flush, a new text starts a new window.
        store
            .finish_replies(
                ["a", "b", "c", "x"]
                    .iter()
                    .enumerate()
                    .map(|(i, _)| ReplyOutcome::Finished {
                        id: i as i64 + 1,
                        state: ReplyState::Sent,
                        error: None,
                        result: None,
                    })
                    .collect(),
                301,
            )
            .await
            .unwrap();
        queue(400, vec![held("d")]).await.unwrap();
        assert!(due(699).await.is_empty());
        assert_eq!(due(700).await, vec!["d"]);
        store.close().await;
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 1; \
                 INSERT INTO cursors VALUES ('wk1', 'c9', 1); \
                 INSERT INTO sessions VALUES ('wk1', 'wm1', 1700000000); \
                 INSERT INTO replies (endpoint, lane, body, msgid, state, next_attempt_at, created_at) \
                 VALUES ('send_msg', 'wk1/wm1', '{}', 'r1', 'sent', 0, 0);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(path.to_str().unwrap(), Synchronous::Normal).unwrap();
        let accounts = store.accounts().await.unwrap();
        assert_eq!(accounts[0].cursor.as_deref(), Some("c9"));
        assert_eq!(accounts[0].catch_up_before, None);
        assert!(
            store.reply_results(10).await.unwrap().is_empty(),
            "old replies count as reported"
        );
        assert!(
            store
                .session("wk1".into(), "wm1".into())
                .await
                .unwrap()
                .is_none()
        );
        store.close().await;
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn migrations_are_idempotent_and_refuse_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let path = path.to_str().unwrap();
        drop(SqliteStore::open(path, Synchronous::Full).unwrap());
        drop(SqliteStore::open(path, Synchronous::Normal).unwrap());
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = SqliteStore::open(path, Synchronous::Normal).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
