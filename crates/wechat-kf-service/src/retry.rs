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

#[cfg(test)]
mod tests {
    use super::*;

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
