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
use wechat_kf::client::token::RedisTokenStore;
use wechat_kf::crypto::CallbackCrypto;

use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::delivery::Deliverer;
use crate::delivery::sink::Sink;
use crate::error::Error;
use crate::http::{AppParts, AppState, CallbackSettings, router};
use crate::leader::{self, LeaderLock};
use crate::media::MediaFetcher;
use crate::media_lanes::MediaLanes;
use crate::metrics::Metrics;
use crate::puller::{PullContext, Pullers};
use crate::sandbox;
use crate::send_policy::Gate;
use crate::sender::ReplySender;
use crate::store::{self, Store};

/// The service; see [`Service::start`].
#[derive(Debug)]
pub struct Service;

/// A started service.
pub struct RunningService {
    local_addr: SocketAddr,
    state: AppState,
    store: Arc<dyn Store>,
    pullers: Arc<Pullers>,
    client: Client,
    sandbox: Option<sandbox::Sandbox>,
    clock: Clock,
    /// Cancelled to stop every task; each holds a clone.
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    deliverer: JoinHandle<()>,
    replies: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    leader: Option<LeaderLock>,
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
            .user_agent(concat!("wechat-kf-serve/", env!("CARGO_PKG_VERSION")));
        if let Some(url) = &base_url {
            builder = builder.base_url(url.clone());
        }
        if let Some(url) = config
            .wechat
            .token_store
            .as_ref()
            .filter(|url| !url.is_empty())
        {
            let store = RedisTokenStore::new(url.expose())
                .map_err(|e| Error::Config(format!("wechat.token_store: {e}")))?;
            builder = builder.token_store(Arc::new(store));
            tracing::info!("access tokens shared through Redis");
        }
        let client = builder.build()?;
        let started_at = clock.now();

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
        let leader = leader::lead(&location, &listener, config.storage.standby_poll).await?;
        let store = store::open(&location, config.storage.synchronous).await?;
        tracing::info!(backend = store.backend(), "store open");

        let metrics = Arc::new(Metrics::new());
        let media = MediaFetcher::new(client.clone(), &config.media, metrics.clone())
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
        let target = Sink::new(&config.webhook, config.sandbox.echo)?;
        let (deliverer, queue, incoming) = Deliverer::recover(
            store.clone(),
            config.webhook.clone(),
            target,
            config.joiner,
            metrics.clone(),
            reply_wake.clone(),
            clock.clone(),
        )
        .await?;
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
            media: media.clone().map(|fetcher| {
                MediaLanes::new(fetcher, store.clone(), queue.clone(), shutdown.clone())
            }),
            replies: reply_wake.clone(),
        }));
        let api_token = match (&config.api.token, &sandbox) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(s)) => Some(Secret::new(s.api_token.clone())),
            (None, None) => None,
        };
        if api_token.is_none() {
            tracing::info!("the reply API is off (no api.token): /v1/* answers 403");
        }
        let state = AppState::new(AppParts {
            client: client.clone(),
            store: store.clone(),
            gate: gate.clone(),
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
        });
        state.set_ready(false);

        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("cannot serve on the listening socket", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listening address", e))?;
        let router = router(state.clone());
        let server_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { server_shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        let deliverer = tokio::spawn(deliverer.run(incoming, shutdown.clone()));
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
        if config.wechat.discover_accounts {
            let (client, pullers) = (client.clone(), pullers.clone());
            background.push(tokio::spawn(async move {
                match client.accounts().list_all().await {
                    Ok(accounts) => {
                        for account in accounts {
                            pullers.start(&account.open_kfid, None, None);
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %crate::error::safe_error(&e),
                        "cannot list accounts (kf/account/list); relying on callbacks"
                    ),
                }
            }));
        }
        if config.storage.retention > Duration::ZERO {
            background.push(tokio::spawn(purge_loop(
                store.clone(),
                config.storage.retention,
                clock.clone(),
                shutdown.clone(),
            )));
        }
        if let Some(fetcher) = &media {
            background.push(tokio::spawn(fetcher.clone().housekeeping(
                store.clone(),
                config.storage.retention,
                shutdown.clone(),
            )));
        }
        state.set_ready(true);
        tracing::info!(
            listen = %local_addr,
            sandbox = sandbox.is_some(),
            webhook = config.webhook.url.is_some(),
            "wechat-kf serve started"
        );
        Ok(RunningService {
            local_addr,
            state,
            store,
            pullers,
            client,
            sandbox,
            clock,
            shutdown,
            server,
            deliverer,
            replies,
            background,
            leader,
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

    /// Sandbox details (emulator URL, demo account, reply-API token), in sandbox mode.
    pub fn sandbox(&self) -> Option<&sandbox::SandboxInfo> {
        self.sandbox.as_ref().map(|s| &s.info)
    }

    /// The embedded emulator, in sandbox mode.
    pub fn emulator(&self) -> Option<&wechat_kf_emulator::Emulator> {
        self.sandbox.as_ref().map(|s| s.running.emulator())
    }

    /// Stops gracefully: the HTTP server stops accepting and finishes its requests; pullers
    /// finish the page commit in progress; the deliverer waits (up to the webhook timeout) for
    /// deliveries in flight and records them; queued work is finished and the store closed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.state.set_ready(false);
        self.shutdown.cancel();
        let _ = self.server.await;
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
        self.server.abort();
        self.deliverer.abort();
        self.replies.abort();
        for task in &self.background {
            task.abort();
        }
        self.pullers.abort().await;
        let _ = self.deliverer.await;
        let _ = self.replies.await;
        let _ = self.server.await;
        self.store.close().await;
        drop(self.leader);
        if let Some(sandbox) = self.sandbox {
            sandbox.running.shutdown().await;
        }
        tracing::info!("stopped");
    }
}
