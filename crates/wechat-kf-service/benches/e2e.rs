//! `cargo bench -p wechat-kf-service --bench e2e`: the service end to end on loopback.
//!
//! 1. Throughput: `E2E_MESSAGES` (default 100,000) customer texts from `E2E_CUSTOMERS` (2,000)
//!    customers of `E2E_ACCOUNTS` (4) accounts wait in the emulator; the service starts (SQLite
//!    file, WAL, synchronous=NORMAL, or FULL with `E2E_SYNCHRONOUS=full`) and the clock runs
//!    until the webhook sink has acknowledged
//!    every one. Baselines, same run, same emulator, same sink: a bare loop that pulls the same
//!    pages and POSTs them to the sink in batches of the same size, storing nothing; and the
//!    **durable floor**, the same loop writing each page's messages and its cursor in one SQLite
//!    transaction first (the service's pragmas: WAL, the same synchronous mode; a table with the
//!    same unique `(open_kfid, msgid)` key), the least a durable service must do.
//! 2. Callbacks: `CALLBACKS` (20,000) signed, encrypted `kf_msg_or_event` callbacks POSTed by 32
//!    concurrent clients; acknowledgements per second and latency percentiles. Baseline: the
//!    same clients on `GET /healthz` of the same server.
//! 3. Latency, customer → bot: messages injected live through the emulator's control API (in
//!    process: `Emulator::customer_send`, what `POST /emulator/customer/send` runs) at 1 msg/s
//!    for `E2E_LATENCY_SLOW_SECS` (20) and at 1,000 msg/s (10 every 10 ms) for
//!    `E2E_LATENCY_FAST_SECS` (5; 0 skips either), each carrying its injection time; latency =
//!    sink receipt − injection. The emulator's callbacks wake the service, as WeCom's do.
//! 4. Memory: VmRSS of this process (emulator, sink and service together) before the service
//!    starts, at rest after it started, and the peak during the throughput run.
//! 5. The service alone: when the `wechat-kf` binary is found (`WECHAT_KF_BIN`, or next to this
//!    bench's `deps/` directory), it runs as a child process against the in-process emulator and
//!    sink: its VmRSS at rest and its peak while the same messages are injected live.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use wechat_kf::client::Client;
use wechat_kf::client::messages::SyncMsgRequest;
use wechat_kf::crypto::CallbackCrypto;
use wechat_kf_emulator::{Emulator, RunningEmulator};
use wechat_kf_service::Service;
use wechat_kf_service::config::{Config, Secret};
use wechat_kf_test_support::{Spawned, Stream};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kb() -> u64 {
    rss_of("self")
}

fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A webhook that parses each body (as a bot would) and counts messages.
#[derive(Default)]
struct Sink {
    messages: AtomicU64,
    requests: AtomicU64,
    /// While measuring latency: the epoch of the injection stamps and the latencies seen.
    latency: std::sync::Mutex<Option<(Instant, Vec<Duration>)>>,
}

/// The prefix of a latency probe's text; the rest is microseconds since the sink's epoch.
const PROBE: &str = "latency probe ";

async fn hook(State(sink): State<Arc<Sink>>, body: Bytes) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        messages: Vec<&'a serde_json::value::RawValue>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Body<'_>>(&body) {
        let mut latency = sink.latency.lock().unwrap();
        if let Some((epoch, seen)) = latency.as_mut() {
            let now = epoch.elapsed();
            for m in &parsed.messages {
                let stamp = serde_json::from_str::<Value>(m.get()).ok().and_then(|v| {
                    v["text"]["content"]
                        .as_str()?
                        .strip_prefix(PROBE)?
                        .parse::<u64>()
                        .ok()
                });
                if let Some(micros) = stamp {
                    seen.push(now.saturating_sub(Duration::from_micros(micros)));
                }
            }
        }
        drop(latency);
        sink.messages
            .fetch_add(parsed.messages.len() as u64, Ordering::Relaxed);
    }
    sink.requests.fetch_add(1, Ordering::Relaxed);
    "{}"
}

async fn start_sink() -> (String, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, sink)
}

async fn emulator() -> RunningEmulator {
    let mut config = wechat_kf_emulator::Config::generated();
    config.disable_rate_limits();
    config.max_outbox = 1000;
    Emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Injects `n` texts spread over customers and accounts; returns the accounts.
fn inject(emu: &RunningEmulator, accounts: &[String], customers: usize, n: usize) {
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Value> = (sent..(sent + 10_000).min(n))
            .map(|i| {
                let customer = i % customers;
                json!({"open_kfid": accounts[customer % accounts.len()],
                       "external_userid": format!("wmBench{customer}"),
                       "msgtype": "text", "text": {"content": format!("benchmark message {i}")}})
            })
            .collect();
        sent += batch.len();
        emu.emulator().customer_send(Value::Array(batch)).unwrap();
    }
}

fn service_config(emu: &RunningEmulator, db: &std::path::Path, webhook: &str) -> Config {
    let e = emu.emulator().config();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.wechat.corp_id = e.corp_id.clone();
    config.wechat.secret = Some(Secret::new(e.secret.clone()));
    config.wechat.callback_token = Some(Secret::new(e.callback_token.clone()));
    config.wechat.encoding_aes_key = Some(Secret::new(e.encoding_aes_key.clone()));
    config.wechat.base_url = Some(emu.base_url());
    config.pull.safety_interval = Duration::ZERO;
    // The messages wait in the emulator before the start: deliver them all.
    config.pull.first_start = wechat_kf_service::config::FirstStart::Replay;
    config.storage.db = Some(db.to_str().unwrap().to_owned());
    if std::env::var("E2E_SYNCHRONOUS").as_deref() == Ok("full") {
        config.storage.synchronous = wechat_kf_service::store::Synchronous::Full;
    }
    config.webhook.url = Some(webhook.to_owned());
    config.webhook.secret = Some(Secret::new("bench"));
    config
}

/// The floor: pull pages and POST them to the sink in batches, storing nothing.
async fn baseline(emu: &RunningEmulator, accounts: &[String], webhook: &str, batch: usize) -> u64 {
    let e = emu.emulator().config();
    let client = Client::builder(e.corp_id.clone(), e.secret.clone())
        .base_url(emu.base_url())
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let mut total = 0u64;
    let mut tasks = Vec::new();
    for kf in accounts {
        let (client, http, webhook, kf) =
            (client.clone(), http.clone(), webhook.to_owned(), kf.clone());
        tasks.push(tokio::spawn(async move {
            let mut cursor = String::new();
            let mut n = 0u64;
            loop {
                let page = client
                    .messages()
                    .sync(
                        SyncMsgRequest::new(kf.as_str())
                            .cursor(cursor.clone())
                            .limit(1000),
                    )
                    .await
                    .unwrap();
                for chunk in page.msg_list.chunks(batch) {
                    let mut body = String::from("{\"messages\":[");
                    for (i, m) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(m.raw());
                    }
                    body.push_str("]}");
                    http.post(&webhook).body(body).send().await.unwrap();
                    n += chunk.len() as u64;
                }
                if !page.next_cursor.is_empty() {
                    cursor = page.next_cursor.clone();
                }
                if !page.has_more {
                    return n;
                }
            }
        }));
    }
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

/// The durable floor: the bare loop of [`baseline`], writing each page's messages and cursor in
/// one SQLite transaction (the service's pragmas) before POSTing it.
async fn durable_floor(
    emu: &RunningEmulator,
    accounts: &[String],
    webhook: &str,
    batch: usize,
    db: &std::path::Path,
) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync = if std::env::var("E2E_SYNCHRONOUS").as_deref() == Ok("full") {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -4000;
         CREATE TABLE cursors (open_kfid TEXT PRIMARY KEY, cursor TEXT, updated_at INTEGER NOT NULL);
         CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, open_kfid TEXT NOT NULL,
             msgid TEXT NOT NULL, external_userid TEXT NOT NULL, send_time INTEGER NOT NULL,
             raw TEXT NOT NULL, stored_at INTEGER NOT NULL, UNIQUE (open_kfid, msgid));"
    ))
    .unwrap();
    // One connection for every account, as the service has one writer.
    let conn = Arc::new(std::sync::Mutex::new(conn));
    let e = emu.emulator().config();
    let client = Client::builder(e.corp_id.clone(), e.secret.clone())
        .base_url(emu.base_url())
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for kf in accounts {
        let (client, http, webhook, kf, conn) = (
            client.clone(),
            http.clone(),
            webhook.to_owned(),
            kf.clone(),
            conn.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut cursor = String::new();
            let mut n = 0u64;
            loop {
                let page = client
                    .messages()
                    .sync(
                        SyncMsgRequest::new(kf.as_str())
                            .cursor(cursor.clone())
                            .limit(1000),
                    )
                    .await
                    .unwrap();
                let page = Arc::new(page);
                let (stored, conn, kf2) = (page.clone(), conn.clone(), kf.clone());
                tokio::task::spawn_blocking(move || {
                    let mut conn = conn.lock().unwrap();
                    let tx = conn.transaction().unwrap();
                    {
                        let mut insert = tx
                            .prepare_cached(
                                "INSERT INTO messages (open_kfid, msgid, external_userid, \
                                 send_time, raw, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                                 ON CONFLICT (open_kfid, msgid) DO NOTHING",
                            )
                            .unwrap();
                        for m in &stored.msg_list {
                            let external = m.external_userid().map_or("", |id| id.as_str());
                            insert
                                .execute(rusqlite::params![
                                    kf2.as_str(),
                                    m.msgid().as_str(),
                                    external,
                                    m.send_time() as i64,
                                    m.raw(),
                                    0i64
                                ])
                                .unwrap();
                        }
                        tx.prepare_cached(
                            "INSERT INTO cursors (open_kfid, cursor, updated_at) VALUES (?1, ?2, 0) \
                             ON CONFLICT (open_kfid) DO UPDATE SET cursor = excluded.cursor",
                        )
                        .unwrap()
                        .execute(rusqlite::params![kf2.as_str(), stored.next_cursor.as_str()])
                        .unwrap();
                    }
                    tx.commit().unwrap();
                })
                .await
                .unwrap();
                for chunk in page.msg_list.chunks(batch) {
                    let mut body = String::from("{\"messages\":[");
                    for (i, m) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(m.raw());
                    }
                    body.push_str("]}");
                    http.post(&webhook).body(body).send().await.unwrap();
                    n += chunk.len() as u64;
                }
                if !page.next_cursor.is_empty() {
                    cursor = page.next_cursor.clone();
                }
                if !page.has_more {
                    return n;
                }
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// `requests` requests from `concurrency` clients; returns (requests/s, sorted latencies).
async fn load<F, Fut>(requests: usize, concurrency: usize, make: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= requests {
                    return latencies;
                }
                let t = Instant::now();
                if !make(i).await {
                    panic!("request {i} failed after {:?}", t.elapsed());
                }
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let rate = requests as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

#[tokio::main]
async fn main() {
    let messages = env_usize("E2E_MESSAGES", 100_000);
    let customers = env_usize("E2E_CUSTOMERS", 2_000);
    let account_count = env_usize("E2E_ACCOUNTS", 4);
    let callbacks = env_usize("CALLBACKS", 20_000);
    let batch = Config::default().webhook.max_batch;
    println!(
        "service end to end: {messages} messages, {customers} customers, {account_count} accounts"
    );

    // --- Baseline: the same emulator pages to the same sink, nothing stored. ---
    let (webhook, sink) = start_sink().await;
    let emu = emulator().await;
    let accounts: Vec<String> = (0..account_count)
        .map(|i| emu.emulator().create_account(&format!("bench{i}")))
        .collect();
    inject(&emu, &accounts, customers, messages);
    eprintln!("baseline: pulling and posting");
    let t = Instant::now();
    let n = baseline(&emu, &accounts, &webhook, batch).await;
    let baseline_secs = t.elapsed().as_secs_f64();
    assert_eq!(n as usize, messages);
    let baseline_rate = messages as f64 / baseline_secs;
    emu.shutdown().await;

    // --- Durable floor: the same loop, each page and its cursor in one SQLite transaction. ---
    let emu = emulator().await;
    let accounts: Vec<String> = (0..account_count)
        .map(|i| emu.emulator().create_account(&format!("bench{i}")))
        .collect();
    inject(&emu, &accounts, customers, messages);
    let floor_dir = tempfile::tempdir().unwrap();
    eprintln!("durable floor: pulling, storing and posting");
    let t = Instant::now();
    let n = durable_floor(
        &emu,
        &accounts,
        &webhook,
        batch,
        &floor_dir.path().join("floor.db"),
    )
    .await;
    let floor_secs = t.elapsed().as_secs_f64();
    assert_eq!(n as usize, messages);
    let floor_rate = messages as f64 / floor_secs;
    emu.shutdown().await;
    drop(floor_dir);

    // --- The service: backlog in the emulator, start, wait for the sink. ---
    let emu = emulator().await;
    let accounts: Vec<String> = (0..account_count)
        .map(|i| emu.emulator().create_account(&format!("bench{i}")))
        .collect();
    inject(&emu, &accounts, customers, messages);
    sink.messages.store(0, Ordering::Relaxed);
    sink.requests.store(0, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let rss_before = rss_kb();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    eprintln!("service: draining the backlog");
    let t = Instant::now();
    let running = Service::start(service_config(&emu, &dir.path().join("bench.db"), &webhook))
        .await
        .unwrap();
    while (sink.messages.load(Ordering::Relaxed) as usize) < messages {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the service did not deliver everything"
        );
    }
    let service_secs = t.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let service_rate = messages as f64 / service_secs;
    let requests = sink.requests.load(Ordering::Relaxed);
    let stats = running.store().stats().await.unwrap();
    assert_eq!(stats.messages as usize, messages);
    // Let the acknowledgements land, then measure at rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_load = rss_kb();

    // --- Callbacks against the running service. ---
    eprintln!("callbacks: {callbacks} requests");
    let e = emu.emulator().config();
    let crypto = CallbackCrypto::new(&e.callback_token, &e.encoding_aes_key, &e.corp_id).unwrap();
    let callback_url = format!("{}/callback", running.base_url());
    let prepared: Arc<Vec<(String, String)>> = Arc::new(
        (0..1000)
            .map(|i| {
                let kf = &accounts[i % accounts.len()];
                let inner = format!(
                    "<xml><ToUserName><![CDATA[{}]]></ToUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType>\
                     <Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[BENCHTOKEN{i}]]></Token><OpenKfId><![CDATA[{kf}]]></OpenKfId></xml>",
                    e.corp_id
                );
                let encrypt = crypto.encrypt_field(&inner, &[9u8; 16]).unwrap();
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string();
                let nonce = format!("{i}");
                let sig = crypto.sign(&ts, &nonce, &encrypt);
                let body = format!(
                    "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>",
                    e.corp_id
                );
                (format!("{callback_url}?msg_signature={sig}&timestamp={ts}&nonce={nonce}"), body)
            })
            .collect(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let health_url = format!("{}/healthz", running.base_url());
    let (warm_http, warm_url) = (http.clone(), health_url.clone());
    let _ = load(2000, 32, move |_| {
        let (http, url) = (warm_http.clone(), warm_url.clone());
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    eprintln!("callbacks: warmed up");
    let (h, u) = (http.clone(), health_url.clone());
    let (health_rate, health_lat) = load(callbacks, 32, move |_| {
        let (http, url) = (h.clone(), u.clone());
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    eprintln!("callbacks: baseline done");
    let rss_before_callbacks = rss_kb();
    let (h, p) = (http.clone(), prepared.clone());
    let (callback_rate, callback_lat) = load(callbacks, 32, move |i| {
        let (http, prepared) = (h.clone(), p.clone());
        async move {
            let (url, body) = &prepared[i % prepared.len()];
            http.post(url.as_str())
                .body(body.clone())
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    let rss_after_callbacks = rss_kb();

    // --- Latency: live injection, the emulator's callbacks waking the service. ---
    emu.emulator()
        .set_callback_url(Some(format!("{}/callback", running.base_url())));
    let slow = latency(
        &emu,
        &accounts,
        &sink,
        1,
        Duration::from_secs(1),
        env_usize("E2E_LATENCY_SLOW_SECS", 20),
    )
    .await;
    let fast = latency(
        &emu,
        &accounts,
        &sink,
        10,
        Duration::from_millis(10),
        env_usize("E2E_LATENCY_FAST_SECS", 5),
    )
    .await;
    eprintln!("callbacks: done; stopping the service");
    running.shutdown().await;
    eprintln!("service stopped");
    emu.shutdown().await;
    eprintln!("child process: starting");
    let child = child_process(messages, customers, account_count, &webhook, &sink).await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| Measure | Value | Baseline (same run) | Ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| End to end, emulator → SQLite → webhook (messages/s) | {service_rate:.0} | {baseline_rate:.0} (pull + POST, no store) | {:.2} |",
        service_rate / baseline_rate
    );
    println!(
        "| End to end vs the durable floor (messages/s) | {service_rate:.0} | {floor_rate:.0} (pull + SQLite page/cursor transaction + POST) | {:.2} |",
        service_rate / floor_rate
    );
    println!(
        "| Durable floor vs pull + POST (messages/s) | {floor_rate:.0} | {baseline_rate:.0} | {:.2} |",
        floor_rate / baseline_rate
    );
    for (name, lat) in [("1 msg/s", &slow), ("1,000 msg/s", &fast)] {
        println!(
            "| Customer → bot latency at {name}: p50 / p99 / max (ms), {} messages | {:.2} / {:.2} / {:.2} | | |",
            lat.len(),
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            ms(percentile(lat, 1.0)),
        );
    }
    println!(
        "| Callback acknowledgements (requests/s, 32 clients) | {callback_rate:.0} | {health_rate:.0} (`GET /healthz`) | {:.2} |",
        callback_rate / health_rate
    );
    println!(
        "| Callback latency p50 / p99 / max (ms) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | |",
        ms(percentile(&callback_lat, 0.5)),
        ms(percentile(&callback_lat, 0.99)),
        ms(percentile(&callback_lat, 1.0)),
        ms(percentile(&health_lat, 0.5)),
        ms(percentile(&health_lat, 0.99)),
        ms(percentile(&health_lat, 1.0)),
    );
    println!();
    println!(
        "deliveries: {requests} webhook requests ({:.1} messages each); drain took {service_secs:.2} s, baseline {baseline_secs:.2} s, durable floor {floor_secs:.2} s",
        messages as f64 / requests.max(1) as f64
    );
    println!(
        "VmRSS (whole process: emulator with {messages} messages + sink + service): before the service {} MB, \
         peak during the run {} MB, after the run {} MB, before callbacks {} MB, after callbacks {} MB",
        rss_before / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        rss_after_load / 1024,
        rss_before_callbacks / 1024,
        rss_after_callbacks / 1024,
    );
    match child {
        Some((rest, peak, rate)) => println!(
            "service as a child process (release binary): VmRSS at rest {:.1} MB, peak under load {:.1} MB; \
             live injection → webhook {rate:.0} messages/s",
            rest as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
        None => {
            println!("service as a child process: skipped (build `wechat-kf` or set WECHAT_KF_BIN)")
        }
    }
}

/// Injects `per_tick` probe texts every `tick` for `secs` seconds (spread over the accounts),
/// waits for the sink to see them all and returns the sorted customer → bot latencies.
async fn latency(
    emu: &RunningEmulator,
    accounts: &[String],
    sink: &Sink,
    per_tick: usize,
    tick: Duration,
    secs: usize,
) -> Vec<Duration> {
    let epoch = Instant::now();
    *sink.latency.lock().unwrap() = Some((epoch, Vec::new()));
    let ticks = (Duration::from_secs(secs as u64).as_nanos() / tick.as_nanos()) as usize;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0;
    for t in 0..ticks {
        interval.tick().await;
        let batch: Vec<Value> = (0..per_tick)
            .map(|i| {
                let n = t * per_tick + i;
                json!({"open_kfid": accounts[n % accounts.len()],
                       "external_userid": format!("wmProbe{}", n % 50),
                       "msgtype": "text",
                       "text": {"content": format!("{PROBE}{}", epoch.elapsed().as_micros())}})
            })
            .collect();
        sent += batch.len();
        emu.emulator().customer_send(Value::Array(batch)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = sink
            .latency
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |(_, v)| v.len());
        if seen >= sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = sink
        .latency
        .lock()
        .unwrap()
        .take()
        .map(|(_, v)| v)
        .unwrap_or_default();
    assert_eq!(seen.len(), sent, "every probe reaches the bot");
    seen.sort();
    seen
}

fn find_binary() -> Option<std::path::PathBuf> {
    if let Ok(path) = std::env::var("WECHAT_KF_BIN") {
        return Some(path.into());
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("wechat-kf");
    candidate.is_file().then_some(candidate)
}

/// The service binary as a child: (RSS at rest KB, peak RSS KB, messages/s while injecting).
async fn child_process(
    messages: usize,
    customers: usize,
    account_count: usize,
    webhook: &str,
    sink: &Sink,
) -> Option<(u64, u64, f64)> {
    let binary = find_binary()?;
    let emu = emulator().await;
    let accounts: Vec<String> = (0..account_count)
        .map(|i| emu.emulator().create_account(&format!("child{i}")))
        .collect();
    let dir = tempfile::tempdir().ok()?;
    let e = emu.emulator().config();
    // Port 0, and the address read back from the line serve prints once it listens.
    let mut child = Spawned::spawn(
        std::process::Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--db", dir.path().join("child.db").to_str()?])
            .args(["--webhook", webhook])
            .env("WECHAT_KF_CORP_ID", &e.corp_id)
            .env("WECHAT_KF_SECRET", &e.secret)
            .env("WECHAT_KF_CALLBACK_TOKEN", &e.callback_token)
            .env("WECHAT_KF_ENCODING_AES_KEY", &e.encoding_aes_key)
            .env("WECHAT_KF_BASE_URL", emu.base_url())
            .env("RUST_LOG", "warn"),
    );
    let url = child
        .url_after(Stream::Stderr, "listening on ", Duration::from_secs(20))
        .await;
    let pid = child.id().to_string();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emu.emulator()
        .set_callback_url(Some(format!("{url}/callback")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest = rss_of(&pid);
    sink.messages.store(0, Ordering::Relaxed);
    let peak = Arc::new(AtomicU64::new(rest));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), pid.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(&pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t = Instant::now();
    inject(&emu, &accounts, customers, messages);
    let mut next_report = Duration::from_secs(10);
    while (sink.messages.load(Ordering::Relaxed) as usize) < messages {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if t.elapsed() > next_report {
            next_report += Duration::from_secs(10);
            eprintln!(
                "child still draining: {} delivered to the sink",
                sink.messages.load(Ordering::Relaxed)
            );
        }
        if t.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let rate = messages as f64 / t.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = child.wait();
    emu.shutdown().await;
    Some((rest, peak.load(Ordering::Relaxed), rate))
}
