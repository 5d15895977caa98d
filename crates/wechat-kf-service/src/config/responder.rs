//! `[responder]`: who answers the customers. `webhook` (the bot's webhook, or JSON Lines on
//! stdout without one) and `echo` (the sandbox's echo bot) are today's behaviours; `openai`
//! (any OpenAI-compatible chat-completions endpoint) and `dify` (Dify's chat-messages API) are
//! built-in AI agents. `[[responder.routes]]` give single accounts another kind, model, prompt
//! or app.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use smart_default::SmartDefault;
use wechat_kf::OpenKfId;

use super::{Secret, de};

/// Who answers (`responder.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponderKind {
    /// The bot's webhook (`webhook.url`), or JSON Lines on stdout without one.
    Webhook,
    /// The sandbox's echo bot: every customer text answered with `echo: <text>`.
    Echo,
    /// An OpenAI-compatible chat-completions endpoint (OpenAI, DeepSeek, Qwen/DashScope
    /// compatible mode, Moonshot, Zhipu, SiliconFlow, Ollama, vLLM, …).
    Openai,
    /// Dify's chat-messages API (an app's key).
    Dify,
}

impl ResponderKind {
    /// The word of the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponderKind::Webhook => "webhook",
            ResponderKind::Echo => "echo",
            ResponderKind::Openai => "openai",
            ResponderKind::Dify => "dify",
        }
    }

    /// Whether it is a built-in AI agent (`openai`, `dify`).
    pub fn is_agent(self) -> bool {
        matches!(self, ResponderKind::Openai | ResponderKind::Dify)
    }
}

/// The responder (`[responder]`). The model settings are the default of every account; a
/// route overrides them for one.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponderConfig {
    /// Who answers. Default: `echo` with `sandbox.echo` (`--echo`), else `webhook`.
    pub kind: Option<ResponderKind>,
    /// The model endpoint: for `openai` the API base (`…/v1`, the part before
    /// `/chat/completions`); for `dify` the API base (`…/v1`, before `/chat-messages`).
    #[serde(deserialize_with = "de::non_empty")]
    pub base_url: Option<String>,
    /// The API key (`openai`) or the app key (`dify`); also `WECHAT_KF_LLM_API_KEY`. Without
    /// one no `Authorization` header is sent (a local Ollama needs none).
    #[serde(deserialize_with = "de::secret")]
    pub api_key: Option<Secret>,
    /// The model name (`openai`).
    #[serde(deserialize_with = "de::non_empty")]
    pub model: Option<String>,
    /// The system prompt (`openai`).
    #[serde(deserialize_with = "de::non_empty")]
    pub system_prompt: Option<String>,
    /// A file holding the system prompt, read at start (`openai`; instead of `system_prompt`).
    #[serde(deserialize_with = "de::non_empty")]
    pub system_prompt_file: Option<PathBuf>,
    /// Sampling temperature (`openai`). Default: the endpoint's.
    pub temperature: Option<f32>,
    /// Most tokens of an answer (`openai`, `max_tokens`). Default: the endpoint's.
    pub max_tokens: Option<u32>,
    /// Time allowed for one answer, retries included; after it the fallback text is sent.
    #[default(Duration::from_secs(60))]
    #[serde(deserialize_with = "de::duration")]
    pub deadline: Duration,
    /// After this long without an answer, one interim notice is sent (it counts against the
    /// quota; the answer still comes). Zero turns it off.
    #[default(Duration::from_secs(15))]
    #[serde(deserialize_with = "de::duration")]
    pub interim_after: Duration,
    /// The interim notice.
    #[default("正在为您查询，请稍候…".to_owned())]
    pub interim_text: String,
    /// Sent when the model fails (after retries, or past the deadline). Empty: nothing is sent.
    #[default("抱歉，暂时无法回答您的问题，请稍后再试或回复“人工”联系客服。".to_owned())]
    pub fallback_text: String,
    /// Most messages one answer is split into (1-5; less when less of WeChat's quota is left).
    #[default(3)]
    pub max_messages: usize,
    /// Ends an answer that had to be cut.
    #[default("…".to_owned())]
    pub truncation_marker: String,
    /// Model requests in flight at once.
    #[default(32)]
    pub concurrency: usize,
    /// Send images to the model as image parts (a vision-capable model; needs
    /// `media.download_dir`). Off: an image is described as `[image]`.
    pub vision: bool,
    /// Offer the model the tools `transfer_to_human(reason)` and `end_conversation()`.
    #[default(true)]
    pub tools: bool,
    /// The conversation memory (`[responder.memory]`).
    pub memory: MemoryConfig,
    /// Voice transcription (`[responder.transcription]`); off without it.
    pub transcription: Option<TranscriptionConfig>,
    /// Other settings for single accounts (`[[responder.routes]]`).
    pub routes: Vec<ResponderRoute>,
}

/// What a conversation's memory holds (`[responder.memory]`).
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most earlier turns (a customer's messages and the answer) given to the model.
    #[default(10)]
    pub turns: usize,
    /// Most characters of earlier turns given to the model (the newest are kept).
    #[default(6000)]
    pub chars: usize,
    /// Forget the conversation when its session ends.
    #[default(true)]
    pub clear_on_end: bool,
}

/// Voice transcription through an OpenAI-compatible `/audio/transcriptions` endpoint
/// (`[responder.transcription]`). Voice notes are converted first (`media.voice_convert_to`,
/// `wav` when unset); the transcript is in the media record (`transcript`) and reaches the
/// model and the webhook.
#[derive(Debug, Clone, SmartDefault, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscriptionConfig {
    /// The API base. Default: `responder.base_url`.
    #[serde(deserialize_with = "de::non_empty")]
    pub base_url: Option<String>,
    /// The key. Default: `responder.api_key`.
    #[serde(deserialize_with = "de::secret")]
    pub api_key: Option<Secret>,
    /// The model.
    #[default("whisper-1".to_owned())]
    pub model: String,
    /// The language hint (ISO-639-1, e.g. `zh`).
    #[serde(deserialize_with = "de::non_empty")]
    pub language: Option<String>,
    /// Time allowed for one transcription.
    #[default(Duration::from_secs(60))]
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
}

/// One account's own responder settings (`[[responder.routes]]`); unset fields are the
/// `[responder]` defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponderRoute {
    /// The account.
    pub open_kfid: OpenKfId,
    /// `openai` or `dify` (an account cannot have its own webhook or echo).
    pub kind: Option<ResponderKind>,
    /// See [`ResponderConfig::base_url`].
    #[serde(default, deserialize_with = "de::non_empty")]
    pub base_url: Option<String>,
    /// See [`ResponderConfig::api_key`].
    #[serde(default, deserialize_with = "de::secret")]
    pub api_key: Option<Secret>,
    /// See [`ResponderConfig::model`].
    #[serde(default, deserialize_with = "de::non_empty")]
    pub model: Option<String>,
    /// See [`ResponderConfig::system_prompt`].
    #[serde(default, deserialize_with = "de::non_empty")]
    pub system_prompt: Option<String>,
    /// See [`ResponderConfig::system_prompt_file`].
    #[serde(default, deserialize_with = "de::non_empty")]
    pub system_prompt_file: Option<PathBuf>,
    /// See [`ResponderConfig::temperature`].
    pub temperature: Option<f32>,
    /// See [`ResponderConfig::max_tokens`].
    pub max_tokens: Option<u32>,
}

/// The settings one account's agent uses: a route's, else the defaults (system prompt files
/// not read yet).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// `openai` or `dify`.
    pub kind: ResponderKind,
    /// The API base.
    pub base_url: String,
    /// The key, if any.
    pub api_key: Option<Secret>,
    /// The model (`openai`).
    pub model: Option<String>,
    /// The prompt.
    pub system_prompt: Option<String>,
    /// The prompt's file.
    pub system_prompt_file: Option<PathBuf>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Most tokens.
    pub max_tokens: Option<u32>,
}

impl ResponderConfig {
    /// The kind in effect: `kind`, else `echo` when the sandbox's echo is on, else `webhook`.
    pub fn effective_kind(&self, echo: bool) -> ResponderKind {
        match self.kind {
            Some(kind) => kind,
            None if echo => ResponderKind::Echo,
            None => ResponderKind::Webhook,
        }
    }

    /// The agent of the `[responder]` defaults, when its kind is an agent's.
    pub fn default_agent(&self, kind: ResponderKind) -> Option<AgentSettings> {
        kind.is_agent().then(|| AgentSettings {
            kind,
            base_url: self.base_url.clone().unwrap_or_default(),
            api_key: self.api_key.clone(),
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
            system_prompt_file: self.system_prompt_file.clone(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
        })
    }

    /// A route's agent: the route's settings over the defaults.
    pub fn route_agent(
        &self,
        route: &ResponderRoute,
        default_kind: ResponderKind,
    ) -> AgentSettings {
        let kind = route.kind.unwrap_or(if default_kind.is_agent() {
            default_kind
        } else {
            ResponderKind::Openai
        });
        // A prompt set by the route replaces both of the defaults' prompt settings.
        let (system_prompt, system_prompt_file) =
            if route.system_prompt.is_some() || route.system_prompt_file.is_some() {
                (
                    route.system_prompt.clone(),
                    route.system_prompt_file.clone(),
                )
            } else {
                (self.system_prompt.clone(), self.system_prompt_file.clone())
            };
        AgentSettings {
            kind,
            base_url: route
                .base_url
                .clone()
                .or_else(|| self.base_url.clone())
                .unwrap_or_default(),
            api_key: route.api_key.clone().or_else(|| self.api_key.clone()),
            model: route.model.clone().or_else(|| self.model.clone()),
            system_prompt,
            system_prompt_file,
            temperature: route.temperature.or(self.temperature),
            max_tokens: route.max_tokens.or(self.max_tokens),
        }
    }

    /// What the types cannot check: the first key that is wrong, and why.
    pub(super) fn check(&self, echo: bool, webhook_url: bool) -> Result<(), (String, String)> {
        let wrong = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        let kind = self.effective_kind(echo);
        if echo && kind != ResponderKind::Echo {
            return wrong(
                "sandbox.echo",
                "--echo answers in the responder's place; it cannot be combined with responder.kind",
            );
        }
        if webhook_url && kind.is_agent() {
            return wrong(
                "webhook.url",
                "is the webhook responder's; remove it, or set responder.kind = \"webhook\"",
            );
        }
        if !(1..=5).contains(&self.max_messages) {
            return wrong(
                "responder.max_messages",
                "must be 1..=5 (WeChat's quota per customer message)",
            );
        }
        if self.concurrency == 0 {
            return wrong("responder.concurrency", "must be at least 1");
        }
        if self.deadline.is_zero() {
            return wrong("responder.deadline", "must be positive");
        }
        if self.interim_text.is_empty() || self.interim_text.len() > 2048 {
            return wrong("responder.interim_text", "must be a text of 1-2048 bytes");
        }
        if self.fallback_text.len() > 2048 {
            return wrong("responder.fallback_text", "must be at most 2048 bytes");
        }
        if self.truncation_marker.len() > 64 {
            return wrong("responder.truncation_marker", "must be at most 64 bytes");
        }
        let agents = self
            .default_agent(kind)
            .into_iter()
            .map(|a| ("responder".to_owned(), a))
            .chain(self.routes.iter().enumerate().map(|(i, route)| {
                (
                    format!("responder.routes[{i}]"),
                    self.route_agent(route, kind),
                )
            }));
        for (at, agent) in agents {
            check_agent(&at, &agent)?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.kind.is_some_and(|k| !k.is_agent()) {
                return wrong(
                    &format!("responder.routes[{i}].kind"),
                    "must be openai or dify (webhook and echo serve every account)",
                );
            }
            if !kind.is_agent() && kind != ResponderKind::Webhook {
                return wrong(
                    "responder.routes",
                    "routes need responder.kind webhook, openai or dify",
                );
            }
        }
        if let Some(t) = &self.transcription {
            let base = t.base_url.as_ref().or(self.base_url.as_ref());
            if !base.is_some_and(|u| is_http(u)) {
                return wrong(
                    "responder.transcription.base_url",
                    "must be an http(s) URL (or set responder.base_url)",
                );
            }
            if t.timeout.is_zero() {
                return wrong("responder.transcription.timeout", "must be positive");
            }
        }
        Ok(())
    }
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn check_agent(at: &str, agent: &AgentSettings) -> Result<(), (String, String)> {
    let wrong = |key: &str, message: &str| Err((format!("{at}.{key}"), message.to_owned()));
    if !is_http(&agent.base_url) {
        return wrong("base_url", "must be an http(s) URL");
    }
    if agent.kind == ResponderKind::Openai && agent.model.is_none() {
        return wrong("model", "is required for the openai responder");
    }
    if agent.kind == ResponderKind::Dify && agent.api_key.is_none() {
        return wrong(
            "api_key",
            "is required for the dify responder (the app's key)",
        );
    }
    if agent.system_prompt.is_some() && agent.system_prompt_file.is_some() {
        return wrong(
            "system_prompt_file",
            "set system_prompt or system_prompt_file, not both",
        );
    }
    if agent.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return wrong("temperature", "must be 0..=2");
    }
    Ok(())
}
