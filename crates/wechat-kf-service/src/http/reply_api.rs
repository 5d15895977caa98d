//! The reply API (`/v1/*`): the bot's synchronous way to send, answered with WeChat's result
//! or a clear error ([`ApiError`]).
//!
//! Every `send_msg` goes through the [`Gate`]: a send the customer's session view refuses (a
//! human servicer holds the session, the 48-hour window closed, the 5-message quota is spent) is
//! not made and the answer is 409 with the refusal. Status: 400 invalid request, 401 missing or
//! wrong token, 403 reply API disabled, 409 `send_refused` (or the same msgid is being sent
//! right now, or `idempotency_mismatch`: it was sent before with another body or recipient),
//! 408 the body did not arrive within `http.read_timeout`, 413 body too large, 422 WeChat
//! refused for another reason, 502 WeChat unreachable or answering garbage, 503 WeChat busy
//! (-1, 45009, 45033; retry later). Ids (`open_kfid`, `touser`, `external_userid`,
//! `servicer_userid`, path parameters) are checked against WeChat's shapes first (400 with
//! `field`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use wechat_kf::client::Client;
use wechat_kf::{ExternalUserId, MsgId, OpenKfId};

use super::auth::{Authorized, BearerToken};
use super::bodies::{
    DeliveryList, JsonBody, ListParams, MessageList, OnEventBody, SendList, SendMsgBody, SentBody,
    SessionBody, TransBody, TransDone,
};
use super::error::{ApiError, ConflictBody, ErrorBody, counted};
use crate::config::Secret;
use crate::conversation::Conversations;
use crate::delivery::{Action, ActionResult, DeliveryControl};
use crate::error::safe_error;
use crate::ids::{IdKind, check};
use crate::metrics::Metrics;
use crate::replies::SendMsg;
use crate::send_policy::{Gate, Refusal, SendOutcome};
use crate::sender::{Recorder, transfer_and_greet};
use crate::store::{ApiSend, FinishedReply, ReplyEndpoint, ReplyState, Store};
use serde::Serialize;
use utoipa::ToSchema;

/// Largest reply-API request body.
const MAX_API_BODY: usize = 1024 * 1024;

/// The header marking an answer replayed from the record of an earlier request.
const REPLAY_HEADER: &str = "idempotent-replay";

/// What the reply-API handlers use: its token is configured. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ReplyApiState {
    inner: Arc<Inner>,
}

struct Inner {
    token: Secret,
    client: Client,
    store: Arc<dyn Store>,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    /// The stage messages of transfers.
    conversations: Arc<Conversations>,
    /// The session changes of transfers.
    recorder: Arc<Recorder>,
    /// Msgids being sent right now (a concurrent duplicate gets 409).
    in_flight: Mutex<HashSet<String>>,
    /// Retry now / give up.
    deliveries: DeliveryControl,
    /// Where downloaded media are (`media.download_dir`), the only files served.
    media_dir: Option<std::path::PathBuf>,
}

impl BearerToken for ReplyApiState {
    fn bearer_token(&self) -> &Secret {
        &self.inner.token
    }

    fn auth_metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// What the reply API is built from.
pub(crate) struct ReplyApiParts {
    pub(crate) token: Secret,
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) conversations: Arc<Conversations>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) deliveries: DeliveryControl,
    pub(crate) media_dir: Option<std::path::PathBuf>,
}

impl ReplyApiState {
    pub(crate) fn new(parts: ReplyApiParts) -> Self {
        let ReplyApiParts {
            token,
            client,
            store,
            gate,
            metrics,
            conversations,
            recorder,
            deliveries,
            media_dir,
        } = parts;
        ReplyApiState {
            inner: Arc::new(Inner {
                token,
                client,
                store,
                gate,
                metrics,
                conversations,
                recorder,
                in_flight: Mutex::new(HashSet::new()),
                deliveries,
                media_dir,
            }),
        }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The send policy.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.inner.gate
    }

    /// The metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
}

/// The reply API's routes.
pub(crate) fn routes(state: ReplyApiState) -> Router {
    Router::new()
        .route("/v1/messages", post(send_msg).get(list_messages))
        .route("/v1/messages/on_event", post(send_msg_on_event))
        .route("/v1/service_state/trans", post(trans))
        .route("/v1/sessions/{open_kfid}/{external_userid}", get(session))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/sends", get(list_sends))
        .route("/v1/deliveries/{id}/retry", post(retry_delivery))
        .route("/v1/deliveries/{id}/give_up", post(give_up_delivery))
        .route("/v1/contact_ways", post(add_contact_way))
        .route("/v1/media/{open_kfid}/{msgid}", get(media_file))
        .route(
            "/v1/messages/{open_kfid}/{msgid}/replay",
            post(replay_message),
        )
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(state)
}

/// The same routes when no token is configured: every request is answered 403 (and counted
/// as failed), so a bot sees why rather than a 404.
pub(crate) fn disabled_routes(metrics: Arc<Metrics>) -> Router {
    async fn disabled(State(metrics): State<Arc<Metrics>>) -> ApiError {
        Metrics::add(&metrics.api_requests_failed, 1);
        ApiError::Disabled
    }
    Router::new()
        .route("/v1/messages", post(disabled).get(disabled))
        .route("/v1/messages/on_event", post(disabled))
        .route("/v1/service_state/trans", post(disabled))
        .route("/v1/sessions/{open_kfid}/{external_userid}", get(disabled))
        .route("/v1/deliveries", get(disabled))
        .route("/v1/sends", get(disabled))
        .route("/v1/deliveries/{id}/retry", post(disabled))
        .route("/v1/deliveries/{id}/give_up", post(disabled))
        .route("/v1/contact_ways", post(disabled))
        .route("/v1/media/{open_kfid}/{msgid}", get(disabled))
        .route("/v1/messages/{open_kfid}/{msgid}/replay", post(disabled))
        .route("/v1/setup", get(disabled))
        .route("/v1/accounts", get(disabled))
        .route("/v1/conversations", get(disabled))
        .route(
            "/v1/conversations/{open_kfid}/{external_userid}",
            get(disabled),
        )
        .with_state(metrics)
}

/// Claims a msgid for one request at a time; released on drop.
struct InFlight<'a> {
    state: &'a ReplyApiState,
    key: String,
}

impl<'a> InFlight<'a> {
    fn claim(state: &'a ReplyApiState, key: String) -> Option<Self> {
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

/// A send's answer: WeChat accepted it now, or earlier (the stored answer of a request with
/// the same msgid, header `Idempotent-Replay: true`).
#[derive(Debug)]
pub(crate) enum Sent {
    /// Sent by this request.
    Now(SentBody),
    /// Sent by an earlier request: its stored answer, as it was.
    Replayed(String),
}

impl IntoResponse for Sent {
    fn into_response(self) -> Response {
        match self {
            Sent::Now(body) => (StatusCode::OK, Json(body)).into_response(),
            Sent::Replayed(stored) => (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (
                        header::HeaderName::from_static(REPLAY_HEADER),
                        HeaderValue::from_static("true"),
                    ),
                ],
                stored,
            )
                .into_response(),
        }
    }
}

/// Checks an id of a request (`field` as the caller wrote it).
pub(crate) fn valid_id(kind: IdKind, field: &'static str, value: &str) -> Result<(), ApiError> {
    check(kind, value).map_err(|message| ApiError::InvalidId {
        field,
        message: message.replacen(kind.field(), field, 1),
    })
}

/// A request's fingerprint: SHA-256 (hex) of the request as it goes to WeChat.
fn fingerprint(request: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(request).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// Sends through `send` with idempotency on `(key, msgid)` when the caller chose the msgid: a
/// repeat of a successful request gets the stored answer instead of a second message; a
/// request reusing the msgid with another body or recipient (another `fingerprint`) gets 409
/// `idempotency_mismatch`.
async fn idempotent_send<F, Fut>(
    state: &ReplyApiState,
    endpoint: &'static str,
    key: String,
    msgid: Option<MsgId>,
    fingerprint: String,
    send: F,
) -> Result<Sent, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = SendOutcome>,
{
    let metrics = &state.inner.metrics;
    let store = &state.inner.store;
    let _claim = match &msgid {
        Some(msgid) => {
            match store.api_send(key.clone(), msgid.clone()).await {
                Ok(Some(stored)) => {
                    if stored
                        .request_sha256
                        .as_ref()
                        .is_some_and(|sha| *sha != fingerprint)
                    {
                        Metrics::add(&metrics.api_requests_failed, 1);
                        tracing::info!(endpoint, "reply API msgid reused with another request");
                        return Err(ApiError::IdempotencyMismatch);
                    }
                    Metrics::add(&metrics.api_requests_ok, 1);
                    return Ok(Sent::Replayed(stored.response));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "idempotency lookup failed; sending anyway"),
            }
            let Some(claim) = InFlight::claim(state, format!("{key}\u{0}{msgid}")) else {
                Metrics::add(&metrics.api_requests_failed, 1);
                return Err(ApiError::InProgress);
            };
            Some(claim)
        }
        None => None,
    };
    match send().await {
        SendOutcome::Sent(sent) => {
            Metrics::add(&metrics.api_requests_ok, 1);
            let body = SentBody::new(sent.msgid);
            if let Some(msgid) = msgid {
                match serde_json::to_string(&body) {
                    Ok(response) => {
                        let now_ms = state.inner.gate.clock.local_ms();
                        let record = ApiSend {
                            response,
                            request_sha256: Some(fingerprint),
                        };
                        if let Err(e) = store.record_api_send(key, msgid, record, now_ms).await {
                            tracing::warn!(error = %e, "cannot record the send for idempotency");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot record the send for idempotency"),
                }
            }
            Ok(Sent::Now(body))
        }
        SendOutcome::Refused {
            refusal,
            predicted,
            errmsg,
        } => {
            Metrics::add(&metrics.api_requests_failed, 1);
            tracing::info!(
                endpoint,
                reason = crate::send_policy::reason(&refusal),
                predicted,
                "reply API send refused"
            );
            Err(ApiError::Refused(Box::new(Refusal::new(
                &refusal,
                predicted,
                errmsg.as_deref(),
            ))))
        }
        SendOutcome::Failed(e) => {
            // Its errcode was counted where WeChat answered (the gate, or `send_msg_on_event`).
            Metrics::add(&metrics.api_requests_failed, 1);
            tracing::info!(endpoint, error = %safe_error(&e), "reply API send failed");
            Err(ApiError::Api(e))
        }
    }
}

/// Records a send of the reply API or the console (`via`: `reply_api`, `console`) in its
/// customer's history with how it ended, as a finished reply of the customer's lane (best
/// effort: a store that does not answer loses the record, never the send).
pub(crate) async fn record_send(
    via: &'static str,
    gate: &Gate,
    open_kfid: &OpenKfId,
    touser: &ExternalUserId,
    msgid: MsgId,
    body: String,
    outcome: &SendOutcome,
) {
    let (state, error) = match outcome {
        SendOutcome::Sent(_) => (ReplyState::Sent, None),
        SendOutcome::Refused { refusal, .. } => (
            ReplyState::Refused,
            Some(format!(
                "{} ({})",
                crate::send_policy::reason(refusal),
                refusal.errcode()
            )),
        ),
        SendOutcome::Failed(e) => (ReplyState::Failed, Some(safe_error(e))),
    };
    let reply = FinishedReply {
        endpoint: ReplyEndpoint::SendMsg,
        lane: format!("{open_kfid}/{touser}"),
        body,
        msgid,
        state,
        error,
        result: Some(serde_json::json!({ "via": via }).to_string()),
    };
    if let Err(e) = gate
        .store
        .record_finished_reply(reply, gate.clock.local_ms())
        .await
    {
        tracing::warn!(error = %e, "cannot record the send in the conversation's history");
    }
}

/// Sends a `kf/send_msg` body (through the send policy).
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "reply API",
    request_body(content = SendMsgBody, description = "A `kf/send_msg` body."),
    responses(
        (status = 200, description = "WeChat accepted the message (or accepted it earlier: the stored answer of a request with the same msgid).", body = SentBody,
            headers(("Idempotent-Replay" = String, description = "`true` when the answer is the stored one of an earlier request with the same msgid."))),
        (status = 400, description = "Invalid body (`field` names the offending field for limit violations).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled (no token configured).", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the server's read timeout.", body = ErrorBody),
        (status = 409, description = "The send policy refused (nothing was sent), a request with the same msgid is in progress, or the msgid was used before with another body or recipient (`idempotency_mismatch`).", body = ConflictBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
        (status = 422, description = "WeChat refused for another reason (e.g. 40096 unknown customer).", body = ErrorBody),
        (status = 502, description = "WeChat unreachable or answering garbage.", body = ErrorBody),
        (status = 503, description = "WeChat busy (-1, 45009, 45033): retry later.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn send_msg(
    State(state): State<ReplyApiState>,
    _: Authorized,
    JsonBody(SendMsgBody(parsed)): JsonBody<SendMsgBody>,
) -> Result<Sent, ApiError> {
    valid_id(IdKind::OpenKfId, "open_kfid", parsed.open_kfid.as_str())?;
    valid_id(IdKind::ExternalUserId, "touser", parsed.touser.as_str())?;
    // The body first, the send policy second: an invalid message is a 400 whatever the
    // customer's quota, so the bot learns what to fix rather than to wait.
    parsed
        .request
        .message()
        .validate(state.inner.client.menu_rules())
        .map_err(|e| {
            Metrics::add(&state.inner.metrics.api_requests_failed, 1);
            ApiError::Api(e.into())
        })?;
    let key = format!("send_msg:{}", parsed.open_kfid);
    let SendMsg {
        request,
        open_kfid,
        touser,
        msgid,
        caller_msgid,
    } = parsed;
    let fingerprint = fingerprint(&request);
    let body = serde_json::to_string(&request).unwrap_or_default();
    let gate = state.inner.gate.clone();
    let recorded_msgid = msgid.clone();
    idempotent_send(
        &state,
        "kf/send_msg",
        key,
        caller_msgid.then_some(msgid),
        fingerprint,
        move || async move {
            let outcome = gate.send(&open_kfid, &touser, request).await;
            record_send(
                "reply_api",
                &gate,
                &open_kfid,
                &touser,
                recorded_msgid,
                body,
                &outcome,
            )
            .await;
            outcome
        },
    )
    .await
}

/// Sends a `kf/send_msg_on_event` body (WeChat decides alone: the code is the permission).
#[utoipa::path(
    post,
    path = "/v1/messages/on_event",
    tag = "reply API",
    request_body(content = OnEventBody, description = "A `kf/send_msg_on_event` body."),
    responses(
        (status = 200, description = "WeChat accepted the message (or accepted it earlier).", body = SentBody,
            headers(("Idempotent-Replay" = String, description = "`true` when the answer is the stored one of an earlier request with the same msgid."))),
        (status = 400, description = "Invalid body.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the server's read timeout.", body = ErrorBody),
        (status = 409, description = "A request with the same msgid is in progress, or the msgid was used before with another body (`idempotency_mismatch`).", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
        (status = 422, description = "WeChat refused (e.g. a code already used or expired).", body = ErrorBody),
        (status = 502, description = "WeChat unreachable or answering garbage.", body = ErrorBody),
        (status = 503, description = "WeChat busy: retry later.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn send_msg_on_event(
    State(state): State<ReplyApiState>,
    _: Authorized,
    JsonBody(OnEventBody(parsed)): JsonBody<OnEventBody>,
) -> Result<Sent, ApiError> {
    if parsed.code.len() > 256 || parsed.code.chars().any(char::is_control) {
        return Err(ApiError::InvalidId {
            field: "code",
            message: format!(
                "code is {} bytes or holds control characters",
                parsed.code.len()
            ),
        });
    }
    let key = format!("on_event:{}", parsed.code);
    let request = parsed.request;
    let fingerprint = fingerprint(&request);
    let client = state.inner.client.clone();
    let metrics = state.inner.metrics.clone();
    idempotent_send(
        &state,
        "kf/send_msg_on_event",
        key,
        parsed.caller_msgid.then_some(parsed.msgid),
        fingerprint,
        move || async move {
            match client.messages().send_on_event(request).await {
                Ok(sent) => SendOutcome::Sent(sent),
                Err(e) => {
                    metrics.api_error("kf/send_msg_on_event", &e);
                    SendOutcome::Failed(e)
                }
            }
        },
    )
    .await
}

/// Changes a session's state (`kf/service_state/trans`). The customer's session view learns
/// the new state, so later bot replies are refused while a human holds the session; with
/// `message`, the text goes out with the returned `msg_code`.
#[utoipa::path(
    post,
    path = "/v1/service_state/trans",
    tag = "reply API",
    request_body(content = TransBody, description = "The transfer."),
    responses(
        (status = 200, description = "WeChat changed the state.", body = TransDone),
        (status = 400, description = "Invalid body.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
        (status = 422, description = "WeChat refused (e.g. 95016 transition not allowed).", body = ErrorBody),
        (status = 502, description = "WeChat unreachable or answering garbage.", body = ErrorBody),
        (status = 503, description = "WeChat busy: retry later.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn trans(
    State(state): State<ReplyApiState>,
    _: Authorized,
    JsonBody(TransBody(transfer)): JsonBody<TransBody>,
) -> Result<Json<TransDone>, ApiError> {
    valid_id(IdKind::OpenKfId, "open_kfid", transfer.open_kfid.as_str())?;
    valid_id(
        IdKind::ExternalUserId,
        "external_userid",
        transfer.external_userid.as_str(),
    )?;
    if let Some(servicer) = &transfer.servicer_userid {
        valid_id(IdKind::UserId, "servicer_userid", servicer.as_str())?;
    }
    let inner = &state.inner;
    match transfer_and_greet(
        &inner.client,
        Some(&inner.gate),
        &inner.conversations,
        &inner.recorder,
        &inner.metrics,
        &transfer,
        "bot",
    )
    .await
    {
        Ok(done) => {
            Metrics::add(&inner.metrics.api_requests_ok, 1);
            Ok(Json(TransDone {
                errcode: 0,
                errmsg: "ok".into(),
                msg_code: done.msg_code,
                message_sent: transfer.message.is_some().then_some(done.message_sent),
                service_state: done.service_state,
                servicer_userid: done.servicer_userid.map(|s| s.as_str().to_owned()),
            }))
        }
        Err(e) => {
            Metrics::add(&inner.metrics.api_requests_failed, 1);
            Err(ApiError::Api(e))
        }
    }
}

/// What the service knows about a customer's session and whether a send would be allowed now
/// (`can_send`, `remaining`, or `refusal`).
#[utoipa::path(
    get,
    path = "/v1/sessions/{open_kfid}/{external_userid}",
    tag = "reply API",
    params(
        ("open_kfid" = String, Path, description = "The account."),
        ("external_userid" = String, Path, description = "The customer."),
    ),
    responses(
        (status = 200, description = "The session as the service sees it.", body = SessionBody),
        (status = 400, description = "Unreadable path parameters, or an id that is not WeChat's shape (`field` names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn session(
    State(state): State<ReplyApiState>,
    _: Authorized,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<SessionBody>, ApiError> {
    let Path((open_kfid, external_userid)) =
        path.map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
    valid_id(IdKind::OpenKfId, "open_kfid", &open_kfid)?;
    valid_id(IdKind::ExternalUserId, "external_userid", &external_userid)?;
    let (open_kfid, external_userid) = (
        OpenKfId::from(open_kfid),
        ExternalUserId::from(external_userid),
    );
    let gate = &state.inner.gate;
    let view = gate.view(&open_kfid, &external_userid).await;
    let body = SessionBody::new(
        open_kfid,
        external_userid,
        view.as_ref(),
        gate.clock.now_u64(),
    );
    Metrics::add(&state.inner.metrics.api_requests_ok, 1);
    Ok(Json(body))
}

/// The listing's query, or a 400 naming what is wrong with it.
fn list_query(
    state: &ReplyApiState,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<crate::store::ListQuery, ApiError> {
    let query = params
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
        .and_then(|Query(params)| params.query());
    if query.is_err() {
        Metrics::add(&state.inner.metrics.api_requests_failed, 1);
    }
    query
}

/// A listing's rows, or a 503 when the store does not answer.
fn listed<T>(state: &ReplyApiState, rows: Result<T, crate::error::Error>) -> Result<T, ApiError> {
    match rows {
        Ok(rows) => {
            Metrics::add(&state.inner.metrics.api_requests_ok, 1);
            Ok(rows)
        }
        Err(e) => {
            Metrics::add(&state.inner.metrics.api_requests_failed, 1);
            tracing::warn!(error = %e, "a listing failed: the store does not answer");
            Err(ApiError::StoreUnavailable)
        }
    }
}

/// The stored messages, newest first: ids, kind and delivery state, never content (what
/// `wechat-kf store messages` prints).
#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "operations API",
    params(ListParams),
    responses(
        (status = 200, description = "The messages.", body = MessageList),
        (status = 400, description = "An invalid query (e.g. limit out of range).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 503, description = "The store does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_messages(
    State(state): State<ReplyApiState>,
    _: Authorized,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<MessageList>, ApiError> {
    let query = list_query(&state, params)?;
    let rows = state.inner.store.list_messages(query).await;
    listed(&state, rows).map(|messages| Json(MessageList { messages }))
}

/// The deliveries in flight or waiting for a retry, newest first, with their attempts and last
/// error (what `wechat-kf store deliveries` prints).
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "operations API",
    params(ListParams),
    responses(
        (status = 200, description = "The deliveries.", body = DeliveryList),
        (status = 400, description = "An invalid query (e.g. limit out of range).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 503, description = "The store does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_deliveries(
    State(state): State<ReplyApiState>,
    _: Authorized,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let query = list_query(&state, params)?;
    let rows = state.inner.store.list_deliveries(query).await;
    listed(&state, rows).map(|deliveries| Json(DeliveryList { deliveries }))
}

/// The queued replies (webhook responses, the echo bot, handoffs), newest first: ids and state,
/// never content (what `wechat-kf store sends` prints). Reply-API and console sends are answered
/// at once and listed finished (no `delivery`).
#[utoipa::path(
    get,
    path = "/v1/sends",
    tag = "operations API",
    params(ListParams),
    responses(
        (status = 200, description = "The replies.", body = SendList),
        (status = 400, description = "An invalid query (e.g. limit out of range).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 503, description = "The store does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_sends(
    State(state): State<ReplyApiState>,
    _: Authorized,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<SendList>, ApiError> {
    let query = list_query(&state, params)?;
    let rows = state.inner.store.list_sends(query).await;
    listed(&state, rows).map(|sends| Json(SendList { sends }))
}

/// What was done to a delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DeliveryDone {
    /// The delivery id.
    pub(crate) delivery: String,
    /// `retrying` (an attempt is made now) or `given_up` (its messages are marked delivered
    /// without the bot's acknowledgement; the customers' later messages flow again).
    pub(crate) result: &'static str,
}

/// Acts on a delivery waiting for a retry (what the two routes below and the console do).
pub(crate) async fn delivery_action(
    control: &DeliveryControl,
    id: &str,
    action: Action,
) -> Result<DeliveryDone, ApiError> {
    if id.is_empty()
        || id.len() > 100
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ApiError::InvalidId {
            field: "id",
            message: "a delivery id is 1-100 letters, digits, '-' and '.'".into(),
        });
    }
    match control.act(id, action).await {
        ActionResult::Done => Ok(DeliveryDone {
            delivery: id.to_owned(),
            result: match action {
                Action::RetryNow => "retrying",
                Action::GiveUp => "given_up",
            },
        }),
        ActionResult::NotFound => Err(ApiError::NoSuchDelivery),
        ActionResult::InFlight => Err(ApiError::DeliveryInFlight),
        ActionResult::Stopped => Err(ApiError::DelivererStopped),
    }
}

async fn delivery_route(
    state: &ReplyApiState,
    path: Result<Path<String>, PathRejection>,
    action: Action,
) -> Result<Json<DeliveryDone>, ApiError> {
    let result = match path {
        Ok(Path(id)) => delivery_action(&state.inner.deliveries, &id, action).await,
        Err(e) => Err(ApiError::BadRequest(format!(
            "invalid path: {}",
            e.body_text()
        ))),
    };
    counted(&state.inner.metrics, result).map(Json)
}

/// Attempts a delivery waiting for a retry now (`id` as `GET /v1/deliveries` lists it).
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = "operations API",
    params(("id" = String, Path, description = "The delivery id (`X-Wechat-Kf-Delivery`).")),
    responses(
        (status = 200, description = "An attempt is being made now.", body = DeliveryDone),
        (status = 400, description = "Not a delivery id (`field`: `id`).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 404, description = "No such delivery is waiting for a retry.", body = ErrorBody),
        (status = 409, description = "An attempt is in flight: ask again once it finished.", body = ErrorBody),
        (status = 503, description = "The deliverer has stopped.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry_delivery(
    State(state): State<ReplyApiState>,
    _: Authorized,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeliveryDone>, ApiError> {
    delivery_route(&state, path, Action::RetryNow).await
}

/// Gives a delivery up: it is no longer retried, its messages are marked delivered without the
/// bot's acknowledgement, and its customers' later messages flow again.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/give_up",
    tag = "operations API",
    params(("id" = String, Path, description = "The delivery id (`X-Wechat-Kf-Delivery`).")),
    responses(
        (status = 200, description = "Given up.", body = DeliveryDone),
        (status = 400, description = "Not a delivery id (`field`: `id`).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 404, description = "No such delivery is waiting for a retry.", body = ErrorBody),
        (status = 409, description = "An attempt is in flight: ask again once it finished.", body = ErrorBody),
        (status = 503, description = "The deliverer has stopped.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn give_up_delivery(
    State(state): State<ReplyApiState>,
    _: Authorized,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeliveryDone>, ApiError> {
    delivery_route(&state, path, Action::GiveUp).await
}

/// `POST /v1/contact_ways`: a contact-way link for an account.
#[derive(Debug, Clone, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactWayBody {
    /// The account.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub(crate) open_kfid: String,
    /// A scene of your choosing (at most 32 of `[0-9a-zA-Z_-]`), returned in the customer's
    /// `enter_session` event.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-zA-Z_-]{0,32}$")]
    pub(crate) scene: Option<String>,
}

impl TryFrom<serde_json::Value> for ContactWayBody {
    type Error = String;
    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        serde_json::from_value(value).map_err(|e| format!("invalid body: {e}"))
    }
}

/// The link made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ContactWay {
    /// The chat link (open it in WeChat, or show it as a QR code).
    pub(crate) url: String,
}

/// Makes a contact-way link (`kf/add_contact_way`; what the route below and the console do).
pub(crate) async fn contact_way(
    client: &Client,
    body: ContactWayBody,
) -> Result<ContactWay, ApiError> {
    valid_id(IdKind::OpenKfId, "open_kfid", &body.open_kfid)?;
    let mut request = wechat_kf::client::accounts::AddContactWayRequest::new(body.open_kfid);
    if let Some(scene) = body.scene.filter(|s| !s.is_empty()) {
        request = request.scene(scene);
    }
    let made = client.accounts().add_contact_way(request).await?;
    Ok(ContactWay { url: made.url })
}

/// Makes a contact-way link for an account (`kf/add_contact_way`), optionally with a scene.
#[utoipa::path(
    post,
    path = "/v1/contact_ways",
    tag = "reply API",
    request_body(content = ContactWayBody, description = "The account and an optional scene."),
    responses(
        (status = 200, description = "The link.", body = ContactWay),
        (status = 400, description = "Invalid body (`field` names the offending field).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
        (status = 422, description = "WeChat refused (e.g. an unknown account).", body = ErrorBody),
        (status = 502, description = "WeChat unreachable or answering garbage.", body = ErrorBody),
        (status = 503, description = "WeChat busy: retry later.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn add_contact_way(
    State(state): State<ReplyApiState>,
    _: Authorized,
    JsonBody(body): JsonBody<ContactWayBody>,
) -> Result<Json<ContactWay>, ApiError> {
    let result = contact_way(&state.inner.client, body).await;
    counted(&state.inner.metrics, result).map(Json)
}

/// The query of `GET /v1/media/{open_kfid}/{msgid}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MediaParams {
    /// The converted file (a voice note converted by `media.voice_convert_to`) instead of the
    /// original.
    #[serde(default)]
    pub(crate) converted: bool,
}

/// A downloaded media file: its bytes and content type.
#[derive(Debug)]
pub(crate) struct MediaFile {
    pub(crate) content_type: String,
    pub(crate) file_name: Option<String>,
    pub(crate) bytes: Vec<u8>,
}

impl IntoResponse for MediaFile {
    fn into_response(self) -> Response {
        let content_type = HeaderValue::from_str(&self.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let mut response = (
            [
                (header::CONTENT_TYPE, content_type),
                (
                    header::HeaderName::from_static("x-content-type-options"),
                    HeaderValue::from_static("nosniff"),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("sandbox; default-src 'none'"),
                ),
            ],
            self.bytes,
        )
            .into_response();
        // A name WeChat gave; only its ASCII letters, digits and `._-` go into the header.
        if let Some(name) = self.file_name {
            let safe: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .collect();
            if let Ok(value) = HeaderValue::from_str(&format!("inline; filename=\"{safe}\"")) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
        }
        response
    }
}

/// The downloaded file of a message's media (what the route below and the console serve):
/// only a file the media record names and that lies inside `media.download_dir`.
pub(crate) async fn media(
    store: &dyn Store,
    media_dir: Option<&std::path::Path>,
    open_kfid: &str,
    msgid: &str,
    converted: bool,
) -> Result<MediaFile, ApiError> {
    valid_id(IdKind::OpenKfId, "open_kfid", open_kfid)?;
    valid_msgid(msgid)?;
    let record = store
        .media_record(OpenKfId::from(open_kfid), MsgId::from(msgid))
        .await
        .map_err(|_| ApiError::StoreUnavailable)?
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .ok_or(ApiError::NoSuchMedia)?;
    let record = if converted {
        record
            .get("converted")
            .cloned()
            .ok_or(ApiError::NoSuchMedia)?
    } else {
        record
    };
    let (Some(dir), Some(path)) = (media_dir, record.get("path").and_then(|p| p.as_str())) else {
        return Err(ApiError::NoSuchMedia);
    };
    let (Ok(dir), Ok(path)) = (
        tokio::fs::canonicalize(dir).await,
        tokio::fs::canonicalize(path).await,
    ) else {
        return Err(ApiError::NoSuchMedia);
    };
    if !path.starts_with(&dir) {
        return Err(ApiError::NoSuchMedia);
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NoSuchMedia)?;
    Ok(MediaFile {
        content_type: record
            .get("content_type")
            .and_then(|c| c.as_str())
            .unwrap_or("application/octet-stream")
            .to_owned(),
        file_name: record
            .get("file_name")
            .and_then(|c| c.as_str())
            .map(str::to_owned),
        bytes,
    })
}

/// A message's downloaded media file (or its converted voice note, `converted=true`), as the
/// media download stored it in `media.download_dir`. Files only in the object store are not
/// served (their `url` is in the media record).
#[utoipa::path(
    get,
    path = "/v1/media/{open_kfid}/{msgid}",
    tag = "operations API",
    params(
        ("open_kfid" = String, Path, description = "The account."),
        ("msgid" = String, Path, description = "The message."),
        MediaParams,
    ),
    responses(
        (status = 200, description = "The file, with the content type of its media record.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Unreadable path or query, or an id that is not WeChat's shape (`field` names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 404, description = "No downloaded file for this message.", body = ErrorBody),
        (status = 503, description = "The store does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn media_file(
    State(state): State<ReplyApiState>,
    _: Authorized,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<MediaParams>, QueryRejection>,
) -> Result<MediaFile, ApiError> {
    let result = async {
        let Path((open_kfid, msgid)) =
            path.map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        let Query(params) = params
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
        media(
            &*state.inner.store,
            state.inner.media_dir.as_deref(),
            &open_kfid,
            &msgid,
            params.converted,
        )
        .await
    }
    .await;
    Metrics::add(
        if result.is_ok() {
            &state.inner.metrics.api_requests_ok
        } else {
            &state.inner.metrics.api_requests_failed
        },
        1,
    );
    result
}

/// What a replay did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReplayDone {
    /// The message.
    pub(crate) msgid: String,
    /// `replaying`: it is delivered to the bot again, after what its customer has waiting.
    pub(crate) result: &'static str,
}

/// Checks a msgid of a path (WeChat's msgids have no fixed shape: bounded, no control
/// characters).
fn valid_msgid(msgid: &str) -> Result<(), ApiError> {
    if msgid.is_empty() || msgid.len() > 256 || msgid.chars().any(char::is_control) {
        return Err(ApiError::InvalidId {
            field: "msgid",
            message: "msgid is empty, over 256 bytes or holds control characters".into(),
        });
    }
    Ok(())
}

/// Hands a finished (delivered or skipped) message to the deliverer again (what the route
/// below and the console do).
pub(crate) async fn replay(
    store: &dyn Store,
    control: &DeliveryControl,
    open_kfid: &str,
    msgid: &str,
) -> Result<ReplayDone, ApiError> {
    valid_id(IdKind::OpenKfId, "open_kfid", open_kfid)?;
    valid_msgid(msgid)?;
    let (row, state) = store
        .stored_message(OpenKfId::from(open_kfid), MsgId::from(msgid))
        .await
        .map_err(|_| ApiError::StoreUnavailable)?
        .ok_or(ApiError::NoSuchMessage)?;
    if state == "pending" {
        return Err(ApiError::NotReplayable(
            "the message is still waiting for its delivery: retry that delivery instead",
        ));
    }
    match control.replay(row).await {
        ActionResult::Done => Ok(ReplayDone {
            msgid: msgid.to_owned(),
            result: "replaying",
        }),
        ActionResult::InFlight => Err(ApiError::NotReplayable(
            "a replay of this message is waiting already",
        )),
        ActionResult::NotFound | ActionResult::Stopped => Err(ApiError::DelivererStopped),
    }
}

/// Delivers an already delivered (or skipped) message to the bot again, through the
/// deliverer: after what its customer has waiting, in a delivery of its own, retried like any
/// other until acknowledged (not kept across a restart). The bot's replies in the answer are
/// queued as usual.
#[utoipa::path(
    post,
    path = "/v1/messages/{open_kfid}/{msgid}/replay",
    tag = "operations API",
    params(
        ("open_kfid" = String, Path, description = "The account."),
        ("msgid" = String, Path, description = "The message."),
    ),
    responses(
        (status = 200, description = "The message is being delivered again.", body = ReplayDone),
        (status = 400, description = "Unreadable path, or an id that is not WeChat's shape (`field` names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 404, description = "No such stored message.", body = ErrorBody),
        (status = 409, description = "The message still waits for its first delivery, or a replay of it waits already.", body = ErrorBody),
        (status = 503, description = "The store does not answer, or the deliverer has stopped.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn replay_message(
    State(state): State<ReplyApiState>,
    _: Authorized,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ReplayDone>, ApiError> {
    let result = match path {
        Ok(Path((open_kfid, msgid))) => {
            replay(
                &*state.inner.store,
                &state.inner.deliveries,
                &open_kfid,
                &msgid,
            )
            .await
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "invalid path: {}",
            e.body_text()
        ))),
    };
    counted(&state.inner.metrics, result).map(Json)
}
