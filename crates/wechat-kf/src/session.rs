//! The send policy: may the API send to this customer now, and if not, why not
//! (official docs 94677, 95122 and 94669;
//! choices where they are silent: `docs/vendor-notes.md`).
//!
//! WeChat refuses a `send_msg` when the session is not handled by the API (95018: a human
//! servicer took it, it is queued or it ended), when the customer's last message is more than
//! 48 hours old (95002), when the only recent customer messages are menu clicks (95024, single source) and
//! after 5 messages per customer message (95001). A bot that learns this from the server has
//! already burnt a call and, worse, often a message the customer never sees. This module predicts
//! those answers from what the bot has seen:
//!
//! * [`SessionView`]: what is known about one (account, customer) session — the state, the time
//!   of the last customer message, the sends since — fed with every pulled message
//!   ([`SessionView::observe`]), our own `service_state/trans` calls
//!   ([`SessionView::observe_trans`]) and successful sends ([`SessionView::record_send`]).
//! * [`SessionView::can_send`] answers [`SendAllowance`] (how many more messages, until when) or
//!   a typed [`SendRefusal`] that names the errcode it stands for and explains itself.
//! * [`SessionTracker`]: a map of views that routes each message to its session.
//! * [`refusal_for_errcode`]: the refusal for an errcode the server answered anyway, so a bot
//!   handles predicted and unpredicted refusals the same way ([`SessionView::observe_refusal`]
//!   then remembers it).
//! * [`CodeKind`] and [`IssuedCode`]: the lifetimes and rules of `welcome_code` / `msg_code`.
//!
//! Every function is pure: time is an argument (`now`, unix seconds on the same clock as
//! `send_time`), so the rules are tested with a clock, not with sleeps. Nothing here stores or
//! prints message content.
//!
//! ```
//! use wechat_kf::message::Message;
//! use wechat_kf::session::{SEND_QUOTA, SendRefusal, SessionView};
//!
//! let hello = Message::from_json(r#"{"msgid":"m1","open_kfid":"wk1","external_userid":"wm1",
//!   "send_time":1700000000,"origin":3,"msgtype":"text","text":{"content":"你好"}}"#).unwrap();
//! let mut view = SessionView::new();
//! view.observe(&hello);
//! let now = 1_700_000_010;
//! for _ in 0..SEND_QUOTA {
//!     let allowance = view.can_send(now).unwrap();
//!     assert!(allowance.remaining >= 1);
//!     view.record_send(now); // after send_msg succeeded
//! }
//! let refusal = view.can_send(now).unwrap_err();
//! assert_eq!(refusal, SendRefusal::QuotaExhausted { sent: 5 });
//! assert_eq!(refusal.errcode(), 95001);
//! ```

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::message::{ChangeType, Event, FailType, Message, MessageContent, Origin};
use crate::{ExternalUserId, MsgId, OpenKfId, UserId};

/// How long after the customer's last (active) message the API may send: 48 hours, in seconds.
pub const SEND_WINDOW_SECS: u64 = 48 * 60 * 60;

/// How many `send_msg` messages are allowed after each customer message.
pub const SEND_QUOTA: u32 = 5;

/// Lifetime of a `welcome_code` and of an end `msg_code`: 20 seconds.
pub const SHORT_CODE_LIFETIME_SECS: u64 = 20;

/// Lifetime of a queue or connect `msg_code`: 48 hours, in seconds.
pub const LONG_CODE_LIFETIME_SECS: u64 = 48 * 60 * 60;

/// How many send times a [`SessionView`] keeps (a few quotas' worth; only the count matters).
const MAX_SEND_TIMES: usize = 4 * SEND_QUOTA as usize;

/// A session state (`service_state`, official doc 94669).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceState {
    /// 0 未处理: new, unhandled.
    New,
    /// 1 由智能助手接待: handled by the bot / the API.
    Bot,
    /// 2 待接入池排队中: queued for a servicer.
    Queued,
    /// 3 由人工接待: handled by a human servicer.
    Human,
    /// 4 已结束/未开始: ended or not started.
    Ended,
    /// A value the spec does not list.
    Other(u32),
}

impl ServiceState {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            ServiceState::New => 0,
            ServiceState::Bot => 1,
            ServiceState::Queued => 2,
            ServiceState::Human => 3,
            ServiceState::Ended => 4,
            ServiceState::Other(code) => code,
        }
    }

    /// The state for a number on the wire.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => ServiceState::New,
            1 => ServiceState::Bot,
            2 => ServiceState::Queued,
            3 => ServiceState::Human,
            4 => ServiceState::Ended,
            other => ServiceState::Other(other),
        }
    }

    /// Whether `send_msg` is allowed in this state (0 and 1 only).
    pub fn allows_send(self) -> bool {
        matches!(self, ServiceState::New | ServiceState::Bot)
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ServiceState::New => "new",
            ServiceState::Bot => "bot",
            ServiceState::Queued => "queued",
            ServiceState::Human => "human",
            ServiceState::Ended => "ended",
            ServiceState::Other(_) => "other",
        };
        write!(f, "{} ({name})", self.code())
    }
}

impl Serialize for ServiceState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.code())
    }
}

impl<'de> Deserialize<'de> for ServiceState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u32::deserialize(deserializer).map(ServiceState::from_code)
    }
}

/// `send_msg` may be called now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAllowance {
    /// Messages left before the customer writes again (1 ..= [`SEND_QUOTA`]). A reply split into
    /// more parts than this must be joined, or the last parts are refused with 95001.
    pub remaining: u32,
    /// The unix second from which the window is closed (48 hours after the customer's last
    /// active message). Sends must happen strictly before it.
    pub window_closes_at: u64,
}

/// Why `send_msg` would be refused. Each variant names the errcode the server answers
/// ([`errcode`](Self::errcode)); `Display` says what happened and what unblocks it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendRefusal {
    /// A human servicer handles the session (state 3): the bot must stay quiet. 95018.
    HumanServicer {
        /// The servicer, when known.
        servicer: Option<UserId>,
    },
    /// The session waits in the queue for a servicer (state 2). 95018.
    Queued,
    /// The session ended, or never started (state 4); the customer's next message re-opens it.
    /// 95018.
    Ended,
    /// The server refused with 95018 for a state this view does not know (an unlisted state,
    /// or a refusal it did not predict). Ask `service_state/get` and feed the answer to
    /// [`SessionView::observe_state`].
    StateForbidsSending {
        /// The state, when known.
        state: Option<ServiceState>,
    },
    /// The customer has not sent a message (entering the chat does not count; use the
    /// `welcome_code` for a greeting). 95002.
    NoCustomerMessage,
    /// The customer's last message is more than 48 hours old. 95002.
    WindowExpired {
        /// When the customer last wrote (unix seconds), when known.
        last_customer_message_at: Option<u64>,
    },
    /// The customer only tapped menu items in the last 48 hours, which does not count as
    /// writing (single source). 95024.
    OnlyMenuClicks {
        /// When the customer last wrote something that was not a menu click, when known.
        last_active_message_at: Option<u64>,
    },
    /// The 5 messages allowed per customer message are spent. 95001.
    QuotaExhausted {
        /// Messages sent since the customer's last message (at least [`SEND_QUOTA`]).
        sent: u32,
    },
}

impl SendRefusal {
    /// The server errcode this refusal stands for: 95018, 95002, 95024 or 95001.
    pub fn errcode(&self) -> i64 {
        match self {
            SendRefusal::HumanServicer { .. }
            | SendRefusal::Queued
            | SendRefusal::Ended
            | SendRefusal::StateForbidsSending { .. } => 95018,
            SendRefusal::NoCustomerMessage | SendRefusal::WindowExpired { .. } => 95002,
            SendRefusal::OnlyMenuClicks { .. } => 95024,
            SendRefusal::QuotaExhausted { .. } => 95001,
        }
    }

    /// Whether the customer's next message lifts the refusal (window, menu-click and quota
    /// refusals; an ended session too, since a customer message re-opens it). Refusals for a
    /// servicer or the queue are lifted by a session change instead.
    pub fn lifted_by_customer_message(&self) -> bool {
        !matches!(
            self,
            SendRefusal::HumanServicer { .. }
                | SendRefusal::Queued
                | SendRefusal::StateForbidsSending { .. }
        )
    }

    /// Whether a human servicer holds or is about to hold the session (states 2 and 3): hand the
    /// conversation over rather than queue bot replies.
    pub fn is_human_handoff(&self) -> bool {
        matches!(
            self,
            SendRefusal::HumanServicer { .. } | SendRefusal::Queued
        )
    }
}

impl fmt::Display for SendRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendRefusal::HumanServicer {
                servicer: Some(servicer),
            } => write!(
                f,
                "a human servicer ({servicer}) is handling this conversation; the API may not send \
                 until the session ends and the customer writes again (95018)"
            ),
            SendRefusal::HumanServicer { servicer: None } => f.write_str(
                "a human servicer is handling this conversation; the API may not send until the \
                 session ends and the customer writes again (95018)",
            ),
            SendRefusal::Queued => f.write_str(
                "the conversation is queued for a human servicer; the API may not send while it \
                 waits (95018)",
            ),
            SendRefusal::Ended => f.write_str(
                "the session has ended (or never started); the API may send again after the \
                 customer's next message (95018)",
            ),
            SendRefusal::StateForbidsSending { state: Some(state) } => write!(
                f,
                "the session state {state} does not allow API sends (95018)"
            ),
            SendRefusal::StateForbidsSending { state: None } => f.write_str(
                "the session state does not allow API sends; check it with service_state/get \
                 (95018)",
            ),
            SendRefusal::NoCustomerMessage => f.write_str(
                "the customer has not sent a message yet (opening the chat does not count; greet \
                 with the welcome_code instead) (95002)",
            ),
            SendRefusal::WindowExpired {
                last_customer_message_at: Some(at),
            } => write!(
                f,
                "the customer's last message (at unix time {at}) is more than 48 hours old; wait \
                 for them to write again (95002)"
            ),
            SendRefusal::WindowExpired {
                last_customer_message_at: None,
            } => f.write_str(
                "the customer's last message is more than 48 hours old; wait for them to write \
                 again (95002)",
            ),
            SendRefusal::OnlyMenuClicks { .. } => f.write_str(
                "the customer has only tapped menu items in the last 48 hours, which does not \
                 count as writing; wait for a typed message (95024)",
            ),
            SendRefusal::QuotaExhausted { sent } => write!(
                f,
                "{sent} messages were already sent since the customer's last message; at most \
                 {SEND_QUOTA} are allowed until they write again (95001)"
            ),
        }
    }
}

impl std::error::Error for SendRefusal {}

/// The refusal a `send_msg` errcode stands for: 95018, 95002, 95024 and 95001; `None` for any
/// other code (those are not about the session).
///
/// Use it when the server refused a send the view did not predict, then tell the view
/// ([`SessionView::observe_refusal`]) so it stops predicting an allowance.
///
/// ```
/// use wechat_kf::session::{SendRefusal, refusal_for_errcode};
/// assert_eq!(refusal_for_errcode(95001), Some(SendRefusal::QuotaExhausted { sent: 5 }));
/// assert_eq!(refusal_for_errcode(45009), None);
/// ```
pub fn refusal_for_errcode(code: impl Into<i64>) -> Option<SendRefusal> {
    match code.into() {
        95018 => Some(SendRefusal::StateForbidsSending { state: None }),
        95002 => Some(SendRefusal::WindowExpired {
            last_customer_message_at: None,
        }),
        95024 => Some(SendRefusal::OnlyMenuClicks {
            last_active_message_at: None,
        }),
        95001 => Some(SendRefusal::QuotaExhausted { sent: SEND_QUOTA }),
        _ => None,
    }
}

/// The kind of a single-use `send_msg_on_event` code (official doc 95122).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// `enter_session.welcome_code`: 20 s, `text` or `msgmenu`, in any state.
    Welcome,
    /// From `trans` into 2: 48 h, `text`, while the session is still queued.
    Queue,
    /// From `trans` into 3 or `session_status_change` 1: 48 h, `text`, while still in state 3.
    Connect,
    /// From `trans` into 4 or `session_status_change` 3: 20 s, `text` or `msgmenu`, while
    /// still ended.
    End,
}

impl CodeKind {
    /// How long the code is valid, in seconds.
    pub fn lifetime_secs(self) -> u64 {
        match self {
            CodeKind::Welcome | CodeKind::End => SHORT_CODE_LIFETIME_SECS,
            CodeKind::Queue | CodeKind::Connect => LONG_CODE_LIFETIME_SECS,
        }
    }

    /// Whether a message of `msgtype` may be sent with this code.
    pub fn allows_msgtype(self, msgtype: &str) -> bool {
        match self {
            CodeKind::Welcome | CodeKind::End => matches!(msgtype, "text" | "msgmenu"),
            CodeKind::Queue | CodeKind::Connect => msgtype == "text",
        }
    }

    /// The state the session must still be in for the code to work (`None`: any state).
    pub fn required_state(self) -> Option<ServiceState> {
        match self {
            CodeKind::Welcome => None,
            CodeKind::Queue => Some(ServiceState::Queued),
            CodeKind::Connect => Some(ServiceState::Human),
            CodeKind::End => Some(ServiceState::Ended),
        }
    }

    /// The kind of code `service_state/trans` into `state` returns.
    pub fn for_state(state: ServiceState) -> Option<CodeKind> {
        match state {
            ServiceState::Queued => Some(CodeKind::Queue),
            ServiceState::Human => Some(CodeKind::Connect),
            ServiceState::Ended => Some(CodeKind::End),
            _ => None,
        }
    }

    /// A short name: `welcome`, `queue`, `connect`, `end`.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Welcome => "welcome",
            CodeKind::Queue => "queue",
            CodeKind::Connect => "connect",
            CodeKind::End => "end",
        }
    }
}

impl fmt::Display for CodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `welcome_code` or `msg_code` and when it was issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCode {
    /// The code to pass to `send_msg_on_event`.
    pub code: String,
    /// What it is for.
    pub kind: CodeKind,
    /// When it was issued (unix seconds: the event's `send_time`, or the time of the `trans`).
    pub issued_at: u64,
    /// Whether it was used (every code is single use).
    #[serde(default)]
    pub used: bool,
}

/// Why a code cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeRefusal {
    /// The code was already used.
    Used,
    /// The code expired at this unix second.
    Expired {
        /// First second at which the code no longer works.
        expired_at: u64,
    },
    /// The session left the state the code was issued for.
    WrongState {
        /// The state the code needs.
        needed: ServiceState,
        /// The state the session is in, when known.
        actual: Option<ServiceState>,
    },
    /// The message type is not allowed with this kind of code.
    WrongMsgType {
        /// The kind of code.
        kind: CodeKind,
    },
}

impl fmt::Display for CodeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeRefusal::Used => f.write_str("the code was already used (codes are single use)"),
            CodeRefusal::Expired { expired_at } => {
                write!(f, "the code expired at unix time {expired_at}")
            }
            CodeRefusal::WrongState {
                needed,
                actual: Some(actual),
            } => write!(
                f,
                "the code only works while the session is in state {needed}; it is in {actual}"
            ),
            CodeRefusal::WrongState {
                needed,
                actual: None,
            } => write!(
                f,
                "the code only works while the session is in state {needed}"
            ),
            CodeRefusal::WrongMsgType { kind } => match kind {
                CodeKind::Welcome | CodeKind::End => {
                    write!(f, "a {kind} code only sends text or msgmenu")
                }
                CodeKind::Queue | CodeKind::Connect => write!(f, "a {kind} code only sends text"),
            },
        }
    }
}

impl std::error::Error for CodeRefusal {}

impl IssuedCode {
    /// A fresh, unused code.
    pub fn new(code: impl Into<String>, kind: CodeKind, issued_at: u64) -> Self {
        Self {
            code: code.into(),
            kind,
            issued_at,
            used: false,
        }
    }

    /// The first unix second at which the code no longer works.
    pub fn expires_at(&self) -> u64 {
        self.issued_at.saturating_add(self.kind.lifetime_secs())
    }

    /// Whether the code is unused and not expired at `now` (the state is not checked).
    pub fn is_live(&self, now: u64) -> bool {
        !self.used && now < self.expires_at()
    }

    /// Whether a `msgtype` message may be sent with this code at `now` while the session is in
    /// `state` (`None`: unknown, not checked).
    pub fn check(
        &self,
        now: u64,
        state: Option<ServiceState>,
        msgtype: &str,
    ) -> Result<(), CodeRefusal> {
        if self.used {
            return Err(CodeRefusal::Used);
        }
        if now >= self.expires_at() {
            return Err(CodeRefusal::Expired {
                expired_at: self.expires_at(),
            });
        }
        if let (Some(needed), Some(actual)) = (self.kind.required_state(), state) {
            if needed != actual {
                return Err(CodeRefusal::WrongState {
                    needed,
                    actual: Some(actual),
                });
            }
        }
        if !self.kind.allows_msgtype(msgtype) {
            return Err(CodeRefusal::WrongMsgType { kind: self.kind });
        }
        Ok(())
    }
}

/// Why a message we sent was not delivered (`msg_send_fail`), and when we learnt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendFailure {
    /// The reason.
    pub fail_type: FailType,
    /// The event's `send_time`.
    pub at: u64,
}

/// What is known about one (account, customer) session, for deciding whether to send.
///
/// A view starts knowing nothing; it learns from every pulled message ([`observe`](Self::observe),
/// in log order), from our own `service_state/trans` calls ([`observe_trans`](Self::observe_trans)),
/// `service_state/get` answers ([`observe_state`](Self::observe_state)), successful sends
/// ([`record_send`](Self::record_send)) and refusals the server answered
/// ([`observe_refusal`](Self::observe_refusal)). While the state is unknown the view assumes the
/// API may send and lets the server decide; the first refusal then teaches it.
///
/// Replaying messages is harmless: an old customer message never re-opens the quota, and an old
/// event never undoes a newer state change. Serializable, so a service can keep one per customer
/// in its store (fields unknown to an older version are ignored; missing ones default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionView {
    state: Option<ServiceState>,
    servicer: Option<UserId>,
    state_changed_at: Option<u64>,
    /// The server answered 95018 while the view thought the API could send.
    state_refused: bool,
    last_customer_message_at: Option<u64>,
    last_customer_msgid: Option<MsgId>,
    last_active_message_at: Option<u64>,
    /// Times of our sends since the last customer message (bounded).
    send_times: Vec<u64>,
    /// The server answered 95001 / 95002 / 95024 since the last customer message.
    quota_refused: bool,
    window_refused: bool,
    active_refused: bool,
    last_send_failure: Option<SendFailure>,
    code: Option<IssuedCode>,
    last_seen_at: Option<u64>,
}

impl SessionView {
    /// A view that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session state, when known.
    pub fn state(&self) -> Option<ServiceState> {
        self.state
    }

    /// The servicer handling the session (state 3), when known.
    pub fn servicer(&self) -> Option<&UserId> {
        self.servicer.as_ref()
    }

    /// Whether the view knows the state well enough: `false` before any state information, and
    /// after the server refused a send for a state the view did not predict. Then ask
    /// `service_state/get` and call [`observe_state`](Self::observe_state).
    pub fn state_is_known(&self) -> bool {
        self.state.is_some() && !self.state_refused
    }

    /// When the customer last sent a message (menu clicks included), unix seconds.
    pub fn last_customer_message_at(&self) -> Option<u64> {
        self.last_customer_message_at
    }

    /// When the customer last sent a message that was not a menu click, unix seconds.
    pub fn last_active_message_at(&self) -> Option<u64> {
        self.last_active_message_at
    }

    /// `send_msg` messages recorded since the customer's last message.
    pub fn sent_since_customer_message(&self) -> u32 {
        self.send_times.len() as u32
    }

    /// The last delivery failure (`msg_send_fail`) seen.
    pub fn last_send_failure(&self) -> Option<SendFailure> {
        self.last_send_failure
    }

    /// The latest code (welcome or msg_code) seen, used or not.
    pub fn code(&self) -> Option<&IssuedCode> {
        self.code.as_ref()
    }

    /// The latest code if it can still be used at `now` in the current state (any message type
    /// it allows).
    pub fn usable_code(&self, now: u64) -> Option<&IssuedCode> {
        let code = self.code.as_ref()?;
        let state = if self.state_refused { None } else { self.state };
        let msgtype = "text";
        code.check(now, state, msgtype).ok().map(|()| code)
    }

    /// When this view last learnt something (unix seconds).
    pub fn last_seen_at(&self) -> Option<u64> {
        self.last_seen_at
    }

    /// Whether `send_msg` may be called at `now`, and how many messages it may send; or why
    /// not. The checks follow the server's order: the session state (95018) first, then the
    /// 48-hour window (95002), active messages (95024) and the quota (95001).
    pub fn can_send(&self, now: u64) -> Result<SendAllowance, SendRefusal> {
        match self.state {
            Some(ServiceState::Human) => {
                return Err(SendRefusal::HumanServicer {
                    servicer: self.servicer.clone(),
                });
            }
            Some(ServiceState::Queued) => return Err(SendRefusal::Queued),
            Some(ServiceState::Ended) => return Err(SendRefusal::Ended),
            Some(other @ ServiceState::Other(_)) => {
                return Err(SendRefusal::StateForbidsSending { state: Some(other) });
            }
            Some(ServiceState::New | ServiceState::Bot) | None => {}
        }
        if self.state_refused {
            return Err(SendRefusal::StateForbidsSending { state: None });
        }
        let Some(last) = self.last_customer_message_at else {
            return Err(SendRefusal::NoCustomerMessage);
        };
        if self.window_refused || now >= last.saturating_add(SEND_WINDOW_SECS) {
            return Err(SendRefusal::WindowExpired {
                last_customer_message_at: Some(last),
            });
        }
        let active = self.last_active_message_at;
        let window_closes_at = match active {
            Some(active) if !self.active_refused => active.saturating_add(SEND_WINDOW_SECS),
            _ => 0,
        };
        if now >= window_closes_at {
            return Err(SendRefusal::OnlyMenuClicks {
                last_active_message_at: active,
            });
        }
        let sent = self.sent_since_customer_message();
        if self.quota_refused || sent >= SEND_QUOTA {
            return Err(SendRefusal::QuotaExhausted {
                sent: sent.max(SEND_QUOTA),
            });
        }
        Ok(SendAllowance {
            remaining: SEND_QUOTA - sent,
            window_closes_at,
        })
    }

    /// Learns from one pulled message of this session (call in log order; routing by account
    /// and customer is the caller's job, or use [`SessionTracker`]).
    ///
    /// * customer messages (origin 3) re-open the window and reset the quota; a `text` with a
    ///   `menu_id` (a menu click) does, too, but is not an *active* message (95024); in state 4
    ///   they start a new session (state 0);
    /// * servicer messages (origin 5) mean a human holds the session (state 3);
    /// * `enter_session` keeps its `welcome_code`; a customer who entered but never wrote is in
    ///   state 4;
    /// * `session_status_change`: 1 picked from the queue, 2 transferred, 4 re-joined → state 3
    ///   with the new servicer; 3 ended → state 4; the `msg_code` is kept;
    /// * `msg_send_fail`: fail_type 4 (expired) closes the window, 5 (closed) ends the session,
    ///   6 (quota) spends the quota, until the customer's next message.
    pub fn observe(&mut self, message: &Message) {
        let at = message.send_time();
        match message.content() {
            MessageContent::Event(event) => self.observe_event(event, at),
            content => match message.origin() {
                Origin::Customer => {
                    let menu_click = matches!(
                        content,
                        MessageContent::Text(text)
                            if text.menu_id.as_deref().is_some_and(|id| !id.is_empty())
                    );
                    self.observe_customer_message(at, Some(message.msgid()), menu_click);
                }
                Origin::Servicer => {
                    if let Some(servicer) = message.servicer_userid() {
                        if self.state != Some(ServiceState::Human)
                            || self.servicer.as_ref() != Some(servicer)
                        {
                            self.set_state(ServiceState::Human, Some(servicer.clone()), at);
                        }
                    }
                    self.seen(at);
                }
                Origin::System | Origin::Other(_) => {}
            },
        }
    }

    /// Learns from a customer message given by its parts (for callers that keep messages in
    /// their own form). `msgid` makes replays harmless; `menu_click` is a `text` with a
    /// `menu_id`.
    pub fn observe_customer_message(&mut self, at: u64, msgid: Option<&MsgId>, menu_click: bool) {
        let newer = match self.last_customer_message_at {
            None => true,
            Some(last) => {
                at > last
                    || (at == last
                        && msgid.is_none_or(|id| Some(id) != self.last_customer_msgid.as_ref()))
            }
        };
        if newer {
            self.last_customer_message_at = Some(at);
            self.last_customer_msgid = msgid.cloned();
            // The server counts the sends after this message. A send in the same second is
            // taken to have come before it: wrongly forgetting one send costs at most one
            // refused call (then remembered), wrongly keeping it would silence the bot.
            self.send_times.retain(|&sent| sent > at);
            self.quota_refused = false;
            self.window_refused = false;
        }
        if !menu_click
            && self
                .last_active_message_at
                .is_none_or(|active| at >= active)
        {
            self.last_active_message_at = Some(at);
            self.active_refused = false;
        }
        if self.state == Some(ServiceState::Ended) && self.is_not_older_than_state(at) {
            self.set_state(ServiceState::New, None, at);
        }
        self.seen(at);
    }

    /// Learns from our own successful `service_state/trans` into `state` (API transitions
    /// produce no event): the servicer for state 3, and the `msg_code` the call returned.
    pub fn observe_trans(
        &mut self,
        state: ServiceState,
        servicer: Option<UserId>,
        msg_code: Option<&str>,
        now: u64,
    ) {
        let servicer = if state == ServiceState::Human {
            servicer
        } else {
            None
        };
        self.set_state(state, servicer, now);
        if let (Some(code), Some(kind)) = (
            msg_code.filter(|c| !c.is_empty()),
            CodeKind::for_state(state),
        ) {
            self.code = Some(IssuedCode::new(code, kind, now));
        }
        self.seen(now);
    }

    /// Learns the state from a `service_state/get` answer: authoritative, it replaces whatever
    /// the view believed and clears an unexplained 95018.
    pub fn observe_state(&mut self, state: ServiceState, servicer: Option<UserId>, now: u64) {
        let servicer = if state == ServiceState::Human {
            servicer
        } else {
            None
        };
        self.state = Some(state);
        self.servicer = servicer;
        self.state_changed_at = Some(now);
        self.state_refused = false;
        self.seen(now);
    }

    /// Records a `send_msg` the server accepted at `now`: one more of the quota. An accepted
    /// send proves the session is handled by the API: state 1 (0 → 1 on the first send),
    /// whatever the view believed.
    pub fn record_send(&mut self, now: u64) {
        if self.send_times.len() >= MAX_SEND_TIMES {
            self.send_times.remove(0);
        }
        self.send_times.push(now);
        self.set_state(ServiceState::Bot, None, now);
        self.seen(now);
    }

    /// Records that `code` was used with `send_msg_on_event`. Such messages are not counted
    /// toward the quota (the spec is silent; the emulator does the same).
    pub fn record_code_used(&mut self, code: &str, now: u64) {
        if let Some(issued) = self.code.as_mut() {
            if issued.code == code {
                issued.used = true;
            }
        }
        self.seen(now);
    }

    /// Remembers a refusal the server answered, so that [`can_send`](Self::can_send) keeps
    /// refusing until something lifts it: the customer's next message for 95001, 95002 and
    /// 95024; a state change (an event, a `trans`, [`observe_state`](Self::observe_state)) for
    /// 95018.
    pub fn observe_refusal(&mut self, refusal: &SendRefusal, now: u64) {
        match refusal {
            SendRefusal::HumanServicer { servicer } => {
                self.set_state(ServiceState::Human, servicer.clone(), now);
            }
            SendRefusal::Queued => self.set_state(ServiceState::Queued, None, now),
            SendRefusal::Ended => self.set_state(ServiceState::Ended, None, now),
            SendRefusal::StateForbidsSending { state: Some(state) } => {
                self.set_state(*state, None, now);
            }
            SendRefusal::StateForbidsSending { state: None } => {
                if self.state.is_none_or(ServiceState::allows_send) {
                    self.state_refused = true;
                }
            }
            SendRefusal::NoCustomerMessage | SendRefusal::WindowExpired { .. } => {
                self.window_refused = true;
            }
            SendRefusal::OnlyMenuClicks { .. } => self.active_refused = true,
            SendRefusal::QuotaExhausted { .. } => self.quota_refused = true,
        }
        self.seen(now);
    }

    fn observe_event(&mut self, event: &Event, at: u64) {
        match event {
            Event::EnterSession(enter) => {
                if let Some(code) = enter.welcome_code.as_deref().filter(|c| !c.is_empty()) {
                    self.code = Some(IssuedCode::new(code, CodeKind::Welcome, at));
                }
                // "A customer who entered the chat but has not sent anything is in 4".
                if self.state.is_none() && self.last_customer_message_at.is_none() {
                    self.set_state(ServiceState::Ended, None, at);
                }
            }
            Event::SessionStatusChange(change) => {
                if !self.is_not_older_than_state(at) {
                    self.seen(at);
                    return;
                }
                let code = change.msg_code.as_deref().filter(|c| !c.is_empty());
                match change.change_type {
                    Some(ChangeType::PickedFromQueue) => {
                        self.set_state(ServiceState::Human, change.new_servicer_userid.clone(), at);
                        if let Some(code) = code {
                            self.code = Some(IssuedCode::new(code, CodeKind::Connect, at));
                        }
                    }
                    Some(ChangeType::Transferred | ChangeType::Rejoined) => {
                        self.set_state(ServiceState::Human, change.new_servicer_userid.clone(), at);
                    }
                    Some(ChangeType::Ended) => {
                        self.set_state(ServiceState::Ended, None, at);
                        if let Some(code) = code {
                            self.code = Some(IssuedCode::new(code, CodeKind::End, at));
                        }
                    }
                    // An unknown change: a servicer did something to the session; whether the
                    // API may send is unknown until asked.
                    Some(ChangeType::Other(_)) | None => {
                        if self.state.is_none_or(ServiceState::allows_send) {
                            self.state_refused = true;
                        }
                    }
                }
            }
            Event::MsgSendFail(fail) => {
                let fail_type = fail.fail_type.unwrap_or(FailType::Unknown);
                self.last_send_failure = Some(SendFailure { fail_type, at });
                // A failure older than the customer's latest message says nothing about now.
                if self.last_customer_message_at.is_none_or(|last| at >= last) {
                    match fail_type {
                        FailType::SessionExpired => self.window_refused = true,
                        FailType::QuotaExceeded => self.quota_refused = true,
                        FailType::SessionClosed if self.is_not_older_than_state(at) => {
                            self.set_state(ServiceState::Ended, None, at);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        self.seen(at);
    }

    fn is_not_older_than_state(&self, at: u64) -> bool {
        self.state_changed_at.is_none_or(|changed| at >= changed)
    }

    fn set_state(&mut self, state: ServiceState, servicer: Option<UserId>, at: u64) {
        self.state = Some(state);
        self.servicer = if state == ServiceState::Human {
            servicer
        } else {
            None
        };
        self.state_changed_at = Some(self.state_changed_at.map_or(at, |t| t.max(at)));
        self.state_refused = false;
    }

    fn seen(&mut self, at: u64) {
        self.last_seen_at = Some(self.last_seen_at.map_or(at, |t| t.max(at)));
    }
}

/// [`SessionView`]s of many customers on many accounts, fed with whole pages of messages.
///
/// ```
/// use wechat_kf::message::SyncMsgResponse;
/// use wechat_kf::session::{SendRefusal, SessionTracker};
///
/// let page: SyncMsgResponse = serde_json::from_str(r#"{"errcode":0,"next_cursor":"c",
///   "has_more":0,"msg_list":[
///   {"msgid":"m1","open_kfid":"wk1","external_userid":"wm1","send_time":1700000000,
///    "origin":3,"msgtype":"text","text":{"content":"转人工"}},
///   {"msgid":"m2","send_time":1700000060,"origin":4,"msgtype":"event","event":{
///    "event_type":"session_status_change","open_kfid":"wk1","external_userid":"wm1",
///    "change_type":1,"new_servicer_userid":"zhangsan","msg_code":"C1"}}]}"#).unwrap();
/// let mut sessions = SessionTracker::new();
/// for message in &page.msg_list {
///     sessions.observe(message);
/// }
/// let refusal = sessions.can_send("wk1", "wm1", 1_700_000_100).unwrap_err();
/// assert!(matches!(refusal, SendRefusal::HumanServicer { .. }));
/// assert_eq!(refusal.errcode(), 95018);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SessionTracker {
    accounts: HashMap<OpenKfId, HashMap<ExternalUserId, SessionView>>,
}

impl SessionTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes a pulled message to its session and learns from it. Returns `false` for messages
    /// about no customer (e.g. `servicer_status_change`), which are ignored.
    pub fn observe(&mut self, message: &Message) -> bool {
        let (Some(open_kfid), Some(external_userid)) =
            (message.open_kfid(), message.external_userid())
        else {
            return false;
        };
        self.session_mut(open_kfid, external_userid)
            .observe(message);
        true
    }

    /// The view of a session, if anything was learnt about it.
    pub fn session(&self, open_kfid: &str, external_userid: &str) -> Option<&SessionView> {
        self.accounts.get(open_kfid)?.get(external_userid)
    }

    /// The view of a session, created empty if needed.
    pub fn session_mut(
        &mut self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
    ) -> &mut SessionView {
        self.accounts
            .entry(open_kfid.clone())
            .or_default()
            .entry(external_userid.clone())
            .or_default()
    }

    /// [`SessionView::can_send`] for a session; an unknown session has no customer message.
    pub fn can_send(
        &self,
        open_kfid: &str,
        external_userid: &str,
        now: u64,
    ) -> Result<SendAllowance, SendRefusal> {
        match self.session(open_kfid, external_userid) {
            Some(view) => view.can_send(now),
            None => SessionView::new().can_send(now),
        }
    }

    /// [`SessionView::record_send`] for a session.
    pub fn record_send(
        &mut self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
        now: u64,
    ) {
        self.session_mut(open_kfid, external_userid)
            .record_send(now);
    }

    /// Number of sessions tracked.
    pub fn len(&self) -> usize {
        self.accounts.values().map(HashMap::len).sum()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.accounts.values().all(HashMap::is_empty)
    }

    /// Forgets sessions that learnt nothing for `idle_secs` (at least the 48-hour window plus
    /// the 3 days `sync_msg` keeps is a safe choice). Returns how many were dropped.
    pub fn prune(&mut self, now: u64, idle_secs: u64) -> usize {
        let cutoff = now.saturating_sub(idle_secs);
        let mut dropped = 0;
        for sessions in self.accounts.values_mut() {
            let before = sessions.len();
            sessions.retain(|_, view| view.last_seen_at.is_some_and(|t| t >= cutoff));
            dropped += before - sessions.len();
        }
        self.accounts.retain(|_, sessions| !sessions.is_empty());
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_state_round_trips_and_unknown_states_are_kept() {
        for code in 0..=4 {
            let state = ServiceState::from_code(code);
            assert!(!matches!(state, ServiceState::Other(_)));
            assert_eq!(state.code(), code);
        }
        assert_eq!(ServiceState::from_code(9), ServiceState::Other(9));
        assert_eq!(serde_json::to_string(&ServiceState::Human).unwrap(), "3");
        let parsed: ServiceState = serde_json::from_str("7").unwrap();
        assert_eq!(parsed, ServiceState::Other(7));
        assert_eq!(ServiceState::Queued.to_string(), "2 (queued)");
    }

    #[test]
    fn only_states_zero_and_one_allow_sending() {
        assert!(ServiceState::New.allows_send() && ServiceState::Bot.allows_send());
        for state in [
            ServiceState::Queued,
            ServiceState::Human,
            ServiceState::Ended,
            ServiceState::Other(5),
        ] {
            assert!(!state.allows_send(), "{state}");
        }
    }

    #[test]
    fn a_view_survives_a_round_trip_through_json() {
        let mut view = SessionView::new();
        view.observe_customer_message(100, Some(&MsgId::new("m1")), false);
        view.record_send(101);
        view.observe_trans(ServiceState::Queued, None, Some("Q1"), 102);
        let json = serde_json::to_string(&view).unwrap();
        let back: SessionView = serde_json::from_str(&json).unwrap();
        assert_eq!(back, view);
        let empty: SessionView = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, SessionView::new());
    }
}
