//! `send_msg`, `send_msg_on_event` and `recall_msg` (official docs 94677, 95122; `recall_msg`: see `docs/vendor-notes.md`).

use axum::response::Response;
use serde_json::{Value, json};

use super::Call;
use crate::Emulator;
use crate::clock::MINUTE;
use crate::errors::{self, ApiError, ApiResult, ok};
use crate::ids;
use crate::json::{Fields, is_id_charset, parse_object};
use crate::state::outbound::{self, Context};
use crate::state::{CodeKind, OutboxEntry, State};

/// recall_msg window (single source; see `docs/vendor-notes.md`).
const RECALL_WINDOW: i64 = 2 * MINUTE;

/// The caller's msgid: omitted is fine, empty is rejected (official doc 94677).
fn caller_msgid<'a>(f: &Fields<'a>) -> ApiResult<Option<&'a str>> {
    let Some(msgid) = f.str_opt("msgid")? else {
        return Ok(None);
    };
    if msgid.is_empty() {
        return Err(ApiError::invalid(
            "msgid",
            "must not be empty; omit the key instead",
        ));
    }
    if msgid.len() > 32 || !is_id_charset(msgid) {
        return Err(ApiError::invalid(
            "msgid",
            "at most 32 bytes of [0-9a-zA-Z_-]",
        ));
    }
    Ok(Some(msgid))
}

fn check_unique(s: &State, open_kfid: &str, msgid: Option<&str>) -> ApiResult<()> {
    if let Some(m) = msgid {
        if s.accounts
            .get(open_kfid)
            .is_some_and(|a| a.sent.contains_key(m))
        {
            return Err(ApiError::invalid("msgid", "duplicate msgid"));
        }
    }
    Ok(())
}

pub(super) fn send_msg(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let touser = f.str_req("touser")?;
    let open_kfid = f.str_req("open_kfid")?;
    let msgid = caller_msgid(&f)?;
    let msgtype = f.str_req("msgtype")?;
    let msgid = emu.with_state(|s, now| {
        s.account(open_kfid)?;
        check_unique(s, open_kfid, msgid)?;
        let ctx = Context {
            media: &s.media,
            appids: &s.corp.miniprogram_appids,
            now,
        };
        outbound::validate(msgtype, f, ctx)?;
        s.check_can_send(open_kfid, touser, now)?;
        let msgid = msgid.map_or_else(ids::sent_msgid, str::to_string);
        s.count_send(open_kfid, touser, now);
        s.record_sent(OutboxEntry {
            open_kfid: open_kfid.to_string(),
            external_userid: touser.to_string(),
            msgid: msgid.clone(),
            endpoint: "send_msg",
            code_kind: None,
            time_ms: now,
            request: Value::Object(body.clone()),
            recalled: false,
        });
        s.after_send(open_kfid, touser, &msgid, now);
        Ok::<_, ApiError>(msgid)
    })?;
    Ok(ok(json!({"msgid": msgid})))
}

pub(super) fn send_msg_on_event(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let code = f.str_req("code")?;
    let msgid = caller_msgid(&f)?;
    let msgtype = f.str_req("msgtype")?;
    let msgid = emu.with_state(|s, now| {
        let issued = match s.codes.get(code) {
            None => return Err(ApiError::invalid("code", "unknown code")),
            Some(c) if now >= c.expires_at => {
                return Err(ApiError::invalid("code", "code expired"));
            }
            Some(c) if c.used => return Err(ApiError::invalid("code", "code already used")),
            Some(c) => c.clone(),
        };
        let allowed: &[&str] = match issued.kind {
            CodeKind::Welcome | CodeKind::End => &["text", "msgmenu"],
            CodeKind::Queue | CodeKind::Connect => &["text"],
        };
        if outbound::OUTBOUND_TYPES.contains(&msgtype) && !allowed.contains(&msgtype) {
            return Err(ApiError::new(
                errors::INVALID_MSGTYPE,
                format!(
                    "msgtype {msgtype} not allowed with a {} code",
                    issued.kind.as_str()
                ),
            ));
        }
        let ctx = Context {
            media: &s.media,
            appids: &s.corp.miniprogram_appids,
            now,
        };
        outbound::validate(msgtype, f, ctx)?;
        let (open_kfid, ext) = (issued.open_kfid.as_str(), issued.external_userid.as_str());
        s.account(open_kfid)?;
        let state = s.session(open_kfid, ext).map_or(4, |x| x.state);
        let required = match issued.kind {
            CodeKind::Welcome => None,
            CodeKind::Queue => Some(2),
            CodeKind::Connect => Some(3),
            CodeKind::End => Some(4),
        };
        if required.is_some_and(|r| r != state) {
            return Err(ApiError::new(
                errors::STATE_FORBIDS_SENDING,
                format!(
                    "the session left the state of this {} code",
                    issued.kind.as_str()
                ),
            ));
        }
        check_unique(s, open_kfid, msgid)?;
        let msgid = msgid.map_or_else(ids::sent_msgid, str::to_string);
        if let Some(c) = s.codes.get_mut(code) {
            c.used = true;
        }
        if issued.kind == CodeKind::Welcome {
            if let Some(session) = s.session_mut(open_kfid, ext) {
                session.last_welcome_at = Some(now);
            }
        }
        s.record_sent(OutboxEntry {
            open_kfid: open_kfid.to_string(),
            external_userid: ext.to_string(),
            msgid: msgid.clone(),
            endpoint: "send_msg_on_event",
            code_kind: Some(issued.kind),
            time_ms: now,
            request: Value::Object(body.clone()),
            recalled: false,
        });
        s.after_send(open_kfid, ext, &msgid, now);
        Ok(msgid)
    })?;
    Ok(ok(json!({"msgid": msgid})))
}

pub(super) fn recall_msg(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let msgid = f.str_req("msgid")?;
    emu.with_state(|s, now| {
        let account = s.account_mut(open_kfid)?;
        let sent = match account.sent.get_mut(msgid) {
            Some(m) if !m.recalled => m,
            _ => {
                return Err(ApiError::new(
                    errors::RECALL_MSGID_NOT_FOUND,
                    "msgid not found",
                ));
            }
        };
        if now - sent.sent_at > RECALL_WINDOW {
            return Err(ApiError::new(
                errors::RECALL_WINDOW_EXPIRED,
                "more than 2 minutes since sending",
            ));
        }
        // It still counts toward the 5-message quota (single source): nothing is given back.
        sent.recalled = true;
        if let Some(entry) = s
            .outbox
            .iter_mut()
            .rev()
            .find(|e| e.open_kfid == open_kfid && e.msgid == msgid)
        {
            entry.recalled = true;
        }
        Ok(())
    })?;
    Ok(ok(json!({})))
}
