//! Arbitrary bytes as a callback body, an `Encrypt` value, an echostr and a signed body: every
//! path must return `Ok` or a `CryptoError`, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_kf::crypto::{CallbackCrypto, signature};

const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CORP: &str = "wx5823bf96d3bd56c7";

fuzz_target!(|data: &[u8]| {
    let Ok(crypto) = CallbackCrypto::new(TOKEN, KEY, CORP) else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let _ = crypto.decrypt_message("0", "1", "2", &text);
    let _ = crypto.decrypt_field(&text);
    let _ = crypto.verify_url("0", "1", "2", &text);
    // Past the signature check, so the decryption and frame checks see the input too.
    let sig = signature(TOKEN, "1", "2", &text);
    let _ = crypto.verify_url(&sig, "1", "2", &text);
    let body = format!("<xml><Encrypt><![CDATA[{text}]]></Encrypt></xml>");
    let _ = crypto.decrypt_event(&sig, "1", "2", &body);
    // Arbitrary bytes as a key must be rejected cleanly too.
    let _ = CallbackCrypto::new(TOKEN, &text, CORP);
});
