//! The clock WeChat's timestamps are read on.
//!
//! `send_time` and every rule of the send policy (the 48-hour window, code lifetimes) are unix
//! seconds on WeChat's clock. The service compares them with [`Clock::now`]: the system clock in
//! production, the embedded emulator's clock in sandbox mode, and whatever a test passes to
//! [`Service::start_with_clock`](crate::Service::start_with_clock) — so tests move time by
//! advancing the emulator's clock instead of sleeping. Timers of the service itself (retries,
//! backoff) keep using real time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in unix seconds. Cheap to clone.
///
/// ```
/// use wechat_kf_service::Clock;
/// let fixed = Clock::from_fn(|| 1_700_000_000);
/// assert_eq!(fixed.now(), 1_700_000_000);
/// assert!(Clock::system().now() > 1_600_000_000);
/// ```
#[derive(Clone)]
pub struct Clock {
    now: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::from_fn(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        })
    }

    /// A clock reading `now` (unix seconds), e.g. `move || emulator.now()`.
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock { now: Arc::new(now) }
    }

    /// Now, unix seconds.
    pub fn now(&self) -> i64 {
        (self.now)()
    }

    /// Now as the library's session functions take it (unix seconds, never negative).
    pub(crate) fn now_u64(&self) -> u64 {
        self.now().max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}
