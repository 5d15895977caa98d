//! Replies: the reply API (`/v1/*`, bearer token, synchronous: WeChat's answer or a clear error)
//! and the sender of queued replies (from webhook responses and the echo bot), which retries
//! transient failures with backoff and keeps each customer's replies in order.
//!
//! Reply-API errors are JSON: `{"error": "...", "retryable": bool}` plus `errcode`/`errmsg` when
//! WeChat answered. Status: 400 invalid request, 401 missing or wrong token, 403 reply API
//! disabled, 409 the same msgid is being sent right now, 422 WeChat refused (e.g. 95001), 502
//! WeChat unreachable or answering garbage, 503 WeChat busy (-1, 45009, 45033; retry later).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, watch};
use wechat_kf::client::{Client, ErrCode, ServiceState, TransServiceStateRequest};

use crate::app::AppState;
use crate::metrics::Metrics;
use crate::outbound::{parse_on_event, parse_send_msg};
use crate::retry::{backoff, jitter, now_ms};
use crate::service::stopped;
use crate::store::{ReplyEndpoint, ReplyOutcome, ReplyRecord, Store};

/// Attempts after which a queued reply is given up (WeChat's 48-hour window closes anyway).
const MAX_REPLY_ATTEMPTS: u32 = 12;

fn error_json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error_json(
        StatusCode::BAD_REQUEST,
        json!({"error": message.into(), "retryable": false}),
    )
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(expected) = &state.inner.api_token else {
        return Err(Box::new(error_json(
            StatusCode::FORBIDDEN,
            json!({"error": "the reply API is disabled: set api.token (or WECHAT_KF_API_TOKEN)", "retryable": false}),
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) && !given.is_empty() {
        return Ok(());
    }
    let mut response = error_json(
        StatusCode::UNAUTHORIZED,
        json!({"error": "missing or wrong bearer token", "retryable": false}),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(response))
}

/// The response for a failed API call.
pub(crate) fn api_error_response(error: &wechat_kf::client::Error) -> Response {
    use wechat_kf::client::Error as E;
    let retryable = error.is_retryable();
    match error {
        E::Validation(v) => error_json(
            StatusCode::BAD_REQUEST,
            json!({"error": error.to_string(), "field": v.field, "retryable": false}),
        ),
        E::Api { code, errmsg, .. } => error_json(
            if retryable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            },
            json!({"errcode": code.code(), "errmsg": errmsg, "error": error.to_string(), "retryable": retryable}),
        ),
        _ => error_json(
            if retryable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            },
            json!({"error": safe_error(error), "retryable": retryable}),
        ),
    }
}

/// An error's text without anything that could echo message content (a decode error's serde
/// message may quote a value).
pub(crate) fn safe_error(error: &wechat_kf::client::Error) -> String {
    match error {
        wechat_kf::client::Error::Decode { endpoint, .. } => {
            format!("{endpoint}: cannot decode the response")
        }
        other => other.to_string(),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(bad_request(format!("the body is not JSON: {e}"))))
}

fn client(state: &AppState) -> Result<&Client, Box<Response>> {
    state.inner.client.as_ref().ok_or_else(|| {
        Box::new(error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no API client configured", "retryable": false}),
        ))
    })
}

/// Claims a msgid for one request at a time; released on drop.
struct InFlight<'a> {
    state: &'a AppState,
    key: String,
}

impl<'a> InFlight<'a> {
    fn claim(state: &'a AppState, key: String) -> Option<Self> {
        let mut set = state
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        set.insert(key.clone()).then_some(InFlight { state, key })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// Sends through `send` with idempotency on `(key, msgid)` when the caller chose the msgid: a
/// repeat of a successful request gets the stored answer (header `Idempotent-Replay: true`)
/// instead of a second message.
async fn idempotent_send<F, Fut>(
    state: &AppState,
    endpoint: &'static str,
    key: String,
    msgid: Option<String>,
    send: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<
            Output = Result<wechat_kf::client::SendMsgResponse, wechat_kf::client::Error>,
        >,
{
    let metrics = &state.inner.metrics;
    let store = match &msgid {
        Some(_) => state.inner.store.clone(),
        None => None,
    };
    let msgid = msgid.unwrap_or_default();
    if let Some(store) = &store {
        match store.api_send(key.clone(), msgid.clone()).await {
            Ok(Some(stored)) => {
                Metrics::add(&metrics.api_requests_ok, 1);
                let mut response = (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    stored,
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replay", HeaderValue::from_static("true"));
                return response;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency lookup failed; sending anyway"),
        }
    }
    let claim = match &store {
        Some(_) => InFlight::claim(state, format!("{key}\u{0}{msgid}")).map(Some),
        None => Some(None),
    };
    let Some(_claim) = claim else {
        Metrics::add(&metrics.api_requests_failed, 1);
        return error_json(
            StatusCode::CONFLICT,
            json!({"error": "a request with this msgid is in progress", "retryable": true}),
        );
    };
    match send().await {
        Ok(sent) => {
            Metrics::add(&metrics.api_requests_ok, 1);
            let body =
                json!({"errcode": 0, "errmsg": "ok", "msgid": sent.msgid.as_str()}).to_string();
            if let Some(store) = &store {
                if let Err(e) = store
                    .record_api_send(key, msgid, body.clone(), now_ms())
                    .await
                {
                    tracing::warn!(error = %e, "cannot record the send for idempotency");
                }
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(e) => {
            Metrics::add(&metrics.api_requests_failed, 1);
            metrics.api_error(endpoint, &e);
            tracing::info!(endpoint, error = %safe_error(&e), "reply API send failed");
            api_error_response(&e)
        }
    }
}

/// `POST /v1/messages`: a `send_msg` body.
pub(crate) async fn send_msg(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        Metrics::add(&state.inner.metrics.api_requests_failed, 1);
        return *r;
    }
    let client = match client(&state) {
        Ok(c) => c.clone(),
        Err(r) => return *r,
    };
    let value = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let parsed = match parse_send_msg(&value) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let key = format!("send_msg:{}", parsed.open_kfid);
    let request = parsed.request;
    let msgid = parsed.caller_msgid.then_some(parsed.msgid);
    idempotent_send(&state, "kf/send_msg", key, msgid, move || async move {
        client.messages().send(request).await
    })
    .await
}

/// `POST /v1/messages/on_event`: a `send_msg_on_event` body.
pub(crate) async fn send_msg_on_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        Metrics::add(&state.inner.metrics.api_requests_failed, 1);
        return *r;
    }
    let client = match client(&state) {
        Ok(c) => c.clone(),
        Err(r) => return *r,
    };
    let value = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let parsed = match parse_on_event(&value) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let key = format!("on_event:{}", parsed.code);
    let request = parsed.request;
    let msgid = parsed.caller_msgid.then_some(parsed.msgid);
    idempotent_send(
        &state,
        "kf/send_msg_on_event",
        key,
        msgid,
        move || async move { client.messages().send_on_event(request).await },
    )
    .await
}

/// `POST /v1/service_state/trans`: `{"open_kfid","external_userid","service_state","servicer_userid"?}`.
pub(crate) async fn trans(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        Metrics::add(&state.inner.metrics.api_requests_failed, 1);
        return *r;
    }
    let client = match client(&state) {
        Ok(c) => c.clone(),
        Err(r) => return *r,
    };
    let value = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(open_kfid), Some(external_userid)) = (text("open_kfid"), text("external_userid"))
    else {
        return bad_request("open_kfid and external_userid are required");
    };
    let Some(target) = value
        .get("service_state")
        .and_then(Value::as_u64)
        .and_then(|s| u32::try_from(s).ok())
    else {
        return bad_request("service_state (0-4) is required");
    };
    let mut request =
        TransServiceStateRequest::new(open_kfid, external_userid, ServiceState::from_code(target));
    if let Some(servicer) = text("servicer_userid") {
        request = request.servicer_userid(servicer);
    }
    let metrics = &state.inner.metrics;
    match client.service_state().trans(request).await {
        Ok(code) => {
            Metrics::add(&metrics.api_requests_ok, 1);
            let mut body = json!({"errcode": 0, "errmsg": "ok"});
            if let Some(code) = code {
                body["msg_code"] = Value::String(code);
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => {
            Metrics::add(&metrics.api_requests_failed, 1);
            metrics.api_error("kf/service_state/trans", &e);
            api_error_response(&e)
        }
    }
}

/// Sends queued replies (from webhook responses and the echo bot).
pub(crate) struct ReplySender {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) concurrency: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
}

impl ReplySender {
    /// Runs until shutdown; a round in progress finishes first.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let worked = match self.round().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::error!(error = %e, "reply queue unavailable");
                    false
                }
            };
            if worked {
                continue;
            }
            let wait = match self.store.next_reply_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 60_000) as u64),
                _ => Duration::from_secs(60),
            };
            if wait.is_zero() {
                // Due now but nothing was sent: the round is already retrying; avoid a hot loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }

    /// Sends every due reply once; returns how many were attempted.
    async fn round(&self) -> Result<usize, crate::Error> {
        let due = self.store.due_replies(now_ms(), 1000).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let attempted = due.len();
        // One sequential queue per lane (customer), lanes in parallel.
        let mut lanes: BTreeMap<String, Vec<ReplyRecord>> = BTreeMap::new();
        for record in due {
            lanes.entry(record.lane.clone()).or_default().push(record);
        }
        let outcomes: Vec<Vec<ReplyOutcome>> = futures::stream::iter(lanes.into_values())
            .map(|records| self.send_lane(records))
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let outcomes: Vec<ReplyOutcome> = outcomes.into_iter().flatten().collect();
        self.store.finish_replies(outcomes, now_ms()).await?;
        Ok(attempted)
    }

    async fn send_lane(&self, records: Vec<ReplyRecord>) -> Vec<ReplyOutcome> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let outcome = self.send_one(&record).await;
            let stop = matches!(outcome, ReplyOutcome::Retry { .. });
            out.push(outcome);
            if stop {
                // Later replies to this customer wait for this one (the store delays them).
                break;
            }
        }
        out
    }

    async fn send_one(&self, record: &ReplyRecord) -> ReplyOutcome {
        let id = record.id;
        let value: Value = match serde_json::from_str(&record.body) {
            Ok(v) => v,
            Err(_) => return self.failed(id, "stored reply is not JSON".into()),
        };
        let (endpoint, result) = match record.endpoint {
            ReplyEndpoint::SendMsg => match parse_send_msg(&value) {
                Ok(p) => ("kf/send_msg", self.client.messages().send(p.request).await),
                Err(e) => return self.failed(id, e),
            },
            ReplyEndpoint::SendMsgOnEvent => match parse_on_event(&value) {
                Ok(p) => (
                    "kf/send_msg_on_event",
                    self.client.messages().send_on_event(p.request).await,
                ),
                Err(e) => return self.failed(id, e),
            },
        };
        match result {
            Ok(_) => {
                Metrics::add(&self.metrics.replies_sent, 1);
                ReplyOutcome::Sent { id }
            }
            // An earlier attempt may have reached WeChat before we lost the answer (or crashed):
            // WeChat then rejects the repeated msgid, which means the reply went out.
            Err(wechat_kf::client::Error::Api {
                code: ErrCode::InvalidParameter,
                ..
            }) if record.attempts > 0 => {
                Metrics::add(&self.metrics.replies_sent, 1);
                ReplyOutcome::Sent { id }
            }
            Err(e) => {
                self.metrics.api_error(endpoint, &e);
                let attempts = record.attempts + 1;
                if (e.is_retryable() || e.is_token_invalid()) && attempts < MAX_REPLY_ATTEMPTS {
                    Metrics::add(&self.metrics.reply_retries, 1);
                    let delay = backoff(attempts, self.retry_initial, self.retry_max, jitter());
                    tracing::warn!(reply = id, endpoint, error = %safe_error(&e), "reply failed; will retry");
                    ReplyOutcome::Retry {
                        id,
                        lane: record.lane.clone(),
                        attempts,
                        next_attempt_at_ms: now_ms() + delay.as_millis() as i64,
                        error: safe_error(&e),
                    }
                } else {
                    tracing::warn!(reply = id, endpoint, error = %safe_error(&e), "reply failed for good");
                    self.failed(id, safe_error(&e))
                }
            }
        }
    }

    fn failed(&self, id: i64, error: String) -> ReplyOutcome {
        Metrics::add(&self.metrics.replies_failed, 1);
        ReplyOutcome::Failed { id, error }
    }
}
