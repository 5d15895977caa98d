//! Decoding a `msg_list` item in one pass, and locating the field at fault when that fails.
//!
//! The fast path walks the item's object once: envelope fields are read as they come, and the
//! payload (the value under the key equal to `msgtype`) is decoded in place when `msgtype` came
//! first, which is the order WeChat uses. A payload seen before its `msgtype` is kept as a
//! borrowed slice and decoded afterwards. No intermediate `serde_json::Value` is built.
//!
//! When decoding fails, a slower second pass with `serde_path_to_error` finds the field path for
//! the error report; failures are rare, so the fast path pays nothing for it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Envelope, Event, Message, MessageContent, Origin, RawContent, RawPayload};
use crate::ids::Interner;
use crate::{ExternalUserId, MsgId, OpenKfId, UserId};

/// Why one `msg_list` item could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "item" } else { path.as_str() })]
pub struct DecodeError {
    /// The JSON path of the field at fault, such as `location.latitude` or `event.fail_type`
    /// (empty when the item itself is not a valid JSON object).
    pub path: String,
    /// What was wrong, from the JSON decoder.
    pub message: String,
}

impl DecodeError {
    pub(crate) fn syntax(error: serde_json::Error) -> Self {
        Self {
            path: String::new(),
            message: error.to_string(),
        }
    }
}

/// Decodes an item's envelope and content from its JSON text.
pub(super) fn decode(
    raw: &str,
    interner: &mut Interner,
) -> Result<(Envelope, MessageContent), DecodeError> {
    fast(raw, interner).map_err(|error| locate(raw, error))
}

/// How decoding the item at the start of a page's remaining text went.
pub(crate) enum Prefix {
    /// The item decoded and was pushed; it is `len` bytes long.
    Decoded { len: usize },
    /// The item is `len` bytes of JSON that do not decode as a message.
    Invalid { len: usize, error: DecodeError },
    /// Not even the item's extent can be found: the text is not JSON.
    Broken,
}

/// Decodes the item starting at `text[start..]` in one pass, learning its length from the
/// parser, and pushes it onto `out` (built in place: messages are large enough that every
/// avoided move shows). Only an item that fails is delimited by the structural scanner.
pub(crate) fn decode_prefix(
    text: &Arc<str>,
    start: usize,
    interner: &mut Interner,
    out: &mut Vec<Message>,
) -> Prefix {
    let rest = &text[start..];
    if let Some((len, envelope, content)) = super::fast::item(rest, interner) {
        out.push(Message::from_decoded(
            text,
            start,
            start + len,
            envelope,
            content,
        ));
        return Prefix::Decoded { len };
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Parts<'_>>();
    match stream.next() {
        Some(Ok(parts)) => {
            let len = stream.byte_offset();
            match finish(parts, interner) {
                Ok((envelope, content)) => {
                    out.push(Message::from_decoded(
                        text,
                        start,
                        start + len,
                        envelope,
                        content,
                    ));
                    Prefix::Decoded { len }
                }
                Err(error) => Prefix::Invalid {
                    len,
                    error: locate(&rest[..len], error),
                },
            }
        }
        Some(Err(error)) => match crate::scan::skip_value(rest.as_bytes(), 0) {
            Ok(len) => Prefix::Invalid {
                len,
                error: locate(&rest[..len], error),
            },
            Err(_) => Prefix::Broken,
        },
        None => Prefix::Broken,
    }
}

/// Decodes `{"msgtype": ..., "<msgtype>": {...}}` without an envelope (merged_msg items).
pub(super) fn decode_content_only(json: &str) -> Result<MessageContent, DecodeError> {
    let parts = parse_parts(json).map_err(|error| locate_content(json, error))?;
    parts
        .finish_content()
        .map_err(|error| locate_content(json, error))
}

fn fast(raw: &str, interner: &mut Interner) -> serde_json::Result<(Envelope, MessageContent)> {
    finish(parse_parts(raw)?, interner)
}

/// Turns parsed fields into an envelope and content; ids repeated across a page share memory.
fn finish(
    mut parts: Parts<'_>,
    interner: &mut Interner,
) -> serde_json::Result<(Envelope, MessageContent)> {
    let mut intern = |id: Option<Cow<'_, str>>| id.map(|id| interner.intern(&id));
    let envelope = Envelope {
        msgid: parts.msgid.take().ok_or_else(|| missing("msgid"))?,
        open_kfid: intern(parts.open_kfid.take()).map(OpenKfId::from_shared),
        external_userid: intern(parts.external_userid.take()).map(ExternalUserId::from_shared),
        send_time: parts.send_time.ok_or_else(|| missing("send_time"))?,
        origin: parts.origin.ok_or_else(|| missing("origin"))?,
        servicer_userid: intern(parts.servicer_userid.take()).map(UserId::from_shared),
    };
    Ok((envelope, parts.finish_content()?))
}

fn missing(field: &'static str) -> serde_json::Error {
    de::Error::missing_field(field)
}

fn parse_parts(raw: &str) -> serde_json::Result<Parts<'_>> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let parts = Parts::deserialize(&mut de)?;
    de.end()?;
    Ok(parts)
}

/// The fields of one item as they are read; see the module docs.
#[derive(Default)]
struct Parts<'a> {
    msgid: Option<MsgId>,
    open_kfid: Option<Cow<'a, str>>,
    external_userid: Option<Cow<'a, str>>,
    send_time: Option<u64>,
    origin: Option<Origin>,
    servicer_userid: Option<Cow<'a, str>>,
    msgtype: Option<Cow<'a, str>>,
    content: Option<MessageContent>,
    /// Values under keys that were not envelope fields, kept in case one is the payload.
    others: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl Parts<'_> {
    fn finish_content(mut self) -> serde_json::Result<MessageContent> {
        if let Some(content) = self.content.take() {
            return Ok(content);
        }
        let msgtype = self.msgtype.take().ok_or_else(|| missing("msgtype"))?;
        let payload = self
            .others
            .iter()
            .rev() // a repeated key: the last one wins, as in serde_json::Value
            .find(|(key, _)| *key == msgtype)
            .map(|(_, value)| *value);
        match payload {
            Some(value) => {
                let mut de = serde_json::Deserializer::from_str(value.get());
                ContentSeed(&msgtype).deserialize(&mut de)
            }
            None => content_without_payload(&msgtype),
        }
    }
}

/// Content for an item that has no payload object: fine for raw-kept types, an error otherwise.
fn content_without_payload(msgtype: &str) -> serde_json::Result<MessageContent> {
    let raw = RawContent {
        msgtype: msgtype.to_owned(),
        payload: None,
    };
    match msgtype {
        "meeting" => Ok(MessageContent::Meeting(raw)),
        "schedule" => Ok(MessageContent::Schedule(raw)),
        "note" => Ok(MessageContent::Note(raw)),
        known if is_modelled(known) => Err(de::Error::custom(format_args!(
            "missing field `{known}` (the payload of msgtype `{known}`)"
        ))),
        _ => Ok(MessageContent::Unknown(raw)),
    }
}

fn is_modelled(msgtype: &str) -> bool {
    matches!(
        msgtype,
        "text"
            | "image"
            | "voice"
            | "video"
            | "file"
            | "location"
            | "link"
            | "business_card"
            | "miniprogram"
            | "msgmenu"
            | "channels_shop_product"
            | "channels_shop_order"
            | "merged_msg"
            | "channels"
            | "event"
    )
}

impl<'de> Deserialize<'de> for Parts<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PartsVisitor)
    }
}

struct PartsVisitor;

/// Reads an optional id without allocating when it has no escapes.
fn id<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(map.next_value::<Option<Key<'de>>>()?.map(|Key(id)| id))
}

impl<'de> Visitor<'de> for PartsVisitor {
    type Value = Parts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a msg_list item (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts<'de>, A::Error> {
        let mut parts = Parts::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "msgid" => parts.msgid = Some(map.next_value()?),
                "open_kfid" => parts.open_kfid = id(&mut map)?,
                "external_userid" => parts.external_userid = id(&mut map)?,
                "send_time" => parts.send_time = Some(map.next_value()?),
                "origin" => parts.origin = Some(map.next_value()?),
                "servicer_userid" => parts.servicer_userid = id(&mut map)?,
                "msgtype" => parts.msgtype = Some(map.next_value::<Key<'de>>()?.0),
                _ => {
                    let is_payload =
                        parts.content.is_none() && parts.msgtype.as_deref() == Some(key.as_ref());
                    if is_payload {
                        parts.content = Some(map.next_value_seed(ContentSeed(&key))?);
                    } else {
                        parts.others.push((key, map.next_value()?));
                    }
                }
            }
        }
        Ok(parts)
    }
}

/// A string borrowed from the input when it has no escapes, owned otherwise.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Decodes the payload of a given msgtype.
struct ContentSeed<'s>(&'s str);

impl<'de> DeserializeSeed<'de> for ContentSeed<'_> {
    type Value = MessageContent;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<MessageContent, D::Error> {
        let raw = |d: D| -> Result<RawContent, D::Error> {
            Ok(RawContent {
                msgtype: self.0.to_owned(),
                payload: Some(RawPayload::deserialize(d)?),
            })
        };
        Ok(match self.0 {
            "text" => MessageContent::Text(Deserialize::deserialize(d)?),
            "image" => MessageContent::Image(Deserialize::deserialize(d)?),
            "voice" => MessageContent::Voice(Deserialize::deserialize(d)?),
            "video" => MessageContent::Video(Deserialize::deserialize(d)?),
            "file" => MessageContent::File(Deserialize::deserialize(d)?),
            "location" => MessageContent::Location(Deserialize::deserialize(d)?),
            "link" => MessageContent::Link(Deserialize::deserialize(d)?),
            "business_card" => MessageContent::BusinessCard(Deserialize::deserialize(d)?),
            "miniprogram" => MessageContent::MiniProgram(Deserialize::deserialize(d)?),
            "msgmenu" => MessageContent::MsgMenu(Deserialize::deserialize(d)?),
            "channels_shop_product" => {
                MessageContent::ChannelsShopProduct(Deserialize::deserialize(d)?)
            }
            "channels_shop_order" => {
                MessageContent::ChannelsShopOrder(Deserialize::deserialize(d)?)
            }
            "merged_msg" => MessageContent::MergedMsg(Deserialize::deserialize(d)?),
            "channels" => MessageContent::Channels(Deserialize::deserialize(d)?),
            // Only ever driven by a `serde_json` string deserializer, so the event's text can be
            // borrowed instead of copied.
            "event" => {
                let raw = <&RawValue>::deserialize(d)?;
                MessageContent::Event(Event::from_raw_str(raw.get()).map_err(de::Error::custom)?)
            }
            "meeting" => MessageContent::Meeting(raw(d)?),
            "schedule" => MessageContent::Schedule(raw(d)?),
            "note" => MessageContent::Note(raw(d)?),
            _ => MessageContent::Unknown(raw(d)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The slow path: find the field at fault.

/// Envelope fields with their wire types, for locating envelope errors.
#[derive(Deserialize)]
#[allow(dead_code)] // read only for its errors
struct EnvelopeCheck {
    msgid: MsgId,
    #[serde(default)]
    open_kfid: Option<OpenKfId>,
    #[serde(default)]
    external_userid: Option<ExternalUserId>,
    send_time: u64,
    origin: Origin,
    #[serde(default)]
    servicer_userid: Option<UserId>,
    msgtype: String,
}

fn locate(raw: &str, fallback: serde_json::Error) -> DecodeError {
    let mut de = serde_json::Deserializer::from_str(raw);
    if let Err(error) = serde_path_to_error::deserialize::<_, EnvelopeCheck>(&mut de) {
        return from_path_error(error);
    }
    locate_content(raw, fallback)
}

/// Locates an error in the payload (and for events, inside the event).
fn locate_content(raw: &str, fallback: serde_json::Error) -> DecodeError {
    let fallback = DecodeError::syntax(fallback);
    // A repeated key: the last one wins, as in the fast path.
    let Ok(fields) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw) else {
        return fallback;
    };
    let Some(msgtype) = fields
        .get("msgtype")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    else {
        return DecodeError {
            path: "msgtype".into(),
            ..fallback
        };
    };
    let Some(payload) = fields.get(&msgtype) else {
        return DecodeError {
            path: msgtype,
            ..fallback
        };
    };
    let nested = if msgtype == "event" {
        Event::locate_error(payload.get())
    } else {
        let mut de = serde_json::Deserializer::from_str(payload.get());
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
        ContentSeed(&msgtype)
            .deserialize(tracked)
            .err()
            .map(|error| path_error(track.path().to_string(), error.to_string()))
    };
    match nested {
        Some(error) if error.path.is_empty() || error.path == "." => DecodeError {
            path: msgtype,
            ..error
        },
        Some(error) => DecodeError {
            path: format!("{msgtype}.{}", error.path),
            ..error
        },
        None => DecodeError {
            path: msgtype,
            ..fallback
        },
    }
}

pub(super) fn from_path_error(error: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    path_error(error.path().to_string(), error.into_inner().to_string())
}

/// Builds the error report; a missing field's path names the field, not its container.
fn path_error(path: String, message: String) -> DecodeError {
    let mut path = if path == "." { String::new() } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    if let Some(field) = missing {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(field);
    }
    DecodeError { path, message }
}

// ---------------------------------------------------------------------------------------------
// Encoding messages built in code.

/// Serializes an envelope and content as one `msg_list` item.
pub(super) struct WireRef<'a> {
    pub envelope: &'a Envelope,
    pub content: &'a MessageContent,
}

impl Serialize for WireRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.envelope;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("msgid", &e.msgid)?;
        if let Some(v) = &e.open_kfid {
            map.serialize_entry("open_kfid", v)?;
        }
        if let Some(v) = &e.external_userid {
            map.serialize_entry("external_userid", v)?;
        }
        map.serialize_entry("send_time", &e.send_time)?;
        map.serialize_entry("origin", &e.origin)?;
        if let Some(v) = &e.servicer_userid {
            map.serialize_entry("servicer_userid", v)?;
        }
        let msgtype = self.content.msgtype();
        map.serialize_entry("msgtype", msgtype)?;
        match self.content {
            MessageContent::Text(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Image(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Voice(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Video(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::File(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Location(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Link(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::BusinessCard(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::MiniProgram(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::MsgMenu(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::ChannelsShopProduct(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::ChannelsShopOrder(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::MergedMsg(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Channels(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Event(p) => map.serialize_entry(msgtype, p)?,
            MessageContent::Meeting(raw)
            | MessageContent::Schedule(raw)
            | MessageContent::Note(raw)
            | MessageContent::Unknown(raw) => {
                if let Some(payload) = &raw.payload {
                    map.serialize_entry(msgtype, payload)?;
                }
            }
        }
        map.end()
    }
}
