//! Configuration: a TOML file, then environment variables, then command-line flags (each later
//! source wins). Each section is a `Deserialize` struct whose defaults sit beside its fields;
//! [`Overrides`] and [`ENV`] say which flags and variables set which key, and figment layers
//! them. Durations, secrets and words have one deserializer each. Secrets are [`Secret`]s:
//! their `Debug` is redacted, so printing a [`Config`] never leaks one.
//!
//! ```
//! use wechat_kf_service::config::{Config, Overrides};
//!
//! let toml = r#"
//!     listen = "127.0.0.1:9000"
//!     [webhook]
//!     url = "http://127.0.0.1:7000/hook"
//!     secret = "file-secret"
//! "#;
//! let env = |key: &str| (key == "WECHAT_KF_WEBHOOK_SECRET").then(|| "env-secret".to_owned());
//! let flags = Overrides::default().switch("--echo", "sandbox.echo", true);
//! let config = Config::from_sources(Some(toml), &env, flags).unwrap();
//! assert_eq!(config.listen.port(), 9000);
//! assert_eq!(config.webhook.secret.as_ref().unwrap().expose(), "env-secret");
//! assert!(config.sandbox.echo);
//! assert!(config.is_sandbox()); // no WeChat credentials
//! assert!(!format!("{config:?}").contains("env-secret"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use smart_default::SmartDefault;
pub use wechat_kf::client::Secret;
pub use wechat_kf::client::media::MediaKind;
pub use wechat_kf::client::messages::VoiceFormat;
/// What voice notes are converted into (`media.voice_convert_to`): `wav` (16 kHz mono), `ogg`
/// (Opus) or `mp3`.
pub use wechat_kf::voice::Target as VoiceTarget;
use wechat_kf::{OpenKfId, UserId};

use crate::error::Error;
use crate::store::{Synchronous, WhileHuman};

mod de;
mod responder;
mod sources;
#[cfg(test)]
mod tests;

pub use responder::{
    AgentSettings, MemoryConfig, ResponderConfig, ResponderKind, ResponderRoute,
    TranscriptionConfig,
};
pub use sources::{ENV, EnvVar, Overrides};

/// The whole service configuration. [`Config::default`] is the sandbox with the defaults below.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP server listens (callbacks, reply API, health, metrics).
    #[default(SocketAddr::from(([127, 0, 0, 1], 8080)))]
    #[serde(deserialize_with = "de::addr")]
    pub listen: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// WeChat credentials; without `corp_id` and `secret` the service runs in sandbox mode.
    pub wechat: WechatConfig,
    /// The HTTP server: timeouts, the connection cap, shutdown, where `/metrics` is served
    /// (`[http]`).
    pub http: HttpConfig,
    /// The callback endpoint.
    pub callback: CallbackConfig,
    /// Pulling.
    pub pull: PullConfig,
    /// Storage.
    pub storage: StorageConfig,
    /// Delivery to the bot.
    pub webhook: WebhookConfig,
    /// The reply API.
    pub api: ApiConfig,
    /// The web console at `/console` (`[console]`).
    pub console: ConsoleConfig,
    /// Automatic handoff to a human (`[handoff]`).
    pub handoff: HandoffConfig,
    /// Whose turn it is in a conversation, and the message of every stage
    /// (`[conversation]`).
    pub conversation: ConversationConfig,
    /// Joining consecutive text replies (`[joiner]`).
    pub joiner: JoinerConfig,
    /// Downloading inbound media before delivery (`[media]`).
    pub media: MediaConfig,
    /// Sandbox mode (embedded emulator).
    pub sandbox: SandboxConfig,
    /// Who answers the customers (`[responder]`).
    pub responder: ResponderConfig,
}

/// Log line format (`text` or `json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// WeChat credentials and endpoint (`[wechat]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    /// The corp id (`ww…`).
    pub corp_id: String,
    /// The KF (or self-built app) secret.
    #[serde(deserialize_with = "de::secret")]
    pub secret: Option<Secret>,
    /// The callback Token (signature key).
    #[serde(deserialize_with = "de::secret")]
    pub callback_token: Option<Secret>,
    /// The 43-character EncodingAESKey.
    #[serde(deserialize_with = "de::secret")]
    pub encoding_aes_key: Option<Secret>,
    /// The API origin (default `https://qyapi.weixin.qq.com`).
    #[serde(deserialize_with = "de::non_empty")]
    pub base_url: Option<String>,
    /// Accounts pulled from the start; others are learned from callbacks and `kf/account/list`.
    pub accounts: Vec<OpenKfId>,
    /// Whether to list the corp's accounts at start (`kf/account/list`) and pull each.
    #[default(true)]
    pub discover_accounts: bool,
    /// Time allowed for one API request.
    #[default(Duration::from_secs(30))]
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// The call budget per API, a minute (see "Call budget" in docs/service.md): calls beyond it
    /// wait instead of reaching WeChat, whose limit is 10,000 a minute per corp and API
    /// (official doc 90454). Shared by every instance through `token_store`'s Redis. 0: none.
    #[default(8_000)]
    pub calls_per_minute: u32,
    /// The call budget per API, an hour (WeChat's limit: 150,000). 0: none.
    #[default(120_000)]
    pub calls_per_hour: u32,
    /// How long a 45009 (WeChat's frequency limit) stops calls to that API: WeChat blocks it for
    /// 60 s.
    #[default(Duration::from_secs(60))]
    #[serde(deserialize_with = "de::duration")]
    pub rate_limit_block: Duration,
    /// Where access tokens are kept: `None` in the process (the default), or a
    /// `redis://`/`rediss://` URL shared by every instance (and any other program using the same
    /// corp id and secret), so that they share one token and one refresh, and the call budget.
    /// May hold a password.
    #[serde(deserialize_with = "de::secret")]
    pub token_store: Option<Secret>,
}

/// The HTTP server (`[http]`): what a client may hold, for how long, and where `/metrics` is.
///
/// A request's headers and body must arrive within `read_timeout`; a kept-alive connection
/// without a request in flight is closed after `idle_timeout`; at most `max_connections` are
/// open at once (at the cap the oldest connection without a request in flight is closed to make
/// room, so a probe of `/healthz` still gets in). Keep `max_connections` well under the
/// process's file-descriptor limit (`ulimit -n`): the store, WeChat and the bot need some too.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time allowed for a request's headers (from the connection's opening) and, once they are
    /// in, for its body; a slower client gets 408 or is disconnected. Default 10 s.
    #[default(Duration::from_secs(10))]
    #[serde(deserialize_with = "de::duration")]
    pub read_timeout: Duration,
    /// A kept-alive connection without a request in flight is closed after this long.
    /// Default 60 s.
    #[default(Duration::from_secs(60))]
    #[serde(deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    /// Most connections open at once, on every listener together. Default 512 (under the common
    /// limit of 1,024 file descriptors).
    #[default(512)]
    pub max_connections: usize,
    /// On shutdown, how long requests in flight may still take before their connections are
    /// closed. Default 5 s.
    #[default(Duration::from_secs(5))]
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_grace: Duration,
    /// Serve `GET /metrics` on this address instead of `listen` (e.g. a private interface).
    /// Default none: `/metrics` is on `listen`.
    #[serde(deserialize_with = "de::opt_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// A bearer token `GET /metrics` requires (`Authorization: Bearer <token>`). Default none:
    /// `/metrics` is open.
    #[serde(deserialize_with = "de::secret")]
    pub metrics_token: Option<Secret>,
}

/// The callback endpoint (`[callback]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// Path of the callback URL.
    #[default("/callback".into())]
    pub path: String,
    /// Largest accepted POST body; larger ones get 413. Default 64 KiB.
    #[default(64 * 1024)]
    pub max_body_bytes: usize,
    /// Callbacks whose `timestamp` is further than this from now are rejected (replays). Zero
    /// disables the check.
    #[default(Duration::from_secs(300))]
    #[serde(deserialize_with = "de::duration")]
    pub timestamp_window: Duration,
}

/// Pulling (`[pull]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// A pull of every account this often even without a callback (callbacks get lost). Zero
    /// disables it.
    #[default(Duration::from_secs(120))]
    #[serde(deserialize_with = "de::duration")]
    pub safety_interval: Duration,
    /// `sync_msg` page size, 1–1000.
    #[default(1000)]
    pub page_size: u32,
    /// Most accounts pulled (callbacks naming more are ignored).
    #[default(5000)]
    pub max_accounts: usize,
    /// What happens to the messages WeChat still holds (up to 3 days) when an account has no
    /// stored cursor (the first start, a new database) or WeChat rejects the stored one.
    pub first_start: FirstStart,
    /// Per-account overrides of [`first_start`](Self::first_start), by open_kfid.
    pub first_start_accounts: BTreeMap<OpenKfId, FirstStart>,
    /// The `voice_format` of `sync_msg` (`amr` or `silk`): the format voice media is later
    /// downloaded in.
    #[default(VoiceFormat::Amr)]
    #[serde(deserialize_with = "de::voice_format")]
    pub voice_format: VoiceFormat,
    /// Most `sync_msg` calls without a callback Token per account and minute (safety pulls, a
    /// Token WeChat rejected with 95007, a catch-up without callbacks). WeChat limits these
    /// calls strictly and does not publish the limit; past this many the puller waits.
    /// Default 60.
    #[default(60)]
    pub tokenless_per_minute: u32,
}

impl PullConfig {
    /// The first-start policy of an account.
    pub fn first_start_for(&self, open_kfid: &OpenKfId) -> FirstStart {
        self.first_start_accounts
            .get(open_kfid)
            .copied()
            .unwrap_or(self.first_start)
    }
}

/// What to do with the backlog when an account is pulled without a cursor (`pull.first_start`).
///
/// Whatever the policy, every message is stored (msgid de-duplication, session tracking);
/// the policy only decides which of them are delivered to the bot.
///
/// ```
/// use std::time::Duration;
/// use wechat_kf_service::config::FirstStart;
/// assert_eq!("from-now".parse::<FirstStart>().unwrap(), FirstStart::FromNow);
/// assert_eq!("replay".parse::<FirstStart>().unwrap(), FirstStart::Replay);
/// let since: FirstStart = "since 2h".parse().unwrap();
/// assert_eq!(since, FirstStart::Since(Duration::from_secs(7200)));
/// assert_eq!(since.to_string(), "since 2h");
/// // Service started at 1000 (unix s); the catch-up begins at 5000.
/// assert_eq!(FirstStart::FromNow.skip_before(1000, 5000), Some(1000 - 60));
/// assert_eq!(since.skip_before(1000, 5000), Some(5000 - 7200));
/// assert_eq!(FirstStart::Replay.skip_before(1000, 5000), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstStart {
    /// Page through the backlog to its end and store the cursor, but deliver nothing sent
    /// before the service started (a minute of tolerance for clock differences); older
    /// messages are stored as *skipped*. The default: a new bot does not answer three days of
    /// old messages.
    #[default]
    FromNow,
    /// Deliver everything WeChat still holds.
    Replay,
    /// Deliver what was sent within this long before the catch-up began.
    Since(Duration),
}

/// How far before the service's start `from-now` still delivers: WeChat's clock and ours may
/// differ a little, and a message sent just after the start must never be skipped.
pub const FROM_NOW_TOLERANCE_SECS: i64 = 60;

impl FirstStart {
    /// The unix second before which messages are skipped (`None`: nothing is), for a service
    /// started at `started_at` whose catch-up begins at `now` (both on WeChat's clock).
    pub fn skip_before(self, started_at: i64, now: i64) -> Option<i64> {
        match self {
            FirstStart::FromNow => Some(started_at - FROM_NOW_TOLERANCE_SECS),
            FirstStart::Replay => None,
            FirstStart::Since(d) => {
                Some(now.saturating_sub(d.as_secs().min(i64::MAX as u64) as i64))
            }
        }
    }

    /// The policy's name in metrics and logs: `from-now`, `replay` or `since`.
    pub fn name(self) -> &'static str {
        match self {
            FirstStart::FromNow => "from-now",
            FirstStart::Replay => "replay",
            FirstStart::Since(_) => "since",
        }
    }

    /// `from-now`, `replay`, or `since <duration>` (also `since:2h`, `since=2h`).
    fn parse(value: &str) -> Result<FirstStart, String> {
        let v = value.trim();
        match v.to_ascii_lowercase().as_str() {
            "from-now" | "from_now" | "fromnow" | "now" => return Ok(FirstStart::FromNow),
            "replay" | "all" => return Ok(FirstStart::Replay),
            _ => {}
        }
        let rest = v
            .strip_prefix("since")
            .map(|r| r.trim_start_matches([' ', ':', '=']).trim())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| format!("{value:?} is not from-now, replay or \"since <duration>\""))?;
        de::parse_duration(rest).map(FirstStart::Since)
    }
}

impl fmt::Display for FirstStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirstStart::Since(d) => write!(f, "since {}", humantime::format_duration(*d)),
            other => f.write_str(other.name()),
        }
    }
}

impl std::str::FromStr for FirstStart {
    type Err = Error;

    /// `from-now`, `replay`, or `since <duration>` (also `since:2h`, `since=2h`); the error
    /// names the setting, `pull.first_start`.
    fn from_str(value: &str) -> Result<Self, Error> {
        FirstStart::parse(value).map_err(|e| Error::Config(format!("pull.first_start: {e}")))
    }
}

/// Automatic handoff to a human servicer (`[handoff]`): a customer text containing one of the
/// keywords moves the session with `kf/service_state/trans`, before the bot sees the message.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffConfig {
    /// Substrings of customer texts (menu clicks included) that ask for a human, e.g.
    /// `["人工", "转人工"]`. Empty (the default): no keyword handoff.
    pub keywords: Vec<String>,
    /// Where the session goes: `queue`, `servicer` (`servicer_userid`) or `auto` (an online,
    /// receiving servicer of the account, the least recently assigned first; the queue when
    /// none takes it). Unset: as `service_state` says.
    pub to: Option<HandoffTarget>,
    /// The target state: 2 (the queue, the default) or 3 (a servicer, `servicer_userid`).
    #[default(2)]
    pub service_state: u32,
    /// The servicer for state 3.
    #[serde(deserialize_with = "de::non_empty")]
    pub servicer_userid: Option<UserId>,
    /// A text sent with the `msg_code` the transfer returns (`send_msg_on_event`), e.g.
    /// "正在为您转接人工客服". None: nothing is sent.
    pub message: Option<String>,
    /// The idle rule: a customer message left unanswered this long while the bot holds the
    /// session is handed over like a keyword (`"5m"`); `"0"` (the default) is off.
    #[serde(deserialize_with = "de::duration")]
    pub idle: Duration,
    /// Telling the staff about every handover (`[handoff.notify]`).
    pub notify: NotifyConfig,
}

/// Telling the staff about every handover (`[handoff.notify]`): a summary to a WeCom group
/// robot and/or a webhook of the user's own.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// The group robot's whole URL, `https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…`
    /// (the key is its only credential: a secret, never logged).
    #[serde(deserialize_with = "de::secret")]
    pub robot_url: Option<Secret>,
    /// A URL of your own that gets `{"handoff": {...}}`, signed with `webhook.secret`.
    #[serde(deserialize_with = "de::non_empty")]
    pub webhook_url: Option<String>,
    /// The robot message's format: `markdown` (default) or `text`.
    pub format: NotifyFormat,
    /// How many of the customer's last messages the summary shows.
    #[default(5)]
    pub last_messages: usize,
}

/// A group robot message's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// Markdown (≤ 4096 bytes).
    #[default]
    Markdown,
    /// Plain text (≤ 2048 bytes).
    Text,
}

/// Where a handoff takes the session (`handoff.to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffTarget {
    /// The queue (state 2).
    Queue,
    /// `handoff.servicer_userid` (state 3).
    Servicer,
    /// A servicer chosen by the service, else the queue.
    Auto,
}

impl HandoffConfig {
    /// The state a handoff asks for, and whether the servicer is chosen (`to = "auto"`).
    pub fn target(&self) -> (u32, bool) {
        match self.to {
            Some(HandoffTarget::Queue) => (2, false),
            Some(HandoffTarget::Servicer) => (3, false),
            Some(HandoffTarget::Auto) => (3, true),
            None => (self.service_state, false),
        }
    }
}

/// Whose turn it is in a conversation and the message of every stage (`[conversation]`), with
/// refinements per account (`[conversation.accounts.<open_kfid>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationConfig {
    /// What the bot gets while a human servicer holds the session or it waits in the queue:
    /// `mark` (delivered with `"bot_may_reply": false`, the default), `hold` (delivered as
    /// history once the bot may speak again) or `skip` (never delivered).
    pub while_human: WhileHuman,
    /// The welcome, sent with an `enter_session`'s `welcome_code` (text or menu).
    pub welcome: Option<Stage>,
    /// Welcomes by the entry's `scene` (the contact link's), before `welcome`; a key
    /// `"<scene>?<scene_param>"` matches one `scene_param` of the scene (before `"<scene>"`).
    pub scenes: BTreeMap<String, Stage>,
    /// Sent with the `msg_code` of a transfer to the queue (text only).
    pub queue: Option<Stage>,
    /// Sent with the `msg_code` of a servicer picking the session up (text only).
    pub connect: Option<Stage>,
    /// Sent with the `msg_code` of the session's end (text, or a menu with the survey).
    pub end: Option<Stage>,
    /// The satisfaction survey's choices, sent as a menu with the end message.
    pub survey: Vec<String>,
    /// Per-account refinements, by `open_kfid`; unset keys fall back to the ones above.
    pub accounts: BTreeMap<String, AccountConversation>,
}

/// One account's refinements of `[conversation]` (each key as there).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConversation {
    /// `while_human` for this account.
    pub while_human: Option<WhileHuman>,
    /// `welcome` for this account.
    pub welcome: Option<Stage>,
    /// `scenes` for this account (replacing the default table).
    pub scenes: Option<BTreeMap<String, Stage>>,
    /// `queue` for this account.
    pub queue: Option<Stage>,
    /// `connect` for this account.
    pub connect: Option<Stage>,
    /// `end` for this account.
    pub end: Option<Stage>,
    /// `survey` for this account.
    pub survey: Option<Vec<String>>,
}

/// The message of a stage: a text, or a menu (`msgmenu`) of click choices. Texts may hold
/// `{nickname}`, `{account}`, `{scene}` and `{scene_param}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Stage {
    /// A text.
    Text(String),
    /// A menu.
    Menu {
        /// The text above the choices.
        head_content: String,
        /// The choices (click items).
        list: Vec<String>,
        /// The text below the choices.
        #[serde(default)]
        tail_content: String,
    },
}

/// The stages of one account, resolved.
#[derive(Debug, Clone, Copy)]
pub struct Stages<'a> {
    /// The welcome for an entry without a matching scene.
    pub welcome: Option<&'a Stage>,
    /// Welcomes by scene.
    pub scenes: &'a BTreeMap<String, Stage>,
    /// The queue message.
    pub queue: Option<&'a Stage>,
    /// The connect message.
    pub connect: Option<&'a Stage>,
    /// The end message.
    pub end: Option<&'a Stage>,
    /// The survey's choices.
    pub survey: &'a [String],
}

impl ConversationConfig {
    /// `while_human` for an account.
    pub fn while_human(&self, open_kfid: &str) -> WhileHuman {
        self.accounts
            .get(open_kfid)
            .and_then(|a| a.while_human)
            .unwrap_or(self.while_human)
    }

    /// The stages of an account: its refinements over the defaults.
    pub fn stages(&self, open_kfid: &str) -> Stages<'_> {
        let account = self.accounts.get(open_kfid);
        fn pick<'a>(own: Option<&'a Stage>, default: &'a Option<Stage>) -> Option<&'a Stage> {
            own.or(default.as_ref())
        }
        Stages {
            welcome: pick(account.and_then(|a| a.welcome.as_ref()), &self.welcome),
            scenes: account
                .and_then(|a| a.scenes.as_ref())
                .unwrap_or(&self.scenes),
            queue: pick(account.and_then(|a| a.queue.as_ref()), &self.queue),
            connect: pick(account.and_then(|a| a.connect.as_ref()), &self.connect),
            end: pick(account.and_then(|a| a.end.as_ref()), &self.end),
            survey: account
                .and_then(|a| a.survey.as_deref())
                .unwrap_or(&self.survey),
        }
    }

    /// Every stage message with its key, for checking them at start.
    fn all_stages(&self) -> Vec<(String, &Stage)> {
        fn add<'a>(
            out: &mut Vec<(String, &'a Stage)>,
            prefix: &str,
            welcome: Option<&'a Stage>,
            scenes: Option<&'a BTreeMap<String, Stage>>,
            rest: [(&str, Option<&'a Stage>); 3],
        ) {
            if let Some(stage) = welcome {
                out.push((format!("{prefix}welcome"), stage));
            }
            for (scene, stage) in scenes.into_iter().flatten() {
                out.push((format!("{prefix}scenes.{scene}"), stage));
            }
            for (key, stage) in rest {
                if let Some(stage) = stage {
                    out.push((format!("{prefix}{key}"), stage));
                }
            }
        }
        let mut out = Vec::new();
        add(
            &mut out,
            "conversation.",
            self.welcome.as_ref(),
            Some(&self.scenes),
            [
                ("queue", self.queue.as_ref()),
                ("connect", self.connect.as_ref()),
                ("end", self.end.as_ref()),
            ],
        );
        for (id, a) in &self.accounts {
            add(
                &mut out,
                &format!("conversation.accounts.{id}."),
                a.welcome.as_ref(),
                a.scenes.as_ref(),
                [
                    ("queue", a.queue.as_ref()),
                    ("connect", a.connect.as_ref()),
                    ("end", a.end.as_ref()),
                ],
            );
        }
        out
    }

    /// Checks what WeChat would refuse: texts of 1-2048 bytes, menus of 1-10 choices, the
    /// queue and connect messages texts only (official doc 95122), survey choices ≤ 10.
    fn check(&self) -> Result<(), (String, String)> {
        for (key, stage) in self.all_stages() {
            match stage {
                Stage::Text(text) if text.is_empty() || text.len() > 2048 => {
                    return Err((key, "must be a text of 1-2048 bytes".into()));
                }
                Stage::Menu { .. } if key.ends_with("queue") || key.ends_with("connect") => {
                    return Err((
                        key,
                        "must be a text (WeChat sends only texts at this stage)".into(),
                    ));
                }
                Stage::Menu { list, .. } if list.is_empty() || list.len() > 10 => {
                    return Err((key, "must have 1-10 choices".into()));
                }
                _ => {}
            }
        }
        let surveys = std::iter::once(&self.survey)
            .chain(self.accounts.values().filter_map(|a| a.survey.as_ref()));
        for survey in surveys {
            if survey.len() > 10 || survey.iter().any(|c| c.is_empty() || c.len() > 128) {
                return Err((
                    "conversation.survey".into(),
                    "must be at most 10 choices of 1-128 bytes".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Joining consecutive text replies for one customer (`[joiner]`), so that an answer split
/// into several texts spends one message of WeChat's 5-per-customer-message quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinerConfig {
    /// Off by default: joined texts arrive as one message with line breaks.
    pub enabled: bool,
    /// How long a queued text waits for more texts to the same customer (`window_ms`, in
    /// milliseconds). Zero (the default) joins only texts queued together (one response).
    #[serde(rename = "window_ms", deserialize_with = "de::millis")]
    pub window: Duration,
}

/// Downloading inbound media before delivery (`[media]`), so the bot never races WeChat's
/// 3-day media expiry.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Where files go (`<dir>/<open_kfid>/<msgid>/<file name>`). `None` (the default): media
    /// is not downloaded.
    #[serde(deserialize_with = "de::non_empty")]
    pub download_dir: Option<PathBuf>,
    /// Which message types are downloaded (`image`, `voice`, `video`, `file`). Default all.
    #[default(MediaKind::ALL.to_vec())]
    #[serde(deserialize_with = "de::media_kinds")]
    pub kinds: Vec<MediaKind>,
    /// Larger files are refused (a declared length over it before the body is read, a body
    /// crossing it the moment it does) and reported as `too_large`. Default 32 MiB.
    #[default(32 * 1024 * 1024)]
    pub max_bytes: u64,
    /// Downloads in flight at once.
    #[default(4)]
    pub concurrency: usize,
    /// Convert voice notes into this format too (`wav`, `ogg`, `mp3`; needs ffmpeg; SILK needs
    /// the `voice-silk` build feature). Default none, or `wav` with
    /// `[responder.transcription]`, which transcribes the converted file.
    #[serde(deserialize_with = "de::voice_target")]
    pub voice_convert_to: Option<VoiceTarget>,
    /// Longest voice note converted: a longer one is not converted (`too_long`), and no more
    /// than this much of it is decoded. Default 2 minutes (WeChat's notes are at most 60 s).
    #[default(Duration::from_secs(120))]
    #[serde(deserialize_with = "de::duration")]
    pub voice_max_duration: Duration,
    /// Largest converted file kept (`too_large` beyond it). Default 16 MiB (2 minutes of
    /// 16 kHz WAV are under 4 MiB).
    #[default(16 * 1024 * 1024)]
    pub voice_max_bytes: u64,
    /// The ffmpeg program. Default `ffmpeg` on `PATH`.
    #[serde(deserialize_with = "de::non_empty")]
    pub ffmpeg: Option<PathBuf>,
    /// An S3-compatible bucket the files are uploaded to: `s3://<bucket>[/<prefix>]`, objects
    /// named `<prefix>/<open_kfid>/<msgid>/<file name>` (AWS S3, Tencent COS, Alibaba OSS,
    /// Cloudflare R2, MinIO). Without a `download_dir` the files are staged in a temporary
    /// directory and removed once uploaded. Default none.
    #[serde(deserialize_with = "de::non_empty")]
    pub object_store: Option<String>,
    /// Options of the S3 client by their `object_store` crate names (`endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`, ...): `[media.object_store_options]`.
    /// The standard `AWS_*` environment variables are read too; these win. The media fetcher
    /// checks the names when the service starts.
    #[serde(deserialize_with = "de::secrets")]
    pub object_store_options: BTreeMap<String, Secret>,
}

impl MediaConfig {
    /// Whether messages of `msgtype` are downloaded.
    pub fn wants(&self, msgtype: &str) -> bool {
        (self.download_dir.is_some() || self.object_store.is_some())
            && msgtype
                .parse::<MediaKind>()
                .is_ok_and(|k| self.kinds.contains(&k))
    }
}

/// Storage (`[storage]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// A SQLite file path, `:memory:`, or a `postgres://` URL. `None` = `wechat-kf.db`, or
    /// `:memory:` in sandbox mode.
    #[serde(deserialize_with = "de::non_empty")]
    pub db: Option<String>,
    /// SQLite durability (`normal` or `full`).
    #[serde(deserialize_with = "de::synchronous")]
    pub synchronous: Synchronous,
    /// Delivered messages (and finished replies) are deleted after this long. Zero keeps them
    /// forever. Default 7 days; keep it above WeChat's 3-day retention so that msgid
    /// de-duplication covers every message WeChat could return again.
    #[default(Duration::from_secs(7 * 24 * 3600))]
    #[serde(deserialize_with = "de::duration")]
    pub retention: Duration,
    /// A standby instance (a second one on the same store): on SQLite how often it tries the
    /// lock file; on PostgreSQL how long each of its waits for the lock lasts before it is asked
    /// again on the same connection (it is granted the moment the leader releases it). See
    /// [`leader`](crate::leader).
    #[default(Duration::from_secs(2))]
    #[serde(deserialize_with = "de::duration")]
    pub standby_poll: Duration,
    /// PostgreSQL: most connections the store opens (its pool); transactions beyond it wait
    /// for a free connection. Ignored for SQLite.
    #[default(16)]
    pub pool_size: usize,
}

/// Delivery to the bot (`[webhook]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The bot's URL. `None` = write messages as JSON Lines to stdout.
    #[serde(deserialize_with = "de::non_empty")]
    pub url: Option<String>,
    /// Key of the `X-Wechat-Kf-Signature` HMAC. Without it the header is not sent.
    #[serde(deserialize_with = "de::secret")]
    pub secret: Option<Secret>,
    /// Time allowed for one delivery.
    #[default(Duration::from_secs(10))]
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Most messages per delivery.
    #[default(100)]
    pub max_batch: usize,
    /// Most deliveries in flight at once.
    #[default(16)]
    pub concurrency: usize,
    /// First retry delay.
    #[default(Duration::from_secs(1))]
    #[serde(deserialize_with = "de::duration")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[default(Duration::from_secs(600))]
    #[serde(deserialize_with = "de::duration")]
    pub retry_max: Duration,
    /// Largest response body read (for replies). Default 1 MiB.
    #[default(1024 * 1024)]
    pub max_response_bytes: usize,
}

/// The reply API (`[api]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The bearer token protecting `/v1/*`. Without one the reply API is disabled (in sandbox
    /// mode a random token is generated and printed).
    #[serde(deserialize_with = "de::secret")]
    pub token: Option<Secret>,
}

/// The web console (`[console]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The token the console's login form asks for. Without one the console is off (in
    /// sandbox mode a random token is generated and printed with the console's URL).
    #[serde(deserialize_with = "de::secret")]
    pub token: Option<Secret>,
}

/// Sandbox mode (`[sandbox]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Where the embedded emulator listens. Default `127.0.0.1:0` (a free port).
    #[default(SocketAddr::from(([127, 0, 0, 1], 0)))]
    #[serde(deserialize_with = "de::addr")]
    pub emulator_listen: SocketAddr,
    /// Answer every customer text with an echo.
    pub echo: bool,
}

impl Config {
    /// What one setting's type cannot check (ranges, settings that go together): the first
    /// key that is wrong, and why.
    fn invalid(&self) -> Option<(String, String)> {
        let (wechat, webhook, handoff, media) =
            (&self.wechat, &self.webhook, &self.handoff, &self.media);
        let wrong = |key: &str, message: &str| Some((key.to_owned(), message.to_owned()));
        if let Err(wrong) = self.conversation.check() {
            return Some(wrong);
        }
        if let Err(wrong) = self
            .responder
            .check(self.sandbox.echo, self.webhook.url.is_some())
        {
            return Some(wrong);
        }
        if self.responder.vision
            && self.responder.effective_kind(self.sandbox.echo).is_agent()
            && self.media.download_dir.is_none()
        {
            return wrong(
                "responder.vision",
                "needs media.download_dir (images are read from the downloaded files)",
            );
        }
        if self.responder.transcription.is_some()
            && self.media.download_dir.is_none()
            && self.media.object_store.is_none()
        {
            return wrong(
                "responder.transcription",
                "needs media downloads (media.download_dir or media.object_store)",
            );
        }
        if self.responder.transcription.is_some() && !self.media.kinds.contains(&MediaKind::Voice) {
            return wrong(
                "media.kinds",
                "must include voice for responder.transcription (voice notes are transcribed \
                 from the downloaded files)",
            );
        }
        if !self.callback.path.starts_with('/') {
            return wrong("callback.path", "must start with '/'");
        }
        if !(1..=1000).contains(&self.pull.page_size) {
            return wrong("pull.page_size", "must be 1..=1000");
        }
        let durations = [
            ("wechat.timeout", wechat.timeout),
            ("webhook.timeout", webhook.timeout),
            ("storage.standby_poll", self.storage.standby_poll),
            ("http.read_timeout", self.http.read_timeout),
            ("http.idle_timeout", self.http.idle_timeout),
        ];
        if let Some((key, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return wrong(key, "must be positive");
        }
        let counts = [
            ("webhook.max_batch", webhook.max_batch as u64),
            ("webhook.concurrency", webhook.concurrency as u64),
            ("media.concurrency", media.concurrency as u64),
            ("storage.pool_size", self.storage.pool_size as u64),
            ("media.max_bytes", media.max_bytes),
            ("http.max_connections", self.http.max_connections as u64),
            (
                "pull.tokenless_per_minute",
                self.pull.tokenless_per_minute.into(),
            ),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return wrong(key, "must be at least 1");
        }
        let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !webhook.url.as_deref().is_none_or(http) {
            return wrong("webhook.url", "must be an http(s) URL");
        }
        let redis = |url: &Secret| {
            url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")
        };
        if !wechat.token_store.as_ref().is_none_or(redis) {
            // Not the value itself: it may carry a password.
            return wrong("wechat.token_store", "must be a redis:// or rediss:// URL");
        }
        if wechat.corp_id.is_empty() == wechat.secret.is_some() {
            let key = if wechat.secret.is_some() {
                "wechat.corp_id"
            } else {
                "wechat.secret"
            };
            return wrong(
                key,
                "set both wechat.corp_id and wechat.secret (or neither, for the sandbox)",
            );
        }
        // Callbacks need both keys; one alone would leave the callback path silently unserved.
        match (&wechat.callback_token, &wechat.encoding_aes_key) {
            (Some(_), None) => {
                return wrong(
                    "wechat.callback_token",
                    "set wechat.encoding_aes_key too (callbacks need both, or neither)",
                );
            }
            (None, Some(_)) => {
                return wrong(
                    "wechat.encoding_aes_key",
                    "set wechat.callback_token too (callbacks need both, or neither)",
                );
            }
            _ => {}
        }
        if webhook.secret.is_some() && webhook.url.is_none() {
            return wrong(
                "webhook.secret",
                "signs deliveries to webhook.url, which is not set (without it messages go to \
                 stdout, unsigned)",
            );
        }
        match (handoff.to, handoff.service_state, &handoff.servicer_userid) {
            (Some(HandoffTarget::Servicer), _, None) => {
                return wrong("handoff.to", "servicer needs handoff.servicer_userid");
            }
            (Some(_), _, _) | (None, 2, _) | (None, 3, Some(_)) => {}
            (None, 3, None) => {
                return wrong("handoff.service_state", "3 needs handoff.servicer_userid");
            }
            (None, _, _) => {
                return wrong(
                    "handoff.service_state",
                    "must be 2 (queue) or 3 (a servicer)",
                );
            }
        }
        if handoff.notify.last_messages > 50 {
            return wrong("handoff.notify.last_messages", "must be at most 50");
        }
        if let Some(url) = &handoff.notify.robot_url {
            if !(url.expose().starts_with("http://") || url.expose().starts_with("https://")) {
                return wrong("handoff.notify.robot_url", "must be an http(s) URL");
            }
        }
        if handoff.keywords.iter().any(String::is_empty) {
            return wrong("handoff.keywords", "must not be empty strings");
        }
        if handoff
            .message
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 2048)
        {
            return wrong("handoff.message", "must be 1-2048 bytes");
        }
        if self.http.max_connections > 1_000_000 {
            return wrong("http.max_connections", "must be at most 1000000");
        }
        if self.http.shutdown_grace > Duration::from_secs(3600) {
            return wrong("http.shutdown_grace", "must be at most 1h");
        }
        if self
            .http
            .metrics_listen
            .is_some_and(|a| a == self.listen && a.port() != 0)
        {
            return wrong("http.metrics_listen", "must differ from listen");
        }
        // media.object_store is checked where the bucket is opened, when the service starts.
        None
    }

    /// Whether no WeChat credentials are configured: the service then runs the embedded
    /// emulator and talks to it.
    pub fn is_sandbox(&self) -> bool {
        self.wechat.corp_id.is_empty()
    }

    /// The database to open: the configured one, or the mode's default.
    pub fn db_location(&self) -> String {
        match &self.storage.db {
            Some(db) => db.clone(),
            None if self.is_sandbox() => ":memory:".into(),
            None => "wechat-kf.db".into(),
        }
    }
}
