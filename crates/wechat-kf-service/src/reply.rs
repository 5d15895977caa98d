//! Replies: the reply API (`/v1/*`, bearer token, synchronous: WeChat's answer or a clear error)
//! and the sender of queued replies (from webhook responses and the echo bot), which retries
//! transient failures with backoff and keeps each customer's replies in order.
//!
//! Every `send_msg` goes through the [`Gate`]: a send the customer's session view refuses (a
//! human servicer holds the session, the 48-hour window closed, the 5-message quota is spent) is
//! not made. The reply API then answers 409 `{"error":"send_refused","reason",…}`; a webhook
//! reply gets a `refused` result, reported in the next webhook body (`reply_results`).
//!
//! Reply-API errors are JSON: `{"error": "...", "retryable": bool}` plus `errcode`/`errmsg` when
//! WeChat answered. Status: 400 invalid request, 401 missing or wrong token, 403 reply API
//! disabled, 409 `send_refused` (or the same msgid is being sent right now), 422 WeChat refused
//! for another reason, 502 WeChat unreachable or answering garbage, 503 WeChat busy (-1, 45009,
//! 45033; retry later).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, watch};
use wechat_kf::client::messages::{SendMsgOnEventRequest, SendMsgRequest};
use wechat_kf::client::outbound::OutboundMessage;
use wechat_kf::client::service_state::TransServiceStateRequest;
use wechat_kf::client::{Client, ErrCode};
use wechat_kf::session::ServiceState;

use crate::app::AppState;
use crate::config::JoinerConfig;
use crate::metrics::Metrics;
use crate::outbound::{
    OnEvent, ReplyOrigin, SendMsg, Transfer, parse_on_event, parse_send_msg, parse_transfer,
    result_head,
};
use crate::retry::{backoff, jitter, now_ms};
use crate::sending::{Gate, SendOutcome, refusal_json, view_json};
use crate::service::stopped;
use crate::store::{ReplyEndpoint, ReplyOutcome, ReplyRecord, ReplyState, SessionUpdate, Store};

/// Longest text WeChat accepts (bytes); the joiner never merges beyond it.
const MAX_TEXT_BYTES: usize = 2048;

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

/// Whether a failed retry means an earlier attempt went out: it may have reached WeChat
/// before we lost the answer (or crashed), and WeChat rejects the repeated msgid (or the
/// already used code) with 40035.
fn sent_by_an_earlier_attempt(error: &wechat_kf::client::Error, attempts: u32) -> bool {
    attempts > 0
        && matches!(
            error,
            wechat_kf::client::Error::Api {
                code: ErrCode::InvalidParameter,
                ..
            }
        )
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

/// Checks the bearer token, counting a refusal in the metrics.
fn authorize_counted(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    authorize(state, headers).inspect_err(|_| {
        Metrics::add(&state.inner.metrics.api_requests_failed, 1);
    })
}

/// What every body-carrying `/v1` handler does first: authorize, find the client, parse JSON.
fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Client, Value), Box<Response>> {
    authorize_counted(state, headers)?;
    let client = client(state)?.clone();
    Ok((client, parse_body(body)?))
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

/// The 409 answer for a refused send.
fn refused_response(
    refusal: &wechat_kf::session::SendRefusal,
    predicted: bool,
    errmsg: Option<&str>,
) -> Response {
    error_json(
        StatusCode::CONFLICT,
        Value::Object(refusal_json(refusal, predicted, errmsg)),
    )
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
    Fut: std::future::Future<Output = SendOutcome>,
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
        SendOutcome::Sent(sent) => {
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
        SendOutcome::Refused {
            refusal,
            predicted,
            errmsg,
        } => {
            Metrics::add(&metrics.api_requests_failed, 1);
            tracing::info!(
                endpoint,
                reason = crate::sending::reason(&refusal),
                predicted,
                "reply API send refused"
            );
            refused_response(&refusal, predicted, errmsg.as_deref())
        }
        SendOutcome::Failed(e) => {
            // Its errcode was counted where WeChat answered (the gate, or `ungated`).
            Metrics::add(&metrics.api_requests_failed, 1);
            tracing::info!(endpoint, error = %safe_error(&e), "reply API send failed");
            api_error_response(&e)
        }
    }
}

/// A send without the gate (`send_msg_on_event`, or an [`AppState`] built without one):
/// WeChat decides alone.
fn ungated(
    metrics: &Metrics,
    endpoint: &'static str,
    result: Result<wechat_kf::client::messages::SendMsgResponse, wechat_kf::client::Error>,
) -> SendOutcome {
    match result {
        Ok(sent) => SendOutcome::Sent(sent),
        Err(e) => {
            metrics.api_error(endpoint, &e);
            SendOutcome::Failed(e)
        }
    }
}

/// `POST /v1/messages`: a `send_msg` body.
pub(crate) async fn send_msg(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (client, value) = match accept(&state, &headers, &body) {
        Ok(accepted) => accepted,
        Err(r) => return *r,
    };
    let parsed = match parse_send_msg(&value) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let key = format!("send_msg:{}", parsed.open_kfid);
    let SendMsg {
        request,
        open_kfid,
        touser,
        msgid,
        caller_msgid,
    } = parsed;
    let msgid = caller_msgid.then_some(msgid);
    let gate = state.inner.gate.clone();
    let metrics = state.inner.metrics.clone();
    idempotent_send(&state, "kf/send_msg", key, msgid, move || async move {
        match gate {
            Some(gate) => gate.send(&open_kfid, &touser, request).await,
            None => ungated(
                &metrics,
                "kf/send_msg",
                client.messages().send(request).await,
            ),
        }
    })
    .await
}

/// `POST /v1/messages/on_event`: a `send_msg_on_event` body.
pub(crate) async fn send_msg_on_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (client, value) = match accept(&state, &headers, &body) {
        Ok(accepted) => accepted,
        Err(r) => return *r,
    };
    let parsed = match parse_on_event(&value) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let key = format!("on_event:{}", parsed.code);
    let request = parsed.request;
    let msgid = parsed.caller_msgid.then_some(parsed.msgid);
    let metrics = state.inner.metrics.clone();
    idempotent_send(
        &state,
        "kf/send_msg_on_event",
        key,
        msgid,
        move || async move {
            ungated(
                &metrics,
                "kf/send_msg_on_event",
                client.messages().send_on_event(request).await,
            )
        },
    )
    .await
}

/// `POST /v1/service_state/trans`: `{"open_kfid","external_userid","service_state","servicer_userid"?,
/// "message"?}` (a `{"action":"transfer",…}` body works too). The customer's session view
/// learns the new state, so later bot replies are refused while a human holds the session.
pub(crate) async fn trans(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (client, value) = match accept(&state, &headers, &body) {
        Ok(accepted) => accepted,
        Err(r) => return *r,
    };
    let transfer = match parse_transfer(&value) {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let metrics = &state.inner.metrics;
    match transfer_and_greet(
        &client,
        state.inner.gate.as_deref(),
        metrics,
        &transfer,
        "bot",
    )
    .await
    {
        Ok(done) => {
            Metrics::add(&metrics.api_requests_ok, 1);
            let mut body = json!({"errcode": 0, "errmsg": "ok"});
            if let Some(code) = done.msg_code {
                body["msg_code"] = Value::String(code);
            }
            if transfer.message.is_some() {
                body["message_sent"] = Value::Bool(done.message_sent);
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => {
            Metrics::add(&metrics.api_requests_failed, 1);
            api_error_response(&e)
        }
    }
}

/// `GET /v1/sessions/{open_kfid}/{external_userid}`: what the service knows about a customer's
/// session and whether a send would be allowed now (`can_send`, `remaining`, or `refusal`).
pub(crate) async fn session(
    State(state): State<AppState>,
    Path((open_kfid, external_userid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize_counted(&state, &headers) {
        return *r;
    }
    let Some(gate) = &state.inner.gate else {
        return error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no session tracking configured", "retryable": false}),
        );
    };
    let view = gate.view(&open_kfid, &external_userid).await;
    let mut body = view_json(view.as_ref(), gate.clock.now_u64());
    body["open_kfid"] = json!(open_kfid);
    body["external_userid"] = json!(external_userid);
    Metrics::add(&state.inner.metrics.api_requests_ok, 1);
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// What a transfer did.
pub(crate) struct Transferred {
    /// The code WeChat returned (unless it was used for `message`).
    pub(crate) msg_code: Option<String>,
    /// Whether `message` went out with the code.
    pub(crate) message_sent: bool,
}

/// `service_state/trans`, then the view learns the state, then (with `message` and a code) the
/// queue / connect text goes out with `send_msg_on_event`.
pub(crate) async fn transfer_and_greet(
    client: &Client,
    gate: Option<&Gate>,
    metrics: &Metrics,
    transfer: &Transfer,
    trigger: &'static str,
) -> Result<Transferred, wechat_kf::client::Error> {
    let target = ServiceState::from_code(transfer.service_state);
    let mut request = TransServiceStateRequest::new(
        transfer.open_kfid.as_str(),
        transfer.external_userid.as_str(),
        target,
    );
    if let Some(servicer) = &transfer.servicer_userid {
        request = request.servicer_userid(servicer.as_str());
    }
    let code = match client.service_state().trans(request).await {
        Ok(code) => code,
        Err(e) => {
            metrics.api_error("kf/service_state/trans", &e);
            metrics.handoff(trigger, "failed");
            return Err(e);
        }
    };
    metrics.handoff(trigger, "ok");
    tracing::info!(
        open_kfid = transfer.open_kfid,
        service_state = transfer.service_state,
        trigger,
        "session transferred"
    );
    if let Some(gate) = gate {
        gate.transferred(
            &transfer.open_kfid,
            &transfer.external_userid,
            target,
            transfer.servicer_userid.clone(),
            code.clone(),
        )
        .await;
    }
    let (Some(message), Some(code_value)) = (&transfer.message, &code) else {
        return Ok(Transferred {
            msg_code: code,
            message_sent: false,
        });
    };
    let request =
        SendMsgOnEventRequest::new(code_value.as_str(), OutboundMessage::text(message.as_str()));
    match client.messages().send_on_event(request).await {
        Ok(_) => {
            if let Some(gate) = gate {
                let at = gate.clock.now_u64();
                gate.update(
                    &transfer.open_kfid,
                    &transfer.external_userid,
                    SessionUpdate::CodeUsed {
                        code: code_value.clone(),
                        at,
                    },
                )
                .await;
            }
            Ok(Transferred {
                msg_code: None,
                message_sent: true,
            })
        }
        Err(e) => {
            metrics.api_error("kf/send_msg_on_event", &e);
            tracing::warn!(error = %safe_error(&e), "the transfer's message could not be sent");
            Ok(Transferred {
                msg_code: code,
                message_sent: false,
            })
        }
    }
}

/// Sends queued replies (webhook responses, the echo bot, handoffs).
pub(crate) struct ReplySender {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) joiner: JoinerConfig,
    pub(crate) wake: Arc<Notify>,
    pub(crate) concurrency: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
}

/// A queued reply read back.
enum Parsed {
    Send(SendMsg),
    OnEvent(OnEvent),
    Trans(Transfer, &'static str),
    Bad(String),
}

fn parse_record(record: &ReplyRecord) -> Parsed {
    let value: Value = match serde_json::from_str(&record.body) {
        Ok(v) => v,
        Err(_) => return Parsed::Bad("stored reply is not JSON".into()),
    };
    match record.endpoint {
        ReplyEndpoint::SendMsg => match parse_send_msg(&value) {
            Ok(p) => Parsed::Send(p),
            Err(e) => Parsed::Bad(e),
        },
        ReplyEndpoint::SendMsgOnEvent => match parse_on_event(&value) {
            Ok(p) => Parsed::OnEvent(p),
            Err(e) => Parsed::Bad(e),
        },
        ReplyEndpoint::Trans => match parse_transfer(&value) {
            Ok(t) => {
                let trigger = if value.get("trigger").and_then(Value::as_str) == Some("keyword") {
                    "keyword"
                } else {
                    "bot"
                };
                Parsed::Trans(t, trigger)
            }
            Err(e) => Parsed::Bad(e),
        },
    }
}

fn text_of(send: &SendMsg) -> Option<&str> {
    match send.request.message() {
        OutboundMessage::Text(text) => Some(text.content.as_str()),
        _ => None,
    }
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
        let mut items: Vec<(ReplyRecord, Parsed)> = records
            .into_iter()
            .map(|r| {
                let parsed = parse_record(&r);
                (r, parsed)
            })
            .collect::<Vec<_>>();
        items.reverse();
        while let Some((record, parsed)) = items.pop() {
            let outcomes = match parsed {
                Parsed::Bad(error) => vec![self.failed(&record, error, None)],
                Parsed::OnEvent(event) => vec![self.send_on_event(&record, event).await],
                Parsed::Trans(transfer, trigger) => {
                    vec![self.transfer(&record, &transfer, trigger).await]
                }
                Parsed::Send(send) => {
                    let mut group = vec![(record, send)];
                    if self.joiner.enabled {
                        if let Some(first) = text_of(&group[0].1) {
                            let mut total = first.len();
                            while let Some((next, Parsed::Send(next_send))) = items.last() {
                                let same = next_send.open_kfid == group[0].1.open_kfid
                                    && next_send.touser == group[0].1.touser
                                    && next.attempts == 0;
                                let fits = text_of(next_send)
                                    .is_some_and(|t| total + 1 + t.len() <= MAX_TEXT_BYTES);
                                if !(same && fits) {
                                    break;
                                }
                                total += 1 + text_of(next_send).map_or(0, str::len);
                                if let Some((next, Parsed::Send(next_send))) = items.pop() {
                                    group.push((next, next_send));
                                }
                            }
                        }
                    }
                    self.send_group(group).await
                }
            };
            let stop = outcomes
                .iter()
                .any(|o| matches!(o, ReplyOutcome::Retry { .. }));
            out.extend(outcomes);
            if stop {
                // Later replies to this customer wait for this one (the store delays them).
                break;
            }
        }
        out
    }

    /// Sends one reply, or several texts joined into one message.
    async fn send_group(&self, group: Vec<(ReplyRecord, SendMsg)>) -> Vec<ReplyOutcome> {
        let (first_record, first) = &group[0];
        let open_kfid = first.open_kfid.clone();
        let touser = first.touser.clone();
        let (request, merged_body) = if group.len() == 1 {
            (first.request.clone(), None)
        } else {
            let content: Vec<&str> = group.iter().filter_map(|(_, s)| text_of(s)).collect();
            let content = content.join("\n");
            let body = json!({"touser": touser, "open_kfid": open_kfid, "msgid": first.msgid,
                              "msgtype": "text", "text": {"content": content}});
            let request = SendMsgRequest::new(
                touser.as_str(),
                open_kfid.as_str(),
                OutboundMessage::text(content),
            )
            .msgid(first.msgid.as_str());
            (request, Some(body.to_string()))
        };
        let outcome = self.gate.send(&open_kfid, &touser, request).await;
        let joined_into = first.msgid.clone();
        let result = |record: &ReplyRecord, send: &SendMsg, status: &str| {
            let mut r = result_head(
                ReplyOrigin {
                    delivery_id: record.delivery_id.as_deref(),
                    position: record.position,
                },
                Some(&send.msgid),
            );
            r.insert("open_kfid".into(), json!(send.open_kfid));
            r.insert("touser".into(), json!(send.touser));
            r.insert("status".into(), json!(status));
            if record.id != first_record.id {
                r.insert("joined_into".into(), json!(joined_into));
            }
            r
        };
        let finished = |record: &ReplyRecord,
                        state: ReplyState,
                        error: Option<String>,
                        r: serde_json::Map<String, Value>| {
            ReplyOutcome::Finished {
                id: record.id,
                state: if record.id == first_record.id {
                    state
                } else {
                    ReplyState::Joined
                },
                error,
                result: Some(Value::Object(r).to_string()),
            }
        };
        let sent = |this: &Self| {
            Metrics::add(&this.metrics.replies_sent, 1);
            Metrics::add(&this.metrics.replies_joined, group.len() as u64 - 1);
            group
                .iter()
                .map(|(record, send)| {
                    finished(record, ReplyState::Sent, None, result(record, send, "sent"))
                })
                .collect::<Vec<_>>()
        };
        match outcome {
            SendOutcome::Sent(_) => sent(self),
            SendOutcome::Refused {
                refusal,
                predicted,
                errmsg,
            } => {
                tracing::info!(
                    reply = first_record.id,
                    replies = group.len(),
                    reason = crate::sending::reason(&refusal),
                    predicted,
                    "reply refused by the send policy"
                );
                let details = refusal_json(&refusal, predicted, errmsg.as_deref());
                let error = format!(
                    "{} ({})",
                    crate::sending::reason(&refusal),
                    refusal.errcode()
                );
                group
                    .iter()
                    .map(|(record, send)| {
                        let mut r = result(record, send, "refused");
                        for (k, v) in &details {
                            r.insert(k.clone(), v.clone());
                        }
                        finished(record, ReplyState::Refused, Some(error.clone()), r)
                    })
                    .collect()
            }
            SendOutcome::Failed(e) if sent_by_an_earlier_attempt(&e, first_record.attempts) => {
                if self.gate.view(&open_kfid, &touser).await.is_some() {
                    let at = self.gate.clock.now_u64();
                    self.gate
                        .update(&open_kfid, &touser, SessionUpdate::Sent { at })
                        .await;
                }
                sent(self)
            }
            SendOutcome::Failed(e) => {
                let attempts = first_record.attempts + 1;
                if (e.is_retryable() || e.is_token_invalid()) && attempts < MAX_REPLY_ATTEMPTS {
                    Metrics::add(&self.metrics.reply_retries, 1);
                    let delay = backoff(attempts, self.retry_initial, self.retry_max, jitter());
                    tracing::warn!(reply = first_record.id, error = %safe_error(&e), "reply failed; will retry");
                    let mut out = vec![ReplyOutcome::Retry {
                        id: first_record.id,
                        lane: first_record.lane.clone(),
                        attempts,
                        next_attempt_at_ms: now_ms() + delay.as_millis() as i64,
                        error: safe_error(&e),
                        body: merged_body,
                    }];
                    // The joined texts now live in the first reply's body.
                    Metrics::add(&self.metrics.replies_joined, group.len() as u64 - 1);
                    for (record, send) in group.iter().skip(1) {
                        out.push(finished(
                            record,
                            ReplyState::Joined,
                            None,
                            result(record, send, "joined"),
                        ));
                    }
                    out
                } else {
                    tracing::warn!(reply = first_record.id, error = %safe_error(&e), "reply failed for good");
                    Metrics::add(&self.metrics.replies_failed, group.len() as u64);
                    group
                        .iter()
                        .map(|(record, send)| {
                            let mut r = result(record, send, "failed");
                            if let Some(code) = e.errcode() {
                                r.insert("errcode".into(), json!(code.code()));
                            }
                            r.insert("error".into(), json!(safe_error(&e)));
                            finished(record, ReplyState::Failed, Some(safe_error(&e)), r)
                        })
                        .collect()
                }
            }
        }
    }

    async fn send_on_event(&self, record: &ReplyRecord, event: OnEvent) -> ReplyOutcome {
        let result = self.client.messages().send_on_event(event.request).await;
        let mut r = result_head(
            ReplyOrigin {
                delivery_id: record.delivery_id.as_deref(),
                position: record.position,
            },
            Some(&event.msgid),
        );
        match result {
            Err(e) if !sent_by_an_earlier_attempt(&e, record.attempts) => {
                self.metrics.api_error("kf/send_msg_on_event", &e);
                self.retry_or_fail(record, e, r)
            }
            _ => {
                Metrics::add(&self.metrics.replies_sent, 1);
                r.insert("status".into(), json!("sent"));
                ReplyOutcome::Finished {
                    id: record.id,
                    state: ReplyState::Sent,
                    error: None,
                    result: Some(Value::Object(r).to_string()),
                }
            }
        }
    }

    async fn transfer(
        &self,
        record: &ReplyRecord,
        transfer: &Transfer,
        trigger: &'static str,
    ) -> ReplyOutcome {
        let mut r = result_head(
            ReplyOrigin {
                delivery_id: record.delivery_id.as_deref(),
                position: record.position,
            },
            None,
        );
        r.insert("action".into(), json!("transfer"));
        r.insert("open_kfid".into(), json!(transfer.open_kfid));
        r.insert("external_userid".into(), json!(transfer.external_userid));
        r.insert("service_state".into(), json!(transfer.service_state));
        match transfer_and_greet(
            &self.client,
            Some(&self.gate),
            &self.metrics,
            transfer,
            trigger,
        )
        .await
        {
            Ok(done) => {
                r.insert("status".into(), json!("done"));
                if let Some(code) = done.msg_code {
                    r.insert("msg_code".into(), json!(code));
                }
                if transfer.message.is_some() {
                    r.insert("message_sent".into(), json!(done.message_sent));
                }
                ReplyOutcome::Finished {
                    id: record.id,
                    state: ReplyState::Sent,
                    error: None,
                    result: Some(Value::Object(r).to_string()),
                }
            }
            Err(e) => self.retry_or_fail(record, e, r),
        }
    }

    fn retry_or_fail(
        &self,
        record: &ReplyRecord,
        e: wechat_kf::client::Error,
        mut r: serde_json::Map<String, Value>,
    ) -> ReplyOutcome {
        let attempts = record.attempts + 1;
        if (e.is_retryable() || e.is_token_invalid()) && attempts < MAX_REPLY_ATTEMPTS {
            Metrics::add(&self.metrics.reply_retries, 1);
            let delay = backoff(attempts, self.retry_initial, self.retry_max, jitter());
            tracing::warn!(reply = record.id, endpoint = record.endpoint.as_str(), error = %safe_error(&e), "reply failed; will retry");
            ReplyOutcome::Retry {
                id: record.id,
                lane: record.lane.clone(),
                attempts,
                next_attempt_at_ms: now_ms() + delay.as_millis() as i64,
                error: safe_error(&e),
                body: None,
            }
        } else {
            tracing::warn!(reply = record.id, endpoint = record.endpoint.as_str(), error = %safe_error(&e), "reply failed for good");
            if let Some(code) = e.errcode() {
                r.insert("errcode".into(), json!(code.code()));
            }
            self.failed(record, safe_error(&e), Some(r))
        }
    }

    fn failed(
        &self,
        record: &ReplyRecord,
        error: String,
        result: Option<serde_json::Map<String, Value>>,
    ) -> ReplyOutcome {
        Metrics::add(&self.metrics.replies_failed, 1);
        let mut r = result.unwrap_or_else(|| {
            result_head(
                ReplyOrigin {
                    delivery_id: record.delivery_id.as_deref(),
                    position: record.position,
                },
                Some(&record.msgid),
            )
        });
        r.insert("status".into(), json!("failed"));
        r.insert("error".into(), json!(error));
        ReplyOutcome::Finished {
            id: record.id,
            state: ReplyState::Failed,
            error: Some(error),
            result: Some(Value::Object(r).to_string()),
        }
    }
}
