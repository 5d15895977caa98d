//! `wechat-kf emulator`: start-up output, credentials, seed, bad input and graceful shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn spawn(args: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wechat-kf"))
        .arg("emulator")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 {
            break;
        }
        let done = line.starts_with("# control API");
        lines.push(line.trim_end().to_string());
        if done {
            break;
        }
    }
    (child, lines)
}

fn var<'a>(lines: &'a [String], name: &str) -> &'a str {
    let prefix = format!("export {name}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} not printed in {lines:?}"))
}

/// A minimal HTTP GET (the CLI crate has no HTTP client dependency).
fn http_get(base: &str, path: &str) -> String {
    let addr = base.strip_prefix("http://").expect("http base");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn interrupt(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn it_prints_usable_credentials_and_serves_gettoken() {
    let (mut child, lines) = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--corp-id",
        "wwclitest",
        "--secret",
        "s3cret",
    ]);
    let base = var(&lines, "WECHAT_KF_BASE_URL").to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_eq!(var(&lines, "WECHAT_KF_CORP_ID"), "wwclitest");
    assert_eq!(var(&lines, "WECHAT_KF_SECRET"), "s3cret");
    assert_eq!(var(&lines, "WECHAT_KF_ENCODING_AES_KEY").len(), 43);
    assert!(!var(&lines, "WECHAT_KF_CALLBACK_TOKEN").is_empty());
    let response = http_get(
        &base,
        "/cgi-bin/gettoken?corpid=wwclitest&corpsecret=s3cret",
    );
    assert!(response.contains("\"access_token\""), "{response}");
    interrupt(&mut child);
    let status = child.wait().expect("wait");
    assert!(status.success(), "graceful exit on Ctrl-C: {status:?}");
}

#[test]
fn a_seed_file_creates_accounts_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.toml");
    std::fs::write(
        &seed,
        "corp_id = \"wwfromseed\"\nsecret = \"seedsecret\"\n[[accounts]]\nopen_kfid = \"wkSeededAccount\"\nname = \"售后\"\nservicers = [{ userid = \"zhangsan\" }]\n",
    )
    .unwrap();
    let (mut child, lines) = spawn(&["--seed", seed.to_str().unwrap(), "--secret", "flagsecret"]);
    assert_eq!(var(&lines, "WECHAT_KF_CORP_ID"), "wwfromseed");
    assert_eq!(var(&lines, "WECHAT_KF_SECRET"), "flagsecret");
    assert!(
        lines.iter().any(|l| l.contains("wkSeededAccount")),
        "{lines:?}"
    );
    let base = var(&lines, "WECHAT_KF_BASE_URL").to_string();
    let state = http_get(&base, "/emulator/state");
    assert!(state.contains("zhangsan"), "{state}");
    interrupt(&mut child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_input_fails_with_one_line() {
    for args in [
        vec!["--aes-key", "short"],
        vec!["--seed", "/nonexistent/seed.toml"],
        vec!["--callback-url", "ftp://x"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wechat-kf"))
            .arg("emulator")
            .args(&args)
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("wechat-kf: emulator:"), "{stderr}");
    }
}
