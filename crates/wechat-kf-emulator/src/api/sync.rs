//! `kf/sync_msg` (official doc 94670): pages of the pre-serialized log.

use axum::http::StatusCode;
use axum::response::Response;

use super::Call;
use crate::Emulator;
use crate::clock::MINUTE;
use crate::errors::{self, ApiError, ApiResult, json_response};
use crate::json::{Fields, parse_object};

/// Page size default and maximum.
pub const MAX_LIMIT: u64 = 1000;

pub(super) fn sync_msg(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let cursor = f.str_max("cursor", 64, false)?.filter(|c| !c.is_empty());
    let token = f.str_opt("token")?.filter(|t| !t.is_empty());
    let limit = match f.u64_opt("limit")? {
        None | Some(0) => MAX_LIMIT,
        Some(n) => n.min(MAX_LIMIT),
    } as usize;
    if let Some(v) = f.u64_opt("voice_format")? {
        if v > 1 {
            return Err(ApiError::invalid(
                "voice_format",
                "must be 0 (AMR) or 1 (SILK)",
            ));
        }
    }
    let per_minute = emu.config().sync_without_token_per_minute;
    let empty_page = call.empty_page;
    let page = emu.with_state(|s, now| {
        s.account(open_kfid)?;
        if let Some(t) = token {
            if t.len() > 128 {
                return Err(ApiError::new(
                    errors::INVALID_MSG_TOKEN,
                    "invalid msg token",
                ));
            }
            s.callback_tokens.check(t, open_kfid, now)?;
        }
        let account = s.account_mut(open_kfid)?;
        if token.is_none() && !account.sync_without_token.hit(now, MINUTE, per_minute) {
            return Err(ApiError::new(
                errors::FREQUENCY_LIMITED,
                "api freq out of limit: sync_msg without token",
            ));
        }
        account.log.prune(now);
        let from =
            match cursor {
                Some(c) => Some(account.log.decode_cursor(c).ok_or_else(|| {
                    ApiError::invalid("cursor", "unknown cursor for this open_kfid")
                })?),
                None => None,
            };
        if empty_page {
            // Injected fault: no items, no progress, but "more available".
            let next_cursor = cursor
                .map(str::to_string)
                .unwrap_or_else(|| account.log.page(from, 0, now).next_cursor);
            return Ok(build(&next_cursor, true, ""));
        }
        let page = account.log.page(from, limit, now);
        Ok(build(&page.next_cursor, page.has_more, &page.items))
    })?;
    Ok(json_response(StatusCode::OK, page, None))
}

fn build(next_cursor: &str, has_more: bool, items: &str) -> String {
    let mut out = String::with_capacity(items.len() + 96);
    out.push_str("{\"errcode\":0,\"errmsg\":\"ok\",\"next_cursor\":\"");
    out.push_str(next_cursor); // base64url: nothing to escape
    out.push_str("\",\"has_more\":");
    out.push(if has_more { '1' } else { '0' });
    out.push_str(",\"msg_list\":[");
    out.push_str(items);
    out.push_str("]}");
    out
}
