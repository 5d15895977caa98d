//! Fuzzes `SyncMsgResponse::from_slice`, the serde path and `Message::from_json`.
//!
//! Invariants: no panic; `serde_json::from_slice::<SyncMsgResponse>` (the serde path, which hands
//! the body's text to the fast decoder) accepts exactly the bodies `from_slice` accepts, with the
//! same result; when both accept the body, the fast page decoder and the general serde path
//! (`from_slice_general`) produce identical messages and invalid items; every decoded message
//! re-encodes to the JSON value it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_kf::message::{Message, SyncMsgResponse};

fuzz_target!(|data: &[u8]| {
    let fast = SyncMsgResponse::from_slice(data);
    let serde = serde_json::from_slice::<SyncMsgResponse>(data);
    assert_eq!(fast.is_ok(), serde.is_ok(), "from_slice and the serde path disagree");
    if let (Ok(fast), Ok(serde)) = (&fast, &serde) {
        assert_eq!(fast, serde);
    }
    let plain = SyncMsgResponse::from_slice_general(data);
    if let (Ok(fast), Ok(plain)) = (&fast, &plain) {
        // The fast path (one pass, shared text, the simple-item parser) and the plain serde path
        // must decode to exactly the same messages and the same invalid items.
        assert_eq!(fast.msg_list, plain.msg_list);
        assert_eq!(fast.invalid, plain.invalid);
        for message in &fast.msg_list {
            // A lone surrogate escape (`\ud83d`) in a field the model ignores is kept verbatim
            // in raw, but cannot become a `serde_json::Value`; compare when it can.
            if let Ok(original) = serde_json::from_str::<serde_json::Value>(message.raw()) {
                let again = serde_json::to_value(message).expect("what parsed once re-encodes");
                assert_eq!(again, original);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Message::from_json(text);
    }
});
