//! What the service benches share: the webhook sink, the emulator, the service's config, and
//! percentiles.

#![allow(dead_code)] // each bench uses its own part

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use wechat_kf_emulator::{Emulator, RunningEmulator};
use wechat_kf_service::config::{Config, Secret};

/// An environment variable as a number, or `default`.
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A webhook that parses each body (as a bot would) and counts messages; with
/// [`Sink::latencies`] on it also reads each text's `lat:<µs>` stamp (see [`stamp`]) and records
/// how long ago it was written.
pub struct Sink {
    /// Messages received.
    pub messages: AtomicU64,
    /// Requests received.
    pub requests: AtomicU64,
    /// The origin of the stamps.
    pub base: Instant,
    /// Latencies (µs) of stamped messages, when recorded.
    pub latencies: Mutex<Option<Vec<u64>>>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            messages: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            base: Instant::now(),
            latencies: Mutex::new(None),
        }
    }
}

impl Sink {
    /// Starts recording latencies afresh (and counting from zero).
    pub fn record_latencies(&self) {
        self.messages.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        *self.latencies.lock().unwrap() = Some(Vec::new());
    }

    /// The latencies recorded so far, sorted.
    pub fn take_latencies(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self
            .latencies
            .lock()
            .unwrap()
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        all.sort();
        all
    }
}

/// The text of a message stamped with the time it is sent at, for [`Sink`] latencies.
pub fn stamp(sink: &Sink) -> String {
    format!("lat:{}", sink.base.elapsed().as_micros())
}

async fn hook(State(sink): State<Arc<Sink>>, body: Bytes) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        messages: Vec<&'a serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Text<'a> {
        #[serde(borrow)]
        content: &'a str,
    }
    #[derive(serde::Deserialize)]
    struct Stamped<'a> {
        #[serde(borrow)]
        text: Option<Text<'a>>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Body<'_>>(&body) {
        let mut latencies = sink.latencies.lock().unwrap();
        if let Some(latencies) = latencies.as_mut() {
            let now = sink.base.elapsed().as_micros() as u64;
            for raw in &parsed.messages {
                let sent = serde_json::from_str::<Stamped<'_>>(raw.get())
                    .ok()
                    .and_then(|m| m.text?.content.strip_prefix("lat:")?.parse::<u64>().ok());
                if let Some(sent) = sent {
                    latencies.push(now.saturating_sub(sent));
                }
            }
        }
        sink.messages
            .fetch_add(parsed.messages.len() as u64, Ordering::Relaxed);
    }
    sink.requests.fetch_add(1, Ordering::Relaxed);
    "{}"
}

/// Starts the sink on `127.0.0.1:0`; returns its URL.
pub async fn start_sink() -> (String, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, sink)
}

/// The emulator with its rate limits off.
pub async fn emulator() -> RunningEmulator {
    emulator_limited(None).await
}

/// The emulator with WeChat's call-rate limits on, at `per_minute` calls a minute per API (and
/// 15 times that an hour, WeChat's ratio), or with every rate limit off (`None`).
pub async fn emulator_limited(per_minute: Option<u32>) -> RunningEmulator {
    let mut config = wechat_kf_emulator::Config::generated();
    match per_minute {
        Some(n) => {
            config.api_calls_per_minute = n;
            config.api_calls_per_hour = n.saturating_mul(15);
        }
        None => config.disable_rate_limits(),
    }
    config.max_outbox = 1000;
    Emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Injects `n` texts spread over customers and accounts.
pub fn inject(emu: &RunningEmulator, accounts: &[String], customers: usize, n: usize) {
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

/// The service's config against `emu`, storing at `db` (a SQLite path or a PostgreSQL URL),
/// delivering to `webhook`; every message waiting at the start is delivered.
pub fn service_config(emu: &RunningEmulator, db: &str, webhook: &str) -> Config {
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
    config.storage.db = Some(db.to_owned());
    if std::env::var("E2E_SYNCHRONOUS").as_deref() == Ok("full") {
        config.storage.synchronous = wechat_kf_service::store::Synchronous::Full;
    }
    config.webhook.url = Some(webhook.to_owned());
    config.webhook.secret = Some(Secret::new("bench"));
    config
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Milliseconds, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
