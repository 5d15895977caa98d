//! The reply API's bearer token: an extractor that lets a request through only with
//! `Authorization: Bearer <api.token>`.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::reply_api::ReplyApiState;
use crate::metrics::Metrics;

/// Proof that the request carried the reply API's token. A refusal (401) is counted in
/// `wechat_kf_api_requests_failed_total`.
#[derive(Debug)]
pub(crate) struct Authorized;

impl FromRequestParts<ReplyApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ReplyApiState,
    ) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if token_matches(given, state.token().expose()) {
            Ok(Authorized)
        } else {
            Metrics::add(&state.metrics().api_requests_failed, 1);
            Err(ApiError::Unauthorized)
        }
    }
}

/// Compares in constant time (for equal lengths), so the answer's timing does not reveal
/// how much of a guess was right. An empty token never matches.
fn token_matches(given: &str, expected: &str) -> bool {
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_non_empty_token_matches() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secre", "secret"));
        assert!(!token_matches("secret2", "secret"));
        assert!(!token_matches("", "secret"));
        assert!(!token_matches("", ""));
    }
}
