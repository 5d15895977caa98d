//! What every agent shares: the question (`Ask`), the answer, the failure kinds and one HTTP
//! attempt.

use std::time::Duration;

use bytes::Bytes;

use super::prompt::Said;
use crate::config::Secret;
use crate::store::MemoryEntry;

/// Largest model response read.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// One turn's question.
#[derive(Debug)]
pub(crate) struct Ask<'a> {
    /// The remembered conversation, oldest first.
    pub(crate) history: Vec<&'a MemoryEntry>,
    /// What the customer said in this turn.
    pub(crate) asked: Vec<&'a Said>,
    /// Dify's conversation id, when one is remembered.
    pub(crate) conversation_id: Option<&'a str>,
    /// An opaque id of the (account, customer) pair (Dify's `user`); never a WeChat id.
    pub(crate) user: String,
}

/// What the model asked the service to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// `transfer_to_human(reason)`.
    Transfer {
        /// The model's reason (kept in memory, never logged).
        reason: String,
    },
    /// `end_conversation()`.
    End,
}

/// Tokens a model reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) prompt: u32,
    pub(crate) completion: u32,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The text (markdown allowed).
    pub(crate) text: String,
    /// A tool the model called.
    pub(crate) action: Option<Action>,
    /// Dify's conversation id for the pair.
    pub(crate) conversation_id: Option<String>,
    /// Tokens, when reported.
    pub(crate) usage: Option<Usage>,
}

/// Why an attempt failed, in the words of the metrics (`kind`): `timeout`, `connect`,
/// `http_429`, `http_5xx`, `http_4xx`, `invalid_response`, `conversation_gone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelError {
    pub(crate) kind: &'static str,
    /// The HTTP status, for `http_*`.
    pub(crate) status: Option<u16>,
    /// Worth another attempt (429, 5xx, timeouts, connection failures).
    pub(crate) retryable: bool,
    /// What was wrong (no content: a status, a field, a transport cause).
    pub(crate) detail: String,
}

impl ModelError {
    pub(crate) fn invalid(what: &str) -> ModelError {
        ModelError {
            kind: "invalid_response",
            status: None,
            retryable: false,
            detail: format!("invalid {what}"),
        }
    }

    fn http(status: u16) -> ModelError {
        let (kind, retryable) = match status {
            429 => ("http_429", true),
            500..=599 => ("http_5xx", true),
            _ => ("http_4xx", false),
        };
        ModelError {
            kind,
            status: Some(status),
            retryable,
            detail: format!("HTTP {status}"),
        }
    }

    fn transport(error: &reqwest::Error, timeout: Duration) -> ModelError {
        let kind = if error.is_timeout() {
            "timeout"
        } else {
            "connect"
        };
        ModelError {
            kind,
            status: None,
            retryable: true,
            detail: crate::error::transport_cause(error, timeout),
        }
    }
}

/// POSTs a JSON body; the response body of a 2xx, else the failure.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: &str,
    key: Option<&Secret>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, ModelError> {
    let mut request = http
        .post(url)
        .timeout(timeout)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key.expose());
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| ModelError::transport(&e, timeout))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ModelError::http(status.as_u16()));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ModelError::transport(&e, timeout))?
    {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ModelError::invalid("response (too large)"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}
