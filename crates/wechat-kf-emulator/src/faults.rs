//! Fault injection: make the next N calls (or the calls during a time window) of one API path,
//! or of every path, fail in a chosen way.
//!
//! This module is the model (which faults exist, which one applies to a call); the state holds the
//! list and `api::fault_layer` applies them to requests, so it depends on neither.

use serde_json::{Value, json};

use crate::clock::{Millis, SECOND};

/// What happens to a faulted call.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer with this HTTP status (e.g. 502) and a short non-JSON body.
    HttpStatus(u16),
    /// Wait this many milliseconds, then handle the call normally.
    Delay(u64),
    /// Close the connection without any response.
    Drop,
    /// Answer HTTP 200 with this errcode (and optional errmsg).
    Errcode(i64, Option<String>),
    /// `sync_msg` only: an empty `msg_list` with `has_more: 1` and an unchanged cursor.
    EmptyPage,
    /// Revoke every access token, then handle the call (which then answers 40014).
    InvalidateTokens,
    /// `media/get` only: answer 45033 (concurrent downloads of the same media_id), so that a
    /// client's retry with backoff can be tested.
    MediaBusy,
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Id (for listing).
    pub id: u64,
    /// API path under /cgi-bin/ (`kf/sync_msg`), or `None` for every path.
    pub path: Option<String>,
    /// Effect.
    pub kind: FaultKind,
    /// Calls left, if counted.
    pub remaining: Option<u64>,
    /// End of the time window (emulator clock), if timed.
    pub until: Option<Millis>,
}

/// `"/cgi-bin/kf/sync_msg"`, `"kf/sync_msg"` → `Some("kf/sync_msg")`; `"*"`, `"all"`, `""` → `None`.
pub fn normalize_path(path: &str) -> Option<String> {
    let p = path.trim().trim_start_matches('/');
    let p = p.strip_prefix("cgi-bin/").unwrap_or(p);
    let p = p.split('?').next().unwrap_or("");
    if p.is_empty() || p == "*" || p == "all" {
        None
    } else {
        Some(p.to_string())
    }
}

impl Fault {
    /// Parses the control-API JSON (see the crate docs for the fields).
    pub fn parse(v: &Value, id: u64, now: Millis) -> Result<Fault, String> {
        let obj = v.as_object().ok_or("a fault is a JSON object")?;
        let path = match obj.get("path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => normalize_path(p),
            Some(_) => return Err("path must be a string".into()),
        };
        let kind_name = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("kind is required")?;
        let num = |k: &str| obj.get(k).and_then(Value::as_i64);
        let kind = match kind_name {
            "http_status" | "http" | "5xx" => {
                let status = num("status").unwrap_or(502);
                if !(100..=599).contains(&status) {
                    return Err("status must be an HTTP status code".into());
                }
                FaultKind::HttpStatus(status as u16)
            }
            "delay" | "slow" => {
                FaultKind::Delay(num("delay_ms").ok_or("delay needs delay_ms")?.max(0) as u64)
            }
            "drop" | "connection_drop" => FaultKind::Drop,
            "errcode" => FaultKind::Errcode(
                num("errcode").ok_or("errcode needs errcode")?,
                obj.get("errmsg")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            "empty_page" => FaultKind::EmptyPage,
            "invalidate_tokens" | "token_invalidation" => FaultKind::InvalidateTokens,
            "media_busy" | "45033" => FaultKind::MediaBusy,
            other => return Err(format!("unknown fault kind {other:?}")),
        };
        let count = obj.get("count").and_then(Value::as_u64);
        let seconds = obj.get("seconds").and_then(Value::as_f64);
        let until = seconds.map(|s| now.saturating_add((s * SECOND as f64) as Millis));
        let remaining = if count.is_none() && until.is_none() {
            Some(1)
        } else {
            count
        };
        Ok(Fault {
            id,
            path,
            kind,
            remaining,
            until,
        })
    }

    /// JSON for `GET /emulator/faults`.
    pub fn to_json(&self) -> Value {
        let kind = match &self.kind {
            FaultKind::HttpStatus(s) => json!({"kind":"http_status","status":s}),
            FaultKind::Delay(ms) => json!({"kind":"delay","delay_ms":ms}),
            FaultKind::Drop => json!({"kind":"drop"}),
            FaultKind::Errcode(c, m) => json!({"kind":"errcode","errcode":c,"errmsg":m}),
            FaultKind::EmptyPage => json!({"kind":"empty_page"}),
            FaultKind::InvalidateTokens => json!({"kind":"invalidate_tokens"}),
            FaultKind::MediaBusy => json!({"kind":"media_busy"}),
        };
        let mut v = kind;
        v["id"] = json!(self.id);
        v["path"] = json!(self.path);
        v["remaining"] = json!(self.remaining);
        v["until"] = json!(self.until.map(|u| u / 1000));
        v
    }

    fn applies(&self, path: &str, now: Millis) -> bool {
        let live = self.remaining != Some(0) && self.until.is_none_or(|u| now < u);
        let path_ok = self.path.as_deref().is_none_or(|p| p == path);
        let kind_ok = match self.kind {
            FaultKind::EmptyPage => path == "kf/sync_msg",
            FaultKind::MediaBusy => path == "media/get",
            _ => true,
        };
        live && path_ok && kind_ok
    }
}

/// Takes the first fault that applies to a call of `path` (counting it down).
pub fn take(faults: &mut Vec<Fault>, path: &str, now: Millis) -> Option<FaultKind> {
    faults.retain(|f| f.remaining != Some(0) && f.until.is_none_or(|u| now < u));
    let index = faults.iter().position(|f| f.applies(path, now))?;
    let fault = &mut faults[index];
    let kind = fault.kind.clone();
    if let Some(n) = fault.remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            faults.remove(index);
        }
    }
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_fault_applies_to_its_path_only_and_runs_out() {
        let f = Fault::parse(
            &json!({"path":"/cgi-bin/kf/send_msg","kind":"errcode","errcode":-1,"count":2}),
            1,
            0,
        )
        .unwrap();
        let mut faults = vec![f];
        assert_eq!(take(&mut faults, "kf/sync_msg", 0), None);
        assert!(take(&mut faults, "kf/send_msg", 0).is_some());
        assert!(take(&mut faults, "kf/send_msg", 0).is_some());
        assert_eq!(take(&mut faults, "kf/send_msg", 0), None);
        assert!(faults.is_empty());
    }

    #[test]
    fn a_timed_fault_ends_with_its_window() {
        let f = Fault::parse(
            &json!({"kind":"http_status","status":503,"seconds":10}),
            1,
            0,
        )
        .unwrap();
        let mut faults = vec![f];
        assert_eq!(
            take(&mut faults, "gettoken", 9_999),
            Some(FaultKind::HttpStatus(503))
        );
        assert_eq!(take(&mut faults, "gettoken", 10_000), None);
    }

    #[test]
    fn empty_pages_only_hit_sync_msg() {
        let f = Fault::parse(&json!({"kind":"empty_page"}), 1, 0).unwrap();
        let mut faults = vec![f];
        assert_eq!(take(&mut faults, "kf/send_msg", 0), None);
        assert_eq!(
            take(&mut faults, "kf/sync_msg", 0),
            Some(FaultKind::EmptyPage)
        );
    }

    #[test]
    fn media_busy_only_hits_media_get_and_counts_down() {
        let f = Fault::parse(&json!({"kind":"media_busy","count":2}), 1, 0).unwrap();
        let mut faults = vec![f];
        assert_eq!(take(&mut faults, "media/upload", 0), None);
        assert_eq!(
            take(&mut faults, "media/get", 0),
            Some(FaultKind::MediaBusy)
        );
        assert_eq!(
            take(&mut faults, "media/get", 0),
            Some(FaultKind::MediaBusy)
        );
        assert_eq!(take(&mut faults, "media/get", 0), None);
    }

    #[test]
    fn bad_fault_specs_are_rejected() {
        assert!(Fault::parse(&json!({"kind":"explode"}), 1, 0).is_err());
        assert!(Fault::parse(&json!({"kind":"delay"}), 1, 0).is_err());
        assert!(Fault::parse(&json!([]), 1, 0).is_err());
    }
}
