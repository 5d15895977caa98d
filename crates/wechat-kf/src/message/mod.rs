//! The typed model of every item `kf/sync_msg` returns in `msg_list`.
//!
//! A [`Message`] is an envelope (msgid, account, customer, time, origin) plus a
//! [`MessageContent`] that you `match` on. Every message keeps the JSON it was decoded from
//! ([`Message::raw`]), so nothing WeChat sends is ever lost: unknown types become
//! [`MessageContent::Unknown`], unknown fields stay in the raw JSON, and serializing a message
//! writes that JSON back unchanged.
//!
//! ```
//! use wechat_kf::message::{Event, Message, MessageContent};
//!
//! let msg: Message = serde_json::from_str(r#"{"msgid":"m1","send_time":1700000000,"origin":4,
//!   "msgtype":"event","event":{"event_type":"enter_session","open_kfid":"wk1",
//!   "external_userid":"wm1","scene":"order","welcome_code":"W1"}}"#).unwrap();
//! match msg.content() {
//!     MessageContent::Event(Event::EnterSession(e)) => {
//!         assert_eq!(e.welcome_code.as_deref(), Some("W1"));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! assert_eq!(msg.open_kfid().unwrap(), "wk1"); // taken from inside the event
//! ```

mod codes;
mod decode;
mod event;
mod fast;
mod payload;
mod sync;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use codes::{
    ChangeType, ChannelsSubType, FailType, Origin, RejectSwitch, ServicerStatus, StopType,
};
pub use decode::DecodeError;
pub(crate) use decode::{Prefix, decode_prefix};
pub use event::{
    EnterSession, Event, MsgSendFail, RejectCustomerMsgSwitchChange, ServicerRecallMsg,
    ServicerStatusChange, SessionStatusChange, UnknownEvent, UserRecallMsg, WechatChannels,
};
pub use payload::{
    BusinessCard, Channels, ChannelsShopOrder, ChannelsShopProduct, File, Image, Link, Location,
    MenuClick, MenuItem, MenuMiniProgram, MenuText, MenuView, MergedItem, MergedMsg, MiniProgram,
    MsgMenu, RawPayload, Text, Video, Voice,
};
pub use sync::{InvalidItem, SyncMsgResponse};

use crate::ids::Interner;
use crate::{ExternalUserId, MsgId, OpenKfId, UserId};

/// One item of `msg_list`: a customer or servicer message, or a system event.
///
/// Construct one by decoding JSON (`serde_json::from_str`, or as part of a
/// [`SyncMsgResponse`]) or in code with [`Message::new`]. Fields are
/// read through accessors so the typed view and [`Message::raw`] can never disagree.
#[derive(Clone)]
pub struct Message {
    raw: RawJson,
    envelope: Envelope,
    content: MessageContent,
}

/// A message's original JSON: a range of a shared buffer.
///
/// Messages decoded from one page share that page's text (one copy for the whole page instead
/// of one allocation per message); a message kept alive keeps its page's text alive.
#[derive(Clone)]
struct RawJson {
    text: Arc<str>,
    start: usize,
    end: usize,
}

impl RawJson {
    fn whole(text: Arc<str>) -> Self {
        let end = text.len();
        Self {
            text,
            start: 0,
            end,
        }
    }

    fn get(&self) -> &str {
        &self.text[self.start..self.end]
    }
}

/// The fields every message shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique message id.
    pub msgid: MsgId,
    /// The account; absent for events (see [`Event::open_kfid`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_kfid: Option<OpenKfId>,
    /// The customer; absent for events (see [`Event::external_userid`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_userid: Option<ExternalUserId>,
    /// Unix seconds.
    pub send_time: u64,
    /// Who produced the message.
    pub origin: Origin,
    /// For origin 5: the servicer who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servicer_userid: Option<UserId>,
}

/// What a message carries, one variant per `msgtype`.
///
/// Rare, large payloads are boxed so that the common ones (text, media) keep a
/// [`Message`] small; fields read through the box as usual.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MessageContent {
    /// `text`
    Text(Text),
    /// `image`
    Image(Image),
    /// `voice`
    Voice(Voice),
    /// `video`
    Video(Video),
    /// `file`
    File(File),
    /// `location`
    Location(Location),
    /// `link`
    Link(Box<Link>),
    /// `business_card`
    BusinessCard(BusinessCard),
    /// `miniprogram`
    MiniProgram(Box<MiniProgram>),
    /// `msgmenu`
    MsgMenu(Box<MsgMenu>),
    /// `channels_shop_product`
    ChannelsShopProduct(Box<ChannelsShopProduct>),
    /// `channels_shop_order`
    ChannelsShopOrder(Box<ChannelsShopOrder>),
    /// `merged_msg` (chat history)
    MergedMsg(Box<MergedMsg>),
    /// `channels` (视频号)
    Channels(Channels),
    /// `meeting`: payload undocumented, kept raw.
    Meeting(RawContent),
    /// `schedule`: payload undocumented, kept raw.
    Schedule(RawContent),
    /// `note`: payload undocumented, kept raw.
    Note(RawContent),
    /// `event`: a system event.
    Event(Event),
    /// A `msgtype` this library does not know, kept with its payload.
    Unknown(RawContent),
}

/// The content of a message type whose payload is not modelled.
#[derive(Debug, Clone, PartialEq)]
pub struct RawContent {
    /// The `msgtype` as received.
    pub msgtype: String,
    /// The object under the key named like the msgtype, when present.
    pub payload: Option<RawPayload>,
}

impl MessageContent {
    /// The `msgtype` string as sent on the wire.
    pub fn msgtype(&self) -> &str {
        match self {
            Self::Text(_) => "text",
            Self::Image(_) => "image",
            Self::Voice(_) => "voice",
            Self::Video(_) => "video",
            Self::File(_) => "file",
            Self::Location(_) => "location",
            Self::Link(_) => "link",
            Self::BusinessCard(_) => "business_card",
            Self::MiniProgram(_) => "miniprogram",
            Self::MsgMenu(_) => "msgmenu",
            Self::ChannelsShopProduct(_) => "channels_shop_product",
            Self::ChannelsShopOrder(_) => "channels_shop_order",
            Self::MergedMsg(_) => "merged_msg",
            Self::Channels(_) => "channels",
            Self::Event(_) => "event",
            Self::Meeting(raw) | Self::Schedule(raw) | Self::Note(raw) | Self::Unknown(raw) => {
                &raw.msgtype
            }
        }
    }
}

/// `From` conversions so payloads can be wrapped without spelling out the variant (or its box).
macro_rules! content_from {
    ($( $variant:ident ( $ty:ty ) => $wrap:expr; )+) => {
        $(
            impl From<$ty> for MessageContent {
                fn from(payload: $ty) -> Self {
                    MessageContent::$variant($wrap(payload))
                }
            }
        )+
    };
}

content_from! {
    Text(Text) => std::convert::identity;
    Image(Image) => std::convert::identity;
    Voice(Voice) => std::convert::identity;
    Video(Video) => std::convert::identity;
    File(File) => std::convert::identity;
    Location(Location) => std::convert::identity;
    Link(Link) => Box::new;
    BusinessCard(BusinessCard) => std::convert::identity;
    MiniProgram(MiniProgram) => Box::new;
    MsgMenu(MsgMenu) => Box::new;
    ChannelsShopProduct(ChannelsShopProduct) => Box::new;
    ChannelsShopOrder(ChannelsShopOrder) => Box::new;
    MergedMsg(MergedMsg) => Box::new;
    Channels(Channels) => std::convert::identity;
    Event(Event) => std::convert::identity;
}

/// Generates `Message` accessors that return the payload when the content is of that type.
macro_rules! accessors {
    ($( $(#[$meta:meta])* $name:ident => $variant:ident ( $ty:ty ); )+) => {
        $(
            $(#[$meta])*
            pub fn $name(&self) -> Option<&$ty> {
                match &self.content {
                    MessageContent::$variant(inner) => Some(inner),
                    _ => None,
                }
            }
        )+
    };
}

/// Like `accessors!`, for boxed payloads.
macro_rules! boxed_accessors {
    ($( $(#[$meta:meta])* $name:ident => $variant:ident ( $ty:ty ); )+) => {
        $(
            $(#[$meta])*
            pub fn $name(&self) -> Option<&$ty> {
                match &self.content {
                    MessageContent::$variant(inner) => Some(&**inner),
                    _ => None,
                }
            }
        )+
    };
}

/// Generates `Message` accessors for events.
macro_rules! event_accessors {
    ($( $(#[$meta:meta])* $name:ident => $variant:ident ( $ty:ty ); )+) => {
        $(
            $(#[$meta])*
            pub fn $name(&self) -> Option<&$ty> {
                match &self.content {
                    MessageContent::Event(Event::$variant(inner)) => Some(&**inner),
                    _ => None,
                }
            }
        )+
    };
}

impl Message {
    /// Builds a message in code; its [`raw`](Self::raw) JSON is generated from the parts.
    pub fn new(envelope: Envelope, content: MessageContent) -> serde_json::Result<Self> {
        let json = serde_json::to_string(&decode::WireRef {
            envelope: &envelope,
            content: &content,
        })?;
        Ok(Self {
            raw: RawJson::whole(json.into()),
            envelope,
            content,
        })
    }

    /// Decodes one message from its JSON text.
    pub fn from_json(json: &str) -> Result<Self, DecodeError> {
        let (envelope, content) = decode::decode(json, &mut Interner::default())?;
        Ok(Self {
            raw: RawJson::whole(json.into()),
            envelope,
            content,
        })
    }

    /// Decodes one message from its raw JSON; on failure the raw JSON is handed back intact.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, (Box<RawValue>, DecodeError)> {
        match Self::from_json(raw.get()) {
            Ok(message) => Ok(message),
            Err(error) => Err((raw, error)),
        }
    }

    /// A message decoded from `text[start..end]`, sharing `text` for its raw JSON.
    pub(crate) fn from_decoded(
        text: &Arc<str>,
        start: usize,
        end: usize,
        envelope: Envelope,
        content: MessageContent,
    ) -> Self {
        Self {
            raw: RawJson {
                text: Arc::clone(text),
                start,
                end,
            },
            envelope,
            content,
        }
    }

    /// The message's original JSON text, exactly as received (the Go SDK's `GetOriginMessage`).
    pub fn raw(&self) -> &str {
        self.raw.get()
    }

    /// The envelope fields.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The typed content.
    pub fn content(&self) -> &MessageContent {
        &self.content
    }

    /// Splits the message into its envelope and content.
    pub fn into_parts(self) -> (Envelope, MessageContent) {
        (self.envelope, self.content)
    }

    /// Unique message id.
    pub fn msgid(&self) -> &MsgId {
        &self.envelope.msgid
    }

    /// The account: the envelope's `open_kfid`, or for events the one inside the event.
    pub fn open_kfid(&self) -> Option<&OpenKfId> {
        match &self.content {
            MessageContent::Event(event) if self.envelope.open_kfid.is_none() => event.open_kfid(),
            _ => self.envelope.open_kfid.as_ref(),
        }
    }

    /// The customer: the envelope's `external_userid`, or for events the one inside the event.
    pub fn external_userid(&self) -> Option<&ExternalUserId> {
        match &self.content {
            MessageContent::Event(event) if self.envelope.external_userid.is_none() => {
                event.external_userid()
            }
            _ => self.envelope.external_userid.as_ref(),
        }
    }

    /// Send time, unix seconds.
    pub fn send_time(&self) -> u64 {
        self.envelope.send_time
    }

    /// Who produced the message.
    pub fn origin(&self) -> Origin {
        self.envelope.origin
    }

    /// For servicer messages (origin 5): who sent it.
    pub fn servicer_userid(&self) -> Option<&UserId> {
        self.envelope.servicer_userid.as_ref()
    }

    /// The `msgtype` string.
    pub fn msgtype(&self) -> &str {
        self.content.msgtype()
    }

    /// A short classification: the msgtype, `event:<event_type>` for events, and
    /// `unknown:<msgtype>` / `unknown:event:<event_type>` for types the library does not model.
    pub fn kind(&self) -> Cow<'_, str> {
        match &self.content {
            MessageContent::Event(Event::Unknown(e)) => {
                Cow::Owned(format!("unknown:event:{}", e.event_type))
            }
            MessageContent::Event(event) => Cow::Owned(format!("event:{}", event.event_type())),
            MessageContent::Unknown(raw) => Cow::Owned(format!("unknown:{}", raw.msgtype)),
            other => Cow::Borrowed(other.msgtype()),
        }
    }

    /// The system event, when the message is one.
    pub fn event(&self) -> Option<&Event> {
        match &self.content {
            MessageContent::Event(event) => Some(event),
            _ => None,
        }
    }

    accessors! {
        /// The text payload (`GetTextMessage`).
        text => Text(Text);
        /// The image payload (`GetImageMessage`).
        image => Image(Image);
        /// The voice payload (`GetVoiceMessage`).
        voice => Voice(Voice);
        /// The video payload (`GetVideoMessage`).
        video => Video(Video);
        /// The file payload (`GetFileMessage`).
        file => File(File);
        /// The location payload (`GetLocationMessage`).
        location => Location(Location);
        /// The business card payload (`GetBusinessCardMessage`).
        business_card => BusinessCard(BusinessCard);
        /// The Channels (视频号) payload.
        channels => Channels(Channels);
        /// The raw `meeting` content.
        meeting => Meeting(RawContent);
        /// The raw `schedule` content.
        schedule => Schedule(RawContent);
        /// The raw `note` content.
        note => Note(RawContent);
        /// The content of an unknown `msgtype`.
        unknown => Unknown(RawContent);
    }

    boxed_accessors! {
        /// The link payload (`GetLinkMessage`).
        link => Link(Link);
        /// The mini program payload (`GetMiniProgramMessage`).
        mini_program => MiniProgram(MiniProgram);
        /// The menu payload.
        msg_menu => MsgMenu(MsgMenu);
        /// The Channels shop product payload.
        channels_shop_product => ChannelsShopProduct(ChannelsShopProduct);
        /// The Channels shop order payload.
        channels_shop_order => ChannelsShopOrder(ChannelsShopOrder);
        /// The chat-history payload.
        merged_msg => MergedMsg(MergedMsg);
    }

    event_accessors! {
        /// The `enter_session` event (`GetEnterSessionEvent`).
        enter_session => EnterSession(EnterSession);
        /// The `msg_send_fail` event (`GetMsgSendFailEvent`).
        msg_send_fail => MsgSendFail(MsgSendFail);
        /// The `servicer_status_change` event (`GetReceptionistStatusChangeEvent`).
        servicer_status_change => ServicerStatusChange(ServicerStatusChange);
        /// The `session_status_change` event (`GetSessionStatusChangeEvent`).
        session_status_change => SessionStatusChange(SessionStatusChange);
        /// The `user_recall_msg` event.
        user_recall_msg => UserRecallMsg(UserRecallMsg);
        /// The `servicer_recall_msg` event.
        servicer_recall_msg => ServicerRecallMsg(ServicerRecallMsg);
        /// The `reject_customer_msg_switch_change` event.
        reject_customer_msg_switch_change => RejectCustomerMsgSwitchChange(RejectCustomerMsgSwitchChange);
        /// An event of a type this library does not model.
        unknown_event => Unknown(UnknownEvent);
    }
}

impl MergedItem {
    /// Decodes [`msg_content`](Self::msg_content), the original message as a JSON string shaped
    /// like a `msg_list` item without its envelope (`{"msgtype":"text","text":{...}}`).
    ///
    /// Returns `None` when there is no `msg_content`.
    pub fn content(&self) -> Option<Result<MessageContent, DecodeError>> {
        self.msg_content.as_deref().map(decode::decode_content_only)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Message content is customer data: Debug shows ids and the type, never the text.
        f.debug_struct("Message")
            .field("msgid", &self.envelope.msgid)
            .field("open_kfid", &self.open_kfid())
            .field("external_userid", &self.external_userid())
            .field("send_time", &self.envelope.send_time)
            .field("origin", &self.envelope.origin)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.envelope == other.envelope
            && self.content == other.content
            && self.raw.get() == other.raw.get()
    }
}

impl Serialize for Message {
    /// Writes the original JSON back, byte for byte.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The text was validated when the message was decoded or built; borrowing it as a
        // `RawValue` is a scan, not a copy.
        let raw: &RawValue = serde_json::from_str(self.raw()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Message {
    /// Decodes a message. The input must come from `serde_json` (the raw JSON is captured).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(|(_, error)| serde::de::Error::custom(error))
    }
}
