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

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
pub use wechat_kf::client::Secret;

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
            },
            storage: StorageConfig {
                db: None,
                synchronous: Synchronous::Normal,
                retention: Duration::from_secs(7 * 24 * 3600),
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
        let has_corp = !self.wechat.corp_id.is_empty();
        let has_secret = self.wechat.secret.as_ref().is_some_and(|s| !s.is_empty());
        if has_corp != has_secret {
            return Err(Error::Config(
                "set both wechat.corp_id and wechat.secret (or neither, for the sandbox)".into(),
            ));
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
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Storage {
        db: Option<String>,
        synchronous: Option<String>,
        retention: Option<String>,
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
    fn zero_durations_disable_and_humantime_durations_parse() {
        let toml = "[pull]\nsafety_interval = \"0\"\n[storage]\nretention = \"3days\"\n";
        let config = Config::from_sources(Some(toml), &no_env, Overrides::default()).unwrap();
        assert_eq!(config.pull.safety_interval, Duration::ZERO);
        assert_eq!(config.storage.retention, Duration::from_secs(3 * 86400));
    }
}
