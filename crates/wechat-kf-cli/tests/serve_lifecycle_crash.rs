//! The conversation lifecycle through SIGKILL: `wechat-kf serve` is killed while a welcome (and
//! then an end message with its survey) is on its way to WeChat, around the commit that
//! releases held turns, and inside an `auto` handover; after the restart each code is used
//! exactly once, held turns arrive as history, and the handover is done and told.
//!
//! The emulator and the webhook sink run in this test process; the service is the real binary.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_test_support::{Spawned, wait_for};

mod common;
use common::{calls, control, serve_available, spawn_against, wait_ready};

/// How long the emulator holds the stage message's call: the kill lands inside it.
const HOLD_MS: u64 = 3000;

/// Makes `zhangsan` a servicer of the account.
async fn add_servicer(emu: &RunningEmulator, kf: &str) {
    let e = emu.emulator().config();
    wechat_kf::client::Client::builder(e.corp_id.clone(), e.secret.clone())
        .base_url(emu.base_url())
        .build()
        .unwrap()
        .servicers()
        .add(wechat_kf::client::servicers::ServicerRequest::new(kf).userids(["zhangsan"]))
        .await
        .unwrap();
}

/// What the customer was sent through `send_msg_on_event`.
fn on_event_sends(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<Value> {
    emu.emulator().outbox(Some(kf), Some(customer))["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["endpoint"] == "send_msg_on_event")
        .map(|m| m["request"].clone())
        .collect()
}

/// Holds the next `send_msg_on_event`, waits until the service is inside it, kills the service.
async fn kill_inside_the_send(emu: &RunningEmulator, child: &mut Spawned, before: u64) {
    wait_for(
        "the stage message on its way",
        Duration::from_secs(20),
        || async { calls(emu, "kf/send_msg_on_event") > before },
    )
    .await;
    child.kill().expect("SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_a_stage_message_is_sent_neither_repeats_nor_loses_it() {
    if !serve_available() {
        return;
    }
    let emu = wechat_kf_test_support::TestEmulator::new()
        .unlimited()
        .start()
        .await;
    let kf = emu.emulator().create_account("crash-stages");
    add_servicer(&emu, &kf).await;
    let sink = Router::new().route("/hook", post(|| async { StatusCode::OK }));
    let webhook = wechat_kf_test_support::serve(sink, "/hook").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let config_file = dir.path().join("kf.toml");
    std::fs::write(
        &config_file,
        "[conversation]\nwelcome = \"欢迎光临\"\nend = \"感谢咨询\"\nsurvey = [\"满意\", \"不满意\"]\n",
    )
    .unwrap();
    let hold =
        json!({"path": "kf/send_msg_on_event", "kind": "delay", "delay_ms": HOLD_MS, "count": 1});

    // The welcome: killed while it is being sent, then restarted.
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;
    control(&emu, "/emulator/faults", hold.clone()).await;
    let before = calls(&emu, "kf/send_msg_on_event");
    let entered = control(
        &emu,
        "/emulator/customer/enter_session",
        json!({"open_kfid": kf, "external_userid": "wmK"}),
    )
    .await;
    assert!(entered["welcome_code"].is_string(), "{entered}");
    kill_inside_the_send(&emu, &mut child, before).await;
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;
    wait_for("the welcome", Duration::from_secs(20), || async {
        !on_event_sends(&emu, &kf, "wmK").is_empty()
    })
    .await;

    // The end message with the survey: the same.
    control(
        &emu,
        "/emulator/servicer/send",
        json!({"open_kfid": kf, "external_userid": "wmK", "servicer_userid": "zhangsan",
               "msgtype": "text", "text": {"content": "您好"}}),
    )
    .await;
    control(&emu, "/emulator/faults", hold).await;
    let before = calls(&emu, "kf/send_msg_on_event");
    control(
        &emu,
        "/emulator/servicer/end",
        json!({"open_kfid": kf, "external_userid": "wmK"}),
    )
    .await;
    kill_inside_the_send(&emu, &mut child, before).await;
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;
    wait_for("the end message", Duration::from_secs(20), || async {
        on_event_sends(&emu, &kf, "wmK").len() >= 2
    })
    .await;
    // Time for a second send to show if it were coming (retries start at 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sends = on_event_sends(&emu, &kf, "wmK");
    assert_eq!(sends.len(), 2, "each code used once: {sends:?}");
    assert_eq!(sends[0]["text"]["content"], "欢迎光临");
    assert_eq!(sends[1]["msgmenu"]["head_content"], "感谢咨询");
    child.kill().ok();
    emu.shutdown().await;
}

/// Every body the webhook acknowledged.
type Bodies = Arc<Mutex<Vec<Value>>>;

/// A webhook that takes `delay` to acknowledge (so a kill lands while a delivery is in flight).
async fn slow_sink(delay: Duration) -> (String, Bodies) {
    let bodies: Bodies = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                move |State(bodies): State<Bodies>, body: Bytes| async move {
                    tokio::time::sleep(delay).await;
                    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    bodies.lock().unwrap().push(value);
                    StatusCode::OK
                },
            ),
        )
        .with_state(bodies.clone());
    (wechat_kf_test_support::serve(app, "/hook").await, bodies)
}

/// The `items` entry of the delivered message with this text, from any acknowledged body.
fn entry(bodies: &Bodies, content: &str) -> Option<Value> {
    bodies.lock().unwrap().iter().find_map(|body| {
        body["items"].as_array()?.iter().find_map(|item| {
            let message = &body["messages"][item["message"].as_u64()? as usize];
            (message["text"]["content"] == content).then(|| item.clone())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_turns_released_just_before_a_kill_are_delivered_as_history_after_the_restart() {
    if !serve_available() {
        return;
    }
    let emu = wechat_kf_test_support::TestEmulator::new()
        .unlimited()
        .start()
        .await;
    let kf = emu.emulator().create_account("crash-hold");
    add_servicer(&emu, &kf).await;
    let (webhook, bodies) = slow_sink(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let config_file = dir.path().join("kf.toml");
    std::fs::write(&config_file, "[conversation]\nwhile_human = \"hold\"\n").unwrap();
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;

    let say = |content: &str| json!({"open_kfid": kf, "external_userid": "wmH", "msgtype": "text", "text": {"content": content}});
    control(&emu, "/emulator/servicer/send", {
        let mut m = say("人工为您服务");
        m["servicer_userid"] = json!("zhangsan");
        m
    })
    .await;
    control(&emu, "/emulator/customer/send", say("订单呢")).await;
    wait_for(
        "the takeover delivered",
        Duration::from_secs(20),
        || async {
            bodies.lock().unwrap().iter().any(|b| {
                b["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["session"]["new_state"] == 3))
            })
        },
    )
    .await;
    control(
        &emu,
        "/emulator/servicer/end",
        json!({"open_kfid": kf, "external_userid": "wmH"}),
    )
    .await;
    wait_for("the end delivered", Duration::from_secs(20), || async {
        bodies.lock().unwrap().iter().any(|b| {
            b["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["session"]["new_state"] == 4))
        })
    })
    .await;
    let pulls = || {
        emu.emulator().state_snapshot()["counters"]["calls"]["kf/sync_msg"]
            .as_u64()
            .unwrap_or(0)
    };
    let calls_before = pulls();
    control(&emu, "/emulator/customer/send", say("谢谢")).await;
    // Kill once the releasing page has been pulled: the kill lands around its commit or while
    // its delivery (the webhook takes 1.5 s) is in flight; either way the held turns must
    // arrive as history after the restart.
    wait_for(
        "the releasing page pulled",
        Duration::from_secs(20),
        || async { pulls() > calls_before },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().expect("SIGKILL");
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;
    wait_for(
        "the customer's message after the restart",
        Duration::from_secs(30),
        || async { entry(&bodies, "谢谢").is_some() && entry(&bodies, "订单呢").is_some() },
    )
    .await;
    let held = entry(&bodies, "订单呢").unwrap();
    assert_eq!(held["history"], true, "{held}");
    assert_eq!(held["bot_may_reply"], false);
    assert_eq!(entry(&bodies, "人工为您服务").unwrap()["history"], true);
    assert_eq!(entry(&bodies, "谢谢").unwrap()["bot_may_reply"], true);
    child.kill().ok();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_inside_an_auto_handover_still_queues_the_session_tells_the_bot_and_the_staff_and_sends_the_queue_message_at_most_once()
 {
    if !serve_available() {
        return;
    }
    let emu = wechat_kf_test_support::TestEmulator::new()
        .unlimited()
        .start()
        .await;
    let kf = emu.emulator().create_account("crash-handover");
    let key = emu.emulator().create_robot("客服群");
    let (webhook, bodies) = slow_sink(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let config_file = dir.path().join("kf.toml");
    // No servicer is receiving: `auto` falls back to the queue.
    std::fs::write(
        &config_file,
        format!(
            "[handoff]\nkeywords = [\"人工\"]\nto = \"auto\"\n[handoff.notify]\nrobot_url = \"{}/cgi-bin/webhook/send?key={key}\"\n\
             [conversation]\nqueue = \"正在排队\"\n",
            emu.base_url()
        ),
    )
    .unwrap();
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;
    control(
        &emu,
        "/emulator/faults",
        json!({"path": "kf/service_state/trans", "kind": "delay", "delay_ms": HOLD_MS, "count": 1}),
    )
    .await;
    let before = calls(&emu, "kf/service_state/trans");
    control(
        &emu,
        "/emulator/customer/send",
        json!({"open_kfid": kf, "external_userid": "wmQ", "msgtype": "text", "text": {"content": "转人工"}}),
    )
    .await;
    wait_for(
        "the transfer on its way",
        Duration::from_secs(20),
        || async { calls(&emu, "kf/service_state/trans") > before },
    )
    .await;
    child.kill().expect("SIGKILL");
    let mut child = spawn_against(&emu, &db, &webhook, &config_file);
    wait_ready(&emu, &mut child).await;

    let state = || emu.emulator().state_snapshot();
    let queued = || {
        bodies.lock().unwrap().iter().any(|b| {
            b["items"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|i| i["session"]["new_state"] == 2 && i["session"]["by"] == "keyword")
            })
        })
    };
    wait_for(
        "the handover told to the bot",
        Duration::from_secs(30),
        || async { queued() },
    )
    .await;
    let robot = || {
        emu.emulator().robot_messages(Some(&key))["robots"][0]["messages"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for("the staff told", Duration::from_secs(20), || async {
        robot() >= 1
    })
    .await;
    let sessions = state();
    let session = sessions["sessions"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["external_userid"] == "wmQ"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(session["state"], 2, "queued: {session}");
    // The queue message went out at most once: when the kill lost the code WeChat returned
    // (it returns one only once), none can (docs/vendor-notes.md).
    let queue_messages = emu.emulator().outbox(Some(&kf), Some("wmQ"))["messages"]
        .as_array()
        .map_or(0, |m| m.len());
    assert!(queue_messages <= 1, "{queue_messages} queue messages");
    child.kill().ok();
    emu.shutdown().await;
}
