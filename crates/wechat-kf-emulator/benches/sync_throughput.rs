//! sync_msg throughput of the emulator: inject 100,000 messages, pull them in pages of 1000 with a
//! callback token over real HTTP, and compare with a baseline measured in the same run: the same
//! page bytes served from memory by a bare axum route through the same client and parsing.
//!
//! Run: `cargo bench -p wechat-kf-emulator --bench sync_throughput`

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use wechat_kf_emulator::{Config, Emulator};

const MESSAGES: usize = 100_000;
const BATCH: usize = 10_000;
const ROUNDS: usize = 3;

/// Only what a puller needs: the cursor, has_more and the raw items (not parsed further).
#[derive(Deserialize)]
struct Page<'a> {
    errcode: i64,
    #[serde(borrow)]
    next_cursor: &'a str,
    has_more: u8,
    #[serde(borrow)]
    msg_list: Vec<&'a RawValue>,
}

async fn pull_all(client: &reqwest::Client, url: &str, kf: &str, token: &str) -> (usize, Duration) {
    let started = Instant::now();
    let mut cursor = String::new();
    let mut total = 0;
    loop {
        let body =
            json!({"open_kfid": kf, "token": token, "cursor": cursor, "limit": 1000}).to_string();
        let bytes = client
            .post(url)
            .body(body)
            .send()
            .await
            .expect("sync_msg")
            .bytes()
            .await
            .expect("body");
        let page: Page<'_> = serde_json::from_slice(&bytes).expect("a sync_msg page");
        assert_eq!(page.errcode, 0);
        total += page.msg_list.len();
        cursor = page.next_cursor.to_string();
        if page.has_more == 0 {
            return (total, started.elapsed());
        }
    }
}

async fn pull_static(client: &reqwest::Client, url: &str, pages: usize) -> (usize, Duration) {
    let started = Instant::now();
    let mut total = 0;
    for _ in 0..pages {
        let body =
            json!({"open_kfid": "x", "token": "t", "cursor": "c", "limit": 1000}).to_string();
        let bytes = client
            .post(url)
            .body(body)
            .send()
            .await
            .expect("static")
            .bytes()
            .await
            .expect("body");
        let page: Page<'_> = serde_json::from_slice(&bytes).expect("a page");
        total += page.msg_list.len();
        std::hint::black_box(page.next_cursor);
    }
    (total, started.elapsed())
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut config = Config::generated();
    config.access_token_ttl = Duration::from_secs(86_400);
    let running = Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    let base = running.base_url();
    let emu = running.emulator().clone();
    let kf = emu.create_account("bench");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let inject_started = Instant::now();
    for b in 0..MESSAGES / BATCH {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| {
                json!({"open_kfid": kf, "external_userid": format!("wmCustomer{:05}", i % 1000), "msgtype": "text",
                       "text": {"content": format!("你好，我想查一下订单 {} 的物流状态", b * BATCH + i)}})
            })
            .collect();
        let r = client
            .post(format!("{base}/emulator/customer/send"))
            .json(&batch)
            .send()
            .await
            .expect("inject");
        assert!(r.status().is_success());
    }
    let inject = inject_started.elapsed();

    let c = emu.config().clone();
    let v: Value = client
        .get(format!(
            "{base}/cgi-bin/gettoken?corpid={}&corpsecret={}",
            c.corp_id, c.secret
        ))
        .send()
        .await
        .expect("gettoken")
        .json()
        .await
        .expect("json");
    let access = v["access_token"].as_str().expect("token").to_string();
    let token = emu.issue_sync_token(&kf).expect("sync token");
    let sync_url = format!("{base}/cgi-bin/kf/sync_msg?access_token={access}");

    // A representative full page, served verbatim by the baseline server.
    let sample = client
        .post(&sync_url)
        .body(json!({"open_kfid": kf, "token": token, "limit": 1000}).to_string())
        .send()
        .await
        .expect("page")
        .bytes()
        .await
        .expect("bytes");
    let page_bytes = sample.len();
    let static_app = Router::new().route(
        "/page",
        post(move || {
            let sample = sample.clone();
            async move { ([("content-type", "application/json")], sample) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let static_url = format!("http://{}/page", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, static_app).await.expect("serve") });

    let mut best_emu: f64 = 0.0;
    let mut best_base: f64 = 0.0;
    for _ in 0..ROUNDS {
        let (n, d) = pull_all(&client, &sync_url, &kf, &token).await;
        assert_eq!(n, MESSAGES);
        best_emu = best_emu.max(rate(n, d));
        let (n, d) = pull_static(&client, &static_url, MESSAGES / 1000).await;
        best_base = best_base.max(rate(n, d));
    }
    println!(
        "injected {MESSAGES} messages in {:.2} s ({:.0} msg/s)",
        inject.as_secs_f64(),
        rate(MESSAGES, inject)
    );
    println!("page size: {page_bytes} bytes for 1000 messages");
    println!("emulator sync_msg:  {best_emu:>10.0} msg/s (best of {ROUNDS})");
    println!("static-page baseline: {best_base:>8.0} msg/s (best of {ROUNDS})");
    println!("ratio emulator/baseline: {:.2}", best_emu / best_base);
    running.shutdown().await;
}
