//! Knowledge base groups and intents (official docs 95971, 95972).

use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::Call;
use crate::Emulator;
use crate::errors::{ApiError, ApiResult, ok};
use crate::json::{Fields, parse_object};
use crate::state::knowledge::IntentContext;

pub(super) fn add_group(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let name = Fields::new(&body).str_req("name")?;
    let id = emu.with_state(|s, _| s.knowledge.add_group(name))?;
    Ok(ok(json!({"group_id": id})))
}

pub(super) fn del_group(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let id = Fields::new(&body).str_req("group_id")?;
    emu.with_state(|s, _| s.knowledge.del_group(id))?;
    Ok(ok(json!({})))
}

pub(super) fn mod_group(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let id = f.str_req("group_id")?;
    let name = f.str_req("name")?;
    emu.with_state(|s, _| s.knowledge.mod_group(id, name))?;
    Ok(ok(json!({})))
}

/// Parses `cursor` / `limit` (default 500, max 1000) of the list calls.
fn paging(f: &Fields<'_>) -> ApiResult<(usize, usize)> {
    let limit = match f.u64_opt("limit")? {
        None | Some(0) => 500,
        Some(n) if n <= 1000 => n as usize,
        Some(_) => return Err(ApiError::invalid("limit", "at most 1000")),
    };
    let offset = match f.str_opt("cursor")?.filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::invalid("cursor", "unknown cursor"))?;
            let arr: [u8; 8] = bytes
                .try_into()
                .map_err(|_| ApiError::invalid("cursor", "unknown cursor"))?;
            u64::from_be_bytes(arr) as usize
        }
    };
    Ok((offset, limit))
}

fn page(items: Vec<Value>, key: &str, offset: usize, limit: usize) -> Response {
    let total = items.len();
    let end = offset.saturating_add(limit).min(total);
    let slice: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let has_more = end < total;
    let next = URL_SAFE_NO_PAD.encode((end.max(offset) as u64).to_be_bytes());
    ok(json!({"next_cursor": next, "has_more": u8::from(has_more), key: slice}))
}

pub(super) fn list_group(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, true)?;
    let f = Fields::new(&body);
    let (offset, limit) = paging(&f)?;
    let filter = f.str_opt("group_id")?.filter(|g| !g.is_empty());
    let items = emu.with_state(|s, _| {
        s.knowledge
            .groups
            .iter()
            .filter(|g| filter.is_none_or(|id| id == g.group_id))
            .map(|g| json!({"group_id": g.group_id, "name": g.name, "is_default": u8::from(g.is_default)}))
            .collect()
    });
    Ok(page(items, "group_list", offset, limit))
}

pub(super) fn add_intent(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let id = emu.with_state(|s, now| {
        let ctx = IntentContext {
            media: &s.media,
            appids: &s.corp.miniprogram_appids,
            now,
        };
        s.knowledge.add_intent(f, ctx)
    })?;
    Ok(ok(json!({"intent_id": id})))
}

pub(super) fn del_intent(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let id = Fields::new(&body).str_req("intent_id")?;
    emu.with_state(|s, _| s.knowledge.del_intent(id))?;
    Ok(ok(json!({})))
}

pub(super) fn mod_intent(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    emu.with_state(|s, now| {
        let ctx = IntentContext {
            media: &s.media,
            appids: &s.corp.miniprogram_appids,
            now,
        };
        s.knowledge.mod_intent(f, ctx)
    })?;
    Ok(ok(json!({})))
}

pub(super) fn list_intent(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, true)?;
    let f = Fields::new(&body);
    let (offset, limit) = paging(&f)?;
    let group = f.str_opt("group_id")?.filter(|g| !g.is_empty());
    let intent = f.str_opt("intent_id")?.filter(|g| !g.is_empty());
    let items = emu.with_state(|s, _| {
        s.knowledge
            .intents
            .iter()
            .filter(|i| group.is_none_or(|g| g == i.group_id) && intent.is_none_or(|x| x == i.intent_id))
            .map(|i| {
                let mut v = json!({"group_id": i.group_id, "intent_id": i.intent_id, "question": i.question, "answers": i.answers});
                if let Some(sq) = &i.similar_questions {
                    v["similar_questions"] = sq.clone();
                }
                v
            })
            .collect()
    });
    Ok(page(items, "intent_list", offset, limit))
}
