//! Telling the staff about a handover: a short summary (customer, account, state, who asked,
//! the last messages as text) posted to a WeCom group robot (`cgi-bin/webhook/send?key=…`,
//! official doc 91770) and/or to a webhook of the user's own (signed like deliveries).
//!
//! Best effort by design: the handover itself is already done and recorded, so a summary that
//! cannot be posted (after one retry) is logged and counted, never retried for long. The robot's
//! URL holds its only credential and is never logged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf::message::{Message, MessageContent, Origin};
use wechat_kf::{ExternalUserId, OpenKfId, UserId};

use crate::config::{NotifyConfig, NotifyFormat, Secret};
use crate::delivery::sink::{SIGNATURE_HEADER, signature};
use crate::metrics::Metrics;
use crate::store::{SESSION_KIND, Store};

/// A group robot takes at most this many bytes of text (official doc 91770).
const ROBOT_TEXT_MAX: usize = 2048;
/// And of markdown.
const ROBOT_MARKDOWN_MAX: usize = 4096;
/// One message of the summary is cut to this many characters.
const LINE_CHARS: usize = 80;

/// One handover to tell the staff about.
#[derive(Debug, Clone)]
pub(crate) struct Handover {
    /// The account.
    pub(crate) open_kfid: OpenKfId,
    /// The customer.
    pub(crate) external_userid: ExternalUserId,
    /// The state the session went to (2 queued, 3 a servicer).
    pub(crate) service_state: u32,
    /// The servicer who took it.
    pub(crate) servicer_userid: Option<UserId>,
    /// Who asked: `keyword`, `bot`, `idle` or `console`.
    pub(crate) by: &'static str,
}

/// Posts handover summaries.
pub(crate) struct Notifier {
    http: reqwest::Client,
    config: NotifyConfig,
    webhook_secret: Option<Secret>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// A notifier, when `[handoff.notify]` names a robot or a webhook.
    pub(crate) fn new(
        config: &NotifyConfig,
        webhook_secret: Option<Secret>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Option<Notifier> {
        if config.robot_url.is_none() && config.webhook_url.is_none() {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        Some(Notifier {
            http,
            config: config.clone(),
            webhook_secret,
            store,
            metrics,
        })
    }

    /// Tells every configured target about `handover`.
    pub(crate) async fn handover(&self, handover: Handover) {
        let lines = self.last_messages(&handover).await;
        if let Some(url) = &self.config.robot_url {
            let body = robot_body(&handover, &lines, self.config.format);
            let result = self.post(url.expose(), &body, None).await;
            self.count("robot", result);
        }
        if let Some(url) = &self.config.webhook_url {
            let body = json!({"handoff": {
                "open_kfid": handover.open_kfid,
                "external_userid": handover.external_userid,
                "service_state": handover.service_state,
                "servicer_userid": handover.servicer_userid,
                "by": handover.by,
                "messages": lines.iter().map(|(from, text)| json!({"from": from, "text": text})).collect::<Vec<_>>(),
            }});
            let result = self.post(url, &body, self.webhook_secret.as_ref()).await;
            self.count("webhook", result);
        }
    }

    fn count(&self, target: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.metrics.handoff_notification(target, "ok"),
            Err(cause) => {
                tracing::warn!(target, cause, "a handover summary could not be posted");
                self.metrics.handoff_notification(target, "failed");
            }
        }
    }

    /// The customer's last messages as (who, text), oldest first.
    async fn last_messages(&self, handover: &Handover) -> Vec<(&'static str, String)> {
        let rows = match self
            .store
            .recent_messages(
                handover.open_kfid.clone(),
                handover.external_userid.clone(),
                self.config.last_messages,
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the customer's last messages for a handover summary");
                Vec::new()
            }
        };
        let mut lines: Vec<(&'static str, String)> = rows
            .iter()
            .filter(|(kind, _)| kind != SESSION_KIND)
            .filter_map(|(_, raw)| as_line(raw))
            .collect();
        lines.reverse();
        lines
    }

    /// One POST, retried once on a transport error or 5xx; a WeChat errcode fails it.
    async fn post(&self, url: &str, body: &Value, secret: Option<&Secret>) -> Result<(), String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let mut last = String::new();
        for _ in 0..2 {
            let mut request = self
                .http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(secret) = secret {
                request = request.header(
                    SIGNATURE_HEADER,
                    signature(secret.expose().as_bytes(), &bytes),
                );
            }
            let response = match request.body(bytes.clone()).send().await {
                Ok(response) => response,
                // The error may hold the URL (the robot's key): say only what kind it was.
                Err(e) if e.is_timeout() => {
                    last = "timeout".into();
                    continue;
                }
                Err(_) => {
                    last = "connection failed".into();
                    continue;
                }
            };
            let status = response.status();
            if status.is_server_error() {
                last = format!("HTTP {}", status.as_u16());
                continue;
            }
            if !status.is_success() {
                return Err(format!("HTTP {}", status.as_u16()));
            }
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            return match answer.get("errcode").and_then(Value::as_i64) {
                None | Some(0) => Ok(()),
                Some(code) => Err(format!("errcode {code}")),
            };
        }
        Err(last)
    }
}

/// A stored message as one line of the summary: who wrote it and what, cut to
/// [`LINE_CHARS`]; events are left out.
fn as_line(raw: &str) -> Option<(&'static str, String)> {
    let message = Message::from_json(raw).ok()?;
    let from = match message.origin() {
        Origin::Customer => "客户",
        Origin::Servicer => "客服",
        _ => return None,
    };
    let text = match message.content() {
        MessageContent::Event(_) => return None,
        MessageContent::Text(text) => text.content.clone(),
        MessageContent::Image(_) => "[图片]".into(),
        MessageContent::Voice(_) => "[语音]".into(),
        MessageContent::Video(_) => "[视频]".into(),
        MessageContent::File(_) => "[文件]".into(),
        MessageContent::Location(_) => "[位置]".into(),
        MessageContent::Link(_) => "[链接]".into(),
        _ => format!("[{}]", message.kind()),
    };
    let mut cut: String = text.chars().take(LINE_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    Some((from, cut.replace(['\n', '\r'], " ")))
}

/// The robot's message: what happened, to whom, and the last messages.
fn robot_body(
    handover: &Handover,
    lines: &[(&'static str, String)],
    format: NotifyFormat,
) -> Value {
    let to = match (handover.service_state, &handover.servicer_userid) {
        (3, Some(servicer)) => format!("已转给客服 {servicer}"),
        (2, _) => "已进入排队".to_owned(),
        (state, _) => format!("会话状态 {state}"),
    };
    let by = match handover.by {
        "keyword" => "客户要求人工",
        "idle" => "客户久未得到答复",
        _ => "机器人转人工",
    };
    let head = format!(
        "客服账号 {} 的客户 {} {to}（{by}）",
        handover.open_kfid, handover.external_userid
    );
    match format {
        NotifyFormat::Text => {
            let mut content = format!("{head}\n最近消息：");
            for (from, text) in lines {
                content.push_str(&format!("\n{from}：{text}"));
            }
            json!({"msgtype": "text", "text": {"content": cut_bytes(&content, ROBOT_TEXT_MAX)}})
        }
        NotifyFormat::Markdown => {
            let mut content = format!("**转人工** {head}\n");
            for (from, text) in lines {
                content.push_str(&format!("> {from}：{}\n", markdown_escape(text)));
            }
            json!({"msgtype": "markdown", "markdown": {"content": cut_bytes(&content, ROBOT_MARKDOWN_MAX)}})
        }
    }
}

/// Characters that would start markdown in a customer's text, escaped.
fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '_' | '`' | '[' | ']' | '<' | '>' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// At most `max` bytes, cut at a character boundary.
fn cut_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover() -> Handover {
        Handover {
            open_kfid: "wkA".into(),
            external_userid: "wmA".into(),
            service_state: 3,
            servicer_userid: Some("zhangsan".into()),
            by: "keyword",
        }
    }

    #[test]
    fn a_summary_names_the_customer_the_servicer_and_the_last_messages() {
        let lines = vec![("客户", "我要*人工*".to_owned())];
        let body = robot_body(&handover(), &lines, NotifyFormat::Markdown);
        let content = body["markdown"]["content"].as_str().unwrap();
        assert!(
            content.contains("wmA") && content.contains("zhangsan"),
            "{content}"
        );
        assert!(content.contains(r"我要\*人工\*"), "escaped: {content}");
        let body = robot_body(&handover(), &lines, NotifyFormat::Text);
        assert!(
            body["text"]["content"]
                .as_str()
                .unwrap()
                .ends_with("客户：我要*人工*")
        );
    }

    #[test]
    fn long_summaries_are_cut_at_a_character_boundary_within_the_robots_limit() {
        let lines: Vec<(&str, String)> = (0..100).map(|_| ("客户", "长".repeat(80))).collect();
        let body = robot_body(&handover(), &lines, NotifyFormat::Text);
        let content = body["text"]["content"].as_str().unwrap();
        assert!(content.len() <= ROBOT_TEXT_MAX);
        let body = robot_body(&handover(), &lines, NotifyFormat::Markdown);
        assert!(body["markdown"]["content"].as_str().unwrap().len() <= ROBOT_MARKDOWN_MAX);
    }

    #[test]
    fn messages_become_lines_and_events_are_left_out() {
        let text = r#"{"msgid":"1","open_kfid":"wk","external_userid":"wm","send_time":1,"origin":3,"msgtype":"text","text":{"content":"你好"}}"#;
        assert_eq!(as_line(text), Some(("客户", "你好".to_owned())));
        let image = r#"{"msgid":"2","open_kfid":"wk","external_userid":"wm","send_time":1,"origin":5,"servicer_userid":"z","msgtype":"image","image":{"media_id":"M"}}"#;
        assert_eq!(as_line(image), Some(("客服", "[图片]".to_owned())));
        let event = r#"{"msgid":"3","send_time":1,"origin":4,"msgtype":"event","event":{"event_type":"enter_session","open_kfid":"wk","external_userid":"wm"}}"#;
        assert_eq!(as_line(event), None);
    }
}
