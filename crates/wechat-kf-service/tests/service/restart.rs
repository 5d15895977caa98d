//! Restarts on the same database: the cursor, undelivered messages and deliveries waiting for a
//! retry carry over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_restart_resumes_from_the_committed_cursor_and_redelivers_under_the_same_ids() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    sink.set_policy(move |_| {
        if flag.load(Ordering::SeqCst) {
            Action::Status(503)
        } else {
            Action::Ack(json!({}))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let kf = emu.emulator().create_account("restart");

    let first = start(&emu, config(&emu, &db, Some(&sink.url))).await;
    let mut expected = send_texts(&emu, &kf, "wmA", 10);
    wait_for("first batch delivered", Duration::from_secs(10), || async {
        sink.acked_count() >= 10
    })
    .await;
    // The bot goes down; new messages are stored but not acknowledged.
    failing.store(true, Ordering::SeqCst);
    expected.extend(send_texts(&emu, &kf, "wmB", 5));
    wait_for("a failed attempt", Duration::from_secs(10), || async {
        sink.received().iter().any(|r| !r.acked)
    })
    .await;
    let failed_ids: Vec<String> = sink
        .received()
        .iter()
        .filter(|r| !r.acked)
        .map(|r| r.delivery.clone())
        .collect();
    first.shutdown().await;
    emu.emulator().set_callback_url(None);

    // While the service is down, more messages arrive (their callbacks are lost).
    expected.extend(send_texts(&emu, &kf, "wmC", 7));
    failing.store(false, Ordering::SeqCst);

    let syncs_before = calls(&emu, "kf/sync_msg");
    let second = start(&emu, config(&emu, &db, Some(&sink.url))).await;
    wait_for(
        "everything delivered after the restart",
        Duration::from_secs(20),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_exactly_once_in_order(&sink, &expected);
    // The pending delivery kept its id across the restart.
    let acked_ids: Vec<String> = sink
        .received()
        .iter()
        .filter(|r| r.acked)
        .map(|r| r.delivery.clone())
        .collect();
    assert!(
        failed_ids.iter().any(|f| acked_ids
            .iter()
            .any(|a| a == f || a.starts_with(&format!("{f}.")))),
        "no delivery id survived the restart: failed {failed_ids:?}, acked {acked_ids:?}"
    );
    // The restart pulled from the stored cursor: nothing came back twice.
    let text = second.metrics().render();
    assert!(
        text.contains("wechat_kf_messages_duplicate_total 0"),
        "{text}"
    );
    assert!(calls(&emu, "kf/sync_msg") > syncs_before);
    wait_until_acks_recorded(&second).await;
    let stats = second.store().stats().await.unwrap();
    assert_eq!(stats.messages as usize, expected.len());
    second.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn replies_queued_before_a_shutdown_are_sent_after_the_restart() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    sink.set_policy(|r| {
        let replies: Vec<_> = r
            .messages
            .iter()
            .map(|m| {
                let (kf, ext) = customer(m);
                json!({"touser": ext, "open_kfid": kf, "msgtype": "text", "text": {"content": "later"}})
            })
            .take(1)
            .collect();
        Action::Ack(json!({"replies": replies}))
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let kf = emu.emulator().create_account("replies");
    // send_msg is down for a while: the reply stays queued.
    emu.emulator()
        .inject_fault(
            json!({"path": "kf/send_msg", "kind": "http_status", "status": 502, "seconds": 3600}),
        )
        .unwrap();
    let first = start(&emu, config(&emu, &db, Some(&sink.url))).await;
    let _ = send_texts(&emu, &kf, "wmR", 1);
    wait_for("delivered", Duration::from_secs(10), || async {
        sink.acked_count() >= 1
    })
    .await;
    wait_for("a reply queued", Duration::from_secs(10), || async {
        first.store().stats().await.unwrap().replies_pending == 1
    })
    .await;
    first.shutdown().await;
    emu.emulator().clear_faults();
    let second = start(&emu, config(&emu, &db, Some(&sink.url))).await;
    wait_for("the queued reply sent", Duration::from_secs(10), || async {
        outbox(&emu, Some(&kf)).len() == 1
    })
    .await;
    wait_for("recorded as sent", Duration::from_secs(5), || async {
        second.store().stats().await.unwrap().replies_sent == 1
    })
    .await;
    second.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_delivery_repeated_after_a_crash_carries_the_attempt_number_it_really_is() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    // The bot takes the first attempt and never answers it in time (the service crashes
    // meanwhile); afterwards it answers at once.
    let hanging = Arc::new(AtomicBool::new(true));
    let flag = hanging.clone();
    sink.set_policy(move |_| {
        if flag.load(Ordering::SeqCst) {
            Action::Hang(Duration::from_secs(30))
        } else {
            Action::Ack(json!({}))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let kf = emu.emulator().create_account("attempts");
    let mut config = config(&emu, &db, Some(&sink.url));
    config.webhook.timeout = Duration::from_secs(30);
    let first = start(&emu, config.clone()).await;
    let expected = send_texts(&emu, &kf, "wmA", 1);
    wait_for("the first attempt", Duration::from_secs(10), || async {
        !sink.received().is_empty()
    })
    .await;
    let first_attempt = sink.received()[0].clone();
    assert_eq!(first_attempt.attempt, 1);
    // A crash: nothing of the attempt in flight is recorded.
    first.abandon().await;
    emu.emulator().set_callback_url(None);

    hanging.store(false, Ordering::SeqCst);
    let second = start(&emu, config).await;
    wait_for("the redelivery", Duration::from_secs(10), || async {
        sink.acked_count() >= 1
    })
    .await;
    let again = sink.received().into_iter().find(|r| r.acked).unwrap();
    assert_eq!(again.delivery, first_attempt.delivery, "the same delivery");
    assert_eq!(again.msgids(), vec![expected[0].2.clone()]);
    assert_eq!(
        again.attempt, 2,
        "the second attempt, not a first one again"
    );
    second.shutdown().await;
    emu.shutdown().await;
}
