//! Sessions and their state machine (official doc 94669), the send window, and the WeCom-client
//! hooks that produce `session_status_change` and friends.

use serde_json::{Map, Value, json};

use super::{CodeKind, ControlError, EnterContext, State, WINDOW_48H, ordered_json};
use crate::clock::{HOUR, Millis, SECOND};
use crate::errors::{self, ApiError, ApiResult};
use crate::ids;
use crate::state::media::{self, Media, MediaType};

/// Messages allowed after each customer message.
pub const SENDS_PER_CUSTOMER_MESSAGE: u32 = 5;
/// Lifetime of welcome and end codes.
pub const SHORT_CODE_TTL: Millis = 20 * SECOND;
/// Largest accepted `send_time` override (the wire type is a 32-bit unix time).
pub const MAX_UNIX_SECONDS: i64 = u32::MAX as i64;
/// Lifetime of queue and connect codes.
pub const LONG_CODE_TTL: Millis = 48 * HOUR;

/// How a customer entered the chat (the fields of `enter_session`).
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The link's scene.
    pub scene: Option<String>,
    /// The developer-appended scene_param, as given.
    pub scene_param: Option<String>,
    /// Channels info, as given.
    pub wechat_channels: Option<Value>,
}

/// One (account, customer) session.
#[derive(Debug, Clone)]
pub struct Session {
    /// 0 new, 1 bot/API, 2 queued, 3 human, 4 ended / not started.
    pub state: u8,
    /// Servicer in state 3.
    pub servicer: Option<String>,
    /// Time of the last customer message (menu clicks included).
    pub last_customer_msg_at: Option<Millis>,
    /// Time of the last customer message that was not a menu click (95024).
    pub last_active_msg_at: Option<Millis>,
    /// API sends since that message.
    pub sends_since: u32,
    /// Whether this session already entered state 2 (queue code issued once).
    pub entered_queue: bool,
    /// Whether this session already entered state 3 (connect code issued once).
    pub entered_human: bool,
    /// The customer refuses messages (sends then fail with fail_type 10).
    pub refused: bool,
    /// When a welcome message was last sent.
    pub last_welcome_at: Option<Millis>,
    /// Current upgrade-service recommendation.
    pub upgrade: Option<Value>,
}

impl Default for Session {
    fn default() -> Session {
        Session {
            state: 4,
            servicer: None,
            last_customer_msg_at: None,
            last_active_msg_at: None,
            sends_since: 0,
            entered_queue: false,
            entered_human: false,
            refused: false,
            last_welcome_at: None,
            upgrade: None,
        }
    }
}

impl Session {
    fn end(&mut self) {
        self.state = 4;
        self.servicer = None;
        self.entered_queue = false;
        self.entered_human = false;
    }
}

/// Whether `service_state/trans` may go from `from` to `to` (4 is handled before: 95013).
/// 0/1/2 → 4 is allowed: the doc is silent (see `docs/vendor-notes.md`) and it is the only way for an
/// API-handled session to end.
pub fn transition_allowed(from: u8, to: u8) -> bool {
    matches!(
        (from, to),
        (0, 1)
            | (0, 2)
            | (1, 2)
            | (0, 3)
            | (1, 3)
            | (2, 3)
            | (3, 3)
            | (0, 4)
            | (1, 4)
            | (2, 4)
            | (3, 4)
    )
}

/// Control keys of `POST /emulator/customer/send` that are not copied into the item.
const CONTROL_KEYS: &[&str] = &[
    "open_kfid",
    "external_userid",
    "msgtype",
    "send_time",
    "msgid",
    "origin",
    "servicer_userid",
    "nickname",
    "avatar",
    "gender",
    "unionid",
];

fn hook_str<'a>(input: &'a Map<String, Value>, key: &str) -> Result<&'a str, ControlError> {
    match input.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(ControlError::BadRequest(format!(
            "{key} (a non-empty string) is required"
        ))),
    }
}

fn hook_str_opt<'a>(
    input: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ControlError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        _ => Err(ControlError::BadRequest(format!("{key} must be a string"))),
    }
}

impl State {
    /// The session, created in state 4 if new. The account must exist.
    pub fn session_mut(&mut self, open_kfid: &str, external_userid: &str) -> Option<&mut Session> {
        let account = self.accounts.get_mut(open_kfid)?;
        Some(
            account
                .sessions
                .entry(external_userid.to_string())
                .or_default(),
        )
    }

    /// The session if it exists.
    pub fn session(&self, open_kfid: &str, external_userid: &str) -> Option<&Session> {
        self.accounts.get(open_kfid)?.sessions.get(external_userid)
    }

    /// 40096 unless the customer is known to the corp.
    pub fn check_customer(&self, external_userid: &str) -> ApiResult<()> {
        if self.customers.contains_key(external_userid) {
            Ok(())
        } else {
            Err(ApiError::new(
                errors::INVALID_EXTERNAL_USERID,
                "invalid external userid",
            ))
        }
    }

    /// Effects of a customer message: state 4 → 0, window re-opened, count reset. A menu click
    /// does the same but does not count as the customer actively sending a message (95024).
    pub fn customer_message(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        time_ms: Millis,
        menu_click: bool,
    ) {
        let mut new_session = false;
        if let Some(session) = self.session_mut(open_kfid, external_userid) {
            if session.state == 4 {
                session.end();
                session.state = 0;
                new_session = true;
            }
            session.last_customer_msg_at = Some(
                session
                    .last_customer_msg_at
                    .map_or(time_ms, |t| t.max(time_ms)),
            );
            if !menu_click {
                session.last_active_msg_at = Some(
                    session
                        .last_active_msg_at
                        .map_or(time_ms, |t| t.max(time_ms)),
                );
            }
            session.sends_since = 0;
        }
        self.stats
            .customer_message(open_kfid, external_userid, time_ms, new_session);
    }

    /// `service_state/trans`: validates and applies; returns the msg_code if one is issued.
    pub fn trans(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        target: u64,
        servicer_userid: Option<&str>,
        now: Millis,
    ) -> ApiResult<Option<String>> {
        let account = self.account(open_kfid)?;
        self.check_customer(external_userid)?;
        if target > 4 {
            return Err(ApiError::invalid("service_state", "must be 0-4"));
        }
        let target = target as u8;
        let current = account.sessions.get(external_userid).map_or(4, |s| s.state);
        if current == 4 {
            return Err(ApiError::new(
                errors::SESSION_ENDED,
                "session already ended",
            ));
        }
        if !transition_allowed(current, target) {
            return Err(ApiError::new(
                errors::TRANSITION_NOT_ALLOWED,
                format!("service state transition {current} -> {target} not allowed"),
            ));
        }
        if target == 3 {
            let userid = servicer_userid
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::missing("servicer_userid"))?;
            match account.servicer(userid) {
                Some(s) if s.activated && s.status == 0 => {}
                Some(s) if s.activated => {
                    return Err(ApiError::new(
                        errors::SERVICER_NOT_RECEIVING,
                        "servicer stopped or suspended",
                    ));
                }
                _ => {
                    return Err(ApiError::new(
                        errors::NOT_A_SERVICER,
                        "not a servicer of this account",
                    ));
                }
            }
        }
        let Some(session) = self.session_mut(open_kfid, external_userid) else {
            return Err(ApiError::new(
                errors::OPEN_KFID_NOT_FOUND,
                "open_kfid not exist",
            ));
        };
        let kind = match target {
            2 if !session.entered_queue => Some(CodeKind::Queue),
            3 if !session.entered_human => Some(CodeKind::Connect),
            4 => Some(CodeKind::End),
            _ => None,
        };
        let assigned = current == 0 && (target == 1 || target == 3);
        match target {
            2 => {
                session.state = 2;
                session.entered_queue = true;
                session.servicer = None;
            }
            3 => {
                session.state = 3;
                session.entered_human = true;
                session.servicer = servicer_userid.map(str::to_string);
            }
            4 => session.end(),
            _ => session.state = target,
        }
        if assigned {
            self.stats.session_assigned(open_kfid, servicer_userid, now);
        }
        Ok(kind.map(|kind| {
            let ttl = if kind == CodeKind::End {
                SHORT_CODE_TTL
            } else {
                LONG_CODE_TTL
            };
            self.issue_code(kind, open_kfid, external_userid, ttl, now)
        }))
    }

    /// The `send_msg` preconditions: 40096, 95002, 95024, 95018, 95001 (in that order).
    pub fn check_can_send(
        &self,
        open_kfid: &str,
        external_userid: &str,
        now: Millis,
    ) -> ApiResult<()> {
        self.check_customer(external_userid)?;
        let session = self.session(open_kfid, external_userid);
        let state = session.map_or(4, |s| s.state);
        let last = session.and_then(|s| s.last_customer_msg_at);
        if state <= 1 && last.is_none_or(|t| now - t > WINDOW_48H) {
            return Err(ApiError::new(
                errors::SEND_WINDOW_EXPIRED,
                "more than 48 hours since the customer's last message",
            ));
        }
        let active = session.and_then(|s| s.last_active_msg_at);
        if state <= 1
            && self.require_active_customer_message
            && active.is_none_or(|t| now - t > WINDOW_48H)
        {
            return Err(ApiError::new(
                errors::NO_ACTIVE_CUSTOMER_MESSAGE,
                "the customer has not actively sent a message within 48 hours (menu clicks do not count)",
            ));
        }
        if state > 1 {
            return Err(ApiError::new(
                errors::STATE_FORBIDS_SENDING,
                "session state does not allow sending",
            ));
        }
        if session.map_or(0, |s| s.sends_since) >= SENDS_PER_CUSTOMER_MESSAGE {
            return Err(ApiError::new(
                errors::SEND_QUOTA_EXHAUSTED,
                "at most 5 messages after a customer message",
            ));
        }
        Ok(())
    }

    /// Counts an accepted `send_msg`: one more of the 5, state 0 → 1.
    pub fn count_send(&mut self, open_kfid: &str, external_userid: &str, now: Millis) {
        let mut assigned = false;
        if let Some(session) = self.session_mut(open_kfid, external_userid) {
            session.sends_since += 1;
            if session.state == 0 {
                session.state = 1;
                assigned = true;
            }
        }
        if assigned {
            self.stats.session_assigned(open_kfid, None, now);
        }
    }

    /// After an accepted send: a refusing customer produces `msg_send_fail` fail_type 10.
    pub fn after_send(&mut self, open_kfid: &str, external_userid: &str, msgid: &str, now: Millis) {
        let refused = self
            .session(open_kfid, external_userid)
            .is_some_and(|s| s.refused);
        if refused {
            self.append_event(
                open_kfid,
                json!({"event_type":"msg_send_fail","open_kfid":open_kfid,"external_userid":external_userid,"fail_msgid":msgid,"fail_type":10}),
                now,
            );
        }
    }

    /// Appends a message item written by a customer (origin 3) or a servicer (origin 5) from a
    /// control-API object. Returns its msgid.
    pub fn inject_message(
        &mut self,
        input: &Map<String, Value>,
        now: Millis,
    ) -> Result<String, ControlError> {
        let open_kfid = hook_str(input, "open_kfid")?;
        let external_userid = hook_str(input, "external_userid")?;
        let msgtype = hook_str(input, "msgtype")?;
        if msgtype == "event" {
            return Err(ControlError::BadRequest(
                "use POST /emulator/events for events".into(),
            ));
        }
        if !self.accounts.contains_key(open_kfid) {
            return Err(ControlError::NotFound(format!(
                "unknown open_kfid {open_kfid}"
            )));
        }
        let origin = match input.get("origin") {
            None | Some(Value::Null) => 3,
            Some(v) => match v.as_u64() {
                Some(o @ (3 | 5)) => o,
                _ => {
                    return Err(ControlError::BadRequest(
                        "origin must be 3 (customer) or 5 (servicer)".into(),
                    ));
                }
            },
        };
        let send_time_ms = match input.get("send_time") {
            None | Some(Value::Null) => now,
            Some(v) => v
                .as_i64()
                .filter(|s| (0..=MAX_UNIX_SECONDS).contains(s))
                .map(|s| s * 1000)
                .ok_or_else(|| {
                    ControlError::BadRequest("send_time must be unix seconds (0 ..= 2^32)".into())
                })?,
        };
        let msgid = match hook_str_opt(input, "msgid")? {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => ids::msgid(),
        };
        let servicer = hook_str_opt(input, "servicer_userid")?;
        if origin == 5 && servicer.is_none_or(str::is_empty) {
            return Err(ControlError::BadRequest(
                "servicer messages (origin 5) need servicer_userid".into(),
            ));
        }
        let payload = match (MediaType::parse(msgtype), input.get(msgtype)) {
            (Some(kind), None) => Some(json!({"media_id": self.placeholder_media(kind, now)})),
            (Some(kind), Some(Value::Object(p))) if !p.contains_key("media_id") => {
                let mut p = p.clone();
                p.insert(
                    "media_id".into(),
                    Value::from(self.placeholder_media(kind, now)),
                );
                Some(Value::Object(p))
            }
            (_, p) => p.cloned(),
        };
        if is_known_inbound(msgtype) && !payload.as_ref().is_some_and(Value::is_object) {
            return Err(ControlError::BadRequest(format!(
                "msgtype {msgtype} needs an object under the key {msgtype:?}"
            )));
        }
        let menu_click = msgtype == "text"
            && payload
                .as_ref()
                .and_then(|p| p.get("menu_id"))
                .is_some_and(|m| !m.is_null() && m.as_str() != Some(""));
        // Media above the sync_msg delivery limits arrives as a text notice (official doc 94670).
        let oversized = MediaType::parse(msgtype).filter(|&kind| {
            payload
                .as_ref()
                .and_then(|p| p.get("media_id"))
                .and_then(Value::as_str)
                .and_then(|id| self.media.get(id, now).ok())
                .is_some_and(|m| m.data.len() > media::sync_limit(kind))
        });
        let (out_type, payload) = match oversized {
            Some(kind) => (
                "text",
                Some(json!({"content": media::oversize_notice(kind)})),
            ),
            None => (msgtype, payload),
        };
        self.touch_customer(external_userid, Some(input));
        let origin_value = Value::from(origin);
        let servicer_value = servicer.map(Value::from);
        let msgid_value = Value::from(msgid.as_str());
        let kfid_value = Value::from(open_kfid);
        let ext_value = Value::from(external_userid);
        let time_value = Value::from(send_time_ms.div_euclid(1000));
        let type_value = Value::from(out_type);
        let mut fields: Vec<(&str, &Value)> = vec![
            ("msgid", &msgid_value),
            ("open_kfid", &kfid_value),
            ("external_userid", &ext_value),
            ("send_time", &time_value),
            ("origin", &origin_value),
        ];
        if let Some(s) = &servicer_value {
            fields.push(("servicer_userid", s));
        }
        fields.push(("msgtype", &type_value));
        if let Some(p) = &payload {
            fields.push((out_type, p));
        }
        for (k, v) in input {
            if k != msgtype && k != out_type && !CONTROL_KEYS.contains(&k.as_str()) {
                fields.push((k, v));
            }
        }
        let json = ordered_json(&fields);
        if origin == 3 {
            self.customer_message(open_kfid, external_userid, send_time_ms, menu_click);
        }
        self.append(open_kfid, send_time_ms, json, now);
        Ok(msgid)
    }

    fn placeholder_media(&mut self, kind: MediaType, now: Millis) -> String {
        let (name, data) = media::placeholder(kind);
        let content_type = media::content_type_for(kind, &data, None);
        self.media.insert(
            Media {
                kind,
                filename: name.to_string(),
                content_type,
                data: data.into(),
                created_at: now,
            },
            now,
            self.max_media_bytes,
        )
    }

    /// A customer opens the chat: `enter_session` (+ welcome_code when allowed).
    pub fn enter_session(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        entry: Entry,
        profile: Option<&Map<String, Value>>,
        now: Millis,
    ) -> Result<(String, Option<String>), ControlError> {
        let Entry {
            scene,
            scene_param,
            wechat_channels,
        } = entry;
        self.hook_account(open_kfid)?;
        self.touch_customer(external_userid, profile);
        let session = self
            .session_mut(open_kfid, external_userid)
            .ok_or_else(|| ControlError::NotFound("unknown account".into()))?;
        let recent = |t: Option<Millis>| t.is_some_and(|t| now - t <= WINDOW_48H);
        let welcome_allowed =
            !recent(session.last_customer_msg_at) && !recent(session.last_welcome_at);
        let code = welcome_allowed.then(|| {
            self.issue_code(
                CodeKind::Welcome,
                open_kfid,
                external_userid,
                SHORT_CODE_TTL,
                now,
            )
        });
        let mut event = Map::new();
        event.insert("event_type".into(), "enter_session".into());
        event.insert("open_kfid".into(), open_kfid.into());
        event.insert("external_userid".into(), external_userid.into());
        // Optional fields are omitted rather than sent empty.
        if let Some(s) = &scene {
            event.insert("scene".into(), s.as_str().into());
        }
        if let Some(p) = &scene_param {
            event.insert("scene_param".into(), p.as_str().into());
        }
        if let Some(c) = &code {
            event.insert("welcome_code".into(), c.as_str().into());
        }
        if let Some(ch) = &wechat_channels {
            event.insert("wechat_channels".into(), ch.clone());
        }
        if let Some(customer) = self.customers.get_mut(external_userid) {
            customer.last_enter = Some(EnterContext {
                at: now,
                scene,
                scene_param,
                wechat_channels,
            });
        }
        let msgid = self.append_event(open_kfid, Value::Object(event), now);
        Ok((msgid, code))
    }

    fn hook_session(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<&mut super::Session, ControlError> {
        let account = self.hook_account(open_kfid)?;
        account
            .sessions
            .get_mut(external_userid)
            .ok_or_else(|| ControlError::NotFound(format!("no session with {external_userid}")))
    }

    fn hook_servicer(&mut self, open_kfid: &str, userid: &str) -> Result<(), ControlError> {
        let account = self.hook_account(open_kfid)?;
        if account.servicer(userid).is_none() {
            return Err(ControlError::Conflict(format!(
                "{userid} is not a servicer of {open_kfid}"
            )));
        }
        Ok(())
    }

    /// A servicer picks a queued session (2 → 3): change_type 1 + connect msg_code.
    pub fn hook_pick(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        servicer: &str,
        now: Millis,
    ) -> Result<(String, String), ControlError> {
        self.hook_servicer(open_kfid, servicer)?;
        let session = self.hook_session(open_kfid, external_userid)?;
        if session.state != 2 {
            return Err(ControlError::Conflict(format!(
                "session is in state {}, not 2 (queued)",
                session.state
            )));
        }
        session.state = 3;
        session.entered_human = true;
        session.servicer = Some(servicer.to_string());
        let code = self.issue_code(
            CodeKind::Connect,
            open_kfid,
            external_userid,
            LONG_CODE_TTL,
            now,
        );
        let msgid = self.append_event(
            open_kfid,
            json!({"event_type":"session_status_change","open_kfid":open_kfid,"external_userid":external_userid,
                   "change_type":1,"new_servicer_userid":servicer,"msg_code":code}),
            now,
        );
        Ok((msgid, code))
    }

    /// A servicer transfers the session to another servicer (3 → 3): change_type 2.
    pub fn hook_transfer(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        new_servicer: &str,
        now: Millis,
    ) -> Result<String, ControlError> {
        self.hook_servicer(open_kfid, new_servicer)?;
        let session = self.hook_session(open_kfid, external_userid)?;
        if session.state != 3 {
            return Err(ControlError::Conflict(format!(
                "session is in state {}, not 3 (human)",
                session.state
            )));
        }
        let old = session
            .servicer
            .replace(new_servicer.to_string())
            .unwrap_or_default();
        Ok(self.append_event(
            open_kfid,
            json!({"event_type":"session_status_change","open_kfid":open_kfid,"external_userid":external_userid,
                   "change_type":2,"old_servicer_userid":old,"new_servicer_userid":new_servicer}),
            now,
        ))
    }

    /// A servicer ends the session (3 → 4): change_type 3 + end msg_code.
    pub fn hook_end(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        now: Millis,
    ) -> Result<(String, String), ControlError> {
        let session = self.hook_session(open_kfid, external_userid)?;
        if session.state != 3 {
            return Err(ControlError::Conflict(format!(
                "session is in state {}, not 3 (human)",
                session.state
            )));
        }
        let old = session.servicer.clone().unwrap_or_default();
        session.end();
        let code = self.issue_code(
            CodeKind::End,
            open_kfid,
            external_userid,
            SHORT_CODE_TTL,
            now,
        );
        let msgid = self.append_event(
            open_kfid,
            json!({"event_type":"session_status_change","open_kfid":open_kfid,"external_userid":external_userid,
                   "change_type":3,"old_servicer_userid":old,"msg_code":code}),
            now,
        );
        Ok((msgid, code))
    }

    /// A servicer sends from the WeCom client (origin 5). Into an ended session, or one held by
    /// someone else, this first re-joins it: change_type 4 and state 3. Returns every msgid appended.
    pub fn hook_servicer_send(
        &mut self,
        input: &Map<String, Value>,
        now: Millis,
    ) -> Result<Vec<String>, ControlError> {
        let open_kfid = hook_str(input, "open_kfid")?;
        let external_userid = hook_str(input, "external_userid")?;
        let servicer = hook_str(input, "servicer_userid")?;
        self.hook_servicer(open_kfid, servicer)?;
        self.touch_customer(external_userid, None);
        let session = self
            .session_mut(open_kfid, external_userid)
            .ok_or_else(|| ControlError::NotFound(format!("unknown open_kfid {open_kfid}")))?;
        let mut msgids = Vec::new();
        if session.state != 3 || session.servicer.as_deref() != Some(servicer) {
            let old = session.servicer.replace(servicer.to_string());
            session.state = 3;
            session.entered_human = true;
            let mut event = json!({"event_type":"session_status_change","open_kfid":open_kfid,
                "external_userid":external_userid,"change_type":4,"new_servicer_userid":servicer});
            if let Some(old) = old {
                event["old_servicer_userid"] = Value::from(old);
            }
            msgids.push(self.append_event(open_kfid, event, now));
        }
        let mut item = input.clone();
        item.insert("origin".into(), Value::from(5));
        msgids.push(self.inject_message(&item, now)?);
        Ok(msgids)
    }

    /// A servicer changes receiving status: `servicer_status_change` (1 receiving, 2 stopped).
    pub fn hook_servicer_status(
        &mut self,
        open_kfid: &str,
        userid: &str,
        status: u64,
        stop_type: u64,
        now: Millis,
    ) -> Result<String, ControlError> {
        if !(status == 1 || status == 2) || stop_type > 1 {
            return Err(ControlError::BadRequest(
                "status is 1 (receiving) or 2 (stopped); stop_type 0 or 1".into(),
            ));
        }
        let account = self.hook_account(open_kfid)?;
        let Some(s) = account.servicers.iter_mut().find(|s| s.userid == userid) else {
            return Err(ControlError::Conflict(format!(
                "{userid} is not a servicer of {open_kfid}"
            )));
        };
        // servicer/list uses 0/1 where the event uses 1/2 (official docs 94645, 94670).
        s.status = if status == 1 { 0 } else { 1 };
        s.stop_type = if status == 2 { stop_type as u8 } else { 0 };
        let mut event = json!({"event_type":"servicer_status_change","open_kfid":open_kfid,"servicer_userid":userid,"status":status});
        if status == 2 {
            event["stop_type"] = Value::from(stop_type);
        }
        Ok(self.append_event(open_kfid, event, now))
    }
}

/// Inbound types (official doc 94670) whose payload must be an object.
fn is_known_inbound(msgtype: &str) -> bool {
    matches!(
        msgtype,
        "text"
            | "image"
            | "voice"
            | "video"
            | "file"
            | "location"
            | "link"
            | "business_card"
            | "miniprogram"
            | "msgmenu"
            | "channels_shop_product"
            | "channels_shop_order"
            | "merged_msg"
            | "channels"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn setup() -> (State, String) {
        let mut state = State::new(&Config::generated());
        let id = state.create_account("客服".into(), None, None);
        state
            .accounts
            .get_mut(&id)
            .unwrap()
            .servicers
            .push(crate::state::Servicer {
                userid: "zhangsan".into(),
                status: 0,
                stop_type: 0,
                activated: true,
            });
        (state, id)
    }

    fn customer_says(state: &mut State, id: &str, now: Millis) {
        let input = json!({"open_kfid": id, "external_userid": "wmC", "msgtype": "text", "text": {"content": "hi"}});
        state
            .inject_message(input.as_object().unwrap(), now)
            .unwrap();
    }

    #[test]
    fn the_transition_table_matches_the_spec() {
        for from in 0..4u8 {
            for to in 0..5u8 {
                let expected = matches!(
                    (from, to),
                    (0, 1..=4) | (1, 2..=4) | (2, 3..=4) | (3, 3..=4)
                );
                assert_eq!(transition_allowed(from, to), expected, "{from}->{to}");
            }
        }
    }

    #[test]
    fn a_customer_message_opens_the_session_and_five_sends_close_the_quota() {
        let (mut s, id) = setup();
        assert_eq!(s.check_can_send(&id, "wmC", 0).unwrap_err().code, 40096);
        customer_says(&mut s, &id, 0);
        assert_eq!(s.session(&id, "wmC").unwrap().state, 0);
        for _ in 0..5 {
            s.check_can_send(&id, "wmC", 1).unwrap();
            s.count_send(&id, "wmC", 1);
        }
        assert_eq!(s.session(&id, "wmC").unwrap().state, 1);
        assert_eq!(s.check_can_send(&id, "wmC", 1).unwrap_err().code, 95001);
        customer_says(&mut s, &id, 2);
        assert!(s.check_can_send(&id, "wmC", 2).is_ok());
        assert_eq!(
            s.check_can_send(&id, "wmC", 2 + WINDOW_48H + 1)
                .unwrap_err()
                .code,
            95002
        );
    }

    #[test]
    fn menu_clicks_alone_do_not_allow_sending_but_an_earlier_message_does() {
        let (mut s, id) = setup();
        let click = json!({"open_kfid": id, "external_userid": "wmC", "msgtype": "text",
                           "text": {"content": "转人工", "menu_id": "101"}});
        s.inject_message(click.as_object().unwrap(), 0).unwrap();
        assert_eq!(s.session(&id, "wmC").unwrap().state, 0);
        assert_eq!(s.check_can_send(&id, "wmC", 1).unwrap_err().code, 95024);
        customer_says(&mut s, &id, 2);
        s.inject_message(click.as_object().unwrap(), 3).unwrap();
        assert!(s.check_can_send(&id, "wmC", 4).is_ok());
        s.inject_message(click.as_object().unwrap(), 2 + WINDOW_48H)
            .unwrap();
        assert_eq!(
            s.check_can_send(&id, "wmC", 3 + WINDOW_48H)
                .unwrap_err()
                .code,
            95024
        );
        s.require_active_customer_message = false;
        assert!(s.check_can_send(&id, "wmC", 3 + WINDOW_48H).is_ok());
    }

    #[test]
    fn trans_issues_codes_on_first_entry_only() {
        let (mut s, id) = setup();
        customer_says(&mut s, &id, 0);
        assert!(s.trans(&id, "wmC", 1, None, 0).unwrap().is_none());
        assert!(s.trans(&id, "wmC", 2, None, 0).unwrap().is_some());
        assert!(
            s.trans(&id, "wmC", 3, Some("zhangsan"), 0)
                .unwrap()
                .is_some()
        );
        assert_eq!(s.trans(&id, "wmC", 2, None, 0).unwrap_err().code, 95016);
        assert!(
            s.trans(&id, "wmC", 3, Some("zhangsan"), 0)
                .unwrap()
                .is_none()
        );
        assert!(s.trans(&id, "wmC", 4, None, 0).unwrap().is_some());
        assert_eq!(s.trans(&id, "wmC", 1, None, 0).unwrap_err().code, 95013);
        assert_eq!(s.check_can_send(&id, "wmC", 0).unwrap_err().code, 95018);
    }

    #[test]
    fn trans_to_a_human_checks_the_servicer() {
        let (mut s, id) = setup();
        customer_says(&mut s, &id, 0);
        assert_eq!(
            s.trans(&id, "wmC", 3, Some("lisi"), 0).unwrap_err().code,
            95014
        );
        assert_eq!(s.trans(&id, "wmC", 3, None, 0).unwrap_err().code, 40063);
        s.hook_servicer_status(&id, "zhangsan", 2, 1, 0).unwrap();
        assert_eq!(
            s.trans(&id, "wmC", 3, Some("zhangsan"), 0)
                .unwrap_err()
                .code,
            95019
        );
    }

    #[test]
    fn a_welcome_code_is_only_offered_without_recent_messages() {
        let (mut s, id) = setup();
        let (_, code) = s
            .enter_session(&id, "wmC", Entry::default(), None, 0)
            .unwrap();
        assert!(code.is_some());
        customer_says(&mut s, &id, 1000);
        let (_, code) = s
            .enter_session(&id, "wmC", Entry::default(), None, 2000)
            .unwrap();
        assert!(code.is_none());
        let (_, code) = s
            .enter_session(&id, "wmC", Entry::default(), None, 2000 + WINDOW_48H)
            .unwrap();
        assert!(code.is_some());
    }

    #[test]
    fn a_servicer_message_into_an_ended_session_rejoins_it() {
        let (mut s, id) = setup();
        customer_says(&mut s, &id, 0);
        let input = json!({"open_kfid": id, "external_userid": "wmC", "servicer_userid": "zhangsan", "msgtype": "text", "text": {"content": "hello"}});
        let ids = s.hook_servicer_send(input.as_object().unwrap(), 1).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(s.session(&id, "wmC").unwrap().state, 3);
        let ids = s.hook_servicer_send(input.as_object().unwrap(), 2).unwrap();
        assert_eq!(ids.len(), 1);
    }
}
