//! `kf/sync_msg`, `kf/send_msg`, `kf/send_msg_on_event`, `kf/recall_msg` (official docs
//! 94670, 94677, 95122; `recall_msg` has no official page: see `docs/vendor-notes.md`).

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::accounts::validate_open_kfid;
use super::execute::{Call, Expect, decode_with_envelope};
use super::outbound::{OutboundMessage, validate_msgid};
use super::{Client, ErrCode, Error};
use crate::message::SyncMsgResponse;
use crate::{ExternalUserId, MsgId, OpenKfId};

/// Message endpoints; see [`Client::messages`].
#[derive(Debug, Clone, Copy)]
pub struct Messages<'c> {
    client: &'c Client,
}

/// The voice media format for voice messages pulled by `sync_msg`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum VoiceFormat {
    /// 0: AMR (the server's default).
    #[default]
    Amr,
    /// 1: SILK.
    Silk,
}

impl Serialize for VoiceFormat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(match self {
            VoiceFormat::Amr => 0,
            VoiceFormat::Silk => 1,
        })
    }
}

/// `POST kf/sync_msg`. `open_kfid` is always sent (required by official doc 94670).
#[derive(Debug, Clone, Serialize)]
pub struct SyncMsgRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    voice_format: Option<VoiceFormat>,
    open_kfid: OpenKfId,
}

impl SyncMsgRequest {
    /// Pulls the account `open_kfid` from the oldest retained message (no cursor).
    pub fn new(open_kfid: impl Into<OpenKfId>) -> Self {
        Self {
            cursor: None,
            token: None,
            limit: None,
            voice_format: None,
            open_kfid: open_kfid.into(),
        }
    }

    /// Continues after `cursor` (a previous `next_cursor`; ≤ 64 bytes). An empty string means
    /// no cursor.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        let cursor = cursor.into();
        self.cursor = (!cursor.is_empty()).then_some(cursor);
        self
    }

    /// The `Token` of the latest callback (valid 10 minutes; ≤ 128 bytes). Without it the call
    /// is strictly rate limited.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Page size, 1–1000 (the server's default and maximum is 1000).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The format voice media will be downloaded in.
    pub fn voice_format(mut self, format: VoiceFormat) -> Self {
        self.voice_format = Some(format);
        self
    }

    /// The account being pulled.
    pub fn open_kfid(&self) -> &OpenKfId {
        &self.open_kfid
    }

    /// Whether a callback token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The same request without the callback token (after 95007).
    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_open_kfid(&self.open_kfid)?;
        if self.cursor.as_ref().is_some_and(|c| c.len() > 64) {
            return Err(Error::validation("cursor", "longer than 64 bytes"));
        }
        if self.token.as_ref().is_some_and(|t| t.len() > 128) {
            return Err(Error::validation("token", "longer than 128 bytes"));
        }
        if self.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err(Error::validation("limit", "must be 1..=1000"));
        }
        Ok(())
    }
}

/// `POST kf/send_msg`.
#[derive(Debug, Clone)]
pub struct SendMsgRequest {
    touser: ExternalUserId,
    open_kfid: OpenKfId,
    msgid: Option<MsgId>,
    message: OutboundMessage,
}

impl SendMsgRequest {
    /// Sends `message` from `open_kfid` to the customer `touser`.
    pub fn new(
        touser: impl Into<ExternalUserId>,
        open_kfid: impl Into<OpenKfId>,
        message: OutboundMessage,
    ) -> Self {
        Self {
            touser: touser.into(),
            open_kfid: open_kfid.into(),
            msgid: None,
            message,
        }
    }

    /// A caller-chosen msgid (≤ 32 bytes of `[0-9a-zA-Z_-]`, unique per account). With it the
    /// client may retry transient failures, because the server rejects a duplicate; without it,
    /// a failure that leaves open whether the message went out is never retried.
    pub fn msgid(mut self, msgid: impl Into<MsgId>) -> Self {
        self.msgid = Some(msgid.into());
        self
    }

    /// The message.
    pub fn message(&self) -> &OutboundMessage {
        &self.message
    }
}

impl Serialize for SendMsgRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("touser", &self.touser)?;
        map.serialize_entry("open_kfid", &self.open_kfid)?;
        // Never `"msgid": ""`: the server rejects it (official doc 94677; silenceper/wechat#563).
        if let Some(msgid) = &self.msgid {
            map.serialize_entry("msgid", msgid)?;
        }
        self.message.serialize_fields(&mut map)?;
        map.end()
    }
}

/// `POST kf/send_msg_on_event`: one `text` or `msgmenu` message against a welcome/msg code.
#[derive(Debug, Clone)]
pub struct SendMsgOnEventRequest {
    code: String,
    msgid: Option<MsgId>,
    message: OutboundMessage,
}

impl SendMsgOnEventRequest {
    /// Sends `message` (text or msgmenu) with a single-use `code` (`welcome_code` or
    /// `msg_code`).
    pub fn new(code: impl Into<String>, message: OutboundMessage) -> Self {
        Self {
            code: code.into(),
            msgid: None,
            message,
        }
    }

    /// A caller-chosen msgid.
    pub fn msgid(mut self, msgid: impl Into<MsgId>) -> Self {
        self.msgid = Some(msgid.into());
        self
    }
}

impl Serialize for SendMsgOnEventRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("code", &self.code)?;
        if let Some(msgid) = &self.msgid {
            map.serialize_entry("msgid", msgid)?;
        }
        self.message.serialize_fields(&mut map)?;
        map.end()
    }
}

/// Response of `send_msg` / `send_msg_on_event`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SendMsgResponse {
    /// The caller's msgid or one the server generated.
    #[serde(default)]
    pub msgid: MsgId,
    /// `true` when the response is not the server's: a retry after an ambiguous failure
    /// (timeout, 5xx, -1) was answered "duplicate msgid", which means the first attempt was
    /// accepted. Only possible for requests with a caller msgid.
    #[serde(skip)]
    pub duplicate_on_retry: bool,
}

/// `POST kf/recall_msg` (single source, see `docs/vendor-notes.md`): withdraws an API-sent message within 2 minutes.
#[derive(Debug, Clone, Serialize)]
pub struct RecallMsgRequest {
    open_kfid: OpenKfId,
    msgid: MsgId,
}

impl RecallMsgRequest {
    /// Recalls `msgid` (as returned by `send_msg`) sent from `open_kfid`.
    pub fn new(open_kfid: impl Into<OpenKfId>, msgid: impl Into<MsgId>) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            msgid: msgid.into(),
        }
    }
}

/// Whether `code` is the server's answer to a msgid it has already seen.
///
/// The spec says a duplicate msgid is "an error" without naming the code. We accept the codes
/// the emulator uses for it and the generic invalid-parameter code (40035) with which WeCom
/// rejects a repeated caller id. Only consulted after a retry that followed an ambiguous
/// failure, for a request whose msgid the caller chose.
pub(crate) fn is_duplicate_msgid(code: ErrCode) -> bool {
    matches!(code, ErrCode::InvalidParameter)
}

impl<'c> Messages<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/sync_msg`: one page. Malformed items land in
    /// [`SyncMsgResponse::invalid`] and never fail the call. Keep calling with `next_cursor`
    /// while `has_more` is true, even through empty pages (or use a
    /// [`Puller`](super::puller::Puller)).
    pub async fn sync(self, request: SyncMsgRequest) -> Result<SyncMsgResponse, Error> {
        request.validate()?;
        let call = Call::post("kf/sync_msg", &request)?;
        self.client
            .execute(&call, Expect::Json, |received| {
                decode_with_envelope(
                    "kf/sync_msg",
                    received,
                    SyncMsgResponse::from_slice,
                    |r: &mut SyncMsgResponse| (r.errcode, std::mem::take(&mut r.errmsg)),
                )
            })
            .await
    }

    /// `POST kf/send_msg`. The message is validated first ([`OutboundMessage::validate`] with
    /// the client's [`MenuRules`](super::outbound::MenuRules)); an invalid one is rejected without a
    /// request.
    ///
    /// Retries: without a msgid only failures that prove the message was not processed
    /// (connection refused, 45009/45033, token rejected) are retried. With a msgid every
    /// transient failure is retried, and if a retry is answered "duplicate msgid" the result is
    /// `Ok` with [`SendMsgResponse::duplicate_on_retry`] set.
    pub async fn send(self, request: SendMsgRequest) -> Result<SendMsgResponse, Error> {
        if request.touser.as_str().is_empty() {
            return Err(Error::validation("touser", "must not be empty"));
        }
        validate_open_kfid(&request.open_kfid)?;
        if let Some(msgid) = &request.msgid {
            validate_msgid(msgid.as_str())?;
        }
        request.message.validate(self.client.menu_rules())?;
        let call = Call::post("kf/send_msg", &request)?;
        self.send_call(call, request.msgid).await
    }

    /// `POST kf/send_msg_on_event`. Only `text` and `msgmenu` are allowed.
    pub async fn send_on_event(
        self,
        request: SendMsgOnEventRequest,
    ) -> Result<SendMsgResponse, Error> {
        if request.code.is_empty() {
            return Err(Error::validation("code", "must not be empty"));
        }
        if !matches!(
            request.message,
            OutboundMessage::Text(_) | OutboundMessage::MsgMenu(_)
        ) {
            return Err(Error::validation(
                "msgtype",
                format!(
                    "send_msg_on_event accepts text or msgmenu, not {}",
                    request.message.msgtype()
                ),
            ));
        }
        if let Some(msgid) = &request.msgid {
            validate_msgid(msgid.as_str())?;
        }
        request.message.validate(self.client.menu_rules())?;
        let call = Call::post("kf/send_msg_on_event", &request)?;
        self.send_call(call, request.msgid).await
    }

    async fn send_call(
        &self,
        mut call: Call,
        msgid: Option<MsgId>,
    ) -> Result<SendMsgResponse, Error> {
        if msgid.is_none() {
            call = call.non_idempotent();
        }
        let endpoint = call.endpoint;
        let (result, outcome) = self
            .client
            .execute_counted(&call, Expect::Json, |received| {
                super::execute::decode_json::<SendMsgResponse>(endpoint, received)
            })
            .await;
        match (result, msgid) {
            (Err(Error::Api { code, .. }), Some(msgid))
                if outcome.retried_after_ambiguous_failure && is_duplicate_msgid(code) =>
            {
                tracing::info!(
                    endpoint,
                    "duplicate msgid on retry: the first attempt was accepted"
                );
                Ok(SendMsgResponse {
                    msgid,
                    duplicate_on_retry: true,
                })
            }
            (Ok(mut response), Some(msgid)) => {
                if response.msgid.as_str().is_empty() {
                    response.msgid = msgid;
                }
                Ok(response)
            }
            (result, _) => result,
        }
    }

    /// `POST kf/recall_msg` (single source, see `docs/vendor-notes.md`): recalls an API-sent message (within 2 minutes; 95028 unknown
    /// msgid, 95029 too late).
    pub async fn recall(self, request: RecallMsgRequest) -> Result<(), Error> {
        validate_open_kfid(&request.open_kfid)?;
        if request.msgid.as_str().is_empty() {
            return Err(Error::validation("msgid", "must not be empty"));
        }
        let call = Call::post("kf/recall_msg", &request)?;
        self.client.execute_unit(call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn send_requests_omit_an_absent_msgid_and_nest_the_payload() {
        let request = SendMsgRequest::new("wm1", "wk1", OutboundMessage::text("hi"));
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"touser":"wm1","open_kfid":"wk1","msgtype":"text","text":{"content":"hi"}})
        );
        let request = request.msgid("m-1");
        assert_eq!(serde_json::to_value(&request).unwrap()["msgid"], "m-1");
    }

    #[test]
    fn sync_requests_always_carry_open_kfid_and_optional_voice_format() {
        let request = SyncMsgRequest::new("wk1");
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"open_kfid":"wk1"})
        );
        let request = request
            .cursor("c1")
            .token("t1")
            .limit(500)
            .voice_format(VoiceFormat::Silk);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"cursor":"c1","token":"t1","limit":500,"voice_format":1,"open_kfid":"wk1"})
        );
        assert!(SyncMsgRequest::new("wk1").limit(1001).validate().is_err());
        assert!(
            SyncMsgRequest::new("wk1")
                .cursor("c".repeat(65))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn event_requests_carry_the_code() {
        let request = SendMsgOnEventRequest::new("WELCOME", OutboundMessage::text("hello"));
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"code":"WELCOME","msgtype":"text","text":{"content":"hello"}})
        );
    }
}
