//! Durable state: messages (unique per account and msgid), cursors, deliveries in flight or
//! waiting for a retry, replies to send and their results, reply-API idempotency records and one
//! [`SessionView`] per customer (the send policy of `wechat_kf::session`).
//!
//! [`Store`] is object-safe and asynchronous so that backends with different threading models fit
//! behind it: [`SqliteStore`] runs one connection on a dedicated thread; [`PostgresStore`] uses
//! `tokio-postgres`. Each method is one transaction, which is what makes the service crash-safe:
//! a page's messages and its cursor are committed together or not at all, and so are a
//! delivery's acknowledgement and the replies it carried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wechat_kf::message::Message;
use wechat_kf::session::{SendRefusal, ServiceState, SessionView};
use wechat_kf::{ExternalUserId, MsgId, OpenKfId, UserId};

use crate::error::Error;

mod policy;
mod postgres;
mod sqlite;
mod turn;

pub use policy::is_skipped;
pub use postgres::PostgresStore;
pub(crate) use postgres::connect_error;
pub use sqlite::SqliteStore;
pub use turn::{Author, NoReply, SURVEY_MENU_PREFIX, Turn, WhileHuman, is_survey_answer};

/// A boxed, sendable future (the trait must stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The ordering scope of delivery: one customer of one account. Messages without a customer
/// (e.g. `servicer_status_change`) use the empty `external_userid`, one lane per account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    /// The account.
    pub open_kfid: OpenKfId,
    /// The customer, or empty.
    pub external_userid: ExternalUserId,
}

impl Lane {
    /// A lane.
    pub fn new(open_kfid: impl Into<OpenKfId>, external_userid: impl Into<ExternalUserId>) -> Self {
        Lane {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
        }
    }
}

/// A message's original JSON, either inside a decoded [`Message`] (sharing its page's buffer)
/// or as text (items that did not decode, rows read back from the store).
#[derive(Debug, Clone)]
pub enum Payload {
    /// A decoded message.
    Message(Message),
    /// Raw JSON text.
    Raw(Arc<str>),
}

impl Payload {
    /// The original JSON.
    pub fn raw(&self) -> &str {
        match self {
            Payload::Message(m) => m.raw(),
            Payload::Raw(r) => r,
        }
    }
}

/// One pulled item to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The msgid (a synthetic `invalid:<sha256>` for an undecodable item without one).
    pub msgid: MsgId,
    /// The customer, or empty.
    pub external_userid: ExternalUserId,
    /// `send_time` (unix seconds), 0 when unknown.
    pub send_time: i64,
    /// `origin`, when known.
    pub origin: Option<u32>,
    /// [`Message::kind`], or `invalid:<msgtype>`.
    pub kind: String,
    /// The JSON.
    pub payload: Payload,
    /// Why the library could not decode it, for undecodable items.
    pub decode_error: Option<String>,
}

/// A page to commit: its messages and the cursor after it, in one transaction.
#[derive(Debug)]
pub struct PageWrite {
    /// The account pulled.
    pub open_kfid: OpenKfId,
    /// The page's items, in server order.
    pub messages: Vec<NewMessage>,
    /// The new cursor; `None` keeps the old one (the server sent none).
    pub next_cursor: Option<String>,
    /// Now, unix milliseconds.
    pub now_ms: i64,
    /// Messages sent before this unix second are stored *skipped*: kept (msgid
    /// de-duplication, session tracking) and marked finished, never delivered. The first-start
    /// policy; `None` skips nothing.
    pub skip_before: Option<i64>,
    /// The catch-up remembered with the cursor: `Some(t)` while a first-start catch-up has
    /// pages left (a restart goes on skipping before `t`), `None` otherwise.
    pub catch_up_before: Option<i64>,
    /// Replies (handoffs) queued only when the message with this msgid is newly stored and not
    /// skipped.
    pub actions: Vec<(MsgId, NewReply)>,
    /// How the bot's turn is decided for the page's items.
    pub turns: TurnRules,
}

/// How [`Turn`]s are decided when a page is committed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnRules {
    /// WeChat's clock, unix seconds: a customer message the bot could no longer answer now
    /// (the 48-hour window closed) is marked so. `None` decides by the session state only.
    pub now_secs: Option<u64>,
    /// What happens to the items of a session a human holds.
    pub while_human: WhileHuman,
}

/// A stored, not yet acknowledged message as the deliverer sees it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Insertion order: increases with every stored message, never reused.
    pub seq: i64,
    /// Its ordering lane.
    pub lane: Lane,
    /// When it was stored, unix milliseconds.
    pub stored_at_ms: i64,
    /// Whether the library could not decode it.
    pub invalid: bool,
    /// Its JSON, when at hand (read back from the store otherwise).
    pub payload: Option<Payload>,
    /// What the media download found (`media` of the webhook body), when at hand.
    pub media: Option<Arc<str>>,
    /// Who wrote it and whether the bot may answer.
    pub turn: Turn,
    /// What kind of item it is.
    pub item: ItemKind,
}

/// What a stored row is: one of WeChat's items, or a session change the service recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// An item of `sync_msg`, as WeChat sent it.
    Message,
    /// A message that was held while a human had the session and is delivered afterwards as
    /// history (`conversation.while_human = "hold"`).
    History,
    /// A change of the session's state (its JSON is the service's own, see
    /// [`SessionChange`]).
    Session,
}

impl ItemKind {
    /// The kind of a stored row, from its `kind` and `held` columns.
    pub fn of_row(kind: &str, held: Option<i64>) -> ItemKind {
        if kind == SESSION_KIND {
            ItemKind::Session
        } else if held == Some(0) {
            ItemKind::History
        } else {
            ItemKind::Message
        }
    }
}

impl SessionChange {
    /// The stored row of a change the service made: a unique msgid (no item of WeChat caused
    /// it), the change's JSON as its payload.
    pub(crate) fn row(&self, msgid: MsgId) -> NewMessage {
        NewMessage {
            msgid,
            external_userid: self.external_userid.clone(),
            send_time: self.at,
            origin: None,
            kind: SESSION_KIND.to_owned(),
            payload: Payload::Raw(Arc::from(serde_json::to_string(self).unwrap_or_default())),
            decode_error: None,
        }
    }

    /// The [`StoredMessage`] of its `row` (from [`row`](Self::row)) once stored as `seq`.
    pub(crate) fn into_stored(self, row: NewMessage, seq: i64, now_ms: i64) -> StoredMessage {
        StoredMessage {
            seq,
            lane: Lane {
                open_kfid: self.open_kfid,
                external_userid: row.external_userid,
            },
            stored_at_ms: now_ms,
            invalid: false,
            payload: Some(row.payload),
            media: None,
            turn: Turn::SYSTEM,
            item: ItemKind::Session,
        }
    }
}

/// A customer of an account with the view of their session.
pub type CustomerView = (OpenKfId, ExternalUserId, SessionView);

/// The `kind` of the rows that record a change of a session's state.
pub const SESSION_KIND: &str = "session";

/// A change of a customer's session state, delivered in order with the messages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionChange {
    /// The account.
    pub open_kfid: OpenKfId,
    /// The customer.
    pub external_userid: ExternalUserId,
    /// The state before (`service_state`), when it was known.
    pub old_state: Option<u32>,
    /// The state after.
    pub new_state: u32,
    /// The servicer holding the session after the change (state 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicer_userid: Option<UserId>,
    /// What changed it: `customer_message`, `servicer_message`, `enter_session`,
    /// `session_status_change`, `msg_send_fail`, `event`, or `transfer` (this service's own
    /// `service_state/trans`).
    pub trigger: &'static str,
    /// The `change_type` of a `session_status_change` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_type: Option<u32>,
    /// Who asked for a transfer the service made (`trigger` `transfer`): `keyword`, `bot`
    /// (webhook reply or reply API), `idle` (the idle rule) or `console`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'static str>,
    /// The msgid of the item that caused it (none for a transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause_msgid: Option<MsgId>,
    /// When, unix seconds (WeChat's clock).
    pub at: i64,
}

/// What [`Store::commit_page`] did.
#[derive(Debug, Default)]
pub struct PageOutcome {
    /// Newly stored messages to deliver, in order.
    pub stored: Vec<StoredMessage>,
    /// Newly stored messages that were skipped (first-start policy).
    pub skipped: usize,
    /// Items whose msgid was already stored.
    pub duplicates: usize,
}

/// A message's JSON read back for delivery, with its media record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPayload {
    /// Its seq.
    pub seq: i64,
    /// The original JSON.
    pub raw: String,
    /// The media record, when media was downloaded (or failed to be).
    pub media: Option<String>,
}

/// A stored message as tests and diagnostics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// The msgid.
    pub msgid: MsgId,
    /// Its `send_time`.
    pub send_time: i64,
    /// Acknowledged by the bot, or skipped.
    pub delivered: bool,
    /// Skipped by the first-start policy (never delivered).
    pub skipped: bool,
    /// The media record.
    pub media: Option<String>,
}

/// A message whose media still has to be downloaded (after a crash between the page commit and
/// the download).
#[derive(Debug, Clone)]
pub struct MediaJob {
    /// Its seq.
    pub seq: i64,
    /// The account.
    pub open_kfid: OpenKfId,
    /// The original JSON.
    pub raw: String,
}

/// An account, its committed cursor and an unfinished first-start catch-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCursor {
    /// The account.
    pub open_kfid: OpenKfId,
    /// The committed cursor (`None` before the first page).
    pub cursor: Option<String>,
    /// Set while a first-start catch-up is unfinished: messages sent before this unix second
    /// are skipped.
    pub catch_up_before: Option<i64>,
}

/// A delivery: a set of messages sent to the bot together under one stable id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The delivery id (the `X-Wechat-Kf-Delivery` header).
    pub id: String,
    /// The messages, by seq, in order.
    pub seqs: Vec<i64>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the next attempt is due, unix milliseconds.
    pub next_attempt_at_ms: i64,
    /// What went wrong last.
    pub last_error: Option<String>,
}

/// What the operator listings (`wechat-kf store …`, `GET /v1/messages` …) select, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this account.
    pub open_kfid: Option<OpenKfId>,
    /// Only this customer.
    pub external_userid: Option<ExternalUserId>,
    /// Only what went wrong (see each listing).
    pub failed: bool,
    /// At most this many rows.
    pub limit: usize,
}

impl ListQuery {
    /// The `LIKE` pattern (escape `\`) of a reply lane `<open_kfid>/<customer>` for this query
    /// (`None`: every lane).
    pub(crate) fn lane_pattern(&self) -> Option<String> {
        fn escape(s: &str) -> String {
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        }
        if self.open_kfid.is_none() && self.external_userid.is_none() {
            return None;
        }
        let kf = self
            .open_kfid
            .as_ref()
            .map_or("%".into(), |k| escape(k.as_str()));
        let customer = self
            .external_userid
            .as_ref()
            .map_or("%".into(), |c| escape(c.as_str()));
        Some(format!("{kf}/{customer}"))
    }
}

/// A stored message as the operator listing shows it: ids and state, never its content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct MessageListing {
    /// Insertion order.
    pub seq: i64,
    /// The account.
    #[schema(value_type = String)]
    pub open_kfid: OpenKfId,
    /// The customer (empty for events without one).
    #[schema(value_type = String)]
    pub external_userid: ExternalUserId,
    /// The msgid.
    #[schema(value_type = String)]
    pub msgid: MsgId,
    /// The message type (`text`, `event:enter_session`, `invalid:<msgtype>`, ...).
    pub kind: String,
    /// WeChat's `send_time` (unix seconds).
    pub send_time: i64,
    /// When it was stored (unix milliseconds).
    pub stored_at_ms: i64,
    /// `pending` (not yet acknowledged by the bot), `delivered` or `skipped` (first-start
    /// policy: stored, never delivered).
    pub state: String,
    /// When the bot acknowledged it (or it was skipped), unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<i64>,
    /// Why the library could not decode it, for an undecodable item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
    /// Whether media was downloaded for it (or failed to be).
    pub media: bool,
    /// The delivery it is in, while pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// Attempts of that delivery so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Why that delivery's last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A delivery in flight or waiting for a retry, as the operator listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryListing {
    /// The delivery id (`X-Wechat-Kf-Delivery`).
    pub id: String,
    /// Attempts made so far (the `X-Wechat-Kf-Attempt` of the last one).
    pub attempts: u32,
    /// When the next attempt is due (unix milliseconds).
    pub next_attempt_at_ms: i64,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was formed (unix milliseconds).
    pub created_at_ms: i64,
    /// Its messages' msgids, in order (those still stored).
    #[schema(value_type = Vec<String>)]
    pub msgids: Vec<MsgId>,
    /// Its customers, `<open_kfid>/<external_userid>`.
    pub customers: Vec<String>,
}

/// A queued reply (from a webhook response, the echo bot or a handoff) as the operator listing
/// shows it: ids and state, never its content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SendListing {
    /// Queue order.
    pub id: i64,
    /// `send_msg`, `send_msg_on_event` or `service_state/trans`.
    pub endpoint: String,
    /// `<open_kfid>/<customer>`, or `code:<code>`.
    pub lane: String,
    /// Its msgid.
    #[schema(value_type = String)]
    pub msgid: MsgId,
    /// `pending`, `sent`, `failed`, `refused` or `joined`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Why it failed, was refused, or is being retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was queued (unix milliseconds).
    pub created_at_ms: i64,
    /// When it finished (unix milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// The delivery whose webhook response carried it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// When the next attempt is due, while pending (unix milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<i64>,
}

/// A customer's conversation as the console's list shows it: the last stored message and the
/// session view (`GET /v1/conversations`).
#[derive(Debug, Clone)]
pub struct ConversationRow {
    /// The account.
    pub open_kfid: OpenKfId,
    /// The customer.
    pub external_userid: ExternalUserId,
    /// The last stored message (the highest seq).
    pub last: HistoryMessage,
    /// How many messages of this customer are stored.
    pub messages: u32,
    /// The customer's session view, when one is kept.
    pub view: Option<SessionView>,
}

/// One stored message of a conversation, with its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMessage {
    /// Insertion order.
    pub seq: i64,
    /// The msgid.
    pub msgid: MsgId,
    /// WeChat's `send_time` (unix seconds).
    pub send_time: i64,
    /// `origin` (3 customer, 4 system, 5 servicer), when known.
    pub origin: Option<u32>,
    /// The message type (`text`, `event:enter_session`, ...).
    pub kind: String,
    /// The original JSON.
    pub raw: String,
    /// `pending`, `delivered` or `skipped`.
    pub state: String,
    /// The media record, when media was downloaded (or failed to be).
    pub media: Option<String>,
}

/// One queued reply to a customer (from a webhook response, the echo bot or a handoff), with
/// its body and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryReply {
    /// Queue order.
    pub id: i64,
    /// `send_msg` or `service_state/trans`.
    pub endpoint: String,
    /// Its msgid.
    pub msgid: MsgId,
    /// The request body (JSON).
    pub body: String,
    /// `pending`, `sent`, `failed`, `refused` or `joined`.
    pub state: String,
    /// Why it failed, was refused, or is being retried.
    pub last_error: Option<String>,
    /// The result reported to the bot (JSON), once finished.
    pub result: Option<String>,
    /// When it was queued (unix milliseconds).
    pub created_at_ms: i64,
    /// When it finished (unix milliseconds).
    pub finished_at_ms: Option<i64>,
}

/// A conversation's history: its stored messages and the replies queued to the customer, each
/// oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Stored messages (customer, servicer, system), by seq.
    pub messages: Vec<HistoryMessage>,
    /// Replies queued to the customer, by queue order.
    pub replies: Vec<HistoryReply>,
}

/// Which endpoint a queued reply goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyEndpoint {
    /// `kf/send_msg`.
    SendMsg,
    /// `kf/send_msg_on_event`.
    SendMsgOnEvent,
    /// `kf/service_state/trans` (a handoff: keyword, or asked for by the bot).
    Trans,
}

impl ReplyEndpoint {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyEndpoint::SendMsg => "send_msg",
            ReplyEndpoint::SendMsgOnEvent => "send_msg_on_event",
            ReplyEndpoint::Trans => "service_state/trans",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "send_msg" => Some(ReplyEndpoint::SendMsg),
            "send_msg_on_event" => Some(ReplyEndpoint::SendMsgOnEvent),
            "service_state/trans" => Some(ReplyEndpoint::Trans),
            _ => None,
        }
    }
}

/// A reply to queue (from a webhook response, the echo bot or a keyword handoff).
#[derive(Debug, Clone)]
pub struct NewReply {
    /// The endpoint.
    pub endpoint: ReplyEndpoint,
    /// The ordering key: `open_kfid/touser`, or `code:<code>`.
    pub lane: String,
    /// The request body (JSON, with `msgid` filled in).
    pub body: String,
    /// The msgid used for idempotency.
    pub msgid: MsgId,
    /// The delivery whose response carried it.
    pub delivery_id: Option<String>,
    /// Its index in the webhook response's `replies`; only replies with a position have their
    /// result reported to the bot (`reply_results`).
    pub position: Option<u32>,
    /// How long it waits for more texts to join (the joiner's window), milliseconds.
    pub hold_ms: i64,
    /// Set when the reply is unusable: it is stored as failed right away.
    pub error: Option<String>,
    /// The result reported to the bot for a reply stored as failed right away.
    pub result: Option<String>,
}

/// A send made outside the queue, as [`Store::record_finished_reply`] records it.
#[derive(Debug, Clone)]
pub struct FinishedReply {
    /// The endpoint.
    pub endpoint: ReplyEndpoint,
    /// `open_kfid/touser`.
    pub lane: String,
    /// The request body (JSON).
    pub body: String,
    /// Its msgid.
    pub msgid: MsgId,
    /// How it ended.
    pub state: ReplyState,
    /// Why it failed or was refused (errcode and message; never content).
    pub error: Option<String>,
    /// The result (JSON).
    pub result: Option<String>,
}

/// A queued reply read back for sending.
#[derive(Debug, Clone)]
pub struct ReplyRecord {
    /// Row id (queue order).
    pub id: i64,
    /// The endpoint.
    pub endpoint: ReplyEndpoint,
    /// The ordering key.
    pub lane: String,
    /// The request body.
    pub body: String,
    /// Its msgid.
    pub msgid: MsgId,
    /// Attempts so far.
    pub attempts: u32,
    /// The delivery whose response carried it.
    pub delivery_id: Option<String>,
    /// Its index in that response's `replies`.
    pub position: Option<u32>,
}

/// How a queued reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyState {
    /// Accepted by WeChat.
    Sent,
    /// Rejected for good (WeChat's answer, or an unusable reply).
    Failed,
    /// Not sent: the send policy refused it (a human holds the session, the 48-hour window
    /// closed, the quota is spent), predicted by the service or answered by WeChat.
    Refused,
    /// Merged into the reply named by its result's `joined_into` (the joiner).
    Joined,
}

impl ReplyState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyState::Sent => "sent",
            ReplyState::Failed => "failed",
            ReplyState::Refused => "refused",
            ReplyState::Joined => "joined",
        }
    }
}

/// The result of sending a queued reply.
#[derive(Debug, Clone)]
pub enum ReplyOutcome {
    /// Done: sent, failed, refused or joined.
    Finished {
        /// Row id.
        id: i64,
        /// How it ended.
        state: ReplyState,
        /// Why it failed or was refused (errcode and message; never content).
        error: Option<String>,
        /// The result object reported to the bot (JSON).
        result: Option<String>,
    },
    /// Try again later; later replies of the same lane wait too.
    Retry {
        /// Row id.
        id: i64,
        /// Its lane.
        lane: String,
        /// Attempts so far.
        attempts: u32,
        /// When to try again, unix milliseconds.
        next_attempt_at_ms: i64,
        /// Why.
        error: String,
        /// A new body (texts joined into this reply), if it changed.
        body: Option<String>,
    },
}

/// The acknowledgement of a delivery.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The delivery.
    pub delivery_id: String,
    /// Its messages.
    pub seqs: Vec<i64>,
    /// Replies carried by the response (and echo replies).
    pub replies: Vec<NewReply>,
    /// Reply results the delivery carried (`reply_results`): now reported.
    pub reported: Vec<i64>,
    /// What the responder remembers of the delivery's conversations (written with the
    /// acknowledgement, so an answer and its memory are one commit).
    pub memory: Vec<MemoryWrite>,
}

/// Who a remembered entry of a conversation is from (the responder's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRole {
    /// The customer.
    Customer,
    /// A human servicer (context for the model).
    Servicer,
    /// The responder's own answer (or what it did: a handover, an end).
    Assistant,
    /// Dify's `conversation_id` for this customer (not a message).
    Conversation,
}

impl MemoryRole {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryRole::Customer => "customer",
            MemoryRole::Servicer => "servicer",
            MemoryRole::Assistant => "assistant",
            MemoryRole::Conversation => "conversation",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(MemoryRole::Customer),
            "servicer" => Some(MemoryRole::Servicer),
            "assistant" => Some(MemoryRole::Assistant),
            "conversation" => Some(MemoryRole::Conversation),
            _ => None,
        }
    }
}

/// One remembered entry of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryEntry {
    /// Who it is from.
    pub role: MemoryRole,
    /// The text (for [`MemoryRole::Conversation`], Dify's id).
    pub content: String,
    /// When it was written, unix milliseconds.
    pub at_ms: i64,
}

/// A change to a conversation's memory, made in a delivery's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryWrite {
    /// Adds an entry; the oldest beyond [`MEMORY_KEPT`] for the pair are dropped.
    Append {
        /// The account.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
        /// The entry.
        entry: MemoryEntry,
    },
    /// Forgets the pair's conversation (the session ended).
    Clear {
        /// The account.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
    },
}

/// Most memory entries kept per (account, customer); what a prompt uses is bounded further
/// by `responder.memory`.
pub const MEMORY_KEPT: usize = 200;

/// A change to a customer's [`SessionView`] that is not a pulled message.
#[derive(Debug, Clone)]
pub enum SessionUpdate {
    /// WeChat accepted a `send_msg` at `at` (unix seconds).
    Sent {
        /// When.
        at: u64,
    },
    /// WeChat refused a send with a session errcode (95001, 95002, 95018, 95024).
    Refused {
        /// The refusal.
        refusal: SendRefusal,
        /// When.
        at: u64,
    },
    /// Our own successful `service_state/trans`.
    Transferred {
        /// The new state.
        state: ServiceState,
        /// The servicer, for state 3.
        servicer: Option<UserId>,
        /// The code the call returned.
        msg_code: Option<String>,
        /// When.
        at: u64,
    },
    /// A `service_state/get` answer (authoritative).
    State {
        /// The state.
        state: ServiceState,
        /// The servicer, for state 3.
        servicer: Option<UserId>,
        /// When.
        at: u64,
    },
    /// A code was used with `send_msg_on_event`.
    CodeUsed {
        /// The code.
        code: String,
        /// When.
        at: u64,
    },
}

impl SessionUpdate {
    /// Applies the update to a view.
    pub fn apply(&self, view: &mut SessionView) {
        match self {
            SessionUpdate::Sent { at } => view.record_send(*at),
            SessionUpdate::Refused { refusal, at } => view.observe_refusal(refusal, *at),
            SessionUpdate::Transferred {
                state,
                servicer,
                msg_code,
                at,
            } => view.observe_trans(*state, servicer.clone(), msg_code.as_deref(), *at),
            SessionUpdate::State {
                state,
                servicer,
                at,
            } => view.observe_state(*state, servicer.clone(), *at),
            SessionUpdate::CodeUsed { code, at } => view.record_code_used(code, *at),
        }
    }
}

/// Reads a stored view; an unreadable one (a newer version's, damaged) counts as unknown.
pub(crate) fn parse_view(text: Option<&str>) -> SessionView {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// A view as stored.
pub(crate) fn encode_view(view: &SessionView) -> String {
    serde_json::to_string(view).unwrap_or_else(|_| "{}".into())
}

/// A reply-API send as recorded for idempotency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSend {
    /// The answer given (JSON), replayed to a repeat.
    pub response: String,
    /// SHA-256 (hex) of the request as sent to WeChat: a repeat with the same msgid but another
    /// body or recipient is refused. `None` for records from before it was kept.
    pub request_sha256: Option<String>,
}

/// A failed delivery: `old_id` is replaced by `retries` (the same id for a one-customer
/// delivery; one per customer when a delivery spanning several customers failed).
#[derive(Debug, Clone)]
pub struct Failure {
    /// The delivery that failed.
    pub old_id: String,
    /// What replaces it.
    pub retries: Vec<DeliveryRecord>,
}

/// Acknowledgements and failures written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct FinishDeliveries {
    /// Now, unix milliseconds.
    pub now_ms: i64,
    /// Acknowledged deliveries.
    pub acks: Vec<Ack>,
    /// Failed deliveries.
    pub failures: Vec<Failure>,
}

/// Row counts, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored messages.
    pub messages: u64,
    /// Stored messages not yet acknowledged.
    pub pending: u64,
    /// Deliveries in flight or waiting for a retry.
    pub deliveries: u64,
    /// Replies waiting to be sent.
    pub replies_pending: u64,
    /// Replies sent.
    pub replies_sent: u64,
    /// Replies failed for good.
    pub replies_failed: u64,
    /// Replies refused by the send policy.
    pub replies_refused: u64,
    /// Replies joined into another.
    pub replies_joined: u64,
    /// Messages skipped by the first-start policy.
    pub skipped: u64,
    /// Customers with a session view.
    pub sessions: u64,
}

/// The service's durable state. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Checks that the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Every known account with its committed cursor (`None` before the first page) and an
    /// unfinished catch-up.
    fn accounts(&self) -> BoxFuture<'_, Result<Vec<AccountCursor>, Error>>;

    /// Makes this instance the store's only page writer, before it scans for what the last run
    /// left: waits for page commits of a previous writer still in flight (so the scan sees
    /// them, whatever their seq) and makes that writer's later page commits fail. The leader
    /// calls it once after taking the lock; SQLite needs nothing (one process, one connection).
    fn fence(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Remembers an account (so it is pulled after a restart); keeps an existing cursor.
    fn add_account(&self, open_kfid: OpenKfId, now_ms: i64) -> BoxFuture<'_, Result<(), Error>>;

    /// Stores a page's new messages (msgids already stored are ignored), feeds them to their
    /// customers' session views, queues the actions of new messages and stores the cursor, in
    /// one transaction. What it writes is decided by one pure function both backends call (the
    /// page-commit policy, `store/policy.rs`); the backends only read and write.
    fn commit_page(&self, page: PageWrite) -> BoxFuture<'_, Result<PageOutcome, Error>>;

    /// The sessions whose customer last wrote between `since` and `until` (unix seconds,
    /// WeChat's clock), at most `limit`, with their views: where the idle rule looks.
    fn sessions_last_written_between(
        &self,
        since: i64,
        until: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CustomerView>, Error>>;

    /// A customer's last `limit` stored items, newest first: (`kind`, raw JSON).
    fn recent_messages(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>, Error>>;

    /// Stores a change of a session's state the service made itself (a transfer: WeChat sends
    /// no event for those), as a row of `kind` `session` that is delivered in order with the
    /// customer's messages; returns it for the deliverer.
    fn record_session_change(
        &self,
        change: SessionChange,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<StoredMessage, Error>>;

    /// Stored, unacknowledged messages with `seq > after_seq`, in seq order (no payloads).
    fn pending_messages(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>>;

    /// Deliveries in flight or waiting for a retry when the service stopped.
    fn open_deliveries(&self) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, Error>>;

    /// The JSON and media record of messages by seq (those still stored).
    fn load_payloads(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<LoadedPayload>, Error>>;

    /// Stores media records (`seq`, JSON).
    fn record_media(&self, media: Vec<(i64, String)>) -> BoxFuture<'_, Result<(), Error>>;

    /// Undelivered messages of these msgtypes without a media record, in seq order.
    fn messages_without_media(
        &self,
        msgtypes: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<MediaJob>, Error>>;

    /// A customer's session view, if the store has one.
    fn session(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
    ) -> BoxFuture<'_, Result<Option<SessionView>, Error>>;

    /// Applies `update` to a customer's session view (created when missing) in one transaction;
    /// returns the new view.
    fn update_session(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        update: SessionUpdate,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<SessionView, Error>>;

    /// Results of finished replies not yet reported to the bot, oldest first: (row id, JSON).
    fn reply_results(&self, limit: usize) -> BoxFuture<'_, Result<Vec<(i64, String)>, Error>>;

    /// Records deliveries before an attempt, with `attempts` counting the attempt about to be
    /// made: new ones are inserted (so their ids survive a restart), known ones get their
    /// attempt count (so a redelivery after a crash carries the attempt number it really is).
    fn begin_deliveries(
        &self,
        records: Vec<DeliveryRecord>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// Marks acknowledged messages delivered (queueing their replies) and reschedules failed
    /// deliveries, in one transaction.
    fn finish_deliveries(&self, finish: FinishDeliveries) -> BoxFuture<'_, Result<(), Error>>;

    /// The last `limit` memory entries of an (account, customer) pair, oldest first.
    fn memory(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<MemoryEntry>, Error>>;

    /// Queued replies due at `now_ms`, in queue order.
    fn due_replies(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ReplyRecord>, Error>>;

    /// When the earliest queued reply is due.
    fn next_reply_due(&self) -> BoxFuture<'_, Result<Option<i64>, Error>>;

    /// Records the results of sending replies.
    fn finish_replies(
        &self,
        outcomes: Vec<ReplyOutcome>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// The stored record of a reply-API send with this idempotency key and msgid.
    fn api_send(&self, key: String, msgid: MsgId) -> BoxFuture<'_, Result<Option<ApiSend>, Error>>;

    /// Stores the response of a successful reply-API send and the fingerprint of its request.
    fn record_api_send(
        &self,
        key: String,
        msgid: MsgId,
        record: ApiSend,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// Remembers a callback by `key` until `expires_at` (unix seconds on WeChat's clock);
    /// returns `false` when it was seen before and has not expired (a replay). Expired keys
    /// are deleted as it goes, so the table holds one timestamp window of callbacks. Shared by
    /// every instance on the same database.
    fn first_callback(
        &self,
        key: String,
        expires_at: i64,
        now: i64,
    ) -> BoxFuture<'_, Result<bool, Error>>;

    /// Up to `limit` callbacks remembered by [`Store::first_callback`] that have not expired at
    /// `now`, as `(key, expires_at)`: what a starting instance's in-memory replay cache is
    /// filled with.
    fn remembered_callbacks(
        &self,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, Error>>;

    /// The newest `send_time` stored for an account (`None` without messages): where a
    /// catch-up resumes when WeChat rejects the cursor.
    fn last_send_time(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Option<i64>, Error>>;

    /// Deletes up to a chunk of messages delivered before `before_ms` (and finished replies and
    /// idempotency records older than that); returns how many rows went.
    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>>;

    /// Row counts.
    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, Error>>;

    /// Every stored msgid of an account with its delivery state, in seq order (tests and
    /// diagnostics).
    fn messages(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Vec<(MsgId, bool)>, Error>>;

    /// Every stored message of an account with its state, in seq order (tests and
    /// diagnostics).
    fn message_rows(&self, open_kfid: OpenKfId) -> BoxFuture<'_, Result<Vec<MessageRow>, Error>>;

    /// Stored messages, newest first; `failed`: undecodable ones, and pending ones whose
    /// delivery failed.
    fn list_messages(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<MessageListing>, Error>>;

    /// Deliveries in flight or waiting for a retry, newest first; `failed`: those whose last
    /// attempt failed.
    fn list_deliveries(
        &self,
        query: ListQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryListing>, Error>>;

    /// Queued replies, newest first; `failed`: failed or refused ones, and pending ones being
    /// retried.
    fn list_sends(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<SendListing>, Error>>;

    /// The customers with stored messages (newest activity first, at most `limit`), each with
    /// its last message and session view; one account or all.
    fn conversations(
        &self,
        open_kfid: Option<OpenKfId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ConversationRow>, Error>>;

    /// One customer's last `limit` stored messages and last `limit` queued replies, each oldest
    /// first.
    fn history(
        &self,
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        limit: usize,
    ) -> BoxFuture<'_, Result<History, Error>>;

    /// The media record of one stored message (`None`: no such message, or no media record).
    fn media_record(
        &self,
        open_kfid: OpenKfId,
        msgid: MsgId,
    ) -> BoxFuture<'_, Result<Option<String>, Error>>;

    /// One stored message by account and msgid, as the deliverer takes it (its JSON is read
    /// back when sent), with its state (`pending`, `delivered` or `skipped`): what an
    /// operator's replay hands to the deliverer again.
    fn stored_message(
        &self,
        open_kfid: OpenKfId,
        msgid: MsgId,
    ) -> BoxFuture<'_, Result<Option<(StoredMessage, &'static str)>, Error>>;

    /// Records a send made outside the queue (the reply API, the console) with how it ended,
    /// as a finished reply of its lane: the conversation's history and the sends listing show
    /// it; it is never sent again nor reported to the bot.
    fn record_finished_reply(
        &self,
        reply: FinishedReply,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// Finishes queued work and closes the database.
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// Whether a database location is a PostgreSQL URL (anything else is SQLite).
pub(crate) fn is_postgres(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// SQLite durability (`[storage] synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=NORMAL` with WAL: survives process crashes (kill -9), may lose the last
    /// transactions on power loss.
    #[default]
    Normal,
    /// `synchronous=FULL`: also survives power loss, slower.
    Full,
}

/// How to open a store (`[storage]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// SQLite durability.
    pub synchronous: Synchronous,
    /// PostgreSQL: most connections of the pool.
    pub pool_size: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            synchronous: Synchronous::default(),
            pool_size: postgres::DEFAULT_POOL_SIZE,
        }
    }
}

/// Opens the store named by `location`: a `postgres://` / `postgresql://` URL, `:memory:`, or a
/// SQLite file path; runs the migrations.
pub async fn open(location: &str, options: OpenOptions) -> Result<Arc<dyn Store>, Error> {
    let synchronous = options.synchronous;
    if is_postgres(location) {
        Ok(Arc::new(
            PostgresStore::open(location, None, options.pool_size).await?,
        ))
    } else {
        let location = location.to_owned();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&location, synchronous))
            .await
            .map_err(|e| Error::Store(format!("cannot open SQLite: {e}")))??;
        Ok(Arc::new(store))
    }
}

/// Opens the store named by `location` to read it beside a running service: no migration, no
/// write (SQLite read-only, PostgreSQL read-only transactions). Its schema must be this
/// program's.
pub async fn open_read_only(location: &str) -> Result<Arc<dyn Store>, Error> {
    if location == ":memory:" {
        return Err(Error::Config(
            "the store is in memory (the sandbox's default): it lives inside the running serve; \
             ask it with GET /v1/messages, or run serve with --db FILE"
                .into(),
        ));
    }
    if is_postgres(location) {
        Ok(Arc::new(PostgresStore::connect_read_only(location).await?))
    } else {
        let location = location.to_owned();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open_read_only(&location))
            .await
            .map_err(|e| Error::Store(format!("cannot open SQLite: {e}")))??;
        Ok(Arc::new(store))
    }
}

/// The error for a schema this program cannot read without migrating.
pub(crate) fn schema_mismatch(found: i64, known: usize) -> Error {
    if found < known as i64 {
        Error::Store(format!(
            "the database has schema version {found}, older than this program ({known}); start \
             `wechat-kf serve` of this version once to migrate it"
        ))
    } else {
        Error::Store(format!(
            "the database has schema version {found}, newer than this program ({known}); upgrade \
             wechat-kf"
        ))
    }
}

/// Whether a listed row's state counts as `pending`, `delivered` or `skipped`.
pub(crate) fn message_state(delivered: bool, skipped: bool) -> &'static str {
    match (delivered, skipped) {
        (_, true) => "skipped",
        (true, false) => "delivered",
        (false, false) => "pending",
    }
}

/// `1,2,3` ↔ `[1, 2, 3]`: the seq list of a delivery row.
pub(crate) fn encode_seqs(seqs: &[i64]) -> String {
    let mut out = String::with_capacity(seqs.len() * 8);
    for (i, seq) in seqs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&seq.to_string());
    }
    out
}

/// Parses [`encode_seqs`]; unreadable parts are skipped (the row is ours, but never panic).
pub(crate) fn decode_seqs(text: &str) -> Vec<i64> {
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_lists_round_trip() {
        assert_eq!(decode_seqs(&encode_seqs(&[1, 22, 333])), vec![1, 22, 333]);
        assert_eq!(decode_seqs(""), Vec::<i64>::new());
    }

    #[test]
    fn unreadable_views_count_as_unknown() {
        assert_eq!(parse_view(Some("not json")), SessionView::new());
        assert_eq!(parse_view(None), SessionView::new());
        let mut view = SessionView::new();
        SessionUpdate::Transferred {
            state: ServiceState::Queued,
            servicer: None,
            msg_code: Some("C".into()),
            at: 10,
        }
        .apply(&mut view);
        assert_eq!(parse_view(Some(&encode_view(&view))), view);
    }
}
