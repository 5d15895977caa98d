//! The OpenAPI 3.1 document of the HTTP API, derived from the types the handlers use: the
//! reply API (every route, the bearer scheme, every error answer), health and metrics, and as
//! schemas the webhook body the bot receives ([`WebhookBody`]) and the reply results it carries
//! ([`ReplyResult`]). Served at `GET /openapi.json`; `docs/openapi.json` is a copy that a test
//! keeps current (`WECHAT_KF_WRITE_OPENAPI=1 cargo test -p wechat-kf-service --lib openapi`
//! rewrites it).

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use wechat_kf::{ExternalUserId, MsgId, OpenKfId, UserId};

use super::bodies::OutboundMessage;
use super::{accounts, conversations, health, reply_api, sandbox_api, setup};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wechat-kf serve",
        description = "The HTTP API of `wechat-kf serve`: the reply API your bot calls (bearer \
            token), health and metrics. The webhook body the service posts to your bot, and the \
            reply results it carries, are described as schemas (`WebhookBody`, `ReplyResult`). \
            The WeChat callback endpoint (`/callback`) is WeChat's and not described here. \
            See docs/service.md.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        reply_api::send_msg,
        reply_api::send_msg_on_event,
        reply_api::trans,
        reply_api::session,
        reply_api::list_messages,
        reply_api::list_deliveries,
        reply_api::list_sends,
        reply_api::retry_delivery,
        reply_api::give_up_delivery,
        reply_api::add_contact_way,
        reply_api::media_file,
        reply_api::replay_message,
        setup::setup,
        accounts::accounts,
        conversations::list_conversations,
        conversations::conversation,
        sandbox_api::customer_send,
        sandbox_api::customer_chat,
        sandbox_api::servicer_hook,
        health::healthz,
        health::readyz,
        health::metrics,
        serve,
    ),
    components(schemas(WebhookBody, ReplyResult, OutboundMessage)),
    modifiers(&BearerToken),
    tags(
        (name = "reply API", description = "Sending, transfers and session views; `Authorization: Bearer <api.token>`."),
        (name = "operations API", description = "What the service holds, read-only (the same as `wechat-kf store`); `Authorization: Bearer <api.token>`."),
        (name = "sandbox", description = "Sandbox mode only (404 otherwise): write as a customer of the embedded emulator and see the chat as the customer does; `Authorization: Bearer <api.token>`."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the reply-API routes name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The reply API's token: `api.token` (`WECHAT_KF_API_TOKEN`); in sandbox \
                         mode printed at start when not set.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the service's HTTP API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`document`] as pretty-printed JSON with a final newline (what `docs/openapi.json` holds).
pub fn document_json() -> String {
    let mut json = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

/// The body of a delivery to the bot's webhook (`POST <webhook.url>`, signed with
/// `X-Wechat-Kf-Signature`). Answer any 2xx to acknowledge it, optionally with
/// `{"replies": [...]}` (send bodies, `code` bodies, or `{"action": "transfer", ...}`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookBody {
    /// Each message's JSON exactly as WeChat sent it (unknown types and fields included), in
    /// WeChat's order per customer.
    pub(crate) messages: Vec<Map<String, Value>>,
    /// The delivery in order: each message (by its index in `messages`) with who wrote it and
    /// whether the bot may answer it, and the changes of a session's state between them.
    pub(crate) items: Vec<BodyEntry>,
    /// Indexes (in `messages`) of the items the library could not decode; present only when
    /// needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) invalid: Option<Vec<u32>>,
    /// msgid → the media record of each message whose media was downloaded (or failed to be):
    /// `{"msgid", "msgtype", "path"?, "url"?, "size"?, "error"?, "converted"?, "transcript"?,
    /// "transcript_error"?, …}`; present only when needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media: Option<Map<String, Value>>,
    /// Results of replies from earlier webhook responses that finished since; present only
    /// when needed. At least once: de-duplicate on `msgid` plus `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reply_results: Option<Vec<ReplyResult>>,
}

/// One entry of a webhook body's `items`: a message, or a change of a session's state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BodyEntry {
    /// A message of `messages`.
    Message(MessageEntry),
    /// A change of a session's state, in order with the messages.
    Session(SessionEntry),
}

/// A message of a webhook body, and whose turn it is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageEntry {
    /// Its index in `messages`.
    pub(crate) message: u32,
    /// Who wrote it: `customer` (origin 3), `servicer` (origin 5, a human in the WeCom
    /// client) or `system` (events).
    pub(crate) from: Author,
    /// Whether the bot may answer it now.
    pub(crate) bot_may_reply: bool,
    /// Why not, when `bot_may_reply` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<NoReplyReason>,
    /// Held while a human had the session and delivered now that the bot may speak again
    /// (`conversation.while_human = "hold"`): context, not a question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) history: Option<bool>,
}

/// `{"session": {...}}`: a change of a session's state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionEntry {
    /// The change.
    pub(crate) session: SessionChangeBody,
}

/// A change of a customer's session state (`service_state`: 0 new, 1 bot, 2 queued, 3 human,
/// 4 ended).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionChangeBody {
    /// The account.
    pub(crate) open_kfid: String,
    /// The customer.
    pub(crate) external_userid: String,
    /// The state before, when it was known.
    pub(crate) old_state: Option<u32>,
    /// The state after.
    pub(crate) new_state: u32,
    /// The servicer holding the session after the change (state 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) servicer_userid: Option<String>,
    /// What changed it: `customer_message`, `servicer_message`, `enter_session`,
    /// `session_status_change`, `msg_send_fail`, `event` or `transfer`.
    pub(crate) trigger: String,
    /// The `change_type` of a `session_status_change` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) change_type: Option<u32>,
    /// Who asked for a transfer the service made: `keyword`, `bot`, `idle` or `console`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<String>,
    /// The msgid of the item that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cause_msgid: Option<String>,
    /// When, unix seconds.
    pub(crate) at: i64,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Author {
    /// The WeChat customer.
    Customer,
    /// A human servicer in the WeCom client.
    Servicer,
    /// WeChat (events).
    System,
}

/// Why the bot may not answer a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NoReplyReason {
    /// A human servicer holds the session, or wrote the message.
    HumanServicer,
    /// The session waits in the queue.
    Queued,
    /// The session ended and the customer has not written since.
    Ended,
    /// The 48-hour window is closed, or the only recent messages are menu clicks.
    WindowClosed,
    /// The 5 messages per customer message are spent.
    QuotaExhausted,
    /// The session's state allows no `send_msg`.
    StateForbidsSending,
    /// An event, not a customer's message.
    SystemEvent,
    /// The customer's answer to the satisfaction survey.
    SurveyAnswer,
}

/// How a reply from a webhook response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReplyStatus {
    /// WeChat accepted it.
    Sent,
    /// The send policy (or WeChat, for a reason of the session) refused it; the refusal's
    /// fields are merged in.
    Refused,
    /// It failed for good (`error`, and `errcode` when WeChat answered), or could not be read.
    Failed,
    /// Merged by the joiner into the message `joined_into`, which waits for a retry.
    Joined,
    /// A transfer was made.
    Done,
}

/// The result of one reply of a webhook response, reported in a later delivery's
/// `reply_results`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplyResult {
    /// The reply's msgid (given or generated); absent for a transfer without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) msgid: Option<MsgId>,
    /// The delivery (`X-Wechat-Kf-Delivery`) whose response carried the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delivery: Option<String>,
    /// The reply's position in that response's `replies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u32>,
    /// How it ended.
    pub(crate) status: ReplyStatus,
    /// `transfer`, for a transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) action: Option<String>,
    /// The account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) open_kfid: Option<OpenKfId>,
    /// The customer (a send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) touser: Option<ExternalUserId>,
    /// The customer (a transfer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) external_userid: Option<ExternalUserId>,
    /// The requested state (a transfer), or the session's state (a refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) service_state: Option<u32>,
    /// The code a transfer returned (absent once used for its `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) msg_code: Option<String>,
    /// Whether a transfer's `message` went out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message_sent: Option<bool>,
    /// The msgid of the message a joined text was merged into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) joined_into: Option<MsgId>,
    /// `failed`: what went wrong; `refused`: `send_refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// WeChat's errcode (`failed` when WeChat answered; `refused`: 95001, 95002, 95018, 95024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) errcode: Option<i64>,
    /// `refused`: why (`quota_exhausted`, `window_expired`, `human_servicer`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// `refused`: what happened and what unblocks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// `refused`: `customer_message` or `session_change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lifted_by: Option<String>,
    /// `refused`: whether a human took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) handoff: Option<bool>,
    /// `refused`: `true` when the service refused without calling WeChat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) predicted: Option<bool>,
    /// `refused`: always `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retryable: Option<bool>,
    /// `refused`: the servicer holding the session, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) servicer_userid: Option<UserId>,
    /// `refused` (`window_expired`): when the customer last wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_customer_message_at: Option<u64>,
    /// `refused` (`only_menu_clicks`): when the customer last wrote something else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_active_message_at: Option<u64>,
    /// `refused` (`quota_exhausted`): messages sent since the customer's last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sent: Option<u32>,
    /// `refused`: WeChat's errmsg, when WeChat answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) errmsg: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wechat_kf::session::SendRefusal;

    use super::*;
    use crate::config::JoinerConfig;
    use crate::delivery::sink::{BodyItem, webhook_body};
    use crate::replies::{ReplyOrigin, queue_reply, result_head};
    use crate::send_policy::refusal_json;
    use crate::store::{Author as StoreAuthor, ItemKind, NoReply, Turn};

    /// `docs/openapi.json`, from the crate's directory.
    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
    }

    #[test]
    fn the_committed_openapi_document_is_current() {
        let current = document_json();
        let path = committed_path();
        if std::env::var_os("WECHAT_KF_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &current).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is stale; regenerate it with \
             `WECHAT_KF_WRITE_OPENAPI=1 cargo test -p wechat-kf-service --lib openapi`"
        );
    }

    #[test]
    fn the_document_describes_every_reply_api_route_and_the_webhook_body() {
        let doc: Value = serde_json::from_str(&document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, method) in [
            ("/v1/messages", "post"),
            ("/v1/messages/on_event", "post"),
            ("/v1/service_state/trans", "post"),
            ("/v1/sessions/{open_kfid}/{external_userid}", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
            ("/v1/messages", "get"),
            ("/v1/deliveries", "get"),
            ("/v1/sends", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
        let send = &doc["paths"]["/v1/messages"]["post"];
        assert_eq!(send["security"][0]["bearer"], json!([]));
        for status in [
            "200", "400", "401", "403", "409", "413", "422", "502", "503",
        ] {
            assert!(send["responses"][status].is_object(), "{status}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for schema in [
            "WebhookBody",
            "ReplyResult",
            "Refusal",
            "ErrorBody",
            "SessionBody",
        ] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }

    /// What the service writes reads back into the documented types (which deny unknown
    /// fields), so the schemas cannot silently fall behind the code.
    #[test]
    fn real_webhook_bodies_and_reply_results_match_their_schemas() {
        let joiner = JoinerConfig {
            enabled: false,
            window: std::time::Duration::ZERO,
        };
        let origin = ReplyOrigin {
            delivery_id: Some("d1"),
            position: Some(2),
        };
        let failed = queue_reply(json!("not an object"), origin, &joiner);
        let mut refused = result_head(origin, Some("m1"));
        refused.insert("open_kfid".into(), json!("wk"));
        refused.insert("touser".into(), json!("wm"));
        refused.insert("status".into(), json!("refused"));
        refused.extend(refusal_json(
            &SendRefusal::QuotaExhausted { sent: 5 },
            false,
            Some("quota"),
        ));
        let results = vec![failed.result.unwrap(), Value::Object(refused).to_string()];
        let media = r#"{"msgid":"m0","kind":"image","path":"/m/m0.jpg"}"#;
        let body = webhook_body(
            [
                BodyItem {
                    raw: r#"{"msgid":"m0","msgtype":"image"}"#,
                    invalid: false,
                    media: Some(media),
                    turn: Turn::legacy(Some(3)),
                    item: ItemKind::History,
                },
                BodyItem {
                    raw: r#"{"open_kfid":"wk","external_userid":"wm","old_state":1,"new_state":3,"servicer_userid":"zhangsan","trigger":"servicer_message","cause_msgid":"m1","at":1700000000}"#,
                    invalid: false,
                    media: None,
                    turn: Turn::legacy(None),
                    item: ItemKind::Session,
                },
                BodyItem {
                    raw: r#"{"msgid":"m1","msgtype":"text","text":1}"#,
                    invalid: true,
                    media: None,
                    turn: Turn {
                        from: StoreAuthor::Servicer,
                        no_reply: Some(NoReply::HumanServicer),
                    },
                    item: ItemKind::Message,
                },
            ]
            .into_iter(),
            &results,
        );
        let parsed: WebhookBody = serde_json::from_slice(&body).unwrap();
        let results = parsed.reply_results.unwrap();
        assert_eq!(results[0].status, ReplyStatus::Failed);
        assert_eq!(results[1].status, ReplyStatus::Refused);
        assert_eq!(results[1].sent, Some(5));
        assert_eq!(parsed.invalid, Some(vec![1]));
        assert!(matches!(
            &parsed.items[..],
            [
                BodyEntry::Message(MessageEntry {
                    message: 0,
                    history: Some(true),
                    ..
                }),
                BodyEntry::Session(_),
                BodyEntry::Message(MessageEntry {
                    message: 1,
                    from: Author::Servicer,
                    bot_may_reply: false,
                    reason: Some(NoReplyReason::HumanServicer),
                    ..
                }),
            ]
        ));
    }
}
