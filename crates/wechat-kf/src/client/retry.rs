//! Retry policy: which failures are retried and how long to wait. Pure functions only, so the
//! schedule is testable without a clock or a random number generator.

use std::time::Duration;

use super::Error;

/// Whether repeating a request could have an effect the caller did not ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Repeating the request is harmless (reads, `sync_msg`, deletes, `send_msg` with a caller
    /// msgid, whose duplicate the server rejects).
    Idempotent,
    /// Repeating could do the work twice (`send_msg` without msgid, `account/add`,
    /// `service_state/trans`, ...). Only retried when the request provably never reached the
    /// server's business logic: a failed connection, a 45009/45033 refusal.
    NonIdempotent,
}

/// Exponential backoff with jitter for transient failures (-1, 45009, 45033, HTTP 5xx, connection
/// errors and timeouts; official doc 90313).
///
/// Token rejections (40014/42001) are not governed by this policy: they cause one token refresh
/// and one immediate retry, whatever `max_retries` says.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retries). Default 2, i.e. at most 3 tries as
    /// official doc 90313 recommends for -1 (system busy).
    pub max_retries: u32,
    /// Delay before the first retry. Default 200 ms.
    pub initial_delay: Duration,
    /// Upper bound for a single delay. Default 5 s.
    pub max_delay: Duration,
    /// Growth factor between retries. Default 2.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// A policy with `max_retries` retries and the default delays.
    pub fn with_max_retries(max_retries: u32) -> Self {
        Self {
            max_retries,
            ..Self::default()
        }
    }

    /// The delay before retry number `attempt` (0 = the first retry).
    ///
    /// The nominal delay is `initial_delay * multiplier^attempt`, capped at `max_delay`; half of it
    /// is fixed and the other half scaled by `jitter` ("equal jitter"), so concurrent clients
    /// spread out but never retry immediately. `jitter` is a sample of the caller's jitter
    /// source in `[0, 1]`; values outside are clamped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wechat_kf::client::RetryPolicy;
    /// let policy = RetryPolicy::default();
    /// assert_eq!(policy.delay(0, 1.0), Duration::from_millis(200));
    /// assert_eq!(policy.delay(1, 0.0), Duration::from_millis(200));
    /// assert_eq!(policy.delay(10, 1.0), Duration::from_secs(5));
    /// ```
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let nominal = self.initial_delay.as_secs_f64() * factor;
        let capped = nominal.min(self.max_delay.as_secs_f64()).max(0.0);
        let secs = capped / 2.0 + capped / 2.0 * jitter;
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    /// Whether a request that failed with `error` on retry number `attempt` (0 = after the
    /// first try) should be tried again.
    pub fn should_retry(&self, attempt: u32, error: &Error, idempotency: Idempotency) -> bool {
        if attempt >= self.max_retries || !error.is_retryable() {
            return false;
        }
        match idempotency {
            Idempotency::Idempotent => true,
            Idempotency::NonIdempotent => error.request_not_processed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ErrCode;

    fn api(code: i64) -> Error {
        Error::Api {
            endpoint: "kf/send_msg",
            code: ErrCode::from_code(code),
            errmsg: String::new(),
        }
    }

    #[test]
    fn delays_grow_exponentially_and_are_capped() {
        let policy = RetryPolicy::default();
        let full: Vec<_> = (0..6).map(|a| policy.delay(a, 1.0)).collect();
        assert_eq!(
            full,
            [200, 400, 800, 1600, 3200, 5000].map(Duration::from_millis)
        );
        assert_eq!(policy.delay(3, 0.0), Duration::from_millis(800));
        assert_eq!(policy.delay(3, 0.5), Duration::from_millis(1200));
        assert_eq!(policy.delay(u32::MAX, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn jitter_out_of_range_is_clamped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(0, -3.0), policy.delay(0, 0.0));
        assert_eq!(policy.delay(0, 7.0), policy.delay(0, 1.0));
        assert_eq!(policy.delay(0, f64::NAN), policy.delay(0, 0.0));
    }

    #[test]
    fn transient_errors_are_retried_until_the_budget_is_spent() {
        let policy = RetryPolicy::with_max_retries(2);
        assert!(policy.should_retry(0, &api(-1), Idempotency::Idempotent));
        assert!(policy.should_retry(1, &api(45009), Idempotency::Idempotent));
        assert!(!policy.should_retry(2, &api(45009), Idempotency::Idempotent));
        assert!(!policy.should_retry(0, &api(95001), Idempotency::Idempotent));
        assert!(!RetryPolicy::none().should_retry(0, &api(-1), Idempotency::Idempotent));
    }

    #[test]
    fn non_idempotent_calls_are_only_retried_when_the_server_refused_them_unprocessed() {
        let policy = RetryPolicy::default();
        assert!(policy.should_retry(0, &api(45009), Idempotency::NonIdempotent));
        assert!(policy.should_retry(0, &api(45033), Idempotency::NonIdempotent));
        // -1 and 5xx leave it open whether the message went out.
        assert!(!policy.should_retry(0, &api(-1), Idempotency::NonIdempotent));
        let bad_gateway = Error::HttpStatus {
            endpoint: "kf/send_msg",
            status: 502,
            body: String::new(),
        };
        assert!(!policy.should_retry(0, &bad_gateway, Idempotency::NonIdempotent));
        assert!(policy.should_retry(0, &bad_gateway, Idempotency::Idempotent));
    }
}
