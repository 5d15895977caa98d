//! The reply API through the router (`router(state)` + `oneshot`) against the emulator.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use wechat_kf_service::router;

use crate::common::*;

async fn call(
    running: &wechat_kf_service::RunningService,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value, bool) {
    let mut request = Request::post(path).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router(running.state().clone())
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let replay = response.headers().contains_key("idempotent-replay");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        replay,
    )
}

#[tokio::test]
async fn the_reply_api_sends_refuses_wrong_tokens_and_is_idempotent_on_msgid() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("api");
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let _ = send_texts(&emu, &kf, "wmU", 1);
    let text = |msgid: Option<&str>| {
        let mut body = json!({"touser": "wmU", "open_kfid": kf, "msgtype": "text", "text": {"content": "hello"}});
        if let Some(m) = msgid {
            body["msgid"] = json!(m);
        }
        body
    };

    let (status, body, _) = call(&running, "/v1/messages", None, text(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("token"));
    let (status, _, _) = call(&running, "/v1/messages", Some("wrong"), text(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        outbox(&emu, Some(&kf)).is_empty(),
        "nothing sent without the token"
    );

    let (status, body, replay) = call(
        &running,
        "/v1/messages",
        Some("api-token"),
        text(Some("order-1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"errcode": 0, "errmsg": "ok", "msgid": "order-1"})
    );
    assert!(!replay);
    let (status, again, replay) = call(
        &running,
        "/v1/messages",
        Some("api-token"),
        text(Some("order-1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, body);
    assert!(replay, "the repeat is answered from the record");
    assert_eq!(outbox(&emu, Some(&kf)).len(), 1, "sent once");

    let (status, body, _) = call(&running, "/v1/messages", Some("api-token"), text(None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["msgid"].as_str().unwrap().len(),
        32,
        "a msgid is generated"
    );

    // Bad input is a 400 with the reason, before anything is sent.
    let (status, body, _) = call(
        &running,
        "/v1/messages",
        Some("api-token"),
        json!({"touser": "wmU"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("open_kfid"));
    let long = json!({"touser": "wmU", "open_kfid": kf, "msgtype": "text", "text": {"content": "x".repeat(3000)}});
    let (status, body, _) = call(&running, "/v1/messages", Some("api-token"), long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "text.content");

    // WeChat's other refusals come back with their errcode: an unknown customer (40096).
    let stranger = json!({"touser": "wmNobody", "open_kfid": kf, "msgtype": "text", "text": {"content": "hi"}});
    let (status, body, _) = call(&running, "/v1/messages", Some("api-token"), stranger).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["errcode"].as_i64().unwrap() > 0);
    assert_eq!(body["retryable"], false);

    // A visitor who opened the chat but never wrote: the service saw the enter_session event,
    // so it refuses without asking WeChat (a session not started is state 4).
    emu.emulator()
        .enter_session(&kf, "wmVisitor", None, None)
        .unwrap();
    let store = running.store().clone();
    wait_for(
        "the visitor's view",
        std::time::Duration::from_secs(10),
        || {
            let store = store.clone();
            let kf = kf.clone();
            async move {
                store
                    .session(kf.into(), "wmVisitor".into())
                    .await
                    .unwrap()
                    .is_some()
            }
        },
    )
    .await;
    let sends = calls(&emu, "kf/send_msg");
    let visitor = json!({"touser": "wmVisitor", "open_kfid": kf, "msgtype": "text", "text": {"content": "hi"}});
    let (status, body, _) = call(&running, "/v1/messages", Some("api-token"), visitor).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "send_refused");
    assert_eq!(body["reason"], "session_ended");
    assert_eq!(body["errcode"], 95018);
    assert_eq!(body["predicted"], true);
    assert_eq!(body["lifted_by"], "customer_message");
    assert_eq!(calls(&emu, "kf/send_msg"), sends, "WeChat was not called");
    // The body is checked before the send policy: an invalid message to a customer the policy
    // refuses is a 400 naming the field, not the refusal.
    let invalid =
        json!({"touser": "wmVisitor", "open_kfid": kf, "msgtype": "text", "text": {"content": ""}});
    let (status, body, _) = call(&running, "/v1/messages", Some("api-token"), invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "text.content");
    let metrics = running.metrics().render();
    assert!(
        metrics.contains("wechat_kf_api_errcodes_total{endpoint=\"kf/send_msg\""),
        "{metrics}"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn on_event_and_service_state_trans_answer_with_wechats_result() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("events");
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let (_, welcome) = emu
        .emulator()
        .enter_session(&kf, "wmE", None, None)
        .unwrap();
    let welcome = welcome.expect("a welcome code");
    let body = json!({"code": welcome, "msgtype": "text", "text": {"content": "欢迎"}});
    let (status, result, _) = call(
        &running,
        "/v1/messages/on_event",
        Some("api-token"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["errcode"], 0);
    // The code is single-use.
    let body = json!({"code": welcome, "msgtype": "text", "text": {"content": "again"}});
    let (status, _, _) = call(&running, "/v1/messages/on_event", Some("api-token"), body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let _ = send_texts(&emu, &kf, "wmE", 1);
    let trans = json!({"open_kfid": kf, "external_userid": "wmE", "service_state": 2});
    let (status, result, _) = call(
        &running,
        "/v1/service_state/trans",
        Some("api-token"),
        trans,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert!(result["msg_code"].as_str().is_some_and(|c| !c.is_empty()));
    let bad = json!({"open_kfid": kf, "service_state": 2});
    let (status, _, _) = call(&running, "/v1/service_state/trans", Some("api-token"), bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&running, "/v1/service_state/trans", Some("nope"), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn without_a_configured_token_the_reply_api_is_disabled() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.api.token = None;
    let running = start(&emu, config).await;
    let (status, body, _) = call(&running, "/v1/messages", Some("anything"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"].as_str().unwrap().contains("disabled"));
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn without_callback_keys_the_callback_path_is_not_served() {
    // Known at start (and logged once): the callback routes are not mounted, so a callback
    // is a plain 404, while the rest of the service runs.
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.wechat.callback_token = None;
    config.wechat.encoding_aes_key = None;
    let running = start(&emu, config).await;
    let response = router(running.state().clone())
        .oneshot(
            Request::post("/callback?msg_signature=a&timestamp=1&nonce=1")
                .body(Body::from("x"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, _, _) = call(&running, "/v1/messages", Some("wrong"), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the reply API still runs");
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(&emu, config(&emu, &dir.path().join("kf.db"), None)).await;
    let response = router(running.state().clone())
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    let written: Value = serde_json::from_str(&wechat_kf_service::openapi_json()).unwrap();
    assert_eq!(served, written);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_listings_show_what_the_service_holds_without_content() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.set_policy(|r| {
        let (kf, ext) = customer(&r.messages[0]);
        Action::Ack(
            json!({"replies": [{"touser": ext, "open_kfid": kf, "msgtype": "text", "text": {"content": "bot answer"}}]}),
        )
    });
    let kf = emu.emulator().create_account("listed");
    let running = start(
        &emu,
        config(&emu, &dir.path().join("kf.db"), Some(&sink.url)),
    )
    .await;
    let sent = send_texts(&emu, &kf, "wmL", 2);
    let store = running.store().clone();
    wait_for("the reply sent", std::time::Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.stats().await.unwrap().replies_sent == 1 }
    })
    .await;

    let (status, body) = api(
        &running,
        "GET",
        &format!("/v1/messages?open_kfid={kf}&customer=wmL&limit=1"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(messages[0]["msgid"], sent[1].2.as_str(), "newest first");
    assert_eq!(messages[0]["state"], "delivered");
    assert_eq!(messages[0]["kind"], "text");
    assert!(
        !body.to_string().contains("message 1 from"),
        "no content: {body}"
    );

    let (status, body) = api(&running, "GET", "/v1/sends?failed=false", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sends"][0]["state"], "sent");
    assert_eq!(body["sends"][0]["lane"], format!("{kf}/wmL"));
    assert!(
        !body.to_string().contains("bot answer"),
        "no content: {body}"
    );
    let (status, body) = api(&running, "GET", "/v1/deliveries?failed=true", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deliveries"], json!([]));

    let (status, body) = api(&running, "GET", "/v1/messages?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let (status, _) = api(&running, "GET", "/v1/messages?failed=maybe", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&running, "/v1/messages", None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    running.shutdown().await;
    emu.shutdown().await;
}
