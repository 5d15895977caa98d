//! Random identifiers shaped like the real ones (`wk…` accounts, `wm…` customers, …).

use rand::Rng;
use rand::distr::Alphanumeric;

/// `n` random ASCII letters and digits.
pub fn alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// `n` random decimal digits (the first one non-zero).
pub fn digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            let low = if i == 0 { 1 } else { 0 };
            char::from(b'0' + rng.random_range(low..10u8))
        })
        .collect()
}

/// A new open_kfid: `wk` + 30 characters, like `wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw`.
pub fn open_kfid() -> String {
    format!("wk{}", alnum(30))
}

/// Whether `s` looks like an open_kfid at all (otherwise 95000 rather than 95004).
pub fn looks_like_open_kfid(s: &str) -> bool {
    s.len() > 2
        && s.len() <= 64
        && s.starts_with("wk")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A generated message id for a customer message or event.
pub fn msgid() -> String {
    format!("from_msgid_{}", digits(19))
}

/// A generated msgid for an API-sent message without a caller id.
pub fn sent_msgid() -> String {
    alnum(32)
}

/// A single-use code (welcome_code / msg_code).
pub fn code() -> String {
    alnum(43)
}

/// A callback Token, shaped like `ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR`.
pub fn callback_token() -> String {
    format!("ENC{}", alnum(44))
}

/// A temporary media id.
pub fn media_id() -> String {
    format!("3{}", alnum(63))
}
