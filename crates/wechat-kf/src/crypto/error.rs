//! The one error type of the callback crypto, with the official WXBizMsgCrypt return codes.

/// Why a callback could not be verified, decrypted, parsed or encrypted.
///
/// Each variant names exactly one failed check and maps to one official WXBizMsgCrypt return
/// code ([`code`](Self::code), official doc 90968). The error text never contains the token, the
/// key or any decrypted content.
///
/// For an HTTP receiver: [`is_signature_mismatch`](Self::is_signature_mismatch) → 401,
/// [`is_malformed_input`](Self::is_malformed_input) → 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// `msg_signature` does not match SHA1(sort(token, timestamp, nonce, encrypt)) (-40001).
    #[error("signature mismatch")]
    SignatureMismatch,
    /// The XML (envelope or decrypted event) could not be read, or lacks a required element
    /// (-40002). The text says what was wrong.
    #[error("malformed XML: {0}")]
    MalformedXml(&'static str),
    /// The EncodingAESKey is not 43 base64 characters decoding to 32 bytes (-40004).
    #[error("invalid EncodingAESKey: expected 43 base64 characters")]
    InvalidKey,
    /// The receive_id (CorpID) at the end of the decrypted buffer is not the configured one
    /// (-40005).
    #[error("receive_id mismatch")]
    ReceiveIdMismatch,
    /// The message is too long for the 4-byte length field (-40006).
    #[error("message too long to encrypt")]
    MessageTooLong,
    /// The ciphertext is empty or not a whole number of 32-byte blocks, so AES-CBC cannot
    /// decrypt it (-40007).
    #[error("ciphertext length {len} is not a non-zero multiple of 32")]
    CipherLength {
        /// The decoded ciphertext length in bytes.
        len: usize,
    },
    /// The PKCS#7 padding is not 1..=32 bytes all equal to the pad length (-40008).
    #[error("invalid PKCS#7 padding")]
    Padding,
    /// The decrypted buffer is shorter than 20 bytes, or its length field points past its end
    /// (-40008).
    #[error("message length field exceeds the decrypted buffer")]
    FrameLength,
    /// The decrypted message is not valid UTF-8 (-40008).
    #[error("decrypted message is not valid UTF-8")]
    InvalidUtf8,
    /// The `Encrypt` value (or echostr) is not valid base64 (-40010).
    #[error("invalid base64 in the encrypted payload")]
    Base64,
    /// The reply XML cannot be generated from these values, e.g. a non-numeric timestamp or a
    /// nonce containing `]]>` (-40011).
    #[error("cannot generate the reply XML: {0}")]
    ReplyXml(&'static str),
}

impl CryptoError {
    /// The official WXBizMsgCrypt return code (-40001 … -40011) for this failure.
    pub const fn code(&self) -> i32 {
        match self {
            Self::SignatureMismatch => -40001,
            Self::MalformedXml(_) => -40002,
            Self::InvalidKey => -40004,
            Self::ReceiveIdMismatch => -40005,
            Self::MessageTooLong => -40006,
            Self::CipherLength { .. } => -40007,
            Self::Padding | Self::FrameLength | Self::InvalidUtf8 => -40008,
            Self::Base64 => -40010,
            Self::ReplyXml(_) => -40011,
        }
    }

    /// True when the signature check failed: the sender does not know the token (HTTP 401).
    pub const fn is_signature_mismatch(&self) -> bool {
        matches!(self, Self::SignatureMismatch)
    }

    /// True when the request itself is unreadable: bad XML, base64, ciphertext length, padding,
    /// frame or UTF-8 (HTTP 400). Not true for a signature or receive_id mismatch.
    pub const fn is_malformed_input(&self) -> bool {
        matches!(
            self,
            Self::MalformedXml(_)
                | Self::Base64
                | Self::CipherLength { .. }
                | Self::Padding
                | Self::FrameLength
                | Self::InvalidUtf8
        )
    }

    /// True when the callback decrypted correctly but was meant for another receive_id (CorpID):
    /// usually a configuration mistake on the receiving side.
    pub const fn is_receive_id_mismatch(&self) -> bool {
        matches!(self, Self::ReceiveIdMismatch)
    }
}
