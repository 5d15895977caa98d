//! `wechat-kf emulator`: runs the local WeChat KF emulator until Ctrl-C.
//!
//! Every credential has a generated default; the values in use are printed at start as
//! `export WECHAT_KF_…=` lines, under the names `serve`, `callback` and the operator commands
//! read, so that another shell (or the service) can point at the emulator by pasting them.
//! A `--seed` TOML file may also carry `corp_id`, `secret`, `token`, `aes_key` and `callback_url`;
//! flags win over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use wechat_kf_emulator::{Config, Emulator};

/// Emulator options.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0 = any free port; the base URL is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Corp id (`ww…`); generated when absent.
    #[arg(long = "corp-id")]
    corp_id: Option<String>,
    /// Secret accepted by gettoken; generated when absent.
    #[arg(long)]
    secret: Option<String>,
    /// Callback Token (signature); generated when absent.
    #[arg(long)]
    token: Option<String>,
    /// Callback EncodingAESKey (43 characters); generated when absent.
    #[arg(long = "aes-key")]
    aes_key: Option<String>,
    /// Where kf_msg_or_event callbacks are POSTed (none by default).
    #[arg(long = "callback-url")]
    callback_url: Option<String>,
    /// TOML seed: accounts, servicers, upgrade-service config, mini programs, verified flag.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Access-token lifetime in seconds.
    #[arg(long = "token-ttl", default_value_t = 7200)]
    token_ttl: u64,
    /// sync_msg calls per minute and account allowed without a callback token (0 = unlimited).
    #[arg(long = "sync-without-token-per-minute", default_value_t = 300)]
    sync_without_token_per_minute: u32,
    /// Per-IP API limits of a third-party service provider (40,000/min, 1,200,000/h) instead of
    /// a company's own (20,000/min, 600,000/h).
    #[arg(long = "third-party-provider")]
    third_party_provider: bool,
    /// Turn every call-rate limit off (for load tests); quotas and other rules stay.
    #[arg(long = "no-rate-limits", conflicts_with = "third_party_provider")]
    no_rate_limits: bool,
}

fn build_config(args: EmulatorArgs) -> Result<Config, String> {
    let mut config = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read seed {}: {e}", path.display()))?;
            Config::from_toml_seed(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::generated(),
    };
    if let Some(v) = args.corp_id {
        config.corp_id = v;
    }
    if let Some(v) = args.secret {
        config.secret = v;
    }
    if let Some(v) = args.token {
        config.callback_token = v;
    }
    if let Some(v) = args.aes_key {
        config.encoding_aes_key = v;
    }
    if let Some(v) = args.callback_url {
        if !(v.starts_with("http://") || v.starts_with("https://")) {
            return Err("--callback-url must be an http(s) URL".into());
        }
        config.callback_url = Some(v);
    }
    if wechat_kf_emulator::crypto::decode_aes_key(&config.encoding_aes_key).is_err() {
        return Err("--aes-key must be 43 base64 characters (an EncodingAESKey)".into());
    }
    if config.corp_id.is_empty() || config.secret.is_empty() || config.callback_token.is_empty() {
        return Err("corp id, secret and token must not be empty".into());
    }
    config.access_token_ttl = Duration::from_secs(args.token_ttl.max(1));
    config.sync_without_token_per_minute = args.sync_without_token_per_minute;
    if args.third_party_provider {
        config.third_party_provider();
    }
    if args.no_rate_limits {
        config.disable_rate_limits();
    }
    Ok(config)
}

/// Prints a line; a closed stdout (e.g. a reader that went away) is not an error.
fn say(line: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Ctrl-C (and SIGTERM on Unix), registered before anything is printed so that a signal sent
/// right after start-up already stops the emulator gracefully.
struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    fn register() -> StopSignal {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Some((int, term)),
                _ => None,
            };
            StopSignal { signals }
        }
        #[cfg(not(unix))]
        StopSignal {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            if let Some((mut int, mut term)) = self.signals {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the emulator until interrupted.
pub async fn run(args: EmulatorArgs) -> ExitCode {
    let listen = args.listen;
    let config = match build_config(args) {
        Ok(c) => c,
        Err(e) => {
            super::fail(format!("emulator: {e}"));
            return ExitCode::from(2);
        }
    };
    let stop = StopSignal::register();
    let running = match Emulator::start(config, listen).await {
        Ok(r) => r,
        Err(e) => {
            super::fail(format!("emulator: cannot listen on {listen}: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let c = running.emulator().config();
    say(format!(
        "wechat-kf emulator listening on {}",
        running.base_url()
    ));
    say(format!("export WECHAT_KF_BASE_URL={}", running.base_url()));
    say(format!("export WECHAT_KF_CORP_ID={}", c.corp_id));
    say(format!("export WECHAT_KF_SECRET={}", c.secret));
    say(format!(
        "export WECHAT_KF_CALLBACK_TOKEN={}",
        c.callback_token
    ));
    say(format!(
        "export WECHAT_KF_ENCODING_AES_KEY={}",
        c.encoding_aes_key
    ));
    match &c.callback_url {
        Some(url) => say(format!("# callbacks go to {url}")),
        None => say("# no callback URL (set one with PUT /emulator/callback/url)"),
    }
    let snapshot = running.emulator().state_snapshot();
    let accounts = snapshot["accounts"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for a in accounts {
        say(format!(
            "# account {} {}",
            a["open_kfid"].as_str().unwrap_or(""),
            a["name"].as_str().unwrap_or("")
        ));
    }
    if accounts.is_empty() {
        // `serve` pulls nothing until an account exists: say how to make one.
        say("# no accounts yet; create one (it prints the open_kfid):");
        say(create_account_line(&running.base_url()));
    }
    say(format!(
        "# control API under {}/emulator/ ; Ctrl-C to stop",
        running.base_url()
    ));
    stop.wait().await;
    running.shutdown().await;
    say("# emulator stopped");
    ExitCode::SUCCESS
}

/// The curl command creating an account through the control API, commented out so that the
/// printed lines stay safe to paste into a shell.
fn create_account_line(base_url: &str) -> String {
    format!(
        "#   curl -s {base_url}/emulator/accounts -H 'content-type: application/json' \
         -d '{{\"name\":\"Demo\"}}'"
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    fn config(flags: &[&str]) -> Config {
        let cli =
            Cli::try_parse_from(std::iter::once("emulator").chain(flags.iter().copied())).unwrap();
        build_config(cli.args).unwrap()
    }

    #[test]
    fn rate_limit_flags_choose_the_per_ip_limits() {
        assert_eq!(config(&[]).api_calls_per_ip_per_minute, 20_000);
        let provider = config(&["--third-party-provider"]);
        assert_eq!(provider.api_calls_per_ip_per_minute, 40_000);
        assert_eq!(provider.api_calls_per_ip_per_hour, 1_200_000);
        let unlimited = config(&["--no-rate-limits"]);
        assert_eq!(unlimited.api_calls_per_ip_per_minute, 0);
        assert_eq!(unlimited.api_calls_per_minute, 0);
        assert!(
            Cli::try_parse_from(["emulator", "--third-party-provider", "--no-rate-limits"])
                .is_err()
        );
    }
}
