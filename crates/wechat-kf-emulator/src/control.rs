//! The control API under `/emulator/`: drive the emulated WeChat side from tests (customers,
//! servicers, clock, faults) and inspect what the client did. Everything is JSON; errors answer
//! 400 / 404 / 409 with `{"error": "..."}`. The same operations exist as methods on
//! [`crate::Emulator`].

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

use crate::Emulator;
use crate::clock::Millis;
use crate::config::KfMode;
use crate::ids;
use crate::json::is_id_charset;
use crate::state::media::{self, Media, MediaType};
use crate::state::session::Entry;
use crate::state::{ControlError, State as EmuState, ordered_json};

/// Largest control request (10,000+ messages fit easily).
const MAX_CONTROL_BODY: usize = 512 * 1024 * 1024;

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        (status, axum::Json(json!({"error": self.to_string()}))).into_response()
    }
}

type Reply = Result<axum::Json<Value>, ControlError>;

fn parse(body: &[u8]) -> Result<Value, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("invalid JSON: {e}")))
}

fn object(v: &Value) -> Result<&Map<String, Value>, ControlError> {
    v.as_object()
        .ok_or_else(|| ControlError::BadRequest("expected a JSON object".into()))
}

fn string<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ControlError> {
    m.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ControlError::BadRequest(format!("{key} (a non-empty string) is required")))
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Object or array of objects → list.
fn items(v: &Value) -> Result<Vec<&Map<String, Value>>, ControlError> {
    match v {
        Value::Array(list) => list.iter().map(object).collect(),
        other => Ok(vec![object(other)?]),
    }
}

/// The `/emulator` routes.
pub(crate) fn router() -> Router<Emulator> {
    Router::new()
        .route("/emulator/accounts", post(create_account))
        .route("/emulator/customer/send", post(customer_send))
        .route("/emulator/customer/enter_session", post(enter_session))
        .route("/emulator/customer/recall", post(customer_recall))
        .route("/emulator/customer/refuse", post(customer_refuse))
        .route("/emulator/servicer/pick", post(servicer_pick))
        .route("/emulator/servicer/transfer", post(servicer_transfer))
        .route("/emulator/servicer/end", post(servicer_end))
        .route("/emulator/servicer/send", post(servicer_send))
        .route("/emulator/servicer/status", post(servicer_status))
        .route("/emulator/servicer/recall", post(servicer_recall))
        .route("/emulator/servicer/reject", post(servicer_reject))
        .route("/emulator/events", post(events))
        .route("/emulator/robots", post(create_robot).get(robots))
        .route("/emulator/outbox", get(outbox))
        .route(
            "/emulator/faults",
            post(add_faults).get(list_faults).delete(clear_faults),
        )
        .route("/emulator/state", get(state))
        .route("/emulator/clock", get(clock))
        .route("/emulator/clock/advance", post(clock_advance))
        .route("/emulator/callback/verify", post(callback_verify))
        .route(
            "/emulator/callback/url",
            get(callback_url).put(set_callback_url),
        )
        .route("/emulator/callback/token", post(callback_token))
        .route("/emulator/callback/auth_change", post(callback_auth_change))
        .route("/emulator/corp", get(corp).put(set_corp))
        .route("/emulator/callbacks", get(callbacks))
        .route("/emulator/tokens/revoke", post(tokens_revoke))
        .route("/emulator/media", post(upload_media))
        .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY))
}

async fn create_account(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let name = string(m, "name")?;
    if name.chars().count() > 16 {
        return Err(ControlError::BadRequest(
            "name has at most 16 characters".into(),
        ));
    }
    let fixed = opt_string(m, "open_kfid");
    if let Some(id) = &fixed {
        if !ids::looks_like_open_kfid(id) {
            return Err(ControlError::BadRequest(
                "open_kfid must look like wk… (≤ 64 bytes)".into(),
            ));
        }
    }
    let id = emu.with_state(|s, _| s.create_account(name.to_string(), None, fixed));
    Ok(axum::Json(json!({"open_kfid": id})))
}

/// Appends customer messages (one object or an array). Used by the route and by
/// [`Emulator::customer_send`].
pub(crate) fn customer_send_value(emu: &Emulator, v: &Value) -> Result<Vec<String>, ControlError> {
    let list = items(v)?;
    emu.with_state(|s, now| {
        let mut ids = Vec::with_capacity(list.len());
        for m in list {
            ids.push(s.inject_message(m, now)?);
        }
        Ok(ids)
    })
}

async fn customer_send(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let ids = customer_send_value(&emu, &v)?;
    Ok(axum::Json(json!({"msgids": ids})))
}

async fn enter_session(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let external_userid = string(m, "external_userid")?.to_string();
    let (open_kfid, scene, scene_param) = match opt_string(m, "url") {
        Some(url) => {
            // A contact link from add_contact_way, optionally with &scene_param= appended.
            let (base, param) = match url.split_once("&scene_param=") {
                Some((b, p)) => (b.to_string(), Some(p.to_string())),
                None => (url.clone(), None),
            };
            let link = emu.with_state(|s, _| s.contact_links.get(&base).cloned());
            let Some((open_kfid, scene)) = link else {
                return Err(ControlError::Conflict(
                    "link signature check failed (unknown or edited link): no enter_session".into(),
                ));
            };
            if param.is_some() && scene.is_none() {
                return Err(ControlError::Conflict(
                    "scene_param needs a link created with a scene".into(),
                ));
            }
            if param.as_ref().is_some_and(|p| p.len() > 128) {
                return Err(ControlError::BadRequest(
                    "scene_param is at most 128 bytes (URL-encoded)".into(),
                ));
            }
            (open_kfid, scene, param)
        }
        None => (
            string(m, "open_kfid")?.to_string(),
            opt_string(m, "scene"),
            opt_string(m, "scene_param"),
        ),
    };
    let channels = m.get("wechat_channels").filter(|c| !c.is_null()).cloned();
    let (msgid, code) = emu.with_state(|s, now| {
        let entry = Entry {
            scene,
            scene_param,
            wechat_channels: channels,
        };
        s.enter_session(&open_kfid, &external_userid, entry, Some(m), now)
    })?;
    let mut out = json!({"msgid": msgid});
    if let Some(c) = code {
        out["welcome_code"] = Value::from(c);
    }
    Ok(axum::Json(out))
}

/// Appends an event built from fields, checking the account exists.
fn simple_event(emu: &Emulator, open_kfid: &str, event: Value) -> Result<String, ControlError> {
    emu.with_state(|s, now| {
        s.hook_account(open_kfid)?;
        Ok(s.append_event(open_kfid, event, now))
    })
}

async fn customer_recall(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let open_kfid = string(m, "open_kfid")?;
    let ext = string(m, "external_userid")?;
    let msgid = string(m, "recall_msgid").or_else(|_| string(m, "msgid"))?;
    let event = json!({"event_type":"user_recall_msg","open_kfid":open_kfid,"external_userid":ext,"recall_msgid":msgid});
    Ok(axum::Json(
        json!({"msgid": simple_event(&emu, open_kfid, event)?}),
    ))
}

async fn customer_refuse(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let open_kfid = string(m, "open_kfid")?.to_string();
    let ext = string(m, "external_userid")?.to_string();
    let refuse = m.get("refuse").and_then(Value::as_bool).unwrap_or(true);
    emu.with_state(|s, _| {
        s.hook_account(&open_kfid)?;
        s.touch_customer(&ext, None);
        if let Some(session) = s.session_mut(&open_kfid, &ext) {
            session.refused = refuse;
        }
        Ok::<_, ControlError>(())
    })?;
    Ok(axum::Json(json!({"refuse": refuse})))
}

async fn servicer_pick(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let (kf, ext, sv) = (
        string(m, "open_kfid")?,
        string(m, "external_userid")?,
        string(m, "servicer_userid")?,
    );
    let (msgid, code) = emu.with_state(|s, now| s.hook_pick(kf, ext, sv, now))?;
    Ok(axum::Json(json!({"msgid": msgid, "msg_code": code})))
}

async fn servicer_transfer(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let (kf, ext) = (string(m, "open_kfid")?, string(m, "external_userid")?);
    let new = string(m, "new_servicer_userid").or_else(|_| string(m, "servicer_userid"))?;
    let msgid = emu.with_state(|s, now| s.hook_transfer(kf, ext, new, now))?;
    Ok(axum::Json(json!({"msgid": msgid})))
}

async fn servicer_end(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let (kf, ext) = (string(m, "open_kfid")?, string(m, "external_userid")?);
    let (msgid, code) = emu.with_state(|s, now| s.hook_end(kf, ext, now))?;
    Ok(axum::Json(json!({"msgid": msgid, "msg_code": code})))
}

async fn servicer_send(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let list = items(&v)?;
    let ids = emu.with_state(|s, now| {
        let mut ids = Vec::new();
        for m in list {
            ids.extend(s.hook_servicer_send(m, now)?);
        }
        Ok::<_, ControlError>(ids)
    })?;
    Ok(axum::Json(json!({"msgids": ids})))
}

async fn servicer_status(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let (kf, sv) = (string(m, "open_kfid")?, string(m, "servicer_userid")?);
    let status = m
        .get("status")
        .and_then(Value::as_u64)
        .ok_or_else(|| ControlError::BadRequest("status (1 or 2) is required".into()))?;
    let stop_type = m.get("stop_type").and_then(Value::as_u64).unwrap_or(0);
    let msgid = emu.with_state(|s, now| s.hook_servicer_status(kf, sv, status, stop_type, now))?;
    Ok(axum::Json(json!({"msgid": msgid})))
}

async fn servicer_recall(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let (kf, ext, sv) = (
        string(m, "open_kfid")?,
        string(m, "external_userid")?,
        string(m, "servicer_userid")?,
    );
    let msgid = string(m, "recall_msgid").or_else(|_| string(m, "msgid"))?;
    let event = json!({"event_type":"servicer_recall_msg","open_kfid":kf,"external_userid":ext,"recall_msgid":msgid,"servicer_userid":sv});
    Ok(axum::Json(json!({"msgid": simple_event(&emu, kf, event)?})))
}

async fn servicer_reject(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let (kf, ext, sv) = (
        string(m, "open_kfid")?,
        string(m, "external_userid")?,
        string(m, "servicer_userid")?,
    );
    let switch = m.get("reject_switch").and_then(Value::as_u64).unwrap_or(1);
    if switch > 1 {
        return Err(ControlError::BadRequest("reject_switch is 0 or 1".into()));
    }
    let event = json!({"event_type":"reject_customer_msg_switch_change","open_kfid":kf,"external_userid":ext,"servicer_userid":sv,"reject_switch":switch});
    Ok(axum::Json(json!({"msgid": simple_event(&emu, kf, event)?})))
}

/// Appends raw events: either the event object itself (`{"event_type": …, "open_kfid": …}`) or a
/// whole item (`{"msgtype":"event","event":{…}}`), one or an array.
pub(crate) fn events_value(emu: &Emulator, v: &Value) -> Result<Vec<String>, ControlError> {
    let list = items(v)?;
    emu.with_state(|s, now| list.into_iter().map(|m| inject_event(s, m, now)).collect())
}

fn inject_event(
    s: &mut EmuState,
    m: &Map<String, Value>,
    now: Millis,
) -> Result<String, ControlError> {
    let (event, envelope) = match m.get("event") {
        Some(e @ Value::Object(_)) => (e, Some(m)),
        _ => (&Value::Null, None),
    };
    let event_obj = match envelope {
        Some(_) => event.as_object(),
        None => Some(m),
    }
    .ok_or_else(|| ControlError::BadRequest("event must be an object".into()))?;
    let open_kfid = string(event_obj, "open_kfid")?;
    if !event_obj.contains_key("event_type") {
        return Err(ControlError::BadRequest("event_type is required".into()));
    }
    s.hook_account(open_kfid)?;
    let get = |k: &str| {
        envelope
            .and_then(|e| e.get(k))
            .filter(|v| !v.is_null())
            .cloned()
    };
    let msgid = get("msgid").unwrap_or_else(|| Value::from(ids::msgid()));
    let send_time = get("send_time").unwrap_or_else(|| Value::from(now / 1000));
    let time_ms = match send_time.as_i64() {
        Some(t) if (0..=crate::state::session::MAX_UNIX_SECONDS).contains(&t) => t * 1000,
        _ => {
            return Err(ControlError::BadRequest(
                "send_time must be unix seconds (0 ..= 2^32)".into(),
            ));
        }
    };
    let origin = get("origin").unwrap_or_else(|| Value::from(4));
    let event_value = Value::Object(event_obj.clone());
    let mut fields: Vec<(&str, &Value)> = vec![
        ("msgid", &msgid),
        ("send_time", &send_time),
        ("origin", &origin),
    ];
    let msgtype = Value::from("event");
    fields.push(("msgtype", &msgtype));
    fields.push(("event", &event_value));
    if let Some(env) = envelope {
        for (k, v) in env {
            if !["msgid", "send_time", "origin", "msgtype", "event"].contains(&k.as_str()) {
                fields.push((k, v));
            }
        }
    }
    let json = ordered_json(&fields);
    s.append(open_kfid, time_ms, json, now);
    Ok(msgid
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| msgid.to_string()))
}

async fn events(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    Ok(axum::Json(json!({"msgids": events_value(&emu, &v)?})))
}

async fn create_robot(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let name = opt_string(object(&v)?, "name").unwrap_or_else(|| "robot".into());
    let key = emu.create_robot(&name);
    let url = format!("/cgi-bin/webhook/send?key={key}");
    Ok(axum::Json(json!({"key": key, "path": url})))
}

async fn robots(State(emu): State<Emulator>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let key = q.get("key").map(String::as_str).filter(|s| !s.is_empty());
    Ok(axum::Json(emu.robot_messages(key)))
}

async fn outbox(State(emu): State<Emulator>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let kf = q
        .get("open_kfid")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let ext = q
        .get("external_userid")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    Ok(axum::Json(emu.outbox(kf, ext)))
}

async fn add_faults(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let ids = match &v {
        Value::Array(list) => list
            .iter()
            .map(|f| emu.inject_fault(f.clone()))
            .collect::<Result<Vec<_>, _>>()?,
        other => vec![emu.inject_fault(other.clone())?],
    };
    Ok(axum::Json(json!({"ids": ids})))
}

async fn list_faults(State(emu): State<Emulator>) -> Reply {
    let list: Vec<Value> = emu.with_state(|s, _| s.faults.iter().map(|f| f.to_json()).collect());
    Ok(axum::Json(json!({"faults": list})))
}

async fn clear_faults(State(emu): State<Emulator>) -> Reply {
    Ok(axum::Json(json!({"cleared": emu.clear_faults()})))
}

async fn state(State(emu): State<Emulator>) -> Reply {
    Ok(axum::Json(emu.state_snapshot()))
}

fn clock_json(emu: &Emulator) -> Value {
    json!({"now": emu.clock().now_secs(), "now_ms": emu.clock().now_ms(), "offset_seconds": emu.clock().offset_ms() / 1000})
}

async fn clock(State(emu): State<Emulator>) -> Reply {
    Ok(axum::Json(clock_json(&emu)))
}

async fn clock_advance(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let seconds = v
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| s.abs() <= 100.0 * 365.0 * 86_400.0)
        .ok_or_else(|| {
            ControlError::BadRequest("seconds (a number, at most 100 years) is required".into())
        })?;
    emu.clock().advance_ms((seconds * 1000.0) as Millis);
    Ok(axum::Json(clock_json(&emu)))
}

async fn callback_verify(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let url = v.get("url").and_then(Value::as_str).map(str::to_string);
    Ok(axum::Json(crate::callbacks::verify(&emu, url).await))
}

async fn callback_url(State(emu): State<Emulator>) -> Reply {
    Ok(axum::Json(json!({"url": emu.callback_url()})))
}

async fn set_callback_url(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let url = match v.get("url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            Some(u.clone())
        }
        Some(_) => {
            return Err(ControlError::BadRequest(
                "url must be an http(s) URL or null".into(),
            ));
        }
    };
    emu.set_callback_url(url.clone());
    Ok(axum::Json(json!({"url": url})))
}

async fn callback_token(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let kf = string(m, "open_kfid")?;
    let (token, expires) = emu.with_state(|s, now| {
        s.hook_account(kf)?;
        Ok::<_, ControlError>(s.callback_tokens.issue(kf, now))
    })?;
    Ok(axum::Json(
        json!({"token": token, "expires_at": expires / 1000}),
    ))
}

/// Most ids per list of a `kf_account_auth_change` callback.
const MAX_AUTH_CHANGE_IDS: usize = 1000;

fn bad_auth_change_ids(key: &str) -> ControlError {
    ControlError::BadRequest(format!(
        "{key} must be an array of open_kfids (1-64 bytes of [0-9a-zA-Z_-]), at most {MAX_AUTH_CHANGE_IDS}"
    ))
}

/// The ids of one list, validated (they end up inside CDATA sections).
fn checked_ids(key: &str, ids: &[&str]) -> Result<Vec<String>, ControlError> {
    if ids.len() > MAX_AUTH_CHANGE_IDS {
        return Err(bad_auth_change_ids(key));
    }
    ids.iter()
        .map(|id| {
            if !id.is_empty() && id.len() <= 64 && is_id_charset(id) {
                Ok(id.to_string())
            } else {
                Err(bad_auth_change_ids(key))
            }
        })
        .collect()
}

/// The strings of `v[key]` (absent or null: none).
fn auth_change_ids<'a>(v: &'a Value, key: &str) -> Result<Vec<&'a str>, ControlError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|id| id.as_str().ok_or_else(|| bad_auth_change_ids(key)))
            .collect(),
        Some(_) => Err(bad_auth_change_ids(key)),
    }
}

/// Sends a `kf_account_auth_change` callback (see [`Emulator::send_auth_change`]).
pub(crate) async fn auth_change(
    emu: &Emulator,
    add: &[&str],
    del: &[&str],
) -> Result<Value, ControlError> {
    let add = checked_ids("add", add)?;
    let del = checked_ids("del", del)?;
    if emu.callback_url().is_none() {
        return Err(ControlError::Conflict("no callback URL configured".into()));
    }
    emu.with_state(|s, _| {
        for (list, managed) in [(&add, true), (&del, false)] {
            for id in list {
                if let Some(account) = s.accounts.get_mut(id) {
                    account.managed_by_api = managed;
                }
            }
        }
    });
    let outcome = crate::callbacks::auth_change(emu, &add, &del)
        .await
        .ok_or_else(|| ControlError::Conflict("no callback URL configured".into()))?;
    Ok(json!({"delivery": outcome.delivery, "ok": outcome.ok, "attempts": outcome.attempts}))
}

async fn callback_auth_change(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    object(&v)?;
    let add = auth_change_ids(&v, "add")?;
    let del = auth_change_ids(&v, "del")?;
    Ok(axum::Json(auth_change(&emu, &add, &del).await?))
}

async fn corp(State(emu): State<Emulator>) -> Reply {
    Ok(axum::Json(emu.with_state(|s, _| s.corp_json())))
}

/// `PUT /emulator/corp`: any of `api_enabled`, `kf_mode` ("standalone", "wecom" or null),
/// `verified`, `wechat_channels_binding`. Validates everything before changing anything.
async fn set_corp(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let m = object(&v)?;
    let flag = |key: &str| match m.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ControlError::BadRequest(format!("{key} must be a boolean"))),
    };
    let api_enabled = flag("api_enabled")?;
    let verified = flag("verified")?;
    let channels = flag("wechat_channels_binding")?;
    let kf_mode = match m.get("kf_mode") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(mode)) => Some(Some(KfMode::parse(mode).ok_or_else(|| {
            ControlError::BadRequest("kf_mode is \"standalone\", \"wecom\" or null".into())
        })?)),
        Some(_) => {
            return Err(ControlError::BadRequest(
                "kf_mode is \"standalone\", \"wecom\" or null".into(),
            ));
        }
    };
    Ok(axum::Json(emu.with_state(|s, _| {
        if let Some(v) = api_enabled {
            s.corp.api_enabled = v;
        }
        if let Some(v) = verified {
            s.corp.verified = v;
        }
        if let Some(v) = channels {
            s.corp.wechat_channels_binding = v;
        }
        if let Some(v) = kf_mode {
            s.corp.kf_mode = v;
        }
        s.corp_json()
    })))
}

async fn callbacks(State(emu): State<Emulator>) -> Reply {
    Ok(axum::Json(emu.callback_attempts()))
}

async fn tokens_revoke(State(emu): State<Emulator>, body: Bytes) -> Reply {
    let v = parse(&body)?;
    let which = v
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    let n = emu.with_state(|s, _| s.access_tokens.revoke(which.as_deref()));
    Ok(axum::Json(json!({"revoked": n})))
}

/// Content types that say nothing about the bytes (curl's `--data-binary` sends the form type).
fn is_generic_content_type(t: &str) -> bool {
    let t = t.split(';').next().unwrap_or("").trim();
    t.eq_ignore_ascii_case("application/octet-stream")
        || t.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// `POST /emulator/media?type=&filename=&content_type=` with the raw bytes as body. The
/// Content-Type served by `media/get` is the `content_type` parameter, else the request's
/// Content-Type, else (or for a generic one such as `application/octet-stream`) the type's
/// default.
async fn upload_media(
    State(emu): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let kind = q
        .get("type")
        .and_then(|t| MediaType::parse(t))
        .ok_or_else(|| {
            ControlError::BadRequest("type must be image, voice, video or file".into())
        })?;
    let filename = match q.get("filename").filter(|f| !f.is_empty()) {
        Some(f) if f.len() > 255 || f.chars().any(char::is_control) => {
            return Err(ControlError::BadRequest(
                "filename: at most 255 bytes, no control characters".into(),
            ));
        }
        Some(f) => f.clone(),
        None => format!("{}.bin", kind.as_str()),
    };
    let declared = q
        .get("content_type")
        .map(String::as_str)
        .or_else(|| {
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && !is_generic_content_type(t));
    let content_type = match declared {
        Some(t) if HeaderValue::from_str(t).is_ok() => t.to_string(),
        Some(_) => {
            return Err(ControlError::BadRequest(
                "content_type is not a valid header value".into(),
            ));
        }
        None => media::content_type_for(kind, &body, None),
    };
    let id = emu.with_state(|s, now| {
        let max = s.max_media_bytes;
        s.media.insert(
            Media {
                kind,
                filename,
                content_type,
                data: body,
                created_at: now,
            },
            now,
            max,
        )
    });
    Ok(axum::Json(json!({"media_id": id})))
}
