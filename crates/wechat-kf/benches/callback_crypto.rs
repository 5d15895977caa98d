//! Callback crypto throughput: verify + decrypt + parse one realistic `kf_msg_or_event` callback
//! (vector V6 of `tests/crypto_vectors.rs`, a 352-byte ciphertext), measured in one run against
//!
//! * the floor: SHA-1 of the same signature input + base64 decode + AES-256-CBC decrypt of the
//!   same bytes with the same primitive crates (what no implementation can avoid), and
//! * the official npm package `@wecom/crypto` doing the same job through node
//!   (`interop/bench.js`; skipped with a message when `interop/node_modules` is missing), and
//! * the `wxkefu-rs` crate's `verify_and_decrypt_xml` (signature + decrypt, no parse of the
//!   inner XML), in the same process (issue 17).
//!
//! Rounds of the candidates are interleaved and the best round of each counts, which is the most
//! stable figure on a shared, noisy machine. Prints a summary and rewrites the body of the
//! `## Callback crypto` section of `BENCHMARKS.md`.
//!
//! Run: `cargo bench -p wechat-kf --bench callback_crypto`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, InnerIvInit, KeyInit};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use wechat_kf::callback::CallbackEvent;
use wechat_kf::crypto::{CallbackCrypto, extract_encrypt};

const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CORP: &str = "wx5823bf96d3bd56c7";
const TS: &str = "1700000000";
const NONCE: &str = "1234567890";
const SIG: &str = "467bf8f952ba7e3bac9e4ef87bf2b307c1b5bf1a";
const ENCRYPT: &str = "7ho9XWI/HTOA1L6oduAxX9LNhMaFCp7Yre3u1FOSfYIg3jeMdjD56prUxXn28j2RaWf71RJNVKJGSi6tDj+n9MIUMb8aHHLy5IhCeZq25MNftOjmQQKIdIBNfVs9CQJxJAWFGME43hPRGHRg3rJUHhJ2zy4OFnSLetV5qaI96ImReosw9YSZ9F8mRSR6r5c0W4Xp7yVrt1rUDvQ0ZnjfIPNwSmd8F1iwQa1/kODyCHXN4ImnEx14qLLALPTqYTWlIP1Xs7Iy0H5/OUUY7EoBZIq/zkQ4+zMijai4xA6SFOrmHe5Jpo4Z3DBuyrqNWliihdWwqM7n10flqHF9R7wKDO5E8veJD9qDgBNIfOxvQt5e0m1+ZYGOv2ORFEGZJRx80Eo3Z3TGZcUYvd8CyzwoWAwrt5nzGU08bfDvorCYoAwCq1IKTb38L0K1EOm8PMToxdS+cdAsgUNQBNhT2j5V5w==";

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(300);

/// Runs `f` repeatedly for about `ROUND` and returns operations per second.
fn round(mut f: impl FnMut()) -> f64 {
    let mut iterations = 0u64;
    let mut batch = 64u64;
    let start = Instant::now();
    loop {
        for _ in 0..batch {
            f();
        }
        iterations += batch;
        let elapsed = start.elapsed();
        if elapsed >= ROUND {
            return iterations as f64 / elapsed.as_secs_f64();
        }
        batch = (batch * 2).min(1 << 16);
    }
}

struct Stats {
    best: f64,
    median: f64,
    worst: f64,
}

fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    Stats {
        best: samples[samples.len() - 1],
        median: samples[samples.len() / 2],
        worst: samples[0],
    }
}

/// The floor: the primitives every implementation must run, on the same bytes.
struct Floor {
    signature_input: Vec<u8>,
    dec: aes::Aes256Dec,
    iv: [u8; 16],
}

impl Floor {
    fn new() -> Self {
        let mut parts = [TOKEN, TS, NONCE, ENCRYPT];
        parts.sort_unstable();
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
        );
        let key: [u8; 32] = engine.decode(KEY).unwrap().try_into().unwrap();
        Floor {
            signature_input: parts.concat().into_bytes(),
            dec: aes::Aes256Dec::new(&key.into()),
            iv: key[..16].try_into().unwrap(),
        }
    }

    fn run(&self) -> u8 {
        let digest = Sha1::digest(black_box(&self.signature_input));
        let mut buf = [0u8; 1024];
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(black_box(ENCRYPT), &mut buf)
            .unwrap();
        let plain = cbc::Decryptor::<&aes::Aes256Dec>::inner_iv_init(&self.dec, &self.iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut buf[..n])
            .unwrap();
        digest[0] ^ plain[plain.len() - 1]
    }
}

#[inline(never)]
fn run_only(f: &dyn Fn() -> usize, n: usize) -> usize {
    (0..n).map(|_| black_box(f())).sum()
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// Runs `node interop/bench.js`; `Ok(None)` when node or the package is missing.
fn node_bench(body: &str) -> Result<Option<Stats>, String> {
    if !interop_dir().join("node_modules/@wecom/crypto").is_dir() {
        return Ok(None);
    }
    let job = serde_json::json!({
        "token": TOKEN, "key": KEY, "corp_id": CORP, "msg_signature": SIG,
        "timestamp": TS, "nonce": NONCE, "body": body,
        "rounds": ROUNDS, "round_ms": ROUND.as_millis() as u64,
    });
    let out = match Command::new("node")
        .arg("bench.js")
        .arg(job.to_string())
        .current_dir(interop_dir())
        .output()
    {
        Ok(out) => out,
        Err(_) => return Ok(None),
    };
    if !out.status.success() {
        return Err(format!(
            "node bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("node bench output: {e}"))?;
    let samples: Vec<f64> = v["rounds_ops_per_sec"]
        .as_array()
        .ok_or("node bench output lacks rounds_ops_per_sec")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    if samples.is_empty() {
        return Err("node bench returned no rounds".into());
    }
    Ok(Some(stats(samples)))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then only smoke-test.
    let benching = std::env::args().any(|a| a == "--bench");

    let crypto = CallbackCrypto::new(TOKEN, KEY, CORP).unwrap();
    let body = format!(
        "<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><Encrypt><![CDATA[{ENCRYPT}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
    );
    let event = crypto.decrypt_event(SIG, TS, NONCE, &body).unwrap();
    assert!(matches!(event, CallbackEvent::KfMsgOrEvent(_)));
    let floor = Floor::new();
    black_box(floor.run());
    // wxkefu-rs decodes the EncodingAESKey strictly and rejects the vector's key (its unused
    // trailing bits are not zero, as in keys WeCom hands out); the same key with those bits
    // cleared is the same 32 bytes, so it decrypts the same ciphertext.
    let strict_key = format!("{}A", &KEY[..42]);
    let wxkefu = wxkefu_rs::callback::CallbackCrypto::new(TOKEN, strict_key, CORP).unwrap();
    let inner_xml = crypto.decrypt_field(ENCRYPT).unwrap();
    assert_eq!(
        wxkefu
            .verify_and_decrypt_xml(SIG, TS, NONCE, &body)
            .unwrap(),
        inner_xml.as_str()
    );
    if !benching {
        println!("callback_crypto: smoke test passed (run with `cargo bench` to measure)");
        return;
    }

    // For `valgrind --tool=callgrind --toggle-collect='*run_only*'`: one candidate, n times.
    if let Ok(only) = std::env::var("CALLBACK_BENCH_ONLY") {
        let n: usize = std::env::var("CALLBACK_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let f: &dyn Fn() -> usize = match only.as_str() {
            "ours" => &|| {
                let event = crypto.decrypt_event(black_box(SIG), TS, NONCE, black_box(&body));
                usize::from(event.is_ok())
            },
            "floor" => &|| usize::from(floor.run()),
            "wxkefu" => &|| {
                wxkefu
                    .verify_and_decrypt_xml(black_box(SIG), TS, NONCE, black_box(&body))
                    .map_or(0, |xml| xml.len())
            },
            other => panic!("CALLBACK_BENCH_ONLY: ours, floor or wxkefu, not {other}"),
        };
        black_box(run_only(f, n));
        return;
    }
    let ours_event = || {
        black_box(
            crypto
                .decrypt_event(black_box(SIG), TS, NONCE, black_box(&body))
                .unwrap(),
        );
    };
    let ours_strings = || {
        let xml = crypto
            .decrypt_message(black_box(SIG), TS, NONCE, black_box(&body))
            .unwrap();
        black_box(CallbackEvent::from_xml(&xml).unwrap());
    };
    let floor_only = || {
        black_box(floor.run());
    };
    let wxkefu_only = || {
        black_box(
            wxkefu
                .verify_and_decrypt_xml(black_box(SIG), TS, NONCE, black_box(&body))
                .unwrap(),
        );
    };
    let extract_only = || {
        black_box(extract_encrypt(black_box(&body)).unwrap());
    };
    let verify_only = || {
        crypto
            .verify_signature(black_box(SIG), TS, NONCE, black_box(ENCRYPT))
            .unwrap();
    };
    let decrypt_only = || {
        black_box(
            crypto
                .decrypt_field_with(black_box(ENCRYPT), |m| m.len())
                .unwrap(),
        );
    };
    let inner = crypto.decrypt_field(ENCRYPT).unwrap();
    let floor_sha1 = || {
        black_box(Sha1::digest(black_box(&floor.signature_input)));
    };
    let floor_base64 = || {
        let mut buf = [0u8; 1024];
        black_box(
            base64::engine::general_purpose::STANDARD
                .decode_slice(black_box(ENCRYPT), &mut buf)
                .unwrap(),
        );
        black_box(&buf);
    };
    let parse_only = || {
        black_box(CallbackEvent::from_xml(black_box(&inner)).unwrap());
    };

    // Warm up caches, branch predictors and the CPU clock.
    for f in [
        &ours_event as &dyn Fn(),
        &ours_strings,
        &floor_only,
        &wxkefu_only,
    ] {
        round(f);
    }
    let (mut a, mut a2, mut b, mut w) = (vec![], vec![], vec![], vec![]);
    // Per-round ratios (same round, neighbouring in time) as well as the best of each.
    let (mut vs_floor_rounds, mut vs_wxkefu_rounds) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        a.push(round(ours_event));
        b.push(round(floor_only));
        w.push(round(wxkefu_only));
        a2.push(round(ours_strings));
        let last = |v: &Vec<f64>| v[v.len() - 1];
        vs_floor_rounds.push(last(&b) / last(&a));
        vs_wxkefu_rounds.push(last(&a) / last(&w));
    }
    let (ours, ours_str, floor_s, wx) = (stats(a), stats(a2), stats(b), stats(w));
    let (vs_floor_r, vs_wxkefu_r) = (stats(vs_floor_rounds), stats(vs_wxkefu_rounds));
    // Where the time goes (console only).
    let parts: Vec<(&str, f64)> = [
        ("  part: extract <Encrypt>   ", &extract_only as &dyn Fn()),
        ("  part: verify signature    ", &verify_only),
        ("  part: decrypt_field       ", &decrypt_only),
        ("  part: parse inner XML     ", &parse_only),
        ("  floor part: SHA-1         ", &floor_sha1),
        ("  floor part: base64        ", &floor_base64),
    ]
    .into_iter()
    .map(|(name, f)| (name, (0..3).map(|_| round(f)).fold(0.0, f64::max)))
    .collect();
    let node = node_bench(&body);

    let ns = |ops: f64| 1e9 / ops;
    println!("callback_crypto (V6 kf_msg_or_event callback), best of {ROUNDS} rounds:");
    println!(
        "  ours decrypt_event          {:>12.0} callbacks/s  ({:>6.0} ns)  median {:.0}/s",
        ours.best,
        ns(ours.best),
        ours.median
    );
    println!(
        "  ours decrypt_message+parse  {:>12.0} callbacks/s  ({:>6.0} ns)",
        ours_str.best,
        ns(ours_str.best)
    );
    println!(
        "  floor sha1+base64+aes       {:>12.0} ops/s        ({:>6.0} ns)  median {:.0}/s",
        floor_s.best,
        ns(floor_s.best),
        floor_s.median
    );
    for (name, ops) in &parts {
        println!("{name}  {:>12.0} ops/s        ({:>6.0} ns)", ops, ns(*ops));
    }
    println!(
        "  wxkefu-rs verify_and_decrypt_xml {:>7.0} callbacks/s  ({:>6.0} ns)  median {:.0}/s",
        wx.best,
        ns(wx.best),
        wx.median
    );
    let vs_floor = floor_s.best / ours.best;
    println!(
        "  ours takes {vs_floor:.2}x the floor's time (goal <= 2x); per round median {:.2}x",
        vs_floor_r.median
    );
    let vs_wxkefu = ours.best / wx.best;
    println!(
        "  ours is {vs_wxkefu:.2}x wxkefu-rs (goal >= 1.5x); per round median {:.2}x, range {:.2}-{:.2}x",
        vs_wxkefu_r.median, vs_wxkefu_r.worst, vs_wxkefu_r.best
    );
    let node_line = match &node {
        Ok(Some(n)) => {
            println!(
                "  npm @wecom/crypto (node)    {:>12.0} callbacks/s  ({:>6.0} ns)  median {:.0}/s",
                n.best,
                ns(n.best),
                n.median
            );
            println!(
                "  ours is {:.1}x the npm package (goal >= 6x)",
                ours.best / n.best
            );
            Some(n)
        }
        Ok(None) => {
            println!("  npm @wecom/crypto: skipped (run `npm ci` in interop/)");
            None
        }
        Err(e) => {
            println!("  npm @wecom/crypto: failed: {e}");
            None
        }
    };

    let mut section = String::new();
    let ct_len = base64::engine::general_purpose::STANDARD
        .decode(ENCRYPT)
        .map_or(0, |ct| ct.len());
    section.push_str(&format!(
        "Command: `cargo bench -p wechat-kf --bench callback_crypto` (the npm column needs \
         `npm ci --prefix interop`).\n\n\
         Job: verify `msg_signature`, decrypt and parse one `kf_msg_or_event` callback (vector \
         V6: {ct_len}-byte ciphertext, {}-byte inner XML, {}-byte POST body). The floor runs only \
         the primitives every implementation needs on the same bytes, with the same crates: SHA-1 \
         of the signature input, base64 decode, AES-256-CBC decrypt. The npm figure is the \
         official `@wecom/crypto` package under node doing signature + decrypt + receive_id check \
         + regex extraction of the event fields (`interop/bench.js`). Rounds are interleaved; the \
         best of each counts. The machine is shared and noisy: repeated runs move the ratios by \
         about ±10%.\n\n",
        inner.len(),
        body.len()
    ));
    section.push_str("| Implementation | callbacks/s | ns/callback |\n|---|---:|---:|\n");
    section.push_str(&format!(
        "| wechat-kf `CallbackCrypto::decrypt_event` | {:.0} | {:.0} |\n",
        ours.best,
        ns(ours.best)
    ));
    section.push_str(&format!(
        "| wechat-kf `decrypt_message` + `CallbackEvent::from_xml` | {:.0} | {:.0} |\n",
        ours_str.best,
        ns(ours_str.best)
    ));
    section.push_str(&format!(
        "| floor: SHA-1 + base64 + AES-256-CBC only | {:.0} | {:.0} |\n",
        floor_s.best,
        ns(floor_s.best)
    ));
    section.push_str(&format!(
        "| `wxkefu-rs` 0.1.5 `verify_and_decrypt_xml` (no parse of the inner XML) | {:.0} | {:.0} |\n",
        wx.best,
        ns(wx.best)
    ));
    match node_line {
        Some(n) => section.push_str(&format!(
            "| npm `@wecom/crypto` (node {}) | {:.0} | {:.0} |\n",
            node_version(),
            n.best,
            ns(n.best)
        )),
        None => {
            section.push_str("| npm `@wecom/crypto` | not measured (node_modules missing) | |\n")
        }
    }
    section.push('\n');
    section.push_str(&format!(
        "* ours vs floor: **{vs_floor:.2}×** the floor's time per callback (goal ≤ 2×).\n"
    ));
    section.push_str(&format!(
        "* ours vs wxkefu-rs: **{vs_wxkefu:.2}×** its throughput (goal ≥ 1.5×).\n"
    ));
    if let Some(n) = node_line {
        section.push_str(&format!(
            "* ours vs npm: **{:.1}×** the npm package's throughput (goal ≥ 6×).\n",
            ours.best / n.best
        ));
    }
    section.push_str(&format!(
        "\nMeasured {} on {} ({} cores visible), best of {ROUNDS} rounds of {} ms.\n",
        today(),
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ROUND.as_millis()
    ));
    match write_section(&section) {
        Ok(path) => println!(
            "  wrote the `## Callback crypto` section of {}",
            path.display()
        ),
        Err(e) => println!("  could not update BENCHMARKS.md: {e}"),
    }
}

/// Replaces the body of `## Callback crypto` in BENCHMARKS.md, leaving other sections alone.
fn write_section(body: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    const HEADING: &str = "## Callback crypto\n";
    let start = text
        .find(HEADING)
        .ok_or("no `## Callback crypto` section")?
        + HEADING.len();
    let end = text[start..]
        .find("\n## ")
        .map_or(text.len(), |at| start + at + 1);
    let mut out = String::with_capacity(text.len() + body.len());
    out.push_str(&text[..start]);
    out.push('\n');
    out.push_str(body);
    if end < text.len() {
        out.push('\n');
    }
    out.push_str(&text[end..]);
    std::fs::write(&path, out).map_err(|e| e.to_string())?;
    Ok(path)
}

fn node_version() -> String {
    Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Today's UTC date as YYYY-MM-DD (civil-from-days, no date crate needed).
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
