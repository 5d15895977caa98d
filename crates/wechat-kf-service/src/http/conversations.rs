//! `GET /v1/conversations` and `GET /v1/conversations/{open_kfid}/{external_userid}`: the
//! customers with their last message and session, and one customer's history (customer,
//! servicer, system and bot turns told apart; the bot's replies with their result). The
//! console shows the same bodies ([`list`], [`show`]).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use wechat_kf::session::{ServiceState, SessionView};
use wechat_kf::{ExternalUserId, OpenKfId};

use super::bodies::SessionBody;
use super::error::{ApiError, ErrorBody, counted};
use super::reply_api::{ReplyApiState, valid_id};
use crate::ids::IdKind;
use crate::send_policy::Gate;
use crate::store::{HistoryMessage, HistoryReply, Store};

/// The conversation routes (the reply API's token and state).
pub(crate) fn routes(state: ReplyApiState) -> axum::Router {
    axum::Router::new()
        .route("/v1/conversations", axum::routing::get(list_conversations))
        .route(
            "/v1/conversations/{open_kfid}/{external_userid}",
            axum::routing::get(conversation),
        )
        .with_state(state)
}

/// The most conversations, or history items of each kind, one answer holds.
pub(crate) const MAX_ITEMS: usize = 500;

/// The most characters of a message's text an item carries.
const MAX_TEXT: usize = 2048;

/// Who a history item is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum From {
    /// The WeChat customer (`origin` 3).
    Customer,
    /// A human servicer in the WeCom client (`origin` 5).
    Servicer,
    /// An event WeChat pushed (`origin` 4).
    System,
    /// A reply queued by the bot's webhook response, the echo bot or a handoff.
    Bot,
}

/// A session's state in one word: `bot` (new or with the bot: the API may answer), `queued`,
/// `human` (a servicer holds it), `ended`, `unknown` (an undocumented code).
pub(crate) fn state_word(view: Option<&SessionView>) -> &'static str {
    match view.and_then(SessionView::state) {
        None | Some(ServiceState::New) | Some(ServiceState::Bot) => "bot",
        Some(ServiceState::Queued) => "queued",
        Some(ServiceState::Human) => "human",
        Some(ServiceState::Ended) => "ended",
        Some(_) => "unknown",
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HistoryItem {
    /// Who it is from.
    pub(crate) from: From,
    /// The message type (`text`, `image`, `event:enter_session`, …); for a bot reply its
    /// `msgtype`, or `transfer`.
    pub(crate) kind: String,
    /// The msgid.
    pub(crate) msgid: String,
    /// When: WeChat's `send_time` for a message, the queueing time for a bot reply (unix
    /// seconds).
    pub(crate) at: i64,
    /// The text of a text message (at most 2048 characters), the event type of an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    /// The servicer who sent it (servicer messages), or whom a session event concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) servicer_userid: Option<String>,
    /// A message: `pending`, `delivered` (acknowledged by the bot) or `skipped`; a bot reply:
    /// `pending`, `sent`, `refused`, `failed` or `joined`.
    pub(crate) state: String,
    /// Why a bot reply failed, was refused, or is being retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The message's JSON as WeChat sent it, or the reply's request body.
    #[schema(value_type = Object)]
    pub(crate) message: Value,
    /// The media record of a message whose media was downloaded (or failed to be).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) media: Option<Value>,
    /// How a bot-side item was sent when not from the bot's webhook answer: `reply_api`
    /// (`POST /v1/messages`) or `console` (the console's reply box).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) via: Option<String>,
}

fn bounded_text(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

impl HistoryItem {
    /// A stored message as an item.
    pub(crate) fn from_message(m: &HistoryMessage) -> Self {
        let message: Value = serde_json::from_str(&m.raw).unwrap_or(Value::Null);
        let from = match m.origin {
            Some(5) => From::Servicer,
            Some(4) => From::System,
            _ if m.kind.starts_with("event") => From::System,
            _ => From::Customer,
        };
        let text = message
            .pointer("/text/content")
            .and_then(Value::as_str)
            .map(bounded_text)
            .or_else(|| {
                message
                    .pointer("/event/event_type")
                    .and_then(Value::as_str)
                    .map(bounded_text)
            });
        let servicer_userid = match from {
            From::Servicer => message.get("servicer_userid").and_then(Value::as_str),
            // A session event names the servicer it concerns.
            From::System => message
                .pointer("/event/new_servicer_userid")
                .or_else(|| message.pointer("/event/servicer_userid"))
                .and_then(Value::as_str),
            _ => None,
        }
        .map(str::to_owned);
        HistoryItem {
            from,
            kind: m.kind.clone(),
            msgid: m.msgid.to_string(),
            at: m.send_time,
            text,
            servicer_userid,
            state: m.state.clone(),
            error: None,
            media: m
                .media
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            message,
            via: None,
        }
    }

    /// A queued reply as an item.
    pub(crate) fn from_reply(r: &HistoryReply) -> Self {
        let message: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        let kind = if r.endpoint == "service_state/trans" {
            "transfer".to_owned()
        } else {
            message
                .get("msgtype")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned()
        };
        HistoryItem {
            from: From::Bot,
            kind,
            msgid: r.msgid.to_string(),
            at: r.created_at_ms / 1000,
            text: message
                .pointer("/text/content")
                .and_then(Value::as_str)
                .map(bounded_text),
            servicer_userid: None,
            state: r.state.clone(),
            error: r.last_error.clone(),
            message,
            media: None,
            via: r
                .result
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| v.get("via")?.as_str().map(str::to_owned)),
        }
    }
}

/// A customer in the list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConversationSummary {
    /// The account.
    pub(crate) open_kfid: String,
    /// The customer.
    pub(crate) external_userid: String,
    /// `bot`, `queued`, `human`, `ended` or `unknown`.
    pub(crate) state: &'static str,
    /// Messages stored for this customer.
    pub(crate) messages: u32,
    /// The last stored message.
    pub(crate) last_message: HistoryItem,
    /// The session view: whether a send is allowed now, sends left, when the 48-hour window
    /// closes.
    pub(crate) session: SessionBody,
}

/// `GET /v1/conversations`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConversationList {
    /// WeChat's clock now (unix seconds): the window's time left is `window_closes_at - now`.
    pub(crate) now: u64,
    /// The customers, newest activity first.
    pub(crate) conversations: Vec<ConversationSummary>,
}

/// `GET /v1/conversations/{open_kfid}/{external_userid}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConversationBody {
    /// WeChat's clock now (unix seconds).
    pub(crate) now: u64,
    /// `bot`, `queued`, `human`, `ended` or `unknown`.
    pub(crate) state: &'static str,
    /// The session view.
    pub(crate) session: SessionBody,
    /// The history, oldest first: stored messages and bot replies merged by time.
    pub(crate) items: Vec<HistoryItem>,
}

/// The query of `GET /v1/conversations`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConversationParams {
    /// Only this account.
    pub(crate) open_kfid: Option<String>,
    /// At most this many conversations (default 100), or history items of each kind.
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<usize>,
}

impl ConversationParams {
    fn limit(&self) -> Result<usize, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if (1..=MAX_ITEMS).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::BadRequest(format!("limit must be 1-{MAX_ITEMS}")))
        }
    }
}

/// The conversations (what `GET /v1/conversations` answers).
pub(crate) async fn list(
    store: &dyn Store,
    now: u64,
    params: ConversationParams,
) -> Result<ConversationList, ApiError> {
    let limit = params.limit()?;
    let open_kfid = match params.open_kfid.filter(|k| !k.is_empty()) {
        Some(k) => {
            valid_id(IdKind::OpenKfId, "open_kfid", &k)?;
            Some(OpenKfId::from(k))
        }
        None => None,
    };
    let rows = store.conversations(open_kfid, limit).await.map_err(|e| {
        tracing::warn!(error = %e, "the conversation list failed: the store does not answer");
        ApiError::StoreUnavailable
    })?;
    let conversations = rows
        .into_iter()
        .map(|row| ConversationSummary {
            open_kfid: row.open_kfid.to_string(),
            external_userid: row.external_userid.to_string(),
            state: state_word(row.view.as_ref()),
            messages: row.messages,
            last_message: HistoryItem::from_message(&row.last),
            session: SessionBody::new(row.open_kfid, row.external_userid, row.view.as_ref(), now),
        })
        .collect();
    Ok(ConversationList { now, conversations })
}

/// One conversation (what `GET /v1/conversations/{open_kfid}/{external_userid}` answers).
pub(crate) async fn show(
    store: &dyn Store,
    gate: &Gate,
    open_kfid: &str,
    external_userid: &str,
    limit: Option<usize>,
) -> Result<ConversationBody, ApiError> {
    valid_id(IdKind::OpenKfId, "open_kfid", open_kfid)?;
    valid_id(IdKind::ExternalUserId, "external_userid", external_userid)?;
    let limit = ConversationParams {
        open_kfid: None,
        limit,
    }
    .limit()?;
    let (open_kfid, external_userid) = (
        OpenKfId::from(open_kfid),
        ExternalUserId::from(external_userid),
    );
    let history = store
        .history(open_kfid.clone(), external_userid.clone(), limit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "a conversation failed: the store does not answer");
            ApiError::StoreUnavailable
        })?;
    let view = gate.view(&open_kfid, &external_userid).await;
    let now = gate.clock.now_u64();
    let mut items: Vec<HistoryItem> = history
        .messages
        .iter()
        .map(HistoryItem::from_message)
        .chain(history.replies.iter().map(HistoryItem::from_reply))
        .collect();
    // Stable: at equal seconds a message stays before the reply it caused.
    items.sort_by_key(|item| item.at);
    Ok(ConversationBody {
        now,
        state: state_word(view.as_ref()),
        session: SessionBody::new(open_kfid, external_userid, view.as_ref(), now),
        items,
    })
}

/// The customers with stored messages, newest activity first: the last message, the session
/// state, the 48-hour window and the sends left.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "operations API",
    params(ConversationParams),
    responses(
        (status = 200, description = "The conversations.", body = ConversationList),
        (status = 400, description = "An invalid query (e.g. limit out of range, an account id that is not WeChat's shape).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 503, description = "The store does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_conversations(
    State(state): State<ReplyApiState>,
    _: super::auth::Authorized,
    params: Result<Query<ConversationParams>, QueryRejection>,
) -> Result<Json<ConversationList>, ApiError> {
    let result = match params {
        Ok(Query(params)) => list(&**state.store(), state.gate().clock.now_u64(), params).await,
        Err(e) => Err(ApiError::BadRequest(format!(
            "invalid query: {}",
            e.body_text()
        ))),
    };
    counted(state.metrics(), result).map(Json)
}

/// The query of `GET /v1/conversations/{open_kfid}/{external_userid}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// At most this many messages, and this many bot replies, the newest (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<usize>,
}

/// One customer's history, oldest first: customer, servicer, system and bot turns told apart,
/// the bot's replies with their result; and the session view.
#[utoipa::path(
    get,
    path = "/v1/conversations/{open_kfid}/{external_userid}",
    tag = "operations API",
    params(
        ("open_kfid" = String, Path, description = "The account."),
        ("external_userid" = String, Path, description = "The customer."),
        HistoryParams,
    ),
    responses(
        (status = 200, description = "The conversation (empty `items` for a customer never seen).", body = ConversationBody),
        (status = 400, description = "Unreadable path or query, or an id that is not WeChat's shape (`field` names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
        (status = 503, description = "The store does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn conversation(
    State(state): State<ReplyApiState>,
    _: super::auth::Authorized,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<ConversationBody>, ApiError> {
    let result = async {
        let Path((open_kfid, external_userid)) =
            path.map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        let Query(params) = params
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
        show(
            &**state.store(),
            state.gate(),
            &open_kfid,
            &external_userid,
            params.limit,
        )
        .await
    }
    .await;
    counted(state.metrics(), result).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat_kf::MsgId;

    fn stored(origin: Option<u32>, kind: &str, raw: &str) -> HistoryMessage {
        HistoryMessage {
            seq: 1,
            msgid: MsgId::from("m1"),
            send_time: 10,
            origin,
            kind: kind.into(),
            raw: raw.into(),
            state: "delivered".into(),
            media: None,
        }
    }

    #[test]
    fn customer_servicer_and_system_turns_are_told_apart() {
        let customer = HistoryItem::from_message(&stored(
            Some(3),
            "text",
            r#"{"origin":3,"text":{"content":"hello"}}"#,
        ));
        assert_eq!(
            (customer.from, customer.text.as_deref()),
            (From::Customer, Some("hello"))
        );
        let servicer = HistoryItem::from_message(&stored(
            Some(5),
            "text",
            r#"{"origin":5,"servicer_userid":"zhangsan","text":{"content":"hi"}}"#,
        ));
        assert_eq!(servicer.from, From::Servicer);
        assert_eq!(servicer.servicer_userid.as_deref(), Some("zhangsan"));
        let event = HistoryItem::from_message(&stored(
            Some(4),
            "event:enter_session",
            r#"{"origin":4,"event":{"event_type":"enter_session"}}"#,
        ));
        assert_eq!(
            (event.from, event.text.as_deref()),
            (From::System, Some("enter_session"))
        );
        let unreadable = HistoryItem::from_message(&stored(None, "invalid:text", "{"));
        assert_eq!(unreadable.message, Value::Null);
    }

    #[test]
    fn a_bot_reply_carries_its_result() {
        let reply = HistoryItem::from_reply(&HistoryReply {
            id: 1,
            endpoint: "send_msg".into(),
            msgid: MsgId::from("r1"),
            body: r#"{"msgtype":"text","text":{"content":"echo: hello"}}"#.into(),
            state: "refused".into(),
            last_error: Some("a human servicer holds the session".into()),
            result: None,
            created_at_ms: 12_345,
            finished_at_ms: Some(12_400),
        });
        assert_eq!(reply.from, From::Bot);
        assert_eq!(reply.kind, "text");
        assert_eq!(reply.at, 12);
        assert_eq!(reply.state, "refused");
        assert!(reply.error.is_some());
    }

    #[test]
    fn unknown_and_new_sessions_are_the_bots() {
        assert_eq!(state_word(None), "bot");
        assert_eq!(state_word(Some(&SessionView::new())), "bot");
    }
}
