//! Configuration: a TOML file, then environment variables, then command-line flags (each later
//! source wins). Secrets are [`Secret`]s: their `Debug` is redacted, so printing a [`Config`]
//! never leaks one.
//!
//! ```
//! use wechat_kf_service::config::{Config, Overrides};
//!
//! let toml = r#"
//!     listen = "127.0.0.1:9000"
//!     [webhook]
//!     url = "http://127.0.0.1:7000/hook"
//!     secret = "file-secret"
//! "#;
//! let env = |key: &str| (key == "WECHAT_KF_WEBHOOK_SECRET").then(|| "env-secret".to_owned());
//! let flags = Overrides { echo: true, ..Overrides::default() };
//! let config = Config::from_sources(Some(toml), &env, flags).unwrap();
//! assert_eq!(config.listen.port(), 9000);
//! assert_eq!(config.webhook.secret.as_ref().unwrap().expose(), "env-secret");
//! assert!(config.sandbox.echo);
//! assert!(config.is_sandbox()); // no WeChat credentials
//! assert!(!format!("{config:?}").contains("env-secret"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use wechat_kf::client::Secret;
pub use wechat_kf::client::messages::VoiceFormat;

use crate::Error;

/// The whole service configuration. [`Config::default`] is the sandbox with the defaults below.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP server listens (callbacks, reply API, health, metrics). Default
    /// `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// WeChat credentials; without `corp_id` and `secret` the service runs in sandbox mode.
    pub wechat: WechatConfig,
    /// The callback endpoint.
    pub callback: CallbackConfig,
    /// Pulling.
    pub pull: PullConfig,
    /// Storage.
    pub storage: StorageConfig,
    /// Delivery to the bot.
    pub webhook: WebhookConfig,
    /// The reply API.
    pub api: ApiConfig,
    /// Automatic handoff to a human (`[handoff]`).
    pub handoff: HandoffConfig,
    /// Joining consecutive text replies (`[joiner]`).
    pub joiner: JoinerConfig,
    /// Downloading inbound media before delivery (`[media]`).
    pub media: MediaConfig,
    /// Sandbox mode (embedded emulator).
    pub sandbox: SandboxConfig,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// WeChat credentials and endpoint (`[wechat]`).
#[derive(Debug, Clone, Default)]
pub struct WechatConfig {
    /// The corp id (`ww…`).
    pub corp_id: String,
    /// The KF (or self-built app) secret.
    pub secret: Option<Secret>,
    /// The callback Token (signature key).
    pub callback_token: Option<Secret>,
    /// The 43-character EncodingAESKey.
    pub encoding_aes_key: Option<Secret>,
    /// The API origin (default `https://qyapi.weixin.qq.com`).
    pub base_url: Option<String>,
    /// Accounts pulled from the start; others are learned from callbacks and `kf/account/list`.
    pub accounts: Vec<String>,
    /// Whether to list the corp's accounts at start (`kf/account/list`) and pull each. Default
    /// true.
    pub discover_accounts: bool,
    /// Time allowed for one API request. Default 30 s.
    pub timeout: Duration,
    /// Where access tokens are kept: `None` in the process (the default), or a
    /// `redis://`/`rediss://` URL shared by every instance (and any other program using the same
    /// corp id and secret), so that they share one token and one refresh. May hold a password.
    pub token_store: Option<Secret>,
}

/// The callback endpoint (`[callback]`).
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    /// Path of the callback URL. Default `/callback`.
    pub path: String,
    /// Largest accepted POST body; larger ones get 413. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Callbacks whose `timestamp` is further than this from now are rejected (replays). Zero
    /// disables the check. Default 5 minutes.
    pub timestamp_window: Duration,
}

/// Pulling (`[pull]`).
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// A pull of every account this often even without a callback (callbacks get lost). Zero
    /// disables it. Default 2 minutes.
    pub safety_interval: Duration,
    /// `sync_msg` page size, 1–1000. Default 1000.
    pub page_size: u32,
    /// Most accounts pulled (callbacks naming more are ignored). Default 5000.
    pub max_accounts: usize,
    /// What happens to the messages WeChat still holds (up to 3 days) when an account has no
    /// stored cursor (the first start, a new database) or WeChat rejects the stored one.
    /// Default [`FirstStart::FromNow`].
    pub first_start: FirstStart,
    /// Per-account overrides of [`first_start`](Self::first_start), by open_kfid.
    pub first_start_accounts: BTreeMap<String, FirstStart>,
    /// The `voice_format` of `sync_msg`: the format voice media is later downloaded in.
    /// Default AMR.
    pub voice_format: VoiceFormat,
}

impl PullConfig {
    /// The first-start policy of an account.
    pub fn first_start_for(&self, open_kfid: &str) -> FirstStart {
        self.first_start_accounts
            .get(open_kfid)
            .copied()
            .unwrap_or(self.first_start)
    }
}

/// What to do with the backlog when an account is pulled without a cursor (`pull.first_start`).
///
/// Whatever the policy, every message is stored (msgid de-duplication, session tracking);
/// the policy only decides which of them are delivered to the bot.
///
/// ```
/// use std::time::Duration;
/// use wechat_kf_service::config::FirstStart;
/// assert_eq!("from-now".parse::<FirstStart>().unwrap(), FirstStart::FromNow);
/// assert_eq!("replay".parse::<FirstStart>().unwrap(), FirstStart::Replay);
/// let since: FirstStart = "since 2h".parse().unwrap();
/// assert_eq!(since, FirstStart::Since(Duration::from_secs(7200)));
/// assert_eq!(since.to_string(), "since 2h");
/// // Service started at 1000 (unix s); the catch-up begins at 5000.
/// assert_eq!(FirstStart::FromNow.skip_before(1000, 5000), Some(1000 - 60));
/// assert_eq!(since.skip_before(1000, 5000), Some(5000 - 7200));
/// assert_eq!(FirstStart::Replay.skip_before(1000, 5000), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstStart {
    /// Page through the backlog to its end and store the cursor, but deliver nothing sent
    /// before the service started (a minute of tolerance for clock differences); older
    /// messages are stored as *skipped*. The default: a new bot does not answer three days of
    /// old messages.
    #[default]
    FromNow,
    /// Deliver everything WeChat still holds.
    Replay,
    /// Deliver what was sent within this long before the catch-up began.
    Since(Duration),
}

/// How far before the service's start `from-now` still delivers: WeChat's clock and ours may
/// differ a little, and a message sent just after the start must never be skipped.
pub const FROM_NOW_TOLERANCE_SECS: i64 = 60;

impl FirstStart {
    /// The unix second before which messages are skipped (`None`: nothing is), for a service
    /// started at `started_at` whose catch-up begins at `now` (both on WeChat's clock).
    pub fn skip_before(self, started_at: i64, now: i64) -> Option<i64> {
        match self {
            FirstStart::FromNow => Some(started_at - FROM_NOW_TOLERANCE_SECS),
            FirstStart::Replay => None,
            FirstStart::Since(d) => {
                Some(now.saturating_sub(d.as_secs().min(i64::MAX as u64) as i64))
            }
        }
    }

    /// The policy's name in metrics and logs: `from-now`, `replay` or `since`.
    pub fn name(self) -> &'static str {
        match self {
            FirstStart::FromNow => "from-now",
            FirstStart::Replay => "replay",
            FirstStart::Since(_) => "since",
        }
    }
}

impl fmt::Display for FirstStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirstStart::Since(d) => write!(f, "since {}", humantime::format_duration(*d)),
            other => f.write_str(other.name()),
        }
    }
}

impl std::str::FromStr for FirstStart {
    type Err = Error;

    /// `from-now`, `replay`, or `since <duration>` (also `since:2h`, `since=2h`).
    fn from_str(value: &str) -> Result<Self, Error> {
        let v = value.trim();
        match v.to_ascii_lowercase().as_str() {
            "from-now" | "from_now" | "fromnow" | "now" => return Ok(FirstStart::FromNow),
            "replay" | "all" => return Ok(FirstStart::Replay),
            _ => {}
        }
        let rest = v
            .strip_prefix("since")
            .map(|r| r.trim_start_matches([' ', ':', '=']).trim())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::Config(format!(
                    "first start policy {value:?}: expected from-now, replay or \"since <duration>\""
                ))
            })?;
        Ok(FirstStart::Since(parse_duration(
            "first start since",
            rest,
        )?))
    }
}

/// Automatic handoff to a human servicer (`[handoff]`): a customer text containing one of the
/// keywords moves the session with `kf/service_state/trans`, before the bot sees the message.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// Substrings of customer texts (menu clicks included) that ask for a human, e.g.
    /// `["人工", "转人工"]`. Empty (the default): no keyword handoff.
    pub keywords: Vec<String>,
    /// The target state: 2 (the queue, the default) or 3 (a servicer, `servicer_userid`).
    pub service_state: u32,
    /// The servicer for state 3.
    pub servicer_userid: Option<String>,
    /// A text sent with the `msg_code` the transfer returns (`send_msg_on_event`), e.g.
    /// "正在为您转接人工客服". None: nothing is sent.
    pub message: Option<String>,
}

/// Joining consecutive text replies for one customer (`[joiner]`), so that an answer split
/// into several texts spends one message of WeChat's 5-per-customer-message quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinerConfig {
    /// Off by default: joined texts arrive as one message with line breaks.
    pub enabled: bool,
    /// How long a queued text waits for more texts to the same customer. Zero (the default)
    /// joins only texts queued together (one webhook response).
    pub window: Duration,
}

/// Which inbound media to download (`media.kinds`): the library's media kinds, named by msgtype.
pub use wechat_kf::client::media::MediaKind;

/// What to convert downloaded voice notes into (`media.voice_convert_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceTarget {
    /// 16 kHz mono 16-bit WAV.
    Wav,
    /// Ogg/Opus.
    Ogg,
    /// MP3.
    Mp3,
}

impl VoiceTarget {
    /// The library's conversion target.
    pub fn target(self) -> wechat_kf::voice::Target {
        match self {
            VoiceTarget::Wav => wechat_kf::voice::Target::Wav,
            VoiceTarget::Ogg => wechat_kf::voice::Target::OggOpus,
            VoiceTarget::Mp3 => wechat_kf::voice::Target::Mp3,
        }
    }

    /// `wav`, `ogg` or `mp3`.
    pub fn as_str(self) -> &'static str {
        match self {
            VoiceTarget::Wav => "wav",
            VoiceTarget::Ogg => "ogg",
            VoiceTarget::Mp3 => "mp3",
        }
    }
}

/// Downloading inbound media before delivery (`[media]`), so the bot never races WeChat's
/// 3-day media expiry.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Where files go (`<dir>/<open_kfid>/<msgid>/<file name>`). `None` (the default): media
    /// is not downloaded.
    pub download_dir: Option<PathBuf>,
    /// Which message types are downloaded. Default all four.
    pub kinds: Vec<MediaKind>,
    /// Larger files are deleted again and reported as `too_large`. Default 32 MiB.
    pub max_bytes: u64,
    /// Downloads in flight at once. Default 4.
    pub concurrency: usize,
    /// Convert voice notes into this format too (needs ffmpeg; SILK needs the `voice-silk`
    /// build feature). Default none.
    pub voice_convert_to: Option<VoiceTarget>,
    /// The ffmpeg program. Default `ffmpeg` on `PATH`.
    pub ffmpeg: Option<PathBuf>,
    /// An S3-compatible bucket the files are uploaded to: `s3://<bucket>[/<prefix>]`, objects
    /// named `<prefix>/<open_kfid>/<msgid>/<file name>` (AWS S3, Tencent COS, Alibaba OSS,
    /// Cloudflare R2, MinIO). Without a `download_dir` the files are staged in a temporary
    /// directory and removed once uploaded. Default none.
    pub object_store: Option<String>,
    /// Options of the S3 client by their `object_store` crate names (`endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`, ...): `[media.object_store_options]`.
    /// The standard `AWS_*` environment variables are read too; these win.
    pub object_store_options: BTreeMap<String, Secret>,
}

impl MediaConfig {
    /// Whether messages of `msgtype` are downloaded.
    pub fn wants(&self, msgtype: &str) -> bool {
        (self.download_dir.is_some() || self.object_store.is_some())
            && msgtype
                .parse::<MediaKind>()
                .is_ok_and(|k| self.kinds.contains(&k))
    }
}

/// SQLite durability (`[storage] synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=NORMAL` with WAL: survives process crashes (kill -9), may lose the last
    /// transactions on power loss.
    #[default]
    Normal,
    /// `synchronous=FULL`: also survives power loss, slower.
    Full,
}

/// Storage (`[storage]`).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// A SQLite file path, `:memory:`, or a `postgres://` URL. `None` = `wechat-kf.db`, or
    /// `:memory:` in sandbox mode.
    pub db: Option<String>,
    /// SQLite durability.
    pub synchronous: Synchronous,
    /// Delivered messages (and finished replies) are deleted after this long. Zero keeps them
    /// forever. Default 7 days; keep it above WeChat's 3-day retention so that msgid
    /// de-duplication covers every message WeChat could return again.
    pub retention: Duration,
    /// How often a standby instance (a second one on the same store) tries to take over from
    /// the leader (see [`leader`](crate::leader)). Default 2 s.
    pub standby_poll: Duration,
}

/// Delivery to the bot (`[webhook]`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The bot's URL. `None` = write messages as JSON Lines to stdout.
    pub url: Option<String>,
    /// Key of the `X-Wechat-Kf-Signature` HMAC. Without it the header is not sent.
    pub secret: Option<Secret>,
    /// Time allowed for one delivery. Default 10 s.
    pub timeout: Duration,
    /// Most messages per delivery. Default 100.
    pub max_batch: usize,
    /// Most deliveries in flight at once. Default 16.
    pub concurrency: usize,
    /// First retry delay. Default 1 s.
    pub retry_initial: Duration,
    /// Longest retry delay. Default 10 minutes.
    pub retry_max: Duration,
    /// Largest response body read (for replies). Default 1 MiB.
    pub max_response_bytes: usize,
}

/// The reply API (`[api]`).
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// The bearer token protecting `/v1/*`. Without one the reply API is disabled (in sandbox
    /// mode a random token is generated and printed).
    pub token: Option<Secret>,
}

/// Sandbox mode (`[sandbox]`).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the embedded emulator listens. Default `127.0.0.1:0` (a free port).
    pub emulator_listen: SocketAddr,
    /// Answer every customer text with an echo.
    pub echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Text,
            wechat: WechatConfig {
                discover_accounts: true,
                timeout: Duration::from_secs(30),
                ..WechatConfig::default()
            },
            callback: CallbackConfig {
                path: "/callback".into(),
                max_body_bytes: 64 * 1024,
                timestamp_window: Duration::from_secs(300),
            },
            pull: PullConfig {
                safety_interval: Duration::from_secs(120),
                page_size: 1000,
                max_accounts: 5000,
                first_start: FirstStart::FromNow,
                first_start_accounts: BTreeMap::new(),
                voice_format: VoiceFormat::Amr,
            },
            storage: StorageConfig {
                db: None,
                synchronous: Synchronous::Normal,
                retention: Duration::from_secs(7 * 24 * 3600),
                standby_poll: Duration::from_secs(2),
            },
            webhook: WebhookConfig {
                url: None,
                secret: None,
                timeout: Duration::from_secs(10),
                max_batch: 100,
                concurrency: 16,
                retry_initial: Duration::from_secs(1),
                retry_max: Duration::from_secs(600),
                max_response_bytes: 1024 * 1024,
            },
            api: ApiConfig::default(),
            handoff: HandoffConfig {
                keywords: Vec::new(),
                service_state: 2,
                servicer_userid: None,
                message: None,
            },
            joiner: JoinerConfig {
                enabled: false,
                window: Duration::ZERO,
            },
            media: MediaConfig {
                download_dir: None,
                kinds: MediaKind::ALL.to_vec(),
                max_bytes: 32 * 1024 * 1024,
                concurrency: 4,
                voice_convert_to: None,
                ffmpeg: None,
                object_store: None,
                object_store_options: BTreeMap::new(),
            },
            sandbox: SandboxConfig {
                emulator_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                echo: false,
            },
        }
    }
}

/// Values from command-line flags; `None`/`false` leaves the file and environment value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--db`
    pub db: Option<String>,
    /// `--webhook`
    pub webhook: Option<String>,
    /// `--webhook-secret`
    pub webhook_secret: Option<String>,
    /// `--echo`
    pub echo: bool,
    /// `--emulator-listen`
    pub emulator_listen: Option<SocketAddr>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--first-start`
    pub first_start: Option<FirstStart>,
    /// `--media-dir`
    pub media_dir: Option<PathBuf>,
    /// `--media-object-store`
    pub media_object_store: Option<String>,
    /// `--token-store`
    pub token_store: Option<String>,
}

/// The environment variables read by [`Config::from_sources`], in the order they are applied.
pub const ENV_VARS: &[&str] = &[
    "WECHAT_KF_LISTEN",
    "WECHAT_KF_LOG_FORMAT",
    "WECHAT_KF_CORP_ID",
    "WECHAT_KF_SECRET",
    "WECHAT_KF_CALLBACK_TOKEN",
    "WECHAT_KF_ENCODING_AES_KEY",
    "WECHAT_KF_BASE_URL",
    "WECHAT_KF_ACCOUNTS",
    "WECHAT_KF_DB",
    "WECHAT_KF_WEBHOOK_URL",
    "WECHAT_KF_WEBHOOK_SECRET",
    "WECHAT_KF_API_TOKEN",
    "WECHAT_KF_EMULATOR_LISTEN",
    "WECHAT_KF_ECHO",
    "WECHAT_KF_FIRST_START",
    "WECHAT_KF_MEDIA_DIR",
    "WECHAT_KF_MEDIA_OBJECT_STORE",
    "WECHAT_KF_TOKEN_STORE",
];

impl Config {
    /// Reads the TOML file at `path` (if any), applies the process environment and `flags`.
    pub fn load(path: Option<&Path>, flags: Overrides) -> Result<Config, Error> {
        let text = match path {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?,
            ),
            None => None,
        };
        Config::from_sources(text.as_deref(), &|key| std::env::var(key).ok(), flags)
    }

    /// Builds the configuration from TOML text, an environment lookup and flags.
    pub fn from_sources(
        toml_text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: Overrides,
    ) -> Result<Config, Error> {
        let mut config = Config::default();
        if let Some(text) = toml_text {
            let file: file::File = toml::from_str(text).map_err(|e| {
                // toml's message spans several lines; keep errors on one.
                Error::Config(format!(
                    "invalid config file: {}",
                    e.to_string().replace('\n', " ")
                ))
            })?;
            file.apply(&mut config)?;
        }
        config.apply_env(env)?;
        config.apply_flags(flags);
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Error> {
        let get = |key: &str| env(key).filter(|v| !v.is_empty());
        if let Some(v) = get("WECHAT_KF_LISTEN") {
            self.listen = parse_addr("WECHAT_KF_LISTEN", &v)?;
        }
        if let Some(v) = get("WECHAT_KF_LOG_FORMAT") {
            self.log_format = parse_log_format(&v)?;
        }
        if let Some(v) = get("WECHAT_KF_CORP_ID") {
            self.wechat.corp_id = v;
        }
        if let Some(v) = get("WECHAT_KF_SECRET") {
            self.wechat.secret = Some(Secret::new(v));
        }
        if let Some(v) = get("WECHAT_KF_CALLBACK_TOKEN") {
            self.wechat.callback_token = Some(Secret::new(v));
        }
        if let Some(v) = get("WECHAT_KF_ENCODING_AES_KEY") {
            self.wechat.encoding_aes_key = Some(Secret::new(v));
        }
        if let Some(v) = get("WECHAT_KF_BASE_URL") {
            self.wechat.base_url = Some(v);
        }
        if let Some(v) = get("WECHAT_KF_ACCOUNTS") {
            self.wechat.accounts = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("WECHAT_KF_DB") {
            self.storage.db = Some(v);
        }
        if let Some(v) = get("WECHAT_KF_WEBHOOK_URL") {
            self.webhook.url = Some(v);
        }
        if let Some(v) = get("WECHAT_KF_WEBHOOK_SECRET") {
            self.webhook.secret = Some(Secret::new(v));
        }
        if let Some(v) = get("WECHAT_KF_API_TOKEN") {
            self.api.token = Some(Secret::new(v));
        }
        if let Some(v) = get("WECHAT_KF_EMULATOR_LISTEN") {
            self.sandbox.emulator_listen = parse_addr("WECHAT_KF_EMULATOR_LISTEN", &v)?;
        }
        if let Some(v) = get("WECHAT_KF_ECHO") {
            self.sandbox.echo = matches!(v.as_str(), "1" | "true" | "yes" | "on");
        }
        if let Some(v) = get("WECHAT_KF_FIRST_START") {
            self.pull.first_start = v.parse()?;
        }
        if let Some(v) = get("WECHAT_KF_MEDIA_DIR") {
            self.media.download_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("WECHAT_KF_MEDIA_OBJECT_STORE") {
            self.media.object_store = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("WECHAT_KF_TOKEN_STORE") {
            self.wechat.token_store = Some(Secret::new(v));
        }
        Ok(())
    }

    fn apply_flags(&mut self, flags: Overrides) {
        if let Some(v) = flags.listen {
            self.listen = v;
        }
        if let Some(v) = flags.db {
            self.storage.db = Some(v);
        }
        if let Some(v) = flags.webhook {
            self.webhook.url = Some(v);
        }
        if let Some(v) = flags.webhook_secret {
            self.webhook.secret = Some(Secret::new(v));
        }
        if flags.echo {
            self.sandbox.echo = true;
        }
        if let Some(v) = flags.emulator_listen {
            self.sandbox.emulator_listen = v;
        }
        if let Some(v) = flags.log_format {
            self.log_format = v;
        }
        if let Some(v) = flags.first_start {
            self.pull.first_start = v;
        }
        if let Some(v) = flags.media_dir {
            self.media.download_dir = Some(v);
        }
        if let Some(v) = flags.media_object_store {
            self.media.object_store = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = flags.token_store {
            self.wechat.token_store = Some(Secret::new(v));
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if !self.callback.path.starts_with('/') {
            return Err(Error::Config("callback.path must start with '/'".into()));
        }
        if !(1..=1000).contains(&self.pull.page_size) {
            return Err(Error::Config("pull.page_size must be 1..=1000".into()));
        }
        if self.wechat.timeout.is_zero() || self.webhook.timeout.is_zero() {
            return Err(Error::Config(
                "wechat.timeout and webhook.timeout must be positive".into(),
            ));
        }
        if self.webhook.max_batch == 0 || self.webhook.concurrency == 0 {
            return Err(Error::Config(
                "webhook.max_batch and webhook.concurrency must be at least 1".into(),
            ));
        }
        if let Some(url) = &self.webhook.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::Config("webhook.url must be an http(s) URL".into()));
            }
        }
        if self.storage.standby_poll.is_zero() {
            return Err(Error::Config(
                "storage.standby_poll must be positive".into(),
            ));
        }
        if let Some(store) = &self.wechat.token_store {
            let url = store.expose();
            if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
                // Not the value itself: it may carry a password.
                return Err(Error::Config(
                    "wechat.token_store must be a redis:// or rediss:// URL".into(),
                ));
            }
        }
        let has_corp = !self.wechat.corp_id.is_empty();
        let has_secret = self.wechat.secret.as_ref().is_some_and(|s| !s.is_empty());
        if has_corp != has_secret {
            return Err(Error::Config(
                "set both wechat.corp_id and wechat.secret (or neither, for the sandbox)".into(),
            ));
        }
        match self.handoff.service_state {
            2 => {}
            3 if self
                .handoff
                .servicer_userid
                .as_deref()
                .is_some_and(|s| !s.is_empty()) => {}
            3 => {
                return Err(Error::Config(
                    "handoff.service_state = 3 needs handoff.servicer_userid".into(),
                ));
            }
            _ => {
                return Err(Error::Config(
                    "handoff.service_state must be 2 (queue) or 3 (a servicer)".into(),
                ));
            }
        }
        if self.handoff.keywords.iter().any(String::is_empty) {
            return Err(Error::Config(
                "handoff.keywords must not be empty strings".into(),
            ));
        }
        if self
            .handoff
            .message
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 2048)
        {
            return Err(Error::Config("handoff.message must be 1-2048 bytes".into()));
        }
        if self.media.concurrency == 0 || self.media.max_bytes == 0 {
            return Err(Error::Config(
                "media.concurrency and media.max_bytes must be at least 1".into(),
            ));
        }
        if let Some(url) = &self.media.object_store {
            crate::media::Bucket::open(url, &self.media.object_store_options)?;
        }
        Ok(())
    }

    /// Whether no WeChat credentials are configured: the service then runs the embedded
    /// emulator and talks to it.
    pub fn is_sandbox(&self) -> bool {
        self.wechat.corp_id.is_empty()
    }

    /// The database to open: the configured one, or the mode's default.
    pub fn db_location(&self) -> String {
        match &self.storage.db {
            Some(db) => db.clone(),
            None if self.is_sandbox() => ":memory:".into(),
            None => "wechat-kf.db".into(),
        }
    }
}

fn parse_addr(what: &str, value: &str) -> Result<SocketAddr, Error> {
    value.parse().map_err(|_| {
        Error::Config(format!(
            "{what}: {value:?} is not an address like 127.0.0.1:8080"
        ))
    })
}

fn parse_log_format(value: &str) -> Result<LogFormat, Error> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(Error::Config(format!(
            "log format {other:?}: expected text or json"
        ))),
    }
}

fn parse_duration(what: &str, value: &str) -> Result<Duration, Error> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| {
        Error::Config(format!(
            "{what}: {value:?} is not a duration like \"30s\": {e}"
        ))
    })
}

/// The TOML file's shape: every field optional, unknown keys rejected (typos).
mod file {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        listen: Option<String>,
        log_format: Option<String>,
        #[serde(default)]
        wechat: Wechat,
        #[serde(default)]
        callback: Callback,
        #[serde(default)]
        pull: Pull,
        #[serde(default)]
        storage: Storage,
        #[serde(default)]
        webhook: Webhook,
        #[serde(default)]
        api: Api,
        #[serde(default)]
        handoff: Handoff,
        #[serde(default)]
        joiner: Joiner,
        #[serde(default)]
        media: Media,
        #[serde(default)]
        sandbox: Sandbox,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wechat {
        corp_id: Option<String>,
        secret: Option<String>,
        callback_token: Option<String>,
        encoding_aes_key: Option<String>,
        base_url: Option<String>,
        accounts: Option<Vec<String>>,
        discover_accounts: Option<bool>,
        timeout: Option<String>,
        token_store: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Callback {
        path: Option<String>,
        max_body_bytes: Option<usize>,
        timestamp_window: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pull {
        safety_interval: Option<String>,
        page_size: Option<u32>,
        max_accounts: Option<usize>,
        first_start: Option<String>,
        first_start_accounts: Option<BTreeMap<String, String>>,
        voice_format: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Handoff {
        keywords: Option<Vec<String>>,
        service_state: Option<u32>,
        servicer_userid: Option<String>,
        message: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Joiner {
        enabled: Option<bool>,
        window_ms: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Media {
        download_dir: Option<String>,
        kinds: Option<Vec<String>>,
        max_bytes: Option<u64>,
        concurrency: Option<usize>,
        voice_convert_to: Option<String>,
        ffmpeg: Option<String>,
        object_store: Option<String>,
        object_store_options: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Storage {
        db: Option<String>,
        synchronous: Option<String>,
        retention: Option<String>,
        standby_poll: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Webhook {
        url: Option<String>,
        secret: Option<String>,
        timeout: Option<String>,
        max_batch: Option<usize>,
        concurrency: Option<usize>,
        retry_initial: Option<String>,
        retry_max: Option<String>,
        max_response_bytes: Option<usize>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Api {
        token: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sandbox {
        emulator_listen: Option<String>,
        echo: Option<bool>,
    }

    fn secret(value: Option<String>) -> Option<Secret> {
        value.filter(|v| !v.is_empty()).map(Secret::new)
    }

    impl File {
        pub(super) fn apply(self, c: &mut Config) -> Result<(), Error> {
            if let Some(v) = self.listen {
                c.listen = parse_addr("listen", &v)?;
            }
            if let Some(v) = self.log_format {
                c.log_format = parse_log_format(&v)?;
            }
            let w = self.wechat;
            if let Some(v) = w.corp_id {
                c.wechat.corp_id = v;
            }
            c.wechat.secret = secret(w.secret).or(c.wechat.secret.take());
            c.wechat.callback_token = secret(w.callback_token).or(c.wechat.callback_token.take());
            c.wechat.encoding_aes_key =
                secret(w.encoding_aes_key).or(c.wechat.encoding_aes_key.take());
            if let Some(v) = w.base_url {
                c.wechat.base_url = Some(v);
            }
            if let Some(v) = w.accounts {
                c.wechat.accounts = v;
            }
            if let Some(v) = w.discover_accounts {
                c.wechat.discover_accounts = v;
            }
            if let Some(v) = w.timeout {
                c.wechat.timeout = parse_duration("wechat.timeout", &v)?;
            }
            c.wechat.token_store = secret(w.token_store).or(c.wechat.token_store.take());
            let cb = self.callback;
            if let Some(v) = cb.path {
                c.callback.path = v;
            }
            if let Some(v) = cb.max_body_bytes {
                c.callback.max_body_bytes = v;
            }
            if let Some(v) = cb.timestamp_window {
                c.callback.timestamp_window = parse_duration("callback.timestamp_window", &v)?;
            }
            let p = self.pull;
            if let Some(v) = p.safety_interval {
                c.pull.safety_interval = parse_duration("pull.safety_interval", &v)?;
            }
            if let Some(v) = p.page_size {
                c.pull.page_size = v;
            }
            if let Some(v) = p.max_accounts {
                c.pull.max_accounts = v;
            }
            if let Some(v) = p.first_start {
                c.pull.first_start = v.parse()?;
            }
            for (account, policy) in p.first_start_accounts.unwrap_or_default() {
                let policy = policy.parse().map_err(|e| {
                    Error::Config(format!("pull.first_start_accounts.{account}: {e}"))
                })?;
                c.pull.first_start_accounts.insert(account, policy);
            }
            if let Some(v) = p.voice_format {
                c.pull.voice_format = match v.to_ascii_lowercase().as_str() {
                    "amr" | "0" => VoiceFormat::Amr,
                    "silk" | "1" => VoiceFormat::Silk,
                    other => {
                        return Err(Error::Config(format!(
                            "pull.voice_format {other:?}: expected amr or silk"
                        )));
                    }
                };
            }
            let h = self.handoff;
            if let Some(v) = h.keywords {
                c.handoff.keywords = v;
            }
            if let Some(v) = h.service_state {
                c.handoff.service_state = v;
            }
            if let Some(v) = h.servicer_userid {
                c.handoff.servicer_userid = Some(v).filter(|s| !s.is_empty());
            }
            if let Some(v) = h.message {
                c.handoff.message = Some(v);
            }
            if let Some(v) = self.joiner.enabled {
                c.joiner.enabled = v;
            }
            if let Some(v) = self.joiner.window_ms {
                c.joiner.window = Duration::from_millis(v);
            }
            let m = self.media;
            if let Some(v) = m.download_dir {
                c.media.download_dir = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
            }
            if let Some(v) = m.kinds {
                let mut kinds = Vec::new();
                for kind in v {
                    kinds.push(kind.parse::<MediaKind>().map_err(|_| {
                        Error::Config(format!(
                            "media.kinds: {kind:?} is not image, voice, video or file"
                        ))
                    })?);
                }
                c.media.kinds = kinds;
            }
            if let Some(v) = m.max_bytes {
                c.media.max_bytes = v;
            }
            if let Some(v) = m.concurrency {
                c.media.concurrency = v;
            }
            if let Some(v) = m.voice_convert_to {
                c.media.voice_convert_to = match v.to_ascii_lowercase().as_str() {
                    "wav" => Some(VoiceTarget::Wav),
                    "ogg" | "opus" => Some(VoiceTarget::Ogg),
                    "mp3" => Some(VoiceTarget::Mp3),
                    "" | "none" => None,
                    other => {
                        return Err(Error::Config(format!(
                            "media.voice_convert_to {other:?}: expected wav, ogg, mp3 or none"
                        )));
                    }
                };
            }
            if let Some(v) = m.ffmpeg {
                c.media.ffmpeg = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
            }
            if let Some(v) = m.object_store {
                c.media.object_store = Some(v).filter(|v| !v.is_empty());
            }
            if let Some(options) = m.object_store_options {
                c.media.object_store_options = options
                    .into_iter()
                    .map(|(k, v)| (k, Secret::new(v)))
                    .collect();
            }
            let s = self.storage;
            if let Some(v) = s.db {
                c.storage.db = Some(v);
            }
            if let Some(v) = s.synchronous {
                c.storage.synchronous = match v.to_ascii_lowercase().as_str() {
                    "normal" => Synchronous::Normal,
                    "full" => Synchronous::Full,
                    other => {
                        return Err(Error::Config(format!(
                            "storage.synchronous {other:?}: expected normal or full"
                        )));
                    }
                };
            }
            if let Some(v) = s.retention {
                c.storage.retention = parse_duration("storage.retention", &v)?;
            }
            if let Some(v) = s.standby_poll {
                c.storage.standby_poll = parse_duration("storage.standby_poll", &v)?;
            }
            let h = self.webhook;
            if let Some(v) = h.url {
                c.webhook.url = Some(v).filter(|u| !u.is_empty());
            }
            c.webhook.secret = secret(h.secret).or(c.webhook.secret.take());
            if let Some(v) = h.timeout {
                c.webhook.timeout = parse_duration("webhook.timeout", &v)?;
            }
            if let Some(v) = h.max_batch {
                c.webhook.max_batch = v;
            }
            if let Some(v) = h.concurrency {
                c.webhook.concurrency = v;
            }
            if let Some(v) = h.retry_initial {
                c.webhook.retry_initial = parse_duration("webhook.retry_initial", &v)?;
            }
            if let Some(v) = h.retry_max {
                c.webhook.retry_max = parse_duration("webhook.retry_max", &v)?;
            }
            if let Some(v) = h.max_response_bytes {
                c.webhook.max_response_bytes = v;
            }
            c.api.token = secret(self.api.token).or(c.api.token.take());
            if let Some(v) = self.sandbox.emulator_listen {
                c.sandbox.emulator_listen = parse_addr("sandbox.emulator_listen", &v)?;
            }
            if let Some(v) = self.sandbox.echo {
                c.sandbox.echo = v;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let toml = "listen = \"127.0.0.1:1\"\n[storage]\ndb = \"file.db\"\n";
        let env = |k: &str| match k {
            "WECHAT_KF_LISTEN" => Some("127.0.0.1:2".to_owned()),
            "WECHAT_KF_DB" => Some("env.db".to_owned()),
            _ => None,
        };
        let config = Config::from_sources(Some(toml), &env, Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.db_location(), "env.db");
        let flags = Overrides {
            db: Some("flag.db".into()),
            ..Overrides::default()
        };
        let config = Config::from_sources(Some(toml), &env, flags).unwrap();
        assert_eq!(config.db_location(), "flag.db");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let err = Config::from_sources(
            Some("[webhook]\nurll = \"x\"\n"),
            &no_env,
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.is_config());
        assert!(!err.to_string().contains('\n'), "{err}");
        let err = Config::from_sources(
            Some("[pull]\nsafety_interval = \"soon\"\n"),
            &no_env,
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("pull.safety_interval"), "{err}");
    }

    #[test]
    fn credentials_switch_off_the_sandbox_and_must_come_in_pairs() {
        let toml = "[wechat]\ncorp_id = \"ww1\"\nsecret = \"s\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        assert!(!config.is_sandbox());
        assert_eq!(config.db_location(), "wechat-kf.db");
        let err = Config::from_sources(
            Some("[wechat]\ncorp_id = \"ww1\"\n"),
            &no_env,
            Overrides::default(),
        );
        assert!(err.is_err());
        let sandbox = Config::from_sources(None, &no_env, Overrides::default()).unwrap();
        assert!(sandbox.is_sandbox());
        assert_eq!(sandbox.db_location(), ":memory:");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let toml = "[wechat]\ncorp_id = \"ww1\"\nsecret = \"TOPSECRET1\"\ncallback_token = \"TOPSECRET2\"\n\
                    encoding_aes_key = \"TOPSECRET3\"\n[webhook]\nsecret = \"TOPSECRET4\"\n[api]\ntoken = \"TOPSECRET5\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("TOPSECRET"), "{debug}");
    }

    #[test]
    fn first_start_policies_parse_per_account_and_from_every_source() {
        let toml = "[pull]\nfirst_start = \"since 2h\"\nvoice_format = \"silk\"\n\
                    [pull.first_start_accounts]\nwkA = \"replay\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        assert_eq!(
            config.pull.first_start,
            FirstStart::Since(Duration::from_secs(7200))
        );
        assert_eq!(config.pull.first_start_for("wkA"), FirstStart::Replay);
        assert_eq!(config.pull.voice_format, VoiceFormat::Silk);
        let env = |k: &str| (k == "WECHAT_KF_FIRST_START").then(|| "replay".to_owned());
        let config = Config::from_sources(None, &env, Overrides::default()).unwrap();
        assert_eq!(config.pull.first_start, FirstStart::Replay);
        let flags = Overrides {
            first_start: Some(FirstStart::FromNow),
            ..Overrides::default()
        };
        let config = Config::from_sources(None, &env, flags).unwrap();
        assert_eq!(config.pull.first_start, FirstStart::FromNow);
        assert_eq!(Config::default().pull.first_start, FirstStart::FromNow);
        for bad in ["yesterday", "since", "since soon"] {
            assert!(bad.parse::<FirstStart>().is_err(), "{bad}");
        }
        assert_eq!(
            "since:30m".parse::<FirstStart>().unwrap(),
            FirstStart::Since(Duration::from_secs(1800))
        );
    }

    #[test]
    fn handoff_joiner_and_media_settings_are_checked() {
        let toml = "[handoff]\nkeywords = [\"人工\", \"转人工\"]\nservice_state = 3\nservicer_userid = \"zhangsan\"\n\
                    [joiner]\nenabled = true\nwindow_ms = 250\n\
                    [media]\ndownload_dir = \"/tmp/m\"\nkinds = [\"voice\"]\nvoice_convert_to = \"wav\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        assert_eq!(config.handoff.keywords, vec!["人工", "转人工"]);
        assert_eq!(config.handoff.service_state, 3);
        assert!(config.joiner.enabled);
        assert_eq!(config.joiner.window, Duration::from_millis(250));
        assert!(config.media.wants("voice"));
        assert!(!config.media.wants("image"));
        assert_eq!(config.media.voice_convert_to, Some(VoiceTarget::Wav));
        let bad = |toml: &str| Config::from_sources(Some(toml), &no_env, Overrides::default());
        assert!(bad("[handoff]\nservice_state = 3\n").is_err());
        assert!(bad("[handoff]\nservice_state = 1\n").is_err());
        assert!(bad("[media]\nkinds = [\"sticker\"]\n").is_err());
        assert!(bad("[media]\nvoice_convert_to = \"flac\"\n").is_err());
        assert!(!Config::default().media.wants("image"));
        assert!(!Config::default().joiner.enabled);
    }

    #[test]
    fn an_object_store_alone_turns_media_on_and_its_keys_never_print() {
        let toml = "[media]\nobject_store = \"s3://kf-media/inbound\"\n\
                    [media.object_store_options]\nregion = \"ap-guangzhou\"\n\
                    access_key_id = \"AKID\"\nsecret_access_key = \"s3-secret-value\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        assert!(config.media.wants("file"));
        assert_eq!(
            config.media.object_store.as_deref(),
            Some("s3://kf-media/inbound")
        );
        assert!(!format!("{config:?}").contains("s3-secret-value"));
        let env =
            |name: &str| (name == "WECHAT_KF_MEDIA_OBJECT_STORE").then(|| "s3://other".to_owned());
        let config = Config::from_sources(Some(toml), &env, Overrides::default()).unwrap();
        assert_eq!(config.media.object_store.as_deref(), Some("s3://other"));
        assert_eq!(config.media.object_store_options.len(), 3);
        let bad = |toml: &str| {
            Config::from_sources(Some(toml), &no_env, Overrides::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[media]\nobject_store = \"gs://b\"\n").contains("s3://<bucket>"));
        assert!(
            bad(
                "[media]\nobject_store = \"s3://b\"\n[media.object_store_options]\ncolour = \"x\"\n"
            )
            .contains("colour")
        );
    }

    #[test]
    fn zero_durations_disable_and_humantime_durations_parse() {
        let toml = "[pull]\nsafety_interval = \"0\"\n[storage]\nretention = \"3days\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        assert_eq!(config.pull.safety_interval, Duration::ZERO);
        assert_eq!(config.storage.retention, Duration::from_secs(3 * 86400));
    }
}
