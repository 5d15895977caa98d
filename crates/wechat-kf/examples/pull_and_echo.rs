//! Pulls every new message of one account and echoes text messages back.
//!
//! By default this runs against an in-process emulator that plays three customers, so it works
//! anywhere: `cargo run -p wechat-kf --example pull_and_echo`. To run it against a real corp (or a
//! running `wechat-kf emulator`), set `WECHAT_KF_CORP_ID`, `WECHAT_KF_SECRET`,
//! `WECHAT_KF_OPEN_KFID` and optionally `WECHAT_KF_BASE_URL`.

use std::error::Error;

use futures::StreamExt;
use wechat_kf::client::Client;
use wechat_kf::client::messages::SendMsgRequest;
use wechat_kf::client::outbound::OutboundMessage;
use wechat_kf::client::puller::{PullItem, Puller};

/// A send_msg msgid derived from the incoming msgid, so a re-run after a crash cannot echo the
/// same message twice: the server rejects the duplicate and the client reports it as sent.
fn echo_msgid(incoming: &str) -> String {
    use sha1::Digest;
    // Stable across runs and builds, and fits 32 bytes of [0-9a-zA-Z_-].
    let digest = sha1::Sha1::digest(incoming.as_bytes());
    format!("echo-{}", hex::encode(&digest[..12]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let mut emulator = None;
    let (client, open_kfid) = match (
        env("WECHAT_KF_CORP_ID"),
        env("WECHAT_KF_SECRET"),
        env("WECHAT_KF_OPEN_KFID"),
    ) {
        (Some(corp_id), Some(secret), Some(open_kfid)) => {
            let mut builder = Client::builder(corp_id, secret);
            if let Some(base) = env("WECHAT_KF_BASE_URL") {
                builder = builder.base_url(base);
            }
            (builder.build()?, open_kfid)
        }
        _ => {
            let config = wechat_kf_emulator::Config::generated();
            let client_builder = Client::builder(config.corp_id.clone(), config.secret.clone());
            let running =
                wechat_kf_emulator::Emulator::start(config, "127.0.0.1:0".parse()?).await?;
            let open_kfid = running.emulator().create_account("回声客服");
            for (user, text) in [
                ("wmAlice", "你好"),
                ("wmBob", "在吗？"),
                ("wmAlice", "查订单"),
            ] {
                running.emulator().customer_send(serde_json::json!({
                    "open_kfid": open_kfid, "external_userid": user,
                    "msgtype": "text", "text": {"content": text}
                }))?;
            }
            let client = client_builder.base_url(running.base_url()).build()?;
            emulator = Some(running);
            (client, open_kfid)
        }
    };

    let mut puller = Puller::new(client.clone(), open_kfid.clone());
    let mut stream = Box::pin(puller.stream());
    let (mut pulled, mut echoed) = (0, 0);
    while let Some(item) = stream.next().await {
        let message = match item? {
            PullItem::Message(message) => message,
            PullItem::Invalid(item) => {
                eprintln!("skipping an undecodable item: {}", item.error);
                continue;
            }
        };
        pulled += 1;
        let (Some(text), Some(customer)) = (message.text(), message.external_userid()) else {
            continue;
        };
        let reply = OutboundMessage::text(format!("你说：{}", text.content));
        let sent = client
            .messages()
            .send(
                SendMsgRequest::new(customer.clone(), open_kfid.clone(), reply)
                    .msgid(echo_msgid(message.msgid().as_str())),
            )
            .await?;
        echoed += 1;
        println!("echoed {} to {customer} as {}", message.msgid(), sent.msgid);
    }
    drop(stream);
    println!(
        "pulled {pulled} messages, echoed {echoed}; cursor {:?}",
        puller.committed_cursor()
    );

    if let Some(running) = emulator {
        let outbox = running.emulator().outbox(Some(&open_kfid), None);
        let count = outbox["messages"].as_array().map_or(0, Vec::len);
        assert_eq!(count, echoed, "every echo reached the emulator once");
        running.shutdown().await;
    }
    Ok(())
}
