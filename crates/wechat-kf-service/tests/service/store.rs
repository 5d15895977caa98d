//! The same behaviour from every `Store` backend: SQLite always, PostgreSQL when
//! `DATABASE_URL` is set (skipped otherwise, failing under `WECHAT_KF_CI=1`).

use std::sync::Arc;

use serde_json::Value;
use wechat_kf::MsgId;
use wechat_kf::message::Message;
use wechat_kf::session::{SendRefusal, ServiceState};
use wechat_kf_service::store::Synchronous;
use wechat_kf_service::store::{
    AccountCursor, Ack, ApiSend, DeliveryRecord, Failure, FinishDeliveries, FinishedReply,
    ListQuery, NewMessage, NewReply, PageWrite, Payload, PostgresStore, ReplyEndpoint,
    ReplyOutcome, ReplyState, SessionUpdate, SqliteStore, Store,
};
use wechat_kf_service::store::{ItemKind, SessionChange, TurnRules, WhileHuman};

fn message(msgid: &str, customer: &str, origin: u32) -> NewMessage {
    let raw = format!(r#"{{"msgid":"{msgid}","external_userid":"{customer}","origin":{origin}}}"#);
    NewMessage {
        msgid: msgid.into(),
        external_userid: customer.into(),
        send_time: 1_700_000_000,
        origin: Some(origin),
        kind: "text".into(),
        payload: Payload::Raw(Arc::from(raw)),
        decode_error: None,
    }
}

fn page(open_kfid: &str, msgids: &[&str], cursor: Option<&str>) -> PageWrite {
    PageWrite {
        open_kfid: open_kfid.into(),
        messages: msgids.iter().map(|m| message(m, "wm1", 3)).collect(),
        next_cursor: cursor.map(str::to_owned),
        now_ms: 1000,
        skip_before: None,
        catch_up_before: None,
        turns: Default::default(),
        actions: Vec::new(),
    }
}

fn reply(msgid: &str, lane: &str) -> NewReply {
    NewReply {
        endpoint: ReplyEndpoint::SendMsg,
        lane: lane.into(),
        body: "{}".into(),
        msgid: msgid.into(),
        delivery_id: None,
        position: None,
        hold_ms: 0,
        error: None,
        result: None,
    }
}

/// A decoded customer text of account `wkS` (fed to the session view).
fn decoded(msgid: &str, customer: &str, send_time: i64) -> NewMessage {
    decoded_text("wkS", msgid, customer, send_time, 3)
}

/// A decoded text of `open_kfid` with `origin` (3 customer, 5 servicer `zhangsan`).
fn decoded_text(
    open_kfid: &str,
    msgid: &str,
    customer: &str,
    send_time: i64,
    origin: u32,
) -> NewMessage {
    let servicer = if origin == 5 {
        r#","servicer_userid":"zhangsan""#
    } else {
        ""
    };
    let raw = format!(
        r#"{{"msgid":"{msgid}","open_kfid":"{open_kfid}","external_userid":"{customer}","send_time":{send_time},"origin":{origin}{servicer},"msgtype":"text","text":{{"content":"x"}}}}"#
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

/// First-start skipping, catch-up markers, session views, handoff actions, reply results and
/// media records (schema version 2).
async fn conformance_v2(store: &dyn Store) {
    // A catch-up page: the old message is stored skipped, the marker stays while more pages
    // follow, and the action of the skipped message is not queued.
    let mut write = PageWrite {
        open_kfid: "wkS".into(),
        messages: vec![decoded("old", "wmS", 100), decoded("new", "wmS", 500)],
        next_cursor: Some("s1".into()),
        now_ms: 2000,
        skip_before: Some(300),
        catch_up_before: Some(300),
        turns: Default::default(),
        actions: vec![
            ("old".into(), reply("act-old", "wkS/wmS")),
            ("new".into(), reply("act-new", "wkS/wmS")),
        ],
    };
    let out = store.commit_page(write).await.unwrap();
    assert_eq!((out.stored.len(), out.skipped, out.duplicates), (1, 1, 0));
    let account =
        |accounts: Vec<AccountCursor>| accounts.into_iter().find(|a| a.open_kfid == "wkS").unwrap();
    assert_eq!(
        account(store.accounts().await.unwrap()).catch_up_before,
        Some(300)
    );
    let rows = store.message_rows("wkS".into()).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].skipped && rows[0].delivered,
        "skipped counts as finished"
    );
    assert!(!rows[1].skipped && !rows[1].delivered);
    let due: Vec<MsgId> = store
        .due_replies(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.msgid)
        .collect();
    assert_eq!(due, vec!["act-new"], "only the delivered message's action");
    // The last page clears the marker; a repeated msgid is a duplicate and queues nothing.
    write = PageWrite {
        open_kfid: "wkS".into(),
        messages: vec![decoded("new", "wmS", 500)],
        next_cursor: Some("s2".into()),
        now_ms: 2001,
        skip_before: Some(300),
        catch_up_before: None,
        turns: Default::default(),
        actions: vec![("new".into(), reply("act-again", "wkS/wmS"))],
    };
    let out = store.commit_page(write).await.unwrap();
    assert_eq!(out.duplicates, 1);
    assert_eq!(
        account(store.accounts().await.unwrap()),
        AccountCursor {
            open_kfid: "wkS".into(),
            cursor: Some("s2".into()),
            catch_up_before: None
        }
    );
    assert_eq!(store.due_replies(i64::MAX, 10).await.unwrap().len(), 1);

    // Both messages (skipped or not) fed the view; updates apply in one transaction.
    let view = store
        .session("wkS".into(), "wmS".into())
        .await
        .unwrap()
        .expect("a view");
    assert_eq!(view.last_customer_message_at(), Some(500));
    assert!(view.can_send(600).is_ok());
    for _ in 0..5 {
        store
            .update_session(
                "wkS".into(),
                "wmS".into(),
                SessionUpdate::Sent { at: 600 },
                1,
            )
            .await
            .unwrap();
    }
    let view = store
        .session("wkS".into(), "wmS".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.can_send(601),
        Err(SendRefusal::QuotaExhausted { sent: 5 })
    );
    let view = store
        .update_session(
            "wkS".into(),
            "wmT".into(),
            SessionUpdate::Transferred {
                state: ServiceState::Human,
                servicer: Some("zhangsan".into()),
                msg_code: None,
                at: 700,
            },
            1,
        )
        .await
        .unwrap();
    assert!(matches!(
        view.can_send(701),
        Err(SendRefusal::HumanServicer { .. })
    ));
    assert!(
        store
            .session("wkS".into(), "wmNone".into())
            .await
            .unwrap()
            .is_none()
    );

    // Reply results: reported once a delivery carrying them is acknowledged.
    let due = store.due_replies(i64::MAX, 10).await.unwrap();
    let webhook_reply = NewReply {
        delivery_id: Some("dS".into()),
        position: Some(0),
        ..reply("w1", "wkS/wmS")
    };
    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 3000,
            acks: vec![Ack {
                delivery_id: "dS".into(),
                seqs: vec![],
                replies: vec![webhook_reply],
                reported: vec![],
                memory: Vec::new(),
            }],
            failures: vec![],
        })
        .await
        .unwrap();
    let all = store.due_replies(i64::MAX, 10).await.unwrap();
    let w1 = all.iter().find(|r| r.msgid == "w1").unwrap();
    assert_eq!(
        (w1.delivery_id.as_deref(), w1.position),
        (Some("dS"), Some(0))
    );
    store
        .finish_replies(
            vec![
                ReplyOutcome::Finished {
                    id: due[0].id,
                    state: ReplyState::Sent,
                    error: None,
                    result: Some(r#"{"status":"sent"}"#.into()),
                },
                ReplyOutcome::Finished {
                    id: w1.id,
                    state: ReplyState::Refused,
                    error: Some("quota_exhausted (95001)".into()),
                    result: Some(r#"{"status":"refused"}"#.into()),
                },
            ],
            3001,
        )
        .await
        .unwrap();
    let results = store.reply_results(10).await.unwrap();
    assert_eq!(results.len(), 1, "only webhook replies are reported");
    assert_eq!(results[0].0, w1.id);
    let result: Value = serde_json::from_str(&results[0].1).unwrap();
    assert_eq!(result["status"], "refused");
    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 3002,
            acks: vec![Ack {
                delivery_id: "dT".into(),
                seqs: vec![],
                replies: vec![],
                reported: vec![w1.id],
                memory: Vec::new(),
            }],
            failures: vec![],
        })
        .await
        .unwrap();
    assert!(store.reply_results(10).await.unwrap().is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.skipped, stats.replies_refused), (1, 1));

    // Media records ride with the payload; undelivered media messages without one are found.
    let image = NewMessage {
        kind: "image".into(),
        ..decoded("img", "wmS", 800)
    };
    let out = store
        .commit_page(PageWrite {
            open_kfid: "wkS".into(),
            messages: vec![image],
            next_cursor: None,
            now_ms: 4000,
            skip_before: None,
            catch_up_before: None,
            turns: Default::default(),
            actions: vec![],
        })
        .await
        .unwrap();
    let seq = out.stored[0].seq;
    let missing = store
        .messages_without_media(vec!["image".into()], 10)
        .await
        .unwrap();
    assert_eq!(missing.iter().map(|j| j.seq).collect::<Vec<_>>(), vec![seq]);
    store
        .record_media(vec![(seq, r#"{"msgid":"img","path":"/x"}"#.into())])
        .await
        .unwrap();
    let loaded = store.load_payloads(vec![seq]).await.unwrap();
    assert_eq!(
        loaded[0].media.as_deref(),
        Some(r#"{"msgid":"img","path":"/x"}"#)
    );
    assert!(
        store
            .messages_without_media(vec!["image".into()], 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A decoded text of account `wkP` with `origin` (3 customer, 5 servicer `zhangsan`).
fn decoded_p(msgid: &str, customer: &str, send_time: i64, origin: u32) -> NewMessage {
    decoded_text("wkP", msgid, customer, send_time, origin)
}

/// Whose turn it is, stored with each row; `while_human = "hold"` keeps a human's turns from
/// the bot (out of the pending scan too) until a customer message the bot may answer releases
/// them, first, as history.
async fn conformance_turns(store: &dyn Store) {
    let hold = |messages: Vec<NewMessage>| PageWrite {
        open_kfid: "wkH".into(),
        messages,
        next_cursor: None,
        now_ms: 5000,
        skip_before: None,
        catch_up_before: None,
        actions: Vec::new(),
        turns: TurnRules {
            now_secs: None,
            while_human: WhileHuman::Hold,
        },
    };
    let text = |msgid: &str, send_time: i64, origin: u32| {
        decoded_text("wkH", msgid, "wmH", send_time, origin)
    };
    let pending = || async {
        store
            .pending_messages(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.lane.open_kfid == "wkH")
            .map(|m| (m.seq, m.item, m.turn.from.as_str(), m.turn.bot_may_reply()))
            .collect::<Vec<_>>()
    };
    let out = store
        .commit_page(hold(vec![text("h1", 10, 5), text("h2", 20, 3)]))
        .await
        .unwrap();
    let kinds: Vec<ItemKind> = out.stored.iter().map(|m| m.item).collect();
    assert_eq!(kinds, vec![ItemKind::Session], "only the change goes out");
    let session_seq = out.stored[0].seq;
    assert_eq!(
        pending().await,
        vec![(session_seq, ItemKind::Session, "system", false)],
        "held rows are not pending"
    );

    let end = Message::from_json(
        r#"{"msgid":"h-end","send_time":30,"origin":4,"msgtype":"event","event":{"event_type":"session_status_change","open_kfid":"wkH","external_userid":"wmH","change_type":3,"old_servicer_userid":"zhangsan","msg_code":"END"}}"#,
    )
    .unwrap();
    let end = NewMessage {
        msgid: "h-end".into(),
        external_userid: "wmH".into(),
        send_time: 30,
        origin: Some(4),
        kind: "event:session_status_change".into(),
        payload: Payload::Message(end),
        decode_error: None,
    };
    let out = store
        .commit_page(hold(vec![end, text("h3", 40, 3)]))
        .await
        .unwrap();
    let got: Vec<(ItemKind, &str, bool)> = out
        .stored
        .iter()
        .map(|m| (m.item, m.turn.from.as_str(), m.turn.bot_may_reply()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ItemKind::History, "servicer", false),
            (ItemKind::History, "customer", false),
            (ItemKind::Message, "system", false),
            (ItemKind::Session, "system", false),
            (ItemKind::Message, "customer", true),
            (ItemKind::Session, "system", false),
        ],
        "the held turns first, as history, then the page"
    );
    assert!(out.stored.windows(2).skip(1).all(|w| w[0].seq < w[1].seq));
    assert!(
        out.stored[0].seq < session_seq,
        "released rows keep their place"
    );
    let pending_now = pending().await;
    assert_eq!(
        pending_now.len(),
        7,
        "released rows are pending again, until acknowledged"
    );
    assert_eq!(pending_now[0].1, ItemKind::History);

    // A change the service made itself is a pending row after everything before it.
    let change = SessionChange {
        open_kfid: "wkH".into(),
        external_userid: "wmH".into(),
        old_state: Some(0),
        new_state: 2,
        servicer_userid: None,
        trigger: "transfer",
        change_type: None,
        by: Some("keyword"),
        cause_msgid: None,
        at: 50,
    };
    let row = store.record_session_change(change, 6000).await.unwrap();
    assert_eq!(row.item, ItemKind::Session);
    assert!(row.seq > pending_now.last().unwrap().0);
    let raw: Value = serde_json::from_str(row.payload.as_ref().unwrap().raw()).unwrap();
    assert_eq!(raw["by"], "keyword");
    assert_eq!(
        pending().await.last().unwrap(),
        &(row.seq, ItemKind::Session, "system", false)
    );
    let recent = store
        .recent_messages("wkH".into(), "wmH".into(), 2)
        .await
        .unwrap();
    let kinds: Vec<&str> = recent.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, vec!["session", "session"], "newest first");
    let recent = store
        .recent_messages("wkH".into(), "wmH".into(), 100)
        .await
        .unwrap();
    assert_eq!(recent.len(), 8);
    assert!(recent.last().unwrap().1.contains("\"h1\""), "oldest last");
}

/// A handoff queued for `msgid`, itself identified as `handoff-<msgid>`.
fn handoff(msgid: &str, customer: &str) -> (MsgId, NewReply) {
    let reply = NewReply {
        endpoint: ReplyEndpoint::Trans,
        ..reply(&format!("handoff-{msgid}"), &format!("wkP/{customer}"))
    };
    (msgid.into(), reply)
}

/// The page-commit policy (one pure function both backends call): cases where two backends
/// applying it differently would disagree.
async fn conformance_policy(store: &dyn Store) {
    let write = |messages: Vec<NewMessage>, actions: Vec<(MsgId, NewReply)>| PageWrite {
        open_kfid: "wkP".into(),
        messages,
        next_cursor: None,
        now_ms: 5000,
        skip_before: Some(1000),
        catch_up_before: None,
        actions,
        turns: Default::default(),
    };
    let handoffs = || async {
        let mut queued: Vec<MsgId> = store
            .due_replies(i64::MAX, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.lane.starts_with("wkP/"))
            .map(|r| r.msgid)
            .collect();
        queued.sort();
        queued
    };
    let view = |customer: &'static str| async move {
        store.session("wkP".into(), customer.into()).await.unwrap()
    };

    // A page mixing customers, a skipped servicer message, a msgid repeated within the page,
    // an undecodable customer message and an item without a customer.
    let mut undecodable = message("p-raw", "wmZ", 3);
    undecodable.payload = Payload::Raw(Arc::from(r#"{"msgid":"p-raw","msgtype":"text"}"#));
    undecodable.decode_error = Some("text.content: missing".into());
    undecodable.send_time = 2000;
    let out = store
        .commit_page(write(
            vec![
                decoded_p("p-old", "wmX", 500, 5),
                decoded_p("p-x1", "wmX", 2000, 3),
                decoded_p("p-y1", "wmY", 2100, 3),
                decoded_p("p-y1", "wmY", 2100, 3),
                undecodable,
                decoded_p("p-x2", "wmX", 2200, 3),
                decoded_p("p-sys", "", 2300, 4),
            ],
            vec![
                handoff("p-y1", "wmY"),
                handoff("p-old", "wmX"),
                handoff("p-x2", "wmX"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!((out.skipped, out.duplicates), (1, 1));
    let stored: Vec<(i64, String)> = out
        .stored
        .iter()
        .map(|m| (m.seq, m.lane.external_userid.to_string()))
        .collect();
    assert_eq!(
        stored.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        vec!["wmX", "wmY", "wmZ", "wmX", ""],
        "delivered in page order, each on its customer's lane"
    );
    assert!(stored.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(out.stored[2].invalid);
    let rows = store.message_rows("wkP".into()).await.unwrap();
    let rows: Vec<(&str, bool)> = rows.iter().map(|r| (r.msgid.as_str(), r.skipped)).collect();
    assert_eq!(
        rows,
        vec![
            ("p-old", true),
            ("session:p-old", true),
            ("p-x1", false),
            ("p-y1", false),
            ("p-raw", false),
            ("p-x2", false),
            ("p-sys", false)
        ]
    );
    // The skipped servicer message was observed: a human holds wmX's session.
    let x = view("wmX").await.expect("wmX has a view");
    assert_eq!(x.state(), Some(ServiceState::Human));
    assert_eq!(x.last_customer_message_at(), Some(2200));
    assert_eq!(
        view("wmY").await.unwrap().last_customer_message_at(),
        Some(2100)
    );
    assert!(
        view("wmZ").await.is_none(),
        "an undecodable message feeds no view"
    );
    assert!(view("").await.is_none(), "no view without a customer");
    // Only the handoffs of new, delivered messages, each once.
    assert_eq!(handoffs().await, vec!["handoff-p-x2", "handoff-p-y1"]);

    // Duplicates across pages change no view and queue nothing: `p-y1` comes back claiming a
    // later send_time (a view fed with it would move), `p-old` comes back from a servicer of
    // wmY; only `p-y2` is new.
    let out = store
        .commit_page(write(
            vec![
                decoded_p("p-y1", "wmY", 9000, 3),
                decoded_p("p-old", "wmY", 9000, 5),
                decoded_p("p-y2", "wmY", 3000, 3),
            ],
            vec![handoff("p-y1", "wmY"), handoff("p-y2", "wmY")],
        ))
        .await
        .unwrap();
    assert_eq!((out.stored.len(), out.skipped, out.duplicates), (1, 0, 2));
    let y = view("wmY").await.unwrap();
    assert_eq!(y.last_customer_message_at(), Some(3000));
    assert_ne!(
        y.state(),
        Some(ServiceState::Human),
        "a duplicate never moves a view"
    );
    assert_eq!(
        handoffs().await,
        vec!["handoff-p-x2", "handoff-p-y1", "handoff-p-y2"]
    );

    // A page of nothing but duplicates still moves the cursor.
    let mut only_duplicates = write(vec![decoded_p("p-x1", "wmX", 2000, 3)], vec![]);
    only_duplicates.next_cursor = Some("p2".into());
    let out = store.commit_page(only_duplicates).await.unwrap();
    assert_eq!((out.stored.len(), out.duplicates), (0, 1));
    let account = store
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.open_kfid == "wkP")
        .unwrap();
    assert_eq!(account.cursor.as_deref(), Some("p2"));
    assert_eq!(
        view("wmX").await.unwrap(),
        x,
        "untouched by the repeated page"
    );
}

/// Each attempt is recorded before it is made (a known delivery keeps its order and last
/// error); the operator listings filter by account, customer and failure, newest first.
async fn conformance_operator(store: &dyn Store) {
    let mut write = page("wkO", &[], Some("o-c1"));
    write.messages = vec![
        message("o1", "wm_x", 3),
        message("o2", "wmAx", 3),
        message("o3", "wm_x", 3),
    ];
    let seqs: Vec<i64> = store
        .commit_page(write)
        .await
        .unwrap()
        .stored
        .iter()
        .map(|m| m.seq)
        .collect();
    let record = |id: &str, seqs: Vec<i64>, attempts: u32| DeliveryRecord {
        id: id.into(),
        seqs,
        attempts,
        next_attempt_at_ms: 0,
        last_error: None,
    };
    store
        .begin_deliveries(
            vec![
                record("od1", vec![seqs[0], seqs[2]], 1),
                record("od2", vec![seqs[1]], 1),
            ],
            100,
        )
        .await
        .unwrap();
    let failed = DeliveryRecord {
        next_attempt_at_ms: 250,
        last_error: Some("HTTP 500".into()),
        ..record("od2", vec![seqs[1]], 1)
    };
    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 200,
            acks: vec![],
            failures: vec![Failure {
                old_id: "od2".into(),
                retries: vec![failed.clone()],
            }],
        })
        .await
        .unwrap();
    // The second attempt is recorded before it is made; the last error stays until it ends.
    store
        .begin_deliveries(vec![record("od2", vec![seqs[1]], 2)], 300)
        .await
        .unwrap();
    let open = store.open_deliveries().await.unwrap();
    let od2 = open.iter().find(|d| d.id == "od2").unwrap();
    assert_eq!(
        (od2.attempts, od2.last_error.as_deref()),
        (2, Some("HTTP 500"))
    );

    let query = |kf: Option<&str>, customer: Option<&str>, failed: bool, limit: usize| ListQuery {
        open_kfid: kf.map(Into::into),
        external_userid: customer.map(Into::into),
        failed,
        limit,
    };
    let msgids = |rows: &[wechat_kf_service::store::MessageListing]| -> Vec<String> {
        rows.iter().map(|r| r.msgid.to_string()).collect()
    };
    let all = store
        .list_messages(query(Some("wkO"), None, false, 10))
        .await
        .unwrap();
    assert_eq!(msgids(&all), ["o3", "o2", "o1"], "newest first");
    let o2 = &all[1];
    assert_eq!(o2.state, "pending");
    assert_eq!(
        (
            o2.delivery.as_deref(),
            o2.attempts,
            o2.last_error.as_deref()
        ),
        (Some("od2"), Some(2), Some("HTTP 500"))
    );
    let failing = store
        .list_messages(query(Some("wkO"), None, true, 10))
        .await
        .unwrap();
    assert_eq!(msgids(&failing), ["o2"]);
    // `_` in an id is a character, not a wildcard.
    let customer = store
        .list_messages(query(None, Some("wm_x"), false, 10))
        .await
        .unwrap();
    assert_eq!(msgids(&customer), ["o3", "o1"]);
    let limited = store
        .list_messages(query(Some("wkO"), None, false, 1))
        .await
        .unwrap();
    assert_eq!(msgids(&limited), ["o3"]);

    let deliveries = store
        .list_deliveries(query(Some("wkO"), None, true, 10))
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].id, "od2");
    assert_eq!(deliveries[0].attempts, 2);
    assert_eq!(deliveries[0].customers, ["wkO/wmAx"]);
    let of_customer = store
        .list_deliveries(query(Some("wkO"), Some("wm_x"), false, 10))
        .await
        .unwrap();
    assert_eq!(of_customer.len(), 1, "{of_customer:?}");
    assert_eq!(
        of_customer[0]
            .msgids
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>(),
        ["o1", "o3"]
    );

    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 400,
            acks: vec![Ack {
                delivery_id: "od1".into(),
                seqs: vec![seqs[0], seqs[2]],
                replies: vec![reply("or1", "wkO/wm_x"), reply("or2", "wkO/wmAx")],
                reported: vec![],
                memory: Vec::new(),
            }],
            failures: vec![],
        })
        .await
        .unwrap();
    let o1 = store
        .list_messages(query(Some("wkO"), Some("wm_x"), false, 10))
        .await
        .unwrap();
    assert!(
        o1.iter()
            .all(|m| m.state == "delivered" && m.delivery.is_none())
    );
    let sends = store
        .list_sends(query(Some("wkO"), None, false, 10))
        .await
        .unwrap();
    let ids: Vec<&str> = sends.iter().map(|s| s.msgid.as_str()).collect();
    assert_eq!(ids, ["or2", "or1"]);
    store
        .finish_replies(
            vec![ReplyOutcome::Finished {
                id: sends[1].id,
                state: ReplyState::Failed,
                error: Some("errcode 40096".into()),
                result: None,
            }],
            500,
        )
        .await
        .unwrap();
    let failed_sends = store
        .list_sends(query(Some("wkO"), None, true, 10))
        .await
        .unwrap();
    assert_eq!(failed_sends.len(), 1);
    assert_eq!(
        (
            failed_sends[0].msgid.as_str(),
            failed_sends[0].state.as_str()
        ),
        ("or1", "failed")
    );
    assert_eq!(failed_sends[0].last_error.as_deref(), Some("errcode 40096"));
    let of_customer = store
        .list_sends(query(None, Some("wm_x"), false, 10))
        .await
        .unwrap();
    assert_eq!(of_customer.len(), 1);
    assert_eq!(of_customer[0].lane, "wkO/wm_x");
}

/// The console's reads: one row per customer with its last message, and a customer's history
/// (messages and queued replies, oldest first).
async fn conformance_console(store: &dyn Store) {
    let mut write = page("wkC", &[], Some("cc1"));
    write.messages = vec![
        message("c1", "wmOne", 3),
        message("c2", "wmTwo", 3),
        message("c3", "wmOne", 5),
        message("c4", "", 4),
    ];
    let stored = store.commit_page(write).await.unwrap().stored;
    assert_eq!(
        store.media_record("wkC".into(), "c1".into()).await.unwrap(),
        None
    );
    store
        .record_media(vec![(stored[0].seq, r#"{"path":"/m/c1.png"}"#.into())])
        .await
        .unwrap();
    assert_eq!(
        store
            .media_record("wkC".into(), "c1".into())
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"path":"/m/c1.png"}"#)
    );
    assert_eq!(
        store
            .media_record("wkOther".into(), "c1".into())
            .await
            .unwrap(),
        None
    );
    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 10,
            acks: vec![Ack {
                delivery_id: "cd1".into(),
                seqs: vec![],
                replies: vec![reply("cr1", "wkC/wmOne"), reply("cr2", "wkC/wmTwo")],
                reported: vec![],
                memory: Vec::new(),
            }],
            failures: vec![],
        })
        .await
        .unwrap();
    let rows = store.conversations(Some("wkC".into()), 10).await.unwrap();
    let listed: Vec<(&str, &str, u32)> = rows
        .iter()
        .map(|r| {
            (
                r.external_userid.as_str(),
                r.last.msgid.as_str(),
                r.messages,
            )
        })
        .collect();
    assert_eq!(listed, [("wmOne", "c3", 2), ("wmTwo", "c2", 1)]);
    assert_eq!(rows[0].last.origin, Some(5));
    assert_eq!(
        store
            .conversations(Some("wkC".into()), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .conversations(None, 1000)
            .await
            .unwrap()
            .iter()
            .all(|r| !r.external_userid.as_str().is_empty()),
        "events without a customer are no conversation"
    );
    let history = store
        .history("wkC".into(), "wmOne".into(), 100)
        .await
        .unwrap();
    let msgids: Vec<&str> = history.messages.iter().map(|m| m.msgid.as_str()).collect();
    assert_eq!(msgids, ["c1", "c3"]);
    assert!(history.messages[0].raw.contains("\"c1\""));
    assert_eq!(history.messages[0].state, "pending");
    let replies: Vec<(&str, &str)> = history
        .replies
        .iter()
        .map(|r| (r.msgid.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(replies, [("cr1", "pending")]);
    let last_one = store
        .history("wkC".into(), "wmOne".into(), 1)
        .await
        .unwrap();
    assert_eq!(last_one.messages.len(), 1);
    assert_eq!(last_one.messages[0].msgid.as_str(), "c3");

    // One message found for a replay: as the deliverer takes it, with its state.
    let (found, state) = store
        .stored_message("wkC".into(), "c1".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.seq, state), (stored[0].seq, "pending"));
    assert_eq!(found.lane.external_userid.as_str(), "wmOne");
    assert_eq!(found.item, ItemKind::Message);
    assert!(found.payload.is_none(), "read back when sent");
    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 11,
            acks: vec![Ack {
                delivery_id: "cd2".into(),
                seqs: vec![found.seq],
                replies: vec![],
                reported: vec![],
                memory: Vec::new(),
            }],
            failures: vec![],
        })
        .await
        .unwrap();
    let (_, state) = store
        .stored_message("wkC".into(), "c1".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state, "delivered");
    assert!(
        store
            .stored_message("wkOther".into(), "c1".into())
            .await
            .unwrap()
            .is_none()
    );

    // A send made outside the queue: in the history and the sends listing, finished, never due.
    store
        .record_finished_reply(
            FinishedReply {
                endpoint: ReplyEndpoint::SendMsg,
                lane: "wkC/wmOne".into(),
                body: r#"{"msgtype":"text","text":{"content":"api"}}"#.into(),
                msgid: "api1".into(),
                state: ReplyState::Refused,
                error: Some("quota_exhausted (95001)".into()),
                result: None,
            },
            12,
        )
        .await
        .unwrap();
    let history = store
        .history("wkC".into(), "wmOne".into(), 100)
        .await
        .unwrap();
    let api = history
        .replies
        .iter()
        .find(|r| r.msgid.as_str() == "api1")
        .unwrap();
    assert_eq!(
        (
            api.state.as_str(),
            api.last_error.as_deref(),
            api.finished_at_ms
        ),
        ("refused", Some("quota_exhausted (95001)"), Some(12))
    );
    assert!(
        store
            .due_replies(i64::MAX, 1000)
            .await
            .unwrap()
            .iter()
            .all(|r| r.msgid.as_str() != "api1"),
        "never sent again"
    );
    assert!(
        store
            .reply_results(1000)
            .await
            .unwrap()
            .iter()
            .all(|(_, r)| !r.contains("api1")),
        "never reported to the bot"
    );
    let sends = store
        .list_sends(ListQuery {
            open_kfid: Some("wkC".into()),
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let due = |msgid: &str| {
        sends.iter().find(|s| s.msgid.as_str() == msgid).map(|s| {
            (
                s.state.as_str(),
                s.next_attempt_at_ms.is_some(),
                s.delivery.is_some(),
            )
        })
    };
    assert_eq!(due("cr1"), Some(("pending", true, false)));
    assert_eq!(due("api1"), Some(("refused", false, false)));
}

async fn conformance(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    store.add_account("wkB".into(), 1).await.unwrap();
    let first = store
        .commit_page(page("wkA", &["a1", "a2", "a3"], Some("c1")))
        .await
        .unwrap();
    assert_eq!(first.stored.len(), 3);
    assert!(
        first.stored.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq follows page order"
    );
    // A repeated page stores nothing new; a page without cursor keeps the old one.
    let again = store
        .commit_page(page("wkA", &["a2", "a3", "a4"], None))
        .await
        .unwrap();
    assert_eq!((again.stored.len(), again.duplicates), (1, 2));
    // The same msgid in another account is another message.
    let other = store
        .commit_page(page("wkB", &["a1"], Some("b1")))
        .await
        .unwrap();
    assert_eq!(other.stored.len(), 1);
    let accounts = store.accounts().await.unwrap();
    let accounts: Vec<(String, Option<String>)> = accounts
        .into_iter()
        .map(|a| (a.open_kfid.into_string(), a.cursor))
        .collect();
    assert_eq!(
        accounts,
        vec![
            ("wkA".to_owned(), Some("c1".to_owned())),
            ("wkB".to_owned(), Some("b1".to_owned()))
        ]
    );
    let pending = store.pending_messages(0, 100).await.unwrap();
    assert_eq!(pending.len(), 5);
    let seqs: Vec<i64> = pending.iter().map(|m| m.seq).collect();
    let payloads = store.load_payloads(seqs[..2].to_vec()).await.unwrap();
    assert_eq!(payloads.len(), 2);
    assert!(payloads[0].raw.contains("\"msgid\":\"a1\""));

    let record = |id: &str, seqs: &[i64]| DeliveryRecord {
        id: id.into(),
        seqs: seqs.to_vec(),
        attempts: 0,
        next_attempt_at_ms: 0,
        last_error: None,
    };
    store
        .begin_deliveries(vec![record("d1", &seqs[..3]), record("d2", &seqs[3..])], 5)
        .await
        .unwrap();
    let reply = NewReply {
        delivery_id: Some("d1".into()),
        ..reply("r1", "wkA/wm1")
    };
    let mut retry = record("d2", &seqs[3..]);
    retry.attempts = 1;
    retry.next_attempt_at_ms = 99;
    retry.last_error = Some("HTTP 500".into());
    store
        .finish_deliveries(FinishDeliveries {
            now_ms: 10,
            acks: vec![Ack {
                delivery_id: "d1".into(),
                seqs: seqs[..3].to_vec(),
                replies: vec![reply],
                reported: vec![],
                memory: Vec::new(),
            }],
            failures: vec![Failure {
                old_id: "d2".into(),
                retries: vec![retry.clone()],
            }],
        })
        .await
        .unwrap();
    assert_eq!(store.open_deliveries().await.unwrap(), vec![retry]);
    assert_eq!(store.pending_messages(0, 100).await.unwrap().len(), 2);
    let delivered: Vec<(MsgId, bool)> = store.messages("wkA".into()).await.unwrap();
    assert_eq!(delivered.iter().filter(|(_, d)| *d).count(), 3);

    let due = store.due_replies(10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(store.next_reply_due().await.unwrap(), Some(10));
    store
        .finish_replies(
            vec![ReplyOutcome::Finished {
                id: due[0].id,
                state: ReplyState::Sent,
                error: None,
                result: None,
            }],
            11,
        )
        .await
        .unwrap();
    assert!(store.due_replies(100, 10).await.unwrap().is_empty());

    assert_eq!(store.api_send("k".into(), "m".into()).await.unwrap(), None);
    let record = ApiSend {
        response: "{\"ok\":1}".into(),
        request_sha256: Some("abc".into()),
    };
    store
        .record_api_send("k".into(), "m".into(), record.clone(), 5)
        .await
        .unwrap();
    assert_eq!(
        store.api_send("k".into(), "m".into()).await.unwrap(),
        Some(record)
    );

    // The callback replay cache: a key is new once, until it expires.
    assert!(store.first_callback("cb".into(), 1_000, 900).await.unwrap());
    assert!(!store.first_callback("cb".into(), 1_000, 950).await.unwrap());
    assert!(
        store
            .first_callback("cb2".into(), 1_000, 950)
            .await
            .unwrap()
    );
    assert!(
        store
            .first_callback("cb".into(), 2_000, 1_001)
            .await
            .unwrap(),
        "expired"
    );
    // What a starting instance loads into its memory: the unexpired keys only, up to a limit.
    let mut remembered = store.remembered_callbacks(1_001, 10).await.unwrap();
    remembered.sort();
    assert_eq!(remembered, vec![("cb".to_owned(), 2_000)]);
    store
        .first_callback("cb3".into(), 2_000, 1_001)
        .await
        .unwrap();
    assert_eq!(store.remembered_callbacks(1_001, 1).await.unwrap().len(), 1);
    // Many at once (the SQLite store commits those that queue together in one transaction):
    // each key is new exactly once, however the calls are grouped.
    let answers = futures::future::join_all(
        (0..64).map(|i| store.first_callback(format!("burst{}", i % 16), 3_000, 1_001)),
    )
    .await;
    let mut firsts = std::collections::HashMap::new();
    for (i, answer) in answers.into_iter().enumerate() {
        if answer.unwrap() {
            *firsts.entry(i % 16).or_insert(0) += 1;
        }
    }
    assert_eq!(firsts.len(), 16);
    assert!(firsts.values().all(|&n| n == 1), "{firsts:?}");

    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.messages,
            stats.pending,
            stats.deliveries,
            stats.replies_sent
        ),
        (5, 2, 1, 1)
    );
    // Delivered messages, finished replies and idempotency records older than the cutoff go.
    let purged = store.purge(20).await.unwrap();
    assert_eq!(purged, 3 + 1 + 1);
    assert_eq!(store.stats().await.unwrap().messages, 2);
    conformance_v2(&*store).await;
    conformance_policy(&*store).await;
    conformance_turns(&*store).await;

    // Where a catch-up resumes after a rejected cursor: the newest stored send_time.
    assert_eq!(store.last_send_time("wkT".into()).await.unwrap(), None);
    let mut write = page("wkT", &[], Some("t1"));
    write.messages = vec![message("t1", "wm1", 3), message("t2", "wm1", 3)];
    write.messages[0].send_time = 1_700_000_500;
    write.messages[1].send_time = 1_700_000_200;
    store.commit_page(write).await.unwrap();
    assert_eq!(
        store.last_send_time("wkT".into()).await.unwrap(),
        Some(1_700_000_500)
    );
    conformance_operator(&*store).await;
    conformance_console(&*store).await;
    store.close().await;
    assert!(store.ping().await.is_err(), "a closed store refuses work");
}

#[tokio::test]
async fn the_sqlite_store_keeps_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conformance.db");
    let store = SqliteStore::open(path.to_str().unwrap(), Synchronous::Normal).unwrap();
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn the_postgres_store_keeps_its_promises() {
    let Some(url) = crate::common::require_env("DATABASE_URL") else {
        return;
    };
    let schema = format!("wk_test_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect_in_schema(&url, Some(&schema))
        .await
        .unwrap();
    conformance(Arc::new(store)).await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_service_runs_end_to_end_on_postgres_and_survives_a_restart() {
    use std::time::Duration;

    use crate::common::*;

    let Some(url) = crate::common::require_env("DATABASE_URL") else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let db = schema.url.clone();

    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("pg");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("unused.db"), Some(&sink.url));
    config.storage.db = Some(db);
    let first = start(&emu, config.clone()).await;
    assert_eq!(first.store().backend(), "postgres");
    let mut expected = send_texts(&emu, &kf, "wmP1", 8);
    expected.extend(send_texts(&emu, &kf, "wmP2", 8));
    wait_for("delivered", Duration::from_secs(15), || async {
        sink.acked_count() >= 16
    })
    .await;
    first.shutdown().await;
    expected.extend(send_texts(&emu, &kf, "wmP1", 5));
    let second = start(&emu, config).await;
    wait_for(
        "delivered after the restart",
        Duration::from_secs(15),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_all_delivered_once(&second, &sink, &expected).await;
    second.shutdown().await;
    emu.shutdown().await;
    schema.drop().await;
}

/// What `wechat-kf store` opens: the listings work, writes are refused, nothing is migrated.
async fn read_only_beside_the_writer(writer: Arc<dyn Store>, location: &str) {
    writer
        .commit_page(page("wkR", &["r1", "r2"], Some("r-c1")))
        .await
        .unwrap();
    let reader = wechat_kf_service::store::open_read_only(location)
        .await
        .unwrap();
    let query = ListQuery {
        open_kfid: Some("wkR".into()),
        limit: 10,
        ..ListQuery::default()
    };
    let rows = reader.list_messages(query).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        reader
            .commit_page(page("wkR", &["r3"], Some("r-c2")))
            .await
            .is_err(),
        "a read-only store refuses writes"
    );
    reader.close().await;
    writer.close().await;
}

#[tokio::test]
async fn the_stores_open_read_only_beside_a_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    let path = path.to_str().unwrap();
    let writer = SqliteStore::open(path, Synchronous::Normal).unwrap();
    read_only_beside_the_writer(Arc::new(writer), path).await;
    let err = wechat_kf_service::store::open_read_only(":memory:")
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");

    let Some(url) = crate::common::require_env("DATABASE_URL") else {
        return;
    };
    let schema = crate::common::PgSchema::create(&url).await;
    let err = wechat_kf_service::store::open_read_only(&schema.url)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("schema version 0"), "{err}");
    let writer = PostgresStore::connect(&schema.url).await.unwrap();
    read_only_beside_the_writer(Arc::new(writer), &schema.url).await;
    schema.drop().await;
}

/// Backends of this test's connections waiting on a lock while running `statement`.
async fn waiting_on_a_lock(admin: &tokio_postgres::Client, statement: &str) -> bool {
    let row = admin
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database() AND position($1 in query) > 0",
            &[&statement],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

/// A page commit of the previous leader still in flight when a new leader takes over stores a
/// message whose seq is lower than messages committed before it. The new leader's fence waits
/// for it, so its scan at start finds that message (a scan by seq alone would pass it by), and
/// the old leader commits nothing afterwards.
#[tokio::test]
async fn a_new_leader_finds_a_lower_seq_committed_late_by_the_old_one() {
    use std::time::Duration;

    use crate::common::{PgSchema, wait_for};

    let Some(url) = crate::common::require_env("DATABASE_URL") else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let old = Arc::new(PostgresStore::connect(&schema.url).await.unwrap());
    old.add_account("wkOld".into(), 1).await.unwrap();
    old.fence().await.unwrap();

    // Hold the old leader's page commit after its messages are inserted (seq taken), before
    // its cursor is: the test holds the cursor's row.
    let (mut blocker, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let hold = blocker.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM cursors WHERE open_kfid = 'wkOld' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let in_flight = tokio::spawn({
        let old = old.clone();
        async move { old.commit_page(page("wkOld", &["late"], Some("c1"))).await }
    });
    wait_for(
        "the old leader's page commit to wait for its cursor",
        Duration::from_secs(10),
        || waiting_on_a_lock(&schema.admin, "INSERT INTO cursors"),
    )
    .await;
    // A later page (another account) commits first, with a higher seq.
    let early = old
        .commit_page(page("wkNew", &["early"], Some("c1")))
        .await
        .unwrap();

    // The new leader fences, then scans what is pending, as the service does at start.
    let new = Arc::new(PostgresStore::connect(&schema.url).await.unwrap());
    let takeover = tokio::spawn({
        let new = new.clone();
        async move {
            new.fence().await.unwrap();
            new.pending_messages(0, 100).await.unwrap()
        }
    });
    wait_for(
        "the new leader's fence to wait for the commit in flight",
        Duration::from_secs(10),
        || waiting_on_a_lock(&schema.admin, "pg_advisory_xact_lock("),
    )
    .await;
    hold.commit().await.unwrap();
    let late = in_flight.await.unwrap().unwrap();
    let (late_seq, early_seq) = (late.stored[0].seq, early.stored[0].seq);
    assert!(late_seq < early_seq, "the late commit has the lower seq");
    let pending: Vec<i64> = takeover.await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(pending, vec![late_seq, early_seq]);

    // The old leader, fenced off, commits nothing more.
    let refused = old
        .commit_page(page("wkOld", &["after"], Some("c2")))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, wechat_kf_service::Error::LeadershipLost),
        "{refused}"
    );
    let stored: Vec<MsgId> = new
        .messages("wkOld".into())
        .await
        .unwrap()
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(stored, vec![MsgId::from("late")]);
    assert_eq!(
        new.accounts().await.unwrap()[..],
        [
            AccountCursor {
                open_kfid: "wkNew".into(),
                cursor: Some("c1".into()),
                catch_up_before: None,
            },
            AccountCursor {
                open_kfid: "wkOld".into(),
                cursor: Some("c1".into()),
                catch_up_before: None,
            },
        ]
    );
    old.close().await;
    new.close().await;
    schema.drop().await;
}
