//! customer/batchget, upgrade service, qualification and statistics.

use std::time::Duration;

use serde_json::json;
use wechat_kf_emulator::Config;

use super::{App, code};

#[tokio::test]
async fn batchget_returns_known_customers_and_lists_unknown_ones() {
    let app = App::new().await;
    let kf = app.account().await;
    app.emu
        .customer_send(json!({"open_kfid": kf, "external_userid": "wmA", "msgtype": "text", "text": {"content": "hi"}, "nickname": "张三", "gender": 1, "unionid": "oU1"}))
        .unwrap();
    app.control("POST", "/emulator/customer/enter_session", json!({"open_kfid": kf, "external_userid": "wmA", "scene": "order", "scene_param": "id%3D42", "wechat_channels": {"nickname": "某视频号", "scene": 1}})).await;
    let v = app
        .api(
            "kf/customer/batchget",
            json!({"external_userid_list": ["wmA", "wmBad"], "need_enter_session_context": 1}),
        )
        .await;
    let c = &v["customer_list"][0];
    assert_eq!(
        (
            c["nickname"].as_str(),
            c["gender"].as_i64(),
            c["unionid"].as_str()
        ),
        (Some("张三"), Some(1), Some("oU1"))
    );
    assert_eq!(c["enter_session_context"]["scene_param"], "id%3D42");
    assert_eq!(c["enter_session_context"]["wechat_channels"]["scene"], 1);
    assert_eq!(v["invalid_external_userid"], json!(["wmBad"]));
    let plain = app
        .api(
            "kf/customer/batchget",
            json!({"external_userid_list": ["wmA"]}),
        )
        .await;
    assert!(
        plain["customer_list"][0]
            .get("enter_session_context")
            .is_none()
    );
    app.emu.advance_clock(Duration::from_secs(49 * 3600));
    let old = app
        .api(
            "kf/customer/batchget",
            json!({"external_userid_list": ["wmA"], "need_enter_session_context": 1}),
        )
        .await;
    assert!(
        old["customer_list"][0]
            .get("enter_session_context")
            .is_none()
    );
}

#[tokio::test]
async fn batchget_takes_1_to_100_ids() {
    let app = App::new().await;
    assert_eq!(
        code(
            &app.api("kf/customer/batchget", json!({"external_userid_list": []}))
                .await
        ),
        40063
    );
    let many: Vec<String> = (0..101).map(|i| format!("wm{i}")).collect();
    assert_eq!(
        code(
            &app.api(
                "kf/customer/batchget",
                json!({"external_userid_list": many})
            )
            .await
        ),
        40035
    );
}

#[tokio::test]
async fn upgrade_service_only_recommends_configured_members_and_groups() {
    let config = Config::from_toml_seed(
        "[[accounts]]\nopen_kfid = \"wkSeeded\"\nname = \"a\"\n[upgrade_service]\nuserid_list = [\"lisi\"]\ndepartment_id_list = [2]\nchat_id_list = [\"wrChat\"]\n",
    )
    .unwrap();
    let app = App::with_config(config).await;
    let cfg = app.api_get("kf/customer/get_upgrade_service_config").await;
    assert_eq!(
        cfg["member_range"],
        json!({"userid_list": ["lisi"], "department_id_list": [2]})
    );
    assert_eq!(cfg["groupchat_range"]["chat_id_list"], json!(["wrChat"]));
    app.say("wkSeeded", "wmA", "hi");
    let up = |body: serde_json::Value| app.api("kf/customer/upgrade_service", body);
    assert_eq!(code(&up(json!({"open_kfid": "wkSeeded", "external_userid": "wmA", "type": 1, "member": {"userid": "lisi", "wording": "专家"}})).await), 0);
    assert_eq!(code(&up(json!({"open_kfid": "wkSeeded", "external_userid": "wmA", "type": 1, "member": {"userid": "zhao"}})).await), 95021);
    assert_eq!(code(&up(json!({"open_kfid": "wkSeeded", "external_userid": "wmA", "type": 2, "groupchat": {"chat_id": "wrChat"}})).await), 0);
    assert_eq!(
        code(&up(json!({"open_kfid": "wkSeeded", "external_userid": "wmA", "type": 3})).await),
        40035
    );
    assert_eq!(
        code(&up(json!({"open_kfid": "wkSeeded", "external_userid": "wmA", "type": 1})).await),
        40063
    );
    let cancel = app
        .api(
            "kf/customer/cancel_upgrade_service",
            json!({"open_kfid": "wkSeeded", "external_userid": "wmA"}),
        )
        .await;
    assert_eq!(code(&cancel), 0);
}

#[tokio::test]
async fn corp_qualification_reports_the_channels_binding() {
    let config = Config::from_toml_seed("wechat_channels_binding = true").unwrap();
    let app = App::with_config(config).await;
    assert_eq!(
        app.api_get("kf/get_corp_qualification").await["wechat_channels_binding"],
        true
    );
}

#[tokio::test]
async fn statistics_cover_past_days_within_the_documented_range() {
    let app = App::new().await;
    let kf = app.account().await;
    app.servicer(&kf, "zhangsan").await;
    app.say(&kf, "wmA", "hi");
    app.say(&kf, "wmB", "hi");
    let day_of_messages = app.emu.now();
    app.emu.advance_clock(Duration::from_secs(86_400));
    let q = json!({"open_kfid": kf, "start_time": day_of_messages, "end_time": day_of_messages});
    let v = app.api("kf/get_corp_statistic", q.clone()).await;
    assert_eq!(code(&v), 0, "{v}");
    let stat = &v["statistic_list"][0];
    assert_eq!(stat["statistic"]["customer_cnt"], 2);
    assert_eq!(stat["stat_time"].as_i64().unwrap() % 86_400, 57_600); // 00:00 China time
    let mut per = q.clone();
    per["servicer_userid"] = json!("zhangsan");
    assert_eq!(code(&app.api("kf/get_servicer_statistic", per).await), 0);
    let now = app.emu.now();
    let today = json!({"open_kfid": kf, "start_time": now, "end_time": now});
    assert_eq!(code(&app.api("kf/get_corp_statistic", today).await), 40035);
    let long = json!({"open_kfid": kf, "start_time": now - 40 * 86_400, "end_time": now - 86_400});
    assert_eq!(code(&app.api("kf/get_corp_statistic", long).await), 40035);
}

#[tokio::test]
async fn idconvert_is_for_third_party_apps_only() {
    let app = App::new().await;
    assert_eq!(
        code(
            &app.api("idconvert/open_kfid", json!({"open_kfid_list": ["wkA"]}))
                .await
        ),
        48002
    );
}
