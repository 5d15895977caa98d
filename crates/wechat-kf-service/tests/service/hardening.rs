//! The hostile campaign of issue 18, in process (the parts that need a child process under a
//! low descriptor limit, a SIGTERM or a full disk are in `wechat-kf-cli/tests/serve_hardening.rs`):
//! replayed callback floods, callbacks whose Token WeChat rejects, a rejected cursor after a
//! restart, oversized and malformed ids, a reused msgid, damaged store files, a missing
//! PostgreSQL database, `/metrics` apart and behind a token.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::StreamExt;
use serde_json::{Value, json};
use wechat_kf::crypto::CallbackCrypto;
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::config::Secret;
use wechat_kf_service::store::{PostgresStore, SqliteStore, Store};

use crate::common::*;

/// A signed, encrypted `kf_msg_or_event` callback for `open_kfid` carrying `token`: (query,
/// body), as WeChat would POST it now.
fn signed_callback(
    emu: &RunningEmulator,
    open_kfid: &str,
    token: &str,
    nonce: &str,
) -> (String, String) {
    let e = emu.emulator().config();
    let crypto = CallbackCrypto::new(&e.callback_token, &e.encoding_aes_key, &e.corp_id).unwrap();
    let inner = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><CreateTime>1</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
         <Token><![CDATA[{token}]]></Token><OpenKfId><![CDATA[{open_kfid}]]></OpenKfId></xml>",
        e.corp_id
    );
    let encrypt = crypto.encrypt_field(&inner, &[3u8; 16]).unwrap();
    let ts = emu.emulator().now().to_string();
    let sig = crypto.sign(&ts, nonce, &encrypt);
    let body = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>",
        e.corp_id
    );
    (
        format!("msg_signature={sig}&timestamp={ts}&nonce={nonce}"),
        body,
    )
}

/// POSTs `(query, body)` `times` times to the running service, 32 at a time; the statuses.
async fn flood(base: &str, callbacks: Vec<(String, String)>) -> Vec<u16> {
    let http = reqwest::Client::new();
    futures::stream::iter(callbacks)
        .map(|(query, body)| {
            let http = http.clone();
            let url = format!("{base}/callback?{query}");
            async move {
                http.post(url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Waits until the emulator's `sync_msg` count stops moving for half a second; the count.
async fn settled_sync_calls(emu: &RunningEmulator) -> u64 {
    let mut last = calls(emu, "kf/sync_msg");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = calls(emu, "kf/sync_msg");
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn a_flood_of_one_replayed_callback_costs_no_more_pulls_than_the_callback_itself() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("replayed");
    let dir = tempfile::tempdir().unwrap();
    let running =
        start_on_emulator_clock(&emu, config(&emu, &dir.path().join("kf.db"), None)).await;
    // Callbacks of our own only.
    emu.emulator().set_callback_url(None);
    let before = settled_sync_calls(&emu).await;
    let captured = signed_callback(&emu, &kf, "CAPTURED-TOKEN", "4242");
    // The original: one pull (its Token is rejected, 95007, and the pull goes on without).
    assert_eq!(
        flood(&running.base_url(), vec![captured.clone()]).await,
        vec![200]
    );
    let one = settled_sync_calls(&emu).await - before;
    // The same callback 1,000 times: answered 200, nothing pulled.
    let started = Instant::now();
    let statuses = flood(&running.base_url(), vec![captured; 1000]).await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let replays = settled_sync_calls(&emu).await - before - one;
    eprintln!(
        "replay flood: 1 callback cost {one} sync_msg calls; 1000 replays cost {replays} \
         ({:.0} replays/s answered)",
        1000.0 / elapsed.as_secs_f64()
    );
    assert!((1..=2).contains(&one), "{one}");
    assert_eq!(replays, 0);
    assert_eq!(
        metric(&running, "wechat_kf_callbacks_total{result=\"replayed\"}"),
        1000
    );
    running.shutdown().await;
    emu.shutdown().await;
}

/// The replay cache's key of a callback: the digest of its signature, timestamp and nonce.
fn replay_key(query: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for name in ["msg_signature=", "timestamp=", "nonce="] {
        let value = query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name))
            .unwrap();
        digest.update(value.as_bytes());
        digest.update([0u8]);
    }
    hex::encode(digest.finalize())
}

#[tokio::test]
async fn callbacks_refused_in_memory_still_reach_the_store_and_are_refused_after_a_restart() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("remembered");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let running = start_on_emulator_clock(&emu, config(&emu, &db, None)).await;
    emu.emulator().set_callback_url(None);
    let callbacks: Vec<_> = (0..20)
        .map(|n| signed_callback(&emu, &kf, &format!("T{n}"), &format!("77{n}")))
        .collect();
    let mut twice = callbacks.clone();
    twice.extend(callbacks.clone());
    let statuses = flood(&running.base_url(), twice).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        metric(&running, "wechat_kf_callbacks_total{result=\"accepted\"}"),
        20
    );
    assert_eq!(
        metric(&running, "wechat_kf_callbacks_total{result=\"replayed\"}"),
        20
    );
    // The keys reach the store in the background (read without writing, so as not to race
    // the writer).
    let keys: Vec<String> = callbacks
        .iter()
        .map(|(query, _)| replay_key(query))
        .collect();
    let store = running.store().clone();
    let now = emu.emulator().now() as i64;
    wait_for(
        "the callbacks' keys in the store",
        Duration::from_secs(10),
        || {
            let (store, keys) = (store.clone(), keys.clone());
            async move {
                let stored = store.remembered_callbacks(now, 1_000).await.unwrap();
                keys.iter().all(|k| stored.iter().any(|(s, _)| s == k))
            }
        },
    )
    .await;
    for key in &keys {
        assert!(
            !store
                .first_callback(key.clone(), now + 600, now)
                .await
                .unwrap()
        );
    }
    running.shutdown().await;
    drop(store);

    // A new instance on the same database refuses the same callbacks (its memory is filled
    // from the store at start), and accepts a new one.
    let running = start_on_emulator_clock(&emu, config(&emu, &db, None)).await;
    emu.emulator().set_callback_url(None);
    let mut again = callbacks.clone();
    again.push(signed_callback(&emu, &kf, "NEW", "7800"));
    let statuses = flood(&running.base_url(), again).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        metric(&running, "wechat_kf_callbacks_total{result=\"replayed\"}"),
        20
    );
    assert_eq!(
        metric(&running, "wechat_kf_callbacks_total{result=\"accepted\"}"),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn callbacks_whose_token_wechat_rejects_fall_back_to_at_most_n_tokenless_pulls_a_minute() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("rejected-tokens");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.pull.tokenless_per_minute = 3;
    let running = start_on_emulator_clock(&emu, config).await;
    emu.emulator().set_callback_url(None);
    let before = settled_sync_calls(&emu).await;
    // 300 distinct, correctly signed callbacks in 10 waves over 2 s, each with a Token WeChat
    // never issued.
    for wave in 0..10 {
        let callbacks: Vec<_> = (0..30)
            .map(|i| {
                let n = wave * 30 + i;
                signed_callback(&emu, &kf, &format!("FORGED{n}"), &format!("{n}"))
            })
            .collect();
        let statuses = flood(&running.base_url(), callbacks).await;
        assert!(statuses.iter().all(|s| *s == 200));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let made = calls(&emu, "kf/sync_msg") - before;
    eprintln!(
        "rejected-token flood: 300 callbacks over 2 s cost {made} sync_msg calls \
         (limit 3 token-less a minute)"
    );
    // At most 3 token-less calls a minute (the start's pull was one) and one rejected call with
    // a Token before each fallback.
    assert!(made <= 2 * 3, "{made} sync_msg calls");
    assert!(metric(&running, "wechat_kf_pull_tokenless_paced_total") >= 1);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_rejected_cursor_after_a_restart_delivers_the_downtime_backlog() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("downtime");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    let running = start_on_emulator_clock(&emu, config(&emu, &db, Some(&sink.url))).await;
    let before = send_texts(&emu, &kf, "wmEarly", 3);
    wait_for("the first messages", Duration::from_secs(15), || async {
        sink.acked_count() >= before.len()
    })
    .await;
    wait_until_acks_recorded(&running).await;
    running.shutdown().await;
    // Down for an hour; 30 messages arrive meanwhile, the last 10 minutes before the restart.
    emu.emulator().advance_clock(Duration::from_secs(3600));
    let mut downtime = Vec::new();
    for customer in ["wmA", "wmB", "wmC"] {
        downtime.extend(send_texts(&emu, &kf, customer, 10));
        emu.emulator().advance_clock(Duration::from_secs(120));
    }
    emu.emulator().advance_clock(Duration::from_secs(600));
    // WeChat rejects the stored cursor once.
    emu.emulator()
        .inject_fault(
            json!({"path": "kf/sync_msg", "kind": "errcode", "errcode": 40035, "count": 1}),
        )
        .unwrap();
    let running = start_on_emulator_clock(&emu, config(&emu, &db, Some(&sink.url))).await;
    let mut expected = before.clone();
    expected.extend(downtime.iter().cloned());
    wait_for(
        "the downtime backlog delivered",
        Duration::from_secs(15),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_all_delivered_once(&running, &sink, &expected).await;
    let rows = running
        .store()
        .message_rows(kf.clone().into())
        .await
        .unwrap();
    assert_eq!(rows.iter().filter(|r| r.skipped).count(), 0);
    assert_eq!(
        metric(
            &running,
            "wechat_kf_first_starts_total{reason=\"cursor_rejected\",policy=\"from-now\"}"
        ),
        1
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_reply_api_refuses_oversized_and_malformed_ids_with_400_naming_the_field() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(&emu, config(&emu, &dir.path().join("kf.db"), None)).await;
    let long = "w".repeat(30_000);
    let hostile = "../../etc/passwd; DROP TABLE cursors;--";
    let cases = [
        (
            "/v1/messages",
            json!({"touser": "wmX", "open_kfid": long, "msgtype": "text", "text": {"content": "hi"}}),
            "open_kfid",
        ),
        (
            "/v1/messages",
            json!({"touser": hostile, "open_kfid": "wkA", "msgtype": "text", "text": {"content": "hi"}}),
            "touser",
        ),
        (
            "/v1/service_state/trans",
            json!({"open_kfid": "wkA", "external_userid": "wmX", "service_state": 3, "servicer_userid": hostile}),
            "servicer_userid",
        ),
        (
            "/v1/service_state/trans",
            json!({"open_kfid": hostile, "external_userid": "wmX", "service_state": 2}),
            "open_kfid",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = api(&running, "POST", path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {answer}");
        assert_eq!(answer["field"], field, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.len() < 160,
            "the answer quotes a bounded value: {error}"
        );
    }
    let (status, answer) = api(
        &running,
        "GET",
        &format!("/v1/sessions/wkA/{}", "m".repeat(300)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["field"], "external_userid");
    // Nothing reached WeChat.
    assert_eq!(calls(&emu, "kf/send_msg"), 0);
    assert_eq!(calls(&emu, "kf/service_state/trans"), 0);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_reused_msgid_with_another_body_or_recipient_gets_409_idempotency_mismatch() {
    let emu = emulator().await;
    let kf = emu.emulator().create_account("idem");
    emu.emulator()
        .customer_send(text(&kf, "wmI", "hello"))
        .unwrap();
    emu.emulator()
        .customer_send(text(&kf, "wmJ", "hello"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.pull.first_start = wechat_kf_service::config::FirstStart::Replay;
    let running = start(&emu, config).await;
    wait_for("both customers pulled", Duration::from_secs(10), || async {
        running.store().stats().await.unwrap().messages >= 2
    })
    .await;
    let send = |to: &str, content: &str| {
        json!({"touser": to, "open_kfid": kf, "msgid": "order-42", "msgtype": "text",
               "text": {"content": content}})
    };
    let (status, first) = api(&running, "POST", "/v1/messages", Some(send("wmI", "a"))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // The same request again: the stored answer.
    let (status, again) = api(&running, "POST", "/v1/messages", Some(send("wmI", "a"))).await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    // Another body, or another recipient, under the same msgid: refused, nothing sent.
    for body in [send("wmI", "b"), send("wmJ", "a")] {
        let (status, answer) = api(&running, "POST", "/v1/messages", Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert_eq!(answer["error"], "idempotency_mismatch");
        assert_eq!(answer["retryable"], false);
    }
    assert_eq!(outbox(&emu, Some(&kf)).len(), 1);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_reply_apis_413_over_the_wire_is_the_documented_json_error() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(&emu, config(&emu, &dir.path().join("kf.db"), None)).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", running.base_url()))
        .bearer_auth("api-token")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(content_type, "application/json");
    assert_eq!(body["error"], "the body is too large");
    assert_eq!(body["retryable"], false);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn metrics_can_be_served_apart_and_behind_a_token() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.http.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.http.metrics_token = Some(Secret::new("scrape-me"));
    let running = start(&emu, config).await;
    let http = reqwest::Client::new();
    let public = http
        .get(format!("{}/metrics", running.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        public.status(),
        StatusCode::NOT_FOUND,
        "not on the public listener"
    );
    let apart = format!("http://{}/metrics", running.metrics_addr().unwrap());
    let anonymous = http.get(&apart).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = http.get(&apart).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let scraped = http
        .get(&apart)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("wechat_kf_pulls_total")
    );
    let health = http
        .get(format!("{}/healthz", running.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    running.shutdown().await;
    emu.shutdown().await;
}

/// Fills a store with delivered messages, closes it, and overwrites one page in the middle
/// of the file: a page only delivered messages lived on.
async fn damaged_store(path: &std::path::Path) {
    let store = SqliteStore::open(path.to_str().unwrap(), Default::default()).unwrap();
    for page in 0..20 {
        let messages = (0..50)
            .map(|i| {
                let msgid = format!("m{page}-{i}");
                let raw = format!(r#"{{"msgid":"{msgid}","padding":"{}"}}"#, "x".repeat(300));
                wechat_kf_service::store::NewMessage {
                    msgid: msgid.into(),
                    external_userid: "wm".into(),
                    send_time: 1_700_000_000,
                    origin: Some(3),
                    kind: "text".into(),
                    payload: wechat_kf_service::store::Payload::Raw(raw.into()),
                    decode_error: None,
                }
            })
            .collect();
        store
            .commit_page(wechat_kf_service::store::PageWrite {
                open_kfid: "wkD".into(),
                messages,
                next_cursor: Some(format!("c{page}")),
                now_ms: 1,
                skip_before: Some(i64::MAX),
                catch_up_before: None,
                turns: Default::default(),
                actions: vec![],
            })
            .await
            .unwrap();
    }
    // Closing the last connection folds the WAL into the file: the damage is where SQLite reads.
    store.close().await;
    let mut bytes = std::fs::read(path).unwrap();
    let page = 4096;
    let middle = (bytes.len() / page / 2) * page;
    for b in &mut bytes[middle..middle + page] {
        *b = 0xA5;
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_damaged_sqlite_store_is_refused_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    damaged_store(&path).await;
    let error = SqliteStore::open(path.to_str().unwrap(), Default::default())
        .expect_err("a damaged database is refused");
    let text = error.to_string();
    assert!(
        text.contains("is damaged") && text.contains("damaged.db"),
        "{text}"
    );
    // A file that is no database at all.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 64 * 1024]).unwrap();
    let error = SqliteStore::open(garbage.to_str().unwrap(), Default::default())
        .expect_err("garbage is refused");
    assert!(error.is_store(), "{error}");
}

#[tokio::test]
async fn a_postgres_url_naming_a_missing_database_says_which_and_why() {
    let Some(url) = require_env("DATABASE_URL") else {
        return;
    };
    let Some((base, _)) = url.rsplit_once('/') else {
        panic!("DATABASE_URL without a database: {url}");
    };
    let missing = format!("{base}/wk_missing_{}", uuid::Uuid::new_v4().simple());
    let error = PostgresStore::connect(&missing)
        .await
        .expect_err("a missing database is refused")
        .to_string();
    assert!(error.contains("wk_missing_"), "names the database: {error}");
    assert!(
        error.contains("does not exist"),
        "the server's message: {error}"
    );
    assert!(!error.contains("postgres://"), "never the URL: {error}");
}

#[tokio::test]
async fn a_reply_api_body_that_never_arrives_gets_408_and_the_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.http.read_timeout = Duration::from_millis(300);
    let running = start(&emu, config).await;
    let mut stream = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer api-token\r\n\
              Content-Length: 1000\r\n\r\n{\"touser\":",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"retryable\":true"), "{answer}");
    running.shutdown().await;
    emu.shutdown().await;
}
