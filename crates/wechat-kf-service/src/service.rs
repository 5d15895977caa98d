//! Wiring: [`Service::start`] opens the store, recovers undelivered work, binds the HTTP server,
//! starts the deliverer, the reply sender, the pullers and (without credentials) the embedded
//! emulator; [`RunningService::shutdown`] stops them in order.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wechat_kf::client::Client;
use wechat_kf::client::budget::{self, RedisBudget};
use wechat_kf::client::token::RedisTokenStore;
use wechat_kf::crypto::CallbackCrypto;

use crate::clock::Clock;
use crate::config::{Config, ResponderKind, Secret};
use crate::conversation::Conversations;
use crate::delivery::Deliverer;
use crate::delivery::sink::Sink;
use crate::error::Error;
use crate::http::callback::{self, CallbackState};
use crate::http::server::{self, Connections, Limits};
use crate::http::{AppParts, AppState, CallbackSettings, metrics_router, router};
use crate::idle::IdleRule;
use crate::leader::{self, LeaderLock};
use crate::media::MediaFetcher;
use crate::media_lanes::{Handover, MediaLanes};
use crate::metrics::{MeteredBudget, Metrics};
use crate::notify::Notifier;
use crate::puller::{PullContext, Pullers};
use crate::readiness::{self, Readiness};
use crate::responder::{Backlog, Responder};
use crate::retry::backoff;
use crate::sandbox;
use crate::send_policy::Gate;
use crate::sender::{Recorder, ReplySender};
use crate::store::{self, Store};
use crate::summary::{self, Discovery, Facts, ReplyApi};
use crate::transcribe::Transcriber;
use crate::wake_relay::{self, Relay};

/// The service; see [`Service::start`].
#[derive(Debug)]
pub struct Service;

/// A started service.
pub struct RunningService {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    state: AppState,
    store: Arc<dyn Store>,
    pullers: Arc<Pullers>,
    client: Client,
    sandbox: Option<sandbox::Sandbox>,
    clock: Clock,
    /// Cancelled to stop every task; each holds a clone.
    shutdown: CancellationToken,
    /// The HTTP servers (the public listener, and `http.metrics_listen` when set).
    servers: Vec<JoinHandle<()>>,
    deliverer: JoinHandle<()>,
    replies: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    leader: Option<LeaderLock>,
    summary: String,
}

impl std::fmt::Debug for RunningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningService")
            .field("local_addr", &self.local_addr)
            .field("sandbox", &self.sandbox.is_some())
            .finish_non_exhaustive()
    }
}

fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

impl Service {
    /// Starts everything and returns once the HTTP server listens and the pullers run. WeChat's
    /// clock is the system clock, or in sandbox mode the embedded emulator's.
    ///
    /// While another instance leads the database (PostgreSQL, or the same SQLite file) this
    /// waits as a standby (see [`leader`](crate::leader)); dropping the future stops waiting.
    pub async fn start(config: Config) -> Result<RunningService, Error> {
        Service::start_inner(config, None, None).await
    }

    /// [`start`](Self::start) on a socket the caller bound instead of `config.listen`: a test
    /// binds `127.0.0.1:0` and knows the port before the service (or its standby) answers,
    /// where "bind, read the port, close it, pass the number" could lose the port to another
    /// test in between.
    pub async fn start_on(
        config: Config,
        listener: std::net::TcpListener,
    ) -> Result<RunningService, Error> {
        Service::start_inner(config, None, Some(listener)).await
    }

    /// [`start`](Self::start) with WeChat's clock given: the service compares `send_time`, the
    /// 48-hour window and its start time with `clock` (tests pass the emulator's clock, e.g.
    /// `Clock::from_fn(move || emulator.now())`, and move time without sleeping).
    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<RunningService, Error> {
        Service::start_inner(config, Some(clock), None).await
    }

    async fn start_inner(
        config: Config,
        clock: Option<Clock>,
        listener: Option<std::net::TcpListener>,
    ) -> Result<RunningService, Error> {
        let mut sandbox = if config.is_sandbox() {
            Some(sandbox::Sandbox::start(&config).await?)
        } else {
            None
        };
        // The sandbox downloads media to a directory of its own unless told otherwise.
        let config = match sandbox.as_ref().and_then(|s| s.media_dir.as_ref()) {
            Some(dir) => {
                let mut config = config;
                config.media.download_dir = Some(dir.path().to_owned());
                // Voice notes the console can play (WAV); without ffmpeg the conversion is
                // recorded as failed and the note delivered anyway.
                config
                    .media
                    .voice_convert_to
                    .get_or_insert(crate::config::VoiceTarget::Wav);
                config
            }
            None => config,
        };
        let (corp_id, secret, callback_token, aes_key, base_url) = match &sandbox {
            Some(s) => (
                s.corp_id.clone(),
                Secret::new(s.secret.clone()),
                Some(Secret::new(s.callback_token.clone())),
                Some(Secret::new(s.encoding_aes_key.clone())),
                Some(s.emulator_url.clone()),
            ),
            None => (
                config.wechat.corp_id.clone(),
                config
                    .wechat
                    .secret
                    .clone()
                    .ok_or_else(|| Error::Config("wechat.secret is missing".into()))?,
                config.wechat.callback_token.clone(),
                config.wechat.encoding_aes_key.clone(),
                config.wechat.base_url.clone(),
            ),
        };
        let crypto = match (&callback_token, &aes_key) {
            (Some(token), Some(key)) => Some(
                CallbackCrypto::new(token.expose(), key.expose(), &corp_id)
                    .map_err(|e| Error::Config(format!("wechat.encoding_aes_key: {e}")))?,
            ),
            _ => {
                tracing::warn!(
                    path = config.callback.path,
                    "callbacks are off (no wechat.callback_token and wechat.encoding_aes_key): \
                     the callback path is not served, only the safety pull runs"
                );
                None
            }
        };
        let clock = match (clock, &sandbox) {
            (Some(clock), _) => clock,
            (None, Some(s)) => {
                let emulator = s.running.emulator().clone();
                Clock::from_fn(move || emulator.now())
            }
            (None, None) => Clock::system(),
        };
        let client_clock = clock.clone();
        let mut builder = Client::builder(corp_id.clone(), secret)
            // Access-token and callback-Token freshness are the service's own time.
            .clock(move || client_clock.local_time())
            .timeout(config.wechat.timeout)
            .connect_timeout(config.wechat.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("wechat-kf-serve/", env!("CARGO_PKG_VERSION")))
            .budget(budget::Limits::new(
                config.wechat.calls_per_minute,
                config.wechat.calls_per_hour,
            ))
            .rate_limit_block(config.wechat.rate_limit_block);
        if let Some(url) = &base_url {
            builder = builder.base_url(url.clone());
        }
        // The budget's store (Redis when tokens are shared, this process otherwise), counted
        // into the metrics.
        let metrics = Arc::new(Metrics::new());
        let mut budget_store: Arc<dyn budget::BudgetStore> = Arc::new(budget::MemoryBudget::new());
        if let Some(url) = config
            .wechat
            .token_store
            .as_ref()
            .filter(|url| !url.is_empty())
        {
            let store = RedisTokenStore::new(url.expose())
                .map_err(|e| Error::Config(format!("wechat.token_store: {e}")))?;
            builder = builder.token_store(Arc::new(store));
            let budget = RedisBudget::new(url.expose())
                .map_err(|e| Error::Config(format!("wechat.token_store: {e}")))?;
            budget_store = Arc::new(budget);
            tracing::info!("access tokens and the call budget shared through Redis");
        }
        builder = builder.budget_store(Arc::new(MeteredBudget::new(
            budget_store,
            budget::Limits::new(config.wechat.calls_per_minute, config.wechat.calls_per_hour),
            metrics.clone(),
        )));
        let client = builder.build()?;
        let started_at = clock.now();
        let origin = base_url
            .clone()
            .unwrap_or_else(|| "https://qyapi.weixin.qq.com".into());

        // One gettoken before anything else: credentials WeChat rejects stop the start with the
        // setting named; an unreachable WeChat starts not ready and is probed until it answers.
        let readiness = Readiness::new();
        readiness.fail(readiness::SERVICE, "starting");
        let wechat_reachable = match check_credentials(&client, config.wechat.timeout).await {
            Ok(()) => true,
            Err(Checked::Rejected(e)) => return Err(e),
            Err(Checked::Unreachable(reason)) => {
                tracing::warn!(
                    origin,
                    reason,
                    "WeChat is unreachable; not ready until it answers"
                );
                readiness.fail(
                    readiness::WECHAT,
                    format!("unreachable: {reason} ({origin})"),
                );
                false
            }
        };

        let location = config.db_location();
        // Bound before the election: a standby answers on the socket the leader will serve
        // on, so taking over leaves no moment without a listener and keeps an OS-chosen port.
        let listener = match listener {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(config.listen)
                .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?,
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("cannot set the listening socket non-blocking", e))?;
        // Lead first, then open: a standby holds no store connection that could die while it
        // waits, and a newer version waiting as standby does not migrate under the leader.
        let limits = Limits {
            read_timeout: config.http.read_timeout,
            idle_timeout: config.http.idle_timeout,
            max_connections: config.http.max_connections,
            shutdown_grace: config.http.shutdown_grace,
        };
        let has_callbacks = crypto.is_some();
        // A PostgreSQL standby answers callbacks too, passing their wakes to the leader.
        let standby_callbacks = crypto
            .clone()
            .filter(|_| store::is_postgres(&location))
            .map(|crypto| {
                let settings = CallbackSettings {
                    crypto,
                    path: config.callback.path.clone(),
                    timestamp_window: config.callback.timestamp_window,
                    max_body: config.callback.max_body_bytes,
                };
                let relay = Arc::new(Relay::new(&location));
                callback::routes(CallbackState::standby(
                    settings,
                    relay,
                    metrics.clone(),
                    clock.clone(),
                ))
            });
        let leader = leader::lead(
            &location,
            &listener,
            config.storage.standby_poll,
            limits,
            standby_callbacks,
        )
        .await?;
        let store = store::open(
            &location,
            store::OpenOptions {
                synchronous: config.storage.synchronous,
                pool_size: config.storage.pool_size,
            },
        )
        .await?;
        // Before the deliverer scans for what the last leader left (see `Store::fence`).
        store.fence().await?;
        tracing::info!(backend = store.backend(), "store open");

        let responder = &config.responder;
        let transcriber = match &responder.transcription {
            Some(t) => Some(Arc::new(Transcriber::new(
                t,
                responder.base_url.as_deref(),
                responder.api_key.as_ref(),
            )?)),
            None => None,
        };
        let media = MediaFetcher::new(client.clone(), &config.media, transcriber, metrics.clone())
            .await?
            .map(Arc::new);
        if let Some(fetcher) = &media {
            backfill_media(&store, fetcher).await?;
        }
        let gate = Arc::new(Gate::new(
            client.clone(),
            store.clone(),
            clock.clone(),
            metrics.clone(),
        ));
        let shutdown = CancellationToken::new();
        let reply_wake = Arc::new(Notify::new());
        let conversation = Arc::new(config.conversation.clone());
        let conversations = Arc::new(Conversations::new(conversation.clone()));
        let backlog = Backlog::default();
        let responder = Responder::new(
            &config.responder,
            config.sandbox.echo,
            &config.handoff,
            store.clone(),
            gate.clone(),
            clock.clone(),
            metrics.clone(),
            backlog.clone(),
        )?;
        let mut delivery_config = config.webhook.clone();
        let target = match responder {
            Some(responder) => {
                // One customer per delivery: as many deliveries in flight as model requests.
                delivery_config.concurrency = config.responder.concurrency;
                delivery_config.timeout = config.responder.deadline + Duration::from_secs(30);
                Sink::Responder(Arc::new(responder))
            }
            None => Sink::new(&config.webhook, config.sandbox.echo)?,
        };
        let (deliverer, queue, incoming) = Deliverer::recover(
            store.clone(),
            delivery_config,
            target,
            config.joiner,
            metrics.clone(),
            reply_wake.clone(),
            clock.clone(),
        )
        .await?;
        let mut deliverer = deliverer
            .watch_store(readiness.clone())
            .with_backlog(backlog);
        let handover = Handover {
            lanes: media.clone().map(|fetcher| {
                MediaLanes::new(fetcher, store.clone(), queue.clone(), shutdown.clone())
            }),
            queue: queue.clone(),
        };
        let notifier = Notifier::new(
            &config.handoff.notify,
            config.webhook.secret.clone(),
            store.clone(),
            metrics.clone(),
        )
        .map(Arc::new);
        let recorder = Arc::new(Recorder {
            store: store.clone(),
            handover: handover.clone(),
            notifier,
            clock: clock.clone(),
        });
        let delivery_control = deliverer.control();
        let pullers = Arc::new(Pullers::new(PullContext {
            client: client.clone(),
            store: store.clone(),
            deliveries: queue.clone(),
            metrics: metrics.clone(),
            config: config.pull.clone(),
            shutdown: shutdown.clone(),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            clock: clock.clone(),
            started_at,
            handoff: config.handoff.clone(),
            conversation: conversation.clone(),
            media: handover.lanes.clone(),
            replies: reply_wake.clone(),
            readiness: readiness.clone(),
        }));
        let (api_token, reply_api) = match (&config.api.token, &sandbox) {
            (Some(token), _) => (Some(token.clone()), ReplyApi::Configured),
            (None, Some(s)) => (Some(Secret::new(s.api_token.clone())), ReplyApi::Generated),
            (None, None) => (None, ReplyApi::Off),
        };
        if api_token.is_none() {
            tracing::info!("the reply API is off (no api.token): /v1/* answers 403");
        }
        let callbacks = crypto.is_some();
        let state = AppState::new(AppParts {
            client: client.clone(),
            store: store.clone(),
            gate: gate.clone(),
            conversations: conversations.clone(),
            recorder: recorder.clone(),
            metrics: metrics.clone(),
            pullers: pullers.clone(),
            clock: clock.clone(),
            callback: crypto.map(|crypto| CallbackSettings {
                crypto,
                path: config.callback.path.clone(),
                timestamp_window: config.callback.timestamp_window,
                max_body: config.callback.max_body_bytes,
            }),
            api_token,
            readiness: readiness.clone(),
            metrics_token: config.http.metrics_token.clone(),
            metrics_apart: config.http.metrics_listen.is_some(),
            sandbox: sandbox
                .as_ref()
                .map(|s| (s.running.emulator().clone(), s.open_kfid.clone())),
            deliveries: delivery_control,
            media_dir: config.media.download_dir.clone(),
            webhook_url: config.webhook.url.clone(),
            delivers_to: match config.responder.effective_kind(config.sandbox.echo) {
                ResponderKind::Webhook if config.webhook.url.is_some() => "webhook",
                ResponderKind::Webhook => "stdout",
                kind => kind.as_str(),
            },
            console_token: match (&config.console.token, &sandbox) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(s)) => Some(Secret::new(s.console_token.clone())),
                (None, None) => None,
            },
        });

        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("cannot serve on the listening socket", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listening address", e))?;
        let connections = Connections::new(limits, metrics.clone());
        let mut servers = vec![tokio::spawn(server::serve(
            listener,
            router(state.clone()),
            connections.clone(),
            shutdown.clone(),
        ))];
        let mut metrics_addr = None;
        if let Some(addr) = config.http.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::io(format!("cannot listen on {addr} (http.metrics_listen)"), e)
            })?;
            metrics_addr = Some(
                listener
                    .local_addr()
                    .map_err(|e| Error::io("cannot read the metrics listening address", e))?,
            );
            servers.push(tokio::spawn(server::serve(
                listener,
                metrics_router(&state),
                connections,
                shutdown.clone(),
            )));
        }
        let deliverer = tokio::spawn(deliverer.run(incoming, shutdown.clone()));
        let idle_gate = gate.clone();
        let replies = tokio::spawn(
            ReplySender {
                client: client.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                gate,
                joiner: config.joiner,
                wake: reply_wake,
                concurrency: config.webhook.concurrency,
                retry_initial: Duration::from_secs(1),
                retry_max: Duration::from_secs(300),
                clock: clock.clone(),
                conversations: conversations.clone(),
                recorder: recorder.clone(),
            }
            .run(shutdown.clone()),
        );

        if let Some(s) = &mut sandbox {
            let url = format!("http://{}{}", loopback(local_addr), config.callback.path);
            s.running.emulator().set_callback_url(Some(url));
            s.info.service_url = format!("http://{}", loopback(local_addr));
        }

        // Accounts: those the store knows (with their cursors), configured ones, the sandbox's
        // demo account, and (in the background) those `kf/account/list` returns.
        for account in store.accounts().await? {
            pullers.start(&account.open_kfid, account.cursor, account.catch_up_before);
        }
        for open_kfid in &config.wechat.accounts {
            pullers.start(open_kfid, None, None);
        }
        if let Some(s) = &sandbox {
            pullers.start(&s.open_kfid, None, None);
        }
        let mut background = Vec::new();
        let discovery = if !config.wechat.discover_accounts {
            Discovery::Off
        } else if wechat_reachable {
            // Awaited (bounded), so the summary below names the accounts found.
            match tokio::time::timeout(config.wechat.timeout, discover(&client, &pullers)).await {
                Ok(Ok(n)) => Discovery::Listed(n),
                Ok(Err(e)) => {
                    let reason = crate::error::safe_error(&e);
                    tracing::warn!(
                        error = reason,
                        "cannot list accounts (kf/account/list); relying on callbacks"
                    );
                    Discovery::Failed(reason)
                }
                Err(_) => {
                    tracing::warn!("kf/account/list did not answer in time; relying on callbacks");
                    Discovery::Failed("no answer in time".into())
                }
            }
        } else {
            Discovery::Pending
        };
        if !wechat_reachable {
            background.push(tokio::spawn(probe_wechat(
                client.clone(),
                readiness.clone(),
                origin.clone(),
                config.wechat.discover_accounts.then(|| pullers.clone()),
                shutdown.clone(),
            )));
        }
        if has_callbacks && store::is_postgres(&location) {
            // The wakes of callbacks that reached a standby.
            background.push(tokio::spawn(wake_relay::listen(
                location.clone(),
                pullers.clone(),
                shutdown.clone(),
            )));
        }
        if config.handoff.idle > Duration::ZERO {
            let (service_state, auto) = config.handoff.target();
            background.push(tokio::spawn(
                IdleRule {
                    after: config.handoff.idle,
                    service_state,
                    servicer_userid: config.handoff.servicer_userid.clone().filter(|_| !auto),
                    auto,
                    message: config.handoff.message.clone(),
                    store: store.clone(),
                    client: client.clone(),
                    gate: idle_gate,
                    conversations: conversations.clone(),
                    recorder: recorder.clone(),
                    metrics: metrics.clone(),
                    clock: clock.clone(),
                }
                .run(shutdown.clone()),
            ));
        }
        if config.storage.retention > Duration::ZERO {
            background.push(tokio::spawn(purge_loop(
                store.clone(),
                config.storage.retention,
                clock.clone(),
                shutdown.clone(),
            )));
        }
        let accounts = pullers.accounts();
        let summary = summary::render(
            &config,
            &Facts {
                origin: origin.clone(),
                wechat_reachable,
                accounts: accounts.clone(),
                discovery: discovery.clone(),
                callbacks,
                reply_api,
                store_backend: store.backend(),
                console: (config.console.token.is_some() || sandbox.is_some())
                    .then(|| format!("http://{}/console", loopback(local_addr))),
            },
        );
        if accounts.is_empty() && discovery != Discovery::Pending {
            // Say so rather than idle silently (a new corp, or an emulator without accounts).
            tracing::warn!(
                origin,
                "no KF account to pull: kf/account/list found none and none is configured \
                 (wechat.accounts); nothing is pulled until a callback names an account"
            );
        }
        if let Some(fetcher) = &media {
            background.push(tokio::spawn(fetcher.clone().housekeeping(
                store.clone(),
                config.storage.retention,
                shutdown.clone(),
            )));
        }
        readiness.clear(readiness::SERVICE);
        tracing::info!(
            listen = %local_addr,
            metrics_listen = metrics_addr.map(|a| a.to_string()),
            sandbox = sandbox.is_some(),
            webhook = config.webhook.url.is_some(),
            accounts = accounts.len(),
            reply_api = reply_api != ReplyApi::Off,
            callbacks,
            "wechat-kf serve started"
        );
        Ok(RunningService {
            local_addr,
            metrics_addr,
            state,
            store,
            pullers,
            client,
            sandbox,
            clock,
            shutdown,
            servers,
            deliverer,
            replies,
            background,
            leader,
            summary,
        })
    }

    /// Starts the service, runs until `stop` completes, then shuts down gracefully. Returns
    /// [`Error::LeadershipLost`] if a PostgreSQL leader loses its lock (after stopping at once,
    /// see [`RunningService::abandon`]), so that a supervisor restarts it as a standby.
    pub async fn run(config: Config, stop: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(stop);
        let running = tokio::select! {
            running = Service::start(config) => running?,
            () = &mut stop => return Ok(()),
        };
        eprint!("{}", running.summary());
        eprintln!("wechat-kf serve: listening on {}", running.base_url());
        if let Some(info) = running.sandbox() {
            eprintln!("{}", info.instructions());
        }
        let lost = tokio::select! {
            () = &mut stop => false,
            () = running.leadership_lost() => true,
        };
        if lost {
            tracing::error!(
                "lost the database leader lock; stopping at once, a standby may already lead"
            );
            running.abandon().await;
            return Err(Error::LeadershipLost);
        }
        running.shutdown().await;
        Ok(())
    }
}

/// Why the start-up `gettoken` failed.
enum Checked {
    /// WeChat refused the credentials: the start stops, naming the setting.
    Rejected(Error),
    /// No answer (network, timeout, 5xx, busy): the reason, without secrets.
    Unreachable(String),
}

/// The setting to fix when `gettoken` answers with a credentials error (40001, 40013, 41002,
/// 41004; official doc 90313), as a configuration error naming it; `None` for any other failure.
fn credentials_rejected(error: &wechat_kf::client::Error) -> Option<Error> {
    use wechat_kf::client::ErrCode;
    let (key, var, what) = match error.errcode()? {
        ErrCode::InvalidCredential => (
            "wechat.secret",
            "WECHAT_KF_SECRET",
            "WeChat rejected the secret for this corp id (40001)",
        ),
        ErrCode::InvalidCorpId => (
            "wechat.corp_id",
            "WECHAT_KF_CORP_ID",
            "WeChat does not know this corp id (40013)",
        ),
        ErrCode::MissingCorpId => (
            "wechat.corp_id",
            "WECHAT_KF_CORP_ID",
            "WeChat received no corp id (41002)",
        ),
        ErrCode::MissingCorpSecret => (
            "wechat.secret",
            "WECHAT_KF_SECRET",
            "WeChat received no secret (41004)",
        ),
        _ => return None,
    };
    Some(Error::Config(format!(
        "{key}: {what}; check {key} ({var}): the KF secret of the corp's \"微信客服\" app"
    )))
}

/// One `gettoken` (the token is kept for the calls that follow), bounded in time.
async fn check_credentials(client: &Client, timeout: Duration) -> Result<(), Checked> {
    match tokio::time::timeout(timeout, client.token()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(match credentials_rejected(&e) {
            Some(rejected) => Checked::Rejected(rejected),
            None => Checked::Unreachable(crate::error::safe_error(&e)),
        }),
        Err(_) => Err(Checked::Unreachable(format!(
            "gettoken: no answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Lists the corp's accounts (`kf/account/list`) and starts a puller for each; how many.
async fn discover(client: &Client, pullers: &Pullers) -> Result<usize, wechat_kf::client::Error> {
    let accounts = client.accounts().list_all().await?;
    for account in &accounts {
        pullers.start(&account.open_kfid, None, None);
    }
    Ok(accounts.len())
}

/// While WeChat did not answer at start: `gettoken` with backoff until it does (then lists the
/// accounts, when `pullers` is given), keeping the readiness reason current.
async fn probe_wechat(
    client: Client,
    readiness: Readiness,
    origin: String,
    pullers: Option<Arc<Pullers>>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        failures += 1;
        let delay = backoff(
            failures,
            Duration::from_secs(1),
            Duration::from_secs(60),
            crate::retry::jitter(),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        match client.token().await {
            Ok(_) => break,
            Err(e) => match credentials_rejected(&e) {
                Some(rejected) => {
                    tracing::error!(error = %rejected, "WeChat rejected the credentials");
                    readiness.fail(
                        readiness::WECHAT,
                        format!("credentials rejected: {rejected}"),
                    );
                }
                None => {
                    let reason = crate::error::safe_error(&e);
                    readiness.fail(
                        readiness::WECHAT,
                        format!("unreachable: {reason} ({origin})"),
                    );
                }
            },
        }
    }
    readiness.clear(readiness::WECHAT);
    tracing::info!(origin, "WeChat answers: ready");
    if let Some(pullers) = pullers {
        match discover(&client, &pullers).await {
            Ok(n) => tracing::info!(accounts = n, "listed the accounts (kf/account/list)"),
            Err(e) => tracing::warn!(
                error = %crate::error::safe_error(&e),
                "cannot list accounts (kf/account/list); relying on callbacks"
            ),
        }
    }
}

/// Downloads the media of undelivered messages stored without a media record (the service
/// stopped between a page's commit and its downloads), before the deliverer sends them.
async fn backfill_media(store: &Arc<dyn Store>, fetcher: &MediaFetcher) -> Result<(), Error> {
    const CHUNK: usize = 100;
    loop {
        let jobs = store
            .messages_without_media(fetcher.msgtypes(), CHUNK)
            .await?;
        let n = jobs.len();
        if n == 0 {
            return Ok(());
        }
        let mut records = Vec::with_capacity(n);
        for job in jobs {
            let message = wechat_kf::message::Message::from_json(&job.raw).ok();
            let record = match message.as_ref().and_then(|m| fetcher.job(m)) {
                Some(media) => fetcher.fetch(&job.open_kfid, &media).await,
                None => serde_json::json!({
                    "msgid": message.as_ref().map(|m| m.msgid().as_str().to_owned()),
                    "error": {"kind": "no_media_id", "message": "the message names no media to download"},
                }),
            };
            records.push((job.seq, record.to_string()));
        }
        store.record_media(records).await?;
        tracing::info!(messages = n, "downloaded media left over by the last run");
        if n < CHUNK {
            return Ok(());
        }
    }
}

/// Deletes delivered messages older than the retention, a chunk at a time, every 10 minutes.
async fn purge_loop(
    store: Arc<dyn Store>,
    retention: Duration,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut first = true;
    loop {
        let wait = if first {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(600)
        };
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        let before = clock.local_ms() - retention.as_millis().min(i64::MAX as u128) as i64;
        let mut total = 0;
        loop {
            match store.purge(before).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(error = %e, "purge failed");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        if total > 0 {
            tracing::info!(rows = total, "purged delivered messages past the retention");
        }
    }
}

impl RunningService {
    /// Where the HTTP server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served apart (`http.metrics_listen`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://<listen address>` (loopback when listening on all interfaces).
    pub fn base_url(&self) -> String {
        format!("http://{}", loopback(self.local_addr))
    }

    /// The handlers' state (use with [`router`](crate::router) and `tower::ServiceExt::oneshot`).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.state.metrics()
    }

    /// The account pullers.
    pub fn pullers(&self) -> &Arc<Pullers> {
        &self.pullers
    }

    /// The API client the service uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// WeChat's clock as the service reads it.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// This instance's leadership of its store (`None` for an in-memory SQLite database).
    pub fn leader(&self) -> Option<&LeaderLock> {
        self.leader.as_ref()
    }

    /// Resolves if this instance loses its PostgreSQL leader lock; never with SQLite.
    pub fn leadership_lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let lost = self.leader.as_ref().map(LeaderLock::lost);
        async move {
            match lost {
                Some(lost) => lost.await,
                None => std::future::pending().await,
            }
        }
    }

    /// The block printed at start: what runs and where messages go (no secrets).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Sandbox details (emulator URL, demo account, reply-API token), in sandbox mode.
    pub fn sandbox(&self) -> Option<&sandbox::SandboxInfo> {
        self.sandbox.as_ref().map(|s| &s.info)
    }

    /// The embedded emulator, in sandbox mode.
    pub fn emulator(&self) -> Option<&wechat_kf_emulator::Emulator> {
        self.sandbox.as_ref().map(|s| s.running.emulator())
    }

    /// Stops gracefully: the HTTP server stops accepting and finishes its requests (for at most
    /// `http.shutdown_grace`, then closes what remains); pullers
    /// finish the page commit in progress; the deliverer waits (up to the webhook timeout) for
    /// deliveries in flight and records them; queued work is finished and the store closed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.state.set_ready(false);
        self.shutdown.cancel();
        for server in self.servers {
            let _ = server.await;
        }
        self.pullers.join().await;
        let _ = self.deliverer.await;
        let _ = self.replies.await;
        for task in self.background {
            task.abort();
        }
        self.store.close().await;
        // Released only now: a standby must not start while this instance still writes.
        drop(self.leader);
        if let Some(sandbox) = self.sandbox {
            sandbox.running.shutdown().await;
        }
        tracing::info!("stopped");
    }

    /// Stops at once, finishing nothing: for a leader that lost its lock, whose successor may
    /// already be running. Every task is aborted (an uncommitted PostgreSQL transaction rolls
    /// back) and the store closed, so this instance writes nothing more; a delivery or reply
    /// in flight whose outcome was not recorded is repeated by the successor, as after a crash.
    pub async fn abandon(self) {
        self.state.set_ready(false);
        self.shutdown.cancel();
        for server in &self.servers {
            server.abort();
        }
        self.deliverer.abort();
        self.replies.abort();
        for task in &self.background {
            task.abort();
        }
        self.pullers.abort().await;
        let _ = self.deliverer.await;
        let _ = self.replies.await;
        for server in self.servers {
            let _ = server.await;
        }
        self.store.close().await;
        drop(self.leader);
        if let Some(sandbox) = self.sandbox {
            sandbox.running.shutdown().await;
        }
        tracing::info!("stopped");
    }
}
