//! The first start over a 3-day backlog under each policy, a cursor WeChat rejects, and a
//! restart in the middle of a catch-up — on the emulator's clock, without sleeping for days.

use std::time::Duration;

use serde_json::json;
use wechat_kf::client::Client;
use wechat_kf::client::messages::SyncMsgRequest;
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::config::FirstStart;
use wechat_kf_service::store::{PageWrite, SqliteStore, Store};

use crate::common::*;

const HOUR: u64 = 3600;

/// Three days of history for one customer, written while the emulator's clock moves on:
/// messages 70 h, 48 h, 25 h, 3 h and 30 min old at the end, plus an `enter_session` 25 h
/// old. Returns the msgids, oldest first, with their age in hours.
fn backlog(emu: &RunningEmulator, kf: &str, customer: &str) -> Vec<(String, f64)> {
    let e = emu.emulator();
    let mut sent = Vec::new();
    let steps: [(f64, &str); 5] = [
        (70.0, "三天前的问题"),
        (48.0, "两天前"),
        (25.0, "昨天"),
        (3.0, "三小时前"),
        (0.5, "半小时前"),
    ];
    let mut at = 70.0;
    for (age, content) in steps {
        e.advance_clock(Duration::from_secs_f64((at - age) * HOUR as f64));
        at = age;
        if age == 25.0 {
            let (id, _) = e.enter_session(kf, customer, Some("ad"), None).unwrap();
            sent.push((id, 25.0));
        }
        let ids = e.customer_send(text(kf, customer, content)).unwrap();
        sent.push((ids[0].clone(), age));
    }
    e.advance_clock(Duration::from_secs(HOUR / 2));
    sent
}

async fn first_start_under(policy: FirstStart) -> (Vec<String>, Vec<(String, f64)>, String) {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("backlog");
    let history = backlog(&emu, &kf, "wmOld");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    config.pull.first_start = policy;
    let running = start_on_emulator_clock(&emu, config).await;
    // A customer writes after the start: always delivered.
    let fresh = emu
        .emulator()
        .customer_send(text(&kf, "wmNew", "刚刚"))
        .unwrap()
        .remove(0);
    wait_for("the new message", Duration::from_secs(15), || async {
        sink.acked_msgids().contains(&fresh)
    })
    .await;
    // Every page of the backlog is committed before the fresh message's page: nothing else
    // can still be on its way.
    let rows = running
        .store()
        .message_rows(kf.clone().into())
        .await
        .unwrap();
    assert_eq!(rows.len(), history.len() + 1, "everything is stored");
    let skipped: Vec<String> = rows
        .iter()
        .filter(|r| r.skipped)
        .map(|r| r.msgid.to_string())
        .collect();
    let skipped_metric = metric(
        &running,
        &format!("wechat_kf_first_start_skipped_total{{open_kfid=\"{kf}\"}}"),
    );
    assert_eq!(skipped_metric as usize, skipped.len());
    assert_eq!(
        metric(
            &running,
            &format!(
                "wechat_kf_first_starts_total{{reason=\"first_start\",policy=\"{}\"}}",
                policy.name()
            )
        ),
        1
    );
    let delivered = sink.acked_msgids();
    for id in &skipped {
        assert!(!delivered.contains(id), "skipped {id} was delivered");
    }
    wait_until_acks_recorded(&running).await;
    running.shutdown().await;
    emu.shutdown().await;
    (delivered, history, fresh)
}

#[tokio::test]
async fn a_first_start_from_now_stores_a_three_day_backlog_but_delivers_only_new_messages() {
    let (delivered, _, fresh) = first_start_under(FirstStart::FromNow).await;
    assert_eq!(delivered, vec![fresh]);
}

#[tokio::test]
async fn a_first_start_with_replay_delivers_the_whole_backlog_in_order() {
    let (delivered, history, fresh) = first_start_under(FirstStart::Replay).await;
    let mut expected: Vec<String> = history.into_iter().map(|(id, _)| id).collect();
    expected.push(fresh);
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn a_first_start_since_four_hours_delivers_only_the_last_four_hours() {
    let (delivered, history, fresh) =
        first_start_under(FirstStart::Since(Duration::from_secs(4 * HOUR))).await;
    let mut expected: Vec<String> = history
        .into_iter()
        .filter(|(_, age)| *age < 4.0)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(expected.len(), 2);
    expected.push(fresh);
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn a_rejected_cursor_is_treated_like_a_first_start() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("lost-cursor");
    let history = backlog(&emu, &kf, "wmOld");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    // A database holding a cursor WeChat no longer accepts.
    {
        let store = SqliteStore::open(db.to_str().unwrap(), Default::default()).unwrap();
        store
            .commit_page(PageWrite {
                open_kfid: kf.clone().into(),
                messages: vec![],
                next_cursor: Some("expired-cursor-0".into()),
                now_ms: 0,
                skip_before: None,
                catch_up_before: None,
                turns: Default::default(),
                actions: vec![],
            })
            .await
            .unwrap();
        store.close().await;
    }
    let running = start_on_emulator_clock(&emu, config(&emu, &db, Some(&sink.url))).await;
    let fresh = emu
        .emulator()
        .customer_send(text(&kf, "wmNew", "新消息"))
        .unwrap()
        .remove(0);
    wait_for("the new message", Duration::from_secs(15), || async {
        sink.acked_msgids().contains(&fresh)
    })
    .await;
    assert_eq!(sink.acked_msgids(), vec![fresh]);
    let rows = running
        .store()
        .message_rows(kf.clone().into())
        .await
        .unwrap();
    assert_eq!(rows.iter().filter(|r| r.skipped).count(), history.len());
    assert_eq!(
        metric(
            &running,
            "wechat_kf_first_starts_total{reason=\"cursor_rejected\",policy=\"from-now\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &running,
            "wechat_kf_api_errcodes_total{endpoint=\"kf/sync_msg\",errcode=\"40035\"}"
        ),
        1
    );
    let account = running
        .store()
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.open_kfid == *kf)
        .unwrap();
    assert_ne!(account.cursor.as_deref(), Some("expired-cursor-0"));
    assert_eq!(account.catch_up_before, None, "caught up");
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_catch_up_keeps_skipping_old_messages() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("interrupted");
    let history = backlog(&emu, &kf, "wmOld");
    // The first run committed one page (the oldest message) and its catch-up threshold, then
    // died: the threshold was "1 hour before now".
    let e = emu.emulator().config();
    let client = Client::builder(e.corp_id.clone(), e.secret.clone())
        .base_url(emu.base_url())
        .build()
        .unwrap();
    let first_page = client
        .messages()
        .sync(SyncMsgRequest::new(kf.as_str()).limit(1))
        .await
        .unwrap();
    assert_eq!(first_page.msg_list.len(), 1);
    let threshold = emu.emulator().now() - HOUR as i64;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kf.db");
    {
        let store = SqliteStore::open(db.to_str().unwrap(), Default::default()).unwrap();
        store
            .commit_page(PageWrite {
                open_kfid: kf.clone().into(),
                messages: vec![],
                next_cursor: Some(first_page.next_cursor.clone()),
                now_ms: 0,
                skip_before: Some(threshold),
                catch_up_before: Some(threshold),
                turns: Default::default(),
                actions: vec![],
            })
            .await
            .unwrap();
        store.close().await;
    }
    // Even under `replay`, the interrupted catch-up's threshold holds.
    let mut config = config(&emu, &db, Some(&sink.url));
    config.pull.first_start = FirstStart::Replay;
    let running = start_on_emulator_clock(&emu, config).await;
    let newest = history.last().unwrap().0.clone();
    wait_for(
        "the newest backlog message",
        Duration::from_secs(15),
        || async { sink.acked_msgids().contains(&newest) },
    )
    .await;
    assert_eq!(sink.acked_msgids(), vec![newest]);
    let rows = running
        .store()
        .message_rows(kf.clone().into())
        .await
        .unwrap();
    assert_eq!(
        rows.iter().filter(|r| r.skipped).count(),
        history.len() - 2,
        "all but the first (pulled by the dead run) and the newest"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn skipped_messages_still_teach_the_session_view() {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("state");
    // Yesterday a servicer took the conversation; the service starts today.
    let customer = "wmHeld";
    emu.emulator()
        .customer_send(text(&kf, customer, "你好"))
        .unwrap();
    crate::sessions::add_servicer(&emu, &kf, "zhangsan").await;
    control(
        &emu,
        "/emulator/servicer/send",
        json!({"open_kfid": kf, "external_userid": customer, "servicer_userid": "zhangsan",
               "msgtype": "text", "text": {"content": "我来处理"}}),
    )
    .await;
    emu.emulator().advance_clock(Duration::from_secs(2 * HOUR));
    let (running, _dir) = start_delivering_to(&emu, &sink).await;
    let store = running.store().clone();
    let kf2 = kf.clone();
    wait_for("the held session's view", Duration::from_secs(15), || {
        let (store, kf) = (store.clone(), kf2.clone());
        async move {
            store
                .session(kf.into(), customer.into())
                .await
                .unwrap()
                .is_some_and(|v| v.servicer().is_some())
        }
    })
    .await;
    let (status, body) = api(
        &running,
        "POST",
        "/v1/messages",
        Some(json!({"touser": customer, "open_kfid": kf, "msgtype": "text", "text": {"content": "机器人来了"}})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "human_servicer");
    assert_eq!(body["servicer_userid"], "zhangsan");
    assert!(sink.acked_msgids().is_empty(), "nothing old was delivered");
    running.shutdown().await;
    emu.shutdown().await;
}
