//! The PostgreSQL store (`tokio-postgres`), selected by a `postgres://` database URL.
//!
//! One connection, used by one transaction at a time (a mutex around the client): like the
//! SQLite store, transactions are serialized, so `seq` (a `BIGSERIAL`) increases in commit
//! order, which the deliverer relies on. Of several instances sharing a database only the
//! leader writes (see [`leader`](crate::leader)).

use std::collections::{HashMap, HashSet};

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
    // 4: whose turn it is (who wrote each item, why the bot may not answer it) and the items
    // held while a human has the session (1 held, 0 released as history).
    "
    ALTER TABLE messages ADD COLUMN author TEXT;
    ALTER TABLE messages ADD COLUMN no_reply TEXT;
    ALTER TABLE messages ADD COLUMN held SMALLINT;
    CREATE INDEX messages_held ON messages(open_kfid, external_userid) WHERE held = 1;
    CREATE INDEX sessions_last_customer ON sessions(last_customer_msg_at);
    ",
];

/// An `origin` column (BIGINT) as the library's `u32`; a value out of range is unknown.
fn origin_of(origin: Option<i64>) -> Option<u32> {
    origin.and_then(|o| u32::try_from(o).ok())
}

/// The PostgreSQL [`Store`].
pub struct PostgresStore {
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` and runs the migrations.
    pub async fn connect(url: &str) -> Result<PostgresStore, Error> {
        PostgresStore::connect_in_schema(url, None).await
    }

    /// Connects, creating and using `schema` (tests use a throwaway schema each), and runs the
    /// migrations.
    pub async fn connect_in_schema(
        url: &str,
        schema: Option<&str>,
    ) -> Result<PostgresStore, Error> {
        let (mut client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| connect_error(url, &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection closed");
            }
        });
        if let Some(schema) = schema {
            if !schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(Error::Config(format!("invalid schema name {schema:?}")));
            }
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                ))
                .await?;
        }
        migrate(&mut client).await?;
        Ok(PostgresStore {
            client: tokio::sync::Mutex::new(Some(client)),
        })
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

impl PostgresStore {
    /// Connects to read beside a running service: every transaction read-only, no migration
    /// (the schema must be this program's).
    pub async fn connect_read_only(url: &str) -> Result<PostgresStore, Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| connect_error(url, &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection closed");
            }
        });
        client
            .batch_execute("SET default_transaction_read_only = on")
            .await?;
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
        Ok(PostgresStore {
            client: tokio::sync::Mutex::new(Some(client)),
        })
    }
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
     finished_at, delivery_id FROM replies WHERE ($1::text IS NULL OR lane LIKE $1 ESCAPE '\\') \
     AND (NOT $2 OR state IN ('failed', 'refused') OR (state = 'pending' AND last_error IS NOT NULL)) \
     ORDER BY id DESC LIMIT $3";

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

macro_rules! with_client {
    ($self:ident, $client:ident, $body:expr) => {{
        let mut guard = $self.client.lock().await;
        let Some($client) = guard.as_mut() else {
            return Err(Error::StoreClosed);
        };
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
                        "SELECT open_kfid, cursor, catch_up_before FROM cursors ORDER BY open_kfid",
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

    fn add_account(&self, open_kfid: OpenKfId, now_ms: i64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                client
                    .execute(
                        "INSERT INTO cursors (open_kfid, cursor, updated_at) VALUES ($1, NULL, $2) \
                         ON CONFLICT (open_kfid) DO NOTHING",
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
                // (see [`policy::plan_page`]).
                let msgids: Vec<&str> = policy::msgids(&page)
                    .into_iter()
                    .map(MsgId::as_str)
                    .collect();
                let already_stored: HashSet<MsgId> = tx
                    .query(
                        "SELECT msgid FROM messages WHERE open_kfid = $1 AND msgid = ANY($2)",
                        &[&page.open_kfid.as_str(), &msgids],
                    )
                    .await?
                    .iter()
                    .map(|r| MsgId::from(r.get::<_, String>(0)))
                    .collect();
                let customers: Vec<&str> = policy::customers_to_observe(&page, &already_stored)
                    .into_iter()
                    .map(ExternalUserId::as_str)
                    .collect();
                let mut views = HashMap::with_capacity(customers.len());
                if !customers.is_empty() {
                    let rows = tx
                        .query(
                            "SELECT external_userid, view FROM sessions \
                             WHERE open_kfid = $1 AND external_userid = ANY($2)",
                            &[&page.open_kfid.as_str(), &customers],
                        )
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

                let n = plan.rows.len();
                let mut msgids = Vec::with_capacity(n);
                let mut customers = Vec::with_capacity(n);
                let mut send_times = Vec::with_capacity(n);
                let mut origins: Vec<Option<i64>> = Vec::with_capacity(n);
                let mut kinds = Vec::with_capacity(n);
                let mut raws = Vec::with_capacity(n);
                let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
                let mut skips: Vec<bool> = Vec::with_capacity(n);
                let mut authors: Vec<&str> = Vec::with_capacity(n);
                let mut no_replies: Vec<Option<&str>> = Vec::with_capacity(n);
                let mut helds: Vec<Option<i16>> = Vec::with_capacity(n);
                for row in &plan.rows {
                    let m = &row.message;
                    msgids.push(m.msgid.as_str());
                    customers.push(m.external_userid.as_str());
                    send_times.push(m.send_time);
                    origins.push(m.origin.map(i64::from));
                    kinds.push(m.kind.as_str());
                    raws.push(m.payload.raw());
                    errors.push(m.decode_error.as_deref());
                    skips.push(row.finished());
                    authors.push(row.turn.from.as_str());
                    no_replies.push(row.turn.stored_no_reply());
                    helds.push(row.held.then_some(1));
                }
                // One statement for the page; ordinality keeps seq in page order. No
                // `ON CONFLICT`: the plan only holds msgids the store does not have, so a
                // conflict means the read above is stale, and failing the transaction (the
                // page is pulled again) is better than committing a plan built on it.
                let rows = tx
                    .query(
                        "INSERT INTO messages (open_kfid, msgid, external_userid, send_time, origin, kind, \
                         raw, decode_error, stored_at, skipped, delivered_at, author, no_reply, held) \
                         SELECT $1, m, e, t, o, k, r, d, $9::bigint, s, CASE WHEN s THEN $9::bigint END, \
                         a, n, h FROM UNNEST($2::text[], $3::text[], $4::bigint[], \
                         $5::bigint[], $6::text[], $7::text[], $8::text[], $10::bool[], $11::text[], \
                         $12::text[], $13::smallint[]) \
                         WITH ORDINALITY AS u(m, e, t, o, k, r, d, s, a, n, h, i) \
                         ORDER BY i RETURNING seq, msgid",
                        &[
                            &plan.open_kfid.as_str(),
                            &msgids,
                            &customers,
                            &send_times,
                            &origins,
                            &kinds,
                            &raws,
                            &errors,
                            &plan.now_ms,
                            &skips,
                            &authors,
                            &no_replies,
                            &helds,
                        ],
                    )
                    .await?;
                let inserted: HashMap<String, i64> = rows
                    .iter()
                    .map(|r| (r.get::<_, String>(1), r.get::<_, i64>(0)))
                    .collect();
                let seqs = msgids
                    .iter()
                    .map(|msgid| {
                        inserted.get(*msgid).copied().ok_or_else(|| {
                            Error::Store(
                                "PostgreSQL did not return the seq of a stored message".into(),
                            )
                        })
                    })
                    .collect::<Result<Vec<i64>, Error>>()?;
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
                    tx.execute(
                        "INSERT INTO sessions (open_kfid, external_userid, last_customer_msg_at, view, updated_at) \
                         SELECT $1, e, t, v, $5 FROM UNNEST($2::text[], $3::bigint[], $4::text[]) AS u(e, t, v) \
                         ON CONFLICT (open_kfid, external_userid) DO UPDATE SET \
                         last_customer_msg_at = GREATEST(sessions.last_customer_msg_at, excluded.last_customer_msg_at), \
                         view = COALESCE(excluded.view, sessions.view), updated_at = excluded.updated_at",
                        &[&plan.open_kfid.as_str(), &customers, &times, &views, &plan.now_ms],
                    )
                    .await?;
                }
                for reply in &plan.replies {
                    insert_reply(&tx, reply, plan.now_ms).await?;
                }
                tx.execute(
                    "INSERT INTO cursors (open_kfid, cursor, updated_at, catch_up_before) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (open_kfid) DO UPDATE SET cursor = COALESCE(excluded.cursor, cursors.cursor), \
                     updated_at = excluded.updated_at, catch_up_before = excluded.catch_up_before",
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
                let open_kfid = change.open_kfid.clone();
                Ok(change.stored(open_kfid, seq, now_ms))
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
                        "SELECT seq, open_kfid, external_userid, stored_at, decode_error IS NOT NULL, \
                         author, no_reply, origin, kind, held FROM messages \
                         WHERE delivered_at IS NULL AND seq > $1 AND (held IS NULL OR held = 0) \
                         ORDER BY seq LIMIT $2",
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
                        "SELECT id, seqs, attempts, next_attempt_at, last_error FROM deliveries \
                         ORDER BY created_at, id",
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
                        "SELECT seq, raw, media FROM messages WHERE seq = ANY($1)",
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
                        "UPDATE messages SET media = u.j FROM UNNEST($1::bigint[], $2::text[]) AS u(s, j) \
                         WHERE messages.seq = u.s",
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
                        "SELECT seq, open_kfid, raw FROM messages WHERE delivered_at IS NULL \
                         AND media IS NULL AND kind = ANY($1) ORDER BY seq LIMIT $2",
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
                        "SELECT view FROM sessions WHERE open_kfid = $1 AND external_userid = $2",
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
                        "SELECT view FROM sessions WHERE open_kfid = $1 AND external_userid = $2 FOR UPDATE",
                        &[&open_kfid.as_str(), &external_userid.as_str()],
                    )
                    .await?;
                let text: Option<String> = row.and_then(|r| r.get(0));
                let mut view = parse_view(text.as_deref());
                update.apply(&mut view);
                tx.execute(
                    "INSERT INTO sessions (open_kfid, external_userid, last_customer_msg_at, view, updated_at) \
                     VALUES ($1, $2, 0, $3, $4) ON CONFLICT (open_kfid, external_userid) DO UPDATE SET \
                     view = excluded.view, updated_at = excluded.updated_at",
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
                        "SELECT id, result FROM replies WHERE NOT reported AND result IS NOT NULL \
                         ORDER BY id LIMIT $1",
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
                for record in &records {
                    // A known delivery keeps its order (created_at) and last error.
                    tx.execute(
                        "INSERT INTO deliveries (id, seqs, attempts, next_attempt_at, last_error, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts",
                        &[
                            &record.id,
                            &encode_seqs(&record.seqs),
                            &i64::from(record.attempts),
                            &record.next_attempt_at_ms,
                            &record.last_error,
                            &now_ms,
                        ],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
    }

    fn finish_deliveries(&self, finish: FinishDeliveries) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let tx = client.transaction().await?;
                for ack in &finish.acks {
                    tx.execute(
                        "UPDATE messages SET delivered_at = $1 WHERE seq = ANY($2) AND delivered_at IS NULL",
                        &[&finish.now_ms, &ack.seqs],
                    )
                    .await?;
                    tx.execute("DELETE FROM deliveries WHERE id = $1", &[&ack.delivery_id])
                        .await?;
                    if !ack.reported.is_empty() {
                        tx.execute(
                            "UPDATE replies SET reported = TRUE WHERE id = ANY($1)",
                            &[&ack.reported],
                        )
                        .await?;
                    }
                    for reply in &ack.replies {
                        insert_reply(&tx, reply, finish.now_ms).await?;
                    }
                }
                for failure in &finish.failures {
                    tx.execute("DELETE FROM deliveries WHERE id = $1", &[&failure.old_id])
                        .await?;
                    for record in &failure.retries {
                        upsert_delivery(&tx, record, finish.now_ms).await?;
                    }
                }
                tx.commit().await?;
                Ok(())
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
                        "SELECT id, endpoint, lane, body, msgid, attempts, delivery_id, position FROM replies \
                         WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2",
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
                        "SELECT MIN(next_attempt_at) FROM replies WHERE state = 'pending'",
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
                for outcome in &outcomes {
                    match outcome {
                        ReplyOutcome::Finished {
                            id,
                            state,
                            error,
                            result,
                        } => {
                            tx.execute(
                                "UPDATE replies SET state = $2, attempts = attempts + 1, finished_at = $3, \
                                 last_error = $4, result = $5, \
                                 reported = NOT (position IS NOT NULL AND $5::text IS NOT NULL) WHERE id = $1",
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
                                "UPDATE replies SET attempts = $2, next_attempt_at = $3, last_error = $4, \
                                 body = COALESCE($5, body) WHERE id = $1",
                                &[id, &i64::from(*attempts), next_attempt_at_ms, error, body],
                            )
                            .await?;
                            tx.execute(
                                "UPDATE replies SET next_attempt_at = GREATEST(next_attempt_at, $3) \
                                 WHERE state = 'pending' AND lane = $2 AND id > $1",
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
                        "SELECT response, request_sha256 FROM api_sends WHERE key = $1 AND msgid = $2",
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
                        "INSERT INTO api_sends (key, msgid, response, request_sha256, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key, msgid) DO UPDATE SET \
                         response = excluded.response, request_sha256 = excluded.request_sha256",
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
                        "DELETE FROM callback_replays WHERE expires_at < $1",
                        &[&now],
                    )
                    .await?;
                let inserted = client
                    .execute(
                        "INSERT INTO callback_replays (key, expires_at) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING",
                        &[&key, &expires_at],
                    )
                    .await?;
                Ok(inserted == 1)
            })
        })
    }

    fn last_send_time(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(async move {
            with_client!(self, client, {
                let row = client
                    .query_one(
                        "SELECT MAX(send_time) FROM messages WHERE open_kfid = $1 AND send_time > 0",
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
                        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages \
                         WHERE delivered_at IS NOT NULL AND delivered_at < $1 LIMIT 5000)",
                        &[&before_ms],
                    )
                    .await?;
                n += tx
                    .execute(
                        "DELETE FROM replies WHERE id IN (SELECT id FROM replies \
                         WHERE state <> 'pending' AND finished_at < $1 LIMIT 5000)",
                        &[&before_ms],
                    )
                    .await?;
                n += tx
                    .execute("DELETE FROM api_sends WHERE created_at < $1", &[&before_ms])
                    .await?;
                n += tx
                    .execute(
                        "DELETE FROM sessions WHERE (open_kfid, external_userid) IN \
                         (SELECT open_kfid, external_userid FROM sessions \
                         WHERE updated_at < $1 AND last_customer_msg_at * 1000 < $1 LIMIT 5000)",
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
                        "SELECT (SELECT COUNT(*) FROM messages), \
                         (SELECT COUNT(*) FROM messages WHERE delivered_at IS NULL), \
                         (SELECT COUNT(*) FROM deliveries), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'pending'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'sent'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'failed'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'refused'), \
                         (SELECT COUNT(*) FROM replies WHERE state = 'joined'), \
                         (SELECT COUNT(*) FROM messages WHERE skipped), \
                         (SELECT COUNT(*) FROM sessions WHERE view IS NOT NULL)",
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
                        "SELECT msgid, delivered_at IS NOT NULL FROM messages WHERE open_kfid = $1 ORDER BY seq",
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
                        "SELECT msgid, send_time, delivered_at IS NOT NULL, skipped, media FROM messages \
                         WHERE open_kfid = $1 ORDER BY seq",
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
                    .query(LIST_MESSAGES, &[&kf, &customer, &query.failed, &limit])
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
                    .query(LIST_DELIVERIES, &[&kf, &customer, &query.failed, &limit])
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let seqs = decode_seqs(&r.get::<_, String>(1));
                    let members = client
                        .query(
                            "SELECT seq, msgid, open_kfid, external_userid FROM messages \
                             WHERE seq = ANY($1)",
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
                    .query(LIST_SENDS, &[&pattern, &query.failed, &limit])
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

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Waits for the transaction in progress (it holds the lock), then drops the client.
            drop(self.client.lock().await.take());
        })
    }
}

async fn insert_reply(
    tx: &tokio_postgres::Transaction<'_>,
    reply: &NewReply,
    now_ms: i64,
) -> Result<(), Error> {
    let failed = reply.error.is_some();
    let state = if failed { "failed" } else { "pending" };
    let finished = failed.then_some(now_ms);
    let position = reply.position.map(i64::from);
    // A new reply never overtakes a pending one of its lane (order), and joins the flush of a
    // held text when there is one (the joiner's window).
    let next_attempt_at: i64 = if failed {
        now_ms
    } else {
        let row = tx
            .query_one(
                "SELECT MAX(next_attempt_at) FROM replies WHERE lane = $1 AND state = 'pending' \
                 AND next_attempt_at >= $2",
                &[&reply.lane, &now_ms],
            )
            .await?;
        row.get::<_, Option<i64>>(0)
            .unwrap_or(now_ms + reply.hold_ms.max(0))
    };
    let reported = !(position.is_some() && reply.result.is_some());
    tx.execute(
        "INSERT INTO replies (delivery_id, endpoint, lane, body, msgid, state, attempts, \
         next_attempt_at, last_error, created_at, finished_at, position, result, reported) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &reply.delivery_id,
            &reply.endpoint.as_str(),
            &reply.lane,
            &reply.body,
            &reply.msgid.as_str(),
            &state,
            &next_attempt_at,
            &reply.error,
            &now_ms,
            &finished,
            &position,
            &reply.result,
            &reported,
        ],
    )
    .await?;
    Ok(())
}

async fn upsert_delivery(
    tx: &tokio_postgres::Transaction<'_>,
    record: &DeliveryRecord,
    now_ms: i64,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO deliveries (id, seqs, attempts, next_attempt_at, last_error, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET seqs = excluded.seqs, \
         attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, \
         last_error = excluded.last_error",
        &[
            &record.id,
            &encode_seqs(&record.seqs),
            &i64::from(record.attempts),
            &record.next_attempt_at_ms,
            &record.last_error,
            &now_ms,
        ],
    )
    .await?;
    Ok(())
}
