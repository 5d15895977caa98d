//! The `kf/sync_msg` response: a page of messages plus the cursor to continue from.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{DecodeError, Message, Prefix, decode_prefix};
use crate::ids::Interner;
use crate::{MsgId, scan};

/// A decoded `kf/sync_msg` response.
///
/// Decoding never fails because of one bad item: every item that decodes lands in
/// [`msg_list`](Self::msg_list), and every item that does not lands in
/// [`invalid`](Self::invalid) with its raw JSON and the reason, so a puller can surface it and
/// still move the cursor. Only a body that is not a sync_msg response at all is an error.
///
/// ```
/// let body = r#"{"errcode":0,"errmsg":"ok","next_cursor":"c2","has_more":1,"msg_list":[
///   {"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"hi"}},
///   {"msgid":"m2","send_time":2,"origin":3,"msgtype":"location","location":{"latitude":"north"}}
/// ]}"#;
/// let page: wechat_kf::message::SyncMsgResponse = serde_json::from_str(body).unwrap();
/// assert_eq!(page.msg_list.len(), 1);
/// assert_eq!(page.invalid[0].msgid.as_ref().unwrap(), "m2");
/// assert_eq!(page.invalid[0].error.path, "location.latitude");
/// assert!(page.has_more);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncMsgResponse {
    /// 0 on success; a failed call is normally turned into an error by the client.
    pub errcode: i64,
    /// The server's message (`ok` on success).
    pub errmsg: String,
    /// Pass as `cursor` on the next call. Empty when the server sent none (keep your cursor).
    pub next_cursor: String,
    /// More data is available now (`has_more` = 1). Keep pulling until this is false, even
    /// through empty pages.
    pub has_more: bool,
    /// The items that decoded, in server order.
    pub msg_list: Vec<Message>,
    /// The items that did not decode, in server order, with their raw JSON.
    pub invalid: Vec<InvalidItem>,
}

/// A `msg_list` item that could not be decoded.
#[derive(Debug, Clone)]
pub struct InvalidItem {
    /// Position in the page's `msg_list`.
    pub index: usize,
    /// The item's JSON exactly as received.
    pub raw: Box<RawValue>,
    /// The item's `msgid`, when it could be read.
    pub msgid: Option<MsgId>,
    /// The item's `msgtype`, when it could be read.
    pub msgtype: Option<String>,
    /// What was wrong and where.
    pub error: DecodeError,
}

impl PartialEq for InvalidItem {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.raw.get() == other.raw.get() && self.error == other.error
    }
}

impl InvalidItem {
    /// Builds the report for an item that failed to decode, reading what it can of it.
    pub fn new(index: usize, raw: Box<RawValue>, error: DecodeError) -> Self {
        #[derive(Deserialize)]
        struct Ids {
            #[serde(default)]
            msgid: Option<MsgId>,
            #[serde(default)]
            msgtype: Option<String>,
        }
        let ids = serde_json::from_str::<Ids>(raw.get()).ok();
        let (msgid, msgtype) = ids.map_or((None, None), |ids| (ids.msgid, ids.msgtype));
        Self {
            index,
            raw,
            msgid,
            msgtype,
            error,
        }
    }

    /// The `invalid:<msgtype>` classification used by `wechat-kf decode --summary`
    /// (`invalid:?` when the msgtype cannot be read).
    pub fn kind(&self) -> String {
        format!("invalid:{}", self.msgtype.as_deref().unwrap_or("?"))
    }
}

impl SyncMsgResponse {
    /// Decodes a response body. Equivalent to `serde_json::from_slice`, but faster: the
    /// messages share one copy of the body for their raw JSON instead of one copy each.
    pub fn from_slice(body: &[u8]) -> serde_json::Result<Self> {
        match simdutf8::basic::from_utf8(body) {
            Ok(text) => Self::from_shared(Arc::from(text)),
            // Let serde_json report where the bad byte is.
            Err(_) => serde_json::from_slice(body),
        }
    }

    /// Decodes a response body; see [`SyncMsgResponse::from_slice`].
    pub fn from_json(body: &str) -> serde_json::Result<Self> {
        Self::from_shared(Arc::from(body))
    }

    fn from_shared(text: Arc<str>) -> serde_json::Result<Self> {
        match Self::from_scanned(&text) {
            Some(result) => result,
            // Structurally broken: let serde_json say where, through the plain path.
            None => serde_json::from_str(&text),
        }
    }

    /// Decodes with the structural scanner (see `scan`); `None` when the scanner rejects the
    /// body's structure.
    fn from_scanned(text: &Arc<str>) -> Option<serde_json::Result<Self>> {
        let mut response = SyncMsgResponse::default();
        let mut interner = Interner::default();
        let fields = scan::object_fields(text, "\"msg_list\"", &mut |start| {
            // A repeated key: the last one wins, as in the plain path.
            response.msg_list.clear();
            response.invalid.clear();
            decode_items(text, start, &mut response, &mut interner)
        })
        .ok()?;
        for (key, value) in fields {
            let key: std::borrow::Cow<'_, str> = match key.contains('\\') {
                false => key[1..key.len() - 1].into(),
                true => match serde_json::from_str(key) {
                    Ok(key) => key,
                    Err(error) => return Some(Err(error)),
                },
            };
            let parsed = match key.as_ref() {
                "errcode" => serde_json::from_str(value).map(|v| response.errcode = v),
                "errmsg" => serde_json::from_str::<Option<String>>(value)
                    .map(|v| response.errmsg = v.unwrap_or_default()),
                "next_cursor" => serde_json::from_str::<Option<String>>(value)
                    .map(|v| response.next_cursor = v.unwrap_or_default()),
                "has_more" => serde_json::from_str::<Flag>(value).map(|v| response.has_more = v.0),
                // Decoded during the scan (a plainly spelled key); `null` means no items.
                "msg_list" if value.starts_with('[') => Ok(()),
                "msg_list" if value == "null" => {
                    response.msg_list.clear();
                    response.invalid.clear();
                    Ok(())
                }
                // An escaped spelling of the key, or not a list: let the plain path decide.
                "msg_list" => return None,
                // Fields we do not use are still validated, so the body as a whole is JSON.
                _ => serde_json::from_str::<IgnoredAny>(value).map(drop),
            };
            if let Err(error) = parsed {
                return Some(Err(error));
            }
        }
        Some(Ok(response))
    }
}

/// Decodes the items of the `msg_list` array whose `[` is at `start`, each in a single pass
/// that also finds where it ends; returns the index just past the `]`.
fn decode_items(
    text: &Arc<str>,
    start: usize,
    response: &mut SyncMsgResponse,
    interner: &mut Interner,
) -> Result<usize, scan::ScanError> {
    let mut index = 0;
    // Real items are 150–400 bytes; reserving up front avoids regrowth of a full page.
    response.msg_list.reserve((text.len() - start) / 192);
    scan::array_elements(text.as_bytes(), start, &mut |pos| {
        let end = match decode_prefix(text, pos, interner, &mut response.msg_list) {
            Prefix::Decoded { len } => pos + len,
            Prefix::Invalid { len, error } => {
                let raw = RawValue::from_string(text[pos..pos + len].to_owned())
                    .map_err(|_| scan::ScanError { offset: pos })?;
                response.invalid.push(InvalidItem::new(index, raw, error));
                pos + len
            }
            Prefix::Broken => return Err(scan::ScanError { offset: pos }),
        };
        index += 1;
        Ok(end)
    })
}

impl<'de> Deserialize<'de> for SyncMsgResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ResponseVisitor)
    }
}

struct ResponseVisitor;

impl<'de> Visitor<'de> for ResponseVisitor {
    type Value = SyncMsgResponse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a kf/sync_msg response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SyncMsgResponse, A::Error> {
        let mut response = SyncMsgResponse::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "errcode" => response.errcode = map.next_value()?,
                "errmsg" => {
                    response.errmsg = map.next_value::<Option<String>>()?.unwrap_or_default()
                }
                "next_cursor" => {
                    response.next_cursor = map.next_value::<Option<String>>()?.unwrap_or_default()
                }
                "has_more" => response.has_more = map.next_value::<Flag>()?.0,
                "msg_list" => {
                    let list = map.next_value::<Option<MsgList>>()?.unwrap_or_default();
                    response.msg_list = list.messages;
                    response.invalid = list.invalid;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(response)
    }
}

/// `has_more`: documented as 0/1; `true`/`false` and `"0"`/`"1"` are accepted too.
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;

        impl Visitor<'_> for FlagVisitor {
            type Value = Flag;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("0, 1 or a boolean")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Flag, E> {
                Ok(Flag(v != 0))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Flag, E> {
                Ok(Flag(v != 0))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                Ok(Flag(!matches!(v.trim(), "" | "0" | "false")))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
        }

        deserializer.deserialize_any(FlagVisitor)
    }
}

/// `msg_list`, decoded item by item so that one bad item cannot fail the page.
#[derive(Default)]
struct MsgList {
    messages: Vec<Message>,
    invalid: Vec<InvalidItem>,
}

impl<'de> Deserialize<'de> for MsgList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = MsgList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a msg_list array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MsgList, A::Error> {
                let mut list = MsgList {
                    messages: Vec::with_capacity(seq.size_hint().unwrap_or(64)),
                    invalid: Vec::new(),
                };
                let mut index = 0;
                while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
                    match Message::from_raw(raw) {
                        Ok(message) => list.messages.push(message),
                        Err((raw, error)) => list.invalid.push(InvalidItem::new(index, raw, error)),
                    }
                    index += 1;
                }
                Ok(list)
            }
        }

        deserializer.deserialize_seq(ListVisitor)
    }
}

impl Serialize for SyncMsgResponse {
    /// Writes the response back; invalid items are written at their original positions, so
    /// the `msg_list` array equals what was received.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};

        struct List<'a>(&'a SyncMsgResponse);

        impl Serialize for List<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let total = self.0.msg_list.len() + self.0.invalid.len();
                let mut seq = serializer.serialize_seq(Some(total))?;
                let mut good = self.0.msg_list.iter();
                let mut bad = self.0.invalid.iter().peekable();
                for index in 0..total {
                    match bad.peek() {
                        Some(item) if item.index == index => {
                            seq.serialize_element(&item.raw)?;
                            bad.next();
                        }
                        _ => match good.next() {
                            Some(message) => seq.serialize_element(message)?,
                            None => {
                                if let Some(item) = bad.next() {
                                    seq.serialize_element(&item.raw)?;
                                }
                            }
                        },
                    }
                }
                seq.end()
            }
        }

        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("errcode", &self.errcode)?;
        map.serialize_entry("errmsg", &self.errmsg)?;
        map.serialize_entry("next_cursor", &self.next_cursor)?;
        map.serialize_entry("has_more", &u8::from(self.has_more))?;
        map.serialize_entry("msg_list", &List(self))?;
        map.end()
    }
}
