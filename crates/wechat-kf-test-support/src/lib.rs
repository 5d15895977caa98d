//! What the wechat-kf crates' tests share, written once (`publish = false`: a dev-dependency
//! only).
//!
//! - **Skipping without a service or tool** ([`require_env`], [`require_command`],
//!   [`require_path`], [`require`]): a test that needs PostgreSQL, Redis, S3, ffmpeg or node
//!   says plainly that it was skipped (on the real stderr, past the test harness's capture) and
//!   passes; under `WECHAT_KF_CI=1` the same test fails instead, because CI must never skip.
//! - **An emulator for a test** ([`TestEmulator`]): `Config::generated()` with the usual test
//!   adjustments (no rate limits, quick callback retries), started on a port of its own.
//! - **Ports** ([`serve`], [`ClosedPort`]): servers bind `127.0.0.1:0` and the test reads the port
//!   back. Never "bind, read the port, release it, hand the number on": another test running in
//!   parallel can take the port in between.
//! - **Child processes** ([`Spawned`]): starts a program (the `wechat-kf` binary) with its output
//!   piped, drains both pipes in the background so the child never blocks on a full pipe, and
//!   waits for a line, such as the one naming the address it listens on (tests pass
//!   `--listen 127.0.0.1:0`).
//! - **A PostgreSQL schema of its own** ([`PgSchema`]): created for one test (or bench) in the
//!   database of `DATABASE_URL`, selected through the URL, dropped at the end.
//! - **Waiting** ([`wait_for`]): polls a condition until a deadline instead of sleeping a fixed
//!   time.
//! - **Stand-in model servers** ([`llm`]: [`OpenAiStandIn`], [`DifyStandIn`]): an
//!   OpenAI-compatible server (chat completions, transcriptions) and Dify's chat-messages API
//!   that answer scripted [`Reply`]s, record every request and check it against the protocol.
//!
//! It depends on the emulator but not on the library, so that the library's tests keep their
//! own features (a dependency here would switch the library's `client` feature on in every
//! test build).

mod emulator;
pub mod llm;
mod net;
mod pg;
mod process;
mod skip;
mod wait;

pub use emulator::TestEmulator;
pub use llm::{DifyStandIn, OpenAiStandIn, Recorded, RecordedFile, Reply};
pub use net::{ClosedPort, serve};
pub use pg::PgSchema;
pub use process::{Spawned, Stream};
pub use skip::{ci, require, require_command, require_env, require_path};
pub use wait::wait_for;
