//! `RedisTokenStore` against the real Redis at `REDIS_URL` (feature `redis`).
//!
//! Without `REDIS_URL` the tests print "skipped: REDIS_URL not set" and pass, unless
//! `WECHAT_KF_CI=1`, where a missing Redis is a failure.
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{RawQuery, State};
use futures::future::BoxFuture;
use serde_json::json;
use wechat_kf::client::token::{AccessToken, RedisTokenStore, TokenStore};
use wechat_kf::client::{Client, Error};

fn redis_url() -> Option<String> {
    wechat_kf_test_support::require_env("REDIS_URL")
}

/// The key a client keeps its token under. How it is made is the library's business, so learn
/// it the way any store does: from the client's first lookup (answered with a valid token, so
/// nothing goes to the network).
async fn store_key(corp_id: &str, secret: &str) -> String {
    #[derive(Default)]
    struct Spy(Mutex<Option<String>>);
    impl TokenStore for Spy {
        fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<AccessToken>, Error>> {
            *self.0.lock().unwrap() = Some(key.to_owned());
            let token = AccessToken::new("spy", SystemTime::now(), Duration::from_secs(7200));
            Box::pin(async move { Ok(Some(token)) })
        }
        fn save<'a>(&'a self, _: &'a str, _: &'a AccessToken) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
        fn invalidate<'a>(
            &'a self,
            _: &'a str,
            _: &'a AccessToken,
        ) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }
    let spy = Arc::new(Spy::default());
    let client = Client::builder(corp_id, secret)
        .base_url("http://127.0.0.1:9")
        .token_store(spy.clone())
        .build()
        .unwrap();
    client.token().await.unwrap();
    let key = spy.0.lock().unwrap().take();
    key.expect("the client looked its token up")
}

fn unique_prefix() -> String {
    format!("wechat-kf-test:{:016x}:", rand_u64())
}

fn rand_u64() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (std::process::id() as u64) << 32
}

/// A server that counts `gettoken` calls and accepts any token it issued.
async fn token_server() -> (Arc<AtomicUsize>, String) {
    slow_token_server(Duration::ZERO).await
}

/// The same, taking `delay` to answer `gettoken` (so concurrent refreshes overlap).
async fn slow_token_server(delay: Duration) -> (Arc<AtomicUsize>, String) {
    let count = Arc::new(AtomicUsize::new(0));
    async fn handle(
        State((count, delay)): State<(Arc<AtomicUsize>, Duration)>,
        uri: axum::http::Uri,
        RawQuery(query): RawQuery,
    ) -> axum::Json<serde_json::Value> {
        if uri.path().ends_with("/gettoken") {
            tokio::time::sleep(delay).await;
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            return axum::Json(
                json!({"errcode":0,"errmsg":"ok","access_token":format!("shared-{n}"),"expires_in":7200}),
            );
        }
        let ok = query.unwrap_or_default().contains("access_token=shared-");
        axum::Json(if ok {
            json!({"errcode":0,"errmsg":"ok","servicer_list":[]})
        } else {
            json!({"errcode":40014,"errmsg":"invalid access_token"})
        })
    }
    let app = Router::new()
        .fallback(handle)
        .with_state((count.clone(), delay));
    (count, wechat_kf_test_support::serve(app, "").await)
}

#[tokio::test]
async fn two_clients_sharing_a_redis_store_fetch_one_token() {
    let Some(url) = redis_url() else { return };
    let (count, base) = token_server().await;
    let prefix = unique_prefix();
    let store_a: Arc<dyn TokenStore> =
        Arc::new(RedisTokenStore::new(&url).unwrap().prefix(&prefix));
    let store_b: Arc<dyn TokenStore> =
        Arc::new(RedisTokenStore::new(&url).unwrap().prefix(&prefix));
    let a = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .token_store(store_a)
        .build()
        .unwrap();
    let b = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .token_store(store_b)
        .build()
        .unwrap();
    a.servicers().list("wk1").await.unwrap();
    b.servicers().list("wk1").await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(
        a.token().await.unwrap().secret().expose(),
        b.token().await.unwrap().secret().expose()
    );
}

#[tokio::test]
async fn the_redis_store_round_trips_and_only_invalidates_the_same_token() {
    let Some(url) = redis_url() else { return };
    let store = RedisTokenStore::new(&url).unwrap().prefix(unique_prefix());
    let now = SystemTime::now();
    let old = AccessToken::new("old-token", now, Duration::from_secs(7200));
    let new = AccessToken::new("new-token", now, Duration::from_secs(7200));
    assert_eq!(store.load("k").await.unwrap(), None);
    store.save("k", &new).await.unwrap();
    let loaded = store.load("k").await.unwrap().unwrap();
    assert_eq!(loaded.secret().expose(), "new-token");
    let drift = loaded
        .expires_at()
        .duration_since(new.expires_at())
        .unwrap_or_else(|e| e.duration());
    assert!(drift < Duration::from_secs(1));
    store.invalidate("k", &old).await.unwrap();
    assert!(store.load("k").await.unwrap().is_some());
    store.invalidate("k", &new).await.unwrap();
    assert_eq!(store.load("k").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_redis_degrades_to_fetching_tokens_directly() {
    if redis_url().is_none() {
        return;
    }
    let (count, base) = token_server().await;
    // Nothing listens on port 1.
    let store: Arc<dyn TokenStore> =
        Arc::new(RedisTokenStore::new("redis://127.0.0.1:1/").unwrap());
    let client = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .token_store(store)
        .build()
        .unwrap();
    client.servicers().list("wk1").await.unwrap();
    client.servicers().list("wk1").await.unwrap();
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the token is cached in process"
    );
}

/// `n` clients, each with its own connection to the same Redis keys (as `n` processes would).
fn clients_sharing(url: &str, base: &str, prefix: &str, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            let store: Arc<dyn TokenStore> =
                Arc::new(RedisTokenStore::new(url).unwrap().prefix(prefix));
            Client::builder("wwcorp", "secret")
                .base_url(base)
                .token_store(store)
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn eight_processes_starting_together_call_gettoken_once() {
    let Some(url) = redis_url() else { return };
    let (count, base) = slow_token_server(Duration::from_millis(300)).await;
    let clients = clients_sharing(&url, &base, &unique_prefix(), 8);
    let tokens = futures::future::join_all(clients.iter().map(|c| c.token())).await;
    let tokens: Vec<String> = tokens
        .into_iter()
        .map(|t| t.unwrap().secret().expose().to_owned())
        .collect();
    assert_eq!(count.load(Ordering::SeqCst), 1, "one gettoken for all");
    assert!(tokens.iter().all(|t| t == "shared-1"), "{tokens:?}");
}

#[tokio::test]
async fn while_one_process_refreshes_a_due_token_the_others_keep_using_it() {
    let Some(url) = redis_url() else { return };
    let (count, base) = slow_token_server(Duration::from_millis(300)).await;
    let prefix = unique_prefix();
    let clients = clients_sharing(&url, &base, &prefix, 8);
    // A token inside the 5-minute refresh margin: valid, but due.
    let now = SystemTime::now();
    let due = AccessToken::from_parts(
        "shared-0",
        now - Duration::from_secs(7000),
        now + Duration::from_secs(200),
    );
    let store = RedisTokenStore::new(&url).unwrap().prefix(&prefix);
    store
        .save(&store_key("wwcorp", "secret").await, &due)
        .await
        .unwrap();
    let calls = futures::future::join_all(clients.iter().map(|c| c.servicers().list("wk1"))).await;
    assert!(calls.iter().all(Result::is_ok));
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "only the lease holder refreshed"
    );
    // Once the holder has stored the new token, everyone uses it.
    for client in &clients {
        assert_eq!(client.token().await.unwrap().secret().expose(), "shared-1");
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_lease_left_by_a_dead_process_delays_a_refresh_by_at_most_two_lease_times() {
    let Some(url) = redis_url() else { return };
    let (count, base) = token_server().await;
    let prefix = unique_prefix();
    let key = store_key("wwcorp", "secret").await;
    let store = RedisTokenStore::new(&url).unwrap().prefix(&prefix);
    // The "dead process" takes the lease for a minute and never releases it.
    let lease = store
        .acquire_refresh(&key, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        lease,
        wechat_kf::client::token::RefreshLease::Granted(_)
    ));
    let client = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .token_store(Arc::new(store))
        .token_refresh_lease(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    client.servicers().list("wk1").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_holder_slower_than_the_lease_hands_over_to_one_waiter_not_to_all() {
    let Some(url) = redis_url() else { return };
    // gettoken takes longer than the lease: the first holder's lease lapses mid-refresh.
    let (count, base) = slow_token_server(Duration::from_millis(400)).await;
    let prefix = unique_prefix();
    let clients: Vec<Client> = (0..8)
        .map(|_| {
            let store: Arc<dyn TokenStore> =
                Arc::new(RedisTokenStore::new(&url).unwrap().prefix(&prefix));
            Client::builder("wwcorp", "secret")
                .base_url(&base)
                .token_store(store)
                .token_refresh_lease(Duration::from_millis(300))
                .build()
                .unwrap()
        })
        .collect();
    let tokens = futures::future::join_all(clients.iter().map(|c| c.token())).await;
    assert!(tokens.iter().all(Result::is_ok));
    // The first holder, and the one waiter that took the lapsed lease (a third at most on a
    // loaded machine) — not every waiter at the lease's end.
    let calls = count.load(Ordering::SeqCst);
    assert!((1..=3).contains(&calls), "{calls} gettoken calls");
}

#[tokio::test]
async fn a_rediss_url_speaks_tls_and_a_server_that_never_answers_times_out() {
    let Some(url) = redis_url() else { return };
    // The same server, addressed with TLS: the store is built (TLS support is compiled in),
    // and the handshake a plain-text server never answers fails at the store's timeout
    // instead of hanging the client.
    let tls_url = url.replacen("redis://", "rediss://", 1);
    let store = RedisTokenStore::new(&tls_url)
        .expect("rediss:// is supported")
        .timeout(Duration::from_millis(500));
    let key = store_key("wwcorp", "secret").await;
    let loaded = tokio::time::timeout(Duration::from_secs(10), store.load(&key))
        .await
        .expect("the store's timeout applies");
    assert!(loaded.is_err(), "{loaded:?}");
}
