//! kf/sync_msg: log, cursors, paging, token, retention.

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf_emulator::Config;

use super::{App, code};

fn texts(n: usize, kf: &str) -> Value {
    Value::from(
        (0..n)
            .map(|i| json!({"open_kfid": kf, "external_userid": format!("wm{}", i % 7), "msgtype": "text", "text": {"content": format!("m{i}")}}))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn items_come_back_in_order_with_the_envelope_of_the_spec() {
    let app = App::new().await;
    let kf = app.account().await;
    let ids = app.emu.customer_send(texts(3, &kf)).unwrap();
    let items = app.pull_all(&kf).await;
    assert_eq!(items.len(), 3);
    for (item, id) in items.iter().zip(&ids) {
        assert_eq!(item["msgid"], id.as_str());
        assert_eq!(item["origin"], 3);
        assert_eq!(item["open_kfid"], kf.as_str());
        assert!(item["send_time"].is_u64());
    }
    assert_eq!(items[2]["text"]["content"], "m2");
}

#[tokio::test]
async fn pages_hold_at_most_limit_items_and_has_more_says_whether_to_go_on() {
    let app = App::new().await;
    let kf = app.account().await;
    app.emu.customer_send(texts(2500, &kf)).unwrap();
    let first = app
        .api("kf/sync_msg", json!({"open_kfid": kf, "limit": 5000}))
        .await;
    assert_eq!(first["msg_list"].as_array().unwrap().len(), 1000);
    assert_eq!(first["has_more"], 1);
    let cursor = first["next_cursor"].as_str().unwrap();
    assert!(cursor.len() <= 64);
    let second = app
        .api(
            "kf/sync_msg",
            json!({"open_kfid": kf, "cursor": cursor, "limit": 10}),
        )
        .await;
    assert_eq!(second["msg_list"][0]["text"]["content"], "m1000");
    assert_eq!(app.pull_all(&kf).await.len(), 2500);
    let default = app.api("kf/sync_msg", json!({"open_kfid": kf})).await;
    assert_eq!(default["msg_list"].as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn a_caught_up_cursor_returns_nothing_until_new_data_arrives() {
    let app = App::new().await;
    let kf = app.account().await;
    app.say(&kf, "wmA", "one");
    let v = app.api("kf/sync_msg", json!({"open_kfid": kf})).await;
    let cursor = v["next_cursor"].as_str().unwrap().to_string();
    let empty = app
        .api("kf/sync_msg", json!({"open_kfid": kf, "cursor": cursor}))
        .await;
    assert_eq!(
        (
            empty["msg_list"].as_array().unwrap().len(),
            empty["has_more"].as_i64()
        ),
        (0, Some(0))
    );
    app.say(&kf, "wmA", "two");
    let next = app
        .api("kf/sync_msg", json!({"open_kfid": kf, "cursor": cursor}))
        .await;
    assert_eq!(next["msg_list"][0]["text"]["content"], "two");
}

#[tokio::test]
async fn cursors_are_scoped_to_their_account() {
    let app = App::new().await;
    let a = app.account().await;
    let b = app.account().await;
    app.say(&a, "wmA", "x");
    let cursor = app.api("kf/sync_msg", json!({"open_kfid": a})).await["next_cursor"].clone();
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": b, "cursor": cursor}))
                .await
        ),
        40035
    );
    assert_eq!(
        code(
            &app.api(
                "kf/sync_msg",
                json!({"open_kfid": a, "cursor": "x".repeat(65)})
            )
            .await
        ),
        40035
    );
}

#[tokio::test]
async fn open_kfid_is_required() {
    let app = App::new().await;
    assert_eq!(code(&app.api("kf/sync_msg", json!({})).await), 40063);
    assert_eq!(
        code(
            &app.api(
                "kf/sync_msg",
                json!({"open_kfid": "wkNope00000000000000000000000000"})
            )
            .await
        ),
        95004
    );
}

#[tokio::test]
async fn a_token_is_valid_for_its_account_for_ten_minutes() {
    let app = App::new().await;
    let a = app.account().await;
    let b = app.account().await;
    let token = app.emu.issue_sync_token(&a).unwrap();
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": a, "token": token}))
                .await
        ),
        0
    );
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": b, "token": token}))
                .await
        ),
        95007
    );
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": a, "token": "ENCforged"}))
                .await
        ),
        95007
    );
    app.emu.advance_clock(Duration::from_secs(600));
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": a, "token": token}))
                .await
        ),
        95007
    );
}

#[tokio::test]
async fn pulls_without_a_token_are_limited_per_minute() {
    let mut config = Config::generated();
    config.sync_without_token_per_minute = 3;
    let app = App::with_config(config).await;
    let kf = app.account().await;
    for _ in 0..3 {
        assert_eq!(
            code(&app.api("kf/sync_msg", json!({"open_kfid": kf})).await),
            0
        );
    }
    assert_eq!(
        code(&app.api("kf/sync_msg", json!({"open_kfid": kf})).await),
        45009
    );
    let token = app.emu.issue_sync_token(&kf).unwrap();
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": kf, "token": token}))
                .await
        ),
        0
    );
}

#[tokio::test]
async fn items_older_than_three_days_are_dropped_and_old_cursors_restart_at_the_oldest() {
    let app = App::new().await;
    let kf = app.account().await;
    app.say(&kf, "wmA", "old");
    let start = app
        .api("kf/sync_msg", json!({"open_kfid": kf, "limit": 1}))
        .await;
    let stale_cursor = start["next_cursor"].as_str().unwrap().to_string();
    app.say(&kf, "wmA", "old too");
    app.emu.advance_clock(Duration::from_secs(72 * 3600 + 1));
    app.say(&kf, "wmA", "new");
    let items = app.pull_all(&kf).await;
    assert_eq!(items.len(), 1);
    let v = app
        .api(
            "kf/sync_msg",
            json!({"open_kfid": kf, "cursor": stale_cursor}),
        )
        .await;
    assert_eq!(v["msg_list"][0]["text"]["content"], "new");
}

#[tokio::test]
async fn voice_format_must_be_0_or_1() {
    let app = App::new().await;
    let kf = app.account().await;
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": kf, "voice_format": 1}))
                .await
        ),
        0
    );
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": kf, "voice_format": 2}))
                .await
        ),
        40035
    );
}

#[tokio::test]
async fn every_inbound_type_and_unknown_types_are_stored_as_given() {
    let app = App::new().await;
    let kf = app.account().await;
    let base = |t: &str, payload: Value| {
        let mut v = json!({"open_kfid": kf, "external_userid": "wmA", "msgtype": t});
        v[t] = payload;
        v
    };
    let list = vec![
        base("text", json!({"content": "接入人工", "menu_id": "101"})),
        base("image", json!({})),
        base("voice", json!({"media_id": "MEDIA_ID_VOICE"})),
        base(
            "location",
            json!({"latitude": 23.1, "longitude": 113.2, "name": "n", "address": "a"}),
        ),
        base(
            "link",
            json!({"title": "t", "desc": "d", "url": "https://e", "pic_url": "https://p"}),
        ),
        base("business_card", json!({"userid": "lisi"})),
        base(
            "channels_shop_product",
            json!({"product_id": "P1", "sales_price": 1990}),
        ),
        base("merged_msg", json!({"title": "t", "item": []})),
        base("channels", json!({"sub_type": 1, "nickname": "n"})),
        base("meeting", json!({"anything": [1, 2]})),
        json!({"open_kfid": kf, "external_userid": "wmA", "msgtype": "brand_new", "brand_new": "raw", "extra_field": 5}),
    ];
    app.emu.customer_send(Value::from(list)).unwrap();
    let items = app.pull_all(&kf).await;
    assert_eq!(items[0]["text"]["menu_id"], "101");
    assert!(items[1]["image"]["media_id"].is_string());
    assert_eq!(items[2]["voice"]["media_id"], "MEDIA_ID_VOICE");
    assert_eq!(items[6]["channels_shop_product"]["sales_price"], 1990);
    assert_eq!(items[9]["meeting"]["anything"], json!([1, 2]));
    assert_eq!(items[10]["brand_new"], "raw");
    assert_eq!(items[10]["extra_field"], 5);
}

#[tokio::test]
async fn an_injected_empty_page_keeps_the_cursor_and_says_has_more() {
    let app = App::new().await;
    let kf = app.account().await;
    app.say(&kf, "wmA", "x");
    app.emu
        .inject_fault(json!({"path": "kf/sync_msg", "kind": "empty_page"}))
        .unwrap();
    let v = app.api("kf/sync_msg", json!({"open_kfid": kf})).await;
    assert_eq!(
        (
            v["msg_list"].as_array().unwrap().len(),
            v["has_more"].as_i64()
        ),
        (0, Some(1))
    );
    let v = app
        .api(
            "kf/sync_msg",
            json!({"open_kfid": kf, "cursor": v["next_cursor"]}),
        )
        .await;
    assert_eq!(v["msg_list"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_backlog_spread_over_four_days_syncs_only_its_last_three_days() {
    let app = App::new().await;
    let kf = app.account().await;
    let now = app.emu.now();
    // One message every 6 hours from 95 h ago to 5 h ago: 16 messages, oldest first.
    let backlog: Vec<Value> = (0..16)
        .map(|i| {
            let age_hours = 95 - 6 * i;
            json!({"open_kfid": kf, "external_userid": "wmBacklog", "msgtype": "text",
                   "text": {"content": format!("{age_hours}h ago")},
                   "send_time": now - age_hours * 3600})
        })
        .collect();
    app.emu.customer_send(Value::from(backlog)).unwrap();
    let items = app.pull_all(&kf).await;
    let contents: Vec<&str> = items
        .iter()
        .map(|i| i["text"]["content"].as_str().unwrap())
        .collect();
    // 95, 89, 83 and 77 h ago are older than 72 h: gone.
    assert_eq!(contents.first(), Some(&"71h ago"));
    assert_eq!(contents.len(), 12);
    assert!(
        items
            .iter()
            .all(|i| i["send_time"].as_i64().unwrap() >= now - 72 * 3600)
    );
    let sends: Vec<i64> = items
        .iter()
        .map(|i| i["send_time"].as_i64().unwrap())
        .collect();
    assert!(
        sends.windows(2).all(|w| w[0] <= w[1]),
        "ascending time order"
    );
    // Six hours later the 71 h item has aged out too.
    app.emu.advance_clock(Duration::from_secs(6 * 3600));
    let items = app.pull_all(&kf).await;
    assert_eq!(items.len(), 11);
    assert_eq!(items[0]["text"]["content"], "65h ago");
}

#[tokio::test]
async fn an_old_send_time_injected_after_newer_items_is_never_returned_once_expired() {
    let app = App::new().await;
    let kf = app.account().await;
    let now = app.emu.now();
    let at = |content: &str, age_hours: i64| {
        json!({"open_kfid": kf, "external_userid": "wmA", "msgtype": "text",
               "text": {"content": content}, "send_time": now - age_hours * 3600})
    };
    app.emu
        .customer_send(json!([at("recent", 1), at("four days", 96), at("70h", 70)]))
        .unwrap();
    let contents = |items: Vec<Value>| -> Vec<String> {
        items
            .iter()
            .map(|i| i["text"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(contents(app.pull_all(&kf).await), ["recent", "70h"]);
    app.emu.advance_clock(Duration::from_secs(3 * 3600));
    assert_eq!(contents(app.pull_all(&kf).await), ["recent"]);
    assert_eq!(app.emu.state_snapshot()["counters"]["messages_appended"], 2);
}

async fn control_media(app: &App, kind: &str, len: usize) -> String {
    let mut data = match kind {
        "image" => b"\x89PNG\r\n\x1a\n".to_vec(),
        "voice" => b"#!AMR\n".to_vec(),
        "video" => b"\0\0\0\x18ftypmp42".to_vec(),
        _ => b"%PDF-1.4".to_vec(),
    };
    data.resize(len, 0);
    let raw = app
        .send(
            "POST",
            &format!("/emulator/media?type={kind}&filename=big.{kind}"),
            Some(data),
            &[],
        )
        .await;
    raw.json()["media_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn media_above_the_delivery_limits_arrive_as_a_text_notice() {
    let app = App::new().await;
    let kf = app.account().await;
    const MB: usize = 1024 * 1024;
    let cases = [
        ("image", 2 * MB, "[图片] 超过 2 MB，无法通过接口接收"),
        ("voice", 2 * MB, "[语音] 超过 2 MB，无法通过接口接收"),
        ("video", 10 * MB, "[视频] 超过 10 MB，无法通过接口接收"),
        ("file", 20 * MB, "[文件] 超过 20 MB，无法通过接口接收"),
    ];
    for (kind, limit, notice) in cases {
        let at_limit = control_media(&app, kind, limit).await;
        let above = control_media(&app, kind, limit + 1).await;
        let send = |id: &str| {
            let mut m = json!({"open_kfid": kf, "external_userid": "wmBig", "msgtype": kind});
            m[kind] = json!({"media_id": id});
            m
        };
        let ids = app
            .emu
            .customer_send(json!([send(&at_limit), send(&above)]))
            .unwrap();
        let items = app.pull_all(&kf).await;
        let delivered = items
            .iter()
            .find(|i| i["msgid"] == ids[0].as_str())
            .unwrap();
        assert_eq!(delivered["msgtype"], kind);
        assert_eq!(delivered[kind]["media_id"], at_limit.as_str());
        let replaced = items
            .iter()
            .find(|i| i["msgid"] == ids[1].as_str())
            .unwrap();
        assert_eq!(replaced["msgtype"], "text", "{kind}");
        assert_eq!(replaced["text"]["content"], notice);
        assert!(replaced.get(kind).is_none());
        assert_eq!(replaced["origin"], 3);
    }
    // The notice still counts as a customer message for the send window.
    let v = app
        .api(
            "kf/send_msg",
            json!({"touser": "wmBig", "open_kfid": kf, "msgtype": "text", "text": {"content": "收到"}}),
        )
        .await;
    assert_eq!(code(&v), 0);
}
