//! A tiny, tolerant, allocation-free scanner for the flat XML documents WeCom sends.
//!
//! Callback envelopes and decrypted callback events are one root element with flat children whose
//! text is either plain (possibly with entities) or CDATA. A DOM parser would allocate a node per
//! element; this scanner walks the children of the root once and hands out borrowed slices, so
//! extracting `<Encrypt>` or the fields of an event costs one linear pass and no allocation.
//!
//! Tolerances (on purpose): any root element name, an optional BOM, XML declaration, comments and
//! processing instructions, attributes, text between children, children in any order, nested
//! children (skipped as a whole), CDATA or plain text, surrounding whitespace. It is not a
//! validating parser: it only promises to never panic and to report truncated documents.
//!
//! [`strict`] reads documents exactly as WeCom writes them in one cheaper pass and says
//! "unusual" on anything else, for the caller to start over with [`children`].

use std::borrow::Cow;

/// A reason why a document could not be scanned; becomes [`super::CryptoError::MalformedXml`].
pub(crate) type XmlResult<T> = Result<T, &'static str>;

/// One child element of the root: its name and its raw (undecoded) content.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element<'a> {
    pub(crate) name: &'a str,
    pub(crate) content: &'a str,
    /// The text, when the scanner already found it in one of the simple forms (a single CDATA
    /// section, or plain text without `&`): spares [`text`] a second pass.
    simple: Option<&'a str>,
}

impl<'a> Element<'a> {
    /// The decoded text of the element (CDATA unwrapped, entities decoded, whitespace trimmed).
    pub(crate) fn text(&self) -> XmlResult<Cow<'a, str>> {
        match self.simple {
            Some(value) => Ok(Cow::Borrowed(value)),
            None => text(self.content),
        }
    }
}

/// An iterator over the child elements of a document's root element.
#[derive(Debug, Clone)]
pub(crate) struct Children<'a> {
    doc: &'a str,
    pos: usize,
    done: bool,
}

/// Skips the prolog, opens the root element and returns an iterator over its children.
pub(crate) fn children(doc: &str) -> XmlResult<Children<'_>> {
    let b = doc.as_bytes();
    let mut i = if doc.starts_with('\u{feff}') { 3 } else { 0 };
    loop {
        i = skip_ws(b, i);
        if i >= b.len() {
            return Err("no root element");
        }
        if b[i] != b'<' {
            return Err("text before the root element");
        }
        match skip_markup(doc, i)? {
            Some(next) => i = next,
            None => {
                let tag = start_tag(b, i)?;
                return Ok(Children {
                    doc,
                    pos: tag.end,
                    done: tag.self_closing,
                });
            }
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = XmlResult<Element<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.advance();
        match result {
            Ok(Some(element)) => Some(Ok(element)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(reason) => {
                self.done = true;
                Some(Err(reason))
            }
        }
    }
}

impl<'a> Children<'a> {
    fn advance(&mut self) -> XmlResult<Option<Element<'a>>> {
        let doc = self.doc;
        let b = doc.as_bytes();
        loop {
            // Text directly inside the root is ignored.
            let lt = find_byte(doc, self.pos, b'<').ok_or("unterminated root element")?;
            if let Some(next) = skip_markup(doc, lt)? {
                self.pos = next;
                continue;
            }
            if b.get(lt + 1) == Some(&b'/') {
                // The root's end tag; whatever follows it is ignored.
                return Ok(None);
            }
            let tag = start_tag(b, lt)?;
            let name = &doc[lt + 1..tag.name_end];
            if tag.self_closing {
                self.pos = tag.end;
                return Ok(Some(Element {
                    name,
                    content: "",
                    simple: Some(""),
                }));
            }
            if let Some((value, content_end, after)) = simple_value(doc, tag.end, name) {
                self.pos = after;
                return Ok(Some(Element {
                    name,
                    content: &doc[tag.end..content_end],
                    simple: Some(value),
                }));
            }
            let (content_end, after) = matching_end(doc, tag.end, name)?;
            self.pos = after;
            return Ok(Some(Element {
                name,
                content: &doc[tag.end..content_end],
                simple: None,
            }));
        }
    }
}

/// One step of the [`Strict`] scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// A child `(name, text)` in one of the forms WeCom sends.
    Element(&'a str, &'a str),
    /// The root's end tag.
    End,
    /// Anything else: start over with the general [`children`] scanner.
    Unusual,
}

/// A strict single-pass scanner for documents exactly as WeCom writes them: `<xml>`, then
/// children `<Name><![CDATA[text]]></Name>` or `<Name>text</Name>` (names of ASCII letters,
/// digits and `_`, plain text without `<` or `&`), optionally separated by whitespace, then `</`.
///
/// Every document it reads, it reads exactly as [`children`] does (same names, same texts, the
/// same end), only cheaper: no prolog, markup or attribute handling and one byte test per name
/// byte. On anything else it says [`Step::Unusual`] and the caller falls back to [`children`]; a
/// differential test and the `callback_xml` fuzz target hold the two to identical results.
#[derive(Debug, Clone)]
pub(crate) struct Strict<'a> {
    doc: &'a str,
    pos: usize,
}

/// Starts the strict scanner, or `None` when the document does not open with `<xml>`.
#[inline]
pub(crate) fn strict(doc: &str) -> Option<Strict<'_>> {
    doc.as_bytes()
        .starts_with(b"<xml>")
        .then_some(Strict { doc, pos: 5 })
}

impl<'a> Strict<'a> {
    /// The next child, the end of the root, or [`Step::Unusual`] (after which it stays unusual).
    #[inline]
    pub(crate) fn step(&mut self) -> Step<'a> {
        match self.element() {
            Some(step) => step,
            None => {
                self.pos = usize::MAX;
                Step::Unusual
            }
        }
    }

    #[inline]
    fn element(&mut self) -> Option<Step<'a>> {
        let doc = self.doc;
        let b = doc.as_bytes();
        let mut i = self.pos;
        while is_xml_ws(*b.get(i)?) {
            i += 1;
        }
        if b[i] != b'<' {
            return None;
        }
        let name_start = i + 1;
        match b.get(name_start) {
            Some(b'/') => return Some(Step::End),
            // `<!` and `<?` are markup, not elements.
            Some(b'!' | b'?') | None => return None,
            Some(_) => {}
        }
        let i = name_end(b, name_start)?;
        let name = doc.get(name_start..i)?;
        let from = i + 1;
        let (value, close) = if has_prefix_at(b, from, b"<![CDATA[") {
            // The first `]]>` ends the section, as in `simple_value`.
            let mut at = from + 9;
            let end = loop {
                let bracket = find_byte_short(b, at, b']')?;
                if has_prefix_at(b, bracket, b"]]>") {
                    break bracket;
                }
                at = bracket + 1;
            };
            (doc.get(from + 9..end)?, end + 3)
        } else {
            let lt = find_byte_short(b, from, b'<')?;
            let raw = doc.get(from..lt)?;
            if raw.as_bytes().contains(&b'&') {
                return None;
            }
            (raw.trim_matches(is_xml_ws_char), lt)
        };
        // `</name>`, compared in words: the names are a handful of bytes.
        let after = close + 3 + name.len();
        let end_tag = b.get(close..after)?;
        if !(end_tag.starts_with(b"</")
            && end_tag.ends_with(b">")
            && same_short(&end_tag[2..end_tag.len() - 1], name.as_bytes()))
        {
            return None;
        }
        self.pos = after;
        Some(Step::Element(name, value))
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags (high bit) the bytes of `word` equal to `byte`; the lowest flag is exact (borrows only
/// flag bytes above a true one).
#[inline]
fn flag_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The index of the `>` ending a start tag's name that begins at `from`, if the name is one
/// [`Strict`] accepts: one or more bytes, none of them below `0` (0x30: whitespace, `/`, quotes
/// and `!` are all below it), so that [`start_tag`] reads the same name, no attributes and no
/// self-closing `/`. Eight bytes per step; names are a handful of bytes.
#[inline]
fn name_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let chunk: [u8; 8] = b.get(i..i + 8)?.try_into().ok()?;
        let word = u64::from_le_bytes(chunk);
        let gt = flag_equal(word, b'>');
        // Bytes below 0x30 (`!word` keeps bytes >= 0x80 out); the lowest flag is exact.
        let low = word.wrapping_sub(ONES * 0x30) & !word & HIGHS;
        if gt != 0 {
            let first_gt = gt & gt.wrapping_neg();
            if low & (first_gt - 1) != 0 {
                return None;
            }
            let end = i + (gt.trailing_zeros() / 8) as usize;
            return (end > from).then_some(end);
        }
        if low != 0 {
            return None;
        }
        i += 8;
    }
}

/// The index of the first `needle` in `b[from..]`, eight bytes per step over the first 64 (an
/// event's values are a few dozen bytes, where memchr's setup costs more than it saves), memchr
/// beyond (the `Encrypt` value is ~470 bytes).
#[inline]
fn find_byte_short(b: &[u8], from: usize, needle: u8) -> Option<usize> {
    let stop = from.saturating_add(64);
    let mut i = from;
    while i < stop {
        let Some(chunk) = b.get(i..i + 8) else { break };
        let zero = flag_equal(u64::from_le_bytes(chunk.try_into().ok()?), needle);
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr(needle, b.get(i..)?).map(|at| i + at)
}

/// `a == b` for short slices, in two overlapping word compares where the length allows.
#[inline]
fn same_short(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> Option<[u8; N]> {
        s.get(at..at + N)?.try_into().ok()
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        4..8 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        _ => a == b,
    }
}

/// The position of a start tag's parts.
struct StartTag {
    /// Index just past the element name.
    name_end: usize,
    /// Index just past the closing `>`.
    end: usize,
    self_closing: bool,
}

/// Reads the start tag at `lt` (which holds `<`).
#[inline]
fn start_tag(b: &[u8], lt: usize) -> XmlResult<StartTag> {
    let mut i = lt + 1;
    while i < b.len() && !is_name_end(b[i]) {
        i += 1;
    }
    if i == lt + 1 {
        return Err("empty element name");
    }
    let name_end = i;
    // Attributes may quote a `>`; skip quoted runs.
    let mut quote = 0u8;
    while i < b.len() {
        let c = b[i];
        if quote != 0 {
            if c == quote {
                quote = 0;
            }
        } else if c == b'"' || c == b'\'' {
            quote = c;
        } else if c == b'>' {
            return Ok(StartTag {
                name_end,
                end: i + 1,
                self_closing: b[i - 1] == b'/',
            });
        }
        i += 1;
    }
    Err("unterminated start tag")
}

/// The fast path for the forms WeCom sends, `<N><![CDATA[v]]></N>` and `<N>v</N>` (no `&`):
/// returns (text, content end, index after the end tag), or `None` for anything else, which
/// then goes through the general [`matching_end`] and [`text`].
#[inline]
fn simple_value<'a>(doc: &'a str, from: usize, name: &str) -> Option<(&'a str, usize, usize)> {
    let b = doc.as_bytes();
    if has_prefix_at(b, from, b"<![CDATA[") {
        let end = find_str(doc, from + 9, "]]>")?;
        let close = end + 3;
        let after = end_tag_at(b, close, name)?;
        return Some((&doc[from + 9..end], close, after));
    }
    let lt = find_byte(doc, from, b'<')?;
    let after = end_tag_at(b, lt, name)?;
    let raw = &doc[from..lt];
    if raw.as_bytes().contains(&b'&') {
        return None;
    }
    Some((raw.trim_matches(is_xml_ws_char), lt, after))
}

/// If `</name>` starts at `at`, the index after it.
#[inline]
fn end_tag_at(b: &[u8], at: usize, name: &str) -> Option<usize> {
    let n = name.len();
    let ok = has_prefix_at(b, at, b"</")
        && has_prefix_at(b, at + 2, name.as_bytes())
        && b.get(at + 2 + n) == Some(&b'>');
    ok.then_some(at + 3 + n)
}

/// Finds the end tag matching an element opened just before `from`; returns (content end, index
/// after the end tag). Nested elements are counted so that a child of the same name nests.
fn matching_end(doc: &str, from: usize, name: &str) -> XmlResult<(usize, usize)> {
    let b = doc.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    loop {
        let lt = find_byte(doc, i, b'<').ok_or("unterminated element")?;
        if let Some(next) = skip_markup(doc, lt)? {
            i = next;
            continue;
        }
        if b.get(lt + 1) == Some(&b'/') {
            let gt = find_byte(doc, lt, b'>').ok_or("unterminated end tag")?;
            if depth == 0 {
                let end_name = doc[lt + 2..gt].trim_end_matches(is_xml_ws_char);
                if end_name.len() != name.len()
                    || !has_prefix_at(end_name.as_bytes(), 0, name.as_bytes())
                {
                    return Err("mismatched end tag");
                }
                return Ok((lt, gt + 1));
            }
            depth -= 1;
            i = gt + 1;
            continue;
        }
        let tag = start_tag(b, lt)?;
        if !tag.self_closing {
            depth += 1;
        }
        i = tag.end;
    }
}

/// If `lt` starts a comment, CDATA section, processing instruction or declaration, returns the
/// index after it; `None` for a start or end tag.
#[inline]
fn skip_markup(doc: &str, lt: usize) -> XmlResult<Option<usize>> {
    let b = doc.as_bytes();
    // Most calls are for plain tags: decide on one byte before comparing prefixes.
    let (close, open_len, reason): (&str, usize, &'static str) = match b.get(lt + 1) {
        Some(b'?') => ("?>", 2, "unterminated processing instruction"),
        Some(b'!') => {
            if has_prefix_at(b, lt, b"<![CDATA[") {
                ("]]>", 9, "unterminated CDATA section")
            } else if has_prefix_at(b, lt, b"<!--") {
                ("-->", 4, "unterminated comment")
            } else {
                // A DOCTYPE without an internal subset; entity definitions are not honoured.
                (">", 2, "unterminated declaration")
            }
        }
        _ => return Ok(None),
    };
    match find_str(doc, lt + open_len, close) {
        Some(at) => Ok(Some(at + close.len())),
        None => Err(reason),
    }
}

/// Decodes an element's content: CDATA sections are taken verbatim, text has its entities
/// decoded; whitespace around CDATA is dropped and plain text is trimmed. Child elements inside
/// a value are an error.
pub(crate) fn text(content: &str) -> XmlResult<Cow<'_, str>> {
    let trimmed = content.trim_matches(is_xml_ws_char);
    // Fast path 1: one CDATA section, the common WeCom form.
    if has_prefix_at(trimmed.as_bytes(), 0, b"<![CDATA[") {
        if let Some(end) = find_str(trimmed, 9, "]]>") {
            if end + 3 == trimmed.len() {
                return Ok(Cow::Borrowed(&trimmed[9..end]));
            }
        }
    }
    // Fast path 2: plain text without entities.
    if !trimmed.as_bytes().iter().any(|&c| c == b'<' || c == b'&') {
        return Ok(Cow::Borrowed(trimmed));
    }
    let has_cdata = trimmed.contains("<![CDATA[");
    let mut out = String::with_capacity(trimmed.len());
    let mut rest = trimmed;
    while !rest.is_empty() {
        match rest.find('<') {
            Some(0) => {
                if let Some(after) = rest.strip_prefix("<![CDATA[") {
                    let end = after.find("]]>").ok_or("unterminated CDATA section")?;
                    out.push_str(&after[..end]);
                    rest = &after[end + 3..];
                } else if let Some(after) = rest.strip_prefix("<!--") {
                    let end = after.find("-->").ok_or("unterminated comment")?;
                    rest = &after[end + 3..];
                } else {
                    return Err("unexpected child element in a text value");
                }
            }
            found => {
                let end = found.unwrap_or(rest.len());
                let segment = &rest[..end];
                let segment = if has_cdata {
                    segment.trim_matches(is_xml_ws_char)
                } else {
                    segment
                };
                decode_entities_into(segment, &mut out);
                rest = &rest[end..];
            }
        }
    }
    if has_cdata {
        Ok(Cow::Owned(out))
    } else {
        let trimmed_len = out.trim_end_matches(is_xml_ws_char).len();
        out.truncate(trimmed_len);
        let lead = out.len() - out.trim_start_matches(is_xml_ws_char).len();
        out.drain(..lead);
        Ok(Cow::Owned(out))
    }
}

/// Appends `text` with the five predefined entities and character references decoded. An
/// unknown or malformed reference is kept literally (tolerance beats rejection here).
fn decode_entities_into(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let decoded = after
            .find(';')
            .filter(|&semi| semi <= 10)
            .and_then(|semi| decode_entity(&after[..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let number = name.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse::<u32>().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Finds an ASCII byte from `from` on (SIMD memchr: the `Encrypt` value is ~470 bytes).
#[inline]
fn find_byte(doc: &str, from: usize, needle: u8) -> Option<usize> {
    let hay = doc.as_bytes().get(from..)?;
    // Most distances are short (tag names, ids, numbers): a plain loop first, since memchr's
    // dispatch costs more than it saves there.
    let head = hay.len().min(24);
    if let Some(at) = hay[..head].iter().position(|&c| c == needle) {
        return Some(from + at);
    }
    memchr::memchr(needle, &hay[head..]).map(|at| from + head + at)
}

/// Finds a short ASCII `pattern` from `from` on: memchr for its first byte, then a byte check
/// (`str::find(&str)` sets up a Two-Way search, costly for these 2- and 3-byte needles).
#[inline]
fn find_str(doc: &str, mut from: usize, pattern: &str) -> Option<usize> {
    let b = doc.as_bytes();
    let p = pattern.as_bytes();
    loop {
        let at = find_byte(doc, from, p[0])?;
        if has_prefix_at(b, at, p) {
            return Some(at);
        }
        from = at + 1;
    }
}

/// `b[at..].starts_with(p)`, without panicking past the end.
#[inline]
fn has_prefix_at(b: &[u8], at: usize, p: &[u8]) -> bool {
    // With `p` a literal after inlining, this compiles to a couple of word compares.
    b.get(at..at + p.len()) == Some(p)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_xml_ws(b[i]) {
        i += 1;
    }
    i
}

#[inline]
fn is_name_end(c: u8) -> bool {
    is_xml_ws(c) || c == b'>' || c == b'/'
}

#[inline]
fn is_xml_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
fn is_xml_ws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(doc: &str) -> Vec<(String, String)> {
        children(doc)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.name.to_owned(), e.text().unwrap().into_owned())
            })
            .collect()
    }

    #[test]
    fn reads_cdata_and_plain_children_in_order() {
        let doc = "<?xml version=\"1.0\"?>\n<xml>\n <A><![CDATA[x <y> & z]]></A>\n <B> 12 </B><C/><D a=\"1>2\">q&amp;r&#x4e2d;&#25991;</D></xml>";
        assert_eq!(
            pairs(doc),
            vec![
                ("A".into(), "x <y> & z".into()),
                ("B".into(), "12".into()),
                ("C".into(), "".into()),
                ("D".into(), "q&r中文".into()),
            ]
        );
    }

    #[test]
    fn skips_a_fake_element_hidden_in_cdata() {
        let doc = "<xml><A><![CDATA[<Encrypt>fake</Encrypt>]]></A><Encrypt>real</Encrypt></xml>";
        assert_eq!(pairs(doc)[1], ("Encrypt".into(), "real".into()));
    }

    #[test]
    fn joins_split_cdata_sections() {
        let doc = "<xml><A><![CDATA[a]]]]><![CDATA[>b]]></A></xml>";
        assert_eq!(pairs(doc), vec![("A".into(), "a]]>b".into())]);
    }

    #[test]
    fn skips_nested_children_as_a_whole() {
        let doc = "<xml><A><A>1</A><B/></A><C>2</C></xml>";
        let names: Vec<_> = children(doc).unwrap().map(|e| e.unwrap().name).collect();
        assert_eq!(names, ["A", "C"]);
    }

    #[test]
    fn reports_truncated_documents() {
        for doc in [
            "",
            "  ",
            "x<xml>",
            "<xml",
            "<xml><A>1</A>",
            "<xml><A>1</B></xml>",
            "<xml><A><![CDATA[x</A></xml>",
        ] {
            let failed = match children(doc) {
                Err(_) => true,
                Ok(mut it) => it.any(|e| e.is_err()),
            };
            assert!(failed, "{doc:?} should fail");
        }
    }

    #[test]
    fn keeps_unknown_entities_literally() {
        assert_eq!(text("a &nbsp; &#xZZ; & b").unwrap(), "a &nbsp; &#xZZ; & b");
    }
}
