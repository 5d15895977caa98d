//! The built-in responders against the emulator and stand-in model servers that speak the
//! OpenAI and Dify protocols (every request recorded and checked against the protocol's
//! types): prompts and models per account, memory per (account, customer), one answer per
//! turn, answers fitted to the quota, slow and failing models, no model call when no reply
//! may be sent, tools, images.

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::RunningService;
use wechat_kf_service::config::{Config, ResponderKind, ResponderRoute, Secret};
use wechat_kf_test_support::{DifyStandIn, OpenAiStandIn, Recorded, Reply};

use crate::common::*;
use crate::sessions::add_servicer;

/// A service on the emulator's clock whose `openai` responder asks `model`.
fn agent_config(emu: &RunningEmulator, dir: &tempfile::TempDir, model: &OpenAiStandIn) -> Config {
    let mut config = config(emu, &dir.path().join("kf.db"), None);
    config.responder.kind = Some(ResponderKind::Openai);
    config.responder.base_url = Some(model.base_url());
    config.responder.api_key = Some(Secret::new("sk-test"));
    config.responder.model = Some("model-default".into());
    config.responder.system_prompt = Some("You are the default agent.".into());
    config.responder.interim_after = Duration::ZERO;
    config.responder.deadline = Duration::from_secs(20);
    config
}

/// The texts the customer was sent, in order.
fn answers(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<String> {
    outbox(emu, Some(kf))
        .into_iter()
        .filter(|m| m["external_userid"] == customer)
        .filter_map(|m| m["request"]["text"]["content"].as_str().map(str::to_owned))
        .collect()
}

/// The texts of a recorded chat request's messages: (role, text) pairs.
fn turns(request: &Recorded) -> Vec<(String, String)> {
    request.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            (m["role"].as_str().unwrap_or_default().to_owned(), text)
        })
        .collect()
}

async fn wait_answers(emu: &RunningEmulator, kf: &str, customer: &str, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} answers to {customer}"),
        Duration::from_secs(30),
        || async { answers(emu, kf, customer).len() >= n },
    )
    .await;
    answers(emu, kf, customer)
}

async fn say(emu: &RunningEmulator, kf: &str, customer: &str, content: &str) {
    emu.emulator()
        .customer_send(text(kf, customer, content))
        .unwrap();
}

async fn start_agent(emu: &RunningEmulator, config: Config) -> RunningService {
    start_on_emulator_clock(emu, config).await
}

#[tokio::test]
async fn each_account_has_its_prompt_and_model_and_each_pair_only_its_own_memory() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf_a = emu.emulator().create_account("shop");
    let kf_b = emu.emulator().create_account("support");
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emu, &dir, &model);
    config.responder.routes = vec![ResponderRoute {
        open_kfid: kf_b.as_str().into(),
        kind: None,
        base_url: None,
        api_key: None,
        model: Some("model-b".into()),
        system_prompt: Some("You are the support agent.".into()),
        system_prompt_file: None,
        temperature: Some(0.2),
        max_tokens: Some(300),
    }];
    let running = start_agent(&emu, config).await;

    // Five turns of one customer of account A, one of another customer of A, one of B.
    for i in 1..=5 {
        say(&emu, &kf_a, "wmA", &format!("question {i}")).await;
        wait_answers(&emu, &kf_a, "wmA", i).await;
    }
    say(&emu, &kf_a, "wmOther", "unrelated").await;
    wait_answers(&emu, &kf_a, "wmOther", 1).await;
    say(&emu, &kf_b, "wmA", "same customer id, other account").await;
    wait_answers(&emu, &kf_b, "wmA", 1).await;
    say(&emu, &kf_a, "wmA", "question 6").await;
    let got = wait_answers(&emu, &kf_a, "wmA", 6).await;
    assert_eq!(got[5], "model-default heard: question 6");

    let requests = model.requests();
    assert!(requests.iter().all(|r| r.problem.is_none()), "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer sk-test"))
    );
    let sixth = requests
        .iter()
        .find(|r| turns(r).last().is_some_and(|(_, t)| t == "question 6"))
        .unwrap();
    assert_eq!(sixth.body["model"], "model-default");
    let texts: Vec<String> = turns(sixth).into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts[0], "You are the default agent.");
    let expected: Vec<String> = (1..=5)
        .flat_map(|i| {
            [
                format!("question {i}"),
                format!("model-default heard: question {i}"),
            ]
        })
        .chain(["question 6".to_owned()])
        .collect();
    assert_eq!(texts[1..], expected[..], "only this pair's turns, in order");
    let other_account = requests
        .iter()
        .find(|r| r.body["model"] == "model-b")
        .expect("account B asks its own model");
    assert_eq!(
        turns(other_account),
        vec![
            ("system".to_owned(), "You are the support agent.".to_owned()),
            (
                "user".to_owned(),
                "same customer id, other account".to_owned()
            ),
        ]
    );
    assert_eq!(other_account.body["max_tokens"], 300);
    assert_eq!(
        metric(
            &running,
            "wechat_kf_responder_tokens_total{model=\"model-b\",type=\"prompt\"}"
        ),
        10
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_long_markdown_answer_arrives_as_plain_texts_within_the_remaining_quota() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("long");
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emu, &dir, &model);
    config.responder.max_messages = 5;
    let running = start_agent(&emu, config).await;
    let mut markdown = String::from("# 退货说明\n\n");
    while markdown.len() < 9 * 1024 {
        markdown.push_str(
            "**第一步**：打开[订单页](https://example.com/orders)，选择*需要退货*的商品。\n\n\
             - 填写原因\n- 上传照片\n\n",
        );
    }
    model.push(Reply::text(markdown).delay(Duration::from_secs(2)));
    say(&emu, &kf, "wmL", "怎么退货？").await;
    // While the model writes, the business sends three messages through the reply API: two of
    // the customer's five remain for the answer.
    model.wait_for_requests(1, Duration::from_secs(15)).await;
    for i in 0..3 {
        let (status, body) = api(
            &running,
            "POST",
            "/v1/messages",
            Some(json!({"touser": "wmL", "open_kfid": kf, "msgtype": "text",
                        "text": {"content": format!("notice {i}")}})),
        )
        .await;
        assert!(status.is_success(), "{status} {body}");
    }
    wait_for("the answer", Duration::from_secs(30), || async {
        answers(&emu, &kf, "wmL").len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = answers(&emu, &kf, "wmL");
    assert_eq!(got.len(), 5, "three notices and two texts of the answer");
    let answer = &got[3..];
    for text in answer {
        assert!(text.len() <= 2048, "{}", text.len());
        assert!(!text.contains("**") && !text.contains("# ") && !text.contains("]("));
    }
    assert!(answer[0].starts_with("退货说明"), "{}", answer[0]);
    assert!(answer[1].ends_with('…'), "cut with the marker");
    assert_eq!(metric(&running, "wechat_kf_responder_truncations_total"), 1);
    assert_eq!(running.store().stats().await.unwrap().replies_refused, 0);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_three_texts_gets_one_answer() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("burst");
    let dir = tempfile::tempdir().unwrap();
    let running = start_agent(&emu, agent_config(&emu, &dir, &model)).await;
    // The first question alone reaches the model, which takes its time; the next two arrive
    // meanwhile: its answer is dropped and the three are answered together.
    model.push(Reply::text("stale answer").delay(Duration::from_secs(2)));
    say(&emu, &kf, "wmB", "first").await;
    model.wait_for_requests(1, Duration::from_secs(15)).await;
    say(&emu, &kf, "wmB", "second").await;
    say(&emu, &kf, "wmB", "third").await;
    let got = wait_answers(&emu, &kf, "wmB", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(answers(&emu, &kf, "wmB"), got);
    assert_eq!(got, ["model-default heard: third"]);
    let last = model.requests().last().cloned().unwrap();
    let texts: Vec<String> = turns(&last).into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts[1..], ["first", "second", "third"]);
    assert_eq!(
        metric(
            &running,
            "wechat_kf_responder_turns_total{result=\"superseded\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_slow_model_gets_one_interim_notice_and_the_answer_still_comes() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("slow");
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emu, &dir, &model);
    config.responder.interim_after = Duration::from_secs(2);
    config.responder.interim_text = "稍等，正在查询".into();
    config.responder.deadline = Duration::from_secs(60);
    let running = start_agent(&emu, config).await;
    model.push(Reply::text("查到了").delay(Duration::from_secs(40)));
    say(&emu, &kf, "wmS", "查一下订单").await;
    let got = wait_answers(&emu, &kf, "wmS", 1).await;
    assert_eq!(got, ["稍等，正在查询"]);
    wait_for("the answer", Duration::from_secs(60), || async {
        answers(&emu, &kf, "wmS").len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answers(&emu, &kf, "wmS"), ["稍等，正在查询", "查到了"]);
    assert_eq!(
        metric(
            &running,
            "wechat_kf_responder_interim_notices_total{result=\"sent\"}"
        ),
        1
    );
    assert_eq!(model.requests().len(), 1, "asked once");
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_failing_model_yields_the_fallback_and_a_recorded_failure() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("broken");
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emu, &dir, &model);
    config.responder.deadline = Duration::from_secs(3);
    config.responder.fallback_text = "暂时无法回答".into();
    let running = start_agent(&emu, config).await;
    for _ in 0..20 {
        model.push(Reply::status(500));
    }
    say(&emu, &kf, "wmF", "在吗").await;
    let got = wait_answers(&emu, &kf, "wmF", 1).await;
    assert_eq!(got, ["暂时无法回答"]);
    let attempts = model.requests().len();
    assert!(attempts >= 2, "5xx is retried: {attempts}");
    assert_eq!(
        metric(
            &running,
            "wechat_kf_responder_turns_total{result=\"failed\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_responder_errors_total{kind=\"http_5xx\"}"
        ) as usize,
        attempts
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn no_model_is_asked_while_a_servicer_holds_the_session_and_the_servicer_is_remembered() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("human");
    add_servicer(&emu, &kf, "zhangsan").await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_agent(&emu, agent_config(&emu, &dir, &model)).await;
    say(&emu, &kf, "wmH", "你好").await;
    wait_answers(&emu, &kf, "wmH", 1).await;
    control(
        &emu,
        "/emulator/servicer/send",
        json!({"open_kfid": kf, "external_userid": "wmH", "servicer_userid": "zhangsan",
               "msgtype": "text", "text": {"content": "我是客服小张"}}),
    )
    .await;
    say(&emu, &kf, "wmH", "还在吗").await;
    wait_for("the question handled", Duration::from_secs(15), || async {
        metric(
            &running,
            "wechat_kf_responder_turns_total{result=\"not_the_bots_turn\"}",
        ) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        model.requests().len(),
        1,
        "no model call while a human has it"
    );
    assert_eq!(answers(&emu, &kf, "wmH").len(), 1);
    let memory = running
        .store()
        .memory(kf.as_str().into(), "wmH".into(), 50)
        .await
        .unwrap();
    let texts: Vec<&str> = memory.iter().map(|e| e.content.as_str()).collect();
    assert!(texts.contains(&"我是客服小张"), "{texts:?}");
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn transfer_to_human_moves_the_session_and_tells_the_model_nothing_identifying() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("handover");
    let dir = tempfile::tempdir().unwrap();
    let running = start_agent(&emu, agent_config(&emu, &dir, &model)).await;
    model.push(Reply::tool_call(
        "transfer_to_human",
        r#"{"reason":"customer asked for a person"}"#,
    ));
    say(&emu, &kf, "wmT", "我要人工").await;
    let state = || async {
        crate::sessions::client(&emu)
            .service_state()
            .get(kf.as_str(), "wmT")
            .await
            .unwrap()
            .service_state
            .code()
    };
    wait_for("the session queued", Duration::from_secs(15), || async {
        state().await == 2
    })
    .await;
    let request = &model.requests()[0];
    let tools: Vec<&str> = request.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["transfer_to_human", "end_conversation"]);
    let body = request.body.to_string();
    assert!(
        !body.contains("wmT") && !body.contains(kf.as_str()),
        "{body}"
    );
    let memory = running
        .store()
        .memory(kf.as_str().into(), "wmT".into(), 50)
        .await
        .unwrap();
    assert!(
        memory
            .iter()
            .any(|e| e.content == "[handed the conversation over to a human agent]")
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn an_image_reaches_a_vision_model_as_an_image_part() {
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    let kf = emu.emulator().create_account("vision");
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emu, &dir, &model);
    config.responder.vision = true;
    config.media.download_dir = Some(dir.path().join("media"));
    let running = start_agent(&emu, config).await;
    let png: Vec<u8> = [b"\x89PNG\r\n\x1a\n".as_slice(), &[7u8; 300]].concat();
    let media_id = crate::media::upload(&emu, "image", "截图.png", png.clone()).await;
    emu.emulator()
        .customer_send(
            json!({"open_kfid": kf, "external_userid": "wmV", "msgtype": "image",
                              "image": {"media_id": media_id}}),
        )
        .unwrap();
    let got = wait_answers(&emu, &kf, "wmV", 1).await;
    assert_eq!(got, ["model-default heard: [image]"]);
    let request = &model.requests()[0];
    let parts = request.body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_array()
        .cloned()
        .expect("content parts");
    let url = parts
        .iter()
        .find(|p| p["type"] == "image_url")
        .and_then(|p| p["image_url"]["url"].as_str())
        .expect("an image part");
    use base64::Engine as _;
    let encoded = url.strip_prefix("data:image/png;base64,").unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
        png
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_dify_app_keeps_its_conversation_per_customer() {
    let emu = emulator().await;
    let dify = DifyStandIn::start().await;
    let kf = emu.emulator().create_account("dify");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.responder.kind = Some(ResponderKind::Dify);
    config.responder.base_url = Some(dify.base_url());
    config.responder.api_key = Some(Secret::new("app-key"));
    config.responder.interim_after = Duration::ZERO;
    let running = start_agent(&emu, config).await;
    say(&emu, &kf, "wmD", "第一个问题").await;
    wait_answers(&emu, &kf, "wmD", 1).await;
    say(&emu, &kf, "wmD", "第二个问题").await;
    let got = wait_answers(&emu, &kf, "wmD", 2).await;
    assert_eq!(got, ["dify heard: 第一个问题", "dify heard: 第二个问题"]);
    let requests = dify.requests();
    assert!(requests.iter().all(|r| r.problem.is_none()), "{requests:?}");
    assert_eq!(requests[0].body.get("conversation_id"), None);
    let first_id = requests[1].body["conversation_id"].as_str().unwrap();
    assert!(!first_id.is_empty());
    assert_eq!(requests[0].body["user"], requests[1].body["user"]);
    assert!(!requests[0].body["user"].as_str().unwrap().contains("wmD"));
    assert_eq!(requests[1].authorization.as_deref(), Some("Bearer app-key"));
    let (status, setup) = api(&running, "GET", "/v1/setup", None).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        setup["webhook"]["target"], "dify",
        "the setup report names the responder"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

/// A real local model (Ollama on 127.0.0.1:11434) answers through the responder, when one runs.
#[tokio::test]
async fn a_local_ollama_answers_when_one_runs() {
    let up = reqwest::Client::new()
        .get("http://127.0.0.1:11434/api/tags")
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    let models: Vec<String> = match up {
        Ok(response) => response
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| {
                v["models"].as_array().map(|m| {
                    m.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let Some(name) = models.first() else {
        eprintln!("skipped: no Ollama with a model on 127.0.0.1:11434");
        return;
    };
    let emu = emulator().await;
    let kf = emu.emulator().create_account("ollama");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.responder.kind = Some(ResponderKind::Openai);
    config.responder.base_url = Some("http://127.0.0.1:11434/v1".into());
    config.responder.model = Some(name.clone());
    config.responder.tools = false;
    config.responder.deadline = Duration::from_secs(120);
    let running = start_agent(&emu, config).await;
    say(&emu, &kf, "wmO", "Say hello in one word.").await;
    wait_for("Ollama's answer", Duration::from_secs(150), || async {
        !answers(&emu, &kf, "wmO").is_empty()
    })
    .await;
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_voice_notes_transcript_reaches_the_model() {
    if !crate::media::ffmpeg_available() {
        return;
    }
    let emu = emulator().await;
    let model = OpenAiStandIn::start().await;
    model.set_transcript("我想查一下订单");
    let kf = emu.emulator().create_account("voice");
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&emu, &dir, &model);
    config.media.download_dir = Some(dir.path().join("media"));
    config.responder.transcription = Some(wechat_kf_service::config::TranscriptionConfig {
        timeout: Duration::from_secs(20),
        ..Default::default()
    });
    let running = start_agent(&emu, config).await;
    let amr = std::fs::read(crate::media::VOICE).unwrap();
    crate::media::send_media(&emu, &kf, "wmVoice", "voice", "语音.amr", amr).await;
    let got = wait_answers(&emu, &kf, "wmVoice", 1).await;
    assert_eq!(got, ["model-default heard: [voice] 我想查一下订单"]);
    assert_eq!(model.transcriptions().len(), 1);
    running.shutdown().await;
    emu.shutdown().await;
}
