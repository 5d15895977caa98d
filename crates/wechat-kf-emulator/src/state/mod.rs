//! All mutable emulator state, behind one lock (see [`crate::Emulator`]).
//!
//! Everything here is synchronous and takes the emulator time as an argument, so the rules can be
//! unit-tested with a fake clock. Handlers lock, call into this module, and unlock; nothing here
//! awaits.

pub mod knowledge;
pub mod log;
pub mod media;
pub mod outbound;
pub mod robot;
pub mod session;
pub mod stats;
pub mod tokens;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde_json::{Map, Value, json};

use crate::clock::{HOUR, Millis};
use crate::config::{Config, KfMode, SeedUpgradeService};
use crate::errors::{self, ApiError, ApiResult};
use crate::faults::Fault;
use crate::ids;
use log::MessageLog;
use media::MediaStore;
use session::Session;
use tokens::{AccessTokens, CallbackTokens, Window, WrongSecrets};

/// Most accounts per corp (current doc), and for unverified corps.
pub const MAX_ACCOUNTS: usize = 5000;
/// Most accounts of an unverified corp (95027).
pub const MAX_ACCOUNTS_UNVERIFIED: usize = 10;
/// Most user servicers per account.
pub const MAX_SERVICERS: usize = 2000;
/// Most servicer departments per account.
pub const MAX_DEPARTMENTS: usize = 20;
/// Most callback delivery attempts remembered for `GET /emulator/callbacks`.
const MAX_DELIVERY_LOG: usize = 1000;

/// A servicer (接待人员) of an account.
#[derive(Debug, Clone)]
pub struct Servicer {
    /// WeCom userid.
    pub userid: String,
    /// 0 receiving, 1 stopped (the `servicer/list` enumeration).
    pub status: u8,
    /// When stopped: 0 stopped, 1 suspended.
    pub stop_type: u8,
    /// Whether the member activated WeCom (95014 otherwise).
    pub activated: bool,
}

/// A message sent through the API, remembered for msgid uniqueness and recall.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// When it was accepted.
    pub sent_at: Millis,
    /// Whether `recall_msg` already took it back.
    pub recalled: bool,
}

/// A KF account.
#[derive(Debug)]
pub struct Account {
    /// Its id.
    pub open_kfid: String,
    /// Display name.
    pub name: String,
    /// Avatar media_id given at creation / update.
    pub avatar_media_id: Option<String>,
    /// Avatar URL returned by `account/list`.
    pub avatar_url: String,
    /// Whether the account is under API management (48002 otherwise).
    pub managed_by_api: bool,
    /// User servicers, in the order added.
    pub servicers: Vec<Servicer>,
    /// Department servicers.
    pub departments: Vec<u64>,
    /// The sync_msg log.
    pub log: MessageLog,
    /// Sessions by external_userid.
    pub sessions: HashMap<String, Session>,
    /// API-sent messages by msgid (pruned after 72 h).
    pub sent: HashMap<String, SentMessage>,
    /// Limiter for sync_msg calls without a callback token.
    pub sync_without_token: Window,
}

impl Account {
    /// The servicer with this userid.
    pub fn servicer(&self, userid: &str) -> Option<&Servicer> {
        self.servicers.iter().find(|s| s.userid == userid)
    }
}

/// The context of a customer's last `enter_session`.
#[derive(Debug, Clone)]
pub struct EnterContext {
    /// When.
    pub at: Millis,
    /// Link scene.
    pub scene: Option<String>,
    /// Link scene_param.
    pub scene_param: Option<String>,
    /// Channels info, as given.
    pub wechat_channels: Option<Value>,
}

/// A WeChat customer known to the corp.
#[derive(Debug, Clone)]
pub struct Customer {
    /// Nickname.
    pub nickname: String,
    /// Avatar URL.
    pub avatar: String,
    /// 0 unknown, 1 male, 2 female.
    pub gender: u8,
    /// unionid, if any.
    pub unionid: Option<String>,
    /// Last enter_session.
    pub last_enter: Option<EnterContext>,
}

/// The kind of a single-use code (official doc 95122).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// `enter_session.welcome_code`: 20 s, text or msgmenu.
    Welcome,
    /// From `trans` into 2: 48 h, text, while queued.
    Queue,
    /// From `trans` into 3 or change_type 1: 48 h, text, while in state 3.
    Connect,
    /// From `trans` into 4 or change_type 3: 20 s, text or msgmenu, while ended.
    End,
}

impl CodeKind {
    /// A short name for the outbox and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Welcome => "welcome",
            CodeKind::Queue => "queue",
            CodeKind::Connect => "connect",
            CodeKind::End => "end",
        }
    }
}

/// An issued code.
#[derive(Debug, Clone)]
pub struct Code {
    /// Its kind.
    pub kind: CodeKind,
    /// Account.
    pub open_kfid: String,
    /// Customer.
    pub external_userid: String,
    /// Expiry.
    pub expires_at: Millis,
    /// Whether it was used.
    pub used: bool,
}

/// One message the API client sent, as recorded for `GET /emulator/outbox`.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Account.
    pub open_kfid: String,
    /// Customer.
    pub external_userid: String,
    /// The msgid returned.
    pub msgid: String,
    /// `send_msg` or `send_msg_on_event`.
    pub endpoint: &'static str,
    /// For `send_msg_on_event`: the code kind.
    pub code_kind: Option<CodeKind>,
    /// Emulator time of acceptance.
    pub time_ms: Millis,
    /// The full request body.
    pub request: Value,
    /// Whether it was recalled.
    pub recalled: bool,
}

/// One callback delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    /// Delivery id (shared by the retries of one callback).
    pub delivery: u64,
    /// `kf_msg_or_event` or `kf_account_auth_change`.
    pub event: &'static str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Account (empty for `kf_account_auth_change`).
    pub open_kfid: String,
    /// The Token the callback carried (empty for `kf_account_auth_change`).
    pub token: String,
    /// HTTP status, if a response came.
    pub status: Option<u16>,
    /// Error text (timeout, connection refused, …).
    pub error: Option<String>,
    /// Whether this attempt counted as received (HTTP 200).
    pub ok: bool,
    /// Emulator time.
    pub at: Millis,
}

/// Counters for assertions.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Calls per API path (under /cgi-bin/).
    pub calls: BTreeMap<String, u64>,
    /// Successful gettoken calls.
    pub gettoken: u64,
    /// Callbacks acknowledged with HTTP 200.
    pub callbacks_sent: u64,
    /// Callbacks that failed after every retry.
    pub callbacks_failed: u64,
    /// Individual callback attempts.
    pub callback_attempts: u64,
    /// Items ever appended to logs.
    pub messages_appended: u64,
}

/// Corp facts from the seed.
#[derive(Debug, Clone)]
pub struct Corp {
    /// Verified corp.
    pub verified: bool,
    /// Channels bound.
    pub wechat_channels_binding: bool,
    /// Linked mini programs.
    pub miniprogram_appids: Vec<String>,
    /// Upgrade-service configuration.
    pub upgrade_service: SeedUpgradeService,
    /// KF mode; `None` = not enforced (95011 / 95012 otherwise).
    pub kf_mode: Option<KfMode>,
    /// The API switch (95017 when off).
    pub api_enabled: bool,
}

/// Per-account callback coalescing: at most one in flight, one more pending.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallbackSlot {
    /// A delivery task is running.
    pub in_flight: bool,
    /// New data arrived while it ran.
    pub pending: bool,
}

/// Why a control operation (`/emulator/…` or the matching [`crate::Emulator`] method) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// Unknown account or customer.
    NotFound(String),
    /// The action does not fit the current state.
    Conflict(String),
    /// Bad input.
    BadRequest(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NotFound(m) | ControlError::Conflict(m) | ControlError::BadRequest(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// The whole state.
#[derive(Debug)]
pub struct State {
    /// Accounts by open_kfid.
    pub accounts: HashMap<String, Account>,
    /// Creation order of accounts (for account/list).
    pub account_order: Vec<String>,
    /// Ids of deleted accounts (95004).
    pub deleted_accounts: HashSet<String>,
    /// Customers by external_userid.
    pub customers: HashMap<String, Customer>,
    /// Access tokens.
    pub access_tokens: AccessTokens,
    /// Callback Tokens.
    pub callback_tokens: CallbackTokens,
    /// Issued codes.
    pub codes: HashMap<String, Code>,
    /// Temporary media.
    pub media: MediaStore,
    /// What the client sent.
    pub outbox: VecDeque<OutboxEntry>,
    /// Contact links by their `enc_scene`: (open_kfid, scene).
    pub contact_links: HashMap<String, (String, Option<String>)>,
    /// Knowledge base.
    pub knowledge: knowledge::Knowledge,
    /// Daily statistics.
    pub stats: stats::Stats,
    /// Per-API rate windows (minute, hour).
    pub rate: HashMap<String, (Window, Window)>,
    /// Per client IP and API rate windows (minute, hour); pruned to the IPs of the last hour.
    pub ip_rate: HashMap<(std::net::IpAddr, String), (Window, Window)>,
    /// `media/uploadimg` quota windows (day, 30 days).
    pub uploadimg_quota: (Window, Window),
    /// gettoken calls per minute (corp-wide).
    pub gettoken_rate: Window,
    /// Wrong gettoken secrets per client IP, and blocked IPs.
    pub wrong_secrets: WrongSecrets,
    /// `media/get` downloads in flight per media_id (45033 above the limit).
    pub media_downloads: HashMap<String, u32>,
    /// Injected faults.
    pub faults: Vec<Fault>,
    /// Counters.
    pub counters: Counters,
    /// Callback coalescing per account.
    pub callback_slots: HashMap<String, CallbackSlot>,
    /// Recent callback attempts.
    pub deliveries: VecDeque<DeliveryAttempt>,
    /// Next delivery id.
    pub next_delivery: u64,
    /// Accounts with new data since the last drain.
    pub notify: Vec<String>,
    /// Corp facts.
    pub corp: Corp,
    /// Limits copied from the config.
    pub max_outbox: usize,
    /// Log cap per account.
    pub max_log_items: usize,
    /// Media cap.
    pub max_media_bytes: usize,
    /// Whether send_msg needs a non-menu customer message within 48 h (95024).
    pub require_active_customer_message: bool,
    /// Group robots (`webhook/send`, for staff notifications).
    pub robots: robot::Robots,
}

impl State {
    /// Fresh state from a config (seeded accounts included).
    pub fn new(config: &Config) -> State {
        let seed = config.seed.clone().unwrap_or_default();
        let mut state = State {
            accounts: HashMap::new(),
            account_order: Vec::new(),
            deleted_accounts: HashSet::new(),
            customers: HashMap::new(),
            access_tokens: AccessTokens::default(),
            callback_tokens: CallbackTokens::default(),
            codes: HashMap::new(),
            media: MediaStore::default(),
            outbox: VecDeque::new(),
            contact_links: HashMap::new(),
            knowledge: knowledge::Knowledge::new(),
            stats: stats::Stats::default(),
            rate: HashMap::new(),
            ip_rate: HashMap::new(),
            uploadimg_quota: (Window::default(), Window::default()),
            gettoken_rate: Window::default(),
            wrong_secrets: WrongSecrets::default(),
            media_downloads: HashMap::new(),
            faults: Vec::new(),
            counters: Counters::default(),
            callback_slots: HashMap::new(),
            deliveries: VecDeque::new(),
            next_delivery: 1,
            notify: Vec::new(),
            corp: Corp {
                verified: seed.verified,
                wechat_channels_binding: seed.wechat_channels_binding,
                miniprogram_appids: seed.miniprogram_appids.clone(),
                upgrade_service: seed.upgrade_service.clone(),
                kf_mode: seed.kf_mode,
                api_enabled: seed.api_enabled,
            },
            max_outbox: config.max_outbox.max(1),
            max_log_items: config.max_log_items,
            max_media_bytes: config.max_media_bytes,
            require_active_customer_message: config.require_active_customer_message,
            robots: robot::Robots::default(),
        };
        for a in &seed.accounts {
            let id = state.create_account(a.name.clone(), None, a.open_kfid.clone());
            if let Some(account) = state.accounts.get_mut(&id) {
                account.managed_by_api = a.managed_by_api;
                account.departments = a.department_ids.clone();
                account.servicers = a
                    .servicers
                    .iter()
                    .map(|s| Servicer {
                        userid: s.userid.clone(),
                        status: s.status,
                        stop_type: s.stop_type,
                        activated: s.activated,
                    })
                    .collect();
            }
        }
        state
    }

    /// Creates an account without checks (control API and seed). Returns its open_kfid.
    pub fn create_account(
        &mut self,
        name: String,
        avatar_media_id: Option<String>,
        open_kfid: Option<String>,
    ) -> String {
        let open_kfid = open_kfid.unwrap_or_else(ids::open_kfid);
        let account = Account {
            open_kfid: open_kfid.clone(),
            name,
            avatar_media_id,
            avatar_url: format!("https://wework.qpic.cn/wwhead/{}/0", ids::alnum(24)),
            managed_by_api: true,
            servicers: Vec::new(),
            departments: Vec::new(),
            log: MessageLog::new(self.max_log_items),
            sessions: HashMap::new(),
            sent: HashMap::new(),
            sync_without_token: Window::default(),
        };
        if self.accounts.insert(open_kfid.clone(), account).is_none() {
            self.account_order.push(open_kfid.clone());
        }
        self.deleted_accounts.remove(&open_kfid);
        open_kfid
    }

    /// The account an API call names: 95000 malformed, 95004 unknown/deleted, 48002 not managed.
    pub fn account(&self, open_kfid: &str) -> ApiResult<&Account> {
        let account = self.lookup(open_kfid)?;
        if !account.managed_by_api {
            return Err(ApiError::new(
                errors::API_FORBIDDEN,
                "api forbidden: account is not managed by API",
            ));
        }
        Ok(account)
    }

    /// Mutable [`State::account`].
    pub fn account_mut(&mut self, open_kfid: &str) -> ApiResult<&mut Account> {
        self.account(open_kfid)?;
        self.accounts
            .get_mut(open_kfid)
            .ok_or_else(|| ApiError::new(errors::OPEN_KFID_NOT_FOUND, "open_kfid not exist"))
    }

    fn lookup(&self, open_kfid: &str) -> ApiResult<&Account> {
        if let Some(account) = self.accounts.get(open_kfid) {
            return Ok(account);
        }
        if !ids::looks_like_open_kfid(open_kfid) {
            return Err(ApiError::new(
                errors::INVALID_OPEN_KFID,
                "invalid open_kfid",
            ));
        }
        Err(ApiError::new(
            errors::OPEN_KFID_NOT_FOUND,
            "open_kfid not exist",
        ))
    }

    /// The account a control hook names (404-style error otherwise).
    pub fn hook_account(&mut self, open_kfid: &str) -> Result<&mut Account, ControlError> {
        self.accounts
            .get_mut(open_kfid)
            .ok_or_else(|| ControlError::NotFound(format!("unknown open_kfid {open_kfid}")))
    }

    /// Makes sure the customer exists; creates a synthetic profile the first time.
    pub fn touch_customer(&mut self, external_userid: &str, profile: Option<&Map<String, Value>>) {
        let customer = self
            .customers
            .entry(external_userid.to_string())
            .or_insert_with(|| Customer {
                nickname: format!("客户{}", &ids::digits(4)),
                avatar: format!("http://wx.qlogo.cn/mmhead/{}/0", ids::alnum(24)),
                gender: 0,
                unionid: None,
                last_enter: None,
            });
        if let Some(p) = profile {
            if let Some(v) = p.get("nickname").and_then(Value::as_str) {
                customer.nickname = v.to_string();
            }
            if let Some(v) = p.get("avatar").and_then(Value::as_str) {
                customer.avatar = v.to_string();
            }
            if let Some(v) = p.get("gender").and_then(Value::as_u64) {
                customer.gender = v.min(2) as u8;
            }
            if let Some(v) = p.get("unionid").and_then(Value::as_str) {
                customer.unionid = Some(v.to_string());
            }
        }
    }

    /// Appends a serialized item to an account's log and marks the account for a callback. An
    /// item whose `send_time` is already older than the 3-day retention is not stored.
    pub fn append(&mut self, open_kfid: &str, time_ms: Millis, json: String, now: Millis) {
        if let Some(account) = self.accounts.get_mut(open_kfid) {
            if !account.log.append(time_ms, json, now) {
                return;
            }
            self.counters.messages_appended += 1;
            if !self.notify.iter().any(|n| n == open_kfid) {
                self.notify.push(open_kfid.to_string());
            }
        }
    }

    /// Appends a system event (origin 4) and returns its msgid.
    pub fn append_event(&mut self, open_kfid: &str, event: Value, now: Millis) -> String {
        let msgid = ids::msgid();
        let json = ordered_json(&[
            ("msgid", &Value::from(msgid.as_str())),
            ("send_time", &Value::from(now / 1000)),
            ("origin", &Value::from(4)),
            ("msgtype", &Value::from("event")),
            ("event", &event),
        ]);
        self.append(open_kfid, now, json, now);
        msgid
    }

    /// Issues a single-use code.
    pub fn issue_code(
        &mut self,
        kind: CodeKind,
        open_kfid: &str,
        external_userid: &str,
        ttl: Millis,
        now: Millis,
    ) -> String {
        self.codes.retain(|_, c| c.expires_at > now);
        let code = ids::code();
        self.codes.insert(
            code.clone(),
            Code {
                kind,
                open_kfid: open_kfid.to_string(),
                external_userid: external_userid.to_string(),
                expires_at: now + ttl,
                used: false,
            },
        );
        code
    }

    /// Records an accepted outbound message (outbox + msgid registry).
    pub fn record_sent(&mut self, entry: OutboxEntry) {
        if let Some(account) = self.accounts.get_mut(&entry.open_kfid) {
            let cutoff = entry.time_ms - log::RETENTION;
            if account.sent.len() > 10_000 {
                account.sent.retain(|_, s| s.sent_at >= cutoff);
            }
            account.sent.insert(
                entry.msgid.clone(),
                SentMessage {
                    sent_at: entry.time_ms,
                    recalled: false,
                },
            );
        }
        self.outbox.push_back(entry);
        while self.outbox.len() > self.max_outbox {
            self.outbox.pop_front();
        }
    }

    /// Records a callback attempt (bounded log).
    pub fn record_delivery(&mut self, attempt: DeliveryAttempt) {
        self.counters.callback_attempts += 1;
        self.deliveries.push_back(attempt);
        while self.deliveries.len() > MAX_DELIVERY_LOG {
            self.deliveries.pop_front();
        }
    }

    /// Takes the accounts that got new data.
    pub fn take_notifications(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notify)
    }

    /// Drops expired data everywhere (called from the snapshot and from sync).
    pub fn prune(&mut self, now: Millis) {
        for account in self.accounts.values_mut() {
            account.log.prune(now);
        }
        self.codes.retain(|_, c| c.expires_at > now);
    }

    /// A JSON snapshot for `GET /emulator/state`.
    pub fn snapshot(&mut self, now: Millis) -> Value {
        self.prune(now);
        let accounts: Vec<Value> = self
            .account_order
            .iter()
            .filter_map(|id| self.accounts.get(id))
            .map(|a| {
                json!({
                    "open_kfid": a.open_kfid,
                    "name": a.name,
                    "managed_by_api": a.managed_by_api,
                    "servicers": a.servicers.iter().map(|s| json!({
                        "userid": s.userid, "status": s.status, "stop_type": s.stop_type, "activated": s.activated,
                    })).collect::<Vec<_>>(),
                    "department_ids": a.departments,
                    "log_len": a.log.len(),
                })
            })
            .collect();
        let mut sessions = Vec::new();
        for id in &self.account_order {
            let Some(a) = self.accounts.get(id) else {
                continue;
            };
            let mut keys: Vec<&String> = a.sessions.keys().collect();
            keys.sort();
            for ext in keys {
                let s = &a.sessions[ext];
                sessions.push(json!({
                    "open_kfid": a.open_kfid,
                    "external_userid": ext,
                    "state": s.state,
                    "servicer_userid": s.servicer,
                    "last_customer_msg_time": s.last_customer_msg_at.map(|t| t / 1000),
                    "sends_since_last_customer_msg": s.sends_since,
                    "refused": s.refused,
                    "upgrade_service": s.upgrade,
                }));
            }
        }
        let messages_in_logs: usize = self.accounts.values().map(|a| a.log.len()).sum();
        let blocked_ips: Vec<Value> = self
            .wrong_secrets
            .blocked_list(now)
            .into_iter()
            .map(|(ip, until)| json!({"ip": ip.to_string(), "until": until / 1000}))
            .collect();
        let c = &self.counters;
        json!({
            "now": now / 1000,
            "corp": self.corp_json(),
            "accounts": accounts,
            "sessions": sessions,
            "blocked_ips": blocked_ips,
            "counters": {
                "calls": c.calls,
                "gettoken": c.gettoken,
                "callbacks_sent": c.callbacks_sent,
                "callbacks_failed": c.callbacks_failed,
                "callback_attempts": c.callback_attempts,
                "messages_appended": c.messages_appended,
                "messages_in_logs": messages_in_logs,
                "outbox": self.outbox.len(),
                "media": self.media.len(),
                "customers": self.customers.len(),
            },
        })
    }

    /// The runtime corp settings (`GET /emulator/corp`).
    pub fn corp_json(&self) -> Value {
        json!({
            "kf_mode": self.corp.kf_mode.map(KfMode::as_str),
            "api_enabled": self.corp.api_enabled,
            "verified": self.corp.verified,
            "wechat_channels_binding": self.corp.wechat_channels_binding,
        })
    }

    /// The corp-level checks of a `kf/` call made with a token of secret kind `kind`:
    /// 95011 / 95012 for the wrong kind of secret, 95017 when the API switch is off (except
    /// `kf/customer/batchget`).
    pub fn check_kf_call(&self, path: &str, kind: KfMode) -> ApiResult<()> {
        if !path.starts_with("kf/") {
            return Ok(());
        }
        match (self.corp.kf_mode, kind) {
            (Some(KfMode::Wecom), KfMode::Standalone) => {
                return Err(ApiError::new(
                    errors::WECOM_MODE_STANDALONE_SECRET,
                    "kf is in wecom mode: use the secret of a self-built app",
                ));
            }
            (Some(KfMode::Standalone), KfMode::Wecom) => {
                return Err(ApiError::new(
                    errors::STANDALONE_MODE_WECOM_SECRET,
                    "kf is in standalone mode: use the kf secret",
                ));
            }
            _ => {}
        }
        if !self.corp.api_enabled && path != "kf/customer/batchget" {
            return Err(ApiError::new(
                errors::API_SWITCH_OFF,
                "api switch is off (basic-permission mode)",
            ));
        }
        Ok(())
    }

    /// Whether the account quota allows one more (95027 / 95005).
    pub fn check_account_quota(&self) -> ApiResult<()> {
        if !self.corp.verified && self.accounts.len() >= MAX_ACCOUNTS_UNVERIFIED {
            return Err(ApiError::new(
                errors::UNVERIFIED_ACCOUNT_LIMIT,
                "unverified corp: at most 10 accounts",
            ));
        }
        if self.accounts.len() >= MAX_ACCOUNTS {
            return Err(ApiError::new(
                errors::ACCOUNT_COUNT_LIMIT,
                "account count exceeds limit",
            ));
        }
        Ok(())
    }

    /// Deletes an account (keeping at least one: 95005).
    pub fn delete_account(&mut self, open_kfid: &str) -> ApiResult<()> {
        self.account(open_kfid)?;
        if self.accounts.len() <= 1 {
            return Err(ApiError::new(
                errors::ACCOUNT_COUNT_LIMIT,
                "at least one account must be kept",
            ));
        }
        self.accounts.remove(open_kfid);
        self.account_order.retain(|id| id != open_kfid);
        self.deleted_accounts.insert(open_kfid.to_string());
        self.callback_slots.remove(open_kfid);
        Ok(())
    }
}

/// Writes a JSON object with its keys in the given order (the wire order of real items).
pub fn ordered_json(fields: &[(&str, &Value)]) -> String {
    let mut out = String::with_capacity(128);
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(*key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// 48 hours.
pub const WINDOW_48H: Millis = 48 * HOUR;
