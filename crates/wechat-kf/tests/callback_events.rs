//! Parsing decrypted callbacks into `CallbackEvent`, and reading envelopes, tolerantly.

use wechat_kf::callback::{CallbackEvent, KfAccountAuthChange, KfMsgOrEvent};
use wechat_kf::crypto::{CallbackCrypto, CryptoError, extract_encrypt};

fn kf(xml: &str) -> KfMsgOrEvent {
    match CallbackEvent::from_xml(xml) {
        Ok(CallbackEvent::KfMsgOrEvent(event)) => event,
        other => panic!("expected kf_msg_or_event, got {other:?}"),
    }
}

fn auth(xml: &str) -> KfAccountAuthChange {
    match CallbackEvent::from_xml(xml) {
        Ok(CallbackEvent::KfAccountAuthChange(event)) => event,
        other => panic!("expected kf_account_auth_change, got {other:?}"),
    }
}

#[test]
fn parses_the_documented_kf_msg_or_event() {
    let xml = "<xml>
<ToUserName><![CDATA[ww12345678910]]></ToUserName>
<CreateTime>1348831860</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[kf_msg_or_event]]></Event>
<Token><![CDATA[ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR]]></Token>
<OpenKfId><![CDATA[wkxxxxxxx]]></OpenKfId>
</xml>";
    let event = kf(xml);
    assert_eq!(event.to_user_name, "ww12345678910");
    assert_eq!(event.create_time, 1_348_831_860);
    assert_eq!(
        event.token,
        "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR"
    );
    assert_eq!(event.open_kfid.unwrap().as_str(), "wkxxxxxxx");
}

#[test]
fn parses_an_old_callback_without_open_kfid() {
    let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>kf_msg_or_event</Event><Token>T</Token></xml>";
    let event = kf(xml);
    assert_eq!(event.open_kfid, None);
    assert_eq!(event.token, "T");
}

#[test]
fn treats_an_empty_open_kfid_as_absent() {
    let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime><Event>kf_msg_or_event</Event><Token>T</Token><OpenKfId><![CDATA[]]></OpenKfId></xml>";
    assert_eq!(kf(xml).open_kfid, None);
}

#[test]
fn accepts_any_element_order_whitespace_and_plain_text() {
    let xml = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<xml>\r\n  <OpenKfId>\n wkA \n</OpenKfId>\n\t<Token> <![CDATA[T1]]> </Token>\n  <!-- a comment -->\n  <Event>kf_msg_or_event</Event>\n  <CreateTime> 1700000000 </CreateTime>\n  <AgentID/>\n  <ToUserName>ww1</ToUserName>\n</xml>\n";
    let event = kf(xml);
    assert_eq!(event.open_kfid.unwrap().as_str(), "wkA");
    assert_eq!(event.token, "T1");
    assert_eq!(event.create_time, 1_700_000_000);
    assert_eq!(event.to_user_name, "ww1");
}

#[test]
fn decodes_entities_in_plain_text() {
    let xml = "<xml><ToUserName>a&amp;b&lt;c&gt;&quot;&apos;&#20013;&#x6587;</ToUserName><CreateTime>1</CreateTime><Event>kf_msg_or_event</Event><Token>x&amp;y</Token></xml>";
    let event = kf(xml);
    assert_eq!(event.to_user_name, "a&b<c>\"'中文");
    assert_eq!(event.token, "x&y");
}

#[test]
fn keeps_entities_inside_cdata_literally() {
    let xml = "<xml><ToUserName><![CDATA[a&amp;b]]></ToUserName><CreateTime>1</CreateTime><Event>kf_msg_or_event</Event><Token>t</Token></xml>";
    assert_eq!(kf(xml).to_user_name, "a&amp;b");
}

#[test]
fn first_of_duplicated_elements_wins() {
    let xml = "<xml><ToUserName>first</ToUserName><ToUserName>second</ToUserName><CreateTime>1</CreateTime><Event>kf_msg_or_event</Event><Token>t</Token></xml>";
    assert_eq!(kf(xml).to_user_name, "first");
}

#[test]
fn parses_an_auth_change_with_repeated_ids() {
    let xml = "<xml>
<ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[sys]]></FromUserName>
<CreateTime>1348831860</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[kf_account_auth_change]]></Event>
<AuthAddOpenKfId><![CDATA[wkxxxx1]]></AuthAddOpenKfId>
<AuthDelOpenKfId><![CDATA[wkxxxx2]]></AuthDelOpenKfId>
<AuthAddOpenKfId><![CDATA[wkxxxx3]]></AuthAddOpenKfId>
</xml>";
    let event = auth(xml);
    assert_eq!(event.to_user_name, "toUser");
    assert_eq!(event.from_user_name.as_deref(), Some("sys"));
    assert_eq!(event.create_time, 1_348_831_860);
    let add: Vec<_> = event
        .auth_add_open_kfid
        .iter()
        .map(|id| id.as_str())
        .collect();
    let del: Vec<_> = event
        .auth_del_open_kfid
        .iter()
        .map(|id| id.as_str())
        .collect();
    assert_eq!(add, ["wkxxxx1", "wkxxxx3"]);
    assert_eq!(del, ["wkxxxx2"]);
}

#[test]
fn parses_an_auth_change_with_no_ids() {
    let xml = "<xml><ToUserName>t</ToUserName><CreateTime>2</CreateTime><Event>kf_account_auth_change</Event></xml>";
    let event = auth(xml);
    assert!(event.auth_add_open_kfid.is_empty() && event.auth_del_open_kfid.is_empty());
    assert_eq!(event.from_user_name, None);
}

#[test]
fn keeps_an_unknown_event_with_its_raw_xml() {
    let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>5</CreateTime><MsgType>event</MsgType><Event>change_contact</Event><Extra><Nested>1</Nested></Extra></xml>";
    let event = CallbackEvent::from_xml(xml).unwrap();
    let CallbackEvent::Unknown(unknown) = &event else {
        panic!("{event:?}");
    };
    assert_eq!(unknown.event.as_deref(), Some("change_contact"));
    assert_eq!(unknown.msg_type.as_deref(), Some("event"));
    assert_eq!(unknown.raw, xml);
    assert_eq!(event.create_time(), Some(5));
    assert_eq!(event.to_user_name(), Some("ww1"));
}

#[test]
fn keeps_a_text_message_callback_as_unknown() {
    let xml = "<xml><ToUserName><![CDATA[wx1]]></ToUserName><MsgType><![CDATA[text]]></MsgType><CreateTime>x</CreateTime></xml>";
    let CallbackEvent::Unknown(unknown) = CallbackEvent::from_xml(xml).unwrap() else {
        panic!();
    };
    assert_eq!(unknown.event, None);
    assert_eq!(unknown.create_time, None);
}

#[test]
fn serializes_events_as_tagged_json() {
    let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>1700000000</CreateTime><Event>kf_msg_or_event</Event><Token>T</Token><OpenKfId>wkA</OpenKfId></xml>";
    let json = serde_json::to_value(CallbackEvent::from_xml(xml).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "type": "kf_msg_or_event",
            "to_user_name": "ww1",
            "create_time": 1700000000,
            "token": "T",
            "open_kfid": "wkA",
        })
    );
    let xml = "<xml><ToUserName>t</ToUserName><CreateTime>2</CreateTime><Event>kf_account_auth_change</Event><AuthDelOpenKfId>wk9</AuthDelOpenKfId></xml>";
    let json = serde_json::to_value(CallbackEvent::from_xml(xml).unwrap()).unwrap();
    assert_eq!(json["type"], "kf_account_auth_change");
    assert_eq!(json["auth_del_open_kfid"], serde_json::json!(["wk9"]));
    let json =
        serde_json::to_value(CallbackEvent::from_xml("<xml><Event>e</Event></xml>").unwrap())
            .unwrap();
    assert_eq!(json["type"], "unknown");
    assert_eq!(json["raw"], "<xml><Event>e</Event></xml>");
}

#[test]
fn rejects_a_kf_event_without_a_token() {
    let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime><Event>kf_msg_or_event</Event></xml>";
    let err = CallbackEvent::from_xml(xml).unwrap_err();
    assert_eq!(err, CryptoError::MalformedXml("missing <Token> element"));
    assert_eq!(err.code(), -40002);
}

#[test]
fn rejects_a_non_numeric_create_time() {
    let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>soon</CreateTime><Event>kf_msg_or_event</Event><Token>t</Token></xml>";
    let err = CallbackEvent::from_xml(xml).unwrap_err();
    assert_eq!(
        err,
        CryptoError::MalformedXml("<CreateTime> is not an integer")
    );
}

#[test]
fn rejects_malformed_xml() {
    for bad in [
        "",
        "hello",
        "<xml><Token>t</xml>",
        "<xml><Token><![CDATA[t</Token></xml>",
        "<xml>",
    ] {
        let err = CallbackEvent::from_xml(bad).unwrap_err();
        assert!(
            matches!(err, CryptoError::MalformedXml(_)),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn reads_the_encrypt_element_in_any_envelope_shape() {
    let shapes = [
        "<xml><ToUserName><![CDATA[ww1]]></ToUserName><Encrypt><![CDATA[QUJD]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>",
        "<xml><Encrypt>QUJD</Encrypt><ToUserName>ww1</ToUserName></xml>",
        "<xml>\n   <ToUserName><![CDATA[ww1]]></ToUserName>\n   <Encrypt>\n     <![CDATA[QUJD]]>\n   </Encrypt>\n</xml>",
        "<?xml version=\"1.0\"?><xml><AgentID/><Encrypt>QUJD</Encrypt></xml>",
        "<xml><ToUserName><![CDATA[<Encrypt>fake</Encrypt>]]></ToUserName><Encrypt>QUJD</Encrypt></xml>",
    ];
    for body in shapes {
        assert_eq!(extract_encrypt(body).unwrap(), "QUJD", "{body}");
    }
}

#[test]
fn decrypts_a_post_without_agent_id_and_with_plain_text_encrypt() {
    let crypto =
        CallbackCrypto::new("tok", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "ww1").unwrap();
    let inner = "<xml><ToUserName>ww1</ToUserName><CreateTime>9</CreateTime><Event>kf_msg_or_event</Event><Token>t</Token></xml>";
    let encrypt = crypto.encrypt_field(inner, &[b'z'; 16]).unwrap();
    let sig = crypto.sign("9", "n", &encrypt);
    let body = format!("<xml>\n<Encrypt>{encrypt}</Encrypt>\n</xml>");
    assert_eq!(
        crypto.decrypt_message(&sig, "9", "n", &body).unwrap(),
        inner
    );
    let event = crypto.decrypt_event(&sig, "9", "n", &body).unwrap();
    assert_eq!(event.create_time(), Some(9));
}
