//! A fast path for the overwhelmingly common item shape: a customer's text or media message.
//!
//! Most of a `sync_msg` page is items like
//! `{"msgid":"…","open_kfid":"…","external_userid":"…","send_time":1,"origin":3,"msgtype":"text","text":{"content":"…"}}`.
//! This parser reads exactly that grammar — known keys, strings without escapes, plain integers —
//! and gives up (`None`) on anything else: an escape, an unknown key, a repeated key, a fraction,
//! other whitespace or ordering than JSON allows. The caller then decodes the item with the
//! general serde path, so the fast path never changes a result, it only skips work; a
//! differential test and the `decode` fuzz target hold it to that.
//!
//! Everything it accepts is valid JSON: strings are checked for control characters, integers
//! for JSON's grammar, and every separator is checked.

use std::sync::Arc;

use super::Origin;
use super::{Envelope, File, Image, MessageContent, Text, Video, Voice};
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
                content = Some(p.payload(payload)?);
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

    /// `{"content":"…"}` (+ `"menu_id"`) for text, `{"media_id":"…"}` for media.
    fn payload(&mut self, msgtype: &str) -> Option<MessageContent> {
        self.byte(b'{')?;
        self.ws();
        match msgtype {
            "text" => {
                let mut content = None;
                let mut menu_id = None;
                loop {
                    let key = self.string()?;
                    self.ws();
                    self.byte(b':')?;
                    self.ws();
                    match key {
                        "content" if content.is_none() => content = Some(self.string()?),
                        "menu_id" if menu_id.is_none() => menu_id = Some(self.string()?),
                        _ => return None,
                    }
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b'}' => break,
                        _ => return None,
                    }
                }
                Some(MessageContent::Text(Text {
                    content: content?.to_owned(),
                    menu_id: menu_id.map(str::to_owned),
                }))
            }
            "image" | "voice" | "video" | "file" => {
                if self.string()? != "media_id" {
                    return None;
                }
                self.ws();
                self.byte(b':')?;
                self.ws();
                let media_id = MediaId::from_shared(Arc::from(self.string()?));
                self.ws();
                self.byte(b'}')?;
                Some(match msgtype {
                    "image" => MessageContent::Image(Image { media_id }),
                    "voice" => MessageContent::Voice(Voice { media_id }),
                    "video" => MessageContent::Video(Video { media_id }),
                    _ => MessageContent::File(File { media_id }),
                })
            }
            _ => None,
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
    }

    #[test]
    fn anything_unusual_is_left_to_the_general_path() {
        let mut interner = Interner::default();
        for text in [
            r#"{"msgid":"m\"1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":01,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":1.5,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
            r#"{"msgid":"m1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x\u0041"}}"#,
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
}
