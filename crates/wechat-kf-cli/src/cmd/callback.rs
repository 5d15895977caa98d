//! `wechat-kf callback`: verify-url, decrypt and encrypt for people debugging their callback setup.

use std::process::ExitCode;

use clap::Subcommand;

/// Callback debugging subcommands.
#[derive(Debug, Subcommand)]
pub enum CallbackCommand {
    /// Not yet implemented.
    VerifyUrl,
}

/// Runs a callback subcommand.
pub fn run(_command: CallbackCommand) -> ExitCode {
    super::fail("callback: not implemented yet");
    ExitCode::from(2)
}
