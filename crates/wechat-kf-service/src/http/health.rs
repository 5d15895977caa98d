//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::auth::token_matches;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::Store;

/// What the health routes read.
#[derive(Clone)]
pub(crate) struct HealthState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    /// Cleared while starting and stopping.
    pub(crate) ready: Arc<AtomicBool>,
    /// The named conditions `/readyz` reports (the store's writes, …).
    pub(crate) readiness: Arc<Readiness>,
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

/// The store answers, every readiness condition is met, and the service is not starting or
/// stopping. A 503 names each failing condition on a line of its own (`store: cannot write:
/// database or disk is full`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "Starting, stopping, or a condition fails (one `name: reason` line each).", body = String, content_type = "text/plain", example = "store: cannot write: database or disk is full\n"),
    )
)]
pub(crate) async fn readyz(State(state): State<HealthState>) -> (StatusCode, String) {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
    }
    let mut reasons = state.readiness.reasons();
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: the store does not answer");
        reasons.push("store: unavailable".into());
    }
    if reasons.is_empty() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut body = reasons.join("\n");
    body.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, body)
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
