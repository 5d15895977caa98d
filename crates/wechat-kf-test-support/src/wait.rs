//! Waiting for something a background task does, with a deadline instead of a fixed sleep.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it is true; panics naming `what` after `timeout`, so a
/// test that waits for work it expects never hangs.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let started = std::time::Instant::now();
/// wechat_kf_test_support::wait_for("50 ms to pass", Duration::from_secs(5), || async {
///     started.elapsed() >= Duration::from_millis(50)
/// })
/// .await;
/// # }
/// ```
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
