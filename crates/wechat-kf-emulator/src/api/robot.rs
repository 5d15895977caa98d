//! `webhook/send`: a WeCom group robot (official doc 91770), authenticated by its `key` alone.

use axum::response::Response;
use serde_json::json;

use super::Call;
use crate::Emulator;
use crate::errors::{ApiResult, ok};
use crate::json::parse_object;

pub(super) fn send(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let key = call.param("key");
    emu.with_state(|s, now| s.robots.receive(key, body, now))?;
    Ok(ok(json!({})))
}
