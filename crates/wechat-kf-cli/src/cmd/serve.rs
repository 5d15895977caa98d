//! `wechat-kf serve`: the service — callbacks in, every message to the bot exactly once, replies
//! out. Without WeChat credentials it runs the sandbox (an embedded emulator).
//!
//! Settings come from a TOML file (`--config`), then `WECHAT_KF_*` environment variables, then
//! these flags (layered by the service's `config` module); see `docs/service.md`. Logs go to stderr (no secrets, no message content);
//! without a webhook, messages go to stdout as JSON Lines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use wechat_kf_service::Service;
use wechat_kf_service::config::{Config, ENV, FirstStart, LogFormat, Overrides};

/// Options of `wechat-kf serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file [env: WECHAT_KF_CONFIG].
    #[arg(long, env = "WECHAT_KF_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
    /// Address for callbacks, the reply API, /healthz, /readyz and /metrics
    /// [env: WECHAT_KF_LISTEN; default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// SQLite file, `:memory:` or a postgres:// URL [env: WECHAT_KF_DB; default: wechat-kf.db,
    /// or :memory: in the sandbox].
    #[arg(long)]
    db: Option<String>,
    /// The bot's webhook URL; without one, messages are written to stdout as JSON Lines
    /// [env: WECHAT_KF_WEBHOOK_URL].
    #[arg(long)]
    webhook: Option<String>,
    /// Key of the X-Wechat-Kf-Signature HMAC (prefer WECHAT_KF_WEBHOOK_SECRET or the config
    /// file: flags are visible to other users of the machine).
    #[arg(long)]
    webhook_secret: Option<String>,
    /// Bearer token of the reply API (`/v1/*`); without one the reply API is off, except in
    /// the sandbox, which generates and prints one (prefer WECHAT_KF_API_TOKEN or the config
    /// file: flags are visible to other users of the machine).
    #[arg(long)]
    api_token: Option<String>,
    /// Token of the web console's login (`/console`); without one the console is off, except
    /// in the sandbox, which generates one and prints the console's URL (prefer
    /// WECHAT_KF_CONSOLE_TOKEN or the config file).
    #[arg(long)]
    console_token: Option<String>,
    /// Answer every customer text with an echo (try it in the sandbox); the same as
    /// `--responder echo`.
    #[arg(long)]
    echo: bool,
    /// Who answers the customers: `webhook` (the bot's webhook, or stdout without one),
    /// `echo`, `openai` (an OpenAI-compatible endpoint: --llm-base-url, --llm-model) or `dify`
    /// [env: WECHAT_KF_RESPONDER; default: webhook]. The key: WECHAT_KF_LLM_API_KEY.
    #[arg(long)]
    responder: Option<String>,
    /// The model endpoint's API base, e.g. `http://127.0.0.1:11434/v1` for a local Ollama
    /// [env: WECHAT_KF_LLM_BASE_URL].
    #[arg(long)]
    llm_base_url: Option<String>,
    /// The model, e.g. `qwen2.5:7b` [env: WECHAT_KF_LLM_MODEL].
    #[arg(long)]
    llm_model: Option<String>,
    /// A file holding the agent's system prompt.
    #[arg(long)]
    system_prompt_file: Option<PathBuf>,
    /// Where the sandbox's emulator listens [env: WECHAT_KF_EMULATOR_LISTEN; default:
    /// 127.0.0.1:0, a free port].
    #[arg(long)]
    emulator_listen: Option<SocketAddr>,
    /// Log format on stderr [env: WECHAT_KF_LOG_FORMAT; default: text]. Level: RUST_LOG
    /// (default info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// What to do with the messages WeChat still holds when an account has no stored cursor:
    /// `from-now` (store them, deliver nothing sent before the start), `replay` (deliver
    /// everything) or `since:<duration>` (e.g. `since:2h`) [env: WECHAT_KF_FIRST_START;
    /// default: from-now].
    #[arg(long, value_parser = parse_first_start)]
    first_start: Option<FirstStart>,
    /// Download inbound image, voice, video and file media into this directory before
    /// delivery [env: WECHAT_KF_MEDIA_DIR; default: off].
    #[arg(long)]
    media_dir: Option<PathBuf>,
    /// Upload downloaded media to an S3-compatible bucket, `s3://<bucket>[/<prefix>]`; its
    /// endpoint and keys come from `[media.object_store_options]` or the `AWS_*` variables
    /// [env: WECHAT_KF_MEDIA_OBJECT_STORE; default: off].
    #[arg(long)]
    media_object_store: Option<String>,
    /// Share access tokens (and their refresh) between instances through Redis, e.g.
    /// `redis://127.0.0.1:6379/0` [env: WECHAT_KF_TOKEN_STORE; default: in the process].
    #[arg(long)]
    token_store: Option<String>,
}

fn parse_first_start(value: &str) -> Result<FirstStart, String> {
    value.parse().map_err(|e| match e {
        wechat_kf_service::Error::Config(message) => message,
        other => other.to_string(),
    })
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// Runs the service until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run(args: ServeArgs) -> ExitCode {
    let log_format = args.log_format.map(|f| match f {
        LogFormatArg::Text => "text",
        LogFormatArg::Json => "json",
    });
    let overrides = Overrides::default()
        .set("--listen", "listen", args.listen)
        .set("--db", "storage.db", args.db)
        .set("--webhook", "webhook.url", args.webhook)
        .set("--webhook-secret", "webhook.secret", args.webhook_secret)
        .set("--api-token", "api.token", args.api_token)
        .set("--console-token", "console.token", args.console_token)
        .switch("--echo", "sandbox.echo", args.echo)
        .set("--responder", "responder.kind", args.responder)
        .set("--llm-base-url", "responder.base_url", args.llm_base_url)
        .set("--llm-model", "responder.model", args.llm_model)
        .set(
            "--system-prompt-file",
            "responder.system_prompt_file",
            args.system_prompt_file.as_deref().map(Path::display),
        )
        .set(
            "--emulator-listen",
            "sandbox.emulator_listen",
            args.emulator_listen,
        )
        .set("--log-format", "log_format", log_format)
        .set("--first-start", "pull.first_start", args.first_start)
        // figment has no path value: a path that is not UTF-8 is read lossily.
        .set(
            "--media-dir",
            "media.download_dir",
            args.media_dir.as_deref().map(Path::display),
        )
        .set(
            "--media-object-store",
            "media.object_store",
            args.media_object_store,
        )
        .set("--token-store", "wechat.token_store", args.token_store);
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            super::fail(format!("serve: {e}"));
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    warn_of_deprecated_variables();
    match Service::run(config, wait_for_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // LeadershipLost also exits 1, so a supervisor restarts the instance as a standby.
            super::fail(format!("serve: {e}"));
            ExitCode::from(if e.is_config() { 2 } else { 1 })
        }
    }
}

/// The old names still work (the emulator printed them), but say which name replaces each.
fn warn_of_deprecated_variables() {
    for var in ENV {
        for old in var.deprecated {
            if std::env::var_os(old).is_some_and(|v| !v.is_empty()) {
                tracing::warn!("{old} is deprecated: use {}", var.name);
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald would keep the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // `try_init`: a subscriber set elsewhere (tests) wins.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
