//! The page-commit policy: what committing a pulled page changes, as a pure function of the page
//! and of what the store already holds.
//!
//! Both backends do the same three steps inside their one transaction: read what the plan needs
//! ([`msgids`], then the views of [`customers_to_observe`]), call [`plan_page`], write the
//! [`PagePlan`]. The rules live here once, so the backends cannot drift apart; they are SQL only.

use std::collections::{BTreeMap, HashMap, HashSet};

use wechat_kf::session::SessionView;
use wechat_kf::{ExternalUserId, MsgId, OpenKfId};

use super::{Lane, NewMessage, NewReply, PageOutcome, PageWrite, Payload, StoredMessage};

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
    /// The messages to insert, in server order (each msgid once, none already stored).
    pub rows: Vec<PlannedRow>,
    /// Items whose msgid was already stored, or came earlier in the same page.
    pub duplicates: usize,
    /// One write per customer whose session tracking changed, by `external_userid`.
    pub sessions: Vec<SessionWrite>,
    /// The handoffs to queue, in the page's action order.
    pub replies: Vec<NewReply>,
    /// The new cursor; `None` keeps the stored one.
    pub next_cursor: Option<String>,
    /// The unfinished catch-up remembered with the cursor (`None` clears it).
    pub catch_up_before: Option<i64>,
    /// Now, unix milliseconds (`stored_at`, `updated_at`, the skipped rows' `delivered_at`).
    pub now_ms: i64,
}

/// One message to insert.
#[derive(Debug)]
pub(crate) struct PlannedRow {
    /// The message.
    pub message: NewMessage,
    /// Stored as finished and never delivered (the first-start policy).
    pub skipped: bool,
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
    /// New messages stored skipped.
    pub fn skipped(&self) -> usize {
        self.rows.iter().filter(|r| r.skipped).count()
    }

    /// What the commit did, given the `seq` each of [`rows`](Self::rows) got, in order.
    pub fn into_outcome(self, seqs: &[i64]) -> PageOutcome {
        let skipped = self.skipped();
        let mut stored = Vec::with_capacity(self.rows.len() - skipped);
        for (row, &seq) in self.rows.into_iter().zip(seqs) {
            if row.skipped {
                continue;
            }
            let m = row.message;
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
///    messages count: yesterday's servicer still holds the session today.
/// 4. **Actions.** A handoff is queued only when the item with its msgid is new and not
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
    } = page;
    let mut rows = Vec::with_capacity(messages.len());
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
        let customer = &message.external_userid;
        if !customer.as_str().is_empty() {
            let decoded = match &message.payload {
                Payload::Message(decoded) => Some(decoded),
                Payload::Raw(_) => None,
            };
            if message.origin == Some(3) || decoded.is_some() {
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
                if let Some(decoded) = decoded {
                    session
                        .view
                        .get_or_insert_with(|| views.remove(customer).unwrap_or_default())
                        .observe(decoded);
                }
            }
        }
        if !skipped {
            delivered.insert(message.msgid.clone());
        }
        rows.push(PlannedRow { message, skipped });
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
        next_cursor,
        catch_up_before,
        now_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wechat_kf::message::Message;
    use wechat_kf::session::{SendRefusal, ServiceState};

    use super::*;
    use crate::store::ReplyEndpoint;

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
        let outcome = plan.into_outcome(&[7, 8]);
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
            vec![("old", true), ("old2", true), ("new", false)]
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
        let outcome = plan.into_outcome(&[1, 2, 3]);
        assert_eq!((outcome.stored.len(), outcome.skipped), (1, 2));
        assert_eq!(outcome.stored[0].seq, 3);
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
        let outcome = plan.into_outcome(&[1]);
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
        let outcome = plan.into_outcome(&[]);
        assert_eq!(
            (outcome.stored.len(), outcome.skipped, outcome.duplicates),
            (0, 0, 0)
        );
    }
}
