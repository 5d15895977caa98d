//! The `kf/sync_msg` response: a page of messages plus the cursor to continue from.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    ///
    /// `serde_json::from_slice::<SyncMsgResponse>` (what reqwest's `.json()` calls) reaches the
    /// same decoder; see the [`Deserialize`] impl.
    pub fn from_slice(body: &[u8]) -> serde_json::Result<Self> {
        match simdutf8::basic::from_utf8(body) {
            Ok(text) => Self::from_shared(Arc::from(text)),
            // Not UTF-8, so not JSON, even where the bad byte sits in a value nobody reads
            // (which serde_json skips unchecked). Parsing it as a `Value` says where.
            Err(_) => Err(serde_json::from_slice::<serde_json::Value>(body)
                .err()
                .unwrap_or_else(|| de::Error::custom("the body is not UTF-8"))),
        }
    }

    /// Decodes a response body with the general serde path only: every item through
    /// [`Message::from_raw`], no structural scanner, no fast item parser. The same results as
    /// [`SyncMsgResponse::from_slice`], slower; kept callable so that the differential tests and
    /// the fuzz target can hold the two to each other.
    #[doc(hidden)]
    pub fn from_slice_general(body: &[u8]) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let response = de.deserialize_map(ResponseVisitor { raw_text: false })?;
        de.end()?;
        Ok(response)
    }

    /// Decodes a response body; see [`SyncMsgResponse::from_slice`].
    pub fn from_json(body: &str) -> serde_json::Result<Self> {
        Self::from_shared(Arc::from(body))
    }

    fn from_shared(text: Arc<str>) -> serde_json::Result<Self> {
        match Self::from_scanned(&text) {
            Some(result) => result,
            // Structurally broken: let serde_json say where, through the plain path (not
            // through `Deserialize`, which would come back here).
            None => Self::from_slice_general(text.as_bytes()),
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
            // serde_json reads an escaped key, and refuses a raw control character in one (the
            // scanner only finds the key's extent).
            let plain = !key.contains('\\') && !key.bytes().any(|b| b < 0x20);
            let key: std::borrow::Cow<'_, str> = match plain {
                true => key[1..key.len() - 1].into(),
                false => match serde_json::from_str(key) {
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

/// serde_json's name for its raw-value newtype (feature `raw_value`, which this crate enables
/// for `RawValue`): a `Deserializer` from serde_json asked for a newtype struct of this name
/// checks the value's syntax and hands over its text as a one-entry map under this key. The
/// name is not exported; should it ever change, serde_json would call `visit_newtype_struct`
/// instead and decoding would take the general path, with the same results (the test
/// `serde_json_from_slice_reaches_the_fast_decoder` would notice the slowdown).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Deserializing from serde_json (`serde_json::from_slice`, `from_str`, `from_reader`,
/// `from_value`, reqwest's `.json()`) takes the body's text and runs the fast decoder of
/// [`SyncMsgResponse::from_json`] on it: the text is first checked by serde_json as one value
/// (a skim, no allocation), then decoded once. The results are identical to
/// [`SyncMsgResponse::from_slice`] (same messages, same invalid items; only the positions in
/// error messages may differ).
///
/// Any other `Deserializer` (a serde `Content` buffer inside `#[serde(flatten)]` or an untagged
/// enum, `serde_yaml`, …) is read field by field through the general path, each `msg_list` item
/// through [`Message::from_raw`]; items are kept raw as JSON, so such a deserializer must be
/// able to produce a [`RawValue`] (only serde_json's own can): otherwise a non-empty `msg_list`
/// is an error. Decode the body with serde_json, or with [`SyncMsgResponse::from_slice`].
impl<'de> Deserialize<'de> for SyncMsgResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(RAW_VALUE_TOKEN, ResponseVisitor { raw_text: true })
    }
}

/// Reads a response object; `raw_text`: the object may be serde_json's raw-value map.
struct ResponseVisitor {
    raw_text: bool,
}

/// The body's text as serde_json hands it over: borrowed from the input when it can be.
struct RawBody;

impl<'de> DeserializeSeed<'de> for RawBody {
    type Value = SyncMsgResponse;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SyncMsgResponse, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for RawBody {
    type Value = SyncMsgResponse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the JSON text of a kf/sync_msg response")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<SyncMsgResponse, E> {
        SyncMsgResponse::from_json(text).map_err(E::custom)
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<SyncMsgResponse, E> {
        SyncMsgResponse::from_shared(Arc::from(text)).map_err(E::custom)
    }
}

impl<'de> Visitor<'de> for ResponseVisitor {
    type Value = SyncMsgResponse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a kf/sync_msg response object")
    }

    /// A deserializer that does not know the raw-value name: read the object field by field.
    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<SyncMsgResponse, D::Error> {
        deserializer.deserialize_map(ResponseVisitor { raw_text: false })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SyncMsgResponse, A::Error> {
        let mut response = SyncMsgResponse::default();
        let mut first = self.raw_text;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if std::mem::take(&mut first) && key == RAW_VALUE_TOKEN {
                // serde_json handing over the body's text (see `RAW_VALUE_TOKEN`).
                let response = map.next_value_seed(RawBody)?;
                // Its raw-value map has exactly one entry; drain it all the same.
                while map.next_key::<IgnoredAny>()?.is_some() {
                    map.next_value::<IgnoredAny>()?;
                }
                return Ok(response);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"{"errcode":0,"errmsg":"ok","next_cursor":"c2","has_more":1,"msg_list":[
        {"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"hi"}},
        {"msgid":"m2","send_time":2,"origin":3,"msgtype":"msgmenu","msgmenu":{"list":[]}},
        {"msgid":"m3","send_time":3,"origin":3,"msgtype":"location","location":{"latitude":"north"}}
    ]}"#;

    /// Messages decoded by the fast decoder share the page's text; the general path gives each
    /// message its own copy. So shared text proves which decoder ran.
    fn shares_one_buffer(page: &SyncMsgResponse) -> bool {
        let [first, second] = [&page.msg_list[0], &page.msg_list[1]];
        let (a, b) = (
            first.raw().as_ptr() as usize,
            second.raw().as_ptr() as usize,
        );
        let (pa, pb) = (
            PAGE.find(first.raw()).unwrap(),
            PAGE.find(second.raw()).unwrap(),
        );
        b.wrapping_sub(a) == pb - pa
    }

    #[test]
    fn serde_json_from_slice_reaches_the_fast_decoder() {
        let fast = SyncMsgResponse::from_slice(PAGE.as_bytes()).unwrap();
        assert!(shares_one_buffer(&fast));
        let serde: SyncMsgResponse = serde_json::from_slice(PAGE.as_bytes()).unwrap();
        assert!(shares_one_buffer(&serde));
        let from_str: SyncMsgResponse = serde_json::from_str(PAGE).unwrap();
        assert!(shares_one_buffer(&from_str));
        let from_reader: SyncMsgResponse = serde_json::from_reader(PAGE.as_bytes()).unwrap();
        assert!(shares_one_buffer(&from_reader));
        let general = SyncMsgResponse::from_slice_general(PAGE.as_bytes()).unwrap();
        assert!(!shares_one_buffer(&general));
        for page in [&serde, &from_str, &from_reader, &general] {
            assert_eq!(page, &fast);
        }
        assert_eq!(fast.msg_list.len(), 2);
        assert_eq!(fast.invalid[0].error.path, "location.latitude");
    }

    #[test]
    fn a_serde_json_value_decodes_through_the_same_decoder() {
        let value: serde_json::Value = serde_json::from_str(PAGE).unwrap();
        let page: SyncMsgResponse = serde_json::from_value(value).unwrap();
        assert_eq!(page.msg_list.len(), 2);
        assert_eq!(page.invalid.len(), 1);
        assert_eq!(page.next_cursor, "c2");
    }

    #[test]
    fn the_serde_path_rejects_what_from_slice_rejects() {
        for body in [
            &b"{\"errcode\":0,\"msg_list\":[}"[..],
            b"{\"errcode\":\"x\",\"msg_list\":[]}",
            b"{\"errcode\":0} trailing",
            b"[1]",
            b"{\"errcode\":0,\"errmsg\":\"\xff\"}",
            // A raw control character in a key (found by the fuzzer): the scanner only finds
            // the key's extent, serde_json refuses it.
            b"{\"msg_l\x1dst\":[],\"has_more\":0}",
        ] {
            assert!(SyncMsgResponse::from_slice(body).is_err());
            assert!(serde_json::from_slice::<SyncMsgResponse>(body).is_err());
            assert!(SyncMsgResponse::from_slice_general(body).is_err());
        }
    }

    /// Found by the fuzzer: serde_json skips an unread string without checking its UTF-8, so
    /// the general path alone would take this body; `from_slice` and the serde path refuse it.
    #[test]
    fn bytes_that_are_not_utf8_are_refused_even_where_nobody_reads_them() {
        let body = b"{\"errcode\":0,\"other\":[\"\x93\"],\"has_more\":0}";
        assert!(SyncMsgResponse::from_slice(body).is_err());
        assert!(serde_json::from_slice::<SyncMsgResponse>(body).is_err());
    }

    /// A deserializer that is not serde_json's (here serde's buffer behind an untagged enum)
    /// reads the envelope field by field; items need a `RawValue`, which only serde_json makes.
    #[test]
    fn other_deserializers_take_the_general_path() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Body {
            Page(SyncMsgResponse),
        }
        let empty = r#"{"errcode":0,"errmsg":"ok","next_cursor":"c2","has_more":1,"msg_list":[]}"#;
        let Body::Page(page) = serde_json::from_str(empty).unwrap();
        assert_eq!(page.next_cursor, "c2");
        assert!(page.has_more);
        assert!(serde_json::from_str::<Body>(PAGE).is_err());
    }
}
