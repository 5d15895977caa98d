//! Start-up configuration: corp credentials, callback settings, limits, and the TOML seed that
//! pre-populates accounts, servicers and corp facts.

use std::time::Duration;

use serde::Deserialize;

use crate::ids;

/// Everything the emulator needs to start. [`Config::default`] = [`Config::generated`].
#[derive(Clone)]
pub struct Config {
    /// The corp id (`ww…`); also the crypto receive_id of callbacks.
    pub corp_id: String,
    /// The secret accepted by `gettoken`; which kind of secret it is is [`Config::secret_kind`].
    pub secret: String,
    /// Which credential `secret` is: the standalone KF secret (default) or a WeCom app secret.
    /// Tokens remember the secret they came from; see [`Seed::kf_mode`] (95011 / 95012).
    pub secret_kind: KfMode,
    /// An optional second secret of the *other* kind, also accepted by `gettoken` (for tests
    /// that switch credentials). `None` by default.
    pub other_secret: Option<String>,
    /// The callback Token used in `msg_signature` (not the sync_msg token).
    pub callback_token: String,
    /// The 43-character EncodingAESKey.
    pub encoding_aes_key: String,
    /// Where `kf_msg_or_event` callbacks are POSTed; `None` = no callbacks.
    pub callback_url: Option<String>,
    /// Accounts, servicers and corp facts to start with.
    pub seed: Option<Seed>,
    /// Lifetime of access tokens (`expires_in`), default 7200 s.
    pub access_token_ttl: Duration,
    /// `sync_msg` calls per minute and account allowed without a callback token (the real number is
    /// unpublished; default 300). 0 = unlimited.
    pub sync_without_token_per_minute: u32,
    /// Calls per minute per API (default 10,000 like the real server). 0 = unlimited.
    pub api_calls_per_minute: u32,
    /// Calls per hour per API (default 150,000). 0 = unlimited.
    pub api_calls_per_hour: u32,
    /// Calls per minute per API from one client IP (default 20,000). 0 = unlimited.
    pub api_calls_per_ip_per_minute: u32,
    /// Calls per hour per API from one client IP (default 600,000). 0 = unlimited.
    pub api_calls_per_ip_per_hour: u32,
    /// `media/uploadimg` uploads per day for the corp (default 1,000); above → 45009.
    /// 0 = unlimited.
    pub uploadimg_per_day: u32,
    /// `media/uploadimg` uploads per 30 days for the corp (default 3,000, "per month").
    /// 0 = unlimited.
    pub uploadimg_per_month: u32,
    /// How long to wait for the callback receiver (default 5 s, like WeChat).
    pub callback_timeout: Duration,
    /// Retries after a failed callback attempt (default 3, i.e. up to 4 attempts).
    pub callback_retries: u32,
    /// Pause between callback attempts (default 1 s).
    pub callback_retry_delay: Duration,
    /// Largest accepted temporary image (default 10 MB, the current doc; old KF docs said 2 MB).
    pub image_max_bytes: usize,
    /// Check magic bytes of uploads (JPG/PNG images, AMR voice, MP4 video), default true.
    pub check_media_format: bool,
    /// Most entries kept in the outbox (oldest dropped first), default 100,000.
    pub max_outbox: usize,
    /// Most items kept per account log on top of the 72 h retention, default 2,000,000.
    pub max_log_items: usize,
    /// Most bytes of media kept in memory (oldest dropped first), default 512 MiB.
    pub max_media_bytes: usize,
    /// `gettoken` calls per minute for the corp (default 600); above → 45009 for 60 s.
    /// 0 = unlimited.
    pub gettoken_per_minute: u32,
    /// Wrong secrets from one client IP within an hour after which `gettoken` from that IP answers
    /// 40001 for one hour of emulator time (default 10). 0 = never block.
    pub gettoken_wrong_secret_limit: u32,
    /// Downloads of one media_id that may be in flight at once (default 2); one more → 45033.
    /// 0 = unlimited.
    pub media_get_concurrency_per_id: u32,
    /// `send_msg` needs a customer message other than a menu click within 48 h (95024), default
    /// true. `false`: a menu click opens the window like any message.
    pub require_active_customer_message: bool,
}

/// The corp's customer-service mode, and the kind of secret a token came from
/// (official doc 90313: mixing the two answers 95011 / 95012).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KfMode {
    /// Standalone 微信客服 (独立版), with the KF secret from 开发配置.
    Standalone,
    /// KF inside WeCom (联合版), with a self-built app's secret.
    Wecom,
}

impl KfMode {
    /// `"standalone"` or `"wecom"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KfMode::Standalone => "standalone",
            KfMode::Wecom => "wecom",
        }
    }

    /// Parses `"standalone"` / `"wecom"`.
    pub fn parse(s: &str) -> Option<KfMode> {
        match s {
            "standalone" => Some(KfMode::Standalone),
            "wecom" => Some(KfMode::Wecom),
            _ => None,
        }
    }

    /// The other kind.
    pub fn other(self) -> KfMode {
        match self {
            KfMode::Standalone => KfMode::Wecom,
            KfMode::Wecom => KfMode::Standalone,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs and panics.
        f.debug_struct("Config")
            .field("corp_id", &self.corp_id)
            .field("secret", &"<redacted>")
            .field("secret_kind", &self.secret_kind)
            .field(
                "other_secret",
                &self.other_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("callback_token", &"<redacted>")
            .field("encoding_aes_key", &"<redacted>")
            .field("callback_url", &self.callback_url)
            .field("seed", &self.seed)
            .field("access_token_ttl", &self.access_token_ttl)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::generated()
    }
}

/// Why a seed could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML is malformed or has fields of the wrong type.
    #[error("invalid seed TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range.
    #[error("invalid seed: {0}")]
    Invalid(String),
}

impl Config {
    /// Random valid credentials and the default limits.
    pub fn generated() -> Config {
        Config {
            corp_id: format!("ww{}", ids::alnum(16).to_lowercase()),
            secret: ids::alnum(43),
            secret_kind: KfMode::Standalone,
            other_secret: None,
            callback_token: ids::alnum(32),
            encoding_aes_key: ids::alnum(43),
            callback_url: None,
            seed: None,
            access_token_ttl: Duration::from_secs(7200),
            sync_without_token_per_minute: 300,
            api_calls_per_minute: 10_000,
            api_calls_per_hour: 150_000,
            api_calls_per_ip_per_minute: 20_000,
            api_calls_per_ip_per_hour: 600_000,
            uploadimg_per_day: 1_000,
            uploadimg_per_month: 3_000,
            callback_timeout: Duration::from_secs(5),
            callback_retries: 3,
            callback_retry_delay: Duration::from_secs(1),
            image_max_bytes: 10 * 1024 * 1024,
            check_media_format: true,
            max_outbox: 100_000,
            max_log_items: 2_000_000,
            max_media_bytes: 512 * 1024 * 1024,
            gettoken_per_minute: 600,
            gettoken_wrong_secret_limit: 10,
            media_get_concurrency_per_id: 2,
            require_active_customer_message: true,
        }
    }

    /// Applies the per-IP limits of a third-party service provider's servers (40,000/min and
    /// 1,200,000/h per API, official doc 90454) instead of a company's own (20,000/min, 600,000/h).
    pub fn third_party_provider(&mut self) {
        self.api_calls_per_ip_per_minute = 40_000;
        self.api_calls_per_ip_per_hour = 1_200_000;
    }

    /// Turns every call-rate limit off (per API and corp, per client IP, `sync_msg` without a
    /// callback token, `gettoken`), for load tests; quotas and all other rules stay.
    pub fn disable_rate_limits(&mut self) {
        self.sync_without_token_per_minute = 0;
        self.api_calls_per_minute = 0;
        self.api_calls_per_hour = 0;
        self.api_calls_per_ip_per_minute = 0;
        self.api_calls_per_ip_per_hour = 0;
        self.gettoken_per_minute = 0;
    }

    /// Generated defaults, with the seed (and any credentials it names) read from TOML.
    ///
    /// ```
    /// let config = wechat_kf_emulator::Config::from_toml_seed(r#"
    ///     corp_id = "ww0123456789abcdef"
    ///     [[accounts]]
    ///     name = "售后客服"
    ///     servicers = [{ userid = "zhangsan" }]
    /// "#).unwrap();
    /// assert_eq!(config.corp_id, "ww0123456789abcdef");
    /// assert_eq!(config.seed.unwrap().accounts[0].servicers[0].userid, "zhangsan");
    /// ```
    pub fn from_toml_seed(toml_text: &str) -> Result<Config, ConfigError> {
        let file: SeedFile = toml::from_str(toml_text)?;
        let mut config = Config::generated();
        if let Some(v) = file.corp_id {
            config.corp_id = v;
        }
        if let Some(v) = file.secret {
            config.secret = v;
        }
        if let Some(v) = file.secret_kind {
            config.secret_kind = v;
        }
        if let Some(v) = file.other_secret {
            if v == config.secret {
                return Err(ConfigError::Invalid(
                    "other_secret must differ from secret".into(),
                ));
            }
            config.other_secret = Some(v);
        }
        if let Some(v) = file.token {
            config.callback_token = v;
        }
        if let Some(v) = file.aes_key {
            if crate::crypto::decode_aes_key(&v).is_err() {
                return Err(ConfigError::Invalid(
                    "aes_key must be 43 base64 characters".into(),
                ));
            }
            config.encoding_aes_key = v;
        }
        if file.callback_url.is_some() {
            config.callback_url = file.callback_url;
        }
        for account in &file.seed.accounts {
            if account.name.chars().count() > 16 || account.name.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "account name {:?} must have 1-16 characters",
                    account.name
                )));
            }
            for s in &account.servicers {
                if s.status > 1 || s.stop_type > 1 {
                    return Err(ConfigError::Invalid(format!(
                        "servicer {}: status and stop_type are 0 or 1",
                        s.userid
                    )));
                }
            }
        }
        config.seed = Some(file.seed);
        Ok(config)
    }
}

/// The TOML file: optional credentials on top, the seed itself flattened beside them.
#[derive(Debug, Deserialize)]
struct SeedFile {
    corp_id: Option<String>,
    secret: Option<String>,
    secret_kind: Option<KfMode>,
    other_secret: Option<String>,
    token: Option<String>,
    aes_key: Option<String>,
    callback_url: Option<String>,
    #[serde(flatten)]
    seed: Seed,
}

/// Initial data. Every field has a default, so an empty seed is valid.
#[derive(Debug, Clone, Deserialize)]
pub struct Seed {
    /// Whether the corp is verified (unverified: at most 10 accounts, 95027). Default true.
    #[serde(default = "yes")]
    pub verified: bool,
    /// `get_corp_qualification.wechat_channels_binding`. Default false.
    #[serde(default)]
    pub wechat_channels_binding: bool,
    /// Mini programs linked to the corp (others → 90206). Default `["wx0123456789abcdef"]`.
    #[serde(default = "default_appids")]
    pub miniprogram_appids: Vec<String>,
    /// Accounts to create at start.
    #[serde(default)]
    pub accounts: Vec<SeedAccount>,
    /// The upgrade-service configuration.
    #[serde(default)]
    pub upgrade_service: SeedUpgradeService,
    /// The corp's KF mode. `None` (default): not enforced, tokens of either secret work. With a
    /// mode, kf calls with a token from the other kind of secret answer 95011 (corp in `wecom`
    /// mode, standalone secret) or 95012 (corp in `standalone` mode, WeCom secret).
    #[serde(default)]
    pub kf_mode: Option<KfMode>,
    /// The API switch (default on). Off: every `kf/` call except `kf/customer/batchget` → 95017.
    #[serde(default = "yes")]
    pub api_enabled: bool,
}

impl Default for Seed {
    fn default() -> Seed {
        Seed {
            verified: true,
            wechat_channels_binding: false,
            miniprogram_appids: default_appids(),
            accounts: Vec::new(),
            upgrade_service: SeedUpgradeService::default(),
            kf_mode: None,
            api_enabled: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_appids() -> Vec<String> {
    vec!["wx0123456789abcdef".to_string()]
}

/// One seeded account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAccount {
    /// Fixed open_kfid; generated when absent.
    pub open_kfid: Option<String>,
    /// Display name (1-16 characters).
    pub name: String,
    /// Whether the account is under API management (default true); others answer 48002.
    #[serde(default = "yes")]
    pub managed_by_api: bool,
    /// Servicers of the account.
    #[serde(default)]
    pub servicers: Vec<SeedServicer>,
    /// Departments of the account.
    #[serde(default)]
    pub department_ids: Vec<u64>,
}

/// One seeded servicer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedServicer {
    /// The WeCom userid.
    pub userid: String,
    /// 0 = receiving (default), 1 = stopped (the `servicer/list` enumeration).
    #[serde(default)]
    pub status: u8,
    /// When stopped: 0 = stopped, 1 = suspended.
    #[serde(default)]
    pub stop_type: u8,
    /// Whether the member activated WeCom (default true); not activated → 95014.
    #[serde(default = "yes")]
    pub activated: bool,
}

/// The admin's upgrade-service configuration (official doc 94674).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUpgradeService {
    /// Specialists.
    #[serde(default)]
    pub userid_list: Vec<String>,
    /// Specialist departments.
    #[serde(default)]
    pub department_id_list: Vec<u64>,
    /// Customer groups.
    #[serde(default)]
    pub chat_id_list: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_party_provider_gets_twice_the_per_ip_limits() {
        let mut config = Config::generated();
        assert_eq!(
            (
                config.api_calls_per_ip_per_minute,
                config.api_calls_per_ip_per_hour
            ),
            (20_000, 600_000)
        );
        config.third_party_provider();
        assert_eq!(
            (
                config.api_calls_per_ip_per_minute,
                config.api_calls_per_ip_per_hour
            ),
            (40_000, 1_200_000)
        );
        assert_eq!(
            config.api_calls_per_minute, 10_000,
            "per-corp limits unchanged"
        );
    }

    #[test]
    fn the_seed_example_of_the_readme_parses() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let end = start + readme[start..].find("```").expect("its end");
        let config = Config::from_toml_seed(&readme[start..end]).unwrap();
        let seed = config.seed.unwrap();
        assert_eq!(config.corp_id, "ww0123456789abcdef");
        assert_eq!(seed.accounts[0].servicers.len(), 3);
        assert!(!seed.accounts[0].servicers[2].activated);
        assert_eq!(seed.upgrade_service.chat_id_list, ["wrChat0001"]);
    }

    #[test]
    fn unknown_seed_fields_and_bad_values_are_errors() {
        assert!(Config::from_toml_seed("[[accounts]]\nname = \"a\"\ncolour = 1\n").is_err());
        assert!(Config::from_toml_seed("[[accounts]]\nname = \"\"\n").is_err());
        assert!(Config::from_toml_seed("aes_key = \"short\"").is_err());
        assert!(Config::from_toml_seed("").is_ok());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = Config::generated();
        let text = format!("{config:?}");
        assert!(!text.contains(&config.secret) && !text.contains(&config.encoding_aes_key));
    }
}
