//! A faithful local stand-in for the WeChat Customer Service (微信客服) server, written from the
//! official WeCom documentation (page numbers cited per endpoint) and independent of the
//! `wechat-kf` library.
//!
//! It serves the real API under `/cgi-bin/` (same paths, methods, JSON and error codes), sends
//! encrypted `kf_msg_or_event` callbacks, and offers a control API under `/emulator/` through which
//! tests play the customer and the servicers, move the clock, inject faults and inspect state.
//!
//! # Starting it
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wechat_kf_emulator::{Config, Emulator};
//!
//! let running = Emulator::start(Config::generated(), "127.0.0.1:0".parse().unwrap()).await?;
//! let base = running.base_url(); // "http://127.0.0.1:PORT", use as the API base URL
//! let kf = running.emulator().create_account("售后客服");
//! running.emulator().customer_send(serde_json::json!({
//!     "open_kfid": kf, "external_userid": "wmCustomer1", "msgtype": "text", "text": {"content": "你好"}
//! })).unwrap();
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! In-process tests can skip TCP: [`Emulator::router`] is the whole app, usable with
//! `tower::ServiceExt::oneshot`.
//!
//! # Control API (`/emulator/…`, JSON)
//!
//! | Method and path | Body / query | Answer |
//! |---|---|---|
//! | `POST /emulator/accounts` | `{"name", "open_kfid"?}` | `{"open_kfid"}` |
//! | `POST /emulator/customer/send` | one object or an array of `{"open_kfid","external_userid","msgtype", <msgtype>: payload, "send_time"?, "msgid"?, "origin"?, "servicer_userid"?, "nickname"?, "gender"?, "unionid"?, "avatar"?}` | `{"msgids"}` |
//! | `POST /emulator/customer/enter_session` | `{"open_kfid","external_userid","scene"?,"scene_param"?,"wechat_channels"?}` or `{"url": <add_contact_way url>[&scene_param=…], "external_userid"}` | `{"msgid","welcome_code"?}` |
//! | `POST /emulator/customer/recall` | `{"open_kfid","external_userid","recall_msgid"}` | `{"msgid"}` (`user_recall_msg`) |
//! | `POST /emulator/customer/refuse` | `{"open_kfid","external_userid","refuse"?: true}` | `{"refuse"}`; later sends produce `msg_send_fail` fail_type 10 |
//! | `POST /emulator/servicer/pick` | `{"open_kfid","external_userid","servicer_userid"}` | `{"msgid","msg_code"}` (change_type 1) |
//! | `POST /emulator/servicer/transfer` | `{"open_kfid","external_userid","new_servicer_userid"}` | `{"msgid"}` (change_type 2) |
//! | `POST /emulator/servicer/end` | `{"open_kfid","external_userid"}` | `{"msgid","msg_code"}` (change_type 3) |
//! | `POST /emulator/servicer/send` | like customer/send plus `"servicer_userid"` | `{"msgids"}` (origin 5; change_type 4 first when re-joining) |
//! | `POST /emulator/servicer/status` | `{"open_kfid","servicer_userid","status": 1\|2,"stop_type"?}` | `{"msgid"}` (`servicer_status_change`) |
//! | `POST /emulator/servicer/recall` | `{"open_kfid","external_userid","servicer_userid","recall_msgid"}` | `{"msgid"}` |
//! | `POST /emulator/servicer/reject` | `{"open_kfid","external_userid","servicer_userid","reject_switch"}` | `{"msgid"}` |
//! | `POST /emulator/events` | a raw event object (with `event_type` and `open_kfid`) or a whole item `{"event":{…}, "msgid"?, "send_time"?}`, one or an array | `{"msgids"}` |
//! | `GET /emulator/outbox?open_kfid=&external_userid=` | | `{"messages":[{"msgid","open_kfid","external_userid","endpoint","code_kind","send_time","recalled","request"}]}` |
//! | `POST /emulator/faults` | `{"path"?: "kf/sync_msg" (default all), "kind": "http_status"\|"delay"\|"drop"\|"errcode"\|"empty_page"\|"invalidate_tokens"\|"media_busy", "status"?, "delay_ms"?, "errcode"?, "errmsg"?, "count"?, "seconds"?}` or an array; default `count` 1 | `{"ids"}` |
//! | `GET` / `DELETE /emulator/faults` | | `{"faults"}` / `{"cleared"}` |
//! | `GET /emulator/state` | | corp, accounts, sessions, blocked IPs, counters |
//! | `GET` / `PUT /emulator/corp` | `{"api_enabled"?, "kf_mode"?: "standalone"\|"wecom"\|null, "verified"?, "wechat_channels_binding"?}` | the corp settings |
//! | `GET /emulator/clock`, `POST /emulator/clock/advance` | `{"seconds": N}` | `{"now","now_ms","offset_seconds"}` |
//! | `POST /emulator/callback/verify` | `{"url"?}` | `{"ok","status","expected","received"}` |
//! | `GET` / `PUT /emulator/callback/url` | `{"url": "…" \| null}` | `{"url"}` |
//! | `POST /emulator/callback/token` | `{"open_kfid"}` | `{"token","expires_at"}`: a sync_msg token as if a callback had carried it |
//! | `POST /emulator/callback/auth_change` | `{"add"?: [open_kfid…], "del"?: [open_kfid…]}` | `{"delivery","ok","attempts"}` after an encrypted `kf_account_auth_change` callback |
//! | `GET /emulator/callbacks` | | `{"attempts":[{"delivery","event","attempt","open_kfid","token","status","error","ok","at"}]}` |
//! | `POST /emulator/tokens/revoke` | `{"access_token"?}` | `{"revoked"}` |
//! | `POST /emulator/media?type=&filename=&content_type=` | raw bytes (Content-Type honoured) | `{"media_id"}` (no size or format checks) |
//!
//! Control errors answer 400 (bad input), 404 (unknown account / session) or 409 (action does not
//! fit the state) with `{"error": "…"}`.

mod api;
mod callbacks;
mod clock;
mod config;
mod control;
pub mod crypto;
mod errors;
mod faults;
pub mod fixtures;
mod ids;
mod json;
mod server;
mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    Config, ConfigError, KfMode, Seed, SeedAccount, SeedServicer, SeedUpgradeService,
};
pub use state::ControlError;

use clock::{Clock, Millis};
use crypto::MsgCrypt;
use faults::Fault;
use state::State;

/// Largest multipart upload accepted by `media/upload` (file limit 20 MB plus overhead).
const MAX_UPLOAD_BODY: usize = 21 * 1024 * 1024;

/// A cheap, cloneable handle to one emulator's shared state.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    clock: Clock,
    state: Mutex<State>,
    crypt: Option<MsgCrypt>,
    http: reqwest::Client,
    callback_url: Mutex<Option<String>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// A new emulator (seeded from `config.seed`). Callbacks are disabled if the EncodingAESKey is
    /// not a valid 43-character key.
    pub fn new(config: Config) -> Emulator {
        let crypt = MsgCrypt::new(
            &config.callback_token,
            &config.encoding_aes_key,
            &config.corp_id,
        )
        .ok();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let state = State::new(&config);
        let callback_url = Mutex::new(config.callback_url.clone());
        Emulator {
            inner: Arc::new(Inner {
                config,
                clock: Clock::default(),
                state: Mutex::new(state),
                crypt,
                http,
                callback_url,
            }),
        }
    }

    /// The whole app: `/cgi-bin/…` and `/emulator/…`.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/cgi-bin/{*path}", any(api::dispatch))
            .layer(DefaultBodyLimit::max(MAX_UPLOAD_BODY));
        Router::new()
            .merge(api)
            .merge(control::router())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                api::fault_layer::middleware,
            ))
            .with_state(self.clone())
    }

    /// The configuration it was started with (`callback_url` as at start; see
    /// [`Emulator::callback_url`] for the current one).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Changes (or, with `None`, removes) the callback URL.
    pub fn set_callback_url(&self, url: Option<String>) {
        *self
            .inner
            .callback_url
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = url;
    }

    /// The current callback URL.
    pub fn callback_url(&self) -> Option<String> {
        self.inner
            .callback_url
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Binds `listen` and serves the emulator until [`RunningEmulator::shutdown`] (or drop).
    pub async fn start(config: Config, listen: SocketAddr) -> std::io::Result<RunningEmulator> {
        let emulator = Emulator::new(config);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let app = emulator
            .router()
            .into_make_service_with_connect_info::<server::ConnHandle>();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(server::KillableListener::new(listener), app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                });
            if let Err(e) = serve.await {
                tracing::warn!("emulator server stopped: {e}");
            }
        });
        Ok(RunningEmulator {
            emulator,
            local_addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    // ----- in-process control (the same operations as /emulator/…) -----

    /// Creates an API-managed account without an avatar; returns its open_kfid.
    pub fn create_account(&self, name: &str) -> String {
        self.with_state(|s, _| s.create_account(name.to_string(), None, None))
    }

    /// A customer sends messages: one JSON object or an array (see the control API table).
    pub fn customer_send(&self, messages: Value) -> Result<Vec<String>, ControlError> {
        control::customer_send_value(self, &messages)
    }

    /// A customer opens the chat; returns the event's msgid and the welcome_code, if any.
    pub fn enter_session(
        &self,
        open_kfid: &str,
        external_userid: &str,
        scene: Option<&str>,
        scene_param: Option<&str>,
    ) -> Result<(String, Option<String>), ControlError> {
        self.with_state(|s, now| {
            let entry = state::session::Entry {
                scene: scene.map(str::to_string),
                scene_param: scene_param.map(str::to_string),
                wechat_channels: None,
            };
            s.enter_session(open_kfid, external_userid, entry, None, now)
        })
    }

    /// Creates a group robot (`POST /emulator/robots`); returns its key, the `key` of
    /// `/cgi-bin/webhook/send?key=…`.
    pub fn create_robot(&self, name: &str) -> String {
        self.with_state(|s, _| s.robots.create(name))
    }

    /// What group robot `key` (or every robot) received (`GET /emulator/robots`).
    pub fn robot_messages(&self, key: Option<&str>) -> Value {
        self.with_state(|s, _| s.robots.to_json(key))
    }

    /// Appends raw events (one object or an array; see `POST /emulator/events`).
    pub fn append_events(&self, events: Value) -> Result<Vec<String>, ControlError> {
        control::events_value(self, &events)
    }

    /// Moves the emulator clock forward (at most 100 years per call).
    pub fn advance_clock(&self, by: Duration) {
        let by = by.min(Duration::from_secs(100 * 365 * 86_400));
        self.inner.clock.advance_ms(by.as_millis() as Millis);
    }

    /// Emulator time in unix seconds.
    pub fn now(&self) -> i64 {
        self.inner.clock.now_secs()
    }

    /// Injects a fault (same JSON as `POST /emulator/faults`); returns its id.
    pub fn inject_fault(&self, fault: Value) -> Result<u64, ControlError> {
        self.with_state(|s, now| {
            let id = s.faults.iter().map(|f| f.id).max().unwrap_or(0) + 1;
            let fault = Fault::parse(&fault, id, now).map_err(ControlError::BadRequest)?;
            s.faults.push(fault);
            Ok(id)
        })
    }

    /// Removes every fault; returns how many there were.
    pub fn clear_faults(&self) -> usize {
        self.with_state(|s, _| std::mem::take(&mut s.faults).len())
    }

    /// Accounts, sessions and counters as JSON (same as `GET /emulator/state`).
    pub fn state_snapshot(&self) -> Value {
        self.with_state(|s, now| s.snapshot(now))
    }

    /// What the API client sent, optionally filtered (same as `GET /emulator/outbox`).
    pub fn outbox(&self, open_kfid: Option<&str>, external_userid: Option<&str>) -> Value {
        self.with_state(|s, _| {
            let messages: Vec<Value> = s
                .outbox
                .iter()
                .filter(|e| open_kfid.is_none_or(|k| k == e.open_kfid))
                .filter(|e| external_userid.is_none_or(|u| u == e.external_userid))
                .map(|e| {
                    json!({
                        "msgid": e.msgid, "open_kfid": e.open_kfid, "external_userid": e.external_userid,
                        "endpoint": e.endpoint, "code_kind": e.code_kind.map(|k| k.as_str()),
                        "send_time": e.time_ms / 1000, "time_ms": e.time_ms, "recalled": e.recalled, "request": e.request,
                    })
                })
                .collect();
            json!({"messages": messages})
        })
    }

    /// Revokes every access token early (calls then answer 40014); returns how many.
    pub fn revoke_tokens(&self) -> usize {
        self.with_state(|s, _| s.access_tokens.revoke(None))
    }

    /// Issues a sync_msg token for an account, as a callback would have carried it.
    pub fn issue_sync_token(&self, open_kfid: &str) -> Option<String> {
        self.with_state(|s, now| {
            s.accounts
                .contains_key(open_kfid)
                .then(|| s.callback_tokens.issue(open_kfid, now).0)
        })
    }

    /// Callback delivery attempts (same as `GET /emulator/callbacks`).
    pub fn callback_attempts(&self) -> Value {
        self.with_state(|s, _| {
            let list: Vec<Value> = s
                .deliveries
                .iter()
                .map(|d| {
                    json!({"delivery": d.delivery, "event": d.event, "attempt": d.attempt, "open_kfid": d.open_kfid,
                           "token": d.token, "status": d.status, "error": d.error, "ok": d.ok, "at": d.at / 1000})
                })
                .collect();
            json!({"attempts": list})
        })
    }

    /// Whether no callback is being delivered or waiting to be (for tests that wait for quiet).
    pub fn callbacks_idle(&self) -> bool {
        self.with_state(|s, _| {
            s.callback_slots
                .values()
                .all(|slot| !slot.in_flight && !slot.pending)
        })
    }

    /// Sends the URL-verification GET to the callback URL; reports whether the echo matched.
    pub async fn verify_callback_url(&self) -> Value {
        callbacks::verify(self, None).await
    }

    /// Sends one encrypted `kf_account_auth_change` callback with an `AuthAddOpenKfId` element per
    /// id of `add` and an `AuthDelOpenKfId` per id of `del` (same as
    /// `POST /emulator/callback/auth_change`), and waits for the outcome, retries included:
    /// `{"delivery","ok","attempts"}`. Known accounts in `add` become API-managed, those in `del`
    /// stop being (48002 afterwards). Ids are 1-64 bytes of `[0-9a-zA-Z_-]`; without a callback
    /// URL this is a conflict.
    pub async fn send_auth_change(
        &self,
        add: &[&str],
        del: &[&str],
    ) -> Result<Value, ControlError> {
        control::auth_change(self, add, del).await
    }

    /// Turns the API switch on or off at runtime (off: every `kf/` call except
    /// `kf/customer/batchget` answers 95017).
    pub fn set_api_enabled(&self, enabled: bool) {
        self.with_state(|s, _| s.corp.api_enabled = enabled);
    }

    /// Sets the corp's KF mode at runtime (`None`: not enforced; otherwise tokens of the other
    /// kind of secret answer 95011 / 95012 on `kf/` calls).
    pub fn set_kf_mode(&self, mode: Option<KfMode>) {
        self.with_state(|s, _| s.corp.kf_mode = mode);
    }

    // ----- crate internals -----

    /// Runs `f` under the state lock with the current emulator time, then starts callbacks for
    /// accounts that got new data. The lock is never held across an await.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State, Millis) -> T) -> T {
        let now = self.inner.clock.now_ms();
        let (out, notify) = {
            let mut state = self.lock();
            let out = f(&mut state, now);
            (out, state.take_notifications())
        };
        if !notify.is_empty() {
            callbacks::notify(self, notify);
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not take the whole emulator down.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub(crate) fn crypt(&self) -> Option<&MsgCrypt> {
        self.inner.crypt.as_ref()
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }
}

/// A started emulator. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct RunningEmulator {
    emulator: Emulator,
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT` (the API base; append `/cgi-bin/…`).
    pub fn base_url(&self) -> String {
        let ip = match self.local_addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.local_addr.port()))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The emulator handle.
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// Stops accepting, finishes in-flight requests, and returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
