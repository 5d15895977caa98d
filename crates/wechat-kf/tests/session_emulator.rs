//! The send policy's predictions against the emulator's answers: a bot that feeds every pulled
//! message, every `trans` and every send into a `SessionTracker` predicts exactly what
//! `send_msg` answers, through the session lifecycle (official doc 94669).
#![cfg(feature = "client")]

use std::time::Duration;

use serde_json::{Value, json};
use wechat_kf::client::messages::{SendMsgOnEventRequest, SendMsgRequest, SyncMsgRequest};
use wechat_kf::client::outbound::OutboundMessage;
use wechat_kf::client::service_state::TransServiceStateRequest;
use wechat_kf::client::{Client, RetryPolicy};
use wechat_kf::session::{ServiceState, SessionTracker};
use wechat_kf::{ExternalUserId, OpenKfId};
use wechat_kf_emulator::{Config, RunningEmulator, Seed, SeedAccount, SeedServicer};

const KF: &str = "wkPolicy";
const CUSTOMER: &str = "wmPolicy";

struct Bot {
    running: RunningEmulator,
    client: Client,
    http: reqwest::Client,
    sessions: SessionTracker,
    cursor: Option<String>,
    sends: u32,
}

impl Bot {
    async fn start() -> Bot {
        let mut config = Config::generated();
        config.sync_without_token_per_minute = 0;
        config.seed = Some(Seed {
            accounts: vec![SeedAccount {
                open_kfid: Some(KF.into()),
                name: "策略".into(),
                managed_by_api: true,
                servicers: vec![SeedServicer {
                    userid: "zhangsan".into(),
                    status: 0,
                    stop_type: 0,
                    activated: true,
                }],
                department_ids: vec![],
            }],
            ..Seed::default()
        });
        let (corp_id, secret) = (config.corp_id.clone(), config.secret.clone());
        let running = wechat_kf_test_support::TestEmulator::with_config(config)
            .start()
            .await;
        let client = Client::builder(corp_id, secret)
            .base_url(running.base_url())
            .retry_policy(RetryPolicy::none())
            .build()
            .unwrap();
        Bot {
            running,
            client,
            http: reqwest::Client::new(),
            sessions: SessionTracker::new(),
            cursor: None,
            sends: 0,
        }
    }

    fn now(&self) -> u64 {
        self.running.emulator().now() as u64
    }

    fn advance(&self, secs: u64) {
        self.running
            .emulator()
            .advance_clock(Duration::from_secs(secs));
    }

    fn customer(&self, payload: Value) {
        let mut message = json!({"open_kfid": KF, "external_userid": CUSTOMER});
        for (key, value) in payload.as_object().unwrap() {
            message[key] = value.clone();
        }
        self.running.emulator().customer_send(message).unwrap();
    }

    async fn hook(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/emulator/{path}", self.running.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Pulls everything new and feeds it to the tracker, in log order.
    async fn pull(&mut self) {
        loop {
            let mut request = SyncMsgRequest::new(KF);
            if let Some(cursor) = &self.cursor {
                request = request.cursor(cursor.clone());
            }
            let page = self.client.messages().sync(request).await.unwrap();
            for message in &page.msg_list {
                self.sessions.observe(message);
            }
            self.cursor = Some(page.next_cursor.clone());
            if !page.has_more {
                break;
            }
        }
    }

    /// Predicts, sends, and checks that the server agreed with the prediction. Returns the
    /// errcode (0 for success).
    async fn send(&mut self, step: &str) -> i64 {
        let now = self.now();
        let predicted = self
            .sessions
            .can_send(KF, CUSTOMER, now)
            .map_or_else(|refusal| refusal.errcode(), |_| 0);
        self.sends += 1;
        let request = SendMsgRequest::new(
            CUSTOMER,
            KF,
            OutboundMessage::text(format!("reply {}", self.sends)),
        );
        let (kf, customer) = (OpenKfId::new(KF), ExternalUserId::new(CUSTOMER));
        let actual = match self.client.messages().send(request).await {
            Ok(_) => {
                self.sessions.record_send(&kf, &customer, now);
                0
            }
            Err(error) => {
                let refusal = error
                    .send_refusal()
                    .unwrap_or_else(|| panic!("{step}: not a send refusal: {error}"));
                self.sessions
                    .session_mut(&kf, &customer)
                    .observe_refusal(&refusal, now);
                refusal.errcode()
            }
        };
        assert_eq!(predicted, actual, "{step}: predicted vs. server");
        actual
    }

    async fn trans(&mut self, state: ServiceState, servicer: Option<&str>) {
        let mut request = TransServiceStateRequest::new(KF, CUSTOMER, state);
        if let Some(servicer) = servicer {
            request = request.servicer_userid(servicer);
        }
        let code = self.client.service_state().trans(request).await.unwrap();
        let now = self.now();
        self.sessions
            .session_mut(&KF.into(), &CUSTOMER.into())
            .observe_trans(state, servicer.map(Into::into), code.as_deref(), now);
    }
}

#[tokio::test]
async fn the_trackers_predictions_match_the_emulator_through_a_whole_session_lifecycle() {
    let mut bot = Bot::start().await;

    // Entering the chat alone: state 4, nothing may be sent (95018); the welcome code works.
    bot.running
        .emulator()
        .enter_session(KF, CUSTOMER, Some("order"), None)
        .unwrap();
    bot.pull().await;
    assert_eq!(bot.send("entered only").await, 95018);
    let view = bot.sessions.session(KF, CUSTOMER).unwrap();
    let welcome = view.usable_code(bot.now()).unwrap().code.clone();
    bot.client
        .messages()
        .send_on_event(SendMsgOnEventRequest::new(
            welcome,
            OutboundMessage::text("欢迎"),
        ))
        .await
        .unwrap();

    // A customer message: 5 sends, the 6th is refused (95001).
    bot.customer(json!({"msgtype": "text", "text": {"content": "你好"}}));
    bot.pull().await;
    for i in 0..5 {
        assert_eq!(bot.send(&format!("send {i}")).await, 0);
    }
    assert_eq!(bot.send("sixth").await, 95001);
    assert_eq!(bot.send("seventh").await, 95001);

    // A menu click resets the quota...
    bot.customer(json!({"msgtype": "text", "text": {"content": "查订单", "menu_id": "101"}}));
    bot.pull().await;
    assert_eq!(bot.send("after a click").await, 0);
    // ...but 48 hours after the last typed message, clicks alone are not enough (95024).
    bot.advance(47 * 3600);
    bot.customer(json!({"msgtype": "text", "text": {"content": "查订单", "menu_id": "101"}}));
    bot.pull().await;
    assert_eq!(bot.send("click within 48 h of text").await, 0);
    bot.advance(2 * 3600);
    assert_eq!(bot.send("clicks only").await, 95024);

    // Typed text again; then the bot queues the customer for a human (95018).
    bot.customer(json!({"msgtype": "text", "text": {"content": "转人工"}}));
    bot.pull().await;
    assert_eq!(bot.send("typed again").await, 0);
    bot.trans(ServiceState::Queued, None).await;
    assert_eq!(bot.send("queued").await, 95018);

    // A servicer picks it in the WeCom client, then ends it.
    bot.hook(
        "servicer/pick",
        json!({"open_kfid": KF, "external_userid": CUSTOMER, "servicer_userid": "zhangsan"}),
    )
    .await;
    bot.pull().await;
    assert_eq!(bot.send("picked").await, 95018);
    bot.customer(json!({"msgtype": "text", "text": {"content": "谢谢"}}));
    bot.pull().await;
    assert_eq!(bot.send("customer writes to the human").await, 95018);
    bot.hook(
        "servicer/end",
        json!({"open_kfid": KF, "external_userid": CUSTOMER}),
    )
    .await;
    bot.pull().await;
    assert_eq!(bot.send("ended by the servicer").await, 95018);
    // The end code lives 20 seconds; the view knows it and the server agrees.
    let view = bot.sessions.session(KF, CUSTOMER).unwrap();
    let end_code = view.usable_code(bot.now()).unwrap().code.clone();
    bot.advance(21);
    let view = bot.sessions.session(KF, CUSTOMER).unwrap();
    assert!(view.usable_code(bot.now()).is_none());
    let expired = bot
        .client
        .messages()
        .send_on_event(SendMsgOnEventRequest::new(
            end_code,
            OutboundMessage::text("再见"),
        ))
        .await;
    assert!(expired.is_err());

    // The customer writes again: a new session the bot may answer.
    bot.customer(json!({"msgtype": "image"}));
    bot.pull().await;
    assert_eq!(bot.send("new session").await, 0);

    // A servicer re-joins by writing from the WeCom client (change_type 4).
    bot.hook(
        "servicer/send",
        json!({"open_kfid": KF, "external_userid": CUSTOMER, "servicer_userid": "zhangsan",
            "msgtype": "text", "text": {"content": "我来处理"}}),
    )
    .await;
    bot.pull().await;
    assert_eq!(bot.send("re-joined").await, 95018);

    // The bot ends it through the API; the next customer message re-opens; 48 h later 95002.
    bot.trans(ServiceState::Ended, None).await;
    assert_eq!(bot.send("ended by the API").await, 95018);
    bot.customer(json!({"msgtype": "text", "text": {"content": "还在吗"}}));
    bot.pull().await;
    assert_eq!(bot.send("re-opened").await, 0);
    assert_eq!(bot.send("handled by the bot (state 1)").await, 0);
    bot.advance(48 * 3600 + 1);
    assert_eq!(bot.send("48 hours later").await, 95002);
    bot.running.shutdown().await;
}

#[tokio::test]
async fn an_unpredicted_refusal_is_remembered_until_the_state_is_asked_again() {
    let mut bot = Bot::start().await;
    bot.customer(json!({"msgtype": "text", "text": {"content": "你好"}}));
    // The tracker never sees the trans (another process did it): it predicts an allowance.
    bot.client
        .service_state()
        .trans(TransServiceStateRequest::new(
            KF,
            CUSTOMER,
            ServiceState::Queued,
        ))
        .await
        .unwrap();
    bot.pull().await;
    let now = bot.now();
    assert!(bot.sessions.can_send(KF, CUSTOMER, now).is_ok());
    let request = SendMsgRequest::new(CUSTOMER, KF, OutboundMessage::text("hi"));
    let error = bot.client.messages().send(request).await.unwrap_err();
    let refusal = error.send_refusal().unwrap();
    assert_eq!(refusal.errcode(), 95018);
    let (kf, customer) = (OpenKfId::new(KF), ExternalUserId::new(CUSTOMER));
    let view = bot.sessions.session_mut(&kf, &customer);
    view.observe_refusal(&refusal, now);
    assert_eq!(view.can_send(now).unwrap_err().errcode(), 95018);
    assert!(!view.state_is_known());
    let info = bot.client.service_state().get(KF, CUSTOMER).await.unwrap();
    view.observe_state(info.service_state, info.servicer_userid, now);
    assert_eq!(
        view.can_send(now),
        Err(wechat_kf::session::SendRefusal::Queued)
    );
    bot.running.shutdown().await;
}
