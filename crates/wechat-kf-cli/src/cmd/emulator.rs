//! `wechat-kf emulator`: runs the local WeChat KF emulator.

use std::process::ExitCode;

use clap::Args;

/// Emulator options.
#[derive(Debug, Args)]
pub struct EmulatorArgs {}

/// Runs the emulator until interrupted.
pub async fn run(_args: EmulatorArgs) -> ExitCode {
    super::fail("emulator: not implemented yet");
    ExitCode::from(2)
}
