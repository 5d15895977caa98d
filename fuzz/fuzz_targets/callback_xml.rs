//! Arbitrary text as a decrypted callback and as an envelope: parse or fail, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_kf::callback::CallbackEvent;
use wechat_kf::crypto::extract_encrypt;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(event) = CallbackEvent::from_xml(text) {
        let _ = format!("{event:?}");
    }
    let _ = extract_encrypt(text);
});
