//! The pure half of a responder: a delivery's JSON Lines read into each customer's turn, what
//! the conversation's memory gives the model, and an answer fitted to what WeChat allows now.
//! No I/O and no clock here: `now` comes in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wechat_kf::answer::{MAX_TEXT_BYTES, fit, plain_text};
use wechat_kf::message::{Message, MessageContent, Origin};
use wechat_kf::{ExternalUserId, MsgId, OpenKfId};

use crate::store::{Lane, MemoryEntry, MemoryRole, MemoryWrite};

/// What a customer sent, as the model is given it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Said {
    /// A text (or a menu click's text).
    Text(String),
    /// An image: its downloaded file, when there is one.
    Image(Option<PathBuf>),
    /// A voice note: its transcript, when there is one.
    Voice(Option<String>),
    /// Anything else, described (`[file: 合同.pdf]`).
    Other(String),
}

impl Said {
    /// The text kept in memory and given to models that take text only.
    pub(crate) fn describe(&self) -> String {
        match self {
            Said::Text(text) => text.clone(),
            Said::Image(_) => "[image]".into(),
            Said::Voice(Some(transcript)) => format!("[voice] {transcript}"),
            Said::Voice(None) => "[voice]".into(),
            Said::Other(description) => description.clone(),
        }
    }
}

/// One item of a delivery, for one customer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    /// A customer's message.
    Customer {
        /// Its msgid.
        msgid: MsgId,
        /// What it says.
        said: Said,
        /// Whether the bot may answer it (and it is not history released after a hold).
        answerable: bool,
    },
    /// A human servicer's message (context for the model).
    Servicer(String),
    /// The session ended (state 4).
    Ended,
}

/// One customer's part of a delivery.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct CustomerTurn {
    /// The items, in order.
    pub(crate) items: Vec<Item>,
}

impl CustomerTurn {
    /// What the model is asked to answer: the customer's answerable messages after the last
    /// end of the session in this delivery.
    pub(crate) fn asked(&self) -> Vec<&Said> {
        let start = self
            .items
            .iter()
            .rposition(|i| matches!(i, Item::Ended))
            .map_or(0, |i| i + 1);
        self.items[start..]
            .iter()
            .filter_map(|i| match i {
                Item::Customer {
                    said,
                    answerable: true,
                    ..
                } => Some(said),
                _ => None,
            })
            .collect()
    }

    /// The msgid of the last answerable customer message: the key of this turn's answer.
    pub(crate) fn key(&self) -> Option<&MsgId> {
        self.items.iter().rev().find_map(|i| match i {
            Item::Customer {
                msgid,
                answerable: true,
                ..
            } => Some(msgid),
            _ => None,
        })
    }
}

/// Reads a delivery's JSON Lines (see `delivery::sink::json_lines`) into each customer's
/// turn. Lines that are not messages of a customer (events, undecodable items) are left out;
/// session changes count only when they end the session.
pub(crate) fn read_lines(body: &[u8]) -> BTreeMap<Lane, CustomerTurn> {
    let mut out: BTreeMap<Lane, CustomerTurn> = BTreeMap::new();
    for line in body.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let added = &value["_wechat_kf"];
        if let Some(session) = added.get("session") {
            let (Some(open_kfid), Some(customer)) = (
                session["open_kfid"].as_str(),
                session["external_userid"].as_str(),
            ) else {
                continue;
            };
            if session["new_state"].as_u64() == Some(4) {
                out.entry(Lane::new(open_kfid, customer))
                    .or_default()
                    .items
                    .push(Item::Ended);
            }
            continue;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let Ok(message) = Message::from_json(text) else {
            continue;
        };
        let (Some(open_kfid), Some(customer)) = (message.open_kfid(), message.external_userid())
        else {
            continue;
        };
        if customer.as_str().is_empty() {
            continue;
        }
        let lane = Lane::new(open_kfid.clone(), customer.clone());
        let media = &added["media"];
        let item = match message.origin() {
            Origin::Customer => {
                let Some(said) = said(&message, media) else {
                    continue;
                };
                Item::Customer {
                    msgid: message.msgid().clone(),
                    said,
                    answerable: added["bot_may_reply"] == Value::Bool(true)
                        && added["history"] != Value::Bool(true),
                }
            }
            Origin::Servicer => match message.content() {
                MessageContent::Text(t) => Item::Servicer(t.content.clone()),
                _ => continue,
            },
            _ => continue,
        };
        out.entry(lane).or_default().items.push(item);
    }
    out
}

/// What a customer's message says, or `None` for what is not theirs to say (events).
fn said(message: &Message, media: &Value) -> Option<Said> {
    let file_name = media["file_name"].as_str();
    let with = |kind: &str, detail: Option<&str>| match detail.filter(|d| !d.is_empty()) {
        Some(detail) => Said::Other(format!("[{kind}: {detail}]")),
        None => Said::Other(format!("[{kind}]")),
    };
    Some(match message.content() {
        MessageContent::Text(t) => Said::Text(t.content.clone()),
        MessageContent::Image(_) => Said::Image(
            media["path"]
                .as_str()
                .filter(|_| media.get("error").is_none())
                .map(PathBuf::from),
        ),
        MessageContent::Voice(_) => Said::Voice(
            media["transcript"]
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .map(str::to_owned),
        ),
        MessageContent::Video(_) => with("video", file_name),
        MessageContent::File(_) => with("file", file_name),
        MessageContent::Location(l) => {
            let place = [l.name.as_deref(), l.address.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            with("location", Some(place.as_str()))
        }
        MessageContent::Link(l) => {
            let title = l.title.as_deref().unwrap_or_default();
            let url = l.url.as_deref().unwrap_or_default();
            with("link", Some(format!("{title} {url}").trim()))
        }
        MessageContent::BusinessCard(_) => with("business card", None),
        MessageContent::MiniProgram(m) => with("mini program", m.title.as_deref()),
        MessageContent::MergedMsg(m) => with("chat history", m.title.as_deref()),
        MessageContent::Channels(c) => with("channels", c.title.as_deref()),
        MessageContent::ChannelsShopProduct(p) => with("product", p.title.as_deref()),
        MessageContent::ChannelsShopOrder(_) => with("order", None),
        MessageContent::MsgMenu(_) => with("menu", None),
        MessageContent::Meeting(_) => with("meeting", None),
        MessageContent::Schedule(_) => with("schedule", None),
        MessageContent::Note(_) => with("note", None),
        MessageContent::Event(_) => return None,
        // `Unknown` and types a later library version adds.
        _ => with("message", None),
    })
}

/// The earlier conversation given to the model: the newest entries of at most `turns` turns
/// (a turn starts at a customer entry after a non-customer one) and `chars` characters, oldest
/// first. Dify's conversation id is not part of it.
pub(crate) fn recall(memory: &[MemoryEntry], turns: usize, chars: usize) -> Vec<&MemoryEntry> {
    let mut kept = Vec::new();
    let mut used = 0;
    let mut turns_seen = 0;
    let mut previous: Option<MemoryRole> = None;
    for entry in memory
        .iter()
        .rev()
        .filter(|e| e.role != MemoryRole::Conversation)
    {
        // Walking backwards, a turn begins where a customer entry follows (in time) anything
        // that is not the customer's.
        if entry.role != MemoryRole::Customer && previous.is_none_or(|p| p == MemoryRole::Customer)
        {
            turns_seen += 1;
        }
        if turns_seen > turns {
            break;
        }
        let len = entry.content.chars().count();
        if used + len > chars {
            break;
        }
        used += len;
        previous = Some(entry.role);
        kept.push(entry);
    }
    kept.reverse();
    kept
}

/// Dify's conversation id for the pair, if memory holds one.
pub(crate) fn conversation_id(memory: &[MemoryEntry]) -> Option<&str> {
    memory
        .iter()
        .rev()
        .find(|e| e.role == MemoryRole::Conversation)
        .map(|e| e.content.as_str())
}

/// What the delivery adds to the pair's memory, in order: customer and servicer messages,
/// and a clear where the session ended (when `clear_on_end`).
pub(crate) fn remember(
    lane: &Lane,
    turn: &CustomerTurn,
    clear_on_end: bool,
    now_ms: i64,
) -> Vec<MemoryWrite> {
    let append = |role, content: String| MemoryWrite::Append {
        open_kfid: lane.open_kfid.clone(),
        external_userid: lane.external_userid.clone(),
        entry: MemoryEntry {
            role,
            content,
            at_ms: now_ms,
        },
    };
    turn.items
        .iter()
        .filter_map(|item| match item {
            Item::Customer { said, .. } => Some(append(MemoryRole::Customer, said.describe())),
            Item::Servicer(text) => Some(append(MemoryRole::Servicer, text.clone())),
            Item::Ended if clear_on_end => Some(MemoryWrite::Clear {
                open_kfid: lane.open_kfid.clone(),
                external_userid: lane.external_userid.clone(),
            }),
            Item::Ended => None,
        })
        .collect()
}

/// An entry the responder adds to memory (its answer, or what it did).
pub(crate) fn assistant_entry(lane: &Lane, content: String, now_ms: i64) -> MemoryWrite {
    MemoryWrite::Append {
        open_kfid: lane.open_kfid.clone(),
        external_userid: lane.external_userid.clone(),
        entry: MemoryEntry {
            role: MemoryRole::Assistant,
            content,
            at_ms: now_ms,
        },
    }
}

/// The msgids of one turn's sends, derived from its key, so that a second attempt at the same
/// turn (after a crash, or on another instance) reuses them and WeChat refuses the duplicate
/// (`send_msg` msgids are unique per account): `<prefix><20 hex>_<i>`, within WeChat's 32
/// characters of `[0-9a-zA-Z_-]`.
pub(crate) fn turn_msgid(prefix: &str, key: &MsgId, index: usize) -> MsgId {
    let digest = Sha256::digest(key.as_str().as_bytes());
    let hex = hex::encode(&digest[..10]);
    format!("{prefix}{hex}_{index}").into()
}

/// The `send_msg` replies of an answer: markdown rendered as plain text, split into at most
/// `max_texts` texts of at most 2048 bytes at paragraph and sentence boundaries, cut with
/// `marker` when it does not fit; and whether it was cut.
pub(crate) fn answer_replies(
    lane: &Lane,
    key: &MsgId,
    markdown: &str,
    max_texts: usize,
    marker: &str,
) -> (Vec<Value>, Vec<String>, bool) {
    let fitted = fit(&plain_text(markdown), max_texts, MAX_TEXT_BYTES, marker);
    let replies = fitted
        .texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text_reply(
                &lane.open_kfid,
                &lane.external_userid,
                turn_msgid("ai", key, i),
                text,
            )
        })
        .collect();
    (replies, fitted.texts, fitted.truncated)
}

/// One `send_msg` text body.
pub(crate) fn text_reply(
    open_kfid: &OpenKfId,
    touser: &ExternalUserId,
    msgid: MsgId,
    text: &str,
) -> Value {
    json!({
        "touser": touser,
        "open_kfid": open_kfid,
        "msgid": msgid,
        "msgtype": "text",
        "text": {"content": text},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(role: MemoryRole, content: &str) -> MemoryEntry {
        MemoryEntry {
            role,
            content: content.into(),
            at_ms: 0,
        }
    }

    fn line(origin: u32, msgid: &str, user: &str, content: &str, may: bool) -> String {
        format!(
            r#"{{"msgid":"{msgid}","open_kfid":"wk1","external_userid":"{user}","send_time":1,"origin":{origin},"msgtype":"text","text":{{"content":"{content}"}},"_wechat_kf":{{"from":"customer","bot_may_reply":{may}}}}}"#
        )
    }

    #[test]
    fn a_delivery_is_read_into_each_customers_turn() {
        let body = [
            line(3, "m1", "wmA", "hello", true),
            line(3, "m2", "wmB", "other", true),
            line(5, "m3", "wmA", "a human here", false),
            line(3, "m4", "wmA", "still there?", false),
            r#"{"_wechat_kf":{"session":{"open_kfid":"wk1","external_userid":"wmA","old_state":3,"new_state":4,"trigger":"event","at":1}}}"#.to_owned(),
            "not json".to_owned(),
        ]
        .join("\n");
        let turns = read_lines(body.as_bytes());
        let a = &turns[&Lane::new("wk1", "wmA")];
        assert_eq!(a.items.len(), 4);
        assert_eq!(a.items[1], Item::Servicer("a human here".into()));
        assert_eq!(a.items[3], Item::Ended);
        assert!(a.asked().is_empty(), "nothing answerable after the end");
        let b = &turns[&Lane::new("wk1", "wmB")];
        assert_eq!(b.asked(), vec![&Said::Text("other".into())]);
        assert_eq!(b.key(), Some(&MsgId::from("m2")));
    }

    #[test]
    fn media_records_give_images_their_file_and_voice_its_transcript() {
        let image = r#"{"msgid":"i1","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"image","image":{"media_id":"M"},"_wechat_kf":{"from":"customer","bot_may_reply":true,"media":{"msgid":"i1","path":"/m/a.jpg"}}}"#;
        let voice = r#"{"msgid":"v1","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"voice","voice":{"media_id":"M"},"_wechat_kf":{"from":"customer","bot_may_reply":true,"media":{"msgid":"v1","transcript":"你好"}}}"#;
        let file = r#"{"msgid":"f1","open_kfid":"wk1","external_userid":"wm1","send_time":1,"origin":3,"msgtype":"file","file":{"media_id":"M"},"_wechat_kf":{"from":"customer","bot_may_reply":true,"media":{"msgid":"f1","file_name":"合同.pdf"}}}"#;
        let body = format!("{image}\n{voice}\n{file}\n");
        let turn = &read_lines(body.as_bytes())[&Lane::new("wk1", "wm1")];
        let asked = turn.asked();
        assert_eq!(asked[0], &Said::Image(Some("/m/a.jpg".into())));
        assert_eq!(asked[1].describe(), "[voice] 你好");
        assert_eq!(asked[2].describe(), "[file: 合同.pdf]");
    }

    #[test]
    fn recall_keeps_the_newest_turns_within_both_bounds() {
        let memory = vec![
            entry(MemoryRole::Customer, "q1"),
            entry(MemoryRole::Assistant, "a1"),
            entry(MemoryRole::Conversation, "dify-id"),
            entry(MemoryRole::Customer, "q2"),
            entry(MemoryRole::Customer, "q2b"),
            entry(MemoryRole::Assistant, "a2"),
            entry(MemoryRole::Customer, "q3"),
            entry(MemoryRole::Assistant, "a3"),
        ];
        let texts = |kept: Vec<&MemoryEntry>| {
            kept.iter()
                .map(|e| e.content.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(texts(recall(&memory, 2, 1000)), "q2,q2b,a2,q3,a3");
        assert_eq!(texts(recall(&memory, 10, 1000)), "q1,a1,q2,q2b,a2,q3,a3");
        assert_eq!(texts(recall(&memory, 10, 5)), "q3,a3");
        assert_eq!(texts(recall(&memory, 10, 6)), "a2,q3,a3");
        assert_eq!(texts(recall(&memory, 0, 1000)), "");
        assert_eq!(conversation_id(&memory), Some("dify-id"));
    }

    #[test]
    fn a_long_markdown_answer_fits_the_quota_in_plain_texts() {
        let lane = Lane::new("wk1", "wm1");
        let markdown = format!("# 标题\n\n{}", "**重要**的句子。".repeat(600));
        let (replies, texts, truncated) =
            answer_replies(&lane, &MsgId::from("m1"), &markdown, 2, "…");
        assert_eq!(replies.len(), 2);
        assert!(truncated);
        assert!(texts.iter().all(|t| t.len() <= 2048 && !t.contains("**")));
        assert!(texts[1].ends_with('…'));
        assert_eq!(
            replies[0]["msgid"],
            turn_msgid("ai", &"m1".into(), 0).as_str()
        );
        assert_ne!(replies[0]["msgid"], replies[1]["msgid"]);
    }

    #[test]
    fn turn_msgids_are_stable_and_valid_for_wechat() {
        let key = MsgId::from("a-very-long-customer-msgid-0123456789abcdef");
        let id = turn_msgid("ai", &key, 4);
        assert_eq!(id, turn_msgid("ai", &key, 4));
        assert_ne!(id, turn_msgid("in", &key, 4));
        assert!(id.as_str().len() <= 32);
        assert!(wechat_kf::client::outbound::validate_msgid(id.as_str()).is_ok());
    }

    #[test]
    fn memory_remembers_both_sides_and_forgets_at_the_end() {
        let lane = Lane::new("wk1", "wm1");
        let turn = CustomerTurn {
            items: vec![
                Item::Customer {
                    msgid: "m1".into(),
                    said: Said::Text("hi".into()),
                    answerable: true,
                },
                Item::Servicer("hello".into()),
                Item::Ended,
            ],
        };
        let writes = remember(&lane, &turn, true, 7);
        assert_eq!(writes.len(), 3);
        assert!(matches!(writes[2], MemoryWrite::Clear { .. }));
        assert_eq!(remember(&lane, &turn, false, 7).len(), 2);
    }
}
