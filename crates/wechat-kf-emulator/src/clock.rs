//! The emulator clock: real time plus an offset that tests advance.
//!
//! Every time rule (token expiry, 48 h window, 10 min callback token, 20 s codes, 3-day retention,
//! 2-minute recall) reads this clock, so a test can jump days ahead without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on the emulator clock.
pub type Millis = i64;

/// One second in [`Millis`].
pub const SECOND: Millis = 1000;
/// One minute in [`Millis`].
pub const MINUTE: Millis = 60 * SECOND;
/// One hour in [`Millis`].
pub const HOUR: Millis = 60 * MINUTE;
/// One day in [`Millis`].
pub const DAY: Millis = 24 * HOUR;

/// Real time + an adjustable offset. Lock-free so it can be read anywhere.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, in milliseconds.
    pub fn now_ms(&self) -> Millis {
        real_now_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Now, in whole seconds (what the wire carries).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(SECOND)
    }

    /// Moves the clock forward (or backward, for a negative value) by `ms`.
    pub fn advance_ms(&self, ms: Millis) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The current offset from real time, in milliseconds.
    pub fn offset_ms(&self) -> Millis {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

fn real_now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
