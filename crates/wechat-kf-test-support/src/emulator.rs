//! Starting the emulator for a test.

use std::time::Duration;

use wechat_kf_emulator::{Config, Emulator, RunningEmulator};

/// An emulator for a test, started on a loopback port of its own (`127.0.0.1:0`; read it back
/// with `base_url()`). Begins from `Config::generated()` (fresh credentials, WeChat's limits)
/// or a given configuration; each option is one adjustment tests keep making.
///
/// ```
/// # async fn demo() {
/// use wechat_kf_test_support::TestEmulator;
///
/// let emu = TestEmulator::new().unlimited().quick_callbacks().start().await;
/// let kf = emu.emulator().create_account("test");
/// # let _ = kf;
/// emu.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
#[must_use = "nothing starts before `start`"]
pub struct TestEmulator {
    config: Config,
}

impl Default for TestEmulator {
    fn default() -> Self {
        TestEmulator::new()
    }
}

impl TestEmulator {
    /// From `Config::generated()`.
    pub fn new() -> TestEmulator {
        TestEmulator::with_config(Config::generated())
    }

    /// From `config` (a seed, chosen credentials, ...).
    pub fn with_config(config: Config) -> TestEmulator {
        TestEmulator { config }
    }

    /// Every call-rate limit off (`Config::disable_rate_limits`): tests make calls in bursts
    /// that WeChat would throttle, and throttling is tested on its own.
    pub fn unlimited(mut self) -> TestEmulator {
        self.config.disable_rate_limits();
        self
    }

    /// Only the limit on `sync_msg` without a callback token off (tests pull without one far
    /// more often than WeChat allows); the other limits stay.
    pub fn unlimited_sync(mut self) -> TestEmulator {
        self.config.sync_without_token_per_minute = 0;
        self
    }

    /// Callbacks retried after 100 ms and given up after 2 s (WeChat: 1 s and 5 s), so that a
    /// callback to a stopped service does not hold a test up.
    pub fn quick_callbacks(self) -> TestEmulator {
        self.configure(|c| {
            c.callback_retry_delay = Duration::from_millis(100);
            c.callback_timeout = Duration::from_secs(2);
        })
    }

    /// Any other adjustment of the configuration.
    pub fn configure(mut self, adjust: impl FnOnce(&mut Config)) -> TestEmulator {
        adjust(&mut self.config);
        self
    }

    /// The configuration it will start with (credentials for a client built before the start).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts it on `127.0.0.1:0`; panics if it cannot (a test cannot go on without it).
    pub async fn start(self) -> RunningEmulator {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Emulator::start(self.config, listen)
            .await
            .unwrap_or_else(|e| panic!("the emulator cannot start on {listen}: {e}"))
    }
}
