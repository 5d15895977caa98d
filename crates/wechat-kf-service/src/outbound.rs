//! Reading `send_msg` / `send_msg_on_event` bodies (JSON, as the bot writes them) into the
//! library's typed requests, and queueing replies.

use serde_json::{Map, Value};
use wechat_kf::client::{
    CaLink, Link, Location, MediaPayload, Miniprogram, MsgMenu, OutboundMessage,
    SendMsgOnEventRequest, SendMsgRequest, Text, validate_msgid,
};

use crate::store::{NewReply, ReplyEndpoint};

/// A fresh msgid: 32 hex characters, within WeChat's `[0-9a-zA-Z_-]{1,32}`.
pub(crate) fn new_msgid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
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
fn msgid_field(obj: &Map<String, Value>) -> Result<(String, bool), String> {
    match obj.get("msgid") {
        None | Some(Value::Null) => Ok((new_msgid(), false)),
        Some(Value::String(s)) => {
            validate_msgid(s).map_err(|e| e.to_string())?;
            Ok((s.clone(), true))
        }
        Some(_) => Err("msgid must be a string".into()),
    }
}

/// The typed message of a body: `{"msgtype": T, T: {...}}`.
pub(crate) fn outbound_from_json(obj: &Map<String, Value>) -> Result<OutboundMessage, String> {
    let msgtype = str_field(obj, "msgtype")?;
    let payload = obj
        .get(msgtype)
        .ok_or_else(|| format!("the {msgtype} payload (key {msgtype:?}) is missing"))?;
    fn typed<T: serde::de::DeserializeOwned>(msgtype: &str, payload: &Value) -> Result<T, String> {
        serde_json::from_value(payload.clone()).map_err(|e| format!("{msgtype}: {e}"))
    }
    Ok(match msgtype {
        "text" => OutboundMessage::Text(typed::<Text>(msgtype, payload)?),
        "image" => OutboundMessage::Image(typed::<MediaPayload>(msgtype, payload)?),
        "voice" => OutboundMessage::Voice(typed::<MediaPayload>(msgtype, payload)?),
        "video" => OutboundMessage::Video(typed::<MediaPayload>(msgtype, payload)?),
        "file" => OutboundMessage::File(typed::<MediaPayload>(msgtype, payload)?),
        "link" => OutboundMessage::Link(typed::<Link>(msgtype, payload)?),
        "miniprogram" => OutboundMessage::Miniprogram(typed::<Miniprogram>(msgtype, payload)?),
        "location" => OutboundMessage::Location(typed::<Location>(msgtype, payload)?),
        "ca_link" => OutboundMessage::CaLink(typed::<CaLink>(msgtype, payload)?),
        // Unknown item types decode as `MenuItem::Unknown`; the client's validation rejects them.
        "msgmenu" => OutboundMessage::MsgMenu(typed::<MsgMenu>(msgtype, payload)?),
        other => return Err(format!("unsupported msgtype {other:?}")),
    })
}

/// A parsed `send_msg` body.
#[derive(Debug)]
pub(crate) struct SendMsg {
    pub(crate) request: SendMsgRequest,
    pub(crate) open_kfid: String,
    pub(crate) touser: String,
    pub(crate) msgid: String,
    /// Whether the caller chose the msgid (idempotency applies).
    pub(crate) caller_msgid: bool,
}

/// Reads a `send_msg` body.
pub(crate) fn parse_send_msg(value: &Value) -> Result<SendMsg, String> {
    let obj = value.as_object().ok_or("the body must be a JSON object")?;
    let touser = str_field(obj, "touser")?.to_owned();
    let open_kfid = str_field(obj, "open_kfid")?.to_owned();
    let (msgid, caller_msgid) = msgid_field(obj)?;
    let message = outbound_from_json(obj)?;
    let request =
        SendMsgRequest::new(touser.as_str(), open_kfid.as_str(), message).msgid(msgid.as_str());
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
    pub(crate) msgid: String,
    pub(crate) caller_msgid: bool,
}

/// Reads a `send_msg_on_event` body.
pub(crate) fn parse_on_event(value: &Value) -> Result<OnEvent, String> {
    let obj = value.as_object().ok_or("the body must be a JSON object")?;
    let code = str_field(obj, "code")?.to_owned();
    let (msgid, caller_msgid) = msgid_field(obj)?;
    let message = outbound_from_json(obj)?;
    let request = SendMsgOnEventRequest::new(code.as_str(), message).msgid(msgid.as_str());
    Ok(OnEvent {
        request,
        code,
        msgid,
        caller_msgid,
    })
}

/// Turns one entry of a webhook response's `replies` into a queued reply. A body with `code`
/// goes to `send_msg_on_event`, any other to `send_msg`. A msgid is added when missing, so a
/// retry can never send the reply twice. Unusable entries are queued as failed, with the
/// reason.
pub(crate) fn queue_reply(value: Value, delivery_id: Option<&str>) -> NewReply {
    let delivery_id = delivery_id.map(str::to_owned);
    let failed = |error: String| NewReply {
        endpoint: ReplyEndpoint::SendMsg,
        lane: String::new(),
        body: String::new(),
        msgid: String::new(),
        delivery_id: delivery_id.clone(),
        error: Some(error),
    };
    let Value::Object(mut obj) = value else {
        return failed("a reply must be a JSON object".into());
    };
    let is_event = obj.contains_key("code");
    let parsed = if is_event {
        parse_on_event(&Value::Object(obj.clone())).map(|p| (p.msgid, format!("code:{}", p.code)))
    } else {
        parse_send_msg(&Value::Object(obj.clone()))
            .map(|p| (p.msgid, format!("{}/{}", p.open_kfid, p.touser)))
    };
    match parsed {
        Ok((msgid, lane)) => {
            obj.insert("msgid".into(), Value::String(msgid.clone()));
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
                error: None,
            }
        }
        Err(error) => failed(error),
    }
}

/// The echo bot's answer to a customer text: `echo: <text>`, cut to WeChat's 2048-byte limit.
pub(crate) fn echo_reply(open_kfid: &str, touser: &str, content: &str) -> Value {
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
        let reply = queue_reply(
            json!({"touser":"wm1","open_kfid":"wk1","msgtype":"text","text":{"content":"x"}}),
            Some("d1"),
        );
        assert!(reply.error.is_none());
        assert_eq!(reply.lane, "wk1/wm1");
        assert_eq!(reply.msgid.len(), 32);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["msgid"], reply.msgid.as_str());
        let event = queue_reply(
            json!({"code":"C1","msgid":"m1","msgtype":"text","text":{"content":"x"}}),
            None,
        );
        assert_eq!(event.endpoint, ReplyEndpoint::SendMsgOnEvent);
        assert_eq!(event.lane, "code:C1");
        assert_eq!(event.msgid, "m1");
        assert!(queue_reply(json!("hello"), None).error.is_some());
    }

    #[test]
    fn echoes_are_cut_at_a_character_boundary() {
        let long = "好".repeat(1000);
        let reply = echo_reply("wk", "wm", &long);
        let content = reply["text"]["content"].as_str().unwrap();
        assert!(content.len() <= 2048);
        assert!(content.starts_with("echo: 好"));
    }
}
