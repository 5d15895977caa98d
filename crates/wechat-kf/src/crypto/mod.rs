//! Callback crypto (WXBizMsgCrypt), both directions (official docs 90968 and 90307).
//!
//! [`CallbackCrypto`] holds the callback Token, the EncodingAESKey (as a precomputed AES-256 key
//! schedule) and the receive_id (the CorpID for KF callbacks). It verifies and decrypts the GET
//! URL check ([`verify_url`](CallbackCrypto::verify_url)) and the POST events
//! ([`decrypt_message`](CallbackCrypto::decrypt_message),
//! [`decrypt_event`](CallbackCrypto::decrypt_event)), and encrypts replies or emulated callbacks
//! ([`encrypt_message`](CallbackCrypto::encrypt_message)). Every failure is a [`CryptoError`]
//! carrying the official return code.
//!
//! ```
//! use wechat_kf::crypto::CallbackCrypto;
//!
//! // The official WeCom sample (official doc 90968): the GET URL verification.
//! let crypto = CallbackCrypto::new(
//!     "QDG6eK",
//!     "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
//!     "wx5823bf96d3bd56c7",
//! )?;
//! let reply = crypto.verify_url(
//!     "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
//!     "1409659589",
//!     "263014780",
//!     "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
//! )?;
//! assert_eq!(reply, "1616140317555161061");
//!
//! // A signature that does not match fails with the official code.
//! let err = crypto.verify_url("0".repeat(40).as_str(), "1409659589", "263014780", "AAAA").unwrap_err();
//! assert!(err.is_signature_mismatch());
//! assert_eq!(err.code(), -40001);
//! # Ok::<(), wechat_kf::crypto::CryptoError>(())
//! ```
//!
//! Decoding tolerances, all on purpose: the EncodingAESKey may carry non-zero trailing bits (as
//! the official sample key does); the `Encrypt` base64 may omit its `=` padding; an echostr whose
//! `+` was turned into a space by a form decoder is repaired (a space is never valid base64); the
//! envelope XML may have its elements in any order, in CDATA or plain text, with or without
//! `AgentID`. Checks that are never relaxed: the signature, the ciphertext length, every PKCS#7
//! pad byte, the length field, the receive_id and UTF-8.

use std::borrow::Cow;
use std::fmt;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use aes::{Aes256Dec, Aes256Enc};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

mod error;
mod replay;
mod signature;
pub(crate) mod xml;

pub use error::CryptoError;
pub use replay::{ReplayError, ReplayWindow};
pub use signature::signature;

/// The EncodingAESKey is base64 without its final `=`; the official key has non-zero trailing
/// bits, so they must be allowed.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// The `Encrypt` payload: standard alphabet, padding optional.
const PAYLOAD_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// WXBizMsgCrypt pads to 32-byte blocks (not AES's 16).
const PAD_BLOCK: usize = 32;

/// Ciphertexts up to this many bytes are decoded and decrypted on the stack; a KF event is about
/// 350 bytes.
const STACK_BUF: usize = 1024;

/// Bytes of the frame before the message: 16 random bytes and the 4-byte length.
const HEADER: usize = 20;

// CBC over a borrowed key schedule: no copy of the (up to 1 KiB) schedule per message.
type CbcDec<'k> = cbc::Decryptor<&'k Aes256Dec>;
type CbcEnc<'k> = cbc::Encryptor<&'k Aes256Enc>;

/// The callback crypto of one callback configuration: Token, EncodingAESKey and receive_id.
///
/// Construct it once and share it (it is `Send + Sync` and cheap to clone); the AES key schedules
/// are computed in [`new`](Self::new). Its `Debug` output redacts the token and the key.
#[derive(Clone)]
pub struct CallbackCrypto {
    token: String,
    receive_id: String,
    iv: [u8; 16],
    dec: Aes256Dec,
    enc: Aes256Enc,
}

impl fmt::Debug for CallbackCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackCrypto")
            .field("token", &"<redacted>")
            .field("encoding_aes_key", &"<redacted>")
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl CallbackCrypto {
    /// Creates the crypto for a callback configuration.
    ///
    /// `encoding_aes_key` is the 43-character EncodingAESKey of the admin console; `receive_id` is
    /// the CorpID for KF callbacks (a suite id or the empty string for third-party variants).
    /// Fails with [`CryptoError::InvalidKey`] (-40004) unless the key is 43 base64 characters.
    pub fn new(
        token: &str,
        encoding_aes_key: &str,
        receive_id: &str,
    ) -> Result<CallbackCrypto, CryptoError> {
        let key = decode_key(encoding_aes_key)?;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&key[..16]);
        Ok(CallbackCrypto {
            token: token.to_owned(),
            receive_id: receive_id.to_owned(),
            iv,
            dec: Aes256Dec::new(&key.into()),
            enc: Aes256Enc::new(&key.into()),
        })
    }

    /// The configured receive_id (CorpID).
    pub fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// Verifies and decrypts the GET URL check; returns the plaintext to answer with, exactly.
    ///
    /// `echostr` must already be URL-decoded (see [`url_decode`] when reading a raw query). A
    /// space in it is read as `+`, repairing a form decoder's `+` → space.
    pub fn verify_url(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &str,
    ) -> Result<String, CryptoError> {
        let echostr = if echostr.contains(' ') {
            Cow::Owned(echostr.replace(' ', "+"))
        } else {
            Cow::Borrowed(echostr)
        };
        self.verify_signature(msg_signature, timestamp, nonce, &echostr)?;
        self.decrypt_field(&echostr)
    }

    /// Verifies and decrypts a POST body; returns the inner (decrypted) XML.
    ///
    /// The signature is checked before any decryption.
    pub fn decrypt_message(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        body_xml: &str,
    ) -> Result<String, CryptoError> {
        self.decrypt_message_with(msg_signature, timestamp, nonce, body_xml, str::to_owned)
    }

    /// Verifies and decrypts a POST body and hands the inner XML, borrowed from a scratch buffer,
    /// to `f`; no allocation happens unless `f` makes one.
    pub fn decrypt_message_with<R>(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        body_xml: &str,
        f: impl FnOnce(&str) -> R,
    ) -> Result<R, CryptoError> {
        let encrypt = extract_encrypt(body_xml)?;
        self.verify_signature(msg_signature, timestamp, nonce, &encrypt)?;
        self.decrypt_field_with(&encrypt, f)
    }

    /// Checks `msg_signature` against the four values, in constant time.
    pub fn verify_signature(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), CryptoError> {
        if signature::verify(msg_signature, &self.token, timestamp, nonce, encrypt) {
            Ok(())
        } else {
            Err(CryptoError::SignatureMismatch)
        }
    }

    /// Computes the `msg_signature` of an `Encrypt` value with this token.
    pub fn sign(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        signature(&self.token, timestamp, nonce, encrypt)
    }

    /// Decrypts one `Encrypt` value (or echostr) without any signature check, checking the
    /// padding, the length field, the receive_id and UTF-8; returns the message.
    pub fn decrypt_field(&self, encrypt: &str) -> Result<String, CryptoError> {
        self.decrypt_field_with(encrypt, str::to_owned)
    }

    /// Like [`decrypt_field`](Self::decrypt_field), handing the borrowed message to `f`.
    pub fn decrypt_field_with<R>(
        &self,
        encrypt: &str,
        f: impl FnOnce(&str) -> R,
    ) -> Result<R, CryptoError> {
        let needed = base64::decoded_len_estimate(encrypt.len());
        if needed <= STACK_BUF {
            let mut buf = [0u8; STACK_BUF];
            self.open(encrypt, &mut buf).map(f)
        } else {
            let mut buf = vec![0u8; needed];
            self.open(encrypt, &mut buf).map(f)
        }
    }

    /// Base64-decodes `encrypt` into `buf`, decrypts it in place and unwraps the frame.
    fn open<'b>(&self, encrypt: &str, buf: &'b mut [u8]) -> Result<&'b str, CryptoError> {
        let len = PAYLOAD_ENGINE
            .decode_slice(encrypt.as_bytes(), buf)
            .map_err(|_| CryptoError::Base64)?;
        if len == 0 || len % PAD_BLOCK != 0 {
            return Err(CryptoError::CipherLength { len });
        }
        let plain = CbcDec::inner_iv_init(&self.dec, &self.iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut buf[..len])
            .map_err(|_| CryptoError::CipherLength { len })?;
        let unpadded = strip_padding(plain)?;
        if unpadded.len() < HEADER {
            return Err(CryptoError::FrameLength);
        }
        let msg_len = u32::from_be_bytes([unpadded[16], unpadded[17], unpadded[18], unpadded[19]]);
        let body = &unpadded[HEADER..];
        let msg_len = usize::try_from(msg_len)
            .ok()
            .filter(|&n| n <= body.len())
            .ok_or(CryptoError::FrameLength)?;
        let (msg, receive_id) = body.split_at(msg_len);
        if receive_id != self.receive_id.as_bytes() {
            return Err(CryptoError::ReceiveIdMismatch);
        }
        std::str::from_utf8(msg).map_err(|_| CryptoError::InvalidUtf8)
    }

    /// Encrypts and signs `plaintext` into the passive-reply envelope (`Encrypt`, `MsgSignature`,
    /// `TimeStamp`, `Nonce`), with a fresh random prefix.
    ///
    /// `timestamp` must be decimal digits and `nonce` must not contain `]]>`
    /// ([`CryptoError::ReplyXml`], -40011).
    pub fn encrypt_message(
        &self,
        plaintext: &str,
        timestamp: &str,
        nonce: &str,
    ) -> Result<String, CryptoError> {
        self.encrypt_with_random(plaintext, &random_prefix(), timestamp, nonce)
    }

    /// [`encrypt_message`](Self::encrypt_message) with a given 16-byte random prefix, for
    /// reproducible output (tests, golden files).
    pub fn encrypt_with_random(
        &self,
        plaintext: &str,
        random: &[u8; 16],
        timestamp: &str,
        nonce: &str,
    ) -> Result<String, CryptoError> {
        if timestamp.is_empty() || !timestamp.bytes().all(|c| c.is_ascii_digit()) {
            return Err(CryptoError::ReplyXml("timestamp must be decimal digits"));
        }
        if nonce.contains("]]>") {
            return Err(CryptoError::ReplyXml("nonce contains ]]>"));
        }
        let encrypt = self.encrypt_field(plaintext, random)?;
        let sig = signature::signature_hex(&self.token, timestamp, nonce, &encrypt);
        let sig = std::str::from_utf8(&sig).map_err(|_| CryptoError::ReplyXml("signature"))?;
        let mut out = String::with_capacity(encrypt.len() + nonce.len() + timestamp.len() + 160);
        out.push_str("<xml>\n<Encrypt><![CDATA[");
        out.push_str(&encrypt);
        out.push_str("]]></Encrypt>\n<MsgSignature><![CDATA[");
        out.push_str(sig);
        out.push_str("]]></MsgSignature>\n<TimeStamp>");
        out.push_str(timestamp);
        out.push_str("</TimeStamp>\n<Nonce><![CDATA[");
        out.push_str(nonce);
        out.push_str("]]></Nonce>\n</xml>");
        Ok(out)
    }

    /// Encrypts `plaintext` into a bare `Encrypt` value (base64) with the given random prefix:
    /// `random || len_be32 || plaintext || receive_id`, PKCS#7-padded to 32 bytes, AES-256-CBC.
    pub fn encrypt_field(&self, plaintext: &str, random: &[u8; 16]) -> Result<String, CryptoError> {
        let msg = plaintext.as_bytes();
        let msg_len = u32::try_from(msg.len()).map_err(|_| CryptoError::MessageTooLong)?;
        let framed = HEADER + msg.len() + self.receive_id.len();
        let pad = PAD_BLOCK - framed % PAD_BLOCK;
        let total = framed + pad;
        let mut buf = Vec::with_capacity(total);
        buf.extend_from_slice(random);
        buf.extend_from_slice(&msg_len.to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(self.receive_id.as_bytes());
        // `pad` is 1..=32, so it fits a byte.
        buf.resize(total, pad as u8);
        let cipher = CbcEnc::inner_iv_init(&self.enc, &self.iv.into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, total)
            .map_err(|_| CryptoError::MessageTooLong)?;
        Ok(STANDARD.encode(cipher))
    }
}

/// Reads the `Encrypt` element of a callback envelope (CDATA or plain text, any element order).
pub fn extract_encrypt(body_xml: &str) -> Result<Cow<'_, str>, CryptoError> {
    // WeCom's own form first, in one strict pass, up to `<Encrypt>`; anything unusual before it
    // starts over on the tolerant scanner, which reads the strict form identically.
    if let Some(mut scan) = xml::strict(body_xml) {
        loop {
            match scan.step() {
                xml::Step::Element("Encrypt", text) => return Ok(Cow::Borrowed(text)),
                xml::Step::Element(..) => {}
                xml::Step::End => return Err(CryptoError::MalformedXml(MISSING_ENCRYPT)),
                xml::Step::Unusual => break,
            }
        }
    }
    extract_encrypt_general(body_xml)
}

const MISSING_ENCRYPT: &str = "missing <Encrypt> element";

/// [`extract_encrypt`] through the tolerant scanner only, without the strict fast path; the same
/// results, slower. Kept callable for the differential tests and the fuzz target.
#[doc(hidden)]
pub fn extract_encrypt_general(body_xml: &str) -> Result<Cow<'_, str>, CryptoError> {
    for element in xml::children(body_xml).map_err(CryptoError::MalformedXml)? {
        let element = element.map_err(CryptoError::MalformedXml)?;
        if element.name == "Encrypt" {
            return element.text().map_err(CryptoError::MalformedXml);
        }
    }
    Err(CryptoError::MalformedXml(MISSING_ENCRYPT))
}

/// Percent-decodes a query value such as the echostr, leaving `+` as `+` (base64 uses it) and
/// malformed escapes as they are. Only needed when reading a raw query string: WeCom sends
/// `echostr` percent-encoded (`%2B`, `%2F`, `%3D`).
///
/// ```
/// let raw = "P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D";
/// assert_eq!(
///     wechat_kf::crypto::url_decode(raw),
///     "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
/// );
/// ```
pub fn url_decode(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = if b[i] == b'%' && i + 2 < b.len() {
            match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(hi), Some(lo)) => Some(hi << 4 | lo),
                _ => None,
            }
        } else {
            None
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes the 43-character EncodingAESKey into the 32-byte AES key.
fn decode_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptoError> {
    let k = encoding_aes_key.as_bytes();
    if k.len() != 43
        || !k
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    {
        return Err(CryptoError::InvalidKey);
    }
    let mut buf = [0u8; 33];
    let n = KEY_ENGINE
        .decode_slice(k, &mut buf)
        .map_err(|_| CryptoError::InvalidKey)?;
    if n != 32 {
        return Err(CryptoError::InvalidKey);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&buf[..32]);
    Ok(key)
}

/// Validates and strips PKCS#7 padding of 1..=32 bytes, checking every pad byte without an
/// early exit.
fn strip_padding(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let Some(&last) = plain.last() else {
        return Err(CryptoError::Padding);
    };
    let pad = usize::from(last);
    if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
        return Err(CryptoError::Padding);
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    let diff = padding.iter().fold(0u8, |acc, &c| acc | (c ^ last));
    if diff != 0 {
        return Err(CryptoError::Padding);
    }
    Ok(body)
}

/// A fresh random nonce: a decimal number of up to 10 digits, like the ones WeCom sends.
pub fn random_nonce() -> String {
    use rand::Rng as _;
    rand::rng().random::<u32>().to_string()
}

/// 16 random alphanumeric bytes, like the official samples (some decoders treat the frame as
/// text).
fn random_prefix() -> [u8; 16] {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut random = [0u8; 16];
    for byte in &mut random {
        *byte = rng.sample(rand::distr::Alphanumeric);
    }
    random
}
