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

use serde_json::{Map, Value, json};
use wechat_kf::client::Client;
use wechat_kf::client::messages::{SendMsgRequest, SendMsgResponse};
use wechat_kf::session::{SendAllowance, SendRefusal, ServiceState, SessionView};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::retry::now_ms;
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

/// The gate every `send_msg` passes.
pub(crate) struct Gate {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
    locks: Mutex<HashMap<(String, String), LaneLock>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// Holds a customer's send lock; forgets the lock when nobody else waits for it.
pub(crate) struct LaneGuard<'a> {
    gate: &'a Gate,
    key: (String, String),
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
    pub(crate) async fn lock(&self, open_kfid: &str, external_userid: &str) -> LaneGuard<'_> {
        let key = (open_kfid.to_owned(), external_userid.to_owned());
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
    pub(crate) async fn view(&self, open_kfid: &str, external_userid: &str) -> Option<SessionView> {
        match self
            .store
            .session(open_kfid.to_owned(), external_userid.to_owned())
            .await
        {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(open_kfid, error = %e, "session view unavailable; WeChat decides");
                None
            }
        }
    }

    /// Whether a send to this customer would be allowed now. Without a view (the service has
    /// never seen the customer) WeChat decides: allowed, with the whole quota.
    pub(crate) async fn check(
        &self,
        open_kfid: &str,
        external_userid: &str,
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
        open_kfid: &str,
        external_userid: &str,
        request: SendMsgRequest,
    ) -> SendOutcome {
        let _lane = self.lock(open_kfid, external_userid).await;
        self.send_locked(open_kfid, external_userid, request).await
    }

    /// [`send`](Self::send) for a caller that holds the customer's lock already.
    pub(crate) async fn send_locked(
        &self,
        open_kfid: &str,
        external_userid: &str,
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
        open_kfid: &str,
        external_userid: &str,
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
            .get(open_kfid, external_userid)
            .await
        {
            Ok(info) => {
                let update = SessionUpdate::State {
                    state: info.service_state,
                    servicer: info.servicer_userid.map(|s| s.as_str().to_owned()),
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
        open_kfid: &str,
        external_userid: &str,
        state: ServiceState,
        servicer: Option<String>,
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
        open_kfid: &str,
        external_userid: &str,
        update: SessionUpdate,
    ) -> Option<SessionView> {
        match self
            .store
            .update_session(
                open_kfid.to_owned(),
                external_userid.to_owned(),
                update,
                now_ms(),
            )
            .await
        {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(open_kfid, error = %e, "cannot update the session view");
                None
            }
        }
    }
}

/// The stable name of a refusal (`reason` in JSON, the metric label).
pub fn reason(refusal: &SendRefusal) -> &'static str {
    match refusal {
        SendRefusal::HumanServicer { .. } => "human_servicer",
        SendRefusal::Queued => "queued",
        SendRefusal::Ended => "session_ended",
        SendRefusal::StateForbidsSending { .. } => "state_forbids_sending",
        SendRefusal::NoCustomerMessage => "no_customer_message",
        SendRefusal::WindowExpired { .. } => "window_expired",
        SendRefusal::OnlyMenuClicks { .. } => "only_menu_clicks",
        SendRefusal::QuotaExhausted { .. } => "quota_exhausted",
        _ => "refused",
    }
}

/// The refusal as the reply API answers it (HTTP 409) and as a refused webhook reply reports
/// it: `{"error":"send_refused","reason","errcode","message","lifted_by","handoff","predicted",
/// …details}`. `errmsg` is WeChat's text when WeChat answered.
pub(crate) fn refusal_json(
    refusal: &SendRefusal,
    predicted: bool,
    errmsg: Option<&str>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("error".into(), json!("send_refused"));
    out.insert("reason".into(), json!(reason(refusal)));
    out.insert("errcode".into(), json!(refusal.errcode()));
    out.insert("message".into(), json!(refusal.to_string()));
    out.insert(
        "lifted_by".into(),
        json!(if refusal.lifted_by_customer_message() {
            "customer_message"
        } else {
            "session_change"
        }),
    );
    out.insert("handoff".into(), json!(refusal.is_human_handoff()));
    out.insert("predicted".into(), json!(predicted));
    out.insert("retryable".into(), json!(false));
    match refusal {
        SendRefusal::HumanServicer {
            servicer: Some(servicer),
        } => {
            out.insert("servicer_userid".into(), json!(servicer.as_str()));
        }
        SendRefusal::StateForbidsSending { state: Some(state) } => {
            out.insert("service_state".into(), json!(state.code()));
        }
        SendRefusal::WindowExpired {
            last_customer_message_at: Some(at),
        } => {
            out.insert("last_customer_message_at".into(), json!(at));
        }
        SendRefusal::OnlyMenuClicks {
            last_active_message_at: Some(at),
        } => {
            out.insert("last_active_message_at".into(), json!(at));
        }
        SendRefusal::QuotaExhausted { sent } => {
            out.insert("sent".into(), json!(sent));
        }
        _ => {}
    }
    if let Some(errmsg) = errmsg {
        out.insert("errmsg".into(), json!(errmsg));
    }
    out
}

/// A view as `GET /v1/sessions/{open_kfid}/{external_userid}` shows it.
pub(crate) fn view_json(view: Option<&SessionView>, now: u64) -> Value {
    let mut out = Map::new();
    match view {
        None => {
            out.insert("known".into(), json!(false));
            out.insert("can_send".into(), json!(true));
        }
        Some(view) => {
            out.insert("known".into(), json!(true));
            match view.can_send(now) {
                Ok(allowance) => {
                    out.insert("can_send".into(), json!(true));
                    out.insert("remaining".into(), json!(allowance.remaining));
                    out.insert("window_closes_at".into(), json!(allowance.window_closes_at));
                }
                Err(refusal) => {
                    out.insert("can_send".into(), json!(false));
                    out.insert(
                        "refusal".into(),
                        Value::Object(refusal_json(&refusal, true, None)),
                    );
                }
            }
            if let Some(state) = view.state() {
                out.insert("service_state".into(), json!(state.code()));
            }
            if let Some(servicer) = view.servicer() {
                out.insert("servicer_userid".into(), json!(servicer.as_str()));
            }
            if let Some(at) = view.last_customer_message_at() {
                out.insert("last_customer_message_at".into(), json!(at));
            }
            out.insert(
                "sent_since_customer_message".into(),
                json!(view.sent_since_customer_message()),
            );
        }
    }
    Value::Object(out)
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

    #[test]
    fn an_unknown_customer_may_be_written_to_and_a_known_one_is_explained() {
        let unknown = view_json(None, 100);
        assert_eq!(unknown["known"], false);
        assert_eq!(unknown["can_send"], true);
        let mut view = SessionView::new();
        view.observe_customer_message(100, None, false);
        let open = view_json(Some(&view), 110);
        assert_eq!(open["can_send"], true);
        assert_eq!(open["remaining"], 5);
        view.observe_trans(ServiceState::Queued, None, None, 120);
        let queued = view_json(Some(&view), 130);
        assert_eq!(queued["can_send"], false);
        assert_eq!(queued["refusal"]["reason"], "queued");
        assert_eq!(queued["service_state"], 2);
    }
}
