//! `GET gettoken` (endpoints.md §1.2).

use axum::response::Response;
use serde_json::json;

use super::Call;
use crate::Emulator;
use crate::errors::{self, ApiError, ApiResult, ok};

pub(super) fn gettoken(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let corpid = call
        .param("corpid")
        .ok_or_else(|| ApiError::new(errors::MISSING_CORPID, "corpid missing"))?;
    let secret = call
        .param("corpsecret")
        .ok_or_else(|| ApiError::new(errors::MISSING_SECRET, "corpsecret missing"))?;
    if corpid != emu.config().corp_id {
        return Err(ApiError::new(errors::INVALID_CORPID, "invalid corpid"));
    }
    if secret != emu.config().secret {
        return Err(ApiError::new(errors::INVALID_SECRET, "invalid credential"));
    }
    let ttl = emu.config().access_token_ttl.as_millis() as i64;
    let (token, expires_in) = emu.with_state(|s, now| {
        s.counters.gettoken += 1;
        s.access_tokens.get_or_issue(now, ttl)
    });
    Ok(ok(json!({"access_token": token, "expires_in": expires_in})))
}
