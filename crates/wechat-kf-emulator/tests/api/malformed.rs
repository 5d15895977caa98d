//! Malformed requests get the real errcodes, never a panic or a 500.

use serde_json::json;

use super::{App, code};

const POST_ENDPOINTS: &[&str] = &[
    "kf/account/add",
    "kf/account/del",
    "kf/account/update",
    "kf/add_contact_way",
    "kf/servicer/add",
    "kf/servicer/del",
    "kf/service_state/get",
    "kf/service_state/trans",
    "kf/sync_msg",
    "kf/send_msg",
    "kf/send_msg_on_event",
    "kf/recall_msg",
    "kf/customer/batchget",
    "kf/customer/upgrade_service",
    "kf/customer/cancel_upgrade_service",
    "kf/get_corp_statistic",
    "kf/get_servicer_statistic",
    "kf/knowledge/add_group",
    "kf/knowledge/del_group",
    "kf/knowledge/mod_group",
    "kf/knowledge/add_intent",
    "kf/knowledge/del_intent",
    "kf/knowledge/mod_intent",
];

#[tokio::test]
async fn malformed_json_is_40058_with_the_wrong_json_warning_everywhere() {
    let app = App::new().await;
    for path in POST_ENDPOINTS
        .iter()
        .chain(["kf/account/list", "kf/knowledge/list_group"].iter())
    {
        for body in [&b"{\"open_kfid\":"[..], b"not json", b"[1,2]", b"\"str\""] {
            let v = app.api_raw(path, body).await;
            assert_eq!(code(&v), 40058, "{path} {v}");
            assert!(
                v["errmsg"]
                    .as_str()
                    .unwrap()
                    .contains("Warning: wrong json format."),
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn empty_bodies_and_missing_fields_are_rejected_without_a_500() {
    let app = App::new().await;
    for path in POST_ENDPOINTS {
        let empty = app.api_raw(path, b"").await;
        assert_eq!(code(&empty), 40058, "{path}");
        let v = app.api(path, json!({})).await;
        assert!([40063, 40058, 40035].contains(&code(&v)), "{path} {v}");
    }
}

#[tokio::test]
async fn fields_of_the_wrong_type_are_40058() {
    let app = App::new().await;
    let kf = app.account().await;
    let cases = [
        ("kf/sync_msg", json!({"open_kfid": 5})),
        ("kf/sync_msg", json!({"open_kfid": kf, "limit": "10"})),
        ("kf/sync_msg", json!({"open_kfid": kf, "limit": -1})),
        (
            "kf/send_msg",
            json!({"touser": ["a"], "open_kfid": kf, "msgtype": "text", "text": {"content": "x"}}),
        ),
        (
            "kf/send_msg",
            json!({"touser": "wmA", "open_kfid": kf, "msgtype": "text", "text": {"content": 1}}),
        ),
        (
            "kf/service_state/trans",
            json!({"open_kfid": kf, "external_userid": "wmA", "service_state": "3"}),
        ),
        (
            "kf/servicer/add",
            json!({"open_kfid": kf, "userid_list": "zhangsan"}),
        ),
        (
            "kf/servicer/add",
            json!({"open_kfid": kf, "department_id_list": ["2"]}),
        ),
        ("kf/customer/batchget", json!({"external_userid_list": [1]})),
        ("kf/account/list", json!({"offset": "0"})),
    ];
    for (path, body) in cases {
        assert_eq!(
            code(&app.api(path, body.clone()).await),
            40058,
            "{path} {body}"
        );
    }
}

#[tokio::test]
async fn unicode_escapes_are_40033() {
    let app = App::new().await;
    let v = app
        .api_raw("kf/knowledge/add_group", br#"{"name":"\u552e\u540e"}"#)
        .await;
    assert_eq!(code(&v), 40033);
}

#[tokio::test]
async fn a_wrong_http_method_is_40035() {
    let app = App::new().await;
    let v = app.api_get("kf/send_msg").await;
    assert_eq!(code(&v), 40035);
    let raw = app
        .send(
            "POST",
            &format!(
                "/cgi-bin/kf/servicer/list?access_token={}&open_kfid=wkA",
                app.token
            ),
            Some(b"{}".to_vec()),
            &[],
        )
        .await;
    assert_eq!(code(&raw.json()), 40035);
}

#[tokio::test]
async fn unknown_api_paths_are_404_with_a_json_body() {
    let app = App::new().await;
    let raw = app
        .send(
            "POST",
            &format!("/cgi-bin/kf/nope?access_token={}", app.token),
            Some(b"{}".to_vec()),
            &[],
        )
        .await;
    assert_eq!(raw.status, 404);
    assert!(code(&raw.json()) != 0);
}

#[tokio::test]
async fn garbage_multipart_and_garbage_control_bodies_do_not_panic() {
    let app = App::new().await;
    let uri = format!(
        "/cgi-bin/media/upload?type=image&access_token={}",
        app.token
    );
    let raw = app
        .send(
            "POST",
            &uri,
            Some(b"--x\r\ngarbage".to_vec()),
            &[("content-type", "multipart/form-data; boundary=x")],
        )
        .await;
    assert_eq!(code(&raw.json()), 44001);
    for path in [
        "/emulator/customer/send",
        "/emulator/events",
        "/emulator/faults",
        "/emulator/servicer/pick",
        "/emulator/clock/advance",
    ] {
        let raw = app.send("POST", path, Some(b"{broken".to_vec()), &[]).await;
        assert_eq!(raw.status, 400, "{path}");
    }
}
