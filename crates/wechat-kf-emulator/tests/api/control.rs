//! The control API: customers, servicers, events, faults, clock, state.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{App, code};

async fn with_servicer() -> (App, String) {
    let app = App::new().await;
    let kf = app.account().await;
    app.servicer(&kf, "zhangsan").await;
    app.servicer(&kf, "lisi").await;
    (app, kf)
}

fn events(items: &[Value]) -> Vec<&Value> {
    items
        .iter()
        .filter(|i| i["msgtype"] == "event")
        .map(|i| &i["event"])
        .collect()
}

#[tokio::test]
async fn the_client_hooks_produce_session_status_changes_1_to_4() {
    let (app, kf) = with_servicer().await;
    app.say(&kf, "wmC", "hi");
    app.api(
        "kf/service_state/trans",
        json!({"open_kfid": kf, "external_userid": "wmC", "service_state": 2}),
    )
    .await;
    let base = json!({"open_kfid": kf, "external_userid": "wmC"});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let (s, pick) = app
        .control(
            "POST",
            "/emulator/servicer/pick",
            with(json!({"servicer_userid": "zhangsan"})),
        )
        .await;
    assert_eq!(s, 200, "{pick}");
    let (s, _) = app
        .control(
            "POST",
            "/emulator/servicer/pick",
            with(json!({"servicer_userid": "zhangsan"})),
        )
        .await;
    assert_eq!(s, 409);
    app.control(
        "POST",
        "/emulator/servicer/transfer",
        with(json!({"new_servicer_userid": "lisi"})),
    )
    .await;
    let (_, end) = app
        .control("POST", "/emulator/servicer/end", base.clone())
        .await;
    let (s, sent) = app
        .control("POST", "/emulator/servicer/send", with(json!({"servicer_userid": "zhangsan", "msgtype": "text", "text": {"content": "我回来了"}})))
        .await;
    assert_eq!(
        (s.as_u16(), sent["msgids"].as_array().unwrap().len()),
        (200, 2)
    );
    let items = app.pull_all(&kf).await;
    let ev = events(&items);
    assert_eq!(ev[0]["change_type"], 1);
    assert_eq!(ev[0]["new_servicer_userid"], "zhangsan");
    assert_eq!(ev[0]["msg_code"], pick["msg_code"]);
    assert_eq!(
        (
            ev[1]["change_type"].as_i64(),
            ev[1]["old_servicer_userid"].as_str(),
            ev[1]["new_servicer_userid"].as_str()
        ),
        (Some(2), Some("zhangsan"), Some("lisi"))
    );
    assert_eq!(
        (ev[2]["change_type"].as_i64(), ev[2]["msg_code"].as_str()),
        (Some(3), end["msg_code"].as_str())
    );
    assert!(ev[2].get("new_servicer_userid").is_none());
    assert_eq!(ev[3]["change_type"], 4);
    assert!(ev.iter().all(|e| e["open_kfid"] == kf.as_str()));
    let last = items.last().unwrap();
    assert_eq!(
        (last["origin"].as_i64(), last["servicer_userid"].as_str()),
        (Some(5), Some("zhangsan"))
    );
    let state = app.api("kf/service_state/get", base.clone()).await;
    assert_eq!(state["service_state"], 3);
    // The connect code from the pick is used up by the time of the end? No: it is a separate code.
    let v = app
        .api(
            "kf/send_msg_on_event",
            json!({"code": end["msg_code"], "msgtype": "text", "text": {"content": "再见"}}),
        )
        .await;
    assert_eq!(code(&v), 95018, "the session is no longer ended");
}

#[tokio::test]
async fn every_other_event_of_the_spec_can_be_produced() {
    let (app, kf) = with_servicer().await;
    let b = json!({"open_kfid": kf, "external_userid": "wmC", "servicer_userid": "zhangsan"});
    let mut recall = b.clone();
    recall["recall_msgid"] = json!("m1");
    app.control("POST", "/emulator/customer/recall", recall.clone())
        .await;
    app.control("POST", "/emulator/servicer/recall", recall)
        .await;
    let mut reject = b.clone();
    reject["reject_switch"] = json!(1);
    app.control("POST", "/emulator/servicer/reject", reject)
        .await;
    app.control(
        "POST",
        "/emulator/servicer/status",
        json!({"open_kfid": kf, "servicer_userid": "lisi", "status": 1}),
    )
    .await;
    let (s, v) = app
        .control("POST", "/emulator/events", json!([{"event_type": "msg_send_fail", "open_kfid": kf, "external_userid": "wmC", "fail_msgid": "x", "fail_type": 13},
                                                     {"msgid": "fixed-id", "event": {"event_type": "future_event", "open_kfid": kf, "whatever": [1]}}]))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["msgids"][1], "fixed-id");
    let items = app.pull_all(&kf).await;
    let types: Vec<&str> = items
        .iter()
        .map(|i| i["event"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "user_recall_msg",
            "servicer_recall_msg",
            "reject_customer_msg_switch_change",
            "servicer_status_change",
            "msg_send_fail",
            "future_event"
        ]
    );
    assert_eq!(items[1]["event"]["servicer_userid"], "zhangsan");
    assert!(items[3]["event"].get("stop_type").is_none());
    assert!(
        items
            .iter()
            .all(|i| i["origin"] == 4 && i.get("open_kfid").is_none())
    );
    assert_eq!(items[5]["event"]["whatever"], json!([1]));
}

#[tokio::test]
async fn hooks_reject_unknown_accounts_and_bad_input() {
    let app = App::new().await;
    let (s, _) = app.control("POST", "/emulator/customer/send", json!({"open_kfid": "wkNope", "external_userid": "a", "msgtype": "text", "text": {"content": "x"}})).await;
    assert_eq!(s, 404);
    let kf = app.account().await;
    let (s, _) = app
        .control(
            "POST",
            "/emulator/customer/send",
            json!({"open_kfid": kf, "external_userid": "a", "msgtype": "text"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .control("POST", "/emulator/events", json!({"event_type": "x"}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn ten_thousand_messages_go_in_with_one_call() {
    let app = App::new().await;
    let kf = app.account().await;
    let batch: Vec<Value> = (0..10_000)
        .map(|i| json!({"open_kfid": kf, "external_userid": format!("wm{}", i % 100), "msgtype": "text", "text": {"content": format!("m{i}")}, "send_time": 1_700_000_000 + i}))
        .collect();
    let started = Instant::now();
    let (s, v) = app
        .control("POST", "/emulator/customer/send", Value::from(batch))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["msgids"].as_array().unwrap().len(), 10_000);
    assert!(started.elapsed() < Duration::from_secs(20));
    let state = app.emu.state_snapshot();
    assert_eq!(
        state["counters"]["messages_in_logs"], 0,
        "send_time in 2023 is beyond the retention"
    );
}

#[tokio::test]
async fn faults_hit_the_chosen_path_for_the_chosen_number_of_calls() {
    let app = App::new().await;
    let (s, v) = app
        .control(
            "POST",
            "/emulator/faults",
            json!({"path": "kf/account/list", "kind": "errcode", "errcode": -1, "count": 2}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), -1);
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), -1);
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 0);
    app.control(
        "POST",
        "/emulator/faults",
        json!({"kind": "http_status", "status": 503}),
    )
    .await;
    let raw = app.send("GET", "/cgi-bin/gettoken", None, &[]).await;
    assert_eq!(raw.status, 503);
    app.control(
        "POST",
        "/emulator/faults",
        json!({"path": "/cgi-bin/kf/account/list", "kind": "invalidate_tokens"}),
    )
    .await;
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 40014);
    app.control(
        "POST",
        "/emulator/faults",
        json!([{"kind": "errcode", "errcode": 45009, "seconds": 60}]),
    )
    .await;
    assert_eq!(
        app.control("GET", "/emulator/faults", json!({})).await.1["faults"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, cleared) = app.control("DELETE", "/emulator/faults", json!({})).await;
    assert_eq!(cleared["cleared"], 1);
    let (s, _) = app
        .control("POST", "/emulator/faults", json!({"kind": "meteor"}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn a_slow_fault_delays_the_answer() {
    let app = App::new().await;
    app.emu
        .inject_fault(json!({"path": "kf/account/list", "kind": "delay", "delay_ms": 300}))
        .unwrap();
    let started = Instant::now();
    assert_eq!(code(&app.api("kf/account/list", json!({})).await), 0);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_clock_moves_on_request() {
    let app = App::new().await;
    let (_, before) = app.control("GET", "/emulator/clock", json!({})).await;
    let (_, after) = app
        .control("POST", "/emulator/clock/advance", json!({"seconds": 3600}))
        .await;
    let moved = after["now"].as_i64().unwrap() - before["now"].as_i64().unwrap();
    assert!((3600..3602).contains(&moved));
    assert_eq!(after["offset_seconds"], 3600);
}

#[tokio::test]
async fn the_state_shows_sessions_and_counters() {
    let app = App::new().await;
    let kf = app.account().await;
    app.say(&kf, "wmC", "hi");
    app.api(
        "kf/send_msg",
        json!({"touser": "wmC", "open_kfid": kf, "msgtype": "text", "text": {"content": "x"}}),
    )
    .await;
    let (_, state) = app.control("GET", "/emulator/state", json!({})).await;
    let session = &state["sessions"][0];
    assert_eq!(
        (
            session["state"].as_i64(),
            session["sends_since_last_customer_msg"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert!(session["last_customer_msg_time"].is_i64());
    assert_eq!(state["counters"]["calls"]["kf/send_msg"], 1);
    assert_eq!(state["counters"]["gettoken"], 1);
    assert_eq!(state["counters"]["messages_in_logs"], 1);
    let (_, outbox) = app
        .control(
            "GET",
            &format!("/emulator/outbox?open_kfid={kf}&external_userid=wmC"),
            json!({}),
        )
        .await;
    assert_eq!(outbox["messages"][0]["endpoint"], "send_msg");
    let (_, empty) = app
        .control("GET", "/emulator/outbox?external_userid=someone", json!({}))
        .await;
    assert_eq!(empty["messages"], json!([]));
}

#[tokio::test]
async fn a_sync_token_can_be_issued_through_the_control_api() {
    let app = App::new().await;
    let kf = app.account().await;
    let (_, v) = app
        .control("POST", "/emulator/callback/token", json!({"open_kfid": kf}))
        .await;
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("ENC"));
    assert_eq!(
        code(
            &app.api("kf/sync_msg", json!({"open_kfid": kf, "token": token}))
                .await
        ),
        0
    );
}

#[tokio::test]
async fn a_group_robot_takes_messages_by_its_key_alone_and_the_control_api_shows_them() {
    let app = App::new().await;
    let (status, created) = app
        .control("POST", "/emulator/robots", json!({"name": "staff"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let path = created["path"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    // No access_token: the key is the robot's credential.
    let body = json!({"msgtype": "markdown", "markdown": {"content": "**转人工** wmC"}});
    let raw = app
        .send("POST", &path, Some(body.to_string().into_bytes()), &[])
        .await;
    assert_eq!(code(&raw.json()), 0, "{}", raw.json());
    let unknown = app
        .send(
            "POST",
            "/cgi-bin/webhook/send?key=not-a-robot",
            Some(body.to_string().into_bytes()),
            &[],
        )
        .await;
    assert_eq!(code(&unknown.json()), 93000);
    let (_, seen) = app
        .control("GET", &format!("/emulator/robots?key={key}"), json!({}))
        .await;
    let robot = &seen["robots"][0];
    assert_eq!(robot["name"], "staff");
    assert_eq!(robot["messages"].as_array().unwrap().len(), 1);
    assert_eq!(robot["messages"][0]["body"], body);
}
