//! An account's agent (`openai` or `dify`) and its retries within a deadline.

use std::time::Duration;

use super::dify::Dify;
use super::model::{Answer, Ask, ModelError};
use super::openai::OpenAi;
use crate::retry::{backoff, jitter};

/// An agent of one account.
#[derive(Debug)]
pub(crate) enum Agent {
    OpenAi(OpenAi),
    Dify(Dify),
}

impl Agent {
    /// The model's name for metrics (`dify` for Dify apps).
    pub(crate) fn model(&self) -> &str {
        match self {
            Agent::OpenAi(o) => &o.model,
            Agent::Dify(_) => "dify",
        }
    }

    async fn attempt(&self, ask: &Ask<'_>, timeout: Duration) -> Result<Answer, ModelError> {
        match self {
            Agent::OpenAi(o) => o.ask(ask, timeout).await,
            Agent::Dify(d) => d.ask(ask, timeout).await,
        }
    }

    /// Attempts until an answer, a failure not worth repeating, or `deadline` has passed;
    /// each failed attempt is reported to `failed` (for metrics). A forgotten Dify
    /// conversation is asked again without its id.
    pub(crate) async fn ask(
        &self,
        ask: &mut Ask<'_>,
        deadline: tokio::time::Instant,
        mut failed: impl FnMut(&ModelError),
    ) -> Result<Answer, ModelError> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ModelError {
                    kind: "timeout",
                    status: None,
                    retryable: false,
                    detail: "deadline passed".into(),
                });
            }
            match self.attempt(ask, left).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.kind == "conversation_gone" && ask.conversation_id.is_some() => {
                    failed(&e);
                    ask.conversation_id = None;
                }
                Err(e) => {
                    failed(&e);
                    if !e.retryable {
                        return Err(e);
                    }
                    let wait = backoff(
                        attempts,
                        Duration::from_millis(500),
                        Duration::from_secs(8),
                        jitter(),
                    );
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if wait >= left {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
