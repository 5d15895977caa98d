//! `cargo bench -p wechat-kf-service --bench responder`: what the built-in responder adds.
//!
//! 1. **Customer-to-reply latency**: customers write `RESPONDER_RATE` (50) texts a second for
//!    `RESPONDER_SECONDS` (10), spread over 200 customers of one account; each text carries its
//!    send time, and its answer (which repeats it) is timed when the emulator accepts it
//!    (`send_msg`, the emulator's `time_ms`). Once with a webhook bot that answers in its HTTP
//!    response (the baseline), once with the `openai` responder and a zero-latency stand-in
//!    model: the same service, store (SQLite) and emulator.
//! 2. **Many conversations at once**: `RESPONDER_CONVERSATIONS` (1,000) customers write at
//!    once to a stand-in model that takes 2 s per answer: the time until every customer has
//!    its answer, with `responder.concurrency` 32 (the default) and equal to the number of
//!    conversations, and the process's peak resident memory (`VmHWM`, which includes the
//!    emulator and the stand-in running in this process) after each.
//!
//! Every text must be answered exactly once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::Service;
use wechat_kf_service::config::{Config, ResponderKind};
use wechat_kf_test_support::{OpenAiStandIn, Reply};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A bot that answers every text in its HTTP response with `re: <text>`.
async fn answering_bot() -> String {
    let app = Router::new().route(
        "/hook",
        post(|body: axum::body::Bytes| async move {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let replies: Vec<Value> = value["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["origin"] == 3 && m["msgtype"] == "text")
                .map(|m| {
                    json!({"touser": m["external_userid"], "open_kfid": m["open_kfid"],
                           "msgtype": "text",
                           "text": {"content": format!("re: {}", m["text"]["content"].as_str().unwrap_or(""))}})
                })
                .collect();
            axum::Json(json!({ "replies": replies }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn base_config(emu: &RunningEmulator, dir: &tempfile::TempDir) -> Config {
    let db = dir.path().join("responder.db");
    let mut config = service_config(emu, db.to_str().unwrap(), "http://127.0.0.1:9/unused");
    config.webhook.url = None;
    config.webhook.secret = None;
    config.wechat.calls_per_minute = 0;
    config.wechat.calls_per_hour = 0;
    config.pull.first_start = wechat_kf_service::config::FirstStart::FromNow;
    config
}

fn agent(config: &mut Config, model: &OpenAiStandIn, concurrency: usize) {
    config.responder.kind = Some(ResponderKind::Openai);
    config.responder.base_url = Some(model.base_url());
    config.responder.model = Some("bench".into());
    config.responder.interim_after = Duration::ZERO;
    config.responder.tools = false;
    config.responder.concurrency = concurrency;
}

/// Every answer in the outbox: (the stamp it repeats, when it was accepted).
fn answered(emu: &RunningEmulator, kf: &str) -> HashMap<u64, u64> {
    emu.emulator().outbox(Some(kf), None)["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let content = m["request"]["text"]["content"].as_str()?;
            let stamp = content.rsplit("lat:").next()?.trim().parse::<u64>().ok()?;
            Some((stamp, m["time_ms"].as_u64()?))
        })
        .collect()
}

/// Scenario 1: p50/p99 customer-to-reply latency.
async fn latency(responder: bool, rate: usize, seconds: u64) -> (usize, Duration, Duration) {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("latency");
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&emu, &dir);
    let model = OpenAiStandIn::start().await;
    if responder {
        agent(&mut config, &model, 32);
    } else {
        config.webhook.url = Some(answering_bot().await);
    }
    let running = Service::start(config).await.unwrap();
    emu.emulator()
        .set_callback_url(Some(format!("{}/callback", running.base_url())));
    let customers = 200;
    let total = rate * seconds as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut stamps = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        // Unique per text: the send time plus the text's index, so equal milliseconds differ.
        let sent = unix_ms();
        let stamp = sent * 10_000 + i as u64;
        stamps.push(stamp);
        emu.emulator()
            .customer_send(
                json!({"open_kfid": kf, "external_userid": format!("wmLat{}", i % customers),
                                  "msgtype": "text", "text": {"content": format!("lat:{stamp}")}}),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = answered(&emu, &kf);
    while got.len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = answered(&emu, &kf);
    }
    assert_eq!(got.len(), total, "every text answered once");
    let mut latencies: Vec<Duration> = stamps
        .iter()
        .map(|stamp| {
            let accepted = got[stamp];
            Duration::from_millis(accepted.saturating_sub(stamp / 10_000))
        })
        .collect();
    latencies.sort();
    running.shutdown().await;
    emu.shutdown().await;
    (
        total,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    )
}

/// Scenario 2: `conversations` customers at once, a 2 s model; seconds until all are
/// answered, and the process's peak memory after.
async fn many(conversations: usize, concurrency: usize) -> (Duration, f64) {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("many");
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&emu, &dir);
    let model = Arc::new(OpenAiStandIn::start().await);
    for _ in 0..conversations {
        model.push(Reply::default().delay(Duration::from_secs(2)));
    }
    agent(&mut config, &model, concurrency);
    config.responder.deadline = Duration::from_secs(600);
    let running = Service::start(config).await.unwrap();
    emu.emulator()
        .set_callback_url(Some(format!("{}/callback", running.base_url())));
    let started = Instant::now();
    let batch: Vec<Value> = (0..conversations)
        .map(|i| {
            json!({"open_kfid": kf, "external_userid": format!("wmMany{i}"), "msgtype": "text",
                   "text": {"content": format!("lat:{i}")}})
        })
        .collect();
    emu.emulator().customer_send(Value::Array(batch)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = answered(&emu, &kf).len();
        if n >= conversations {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {conversations} answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    running.shutdown().await;
    emu.shutdown().await;
    (elapsed, peak_mib())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    let rate = env_usize("RESPONDER_RATE", 50);
    let seconds = env_usize("RESPONDER_SECONDS", 10) as u64;
    let conversations = env_usize("RESPONDER_CONVERSATIONS", 1000);
    println!(
        "responder bench: {rate} texts/s for {seconds} s over 200 customers; {conversations} conversations with a 2 s model"
    );
    let (n, web_p50, web_p99) = latency(false, rate, seconds).await;
    let (_, ai_p50, ai_p99) = latency(true, rate, seconds).await;
    println!("| customer-to-reply, {n} texts | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| webhook bot (baseline) | {:.0} ms | {:.0} ms |",
        ms(web_p50),
        ms(web_p99)
    );
    println!(
        "| openai responder, zero-latency model | {:.0} ms | {:.0} ms |",
        ms(ai_p50),
        ms(ai_p99)
    );
    println!(
        "| ratio (responder / webhook) | {:.2}× | {:.2}× |",
        ms(ai_p50) / ms(web_p50).max(1.0),
        ms(ai_p99) / ms(web_p99).max(1.0)
    );
    println!();
    println!(
        "| {conversations} conversations, 2 s model | all answered after | peak RSS of the bench process |"
    );
    println!("|---|---|---|");
    for concurrency in [32, conversations] {
        let (elapsed, peak) = many(conversations, concurrency).await;
        println!(
            "| responder.concurrency = {concurrency} | {:.1} s | {peak:.0} MiB |",
            elapsed.as_secs_f64()
        );
    }
}
