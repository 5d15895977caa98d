//! `service_state/get` and `service_state/trans` (official doc 94669).

use axum::response::Response;
use serde_json::{Value, json};

use super::Call;
use crate::Emulator;
use crate::errors::{ApiError, ApiResult, ok};
use crate::json::{Fields, parse_object};

pub(super) fn get(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let external_userid = f.str_req("external_userid")?;
    let out = emu.with_state(|s, _| {
        s.account(open_kfid)?;
        s.check_customer(external_userid)?;
        let session = s.session(open_kfid, external_userid);
        let state = session.map_or(4, |x| x.state);
        let mut out = json!({"service_state": state});
        if let Some(servicer) = session
            .and_then(|x| x.servicer.as_ref())
            .filter(|_| state == 3)
        {
            out["servicer_userid"] = Value::from(servicer.as_str());
        }
        Ok::<_, ApiError>(out)
    })?;
    Ok(ok(out))
}

pub(super) fn trans(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let external_userid = f.str_req("external_userid")?;
    let target = f.u64_req("service_state")?;
    let servicer = f.str_opt("servicer_userid")?;
    let code =
        emu.with_state(|s, now| s.trans(open_kfid, external_userid, target, servicer, now))?;
    Ok(ok(match code {
        Some(c) => json!({"msg_code": c}),
        None => json!({}),
    }))
}
