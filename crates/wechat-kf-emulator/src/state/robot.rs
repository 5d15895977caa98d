//! WeCom group robots (群机器人, official doc 91770): not part of the KF API, but where a service
//! posts staff notifications (a handover summary). The control API creates robots; the API's
//! `webhook/send` checks a message the way the documented limits say and records it, so tests see
//! exactly what staff would read.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value, json};

use super::tokens::Window;
use crate::clock::{MINUTE, Millis};
use crate::errors::{self, ApiError, ApiResult};
use crate::ids;

/// Unknown or removed robot key. The real code is not in a doc copy we have; 93000 ("invalid
/// webhook url") is what clients report (docs/vendor-notes.md).
pub const INVALID_WEBHOOK_URL: i64 = 93000;
/// Messages a robot accepts per minute (widely reported; docs/vendor-notes.md).
pub const PER_MINUTE: u32 = 20;
/// Messages kept per robot (oldest dropped first).
const KEPT: usize = 1000;

/// The documented message types, and the byte limit of `content` where the doc gives one.
const TYPES: &[(&str, Option<usize>)] = &[
    ("text", Some(2048)),
    ("markdown", Some(4096)),
    ("image", None),
    ("news", None),
    ("file", None),
    ("template_card", None),
];

#[derive(Debug, Default)]
struct Robot {
    name: String,
    rate: Window,
    received: VecDeque<Value>,
}

/// Every robot, by key.
#[derive(Debug, Default)]
pub struct Robots {
    by_key: HashMap<String, Robot>,
}

impl Robots {
    /// A new robot; its key (the `key` of its webhook URL).
    pub fn create(&mut self, name: &str) -> String {
        let key = format!(
            "{}-{}-{}-{}-{}",
            ids::alnum(8),
            ids::alnum(4),
            ids::alnum(4),
            ids::alnum(4),
            ids::alnum(12)
        )
        .to_ascii_lowercase();
        self.by_key.insert(
            key.clone(),
            Robot {
                name: name.to_owned(),
                ..Robot::default()
            },
        );
        key
    }

    /// `webhook/send`: checks `body` for robot `key` and records it.
    pub fn receive(
        &mut self,
        key: Option<&str>,
        body: Map<String, Value>,
        now: Millis,
    ) -> ApiResult<()> {
        let robot = key
            .and_then(|k| self.by_key.get_mut(k))
            .ok_or_else(|| ApiError::new(INVALID_WEBHOOK_URL, "invalid webhook url"))?;
        let msgtype = body.get("msgtype").and_then(Value::as_str).unwrap_or("");
        let Some(&(_, limit)) = TYPES.iter().find(|(t, _)| *t == msgtype) else {
            return Err(ApiError::new(
                errors::INVALID_MSGTYPE,
                "invalid message type",
            ));
        };
        let part = body
            .get(msgtype)
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::new(errors::MISSING_PARAMETER, format!("missing {msgtype}"))
            })?;
        if let Some(limit) = limit {
            let content = part.get("content").and_then(Value::as_str).unwrap_or("");
            if content.is_empty() {
                return Err(ApiError::new(errors::EMPTY_CONTENT, "empty content"));
            }
            if content.len() > limit {
                return Err(ApiError::new(
                    errors::CONTENT_TOO_LONG,
                    format!("content exceeds {limit} bytes"),
                ));
            }
        }
        if !robot.rate.take(now, MINUTE, PER_MINUTE) {
            return Err(ApiError::new(
                errors::FREQUENCY_LIMITED,
                "api freq out of limit",
            ));
        }
        if robot.received.len() >= KEPT {
            robot.received.pop_front();
        }
        robot
            .received
            .push_back(json!({"received_at_ms": now, "body": Value::Object(body)}));
        Ok(())
    }

    /// What robot `key` (or every robot) received, oldest first: `{"robots": [{"key", "name",
    /// "messages": [{"received_at_ms", "body"}]}]}`.
    pub fn to_json(&self, key: Option<&str>) -> Value {
        let mut robots: Vec<Value> = self
            .by_key
            .iter()
            .filter(|(k, _)| key.is_none_or(|key| key == k.as_str()))
            .map(|(k, r)| json!({"key": k, "name": r.name, "messages": r.received}))
            .collect();
        robots.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!({ "robots": robots })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(content: &str) -> Map<String, Value> {
        let body = json!({"msgtype": "text", "text": {"content": content}});
        body.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_robot_records_what_it_accepts_and_refuses_unknown_keys() {
        let mut robots = Robots::default();
        let key = robots.create("staff");
        robots.receive(Some(&key), text("转人工: wmA"), 0).unwrap();
        let err = robots.receive(Some("nope"), text("x"), 0).unwrap_err();
        assert_eq!(err.code, INVALID_WEBHOOK_URL);
        assert_eq!(
            robots.receive(None, text("x"), 0).unwrap_err().code,
            INVALID_WEBHOOK_URL
        );
        let seen = robots.to_json(Some(&key));
        assert_eq!(
            seen["robots"][0]["messages"][0]["body"]["text"]["content"],
            "转人工: wmA"
        );
    }

    #[test]
    fn content_limits_types_and_the_per_minute_rate_are_enforced() {
        let mut robots = Robots::default();
        let key = robots.create("staff");
        let long = "字".repeat(700); // 2,100 bytes
        assert_eq!(
            robots.receive(Some(&key), text(&long), 0).unwrap_err().code,
            errors::CONTENT_TOO_LONG
        );
        let markdown = json!({"msgtype": "markdown", "markdown": {"content": long}});
        let markdown = markdown.as_object().cloned().unwrap_or_default();
        robots.receive(Some(&key), markdown, 0).unwrap();
        let odd = json!({"msgtype": "voice"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            robots.receive(Some(&key), odd, 0).unwrap_err().code,
            errors::INVALID_MSGTYPE
        );
        for _ in 1..PER_MINUTE {
            robots.receive(Some(&key), text("x"), 1).unwrap();
        }
        let limited = robots.receive(Some(&key), text("x"), 2).unwrap_err();
        assert_eq!(limited.code, errors::FREQUENCY_LIMITED);
        robots.receive(Some(&key), text("x"), MINUTE).unwrap();
    }
}
