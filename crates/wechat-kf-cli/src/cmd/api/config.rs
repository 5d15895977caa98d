//! Connection settings: flags, then environment, then a TOML config file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use wechat_kf::client::Client;

use super::CliError;

/// Credentials and endpoint. Flags win over the environment, which wins over `--config`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Corp id [env: WECHAT_KF_CORP_ID].
    #[arg(long, env = "WECHAT_KF_CORP_ID", global = true, hide_env = true)]
    corp_id: Option<String>,
    /// KF secret [env: WECHAT_KF_SECRET] (prefer the environment or a config file: flags are
    /// visible to other users of the machine).
    #[arg(long, env = "WECHAT_KF_SECRET", global = true, hide_env = true)]
    secret: Option<String>,
    /// API origin, e.g. an emulator's http://127.0.0.1:PORT [env: WECHAT_KF_BASE_URL; default:
    /// https://qyapi.weixin.qq.com].
    #[arg(long, env = "WECHAT_KF_BASE_URL", global = true, hide_env = true)]
    base_url: Option<String>,
    /// TOML file with `corp_id`, `secret` and `base_url` [env: WECHAT_KF_CONFIG].
    #[arg(long, env = "WECHAT_KF_CONFIG", global = true, hide_env = true)]
    config: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
}

/// The config file. Unknown keys are rejected to catch typos.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    corp_id: Option<String>,
    secret: Option<String>,
    base_url: Option<String>,
}

impl ConnArgs {
    fn file(&self) -> Result<FileConfig, CliError> {
        let Some(path) = &self.config else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            // toml's message spans several lines; keep the error on one.
            let message = e.message().replace('\n', " ");
            CliError::Usage(format!("invalid config file {}: {message}", path.display()))
        })
    }

    /// Builds the client.
    pub fn client(&self) -> Result<Client, CliError> {
        let file = self.file()?;
        let corp_id = self
            .corp_id
            .clone()
            .or(file.corp_id)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "no corp id: use --corp-id, WECHAT_KF_CORP_ID or corp_id in --config".into(),
                )
            })?;
        let secret = self
            .secret
            .clone()
            .or(file.secret)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "no secret: use WECHAT_KF_SECRET, secret in --config or --secret".into(),
                )
            })?;
        let mut builder = Client::builder(corp_id, secret)
            .timeout(Duration::from_secs(self.timeout.max(1)))
            .user_agent(concat!("wechat-kf-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(base_url) = self.base_url.clone().or(file.base_url) {
            builder = builder.base_url(base_url);
        }
        Ok(builder.build()?)
    }
}
