//! send_msg, send_msg_on_event and recall_msg (official docs 94677, 95122).

use std::time::Duration;

use serde_json::{Value, json};

use super::{App, code};

async fn setup() -> (App, String) {
    let app = App::new().await;
    let kf = app.account().await;
    app.servicer(&kf, "zhangsan").await;
    (app, kf)
}

fn text(kf: &str, content: &str) -> Value {
    json!({"touser": "wmC", "open_kfid": kf, "msgtype": "text", "text": {"content": content}})
}

#[tokio::test]
async fn a_reply_after_a_customer_message_is_accepted_and_kept_out_of_sync() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    let mut body = text(&kf, "hello");
    body["msgid"] = json!("order-notice-1");
    let v = app.api("kf/send_msg", body).await;
    assert_eq!((code(&v), v["msgid"].as_str()), (0, Some("order-notice-1")));
    let generated = app.api("kf/send_msg", text(&kf, "again")).await;
    assert!(!generated["msgid"].as_str().unwrap().is_empty());
    assert_eq!(app.pull_all(&kf).await.len(), 1);
    let outbox = app.emu.outbox(Some(&kf), Some("wmC"));
    assert_eq!(outbox["messages"][0]["msgid"], "order-notice-1");
    assert_eq!(outbox["messages"][0]["request"]["text"]["content"], "hello");
    let state = app
        .api(
            "kf/service_state/get",
            json!({"open_kfid": kf, "external_userid": "wmC"}),
        )
        .await;
    assert_eq!(state["service_state"], 1);
}

#[tokio::test]
async fn caller_msgids_are_checked() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    for bad in ["", "has space", &"a".repeat(33)] {
        let mut body = text(&kf, "x");
        body["msgid"] = json!(bad);
        assert_eq!(code(&app.api("kf/send_msg", body).await), 40035, "{bad:?}");
    }
    let mut body = text(&kf, "x");
    body["msgid"] = json!("dup-1");
    assert_eq!(code(&app.api("kf/send_msg", body.clone()).await), 0);
    assert_eq!(code(&app.api("kf/send_msg", body).await), 40035);
}

#[tokio::test]
async fn five_messages_per_customer_message_then_95001_until_the_next_one() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    for _ in 0..5 {
        assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 0);
    }
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95001);
    app.say(&kf, "wmC", "again");
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 0);
}

#[tokio::test]
async fn the_window_closes_48_hours_after_the_last_customer_message() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    app.emu.advance_clock(Duration::from_secs(48 * 3600 + 1));
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95002);
}

#[tokio::test]
async fn sending_needs_state_0_or_1_and_a_known_customer() {
    let (app, kf) = setup().await;
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 40096);
    app.emu.enter_session(&kf, "wmC", None, None).unwrap();
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95018);
    app.say(&kf, "wmC", "hi");
    app.api(
        "kf/service_state/trans",
        json!({"open_kfid": kf, "external_userid": "wmC", "service_state": 2}),
    )
    .await;
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95018);
}

#[tokio::test]
async fn every_outbound_type_is_validated() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    let image = app.image().await;
    let send = |msgtype: &str, payload: Value| {
        let mut b = json!({"touser": "wmC", "open_kfid": kf, "msgtype": msgtype});
        b[msgtype] = payload;
        b
    };
    let cases = vec![
        (send("text", json!({"content": ""})), 44004),
        (send("text", json!({"content": "字".repeat(683)})), 45002),
        (send("image", json!({"media_id": image})), 0),
        (send("voice", json!({"media_id": image})), 40007),
        (send("file", json!({})), 41006),
        (
            send(
                "link",
                json!({"title": "t", "url": "ftp://x", "thumb_media_id": image}),
            ),
            40035,
        ),
        (
            send(
                "link",
                json!({"title": "t".repeat(300), "url": "https://x", "thumb_media_id": image}),
            ),
            0,
        ),
        (
            send(
                "miniprogram",
                json!({"appid": "wx0123456789abcdef", "pagepath": "p.html", "thumb_media_id": image}),
            ),
            0,
        ),
        (
            send(
                "miniprogram",
                json!({"appid": "wxnotlinked", "pagepath": "p.html", "thumb_media_id": image}),
            ),
            90206,
        ),
        (
            send("location", json!({"latitude": 0, "longitude": 181})),
            40035,
        ),
        (
            send(
                "ca_link",
                json!({"link_url": "https://work.weixin.qq.com/ca/cawcde0123"}),
            ),
            0,
        ),
        (send("news", json!({"articles": []})), 40008),
        (send("business_card", json!({"userid": "lisi"})), 40008),
        (
            json!({"touser": "wmC", "open_kfid": kf, "msgtype": "text"}),
            40063,
        ),
    ];
    for (body, expected) in cases {
        // Keep the quota open: every case after a fresh customer message.
        app.say(&kf, "wmC", "again");
        assert_eq!(
            code(&app.api("kf/send_msg", body.clone()).await),
            expected,
            "{body}"
        );
    }
}

#[tokio::test]
async fn menu_items_follow_the_rules() {
    let (app, kf) = setup().await;
    let menu = |list: Value| json!({"touser": "wmC", "open_kfid": kf, "msgtype": "msgmenu", "msgmenu": {"head_content": "请选择", "list": list}});
    let click = json!({"type": "click", "click": {"id": "101", "content": "转人工"}});
    let cases = vec![
        (
            menu(
                json!([click, {"type": "view", "view": {"url": "https://e", "content": "FAQ"}}, {"type": "text", "text": {"content": "9-18", "no_newline": 0}}]),
            ),
            0,
        ),
        (menu(Value::from(vec![click.clone(); 11])), 95008),
        (menu(json!([{"type": "button", "button": {}}])), 95009),
        (
            menu(json!([{"type": "click", "click": {"id": "x".repeat(129), "content": "a"}}])),
            40035,
        ),
        (
            menu(json!([{"type": "click", "click": {"id": "1"}}])),
            40063,
        ),
    ];
    for (body, expected) in cases {
        app.say(&kf, "wmC", "again");
        assert_eq!(
            code(&app.api("kf/send_msg", body.clone()).await),
            expected,
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_refusing_customer_produces_msg_send_fail_10() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    app.control(
        "POST",
        "/emulator/customer/refuse",
        json!({"open_kfid": kf, "external_userid": "wmC"}),
    )
    .await;
    let msgid = app.api("kf/send_msg", text(&kf, "x")).await["msgid"].clone();
    let items = app.pull_all(&kf).await;
    let event = &items.last().unwrap()["event"];
    assert_eq!(event["event_type"], "msg_send_fail");
    assert_eq!(event["fail_type"], 10);
    assert_eq!(event["fail_msgid"], msgid);
}

async fn on_event(app: &App, code_: &str, msgtype: &str) -> Value {
    let mut body = json!({"code": code_, "msgtype": msgtype});
    body[msgtype] = match msgtype {
        "msgmenu" => {
            json!({"list": [{"type": "click", "click": {"id": "1", "content": "查订单"}}]})
        }
        "text" => json!({"content": "欢迎"}),
        _ => json!({"media_id": "x"}),
    };
    app.api("kf/send_msg_on_event", body).await
}

#[tokio::test]
async fn a_welcome_code_works_once_within_20_seconds_for_text_or_menu() {
    let (app, kf) = setup().await;
    let (_, welcome) = app.emu.enter_session(&kf, "wmC", Some("s"), None).unwrap();
    let welcome = welcome.unwrap();
    assert_eq!(code(&on_event(&app, &welcome, "image").await), 40008);
    assert_eq!(code(&on_event(&app, &welcome, "msgmenu").await), 0);
    assert_eq!(code(&on_event(&app, &welcome, "text").await), 40035);
    // Welcomed: no new welcome code on the next entry.
    let (_, again) = app.emu.enter_session(&kf, "wmC", None, None).unwrap();
    assert!(again.is_none());
    let (_, late) = app.emu.enter_session(&kf, "wmOther", None, None).unwrap();
    app.emu.advance_clock(Duration::from_secs(21));
    assert_eq!(code(&on_event(&app, &late.unwrap(), "text").await), 40035);
    assert_eq!(
        app.emu.outbox(Some(&kf), None)["messages"][0]["code_kind"],
        "welcome"
    );
}

#[tokio::test]
async fn queue_codes_send_one_text_while_queued() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    let trans = |state: u64| json!({"open_kfid": kf, "external_userid": "wmC", "service_state": state, "servicer_userid": "zhangsan"});
    let queue = app.api("kf/service_state/trans", trans(2)).await["msg_code"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code(&on_event(&app, &queue, "msgmenu").await), 40008);
    let connect = app.api("kf/service_state/trans", trans(3)).await["msg_code"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code(&on_event(&app, &queue, "text").await), 95018);
    assert_eq!(code(&on_event(&app, &connect, "text").await), 0);
    let end = app.api("kf/service_state/trans", trans(4)).await["msg_code"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code(&on_event(&app, &end, "msgmenu").await), 0);
}

#[tokio::test]
async fn recall_works_for_two_minutes_and_still_counts_toward_the_quota() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    let id = app.api("kf/send_msg", text(&kf, "oops")).await["msgid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        code(
            &app.api("kf/recall_msg", json!({"open_kfid": kf, "msgid": id}))
                .await
        ),
        0
    );
    assert_eq!(
        code(
            &app.api("kf/recall_msg", json!({"open_kfid": kf, "msgid": id}))
                .await
        ),
        95028
    );
    assert_eq!(
        code(
            &app.api("kf/recall_msg", json!({"open_kfid": kf, "msgid": "nope"}))
                .await
        ),
        95028
    );
    let late = app.api("kf/send_msg", text(&kf, "late")).await["msgid"]
        .as_str()
        .unwrap()
        .to_string();
    app.emu.advance_clock(Duration::from_secs(121));
    assert_eq!(
        code(
            &app.api("kf/recall_msg", json!({"open_kfid": kf, "msgid": late}))
                .await
        ),
        95029
    );
    for _ in 0..3 {
        assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 0);
    }
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95001);
    assert_eq!(
        app.emu.outbox(Some(&kf), None)["messages"][0]["recalled"],
        true
    );
}

fn tap(app: &App, kf: &str, menu_id: &str) {
    app.emu
        .customer_send(
            json!({"open_kfid": kf, "external_userid": "wmC", "msgtype": "text",
                              "text": {"content": "转人工", "menu_id": menu_id}}),
        )
        .unwrap();
}

#[tokio::test]
async fn menu_clicks_alone_do_not_let_the_api_send_95024() {
    let (app, kf) = setup().await;
    tap(&app, &kf, "101");
    // The click is delivered by sync_msg and opens the session like a message…
    let items = app.pull_all(&kf).await;
    assert_eq!(items[0]["text"]["menu_id"], "101");
    let state = app
        .api(
            "kf/service_state/get",
            json!({"open_kfid": kf, "external_userid": "wmC"}),
        )
        .await;
    assert_eq!(state["service_state"], 0);
    // …but it is not the customer actively sending a message.
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95024);
    app.say(&kf, "wmC", "你好");
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 0);
    // A later click within 48 h of a real message still allows replies.
    app.emu.advance_clock(Duration::from_secs(47 * 3600));
    tap(&app, &kf, "102");
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 0);
    // Once the real message is older than 48 h, the click alone is not enough.
    app.emu.advance_clock(Duration::from_secs(2 * 3600));
    tap(&app, &kf, "103");
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 95024);
}

#[tokio::test]
async fn the_menu_click_rule_can_be_switched_off() {
    let mut config = wechat_kf_emulator::Config::generated();
    config.require_active_customer_message = false;
    let app = App::with_config(config).await;
    let kf = app.account().await;
    tap(&app, &kf, "101");
    assert_eq!(code(&app.api("kf/send_msg", text(&kf, "x")).await), 0);
}
