//! The one place the service reads the time. A [`Clock`] holds two clocks:
//!
//! * **WeChat's clock**, [`Clock::now`] (unix seconds): `send_time`, callback timestamps and
//!   every rule of the send policy (the 48-hour window, code lifetimes, the first-start
//!   threshold) are compared with it. It is the system clock in production, the embedded
//!   emulator's clock in sandbox mode, and whatever a test passes to
//!   [`Service::start_with_clock`](crate::Service::start_with_clock) — so tests move time by
//!   advancing the emulator's clock instead of sleeping.
//! * **The service's own clock**, [`Clock::local_time`] / [`Clock::local_ms`]: its timers and
//!   records (retry and backoff deadlines, `stored_at`, purge cut-offs, when a callback Token
//!   arrived, the API client's token freshness). It is real time unless a test replaces it
//!   ([`Clock::with_local_time`]), even when WeChat's clock is the emulator's: tests freeze and
//!   advance the emulator's clock, and a retry timer on a frozen clock would never fire.
//!
//! Pure policy functions take `now` as an argument; only the tasks that call them read a clock.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// WeChat's clock and the service's own. Cheap to clone.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use wechat_kf_service::Clock;
/// let fixed = Clock::from_fn(|| 1_700_000_000);
/// assert_eq!(fixed.now(), 1_700_000_000);
/// assert!(fixed.local_ms() > 1_600_000_000_000, "the service's own clock stays real time");
/// assert!(Clock::system().now() > 1_600_000_000);
/// let frozen = fixed.with_local_time(|| UNIX_EPOCH + Duration::from_millis(42));
/// assert_eq!(frozen.local_ms(), 42);
/// ```
#[derive(Clone)]
pub struct Clock {
    wechat: Arc<dyn Fn() -> i64 + Send + Sync>,
    local: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl Clock {
    /// The system clock, for WeChat's time and the service's own.
    pub fn system() -> Clock {
        Clock::from_fn(|| unix_seconds(SystemTime::now()))
    }

    /// WeChat's clock reading `now` (unix seconds), e.g. `move || emulator.now()`; the
    /// service's own clock is the system clock.
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock {
            wechat: Arc::new(now),
            local: Arc::new(SystemTime::now),
        }
    }

    /// The same WeChat clock with the service's own clock replaced (tests of timers and
    /// records).
    pub fn with_local_time(self, local: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock {
            wechat: self.wechat,
            local: Arc::new(local),
        }
    }

    /// Now on WeChat's clock, unix seconds.
    pub fn now(&self) -> i64 {
        (self.wechat)()
    }

    /// [`now`](Self::now) as the library's session functions take it (never negative).
    pub(crate) fn now_u64(&self) -> u64 {
        self.now().max(0) as u64
    }

    /// Now on the service's own clock.
    pub fn local_time(&self) -> SystemTime {
        (self.local)()
    }

    /// [`local_time`](Self::local_time) as unix milliseconds, the unit of the store's
    /// timestamps and deadlines (0 before 1970).
    pub fn local_ms(&self) -> i64 {
        self.local_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// Unix seconds of a system time (0 before 1970).
fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Clock(wechat: {}, local_ms: {})",
            self.now(),
            self.local_ms()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn wechat_time_and_the_services_own_time_are_read_separately() {
        let clock =
            Clock::from_fn(|| 100).with_local_time(|| UNIX_EPOCH + Duration::from_millis(5_500));
        assert_eq!((clock.now(), clock.now_u64()), (100, 100));
        assert_eq!(clock.local_ms(), 5_500);
        assert_eq!(
            clock.local_time(),
            UNIX_EPOCH + Duration::from_millis(5_500)
        );
        assert_eq!(Clock::from_fn(|| -5).now_u64(), 0, "never negative");
        let before_1970 = Clock::system().with_local_time(|| UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(before_1970.local_ms(), 0);
    }
}
