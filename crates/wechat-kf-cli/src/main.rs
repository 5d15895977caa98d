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
    /// Decode sync_msg responses or message lists into typed messages (or a summary).
    Decode(cmd::decode::DecodeArgs),
    /// Debug a callback setup: verify a URL, decrypt or encrypt a callback body.
    #[command(subcommand)]
    Callback(cmd::callback::CallbackCommand),
    /// Run the local WeChat KF emulator.
    Emulator(cmd::emulator::EmulatorArgs),
    /// Operator commands that call the kf API (tokens, accounts, servicers, sync, send, ...).
    #[command(flatten)]
    Api(cmd::api::ApiCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => cmd::runtime().block_on(cmd::serve::run(args)),
        Command::Decode(args) => cmd::decode::run(args),
        Command::Callback(command) => cmd::callback::run(command),
        Command::Emulator(args) => cmd::runtime().block_on(cmd::emulator::run(args)),
        Command::Api(command) => cmd::runtime().block_on(cmd::api::run(command)),
    }
}
