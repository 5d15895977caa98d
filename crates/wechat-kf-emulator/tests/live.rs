//! Tests against a started emulator over real TCP: callbacks (with a local receiver), retries,
//! coalescing, URL verification, connection drops and many concurrent clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use wechat_kf_emulator::crypto::{self, MsgCrypt};
use wechat_kf_emulator::{Config, Emulator, RunningEmulator};

/// One received POST: its query parameters and body.
type Post = (HashMap<String, String>, String);

/// A callback receiver that records requests and answers as configured.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Post>>>,
    fail_first: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicUsize>,
    crypt: Arc<Mutex<Option<MsgCrypt>>>,
}

async fn on_post(
    State(r): State<Receiver>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> StatusCode {
    r.posts.lock().unwrap().push((q, body));
    let delay = r.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let fail = r.fail_first.load(Ordering::SeqCst);
    if fail > 0 {
        r.fail_first.store(fail - 1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn on_get(State(r): State<Receiver>, Query(q): Query<HashMap<String, String>>) -> String {
    let crypt = r.crypt.lock().unwrap().clone().unwrap();
    crypt
        .verify_and_decrypt(
            &q["msg_signature"],
            &q["timestamp"],
            &q["nonce"],
            &q["echostr"],
        )
        .unwrap_or_default()
}

/// Verifies and decrypts a callback POST the receiver got, as the company's server would.
fn decrypt_post(config: &Config, query: &HashMap<String, String>, body: &str) -> String {
    let crypt = MsgCrypt::new(
        &config.callback_token,
        &config.encoding_aes_key,
        &config.corp_id,
    )
    .unwrap();
    let encrypted = crypto::xml_field(body, "Encrypt").unwrap();
    crypt
        .verify_and_decrypt(
            &query["msg_signature"],
            &query["timestamp"],
            &query["nonce"],
            &encrypted,
        )
        .unwrap()
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/cb", get(on_get).post(on_post))
        .with_state(r.clone());
    (r, wechat_kf_test_support::serve(app, "/cb").await)
}

async fn start(config: Config) -> RunningEmulator {
    Emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn fast_config(url: Option<String>) -> Config {
    let mut config = Config::generated();
    config.callback_url = url;
    config.callback_retry_delay = Duration::from_millis(20);
    config.callback_timeout = Duration::from_millis(300);
    config
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let ten_seconds = Duration::from_secs(10);
    wechat_kf_test_support::wait_for("the emulator", ten_seconds, || std::future::ready(done()))
        .await;
}

fn say(emu: &Emulator, kf: &str, n: usize) {
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"open_kfid": kf, "external_userid": "wmC", "msgtype": "text", "text": {"content": format!("消息{i}")}}))
        .collect();
    emu.customer_send(Value::from(batch)).unwrap();
}

async fn token(client: &reqwest::Client, base: &str, config: &Config) -> String {
    let url = format!(
        "{base}/cgi-bin/gettoken?corpid={}&corpsecret={}",
        config.corp_id, config.secret
    );
    let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_callback_is_signed_and_encrypted_like_wechat_and_its_token_opens_sync() {
    let (r, url) = receiver().await;
    let running = start(fast_config(Some(url))).await;
    let emu = running.emulator().clone();
    let config = emu.config().clone();
    let kf = emu.create_account("客服");
    say(&emu, &kf, 1);
    wait_for(|| !r.posts.lock().unwrap().is_empty()).await;
    let (query, body) = r.posts.lock().unwrap()[0].clone();
    assert_eq!(
        crypto::xml_field(&body, "ToUserName").as_deref(),
        Some(config.corp_id.as_str())
    );
    let plain = decrypt_post(&config, &query, &body);
    assert_eq!(
        crypto::xml_field(&plain, "Event").as_deref(),
        Some("kf_msg_or_event")
    );
    assert_eq!(
        crypto::xml_field(&plain, "MsgType").as_deref(),
        Some("event")
    );
    assert_eq!(
        crypto::xml_field(&plain, "OpenKfId").as_deref(),
        Some(kf.as_str())
    );
    assert_eq!(
        crypto::xml_field(&plain, "CreateTime"),
        Some(query["timestamp"].clone())
    );
    let sync_token = crypto::xml_field(&plain, "Token").unwrap();
    assert!(
        // (Chinese text: the random ids and tokens in the XML are ASCII and cannot contain it.)
        !plain.contains("消息0"),
        "a callback carries no message content"
    );
    let client = reqwest::Client::new();
    let access = token(&client, &running.base_url(), &config).await;
    let v: Value = client
        .post(format!(
            "{}/cgi-bin/kf/sync_msg?access_token={access}",
            running.base_url()
        ))
        .json(&json!({"open_kfid": kf, "token": sync_token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["msg_list"][0]["text"]["content"], "消息0");
    running.shutdown().await;
}

#[tokio::test]
async fn every_callback_carries_a_fresh_token() {
    let (r, url) = receiver().await;
    let running = start(fast_config(Some(url))).await;
    let emu = running.emulator();
    let kf = emu.create_account("客服");
    say(emu, &kf, 1);
    wait_for(|| r.posts.lock().unwrap().len() == 1).await;
    wait_for(|| {
        emu.callback_attempts()["attempts"]
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    say(emu, &kf, 1);
    wait_for(|| r.posts.lock().unwrap().len() == 2).await;
    let posts = r.posts.lock().unwrap().clone();
    assert_ne!(posts[0].1, posts[1].1);
    wait_for(|| {
        emu.callback_attempts()["attempts"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let list = emu.callback_attempts()["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert_ne!(list[0]["token"], list[1]["token"]);
}

#[tokio::test]
async fn a_failed_callback_is_retried_identically_up_to_three_times() {
    let (r, url) = receiver().await;
    r.fail_first.store(2, Ordering::SeqCst);
    let running = start(fast_config(Some(url))).await;
    let emu = running.emulator();
    let kf = emu.create_account("客服");
    say(emu, &kf, 1);
    wait_for(|| emu.state_snapshot()["counters"]["callbacks_sent"] == 1).await;
    let posts = r.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 3);
    assert!(
        posts.iter().all(|p| p == &posts[0]),
        "retries repeat the identical request"
    );
    let attempts = emu.callback_attempts()["attempts"]
        .as_array()
        .unwrap()
        .clone();
    let summary: Vec<(i64, i64)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(1, 500), (2, 500), (3, 200)]);
    assert!(
        attempts
            .iter()
            .all(|a| a["delivery"] == attempts[0]["delivery"])
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_in_time_gets_four_attempts_then_a_failure() {
    let (r, url) = receiver().await;
    r.delay_ms.store(1000, Ordering::SeqCst);
    let running = start(fast_config(Some(url))).await;
    let emu = running.emulator();
    let kf = emu.create_account("客服");
    say(emu, &kf, 1);
    wait_for(|| emu.state_snapshot()["counters"]["callbacks_failed"] == 1).await;
    let attempts = emu.callback_attempts()["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a["error"] == "timeout"));
}

#[tokio::test]
async fn ten_thousand_messages_in_many_calls_do_not_cause_ten_thousand_callbacks() {
    let (r, url) = receiver().await;
    // A slow receiver: everything below is injected while the first callback is in flight.
    r.delay_ms.store(500, Ordering::SeqCst);
    let mut config = fast_config(Some(url));
    config.callback_timeout = Duration::from_secs(5);
    let running = start(config).await;
    let emu = running.emulator();
    let kf = emu.create_account("客服");
    for _ in 0..1000 {
        say(emu, &kf, 10);
    }
    wait_for(|| {
        let s = emu.state_snapshot();
        s["counters"]["callbacks_sent"].as_u64() >= Some(1) && emu.callbacks_idle()
    })
    .await;
    let sent = emu.state_snapshot()["counters"]["callbacks_sent"]
        .as_u64()
        .unwrap();
    assert!((1..=10).contains(&sent), "{sent} callbacks");
    assert_eq!(emu.state_snapshot()["counters"]["messages_in_logs"], 10_000);
}

#[tokio::test]
async fn url_verification_reports_whether_the_echo_matched() {
    let (r, url) = receiver().await;
    let running = start(fast_config(Some(url.clone()))).await;
    let config = running.emulator().config().clone();
    *r.crypt.lock().unwrap() = Some(
        MsgCrypt::new(
            &config.callback_token,
            &config.encoding_aes_key,
            &config.corp_id,
        )
        .unwrap(),
    );
    let client = reqwest::Client::new();
    let verify = |body: Value| {
        client
            .post(format!("{}/emulator/callback/verify", running.base_url()))
            .json(&body)
            .send()
    };
    let v: Value = verify(json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    *r.crypt.lock().unwrap() =
        Some(MsgCrypt::new("wrong-token", &config.encoding_aes_key, &config.corp_id).unwrap());
    let v: Value = verify(json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let v: Value = verify(json!({"url": "http://127.0.0.1:1/nothing"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], false);
}

#[tokio::test]
async fn a_drop_fault_closes_the_connection_without_a_response() {
    let running = start(Config::generated()).await;
    let base = running.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    running
        .emulator()
        .inject_fault(json!({"path": "gettoken", "kind": "drop"}))
        .unwrap();
    let client = reqwest::Client::new();
    let err = client.get(format!("{base}/cgi-bin/gettoken")).send().await;
    assert!(err.is_err(), "expected a dropped connection, got {err:?}");
    let ok = client
        .get(format!("{base}/cgi-bin/gettoken"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn many_parallel_clients_see_consistent_state() {
    let running = start(Config::generated()).await;
    let base = running.base_url();
    let emu = running.emulator().clone();
    let config = emu.config().clone();
    let kf = emu.create_account("客服");
    let client = reqwest::Client::new();
    let access = token(&client, &base, &config).await;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, base, access, kf) = (client.clone(), base.clone(), access.clone(), kf.clone());
        tasks.push(tokio::spawn(async move {
            let ext = format!("wmWorker{worker}");
            let mut sent = Vec::new();
            for round in 0..10 {
                let msg = json!({"open_kfid": kf, "external_userid": ext, "msgtype": "text", "text": {"content": format!("{round}")}});
                let r = client.post(format!("{base}/emulator/customer/send")).json(&msg).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let reply = json!({"touser": ext, "open_kfid": kf, "msgtype": "text", "text": {"content": "ok"}});
                let v: Value = client
                    .post(format!("{base}/cgi-bin/kf/send_msg?access_token={access}"))
                    .json(&reply)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v["errcode"], 0, "{v}");
                sent.push(v["msgid"].as_str().unwrap().to_string());
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 160);
    let state = emu.state_snapshot();
    assert_eq!(state["counters"]["messages_in_logs"], 160);
    assert_eq!(state["counters"]["calls"]["kf/send_msg"], 160);
    assert_eq!(state["sessions"].as_array().unwrap().len(), 16);
    running.shutdown().await;
}

#[test]
fn the_emulator_crypto_reproduces_crypto_md_v6_exactly() {
    let crypt = MsgCrypt::new(
        "QDG6eK",
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "wx5823bf96d3bd56c7",
    )
    .unwrap();
    let plain = crypto::kf_event_plaintext(
        "wx5823bf96d3bd56c7",
        1_700_000_000,
        "ENCTESTTOKEN0000000000000000000001",
        "wkTESTOPENKFID000000000000000001",
    );
    let encrypted = crypt.encrypt_with_random(b"abcdefghijklmnop", &plain);
    assert_eq!(
        encrypted,
        "7ho9XWI/HTOA1L6oduAxX9LNhMaFCp7Yre3u1FOSfYIg3jeMdjD56prUxXn28j2RaWf71RJNVKJGSi6tDj+n9MIUMb8aHHLy5IhCeZq25MNftOjmQQKIdIBNfVs9CQJxJAWFGME43hPRGHRg3rJUHhJ2zy4OFnSLetV5qaI96ImReosw9YSZ9F8mRSR6r5c0W4Xp7yVrt1rUDvQ0ZnjfIPNwSmd8F1iwQa1/kODyCHXN4ImnEx14qLLALPTqYTWlIP1Xs7Iy0H5/OUUY7EoBZIq/zkQ4+zMijai4xA6SFOrmHe5Jpo4Z3DBuyrqNWliihdWwqM7n10flqHF9R7wKDO5E8veJD9qDgBNIfOxvQt5e0m1+ZYGOv2ORFEGZJRx80Eo3Z3TGZcUYvd8CyzwoWAwrt5nzGU08bfDvorCYoAwCq1IKTb38L0K1EOm8PMToxdS+cdAsgUNQBNhT2j5V5w=="
    );
    assert_eq!(
        crypt.sign("1700000000", "1234567890", &encrypted),
        "467bf8f952ba7e3bac9e4ef87bf2b307c1b5bf1a"
    );
}

/// Every `<tag>` text of a flat XML document, in order.
fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}><![CDATA[");
    let close = format!("]]></{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

#[tokio::test]
async fn an_auth_change_callback_carries_repeated_add_and_del_elements() {
    let (r, url) = receiver().await;
    let running = start(fast_config(Some(url))).await;
    let emu = running.emulator().clone();
    let config = emu.config().clone();
    let kept = emu.create_account("保留");
    let revoked = emu.create_account("撤销");
    let client = reqwest::Client::new();
    let base = running.base_url();
    let v: Value = client
        .post(format!("{base}/emulator/callback/auth_change"))
        .json(&json!({"add": [kept, "wkNew0001"], "del": [revoked]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["attempts"].as_u64()),
        (Some(true), Some(1))
    );
    let (query, body) = r.posts.lock().unwrap()[0].clone();
    let plain = decrypt_post(&config, &query, &body);
    assert_eq!(
        crypto::xml_field(&plain, "Event").as_deref(),
        Some("kf_account_auth_change")
    );
    assert_eq!(
        crypto::xml_field(&plain, "FromUserName").as_deref(),
        Some("sys")
    );
    assert_eq!(
        crypto::xml_field(&plain, "ToUserName").as_deref(),
        Some(config.corp_id.as_str())
    );
    assert_eq!(
        xml_all(&plain, "AuthAddOpenKfId"),
        [kept.as_str(), "wkNew0001"]
    );
    assert_eq!(xml_all(&plain, "AuthDelOpenKfId"), [revoked.as_str()]);
    assert!(plain.find("AuthAddOpenKfId") < plain.find("AuthDelOpenKfId"));
    let attempts = emu.callback_attempts();
    assert_eq!(attempts["attempts"][0]["event"], "kf_account_auth_change");
    // The revoked account is no longer under API management.
    let access = token(&client, &base, &config).await;
    let call = |kf: String| {
        let client = client.clone();
        let url = format!("{base}/cgi-bin/kf/sync_msg?access_token={access}");
        async move {
            let v: Value = client
                .post(url)
                .json(&json!({"open_kfid": kf}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["errcode"].as_i64().unwrap()
        }
    };
    assert_eq!(call(kept.clone()).await, 0);
    assert_eq!(call(revoked.clone()).await, 48002);
    // An empty change is a valid callback too; a bad id is refused before sending.
    assert_eq!(emu.send_auth_change(&[], &[]).await.unwrap()["ok"], true);
    assert!(emu.send_auth_change(&["wk]]>x"], &[]).await.is_err());
    assert_eq!(r.posts.lock().unwrap().len(), 2);
    assert_eq!(
        emu.send_auth_change(&[&revoked], &[]).await.unwrap()["ok"],
        true
    );
    assert_eq!(call(revoked).await, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn an_auth_change_is_retried_like_any_callback_and_needs_a_callback_url() {
    let (r, url) = receiver().await;
    r.fail_first.store(2, Ordering::SeqCst);
    let running = start(fast_config(Some(url))).await;
    let emu = running.emulator();
    let v = emu.send_auth_change(&["wkA"], &[]).await.unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["attempts"].as_u64()),
        (Some(true), Some(3))
    );
    let posts = r.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 3);
    assert!(posts.iter().all(|p| p == &posts[0]), "identical retries");
    emu.set_callback_url(None);
    let client = reqwest::Client::new();
    let response = client
        .post(format!(
            "{}/emulator/callback/auth_change",
            running.base_url()
        ))
        .json(&json!({"add": ["wkA"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    running.shutdown().await;
}

#[tokio::test]
async fn wrong_secrets_over_tcp_block_the_peer_address() {
    let mut config = fast_config(None);
    config.gettoken_wrong_secret_limit = 3;
    let running = start(config).await;
    let config = running.emulator().config().clone();
    let client = reqwest::Client::new();
    let url = |secret: &str| {
        format!(
            "{}/cgi-bin/gettoken?corpid={}&corpsecret={secret}",
            running.base_url(),
            config.corp_id
        )
    };
    for _ in 0..3 {
        let v: Value = client
            .get(url("wrong"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["errcode"], 40001);
    }
    let v: Value = client
        .get(url(&config.secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["errcode"], 40001);
    let state = running.emulator().state_snapshot();
    assert_eq!(state["blocked_ips"][0]["ip"], "127.0.0.1");
    running.shutdown().await;
}
