//! The conversation lifecycle against the emulator: whose turn it is (a servicer taking the
//! session silences the bot until the session ends and the customer writes again), what the
//! bot gets while a human has the session (`mark`, `hold`), and the message of every stage
//! (welcome by scene, none without a code, the end message with the survey, the rating).

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::config::Stage;
use wechat_kf_service::store::WhileHuman;

use crate::common::*;
use crate::sessions::add_servicer;

/// Every `items` entry the sink received, in order, each message entry with its message.
fn items(sink: &Sink) -> Vec<(Value, Option<Value>)> {
    sink.received()
        .iter()
        .filter(|r| r.acked)
        .flat_map(|r| {
            r.items.iter().map(|item| {
                let message = item["message"]
                    .as_u64()
                    .and_then(|i| r.messages.get(i as usize).cloned());
                (item.clone(), message)
            })
        })
        .collect()
}

/// The entry of the message with this text content.
fn entry_of(sink: &Sink, content: &str) -> Option<Value> {
    items(sink)
        .into_iter()
        .find(|(_, m)| m.as_ref().is_some_and(|m| m["text"]["content"] == content))
        .map(|(item, _)| item)
}

/// A bot that answers, with one text, every customer text it may answer.
fn polite_bot(sink: &Sink, kf: &str) {
    let kf = kf.to_owned();
    sink.set_policy(move |r| {
        let replies: Vec<Value> = r
            .items
            .iter()
            .filter(|item| item["bot_may_reply"] == true)
            .filter_map(|item| r.messages.get(item["message"].as_u64()? as usize))
            .filter(|m| m["msgtype"] == "text")
            .map(|m| {
                json!({"touser": customer(m).1, "open_kfid": kf, "msgtype": "text",
                       "text": {"content": format!("re: {}", m["text"]["content"].as_str().unwrap_or(""))}})
            })
            .collect();
        Action::Ack(json!({ "replies": replies }))
    });
}

/// What the customer was sent (the requests WeChat accepted), in order.
fn sent(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<Value> {
    outbox(emu, Some(kf))
        .into_iter()
        .filter(|m| m["external_userid"] == customer)
        .map(|m| m["request"].clone())
        .collect()
}

/// The texts the customer was sent, in order.
fn answers(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<String> {
    sent(emu, kf, customer)
        .iter()
        .filter_map(|m| m["text"]["content"].as_str().map(str::to_owned))
        .collect()
}

async fn servicer_writes(emu: &RunningEmulator, kf: &str, customer: &str, content: &str) {
    control(
        emu,
        "/emulator/servicer/send",
        json!({"open_kfid": kf, "external_userid": customer, "servicer_userid": "zhangsan",
               "msgtype": "text", "text": {"content": content}}),
    )
    .await;
}

async fn servicer_ends(emu: &RunningEmulator, kf: &str, customer: &str) {
    control(
        emu,
        "/emulator/servicer/end",
        json!({"open_kfid": kf, "external_userid": customer}),
    )
    .await;
}

#[tokio::test]
async fn a_servicer_taking_over_silences_the_bot_until_the_session_ends_and_the_customer_writes_again()
 {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("turns");
    add_servicer(&emu, &kf, "zhangsan").await;
    polite_bot(&sink, &kf);
    let (running, _dir) = start_delivering_to(&emu, &sink).await;

    emu.emulator()
        .customer_send(text(&kf, "wmT", "你好"))
        .unwrap();
    wait_for("the bot's answer", Duration::from_secs(15), || async {
        answers(&emu, &kf, "wmT") == ["re: 你好"]
    })
    .await;

    servicer_writes(&emu, &kf, "wmT", "我是客服小张").await;
    emu.emulator()
        .customer_send(text(&kf, "wmT", "还在吗"))
        .unwrap();
    wait_for(
        "the question delivered",
        Duration::from_secs(15),
        || async { entry_of(&sink, "还在吗").is_some() },
    )
    .await;
    let servicer = entry_of(&sink, "我是客服小张").unwrap();
    assert_eq!(
        servicer["from"], "servicer",
        "never presented as the customer's"
    );
    assert_eq!(servicer["bot_may_reply"], false);
    let question = entry_of(&sink, "还在吗").unwrap();
    assert_eq!(
        (
            &question["from"],
            &question["bot_may_reply"],
            &question["reason"]
        ),
        (&json!("customer"), &json!(false), &json!("human_servicer"))
    );
    let took_over = items(&sink)
        .into_iter()
        .find(|(item, _)| item["session"]["new_state"] == 3)
        .expect("the takeover is delivered as a session item");
    assert_eq!(took_over.0["session"]["servicer_userid"], "zhangsan");
    // The emulator reports the servicer joining with an event first, as WeChat may.
    let trigger = &took_over.0["session"]["trigger"];
    assert!(
        trigger == "servicer_message" || trigger == "session_status_change",
        "{trigger}"
    );

    servicer_ends(&emu, &kf, "wmT").await;
    emu.emulator()
        .customer_send(text(&kf, "wmT", "再问一次"))
        .unwrap();
    wait_for(
        "the bot answering again",
        Duration::from_secs(15),
        || async { answers(&emu, &kf, "wmT").contains(&"re: 再问一次".to_owned()) },
    )
    .await;
    let order: Vec<Value> = items(&sink)
        .into_iter()
        .filter_map(|(item, _)| item.get("session").map(|s| s["new_state"].clone()))
        .collect();
    assert_eq!(
        order,
        vec![json!(3), json!(4), json!(0)],
        "every change, in order"
    );
    assert_eq!(
        answers(&emu, &kf, "wmT"),
        ["re: 你好", "re: 再问一次"],
        "nothing was said over the servicer"
    );
    assert_eq!(
        running.store().stats().await.unwrap().replies_refused,
        0,
        "the bot never had to be refused"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn while_human_hold_delivers_the_humans_turns_as_history_when_the_bot_may_speak_again() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("hold");
    add_servicer(&emu, &kf, "zhangsan").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.conversation.while_human = WhileHuman::Hold;
    let running = start_on_emulator_clock(&emu, config).await;

    emu.emulator()
        .customer_send(text(&kf, "wmH", "你好"))
        .unwrap();
    servicer_writes(&emu, &kf, "wmH", "人工为您服务").await;
    emu.emulator()
        .customer_send(text(&kf, "wmH", "我的订单呢"))
        .unwrap();
    wait_for(
        "the takeover delivered",
        Duration::from_secs(15),
        || async {
            items(&sink)
                .iter()
                .any(|(item, _)| item["session"]["new_state"] == 3)
        },
    )
    .await;
    assert!(
        entry_of(&sink, "我的订单呢").is_none(),
        "held while the human has it"
    );
    assert!(entry_of(&sink, "人工为您服务").is_none());

    servicer_ends(&emu, &kf, "wmH").await;
    emu.emulator()
        .customer_send(text(&kf, "wmH", "谢谢"))
        .unwrap();
    wait_for(
        "the customer's next message",
        Duration::from_secs(15),
        || async { entry_of(&sink, "谢谢").is_some() },
    )
    .await;
    let held = entry_of(&sink, "我的订单呢").expect("delivered as history");
    assert_eq!(held["history"], true);
    assert_eq!(held["bot_may_reply"], false);
    assert_eq!(entry_of(&sink, "人工为您服务").unwrap()["history"], true);
    assert_eq!(entry_of(&sink, "谢谢").unwrap()["bot_may_reply"], true);
    let contents: Vec<String> = items(&sink)
        .into_iter()
        .filter_map(|(_, m)| m?["text"]["content"].as_str().map(str::to_owned))
        .collect();
    let pos = |c: &str| contents.iter().position(|x| x == c).unwrap();
    assert!(
        pos("我的订单呢") < pos("谢谢"),
        "history first: {contents:?}"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn every_stage_gets_its_message_once_and_the_survey_answer_is_a_rating() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("stages");
    add_servicer(&emu, &kf, "zhangsan").await;
    polite_bot(&sink, &kf);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.conversation.welcome = Some(Stage::Text("欢迎光临".into()));
    config
        .conversation
        .scenes
        .insert("order".into(), Stage::Text("订单咨询 {scene_param}".into()));
    config.conversation.end = Some(Stage::Text("感谢您的咨询，请评价".into()));
    config.conversation.survey = vec!["满意".into(), "一般".into(), "不满意".into()];
    let running = start_on_emulator_clock(&emu, config).await;

    // A welcome by scene, with the code the entry carried, once.
    let entered = control(
        &emu,
        "/emulator/customer/enter_session",
        json!({"open_kfid": kf, "external_userid": "wmS", "scene": "order", "scene_param": "42"}),
    )
    .await;
    assert!(entered["welcome_code"].is_string(), "{entered}");
    wait_for("the welcome", Duration::from_secs(15), || async {
        answers(&emu, &kf, "wmS") == ["订单咨询 42"]
    })
    .await;
    // A customer who wrote within 48 hours gets no code: nothing is sent, and it is counted.
    emu.emulator()
        .customer_send(text(&kf, "wmS", "在吗"))
        .unwrap();
    control(
        &emu,
        "/emulator/customer/enter_session",
        json!({"open_kfid": kf, "external_userid": "wmS", "scene": "order"}),
    )
    .await;
    wait_for(
        "the entry without a code counted",
        Duration::from_secs(15),
        || async {
            metric(
                &running,
                "wechat_kf_stage_messages_total{stage=\"welcome\",result=\"no_code\"}",
            ) == 1
        },
    )
    .await;

    // The end message carries the survey; the customer's click is a rating, not a question.
    servicer_writes(&emu, &kf, "wmS", "您好").await;
    servicer_ends(&emu, &kf, "wmS").await;
    let menu = || {
        sent(&emu, &kf, "wmS")
            .into_iter()
            .find(|m| m["msgtype"] == "msgmenu")
    };
    wait_for("the end message", Duration::from_secs(15), || async {
        menu().is_some()
    })
    .await;
    let menu = menu().unwrap();
    assert_eq!(menu["msgmenu"]["head_content"], "感谢您的咨询，请评价");
    let choice = &menu["msgmenu"]["list"][0]["click"];
    assert_eq!(choice["content"], "满意");
    let click = json!({"open_kfid": kf, "external_userid": "wmS", "msgtype": "text",
                       "text": {"content": "满意", "menu_id": choice["id"]}});
    emu.emulator().customer_send(click).unwrap();
    wait_for("the rating delivered", Duration::from_secs(15), || async {
        entry_of(&sink, "满意").is_some()
    })
    .await;
    let rating = entry_of(&sink, "满意").unwrap();
    assert_eq!(rating["bot_may_reply"], false);
    assert_eq!(rating["reason"], "survey_answer");
    assert_eq!(
        metric(
            &running,
            &format!("wechat_kf_survey_ratings_total{{open_kfid=\"{kf}\",choice=\"0\"}}")
        ),
        1
    );
    wait_until_acks_recorded(&running).await;
    assert_eq!(
        sent(&emu, &kf, "wmS")
            .iter()
            .filter(|m| m["msgtype"] == "msgmenu" || m["text"]["content"] == "订单咨询 42")
            .count(),
        2,
        "each code used once"
    );
    assert!(
        !answers(&emu, &kf, "wmS").contains(&"re: 满意".to_owned()),
        "the bot did not answer the rating"
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_stage_messages_total{stage=\"end\",result=\"sent\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_services_own_transfers_are_told_to_the_bot_and_handing_back_ends_with_the_end_message()
{
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("handback");
    add_servicer(&emu, &kf, "zhangsan").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.handoff.keywords = vec!["人工".into()];
    config.conversation.queue = Some(Stage::Text("正在为您排队".into()));
    config.conversation.end = Some(Stage::Text("感谢咨询，再见".into()));
    let running = start_on_emulator_clock(&emu, config).await;

    emu.emulator()
        .customer_send(text(&kf, "wmB", "转人工"))
        .unwrap();
    wait_for("the queue message", Duration::from_secs(15), || async {
        answers(&emu, &kf, "wmB") == ["正在为您排队"]
    })
    .await;
    let queued = || {
        items(&sink)
            .into_iter()
            .find(|(item, _)| item["session"]["new_state"] == 2)
    };
    wait_for(
        "the transfer told to the bot",
        Duration::from_secs(15),
        || async { queued().is_some() },
    )
    .await;
    let queued = queued().unwrap().0;
    assert_eq!(queued["session"]["trigger"], "transfer");
    assert_eq!(queued["session"]["by"], "keyword");

    control(
        &emu,
        "/emulator/servicer/pick",
        json!({"open_kfid": kf, "external_userid": "wmB", "servicer_userid": "zhangsan"}),
    )
    .await;
    // Handing back: the reply API ends the session, with the configured end message.
    let (status, body) = api(
        &running,
        "POST",
        "/v1/service_state/trans",
        Some(json!({"open_kfid": kf, "external_userid": "wmB", "service_state": 4})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message_sent"], Value::Null, "no message of its own");
    wait_for("the end message", Duration::from_secs(15), || async {
        answers(&emu, &kf, "wmB").contains(&"感谢咨询，再见".to_owned())
    })
    .await;
    emu.emulator()
        .customer_send(text(&kf, "wmB", "还有个问题"))
        .unwrap();
    wait_for(
        "the customer's next message",
        Duration::from_secs(15),
        || async { entry_of(&sink, "还有个问题").is_some() },
    )
    .await;
    assert_eq!(
        entry_of(&sink, "还有个问题").unwrap()["bot_may_reply"],
        true
    );
    let states: Vec<Value> = items(&sink)
        .into_iter()
        .filter_map(|(item, _)| item.get("session").map(|s| s["new_state"].clone()))
        .collect();
    assert_eq!(
        states,
        vec![json!(2), json!(3), json!(4), json!(0)],
        "in order"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn auto_handoff_picks_the_least_recently_assigned_receiving_servicer_and_falls_back_to_the_queue()
 {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("auto");
    add_servicer(&emu, &kf, "zhangsan").await;
    add_servicer(&emu, &kf, "lisi").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.handoff.keywords = vec!["人工".into()];
    config.handoff.to = Some(wechat_kf_service::config::HandoffTarget::Auto);
    config.conversation.queue = Some(Stage::Text("正在排队".into()));
    config.conversation.connect = Some(Stage::Text("客服已接入".into()));
    let running = start_on_emulator_clock(&emu, config).await;
    let state_of = |customer: &'static str| {
        let emu = &emu;
        let kf = kf.clone();
        async move {
            crate::sessions::client(emu)
                .service_state()
                .get(kf.as_str(), customer)
                .await
                .unwrap()
        }
    };

    for customer in ["wmA1", "wmA2"] {
        emu.emulator()
            .customer_send(text(&kf, customer, "转人工"))
            .unwrap();
        wait_for("the handoff", Duration::from_secs(15), || async {
            answers(&emu, &kf, customer) == ["客服已接入"]
        })
        .await;
    }
    let first = state_of("wmA1").await;
    let second = state_of("wmA2").await;
    assert_eq!(first.service_state.code(), 3);
    assert_eq!(second.service_state.code(), 3);
    assert_ne!(
        first.servicer_userid, second.servicer_userid,
        "the least recently assigned servicer takes the next session"
    );

    // Both stop receiving (the roster is still cached): each refuses (95019), then the queue.
    for servicer in ["zhangsan", "lisi"] {
        control(
            &emu,
            "/emulator/servicer/status",
            json!({"open_kfid": kf, "servicer_userid": servicer, "status": 2}),
        )
        .await;
    }
    emu.emulator()
        .customer_send(text(&kf, "wmA3", "转人工"))
        .unwrap();
    wait_for("the queue message", Duration::from_secs(15), || async {
        answers(&emu, &kf, "wmA3") == ["正在排队"]
    })
    .await;
    assert_eq!(state_of("wmA3").await.service_state.code(), 2);
    assert_eq!(
        calls(&emu, "kf/service_state/trans"),
        2 + 2 + 1,
        "two assignments, two refusals (95019), then the queue"
    );
    wait_until_acks_recorded(&running).await;
    assert_eq!(
        answers(&emu, &kf, "wmA3"),
        ["正在排队"],
        "the queue message once"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn every_handover_is_summed_up_for_the_staff_in_the_group_robot() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("notify");
    let key = emu.emulator().create_robot("客服群");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.handoff.keywords = vec!["人工".into()];
    config.handoff.notify.robot_url = Some(wechat_kf_service::config::Secret::new(format!(
        "{}/cgi-bin/webhook/send?key={key}",
        emu.base_url()
    )));
    let staff = Sink::start().await;
    config.handoff.notify.webhook_url = Some(staff.url.clone());
    let running = start_on_emulator_clock(&emu, config).await;

    emu.emulator()
        .customer_send(text(&kf, "wmN", "我的订单没到"))
        .unwrap();
    emu.emulator()
        .customer_send(text(&kf, "wmN", "转人工"))
        .unwrap();
    let received = || {
        emu.emulator().robot_messages(Some(&key))["robots"][0]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_for(
        "the summary in the robot",
        Duration::from_secs(15),
        || async { !received().is_empty() },
    )
    .await;
    let summary = received()[0].to_string();
    for expected in ["wmN", "排队", "我的订单没到", "转人工", "客户要求人工"] {
        assert!(
            summary.contains(expected),
            "{expected} missing from {summary}"
        );
    }
    assert_eq!(
        metric(
            &running,
            "wechat_kf_handoff_notifications_total{target=\"robot\",result=\"ok\"}"
        ),
        1
    );
    wait_for(
        "the summary in the staff webhook",
        Duration::from_secs(15),
        || async { !staff.received().is_empty() },
    )
    .await;
    let posted = &staff.received()[0];
    assert!(posted.signature_ok, "signed like deliveries");
    let handoff = &posted.raw["handoff"];
    assert_eq!(handoff["external_userid"], "wmN");
    assert_eq!(handoff["service_state"], 2);
    assert_eq!(handoff["by"], "keyword");
    assert_eq!(handoff["messages"][0]["text"], "我的订单没到");
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_message_left_unanswered_past_the_idle_limit_is_handed_to_the_queue_once() {
    let emu = emulator().await;
    let sink = Sink::start().await; // acknowledges, never answers
    let kf = emu.emulator().create_account("idle");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.handoff.idle = Duration::from_secs(5);
    config.conversation.queue = Some(Stage::Text("稍等，正在为您转人工".into()));
    let running = start_on_emulator_clock(&emu, config).await;

    emu.emulator()
        .customer_send(text(&kf, "wmI", "有人吗"))
        .unwrap();
    emu.emulator()
        .customer_send(text(&kf, "wmJ", "在吗"))
        .unwrap();
    wait_for("both delivered", Duration::from_secs(15), || async {
        entry_of(&sink, "在吗").is_some() && entry_of(&sink, "有人吗").is_some()
    })
    .await;
    // wmJ gets an answer; wmI does not.
    let (status, body) = api(
        &running,
        "POST",
        "/v1/messages",
        Some(json!({"touser": "wmJ", "open_kfid": kf, "msgtype": "text", "text": {"content": "在的"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    control(&emu, "/emulator/clock/advance", json!({"seconds": 10})).await;
    wait_for(
        "the idle customer queued",
        Duration::from_secs(15),
        || async { answers(&emu, &kf, "wmI") == ["稍等，正在为您转人工"] },
    )
    .await;
    wait_for(
        "the handover told to the bot",
        Duration::from_secs(15),
        || async {
            items(&sink)
                .iter()
                .any(|(item, _)| item["session"]["by"] == "idle")
        },
    )
    .await;
    // Another scan changes nothing: one handover per unanswered message.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(calls(&emu, "kf/service_state/trans"), 1, "wmJ was answered");
    assert_eq!(answers(&emu, &kf, "wmJ"), ["在的"]);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_transfer_an_earlier_attempt_already_made_is_recorded_as_done_not_failed() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("again");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.handoff.keywords = vec!["人工".into()];
    let running = start_on_emulator_clock(&emu, config).await;

    emu.emulator()
        .customer_send(text(&kf, "wmG", "你好"))
        .unwrap();
    wait_for("the first message", Duration::from_secs(15), || async {
        entry_of(&sink, "你好").is_some()
    })
    .await;
    // As if an attempt before a crash had queued the session: WeChat now refuses 2 → 2 (95016).
    crate::sessions::client(&emu)
        .service_state()
        .trans(
            wechat_kf::client::service_state::TransServiceStateRequest::new(
                kf.as_str(),
                "wmG",
                wechat_kf::session::ServiceState::Queued,
            ),
        )
        .await
        .unwrap();
    emu.emulator()
        .customer_send(text(&kf, "wmG", "转人工"))
        .unwrap();
    wait_for(
        "the transfer told to the bot",
        Duration::from_secs(15),
        || async {
            items(&sink)
                .iter()
                .any(|(item, _)| item["session"]["by"] == "keyword")
        },
    )
    .await;
    assert_eq!(
        metric(
            &running,
            "wechat_kf_handoffs_total{trigger=\"keyword\",result=\"ok\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_handoffs_total{trigger=\"keyword\",result=\"failed\"}"
        ),
        0
    );
    running.shutdown().await;
    emu.shutdown().await;
}
