//! Error codes the emulator answers with, and the JSON envelope they travel in.
//!
//! The real server answers business errors with HTTP 200 and `{"errcode","errmsg"}` (official doc
//! 90313). Error texts imitate the real ones (`…, hint: […], more info at …?e=CODE`) so that clients
//! learn to branch on `errcode` only.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// Wrong secret for the corp id.
pub const INVALID_SECRET: i64 = 40001;
/// Invalid media file type.
pub const INVALID_MEDIA_FILE_TYPE: i64 = 40004;
/// Invalid media `type` parameter.
pub const INVALID_MEDIA_TYPE: i64 = 40005;
/// Invalid file size.
pub const INVALID_FILE_SIZE: i64 = 40006;
/// Invalid media_id.
pub const INVALID_MEDIA_ID: i64 = 40007;
/// Invalid msgtype.
pub const INVALID_MSGTYPE: i64 = 40008;
/// Image too large.
pub const INVALID_IMAGE_SIZE: i64 = 40009;
/// Video too large.
pub const INVALID_VIDEO_SIZE: i64 = 40011;
/// Unknown corp id.
pub const INVALID_CORPID: i64 = 40013;
/// Unknown or revoked access_token.
pub const INVALID_ACCESS_TOKEN: i64 = 40014;
/// `\uxxxx` escapes in the request body.
pub const INVALID_CHARACTERS: i64 = 40033;
/// Invalid parameter value (out of range, too long, bad pattern, wrong method, too many items).
pub const INVALID_PARAMETER: i64 = 40035;
/// Invalid request parameter: malformed JSON or a field of the wrong type.
pub const INVALID_REQUEST_PARAMETER: i64 = 40058;
/// A required parameter is missing or empty.
pub const MISSING_PARAMETER: i64 = 40063;
/// Invalid external_userid.
pub const INVALID_EXTERNAL_USERID: i64 = 40096;
/// access_token missing from the query string.
pub const MISSING_ACCESS_TOKEN: i64 = 41001;
/// corpid missing.
pub const MISSING_CORPID: i64 = 41002;
/// corpsecret missing.
pub const MISSING_SECRET: i64 = 41004;
/// media_id missing.
pub const MISSING_MEDIA_ID: i64 = 41006;
/// access_token expired.
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
/// Empty media body.
pub const EMPTY_MEDIA: i64 = 44001;
/// Empty text content.
pub const EMPTY_CONTENT: i64 = 44004;
/// Media file too large.
pub const MEDIA_TOO_LARGE: i64 = 45001;
/// Text content too long.
pub const CONTENT_TOO_LONG: i64 = 45002;
/// API call frequency exceeded.
pub const FREQUENCY_LIMITED: i64 = 45009;
/// Concurrency limit of an API (e.g. the same media_id downloaded repeatedly at once).
pub const CONCURRENCY_LIMITED: i64 = 45033;
/// API forbidden for this app / token.
pub const API_FORBIDDEN: i64 = 48002;
/// Userid does not exist.
pub const USERID_NOT_FOUND: i64 = 60111;
/// Mini program not linked to the corp.
pub const MINIPROGRAM_NOT_LINKED: i64 = 90206;
/// Invalid open_kfid (malformed).
pub const INVALID_OPEN_KFID: i64 = 95000;
/// Send quota (5 per customer message) exhausted.
pub const SEND_QUOTA_EXHAUSTED: i64 = 95001;
/// More than 48 h since the customer's last message.
pub const SEND_WINDOW_EXPIRED: i64 = 95002;
/// open_kfid does not exist (deleted or another corp's).
pub const OPEN_KFID_NOT_FOUND: i64 = 95004;
/// Account count limit.
pub const ACCOUNT_COUNT_LIMIT: i64 = 95005;
/// Invalid account name.
pub const INVALID_ACCOUNT_NAME: i64 = 95006;
/// Invalid sync_msg token.
pub const INVALID_MSG_TOKEN: i64 = 95007;
/// Too many menu items.
pub const TOO_MANY_MENU_ITEMS: i64 = 95008;
/// Invalid menu item type.
pub const INVALID_MENU_ITEM_TYPE: i64 = 95009;
/// KF in WeCom mode, token from the standalone KF secret.
pub const WECOM_MODE_STANDALONE_SECRET: i64 = 95011;
/// KF in standalone mode, token from a WeCom app secret.
pub const STANDALONE_MODE_WECOM_SECRET: i64 = 95012;
/// Session already ended.
pub const SESSION_ENDED: i64 = 95013;
/// Not a servicer of the account.
pub const NOT_A_SERVICER: i64 = 95014;
/// Session state transition not allowed.
pub const TRANSITION_NOT_ALLOWED: i64 = 95016;
/// The API switch is off.
pub const API_SWITCH_OFF: i64 = 95017;
/// Session state does not allow sending.
pub const STATE_FORBIDS_SENDING: i64 = 95018;
/// Servicer stopped or suspended.
pub const SERVICER_NOT_RECEIVING: i64 = 95019;
/// userid / chat_id not in the upgrade-service configuration.
pub const NOT_IN_UPGRADE_CONFIG: i64 = 95021;
/// The customer has not actively sent a message within 48 h (menu clicks do not count; single source).
pub const NO_ACTIVE_CUSTOMER_MESSAGE: i64 = 95024;
/// Unverified corp: at most 10 accounts.
pub const UNVERIFIED_ACCOUNT_LIMIT: i64 = 95027;
/// recall_msg: msgid not found.
pub const RECALL_MSGID_NOT_FOUND: i64 = 95028;
/// recall_msg: more than 2 minutes since sending.
pub const RECALL_WINDOW_EXPIRED: i64 = 95029;
/// Voice must be AMR.
pub const VOICE_NOT_AMR: i64 = 301017;
/// Media too large for one `media/get`; use Range.
pub const MEDIA_NEEDS_RANGE: i64 = 830002;

/// A business error: an errcode and its text. Rendered with HTTP 200 like the real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The errcode.
    pub code: i64,
    /// The human text (the "hint" suffix is added when rendering).
    pub msg: Cow<'static, str>,
}

impl ApiError {
    /// An error with the given code and text.
    pub fn new(code: i64, msg: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            code,
            msg: msg.into(),
        }
    }

    /// 40058 with the `Warning: wrong json format.` marker real servers put in the text.
    pub fn wrong_json(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            INVALID_REQUEST_PARAMETER,
            format!("invalid Request Parameter, Warning: wrong json format. {detail}"),
        )
    }

    /// 40035 for a field whose value is not acceptable.
    pub fn invalid(field: &str, why: &str) -> ApiError {
        ApiError::new(
            INVALID_PARAMETER,
            format!("invalid parameter {field}: {why}"),
        )
    }

    /// 40063 for a required field that is missing or empty.
    pub fn missing(field: &str) -> ApiError {
        ApiError::new(
            MISSING_PARAMETER,
            format!("parameter {field} is empty or missing"),
        )
    }

    /// The full errmsg as sent on the wire.
    pub fn wire_message(&self) -> String {
        format!(
            "{}, hint: [emulator-{}], more info at https://open.work.weixin.qq.com/devtool/query?e={}",
            self.msg, self.code, self.code
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "errcode {}: {}", self.code, self.msg)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errcode": self.code, "errmsg": self.wire_message()});
        json_response(StatusCode::OK, body.to_string(), Some(&self))
    }
}

/// A successful API answer: `errcode` 0, `errmsg` "ok" and the given fields.
pub fn ok(fields: Value) -> Response {
    let mut map = Map::new();
    map.insert("errcode".into(), Value::from(0));
    map.insert("errmsg".into(), Value::from("ok"));
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    json_response(StatusCode::OK, Value::Object(map).to_string(), None)
}

/// A JSON response with the `Error-Code` / `Error-Msg` headers real responses carry (seen in one
/// captured response).
pub fn json_response(status: StatusCode, body: String, err: Option<&ApiError>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    let (code, msg) = match err {
        Some(e) => (e.code.to_string(), ascii_only(&e.msg)),
        None => ("0".to_string(), "ok".to_string()),
    };
    if let Ok(v) = HeaderValue::from_str(&code) {
        headers.insert("Error-Code", v);
    }
    if let Ok(v) = HeaderValue::from_str(&msg) {
        headers.insert("Error-Msg", v);
    }
    response
}

fn ascii_only(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Result type of the API handlers.
pub type ApiResult<T> = Result<T, ApiError>;
