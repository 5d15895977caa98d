//! Where deliveries go — the delivery targets: the bot's webhook (signed JSON), stdout (JSON
//! Lines), or the sandbox's echo bot (JSON Lines, and every customer text answered).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use wechat_kf::message::{Message, MessageContent, Origin};

use crate::config::{Secret, WebhookConfig};
use crate::error::transport_cause;
use crate::replies::echo_reply;
use crate::responder::Responder;
use crate::store::{ItemKind, MemoryWrite, Turn};

/// The header carrying the body's HMAC-SHA256: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Wechat-Kf-Signature";
/// The header carrying the delivery id (stable across retries).
pub const DELIVERY_HEADER: &str = "X-Wechat-Kf-Delivery";
/// The header carrying the attempt number (1 for the first).
pub const ATTEMPT_HEADER: &str = "X-Wechat-Kf-Attempt";

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, the value of `X-Wechat-Kf-Signature`.
///
/// ```
/// let sig = wechat_kf_service::signature(b"secret", br#"{"messages":[]}"#);
/// assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
/// assert!(wechat_kf_service::verify_signature(b"secret", br#"{"messages":[]}"#, &sig));
/// assert!(!wechat_kf_service::verify_signature(b"other", br#"{"messages":[]}"#, &sig));
/// ```
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        // HMAC takes keys of any length: this cannot happen.
        Err(_) => String::new(),
    }
}

/// Checks an `X-Wechat-Kf-Signature` value in constant time (for bots written in Rust).
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// One item of a delivery body: its original JSON, whether the library could not decode it,
/// its media record, whose turn it is and what kind of item it is.
pub(crate) struct BodyItem<'a> {
    pub(crate) raw: &'a str,
    pub(crate) invalid: bool,
    pub(crate) media: Option<&'a str>,
    pub(crate) turn: Turn,
    pub(crate) item: ItemKind,
}

/// The msgid a media record is for.
fn media_key(media: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(media).ok()?;
    let msgid = value.get("msgid")?.as_str()?;
    serde_json::to_string(msgid).ok()
}

/// The `items` entry of a message: its index in `messages`, whose turn it is and, for a
/// message held while a human had the session, `"history":true`.
fn message_entry(index: usize, turn: Turn, item: ItemKind) -> String {
    let history = if item == ItemKind::History {
        ",\"history\":true"
    } else {
        ""
    };
    format!("{{\"message\":{index},{}{history}}}", turn.json_members())
}

/// The webhook body: `{"messages":[…]}`, each message's original JSON unchanged, and
/// `"items":[…]`, the same delivery in order with whose turn each message is and the session
/// changes between them; plus `"invalid":[indexes]` naming the messages the library could not
/// decode, `"media":{msgid: record}` for downloaded media and `"reply_results":[…]` for
/// finished replies.
pub(crate) fn webhook_body<'a>(
    items: impl Iterator<Item = BodyItem<'a>>,
    results: &[String],
) -> Bytes {
    let mut body = String::with_capacity(4096);
    body.push_str("{\"messages\":[");
    let mut entries: Vec<String> = Vec::new();
    let mut invalid = Vec::new();
    let mut media = Vec::new();
    let mut index = 0;
    for item in items {
        if item.item == ItemKind::Session {
            entries.push(format!("{{\"session\":{}}}", item.raw));
            continue;
        }
        if index > 0 {
            body.push(',');
        }
        body.push_str(item.raw);
        entries.push(message_entry(index, item.turn, item.item));
        if item.invalid {
            invalid.push(index.to_string());
        }
        if let Some(record) = item.media {
            if let Some(key) = media_key(record) {
                media.push((key, record));
            }
        }
        index += 1;
    }
    body.push_str("],\"items\":[");
    body.push_str(&entries.join(","));
    body.push(']');
    if !invalid.is_empty() {
        body.push_str(",\"invalid\":[");
        body.push_str(&invalid.join(","));
        body.push(']');
    }
    if !media.is_empty() {
        body.push_str(",\"media\":{");
        for (i, (key, record)) in media.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(key);
            body.push(':');
            body.push_str(record);
        }
        body.push('}');
    }
    if !results.is_empty() {
        body.push_str(",\"reply_results\":[");
        body.push_str(&results.join(","));
        body.push(']');
    }
    body.push('}');
    Bytes::from(body)
}

/// JSON Lines: one item per line. A raw line break can only be whitespace between JSON tokens
/// (inside strings it is escaped), so replacing it with a space keeps the JSON intact. After a
/// message's original fields (which stay byte-identical) the service adds a last member,
/// `"_wechat_kf":{"from":…,"bot_may_reply":…,"reason"?,"history"?,"media"?}`; a session
/// change is a line of its own, `{"_wechat_kf":{"session":{…}}}`.
pub(crate) fn json_lines<'a>(items: impl Iterator<Item = BodyItem<'a>>) -> Bytes {
    let mut out = String::with_capacity(4096);
    for item in items {
        if item.item == ItemKind::Session {
            out.push_str("{\"_wechat_kf\":{\"session\":");
            out.push_str(&item.raw.replace(['\n', '\r'], " "));
            out.push_str("}}\n");
            continue;
        }
        let start = out.len();
        if item.raw.contains(['\n', '\r']) {
            out.push_str(&item.raw.replace(['\n', '\r'], " "));
        } else {
            out.push_str(item.raw);
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        // Anything but an object (never from WeChat) is passed on as it is.
        if out.ends_with('}') {
            out.pop();
            let empty = out[start..].trim_end().ends_with('{');
            if !empty {
                out.push(',');
            }
            out.push_str("\"_wechat_kf\":{");
            out.push_str(&item.turn.json_members());
            if item.item == ItemKind::History {
                out.push_str(",\"history\":true");
            }
            if let Some(media) = item.media {
                out.push_str(",\"media\":");
                out.push_str(&media.replace(['\n', '\r'], " "));
            }
            out.push_str("}}");
        }
        out.push('\n');
    }
    Bytes::from(out)
}

/// What a delivery attempt came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Acknowledged (with the webhook's HTTP status); the response's `replies` (raw JSON
    /// values), if any.
    Acked {
        /// The 2xx status, for a webhook.
        status: Option<u16>,
        /// The replies.
        replies: Vec<serde_json::Value>,
        /// What a responder remembers of the conversations (written with the acknowledgement).
        memory: Vec<MemoryWrite>,
    },
    /// Not acknowledged: the cause, e.g. `connection refused`, `timeout after 10s`, `HTTP 500`
    /// (no content, no URL).
    Failed(String),
}

impl Outcome {
    fn acked(replies: Vec<serde_json::Value>) -> Outcome {
        Outcome::Acked {
            status: None,
            replies,
            memory: Vec::new(),
        }
    }
}

/// The delivery target.
pub(crate) enum Sink {
    /// POST to the bot.
    Webhook {
        http: reqwest::Client,
        url: String,
        /// `host[:port]` of the URL, for log lines (never the whole URL).
        host: String,
        secret: Option<Secret>,
        max_response_bytes: usize,
        timeout: Duration,
    },
    /// JSON Lines on stdout.
    Stdout(tokio::sync::Mutex<tokio::io::Stdout>),
    /// A built-in AI agent (`responder.kind` `openai` or `dify`), given JSON Lines.
    Responder(Arc<Responder>),
    /// The sandbox's echo bot: JSON Lines on stdout, and each customer text acknowledged with the
    /// reply `echo: <text>`, as a bot's webhook response would carry it.
    Echo(tokio::sync::Mutex<tokio::io::Stdout>),
}

impl Sink {
    /// The target for a configuration: the webhook when `url` is set, else the echo bot when
    /// `echo` is, else stdout. The echo bot answers in the bot's place, so both at once is a
    /// configuration error.
    pub(crate) fn new(config: &WebhookConfig, echo: bool) -> Result<Sink, crate::error::Error> {
        match &config.url {
            Some(_) if echo => Err(crate::error::Error::Config(
                "--echo (sandbox.echo) answers in the bot's place; it cannot be combined with webhook.url"
                    .into(),
            )),
            Some(url) => {
                let http = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout.min(Duration::from_secs(10)))
                    .pool_max_idle_per_host(config.concurrency.max(4))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("wechat-kf-serve/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| {
                        crate::error::Error::Config(format!("cannot build the webhook client: {e}"))
                    })?;
                let host = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| {
                        let host = u.host_str()?.to_owned();
                        Some(match u.port() {
                            Some(port) => format!("{host}:{port}"),
                            None => host,
                        })
                    })
                    .unwrap_or_else(|| "the webhook".into());
                Ok(Sink::Webhook {
                    http,
                    url: url.clone(),
                    host,
                    secret: config.secret.clone(),
                    max_response_bytes: config.max_response_bytes,
                    timeout: config.timeout,
                })
            }
            None if echo => Ok(Sink::Echo(tokio::sync::Mutex::new(tokio::io::stdout()))),
            None => Ok(Sink::Stdout(tokio::sync::Mutex::new(tokio::io::stdout()))),
        }
    }

    /// Where deliveries go, for log lines: the webhook's `host[:port]`, `stdout` or `echo`.
    pub(crate) fn target(&self) -> &str {
        match self {
            Sink::Webhook { host, .. } => host,
            Sink::Stdout(_) => "stdout",
            Sink::Echo(_) => "echo",
            Sink::Responder(r) => r.target(),
        }
    }

    /// Whether a delivery holds one customer's messages only: a responder answers each
    /// customer on their own, and one slow model must not hold up another customer's answer.
    pub(crate) fn one_customer_per_delivery(&self) -> bool {
        matches!(self, Sink::Responder(_))
    }

    /// Whether the sink wants [`webhook_body`] (else [`json_lines`]).
    pub(crate) fn wants_json_body(&self) -> bool {
        matches!(self, Sink::Webhook { .. })
    }

    /// One delivery attempt.
    pub(crate) async fn deliver(&self, id: &str, attempt: u32, body: Bytes) -> Outcome {
        match self {
            Sink::Responder(responder) => match responder.handle(id, &body).await {
                Ok((replies, memory)) => Outcome::Acked {
                    status: None,
                    replies,
                    memory,
                },
                Err(cause) => Outcome::Failed(cause),
            },
            Sink::Stdout(out) => match write_lines(out, &body).await {
                Ok(()) => Outcome::acked(Vec::new()),
                Err(e) => Outcome::Failed(format!("stdout: {e}")),
            },
            Sink::Echo(out) => match write_lines(out, &body).await {
                Ok(()) => Outcome::acked(echo_replies(&body)),
                Err(e) => Outcome::Failed(format!("stdout: {e}")),
            },
            Sink::Webhook {
                http,
                url,
                secret,
                max_response_bytes,
                timeout,
                ..
            } => {
                let mut request = http
                    .post(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(DELIVERY_HEADER, id)
                    .header(ATTEMPT_HEADER, attempt.to_string());
                if let Some(secret) = secret {
                    request = request.header(
                        SIGNATURE_HEADER,
                        signature(secret.expose().as_bytes(), &body),
                    );
                }
                let mut response = match request.body(body).send().await {
                    Ok(response) => response,
                    Err(e) => return Outcome::Failed(transport_cause(&e, *timeout)),
                };
                let status = response.status();
                if !status.is_success() {
                    return Outcome::Failed(format!("HTTP {}", status.as_u16()));
                }
                let acked = |replies| Outcome::Acked {
                    status: Some(status.as_u16()),
                    replies,
                    memory: Vec::new(),
                };
                // A 2xx acknowledges; the body only matters for replies.
                let mut body = Vec::new();
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            if body.len() + chunk.len() > *max_response_bytes {
                                tracing::warn!(
                                    delivery = id,
                                    "webhook response too large: replies ignored"
                                );
                                return acked(Vec::new());
                            }
                            body.extend_from_slice(&chunk);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            tracing::warn!(
                                delivery = id,
                                "webhook response body unreadable: replies ignored"
                            );
                            return acked(Vec::new());
                        }
                    }
                }
                acked(parse_replies(id, &body))
            }
        }
    }
}

async fn write_lines(
    out: &tokio::sync::Mutex<tokio::io::Stdout>,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = out.lock().await;
    out.write_all(body).await?;
    out.flush().await
}

/// The echo bot's replies to a JSON Lines body: `echo: <text>` for each customer text it may
/// answer (never while a human holds the session).
fn echo_replies(body: &[u8]) -> Vec<serde_json::Value> {
    body.split(|&b| b == b'\n')
        .filter_map(|line| {
            let added: serde_json::Value = serde_json::from_slice(line).ok()?;
            if added["_wechat_kf"]["bot_may_reply"] != serde_json::Value::Bool(true) {
                return None;
            }
            let message = Message::from_json(std::str::from_utf8(line).ok()?).ok()?;
            let customer = message.external_userid()?;
            let open_kfid = message.open_kfid()?;
            if message.origin() != Origin::Customer || customer.as_str().is_empty() {
                return None;
            }
            match message.content() {
                MessageContent::Text(text) => Some(echo_reply(open_kfid, customer, &text.content)),
                _ => None,
            }
        })
        .collect()
}

/// The `replies` array of a webhook response body, if it has one.
pub(crate) fn parse_replies(id: &str, body: &[u8]) -> Vec<serde_json::Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => match map.remove("replies") {
            Some(serde_json::Value::Array(replies)) => replies,
            Some(serde_json::Value::Null) | None => Vec::new(),
            Some(_) => {
                tracing::warn!(delivery = id, "webhook response: `replies` is not an array");
                Vec::new()
            }
        },
        Ok(_) => Vec::new(),
        Err(_) => {
            tracing::debug!(delivery = id, "webhook response is not JSON: no replies");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(raw: &'a str, invalid: bool, media: Option<&'a str>) -> BodyItem<'a> {
        BodyItem {
            raw,
            invalid,
            media,
            turn: Turn::legacy(Some(3)),
            item: ItemKind::Message,
        }
    }

    fn webhook(url: &str, timeout: Duration) -> Sink {
        let config = WebhookConfig {
            url: Some(url.into()),
            timeout,
            ..WebhookConfig::default()
        };
        Sink::new(&config, false).unwrap()
    }

    async fn failure(sink: &Sink) -> String {
        match sink.deliver("d1", 1, Bytes::from_static(b"{}")).await {
            Outcome::Failed(cause) => cause,
            Outcome::Acked { .. } => panic!("acknowledged"),
        }
    }

    #[tokio::test]
    async fn a_failed_delivery_says_why_in_an_operators_words() {
        let closed = wechat_kf_test_support::ClosedPort::new();
        let sink = webhook(
            &format!("{}/hook?key=SECRET", closed.url()),
            Duration::from_secs(5),
        );
        assert_eq!(sink.target(), closed.addr().to_string());
        assert_eq!(failure(&sink).await, "connection refused");

        let slow = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let url = wechat_kf_test_support::serve(slow, "/hook").await;
        let sink = webhook(&url, Duration::from_millis(200));
        assert_eq!(failure(&sink).await, "timeout after 200ms");

        let broken = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
        );
        let url = wechat_kf_test_support::serve(broken, "/hook").await;
        let sink = webhook(&url, Duration::from_secs(5));
        assert_eq!(failure(&sink).await, "HTTP 500");
    }

    #[test]
    fn the_echo_target_answers_customer_texts_only() {
        let customer = r#"{"msgid":"m1","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"text","text":{"content":"hi"}}"#;
        let servicer = r#"{"msgid":"m2","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":5,"servicer_userid":"zs","msgtype":"text","text":{"content":"human"}}"#;
        let image = r#"{"msgid":"m3","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"image","image":{"media_id":"X"}}"#;
        let body = json_lines(
            [customer, servicer, image, "not json"]
                .into_iter()
                .map(|raw| item(raw, false, None)),
        );
        let replies = echo_replies(&body);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["touser"], "wm1");
        assert_eq!(replies[0]["open_kfid"], "wk1");
        assert_eq!(replies[0]["text"]["content"], "echo: hi");
    }

    #[test]
    fn the_echo_bot_and_a_webhook_are_refused_together_at_start() {
        let config = WebhookConfig {
            url: Some("http://127.0.0.1:9/hook".into()),
            ..crate::config::Config::default().webhook
        };
        let error = Sink::new(&config, true).err().unwrap();
        assert!(error.to_string().contains("webhook.url"), "{error}");
        assert!(matches!(
            Sink::new(&config, false),
            Ok(Sink::Webhook { .. })
        ));
        let stdout = crate::config::Config::default().webhook;
        assert!(matches!(Sink::new(&stdout, true), Ok(Sink::Echo(_))));
        assert!(matches!(Sink::new(&stdout, false), Ok(Sink::Stdout(_))));
    }

    #[test]
    fn the_body_wraps_raw_messages_and_flags_undecodable_ones() {
        let body = webhook_body(
            [
                item(r#"{"a":1}"#, false, None),
                item(r#"{"b":2}"#, true, None),
            ]
            .into_iter(),
            &[],
        );
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["messages"][1]["b"], 2);
        assert_eq!(value["invalid"], serde_json::json!([1]));
        let body = webhook_body([item(r#"{"a":1}"#, false, None)].into_iter(), &[]);
        assert_eq!(
            &body[..],
            br#"{"messages":[{"a":1}],"items":[{"message":0,"from":"customer","bot_may_reply":true}]}"#
        );
    }

    #[test]
    fn media_and_reply_results_ride_beside_the_untouched_messages() {
        let raw = r#"{"msgid":"m\"1","msgtype":"voice","voice":{"media_id":"X"}}"#;
        let media = r#"{"msgid":"m\"1","path":"/tmp/语音.amr"}"#;
        let body = webhook_body(
            [item(raw, false, Some(media))].into_iter(),
            &[r#"{"status":"sent"}"#.to_owned()],
        );
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.starts_with(&format!("{{\"messages\":[{raw}]")),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["media"]["m\"1"]["path"], "/tmp/语音.amr");
        assert_eq!(value["reply_results"][0]["status"], "sent");
        let lines = json_lines(
            [
                item(raw, false, Some(media)),
                item("{ }", false, Some(media)),
            ]
            .into_iter(),
        );
        let text = std::str::from_utf8(&lines).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with(&raw[..raw.len() - 1]), "{first}");
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed[0]["_wechat_kf"]["media"]["path"], "/tmp/语音.amr");
        assert_eq!(parsed[1]["_wechat_kf"]["media"]["path"], "/tmp/语音.amr");
    }

    #[test]
    fn json_lines_put_each_message_on_one_line() {
        let lines = json_lines(
            ["{\n \"a\": \"x\\ny\"\r\n}", "{}"]
                .into_iter()
                .map(|raw| item(raw, false, None)),
        );
        let text = std::str::from_utf8(&lines).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["a"], "x\ny");
    }

    #[test]
    fn signatures_are_hmac_sha256_hex_and_verify_in_constant_time() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_signature(
            b"Jefe",
            b"what do ya want for nothing?",
            &sig
        ));
        assert!(!verify_signature(b"Jefe", b"tampered", &sig));
        assert!(!verify_signature(b"Jefe", b"x", "sha1=00"));
        assert!(!verify_signature(b"Jefe", b"x", "sha256=zz"));
    }

    #[test]
    fn replies_are_read_leniently() {
        assert_eq!(parse_replies("d", b"").len(), 0);
        assert_eq!(parse_replies("d", b"ok").len(), 0);
        assert_eq!(parse_replies("d", br#"{"replies":{}}"#).len(), 0);
        assert_eq!(parse_replies("d", br#"{"replies":[{"a":1},2]}"#).len(), 2);
    }
}
