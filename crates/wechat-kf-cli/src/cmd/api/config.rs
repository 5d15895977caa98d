//! Connection settings: the `[wechat]` section of the file `serve` reads (`--config`), then the
//! environment (`WECHAT_KF_CORP_ID`, `WECHAT_KF_SECRET`, `WECHAT_KF_BASE_URL`), then flags —
//! layered by the service's configuration, so every command reads the same names.

use std::path::PathBuf;

use clap::Args;
use wechat_kf::client::Client;
use wechat_kf_service::config::{Overrides, WechatConfig};

use super::CliError;

/// Credentials and endpoint. Flags win over the environment, which wins over `--config`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Corp id [env: WECHAT_KF_CORP_ID].
    #[arg(long, global = true, help_heading = "Connection")]
    corp_id: Option<String>,
    /// KF secret [env: WECHAT_KF_SECRET] (prefer the environment or a config file: flags are
    /// visible to other users of the machine).
    #[arg(long, global = true, help_heading = "Connection")]
    secret: Option<String>,
    /// API origin, e.g. an emulator's http://127.0.0.1:PORT [env: WECHAT_KF_BASE_URL; default:
    /// https://qyapi.weixin.qq.com].
    #[arg(long, global = true, help_heading = "Connection")]
    base_url: Option<String>,
    /// The TOML file `serve` reads; its `[wechat]` section is used [env: WECHAT_KF_CONFIG].
    #[arg(
        long,
        env = "WECHAT_KF_CONFIG",
        global = true,
        hide_env = true,
        help_heading = "Connection"
    )]
    config: Option<PathBuf>,
    /// Per-request timeout in seconds [default: wechat.timeout, 30].
    #[arg(long, global = true, help_heading = "Connection")]
    timeout: Option<u64>,
}

impl ConnArgs {
    /// Builds the client.
    pub fn client(&self) -> Result<Client, CliError> {
        let timeout = self.timeout.map(|s| format!("{}s", s.max(1)));
        let flags = Overrides::default()
            .set("--corp-id", "wechat.corp_id", self.corp_id.as_ref())
            .set("--secret", "wechat.secret", self.secret.as_ref())
            .set("--base-url", "wechat.base_url", self.base_url.as_ref())
            .set("--timeout", "wechat.timeout", timeout);
        let wechat = WechatConfig::load(self.config.as_deref(), flags)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        if wechat.corp_id.is_empty() {
            return Err(CliError::Usage(
                "no corp id: use --corp-id, WECHAT_KF_CORP_ID or wechat.corp_id in --config".into(),
            ));
        }
        let secret = wechat.secret.ok_or_else(|| {
            CliError::Usage(
                "no secret: use WECHAT_KF_SECRET, wechat.secret in --config or --secret".into(),
            )
        })?;
        let mut builder = Client::builder(wechat.corp_id, secret)
            .timeout(wechat.timeout)
            .user_agent(concat!("wechat-kf-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(base_url) = wechat.base_url {
            builder = builder.base_url(base_url);
        }
        Ok(builder.build()?)
    }
}
