//! `wechat-kf store messages|deliveries|sends`: what the service holds, read from its store
//! without opening the database by hand. Read-only (SQLite opened read-only, PostgreSQL in
//! read-only transactions, no migration), so it works while `serve` runs. One JSON object per
//! line on stdout, newest first: ids and states, never message content.
//!
//! The store is the one `serve` uses: `--db`, then `WECHAT_KF_DB`, then `storage.db` of
//! `--config`, then `wechat-kf.db` (or, without WeChat credentials, the sandbox's in-memory
//! store, which only the running `serve` can list: `GET /v1/messages`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use wechat_kf_service::config::{Config, Overrides};
use wechat_kf_service::store::{self, ListQuery};

use super::Failure;

/// `store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    listing: Listing,
}

/// What to list.
#[derive(Debug, Subcommand)]
enum Listing {
    /// Stored messages: msgid, kind, state (pending, delivered, skipped), and for a pending one
    /// its delivery's attempts and last error. --failed: undecodable ones and those whose
    /// delivery failed.
    Messages(Filter),
    /// Deliveries in flight or waiting for a retry: id, attempts, last error, msgids.
    /// --failed: those whose last attempt failed.
    Deliveries(Filter),
    /// Replies queued from webhook responses and handoffs: msgid, state (pending, sent, failed,
    /// refused, joined), attempts, last error. --failed: failed, refused or being retried.
    Sends(Filter),
}

/// What every listing takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Selection")]
struct Filter {
    /// Only this account.
    #[arg(long)]
    open_kfid: Option<String>,
    /// Only this customer (external_userid).
    #[arg(long, visible_aliases = ["external-userid", "to"])]
    customer: Option<String>,
    /// Only what went wrong (see each listing).
    #[arg(long)]
    failed: bool,
    /// At most this many rows, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    #[command(flatten)]
    location: Location,
}

/// Where the store is.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store")]
struct Location {
    /// SQLite file or postgres:// URL [env: WECHAT_KF_DB; default: storage.db of --config,
    /// else wechat-kf.db].
    #[arg(long)]
    db: Option<String>,
    /// The TOML file `serve` reads; its `storage.db` is used [env: WECHAT_KF_CONFIG].
    #[arg(long, env = "WECHAT_KF_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
}

impl Filter {
    fn query(&self) -> ListQuery {
        ListQuery {
            open_kfid: self.open_kfid.clone().map(Into::into),
            external_userid: self.customer.clone().map(Into::into),
            failed: self.failed,
            limit: self.limit as usize,
        }
    }
}

/// Runs `store`.
pub async fn run(args: StoreArgs) -> ExitCode {
    match list(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}

async fn list(args: StoreArgs) -> Result<(), Failure> {
    let (Listing::Messages(filter) | Listing::Deliveries(filter) | Listing::Sends(filter)) =
        &args.listing;
    let flags = Overrides::default().set("--db", "storage.db", filter.location.db.as_ref());
    let config = Config::load(filter.location.config.as_deref(), flags)
        .map_err(|e| Failure::usage(format!("store: {e}")))?;
    let location = config.db_location();
    let opened = store::open_read_only(&location).await.map_err(|e| {
        if e.is_config() {
            Failure::usage(format!("store: {e}"))
        } else {
            Failure::failed(format!("store: {e}"))
        }
    })?;
    let query = filter.query();
    let failed = |e: wechat_kf_service::Error| Failure::failed(format!("store: {e}"));
    let lines: Vec<String> = match &args.listing {
        Listing::Messages(_) => json_lines(opened.list_messages(query).await.map_err(failed)?),
        Listing::Deliveries(_) => json_lines(opened.list_deliveries(query).await.map_err(failed)?),
        Listing::Sends(_) => json_lines(opened.list_sends(query).await.map_err(failed)?),
    };
    opened.close().await;
    for line in lines {
        match super::api::out(line) {
            Ok(()) => {}
            // A reader that went away (`| head`) is not a failure.
            Err(super::api::CliError::BrokenPipe) => return Ok(()),
            Err(e) => return Err(Failure::failed(e.to_string())),
        }
    }
    Ok(())
}

fn json_lines<T: serde::Serialize>(rows: Vec<T>) -> Vec<String> {
    rows.iter()
        .filter_map(|row| serde_json::to_string(row).ok())
        .collect()
}
