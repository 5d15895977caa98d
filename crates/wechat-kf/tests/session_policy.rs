//! The send policy of `wechat_kf::session`, rule by rule, with an explicit clock: the 48-hour
//! window, the 5-message quota, menu clicks (95024), and every session-state transition (official doc 94669)
//! that changes whether the API may send.

use serde_json::json;
use wechat_kf::message::{FailType, Message};
use wechat_kf::session::{
    CodeKind, CodeRefusal, IssuedCode, LONG_CODE_LIFETIME_SECS, SEND_QUOTA, SEND_WINDOW_SECS,
    SHORT_CODE_LIFETIME_SECS, SendAllowance, SendRefusal, ServiceState, SessionTracker,
    SessionView, refusal_for_errcode,
};
use wechat_kf::{MsgId, UserId};

const T0: u64 = 1_700_000_000;
const HOUR: u64 = 3600;

fn message(value: serde_json::Value) -> Message {
    Message::from_json(&value.to_string()).unwrap()
}

fn customer_text(msgid: &str, at: u64) -> Message {
    message(
        json!({"msgid": msgid, "open_kfid": "wk1", "external_userid": "wm1",
        "send_time": at, "origin": 3, "msgtype": "text", "text": {"content": "你好"}}),
    )
}

fn customer_click(msgid: &str, at: u64) -> Message {
    message(
        json!({"msgid": msgid, "open_kfid": "wk1", "external_userid": "wm1",
        "send_time": at, "origin": 3, "msgtype": "text",
        "text": {"content": "查订单", "menu_id": "101"}}),
    )
}

fn customer_image(msgid: &str, at: u64) -> Message {
    message(
        json!({"msgid": msgid, "open_kfid": "wk1", "external_userid": "wm1",
        "send_time": at, "origin": 3, "msgtype": "image", "image": {"media_id": "MEDIA"}}),
    )
}

fn servicer_text(msgid: &str, servicer: &str, at: u64) -> Message {
    message(
        json!({"msgid": msgid, "open_kfid": "wk1", "external_userid": "wm1",
        "send_time": at, "origin": 5, "servicer_userid": servicer, "msgtype": "text",
        "text": {"content": "您好"}}),
    )
}

fn event(msgid: &str, at: u64, event: serde_json::Value) -> Message {
    message(
        json!({"msgid": msgid, "send_time": at, "origin": 4, "msgtype": "event", "event": event}),
    )
}

fn session_change(msgid: &str, at: u64, change_type: u32, fields: serde_json::Value) -> Message {
    let mut body = json!({"event_type": "session_status_change", "open_kfid": "wk1",
        "external_userid": "wm1", "change_type": change_type});
    for (key, value) in fields.as_object().unwrap() {
        body[key] = value.clone();
    }
    event(msgid, at, body)
}

fn send_fail(msgid: &str, at: u64, fail_type: u32) -> Message {
    event(
        msgid,
        at,
        json!({"event_type": "msg_send_fail", "open_kfid": "wk1", "external_userid": "wm1",
            "fail_msgid": "ours-1", "fail_type": fail_type}),
    )
}

fn enter_session(msgid: &str, at: u64, welcome_code: Option<&str>) -> Message {
    let mut body = json!({"event_type": "enter_session", "open_kfid": "wk1",
        "external_userid": "wm1", "scene": "order"});
    if let Some(code) = welcome_code {
        body["welcome_code"] = json!(code);
    }
    event(msgid, at, body)
}

/// A view in which the customer wrote at `T0`.
fn after_customer_message() -> SessionView {
    let mut view = SessionView::new();
    view.observe(&customer_text("m1", T0));
    view
}

fn errcode(result: Result<SendAllowance, SendRefusal>) -> i64 {
    result.map_or_else(|refusal| refusal.errcode(), |_| 0)
}

// ---- the window and the quota -----------------------------------------------------------------

#[test]
fn a_customer_message_opens_five_sends_for_48_hours() {
    let view = after_customer_message();
    assert_eq!(
        view.can_send(T0 + 1),
        Ok(SendAllowance {
            remaining: SEND_QUOTA,
            window_closes_at: T0 + SEND_WINDOW_SECS,
        })
    );
    assert_eq!(SEND_QUOTA, 5);
    assert_eq!(SEND_WINDOW_SECS, 48 * HOUR);
}

#[test]
fn the_window_closes_exactly_48_hours_after_the_customer_wrote() {
    let view = after_customer_message();
    assert!(view.can_send(T0 + SEND_WINDOW_SECS - 1).is_ok());
    assert_eq!(
        view.can_send(T0 + SEND_WINDOW_SECS),
        Err(SendRefusal::WindowExpired {
            last_customer_message_at: Some(T0),
        })
    );
    assert_eq!(errcode(view.can_send(T0 + 100 * HOUR)), 95002);
}

#[test]
fn the_sixth_message_after_one_customer_message_is_refused() {
    let mut view = after_customer_message();
    for sent in 0..SEND_QUOTA {
        let allowance = view.can_send(T0 + 10).unwrap();
        assert_eq!(allowance.remaining, SEND_QUOTA - sent);
        view.record_send(T0 + 10);
    }
    assert_eq!(
        view.can_send(T0 + 10),
        Err(SendRefusal::QuotaExhausted { sent: 5 })
    );
    assert_eq!(view.sent_since_customer_message(), 5);
}

#[test]
fn each_new_customer_message_resets_the_quota_and_reopens_the_window() {
    let mut view = after_customer_message();
    for _ in 0..SEND_QUOTA {
        view.record_send(T0 + 10);
    }
    view.observe(&customer_image("m2", T0 + 40 * HOUR));
    let allowance = view.can_send(T0 + 50 * HOUR).unwrap();
    assert_eq!(allowance.remaining, SEND_QUOTA);
    assert_eq!(
        allowance.window_closes_at,
        T0 + 40 * HOUR + SEND_WINDOW_SECS
    );
}

#[test]
fn a_replayed_customer_message_does_not_reset_the_quota() {
    let mut view = after_customer_message();
    for _ in 0..SEND_QUOTA {
        view.record_send(T0 + 10);
    }
    view.observe(&customer_text("m1", T0));
    assert_eq!(errcode(view.can_send(T0 + 20)), 95001);
}

#[test]
fn an_older_customer_message_pulled_late_does_not_reset_the_quota() {
    let mut view = SessionView::new();
    view.observe(&customer_text("m2", T0 + 5));
    for _ in 0..SEND_QUOTA {
        view.record_send(T0 + 10);
    }
    view.observe(&customer_text("m1", T0));
    assert_eq!(errcode(view.can_send(T0 + 20)), 95001);
    assert_eq!(view.last_customer_message_at(), Some(T0 + 5));
}

#[test]
fn sends_made_after_a_customer_message_still_count_when_it_is_pulled_late() {
    let mut view = after_customer_message();
    view.record_send(T0 + 10);
    view.record_send(T0 + 20);
    view.record_send(T0 + 30);
    view.record_send(T0 + 40);
    // The customer wrote again at T0 + 20; we only learn it now. The server reset the count at
    // T0 + 20, so the sends at T0 + 30 and T0 + 40 still count; the one in the same second is
    // taken to have come before the message.
    view.observe(&customer_text("m2", T0 + 20));
    assert_eq!(view.can_send(T0 + 50).unwrap().remaining, SEND_QUOTA - 2);
}

#[test]
fn a_second_customer_message_in_the_same_second_resets_the_quota() {
    let mut view = after_customer_message();
    for _ in 0..SEND_QUOTA {
        view.record_send(T0);
    }
    view.observe(&customer_text("m2", T0));
    assert_eq!(view.can_send(T0 + 1).unwrap().remaining, SEND_QUOTA);
    view.observe(&customer_text("m2", T0));
    view.record_send(T0 + 1);
    view.observe(&customer_text("m2", T0));
    assert_eq!(view.can_send(T0 + 1).unwrap().remaining, SEND_QUOTA - 1);
}

// ---- menu clicks (95024) ----------------------------------------------------------------------

#[test]
fn menu_clicks_alone_do_not_count_as_the_customer_writing() {
    let mut view = SessionView::new();
    view.observe(&customer_click("c1", T0));
    assert_eq!(
        view.can_send(T0 + 1),
        Err(SendRefusal::OnlyMenuClicks {
            last_active_message_at: None,
        })
    );
    assert_eq!(errcode(view.can_send(T0 + 1)), 95024);
}

#[test]
fn a_menu_click_resets_the_quota_but_the_window_still_ends_48_hours_after_typed_text() {
    let mut view = after_customer_message();
    for _ in 0..SEND_QUOTA {
        view.record_send(T0 + 10);
    }
    view.observe(&customer_click("c1", T0 + 47 * HOUR));
    let allowance = view.can_send(T0 + 47 * HOUR + 1).unwrap();
    assert_eq!(allowance.remaining, SEND_QUOTA);
    assert_eq!(allowance.window_closes_at, T0 + SEND_WINDOW_SECS);
    assert_eq!(
        view.can_send(T0 + SEND_WINDOW_SECS),
        Err(SendRefusal::OnlyMenuClicks {
            last_active_message_at: Some(T0),
        })
    );
    view.observe(&customer_text("m2", T0 + 49 * HOUR));
    assert!(view.can_send(T0 + 49 * HOUR).is_ok());
}

#[test]
fn a_text_with_an_empty_menu_id_is_typed_text() {
    let mut view = SessionView::new();
    view.observe(&message(
        json!({"msgid": "m1", "open_kfid": "wk1", "external_userid": "wm1",
        "send_time": T0, "origin": 3, "msgtype": "text", "text": {"content": "hi", "menu_id": ""}}),
    ));
    assert!(view.can_send(T0 + 1).is_ok());
}

#[test]
fn any_message_type_from_the_customer_opens_the_window() {
    let mut view = SessionView::new();
    view.observe(&customer_image("m1", T0));
    assert!(view.can_send(T0 + 1).is_ok());
    let mut view = SessionView::new();
    view.observe(&message(
        json!({"msgid": "m1", "open_kfid": "wk1", "external_userid": "wm1",
        "send_time": T0, "origin": 3, "msgtype": "brand_new_type", "brand_new_type": {}}),
    ));
    assert!(view.can_send(T0 + 1).is_ok());
}

// ---- entering the chat, welcome codes ---------------------------------------------------------

#[test]
fn a_view_that_knows_nothing_refuses_for_lack_of_a_customer_message() {
    let view = SessionView::new();
    assert_eq!(view.can_send(T0), Err(SendRefusal::NoCustomerMessage));
    assert_eq!(errcode(view.can_send(T0)), 95002);
    assert!(!view.state_is_known());
}

#[test]
fn entering_the_chat_alone_leaves_the_session_in_state_4_with_a_welcome_code_for_20_seconds() {
    let mut view = SessionView::new();
    view.observe(&enter_session("e1", T0, Some("W1")));
    assert_eq!(view.state(), Some(ServiceState::Ended));
    assert_eq!(view.can_send(T0 + 1), Err(SendRefusal::Ended));
    let code = view.usable_code(T0 + SHORT_CODE_LIFETIME_SECS - 1).unwrap();
    assert_eq!((code.code.as_str(), code.kind), ("W1", CodeKind::Welcome));
    assert!(view.usable_code(T0 + SHORT_CODE_LIFETIME_SECS).is_none());
}

#[test]
fn the_customers_first_message_after_entering_opens_a_new_session() {
    let mut view = SessionView::new();
    view.observe(&enter_session("e1", T0, Some("W1")));
    view.observe(&customer_text("m1", T0 + 5));
    assert_eq!(view.state(), Some(ServiceState::New));
    assert!(view.can_send(T0 + 6).is_ok());
}

#[test]
fn re_entering_an_open_session_changes_nothing() {
    let mut view = after_customer_message();
    view.record_send(T0 + 1);
    view.observe(&enter_session("e1", T0 + 60, None));
    assert_eq!(view.state(), Some(ServiceState::Bot));
    assert_eq!(view.can_send(T0 + 61).unwrap().remaining, SEND_QUOTA - 1);
}

#[test]
fn a_welcome_code_is_used_once() {
    let mut view = SessionView::new();
    view.observe(&enter_session("e1", T0, Some("W1")));
    view.record_code_used("W1", T0 + 1);
    assert!(view.usable_code(T0 + 2).is_none());
    assert_eq!(
        view.code().unwrap().check(T0 + 2, None, "text"),
        Err(CodeRefusal::Used)
    );
}

// ---- state transitions -------------------------------------------------------------------------

#[test]
fn the_first_send_in_state_new_moves_the_session_to_the_bot() {
    let mut view = after_customer_message();
    assert_eq!(view.state(), None);
    view.record_send(T0 + 1);
    assert_eq!(view.state(), Some(ServiceState::Bot));
    let mut view = SessionView::new();
    view.observe(&enter_session("e1", T0, None));
    view.observe(&customer_text("m1", T0 + 1));
    assert_eq!(view.state(), Some(ServiceState::New));
    view.record_send(T0 + 2);
    assert_eq!(view.state(), Some(ServiceState::Bot));
}

#[test]
fn an_accepted_send_proves_the_bot_holds_the_session_whatever_the_view_believed() {
    let mut view = after_customer_message();
    view.observe_state(ServiceState::Queued, None, T0 + 1);
    view.record_send(T0 + 2);
    assert_eq!(view.state(), Some(ServiceState::Bot));
    assert_eq!(view.can_send(T0 + 3).unwrap().remaining, SEND_QUOTA - 1);
}

#[test]
fn trans_into_the_bot_state_allows_sending() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Bot, None, None, T0 + 1);
    assert_eq!(view.state(), Some(ServiceState::Bot));
    assert!(view.can_send(T0 + 2).is_ok());
}

#[test]
fn trans_into_the_queue_silences_the_bot_and_keeps_the_queue_code_for_48_hours() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Queued, None, Some("Q1"), T0 + 10);
    assert_eq!(view.can_send(T0 + 11), Err(SendRefusal::Queued));
    assert_eq!(errcode(view.can_send(T0 + 11)), 95018);
    let code = view
        .usable_code(T0 + 10 + LONG_CODE_LIFETIME_SECS - 1)
        .unwrap();
    assert_eq!(code.kind, CodeKind::Queue);
    assert!(
        view.usable_code(T0 + 10 + LONG_CODE_LIFETIME_SECS)
            .is_none()
    );
}

#[test]
fn trans_to_a_human_servicer_names_the_servicer() {
    let mut view = after_customer_message();
    view.observe_trans(
        ServiceState::Human,
        Some(UserId::new("zhangsan")),
        Some("C1"),
        T0 + 10,
    );
    assert_eq!(
        view.can_send(T0 + 11),
        Err(SendRefusal::HumanServicer {
            servicer: Some(UserId::new("zhangsan")),
        })
    );
    assert_eq!(view.usable_code(T0 + 11).unwrap().kind, CodeKind::Connect);
}

#[test]
fn trans_from_one_servicer_to_another_keeps_the_bot_silent() {
    let mut view = after_customer_message();
    view.observe_trans(
        ServiceState::Human,
        Some("zhangsan".into()),
        Some("C1"),
        T0 + 10,
    );
    view.observe_trans(ServiceState::Human, Some("lisi".into()), None, T0 + 20);
    assert_eq!(
        view.can_send(T0 + 21),
        Err(SendRefusal::HumanServicer {
            servicer: Some(UserId::new("lisi")),
        })
    );
    // Re-assignment issues no new code: the connect code from the first entry stays.
    assert_eq!(view.code().unwrap().code, "C1");
}

#[test]
fn trans_into_state_4_refuses_until_the_customer_writes_again() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Ended, None, Some("E1"), T0 + 10);
    assert_eq!(view.can_send(T0 + 11), Err(SendRefusal::Ended));
    assert_eq!(view.usable_code(T0 + 11).unwrap().kind, CodeKind::End);
    assert!(view.usable_code(T0 + 30).is_none());
    view.observe(&customer_text("m2", T0 + 60));
    assert_eq!(view.state(), Some(ServiceState::New));
    assert_eq!(view.can_send(T0 + 61).unwrap().remaining, SEND_QUOTA);
}

#[test]
fn a_servicer_picking_the_session_from_the_queue_silences_the_bot() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Queued, None, Some("Q1"), T0 + 10);
    view.observe(&session_change(
        "s1",
        T0 + 20,
        1,
        json!({"new_servicer_userid": "zhangsan", "msg_code": "C1"}),
    ));
    assert_eq!(
        view.can_send(T0 + 21),
        Err(SendRefusal::HumanServicer {
            servicer: Some(UserId::new("zhangsan")),
        })
    );
    let code = view
        .usable_code(T0 + 20 + LONG_CODE_LIFETIME_SECS - 1)
        .unwrap();
    assert_eq!((code.code.as_str(), code.kind), ("C1", CodeKind::Connect));
}

#[test]
fn a_transfer_between_servicers_keeps_the_bot_silent_with_the_new_servicer() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Human, Some("zhangsan".into()), None, T0 + 10);
    view.observe(&session_change(
        "s1",
        T0 + 20,
        2,
        json!({"old_servicer_userid": "zhangsan", "new_servicer_userid": "lisi"}),
    ));
    assert_eq!(view.servicer(), Some(&UserId::new("lisi")));
    assert_eq!(errcode(view.can_send(T0 + 21)), 95018);
}

#[test]
fn a_servicer_ending_the_session_blocks_the_bot_until_the_customer_writes_again() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Human, Some("zhangsan".into()), None, T0 + 10);
    view.observe(&session_change(
        "s1",
        T0 + 20,
        3,
        json!({"old_servicer_userid": "zhangsan", "msg_code": "E1"}),
    ));
    assert_eq!(view.can_send(T0 + 21), Err(SendRefusal::Ended));
    let code = view
        .usable_code(T0 + 20 + SHORT_CODE_LIFETIME_SECS - 1)
        .unwrap();
    assert_eq!(code.kind, CodeKind::End);
    assert!(
        view.usable_code(T0 + 20 + SHORT_CODE_LIFETIME_SECS)
            .is_none()
    );
    view.observe(&customer_text("m2", T0 + 30));
    assert_eq!(view.state(), Some(ServiceState::New));
    assert!(view.can_send(T0 + 31).is_ok());
}

#[test]
fn a_servicer_rejoining_an_ended_session_takes_it_back_from_the_bot() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Ended, None, None, T0 + 10);
    view.observe(&customer_text("m2", T0 + 20));
    view.record_send(T0 + 21);
    view.observe(&session_change(
        "s1",
        T0 + 30,
        4,
        json!({"new_servicer_userid": "wangwu"}),
    ));
    assert_eq!(
        view.can_send(T0 + 31),
        Err(SendRefusal::HumanServicer {
            servicer: Some(UserId::new("wangwu")),
        })
    );
}

#[test]
fn a_servicer_message_means_a_human_holds_the_session() {
    let mut view = after_customer_message();
    view.record_send(T0 + 1);
    view.observe(&servicer_text("s1", "zhangsan", T0 + 10));
    assert_eq!(view.state(), Some(ServiceState::Human));
    assert_eq!(view.servicer(), Some(&UserId::new("zhangsan")));
    assert_eq!(errcode(view.can_send(T0 + 11)), 95018);
}

#[test]
fn the_customer_writing_to_a_human_does_not_hand_the_session_back_to_the_bot() {
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Human, Some("zhangsan".into()), None, T0 + 10);
    view.observe(&customer_text("m2", T0 + 20));
    assert_eq!(errcode(view.can_send(T0 + 21)), 95018);
    view.observe_trans(ServiceState::Queued, None, None, T0 + 30);
    view.observe(&customer_text("m3", T0 + 40));
    assert_eq!(view.can_send(T0 + 41), Err(SendRefusal::Queued));
}

#[test]
fn an_old_event_replayed_after_a_newer_change_does_not_undo_it() {
    let mut view = after_customer_message();
    let pick = session_change(
        "s1",
        T0 + 20,
        1,
        json!({"new_servicer_userid": "zhangsan", "msg_code": "C1"}),
    );
    let end = session_change("s2", T0 + 30, 3, json!({"old_servicer_userid": "zhangsan"}));
    view.observe(&pick);
    view.observe(&end);
    view.observe(&customer_text("m2", T0 + 40));
    view.observe(&pick);
    view.observe(&end);
    assert_eq!(view.state(), Some(ServiceState::New));
    assert!(view.can_send(T0 + 41).is_ok());
}

#[test]
fn an_unknown_change_type_makes_the_state_unknown_until_asked() {
    let mut view = after_customer_message();
    view.record_send(T0 + 1);
    view.observe(&session_change("s1", T0 + 10, 9, json!({})));
    assert_eq!(
        view.can_send(T0 + 11),
        Err(SendRefusal::StateForbidsSending { state: None })
    );
    assert!(!view.state_is_known());
    view.observe_state(ServiceState::Bot, None, T0 + 12);
    assert!(view.state_is_known());
    assert!(view.can_send(T0 + 13).is_ok());
}

#[test]
fn a_state_the_spec_does_not_list_refuses_with_95018() {
    let mut view = after_customer_message();
    view.observe_state(ServiceState::Other(7), None, T0 + 1);
    assert_eq!(
        view.can_send(T0 + 2),
        Err(SendRefusal::StateForbidsSending {
            state: Some(ServiceState::Other(7)),
        })
    );
}

#[test]
fn service_state_get_overrides_what_the_view_believed() {
    let mut view = after_customer_message();
    view.observe(&servicer_text("s1", "zhangsan", T0 + 10));
    view.observe_state(ServiceState::Bot, Some("ignored".into()), T0 + 20);
    assert_eq!(view.servicer(), None);
    assert!(view.can_send(T0 + 21).is_ok());
}

// ---- delivery failures ------------------------------------------------------------------------

#[test]
fn a_quota_delivery_failure_spends_the_quota_until_the_customer_writes_again() {
    let mut view = after_customer_message();
    view.record_send(T0 + 1);
    view.observe(&send_fail("f1", T0 + 2, 6));
    assert_eq!(
        view.can_send(T0 + 3),
        Err(SendRefusal::QuotaExhausted { sent: 5 })
    );
    assert_eq!(
        view.last_send_failure().map(|f| f.fail_type),
        Some(FailType::QuotaExceeded)
    );
    view.observe(&customer_text("m2", T0 + 10));
    assert!(view.can_send(T0 + 11).is_ok());
}

#[test]
fn an_expired_session_delivery_failure_closes_the_window() {
    let mut view = after_customer_message();
    view.observe(&send_fail("f1", T0 + 2, 4));
    assert_eq!(errcode(view.can_send(T0 + 3)), 95002);
}

#[test]
fn a_closed_session_delivery_failure_ends_the_session() {
    let mut view = after_customer_message();
    view.observe(&send_fail("f1", T0 + 2, 5));
    assert_eq!(view.can_send(T0 + 3), Err(SendRefusal::Ended));
}

#[test]
fn a_delivery_failure_older_than_the_customers_last_message_changes_nothing() {
    let mut view = after_customer_message();
    view.observe(&customer_text("m2", T0 + 10));
    view.observe(&send_fail("f1", T0 + 2, 6));
    assert!(view.can_send(T0 + 11).is_ok());
    // Only remembered, for the record.
    assert!(view.last_send_failure().is_some());
    view.observe(&send_fail("f2", T0 + 12, 10));
    assert!(view.can_send(T0 + 13).is_ok());
}

// ---- refusals from the server -----------------------------------------------------------------

#[test]
fn every_refusal_names_the_errcode_the_server_answers() {
    let cases = [
        (SendRefusal::HumanServicer { servicer: None }, 95018),
        (SendRefusal::Queued, 95018),
        (SendRefusal::Ended, 95018),
        (SendRefusal::StateForbidsSending { state: None }, 95018),
        (SendRefusal::NoCustomerMessage, 95002),
        (
            SendRefusal::WindowExpired {
                last_customer_message_at: None,
            },
            95002,
        ),
        (
            SendRefusal::OnlyMenuClicks {
                last_active_message_at: None,
            },
            95024,
        ),
        (SendRefusal::QuotaExhausted { sent: 5 }, 95001),
    ];
    for (refusal, code) in cases {
        assert_eq!(refusal.errcode(), code, "{refusal:?}");
        let text = refusal.to_string();
        assert!(text.contains(&code.to_string()), "{text}");
    }
}

#[test]
fn refusal_texts_tell_a_bot_developer_what_happened_and_what_lifts_it() {
    let human = SendRefusal::HumanServicer {
        servicer: Some(UserId::new("zhangsan")),
    };
    assert!(human.to_string().contains("human servicer (zhangsan)"));
    assert!(human.is_human_handoff() && !human.lifted_by_customer_message());
    let quota = SendRefusal::QuotaExhausted { sent: 5 };
    assert!(quota.to_string().contains("at most 5"));
    assert!(quota.lifted_by_customer_message() && !quota.is_human_handoff());
    let window = SendRefusal::WindowExpired {
        last_customer_message_at: Some(T0),
    };
    assert!(window.to_string().contains("48 hours"));
    assert!(window.to_string().contains(&T0.to_string()));
    assert!(
        SendRefusal::OnlyMenuClicks {
            last_active_message_at: None
        }
        .to_string()
        .contains("menu")
    );
    assert!(
        SendRefusal::NoCustomerMessage
            .to_string()
            .contains("welcome_code")
    );
    assert!(SendRefusal::Ended.lifted_by_customer_message());
}

#[test]
fn refusal_for_errcode_maps_the_four_send_codes_and_nothing_else() {
    assert_eq!(
        refusal_for_errcode(95018),
        Some(SendRefusal::StateForbidsSending { state: None })
    );
    assert_eq!(
        refusal_for_errcode(95002),
        Some(SendRefusal::WindowExpired {
            last_customer_message_at: None
        })
    );
    assert_eq!(
        refusal_for_errcode(95024),
        Some(SendRefusal::OnlyMenuClicks {
            last_active_message_at: None
        })
    );
    assert_eq!(
        refusal_for_errcode(95001),
        Some(SendRefusal::QuotaExhausted { sent: 5 })
    );
    for other in [0i64, -1, 40014, 45009, 95000, 95013, 95031] {
        assert_eq!(refusal_for_errcode(other), None, "{other}");
    }
    for code in [95018i64, 95002, 95024, 95001] {
        assert_eq!(refusal_for_errcode(code).unwrap().errcode(), code);
    }
}

#[cfg(feature = "client")]
#[test]
fn the_clients_errcodes_and_errors_map_to_send_refusals() {
    use wechat_kf::client::{ErrCode, Error};
    assert_eq!(
        refusal_for_errcode(ErrCode::SendQuotaExhausted),
        Some(SendRefusal::QuotaExhausted { sent: 5 })
    );
    let error = Error::Api {
        endpoint: "kf/send_msg",
        code: ErrCode::StateForbidsSending,
        errmsg: String::new(),
    };
    assert_eq!(
        error.send_refusal(),
        Some(SendRefusal::StateForbidsSending { state: None })
    );
    let busy = Error::Api {
        endpoint: "kf/send_msg",
        code: ErrCode::SystemBusy,
        errmsg: String::new(),
    };
    assert_eq!(busy.send_refusal(), None);
}

#[test]
fn an_unpredicted_quota_refusal_holds_until_the_customer_writes_again() {
    let mut view = after_customer_message();
    view.record_send(T0 + 1);
    view.observe_refusal(&refusal_for_errcode(95001).unwrap(), T0 + 2);
    assert_eq!(errcode(view.can_send(T0 + 3)), 95001);
    view.observe(&customer_text("m1", T0));
    assert_eq!(errcode(view.can_send(T0 + 3)), 95001);
    view.observe(&customer_text("m2", T0 + 4));
    assert!(view.can_send(T0 + 5).is_ok());
}

#[test]
fn an_unpredicted_window_refusal_holds_until_the_customer_writes_again() {
    let mut view = after_customer_message();
    view.observe_refusal(&refusal_for_errcode(95002).unwrap(), T0 + 2);
    assert_eq!(errcode(view.can_send(T0 + 3)), 95002);
    view.observe(&customer_click("c1", T0 + 4));
    assert!(view.can_send(T0 + 5).is_ok());
}

#[test]
fn an_unpredicted_menu_click_refusal_holds_until_the_customer_types_something() {
    let mut view = after_customer_message();
    view.observe_refusal(&refusal_for_errcode(95024).unwrap(), T0 + 2);
    view.observe(&customer_click("c1", T0 + 3));
    assert_eq!(errcode(view.can_send(T0 + 4)), 95024);
    view.observe(&customer_text("m2", T0 + 5));
    assert!(view.can_send(T0 + 6).is_ok());
}

#[test]
fn an_unpredicted_state_refusal_holds_until_the_state_is_learnt() {
    let mut view = after_customer_message();
    view.observe_refusal(&refusal_for_errcode(95018).unwrap(), T0 + 2);
    assert_eq!(
        view.can_send(T0 + 3),
        Err(SendRefusal::StateForbidsSending { state: None })
    );
    // A customer message does not tell which state the session is in.
    view.observe(&customer_text("m2", T0 + 4));
    assert_eq!(errcode(view.can_send(T0 + 5)), 95018);
    view.observe_state(ServiceState::Human, Some("zhangsan".into()), T0 + 6);
    assert!(matches!(
        view.can_send(T0 + 7),
        Err(SendRefusal::HumanServicer { .. })
    ));
    view.observe_trans(ServiceState::Ended, None, None, T0 + 8);
    view.observe(&customer_text("m3", T0 + 9));
    assert!(view.can_send(T0 + 10).is_ok());
}

// ---- codes ------------------------------------------------------------------------------------

#[test]
fn codes_live_20_seconds_or_48_hours_by_kind() {
    let cases = [
        (CodeKind::Welcome, 20),
        (CodeKind::End, 20),
        (CodeKind::Queue, 48 * HOUR),
        (CodeKind::Connect, 48 * HOUR),
    ];
    for (kind, lifetime) in cases {
        let code = IssuedCode::new("X", kind, T0);
        assert_eq!(code.expires_at(), T0 + lifetime);
        assert!(code.is_live(T0 + lifetime - 1), "{kind}");
        assert!(!code.is_live(T0 + lifetime), "{kind}");
        assert_eq!(
            code.check(T0 + lifetime, kind.required_state(), "text"),
            Err(CodeRefusal::Expired {
                expired_at: T0 + lifetime
            })
        );
    }
}

#[test]
fn codes_other_than_welcome_need_the_session_still_in_their_state() {
    let queue = IssuedCode::new("Q", CodeKind::Queue, T0);
    assert_eq!(
        queue.check(T0 + 1, Some(ServiceState::Queued), "text"),
        Ok(())
    );
    assert_eq!(
        queue.check(T0 + 1, Some(ServiceState::Human), "text"),
        Err(CodeRefusal::WrongState {
            needed: ServiceState::Queued,
            actual: Some(ServiceState::Human),
        })
    );
    let welcome = IssuedCode::new("W", CodeKind::Welcome, T0);
    for state in [ServiceState::Ended, ServiceState::New, ServiceState::Bot] {
        assert_eq!(welcome.check(T0 + 1, Some(state), "msgmenu"), Ok(()));
    }
}

#[test]
fn welcome_and_end_codes_send_text_or_menus_queue_and_connect_codes_only_text() {
    for kind in [CodeKind::Welcome, CodeKind::End] {
        assert!(kind.allows_msgtype("text") && kind.allows_msgtype("msgmenu"));
        assert!(!kind.allows_msgtype("image"));
    }
    for kind in [CodeKind::Queue, CodeKind::Connect] {
        assert!(kind.allows_msgtype("text") && !kind.allows_msgtype("msgmenu"));
        let code = IssuedCode::new("C", kind, T0);
        let refusal = code.check(T0 + 1, kind.required_state(), "msgmenu");
        assert_eq!(refusal, Err(CodeRefusal::WrongMsgType { kind }));
        assert!(refusal.unwrap_err().to_string().contains("only sends text"));
    }
}

#[test]
fn trans_returns_a_code_for_queue_human_and_end_only() {
    assert_eq!(
        CodeKind::for_state(ServiceState::Queued),
        Some(CodeKind::Queue)
    );
    assert_eq!(
        CodeKind::for_state(ServiceState::Human),
        Some(CodeKind::Connect)
    );
    assert_eq!(
        CodeKind::for_state(ServiceState::Ended),
        Some(CodeKind::End)
    );
    assert_eq!(CodeKind::for_state(ServiceState::Bot), None);
    let mut view = after_customer_message();
    view.observe_trans(ServiceState::Bot, None, Some("ignored"), T0 + 1);
    assert!(view.code().is_none());
}

// ---- the tracker ------------------------------------------------------------------------------

#[test]
fn the_tracker_routes_messages_by_account_and_customer() {
    let mut sessions = SessionTracker::new();
    let other_customer = message(json!({"msgid": "o1", "open_kfid": "wk1",
        "external_userid": "wm2", "send_time": T0, "origin": 3, "msgtype": "text",
        "text": {"content": "在吗"}}));
    assert!(sessions.observe(&customer_text("m1", T0)));
    assert!(sessions.observe(&other_customer));
    assert!(sessions.observe(&session_change(
        "s1",
        T0 + 5,
        2,
        json!({"new_servicer_userid": "lisi"})
    )));
    let status = event(
        "x1",
        T0 + 6,
        json!({"event_type": "servicer_status_change", "open_kfid": "wk1",
            "servicer_userid": "lisi", "status": 2}),
    );
    assert!(!sessions.observe(&status));
    assert_eq!(sessions.len(), 2);
    assert_eq!(errcode(sessions.can_send("wk1", "wm1", T0 + 10)), 95018);
    assert!(sessions.can_send("wk1", "wm2", T0 + 10).is_ok());
    assert_eq!(errcode(sessions.can_send("wk9", "wm1", T0 + 10)), 95002);
    sessions.record_send(&"wk1".into(), &"wm2".into(), T0 + 11);
    assert_eq!(
        sessions
            .session("wk1", "wm2")
            .unwrap()
            .sent_since_customer_message(),
        1
    );
}

#[test]
fn the_tracker_forgets_idle_sessions() {
    let mut sessions = SessionTracker::new();
    sessions.observe(&customer_text("m1", T0));
    assert_eq!(sessions.prune(T0 + 100 * HOUR, 120 * HOUR), 0);
    assert_eq!(sessions.prune(T0 + 200 * HOUR, 120 * HOUR), 1);
    assert!(sessions.is_empty());
}

#[test]
fn a_recorded_msgid_makes_the_low_level_customer_message_call_idempotent() {
    let mut view = SessionView::new();
    let id = MsgId::new("m1");
    view.observe_customer_message(T0, Some(&id), false);
    view.record_send(T0 + 1);
    view.observe_customer_message(T0, Some(&id), false);
    assert_eq!(view.sent_since_customer_message(), 1);
}
