//! The deliverer: every stored message to the bot, in order per customer, until acknowledged.
//!
//! Messages are grouped into *deliveries* of up to `max_batch` messages that may span several
//! customers; a customer (a [`Lane`]) is in at most one delivery at a time, so its messages
//! arrive in order. A delivery is recorded in the store (id and member seqs) before its first
//! attempt, so its id is stable across retries and restarts, and so is each attempt's number
//! before it is made (`X-Wechat-Kf-Attempt` after a crash is the next one, not 1 again). A 2xx
//! acknowledges it: its messages
//! are marked delivered and the replies in the response queued, in one transaction. Anything else
//! is retried with backoff; a failed delivery spanning several customers is split into one
//! delivery per customer (`<id>.1`, `<id>.2`, …), so a message the bot keeps rejecting holds up
//! only its own customer.
//!
//! The wire is at-least-once: a crash between the bot's 2xx and the acknowledgement transaction
//! repeats the delivery (same id, same msgids) after the restart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{JoinerConfig, WebhookConfig};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::replies::{ReplyOrigin, queue_reply};
use crate::responder::Backlog;
use crate::retry::{backoff, jitter};
use crate::store::{
    Ack, Author, DeliveryRecord, Failure, FinishDeliveries, ItemKind, Lane, Payload, Store,
    StoredMessage, Turn,
};

pub mod sink;

use sink::{BodyItem, Outcome, Sink};

/// Most reply results carried by one delivery.
const MAX_RESULTS_PER_DELIVERY: usize = 100;

/// Bytes of message JSON kept in memory for pending messages; beyond it, JSON is read back from
/// the store when its delivery is sent. Pending messages otherwise cost ~50 bytes each.
const PAYLOAD_BUDGET: usize = 8 * 1024 * 1024;

/// Rows read per query when recovering pending messages at start.
const RECOVERY_PAGE: usize = 10_000;

/// A pending message inside the deliverer.
struct Entry {
    seq: i64,
    stored_at_ms: i64,
    invalid: bool,
    /// The JSON (a copy: holding the decoded message would keep its whole page alive).
    payload: Option<Arc<str>>,
    /// The media record, when media was downloaded for it.
    media: Option<Arc<str>>,
    /// The payload counts against [`PAYLOAD_BUDGET`].
    counted: bool,
    /// Who wrote it and whether the bot may answer.
    turn: Turn,
    /// A message, history or a session change.
    item: ItemKind,
}

#[derive(Default)]
struct LaneState {
    queue: VecDeque<Entry>,
    /// In a delivery (sending or waiting for a retry).
    busy: bool,
    /// In the `ready` queue.
    queued: bool,
}

struct Delivery {
    id: Arc<str>,
    entries: Vec<(Lane, Entry)>,
    /// Attempts made (recorded in the store before each is made).
    attempts: u32,
    next_attempt_at_ms: i64,
    /// The body, built on the first attempt.
    body: Option<Bytes>,
    /// Reply results (row ids) the body carries (`reply_results`).
    results: Vec<i64>,
    /// An attempt is being made.
    in_flight: bool,
}

/// A finished attempt.
struct Done {
    id: Arc<str>,
    outcome: Outcome,
}

/// Pages handed over but not yet taken by the deliverer. Small on purpose: a puller that runs
/// ahead waits (its pages are committed already), so pulled pages never pile up in memory.
const QUEUE_PAGES: usize = 4;

/// Sends newly stored messages to the deliverer.
#[derive(Clone)]
pub(crate) struct DeliveryQueue {
    tx: mpsc::Sender<Vec<StoredMessage>>,
}

impl DeliveryQueue {
    /// Hands over the messages a page commit stored; waits while the deliverer is behind.
    pub(crate) async fn push(&self, stored: Vec<StoredMessage>) {
        if !stored.is_empty() {
            // Fails only when the deliverer has stopped; the rows are recovered at the next start.
            let _ = self.tx.send(stored).await;
        }
    }
}

/// What an operator asks of a delivery waiting for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Attempt it now instead of at its next retry.
    RetryNow,
    /// Stop retrying: its messages are marked delivered without the bot's acknowledgement, and
    /// their customers' later messages flow again.
    GiveUp,
}

/// How an [`Action`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActionResult {
    /// Done (a retry is being made, or the delivery was given up).
    Done,
    /// No such delivery is waiting (unknown, or already acknowledged).
    NotFound,
    /// An attempt is in flight: ask again once it finished.
    InFlight,
    /// The deliverer has stopped.
    Stopped,
}

type Command = (String, Action, tokio::sync::oneshot::Sender<ActionResult>);

/// A finished message to deliver again (an operator's replay).
type Replay = (StoredMessage, tokio::sync::oneshot::Sender<ActionResult>);

/// Operator actions on deliveries, handled by the deliverer task between attempts. Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct DeliveryControl {
    tx: mpsc::UnboundedSender<Command>,
    replays: mpsc::UnboundedSender<Replay>,
}

impl DeliveryControl {
    /// Asks the deliverer to act on delivery `id`.
    pub(crate) async fn act(&self, id: &str, action: Action) -> ActionResult {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.tx.send((id.to_owned(), action, reply)).is_err() {
            return ActionResult::Stopped;
        }
        answer.await.unwrap_or(ActionResult::Stopped)
    }

    /// Asks the deliverer to deliver a finished message again, after whatever its customer
    /// has waiting (`InFlight`: a replay of it is waiting already). Not kept across a restart.
    pub(crate) async fn replay(&self, message: StoredMessage) -> ActionResult {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.replays.send((message, reply)).is_err() {
            return ActionResult::Stopped;
        }
        answer.await.unwrap_or(ActionResult::Stopped)
    }
}

/// The deliverer task's state.
pub(crate) struct Deliverer {
    store: Arc<dyn Store>,
    sink: Arc<Sink>,
    config: WebhookConfig,
    joiner: JoinerConfig,
    metrics: Arc<Metrics>,
    replies: Arc<Notify>,
    /// Retry timers and delivery lag are on the service's own clock.
    clock: Clock,
    /// Where a store that cannot write makes the service not ready (one log line per change).
    readiness: Readiness,
    lanes: HashMap<Lane, LaneState>,
    ready: VecDeque<Lane>,
    deliveries: HashMap<Arc<str>, Delivery>,
    timers: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    due: VecDeque<Arc<str>>,
    sending: usize,
    payload_bytes: usize,
    /// The highest seq loaded at recovery; pullers only hand over later ones.
    recovered_max: i64,
    /// Reply results carried by a delivery in flight (not offered to another one).
    claimed: HashSet<i64>,
    /// Operator actions ([`Deliverer::control`]).
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// Customers with messages waiting behind a delivery in flight (for the responder).
    backlog: Backlog,
    /// Operator replays ([`Deliverer::control`]).
    replays: Option<mpsc::UnboundedReceiver<Replay>>,
}

impl Deliverer {
    /// The handle operator actions go through (retry now, give up).
    pub(crate) fn control(&mut self) -> DeliveryControl {
        let (tx, rx) = mpsc::unbounded_channel();
        self.commands = Some(rx);
        let (replays, rx) = mpsc::unbounded_channel();
        self.replays = Some(rx);
        DeliveryControl { tx, replays }
    }

    /// Shares which customers have messages waiting behind a delivery in flight (a
    /// responder drops an answer that newer messages overtook).
    pub(crate) fn with_backlog(mut self, backlog: Backlog) -> Self {
        self.backlog = backlog;
        self
    }

    /// Reports store write failures to `readiness` (not ready, one log line per change).
    pub(crate) fn watch_store(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Loads what the last run left (pending messages, open deliveries) and returns the
    /// deliverer and the queue pullers feed. Call before any puller starts.
    pub(crate) async fn recover(
        store: Arc<dyn Store>,
        config: WebhookConfig,
        sink: Sink,
        joiner: JoinerConfig,
        metrics: Arc<Metrics>,
        replies: Arc<Notify>,
        clock: Clock,
    ) -> Result<(Deliverer, DeliveryQueue, mpsc::Receiver<Vec<StoredMessage>>), Error> {
        let sink = Arc::new(sink);
        let (tx, rx) = mpsc::channel(QUEUE_PAGES);
        let mut deliverer = Deliverer {
            store,
            sink,
            config,
            joiner,
            metrics,
            replies,
            clock,
            readiness: Readiness::default(),
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            deliveries: HashMap::new(),
            timers: BinaryHeap::new(),
            due: VecDeque::new(),
            sending: 0,
            payload_bytes: 0,
            recovered_max: 0,
            claimed: HashSet::new(),
            commands: None,
            backlog: Backlog::default(),
            replays: None,
        };
        let mut where_is: HashMap<i64, Lane> = HashMap::new();
        let mut pending = 0i64;
        loop {
            let rows = deliverer
                .store
                .pending_messages(deliverer.recovered_max, RECOVERY_PAGE)
                .await?;
            let Some(last) = rows.last() else { break };
            deliverer.recovered_max = last.seq;
            for row in rows {
                where_is.insert(row.seq, row.lane.clone());
                pending += 1;
                deliverer
                    .lanes
                    .entry(row.lane)
                    .or_default()
                    .queue
                    .push_back(Entry {
                        seq: row.seq,
                        stored_at_ms: row.stored_at_ms,
                        invalid: row.invalid,
                        payload: None,
                        media: None,
                        counted: false,
                        turn: row.turn,
                        item: row.item,
                    });
            }
        }
        deliverer
            .metrics
            .messages_pending
            .store(pending, Ordering::Relaxed);
        let mut stale = Vec::new();
        for record in deliverer.store.open_deliveries().await? {
            let mut entries = Vec::new();
            for seq in &record.seqs {
                let Some(lane) = where_is.remove(seq) else {
                    continue;
                };
                let Some(state) = deliverer.lanes.get_mut(&lane) else {
                    continue;
                };
                if let Some(pos) = state.queue.iter().position(|e| e.seq == *seq) {
                    if let Some(entry) = state.queue.remove(pos) {
                        state.busy = true;
                        entries.push((lane, entry));
                    }
                }
            }
            if entries.is_empty() {
                // Everything in it was delivered (or purged): drop the record.
                stale.push(record.id);
                continue;
            }
            let id: Arc<str> = Arc::from(record.id.as_str());
            deliverer
                .timers
                .push(Reverse((record.next_attempt_at_ms, id.clone())));
            deliverer.deliveries.insert(
                id.clone(),
                Delivery {
                    id,
                    entries,
                    attempts: record.attempts,
                    next_attempt_at_ms: record.next_attempt_at_ms,
                    body: None,
                    results: Vec::new(),
                    in_flight: false,
                },
            );
        }
        if !stale.is_empty() {
            let acks = stale
                .into_iter()
                .map(|id| Ack {
                    delivery_id: id,
                    seqs: Vec::new(),
                    replies: Vec::new(),
                    reported: Vec::new(),
                    memory: Vec::new(),
                })
                .collect();
            deliverer
                .store
                .finish_deliveries(FinishDeliveries {
                    now_ms: deliverer.clock.local_ms(),
                    acks,
                    failures: Vec::new(),
                })
                .await?;
        }
        let lanes: Vec<Lane> = deliverer
            .lanes
            .iter()
            .filter(|(_, s)| !s.busy && !s.queue.is_empty())
            .map(|(l, _)| l.clone())
            .collect();
        for lane in lanes {
            deliverer.mark_ready(lane);
        }
        if pending > 0 {
            tracing::info!(
                pending,
                deliveries = deliverer.deliveries.len(),
                "recovered undelivered messages"
            );
        }
        Ok((deliverer, DeliveryQueue { tx }, rx))
    }

    fn mark_ready(&mut self, lane: Lane) {
        if let Some(state) = self.lanes.get_mut(&lane) {
            if !state.busy && !state.queued && !state.queue.is_empty() {
                state.queued = true;
                self.ready.push_back(lane);
            }
        }
    }

    fn add(&mut self, rows: Vec<StoredMessage>) {
        for row in rows {
            // Recovered at start already; history released from a hold never was.
            if row.seq <= self.recovered_max && row.item != ItemKind::History {
                continue;
            }
            let mut payload = None;
            let mut counted = false;
            if let Some(p) = &row.payload {
                let len = p.raw().len();
                if self.payload_bytes + len <= PAYLOAD_BUDGET {
                    payload = Some(match p {
                        Payload::Raw(raw) => raw.clone(),
                        Payload::Message(m) => Arc::from(m.raw()),
                    });
                    self.payload_bytes += len;
                    counted = true;
                }
            }
            self.metrics
                .messages_pending
                .fetch_add(1, Ordering::Relaxed);
            let lane = row.lane;
            self.lanes
                .entry(lane.clone())
                .or_default()
                .queue
                .push_back(Entry {
                    seq: row.seq,
                    stored_at_ms: row.stored_at_ms,
                    invalid: row.invalid,
                    payload,
                    media: row.media.clone(),
                    counted,
                    turn: row.turn,
                    item: row.item,
                });
            if row.turn.from == Author::Customer
                && row.turn.bot_may_reply()
                && self.lanes.get(&lane).is_some_and(|l| l.busy)
            {
                self.backlog.waiting(&lane);
            }
            self.mark_ready(lane);
        }
    }

    /// Takes up to `max_batch` messages from ready lanes into a new delivery.
    fn form_delivery(&mut self) -> Option<Arc<str>> {
        let mut entries = Vec::new();
        while entries.len() < self.config.max_batch {
            let Some(lane) = self.ready.pop_front() else {
                break;
            };
            let Some(state) = self.lanes.get_mut(&lane) else {
                continue;
            };
            state.queued = false;
            if state.busy || state.queue.is_empty() {
                continue;
            }
            let take = (self.config.max_batch - entries.len()).min(state.queue.len());
            for entry in state.queue.drain(..take) {
                entries.push((lane.clone(), entry));
            }
            state.busy = true;
            self.backlog.taken(&lane);
            if self.sink.one_customer_per_delivery() {
                break;
            }
        }
        if entries.is_empty() {
            return None;
        }
        entries.sort_by_key(|(_, e)| e.seq);
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        self.deliveries.insert(
            id.clone(),
            Delivery {
                id: id.clone(),
                entries,
                attempts: 0,
                next_attempt_at_ms: 0,
                body: None,
                results: Vec::new(),
                in_flight: false,
            },
        );
        Some(id)
    }

    /// Starts as many attempts as the concurrency allows.
    async fn dispatch(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let mut batch: Vec<Arc<str>> = Vec::new();
        while self.sending + batch.len() < self.config.concurrency {
            if let Some(id) = self.due.pop_front() {
                // A timer left behind by "retry now" (the delivery was attempted since and
                // waits for a later retry, or is in flight) is dropped.
                let now = self.clock.local_ms();
                if self
                    .deliveries
                    .get(&id)
                    .is_some_and(|d| !d.in_flight && d.next_attempt_at_ms <= now)
                    && !batch.contains(&id)
                {
                    batch.push(id);
                }
                continue;
            }
            match self.form_delivery() {
                Some(id) => batch.push(id),
                None => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        // Record each attempt before it is made: a new delivery's id, so that an id seen by
        // the bot survives a crash, and every delivery's attempt number, so that a redelivery
        // after a crash says which attempt it really is.
        let records: Vec<DeliveryRecord> = batch
            .iter()
            .filter_map(|id| self.deliveries.get(id))
            .map(|d| DeliveryRecord {
                id: d.id.to_string(),
                seqs: d.entries.iter().map(|(_, e)| e.seq).collect(),
                attempts: d.attempts + 1,
                next_attempt_at_ms: d.next_attempt_at_ms,
                last_error: None,
            })
            .collect();
        let now_ms = self.clock.local_ms();
        if let Err(e) = self.store.begin_deliveries(records, now_ms).await {
            self.readiness.store_write_failed("deliverer", &e);
            tracing::debug!(error = %e, "cannot record deliveries; retrying in 1 s");
            self.postpone(batch, 1000);
            return;
        }
        self.readiness.store_write_succeeded("deliverer");
        for id in &batch {
            if let Some(d) = self.deliveries.get_mut(id) {
                d.attempts += 1;
            }
        }
        if let Err(e) = self.build_bodies(&batch).await {
            tracing::error!(error = %e, "cannot read messages back; retrying in 1 s");
            self.postpone(batch, 1000);
            return;
        }
        for id in batch {
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            let Some(body) = d.body.clone() else { continue };
            d.in_flight = true;
            let attempt = d.attempts;
            let sink = self.sink.clone();
            let done = done.clone();
            self.sending += 1;
            tokio::spawn(async move {
                let outcome = sink.deliver(&id, attempt, body).await;
                let _ = done.send(Done { id, outcome });
            });
        }
    }

    fn postpone(&mut self, ids: Vec<Arc<str>>, by_ms: i64) {
        let at = self.clock.local_ms() + by_ms;
        for id in ids {
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Builds the body of each delivery that has none, reading missing JSON (and media
    /// records) from the store; webhook bodies also carry unreported reply results.
    async fn build_bodies(&mut self, ids: &[Arc<str>]) -> Result<(), Error> {
        let missing: Vec<i64> = ids
            .iter()
            .filter_map(|id| self.deliveries.get(id))
            .filter(|d| d.body.is_none())
            .flat_map(|d| d.entries.iter())
            .filter(|(_, e)| e.payload.is_none())
            .map(|(_, e)| e.seq)
            .collect();
        let mut loaded: HashMap<i64, (Arc<str>, Option<Arc<str>>)> = HashMap::new();
        if !missing.is_empty() {
            for row in self.store.load_payloads(missing).await? {
                loaded.insert(
                    row.seq,
                    (Arc::from(row.raw), row.media.map(|m| Arc::from(m.as_str()))),
                );
            }
        }
        let wants_results = self.sink.wants_json_body()
            && ids
                .iter()
                .filter_map(|id| self.deliveries.get(id))
                .any(|d| d.body.is_none());
        let mut results: VecDeque<(i64, String)> = VecDeque::new();
        if wants_results {
            match self.store.reply_results(MAX_RESULTS_PER_DELIVERY * 2).await {
                Ok(rows) => results.extend(
                    rows.into_iter()
                        .filter(|(id, _)| !self.claimed.contains(id)),
                ),
                Err(e) => tracing::warn!(error = %e, "cannot read reply results; sending without"),
            }
        }
        for id in ids {
            let Some(d) = self.deliveries.get_mut(id) else {
                continue;
            };
            if d.body.is_some() {
                continue;
            }
            for (_, entry) in d.entries.iter_mut() {
                if entry.payload.is_none() {
                    if let Some((raw, media)) = loaded.get(&entry.seq) {
                        entry.payload = Some(raw.clone());
                        if entry.media.is_none() {
                            entry.media = media.clone();
                        }
                    }
                }
            }
            // A message deleted from under us (manual cleanup) cannot be sent; skip it.
            let items = d.entries.iter().filter_map(|(_, e)| {
                e.payload.as_ref().map(|p| BodyItem {
                    raw: p,
                    invalid: e.invalid,
                    media: e.media.as_deref(),
                    turn: e.turn,
                    item: e.item,
                })
            });
            d.body = Some(if self.sink.wants_json_body() {
                let take = results.len().min(MAX_RESULTS_PER_DELIVERY);
                let carried: Vec<(i64, String)> = results.drain(..take).collect();
                let texts: Vec<String> = carried.iter().map(|(_, r)| r.clone()).collect();
                let body = sink::webhook_body(items, &texts);
                for (result_id, _) in &carried {
                    self.claimed.insert(*result_id);
                }
                d.results = carried.into_iter().map(|(id, _)| id).collect();
                body
            } else {
                sink::json_lines(items)
            });
            // The body holds the JSON now; drop the per-message copies.
            for (_, entry) in d.entries.iter_mut() {
                entry.media = None;
                if let Some(p) = entry.payload.take() {
                    if entry.counted {
                        self.payload_bytes = self.payload_bytes.saturating_sub(p.len());
                        entry.counted = false;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records finished attempts: acknowledgements and retries in one transaction.
    async fn finish(&mut self, done: Vec<Done>, shutdown: &CancellationToken) {
        let now = self.clock.local_ms();
        let mut finish = FinishDeliveries {
            now_ms: now,
            acks: Vec::new(),
            failures: Vec::new(),
        };
        // (old id, replacement deliveries) for failures; ids acked.
        let mut acked: Vec<Arc<str>> = Vec::new();
        let mut replaced: Vec<(Arc<str>, Vec<Delivery>)> = Vec::new();
        for Done { id, outcome } in done {
            self.sending = self.sending.saturating_sub(1);
            let Some(d) = self.deliveries.get(&id) else {
                continue;
            };
            let target = self.sink.target();
            match outcome {
                Outcome::Acked {
                    status,
                    replies,
                    memory,
                } => {
                    Metrics::add(&self.metrics.deliveries_ok, 1);
                    tracing::info!(
                        delivery = &*id,
                        to = target,
                        messages = d.entries.len(),
                        attempt = d.attempts,
                        status = %status.map_or_else(|| "written".to_owned(), |s| s.to_string()),
                        replies = replies.len(),
                        "delivered"
                    );
                    let queued: Vec<_> = replies
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| {
                            let origin = ReplyOrigin {
                                delivery_id: Some(&id),
                                position: u32::try_from(i).ok(),
                            };
                            queue_reply(r, origin, &self.joiner)
                        })
                        .collect();
                    for bad in queued.iter().filter(|r| r.error.is_some()) {
                        tracing::warn!(
                            delivery = &*id,
                            error = bad.error.as_deref().unwrap_or(""),
                            "unusable reply in the webhook response"
                        );
                    }
                    finish.acks.push(Ack {
                        delivery_id: id.to_string(),
                        seqs: d.entries.iter().map(|(_, e)| e.seq).collect(),
                        replies: queued,
                        reported: d.results.clone(),
                        memory,
                    });
                    acked.push(id);
                }
                Outcome::Failed(error) => {
                    Metrics::add(&self.metrics.deliveries_failed, 1);
                    Metrics::add(&self.metrics.delivery_retries, 1);
                    let attempts = d.attempts;
                    let at = now
                        + backoff(
                            attempts,
                            self.config.retry_initial,
                            self.config.retry_max,
                            jitter(),
                        )
                        .as_millis() as i64;
                    tracing::warn!(
                        delivery = &*id,
                        to = target,
                        messages = d.entries.len(),
                        attempt = attempts,
                        cause = %error,
                        retry_in_ms = at - now,
                        "delivery to {target} failed: {error}"
                    );
                    let Some(mut d) = self.deliveries.remove(&id) else {
                        continue;
                    };
                    // Its reply results go to the next delivery instead (rebuilt without them).
                    if !d.results.is_empty() {
                        for result_id in d.results.drain(..) {
                            self.claimed.remove(&result_id);
                        }
                        d.body = None;
                    }
                    let mut lanes: Vec<Lane> = d.entries.iter().map(|(l, _)| l.clone()).collect();
                    lanes.sort();
                    lanes.dedup();
                    let parts: Vec<Delivery> = if lanes.len() <= 1 {
                        vec![Delivery {
                            attempts,
                            next_attempt_at_ms: at,
                            in_flight: false,
                            ..d
                        }]
                    } else {
                        // One delivery per customer from now on.
                        let mut by_lane: Vec<(Lane, Vec<(Lane, Entry)>)> =
                            lanes.into_iter().map(|l| (l, Vec::new())).collect();
                        for (lane, entry) in d.entries {
                            if let Some((_, list)) = by_lane.iter_mut().find(|(l, _)| *l == lane) {
                                list.push((lane, entry));
                            }
                        }
                        by_lane
                            .into_iter()
                            .enumerate()
                            .map(|(i, (_, entries))| Delivery {
                                id: Arc::from(format!("{}.{}", d.id, i + 1)),
                                entries,
                                attempts,
                                next_attempt_at_ms: at,
                                body: None,
                                results: Vec::new(),
                                in_flight: false,
                            })
                            .collect()
                    };
                    finish.failures.push(Failure {
                        old_id: id.to_string(),
                        retries: parts
                            .iter()
                            .map(|p| DeliveryRecord {
                                id: p.id.to_string(),
                                seqs: p.entries.iter().map(|(_, e)| e.seq).collect(),
                                attempts,
                                next_attempt_at_ms: at,
                                last_error: Some(error.clone()),
                            })
                            .collect(),
                    });
                    replaced.push((id, parts));
                }
            }
        }
        // Until the transaction commits nothing changes in memory; a store outage is waited
        // out (after a shutdown, the deliveries are simply repeated on the next start).
        let mut wait = Duration::from_millis(200);
        loop {
            match self.store.finish_deliveries(finish.clone()).await {
                Ok(()) => {
                    self.readiness.store_write_succeeded("deliverer");
                    break;
                }
                Err(e) => {
                    self.readiness.store_write_failed("deliverer", &e);
                    tracing::debug!(error = %e, "cannot record delivery results; retrying");
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        let mut any_replies = false;
        for ack in &finish.acks {
            any_replies |= ack.replies.iter().any(|r| r.error.is_none());
            for result_id in &ack.reported {
                self.claimed.remove(result_id);
            }
        }
        for id in acked {
            self.forget(&id, now, true);
        }
        for (_, parts) in replaced {
            for part in parts {
                self.timers
                    .push(Reverse((part.next_attempt_at_ms, part.id.clone())));
                self.deliveries.insert(part.id.clone(), part);
            }
        }
        if any_replies {
            self.replies.notify_one();
        }
    }

    /// Drops an acknowledged (or given up) delivery and frees its lanes.
    fn forget(&mut self, id: &Arc<str>, now: i64, acknowledged: bool) {
        let Some(d) = self.deliveries.remove(id) else {
            return;
        };
        let n = d.entries.len() as u64;
        if acknowledged {
            Metrics::add(&self.metrics.messages_delivered, n);
        }
        self.metrics
            .messages_pending
            .fetch_sub(n as i64, Ordering::Relaxed);
        for result_id in &d.results {
            self.claimed.remove(result_id);
        }
        let mut lanes = Vec::new();
        for (lane, entry) in d.entries {
            if acknowledged {
                let lag = (now - entry.stored_at_ms).max(0) as u64;
                self.metrics.observe_lag(Duration::from_millis(lag));
            }
            if let (Some(p), true) = (&entry.payload, entry.counted) {
                self.payload_bytes = self.payload_bytes.saturating_sub(p.len());
            }
            lanes.push(lane);
        }
        lanes.dedup();
        for lane in lanes {
            self.release(lane);
        }
    }

    /// An operator's action on a delivery waiting for a retry.
    async fn act(&mut self, id: &str, action: Action) -> ActionResult {
        let Some((key, d)) = self.deliveries.get_key_value(id) else {
            return ActionResult::NotFound;
        };
        if d.in_flight {
            return ActionResult::InFlight;
        }
        let key = key.clone();
        let now = self.clock.local_ms();
        match action {
            Action::RetryNow => {
                if let Some(d) = self.deliveries.get_mut(&key) {
                    d.next_attempt_at_ms = now;
                }
                self.timers.push(Reverse((now, key.clone())));
                tracing::info!(delivery = &*key, "delivery retried now (operator)");
                ActionResult::Done
            }
            Action::GiveUp => {
                let ack = Ack {
                    delivery_id: key.to_string(),
                    seqs: d.entries.iter().map(|(_, e)| e.seq).collect(),
                    replies: Vec::new(),
                    reported: Vec::new(),
                    memory: Vec::new(),
                };
                let finish = FinishDeliveries {
                    now_ms: now,
                    acks: vec![ack],
                    failures: Vec::new(),
                };
                if let Err(e) = self.store.finish_deliveries(finish).await {
                    tracing::warn!(error = %e, delivery = &*key, "cannot give the delivery up");
                    return ActionResult::Stopped;
                }
                tracing::warn!(
                    delivery = &*key,
                    messages = d.entries.len(),
                    "delivery given up (operator): its messages are marked delivered unacknowledged"
                );
                self.forget(&key, now, false);
                ActionResult::Done
            }
        }
    }

    /// An operator's replay: the message joins the end of its customer's queue, so it is
    /// delivered in order with what the customer has waiting.
    fn replay(&mut self, row: StoredMessage) -> ActionResult {
        let waiting = self
            .lanes
            .get(&row.lane)
            .is_some_and(|state| state.queue.iter().any(|e| e.seq == row.seq))
            || self
                .deliveries
                .values()
                .any(|d| d.entries.iter().any(|(_, e)| e.seq == row.seq));
        if waiting {
            return ActionResult::InFlight;
        }
        tracing::info!(seq = row.seq, "message replayed (operator)");
        self.metrics
            .messages_pending
            .fetch_add(1, Ordering::Relaxed);
        let lane = row.lane;
        self.lanes
            .entry(lane.clone())
            .or_default()
            .queue
            .push_back(Entry {
                seq: row.seq,
                stored_at_ms: self.clock.local_ms(),
                invalid: row.invalid,
                payload: None,
                media: None,
                counted: false,
                turn: row.turn,
                item: row.item,
            });
        self.mark_ready(lane);
        ActionResult::Done
    }

    /// A lane's delivery was acknowledged: it may deliver again (or be forgotten when idle).
    fn release(&mut self, lane: Lane) {
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        if !state.busy {
            return;
        }
        state.busy = false;
        if state.queue.is_empty() {
            if !state.queued {
                self.lanes.remove(&lane);
            }
        } else {
            self.mark_ready(lane);
        }
    }

    fn fire_timers(&mut self) {
        let now = self.clock.local_ms();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, id))) = self.timers.pop() {
                self.due.push_back(id);
            }
        }
    }

    /// Runs until shutdown; in-flight attempts are given the webhook timeout to finish.
    pub(crate) async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Vec<StoredMessage>>,
        shutdown: CancellationToken,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut incoming_open = true;
        let (_unused, idle) = mpsc::unbounded_channel();
        let mut commands = self.commands.take().unwrap_or(idle);
        let (_unused, no_replays) = mpsc::unbounded_channel();
        let mut replays = self.replays.take().unwrap_or(no_replays);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            self.fire_timers();
            self.dispatch(&done_tx).await;
            let sleep_ms = self
                .timers
                .peek()
                .map(|Reverse((at, _))| (*at - self.clock.local_ms()).max(0))
                .unwrap_or(60_000)
                .min(60_000);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(first) = done_rx.recv() => {
                    let mut done = vec![first];
                    while let Ok(more) = done_rx.try_recv() {
                        done.push(more);
                    }
                    self.finish(done, &shutdown).await;
                }
                rows = incoming.recv(), if incoming_open => match rows {
                    Some(rows) => {
                        self.add(rows);
                        while let Ok(more) = incoming.try_recv() {
                            self.add(more);
                        }
                    }
                    None => incoming_open = false,
                },
                Some((id, action, reply)) = commands.recv() => {
                    let _ = reply.send(self.act(&id, action).await);
                }
                Some((row, reply)) = replays.recv() => {
                    let _ = reply.send(self.replay(row));
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            }
        }
        // Graceful stop: no new attempts; record the ones in flight if they finish in time.
        let deadline = tokio::time::Instant::now() + self.config.timeout + Duration::from_secs(1);
        while self.sending > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(first)) => {
                    let mut done = vec![first];
                    while let Ok(more) = done_rx.try_recv() {
                        done.push(more);
                    }
                    self.finish(done, &shutdown).await;
                }
                _ => break,
            }
        }
    }
}
