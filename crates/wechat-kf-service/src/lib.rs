//! # wechat-kf-service
//!
//! `wechat-kf serve`: receives WeChat Customer Service callbacks, pulls every message with
//! `kf/sync_msg` into a durable store, delivers each message to your bot's webhook until it is
//! acknowledged, and sends the bot's replies.
//!
//! ```text
//! WeChat ──callback──▶ /callback ──wake──▶ puller (one per account)
//!                                            │ sync_msg pages; messages + cursor in ONE transaction
//!                                            ▼
//!                                          Store (SQLite / PostgreSQL)
//!                                            │
//!                      deliverer ◀───────────┘ ordered per customer, batched, HMAC-signed,
//!                          │                   retried with backoff, persistent
//!                          ▼
//!                        bot webhook ──2xx {"replies":[…]}──▶ reply queue ──▶ kf/send_msg
//! bot ──POST /v1/messages (bearer)──▶ kf/send_msg (synchronous)
//! ```
//!
//! On top of that, the service handles what bots on WeChat KF run into: a first start (or a lost
//! cursor) stores the 3-day backlog without delivering it ([`config::FirstStart`]); every send
//! is checked against the customer's session (`wechat_kf::session`), so a reply WeChat would
//! refuse — a human servicer holds the session, the 48-hour window closed, the 5-message quota
//! is spent — is answered with a typed refusal instead of being sent; keyword handoffs and a
//! joiner for split answers are opt-in; inbound media can be downloaded (and voice notes
//! converted) before delivery.
//!
//! Guarantees: no message is lost and none is stored twice (msgid is unique per account; a page
//! and its cursor commit together, so a crash at any point resumes from the last committed
//! cursor). Delivery to the bot is at-least-once on the wire with a stable delivery id
//! (`X-Wechat-Kf-Delivery`) and each message's msgid, so a bot that de-duplicates on msgid sees
//! every message exactly once; in practice a repeat only follows a crash between the bot's 2xx
//! and the acknowledgement's commit.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wechat_kf_service::Error> {
//! use wechat_kf_service::config::{Config, Overrides};
//! use wechat_kf_service::Service;
//!
//! let config = Config::load(None, Overrides::default().switch("--echo", "sandbox.echo", true))?;
//! let running = Service::start(config).await?; // sandbox: no credentials configured
//! println!("{}", running.sandbox().unwrap().instructions());
//! tokio::signal::ctrl_c().await.ok();
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! See `docs/service.md` for the configuration reference, the webhook contract and operations.

mod clock;
pub mod config;
mod conversation;
mod delivery;
mod error;
mod http;
mod idle;
pub mod ids;
pub mod leader;
mod media;
mod media_lanes;
pub mod metrics;
mod notify;
pub mod puller;
pub mod readiness;
mod replies;
mod responder;
pub mod retry;
pub mod sandbox;
mod send_policy;
mod sender;
mod service;
pub mod store;
mod summary;
mod transcribe;
mod wake_relay;

pub use clock::Clock;
pub use delivery::sink::{
    ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, signature, verify_signature,
};
pub use error::Error;
pub use http::openapi::{document as openapi_document, document_json as openapi_json};
pub use http::{AppState, metrics_router, router};
pub use send_policy::reason as refusal_reason;
pub use service::{RunningService, Service};
