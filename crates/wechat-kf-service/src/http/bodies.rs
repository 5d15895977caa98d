//! The reply API's typed bodies: what the handlers read ([`JsonBody`] of [`SendMsgBody`],
//! [`OnEventBody`], [`TransBody`]) and answer ([`SentBody`], [`TransDone`], [`SessionBody`]).
//! Their OpenAPI schemas are derived from them (or, for the request bodies, which the
//! service's one reader of bot replies parses, written beside that parsing).

use std::borrow::Cow;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{
    AllOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use wechat_kf::session::SessionView;
use wechat_kf::{ExternalUserId, MsgId, OpenKfId, UserId};

use super::error::ApiError;
use super::server::is_body_timeout;
use crate::replies::{OnEvent, SendMsg, Transfer, parse_on_event, parse_send_msg, parse_transfer};
use crate::send_policy::Refusal;

/// A JSON request body read into `T`. Any content type is accepted (bots post with whatever
/// their HTTP library sets); an unreadable body is a 400, one over the limit a 413, both with
/// the reply API's JSON error body.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: TryFrom<Value, Error = String>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge
                } else if is_body_timeout(&rejection) {
                    ApiError::BodyTimeout
                } else {
                    ApiError::BadRequest("unreadable body".into())
                }
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
        T::try_from(value)
            .map(JsonBody)
            .map_err(ApiError::BadRequest)
    }
}

/// `POST /v1/messages`: a `kf/send_msg` body (`touser`, `open_kfid`, `msgid`?, and a message).
#[derive(Debug)]
pub(crate) struct SendMsgBody(pub(crate) SendMsg);

impl TryFrom<Value> for SendMsgBody {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        parse_send_msg(&value).map(SendMsgBody)
    }
}

/// `POST /v1/messages/on_event`: a `kf/send_msg_on_event` body (`code`, `msgid`?, and a
/// message).
#[derive(Debug)]
pub(crate) struct OnEventBody(pub(crate) OnEvent);

impl TryFrom<Value> for OnEventBody {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        parse_on_event(&value).map(OnEventBody)
    }
}

/// `POST /v1/service_state/trans`: `{"open_kfid","external_userid","service_state",
/// "servicer_userid"?,"message"?}` (a `{"action":"transfer",…}` body works too).
#[derive(Debug)]
pub(crate) struct TransBody(pub(crate) Transfer);

impl TryFrom<Value> for TransBody {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        parse_transfer(&value).map(TransBody)
    }
}

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .description(Some(description))
}

/// `msgid`: WeChat's `[0-9a-zA-Z_-]{1,32}`; with it, a repeat is answered from the record.
fn msgid() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9a-zA-Z_-]{1,32}$"))
        .description(Some(
            "Your id for the message. A repeated request with the same msgid is answered from \
             the stored result (header `Idempotent-Replay: true`) and nothing is sent twice; \
             without one a msgid is generated.",
        ))
}

/// `{fields} and an OutboundMessage`.
fn with_message(description: &str, fields: ObjectBuilder) -> RefOr<Schema> {
    AllOfBuilder::new()
        .item(fields)
        .item(Ref::from_schema_name(OutboundMessage::name()))
        .description(Some(description))
        .into()
}

impl PartialSchema for SendMsgBody {
    fn schema() -> RefOr<Schema> {
        with_message(
            "A `kf/send_msg` body (official doc 94677).",
            ObjectBuilder::new()
                .property("touser", string("The customer (external_userid)."))
                .required("touser")
                .property("open_kfid", string("The customer service account."))
                .required("open_kfid")
                .property("msgid", msgid()),
        )
    }
}

impl ToSchema for SendMsgBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((OutboundMessage::name().into(), OutboundMessage::schema()));
    }
}

impl PartialSchema for OnEventBody {
    fn schema() -> RefOr<Schema> {
        with_message(
            "A `kf/send_msg_on_event` body (official doc 95122).",
            ObjectBuilder::new()
                .property(
                    "code",
                    string("The event's code (welcome_code, msg_code, …); single use."),
                )
                .required("code")
                .property("msgid", msgid()),
        )
    }
}

impl ToSchema for OnEventBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((OutboundMessage::name().into(), OutboundMessage::schema()));
    }
}

impl PartialSchema for TransBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "A session transfer (`kf/service_state/trans`, official doc 94669).",
            ))
            .property("open_kfid", string("The customer service account."))
            .required("open_kfid")
            .property("external_userid", string("The customer."))
            .required("external_userid")
            .property(
                "service_state",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(4))
                    .description(Some(
                        "0 untreated, 1 the bot (智能助手), 2 queued, 3 a human servicer \
                         (needs servicer_userid), 4 ended (hands the session back, with the \
                         configured end message). Required unless `to` is given.",
                    )),
            )
            .property(
                "to",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["queue", "servicer", "auto"]))
                    .description(Some(
                        "Instead of service_state: queue (2), servicer (3, needs \
                         servicer_userid) or auto (an online, receiving servicer of the \
                         account, least recently assigned first; the queue when none takes it).",
                    )),
            )
            .property(
                "servicer_userid",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The servicer, for service_state 3.")),
            )
            .property(
                "message",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(2048))
                    .description(Some(
                        "A text (1-2048 bytes) sent with the msg_code the transfer returns.",
                    )),
            )
            .into()
    }
}

impl ToSchema for TransBody {}

/// The message part of a send body: `{"msgtype": T, T: {…}}`. The schema; the library's
/// `OutboundMessage` reads and validates it.
pub(crate) struct OutboundMessage;

impl PartialSchema for OutboundMessage {
    fn schema() -> RefOr<Schema> {
        let media = || {
            ObjectBuilder::new()
                .property(
                    "media_id",
                    string("A temporary media id of the matching type."),
                )
                .required("media_id")
        };
        let variants: [(&str, ObjectBuilder); 10] = [
            (
                "text",
                ObjectBuilder::new()
                    .property("content", string("1-2048 bytes."))
                    .required("content"),
            ),
            ("image", media()),
            ("voice", media()),
            ("video", media()),
            ("file", media()),
            (
                "link",
                ObjectBuilder::new()
                    .property("title", string("1-128 bytes."))
                    .required("title")
                    .property("desc", ObjectBuilder::new().schema_type(Type::String))
                    .property("url", string("The link."))
                    .required("url")
                    .property("thumb_media_id", string("Cover image (media id)."))
                    .required("thumb_media_id"),
            ),
            (
                "miniprogram",
                ObjectBuilder::new()
                    .property("appid", string("The mini program's appid."))
                    .required("appid")
                    .property("title", ObjectBuilder::new().schema_type(Type::String))
                    .property("thumb_media_id", string("Cover image (media id)."))
                    .required("thumb_media_id")
                    .property("pagepath", string("Page path."))
                    .required("pagepath"),
            ),
            (
                "msgmenu",
                ObjectBuilder::new()
                    .property("head_content", ObjectBuilder::new().schema_type(Type::String))
                    .property(
                        "list",
                        ArrayBuilder::new().items(ObjectBuilder::new().description(Some(
                            "A menu item: {\"type\": \"click\"|\"view\"|\"miniprogram\"|\"text\", <type>: {…}}.",
                        ))),
                    )
                    .property("tail_content", ObjectBuilder::new().schema_type(Type::String)),
            ),
            (
                "location",
                ObjectBuilder::new()
                    .property("latitude", ObjectBuilder::new().schema_type(Type::Number))
                    .required("latitude")
                    .property("longitude", ObjectBuilder::new().schema_type(Type::Number))
                    .required("longitude")
                    .property("name", ObjectBuilder::new().schema_type(Type::String))
                    .property("address", ObjectBuilder::new().schema_type(Type::String)),
            ),
            (
                "ca_link",
                ObjectBuilder::new()
                    .property("link_url", string("A customer-acquisition link."))
                    .required("link_url"),
            ),
        ];
        let mut one_of = OneOfBuilder::new().description(Some(
            "A message: `msgtype` and the payload of that name (official doc 94677). The \
             limits of the documentation are checked before anything is sent.",
        ));
        for (msgtype, payload) in variants {
            one_of = one_of.item(
                ObjectBuilder::new()
                    .property(
                        "msgtype",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some([msgtype])),
                    )
                    .required("msgtype")
                    .property(msgtype, payload)
                    .required(msgtype),
            );
        }
        one_of.into()
    }
}

impl ToSchema for OutboundMessage {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OutboundMessage")
    }
}

/// A send WeChat accepted (or its stored answer, for a repeated msgid).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SentBody {
    /// Always 0.
    pub(crate) errcode: i64,
    /// Always `ok`.
    pub(crate) errmsg: String,
    /// The message's msgid (yours, or the generated one).
    #[schema(value_type = String)]
    pub(crate) msgid: MsgId,
}

impl SentBody {
    pub(crate) fn new(msgid: MsgId) -> Self {
        SentBody {
            errcode: 0,
            errmsg: "ok".into(),
            msgid,
        }
    }
}

/// A transfer WeChat accepted.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransDone {
    /// Always 0.
    pub(crate) errcode: i64,
    /// Always `ok`.
    pub(crate) errmsg: String,
    /// The code WeChat returned for a `send_msg_on_event` (absent once used for `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msg_code: Option<String>,
    /// Whether `message` went out (present when the request had one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_sent: Option<bool>,
    /// The state the session went to (`to = auto` may end in the queue, 2).
    pub(crate) service_state: u32,
    /// The servicer who took the session (state 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) servicer_userid: Option<String>,
}

/// What the service knows about a customer's session, and whether a send would be allowed now.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionBody {
    /// The account.
    #[schema(value_type = String)]
    pub(crate) open_kfid: OpenKfId,
    /// The customer.
    #[schema(value_type = String)]
    pub(crate) external_userid: ExternalUserId,
    /// Whether the service has seen this customer (`false`: WeChat decides, `can_send` true).
    pub(crate) known: bool,
    /// Whether a send would be allowed now.
    pub(crate) can_send: bool,
    /// Messages left of the quota, when a send is allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) remaining: Option<u32>,
    /// When the 48-hour window closes (unix seconds), when a send is allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) window_closes_at: Option<u64>,
    /// Why a send would be refused, when it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refusal: Option<Refusal>,
    /// The session state (0-4), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) service_state: Option<u32>,
    /// The human servicer holding the session, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) servicer_userid: Option<UserId>,
    /// When the customer last wrote (unix seconds), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_customer_message_at: Option<u64>,
    /// Messages sent since the customer last wrote (for a known customer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sent_since_customer_message: Option<u32>,
}

impl SessionBody {
    /// The answer for a customer's view (`None`: never seen) at `now` (WeChat's clock).
    pub(crate) fn new(
        open_kfid: OpenKfId,
        external_userid: ExternalUserId,
        view: Option<&SessionView>,
        now: u64,
    ) -> Self {
        let mut out = SessionBody {
            open_kfid,
            external_userid,
            known: false,
            can_send: true,
            remaining: None,
            window_closes_at: None,
            refusal: None,
            service_state: None,
            servicer_userid: None,
            last_customer_message_at: None,
            sent_since_customer_message: None,
        };
        let Some(view) = view else {
            return out;
        };
        out.known = true;
        match view.can_send(now) {
            Ok(allowance) => {
                out.remaining = Some(allowance.remaining);
                out.window_closes_at = Some(allowance.window_closes_at);
            }
            Err(refusal) => {
                out.can_send = false;
                out.refusal = Some(Refusal::new(&refusal, true, None));
            }
        }
        out.service_state = view.state().map(|s| s.code());
        out.servicer_userid = view.servicer().cloned();
        out.last_customer_message_at = view.last_customer_message_at();
        out.sent_since_customer_message = Some(view.sent_since_customer_message());
        out
    }
}

/// The query of the listings (`GET /v1/messages`, `/v1/deliveries`, `/v1/sends`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this account.
    pub(crate) open_kfid: Option<String>,
    /// Only this customer (`external_userid`).
    #[serde(alias = "customer")]
    pub(crate) external_userid: Option<String>,
    /// Only what went wrong: undecodable messages and those whose delivery failed; deliveries
    /// whose last attempt failed; replies failed, refused or being retried.
    #[serde(default)]
    pub(crate) failed: bool,
    /// At most this many rows, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
}

/// The most rows a listing returns at once.
pub(crate) const MAX_LIST: usize = 1000;

impl ListParams {
    /// The store's query; an out-of-range limit is refused.
    pub(crate) fn query(self) -> Result<crate::store::ListQuery, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(ApiError::BadRequest(format!("limit must be 1-{MAX_LIST}")));
        }
        let id = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(crate::store::ListQuery {
            open_kfid: id(self.open_kfid).map(OpenKfId::from),
            external_userid: id(self.external_userid).map(ExternalUserId::from),
            failed: self.failed,
            limit,
        })
    }
}

/// `GET /v1/messages`: stored messages, newest first (ids and state, never content).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageList {
    /// The messages.
    pub(crate) messages: Vec<crate::store::MessageListing>,
}

/// `GET /v1/deliveries`: deliveries in flight or waiting for a retry, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    /// The deliveries.
    pub(crate) deliveries: Vec<crate::store::DeliveryListing>,
}

/// `GET /v1/sends`: queued replies (webhook responses, handoffs), newest first (ids and
/// state, never content).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SendList {
    /// The replies.
    pub(crate) sends: Vec<crate::store::SendListing>,
}

#[cfg(test)]
mod tests {
    use wechat_kf::session::ServiceState;

    use super::*;

    fn json(body: &SessionBody) -> Value {
        serde_json::to_value(body).unwrap()
    }

    #[test]
    fn an_unknown_customer_may_be_written_to_and_a_known_one_is_explained() {
        let unknown = json(&SessionBody::new("wk".into(), "wm".into(), None, 100));
        assert_eq!(unknown["known"], false);
        assert_eq!(unknown["can_send"], true);
        let mut view = SessionView::new();
        view.observe_customer_message(100, None, false);
        let open = json(&SessionBody::new(
            "wk".into(),
            "wm".into(),
            Some(&view),
            110,
        ));
        assert_eq!(open["can_send"], true);
        assert_eq!(open["remaining"], 5);
        view.observe_trans(ServiceState::Queued, None, None, 120);
        let queued = json(&SessionBody::new(
            "wk".into(),
            "wm".into(),
            Some(&view),
            130,
        ));
        assert_eq!(queued["can_send"], false);
        assert_eq!(queued["refusal"]["reason"], "queued");
        assert_eq!(queued["service_state"], 2);
        assert_eq!(queued["open_kfid"], "wk");
        assert_eq!(queued["external_userid"], "wm");
    }

    #[test]
    fn the_request_bodies_read_what_bot_replies_read() {
        let body = serde_json::json!({"touser": "wm", "open_kfid": "wk", "msgtype": "text", "text": {"content": "hi"}});
        let SendMsgBody(send) = SendMsgBody::try_from(body).unwrap();
        assert_eq!(
            (send.open_kfid.as_str(), send.touser.as_str()),
            ("wk", "wm")
        );
        assert!(!send.caller_msgid);
        let err = SendMsgBody::try_from(serde_json::json!({"touser": "wm"})).unwrap_err();
        assert!(err.contains("open_kfid"), "{err}");
        let err = TransBody::try_from(
            serde_json::json!({"open_kfid": "wk", "external_userid": "wm", "service_state": 3}),
        )
        .unwrap_err();
        assert!(err.contains("servicer_userid"), "{err}");
    }
}
