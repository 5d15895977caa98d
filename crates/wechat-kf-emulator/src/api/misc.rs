//! Qualification, statistics and the third-party id conversion.

use axum::response::Response;
use serde_json::json;

use super::Call;
use crate::Emulator;
use crate::errors::{self, ApiError, ApiResult, ok};
use crate::json::{Fields, parse_object};
use crate::state::stats::day_start;

const DAY: i64 = 86_400;

pub(super) fn corp_qualification(emu: &Emulator, _call: &Call) -> ApiResult<Response> {
    let bound = emu.with_state(|s, _| s.corp.wechat_channels_binding);
    Ok(ok(json!({"wechat_channels_binding": bound})))
}

fn statistic(emu: &Emulator, call: &Call, per_servicer: bool) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let start = f.u64_req("start_time")?;
    let end = f.u64_req("end_time")?;
    if start > u64::from(u32::MAX) || end > u64::from(u32::MAX) {
        return Err(ApiError::invalid(
            "start_time / end_time",
            "must be uint32 unix timestamps",
        ));
    }
    let (start, end) = (day_start(start as i64), day_start(end as i64));
    let servicer = if per_servicer {
        f.str_opt("servicer_userid")?.filter(|s| !s.is_empty())
    } else {
        None
    };
    let list = emu.with_state(|s, now| {
        let account = s.account(open_kfid)?;
        if let Some(u) = servicer {
            if account.servicer(u).is_none() {
                return Err(ApiError::new(
                    errors::NOT_A_SERVICER,
                    "not a servicer of this account",
                ));
            }
        }
        let today = day_start(now / 1000);
        if start > end {
            return Err(ApiError::invalid("start_time", "after end_time"));
        }
        if end > today - DAY {
            return Err(ApiError::invalid(
                "end_time",
                "must be yesterday or earlier",
            ));
        }
        if start < today - 180 * DAY {
            return Err(ApiError::invalid("start_time", "more than 180 days ago"));
        }
        if (end - start) / DAY + 1 > 31 {
            return Err(ApiError::invalid("end_time", "at most 31 days per query"));
        }
        Ok(s.stats.list(open_kfid, servicer, start, end, per_servicer))
    })?;
    Ok(ok(json!({"statistic_list": list})))
}

pub(super) fn corp_statistic(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    statistic(emu, call, false)
}

pub(super) fn servicer_statistic(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    statistic(emu, call, true)
}

pub(super) fn idconvert(_emu: &Emulator, call: &Call) -> ApiResult<Response> {
    parse_object(&call.body, false)?;
    // The emulated corp uses a self-built app; this API is for third-party providers only.
    Err(ApiError::new(
        errors::API_FORBIDDEN,
        "api forbidden: only for third-party applications",
    ))
}
