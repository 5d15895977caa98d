//! A responder through SIGKILL: `wechat-kf serve --responder openai` is killed right after the
//! model answered (before or after the answer's commit, whichever the kill finds) and, for the
//! next turn, while the answer is being sent to WeChat. After each restart the customer has
//! exactly one answer to each turn: never two, never none.
//!
//! The emulator and the stand-in model run in this test process; the service is the real
//! binary.

use std::time::Duration;

use serde_json::json;
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_test_support::{OpenAiStandIn, Reply, Spawned, wait_for};

mod common;
use common::{calls, control, serve_available, spawn_with, wait_ready};

/// The texts the customer was sent, in order.
fn answers(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<String> {
    emu.emulator().outbox(Some(kf), Some(customer))["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m["request"]["text"]["content"].as_str().map(str::to_owned))
        .collect()
}

fn spawn(emu: &RunningEmulator, dir: &tempfile::TempDir, model: &OpenAiStandIn) -> Spawned {
    spawn_with(
        emu,
        &dir.path().join("kf.db"),
        &dir.path().join("kf.toml"),
        &[
            "--responder",
            "openai",
            "--llm-base-url",
            &model.base_url(),
            "--llm-model",
            "crash-model",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_models_answer_and_the_send_yields_exactly_one_answer() {
    if !serve_available() {
        return;
    }
    let emu = wechat_kf_test_support::TestEmulator::new()
        .unlimited()
        .start()
        .await;
    let kf = emu.emulator().create_account("crash-responder");
    let model = OpenAiStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kf.toml"),
        "[responder]\ninterim_after = \"0\"\ndeadline = \"20s\"\n",
    )
    .unwrap();

    // Turn 1: killed the moment the model has answered.
    let mut child = spawn(&emu, &dir, &model);
    wait_ready(&emu, &mut child).await;
    // The stand-in's answer repeats the question: the same words if it is asked again.
    model.push(Reply::default().delay(Duration::from_millis(300)));
    emu.emulator()
        .customer_send(
            json!({"open_kfid": kf, "external_userid": "wmK", "msgtype": "text",
                              "text": {"content": "第一个问题"}}),
        )
        .unwrap();
    wait_for("the model's answer", Duration::from_secs(20), || async {
        model.answered() >= 1
    })
    .await;
    child.kill().expect("SIGKILL");
    let mut child = spawn(&emu, &dir, &model);
    wait_ready(&emu, &mut child).await;
    wait_for("the first answer", Duration::from_secs(20), || async {
        !answers(&emu, &kf, "wmK").is_empty()
    })
    .await;

    // Turn 2: killed while the answer is on its way to WeChat.
    control(
        &emu,
        "/emulator/faults",
        json!({"path": "kf/send_msg", "kind": "delay", "delay_ms": 3000, "count": 1}),
    )
    .await;
    let before = calls(&emu, "kf/send_msg");
    emu.emulator()
        .customer_send(
            json!({"open_kfid": kf, "external_userid": "wmK", "msgtype": "text",
                              "text": {"content": "第二个问题"}}),
        )
        .unwrap();
    wait_for("the answer on its way", Duration::from_secs(20), || async {
        calls(&emu, "kf/send_msg") > before
    })
    .await;
    child.kill().expect("SIGKILL");
    let mut child = spawn(&emu, &dir, &model);
    wait_ready(&emu, &mut child).await;
    wait_for("the second answer", Duration::from_secs(20), || async {
        answers(&emu, &kf, "wmK").len() >= 2
    })
    .await;
    // Time for a repeat to show if one were coming (retries start at 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        answers(&emu, &kf, "wmK"),
        [
            "crash-model heard: 第一个问题",
            "crash-model heard: 第二个问题"
        ],
        "one answer per turn"
    );
    assert!(
        model.requests().iter().all(|r| r.problem.is_none()),
        "every request matched the protocol"
    );
    child.kill().ok();
    emu.shutdown().await;
}
