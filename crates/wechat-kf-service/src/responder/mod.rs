//! Responders: the built-in AI agents (`openai`, `dify`) that answer customers in the bot's
//! place, as a delivery target of the deliverer.
//!
//! A responder's *job* is a delivery: the deliverer hands it one customer's new messages (a
//! delivery never spans customers for a responder), records the delivery before the attempt
//! and acknowledges it with the answer's replies and the conversation's memory in one
//! transaction. So a crash before that commit repeats the question (one answer, asked again),
//! a crash after it sends the queued answer (exactly once: the sender's own guarantee), and
//! every send of a turn carries a msgid derived from the customer's last msgid, so that a second
//! attempt at the same turn anywhere is refused by WeChat as a duplicate.
//!
//! Messages that arrive while the model works wait in the customer's lane; when the model
//! answers and newer customer messages are waiting, the answer is dropped and the turn's
//! words join the next turn (through memory), which is answered once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wechat_kf::OpenKfId;
use wechat_kf::client::messages::SendMsgRequest;
use wechat_kf::client::outbound::OutboundMessage;

use crate::clock::Clock;
use crate::config::{AgentSettings, HandoffConfig, ResponderConfig, ResponderKind};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::replies::Transfer;
use crate::send_policy::{Gate, SendOutcome, reason};
use crate::store::{Lane, MEMORY_KEPT, MemoryEntry, MemoryRole, MemoryWrite, Store};

mod agent;
mod dify;
mod model;
mod openai;
pub(crate) mod prompt;

use agent::Agent;
use model::{Action, Ask};
use prompt::{
    CustomerTurn, Item, answer_replies, assistant_entry, conversation_id, read_lines, recall,
    remember, text_reply, turn_msgid,
};

/// The customers with newer messages waiting while a delivery of theirs is with the responder
/// (kept by the deliverer, read by the responder).
#[derive(Debug, Default, Clone)]
pub(crate) struct Backlog(Arc<Mutex<HashSet<Lane>>>);

impl Backlog {
    /// A customer's message arrived while their lane was busy.
    pub(crate) fn waiting(&self, lane: &Lane) {
        self.lock().insert(lane.clone());
    }

    /// The lane's waiting messages were taken into a delivery.
    pub(crate) fn taken(&self, lane: &Lane) {
        self.lock().remove(lane);
    }

    /// Whether newer customer messages wait behind the lane's delivery.
    pub(crate) fn has_newer(&self, lane: &Lane) -> bool {
        self.lock().contains(lane)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Lane>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a responder's delivery came to: the replies to queue and the memory to write, in the
/// acknowledgement's transaction; or why it must be retried (the store did not answer).
pub(crate) type Handled = Result<(Vec<Value>, Vec<MemoryWrite>), String>;

/// The built-in agents of the service: the default one and the accounts' own.
pub(crate) struct Responder {
    default: Option<Agent>,
    routes: HashMap<OpenKfId, Agent>,
    config: ResponderConfig,
    handoff: HandoffConfig,
    store: Arc<dyn Store>,
    gate: Arc<Gate>,
    clock: Clock,
    metrics: Arc<Metrics>,
    backlog: Backlog,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("default", &self.default.as_ref().map(Agent::model))
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

/// Reads an agent's prompt file (at start: a missing file is a configuration error).
fn build_agent(settings: &AgentSettings, config: &ResponderConfig) -> Result<Agent, Error> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(config.concurrency.max(4))
        .user_agent(concat!("wechat-kf-serve/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Config(format!("cannot build the responder's HTTP client: {e}")))?;
    let base = settings.base_url.trim_end_matches('/');
    Ok(match settings.kind {
        ResponderKind::Dify => Agent::Dify(dify::Dify {
            http,
            url: format!("{base}/chat-messages"),
            api_key: settings.api_key.clone(),
        }),
        _ => {
            let system_prompt = match (&settings.system_prompt, &settings.system_prompt_file) {
                (Some(prompt), _) => Some(prompt.clone()),
                (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!(
                        "responder.system_prompt_file {}: {e}",
                        path.display()
                    ))
                })?),
                (None, None) => None,
            };
            Agent::OpenAi(openai::OpenAi {
                http,
                url: format!("{base}/chat/completions"),
                api_key: settings.api_key.clone(),
                model: settings.model.clone().unwrap_or_default(),
                system_prompt,
                temperature: settings.temperature,
                max_tokens: settings.max_tokens,
                tools: config.tools,
                vision: config.vision,
            })
        }
    })
}

/// The opaque id of a pair given to a model service (Dify's `user`): never a WeChat id.
fn opaque_user(lane: &Lane) -> String {
    let digest =
        Sha256::digest(format!("{}\u{0}{}", lane.open_kfid, lane.external_userid).as_bytes());
    format!("kf-{}", hex::encode(&digest[..12]))
}

impl Responder {
    /// The responder of a configuration whose kind is an agent's; `None` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &ResponderConfig,
        echo: bool,
        handoff: &HandoffConfig,
        store: Arc<dyn Store>,
        gate: Arc<Gate>,
        clock: Clock,
        metrics: Arc<Metrics>,
        backlog: Backlog,
    ) -> Result<Option<Responder>, Error> {
        let kind = config.effective_kind(echo);
        if !kind.is_agent() {
            return Ok(None);
        }
        let default = config
            .default_agent(kind)
            .map(|settings| build_agent(&settings, config))
            .transpose()?;
        let mut routes = HashMap::new();
        for route in &config.routes {
            let settings = config.route_agent(route, kind);
            routes.insert(route.open_kfid.clone(), build_agent(&settings, config)?);
        }
        Ok(Some(Responder {
            default,
            routes,
            config: config.clone(),
            handoff: handoff.clone(),
            store,
            gate,
            clock,
            metrics,
            backlog,
        }))
    }

    /// Where log lines say deliveries went.
    pub(crate) fn target(&self) -> &'static str {
        "responder"
    }

    /// Answers a delivery (JSON Lines): each customer's turn, concurrently.
    pub(crate) async fn handle(&self, delivery: &str, body: &[u8]) -> Handled {
        let turns = read_lines(body);
        let handled = futures::future::join_all(
            turns
                .into_iter()
                .map(|(lane, turn)| self.answer(delivery, lane, turn)),
        )
        .await;
        let mut replies = Vec::new();
        let mut memory = Vec::new();
        for one in handled {
            let (r, m) = one?;
            replies.extend(r);
            memory.extend(m);
        }
        Ok((replies, memory))
    }

    /// How many messages may be sent to the customer now, or why none may.
    async fn allowance(&self, lane: &Lane) -> Result<u32, &'static str> {
        match self
            .store
            .session(lane.open_kfid.clone(), lane.external_userid.clone())
            .await
        {
            Ok(Some(view)) => view
                .can_send(self.clock.now_u64())
                .map(|a| a.remaining)
                .map_err(|refusal| reason(&refusal)),
            // Never seen (or the store did not answer): WeChat decides.
            _ => Ok(wechat_kf::session::SEND_QUOTA),
        }
    }

    /// One customer's turn.
    async fn answer(&self, delivery: &str, lane: Lane, turn: CustomerTurn) -> Handled {
        let now_ms = self.clock.local_ms();
        let mut memory = remember(&lane, &turn, self.config.memory.clear_on_end, now_ms);
        let asked = turn.asked();
        let (Some(key), false) = (turn.key().cloned(), asked.is_empty()) else {
            if turn
                .items
                .iter()
                .any(|i| matches!(i, Item::Customer { .. }))
            {
                // A human has the session, it waits in the queue, or it ended.
                self.metrics.responder_turn("not_the_bots_turn");
            }
            return Ok((Vec::new(), memory));
        };
        let Some(agent) = self.routes.get(&lane.open_kfid).or(self.default.as_ref()) else {
            return Ok((Vec::new(), memory));
        };
        if self.backlog.has_newer(&lane) {
            self.metrics.responder_turn("joined");
            return Ok((Vec::new(), memory));
        }
        // Nothing is asked of a model when no reply could be sent.
        if let Err(why) = self.allowance(&lane).await {
            self.metrics.responder_turn(why);
            return Ok((Vec::new(), memory));
        }
        let stored: Vec<MemoryEntry> = self
            .store
            .memory(
                lane.open_kfid.clone(),
                lane.external_userid.clone(),
                MEMORY_KEPT,
            )
            .await
            .map_err(|e| format!("memory unavailable: {e}"))?;
        // An end in this delivery cleared what came before it.
        let ended =
            self.config.memory.clear_on_end && turn.items.iter().any(|i| matches!(i, Item::Ended));
        let earlier: &[MemoryEntry] = if ended { &[] } else { &stored };
        let known_conversation = conversation_id(earlier).map(str::to_owned);
        let mut ask = Ask {
            history: recall(earlier, self.config.memory.turns, self.config.memory.chars),
            asked,
            conversation_id: known_conversation.as_deref(),
            user: opaque_user(&lane),
        };
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.deadline;
        let metrics = self.metrics.clone();
        let call = agent.ask(&mut ask, deadline, |e| metrics.responder_error(e.kind));
        tokio::pin!(call);
        let interim = self.config.interim_after;
        let result = if interim.is_zero() {
            call.await
        } else {
            tokio::select! {
                result = &mut call => result,
                () = tokio::time::sleep(interim) => {
                    self.send_interim(&lane, &key).await;
                    call.await
                }
            }
        };
        self.metrics.responder_model_time(started.elapsed());
        if self.backlog.has_newer(&lane) {
            self.metrics.responder_turn("superseded");
            return Ok((Vec::new(), memory));
        }
        // Read again: an interim notice spent one of the quota.
        let max = match self.allowance(&lane).await {
            Ok(left) => (left as usize).min(self.config.max_messages),
            Err(why) => {
                self.metrics.responder_turn(why);
                return Ok((Vec::new(), memory));
            }
        };
        let mut replies = Vec::new();
        match result {
            Ok(answer) => {
                if let Some(usage) = answer.usage {
                    self.metrics
                        .responder_tokens(agent.model(), usage.prompt, usage.completion);
                }
                let (texts_replies, texts, truncated) = answer_replies(
                    &lane,
                    &key,
                    &answer.text,
                    max,
                    &self.config.truncation_marker,
                );
                if truncated {
                    self.metrics.responder_truncated();
                }
                replies.extend(texts_replies);
                if !texts.is_empty() {
                    memory.push(assistant_entry(&lane, texts.join("\n\n"), now_ms));
                }
                if let Some(action) = &answer.action {
                    let (body, remembered) = self.action_reply(&lane, action);
                    replies.push(body);
                    memory.push(assistant_entry(&lane, remembered.into(), now_ms));
                }
                if let Some(id) = answer.conversation_id {
                    if known_conversation.as_deref() != Some(id.as_str()) {
                        memory.push(MemoryWrite::Append {
                            open_kfid: lane.open_kfid.clone(),
                            external_userid: lane.external_userid.clone(),
                            entry: MemoryEntry {
                                role: MemoryRole::Conversation,
                                content: id,
                                at_ms: now_ms,
                            },
                        });
                    }
                }
                self.metrics.responder_turn("answered");
            }
            Err(error) => {
                tracing::warn!(
                    delivery,
                    open_kfid = lane.open_kfid.as_str(),
                    model = agent.model(),
                    kind = error.kind,
                    cause = %error.detail,
                    "the model did not answer; the fallback text goes instead"
                );
                self.metrics.responder_turn("failed");
                if !self.config.fallback_text.is_empty() && max > 0 {
                    replies.push(text_reply(
                        &lane.open_kfid,
                        &lane.external_userid,
                        turn_msgid("ai", &key, 0),
                        &self.config.fallback_text,
                    ));
                }
            }
        }
        Ok((replies, memory))
    }

    /// The transfer a tool call asks for, and what memory keeps of it (no ids, no reason
    /// beyond the model's own words).
    fn action_reply(&self, lane: &Lane, action: &Action) -> (Value, &'static str) {
        let (service_state, auto, remembered) = match action {
            Action::Transfer { .. } => {
                let (state, auto) = self.handoff.target();
                (
                    state,
                    auto,
                    "[handed the conversation over to a human agent]",
                )
            }
            Action::End => (4, false, "[ended the conversation]"),
        };
        let transfer = Transfer {
            open_kfid: lane.open_kfid.clone(),
            external_userid: lane.external_userid.clone(),
            service_state,
            servicer_userid: self
                .handoff
                .servicer_userid
                .clone()
                .filter(|_| service_state == 3 && !auto),
            auto,
            message: None,
        };
        let mut body = transfer.to_json();
        if let Action::Transfer { reason } = action {
            body["reason"] = json!(reason);
        }
        (body, remembered)
    }

    /// Sends the interim notice now (through the send policy, so it counts against the quota
    /// and is refused like any send). Its msgid is the turn's, so a repeat of the turn after a
    /// crash cannot send a second one.
    async fn send_interim(&self, lane: &Lane, key: &wechat_kf::MsgId) {
        let request = SendMsgRequest::new(
            lane.external_userid.clone(),
            lane.open_kfid.clone(),
            OutboundMessage::text(self.config.interim_text.clone()),
        )
        .msgid(turn_msgid("in", key, 0));
        let result = match self
            .gate
            .send(&lane.open_kfid, &lane.external_userid, request)
            .await
        {
            SendOutcome::Sent(_) => "sent",
            SendOutcome::Refused { .. } => "refused",
            SendOutcome::Failed(_) => "failed",
        };
        self.metrics.responder_interim(result);
    }
}
