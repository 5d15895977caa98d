//! The cursor puller against the emulator: thousands of messages across many pages with none
//! lost or repeated, cursors persisted only on commit, faults in the middle, malformed items,
//! empty pages with `has_more: 1`, and callback tokens.
#![cfg(feature = "client")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde_json::{Value, json};
use wechat_kf::OpenKfId;
use wechat_kf::client::puller::{MemoryCursorStore, PullItem, Puller};
use wechat_kf::client::{Client, RetryPolicy};
use wechat_kf_emulator::{Config, RunningEmulator};

async fn start() -> (RunningEmulator, Client, String) {
    let mut config = Config::generated();
    config.sync_without_token_per_minute = 0;
    let corp_id = config.corp_id.clone();
    let secret = config.secret.clone();
    let running = wechat_kf_test_support::TestEmulator::with_config(config)
        .start()
        .await;
    let client = Client::builder(corp_id, secret)
        .base_url(running.base_url())
        .retry_policy(RetryPolicy {
            max_retries: 4,
            initial_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(20),
            multiplier: 2.0,
        })
        .build()
        .unwrap();
    let open_kfid = running.emulator().create_account("拉取");
    (running, client, open_kfid)
}

/// Injects `count` text messages from a few customers; returns their msgids in order.
fn inject(running: &RunningEmulator, open_kfid: &str, count: usize) -> Vec<String> {
    let batch: Vec<Value> = (0..count)
        .map(|i| {
            json!({"open_kfid":open_kfid,"external_userid":format!("wm{}", i % 7),
                   "msgtype":"text","text":{"content":format!("message {i}")}})
        })
        .collect();
    running
        .emulator()
        .customer_send(Value::Array(batch))
        .unwrap()
}

#[tokio::test]
async fn ten_thousand_messages_are_pulled_once_each_with_the_cursor_saved_after_every_commit() {
    let (running, client, open_kfid) = start().await;
    let expected = inject(&running, &open_kfid, 10_000);
    let store = Arc::new(MemoryCursorStore::new());
    let kf = OpenKfId::new(open_kfid.clone());
    let mut puller = Puller::new(client.clone(), open_kfid.clone())
        .cursor_store(store.clone())
        .page_limit(333);
    let mut received = Vec::new();
    let mut pages = 0;
    loop {
        let before = store.get(&kf);
        let batch = puller.fetch().await.unwrap();
        assert_eq!(
            store.get(&kf),
            before,
            "fetching never moves the stored cursor"
        );
        received.extend(batch.messages.iter().map(|m| m.msgid().to_string()));
        assert!(batch.invalid.is_empty());
        let cursor = batch.next_cursor().to_owned();
        let more = batch.has_more();
        batch.commit().await.unwrap();
        assert_eq!(store.get(&kf).as_deref(), Some(cursor.as_str()));
        pages += 1;
        if !more {
            break;
        }
    }
    assert_eq!(received.len(), 10_000);
    assert_eq!(received, expected, "in order, none lost, none repeated");
    assert_eq!(pages, 31, "ceil(10000 / 333) pages");
    assert_eq!(store.history().len(), 31, "one save per committed page");

    // A new puller on the same store starts where the last commit left off.
    let more = inject(&running, &open_kfid, 5);
    let mut restarted = Puller::new(client, open_kfid).cursor_store(store.clone());
    let batch = restarted.fetch().await.unwrap();
    let ids: Vec<String> = batch
        .messages
        .iter()
        .map(|m| m.msgid().to_string())
        .collect();
    assert_eq!(ids, more);
}

#[tokio::test]
async fn a_crash_before_commit_redelivers_the_batch_and_nothing_is_skipped() {
    let (running, client, open_kfid) = start().await;
    let expected = inject(&running, &open_kfid, 1_000);
    let store = Arc::new(MemoryCursorStore::new());
    let mut seen = Vec::new();
    {
        let mut puller = Puller::new(client.clone(), open_kfid.clone())
            .cursor_store(store.clone())
            .page_limit(100);
        let batch = puller.fetch().await.unwrap();
        seen.extend(batch.messages.iter().map(|m| m.msgid().to_string()));
        batch.commit().await.unwrap();
        let batch = puller.fetch().await.unwrap();
        assert_eq!(batch.messages.len(), 100);
        // "Crash": the second batch is never committed.
    }
    let mut puller = Puller::new(client, open_kfid)
        .cursor_store(store)
        .page_limit(100);
    loop {
        let batch = puller.fetch().await.unwrap();
        seen.extend(batch.messages.iter().map(|m| m.msgid().to_string()));
        let more = batch.has_more();
        batch.commit().await.unwrap();
        if !more {
            break;
        }
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn faults_during_a_long_pull_lose_nothing() {
    let (running, client, open_kfid) = start().await;
    let expected = inject(&running, &open_kfid, 3_000);
    let emulator = running.emulator();
    emulator
        .inject_fault(json!({"path":"kf/sync_msg","kind":"empty_page","count":3}))
        .unwrap();
    let mut puller = Puller::new(client, open_kfid).page_limit(200);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        // Sprinkle faults between pages.
        match pages % 4 {
            // 45033, not 45009: a 45009 is not retried but blocks the API (client_mock).
            1 => emulator
                .inject_fault(json!({"path":"kf/sync_msg","kind":"errcode","errcode":45033})),
            2 => emulator
                .inject_fault(json!({"path":"kf/sync_msg","kind":"http_status","status":502})),
            3 => emulator.inject_fault(json!({"path":"kf/sync_msg","kind":"drop"})),
            _ => emulator.inject_fault(json!({"path":"kf/sync_msg","kind":"errcode","errcode":-1})),
        }
        .unwrap();
        let batch = puller.fetch().await.unwrap();
        seen.extend(batch.messages.iter().map(|m| m.msgid().to_string()));
        let more = batch.has_more();
        batch.commit().await.unwrap();
        pages += 1;
        if !more {
            break;
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(
        pages,
        15 + 3,
        "three empty pages with has_more=1 were walked through"
    );
}

#[tokio::test]
async fn the_stream_walks_empty_pages_and_surfaces_a_malformed_item_without_stopping() {
    let (running, client, open_kfid) = start().await;
    let mut expected = inject(&running, &open_kfid, 150);
    let bad = running
        .emulator()
        .customer_send(json!({"open_kfid":open_kfid,"external_userid":"wmX","msgtype":"location","location":{"latitude":"north","longitude":1}}))
        .unwrap()
        .remove(0);
    expected.extend(inject(&running, &open_kfid, 150));
    running
        .emulator()
        .inject_fault(json!({"path":"kf/sync_msg","kind":"empty_page","count":2}))
        .unwrap();
    let store = Arc::new(MemoryCursorStore::new());
    let mut puller = Puller::new(client, open_kfid.clone())
        .cursor_store(store.clone())
        .page_limit(100);
    let mut messages = Vec::new();
    let mut invalid = Vec::new();
    let mut stream = Box::pin(puller.stream());
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            PullItem::Message(m) => messages.push(m.msgid().to_string()),
            PullItem::Invalid(i) => invalid.push(i),
        }
    }
    drop(stream);
    assert_eq!(messages, expected);
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].msgid.as_ref().unwrap(), bad.as_str());
    assert!(invalid[0].raw.get().contains("north"));
    // The cursor moved past everything, the malformed item included.
    let last = store.get(&OpenKfId::new(open_kfid)).unwrap();
    assert_eq!(puller.committed_cursor(), Some(last.as_str()));
    let again = puller.fetch().await.unwrap();
    assert!(again.is_empty() && !again.has_more());
}

#[tokio::test]
async fn a_replay_from_an_older_cursor_drops_the_msgids_already_committed() {
    let (running, client, open_kfid) = start().await;
    let first = inject(&running, &open_kfid, 20);
    let mut puller = Puller::new(client, open_kfid.clone()).dedup_window(100);
    let batch = puller.fetch().await.unwrap();
    assert_eq!(batch.messages.len(), 20);
    batch.commit().await.unwrap();
    let second = inject(&running, &open_kfid, 5);
    // The cursor is lost (e.g. restored from an old backup): pulling restarts at the oldest
    // retained message, and the window absorbs the repeats.
    let mut puller = puller.start_cursor("");
    let batch = puller.fetch().await.unwrap();
    let ids: Vec<String> = batch
        .messages
        .iter()
        .map(|m| m.msgid().to_string())
        .collect();
    assert_eq!(ids, second);
    assert_eq!(batch.duplicates(), first.len());
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
}

#[tokio::test]
async fn a_callback_token_is_used_and_dropped_when_the_server_rejects_it() {
    let (running, client, open_kfid) = start().await;
    inject(&running, &open_kfid, 10);
    let token = running.emulator().issue_sync_token(&open_kfid).unwrap();
    let mut puller = Puller::new(client.clone(), open_kfid.clone())
        .callback_token(token.clone(), SystemTime::now());
    let batch = puller.fetch().await.unwrap();
    assert_eq!(batch.messages.len(), 10);
    batch.commit().await.unwrap();

    // The emulator's clock moves past the token's 10 minutes while ours does not: the server
    // answers 95007 and the puller carries on without the token.
    inject(&running, &open_kfid, 3);
    running
        .emulator()
        .advance_clock(Duration::from_secs(11 * 60));
    let batch = puller.fetch().await.unwrap();
    assert_eq!(batch.messages.len(), 3);
    batch.commit().await.unwrap();

    // A token of another account is foreign: 95007, then without.
    let other = running.emulator().create_account("另一个");
    let foreign = running.emulator().issue_sync_token(&other).unwrap();
    inject(&running, &open_kfid, 2);
    puller.set_callback_token(foreign, SystemTime::now());
    let batch = puller.fetch().await.unwrap();
    assert_eq!(batch.messages.len(), 2);
}
