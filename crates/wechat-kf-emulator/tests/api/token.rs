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

async fn gettoken_from(app: &App, ip: &str, secret: &str) -> serde_json::Value {
    let c = app.emu.config().clone();
    let uri = format!("/cgi-bin/gettoken?corpid={}&corpsecret={secret}", c.corp_id);
    app.send("GET", &uri, None, &[("x-forwarded-for", ip)])
        .await
        .json()
}

#[tokio::test]
async fn gettoken_called_too_often_is_45009_for_a_minute() {
    let mut config = wechat_kf_emulator::Config::generated();
    config.gettoken_per_minute = 3;
    let app = App::with_config(config).await;
    // Start at the beginning of a (fixed) minute window, so that the calls below share one.
    start_of_a_minute(&app).await;
    let secret = app.emu.config().secret.clone();
    for _ in 0..3 {
        assert_eq!(code(&gettoken_from(&app, "10.0.0.1", &secret).await), 0);
    }
    assert_eq!(code(&gettoken_from(&app, "10.0.0.2", &secret).await), 45009);
    // Other APIs are not affected, and the block lasts a full minute.
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 0);
    app.emu.advance_clock(Duration::from_secs(59));
    assert_eq!(code(&gettoken_from(&app, "10.0.0.1", &secret).await), 45009);
    app.emu.advance_clock(Duration::from_secs(2));
    assert_eq!(code(&gettoken_from(&app, "10.0.0.1", &secret).await), 0);
}

#[tokio::test]
async fn the_default_gettoken_limit_is_generous() {
    let app = App::new().await;
    let secret = app.emu.config().secret.clone();
    for _ in 0..200 {
        assert_eq!(code(&gettoken_from(&app, "10.0.0.1", &secret).await), 0);
    }
}

#[tokio::test]
async fn repeated_wrong_secrets_block_that_ip_for_an_hour() {
    let app = App::new().await;
    let secret = app.emu.config().secret.clone();
    for _ in 0..9 {
        assert_eq!(code(&gettoken_from(&app, "10.0.0.9", "wrong").await), 40001);
    }
    assert_eq!(code(&gettoken_from(&app, "10.0.0.9", &secret).await), 0);
    assert_eq!(code(&gettoken_from(&app, "10.0.0.9", "wrong").await), 40001);
    // The 10th wrong secret blocked the IP: even the right secret now answers 40001.
    let blocked = gettoken_from(&app, "10.0.0.9", &secret).await;
    assert_eq!(code(&blocked), 40001);
    assert!(blocked.get("access_token").is_none());
    assert!(blocked["errmsg"].as_str().unwrap().contains("blocked"));
    assert!(!blocked["errmsg"].as_str().unwrap().contains(&secret));
    assert_eq!(code(&gettoken_from(&app, "10.0.0.10", &secret).await), 0);
    // Tokens already issued keep working; the block only concerns gettoken.
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 0);
    let state = app.emu.state_snapshot();
    assert_eq!(state["blocked_ips"][0]["ip"], "10.0.0.9");
    app.emu.advance_clock(Duration::from_secs(3599));
    assert_eq!(code(&gettoken_from(&app, "10.0.0.9", &secret).await), 40001);
    app.emu.advance_clock(Duration::from_secs(1));
    assert_eq!(code(&gettoken_from(&app, "10.0.0.9", &secret).await), 0);
}

#[tokio::test]
async fn the_wrong_secret_threshold_is_configurable_and_can_be_switched_off() {
    let mut config = wechat_kf_emulator::Config::generated();
    config.gettoken_wrong_secret_limit = 0;
    let app = App::with_config(config).await;
    let secret = app.emu.config().secret.clone();
    for _ in 0..50 {
        assert_eq!(code(&gettoken_from(&app, "10.0.0.9", "wrong").await), 40001);
    }
    assert_eq!(code(&gettoken_from(&app, "10.0.0.9", &secret).await), 0);

    let mut config = wechat_kf_emulator::Config::generated();
    config.gettoken_wrong_secret_limit = 2;
    let app = App::with_config(config).await;
    let secret = app.emu.config().secret.clone();
    gettoken_from(&app, "10.0.0.9", "wrong").await;
    gettoken_from(&app, "10.0.0.9", "wrong").await;
    assert_eq!(code(&gettoken_from(&app, "10.0.0.9", &secret).await), 40001);
}

/// An app whose corp is in `mode`, whose `secret` is a secret of `kind` and with a second secret
/// of the other kind; returns it and a token from the other secret.
async fn with_mode(
    mode: Option<wechat_kf_emulator::KfMode>,
    kind: wechat_kf_emulator::KfMode,
) -> (App, String) {
    let mut config = wechat_kf_emulator::Config::generated();
    config.secret_kind = kind;
    config.other_secret = Some("the-other-secret".into());
    config.seed = Some(wechat_kf_emulator::Seed {
        kf_mode: mode,
        ..wechat_kf_emulator::Seed::default()
    });
    let app = App::with_config(config).await;
    let other = gettoken_from(&app, "10.0.0.1", "the-other-secret").await;
    let other = other["access_token"].as_str().unwrap().to_string();
    assert_ne!(other, app.token);
    (app, other)
}

async fn list_with(app: &App, token: &str) -> serde_json::Value {
    let uri = format!("/cgi-bin/kf/account/list?access_token={token}");
    app.send("POST", &uri, Some(b"{}".to_vec()), &[])
        .await
        .json()
}

#[tokio::test]
async fn a_standalone_secret_token_on_a_wecom_mode_corp_is_95011() {
    use wechat_kf_emulator::KfMode;
    let (app, wecom_token) = with_mode(Some(KfMode::Wecom), KfMode::Standalone).await;
    assert_eq!(code(&list_with(&app, &app.token).await), 95011);
    assert_eq!(code(&list_with(&app, &wecom_token).await), 0);
    // Non-kf APIs are not concerned.
    assert_ne!(
        code(&app.upload("file", "a.txt", b"hello world").await),
        95011
    );
}

#[tokio::test]
async fn a_wecom_secret_token_on_a_standalone_corp_is_95012() {
    use wechat_kf_emulator::KfMode;
    let (app, standalone_token) = with_mode(Some(KfMode::Standalone), KfMode::Wecom).await;
    assert_eq!(code(&list_with(&app, &app.token).await), 95012);
    assert_eq!(code(&list_with(&app, &standalone_token).await), 0);
}

#[tokio::test]
async fn without_a_mode_both_secrets_work_and_the_mode_can_change_at_runtime() {
    use wechat_kf_emulator::KfMode;
    let (app, wecom_token) = with_mode(None, KfMode::Standalone).await;
    assert_eq!(code(&list_with(&app, &app.token).await), 0);
    assert_eq!(code(&list_with(&app, &wecom_token).await), 0);
    let (status, corp) = app
        .control("PUT", "/emulator/corp", json!({"kf_mode": "wecom"}))
        .await;
    assert_eq!(
        (status.as_u16(), corp["kf_mode"].as_str()),
        (200, Some("wecom"))
    );
    assert_eq!(code(&list_with(&app, &app.token).await), 95011);
    app.emu.set_kf_mode(None);
    assert_eq!(code(&list_with(&app, &app.token).await), 0);
    let (status, _) = app
        .control("PUT", "/emulator/corp", json!({"kf_mode": "hybrid"}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn with_the_api_switch_off_only_customer_batchget_answers() {
    let app = App::new().await;
    let kf = app.account().await;
    app.say(&kf, "wmC", "hi");
    let (status, corp) = app
        .control("PUT", "/emulator/corp", json!({"api_enabled": false}))
        .await;
    assert_eq!(
        (status.as_u16(), corp["api_enabled"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 95017);
    assert_eq!(
        code(&app.api("kf/sync_msg", json!({"open_kfid": kf})).await),
        95017
    );
    assert_eq!(
        code(
            &app.api_get(&format!("kf/servicer/list?open_kfid={kf}"))
                .await
        ),
        95017
    );
    let v = app
        .api(
            "kf/customer/batchget",
            json!({"external_userid_list": ["wmC"]}),
        )
        .await;
    assert_eq!(code(&v), 0);
    assert_eq!(v["customer_list"][0]["external_userid"], "wmC");
    // gettoken and media are not kf calls.
    assert_eq!(code(&app.upload("file", "a.txt", b"hello world").await), 0);
    app.emu.set_api_enabled(true);
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 0);
    let (_, corp) = app.control("GET", "/emulator/corp", json!({})).await;
    assert_eq!(corp["api_enabled"], true);
}

#[tokio::test]
async fn the_api_switch_and_kf_mode_can_be_seeded() {
    let config = wechat_kf_emulator::Config::from_toml_seed(
        "kf_mode = \"wecom\"\nsecret_kind = \"wecom\"\nother_secret = \"kf-secret\"\napi_enabled = false\n",
    )
    .unwrap();
    assert_eq!(config.other_secret.as_deref(), Some("kf-secret"));
    let app = App::with_config(config).await;
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 95017);
    let standalone = gettoken_from(&app, "10.0.0.1", "kf-secret").await;
    let standalone = standalone["access_token"].as_str().unwrap().to_string();
    assert_eq!(code(&list_with(&app, &standalone).await), 95011);
}

/// GETs `kf/account/list` as if from `ip`.
async fn list_from(app: &App, ip: &str) -> serde_json::Value {
    let uri = format!("/cgi-bin/kf/account/list?access_token={}", app.token);
    app.send("GET", &uri, None, &[("x-forwarded-for", ip)])
        .await
        .json()
}

/// Moves the emulator clock to just after the start of a fixed minute window.
async fn start_of_a_minute(app: &App) {
    let (_, clock) = app.control("GET", "/emulator/clock", json!({})).await;
    let into_minute = clock["now_ms"].as_u64().unwrap() % 60_000;
    app.emu
        .advance_clock(Duration::from_millis(60_000 - into_minute + 100));
}

#[tokio::test]
async fn an_api_called_too_often_by_the_corp_is_45009_and_other_apis_are_not() {
    let mut config = wechat_kf_emulator::Config::generated();
    config.api_calls_per_minute = 3;
    let app = App::with_config(config).await;
    start_of_a_minute(&app).await;
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        assert_eq!(code(&list_from(&app, ip).await), 0);
    }
    assert_eq!(code(&list_from(&app, "10.0.0.4").await), 45009, "per corp");
    assert_ne!(
        code(&app.api_get("kf/servicer/list?open_kfid=x").await),
        45009,
        "other APIs have their own count"
    );
    app.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(code(&list_from(&app, "10.0.0.1").await), 0);
}

#[tokio::test]
async fn an_api_called_too_often_from_one_ip_is_45009_for_that_ip_only() {
    let mut config = wechat_kf_emulator::Config::generated();
    config.api_calls_per_ip_per_minute = 2;
    let app = App::with_config(config).await;
    start_of_a_minute(&app).await;
    assert_eq!(code(&list_from(&app, "10.0.0.1").await), 0);
    assert_eq!(code(&list_from(&app, "10.0.0.1").await), 0);
    assert_eq!(code(&list_from(&app, "10.0.0.1").await), 45009);
    assert_eq!(code(&list_from(&app, "10.0.0.2").await), 0, "another IP");
    app.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(code(&list_from(&app, "10.0.0.1").await), 0);
}
