//! The sender: sends the queued replies (from webhook responses, the echo bot and handoffs),
//! which retries transient failures with backoff and keeps each customer's replies in order,
//! and [`transfer_and_greet`], the one way a session is transferred (the reply API's
//! `/v1/service_state/trans` uses it too).
//!
//! Every `send_msg` goes through the [`Gate`]: a send the customer's session view refuses (a
//! human servicer holds the session, the 48-hour window closed, the 5-message quota is spent) is
//! not made; a webhook reply then gets a `refused` result, reported in the next webhook body
//! (`reply_results`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wechat_kf::UserId;
use wechat_kf::client::messages::{SendMsgOnEventRequest, SendMsgRequest};
use wechat_kf::client::outbound::OutboundMessage;
use wechat_kf::client::service_state::TransServiceStateRequest;
use wechat_kf::client::{Client, ErrCode};
use wechat_kf::session::ServiceState;

use crate::clock::Clock;
use crate::config::JoinerConfig;
use crate::conversation::{Conversations, StageMeta, wants_names};
use crate::error::safe_error;
use crate::media_lanes::Handover;
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::replies::{
    OnEvent, ReplyOrigin, SendMsg, Transfer, outbound_from_json, parse_on_event, parse_send_msg,
    parse_transfer, result_head,
};
use crate::retry::{after_failure, jitter};
use crate::send_policy::{Gate, SendOutcome, refusal_json};
use crate::store::{
    ReplyEndpoint, ReplyOutcome, ReplyRecord, ReplyState, SessionChange, SessionUpdate, Store,
};

/// Longest text WeChat accepts (bytes); the joiner never merges beyond it.
const MAX_TEXT_BYTES: usize = 2048;

/// Attempts after which a queued reply is given up (WeChat's 48-hour window closes anyway).
const MAX_REPLY_ATTEMPTS: u32 = 12;

/// Whether a failed retry means an earlier attempt went out: it may have reached WeChat
/// before we lost the answer (or crashed), and WeChat rejects the repeated msgid (or the
/// already used code) with 40035.
fn sent_by_an_earlier_attempt(error: &wechat_kf::client::Error, attempts: u32) -> bool {
    attempts > 0
        && matches!(
            error,
            wechat_kf::client::Error::Api {
                code: ErrCode::InvalidParameter,
                ..
            }
        )
}

/// Records the session changes the service makes itself (WeChat sends no event for an API
/// transfer), delivered in order with the customer's messages.
pub(crate) struct Recorder {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) handover: Handover,
    /// Tells the staff about handovers (`[handoff.notify]`).
    pub(crate) notifier: Option<Arc<Notifier>>,
    /// `at` of the change (WeChat's clock) and `stored_at` (the service's own).
    pub(crate) clock: Clock,
}

impl Recorder {
    /// Stores and hands over the change a transfer made; a failure is logged (the transfer
    /// itself stands, and the session's view knows it).
    async fn transferred(
        &self,
        transfer: &Transfer,
        old_state: Option<ServiceState>,
        new_state: ServiceState,
        by: &'static str,
    ) {
        if let (Some(notifier), ServiceState::Queued | ServiceState::Human) =
            (&self.notifier, new_state)
        {
            let notifier = notifier.clone();
            let handover = notify::Handover {
                open_kfid: transfer.open_kfid.clone(),
                external_userid: transfer.external_userid.clone(),
                service_state: new_state.code(),
                servicer_userid: transfer.servicer_userid.clone(),
                by,
            };
            // Apart from the transfer: a slow robot never holds up the customer's replies.
            tokio::spawn(async move { notifier.handover(handover).await });
        }
        let change = SessionChange {
            open_kfid: transfer.open_kfid.clone(),
            external_userid: transfer.external_userid.clone(),
            old_state: old_state.map(ServiceState::code),
            new_state: new_state.code(),
            servicer_userid: transfer
                .servicer_userid
                .clone()
                .filter(|_| new_state == ServiceState::Human),
            trigger: "transfer",
            change_type: None,
            by: Some(by),
            cause_msgid: None,
            at: self.clock.now_u64() as i64,
        };
        match self
            .store
            .record_session_change(change, self.clock.local_ms())
            .await
        {
            Ok(row) => {
                self.handover
                    .hand_over(&transfer.open_kfid, vec![row])
                    .await;
            }
            Err(e) => {
                tracing::warn!(open_kfid = transfer.open_kfid.as_str(), error = %e, "cannot record a transfer's session change; it is not delivered");
            }
        }
    }
}

/// One `service_state/trans`: the code it returned.
async fn trans(
    client: &Client,
    metrics: &Metrics,
    transfer: &Transfer,
    target: ServiceState,
    servicer: Option<UserId>,
    trigger: &'static str,
) -> Result<Option<String>, wechat_kf::client::Error> {
    let mut request = TransServiceStateRequest::new(
        transfer.open_kfid.clone(),
        transfer.external_userid.clone(),
        target,
    );
    if let Some(servicer) = &servicer {
        request = request.servicer_userid(servicer.clone());
    }
    match client.service_state().trans(request).await {
        Ok(code) => {
            metrics.handoff(trigger, "ok");
            tracing::info!(
                open_kfid = transfer.open_kfid.as_str(),
                service_state = target.code(),
                trigger,
                "session transferred"
            );
            Ok(code)
        }
        Err(e)
            if refused_as_already_there(&e)
                && already_there(client, transfer, target, servicer.as_ref()).await =>
        {
            // An earlier attempt did it (the service died before recording it): done, and the
            // code it returned is lost (WeChat returns a code only once).
            metrics.handoff(trigger, "ok");
            tracing::info!(
                open_kfid = transfer.open_kfid.as_str(),
                service_state = target.code(),
                trigger,
                "the session was already transferred (an earlier attempt); recorded as done"
            );
            Ok(None)
        }
        Err(e) => {
            metrics.api_error("kf/service_state/trans", &e);
            metrics.handoff(trigger, "failed");
            Err(e)
        }
    }
}

/// Whether a refused transfer may have been made already: 95016 (transition not allowed, e.g.
/// 2 → 2) or 95013 (already ended, for a transfer to 4).
fn refused_as_already_there(e: &wechat_kf::client::Error) -> bool {
    matches!(
        e.errcode(),
        Some(ErrCode::TransitionNotAllowed | ErrCode::SessionEnded)
    )
}

/// Whether the session is in `target` already (with `servicer`, for state 3), by
/// `service_state/get`.
async fn already_there(
    client: &Client,
    transfer: &Transfer,
    target: ServiceState,
    servicer: Option<&UserId>,
) -> bool {
    match client
        .service_state()
        .get(transfer.open_kfid.clone(), transfer.external_userid.clone())
        .await
    {
        Ok(info) => {
            info.service_state == target
                && (target != ServiceState::Human
                    || servicer.is_none_or(|s| info.servicer_userid.as_ref() == Some(s)))
        }
        Err(_) => false,
    }
}

/// Whether WeChat refused a servicer for a transfer (not a servicer or not activated: 95014;
/// a dedicated service configured: 95015; stopped or suspended: 95019): try another one.
fn servicer_refused(e: &wechat_kf::client::Error) -> bool {
    matches!(
        e.errcode(),
        Some(
            ErrCode::NotAServicer | ErrCode::DedicatedServiceConfigured | ErrCode::ServicerStopped
        )
    )
}

/// `to = "auto"`: the account's receiving servicers, least recently assigned first, each
/// tried until one takes the session; the queue when none does.
async fn assign(
    client: &Client,
    conversations: &Conversations,
    metrics: &Metrics,
    transfer: &Transfer,
    trigger: &'static str,
) -> Result<(ServiceState, Option<UserId>, Option<String>), wechat_kf::client::Error> {
    let roster = match conversations
        .receiving_servicers(client, &transfer.open_kfid)
        .await
    {
        Ok(roster) => roster,
        Err(e) => {
            metrics.api_error("kf/servicer/list", &e);
            tracing::warn!(open_kfid = transfer.open_kfid.as_str(), error = %safe_error(&e), "cannot list the servicers; handing to the queue");
            Vec::new()
        }
    };
    let mut tried = Vec::new();
    while let Some(servicer) = conversations.next_servicer(&transfer.open_kfid, &roster, &tried) {
        match trans(
            client,
            metrics,
            transfer,
            ServiceState::Human,
            Some(servicer.clone()),
            trigger,
        )
        .await
        {
            Ok(code) => {
                conversations.assigned(&transfer.open_kfid, &servicer);
                return Ok((ServiceState::Human, Some(servicer), code));
            }
            Err(e) if servicer_refused(&e) => {
                conversations.forget_roster(&transfer.open_kfid);
                tried.push(servicer);
            }
            Err(e) => return Err(e),
        }
    }
    let code = trans(
        client,
        metrics,
        transfer,
        ServiceState::Queued,
        None,
        trigger,
    )
    .await?;
    Ok((ServiceState::Queued, None, code))
}

/// What a transfer did.
pub(crate) struct Transferred {
    /// The state the session went to (`to = "auto"` may end in the queue).
    pub(crate) service_state: u32,
    /// The servicer who took it (state 3).
    pub(crate) servicer_userid: Option<UserId>,
    /// The code WeChat returned (unless it was used for the message).
    pub(crate) msg_code: Option<String>,
    /// Whether a message went out with the code.
    pub(crate) message_sent: bool,
}

/// `service_state/trans`, then the view learns the state, then (with a message: the
/// transfer's own, else the configured queue / connect / end message) it goes out with the
/// code the transfer returned (`send_msg_on_event`).
pub(crate) async fn transfer_and_greet(
    client: &Client,
    gate: Option<&Gate>,
    conversations: &Conversations,
    recorder: &Recorder,
    metrics: &Metrics,
    transfer: &Transfer,
    trigger: &'static str,
) -> Result<Transferred, wechat_kf::client::Error> {
    let target = ServiceState::from_code(transfer.service_state);
    let old_state = match gate {
        Some(gate) => gate
            .view(&transfer.open_kfid, &transfer.external_userid)
            .await
            .and_then(|view| view.state()),
        None => None,
    };
    let (target, servicer, code) = if transfer.auto {
        assign(client, conversations, metrics, transfer, trigger).await?
    } else {
        let code = trans(
            client,
            metrics,
            transfer,
            target,
            transfer.servicer_userid.clone(),
            trigger,
        )
        .await?;
        (target, transfer.servicer_userid.clone(), code)
    };
    if let Some(gate) = gate {
        gate.transferred(
            &transfer.open_kfid,
            &transfer.external_userid,
            target,
            servicer.clone(),
            code.clone(),
        )
        .await;
    }
    let transfer = &Transfer {
        service_state: target.code(),
        servicer_userid: servicer,
        auto: false,
        ..transfer.clone()
    };
    recorder
        .transferred(transfer, old_state, target, trigger)
        .await;
    let greeting =
        conversations.transfer_message(&transfer.open_kfid, target, transfer.message.as_deref());
    let (Some((stage, mut message)), Some(code_value)) = (greeting, &code) else {
        return Ok(Transferred {
            service_state: transfer.service_state,
            servicer_userid: transfer.servicer_userid.clone(),
            msg_code: code,
            message_sent: false,
        });
    };
    conversations
        .fill(
            client,
            &transfer.open_kfid,
            &transfer.external_userid,
            &mut message,
        )
        .await;
    let outbound = match outbound_from_json(message.as_object().unwrap_or(&Default::default())) {
        Ok(outbound) => outbound,
        Err(e) => {
            tracing::warn!(error = e, "the transfer's message could not be built");
            return Ok(Transferred {
                service_state: transfer.service_state,
                servicer_userid: transfer.servicer_userid.clone(),
                msg_code: code,
                message_sent: false,
            });
        }
    };
    let request = SendMsgOnEventRequest::new(code_value.as_str(), outbound);
    match client.messages().send_on_event(request).await {
        Ok(_) => {
            metrics.stage_message(stage, "sent");
            if let Some(gate) = gate {
                let at = gate.clock.now_u64();
                gate.update(
                    &transfer.open_kfid,
                    &transfer.external_userid,
                    SessionUpdate::CodeUsed {
                        code: code_value.clone(),
                        at,
                    },
                )
                .await;
            }
            Ok(Transferred {
                service_state: transfer.service_state,
                servicer_userid: transfer.servicer_userid.clone(),
                msg_code: None,
                message_sent: true,
            })
        }
        Err(e) => {
            metrics.api_error("kf/send_msg_on_event", &e);
            metrics.stage_message(stage, "failed");
            tracing::warn!(error = %safe_error(&e), "the transfer's message could not be sent");
            Ok(Transferred {
                service_state: transfer.service_state,
                servicer_userid: transfer.servicer_userid.clone(),
                msg_code: code,
                message_sent: false,
            })
        }
    }
}

/// Sends queued replies (webhook responses, the echo bot, handoffs).
pub(crate) struct ReplySender {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) joiner: JoinerConfig,
    pub(crate) wake: Arc<Notify>,
    pub(crate) concurrency: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    /// Due times and retry deadlines are on the service's own clock.
    pub(crate) clock: Clock,
    /// The stage messages of transfers, and names for placeholders.
    pub(crate) conversations: Arc<Conversations>,
    /// The session changes of transfers.
    pub(crate) recorder: Arc<Recorder>,
}

/// A queued reply read back.
enum Parsed {
    Send(SendMsg),
    /// A `send_msg_on_event` body; a stage message's meta and the body (to fill names in).
    OnEvent(OnEvent, Option<(StageMeta, Value)>),
    Trans(Transfer, &'static str),
    Bad(String),
}

fn parse_record(record: &ReplyRecord) -> Parsed {
    let value: Value = match serde_json::from_str(&record.body) {
        Ok(v) => v,
        Err(_) => return Parsed::Bad("stored reply is not JSON".into()),
    };
    match record.endpoint {
        ReplyEndpoint::SendMsg => match parse_send_msg(&value) {
            Ok(p) => Parsed::Send(p),
            Err(e) => Parsed::Bad(e),
        },
        ReplyEndpoint::SendMsgOnEvent => match parse_on_event(&value) {
            Ok(p) => {
                let stage = StageMeta::of_body(&value).map(|meta| (meta, value));
                Parsed::OnEvent(p, stage)
            }
            Err(e) => Parsed::Bad(e),
        },
        ReplyEndpoint::Trans => match parse_transfer(&value) {
            Ok(t) => {
                let trigger = if value.get("trigger").and_then(Value::as_str) == Some("keyword") {
                    "keyword"
                } else {
                    "bot"
                };
                Parsed::Trans(t, trigger)
            }
            Err(e) => Parsed::Bad(e),
        },
    }
}

fn text_of(send: &SendMsg) -> Option<&str> {
    match send.request.message() {
        OutboundMessage::Text(text) => Some(text.content.as_str()),
        _ => None,
    }
}

impl ReplySender {
    /// Runs until shutdown; a round in progress finishes first.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let worked = match self.round().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::error!(error = %e, "reply queue unavailable");
                    false
                }
            };
            if worked {
                continue;
            }
            let wait = match self.store.next_reply_due().await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - self.clock.local_ms()).clamp(0, 60_000) as u64)
                }
                _ => Duration::from_secs(60),
            };
            if wait.is_zero() {
                // Due now but nothing was sent: the round is already retrying; avoid a hot loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends every due reply once; returns how many were attempted.
    async fn round(&self) -> Result<usize, crate::error::Error> {
        let due = self.store.due_replies(self.clock.local_ms(), 1000).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let attempted = due.len();
        // One sequential queue per lane (customer), lanes in parallel.
        let mut lanes: BTreeMap<String, Vec<ReplyRecord>> = BTreeMap::new();
        for record in due {
            lanes.entry(record.lane.clone()).or_default().push(record);
        }
        let outcomes: Vec<Vec<ReplyOutcome>> = futures::stream::iter(lanes.into_values())
            .map(|records| self.send_lane(records))
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let outcomes: Vec<ReplyOutcome> = outcomes.into_iter().flatten().collect();
        self.store
            .finish_replies(outcomes, self.clock.local_ms())
            .await?;
        Ok(attempted)
    }

    async fn send_lane(&self, records: Vec<ReplyRecord>) -> Vec<ReplyOutcome> {
        let mut out = Vec::with_capacity(records.len());
        let mut items: Vec<(ReplyRecord, Parsed)> = records
            .into_iter()
            .map(|r| {
                let parsed = parse_record(&r);
                (r, parsed)
            })
            .collect::<Vec<_>>();
        items.reverse();
        while let Some((record, parsed)) = items.pop() {
            let outcomes = match parsed {
                Parsed::Bad(error) => vec![self.failed(&record, error, None)],
                Parsed::OnEvent(event, stage) => {
                    vec![self.send_on_event(&record, event, stage).await]
                }
                Parsed::Trans(transfer, trigger) => {
                    vec![self.transfer(&record, &transfer, trigger).await]
                }
                Parsed::Send(send) => {
                    let mut group = vec![(record, send)];
                    if self.joiner.enabled {
                        if let Some(first) = text_of(&group[0].1) {
                            let mut total = first.len();
                            while let Some((next, Parsed::Send(next_send))) = items.last() {
                                let same = next_send.open_kfid == group[0].1.open_kfid
                                    && next_send.touser == group[0].1.touser
                                    && next.attempts == 0;
                                let fits = text_of(next_send)
                                    .is_some_and(|t| total + 1 + t.len() <= MAX_TEXT_BYTES);
                                if !(same && fits) {
                                    break;
                                }
                                total += 1 + text_of(next_send).map_or(0, str::len);
                                if let Some((next, Parsed::Send(next_send))) = items.pop() {
                                    group.push((next, next_send));
                                }
                            }
                        }
                    }
                    self.send_group(group).await
                }
            };
            let stop = outcomes
                .iter()
                .any(|o| matches!(o, ReplyOutcome::Retry { .. }));
            out.extend(outcomes);
            if stop {
                // Later replies to this customer wait for this one (the store delays them).
                break;
            }
        }
        out
    }

    /// Sends one reply, or several texts joined into one message.
    async fn send_group(&self, group: Vec<(ReplyRecord, SendMsg)>) -> Vec<ReplyOutcome> {
        let (first_record, first) = &group[0];
        let open_kfid = first.open_kfid.clone();
        let touser = first.touser.clone();
        let (request, merged_body) = if group.len() == 1 {
            (first.request.clone(), None)
        } else {
            let content: Vec<&str> = group.iter().filter_map(|(_, s)| text_of(s)).collect();
            let content = content.join("\n");
            let body = json!({"touser": touser, "open_kfid": open_kfid, "msgid": first.msgid,
                              "msgtype": "text", "text": {"content": content}});
            let request = SendMsgRequest::new(
                touser.clone(),
                open_kfid.clone(),
                OutboundMessage::text(content),
            )
            .msgid(first.msgid.clone());
            (request, Some(body.to_string()))
        };
        let outcome = self.gate.send(&open_kfid, &touser, request).await;
        let joined_into = first.msgid.clone();
        let result = |record: &ReplyRecord, send: &SendMsg, status: &str| {
            let mut r = result_head(
                ReplyOrigin {
                    delivery_id: record.delivery_id.as_deref(),
                    position: record.position,
                },
                Some(send.msgid.as_str()),
            );
            r.insert("open_kfid".into(), json!(send.open_kfid));
            r.insert("touser".into(), json!(send.touser));
            r.insert("status".into(), json!(status));
            if record.id != first_record.id {
                r.insert("joined_into".into(), json!(joined_into));
            }
            r
        };
        let finished = |record: &ReplyRecord,
                        state: ReplyState,
                        error: Option<String>,
                        r: serde_json::Map<String, Value>| {
            ReplyOutcome::Finished {
                id: record.id,
                state: if record.id == first_record.id {
                    state
                } else {
                    ReplyState::Joined
                },
                error,
                result: Some(Value::Object(r).to_string()),
            }
        };
        let sent = |this: &Self| {
            Metrics::add(&this.metrics.replies_sent, 1);
            Metrics::add(&this.metrics.replies_joined, group.len() as u64 - 1);
            group
                .iter()
                .map(|(record, send)| {
                    finished(record, ReplyState::Sent, None, result(record, send, "sent"))
                })
                .collect::<Vec<_>>()
        };
        match outcome {
            SendOutcome::Sent(_) => sent(self),
            SendOutcome::Refused {
                refusal,
                predicted,
                errmsg,
            } => {
                tracing::info!(
                    reply = first_record.id,
                    replies = group.len(),
                    reason = crate::send_policy::reason(&refusal),
                    predicted,
                    "reply refused by the send policy"
                );
                let details = refusal_json(&refusal, predicted, errmsg.as_deref());
                let error = format!(
                    "{} ({})",
                    crate::send_policy::reason(&refusal),
                    refusal.errcode()
                );
                group
                    .iter()
                    .map(|(record, send)| {
                        let mut r = result(record, send, "refused");
                        for (k, v) in &details {
                            r.insert(k.clone(), v.clone());
                        }
                        finished(record, ReplyState::Refused, Some(error.clone()), r)
                    })
                    .collect()
            }
            SendOutcome::Failed(e) if sent_by_an_earlier_attempt(&e, first_record.attempts) => {
                if self.gate.view(&open_kfid, &touser).await.is_some() {
                    let at = self.gate.clock.now_u64();
                    self.gate
                        .update(&open_kfid, &touser, SessionUpdate::Sent { at })
                        .await;
                }
                sent(self)
            }
            SendOutcome::Failed(e) => {
                let attempts = first_record.attempts + 1;
                if (e.is_retryable() || e.is_token_invalid()) && attempts < MAX_REPLY_ATTEMPTS {
                    Metrics::add(&self.metrics.reply_retries, 1);
                    let delay = after_failure(
                        e.retry_after(),
                        attempts,
                        self.retry_initial,
                        self.retry_max,
                        jitter(),
                    );
                    tracing::warn!(reply = first_record.id, error = %safe_error(&e), "reply failed; will retry");
                    let mut out = vec![ReplyOutcome::Retry {
                        id: first_record.id,
                        lane: first_record.lane.clone(),
                        attempts,
                        next_attempt_at_ms: self.clock.local_ms() + delay.as_millis() as i64,
                        error: safe_error(&e),
                        body: merged_body,
                    }];
                    // The joined texts now live in the first reply's body.
                    Metrics::add(&self.metrics.replies_joined, group.len() as u64 - 1);
                    for (record, send) in group.iter().skip(1) {
                        out.push(finished(
                            record,
                            ReplyState::Joined,
                            None,
                            result(record, send, "joined"),
                        ));
                    }
                    out
                } else {
                    tracing::warn!(reply = first_record.id, error = %safe_error(&e), "reply failed for good");
                    Metrics::add(&self.metrics.replies_failed, group.len() as u64);
                    group
                        .iter()
                        .map(|(record, send)| {
                            let mut r = result(record, send, "failed");
                            if let Some(code) = e.errcode() {
                                r.insert("errcode".into(), json!(code.code()));
                            }
                            r.insert("error".into(), json!(safe_error(&e)));
                            finished(record, ReplyState::Failed, Some(safe_error(&e)), r)
                        })
                        .collect()
                }
            }
        }
    }

    /// Sends a `send_msg_on_event` body. A stage message (the service's own welcome, connect or
    /// end) whose code has expired is not tried; its `{nickname}` and `{account}` are filled
    /// in first.
    async fn send_on_event(
        &self,
        record: &ReplyRecord,
        mut event: OnEvent,
        stage: Option<(StageMeta, Value)>,
    ) -> ReplyOutcome {
        let r = result_head(
            ReplyOrigin {
                delivery_id: record.delivery_id.as_deref(),
                position: record.position,
            },
            Some(event.msgid.as_str()),
        );
        let stage_name = stage.as_ref().map(|(meta, _)| meta.stage.clone());
        if let Some((meta, mut body)) = stage {
            if meta.expired(self.gate.clock.now_u64() as i64) {
                self.metrics.stage_message(&meta.stage, "expired");
                tracing::warn!(
                    open_kfid = meta.open_kfid.as_str(),
                    stage = meta.stage.as_str(),
                    "the code of a stage message expired before it could be sent; not tried"
                );
                return self.failed(record, "code_expired".into(), Some(r));
            }
            if wants_names(&body) {
                self.conversations
                    .fill(
                        &self.client,
                        &meta.open_kfid,
                        &meta.external_userid,
                        &mut body,
                    )
                    .await;
                match parse_on_event(&body) {
                    Ok(filled) => event = filled,
                    Err(e) => return self.failed(record, e, Some(r)),
                }
            }
        }
        let result = self.client.messages().send_on_event(event.request).await;
        let mut r = r;
        match result {
            Err(e) if !sent_by_an_earlier_attempt(&e, record.attempts) => {
                self.metrics.api_error("kf/send_msg_on_event", &e);
                let outcome = self.retry_or_fail(record, e, r);
                if let (Some(stage), ReplyOutcome::Finished { .. }) = (&stage_name, &outcome) {
                    self.metrics.stage_message(stage, "failed");
                }
                outcome
            }
            _ => {
                if let Some(stage) = &stage_name {
                    self.metrics.stage_message(stage, "sent");
                }
                Metrics::add(&self.metrics.replies_sent, 1);
                r.insert("status".into(), json!("sent"));
                ReplyOutcome::Finished {
                    id: record.id,
                    state: ReplyState::Sent,
                    error: None,
                    result: Some(Value::Object(r).to_string()),
                }
            }
        }
    }

    async fn transfer(
        &self,
        record: &ReplyRecord,
        transfer: &Transfer,
        trigger: &'static str,
    ) -> ReplyOutcome {
        let mut r = result_head(
            ReplyOrigin {
                delivery_id: record.delivery_id.as_deref(),
                position: record.position,
            },
            None,
        );
        r.insert("action".into(), json!("transfer"));
        r.insert("open_kfid".into(), json!(transfer.open_kfid));
        r.insert("external_userid".into(), json!(transfer.external_userid));
        r.insert("service_state".into(), json!(transfer.service_state));
        match transfer_and_greet(
            &self.client,
            Some(&self.gate),
            &self.conversations,
            &self.recorder,
            &self.metrics,
            transfer,
            trigger,
        )
        .await
        {
            Ok(done) => {
                r.insert("status".into(), json!("done"));
                r.insert("service_state".into(), json!(done.service_state));
                if let Some(servicer) = &done.servicer_userid {
                    r.insert("servicer_userid".into(), json!(servicer));
                }
                if let Some(code) = done.msg_code {
                    r.insert("msg_code".into(), json!(code));
                }
                if transfer.message.is_some() {
                    r.insert("message_sent".into(), json!(done.message_sent));
                }
                ReplyOutcome::Finished {
                    id: record.id,
                    state: ReplyState::Sent,
                    error: None,
                    result: Some(Value::Object(r).to_string()),
                }
            }
            Err(e) => self.retry_or_fail(record, e, r),
        }
    }

    fn retry_or_fail(
        &self,
        record: &ReplyRecord,
        e: wechat_kf::client::Error,
        mut r: serde_json::Map<String, Value>,
    ) -> ReplyOutcome {
        let attempts = record.attempts + 1;
        if (e.is_retryable() || e.is_token_invalid()) && attempts < MAX_REPLY_ATTEMPTS {
            Metrics::add(&self.metrics.reply_retries, 1);
            let delay = after_failure(
                e.retry_after(),
                attempts,
                self.retry_initial,
                self.retry_max,
                jitter(),
            );
            tracing::warn!(reply = record.id, endpoint = record.endpoint.as_str(), error = %safe_error(&e), "reply failed; will retry");
            ReplyOutcome::Retry {
                id: record.id,
                lane: record.lane.clone(),
                attempts,
                next_attempt_at_ms: self.clock.local_ms() + delay.as_millis() as i64,
                error: safe_error(&e),
                body: None,
            }
        } else {
            tracing::warn!(reply = record.id, endpoint = record.endpoint.as_str(), error = %safe_error(&e), "reply failed for good");
            if let Some(code) = e.errcode() {
                r.insert("errcode".into(), json!(code.code()));
            }
            self.failed(record, safe_error(&e), Some(r))
        }
    }

    fn failed(
        &self,
        record: &ReplyRecord,
        error: String,
        result: Option<serde_json::Map<String, Value>>,
    ) -> ReplyOutcome {
        Metrics::add(&self.metrics.replies_failed, 1);
        let mut r = result.unwrap_or_else(|| {
            result_head(
                ReplyOrigin {
                    delivery_id: record.delivery_id.as_deref(),
                    position: record.position,
                },
                Some(record.msgid.as_str()),
            )
        });
        r.insert("status".into(), json!("failed"));
        r.insert("error".into(), json!(error));
        ReplyOutcome::Finished {
            id: record.id,
            state: ReplyState::Failed,
            error: Some(error),
            result: Some(Value::Object(r).to_string()),
        }
    }
}
