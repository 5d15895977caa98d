//! The `wechat-kf` command: one binary for the service, the emulator and the operator tools.
//!
//! `main` only parses arguments and dispatches; every subcommand lives in its own module under
//! `cmd/` and returns an [`ExitCode`], so errors are printed as one line and never as a backtrace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// WeChat Customer Service (微信客服) toolkit.
#[derive(Debug, Parser)]
#[command(name = "wechat-kf", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: callbacks in, every message to your bot exactly once, replies out.
    ///
    /// With no WeChat credentials configured it runs in sandbox mode against an embedded
    /// emulator, so the whole loop works on a laptop.
    Serve(cmd::serve::ServeArgs),
    /// Check sync_msg data against the typed message model: prints each message re-encoded
    /// from it (equal to the input), or a summary; names the items that do not decode.
    #[command(long_about = cmd::decode::LONG_ABOUT)]
    Decode(cmd::decode::DecodeArgs),
    /// Debug a callback setup: verify a URL, decrypt or encrypt a callback body.
    #[command(subcommand)]
    Callback(cmd::callback::CallbackCommand),
    /// Run the local WeChat KF emulator.
    Emulator(cmd::emulator::EmulatorArgs),
    /// List what the service holds (messages, deliveries, queued replies), read-only, also
    /// while `serve` runs.
    Store(cmd::store::StoreArgs),
    /// Operator commands that call the kf API (tokens, accounts, servicers, sync, send, ...).
    #[command(flatten)]
    Api(cmd::api::ApiCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return invocation_error(&error),
    };
    match cli.command {
        Command::Serve(args) => cmd::runtime().block_on(cmd::serve::run(args)),
        Command::Decode(args) => cmd::decode::run(args),
        Command::Callback(command) => cmd::callback::run(command),
        Command::Emulator(args) => cmd::runtime().block_on(cmd::emulator::run(args)),
        Command::Store(args) => cmd::runtime().block_on(cmd::store::run(args)),
        Command::Api(command) => cmd::runtime().block_on(cmd::api::run(command)),
    }
}

/// clap's answer to a wrong invocation, with its first line as every failure line reads
/// (`wechat-kf: …`, the missing arguments joined onto it) and exit code 2; `--help` and
/// `--version` print as clap prints them and exit 0.
fn invocation_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    }
    let text = error.render().to_string();
    let mut lines = text.lines();
    let mut first = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let mut rest: Vec<&str> = Vec::new();
    for line in lines {
        // The indented lines right after the first (the missing arguments) belong to it.
        if rest.is_empty() && line.starts_with("  ") {
            first.push_str(if first.ends_with(':') { " " } else { ", " });
            first.push_str(line.trim());
        } else {
            rest.push(line);
        }
    }
    cmd::fail(first);
    for line in rest {
        eprintln!("{line}");
    }
    ExitCode::from(2)
}
