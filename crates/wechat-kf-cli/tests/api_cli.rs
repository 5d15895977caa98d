//! The operator commands (`token`, `accounts`, `sync`, `send`, ...) run as a real process against
//! an in-process emulator.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wechat_kf_emulator::{Config, RunningEmulator, Seed, SeedAccount, SeedServicer};

const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

struct Env {
    running: RunningEmulator,
    corp_id: String,
    secret: String,
}

async fn start() -> Env {
    let mut config = Config::generated();
    config.sync_without_token_per_minute = 0;
    config.seed = Some(Seed {
        accounts: vec![SeedAccount {
            open_kfid: Some("wkCli".into()),
            name: "命令行".into(),
            managed_by_api: true,
            servicers: vec![SeedServicer {
                userid: "zhangsan".into(),
                status: 0,
                stop_type: 0,
                activated: true,
            }],
            department_ids: vec![],
        }],
        ..Seed::default()
    });
    let corp_id = config.corp_id.clone();
    let secret = config.secret.clone();
    let running = wechat_kf_test_support::TestEmulator::with_config(config)
        .start()
        .await;
    Env {
        running,
        corp_id,
        secret,
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Env {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wechat-kf"));
        command
            .args(args)
            .env_remove("WECHAT_KF_CONFIG")
            .env("WECHAT_KF_CORP_ID", &self.corp_id)
            .env("WECHAT_KF_SECRET", &self.secret)
            .env("WECHAT_KF_BASE_URL", self.running.base_url())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().await.unwrap();
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "{args:?} failed: {}", out.stderr);
        out.stdout
    }

    fn customer_says(&self, user: &str, text: &str) -> String {
        self.running
            .emulator()
            .customer_send(json!({"open_kfid":"wkCli","external_userid":user,"msgtype":"text","text":{"content":text}}))
            .unwrap()
            .remove(0)
    }
}

/// One `wechat-kf: ` line on stderr and exit `code`: 1 when WeChat or the network said no, 2
/// when the invocation or its input was wrong.
fn assert_one_line_error(out: &Output, code: i32) {
    assert_eq!(
        out.code, code,
        "stdout: {} stderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(out.stderr.starts_with("wechat-kf: "), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("backtrace"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_the_expiry_and_shows_the_token_only_when_asked() {
    let env = start().await;
    let out = env.run(&["token"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("expires_at="));
    assert!(out.stderr.contains("valid until"));
    let shown = env.ok(&["token", "--show"]).await;
    let token = shown.trim();
    assert!(!token.is_empty());
    assert!(!out.stdout.contains(token) && !out.stderr.contains(token));
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_can_come_from_the_serve_config_file_and_their_absence_is_one_line() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kf.toml");
    // The file `serve` reads: the operator commands take its [wechat] section.
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n[wechat]\ncorp_id = \"{}\"\nsecret = \"{}\"\nbase_url = \"{}\"\n[webhook]\nurl = \"http://127.0.0.1:1/hook\"\n",
            env.corp_id,
            env.secret,
            env.running.base_url()
        ),
    )
    .unwrap();
    let out = env
        .command(&["accounts", "list", "--config", path.to_str().unwrap()])
        .env_remove("WECHAT_KF_CORP_ID")
        .env_remove("WECHAT_KF_SECRET")
        .env_remove("WECHAT_KF_BASE_URL")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("wkCli"));

    let out = env
        .command(&["accounts", "list"])
        .env_remove("WECHAT_KF_SECRET")
        .output()
        .await
        .unwrap();
    let out = Output {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert_one_line_error(&out, 2);
    assert!(out.stderr.contains("no secret"));

    std::fs::write(&path, "corp_id = 1\n").unwrap();
    let out = env
        .run(&["accounts", "list", "--config", path.to_str().unwrap()])
        .await;
    assert_one_line_error(&out, 2);
    // The old flat file is refused with where its keys go now, and where they were.
    assert!(
        out.stderr.contains("kf.toml:1:1: corp_id"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("[wechat]"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_and_contact_links_are_managed_from_the_command_line() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let avatar = dir.path().join("avatar.png");
    std::fs::write(&avatar, PNG).unwrap();
    let media_id = env
        .ok(&[
            "media",
            "upload",
            "--type",
            "image",
            avatar.to_str().unwrap(),
        ])
        .await;
    let open_kfid = env
        .ok(&[
            "accounts",
            "add",
            "--name",
            "新客服",
            "--media-id",
            media_id.trim(),
        ])
        .await;
    let open_kfid = open_kfid.trim();
    env.ok(&[
        "accounts",
        "update",
        "--open-kfid",
        open_kfid,
        "--name",
        "改名",
    ])
    .await;
    let list = env.ok(&["accounts", "list"]).await;
    let accounts: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        accounts
            .iter()
            .any(|a| a["open_kfid"] == open_kfid && a["name"] == "改名")
    );
    let url = env
        .ok(&["contact-way", "--open-kfid", open_kfid, "--scene", "s1"])
        .await;
    assert!(url.trim().starts_with("http"));
    env.ok(&["accounts", "del", "--open-kfid", open_kfid]).await;
    let out = env
        .run(&["accounts", "del", "--open-kfid", open_kfid])
        .await;
    assert_one_line_error(&out, 1);
    assert!(out.stderr.contains("errcode 95"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_prints_every_message_exactly_as_received_and_resumes_from_a_cursor() {
    let env = start().await;
    let first = env.customer_says("wmAlice", "你好");
    env.running
        .emulator()
        .customer_send(json!({"open_kfid":"wkCli","external_userid":"wmAlice","msgtype":"location","location":{"latitude":"north"}}))
        .unwrap();
    for i in 0..5 {
        env.customer_says("wmBob", &format!("message {i}"));
    }
    let out = env
        .run(&["sync", "--open-kfid", "wkCli", "--limit", "3"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        7,
        "6 messages + 1 undecodable item: {}",
        out.stdout
    );
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed[0]["msgid"], first.as_str());
    assert_eq!(parsed[0]["text"]["content"], "你好");
    assert!(
        out.stdout.contains("\"north\""),
        "the undecodable item is printed too"
    );
    assert!(out.stderr.contains("did not decode"));
    assert!(out.stderr.contains("page 3:"), "{}", out.stderr);
    let cursor = out
        .stderr
        .lines()
        .last()
        .unwrap()
        .rsplit("next cursor: ")
        .next()
        .unwrap()
        .to_owned();
    assert!(!cursor.is_empty());
    let newer = env.customer_says("wmAlice", "还有一个问题");
    let again = env
        .ok(&["sync", "--open-kfid", "wkCli", "--cursor", &cursor])
        .await;
    let lines: Vec<Value> = again
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["msgid"], newer.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_follow_keeps_printing_new_messages() {
    let env = start().await;
    env.customer_says("wmAlice", "first");
    let mut child = env
        .command(&[
            "sync",
            "--open-kfid",
            "wkCli",
            "--follow",
            "--interval",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    async fn read(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .unwrap()
    }
    let line = read(&mut lines).await;
    assert!(line.contains("first"));
    env.customer_says("wmAlice", "second");
    let line = read(&mut lines).await;
    assert!(line.contains("second"));
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn send_recall_and_state_work_from_the_command_line() {
    let env = start().await;
    env.customer_says("wmCarol", "hi");
    let msgid = env
        .ok(&[
            "send",
            "--open-kfid",
            "wkCli",
            "--to",
            "wmCarol",
            "text",
            "你好",
        ])
        .await;
    env.ok(&["recall", "--open-kfid", "wkCli", "--msgid", msgid.trim()])
        .await;
    let menu = env
        .ok(&[
            "send",
            "--open-kfid",
            "wkCli",
            "--to",
            "wmCarol",
            "--msgid",
            "menu-1",
            "menu",
            "--head",
            "请选择",
            "--item",
            "click:101:转人工",
            "--item",
            "view:FAQ:https://example.com/faq",
            "--item",
            "text:9:00-18:00",
        ])
        .await;
    assert_eq!(menu.trim(), "menu-1");
    env.ok(&[
        "send",
        "--open-kfid",
        "wkCli",
        "--to",
        "wmCarol",
        "location",
        "--latitude",
        "-23.5",
        "--longitude",
        "113.2",
        "--name",
        "门店",
    ])
    .await;
    let outbox = env
        .running
        .emulator()
        .outbox(Some("wkCli"), Some("wmCarol"));
    let menu_request = &outbox["messages"][1]["request"];
    assert_eq!(
        menu_request["msgmenu"]["list"][1]["view"]["url"],
        "https://example.com/faq"
    );
    assert_eq!(
        outbox["messages"][2]["request"]["location"]["latitude"],
        -23.5
    );

    // Rejected locally: one line, exit 2 (the input was wrong), nothing sent.
    let out = env
        .run(&[
            "send",
            "--open-kfid",
            "wkCli",
            "--to",
            "wmCarol",
            "text",
            "",
        ])
        .await;
    assert_one_line_error(&out, 2);
    assert!(out.stderr.contains("text.content"));

    let state = env
        .ok(&[
            "state",
            "get",
            "--open-kfid",
            "wkCli",
            "--external-userid",
            "wmCarol",
        ])
        .await;
    let state: Value = serde_json::from_str(state.trim()).unwrap();
    assert_eq!(state["service_state"], 1);
    let code = env
        .ok(&[
            "state",
            "trans",
            "--open-kfid",
            "wkCli",
            "--external-userid",
            "wmCarol",
            "--state",
            "3",
            "--servicer-userid",
            "zhangsan",
        ])
        .await;
    assert!(!code.trim().is_empty(), "a connect msg_code is printed");
    let out = env
        .run(&[
            "send",
            "--open-kfid",
            "wkCli",
            "--to",
            "wmCarol",
            "text",
            "still there?",
        ])
        .await;
    assert_one_line_error(&out, 1);
    assert!(out.stderr.contains("95018"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn servicers_customers_and_media_commands_print_json_and_files() {
    let env = start().await;
    let added = env
        .ok(&[
            "servicers",
            "add",
            "--open-kfid",
            "wkCli",
            "--userid",
            "lisi",
            "--department-id",
            "5",
        ])
        .await;
    assert_eq!(added.lines().count(), 2);
    let list = env.ok(&["servicers", "list", "--open-kfid", "wkCli"]).await;
    assert!(list.contains("\"lisi\"") && list.contains("\"department_id\":5"));
    env.ok(&[
        "servicers",
        "del",
        "--open-kfid",
        "wkCli",
        "--userid",
        "lisi",
    ])
    .await;

    env.running
        .emulator()
        .customer_send(json!({"open_kfid":"wkCli","external_userid":"wmDan","msgtype":"text","text":{"content":"hi"},"nickname":"丹"}))
        .unwrap();
    let out = env
        .run(&["customers", "get", "wmDan", "--customer", "wmNobody"])
        .await;
    // The known customer is printed; the unknown one is named and the command fails.
    let customer: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(customer["nickname"], "丹");
    assert_one_line_error(&out, 1);
    assert!(
        out.stderr
            .contains("1 of 2 unknown or inaccessible: wmNobody"),
        "{}",
        out.stderr
    );
    let out = env.run(&["customers", "get"]).await;
    assert_one_line_error(&out, 2);
    assert!(
        out.stderr.contains("give 1-100 customers"),
        "{}",
        out.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("说明.txt");
    std::fs::write(&file, "some text content").unwrap();
    let media_id = env
        .ok(&["media", "upload", "--type", "file", file.to_str().unwrap()])
        .await;
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let written = env
        .ok(&[
            "media",
            "download",
            "--media-id",
            media_id.trim(),
            "--dir",
            out_dir.to_str().unwrap(),
        ])
        .await;
    assert!(written.trim().ends_with("说明.txt"), "{written}");
    assert_eq!(
        std::fs::read_to_string(written.trim()).unwrap(),
        "some text content"
    );
    let out = env
        .run(&[
            "media",
            "download",
            "--media-id",
            "no-such-media",
            "--dir",
            out_dir.to_str().unwrap(),
        ])
        .await;
    assert_one_line_error(&out, 1);
    assert!(out.stderr.contains("40007"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mistakes_exit_2_before_any_call_and_name_the_customer_one_way() {
    let env = start().await;
    let token_calls = || {
        env.running.emulator().state_snapshot()["counters"]["calls"]["gettoken"]
            .as_u64()
            .unwrap_or(0)
    };
    env.ok(&["token"]).await;
    let before = token_calls();
    assert!(before > 0, "gettoken is counted");
    // A value out of its known range, and state 3 without its servicer: refused locally.
    let out = env
        .run(&[
            "state",
            "trans",
            "--open-kfid",
            "wkCli",
            "--customer",
            "wmX",
            "--state",
            "7",
        ])
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("wechat-kf: invalid value '7' for '--state <STATE>'"),
        "{}",
        out.stderr
    );
    let out = env
        .run(&[
            "state",
            "trans",
            "--open-kfid",
            "wkCli",
            "--to",
            "wmX",
            "--state",
            "3",
        ])
        .await;
    assert_one_line_error(&out, 2);
    assert!(
        out.stderr.contains("needs --servicer-userid"),
        "{}",
        out.stderr
    );
    assert_eq!(token_calls(), before, "nothing was called");

    // A missing flag: the usage names what is missing, not the credentials the environment
    // gives.
    let out = env.run(&["state", "get", "--open-kfid", "wkCli"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let first = out.stderr.lines().next().unwrap();
    assert!(
        first.starts_with("wechat-kf: the following required arguments were not provided:"),
        "{first}"
    );
    assert!(first.contains("--customer"), "{first}");
    assert!(
        !out.stderr.contains("--corp-id") && !out.stderr.contains("--secret"),
        "{}",
        out.stderr
    );

    // --customer, --to and --external-userid name the same thing everywhere.
    env.customer_says("wmEve", "hi");
    for flag in ["--customer", "--to", "--external-userid"] {
        let state = env
            .ok(&["state", "get", "--open-kfid", "wkCli", flag, "wmEve"])
            .await;
        assert!(state.contains("service_state"), "{state}");
        env.ok(&[
            "send",
            "--open-kfid",
            "wkCli",
            flag,
            "wmEve",
            "--msgid",
            &format!("alias{}", flag.len()),
            "text",
            "hello",
        ])
        .await;
    }

    // Help: the command's own options apart from the connection settings; send says how its
    // quota relates to the service's.
    let help = env.ok(&["send", "--help"]).await;
    let connection = help.find("Connection:").expect("a Connection heading");
    assert!(help.find("--open-kfid").unwrap() < connection, "{help}");
    assert!(help[connection..].contains("--corp-id"), "{help}");
    assert!(
        help.contains("shares the service's quota tracking"),
        "{help}"
    );
    assert!(
        help.contains("Without a store it does not share it"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_says_when_it_fell_back_and_prints_no_progress_before_an_early_error() {
    let env = start().await;
    env.customer_says("wmFay", "hello");
    let out = env
        .run(&[
            "sync",
            "--open-kfid",
            "wkCli",
            "--token",
            "not-a-real-token",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("wmFay"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("wechat-kf: note: WeChat refused --token (95007"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("pulled without it"), "{}", out.stderr);

    let out = env
        .run(&["sync", "--open-kfid", "wkCli", "--cursor", "garbage"])
        .await;
    assert_one_line_error(&out, 1);
    assert!(!out.stderr.contains("next cursor"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

/// A store holding the session view `serve` would keep for a customer who wrote just now.
async fn store_with_customer(
    path: &std::path::Path,
    customer: &str,
) -> std::sync::Arc<dyn wechat_kf_service::store::Store> {
    use wechat_kf_service::store::{
        NewMessage, PageWrite, Payload, SqliteStore, Store, Synchronous,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let raw =
        json!({"msgid": format!("m-{customer}"), "open_kfid": "wkCli", "external_userid": customer,
        "send_time": now, "origin": 3, "msgtype": "text", "text": {"content": "hi"}})
        .to_string();
    let message = wechat_kf::message::Message::from_json(&raw).unwrap();
    let store = SqliteStore::open(path.to_str().unwrap(), Synchronous::Normal).unwrap();
    store
        .commit_page(PageWrite {
            open_kfid: "wkCli".into(),
            messages: vec![NewMessage {
                msgid: format!("m-{customer}").into(),
                external_userid: customer.into(),
                send_time: now as i64,
                origin: Some(3),
                kind: "text".into(),
                payload: Payload::Message(message),
                decode_error: None,
            }],
            next_cursor: None,
            now_ms: 0,
            skip_before: None,
            catch_up_before: None,
            actions: Vec::new(),
            turns: Default::default(),
        })
        .await
        .unwrap();
    std::sync::Arc::new(store)
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_the_services_store_shares_its_quota_tracking() {
    use wechat_kf_service::store::SessionUpdate;
    let env = start().await;
    env.customer_says("wmQuota", "hi");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kf.db");
    let store = store_with_customer(&path, "wmQuota").await;
    let db = path.to_str().unwrap();
    let send = |msgid: &'static str| {
        [
            "send",
            "--db",
            db,
            "--open-kfid",
            "wkCli",
            "--customer",
            "wmQuota",
            "--msgid",
            msgid,
            "text",
            "answer",
        ]
    };
    // Four sends recorded by the service; the command's is the fifth, recorded too.
    for _ in 0..4 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        store
            .update_session(
                "wkCli".into(),
                "wmQuota".into(),
                SessionUpdate::Sent { at: now },
                0,
            )
            .await
            .unwrap();
    }
    env.ok(&send("fifth")).await;
    let view = store
        .session("wkCli".into(), "wmQuota".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.sent_since_customer_message(),
        5,
        "the command's send is counted"
    );
    // The sixth is refused from the view, without calling WeChat.
    let sends = env
        .running
        .emulator()
        .outbox(Some("wkCli"), Some("wmQuota"))["messages"]
        .as_array()
        .unwrap()
        .len();
    let out = env.run(&send("sixth")).await;
    assert_one_line_error(&out, 1);
    assert!(
        out.stderr
            .contains("refused by the session view in the store, nothing sent"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.running
            .emulator()
            .outbox(Some("wkCli"), Some("wmQuota"))["messages"]
            .as_array()
            .unwrap()
            .len(),
        sends
    );
    store.close().await;
    // A store that is not there is an invocation error, not a new empty store.
    let missing = dir.path().join("missing.db");
    let out = env
        .run(&[
            "send",
            "--db",
            missing.to_str().unwrap(),
            "--open-kfid",
            "wkCli",
            "--customer",
            "wmQuota",
            "text",
            "x",
        ])
        .await;
    assert_one_line_error(&out, 2);
    assert!(!missing.exists());
}
