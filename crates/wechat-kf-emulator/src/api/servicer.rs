//! Servicers (official docs 94646, 94647, 94645).

use axum::response::Response;
use serde_json::{Value, json};

use super::Call;
use crate::Emulator;
use crate::errors::{self, ApiError, ApiResult, ok};
use crate::json::{Fields, parse_object};
use crate::state::{MAX_DEPARTMENTS, MAX_SERVICERS, Servicer};

fn item(key: &str, id: Value, code: i64, msg: &str) -> Value {
    json!({key: id, "errcode": code, "errmsg": msg})
}

fn valid_userid(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
}

fn change(emu: &Emulator, call: &Call, add: bool) -> ApiResult<Response> {
    let body = parse_object(&call.body, false)?;
    let f = Fields::new(&body);
    let open_kfid = f.str_req("open_kfid")?;
    let users = f.strings_opt("userid_list")?;
    let departments = f.u64s_opt("department_id_list")?;
    if users.is_empty() && departments.is_empty() {
        return Err(ApiError::missing("userid_list / department_id_list"));
    }
    if users.len() > 100 || departments.len() > 100 {
        return Err(ApiError::invalid(
            "userid_list / department_id_list",
            "at most 100 items per call",
        ));
    }
    let results = emu.with_state(|s, _| {
        let account = s.account_mut(open_kfid)?;
        let mut results = Vec::new();
        for u in users {
            let present = account.servicer(u).is_some();
            let r = if !valid_userid(u) {
                item(
                    "userid",
                    u.into(),
                    errors::USERID_NOT_FOUND,
                    "userid not found",
                )
            } else if add == present {
                item("userid", u.into(), 0, "ignored")
            } else if add && account.servicers.len() >= MAX_SERVICERS {
                item(
                    "userid",
                    u.into(),
                    errors::INVALID_PARAMETER,
                    "too many servicers (at most 2000)",
                )
            } else {
                if add {
                    account.servicers.push(Servicer {
                        userid: u.to_string(),
                        status: 0,
                        stop_type: 0,
                        activated: true,
                    });
                } else {
                    account.servicers.retain(|s| s.userid != u);
                }
                item("userid", u.into(), 0, "success")
            };
            results.push(r);
        }
        for d in departments {
            let present = account.departments.contains(&d);
            let r = if add == present {
                item("department_id", d.into(), 0, "ignored")
            } else if add && account.departments.len() >= MAX_DEPARTMENTS {
                item(
                    "department_id",
                    d.into(),
                    errors::INVALID_PARAMETER,
                    "too many departments (at most 20)",
                )
            } else {
                if add {
                    account.departments.push(d);
                } else {
                    account.departments.retain(|x| *x != d);
                }
                item("department_id", d.into(), 0, "success")
            };
            results.push(r);
        }
        Ok::<_, ApiError>(results)
    })?;
    Ok(ok(json!({"result_list": results})))
}

pub(super) fn add(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    change(emu, call, true)
}

pub(super) fn del(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    change(emu, call, false)
}

pub(super) fn list(emu: &Emulator, call: &Call) -> ApiResult<Response> {
    let open_kfid = call
        .param("open_kfid")
        .ok_or_else(|| ApiError::missing("open_kfid"))?;
    let list = emu.with_state(|s, _| {
        let account = s.account(open_kfid)?;
        let mut list: Vec<Value> = account
            .servicers
            .iter()
            .map(|sv| {
                let mut v = json!({"userid": sv.userid, "status": sv.status});
                if sv.status == 1 {
                    v["stop_type"] = Value::from(sv.stop_type);
                }
                v
            })
            .collect();
        list.extend(
            account
                .departments
                .iter()
                .map(|d| json!({"department_id": d})),
        );
        Ok::<_, ApiError>(list)
    })?;
    Ok(ok(json!({"servicer_list": list})))
}
