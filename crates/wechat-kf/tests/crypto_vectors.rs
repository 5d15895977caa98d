//! Known-answer tests: the official samples (official doc 90968), wechatpy's and
//! go-workwx's vectors, and a KF-shaped vector (V6) made with the official
//! sample's keys, in both directions.

use wechat_kf::callback::CallbackEvent;
use wechat_kf::crypto::{CallbackCrypto, CryptoError, signature, url_decode};

const V1_TOKEN: &str = "QDG6eK";
const V1_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const V1_CORP: &str = "wx5823bf96d3bd56c7";

const V1A_SIG: &str = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
const V1A_TS: &str = "1409659589";
const V1A_NONCE: &str = "263014780";
const V1A_ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
const V1A_ECHOSTR_SENT: &str = "P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D";
const V1A_REPLY: &str = "1616140317555161061";

const V1B_SIG: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const V1B_TS: &str = "1409659813";
const V1B_NONCE: &str = "1372623149";
const V1B_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";
const V1B_PLAIN: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n<FromUserName><![CDATA[mycreate]]></FromUserName>\n<CreateTime>1409659813</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[hello]]></Content>\n<MsgId>4561255354251345929</MsgId>\n<AgentID>218</AgentID>\n</xml>";

const V2_TOKEN: &str = "123456";
const V2_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const V2_CORP: &str = "wx49f0ab532d5d035a";

const V2B_ENCRYPT: &str = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
const V2B_PLAIN: &str = "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<FromUserName><![CDATA[messense]]></FromUserName>\n<CreateTime>1411525903</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<MsgId>4363689963896700987</MsgId>\n<AgentID>1</AgentID>\n</xml>";

const V6_PLAIN: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[ENCTESTTOKEN0000000000000000000001]]></Token><OpenKfId><![CDATA[wkTESTOPENKFID000000000000000001]]></OpenKfId></xml>";
const V6_ENCRYPT: &str = "7ho9XWI/HTOA1L6oduAxX9LNhMaFCp7Yre3u1FOSfYIg3jeMdjD56prUxXn28j2RaWf71RJNVKJGSi6tDj+n9MIUMb8aHHLy5IhCeZq25MNftOjmQQKIdIBNfVs9CQJxJAWFGME43hPRGHRg3rJUHhJ2zy4OFnSLetV5qaI96ImReosw9YSZ9F8mRSR6r5c0W4Xp7yVrt1rUDvQ0ZnjfIPNwSmd8F1iwQa1/kODyCHXN4ImnEx14qLLALPTqYTWlIP1Xs7Iy0H5/OUUY7EoBZIq/zkQ4+zMijai4xA6SFOrmHe5Jpo4Z3DBuyrqNWliihdWwqM7n10flqHF9R7wKDO5E8veJD9qDgBNIfOxvQt5e0m1+ZYGOv2ORFEGZJRx80Eo3Z3TGZcUYvd8CyzwoWAwrt5nzGU08bfDvorCYoAwCq1IKTb38L0K1EOm8PMToxdS+cdAsgUNQBNhT2j5V5w==";
const V6_SIG: &str = "467bf8f952ba7e3bac9e4ef87bf2b307c1b5bf1a";

fn v1() -> CallbackCrypto {
    CallbackCrypto::new(V1_TOKEN, V1_KEY, V1_CORP).expect("the official sample key is valid")
}

fn v2() -> CallbackCrypto {
    CallbackCrypto::new(V2_TOKEN, V2_KEY, V2_CORP).expect("the wechatpy key is valid")
}

fn envelope(to: &str, encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
    )
}

fn random16(s: &str) -> [u8; 16] {
    s.as_bytes().try_into().expect("16 bytes")
}

#[test]
fn v1a_verifies_the_url_and_returns_the_echo() {
    assert_eq!(signature(V1_TOKEN, V1A_TS, V1A_NONCE, V1A_ECHOSTR), V1A_SIG);
    let reply = v1()
        .verify_url(V1A_SIG, V1A_TS, V1A_NONCE, V1A_ECHOSTR)
        .unwrap();
    assert_eq!(reply, V1A_REPLY);
}

#[test]
fn v1a_echostr_as_sent_url_decodes_to_the_signed_form() {
    assert_eq!(url_decode(V1A_ECHOSTR_SENT), V1A_ECHOSTR);
    let reply = v1()
        .verify_url(V1A_SIG, V1A_TS, V1A_NONCE, &url_decode(V1A_ECHOSTR_SENT))
        .unwrap();
    assert_eq!(reply, V1A_REPLY);
}

#[test]
fn v1a_echostr_whose_plus_became_a_space_is_repaired() {
    let mangled = V1A_ECHOSTR.replace('+', " ");
    let reply = v1()
        .verify_url(V1A_SIG, V1A_TS, V1A_NONCE, &mangled)
        .unwrap();
    assert_eq!(reply, V1A_REPLY);
}

#[test]
fn v1a_reencrypting_with_the_recovered_random_reproduces_the_echostr() {
    let encrypt = v1()
        .encrypt_field(V1A_REPLY, &random16("c41b64491c2468d0"))
        .unwrap();
    assert_eq!(encrypt, V1A_ECHOSTR);
}

#[test]
fn v1b_signature_sorts_the_four_strings() {
    assert_eq!(signature(V1_TOKEN, V1B_TS, V1B_NONCE, V1B_ENCRYPT), V1B_SIG);
    // Argument order does not matter: the strings are sorted.
    assert_eq!(signature(V1B_ENCRYPT, V1_TOKEN, V1B_NONCE, V1B_TS), V1B_SIG);
}

#[test]
fn v1b_decrypts_the_event_post() {
    let body = envelope(V1_CORP, V1B_ENCRYPT);
    let plain = v1()
        .decrypt_message(V1B_SIG, V1B_TS, V1B_NONCE, &body)
        .unwrap();
    assert_eq!(plain, V1B_PLAIN);
}

#[test]
fn v1b_decrypts_with_the_typo_envelope_to_user_name() {
    // One doc copy prints `ax5823…`; the envelope ToUserName is not checked.
    let body = envelope("ax5823bf96d3bd56c7", V1B_ENCRYPT);
    let plain = v1()
        .decrypt_message(V1B_SIG, V1B_TS, V1B_NONCE, &body)
        .unwrap();
    assert_eq!(plain, V1B_PLAIN);
}

#[test]
fn v1b_reencrypting_with_the_recovered_random_reproduces_the_ciphertext() {
    let crypto = v1();
    let encrypt = crypto
        .encrypt_field(V1B_PLAIN, &random16("0960688932c47ef1"))
        .unwrap();
    assert_eq!(encrypt, V1B_ENCRYPT);
    assert_eq!(V1B_PLAIN.len(), 284);
}

#[test]
fn v2a_verifies_the_url() {
    let echostr =
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
    let sig = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96";
    let reply = v2()
        .verify_url(sig, "1411443780", "437374425", echostr)
        .unwrap();
    assert_eq!(reply, "5927782489442352469");
}

#[test]
fn v2a_fails_with_a_nonce_one_off() {
    let echostr =
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
    let sig = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96";
    let err = v2()
        .verify_url(sig, "1411443780", "437374424", echostr)
        .unwrap_err();
    assert_eq!(err, CryptoError::SignatureMismatch);
    assert_eq!(err.code(), -40001);
}

#[test]
fn v2b_decrypts_the_post() {
    let body = envelope(V2_CORP, V2B_ENCRYPT);
    let plain = v2()
        .decrypt_message(
            "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
            "1411525903",
            "461056294",
            &body,
        )
        .unwrap();
    assert_eq!(plain, V2B_PLAIN);
}

#[test]
fn v2c_encrypts_deterministically_byte_for_byte() {
    let input = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
    let expected = "<xml>\n<Encrypt><![CDATA[9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3]]></Encrypt>\n<MsgSignature><![CDATA[407518b7649e86ef23978113f92d27afa9296533]]></MsgSignature>\n<TimeStamp>1411525903</TimeStamp>\n<Nonce><![CDATA[461056294]]></Nonce>\n</xml>";
    let crypto = v2();
    let out = crypto
        .encrypt_with_random(
            input,
            &random16("1234567890123456"),
            "1411525903",
            "461056294",
        )
        .unwrap();
    assert_eq!(out, expected);
    // And the reply decrypts back with the signature it carries.
    let back = crypto
        .decrypt_message(
            "407518b7649e86ef23978113f92d27afa9296533",
            "1411525903",
            "461056294",
            &out,
        )
        .unwrap();
    assert_eq!(back, input);
}

#[test]
fn v4_decrypts_without_a_signature() {
    let crypto = CallbackCrypto::new(
        "unused",
        "4Ma3YBrSBbX2aez8MJpXGBne5LSDwgGqHbhM9WPYIws",
        "ww6a112864f8022910",
    )
    .unwrap();
    let msg = crypto
        .decrypt_field("6KmUQuPVu7UhjyVqRdbo5SfcRqaHvbUlKSHFvBV2ZuR6TIlKsygcfeSd1GDplg1C5KSKr6UPHCaC/nIX3ZNt9w==")
        .unwrap();
    assert_eq!(msg, "94966531020182955848408");
}

#[test]
fn v4_rejects_every_invalid_key() {
    for key in [
        "",
        "123456789012345678901234567890123456789012",
        "12345678901234567890123456789012345678901234",
        "4Ma3YBrSBbX2aez8MJpXGBne5LSDwgGqHbhM9WPYIw=",
        "4Ma3YBrSBbX2aez8MJpXGBne5LSDwgGqHbhM9WPYIw$",
    ] {
        let err = CallbackCrypto::new("t", key, "ww6a112864f8022910").unwrap_err();
        assert_eq!(err, CryptoError::InvalidKey, "{key:?}");
        assert_eq!(err.code(), -40004);
    }
}

#[test]
fn v6_decrypts_and_parses_the_kf_event() {
    let crypto = v1();
    let body = envelope(V1_CORP, V6_ENCRYPT);
    assert_eq!(
        signature(V1_TOKEN, "1700000000", "1234567890", V6_ENCRYPT),
        V6_SIG
    );
    let plain = crypto
        .decrypt_message(V6_SIG, "1700000000", "1234567890", &body)
        .unwrap();
    assert_eq!(plain, V6_PLAIN);
    let event = crypto
        .decrypt_event(V6_SIG, "1700000000", "1234567890", &body)
        .unwrap();
    let CallbackEvent::KfMsgOrEvent(event) = event else {
        panic!("expected kf_msg_or_event, got {event:?}");
    };
    assert_eq!(event.to_user_name, V1_CORP);
    assert_eq!(event.create_time, 1_700_000_000);
    assert_eq!(event.token, "ENCTESTTOKEN0000000000000000000001");
    assert_eq!(
        event.open_kfid.as_ref().map(|id| id.as_str()),
        Some("wkTESTOPENKFID000000000000000001")
    );
}

#[test]
fn v6_encrypts_the_kf_event_byte_for_byte() {
    let crypto = v1();
    let encrypt = crypto
        .encrypt_field(V6_PLAIN, &random16("abcdefghijklmnop"))
        .unwrap();
    assert_eq!(encrypt, V6_ENCRYPT);
    assert_eq!(crypto.sign("1700000000", "1234567890", &encrypt), V6_SIG);
    let reply = crypto
        .encrypt_with_random(
            V6_PLAIN,
            &random16("abcdefghijklmnop"),
            "1700000000",
            "1234567890",
        )
        .unwrap();
    assert!(reply.contains(&format!("<Encrypt><![CDATA[{V6_ENCRYPT}]]></Encrypt>")));
    assert!(reply.contains(&format!(
        "<MsgSignature><![CDATA[{V6_SIG}]]></MsgSignature>"
    )));
}

#[test]
fn v6_echostr_case_in_both_directions() {
    let crypto = v1();
    let echostr =
        "sKqRbbiSUnDhFHOvPjtUMX2I+uKyRghxUAumeARjiLaOhwZ/bGmuL0OE3MviAlfIAG4IjUAP1HI1hvOewREAqw==";
    let sig = "11f0b2e2ca928e894b0b19a51e0fc76d5fb1ff74";
    assert_eq!(
        crypto
            .encrypt_field("9876543210123456789", &random16("0123456789abcdef"))
            .unwrap(),
        echostr
    );
    assert_eq!(crypto.sign("1700000001", "42", echostr), sig);
    assert_eq!(
        crypto.verify_url(sig, "1700000001", "42", echostr).unwrap(),
        "9876543210123456789"
    );
}

#[test]
fn debug_output_redacts_the_token_and_key() {
    let debug = format!("{:?}", v1());
    assert!(!debug.contains(V1_TOKEN), "{debug}");
    assert!(!debug.contains(V1_KEY), "{debug}");
    assert!(debug.contains("redacted"));
    assert!(debug.contains(V1_CORP));
}
