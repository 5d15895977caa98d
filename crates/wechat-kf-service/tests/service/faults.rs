//! Faults on both sides: the emulator's injected failures (5xx, timeouts, 45009, token expiry,
//! empty pages with has_more, an expired sync token) and a webhook that fails, times out and
//! recovers. Nothing is lost, nothing is delivered twice, order per customer holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn pulls_survive_server_errors_timeouts_rate_limits_token_expiry_and_empty_pages() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    sink.set_policy(|r| {
        let replies: Vec<_> = r
            .messages
            .iter()
            .filter(|m| m["msgtype"] == "text")
            .take(1)
            .map(|m| {
                let (kf, ext) = customer(m);
                json!({"touser": ext, "open_kfid": kf, "msgtype": "text", "text": {"content": "ok"}})
            })
            .collect();
        Action::Ack(json!({"replies": replies}))
    });
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("faulty");
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.wechat.timeout = Duration::from_millis(500);
    config.pull.page_size = 7;
    config.pull.safety_interval = Duration::from_millis(500);
    // The emulator's injected 45009s are single answers, not WeChat's 60 s block.
    config.wechat.rate_limit_block = Duration::from_millis(300);
    let running = start(&emu, config).await;
    wait_for("the first pull", Duration::from_secs(5), || async {
        calls(&emu, "kf/sync_msg") >= 1
    })
    .await;

    let faults = json!([
        {"path": "kf/sync_msg", "kind": "http_status", "status": 502, "count": 2},
        {"path": "kf/sync_msg", "kind": "errcode", "errcode": 45009, "count": 2},
        {"path": "kf/sync_msg", "kind": "delay", "delay_ms": 1500, "count": 1},
        {"path": "kf/sync_msg", "kind": "invalidate_tokens", "count": 1},
        {"path": "kf/sync_msg", "kind": "empty_page", "count": 4},
        {"path": "kf/sync_msg", "kind": "errcode", "errcode": 95007, "count": 1},
        {"path": "kf/sync_msg", "kind": "errcode", "errcode": -1, "count": 3},
        {"path": "kf/send_msg", "kind": "errcode", "errcode": -1, "count": 5},
        {"path": "kf/send_msg", "kind": "http_status", "status": 503, "count": 2},
    ]);
    for fault in faults.as_array().unwrap() {
        emu.emulator().inject_fault(fault.clone()).unwrap();
    }
    let mut expected = Vec::new();
    for c in 0..6 {
        expected.extend(send_texts(&emu, &kf, &format!("wm{c}"), 9));
    }
    wait_for(
        "every message acknowledged",
        Duration::from_secs(40),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    let faults_left = emu.emulator().state_snapshot();
    let _ = faults_left;
    let asked: usize = sink
        .received()
        .iter()
        .filter(|r| r.messages.iter().any(|m| m["msgtype"] == "text"))
        .count();
    wait_for(
        "every reply sent despite send_msg faults",
        Duration::from_secs(30),
        || async { outbox(&emu, Some(&kf)).len() >= asked },
    )
    .await;
    let text = running.metrics().render();
    assert!(
        text.contains("wechat_kf_api_errcodes_total{endpoint=\"kf/sync_msg\",errcode=\"45009\"}"),
        "{text}"
    );
    let errors: u64 = text
        .lines()
        .find(|l| l.starts_with("wechat_kf_pull_errors_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    // The client retries twice itself; what still fails reaches the puller's own backoff.
    assert!(errors >= 1, "pull errors counted: {errors}");
    assert_eq!(
        running.store().stats().await.unwrap().messages as usize,
        expected.len()
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_webhook_that_fails_times_out_and_recovers_gets_everything_once_with_stable_ids() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    sink.set_policy(move |_| match counter.fetch_add(1, Ordering::SeqCst) {
        0..=3 => Action::Status(500),
        4..=5 => Action::Hang(Duration::from_millis(1500)),
        6 => Action::Status(404),
        _ => Action::Ack(json!({})),
    });
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("hooks");
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let mut expected = Vec::new();
    for c in 0..5 {
        expected.extend(send_texts(&emu, &kf, &format!("wm{c}"), 6));
    }
    wait_for(
        "every message acknowledged",
        Duration::from_secs(30),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    let received = sink.received();
    let failed: Vec<_> = received.iter().filter(|r| !r.acked).collect();
    assert!(failed.len() >= 7);
    // A failed delivery comes back under its id (one customer) or split per customer as
    // `<id>.<n>`; attempts count up.
    for f in &failed {
        let retried = received.iter().any(|r| {
            r.attempt > f.attempt
                && (r.delivery == f.delivery || r.delivery.starts_with(&format!("{}.", f.delivery)))
        });
        assert!(
            retried,
            "delivery {} was not retried under a stable id",
            f.delivery
        );
    }
    let text = running.metrics().render();
    assert!(!text.contains("wechat_kf_delivery_retries_total 0\n"));
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_customer_whose_messages_the_bot_rejects_does_not_block_the_others() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let healed = Arc::new(AtomicBool::new(false));
    let flag = healed.clone();
    sink.set_policy(move |r| {
        let poisoned = r.messages.iter().any(|m| customer(m).1 == "wmPoison");
        if poisoned && !flag.load(Ordering::SeqCst) {
            Action::Status(500)
        } else {
            Action::Ack(json!({}))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("poison");
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let mut expected = Vec::new();
    let mut healthy = Vec::new();
    for c in 0..8 {
        let ext = if c == 3 {
            "wmPoison".to_owned()
        } else {
            format!("wm{c}")
        };
        let sent = send_texts(&emu, &kf, &ext, 4);
        if ext != "wmPoison" {
            healthy.extend(sent.iter().map(|(_, _, id)| id.clone()));
        }
        expected.extend(sent);
    }
    wait_for(
        "healthy customers delivered while one is failing",
        Duration::from_secs(20),
        || async {
            let acked = sink.acked_msgids();
            healthy.iter().all(|id| acked.contains(id))
        },
    )
    .await;
    // Still retrying the poisoned customer, and only it.
    assert!(
        !sink
            .acked_per_customer()
            .contains_key(&(kf.clone(), "wmPoison".into()))
    );
    // More messages for healthy customers keep flowing.
    let more = send_texts(&emu, &kf, "wm0", 3);
    expected.extend(more.clone());
    wait_for(
        "new messages delivered",
        Duration::from_secs(10),
        || async {
            let acked = sink.acked_msgids();
            more.iter().all(|(_, _, id)| acked.contains(id))
        },
    )
    .await;
    healed.store(true, Ordering::SeqCst);
    wait_for(
        "the poisoned customer delivered after recovery",
        Duration::from_secs(20),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_prompt_while_pulls_back_off_or_wait_on_a_slow_server() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let failing = emu.emulator().create_account("failing");
    let slow = emu.emulator().create_account("slow");
    let running = start(&emu, config(&emu, &dir.path().join("kf.db"), None)).await;
    wait_for("the first pulls", Duration::from_secs(5), || async {
        calls(&emu, "kf/sync_msg") >= 2
    })
    .await;
    emu.emulator()
        .inject_fault(
            json!({"path": "kf/sync_msg", "kind": "http_status", "status": 502, "count": 1000}),
        )
        .unwrap();
    running.pullers().wake(&failing.into(), None);
    wait_for("a failing pull", Duration::from_secs(5), || async {
        running
            .metrics()
            .render()
            .contains("wechat_kf_pull_errors_total 1")
    })
    .await;
    emu.emulator().clear_faults();
    emu.emulator()
        .inject_fault(
            json!({"path": "kf/sync_msg", "kind": "delay", "delay_ms": 1900, "count": 1000}),
        )
        .unwrap();
    running.pullers().wake(&slow.into(), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    running.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    emu.shutdown().await;
}
