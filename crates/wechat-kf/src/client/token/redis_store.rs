//! A Redis-backed [`TokenStore`] for several processes sharing one access token (feature
//! `redis`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use futures::future::BoxFuture;

use super::{AccessToken, RefreshLease, TokenStore};
use crate::client::Error;
use crate::client::redis_link::RedisLink;

/// Deletes the key only if it still holds the given token value (compare-and-delete, so a
/// process never removes the newer token another process just stored).
const INVALIDATE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, t = pcall(cjson.decode, v)
  if ok and type(t) == 'table' and t['access_token'] == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
"#;

/// Deletes the lease key only if this holder still owns it.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Stores tokens in Redis under `<prefix><key>` (default prefix `wechat-kf:token:`), as JSON
/// with the token's remaining lifetime as the key's expiry.
///
/// Processes sharing a store share the token and one refresh: the refresh lease is a
/// `SET NX PX` key beside the token (`<prefix><key>:refresh`), so when the token is due only the
/// lease holder calls `gettoken` while the others keep using the current token, or wait for the
/// new one to appear. A holder that dies lets its lease lapse after the client's
/// `token_refresh_lease` time.
pub struct RedisTokenStore {
    link: RedisLink,
    prefix: String,
}

impl std::fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    access_token: String,
    obtained_at: u64,
    expires_at: u64,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RedisTokenStore {
    /// A store for the Redis server at `url` (e.g. `redis://127.0.0.1:6379/0`, or `rediss://`
    /// for TLS). Connects lazily.
    pub fn new(url: &str) -> Result<Self, Error> {
        Ok(Self {
            link: RedisLink::open(url)?,
            prefix: "wechat-kf:token:".to_owned(),
        })
    }

    /// How long connecting, and each command, may take (default 5 s). A store that does not
    /// answer in time counts as failing: the client then fetches tokens itself.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.link.set_timeout(timeout);
        self
    }

    /// Changes the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The Redis key of a token: `<prefix><key>`.
    fn token_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The Redis key of a token's refresh lease: `<prefix><key>:refresh`.
    fn lease_key(&self, key: &str) -> String {
        format!("{}{key}:refresh", self.prefix)
    }

    /// Runs one of the compare-and-delete scripts on `key` with `value`.
    async fn run_script(
        &self,
        what: &'static str,
        script: &'static str,
        key: String,
        value: String,
    ) -> Result<(), Error> {
        self.link
            .run(what, |mut c| async move {
                redis::Script::new(script)
                    .key(key)
                    .arg(value)
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map(drop)
            })
            .await
    }
}

impl TokenStore for RedisTokenStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<AccessToken>, Error>> {
        Box::pin(async move {
            let full = self.token_key(key);
            let value: Option<String> = self
                .link
                .run(
                    "Redis GET failed",
                    |mut c| async move { c.get(&full).await },
                )
                .await?;
            let Some(value) = value else {
                return Ok(None);
            };
            // A value we cannot read is treated as absent: a new token will overwrite it.
            let Ok(stored) = serde_json::from_str::<Stored>(&value) else {
                return Ok(None);
            };
            Ok(Some(AccessToken::from_parts(
                stored.access_token,
                UNIX_EPOCH + Duration::from_secs(stored.obtained_at),
                UNIX_EPOCH + Duration::from_secs(stored.expires_at),
            )))
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let full = self.token_key(key);
            let ttl = token
                .expires_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_millis()
                .max(1) as u64;
            let value = serde_json::to_string(&Stored {
                access_token: token.secret().expose().to_owned(),
                obtained_at: unix(token.obtained_at()),
                expires_at: unix(token.expires_at()),
            })
            .map_err(|e| Error::store("cannot encode the token", e))?;
            self.link
                .run("Redis SET failed", |mut c| async move {
                    c.pset_ex::<_, _, ()>(&full, value, ttl).await
                })
                .await
        })
    }

    fn invalidate<'a>(
        &'a self,
        key: &'a str,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let full = self.token_key(key);
            let value = token.secret().expose().to_owned();
            self.run_script("Redis invalidate failed", INVALIDATE_SCRIPT, full, value)
                .await
        })
    }

    fn acquire_refresh<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<RefreshLease, Error>> {
        Box::pin(async move {
            let full = self.lease_key(key);
            let holder = format!("{:016x}", rand::rng().next_u64());
            let ttl = (ttl.as_millis() as u64).max(1);
            let value = holder.clone();
            let taken: Option<String> = self
                .link
                .run("Redis lease failed", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&full)
                        .arg(value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(match taken {
                Some(_) => RefreshLease::Granted(holder),
                None => RefreshLease::Busy,
            })
        })
    }

    fn release_refresh<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let full = self.lease_key(key);
            self.run_script(
                "Redis lease release failed",
                RELEASE_SCRIPT,
                full,
                holder.to_owned(),
            )
            .await
        })
    }
}
