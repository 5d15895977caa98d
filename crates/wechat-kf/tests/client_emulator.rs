//! Every endpoint's success path and its documented errors, token expiry and invalidation, and
//! fault bursts, against the in-process emulator.
#![cfg(feature = "client")]

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf::client::accounts::{AddAccountRequest, AddContactWayRequest, UpdateAccountRequest};
use wechat_kf::client::customers::BatchGetCustomersRequest;
use wechat_kf::client::knowledge::{
    AddIntentRequest, Answer, Attachment, ListGroupsRequest, ListIntentsRequest, ModIntentRequest,
};
use wechat_kf::client::media::{MediaKind, MediaUpload};
use wechat_kf::client::messages::{
    RecallMsgRequest, SendMsgOnEventRequest, SendMsgRequest, SyncMsgRequest,
};
use wechat_kf::client::outbound::{Link, MiniProgram, OutboundMessage};
use wechat_kf::client::service_state::TransServiceStateRequest;
use wechat_kf::client::servicers::ServicerRequest;
use wechat_kf::client::statistics::StatisticsRequest;
use wechat_kf::client::upgrade_service::UpgradeServiceRequest;
use wechat_kf::client::{Client, ErrCode, Error, RetryPolicy};
use wechat_kf::message::{Location, MenuItem, MsgMenu};
use wechat_kf::session::ServiceState;
use wechat_kf_emulator::{Config, RunningEmulator, Seed, SeedAccount, SeedServicer};

const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

fn config() -> Config {
    let mut config = Config::generated();
    config.sync_without_token_per_minute = 0;
    config.seed = Some(Seed {
        accounts: vec![SeedAccount {
            open_kfid: Some("wkSeeded".into()),
            name: "售后".into(),
            managed_by_api: true,
            servicers: vec![
                SeedServicer {
                    userid: "zhangsan".into(),
                    status: 0,
                    stop_type: 0,
                    activated: true,
                },
                SeedServicer {
                    userid: "lisi".into(),
                    status: 1,
                    stop_type: 1,
                    activated: true,
                },
            ],
            department_ids: vec![2],
        }],
        upgrade_service: wechat_kf_emulator::SeedUpgradeService {
            userid_list: vec!["zhangsan".into()],
            department_id_list: vec![7],
            chat_id_list: vec!["wrGroup1".into()],
        },
        ..Seed::default()
    });
    config
}

async fn start_with(config: Config) -> (RunningEmulator, Client) {
    let corp_id = config.corp_id.clone();
    let secret = config.secret.clone();
    let running = wechat_kf_test_support::TestEmulator::with_config(config)
        .start()
        .await;
    let client = Client::builder(corp_id, secret)
        .base_url(running.base_url())
        .retry_policy(RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            multiplier: 2.0,
        })
        .build()
        .unwrap();
    (running, client)
}

async fn start() -> (RunningEmulator, Client) {
    start_with(config()).await
}

fn gettoken_count(running: &RunningEmulator) -> u64 {
    running.emulator().state_snapshot()["counters"]["gettoken"]
        .as_u64()
        .unwrap()
}

fn customer_says(running: &RunningEmulator, open_kfid: &str, user: &str, text: &str) -> String {
    running
        .emulator()
        .customer_send(json!({"open_kfid":open_kfid,"external_userid":user,"msgtype":"text","text":{"content":text}}))
        .unwrap()
        .remove(0)
}

fn code(result: Result<impl std::fmt::Debug, Error>) -> ErrCode {
    match result {
        Err(Error::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn fault(running: &RunningEmulator, fault: Value) {
    running.emulator().inject_fault(fault).unwrap();
}

#[tokio::test]
async fn accounts_can_be_created_listed_renamed_linked_and_deleted() {
    let (_running, client) = start().await;
    let avatar = client
        .media()
        .upload(MediaKind::Image, MediaUpload::bytes("a.png", PNG))
        .await
        .unwrap();
    let created = client
        .accounts()
        .add(AddAccountRequest::new("新客服", avatar.media_id.clone()))
        .await
        .unwrap();
    let all = client.accounts().list_all().await.unwrap();
    assert!(
        all.iter()
            .any(|a| a.open_kfid == created.open_kfid && a.name == "新客服")
    );
    client
        .accounts()
        .update(UpdateAccountRequest::new(created.open_kfid.clone()).name("改名"))
        .await
        .unwrap();
    let all = client.accounts().list_all().await.unwrap();
    assert!(
        all.iter()
            .any(|a| a.open_kfid == created.open_kfid && a.name == "改名")
    );
    let link = client
        .accounts()
        .add_contact_way(AddContactWayRequest::new(created.open_kfid.clone()).scene("order_1"))
        .await
        .unwrap();
    assert!(link.url.starts_with("http"));
    client
        .accounts()
        .del(created.open_kfid.clone())
        .await
        .unwrap();
    let again = client.accounts().del(created.open_kfid.clone()).await;
    assert!(
        matches!(
            code(again),
            ErrCode::OpenKfIdNotFound | ErrCode::InvalidOpenKfId
        ),
        "a deleted account is unknown"
    );
}

#[tokio::test]
async fn account_list_pages_through_more_than_one_hundred_accounts() {
    let (running, client) = start().await;
    for i in 0..230 {
        running.emulator().create_account(&format!("客服{i}"));
    }
    let all = client.accounts().list_all().await.unwrap();
    assert_eq!(all.len(), 231);
    let mut ids: Vec<_> = all.iter().map(|a| a.open_kfid.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 231, "no account repeated across pages");
}

#[tokio::test]
async fn account_errors_come_back_as_typed_codes() {
    let (running, client) = start().await;
    let avatar = client
        .media()
        .upload(MediaKind::Image, MediaUpload::bytes("a.png", PNG))
        .await
        .unwrap();
    // Locally rejected: 17 characters.
    let long = "名".repeat(17);
    assert!(matches!(
        client
            .accounts()
            .add(AddAccountRequest::new(long, avatar.media_id.clone()))
            .await,
        Err(Error::Validation(_))
    ));
    assert!(matches!(
        client
            .accounts()
            .add_contact_way(AddContactWayRequest::new("wkSeeded").scene("bad scene"))
            .await,
        Err(Error::Validation(_))
    ));
    // Only one account left: deleting it is refused.
    let only = running.emulator().state_snapshot()["accounts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(only, 1);
    assert_eq!(
        code(client.accounts().del("wkSeeded").await),
        ErrCode::AccountCountLimit
    );
}

#[tokio::test]
async fn servicers_can_be_added_listed_and_removed_with_per_item_results() {
    let (_running, client) = start().await;
    let added = client
        .servicers()
        .add(
            ServicerRequest::new("wkSeeded")
                .userids(["wangwu", "zhangsan"])
                .department_ids([3]),
        )
        .await
        .unwrap();
    assert_eq!(added.result_list.len(), 3);
    let list = client.servicers().list("wkSeeded").await.unwrap();
    let lisi = list
        .servicer_list
        .iter()
        .find(|s| s.userid.as_ref().is_some_and(|u| u == "lisi"))
        .unwrap();
    assert_eq!((lisi.status, lisi.stop_type), (Some(1), Some(1)));
    assert!(
        list.servicer_list
            .iter()
            .any(|s| s.department_id == Some(3))
    );
    let removed = client
        .servicers()
        .del(ServicerRequest::new("wkSeeded").userids(["wangwu"]))
        .await
        .unwrap();
    assert!(removed.result_list[0].is_ok());
    assert!(matches!(
        client
            .servicers()
            .add(ServicerRequest::new("wkSeeded"))
            .await,
        Err(Error::Validation(_))
    ));
    assert!(matches!(
        code(client.servicers().list("wkNoSuchAccount").await),
        ErrCode::InvalidOpenKfId | ErrCode::OpenKfIdNotFound
    ));
}

#[tokio::test]
async fn session_state_follows_the_documented_transitions() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmAlice", "你好");
    let state = client
        .service_state()
        .get("wkSeeded", "wmAlice")
        .await
        .unwrap();
    assert_eq!(state.service_state, ServiceState::New);
    let queue_code = client
        .service_state()
        .trans(TransServiceStateRequest::new(
            "wkSeeded",
            "wmAlice",
            ServiceState::Queued,
        ))
        .await
        .unwrap();
    assert!(
        queue_code.is_some(),
        "first entry into the queue issues a msg_code"
    );
    let connect = client
        .service_state()
        .trans(
            TransServiceStateRequest::new("wkSeeded", "wmAlice", ServiceState::Human)
                .servicer_userid("zhangsan"),
        )
        .await
        .unwrap();
    assert!(connect.is_some());
    let state = client
        .service_state()
        .get("wkSeeded", "wmAlice")
        .await
        .unwrap();
    assert_eq!(state.service_state, ServiceState::Human);
    assert_eq!(state.servicer_userid.unwrap(), "zhangsan");
    // 3 → 2 is not allowed; an unknown servicer is refused; a stopped one too.
    assert_eq!(
        code(
            client
                .service_state()
                .trans(TransServiceStateRequest::new(
                    "wkSeeded",
                    "wmAlice",
                    ServiceState::Queued
                ))
                .await
        ),
        ErrCode::TransitionNotAllowed
    );
    assert_eq!(
        code(
            client
                .service_state()
                .trans(
                    TransServiceStateRequest::new("wkSeeded", "wmAlice", ServiceState::Human)
                        .servicer_userid("nobody")
                )
                .await
        ),
        ErrCode::NotAServicer
    );
    assert_eq!(
        code(
            client
                .service_state()
                .trans(
                    TransServiceStateRequest::new("wkSeeded", "wmAlice", ServiceState::Human)
                        .servicer_userid("lisi")
                )
                .await
        ),
        ErrCode::ServicerStopped
    );
    let end = client
        .service_state()
        .trans(TransServiceStateRequest::new(
            "wkSeeded",
            "wmAlice",
            ServiceState::Ended,
        ))
        .await
        .unwrap();
    assert!(end.is_some());
    assert_eq!(
        code(
            client
                .service_state()
                .trans(TransServiceStateRequest::new(
                    "wkSeeded",
                    "wmAlice",
                    ServiceState::Bot
                ))
                .await
        ),
        ErrCode::SessionEnded
    );
    // Target 3 without a servicer is rejected locally.
    assert!(matches!(
        client
            .service_state()
            .trans(TransServiceStateRequest::new(
                "wkSeeded",
                "wmAlice",
                ServiceState::Human
            ))
            .await,
        Err(Error::Validation(_))
    ));
}

#[tokio::test]
async fn every_outbound_message_type_is_accepted_and_lands_in_the_outbox() {
    let (running, client) = start().await;
    let media = client.media();
    let image = media
        .upload(MediaKind::Image, MediaUpload::bytes("a.png", PNG))
        .await
        .unwrap()
        .media_id;
    let mut amr = b"#!AMR\n".to_vec();
    amr.extend_from_slice(&[0u8; 64]);
    let voice = media
        .upload(MediaKind::Voice, MediaUpload::bytes("v.amr", amr))
        .await
        .unwrap()
        .media_id;
    let mut mp4 = b"\0\0\0\x18ftypmp42".to_vec();
    mp4.extend_from_slice(&[0u8; 64]);
    let video = media
        .upload(MediaKind::Video, MediaUpload::bytes("v.mp4", mp4))
        .await
        .unwrap()
        .media_id;
    let file = media
        .upload(
            MediaKind::File,
            MediaUpload::bytes("报告.txt", &b"hello world"[..]),
        )
        .await
        .unwrap()
        .media_id;
    let messages = vec![
        OutboundMessage::text("你好"),
        OutboundMessage::image(image.clone()),
        OutboundMessage::voice(voice),
        OutboundMessage::video(video),
        OutboundMessage::file(file),
        OutboundMessage::link(
            Link::new("退货说明", "https://example.com/r", image.clone()).desc("七天"),
        ),
        OutboundMessage::miniprogram(
            MiniProgram::new("wx0123456789abcdef", image.clone(), "pages/index.html").title("报名"),
        ),
        OutboundMessage::msgmenu(
            MsgMenu::new()
                .head("请选择：")
                .item(MenuItem::click("101", "转人工"))
                .item(MenuItem::view("https://example.com/faq", "常见问题"))
                .item(MenuItem::miniprogram(
                    "wx0123456789abcdef",
                    "pages/order.html",
                    "查订单",
                ))
                .item(MenuItem::text("工作时间 9:00-18:00"))
                .tail("感谢咨询"),
        ),
        OutboundMessage::location(
            Location::new(23.1291, 113.2644)
                .name("门店")
                .address("示例路1号"),
        ),
        OutboundMessage::ca_link("https://work.weixin.qq.com/ca/cawcde0123"),
    ];
    let mut sent = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        // Five messages per customer message: let the customer speak before every batch of 5.
        if i % 5 == 0 {
            customer_says(&running, "wkSeeded", "wmBob", "在吗");
        }
        let msgtype = message.msgtype();
        let response = client
            .messages()
            .send(SendMsgRequest::new("wmBob", "wkSeeded", message).msgid(format!("out-{i}")))
            .await
            .unwrap_or_else(|e| panic!("{msgtype}: {e}"));
        assert_eq!(response.msgid, format!("out-{i}").as_str());
        sent.push(msgtype);
    }
    let outbox = running.emulator().outbox(Some("wkSeeded"), Some("wmBob"));
    let types: Vec<&str> = outbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["request"]["msgtype"].as_str().unwrap())
        .collect();
    assert_eq!(types, sent);
    let location = &outbox["messages"][8]["request"];
    assert_eq!(location["location"]["latitude"], 23.1291);
    assert!(location.get("msgmenu").is_none());
}

#[tokio::test]
async fn sending_enforces_the_quota_the_window_and_the_session_state() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmCarol", "hi");
    let send = |i: usize| {
        client.messages().send(SendMsgRequest::new(
            "wmCarol",
            "wkSeeded",
            OutboundMessage::text(format!("reply {i}")),
        ))
    };
    for i in 0..5 {
        send(i).await.unwrap();
    }
    assert_eq!(code(send(5).await), ErrCode::SendQuotaExhausted);
    customer_says(&running, "wkSeeded", "wmCarol", "again");
    send(6).await.unwrap();
    // A customer the account has never seen.
    let unknown = code(
        client
            .messages()
            .send(SendMsgRequest::new(
                "wmNobody",
                "wkSeeded",
                OutboundMessage::text("x"),
            ))
            .await,
    );
    assert!(
        matches!(
            unknown,
            ErrCode::InvalidExternalUserId
                | ErrCode::SendWindowExpired
                | ErrCode::StateForbidsSending
                | ErrCode::NoConsultationWithin48h
        ),
        "{unknown}"
    );
    // A human servicer owns the session: the API may not send.
    client
        .service_state()
        .trans(
            TransServiceStateRequest::new("wkSeeded", "wmCarol", ServiceState::Human)
                .servicer_userid("zhangsan"),
        )
        .await
        .unwrap();
    assert_eq!(code(send(7).await), ErrCode::StateForbidsSending);
    // 48 hours later the window is closed.
    customer_says(&running, "wkSeeded", "wmDave", "hi");
    running
        .emulator()
        .advance_clock(Duration::from_secs(48 * 3600 + 60));
    assert_eq!(
        code(
            client
                .messages()
                .send(SendMsgRequest::new(
                    "wmDave",
                    "wkSeeded",
                    OutboundMessage::text("late")
                ))
                .await
        ),
        ErrCode::SendWindowExpired
    );
}

#[tokio::test]
async fn a_caller_msgid_is_unique_and_an_empty_one_is_never_sent() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmErin", "hi");
    let request = || SendMsgRequest::new("wmErin", "wkSeeded", OutboundMessage::text("once"));
    client
        .messages()
        .send(request().msgid("dup-1"))
        .await
        .unwrap();
    assert_eq!(
        code(client.messages().send(request().msgid("dup-1")).await),
        ErrCode::InvalidParameter
    );
    let generated = client.messages().send(request()).await.unwrap();
    assert!(!generated.msgid.as_str().is_empty());
    let outbox = running.emulator().outbox(Some("wkSeeded"), Some("wmErin"));
    assert!(outbox["messages"][1]["request"].get("msgid").is_none());
}

#[tokio::test]
async fn a_send_with_msgid_survives_a_dropped_connection_exactly_once() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmFrank", "hi");
    fault(
        &running,
        json!({"path":"kf/send_msg","kind":"drop","count":1}),
    );
    let sent = client
        .messages()
        .send(
            SendMsgRequest::new("wmFrank", "wkSeeded", OutboundMessage::text("important"))
                .msgid("once-only"),
        )
        .await
        .unwrap();
    assert_eq!(sent.msgid, "once-only");
    let outbox = running.emulator().outbox(Some("wkSeeded"), Some("wmFrank"));
    assert_eq!(
        outbox["messages"].as_array().unwrap().len(),
        1,
        "delivered once"
    );
}

#[tokio::test]
async fn a_send_without_msgid_is_not_repeated_after_a_5xx() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmGina", "hi");
    fault(
        &running,
        json!({"path":"kf/send_msg","kind":"http_status","status":502,"count":1}),
    );
    let err = client
        .messages()
        .send(SendMsgRequest::new(
            "wmGina",
            "wkSeeded",
            OutboundMessage::text("maybe"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HttpStatus { status: 502, .. }));
    assert_eq!(
        running.emulator().outbox(Some("wkSeeded"), Some("wmGina"))["messages"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn welcome_codes_work_once_with_send_msg_on_event() {
    let (running, client) = start().await;
    let (_, welcome) = running
        .emulator()
        .enter_session("wkSeeded", "wmHank", Some("order"), None)
        .unwrap();
    let welcome = welcome.expect("a first visit gets a welcome_code");
    let menu = MsgMenu::new()
        .head("欢迎")
        .item(MenuItem::click("1", "查订单"));
    client
        .messages()
        .send_on_event(SendMsgOnEventRequest::new(
            welcome.clone(),
            OutboundMessage::msgmenu(menu),
        ))
        .await
        .unwrap();
    let again = client
        .messages()
        .send_on_event(SendMsgOnEventRequest::new(
            welcome,
            OutboundMessage::text("again"),
        ))
        .await;
    assert!(
        matches!(again, Err(Error::Api { .. })),
        "codes are single use"
    );
    // Images are not allowed with codes: rejected locally.
    assert!(matches!(
        client
            .messages()
            .send_on_event(SendMsgOnEventRequest::new("x", OutboundMessage::image("m")))
            .await,
        Err(Error::Validation(_))
    ));
}

#[tokio::test]
async fn recall_works_within_two_minutes_only() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmIvy", "hi");
    let first = client
        .messages()
        .send(SendMsgRequest::new(
            "wmIvy",
            "wkSeeded",
            OutboundMessage::text("oops"),
        ))
        .await
        .unwrap();
    client
        .messages()
        .recall(RecallMsgRequest::new("wkSeeded", first.msgid.clone()))
        .await
        .unwrap();
    assert_eq!(
        code(
            client
                .messages()
                .recall(RecallMsgRequest::new("wkSeeded", "no-such-msg"))
                .await
        ),
        ErrCode::RecallMsgNotFound
    );
    let second = client
        .messages()
        .send(SendMsgRequest::new(
            "wmIvy",
            "wkSeeded",
            OutboundMessage::text("late"),
        ))
        .await
        .unwrap();
    running.emulator().advance_clock(Duration::from_secs(121));
    assert_eq!(
        code(
            client
                .messages()
                .recall(RecallMsgRequest::new("wkSeeded", second.msgid))
                .await
        ),
        ErrCode::RecallWindowExpired
    );
}

#[tokio::test]
async fn customer_profiles_are_returned_and_unknown_ids_listed() {
    let (running, client) = start().await;
    running
        .emulator()
        .customer_send(json!({"open_kfid":"wkSeeded","external_userid":"wmJack","msgtype":"text","text":{"content":"hi"},"nickname":"杰克","gender":1}))
        .unwrap();
    running
        .emulator()
        .enter_session("wkSeeded", "wmJack", Some("order"), Some("id%3D42"))
        .unwrap();
    let response = client
        .customers()
        .batchget(
            BatchGetCustomersRequest::new(["wmJack", "wmUnknown"]).need_enter_session_context(true),
        )
        .await
        .unwrap();
    assert_eq!(response.customer_list.len(), 1);
    assert_eq!(response.customer_list[0].nickname, "杰克");
    assert_eq!(response.customer_list[0].gender, 1);
    let context = response.customer_list[0]
        .enter_session_context
        .as_ref()
        .unwrap();
    assert_eq!(context.scene, "order");
    assert_eq!(response.invalid_external_userid, ["wmUnknown"]);
    let too_many: Vec<String> = (0..101).map(|i| format!("wm{i}")).collect();
    assert!(matches!(
        client
            .customers()
            .batchget(BatchGetCustomersRequest::new(too_many))
            .await,
        Err(Error::Validation(_))
    ));
}

#[tokio::test]
async fn upgrade_service_reads_config_recommends_and_cancels() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmKate", "hi");
    let config = client.upgrade_service().config().await.unwrap();
    assert_eq!(config.member_range.userid_list, ["zhangsan"]);
    assert_eq!(config.member_range.department_id_list, [7]);
    assert_eq!(config.groupchat_range.chat_id_list, ["wrGroup1"]);
    client
        .upgrade_service()
        .upgrade(UpgradeServiceRequest::member("wkSeeded", "wmKate", "zhangsan").wording("专家"))
        .await
        .unwrap();
    client
        .upgrade_service()
        .upgrade(UpgradeServiceRequest::groupchat(
            "wkSeeded", "wmKate", "wrGroup1",
        ))
        .await
        .unwrap();
    client
        .upgrade_service()
        .cancel("wkSeeded", "wmKate")
        .await
        .unwrap();
    assert_eq!(
        code(
            client
                .upgrade_service()
                .upgrade(UpgradeServiceRequest::member(
                    "wkSeeded", "wmKate", "nobody"
                ))
                .await
        ),
        ErrCode::NotInUpgradeServiceConfig
    );
}

#[tokio::test]
async fn statistics_and_corp_qualification_are_readable() {
    let (running, client) = start().await;
    let now = running.emulator().now() as u32;
    // Yesterday's China-time midnight.
    let day = 86_400;
    let today = (now + 8 * 3600) / day * day - 8 * 3600;
    let yesterday = today - day;
    let corp = client
        .statistics()
        .corp(StatisticsRequest::new(
            "wkSeeded",
            yesterday - day,
            yesterday,
        ))
        .await
        .unwrap();
    assert!(corp.statistic_list.len() <= 2);
    client
        .statistics()
        .servicer(
            StatisticsRequest::new("wkSeeded", yesterday, yesterday).servicer_userid("zhangsan"),
        )
        .await
        .unwrap();
    assert!(matches!(
        client
            .statistics()
            .corp(StatisticsRequest::new(
                "wkSeeded",
                yesterday,
                yesterday - day
            ))
            .await,
        Err(Error::Validation(_))
    ));
    let qualification = client.get_corp_qualification().await.unwrap();
    assert!(!qualification.wechat_channels_binding);
}

#[tokio::test]
async fn the_knowledge_base_supports_groups_and_intents() {
    let (_running, client) = start().await;
    let kb = client.knowledge();
    let group = kb.add_group("退货").await.unwrap();
    kb.mod_group(group.clone(), "退换货").await.unwrap();
    let groups = kb.list_groups(ListGroupsRequest::new()).await.unwrap();
    assert!(
        groups
            .group_list
            .iter()
            .any(|g| g.group_id == group && g.name == "退换货")
    );
    assert!(groups.group_list.iter().any(|g| g.is_default));
    let intent = kb
        .add_intent(
            AddIntentRequest::new(
                group.clone(),
                "怎么退货",
                Answer::new("在订单页点击申请退货").attachment(Attachment::link(
                    wechat_kf::client::knowledge::LinkAttachment {
                        title: "退货说明".into(),
                        desc: Some("七天无理由".into()),
                        url: "https://example.com/return".into(),
                        pic_url: Some("https://example.com/p.png".into()),
                    },
                )),
            )
            .similar_questions(["如何退货"]),
        )
        .await
        .unwrap();
    kb.mod_intent(ModIntentRequest::new(intent.clone()).question("如何退换货"))
        .await
        .unwrap();
    let intents = kb
        .list_intents(ListIntentsRequest::new().group_id(group.clone()))
        .await
        .unwrap();
    let found = intents
        .intent_list
        .iter()
        .find(|i| i.intent_id == intent)
        .unwrap();
    assert_eq!(found.question.text.content, "如何退换货");
    assert_eq!(found.similar_questions.items[0].text.content, "如何退货");
    assert_eq!(found.answers[0].attachments[0].msgtype, "link");
    kb.del_intent(intent).await.unwrap();
    kb.del_group(group).await.unwrap();
    assert!(matches!(
        kb.add_group("一二三四五六七八九十一二三").await,
        Err(Error::Validation(_))
    ));
}

#[tokio::test]
async fn media_round_trips_with_its_file_name_and_unknown_ids_are_errors() {
    let (_running, client) = start().await;
    let content = "第一行\nsecond line\n".repeat(50);
    let uploaded = client
        .media()
        .upload(
            MediaKind::File,
            MediaUpload::bytes("说明 文档.txt", content.clone().into_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(uploaded.kind, "file");
    assert!(uploaded.created_at_secs().is_some());
    let downloaded = client
        .media()
        .download(uploaded.media_id.clone())
        .await
        .unwrap();
    assert_eq!(downloaded.bytes, content.as_bytes());
    assert_eq!(downloaded.info.filename.as_deref(), Some("说明 文档.txt"));
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = client
        .media()
        .download_to_dir(uploaded.media_id.clone(), dir.path())
        .await
        .unwrap();
    assert_eq!(path.file_name().unwrap(), "说明 文档.txt");
    let range = client
        .media()
        .download_range_stream(uploaded.media_id, 0, 9)
        .await
        .unwrap();
    assert!(range.info.content_range.is_some());
    assert_eq!(
        code(client.media().download("no-such-media").await),
        ErrCode::InvalidMediaId
    );
    let wrong_type = client
        .media()
        .upload(
            MediaKind::Image,
            MediaUpload::bytes("fake.png", &b"not an image"[..]),
        )
        .await;
    assert!(matches!(wrong_type, Err(Error::Api { .. })));
}

#[tokio::test]
async fn the_token_is_refreshed_when_the_emulator_clock_passes_its_expiry() {
    let (running, client) = start().await;
    client.servicers().list("wkSeeded").await.unwrap();
    assert_eq!(gettoken_count(&running), 1);
    running.emulator().advance_clock(Duration::from_secs(7201));
    // The client's own clock still thinks the token is fresh; the server says 42001.
    client.servicers().list("wkSeeded").await.unwrap();
    assert_eq!(gettoken_count(&running), 2);
}

/// 100 concurrent `servicer/list` calls on separate tasks, each of which must succeed.
async fn hundred_concurrent_calls(client: &Client) {
    let calls = (0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.servicers().list("wkSeeded").await })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_revoked_token_causes_one_refresh_even_for_a_hundred_concurrent_calls() {
    let (running, client) = start().await;
    client.token().await.unwrap();
    running.emulator().revoke_tokens();
    hundred_concurrent_calls(&client).await;
    assert_eq!(gettoken_count(&running), 2);
}

#[tokio::test]
async fn a_hundred_concurrent_first_calls_cause_exactly_one_gettoken() {
    let (running, client) = start().await;
    fault(
        &running,
        json!({"path":"gettoken","kind":"delay","delay_ms":100}),
    );
    hundred_concurrent_calls(&client).await;
    assert_eq!(gettoken_count(&running), 1);
}

#[tokio::test]
async fn bursts_of_45033_and_5xx_are_absorbed_by_retries() {
    let (running, client) = start().await;
    customer_says(&running, "wkSeeded", "wmLeo", "hi");
    fault(
        &running,
        json!({"path":"kf/sync_msg","kind":"errcode","errcode":45033,"count":2}),
    );
    fault(
        &running,
        json!({"path":"kf/sync_msg","kind":"http_status","status":503,"count":1}),
    );
    let page = client
        .messages()
        .sync(SyncMsgRequest::new("wkSeeded"))
        .await
        .unwrap();
    assert_eq!(page.msg_list.len(), 1);
    fault(
        &running,
        json!({"path":"kf/sync_msg","kind":"errcode","errcode":-1,"count":10}),
    );
    let err = client
        .messages()
        .sync(SyncMsgRequest::new("wkSeeded"))
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::SystemBusy));
    running.emulator().clear_faults();
    fault(
        &running,
        json!({"path":"kf/sync_msg","kind":"drop","count":2}),
    );
    client
        .messages()
        .sync(SyncMsgRequest::new("wkSeeded"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_invalidation_fault_mid_run_is_recovered() {
    let (running, client) = start().await;
    client.servicers().list("wkSeeded").await.unwrap();
    fault(
        &running,
        json!({"path":"kf/servicer/list","kind":"invalidate_tokens","count":1}),
    );
    client.servicers().list("wkSeeded").await.unwrap();
    assert_eq!(gettoken_count(&running), 2);
}

#[tokio::test]
async fn a_wrong_secret_fails_with_40001() {
    let config = config();
    let (running, _) = start_with(config.clone()).await;
    let client = Client::builder(config.corp_id.clone(), "wrong-secret")
        .base_url(running.base_url())
        .build()
        .unwrap();
    let err = client.servicers().list("wkSeeded").await.unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::InvalidCredential));
    assert!(!err.to_string().contains("wrong-secret"));
}

#[tokio::test]
async fn upload_image_returns_a_permanent_url_and_idconvert_is_for_third_parties_only() {
    let (_running, client) = start().await;
    let url = client
        .media()
        .upload_image(MediaUpload::bytes("logo.png", PNG))
        .await
        .unwrap();
    assert!(url.starts_with("http"), "{url}");
    let err = client.convert_open_kfids(["wkSeeded"]).await.unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::ApiForbidden));
}

#[tokio::test]
async fn sync_rejects_bad_requests_locally_and_unknown_accounts_remotely() {
    let (_running, client) = start().await;
    assert!(matches!(
        client
            .messages()
            .sync(SyncMsgRequest::new("wkSeeded").limit(0))
            .await,
        Err(Error::Validation(_))
    ));
    assert!(matches!(
        client.messages().sync(SyncMsgRequest::new("")).await,
        Err(Error::Validation(_))
    ));
    let err = client
        .messages()
        .sync(SyncMsgRequest::new("wkNoSuchAccount"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.errcode(),
            Some(ErrCode::InvalidOpenKfId | ErrCode::OpenKfIdNotFound)
        ),
        "{err}"
    );
    let err = client
        .messages()
        .sync(SyncMsgRequest::new("wkSeeded").token("forged-token"))
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), Some(ErrCode::InvalidMsgToken));
}
