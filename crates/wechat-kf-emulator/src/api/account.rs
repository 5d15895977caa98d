//! Accounts and contact links (official docs 94661–94665).

use axum::http::Method;
use axum::response::Response;
use serde_json::{Value, json};

use super::Call;
use crate::Emulator;
use crate::errors::{self, ApiError, ApiResult, ok};
use crate::ids;
use crate::json::{Fields, is_id_charset, parse_object};
use crate::state::media::MediaType;

fn check_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.chars().count() > 16 {
        return Err(ApiError::new(
            errors::INVALID_ACCOUNT_NAME,
            "invalid account name",
        ));
    }
    Ok(())
}

pub(super) fn add(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let name = f
        .str_opt("name")?
        .ok_or_else(|| ApiError::missing("name"))?;
    check_name(name)?;
    let media_id = f.str_max("media_id", 128, true)?.unwrap_or_default();
    let open_kfid = emu.with_state(|s, now| {
        s.media.check(media_id, MediaType::Image, now)?;
        s.check_account_quota()?;
        Ok::<_, ApiError>(s.create_account(name.to_string(), Some(media_id.to_string()), None))
    })?;
    Ok(ok(json!({"open_kfid": open_kfid})))
}

pub(super) fn del(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let open_kfid = Fields::new(&body)
        .str_max("open_kfid", 64, true)?
        .unwrap_or_default();
    emu.with_state(|s, _| s.delete_account(open_kfid))?;
    Ok(ok(json!({})))
}

pub(super) fn update(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_max("open_kfid", 64, true)?.unwrap_or_default();
    let name = f.str_opt("name")?;
    if let Some(n) = name {
        check_name(n)?;
    }
    let media_id = f.str_max("media_id", 128, false)?.filter(|m| !m.is_empty());
    emu.with_state(|s, now| {
        s.account(open_kfid)?;
        if let Some(m) = media_id {
            s.media.check(m, MediaType::Image, now)?;
        }
        let account = s.account_mut(open_kfid)?;
        if let Some(n) = name {
            account.name = n.to_string();
        }
        if let Some(m) = media_id {
            account.avatar_media_id = Some(m.to_string());
            account.avatar_url = format!("https://wework.qpic.cn/wwhead/{}/0", ids::alnum(24));
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(ok(json!({})))
}

pub(super) fn list(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    // Old SDKs call this with GET and no body: the full list (see `docs/vendor-notes.md`).
    let (offset, limit) = if call.method == Method::GET {
        (0, usize::MAX)
    } else {
        let body = parse_object(&call.body, true)?;
        let f = Fields::new(&body);
        let offset = f.u64_opt("offset")?.unwrap_or(0);
        let limit = f.u64_opt("limit")?.unwrap_or(100);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::invalid("limit", "must be within 1-100"));
        }
        (offset.min(u32::MAX as u64) as usize, limit as usize)
    };
    let items: Vec<Value> = emu.with_state(|s, _| {
        s.account_order
            .iter()
            .filter_map(|id| s.accounts.get(id))
            .skip(offset)
            .take(limit)
            .map(|a| {
                json!({"open_kfid": a.open_kfid, "name": a.name, "avatar": a.avatar_url, "manage_privilege": a.managed_by_api})
            })
            .collect()
    });
    Ok(ok(json!({"account_list": items})))
}

pub(super) fn add_contact_way(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let scene = f.str_max("scene", 32, false)?.filter(|s| !s.is_empty());
    if let Some(scene) = scene {
        if !is_id_charset(scene) {
            return Err(ApiError::invalid("scene", "must match [0-9a-zA-Z_-]*"));
        }
    }
    let url = emu.with_state(|s, _| {
        s.account(open_kfid)?;
        let mut url = format!(
            "https://work.weixin.qq.com/kf/kfc{}",
            ids::alnum(16).to_lowercase()
        );
        if scene.is_some() {
            url.push_str(&format!("?enc_scene=ENC{}", ids::alnum(24)));
        }
        s.contact_links.insert(
            url.clone(),
            (open_kfid.to_string(), scene.map(str::to_string)),
        );
        Ok::<_, ApiError>(url)
    })?;
    Ok(ok(json!({"url": url})))
}
