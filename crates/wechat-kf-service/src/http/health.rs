//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::readiness::{self, Readiness};
use crate::store::Store;

/// What the health routes read.
#[derive(Clone)]
pub(crate) struct HealthState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    /// The named conditions (starting or stopping, WeChat unreachable, ...).
    pub(crate) readiness: Readiness,
}

/// The health routes.
pub(crate) fn routes(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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

/// Every readiness condition is met and the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "Not ready: one `<condition>: <reason>` line per failing condition (`service`: starting or stopping; `wechat`: unreachable or the credentials rejected; `store`: does not answer).", body = String, content_type = "text/plain", example = "wechat: unreachable: connection refused (https://qyapi.weixin.qq.com)\n"),
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
    responses((status = 200, description = "Prometheus text format 0.0.4 (see docs/service.md for the series).", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"))
)]
pub(crate) async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
