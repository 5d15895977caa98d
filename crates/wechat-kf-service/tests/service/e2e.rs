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
