//! The callback endpoint: URL verification (GET) and `kf_msg_or_event` (POST).
//!
//! A POST is verified (signature, then timestamp window), decrypted and answered `200 success`
//! at once; the only work done is waking the account's puller. A callback seen before (same
//! signature, timestamp and nonce: a replay, or WeChat's retry of one we were slow to answer)
//! is answered `200 success` and does nothing; callbacks are remembered for the timestamp
//! window in memory (`http/replay.rs`) and, written in the background, in the store, so
//! instances sharing a database share the memory. Answers: 401 for a forged
//! signature or a timestamp outside the window, 403 for a callback meant for another corp, 413
//! for a body over the limit, 400 for anything unreadable or an id that is not WeChat's shape. Without a callback Token and
//! EncodingAESKey these routes are not mounted at all (the service says so at start).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use wechat_kf::callback::CallbackEvent;
use wechat_kf::crypto::{CallbackCrypto, CryptoError, ReplayWindow, url_decode};

use super::replay::{Key, Replays, Seen};
use crate::clock::Clock;
use crate::ids::{IdKind, bounded, check};
use crate::metrics::{CallbackResult, Metrics};
use crate::puller::Pullers;
use crate::store::Store;
use crate::wake_relay::Relay;

/// How long a callback is remembered when no timestamp window is configured.
const REMEMBER_WITHOUT_WINDOW: Duration = Duration::from_secs(300);

/// Longest callback Token accepted (official doc 94670: `token` ≤ 128 bytes).
const MAX_CALLBACK_TOKEN: usize = 128;

/// The callback endpoint's configuration.
pub(crate) struct CallbackSettings {
    /// Verifies and decrypts callbacks.
    pub(crate) crypto: CallbackCrypto,
    /// The path (default `/callback`).
    pub(crate) path: String,
    /// The accepted distance between a callback's timestamp and now (zero: no check).
    pub(crate) timestamp_window: Duration,
    /// The largest body.
    pub(crate) max_body: usize,
}

/// What the callback handlers use. Cheap to clone.
#[derive(Clone)]
pub(crate) struct CallbackState {
    inner: Arc<Inner>,
}

/// Where an accepted callback's wake goes.
pub(crate) enum Wake {
    /// This instance leads: its pullers.
    Pullers(Arc<Pullers>),
    /// A standby: passed to the leader (PostgreSQL `NOTIFY`, see `wake_relay.rs`).
    Relay(Arc<Relay>),
}

struct Inner {
    settings: CallbackSettings,
    wake: Wake,
    /// Remembers the callbacks seen, shared by the instances on the database (the store), and
    /// in memory in front of it. None on a standby, which holds no store: a replay it lets
    /// through only wakes a pull, which finds nothing new.
    replays: Option<(Arc<dyn Store>, Replays)>,
    metrics: Arc<Metrics>,
    /// WeChat's clock, against which callback timestamps are checked.
    clock: Clock,
}

impl CallbackState {
    pub(crate) fn new(
        settings: CallbackSettings,
        pullers: Arc<Pullers>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        // A key stored before this start expires at most two windows from now.
        let longest = remembered_for(settings.timestamp_window).saturating_mul(2);
        let replays = Replays::start(store.clone(), metrics.clone(), clock.now(), longest);
        CallbackState {
            inner: Arc::new(Inner {
                settings,
                wake: Wake::Pullers(pullers),
                replays: Some((store, replays)),
                metrics,
                clock,
            }),
        }
    }

    /// A standby's callbacks: verified like the leader's, their wakes relayed to it.
    pub(crate) fn standby(
        settings: CallbackSettings,
        relay: Arc<Relay>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        CallbackState {
            inner: Arc::new(Inner {
                settings,
                wake: Wake::Relay(relay),
                replays: None,
                metrics,
                clock,
            }),
        }
    }
}

/// `GET` and `POST <path>`, with the body limit.
pub(crate) fn routes(state: CallbackState) -> Router {
    let settings = &state.inner.settings;
    Router::new()
        .route(&settings.path, get(verify_url).post(event))
        .layer(DefaultBodyLimit::max(settings.max_body))
        .with_state(state)
}

/// The four query parameters, URL-decoded.
#[derive(Default)]
struct Params<'a> {
    msg_signature: Option<Cow<'a, str>>,
    timestamp: Option<Cow<'a, str>>,
    nonce: Option<Cow<'a, str>>,
    echostr: Option<Cow<'a, str>>,
}

fn params(query: Option<&str>) -> Params<'_> {
    let mut p = Params::default();
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // `url_decode` keeps a literal `+` (echostr is base64).
        let slot = match key {
            "msg_signature" => &mut p.msg_signature,
            "timestamp" => &mut p.timestamp,
            "nonce" => &mut p.nonce,
            "echostr" => &mut p.echostr,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(url_decode(value));
        }
    }
    p
}

fn reject(
    state: &CallbackState,
    result: CallbackResult,
    status: StatusCode,
    text: &'static str,
) -> Response {
    state.inner.metrics.callback(result);
    (status, text).into_response()
}

fn crypto_rejection(state: &CallbackState, error: CryptoError) -> Response {
    if error.is_signature_mismatch() {
        reject(
            state,
            CallbackResult::Forged,
            StatusCode::UNAUTHORIZED,
            "signature mismatch\n",
        )
    } else if error.is_receive_id_mismatch() {
        reject(
            state,
            CallbackResult::Forged,
            StatusCode::FORBIDDEN,
            "callback for another corp\n",
        )
    } else {
        reject(
            state,
            CallbackResult::Malformed,
            StatusCode::BAD_REQUEST,
            "malformed callback\n",
        )
    }
}

/// Checks the signed timestamp against the window; `None` when acceptable.
fn stale(state: &CallbackState, timestamp: &str) -> Option<Response> {
    let window = state.inner.settings.timestamp_window;
    if window == Duration::ZERO {
        return None;
    }
    // The timestamp is WeChat's: compare it on WeChat's clock.
    let now = state.inner.clock.now_u64();
    let secs = window.as_secs();
    match ReplayWindow::new(secs, secs).check(timestamp, now) {
        Ok(()) => None,
        Err(_) => Some(reject(
            state,
            CallbackResult::Stale,
            StatusCode::UNAUTHORIZED,
            "timestamp outside the accepted window\n",
        )),
    }
}

/// Whether this verified callback was seen before within the window (then it does nothing).
/// The key is a digest of what WeChat signs it with: a replay repeats all three, and a
/// different callback (a new nonce, or new content under the same nonce) differs in one.
/// The in-process memory answers without waiting for the store in the common case
/// (`http/replay.rs`: the store is written in the background, and asked only when the memory
/// cannot vouch for a miss).
async fn replayed(state: &CallbackState, sig: &str, ts: &str, nonce: &str) -> bool {
    let inner = &state.inner;
    let mut digest = Sha256::new();
    for part in [sig, ts, nonce] {
        digest.update(part.as_bytes());
        digest.update([0u8]);
    }
    let Some((store, replays)) = &inner.replays else {
        return false;
    };
    let key: Key = digest.finalize().into();
    let now = inner.clock.now();
    let window = remembered_for(inner.settings.timestamp_window);
    // Remembered until its timestamp leaves the window (after that the window refuses it).
    let stamped = ts
        .trim()
        .parse::<i64>()
        .unwrap_or(now)
        .clamp(now - window, now + window);
    let expires_at = stamped + window;
    match replays.check(key, expires_at, now) {
        Seen::Replay => return true,
        Seen::First => return false,
        Seen::AskStore => {}
    }
    let replay = match store
        .first_callback(hex::encode(key), expires_at, now)
        .await
    {
        Ok(first) => !first,
        Err(e) => {
            // Waking twice is harmless (wakes coalesce); refusing a real callback is not.
            tracing::debug!(error = %e, "cannot check the callback replay cache; accepting");
            false
        }
    };
    replays.remember(key, expires_at, now);
    replay
}

/// How long a callback is remembered, in seconds: its timestamp's distance from now is at most
/// this, and it is remembered this long past its timestamp.
fn remembered_for(timestamp_window: Duration) -> i64 {
    let window = match timestamp_window {
        Duration::ZERO => REMEMBER_WITHOUT_WINDOW,
        window => window,
    };
    window.as_secs().min(i64::MAX as u64 / 4) as i64
}

/// Checks the ids a callback names; the 400 answer when one is not WeChat's shape.
fn invalid_ids(state: &CallbackState, event: &CallbackEvent) -> Option<Response> {
    let problem = match event {
        CallbackEvent::KfMsgOrEvent(e) => {
            e.open_kfid
                .as_ref()
                .and_then(|id| check(IdKind::OpenKfId, id.as_str()).err())
                .or_else(|| {
                    (e.token.len() > MAX_CALLBACK_TOKEN || e.token.chars().any(char::is_control))
                        .then(|| {
                            format!(
                                "Token is {} bytes or holds control characters ({:?})",
                                e.token.len(),
                                bounded(&e.token, 16)
                            )
                        })
                })
        }
        CallbackEvent::KfAccountAuthChange(change) => change
            .auth_add_open_kfid
            .iter()
            .chain(&change.auth_del_open_kfid)
            .find_map(|id| check(IdKind::OpenKfId, id.as_str()).err()),
        _ => None,
    }?;
    tracing::warn!(reason = %problem, "callback refused: an id is not WeChat's shape");
    Some(reject(
        state,
        CallbackResult::Malformed,
        StatusCode::BAD_REQUEST,
        "invalid id in the callback\n",
    ))
}

/// `GET <callback path>`: answers the decrypted `echostr`, exactly.
pub(crate) async fn verify_url(
    State(state): State<CallbackState>,
    RawQuery(query): RawQuery,
) -> Response {
    let crypto = &state.inner.settings.crypto;
    let p = params(query.as_deref());
    let (Some(sig), Some(ts), Some(nonce), Some(echostr)) =
        (p.msg_signature, p.timestamp, p.nonce, p.echostr)
    else {
        return reject(
            &state,
            CallbackResult::Malformed,
            StatusCode::BAD_REQUEST,
            "missing query parameters\n",
        );
    };
    match crypto.verify_url(&sig, &ts, &nonce, &echostr) {
        Ok(plain) => {
            if let Some(response) = stale(&state, &ts) {
                return response;
            }
            state.inner.metrics.callback(CallbackResult::Verified);
            tracing::info!("callback URL verified");
            // Exactly the plaintext: no quotes, no BOM, no newline (official doc 96238).
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], plain).into_response()
        }
        Err(e) => crypto_rejection(&state, e),
    }
}

/// `POST <callback path>`: verifies, decrypts, wakes the account's puller, answers at once.
pub(crate) async fn event(
    State(state): State<CallbackState>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reject(
                &state,
                CallbackResult::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large\n",
            );
        }
        Err(_) => {
            return reject(
                &state,
                CallbackResult::Malformed,
                StatusCode::BAD_REQUEST,
                "unreadable body\n",
            );
        }
    };
    let crypto = &state.inner.settings.crypto;
    let p = params(query.as_deref());
    let (Some(sig), Some(ts), Some(nonce)) = (p.msg_signature, p.timestamp, p.nonce) else {
        return reject(
            &state,
            CallbackResult::Malformed,
            StatusCode::BAD_REQUEST,
            "missing query parameters\n",
        );
    };
    let Ok(xml) = std::str::from_utf8(&body) else {
        return reject(
            &state,
            CallbackResult::Malformed,
            StatusCode::BAD_REQUEST,
            "body is not UTF-8\n",
        );
    };
    let event = match crypto.decrypt_event(&sig, &ts, &nonce, xml) {
        Ok(event) => event,
        Err(e) => return crypto_rejection(&state, e),
    };
    if let Some(response) = stale(&state, &ts) {
        return response;
    }
    if let Some(response) = invalid_ids(&state, &event) {
        return response;
    }
    if replayed(&state, &sig, &ts, &nonce).await {
        state.inner.metrics.callback(CallbackResult::Replayed);
        return (StatusCode::OK, "success").into_response();
    }
    state.inner.metrics.callback(CallbackResult::Accepted);
    let pullers = match &state.inner.wake {
        Wake::Pullers(pullers) => pullers,
        Wake::Relay(relay) => return relay_wake(relay, event).await,
    };
    match event {
        CallbackEvent::KfMsgOrEvent(e) => match e.open_kfid {
            Some(open_kfid) => {
                if !pullers.wake(&open_kfid, Some(e.token)) {
                    tracing::warn!(
                        open_kfid = open_kfid.as_str(),
                        "account limit reached (pull.max_accounts): callback ignored"
                    );
                }
            }
            // Callbacks from before 2023 do not name the account.
            None => pullers.wake_all(Some(e.token)),
        },
        CallbackEvent::KfAccountAuthChange(change) => {
            for open_kfid in &change.auth_add_open_kfid {
                pullers.wake(open_kfid, None);
            }
            if !change.auth_del_open_kfid.is_empty() {
                tracing::warn!(
                    accounts = change.auth_del_open_kfid.len(),
                    "accounts revoked (kf_account_auth_change); their pulls will fail"
                );
            }
        }
        _ => tracing::debug!("ignored a callback of another type"),
    }
    (StatusCode::OK, "success").into_response()
}

/// A standby's wake: passed to the leader; a `503` when that fails, so that WeChat tries the
/// callback again (perhaps on another instance).
async fn relay_wake(relay: &Relay, event: CallbackEvent) -> Response {
    let sent = match event {
        CallbackEvent::KfMsgOrEvent(e) => relay.send(e.open_kfid.as_ref(), Some(&e.token)).await,
        CallbackEvent::KfAccountAuthChange(change) => {
            let mut sent = Ok(());
            for open_kfid in &change.auth_add_open_kfid {
                sent = sent.and(relay.send(Some(open_kfid), None).await);
            }
            sent
        }
        _ => Ok(()),
    };
    match sent {
        Ok(()) => (StatusCode::OK, "success").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "standby: cannot pass a callback to the leader");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "standby: cannot reach the leader\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    use wechat_kf::OpenKfId;
    use wechat_kf::crypto::CallbackCrypto;

    use super::*;

    const TOKEN: &str = "QDG6eK";
    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const CORP: &str = "wx5823bf96d3bd56c7";

    fn crypto() -> CallbackCrypto {
        CallbackCrypto::new(TOKEN, KEY, CORP).unwrap()
    }

    fn state() -> CallbackState {
        let store = crate::store::SqliteStore::open(":memory:", Default::default()).unwrap();
        CallbackState::new(
            CallbackSettings {
                crypto: crypto(),
                path: "/callback".into(),
                timestamp_window: Duration::from_secs(300),
                max_body: 4096,
            },
            Arc::new(Pullers::detached(5000)),
            Arc::new(store),
            Arc::default(),
            Clock::system(),
        )
    }

    impl CallbackState {
        fn pullers(&self) -> &Pullers {
            match &self.inner.wake {
                Wake::Pullers(pullers) => pullers,
                Wake::Relay(_) => panic!("a standby's state"),
            }
        }

        fn metrics(&self) -> &Metrics {
            &self.inner.metrics
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn event_xml(open_kfid: &str, token: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><CreateTime>1</CreateTime>\
             <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
             <Token><![CDATA[{token}]]></Token><OpenKfId><![CDATA[{open_kfid}]]></OpenKfId></xml>"
        )
    }

    /// A signed, encrypted callback: (query string, body).
    fn callback(inner: &str, timestamp: u64, crypto: &CallbackCrypto) -> (String, String) {
        let encrypt = crypto.encrypt_field(inner, &[7u8; 16]).unwrap();
        let ts = timestamp.to_string();
        let sig = crypto.sign(&ts, "12345", &encrypt);
        let body = format!(
            "<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
        );
        (
            format!("msg_signature={sig}&timestamp={ts}&nonce=12345"),
            body,
        )
    }

    async fn post(
        state: &CallbackState,
        query: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, String) {
        let response = routes(state.clone())
            .oneshot(
                Request::post(format!("/callback?{query}"))
                    .body(body.into())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn url_verification_echoes_the_plaintext_exactly() {
        let state = state();
        let crypto = crypto();
        let echo = crypto
            .encrypt_field("1616140317555161061", &[1u8; 16])
            .unwrap();
        let ts = now().to_string();
        let sig = crypto.sign(&ts, "263014780", &echo);
        let encoded: String = percent(&echo);
        let response = routes(state.clone())
            .oneshot(
                Request::get(format!(
                    "/callback?msg_signature={sig}&timestamp={ts}&nonce=263014780&echostr={encoded}"
                ))
                .body(Body::empty())
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"1616140317555161061");
    }

    fn percent(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_valid_event_is_acknowledged_and_wakes_its_account() {
        let state = state();
        let (query, body) = callback(&event_xml("wkA", "TOKEN1"), now(), &crypto());
        let (status, text) = post(&state, &query, body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, "success");
        let slot = state.pullers().slot("wkA").unwrap();
        assert_eq!(slot.wakes(), 1);
        assert_eq!(slot.token().as_deref(), Some("TOKEN1"));
    }

    #[tokio::test]
    async fn forged_signatures_get_401_and_wake_nothing() {
        let state = state();
        let forger = CallbackCrypto::new("WRONG", KEY, CORP).unwrap();
        let (query, body) = callback(&event_xml("wkA", "T"), now(), &forger);
        let (status, _) = post(&state, &query, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (query, body) = callback(&event_xml("wkA", "T"), now(), &crypto());
        let tampered = query.replace("nonce=12345", "nonce=12346");
        assert_eq!(
            post(&state, &tampered, body).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert!(state.pullers().slot("wkA").is_none());
        assert_eq!(state.metrics().callbacks(CallbackResult::Forged), 2);
    }

    #[tokio::test]
    async fn replayed_callbacks_outside_the_window_are_rejected() {
        let state = state();
        let (query, body) = callback(&event_xml("wkA", "T"), now() - 3600, &crypto());
        assert_eq!(post(&state, &query, body).await.0, StatusCode::UNAUTHORIZED);
        let (query, body) = callback(&event_xml("wkA", "T"), now() + 3600, &crypto());
        assert_eq!(post(&state, &query, body).await.0, StatusCode::UNAUTHORIZED);
        assert!(state.pullers().slot("wkA").is_none());
        assert_eq!(state.metrics().callbacks(CallbackResult::Stale), 2);
        // Inside the window a replay is answered 200 and does nothing.
        let (query, body) = callback(&event_xml("wkA", "T"), now(), &crypto());
        assert_eq!(post(&state, &query, body.clone()).await.0, StatusCode::OK);
        assert_eq!(post(&state, &query, body).await.0, StatusCode::OK);
        assert_eq!(state.pullers().accounts(), vec![OpenKfId::from("wkA")]);
        assert_eq!(state.pullers().slot("wkA").unwrap().wakes(), 1);
        assert_eq!(state.metrics().callbacks(CallbackResult::Replayed), 1);
    }

    #[tokio::test]
    async fn a_replayed_callback_is_answered_200_without_a_wake_however_often_it_comes() {
        let state = state();
        let (query, body) = callback(&event_xml("wkA", "T1"), now(), &crypto());
        for _ in 0..1000 {
            let (status, text) = post(&state, &query, body.clone()).await;
            assert_eq!((status, text.as_str()), (StatusCode::OK, "success"));
        }
        assert_eq!(state.pullers().slot("wkA").unwrap().wakes(), 1);
        assert_eq!(state.metrics().callbacks(CallbackResult::Replayed), 999);
        assert_eq!(state.metrics().callbacks(CallbackResult::Accepted), 1);
        // Another callback (other content, so another signature) is not a replay.
        let (query, body) = callback(&event_xml("wkA", "T2"), now(), &crypto());
        assert_eq!(post(&state, &query, body).await.0, StatusCode::OK);
        assert_eq!(state.pullers().slot("wkA").unwrap().wakes(), 2);
    }

    #[tokio::test]
    async fn signed_callbacks_naming_oversized_or_hostile_ids_get_400_and_wake_nothing() {
        let state = state();
        // (30,000 characters would not fit this state's 4 KiB body limit.)
        for id in [
            "w".repeat(2_000),
            "../../etc/passwd; DROP TABLE cursors;--".to_owned(),
            "wk\nERROR forged".to_owned(),
        ] {
            let (query, body) = callback(&event_xml(&id, "T"), now(), &crypto());
            let (status, text) = post(&state, &query, body).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{}",
                &id[..id.len().min(40)]
            );
            assert_eq!(text, "invalid id in the callback\n");
        }
        let (query, body) = callback(&event_xml("wkA", &"T".repeat(1000)), now(), &crypto());
        assert_eq!(post(&state, &query, body).await.0, StatusCode::BAD_REQUEST);
        assert!(state.pullers().accounts().is_empty());
        assert_eq!(state.metrics().callbacks(CallbackResult::Malformed), 4);
    }

    #[tokio::test]
    async fn oversized_bodies_get_413() {
        let state = state();
        let (query, _) = callback(&event_xml("wkA", "T"), now(), &crypto());
        let (status, _) = post(&state, &query, "x".repeat(5000)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(state.metrics().callbacks(CallbackResult::TooLarge), 1);
    }

    #[tokio::test]
    async fn truncated_garbage_and_malformed_bodies_get_400() {
        let state = state();
        let (query, body) = callback(&event_xml("wkA", "T"), now(), &crypto());
        let truncated = body[..body.len() / 2].to_owned();
        assert_eq!(
            post(&state, &query, truncated).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&state, &query, "garbage").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&state, &query, vec![0xffu8, 0xfe, 0x00]).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&state, "timestamp=1", body.clone()).await.0,
            StatusCode::BAD_REQUEST
        );
        // Valid signature over garbage ciphertext.
        let ts = now().to_string();
        let sig = crypto().sign(&ts, "1", "AAAA");
        let query = format!("msg_signature={sig}&timestamp={ts}&nonce=1");
        let body = "<xml><Encrypt><![CDATA[AAAA]]></Encrypt></xml>";
        assert_eq!(post(&state, &query, body).await.0, StatusCode::BAD_REQUEST);
        // A well-encrypted callback whose inner XML is not an event.
        let (query, body) = callback("not xml at all", now(), &crypto());
        assert_eq!(post(&state, &query, body).await.0, StatusCode::BAD_REQUEST);
        assert!(state.pullers().accounts().is_empty());
    }

    #[tokio::test]
    async fn a_callback_for_another_corp_is_refused() {
        let state = state();
        let other = CallbackCrypto::new(TOKEN, KEY, "wwOTHERCORP").unwrap();
        let (query, body) = callback(&event_xml("wkA", "T"), now(), &other);
        assert_eq!(post(&state, &query, body).await.0, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn concurrent_distinct_callbacks_coalesce_into_one_pending_pull() {
        let state = state();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let (query, body) = callback(&event_xml("wkA", &format!("T{i}")), now(), &crypto());
                post(&state, &query, body).await.0
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), StatusCode::OK);
        }
        let slot = state.pullers().slot("wkA").unwrap();
        assert_eq!(slot.wakes(), 50);
        assert_eq!(state.pullers().accounts().len(), 1);
    }
}
