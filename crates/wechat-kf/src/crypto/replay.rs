//! An optional freshness check on the callback `timestamp`.

/// Accepts a callback only when its `timestamp` lies within a window around "now".
///
/// WeCom signs the timestamp, so a recorded callback replayed later keeps its old timestamp;
/// rejecting old ones bounds how long a captured request stays usable. Retries of one callback
/// reuse the same query string, so the window must be comfortably longer than WeCom's retry span
/// (three attempts, 5 s apart). The check is a pure function of its inputs: pass the current
/// unix time yourself.
///
/// ```
/// use wechat_kf::crypto::ReplayWindow;
/// let window = ReplayWindow::new(300, 60);
/// assert!(window.check("1700000000", 1_700_000_100).is_ok());
/// assert!(window.check("1700000000", 1_700_000_301).is_err()); // too old
/// assert!(window.check("1700000100", 1_700_000_000).is_err()); // too far ahead
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    max_age_secs: u64,
    max_ahead_secs: u64,
}

impl ReplayWindow {
    /// A window accepting timestamps at most `max_age_secs` in the past and `max_ahead_secs` in
    /// the future (clock skew between WeCom and this host).
    pub const fn new(max_age_secs: u64, max_ahead_secs: u64) -> Self {
        Self {
            max_age_secs,
            max_ahead_secs,
        }
    }

    /// Checks the callback's `timestamp` (decimal unix seconds) against `now_unix`.
    pub fn check(&self, timestamp: &str, now_unix: u64) -> Result<(), ReplayError> {
        if timestamp.is_empty() || !timestamp.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ReplayError::Malformed);
        }
        let ts: u64 = timestamp.parse().map_err(|_| ReplayError::Malformed)?;
        if ts <= now_unix {
            let age = now_unix - ts;
            if age > self.max_age_secs {
                return Err(ReplayError::TooOld { age_secs: age });
            }
        } else {
            let ahead = ts - now_unix;
            if ahead > self.max_ahead_secs {
                return Err(ReplayError::TooFarAhead { ahead_secs: ahead });
            }
        }
        Ok(())
    }
}

impl Default for ReplayWindow {
    /// Five minutes either way.
    fn default() -> Self {
        Self::new(300, 300)
    }
}

/// Why [`ReplayWindow::check`] rejected a timestamp. Not a WXBizMsgCrypt failure, so it has no
/// official code; a receiver would answer it like a signature failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The timestamp is not decimal unix seconds.
    #[error("timestamp is not a unix time in seconds")]
    Malformed,
    /// The timestamp is older than the window allows.
    #[error("timestamp is {age_secs} s old, outside the replay window")]
    TooOld {
        /// How old the timestamp is.
        age_secs: u64,
    },
    /// The timestamp is further in the future than the window allows.
    #[error("timestamp is {ahead_secs} s in the future, outside the replay window")]
    TooFarAhead {
        /// How far ahead the timestamp is.
        ahead_secs: u64,
    },
}
