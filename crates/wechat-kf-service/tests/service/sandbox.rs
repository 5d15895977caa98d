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
