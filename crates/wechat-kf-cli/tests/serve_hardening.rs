//! The hostile campaign of issue 18 against the real `wechat-kf serve` binary (the in-process
//! parts are in `wechat-kf-service/tests/service/hardening.rs`): half-sent requests beyond the
//! file-descriptor limit, SIGTERM with a half-sent request, and a full disk. Each prints its
//! figures (`docs/hardening.md` collects them). Loopback only; bounded in time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_test_support::{Spawned, require_command};

mod common;
use common::{binary, serve_available, serve_url};

/// A sandbox `serve` (no credentials) with `config` as its file, under `prlimit` when
/// `nofile` is given.
fn spawn_sandbox(config: &Path, nofile: Option<u32>) -> Spawned {
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary());
            c
        }
        None => Command::new(binary()),
    };
    command
        .arg("serve")
        .args(["--config", config.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    Spawned::spawn(&mut command)
}

/// `GET /healthz` on a fresh connection; how long the answer took, `None` when there was none
/// within 3 s.
async fn probe(addr: &str) -> Option<Duration> {
    let started = Instant::now();
    // Generous: the question is whether health answers at all, and CI machines are loaded.
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()
    .flatten()?;
    String::from_utf8_lossy(&answer)
        .starts_with("HTTP/1.1 200")
        .then(|| started.elapsed())
}

/// The median of some durations.
fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

/// Raises this process's own soft descriptor limit (the attack needs more than 1,024 sockets);
/// whether it has enough now.
fn raise_own_nofile(needed: u32) -> bool {
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={}:", needed)])
        .status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u32>().ok())
        .is_some_and(|soft| soft >= needed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_beyond_the_descriptor_limit_never_make_health_unreachable() {
    if !serve_available() || !require_command("prlimit") {
        return;
    }
    const ATTACK: usize = 1100;
    if !wechat_kf_test_support::require(
        raise_own_nofile(4096),
        "this test process cannot open 1,100 sockets (ulimit -n below 4096)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kf.toml");
    // The defaults but a shorter read timeout, so the test ends sooner; long enough that no
    // attacking connection times out while the attack is still opening them on a loaded
    // machine (which would lift the cap and reach it again).
    std::fs::write(&config, "[http]\nread_timeout = \"8s\"\n").unwrap();
    let mut serve = spawn_sandbox(&config, Some(1024));
    let url = serve_url(&mut serve).await;
    let addr = url.trim_start_matches("http://").to_owned();

    let mut baseline = Vec::new();
    for _ in 0..20 {
        baseline.push(
            probe(&addr)
                .await
                .expect("healthz answers before the attack"),
        );
    }
    // 1,100 connections, half with headers cut short, half with a body cut short.
    let mut held = Vec::with_capacity(ATTACK);
    for i in 0..ATTACK {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            continue;
        };
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
        } else {
            b"POST /callback?msg_signature=a&timestamp=1&nonce=1 HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 4000\r\n\r\n<xml>"
        };
        let _ = stream.write_all(partial).await;
        held.push(stream);
    }
    let mut under_attack = Vec::new();
    let mut missed = 0;
    for _ in 0..20 {
        match probe(&addr).await {
            Some(d) => under_attack.push(d),
            None => missed += 1,
        }
    }
    // After the read timeout every attacking connection is closed.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut still_open = 0;
    for stream in &mut held {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // A 4xx answer to a body cut short, then the close.
            Ok(Ok(_)) => {
                if !matches!(
                    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                ) {
                    still_open += 1;
                }
            }
            Err(_) => still_open += 1,
        }
    }
    drop(held);
    let after = probe(&addr).await;
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let _ = serve.wait();
    let log = serve.transcript();
    eprintln!(
        "half-sent flood under nofile=1024: {ATTACK} connections; healthz answered {}/20 \
         (median {:?} vs {:?} before: {:.1}x); {still_open} still open after the read timeout",
        under_attack.len(),
        median(under_attack.clone()),
        median(baseline.clone()),
        median(under_attack.clone()).as_secs_f64() / median(baseline).as_secs_f64().max(1e-6),
    );
    assert_eq!(
        missed, 0,
        "healthz went unanswered under the attack:\n{log}"
    );
    assert_eq!(still_open, 0, "connections outlived the read timeout");
    assert!(after.is_some(), "healthz after the attack");
    assert!(
        !log.contains("Too many open files"),
        "the descriptor limit was reached:\n{log}"
    );
    // One line per time the cap is reached (not one per shed connection): once, or again if
    // the cap was lifted in between on a slow machine.
    let reached = log.matches("connection limit reached").count();
    assert!(
        (1..=3).contains(&reached),
        "one line when the cap is reached, not one per connection:\n{log}"
    );
}

/// Starts a sandbox `serve`, optionally leaves a request half-sent, sends SIGTERM; how long
/// the process took to exit, and its status.
async fn stop_with(half_sent: bool) -> (Duration, Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kf.toml");
    std::fs::write(
        &config,
        "[http]\nread_timeout = \"60s\"\nshutdown_grace = \"1s\"\n",
    )
    .unwrap();
    let mut serve = spawn_sandbox(&config, None);
    let url = serve_url(&mut serve).await;
    let addr = url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    if half_sent {
        // A body cut short (its handler is reading it) and headers cut short.
        let mut body = TcpStream::connect(&addr).await.unwrap();
        body.write_all(
            b"POST /callback?msg_signature=a&timestamp=1&nonce=1 HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 4000\r\n\r\n<xml>",
        )
        .await
        .unwrap();
        let mut headers = TcpStream::connect(&addr).await.unwrap();
        headers
            .write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .unwrap();
        held.push(body);
        held.push(headers);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop within 20 s of SIGTERM:\n{}",
            serve.transcript()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (started.elapsed(), status, serve.transcript())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_sent_request_stops_within_the_shutdown_grace() {
    if !serve_available() {
        return;
    }
    let (idle, idle_status, _) = stop_with(false).await;
    let (held, held_status, log) = stop_with(true).await;
    eprintln!(
        "SIGTERM: {idle:?} idle, {held:?} with a half-sent request and headers \
         (shutdown_grace 1 s; {:.1}x)",
        held.as_secs_f64() / idle.as_secs_f64().max(1e-6)
    );
    assert_eq!((idle_status, held_status), (Some(0), Some(0)), "{log}");
    // The grace (1 s) and the rest of the shutdown; never the 60 s read timeout.
    assert!(held < Duration::from_secs(6), "{held:?}:\n{log}");
}

/// Mounts a tmpfs of `size` on `dir`; false (and a message) where this process may not.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
    }
    mounted
}

/// Unmounts the tmpfs when dropped.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file; the file.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    path
}

async fn emulator() -> RunningEmulator {
    wechat_kf_test_support::TestEmulator::new()
        .unlimited()
        .quick_callbacks()
        .start()
        .await
}

async fn readyz(url: &str) -> (u16, String) {
    match reqwest::get(format!("{url}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

fn sync_calls(emu: &RunningEmulator) -> u64 {
    emu.emulator().state_snapshot()["counters"]["calls"]["kf/sync_msg"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_backs_off_reports_not_ready_once_and_recovers() {
    if !serve_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    if !mount_tmpfs(&disk, "4m") {
        return;
    }
    let _mounted = Mounted(&disk);
    let emu = emulator().await;
    let e = emu.emulator().config().clone();
    let kf = emu.emulator().create_account("full-disk");
    let db = disk.join("kf.db");
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--db", db.to_str().unwrap()])
        .env("WECHAT_KF_CORP_ID", &e.corp_id)
        .env("WECHAT_KF_SECRET", &e.secret)
        .env("WECHAT_KF_CALLBACK_TOKEN", &e.callback_token)
        .env("WECHAT_KF_ENCODING_AES_KEY", &e.encoding_aes_key)
        .env("WECHAT_KF_BASE_URL", emu.base_url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let mut serve = Spawned::spawn(&mut command);
    let url = serve_url(&mut serve).await;
    emu.emulator()
        .set_callback_url(Some(format!("{url}/callback")));
    assert_eq!(readyz(&url).await.0, 200);

    let filler = fill(&disk);
    let before = sync_calls(&emu);
    let started = Instant::now();
    // Messages whose pages cannot be stored (long enough to need new pages of the file).
    let long = "满".repeat(600);
    for i in 0..40 {
        emu.emulator()
            .customer_send(
                serde_json::json!({"open_kfid": kf, "external_userid": format!("wm{i}"),
                "msgtype": "text", "text": {"content": long}}),
            )
            .unwrap();
    }
    let mut not_ready = None;
    while started.elapsed() < Duration::from_secs(10) {
        let (status, body) = readyz(&url).await;
        if status == 503 {
            not_ready = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls_while_full = sync_calls(&emu) - before;
    let body = not_ready.unwrap_or_else(|| panic!("never not ready:\n{}", serve.transcript()));
    assert!(body.contains("store: cannot write"), "{body}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while readyz(&url).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after the disk was freed:\n{}",
            serve.transcript()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let _ = serve.wait();
    let log = serve.transcript();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("the store cannot write"))
        .count();
    eprintln!(
        "full disk: {calls_while_full} sync_msg calls in 10 s ({:.1}/s; the issue measured 2.6/s \
         without backoff); {errors} ERROR line(s) for the outage",
        calls_while_full as f64 / 10.0
    );
    assert_eq!(errors, 1, "one ERROR line per state change:\n{log}");
    assert!(log.contains("the store writes again"), "{log}");
    assert!(
        calls_while_full <= 8,
        "{calls_while_full} calls: no backoff"
    );
    emu.shutdown().await;
}
