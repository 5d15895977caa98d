//! gettoken and the access_token rules.

use std::time::Duration;

use serde_json::json;

use super::{App, code};

async fn gettoken(app: &App, query: &str) -> serde_json::Value {
    app.send("GET", &format!("/cgi-bin/gettoken?{query}"), None, &[])
        .await
        .json()
}

#[tokio::test]
async fn gettoken_checks_corpid_and_secret() {
    let app = App::new().await;
    let c = app.emu.config().clone();
    assert_eq!(
        code(&gettoken(&app, &format!("corpsecret={}", c.secret)).await),
        41002
    );
    assert_eq!(
        code(&gettoken(&app, &format!("corpid={}", c.corp_id)).await),
        41004
    );
    assert_eq!(
        code(&gettoken(&app, &format!("corpid=wwnope&corpsecret={}", c.secret)).await),
        40013
    );
    assert_eq!(
        code(&gettoken(&app, &format!("corpid={}&corpsecret=wrong", c.corp_id)).await),
        40001
    );
    let ok = gettoken(
        &app,
        &format!("corpid={}&corpsecret={}", c.corp_id, c.secret),
    )
    .await;
    assert_eq!(code(&ok), 0);
    assert_eq!(ok["errmsg"], "ok");
    assert!(ok["access_token"].as_str().unwrap().len() <= 512);
}

#[tokio::test]
async fn the_same_token_comes_back_while_valid_and_a_new_one_after_expiry() {
    let app = App::with_config(wechat_kf_emulator::Config::generated()).await;
    let c = app.emu.config().clone();
    let q = format!("corpid={}&corpsecret={}", c.corp_id, c.secret);
    let again = gettoken(&app, &q).await;
    assert_eq!(
        (again["access_token"].as_str(), again["expires_in"].as_i64()),
        (Some(app.token.as_str()), Some(7200))
    );
    app.emu.advance_clock(Duration::from_secs(7200));
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 42001);
    let fresh = gettoken(&app, &q).await;
    assert_ne!(fresh["access_token"], app.token.as_str());
}

#[tokio::test]
async fn a_missing_token_is_41001_even_when_the_body_has_one() {
    let app = App::new().await;
    let body = json!({"access_token": app.token}).to_string().into_bytes();
    let v = app
        .send("POST", "/cgi-bin/kf/account/list", Some(body), &[])
        .await
        .json();
    assert_eq!(code(&v), 41001);
}

#[tokio::test]
async fn unknown_and_revoked_tokens_are_40014() {
    let app = App::new().await;
    let v = app
        .send(
            "POST",
            "/cgi-bin/kf/account/list?access_token=bogus",
            Some(b"{}".to_vec()),
            &[],
        )
        .await
        .json();
    assert_eq!(code(&v), 40014);
    let (status, _) = app
        .control("POST", "/emulator/tokens/revoke", json!({}))
        .await;
    assert!(status.is_success());
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 40014);
}

#[tokio::test]
async fn errors_are_http_200_with_error_headers() {
    let app = App::new().await;
    let raw = app.send("GET", "/cgi-bin/gettoken", None, &[]).await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.headers["error-code"], "41002");
    assert!(
        raw.json()["errmsg"]
            .as_str()
            .unwrap()
            .contains("more info at")
    );
}

#[tokio::test]
async fn a_configured_ttl_is_reported_in_expires_in() {
    let mut config = wechat_kf_emulator::Config::generated();
    config.access_token_ttl = Duration::from_secs(60);
    let app = App::with_config(config).await;
    app.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 42001);
}
