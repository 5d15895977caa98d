//! The send policy in the service: every `kf/send_msg` — reply API, webhook replies, the echo
//! bot — is first checked against the customer's [`SessionView`] (kept in the store, fed with
//! every pulled message, every accepted send and every `service_state/trans`). A send the view
//! refuses is not made: the caller gets a [`SendRefusal`] instead (HTTP 409 on the reply API, a
//! `refused` result in `reply_results` for webhook replies). When WeChat refuses a send the view
//! allowed, the refusal is mapped the same way and remembered.
//!
//! Sends to one customer are serialized (a per-customer lock), so that the check, the call and
//! the bookkeeping of one send never interleave with another's and the quota is counted right.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use wechat_kf::client::Client;
use wechat_kf::client::messages::{SendMsgRequest, SendMsgResponse};
use wechat_kf::session::{SendAllowance, SendRefusal, ServiceState, SessionView};
use wechat_kf::{ExternalUserId, OpenKfId, UserId};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{SessionUpdate, Store};

/// What a gated send came to.
#[derive(Debug)]
pub(crate) enum SendOutcome {
    /// WeChat accepted it.
    Sent(SendMsgResponse),
    /// Not sent, or refused by WeChat, for a reason of the session.
    Refused {
        refusal: SendRefusal,
        /// `true`: the service refused without calling WeChat.
        predicted: bool,
        /// WeChat's errmsg, when WeChat answered.
        errmsg: Option<String>,
    },
    /// Any other failure.
    Failed(wechat_kf::client::Error),
}

type LaneLock = Arc<tokio::sync::Mutex<()>>;

/// A customer of an account: the scope of the send lock.
type Customer = (OpenKfId, ExternalUserId);

/// The gate every `send_msg` passes.
pub(crate) struct Gate {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
    locks: Mutex<HashMap<Customer, LaneLock>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// Holds a customer's send lock; forgets the lock when nobody else waits for it.
pub(crate) struct LaneGuard<'a> {
    gate: &'a Gate,
    key: Customer,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.gate.locks.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and our guard's: nobody else holds or waits for it.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(&self.key);
        }
    }
}

impl Gate {
    pub(crate) fn new(
        client: Client,
        store: Arc<dyn Store>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Gate {
        Gate {
            client,
            store,
            clock,
            metrics,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the send lock of one customer.
    pub(crate) async fn lock(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
    ) -> LaneGuard<'_> {
        let key = (open_kfid.clone(), external_userid.clone());
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        LaneGuard {
            gate: self,
            key,
            _guard: lock.lock_owned().await,
        }
    }

    /// The stored view of a customer (`None` when the service knows nothing about them, or the
    /// store does not answer).
    pub(crate) async fn view(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
    ) -> Option<SessionView> {
        match self
            .store
            .session(open_kfid.clone(), external_userid.clone())
            .await
        {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(open_kfid = open_kfid.as_str(), error = %e, "session view unavailable; WeChat decides");
                None
            }
        }
    }

    /// Whether a send to this customer would be allowed now. Without a view (the service has
    /// never seen the customer) WeChat decides: allowed, with the whole quota.
    pub(crate) async fn check(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
    ) -> Result<Option<SendAllowance>, SendRefusal> {
        match self.view(open_kfid, external_userid).await {
            Some(view) => view.can_send(self.clock.now_u64()).map(Some),
            None => Ok(None),
        }
    }

    /// Counts a refusal the service made itself.
    pub(crate) fn count_predicted(&self, refusal: &SendRefusal) {
        self.metrics.send_refused(reason(refusal), "service");
    }

    /// Sends one message under the customer's lock: checks the view, calls WeChat, records the
    /// send or learns the refusal.
    pub(crate) async fn send(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
        request: SendMsgRequest,
    ) -> SendOutcome {
        let _lane = self.lock(open_kfid, external_userid).await;
        self.send_locked(open_kfid, external_userid, request).await
    }

    /// [`send`](Self::send) for a caller that holds the customer's lock already.
    pub(crate) async fn send_locked(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
        request: SendMsgRequest,
    ) -> SendOutcome {
        let known = match self.check(open_kfid, external_userid).await {
            Ok(allowance) => allowance.is_some(),
            Err(refusal) => {
                self.count_predicted(&refusal);
                return SendOutcome::Refused {
                    refusal,
                    predicted: true,
                    errmsg: None,
                };
            }
        };
        let result = self.client.messages().send(request).await;
        let now = self.clock.now_u64();
        match result {
            Ok(sent) => {
                // A customer the service has not seen yet (their message is still being
                // pulled, or the account is not pulled at all) gets no view from a send alone:
                // a view without the customer's message would refuse the next send.
                if known {
                    self.update(open_kfid, external_userid, SessionUpdate::Sent { at: now })
                        .await;
                }
                SendOutcome::Sent(sent)
            }
            Err(error) => {
                self.metrics.api_error("kf/send_msg", &error);
                match error.send_refusal() {
                    Some(refusal) => {
                        let refusal = self
                            .learn_refusal(open_kfid, external_userid, refusal, now)
                            .await;
                        self.metrics.send_refused(reason(&refusal), "wechat");
                        let errmsg = match &error {
                            wechat_kf::client::Error::Api { errmsg, .. } => Some(errmsg.clone()),
                            _ => None,
                        };
                        SendOutcome::Refused {
                            refusal,
                            predicted: false,
                            errmsg,
                        }
                    }
                    None => SendOutcome::Failed(error),
                }
            }
        }
    }

    /// Remembers a refusal WeChat answered. After an unexplained 95018 the state is asked
    /// (`service_state/get`), so the answer names the real reason (e.g. the servicer).
    async fn learn_refusal(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
        refusal: SendRefusal,
        now: u64,
    ) -> SendRefusal {
        self.update(
            open_kfid,
            external_userid,
            SessionUpdate::Refused {
                refusal: refusal.clone(),
                at: now,
            },
        )
        .await;
        if !matches!(refusal, SendRefusal::StateForbidsSending { state: None }) {
            return refusal;
        }
        match self
            .client
            .service_state()
            .get(open_kfid.clone(), external_userid.clone())
            .await
        {
            Ok(info) => {
                let update = SessionUpdate::State {
                    state: info.service_state,
                    servicer: info.servicer_userid,
                    at: now,
                };
                match self.update(open_kfid, external_userid, update).await {
                    Some(view) => view.can_send(now).err().unwrap_or(refusal),
                    None => refusal,
                }
            }
            Err(e) => {
                self.metrics.api_error("kf/service_state/get", &e);
                refusal
            }
        }
    }

    /// Records our own successful `service_state/trans`.
    pub(crate) async fn transferred(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
        state: ServiceState,
        servicer: Option<UserId>,
        msg_code: Option<String>,
    ) {
        let at = self.clock.now_u64();
        self.update(
            open_kfid,
            external_userid,
            SessionUpdate::Transferred {
                state,
                servicer,
                msg_code,
                at,
            },
        )
        .await;
    }

    /// Applies an update; a store failure is logged (the next refusal teaches the view again).
    pub(crate) async fn update(
        &self,
        open_kfid: &OpenKfId,
        external_userid: &ExternalUserId,
        update: SessionUpdate,
    ) -> Option<SessionView> {
        match self
            .store
            .update_session(
                open_kfid.clone(),
                external_userid.clone(),
                update,
                self.clock.local_ms(),
            )
            .await
        {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(open_kfid = open_kfid.as_str(), error = %e, "cannot update the session view");
                None
            }
        }
    }
}

/// The stable name of a refusal (`reason` in JSON, the metric label).
pub fn reason(refusal: &SendRefusal) -> &'static str {
    RefusalReason::of(refusal).as_str()
}

/// Why a send was refused, as `reason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefusalReason {
    /// A human servicer holds the session (95018).
    HumanServicer,
    /// The session waits for a servicer (95018).
    Queued,
    /// The session ended or never started (95018).
    SessionEnded,
    /// A session state that forbids sending (95018).
    StateForbidsSending,
    /// The customer has not written (95002).
    NoCustomerMessage,
    /// The customer's last message is older than 48 hours (95002).
    WindowExpired,
    /// The customer only tapped menu items lately (95024).
    OnlyMenuClicks,
    /// The 5 messages per customer message are spent (95001).
    QuotaExhausted,
    /// A refusal of a kind this version does not name.
    Refused,
}

impl RefusalReason {
    fn of(refusal: &SendRefusal) -> Self {
        match refusal {
            SendRefusal::HumanServicer { .. } => RefusalReason::HumanServicer,
            SendRefusal::Queued => RefusalReason::Queued,
            SendRefusal::Ended => RefusalReason::SessionEnded,
            SendRefusal::StateForbidsSending { .. } => RefusalReason::StateForbidsSending,
            SendRefusal::NoCustomerMessage => RefusalReason::NoCustomerMessage,
            SendRefusal::WindowExpired { .. } => RefusalReason::WindowExpired,
            SendRefusal::OnlyMenuClicks { .. } => RefusalReason::OnlyMenuClicks,
            SendRefusal::QuotaExhausted { .. } => RefusalReason::QuotaExhausted,
            _ => RefusalReason::Refused,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RefusalReason::HumanServicer => "human_servicer",
            RefusalReason::Queued => "queued",
            RefusalReason::SessionEnded => "session_ended",
            RefusalReason::StateForbidsSending => "state_forbids_sending",
            RefusalReason::NoCustomerMessage => "no_customer_message",
            RefusalReason::WindowExpired => "window_expired",
            RefusalReason::OnlyMenuClicks => "only_menu_clicks",
            RefusalReason::QuotaExhausted => "quota_exhausted",
            RefusalReason::Refused => "refused",
        }
    }
}

/// What lifts a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LiftedBy {
    /// The customer's next message.
    CustomerMessage,
    /// A change of the session (a transfer back to the bot, a new session).
    SessionChange,
}

/// `send_refused`, the only value of a refusal's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SendRefusedTag {
    /// The send policy refused.
    SendRefused,
}

/// A refused send, as the reply API answers it (HTTP 409) and as a refused webhook reply
/// reports it (merged into its result).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refusal {
    /// Always `send_refused`.
    pub(crate) error: SendRefusedTag,
    /// Why.
    pub(crate) reason: RefusalReason,
    /// The errcode WeChat answers (or would answer): 95001, 95002, 95018 or 95024.
    pub(crate) errcode: i64,
    /// What happened and what unblocks it, in words.
    pub(crate) message: String,
    /// What lifts the refusal.
    pub(crate) lifted_by: LiftedBy,
    /// Whether a human took over the session.
    pub(crate) handoff: bool,
    /// `true`: the service refused without calling WeChat; `false`: WeChat refused.
    pub(crate) predicted: bool,
    /// Always `false`: repeating the same send does not help.
    pub(crate) retryable: bool,
    /// The human servicer holding the session, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(crate) servicer_userid: Option<UserId>,
    /// The session state (0-4), for `state_forbids_sending`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) service_state: Option<u32>,
    /// When the customer last wrote (unix seconds), for `window_expired`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_customer_message_at: Option<u64>,
    /// When the customer last wrote something other than a menu click, for
    /// `only_menu_clicks`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_active_message_at: Option<u64>,
    /// Messages sent since the customer's last message, for `quota_exhausted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sent: Option<u32>,
    /// WeChat's errmsg, when WeChat answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errmsg: Option<String>,
}

impl Refusal {
    /// The refusal's answer; `errmsg` is WeChat's text when WeChat answered.
    pub(crate) fn new(refusal: &SendRefusal, predicted: bool, errmsg: Option<&str>) -> Self {
        let mut out = Refusal {
            error: SendRefusedTag::SendRefused,
            reason: RefusalReason::of(refusal),
            errcode: refusal.errcode(),
            message: refusal.to_string(),
            lifted_by: if refusal.lifted_by_customer_message() {
                LiftedBy::CustomerMessage
            } else {
                LiftedBy::SessionChange
            },
            handoff: refusal.is_human_handoff(),
            predicted,
            retryable: false,
            servicer_userid: None,
            service_state: None,
            last_customer_message_at: None,
            last_active_message_at: None,
            sent: None,
            errmsg: errmsg.map(str::to_owned),
        };
        match refusal {
            SendRefusal::HumanServicer {
                servicer: Some(servicer),
            } => out.servicer_userid = Some(servicer.clone()),
            SendRefusal::StateForbidsSending { state: Some(state) } => {
                out.service_state = Some(state.code());
            }
            SendRefusal::WindowExpired {
                last_customer_message_at: Some(at),
            } => out.last_customer_message_at = Some(*at),
            SendRefusal::OnlyMenuClicks {
                last_active_message_at: Some(at),
            } => out.last_active_message_at = Some(*at),
            SendRefusal::QuotaExhausted { sent } => out.sent = Some(*sent),
            _ => {}
        }
        out
    }
}

/// The refusal's fields as a JSON object, to merge into a refused webhook reply's result.
pub(crate) fn refusal_json(
    refusal: &SendRefusal,
    predicted: bool,
    errmsg: Option<&str>,
) -> Map<String, Value> {
    match serde_json::to_value(Refusal::new(refusal, predicted, errmsg)) {
        Ok(Value::Object(map)) => map,
        // A struct of strings, numbers and enums always serializes to an object.
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_stable_reasons_and_their_details() {
        let human = SendRefusal::HumanServicer {
            servicer: Some("zhangsan".into()),
        };
        let json = refusal_json(&human, true, None);
        assert_eq!(json["error"], "send_refused");
        assert_eq!(json["reason"], "human_servicer");
        assert_eq!(json["errcode"], 95018);
        assert_eq!(json["servicer_userid"], "zhangsan");
        assert_eq!(json["lifted_by"], "session_change");
        assert_eq!(json["handoff"], true);
        assert!(json["message"].as_str().unwrap().contains("zhangsan"));
        let quota = refusal_json(&SendRefusal::QuotaExhausted { sent: 5 }, false, Some("x"));
        assert_eq!(quota["reason"], "quota_exhausted");
        assert_eq!(quota["errcode"], 95001);
        assert_eq!(quota["sent"], 5);
        assert_eq!(quota["lifted_by"], "customer_message");
        assert_eq!(quota["predicted"], false);
        assert_eq!(quota["errmsg"], "x");
        for (refusal, name) in [
            (SendRefusal::Queued, "queued"),
            (SendRefusal::Ended, "session_ended"),
            (SendRefusal::NoCustomerMessage, "no_customer_message"),
            (
                SendRefusal::WindowExpired {
                    last_customer_message_at: Some(1),
                },
                "window_expired",
            ),
            (
                SendRefusal::OnlyMenuClicks {
                    last_active_message_at: None,
                },
                "only_menu_clicks",
            ),
            (
                SendRefusal::StateForbidsSending {
                    state: Some(ServiceState::Other(9)),
                },
                "state_forbids_sending",
            ),
        ] {
            assert_eq!(reason(&refusal), name);
        }
    }
}
