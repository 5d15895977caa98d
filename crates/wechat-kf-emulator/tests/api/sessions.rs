//! service_state/get and service_state/trans (official doc 94669).

use serde_json::json;

use super::{App, code};

async fn setup() -> (App, String) {
    let app = App::new().await;
    let kf = app.account().await;
    app.servicer(&kf, "zhangsan").await;
    app.servicer(&kf, "lisi").await;
    (app, kf)
}

async fn trans(app: &App, kf: &str, state: u64, servicer: Option<&str>) -> serde_json::Value {
    let mut body = json!({"open_kfid": kf, "external_userid": "wmC", "service_state": state});
    if let Some(s) = servicer {
        body["servicer_userid"] = json!(s);
    }
    app.api("kf/service_state/trans", body).await
}

async fn state_of(app: &App, kf: &str) -> serde_json::Value {
    app.api(
        "kf/service_state/get",
        json!({"open_kfid": kf, "external_userid": "wmC"}),
    )
    .await
}

#[tokio::test]
async fn a_customer_who_only_entered_is_in_state_4_and_cannot_be_changed() {
    let (app, kf) = setup().await;
    app.emu.enter_session(&kf, "wmC", None, None).unwrap();
    assert_eq!(
        state_of(&app, &kf).await,
        json!({"errcode": 0, "errmsg": "ok", "service_state": 4})
    );
    assert_eq!(code(&trans(&app, &kf, 1, None).await), 95013);
}

#[tokio::test]
async fn the_documented_path_issues_codes_on_first_entry_only() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    assert_eq!(state_of(&app, &kf).await["service_state"], 0);
    assert!(trans(&app, &kf, 1, None).await.get("msg_code").is_none());
    assert!(trans(&app, &kf, 2, None).await["msg_code"].is_string());
    let to_human = trans(&app, &kf, 3, Some("zhangsan")).await;
    assert!(to_human["msg_code"].is_string());
    let got = state_of(&app, &kf).await;
    assert_eq!(
        (
            got["service_state"].as_i64(),
            got["servicer_userid"].as_str()
        ),
        (Some(3), Some("zhangsan"))
    );
    let reassigned = trans(&app, &kf, 3, Some("lisi")).await;
    assert_eq!(code(&reassigned), 0);
    assert!(reassigned.get("msg_code").is_none());
    assert!(trans(&app, &kf, 4, None).await["msg_code"].is_string());
    assert_eq!(state_of(&app, &kf).await["service_state"], 4);
}

#[tokio::test]
async fn forbidden_transitions_are_95016() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    assert_eq!(code(&trans(&app, &kf, 0, None).await), 95016);
    trans(&app, &kf, 2, None).await;
    assert_eq!(code(&trans(&app, &kf, 1, None).await), 95016);
    assert_eq!(code(&trans(&app, &kf, 2, None).await), 95016);
    trans(&app, &kf, 3, Some("zhangsan")).await;
    assert_eq!(code(&trans(&app, &kf, 1, None).await), 95016);
    assert_eq!(code(&trans(&app, &kf, 2, None).await), 95016);
    assert_eq!(code(&trans(&app, &kf, 7, None).await), 40035);
}

#[tokio::test]
async fn ending_from_unassigned_states_is_allowed_with_an_end_code() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    assert!(trans(&app, &kf, 4, None).await["msg_code"].is_string());
}

#[tokio::test]
async fn assigning_a_human_checks_the_servicer() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    assert_eq!(code(&trans(&app, &kf, 3, Some("wangwu")).await), 95014);
    assert_eq!(code(&trans(&app, &kf, 3, None).await), 40063);
    // A typo in the field name is not accepted as servicer_userid.
    let typo = app
        .api("kf/service_state/trans", json!({"open_kfid": kf, "external_userid": "wmC", "service_state": 3, "service_userid": "zhangsan"}))
        .await;
    assert_ne!(code(&typo), 0);
    app.control(
        "POST",
        "/emulator/servicer/status",
        json!({"open_kfid": kf, "servicer_userid": "zhangsan", "status": 2}),
    )
    .await;
    assert_eq!(code(&trans(&app, &kf, 3, Some("zhangsan")).await), 95019);
}

#[tokio::test]
async fn unknown_customers_are_40096() {
    let (app, kf) = setup().await;
    assert_eq!(code(&state_of(&app, &kf).await), 40096);
}

#[tokio::test]
async fn api_transitions_produce_no_events() {
    let (app, kf) = setup().await;
    app.say(&kf, "wmC", "hi");
    trans(&app, &kf, 2, None).await;
    trans(&app, &kf, 3, Some("zhangsan")).await;
    assert_eq!(app.pull_all(&kf).await.len(), 1);
}
