//! Sends a menu, lets the customer tap an item, and reads the tap back through sync_msg.
//!
//! Runs against an in-process emulator: `cargo run -p wechat-kf --example send_menu`.

use std::error::Error;

use wechat_kf::client::Client;
use wechat_kf::client::messages::SendMsgRequest;
use wechat_kf::client::outbound::OutboundMessage;
use wechat_kf::client::puller::Puller;
use wechat_kf::message::{MenuItem, MsgMenu};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let config = wechat_kf_emulator::Config::generated();
    let builder = Client::builder(config.corp_id.clone(), config.secret.clone());
    let running = wechat_kf_emulator::Emulator::start(config, "127.0.0.1:0".parse()?).await?;
    let client = builder.base_url(running.base_url()).build()?;
    let emulator = running.emulator();
    let open_kfid = emulator.create_account("菜单客服");

    // The customer writes first: that opens the 48-hour window for five replies.
    emulator.customer_send(serde_json::json!({
        "open_kfid": open_kfid, "external_userid": "wmCarol",
        "msgtype": "text", "text": {"content": "我要退货"}
    }))?;

    let menu = MsgMenu::new()
        .head("请选择：")
        .item(MenuItem::click("101", "转人工"))
        .item(MenuItem::click("102", "查物流"))
        .item(MenuItem::view("https://example.com/return", "退货说明"))
        .item(MenuItem::text("工作时间 9:00-18:00"))
        .tail("感谢咨询");
    let sent = client
        .messages()
        .send(
            SendMsgRequest::new("wmCarol", open_kfid.clone(), OutboundMessage::msgmenu(menu))
                .msgid("menu-1"),
        )
        .await?;
    println!("menu sent as {}", sent.msgid);

    // A menu that breaks a documented limit never leaves the process.
    let too_long = MsgMenu::new().item(MenuItem::click("x", "长".repeat(60)));
    let err = client
        .messages()
        .send(SendMsgRequest::new(
            "wmCarol",
            open_kfid.clone(),
            OutboundMessage::msgmenu(too_long),
        ))
        .await
        .unwrap_err();
    println!("rejected locally: {err}");

    // The customer taps "转人工": a text message whose menu_id is the item's id.
    emulator.customer_send(serde_json::json!({
        "open_kfid": open_kfid, "external_userid": "wmCarol",
        "msgtype": "text", "text": {"content": "转人工", "menu_id": "101"}
    }))?;

    let mut puller = Puller::new(client, open_kfid);
    let mut taps = Vec::new();
    loop {
        let batch = puller.fetch().await?;
        for message in &batch.messages {
            if let Some(text) = message.text() {
                if let Some(menu_id) = &text.menu_id {
                    println!(
                        "{} tapped {menu_id} ({})",
                        message.external_userid().map_or("?", |u| u.as_str()),
                        text.content
                    );
                    taps.push(menu_id.clone());
                }
            }
        }
        let more = batch.has_more();
        batch.commit().await?;
        if !more {
            break;
        }
    }
    assert_eq!(taps, ["101"]);
    running.shutdown().await;
    Ok(())
}
