//! Decoding benchmark: a realistic 1000-message `sync_msg` page.
//!
//! Measures, interleaved in one run so machine noise hits all equally:
//! * baseline: `serde_json::from_slice::<IgnoredAny>` (validation only, no allocation);
//! * ours: `SyncMsgResponse` decode (typed, raw JSON kept per message) + read every text;
//! * naive: the common `#[serde(flatten)]` + internally tagged design, also keeping raw JSON
//!   (through `serde_json::Value`), to show what the design choice buys.
//!
//! Run: `cargo bench -p wechat-kf --bench decode`. Prints a Markdown table for BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;
use wechat_kf::message::SyncMsgResponse;

/// A 1000-message page shaped like real traffic: mostly Chinese text, some media, menus,
/// locations and events, with the envelope WeChat sends.
fn realistic_page() -> Vec<u8> {
    let phrases = [
        "你好，我想查一下我的订单什么时候发货",
        "请问这个商品还有货吗？",
        "好的，谢谢",
        "我要退货，商品有质量问题，包装也破损了，怎么处理？",
        "人工客服",
        "Hello, do you ship to Hong Kong?",
    ];
    let mut items = Vec::with_capacity(1000);
    for i in 0..1000u64 {
        let envelope = format!(
            r#""msgid":"from_msgid_{}","open_kfid":"wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw","external_userid":"wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw","send_time":{},"origin":3"#,
            4_622_416_642_169_452_483u64 + i,
            1_700_000_000 + i
        );
        let item = match i % 20 {
            0 => format!(
                r#"{{{envelope},"msgtype":"image","image":{{"media_id":"2iSLeVyqzk4eX0IB5kTi9Ljfa2rt9dwfq5WKRQ4Nvvgw{i}"}}}}"#
            ),
            1 => format!(
                r#"{{"msgid":"from_msgid_e{i}","send_time":{},"origin":4,"msgtype":"event","event":{{"event_type":"enter_session","open_kfid":"wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw","external_userid":"wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw","scene":"order","scene_param":"id%3D42","welcome_code":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}}"#,
                1_700_000_000 + i
            ),
            2 => format!(
                r#"{{{envelope},"msgtype":"location","location":{{"latitude":23.1291,"longitude":113.2644,"name":"某商场","address":"广州市天河区某路1号"}}}}"#
            ),
            3 => format!(
                r#"{{{envelope},"msgtype":"text","text":{{"content":"接入人工","menu_id":"101"}}}}"#
            ),
            _ => format!(
                r#"{{{envelope},"msgtype":"text","text":{{"content":"{}"}}}}"#,
                phrases[(i as usize) % phrases.len()]
            ),
        };
        items.push(item);
    }
    format!(
        r#"{{"errcode":0,"errmsg":"ok","next_cursor":"4gw7MepFLfgF2VC5npN","has_more":1,"msg_list":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

/// The design the issue calls naive: envelope flattened next to an internally tagged enum.
mod naive {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Response {
        pub msg_list: Vec<serde_json::Value>,
        pub next_cursor: String,
        pub has_more: u32,
    }

    /// The same design without keeping raw JSON: typed straight from the bytes.
    #[derive(Deserialize)]
    pub struct TypedResponse {
        pub msg_list: Vec<Message>,
        pub next_cursor: String,
        pub has_more: u32,
    }

    #[derive(Deserialize)]
    pub struct Message {
        #[allow(dead_code)]
        pub msgid: String,
        #[allow(dead_code)]
        pub send_time: u64,
        #[serde(flatten)]
        pub content: Content,
    }

    #[derive(Deserialize)]
    #[serde(tag = "msgtype", rename_all = "snake_case")]
    #[allow(dead_code)]
    pub enum Content {
        Text { text: Text },
        Image { image: serde_json::Value },
        Location { location: serde_json::Value },
        Event { event: serde_json::Value },
    }

    #[derive(Deserialize)]
    pub struct Text {
        pub content: String,
    }
}

fn ours(bytes: &[u8]) -> usize {
    let page = SyncMsgResponse::from_slice(bytes).expect("the page decodes");
    assert!(page.invalid.is_empty());
    page.msg_list
        .iter()
        .filter_map(|m| m.text())
        .map(|t| t.content.len())
        .sum::<usize>()
        + page.msg_list.iter().map(|m| m.raw().len()).sum::<usize>()
}

fn baseline(bytes: &[u8]) -> usize {
    serde_json::from_slice::<IgnoredAny>(bytes).expect("valid JSON");
    1
}

fn naive(bytes: &[u8]) -> usize {
    // Keeping the raw JSON in this design means going through `Value` and re-serializing.
    let page: naive::Response = serde_json::from_slice(bytes).expect("the page decodes");
    let mut total = page.next_cursor.len() + page.has_more as usize;
    for value in page.msg_list {
        let raw = value.to_string();
        let msg = naive::Message::deserialize(value).expect("item decodes");
        if let naive::Content::Text { text } = msg.content {
            total += text.content.len();
        }
        total += raw.len();
    }
    total
}

fn naive_typed_only(bytes: &[u8]) -> usize {
    let page: naive::TypedResponse = serde_json::from_slice(bytes).expect("the page decodes");
    let mut total = page.next_cursor.len() + page.has_more as usize;
    for msg in page.msg_list {
        if let naive::Content::Text { text } = msg.content {
            total += text.content.len();
        }
    }
    total
}

/// Runs `f` repeatedly for about `budget`, returning the mean seconds per call.
fn time(f: &dyn Fn(&[u8]) -> usize, bytes: &[u8], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < budget {
        black_box(f(black_box(bytes)));
        calls += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(calls)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One process's measurement: median seconds per page for each decoder.
fn measure(bytes: &[u8], rounds: usize, budget: Duration) -> [f64; 4] {
    let (mut b, mut o, mut n, mut t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.push(time(&baseline, bytes, budget));
        o.push(time(&ours, bytes, budget));
        n.push(time(&naive, bytes, budget));
        t.push(time(&naive_typed_only, bytes, budget));
    }
    [median(b), median(o), median(n), median(t)]
}

const NAMES: [&str; 4] = [
    "`serde_json` → `IgnoredAny` (baseline, validation only)",
    "`SyncMsgResponse` (typed + raw kept + every text read)",
    "naive `flatten` + internally tagged (+ raw via `Value`)",
    "naive `flatten` + internally tagged, typed only (no raw kept)",
];

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let bytes = realistic_page();
    if std::env::var_os("DECODE_BENCH_PROFILE").is_some() {
        // For `perf record`: only our decoder, for a few seconds.
        time(&ours, &bytes, Duration::from_secs(3));
        return;
    }
    assert_eq!(ours(&bytes) > 0, naive(&bytes) > 0);
    assert!(naive_typed_only(&bytes) > 0);
    if quick {
        measure(&bytes, 1, Duration::from_millis(10));
        return;
    }
    if std::env::var_os("DECODE_BENCH_CHILD").is_some() {
        let times = measure(&bytes, 9, Duration::from_millis(200));
        println!("{} {} {} {}", times[0], times[1], times[2], times[3]);
        return;
    }
    // glibc's malloc gives a process one of two heap layouts for this alloc/free pattern (whether
    // the heap top is trimmed after each page, costing page faults on the next): measure in
    // several processes and report the median and the range, not one lucky or unlucky run.
    let exe = std::env::current_exe().expect("the bench binary knows its path");
    let mut runs: Vec<[f64; 4]> = Vec::new();
    for _ in 0..7 {
        let output = std::process::Command::new(&exe)
            .arg("--bench")
            .env("DECODE_BENCH_CHILD", "1")
            .output()
            .expect("the bench runs itself");
        let line = String::from_utf8_lossy(&output.stdout);
        let times: Vec<f64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        runs.push([times[0], times[1], times[2], times[3]]);
    }
    println!(
        "page: 1000 messages, {} bytes; 7 processes × 9 rounds of 200 ms",
        bytes.len()
    );
    println!(
        "| decoder | time per page (median) | speed vs IgnoredAny (median) | range over processes |"
    );
    println!("|---|---:|---:|---:|");
    for (i, name) in NAMES.iter().enumerate() {
        let ratios: Vec<f64> = runs.iter().map(|r| r[0] / r[i]).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "| {name} | {:.0} µs | {:.2}× | {lo:.2}–{hi:.2}× |",
            median(runs.iter().map(|r| r[i]).collect()) * 1e6,
            median(ratios),
        );
    }
}
