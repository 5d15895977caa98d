//! The reply API's bearer token: an extractor that lets a request through only with
//! `Authorization: Bearer <api.token>`.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::Secret;
use crate::metrics::Metrics;

/// What the extractor needs of a router's state: the token to compare with and the metrics to
/// count a refusal in. A trait, so that this module depends on no handler module.
pub(crate) trait BearerToken {
    /// The configured token.
    fn bearer_token(&self) -> &Secret;
    /// Where a refusal is counted.
    fn auth_metrics(&self) -> &Metrics;
}

/// Proof that the request carried the reply API's token. A refusal (401) is counted in
/// `wechat_kf_api_requests_failed_total`.
#[derive(Debug)]
pub(crate) struct Authorized;

impl<S: BearerToken + Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if token_matches(given, state.bearer_token().expose()) {
            Ok(Authorized)
        } else {
            Metrics::add(&state.auth_metrics().api_requests_failed, 1);
            Err(ApiError::Unauthorized)
        }
    }
}

/// Compares in constant time (for equal lengths), so the answer's timing does not reveal
/// how much of a guess was right. An empty token never matches.
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
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
