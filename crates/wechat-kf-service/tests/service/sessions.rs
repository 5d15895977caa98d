//! The send policy in the service: a human servicer taking the session, a refusal WeChat
//! answers that the service did not predict, keyword handoffs and transfers asked for by the
//! bot — each answered with a typed refusal instead of a blind send.

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf::client::Client;
use wechat_kf::client::service_state::TransServiceStateRequest;
use wechat_kf::client::servicers::ServicerRequest;
use wechat_kf::session::ServiceState;
use wechat_kf_emulator::RunningEmulator;

use crate::common::*;

/// Makes `userid` a receiving servicer of the account.
pub async fn add_servicer(emu: &RunningEmulator, kf: &str, userid: &str) {
    client(emu)
        .servicers()
        .add(ServicerRequest::new(kf).userids([userid]))
        .await
        .unwrap();
}

/// A client of the emulator (what "someone else" uses behind the service's back).
pub fn client(emu: &RunningEmulator) -> Client {
    let e = emu.emulator().config();
    Client::builder(e.corp_id.clone(), e.secret.clone())
        .base_url(emu.base_url())
        .build()
        .unwrap()
}

/// Emulator outbox entries to one customer.
fn sent_to(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<Value> {
    emu.emulator().outbox(Some(kf), Some(customer))["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn reply_text(kf: &str, customer: &str, content: &str) -> Value {
    json!({"touser": customer, "open_kfid": kf, "msgtype": "text", "text": {"content": content}})
}

/// A bot that answers every customer text of `customer` with one text.
fn answering_bot(sink: &Sink, kf: &str, customer: &'static str) {
    let kf = kf.to_owned();
    sink.set_policy(move |r| {
        let replies: Vec<Value> = r
            .messages
            .iter()
            .filter(|m| m["origin"] == 3 && m["msgtype"] == "text" && customer_of(m) == customer)
            .map(|m| reply_text(&kf, customer, &format!("re: {}", msgid(m))))
            .collect();
        Action::Ack(json!({ "replies": replies }))
    });
}

fn customer_of(m: &Value) -> String {
    customer(m).1
}

async fn wait_refused(running: &wechat_kf_service::RunningService, n: u64) {
    let store = running.store().clone();
    wait_for("a refused reply", Duration::from_secs(15), || {
        let store = store.clone();
        async move { store.stats().await.unwrap().replies_refused >= n }
    })
    .await;
}

#[tokio::test]
async fn a_servicer_taking_the_session_gets_the_bots_replies_refused_with_the_servicer_named() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("handoff");
    add_servicer(&emu, &kf, "zhangsan").await;
    answering_bot(&sink, &kf, "wmH");
    let (running, _dir) = start_delivering_to(&emu, &sink).await;

    emu.emulator()
        .customer_send(text(&kf, "wmH", "你好"))
        .unwrap();
    wait_for(
        "the bot's first answer",
        Duration::from_secs(15),
        || async { sent_to(&emu, &kf, "wmH").len() == 1 },
    )
    .await;

    // A servicer writes from the WeCom client: the session is theirs now.
    control(
        &emu,
        "/emulator/servicer/send",
        json!({"open_kfid": kf, "external_userid": "wmH", "servicer_userid": "zhangsan",
               "msgtype": "text", "text": {"content": "您好，我是客服小张"}}),
    )
    .await;
    let question = emu
        .emulator()
        .customer_send(text(&kf, "wmH", "还在吗"))
        .unwrap()
        .remove(0);
    wait_refused(&running, 1).await;
    let sends = calls(&emu, "kf/send_msg");
    assert_eq!(sends, 1, "the refused reply never reached WeChat");
    assert_eq!(sent_to(&emu, &kf, "wmH").len(), 1);

    // The reply API gets the same answer, at once.
    let (status, body) = api(
        &running,
        "POST",
        "/v1/messages",
        Some(reply_text(&kf, "wmH", "我是机器人")),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "send_refused");
    assert_eq!(body["reason"], "human_servicer");
    assert_eq!(body["errcode"], 95018);
    assert_eq!(body["servicer_userid"], "zhangsan");
    assert_eq!(body["predicted"], true);
    assert_eq!(body["handoff"], true);
    assert_eq!(body["lifted_by"], "session_change");
    assert!(body["message"].as_str().unwrap().contains("zhangsan"));
    assert_eq!(calls(&emu, "kf/send_msg"), 1);
    assert_eq!(
        metric(
            &running,
            "wechat_kf_send_refused_total{reason=\"human_servicer\",source=\"service\"}"
        ),
        2
    );

    // The webhook reply's result rides on the next delivery.
    let delivery_of_question = sink
        .received()
        .iter()
        .find(|r| r.acked && r.msgids().contains(&question))
        .map(|r| r.delivery.clone())
        .unwrap();
    emu.emulator()
        .customer_send(text(&kf, "wmOther", "有人吗"))
        .unwrap();
    wait_for("the refusal reported", Duration::from_secs(15), || async {
        sink.reply_results()
            .iter()
            .any(|r| r["status"] == "refused")
    })
    .await;
    let results = sink.reply_results();
    let sent = results.iter().find(|r| r["status"] == "sent").unwrap();
    assert_eq!(sent["index"], 0);
    assert_eq!(sent["touser"], "wmH");
    let refused = results.iter().find(|r| r["status"] == "refused").unwrap();
    assert_eq!(refused["delivery"], delivery_of_question.as_str());
    assert_eq!(refused["index"], 0);
    assert_eq!(refused["touser"], "wmH");
    assert_eq!(refused["reason"], "human_servicer");
    assert_eq!(refused["servicer_userid"], "zhangsan");
    assert_eq!(refused["errcode"], 95018);
    assert!(refused["msgid"].as_str().is_some_and(|m| m.len() == 32));
    // Reported once.
    emu.emulator()
        .customer_send(text(&kf, "wmOther", "再问一次"))
        .unwrap();
    wait_for("the next delivery", Duration::from_secs(15), || async {
        sink.acked_count() >= 6
    })
    .await;
    assert_eq!(
        sink.reply_results()
            .iter()
            .filter(|r| r["status"] == "refused")
            .count(),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_refusal_wechat_answers_is_learnt_and_explained_with_the_servicer() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("surprise");
    add_servicer(&emu, &kf, "lisi").await;
    let (running, _dir) = start_delivering_to(&emu, &sink).await;
    let hello = emu
        .emulator()
        .customer_send(text(&kf, "wmS", "你好"))
        .unwrap()
        .remove(0);
    wait_for("delivered", Duration::from_secs(15), || async {
        sink.acked_msgids().contains(&hello)
    })
    .await;
    let (status, allowed) = api(&running, "GET", &format!("/v1/sessions/{kf}/wmS"), None).await;
    assert_eq!(status, 200);
    assert_eq!(allowed["can_send"], true);
    assert_eq!(allowed["remaining"], 5);
    // Someone else assigns the session through the API: no event tells the service.
    client(&emu)
        .service_state()
        .trans(
            TransServiceStateRequest::new(kf.as_str(), "wmS", ServiceState::Human)
                .servicer_userid("lisi"),
        )
        .await
        .unwrap();
    let (status, body) = api(
        &running,
        "POST",
        "/v1/messages",
        Some(reply_text(&kf, "wmS", "在的")),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "human_servicer");
    assert_eq!(body["servicer_userid"], "lisi", "asked service_state/get");
    assert_eq!(body["predicted"], false);
    assert!(body["errmsg"].is_string());
    let sends = calls(&emu, "kf/send_msg");
    let (status, body) = api(
        &running,
        "POST",
        "/v1/messages",
        Some(reply_text(&kf, "wmS", "还在")),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(body["predicted"], true);
    assert_eq!(calls(&emu, "kf/send_msg"), sends, "learnt: not asked again");
    assert_eq!(
        metric(
            &running,
            "wechat_kf_send_refused_total{reason=\"human_servicer\",source=\"wechat\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_handoff_keyword_queues_the_session_before_the_bot_answers() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("keyword");
    answering_bot(&sink, &kf, "wmK");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.handoff.keywords = vec!["人工".into(), "转人工".into()];
    config.handoff.message = Some("正在为您转接人工客服，请稍候".into());
    let running = start_on_emulator_clock(&emu, config).await;

    emu.emulator()
        .customer_send(text(&kf, "wmK", "我要转人工"))
        .unwrap();
    wait_refused(&running, 1).await;
    let state = client(&emu)
        .service_state()
        .get(kf.as_str(), "wmK")
        .await
        .unwrap();
    assert_eq!(state.service_state, ServiceState::Queued);
    // The queue message went out with the transfer's code; the bot's answer did not.
    let sent = sent_to(&emu, &kf, "wmK");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["endpoint"], "send_msg_on_event");
    assert_eq!(
        sent[0]["request"]["text"]["content"],
        "正在为您转接人工客服，请稍候"
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_handoffs_total{trigger=\"keyword\",result=\"ok\"}"
        ),
        1
    );
    let (_, view) = api(&running, "GET", &format!("/v1/sessions/{kf}/wmK"), None).await;
    assert_eq!(view["can_send"], false);
    assert_eq!(view["refusal"]["reason"], "queued");
    assert_eq!(view["service_state"], 2);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_bot_can_hand_the_session_to_a_servicer_in_its_webhook_reply() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("transfer");
    add_servicer(&emu, &kf, "wangwu").await;
    let kf2 = kf.clone();
    sink.set_policy(move |r| {
        let asked = r
            .messages
            .iter()
            .any(|m| m["origin"] == 3 && customer_of(m) == "wmT");
        if !asked {
            return Action::Ack(json!({}));
        }
        Action::Ack(json!({"replies": [
            reply_text(&kf2, "wmT", "好的，这就为您转接"),
            {"action": "transfer", "open_kfid": kf2, "external_userid": "wmT",
             "service_state": 3, "servicer_userid": "wangwu"},
            reply_text(&kf2, "wmT", "还有别的问题吗？"),
        ]}))
    });
    let (running, _dir) = start_delivering_to(&emu, &sink).await;
    emu.emulator()
        .customer_send(text(&kf, "wmT", "找个真人"))
        .unwrap();
    wait_refused(&running, 1).await;
    let sent = sent_to(&emu, &kf, "wmT");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["request"]["text"]["content"], "好的，这就为您转接");
    let state = client(&emu)
        .service_state()
        .get(kf.as_str(), "wmT")
        .await
        .unwrap();
    assert_eq!(state.service_state, ServiceState::Human);
    emu.emulator()
        .customer_send(text(&kf, "wmElse", "hi"))
        .unwrap();
    wait_for("three results", Duration::from_secs(15), || async {
        sink.reply_results().len() >= 3
    })
    .await;
    let mut results = sink.reply_results();
    results.sort_by_key(|r| r["index"].as_u64());
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["sent", "done", "refused"]);
    assert_eq!(results[1]["action"], "transfer");
    assert!(
        results[1]["msg_code"].is_string(),
        "the connect code for the bot"
    );
    assert_eq!(results[2]["reason"], "human_servicer");
    assert_eq!(results[2]["servicer_userid"], "wangwu");
    assert_eq!(
        metric(
            &running,
            "wechat_kf_handoffs_total{trigger=\"bot\",result=\"ok\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}
