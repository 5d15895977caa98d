//! `wechat-kf callback …` run as a process: the spec vectors through the command line, one-line
//! failures with the official code, exit statuses.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const V1: [&str; 6] = [
    "--token",
    "QDG6eK",
    "--aes-key",
    "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
    "--corp-id",
    "wx5823bf96d3bd56c7",
];
const V1A_ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
const V1A_ECHOSTR_SENT: &str = "P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D";
const V6_BODY: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[7ho9XWI/HTOA1L6oduAxX9LNhMaFCp7Yre3u1FOSfYIg3jeMdjD56prUxXn28j2RaWf71RJNVKJGSi6tDj+n9MIUMb8aHHLy5IhCeZq25MNftOjmQQKIdIBNfVs9CQJxJAWFGME43hPRGHRg3rJUHhJ2zy4OFnSLetV5qaI96ImReosw9YSZ9F8mRSR6r5c0W4Xp7yVrt1rUDvQ0ZnjfIPNwSmd8F1iwQa1/kODyCHXN4ImnEx14qLLALPTqYTWlIP1Xs7Iy0H5/OUUY7EoBZIq/zkQ4+zMijai4xA6SFOrmHe5Jpo4Z3DBuyrqNWliihdWwqM7n10flqHF9R7wKDO5E8veJD9qDgBNIfOxvQt5e0m1+ZYGOv2ORFEGZJRx80Eo3Z3TGZcUYvd8CyzwoWAwrt5nzGU08bfDvorCYoAwCq1IKTb38L0K1EOm8PMToxdS+cdAsgUNQBNhT2j5V5w==]]></Encrypt></xml>";
const V6_SIG: &str = "467bf8f952ba7e3bac9e4ef87bf2b307c1b5bf1a";
const V6_PLAIN: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[ENCTESTTOKEN0000000000000000000001]]></Token><OpenKfId><![CDATA[wkTESTOPENKFID000000000000000001]]></OpenKfId></xml>";

fn wechat_kf() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wechat-kf"));
    for var in [
        "WECHAT_KF_CALLBACK_TOKEN",
        "WECHAT_KF_ENCODING_AES_KEY",
        "WECHAT_KF_TOKEN",
        "WECHAT_KF_AES_KEY",
        "WECHAT_KF_CORP_ID",
        "WECHAT_KF_CONFIG",
        "RUST_BACKTRACE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("the binary exits")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// Asserts exit status 1 and exactly one stderr line equal to `line`.
fn assert_fails_with(out: &Output, line: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    assert_eq!(stderr(out), format!("wechat-kf: {line}\n"));
    assert!(out.stdout.is_empty());
}

fn verify_url(echostr: &str, nonce: &str) -> Output {
    run(
        wechat_kf().args(["callback", "verify-url"]).args(V1).args([
            "--msg-signature",
            "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
            "--timestamp",
            "1409659589",
            "--nonce",
            nonce,
            "--echostr",
            echostr,
        ]),
        "",
    )
}

#[test]
fn verify_url_prints_the_echo_for_the_decoded_echostr() {
    let out = verify_url(V1A_ECHOSTR, "263014780");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1616140317555161061\n");
}

#[test]
fn verify_url_url_decodes_an_echostr_as_sent() {
    let out = verify_url(V1A_ECHOSTR_SENT, "263014780");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1616140317555161061\n");
}

#[test]
fn verify_url_fails_with_one_line_naming_the_signature_check() {
    let out = verify_url(V1A_ECHOSTR, "263014781");
    assert_fails_with(&out, "signature mismatch (-40001)");
}

#[test]
fn an_invalid_key_fails_with_code_40004() {
    let out = run(
        wechat_kf().args([
            "callback",
            "verify-url",
            "--token",
            "t",
            "--aes-key",
            "short",
            "--corp-id",
            "c",
            "--msg-signature",
            "x",
            "--timestamp",
            "1",
            "--nonce",
            "2",
            "--echostr",
            "e",
        ]),
        "",
    );
    assert_fails_with(
        &out,
        "invalid EncodingAESKey: expected 43 base64 characters (-40004)",
    );
}

fn decrypt_v6(extra: &[&str], stdin: &str) -> Output {
    run(
        wechat_kf()
            .args(["callback", "decrypt"])
            .args(V1)
            .args([
                "--msg-signature",
                V6_SIG,
                "--timestamp",
                "1700000000",
                "--nonce",
                "1234567890",
            ])
            .args(extra),
        stdin,
    )
}

#[test]
fn decrypt_reads_the_body_from_stdin_and_prints_the_inner_xml() {
    let out = decrypt_v6(&[], V6_BODY);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{V6_PLAIN}\n"));
}

#[test]
fn decrypt_reads_the_body_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body.xml");
    std::fs::write(&path, format!("{V6_BODY}\n")).unwrap();
    let out = decrypt_v6(&[path.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{V6_PLAIN}\n"));
}

#[test]
fn decrypt_with_event_prints_the_parsed_event_as_json() {
    let out = decrypt_v6(&["--event"], V6_BODY);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "type": "kf_msg_or_event",
            "to_user_name": "wx5823bf96d3bd56c7",
            "create_time": 1700000000,
            "token": "ENCTESTTOKEN0000000000000000000001",
            "open_kfid": "wkTESTOPENKFID000000000000000001",
        })
    );
}

/// `callback decrypt` of the V6 body with the given command (configured elsewhere).
fn decrypt_v6_configured(cmd: &mut Command) -> Output {
    run(
        cmd.args([
            "callback",
            "decrypt",
            "--msg-signature",
            V6_SIG,
            "--timestamp",
            "1700000000",
            "--nonce",
            "1234567890",
        ]),
        V6_BODY,
    )
}

#[test]
fn decrypt_takes_the_configuration_from_the_variables_serve_reads() {
    let out = decrypt_v6_configured(
        wechat_kf()
            .env("WECHAT_KF_CALLBACK_TOKEN", "QDG6eK")
            .env(
                "WECHAT_KF_ENCODING_AES_KEY",
                "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            )
            .env("WECHAT_KF_CORP_ID", "wx5823bf96d3bd56c7"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{V6_PLAIN}\n"));
}

#[test]
fn decrypt_takes_the_configuration_from_the_serve_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kf.toml");
    std::fs::write(
        &path,
        "[wechat]\ncorp_id = \"wx5823bf96d3bd56c7\"\nsecret = \"s\"\ncallback_token = \"QDG6eK\"\n\
         encoding_aes_key = \"jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C\"\n",
    )
    .unwrap();
    let out = decrypt_v6_configured(wechat_kf().env("WECHAT_KF_CONFIG", &path));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{V6_PLAIN}\n"));
    // A missing setting is one line naming where it may come from, exit code 2.
    std::fs::write(&path, "[wechat]\ncorp_id = \"wx5823bf96d3bd56c7\"\n").unwrap();
    let out = decrypt_v6_configured(wechat_kf().env("WECHAT_KF_CONFIG", &path));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "wechat-kf: no callback token: use --token, WECHAT_KF_CALLBACK_TOKEN or \
         wechat.callback_token in --config\n"
    );
}

#[test]
fn decrypt_still_reads_the_deprecated_variable_names() {
    let out = decrypt_v6_configured(
        wechat_kf()
            .env("WECHAT_KF_TOKEN", "QDG6eK")
            .env(
                "WECHAT_KF_AES_KEY",
                "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            )
            .env("WECHAT_KF_CORP_ID", "wx5823bf96d3bd56c7"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{V6_PLAIN}\n"));
}

#[test]
fn decrypt_of_a_body_without_encrypt_fails_with_code_40002() {
    let out = decrypt_v6(&[], "<xml><ToUserName>x</ToUserName></xml>");
    assert_fails_with(&out, "malformed XML: missing <Encrypt> element (-40002)");
}

#[test]
fn decrypt_for_another_corp_fails_with_code_40005() {
    let mut cmd = wechat_kf();
    cmd.args(["callback", "decrypt"]).args(&V1[..4]).args([
        "--corp-id",
        "ww0000000000000000",
        "--msg-signature",
        V6_SIG,
        "--timestamp",
        "1700000000",
        "--nonce",
        "1234567890",
    ]);
    assert_fails_with(
        &run(&mut cmd, V6_BODY),
        "receive_id mismatch (-40005): the payload decrypted but names another receiver, so the \
         CorpID (--corp-id, WECHAT_KF_CORP_ID) is probably wrong",
    );
}

#[test]
fn a_wrong_encoding_aes_key_after_a_valid_signature_is_named_as_the_likely_mistake() {
    let mut cmd = wechat_kf();
    cmd.args(["callback", "decrypt"]).args([
        "--token",
        "QDG6eK",
        // A well-formed key, but not the one the body was encrypted with.
        "--aes-key",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "--corp-id",
        "wx5823bf96d3bd56c7",
        "--msg-signature",
        V6_SIG,
        "--timestamp",
        "1700000000",
        "--nonce",
        "1234567890",
    ]);
    let out = run(&mut cmd, V6_BODY);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = stderr(&out);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("wechat-kf: "), "{line}");
    assert!(line.contains("(-40008)"), "the official code: {line}");
    assert!(
        line.contains(
            "the EncodingAESKey (--aes-key, WECHAT_KF_ENCODING_AES_KEY) is probably wrong"
        ),
        "{line}"
    );
}

#[test]
fn encrypt_with_a_fixed_random_reproduces_v2c_exactly() {
    let input = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
    let expected = "<xml>\n<Encrypt><![CDATA[9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3]]></Encrypt>\n<MsgSignature><![CDATA[407518b7649e86ef23978113f92d27afa9296533]]></MsgSignature>\n<TimeStamp>1411525903</TimeStamp>\n<Nonce><![CDATA[461056294]]></Nonce>\n</xml>";
    let out = run(
        wechat_kf().args([
            "callback",
            "encrypt",
            "--token",
            "123456",
            "--aes-key",
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            "--corp-id",
            "wx49f0ab532d5d035a",
            "--random",
            "1234567890123456",
            "--timestamp",
            "1411525903",
            "--nonce",
            "461056294",
        ]),
        input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{expected}\n"));
}

#[test]
fn encrypt_with_defaults_round_trips_through_decrypt() {
    let out = run(
        wechat_kf()
            .args(["callback", "encrypt"])
            .args(V1)
            .args(["--message", "你好, callback"]),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let reply = stdout(&out);
    let field = |open: &str, close: &str| {
        let start = reply.find(open).unwrap() + open.len();
        let end = start + reply[start..].find(close).unwrap();
        reply[start..end].to_owned()
    };
    let sig = field("<MsgSignature><![CDATA[", "]]>");
    let ts = field("<TimeStamp>", "</TimeStamp>");
    let nonce = field("<Nonce><![CDATA[", "]]>");
    assert!(ts.parse::<u64>().unwrap() > 1_700_000_000);
    assert!(!nonce.is_empty());
    let out = run(
        wechat_kf().args(["callback", "decrypt"]).args(V1).args([
            "--msg-signature",
            &sig,
            "--timestamp",
            &ts,
            "--nonce",
            &nonce,
        ]),
        &reply,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "你好, callback\n");
}

#[test]
fn encrypt_rejects_a_random_prefix_of_the_wrong_length() {
    let out = run(
        wechat_kf().args(["callback", "encrypt"]).args(V1).args([
            "--random",
            "short",
            "--message",
            "x",
        ]),
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invocation error: {}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out),
        "wechat-kf: --random must be exactly 16 bytes\n"
    );
}

#[test]
fn an_unreadable_body_file_is_an_input_error() {
    let out = run(
        wechat_kf()
            .args(["callback", "decrypt"])
            .args(V1)
            .args([
                "--msg-signature",
                V6_SIG,
                "--timestamp",
                "1",
                "--nonce",
                "1",
            ])
            .arg("/nonexistent/body.xml"),
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("wechat-kf: cannot read /nonexistent/body.xml"));
}

#[test]
fn the_callback_settings_are_listed_apart_from_the_commands_own_options() {
    let out = run(wechat_kf().args(["callback", "decrypt", "--help"]), "");
    let help = stdout(&out);
    let settings = help.find("Callback settings:").expect("a heading");
    let (own, settings) = help.split_at(settings);
    assert!(own.contains("  --msg-signature <"), "{help}");
    assert!(!settings.contains("--msg-signature"), "{help}");
    assert!(
        settings.contains("--aes-key") && settings.contains("--token"),
        "{help}"
    );
}
