//! Pull throughput through the client, against an in-process emulator.
//!
//! `cargo bench -p wechat-kf --bench client_pull`
//!
//! Three ways to pull the same pages (1000 messages each) are timed in the same run, in rotating
//! order, several rounds each; the best round counts (the machine is shared and noisy; the median
//! is printed too):
//!
//! * **client**: [`Puller::fetch`] + `commit`: token handling, retries, the envelope check, the
//!   typed [`SyncMsgResponse`] (every message decoded, raw JSON kept), de-duplication.
//! * **client sync loop**: `client.messages().sync(..)` in a loop, without the puller.
//! * **raw typed**: plain reqwest POSTs (same client settings) decoded with
//!   `SyncMsgResponse::from_slice`: the client's overhead is the difference to this.
//! * **raw ignored** (the baseline): plain reqwest POSTs where only `next_cursor` and `has_more`
//!   are read and `msg_list` is skipped as `serde::de::IgnoredAny`.
//!
//! Environment: `CLIENT_PULL_MESSAGES` (default 50000), `CLIENT_PULL_ROUNDS` (default 15).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use wechat_kf::client::Client;
use wechat_kf::client::puller::Puller;
use wechat_kf::message::SyncMsgResponse;
use wechat_kf_emulator::{Config, Emulator, RunningEmulator};

const PAGE: u32 = 1000;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic mix: mostly text, some media, locations, links and mini programs.
fn message(open_kfid: &str, i: usize) -> Value {
    let user = format!("wmBenchCustomer{:04}", i % 500);
    let base = json!({"open_kfid": open_kfid, "external_userid": user});
    let mut m = base.as_object().unwrap().clone();
    let (msgtype, payload) = match i % 20 {
        0..=11 => (
            "text",
            json!({"content": format!("你好，我想查一下订单 {i} 的物流状态，谢谢！")}),
        ),
        12..=14 => ("image", json!({})),
        15 | 16 => (
            "location",
            json!({"latitude": 23.1291, "longitude": 113.2644, "name": "某商场", "address": "广州市天河区某路1号"}),
        ),
        17 | 18 => (
            "link",
            json!({"title": "一篇文章", "desc": "摘要", "url": format!("https://example.com/a/{i}"), "pic_url": "https://example.com/a.png"}),
        ),
        _ => (
            "miniprogram",
            json!({"title": "小程序标题", "appid": "wx0123456789abcdef", "pagepath": "pages/index.html", "thumb_media_id": "MEDIA_ID_THUMB"}),
        ),
    };
    m.insert("msgtype".into(), msgtype.into());
    m.insert(msgtype.into(), payload);
    Value::Object(m)
}

#[derive(Deserialize)]
struct Skim {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    next_cursor: String,
    #[serde(default)]
    has_more: u8,
    #[serde(default, rename = "msg_list")]
    _msg_list: IgnoredAny,
}

struct Setup {
    running: RunningEmulator,
    corp_id: String,
    secret: String,
    open_kfid: String,
    messages: usize,
}

async fn setup(messages: usize) -> Setup {
    let mut config = Config::generated();
    config.disable_rate_limits();
    let corp_id = config.corp_id.clone();
    let secret = config.secret.clone();
    let running = Emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the emulator starts");
    let open_kfid = running.emulator().create_account("压测");
    for chunk in (0..messages).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<Value> = chunk.iter().map(|&i| message(&open_kfid, i)).collect();
        running
            .emulator()
            .customer_send(Value::Array(batch))
            .expect("messages are injected");
    }
    Setup {
        running,
        corp_id,
        secret,
        open_kfid,
        messages,
    }
}

async fn pull_client(s: &Setup, client: &Client) -> usize {
    // Default settings: de-duplication over the last 10,000 msgids included.
    let mut puller = Puller::new(client.clone(), s.open_kfid.clone()).page_limit(PAGE);
    let mut count = 0;
    loop {
        let batch = puller.fetch().await.expect("page");
        count += batch.messages.len();
        let more = batch.has_more();
        batch.commit().await.expect("commit");
        if !more {
            return count;
        }
    }
}

async fn pull_client_sync(s: &Setup, client: &Client) -> usize {
    let mut cursor = String::new();
    let mut count = 0;
    loop {
        let page = client
            .messages()
            .sync(
                wechat_kf::client::messages::SyncMsgRequest::new(s.open_kfid.clone())
                    .cursor(cursor.clone())
                    .limit(PAGE),
            )
            .await
            .expect("page");
        count += page.msg_list.len();
        cursor = page.next_cursor;
        if !page.has_more {
            return count;
        }
    }
}

async fn raw_pages<F: FnMut(&[u8]) -> (usize, String, bool)>(
    s: &Setup,
    http: &reqwest::Client,
    token: &str,
    mut parse: F,
) -> usize {
    let url = format!(
        "{}/cgi-bin/kf/sync_msg?access_token={token}",
        s.running.base_url()
    );
    let mut cursor = String::new();
    let mut count = 0;
    loop {
        let mut body = json!({"open_kfid": s.open_kfid, "limit": PAGE});
        if !cursor.is_empty() {
            body["cursor"] = cursor.clone().into();
        }
        let bytes = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .expect("send")
            .bytes()
            .await
            .expect("body");
        let (n, next, more) = parse(&bytes);
        count += n;
        cursor = next;
        if !more {
            return count;
        }
    }
}

fn best_and_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() {
    let messages = env_usize("CLIENT_PULL_MESSAGES", 50_000);
    let rounds = env_usize("CLIENT_PULL_ROUNDS", 15).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let s = setup(messages).await;
        let client = Client::builder(s.corp_id.clone(), s.secret.clone())
            .base_url(s.running.base_url())
            .build()
            .expect("client");
        let token = client
            .token()
            .await
            .expect("token")
            .secret()
            .expose()
            .to_owned();
        // Configured like the client's own, so the comparison isolates the client's code.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");

        // Warm-up: connections, allocator, emulator caches.
        assert_eq!(pull_client(&s, &client).await, s.messages);

        let mut times: [Vec<Duration>; 4] = Default::default();
        for round in 0..rounds {
            for k in 0..4 {
                let which = (round + k) % 4;
                let started = Instant::now();
                let count = match which {
                    0 => pull_client(&s, &client).await,
                    3 => pull_client_sync(&s, &client).await,
                    1 => {
                        raw_pages(&s, &http, &token, |b| {
                            let page = SyncMsgResponse::from_slice(b).expect("typed page");
                            assert_eq!(page.errcode, 0);
                            (page.msg_list.len(), page.next_cursor, page.has_more)
                        })
                        .await
                    }
                    2 => {
                        let mut seen = 0;
                        let total = raw_pages(&s, &http, &token, |b| {
                            let page: Skim = serde_json::from_slice(b).expect("page");
                            assert_eq!(page.errcode, 0);
                            seen += 1;
                            // IgnoredAny does not count items; the total is known.
                            (0, page.next_cursor, page.has_more != 0)
                        })
                        .await;
                        assert!(seen > 0);
                        total + s.messages
                    }
                    _ => unreachable!(),
                };
                assert_eq!(count, s.messages, "every message pulled");
                times[which].push(started.elapsed());
            }
        }
        let rate = |d: Duration| s.messages as f64 / d.as_secs_f64();
        let [client_t, typed_t, ignored_t, sync_t] = times.map(best_and_median);
        println!(
            "client_pull: {} messages, pages of {PAGE}, {rounds} rounds (best; median in brackets)",
            s.messages
        );
        println!("| path | ms per pull | messages/s | vs baseline |");
        println!("|---|---:|---:|---:|");
        for (name, (best, median)) in [
            ("client (Puller, typed)", client_t),
            ("client (messages().sync loop, typed)", sync_t),
            ("raw reqwest + typed SyncMsgResponse", typed_t),
            ("raw reqwest + IgnoredAny (baseline)", ignored_t),
        ] {
            println!(
                "| {name} | {:.1} ({:.1}) | {:.0} ({:.0}) | {:.2}x ({:.2}x) |",
                best.as_secs_f64() * 1000.0,
                median.as_secs_f64() * 1000.0,
                rate(best),
                rate(median),
                rate(best) / rate(ignored_t.0),
                rate(median) / rate(ignored_t.1),
            );
        }
        println!(
            "client overhead over raw typed decoding: {:+.1}% best, {:+.1}% median",
            (client_t.0.as_secs_f64() / typed_t.0.as_secs_f64() - 1.0) * 100.0,
            (client_t.1.as_secs_f64() / typed_t.1.as_secs_f64() - 1.0) * 100.0
        );
        s.running.shutdown().await;
    });
}
