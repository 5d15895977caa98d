//! Golden fixtures: every message and event type from the spec plus edge cases.
//!
//! Each file in `fixtures/messages/` is named `<kind>__<case>.json`, where `<kind>` is the
//! expected [`Message::kind`] with `:` written as `-`. Every fixture must decode, classify as
//! named, and re-encode to JSON equal to the input.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use wechat_kf::message::{
    ChangeType, Event, FailType, MenuItem, Message, MessageContent, Origin, RejectSwitch,
    ServicerStatus, StopType, SyncMsgResponse,
};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixtures(dir: &str, ext: &str) -> Vec<(String, String)> {
    let mut out: Vec<_> = fs::read_dir(fixture_dir(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (stem, fs::read_to_string(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn load(name: &str) -> Message {
    let text = fs::read_to_string(fixture_dir("messages").join(format!("{name}.json"))).unwrap();
    Message::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_fixture_decodes_classifies_and_round_trips_losslessly() {
    let all = fixtures("messages", "json");
    assert!(
        all.len() >= 50,
        "expected the full fixture set, found {}",
        all.len()
    );
    for (name, text) in all {
        let message = Message::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected_kind = name.split("__").next().unwrap().replace('-', ":");
        assert_eq!(message.kind(), expected_kind, "{name}");
        assert_eq!(message.raw(), text, "{name}: raw is kept byte for byte");
        let reencoded = serde_json::to_string(&message).unwrap();
        let a: Value = serde_json::from_str(&reencoded).unwrap();
        let b: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(a, b, "{name}: re-encoding changed the JSON");
    }
}

#[test]
fn every_fixture_rebuilt_from_its_typed_parts_decodes_to_the_same_typed_message() {
    for (name, text) in fixtures("messages", "json") {
        let message = Message::from_json(&text).unwrap();
        let (envelope, content) = message.clone().into_parts();
        let rebuilt = Message::new(envelope, content).unwrap();
        let again = Message::from_json(rebuilt.raw()).unwrap();
        assert_eq!(again.envelope(), message.envelope(), "{name}");
        assert_eq!(again.content(), message.content(), "{name}");
    }
}

#[test]
fn text_accessors_match_the_go_sdk_getters() {
    let m = load("text__menu_click");
    assert_eq!(m.text().unwrap().content, "转人工");
    assert_eq!(m.text().unwrap().menu_id.as_deref(), Some("101"));
    assert!(m.image().is_none());
    assert_eq!(m.origin(), Origin::Customer);
    assert_eq!(m.open_kfid().unwrap(), "wkAbCdEf0123456789");
    assert_eq!(m.external_userid().unwrap(), "wmXyZ0123456789");
}

#[test]
fn unicode_escapes_are_decoded_in_the_typed_view_and_kept_in_raw() {
    let m = load("text__unicode_escapes");
    assert_eq!(
        m.text().unwrap().content,
        "你好 😀 \"quoted\" \\ back\nslash"
    );
    assert!(m.raw().contains(r"\u4f60"));
}

#[test]
fn escaped_keys_and_a_payload_before_msgtype_still_decode() {
    assert_eq!(
        load("text__escaped_keys").text().unwrap().content,
        "escaped keys"
    );
    assert_eq!(
        load("text__payload_before_msgtype").text().unwrap().content,
        "order differs"
    );
}

#[test]
fn servicer_messages_carry_origin_5_and_the_servicer() {
    let m = load("text__origin5_servicer");
    assert_eq!(m.origin(), Origin::Servicer);
    assert_eq!(m.servicer_userid().unwrap(), "zhangsan");
}

#[test]
fn an_unknown_origin_is_kept_as_its_number() {
    let m = load("text__unknown_origin");
    assert_eq!(m.origin(), Origin::Other(9));
    assert_eq!(m.origin().code(), 9);
}

#[test]
fn coordinates_are_accepted_as_numbers_and_as_strings() {
    let a = load("location__spec");
    let b = load("location__string_coordinates");
    assert_eq!(a.location().unwrap().latitude, 23.1291);
    assert_eq!(b.location().unwrap().latitude, 23.1291);
    assert_eq!(b.location().unwrap().longitude, 113.2644);
    assert_eq!(load("location__no_name").location().unwrap().name, None);
}

#[test]
fn sales_price_is_accepted_as_a_string_and_as_a_number() {
    assert_eq!(
        load("channels_shop_product__spec")
            .channels_shop_product()
            .unwrap()
            .sales_price
            .as_deref(),
        Some("1990")
    );
    assert_eq!(
        load("channels_shop_product__numeric_price")
            .channels_shop_product()
            .unwrap()
            .sales_price
            .as_deref(),
        Some("1990")
    );
}

#[test]
fn menu_items_of_every_type_decode_and_unknown_items_are_kept() {
    let m = load("msgmenu__all_item_types");
    let menu = m.msg_menu().unwrap();
    assert_eq!(menu.list.len(), 5);
    assert!(matches!(&menu.list[0], MenuItem::Click(c) if c.id.as_deref() == Some("101")));
    assert!(matches!(&menu.list[1], MenuItem::View(v) if v.url == "https://example.com/faq"));
    assert!(matches!(&menu.list[2], MenuItem::MiniProgram(p) if p.pagepath == "pages/order.html"));
    assert!(matches!(&menu.list[3], MenuItem::Text(t) if t.no_newline == Some(1)));
    assert!(matches!(&menu.list[4], MenuItem::Unknown(raw) if raw.get().contains("hologram")));
}

#[test]
fn merged_msg_items_decode_their_inner_json_on_request() {
    let m = load("merged_msg__several_items");
    let merged = m.merged_msg().unwrap();
    assert_eq!(merged.item.len(), 2);
    let first = merged.item[0].content().unwrap().unwrap();
    assert!(matches!(first, MessageContent::Text(t) if t.content == "第一条"));
    let second = merged.item[1].content().unwrap().unwrap();
    assert!(matches!(second, MessageContent::Image(i) if i.media_id == "MEDIA"));
}

#[test]
fn undocumented_types_are_kept_raw() {
    let m = load("meeting__raw");
    assert!(
        m.meeting()
            .unwrap()
            .payload
            .as_ref()
            .unwrap()
            .get()
            .contains("周会")
    );
    assert!(load("note__no_payload").note().unwrap().payload.is_none());
    let sticker = load("unknown-sticker__payload");
    assert_eq!(sticker.unknown().unwrap().msgtype, "sticker");
    assert!(sticker.unknown().unwrap().payload.is_some());
}

#[test]
fn events_expose_their_fields_and_the_ids_inside_the_event() {
    let enter = load("event-enter_session__spec");
    let e = enter.enter_session().unwrap();
    assert_eq!(e.welcome_code.as_deref(), Some("WELCOME_CODE_ABC"));
    assert_eq!(e.wechat_channels.as_ref().unwrap().scene, Some(1));
    assert_eq!(enter.origin(), Origin::System);
    assert_eq!(enter.open_kfid().unwrap(), "wkAbCdEf0123456789");
    assert!(enter.envelope().open_kfid.is_none());

    let fail = load("event-msg_send_fail__spec");
    assert_eq!(
        fail.msg_send_fail().unwrap().fail_type,
        Some(FailType::CustomerRefused)
    );
    assert_eq!(
        load("event-msg_send_fail__new_fail_type")
            .msg_send_fail()
            .unwrap()
            .fail_type,
        Some(FailType::SecurityRestriction)
    );
    assert_eq!(
        load("event-msg_send_fail__future_fail_type")
            .msg_send_fail()
            .unwrap()
            .fail_type,
        Some(FailType::Other(77))
    );

    let status = load("event-servicer_status_change__spec");
    let s = status.servicer_status_change().unwrap();
    assert_eq!(s.status, Some(ServicerStatus::Stopped));
    assert_eq!(s.stop_type, Some(StopType::Suspended));
    assert!(status.external_userid().is_none());

    let ended = load("event-session_status_change__spec");
    let c = ended.session_status_change().unwrap();
    assert_eq!(c.change_type, Some(ChangeType::Ended));
    assert_eq!(c.msg_code.as_deref(), Some("END_CODE_XYZ"));
    assert_eq!(
        load("event-session_status_change__rejoined")
            .session_status_change()
            .unwrap()
            .change_type,
        Some(ChangeType::Rejoined)
    );

    assert_eq!(
        load("event-user_recall_msg__spec")
            .user_recall_msg()
            .unwrap()
            .recall_msgid
            .as_ref()
            .unwrap(),
        "from_msgid_100001"
    );
    assert_eq!(
        load("event-servicer_recall_msg__spec")
            .servicer_recall_msg()
            .unwrap()
            .servicer_userid
            .as_ref()
            .unwrap(),
        "zhangsan"
    );
    assert_eq!(
        load("event-reject_customer_msg_switch_change__spec")
            .reject_customer_msg_switch_change()
            .unwrap()
            .reject_switch,
        Some(RejectSwitch::Rejecting)
    );
}

#[test]
fn an_unknown_event_type_keeps_its_name_and_json() {
    let m = load("unknown-event-customer_rated__future");
    match m.content() {
        MessageContent::Event(Event::Unknown(e)) => {
            assert_eq!(e.event_type, "customer_rated");
            assert!(e.raw.get().contains("\"stars\":5"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn each_invalid_fixture_is_rejected_with_the_path_of_the_bad_field() {
    let all = fixtures("invalid", "json");
    assert!(!all.is_empty());
    for (name, text) in all {
        let expected_path =
            fs::read_to_string(fixture_dir("invalid").join(format!("{name}.path"))).unwrap();
        let error = Message::from_json(&text).expect_err(&name);
        assert!(
            error.path.starts_with(expected_path.trim()),
            "{name}: path {:?} does not start with {:?} ({})",
            error.path,
            expected_path.trim(),
            error.message
        );
        assert!(!error.message.is_empty(), "{name}");
    }
}

#[test]
fn one_malformed_item_never_fails_the_page_and_keeps_its_position() {
    let bad = fs::read_to_string(fixture_dir("invalid").join("fail_type_negative.json")).unwrap();
    let good1 = fs::read_to_string(fixture_dir("messages").join("text__spec.json")).unwrap();
    let good2 = fs::read_to_string(fixture_dir("messages").join("image__spec.json")).unwrap();
    let body = format!(
        r#"{{"errcode":0,"errmsg":"ok","next_cursor":"NEXT","has_more":0,"msg_list":[{good1},{bad},{good2}]}}"#
    );
    let page: SyncMsgResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(page.msg_list.len(), 2);
    assert_eq!(page.invalid.len(), 1);
    let invalid = &page.invalid[0];
    assert_eq!(invalid.index, 1);
    assert_eq!(invalid.msgid.as_ref().unwrap(), "bad6");
    assert_eq!(invalid.kind(), "invalid:event");
    assert_eq!(invalid.raw.get(), bad);
    assert_eq!(invalid.error.path, "event.fail_type");
    assert_eq!(page.next_cursor, "NEXT");
    assert!(!page.has_more);

    let reencoded: Value = serde_json::to_value(&page).unwrap();
    let original: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reencoded, original,
        "the page re-encodes with the bad item in place"
    );
}

#[test]
fn a_page_with_has_more_and_no_items_decodes() {
    let page: SyncMsgResponse = serde_json::from_str(
        r#"{"errcode":0,"errmsg":"ok","next_cursor":"c","has_more":1,"msg_list":[]}"#,
    )
    .unwrap();
    assert!(page.has_more);
    assert!(page.msg_list.is_empty());
    let missing_list: SyncMsgResponse =
        serde_json::from_str(r#"{"errcode":95007,"errmsg":"invalid msg token"}"#).unwrap();
    assert_eq!(missing_list.errcode, 95007);
}

#[test]
fn a_body_that_is_not_a_response_is_an_error() {
    assert!(serde_json::from_str::<SyncMsgResponse>("[1,2]").is_err());
    assert!(serde_json::from_str::<SyncMsgResponse>(r#"{"msg_list":{}}"#).is_err());
    assert!(serde_json::from_str::<SyncMsgResponse>(r#"{"msg_list":[1,"#).is_err());
}

#[test]
fn debug_output_never_shows_message_content() {
    let m = load("text__spec");
    let debug = format!("{m:?}");
    assert!(!debug.contains("你好"), "{debug}");
    assert!(debug.contains("from_msgid_100001"));
}
