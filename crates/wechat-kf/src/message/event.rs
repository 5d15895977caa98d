//! System events (`msgtype` = `event`, `origin` = 4), tagged by `event.event_type`.
//!
//! Unlike messages, events carry `open_kfid` and `external_userid` inside the `event` object.
//! Every field other than `event_type` is optional: WeChat has changed these shapes over time.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::{ChangeType, FailType, RejectSwitch, ServicerStatus, StopType};
use super::decode::{DecodeError, from_path_error};
use crate::{ExternalUserId, MsgId, OpenKfId, UserId};

/// A system event. `match` on it; new event types arrive as [`Event::Unknown`].
///
/// Payloads are boxed so that a [`Message`](super::Message) stays small whatever it carries;
/// fields read through the box as usual (`e.welcome_code`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `enter_session`: the customer opened the chat.
    EnterSession(Box<EnterSession>),
    /// `msg_send_fail`: an API-sent message was not delivered.
    MsgSendFail(Box<MsgSendFail>),
    /// `servicer_status_change`: a servicer changed receiving status.
    ServicerStatusChange(Box<ServicerStatusChange>),
    /// `session_status_change`: a servicer changed the session in the WeCom client.
    SessionStatusChange(Box<SessionStatusChange>),
    /// `user_recall_msg`: the customer recalled a message.
    UserRecallMsg(Box<UserRecallMsg>),
    /// `servicer_recall_msg`: a servicer recalled a message.
    ServicerRecallMsg(Box<ServicerRecallMsg>),
    /// `reject_customer_msg_switch_change`: a servicer blocked or unblocked a customer.
    RejectCustomerMsgSwitchChange(Box<RejectCustomerMsgSwitchChange>),
    /// An event type this library does not model, kept with its original JSON.
    Unknown(Box<UnknownEvent>),
}

/// An event of a type this library does not know.
#[derive(Debug, Clone)]
pub struct UnknownEvent {
    /// The `event_type` as received.
    pub event_type: String,
    /// The whole `event` object as received.
    pub raw: Box<RawValue>,
}

impl PartialEq for UnknownEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_type == other.event_type && self.raw.get() == other.raw.get()
    }
}

/// Declares an event payload struct whose fields are all optional.
macro_rules! event_struct {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$fmeta:meta])* $field:ident : $ty:ty, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )+
        }
    };
}

event_struct! {
    /// The customer opened the chat (from a contact link, Channels, ...).
    EnterSession {
        /// The account the customer entered.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
        /// The `scene` of the contact link.
        scene: String,
        /// The `scene_param` appended to the link, as given.
        scene_param: String,
        /// Present when a welcome message may be sent with `send_msg_on_event` (within 20 s, once).
        welcome_code: String,
        /// Present when the customer came from Channels (视频号).
        wechat_channels: WechatChannels,
    }
}

event_struct! {
    /// Where a customer came from on Channels (视频号).
    WechatChannels {
        /// Channels name (scenes 1–3).
        nickname: String,
        /// Channels shop name (scenes 4–5).
        shop_nickname: String,
        /// 1 home page, 2 live-room product list, 3 product showcase, 4 shop product detail,
        /// 5 shop order page.
        scene: u32,
    }
}

event_struct! {
    /// An API-sent message was not delivered. `send_msg` success only means "accepted".
    MsgSendFail {
        /// The account that sent it.
        open_kfid: OpenKfId,
        /// The customer it was for.
        external_userid: ExternalUserId,
        /// The msgid `send_msg` returned.
        fail_msgid: MsgId,
        /// Why it failed.
        fail_type: FailType,
    }
}

event_struct! {
    /// A servicer changed receiving status. Carries no customer.
    ServicerStatusChange {
        /// The account.
        open_kfid: OpenKfId,
        /// The servicer.
        servicer_userid: UserId,
        /// New status (1 receiving, 2 stopped).
        status: ServicerStatus,
        /// When stopped: stopped (0) or temporarily suspended (1).
        stop_type: StopType,
    }
}

event_struct! {
    /// A servicer changed the session in the WeCom client (API changes produce no event).
    SessionStatusChange {
        /// The account.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
        /// What happened.
        change_type: ChangeType,
        /// The servicer before the change (transfer, end, re-join).
        old_servicer_userid: UserId,
        /// The servicer after the change (pick, transfer, re-join).
        new_servicer_userid: UserId,
        /// A code for `send_msg_on_event` (pick: 48 h; end: 20 s).
        msg_code: String,
    }
}

event_struct! {
    /// The customer recalled a message.
    UserRecallMsg {
        /// The account.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
        /// The recalled message.
        recall_msgid: MsgId,
    }
}

event_struct! {
    /// A servicer recalled a message.
    ServicerRecallMsg {
        /// The account.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
        /// The recalled message.
        recall_msgid: MsgId,
        /// The servicer who recalled it.
        servicer_userid: UserId,
    }
}

event_struct! {
    /// A servicer started or stopped refusing a customer's messages.
    RejectCustomerMsgSwitchChange {
        /// The account.
        open_kfid: OpenKfId,
        /// The customer.
        external_userid: ExternalUserId,
        /// The servicer.
        servicer_userid: UserId,
        /// 1 refusing, 0 refusal cancelled.
        reject_switch: RejectSwitch,
    }
}

/// `From` conversions: `Event::from(EnterSession { .. })` boxes the payload.
macro_rules! event_from {
    ($( $variant:ident ),+) => {
        $(
            impl From<$variant> for Event {
                fn from(payload: $variant) -> Self {
                    Event::$variant(Box::new(payload))
                }
            }
        )+
    };
}

event_from!(
    EnterSession,
    MsgSendFail,
    ServicerStatusChange,
    SessionStatusChange,
    UserRecallMsg,
    ServicerRecallMsg,
    RejectCustomerMsgSwitchChange
);

impl Event {
    /// The `event_type` string as sent on the wire.
    pub fn event_type(&self) -> &str {
        match self {
            Self::EnterSession(_) => "enter_session",
            Self::MsgSendFail(_) => "msg_send_fail",
            Self::ServicerStatusChange(_) => "servicer_status_change",
            Self::SessionStatusChange(_) => "session_status_change",
            Self::UserRecallMsg(_) => "user_recall_msg",
            Self::ServicerRecallMsg(_) => "servicer_recall_msg",
            Self::RejectCustomerMsgSwitchChange(_) => "reject_customer_msg_switch_change",
            Self::Unknown(unknown) => &unknown.event_type,
        }
    }

    /// The account the event belongs to, when the event names one.
    pub fn open_kfid(&self) -> Option<&OpenKfId> {
        match self {
            Self::EnterSession(e) => e.open_kfid.as_ref(),
            Self::MsgSendFail(e) => e.open_kfid.as_ref(),
            Self::ServicerStatusChange(e) => e.open_kfid.as_ref(),
            Self::SessionStatusChange(e) => e.open_kfid.as_ref(),
            Self::UserRecallMsg(e) => e.open_kfid.as_ref(),
            Self::ServicerRecallMsg(e) => e.open_kfid.as_ref(),
            Self::RejectCustomerMsgSwitchChange(e) => e.open_kfid.as_ref(),
            Self::Unknown(_) => None,
        }
    }

    /// The customer the event is about, when there is one (not for servicer status changes).
    pub fn external_userid(&self) -> Option<&ExternalUserId> {
        match self {
            Self::EnterSession(e) => e.external_userid.as_ref(),
            Self::MsgSendFail(e) => e.external_userid.as_ref(),
            Self::SessionStatusChange(e) => e.external_userid.as_ref(),
            Self::UserRecallMsg(e) => e.external_userid.as_ref(),
            Self::ServicerRecallMsg(e) => e.external_userid.as_ref(),
            Self::RejectCustomerMsgSwitchChange(e) => e.external_userid.as_ref(),
            Self::ServicerStatusChange(_) | Self::Unknown(_) => None,
        }
    }

    /// Decodes an `event` object from its JSON text.
    pub(crate) fn from_raw_str(raw: &str) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(borrow)]
            event_type: std::borrow::Cow<'a, str>,
        }
        // Two small passes over a small object: read the tag, then the typed fields.
        let tag: Tag<'_> = serde_json::from_str(raw)?;
        Ok(match tag.event_type.as_ref() {
            "enter_session" => Self::EnterSession(Box::new(serde_json::from_str(raw)?)),
            "msg_send_fail" => Self::MsgSendFail(Box::new(serde_json::from_str(raw)?)),
            "servicer_status_change" => {
                Self::ServicerStatusChange(Box::new(serde_json::from_str(raw)?))
            }
            "session_status_change" => {
                Self::SessionStatusChange(Box::new(serde_json::from_str(raw)?))
            }
            "user_recall_msg" => Self::UserRecallMsg(Box::new(serde_json::from_str(raw)?)),
            "servicer_recall_msg" => Self::ServicerRecallMsg(Box::new(serde_json::from_str(raw)?)),
            "reject_customer_msg_switch_change" => {
                Self::RejectCustomerMsgSwitchChange(Box::new(serde_json::from_str(raw)?))
            }
            other => Self::Unknown(Box::new(UnknownEvent {
                event_type: other.to_owned(),
                raw: RawValue::from_string(raw.to_owned())?,
            })),
        })
    }
}

impl Event {
    /// Finds the field at fault in an `event` object that failed to decode (slow path).
    pub(crate) fn locate_error(raw: &str) -> Option<DecodeError> {
        #[derive(Deserialize)]
        struct Tag {
            event_type: String,
        }
        fn check<'a, T: Deserialize<'a>>(raw: &'a str) -> Option<DecodeError> {
            let mut de = serde_json::Deserializer::from_str(raw);
            serde_path_to_error::deserialize::<_, T>(&mut de)
                .err()
                .map(from_path_error)
        }
        let tag: Tag = match serde_json::from_str(raw) {
            Ok(tag) => tag,
            Err(_) => return check::<Tag>(raw),
        };
        match tag.event_type.as_str() {
            "enter_session" => check::<EnterSession>(raw),
            "msg_send_fail" => check::<MsgSendFail>(raw),
            "servicer_status_change" => check::<ServicerStatusChange>(raw),
            "session_status_change" => check::<SessionStatusChange>(raw),
            "user_recall_msg" => check::<UserRecallMsg>(raw),
            "servicer_recall_msg" => check::<ServicerRecallMsg>(raw),
            "reject_customer_msg_switch_change" => check::<RejectCustomerMsgSwitchChange>(raw),
            _ => None,
        }
    }
}

/// Serializes `{"event_type": ..., <fields>}` for building events in code.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    event_type: &'a str,
    #[serde(flatten)]
    fields: &'a T,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event_type = self.event_type();
        match self {
            Self::EnterSession(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::MsgSendFail(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::ServicerStatusChange(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::SessionStatusChange(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::UserRecallMsg(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::ServicerRecallMsg(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::RejectCustomerMsgSwitchChange(fields) => Tagged {
                event_type,
                fields: &**fields,
            }
            .serialize(serializer),
            Self::Unknown(unknown) => unknown.raw.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw_str(raw.get()).map_err(serde::de::Error::custom)
    }
}
