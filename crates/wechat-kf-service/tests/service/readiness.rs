//! Start-up checks and readiness: one `gettoken` at start; wrong credentials stop the start
//! naming the setting, an unreachable WeChat starts not ready with the reason in `/readyz`.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use wechat_kf_service::Service;
use wechat_kf_service::config::Secret;

use crate::common::*;

/// `/readyz` through the router: (status, body).
async fn readyz(running: &wechat_kf_service::RunningService) -> (StatusCode, String) {
    use tower::ServiceExt;
    let response = wechat_kf_service::router(running.state().clone())
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn a_wrong_secret_or_corp_id_stops_the_start_with_the_setting_named() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut wrong_secret = config(&emu, &dir.path().join("kf.db"), None);
    wrong_secret.webhook.secret = None;
    wrong_secret.wechat.secret = Some(Secret::new("not-the-secret"));
    let err = Service::start(wrong_secret).await.unwrap_err();
    assert!(err.is_config(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("wechat.secret: WeChat rejected the secret"),
        "{text}"
    );
    assert!(
        text.contains("40001") && text.contains("WECHAT_KF_SECRET"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret"), "{text}");

    let mut wrong_corp = config(&emu, &dir.path().join("kf2.db"), None);
    wrong_corp.wechat.corp_id = "wwUnknownCorp".into();
    let err = Service::start(wrong_corp).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("wechat.corp_id: WeChat does not know this corp id (40013)"),
        "{err}"
    );
    assert_eq!(calls(&emu, "kf/sync_msg"), 0, "nothing was pulled");
    emu.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_wechat_starts_not_ready_with_the_reason_until_it_answers() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("later");
    emu.emulator()
        .inject_fault(
            json!({"path": "gettoken", "kind": "http_status", "status": 502, "count": 100000}),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.webhook.secret = None;
    let running = start(&emu, config).await;
    let (status, body) = readyz(&running).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.starts_with("wechat: unreachable: gettoken"), "{body}");
    assert!(body.contains(&emu.base_url()), "{body}");
    assert!(
        running.summary().contains("unreachable: not ready"),
        "{}",
        running.summary()
    );

    emu.emulator().clear_faults();
    wait_for(
        "ready once WeChat answers",
        Duration::from_secs(15),
        || async { readyz(&running).await.0 == StatusCode::OK },
    )
    .await;
    // The accounts are listed once WeChat answers, and pulled.
    wait_for("the account pulled", Duration::from_secs(10), || async {
        running
            .pullers()
            .accounts()
            .iter()
            .any(|a| a.as_str() == kf)
    })
    .await;
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_start_summary_names_the_accounts_the_target_and_the_reply_api() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("summary");
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let summary = running.summary();
    assert!(
        summary.contains(&format!("accounts:    1 ({kf})")),
        "{summary}"
    );
    let host = sink
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    assert!(
        summary.contains(&format!("to the webhook at {host}, signed")),
        "{summary}"
    );
    assert!(summary.contains("reply API:   on at /v1/*"), "{summary}");
    assert!(summary.contains("store:       sqlite"), "{summary}");
    assert!(
        !summary.contains(HOOK_SECRET) && !summary.contains("api-token"),
        "{summary}"
    );
    assert_eq!(readyz(&running).await, (StatusCode::OK, "ready\n".into()));
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_wechat_outage_after_the_start_makes_the_service_not_ready_until_a_pull_succeeds() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("outage");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.webhook.secret = None;
    let running = start(&emu, config).await;
    assert_eq!(readyz(&running).await.0, StatusCode::OK);
    emu.emulator()
        .inject_fault(
            json!({"path": "kf/sync_msg", "kind": "http_status", "status": 502, "count": 100000}),
        )
        .unwrap();
    running.pullers().wake(&kf.clone().into(), None);
    wait_for("not ready", Duration::from_secs(10), || async {
        let (status, body) = readyz(&running).await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && body.starts_with("wechat: unreachable: kf/sync_msg: HTTP status 502")
    })
    .await;
    emu.emulator().clear_faults();
    running.pullers().wake(&kf.into(), None);
    wait_for("ready again", Duration::from_secs(70), || async {
        readyz(&running).await.0 == StatusCode::OK
    })
    .await;
    running.shutdown().await;
    emu.shutdown().await;
}
