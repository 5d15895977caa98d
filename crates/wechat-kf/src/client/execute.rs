//! The one request path: access token, URL, body, the `errcode`/`errmsg` envelope, errcode
//! mapping, token invalidation and retries, with a tracing span per call and per attempt.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderMap};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::budget::Admission;
#[cfg(doc)]
use super::budget::BLOCK_AFTER_45009;
use super::error::excerpt;
use super::multipart::MultipartBody;
use super::token::AccessToken;
use super::{Client, ErrCode, Error, Idempotency};

/// Largest JSON response body the client accepts (a full sync_msg page is ~1 MB).
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

/// One API call, described independently of any attempt so it can be sent again.
pub(crate) struct Call {
    pub(crate) endpoint: &'static str,
    pub(crate) method: reqwest::Method,
    pub(crate) query: Vec<(&'static str, String)>,
    pub(crate) body: CallBody,
    pub(crate) idempotency: Idempotency,
    pub(crate) with_token: bool,
    pub(crate) headers: HeaderMap,
    pub(crate) timeout: Option<Duration>,
}

pub(crate) enum CallBody {
    Empty,
    Json(Bytes),
    Multipart(MultipartBody),
}

impl Call {
    pub(crate) fn get(endpoint: &'static str) -> Self {
        Self {
            endpoint,
            method: reqwest::Method::GET,
            query: Vec::new(),
            body: CallBody::Empty,
            idempotency: Idempotency::Idempotent,
            with_token: true,
            headers: HeaderMap::new(),
            timeout: None,
        }
    }

    /// A POST with a JSON body.
    pub(crate) fn post<B: serde::Serialize + ?Sized>(
        endpoint: &'static str,
        body: &B,
    ) -> Result<Self, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Decode {
            endpoint,
            message: format!("cannot encode the request: {e}"),
            body: String::new(),
        })?;
        Ok(Self {
            endpoint,
            method: reqwest::Method::POST,
            query: Vec::new(),
            body: CallBody::Json(Bytes::from(json)),
            idempotency: Idempotency::Idempotent,
            with_token: true,
            headers: HeaderMap::new(),
            timeout: None,
        })
    }

    pub(crate) fn non_idempotent(mut self) -> Self {
        self.idempotency = Idempotency::NonIdempotent;
        self
    }

    pub(crate) fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }
}

/// How a call went, beyond its result.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outcome {
    /// Attempts made (token refreshes included).
    pub(crate) attempts: u32,
    /// Whether some attempt failed in a way that leaves open whether the server processed it
    /// (timeout, 5xx, -1) and a later attempt was made.
    pub(crate) retried_after_ambiguous_failure: bool,
}

/// What came back from one attempt, before decoding.
pub(crate) enum Received {
    /// A JSON (or at least non-media) body.
    Json(Bytes),
    /// A media response whose body has not been read yet, except for `first`, a chunk read
    /// ahead to sniff a response without Content-Type.
    Media {
        /// The chunk read ahead, if any.
        first: Option<Bytes>,
        /// The response, positioned after `first`.
        response: reqwest::Response,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Json,
    Media,
}

/// The `errcode`/`errmsg` pair every response carries.
#[derive(Deserialize)]
struct ApiEnvelope {
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
}

fn decode_error(endpoint: &'static str, error: impl std::fmt::Display, body: &[u8]) -> Error {
    Error::Decode {
        endpoint,
        message: error.to_string(),
        body: excerpt(body),
    }
}

/// Reads the envelope; a non-zero errcode becomes [`Error::Api`].
pub(crate) fn check_envelope(endpoint: &'static str, body: &[u8]) -> Result<(), Error> {
    let envelope: ApiEnvelope =
        serde_json::from_slice(body).map_err(|e| decode_error(endpoint, e, body))?;
    match envelope.errcode.unwrap_or(0) {
        0 => Ok(()),
        code => Err(Error::Api {
            endpoint,
            code: ErrCode::from_code(code),
            errmsg: envelope.errmsg.unwrap_or_default(),
        }),
    }
}

/// Checks the envelope, then decodes the typed response.
pub(crate) fn decode_json<T: DeserializeOwned>(
    endpoint: &'static str,
    received: Received,
) -> Result<T, Error> {
    let body = match received {
        Received::Json(body) => body,
        Received::Media { .. } => {
            return Err(Error::Decode {
                endpoint,
                message: "expected a JSON body, got media".into(),
                body: String::new(),
            });
        }
    };
    check_envelope(endpoint, &body)?;
    serde_json::from_slice(&body).map_err(|e| decode_error(endpoint, e, &body))
}

fn api_error(endpoint: &'static str, code: i64, errmsg: String) -> Error {
    Error::Api {
        endpoint,
        code: ErrCode::from_code(code),
        errmsg,
    }
}

/// Like [`decode_json`] for a type that carries `errcode`/`errmsg` itself and decodes error bodies
/// too (sync_msg): one parse instead of two on the hot path. `parse` is the type's fastest
/// decoder.
pub(crate) fn decode_with_envelope<T, P, F>(
    endpoint: &'static str,
    received: Received,
    parse: P,
    envelope: F,
) -> Result<T, Error>
where
    P: Fn(&[u8]) -> serde_json::Result<T>,
    F: Fn(&mut T) -> (i64, String),
{
    let body = match received {
        Received::Json(body) => body,
        Received::Media { .. } => {
            return Err(Error::Decode {
                endpoint,
                message: "expected a JSON body, got media".into(),
                body: String::new(),
            });
        }
    };
    match parse(&body) {
        Ok(mut value) => match envelope(&mut value) {
            (0, _) => Ok(value),
            (code, errmsg) => Err(api_error(endpoint, code, errmsg)),
        },
        Err(error) => {
            check_envelope(endpoint, &body)?;
            Err(decode_error(endpoint, error, &body))
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Reads at most `limit` bytes of a body; more is an error (never buffer unbounded input).
async fn read_body(
    endpoint: &'static str,
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Bytes, Error> {
    let mut buffer = bytes::BytesMut::new();
    if let Some(length) = response.content_length() {
        buffer.reserve((length as usize).min(limit));
    }
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::transport(endpoint, e))?
    {
        if buffer.len() + chunk.len() > limit {
            return Err(Error::Decode {
                endpoint,
                message: format!("response body larger than {limit} bytes"),
                body: String::new(),
            });
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Header WeChat mirrors a response's `errcode` in (with `Error-Msg`); seen on real responses.
const ERROR_CODE: &str = "error-code";
/// Header WeChat mirrors a response's `errmsg` in.
const ERROR_MSG: &str = "error-msg";

#[derive(Debug, PartialEq, Eq)]
enum MediaBodyKind {
    /// `Content-Disposition` present: WeChat's file signal. The body is the file, whatever it
    /// contains (a customer's `{"errcode":40014}` text file stays a file).
    File,
    /// No file signal and a non-zero `Error-Code` header: WeChat's error envelope.
    Error,
    /// Declared JSON without either signal: an error envelope (or an API answer, never media).
    Json,
    /// Declared text or generic binary, or undeclared, without either signal: an error
    /// envelope if the first bytes look like one, else a file.
    Sniff,
    /// Declared binary media without either signal.
    Media,
}

/// Classifies a `media/get` response the way WeChat marks them: a file comes with
/// `Content-Disposition: attachment; filename=…`, an error without it (and with `Error-Code` /
/// `Error-Msg` headers mirroring the JSON body; docs/vendor-notes.md). Only a response without
/// the file signal is ever read as an error, so a customer's file can never pose as one.
fn media_body_kind(headers: &HeaderMap) -> MediaBodyKind {
    if headers.contains_key(CONTENT_DISPOSITION) {
        return MediaBodyKind::File;
    }
    if header_errcode(headers).is_some_and(|code| code != 0) {
        return MediaBodyKind::Error;
    }
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return MediaBodyKind::Sniff;
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        MediaBodyKind::Json
    } else if mime.is_empty() || mime.starts_with("text/") || mime == "application/octet-stream" {
        MediaBodyKind::Sniff
    } else {
        MediaBodyKind::Media
    }
}

/// The `Error-Code` header as a number, when present and numeric.
fn header_errcode(headers: &HeaderMap) -> Option<i64> {
    headers.get(ERROR_CODE)?.to_str().ok()?.trim().parse().ok()
}

/// The error of a `media/get` response without the file signal: the JSON envelope's, else the
/// `Error-Code` / `Error-Msg` headers'; `Ok` when neither carries a non-zero code.
fn media_error(endpoint: &'static str, headers: &HeaderMap, body: &[u8]) -> Result<(), Error> {
    match check_envelope(endpoint, body) {
        Err(Error::Decode { .. }) | Ok(()) => {}
        Err(error) => return Err(error),
    }
    match header_errcode(headers) {
        Some(code) if code != 0 => {
            let errmsg = headers
                .get(ERROR_MSG)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            Err(api_error(endpoint, code, errmsg))
        }
        _ => Ok(()),
    }
}

impl Client {
    fn url(&self, endpoint: &str) -> String {
        format!("{}/cgi-bin/{endpoint}", self.inner.base_url)
    }

    /// Runs a call to completion, returning the decoded value and how it went.
    pub(crate) async fn execute_counted<T>(
        &self,
        call: &Call,
        expect: Expect,
        decode: impl Fn(Received) -> Result<T, Error>,
    ) -> (Result<T, Error>, Outcome) {
        let span = tracing::info_span!(
            "wechat_kf.call",
            endpoint = call.endpoint,
            attempts = tracing::field::Empty,
            errcode = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let (result, outcome) = self
            .run(call, expect, decode)
            .instrument(span.clone())
            .await;
        span.record("attempts", outcome.attempts);
        span.record("latency_ms", started.elapsed().as_millis() as u64);
        match &result {
            Ok(_) => {
                span.record("errcode", 0);
            }
            Err(error) => {
                if let Some(code) = error.errcode() {
                    span.record("errcode", code.code());
                }
                span.in_scope(|| tracing::debug!(%error, "call failed"));
            }
        }
        (result, outcome)
    }

    /// Runs a call to completion.
    pub(crate) async fn execute<T>(
        &self,
        call: &Call,
        expect: Expect,
        decode: impl Fn(Received) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.execute_counted(call, expect, decode).await.0
    }

    /// Runs a JSON call and decodes the typed response.
    pub(crate) async fn execute_json<T: DeserializeOwned>(&self, call: Call) -> Result<T, Error> {
        let endpoint = call.endpoint;
        self.execute(&call, Expect::Json, |r| decode_json(endpoint, r))
            .await
    }

    /// Runs a JSON call whose success response carries nothing but the envelope.
    pub(crate) async fn execute_unit(&self, call: Call) -> Result<(), Error> {
        let endpoint = call.endpoint;
        self.execute(&call, Expect::Json, |r| match r {
            Received::Json(body) => check_envelope(endpoint, &body),
            Received::Media { .. } => decode_json::<serde::de::IgnoredAny>(endpoint, r).map(drop),
        })
        .await
    }

    async fn run<T>(
        &self,
        call: &Call,
        expect: Expect,
        decode: impl Fn(Received) -> Result<T, Error>,
    ) -> (Result<T, Error>, Outcome) {
        let policy = &self.inner.retry;
        let mut retries = 0u32;
        let mut outcome = Outcome::default();
        let mut token_refreshed = false;
        loop {
            if let Err(error) = self.spend_budget(call.endpoint).await {
                return (Err(error), outcome);
            }
            let token = if call.with_token {
                match self.access_token().await {
                    Ok(token) => Some(token),
                    Err(error) => return (Err(error), outcome),
                }
            } else {
                None
            };
            outcome.attempts += 1;
            let span = tracing::debug_span!(
                "wechat_kf.attempt",
                endpoint = call.endpoint,
                attempt = outcome.attempts,
                http_status = tracing::field::Empty,
                errcode = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            );
            let started = Instant::now();
            let result = async {
                let received = self.attempt(call, token.as_ref(), expect).await?;
                decode(received)
            }
            .instrument(span.clone())
            .await;
            span.record("latency_ms", started.elapsed().as_millis() as u64);
            let error = match result {
                Ok(value) => {
                    span.record("errcode", 0);
                    return (Ok(value), outcome);
                }
                Err(error) => error,
            };
            match &error {
                Error::Api { code, .. } => {
                    span.record("errcode", code.code());
                }
                Error::HttpStatus { status, .. } => {
                    span.record("http_status", *status);
                }
                _ => {}
            }
            if matches!(&error, Error::Api { code, .. } if *code == ErrCode::ApiFrequencyExceeded) {
                // WeChat's own limit: no call to this API until the block ends, in any client
                // sharing the budget's store, and no retry into the block.
                self.block_budget(call.endpoint).await;
                return (Err(error), outcome);
            }
            if let Some(token) = token.as_ref() {
                if error.is_token_invalid() && !token_refreshed {
                    // One refresh and one immediate retry; a second rejection goes to the caller.
                    token_refreshed = true;
                    span.in_scope(|| tracing::debug!("access token rejected; refreshing"));
                    self.inner.tokens.invalidate(token).await;
                    continue;
                }
            }
            if !policy.should_retry(retries, &error, call.idempotency) {
                return (Err(error), outcome);
            }
            if let CallBody::Multipart(body) = &call.body {
                if !body.is_repeatable() {
                    return (Err(error), outcome);
                }
            }
            if !error.request_not_processed() {
                outcome.retried_after_ambiguous_failure = true;
            }
            let delay = policy.delay(retries, rand::random::<f64>());
            span.in_scope(|| {
                tracing::debug!(delay_ms = delay.as_millis() as u64, %error, "retrying");
            });
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }

    /// Waits until the call budget of `endpoint` allows one more call and counts it; fails with
    /// [`Error::Budget`] when that is further away than the client waits. A failing budget store
    /// lets the call go (WeChat's own limit still holds, and a 45009 blocks).
    async fn spend_budget(&self, endpoint: &'static str) -> Result<(), Error> {
        let budget = &self.inner.budget;
        let key = format!("{}:{endpoint}", self.inner.corp_id);
        let line = budget
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let started = tokio::time::Instant::now();
        // Wait in line (behind every caller that came earlier), then for the budget itself.
        let Ok(_turn) = tokio::time::timeout(budget.max_wait, line.lock()).await else {
            return Err(Error::Budget {
                endpoint,
                retry_after: budget.max_wait.max(Duration::from_millis(100)),
            });
        };
        loop {
            let now_ms = super::budget::unix_ms((self.inner.clock)());
            let wait = match budget.store.admit(&key, budget.limits, now_ms).await {
                Ok(Admission::Go) => return Ok(()),
                Ok(Admission::Wait(wait)) => wait,
                Err(error) => {
                    tracing::warn!(endpoint, %error, "the call budget store failed; calling anyway");
                    return Ok(());
                }
            };
            if started.elapsed() + wait > budget.max_wait {
                return Err(Error::Budget {
                    endpoint,
                    retry_after: wait,
                });
            }
            tracing::trace!(
                endpoint,
                wait_ms = wait.as_millis() as u64,
                "waiting for the call budget"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a 45009: the API is blocked (for [`BLOCK_AFTER_45009`] unless configured) in the
    /// budget's store.
    async fn block_budget(&self, endpoint: &'static str) {
        let budget = &self.inner.budget;
        let key = format!("{}:{endpoint}", self.inner.corp_id);
        let now_ms = super::budget::unix_ms((self.inner.clock)());
        let until = now_ms + budget.block.as_millis() as u64;
        tracing::warn!(
            endpoint,
            block_s = budget.block.as_secs(),
            "WeChat's frequency limit (45009): no calls to this API until the block ends"
        );
        if let Err(error) = budget.store.block(&key, until).await {
            tracing::warn!(endpoint, %error, "cannot record a 45009 block in the budget store");
        }
    }

    /// Sends one attempt and reads the response as far as `expect` requires.
    async fn attempt(
        &self,
        call: &Call,
        token: Option<&AccessToken>,
        expect: Expect,
    ) -> Result<Received, Error> {
        let endpoint = call.endpoint;
        let mut url = reqwest::Url::parse(&self.url(endpoint))
            .map_err(|e| Error::Config(format!("invalid base URL: {e}")))?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(token) = token {
                pairs.append_pair("access_token", token.secret().expose());
            }
            for (key, value) in &call.query {
                pairs.append_pair(key, value);
            }
        }
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), url)
            .headers(call.headers.clone());
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        request = match &call.body {
            CallBody::Empty => request,
            CallBody::Json(json) => request
                .header(CONTENT_TYPE, "application/json")
                .body(json.clone()),
            CallBody::Multipart(body) => {
                let (content_type, length, body) = body.to_body(endpoint).await?;
                request
                    .header(CONTENT_TYPE, content_type)
                    .header(reqwest::header::CONTENT_LENGTH, length)
                    .body(body)
            }
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| Error::transport(endpoint, e))?;
        let status = response.status();
        tracing::Span::current().record("http_status", status.as_u16());
        if !status.is_success() {
            let body = read_body(endpoint, &mut response, 4096)
                .await
                .unwrap_or_default();
            return Err(Error::HttpStatus {
                endpoint,
                status: status.as_u16(),
                body: excerpt(&body),
            });
        }
        if expect == Expect::Media {
            let headers = response.headers().clone();
            let kind = media_body_kind(&headers);
            let first = match kind {
                MediaBodyKind::File | MediaBodyKind::Media => {
                    return Ok(Received::Media {
                        first: None,
                        response,
                    });
                }
                MediaBodyKind::Error | MediaBodyKind::Json => None,
                MediaBodyKind::Sniff => {
                    // No file signal and a loose type: look at the first bytes before reading
                    // the body as an error.
                    let first = response
                        .chunk()
                        .await
                        .map_err(|e| Error::transport(endpoint, e))?;
                    let looks_like_json = first.as_ref().is_some_and(|chunk| {
                        chunk.trim_ascii_start().starts_with(b"{")
                            && chunk.windows(9).any(|w| w == b"\"errcode\"")
                    });
                    if !looks_like_json {
                        return Ok(Received::Media { first, response });
                    }
                    first
                }
            };
            let mut body = bytes::BytesMut::from(first.unwrap_or_default().as_ref());
            let rest = read_body(endpoint, &mut response, MAX_JSON_BODY).await?;
            body.extend_from_slice(&rest);
            let body = body.freeze();
            media_error(endpoint, &headers, &body)?;
            if kind == MediaBodyKind::Json {
                // Declared JSON without the file signal or an error: an API answer, not media.
                return Ok(Received::Json(body));
            }
            // Loosely typed, no error in the body or the headers: a file served without a name.
            return Ok(Received::Media {
                first: Some(body),
                response,
            });
        }
        let body = read_body(endpoint, &mut response, MAX_JSON_BODY).await?;
        Ok(Received::Json(body))
    }

    /// The current access token, fetching one (single-flight) when needed.
    pub(crate) async fn access_token(&self) -> Result<AccessToken, Error> {
        let inner = &self.inner;
        inner
            .tokens
            .get(&*inner.clock, || Box::pin(self.fetch_token()))
            .await
    }

    /// Calls `gettoken`. Boxed at the call site because it re-enters the request path.
    async fn fetch_token(&self) -> Result<AccessToken, Error> {
        const ENDPOINT: &str = "gettoken";
        let mut call = Call::get(ENDPOINT)
            .query("corpid", self.inner.corp_id.clone())
            .query("corpsecret", self.inner.secret.expose());
        call.with_token = false;
        let obtained_at: SystemTime = (self.inner.clock)();
        let response = self
            .execute(&call, Expect::Json, |received| {
                let Received::Json(body) = received else {
                    return decode_json(ENDPOINT, received);
                };
                // The body holds the token: never copy it into an error.
                let parsed: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| Error::Decode {
                        endpoint: ENDPOINT,
                        message: e.to_string(),
                        body: String::new(),
                    })?;
                if parsed.errcode != 0 {
                    return Err(api_error(ENDPOINT, parsed.errcode, parsed.errmsg));
                }
                Ok(parsed)
            })
            .await?;
        let value = response
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Decode {
                endpoint: ENDPOINT,
                message: "no access_token in the response".into(),
                body: String::new(),
            })?;
        let expires_in = Duration::from_secs(response.expires_in.unwrap_or(7200));
        tracing::debug!(
            expires_in_s = expires_in.as_secs(),
            "obtained an access token"
        );
        Ok(AccessToken::new(value, obtained_at, expires_in))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Received {
        Received::Json(Bytes::from(body.to_owned()))
    }

    #[tokio::test]
    async fn callers_waiting_for_the_budget_take_turns_in_the_order_they_came() {
        // 6,000 a minute: a burst of 100, then one call every 10 ms.
        let client = crate::client::Client::builder("wwcorp", "secret")
            .budget(crate::client::budget::Limits::new(6_000, 0))
            .build()
            .unwrap();
        for _ in 0..100 {
            client.spend_budget("kf/sync_msg").await.unwrap();
        }
        // Three busy accounts, each asking again the moment it was served: the budget is
        // short, and each is served in turn rather than whoever polls first.
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|account| {
                let (client, order) = (client.clone(), order.clone());
                tokio::spawn(async move {
                    for _ in 0..4 {
                        client.spend_budget("kf/sync_msg").await.unwrap();
                        order.lock().unwrap().push(account);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            order.lock().unwrap().concat(),
            "abcabcabcabc",
            "round-robin among the waiting accounts"
        );
    }

    #[test]
    fn a_nonzero_errcode_becomes_an_api_error() {
        let err = decode_json::<serde_json::Value>(
            "kf/account/add",
            json(r#"{"errcode":95006,"errmsg":"invalid name"}"#),
        )
        .unwrap_err();
        assert_eq!(err.errcode(), Some(ErrCode::InvalidAccountName));
    }

    #[test]
    fn a_body_that_is_not_json_is_a_decode_error_with_an_excerpt() {
        let err = decode_json::<serde_json::Value>("kf/account/add", json("<html>busy</html>"))
            .unwrap_err();
        match err {
            Error::Decode { body, .. } => assert_eq!(body, "<html>busy</html>"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sync_responses_are_decoded_in_one_pass_and_errors_still_mapped() {
        let ok = decode_with_envelope(
            "kf/sync_msg",
            json(r#"{"errcode":0,"errmsg":"ok","next_cursor":"c","has_more":0,"msg_list":[]}"#),
            crate::message::SyncMsgResponse::from_slice,
            |r| (r.errcode, std::mem::take(&mut r.errmsg)),
        )
        .unwrap();
        assert_eq!(ok.next_cursor, "c");
        let err = decode_with_envelope(
            "kf/sync_msg",
            json(r#"{"errcode":95007,"errmsg":"invalid msg token"}"#),
            crate::message::SyncMsgResponse::from_slice,
            |r| (r.errcode, std::mem::take(&mut r.errmsg)),
        )
        .unwrap_err();
        assert_eq!(err.errcode(), Some(ErrCode::InvalidMsgToken));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn media_responses_without_the_file_signal_are_classified_by_content_type() {
        let with = |ct: &str| media_body_kind(&headers(&[("content-type", ct)]));
        assert_eq!(with("application/json; charset=utf-8"), MediaBodyKind::Json);
        assert_eq!(with("text/plain"), MediaBodyKind::Sniff);
        assert_eq!(with("image/jpeg"), MediaBodyKind::Media);
        assert_eq!(with("application/octet-stream"), MediaBodyKind::Sniff);
        assert_eq!(with("audio/amr"), MediaBodyKind::Media);
        assert_eq!(media_body_kind(&HeaderMap::new()), MediaBodyKind::Sniff);
    }

    #[test]
    fn a_content_disposition_makes_the_body_a_file_whatever_else_is_declared() {
        for content_type in ["application/json", "text/plain", "image/png"] {
            let h = headers(&[
                ("content-type", content_type),
                ("content-disposition", "attachment; filename=\"a.json\""),
                ("error-code", "40014"),
            ]);
            assert_eq!(media_body_kind(&h), MediaBodyKind::File, "{content_type}");
        }
    }

    #[test]
    fn an_error_code_header_without_the_file_signal_is_an_error() {
        let h = headers(&[("content-type", "image/jpeg"), ("error-code", "40007")]);
        assert_eq!(media_body_kind(&h), MediaBodyKind::Error);
        let zero = headers(&[("content-type", "image/jpeg"), ("error-code", "0")]);
        assert_eq!(media_body_kind(&zero), MediaBodyKind::Media);
        let h = headers(&[("error-code", "40007"), ("error-msg", "invalid media_id")]);
        let error = media_error("media/get", &h, b"not json").unwrap_err();
        assert_eq!(error.errcode(), Some(ErrCode::InvalidMediaId));
        let error = media_error("media/get", &h, br#"{"errcode":45009,"errmsg":"x"}"#).unwrap_err();
        assert_eq!(
            error.errcode(),
            Some(ErrCode::ApiFrequencyExceeded),
            "the body wins"
        );
        assert!(media_error("media/get", &HeaderMap::new(), br#"{"a":1}"#).is_ok());
    }
}
