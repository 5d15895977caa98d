//! The HTTP surface: [`router`] builds the service's routes from an [`AppState`].
//!
//! | Route | |
//! |---|---|
//! | `GET` / `POST <callback.path>` (default `/callback`) | WeChat callbacks; mounted only when the callback Token and EncodingAESKey are configured |
//! | `POST /v1/messages`, `/v1/messages/on_event`, `/v1/service_state/trans`, `GET /v1/sessions/{open_kfid}/{external_userid}` | the reply API (bearer token; 403 when no token is configured) |
//! | `GET /v1/messages`, `/v1/deliveries`, `/v1/sends` | what the service holds, read-only (bearer token) |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | every [`readiness`](crate::readiness) condition is met and the store answers; else 503 with the reasons |
//! | `GET /metrics` | Prometheus text format (here, or alone on `http.metrics_listen`; behind `http.metrics_token` when set) |
//! | `GET /v1/conversations`, `/v1/conversations/{open_kfid}/{external_userid}` | the customers and one customer's history (bearer token) |
//! | `POST /v1/deliveries/{id}/retry`, `/give_up`, `POST /v1/messages/{open_kfid}/{msgid}/replay`, `POST /v1/contact_ways`, `GET /v1/media/{open_kfid}/{msgid}` | operator actions and downloaded media (bearer token) |
//! | `GET /v1/setup` | the setup and health report ([`setup`]; bearer token) |
//! | `GET /v1/accounts` | the accounts with their servicers and status ([`accounts`]; bearer token) |
//! | `POST /v1/sandbox/messages`, `/v1/sandbox/servicer`, `GET /v1/sandbox/chat/{open_kfid}/{external_userid}` | sandbox mode: write as a customer, a servicer's hooks, the chat as the customer sees it (bearer token; 404 otherwise) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of these routes ([`openapi`]) |
//! | `/console` | the web console ([`console`]; `console.token` login, session cookie) |
//!
//! Each route set gets the state it needs: the callback routes a [`CallbackState`] with its
//! crypto, the reply API a [`ReplyApiState`] with its token; what is not configured is known
//! at start, never discovered by a request. [`server`] is the accept loop that serves the
//! router with read and idle timeouts, a connection cap and a bounded graceful shutdown.

pub(crate) mod accounts;
pub(crate) mod auth;
pub(crate) mod bodies;
pub(crate) mod callback;
pub(crate) mod console;
pub(crate) mod conversations;
pub(crate) mod error;
pub(crate) mod health;
pub mod openapi;
pub(crate) mod replay;
pub(crate) mod reply_api;
pub(crate) mod sandbox_api;
pub(crate) mod server;
pub(crate) mod setup;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use wechat_kf::client::Client;

use crate::clock::Clock;
use crate::config::Secret;
use crate::conversation::Conversations;
use crate::metrics::Metrics;
use crate::puller::Pullers;
use crate::readiness::{self, Readiness};
use crate::send_policy::Gate;
use crate::sender::Recorder;
use crate::store::Store;

pub(crate) use callback::{CallbackSettings, CallbackState};
pub(crate) use health::HealthState;
pub(crate) use reply_api::ReplyApiState;

/// Everything the routes share: one state per route set, built once at start. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    health: HealthState,
    /// `None`: no callback Token and EncodingAESKey, the callback routes are not mounted.
    callback: Option<CallbackState>,
    /// `None`: no reply-API token, the reply API answers 403.
    reply_api: Option<ReplyApiState>,
    /// `GET /v1/setup`, mounted with the reply API.
    setup: setup::SetupState,
    /// `GET /v1/accounts`, mounted with the reply API.
    accounts: Option<accounts::AccountsState>,
    /// The sandbox routes (they answer 404 outside sandbox mode).
    sandbox_api: sandbox_api::SandboxApiState,
    /// `None`: no console token, `/console` says how to turn it on.
    console: Option<console::ConsoleState>,
    pullers: Arc<Pullers>,
    /// `/metrics` is served on a listener of its own (`http.metrics_listen`).
    metrics_apart: bool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("callbacks", &self.callback.is_some())
            .field("reply_api", &self.reply_api.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`AppState::new`] is built from.
pub(crate) struct AppParts {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) gate: Arc<Gate>,
    /// The stage messages of transfers.
    pub(crate) conversations: Arc<Conversations>,
    /// The session changes of transfers.
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pullers: Arc<Pullers>,
    /// WeChat's clock (callback timestamps).
    pub(crate) clock: Clock,
    /// The callback endpoint, when callbacks are configured.
    pub(crate) callback: Option<CallbackSettings>,
    /// The reply API's bearer token, when the reply API is on.
    pub(crate) api_token: Option<Secret>,
    /// The readiness conditions `/readyz` reports.
    pub(crate) readiness: Readiness,
    /// The bearer token `/metrics` requires, if any.
    pub(crate) metrics_token: Option<Secret>,
    /// `/metrics` is served apart, on `http.metrics_listen`.
    pub(crate) metrics_apart: bool,
    /// The embedded emulator and its demo account, in sandbox mode.
    pub(crate) sandbox: Option<(wechat_kf_emulator::Emulator, wechat_kf::OpenKfId)>,
    /// The console's login token, when the console is on.
    pub(crate) console_token: Option<Secret>,
    /// Operator actions on deliveries.
    pub(crate) deliveries: crate::delivery::DeliveryControl,
    /// `media.download_dir`: the downloaded media files served.
    pub(crate) media_dir: Option<std::path::PathBuf>,
    /// `webhook.url`, whose reachability the setup report checks.
    pub(crate) webhook_url: Option<String>,
    /// Who answers the customers: `webhook`, `stdout`, `echo`, or a responder's kind.
    pub(crate) delivers_to: &'static str,
}

impl AppState {
    /// The state of every route set (ready).
    pub(crate) fn new(parts: AppParts) -> AppState {
        let AppParts {
            client,
            store,
            gate,
            conversations,
            recorder,
            metrics,
            pullers,
            clock,
            callback,
            api_token,
            readiness,
            metrics_token,
            metrics_apart,
            sandbox,
            console_token,
            deliveries,
            media_dir,
            webhook_url,
            delivers_to,
        } = parts;
        let setup = setup::SetupState::new(setup::SetupParts {
            token: api_token.clone(),
            client: client.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            callback_path: callback.as_ref().map(|c| c.path.clone()),
            webhook_url,
            delivers_to,
            sandbox: sandbox.is_some(),
            clock: clock.clone(),
        });
        let accounts = api_token.clone().map(|token| {
            accounts::AccountsState::new(token, client.clone(), pullers.clone(), metrics.clone())
        });
        let sandbox = sandbox
            .map(|(emulator, open_kfid)| (sandbox_api::SandboxChat::new(emulator), open_kfid));
        let console = console_token.map(|token| {
            console::ConsoleState::new(console::ConsoleParts {
                token,
                store: store.clone(),
                gate: gate.clone(),
                metrics: metrics.clone(),
                client: client.clone(),
                pullers: pullers.clone(),
                sandbox: sandbox.clone(),
                deliveries: deliveries.clone(),
                media_dir: media_dir.clone(),
                conversations: conversations.clone(),
                recorder: recorder.clone(),
                setup: setup.clone(),
            })
        });
        let sandbox_api = sandbox_api::SandboxApiState {
            chat: sandbox.map(|(chat, _)| chat),
            // Without a reply-API token no bearer matches (an empty token never does).
            token: api_token
                .clone()
                .unwrap_or_else(|| Secret::new(String::new())),
            metrics: metrics.clone(),
        };
        AppState {
            health: HealthState {
                store: store.clone(),
                metrics: metrics.clone(),
                readiness,
                metrics_token,
            },
            callback: callback.map(|settings| {
                CallbackState::new(
                    settings,
                    pullers.clone(),
                    store.clone(),
                    metrics.clone(),
                    clock,
                )
            }),
            reply_api: api_token.map(|token| {
                ReplyApiState::new(reply_api::ReplyApiParts {
                    token,
                    client,
                    store,
                    gate,
                    metrics: metrics.clone(),
                    conversations,
                    recorder,
                    deliveries,
                    media_dir,
                })
            }),
            setup,
            accounts,
            sandbox_api,
            console,
            pullers,
            metrics_apart,
        }
    }

    /// The account slots callbacks wake.
    pub fn pullers(&self) -> &Arc<Pullers> {
        &self.pullers
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.health.metrics
    }

    /// Marks the service itself ready (or stopping: `/readyz` then answers 503 with
    /// `service: stopping`); the other conditions are kept.
    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.health.readiness.clear(readiness::SERVICE);
        } else {
            self.health.readiness.fail(readiness::SERVICE, "stopping");
        }
    }

    /// The readiness conditions `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.health.readiness
    }
}

/// The service's router: the callback routes (when configured), the reply API (or its 403
/// answer), health, metrics (unless served apart, see [`metrics_router`]) and `/openapi.json`.
pub fn router(state: AppState) -> Router {
    let metrics = (!state.metrics_apart).then(|| health::metrics_routes(state.health.clone()));
    // The conversation routes read with the reply API's state; `conversations.rs` builds on
    // `reply_api.rs`, never the other way round.
    let reply_api = match state.reply_api {
        Some(api) => {
            let mut routes = reply_api::routes(api.clone())
                .merge(conversations::routes(api))
                .merge(setup::routes(state.setup));
            if let Some(accounts) = state.accounts {
                routes = routes.merge(accounts::routes(accounts));
            }
            routes
        }
        None => reply_api::disabled_routes(state.health.metrics.clone()),
    };
    let mut router = Router::new()
        .merge(reply_api)
        .merge(sandbox_api::routes(state.sandbox_api))
        .merge(match state.console {
            Some(console) => console::routes(console),
            None => console::disabled_routes(),
        })
        .merge(health::routes(state.health))
        .route("/openapi.json", get(openapi::serve));
    if let Some(callback) = state.callback {
        router = router.merge(callback::routes(callback));
    }
    if let Some(metrics) = metrics {
        router = router.merge(metrics);
    }
    router
}

/// `/metrics` alone, for `http.metrics_listen`.
pub fn metrics_router(state: &AppState) -> Router {
    health::metrics_routes(state.health.clone())
}
