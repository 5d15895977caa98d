//! Accounts, contact links and servicers.

use serde_json::json;
use wechat_kf_emulator::{Config, Seed};

use super::{App, code};

#[tokio::test]
async fn an_account_is_added_listed_updated_and_deleted() {
    let app = App::new().await;
    let media = app.image().await;
    let v = app
        .api(
            "kf/account/add",
            json!({"name": "售后客服", "media_id": media}),
        )
        .await;
    assert_eq!(code(&v), 0);
    let kf = v["open_kfid"].as_str().unwrap().to_string();
    assert!(kf.starts_with("wk"));
    let list = app
        .api("kf/account/list", json!({"offset": 0, "limit": 100}))
        .await;
    let item = &list["account_list"][0];
    assert_eq!(item["name"], "售后客服");
    assert_eq!(item["manage_privilege"], true);
    assert!(item["avatar"].as_str().unwrap().starts_with("https://"));
    assert_eq!(
        code(
            &app.api(
                "kf/account/update",
                json!({"open_kfid": kf, "name": "新名字"})
            )
            .await
        ),
        0
    );
    assert_eq!(
        app.api_get("kf/account/list").await["account_list"][0]["name"],
        "新名字"
    );
    let other = app.account().await;
    assert_eq!(
        code(&app.api("kf/account/del", json!({"open_kfid": kf})).await),
        0
    );
    assert_eq!(
        code(
            &app.api("kf/account/update", json!({"open_kfid": kf, "name": "x"}))
                .await
        ),
        95004
    );
    // The last account must stay.
    assert_eq!(
        code(&app.api("kf/account/del", json!({"open_kfid": other})).await),
        95005
    );
}

#[tokio::test]
async fn account_add_validates_name_and_avatar() {
    let app = App::new().await;
    let media = app.image().await;
    assert_eq!(
        code(
            &app.api(
                "kf/account/add",
                json!({"name": "一二三四五六七八九十一二三四五六七", "media_id": media})
            )
            .await
        ),
        95006
    );
    assert_eq!(
        code(
            &app.api("kf/account/add", json!({"name": "", "media_id": media}))
                .await
        ),
        95006
    );
    assert_eq!(
        code(
            &app.api("kf/account/add", json!({"name": "a", "media_id": "nope"}))
                .await
        ),
        40007
    );
    assert_eq!(
        code(&app.api("kf/account/add", json!({"name": "a"})).await),
        40063
    );
    assert_eq!(
        code(
            &app.api(
                "kf/account/add",
                json!({"name": "a", "media_id": "m".repeat(129)})
            )
            .await
        ),
        40035
    );
}

#[tokio::test]
async fn unverified_corps_get_at_most_ten_accounts() {
    let mut config = Config::generated();
    config.seed = Some(Seed {
        verified: false,
        ..Seed::default()
    });
    let app = App::with_config(config).await;
    let media = app.image().await;
    for i in 0..10 {
        assert_eq!(
            code(
                &app.api(
                    "kf/account/add",
                    json!({"name": format!("a{i}"), "media_id": media})
                )
                .await
            ),
            0
        );
    }
    assert_eq!(
        code(
            &app.api(
                "kf/account/add",
                json!({"name": "eleven", "media_id": media})
            )
            .await
        ),
        95027
    );
}

#[tokio::test]
async fn account_list_pages_with_offset_and_limit() {
    let app = App::new().await;
    for _ in 0..5 {
        app.account().await;
    }
    let page = app
        .api("kf/account/list", json!({"offset": 3, "limit": 2}))
        .await;
    assert_eq!(page["account_list"].as_array().unwrap().len(), 2);
    let rest = app
        .api("kf/account/list", json!({"offset": 4, "limit": 2}))
        .await;
    assert_eq!(rest["account_list"].as_array().unwrap().len(), 1);
    assert_eq!(
        code(&app.api("kf/account/list", json!({"limit": 0})).await),
        40035
    );
    assert_eq!(
        code(&app.api("kf/account/list", json!({"limit": 101})).await),
        40035
    );
    assert_eq!(
        app.api_raw("kf/account/list", b"").await["account_list"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        app.api_get("kf/account/list").await["account_list"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn bad_open_kfids_are_95000_and_unknown_ones_95004() {
    let app = App::new().await;
    assert_eq!(
        code(
            &app.api("kf/account/update", json!({"open_kfid": "not an id"}))
                .await
        ),
        95000
    );
    assert_eq!(
        code(
            &app.api(
                "kf/account/update",
                json!({"open_kfid": "wkUnknown0000000000000000000000"})
            )
            .await
        ),
        95004
    );
    assert_eq!(
        code(
            &app.api(
                "kf/account/del",
                json!({"open_kfid": format!("wk{}", "a".repeat(63))})
            )
            .await
        ),
        40035
    );
}

#[tokio::test]
async fn accounts_not_under_api_management_answer_48002() {
    let config = Config::from_toml_seed(
        "[[accounts]]\nopen_kfid = \"wkManual\"\nname = \"人工\"\nmanaged_by_api = false\n",
    )
    .unwrap();
    let app = App::with_config(config).await;
    let list = app.api_get("kf/account/list").await;
    assert_eq!(list["account_list"][0]["manage_privilege"], false);
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": "wkManual"}))
                .await
        ),
        48002
    );
}

#[tokio::test]
async fn contact_ways_validate_the_scene() {
    let app = App::new().await;
    let kf = app.account().await;
    let v = app
        .api(
            "kf/add_contact_way",
            json!({"open_kfid": kf, "scene": "order_1"}),
        )
        .await;
    assert_eq!(code(&v), 0);
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("https://work.weixin.qq.com/kf/")
    );
    assert_eq!(
        code(
            &app.api(
                "kf/add_contact_way",
                json!({"open_kfid": kf, "scene": "a b"})
            )
            .await
        ),
        40035
    );
    assert_eq!(
        code(
            &app.api(
                "kf/add_contact_way",
                json!({"open_kfid": kf, "scene": "a".repeat(33)})
            )
            .await
        ),
        40035
    );
}

#[tokio::test]
async fn a_contact_link_brings_its_scene_into_enter_session_and_edited_links_fail() {
    let app = App::new().await;
    let kf = app.account().await;
    let url = app
        .api(
            "kf/add_contact_way",
            json!({"open_kfid": kf, "scene": "promo"}),
        )
        .await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, v) = app
        .control(
            "POST",
            "/emulator/customer/enter_session",
            json!({"url": format!("{url}&scene_param=id%3D42"), "external_userid": "wmA"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let items = app.pull_all(&kf).await;
    assert_eq!(items[0]["event"]["scene"], "promo");
    assert_eq!(items[0]["event"]["scene_param"], "id%3D42");
    let (status, _) = app
        .control(
            "POST",
            "/emulator/customer/enter_session",
            json!({"url": url.replace("enc_scene=ENC", "enc_scene=ENX"), "external_userid": "wmA"}),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn servicers_are_added_listed_and_removed_with_per_item_results() {
    let app = App::new().await;
    let kf = app.account().await;
    let v = app.api("kf/servicer/add", json!({"open_kfid": kf, "userid_list": ["zhangsan", "zhangsan", "bad id!"], "department_id_list": [2]})).await;
    assert_eq!(code(&v), 0);
    let results = v["result_list"].as_array().unwrap();
    assert_eq!(results[0]["errmsg"], "success");
    assert_eq!(results[1]["errmsg"], "ignored");
    assert_eq!(results[2]["errcode"], 60111);
    assert_eq!(results[3]["department_id"], 2);
    let list = app
        .api_get(&format!("kf/servicer/list?open_kfid={kf}"))
        .await;
    assert_eq!(
        list["servicer_list"][0],
        json!({"userid": "zhangsan", "status": 0})
    );
    assert_eq!(list["servicer_list"][1], json!({"department_id": 2}));
    let (s, _) = app
        .control(
            "POST",
            "/emulator/servicer/status",
            json!({"open_kfid": kf, "servicer_userid": "zhangsan", "status": 2, "stop_type": 1}),
        )
        .await;
    assert_eq!(s, 200);
    let list = app
        .api_get(&format!("kf/servicer/list?open_kfid={kf}"))
        .await;
    assert_eq!(
        list["servicer_list"][0],
        json!({"userid": "zhangsan", "status": 1, "stop_type": 1})
    );
    let v = app
        .api(
            "kf/servicer/del",
            json!({"open_kfid": kf, "userid_list": ["zhangsan", "lisi"]}),
        )
        .await;
    assert_eq!(v["result_list"][0]["errmsg"], "success");
    assert_eq!(v["result_list"][1]["errmsg"], "ignored");
}

#[tokio::test]
async fn servicer_calls_need_a_list_of_at_most_100() {
    let app = App::new().await;
    let kf = app.account().await;
    assert_eq!(
        code(&app.api("kf/servicer/add", json!({"open_kfid": kf})).await),
        40063
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert_eq!(
        code(
            &app.api(
                "kf/servicer/add",
                json!({"open_kfid": kf, "userid_list": many})
            )
            .await
        ),
        40035
    );
    assert_eq!(code(&app.api_get("kf/servicer/list").await), 40063);
}
