//! `GET gettoken` (official doc 91039).

use axum::response::Response;
use serde_json::json;

use super::Call;
use crate::Emulator;
use crate::clock::MINUTE;
use crate::config::KfMode;
use crate::errors::{self, ApiError, ApiResult, ok};

/// Which kind of secret `secret` is, if it is one of the configured ones.
fn secret_kind(emu: &Emulator, secret: &str) -> Option<KfMode> {
    let config = emu.config();
    if secret == config.secret {
        Some(config.secret_kind)
    } else if config.other_secret.as_deref() == Some(secret) {
        Some(config.secret_kind.other())
    } else {
        None
    }
}

/// Order of the checks: the corp-wide gettoken rate (45009, every call counts), a blocked client
/// IP (40001 even with the right secret), missing parameters (41002 / 41004), the corp id
/// (40013), the secret (40001, counted against the client IP).
pub(super) fn gettoken(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let config = emu.config();
    let ip = call.client_ip;
    emu.with_state(|s, now| {
        if !s.gettoken_rate.hit(now, MINUTE, config.gettoken_per_minute) {
            return Err(ApiError::new(
                errors::FREQUENCY_LIMITED,
                "api freq out of limit: gettoken called too often",
            ));
        }
        if s.wrong_secrets.blocked(ip, now) {
            return Err(ApiError::new(
                errors::INVALID_SECRET,
                "invalid credential: this ip is blocked for one hour after repeated wrong secrets",
            ));
        }
        Ok(())
    })?;
    let corpid = call
        .param("corpid")
        .ok_or_else(|| ApiError::new(errors::MISSING_CORPID, "corpid missing"))?;
    let secret = call
        .param("corpsecret")
        .ok_or_else(|| ApiError::new(errors::MISSING_SECRET, "corpsecret missing"))?;
    if corpid != config.corp_id {
        return Err(ApiError::new(errors::INVALID_CORPID, "invalid corpid"));
    }
    let Some(kind) = secret_kind(emu, secret) else {
        let limit = config.gettoken_wrong_secret_limit;
        emu.with_state(|s, now| s.wrong_secrets.strike(ip, now, limit));
        return Err(ApiError::new(errors::INVALID_SECRET, "invalid credential"));
    };
    let ttl = config.access_token_ttl.as_millis() as i64;
    let (token, expires_in) = emu.with_state(|s, now| {
        s.counters.gettoken += 1;
        s.access_tokens.get_or_issue(now, ttl, kind)
    });
    Ok(ok(json!({"access_token": token, "expires_in": expires_in})))
}
