//! The idle rule (`handoff.idle`): a customer whose message has gone unanswered that long while
//! the bot held the session (the bot is down, failing, or chose not to answer) is handed over,
//! like a keyword handoff, so nobody waits forever for an answer that is not coming.
//!
//! A task looks every tenth of the limit (at most every [`SCAN_EVERY`]) at the sessions whose customer last wrote just over the
//! limit ago; whether one is idle is a pure function of its view and `now` ([`is_idle`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wechat_kf::client::Client;
use wechat_kf::session::{ServiceState, SessionView};
use wechat_kf::{ExternalUserId, OpenKfId, UserId};

use crate::clock::Clock;
use crate::conversation::Conversations;
use crate::error::safe_error;
use crate::metrics::Metrics;
use crate::replies::Transfer;
use crate::send_policy::Gate;
use crate::sender::{Recorder, transfer_and_greet};
use crate::store::Store;

/// How often the rule looks at most: a tenth of the limit, between 1 and 15 seconds.
const SCAN_EVERY: Duration = Duration::from_secs(15);
/// How far past the limit a session is still looked at (a restart longer than this forgets
/// the customers who became idle meanwhile: their turn comes with their next message).
const LOOK_BACK_SECS: i64 = 600;
/// Most sessions looked at per scan.
const SCAN_LIMIT: usize = 1000;

/// Whether the session is idle by the rule at `now` (unix seconds): the bot holds it (new or
/// bot state, or unknown), the customer's last message was an active one (not a menu click,
/// such as a survey answer) at least `after` seconds ago, nothing was sent since, and the
/// bot could still send (the window is open).
pub(crate) fn is_idle(view: &SessionView, now: u64, after: u64) -> bool {
    let (Some(last), Some(active)) = (
        view.last_customer_message_at(),
        view.last_active_message_at(),
    ) else {
        return false;
    };
    matches!(
        view.state(),
        None | Some(ServiceState::New | ServiceState::Bot)
    ) && last == active
        && view.sent_since_customer_message() == 0
        && now >= active.saturating_add(after)
        && view.can_send(now).is_ok()
}

/// The idle rule's task.
pub(crate) struct IdleRule {
    /// How long an unanswered message waits.
    pub(crate) after: Duration,
    /// Where the session goes: the state, the servicer, `auto`.
    pub(crate) service_state: u32,
    pub(crate) servicer_userid: Option<UserId>,
    pub(crate) auto: bool,
    /// The transfer's own message (else the configured stage message).
    pub(crate) message: Option<String>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) client: Client,
    pub(crate) gate: Arc<Gate>,
    pub(crate) conversations: Arc<Conversations>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) metrics: Arc<Metrics>,
    /// WeChat's clock (`send_time`s, the window).
    pub(crate) clock: Clock,
}

impl IdleRule {
    /// Runs until shutdown.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        // Per customer, the message already acted on: one handover per unanswered message.
        let mut tried: HashMap<(OpenKfId, ExternalUserId), u64> = HashMap::new();
        let every = (self.after / 10).clamp(Duration::from_secs(1), SCAN_EVERY);
        loop {
            self.scan(&mut tried).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn scan(&self, tried: &mut HashMap<(OpenKfId, ExternalUserId), u64>) {
        let now = self.clock.now_u64();
        let after = self.after.as_secs();
        let until = now.saturating_sub(after) as i64;
        let sessions = match self
            .store
            .sessions_last_written_between(until - LOOK_BACK_SECS, until, SCAN_LIMIT)
            .await
        {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::warn!(error = %e, "idle rule: cannot read the sessions");
                return;
            }
        };
        tried.retain(|_, at| (*at as i64) >= until - LOOK_BACK_SECS);
        for (open_kfid, external_userid, view) in sessions {
            if !is_idle(&view, now, after) {
                continue;
            }
            let at = view.last_active_message_at().unwrap_or(0);
            let key = (open_kfid.clone(), external_userid.clone());
            if tried.get(&key) == Some(&at) {
                continue;
            }
            tried.insert(key, at);
            let transfer = Transfer {
                open_kfid,
                external_userid,
                service_state: self.service_state,
                servicer_userid: self.servicer_userid.clone(),
                auto: self.auto,
                message: self.message.clone(),
            };
            if let Err(e) = transfer_and_greet(
                &self.client,
                Some(&self.gate),
                &self.conversations,
                &self.recorder,
                &self.metrics,
                &transfer,
                "idle",
            )
            .await
            {
                tracing::warn!(open_kfid = transfer.open_kfid.as_str(), error = %safe_error(&e), "idle rule: the handover failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use wechat_kf::session::SendRefusal;

    use super::*;

    fn written_at(at: u64, menu_click: bool) -> SessionView {
        let mut view = SessionView::new();
        view.observe_customer_message(at, None, menu_click);
        view
    }

    #[test]
    fn an_unanswered_message_becomes_idle_after_the_limit_and_not_before() {
        let view = written_at(1000, false);
        assert!(!is_idle(&view, 1000 + 299, 300));
        assert!(is_idle(&view, 1000 + 300, 300));
    }

    #[test]
    fn an_answered_message_a_click_or_a_human_session_is_never_idle() {
        let mut answered = written_at(1000, false);
        answered.record_send(1010);
        assert!(!is_idle(&answered, 5000, 300));

        let mut clicked = written_at(1000, false);
        clicked.observe_customer_message(1100, None, true);
        assert!(
            !is_idle(&clicked, 5000, 300),
            "a survey answer asks nothing"
        );

        let mut human = written_at(1000, false);
        human.observe_refusal(
            &SendRefusal::HumanServicer {
                servicer: Some("zhangsan".into()),
            },
            1001,
        );
        assert!(!is_idle(&human, 5000, 300));

        let old = written_at(1000, false);
        assert!(!is_idle(&old, 1000 + 49 * 3600, 300), "the window closed");
    }
}
