//! End to end against the emulator: many accounts and customers, mixed message types, events
//! and undecodable items; every message reaches the bot once, in order per customer; replies
//! reach the emulator's outbox.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn every_message_of_many_customers_reaches_the_bot_once_in_order_and_replies_go_out() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    // The bot answers each customer who wrote in a delivery once.
    sink.set_policy(|r| {
        let mut replies = Vec::new();
        let mut answered = HashSet::new();
        for m in &r.messages {
            if m["origin"] == 3 && m["msgtype"] == "text" {
                let (kf, ext) = customer(m);
                if answered.insert((kf.clone(), ext.clone())) {
                    replies.push(json!({"touser": ext, "open_kfid": kf, "msgtype": "text",
                                        "text": {"content": format!("re: {}", msgid(m))}}));
                }
            }
        }
        Action::Ack(json!({"replies": replies}))
    });
    let dir = tempfile::tempdir().unwrap();
    let accounts: Vec<String> = (0..3)
        .map(|i| emu.emulator().create_account(&format!("客服{i}")))
        .collect();
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;

    let mut expected = Vec::new();
    let mut round = 0;
    for wave in 0..4 {
        for (a, kf) in accounts.iter().enumerate() {
            for c in 0..8 {
                let ext = format!("wm{a}x{c}");
                round += 1;
                let mut batch = vec![
                    json!({"open_kfid": kf, "external_userid": ext, "msgtype": "text", "text": {"content": format!("hi {round}")}}),
                    json!({"open_kfid": kf, "external_userid": ext, "msgtype": "image", "image": {}}),
                    json!({"open_kfid": kf, "external_userid": ext, "msgtype": "location",
                           "location": {"latitude": 23.1, "longitude": 113.2, "name": "店", "address": "路"}}),
                    json!({"open_kfid": kf, "external_userid": ext, "msgtype": "text", "text": {"content": "第二条"}}),
                ];
                if c == 0 {
                    // An item the library cannot decode: stored raw, delivered, flagged.
                    batch.push(
                        json!({"open_kfid": kf, "external_userid": ext, "msgtype": "location",
                                      "location": {"latitude": "north", "longitude": 1}}),
                    );
                }
                if c == 1 && wave == 0 {
                    batch.push(json!({"open_kfid": kf, "external_userid": ext, "msgtype": "hologram", "hologram": {"x": 1}}));
                }
                let ids = emu.emulator().customer_send(Value::Array(batch)).unwrap();
                expected.extend(ids.into_iter().map(|id| (kf.clone(), ext.clone(), id)));
            }
            // An event with a customer (its lane) and one without (the account's lane).
            let (id, _) = emu
                .emulator()
                .enter_session(kf, &format!("wm{a}new{wave}"), Some("scene"), None)
                .unwrap();
            expected.push((kf.clone(), format!("wm{a}new{wave}"), id));
            let ids = emu
                .emulator()
                .append_events(
                    json!({"event_type": "servicer_status_change", "open_kfid": kf,
                                      "servicer_userid": "zhangsan", "status": 2}),
                )
                .unwrap();
            expected.extend(ids.into_iter().map(|id| (kf.clone(), String::new(), id)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let total = expected.len();
    wait_for(
        "every message acknowledged",
        Duration::from_secs(30),
        || async { sink.acked_count() >= total },
    )
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    let received = sink.received();
    assert!(
        received.iter().all(|r| r.signature_ok),
        "every delivery is signed"
    );
    assert!(
        received
            .iter()
            .all(|r| r.attempt == 1 && !r.delivery.is_empty())
    );
    // The undecodable items came through, flagged by index.
    let flagged: usize = received.iter().map(|r| r.invalid.len()).sum();
    assert_eq!(flagged, accounts.len() * 4);
    for r in &received {
        for &i in &r.invalid {
            assert_eq!(r.messages[i as usize]["location"]["latitude"], "north");
        }
    }
    // Unknown message types are delivered like any other.
    assert!(
        received
            .iter()
            .flat_map(|r| &r.messages)
            .any(|m| m["msgtype"] == "hologram")
    );

    // Replies: each one the bot asked for reached the emulator's outbox.
    let asked: usize = received
        .iter()
        .map(|r| {
            let customers: HashSet<_> = r
                .messages
                .iter()
                .filter(|m| m["origin"] == 3 && m["msgtype"] == "text")
                .map(customer)
                .collect();
            customers.len()
        })
        .sum();
    wait_for("replies in the outbox", Duration::from_secs(20), || async {
        outbox(&emu, None).len() >= asked
    })
    .await;
    let sent = outbox(&emu, None);
    assert_eq!(sent.len(), asked);
    assert!(sent.iter().all(|m| {
        m["request"]["text"]["content"]
            .as_str()
            .unwrap()
            .starts_with("re: ")
    }));

    wait_until_acks_recorded(&running).await;
    let stats = running.store().stats().await.unwrap();
    assert_eq!(stats.messages as usize, total);
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.deliveries, 0);
    let metrics = running.metrics().render();
    assert!(
        metrics.contains(&format!("wechat_kf_messages_delivered_total {total}")),
        "{metrics}"
    );
    assert!(metrics.contains("wechat_kf_messages_duplicate_total 0"));
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_callbacks_for_one_account_coalesces_into_few_pulls() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("burst");
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    wait_for("the first pull", Duration::from_secs(5), || async {
        calls(&emu, "kf/sync_msg") >= 1
    })
    .await;
    let before = calls(&emu, "kf/sync_msg");
    // 200 messages sent one by one: each append triggers a callback, but the emulator keeps one
    // in flight per account and the service coalesces the rest.
    let mut expected = Vec::new();
    for i in 0..200 {
        expected.extend(send_texts(&emu, &kf, &format!("wm{}", i % 5), 1));
    }
    wait_for("all acknowledged", Duration::from_secs(20), || async {
        sink.acked_count() >= 200
    })
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    let pulls = calls(&emu, "kf/sync_msg") - before;
    let callbacks = running
        .metrics()
        .callbacks(wechat_kf_service::metrics::CallbackResult::Accepted);
    assert!(
        pulls <= callbacks + 1,
        "{pulls} sync_msg calls for {callbacks} callbacks"
    );
    assert!(pulls < 200, "callbacks were not coalesced: {pulls} pulls");
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let http = reqwest::Client::new();
    let base = running.base_url();
    let get = |path: &str| http.get(format!("{base}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for family in [
        "wechat_kf_callbacks_total",
        "wechat_kf_pulls_total",
        "wechat_kf_messages_stored_total",
        "wechat_kf_messages_delivered_total",
        "wechat_kf_delivery_lag_seconds_bucket",
        "wechat_kf_delivery_retries_total",
        "wechat_kf_api_errcodes_total",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    running.state().set_ready(false);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    running.shutdown().await;
    emu.shutdown().await;
}

/// What a proxy in front of the emulator saw of `kf/sync_msg`: calls in flight now per
/// account, the most ever in flight for one account, and each call's callback Token.
#[derive(Default)]
struct SyncCalls {
    in_flight: std::collections::HashMap<String, usize>,
    most: usize,
    tokens: Vec<Option<String>>,
}

/// Per account at most one `sync_msg` is in flight however many callbacks arrive, callbacks
/// that arrive during a pull cause few further pulls (not one each), and the last pull carries
/// the newest callback Token.
#[tokio::test]
async fn one_sync_msg_at_a_time_per_account_and_the_last_pull_has_the_newest_token() {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, Uri};

    let emu = emulator().await;
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("inflight");
    let seen = Arc::new(Mutex::new(SyncCalls::default()));
    let upstream = emu.base_url();
    let http = reqwest::Client::new();
    let proxy = {
        let seen = seen.clone();
        axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (seen, http, upstream) = (seen.clone(), http.clone(), upstream.clone());
                async move {
                    let account = uri
                        .path()
                        .ends_with("/kf/sync_msg")
                        .then(|| serde_json::from_slice::<Value>(&body).ok())
                        .flatten();
                    if let Some(request) = &account {
                        let mut seen = seen.lock().unwrap();
                        let open_kfid = request["open_kfid"].as_str().unwrap_or("").to_owned();
                        let now = {
                            let n = seen.in_flight.entry(open_kfid).or_default();
                            *n += 1;
                            *n
                        };
                        seen.most = seen.most.max(now);
                        let token = request["token"].as_str().map(str::to_owned);
                        seen.tokens.push(token);
                    }
                    let mut forward = http
                        .request(method, format!("{upstream}{uri}"))
                        .body(body.to_vec());
                    if let Some(kind) = headers.get("content-type") {
                        forward = forward.header("content-type", kind.clone());
                    }
                    let response = forward.send().await.unwrap();
                    let status = response.status().as_u16();
                    let bytes = response.bytes().await.unwrap();
                    if let Some(request) = &account {
                        let open_kfid = request["open_kfid"].as_str().unwrap_or("");
                        if let Some(n) = seen.lock().unwrap().in_flight.get_mut(open_kfid) {
                            *n -= 1;
                        }
                    }
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        bytes,
                    )
                }
            },
        )
    };
    let proxy_url = wechat_kf_test_support::serve(proxy, "").await;
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.wechat.base_url = Some(proxy_url);
    let running = start(&emu, config).await;
    // Slow pulls, so that callbacks arrive while one is in flight.
    emu.emulator()
        .inject_fault(json!({"path": "kf/sync_msg", "kind": "delay", "delay_ms": 200, "count": 20}))
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..40 {
        expected.extend(send_texts(&emu, &kf, &format!("wm{}", i % 4), 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_for("all acknowledged", Duration::from_secs(30), || async {
        sink.acked_count() >= expected.len()
    })
    .await;
    wait_for("callbacks done", Duration::from_secs(10), || async {
        emu.emulator().callbacks_idle()
    })
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    let (most, tokens) = {
        let seen = seen.lock().unwrap();
        (seen.most, seen.tokens.clone())
    };
    assert_eq!(most, 1, "more than one sync_msg in flight for an account");
    assert!(
        tokens.len() < expected.len(),
        "callbacks were not coalesced: {} pulls for {} messages",
        tokens.len(),
        expected.len()
    );
    let attempts = emu.emulator().callback_attempts();
    let newest = attempts["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ok"] == true && a["open_kfid"] == kf.as_str())
        .filter_map(|a| a["token"].as_str())
        .next_back()
        .map(str::to_owned);
    assert!(newest.is_some());
    assert_eq!(tokens.last().cloned().flatten(), newest);
    running.shutdown().await;
    emu.shutdown().await;
}
