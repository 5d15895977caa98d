//! The web console at `/console`: server-rendered pages ([`pages`]) over the same functions the
//! HTTP API answers with (`conversations::list`/`show`, the sandbox chat, the store listings,
//! the send policy), live updates over Server-Sent Events, and its two assets inside the binary.
//!
//! Access: a login form asks for `console.token`; a match sets an `HttpOnly; SameSite=Strict`
//! session cookie (12 hours, in memory: a restart logs everyone out). Every state-changing
//! request carries the session's CSRF token (a form field, or the `x-csrf-token` header of the
//! page's script) and, when the browser sends one, an `Origin` of this host. Failed logins are
//! rate-limited (at most [`MAX_FAILURES`] a minute across all clients, then 429).

mod pages;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use futures::Stream;
use maud::Markup;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use wechat_kf::OpenKfId;
use wechat_kf::client::Client;

use super::auth::token_matches;
use super::conversations::{self, ConversationParams};
use super::error::ApiError;
use super::sandbox_api::{CustomerMsgType, CustomerText, SandboxChat};
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::puller::Pullers;
use crate::replies::{parse_send_msg, parse_transfer};
use crate::send_policy::{Gate, SendOutcome};
use crate::sender::transfer_and_greet;
use crate::store::{ListQuery, Store};

/// The session cookie's name.
const COOKIE: &str = "wkc_session";

/// How long a console session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions held at once (the oldest is dropped).
const MAX_SESSIONS: usize = 1000;

/// Failed logins allowed per minute, across all clients.
pub(crate) const MAX_FAILURES: usize = 10;

/// The stylesheet, inside the binary.
const CSS: &str = include_str!("console.css");

/// The page script (progressive enhancement: every page works without it).
const JS: &str = include_str!("console.js");

/// A logged-in browser.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// What the console reads and acts through. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ConsoleState {
    inner: Arc<Inner>,
}

/// What [`ConsoleState::new`] is built from.
pub(crate) struct ConsoleParts {
    pub(crate) token: Secret,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) client: Client,
    pub(crate) pullers: Arc<Pullers>,
    /// The sandbox's chat and demo account.
    pub(crate) sandbox: Option<(SandboxChat, OpenKfId)>,
    /// Retry now / give up.
    pub(crate) deliveries: crate::delivery::DeliveryControl,
    /// `media.download_dir`.
    pub(crate) media_dir: Option<std::path::PathBuf>,
    /// The stage messages and servicer choice of transfers.
    pub(crate) conversations: Arc<crate::conversation::Conversations>,
    /// The session changes of transfers.
    pub(crate) recorder: Arc<crate::sender::Recorder>,
    /// The setup and health report (`GET /v1/setup`).
    pub(crate) setup: super::setup::SetupState,
}

struct Inner {
    parts: ConsoleParts,
    sessions: Mutex<HashMap<String, Session>>,
    /// When recent logins failed.
    failures: Mutex<VecDeque<Instant>>,
}

impl ConsoleState {
    pub(crate) fn new(parts: ConsoleParts) -> Self {
        ConsoleState {
            inner: Arc::new(Inner {
                parts,
                sessions: Mutex::new(HashMap::new()),
                failures: Mutex::new(VecDeque::new()),
            }),
        }
    }

    fn parts(&self) -> &ConsoleParts {
        &self.inner.parts
    }

    /// Whether another failed login is allowed now (and counts this one when not).
    fn login_allowed(&self) -> bool {
        let mut failures = self
            .inner
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            failures.pop_front();
        }
        failures.len() < MAX_FAILURES
    }

    fn record_failure(&self) {
        let mut failures = self
            .inner
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failures.push_back(Instant::now());
        if failures.len() > MAX_FAILURES * 2 {
            failures.pop_front();
        }
    }

    fn new_session(&self) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            csrf: random_hex(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    fn session(&self, id: &str) -> Option<Session> {
        let sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    fn end_session(&self, id: &str) {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// A number that changes whenever a message is stored or delivered or a reply finishes:
    /// the live pages reload their parts when it does.
    fn activity(&self) -> u64 {
        let m = &self.parts().metrics;
        [
            &m.messages_stored,
            &m.messages_delivered,
            &m.deliveries_ok,
            &m.deliveries_failed,
            &m.delivery_retries,
            &m.replies_sent,
            &m.replies_failed,
            &m.reply_retries,
            &m.replies_joined,
            &m.api_requests_ok,
            &m.api_requests_failed,
        ]
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A logged-in request: its session id and CSRF token. Without a valid session a page
/// request is sent to the login form.
struct LoggedIn {
    id: String,
    csrf: String,
}

impl FromRequestParts<ConsoleState> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let id = cookie(&parts.headers, COOKIE).unwrap_or_default();
        match state.session(id) {
            Some(session) => Ok(LoggedIn {
                id: id.to_owned(),
                csrf: session.csrf,
            }),
            None => Err(Redirect::to("/console/login").into_response()),
        }
    }
}

impl LoggedIn {
    /// Refuses a state-changing request without this session's CSRF token, or from another
    /// origin.
    fn check(&self, headers: &HeaderMap, given: Option<&str>) -> Result<(), &'static str> {
        let given = given
            .filter(|g| !g.is_empty())
            .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
            .unwrap_or_default();
        let same = !given.is_empty() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()));
        if let (Some(origin), Some(host)) = (
            headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
            headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        ) {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            if origin_host != host {
                return Err("the request comes from another origin");
            }
        }
        if same {
            Ok(())
        } else {
            Err("missing or wrong CSRF token: reload the page and try again")
        }
    }
}

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, pages::message_page("Refused", why)).into_response()
}

/// An action's failure, shown as a page (or as JSON to the page's script).
fn failed(error: ApiError) -> Response {
    error.into_response()
}

/// The console's routes.
pub(crate) fn routes(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/events", get(events))
        .route("/console/sandbox", get(sandbox_page))
        .route("/console/sandbox/send", post(sandbox_send))
        .route("/console/sandbox/servicer", post(sandbox_servicer))
        .route("/console/fragments/chat", get(chat_fragment))
        .route("/console/conversations", get(conversations_page))
        .route(
            "/console/fragments/conversations",
            get(conversations_fragment),
        )
        .route(
            "/console/conversations/{open_kfid}/{external_userid}",
            get(conversation_page),
        )
        .route(
            "/console/fragments/conversation/{open_kfid}/{external_userid}",
            get(conversation_fragment),
        )
        .route(
            "/console/conversations/{open_kfid}/{external_userid}/reply",
            post(reply),
        )
        .route(
            "/console/conversations/{open_kfid}/{external_userid}/transfer",
            post(transfer),
        )
        .route("/console/media/{open_kfid}/{msgid}", get(media_file))
        .route("/console/deliveries", get(deliveries_page))
        .route("/console/fragments/deliveries", get(deliveries_fragment))
        .route("/console/deliveries/{id}/{action}", post(delivery_action))
        .route(
            "/console/messages/{open_kfid}/{msgid}/replay",
            post(replay_action),
        )
        .route("/console/accounts", get(accounts_page))
        .route("/console/accounts/contact_way", post(contact_way))
        .route("/console/health", get(health_page))
        .with_state(state)
}

/// When no console token is configured: every console URL says how to turn it on.
pub(crate) fn disabled_routes() -> Router {
    async fn off() -> Response {
        (
            StatusCode::NOT_FOUND,
            pages::message_page(
                "The console is off",
                "Set console.token (WECHAT_KF_CONSOLE_TOKEN or --console-token) and restart.",
            ),
        )
            .into_response()
    }
    Router::new()
        .route("/console", get(off))
        .route("/console/{*rest}", get(off).post(off))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

async fn home(State(state): State<ConsoleState>, _: LoggedIn) -> Redirect {
    if state.parts().sandbox.is_some() {
        Redirect::to("/console/sandbox")
    } else {
        Redirect::to("/console/conversations")
    }
}

async fn login_form() -> Markup {
    pages::login(None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !state.login_allowed() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("60"))],
            pages::login(Some("Too many failed logins: wait a minute.")),
        )
            .into_response();
    }
    let given = form.map(|Form(f)| f.token).unwrap_or_default();
    if !token_matches(given.trim(), state.parts().token.expose()) {
        state.record_failure();
        tracing::info!("console login refused: wrong token");
        return (StatusCode::UNAUTHORIZED, pages::login(Some("Wrong token."))).into_response();
    }
    let (id, _) = state.new_session();
    // Behind a TLS-terminating proxy the cookie is also `Secure` (never sent over plain HTTP).
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/console").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let given = form.ok().map(|Form(f)| f.csrf);
    if let Err(why) = session.check(&headers, given.as_deref()) {
        return forbidden(why);
    }
    state.end_session(&session.id);
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "wkc_session=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0",
        ),
    );
    response
}

/// `change` events whenever [`ConsoleState::activity`] moves (checked every 250 ms), and a
/// keep-alive comment every 15 s.
async fn events(
    State(state): State<ConsoleState>,
    _: LoggedIn,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = state.activity();
    let stream = futures::stream::unfold((state, first), |(state, mut seen)| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = state.activity();
            if now != seen {
                seen = now;
                let event = Event::default().event("change").data(now.to_string());
                return Some((Ok(event), (state, seen)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The account and customer a sandbox page shows.
#[derive(Debug, Default, Deserialize)]
struct ChatQuery {
    open_kfid: Option<String>,
    customer: Option<String>,
}

/// The default customer of the sandbox page.
const DEMO_CUSTOMER: &str = crate::sandbox::DEMO_CUSTOMER;

impl ChatQuery {
    fn resolve(self, demo: &OpenKfId) -> (String, String) {
        (
            self.open_kfid
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| demo.to_string()),
            self.customer
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| DEMO_CUSTOMER.to_owned()),
        )
    }
}

fn not_sandbox() -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::message_page(
            "Sandbox mode only",
            "The sandbox page exists when the service runs without WeChat credentials.",
        ),
    )
        .into_response()
}

async fn sandbox_page(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    query: Result<Query<ChatQuery>, QueryRejection>,
) -> Response {
    let Some((chat, demo)) = &state.parts().sandbox else {
        return not_sandbox();
    };
    let (open_kfid, customer) = query.map(|Query(q)| q).unwrap_or_default().resolve(demo);
    let accounts = chat.accounts();
    let customer_chat = chat.chat(&open_kfid, &customer);
    let conversation = conversations::show(
        &*state.parts().store,
        &state.parts().gate,
        &open_kfid,
        &customer,
        None,
    )
    .await;
    pages::sandbox(
        &session.csrf,
        &accounts,
        &open_kfid,
        &customer,
        customer_chat.as_ref().ok(),
        conversation.as_ref().ok(),
    )
    .into_response()
}

async fn chat_fragment(
    State(state): State<ConsoleState>,
    _: LoggedIn,
    query: Result<Query<ChatQuery>, QueryRejection>,
) -> Response {
    let Some((chat, demo)) = &state.parts().sandbox else {
        return not_sandbox();
    };
    let (open_kfid, customer) = query.map(|Query(q)| q).unwrap_or_default().resolve(demo);
    match chat.chat(&open_kfid, &customer) {
        Ok(chat) => pages::customer_pane(&chat).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct SandboxSendForm {
    #[serde(default)]
    csrf: String,
    open_kfid: String,
    customer: String,
    #[serde(default)]
    text: String,
    /// The button pressed: `image` or `voice` (else a text).
    #[serde(default)]
    send: String,
}

async fn sandbox_send(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    form: Result<Form<SandboxSendForm>, FormRejection>,
) -> Response {
    let Some((chat, _)) = &state.parts().sandbox else {
        return not_sandbox();
    };
    let form = match posted(&session, &headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let back = format!(
        "/console/sandbox?open_kfid={}&customer={}",
        pages::query_escape(&form.open_kfid),
        pages::query_escape(&form.customer)
    );
    let msgtype = match form.send.as_str() {
        "image" => CustomerMsgType::Image,
        "voice" => CustomerMsgType::Voice,
        _ => CustomerMsgType::Text,
    };
    match chat.send(CustomerText {
        open_kfid: form.open_kfid,
        external_userid: form.customer,
        msgtype,
        text: Some(form.text),
    }) {
        Ok(sent) if wants_json(&headers) => Json(sent).into_response(),
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct ServicerForm {
    #[serde(default)]
    csrf: String,
    open_kfid: String,
    customer: String,
    /// `pick` or `end` (not `action`: a form field of that name hides the form's own).
    hook: String,
}

/// A servicer takes or ends the session: `POST /v1/sandbox/servicer`.
async fn sandbox_servicer(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    form: Result<Form<ServicerForm>, FormRejection>,
) -> Response {
    let Some((chat, _)) = &state.parts().sandbox else {
        return not_sandbox();
    };
    let form = match posted(&session, &headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let action = match form.hook.as_str() {
        "pick" => super::sandbox_api::HookAction::Pick,
        "end" => super::sandbox_api::HookAction::End,
        _ => return failed(ApiError::BadRequest("the action is pick or end".into())),
    };
    let back = format!(
        "/console/sandbox?open_kfid={}&customer={}",
        pages::query_escape(&form.open_kfid),
        pages::query_escape(&form.customer)
    );
    let notice = match chat
        .servicer(super::sandbox_api::ServicerHook {
            open_kfid: form.open_kfid,
            external_userid: form.customer,
            action,
            servicer_userid: None,
        })
        .await
    {
        Ok(_) => "Done.".to_owned(),
        Err(e) => e.message(),
    };
    if wants_json(&headers) {
        Json(json!({"notice": notice})).into_response()
    } else {
        Redirect::to(&back).into_response()
    }
}

/// The page's script asks for JSON; a plain form post gets a redirect.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[derive(Debug, Default, Deserialize)]
struct ListQueryForm {
    open_kfid: Option<String>,
}

async fn conversation_list(
    state: &ConsoleState,
    open_kfid: Option<String>,
) -> Result<conversations::ConversationList, ApiError> {
    conversations::list(
        &*state.parts().store,
        state.parts().gate.clock.now_u64(),
        ConversationParams {
            open_kfid,
            limit: Some(200),
        },
    )
    .await
}

async fn conversations_page(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    query: Result<Query<ListQueryForm>, QueryRejection>,
) -> Response {
    let open_kfid = query
        .ok()
        .and_then(|Query(q)| q.open_kfid)
        .filter(|k| !k.is_empty());
    let accounts: Vec<String> = state
        .parts()
        .pullers
        .accounts()
        .iter()
        .map(ToString::to_string)
        .collect();
    match conversation_list(&state, open_kfid.clone()).await {
        Ok(list) => pages::conversations(&session.csrf, &list, &accounts, open_kfid.as_deref())
            .into_response(),
        Err(e) => failed(e),
    }
}

async fn conversations_fragment(
    State(state): State<ConsoleState>,
    _: LoggedIn,
    query: Result<Query<ListQueryForm>, QueryRejection>,
) -> Response {
    let open_kfid = query.ok().and_then(|Query(q)| q.open_kfid);
    match conversation_list(&state, open_kfid).await {
        Ok(list) => pages::conversation_rows(&list).into_response(),
        Err(e) => failed(e),
    }
}

async fn one_conversation(
    state: &ConsoleState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String, conversations::ConversationBody), ApiError> {
    let Path((open_kfid, customer)) =
        path.map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
    let body = conversations::show(
        &*state.parts().store,
        &state.parts().gate,
        &open_kfid,
        &customer,
        None,
    )
    .await?;
    Ok((open_kfid, customer, body))
}

async fn conversation_page(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match one_conversation(&state, path).await {
        Ok((open_kfid, customer, body)) => {
            pages::conversation(&session.csrf, &open_kfid, &customer, &body, None).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn conversation_fragment(
    State(state): State<ConsoleState>,
    _: LoggedIn,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match one_conversation(&state, path).await {
        Ok((_, _, body)) => pages::history(&body).into_response(),
        Err(e) => failed(e),
    }
}

/// A posted form, read and checked: unreadable → 400, a missing or wrong CSRF token → 403.
// The error is the handler's whole answer, returned at once: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn posted<T>(
    session: &LoggedIn,
    headers: &HeaderMap,
    form: Result<Form<T>, FormRejection>,
    csrf: impl FnOnce(&T) -> &str,
) -> Result<T, Response> {
    let Form(form) = form.map_err(|e| {
        failed(ApiError::BadRequest(format!(
            "invalid form: {}",
            e.body_text()
        )))
    })?;
    session
        .check(headers, Some(csrf(&form)))
        .map_err(forbidden)?;
    Ok(form)
}

#[derive(Deserialize)]
struct ReplyForm {
    #[serde(default)]
    csrf: String,
    text: String,
}

/// Reply as the account: the same send policy as `POST /v1/messages`.
async fn reply(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<ReplyForm>, FormRejection>,
) -> Response {
    let form = match posted(&session, &headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let result = async {
        let Path((open_kfid, customer)) =
            path.map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        super::reply_api::valid_id(crate::ids::IdKind::OpenKfId, "open_kfid", &open_kfid)?;
        super::reply_api::valid_id(crate::ids::IdKind::ExternalUserId, "touser", &customer)?;
        let parsed = parse_send_msg(&json!({
            "touser": customer, "open_kfid": open_kfid,
            "msgtype": "text", "text": {"content": form.text},
        }))
        .map_err(ApiError::BadRequest)?;
        parsed
            .request
            .message()
            .validate(state.parts().client.menu_rules())
            .map_err(|e| ApiError::Api(e.into()))?;
        let body = serde_json::to_string(&parsed.request).unwrap_or_default();
        let gate = &state.parts().gate;
        let outcome = gate
            .send(&parsed.open_kfid, &parsed.touser, parsed.request)
            .await;
        // In the history like the reply API's sends.
        super::reply_api::record_send(
            "console",
            gate,
            &parsed.open_kfid,
            &parsed.touser,
            parsed.msgid,
            body,
            &outcome,
        )
        .await;
        Ok::<_, ApiError>((open_kfid, customer, outcome))
    }
    .await;
    let (open_kfid, customer, outcome) = match result {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let notice = match outcome {
        SendOutcome::Sent(_) => "Sent.".to_owned(),
        SendOutcome::Refused { refusal, .. } => format!(
            "Not sent: {} ({}).",
            crate::send_policy::reason(&refusal),
            refusal.errcode()
        ),
        SendOutcome::Failed(e) => format!("Not sent: {}.", crate::error::safe_error(&e)),
    };
    after_action(&state, &session, &headers, &open_kfid, &customer, notice).await
}

#[derive(Deserialize)]
struct TransferForm {
    #[serde(default)]
    csrf: String,
    /// 2 the queue, 3 a servicer, 4 end.
    service_state: u32,
    #[serde(default)]
    servicer_userid: String,
}

/// Transfer to the queue or a servicer, or end the session: `POST /v1/service_state/trans`.
async fn transfer(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<TransferForm>, FormRejection>,
) -> Response {
    let form = match posted(&session, &headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let Ok(Path((open_kfid, customer))) = path else {
        return failed(ApiError::BadRequest("invalid path".into()));
    };
    let result = async {
        super::reply_api::valid_id(crate::ids::IdKind::OpenKfId, "open_kfid", &open_kfid)?;
        super::reply_api::valid_id(
            crate::ids::IdKind::ExternalUserId,
            "external_userid",
            &customer,
        )?;
        let mut body = json!({
            "open_kfid": open_kfid, "external_userid": customer,
            "service_state": form.service_state,
        });
        if !form.servicer_userid.is_empty() {
            super::reply_api::valid_id(
                crate::ids::IdKind::UserId,
                "servicer_userid",
                &form.servicer_userid,
            )?;
            body["servicer_userid"] = json!(form.servicer_userid);
        }
        let transfer = parse_transfer(&body).map_err(ApiError::BadRequest)?;
        let parts = state.parts();
        transfer_and_greet(
            &parts.client,
            Some(&parts.gate),
            &parts.conversations,
            &parts.recorder,
            &parts.metrics,
            &transfer,
            "console",
        )
        .await
        .map_err(ApiError::Api)
    }
    .await;
    let notice = match result {
        Ok(_) => "Done.".to_owned(),
        Err(ApiError::Api(e)) => format!("Not done: {}.", crate::error::safe_error(&e)),
        Err(e) => return failed(e),
    };
    after_action(&state, &session, &headers, &open_kfid, &customer, notice).await
}

/// The answer after an action: JSON for the script, the conversation with a notice otherwise.
async fn after_action(
    state: &ConsoleState,
    session: &LoggedIn,
    headers: &HeaderMap,
    open_kfid: &str,
    customer: &str,
    notice: String,
) -> Response {
    if wants_json(headers) {
        return Json(json!({"notice": notice})).into_response();
    }
    match conversations::show(
        &*state.parts().store,
        &state.parts().gate,
        open_kfid,
        customer,
        None,
    )
    .await
    {
        Ok(body) => pages::conversation(&session.csrf, open_kfid, customer, &body, Some(&notice))
            .into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Default, Deserialize)]
struct MediaQuery {
    #[serde(default)]
    converted: bool,
}

/// A message's downloaded media: `GET /v1/media/{open_kfid}/{msgid}`.
async fn media_file(
    State(state): State<ConsoleState>,
    _: LoggedIn,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<MediaQuery>, QueryRejection>,
) -> Response {
    let Ok(Path((open_kfid, msgid))) = path else {
        return failed(ApiError::BadRequest("invalid path".into()));
    };
    let converted = query.map(|Query(q)| q.converted).unwrap_or_default();
    match super::reply_api::media(
        &*state.parts().store,
        state.parts().media_dir.as_deref(),
        &open_kfid,
        &msgid,
        converted,
    )
    .await
    {
        Ok(file) => file.into_response(),
        Err(e) => failed(e),
    }
}

/// Retry now / give up: `POST /v1/deliveries/{id}/retry`, `/give_up`.
async fn delivery_action(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let given = form.ok().map(|Form(f)| f.csrf);
    if let Err(why) = session.check(&headers, given.as_deref()) {
        return forbidden(why);
    }
    let Ok(Path((id, action))) = path else {
        return failed(ApiError::BadRequest("invalid path".into()));
    };
    let action = match action.as_str() {
        "retry" => crate::delivery::Action::RetryNow,
        "give_up" => crate::delivery::Action::GiveUp,
        _ => {
            return failed(ApiError::BadRequest(
                "the action is retry or give_up".into(),
            ));
        }
    };
    let notice =
        match super::reply_api::delivery_action(&state.parts().deliveries, &id, action).await {
            Ok(done) if done.result == "retrying" => format!("Delivery {id}: retrying now."),
            Ok(_) => format!("Delivery {id}: given up."),
            Err(e) => format!("Delivery {id}: {}", e.message()),
        };
    if wants_json(&headers) {
        return Json(json!({"notice": notice})).into_response();
    }
    deliveries_view(&state, &session, Some(&notice)).await
}

/// Replay a delivered message: `POST /v1/messages/{open_kfid}/{msgid}/replay`.
async fn replay_action(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let given = form.ok().map(|Form(f)| f.csrf);
    if let Err(why) = session.check(&headers, given.as_deref()) {
        return forbidden(why);
    }
    let Ok(Path((open_kfid, msgid))) = path else {
        return failed(ApiError::BadRequest("invalid path".into()));
    };
    let parts = state.parts();
    let notice = match super::reply_api::replay(
        &*parts.store,
        &parts.deliveries,
        &open_kfid,
        &msgid,
    )
    .await
    {
        Ok(_) => format!("Message {msgid}: replaying to the bot."),
        Err(e) => format!("Message {msgid}: {}", e.message()),
    };
    if wants_json(&headers) {
        return Json(json!({"notice": notice})).into_response();
    }
    deliveries_view(&state, &session, Some(&notice)).await
}

async fn deliveries_page(State(state): State<ConsoleState>, session: LoggedIn) -> Response {
    deliveries_view(&state, &session, None).await
}

async fn deliveries_fragment(State(state): State<ConsoleState>, session: LoggedIn) -> Response {
    match deliveries_rows(&state).await {
        Ok(rows) => pages::deliveries_tables(&session.csrf, &rows).into_response(),
        Err(e) => failed(e),
    }
}

/// The deliveries waiting and the queued replies, newest first (as `GET /v1/deliveries`,
/// `GET /v1/sends`).
async fn deliveries_rows(state: &ConsoleState) -> Result<pages::DeliveryRows, ApiError> {
    let query = ListQuery {
        limit: 200,
        ..ListQuery::default()
    };
    let store = &state.parts().store;
    match (
        store.list_deliveries(query.clone()).await,
        store.list_sends(query).await,
        store
            .list_messages(ListQuery {
                limit: 50,
                ..ListQuery::default()
            })
            .await,
    ) {
        (Ok(deliveries), Ok(sends), Ok(messages)) => Ok(pages::DeliveryRows {
            deliveries,
            sends,
            messages,
        }),
        _ => Err(ApiError::StoreUnavailable),
    }
}

async fn deliveries_view(
    state: &ConsoleState,
    session: &LoggedIn,
    notice: Option<&str>,
) -> Response {
    match deliveries_rows(state).await {
        Ok(rows) => pages::deliveries(&session.csrf, &rows, notice).into_response(),
        Err(e) => failed(e),
    }
}

/// The accounts and their servicers: `GET /v1/accounts`.
async fn account_list(state: &ConsoleState) -> super::accounts::AccountList {
    let parts = state.parts();
    super::accounts::list(&parts.client, &parts.pullers, &parts.metrics).await
}

async fn accounts_page(State(state): State<ConsoleState>, session: LoggedIn) -> Markup {
    pages::accounts(&session.csrf, &account_list(&state).await, None)
}

#[derive(Deserialize)]
struct ContactWayForm {
    #[serde(default)]
    csrf: String,
    open_kfid: String,
    #[serde(default)]
    scene: String,
}

/// A contact-way link (`POST /v1/contact_ways`), shown with its QR code.
async fn contact_way(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
    form: Result<Form<ContactWayForm>, FormRejection>,
) -> Response {
    let form = match posted(&session, &headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let made = super::reply_api::contact_way(
        &state.parts().client,
        super::reply_api::ContactWayBody {
            open_kfid: form.open_kfid.clone(),
            scene: Some(form.scene.clone()),
        },
    )
    .await;
    let shown = match made {
        Ok(way) => pages::ContactWay::Made {
            open_kfid: form.open_kfid,
            scene: form.scene,
            url: way.url,
        },
        Err(e) => pages::ContactWay::Failed(e.message()),
    };
    pages::accounts(&session.csrf, &account_list(&state).await, Some(&shown)).into_response()
}

async fn health_page(
    State(state): State<ConsoleState>,
    session: LoggedIn,
    headers: HeaderMap,
) -> Markup {
    let parts = state.parts();
    let report = super::setup::report(&parts.setup, &headers).await;
    let m = &parts.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let counters = vec![
        ("pulls", load(&m.pulls)),
        ("pull errors", load(&m.pull_errors)),
        ("messages stored", load(&m.messages_stored)),
        ("messages delivered", load(&m.messages_delivered)),
        ("replies sent", load(&m.replies_sent)),
        ("replies failed", load(&m.replies_failed)),
        ("reply-API requests", load(&m.api_requests_ok)),
    ];
    pages::health(&session.csrf, &report, &counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wkc_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn a_foreign_origin_or_a_wrong_csrf_token_is_refused() {
        let session = LoggedIn {
            id: "s".into(),
            csrf: "right".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(session.check(&headers, Some("right")).is_ok());
        assert!(session.check(&headers, Some("wrong")).is_err());
        assert!(session.check(&headers, None).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(session.check(&headers, Some("right")).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(session.check(&headers, Some("right")).is_err());
    }
}
