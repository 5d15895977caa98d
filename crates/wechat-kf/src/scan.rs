//! A structural scanner that splits a JSON object into fields and an array into items.
//!
//! Decoding a page needs each `msg_list` item's extent before decoding it, so that one bad item
//! cannot fail the page. Asking `serde_json` for the extents costs a full validating pass over
//! the page; this scanner only follows strings (jumping through them with `memchr`) and
//! brackets, which is several times faster. It is not a validator on its own: every piece it
//! returns is then parsed strictly by `serde_json` (items, scalar fields, ignored fields), and it
//! checks the separators between pieces, so the page as a whole is still fully validated.
//!
//! It never panics: every index is checked, and malformed input yields [`ScanError`].

/// The input is not structurally valid JSON at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanError {
    /// Byte offset of the problem.
    pub offset: usize,
}

type Result<T> = std::result::Result<T, ScanError>;

/// Deeper nesting than this is rejected rather than tracked (serde_json's own limit is 128).
const MAX_DEPTH: usize = 128;

/// Splits `{"k": v, ...}` into `(raw key with quotes, raw value)` pairs.
///
/// When a key equals `hand_off` (raw, with quotes) and its value is an array, `on_array` is
/// called with the index of the `[` and must return the index just past the matching `]`: the
/// caller parses that array itself, in the same pass.
pub(crate) fn object_fields<'a>(
    text: &'a str,
    hand_off: &str,
    on_array: &mut dyn FnMut(usize) -> Result<usize>,
) -> Result<Vec<(&'a str, &'a str)>> {
    let bytes = text.as_bytes();
    let mut pos = skip_ws(bytes, 0);
    expect(bytes, pos, b'{')?;
    pos = skip_ws(bytes, pos + 1);
    let mut fields = Vec::with_capacity(8);
    if bytes.get(pos) == Some(&b'}') {
        return finish(text, pos + 1, fields);
    }
    loop {
        expect(bytes, pos, b'"')?;
        let key_end = skip_string(bytes, pos)?;
        let key = &text[pos..key_end];
        pos = skip_ws(bytes, key_end);
        expect(bytes, pos, b':')?;
        pos = skip_ws(bytes, pos + 1);
        let value_end = if key == hand_off && bytes.get(pos) == Some(&b'[') {
            on_array(pos)?
        } else {
            skip_value(bytes, pos)?
        };
        if value_end <= pos || value_end > bytes.len() {
            return Err(ScanError { offset: pos });
        }
        fields.push((key, &text[pos..value_end]));
        pos = skip_ws(bytes, value_end);
        match bytes.get(pos) {
            Some(b',') => pos = skip_ws(bytes, pos + 1),
            Some(b'}') => return finish(text, pos + 1, fields),
            _ => return Err(ScanError { offset: pos }),
        }
    }
}

/// Splits `[v, ...]` into raw item texts.
#[cfg(test)]
pub(crate) fn array_items(text: &str) -> Result<Vec<&str>> {
    let bytes = text.as_bytes();
    let mut pos = skip_ws(bytes, 0);
    expect(bytes, pos, b'[')?;
    let mut items = Vec::new();
    let end = array_elements(bytes, pos, &mut |start| {
        let end = skip_value(bytes, start)?;
        items.push(&text[start..end]);
        Ok(end)
    })?;
    pos = end;
    finish(text, pos, items)
}

/// Walks the elements of the array whose `[` is at `start`: `element` is called with the index
/// of each element's first byte and returns the index just past it. Checks the separators and
/// returns the index just past the `]`.
pub(crate) fn array_elements(
    bytes: &[u8],
    start: usize,
    element: &mut dyn FnMut(usize) -> Result<usize>,
) -> Result<usize> {
    expect(bytes, start, b'[')?;
    let mut pos = skip_ws(bytes, start + 1);
    if bytes.get(pos) == Some(&b']') {
        return Ok(pos + 1);
    }
    loop {
        let end = element(pos)?;
        if end <= pos {
            return Err(ScanError { offset: pos });
        }
        pos = skip_ws(bytes, end);
        match bytes.get(pos) {
            Some(b',') => pos = skip_ws(bytes, pos + 1),
            Some(b']') => return Ok(pos + 1),
            _ => return Err(ScanError { offset: pos }),
        }
    }
}

/// Only whitespace may follow the closing bracket.
fn finish<T>(text: &str, pos: usize, value: T) -> Result<T> {
    let end = skip_ws(text.as_bytes(), pos);
    if end == text.len() {
        Ok(value)
    } else {
        Err(ScanError { offset: end })
    }
}

fn expect(bytes: &[u8], pos: usize, byte: u8) -> Result<()> {
    if bytes.get(pos) == Some(&byte) {
        Ok(())
    } else {
        Err(ScanError { offset: pos })
    }
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

/// `pos` is at an opening quote; returns the index just past the closing quote.
fn skip_string(bytes: &[u8], pos: usize) -> Result<usize> {
    let mut i = pos + 1;
    // Most strings (keys, ids) are short: a plain loop beats memchr's setup cost there.
    let short_end = bytes.len().min(i + 24);
    while i < short_end {
        match bytes[i] {
            b'"' => return Ok(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    loop {
        let rest = bytes.get(i..).ok_or(ScanError { offset: pos })?;
        match memchr::memchr2(b'"', b'\\', rest) {
            Some(found) => {
                i += found;
                if bytes[i] == b'"' {
                    return Ok(i + 1);
                }
                // A backslash escapes the next byte, whatever it is; serde_json checks it later.
                i += 2;
            }
            None => return Err(ScanError { offset: pos }),
        }
    }
}

/// `pos` is at the first byte of a value; returns the index just past it.
pub(crate) fn skip_value(bytes: &[u8], pos: usize) -> Result<usize> {
    match bytes.get(pos) {
        Some(b'"') => skip_string(bytes, pos),
        Some(b'{' | b'[') => skip_container(bytes, pos),
        Some(_) => {
            // A scalar: runs until a separator. Its spelling is checked by serde_json later.
            let mut i = pos;
            while let Some(&b) = bytes.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                if matches!(b, b'"' | b'{' | b'[' | b':') {
                    return Err(ScanError { offset: i });
                }
                i += 1;
            }
            if i == pos {
                Err(ScanError { offset: pos })
            } else {
                Ok(i)
            }
        }
        None => Err(ScanError { offset: pos }),
    }
}

/// `pos` is at `{` or `[`; returns the index just past the matching closer.
fn skip_container(bytes: &[u8], pos: usize) -> Result<usize> {
    let mut closers = [0u8; MAX_DEPTH];
    let mut depth = 0usize;
    let mut i = pos;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i = skip_string(bytes, i)?;
                continue;
            }
            b'{' | b'[' => {
                let slot = closers.get_mut(depth).ok_or(ScanError { offset: i })?;
                *slot = if b == b'{' { b'}' } else { b']' };
                depth += 1;
            }
            b'}' | b']' => {
                // depth >= 1 here: the first byte is always an opener.
                depth -= 1;
                if closers[depth] != b {
                    return Err(ScanError { offset: i });
                }
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(ScanError {
        offset: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_objects_and_arrays_with_nested_strings_and_escapes() {
        let text = r#" {"a" : [1, {"b":"}]\"\\"}], "c\"d":"x" , "e":null} "#;
        let fields = object_fields(text, "", &mut |_| unreachable!()).unwrap();
        assert_eq!(
            fields,
            vec![
                (r#""a""#, r#"[1, {"b":"}]\"\\"}]"#),
                (r#""c\"d""#, r#""x""#),
                (r#""e""#, "null"),
            ]
        );
        assert_eq!(
            array_items(fields[0].1).unwrap(),
            vec!["1", r#"{"b":"}]\"\\"}"#]
        );
        assert_eq!(array_items("[]").unwrap(), Vec::<&str>::new());
        assert_eq!(
            object_fields("{}", "", &mut |_| unreachable!()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn rejects_structural_errors_without_panicking() {
        for bad in [
            "",
            "{",
            "[",
            "{\"a\"}",
            "{\"a\":}",
            "[1,]",
            "[1 2]",
            "{\"a\":1,}",
            "[}",
            "{]",
            "[\"unterminated]",
            "[1] x",
            "{\"a\":[1}",
            "[\"\\",
            "[{\"a\":\"b\\\"}]",
            "{\"a\":1\"b\":2}",
        ] {
            let a = object_fields(bad, "", &mut |_| unreachable!());
            let b = array_items(bad);
            assert!(a.is_err() || b.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_instead_of_overflowing() {
        let deep = format!("[{}{}]", "[".repeat(500), "]".repeat(500));
        assert!(array_items(&deep).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz target covers this far more widely.
        let alphabet = b"{}[]\",:\\ a1";
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let len = (state % 24) as usize;
            let mut s = String::new();
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                s.push(alphabet[(state as usize) % alphabet.len()] as char);
            }
            let _ = object_fields(&s, "\"a\"", &mut |start| skip_value(s.as_bytes(), start));
            let _ = array_items(&s);
        }
    }
}
