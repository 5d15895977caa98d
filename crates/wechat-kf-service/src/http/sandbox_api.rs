//! `POST /v1/sandbox/messages` and `GET /v1/sandbox/chat/{open_kfid}/{external_userid}`: in
//! sandbox mode, write as a customer of the embedded emulator and see the chat as the customer
//! does (what the customer wrote, what reached them). Outside sandbox mode both answer 404.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use wechat_kf_emulator::Emulator;

use super::auth::{Authorized, BearerToken};
use super::bodies::JsonBody;
use super::error::{ApiError, ErrorBody, counted};
use super::reply_api::valid_id;
use crate::config::Secret;
use crate::ids::IdKind;
use crate::metrics::Metrics;

/// The most characters of one customer text (WeChat's own limit for a text is 2048 bytes of
/// an outbound message; customers are held to the same here).
const MAX_TEXT: usize = 2048;

/// The most customer lines remembered for the chat view (the oldest are forgotten).
const REMEMBERED: usize = 2000;

/// A line the customer wrote through this API.
#[derive(Debug, Clone)]
struct Line {
    open_kfid: String,
    external_userid: String,
    msgid: String,
    at: i64,
    /// `text`, `image` or `voice`.
    kind: &'static str,
    /// The text of a text.
    text: Option<String>,
}

/// The embedded emulator, and what customers wrote through it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SandboxChat {
    emulator: Emulator,
    lines: Arc<Mutex<VecDeque<Line>>>,
}

impl SandboxChat {
    /// The chat of the sandbox's emulator.
    pub(crate) fn new(emulator: Emulator) -> Self {
        SandboxChat {
            emulator,
            lines: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// The emulator's accounts (`open_kfid`, `name`, `servicers`), as `GET /emulator/state`
    /// lists them.
    pub(crate) fn accounts(&self) -> Vec<Value> {
        self.emulator
            .state_snapshot()
            .get("accounts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// A customer writes a text (what `POST /v1/sandbox/messages` does).
    pub(crate) fn send(&self, body: CustomerText) -> Result<CustomerSent, ApiError> {
        valid_id(IdKind::OpenKfId, "open_kfid", &body.open_kfid)?;
        valid_id(
            IdKind::ExternalUserId,
            "external_userid",
            &body.external_userid,
        )?;
        let (kind, message) = match body.msgtype {
            CustomerMsgType::Text => {
                let text = body.text.clone().unwrap_or_default();
                if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
                    return Err(ApiError::InvalidId {
                        field: "text",
                        message: format!("text must be 1-{MAX_TEXT} characters, not blank"),
                    });
                }
                (
                    "text",
                    json!({"open_kfid": body.open_kfid, "external_userid": body.external_userid,
                           "msgtype": "text", "text": {"content": text}}),
                )
            }
            // Without a media_id the emulator attaches its placeholder file (a PNG, an AMR
            // voice note), which the media download fetches like any other.
            CustomerMsgType::Image => (
                "image",
                json!({"open_kfid": body.open_kfid, "external_userid": body.external_userid,
                       "msgtype": "image", "image": {}}),
            ),
            CustomerMsgType::Voice => (
                "voice",
                json!({"open_kfid": body.open_kfid, "external_userid": body.external_userid,
                       "msgtype": "voice", "voice": {}}),
            ),
        };
        let msgids = self
            .emulator
            .customer_send(message)
            .map_err(|e| ApiError::BadRequest(format!("the emulator refused: {e}")))?;
        let at = self.emulator.now();
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        for msgid in &msgids {
            if lines.len() == REMEMBERED {
                lines.pop_front();
            }
            lines.push_back(Line {
                open_kfid: body.open_kfid.clone(),
                external_userid: body.external_userid.clone(),
                msgid: msgid.clone(),
                at,
                kind,
                text: (kind == "text").then(|| body.text.clone()).flatten(),
            });
        }
        Ok(CustomerSent { msgids })
    }

    /// A servicer acts on a customer's session in the WeCom client (what
    /// `POST /v1/sandbox/servicer` does): the emulator's client hooks, which WeChat reports as
    /// `session_status_change` events.
    pub(crate) async fn servicer(&self, hook: ServicerHook) -> Result<HookDone, ApiError> {
        use tower::ServiceExt;
        valid_id(IdKind::OpenKfId, "open_kfid", &hook.open_kfid)?;
        valid_id(
            IdKind::ExternalUserId,
            "external_userid",
            &hook.external_userid,
        )?;
        let servicer = hook
            .servicer_userid
            .unwrap_or_else(|| crate::sandbox::DEMO_SERVICER.to_owned());
        valid_id(IdKind::UserId, "servicer_userid", &servicer)?;
        let (path, body) = match hook.action {
            HookAction::Pick => (
                "/emulator/servicer/pick",
                json!({"open_kfid": hook.open_kfid, "external_userid": hook.external_userid,
                       "servicer_userid": servicer}),
            ),
            HookAction::End => (
                "/emulator/servicer/end",
                json!({"open_kfid": hook.open_kfid, "external_userid": hook.external_userid}),
            ),
        };
        let request = axum::http::Request::post(path)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let response = self
            .emulator
            .router()
            .oneshot(request)
            .await
            .map_err(|e| ApiError::EmulatorRefused(e.to_string()))?;
        let ok = response.status().is_success();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !ok {
            return Err(ApiError::EmulatorRefused(
                answer
                    .get("error")
                    .or_else(|| answer.get("errmsg"))
                    .and_then(Value::as_str)
                    .unwrap_or("refused")
                    .to_owned(),
            ));
        }
        Ok(HookDone {
            msgid: answer
                .get("msgid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// The chat as the customer sees it (what `GET /v1/sandbox/chat/…` answers).
    pub(crate) fn chat(
        &self,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<CustomerChat, ApiError> {
        valid_id(IdKind::OpenKfId, "open_kfid", open_kfid)?;
        valid_id(IdKind::ExternalUserId, "external_userid", external_userid)?;
        let mut items: Vec<ChatLine> = self
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.open_kfid == open_kfid && l.external_userid == external_userid)
            .map(|l| ChatLine {
                from: ChatSide::Customer,
                msgid: l.msgid.clone(),
                at: l.at,
                kind: l.kind.into(),
                text: l.text.clone(),
            })
            .collect();
        let outbox = self.emulator.outbox(Some(open_kfid), Some(external_userid));
        for sent in outbox
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if sent.get("recalled").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let request = sent.get("request").cloned().unwrap_or(Value::Null);
            items.push(ChatLine {
                from: ChatSide::Service,
                msgid: sent
                    .get("msgid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                at: sent.get("send_time").and_then(Value::as_i64).unwrap_or(0),
                kind: request
                    .get("msgtype")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned(),
                text: request
                    .pointer("/text/content")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
        items.sort_by_key(|l| l.at);
        Ok(CustomerChat { items })
    }
}

/// What a sandbox customer sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CustomerMsgType {
    /// A text (`text`).
    #[default]
    Text,
    /// An image (the emulator's placeholder PNG).
    Image,
    /// A voice note (the emulator's placeholder AMR clip).
    Voice,
}

/// `POST /v1/sandbox/messages`: a customer's text, image or voice note.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerText {
    /// The account written to.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub(crate) open_kfid: String,
    /// The customer writing (any id of WeChat's shape: the emulator creates the customer).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub(crate) external_userid: String,
    /// `text` (default), `image` or `voice`.
    #[serde(default)]
    pub(crate) msgtype: CustomerMsgType,
    /// The text of a `text` (1-2048 characters, not blank).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 2048)]
    pub(crate) text: Option<String>,
}

impl TryFrom<Value> for CustomerText {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        serde_json::from_value(value).map_err(|e| format!("invalid body: {e}"))
    }
}

/// What a servicer does in the WeCom client.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HookAction {
    /// Takes a queued session (state 2 → 3).
    Pick,
    /// Ends the session (→ 4).
    End,
}

/// `POST /v1/sandbox/servicer`: a servicer acts on a customer's session.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServicerHook {
    /// The account.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub(crate) open_kfid: String,
    /// The customer.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub(crate) external_userid: String,
    /// `pick` (take the queued session) or `end`.
    pub(crate) action: HookAction,
    /// The servicer (default: the demo account's, `demo_servicer`).
    #[serde(default)]
    pub(crate) servicer_userid: Option<String>,
}

impl TryFrom<Value> for ServicerHook {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        serde_json::from_value(value).map_err(|e| format!("invalid body: {e}"))
    }
}

/// The event the emulator appended.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HookDone {
    /// The msgid of the `session_status_change` event.
    pub(crate) msgid: String,
}

/// The answer to a customer's text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct CustomerSent {
    /// The msgids the emulator gave the message.
    pub(crate) msgids: Vec<String>,
}

/// Which side of the chat a line is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChatSide {
    /// The customer wrote it (through this API).
    Customer,
    /// It reached the customer from the account (the bot, the reply API, a greeting).
    Service,
}

/// One line of the customer's chat.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ChatLine {
    /// Its side.
    pub(crate) from: ChatSide,
    /// The msgid.
    pub(crate) msgid: String,
    /// When (the emulator's clock, unix seconds).
    pub(crate) at: i64,
    /// The message type.
    pub(crate) kind: String,
    /// The text of a text message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
}

/// The chat as the customer sees it, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct CustomerChat {
    /// The lines.
    pub(crate) items: Vec<ChatLine>,
}

/// What the sandbox routes use. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SandboxApiState {
    /// `None` outside sandbox mode (the routes answer 404).
    pub(crate) chat: Option<SandboxChat>,
    pub(crate) token: Secret,
    pub(crate) metrics: Arc<Metrics>,
}

impl BearerToken for SandboxApiState {
    fn bearer_token(&self) -> &Secret {
        &self.token
    }

    fn auth_metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The sandbox routes.
pub(crate) fn routes(state: SandboxApiState) -> Router {
    Router::new()
        .route("/v1/sandbox/messages", post(customer_send))
        .route("/v1/sandbox/servicer", post(servicer_hook))
        .route(
            "/v1/sandbox/chat/{open_kfid}/{external_userid}",
            get(customer_chat),
        )
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

fn sandbox(state: &SandboxApiState) -> Result<&SandboxChat, ApiError> {
    state.chat.as_ref().ok_or(ApiError::NotSandbox)
}

/// Sandbox mode: a customer of the embedded emulator writes a text, or sends an image or a
/// voice note (the emulator's placeholder files; it reaches the service
/// like any customer message: callback, pull, bot).
#[utoipa::path(
    post,
    path = "/v1/sandbox/messages",
    tag = "sandbox",
    request_body(content = CustomerText, description = "The customer's message."),
    responses(
        (status = 200, description = "The emulator took the message.", body = CustomerSent),
        (status = 400, description = "Invalid body or ids (`field` names the offending one).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "Not in sandbox mode.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn customer_send(
    State(state): State<SandboxApiState>,
    _: Authorized,
    JsonBody(body): JsonBody<CustomerText>,
) -> Result<Json<CustomerSent>, ApiError> {
    let result = sandbox(&state).and_then(|chat| chat.send(body));
    counted(&state.metrics, result).map(Json)
}

/// Sandbox mode: the chat as the customer sees it (what they wrote through
/// `POST /v1/sandbox/messages`, and what reached them), oldest first.
#[utoipa::path(
    get,
    path = "/v1/sandbox/chat/{open_kfid}/{external_userid}",
    tag = "sandbox",
    params(
        ("open_kfid" = String, Path, description = "The account."),
        ("external_userid" = String, Path, description = "The customer."),
    ),
    responses(
        (status = 200, description = "The chat.", body = CustomerChat),
        (status = 400, description = "An id that is not WeChat's shape (`field` names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "Not in sandbox mode.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn customer_chat(
    State(state): State<SandboxApiState>,
    _: Authorized,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CustomerChat>, ApiError> {
    let result = path
        .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))
        .and_then(|Path((kf, user))| sandbox(&state).and_then(|chat| chat.chat(&kf, &user)));
    counted(&state.metrics, result).map(Json)
}

/// Sandbox mode: a servicer of the embedded emulator takes a queued session (`pick`) or ends one
/// (`end`), as in the WeCom client; the service learns it from the `session_status_change`
/// event like any other.
#[utoipa::path(
    post,
    path = "/v1/sandbox/servicer",
    tag = "sandbox",
    request_body(content = ServicerHook, description = "The servicer's action."),
    responses(
        (status = 200, description = "Done: the event's msgid.", body = HookDone),
        (status = 400, description = "Invalid body or ids (`field` names the offending one).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "Not in sandbox mode.", body = ErrorBody),
        (status = 409, description = "The emulator refused (unknown account, customer or servicer; a session not queued).", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn servicer_hook(
    State(state): State<SandboxApiState>,
    _: Authorized,
    JsonBody(body): JsonBody<ServicerHook>,
) -> Result<Json<HookDone>, ApiError> {
    let result = match sandbox(&state) {
        Ok(chat) => chat.servicer(body).await,
        Err(e) => Err(e),
    };
    counted(&state.metrics, result).map(Json)
}
