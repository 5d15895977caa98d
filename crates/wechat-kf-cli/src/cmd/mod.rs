//! One module per subcommand. Each exposes its clap arguments and a `run` returning an exit code.

pub mod api;
pub mod callback;
pub mod decode;
pub mod emulator;
pub mod serve;

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
