//! `wechat-kf decode` end to end: the built binary on fixture input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wechat-kf/tests/fixtures")
}

fn decode(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wechat-kf"))
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn all_fixture_messages() -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[test]
fn decoding_a_response_prints_each_message_as_a_line_equal_to_its_input() {
    let messages = all_fixture_messages();
    let body = format!(
        r#"{{"errcode":0,"errmsg":"ok","next_cursor":"c","has_more":0,"msg_list":[{}]}}"#,
        messages.join(",")
    );
    let out = decode(&[], &body);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), messages.len());
    for (line, input) in lines.iter().zip(&messages) {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let b: serde_json::Value = serde_json::from_str(input).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn summary_counts_kinds_sorted_and_exits_1_when_an_item_is_invalid() {
    let text = std::fs::read_to_string(fixtures().join("messages/text__spec.json")).unwrap();
    let event = std::fs::read_to_string(fixtures().join("messages/event-msg_send_fail__spec.json"))
        .unwrap();
    let unknown =
        std::fs::read_to_string(fixtures().join("messages/unknown-sticker__payload.json")).unwrap();
    let unknown_event = std::fs::read_to_string(
        fixtures().join("messages/unknown-event-customer_rated__future.json"),
    )
    .unwrap();
    let bad =
        std::fs::read_to_string(fixtures().join("invalid/location_latitude_not_a_number.json"))
            .unwrap();
    let array = format!("[{text},{event},{text},{unknown},{unknown_event},{bad}]");
    let out = decode(&["--summary"], &array);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "event:msg_send_fail\t1\ninvalid:location\t1\ntext\t2\nunknown:event:customer_rated\t1\nunknown:sticker\t1\n"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("location.latitude"), "{stderr}");
    // Numbered from 0, as the webhook body's `invalid` list numbers the same array.
    assert!(stderr.starts_with("wechat-kf: item 5 ("), "{stderr}");
}

#[test]
fn the_help_says_what_decode_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_wechat-kf"))
        .args(["decode", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(help.contains("re-encoded from the typed model"), "{help}");
    assert!(help.contains("equals the input as JSON"), "{help}");
    assert!(help.contains("counted from 0"), "{help}");
}

#[test]
fn json_lines_input_is_accepted_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messages.jsonl");
    let text = std::fs::read_to_string(fixtures().join("messages/text__spec.json")).unwrap();
    let image = std::fs::read_to_string(fixtures().join("messages/image__spec.json")).unwrap();
    std::fs::write(&path, format!("{text}\n\n{image}\n")).unwrap();
    let out = decode(&["--summary", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "image\t1\ntext\t1\n"
    );
}

#[test]
fn unreadable_input_exits_2_with_one_line_naming_the_problem() {
    for input in ["", "{not json", "[1,2", "\u{feff}garbage"] {
        let out = decode(&[], input);
        assert_eq!(out.status.code(), Some(2), "{input:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("wechat-kf: "), "{stderr}");
    }
    let out = decode(&["/nonexistent/file.json"], "");
    assert_eq!(out.status.code(), Some(2));
}
