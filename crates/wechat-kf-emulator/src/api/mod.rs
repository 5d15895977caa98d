//! The WeChat API under `/cgi-bin/`: one dispatcher that applies the common rules (known path,
//! HTTP method, rate limit, access_token in the query string), then one handler per endpoint.

mod account;
mod customer;
pub(crate) mod fault_layer;
mod knowledge;
mod media;
mod misc;
mod robot;
mod send;
mod servicer;
mod session;
mod sync;
mod token;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use crate::Emulator;
use crate::clock::{HOUR, MINUTE};
use crate::errors::{self, ApiError, ApiResult, json_response};
use crate::server::ConnHandle;
use fault_layer::EmptyPageFault;

/// Largest JSON body accepted by the API (the real limit is unpublished).
const MAX_JSON_BODY: usize = 2 * 1024 * 1024;

/// Which HTTP methods an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Methods {
    Get,
    Post,
    Both,
}

type Handler = fn(&Emulator, &Call) -> ApiResult<Response>;

/// Every endpoint: path under /cgi-bin/, methods, and its synchronous handler (`None` for the
/// multipart / streaming media endpoints, handled separately).
const ENDPOINTS: &[(&str, Methods, Option<Handler>)] = &[
    ("gettoken", Methods::Get, Some(token::gettoken)),
    ("kf/account/add", Methods::Post, Some(account::add)),
    ("kf/account/del", Methods::Post, Some(account::del)),
    ("kf/account/update", Methods::Post, Some(account::update)),
    ("kf/account/list", Methods::Both, Some(account::list)),
    (
        "kf/add_contact_way",
        Methods::Post,
        Some(account::add_contact_way),
    ),
    ("kf/servicer/add", Methods::Post, Some(servicer::add)),
    ("kf/servicer/del", Methods::Post, Some(servicer::del)),
    ("kf/servicer/list", Methods::Get, Some(servicer::list)),
    ("kf/service_state/get", Methods::Post, Some(session::get)),
    (
        "kf/service_state/trans",
        Methods::Post,
        Some(session::trans),
    ),
    ("kf/sync_msg", Methods::Post, Some(sync::sync_msg)),
    ("kf/send_msg", Methods::Post, Some(send::send_msg)),
    (
        "kf/send_msg_on_event",
        Methods::Post,
        Some(send::send_msg_on_event),
    ),
    ("kf/recall_msg", Methods::Post, Some(send::recall_msg)),
    (
        "kf/customer/batchget",
        Methods::Post,
        Some(customer::batchget),
    ),
    (
        "kf/customer/get_upgrade_service_config",
        Methods::Get,
        Some(customer::upgrade_config),
    ),
    (
        "kf/customer/upgrade_service",
        Methods::Post,
        Some(customer::upgrade_service),
    ),
    (
        "kf/customer/cancel_upgrade_service",
        Methods::Post,
        Some(customer::cancel_upgrade_service),
    ),
    (
        "kf/get_corp_qualification",
        Methods::Get,
        Some(misc::corp_qualification),
    ),
    (
        "kf/get_corp_statistic",
        Methods::Post,
        Some(misc::corp_statistic),
    ),
    (
        "kf/get_servicer_statistic",
        Methods::Post,
        Some(misc::servicer_statistic),
    ),
    (
        "kf/knowledge/add_group",
        Methods::Post,
        Some(knowledge::add_group),
    ),
    (
        "kf/knowledge/del_group",
        Methods::Post,
        Some(knowledge::del_group),
    ),
    (
        "kf/knowledge/mod_group",
        Methods::Post,
        Some(knowledge::mod_group),
    ),
    (
        "kf/knowledge/list_group",
        Methods::Post,
        Some(knowledge::list_group),
    ),
    (
        "kf/knowledge/add_intent",
        Methods::Post,
        Some(knowledge::add_intent),
    ),
    (
        "kf/knowledge/del_intent",
        Methods::Post,
        Some(knowledge::del_intent),
    ),
    (
        "kf/knowledge/mod_intent",
        Methods::Post,
        Some(knowledge::mod_intent),
    ),
    (
        "kf/knowledge/list_intent",
        Methods::Post,
        Some(knowledge::list_intent),
    ),
    ("idconvert/open_kfid", Methods::Post, Some(misc::idconvert)),
    ("webhook/send", Methods::Post, Some(robot::send)),
    ("media/upload", Methods::Post, None),
    ("media/get", Methods::Get, None),
    ("media/uploadimg", Methods::Post, None),
];

/// The known endpoint path for a request path under /cgi-bin/, as a static string.
pub(crate) fn known_path(path: &str) -> Option<&'static str> {
    ENDPOINTS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(p, _, _)| *p)
}

/// One parsed API call.
#[derive(Debug)]
pub(crate) struct Call {
    /// HTTP method.
    pub method: Method,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    /// The raw body.
    pub body: Bytes,
    /// Whether an `empty_page` fault applies to this call.
    pub empty_page: bool,
    /// The client's IP (see [`client_ip`]).
    pub client_ip: IpAddr,
}

impl Call {
    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Decodes a query string (`+` is a space only in forms; WeChat params never use it as such).
pub(crate) fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        out.entry(decode(k)).or_insert_with(|| decode(v));
    }
    out
}

/// The client IP: the first `X-Forwarded-For` entry if it parses (a proxy in front of the
/// emulator, or a test simulating several clients), else the TCP peer, else (in-process calls
/// through `router().oneshot`) 127.0.0.1.
pub(crate) fn client_ip(headers: &HeaderMap, conn: Option<&ConnHandle>) -> IpAddr {
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    forwarded
        .or_else(|| conn.map(|c| c.peer().ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Handles every request under /cgi-bin/.
pub(crate) async fn dispatch(State(emu): State<Emulator>, req: Request) -> Response {
    let path = req
        .uri()
        .path()
        .strip_prefix("/cgi-bin/")
        .unwrap_or("")
        .to_string();
    let Some(&(path, methods, handler)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        let err = ApiError::new(errors::INVALID_PARAMETER, "invalid api path");
        return json_response(StatusCode::NOT_FOUND, error_body(&err), Some(&err));
    };
    let method = req.method().clone();
    let method_ok = match methods {
        Methods::Get => method == Method::GET,
        Methods::Post => method == Method::POST,
        Methods::Both => method == Method::GET || method == Method::POST,
    };
    if !method_ok {
        return into_response(Err(ApiError::invalid(
            "HTTP method",
            "not supported by this API",
        )));
    }
    let query = parse_query(req.uri().query());
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|c| &c.0);
    let client_ip = client_ip(req.headers(), conn);
    if let Err(e) = admit(&emu, path, &query, client_ip) {
        return into_response(Err(e));
    }
    let empty_page = req.extensions().get::<EmptyPageFault>().is_some();
    let Some(handler) = handler else {
        return match path {
            "media/upload" => into_response(media::upload(&emu, &query, req, false).await),
            "media/uploadimg" => into_response(media::upload(&emu, &query, req, true).await),
            _ => into_response(media::get(&emu, &query, req.headers())),
        };
    };
    let body = match axum::body::to_bytes(req.into_body(), MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return into_response(Err(ApiError::invalid(
                "body",
                "request body too large or unreadable",
            )));
        }
    };
    let call = Call {
        method,
        query,
        body,
        empty_page,
        client_ip,
    };
    into_response(handler(&emu, &call))
}

/// Most per-IP rate entries kept before idle ones are forgotten (bounded memory).
const MAX_IP_RATE_ENTRIES: usize = 10_000;

/// Rate limits per corp and per client IP (45009), access_token (41001 / 40014 / 42001) and, for
/// `kf/` calls, credential mode (95011 / 95012) and API switch (95017) checks.
fn admit(
    emu: &Emulator,
    path: &'static str,
    query: &HashMap<String, String>,
    ip: IpAddr,
) -> ApiResult<()> {
    let config = emu.config();
    let (per_minute, per_hour) = (config.api_calls_per_minute, config.api_calls_per_hour);
    let (ip_per_minute, ip_per_hour) = (
        config.api_calls_per_ip_per_minute,
        config.api_calls_per_ip_per_hour,
    );
    emu.with_state(|s, now| {
        let limited = || ApiError::new(errors::FREQUENCY_LIMITED, "api freq out of limit");
        let (minute, hour) = s.rate.entry(path.to_string()).or_default();
        if !minute.hit(now, MINUTE, per_minute) || !hour.hit(now, HOUR, per_hour) {
            return Err(limited());
        }
        if ip_per_minute > 0 || ip_per_hour > 0 {
            if s.ip_rate.len() >= MAX_IP_RATE_ENTRIES {
                s.ip_rate.retain(|_, (_, hour)| !hour.is_idle(now, HOUR));
                // Still full of active (or spoofed X-Forwarded-For) addresses: start the
                // windows afresh rather than grow without bound or scan on every call.
                if s.ip_rate.len() >= MAX_IP_RATE_ENTRIES {
                    s.ip_rate.clear();
                }
            }
            let (minute, hour) = s.ip_rate.entry((ip, path.to_string())).or_default();
            if !minute.hit(now, MINUTE, ip_per_minute) || !hour.hit(now, HOUR, ip_per_hour) {
                return Err(limited());
            }
        }
        // A group robot's key is its only credential (official doc 91770).
        if path != "gettoken" && path != "webhook/send" {
            let kind = s
                .access_tokens
                .check(query.get("access_token").map(String::as_str), now)?;
            s.check_kf_call(path, kind)?;
        }
        Ok(())
    })
}

fn error_body(err: &ApiError) -> String {
    serde_json::json!({"errcode": err.code, "errmsg": err.wire_message()}).to_string()
}

fn into_response(result: ApiResult<Response>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}
