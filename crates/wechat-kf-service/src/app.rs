//! The HTTP surface: [`app`] builds the router from an [`AppState`].
//!
//! | Route | |
//! |---|---|
//! | `GET` / `POST <callback.path>` (default `/callback`) | WeChat callbacks |
//! | `POST /v1/messages`, `/v1/messages/on_event`, `/v1/service_state/trans`, `GET /v1/sessions/{open_kfid}/{external_userid}` | the reply API (bearer token) |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | the store answers and the service is not stopping |
//! | `GET /metrics` | Prometheus text format |

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use wechat_kf::client::Client;
use wechat_kf::crypto::CallbackCrypto;

use crate::clock::Clock;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::puller::Pullers;
use crate::sending::Gate;
use crate::store::Store;
use crate::{callback, reply};

/// Largest reply-API request body.
const MAX_API_BODY: usize = 1024 * 1024;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Shared>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("callback_path", &self.inner.callback_path)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) crypto: Option<CallbackCrypto>,
    pub(crate) timestamp_window: Duration,
    pub(crate) callback_path: String,
    pub(crate) max_callback_body: usize,
    pub(crate) pullers: Arc<Pullers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) client: Option<Client>,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) api_token: Option<Secret>,
    /// The send policy (without one, WeChat alone decides).
    pub(crate) gate: Option<Arc<Gate>>,
    /// WeChat's clock (callback timestamps, session views).
    pub(crate) clock: Clock,
    pub(crate) ready: AtomicBool,
    /// Reply-API msgids being sent right now (a concurrent duplicate gets 409).
    pub(crate) in_flight: Mutex<HashSet<String>>,
}

/// Builds an [`AppState`]; the service does this itself, tests and embedders may too.
#[derive(Debug)]
pub struct AppStateBuilder {
    crypto: Option<CallbackCrypto>,
    timestamp_window: Duration,
    callback_path: String,
    max_callback_body: usize,
    pullers: Option<Arc<Pullers>>,
    metrics: Option<Arc<Metrics>>,
    client: Option<Client>,
    store: Option<Arc<dyn Store>>,
    api_token: Option<Secret>,
    gate: Option<Arc<Gate>>,
    clock: Clock,
}

impl AppState {
    /// A builder with the defaults of [`Config`](crate::config::Config).
    pub fn builder() -> AppStateBuilder {
        let defaults = crate::config::Config::default();
        AppStateBuilder {
            crypto: None,
            timestamp_window: defaults.callback.timestamp_window,
            callback_path: defaults.callback.path,
            max_callback_body: defaults.callback.max_body_bytes,
            pullers: None,
            metrics: None,
            client: None,
            store: None,
            api_token: None,
            gate: None,
            clock: Clock::system(),
        }
    }

    /// The account slots callbacks wake.
    pub fn pullers(&self) -> &Arc<Pullers> {
        &self.inner.pullers
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Marks the service ready (or not: `/readyz` then answers 503).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }
}

impl AppStateBuilder {
    /// Verifies and decrypts callbacks with `crypto` (without it, callbacks answer 503).
    pub fn callback_crypto(mut self, crypto: CallbackCrypto) -> Self {
        self.crypto = Some(crypto);
        self
    }

    /// The accepted distance between a callback's timestamp and now (zero disables the check).
    pub fn timestamp_window(mut self, window: Duration) -> Self {
        self.timestamp_window = window;
        self
    }

    /// The callback path.
    pub fn callback_path(mut self, path: impl Into<String>) -> Self {
        self.callback_path = path.into();
        self
    }

    /// The largest callback body.
    pub fn max_callback_body(mut self, bytes: usize) -> Self {
        self.max_callback_body = bytes;
        self
    }

    /// The account slots callbacks wake (default: detached slots, for tests).
    pub fn pullers(mut self, pullers: Arc<Pullers>) -> Self {
        self.pullers = Some(pullers);
        self
    }

    /// The metrics.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The API client of the reply API.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The store (reply-API idempotency, `/readyz`).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The reply API's bearer token (without one the reply API answers 403).
    pub fn api_token(mut self, token: Option<Secret>) -> Self {
        self.api_token = token;
        self
    }

    /// WeChat's clock, against which callback timestamps are checked (default: the system
    /// clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The send policy every reply-API send passes.
    pub(crate) fn gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The state (ready).
    pub fn build(self) -> AppState {
        AppState {
            inner: Arc::new(Shared {
                crypto: self.crypto,
                timestamp_window: self.timestamp_window,
                callback_path: self.callback_path,
                max_callback_body: self.max_callback_body,
                pullers: self
                    .pullers
                    .unwrap_or_else(|| Arc::new(Pullers::detached(5000))),
                metrics: self.metrics.unwrap_or_default(),
                client: self.client,
                store: self.store,
                api_token: self.api_token,
                gate: self.gate,
                clock: self.clock,
                ready: AtomicBool::new(true),
                in_flight: Mutex::new(HashSet::new()),
            }),
        }
    }
}

/// The service's router.
pub fn app(state: AppState) -> Router {
    let callback_routes = Router::new()
        .route(
            &state.inner.callback_path,
            get(callback::verify_url).post(callback::event),
        )
        .layer(DefaultBodyLimit::max(state.inner.max_callback_body));
    let api_routes = Router::new()
        .route("/v1/messages", post(reply::send_msg))
        .route("/v1/messages/on_event", post(reply::send_msg_on_event))
        .route("/v1/service_state/trans", post(reply::trans))
        .route(
            "/v1/sessions/{open_kfid}/{external_userid}",
            get(reply::session),
        )
        .layer(DefaultBodyLimit::max(MAX_API_BODY));
    Router::new()
        .merge(callback_routes)
        .merge(api_routes)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if !state.inner.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    }
    if let Some(store) = &state.inner.store {
        if let Err(e) = store.ping().await {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response();
        }
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.metrics.render(),
    )
        .into_response()
}
