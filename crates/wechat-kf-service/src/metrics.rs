//! Counters and gauges, rendered in the Prometheus text exposition format by `GET /metrics`.
//!
//! Plain atomics: every update is one relaxed add, so instrumentation costs nothing measurable
//! on the hot paths.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use wechat_kf::OpenKfId;
use wechat_kf::client::budget::{Admission, BudgetStore, Limits};

/// Upper bounds (seconds) of the delivery-lag histogram buckets.
const LAG_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// Why a callback request was answered the way it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackResult {
    /// Verified, decrypted, acknowledged.
    Accepted,
    /// URL verification answered.
    Verified,
    /// Signature mismatch (401).
    Forged,
    /// Timestamp outside the window (401).
    Stale,
    /// Body over the limit (413).
    TooLarge,
    /// Unreadable request, or an id that is not WeChat's shape (400).
    Malformed,
    /// Seen before within the timestamp window (answered 200, nothing done).
    Replayed,
}

impl CallbackResult {
    const ALL: [CallbackResult; 7] = [
        CallbackResult::Accepted,
        CallbackResult::Verified,
        CallbackResult::Forged,
        CallbackResult::Stale,
        CallbackResult::TooLarge,
        CallbackResult::Malformed,
        CallbackResult::Replayed,
    ];

    fn label(self) -> &'static str {
        match self {
            CallbackResult::Accepted => "accepted",
            CallbackResult::Verified => "verified",
            CallbackResult::Forged => "forged",
            CallbackResult::Stale => "stale",
            CallbackResult::TooLarge => "too_large",
            CallbackResult::Malformed => "malformed",
            CallbackResult::Replayed => "replayed",
        }
    }
}

/// A counter with labels: one value per rendered label set (`reason="queued",source="service"`).
#[derive(Debug, Default)]
struct Family(Mutex<BTreeMap<String, u64>>);

impl Family {
    fn add(&self, labels: &[(&str, &str)], n: u64) {
        let mut key = String::new();
        for (i, (name, value)) in labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            let _ = write!(key, "{name}=\"{}\"", escape_label(value));
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(key).or_default() += n;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, n) in map.iter() {
            let _ = writeln!(out, "{name}{{{labels}}} {n}");
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and line breaks escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// All service metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    callbacks: [AtomicU64; 7],
    /// When a callback of each result was last seen (unix milliseconds, 0: never).
    callbacks_last_ms: [AtomicU64; 7],
    /// The caller address WeChat last named in an errmsg (`from ip: …`), and when.
    wechat_sees: Mutex<Option<(String, u64)>>,
    /// Pull rounds started (a round pulls until `has_more` is 0).
    pub pulls: AtomicU64,
    /// `sync_msg` pages committed.
    pub pages: AtomicU64,
    /// `sync_msg` calls that failed.
    pub pull_errors: AtomicU64,
    /// Messages stored (new msgids).
    pub messages_stored: AtomicU64,
    /// Messages pulled again and ignored (msgid already stored).
    pub messages_duplicate: AtomicU64,
    /// Items the library could not decode (stored raw and delivered flagged).
    pub messages_invalid: AtomicU64,
    /// Messages acknowledged by the bot.
    pub messages_delivered: AtomicU64,
    /// Delivery attempts acknowledged with 2xx.
    pub deliveries_ok: AtomicU64,
    /// Delivery attempts that failed (non-2xx, timeout, connection error).
    pub deliveries_failed: AtomicU64,
    /// Delivery retries scheduled.
    pub delivery_retries: AtomicU64,
    /// Messages stored but not yet acknowledged.
    pub messages_pending: AtomicI64,
    /// Replies (webhook or echo) sent.
    pub replies_sent: AtomicU64,
    /// Replies that failed for good.
    pub replies_failed: AtomicU64,
    /// Reply retries scheduled.
    pub reply_retries: AtomicU64,
    /// Reply API requests, by outcome class.
    pub api_requests_ok: AtomicU64,
    /// Reply API requests that failed (any reason, including auth).
    pub api_requests_failed: AtomicU64,
    /// Queued text replies merged into another (the joiner).
    pub replies_joined: AtomicU64,
    /// HTTP connections open now.
    pub connections_open: AtomicI64,
    /// Connections closed to make room at `http.max_connections`.
    pub connections_shed: AtomicU64,
    /// Connections refused at the cap (every open one had a request in flight).
    pub connections_refused: AtomicU64,
    /// Connections closed for sending no complete request within the read or idle timeout.
    pub connections_timed_out: AtomicU64,
    /// `sync_msg` calls without a callback Token delayed by `pull.tokenless_per_minute`.
    pub tokenless_paced: AtomicU64,
    /// Bytes under the media directory at the last measurement (`None` before one: not shown).
    media_dir_bytes: Mutex<Option<u64>>,
    first_starts: Family,
    first_start_skipped: Family,
    send_refused: Family,
    handoffs: Family,
    stage_messages: Family,
    handoff_notifications: Family,
    survey_ratings: Family,
    media_downloads: Family,
    media_uploads: Family,
    voice_conversions: Family,
    responder_turns: Family,
    responder_errors: Family,
    responder_tokens: Family,
    responder_interims: Family,
    responder_truncations: AtomicU64,
    responder_model_count: AtomicU64,
    responder_model_micros: AtomicU64,
    transcriptions: Family,
    /// Time spent transcribing voice notes (microseconds), whatever the result.
    transcription_micros: AtomicU64,
    lag_buckets: [AtomicU64; LAG_BUCKETS.len()],
    lag_count: AtomicU64,
    lag_sum_micros: AtomicU64,
    errcodes: Mutex<BTreeMap<(&'static str, i64), u64>>,
    budget: BudgetUse,
}

/// One corp and API's use of the call budget by this instance ([`Metrics::budget_use`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct BudgetLine {
    /// The corp.
    pub(crate) corp: String,
    /// The API (`kf/send_msg`, …).
    pub(crate) api: String,
    /// Calls admitted in the current clock minute.
    pub(crate) minute: u64,
    /// The budget per minute (0: no limit), when a budget is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_minute: Option<u32>,
    /// Calls admitted in the current clock hour.
    pub(crate) hour: u64,
    /// The budget per hour (0: no limit), when a budget is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_hour: Option<u32>,
    /// Calls that had to wait for the budget, since start.
    pub(crate) waits: u64,
    /// 45009 answers (the API blocked), since start.
    pub(crate) blocks: u64,
}

/// The address in an errmsg's `from ip: 1.2.3.4` (WeChat appends it to its errors, see
/// `docs/vendor-notes.md`), checked to be an IP address.
fn from_ip(errmsg: &str) -> Option<String> {
    let (_, rest) = errmsg.split_once("from ip:")?;
    let candidate = rest
        .trim_start()
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()?;
    candidate
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The call budget's use by this instance, per corp and API (see [`MeteredBudget`]).
#[derive(Debug, Default)]
struct BudgetUse {
    calls: Family,
    waits: Family,
    blocks: Family,
    /// The budget, for what remains of it.
    limits: Mutex<Option<Limits>>,
    /// (corp, api) → this instance's calls in the minute and the hour they were counted in.
    windows: Mutex<BTreeMap<(String, String), Windows>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Windows {
    minute: u64,
    in_minute: u64,
    hour: u64,
    in_hour: u64,
}

const BUDGET_MINUTE_MS: u64 = 60_000;
const BUDGET_HOUR_MS: u64 = 3_600_000;

/// `<corp_id>:<api>`, the budget store's key, as labels.
fn corp_and_api(key: &str) -> (&str, &str) {
    key.split_once(':').unwrap_or(("", key))
}

/// A [`BudgetStore`] that counts what passes through it into [`Metrics`]: calls admitted,
/// waits, 45009 blocks, and the budget left in the current windows. The store it wraps keeps
/// deciding (shared through Redis or not); the counts are this instance's own.
#[derive(Debug)]
pub(crate) struct MeteredBudget {
    inner: Arc<dyn BudgetStore>,
    metrics: Arc<Metrics>,
}

impl MeteredBudget {
    /// Counts the use of `inner`'s budget of `limits` into `metrics`.
    pub(crate) fn new(inner: Arc<dyn BudgetStore>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        *metrics
            .budget
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(limits);
        MeteredBudget { inner, metrics }
    }
}

impl BudgetStore for MeteredBudget {
    fn admit<'a>(
        &'a self,
        key: &'a str,
        limits: Limits,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, wechat_kf::client::Error>> {
        Box::pin(async move {
            let admission = self.inner.admit(key, limits, now_ms).await;
            let (corp, api) = corp_and_api(key);
            match &admission {
                Ok(Admission::Go) => self.metrics.budget_call(corp, api, now_ms),
                Ok(Admission::Wait(_)) => self.metrics.budget.waits.add(&labels(corp, api), 1),
                Err(_) => {}
            }
            admission
        })
    }

    fn block<'a>(
        &'a self,
        key: &'a str,
        until_ms: u64,
    ) -> BoxFuture<'a, Result<(), wechat_kf::client::Error>> {
        let (corp, api) = corp_and_api(key);
        self.metrics.budget.blocks.add(&labels(corp, api), 1);
        self.inner.block(key, until_ms)
    }
}

fn labels<'a>(corp: &'a str, api: &'a str) -> [(&'static str, &'a str); 2] {
    [("corp", corp), ("api", api)]
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a callback request.
    pub fn callback(&self, result: CallbackResult) {
        let index = CallbackResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.callbacks[index].fetch_add(1, Ordering::Relaxed);
        self.callbacks_last_ms[index].store(unix_ms(), Ordering::Relaxed);
    }

    /// When a callback with `result` was last seen (unix milliseconds), if ever.
    pub fn callback_last_seen(&self, result: CallbackResult) -> Option<u64> {
        CallbackResult::ALL
            .iter()
            .position(|r| *r == result)
            .map(|i| self.callbacks_last_ms[i].load(Ordering::Relaxed))
            .filter(|ms| *ms > 0)
    }

    /// The address WeChat last said a call came from (the `from ip:` of an errmsg) and when
    /// (unix milliseconds): what its trusted-IP list must hold (errcode 60020).
    pub fn wechat_sees(&self) -> Option<(String, u64)> {
        self.wechat_sees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Remembers the caller address an errmsg names, if it names one.
    pub(crate) fn note_errmsg(&self, errmsg: &str) {
        if let Some(ip) = from_ip(errmsg) {
            *self.wechat_sees.lock().unwrap_or_else(|e| e.into_inner()) = Some((ip, unix_ms()));
        }
    }

    /// This instance's use of the call budget in the windows of `now_ms`, per corp and API.
    pub(crate) fn budget_use(&self, now_ms: u64) -> Vec<BudgetLine> {
        let limits = *self.budget.limits.lock().unwrap_or_else(|e| e.into_inner());
        let (minute, hour) = (now_ms / BUDGET_MINUTE_MS, now_ms / BUDGET_HOUR_MS);
        let counted = |family: &Family, corp: &str, api: &str| {
            let key = format!(
                "corp=\"{}\",api=\"{}\"",
                escape_label(corp),
                escape_label(api)
            );
            family
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .copied()
                .unwrap_or(0)
        };
        let windows = self
            .budget
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        windows
            .iter()
            .map(|((corp, api), w)| BudgetLine {
                corp: corp.clone(),
                api: api.clone(),
                minute: if w.minute == minute { w.in_minute } else { 0 },
                per_minute: limits.map(|l| l.per_minute),
                hour: if w.hour == hour { w.in_hour } else { 0 },
                per_hour: limits.map(|l| l.per_hour),
                waits: counted(&self.budget.waits, corp, api),
                blocks: counted(&self.budget.blocks, corp, api),
            })
            .collect()
    }

    /// The number of callbacks with `result` so far.
    pub fn callbacks(&self, result: CallbackResult) -> u64 {
        CallbackResult::ALL
            .iter()
            .position(|r| *r == result)
            .map_or(0, |i| self.callbacks[i].load(Ordering::Relaxed))
    }

    /// Records how long a message waited between being stored and being acknowledged.
    pub fn observe_lag(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        for (bucket, bound) in self.lag_buckets.iter().zip(LAG_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        self.lag_sum_micros.fetch_add(
            lag.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Counts a WeChat error code returned by `endpoint`.
    pub fn errcode(&self, endpoint: &'static str, errcode: i64) {
        let mut map = self.errcodes.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint, errcode)).or_default() += 1;
    }

    /// Whether WeChat answered `errcode` to any call since start.
    pub(crate) fn errcode_seen(&self, errcode: i64) -> bool {
        self.errcodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .any(|(_, code)| *code == errcode)
    }

    /// Counts the errcode of an API error, if it carries one.
    pub fn api_error(&self, endpoint: &'static str, error: &wechat_kf::client::Error) {
        if let Some(code) = error.errcode() {
            self.errcode(endpoint, code.code());
        }
        if let wechat_kf::client::Error::Api { errmsg, .. } = error {
            self.note_errmsg(errmsg);
        }
    }

    /// Counts a catch-up without a cursor: `reason` is `first_start` or `cursor_rejected`,
    /// `policy` the [`FirstStart`](crate::config::FirstStart) name.
    pub fn first_start(&self, reason: &str, policy: &str) {
        self.first_starts
            .add(&[("reason", reason), ("policy", policy)], 1);
    }

    /// Counts messages of an account skipped by the first-start policy.
    pub fn skipped(&self, open_kfid: &OpenKfId, n: u64) {
        if n > 0 {
            self.first_start_skipped
                .add(&[("open_kfid", open_kfid.as_str())], n);
        }
    }

    /// Counts a send refused for a session reason; `source` is `service` (predicted, WeChat was
    /// not called) or `wechat`.
    pub fn send_refused(&self, reason: &str, source: &str) {
        self.send_refused
            .add(&[("reason", reason), ("source", source)], 1);
    }

    /// Counts a handoff (`trigger`: `keyword`, `bot`, `idle` or `console`; `result`: `ok` or `failed`).
    pub fn handoff(&self, trigger: &str, result: &str) {
        self.handoffs
            .add(&[("trigger", trigger), ("result", result)], 1);
    }

    /// Counts a stage message (`stage`: `welcome`, `queue`, `connect`, `end`; `result`: `sent`,
    /// `failed`, `expired` (the code's time ran out before it could be tried) or `no_code`
    /// (the event carried none: the admin configured WeChat's own message)).
    pub fn stage_message(&self, stage: &str, result: &str) {
        self.stage_messages
            .add(&[("stage", stage), ("result", result)], 1);
    }

    /// Counts a handover summary posted (`target`: `robot` or `webhook`; `result`: `ok` or
    /// `failed`).
    pub fn handoff_notification(&self, target: &str, result: &str) {
        self.handoff_notifications
            .add(&[("target", target), ("result", result)], 1);
    }

    /// Counts a customer's answer to the satisfaction survey (`choice`: its index).
    pub fn survey_rating(&self, open_kfid: &OpenKfId, choice: &str) {
        self.survey_ratings
            .add(&[("open_kfid", open_kfid.as_str()), ("choice", choice)], 1);
    }

    /// Counts a media download (`result`: `ok`, `failed` or `too_large`).
    pub fn media_download(&self, kind: &str, result: &str) {
        self.media_downloads
            .add(&[("kind", kind), ("result", result)], 1);
    }

    /// Counts a media upload to the object store (`result`: `ok` or `failed`).
    pub fn media_upload(&self, kind: &str, result: &str) {
        self.media_uploads
            .add(&[("kind", kind), ("result", result)], 1);
    }

    /// Counts a voice conversion (`result`: `ok` or the error kind).
    pub fn voice_conversion(&self, format: &str, result: &str) {
        self.voice_conversions
            .add(&[("format", format), ("result", result)], 1);
    }

    /// Counts a customer turn the responder handled (`result`: `answered`, `failed` (the
    /// fallback went), `joined` (newer messages were waiting: they are answered together),
    /// `superseded` (newer messages came while the model worked: its answer was dropped), or
    /// the reason no reply could be sent (`human_servicer`, `window_expired`, …)).
    pub fn responder_turn(&self, result: &str) {
        self.responder_turns.add(&[("result", result)], 1);
    }

    /// Counts a failed model attempt (`kind`: `timeout`, `connect`, `http_429`, `http_5xx`,
    /// `http_4xx`, `invalid_response`, `conversation_gone`).
    pub fn responder_error(&self, kind: &str) {
        self.responder_errors.add(&[("kind", kind)], 1);
    }

    /// Adds the tokens a model reported.
    pub fn responder_tokens(&self, model: &str, prompt: u32, completion: u32) {
        self.responder_tokens
            .add(&[("model", model), ("type", "prompt")], prompt.into());
        self.responder_tokens.add(
            &[("model", model), ("type", "completion")],
            completion.into(),
        );
    }

    /// Counts an interim notice (`result`: `sent`, `refused`, `failed`).
    pub fn responder_interim(&self, result: &str) {
        self.responder_interims.add(&[("result", result)], 1);
    }

    /// Counts an answer cut to fit WeChat's quota.
    pub fn responder_truncated(&self) {
        self.responder_truncations.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a model took for one turn (retries included).
    pub fn responder_model_time(&self, elapsed: Duration) {
        self.responder_model_count.fetch_add(1, Ordering::Relaxed);
        self.responder_model_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a voice transcription (`result`: `ok` or the error kind) and the time it took
    /// (`None`: none was attempted, e.g. `not_converted`).
    pub fn transcription(&self, result: &str, took: Option<Duration>) {
        self.transcriptions.add(&[("result", result)], 1);
        if let Some(took) = took {
            self.transcription_micros.fetch_add(
                took.as_micros().min(u128::from(u64::MAX)) as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// Records the size of the media directory (measured by the media housekeeping).
    pub fn set_media_dir_bytes(&self, bytes: u64) {
        *self
            .media_dir_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bytes);
    }

    /// Counts a call the budget admitted at `now_ms`.
    fn budget_call(&self, corp: &str, api: &str, now_ms: u64) {
        self.budget.calls.add(&labels(corp, api), 1);
        let mut windows = self
            .budget
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let w = windows
            .entry((corp.to_owned(), api.to_owned()))
            .or_default();
        let (minute, hour) = (now_ms / BUDGET_MINUTE_MS, now_ms / BUDGET_HOUR_MS);
        if w.minute != minute {
            (w.minute, w.in_minute) = (minute, 0);
        }
        if w.hour != hour {
            (w.hour, w.in_hour) = (hour, 0);
        }
        w.in_minute += 1;
        w.in_hour += 1;
    }

    /// The budget left to this instance in the windows of `now_ms`, per corp and API.
    fn render_budget(&self, out: &mut String, now_ms: u64) {
        self.budget.calls.render(
            out,
            "wechat_kf_budget_calls_total",
            "WeChat API calls admitted by the call budget, by corp and API.",
        );
        self.budget.waits.render(
            out,
            "wechat_kf_budget_waits_total",
            "Calls that had to wait for the call budget, by corp and API.",
        );
        self.budget.blocks.render(
            out,
            "wechat_kf_budget_blocks_total",
            "45009 answers (the API blocked for wechat.rate_limit_block), by corp and API.",
        );
        let limits = *self.budget.limits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(limits) = limits else { return };
        out.push_str(
            "# HELP wechat_kf_budget_remaining Calls left in the current clock minute and hour \
             after this instance's calls, by corp and API.\n# TYPE wechat_kf_budget_remaining gauge\n",
        );
        let (minute, hour) = (now_ms / BUDGET_MINUTE_MS, now_ms / BUDGET_HOUR_MS);
        let windows = self
            .budget
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for ((corp, api), w) in windows.iter() {
            let used = [
                (
                    "minute",
                    limits.per_minute,
                    (w.minute == minute).then_some(w.in_minute),
                ),
                (
                    "hour",
                    limits.per_hour,
                    (w.hour == hour).then_some(w.in_hour),
                ),
            ];
            for (window, limit, used) in used {
                if limit == 0 {
                    continue;
                }
                let left = u64::from(limit).saturating_sub(used.unwrap_or(0));
                let _ = writeln!(
                    out,
                    "wechat_kf_budget_remaining{{corp=\"{}\",api=\"{}\",window=\"{window}\"}} {left}",
                    escape_label(corp),
                    escape_label(api)
                );
            }
        }
    }

    /// Adds `n` to a counter (shorthand).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.render_at(now_ms)
    }

    /// [`render`](Self::render) with the budget's windows at `now_ms`.
    fn render_at(&self, now_ms: u64) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# HELP wechat_kf_callbacks_total Callback requests by result.\n");
        out.push_str("# TYPE wechat_kf_callbacks_total counter\n");
        for (result, count) in CallbackResult::ALL.iter().zip(&self.callbacks) {
            let _ = writeln!(
                out,
                "wechat_kf_callbacks_total{{result=\"{}\"}} {}",
                result.label(),
                get(count)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 20] = [
            (
                "wechat_kf_pulls_total",
                "Pull rounds (until has_more is 0).",
                &self.pulls,
            ),
            (
                "wechat_kf_pull_pages_total",
                "sync_msg pages committed.",
                &self.pages,
            ),
            (
                "wechat_kf_pull_errors_total",
                "sync_msg calls that failed.",
                &self.pull_errors,
            ),
            (
                "wechat_kf_messages_stored_total",
                "Messages stored (new msgids).",
                &self.messages_stored,
            ),
            (
                "wechat_kf_messages_duplicate_total",
                "Messages pulled again and ignored.",
                &self.messages_duplicate,
            ),
            (
                "wechat_kf_messages_invalid_total",
                "Items that failed to decode, stored raw.",
                &self.messages_invalid,
            ),
            (
                "wechat_kf_messages_delivered_total",
                "Messages acknowledged by the bot.",
                &self.messages_delivered,
            ),
            (
                "wechat_kf_deliveries_ok_total",
                "Deliveries acknowledged with 2xx.",
                &self.deliveries_ok,
            ),
            (
                "wechat_kf_deliveries_failed_total",
                "Delivery attempts that failed.",
                &self.deliveries_failed,
            ),
            (
                "wechat_kf_delivery_retries_total",
                "Delivery retries scheduled.",
                &self.delivery_retries,
            ),
            (
                "wechat_kf_replies_sent_total",
                "Replies from the bot sent to WeChat.",
                &self.replies_sent,
            ),
            (
                "wechat_kf_replies_failed_total",
                "Replies that failed for good.",
                &self.replies_failed,
            ),
            (
                "wechat_kf_reply_retries_total",
                "Reply retries scheduled.",
                &self.reply_retries,
            ),
            (
                "wechat_kf_api_requests_ok_total",
                "Reply API requests that succeeded.",
                &self.api_requests_ok,
            ),
            (
                "wechat_kf_api_requests_failed_total",
                "Reply API requests that failed.",
                &self.api_requests_failed,
            ),
            (
                "wechat_kf_replies_joined_total",
                "Queued text replies merged into another by the joiner.",
                &self.replies_joined,
            ),
            (
                "wechat_kf_http_connections_shed_total",
                "Connections closed to make room at http.max_connections.",
                &self.connections_shed,
            ),
            (
                "wechat_kf_http_connections_refused_total",
                "Connections refused at http.max_connections (all busy).",
                &self.connections_refused,
            ),
            (
                "wechat_kf_http_connections_timed_out_total",
                "Connections closed by the read or idle timeout.",
                &self.connections_timed_out,
            ),
            (
                "wechat_kf_pull_tokenless_paced_total",
                "sync_msg calls without a callback Token delayed by pull.tokenless_per_minute.",
                &self.tokenless_paced,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wechat_kf_messages_pending Messages stored and not yet acknowledged.\n\
             # TYPE wechat_kf_messages_pending gauge\nwechat_kf_messages_pending {}",
            self.messages_pending.load(Ordering::Relaxed).max(0)
        );
        let _ = writeln!(
            out,
            "# HELP wechat_kf_http_connections_open HTTP connections open.\n\
             # TYPE wechat_kf_http_connections_open gauge\nwechat_kf_http_connections_open {}",
            self.connections_open.load(Ordering::Relaxed).max(0)
        );
        out.push_str("# HELP wechat_kf_delivery_lag_seconds Time from storing a message to the bot's acknowledgement.\n");
        out.push_str("# TYPE wechat_kf_delivery_lag_seconds histogram\n");
        for (bucket, bound) in self.lag_buckets.iter().zip(LAG_BUCKETS) {
            let _ = writeln!(
                out,
                "wechat_kf_delivery_lag_seconds_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.lag_count);
        let _ = writeln!(
            out,
            "wechat_kf_delivery_lag_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "wechat_kf_delivery_lag_seconds_sum {}",
            get(&self.lag_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "wechat_kf_delivery_lag_seconds_count {count}");
        self.first_starts.render(
            &mut out,
            "wechat_kf_first_starts_total",
            "Catch-ups without a cursor (first start, rejected cursor), by policy.",
        );
        self.first_start_skipped.render(
            &mut out,
            "wechat_kf_first_start_skipped_total",
            "Messages stored but not delivered under the first-start policy.",
        );
        self.send_refused.render(
            &mut out,
            "wechat_kf_send_refused_total",
            "Sends refused for a session reason (service: predicted, WeChat not called).",
        );
        self.handoffs.render(
            &mut out,
            "wechat_kf_handoffs_total",
            "service_state/trans handoffs by trigger and result.",
        );
        self.stage_messages.render(
            &mut out,
            "wechat_kf_stage_messages_total",
            "Welcome, queue, connect and end messages (send_msg_on_event) by stage and result.",
        );
        self.handoff_notifications.render(
            &mut out,
            "wechat_kf_handoff_notifications_total",
            "Handover summaries posted to the staff by target and result.",
        );
        self.survey_ratings.render(
            &mut out,
            "wechat_kf_survey_ratings_total",
            "Answers to the satisfaction survey by account and choice (index).",
        );
        self.media_downloads.render(
            &mut out,
            "wechat_kf_media_downloads_total",
            "Inbound media downloads by kind and result.",
        );
        self.media_uploads.render(
            &mut out,
            "wechat_kf_media_uploads_total",
            "Media uploads to media.object_store by kind and result.",
        );
        self.voice_conversions.render(
            &mut out,
            "wechat_kf_voice_conversions_total",
            "Voice note conversions by target format and result.",
        );
        self.responder_turns.render(
            &mut out,
            "wechat_kf_responder_turns_total",
            "Customer turns the responder handled, by result.",
        );
        self.responder_errors.render(
            &mut out,
            "wechat_kf_responder_errors_total",
            "Failed model attempts, by kind.",
        );
        self.responder_tokens.render(
            &mut out,
            "wechat_kf_responder_tokens_total",
            "Tokens the models reported, by model and type.",
        );
        self.responder_interims.render(
            &mut out,
            "wechat_kf_responder_interim_notices_total",
            "Interim notices of slow answers, by result.",
        );
        let _ = writeln!(
            out,
            "# HELP wechat_kf_responder_truncations_total Answers cut to fit WeChat's quota.\n\
             # TYPE wechat_kf_responder_truncations_total counter\n\
             wechat_kf_responder_truncations_total {}\n\
             # HELP wechat_kf_responder_model_seconds Time models took per turn, retries included.\n\
             # TYPE wechat_kf_responder_model_seconds summary\n\
             wechat_kf_responder_model_seconds_sum {:.6}\n\
             wechat_kf_responder_model_seconds_count {}",
            get(&self.responder_truncations),
            get(&self.responder_model_micros) as f64 / 1e6,
            get(&self.responder_model_count),
        );
        self.transcriptions.render(
            &mut out,
            "wechat_kf_transcriptions_total",
            "Voice note transcriptions ([responder.transcription]) by result (ok or the error kind).",
        );
        let _ = writeln!(
            out,
            "# HELP wechat_kf_transcription_seconds_total Time spent waiting for transcriptions, \
             retries included.\n\
             # TYPE wechat_kf_transcription_seconds_total counter\n\
             wechat_kf_transcription_seconds_total {}",
            self.transcription_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        if let Some(seconds) = children_cpu_seconds() {
            let _ = writeln!(
                out,
                "# HELP wechat_kf_voice_converter_cpu_seconds_total CPU time (user + system) of \
                 the finished converter processes (ffmpeg; SILK is decoded in-process).\n\
                 # TYPE wechat_kf_voice_converter_cpu_seconds_total counter\n\
                 wechat_kf_voice_converter_cpu_seconds_total {seconds}"
            );
        }
        let media_dir_bytes = *self
            .media_dir_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bytes) = media_dir_bytes {
            let _ = writeln!(
                out,
                "# HELP wechat_kf_media_dir_bytes Bytes of downloaded media kept in \
                 media.download_dir (measured every 10 minutes).\n\
                 # TYPE wechat_kf_media_dir_bytes gauge\n\
                 wechat_kf_media_dir_bytes {bytes}"
            );
        }
        out.push_str("# HELP wechat_kf_api_errcodes_total WeChat error codes by endpoint.\n");
        out.push_str("# TYPE wechat_kf_api_errcodes_total counter\n");
        let map = self.errcodes.lock().unwrap_or_else(|e| e.into_inner());
        for ((endpoint, code), n) in map.iter() {
            let _ = writeln!(
                out,
                "wechat_kf_api_errcodes_total{{endpoint=\"{endpoint}\",errcode=\"{code}\"}} {n}"
            );
        }
        drop(map);
        self.render_budget(&mut out, now_ms);
        out
    }
}

/// CPU time of this process's finished (waited-for) child processes: the `cutime` and `cstime`
/// of `/proc/self/stat`, in clock ticks of 1/100 s (Linux's fixed `USER_HZ`). The converter
/// (ffmpeg) is the only child process the service starts. `None` off Linux.
fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_children_cpu(&stat)
}

/// Fields 16 and 17 of a `/proc/<pid>/stat` line, in seconds. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted after the last
/// `)`.
fn parse_children_cpu(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(13);
    let cutime: u64 = fields.next()?.parse().ok()?;
    let cstime: u64 = fields.next()?.parse().ok()?;
    Some((cutime + cstime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::from_ip;

    #[test]
    fn the_address_wechat_names_in_an_errmsg_is_read_and_checked() {
        assert_eq!(
            from_ip(
                "not allow to access from your ip, hint: [1], from ip: 203.0.113.7, more info at x"
            )
            .as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            from_ip("from ip: 2001:db8::1").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(from_ip("from ip: <script>"), None);
        assert_eq!(from_ip("invalid credential"), None);
    }

    use super::*;

    #[tokio::test]
    async fn the_call_budget_is_counted_per_corp_and_api() {
        use wechat_kf::client::budget::MemoryBudget;
        let metrics = Arc::new(Metrics::new());
        let budget = MeteredBudget::new(
            Arc::new(MemoryBudget::new()),
            Limits::new(2, 100),
            metrics.clone(),
        );
        let now = 1_765_000_020_000; // 20 s into a minute
        let limits = Limits::new(2, 100);
        for _ in 0..3 {
            budget.admit("ww1:kf/sync_msg", limits, now).await.unwrap();
        }
        budget.admit("ww1:kf/send_msg", limits, now).await.unwrap();
        budget.block("ww1:kf/send_msg", now + 60_000).await.unwrap();
        let text = metrics.render_at(now);
        for line in [
            "wechat_kf_budget_calls_total{corp=\"ww1\",api=\"kf/sync_msg\"} 2",
            "wechat_kf_budget_calls_total{corp=\"ww1\",api=\"kf/send_msg\"} 1",
            "wechat_kf_budget_waits_total{corp=\"ww1\",api=\"kf/sync_msg\"} 1",
            "wechat_kf_budget_blocks_total{corp=\"ww1\",api=\"kf/send_msg\"} 1",
            "wechat_kf_budget_remaining{corp=\"ww1\",api=\"kf/sync_msg\",window=\"minute\"} 0",
            "wechat_kf_budget_remaining{corp=\"ww1\",api=\"kf/sync_msg\",window=\"hour\"} 98",
            "wechat_kf_budget_remaining{corp=\"ww1\",api=\"kf/send_msg\",window=\"minute\"} 1",
        ] {
            assert!(
                text.contains(&format!("\n{line}\n")),
                "{line} missing from\n{text}"
            );
        }
        // A new minute: the minute's budget is whole again for this instance.
        let later = metrics.render_at(now + 60_000);
        assert!(later.contains(
            "wechat_kf_budget_remaining{corp=\"ww1\",api=\"kf/sync_msg\",window=\"minute\"} 2\n"
        ));
    }

    #[test]
    fn the_converters_cpu_time_is_read_after_the_command_name() {
        // A command name with spaces and a parenthesis; utime 7, stime 3, cutime 250, cstime 50.
        let stat = "4242 (wechat-kf (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 250 50 20 0 8";
        assert_eq!(parse_children_cpu(stat), Some(3.0));
        assert_eq!(parse_children_cpu("garbage"), None);
        let m = Metrics::new();
        assert!(!m.render().contains("wechat_kf_media_dir_bytes"));
        m.set_media_dir_bytes(1234);
        assert!(m.render().contains("\nwechat_kf_media_dir_bytes 1234\n"));
        if cfg!(target_os = "linux") {
            assert!(
                m.render()
                    .contains("wechat_kf_voice_converter_cpu_seconds_total ")
            );
        }
    }

    #[test]
    fn the_exposition_has_every_family_and_cumulative_buckets() {
        let m = Metrics::new();
        m.callback(CallbackResult::Accepted);
        m.callback(CallbackResult::Forged);
        m.observe_lag(Duration::from_millis(3));
        m.observe_lag(Duration::from_secs(2));
        m.errcode("kf/send_msg", 95001);
        m.send_refused("quota_exhausted", "service");
        m.skipped(&"wk\"1".into(), 3);
        m.first_start("first_start", "from-now");
        let text = m.render();
        assert!(text.contains(
            "wechat_kf_send_refused_total{reason=\"quota_exhausted\",source=\"service\"} 1"
        ));
        assert!(text.contains("wechat_kf_first_start_skipped_total{open_kfid=\"wk\\\"1\"} 3"));
        assert!(text.contains(
            "wechat_kf_first_starts_total{reason=\"first_start\",policy=\"from-now\"} 1"
        ));
        assert!(text.contains("wechat_kf_callbacks_total{result=\"accepted\"} 1"));
        assert!(text.contains("wechat_kf_callbacks_total{result=\"forged\"} 1"));
        assert!(text.contains("wechat_kf_delivery_lag_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("wechat_kf_delivery_lag_seconds_bucket{le=\"2.5\"} 2"));
        assert!(text.contains("wechat_kf_delivery_lag_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains(
            "wechat_kf_api_errcodes_total{endpoint=\"kf/send_msg\",errcode=\"95001\"} 1"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
