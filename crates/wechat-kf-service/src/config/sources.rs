//! Where settings come from — the TOML file, then [`ENV`], then [`Overrides`] — and errors that
//! say where.
//!
//! figment merges the sources: it merges nested tables from several providers and remembers
//! which one gave each value, so an error can name the file (with the key's line and column,
//! from toml_edit's spans), the variable or the flag. Each variable and flag is merged as a
//! source of its own for that reason.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use toml_edit::ImDocument;

use super::{Config, WechatConfig};
use crate::error::Error;

/// An environment variable: the setting it sets, and older names still read (deprecated; the
/// current name wins when both are set).
#[derive(Debug)]
pub struct EnvVar {
    /// The variable, `WECHAT_KF_…`.
    pub name: &'static str,
    /// The setting, e.g. `wechat.callback_token`.
    pub key: &'static str,
    /// Deprecated names of the same variable.
    pub deprecated: &'static [&'static str],
}

const fn var(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar {
        name,
        key,
        deprecated: &[],
    }
}

/// Every environment variable read (empty ones are ignored). `WECHAT_KF_ACCOUNTS` is
/// comma-separated; `WECHAT_KF_ECHO` is `1`, `true`, `yes`, `on` or their opposites. The
/// emulator prints, and `wechat-kf callback` and the operator commands read, the same names.
pub const ENV: &[EnvVar] = &[
    var("WECHAT_KF_LISTEN", "listen"),
    var("WECHAT_KF_LOG_FORMAT", "log_format"),
    var("WECHAT_KF_CORP_ID", "wechat.corp_id"),
    var("WECHAT_KF_SECRET", "wechat.secret"),
    EnvVar {
        deprecated: &["WECHAT_KF_TOKEN"],
        ..var("WECHAT_KF_CALLBACK_TOKEN", "wechat.callback_token")
    },
    EnvVar {
        deprecated: &["WECHAT_KF_AES_KEY"],
        ..var("WECHAT_KF_ENCODING_AES_KEY", "wechat.encoding_aes_key")
    },
    var("WECHAT_KF_BASE_URL", "wechat.base_url"),
    var("WECHAT_KF_ACCOUNTS", "wechat.accounts"),
    var("WECHAT_KF_TOKEN_STORE", "wechat.token_store"),
    var("WECHAT_KF_DB", "storage.db"),
    var("WECHAT_KF_WEBHOOK_URL", "webhook.url"),
    var("WECHAT_KF_WEBHOOK_SECRET", "webhook.secret"),
    var("WECHAT_KF_API_TOKEN", "api.token"),
    var("WECHAT_KF_CONSOLE_TOKEN", "console.token"),
    var("WECHAT_KF_METRICS_TOKEN", "http.metrics_token"),
    var("WECHAT_KF_EMULATOR_LISTEN", "sandbox.emulator_listen"),
    var("WECHAT_KF_ECHO", "sandbox.echo"),
    var("WECHAT_KF_FIRST_START", "pull.first_start"),
    var("WECHAT_KF_MEDIA_DIR", "media.download_dir"),
    var("WECHAT_KF_MEDIA_OBJECT_STORE", "media.object_store"),
    var("WECHAT_KF_RESPONDER", "responder.kind"),
    var("WECHAT_KF_LLM_BASE_URL", "responder.base_url"),
    var("WECHAT_KF_LLM_API_KEY", "responder.api_key"),
    var("WECHAT_KF_LLM_MODEL", "responder.model"),
];

/// Values from command-line flags, each setting one key: the CLI says which flag sets which key,
/// so a flag is written once (beside its `clap` definition). An error about a value names the
/// flag.
///
/// ```
/// use wechat_kf_service::config::{Config, Overrides};
///
/// let db: Option<String> = Some(":memory:".into());
/// let flags = Overrides::default().set("--db", "storage.db", db).switch("--echo", "sandbox.echo", true);
/// let config = Config::from_sources(None, &|_| None, flags).unwrap();
/// assert_eq!(config.storage.db.as_deref(), Some(":memory:"));
/// assert!(config.sandbox.echo);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Overrides(Vec<(&'static str, &'static str, Value)>);

impl Overrides {
    /// `flag` (e.g. `--db`) sets `key` (e.g. `storage.db`) to `value`, read as the file's
    /// string would be; `None` leaves the key alone.
    pub fn set(
        mut self,
        flag: &'static str,
        key: &'static str,
        value: Option<impl fmt::Display>,
    ) -> Self {
        self.0
            .extend(value.map(|v| (key, flag, Value::from(v.to_string()))));
        self
    }

    /// A switch: `on` sets the boolean `key`; off leaves it alone.
    pub fn switch(mut self, flag: &'static str, key: &'static str, on: bool) -> Self {
        if on {
            self.0.push((key, flag, Value::from(true)));
        }
        self
    }
}

/// One source's values, under its name (the file's path, a variable, a flag).
struct Layer {
    name: String,
    values: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

impl Layer {
    fn setting(name: &str, key: &str, value: Value) -> Layer {
        let values = figment::util::nest(key, value)
            .into_dict()
            .unwrap_or_default();
        Layer {
            name: name.to_owned(),
            values,
        }
    }
}

/// The environment variable's value as the setting's type reads it.
fn env_value(key: &str, raw: String) -> Value {
    match key {
        "wechat.accounts" => raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into(),
        "sandbox.echo" => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true.into(),
            "0" | "false" | "no" | "off" => false.into(),
            _ => raw.into(), // refused as "expected a boolean", naming the variable
        },
        _ => raw.into(),
    }
}

/// The merged sources, and the file's text to point into.
struct Sources<'a> {
    figment: Figment,
    file: Option<(String, ImDocument<&'a str>)>,
}

impl<'a> Sources<'a> {
    fn new(
        file: Option<(String, &'a str)>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: Overrides,
    ) -> Result<Sources<'a>, Error> {
        let mut figment = Figment::new();
        let file = match file {
            None => None,
            Some((name, text)) => {
                let syntax = |span: Option<Range<usize>>, message: &str| {
                    let at = span.map(|s| position(text, s.start)).unwrap_or_default();
                    Error::Config(format!("{name}{at}: {}", one_line(message)))
                };
                let doc = ImDocument::parse(text).map_err(|e| syntax(e.span(), e.message()))?;
                let table: toml::Table =
                    toml::from_str(text).map_err(|e| syntax(e.span(), e.message()))?;
                let values = Value::serialize(table)
                    .ok()
                    .and_then(Value::into_dict)
                    .unwrap_or_default();
                figment = figment.merge(Layer {
                    name: name.clone(),
                    values,
                });
                Some((name, doc))
            }
        };
        for var in ENV {
            let set = std::iter::once(var.name)
                .chain(var.deprecated.iter().copied())
                .find_map(|name| Some((name, env(name).filter(|v| !v.is_empty())?)));
            if let Some((name, raw)) = set {
                figment = figment.merge(Layer::setting(name, var.key, env_value(var.key, raw)));
            }
        }
        for (key, flag, value) in flags.0 {
            figment = figment.merge(Layer::setting(flag, key, value));
        }
        Ok(Sources { figment, file })
    }

    /// Every section read, each value checked against its type.
    fn extract(&self) -> Result<Config, Error> {
        self.figment.extract::<Config>().map_err(|e| {
            let key = e.path.join(".");
            self.error(&key, e.metadata.as_ref(), &message(&e.kind))
        })
    }

    /// [`extract`](Self::extract), then the checks across settings.
    fn config(&self) -> Result<Config, Error> {
        let config = self.extract()?;
        match config.invalid() {
            Some((key, message)) => {
                Err(self.error(&key, self.figment.find_metadata(&key), &message))
            }
            None => Ok(config),
        }
    }

    /// `<file>:<line>:<column>: <key>: <message>` for the file, `<variable or flag> (<key>):
    /// <message>` for the others.
    fn error(&self, key: &str, source: Option<&Metadata>, message: &str) -> Error {
        let hint = match key {
            "corp_id" | "secret" | "base_url" => " (credentials go in the [wechat] section)",
            _ => "",
        };
        let text = match (source, &self.file) {
            (Some(source), file) if file.as_ref().is_none_or(|(name, _)| *name != source.name) => {
                format!("{} ({key}): {message}", source.name)
            }
            (_, Some((name, doc))) => match locate(doc, key) {
                Some(span) => format!(
                    "{name}{}: {key}: {message}{hint}",
                    position(doc.raw(), span.start)
                ),
                None => format!("{name}: {key}: {message}{hint}"),
            },
            (_, None) => format!("{key}: {message}"),
        };
        Error::Config(text)
    }
}

/// Where `key` is written in the file, or the deepest table of it that is there.
fn locate(doc: &ImDocument<&str>, key: &str) -> Option<Range<usize>> {
    let mut item = doc.as_item();
    let mut span = None;
    for part in key.split('.') {
        let Some((k, next)) = item.as_table_like().and_then(|t| t.get_key_value(part)) else {
            break;
        };
        span = k.span().or_else(|| next.span()).or(span);
        item = next;
    }
    span
}

/// `:<line>:<column>` (both from 1) of a byte offset.
fn position(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    format!(":{line}:{column}")
}

/// toml's messages span lines ("unexpected …", "expected …"); one line reads better in a log.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

/// The error's message without the offending value: a wrongly typed secret must not show.
fn message(kind: &Kind) -> String {
    let what = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Str(_) | Actual::Char(_) => "a string",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "another type",
    };
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, found {}", what(actual))
        }
        Kind::UnknownField(_, expected) => {
            format!("unknown key, expected one of {}", expected.join(", "))
        }
        Kind::Message(message) => one_line(message),
        other => other.to_string(),
    }
}

impl Config {
    /// Reads the TOML file at `path` (if any), applies the process environment and `flags`,
    /// and checks the result.
    pub fn load(path: Option<&Path>, flags: Overrides) -> Result<Config, Error> {
        let text = read(path)?;
        let file = path
            .zip(text.as_deref())
            .map(|(p, t)| (p.display().to_string(), t));
        Sources::new(file, &|key| std::env::var(key).ok(), flags)?.config()
    }

    /// Builds the configuration from TOML text, an environment lookup and flags.
    pub fn from_sources(
        toml_text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: Overrides,
    ) -> Result<Config, Error> {
        let file = toml_text.map(|t| ("config file".to_owned(), t));
        Sources::new(file, env, flags)?.config()
    }
}

impl WechatConfig {
    /// The `[wechat]` section of the file `serve` reads, with the process environment and
    /// `flags` on top: the credentials of the operator and callback commands. The whole file is
    /// read as `serve` reads it (unknown keys are errors), but the other sections are not
    /// checked against each other.
    pub fn load(path: Option<&Path>, flags: Overrides) -> Result<WechatConfig, Error> {
        let text = read(path)?;
        let file = path
            .zip(text.as_deref())
            .map(|(p, t)| (p.display().to_string(), t));
        let sources = Sources::new(file, &|key| std::env::var(key).ok(), flags)?;
        Ok(sources.extract()?.wechat)
    }
}

fn read(path: Option<&Path>) -> Result<Option<String>, Error> {
    path.map(|path| {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
    })
    .transpose()
}
