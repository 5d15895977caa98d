//! Access tokens (gettoken) and callback Tokens (the `sync_msg.token`).

use std::collections::{HashMap, VecDeque};

use crate::clock::{MINUTE, Millis};
use crate::errors::{self, ApiError, ApiResult};
use crate::ids;

/// How long a callback Token is accepted by `sync_msg`.
pub const CALLBACK_TOKEN_TTL: Millis = 10 * MINUTE;

/// How many issued access tokens are remembered (to tell "expired" from "unknown").
const REMEMBERED_TOKENS: usize = 1000;

#[derive(Debug, Clone)]
struct IssuedToken {
    token: String,
    expires_at: Millis,
    revoked: bool,
}

/// The corp's access tokens: one current token, re-issued after expiry or revocation.
#[derive(Debug, Default)]
pub struct AccessTokens {
    issued: VecDeque<IssuedToken>,
}

impl AccessTokens {
    /// The current token if still valid, else a new one. Returns `(token, expires_in seconds)`.
    pub fn get_or_issue(&mut self, now: Millis, ttl: Millis) -> (String, i64) {
        if let Some(last) = self.issued.back() {
            if !last.revoked && now < last.expires_at {
                return (last.token.clone(), (last.expires_at - now + 999) / 1000);
            }
        }
        let token = ids::alnum(64);
        self.issued.push_back(IssuedToken {
            token: token.clone(),
            expires_at: now + ttl,
            revoked: false,
        });
        while self.issued.len() > REMEMBERED_TOKENS {
            self.issued.pop_front();
        }
        (token, ttl / 1000)
    }

    /// Checks a token from the query string: 41001 missing, 40014 unknown/revoked, 42001 expired.
    pub fn check(&self, token: Option<&str>, now: Millis) -> ApiResult<()> {
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => {
                return Err(ApiError::new(
                    errors::MISSING_ACCESS_TOKEN,
                    "access_token missing",
                ));
            }
        };
        match self.issued.iter().rev().find(|t| t.token == token) {
            None => Err(ApiError::new(
                errors::INVALID_ACCESS_TOKEN,
                "invalid access_token",
            )),
            Some(t) if t.revoked => Err(ApiError::new(
                errors::INVALID_ACCESS_TOKEN,
                "invalid access_token",
            )),
            Some(t) if now >= t.expires_at => Err(ApiError::new(
                errors::ACCESS_TOKEN_EXPIRED,
                "access_token expired",
            )),
            Some(_) => Ok(()),
        }
    }

    /// Revokes every token (or only `which`); later calls with them answer 40014.
    pub fn revoke(&mut self, which: Option<&str>) -> usize {
        let mut n = 0;
        for t in self
            .issued
            .iter_mut()
            .filter(|t| which.is_none_or(|w| w == t.token))
        {
            if !t.revoked {
                t.revoked = true;
                n += 1;
            }
        }
        n
    }
}

/// Callback Tokens: each callback carries a fresh one, valid 10 minutes, for its account.
#[derive(Debug, Default)]
pub struct CallbackTokens {
    tokens: HashMap<String, (String, Millis)>,
}

impl CallbackTokens {
    /// Issues a new Token for `open_kfid`.
    pub fn issue(&mut self, open_kfid: &str, now: Millis) -> (String, Millis) {
        self.tokens.retain(|_, (_, expires)| *expires > now);
        let token = ids::callback_token();
        let expires = now + CALLBACK_TOKEN_TTL;
        self.tokens
            .insert(token.clone(), (open_kfid.to_string(), expires));
        (token, expires)
    }

    /// 95007 unless `token` was issued for `open_kfid` less than 10 minutes ago.
    pub fn check(&self, token: &str, open_kfid: &str, now: Millis) -> ApiResult<()> {
        match self.tokens.get(token) {
            Some((account, expires)) if account == open_kfid && now < *expires => Ok(()),
            _ => Err(ApiError::new(
                errors::INVALID_MSG_TOKEN,
                "invalid msg token",
            )),
        }
    }
}

/// A fixed-window counter: at most `limit` events per `window`, then blocked until the window ends
/// and, like the real server, for a full block period after the excess.
#[derive(Debug, Default, Clone)]
pub struct Window {
    start: Millis,
    count: u32,
    blocked_until: Millis,
}

impl Window {
    /// Counts one event; false if the limit is exceeded (0 = unlimited).
    pub fn hit(&mut self, now: Millis, window: Millis, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if now < self.blocked_until {
            return false;
        }
        if now - self.start >= window || now < self.start {
            self.start = now - now.rem_euclid(window);
            self.count = 0;
        }
        self.count += 1;
        if self.count > limit {
            self.blocked_until = now + window;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_token_is_returned_while_valid_and_a_new_one_after_expiry() {
        let mut t = AccessTokens::default();
        let (a, exp) = t.get_or_issue(0, 7_200_000);
        assert_eq!(exp, 7200);
        assert_eq!(t.get_or_issue(1000, 7_200_000).0, a);
        assert!(t.check(Some(&a), 7_199_999).is_ok());
        assert_eq!(t.check(Some(&a), 7_200_000).unwrap_err().code, 42001);
        let (b, _) = t.get_or_issue(7_200_000, 7_200_000);
        assert_ne!(a, b);
        assert_eq!(t.check(Some("nope"), 0).unwrap_err().code, 40014);
        assert_eq!(t.check(None, 0).unwrap_err().code, 41001);
    }

    #[test]
    fn revoked_tokens_answer_40014_and_gettoken_issues_a_new_one() {
        let mut t = AccessTokens::default();
        let (a, _) = t.get_or_issue(0, 7_200_000);
        t.revoke(None);
        assert_eq!(t.check(Some(&a), 1).unwrap_err().code, 40014);
        assert_ne!(t.get_or_issue(2, 7_200_000).0, a);
    }

    #[test]
    fn callback_tokens_are_scoped_to_their_account_and_expire_after_ten_minutes() {
        let mut t = CallbackTokens::default();
        let (tok, _) = t.issue("wkA", 0);
        assert!(t.check(&tok, "wkA", CALLBACK_TOKEN_TTL - 1).is_ok());
        assert_eq!(t.check(&tok, "wkB", 1).unwrap_err().code, 95007);
        assert_eq!(
            t.check(&tok, "wkA", CALLBACK_TOKEN_TTL).unwrap_err().code,
            95007
        );
    }

    #[test]
    fn a_window_blocks_after_the_limit_until_a_full_period_passed() {
        let mut w = Window::default();
        assert!(w.hit(0, 60_000, 2));
        assert!(w.hit(1, 60_000, 2));
        assert!(!w.hit(2, 60_000, 2));
        assert!(!w.hit(60_001, 60_000, 2));
        assert!(w.hit(60_002, 60_000, 2));
    }
}
