//! Unit-level behaviour of the client against a small scripted axum server: single-flight
//! tokens, invalidation, retries, idempotency, secrecy, media handling and local validation.
#![cfg(feature = "client")]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wechat_kf::client::budget::Limits;
use wechat_kf::client::media::{MediaKind, MediaUpload};
use wechat_kf::client::messages::{SendMsgRequest, SyncMsgRequest};
use wechat_kf::client::outbound::OutboundMessage;
use wechat_kf::client::{Client, ErrCode, Error, RetryPolicy};
use wechat_kf::message::{MenuItem, MsgMenu};

/// A scripted reply for one call of an endpoint.
#[derive(Clone)]
enum Reply {
    Json(Value),
    Status(u16),
    Slow(Duration, Value),
    Raw(&'static str, Vec<(&'static str, String)>, Vec<u8>),
}

#[derive(Default)]
struct Mock {
    gettoken: AtomicUsize,
    gettoken_delay_ms: AtomicU64,
    expires_in: AtomicU64,
    token: Mutex<String>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<(String, String, Vec<u8>)>>,
}

impl Mock {
    fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.script
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    fn calls(&self, path: &str) -> Vec<(String, Vec<u8>)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, q, b)| (q.clone(), b.clone()))
            .collect()
    }

    fn revoke(&self) {
        self.token.lock().unwrap().push_str("-revoked");
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

async fn handle(
    State(mock): State<Arc<Mock>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches("/cgi-bin/").to_owned();
    let query = query.unwrap_or_default();
    mock.requests
        .lock()
        .unwrap()
        .push((path.clone(), query.clone(), body.to_vec()));
    if path == "gettoken" {
        let n = mock.gettoken.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = mock.gettoken_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if query_param(&query, "corpsecret").as_deref() != Some("secret") {
            return axum::Json(json!({"errcode":40001,"errmsg":"invalid secret"})).into_response();
        }
        let token = format!("token-{n}");
        *mock.token.lock().unwrap() = token.clone();
        let expires_in = match mock.expires_in.load(Ordering::SeqCst) {
            0 => 7200,
            n => n,
        };
        return axum::Json(
            json!({"errcode":0,"errmsg":"ok","access_token":token,"expires_in":expires_in}),
        )
        .into_response();
    }
    let presented = query_param(&query, "access_token").unwrap_or_default();
    if presented != *mock.token.lock().unwrap() {
        return axum::Json(json!({"errcode":40014,"errmsg":"invalid access_token"}))
            .into_response();
    }
    let scripted = mock
        .script
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    match scripted {
        Some(Reply::Json(value)) => axum::Json(value).into_response(),
        Some(Reply::Status(status)) => StatusCode::from_u16(status).unwrap().into_response(),
        Some(Reply::Slow(delay, value)) => {
            tokio::time::sleep(delay).await;
            axum::Json(value).into_response()
        }
        Some(Reply::Raw(content_type, headers, bytes)) => {
            let mut map = HeaderMap::new();
            if !content_type.is_empty() {
                map.insert("content-type", HeaderValue::from_static(content_type));
            }
            for (name, value) in headers {
                map.insert(name, HeaderValue::from_bytes(value.as_bytes()).unwrap());
            }
            (map, bytes).into_response()
        }
        None => axum::Json(json!({"errcode":0,"errmsg":"ok"})).into_response(),
    }
}

async fn start() -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock::default());
    let app = Router::new().fallback(handle).with_state(mock.clone());
    (mock, wechat_kf_test_support::serve(app, "").await)
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        multiplier: 2.0,
    }
}

fn client(base: &str) -> Client {
    Client::builder("wwcorp", "secret")
        .base_url(base)
        .retry_policy(fast_retries())
        .build()
        .unwrap()
}

fn sync_page(msgs: Value, cursor: &str, has_more: u8) -> Value {
    json!({"errcode":0,"errmsg":"ok","next_cursor":cursor,"has_more":has_more,"msg_list":msgs})
}

#[tokio::test]
async fn a_hundred_concurrent_calls_at_startup_cause_exactly_one_gettoken() {
    let (mock, base) = start().await;
    mock.gettoken_delay_ms.store(100, Ordering::SeqCst);
    let client = client(&base);
    let calls = (0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.accounts().list_all().await })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 1);
    assert_eq!(mock.calls("kf/account/list").len(), 100);
}

#[tokio::test]
async fn a_hundred_concurrent_calls_after_a_revocation_cause_exactly_one_more_gettoken() {
    let (mock, base) = start().await;
    let client = client(&base);
    client.token().await.unwrap();
    mock.revoke();
    mock.gettoken_delay_ms.store(50, Ordering::SeqCst);
    let calls = (0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.servicers().list("wk1").await })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_and_the_call_retried_once() {
    let (mock, base) = start().await;
    let client = client(&base);
    client.token().await.unwrap();
    mock.script(
        "kf/account/del",
        [Reply::Json(
            json!({"errcode":42001,"errmsg":"access_token expired"}),
        )],
    );
    client.accounts().del("wk1").await.unwrap();
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 2);
    assert_eq!(mock.calls("kf/account/del").len(), 2);
}

#[tokio::test]
async fn a_second_token_rejection_in_a_row_is_returned_to_the_caller() {
    let (mock, base) = start().await;
    let client = client(&base);
    let invalid = Reply::Json(json!({"errcode":40014,"errmsg":"invalid access_token"}));
    mock.script("kf/account/del", [invalid.clone(), invalid]);
    let err = client.accounts().del("wk1").await.unwrap_err();
    assert!(err.is_token_invalid(), "{err}");
    assert_eq!(mock.calls("kf/account/del").len(), 2);
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_wrong_secret_is_reported_without_retrying_forever() {
    let (mock, base) = start().await;
    let client = Client::builder("wwcorp", "wrong")
        .base_url(&base)
        .retry_policy(fast_retries())
        .build()
        .unwrap();
    let err = client.accounts().del("wk1").await.unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::InvalidCredential));
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 1);
    assert!(!err.to_string().contains("wrong"));
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let (mock, base) = start().await;
    let offset = Arc::new(AtomicU64::new(0));
    let clock_offset = offset.clone();
    let client = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .token_refresh_margin(Duration::from_secs(300))
        .clock(move || SystemTime::now() + Duration::from_secs(clock_offset.load(Ordering::SeqCst)))
        .build()
        .unwrap();
    client.servicers().list("wk1").await.unwrap();
    offset.store(6000, Ordering::SeqCst);
    client.servicers().list("wk1").await.unwrap();
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 1);
    offset.store(6950, Ordering::SeqCst);
    client.servicers().list("wk1").await.unwrap();
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 2);
    // No call was ever rejected: the refresh happened before expiry.
    assert_eq!(mock.calls("kf/servicer/list").len(), 3);
}

#[tokio::test]
async fn concurrency_limits_busy_errors_and_5xx_are_retried_with_backoff() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(json!({"errcode":45033,"errmsg":"api concurrent out of limit"})),
            Reply::Json(json!({"errcode":-1,"errmsg":"system busy"})),
            Reply::Status(502),
            Reply::Json(sync_page(json!([]), "c1", 0)),
        ],
    );
    let page = client
        .messages()
        .sync(SyncMsgRequest::new("wk1"))
        .await
        .unwrap();
    assert_eq!(page.next_cursor, "c1");
    assert_eq!(mock.calls("kf/sync_msg").len(), 4);
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script("kf/sync_msg", (0..10).map(|_| Reply::Status(503)));
    let err = client
        .messages()
        .sync(SyncMsgRequest::new("wk1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 503, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(mock.calls("kf/sync_msg").len(), 4);
}

#[tokio::test]
async fn a_slow_response_times_out_and_is_retried() {
    let (mock, base) = start().await;
    let client = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .timeout(Duration::from_millis(200))
        .retry_policy(fast_retries())
        .build()
        .unwrap();
    client.token().await.unwrap();
    mock.script(
        "kf/servicer/list",
        [Reply::Slow(Duration::from_secs(2), json!({"errcode":0}))],
    );
    client.servicers().list("wk1").await.unwrap();
    assert_eq!(mock.calls("kf/servicer/list").len(), 2);
}

#[tokio::test]
async fn send_without_msgid_is_not_retried_after_an_ambiguous_failure() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/send_msg",
        [
            Reply::Status(502),
            Reply::Json(json!({"errcode":0,"msgid":"x"})),
        ],
    );
    let err = client
        .messages()
        .send(SendMsgRequest::new(
            "wm1",
            "wk1",
            OutboundMessage::text("hi"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HttpStatus { status: 502, .. }));
    assert_eq!(mock.calls("kf/send_msg").len(), 1);
}

#[tokio::test]
async fn send_without_msgid_is_retried_after_a_concurrency_refusal() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/send_msg",
        [
            Reply::Json(json!({"errcode":45033,"errmsg":"concurrent"})),
            Reply::Json(json!({"errcode":0,"errmsg":"ok","msgid":"srv-1"})),
        ],
    );
    let sent = client
        .messages()
        .send(SendMsgRequest::new(
            "wm1",
            "wk1",
            OutboundMessage::text("hi"),
        ))
        .await
        .unwrap();
    assert_eq!(sent.msgid, "srv-1");
    assert_eq!(mock.calls("kf/send_msg").len(), 2);
}

#[tokio::test]
async fn send_with_msgid_is_retried_and_a_duplicate_on_retry_counts_as_sent() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/send_msg",
        [
            Reply::Status(502),
            Reply::Json(
                json!({"errcode":40035,"errmsg":"invalid parameter msgid: duplicate msgid"}),
            ),
        ],
    );
    let sent = client
        .messages()
        .send(SendMsgRequest::new("wm1", "wk1", OutboundMessage::text("hi")).msgid("order-1"))
        .await
        .unwrap();
    assert_eq!(sent.msgid, "order-1");
    assert!(sent.duplicate_on_retry);
    let calls = mock.calls("kf/send_msg");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].1, calls[1].1,
        "the retry resends the identical body"
    );
}

#[tokio::test]
async fn a_duplicate_msgid_on_the_first_attempt_is_an_error() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/send_msg",
        [Reply::Json(
            json!({"errcode":40035,"errmsg":"duplicate msgid"}),
        )],
    );
    let err = client
        .messages()
        .send(SendMsgRequest::new("wm1", "wk1", OutboundMessage::text("hi")).msgid("order-1"))
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::InvalidParameter));
}

#[tokio::test]
async fn invalid_messages_are_rejected_locally_without_a_request() {
    let (mock, base) = start().await;
    let client = client(&base);
    let too_many = (0..11).fold(MsgMenu::new(), |m, i| {
        m.item(MenuItem::click(i.to_string(), "x"))
    });
    for (request, field) in [
        (
            SendMsgRequest::new("wm1", "wk1", OutboundMessage::text("")),
            "text.content",
        ),
        (
            SendMsgRequest::new("wm1", "wk1", OutboundMessage::text("x".repeat(2049))),
            "text.content",
        ),
        (
            SendMsgRequest::new("wm1", "wk1", OutboundMessage::text("hi")).msgid("bad id"),
            "msgid",
        ),
        (
            SendMsgRequest::new("wm1", "wk1", OutboundMessage::msgmenu(too_many)),
            "msgmenu.list",
        ),
    ] {
        match client.messages().send(request).await {
            Err(Error::Validation(e)) => assert_eq!(e.field, field),
            other => panic!("{other:?}"),
        }
    }
    assert!(mock.requests.lock().unwrap().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn the_access_token_never_appears_in_errors() {
    let (mock, base) = start().await;
    let client = client(&base);
    let token = client.token().await.unwrap();
    let value = token.secret().expose().to_owned();
    assert!(!format!("{token:?}").contains(&value));
    mock.script("kf/sync_msg", (0..4).map(|_| Reply::Status(500)));
    let err = client
        .messages()
        .sync(SyncMsgRequest::new("wk1"))
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&value));

    // A transport error: nothing listens on this port.
    let closed = wechat_kf_test_support::ClosedPort::new();
    let dead = closed.url();
    let dead_client = Client::builder("wwcorp", "secret")
        .base_url(&dead)
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    let err = dead_client.token().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Transport { .. }), "{text}");
    assert!(
        !text.contains("secret") && !text.contains("corpsecret"),
        "{text}"
    );
}

#[tokio::test]
async fn sync_keeps_malformed_items_aside_and_sends_open_kfid_and_voice_format() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [Reply::Json(sync_page(
            json!([
                {"msgid":"m1","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"a"}},
                {"msgid":"m2","open_kfid":"wk1","external_userid":"wm1","send_time":2,"origin":3,"msgtype":"location","location":{"latitude":"north"}},
                {"msgid":"m3","open_kfid":"wk1","external_userid":"wm1","send_time":3,"origin":3,"msgtype":"text","text":{"content":"c"}}
            ]),
            "c1",
            1,
        ))],
    );
    let page = client
        .messages()
        .sync(
            SyncMsgRequest::new("wk1")
                .voice_format(wechat_kf::client::messages::VoiceFormat::Silk)
                .limit(3),
        )
        .await
        .unwrap();
    assert_eq!(page.msg_list.len(), 2);
    assert_eq!(page.invalid.len(), 1);
    assert_eq!(page.invalid[0].msgid.as_ref().unwrap(), "m2");
    assert!(page.has_more);
    let body: Value = serde_json::from_slice(&mock.calls("kf/sync_msg")[0].1).unwrap();
    assert_eq!(body, json!({"open_kfid":"wk1","voice_format":1,"limit":3}));
}

#[tokio::test]
async fn account_list_posts_offset_and_limit_and_pages_until_a_short_page() {
    let (mock, base) = start().await;
    let client = client(&base);
    let page = |n: usize, from: usize| {
        let list: Vec<Value> = (from..from + n)
            .map(|i| json!({"open_kfid":format!("wk{i}"),"name":"n","avatar":"a","manage_privilege":true}))
            .collect();
        Reply::Json(json!({"errcode":0,"errmsg":"ok","account_list":list}))
    };
    mock.script(
        "kf/account/list",
        [page(100, 0), page(100, 100), page(7, 200)],
    );
    let all = client.accounts().list_all().await.unwrap();
    assert_eq!(all.len(), 207);
    let offsets: Vec<Value> = mock
        .calls("kf/account/list")
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect();
    assert_eq!(
        offsets,
        [
            json!({"offset":0,"limit":100}),
            json!({"offset":100,"limit":100}),
            json!({"offset":200,"limit":100})
        ]
    );
}

#[tokio::test]
async fn service_state_reads_servicer_userid_and_department_ids_are_numbers() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/service_state/get",
        [Reply::Json(
            json!({"errcode":0,"errmsg":"ok","service_state":3,"servicer_userid":"zhangsan"}),
        )],
    );
    mock.script(
        "kf/customer/get_upgrade_service_config",
        [Reply::Json(json!({"errcode":0,"member_range":{"userid_list":["a"],"department_id_list":[2,3]},"groupchat_range":{"chat_id_list":["c"]}}))],
    );
    let state = client.service_state().get("wk1", "wm1").await.unwrap();
    assert_eq!(state.service_state, wechat_kf::session::ServiceState::Human);
    assert_eq!(state.servicer_userid.unwrap(), "zhangsan");
    let config = client.upgrade_service().config().await.unwrap();
    assert_eq!(config.member_range.department_id_list, [2, 3]);
}

#[tokio::test]
async fn media_get_treats_a_json_body_as_an_error_never_as_a_file() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "media/get",
        [
            Reply::Json(json!({"errcode":40007,"errmsg":"invalid media_id"})),
            Reply::Raw(
                "text/plain",
                vec![],
                br#"{"errcode":40007,"errmsg":"invalid media_id"}"#.to_vec(),
            ),
            Reply::Raw(
                "",
                vec![],
                br#"  {"errcode":45033,"errmsg":"busy"}"#.to_vec(),
            ),
        ],
    );
    let err = client.media().download("bad").await.unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::InvalidMediaId));
    let err = client.media().download("bad").await.unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::InvalidMediaId));
    // Served as application/octet-stream, still recognised; 45033 is retried and the next reply
    // is the default JSON envelope (errcode 0), which is still not media.
    let err = client.media().download("bad").await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err}");
}

#[tokio::test]
async fn media_get_keeps_the_servers_file_name() {
    let (mock, base) = start().await;
    let client = client(&base);
    let dir = tempfile::tempdir().unwrap();
    mock.script(
        "media/get",
        [Reply::Raw(
            "application/octet-stream",
            vec![],
            br#"{"errcode":0,"data":[1,2]}"#.to_vec(),
        )],
    );
    let json_file = client.media().download("json").await.unwrap();
    assert_eq!(json_file.bytes.as_ref(), br#"{"errcode":0,"data":[1,2]}"#);
    let cd = "attachment; filename=\"x.txt\"; filename*=UTF-8''%E5%9B%BE%E7%89%87.txt".to_owned();
    mock.script(
        "media/get",
        [
            Reply::Raw(
                "text/plain",
                vec![("content-disposition", cd.clone())],
                b"plain text file".to_vec(),
            ),
            Reply::Raw(
                "image/jpeg",
                vec![("content-disposition", cd)],
                b"\xff\xd8jpegdata".to_vec(),
            ),
        ],
    );
    let media = client.media().download("m1").await.unwrap();
    assert_eq!(media.bytes.as_ref(), b"plain text file");
    assert_eq!(media.info.filename.as_deref(), Some("图片.txt"));
    let (path, info) = client
        .media()
        .download_to_dir("m2", dir.path())
        .await
        .unwrap();
    assert_eq!(path, dir.path().join("图片.txt"));
    assert_eq!(info.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(std::fs::read(path).unwrap(), b"\xff\xd8jpegdata");
}

#[tokio::test]
async fn uploads_send_one_media_part_with_filename_and_filelength() {
    let (mock, base) = start().await;
    let client = client(&base);
    let reply = || {
        Reply::Json(
            json!({"errcode":0,"errmsg":"ok","type":"file","media_id":"mid","created_at":"1380000000"}),
        )
    };
    mock.script("media/upload", [reply(), reply(), reply()]);
    let uploaded = client
        .media()
        .upload(
            MediaKind::File,
            MediaUpload::bytes("wework.txt", &b"123456"[..]),
        )
        .await
        .unwrap();
    assert_eq!(uploaded.media_id, "mid");
    assert_eq!(uploaded.created_at_secs(), Some(1_380_000_000));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("报告.pdf");
    std::fs::write(&path, vec![7u8; 100_000]).unwrap();
    client
        .media()
        .upload(MediaKind::File, MediaUpload::file(&path))
        .await
        .unwrap();

    let chunks = futures::stream::iter(vec![
        Ok(bytes::Bytes::from_static(b"abc")),
        Ok(bytes::Bytes::from_static(b"defgh")),
    ]);
    client
        .media()
        .upload(MediaKind::File, MediaUpload::stream("s.bin", 8, chunks))
        .await
        .unwrap();

    let calls = mock.calls("media/upload");
    assert_eq!(calls.len(), 3);
    assert!(calls[0].0.contains("type=file"));
    let body = String::from_utf8_lossy(&calls[0].1);
    assert!(
        body.contains("name=\"media\"; filename=\"wework.txt\"; filelength=6\r\n"),
        "{body}"
    );
    assert!(body.contains("\r\n\r\n123456\r\n--"));
    let body = String::from_utf8_lossy(&calls[1].1);
    assert!(body.contains("filename=\"报告.pdf\"; filelength=100000\r\n"));
    assert_eq!(calls[1].1.iter().filter(|&&b| b == 7).count(), 100_000);
    let body = String::from_utf8_lossy(&calls[2].1);
    assert!(body.contains("filelength=8\r\n") && body.contains("abcdefgh"));
}

#[tokio::test]
async fn uploads_outside_the_documented_sizes_are_rejected_locally() {
    let (mock, base) = start().await;
    let client = client(&base);
    let err = client
        .media()
        .upload(MediaKind::Image, MediaUpload::bytes("a.png", &b"12345"[..]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation(_)));
    let err = client
        .media()
        .upload(
            MediaKind::Voice,
            MediaUpload::bytes("a.amr", vec![0u8; 2 * 1024 * 1024 + 1]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation(_)));
    assert!(mock.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn short_lived_tokens_do_not_cause_a_gettoken_per_call() {
    let (mock, base) = start().await;
    mock.expires_in.store(60, Ordering::SeqCst);
    let client = client(&base);
    for _ in 0..5 {
        client.servicers().list("wk1").await.unwrap();
    }
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 1);
}

fn text_item(id: &str) -> Value {
    json!({"msgid":id,"open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"}})
}

fn sync_bodies(mock: &Mock) -> Vec<Value> {
    mock.calls("kf/sync_msg")
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect()
}

/// The `cursor` of every `sync_msg` request, in order (`null` when none was sent).
fn sent_cursors(mock: &Mock) -> Vec<Value> {
    sync_bodies(mock)
        .iter()
        .map(|b| b["cursor"].clone())
        .collect()
}

#[tokio::test]
async fn the_puller_continues_through_empty_pages_until_has_more_is_zero() {
    use futures::StreamExt;
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(sync_page(json!([text_item("m1")]), "c1", 1)),
            Reply::Json(sync_page(json!([]), "c2", 1)),
            Reply::Json(sync_page(json!([]), "c3", 1)),
            Reply::Json(sync_page(json!([text_item("m2")]), "c4", 0)),
        ],
    );
    let store = Arc::new(wechat_kf::client::puller::MemoryCursorStore::new());
    let mut puller =
        wechat_kf::client::puller::Puller::new(client, "wk1").cursor_store(store.clone());
    let items: Vec<_> = puller.stream().collect().await;
    let ids: Vec<String> = items
        .into_iter()
        .map(|item| match item.unwrap() {
            wechat_kf::client::puller::PullItem::Message(m) => m.msgid().to_string(),
            wechat_kf::client::puller::PullItem::Invalid(i) => panic!("{i:?}"),
        })
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    let history: Vec<String> = store.history().into_iter().map(|(_, c)| c).collect();
    assert_eq!(history, ["c1", "c2", "c3", "c4"]);
    let cursors = sent_cursors(&mock);
    assert_eq!(
        cursors,
        [Value::Null, json!("c1"), json!("c2"), json!("c3")]
    );
}

#[tokio::test]
async fn an_uncommitted_batch_is_delivered_again_and_the_cursor_only_moves_on_commit() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(sync_page(json!([text_item("m1")]), "c1", 0)),
            Reply::Json(sync_page(json!([text_item("m1")]), "c1", 0)),
            Reply::Json(sync_page(
                json!([text_item("m1"), text_item("m2")]),
                "c2",
                0,
            )),
        ],
    );
    let store = Arc::new(wechat_kf::client::puller::MemoryCursorStore::new());
    let mut puller =
        wechat_kf::client::puller::Puller::new(client, "wk1").cursor_store(store.clone());
    {
        let batch = puller.fetch().await.unwrap();
        assert_eq!(batch.messages.len(), 1);
        // Dropped: not accepted.
    }
    assert_eq!(store.get(&"wk1".into()), None);
    let batch = puller.fetch().await.unwrap();
    assert_eq!(batch.messages[0].msgid(), "m1", "delivered again");
    batch.commit().await.unwrap();
    assert_eq!(store.get(&"wk1".into()).as_deref(), Some("c1"));
    let batch = puller.fetch().await.unwrap();
    let ids: Vec<_> = batch
        .messages
        .iter()
        .map(|m| m.msgid().to_string())
        .collect();
    assert_eq!(ids, ["m2"], "m1 was committed already");
    assert_eq!(batch.duplicates(), 1);
    batch.commit().await.unwrap();
    let cursors = sent_cursors(&mock);
    assert_eq!(cursors, [Value::Null, Value::Null, json!("c1")]);
}

#[tokio::test]
async fn a_rejected_callback_token_is_dropped_and_the_page_pulled_without_it() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(json!({"errcode":95007,"errmsg":"invalid msg token"})),
            Reply::Json(sync_page(json!([text_item("m1")]), "c1", 1)),
            Reply::Json(sync_page(json!([]), "c2", 0)),
        ],
    );
    let mut puller = wechat_kf::client::puller::Puller::new(client, "wk1")
        .callback_token("CB-TOKEN", SystemTime::now());
    let batch = puller.fetch().await.unwrap();
    assert_eq!(batch.messages.len(), 1);
    batch.commit().await.unwrap();
    puller.fetch().await.unwrap().commit().await.unwrap();
    let tokens: Vec<Value> = sync_bodies(&mock)
        .iter()
        .map(|b| b["token"].clone())
        .collect();
    assert_eq!(tokens, [json!("CB-TOKEN"), Value::Null, Value::Null]);
}

#[tokio::test]
async fn a_callback_token_is_sent_with_every_page_while_valid_and_not_after() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(sync_page(json!([]), "c1", 1)),
            Reply::Json(sync_page(json!([]), "c2", 0)),
            Reply::Json(sync_page(json!([]), "c3", 0)),
        ],
    );
    let mut puller = wechat_kf::client::puller::Puller::new(client, "wk1")
        .callback_token("FRESH", SystemTime::now());
    puller.fetch().await.unwrap().commit().await.unwrap();
    puller.fetch().await.unwrap().commit().await.unwrap();
    puller.set_callback_token("OLD", SystemTime::now() - Duration::from_secs(11 * 60));
    puller.fetch().await.unwrap().commit().await.unwrap();
    let tokens: Vec<Value> = sync_bodies(&mock)
        .iter()
        .map(|b| b["token"].clone())
        .collect();
    assert_eq!(tokens, [json!("FRESH"), json!("FRESH"), Value::Null]);
}

#[tokio::test]
async fn the_stream_surfaces_malformed_items_and_still_moves_the_cursor() {
    use futures::StreamExt;
    let (mock, base) = start().await;
    let client = client(&base);
    let bad = json!({"msgid":"bad","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"location","location":{"latitude":"north"}});
    mock.script(
        "kf/sync_msg",
        [Reply::Json(sync_page(
            json!([text_item("m1"), bad, text_item("m3")]),
            "c1",
            0,
        ))],
    );
    let store = Arc::new(wechat_kf::client::puller::MemoryCursorStore::new());
    let mut puller =
        wechat_kf::client::puller::Puller::new(client, "wk1").cursor_store(store.clone());
    let items: Vec<_> = puller.stream().map(Result::unwrap).collect().await;
    assert_eq!(items.len(), 3);
    let invalid = items
        .iter()
        .filter(|i| matches!(i, wechat_kf::client::puller::PullItem::Invalid(_)))
        .count();
    assert_eq!(invalid, 1);
    assert_eq!(store.get(&"wk1".into()).as_deref(), Some("c1"));
}

#[tokio::test]
async fn a_page_comes_whole_and_its_cursor_moves_only_when_the_commit_hook_succeeds() {
    let (mock, base) = start().await;
    let client = client(&base);
    let bad = json!({"msgid":"bad","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"location","location":{"latitude":"north"}});
    let page = sync_page(json!([text_item("m1"), bad, text_item("m1")]), "c1", 1);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(page.clone()),
            Reply::Json(page),
            Reply::Json(sync_page(json!([text_item("m1")]), "", 0)),
        ],
    );
    let store = Arc::new(wechat_kf::client::puller::MemoryCursorStore::new());
    // The default de-duplication window is on: pages bypass it all the same.
    let mut puller =
        wechat_kf::client::puller::Puller::new(client, "wk1").cursor_store(store.clone());

    let mut page = puller.fetch_page().await.unwrap();
    assert_eq!(page.messages.len(), 2, "repeats are kept");
    assert_eq!(page.invalid.len(), 1);
    assert_eq!(page.next_cursor(), Some("c1"));
    assert!(page.has_more());
    assert!(page.callback_token_rejection().is_none());
    let taken = std::mem::take(&mut page.messages);
    let failed: Result<(), &str> = page
        .commit_with(|cursor| async move {
            assert_eq!(cursor.as_deref(), Some("c1"));
            drop(taken);
            Err("the transaction rolled back")
        })
        .await;
    assert_eq!(failed, Err("the transaction rolled back"));
    assert_eq!(
        puller.committed_cursor(),
        None,
        "a failed hook leaves the cursor"
    );

    let page = puller.fetch_page().await.unwrap();
    assert_eq!(page.messages.len(), 2, "the same page again");
    let stored = page
        .commit_with(|cursor| async move { Ok::<_, ()>(cursor) })
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("c1"));
    assert_eq!(puller.committed_cursor(), Some("c1"));

    // A page without next_cursor keeps the cursor; the hook is still called for its items.
    let page = puller.fetch_page().await.unwrap();
    assert_eq!(page.messages.len(), 1, "m1 again: nothing remembered");
    assert_eq!(page.next_cursor(), None);
    let cursor = page
        .commit_with(|cursor| async move { Ok::<_, ()>(cursor) })
        .await
        .unwrap();
    assert_eq!(cursor, None);
    assert_eq!(puller.committed_cursor(), Some("c1"));

    assert!(store.history().is_empty(), "the hook is the persistence");
    let cursors = sent_cursors(&mock);
    assert_eq!(cursors, [Value::Null, Value::Null, json!("c1")]);
}

#[tokio::test]
async fn a_page_committed_without_a_hook_saves_its_cursor_to_the_cursor_store() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [Reply::Json(sync_page(json!([text_item("m1")]), "c1", 0))],
    );
    let store = Arc::new(wechat_kf::client::puller::MemoryCursorStore::new());
    let mut puller =
        wechat_kf::client::puller::Puller::new(client, "wk1").cursor_store(store.clone());
    puller.fetch_page().await.unwrap().commit().await.unwrap();
    assert_eq!(store.get(&"wk1".into()).as_deref(), Some("c1"));
    assert_eq!(puller.committed_cursor(), Some("c1"));
}

#[tokio::test]
async fn a_rejected_callback_token_is_retried_without_the_token_once_and_reported() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(json!({"errcode":95007,"errmsg":"invalid msg token"})),
            Reply::Json(sync_page(json!([text_item("m1")]), "c1", 1)),
            Reply::Json(sync_page(json!([]), "c2", 1)),
            Reply::Json(sync_page(json!([]), "c3", 0)),
        ],
    );
    let mut puller = wechat_kf::client::puller::Puller::new(client, "wk1").dedup_window(0);
    puller.set_callback_token("CB-OLD", SystemTime::now());
    let page = puller.fetch_page().await.unwrap();
    assert_eq!(page.messages.len(), 1);
    let rejection = page.callback_token_rejection().expect("reported");
    assert_eq!(rejection.errcode(), Some(ErrCode::InvalidMsgToken));
    page.commit_with(|_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    // Forgotten: the next page goes without it, and nothing is reported any more.
    let page = puller.fetch_page().await.unwrap();
    assert!(page.callback_token_rejection().is_none());
    page.commit_with(|_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    // A newer token from a later callback is used again.
    puller.set_callback_token("CB-NEW", SystemTime::now());
    puller.fetch_page().await.unwrap().commit().await.unwrap();
    let tokens: Vec<Value> = sync_bodies(&mock)
        .iter()
        .map(|b| b["token"].clone())
        .collect();
    assert_eq!(
        tokens,
        [json!("CB-OLD"), Value::Null, Value::Null, json!("CB-NEW")]
    );
}

#[tokio::test]
async fn a_failure_after_a_token_rejection_is_returned_and_the_rejection_still_reported() {
    let (mock, base) = start().await;
    let client = client(&base);
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(json!({"errcode":95007,"errmsg":"invalid msg token"})),
            Reply::Json(json!({"errcode":40035,"errmsg":"invalid parameter"})),
            Reply::Json(sync_page(json!([]), "c1", 0)),
        ],
    );
    let mut puller = wechat_kf::client::puller::Puller::new(client, "wk1");
    puller.set_callback_token("CB", SystemTime::now());
    let error = puller.fetch_page().await.unwrap_err();
    assert_eq!(error.errcode(), Some(ErrCode::InvalidParameter));
    assert_eq!(
        puller.callback_token_rejection().and_then(Error::errcode),
        Some(ErrCode::InvalidMsgToken)
    );
    assert_eq!(sync_bodies(&mock).len(), 2, "one retry without the token");
    let page = puller.fetch_page().await.unwrap();
    assert!(page.callback_token_rejection().is_none());
    let tokens: Vec<Value> = sync_bodies(&mock)
        .iter()
        .map(|b| b["token"].clone())
        .collect();
    assert_eq!(tokens, [json!("CB"), Value::Null, Value::Null]);
}

#[tokio::test]
async fn a_45009_is_not_retried_and_blocks_that_api_until_the_block_ends() {
    let (mock, base) = start().await;
    let client = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .retry_policy(fast_retries())
        .rate_limit_block(Duration::from_millis(400))
        .budget_max_wait(Duration::ZERO)
        .build()
        .unwrap();
    mock.script(
        "kf/sync_msg",
        [
            Reply::Json(json!({"errcode":45009,"errmsg":"api freq out of limit"})),
            Reply::Json(sync_page(json!([]), "c1", 0)),
        ],
    );
    let err = client
        .messages()
        .sync(SyncMsgRequest::new("wk1"))
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::ApiFrequencyExceeded));
    assert_eq!(mock.calls("kf/sync_msg").len(), 1, "not retried");
    // Blocked: the next call fails without reaching the server...
    let blocked = client
        .messages()
        .sync(SyncMsgRequest::new("wk1"))
        .await
        .unwrap_err();
    assert!(blocked.is_rate_limited(), "{blocked}");
    let wait = blocked.retry_after().unwrap();
    assert!(wait <= Duration::from_millis(400), "{wait:?}");
    assert_eq!(mock.calls("kf/sync_msg").len(), 1);
    // ...other APIs are not blocked...
    client.servicers().list("wk1").await.unwrap();
    // ...and once the block ends the call goes.
    tokio::time::sleep(wait).await;
    let page = client
        .messages()
        .sync(SyncMsgRequest::new("wk1"))
        .await
        .unwrap();
    assert_eq!(page.next_cursor, "c1");
}

#[tokio::test]
async fn the_call_budget_stops_calls_before_they_reach_the_server() {
    let (mock, base) = start().await;
    let client = Client::builder("wwcorp", "secret")
        .base_url(&base)
        .budget(Limits::new(3, 0))
        .budget_max_wait(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..3 {
        client.servicers().list("wk1").await.unwrap();
    }
    let err = client.servicers().list("wk1").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Budget {
                endpoint: "kf/servicer/list",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.retry_after().unwrap() <= Duration::from_secs(60));
    assert_eq!(mock.calls("kf/servicer/list").len(), 3);
    // gettoken has a budget of its own.
    assert_eq!(mock.gettoken.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn clients_sharing_a_redis_budget_spend_one_budget_together() {
    use wechat_kf::client::budget::RedisBudget;
    let Some(url) = wechat_kf_test_support::require_env("REDIS_URL") else {
        return;
    };
    let (mock, base) = start().await;
    // A prefix of this run only: windows are shared by every client of the same key.
    let prefix = format!("wechat-kf-test:budget:{}:", std::process::id());
    let clients: Vec<Client> = (0..2)
        .map(|_| {
            let store = RedisBudget::new(&url).unwrap().prefix(prefix.clone());
            Client::builder("wwcorp", "secret")
                .base_url(&base)
                .budget(Limits::new(4, 0))
                .budget_store(Arc::new(store))
                .budget_max_wait(Duration::ZERO)
                .build()
                .unwrap()
        })
        .collect();
    let mut went = 0;
    for i in 0..8 {
        if clients[i % 2].servicers().list("wk1").await.is_ok() {
            went += 1;
        }
    }
    // Both clients together: 4 calls reach the server in the minute (a retry after a token
    // refresh spends one too), unless the run straddled a minute boundary.
    let calls = mock.calls("kf/servicer/list").len();
    assert!(went <= calls && went >= 2, "{went} of {calls}");
    assert!((4..=8).contains(&calls), "{calls}");
    if calls > 4 {
        eprintln!("the run crossed a minute boundary: {calls} calls went");
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_shared_redis_budget_is_paced_across_clients() {
    use wechat_kf::client::budget::{Admission, BudgetStore, RedisBudget};
    let Some(url) = wechat_kf_test_support::require_env("REDIS_URL") else {
        return;
    };
    let prefix = format!("wechat-kf-test:paced:{}:", std::process::id());
    let stores: Vec<RedisBudget> = (0..2)
        .map(|_| RedisBudget::new(&url).unwrap().prefix(prefix.clone()))
        .collect();
    // 6,000 a minute: a burst of 100, then one call every 10.17 ms, for both stores together.
    let limits = Limits::new(6_000, 0);
    let now = 1_700_000_000_000 + (std::process::id() as u64 % 1_000) * 60_000;
    let mut went = 0;
    for i in 0..150 {
        if stores[i % 2]
            .admit("wwcorp:kf/sync_msg", limits, now)
            .await
            .unwrap()
            == Admission::Go
        {
            went += 1;
        }
    }
    assert_eq!(went, 100, "one burst, shared");
    let Admission::Wait(wait) = stores[0]
        .admit("wwcorp:kf/sync_msg", limits, now)
        .await
        .unwrap()
    else {
        panic!("the burst is spent");
    };
    assert_eq!(wait, Duration::from_millis(11));
    assert_eq!(
        stores[1]
            .admit("wwcorp:kf/sync_msg", limits, now + 11)
            .await
            .unwrap(),
        Admission::Go
    );
    // The hour's budget is paced too: 800 an hour goes as a burst of 100, then the rest spread.
    let hourly = Limits::new(0, 800);
    let mut went = 0;
    for i in 0..150 {
        if stores[i % 2]
            .admit("wwcorp:kf/send_msg", hourly, now)
            .await
            .unwrap()
            == Admission::Go
        {
            went += 1;
        }
    }
    assert_eq!(went, 100);
}
