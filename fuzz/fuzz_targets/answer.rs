//! Arbitrary text as an answer: rendered and fitted, never a panic, and every fitted text
//! within its limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_kf::answer::{fit, plain_text};

fuzz_target!(|data: &[u8]| {
    let Some((&sizes, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let max_texts = usize::from(sizes & 0x07);
    // From the smallest limit `fit` takes (one character of any width) up.
    let max_bytes = 4 + usize::from(sizes >> 3) * 64;
    let plain = plain_text(text);
    for source in [text, plain.as_str()] {
        let fitted = fit(source, max_texts, max_bytes, "…");
        assert!(fitted.texts.len() <= max_texts);
        assert!(fitted.texts.iter().all(|t| t.len() <= max_bytes));
    }
});
