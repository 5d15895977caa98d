//! Six replies in a row: with the joiner off, five go out and the sixth is refused
//! (quota_exhausted, 95001) without calling WeChat; with the joiner on, they go out as one or
//! two messages and quota is left.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A bot answering the customer's first message with six texts of `len` bytes each.
fn six_replies(sink: &Sink, kf: &str, customer: &'static str, len: usize) {
    let kf = kf.to_owned();
    sink.set_policy(move |r| {
        let asked = r
            .messages
            .iter()
            .any(|m| m["origin"] == 3 && customer_of(m) == customer);
        if !asked {
            return Action::Ack(json!({}));
        }
        let replies: Vec<Value> = (0..6)
            .map(|i| {
                let mut content = format!("第{i}段:");
                while content.len() < len {
                    content.push('x');
                }
                json!({"touser": customer, "open_kfid": kf, "msgtype": "text", "text": {"content": content}})
            })
            .collect();
        Action::Ack(json!({ "replies": replies }))
    });
}

fn customer_of(m: &Value) -> String {
    customer(m).1
}

fn sent_texts(emu: &wechat_kf_emulator::RunningEmulator, kf: &str, customer: &str) -> Vec<String> {
    emu.emulator().outbox(Some(kf), Some(customer))["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            m["request"]["text"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn run(joiner: bool, len: usize) -> (Vec<String>, Vec<Value>, Value, u64) {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("joiner");
    six_replies(&sink, &kf, "wmJ", len);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.joiner.enabled = joiner;
    let running = start_on_emulator_clock(&emu, config).await;
    emu.emulator()
        .customer_send(text(&kf, "wmJ", "请详细介绍一下"))
        .unwrap();
    let store = running.store().clone();
    wait_for("six replies finished", Duration::from_secs(15), || {
        let store = store.clone();
        async move {
            let stats = store.stats().await.unwrap();
            stats.replies_pending == 0
                && stats.replies_sent + stats.replies_refused + stats.replies_joined >= 6
        }
    })
    .await;
    // The results come back with the next delivery.
    emu.emulator()
        .customer_send(text(&kf, "wmOther", "你好"))
        .unwrap();
    wait_for("six results", Duration::from_secs(15), || async {
        sink.reply_results().len() >= 6
    })
    .await;
    let mut results = sink.reply_results();
    results.sort_by_key(|r| r["index"].as_u64());
    let (_, session) = api(&running, "GET", &format!("/v1/sessions/{kf}/wmJ"), None).await;
    let wechat_refusals = metric(
        &running,
        "wechat_kf_api_errcodes_total{endpoint=\"kf/send_msg\",errcode=\"95001\"}",
    );
    let texts = sent_texts(&emu, &kf, "wmJ");
    assert_eq!(calls(&emu, "kf/send_msg") as usize, texts.len());
    running.shutdown().await;
    emu.shutdown().await;
    (texts, results, session, wechat_refusals)
}

#[tokio::test]
async fn six_replies_with_the_joiner_off_send_five_and_refuse_the_sixth_without_calling_wechat() {
    let (texts, results, session, wechat_refusals) = run(false, 20).await;
    assert_eq!(texts.len(), 5);
    assert_eq!(wechat_refusals, 0, "WeChat never answered 95001");
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["sent", "sent", "sent", "sent", "sent", "refused"]
    );
    let refused = &results[5];
    assert_eq!(refused["index"], 5);
    assert_eq!(refused["reason"], "quota_exhausted");
    assert_eq!(refused["errcode"], 95001);
    assert_eq!(refused["sent"], 5);
    assert_eq!(refused["predicted"], true);
    assert_eq!(refused["lifted_by"], "customer_message");
    assert_eq!(session["can_send"], false);
    assert_eq!(session["refusal"]["reason"], "quota_exhausted");
}

#[tokio::test]
async fn six_short_replies_with_the_joiner_on_go_out_as_one_message_and_leave_quota() {
    let (texts, results, session, _) = run(true, 20).await;
    assert_eq!(texts.len(), 1);
    let parts: Vec<&str> = texts[0].split('\n').collect();
    assert_eq!(parts.len(), 6);
    assert!(parts[0].starts_with("第0段") && parts[5].starts_with("第5段"));
    let first = results[0]["msgid"].as_str().unwrap().to_owned();
    for r in &results[1..] {
        assert_eq!(r["status"], "sent");
        assert_eq!(r["joined_into"], first.as_str());
    }
    assert_eq!(session["can_send"], true);
    assert_eq!(session["remaining"], 4);
}

#[tokio::test]
async fn six_long_replies_with_the_joiner_on_go_out_as_two_messages_within_2048_bytes() {
    let (texts, _, session, _) = run(true, 400).await;
    assert_eq!(texts.len(), 2);
    assert!(texts.iter().all(|t| t.len() <= 2048));
    assert_eq!(texts[0].split('\n').count(), 5);
    assert_eq!(texts[1].split('\n').count(), 1);
    assert_eq!(session["remaining"], 3);
}

#[tokio::test]
async fn six_reply_api_calls_in_a_row_answer_quota_exhausted_for_the_sixth() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("api-quota");
    let (running, _dir) = start_delivering_to(&emu, &sink).await;
    let asked = emu
        .emulator()
        .customer_send(text(&kf, "wmQ", "问题"))
        .unwrap()
        .remove(0);
    wait_for("delivered", Duration::from_secs(15), || async {
        sink.acked_msgids().contains(&asked)
    })
    .await;
    let body = |i: usize| json!({"touser": "wmQ", "open_kfid": kf, "msgtype": "text", "text": {"content": format!("第{i}段")}});
    for i in 0..5 {
        let (status, answer) = api(&running, "POST", "/v1/messages", Some(body(i))).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = api(&running, "POST", "/v1/messages", Some(body(5))).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["reason"], "quota_exhausted");
    assert_eq!(answer["sent"], 5);
    assert_eq!(answer["predicted"], true);
    assert_eq!(calls(&emu, "kf/send_msg"), 5);
    // The customer's next message re-opens the quota.
    let again = emu
        .emulator()
        .customer_send(text(&kf, "wmQ", "还有"))
        .unwrap()
        .remove(0);
    wait_for("delivered", Duration::from_secs(15), || async {
        sink.acked_msgids().contains(&again)
    })
    .await;
    let (status, answer) = api(&running, "POST", "/v1/messages", Some(body(6))).await;
    assert_eq!(status, 200, "{answer}");
    running.shutdown().await;
    emu.shutdown().await;
}
