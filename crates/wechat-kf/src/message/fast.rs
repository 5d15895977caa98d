//! A fast path for the common item shapes: every documented message type except `msgmenu` and
//! `merged_msg`, and the seven documented event types.
//!
//! Most of a `sync_msg` page is items like
//! `{"msgid":"…","open_kfid":"…","external_userid":"…","send_time":1,"origin":3,"msgtype":"text","text":{"content":"…"}}`.
//! This parser reads exactly that grammar — known keys, ids without escapes, text with JSON's
//! escapes decoded, plain integers, numbers handed to serde_json — and gives up (`None`) on
//! anything else: an unknown key, a repeated key, a `null`, a lone surrogate, a fraction where an
//! integer belongs, other whitespace or ordering than JSON allows. The caller then decodes the
//! item with the general serde path, so the fast path never changes a result, it only skips
//! work; a differential test and the `decode` fuzz target hold it to that.
//!
//! Everything it accepts is valid JSON: strings are checked for control characters and escapes,
//! integers for JSON's grammar, and every separator is checked.

use std::borrow::Cow;
use std::sync::Arc;

use super::codes::lenient;
use super::{
    BusinessCard, Channels, ChannelsShopOrder, ChannelsShopProduct, EnterSession, Envelope, Event,
    File, Image, Link, Location, MessageContent, MiniProgram, MsgSendFail, Origin,
    RejectCustomerMsgSwitchChange, ServicerRecallMsg, ServicerStatusChange, SessionStatusChange,
    Text, UserRecallMsg, Video, Voice, WechatChannels,
};
use crate::ids::Interner;
use crate::{ExternalUserId, MediaId, MsgId, OpenKfId, UserId};

/// Decodes the item at the start of `text`; returns its length, envelope and content, or `None`
/// when the item is not of the simple shape.
pub(super) fn item(
    text: &str,
    interner: &mut Interner,
) -> Option<(usize, Envelope, MessageContent)> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    p.byte(b'{')?;
    let mut msgid = None;
    let mut open_kfid = None;
    let mut external_userid = None;
    let mut send_time = None;
    let mut origin = None;
    let mut servicer_userid = None;
    let mut msgtype: Option<&str> = None;
    let mut content = None;
    loop {
        p.ws();
        let key = p.string()?;
        p.ws();
        p.byte(b':')?;
        p.ws();
        match key {
            "msgid" if msgid.is_none() => msgid = Some(p.string()?),
            "open_kfid" if open_kfid.is_none() => open_kfid = Some(p.string()?),
            "external_userid" if external_userid.is_none() => external_userid = Some(p.string()?),
            "send_time" if send_time.is_none() => send_time = Some(p.integer()?),
            "origin" if origin.is_none() => origin = Some(u32::try_from(p.integer()?).ok()?),
            "servicer_userid" if servicer_userid.is_none() => servicer_userid = Some(p.string()?),
            "msgtype" if msgtype.is_none() => msgtype = Some(p.string()?),
            // The payload, once the msgtype is known (WeChat writes msgtype first).
            payload if content.is_none() && msgtype == Some(payload) => {
                content = Some(p.payload(payload, interner)?);
            }
            _ => return None,
        }
        p.ws();
        match p.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    let mut intern = |id: Option<&str>| id.map(|id| interner.intern(id));
    let envelope = Envelope {
        msgid: MsgId::from_shared(Arc::from(msgid?)),
        open_kfid: intern(open_kfid).map(OpenKfId::from_shared),
        external_userid: intern(external_userid).map(ExternalUserId::from_shared),
        send_time: send_time?,
        origin: Origin::from(origin?),
        servicer_userid: intern(servicer_userid).map(UserId::from_shared),
    };
    Some((p.pos, envelope, content?))
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// A string without escapes or control characters; anything else gives up.
    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.pos;
        let end = start + find_special(self.bytes.get(start..)?)?;
        if self.bytes[end] != b'"' {
            return None; // a backslash or a control character
        }
        self.pos = end + 1;
        // `start` and `end` sit next to ASCII quotes, so both are character boundaries.
        self.text.get(start..end)
    }

    /// A non-negative JSON integer (`0` or no leading zero), without fraction or exponent.
    fn integer(&mut self) -> Option<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(&b) = self.bytes.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.pos += 1;
        }
        let digits = self.pos - start;
        let leading_zero = digits > 1 && self.bytes[start] == b'0';
        let fraction = matches!(self.bytes.get(self.pos), Some(b'.' | b'e' | b'E'));
        (digits > 0 && !leading_zero && !fraction).then_some(value)
    }

    /// A string with JSON's escapes decoded; borrowed when it has none. Gives up on a lone
    /// surrogate (serde_json rejects it) and on control characters.
    fn text(&mut self) -> Option<Cow<'a, str>> {
        self.byte(b'"')?;
        let start = self.pos;
        let end = start + find_special(self.bytes.get(start..)?)?;
        if self.bytes[end] == b'"' {
            self.pos = end + 1;
            return Some(Cow::Borrowed(self.text.get(start..end)?));
        }
        let mut out = String::with_capacity(end - start + 16);
        out.push_str(self.text.get(start..end)?);
        self.pos = end;
        loop {
            match self.next()? {
                b'"' => return Some(Cow::Owned(out)),
                b'\\' => self.escape(&mut out)?,
                _ => return None, // a control character
            }
            let run = self.pos;
            let end = run + find_special(self.bytes.get(run..)?)?;
            // `run` follows an ASCII byte and `end` is at one: both are character boundaries.
            out.push_str(self.text.get(run..end)?);
            self.pos = end;
        }
    }

    /// The escape after a backslash, appended to `out`.
    fn escape(&mut self, out: &mut String) -> Option<()> {
        let c = match self.next()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => match self.hex4()? {
                high @ 0xD800..=0xDBFF => {
                    if self.bytes.get(self.pos..self.pos + 2)? != b"\\u" {
                        return None;
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                }
                code => char::from_u32(code)?, // `None` for a lone low surrogate
            },
            _ => return None,
        };
        out.push(c);
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4)?;
        let mut value = 0;
        for &d in digits {
            value = value * 16 + char::from(d).to_digit(16)?;
        }
        self.pos += 4;
        Some(value)
    }

    /// A JSON number (integer, fraction or exponent) as `f64`, parsed by serde_json itself so
    /// that the value is bit-for-bit what the general path gets.
    fn float(&mut self) -> Option<f64> {
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        let number = self.text.get(start..self.pos)?;
        if number.is_empty() {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(number);
        let value = lenient::f64_or_string(&mut de).ok()?;
        de.end().ok()?;
        Some(value)
    }

    /// A code (`fail_type`, `status`, …): a plain JSON integer that fits in `u32`.
    fn code<T: From<u32>>(&mut self) -> Option<T> {
        Some(T::from(u32::try_from(self.integer()?).ok()?))
    }

    /// An object, calling `field` for each key after its `:`; `{}` is accepted.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.byte(b'{')?;
        self.ws();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Some(());
        }
        self.member(&mut field)?;
        self.members(field)
    }

    /// `"key": value`, the value read by `field`.
    fn member(&mut self, field: &mut impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        let key = self.string()?;
        self.ws();
        self.byte(b':')?;
        self.ws();
        field(self, key)
    }

    /// The rest of an object after a member: `, "key": value` until the closing `}`.
    fn members(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        loop {
            self.ws();
            match self.next()? {
                b',' => {
                    self.ws();
                    self.member(&mut field)?;
                }
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The payload object of `msgtype`; `None` for the types left to the general path.
    fn payload(&mut self, msgtype: &str, interner: &mut Interner) -> Option<MessageContent> {
        Some(match msgtype {
            "text" => {
                let (mut content, mut menu_id) = (None, None);
                self.object(|p, key| match key {
                    "content" => put(&mut content, p.text()?),
                    "menu_id" => put(&mut menu_id, p.text()?),
                    _ => None,
                })?;
                MessageContent::Text(Text {
                    content: content?.into_owned(),
                    menu_id: menu_id.map(Cow::into_owned),
                })
            }
            "image" | "voice" | "video" | "file" => {
                let mut media_id = None;
                self.object(|p, key| match key {
                    "media_id" => put(&mut media_id, MediaId::from_shared(p.shared()?)),
                    _ => None,
                })?;
                let media_id = media_id?;
                match msgtype {
                    "image" => MessageContent::Image(Image { media_id }),
                    "voice" => MessageContent::Voice(Voice { media_id }),
                    "video" => MessageContent::Video(Video { media_id }),
                    _ => MessageContent::File(File { media_id }),
                }
            }
            "location" => {
                let (mut latitude, mut longitude, mut name, mut address) = (None, None, None, None);
                self.object(|p, key| match key {
                    "latitude" => put(&mut latitude, p.float()?),
                    "longitude" => put(&mut longitude, p.float()?),
                    "name" => put(&mut name, p.owned()?),
                    "address" => put(&mut address, p.owned()?),
                    _ => None,
                })?;
                MessageContent::Location(Location {
                    latitude: latitude?,
                    longitude: longitude?,
                    name,
                    address,
                })
            }
            "link" => {
                let mut link = Link {
                    title: None,
                    desc: None,
                    url: None,
                    pic_url: None,
                };
                self.object(|p, key| match key {
                    "title" => put(&mut link.title, p.owned()?),
                    "desc" => put(&mut link.desc, p.owned()?),
                    "url" => put(&mut link.url, p.owned()?),
                    "pic_url" => put(&mut link.pic_url, p.owned()?),
                    _ => None,
                })?;
                MessageContent::Link(Box::new(link))
            }
            "business_card" => {
                let mut userid = None;
                self.object(|p, key| match key {
                    "userid" => put(&mut userid, UserId::from_shared(p.shared()?)),
                    _ => None,
                })?;
                MessageContent::BusinessCard(BusinessCard { userid: userid? })
            }
            "miniprogram" => {
                let mut card = MiniProgram {
                    title: None,
                    appid: None,
                    pagepath: None,
                    thumb_media_id: None,
                };
                self.object(|p, key| match key {
                    "title" => put(&mut card.title, p.owned()?),
                    "appid" => put(&mut card.appid, p.owned()?),
                    "pagepath" => put(&mut card.pagepath, p.owned()?),
                    "thumb_media_id" => {
                        put(&mut card.thumb_media_id, MediaId::from_shared(p.shared()?))
                    }
                    _ => None,
                })?;
                MessageContent::MiniProgram(Box::new(card))
            }
            "channels_shop_product" => {
                let mut product = ChannelsShopProduct {
                    product_id: None,
                    head_img: None,
                    title: None,
                    sales_price: None,
                    shop_nickname: None,
                    shop_head_img: None,
                };
                self.object(|p, key| match key {
                    "product_id" => put(&mut product.product_id, p.owned()?),
                    "head_img" => put(&mut product.head_img, p.owned()?),
                    "title" => put(&mut product.title, p.owned()?),
                    // A number here is kept as its text by the general path.
                    "sales_price" => put(&mut product.sales_price, p.owned()?),
                    "shop_nickname" => put(&mut product.shop_nickname, p.owned()?),
                    "shop_head_img" => put(&mut product.shop_head_img, p.owned()?),
                    _ => None,
                })?;
                MessageContent::ChannelsShopProduct(Box::new(product))
            }
            "channels_shop_order" => {
                let mut order = ChannelsShopOrder {
                    order_id: None,
                    product_titles: None,
                    price_wording: None,
                    state: None,
                    image_url: None,
                    shop_nickname: None,
                };
                self.object(|p, key| match key {
                    "order_id" => put(&mut order.order_id, p.owned()?),
                    "product_titles" => put(&mut order.product_titles, p.owned()?),
                    "price_wording" => put(&mut order.price_wording, p.owned()?),
                    "state" => put(&mut order.state, p.owned()?),
                    "image_url" => put(&mut order.image_url, p.owned()?),
                    "shop_nickname" => put(&mut order.shop_nickname, p.owned()?),
                    _ => None,
                })?;
                MessageContent::ChannelsShopOrder(Box::new(order))
            }
            "channels" => {
                let mut channels = Channels {
                    sub_type: None,
                    nickname: None,
                    title: None,
                };
                self.object(|p, key| match key {
                    "sub_type" => put(&mut channels.sub_type, p.code()?),
                    "nickname" => put(&mut channels.nickname, p.owned()?),
                    "title" => put(&mut channels.title, p.owned()?),
                    _ => None,
                })?;
                MessageContent::Channels(channels)
            }
            "event" => MessageContent::Event(self.event(interner)?),
            _ => return None,
        })
    }

    fn owned(&mut self) -> Option<String> {
        self.text().map(Cow::into_owned)
    }

    fn shared(&mut self) -> Option<Arc<str>> {
        self.text().map(|text| Arc::from(text.as_ref()))
    }

    /// An id inside an event; repeated ids (the account, customers, servicers) share memory.
    fn id(&mut self, interner: &mut Interner) -> Option<Arc<str>> {
        Some(interner.intern(&self.text()?))
    }

    /// `wechat_channels` of `enter_session`.
    fn wechat_channels(&mut self) -> Option<WechatChannels> {
        let mut channels = WechatChannels::default();
        self.object(|p, key| match key {
            "nickname" => put(&mut channels.nickname, p.owned()?),
            "shop_nickname" => put(&mut channels.shop_nickname, p.owned()?),
            "scene" => put(&mut channels.scene, u32::try_from(p.integer()?).ok()?),
            _ => None,
        })?;
        Some(channels)
    }

    /// An `event` object whose first key is `event_type`, of one of the seven documented types,
    /// with only that type's documented fields.
    fn event(&mut self, interner: &mut Interner) -> Option<Event> {
        self.byte(b'{')?;
        self.ws();
        if self.string()? != "event_type" {
            return None;
        }
        self.ws();
        self.byte(b':')?;
        self.ws();
        let event_type = self.string()?;
        macro_rules! event {
            ($ty:ident, |$p:ident, $e:ident| { $($key:literal => $read:expr,)+ }) => {{
                let mut $e = $ty::default();
                self.members(|$p, key| match key {
                    $( $key => $read, )+
                    _ => None,
                })?;
                Event::from($e)
            }};
        }
        let open = |p: &mut Self, i: &mut Interner| p.id(i).map(OpenKfId::from_shared);
        let user = |p: &mut Self, i: &mut Interner| p.id(i).map(ExternalUserId::from_shared);
        let servicer = |p: &mut Self, i: &mut Interner| p.id(i).map(UserId::from_shared);
        let msgid = |p: &mut Self| p.shared().map(MsgId::from_shared);
        Some(match event_type {
            "enter_session" => event!(EnterSession, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "external_userid" => put(&mut e.external_userid, user(p, interner)?),
                "scene" => put(&mut e.scene, p.owned()?),
                "scene_param" => put(&mut e.scene_param, p.owned()?),
                "welcome_code" => put(&mut e.welcome_code, p.owned()?),
                "wechat_channels" => put(&mut e.wechat_channels, p.wechat_channels()?),
            }),
            "msg_send_fail" => event!(MsgSendFail, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "external_userid" => put(&mut e.external_userid, user(p, interner)?),
                "fail_msgid" => put(&mut e.fail_msgid, msgid(p)?),
                "fail_type" => put(&mut e.fail_type, p.code()?),
            }),
            "servicer_status_change" => event!(ServicerStatusChange, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "servicer_userid" => put(&mut e.servicer_userid, servicer(p, interner)?),
                "status" => put(&mut e.status, p.code()?),
                "stop_type" => put(&mut e.stop_type, p.code()?),
            }),
            "session_status_change" => event!(SessionStatusChange, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "external_userid" => put(&mut e.external_userid, user(p, interner)?),
                "change_type" => put(&mut e.change_type, p.code()?),
                "old_servicer_userid" => put(&mut e.old_servicer_userid, servicer(p, interner)?),
                "new_servicer_userid" => put(&mut e.new_servicer_userid, servicer(p, interner)?),
                "msg_code" => put(&mut e.msg_code, p.owned()?),
            }),
            "user_recall_msg" => event!(UserRecallMsg, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "external_userid" => put(&mut e.external_userid, user(p, interner)?),
                "recall_msgid" => put(&mut e.recall_msgid, msgid(p)?),
            }),
            "servicer_recall_msg" => event!(ServicerRecallMsg, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "external_userid" => put(&mut e.external_userid, user(p, interner)?),
                "recall_msgid" => put(&mut e.recall_msgid, msgid(p)?),
                "servicer_userid" => put(&mut e.servicer_userid, servicer(p, interner)?),
            }),
            "reject_customer_msg_switch_change" => event!(RejectCustomerMsgSwitchChange, |p, e| {
                "open_kfid" => put(&mut e.open_kfid, open(p, interner)?),
                "external_userid" => put(&mut e.external_userid, user(p, interner)?),
                "servicer_userid" => put(&mut e.servicer_userid, servicer(p, interner)?),
                "reject_switch" => put(&mut e.reject_switch, p.code()?),
            }),
            // An unknown type keeps its raw object: the general path does that.
            _ => return None,
        })
    }
}

/// Fills an empty slot; a repeated key (`Some` already) gives up, as serde's derive rejects it.
fn put<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// Index of the first `"`, `\` or control character (< 0x20) in `bytes`.
///
/// Eight bytes at a time ("SWAR"): the classic zero-byte test applied to `x ^ c` finds a byte
/// equal to `c`, and `x - 0x20` borrows into the high bit of a byte below 0x20. The lowest
/// flagged byte is exact, which is all this needs.
fn find_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGHS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert_eq!(find_special(&bytes), Some(at), "{len} {at} {special}");
                }
            }
            assert_eq!(find_special(&vec![b'a'; len]), None);
            // Bytes at and above 0x20, including UTF-8 continuation bytes, are not special.
            let text = "中文 ~!#$%&'()*+".repeat(3);
            assert_eq!(find_special(text.as_bytes()), None);
        }
    }

    #[test]
    fn the_common_shapes_take_the_fast_path() {
        let mut interner = Interner::default();
        let text = r#"{"msgid":"m1","open_kfid":"wk1","external_userid":"wm1","send_time":1700000000,"origin":3,"msgtype":"text","text":{"content":"你好","menu_id":"1"}},{"#;
        let (len, envelope, content) = item(text, &mut interner).unwrap();
        assert_eq!(&text[len..], ",{");
        assert_eq!(envelope.send_time, 1_700_000_000);
        assert!(matches!(content, MessageContent::Text(t) if t.content == "你好"));
        let image = r#"{ "msgid" : "m2", "send_time":0,"origin":5,"servicer_userid":"s","msgtype":"image","image":{"media_id":"M"} }"#;
        assert!(item(image, &mut interner).is_some());
        let escaped = r#"{"msgid":"m3","send_time":0,"origin":3,"msgtype":"text","text":{"content":"a\n\"b\"\/\u4f60\ud83d\ude00"}}"#;
        let (_, _, content) = item(escaped, &mut interner).unwrap();
        assert!(matches!(content, MessageContent::Text(t) if t.content == "a\n\"b\"/你😀"));
        for text in [
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"location","location":{"latitude":23.1291,"longitude":-113,"name":"某\t地"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"link","link":{"title":"t","desc":"d","url":"u","pic_url":"p"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"business_card","business_card":{"userid":"lisi"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"miniprogram","miniprogram":{"title":"t","appid":"a","pagepath":"p","thumb_media_id":"M"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"channels","channels":{"sub_type":1,"nickname":"n","title":"t"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"channels_shop_product","channels_shop_product":{"product_id":"P","sales_price":"1990"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":3,"msgtype":"channels_shop_order","channels_shop_order":{"order_id":"O","state":"待发货"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"enter_session","open_kfid":"k","scene":"s","wechat_channels":{"nickname":"n","scene":1}}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"msg_send_fail","fail_msgid":"f","fail_type":10}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"servicer_status_change","servicer_userid":"z","status":2,"stop_type":1}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"session_status_change","change_type":3,"old_servicer_userid":"z","new_servicer_userid":"l","msg_code":"c"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"user_recall_msg","recall_msgid":"r"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"servicer_recall_msg","recall_msgid":"r","servicer_userid":"z"}}"#,
            r#"{"msgid":"m","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"reject_customer_msg_switch_change","reject_switch":1}}"#,
        ] {
            let (len, envelope, content) = item(text, &mut interner).expect(text);
            assert_eq!(len, text.len());
            let general = super::super::decode::decode(text, &mut Interner::default()).unwrap();
            assert_eq!((envelope, content), general, "{text}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_general_path() {
        let mut interner = Interner::default();
        for text in [
            r#"{"msgid":"m\"1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":01,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":1.5,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x\ud800"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x\udc00\ud800"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x\q"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":null}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":4,"msgtype":"event","event":{"open_kfid":"k","event_type":"enter_session"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"enter_session","event_type":"enter_session"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"new_kind","x":1}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"msg_send_fail","fail_type":4294967296}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"location","location":{"latitude":1,"longitude":1e}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"msgmenu","msgmenu":{}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"},"extra":1}"#,
            r#"{"msgid":"m1","msgid":"m2","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"text":{"content":"x"},"msgid":"m1","send_time":1,"origin":3,"msgtype":"text"}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"location","location":{}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x",}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"}"#,
            "{\"msgid\":\"m\u{1}\",\"send_time\":1,\"origin\":3,\"msgtype\":\"text\",\"text\":{\"content\":\"x\"}}",
            r#"{"msgid":"m1","send_time":99999999999999999999,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text"}"#,
        ] {
            assert!(item(text, &mut interner).is_none(), "{text}");
        }
    }

    use proptest::prelude::*;

    /// Strings that stay on the fast path, and strings that must leave it.
    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[a-zA-Z0-9_-]{0,40}",
            12 => "[中文字符 ~!#$%&'()*+,./:;<=>?@^`{|}]{0,20}",
            1 => any::<String>(),
        ]
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just(""),
            Just(""),
            Just(" "),
            Just("\n  "),
            Just("\t"),
            Just("\r\n")
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => any::<u64>().prop_map(|n| n.to_string()),
            8 => any::<u32>().prop_map(|n| n.to_string()),
            1 => Just("0".to_owned()),
            1 => Just("01".to_owned()),
            1 => Just("1.0".to_owned()),
            1 => Just("1e3".to_owned()),
            1 => Just("-1".to_owned()),
            1 => Just("18446744073709551616".to_owned()),
        ]
    }

    prop_compose! {
        fn item_text()(
            msgid in string(), open_kfid in string(), user in string(), servicer in proptest::option::of(string()),
            send_time in number(), origin in number(),
            msgtype in prop_oneof![4 => Just("text"), 1 => Just("image"), 1 => Just("voice"), 1 => Just("location")],
            content in string(), menu_id in proptest::option::of(string()),
            spaces in proptest::collection::vec(ws(), 24),
            shuffle in any::<u64>(),
        ) -> String {
            let json = |s: &str| serde_json::to_string(s).unwrap();
            let w = |i: usize| spaces[i % spaces.len()];
            let payload = match msgtype {
                "text" => match &menu_id {
                    Some(m) => format!("{{{}\"content\"{}:{}{},\"menu_id\":{}}}", w(1), w(2), json(&content), w(3), json(m)),
                    None => format!("{{\"content\":{}{}}}", json(&content), w(4)),
                },
                "location" => "{\"latitude\":1,\"longitude\":2}".to_owned(),
                _ => format!("{{\"media_id\":{}}}", json(&content)),
            };
            let mut fields = vec![
                format!("\"msgid\":{}{}", w(5), json(&msgid)),
                format!("\"open_kfid\"{}:{}", w(6), json(&open_kfid)),
                format!("\"external_userid\":{}", json(&user)),
                format!("\"send_time\":{}{}", w(7), send_time),
                format!("\"origin\":{}", origin),
                format!("\"msgtype\":{}", json(msgtype)),
                format!("\"{msgtype}\":{}{}", w(8), payload),
            ];
            if let Some(s) = &servicer {
                fields.push(format!("\"servicer_userid\":{}", json(s)));
            }
            // Mostly WeChat's order, sometimes rotated (then the payload may precede msgtype).
            if shuffle % 4 == 0 {
                let k = (shuffle / 4) as usize % fields.len();
                fields.rotate_left(k);
            }
            format!("{}{{{}{}}}{}", w(9), fields.join(&format!("{},{}", w(10), w(11))), w(12), ",{")
        }
    }

    /// A JSON string literal for `s` with random escapes: `\uXXXX` for some characters
    /// (surrogate pairs beyond the BMP), short escapes, and now and then a lone surrogate.
    fn escaped(s: &str, seed: u64) -> String {
        let mut out = String::from("\"");
        let mut state = seed | 1;
        for c in s.chars() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match (state % 16, c) {
                (0, _) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                (1, _) if seed % 31 == 0 => out.push_str("\\ud800"),
                (2, _) => out.push_str("\\/"),
                (3, _) => out.push_str("\\n"),
                (_, '"') => out.push_str("\\\""),
                (_, '\\') => out.push_str("\\\\"),
                (_, c) if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                (_, c) => out.push(c),
            }
        }
        out.push('"');
        out
    }

    prop_compose! {
        /// Items of the other fast-path shapes (and near misses): every payload field drawn
        /// from strings with escapes, numbers of every form, sometimes a null or an extra key.
        fn other_item_text()(
            kind in 0usize..14,
            strings in proptest::collection::vec((string(), any::<u64>()), 6),
            numbers in proptest::collection::vec(prop_oneof![8 => (0u32..20).prop_map(|n| n.to_string()), 2 => number()], 3),
            floats in proptest::collection::vec(prop_oneof![
                Just("23.1291".to_owned()), Just("-113.2644".to_owned()), Just("0".to_owned()),
                Just("1e3".to_owned()), Just("-0.0".to_owned()), Just("1.5E-7".to_owned()),
                Just("01".to_owned()), Just("1.".to_owned()), Just("\"23.5\"".to_owned()),
                any::<f64>().prop_map(|f| f.to_string()),
            ], 2),
            extra in 0u8..12,
        ) -> String {
            let s = |i: usize| escaped(&strings[i].0, strings[i].1);
            let n = |i: usize| numbers[i].clone();
            let payload = match kind {
                0 => format!("{{\"latitude\":{},\"longitude\":{},\"name\":{},\"address\":{}}}", floats[0], floats[1], s(0), s(1)),
                1 => format!("{{\"title\":{},\"desc\":{},\"url\":{},\"pic_url\":{}}}", s(0), s(1), s(2), s(3)),
                2 => format!("{{\"userid\":{}}}", s(0)),
                3 => format!("{{\"title\":{},\"appid\":{},\"pagepath\":{},\"thumb_media_id\":{}}}", s(0), s(1), s(2), s(3)),
                4 => format!("{{\"sub_type\":{},\"nickname\":{},\"title\":{}}}", n(0), s(0), s(1)),
                5 => format!("{{\"product_id\":{},\"head_img\":{},\"title\":{},\"sales_price\":{},\"shop_nickname\":{},\"shop_head_img\":{}}}", s(0), s(1), s(2), s(3), s(4), s(5)),
                6 => format!("{{\"order_id\":{},\"product_titles\":{},\"price_wording\":{},\"state\":{},\"image_url\":{},\"shop_nickname\":{}}}", s(0), s(1), s(2), s(3), s(4), s(5)),
                7 => format!("{{\"event_type\":\"enter_session\",\"open_kfid\":{},\"external_userid\":{},\"scene\":{},\"scene_param\":{},\"welcome_code\":{},\"wechat_channels\":{{\"nickname\":{},\"scene\":{}}}}}", s(0), s(1), s(2), s(3), s(4), s(5), n(0)),
                8 => format!("{{\"event_type\":\"msg_send_fail\",\"open_kfid\":{},\"external_userid\":{},\"fail_msgid\":{},\"fail_type\":{}}}", s(0), s(1), s(2), n(0)),
                9 => format!("{{\"event_type\":\"servicer_status_change\",\"open_kfid\":{},\"servicer_userid\":{},\"status\":{},\"stop_type\":{}}}", s(0), s(1), n(0), n(1)),
                10 => format!("{{\"event_type\":\"session_status_change\",\"open_kfid\":{},\"external_userid\":{},\"change_type\":{},\"old_servicer_userid\":{},\"new_servicer_userid\":{},\"msg_code\":{}}}", s(0), s(1), n(0), s(2), s(3), s(4)),
                11 => format!("{{\"event_type\":\"user_recall_msg\",\"open_kfid\":{},\"external_userid\":{},\"recall_msgid\":{}}}", s(0), s(1), s(2)),
                12 => format!("{{\"event_type\":\"servicer_recall_msg\",\"open_kfid\":{},\"external_userid\":{},\"recall_msgid\":{},\"servicer_userid\":{}}}", s(0), s(1), s(2), s(3)),
                _ => format!("{{\"event_type\":\"reject_customer_msg_switch_change\",\"open_kfid\":{},\"external_userid\":{},\"servicer_userid\":{},\"reject_switch\":{}}}", s(0), s(1), s(2), n(2)),
            };
            // Near misses: a null, a repeated key, an unknown key.
            let payload = match extra {
                0 => payload.replacen(&s(0), "null", 1),
                1 => payload.replacen('}', &format!(",\"x\":{}}}", s(1)), 1),
                2 => payload.replacen('{', "{\"event_type\":\"enter_session\",", 1),
                _ => payload,
            };
            let msgtype = ["location", "link", "business_card", "miniprogram", "channels",
                "channels_shop_product", "channels_shop_order"].get(kind).copied().unwrap_or("event");
            format!("{{\"msgid\":\"m{kind}\",\"send_time\":1,\"origin\":4,\"msgtype\":\"{msgtype}\",\"{msgtype}\":{payload}}},{{")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The same for the other payload shapes and the events.
        #[test]
        fn the_fast_path_agrees_with_the_general_path_on_every_shape(text in other_item_text()) {
            if let Some((len, envelope, content)) = item(&text, &mut Interner::default()) {
                let raw = &text[..len];
                let (general_envelope, general_content) =
                    super::super::decode::decode(raw, &mut Interner::default())
                        .expect("the general path accepts what the fast path accepts");
                prop_assert_eq!(envelope, general_envelope);
                prop_assert_eq!(content, general_content);
                prop_assert!(serde_json::from_str::<serde_json::Value>(raw).is_ok());
            }
        }

        /// Whole pages: `from_slice`, `serde_json::from_slice` (the serde path) and the general
        /// path decode to the same messages and invalid items, and agree on rejecting a body.
        #[test]
        fn the_page_decoders_agree(
            items in proptest::collection::vec(prop_oneof![item_text(), other_item_text()], 0..12),
        ) {
            let items: Vec<&str> = items.iter().map(|t| t.trim().trim_end_matches(",{")).collect();
            let body = format!(
                "{{\"errcode\":0,\"errmsg\":\"ok\",\"next_cursor\":\"c\",\"has_more\":1,\"msg_list\":[{}]}}",
                items.join(",")
            );
            let fast = super::super::SyncMsgResponse::from_slice(body.as_bytes());
            let serde = serde_json::from_slice::<super::super::SyncMsgResponse>(body.as_bytes());
            let general = super::super::SyncMsgResponse::from_slice_general(body.as_bytes());
            prop_assert_eq!(fast.is_ok(), serde.is_ok());
            prop_assert_eq!(fast.is_ok(), general.is_ok());
            if let (Ok(fast), Ok(serde), Ok(general)) = (fast, serde, general) {
                prop_assert_eq!(&fast, &serde);
                prop_assert_eq!(&fast, &general);
                prop_assert_eq!(fast.msg_list.len() + fast.invalid.len(), items.len());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the fast path accepts, the general path decodes to the same message.
        #[test]
        fn the_fast_path_agrees_with_the_general_path(text in item_text()) {
            let trimmed = text.trim_start();
            if let Some((len, envelope, content)) = item(trimmed, &mut Interner::default()) {
                let raw = &trimmed[..len];
                let (general_envelope, general_content) =
                    super::super::decode::decode(raw, &mut Interner::default())
                        .expect("the general path accepts what the fast path accepts");
                prop_assert_eq!(envelope, general_envelope);
                prop_assert_eq!(content, general_content);
                prop_assert!(serde_json::from_str::<serde_json::Value>(raw).is_ok());
            }
        }
    }

    #[test]
    fn the_differential_test_exercises_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = item_text();
        let (mut fast, mut general) = (0, 0);
        for _ in 0..1000 {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            match item(text.trim_start(), &mut Interner::default()) {
                Some(_) => fast += 1,
                None => general += 1,
            }
        }
        assert!(
            fast > 200 && general > 200,
            "fast {fast}, general {general}"
        );
    }

    #[test]
    fn the_differential_test_of_the_other_shapes_exercises_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = other_item_text();
        let (mut fast, mut general) = (0, 0);
        for _ in 0..1000 {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            match item(&text, &mut Interner::default()) {
                Some(_) => fast += 1,
                None => general += 1,
            }
        }
        assert!(
            fast > 200 && general > 200,
            "fast {fast}, general {general}"
        );
    }
}
