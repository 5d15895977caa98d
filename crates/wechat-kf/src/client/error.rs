//! The crate's error type for API calls: transport, HTTP, decoding, server error codes and local
//! validation, plus the [`ErrCode`] enumeration of every documented code (official doc 90313 and the kf pages).
//!
//! No variant ever carries an access token or a secret: reqwest errors are stored without their
//! URL (tokens travel in the query string) and `gettoken` bodies are never kept.

use std::fmt;

use crate::session::{SendRefusal, refusal_for_errcode};

/// `1.5s`, `50s`: a wait in a message (whole milliseconds).
fn humantime_ms(wait: std::time::Duration) -> String {
    format!("{:.1}s", wait.as_millis() as f64 / 1000.0)
}

/// Maximum number of body bytes kept in [`Error::Decode`] and [`Error::HttpStatus`].
pub(crate) const BODY_EXCERPT_LIMIT: usize = 512;

/// Everything that can go wrong when calling the kf API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request could not be sent or the response could not be read (connection refused,
    /// reset, timeout, TLS). The URL is stripped from the inner error.
    #[error("{endpoint}: transport error: {}", error_chain(source))]
    Transport {
        /// The endpoint path, e.g. `kf/send_msg`.
        endpoint: &'static str,
        /// The underlying error, without its URL.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an HTTP status other than 2xx.
    #[error("{endpoint}: HTTP status {status}")]
    HttpStatus {
        /// The endpoint path.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most 512 bytes).
        body: String,
    },
    /// The response body was not what the endpoint returns.
    #[error("{endpoint}: cannot decode the response: {message}")]
    Decode {
        /// The endpoint path.
        endpoint: &'static str,
        /// What was wrong.
        message: String,
        /// The start of the response body (at most 512 bytes; empty for `gettoken`, whose body
        /// would contain the token).
        body: String,
    },
    /// The server answered with a non-zero `errcode`.
    #[error("{endpoint}: errcode {code}: {errmsg}")]
    Api {
        /// The endpoint path.
        endpoint: &'static str,
        /// The error code.
        code: ErrCode,
        /// The server's message (informational only: branch on `code`).
        errmsg: String,
    },
    /// A request was rejected locally, before anything was sent.
    #[error("invalid request: {0}")]
    Validation(#[from] ValidationError),
    /// Reading or writing a local file (media upload/download).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. the file path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A downloaded file is larger than the caller allows ([`Media::max_bytes`](super::Media::max_bytes)):
    /// refused from its declared length before its body was read, or stopped the moment the
    /// limit was crossed, so nothing over the limit was written.
    #[error("{endpoint}: the media is larger than the {limit} bytes allowed{}", declared.map(|d| format!(" (declared {d} bytes)")).unwrap_or_default())]
    TooLarge {
        /// The endpoint path.
        endpoint: &'static str,
        /// The limit in bytes.
        limit: u64,
        /// The size the server declared (`Content-Length` or the `Content-Range` total), when
        /// that is how it was refused.
        declared: Option<u64>,
    },
    /// A token store or cursor store failed.
    #[error("store error: {message}")]
    Store {
        /// What failed.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The call was not sent: the corp's budget for this API (see [`budget`](super::budget)) is
    /// spent for longer than the client waits. Nothing reached WeChat; try again after
    /// `retry_after`.
    #[error("{endpoint}: the call budget is spent; the next call is possible in {}", humantime_ms(*retry_after))]
    Budget {
        /// The endpoint path.
        endpoint: &'static str,
        /// How long until the budget allows the call.
        retry_after: std::time::Duration,
    },
    /// The client was configured wrongly (bad base URL, HTTP client construction failed).
    #[error("configuration error: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same request may succeed if repeated later: server busy (-1), frequency or
    /// concurrency limits (45009, 45033, the client's call budget), HTTP 5xx, connection errors
    /// and timeouts.
    ///
    /// This says nothing about whether repeating is *safe*; the client only retries
    /// non-idempotent calls when the request provably was not processed (see [`RetryPolicy`](super::RetryPolicy)).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
            }
            Error::HttpStatus { status, .. } => *status >= 500 || *status == 429,
            Error::Api { code, .. } => code.is_retryable(),
            Error::Budget { .. } => true,
            _ => false,
        }
    }

    /// Whether the access token was rejected (40001 on a call that carried a token, 40014,
    /// 42001): refreshing it and retrying once can help.
    pub fn is_token_invalid(&self) -> bool {
        matches!(self, Error::Api { code, .. } if code.is_token_invalid())
    }

    /// Whether a download was refused or stopped for being over the caller's size limit.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Error::TooLarge { .. })
    }

    /// Whether the call was refused because of a frequency or concurrency limit: the server's
    /// (45009, 45033) or the client's own call budget ([`Error::Budget`]).
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Error::Api {
                code: ErrCode::ApiFrequencyExceeded | ErrCode::ConcurrencyLimit,
                ..
            } | Error::Budget { .. }
        )
    }

    /// How long to wait before the same call can go, when the call budget said so.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Budget { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The server's error code, if this is an API error.
    pub fn errcode(&self) -> Option<ErrCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The send refusal behind this error, when it is one of the send refusals (95001, 95002,
    /// 95018, 95024); see [`refusal_for_errcode`].
    pub fn send_refusal(&self) -> Option<SendRefusal> {
        self.errcode().and_then(refusal_for_errcode)
    }

    /// Whether the request provably never reached the server's business logic, so even a
    /// non-idempotent call may be repeated: the connection could not be established, or the
    /// server refused the call for a frequency/concurrency limit or a bad token.
    pub(crate) fn request_not_processed(&self) -> bool {
        match self {
            Error::Transport { source, .. } => source.is_connect(),
            Error::Api { code, .. } => {
                matches!(
                    code,
                    ErrCode::ApiFrequencyExceeded | ErrCode::ConcurrencyLimit
                ) || code.is_token_invalid()
            }
            _ => false,
        }
    }

    pub(crate) fn transport(endpoint: &'static str, source: reqwest::Error) -> Self {
        Error::Transport {
            endpoint,
            source: source.without_url(),
        }
    }

    pub(crate) fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Validation(ValidationError::new(field, reason))
    }

    /// A [`Error::Store`] wrapping `source`, for implementations of
    /// [`TokenStore`](super::token::TokenStore) and [`CursorStore`](super::puller::CursorStore).
    pub fn store(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ErrCode> for i64 {
    fn from(code: ErrCode) -> i64 {
        code.code()
    }
}

/// A request that was rejected locally because it breaks a documented limit; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field, as a path (e.g. `msgmenu.list[3].click.content`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    /// A validation error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// An error and its causes on one line (reqwest's own message omits the cause, e.g. "connection
/// refused").
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Returns the first `limit` bytes of `body` as text, cut at a character boundary.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT_LIMIT + 4)]);
    let mut end = text.len().min(BODY_EXCERPT_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_owned();
    if body.len() > end {
        out.push('…');
    }
    out
}

macro_rules! errcodes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, )*) => {
        /// A server error code (official doc 90313). Codes not listed in the spec are kept as
        /// [`Other`](ErrCode::Other).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrCode {
            $( $(#[$doc])* $name, )*
            /// Any code the spec does not list.
            Other(i64),
        }

        impl ErrCode {
            /// Maps a numeric code to its variant.
            pub fn from_code(code: i64) -> Self {
                match code {
                    $( $code => ErrCode::$name, )*
                    other => ErrCode::Other(other),
                }
            }

            /// The numeric code.
            pub fn code(self) -> i64 {
                match self {
                    $( ErrCode::$name => $code, )*
                    ErrCode::Other(code) => code,
                }
            }
        }
    };
}

errcodes! {
    /// -1: system busy; retry with backoff.
    SystemBusy = -1,
    /// 0: success (never carried by an [`Error`]).
    Success = 0,
    /// 40001: invalid secret or credential.
    InvalidCredential = 40001,
    /// 40003: invalid userid.
    InvalidUserId = 40003,
    /// 40004: invalid media file type.
    InvalidMediaFileType = 40004,
    /// 40005: invalid media `type`.
    InvalidMediaType = 40005,
    /// 40006: invalid file size.
    InvalidFileSize = 40006,
    /// 40007: invalid media_id (wrong source, expired after 3 days, wrong kind).
    InvalidMediaId = 40007,
    /// 40008: invalid msgtype.
    InvalidMsgType = 40008,
    /// 40009: invalid image size.
    InvalidImageSize = 40009,
    /// 40011: invalid video size.
    InvalidVideoSize = 40011,
    /// 40013: invalid corpid.
    InvalidCorpId = 40013,
    /// 40014: invalid access_token; refresh and retry once.
    InvalidAccessToken = 40014,
    /// 40033: invalid request characters (`\uxxxx` escapes are not allowed).
    InvalidCharacters = 40033,
    /// 40035: invalid parameter.
    InvalidParameter = 40035,
    /// 40058: parameter out of range.
    ParameterOutOfRange = 40058,
    /// 40063: missing parameter.
    MissingParameter = 40063,
    /// 40096: invalid external userid.
    InvalidExternalUserId = 40096,
    /// 40201: content blocked by anti-spam.
    ContentBlocked = 40201,
    /// 41001: access_token missing.
    MissingAccessToken = 41001,
    /// 41002: corpid missing (gettoken).
    MissingCorpId = 41002,
    /// 41004: corpsecret missing (gettoken).
    MissingCorpSecret = 41004,
    /// 41006: media_id missing.
    MissingMediaId = 41006,
    /// 42001: access_token expired; refresh and retry once.
    AccessTokenExpired = 42001,
    /// 44001: empty media body.
    EmptyMediaBody = 44001,
    /// 44004: empty text content.
    EmptyTextContent = 44004,
    /// 45001: media file too large.
    MediaTooLarge = 45001,
    /// 45002: content too long.
    ContentTooLong = 45002,
    /// 45009: API call frequency exceeded.
    ApiFrequencyExceeded = 45009,
    /// 45033: API concurrency limit.
    ConcurrencyLimit = 45033,
    /// 48001: API not authorized.
    ApiUnauthorized = 48001,
    /// 48002: API forbidden for this app or token.
    ApiForbidden = 48002,
    /// 60011: no permission on the given member or department.
    NoPermission = 60011,
    /// 60020: caller IP not trusted.
    IpNotTrusted = 60020,
    /// 60111: userid does not exist.
    UserIdNotFound = 60111,
    /// 90206: mini program not linked to the corp.
    MiniprogramNotLinked = 90206,
    /// 90208: mini program appid mismatch.
    MiniprogramAppIdMismatch = 90208,
    /// 301017: voice must be AMR.
    VoiceMustBeAmr = 301017,
    /// 830002: media too large for one `media/get`; use ranges.
    MediaNeedsRange = 830002,
    /// 95000: invalid open_kfid.
    InvalidOpenKfId = 95000,
    /// 95001: send quota exhausted (5 messages per customer message).
    SendQuotaExhausted = 95001,
    /// 95002: more than 48 h since the customer's last message.
    SendWindowExpired = 95002,
    /// 95003: consultation-capacity limit (corp not verified).
    ConsultationCapacityLimit = 95003,
    /// 95004: open_kfid does not exist.
    OpenKfIdNotFound = 95004,
    /// 95005: account count limit.
    AccountCountLimit = 95005,
    /// 95006: invalid account name.
    InvalidAccountName = 95006,
    /// 95007: invalid sync_msg token (expired or forged); retry without it.
    InvalidMsgToken = 95007,
    /// 95008: too many menu items.
    TooManyMenuItems = 95008,
    /// 95009: invalid menu item type.
    InvalidMenuItemType = 95009,
    /// 95011: WeCom-mode corp called with a standalone-KF token.
    StandaloneTokenInWeComMode = 95011,
    /// 95012: standalone-mode corp called with a WeCom token.
    WeComTokenInStandaloneMode = 95012,
    /// 95013: session already ended.
    SessionEnded = 95013,
    /// 95014: not a servicer of this account, or not activated.
    NotAServicer = 95014,
    /// 95015: a dedicated service is already configured.
    DedicatedServiceConfigured = 95015,
    /// 95016: state transition not allowed.
    TransitionNotAllowed = 95016,
    /// 95017: API switch is off.
    ApiSwitchOff = 95017,
    /// 95018: the session state does not allow sending via the API.
    StateForbidsSending = 95018,
    /// 95019: servicer stopped receiving or is suspended.
    ServicerStopped = 95019,
    /// 95021: userid/chat_id not in the upgrade-service configuration.
    NotInUpgradeServiceConfig = 95021,
    /// 95022: invalid location_type.
    InvalidLocationType = 95022,
    /// 95023: API switch is granted to a 代开发 app.
    ApiSwitchGrantedToAgentApp = 95023,
    /// 95024: customer has not actively sent a message within 48 h.
    NoActiveCustomerMessage = 95024,
    /// 95025: at most one business-card message per 48 h.
    BusinessCardLimit = 95025,
    /// 95026: account usage too low to create more accounts.
    AccountUsageTooLow = 95026,
    /// 95027: unverified corp: at most 10 accounts.
    UnverifiedCorpAccountLimit = 95027,
    /// 95028: recall: msgid not found.
    RecallMsgNotFound = 95028,
    /// 95029: recall: more than 2 minutes since sending.
    RecallWindowExpired = 95029,
    /// 95030: message type forbidden by the KF-component settings.
    MsgTypeForbidden = 95030,
    /// 95031: customer has not consulted within 48 h.
    NoConsultationWithin48h = 95031,
    /// 95032: the KF component's chat-record permission has lapsed.
    ChatRecordPermissionLapsed = 95032,
}

impl ErrCode {
    /// Whether repeating the call later can succeed (-1, 45009, 45033).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrCode::SystemBusy | ErrCode::ApiFrequencyExceeded | ErrCode::ConcurrencyLimit
        )
    }

    /// Whether the access token was rejected (40001, 40014, 42001).
    pub fn is_token_invalid(self) -> bool {
        matches!(
            self,
            ErrCode::InvalidCredential | ErrCode::InvalidAccessToken | ErrCode::AccessTokenExpired
        )
    }
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrCode::Other(code) => write!(f, "{code}"),
            known => write!(f, "{} ({known:?})", known.code()),
        }
    }
}

impl From<i64> for ErrCode {
    fn from(code: i64) -> Self {
        ErrCode::from_code(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_round_trips_and_unknown_codes_are_kept() {
        for code in [-1, 0, 40014, 42001, 45009, 95007, 95032, 301017, 830002] {
            let parsed = ErrCode::from_code(code);
            assert!(!matches!(parsed, ErrCode::Other(_)), "{code}");
            assert_eq!(parsed.code(), code);
        }
        assert_eq!(ErrCode::from_code(12345), ErrCode::Other(12345));
        assert_eq!(ErrCode::Other(12345).code(), 12345);
    }

    #[test]
    fn predicates_classify_codes_as_errors_md_says() {
        let api = |code| Error::Api {
            endpoint: "kf/send_msg",
            code: ErrCode::from_code(code),
            errmsg: String::new(),
        };
        assert!(api(-1).is_retryable());
        assert!(api(45009).is_retryable() && api(45009).is_rate_limited());
        assert!(api(45033).is_rate_limited());
        assert!(api(40014).is_token_invalid() && api(42001).is_token_invalid());
        assert!(!api(40014).is_retryable());
        assert!(!api(95001).is_retryable() && !api(95001).is_token_invalid());
        let status = |status| Error::HttpStatus {
            endpoint: "kf/sync_msg",
            status,
            body: String::new(),
        };
        assert!(status(502).is_retryable());
        assert!(!status(404).is_retryable());
    }

    #[test]
    fn excerpts_are_cut_at_a_character_boundary() {
        let body = "好".repeat(300);
        let cut = excerpt(body.as_bytes());
        assert!(cut.len() <= BODY_EXCERPT_LIMIT + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(b"short"), "short");
    }

    #[test]
    fn error_text_names_the_endpoint_and_code() {
        let err = Error::Api {
            endpoint: "kf/sync_msg",
            code: ErrCode::InvalidMsgToken,
            errmsg: "invalid msg token".into(),
        };
        assert_eq!(
            err.to_string(),
            "kf/sync_msg: errcode 95007 (InvalidMsgToken): invalid msg token"
        );
    }
}
