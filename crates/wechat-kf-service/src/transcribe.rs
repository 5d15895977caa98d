//! Voice transcription through an OpenAI-compatible `POST {base}/audio/transcriptions`
//! (`[responder.transcription]`): whisper-1 and gpt-4o-transcribe at OpenAI, and the servers
//! that copy its API (whisper.cpp's server, vLLM, SiliconFlow, Groq, …).
//!
//! One request per voice note: multipart `file` (a converted voice note: WAV unless
//! `media.voice_convert_to` says otherwise, since OpenAI reads no AMR or SILK), `model`,
//! `language` when set and `response_format=json`. 429 and 5xx are retried with the service's
//! backoff within `timeout`; every failure is a [`TranscribeError`] whose kind names it for the
//! metrics and the media record. The transcript is customer data: it is returned, never logged.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use async_openai::types::audio::CreateTranscriptionResponseJson;
use serde::Deserialize;

use crate::config::{Secret, TranscriptionConfig};
use crate::error::Error;
use crate::retry::{backoff, jitter};

/// Attempts of one transcription (the first and two retries), all within `timeout`.
const MAX_ATTEMPTS: u32 = 3;
/// The first retry's nominal delay; it doubles, up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Largest answer read: a transcript of a few minutes is a few KiB; a server that sends more is
/// not one to trust.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Most characters of a server's error message kept in the record.
const MAX_MESSAGE_CHARS: usize = 200;

/// Why a transcription failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TranscribeError {
    /// No answer within `timeout` (retries included).
    #[error("no transcript within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The endpoint could not be reached, or the connection broke.
    #[error("the transcription endpoint could not be reached: {0}")]
    Connect(String),
    /// The endpoint answered with an error status (after the retries, for 429 and 5xx).
    #[error("the transcription endpoint answered {status}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The server's error message (OpenAI's `error.message`), shortened.
        message: String,
    },
    /// A 2xx answer without a transcript.
    #[error("the transcription endpoint's answer has no transcript: {0}")]
    InvalidResponse(String),
    /// The converted file could not be read.
    #[error("the voice note could not be read: {0}")]
    File(std::io::Error),
}

impl TranscribeError {
    /// The kind, for the metrics and the media record: `timeout`, `connect`, `http_<status>`,
    /// `invalid_response`, `file`.
    pub(crate) fn kind(&self) -> Cow<'static, str> {
        match self {
            TranscribeError::Timeout(_) => "timeout".into(),
            TranscribeError::Connect(_) => "connect".into(),
            TranscribeError::Http { status, .. } => format!("http_{status}").into(),
            TranscribeError::InvalidResponse(_) => "invalid_response".into(),
            TranscribeError::File(_) => "file".into(),
        }
    }

    /// Whether another attempt may succeed: the endpoint is busy or failed on its side.
    fn is_retryable(&self) -> bool {
        matches!(self, TranscribeError::Http { status, .. } if *status == 429 || *status >= 500)
    }
}

/// Sends voice notes to an OpenAI-compatible transcription endpoint.
pub(crate) struct Transcriber {
    http: reqwest::Client,
    url: String,
    key: Option<Secret>,
    model: String,
    language: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Transcriber {
    /// The transcriber of `[responder.transcription]`; its `base_url` and `api_key` default to
    /// the responder's (`fallback_base_url`, `fallback_key`).
    pub(crate) fn new(
        config: &TranscriptionConfig,
        fallback_base_url: Option<&str>,
        fallback_key: Option<&Secret>,
    ) -> Result<Transcriber, Error> {
        let base = config
            .base_url
            .as_deref()
            .or(fallback_base_url)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| {
                Error::Config(
                    "responder.transcription.base_url: must be an http(s) URL (or set \
                     responder.base_url)"
                        .into(),
                )
            })?;
        if config.timeout.is_zero() {
            return Err(Error::Config(
                "responder.transcription.timeout: must be positive".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Config(format!("responder.transcription: {e}")))?;
        Ok(Transcriber {
            http,
            url: format!("{}/audio/transcriptions", base.trim_end_matches('/')),
            key: config.api_key.clone().or_else(|| fallback_key.cloned()),
            model: config.model.clone(),
            language: config.language.clone(),
            timeout: config.timeout,
        })
    }

    /// The transcript of the audio file at `path`, sent as `file_name` (servers read the format
    /// from its extension) of `content_type`. Retries 429 and 5xx within `timeout`.
    pub(crate) async fn transcribe(
        &self,
        path: &Path,
        file_name: &str,
        content_type: &str,
    ) -> Result<String, TranscribeError> {
        let bytes = bytes::Bytes::from(tokio::fs::read(path).await.map_err(TranscribeError::File)?);
        let deadline = Instant::now() + self.timeout;
        let attempts = async {
            let mut failures = 0;
            loop {
                let error = match self.attempt(&bytes, file_name, content_type).await {
                    Ok(text) => return Ok(text),
                    Err(e) => e,
                };
                failures += 1;
                if !error.is_retryable() || failures >= MAX_ATTEMPTS {
                    return Err(error);
                }
                let delay = backoff(failures, RETRY_INITIAL, RETRY_MAX, jitter());
                // A retry that could not finish in time is not worth waiting for.
                if Instant::now() + delay >= deadline {
                    return Err(error);
                }
                tracing::debug!(kind = %error.kind(), "transcription failed; retrying");
                tokio::time::sleep(delay).await;
            }
        };
        tokio::time::timeout(self.timeout, attempts)
            .await
            .unwrap_or(Err(TranscribeError::Timeout(self.timeout)))
    }

    async fn attempt(
        &self,
        bytes: &bytes::Bytes,
        file_name: &str,
        content_type: &str,
    ) -> Result<String, TranscribeError> {
        let file = reqwest::multipart::Part::stream_with_length(
            reqwest::Body::from(bytes.clone()),
            bytes.len() as u64,
        )
        .file_name(file_name.to_owned())
        .mime_str(content_type)
        .map_err(|_| {
            TranscribeError::File(std::io::Error::other(format!(
                "{content_type:?} is not a content type"
            )))
        })?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.model.clone())
            .text("response_format", "json");
        if let Some(language) = &self.language {
            form = form.text("language", language.clone());
        }
        let mut request = self.http.post(&self.url).multipart(form);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key.expose());
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| TranscribeError::Connect(e.without_url().to_string()))?;
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_RESPONSE_BYTES => {
                    body.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => {
                    return Err(TranscribeError::InvalidResponse(format!(
                        "the answer is over {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                Ok(None) => break,
                Err(e) => return Err(TranscribeError::Connect(e.without_url().to_string())),
            }
        }
        if !status.is_success() {
            return Err(TranscribeError::Http {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        parse_response(&body)
    }
}

/// The transcript of a `response_format=json` answer: OpenAI's
/// `CreateTranscriptionResponseJson`, or any object with a string `text` (whisper.cpp, vLLM and
/// SiliconFlow leave out `usage`, which the type requires; see docs/vendor-notes.md).
fn parse_response(body: &[u8]) -> Result<String, TranscribeError> {
    #[derive(Deserialize)]
    struct TextOnly {
        text: String,
    }
    let text = match serde_json::from_slice::<CreateTranscriptionResponseJson>(body) {
        Ok(full) => full.text,
        Err(_) => {
            serde_json::from_slice::<TextOnly>(body)
                .map_err(|_| {
                    // serde's message may quote the body, which may be the transcript.
                    TranscribeError::InvalidResponse("not a JSON object with a text".into())
                })?
                .text
        }
    };
    // Whisper starts a transcript with a space.
    Ok(text.trim().to_owned())
}

/// The message of an error answer: OpenAI's `error.message` (or a `message`, `detail`, `error`
/// string other servers use), shortened; never the raw body.
fn error_message(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = [
        value.pointer("/error/message"),
        value.get("message"),
        value.get("detail"),
        value.get("error"),
    ]
    .into_iter()
    .flatten()
    .find_map(serde_json::Value::as_str)
    .unwrap_or("(no message)");
    let mut short: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if message.chars().count() > MAX_MESSAGE_CHARS {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use wechat_kf_test_support::llm::{OpenAiStandIn, Reply};

    use super::*;

    fn config(base: &str, language: Option<&str>) -> TranscriptionConfig {
        TranscriptionConfig {
            base_url: Some(base.to_owned()),
            language: language.map(str::to_owned),
            timeout: Duration::from_secs(20),
            ..TranscriptionConfig::default()
        }
    }

    fn wav_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("语音.wav");
        std::fs::write(&path, b"RIFF\x24\0\0\0WAVEfmt stand-in").unwrap();
        (dir, path)
    }

    #[tokio::test]
    async fn the_file_model_and_language_are_sent_and_the_transcript_returned() {
        let model = OpenAiStandIn::start().await;
        model.set_transcript(" 我想退货 ");
        let key = Secret::new("sk-responder");
        let transcriber =
            Transcriber::new(&config(&model.base_url(), Some("zh")), None, Some(&key)).unwrap();
        let (_dir, path) = wav_file();

        let text = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap();

        assert_eq!(text, "我想退货");
        let recorded = model.transcriptions();
        assert_eq!(recorded.len(), 1);
        let request = &recorded[0];
        assert_eq!(request.problem, None);
        assert_eq!(request.path, "/v1/audio/transcriptions");
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer sk-responder")
        );
        assert_eq!(request.body["model"], "whisper-1");
        assert_eq!(request.body["language"], "zh");
        assert_eq!(request.body["response_format"], "json");
        let file = request.file.as_ref().unwrap();
        assert_eq!(file.file_name, "voice.wav");
        assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(file.bytes, std::fs::read(&path).unwrap());
    }

    #[tokio::test]
    async fn without_a_key_no_authorization_is_sent_and_the_fallback_base_is_used() {
        let model = OpenAiStandIn::start().await;
        let config = TranscriptionConfig {
            timeout: Duration::from_secs(20),
            ..TranscriptionConfig::default()
        };
        let transcriber = Transcriber::new(&config, Some(&model.base_url()), None).unwrap();
        let (_dir, path) = wav_file();
        let text = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap();
        assert_eq!(text, "stand-in transcript");
        let request = &model.transcriptions()[0];
        assert_eq!(request.authorization, None);
        assert!(request.body.get("language").is_none(), "{}", request.body);
    }

    #[tokio::test]
    async fn a_server_error_is_retried_and_then_succeeds() {
        let model = OpenAiStandIn::start().await;
        model.push_transcription(Reply::status(500));
        model.push_transcription(Reply::status(429));
        model.push_transcription(Reply::text("好的"));
        let transcriber = Transcriber::new(&config(&model.base_url(), None), None, None).unwrap();
        let (_dir, path) = wav_file();
        let text = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap();
        assert_eq!(text, "好的");
        assert_eq!(model.transcriptions().len(), 3);
    }

    #[tokio::test]
    async fn a_bad_request_is_an_error_at_once_with_the_servers_message() {
        let model = OpenAiStandIn::start().await;
        model.push_transcription(Reply::status(400));
        let transcriber = Transcriber::new(&config(&model.base_url(), None), None, None).unwrap();
        let (_dir, path) = wav_file();
        let error = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "http_400");
        assert!(error.to_string().contains("stand-in error 400"), "{error}");
        assert_eq!(model.transcriptions().len(), 1, "a 400 is not retried");
    }

    #[tokio::test]
    async fn persistent_server_errors_give_up_after_three_attempts() {
        let model = OpenAiStandIn::start().await;
        for _ in 0..4 {
            model.push_transcription(Reply::status(503));
        }
        let transcriber = Transcriber::new(&config(&model.base_url(), None), None, None).unwrap();
        let (_dir, path) = wav_file();
        let error = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "http_503");
        assert_eq!(model.transcriptions().len(), 3);
    }

    #[tokio::test]
    async fn an_endpoint_slower_than_the_timeout_is_a_timeout() {
        let model = OpenAiStandIn::start().await;
        model.push_transcription(Reply::text("late").delay(Duration::from_secs(30)));
        let config = TranscriptionConfig {
            timeout: Duration::from_millis(200),
            ..config(&model.base_url(), None)
        };
        let transcriber = Transcriber::new(&config, None, None).unwrap();
        let (_dir, path) = wav_file();
        let error = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "timeout");
    }

    #[tokio::test]
    async fn a_missing_file_and_an_unreachable_endpoint_are_told_apart() {
        let closed = wechat_kf_test_support::ClosedPort::new();
        let transcriber = Transcriber::new(&config(&closed.url(), None), None, None).unwrap();
        let (dir, path) = wav_file();
        let error = transcriber
            .transcribe(&dir.path().join("gone.wav"), "gone.wav", "audio/wav")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "file");
        let error = transcriber
            .transcribe(&path, "voice.wav", "audio/wav")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "connect");
    }

    #[test]
    fn an_answer_without_usage_is_accepted_and_one_without_text_is_not() {
        let openai = r#"{"text":" 你好","usage":{"type":"duration","seconds":2}}"#;
        assert_eq!(parse_response(openai.as_bytes()).unwrap(), "你好");
        // whisper.cpp, vLLM, SiliconFlow.
        let bare = r#"{"text":"你好"}"#;
        assert_eq!(parse_response(bare.as_bytes()).unwrap(), "你好");
        for bad in [
            &br#"{"txt":"x"}"#[..],
            b"you said secret things",
            b"",
            b"[]",
        ] {
            let error = parse_response(bad).unwrap_err();
            assert_eq!(error.kind(), "invalid_response");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn error_messages_are_read_from_every_common_shape_and_shortened() {
        assert_eq!(
            error_message(br#"{"error":{"message":"Invalid file format."}}"#),
            "Invalid file format."
        );
        assert_eq!(
            error_message(br#"{"detail":"model not found"}"#),
            "model not found"
        );
        assert_eq!(error_message(b"<html>502</html>"), "(no message)");
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
        assert_eq!(error_message(long.as_bytes()).chars().count(), 201);
    }

    #[test]
    fn a_transcriber_needs_an_http_base() {
        let config = TranscriptionConfig::default();
        let error = Transcriber::new(&config, None, None).unwrap_err();
        assert!(error.to_string().contains("base_url"), "{error}");
        assert!(Transcriber::new(&config, Some("ftp://x"), None).is_err());
        let t = Transcriber::new(&config, Some("http://h/v1/"), None).unwrap();
        assert_eq!(t.url, "http://h/v1/audio/transcriptions");
    }
}
