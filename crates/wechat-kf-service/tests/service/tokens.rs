//! Access tokens shared between instances through Redis (`wechat.token_store`), against the real
//! Redis at `REDIS_URL` (skipped without it, failing under `WECHAT_KF_CI=1`).

use std::time::Duration;

use wechat_kf_service::config::Secret;

use crate::common::*;

#[tokio::test]
async fn two_instances_sharing_a_redis_token_store_call_gettoken_once() {
    let Some(redis) = require_env("REDIS_URL") else {
        return;
    };
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("tokens");
    let dir = tempfile::tempdir().unwrap();
    // The emulator's corp id is fresh per test, so the Redis key (corp id + secret fingerprint)
    // is this test's own.
    let mut first_config = config(&emu, &dir.path().join("a.db"), Some(&sink.url));
    first_config.wechat.token_store = Some(Secret::new(redis.clone()));
    first_config.wechat.accounts = vec![kf.clone().into()];
    let mut second_config = first_config.clone();
    second_config.storage.db = Some(dir.path().join("b.db").to_str().unwrap().to_owned());

    let first = start(&emu, first_config).await;
    let expected = send_texts(&emu, &kf, "wmT1", 3);
    wait_for("delivered", Duration::from_secs(15), || async {
        sink.acked_count() >= expected.len()
    })
    .await;
    let second = wechat_kf_service::Service::start(second_config)
        .await
        .unwrap();
    second.client().servicers().list(kf.as_str()).await.unwrap();
    assert_eq!(
        calls(&emu, "gettoken"),
        1,
        "the second instance took the first one's token from Redis"
    );
    assert_eq!(
        first.client().token().await.unwrap().secret().expose(),
        second.client().token().await.unwrap().secret().expose()
    );
    second.shutdown().await;
    first.shutdown().await;
    emu.shutdown().await;
}

#[test]
fn a_token_store_that_is_not_a_redis_url_is_a_configuration_error() {
    let env = |k: &str| (k == "WECHAT_KF_TOKEN_STORE").then(|| "memcached://x".to_owned());
    let error = wechat_kf_service::config::Config::from_sources(None, &env, Default::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("wechat.token_store"), "{error}");
    assert!(
        !error.contains("memcached://x"),
        "the URL may hold a password"
    );
}
