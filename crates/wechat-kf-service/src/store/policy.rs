//! The page-commit policy: what committing a pulled page changes, as a pure function of the page
//! and of what the store already holds.
//!
//! Both backends do the same three steps inside their one transaction: read what the plan needs
//! ([`msgids`], then the views of [`customers_to_observe`]), call [`plan_page`], write the
//! [`PagePlan`]. The rules live here once, so the backends cannot drift apart; they are SQL only.

use std::collections::{BTreeMap, HashMap, HashSet};

use wechat_kf::message::{Event, Message, MessageContent, Origin};
use wechat_kf::session::{ServiceState, SessionView};
use wechat_kf::{ExternalUserId, MsgId, OpenKfId};

use super::turn::{Author, Turn, WhileHuman, is_survey_answer, turn_of};
use super::{
    ItemKind, Lane, NewMessage, NewReply, PageOutcome, PageWrite, Payload, SESSION_KIND,
    SessionChange, StoredMessage,
};

/// Whether a message sent at `send_time` is skipped under `skip_before`. A message without a
/// usable `send_time` (0) is never skipped: what cannot be dated is delivered.
pub fn is_skipped(send_time: i64, skip_before: Option<i64>) -> bool {
    skip_before.is_some_and(|before| send_time > 0 && send_time < before)
}

/// What committing a page writes, decided by [`plan_page`].
#[derive(Debug)]
pub(crate) struct PagePlan {
    /// The account.
    pub open_kfid: OpenKfId,
    /// The rows to insert, in server order (each msgid once, none already stored), with a
    /// session change after the item that caused it.
    pub rows: Vec<PlannedRow>,
    /// Items whose msgid was already stored, or came earlier in the same page.
    pub duplicates: usize,
    /// One write per customer whose session tracking changed, by `external_userid`.
    pub sessions: Vec<SessionWrite>,
    /// The handoffs to queue, in the page's action order.
    pub replies: Vec<NewReply>,
    /// Customers whose held items are released (delivered as history) before the page's rows:
    /// the bot may speak to them again (`while_human = "hold"`).
    pub release: Vec<ExternalUserId>,
    /// The new cursor; `None` keeps the stored one.
    pub next_cursor: Option<String>,
    /// The unfinished catch-up remembered with the cursor (`None` clears it).
    pub catch_up_before: Option<i64>,
    /// Now, unix milliseconds (`stored_at`, `updated_at`, the skipped rows' `delivered_at`).
    pub now_ms: i64,
}

/// One row to insert.
#[derive(Debug)]
pub(crate) struct PlannedRow {
    /// The message (or the session change).
    pub message: NewMessage,
    /// Stored as finished and never delivered (the first-start policy).
    pub skipped: bool,
    /// Stored as finished and never delivered because a human held the session
    /// (`while_human = "skip"`).
    pub quiet: bool,
    /// Stored and kept from the bot until it may speak again (`while_human = "hold"`).
    pub held: bool,
    /// Who wrote it and whether the bot may answer.
    pub turn: Turn,
}

impl PlannedRow {
    /// Whether the row is stored finished (never delivered).
    pub fn finished(&self) -> bool {
        self.skipped || self.quiet
    }
}

/// A customer's session tracking after the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionWrite {
    /// The customer.
    pub external_userid: ExternalUserId,
    /// The latest `send_time` of the page's new customer messages (origin 3), if any; the store
    /// keeps the larger of this and what it had.
    pub last_customer_msg_at: Option<i64>,
    /// The view after observing the page's new decoded messages; `None` (only undecodable
    /// customer messages) keeps the stored view.
    pub view: Option<SessionView>,
}

impl PagePlan {
    /// New messages stored skipped by the first-start policy (session rows not counted).
    pub fn skipped(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.skipped && r.message.kind != SESSION_KIND)
            .count()
    }

    /// What the commit did, given the `seq` each of [`rows`](Self::rows) got, in order, and the
    /// held rows it released (delivered first, as history).
    pub fn into_outcome(self, seqs: &[i64], released: Vec<StoredMessage>) -> PageOutcome {
        let skipped = self.skipped();
        let mut stored = released;
        stored.reserve(self.rows.len());
        for (row, &seq) in self.rows.into_iter().zip(seqs) {
            if row.finished() || row.held {
                continue;
            }
            let m = row.message;
            let item = if m.kind == SESSION_KIND {
                ItemKind::Session
            } else {
                ItemKind::Message
            };
            // Ids are shared strings: a lane costs two reference-count bumps, no allocation.
            stored.push(StoredMessage {
                seq,
                lane: Lane {
                    open_kfid: self.open_kfid.clone(),
                    external_userid: m.external_userid,
                },
                stored_at_ms: self.now_ms,
                invalid: m.decode_error.is_some(),
                payload: Some(m.payload),
                media: None,
                turn: row.turn,
                item,
            });
        }
        PageOutcome {
            stored,
            skipped,
            duplicates: self.duplicates,
        }
    }
}

/// The page's distinct msgids: the store answers which of them it already holds.
pub(crate) fn msgids(page: &PageWrite) -> Vec<&MsgId> {
    let mut seen = HashSet::with_capacity(page.messages.len());
    page.messages
        .iter()
        .map(|m| &m.msgid)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// The customers whose stored views [`plan_page`] needs: those with a new decoded message.
pub(crate) fn customers_to_observe<'a>(
    page: &'a PageWrite,
    already_stored: &HashSet<MsgId>,
) -> Vec<&'a ExternalUserId> {
    let mut customers: Vec<&ExternalUserId> = page
        .messages
        .iter()
        .zip(new_items(page, already_stored))
        .filter(|(m, new)| {
            *new && !m.external_userid.as_str().is_empty()
                && matches!(m.payload, Payload::Message(_))
        })
        .map(|(m, _)| &m.external_userid)
        .collect();
    customers.sort_unstable();
    customers.dedup();
    customers
}

/// Which items are new: not stored yet, and the first of their msgid in the page.
fn new_items(page: &PageWrite, already_stored: &HashSet<MsgId>) -> Vec<bool> {
    let mut first = HashSet::with_capacity(page.messages.len());
    page.messages
        .iter()
        .map(|m| !already_stored.contains(&m.msgid) && first.insert(&m.msgid))
        .collect()
}

/// Decides what committing `page` writes, given the msgids of the page the store already holds
/// (`already_stored`) and the stored views of [`customers_to_observe`] (`views`; a customer
/// missing from it starts from an empty view, like one with no row or an unreadable one).
///
/// Each item, in server order:
/// 1. **Duplicate or new.** An item whose msgid is already stored, or came earlier in this page,
///    is a duplicate: it is counted and changes nothing else — no row, no session tracking, no
///    action. Every other item is new and becomes a row.
/// 2. **Skipped or delivered.** A new item sent before `skip_before` ([`is_skipped`]) is stored
///    skipped: finished, never delivered.
/// 3. **Session tracking, skipped or not.** A new item of a customer (non-empty
///    `external_userid`) with origin 3 moves that customer's last message time forward; a new
///    *decoded* item is observed by that customer's [`SessionView`], in page order. Skipped
///    messages count: yesterday's servicer still holds the session today. A change of the
///    view's state becomes a session row right after the item (skipped with it).
/// 4. **Turns.** Every row gets its [`Turn`] ([`turn_of`]): the state the item left and the
///    customer's view after the whole page, at `turns.now_secs`. Under `while_human`, an item
///    a human is handling is stored finished (`skip`) or held (`hold`); with `hold`, a customer
///    message the bot may answer releases the customer's held items.
/// 5. **Actions.** A handoff is queued only when the item with its msgid is new and not
///    skipped (a skipped or repeated keyword never transfers a customer again).
///
/// Then the cursor and catch-up marker of the page are stored as given. Writing the plan is
/// the backend's job; the whole plan is one transaction.
pub(crate) fn plan_page(
    page: PageWrite,
    already_stored: &HashSet<MsgId>,
    mut views: HashMap<ExternalUserId, SessionView>,
) -> PagePlan {
    let new = new_items(&page, already_stored);
    let PageWrite {
        open_kfid,
        messages,
        next_cursor,
        now_ms,
        skip_before,
        catch_up_before,
        actions,
        turns,
    } = page;
    let mut rows = Vec::with_capacity(messages.len());
    // Per row: what its turn is decided from (author, survey answer, the state it left).
    let mut facts: Vec<(Author, bool, Option<ServiceState>)> = Vec::with_capacity(messages.len());
    let mut duplicates = 0;
    // Sorted, so the backends write sessions in one order.
    let mut sessions: BTreeMap<ExternalUserId, SessionWrite> = BTreeMap::new();
    let mut delivered: HashSet<MsgId> = HashSet::new();
    for (message, new) in messages.into_iter().zip(new) {
        if !new {
            duplicates += 1;
            continue;
        }
        let skipped = is_skipped(message.send_time, skip_before);
        let decoded = match &message.payload {
            Payload::Message(decoded) => Some(decoded.clone()),
            Payload::Raw(_) => None,
        };
        let from = Author::of_origin(message.origin);
        let survey = decoded.as_ref().is_some_and(is_survey_answer);
        let customer = message.external_userid.clone();
        let mut state_after = None;
        let mut change = None;
        if !customer.as_str().is_empty() && (message.origin == Some(3) || decoded.is_some()) {
            let session = sessions
                .entry(customer.clone())
                .or_insert_with(|| SessionWrite {
                    external_userid: customer.clone(),
                    last_customer_msg_at: None,
                    view: None,
                });
            if message.origin == Some(3) {
                session.last_customer_msg_at = Some(
                    session
                        .last_customer_msg_at
                        .map_or(message.send_time, |at| at.max(message.send_time)),
                );
            }
            match &decoded {
                Some(decoded) => {
                    let view = session
                        .view
                        .get_or_insert_with(|| views.remove(&customer).unwrap_or_default());
                    let before = view.state();
                    view.observe(decoded);
                    state_after = view.state();
                    change = session_change(&open_kfid, decoded, before, view);
                }
                None => {
                    state_after = session
                        .view
                        .as_ref()
                        .or_else(|| views.get(&customer))
                        .and_then(SessionView::state);
                }
            }
        }
        if !skipped {
            delivered.insert(message.msgid.clone());
        }
        let placeholder = Turn {
            from,
            no_reply: None,
        };
        rows.push(PlannedRow {
            message,
            skipped,
            quiet: false,
            held: false,
            turn: placeholder,
        });
        facts.push((from, survey, state_after));
        if let Some(change) = change {
            rows.push(change_row(&customer, change, skipped));
            facts.push((Author::System, false, None));
        }
    }
    // The turns need each customer's view after the whole page.
    let mut release = BTreeMap::new();
    for (row, (from, survey, state_after)) in rows.iter_mut().zip(facts) {
        let customer = &row.message.external_userid;
        let final_view = sessions
            .get(customer)
            .and_then(|s| s.view.as_ref())
            .or_else(|| views.get(customer));
        row.turn = turn_of(from, survey, state_after, final_view, turns.now_secs);
        if row.message.kind == SESSION_KIND || row.skipped {
            continue;
        }
        let human = row.turn.no_reply.is_some_and(|r| r.is_human());
        match turns.while_human {
            WhileHuman::Skip if human => row.quiet = true,
            WhileHuman::Hold if human => row.held = true,
            WhileHuman::Hold if row.turn.from == Author::Customer && row.turn.bot_may_reply() => {
                release.insert(customer.clone(), ());
            }
            _ => {}
        }
    }
    let replies = actions
        .into_iter()
        .filter(|(msgid, _)| delivered.contains(msgid))
        .map(|(_, reply)| reply)
        .collect();
    PagePlan {
        open_kfid,
        rows,
        duplicates,
        sessions: sessions.into_values().collect(),
        replies,
        release: release.into_keys().collect(),
        next_cursor,
        catch_up_before,
        now_ms,
    }
}

/// The session change an observed item caused: the state moved, or a servicer changed the
/// session in the WeCom client (a transfer to another servicer keeps state 3). A customer's
/// first message (unknown → new) and an entry without a message (unknown → ended) are where a
/// session starts, not changes.
fn session_change(
    open_kfid: &OpenKfId,
    message: &Message,
    before: Option<ServiceState>,
    view: &SessionView,
) -> Option<SessionChange> {
    let after = view.state()?;
    let (trigger, change_type) = match message.content() {
        MessageContent::Event(Event::SessionStatusChange(e)) => {
            ("session_status_change", e.change_type.map(|c| c.code()))
        }
        MessageContent::Event(Event::EnterSession(_)) => ("enter_session", None),
        MessageContent::Event(Event::MsgSendFail(_)) => ("msg_send_fail", None),
        MessageContent::Event(_) => ("event", None),
        _ if message.origin() == Origin::Servicer => ("servicer_message", None),
        _ => ("customer_message", None),
    };
    let moved = match before {
        None => !matches!(after, ServiceState::New | ServiceState::Ended),
        Some(before) => before != after,
    };
    if !moved && trigger != "session_status_change" {
        return None;
    }
    Some(SessionChange {
        open_kfid: open_kfid.clone(),
        external_userid: ExternalUserId::from(""),
        old_state: before.map(ServiceState::code),
        new_state: after.code(),
        servicer_userid: view.servicer().cloned(),
        trigger,
        change_type,
        by: None,
        cause_msgid: Some(message.msgid().clone()),
        at: message.send_time() as i64,
    })
}

/// The row that records `change` of `customer`'s session, right after its cause.
fn change_row(customer: &ExternalUserId, mut change: SessionChange, skipped: bool) -> PlannedRow {
    change.external_userid = customer.clone();
    let cause = change
        .cause_msgid
        .as_ref()
        .map_or_else(String::new, |m| m.as_str().to_owned());
    PlannedRow {
        message: change.row(MsgId::from(format!("session:{cause}"))),
        skipped,
        quiet: false,
        held: false,
        turn: Turn::SYSTEM,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wechat_kf::message::Message;
    use wechat_kf::session::{SendRefusal, ServiceState};

    use super::*;
    use crate::store::{ReplyEndpoint, SURVEY_MENU_PREFIX};

    const CUSTOMER: u32 = 3;
    const SERVICER: u32 = 5;

    /// A decoded text of `customer` sent at `send_time` with `origin`.
    fn text(msgid: &str, customer: &str, send_time: i64, origin: u32) -> NewMessage {
        let servicer = if origin == SERVICER {
            r#","servicer_userid":"zhangsan""#
        } else {
            ""
        };
        let raw = format!(
            r#"{{"msgid":"{msgid}","open_kfid":"wk","external_userid":"{customer}","send_time":{send_time},"origin":{origin}{servicer},"msgtype":"text","text":{{"content":"x"}}}}"#
        );
        NewMessage {
            msgid: msgid.into(),
            external_userid: customer.into(),
            send_time,
            origin: Some(origin),
            kind: "text".into(),
            payload: Payload::Message(Message::from_json(&raw).unwrap()),
            decode_error: None,
        }
    }

    /// An item the library could not decode.
    fn undecodable(msgid: &str, customer: &str, send_time: i64) -> NewMessage {
        NewMessage {
            msgid: msgid.into(),
            external_userid: customer.into(),
            send_time,
            origin: Some(CUSTOMER),
            kind: "invalid:text".into(),
            payload: Payload::Raw(Arc::from("{}")),
            decode_error: Some("text.content: invalid type".into()),
        }
    }

    fn handoff(msgid: &str, customer: &str) -> (MsgId, NewReply) {
        let reply = NewReply {
            endpoint: ReplyEndpoint::Trans,
            lane: format!("wk/{customer}"),
            body: "{}".into(),
            msgid: format!("handoff-{msgid}").into(),
            delivery_id: None,
            position: None,
            hold_ms: 0,
            error: None,
            result: None,
        };
        (msgid.into(), reply)
    }

    fn page(messages: Vec<NewMessage>) -> PageWrite {
        PageWrite {
            open_kfid: "wk".into(),
            messages,
            next_cursor: Some("c1".into()),
            now_ms: 9_000,
            skip_before: None,
            catch_up_before: None,
            turns: Default::default(),
            actions: Vec::new(),
        }
    }

    fn stored(msgids: &[&str]) -> HashSet<MsgId> {
        msgids.iter().map(|m| MsgId::from(*m)).collect()
    }

    fn row_ids(plan: &PagePlan) -> Vec<(&str, bool)> {
        plan.rows
            .iter()
            .map(|r| (r.message.msgid.as_str(), r.skipped))
            .collect()
    }

    fn session<'a>(plan: &'a PagePlan, customer: &str) -> &'a SessionWrite {
        plan.sessions
            .iter()
            .find(|s| s.external_userid == customer)
            .unwrap()
    }

    #[test]
    fn only_dated_messages_older_than_the_threshold_are_skipped() {
        assert!(is_skipped(99, Some(100)));
        assert!(!is_skipped(100, Some(100)));
        assert!(!is_skipped(0, Some(100)), "undated messages are delivered");
        assert!(!is_skipped(1, None));
    }

    #[test]
    fn new_messages_become_rows_in_server_order_with_their_cursor() {
        let mut write = page(vec![
            text("a", "wm1", 10, CUSTOMER),
            text("b", "wm1", 11, CUSTOMER),
        ]);
        write.catch_up_before = Some(5);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(row_ids(&plan), vec![("a", false), ("b", false)]);
        assert_eq!(
            (
                plan.next_cursor.as_deref(),
                plan.catch_up_before,
                plan.now_ms
            ),
            (Some("c1"), Some(5), 9_000)
        );
        let outcome = plan.into_outcome(&[7, 8], Vec::new());
        let seqs: Vec<i64> = outcome.stored.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![7, 8]);
        assert_eq!((outcome.skipped, outcome.duplicates), (0, 0));
        assert_eq!(outcome.stored[0].lane.external_userid, "wm1");
        assert_eq!(outcome.stored[1].stored_at_ms, 9_000);
    }

    #[test]
    fn a_stored_msgid_is_a_duplicate_that_changes_no_view_time_or_action() {
        let mut write = page(vec![text("a", "wm1", 10, CUSTOMER)]);
        write.actions = vec![handoff("a", "wm1")];
        let plan = plan_page(write, &stored(&["a"]), HashMap::new());
        assert!(plan.rows.is_empty());
        assert_eq!(plan.duplicates, 1);
        assert!(plan.sessions.is_empty(), "a duplicate never touches a view");
        assert!(plan.replies.is_empty());
        assert_eq!(
            plan.next_cursor.as_deref(),
            Some("c1"),
            "the cursor moves on"
        );
    }

    #[test]
    fn a_msgid_repeated_within_a_page_is_stored_and_observed_once() {
        let mut write = page(vec![
            text("a", "wm1", 10, CUSTOMER),
            text("a", "wm1", 10, CUSTOMER),
        ]);
        write.actions = vec![handoff("a", "wm1")];
        assert_eq!(msgids(&write), vec!["a"]);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(row_ids(&plan), vec![("a", false)]);
        assert_eq!(plan.duplicates, 1);
        assert_eq!(plan.replies.len(), 1);
    }

    #[test]
    fn a_skipped_message_is_stored_finished_and_still_feeds_session_tracking() {
        let mut write = page(vec![
            text("old", "wm1", 100, SERVICER),
            text("old2", "wm1", 150, CUSTOMER),
            text("new", "wm1", 500, CUSTOMER),
        ]);
        write.skip_before = Some(300);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(
            row_ids(&plan),
            vec![
                ("old", true),
                ("session:old", true),
                ("old2", true),
                ("new", false)
            ],
            "the servicer's taking the session is recorded, and skipped with its cause"
        );
        assert_eq!(plan.skipped(), 2);
        let wm1 = session(&plan, "wm1");
        assert_eq!(wm1.last_customer_msg_at, Some(500));
        let view = wm1.view.as_ref().unwrap();
        assert_eq!(
            view.state(),
            Some(ServiceState::Human),
            "the skipped servicer"
        );
        assert_eq!(view.last_customer_message_at(), Some(500));
        let outcome = plan.into_outcome(&[1, 2, 3, 4], Vec::new());
        assert_eq!((outcome.stored.len(), outcome.skipped), (1, 2));
        assert_eq!(outcome.stored[0].seq, 4);
    }

    #[test]
    fn an_undated_message_is_never_skipped() {
        let mut write = page(vec![text("a", "wm1", 0, CUSTOMER)]);
        write.skip_before = Some(300);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(row_ids(&plan), vec![("a", false)]);
    }

    #[test]
    fn only_the_action_of_a_new_delivered_message_is_queued() {
        let mut write = page(vec![
            text("old", "wm1", 100, CUSTOMER),
            text("dup", "wm2", 500, CUSTOMER),
            text("new", "wm3", 500, CUSTOMER),
        ]);
        write.skip_before = Some(300);
        write.actions = vec![
            handoff("new", "wm3"),
            handoff("old", "wm1"),
            handoff("dup", "wm2"),
            handoff("absent", "wm4"),
        ];
        let plan = plan_page(write, &stored(&["dup"]), HashMap::new());
        let queued: Vec<&str> = plan.replies.iter().map(|r| r.msgid.as_str()).collect();
        assert_eq!(queued, vec!["handoff-new"]);
    }

    #[test]
    fn handoffs_keep_the_order_the_page_gave_them() {
        let mut write = page(vec![
            text("a", "wm1", 10, CUSTOMER),
            text("b", "wm2", 10, CUSTOMER),
        ]);
        write.actions = vec![handoff("b", "wm2"), handoff("a", "wm1")];
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        let queued: Vec<&str> = plan.replies.iter().map(|r| r.msgid.as_str()).collect();
        assert_eq!(queued, vec!["handoff-b", "handoff-a"]);
    }

    #[test]
    fn a_page_mixing_customers_writes_one_session_each_from_its_stored_view() {
        let mut known = SessionView::new();
        known.observe_state(ServiceState::Human, Some("lisi".into()), 1);
        let write = page(vec![
            text("a", "wm1", 10, CUSTOMER),
            text("b", "wm2", 20, CUSTOMER),
            text("c", "wm1", 30, CUSTOMER),
            text("d", "", 40, CUSTOMER),
        ]);
        assert_eq!(
            customers_to_observe(&write, &HashSet::new()),
            vec!["wm1", "wm2"]
        );
        let views = HashMap::from([(ExternalUserId::from("wm2"), known)]);
        let plan = plan_page(write, &HashSet::new(), views);
        let customers: Vec<&str> = plan
            .sessions
            .iter()
            .map(|s| s.external_userid.as_str())
            .collect();
        assert_eq!(
            customers,
            vec!["wm1", "wm2"],
            "no session for the empty customer"
        );
        assert_eq!(session(&plan, "wm1").last_customer_msg_at, Some(30));
        let wm1 = session(&plan, "wm1").view.as_ref().unwrap();
        assert_eq!(wm1.last_customer_message_at(), Some(30));
        assert_eq!(wm1.state(), None, "a new view starts empty");
        let wm2 = session(&plan, "wm2").view.as_ref().unwrap();
        assert!(
            matches!(wm2.can_send(21), Err(SendRefusal::HumanServicer { .. })),
            "the stored view is the one observed"
        );
        assert_eq!(wm2.last_customer_message_at(), Some(20));
    }

    #[test]
    fn a_customer_whose_messages_are_all_duplicates_needs_no_view() {
        let write = page(vec![
            text("a", "wm1", 10, CUSTOMER),
            text("b", "wm2", 10, CUSTOMER),
        ]);
        assert_eq!(customers_to_observe(&write, &stored(&["a"])), vec!["wm2"]);
    }

    #[test]
    fn an_undecodable_customer_message_moves_the_time_but_keeps_the_view() {
        let write = page(vec![undecodable("x", "wm1", 40)]);
        assert!(customers_to_observe(&write, &HashSet::new()).is_empty());
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(
            plan.sessions,
            vec![SessionWrite {
                external_userid: "wm1".into(),
                last_customer_msg_at: Some(40),
                view: None,
            }]
        );
        let outcome = plan.into_outcome(&[1], Vec::new());
        assert!(outcome.stored[0].invalid);
    }

    #[test]
    fn a_servicer_message_updates_the_view_but_not_the_customer_time() {
        let plan = plan_page(
            page(vec![text("s", "wm1", 40, SERVICER)]),
            &HashSet::new(),
            HashMap::new(),
        );
        let wm1 = session(&plan, "wm1");
        assert_eq!(wm1.last_customer_msg_at, None);
        assert_eq!(
            wm1.view.as_ref().unwrap().state(),
            Some(ServiceState::Human)
        );
    }

    #[test]
    fn an_empty_page_only_moves_the_cursor() {
        let plan = plan_page(page(vec![]), &HashSet::new(), HashMap::new());
        assert!(plan.rows.is_empty() && plan.sessions.is_empty() && plan.replies.is_empty());
        assert_eq!(plan.next_cursor.as_deref(), Some("c1"));
        let outcome = plan.into_outcome(&[], Vec::new());
        assert_eq!(
            (outcome.stored.len(), outcome.skipped, outcome.duplicates),
            (0, 0, 0)
        );
    }

    /// A decoded item from its JSON.
    fn item(raw: &str) -> NewMessage {
        let message = Message::from_json(raw).unwrap();
        NewMessage {
            msgid: message.msgid().clone(),
            external_userid: message
                .external_userid()
                .cloned()
                .unwrap_or_else(|| ExternalUserId::from("")),
            send_time: message.send_time() as i64,
            origin: Some(message.origin().code()),
            kind: message.kind().into_owned(),
            payload: Payload::Message(message),
            decode_error: None,
        }
    }

    /// The servicer ends the session in the WeCom client (change_type 3).
    fn ended(msgid: &str, customer: &str, send_time: i64) -> NewMessage {
        item(&format!(
            r#"{{"msgid":"{msgid}","send_time":{send_time},"origin":4,"msgtype":"event","event":{{"event_type":"session_status_change","open_kfid":"wk","external_userid":"{customer}","change_type":3,"old_servicer_userid":"zhangsan","msg_code":"END"}}}}"#
        ))
    }

    fn turns(plan: &PagePlan) -> Vec<(&str, &str, Option<&str>)> {
        plan.rows
            .iter()
            .map(|r| {
                (
                    r.message.msgid.as_str(),
                    r.turn.from.as_str(),
                    r.turn.no_reply.map(super::super::NoReply::as_str),
                )
            })
            .collect()
    }

    fn with_rules(messages: Vec<NewMessage>, while_human: WhileHuman) -> PageWrite {
        let mut write = page(messages);
        write.turns.while_human = while_human;
        write
    }

    #[test]
    fn a_servicer_taking_over_silences_the_bot_and_is_recorded_as_a_session_change() {
        let write = page(vec![
            text("a", "wm1", 10, CUSTOMER),
            text("b", "wm1", 20, SERVICER),
            text("c", "wm1", 30, CUSTOMER),
        ]);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(
            turns(&plan),
            vec![
                ("a", "customer", Some("human_servicer")),
                ("b", "servicer", Some("human_servicer")),
                ("session:b", "system", Some("system_event")),
                ("c", "customer", Some("human_servicer")),
            ],
            "the servicer took over later in the page: the bot answers none of it"
        );
        let change: serde_json::Value =
            serde_json::from_str(plan.rows[2].message.payload.raw()).unwrap();
        assert_eq!(
            change["old_state"],
            serde_json::Value::Null,
            "never learnt before"
        );
        assert_eq!(change["new_state"], 3);
        assert_eq!(change["servicer_userid"], "zhangsan");
        assert_eq!(change["trigger"], "servicer_message");
        assert_eq!(change["external_userid"], "wm1");
        let outcome = plan.into_outcome(&[1, 2, 3, 4], Vec::new());
        assert_eq!(outcome.stored[2].item, ItemKind::Session);
    }

    #[test]
    fn the_bot_resumes_when_the_customer_writes_after_the_session_ended() {
        let first = plan_page(
            page(vec![text("a", "wm1", 10, SERVICER)]),
            &HashSet::new(),
            HashMap::new(),
        );
        let view = first.sessions[0].view.clone().unwrap();
        let write = page(vec![ended("e", "wm1", 20), text("b", "wm1", 30, CUSTOMER)]);
        let plan = plan_page(
            write,
            &HashSet::new(),
            HashMap::from([("wm1".into(), view)]),
        );
        assert_eq!(
            turns(&plan),
            vec![
                ("e", "system", Some("system_event")),
                ("session:e", "system", Some("system_event")),
                ("b", "customer", None),
                ("session:b", "system", Some("system_event")),
            ]
        );
        let end: serde_json::Value =
            serde_json::from_str(plan.rows[1].message.payload.raw()).unwrap();
        assert_eq!(
            (&end["old_state"], &end["new_state"], &end["change_type"]),
            (
                &serde_json::json!(3),
                &serde_json::json!(4),
                &serde_json::json!(3)
            )
        );
    }

    #[test]
    fn while_human_skip_stores_the_humans_turns_finished_but_still_delivers_the_change() {
        let write = with_rules(
            vec![
                text("a", "wm1", 10, SERVICER),
                text("b", "wm1", 20, CUSTOMER),
            ],
            WhileHuman::Skip,
        );
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        let finished: Vec<(&str, bool)> = plan
            .rows
            .iter()
            .map(|r| (r.message.msgid.as_str(), r.finished()))
            .collect();
        assert_eq!(
            finished,
            vec![("a", true), ("session:a", false), ("b", true)]
        );
        assert_eq!(plan.skipped(), 0, "not the first-start policy's skips");
        let outcome = plan.into_outcome(&[1, 2, 3], Vec::new());
        assert_eq!(outcome.stored.len(), 1);
        assert_eq!(outcome.stored[0].item, ItemKind::Session);
    }

    #[test]
    fn while_human_hold_holds_the_humans_turns_until_the_bot_may_speak_again() {
        let write = with_rules(
            vec![
                text("a", "wm1", 10, SERVICER),
                text("b", "wm1", 20, CUSTOMER),
            ],
            WhileHuman::Hold,
        );
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        let held: Vec<bool> = plan.rows.iter().map(|r| r.held).collect();
        assert_eq!(held, vec![true, false, true]);
        assert!(plan.release.is_empty());
        let view = plan.sessions[0].view.clone().unwrap();
        let outcome = plan.into_outcome(&[1, 2, 3], Vec::new());
        assert_eq!(outcome.stored.len(), 1, "only the session change goes out");

        let write = with_rules(
            vec![ended("e", "wm1", 30), text("c", "wm1", 40, CUSTOMER)],
            WhileHuman::Hold,
        );
        let plan = plan_page(
            write,
            &HashSet::new(),
            HashMap::from([("wm1".into(), view)]),
        );
        assert_eq!(plan.release, vec![ExternalUserId::from("wm1")]);
        assert!(plan.rows.iter().all(|r| !r.held));
    }

    #[test]
    fn a_click_on_the_survey_is_a_rating_not_a_question() {
        let click = item(&format!(
            r#"{{"msgid":"r","open_kfid":"wk","external_userid":"wm1","send_time":10,"origin":3,"msgtype":"text","text":{{"content":"满意","menu_id":"{SURVEY_MENU_PREFIX}0"}}}}"#
        ));
        let plan = plan_page(page(vec![click]), &HashSet::new(), HashMap::new());
        assert_eq!(turns(&plan), vec![("r", "customer", Some("survey_answer"))]);
    }

    #[test]
    fn a_message_older_than_the_window_is_not_the_bots_to_answer_now() {
        let mut write = page(vec![text("a", "wm1", 1_000, CUSTOMER)]);
        write.turns.now_secs = Some(1_000 + 49 * 3600);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(turns(&plan), vec![("a", "customer", Some("window_closed"))]);
        let mut write = page(vec![text("a", "wm1", 1_000, CUSTOMER)]);
        write.turns.now_secs = Some(1_000 + 60);
        let plan = plan_page(write, &HashSet::new(), HashMap::new());
        assert_eq!(turns(&plan), vec![("a", "customer", None)]);
    }
}
