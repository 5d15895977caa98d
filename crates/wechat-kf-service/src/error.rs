//! The crate's one error type.

/// Everything that can stop the service or fail one of its operations.
///
/// No variant carries a secret, an access token or message content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid (bad TOML, bad value, missing setting).
    #[error("configuration: {0}")]
    Config(String),
    /// The store (SQLite or PostgreSQL) failed.
    #[error("store: {0}")]
    Store(String),
    /// The store's worker is gone (the service is shutting down).
    #[error("store: closed")]
    StoreClosed,
    /// A socket could not be bound or a file could not be read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A call to the kf API failed.
    #[error(transparent)]
    Api(#[from] wechat_kf::client::Error),
    /// A request to the service was invalid (reply API input, a reply body from the bot).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// This instance led its PostgreSQL database and lost the lock (the connection holding it
    /// died); it stopped so that a standby can take over.
    #[error("lost the database leader lock")]
    LeadershipLost,
}

impl Error {
    /// Whether the configuration was the problem (exit code 2 in the CLI).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }

    /// Whether the store failed or is gone.
    pub fn is_store(&self) -> bool {
        matches!(self, Error::Store(_) | Error::StoreClosed)
    }

    /// Whether repeating the same operation later may succeed: store hiccups and transient API
    /// failures (-1, 45009, 45033, HTTP 5xx, timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(_) => true,
            Error::Api(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether the caller's input was rejected.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Error::BadRequest(_))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// An API error's text without anything that could echo message content (a decode error's serde
/// message may quote a value). For logs, stored results and HTTP answers.
pub(crate) fn safe_error(error: &wechat_kf::client::Error) -> String {
    match error {
        wechat_kf::client::Error::Decode { endpoint, .. } => {
            format!("{endpoint}: cannot decode the response")
        }
        other => other.to_string(),
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a tokio-postgres error omits the server's message; the Debug of the
        // DbError carries it without any connection secret.
        match e.as_db_error() {
            Some(db) => Error::Store(format!("postgres: {}: {}", db.code().code(), db.message())),
            None => Error::Store(format!("postgres: {e}")),
        }
    }
}

/// Why an HTTP request (to the webhook, a model) failed, in the words an operator searches for: `timeout after
/// 10s`, `connection refused`, `connection reset`, `cannot resolve the host`, or the innermost
/// cause. Never the URL (it may carry a secret in its query).
pub(crate) fn transport_cause(error: &reqwest::Error, timeout: std::time::Duration) -> String {
    if error.is_timeout() {
        return format!("timeout after {}", humantime::format_duration(timeout));
    }
    let mut innermost = None;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::ConnectionAborted => return "connection aborted".into(),
                std::io::ErrorKind::TimedOut => {
                    return format!("timeout after {}", humantime::format_duration(timeout));
                }
                _ => {}
            }
        }
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let detail = innermost.unwrap_or_else(|| "unknown".into());
    if detail.contains("dns error") || detail.contains("lookup address") {
        return format!("cannot resolve the host ({detail})");
    }
    if error.is_connect() {
        format!("cannot connect ({detail})")
    } else {
        format!("request failed ({detail})")
    }
}
