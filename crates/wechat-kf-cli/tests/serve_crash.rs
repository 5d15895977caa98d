//! Crash safety of `wechat-kf serve`: the service process is killed with SIGKILL at random
//! moments while it pulls (small pages, so a pull spans many transactions) and delivers, at least
//! 20 times; after the last restart every message is stored exactly once and delivered.
//!
//! The emulator and the webhook sink run in this test process; the service is the real binary.
//! `WECHAT_KF_SERVE_BIN` may name another build of the binary.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;

mod common;
use common::{serve_available, spawn_against, wait_ready};

const KILLS: usize = 22;
const ACCOUNTS: usize = 3;
const CUSTOMERS: usize = 40;
const MESSAGES: usize = 12_000;

/// A tiny deterministic generator (no dependency, reproducible with the printed seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct SinkState {
    /// Every acknowledged message's (customer, msgid), in arrival order.
    acked: Mutex<Vec<((String, String), String)>>,
    requests: AtomicUsize,
}

async fn hook(State(state): State<Arc<SinkState>>, body: Bytes) -> StatusCode {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    // A bot that takes a moment, so deliveries are in flight when the kills land.
    tokio::time::sleep(Duration::from_millis(3)).await;
    // Every 9th request fails, so retry state is in flight when the kills land.
    if n % 9 == 4 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut acked = state.acked.lock().unwrap();
    for m in value["messages"].as_array().into_iter().flatten() {
        let kf = m["open_kfid"].as_str().unwrap_or_default().to_owned();
        let ext = m["external_userid"].as_str().unwrap_or_default().to_owned();
        acked.push((
            (kf, ext),
            m["msgid"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    StatusCode::OK
}

async fn emulator() -> RunningEmulator {
    wechat_kf_test_support::TestEmulator::new()
        .unlimited()
        .configure(|config| {
            config.callback_retries = 1;
            config.callback_retry_delay = Duration::from_millis(50);
            config.callback_timeout = Duration::from_secs(1);
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_service_at_random_moments_loses_nothing_and_stores_nothing_twice() {
    if !serve_available() {
        return;
    }
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test seed: {seed} (set CRASH_SEED to repeat)");
    let mut rng = Rng(seed);

    let emu = emulator().await;
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|i| emu.emulator().create_account(&format!("crash{i}")))
        .collect();
    let sink = Arc::new(SinkState::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(sink.clone());
    let webhook = wechat_kf_test_support::serve(app, "/hook").await;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let config_file = dir.path().join("serve.toml");
    std::fs::write(
        &config_file,
        "[pull]\npage_size = 50\nsafety_interval = \"1s\"\nfirst_start = \"replay\"\n\
         [webhook]\ntimeout = \"2s\"\nmax_batch = 40\nretry_initial = \"20ms\"\nretry_max = \"200ms\"\n",
    )
    .unwrap();

    // Half the messages wait before the first start (a long pull of many pages); the customers
    // keep writing the other half while the service is killed and restarted.
    let producer = {
        let emulator = emu.emulator().clone();
        let accounts = accounts.clone();
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        let (backlog_tx, backlog_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut sent: Vec<((String, String), String)> = Vec::with_capacity(MESSAGES);
            let mut backlog_tx = Some(backlog_tx);
            while sent.len() < MESSAGES {
                if sent.len() >= MESSAGES / 2 {
                    if let Some(tx) = backlog_tx.take() {
                        let _ = tx.send(());
                    }
                }
                let mut batch = Vec::new();
                for _ in 0..100 {
                    let kf = &accounts[rng.below(ACCOUNTS as u64) as usize];
                    let ext = format!("wm{}", rng.below(CUSTOMERS as u64));
                    batch.push(json!({"open_kfid": kf, "external_userid": ext, "msgtype": "text",
                                      "text": {"content": format!("n{}", sent.len() + batch.len())}}));
                }
                let customers: Vec<(String, String)> = batch
                    .iter()
                    .map(|m| {
                        (
                            m["open_kfid"].as_str().unwrap().to_owned(),
                            m["external_userid"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                let ids = emulator.customer_send(Value::Array(batch)).unwrap();
                sent.extend(customers.into_iter().zip(ids));
                if backlog_tx.is_none() {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            }
            sent
        });
        let _ = backlog_rx.await;
        task
    };

    for kill in 0..KILLS {
        let mut child = spawn_against(&emu, &db, &webhook, &config_file);
        // Sometimes kill during start-up and recovery, mostly while pulling and delivering.
        if rng.below(5) > 0 {
            wait_ready(&emu, &mut child).await;
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(400))).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        if kill % 5 == 0 {
            println!(
                "kill {kill}: {} acknowledged so far",
                sink.acked.lock().unwrap().len()
            );
        }
    }
    let sent = producer.await.unwrap();

    // The last run is left alone until everything is through.
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;
    let expected: HashSet<&String> = sent.iter().map(|(_, id)| id).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = {
            let acked = sink.acked.lock().unwrap();
            let got: HashSet<&String> = acked.iter().map(|(_, id)| id).collect();
            expected.iter().all(|id| got.contains(id))
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every message was delivered after the restarts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Graceful stop (SIGTERM): the service exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exit status: {exit}");

    // Stored exactly once: every msgid, no more, no less, all delivered.
    let store =
        wechat_kf_service::store::SqliteStore::open(db.to_str().unwrap(), Default::default())
            .unwrap();
    use wechat_kf_service::store::Store;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.messages as usize, MESSAGES, "messages stored");
    assert_eq!(stats.pending, 0);
    let mut stored = HashSet::new();
    for kf in &accounts {
        for (msgid, delivered) in store.messages(kf.clone().into()).await.unwrap() {
            assert!(delivered, "{msgid} not marked delivered");
            assert!(stored.insert(msgid.clone()), "{msgid} stored twice");
        }
    }
    assert_eq!(stored.len(), MESSAGES);
    store.close().await;

    // Delivery is at-least-once on the wire; per customer, first arrivals are in send order.
    let acked = sink.acked.lock().unwrap().clone();
    let mut first_seen: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    for (customer, id) in &acked {
        if seen.insert(id.clone()) {
            first_seen
                .entry(customer.clone())
                .or_default()
                .push(id.clone());
        }
    }
    let mut per_customer: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (customer, id) in &sent {
        per_customer
            .entry(customer.clone())
            .or_default()
            .push(id.clone());
    }
    for (customer, ids) in &per_customer {
        assert_eq!(
            first_seen.get(customer),
            Some(ids),
            "order for {customer:?}"
        );
    }
    let repeats = acked.len() - seen.len();
    println!(
        "{KILLS} kills: {MESSAGES} messages stored once each, delivered with {repeats} repeats on the wire"
    );
    emu.shutdown().await;
}
