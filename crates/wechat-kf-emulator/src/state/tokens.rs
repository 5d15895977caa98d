//! Access tokens (gettoken) and callback Tokens (the `sync_msg.token`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::clock::{HOUR, MINUTE, Millis};
use crate::config::KfMode;
use crate::errors::{self, ApiError, ApiResult};
use crate::ids;

/// How long a callback Token is accepted by `sync_msg`.
pub const CALLBACK_TOKEN_TTL: Millis = 10 * MINUTE;

/// How many issued access tokens are remembered (to tell "expired" from "unknown").
const REMEMBERED_TOKENS: usize = 1000;

#[derive(Debug, Clone)]
struct IssuedToken {
    token: String,
    /// The kind of secret it was issued for (95011 / 95012 checks).
    kind: KfMode,
    expires_at: Millis,
    revoked: bool,
}

/// The corp's access tokens: one current token per kind of secret, re-issued after expiry or
/// revocation.
#[derive(Debug, Default)]
pub struct AccessTokens {
    issued: VecDeque<IssuedToken>,
}

impl AccessTokens {
    /// The current token of a secret kind if still valid, else a new one. Returns
    /// `(token, expires_in seconds)`.
    pub fn get_or_issue(&mut self, now: Millis, ttl: Millis, kind: KfMode) -> (String, i64) {
        if let Some(last) = self.issued.iter().rev().find(|t| t.kind == kind) {
            if !last.revoked && now < last.expires_at {
                return (last.token.clone(), (last.expires_at - now + 999) / 1000);
            }
        }
        let token = ids::alnum(64);
        self.issued.push_back(IssuedToken {
            token: token.clone(),
            kind,
            expires_at: now + ttl,
            revoked: false,
        });
        while self.issued.len() > REMEMBERED_TOKENS {
            self.issued.pop_front();
        }
        (token, ttl / 1000)
    }

    /// Checks a token from the query string: 41001 missing, 40014 unknown/revoked, 42001 expired.
    /// Returns the kind of secret it came from.
    pub fn check(&self, token: Option<&str>, now: Millis) -> ApiResult<KfMode> {
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
            Some(t) => Ok(t.kind),
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
    /// Counts one event against a quota: false (and not counted) once `limit` events happened in
    /// the current `window`; unlike [`hit`](Self::hit) the excess does not extend the block, the
    /// quota simply renews with the next window (0 = unlimited).
    pub fn take(&mut self, now: Millis, window: Millis, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if now - self.start >= window || now < self.start {
            self.start = now - now.rem_euclid(window);
            self.count = 0;
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }

    /// Whether nothing was counted in the `window` before `now` (the entry can be forgotten).
    pub fn is_idle(&self, now: Millis, window: Millis) -> bool {
        now.saturating_sub(self.start) >= 2 * window && now >= self.blocked_until
    }

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

/// How long an IP stays blocked after too many wrong secrets.
pub const WRONG_SECRET_BLOCK: Millis = HOUR;

/// Most client IPs remembered by [`WrongSecrets`] (older entries are dropped when it is full).
const MAX_TRACKED_IPS: usize = 10_000;

#[derive(Debug, Default, Clone)]
struct Strikes {
    since: Millis,
    count: u32,
    blocked_until: Millis,
}

/// Wrong `gettoken` secrets per client IP: after `limit` of them within an hour the IP is
/// blocked for [`WRONG_SECRET_BLOCK`] (official doc 91039).
#[derive(Debug, Default)]
pub struct WrongSecrets {
    ips: HashMap<IpAddr, Strikes>,
}

impl WrongSecrets {
    /// Whether `ip` is blocked now.
    pub fn blocked(&self, ip: IpAddr, now: Millis) -> bool {
        self.ips.get(&ip).is_some_and(|s| now < s.blocked_until)
    }

    /// Counts one wrong secret from `ip`; returns whether the IP is blocked from now on.
    /// `limit` 0 never blocks.
    pub fn strike(&mut self, ip: IpAddr, now: Millis, limit: u32) -> bool {
        if limit == 0 {
            return false;
        }
        if self.ips.len() >= MAX_TRACKED_IPS && !self.ips.contains_key(&ip) {
            self.ips
                .retain(|_, s| now < s.blocked_until || now - s.since < HOUR);
            if self.ips.len() >= MAX_TRACKED_IPS {
                return false;
            }
        }
        let s = self.ips.entry(ip).or_default();
        if now - s.since >= HOUR || now < s.since {
            s.since = now;
            s.count = 0;
        }
        s.count += 1;
        if s.count >= limit {
            s.blocked_until = now + WRONG_SECRET_BLOCK;
            s.count = 0;
            s.since = now;
        }
        now < s.blocked_until
    }

    /// The blocked IPs and until when (for the state snapshot).
    pub fn blocked_list(&self, now: Millis) -> Vec<(IpAddr, Millis)> {
        let mut list: Vec<(IpAddr, Millis)> = self
            .ips
            .iter()
            .filter(|(_, s)| now < s.blocked_until)
            .map(|(ip, s)| (*ip, s.blocked_until))
            .collect();
        list.sort();
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_token_is_returned_while_valid_and_a_new_one_after_expiry() {
        let mut t = AccessTokens::default();
        let (a, exp) = t.get_or_issue(0, 7_200_000, KfMode::Standalone);
        assert_eq!(exp, 7200);
        assert_eq!(t.get_or_issue(1000, 7_200_000, KfMode::Standalone).0, a);
        assert!(t.check(Some(&a), 7_199_999).is_ok());
        assert_eq!(t.check(Some(&a), 7_200_000).unwrap_err().code, 42001);
        let (b, _) = t.get_or_issue(7_200_000, 7_200_000, KfMode::Standalone);
        assert_ne!(a, b);
        assert_eq!(t.check(Some("nope"), 0).unwrap_err().code, 40014);
        assert_eq!(t.check(None, 0).unwrap_err().code, 41001);
    }

    #[test]
    fn revoked_tokens_answer_40014_and_gettoken_issues_a_new_one() {
        let mut t = AccessTokens::default();
        let (a, _) = t.get_or_issue(0, 7_200_000, KfMode::Standalone);
        t.revoke(None);
        assert_eq!(t.check(Some(&a), 1).unwrap_err().code, 40014);
        assert_ne!(t.get_or_issue(2, 7_200_000, KfMode::Standalone).0, a);
    }

    #[test]
    fn each_kind_of_secret_has_its_own_token_and_a_token_knows_its_kind() {
        let mut t = AccessTokens::default();
        let (a, _) = t.get_or_issue(0, 7_200_000, KfMode::Standalone);
        let (b, _) = t.get_or_issue(1, 7_200_000, KfMode::Wecom);
        assert_ne!(a, b);
        assert_eq!(t.get_or_issue(2, 7_200_000, KfMode::Standalone).0, a);
        assert_eq!(t.check(Some(&a), 3).unwrap(), KfMode::Standalone);
        assert_eq!(t.check(Some(&b), 3).unwrap(), KfMode::Wecom);
    }

    #[test]
    fn an_ip_is_blocked_for_an_hour_after_the_limit_of_wrong_secrets() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut w = WrongSecrets::default();
        for i in 0..2 {
            assert!(!w.strike(ip, i, 3));
        }
        assert!(!w.blocked(ip, 2));
        assert!(w.strike(ip, 2, 3));
        assert!(w.blocked(ip, 3) && !w.blocked(other, 3));
        assert!(w.blocked(ip, 2 + WRONG_SECRET_BLOCK - 1));
        assert!(!w.blocked(ip, 2 + WRONG_SECRET_BLOCK));
        assert_eq!(w.blocked_list(3), vec![(ip, 2 + WRONG_SECRET_BLOCK)]);
    }

    #[test]
    fn wrong_secrets_spread_over_more_than_an_hour_do_not_block() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut w = WrongSecrets::default();
        assert!(!w.strike(ip, 0, 2));
        assert!(!w.strike(ip, HOUR, 2));
        assert!(w.strike(ip, HOUR + 1, 2));
        let mut off = WrongSecrets::default();
        assert!((0..100).all(|i| !off.strike(ip, i, 0)));
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
