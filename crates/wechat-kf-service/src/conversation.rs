//! A message for every stage of a conversation: the welcome on `enter_session`, the connect
//! message when a servicer picks the session up, the end message (with the satisfaction survey)
//! when it ends — each sent once with the code its event carried (`send_msg_on_event`,
//! official doc 95122).
//!
//! What to send is decided here, purely, from a pulled page: [`stage_actions`] turns the page's
//! events into replies that the puller queues in the transaction that stores the events, so a
//! code is used at most once whatever happens (the reply exists only if its event was stored
//! new). The sender renders the `{nickname}` and `{account}` placeholders and refuses a code
//! whose time has run out without calling WeChat ([`StageMeta`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wechat_kf::client::Client;
use wechat_kf::client::customers::BatchGetCustomersRequest;
use wechat_kf::message::{ChangeType, Event, MessageContent};
use wechat_kf::session::ServiceState;
use wechat_kf::{ExternalUserId, MsgId, OpenKfId, UserId};

use crate::config::{ConversationConfig, Stage, Stages};
use crate::replies::new_msgid;
use crate::store::{NewMessage, NewReply, Payload, ReplyEndpoint, SURVEY_MENU_PREFIX, is_skipped};

/// How long a welcome or end code may be used after its event (official doc 95122).
pub(crate) const SHORT_CODE_SECS: i64 = 20;
/// How long a connect (or queue) code may be used.
pub(crate) const LONG_CODE_SECS: i64 = 48 * 3600;

/// What the service adds to a stage message's queued body under `_wechat_kf` (never sent to
/// WeChat: the body's message is read by type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageMeta {
    /// `welcome`, `queue`, `connect` or `end`.
    pub(crate) stage: String,
    /// The code's last second (WeChat's clock, unix seconds).
    pub(crate) expires_at: Option<i64>,
    /// The account.
    pub(crate) open_kfid: OpenKfId,
    /// The customer.
    pub(crate) external_userid: ExternalUserId,
}

impl StageMeta {
    /// The meta of a queued body, if it is a stage message.
    pub(crate) fn of_body(body: &Value) -> Option<StageMeta> {
        let meta = body.get("_wechat_kf")?;
        Some(StageMeta {
            stage: meta.get("stage")?.as_str()?.to_owned(),
            expires_at: meta.get("expires_at").and_then(Value::as_i64),
            open_kfid: OpenKfId::from(meta.get("open_kfid")?.as_str()?),
            external_userid: ExternalUserId::from(meta.get("external_userid")?.as_str()?),
        })
    }

    /// Whether the code can no longer be used at `now` (unix seconds).
    pub(crate) fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now > at)
    }
}

/// What [`stage_actions`] found beside the replies.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StageCounts {
    /// `enter_session` events without a `welcome_code` (the admin configured WeChat's own
    /// welcome, or the customer wrote within 48 hours): nothing can be sent.
    pub(crate) welcome_without_code: u64,
}

/// The stage messages of a page: one `send_msg_on_event` reply per new event whose code can
/// carry a configured message, keyed by the event's msgid (the store queues it only if that
/// event is stored new and not skipped).
pub(crate) fn stage_actions(
    stages: Stages<'_>,
    open_kfid: &OpenKfId,
    messages: &[NewMessage],
    skip_before: Option<i64>,
) -> (Vec<(MsgId, NewReply)>, StageCounts) {
    let mut out = Vec::new();
    let mut counts = StageCounts::default();
    for m in messages {
        let Payload::Message(message) = &m.payload else {
            continue;
        };
        if is_skipped(m.send_time, skip_before) {
            continue;
        }
        let MessageContent::Event(event) = message.content() else {
            continue;
        };
        let at = m.send_time;
        let (stage, code, customer, message) = match event {
            Event::EnterSession(e) => {
                let code = e.welcome_code.as_deref().filter(|c| !c.is_empty());
                if code.is_none() {
                    counts.welcome_without_code += 1;
                }
                let scene = e.scene.as_deref().unwrap_or("");
                let scene_param = e.scene_param.as_deref().unwrap_or("");
                // The most precise entry first: `<scene>?<scene_param>`, then `<scene>`.
                let stage = stages
                    .scenes
                    .get(&format!("{scene}?{scene_param}"))
                    .or_else(|| stages.scenes.get(scene))
                    .or(stages.welcome);
                let place = (scene, scene_param);
                let message = stage.map(|s| rendered(s, place));
                ("welcome", code, e.external_userid.as_ref(), message)
            }
            Event::SessionStatusChange(e) => {
                let code = e.msg_code.as_deref().filter(|c| !c.is_empty());
                let (stage, message) = match e.change_type {
                    Some(ChangeType::PickedFromQueue) => {
                        ("connect", stages.connect.map(|s| rendered(s, ("", ""))))
                    }
                    Some(ChangeType::Ended) => ("end", end_message(stages)),
                    _ => continue,
                };
                (stage, code, e.external_userid.as_ref(), message)
            }
            _ => continue,
        };
        let (Some(code), Some(customer), Some(message)) = (code, customer, message) else {
            continue;
        };
        let lifetime = if stage == "connect" {
            LONG_CODE_SECS
        } else {
            SHORT_CODE_SECS
        };
        let mut body = message;
        body["code"] = json!(code);
        body["msgid"] = json!(new_msgid());
        body["_wechat_kf"] = json!({
            "stage": stage,
            // A message without a send_time cannot be dated: let WeChat decide.
            "expires_at": (at > 0).then_some(at + lifetime),
            "open_kfid": open_kfid,
            "external_userid": customer,
        });
        out.push((
            m.msgid.clone(),
            NewReply {
                endpoint: ReplyEndpoint::SendMsgOnEvent,
                lane: format!("{open_kfid}/{customer}"),
                body: body.to_string(),
                msgid: MsgId::from(body["msgid"].as_str().unwrap_or_default()),
                delivery_id: None,
                position: None,
                hold_ms: 0,
                error: None,
                result: None,
            },
        ));
    }
    (out, counts)
}

/// A stage's message as a body (`msgtype` and its object), with `{scene}` and `{scene_param}`
/// filled in (the other placeholders are the sender's).
fn rendered(stage: &Stage, (scene, scene_param): (&str, &str)) -> Value {
    let fill = |text: &str| {
        text.replace("{scene}", scene)
            .replace("{scene_param}", scene_param)
    };
    match stage {
        Stage::Text(text) => json!({"msgtype": "text", "text": {"content": fill(text)}}),
        Stage::Menu {
            head_content,
            list,
            tail_content,
        } => menu(
            &fill(head_content),
            list,
            &fill(tail_content),
            "wechat_kf_menu_",
        ),
    }
}

/// A `msgmenu` of click choices with ids `<prefix><index>`.
fn menu(head: &str, choices: &[String], tail: &str, prefix: &str) -> Value {
    let list: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, choice)| json!({"type": "click", "click": {"id": format!("{prefix}{i}"), "content": choice}}))
        .collect();
    json!({"msgtype": "msgmenu", "msgmenu": {"head_content": head, "list": list, "tail_content": tail}})
}

/// The end message: the configured one, with the survey's choices as a menu under it when a
/// survey is configured (the end code carries one message, so both go as one).
fn end_message(stages: Stages<'_>) -> Option<Value> {
    if stages.survey.is_empty() {
        return stages.end.map(|s| rendered(s, ("", "")));
    }
    let (head, tail) = match stages.end {
        Some(Stage::Text(text)) => (text.as_str(), ""),
        Some(Stage::Menu {
            head_content,
            tail_content,
            ..
        }) => (head_content.as_str(), tail_content.as_str()),
        None => ("", ""),
    };
    Some(menu(head, stages.survey, tail, SURVEY_MENU_PREFIX))
}

/// Fills `{nickname}` and `{account}` into a queued stage body's text fields.
pub(crate) fn fill_names(body: &mut Value, nickname: &str, account: &str) {
    let fill = |v: &mut Value| {
        if let Some(text) = v.as_str() {
            if text.contains('{') {
                *v = json!(
                    text.replace("{nickname}", nickname)
                        .replace("{account}", account)
                );
            }
        }
    };
    if let Some(content) = body.pointer_mut("/text/content") {
        fill(content);
    }
    for key in ["/msgmenu/head_content", "/msgmenu/tail_content"] {
        if let Some(text) = body.pointer_mut(key) {
            fill(text);
        }
    }
}

/// How long a looked-up nickname or account name is used.
const NAMES_TTL: Duration = Duration::from_secs(600);
/// Most names kept; beyond it the cache starts over (names are cheap to look up again).
const NAMES_MAX: usize = 10_000;

/// The stage messages of transfers and the names their placeholders need: the configured
/// stages, and nicknames (`kf/customer/batchget`) and account names (`kf/account/list`)
/// cached for [`NAMES_TTL`]. Shared by the reply sender and the reply API.
#[derive(Debug)]
pub(crate) struct Conversations {
    config: Arc<ConversationConfig>,
    names: Mutex<HashMap<String, (String, Instant)>>,
    /// Per account: the servicers listed as receiving, and when they were listed.
    rosters: Mutex<HashMap<OpenKfId, (Vec<UserId>, Instant)>>,
    /// Per (account, servicer): the number of the last assignment (larger is later).
    assigned: Mutex<HashMap<(OpenKfId, UserId), u64>>,
    assignments: std::sync::atomic::AtomicU64,
}

impl Conversations {
    /// A conversations for `config`.
    pub(crate) fn new(config: Arc<ConversationConfig>) -> Conversations {
        Conversations {
            config,
            names: Mutex::new(HashMap::new()),
            rosters: Mutex::new(HashMap::new()),
            assigned: Mutex::new(HashMap::new()),
            assignments: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The servicers of an account that may take a session (`kf/servicer/list`, status 0 =
    /// receiving; an entry without status — the app lacks the manage permission — is tried,
    /// and WeChat's 95019 then rules it out), listed at most every [`ROSTER_TTL`].
    pub(crate) async fn receiving_servicers(
        &self,
        client: &Client,
        open_kfid: &OpenKfId,
    ) -> Result<Vec<UserId>, wechat_kf::client::Error> {
        let cached = lock(&self.rosters).get(open_kfid).cloned();
        if let Some((roster, at)) = cached {
            if at.elapsed() < ROSTER_TTL {
                return Ok(roster);
            }
        }
        let listed = client.servicers().list(open_kfid.clone()).await?;
        let roster: Vec<UserId> = listed
            .servicer_list
            .into_iter()
            .filter(|s| s.status.is_none_or(|status| status == 0))
            .filter_map(|s| s.userid)
            .collect();
        lock(&self.rosters).insert(open_kfid.clone(), (roster.clone(), Instant::now()));
        Ok(roster)
    }

    /// The next servicer to try for an account: of `roster`, not yet `tried`, the least
    /// recently assigned (never assigned first, in list order).
    pub(crate) fn next_servicer(
        &self,
        open_kfid: &OpenKfId,
        roster: &[UserId],
        tried: &[UserId],
    ) -> Option<UserId> {
        let assigned = lock(&self.assigned);
        least_recently_assigned(roster, tried, |s| {
            assigned.get(&(open_kfid.clone(), s.clone())).copied()
        })
    }

    /// Remembers that `servicer` took a session now.
    pub(crate) fn assigned(&self, open_kfid: &OpenKfId, servicer: &UserId) {
        let n = self
            .assignments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        lock(&self.assigned).insert((open_kfid.clone(), servicer.clone()), n);
    }

    /// Forgets an account's roster (a servicer refused: list again next time).
    pub(crate) fn forget_roster(&self, open_kfid: &OpenKfId) {
        lock(&self.rosters).remove(open_kfid);
    }

    /// The message to send with the code a transfer into `state` returns: the transfer's own
    /// text, else the configured queue (2), connect (3) or end (4, with the survey) message.
    pub(crate) fn transfer_message(
        &self,
        open_kfid: &OpenKfId,
        state: ServiceState,
        explicit: Option<&str>,
    ) -> Option<(&'static str, Value)> {
        let stages = self.config.stages(open_kfid.as_str());
        let stage = match state {
            ServiceState::Queued => "queue",
            ServiceState::Human => "connect",
            ServiceState::Ended => "end",
            _ => return None,
        };
        if let Some(text) = explicit {
            return Some((stage, json!({"msgtype": "text", "text": {"content": text}})));
        }
        let message = match state {
            ServiceState::Queued => stages.queue.map(|s| rendered(s, ("", ""))),
            ServiceState::Human => stages.connect.map(|s| rendered(s, ("", ""))),
            _ => end_message(stages),
        }?;
        Some((stage, message))
    }

    /// Fills `{nickname}` and `{account}` into `body` when it asks for them; a name that cannot
    /// be looked up becomes empty (the message still goes out).
    pub(crate) async fn fill(
        &self,
        client: &Client,
        open_kfid: &OpenKfId,
        customer: &ExternalUserId,
        body: &mut Value,
    ) {
        if !wants_names(body) {
            return;
        }
        let nickname = self
            .name(format!("c/{customer}"), || async {
                let request = BatchGetCustomersRequest::new([customer.clone()]);
                let found = client.customers().batchget(request).await.ok()?;
                found.customer_list.into_iter().next().map(|c| c.nickname)
            })
            .await;
        let account = self
            .name(format!("a/{open_kfid}"), || async {
                let accounts = client.accounts().list_all().await.ok()?;
                accounts
                    .into_iter()
                    .find(|a| &a.open_kfid == open_kfid)
                    .map(|a| a.name)
            })
            .await;
        fill_names(body, &nickname, &account);
    }

    async fn name<F, Fut>(&self, key: String, look_up: F) -> String
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<String>>,
    {
        let cached = self.lock().get(&key).cloned();
        if let Some((name, at)) = cached {
            if at.elapsed() < NAMES_TTL {
                return name;
            }
        }
        let Some(name) = look_up().await else {
            return String::new();
        };
        let mut names = self.lock();
        if names.len() >= NAMES_MAX {
            names.clear();
        }
        names.insert(key, (name.clone(), Instant::now()));
        name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        lock(&self.names)
    }
}

/// A cache's lock; a panic elsewhere while holding it leaves a usable cache.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a listed roster of servicers is trusted.
const ROSTER_TTL: Duration = Duration::from_secs(30);

/// Of `roster`, not in `tried`, the one assigned longest ago (`last`: the number of its last
/// assignment, `None` never): never-assigned servicers first, in roster order.
pub(crate) fn least_recently_assigned(
    roster: &[UserId],
    tried: &[UserId],
    last: impl Fn(&UserId) -> Option<u64>,
) -> Option<UserId> {
    roster
        .iter()
        .filter(|s| !tried.contains(s))
        .min_by_key(|s| last(s).map_or(0, |n| n + 1))
        .cloned()
}

/// Whether a queued stage body asks for a name the sender has to look up.
pub(crate) fn wants_names(body: &Value) -> bool {
    [
        "/text/content",
        "/msgmenu/head_content",
        "/msgmenu/tail_content",
    ]
    .iter()
    .filter_map(|p| body.pointer(p).and_then(Value::as_str))
    .any(|t| t.contains("{nickname}") || t.contains("{account}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wechat_kf::message::Message;

    use super::*;
    use crate::config::ConversationConfig;

    fn event(msgid: &str, send_time: i64, event: &str) -> NewMessage {
        let raw = format!(
            r#"{{"msgid":"{msgid}","send_time":{send_time},"origin":4,"msgtype":"event","event":{event}}}"#
        );
        let message = Message::from_json(&raw).unwrap();
        NewMessage {
            msgid: msgid.into(),
            external_userid: message
                .external_userid()
                .cloned()
                .unwrap_or_else(|| "".into()),
            send_time,
            origin: Some(4),
            kind: "event".into(),
            payload: Payload::Message(message),
            decode_error: None,
        }
    }

    fn enter(msgid: &str, scene: &str, code: Option<&str>) -> NewMessage {
        let code = code.map_or(String::new(), |c| format!(r#","welcome_code":"{c}""#));
        event(
            msgid,
            1000,
            &format!(
                r#"{{"event_type":"enter_session","open_kfid":"wk","external_userid":"wm1","scene":"{scene}","scene_param":"id%3D42"{code}}}"#
            ),
        )
    }

    fn config() -> ConversationConfig {
        ConversationConfig {
            welcome: Some(Stage::Text("您好 {nickname}，欢迎光临 {account}".into())),
            scenes: BTreeMap::from([("order".into(), Stage::Text("订单 {scene_param}".into()))]),
            end: Some(Stage::Text("感谢咨询".into())),
            survey: vec!["满意".into(), "一般".into(), "不满意".into()],
            connect: Some(Stage::Text("已为您接通".into())),
            ..ConversationConfig::default()
        }
    }

    fn bodies(actions: &[(MsgId, NewReply)]) -> Vec<Value> {
        actions
            .iter()
            .map(|(_, r)| serde_json::from_str(&r.body).unwrap())
            .collect()
    }

    #[test]
    fn a_welcome_is_chosen_by_scene_and_carries_its_code_and_deadline() {
        let config = config();
        let page = [
            enter("e1", "order", Some("W1")),
            enter("e2", "ad", Some("W2")),
        ];
        let (actions, counts) = stage_actions(config.stages("wk"), &"wk".into(), &page, None);
        assert_eq!(counts.welcome_without_code, 0);
        let bodies = bodies(&actions);
        assert_eq!(bodies[0]["text"]["content"], "订单 id%3D42");
        assert_eq!(bodies[0]["code"], "W1");
        assert_eq!(bodies[0]["_wechat_kf"]["expires_at"], 1020);
        assert_eq!(
            bodies[1]["text"]["content"],
            "您好 {nickname}，欢迎光临 {account}"
        );
        assert!(wants_names(&bodies[1]));
        assert_eq!(actions[0].0, "e1");
        assert_eq!(actions[0].1.lane, "wk/wm1");
    }

    #[test]
    fn an_entry_without_a_code_sends_nothing_and_is_counted() {
        let (actions, counts) = stage_actions(
            config().stages("wk"),
            &"wk".into(),
            &[enter("e", "", None)],
            None,
        );
        assert!(actions.is_empty());
        assert_eq!(counts.welcome_without_code, 1);
    }

    #[test]
    fn the_end_message_carries_the_survey_as_one_menu() {
        let end = event(
            "x",
            2000,
            r#"{"event_type":"session_status_change","open_kfid":"wk","external_userid":"wm1","change_type":3,"old_servicer_userid":"zhangsan","msg_code":"END"}"#,
        );
        let (actions, _) = stage_actions(config().stages("wk"), &"wk".into(), &[end], None);
        let body = &bodies(&actions)[0];
        assert_eq!(body["msgtype"], "msgmenu");
        assert_eq!(body["msgmenu"]["head_content"], "感谢咨询");
        assert_eq!(body["msgmenu"]["list"][2]["click"]["content"], "不满意");
        assert_eq!(
            body["msgmenu"]["list"][0]["click"]["id"],
            format!("{SURVEY_MENU_PREFIX}0")
        );
        assert_eq!(StageMeta::of_body(body).unwrap().stage, "end");
        assert!(StageMeta::of_body(body).unwrap().expired(2021));
        assert!(!StageMeta::of_body(body).unwrap().expired(2020));
    }

    #[test]
    fn skipped_events_and_unconfigured_stages_send_nothing() {
        let page = [enter("e", "", Some("W"))];
        let (actions, _) = stage_actions(config().stages("wk"), &"wk".into(), &page, Some(5000));
        assert!(actions.is_empty(), "the first-start policy skipped it");
        let none = ConversationConfig::default();
        let (actions, _) = stage_actions(none.stages("wk"), &"wk".into(), &page, None);
        assert!(actions.is_empty());
    }

    #[test]
    fn the_least_recently_assigned_servicer_is_next_and_tried_ones_are_skipped() {
        let roster: Vec<UserId> = ["a", "b", "c"].map(UserId::from).to_vec();
        let last = |s: &UserId| match s.as_str() {
            "a" => Some(5),
            "b" => Some(2),
            _ => None,
        };
        assert_eq!(
            least_recently_assigned(&roster, &[], last),
            Some("c".into())
        );
        assert_eq!(
            least_recently_assigned(&roster, &["c".into()], last),
            Some("b".into())
        );
        assert_eq!(least_recently_assigned(&roster, &roster, last), None);
        let fresh = |_: &UserId| None;
        assert_eq!(
            least_recently_assigned(&roster, &[], fresh),
            Some("a".into()),
            "roster order"
        );
    }

    #[test]
    fn names_are_filled_into_texts_and_menus() {
        let mut body = json!({"msgtype":"text","text":{"content":"您好 {nickname}，{account}"}});
        fill_names(&mut body, "小明", "某店");
        assert_eq!(body["text"]["content"], "您好 小明，某店");
        assert!(!wants_names(&body));
    }
}
