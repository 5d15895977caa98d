//! Operator commands that call the kf API through the library's client.

use std::process::ExitCode;

use clap::Subcommand;

/// API subcommands (flattened into the top level: `wechat-kf token`, `wechat-kf sync`, ...).
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Not yet implemented.
    Token,
}

/// Runs an API subcommand.
pub async fn run(_command: ApiCommand) -> ExitCode {
    super::fail("api commands: not implemented yet");
    ExitCode::from(2)
}
