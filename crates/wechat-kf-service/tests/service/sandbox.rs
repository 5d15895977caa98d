//! Sandbox mode: no credentials → embedded emulator, demo account, echo bot.

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf_service::Service;
use wechat_kf_service::config::{Config, Overrides};

use crate::common::wait_for;

#[tokio::test]
async fn the_sandbox_runs_the_whole_loop_with_an_echo() {
    let flags = Overrides::default()
        .set("--listen", "listen", Some("127.0.0.1:0"))
        .switch("--echo", "sandbox.echo", true);
    let config = Config::from_sources(None, &|_| None, flags).unwrap();
    assert!(config.is_sandbox());
    let running = Service::start(config).await.unwrap();
    let info = running.sandbox().unwrap().clone();
    let instructions = info.instructions();
    assert!(instructions.contains(&format!("{}/emulator/customer/send", info.emulator_url)));
    assert!(instructions.contains(info.open_kfid.as_str()));

    let http = reqwest::Client::new();
    let state: Value = http
        .get(format!("{}/emulator/state", info.emulator_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        state["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["open_kfid"] == info.open_kfid.as_str())
    );

    // What the printed curl command does.
    let sent = http
        .post(format!("{}/emulator/customer/send", info.emulator_url))
        .json(
            &json!({"open_kfid": info.open_kfid, "external_userid": "wmDemoCustomer",
                      "msgtype": "text", "text": {"content": "hello"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let outbox_url = format!(
        "{}/emulator/outbox?open_kfid={}",
        info.emulator_url, info.open_kfid
    );
    wait_for("the echo in the outbox", Duration::from_secs(10), || {
        let http = http.clone();
        let url = outbox_url.clone();
        async move {
            let outbox: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            outbox["messages"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["request"]["text"]["content"] == "echo: hello")
            })
        }
    })
    .await;

    // The printed reply-API command works with the printed token.
    let token = info.generated_api_token.clone().unwrap();
    let reply = http
        .post(format!("{}/v1/messages", running.base_url()))
        .bearer_auth(token)
        .json(&json!({"touser": "wmDemoCustomer", "open_kfid": info.open_kfid, "msgtype": "text", "text": {"content": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    running.shutdown().await;
}

#[tokio::test]
async fn a_customer_written_through_the_sandbox_api_shows_in_the_conversation_and_the_chat() {
    let flags = Overrides::default()
        .set("--listen", "listen", Some("127.0.0.1:0"))
        .switch("--echo", "sandbox.echo", true);
    let config = Config::from_sources(None, &|_| None, flags).unwrap();
    let running = Service::start(config).await.unwrap();
    let info = running.sandbox().unwrap().clone();
    let token = info.generated_api_token.clone().unwrap();
    let base = running.base_url();
    let http = reqwest::Client::new();
    let kf = info.open_kfid.as_str().to_owned();

    let sent = http
        .post(format!("{base}/v1/sandbox/messages"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "external_userid": "wmConsoleCustomer", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let voice = http
        .post(format!("{base}/v1/sandbox/messages"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "external_userid": "wmVoice", "msgtype": "voice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(voice.status(), 200);
    let blank = http
        .post(format!("{base}/v1/sandbox/messages"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "external_userid": "wmVoice", "text": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(blank.status(), 400, "a text must not be blank");
    let refused = http
        .post(format!("{base}/v1/sandbox/messages"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "external_userid": "wm bad", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["field"], "external_userid");

    let get = |url: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let answer = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.json::<Value>().await.unwrap()
        }
    };
    let chat_url = format!("{base}/v1/sandbox/chat/{kf}/wmConsoleCustomer");
    wait_for(
        "the echo in the customer's chat",
        Duration::from_secs(10),
        || {
            let chat = get(chat_url.clone());
            async move {
                let chat = chat.await;
                let items = chat["items"].as_array().cloned().unwrap_or_default();
                items.len() == 2
                    && items[0]["from"] == "customer"
                    && items[1]["from"] == "service"
                    && items[1]["text"] == "echo: hello"
            }
        },
    )
    .await;
    let conversation_url = format!("{base}/v1/conversations/{kf}/wmConsoleCustomer");
    wait_for(
        "the echo sent in the conversation",
        Duration::from_secs(10),
        || {
            let conversation = get(conversation_url.clone());
            async move {
                let c = conversation.await;
                let items = c["items"].as_array().cloned().unwrap_or_default();
                items
                    .iter()
                    .any(|i| i["from"] == "customer" && i["text"] == "hello")
                    && items.iter().any(|i| {
                        i["from"] == "bot" && i["text"] == "echo: hello" && i["state"] == "sent"
                    })
            }
        },
    )
    .await;
    // A contact-way link for the account (what the console shows as a QR code).
    let way = http
        .post(format!("{base}/v1/contact_ways"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "scene": "console_test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(way.status(), 200);
    let way: Value = way.json().await.unwrap();
    assert!(
        way["url"].as_str().unwrap().starts_with("https://"),
        "{way}"
    );
    let bad_scene = http
        .post(format!("{base}/v1/contact_ways"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "scene": "not a scene"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_scene.status(), 400);

    // A servicer cannot take a session that is not queued; once queued, it can.
    let hook = |action: &str| {
        http.post(format!("{base}/v1/sandbox/servicer"))
            .bearer_auth(&token)
            .json(
                &json!({"open_kfid": kf, "external_userid": "wmConsoleCustomer", "action": action}),
            )
            .send()
    };
    assert_eq!(hook("pick").await.unwrap().status(), 409);
    let queued = http
        .post(format!("{base}/v1/service_state/trans"))
        .bearer_auth(&token)
        .json(&json!({"open_kfid": kf, "external_userid": "wmConsoleCustomer", "service_state": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 200);
    assert_eq!(hook("pick").await.unwrap().status(), 200);
    wait_for(
        "the servicer's session in the list",
        Duration::from_secs(10),
        || {
            let list = get(format!("{base}/v1/conversations?open_kfid={kf}"));
            async move { list.await["conversations"][0]["state"] == "human" }
        },
    )
    .await;
    assert_eq!(hook("end").await.unwrap().status(), 200);
    wait_for(
        "the ended session in the list",
        Duration::from_secs(10),
        || {
            let list = get(format!("{base}/v1/conversations?open_kfid={kf}"));
            async move { list.await["conversations"][0]["state"] == "ended" }
        },
    )
    .await;
    let list = get(format!("{base}/v1/conversations?open_kfid={kf}")).await;
    let row = &list["conversations"][0];
    assert_eq!(row["external_userid"], "wmConsoleCustomer");
    assert_eq!(row["state"], "ended");
    assert_eq!(row["session"]["can_send"], false, "{row}");
    let unauthorized = http
        .get(format!("{base}/v1/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    running.shutdown().await;
}
