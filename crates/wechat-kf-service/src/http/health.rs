//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::auth::token_matches;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::readiness::{self, Readiness};
use crate::store::Store;

/// What the health routes read.
#[derive(Clone)]
pub(crate) struct HealthState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    /// The named conditions (starting or stopping, WeChat unreachable, the store's writes, ...).
    pub(crate) readiness: Readiness,
    /// The bearer token `/metrics` requires, if any.
    pub(crate) metrics_token: Option<Secret>,
}

/// `/healthz` and `/readyz`.
pub(crate) fn routes(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// `/metrics` (on the public listener, or alone on `http.metrics_listen`).
pub(crate) fn metrics_routes(state: HealthState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs (also on a standby).", body = String, content_type = "text/plain", example = "ok\n"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Every readiness condition is met and the store answers. A 503 names each failing condition
/// on a line of its own (`store: cannot write: database or disk is full`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "Not ready: one `<condition>: <reason>` line per failing condition (`service`: starting or stopping; `wechat`: unreachable or the credentials rejected; `store`: cannot write, or does not answer).", body = String, content_type = "text/plain", example = "wechat: unreachable: connection refused (https://qyapi.weixin.qq.com)\n"),
    )
)]
pub(crate) async fn readyz(State(state): State<HealthState>) -> (StatusCode, String) {
    let mut report = state.readiness.report();
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: the store does not answer");
        report.push_str(&format!("{}: does not answer\n", readiness::STORE));
    }
    if report.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, report)
    }
}

/// The metrics, in Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4 (see docs/service.md for the series).", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "`http.metrics_token` is set and the request does not carry it (`Authorization: Bearer <token>`).", body = String, content_type = "text/plain"),
    )
)]
pub(crate) async fn metrics(State(state): State<HealthState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token_matches(given, token.expose()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token (http.metrics_token)\n",
            )
                .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
