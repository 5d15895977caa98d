//! One puller per account: woken by callbacks (coalesced) or by the periodic safety pull, it
//! calls `kf/sync_msg` until `has_more` is 0 and commits each page — messages and the new cursor
//! in one transaction — before asking for the next.
//!
//! An account pulled without a cursor (the first start, a new database, or a cursor WeChat
//! rejected) goes through a *catch-up*: it pages through everything WeChat still holds and
//! stores it, but messages older than the first-start policy's threshold
//! ([`FirstStart::skip_before`]) are stored as skipped instead of delivered. The threshold is
//! committed with each page's cursor until the backlog's end, so a crash mid-catch-up resumes
//! skipping. New messages also feed the customers' session views (in the page's transaction),
//! trigger keyword handoffs, and are handed to the deliverer at once — a customer's messages from
//! its first media message on after that media is downloaded, without holding up anyone else
//! ([`media_lanes`](crate::media_lanes)).
//!
//! Coalescing: a callback stores its Token in the account's slot and calls
//! [`Notify::notify_one`], which keeps at most one wake-up pending. Any number of callbacks
//! arriving while a pull runs therefore cause exactly one more pull, and that pull uses the
//! newest Token.
//!
//! The paging itself is the library's [`Puller`]: the service hands it the slot's newest Token
//! before each page (the library decides whether it is still fresh, and pulls again without it
//! after a 95007), takes each page whole ([`Puller::fetch_page`]: the store de-duplicates by
//! msgid) and commits it with [`Page::commit_with`](wechat_kf::client::puller::Page::commit_with),
//! whose closure is the store's page transaction, so the library's cursor moves only after the
//! messages and the cursor are committed together. The service keeps its own policies: the
//! first-start catch-up (also after WeChat rejects a cursor), retries with backoff, metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wechat_kf::client::messages::VoiceFormat;
use wechat_kf::client::puller::{Puller, empty_page_pause};
use wechat_kf::client::{Client, ErrCode};
use wechat_kf::message::{InvalidItem, Message, MessageContent, Origin};
use wechat_kf::{MsgId, OpenKfId};

use crate::clock::Clock;
use crate::config::{ConversationConfig, FirstStart, HandoffConfig, PullConfig};
use crate::conversation::stage_actions;
use crate::delivery::DeliveryQueue;
use crate::ids::{IdKind, check};
use crate::media_lanes::MediaLanes;
use crate::metrics::Metrics;
use crate::readiness::{self, Readiness};
use crate::replies::{Transfer, new_msgid};
use crate::retry::{after_failure, backoff, jitter, window_wait};
use crate::store::{
    NewMessage, NewReply, NoReply, PageWrite, Payload, ReplyEndpoint, SURVEY_MENU_PREFIX, Store,
    StoredMessage, TurnRules, is_skipped,
};

/// An account's wake-up slot.
#[derive(Debug, Default)]
pub struct Slot {
    notify: Notify,
    token: Mutex<Option<(String, SystemTime)>>,
    wakes: AtomicU64,
    /// When the account was last woken or a pull stored something (service clock, unix ms):
    /// how long its safety pulls may stretch.
    last_activity: AtomicI64,
}

impl Slot {
    /// How many times the account was woken (callbacks and explicit wakes).
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    /// The newest callback Token, if any (tests).
    pub fn token(&self) -> Option<String> {
        self.token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(t, _)| t.clone())
    }

    /// The newest callback Token and when it arrived; whether it is still usable is the
    /// library puller's decision.
    fn latest_token(&self) -> Option<(String, SystemTime)> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn active(&self, now_ms: i64) {
        self.last_activity.store(now_ms, Ordering::Relaxed);
    }

    fn forget_token(&self, token: &str) {
        let mut guard = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|(t, _)| t == token) {
            *guard = None;
        }
    }
}

/// What a puller task needs.
pub(crate) struct PullContext {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) deliveries: DeliveryQueue,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: PullConfig,
    pub(crate) shutdown: CancellationToken,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    /// WeChat's clock (the first-start threshold) and the service's own (`stored_at`).
    pub(crate) clock: Clock,
    /// When the service started, on WeChat's clock (the `from-now` threshold).
    pub(crate) started_at: i64,
    pub(crate) handoff: HandoffConfig,
    /// Whose turn it is (`[conversation]`).
    pub(crate) conversation: Arc<ConversationConfig>,
    /// With media downloads: holds a customer's messages behind its media.
    pub(crate) media: Option<Arc<MediaLanes>>,
    /// Wakes the reply sender (keyword handoffs were queued).
    pub(crate) replies: Arc<Notify>,
    /// Not ready while the store cannot write, or `sync_msg` cannot reach WeChat.
    pub(crate) readiness: Readiness,
}

/// The calls an account made without a callback Token in the last minute, and when WeChat
/// last rejected one of its Tokens (95007): `pull.tokenless_per_minute` paces them.
#[derive(Debug, Default)]
struct Tokenless {
    /// When each call was made (service clock, unix ms), oldest first; a minute's worth.
    made: std::collections::VecDeque<i64>,
    /// When a Token was last rejected: for a minute after, every call may end without one.
    rejected_at: Option<i64>,
}

const MINUTE_MS: i64 = 60_000;

impl Tokenless {
    /// How long to wait before a call; a call with a Token that WeChat has not rejected lately
    /// never waits.
    fn wait(&mut self, has_token: bool, now_ms: i64, per_minute: u32) -> Duration {
        while self.made.front().is_some_and(|&t| t <= now_ms - MINUTE_MS) {
            self.made.pop_front();
        }
        let rejected_lately = self.rejected_at.is_some_and(|t| t > now_ms - MINUTE_MS);
        if has_token && !rejected_lately {
            return Duration::ZERO;
        }
        let made: Vec<i64> = self.made.iter().copied().collect();
        let wait = window_wait(&made, now_ms, per_minute, MINUTE_MS);
        Duration::from_millis(wait.max(0) as u64)
    }

    /// Records a call that went out without a Token (at first, or after a 95007).
    fn made(&mut self, now_ms: i64, rejected: bool) {
        self.made.push_back(now_ms);
        if rejected {
            self.rejected_at = Some(now_ms);
        }
    }
}

/// When an account's next safety pull is due, from `now_ms`: a pure function of the account,
/// the time and its last activity (a callback, or a pull that stored something), so that it is
/// tested with a clock.
///
/// * **Spread**: each account has a fixed phase in the period (a hash of its id), and pulls at
///   that phase of each period, so N accounts pull evenly over the interval instead of in
///   bursts (random jitter only blurs the bursts of accounts started together). The next slot is
///   at least half a period away, so an account left alone pulls exactly once a period.
/// * **Stretched when idle**: an account idle for 30 intervals (an hour at the default 2
///   minutes) pulls half as often, after 180 (6 hours) a quarter, after 720 (a day) an eighth:
///   safety pulls of a thousand idle accounts stay a small share of the call budget. A callback
///   for it makes it active again at once.
pub(crate) fn safety_pull_delay(
    open_kfid: &str,
    interval: Duration,
    now_ms: i64,
    last_activity_ms: i64,
) -> Duration {
    let interval_ms = interval.as_millis().min(i64::MAX as u128 / 16) as i64;
    if interval_ms <= 0 {
        return Duration::MAX;
    }
    let idle = now_ms.saturating_sub(last_activity_ms).max(0) / interval_ms;
    let stretch = match idle {
        0..30 => 1,
        30..180 => 2,
        180..720 => 4,
        _ => 8,
    };
    let period = interval_ms * stretch;
    // FNV-1a: stable across runs and versions (the phase must not move with a restart).
    let hash = open_kfid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let phase = (hash % period as u64) as i64;
    let earliest = now_ms.saturating_add(period / 2);
    // The first `phase + k·period` at or after `earliest`.
    let k = (earliest - phase).div_euclid(period)
        + i64::from((earliest - phase).rem_euclid(period) != 0);
    let due = phase + k * period;
    Duration::from_millis((due - now_ms).max(0) as u64)
}

/// A catch-up in progress: pulling without a cursor to the backlog's end.
#[derive(Debug)]
struct CatchUp {
    /// Messages sent before this unix second are stored skipped.
    skip_before: Option<i64>,
    /// `first_start`, `cursor_rejected` or `resumed` (after a restart mid-catch-up).
    reason: &'static str,
    policy: FirstStart,
    skipped: u64,
    delivered: u64,
    pages: u64,
    /// When the last progress line was logged (a 3-day backlog can take many pages).
    logged_at: std::time::Instant,
}

/// How often a long catch-up logs its progress.
const CATCH_UP_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Every account's slot; spawns a puller for an account the first time it is named.
pub struct Pullers {
    slots: Mutex<HashMap<OpenKfId, Arc<Slot>>>,
    context: Option<Arc<PullContext>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    max_accounts: usize,
    /// Stamps when a callback Token arrived (the service's own clock, which the API client's
    /// freshness check reads too).
    clock: Clock,
}

impl std::fmt::Debug for Pullers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pullers")
            .field("accounts", &self.slots.lock().map(|s| s.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl Pullers {
    /// Slots without pullers behind them (for handler tests: wakes are only recorded).
    pub fn detached(max_accounts: usize) -> Pullers {
        Pullers {
            slots: Mutex::new(HashMap::new()),
            context: None,
            tasks: Mutex::new(Vec::new()),
            max_accounts,
            clock: Clock::system(),
        }
    }

    pub(crate) fn new(context: PullContext) -> Pullers {
        let max_accounts = context.config.max_accounts;
        let clock = context.clock.clone();
        Pullers {
            slots: Mutex::new(HashMap::new()),
            context: Some(Arc::new(context)),
            tasks: Mutex::new(Vec::new()),
            max_accounts,
            clock,
        }
    }

    /// The slot of an account, if it has one.
    pub fn slot(&self, open_kfid: &str) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(open_kfid)
            .cloned()
    }

    /// The accounts with a slot.
    pub fn accounts(&self) -> Vec<OpenKfId> {
        let mut list: Vec<OpenKfId> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        list.sort();
        list
    }

    /// Starts pulling an account (if not yet) from `cursor` (continuing an unfinished
    /// catch-up) and wakes it. Returns `false` when the account limit is reached.
    pub(crate) fn start(
        &self,
        open_kfid: &OpenKfId,
        cursor: Option<String>,
        catch_up_before: Option<i64>,
    ) -> bool {
        self.wake_with(open_kfid, None, cursor, catch_up_before)
    }

    /// Wakes an account's puller (starting one if needed), remembering the callback `token`.
    /// Returns `false` when the account is new and the account limit is reached.
    pub fn wake(&self, open_kfid: &OpenKfId, token: Option<String>) -> bool {
        self.wake_with(open_kfid, token, None, None)
    }

    /// Wakes every known account (a callback without `OpenKfId`, from before 2023).
    pub fn wake_all(&self, token: Option<String>) {
        for account in self.accounts() {
            self.wake(&account, token.clone());
        }
    }

    fn wake_with(
        &self,
        open_kfid: &OpenKfId,
        token: Option<String>,
        cursor: Option<String>,
        catch_up_before: Option<i64>,
    ) -> bool {
        // Callers check ids at their entry point; this is the last line: an id that is not
        // WeChat's shape never becomes an account that is pulled (and logged) forever.
        if let Err(e) = check(IdKind::OpenKfId, open_kfid.as_str()) {
            tracing::warn!(reason = %e, "not an account id: ignored");
            return false;
        }
        let (slot, created) = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(open_kfid) {
                Some(slot) => (slot.clone(), false),
                None => {
                    if slots.len() >= self.max_accounts {
                        return false;
                    }
                    let slot = Arc::new(Slot::default());
                    slots.insert(open_kfid.clone(), slot.clone());
                    (slot, true)
                }
            }
        };
        if let Some(token) = token {
            let received_at = self.clock.local_time();
            *slot.token.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, received_at));
        }
        slot.wakes.fetch_add(1, Ordering::Relaxed);
        slot.notify.notify_one();
        if created {
            if let Some(context) = &self.context {
                let task = tokio::spawn(run(
                    context.clone(),
                    open_kfid.clone(),
                    slot,
                    cursor,
                    catch_up_before,
                ));
                self.tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(task);
            }
        }
        true
    }

    /// Waits for every puller to stop (after shutdown was signalled); each finishes the page
    /// commit in progress.
    pub(crate) async fn join(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        if let Some(lanes) = self.context.as_ref().and_then(|c| c.media.as_ref()) {
            lanes.join().await;
        }
    }

    /// Stops every puller at once, a page commit in progress included (a PostgreSQL
    /// transaction that has not committed rolls back).
    pub(crate) async fn abort(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Some(lanes) = self.context.as_ref().and_then(|c| c.media.as_ref()) {
            lanes.abort().await;
        }
    }
}

/// An account's puller task.
async fn run(
    ctx: Arc<PullContext>,
    open_kfid: OpenKfId,
    slot: Arc<Slot>,
    mut cursor: Option<String>,
    mut catch_up_before: Option<i64>,
) {
    let shutdown = ctx.shutdown.clone();
    // Remember the account so a restart pulls it even if no callback comes, and continue from
    // its committed cursor when it was known already (e.g. named by a callback that arrived
    // before the stored accounts were started).
    let mut failures = 0;
    loop {
        let known = async {
            ctx.store
                .add_account(open_kfid.clone(), ctx.clock.local_ms())
                .await?;
            if cursor.is_none() {
                let accounts = ctx.store.accounts().await?;
                if let Some(row) = accounts.into_iter().find(|a| a.open_kfid == open_kfid) {
                    cursor = row.cursor;
                    catch_up_before = catch_up_before.or(row.catch_up_before);
                }
            }
            Ok::<(), crate::error::Error>(())
        };
        match known.await {
            Ok(()) => {
                if failures > 0 {
                    ctx.readiness.store_write_succeeded("puller");
                }
                break;
            }
            Err(e) => {
                failures += 1;
                ctx.readiness.store_write_failed("puller", &e);
                tracing::debug!(open_kfid = open_kfid.as_str(), error = %e, "cannot record the account");
                let delay = backoff(failures, ctx.retry_initial, ctx.retry_max, jitter());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
    let mut puller = Puller::new(ctx.client.clone(), open_kfid.clone())
        .start_cursor(cursor.unwrap_or_default())
        .page_limit(ctx.config.page_size)
        // The store de-duplicates by msgid (pages bypass the library's window anyway).
        .dedup_window(0);
    if ctx.config.voice_format != VoiceFormat::Amr {
        puller = puller.voice_format(ctx.config.voice_format);
    }
    let policy = ctx.config.first_start_for(&open_kfid);
    let mut catch_up = catch_up_before.map(|before| {
        tracing::info!(open_kfid = open_kfid.as_str(), policy = %policy, skip_before = before, "resuming an unfinished first-start catch-up");
        CatchUp {
            skip_before: Some(before),
            reason: "resumed",
            policy,
            skipped: 0,
            delivered: 0,
            pages: 0,
            logged_at: std::time::Instant::now(),
        }
    });
    let mut announced = false;
    let mut tokenless = Tokenless::default();
    slot.active(ctx.clock.local_ms());
    loop {
        let safety = match ctx.config.safety_interval {
            Duration::ZERO => Duration::from_secs(365 * 24 * 3600),
            interval => safety_pull_delay(
                open_kfid.as_str(),
                interval,
                ctx.clock.local_ms(),
                slot.last_activity.load(Ordering::Relaxed),
            ),
        };
        tokio::select! {
            _ = slot.notify.notified() => slot.active(ctx.clock.local_ms()),
            _ = tokio::time::sleep(safety) => {}
            _ = shutdown.cancelled() => return,
        }
        if shutdown.is_cancelled() {
            return;
        }
        if puller.committed_cursor().is_none() && catch_up.is_none() {
            catch_up = Some(begin_catch_up(
                &ctx,
                &open_kfid,
                policy,
                "first_start",
                !announced,
            ));
            announced = true;
        }
        pull_round(
            &ctx,
            &open_kfid,
            &slot,
            &mut puller,
            &mut catch_up,
            &mut tokenless,
            &shutdown,
        )
        .await;
    }
}

/// Starts a catch-up without a cursor under the account's first-start policy; `announce`
/// logs and counts it (once per reason and process: an account without any message stays
/// without a cursor and would otherwise announce every pull).
fn begin_catch_up(
    ctx: &PullContext,
    open_kfid: &OpenKfId,
    policy: FirstStart,
    reason: &'static str,
    announce: bool,
) -> CatchUp {
    let skip_before = policy.skip_before(ctx.started_at, ctx.clock.now());
    if announce {
        ctx.metrics.first_start(reason, policy.name());
        tracing::info!(
            open_kfid = open_kfid.as_str(),
            reason,
            policy = %policy,
            skip_before,
            "pulling without a cursor: messages sent before skip_before are stored but not delivered"
        );
    }
    CatchUp {
        skip_before,
        reason,
        policy,
        skipped: 0,
        delivered: 0,
        pages: 0,
        logged_at: std::time::Instant::now(),
    }
}

/// The threshold of a catch-up after WeChat rejected the cursor: the policy's, moved back to
/// the newest stored message's `send_time` when that is earlier (the downtime backlog is
/// delivered; what the store holds is ignored by msgid). `None` (replay) stays `None`.
fn resume_after(policy_threshold: Option<i64>, last_stored: Option<i64>) -> Option<i64> {
    match (policy_threshold, last_stored) {
        (Some(threshold), Some(last)) if last > 0 => Some(threshold.min(last)),
        (threshold, _) => threshold,
    }
}

/// The keyword handoffs of a page: one transfer per customer text containing a keyword.
fn handoffs(
    handoff: &HandoffConfig,
    open_kfid: &OpenKfId,
    messages: &[NewMessage],
    skip_before: Option<i64>,
) -> Vec<(MsgId, NewReply)> {
    if handoff.keywords.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(MsgId, NewReply)> = Vec::new();
    for m in messages {
        let Payload::Message(message) = &m.payload else {
            continue;
        };
        if message.origin() != Origin::Customer
            || m.external_userid.as_str().is_empty()
            || is_skipped(m.send_time, skip_before)
        {
            continue;
        }
        let MessageContent::Text(text) = message.content() else {
            continue;
        };
        if !handoff
            .keywords
            .iter()
            .any(|k| text.content.contains(k.as_str()))
        {
            continue;
        }
        // One transfer per customer and page is enough.
        if out
            .iter()
            .any(|(_, r)| r.lane.ends_with(&format!("/{}", m.external_userid)))
        {
            continue;
        }
        let (service_state, auto) = handoff.target();
        let transfer = Transfer {
            open_kfid: open_kfid.clone(),
            external_userid: m.external_userid.clone(),
            service_state,
            servicer_userid: handoff.servicer_userid.clone().filter(|_| !auto),
            auto,
            message: handoff.message.clone(),
        };
        let mut body = transfer.to_json();
        body["trigger"] = serde_json::json!("keyword");
        out.push((
            m.msgid.clone(),
            NewReply {
                endpoint: ReplyEndpoint::Trans,
                lane: transfer.lane(),
                body: body.to_string(),
                msgid: new_msgid(),
                delivery_id: None,
                position: None,
                hold_ms: 0,
                error: None,
                result: None,
            },
        ));
    }
    out
}

/// Counts the customers' answers to the satisfaction survey among newly stored messages.
fn count_survey_answers(metrics: &Metrics, open_kfid: &OpenKfId, stored: &[StoredMessage]) {
    for m in stored {
        if m.turn.no_reply != Some(NoReply::SurveyAnswer) {
            continue;
        }
        let Some(Payload::Message(message)) = &m.payload else {
            continue;
        };
        if let MessageContent::Text(text) = message.content() {
            let choice = text
                .menu_id
                .as_deref()
                .and_then(|id| id.strip_prefix(SURVEY_MENU_PREFIX))
                .and_then(|i| i.parse::<u8>().ok());
            if let Some(choice) = choice {
                metrics.survey_rating(open_kfid, &choice.to_string());
            }
        }
    }
}

/// Pulls until `has_more` is 0, a non-retryable error, or shutdown.
async fn pull_round(
    ctx: &PullContext,
    open_kfid: &OpenKfId,
    slot: &Slot,
    puller: &mut Puller,
    catch_up: &mut Option<CatchUp>,
    tokenless: &mut Tokenless,
    shutdown: &CancellationToken,
) {
    Metrics::add(&ctx.metrics.pulls, 1);
    let mut failures = 0u32;
    // Not reset by a successful `sync_msg`: a store that cannot write must back off however
    // well WeChat answers.
    let mut store_failures = 0u32;
    let mut empty_pages = 0u32;
    let mut pages = 0u32;
    let mut stored_total = 0usize;
    let mut duplicates_total = 0usize;
    let cursor_before = puller.committed_cursor().map(str::to_owned);
    // After one 95007 the round goes on without callback tokens (a burst of stale tokens would
    // otherwise cost one rejected call each).
    let mut use_tokens = true;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // The newest token of the slot (callbacks keep arriving during a pull); the library
        // decides whether it is still fresh.
        let token = if use_tokens {
            slot.latest_token()
        } else {
            None
        };
        // The library drops a Token older than it trusts; a call may go out without one.
        let has_token = token.as_ref().is_some_and(|(_, received_at)| {
            wechat_kf::client::puller::callback_token_usable(*received_at, ctx.clock.local_time())
        });
        let wait = tokenless.wait(
            has_token,
            ctx.clock.local_ms(),
            ctx.config.tokenless_per_minute,
        );
        if !wait.is_zero() {
            Metrics::add(&ctx.metrics.tokenless_paced, 1);
            tracing::debug!(
                open_kfid = open_kfid.as_str(),
                wait_ms = wait.as_millis() as u64,
                "pacing sync_msg calls without a callback Token (pull.tokenless_per_minute)"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        if let Some((t, received_at)) = &token {
            puller.set_callback_token(t.as_str(), *received_at);
        }
        let result = tokio::select! {
            result = puller.fetch_page() => result,
            // Nothing is committed yet: abandoning the call loses nothing.
            _ = shutdown.cancelled() => return,
        };
        let now_ms = ctx.clock.local_ms();
        if let Err(e) = &result {
            if let Some(reason) = readiness::unreachable(e) {
                ctx.readiness
                    .fail(readiness::WECHAT, format!("unreachable: {reason}"));
            }
        } else {
            ctx.readiness.clear(readiness::WECHAT);
        }
        let mut page = match result {
            Ok(page) => {
                let rejected = page.callback_token_rejection().is_some();
                if !has_token || rejected {
                    tokenless.made(now_ms, rejected);
                }
                if let Some(rejection) = page.callback_token_rejection() {
                    token_rejected(ctx, open_kfid, slot, token.as_ref(), rejection);
                    use_tokens = false;
                }
                page
            }
            Err(e) => {
                let rejected = puller.callback_token_rejection().is_some();
                if !has_token || rejected {
                    tokenless.made(now_ms, rejected);
                }
                if let Some(rejection) = puller.callback_token_rejection() {
                    token_rejected(ctx, open_kfid, slot, token.as_ref(), rejection);
                    use_tokens = false;
                }
                Metrics::add(&ctx.metrics.pull_errors, 1);
                ctx.metrics.api_error("kf/sync_msg", &e);
                // WeChat does not document what an expired or foreign cursor answers; the
                // emulator says 40035 (invalid parameter). Either way the cursor is useless:
                // pull without one, under the first-start policy.
                if e.errcode() == Some(ErrCode::InvalidParameter)
                    && puller.committed_cursor().is_some()
                {
                    let policy = ctx.config.first_start_for(open_kfid);
                    // What the store holds was delivered (or skipped) already: resume after
                    // its newest message rather than after this process's start, so a
                    // restart's downtime backlog is delivered; msgids already stored are
                    // ignored by the commit.
                    let last_stored = match ctx.store.last_send_time(open_kfid.clone()).await {
                        Ok(last) => last,
                        Err(e) => {
                            tracing::warn!(open_kfid = open_kfid.as_str(), error = %e, "cannot read the newest stored message; using the first-start policy alone");
                            None
                        }
                    };
                    tracing::warn!(
                        open_kfid = open_kfid.as_str(),
                        errcode = 40035,
                        last_stored_send_time = last_stored,
                        "the stored cursor was rejected; pulling from the start of what WeChat holds"
                    );
                    puller.set_cursor(None);
                    let mut resumed =
                        begin_catch_up(ctx, open_kfid, policy, "cursor_rejected", true);
                    resumed.skip_before = resume_after(resumed.skip_before, last_stored);
                    *catch_up = Some(resumed);
                    continue;
                }
                if e.is_retryable() || e.is_token_invalid() {
                    failures += 1;
                    let delay = after_failure(
                        e.retry_after(),
                        failures,
                        ctx.retry_initial,
                        ctx.retry_max,
                        jitter(),
                    );
                    if e.retry_after().is_some() {
                        // Our own budget (or a 45009 block it recorded): counted in the budget
                        // metrics, and the 45009 itself was logged when it was answered.
                        tracing::debug!(open_kfid = open_kfid.as_str(), error = %e, retry_in_ms = delay.as_millis() as u64, "sync_msg waits for the call budget");
                    } else {
                        tracing::warn!(open_kfid = open_kfid.as_str(), error = %e, retry_in_ms = delay.as_millis() as u64, "sync_msg failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
                tracing::error!(open_kfid = open_kfid.as_str(), error = %e, "sync_msg failed; waiting for the next callback");
                return;
            }
        };
        failures = 0;
        pages += 1;
        let has_more = page.has_more();
        let items = page.messages.len() + page.invalid.len();
        let skip_before = catch_up.as_ref().and_then(|c| c.skip_before);
        let messages = page_messages(
            std::mem::take(&mut page.messages),
            std::mem::take(&mut page.invalid),
        );
        let mut actions = handoffs(&ctx.handoff, open_kfid, &messages, skip_before);
        let (stage_replies, stage_counts) = stage_actions(
            ctx.conversation.stages(open_kfid.as_str()),
            open_kfid,
            &messages,
            skip_before,
        );
        actions.extend(stage_replies);
        let queued_actions = !actions.is_empty();
        let invalid = messages.iter().filter(|m| m.decode_error.is_some()).count();
        // The page's messages and its cursor in the store's one transaction; the library's
        // cursor moves only once it committed. Not raced against shutdown: a commit in progress
        // always finishes.
        let committed = page
            .commit_with(|next_cursor| {
                let write = PageWrite {
                    open_kfid: open_kfid.clone(),
                    messages,
                    next_cursor,
                    now_ms: ctx.clock.local_ms(),
                    skip_before,
                    catch_up_before: if has_more { skip_before } else { None },
                    actions,
                    turns: TurnRules {
                        now_secs: Some(ctx.clock.now_u64()),
                        while_human: ctx.conversation.while_human(open_kfid.as_str()),
                    },
                };
                ctx.store.commit_page(write)
            })
            .await;
        let outcome = match committed {
            Ok(outcome) => {
                if store_failures > 0 {
                    ctx.readiness.store_write_succeeded("puller");
                }
                store_failures = 0;
                outcome
            }
            Err(e) => {
                store_failures += 1;
                // Not ready until a write succeeds; one ERROR line for the change, not one
                // per attempt.
                ctx.readiness.store_write_failed("puller", &e);
                let delay = backoff(store_failures, ctx.retry_initial, ctx.retry_max, jitter());
                tracing::debug!(open_kfid = open_kfid.as_str(), error = %e, retry_in_ms = delay.as_millis() as u64, "cannot store a page; pulling it again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        if queued_actions {
            ctx.replies.notify_one();
        }
        for _ in 0..stage_counts.welcome_without_code {
            ctx.metrics.stage_message("welcome", "no_code");
        }
        count_survey_answers(&ctx.metrics, open_kfid, &outcome.stored);
        if let Some(c) = catch_up.as_mut() {
            c.skipped += outcome.skipped as u64;
            c.delivered += outcome.stored.len() as u64;
            c.pages += 1;
            ctx.metrics.skipped(open_kfid, outcome.skipped as u64);
            if has_more && c.logged_at.elapsed() >= CATCH_UP_PROGRESS_EVERY {
                c.logged_at = std::time::Instant::now();
                tracing::info!(
                    open_kfid = open_kfid.as_str(),
                    pages = c.pages,
                    skipped = c.skipped,
                    delivered = c.delivered,
                    "catching up: still paging through the backlog"
                );
            }
            if !has_more {
                tracing::info!(
                    open_kfid = open_kfid.as_str(),
                    reason = c.reason,
                    policy = %c.policy,
                    pages = c.pages,
                    skipped = c.skipped,
                    delivered = c.delivered,
                    "caught up: the cursor is stored"
                );
                *catch_up = None;
            }
        }
        Metrics::add(&ctx.metrics.pages, 1);
        Metrics::add(&ctx.metrics.messages_stored, outcome.stored.len() as u64);
        Metrics::add(&ctx.metrics.messages_duplicate, outcome.duplicates as u64);
        Metrics::add(&ctx.metrics.messages_invalid, invalid as u64);
        if invalid > 0 {
            tracing::warn!(
                open_kfid = open_kfid.as_str(),
                invalid,
                "stored items the library could not decode"
            );
        }
        stored_total += outcome.stored.len();
        duplicates_total += outcome.duplicates;
        if !outcome.stored.is_empty() {
            slot.active(ctx.clock.local_ms());
        }
        let handed_over = async {
            match &ctx.media {
                Some(lanes) => lanes.hand_over(open_kfid, outcome.stored).await,
                None => ctx.deliveries.push(outcome.stored).await,
            }
        };
        tokio::select! {
            () = handed_over => {}
            // Committed already: the deliverer finds these rows in the store at the next start.
            _ = shutdown.cancelled() => return,
        }
        if !has_more {
            // One line per pull that found something (ids and counts, never content); an
            // empty safety pull stays at debug so that an idle service keeps a quiet log.
            let cursor_moved = puller.committed_cursor() != cursor_before.as_deref();
            if stored_total > 0 || duplicates_total > 0 || cursor_moved {
                tracing::info!(
                    open_kfid = open_kfid.as_str(),
                    pages,
                    messages = stored_total,
                    duplicates = duplicates_total,
                    cursor_moved,
                    "pulled"
                );
            } else {
                tracing::debug!(open_kfid = open_kfid.as_str(), pages, "pulled: nothing new");
            }
            return;
        }
        if items == 0 {
            // has_more with an empty page is legal; do not spin if the server keeps doing it.
            empty_pages += 1;
            let pause = empty_page_pause(empty_pages);
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        } else {
            empty_pages = 0;
        }
    }
}

/// The server rejected the callback token (95007): the library forgot it and pulled again
/// without it; the slot forgets it too, unless a newer one arrived meanwhile.
fn token_rejected(
    ctx: &PullContext,
    open_kfid: &OpenKfId,
    slot: &Slot,
    token: Option<&(String, SystemTime)>,
    rejection: &wechat_kf::client::Error,
) {
    Metrics::add(&ctx.metrics.pull_errors, 1);
    ctx.metrics.api_error("kf/sync_msg", rejection);
    if let Some((t, _)) = token {
        slot.forget_token(t);
    }
    tracing::info!(
        open_kfid = open_kfid.as_str(),
        "callback token rejected (95007); pulling without it"
    );
}

/// A page's items in server order: decoded messages and undecodable items interleaved as the
/// server sent them.
pub(crate) fn page_messages(messages: Vec<Message>, invalid: Vec<InvalidItem>) -> Vec<NewMessage> {
    let total = messages.len() + invalid.len();
    let mut out = Vec::with_capacity(total);
    let mut good = messages.into_iter();
    let mut bad = invalid.into_iter().peekable();
    for index in 0..total {
        let take_bad = bad.peek().is_some_and(|item| item.index == index);
        let next = if take_bad {
            bad.next().map(from_invalid)
        } else {
            match good.next() {
                Some(m) => Some(from_message(m)),
                None => bad.next().map(from_invalid),
            }
        };
        out.extend(next);
    }
    out
}

fn from_message(m: Message) -> NewMessage {
    NewMessage {
        msgid: m.msgid().clone(),
        external_userid: m.external_userid().cloned().unwrap_or_default(),
        send_time: m.send_time().min(i64::MAX as u64) as i64,
        origin: Some(m.origin().code()),
        kind: m.kind().into_owned(),
        payload: Payload::Message(m),
        decode_error: None,
    }
}

fn from_invalid(item: InvalidItem) -> NewMessage {
    let raw = item.raw.get();
    let value: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let external_userid = text(&value, "external_userid")
        .or_else(|| value.get("event").and_then(|e| text(e, "external_userid")))
        .unwrap_or_default()
        .into();
    let msgid = match &item.msgid {
        Some(id) if !id.as_str().is_empty() => id.clone(),
        // No msgid to de-duplicate on: the JSON itself is the identity.
        _ => MsgId::from(format!(
            "invalid:{}",
            &hex::encode(Sha256::digest(raw.as_bytes()))[..40]
        )),
    };
    NewMessage {
        msgid,
        external_userid,
        send_time: value.get("send_time").and_then(Value::as_i64).unwrap_or(0),
        origin: value
            .get("origin")
            .and_then(Value::as_u64)
            .and_then(|o| u32::try_from(o).ok()),
        kind: item.kind(),
        decode_error: Some(item.error.to_string()),
        payload: Payload::Raw(Arc::from(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::safety_pull_delay;
    use super::*;
    use wechat_kf::message::SyncMsgResponse;

    #[test]
    fn undecodable_items_keep_their_place_and_get_a_stable_msgid() {
        let body = r#"{"errcode":0,"errmsg":"ok","next_cursor":"c","has_more":0,"msg_list":[
          {"msgid":"m1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"a"}},
          {"external_userid":"wm2","send_time":2,"origin":3,"msgtype":"location","location":{"latitude":"north"}},
          {"msgid":"m3","send_time":3,"origin":4,"msgtype":"event","event":{"event_type":"enter_session","open_kfid":"wk","external_userid":"wm3"}}]}"#;
        let page = SyncMsgResponse::from_slice(body.as_bytes()).unwrap();
        let items = page_messages(page.msg_list, page.invalid);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].msgid, "m1");
        assert!(items[1].msgid.as_str().starts_with("invalid:"));
        assert_eq!(items[1].external_userid, "wm2");
        assert_eq!(items[1].kind, "invalid:location");
        assert!(items[1].decode_error.is_some());
        assert_eq!(items[2].external_userid, "wm3");
        assert_eq!(items[2].kind, "event:enter_session");
        let again = SyncMsgResponse::from_slice(body.as_bytes()).unwrap();
        let again = page_messages(again.msg_list, again.invalid);
        assert_eq!(again[1].msgid, items[1].msgid);
    }

    #[tokio::test]
    async fn wakes_coalesce_and_keep_the_newest_token() {
        let pullers = Pullers::detached(2);
        let account = |id: &str| OpenKfId::from(id);
        for i in 0..10 {
            assert!(pullers.wake(&account("wkA"), Some(format!("T{i}"))));
        }
        let slot = pullers.slot("wkA").unwrap();
        assert_eq!(slot.wakes(), 10);
        assert_eq!(slot.token().as_deref(), Some("T9"));
        // One stored permit, however many wakes.
        slot.notify.notified().await;
        let second = tokio::time::timeout(Duration::from_millis(20), slot.notify.notified()).await;
        assert!(second.is_err());
        assert!(pullers.wake(&account("wkB"), None));
        assert!(!pullers.wake(&account("wkC"), None), "account limit");
    }

    #[test]
    fn a_rejected_cursor_resumes_after_the_newest_stored_message_not_after_the_start() {
        // from-now after a restart at 10_000: the policy alone would skip before 9_940.
        assert_eq!(resume_after(Some(9_940), Some(5_000)), Some(5_000));
        // A store newer than the policy threshold keeps the threshold (never skip more).
        assert_eq!(resume_after(Some(9_940), Some(9_990)), Some(9_940));
        assert_eq!(resume_after(Some(9_940), None), Some(9_940));
        assert_eq!(resume_after(None, Some(5_000)), None);
    }

    #[test]
    fn tokenless_calls_are_paced_per_minute_but_calls_with_a_good_token_never_wait() {
        let mut t = Tokenless::default();
        for i in 0..3 {
            assert_eq!(t.wait(false, i, 3), Duration::ZERO);
            t.made(i, false);
        }
        assert_eq!(
            t.wait(false, 10, 3),
            Duration::from_millis(MINUTE_MS as u64 - 10)
        );
        assert_eq!(
            t.wait(true, 10, 3),
            Duration::ZERO,
            "a Token never rejected"
        );
        t.made(11, true);
        assert!(
            !t.wait(true, 12, 3).is_zero(),
            "a Token may be rejected again"
        );
        assert_eq!(t.wait(true, 11 + MINUTE_MS, 3), Duration::ZERO);
    }

    #[test]
    fn ids_that_are_not_wechats_shape_never_become_accounts() {
        let pullers = Pullers::detached(10);
        assert!(!pullers.wake(&OpenKfId::from("w".repeat(30_000)), None));
        assert!(!pullers.wake(
            &OpenKfId::from("../../etc/passwd; DROP TABLE cursors;--"),
            None
        ));
        assert!(pullers.accounts().is_empty());
    }

    #[test]
    fn a_callback_token_is_stamped_on_the_services_own_clock() {
        let arrived = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut pullers = Pullers::detached(1);
        // WeChat's clock (the emulator's, in tests) says otherwise: the stamp ignores it.
        pullers.clock = Clock::from_fn(|| 5).with_local_time(move || arrived);
        pullers.wake(&"wkA".into(), Some("T".into()));
        let slot = pullers.slot("wkA").unwrap();
        assert_eq!(slot.latest_token(), Some(("T".to_owned(), arrived)));
    }

    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(120);
    const NOW: i64 = 1_765_000_000_000;

    #[test]
    fn safety_pulls_of_many_accounts_spread_evenly_over_the_interval() {
        let period = INTERVAL.as_millis() as i64;
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let delay = safety_pull_delay(&format!("wk{i:04}"), INTERVAL, NOW, NOW);
            let delay = delay.as_millis() as i64;
            assert!((period / 2..period * 3 / 2).contains(&delay), "{delay}");
            let at = (NOW + delay).rem_euclid(period);
            buckets[(at * 10 / period) as usize] += 1;
        }
        // 100 expected per tenth of the interval; random jitter from one start would put them
        // all in one or two tenths.
        assert!(
            buckets.iter().all(|&n| (60..=140).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn an_account_left_alone_is_pulled_once_per_interval_at_its_own_phase() {
        let mut now = NOW;
        let mut times = Vec::new();
        for _ in 0..5 {
            now += safety_pull_delay("wkA", INTERVAL, now, NOW).as_millis() as i64;
            times.push(now);
        }
        let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![120_000; 4]);
        // The same account from another start time lands on the same phase.
        let other = NOW + 7_777;
        let next = other + safety_pull_delay("wkA", INTERVAL, other, other).as_millis() as i64;
        assert_eq!((next - times[0]).rem_euclid(120_000), 0);
    }

    #[test]
    fn idle_accounts_are_pulled_less_often_and_a_callback_restores_the_interval() {
        let gap = |idle_ms: i64| {
            let mut now = NOW;
            let first =
                now + safety_pull_delay("wkIdle", INTERVAL, now, now - idle_ms).as_millis() as i64;
            now = first;
            let second =
                now + safety_pull_delay("wkIdle", INTERVAL, now, NOW - idle_ms).as_millis() as i64;
            second - first
        };
        let hour = 3_600_000;
        assert_eq!(gap(0), 120_000);
        assert_eq!(gap(2 * hour), 240_000);
        assert_eq!(gap(12 * hour), 480_000);
        assert_eq!(gap(72 * hour), 960_000);
        // Active again (a callback just now): back to the interval.
        let woken = safety_pull_delay("wkIdle", INTERVAL, NOW, NOW);
        assert!(woken <= INTERVAL * 3 / 2);
    }
}
