//! `customer/batchget` and the upgrade service (official docs 95159, 94674).

use axum::response::Response;
use serde_json::{Value, json};

use super::Call;
use crate::Emulator;
use crate::errors::{self, ApiError, ApiResult, ok};
use crate::json::{Fields, parse_object};
use crate::state::WINDOW_48H;

pub(super) fn batchget(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let ids = f.strings_opt("external_userid_list")?;
    if ids.is_empty() {
        return Err(ApiError::missing("external_userid_list"));
    }
    if ids.len() > 100 {
        return Err(ApiError::invalid("external_userid_list", "at most 100 ids"));
    }
    let with_context = f.u64_opt("need_enter_session_context")?.unwrap_or(0) == 1;
    let (found, invalid) = emu.with_state(|s, now| {
        let mut found = Vec::new();
        let mut invalid = Vec::new();
        for id in ids {
            let Some(c) = s.customers.get(id) else {
                invalid.push(Value::from(id));
                continue;
            };
            let mut item = json!({"external_userid": id, "nickname": c.nickname, "avatar": c.avatar, "gender": c.gender});
            if let Some(u) = &c.unionid {
                item["unionid"] = Value::from(u.as_str());
            }
            if let Some(enter) = c.last_enter.as_ref().filter(|e| with_context && now - e.at <= WINDOW_48H) {
                let mut ctx = json!({});
                if let Some(s) = &enter.scene {
                    ctx["scene"] = Value::from(s.as_str());
                }
                if let Some(p) = &enter.scene_param {
                    ctx["scene_param"] = Value::from(p.as_str());
                }
                if let Some(ch) = &enter.wechat_channels {
                    ctx["wechat_channels"] = ch.clone();
                }
                item["enter_session_context"] = ctx;
            }
            found.push(item);
        }
        (found, invalid)
    });
    Ok(ok(
        json!({"customer_list": found, "invalid_external_userid": invalid}),
    ))
}

pub(super) fn upgrade_config(emu: &Emulator, _call: &Call) -> ApiResult<Response> {
    let cfg = emu.with_state(|s, _| s.corp.upgrade_service.clone());
    Ok(ok(json!({
        "member_range": {"userid_list": cfg.userid_list, "department_id_list": cfg.department_id_list},
        "groupchat_range": {"chat_id_list": cfg.chat_id_list},
    })))
}

pub(super) fn upgrade_service(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let external_userid = f.str_req("external_userid")?;
    let kind = f.u64_req("type")?;
    let recommendation = match kind {
        1 => {
            let m = f.obj_req("member")?;
            json!({"type": 1, "userid": m.str_req("userid")?, "wording": m.str_opt("wording")?.unwrap_or("")})
        }
        2 => {
            let g = f.obj_req("groupchat")?;
            json!({"type": 2, "chat_id": g.str_req("chat_id")?, "wording": g.str_opt("wording")?.unwrap_or("")})
        }
        _ => {
            return Err(ApiError::invalid(
                "type",
                "must be 1 (member) or 2 (groupchat)",
            ));
        }
    };
    emu.with_state(|s, _| {
        s.account(open_kfid)?;
        s.check_customer(external_userid)?;
        let cfg = &s.corp.upgrade_service;
        let configured = match kind {
            1 => cfg
                .userid_list
                .iter()
                .any(|u| Some(u.as_str()) == recommendation["userid"].as_str()),
            _ => cfg
                .chat_id_list
                .iter()
                .any(|c| Some(c.as_str()) == recommendation["chat_id"].as_str()),
        };
        if !configured {
            return Err(ApiError::new(
                errors::NOT_IN_UPGRADE_CONFIG,
                "not in the upgrade service configuration",
            ));
        }
        if let Some(session) = s.session_mut(open_kfid, external_userid) {
            session.upgrade = Some(recommendation);
        }
        Ok(())
    })?;
    Ok(ok(json!({})))
}

pub(super) fn cancel_upgrade_service(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let external_userid = f.str_req("external_userid")?;
    emu.with_state(|s, _| {
        s.account(open_kfid)?;
        s.check_customer(external_userid)?;
        if let Some(session) = s.session_mut(open_kfid, external_userid) {
            session.upgrade = None;
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(ok(json!({})))
}
