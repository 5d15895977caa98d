//! Backoff schedules as pure functions of the attempt number and a jitter sample, so they are
//! tested without a clock.

use std::time::Duration;

/// The delay before attempt `failures + 1`, after `failures` (≥ 1) failed attempts.
///
/// The nominal delay doubles from `initial` and is capped at `max`; half of it is fixed and the
/// other half scaled by `jitter` (a sample in `[0, 1]`, clamped), so many failing deliveries
/// spread out instead of retrying in lockstep.
///
/// ```
/// use std::time::Duration;
/// use wechat_kf_service::retry::backoff;
/// let s = Duration::from_secs(1);
/// let max = Duration::from_secs(600);
/// assert_eq!(backoff(1, s, max, 1.0), Duration::from_secs(1));
/// assert_eq!(backoff(2, s, max, 1.0), Duration::from_secs(2));
/// assert_eq!(backoff(3, s, max, 0.0), Duration::from_secs(2)); // half of 4 s
/// assert_eq!(backoff(40, s, max, 1.0), max);
/// ```
pub fn backoff(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let nominal = initial
        .checked_mul(1u32 << exponent)
        .unwrap_or(max)
        .min(max);
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let half = nominal / 2;
    half + half.mul_f64(jitter) + (nominal - half * 2)
}

/// A jitter sample in `[0, 1]`.
pub(crate) fn jitter() -> f64 {
    rand::random::<f64>()
}

/// How long to wait (milliseconds) before one more call is allowed, when at most `limit` calls
/// may be made in any `window_ms`: `made` holds the times (unix ms, oldest first) of the calls
/// made so far; 0 means now. Entries older than the window are irrelevant.
///
/// ```
/// use wechat_kf_service::retry::window_wait;
/// assert_eq!(window_wait(&[1_000, 2_000], 3_000, 3, 60_000), 0);
/// assert_eq!(window_wait(&[1_000, 2_000, 2_500], 3_000, 3, 60_000), 58_000); // until 61 s
/// assert_eq!(window_wait(&[1_000, 2_000, 2_500], 61_000, 3, 60_000), 0);
/// assert_eq!(window_wait(&[], 0, 0, 60_000), 60_000); // nothing allowed: wait a window
/// ```
pub fn window_wait(made: &[i64], now_ms: i64, limit: u32, window_ms: i64) -> i64 {
    if limit == 0 {
        return window_ms;
    }
    let recent: Vec<i64> = made
        .iter()
        .copied()
        .filter(|&t| t > now_ms - window_ms)
        .collect();
    if recent.len() < limit as usize {
        return 0;
    }
    // The call `limit` places back must leave the window first.
    let oldest_that_counts = recent[recent.len() - limit as usize];
    (oldest_that_counts + window_ms - now_ms).max(0)
}

/// The delay before retrying a call that failed `failures` (≥ 1) times: exactly the call
/// budget's `retry_after` when the budget refused it (its wait was too long, or a 45009 block),
/// so a blocked API is neither called into its block nor left waiting for a backoff that grew
/// past it (never zero: no tight loop); [`backoff`] otherwise.
pub fn after_failure(
    retry_after: Option<Duration>,
    failures: u32,
    initial: Duration,
    max: Duration,
    jitter: f64,
) -> Duration {
    match retry_after {
        Some(after) => after.max(Duration::from_millis(1)),
        None => backoff(failures, initial, max, jitter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_refused_by_the_budget_waits_exactly_as_long_as_the_budget_says() {
        let (initial, max) = (Duration::from_millis(500), Duration::from_secs(60));
        let block = Some(Duration::from_millis(59_500));
        // However many failures came before: the block's end, not a backoff past it.
        for failures in [1, 5, 20] {
            assert_eq!(
                after_failure(block, failures, initial, max, 0.5),
                Duration::from_millis(59_500)
            );
        }
        assert_eq!(
            after_failure(Some(Duration::ZERO), 9, initial, max, 0.5),
            Duration::from_millis(1),
            "never a tight loop"
        );
        assert_eq!(
            after_failure(None, 3, initial, max, 1.0),
            backoff(3, initial, max, 1.0)
        );
    }

    #[test]
    fn a_window_allows_limit_calls_then_waits_for_the_oldest_to_leave() {
        let mut made = Vec::new();
        let mut now = 0;
        for _ in 0..10 {
            let wait = window_wait(&made, now, 5, 60_000);
            now += wait;
            made.push(now);
            now += 1;
        }
        // 5 at once, then one more each time one of them is a minute old.
        assert_eq!(&made[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(made[5], 60_000);
        assert_eq!(made[6], 60_001);
        for w in made.windows(6) {
            assert!(w[5] - w[0] >= 60_000, "{made:?}");
        }
    }

    #[test]
    fn the_delay_doubles_is_capped_and_never_drops_below_half() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut previous = Duration::ZERO;
        for failures in 1..=20 {
            let high = backoff(failures, initial, max, 1.0);
            let low = backoff(failures, initial, max, 0.0);
            assert!(high >= previous, "monotonic at {failures}");
            assert!(high <= max);
            assert!(low * 2 >= high - Duration::from_millis(1));
            previous = high;
        }
        assert_eq!(
            backoff(u32::MAX, initial, max, 0.5),
            Duration::from_millis(3750)
        );
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let d = Duration::from_secs(1);
        assert_eq!(backoff(1, d, d, 7.0), d);
        assert_eq!(backoff(1, d, d, -3.0), d / 2);
        assert_eq!(backoff(1, d, d, f64::NAN), d);
    }
}
