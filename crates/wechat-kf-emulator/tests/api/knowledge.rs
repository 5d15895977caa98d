//! Knowledge base groups and intents.

use serde_json::json;

use super::{App, code};

#[tokio::test]
async fn groups_are_added_renamed_listed_and_deleted() {
    let app = App::new().await;
    let v = app
        .api("kf/knowledge/add_group", json!({"name": "售后"}))
        .await;
    let id = v["group_id"].as_str().unwrap().to_string();
    assert_eq!(
        code(
            &app.api("kf/knowledge/add_group", json!({"name": "售后"}))
                .await
        ),
        40035
    );
    assert_eq!(
        code(
            &app.api(
                "kf/knowledge/add_group",
                json!({"name": "一二三四五六七八九十一二三"})
            )
            .await
        ),
        40035
    );
    assert_eq!(
        code(
            &app.api(
                "kf/knowledge/mod_group",
                json!({"group_id": id, "name": "退换货"})
            )
            .await
        ),
        0
    );
    let list = app.api("kf/knowledge/list_group", json!({})).await;
    let groups = list["group_list"].as_array().unwrap();
    assert_eq!(groups[0]["is_default"], 1);
    assert_eq!(groups[1]["name"], "退换货");
    let default_id = groups[0]["group_id"].clone();
    assert_eq!(
        code(
            &app.api("kf/knowledge/del_group", json!({"group_id": default_id}))
                .await
        ),
        40035
    );
    assert_eq!(
        code(
            &app.api("kf/knowledge/del_group", json!({"group_id": id}))
                .await
        ),
        0
    );
    let paged = app
        .api("kf/knowledge/list_group", json!({"limit": 1}))
        .await;
    assert_eq!(paged["has_more"], 0);
    assert_eq!(
        code(
            &app.api("kf/knowledge/list_group", json!({"limit": 1001}))
                .await
        ),
        40035
    );
}

#[tokio::test]
async fn intents_are_validated_and_listed_in_their_response_form() {
    let app = App::new().await;
    let group = app
        .api("kf/knowledge/add_group", json!({"name": "售后"}))
        .await["group_id"]
        .clone();
    let image = app.image().await;
    let intent = json!({
        "group_id": group,
        "question": {"text": {"content": "怎么退货"}},
        "similar_questions": {"items": [{"text": {"content": "如何退货"}}]},
        "answers": [{"text": {"content": "在订单页点击申请退货"}, "attachments": [
            {"msgtype": "image", "image": {"media_id": image}},
            {"msgtype": "link", "link": {"title": "退货说明", "desc": "七天", "url": "https://e/r", "pic_url": "https://e/p.png"}}
        ]}]
    });
    let v = app.api("kf/knowledge/add_intent", intent.clone()).await;
    assert_eq!(code(&v), 0, "{v}");
    let id = v["intent_id"].clone();
    assert_eq!(
        code(&app.api("kf/knowledge/add_intent", intent.clone()).await),
        40035,
        "duplicate question"
    );
    let mut two_answers = intent.clone();
    two_answers["question"] = json!({"text": {"content": "other"}});
    two_answers["answers"] = json!([{"text": {"content": "a"}}, {"text": {"content": "b"}}]);
    assert_eq!(
        code(&app.api("kf/knowledge/add_intent", two_answers).await),
        40035
    );
    let list = app
        .api("kf/knowledge/list_intent", json!({"intent_id": id}))
        .await;
    let item = &list["intent_list"][0];
    assert_eq!(
        item["answers"][0]["attachments"][0]["image"],
        json!({"name": "a.png"})
    );
    assert_eq!(
        item["similar_questions"]["items"][0]["text"]["content"],
        "如何退货"
    );
    let m = app
        .api(
            "kf/knowledge/mod_intent",
            json!({"intent_id": id, "answers": [{"text": {"content": "新答案"}}]}),
        )
        .await;
    assert_eq!(code(&m), 0);
    let list = app
        .api("kf/knowledge/list_intent", json!({"group_id": group}))
        .await;
    assert_eq!(
        list["intent_list"][0]["answers"][0]["text"]["content"],
        "新答案"
    );
    assert_eq!(
        code(
            &app.api("kf/knowledge/del_intent", json!({"intent_id": id}))
                .await
        ),
        0
    );
    assert_eq!(
        code(
            &app.api("kf/knowledge/del_intent", json!({"intent_id": id}))
                .await
        ),
        40035
    );
}
