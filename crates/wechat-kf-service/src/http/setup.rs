//! `GET /v1/setup`: what an operator checks when setting a deployment up and keeping it
//! healthy, in one body ([`SetupBody`]): the credentials, the callback URL to enter in the
//! WeCom admin and whether WeChat verified it, the last callbacks, the address WeChat sees the
//! service call from (its trusted-IP list, errcode 60020), the webhook's reachability, the
//! call budget's use and readiness. The console's Setup and health page shows the same body.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;
use wechat_kf::client::Client;

use super::auth::{Authorized, BearerToken};
use super::error::ErrorBody;
use crate::clock::Clock;
use crate::config::Secret;
use crate::error::safe_error;
use crate::metrics::{BudgetLine, CallbackResult, Metrics};
use crate::readiness::Readiness;
use crate::store::{ListQuery, Store};

/// How long a credentials check is reused: a page reloaded often must not call `gettoken` each
/// time (repeated wrong secrets can get the caller's IP blocked for an hour).
const CHECK_REUSED_FOR: Duration = Duration::from_secs(60);

/// How long the webhook's host gets to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the setup report reads. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SetupState {
    inner: Arc<Inner>,
}

/// What [`SetupState::new`] is built from.
pub(crate) struct SetupParts {
    /// The reply API's token (`GET /v1/setup` requires it); `None`: the route answers 401.
    pub(crate) token: Option<Secret>,
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) readiness: Readiness,
    /// The callback path, when callbacks are served.
    pub(crate) callback_path: Option<String>,
    /// `webhook.url`, when deliveries go to a webhook.
    pub(crate) webhook_url: Option<String>,
    /// Who answers the customers (see [`WebhookSetup::target`]).
    pub(crate) delivers_to: &'static str,
    /// Sandbox mode: WeChat is the embedded emulator.
    pub(crate) sandbox: bool,
    /// The service's own clock (when a check was made, the budget's windows).
    pub(crate) clock: Clock,
}

struct Inner {
    parts: SetupParts,
    /// The last credentials check and when it was made.
    checked: Mutex<Option<(Instant, Credentials)>>,
}

impl BearerToken for SetupState {
    fn bearer_token(&self) -> &Secret {
        static NONE: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
        // Without a reply-API token no bearer matches (an empty token never does).
        self.inner
            .parts
            .token
            .as_ref()
            .unwrap_or_else(|| NONE.get_or_init(|| Secret::new(String::new())))
    }

    fn auth_metrics(&self) -> &Metrics {
        &self.inner.parts.metrics
    }
}

impl SetupState {
    pub(crate) fn new(parts: SetupParts) -> Self {
        SetupState {
            inner: Arc::new(Inner {
                parts,
                checked: Mutex::new(None),
            }),
        }
    }
}

/// The credentials check: whether `gettoken` succeeds with `wechat.corp_id` and
/// `wechat.secret` (the token itself is never shown).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Credentials {
    /// The corp.
    pub(crate) corp_id: String,
    /// An access token was obtained (or a cached one is valid).
    pub(crate) ok: bool,
    /// WeChat's errcode when it refused (40001 wrong secret, 40013 wrong corp id, 60020 the
    /// caller's IP is not trusted, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errcode: Option<i64>,
    /// Why not, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// When the check was made (unix milliseconds; checks are reused for a minute).
    pub(crate) checked_at_ms: u64,
}

/// The callback endpoint and what came to it since start.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct CallbackSetup {
    /// Callbacks are served (a callback Token and EncodingAESKey are configured).
    pub(crate) enabled: bool,
    /// The URL to enter in the WeCom admin (WeChat Customer Service → API → callback), as this
    /// request reached the service (`X-Forwarded-Proto` and `Host`); behind a proxy, the public
    /// host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    /// The corp whose callbacks are verified and decrypted.
    pub(crate) corp_id: String,
    /// WeChat verified the URL (a `GET` with a valid signature and echostr was answered) since
    /// start, and when (unix milliseconds).
    pub(crate) verified: bool,
    /// When it was verified last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verified_at_ms: Option<u64>,
    /// The last callback accepted (unix milliseconds) for this corp, since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_accepted_at_ms: Option<u64>,
    /// Callbacks accepted since start.
    pub(crate) accepted: u64,
    /// The last callback refused as forged (another Token or EncodingAESKey, or another
    /// corp's), since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_forged_at_ms: Option<u64>,
    /// Callbacks refused as forged since start.
    pub(crate) forged: u64,
}

/// The trusted-IP hint (errcode 60020: the caller's IP is not in the app's trusted-IP list).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TrustedIp {
    /// The address WeChat last said the service called from (the `from ip:` of an errmsg):
    /// the one to add to the trusted IPs. Absent until WeChat answered an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) outbound_ip: Option<String>,
    /// When WeChat named it (unix milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seen_at_ms: Option<u64>,
    /// WeChat answered 60020 since start (errcode counts).
    pub(crate) refused_60020: bool,
    /// What to do, in words.
    pub(crate) hint: String,
}

/// Where deliveries go and whether that answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WebhookSetup {
    /// `webhook` (your bot), `stdout` (no webhook: JSON Lines), `echo` (the sandbox's echo
    /// bot), or a built-in responder (`openai`, `dify`).
    pub(crate) target: &'static str,
    /// The webhook's scheme, host and port (never its path or query, which may carry a key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) origin: Option<String>,
    /// The host accepted a TCP connection within 2 s (checked by this request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reachable: Option<bool>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Deliveries whose last attempt failed and that wait for a retry.
    pub(crate) failing_deliveries: usize,
    /// The last error of the newest of those.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
    /// Deliveries acknowledged and failed attempts since start.
    pub(crate) acknowledged: u64,
    /// Failed attempts since start.
    pub(crate) failed_attempts: u64,
}

/// `GET /v1/setup`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SetupBody {
    /// Sandbox mode: WeChat is the embedded emulator.
    pub(crate) sandbox: bool,
    /// Every readiness condition holds and the store answers (what `/readyz` says).
    pub(crate) ready: bool,
    /// Why not, one line per condition.
    pub(crate) not_ready: Vec<String>,
    /// The credentials check.
    pub(crate) credentials: Credentials,
    /// The callback endpoint.
    pub(crate) callback: CallbackSetup,
    /// The trusted-IP hint.
    pub(crate) trusted_ip: TrustedIp,
    /// The webhook.
    pub(crate) webhook: WebhookSetup,
    /// This instance's use of WeChat's call budget, per corp and API, in the current minute
    /// and hour.
    pub(crate) budget: Vec<BudgetLine>,
}

async fn credentials(state: &SetupState) -> Credentials {
    if let Some((at, checked)) = state
        .inner
        .checked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        if at.elapsed() < CHECK_REUSED_FOR {
            return checked;
        }
    }
    let parts = &state.inner.parts;
    let now_ms = u64::try_from(parts.clock.local_ms()).unwrap_or(0);
    let result = parts.client.token().await;
    let checked = match result {
        Ok(_) => Credentials {
            corp_id: parts.client.corp_id().to_owned(),
            ok: true,
            errcode: None,
            error: None,
            checked_at_ms: now_ms,
        },
        Err(e) => {
            parts.metrics.api_error("gettoken", &e);
            Credentials {
                corp_id: parts.client.corp_id().to_owned(),
                ok: false,
                errcode: e.errcode().map(|c| c.code()),
                error: Some(safe_error(&e)),
                checked_at_ms: now_ms,
            }
        }
    };
    *state
        .inner
        .checked
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), checked.clone()));
    checked
}

/// The URL to enter in the WeCom admin, as this request reached the service.
fn callback_url(headers: &HeaderMap, path: &str) -> Option<String> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })?;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    Some(format!(
        "{}://{host}{path}",
        if https { "https" } else { "http" }
    ))
}

/// The webhook's scheme, host and port, and whether the host accepts a connection.
async fn probe(url: &str) -> (Option<String>, Option<bool>, Option<String>) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return (None, Some(false), Some("webhook.url is not a URL".into()));
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return (None, Some(false), Some("webhook.url has no host".into()));
    };
    let origin = format!("{}://{host}:{port}", parsed.scheme());
    let address = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => (Some(origin), Some(true), None),
        Ok(Err(e)) => (
            Some(origin),
            Some(false),
            Some(format!("cannot connect: {e}")),
        ),
        Err(_) => (
            Some(origin),
            Some(false),
            Some("no connection within 2 s".into()),
        ),
    }
}

/// The setup report (what `GET /v1/setup` answers and the console shows).
pub(crate) async fn report(state: &SetupState, headers: &HeaderMap) -> SetupBody {
    let parts = &state.inner.parts;
    let m = &parts.metrics;
    let mut not_ready = parts.readiness.reasons();
    if parts.store.ping().await.is_err() {
        not_ready.push("store: does not answer".into());
    }
    let credentials = credentials(state).await;
    let verified_at_ms = m.callback_last_seen(CallbackResult::Verified);
    let callback = CallbackSetup {
        enabled: parts.callback_path.is_some(),
        url: parts
            .callback_path
            .as_deref()
            .and_then(|path| callback_url(headers, path)),
        corp_id: parts.client.corp_id().to_owned(),
        verified: verified_at_ms.is_some(),
        verified_at_ms,
        last_accepted_at_ms: m.callback_last_seen(CallbackResult::Accepted),
        accepted: m.callbacks(CallbackResult::Accepted),
        last_forged_at_ms: m.callback_last_seen(CallbackResult::Forged),
        forged: m.callbacks(CallbackResult::Forged),
    };
    let sees = m.wechat_sees();
    let refused_60020 = m.errcode_seen(60020) || credentials.errcode == Some(60020);
    let hint = match (&sees, refused_60020) {
        (Some((ip, _)), true) => format!(
            "WeChat refused a call with errcode 60020: add {ip} to the trusted IPs of the \
             app (WeCom admin → the app → trusted IPs); it takes about a minute to apply."
        ),
        (Some((ip, _)), false) => format!(
            "WeChat sees this service call from {ip}: if calls answer errcode 60020, add it \
             to the trusted IPs of the app."
        ),
        (None, true) => "WeChat refused a call with errcode 60020 without naming the address: \
             add the service's public outbound address to the trusted IPs of the app."
            .into(),
        (None, false) => "Not known yet: WeChat names the address it sees in its error \
             messages (\"from ip: …\"); none came since start. If calls answer errcode 60020, \
             add the service's public outbound address to the trusted IPs of the app."
            .into(),
    };
    let trusted_ip = TrustedIp {
        outbound_ip: sees.as_ref().map(|(ip, _)| ip.clone()),
        seen_at_ms: sees.as_ref().map(|(_, at)| *at),
        refused_60020,
        hint,
    };
    let failing = parts
        .store
        .list_deliveries(ListQuery {
            failed: true,
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap_or_default();
    let (origin, reachable, error) = match &parts.webhook_url {
        Some(url) => probe(url).await,
        None => (None, None, None),
    };
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let webhook = WebhookSetup {
        target: parts.delivers_to,
        origin,
        reachable,
        error,
        failing_deliveries: failing.len(),
        last_error: failing.first().and_then(|d| d.last_error.clone()),
        acknowledged: load(&m.deliveries_ok),
        failed_attempts: load(&m.deliveries_failed),
    };
    SetupBody {
        sandbox: parts.sandbox,
        ready: not_ready.is_empty(),
        not_ready,
        credentials,
        callback,
        trusted_ip,
        webhook,
        budget: m.budget_use(u64::try_from(parts.clock.local_ms()).unwrap_or(0)),
    }
}

/// The setup routes (the reply API's token).
pub(crate) fn routes(state: SetupState) -> axum::Router {
    axum::Router::new()
        .route("/v1/setup", axum::routing::get(setup))
        .with_state(state)
}

/// The setup and health report: credentials check, the callback URL to enter in the WeCom
/// admin and whether WeChat verified it, the last callbacks, the address WeChat sees the
/// service call from (trusted IPs, errcode 60020), the webhook's reachability, the call
/// budget's use and readiness. What the console's Setup and health page shows.
#[utoipa::path(
    get,
    path = "/v1/setup",
    tag = "operations API",
    responses(
        (status = 200, description = "The report (also when something in it is wrong: read `ready`, `credentials.ok`, `webhook.reachable`).", body = SetupBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn setup(
    State(state): State<SetupState>,
    _: Authorized,
    headers: HeaderMap,
) -> Json<SetupBody> {
    Metrics::add(&state.inner.parts.metrics.api_requests_ok, 1);
    Json(report(&state, &headers).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_callback_url_is_the_one_the_request_reached() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("kf.example.com"));
        assert_eq!(
            callback_url(&headers, "/callback").as_deref(),
            Some("http://kf.example.com/callback")
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(
            callback_url(&headers, "/callback").as_deref(),
            Some("https://kf.example.com/callback")
        );
        headers.insert("host", HeaderValue::from_static("evil\"><script>"));
        assert_eq!(callback_url(&headers, "/callback"), None);
    }

    #[tokio::test]
    async fn a_webhook_nobody_listens_on_is_unreachable_and_its_path_is_never_shown() {
        let closed = wechat_kf_test_support::ClosedPort::new();
        let url = format!("{}/hook?key=secret", closed.url());
        let (origin, reachable, error) = probe(&url).await;
        assert_eq!(reachable, Some(false));
        assert!(error.is_some());
        let origin = origin.unwrap();
        assert!(
            !origin.contains("secret") && !origin.contains("/hook"),
            "{origin}"
        );
    }
}
