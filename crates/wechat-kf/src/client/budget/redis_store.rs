//! A Redis-backed [`BudgetStore`]: every instance of a corp spends one budget (feature `redis`).

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Admission, BudgetStore, HOUR_MS, Limits, MINUTE_MS};
use crate::client::Error;
use crate::client::redis_link::RedisLink;

/// [`Usage::admit`](super::Usage::admit) in one round trip, atomically: the block, then the
/// minute's and the hour's counters (keys named after their window, expiring after it), then the
/// minute's and the hour's pacing (each schedule's next slot in microseconds: `ARGV[6]` apart
/// with `ARGV[7]` of burst, `ARGV[8]` apart with `ARGV[9]`), a
/// refused call uncounted. Returns 0 to go, else the milliseconds to wait.
const ADMIT_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
if blocked > now then return blocked - now end
local now_us = now * 1000
local paced = tonumber(redis.call('GET', KEYS[4]) or '0')
if paced < now_us then paced = now_us end
local interval, tolerance = tonumber(ARGV[6]), tonumber(ARGV[7])
if interval > 0 and paced - now_us > tolerance then
  return math.ceil((paced - now_us - tolerance) / 1000)
end
local hpaced = tonumber(redis.call('GET', KEYS[5]) or '0')
if hpaced < now_us then hpaced = now_us end
local hinterval, htolerance = tonumber(ARGV[8]), tonumber(ARGV[9])
if hinterval > 0 and hpaced - now_us > htolerance then
  return math.ceil((hpaced - now_us - htolerance) / 1000)
end
local m = redis.call('INCR', KEYS[1])
if m == 1 then redis.call('PEXPIRE', KEYS[1], 120000) end
local h = redis.call('INCR', KEYS[2])
if h == 1 then redis.call('PEXPIRE', KEYS[2], 7200000) end
local per_minute, per_hour = tonumber(ARGV[2]), tonumber(ARGV[3])
local wait = 0
if per_minute > 0 and m > per_minute then wait = tonumber(ARGV[4])
elseif per_hour > 0 and h > per_hour then wait = tonumber(ARGV[5]) end
if wait > 0 then
  redis.call('DECR', KEYS[1])
  redis.call('DECR', KEYS[2])
else
  if interval > 0 then
    redis.call('SET', KEYS[4], string.format('%.0f', paced + interval), 'PX', 120000)
  end
  if hinterval > 0 then
    redis.call('SET', KEYS[5], string.format('%.0f', hpaced + hinterval), 'PX', 7200000)
  end
end
return wait
"#;

/// Moves the block's end later, never earlier; the key expires with the block.
const BLOCK_SCRIPT: &str = r#"
local until = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until > current then
  redis.call('SET', KEYS[1], until, 'PX', math.max(1, until - tonumber(ARGV[2])))
end
return 0
"#;

/// Keeps each corp's and API's usage in Redis under `<prefix><corp_id>:<api>:…` (default prefix
/// `wechat-kf:budget:`): a counter per clock minute and per clock hour, the pacing's next slot,
/// and the end of a 45009 block. Instances whose clocks differ by a little count a few calls in the neighbouring window;
/// keep the budget's headroom larger than that.
pub struct RedisBudget {
    link: RedisLink,
    prefix: String,
}

impl std::fmt::Debug for RedisBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBudget")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBudget {
    /// A store for the Redis server at `url` (`redis://…` or `rediss://…`). Connects lazily.
    pub fn new(url: &str) -> Result<Self, Error> {
        Ok(RedisBudget {
            link: RedisLink::open(url)?,
            prefix: "wechat-kf:budget:".to_owned(),
        })
    }

    /// Changes the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long connecting, and each command, may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.link.set_timeout(timeout);
        self
    }
}

impl BudgetStore for RedisBudget {
    fn admit<'a>(
        &'a self,
        key: &'a str,
        limits: Limits,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, Error>> {
        Box::pin(async move {
            let (minute, hour) = (now_ms / MINUTE_MS, now_ms / HOUR_MS);
            let keys = [
                format!("{}{key}:m:{minute}", self.prefix),
                format!("{}{key}:h:{hour}", self.prefix),
                format!("{}{key}:blocked", self.prefix),
                format!("{}{key}:paced", self.prefix),
                format!("{}{key}:hpaced", self.prefix),
            ];
            // (0, 0): not paced.
            let (interval_us, tolerance_us) = super::pacing(limits.per_minute).unwrap_or_default();
            let (hour_interval_us, hour_tolerance_us) =
                super::hour_pacing(limits.per_hour).unwrap_or_default();
            let to_next_minute = (minute + 1) * MINUTE_MS - now_ms;
            let to_next_hour = (hour + 1) * HOUR_MS - now_ms;
            let wait: u64 = self
                .link
                .run("Redis budget failed", |mut c| async move {
                    redis::Script::new(ADMIT_SCRIPT)
                        .key(&keys[..])
                        .arg(now_ms)
                        .arg(limits.per_minute)
                        .arg(limits.per_hour)
                        .arg(to_next_minute)
                        .arg(to_next_hour)
                        .arg(interval_us)
                        .arg(tolerance_us)
                        .arg(hour_interval_us)
                        .arg(hour_tolerance_us)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(match wait {
                0 => Admission::Go,
                ms => Admission::Wait(Duration::from_millis(ms)),
            })
        })
    }

    fn block<'a>(&'a self, key: &'a str, until_ms: u64) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let full = format!("{}{key}:blocked", self.prefix);
            let now_ms = super::unix_ms(std::time::SystemTime::now());
            self.link
                .run("Redis budget block failed", |mut c| async move {
                    redis::Script::new(BLOCK_SCRIPT)
                        .key(full)
                        .arg(until_ms)
                        .arg(now_ms)
                        .invoke_async::<i64>(&mut c)
                        .await
                        .map(drop)
                })
                .await
        })
    }
}
