//! The async API client: access tokens, every `kf/*` endpoint and the cursor puller.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wechat_kf::client::Error> {
//! use wechat_kf::client::Client;
//! use wechat_kf::client::messages::{SendMsgRequest, SyncMsgRequest};
//! use wechat_kf::client::outbound::OutboundMessage;
//!
//! let client = Client::builder("wwCORPID", "KF_SECRET").build()?;
//! let page = client
//!     .messages()
//!     .sync(SyncMsgRequest::new("wkACCOUNT").limit(1000))
//!     .await?;
//! for message in &page.msg_list {
//!     if let Some(text) = message.text() {
//!         let reply = OutboundMessage::text(format!("echo: {}", text.content));
//!         let to = message.external_userid().unwrap().clone();
//!         client
//!             .messages()
//!             .send(SendMsgRequest::new(to, "wkACCOUNT", reply))
//!             .await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Endpoints are grouped by noun: [`Client::accounts`], [`Client::servicers`],
//! [`Client::service_state`], [`Client::messages`], [`Client::customers`],
//! [`Client::upgrade_service`], [`Client::statistics`], [`Client::knowledge`], [`Client::media`],
//! plus [`Client::get_corp_qualification`] and [`Client::convert_open_kfids`].
//!
//! Each group's handle and its request and response types live in the module named after that
//! method ([`messages::SyncMsgRequest`], [`accounts::AddAccountRequest`], …); what you send is in
//! [`outbound`], token storage in [`token`], the cursor puller in [`puller`]. This module itself
//! holds only what every group shares: [`Client`], [`ClientBuilder`], [`Error`], [`ErrCode`],
//! [`ValidationError`], [`RetryPolicy`], [`Idempotency`] and [`Secret`].
//!
//! Every call goes through one path that owns the access token (fetched on first use, refreshed
//! before expiry, single-flight, invalidated and retried once on 40001/40014/42001), the
//! `errcode`/`errmsg` envelope, errcode mapping ([`ErrCode`]) and retries ([`RetryPolicy`]).
//! Each call is a `wechat_kf.call` tracing span with the endpoint, the number of attempts, the
//! final errcode and the latency; each attempt is a `wechat_kf.attempt` span. Tokens, secrets and
//! message content are never logged.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub mod accounts;
pub mod budget;
pub mod customers;
mod error;
mod execute;
pub mod knowledge;
pub mod media;
pub mod messages;
mod multipart;
pub mod outbound;
pub mod puller;
#[cfg(feature = "redis")]
mod redis_link;
mod retry;
mod secret;
pub mod service_state;
pub mod servicers;
pub mod statistics;
pub mod token;
pub mod upgrade_service;

pub use error::{ErrCode, Error, ValidationError};
pub use retry::{Idempotency, RetryPolicy};
pub use secret::Secret;

use accounts::Accounts;
use customers::Customers;
use execute::Call;
use knowledge::Knowledge;
use media::Media;
use messages::Messages;
use outbound::MenuRules;
use service_state::ServiceStates;
use servicers::Servicers;
use statistics::Statistics;
use token::{AccessToken, MemoryTokenStore, TokenManager, TokenStore, token_key};
use upgrade_service::UpgradeService;

/// The production API origin.
pub const DEFAULT_BASE_URL: &str = "https://qyapi.weixin.qq.com";

/// A source of wall-clock time (replaceable in tests).
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The kf API client. Cheap to clone: clones share the HTTP connection pool and the access token.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    corp_id: String,
    secret: Secret,
    retry: RetryPolicy,
    tokens: TokenManager,
    clock: Clock,
    menu_rules: MenuRules,
    media_timeout: Duration,
    budget: Budget,
}

/// The call budget a client spends before each call (see [`budget`]).
struct Budget {
    store: Arc<dyn budget::BudgetStore>,
    limits: budget::Limits,
    max_wait: Duration,
    block: Duration,
    /// The waiting line of each budget key: callers waiting for the budget are served in the
    /// order they came (tokio's mutex is FIFO), so an account that just had a call goes to the
    /// back of the line behind every other account waiting, instead of whoever polls first.
    lines: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("corp_id", &self.inner.corp_id)
            .field("base_url", &self.inner.base_url)
            .field("secret", &self.inner.secret)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client for a corp id and its KF (or self-built app) secret.
    pub fn builder(corp_id: impl Into<String>, secret: impl Into<Secret>) -> ClientBuilder {
        ClientBuilder::new(corp_id, secret)
    }

    /// The corp id.
    pub fn corp_id(&self) -> &str {
        &self.inner.corp_id
    }

    /// The API origin this client talks to (without `/cgi-bin`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The validation rules applied to outbound messages.
    pub fn menu_rules(&self) -> MenuRules {
        self.inner.menu_rules
    }

    /// KF accounts and contact links (`kf/account/*`, `kf/add_contact_way`).
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts::new(self)
    }

    /// Servicers of an account (`kf/servicer/*`).
    pub fn servicers(&self) -> Servicers<'_> {
        Servicers::new(self)
    }

    /// Session state (`kf/service_state/*`).
    pub fn service_state(&self) -> ServiceStates<'_> {
        ServiceStates::new(self)
    }

    /// Pulling, sending and recalling messages (`kf/sync_msg`, `kf/send_msg`,
    /// `kf/send_msg_on_event`, `kf/recall_msg`).
    pub fn messages(&self) -> Messages<'_> {
        Messages::new(self)
    }

    /// Customer profiles (`kf/customer/batchget`).
    pub fn customers(&self) -> Customers<'_> {
        Customers::new(self)
    }

    /// "Upgrade service" recommendations (`kf/customer/*upgrade_service*`).
    pub fn upgrade_service(&self) -> UpgradeService<'_> {
        UpgradeService::new(self)
    }

    /// Daily statistics (`kf/get_corp_statistic`, `kf/get_servicer_statistic`).
    pub fn statistics(&self) -> Statistics<'_> {
        Statistics::new(self)
    }

    /// The knowledge base (`kf/knowledge/*`).
    pub fn knowledge(&self) -> Knowledge<'_> {
        Knowledge::new(self)
    }

    /// Temporary media (`media/upload`, `media/get`, `media/uploadimg`).
    pub fn media(&self) -> Media<'_> {
        Media::new(self)
    }

    /// `GET kf/get_corp_qualification`: whether a Channels (视频号) account is bound.
    pub async fn get_corp_qualification(&self) -> Result<CorpQualification, Error> {
        self.execute_json(Call::get("kf/get_corp_qualification"))
            .await
    }

    /// `POST idconvert/open_kfid` (third-party apps only): converts plain open_kfids into the
    /// service-provider-scoped ones.
    pub async fn convert_open_kfids(
        &self,
        open_kfids: impl IntoIterator<Item = impl Into<crate::OpenKfId>>,
    ) -> Result<ConvertOpenKfIdResponse, Error> {
        #[derive(serde::Serialize)]
        struct Body {
            open_kfid_list: Vec<crate::OpenKfId>,
        }
        let body = Body {
            open_kfid_list: open_kfids.into_iter().map(Into::into).collect(),
        };
        self.execute_json(Call::post("idconvert/open_kfid", &body)?)
            .await
    }

    /// The current access token, fetched if needed. Useful to check credentials (the CLI's
    /// `token` command); callers never need it for API calls.
    pub async fn token(&self) -> Result<AccessToken, Error> {
        self.access_token().await
    }

    pub(crate) fn now(&self) -> SystemTime {
        (self.inner.clock)()
    }
}

/// Response of [`Client::get_corp_qualification`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct CorpQualification {
    /// Whether at least one Channels account is bound and confirmed.
    #[serde(default)]
    pub wechat_channels_binding: bool,
}

/// Response of [`Client::convert_open_kfids`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub struct ConvertOpenKfIdResponse {
    /// One entry per converted id.
    #[serde(default)]
    pub items: Vec<ConvertedOpenKfId>,
    /// Ids that could not be converted.
    #[serde(default)]
    pub invalid_open_kfid_list: Vec<crate::OpenKfId>,
}

/// One entry of [`ConvertOpenKfIdResponse::items`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ConvertedOpenKfId {
    /// The id given.
    pub open_kfid: crate::OpenKfId,
    /// The service-provider-scoped id.
    pub new_open_kfid: crate::OpenKfId,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    corp_id: String,
    secret: Secret,
    base_url: String,
    timeout: Duration,
    connect_timeout: Duration,
    media_timeout: Duration,
    retry: RetryPolicy,
    token_store: Option<Arc<dyn TokenStore>>,
    refresh_margin: Duration,
    refresh_lease: Duration,
    user_agent: String,
    http: Option<reqwest::Client>,
    clock: Clock,
    menu_rules: MenuRules,
    budget_store: Option<Arc<dyn budget::BudgetStore>>,
    budget_limits: budget::Limits,
    budget_max_wait: Duration,
    rate_limit_block: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("corp_id", &self.corp_id)
            .field("secret", &self.secret)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder with the defaults: production base URL, 30 s request timeout, 10 s connect
    /// timeout, [`RetryPolicy::default`], an in-memory token store, a 5-minute refresh margin.
    pub fn new(corp_id: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Self {
            corp_id: corp_id.into(),
            secret: secret.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            media_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            token_store: None,
            refresh_margin: Duration::from_secs(300),
            refresh_lease: token::DEFAULT_REFRESH_LEASE,
            user_agent: concat!("wechat-kf/", env!("CARGO_PKG_VERSION")).to_owned(),
            http: None,
            clock: Arc::new(SystemTime::now),
            menu_rules: MenuRules::default(),
            budget_store: None,
            budget_limits: budget::Limits::default(),
            budget_max_wait: Duration::from_secs(10),
            rate_limit_block: budget::BLOCK_AFTER_45009,
        }
    }

    /// The API origin, e.g. an emulator's `http://127.0.0.1:PORT`. A trailing `/` or
    /// `/cgi-bin` is ignored.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        let mut url = base_url.into();
        while url.ends_with('/') {
            url.pop();
        }
        if let Some(stripped) = url.strip_suffix("/cgi-bin") {
            url = stripped.to_owned();
        }
        self.base_url = url;
        self
    }

    /// Total time allowed for one JSON request attempt (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time allowed to establish a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Total time allowed for one media upload or download (default 300 s).
    pub fn media_timeout(mut self, timeout: Duration) -> Self {
        self.media_timeout = timeout;
        self
    }

    /// The retry policy for transient failures.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Where access tokens are kept (default: a private [`MemoryTokenStore`]).
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.token_store = Some(store);
        self
    }

    /// How long before expiry a token is refreshed (default 5 minutes; capped at half the
    /// token's lifetime).
    pub fn token_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// How long one process may hold a shared token store's refresh lease (default 30 s, one
    /// request timeout). A holder slower than this loses the lease to one waiting process; a
    /// process waits at most twice this long before fetching a token without the lease.
    pub fn token_refresh_lease(mut self, lease: Duration) -> Self {
        self.refresh_lease = lease;
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Uses a preconfigured reqwest client (timeouts and user agent set here are then ignored,
    /// except the media timeout). Disable redirects on it: the token travels in the URL.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The wall clock used for token freshness (tests move it to exercise refreshes).
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The limits outbound messages are validated against (default: the strict, older rules).
    pub fn menu_rules(mut self, rules: MenuRules) -> Self {
        self.menu_rules = rules;
        self
    }

    /// The call budget per API (default [`budget::Limits::default`]: 8,000 calls a minute and
    /// 120,000 an hour, 80 % of WeChat's limits). [`budget::Limits::unlimited`] turns it off.
    pub fn budget(mut self, limits: budget::Limits) -> Self {
        self.budget_limits = limits;
        self
    }

    /// Where the budget's usage is kept (default: this process). Give every client of a corp,
    /// in every process, the same shared store (`RedisBudget`, or your own) so that together
    /// they stay within the corp's limits.
    pub fn budget_store(mut self, store: Arc<dyn budget::BudgetStore>) -> Self {
        self.budget_store = Some(store);
        self
    }

    /// How long a call waits for the budget before it fails with [`Error::Budget`] (default
    /// 10 s; zero fails at once).
    pub fn budget_max_wait(mut self, wait: Duration) -> Self {
        self.budget_max_wait = wait;
        self
    }

    /// How long a 45009 blocks the API it was answered on (default
    /// [`budget::BLOCK_AFTER_45009`], WeChat's 60 s; tests against an emulator that injects
    /// single 45009s shorten it).
    pub fn rate_limit_block(mut self, block: Duration) -> Self {
        self.rate_limit_block = block;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, Error> {
        if self.corp_id.is_empty() {
            return Err(Error::Config("the corp id is empty".into()));
        }
        if self.secret.is_empty() {
            return Err(Error::Config("the secret is empty".into()));
        }
        let parsed = reqwest::Url::parse(&self.base_url)
            .map_err(|e| Error::Config(format!("invalid base URL {:?}: {e}", self.base_url)))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "invalid base URL {:?}: not http(s)",
                self.base_url
            )));
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .use_rustls_tls()
                .timeout(self.timeout)
                .connect_timeout(self.connect_timeout)
                .user_agent(self.user_agent)
                // The access token is in the query string: never follow it elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?,
        };
        let store = self
            .token_store
            .unwrap_or_else(|| Arc::new(MemoryTokenStore::new()));
        let key = token_key(&self.corp_id, &self.secret);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url: self.base_url,
                corp_id: self.corp_id,
                secret: self.secret,
                retry: self.retry,
                tokens: TokenManager::new(key, store, self.refresh_margin, self.refresh_lease),
                clock: self.clock,
                menu_rules: self.menu_rules,
                media_timeout: self.media_timeout,
                budget: Budget {
                    store: self
                        .budget_store
                        .unwrap_or_else(|| Arc::new(budget::MemoryBudget::new())),
                    limits: self.budget_limits,
                    max_wait: self.budget_max_wait,
                    block: self.rate_limit_block,
                    lines: Default::default(),
                },
            }),
        })
    }
}
