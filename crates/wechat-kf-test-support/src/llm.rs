//! Stand-in model servers: an OpenAI-compatible server (chat completions, transcriptions) and
//! Dify's chat-messages API, on loopback ports of their own, for the responders' tests.
//!
//! Each one records every request (path, `Authorization` header, body), answers with scripted
//! [`Reply`]s in order or with a default answer that echoes the question, and checks what it
//! receives against the protocol: an OpenAI chat request must deserialize into `async-openai`'s
//! `CreateChatCompletionRequest`, a Dify request must carry the fields Dify requires. A request
//! that does not is answered 400 with the protocol's error body and recorded with its
//! [`Recorded::problem`], so a test can assert on the reason instead of on a timeout.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use wechat_kf_test_support::llm::{OpenAiStandIn, Reply};
//!
//! let model = OpenAiStandIn::start().await;
//! model.push(Reply::text("Hello!").usage(12, 3));
//! // Point the code under test at `model.base_url()`, then:
//! assert!(model.requests().is_empty());
//! # }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_openai::types::audio::AudioResponseFormat;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageContent,
    ChatCompletionRequestUserMessageContentPart, CreateChatCompletionRequest,
};
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

/// OpenAI's own limit on an uploaded audio file (real servers answer 413 beyond it).
const TRANSCRIPTION_BODY_LIMIT: usize = 25 * 1024 * 1024;
/// Chat and Dify bodies: the history of one conversation, far below this.
const JSON_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Usage reported when a reply does not set its own.
const DEFAULT_USAGE: (u32, u32) = (10, 5);
/// What `/audio/transcriptions` answers until `set_transcript`.
const DEFAULT_TRANSCRIPT: &str = "stand-in transcript";

/// One scripted answer. Builder style; `Reply::default()` = 200, no delay, default content.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    status: Option<StatusCode>,
    content: Option<String>,
    tool_call: Option<(String, String)>,
    delay: Option<Duration>,
    usage: Option<(u32, u32)>,
}

impl Reply {
    /// 200 with this content.
    pub fn text(content: impl Into<String>) -> Reply {
        Reply {
            content: Some(content.into()),
            ..Reply::default()
        }
    }

    /// An error status with the protocol's error body: OpenAI's
    /// `{"error":{"message","type","param","code"}}`, Dify's `{"code","message","status"}`.
    /// A 2xx code answers normally with that status.
    ///
    /// # Panics
    /// When `code` is not an HTTP status (test code: a typo should stop the test).
    pub fn status(code: u16) -> Reply {
        let status = StatusCode::from_u16(code)
            .unwrap_or_else(|_| panic!("Reply::status({code}): not an HTTP status code"));
        Reply {
            status: Some(status),
            ..Reply::default()
        }
    }

    /// 200 with `finish_reason` `"tool_calls"`, one function tool call (id `call_<n>`, counted
    /// per stand-in from 1) and `content` null. Dify has no tool calls in its answer: there this
    /// is an ordinary answer.
    pub fn tool_call(name: &str, arguments_json: &str) -> Reply {
        Reply {
            tool_call: Some((name.to_owned(), arguments_json.to_owned())),
            ..Reply::default()
        }
    }

    /// Waits `d` before answering; the request stays open meanwhile and other requests are
    /// answered as usual.
    pub fn delay(self, d: Duration) -> Reply {
        Reply {
            delay: Some(d),
            ..self
        }
    }

    /// The usage reported (`total_tokens` is the sum); default 10 + 5.
    pub fn usage(self, prompt_tokens: u32, completion_tokens: u32) -> Reply {
        Reply {
            usage: Some((prompt_tokens, completion_tokens)),
            ..self
        }
    }

    fn usage_json(&self) -> Value {
        let (prompt, completion) = self.usage.unwrap_or(DEFAULT_USAGE);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
        })
    }

    /// `Some(status)` when this reply is an error answer.
    fn error_status(&self) -> Option<StatusCode> {
        self.status.filter(|status| !status.is_success())
    }
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The `Authorization` header as received.
    pub authorization: Option<String>,
    /// The JSON body; for multipart, an object of the text fields. A body that is not JSON is
    /// kept as a JSON string of its text.
    pub body: Value,
    /// The multipart file part (transcriptions).
    pub file: Option<RecordedFile>,
    /// `Some(why)` when the request did not match the protocol's types (it was answered 400).
    pub problem: Option<String>,
}

/// The file part of a multipart request.
#[derive(Clone, Debug)]
pub struct RecordedFile {
    /// The part's file name (empty when the part had none; that request has a problem).
    pub file_name: String,
    /// The part's `Content-Type`.
    pub content_type: Option<String>,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Requests of one kind, in arrival order, and a signal for those waiting for them.
struct Log {
    what: &'static str,
    entries: Mutex<Vec<Recorded>>,
    count: tokio::sync::watch::Sender<usize>,
}

impl Log {
    fn new(what: &'static str) -> Log {
        Log {
            what,
            entries: Mutex::new(Vec::new()),
            count: tokio::sync::watch::Sender::new(0),
        }
    }

    fn push(&self, recorded: Recorded) {
        let mut entries = lock(&self.entries);
        entries.push(recorded);
        // Under the lock, so that two requests never publish their counts out of order.
        self.count.send_replace(entries.len());
    }

    fn all(&self) -> Vec<Recorded> {
        lock(&self.entries).clone()
    }

    async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        stray: &Mutex<Vec<String>>,
    ) -> Vec<Recorded> {
        let mut count = self.count.subscribe();
        let arrived = tokio::time::timeout(timeout, count.wait_for(|have| *have >= n)).await;
        if arrived.is_err() {
            let have = *self.count.borrow();
            let stray = lock(stray).clone();
            let stray = if stray.is_empty() {
                String::new()
            } else {
                format!("; requests to unknown paths: {stray:?}")
            };
            panic!(
                "timed out after {timeout:?} waiting for {n} {} request(s): {have} arrived{stray}",
                self.what
            );
        }
        self.all()
    }
}

/// A lock that survives a panicking test thread: the data (a log, a queue) stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// The body as JSON, or as a JSON string of its text when it is not JSON.
fn body_value(body: &[u8]) -> Result<Value, (Value, String)> {
    serde_json::from_slice(body).map_err(|error| {
        (
            Value::String(String::from_utf8_lossy(body).into_owned()),
            format!("the body is not JSON: {error}"),
        )
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A complete answer: one buffer, so the connection's taking all of it can be counted.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
}

impl Answer {
    fn into_response(self) -> Response {
        self.respond(Body::from(self.body.clone()))
    }

    /// The response, counted in `answered` once the connection has taken all of it.
    fn counted(self, answered: &Arc<AtomicUsize>) -> Response {
        let counted = Counted {
            data: Some(self.body.clone()),
            answered: Some(Arc::clone(answered)),
        };
        self.respond(Body::new(counted))
    }

    fn respond(&self, body: Body) -> Response {
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        response
    }
}

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    Answer {
        status,
        content_type: "application/json",
        body: Bytes::from(body.to_string()),
    }
}

/// A body that counts itself as answered once the connection has taken all of it: when hyper
/// asks for the end of the body, or drops it after taking the last byte (a known length).
struct Counted {
    data: Option<Bytes>,
    answered: Option<Arc<AtomicUsize>>,
}

impl Counted {
    fn finish(&mut self) {
        if self.data.is_none()
            && let Some(answered) = self.answered.take()
        {
            answered.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        this.finish();
        Poll::Ready(None)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let remaining = self.data.as_ref().map_or(0, |data| data.len() as u64);
        http_body::SizeHint::with_exact(remaining)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Scripted replies: a shared queue and one per model, each consumed in order.
#[derive(Default)]
struct Script {
    shared: VecDeque<Reply>,
    per_model: HashMap<String, VecDeque<Reply>>,
}

impl Script {
    fn next(&mut self, model: &str) -> Reply {
        self.per_model
            .get_mut(model)
            .and_then(VecDeque::pop_front)
            .or_else(|| self.shared.pop_front())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

struct OpenAiState {
    chats: Log,
    transcriptions: Log,
    stray: Mutex<Vec<String>>,
    script: Mutex<Script>,
    transcript: Mutex<String>,
    /// Scripted answers of the next transcription requests, before `transcript`.
    transcription_script: Mutex<VecDeque<Reply>>,
    answered: Arc<AtomicUsize>,
    /// Numbers the responses (`chatcmpl-<n>`) and the tool calls (`call_<n>`).
    serial: AtomicUsize,
}

/// An OpenAI-compatible server: `POST {base}/chat/completions`,
/// `POST {base}/audio/transcriptions`, on a loopback port of its own. It runs until the test's
/// runtime stops.
pub struct OpenAiStandIn {
    base_url: String,
    state: Arc<OpenAiState>,
}

impl std::fmt::Debug for OpenAiStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiStandIn")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl OpenAiStandIn {
    /// Binds `127.0.0.1:0` and serves in the background.
    pub async fn start() -> OpenAiStandIn {
        let state = Arc::new(OpenAiState {
            chats: Log::new("chat completion"),
            transcriptions: Log::new("transcription"),
            stray: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            transcript: Mutex::new(DEFAULT_TRANSCRIPT.to_owned()),
            transcription_script: Mutex::new(VecDeque::new()),
            answered: Arc::new(AtomicUsize::new(0)),
            serial: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                "/v1/chat/completions",
                post(openai_chat).layer(DefaultBodyLimit::max(JSON_BODY_LIMIT)),
            )
            .route(
                "/v1/audio/transcriptions",
                post(openai_transcription).layer(DefaultBodyLimit::max(TRANSCRIPTION_BODY_LIMIT)),
            )
            .fallback(openai_unknown)
            .with_state(Arc::clone(&state));
        let base_url = crate::serve(app, "/v1").await;
        OpenAiStandIn { base_url, state }
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Queues an answer for the next chat request (any model without a queue of its own).
    pub fn push(&self, reply: Reply) {
        lock(&self.state.script).shared.push_back(reply);
    }

    /// Queues an answer for the next chat request for `model`, tried before the shared queue.
    pub fn push_for_model(&self, model: &str, reply: Reply) {
        lock(&self.state.script)
            .per_model
            .entry(model.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// What `/audio/transcriptions` answers from now on (default `"stand-in transcript"`).
    pub fn set_transcript(&self, text: &str) {
        *lock(&self.state.transcript) = text.to_owned();
    }

    /// Queues an answer for the next valid transcription request: an error status (OpenAI's
    /// error body), a delay, or a text as the transcript. Without one, `set_transcript`'s
    /// transcript is the answer.
    pub fn push_transcription(&self, reply: Reply) {
        lock(&self.state.transcription_script).push_back(reply);
    }

    /// Every chat request, in arrival order (recorded on arrival, before any delay).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.chats.all()
    }

    /// Every transcription request, in arrival order.
    pub fn transcriptions(&self) -> Vec<Recorded> {
        self.state.transcriptions.all()
    }

    /// Waits until at least `n` chat requests arrived and returns them all.
    ///
    /// # Panics
    /// After `timeout`, saying how many arrived (and any requests to unknown paths).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.state
            .chats
            .wait_for(n, timeout, &self.state.stray)
            .await
    }

    /// Chat responses (of any status) the connection has taken in full so far, so that a test
    /// can stop the service right after the model answered.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }
}

fn openai_error(status: StatusCode, message: &str) -> Answer {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Value::from("invalid_api_key")),
        404 => ("invalid_request_error", Value::from("model_not_found")),
        429 => ("requests", Value::from("rate_limit_exceeded")),
        500..=599 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    json_answer(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

async fn openai_unknown(State(state): State<Arc<OpenAiState>>, uri: Uri) -> Response {
    lock(&state.stray).push(uri.path().to_owned());
    openai_error(
        StatusCode::NOT_FOUND,
        &format!("the stand-in serves no {}", uri.path()),
    )
    .into_response()
}

async fn openai_chat(
    State(state): State<Arc<OpenAiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai_chat_inner(&state, uri, &headers, &body)
        .await
        .counted(&state.answered)
}

async fn openai_chat_inner(
    state: &OpenAiState,
    uri: Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let mut recorded = Recorded {
        path: uri.path().to_owned(),
        authorization: authorization(headers),
        body: Value::Null,
        file: None,
        problem: None,
    };
    let checked = match body_value(body) {
        Ok(value) => {
            recorded.body = value.clone();
            check_chat_request(value)
        }
        Err((value, problem)) => {
            recorded.body = value;
            Err(problem)
        }
    };
    let request = match checked {
        Ok(request) => request,
        Err(problem) => {
            recorded.problem = Some(problem.clone());
            state.chats.push(recorded);
            return openai_error(StatusCode::BAD_REQUEST, &problem);
        }
    };
    state.chats.push(recorded);

    let reply = lock(&state.script).next(&request.model);
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = reply.error_status() {
        let message = format!("stand-in error {}", status.as_u16());
        return openai_error(status, &message);
    }
    let serial = state.serial.fetch_add(1, Ordering::SeqCst) + 1;
    let body = chat_response(&request, &reply, serial);
    json_answer(reply.status.unwrap_or(StatusCode::OK), &body)
}

/// The request as `async-openai`'s type, or why it is not one the service may send.
fn check_chat_request(value: Value) -> Result<CreateChatCompletionRequest, String> {
    let request: CreateChatCompletionRequest = serde_json::from_value(value)
        .map_err(|error| format!("not a CreateChatCompletionRequest: {error}"))?;
    if request.messages.is_empty() {
        return Err("messages: [] is too short (at least one message)".to_owned());
    }
    if request.stream == Some(true) {
        return Err(
            "stream: true, but the service must not stream (the stand-in answers only \
                    non-streaming requests)"
                .to_owned(),
        );
    }
    Ok(request)
}

/// `<model> heard: <text of the last user message>`.
fn default_content(request: &CreateChatCompletionRequest) -> String {
    let heard = request
        .messages
        .iter()
        .rev()
        .find_map(|message| match message {
            ChatCompletionRequestMessage::User(user) => Some(match &user.content {
                ChatCompletionRequestUserMessageContent::Text(text) => text.clone(),
                ChatCompletionRequestUserMessageContent::Array(parts) => parts
                    .iter()
                    .map(|part| match part {
                        ChatCompletionRequestUserMessageContentPart::Text(text) => {
                            text.text.as_str()
                        }
                        ChatCompletionRequestUserMessageContentPart::ImageUrl(_) => "[image]",
                        ChatCompletionRequestUserMessageContentPart::InputAudio(_) => "[audio]",
                        ChatCompletionRequestUserMessageContentPart::File(_) => "[file]",
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
            _ => None,
        })
        .unwrap_or_default();
    format!("{} heard: {heard}", request.model)
}

/// A `CreateChatCompletionResponse` as OpenAI writes it (`content` null beside tool calls,
/// which the crate's type would leave out).
fn chat_response(request: &CreateChatCompletionRequest, reply: &Reply, serial: usize) -> Value {
    let (message, finish_reason) = match &reply.tool_call {
        Some((name, arguments)) => (
            json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [{
                    "id": format!("call_{serial}"),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }],
            }),
            "tool_calls",
        ),
        None => (
            json!({
                "role": "assistant",
                "content": reply.content.clone().unwrap_or_else(|| default_content(request)),
                "refusal": null,
            }),
            "stop",
        ),
    };
    json!({
        "id": format!("chatcmpl-{serial}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": request.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": reply.usage_json(),
    })
}

async fn openai_transcription(
    State(state): State<Arc<OpenAiState>>,
    uri: Uri,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let mut recorded = Recorded {
        path: uri.path().to_owned(),
        authorization: authorization(&headers),
        body: Value::Object(serde_json::Map::new()),
        file: None,
        problem: None,
    };
    let problem = match multipart {
        Ok(multipart) => read_transcription(multipart, &mut recorded).await.err(),
        Err(rejection) => Some(format!("not a multipart body: {rejection}")),
    };
    let format = recorded
        .body
        .get("response_format")
        .and_then(Value::as_str)
        .map(str::to_owned);
    state.transcriptions.push(Recorded {
        problem: problem.clone(),
        ..recorded
    });
    if let Some(problem) = problem {
        return openai_error(StatusCode::BAD_REQUEST, &problem).into_response();
    }
    let reply = lock(&state.transcription_script)
        .pop_front()
        .unwrap_or_default();
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = reply.error_status() {
        let message = format!("stand-in error {}", status.as_u16());
        return openai_error(status, &message).into_response();
    }
    let transcript = reply
        .content
        .unwrap_or_else(|| lock(&state.transcript).clone());
    if format.as_deref() == Some("text") {
        // OpenAI answers `text` with the bare transcript.
        return Answer {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(transcript),
        }
        .into_response();
    }
    // `usage` is what whisper-1 reports; async-openai's CreateTranscriptionResponseJson needs it.
    json_answer(
        StatusCode::OK,
        &json!({"text": transcript, "usage": {"type": "duration", "seconds": 1}}),
    )
    .into_response()
}

/// Reads the parts into `recorded` and checks the fields the protocol requires.
async fn read_transcription(
    mut multipart: Multipart,
    recorded: &mut Recorded,
) -> Result<(), String> {
    let mut fields = serde_json::Map::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                recorded.body = Value::Object(fields);
                return Err(format!("a malformed multipart body: {error}"));
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let bytes = field
                .bytes()
                .await
                .map_err(|error| format!("the file part could not be read: {error}"))?;
            recorded.file = Some(RecordedFile {
                file_name: file_name.unwrap_or_default(),
                content_type,
                bytes: bytes.to_vec(),
            });
        } else {
            let text = field
                .text()
                .await
                .map_err(|error| format!("the field {name:?} could not be read: {error}"))?;
            fields.insert(name, Value::String(text));
        }
    }
    recorded.body = Value::Object(fields);
    let body = &recorded.body;
    match &recorded.file {
        None => return Err("the required field file is missing".to_owned()),
        Some(file) if file.file_name.is_empty() => {
            return Err(
                "the file part has no file name (OpenAI reads the format from its extension)"
                    .to_owned(),
            );
        }
        Some(_) => {}
    }
    match body.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => {}
        _ => return Err("the required field model is missing".to_owned()),
    }
    if let Some(format) = body.get("response_format").and_then(Value::as_str) {
        let parsed: AudioResponseFormat = serde_json::from_value(Value::from(format))
            .map_err(|_| format!("response_format {format:?} is not one of OpenAI's"))?;
        if !matches!(
            parsed,
            AudioResponseFormat::Json | AudioResponseFormat::Text
        ) {
            return Err(format!(
                "response_format {format:?}: the stand-in answers json and text only"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dify
// ---------------------------------------------------------------------------------------------

struct DifyState {
    chats: Log,
    stray: Mutex<Vec<String>>,
    script: Mutex<Script>,
    conversations: Mutex<HashSet<String>>,
    answered: Arc<AtomicUsize>,
}

/// Dify's chat-messages API: `POST {base}/chat-messages` in blocking mode, on a loopback port
/// of its own. It hands out conversation ids and answers an id it did not hand out 404, as Dify
/// does. It runs until the test's runtime stops.
pub struct DifyStandIn {
    base_url: String,
    state: Arc<DifyState>,
}

impl std::fmt::Debug for DifyStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DifyStandIn")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl DifyStandIn {
    /// Binds `127.0.0.1:0` and serves in the background.
    pub async fn start() -> DifyStandIn {
        let state = Arc::new(DifyState {
            chats: Log::new("chat-messages"),
            stray: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            conversations: Mutex::new(HashSet::new()),
            answered: Arc::new(AtomicUsize::new(0)),
        });
        let app = axum::Router::new()
            .route(
                "/v1/chat-messages",
                post(dify_chat).layer(DefaultBodyLimit::max(JSON_BODY_LIMIT)),
            )
            .fallback(dify_unknown)
            .with_state(Arc::clone(&state));
        let base_url = crate::serve(app, "/v1").await;
        DifyStandIn { base_url, state }
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Queues an answer for the next request. A [`Reply::tool_call`] is an ordinary answer
    /// here (Dify runs its tools itself).
    pub fn push(&self, reply: Reply) {
        lock(&self.state.script).shared.push_back(reply);
    }

    /// Every request, in arrival order (recorded on arrival, before any delay).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.chats.all()
    }

    /// Waits until at least `n` requests arrived and returns them all.
    ///
    /// # Panics
    /// After `timeout`, saying how many arrived (and any requests to unknown paths).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.state
            .chats
            .wait_for(n, timeout, &self.state.stray)
            .await
    }

    /// Responses (of any status) the connection has taken in full so far.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }
}

fn dify_error(status: StatusCode, code: &str, message: &str) -> Answer {
    json_answer(
        status,
        &json!({"code": code, "message": message, "status": status.as_u16()}),
    )
}

/// Dify's error code for a status, as its API answers them.
fn dify_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_param",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        429 => "too_many_requests",
        _ => "internal_server_error",
    }
}

async fn dify_unknown(State(state): State<Arc<DifyState>>, uri: Uri) -> Response {
    lock(&state.stray).push(uri.path().to_owned());
    dify_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The requested URL was not found on the server.",
    )
    .into_response()
}

/// The fields of a blocking chat-messages request the stand-in uses.
struct DifyRequest {
    query: String,
    conversation_id: Option<String>,
}

/// Checks the body against Dify's chat-messages request.
fn check_dify_request(body: &Value) -> Result<DifyRequest, String> {
    let object = body
        .as_object()
        .ok_or_else(|| "the body is not a JSON object".to_owned())?;
    let string = |name: &str| -> Result<String, String> {
        match object.get(name) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(format!("{name} is not a string")),
            None => Err(format!("{name} is required")),
        }
    };
    let query = string("query")?;
    string("user")?;
    if !object.get("inputs").is_some_and(Value::is_object) {
        return Err("inputs is required and must be an object".to_owned());
    }
    match string("response_mode")?.as_str() {
        "blocking" => {}
        mode => {
            return Err(format!(
                "response_mode {mode:?}: the service must ask for \"blocking\""
            ));
        }
    }
    let conversation_id = match object.get("conversation_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.is_empty() => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err("conversation_id is not a string".to_owned()),
    };
    if object.get("files").is_some_and(|files| !files.is_array()) {
        return Err("files is not an array".to_owned());
    }
    Ok(DifyRequest {
        query,
        conversation_id,
    })
}

async fn dify_chat(
    State(state): State<Arc<DifyState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dify_chat_inner(&state, uri, &headers, &body)
        .await
        .counted(&state.answered)
}

async fn dify_chat_inner(state: &DifyState, uri: Uri, headers: &HeaderMap, body: &[u8]) -> Answer {
    let mut recorded = Recorded {
        path: uri.path().to_owned(),
        authorization: authorization(headers),
        body: Value::Null,
        file: None,
        problem: None,
    };
    let checked = match body_value(body) {
        Ok(value) => {
            let checked = check_dify_request(&value);
            recorded.body = value;
            checked
        }
        Err((value, problem)) => {
            recorded.body = value;
            Err(problem)
        }
    };
    let request = match checked {
        Ok(request) => request,
        Err(problem) => {
            recorded.problem = Some(problem.clone());
            state.chats.push(recorded);
            return dify_error(StatusCode::BAD_REQUEST, "invalid_param", &problem);
        }
    };
    if let Some(id) = &request.conversation_id
        && !lock(&state.conversations).contains(id)
    {
        recorded.problem = Some(format!("conversation_id {id:?} was never handed out"));
        state.chats.push(recorded);
        return dify_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Conversation Not Exists.",
        );
    }
    state.chats.push(recorded);

    let reply = lock(&state.script).next("");
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = reply.error_status() {
        let message = format!("stand-in error {}", status.as_u16());
        return dify_error(status, dify_code(status), &message);
    }
    let conversation_id = match request.conversation_id {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            lock(&state.conversations).insert(id.clone());
            id
        }
    };
    let message_id = uuid::Uuid::new_v4().to_string();
    let answer = reply
        .content
        .clone()
        .unwrap_or_else(|| format!("dify heard: {}", request.query));
    let mut usage = reply.usage_json();
    if let Some(usage) = usage.as_object_mut() {
        // Dify reports prices and latency beside the token counts.
        usage.insert("total_price".to_owned(), Value::from("0"));
        usage.insert("currency".to_owned(), Value::from("USD"));
        usage.insert("latency".to_owned(), Value::from(0.1));
    }
    json_answer(
        reply.status.unwrap_or(StatusCode::OK),
        &json!({
            "event": "message",
            "task_id": uuid::Uuid::new_v4().to_string(),
            "id": message_id,
            "message_id": message_id,
            "conversation_id": conversation_id,
            "mode": "chat",
            "answer": answer,
            "metadata": {"usage": usage, "retriever_resources": []},
            "created_at": unix_now(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_openai::types::chat::{
        ChatCompletionMessageToolCalls, CreateChatCompletionResponse, FinishReason,
    };

    fn chat_body(model: &str, text: &str) -> Value {
        json!({"model": model, "messages": [
            {"role": "system", "content": "You help customers."},
            {"role": "user", "content": text},
        ]})
    }

    async fn post_json(url: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth("sk-test")
            .json(body)
            .send()
            .await
            .expect("the stand-in answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    async fn chat(model: &OpenAiStandIn, body: &Value) -> (u16, Value) {
        post_json(&format!("{}/chat/completions", model.base_url()), body).await
    }

    fn parsed(body: Value) -> CreateChatCompletionResponse {
        serde_json::from_value(body).expect("a CreateChatCompletionResponse")
    }

    #[tokio::test]
    async fn a_valid_chat_request_gets_a_response_of_the_protocols_type() {
        let model = OpenAiStandIn::start().await;
        let response = reqwest::Client::new()
            .post(format!("{}/chat/completions", model.base_url()))
            .bearer_auth("sk-test")
            .json(&chat_body("gpt-test", "Where is my order?"))
            .send()
            .await
            .expect("the stand-in answers");
        assert_eq!(response.status().as_u16(), 200);
        // The counted body still tells its length, as a real server's does.
        assert!(response.content_length().is_some_and(|n| n > 0));
        let body: Value = response.json().await.expect("a JSON answer");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        let response = parsed(body);
        assert_eq!(response.object, "chat.completion");
        assert_eq!(response.model, "gpt-test");
        let choice = &response.choices[0];
        assert_eq!(
            choice.message.content.as_deref(),
            Some("gpt-test heard: Where is my order?")
        );
        assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
        let usage = response.usage.expect("usage");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (10, 5, 15)
        );

        let recorded = model.requests();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].path, "/v1/chat/completions");
        assert_eq!(recorded[0].authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(
            recorded[0].body,
            chat_body("gpt-test", "Where is my order?")
        );
        assert_eq!(recorded[0].problem, None);
        wait_for_answers(&model, 1).await;
    }

    async fn wait_for_answers(model: &OpenAiStandIn, n: usize) {
        crate::wait_for(
            "the answers to be counted",
            Duration::from_secs(5),
            || async { model.answered() >= n },
        )
        .await;
    }

    #[tokio::test]
    async fn the_default_answer_reads_the_text_parts_and_counts_images() {
        let model = OpenAiStandIn::start().await;
        let body = json!({"model": "m", "messages": [
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ]});
        let (_, body) = chat(&model, &body).await;
        assert_eq!(
            parsed(body).choices[0].message.content.as_deref(),
            Some("m heard: What is this? [image]")
        );
    }

    #[tokio::test]
    async fn an_invalid_chat_request_is_answered_400_and_recorded_with_its_problem() {
        let model = OpenAiStandIn::start().await;
        // A message without a role is no ChatCompletionRequestMessage.
        let (status, body) = chat(
            &model,
            &json!({"model": "m", "messages": [{"content": "hi"}]}),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, _) = chat(&model, &json!({"model": "m", "messages": []})).await;
        assert_eq!(status, 400);
        let mut streaming = chat_body("m", "hi");
        streaming["stream"] = json!(true);
        let (status, _) = chat(&model, &streaming).await;
        assert_eq!(status, 400);

        let problems: Vec<String> = model
            .requests()
            .into_iter()
            .map(|recorded| recorded.problem.expect("a problem"))
            .collect();
        assert!(
            problems[0].contains("CreateChatCompletionRequest"),
            "{problems:?}"
        );
        assert!(problems[1].contains("too short"), "{problems:?}");
        assert!(problems[2].contains("stream"), "{problems:?}");
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_recorded_as_its_text() {
        let model = OpenAiStandIn::start().await;
        let response = reqwest::Client::new()
            .post(format!("{}/chat/completions", model.base_url()))
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let recorded = &model.requests()[0];
        assert_eq!(recorded.body, json!("not json"));
        assert!(recorded.problem.as_deref().unwrap().contains("not JSON"));
        assert_eq!(recorded.authorization, None);
    }

    #[tokio::test]
    async fn scripted_replies_come_in_order_and_per_model() {
        let model = OpenAiStandIn::start().await;
        model.push(Reply::text("first"));
        model.push(Reply::status(429));
        model.push(Reply::text("third").usage(7, 2));
        model.push_for_model("small", Reply::text("small's own"));

        let (_, body) = chat(&model, &chat_body("big", "q")).await;
        assert_eq!(
            parsed(body).choices[0].message.content.as_deref(),
            Some("first")
        );
        let (_, body) = chat(&model, &chat_body("small", "q")).await;
        assert_eq!(
            parsed(body).choices[0].message.content.as_deref(),
            Some("small's own")
        );
        let (status, body) = chat(&model, &chat_body("small", "q")).await;
        assert_eq!(status, 429);
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let (_, body) = chat(&model, &chat_body("big", "q")).await;
        let response = parsed(body);
        assert_eq!(
            response.choices[0].message.content.as_deref(),
            Some("third")
        );
        assert_eq!(response.usage.unwrap().total_tokens, 9);
        let (_, body) = chat(&model, &chat_body("big", "again")).await;
        assert_eq!(
            parsed(body).choices[0].message.content.as_deref(),
            Some("big heard: again")
        );
        wait_for_answers(&model, 5).await;
    }

    #[tokio::test]
    async fn a_delayed_reply_does_not_hold_up_another_request() {
        let model = OpenAiStandIn::start().await;
        model.push_for_model("slow", Reply::text("late").delay(Duration::from_secs(3600)));
        let slow = {
            let url = format!("{}/chat/completions", model.base_url());
            tokio::spawn(async move { post_json(&url, &chat_body("slow", "q")).await })
        };
        model.wait_for_requests(1, Duration::from_secs(10)).await;

        let (status, body) = chat(&model, &chat_body("quick", "q")).await;
        assert_eq!(status, 200);
        assert_eq!(
            parsed(body).choices[0].message.content.as_deref(),
            Some("quick heard: q")
        );
        wait_for_answers(&model, 1).await;
        assert!(!slow.is_finished(), "the delayed request is still open");
        assert_eq!(model.answered(), 1, "the delayed answer is not written yet");
        slow.abort();
    }

    #[tokio::test]
    async fn a_tool_call_reply_carries_the_tool_call() {
        let model = OpenAiStandIn::start().await;
        model.push(Reply::tool_call("hand_over", r#"{"reason":"angry"}"#));
        let (_, body) = chat(&model, &chat_body("m", "I want a human")).await;
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        let response = parsed(body);
        let choice = &response.choices[0];
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(choice.message.content, None);
        let calls = choice.message.tool_calls.as_ref().expect("tool calls");
        assert_eq!(calls.len(), 1);
        let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
            panic!("a function call: {calls:?}");
        };
        assert!(call.id.starts_with("call_"), "{}", call.id);
        assert_eq!(call.function.name, "hand_over");
        assert_eq!(call.function.arguments, r#"{"reason":"angry"}"#);
    }

    fn transcription_form(file: Option<&[u8]>) -> reqwest::multipart::Form {
        let form = reqwest::multipart::Form::new()
            .text("model", "whisper-1")
            .text("language", "zh");
        match file {
            Some(bytes) => form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes.to_vec())
                    .file_name("voice.wav")
                    .mime_str("audio/wav")
                    .unwrap(),
            ),
            None => form,
        }
    }

    async fn transcribe(model: &OpenAiStandIn, form: reqwest::multipart::Form) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/audio/transcriptions", model.base_url()))
            .bearer_auth("sk-test")
            .multipart(form)
            .send()
            .await
            .expect("the stand-in answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    #[tokio::test]
    async fn a_transcription_request_is_recorded_with_its_file() {
        let model = OpenAiStandIn::start().await;
        model.set_transcript("我想退货");
        let (status, body) = transcribe(&model, transcription_form(Some(b"RIFF...WAVE"))).await;
        assert_eq!(status, 200);
        let response: async_openai::types::audio::CreateTranscriptionResponseJson =
            serde_json::from_value(body).expect("a CreateTranscriptionResponseJson");
        assert_eq!(response.text, "我想退货");

        let recorded = model.transcriptions();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].path, "/v1/audio/transcriptions");
        assert_eq!(
            recorded[0].body,
            json!({"model": "whisper-1", "language": "zh"})
        );
        assert_eq!(recorded[0].problem, None);
        let file = recorded[0].file.as_ref().expect("the file");
        assert_eq!(file.file_name, "voice.wav");
        assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(file.bytes, b"RIFF...WAVE");
        assert!(model.requests().is_empty(), "transcriptions are not chats");
    }

    #[tokio::test]
    async fn scripted_transcription_answers_come_first_then_the_transcript() {
        let model = OpenAiStandIn::start().await;
        model.set_transcript("默认");
        model.push_transcription(Reply::status(503));
        model.push_transcription(Reply::text("脚本"));
        let (status, body) = transcribe(&model, transcription_form(Some(b"RIFF"))).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["type"], "server_error");
        for expected in ["脚本", "默认"] {
            let (status, body) = transcribe(&model, transcription_form(Some(b"RIFF"))).await;
            assert_eq!((status, body["text"].as_str()), (200, Some(expected)));
        }
        assert_eq!(model.transcriptions().len(), 3);
    }

    #[tokio::test]
    async fn a_transcription_without_a_file_is_answered_400() {
        let model = OpenAiStandIn::start().await;
        let (status, body) = transcribe(&model, transcription_form(None)).await;
        assert_eq!(status, 400);
        assert!(body["error"]["message"].as_str().unwrap().contains("file"));
        let recorded = &model.transcriptions()[0];
        assert!(recorded.problem.as_deref().unwrap().contains("file"));
        assert!(recorded.file.is_none());
    }

    async fn dify(dify: &DifyStandIn, body: &Value) -> (u16, Value) {
        post_json(&format!("{}/chat-messages", dify.base_url()), body).await
    }

    fn dify_body(query: &str, conversation_id: &str) -> Value {
        json!({
            "query": query,
            "user": "wm-customer",
            "inputs": {},
            "response_mode": "blocking",
            "conversation_id": conversation_id,
            "files": [],
        })
    }

    #[tokio::test]
    async fn dify_hands_out_conversation_ids_keeps_them_and_404s_an_unknown_one() {
        let stand_in = DifyStandIn::start().await;
        let (status, first) = dify(&stand_in, &dify_body("hello", "")).await;
        assert_eq!(status, 200);
        assert_eq!(first["event"], "message");
        assert_eq!(first["mode"], "chat");
        assert_eq!(first["answer"], "dify heard: hello");
        assert_eq!(first["metadata"]["usage"]["total_tokens"], 15);
        let conversation = first["conversation_id"].as_str().expect("an id").to_owned();
        assert!(!conversation.is_empty());

        stand_in.push(Reply::text("scripted"));
        let (status, second) = dify(&stand_in, &dify_body("again", &conversation)).await;
        assert_eq!(status, 200);
        assert_eq!(second["conversation_id"], conversation.as_str());
        assert_eq!(second["answer"], "scripted");

        let (status, unknown) = dify(&stand_in, &dify_body("who?", "not-handed-out")).await;
        assert_eq!(status, 404);
        assert_eq!(
            unknown,
            json!({"code": "not_found", "message": "Conversation Not Exists.", "status": 404})
        );

        let recorded = stand_in.wait_for_requests(3, Duration::from_secs(5)).await;
        assert_eq!(recorded[0].path, "/v1/chat-messages");
        assert_eq!(recorded[0].authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(recorded[1].problem, None);
        assert!(
            recorded[2]
                .problem
                .as_deref()
                .unwrap()
                .contains("never handed out")
        );
    }

    #[tokio::test]
    async fn dify_answers_a_scripted_status_and_rejects_a_streaming_request() {
        let stand_in = DifyStandIn::start().await;
        stand_in.push(Reply::status(503));
        let (status, body) = dify(&stand_in, &dify_body("hello", "")).await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], 503);
        assert!(body["code"].is_string() && body["message"].is_string());

        let mut streaming = dify_body("hello", "");
        streaming["response_mode"] = json!("streaming");
        let (status, body) = dify(&stand_in, &streaming).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid_param");
        let (status, _) = dify(&stand_in, &json!({"query": "no user", "inputs": {}})).await;
        assert_eq!(status, 400);

        let problems: Vec<Option<String>> =
            stand_in.requests().into_iter().map(|r| r.problem).collect();
        assert_eq!(problems[0], None);
        assert!(problems[1].as_deref().unwrap().contains("blocking"));
        assert!(problems[2].as_deref().unwrap().contains("user"));
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for 1 chat completion request(s): 0 arrived")]
    async fn waiting_for_requests_that_never_come_names_what_was_missing() {
        let model = OpenAiStandIn::start().await;
        model.wait_for_requests(1, Duration::from_millis(50)).await;
    }
}
