//! What the bot asks to send: `send_msg` / `send_msg_on_event` / transfer bodies (JSON, as the
//! bot writes them in a webhook response or to the reply API) read into the library's typed
//! requests, and queued as store records ([`NewReply`]). The deliverer and the puller (keyword
//! handoffs) queue through here and the sender reads the queue from the store, so neither of
//! them depends on the sender.

use serde_json::{Map, Value, json};
use wechat_kf::client::messages::{SendMsgOnEventRequest, SendMsgRequest};
use wechat_kf::client::outbound::{OutboundMessage, validate_msgid};
use wechat_kf::{ExternalUserId, MsgId, OpenKfId, UserId};

use crate::config::JoinerConfig;
use crate::store::{NewReply, ReplyEndpoint};

/// A fresh msgid: 32 hex characters, within WeChat's `[0-9a-zA-Z_-]{1,32}`.
pub(crate) fn new_msgid() -> MsgId {
    uuid::Uuid::new_v4().simple().to_string().into()
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("{key} must not be empty")),
        Some(_) => Err(format!("{key} must be a string")),
        None => Err(format!("{key} is required")),
    }
}

/// The caller's msgid (validated) or a generated one; `"msgid": ""` is rejected like WeChat does.
fn msgid_field(obj: &Map<String, Value>) -> Result<(MsgId, bool), String> {
    match obj.get("msgid") {
        None | Some(Value::Null) => Ok((new_msgid(), false)),
        Some(Value::String(s)) => {
            validate_msgid(s).map_err(|e| e.to_string())?;
            Ok((s.as_str().into(), true))
        }
        Some(_) => Err("msgid must be a string".into()),
    }
}

/// The typed message of a body: `{"msgtype": T, T: {...}}` (the library reads it).
pub(crate) fn outbound_from_json(obj: &Map<String, Value>) -> Result<OutboundMessage, String> {
    str_field(obj, "msgtype")?;
    serde_json::from_value(Value::Object(obj.clone())).map_err(|e| e.to_string())
}

/// A parsed `send_msg` body.
#[derive(Debug)]
pub(crate) struct SendMsg {
    pub(crate) request: SendMsgRequest,
    pub(crate) open_kfid: OpenKfId,
    pub(crate) touser: ExternalUserId,
    pub(crate) msgid: MsgId,
    /// Whether the caller chose the msgid (idempotency applies).
    pub(crate) caller_msgid: bool,
}

/// Reads a `send_msg` body.
pub(crate) fn parse_send_msg(value: &Value) -> Result<SendMsg, String> {
    let obj = value.as_object().ok_or("the body must be a JSON object")?;
    let touser = ExternalUserId::from(str_field(obj, "touser")?);
    let open_kfid = OpenKfId::from(str_field(obj, "open_kfid")?);
    let (msgid, caller_msgid) = msgid_field(obj)?;
    let message = outbound_from_json(obj)?;
    let request =
        SendMsgRequest::new(touser.clone(), open_kfid.clone(), message).msgid(msgid.clone());
    Ok(SendMsg {
        request,
        open_kfid,
        touser,
        msgid,
        caller_msgid,
    })
}

/// A parsed `send_msg_on_event` body.
#[derive(Debug)]
pub(crate) struct OnEvent {
    pub(crate) request: SendMsgOnEventRequest,
    pub(crate) code: String,
    pub(crate) msgid: MsgId,
    pub(crate) caller_msgid: bool,
}

/// Reads a `send_msg_on_event` body.
pub(crate) fn parse_on_event(value: &Value) -> Result<OnEvent, String> {
    let obj = value.as_object().ok_or("the body must be a JSON object")?;
    let code = str_field(obj, "code")?.to_owned();
    let (msgid, caller_msgid) = msgid_field(obj)?;
    let message = outbound_from_json(obj)?;
    let request = SendMsgOnEventRequest::new(code.as_str(), message).msgid(msgid.clone());
    Ok(OnEvent {
        request,
        code,
        msgid,
        caller_msgid,
    })
}

/// A transfer asked for by the bot (`{"action":"transfer",…}` in `replies`, or the body of
/// `POST /v1/service_state/trans`), or by a handoff keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) open_kfid: OpenKfId,
    pub(crate) external_userid: ExternalUserId,
    pub(crate) service_state: u32,
    pub(crate) servicer_userid: Option<UserId>,
    /// Choose the servicer (`"to": "auto"`): an online, receiving servicer of the account, the
    /// least recently assigned first; the queue when none takes it.
    pub(crate) auto: bool,
    /// A text sent with the `msg_code` the transfer returns.
    pub(crate) message: Option<String>,
}

impl Transfer {
    /// The body stored in the reply queue.
    pub(crate) fn to_json(&self) -> Value {
        let mut body = json!({
            "action": "transfer",
            "open_kfid": self.open_kfid,
            "external_userid": self.external_userid,
            "service_state": self.service_state,
        });
        if let Some(s) = &self.servicer_userid {
            body["servicer_userid"] = json!(s);
        }
        if let Some(m) = &self.message {
            body["message"] = json!(m);
        }
        if self.auto {
            body["to"] = json!("auto");
        }
        body
    }

    /// The ordering lane: the customer's, like their replies.
    pub(crate) fn lane(&self) -> String {
        format!("{}/{}", self.open_kfid, self.external_userid)
    }
}

/// Reads a transfer body: `open_kfid`, `external_userid`, and either `service_state` (0-4; 3
/// needs `servicer_userid`) or `to` (`queue`, `servicer` with `servicer_userid`, or `auto`);
/// optional `message`.
pub(crate) fn parse_transfer(value: &Value) -> Result<Transfer, String> {
    let obj = value.as_object().ok_or("the body must be a JSON object")?;
    let open_kfid = OpenKfId::from(str_field(obj, "open_kfid")?);
    let external_userid = ExternalUserId::from(str_field(obj, "external_userid")?);
    let servicer_userid = match obj.get("servicer_userid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(UserId::from(s.as_str())),
        Some(_) => return Err("servicer_userid must be a string".into()),
    };
    let (service_state, auto) = match obj.get("to") {
        None | Some(Value::Null) => {
            let state = obj
                .get("service_state")
                .and_then(Value::as_u64)
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s <= 4)
                .ok_or("service_state (0-4) or to (queue, servicer, auto) is required")?;
            (state, false)
        }
        Some(Value::String(to)) if to == "queue" => (2, false),
        Some(Value::String(to)) if to == "servicer" => (3, false),
        Some(Value::String(to)) if to == "auto" => (3, true),
        Some(_) => return Err("to must be queue, servicer or auto".into()),
    };
    if service_state == 3 && servicer_userid.is_none() && !auto {
        return Err("servicer_userid is required for service_state 3".into());
    }
    let message = match obj.get("message") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 2048 => Some(s.clone()),
        Some(_) => return Err("message must be a text of 1-2048 bytes".into()),
    };
    Ok(Transfer {
        open_kfid,
        external_userid,
        service_state,
        servicer_userid,
        auto,
        message,
    })
}

/// Where a queued reply came from: the delivery whose response carried it, and its index in
/// `replies` (only webhook replies have an index; their results are reported back).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReplyOrigin<'a> {
    pub(crate) delivery_id: Option<&'a str>,
    pub(crate) position: Option<u32>,
}

/// Turns one entry of a webhook response's `replies` into a queued reply. A body with `code`
/// goes to `send_msg_on_event`, one with `"action": "transfer"` to `service_state/trans`, any
/// other to `send_msg`. A msgid is added when missing, so a retry can never send the reply
/// twice. Texts wait for the joiner's window when it is on. Unusable entries are queued as
/// failed, with the reason (reported to the bot like any result).
pub(crate) fn queue_reply(
    value: Value,
    origin: ReplyOrigin<'_>,
    joiner: &JoinerConfig,
) -> NewReply {
    let delivery_id = origin.delivery_id.map(str::to_owned);
    let failed = |error: String, msgid: Option<&str>| {
        let mut result = result_head(origin, msgid);
        result.insert("status".into(), json!("failed"));
        result.insert("error".into(), json!(error));
        NewReply {
            endpoint: ReplyEndpoint::SendMsg,
            lane: String::new(),
            body: String::new(),
            msgid: msgid.unwrap_or_default().into(),
            delivery_id: delivery_id.clone(),
            position: origin.position,
            hold_ms: 0,
            error: Some(error),
            result: Some(Value::Object(result).to_string()),
        }
    };
    let Value::Object(mut obj) = value else {
        return failed("a reply must be a JSON object".into(), None);
    };
    let caller_msgid = obj.get("msgid").and_then(Value::as_str).map(str::to_owned);
    if obj.get("action").is_some() {
        if obj.get("action").and_then(Value::as_str) != Some("transfer") {
            return failed(
                "unknown action (only \"transfer\" is supported)".into(),
                caller_msgid.as_deref(),
            );
        }
        return match parse_transfer(&Value::Object(obj)) {
            Ok(transfer) => NewReply {
                endpoint: ReplyEndpoint::Trans,
                lane: transfer.lane(),
                body: transfer.to_json().to_string(),
                msgid: caller_msgid.map_or_else(new_msgid, MsgId::from),
                delivery_id,
                position: origin.position,
                hold_ms: 0,
                error: None,
                result: None,
            },
            Err(error) => failed(error, caller_msgid.as_deref()),
        };
    }
    let is_event = obj.contains_key("code");
    let parsed = if is_event {
        parse_on_event(&Value::Object(obj.clone()))
            .map(|p| (p.msgid, format!("code:{}", p.code), false))
    } else {
        parse_send_msg(&Value::Object(obj.clone())).map(|p| {
            let text = matches!(p.request.message(), OutboundMessage::Text(_));
            (p.msgid, format!("{}/{}", p.open_kfid, p.touser), text)
        })
    };
    match parsed {
        Ok((msgid, lane, text)) => {
            obj.insert("msgid".into(), Value::String(msgid.as_str().to_owned()));
            NewReply {
                endpoint: if is_event {
                    ReplyEndpoint::SendMsgOnEvent
                } else {
                    ReplyEndpoint::SendMsg
                },
                lane,
                body: Value::Object(obj).to_string(),
                msgid,
                delivery_id,
                position: origin.position,
                hold_ms: if text && joiner.enabled {
                    joiner.window.as_millis().min(i64::MAX as u128) as i64
                } else {
                    0
                },
                error: None,
                result: None,
            }
        }
        Err(error) => failed(error, caller_msgid.as_deref()),
    }
}

/// The first fields of a reply result: `msgid`, `delivery`, `index`.
pub(crate) fn result_head(origin: ReplyOrigin<'_>, msgid: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(msgid) = msgid.filter(|m| !m.is_empty()) {
        out.insert("msgid".into(), json!(msgid));
    }
    if let Some(delivery) = origin.delivery_id {
        out.insert("delivery".into(), json!(delivery));
    }
    if let Some(index) = origin.position {
        out.insert("index".into(), json!(index));
    }
    out
}

/// The echo bot's answer to a customer text: `echo: <text>`, cut to WeChat's 2048-byte limit.
pub(crate) fn echo_reply(open_kfid: &OpenKfId, touser: &ExternalUserId, content: &str) -> Value {
    const LIMIT: usize = 2048;
    let mut text = format!("echo: {content}");
    if text.len() > LIMIT {
        let mut end = LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    serde_json::json!({
        "touser": touser,
        "open_kfid": open_kfid,
        "msgtype": "text",
        "text": {"content": text},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn webhook(position: u32) -> ReplyOrigin<'static> {
        ReplyOrigin {
            delivery_id: Some("d1"),
            position: Some(position),
        }
    }

    #[test]
    fn every_outbound_type_reads_back_into_the_same_json() {
        let bodies = [
            json!({"msgtype":"text","text":{"content":"hi"}}),
            json!({"msgtype":"image","image":{"media_id":"M"}}),
            json!({"msgtype":"file","file":{"media_id":"M"}}),
            json!({"msgtype":"link","link":{"title":"t","url":"https://x","thumb_media_id":"M"}}),
            json!({"msgtype":"miniprogram","miniprogram":{"appid":"wx1","thumb_media_id":"M","pagepath":"p.html"}}),
            json!({"msgtype":"location","location":{"latitude":1.5,"longitude":2.5}}),
            json!({"msgtype":"ca_link","ca_link":{"link_url":"https://work.weixin.qq.com/ca/x"}}),
            json!({"msgtype":"msgmenu","msgmenu":{"head_content":"h","list":[
                {"type":"click","click":{"id":"1","content":"a"}},
                {"type":"view","view":{"url":"https://x","content":"b"}},
                {"type":"miniprogram","miniprogram":{"appid":"wx1","pagepath":"p","content":"c"}},
                {"type":"text","text":{"content":"d","no_newline":1}}],"tail_content":"t"}}),
        ];
        for body in bodies {
            let message = outbound_from_json(body.as_object().unwrap()).unwrap();
            assert_eq!(serde_json::to_value(&message).unwrap(), body);
        }
    }

    #[test]
    fn bad_bodies_are_explained() {
        let err = |v: Value| parse_send_msg(&v).unwrap_err();
        assert!(err(json!([])).contains("object"));
        assert!(
            err(json!({"open_kfid":"wk","msgtype":"text","text":{"content":"x"}}))
                .contains("touser")
        );
        assert!(
            err(json!({"touser":"wm","open_kfid":"wk","msgtype":"news","news":{}}))
                .contains("unsupported")
        );
        assert!(err(json!({"touser":"wm","open_kfid":"wk","msgid":"","msgtype":"text","text":{"content":"x"}})).contains("msgid"));
        assert!(err(json!({"touser":"wm","open_kfid":"wk","msgtype":"text"})).contains("missing"));
    }

    #[test]
    fn queued_replies_get_a_msgid_and_a_lane() {
        let off = JoinerConfig {
            enabled: false,
            window: std::time::Duration::from_millis(300),
        };
        let reply = queue_reply(
            json!({"touser":"wm1","open_kfid":"wk1","msgtype":"text","text":{"content":"x"}}),
            webhook(0),
            &off,
        );
        assert!(reply.error.is_none());
        assert_eq!(reply.lane, "wk1/wm1");
        assert_eq!(reply.msgid.as_str().len(), 32);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["msgid"], reply.msgid.as_str());
        assert_eq!(reply.hold_ms, 0);
        let event = queue_reply(
            json!({"code":"C1","msgid":"m1","msgtype":"text","text":{"content":"x"}}),
            ReplyOrigin::default(),
            &off,
        );
        assert_eq!(event.endpoint, ReplyEndpoint::SendMsgOnEvent);
        assert_eq!(event.lane, "code:C1");
        assert_eq!(event.msgid, "m1");
        let bad = queue_reply(json!("hello"), webhook(3), &off);
        assert!(bad.error.is_some());
        let result: Value = serde_json::from_str(bad.result.as_deref().unwrap()).unwrap();
        assert_eq!(result["status"], "failed");
        assert_eq!(result["index"], 3);
        assert_eq!(result["delivery"], "d1");
    }

    #[test]
    fn texts_wait_for_the_joiner_and_transfers_queue_in_the_customers_lane() {
        let on = JoinerConfig {
            enabled: true,
            window: std::time::Duration::from_millis(300),
        };
        let text = queue_reply(
            json!({"touser":"wm1","open_kfid":"wk1","msgtype":"text","text":{"content":"x"}}),
            webhook(0),
            &on,
        );
        assert_eq!(text.hold_ms, 300);
        let image = queue_reply(
            json!({"touser":"wm1","open_kfid":"wk1","msgtype":"image","image":{"media_id":"M"}}),
            webhook(1),
            &on,
        );
        assert_eq!(image.hold_ms, 0);
        let transfer = queue_reply(
            json!({"action":"transfer","open_kfid":"wk1","external_userid":"wm1","service_state":3,"servicer_userid":"zhangsan"}),
            webhook(2),
            &on,
        );
        assert_eq!(transfer.endpoint, ReplyEndpoint::Trans);
        assert_eq!(transfer.lane, "wk1/wm1");
        assert!(transfer.error.is_none());
        let no_servicer = queue_reply(
            json!({"action":"transfer","open_kfid":"wk1","external_userid":"wm1","service_state":3}),
            webhook(3),
            &on,
        );
        assert!(no_servicer.error.unwrap().contains("servicer_userid"));
        let unknown = queue_reply(json!({"action":"dance"}), webhook(4), &on);
        assert!(unknown.error.unwrap().contains("unknown action"));
    }

    #[test]
    fn echoes_are_cut_at_a_character_boundary() {
        let long = "好".repeat(1000);
        let reply = echo_reply(&"wk".into(), &"wm".into(), &long);
        let content = reply["text"]["content"].as_str().unwrap();
        assert!(content.len() <= 2048);
        assert!(content.starts_with("echo: 好"));
    }
}
