//! Decoding benchmark: realistic 1000-message `sync_msg` pages.
//!
//! Two pages: the original one (80 % plain text) and a *mixed* page with every documented
//! message and event type in realistic proportions (issue 17), plus the part of the mixed page
//! the `wxkefu-rs` crate can decode at all. Measured, interleaved in one process so machine noise
//! hits all equally:
//! * baseline: `serde_json::from_slice::<IgnoredAny>` (validation only, no allocation);
//! * ours: `SyncMsgResponse::from_slice` (typed, raw JSON kept per message) + read every text;
//! * serde: `serde_json::from_slice::<SyncMsgResponse>` (what reqwest's `.json()` calls);
//! * naive: the common `#[serde(flatten)]` + internally tagged design, also keeping raw JSON
//!   (through `serde_json::Value`), to show what the design choice buys (text page only);
//! * wxkefu-rs: `serde_json::from_slice::<wxkefu_rs::sync_msg::SyncMsgResponse>` on its subset.
//!
//! Run: `cargo bench -p wechat-kf --bench decode`. Prints Markdown tables for BENCHMARKS.md.
//! Env: `DECODE_BENCH_PROCESSES` (default 7), `DECODE_BENCH_ROUNDS` (default 7, of 150 ms).
//! For `valgrind --tool=callgrind`: `DECODE_BENCH_ONLY=<page>/<decoder>` (e.g. `mixed/ours`) and
//! `DECODE_BENCH_ITERS=<n>` run one decoder n times inside `run_only` and nothing else.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;
use wechat_kf::message::SyncMsgResponse;

const OPEN_KFID: &str = "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw";
const USER: &str = "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw";

fn page(items: &[String]) -> Vec<u8> {
    format!(
        r#"{{"errcode":0,"errmsg":"ok","next_cursor":"4gw7MepFLfgF2VC5npN","has_more":1,"msg_list":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

/// The original page: 80 % Chinese/English text, 5 % each image, `enter_session`, location and
/// menu-click text.
fn text_page() -> Vec<u8> {
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
            r#""msgid":"from_msgid_{}","open_kfid":"{OPEN_KFID}","external_userid":"{USER}","send_time":{},"origin":3"#,
            4_622_416_642_169_452_483u64 + i,
            1_700_000_000 + i
        );
        let item = match i % 20 {
            0 => format!(
                r#"{{{envelope},"msgtype":"image","image":{{"media_id":"2iSLeVyqzk4eX0IB5kTi9Ljfa2rt9dwfq5WKRQ4Nvvgw{i}"}}}}"#
            ),
            1 => format!(
                r#"{{"msgid":"from_msgid_e{i}","send_time":{},"origin":4,"msgtype":"event","event":{{"event_type":"enter_session","open_kfid":"{OPEN_KFID}","external_userid":"{USER}","scene":"order","scene_param":"id%3D42","welcome_code":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}}"#,
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
    page(&items)
}

/// Every documented message and event type (official docs 94670, 95122 …), in proportions of
/// a busy shop account: per 1000 items, 425 plain texts, 120 texts with emoji and JSON escapes,
/// 60 servicer replies, 40 menu clicks, 150 media, 70 location/link/card/mini-program, 15 menus,
/// 40 Channels / shop / merged items and 80 events of all seven types. Deterministically shuffled.
fn mixed_items() -> Vec<String> {
    const KINDS: [(&str, usize); 25] = [
        ("text", 425),
        ("text_escaped", 120),
        ("text_servicer", 60),
        ("text_menu_click", 40),
        ("image", 80),
        ("voice", 40),
        ("video", 15),
        ("file", 15),
        ("location", 20),
        ("link", 25),
        ("business_card", 5),
        ("miniprogram", 20),
        ("msgmenu", 15),
        ("channels", 10),
        ("channels_shop_product", 10),
        ("channels_shop_order", 10),
        ("merged_msg", 10),
        ("enter_session", 35),
        ("enter_session_channels", 15),
        ("msg_send_fail", 5),
        ("servicer_status_change", 5),
        ("session_status_change", 10),
        ("user_recall_msg", 5),
        ("servicer_recall_msg", 3),
        ("reject_customer_msg_switch_change", 2),
    ];
    let mut kinds: Vec<&str> = KINDS
        .iter()
        .flat_map(|&(kind, n)| std::iter::repeat_n(kind, n))
        .collect();
    assert_eq!(kinds.len(), 1000);
    // Fisher–Yates with a fixed LCG: the same page in every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % bound
    };
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, next(i + 1));
    }
    let phrases = [
        "你好，我想查一下我的订单什么时候发货",
        "请问这个商品还有货吗？",
        "好的，谢谢",
        "我要退货，商品有质量问题，包装也破损了，怎么处理？",
        "人工客服",
        "Hello, do you ship to Hong Kong?",
        "在吗",
        "这个尺码偏大还是偏小？我平时穿M码",
    ];
    // Emoji as UTF-8 and as surrogate escapes, newlines, quotes, slashes, \u escapes.
    let escaped = [
        r#"收到了，谢谢😀👍\n下次还来"#,
        r#"订单号是 \"20231115-8842\"，麻烦看一下"#,
        r#"链接打不开 https:\/\/shop.example.com\/item?id=42"#,
        r#"\u4f60\u597d，请问\ud83d\ude00在吗"#,
        r#"地址：广州市天河区\n某路1号\t3栋"#,
        "太好了🎉🎉 谢谢客服小姐姐❤️",
    ];
    let mut items = Vec::with_capacity(1000);
    for (i, kind) in kinds.into_iter().enumerate() {
        let msgid = 4_622_416_642_169_452_483u64 + i as u64;
        let time = 1_700_000_000 + i as u64;
        let customer = format!("wmAJ2GCAAAme1XQRC-NI-q0_ZM9uk{:03}", i % 97);
        let envelope = |origin: u32| {
            format!(
                r#""msgid":"from_msgid_{msgid}","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","send_time":{time},"origin":{origin}"#
            )
        };
        let servicer = |payload: &str| {
            format!(
                r#"{{{},"servicer_userid":"zhangsan","msgtype":{payload}}}"#,
                envelope(5)
            )
        };
        let message = |payload: &str| format!(r#"{{{},"msgtype":{payload}}}"#, envelope(3));
        let event = |body: &str| {
            format!(
                r#"{{"msgid":"from_msgid_{msgid}","send_time":{time},"origin":4,"msgtype":"event","event":{{{body}}}}}"#
            )
        };
        let media = |kind: &str| {
            message(&format!(
                r#""{kind}","{kind}":{{"media_id":"2iSLeVyqzk4eX0IB5kTi9Ljfa2rt9dwfq5WKRQ4Nvvgw{i}"}}"#
            ))
        };
        let item = match kind {
            "text" => message(&format!(
                r#""text","text":{{"content":"{}"}}"#,
                phrases[i % phrases.len()]
            )),
            "text_escaped" => message(&format!(
                r#""text","text":{{"content":"{}"}}"#,
                escaped[i % escaped.len()]
            )),
            "text_servicer" => servicer(
                r#""text","text":{"content":"您好，我是客服小张，很高兴为您服务。请问有什么可以帮您？"}"#,
            ),
            "text_menu_click" => message(r#""text","text":{"content":"满意","menu_id":"s1"}"#),
            "image" | "voice" | "video" | "file" => media(kind),
            "location" => message(
                r#""location","location":{"latitude":23.1291,"longitude":113.2644,"name":"某商场","address":"广州市天河区某路1号"}"#,
            ),
            "link" => message(
                r#""link","link":{"title":"双十一预售开启","desc":"全场满300减50","url":"https://mp.weixin.qq.com/s/Abc123XyZ","pic_url":"https://mmbiz.qpic.cn/mmbiz_jpg/abc/0"}"#,
            ),
            "business_card" => message(r#""business_card","business_card":{"userid":"lisi"}"#),
            "miniprogram" => message(
                r#""miniprogram","miniprogram":{"title":"小程序标题","appid":"wx0123456789abcdef","pagepath":"pages/index.html?id=42","thumb_media_id":"2iSLeVyqzk4eX0IB5kTi9Ljfa2rt9dwfq5WKRQ4Nvvgw"}"#,
            ),
            "msgmenu" => servicer(
                r#""msgmenu","msgmenu":{"head_content":"请对本次服务进行评价","list":[{"type":"click","click":{"id":"s1","content":"满意"}},{"type":"click","click":{"id":"s2","content":"一般"}},{"type":"click","click":{"id":"s3","content":"不满意"}}],"tail_content":"感谢您的反馈"}"#,
            ),
            "channels" => message(
                r#""channels","channels":{"sub_type":1,"nickname":"某视频号","title":"新品发布会精彩回顾"}"#,
            ),
            "channels_shop_product" => message(
                r#""channels_shop_product","channels_shop_product":{"product_id":"10000029521937","head_img":"https://wx.qlogo.cn/finderhead/p1.jpg","title":"纯棉短袖T恤","sales_price":"5990","shop_nickname":"某某旗舰店","shop_head_img":"https://wx.qlogo.cn/finderhead/s.jpg"}"#,
            ),
            "channels_shop_order" => message(
                r#""channels_shop_order","channels_shop_order":{"order_id":"3705115058471208192","product_titles":"纯棉短袖T恤,休闲裤","price_wording":"¥159.80","state":"待发货","image_url":"https://wx.qlogo.cn/finderhead/o.jpg","shop_nickname":"某某旗舰店"}"#,
            ),
            "merged_msg" => message(
                r#""merged_msg","merged_msg":{"title":"群聊的聊天记录","item":[{"send_time":1699990000,"msgtype":"text","sender_name":"某人","msg_content":"{\"msgtype\":\"text\",\"text\":{\"content\":\"原消息\"}}"},{"send_time":1699990060,"msgtype":"image","sender_name":"某人","msg_content":"{\"msgtype\":\"image\",\"image\":{\"media_id\":\"MEDIA_ID\"}}"}]}"#,
            ),
            "enter_session" => event(&format!(
                r#""event_type":"enter_session","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","scene":"order","scene_param":"id%3D42","welcome_code":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa{i}""#
            )),
            "enter_session_channels" => event(&format!(
                r#""event_type":"enter_session","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","scene":"channels","welcome_code":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb{i}","wechat_channels":{{"nickname":"某视频号","scene":1}}"#
            )),
            "msg_send_fail" => event(&format!(
                r#""event_type":"msg_send_fail","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","fail_msgid":"my-msg-{i}","fail_type":10"#
            )),
            "servicer_status_change" => event(&format!(
                r#""event_type":"servicer_status_change","open_kfid":"{OPEN_KFID}","servicer_userid":"zhangsan","status":2,"stop_type":1"#
            )),
            "session_status_change" => event(&format!(
                r#""event_type":"session_status_change","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","change_type":3,"old_servicer_userid":"zhangsan","msg_code":"END_CODE_XYZ{i}""#
            )),
            "user_recall_msg" => event(&format!(
                r#""event_type":"user_recall_msg","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","recall_msgid":"from_msgid_{}""#,
                msgid - 3
            )),
            "servicer_recall_msg" => event(&format!(
                r#""event_type":"servicer_recall_msg","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","recall_msgid":"from_msgid_{}","servicer_userid":"zhangsan""#,
                msgid - 2
            )),
            "reject_customer_msg_switch_change" => event(&format!(
                r#""event_type":"reject_customer_msg_switch_change","open_kfid":"{OPEN_KFID}","external_userid":"{customer}","servicer_userid":"zhangsan","reject_switch":1"#
            )),
            other => unreachable!("{other}"),
        };
        items.push(item);
    }
    items
}

/// The items of the mixed page that `wxkefu-rs` decodes (it rejects link, business_card,
/// msgmenu, Channels shop products and any item missing a field it requires), as one page.
fn wxkefu_items(mixed: &[String]) -> Vec<String> {
    mixed
        .iter()
        .filter(|item| serde_json::from_str::<wxkefu_rs::sync_msg::SyncMsgItem>(item).is_ok())
        .cloned()
        .collect()
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

/// What reqwest's `.json()` and most users' code call.
fn serde_path(bytes: &[u8]) -> usize {
    let page: SyncMsgResponse = serde_json::from_slice(bytes).expect("the page decodes");
    assert!(page.invalid.is_empty());
    page.msg_list
        .iter()
        .filter_map(|m| m.text())
        .map(|t| t.content.len())
        .sum::<usize>()
        + page.msg_list.iter().map(|m| m.raw().len()).sum::<usize>()
}

fn wxkefu(bytes: &[u8]) -> usize {
    use wxkefu_rs::sync_msg::MsgPayload;
    let page: wxkefu_rs::sync_msg::SyncMsgResponse =
        serde_json::from_slice(bytes).expect("the subset decodes");
    page.msg_list
        .iter()
        .map(|m| match &m.payload {
            MsgPayload::Text { text } => text.content.len(),
            _ => 1,
        })
        .sum()
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
fn time(f: Decoder, bytes: &[u8], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < budget {
        black_box(f(black_box(bytes)));
        calls += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(calls)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type Decoder = fn(&[u8]) -> usize;

/// One measured row: a page, a decoder on it, and the row its ratio is taken against.
struct Row {
    page: usize,
    name: &'static str,
    label: &'static str,
    decoder: Decoder,
    /// Index of the row this one is compared with (the same page's `IgnoredAny`, or wxkefu-rs).
    against: usize,
}

const PAGES: [&str; 3] = ["text", "mixed", "wxkefu"];

const ROWS: [Row; 11] = [
    Row {
        page: 0,
        name: "baseline",
        label: "`serde_json` → `IgnoredAny` (baseline, validation only)",
        decoder: baseline,
        against: 0,
    },
    Row {
        page: 0,
        name: "ours",
        label: "`SyncMsgResponse::from_slice` (typed + raw kept + every text read)",
        decoder: ours,
        against: 0,
    },
    Row {
        page: 0,
        name: "serde",
        label: "`serde_json::from_slice::<SyncMsgResponse>` (the serde path)",
        decoder: serde_path,
        against: 0,
    },
    Row {
        page: 0,
        name: "naive",
        label: "naive `flatten` + internally tagged (+ raw via `Value`)",
        decoder: naive,
        against: 0,
    },
    Row {
        page: 0,
        name: "naive-typed",
        label: "naive `flatten` + internally tagged, typed only (no raw kept)",
        decoder: naive_typed_only,
        against: 0,
    },
    Row {
        page: 1,
        name: "baseline",
        label: "`serde_json` → `IgnoredAny` (baseline, validation only)",
        decoder: baseline,
        against: 5,
    },
    Row {
        page: 1,
        name: "ours",
        label: "`SyncMsgResponse::from_slice`",
        decoder: ours,
        against: 5,
    },
    Row {
        page: 1,
        name: "serde",
        label: "`serde_json::from_slice::<SyncMsgResponse>` (the serde path)",
        decoder: serde_path,
        against: 5,
    },
    Row {
        page: 2,
        name: "baseline",
        label: "`serde_json` → `IgnoredAny` (baseline, validation only)",
        decoder: baseline,
        against: 8,
    },
    Row {
        page: 2,
        name: "ours",
        label: "`SyncMsgResponse::from_slice`",
        decoder: ours,
        against: 10,
    },
    Row {
        page: 2,
        name: "wxkefu",
        label: "`wxkefu-rs` `SyncMsgResponse` (serde_json)",
        decoder: wxkefu,
        against: 8,
    },
];

/// One process's measurement: median seconds per page for each row, rounds interleaved.
fn measure(pages: &[Vec<u8>], rounds: usize, budget: Duration) -> Vec<f64> {
    let mut samples = vec![Vec::new(); ROWS.len()];
    for _ in 0..rounds {
        for (row, out) in ROWS.iter().zip(&mut samples) {
            out.push(time(row.decoder, &pages[row.page], budget));
        }
    }
    samples.into_iter().map(median).collect()
}

/// The callgrind entry point: only this function's instructions are counted
/// (`--toggle-collect='*run_only*'`).
#[inline(never)]
fn run_only(f: Decoder, bytes: &[u8], iterations: usize) -> usize {
    (0..iterations)
        .map(|_| black_box(f(black_box(bytes))))
        .sum()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mixed = mixed_items();
    let subset = wxkefu_items(&mixed);
    let pages = [text_page(), page(&mixed), page(&subset)];
    if let Ok(only) = std::env::var("DECODE_BENCH_ONLY") {
        let row = ROWS
            .iter()
            .find(|r| format!("{}/{}", PAGES[r.page], r.name) == only)
            .expect("DECODE_BENCH_ONLY names a row, e.g. mixed/ours");
        let iterations = env_usize("DECODE_BENCH_ITERS", 20);
        black_box(run_only(row.decoder, &pages[row.page], iterations));
        return;
    }
    for row in &ROWS {
        assert!((row.decoder)(&pages[row.page]) > 0, "{}", row.name);
    }
    // Both entry points decode the mixed page to the same messages.
    assert_eq!(
        SyncMsgResponse::from_slice(&pages[1]).unwrap(),
        serde_json::from_slice::<SyncMsgResponse>(&pages[1]).unwrap()
    );
    if quick {
        measure(&pages, 1, Duration::from_millis(5));
        return;
    }
    let rounds = env_usize("DECODE_BENCH_ROUNDS", 7);
    if std::env::var_os("DECODE_BENCH_CHILD").is_some() {
        let times = measure(&pages, rounds, Duration::from_millis(150));
        let line: Vec<String> = times.iter().map(f64::to_string).collect();
        println!("{}", line.join(" "));
        return;
    }
    // glibc's malloc gives a process one of two heap layouts for this alloc/free pattern (whether
    // the heap top is trimmed after each page, costing page faults on the next): measure in
    // several processes and report the median and the range, not one lucky or unlucky run.
    let exe = std::env::current_exe().expect("the bench binary knows its path");
    let processes = env_usize("DECODE_BENCH_PROCESSES", 7);
    let mut runs: Vec<Vec<f64>> = Vec::new();
    for _ in 0..processes {
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
        assert_eq!(times.len(), ROWS.len(), "child output: {line}");
        runs.push(times);
    }
    for (page, bytes) in pages.iter().enumerate() {
        let count = serde_json::from_slice::<SyncMsgResponse>(bytes)
            .unwrap()
            .msg_list
            .len();
        println!(
            "\npage `{}`: {count} messages, {} bytes; {processes} processes × {rounds} rounds of 150 ms",
            PAGES[page],
            bytes.len()
        );
        println!(
            "| decoder | time per page (median) | speed vs reference (median) | range over processes | reference |"
        );
        println!("|---|---:|---:|---:|---|");
        for (i, row) in ROWS.iter().enumerate().filter(|(_, r)| r.page == page) {
            let ratios: Vec<f64> = runs.iter().map(|r| r[row.against] / r[i]).collect();
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            println!(
                "| {} | {:.0} µs | {:.2}× | {lo:.2}–{hi:.2}× | {} |",
                row.label,
                median(runs.iter().map(|r| r[i]).collect()) * 1e6,
                median(ratios),
                ROWS[row.against].name,
            );
        }
    }
}
