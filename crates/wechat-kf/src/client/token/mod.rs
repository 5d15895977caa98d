//! Access tokens: the token value with its lifetime, a pure freshness rule, the [`TokenStore`]
//! trait (in-memory store here, Redis in the `redis_store` child module), and the single-flight
//! manager the client uses so that many concurrent calls at expiry cause one `gettoken`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use sha1::{Digest, Sha1};

use super::{Error, Secret};

#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "redis")]
pub use redis_store::RedisTokenStore;

/// An access token with the time it was obtained and the time it expires.
///
/// `Debug` shows the times, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    value: Secret,
    obtained_at: SystemTime,
    expires_at: SystemTime,
}

/// Whether a token can still be used (see [`AccessToken::freshness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Use it.
    Fresh,
    /// Still valid, but inside the refresh margin: refresh now, and fall back to it if the
    /// refresh fails.
    RefreshDue,
    /// Past its expiry: do not use.
    Expired,
}

impl AccessToken {
    /// A token obtained at `obtained_at`, valid for `expires_in` (gettoken's `expires_in`).
    pub fn new(value: impl Into<Secret>, obtained_at: SystemTime, expires_in: Duration) -> Self {
        Self {
            value: value.into(),
            obtained_at,
            expires_at: obtained_at + expires_in,
        }
    }

    /// A token with an explicit expiry time (for token stores that persist both times).
    pub fn from_parts(
        value: impl Into<Secret>,
        obtained_at: SystemTime,
        expires_at: SystemTime,
    ) -> Self {
        Self {
            value: value.into(),
            obtained_at,
            expires_at,
        }
    }

    /// The token value, to be put on the wire.
    pub fn secret(&self) -> &Secret {
        &self.value
    }

    /// When the token was obtained.
    pub fn obtained_at(&self) -> SystemTime {
        self.obtained_at
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Freshness at `now` with a refresh `margin` before expiry. Pure: the caller supplies the
    /// time.
    ///
    /// The margin is capped at half the token's lifetime, so a server handing out short-lived
    /// tokens does not make every call refresh.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use wechat_kf::client::token::{AccessToken, Freshness};
    /// let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let token = AccessToken::new("tok", t0, Duration::from_secs(7200));
    /// let margin = Duration::from_secs(300);
    /// assert_eq!(token.freshness(t0 + Duration::from_secs(6899), margin), Freshness::Fresh);
    /// assert_eq!(token.freshness(t0 + Duration::from_secs(6900), margin), Freshness::RefreshDue);
    /// assert_eq!(token.freshness(t0 + Duration::from_secs(7200), margin), Freshness::Expired);
    /// ```
    pub fn freshness(&self, now: SystemTime, margin: Duration) -> Freshness {
        let lifetime = self
            .expires_at
            .duration_since(self.obtained_at)
            .unwrap_or_default();
        let margin = margin.min(lifetime / 2);
        let refresh_at = self
            .expires_at
            .checked_sub(margin)
            .unwrap_or(self.obtained_at);
        if now >= self.expires_at {
            Freshness::Expired
        } else if now >= refresh_at {
            Freshness::RefreshDue
        } else {
            Freshness::Fresh
        }
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"<redacted>")
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where access tokens are kept between calls. Implement it to share tokens between processes
/// (see `RedisTokenStore` behind the `redis` feature) or to persist them elsewhere.
///
/// The trait is object-safe (methods return boxed futures: `futures::future::BoxFuture`, that is
/// `Pin<Box<dyn Future<Output = T> + Send + 'a>>`), so a client holds an `Arc<dyn TokenStore>`. Keys identify a (corp id, secret) pair; they never contain the secret.
pub trait TokenStore: Send + Sync + 'static {
    /// The stored token for `key`, if any (it may be expired; the client checks).
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<AccessToken>, Error>>;

    /// Stores `token` under `key`, replacing what was there.
    fn save<'a>(&'a self, key: &'a str, token: &'a AccessToken)
    -> BoxFuture<'a, Result<(), Error>>;

    /// Removes the token under `key`, but only if it is still `token` (another process may have
    /// stored a newer one meanwhile).
    fn invalidate<'a>(
        &'a self,
        key: &'a str,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Asks for the right to refresh the token under `key` for at most `ttl`, so that of several
    /// processes sharing the store only one calls `gettoken` at a time.
    ///
    /// The default grants every request: a store private to one process needs no coordination
    /// (the client already refreshes single-flight inside a process). Shared stores return
    /// [`RefreshLease::Busy`] while another holder's lease is alive; the lease must lapse on its
    /// own after `ttl`, so a holder that dies never blocks the others for longer.
    fn acquire_refresh<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<RefreshLease, Error>> {
        let _ = (key, ttl);
        Box::pin(async { Ok(RefreshLease::Granted(String::new())) })
    }

    /// Gives back a lease from [`acquire_refresh`](Self::acquire_refresh) (`holder` is the id
    /// in [`RefreshLease::Granted`]); a lease that has already lapsed or passed to another
    /// holder is left alone.
    fn release_refresh<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let _ = (key, holder);
        Box::pin(async { Ok(()) })
    }
}

/// The answer of [`TokenStore::acquire_refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshLease {
    /// Refresh now, then release with this holder id.
    Granted(String),
    /// Another holder is refreshing: wait for the token it stores.
    Busy,
}

/// An in-process [`TokenStore`] (the default).
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    tokens: Mutex<HashMap<String, AccessToken>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, AccessToken>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TokenStore for MemoryTokenStore {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<AccessToken>, Error>> {
        let token = self.tokens().get(key).cloned();
        Box::pin(async move { Ok(token) })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.tokens().insert(key.to_owned(), token.clone());
        Box::pin(async { Ok(()) })
    }

    fn invalidate<'a>(
        &'a self,
        key: &'a str,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let mut tokens = self.tokens();
        if tokens.get(key) == Some(token) {
            tokens.remove(key);
        }
        Box::pin(async { Ok(()) })
    }
}

/// The store key for a (corp id, secret) pair: the corp id plus a fingerprint of the secret, so
/// rotating the secret starts a new token and the key never reveals it.
pub(crate) fn token_key(corp_id: &str, secret: &Secret) -> String {
    let digest = Sha1::new()
        .chain_update(b"wechat-kf token key\0")
        .chain_update(secret.expose().as_bytes())
        .finalize();
    format!("{corp_id}:{}", hex::encode(&digest[..8]))
}

/// How long a process may hold the cross-process refresh lease by default: one `gettoken`
/// attempt at the default request timeout (30 s). A slower holder's lease lapses and one
/// waiter takes it over; the others keep waiting.
pub(crate) const DEFAULT_REFRESH_LEASE: Duration = Duration::from_secs(30);

/// How many lease times a process waits for others' refreshes before fetching without the
/// lease (a valve for a store that keeps granting leases to holders that never finish).
const LEASE_WAIT_LEASES: u32 = 2;

/// How often a process waiting for another's refresh looks into the store.
const LEASE_POLL: Duration = Duration::from_millis(50);

/// Caches the token, refreshes it single-flight (in the process, and across processes when the
/// store coordinates) and invalidates it on rejection.
pub(crate) struct TokenManager {
    key: String,
    store: Arc<dyn TokenStore>,
    margin: Duration,
    lease: Duration,
    cached: Mutex<Option<AccessToken>>,
    refresh: tokio::sync::Mutex<()>,
}

impl TokenManager {
    pub(crate) fn new(
        key: String,
        store: Arc<dyn TokenStore>,
        margin: Duration,
        lease: Duration,
    ) -> Self {
        Self {
            key,
            store,
            margin,
            lease,
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<AccessToken> {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_cached(&self, token: Option<AccessToken>) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// The current token, fetched with `fetch` when there is no fresh one. Concurrent callers
    /// wait for one fetch instead of starting their own.
    pub(crate) async fn get<F, Fut>(
        &self,
        now: &(dyn Fn() -> SystemTime + Send + Sync),
        fetch: F,
    ) -> Result<AccessToken, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, Error>>,
    {
        if let Some(token) = self.cached() {
            if token.freshness(now(), self.margin) == Freshness::Fresh {
                return Ok(token);
            }
        }
        let _guard = self.refresh.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        let mut usable = None;
        if let Some(token) = self.cached() {
            match token.freshness(now(), self.margin) {
                Freshness::Fresh => return Ok(token),
                Freshness::RefreshDue => usable = Some(token),
                Freshness::Expired => {}
            }
        }
        if let Some(token) = self.fresh_from_store(now, &mut usable).await {
            return Ok(token);
        }
        let holder = match self.wait_for_lease(now, &mut usable).await {
            LeaseWait::Refresh(holder) => holder,
            LeaseWait::Done(token) => return Ok(token),
        };
        let result = match fetch().await {
            Ok(token) => {
                if let Err(error) = self.store.save(&self.key, &token).await {
                    tracing::warn!(%error, "token store save failed");
                }
                self.set_cached(Some(token.clone()));
                Ok(token)
            }
            Err(error) => match usable {
                // The old token is still inside its lifetime: keep working with it.
                Some(token) if token.freshness(now(), self.margin) != Freshness::Expired => {
                    tracing::warn!(%error, "token refresh failed; using the current token until it expires");
                    self.set_cached(Some(token.clone()));
                    Ok(token)
                }
                _ => Err(error),
            },
        };
        if let Some(holder) = holder {
            self.release(&holder).await;
        }
        result
    }

    /// Gives the refresh lease back (a failure only delays other processes by the lease time).
    async fn release(&self, holder: &str) {
        if let Err(error) = self.store.release_refresh(&self.key, holder).await {
            tracing::warn!(%error, "token store lease release failed");
        }
    }

    /// A fresh token from the store (cached on the way), or `None`; a token that is due for
    /// refresh but still valid is offered through `usable`.
    async fn fresh_from_store(
        &self,
        now: &(dyn Fn() -> SystemTime + Send + Sync),
        usable: &mut Option<AccessToken>,
    ) -> Option<AccessToken> {
        match self.store.load(&self.key).await {
            Ok(Some(token)) => match token.freshness(now(), self.margin) {
                Freshness::Fresh => {
                    self.set_cached(Some(token.clone()));
                    return Some(token);
                }
                Freshness::RefreshDue => {
                    if usable.is_none() {
                        *usable = Some(token);
                    }
                }
                Freshness::Expired => {}
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "token store load failed; fetching a new token");
            }
        }
        None
    }

    /// Takes the store's refresh lease. While another process holds it, a still-valid token is
    /// used as is, and otherwise the store is watched for the token that process will save. A
    /// holder slower than the lease loses it to one waiter (leases lapse), not to all of them;
    /// only a failing store, or no token within two lease times, makes this process refresh
    /// without the lease.
    async fn wait_for_lease(
        &self,
        now: &(dyn Fn() -> SystemTime + Send + Sync),
        usable: &mut Option<AccessToken>,
    ) -> LeaseWait {
        let deadline = tokio::time::Instant::now() + self.lease * LEASE_WAIT_LEASES;
        loop {
            match self.store.acquire_refresh(&self.key, self.lease).await {
                Ok(RefreshLease::Granted(holder)) => {
                    // The previous holder may have saved its token just before we got the lease.
                    if let Some(token) = self.fresh_from_store(now, usable).await {
                        self.release(&holder).await;
                        return LeaseWait::Done(token);
                    }
                    return LeaseWait::Refresh(Some(holder));
                }
                Ok(RefreshLease::Busy) => {}
                Err(error) => {
                    tracing::warn!(%error, "token store lease failed; refreshing without it");
                    return LeaseWait::Refresh(None);
                }
            }
            if let Some(token) = usable.as_ref() {
                if token.freshness(now(), self.margin) != Freshness::Expired {
                    return LeaseWait::Done(token.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("other processes held the token refresh lease too long; refreshing");
                return LeaseWait::Refresh(None);
            }
            tokio::time::sleep(LEASE_POLL).await;
            if let Some(token) = self.fresh_from_store(now, usable).await {
                return LeaseWait::Done(token);
            }
        }
    }

    /// Forgets `token` (locally and in the store) if it is still the current one.
    pub(crate) async fn invalidate(&self, token: &AccessToken) {
        {
            let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            if cached.as_ref() == Some(token) {
                *cached = None;
            }
        }
        if let Err(error) = self.store.invalidate(&self.key, token).await {
            tracing::warn!(%error, "token store invalidate failed");
        }
    }
}

/// What [`TokenManager::wait_for_lease`] decided.
enum LeaseWait {
    /// Call `gettoken`, holding the lease with this id (or without a lease).
    Refresh(Option<String>),
    /// Another process's token (or the still-valid current one) is good to use.
    Done(AccessToken),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn margin_is_capped_at_half_the_lifetime() {
        let token = AccessToken::new("t", at(1000), Duration::from_secs(100));
        let margin = Duration::from_secs(300);
        assert_eq!(token.freshness(at(1049), margin), Freshness::Fresh);
        assert_eq!(token.freshness(at(1050), margin), Freshness::RefreshDue);
        assert_eq!(token.freshness(at(1100), margin), Freshness::Expired);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = AccessToken::new("very-secret-token", at(0), Duration::from_secs(7200));
        assert!(!format!("{token:?}").contains("very-secret-token"));
    }

    #[test]
    fn token_keys_do_not_contain_the_secret_and_change_with_it() {
        let a = token_key("ww1", &Secret::new("secret-a"));
        let b = token_key("ww1", &Secret::new("secret-b"));
        assert!(a.starts_with("ww1:") && !a.contains("secret"));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn memory_store_invalidates_only_the_same_token() {
        let store = MemoryTokenStore::new();
        let old = AccessToken::new("old", at(0), Duration::from_secs(7200));
        let new = AccessToken::new("new", at(1), Duration::from_secs(7200));
        store.save("k", &new).await.unwrap();
        store.invalidate("k", &old).await.unwrap();
        assert_eq!(store.load("k").await.unwrap(), Some(new.clone()));
        store.invalidate("k", &new).await.unwrap();
        assert_eq!(store.load("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_refresh_falls_back_to_a_token_that_has_not_expired() {
        let manager = TokenManager::new(
            "k".into(),
            Arc::new(MemoryTokenStore::new()),
            Duration::from_secs(300),
            DEFAULT_REFRESH_LEASE,
        );
        let fetches = AtomicUsize::new(0);
        let now = || at(0);
        let token = manager
            .get(&now, || async {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok(AccessToken::new("t1", at(0), Duration::from_secs(7200)))
            })
            .await
            .unwrap();
        assert_eq!(token.secret().expose(), "t1");
        let later = || at(7000);
        let token = manager
            .get(&later, || async {
                fetches.fetch_add(1, Ordering::SeqCst);
                Err(Error::Config("down".into()))
            })
            .await
            .unwrap();
        assert_eq!(token.secret().expose(), "t1");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        let expired = || at(7200);
        assert!(
            manager
                .get(&expired, || async { Err(Error::Config("down".into())) })
                .await
                .is_err()
        );
    }
}
