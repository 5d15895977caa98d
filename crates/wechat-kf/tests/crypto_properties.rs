//! Round trips over random keys and messages, one negative test per error variant (mostly by
//! flipping one bit of a valid callback), and garbage thrown at every parser.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use wechat_kf::callback::CallbackEvent;
use wechat_kf::crypto::{
    CallbackCrypto, CryptoError, ReplayError, ReplayWindow, extract_encrypt,
    extract_encrypt_general, signature,
};

const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CORP: &str = "wx5823bf96d3bd56c7";
const TS: &str = "1700000000";
const NONCE: &str = "1234567890";

fn crypto() -> CallbackCrypto {
    CallbackCrypto::new(TOKEN, KEY, CORP).unwrap()
}

/// The raw AES key behind [`KEY`], decoded independently of the crate.
fn raw_key() -> [u8; 32] {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    );
    engine.decode(KEY).unwrap().try_into().unwrap()
}

/// Encrypts an already framed and padded buffer with the test key: lets a test build frames the
/// crate would never produce.
fn seal(plain: &[u8]) -> String {
    let key = raw_key();
    let mut buf = plain.to_vec();
    let len = buf.len();
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), (&key[..16]).into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .unwrap()
        .to_vec();
    STANDARD.encode(ct)
}

/// `random || len || msg || receive_id` with correct PKCS#7 padding to 32 bytes.
fn frame(msg: &[u8], receive_id: &[u8]) -> Vec<u8> {
    let mut v = b"0123456789abcdef".to_vec();
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v.extend_from_slice(receive_id);
    let pad = 32 - v.len() % 32;
    v.resize(v.len() + pad, pad as u8);
    v
}

fn body(encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
}

/// Decrypts a bare `Encrypt` value through the full signed path.
fn open(encrypt: &str) -> Result<String, CryptoError> {
    let sig = signature(TOKEN, TS, NONCE, encrypt);
    crypto().decrypt_message(&sig, TS, NONCE, &body(encrypt))
}

fn flip_ciphertext_bit(encrypt: &str, byte: usize, bit: u8) -> String {
    let mut ct = STANDARD.decode(encrypt).unwrap();
    ct[byte] ^= 1 << bit;
    STANDARD.encode(ct)
}

fn key_from_bytes(bytes: &[u8; 32]) -> String {
    let mut k = STANDARD.encode(bytes);
    assert_eq!(k.pop(), Some('='));
    k
}

// ---- round trips ----------------------------------------------------------------------------

#[test]
fn round_trips_every_message_length_from_0_to_600_bytes() {
    let crypto = crypto();
    let mut pads_seen = [false; 33];
    for len in 0..=600usize {
        let msg: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let random = [b'r'; 16];
        let encrypt = crypto.encrypt_field(&msg, &random).unwrap();
        let ct_len = STANDARD.decode(&encrypt).unwrap().len();
        let framed = 20 + len + CORP.len();
        let pad = ct_len - framed;
        assert!((1..=32).contains(&pad), "len {len}: pad {pad}");
        assert_eq!(ct_len % 32, 0);
        pads_seen[pad] = true;
        assert_eq!(crypto.decrypt_field(&encrypt).unwrap(), msg);
        assert_eq!(open(&encrypt).unwrap(), msg);
    }
    assert!(
        pads_seen[1..].iter().all(|&seen| seen),
        "every pad value 1..=32 occurs"
    );
}

#[test]
fn round_trips_a_message_that_does_not_fit_the_stack_buffer() {
    let crypto = crypto();
    let msg = "长".repeat(5000);
    let reply = crypto.encrypt_message(&msg, TS, NONCE).unwrap();
    let sig = extract_signature(&reply);
    assert_eq!(
        crypto.decrypt_message(&sig, TS, NONCE, &reply).unwrap(),
        msg
    );
}

fn extract_signature(reply: &str) -> String {
    let start = reply.find("<MsgSignature><![CDATA[").unwrap() + 23;
    reply[start..start + 40].to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trips_random_keys_and_utf8_messages(
        key in any::<[u8; 32]>(),
        msg in prop::collection::vec(any::<char>(), 0..200).prop_map(|c| c.into_iter().collect::<String>()),
        receive_id in "[a-zA-Z0-9]{0,24}",
        token in "[a-zA-Z0-9]{1,32}",
        random in any::<[u8; 16]>(),
        ts in 0u64..4_000_000_000,
        nonce in "[0-9a-zA-Z]{1,16}",
    ) {
        let crypto = CallbackCrypto::new(&token, &key_from_bytes(&key), &receive_id).unwrap();
        let ts = ts.to_string();
        let reply = crypto.encrypt_with_random(&msg, &random, &ts, &nonce).unwrap();
        let sig = extract_signature(&reply);
        let encrypt = extract_encrypt(&reply).unwrap();
        prop_assert_eq!(&sig, &signature(&token, &ts, &nonce, &encrypt));
        prop_assert_eq!(crypto.decrypt_message(&sig, &ts, &nonce, &reply).unwrap(), msg.clone());
        prop_assert_eq!(crypto.verify_url(&sig, &ts, &nonce, &encrypt).unwrap(), msg);
    }

    #[test]
    fn rejects_every_single_bit_flip_of_a_signature(pos in 0usize..40, bit in 0u8..7) {
        let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
        let mut sig = signature(TOKEN, TS, NONCE, &encrypt).into_bytes();
        sig[pos] ^= 1 << bit;
        let sig = String::from_utf8_lossy(&sig).into_owned();
        let err = crypto().decrypt_message(&sig, TS, NONCE, &body(&encrypt)).unwrap_err();
        prop_assert_eq!(err, CryptoError::SignatureMismatch);
    }

    #[test]
    fn never_returns_the_original_message_after_a_ciphertext_bit_flip(
        len in 0usize..300, byte in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let msg = "m".repeat(len);
        let encrypt = crypto().encrypt_field(&msg, &[b'x'; 16]).unwrap();
        let ct_len = STANDARD.decode(&encrypt).unwrap().len();
        let flipped = flip_ciphertext_bit(&encrypt, byte.index(ct_len), bit);
        match open(&flipped) {
            Ok(out) => prop_assert_ne!(out, msg),
            Err(e) => prop_assert!(e.is_malformed_input() || e.is_receive_id_mismatch(), "{e:?}"),
        }
    }

    // ---- garbage in: never a panic ----------------------------------------------------------

    #[test]
    fn survives_random_bytes_as_encrypt(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = crypto().decrypt_field(&text);
        let _ = crypto().verify_url("x", TS, NONCE, &text);
        let _ = open(&text);
    }

    #[test]
    fn survives_random_ciphertexts_of_block_lengths(blocks in 0usize..40, seed in any::<[u8; 32]>()) {
        let bytes: Vec<u8> = (0..blocks * 32).map(|i| seed[i % 32].wrapping_mul(i as u8 | 1)).collect();
        let encrypt = STANDARD.encode(&bytes);
        let _ = crypto().decrypt_field(&encrypt);
        let _ = open(&encrypt);
    }

    #[test]
    fn survives_random_frames_with_a_valid_ciphertext(
        head in prop::collection::vec(any::<u8>(), 0..100),
        pad in any::<u8>(),
    ) {
        let mut plain = head;
        let target = plain.len().div_ceil(32).max(1) * 32;
        plain.resize(target, pad);
        let _ = open(&seal(&plain));
    }

    #[test]
    fn survives_random_text_as_xml(text in "\\PC{0,300}") {
        let _ = CallbackEvent::from_xml(&text);
        let _ = extract_encrypt(&text);
        let _ = crypto().decrypt_message("x", TS, NONCE, &text);
    }

    #[test]
    fn survives_random_xml_like_token_soup(parts in prop::collection::vec(prop::sample::select(vec![
        "<", ">", "/", "</", "/>", "<xml>", "</xml>", "<Encrypt>", "</Encrypt>", "<Token>", "</Token>",
        "<Event>", "kf_msg_or_event", "</Event>", "<CreateTime>", "1", "</CreateTime>", "<![CDATA[",
        "]]>", "<!--", "-->", "<?", "?>", "&amp;", "&#x", ";", "&", " ", "\n", "a=\"", "\"", "'",
        "<!DOCTYPE x>", "\u{feff}", "中", "<AuthAddOpenKfId>", "</AuthAddOpenKfId>",
    ]), 0..60)) {
        let text: String = parts.concat();
        let _ = CallbackEvent::from_xml(&text);
        let _ = extract_encrypt(&text);
    }
}

// ---- the strict fast path of the XML scanner against the tolerant one ------------------------

/// Documents in WeCom's own form (what the strict scanner reads) with random names, values and
/// whitespace, and random corruptions of them (what it must hand to the tolerant scanner).
fn wecom_like_xml() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Event",
        "Token",
        "OpenKfId",
        "Encrypt",
        "AgentID",
        "AuthAddOpenKfId",
        "AuthDelOpenKfId",
        "X",
        "a_1",
        "N<b",
        "中",
    ]);
    let value = "[ a-zA-Z0-9<>&;/\\]\\[!?\"'=_\n中]{0,40}";
    let element = (
        name,
        value,
        any::<bool>(),
        prop::sample::select(vec!["", "\n", " ", "\t\r\n"]),
    )
        .prop_map(|(name, value, cdata, ws)| {
            if cdata {
                format!("{ws}<{name}><![CDATA[{value}]]></{name}>")
            } else {
                format!("{ws}<{name}>{value}</{name}>")
            }
        });
    (
        prop::collection::vec(element, 0..12),
        prop::sample::select(vec!["</xml>", "</xml>\n", "</other>", "", "<x/></xml>"]),
        any::<u16>(),
        prop::sample::select(vec![
            "",
            "<",
            ">",
            "/",
            "]]>",
            "<![CDATA[",
            "&amp;",
            "\u{feff}",
            " a=\"1\"",
        ]),
    )
        .prop_map(|(elements, end, at, insert)| {
            let mut doc = format!("<xml>{}{end}", elements.concat());
            // One random insertion at a character boundary: mostly turns the document unusual.
            let mut at = usize::from(at) % (doc.len() + 1);
            while !doc.is_char_boundary(at) {
                at -= 1;
            }
            doc.insert_str(at, insert);
            doc
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn the_strict_event_scanner_reads_every_document_as_the_tolerant_one_does(doc in wecom_like_xml()) {
        prop_assert_eq!(CallbackEvent::from_xml(&doc), CallbackEvent::from_xml_general(&doc));
        prop_assert_eq!(extract_encrypt(&doc), extract_encrypt_general(&doc));
    }

    #[test]
    fn the_strict_event_scanner_agrees_on_random_token_soup(parts in prop::collection::vec(prop::sample::select(vec![
        "<xml>", "</xml>", "<Encrypt>", "</Encrypt>", "<Token>", "</Token>", "<Event>",
        "kf_msg_or_event", "</Event>", "<CreateTime>", "1", "</CreateTime>", "<ToUserName>",
        "</ToUserName>", "<![CDATA[", "]]>", "]", "<!--", "-->", "<?", "?>", "&amp;", "&", " ",
        "\n", "a=\"", "\"", "/>", "<", ">", "/", "中", "<AuthAddOpenKfId>", "</AuthAddOpenKfId>",
    ]), 0..40)) {
        let doc = format!("<xml>{}", parts.concat());
        prop_assert_eq!(CallbackEvent::from_xml(&doc), CallbackEvent::from_xml_general(&doc));
        prop_assert_eq!(extract_encrypt(&doc), extract_encrypt_general(&doc));
    }
}

// ---- one negative test per error variant ----------------------------------------------------

#[test]
fn rejects_a_signature_with_one_flipped_bit() {
    let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
    let mut sig = signature(TOKEN, TS, NONCE, &encrypt).into_bytes();
    sig[0] ^= 1;
    let sig = String::from_utf8(sig).unwrap();
    let err = crypto()
        .decrypt_message(&sig, TS, NONCE, &body(&encrypt))
        .unwrap_err();
    assert_eq!(err, CryptoError::SignatureMismatch);
    assert!(err.is_signature_mismatch() && !err.is_malformed_input());
    assert_eq!(err.to_string(), "signature mismatch");
    assert_eq!(err.code(), -40001);
}

#[test]
fn rejects_an_upper_case_or_truncated_signature() {
    let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
    let sig = signature(TOKEN, TS, NONCE, &encrypt);
    for bad in [
        sig.to_uppercase(),
        sig[..39].to_owned(),
        format!("{sig}0"),
        String::new(),
    ] {
        let err = crypto()
            .decrypt_message(&bad, TS, NONCE, &body(&encrypt))
            .unwrap_err();
        assert_eq!(err, CryptoError::SignatureMismatch, "{bad:?}");
    }
}

#[test]
fn rejects_a_signature_made_with_another_timestamp_or_token() {
    let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
    let other_ts = signature(TOKEN, "1700000001", NONCE, &encrypt);
    let other_token = signature("QDG6eL", TS, NONCE, &encrypt);
    for sig in [other_ts, other_token] {
        let err = crypto()
            .decrypt_message(&sig, TS, NONCE, &body(&encrypt))
            .unwrap_err();
        assert_eq!(err, CryptoError::SignatureMismatch);
    }
}

#[test]
fn rejects_a_body_without_an_encrypt_element() {
    let err = crypto()
        .decrypt_message("x", TS, NONCE, "<xml><ToUserName>a</ToUserName></xml>")
        .unwrap_err();
    assert_eq!(err, CryptoError::MalformedXml("missing <Encrypt> element"));
    assert!(err.is_malformed_input());
    assert_eq!(err.code(), -40002);
}

#[test]
fn rejects_a_truncated_body() {
    for bad in [
        "",
        "not xml",
        "<xml><Encrypt><![CDATA[abc",
        "<xml><Encrypt>abc</Encrypt",
    ] {
        let err = crypto().decrypt_message("x", TS, NONCE, bad).unwrap_err();
        assert!(
            matches!(err, CryptoError::MalformedXml(_)),
            "{bad:?}: {err:?}"
        );
        assert_eq!(err.code(), -40002);
    }
}

#[test]
fn rejects_an_invalid_key_with_code_40004() {
    let err = CallbackCrypto::new(TOKEN, &KEY[..42], CORP).unwrap_err();
    assert_eq!(err, CryptoError::InvalidKey);
    assert_eq!(err.code(), -40004);
    assert!(!err.to_string().contains(&KEY[..42]));
}

#[test]
fn accepts_keys_with_plus_and_slash() {
    let key = key_from_bytes(&[0xfb; 32]);
    assert!(key.contains('+') || key.contains('/'), "{key}");
    let crypto = CallbackCrypto::new(TOKEN, &key, CORP).unwrap();
    let encrypt = crypto.encrypt_field("x", &[0; 16]).unwrap();
    assert_eq!(crypto.decrypt_field(&encrypt).unwrap(), "x");
}

#[test]
fn rejects_invalid_base64() {
    for bad in ["abc$", "a b c d", "====", "A"] {
        let err = open(bad).unwrap_err();
        assert_eq!(err, CryptoError::Base64, "{bad:?}");
        assert_eq!(err.code(), -40010);
    }
}

#[test]
fn accepts_an_encrypt_value_without_base64_padding() {
    let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
    let unpadded = encrypt.trim_end_matches('=');
    assert_ne!(unpadded, encrypt);
    assert_eq!(crypto().decrypt_field(unpadded).unwrap(), "hello");
}

#[test]
fn rejects_ciphertexts_that_are_not_whole_32_byte_blocks() {
    for len in [0usize, 16, 31, 48, 33] {
        let encrypt = STANDARD.encode(vec![7u8; len]);
        let err = open(&encrypt).unwrap_err();
        assert_eq!(err, CryptoError::CipherLength { len }, "{len}");
        assert_eq!(err.code(), -40007);
        assert!(err.is_malformed_input());
    }
}

#[test]
fn rejects_a_padding_byte_with_one_flipped_bit() {
    let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
    // hello + corp = 20 + 5 + 18 = 43 bytes, so pad = 21: the last 21 plaintext bytes are 0x15.
    // In CBC, flipping bit b of ciphertext byte i flips bit b of plaintext byte i + 16.
    let ct_len = STANDARD.decode(&encrypt).unwrap().len();
    for target in [ct_len - 1, ct_len - 21, ct_len - 10] {
        let flipped = flip_ciphertext_bit(&encrypt, target - 16, 0);
        let err = open(&flipped).unwrap_err();
        assert_eq!(err, CryptoError::Padding, "plaintext byte {target}");
        assert_eq!(err.code(), -40008);
    }
}

#[test]
fn rejects_pad_values_0_and_33() {
    for pad in [0u8, 33, 255] {
        let mut plain = frame(b"hello", CORP.as_bytes());
        let n = plain.len();
        plain[n - 1] = pad;
        assert_eq!(open(&seal(&plain)).unwrap_err(), CryptoError::Padding);
    }
}

#[test]
fn rejects_a_length_field_with_one_flipped_bit() {
    let encrypt = crypto().encrypt_field("hello", &[b'x'; 16]).unwrap();
    // Plaintext byte 16 is the high byte of the length; ciphertext byte 0 controls it.
    for bit in 0..8 {
        let flipped = flip_ciphertext_bit(&encrypt, 0, bit);
        let err = open(&flipped).unwrap_err();
        assert_eq!(err, CryptoError::FrameLength, "bit {bit}");
        assert_eq!(err.code(), -40008);
    }
}

#[test]
fn rejects_a_frame_shorter_than_its_header() {
    // 32 bytes of padding only: nothing left for random + length.
    assert_eq!(
        open(&seal(&[32u8; 32])).unwrap_err(),
        CryptoError::FrameLength
    );
    // 19 bytes of frame then 13 of padding.
    let mut plain = vec![b'r'; 19];
    plain.resize(32, 13);
    assert_eq!(open(&seal(&plain)).unwrap_err(), CryptoError::FrameLength);
}

#[test]
fn rejects_a_length_one_past_the_buffer() {
    let mut plain = frame(b"hello", CORP.as_bytes());
    let too_long = (5 + CORP.len() + 1) as u32;
    plain[16..20].copy_from_slice(&too_long.to_be_bytes());
    assert_eq!(open(&seal(&plain)).unwrap_err(), CryptoError::FrameLength);
    // Exactly to the end of the buffer is fine for the frame, but then the receive_id is empty.
    let exact = (5 + CORP.len()) as u32;
    plain[16..20].copy_from_slice(&exact.to_be_bytes());
    assert_eq!(
        open(&seal(&plain)).unwrap_err(),
        CryptoError::ReceiveIdMismatch
    );
}

#[test]
fn rejects_a_receive_id_with_one_flipped_bit() {
    // A 64-byte message puts the receive_id (plaintext 84..102) after a block of message bytes, so
    // the flip garbles only message bytes.
    let msg = "m".repeat(64);
    let encrypt = crypto().encrypt_field(&msg, &[b'x'; 16]).unwrap();
    let err = open(&flip_ciphertext_bit(&encrypt, 84 + 3 - 16, 2)).unwrap_err();
    assert_eq!(err, CryptoError::ReceiveIdMismatch);
    assert!(err.is_receive_id_mismatch() && !err.is_malformed_input());
    assert_eq!(err.code(), -40005);
}

#[test]
fn rejects_a_message_for_another_corp() {
    let other = CallbackCrypto::new(TOKEN, KEY, "ww0000000000000000").unwrap();
    let encrypt = other.encrypt_field("hello", &[b'x'; 16]).unwrap();
    assert_eq!(open(&encrypt).unwrap_err(), CryptoError::ReceiveIdMismatch);
}

#[test]
fn rejects_a_message_that_is_not_utf8() {
    let plain = frame(&[0xff, 0xfe, b'a'], CORP.as_bytes());
    let err = open(&seal(&plain)).unwrap_err();
    assert_eq!(err, CryptoError::InvalidUtf8);
    assert_eq!(err.code(), -40008);
}

#[test]
fn rejects_reply_values_that_cannot_go_into_xml() {
    let crypto = crypto();
    let err = crypto.encrypt_message("x", "17x", NONCE).unwrap_err();
    assert!(matches!(err, CryptoError::ReplyXml(_)));
    assert_eq!(err.code(), -40011);
    let err = crypto.encrypt_message("x", TS, "a]]>b").unwrap_err();
    assert!(matches!(err, CryptoError::ReplyXml(_)));
    assert_eq!(CryptoError::MessageTooLong.code(), -40006);
}

#[test]
fn error_texts_never_contain_secrets() {
    let errors = [
        CryptoError::SignatureMismatch,
        CryptoError::MalformedXml("missing <Encrypt> element"),
        CryptoError::InvalidKey,
        CryptoError::ReceiveIdMismatch,
        CryptoError::MessageTooLong,
        CryptoError::CipherLength { len: 16 },
        CryptoError::Padding,
        CryptoError::FrameLength,
        CryptoError::InvalidUtf8,
        CryptoError::Base64,
        CryptoError::ReplyXml("nonce contains ]]>"),
    ];
    let mut codes: Vec<i32> = errors.iter().map(CryptoError::code).collect();
    codes.dedup();
    assert!(codes.iter().all(|c| (-40011..=-40001).contains(c)));
    for e in errors {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(TOKEN) && !text.contains(KEY), "{text}");
    }
}

#[test]
fn fresh_encryptions_differ_but_both_decrypt() {
    let crypto = crypto();
    let a = crypto.encrypt_message("same", TS, NONCE).unwrap();
    let b = crypto.encrypt_message("same", TS, NONCE).unwrap();
    assert_ne!(a, b);
    for reply in [a, b] {
        let sig = extract_signature(&reply);
        assert_eq!(
            crypto.decrypt_message(&sig, TS, NONCE, &reply).unwrap(),
            "same"
        );
    }
}

// ---- replay window ----------------------------------------------------------------------------

#[test]
fn replay_window_accepts_timestamps_inside_and_rejects_outside() {
    let w = ReplayWindow::new(300, 60);
    assert_eq!(w.check("1000", 1000), Ok(()));
    assert_eq!(w.check("700", 1000), Ok(()));
    assert_eq!(
        w.check("699", 1000),
        Err(ReplayError::TooOld { age_secs: 301 })
    );
    assert_eq!(w.check("1060", 1000), Ok(()));
    assert_eq!(
        w.check("1061", 1000),
        Err(ReplayError::TooFarAhead { ahead_secs: 61 })
    );
    for bad in ["", "-1", "1e3", " 1000", "99999999999999999999999"] {
        assert_eq!(w.check(bad, 1000), Err(ReplayError::Malformed), "{bad:?}");
    }
    assert_eq!(ReplayWindow::default(), ReplayWindow::new(300, 300));
}
