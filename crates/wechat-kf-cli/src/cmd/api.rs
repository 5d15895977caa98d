//! Operator commands that call the kf API through the library's client: `token`, `accounts`,
//! `contact-way`, `servicers`, `state`, `sync`, `send`, `send-on-event`, `recall`, `customers`,
//! `media`.
//!
//! Credentials come from flags, then the environment (`WECHAT_KF_CORP_ID`, `WECHAT_KF_SECRET`,
//! `WECHAT_KF_BASE_URL`), then the `[wechat]` section of the file `serve` reads (`--config` or
//! `WECHAT_KF_CONFIG`). Results go to stdout (JSON, one object per line, or a single value); progress and
//! errors go to stderr. A failure prints one line and exits 1 when WeChat or the network said
//! no, 2 when the invocation or its input was wrong (checked before any call where the range is
//! known). The customer is `--customer` everywhere (`--to` and `--external-userid` are aliases).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use wechat_kf::client::accounts::{AddAccountRequest, AddContactWayRequest, UpdateAccountRequest};
use wechat_kf::client::customers::BatchGetCustomersRequest;
use wechat_kf::client::media::{MediaKind, MediaUpload};
use wechat_kf::client::messages::RecallMsgRequest;
use wechat_kf::client::service_state::TransServiceStateRequest;
use wechat_kf::client::servicers::ServicerRequest;
use wechat_kf::session::ServiceState;

mod config;
mod send;
mod sync;

pub use config::ConnArgs;

/// API subcommands (flattened into the top level: `wechat-kf token`, `wechat-kf sync`, ...).
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch an access token and print when it expires (the token itself only with --show).
    Token(TokenArgs),
    /// Manage KF accounts.
    Accounts(AccountsArgs),
    /// Get a chat link (add_contact_way) for an account.
    ContactWay(ContactWayArgs),
    /// Manage the servicers of an account.
    Servicers(ServicersArgs),
    /// Read or change a customer's session state.
    State(StateArgs),
    /// Pull messages: one message per line on stdout, exactly as received.
    Sync(sync::SyncArgs),
    /// Send a message to a customer.
    Send(send::SendArgs),
    /// Send a welcome/queue/end text with a code from an event (send_msg_on_event).
    SendOnEvent(send::SendOnEventArgs),
    /// Recall a message sent through the API (within 2 minutes).
    Recall(RecallArgs),
    /// Read customer profiles.
    Customers(CustomersArgs),
    /// Upload or download temporary media.
    Media(MediaArgs),
}

/// `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Also print the token on stdout (it grants API access: handle with care).
    #[arg(long)]
    show: bool,
}

/// `accounts`.
#[derive(Debug, Args)]
pub struct AccountsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: AccountsCommand,
}

/// `accounts` subcommands.
#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// List every account (one JSON object per line).
    List,
    /// Create an account; prints its open_kfid.
    Add {
        /// Display name (≤ 16 characters).
        #[arg(long)]
        name: String,
        /// Avatar: an image media_id from `media upload --type image`.
        #[arg(long)]
        media_id: String,
    },
    /// Rename an account or change its avatar.
    Update {
        /// The account.
        #[arg(long)]
        open_kfid: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New avatar media_id.
        #[arg(long)]
        media_id: Option<String>,
    },
    /// Delete an account.
    Del {
        /// The account.
        #[arg(long)]
        open_kfid: String,
    },
}

/// `contact-way`.
#[derive(Debug, Args)]
pub struct ContactWayArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The account.
    #[arg(long)]
    open_kfid: String,
    /// A scene value returned in `enter_session` (≤ 32 bytes of [0-9a-zA-Z_-]).
    #[arg(long)]
    scene: Option<String>,
}

/// `servicers`.
#[derive(Debug, Args)]
pub struct ServicersArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: ServicersCommand,
}

/// `servicers` subcommands.
#[derive(Debug, Subcommand)]
enum ServicersCommand {
    /// List the servicers of an account (one JSON object per line).
    List {
        /// The account.
        #[arg(long)]
        open_kfid: String,
    },
    /// Add users and/or departments (per-item results, one JSON object per line).
    Add(ServicerTargets),
    /// Remove users and/or departments.
    Del(ServicerTargets),
}

#[derive(Debug, Args)]
struct ServicerTargets {
    /// The account.
    #[arg(long)]
    open_kfid: String,
    /// A WeCom userid (repeatable).
    #[arg(long = "userid")]
    userids: Vec<String>,
    /// A department id (repeatable).
    #[arg(long = "department-id")]
    department_ids: Vec<u64>,
}

/// `state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: StateCommand,
}

/// `state` subcommands.
#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print the session state as JSON.
    Get {
        /// The account.
        #[arg(long)]
        open_kfid: String,
        /// The customer (external_userid).
        #[arg(long, visible_aliases = ["to", "external-userid"])]
        customer: String,
    },
    /// Change the session state; prints the msg_code when the server issues one.
    Trans {
        /// The account.
        #[arg(long)]
        open_kfid: String,
        /// The customer (external_userid).
        #[arg(long, visible_aliases = ["to", "external-userid"])]
        customer: String,
        /// Target state: 0 untreated, 1 bot, 2 queue, 3 human (needs --servicer-userid), 4 end.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=4))]
        state: u32,
        /// The servicer to assign (state 3).
        #[arg(long)]
        servicer_userid: Option<String>,
    },
}

/// `recall`.
#[derive(Debug, Args)]
pub struct RecallArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The account that sent the message.
    #[arg(long)]
    open_kfid: String,
    /// The msgid returned by send.
    #[arg(long)]
    msgid: String,
}

/// `customers`.
#[derive(Debug, Args)]
pub struct CustomersArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: CustomersCommand,
}

/// `customers` subcommands.
#[derive(Debug, Subcommand)]
enum CustomersCommand {
    /// Print profiles (one JSON object per line); unknown ids are named on stderr and make it
    /// exit 1 (after printing the others).
    Get {
        /// The customers (external_userid), 1–100 in all with --customer.
        external_userids: Vec<String>,
        /// A customer (external_userid); repeatable.
        #[arg(long = "customer", visible_aliases = ["to", "external-userid"])]
        customers: Vec<String>,
        /// Include the last enter_session context.
        #[arg(long)]
        context: bool,
    },
}

/// `media`.
#[derive(Debug, Args)]
pub struct MediaArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: MediaCommand,
}

/// `media` subcommands.
#[derive(Debug, Subcommand)]
enum MediaCommand {
    /// Upload a file; prints the media_id.
    Upload {
        /// image, voice, video or file.
        #[arg(long = "type")]
        kind: MediaKind,
        /// The file.
        path: PathBuf,
        /// The name the customer sees (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Download a media_id; prints the path written.
    Download {
        /// The media id.
        #[arg(long)]
        media_id: String,
        /// Write to this file.
        #[arg(long, conflicts_with = "dir")]
        out: Option<PathBuf>,
        /// Write into this directory under the server's file name (default: the current
        /// directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs an API subcommand.
pub async fn run(command: ApiCommand) -> ExitCode {
    match dispatch(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            super::fail(error);
            ExitCode::from(code)
        }
    }
}

/// What can end a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An API or client error.
    #[error("{0}")]
    Api(#[from] wechat_kf::client::Error),
    /// Bad arguments or configuration.
    #[error("{0}")]
    Usage(String),
    /// The operation failed in part (some items refused, some ids unknown).
    #[error("{0}")]
    Failed(String),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// stdout was closed by the reader (e.g. `| head`): stop quietly.
    #[error("broken pipe")]
    BrokenPipe,
}

impl CliError {
    /// 2 when the invocation or its input was wrong (a bad flag, a value the client checks
    /// before sending, an unreadable file), 1 when the operation failed, 0 for a closed pipe.
    pub fn exit_code(&self) -> u8 {
        use wechat_kf::client::Error as E;
        match self {
            CliError::BrokenPipe => 0,
            CliError::Usage(_) | CliError::Api(E::Validation(_) | E::Io { .. }) => 2,
            CliError::Api(_) | CliError::Failed(_) | CliError::Output(_) => 1,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Output(error)
        }
    }
}

type CliResult = Result<(), CliError>;

/// Writes one line to stdout.
pub(crate) fn out(line: impl std::fmt::Display) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Writes a value as one JSON line.
pub(crate) fn out_json(value: &impl serde::Serialize) -> CliResult {
    let line = serde_json::to_string(value).map_err(|e| CliError::Usage(e.to_string()))?;
    out(line)
}

async fn dispatch(command: ApiCommand) -> CliResult {
    match command {
        ApiCommand::Token(args) => token(args).await,
        ApiCommand::Accounts(args) => accounts(args).await,
        ApiCommand::ContactWay(args) => {
            let client = args.conn.client()?;
            let mut request = AddContactWayRequest::new(args.open_kfid);
            if let Some(scene) = args.scene {
                request = request.scene(scene);
            }
            out(client.accounts().add_contact_way(request).await?.url)
        }
        ApiCommand::Servicers(args) => servicers(args).await,
        ApiCommand::State(args) => state(args).await,
        ApiCommand::Sync(args) => sync::run(args).await,
        ApiCommand::Send(args) => send::run(args).await,
        ApiCommand::SendOnEvent(args) => send::run_on_event(args).await,
        ApiCommand::Recall(args) => {
            let client = args.conn.client()?;
            client
                .messages()
                .recall(RecallMsgRequest::new(args.open_kfid, args.msgid))
                .await?;
            Ok(())
        }
        ApiCommand::Customers(args) => customers(args).await,
        ApiCommand::Media(args) => media(args).await,
    }
}

async fn token(args: TokenArgs) -> CliResult {
    let client = args.conn.client()?;
    let token = client.token().await?;
    let expires_at = token.expires_at();
    let remaining = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    eprintln!(
        "access token valid until {} (in {}s)",
        humantime::format_rfc3339_seconds(expires_at),
        remaining.as_secs()
    );
    if args.show {
        out(token.secret().expose())?;
    } else {
        out(format!(
            "expires_at={}",
            expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        ))?;
    }
    Ok(())
}

async fn accounts(args: AccountsArgs) -> CliResult {
    let client = args.conn.client()?;
    let accounts = client.accounts();
    match args.command {
        AccountsCommand::List => {
            for account in accounts.list_all().await? {
                out_json(&account)?;
            }
            Ok(())
        }
        AccountsCommand::Add { name, media_id } => {
            let created = accounts.add(AddAccountRequest::new(name, media_id)).await?;
            out(created.open_kfid)
        }
        AccountsCommand::Update {
            open_kfid,
            name,
            media_id,
        } => {
            if name.is_none() && media_id.is_none() {
                return Err(CliError::Usage(
                    "accounts update: give --name and/or --media-id".into(),
                ));
            }
            let mut request = UpdateAccountRequest::new(open_kfid);
            if let Some(name) = name {
                request = request.name(name);
            }
            if let Some(media_id) = media_id {
                request = request.media_id(media_id);
            }
            Ok(accounts.update(request).await?)
        }
        AccountsCommand::Del { open_kfid } => Ok(accounts.del(open_kfid).await?),
    }
}

async fn servicers(args: ServicersArgs) -> CliResult {
    let client = args.conn.client()?;
    let servicers = client.servicers();
    let request = |targets: ServicerTargets| {
        ServicerRequest::new(targets.open_kfid)
            .userids(targets.userids)
            .department_ids(targets.department_ids)
    };
    let results = match args.command {
        ServicersCommand::List { open_kfid } => {
            for entry in servicers.list(open_kfid).await?.servicer_list {
                out_json(&entry)?;
            }
            return Ok(());
        }
        ServicersCommand::Add(targets) => servicers.add(request(targets)).await?,
        ServicersCommand::Del(targets) => servicers.del(request(targets)).await?,
    };
    let failed = results.result_list.iter().filter(|r| !r.is_ok()).count();
    for result in &results.result_list {
        out_json(result)?;
    }
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} of {} items failed",
            results.result_list.len()
        )));
    }
    Ok(())
}

async fn state(args: StateArgs) -> CliResult {
    // Checked before any call (the credentials included): state 3 names the servicer.
    if let StateCommand::Trans {
        state: 3,
        servicer_userid: None,
        ..
    } = &args.command
    {
        return Err(CliError::Usage(
            "state trans: --state 3 (a human servicer) needs --servicer-userid".into(),
        ));
    }
    let client = args.conn.client()?;
    match args.command {
        StateCommand::Get {
            open_kfid,
            customer,
        } => {
            let info = client.service_state().get(open_kfid, customer).await?;
            out_json(&info)
        }
        StateCommand::Trans {
            open_kfid,
            customer,
            state,
            servicer_userid,
        } => {
            let mut request =
                TransServiceStateRequest::new(open_kfid, customer, ServiceState::from_code(state));
            if let Some(servicer) = servicer_userid {
                request = request.servicer_userid(servicer);
            }
            match client.service_state().trans(request).await? {
                Some(code) => out(code),
                None => Ok(()),
            }
        }
    }
}

async fn customers(args: CustomersArgs) -> CliResult {
    let CustomersCommand::Get {
        mut external_userids,
        customers,
        context,
    } = args.command;
    external_userids.extend(customers);
    if !(1..=100).contains(&external_userids.len()) {
        return Err(CliError::Usage(format!(
            "customers get: give 1-100 customers (--customer or as arguments), not {}",
            external_userids.len()
        )));
    }
    let client = args.conn.client()?;
    let response = client
        .customers()
        .batchget(
            BatchGetCustomersRequest::new(external_userids).need_enter_session_context(context),
        )
        .await?;
    for customer in &response.customer_list {
        out_json(customer)?;
    }
    let unknown = &response.invalid_external_userid;
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|id| id.as_str()).collect();
        return Err(CliError::Failed(format!(
            "customers get: {} of {} unknown or inaccessible: {}",
            unknown.len(),
            response.customer_list.len() + unknown.len(),
            names.join(", ")
        )));
    }
    Ok(())
}

async fn media(args: MediaArgs) -> CliResult {
    let client = args.conn.client()?;
    match args.command {
        MediaCommand::Upload { kind, path, name } => {
            let mut upload = MediaUpload::file(path);
            if let Some(name) = name {
                upload = upload.filename(name);
            }
            let uploaded = client.media().upload(kind, upload).await?;
            out(uploaded.media_id)
        }
        MediaCommand::Download {
            media_id,
            out: file,
            dir,
        } => {
            let (path, info) = match file {
                Some(path) => {
                    let info = client.media().download_to_file(media_id, &path).await?;
                    (path, info)
                }
                None => {
                    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
                    client.media().download_to_dir(media_id, dir).await?
                }
            };
            if let Some(content_type) = &info.content_type {
                eprintln!("content-type: {content_type}");
            }
            out(path.display())
        }
    }
}

/// How long `sync --follow` waits between polls when caught up.
pub(crate) const DEFAULT_FOLLOW_INTERVAL: Duration = Duration::from_secs(5);
