//! `msg_signature`: lower-case hex SHA-1 over the four sorted strings (official doc 90968).

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Computes `msg_signature = hex(SHA1(concat(sort([token, timestamp, nonce, encrypt]))))`.
///
/// The four strings are sorted by their bytes and hashed with no separator.
///
/// ```
/// // The official WeCom sample (official doc 90968).
/// let sig = wechat_kf::crypto::signature(
///     "QDG6eK",
///     "1409659589",
///     "263014780",
///     "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
/// );
/// assert_eq!(sig, "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3");
/// ```
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let hex = signature_hex(token, timestamp, nonce, encrypt);
    // The hex digits are ASCII.
    hex.iter().map(|&c| char::from(c)).collect()
}

/// Signature inputs up to this many bytes are joined on the stack before hashing.
const JOINED: usize = 1024;

/// The signature as 40 lower-case hex bytes, without allocating.
pub(crate) fn signature_hex(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> [u8; 40] {
    let mut parts = [
        token.as_bytes(),
        timestamp.as_bytes(),
        nonce.as_bytes(),
        encrypt.as_bytes(),
    ];
    // A 4-input sorting network; `sort_unstable` costs ~35 ns here, mostly in `memcmp` calls.
    for (i, j) in [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)] {
        if less(parts[j], parts[i]) {
            parts.swap(i, j);
        }
    }
    // One contiguous input when it fits the stack (a KF callback's is ~500 bytes): SHA-1 then
    // runs its block function once over every whole block instead of per part through its
    // partial-block buffer.
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let digest = if total <= JOINED {
        let mut joined = [0u8; JOINED];
        let mut at = 0;
        for part in parts {
            joined[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Sha1::digest(&joined[..at])
    } else {
        let mut sha = Sha1::new();
        for part in parts {
            sha.update(part);
        }
        sha.finalize()
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 40];
    for (i, byte) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// Byte order, deciding on the first byte when it differs (the usual case) without a `memcmp`.
#[inline]
fn less(a: &[u8], b: &[u8]) -> bool {
    match (a.first(), b.first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

/// Checks `msg_signature` in constant time (for equal lengths; the length is not secret).
pub(crate) fn verify(
    msg_signature: &str,
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
) -> bool {
    let expected = signature_hex(token, timestamp, nonce, encrypt);
    let Ok(given) = <&[u8; 40]>::try_from(msg_signature.as_bytes()) else {
        return false;
    };
    // Five 8-byte words instead of 40 single bytes: subtle puts an optimisation barrier on each.
    let mut equal = subtle::Choice::from(1);
    for (a, b) in expected.chunks_exact(8).zip(given.chunks_exact(8)) {
        let a = u64::from_ne_bytes(a.try_into().unwrap_or([0; 8]));
        let b = u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
        equal &= a.ct_eq(&b);
    }
    bool::from(equal)
}
