//! The emulator's own WXBizMsgCrypt (official docs 90968, 90307), independent of the `wechat-kf` library so that
//! each can catch the other's mistakes. Checked against vector V6 of `crates/wechat-kf/tests/crypto_vectors.rs` (the golden file for exactly the
//! callback the emulator sends) and V1/V2.

use aes::Aes256;
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha1::{Digest, Sha1};

/// Why decryption or key parsing failed; the numbers are the official library codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// -40001: signature mismatch.
    #[error("signature verification failed (-40001)")]
    Signature,
    /// -40004: EncodingAESKey invalid.
    #[error("EncodingAESKey invalid (-40004)")]
    Key,
    /// -40005: receive_id mismatch.
    #[error("receive_id mismatch (-40005)")]
    ReceiveId,
    /// -40007: AES decrypt failed.
    #[error("AES decrypt failed (-40007)")]
    Decrypt,
    /// -40008: decrypted buffer invalid.
    #[error("decrypted buffer invalid (-40008)")]
    Buffer,
    /// -40010: base64 decode failed.
    #[error("base64 decode failed (-40010)")]
    Base64,
}

/// Key material for one corp: AES key (from the 43-char EncodingAESKey), Token and receive_id.
#[derive(Clone)]
pub struct MsgCrypt {
    key: [u8; 32],
    token: String,
    receive_id: String,
}

impl std::fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("MsgCrypt")
            .field("receive_id", &self.receive_id)
            .finish_non_exhaustive()
    }
}

/// Decodes a 43-character EncodingAESKey into the 32-byte AES key (official doc 90968).
pub fn decode_aes_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptoError> {
    if encoding_aes_key.len() != 43 {
        return Err(CryptoError::Key);
    }
    // Real keys carry non-zero trailing bits in their last character: allow them.
    const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let bytes = KEY_ENGINE
        .decode(format!("{encoding_aes_key}="))
        .map_err(|_| CryptoError::Key)?;
    bytes.try_into().map_err(|_| CryptoError::Key)
}

/// `hex(sha1(sorted(token, timestamp, nonce, encrypted)))` (official doc 90968).
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypted: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypted];
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

impl MsgCrypt {
    /// Builds the crypt from the configured Token, EncodingAESKey and corp id.
    pub fn new(
        token: &str,
        encoding_aes_key: &str,
        receive_id: &str,
    ) -> Result<MsgCrypt, CryptoError> {
        Ok(MsgCrypt {
            key: decode_aes_key(encoding_aes_key)?,
            token: token.to_string(),
            receive_id: receive_id.to_string(),
        })
    }

    /// Encrypts `msg` with a random 16-byte prefix.
    pub fn encrypt(&self, msg: &str) -> String {
        let random: [u8; 16] = rand::random::<[u8; 16]>()
            .map(|b| b"0123456789abcdefghijklmnopqrstuv"[(b & 31) as usize]);
        self.encrypt_with_random(&random, msg)
    }

    /// Encrypts `msg` with the given 16-byte prefix (deterministic; for golden tests).
    pub fn encrypt_with_random(&self, random: &[u8; 16], msg: &str) -> String {
        let mut plain = Vec::with_capacity(20 + msg.len() + self.receive_id.len() + 32);
        plain.extend_from_slice(random);
        plain.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        plain.extend_from_slice(msg.as_bytes());
        plain.extend_from_slice(self.receive_id.as_bytes());
        // PKCS#7 to a multiple of 32 (not 16!): 1..=32 bytes of value `pad`.
        let pad = 32 - plain.len() % 32;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let iv = &self.key[..16];
        let cipher = cbc::Encryptor::<Aes256>::new_from_slices(&self.key, iv)
            .expect("a 32-byte key and 16-byte IV are valid");
        let len = plain.len();
        let encrypted = cipher
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .expect("the buffer is already a multiple of the block size");
        STANDARD.encode(encrypted)
    }

    /// Decrypts an `Encrypt` / `echostr` value and checks the receive_id (official doc 90968).
    pub fn decrypt(&self, encrypted: &str) -> Result<String, CryptoError> {
        let data = STANDARD
            .decode(encrypted)
            .map_err(|_| CryptoError::Base64)?;
        if data.is_empty() || data.len() % 32 != 0 {
            return Err(CryptoError::Decrypt);
        }
        let iv = &self.key[..16];
        let cipher = cbc::Decryptor::<Aes256>::new_from_slices(&self.key, iv)
            .map_err(|_| CryptoError::Decrypt)?;
        let mut data = data;
        let plain = cipher
            .decrypt_padded_mut::<NoPadding>(&mut data)
            .map_err(|_| CryptoError::Decrypt)?;
        let pad = *plain.last().ok_or(CryptoError::Buffer)? as usize;
        if !(1..=32).contains(&pad) || pad > plain.len() {
            return Err(CryptoError::Buffer);
        }
        let plain = &plain[..plain.len() - pad];
        if plain.len() < 20 {
            return Err(CryptoError::Buffer);
        }
        let len = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]) as usize;
        if 20 + len > plain.len() {
            return Err(CryptoError::Buffer);
        }
        let msg = &plain[20..20 + len];
        if &plain[20 + len..] != self.receive_id.as_bytes() {
            return Err(CryptoError::ReceiveId);
        }
        String::from_utf8(msg.to_vec()).map_err(|_| CryptoError::Buffer)
    }

    /// The signature of an encrypted value with this crypt's Token.
    pub fn sign(&self, timestamp: &str, nonce: &str, encrypted: &str) -> String {
        signature(&self.token, timestamp, nonce, encrypted)
    }

    /// Verifies the signature, then decrypts.
    pub fn verify_and_decrypt(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypted: &str,
    ) -> Result<String, CryptoError> {
        if !constant_time_eq(
            self.sign(timestamp, nonce, encrypted).as_bytes(),
            msg_signature.as_bytes(),
        ) {
            return Err(CryptoError::Signature);
        }
        self.decrypt(encrypted)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The decrypted `kf_msg_or_event` XML, byte for byte as in vector V6 (see the module docs).
pub fn kf_event_plaintext(corp_id: &str, create_time: i64, token: &str, open_kfid: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><CreateTime>{create_time}</CreateTime>\
<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
<Token><![CDATA[{token}]]></Token><OpenKfId><![CDATA[{open_kfid}]]></OpenKfId></xml>"
    )
}

/// The decrypted `kf_account_auth_change` XML (official doc 97712), with one repeated
/// `AuthAddOpenKfId` / `AuthDelOpenKfId` element per id, in the order given. The ids must not
/// contain `]]>` (the control API only accepts `[0-9a-zA-Z_-]`).
pub fn auth_change_plaintext(
    corp_id: &str,
    create_time: i64,
    add: &[String],
    del: &[String],
) -> String {
    let mut xml = format!(
        "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>\
<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
<Event><![CDATA[kf_account_auth_change]]></Event>"
    );
    for id in add {
        xml.push_str(&format!(
            "<AuthAddOpenKfId><![CDATA[{id}]]></AuthAddOpenKfId>"
        ));
    }
    for id in del {
        xml.push_str(&format!(
            "<AuthDelOpenKfId><![CDATA[{id}]]></AuthDelOpenKfId>"
        ));
    }
    xml.push_str("</xml>");
    xml
}

/// The encrypted POST envelope (official doc 90968); `AgentID` is sent empty.
pub fn envelope_xml(corp_id: &str, encrypted: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
    )
}

/// Extracts the text of `<tag>` (CDATA or plain) from a small flat XML document.
pub fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let inner = &xml[start..end];
    let inner = inner
        .strip_prefix("<![CDATA[")
        .and_then(|s| s.strip_suffix("]]>"))
        .unwrap_or(inner);
    Some(inner.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_TOKEN: &str = "QDG6eK";
    const V1_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const V1_CORP: &str = "wx5823bf96d3bd56c7";

    #[test]
    fn v6_callback_is_reproduced_byte_for_byte() {
        let crypt = MsgCrypt::new(V1_TOKEN, V1_KEY, V1_CORP).unwrap();
        let plain = kf_event_plaintext(
            V1_CORP,
            1_700_000_000,
            "ENCTESTTOKEN0000000000000000000001",
            "wkTESTOPENKFID000000000000000001",
        );
        let encrypted = crypt.encrypt_with_random(b"abcdefghijklmnop", &plain);
        assert_eq!(
            encrypted,
            "7ho9XWI/HTOA1L6oduAxX9LNhMaFCp7Yre3u1FOSfYIg3jeMdjD56prUxXn28j2RaWf71RJNVKJGSi6tDj+n9MIUMb8aHHLy5IhCeZq25MNftOjmQQKIdIBNfVs9CQJxJAWFGME43hPRGHRg3rJUHhJ2zy4OFnSLetV5qaI96ImReosw9YSZ9F8mRSR6r5c0W4Xp7yVrt1rUDvQ0ZnjfIPNwSmd8F1iwQa1/kODyCHXN4ImnEx14qLLALPTqYTWlIP1Xs7Iy0H5/OUUY7EoBZIq/zkQ4+zMijai4xA6SFOrmHe5Jpo4Z3DBuyrqNWliihdWwqM7n10flqHF9R7wKDO5E8veJD9qDgBNIfOxvQt5e0m1+ZYGOv2ORFEGZJRx80Eo3Z3TGZcUYvd8CyzwoWAwrt5nzGU08bfDvorCYoAwCq1IKTb38L0K1EOm8PMToxdS+cdAsgUNQBNhT2j5V5w=="
        );
        assert_eq!(
            crypt.sign("1700000000", "1234567890", &encrypted),
            "467bf8f952ba7e3bac9e4ef87bf2b307c1b5bf1a"
        );
        assert_eq!(crypt.decrypt(&encrypted).unwrap(), plain);
    }

    #[test]
    fn v6_echostr_is_reproduced() {
        let crypt = MsgCrypt::new(V1_TOKEN, V1_KEY, V1_CORP).unwrap();
        let echostr = crypt.encrypt_with_random(b"0123456789abcdef", "9876543210123456789");
        assert_eq!(
            echostr,
            "sKqRbbiSUnDhFHOvPjtUMX2I+uKyRghxUAumeARjiLaOhwZ/bGmuL0OE3MviAlfIAG4IjUAP1HI1hvOewREAqw=="
        );
        assert_eq!(
            crypt.sign("1700000001", "42", &echostr),
            "11f0b2e2ca928e894b0b19a51e0fc76d5fb1ff74"
        );
    }

    #[test]
    fn v1a_official_verification_sample_decrypts() {
        let crypt = MsgCrypt::new(V1_TOKEN, V1_KEY, V1_CORP).unwrap();
        let echostr = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
        let plain = crypt
            .verify_and_decrypt(
                "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
                "1409659589",
                "263014780",
                echostr,
            )
            .unwrap();
        assert_eq!(plain, "1616140317555161061");
    }

    #[test]
    fn v2a_wrong_nonce_fails_the_signature() {
        let crypt = MsgCrypt::new(
            "123456",
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            "wx49f0ab532d5d035a",
        )
        .unwrap();
        let echostr = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
        let sig = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96";
        assert_eq!(
            crypt
                .verify_and_decrypt(sig, "1411443780", "437374425", echostr)
                .unwrap(),
            "5927782489442352469"
        );
        assert_eq!(
            crypt.verify_and_decrypt(sig, "1411443780", "437374424", echostr),
            Err(CryptoError::Signature)
        );
    }

    #[test]
    fn auth_change_has_one_element_per_id_in_order() {
        let xml = auth_change_plaintext(
            "wwCorp",
            1_348_831_860,
            &["wkA".into(), "wkB".into()],
            &["wkC".into()],
        );
        assert_eq!(
            xml,
            "<xml><ToUserName><![CDATA[wwCorp]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>\
<CreateTime>1348831860</CreateTime><MsgType><![CDATA[event]]></MsgType>\
<Event><![CDATA[kf_account_auth_change]]></Event>\
<AuthAddOpenKfId><![CDATA[wkA]]></AuthAddOpenKfId><AuthAddOpenKfId><![CDATA[wkB]]></AuthAddOpenKfId>\
<AuthDelOpenKfId><![CDATA[wkC]]></AuthDelOpenKfId></xml>"
        );
        assert!(!auth_change_plaintext("ww", 1, &[], &[]).contains("Auth"));
    }

    #[test]
    fn a_wrong_receive_id_is_rejected() {
        let a = MsgCrypt::new(V1_TOKEN, V1_KEY, V1_CORP).unwrap();
        let b = MsgCrypt::new(V1_TOKEN, V1_KEY, "wwother").unwrap();
        assert_eq!(b.decrypt(&a.encrypt("hello")), Err(CryptoError::ReceiveId));
    }

    #[test]
    fn invalid_keys_are_rejected() {
        for key in [
            "",
            "123456789012345678901234567890123456789012",
            "12345678901234567890123456789012345678901234",
            "4Ma3YBrSBbX2aez8MJpXGBne5LSDwgGqHbhM9WPYIw=",
            "4Ma3YBrSBbX2aez8MJpXGBne5LSDwgGqHbhM9WPYIw$",
        ] {
            assert_eq!(decode_aes_key(key), Err(CryptoError::Key), "{key}");
        }
    }

    #[test]
    fn a_random_round_trip_survives() {
        let crypt = MsgCrypt::new(
            "tok",
            "4Ma3YBrSBbX2aez8MJpXGBne5LSDwgGqHbhM9WPYIws",
            "ww6a112864f8022910",
        )
        .unwrap();
        for msg in ["", "x", "你好，世界", &"a".repeat(1000)] {
            assert_eq!(crypt.decrypt(&crypt.encrypt(msg)).unwrap(), msg);
        }
    }

    #[test]
    fn xml_fields_are_read_from_cdata_and_plain_text() {
        let xml = kf_event_plaintext("ww1", 5, "T", "wk1");
        assert_eq!(xml_field(&xml, "Token").as_deref(), Some("T"));
        assert_eq!(xml_field(&xml, "CreateTime").as_deref(), Some("5"));
        assert_eq!(xml_field(&xml, "Missing"), None);
    }
}
