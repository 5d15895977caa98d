//! One module per subcommand. Each exposes its clap arguments and a `run` returning an exit code.
//!
//! Every subcommand exits alike: 0 on success, 1 when the operation failed (WeChat, the network
//! or the store said no), 2 when the invocation or its input was wrong (a missing or bad flag,
//! an unreadable file, a value out of range; clap's own errors exit 2 too). A failure is one
//! line on stderr starting with `wechat-kf: `.

pub mod api;
pub mod callback;
pub mod decode;
pub mod emulator;
pub mod serve;
pub mod store;

use std::process::ExitCode;

/// A multi-threaded tokio runtime for the async subcommands.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Prints a one-line error on stderr, prefixed with the program name.
pub fn fail(message: impl std::fmt::Display) {
    eprintln!("wechat-kf: {message}");
}

/// Why a command ended without success: the line printed and its exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// The invocation or its input was wrong: exit 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// The operation failed: exit 1.
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Prints the line and returns the exit code.
    pub fn exit(self) -> ExitCode {
        fail(&self.message);
        ExitCode::from(self.code)
    }
}
