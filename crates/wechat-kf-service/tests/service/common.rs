//! Test fixtures: an emulator with limits off, a webhook sink that records what it receives and
//! answers by a policy, and a service wired to both. What other crates' tests share too
//! (skipping without a service, starting the emulator, ports) is in `wechat-kf-test-support`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use wechat_kf_emulator::RunningEmulator;
use wechat_kf_service::config::{Config, Secret};
use wechat_kf_service::{Clock, RunningService, Service};
use wechat_kf_test_support::TestEmulator;
pub use wechat_kf_test_support::{PgSchema, require_env, wait_for};

pub const HOOK_SECRET: &str = "hook-secret";

/// Starts an emulator with rate limits off and quick callback retries.
pub async fn emulator() -> RunningEmulator {
    TestEmulator::new()
        .unlimited()
        .quick_callbacks()
        .start()
        .await
}

/// A service configuration talking to `emu`, storing in `db`, delivering to `webhook`.
pub fn config(emu: &RunningEmulator, db: &Path, webhook: Option<&str>) -> Config {
    let e = emu.emulator().config();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.wechat.corp_id = e.corp_id.clone();
    config.wechat.secret = Some(Secret::new(e.secret.clone()));
    config.wechat.callback_token = Some(Secret::new(e.callback_token.clone()));
    config.wechat.encoding_aes_key = Some(Secret::new(e.encoding_aes_key.clone()));
    config.wechat.base_url = Some(emu.base_url());
    config.wechat.timeout = Duration::from_secs(2);
    config.pull.safety_interval = Duration::ZERO;
    config.storage.db = Some(db.to_str().unwrap().to_owned());
    config.webhook.url = webhook.map(str::to_owned);
    config.webhook.secret = Some(Secret::new(HOOK_SECRET));
    config.webhook.timeout = Duration::from_millis(800);
    config.webhook.retry_initial = Duration::from_millis(20);
    config.webhook.retry_max = Duration::from_millis(300);
    config.webhook.max_batch = 50;
    config.webhook.concurrency = 8;
    config.api.token = Some(Secret::new("api-token"));
    config
}

/// Starts the service and points the emulator's callbacks at it.
pub async fn start(emu: &RunningEmulator, config: Config) -> RunningService {
    let running = Service::start(config).await.unwrap();
    emu.emulator()
        .set_callback_url(Some(format!("{}/callback", running.base_url())));
    running
}

/// Starts the service on the emulator's clock (so tests move time by advancing it) and points
/// the emulator's callbacks at it.
pub async fn start_on_emulator_clock(emu: &RunningEmulator, config: Config) -> RunningService {
    let emulator = emu.emulator().clone();
    let running = Service::start_with_clock(config, Clock::from_fn(move || emulator.now()))
        .await
        .unwrap();
    emu.emulator()
        .set_callback_url(Some(format!("{}/callback", running.base_url())));
    running
}

/// A service on the emulator's clock, storing in a fresh directory and delivering to `sink`;
/// the directory must live as long as the service.
pub async fn start_delivering_to(
    emu: &RunningEmulator,
    sink: &Sink,
) -> (RunningService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let running =
        start_on_emulator_clock(emu, config(emu, &dir.path().join("kf.db"), Some(&sink.url))).await;
    (running, dir)
}

/// Waits until the store has recorded every acknowledgement: the bot's 2xx is recorded just
/// after the sink has seen the delivery, so asserting right after the sink would race it.
pub async fn wait_until_acks_recorded(running: &RunningService) {
    let store = running.store();
    wait_for(
        "every acknowledged delivery recorded",
        Duration::from_secs(10),
        || async { store.stats().await.unwrap().pending == 0 },
    )
    .await;
}

/// The end of a run: the sink acknowledged `expected` exactly once in per-customer order, and the
/// store holds exactly those messages, none pending.
pub async fn assert_all_delivered_once(
    running: &RunningService,
    sink: &Sink,
    expected: &[(String, String, String)],
) {
    assert_exactly_once_in_order(sink, expected);
    wait_until_acks_recorded(running).await;
    let stats = running.store().stats().await.unwrap();
    assert_eq!(
        (stats.messages as usize, stats.pending),
        (expected.len(), 0)
    );
}

/// POSTs to the emulator's control API; the JSON answer.
pub async fn control(emu: &RunningEmulator, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", emu.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

/// Calls the reply API through the router; (status, JSON body).
pub async fn api(
    running: &RunningService,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", "Bearer api-token")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let response = wechat_kf_service::router(running.state().clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The value of one metric line (`name{labels}`), 0 when absent.
pub fn metric(running: &RunningService, series: &str) -> u64 {
    running
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A customer text.
pub fn text(open_kfid: &str, customer: &str, content: &str) -> Value {
    json!({"open_kfid": open_kfid, "external_userid": customer, "msgtype": "text",
           "text": {"content": content}})
}

/// What the sink does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// 200 with this body.
    Ack(Value),
    /// This status.
    Status(u16),
    /// Sleep, then 200 (the service has given up by then).
    Hang(Duration),
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub delivery: String,
    pub attempt: u32,
    pub messages: Vec<Value>,
    pub invalid: Vec<u64>,
    pub signature_ok: bool,
    pub acked: bool,
    /// `reply_results` of the body.
    pub reply_results: Vec<Value>,
    /// `media` of the body (`{msgid: record}`), `Null` when absent.
    pub media: Value,
    /// `items` of the body: whose turn each message is, and session changes, in order.
    pub items: Vec<Value>,
    /// The whole body.
    pub raw: Value,
}

impl Received {
    pub fn msgids(&self) -> Vec<String> {
        self.messages.iter().map(msgid).collect()
    }
}

pub fn msgid(message: &Value) -> String {
    message["msgid"].as_str().unwrap_or_default().to_owned()
}

/// The customer of a message (inside the event for events).
pub fn customer(message: &Value) -> (String, String) {
    let field = |k: &str| {
        message[k]
            .as_str()
            .or_else(|| message["event"][k].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    (field("open_kfid"), field("external_userid"))
}

type Policy = Box<dyn FnMut(&Received) -> Action + Send>;

pub struct SinkState {
    pub received: Mutex<Vec<Received>>,
    policy: Mutex<Policy>,
}

/// A webhook that records requests and answers by a policy.
pub struct Sink {
    pub url: String,
    pub state: Arc<SinkState>,
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(SinkState {
            received: Mutex::new(Vec::new()),
            policy: Mutex::new(Box::new(|_| Action::Ack(json!({})))),
        });
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let url = wechat_kf_test_support::serve(app, "/hook").await;
        Sink { url, state }
    }

    pub fn set_policy(&self, policy: impl FnMut(&Received) -> Action + Send + 'static) {
        *self.state.policy.lock().unwrap() = Box::new(policy);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// msgids of acknowledged requests, in arrival order.
    pub fn acked_msgids(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.acked)
            .flat_map(|r| r.msgids())
            .collect()
    }

    pub fn acked_count(&self) -> usize {
        self.acked_msgids().len()
    }

    /// Every `reply_results` entry of acknowledged deliveries.
    pub fn reply_results(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|r| r.acked)
            .flat_map(|r| r.reply_results.clone())
            .collect()
    }

    /// The acknowledged message with this msgid and the media record delivered with it.
    pub fn delivered(&self, msgid: &str) -> Option<(Value, Value)> {
        self.received().iter().filter(|r| r.acked).find_map(|r| {
            let m = r.messages.iter().find(|m| self::msgid(m) == msgid)?;
            Some((m.clone(), r.media[msgid].clone()))
        })
    }

    /// Acknowledged messages grouped per customer, in arrival order.
    pub fn acked_per_customer(&self) -> HashMap<(String, String), Vec<String>> {
        let mut map: HashMap<(String, String), Vec<String>> = HashMap::new();
        for r in self.received().iter().filter(|r| r.acked) {
            for m in &r.messages {
                map.entry(customer(m)).or_default().push(msgid(m));
            }
        }
        map
    }
}

async fn hook(State(state): State<Arc<SinkState>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature_ok = wechat_kf_service::verify_signature(
        HOOK_SECRET.as_bytes(),
        &body,
        &header("x-wechat-kf-signature"),
    );
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut received = Received {
        delivery: header("x-wechat-kf-delivery"),
        attempt: header("x-wechat-kf-attempt").parse().unwrap_or(0),
        messages: value["messages"].as_array().cloned().unwrap_or_default(),
        invalid: value["invalid"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
        signature_ok,
        acked: false,
        reply_results: value["reply_results"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        media: value["media"].clone(),
        items: value["items"].as_array().cloned().unwrap_or_default(),
        raw: value.clone(),
    };
    let action = (state.policy.lock().unwrap())(&received);
    match action {
        Action::Ack(reply) => {
            received.acked = true;
            state.received.lock().unwrap().push(received);
            (StatusCode::OK, axum::Json(reply)).into_response()
        }
        Action::Status(status) => {
            state.received.lock().unwrap().push(received);
            StatusCode::from_u16(status).unwrap().into_response()
        }
        Action::Hang(d) => {
            state.received.lock().unwrap().push(received);
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}

/// Asserts every expected msgid was acknowledged exactly once and each customer's messages
/// arrived in the order given.
pub fn assert_exactly_once_in_order(sink: &Sink, expected: &[(String, String, String)]) {
    let acked = sink.acked_msgids();
    let mut seen = HashSet::new();
    for id in &acked {
        assert!(seen.insert(id.clone()), "msgid {id} acknowledged twice");
    }
    let expected_ids: HashSet<String> = expected.iter().map(|(_, _, m)| m.clone()).collect();
    assert_eq!(
        seen, expected_ids,
        "acknowledged msgids differ from those sent"
    );
    let mut per_customer: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (kf, ext, id) in expected {
        per_customer
            .entry((kf.clone(), ext.clone()))
            .or_default()
            .push(id.clone());
    }
    let got = sink.acked_per_customer();
    for (customer, ids) in per_customer {
        assert_eq!(got.get(&customer), Some(&ids), "order for {customer:?}");
    }
}

/// Sends `count` texts from one customer; returns (open_kfid, customer, msgid) triples.
pub fn send_texts(
    emu: &RunningEmulator,
    open_kfid: &str,
    customer: &str,
    count: usize,
) -> Vec<(String, String, String)> {
    let batch: Vec<Value> = (0..count)
        .map(|i| {
            json!({"open_kfid": open_kfid, "external_userid": customer, "msgtype": "text",
                   "text": {"content": format!("message {i} from {customer}")}})
        })
        .collect();
    emu.emulator()
        .customer_send(Value::Array(batch))
        .unwrap()
        .into_iter()
        .map(|id| (open_kfid.to_owned(), customer.to_owned(), id))
        .collect()
}

/// Emulator outbox entries (what the service sent to customers).
pub fn outbox(emu: &RunningEmulator, open_kfid: Option<&str>) -> Vec<Value> {
    emu.emulator().outbox(open_kfid, None)["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The emulator's count of calls to a path.
pub fn calls(emu: &RunningEmulator, path: &str) -> u64 {
    emu.emulator().state_snapshot()["counters"]["calls"][path]
        .as_u64()
        .unwrap_or(0)
}
