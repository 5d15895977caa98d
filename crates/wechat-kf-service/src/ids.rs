//! What the service accepts as an id from outside (a callback, the reply API, an operator
//! request) before it becomes an account that is pulled, a row, or a log field; and
//! [`bounded`], the most of an untrusted value a log line or an answer quotes.
//!
//! WeChat documents lengths, not alphabets, for most ids; the shapes here accept every id seen
//! in the official docs and examples (`wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw`, `wmXyZ0123456789`)
//! and nothing that could be a path, SQL or a log injection (see `docs/vendor-notes.md`).

/// Longest `open_kfid` (official docs 94663, 94664: "≤ 64 bytes" in requests).
pub const OPEN_KFID_MAX: usize = 64;
/// Longest `external_userid` accepted. WeChat documents none; its examples are 15–32 characters.
pub const EXTERNAL_USERID_MAX: usize = 128;
/// Longest servicer `userid` (a WeCom member id: 1–64 bytes).
pub const USERID_MAX: usize = 64;

/// Which id a value was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A customer service account (`open_kfid`, `OpenKfId`).
    OpenKfId,
    /// A customer (`external_userid`, `touser`).
    ExternalUserId,
    /// A servicer (`servicer_userid`), a WeCom member id.
    UserId,
}

impl IdKind {
    /// Its field name in WeChat's JSON.
    pub fn field(self) -> &'static str {
        match self {
            IdKind::OpenKfId => "open_kfid",
            IdKind::ExternalUserId => "external_userid",
            IdKind::UserId => "servicer_userid",
        }
    }

    fn max(self) -> usize {
        match self {
            IdKind::OpenKfId => OPEN_KFID_MAX,
            IdKind::ExternalUserId => EXTERNAL_USERID_MAX,
            IdKind::UserId => USERID_MAX,
        }
    }

    fn allows(self, b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || b == b'_'
            || b == b'-'
            // WeCom member ids may hold `.` and `@` (e.g. an e-mail-like id).
            || (self == IdKind::UserId && (b == b'.' || b == b'@'))
    }
}

/// Checks `value` against the shape of `kind`; the error says what is wrong without quoting
/// more than a bounded prefix of the value.
pub fn check(kind: IdKind, value: &str) -> Result<(), String> {
    let field = kind.field();
    if value.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > kind.max() {
        return Err(format!(
            "{field} is {} bytes, longer than WeChat's {} (starts {:?})",
            value.len(),
            kind.max(),
            bounded(value, 16)
        ));
    }
    if !value.bytes().all(|b| kind.allows(b)) {
        let allowed = if kind == IdKind::UserId {
            "letters, digits, '_', '-', '.' and '@'"
        } else {
            "letters, digits, '_' and '-'"
        };
        return Err(format!(
            "{field} {:?} holds characters other than {allowed}",
            bounded(value, 16)
        ));
    }
    Ok(())
}

/// At most `max` bytes of `value` (cut at a character boundary, `…` appended), control
/// characters replaced by `?`: what a log line or an answer may quote of a value it does not
/// trust.
pub fn bounded(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max) + 3);
    for c in value.chars() {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_ids_pass() {
        assert!(check(IdKind::OpenKfId, "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw").is_ok());
        assert!(check(IdKind::ExternalUserId, "wmXyZ0123456789").is_ok());
        assert!(check(IdKind::UserId, "zhangsan.li@corp").is_ok());
        assert!(check(IdKind::OpenKfId, &"w".repeat(64)).is_ok());
    }

    #[test]
    fn oversized_empty_and_hostile_ids_are_refused_with_a_bounded_reason() {
        let long = "w".repeat(30_000);
        let e = check(IdKind::OpenKfId, &long).unwrap_err();
        assert!(e.contains("30000 bytes") && e.len() < 120, "{e}");
        let e = check(IdKind::OpenKfId, "../../etc/passwd; DROP TABLE cursors;--").unwrap_err();
        assert!(e.contains("open_kfid") && e.len() < 140, "{e}");
        assert!(check(IdKind::ExternalUserId, "").is_err());
        assert!(check(IdKind::ExternalUserId, "wm\nINFO forged line").is_err());
        assert!(check(IdKind::UserId, "a b").is_err());
        assert!(check(IdKind::OpenKfId, "wk.x").is_err());
    }

    #[test]
    fn bounded_values_are_cut_and_lose_their_control_characters() {
        assert_eq!(bounded("abc", 10), "abc");
        assert_eq!(bounded("a\nb", 10), "a?b");
        assert_eq!(bounded(&"x".repeat(30_000), 8), "xxxxxxxx…");
        assert_eq!(bounded("日本語", 4), "日…");
    }
}
