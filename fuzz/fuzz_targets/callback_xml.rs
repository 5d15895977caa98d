//! Arbitrary text as a decrypted callback and as an envelope: parse or fail, never panic, and
//! the strict fast path gives the same result as the tolerant scanner alone.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_kf::callback::CallbackEvent;
use wechat_kf::crypto::{extract_encrypt, extract_encrypt_general};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let event = CallbackEvent::from_xml(text);
    if let Ok(event) = &event {
        let _ = format!("{event:?}");
    }
    assert_eq!(event, CallbackEvent::from_xml_general(text));
    assert_eq!(extract_encrypt(text), extract_encrypt_general(text));
});
