//! WeChat's call budget: per corp and per API, at most 10,000 calls a minute and 150,000 an hour
//! (official doc 90454); over that, WeChat answers 45009 and blocks the API for the rest of the
//! window (60 s for the minute limit, an hour for the hour limit). The client spends a budget
//! below those limits *before* it sends, so the server's limit is never the one that stops it.
//!
//! - [`Limits`] are the budget (default 8,000 a minute and 120,000 an hour: headroom for other
//!   programs using the same corp).
//! - [`Usage::admit`] is the policy, a pure function of the windows and `now`: go, or wait this
//!   long. Windows are fixed and aligned to the clock (minute `n` is `[n·60 s, (n+1)·60 s)`), so
//!   instances that share a store count the same windows.
//! - The budget is also *paced*: a burst of a second's worth (at least 10 calls; budgets of 10
//!   or less are one burst), then the rest of the minute's budget spread evenly over the minute.
//!   Without pacing a short budget is spent in the first seconds of each minute and every caller
//!   then waits for the next one (a minute of latency); with it, any 60 s (however WeChat's
//!   windows are aligned) holds at most `per_minute`, and a steady caller never runs into the
//!   clock minute's count. The hour's budget is paced the same way (a burst of an eighth, the
//!   rest spread over the hour), so a load above the hour's average slows to it instead of
//!   spending the hour in 15 minutes and stopping for 45.
//! - A [`BudgetStore`] keeps the usage: [`MemoryBudget`] for one process, `RedisBudget`
//!   (feature `redis`) for every instance of a corp; a service may bring its own (a database).
//! - A 45009 that still happens (another program spent the corp's budget) blocks the API in the
//!   store for the documented 60 s, so no instance retries it in a tight loop.
//!
//! ```
//! use std::time::Duration;
//! use wechat_kf::client::budget::{Admission, Limits, Usage};
//!
//! let limits = Limits::new(2, 100);
//! let mut usage = Usage::default();
//! let now = 120_000 + 10_000; // 10 s into a minute, in unix milliseconds
//! assert_eq!(usage.admit(&limits, now), Admission::Go);
//! assert_eq!(usage.admit(&limits, now), Admission::Go);
//! // The minute's budget is spent: wait for the next minute.
//! assert_eq!(usage.admit(&limits, now), Admission::Wait(Duration::from_secs(50)));
//! assert_eq!(usage.admit(&limits, 180_000), Admission::Go);
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use super::Error;

#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "redis")]
pub use redis_store::RedisBudget;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
/// How long a 45009 blocks an API: the minute limit's block (official doc 90454). An hour-limit
/// block shows up as another 45009 after it, which blocks again.
pub const BLOCK_AFTER_45009: Duration = Duration::from_secs(60);

/// Unix milliseconds of `time` (0 before 1970).
pub(crate) fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Calls allowed per corp and API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls per clock minute; 0 = no limit.
    pub per_minute: u32,
    /// Calls per clock hour; 0 = no limit.
    pub per_hour: u32,
}

impl Limits {
    /// A budget of `per_minute` and `per_hour` calls (0 = no limit).
    pub const fn new(per_minute: u32, per_hour: u32) -> Self {
        Limits {
            per_minute,
            per_hour,
        }
    }

    /// No budget: every call goes (WeChat's own limit still answers 45009, which still blocks).
    pub const fn unlimited() -> Self {
        Limits::new(0, 0)
    }
}

impl Default for Limits {
    /// 8,000 a minute and 120,000 an hour: 80 % of WeChat's limits.
    fn default() -> Self {
        Limits::new(8_000, 120_000)
    }
}

/// What the budget says about one more call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it (it has been counted).
    Go,
    /// Not before this long from now (nothing was counted).
    Wait(Duration),
}

/// One corp's and API's use of the current windows: what a [`BudgetStore`] keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    minute: u64,
    in_minute: u32,
    hour: u64,
    in_hour: u32,
    blocked_until_ms: u64,
    /// The minute pacing's theoretical arrival time (GCRA), unix microseconds.
    paced_until_us: u64,
    /// The hour pacing's, unix microseconds.
    hour_paced_until_us: u64,
}

/// The pacing of a minute budget of `per_minute` calls: a burst of a second's worth (at least
/// 10 calls), then the rest of the minute's budget spread evenly (one call every
/// `60 s / (per_minute - burst)`), so that a steady caller never runs into the clock minute's
/// count (which would stop it until the minute ends) and any 60 s hold at most `per_minute`.
/// `None` for budgets of 10 or less: the whole budget is one burst.
pub(crate) fn pacing(per_minute: u32) -> Option<(u64, u64)> {
    spread(per_minute, MINUTE_MS, u64::from(per_minute) / 60)
}

/// The pacing of an hour budget of `per_hour` calls: a burst of an eighth of the hour (at least
/// 10 calls), then the rest spread over the hour. A load above the hour's average runs at the
/// minute's pace while the burst lasts, then at that spread rate, instead of spending the hour
/// in its first minutes and stopping until the next one; any 60 minutes hold at most the hour's
/// budget. `None` for budgets of 10 or less.
pub(crate) fn hour_pacing(per_hour: u32) -> Option<(u64, u64)> {
    spread(per_hour, HOUR_MS, u64::from(per_hour) / 8)
}

/// `(interval, tolerance)` in microseconds of a GCRA that lets `burst` (at least 10) of
/// `budget` calls go at once and spreads the rest over `window_ms`.
fn spread(budget: u32, window_ms: u64, burst: u64) -> Option<(u64, u64)> {
    let budget = u64::from(budget);
    let burst = burst.max(10);
    if budget <= burst {
        return None;
    }
    let rest = budget - burst;
    let interval_us = (window_ms * 1000).div_ceil(rest);
    Some((interval_us, (burst - 1) * interval_us))
}

/// One GCRA step: go (and the schedule's next value) or the wait, for a schedule at
/// `paced_until_us` (0 = never used) paced by `(interval_us, tolerance_us)`.
fn gcra(
    paced_until_us: u64,
    now_us: u64,
    (interval_us, tolerance_us): (u64, u64),
) -> Result<u64, Duration> {
    let paced_until = paced_until_us.max(now_us);
    if paced_until - now_us > tolerance_us {
        let ahead_us = paced_until - now_us - tolerance_us;
        return Err(Duration::from_millis(ahead_us.div_ceil(1000)));
    }
    Ok(paced_until + interval_us)
}

impl Usage {
    /// Counts one call at `now_ms` (unix milliseconds) if the budget allows it.
    pub fn admit(&mut self, limits: &Limits, now_ms: u64) -> Admission {
        if now_ms < self.blocked_until_ms {
            return Admission::Wait(Duration::from_millis(self.blocked_until_ms - now_ms));
        }
        let (minute, hour) = (now_ms / MINUTE_MS, now_ms / HOUR_MS);
        if minute != self.minute {
            (self.minute, self.in_minute) = (minute, 0);
        }
        if hour != self.hour {
            (self.hour, self.in_hour) = (hour, 0);
        }
        let full = |used: u32, limit: u32| limit > 0 && used >= limit;
        if full(self.in_minute, limits.per_minute) {
            return Admission::Wait(Duration::from_millis((minute + 1) * MINUTE_MS - now_ms));
        }
        if full(self.in_hour, limits.per_hour) {
            return Admission::Wait(Duration::from_millis((hour + 1) * HOUR_MS - now_ms));
        }
        let now_us = now_ms.saturating_mul(1000);
        let mut minute_paced = self.paced_until_us;
        if let Some(pace) = pacing(limits.per_minute) {
            match gcra(self.paced_until_us, now_us, pace) {
                Ok(next) => minute_paced = next,
                Err(wait) => return Admission::Wait(wait),
            }
        }
        let mut hour_paced = self.hour_paced_until_us;
        if let Some(pace) = hour_pacing(limits.per_hour) {
            match gcra(self.hour_paced_until_us, now_us, pace) {
                Ok(next) => hour_paced = next,
                Err(wait) => return Admission::Wait(wait),
            }
        }
        (self.paced_until_us, self.hour_paced_until_us) = (minute_paced, hour_paced);
        self.in_minute += 1;
        self.in_hour += 1;
        Admission::Go
    }

    /// No call before `until_ms` (a 45009 was answered).
    pub fn block(&mut self, until_ms: u64) {
        self.blocked_until_ms = self.blocked_until_ms.max(until_ms);
    }
}

/// Where the usage of each corp and API is kept: one process ([`MemoryBudget`]) or every
/// instance of a corp (`RedisBudget`, a database). `key` is `<corp_id>:<api>`, e.g.
/// `ww123:kf/sync_msg`.
///
/// Object-safe (boxed futures), like [`TokenStore`](super::token::TokenStore).
pub trait BudgetStore: Send + Sync + std::fmt::Debug {
    /// [`Usage::admit`] on the shared usage of `key`, atomically.
    fn admit<'a>(
        &'a self,
        key: &'a str,
        limits: Limits,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, Error>>;

    /// [`Usage::block`] on the shared usage of `key`.
    fn block<'a>(&'a self, key: &'a str, until_ms: u64) -> BoxFuture<'a, Result<(), Error>>;
}

/// The usage in this process only (the default).
#[derive(Debug, Default)]
pub struct MemoryBudget {
    usage: Mutex<HashMap<String, Usage>>,
}

impl MemoryBudget {
    /// An empty budget store.
    pub fn new() -> Self {
        MemoryBudget::default()
    }

    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        f(usage.entry(key.to_owned()).or_default())
    }
}

impl BudgetStore for MemoryBudget {
    fn admit<'a>(
        &'a self,
        key: &'a str,
        limits: Limits,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, Error>> {
        let admission = self.with(key, |u| u.admit(&limits, now_ms));
        Box::pin(async move { Ok(admission) })
    }

    fn block<'a>(&'a self, key: &'a str, until_ms: u64) -> BoxFuture<'a, Result<(), Error>> {
        self.with(key, |u| u.block(until_ms));
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_080_000; // 40 s into a minute

    #[test]
    fn the_minute_budget_waits_for_the_next_minute_and_the_hour_budget_for_the_next_hour() {
        let limits = Limits::new(3, 4);
        let mut usage = Usage::default();
        for _ in 0..3 {
            assert_eq!(usage.admit(&limits, T0), Admission::Go);
        }
        assert_eq!(
            usage.admit(&limits, T0 + 5_000),
            Admission::Wait(Duration::from_secs(15))
        );
        let next_minute = T0 + 20_000;
        assert_eq!(usage.admit(&limits, next_minute), Admission::Go);
        let Admission::Wait(wait) = usage.admit(&limits, next_minute) else {
            panic!("the hour's 4 calls are spent");
        };
        assert_eq!(
            next_minute + wait.as_millis() as u64,
            (next_minute / HOUR_MS + 1) * HOUR_MS
        );
    }

    #[test]
    fn a_refused_call_is_not_counted_and_zero_means_no_limit() {
        let mut usage = Usage::default();
        let one = Limits::new(1, 0);
        assert_eq!(usage.admit(&one, T0), Admission::Go);
        for _ in 0..10 {
            assert!(matches!(usage.admit(&one, T0), Admission::Wait(_)));
        }
        assert_eq!(usage.admit(&one, T0 + MINUTE_MS), Admission::Go);
        let mut free = Usage::default();
        for _ in 0..100_000 {
            assert_eq!(free.admit(&Limits::unlimited(), T0), Admission::Go);
        }
    }

    #[test]
    fn a_block_holds_every_call_until_it_ends_and_never_shortens() {
        let mut usage = Usage::default();
        usage.block(T0 + 60_000);
        usage.block(T0 + 1_000);
        assert_eq!(
            usage.admit(&Limits::unlimited(), T0),
            Admission::Wait(Duration::from_secs(60))
        );
        assert_eq!(
            usage.admit(&Limits::unlimited(), T0 + 60_000),
            Admission::Go
        );
    }

    #[test]
    fn a_large_budget_is_spread_over_the_minute_after_a_seconds_burst() {
        // 6,000 a minute: a burst of 100, then the other 5,900 spread (one every 10.17 ms).
        let limits = Limits::new(6_000, 0);
        let mut usage = Usage::default();
        let start = T0 - 40_000; // the start of a minute
        for _ in 0..100 {
            assert_eq!(usage.admit(&limits, start), Admission::Go);
        }
        assert_eq!(
            usage.admit(&limits, start),
            Admission::Wait(Duration::from_millis(11))
        );
        // From then on one call every 10.17 ms, never two.
        let mut went = 0;
        for ms in 1..=30_000 {
            if usage.admit(&limits, start + ms) == Admission::Go {
                went += 1;
            }
        }
        assert_eq!(went, 30_000 * 1000 / 10_170);
        // An idle spell earns one burst again, not the idle time's worth.
        let later = start + 50_000;
        let burst = (0..1_000)
            .take_while(|_| usage.admit(&limits, later) == Admission::Go)
            .count();
        assert_eq!(burst, 100);
    }

    #[test]
    fn any_sixty_seconds_hold_at_most_the_minute_budget() {
        // Whatever WeChat's windows are aligned to: a caller that always wants more, sampled
        // every millisecond over three minutes, counted in every sliding minute.
        let limits = Limits::new(1_200, 0);
        let mut usage = Usage::default();
        let start = T0 + 12_345;
        let calls: Vec<u64> = (0..180_000)
            .map(|ms| start + ms)
            .filter(|&now| usage.admit(&limits, now) == Admission::Go)
            .collect();
        let most = calls
            .iter()
            .enumerate()
            .map(|(i, &t)| calls[i..].iter().take_while(|&&u| u < t + 60_000).count())
            .max()
            .unwrap();
        assert!(most <= 1_200, "{most}");
        assert!(most >= 1_150, "the budget is used: {most}");
        // Each clock minute's own count stays within the budget.
        for minute in (start / MINUTE_MS)..=((start + 180_000) / MINUTE_MS) {
            let n = calls.iter().filter(|&&t| t / MINUTE_MS == minute).count();
            assert!(n <= 1_200, "{n} in minute {minute}");
        }
    }

    #[test]
    fn a_load_above_the_hours_average_slows_to_it_instead_of_stopping_for_the_rest_of_the_hour() {
        // 8,000 a minute and 120,000 an hour: a caller that always wants more would spend the
        // hour in 15 minutes and then wait 45. Paced, it keeps going at the hour's average.
        let limits = Limits::default();
        let mut usage = Usage::default();
        let start = (T0 / HOUR_MS + 1) * HOUR_MS; // the start of an hour
        let mut per_minute = Vec::new();
        let mut now = start;
        for _ in 0..60 {
            let end = now + MINUTE_MS;
            let mut n = 0u32;
            while now < end {
                match usage.admit(&limits, now) {
                    Admission::Go => n += 1,
                    Admission::Wait(wait) => now += (wait.as_millis() as u64).max(1),
                }
            }
            per_minute.push(n);
        }
        let total: u32 = per_minute.iter().sum();
        assert!(total <= 120_000, "{total}");
        assert!(
            per_minute[0] >= 7_900,
            "full speed at first: {per_minute:?}"
        );
        // Never a minute without calls: at the end, the seven eighths not spent in the burst
        // spread over the hour (1,750 a minute).
        assert!(per_minute.iter().all(|&n| n >= 1_700), "{per_minute:?}");
        assert!((1_700..=1_800).contains(&per_minute[59]), "{per_minute:?}");
    }

    #[test]
    fn small_budgets_keep_their_whole_minute_as_one_burst() {
        assert_eq!(pacing(3), None);
        assert_eq!(pacing(10), None);
        assert_eq!(pacing(600), Some((101_695, 9 * 101_695)));
        assert_eq!(pacing(8_000), Some((7_627, 132 * 7_627)));
        assert_eq!(hour_pacing(120_000), Some((34_286, 14_999 * 34_286)));
    }

    #[tokio::test]
    async fn the_memory_store_keeps_one_usage_per_key() {
        let store = MemoryBudget::new();
        let one = Limits::new(1, 0);
        assert_eq!(
            store.admit("ww1:kf/sync_msg", one, T0).await.unwrap(),
            Admission::Go
        );
        assert_eq!(
            store.admit("ww1:kf/send_msg", one, T0).await.unwrap(),
            Admission::Go
        );
        assert!(matches!(
            store.admit("ww1:kf/sync_msg", one, T0).await.unwrap(),
            Admission::Wait(_)
        ));
    }
}
