//! [`ApiError`]: every failure the reply API answers, with its status and JSON body.
//!
//! Bodies: `{"error": "…", "retryable": bool}` plus `field` for a limit violation and
//! `errcode`/`errmsg` when WeChat answered; a refused send answers the refusal object
//! ([`Refusal`]).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::safe_error;
use crate::metrics::Metrics;
use crate::send_policy::Refusal;

/// The body of every reply-API error except a refused send.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorBody {
    /// What went wrong, in words (never message content).
    pub(crate) error: String,
    /// Whether the same request may succeed later.
    pub(crate) retryable: bool,
    /// The offending field of a limit violation (e.g. `text.content`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
    /// WeChat's errcode, when WeChat answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errcode: Option<i64>,
    /// WeChat's errmsg, when WeChat answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errmsg: Option<String>,
}

impl ErrorBody {
    fn new(error: impl Into<String>, retryable: bool) -> Self {
        ErrorBody {
            error: error.into(),
            retryable,
            field: None,
            errcode: None,
            errmsg: None,
        }
    }
}

/// A 409: the send policy refused, the same msgid is being sent right now, or it was sent
/// before with another body or recipient (`idempotency_mismatch`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ConflictBody {
    /// The send policy (or WeChat, for a reason of the session) refused the send.
    Refused(Refusal),
    /// A request with the same msgid is in progress (`retryable: true`), or the msgid was used
    /// with another body or recipient (`"error": "idempotency_mismatch"`).
    InProgress(ErrorBody),
}

/// Why a reply-API request failed.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: the body or a parameter is invalid.
    BadRequest(String),
    /// 400: an id is not WeChat's shape (`field` names it).
    InvalidId {
        /// The field (`open_kfid`, `touser`, …).
        field: &'static str,
        /// What is wrong, quoting at most a bounded prefix of the value.
        message: String,
    },
    /// 408: the body did not arrive within `http.read_timeout`.
    BodyTimeout,
    /// 409: the msgid was used before with another body or recipient.
    IdempotencyMismatch,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: no reply-API token is configured.
    Disabled,
    /// 409: the send was refused for a reason of the customer's session.
    Refused(Box<Refusal>),
    /// 409: a request with the same msgid is in progress.
    InProgress,
    /// 413: the body is over the limit.
    TooLarge,
    /// 503: the store does not answer.
    StoreUnavailable,
    /// 404: a sandbox route outside sandbox mode.
    NotSandbox,
    /// 404: no such delivery is waiting for a retry.
    NoSuchDelivery,
    /// 409: an attempt of the delivery is in flight.
    DeliveryInFlight,
    /// 503: the deliverer has stopped (the service is stopping).
    DelivererStopped,
    /// 404: no downloaded media file for the message.
    NoSuchMedia,
    /// 404: no such stored message.
    NoSuchMessage,
    /// 409: the message is not finished (still waiting for delivery), or a replay of it is
    /// waiting already.
    NotReplayable(&'static str),
    /// 409: the sandbox's emulator refused a client hook.
    EmulatorRefused(String),
    /// 400 (validation), 422 (WeChat refused), 502 (unreachable, garbage) or 503 (busy).
    Api(wechat_kf::client::Error),
}

impl From<wechat_kf::client::Error> for ApiError {
    fn from(error: wechat_kf::client::Error) -> Self {
        ApiError::Api(error)
    }
}

impl ApiError {
    /// The answer's status and error body (a refusal has its own body).
    fn status_and_body(&self) -> (StatusCode, ErrorBody) {
        use wechat_kf::client::Error as E;
        match self {
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new(message.clone(), false),
            ),
            ApiError::InvalidId { field, message } => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    field: Some((*field).to_owned()),
                    ..ErrorBody::new(message.clone(), false)
                },
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                ErrorBody::new(
                    "the body did not arrive within the server's read timeout",
                    true,
                ),
            ),
            ApiError::IdempotencyMismatch => (
                StatusCode::CONFLICT,
                ErrorBody::new("idempotency_mismatch", false),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                ErrorBody::new("missing or wrong bearer token", false),
            ),
            ApiError::Disabled => (
                StatusCode::FORBIDDEN,
                ErrorBody::new(
                    "the reply API is disabled: set api.token (or WECHAT_KF_API_TOKEN)",
                    false,
                ),
            ),
            ApiError::Refused(refusal) => (
                StatusCode::CONFLICT,
                ErrorBody::new("send_refused", refusal.retryable),
            ),
            ApiError::InProgress => (
                StatusCode::CONFLICT,
                ErrorBody::new("a request with this msgid is in progress", true),
            ),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody::new("the body is too large", false),
            ),
            ApiError::NotSandbox => (
                StatusCode::NOT_FOUND,
                ErrorBody::new(
                    "sandbox mode only (the service runs without WeChat credentials)",
                    false,
                ),
            ),
            ApiError::NoSuchDelivery => (
                StatusCode::NOT_FOUND,
                ErrorBody::new(
                    "no such delivery is waiting for a retry (unknown, or acknowledged)",
                    false,
                ),
            ),
            ApiError::DeliveryInFlight => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "an attempt of this delivery is in flight: ask again once it finished",
                    true,
                ),
            ),
            ApiError::NoSuchMedia => (
                StatusCode::NOT_FOUND,
                ErrorBody::new(
                    "no downloaded media file for this message (media.download_dir)",
                    false,
                ),
            ),
            ApiError::NoSuchMessage => (
                StatusCode::NOT_FOUND,
                ErrorBody::new("no such stored message (unknown, or purged)", false),
            ),
            ApiError::NotReplayable(why) => (StatusCode::CONFLICT, ErrorBody::new(*why, true)),
            ApiError::EmulatorRefused(why) => (
                StatusCode::CONFLICT,
                ErrorBody::new(format!("the emulator refused: {why}"), false),
            ),
            ApiError::DelivererStopped => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("the deliverer has stopped", true),
            ),
            ApiError::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("the store does not answer", true),
            ),
            ApiError::Api(error) => {
                let retryable = error.is_retryable();
                match error {
                    E::Validation(v) => (
                        StatusCode::BAD_REQUEST,
                        ErrorBody {
                            field: Some(v.field.clone()),
                            ..ErrorBody::new(error.to_string(), false)
                        },
                    ),
                    E::Api { code, errmsg, .. } => (
                        if retryable {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::UNPROCESSABLE_ENTITY
                        },
                        ErrorBody {
                            errcode: Some(code.code()),
                            errmsg: Some(errmsg.clone()),
                            ..ErrorBody::new(error.to_string(), retryable)
                        },
                    ),
                    _ => (
                        if retryable {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::BAD_GATEWAY
                        },
                        ErrorBody::new(safe_error(error), retryable),
                    ),
                }
            }
        }
    }
}

impl ApiError {
    /// The error in words (the `error` of its body).
    pub(crate) fn message(&self) -> String {
        self.status_and_body().1.error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        match self {
            ApiError::Refused(refusal) => {
                (status, Json(ConflictBody::Refused(*refusal))).into_response()
            }
            ApiError::InProgress | ApiError::IdempotencyMismatch => {
                (status, Json(ConflictBody::InProgress(body))).into_response()
            }
            // The client is too slow to keep its connection.
            ApiError::BodyTimeout => (
                status,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                Json(body),
            )
                .into_response(),
            ApiError::Unauthorized => (
                status,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                Json(body),
            )
                .into_response(),
            _ => (status, Json(body)).into_response(),
        }
    }
}

/// Counts a reply-API request by its outcome (`wechat_kf_api_requests_{ok,failed}_total`) and
/// passes the result on.
pub(crate) fn counted<T>(metrics: &Metrics, result: Result<T, ApiError>) -> Result<T, ApiError> {
    Metrics::add(
        if result.is_ok() {
            &metrics.api_requests_ok
        } else {
            &metrics.api_requests_failed
        },
        1,
    );
    result
}
