//! The web console: login, CSRF and the rate limit over HTTP, and the whole console in a real
//! browser (Debian's Chromium driven by `playwright-core`, `tests/browser/console.mjs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use wechat_kf_service::config::{Config, Overrides};
use wechat_kf_service::{RunningService, Service};
use wechat_kf_test_support::{require_command, require_path};

async fn sandbox() -> RunningService {
    let flags = Overrides::default()
        .set("--listen", "listen", Some("127.0.0.1:0"))
        .switch("--echo", "sandbox.echo", true);
    Service::start(Config::from_sources(None, &|_| None, flags).unwrap())
        .await
        .unwrap()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_console_logs_in_with_its_token_and_guards_every_state_change() {
    let running = sandbox().await;
    let info = running.sandbox().unwrap().clone();
    let token = info.generated_console_token.clone().unwrap();
    assert!(info.instructions().contains(&info.console_url()));
    assert!(running.summary().contains("console:"));
    let base = running.base_url();
    let http = no_redirects();

    let page = http
        .get(format!("{base}/console/sandbox"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303, "no session: to the login form");
    let wrong = http
        .post(format!("{base}/console/login"))
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = http
        .post(format!("{base}/console/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 303);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    let sandbox_page = http
        .get(format!("{base}/console/sandbox"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(sandbox_page.status(), 200);
    let html = sandbox_page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let kf = info.open_kfid.as_str();
    let send = |csrf: &str, origin: Option<&str>| {
        let mut request = http
            .post(format!("{base}/console/sandbox/send"))
            .header("cookie", &session)
            .form(&[
                ("csrf", csrf),
                ("open_kfid", kf),
                ("customer", "wmCsrfCheck"),
                ("text", "hello"),
            ]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(send("", None).await.unwrap().status(), 403, "no CSRF token");
    assert_eq!(
        send("forged", None).await.unwrap().status(),
        403,
        "a wrong one"
    );
    assert_eq!(
        send(&csrf, Some("http://evil.test"))
            .await
            .unwrap()
            .status(),
        403,
        "another origin"
    );
    assert_eq!(send(&csrf, Some(&base)).await.unwrap().status(), 303);

    // Behind a TLS-terminating proxy the cookie is also Secure.
    let proxied = http
        .post(format!("{base}/console/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(
        proxied.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    // Failed logins are rate-limited: past the limit even the right token waits.
    for _ in 0..10 {
        http.post(format!("{base}/console/login"))
            .form(&[("token", "guess")])
            .send()
            .await
            .unwrap();
    }
    let limited = http
        .post(format!("{base}/console/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    running.shutdown().await;
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let dir = browser_dir();
    if !require_command("node")
        || !require_path(Path::new("/usr/bin/chromium"), "apt-get install chromium")
        || !require_path(
            &dir.join("node_modules/playwright-core"),
            "run npm ci --prefix crates/wechat-kf-service/tests/browser",
        )
    {
        return;
    }
    let running = sandbox().await;
    let info = running.sandbox().unwrap().clone();
    // A second sandbox whose bot is a webhook that fails the first time it sees a message and
    // acknowledges it after: the browser retries the failed delivery and replays the message.
    let sink = crate::common::Sink::start().await;
    let mut seen = std::collections::HashSet::new();
    sink.set_policy(move |r| {
        let fresh: Vec<String> = r
            .msgids()
            .into_iter()
            .filter(|m| !seen.contains(m))
            .collect();
        if fresh.is_empty() {
            crate::common::Action::Ack(serde_json::json!({}))
        } else {
            seen.extend(fresh);
            crate::common::Action::Status(500)
        }
    });
    let flags = Overrides::default().set("--listen", "listen", Some("127.0.0.1:0"));
    let mut cfg = Config::from_sources(None, &|_| None, flags).unwrap();
    cfg.webhook.url = Some(sink.url.clone());
    cfg.webhook.secret = Some(wechat_kf_service::config::Secret::new(
        crate::common::HOOK_SECRET,
    ));
    // No retry on its own within the test: only the operator's.
    cfg.webhook.retry_initial = Duration::from_secs(3600);
    cfg.webhook.retry_max = Duration::from_secs(3600);
    let failing = Service::start(cfg).await.unwrap();
    let failing_info = failing.sandbox().unwrap().clone();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    let run = tokio::process::Command::new("node")
        .arg("console.mjs")
        .current_dir(&dir)
        .env("CONSOLE_URL", running.base_url())
        .env(
            "CONSOLE_TOKEN",
            info.generated_console_token.clone().unwrap(),
        )
        .env("FAILING_URL", failing.base_url())
        .env(
            "FAILING_TOKEN",
            failing_info.generated_console_token.clone().unwrap(),
        )
        .env("SCREENSHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser test finishes within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    running.shutdown().await;
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("all console browser checks passed"),
        "{stdout}"
    );
    // The webhook saw the browser's message fail, then acknowledged it twice: the retry and the
    // replay.
    let acked_twice = || {
        let received = sink.received();
        let first = received.iter().flat_map(|r| r.msgids()).next();
        first.is_some_and(|msgid| {
            received
                .iter()
                .filter(|r| r.acked && r.msgids().contains(&msgid))
                .count()
                == 2
        })
    };
    crate::common::wait_for(
        "the retried and the replayed delivery acknowledged",
        Duration::from_secs(10),
        || async { acked_twice() },
    )
    .await;
    failing.shutdown().await;
}

#[tokio::test]
async fn an_operator_retries_a_failing_delivery_now_and_gives_another_up() {
    use crate::common::{Action, Sink, api, config, emulator, start, text, wait_for};
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let emu = emulator().await;
    let sink = Sink::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let switch = healthy.clone();
    sink.set_policy(move |_| {
        if switch.load(Ordering::SeqCst) {
            Action::Ack(json!({}))
        } else {
            Action::Status(500)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("ops");
    let mut cfg = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    // No retry on its own within the test: only the operator's.
    cfg.webhook.retry_initial = Duration::from_secs(3600);
    cfg.webhook.retry_max = Duration::from_secs(3600);
    let running = start(&emu, cfg).await;
    emu.emulator()
        .customer_send(text(&kf, "wmRetried", "one"))
        .unwrap();
    emu.emulator()
        .customer_send(text(&kf, "wmGivenUp", "two"))
        .unwrap();

    let waiting = || async {
        let (_, body) = api(&running, "GET", "/v1/deliveries?failed=true", None).await;
        body["deliveries"].as_array().cloned().unwrap_or_default()
    };
    wait_for(
        "two failed deliveries, one per customer",
        Duration::from_secs(10),
        || async { waiting().await.len() == 2 },
    )
    .await;
    let deliveries = waiting().await;
    let id_of = |customer: &str| {
        deliveries
            .iter()
            .find(|d| d["customers"][0].as_str().unwrap().ends_with(customer))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (retried, given_up) = (id_of("wmRetried"), id_of("wmGivenUp"));

    let (status, body) = api(
        &running,
        "POST",
        &format!("/v1/deliveries/{given_up}/give_up"),
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["result"].as_str()),
        (200, Some("given_up"))
    );
    let (status, _) = api(
        &running,
        "POST",
        &format!("/v1/deliveries/{given_up}/retry"),
        None,
    )
    .await;
    assert_eq!(status.as_u16(), 404, "a given-up delivery is gone");
    let (status, body) = api(&running, "POST", "/v1/deliveries/not%20an%20id/retry", None).await;
    assert_eq!((status.as_u16(), body["field"].as_str()), (400, Some("id")));

    healthy.store(true, Ordering::SeqCst);
    let (status, body) = api(
        &running,
        "POST",
        &format!("/v1/deliveries/{retried}/retry"),
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["result"].as_str()),
        (200, Some("retrying"))
    );
    wait_for(
        "the retried delivery acknowledged",
        Duration::from_secs(10),
        || async {
            sink.received()
                .iter()
                .any(|r| r.acked && r.delivery == retried)
        },
    )
    .await;
    wait_for("nothing left waiting", Duration::from_secs(10), || async {
        waiting().await.is_empty()
    })
    .await;
    let (_, messages) = api(
        &running,
        "GET",
        &format!("/v1/messages?open_kfid={kf}"),
        None,
    )
    .await;
    assert!(
        messages["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "delivered"),
        "{messages}"
    );
    // The given-up customer's next message flows again.
    emu.emulator()
        .customer_send(text(&kf, "wmGivenUp", "three"))
        .unwrap();
    wait_for(
        "the next message of the given-up customer",
        Duration::from_secs(10),
        || async {
            sink.received()
                .iter()
                .any(|r| r.acked && r.messages.iter().any(|m| m["text"]["content"] == "three"))
        },
    )
    .await;
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_downloaded_image_is_served_to_the_api_and_shown_in_the_console() {
    use serde_json::{Value, json};

    let media = tempfile::tempdir().unwrap();
    let flags = Overrides::default()
        .set("--listen", "listen", Some("127.0.0.1:0"))
        .set(
            "--media-dir",
            "media.download_dir",
            Some(media.path().to_str().unwrap()),
        );
    let running = Service::start(Config::from_sources(None, &|_| None, flags).unwrap())
        .await
        .unwrap();
    let info = running.sandbox().unwrap().clone();
    let (base, kf) = (running.base_url(), info.open_kfid.to_string());
    let token = info.generated_api_token.clone().unwrap();
    // An image without a media_id: the emulator sends its placeholder PNG.
    let sent = running
        .emulator()
        .unwrap()
        .customer_send(json!({"open_kfid": kf, "external_userid": "wmPictures", "msgtype": "image", "image": {}}))
        .unwrap();
    let msgid = sent[0].clone();
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/conversations/{kf}/wmPictures");
    crate::common::wait_for("the image's media record", Duration::from_secs(10), || {
        let request = http.get(&url).bearer_auth(&token).send();
        async move {
            let body: Value = request.await.unwrap().json().await.unwrap();
            body["items"][0]["media"]["path"].is_string()
        }
    })
    .await;
    let file = http
        .get(format!("{base}/v1/media/{kf}/{msgid}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["content-type"], "image/png");
    assert!(file.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let none = http
        .get(format!("{base}/v1/media/{kf}/not-a-message"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);

    // The console shows it.
    let console = no_redirects();
    let login = console
        .post(format!("{base}/console/login"))
        .form(&[("token", info.generated_console_token.clone().unwrap())])
        .send()
        .await
        .unwrap();
    let session = login.headers()["set-cookie"].to_str().unwrap();
    let session = session.split(';').next().unwrap().to_owned();
    let page = console
        .get(format!("{base}/console/conversations/{kf}/wmPictures"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let src = format!("/console/media/{kf}/{msgid}");
    assert!(page.contains(&format!("src=\"{src}\"")), "{page}");
    let image = console
        .get(format!("{base}{src}"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    running.shutdown().await;
}

#[tokio::test]
async fn a_delivered_message_is_replayed_to_the_bot_after_what_its_customer_has_waiting() {
    use crate::common::{Action, Sink, api, config, emulator, start, text, wait_for};
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let emu = emulator().await;
    let sink = Sink::start().await;
    // "two" is refused until the bot is healthy again; everything else is acknowledged.
    let healthy = Arc::new(AtomicBool::new(false));
    let switch = healthy.clone();
    sink.set_policy(move |r| {
        let has_two = r.messages.iter().any(|m| m["text"]["content"] == "two");
        if has_two && !switch.load(Ordering::SeqCst) {
            Action::Status(500)
        } else {
            Action::Ack(json!({}))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("replay");
    let mut cfg = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    cfg.webhook.retry_initial = Duration::from_secs(3600);
    cfg.webhook.retry_max = Duration::from_secs(3600);
    let running = start(&emu, cfg).await;
    let one = emu
        .emulator()
        .customer_send(text(&kf, "wmReplayed", "one"))
        .unwrap()[0]
        .clone();
    wait_for("one acknowledged", Duration::from_secs(10), || async {
        sink.acked_msgids().contains(&one)
    })
    .await;
    crate::common::wait_until_acks_recorded(&running).await;
    let two = emu
        .emulator()
        .customer_send(text(&kf, "wmReplayed", "two"))
        .unwrap()[0]
        .clone();
    let failing = || async {
        let (_, body) = api(&running, "GET", "/v1/deliveries?failed=true", None).await;
        body["deliveries"].as_array().cloned().unwrap_or_default()
    };
    wait_for("two failed once", Duration::from_secs(10), || async {
        failing().await.len() == 1
    })
    .await;

    // "two" still waits: the replay of "one" waits behind it.
    let (status, body) = api(
        &running,
        "POST",
        &format!("/v1/messages/{kf}/{one}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["result"].as_str()),
        (200, Some("replaying")),
        "{body}"
    );
    let (status, _) = api(
        &running,
        "POST",
        &format!("/v1/messages/{kf}/{one}/replay"),
        None,
    )
    .await;
    assert_eq!(status.as_u16(), 409, "a replay of it waits already");
    let (status, _) = api(
        &running,
        "POST",
        &format!("/v1/messages/{kf}/{two}/replay"),
        None,
    )
    .await;
    assert_eq!(status.as_u16(), 409, "two was never delivered");
    let (status, _) = api(
        &running,
        "POST",
        &format!("/v1/messages/{kf}/no-such-message/replay"),
        None,
    )
    .await;
    assert_eq!(status.as_u16(), 404);
    let (status, body) = api(
        &running,
        "POST",
        "/v1/messages/not%20an%20account/m1/replay",
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["field"].as_str()),
        (400, Some("open_kfid"))
    );

    healthy.store(true, Ordering::SeqCst);
    let id = failing().await[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = api(
        &running,
        "POST",
        &format!("/v1/deliveries/{id}/retry"),
        None,
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    wait_for("one delivered again", Duration::from_secs(10), || async {
        sink.acked_msgids().iter().filter(|m| **m == one).count() == 2
    })
    .await;
    assert_eq!(
        sink.acked_msgids(),
        vec![one.clone(), two.clone(), one.clone()],
        "the replay comes after the customer's waiting message"
    );
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn sends_of_the_reply_api_and_the_console_show_in_the_history_with_their_result() {
    use serde_json::{Value, json};

    let running = sandbox().await;
    let info = running.sandbox().unwrap().clone();
    let (base, kf) = (running.base_url(), info.open_kfid.to_string());
    let token = info.generated_api_token.clone().unwrap();
    let http = reqwest::Client::new();
    let chat = |customer: &'static str| {
        let request = http
            .get(format!("{base}/v1/conversations/{kf}/{customer}"))
            .bearer_auth(&token)
            .send();
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    };
    running
        .emulator()
        .unwrap()
        .customer_send(json!({"open_kfid": kf, "external_userid": "wmApiSends", "msgtype": "text", "text": {"content": "hi"}}))
        .unwrap();
    crate::common::wait_for("the echo", Duration::from_secs(10), || async {
        chat("wmApiSends").await["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["state"] == "sent"))
    })
    .await;
    let sent = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(&token)
        .json(&json!({"touser": "wmApiSends", "open_kfid": kf, "msgtype": "text", "text": {"content": "from the API"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let body = chat("wmApiSends").await;
    let item = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["text"] == "from the API")
        .cloned()
        .unwrap_or_else(|| panic!("the API's send is in the history: {body}"));
    assert_eq!(
        (
            item["from"].as_str(),
            item["state"].as_str(),
            item["via"].as_str()
        ),
        (Some("bot"), Some("sent"), Some("reply_api"))
    );

    // A customer WeChat does not know: WeChat refuses (40096), and the history says why.
    let failed = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(&token)
        .json(&json!({"touser": "wmNeverWrote", "open_kfid": kf, "msgtype": "text", "text": {"content": "hello?"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 422);
    let body = chat("wmNeverWrote").await;
    let item = &body["items"][0];
    assert_eq!(item["state"], "failed", "{body}");
    assert!(
        item["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    // The console's reply box goes the same way.
    let console = no_redirects();
    let login = console
        .post(format!("{base}/console/login"))
        .form(&[("token", info.generated_console_token.clone().unwrap())])
        .send()
        .await
        .unwrap();
    let session = login.headers()["set-cookie"].to_str().unwrap();
    let session = session.split(';').next().unwrap().to_owned();
    let page = console
        .get(format!("{base}/console/conversations/{kf}/wmApiSends"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let replied = console
        .post(format!(
            "{base}/console/conversations/{kf}/wmApiSends/reply"
        ))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("text", "from the console")])
        .send()
        .await
        .unwrap();
    assert_eq!(replied.status(), 200);
    let body = chat("wmApiSends").await;
    assert!(
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["text"] == "from the console"
                && i["state"] == "sent"
                && i["via"] == "console"),
        "{body}"
    );

    // Past the quota of 5 sends the send policy refuses, and the history says why.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(&token)
            .json(&json!({"touser": "wmApiSends", "open_kfid": kf, "msgtype": "text", "text": {"content": "more"}}))
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 409]);
    let body = chat("wmApiSends").await;
    let refused = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["state"] == "refused")
        .cloned()
        .unwrap_or_else(|| panic!("the refused send is in the history: {body}"));
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("95001")),
        "{refused}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn the_setup_report_says_what_to_enter_in_the_admin_and_what_is_wrong() {
    use crate::common::{config, emulator, start, text, wait_for};
    use serde_json::{Value, json};

    let emu = emulator().await;
    let closed = wechat_kf_test_support::ClosedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let kf = emu.emulator().create_account("setup");
    let hook = format!("{}/hook?key=do-not-show", closed.url());
    let running = start(&emu, config(&emu, &dir.path().join("kf.db"), Some(&hook))).await;
    let base = running.base_url();
    let http = reqwest::Client::new();
    let setup = || {
        let request = http
            .get(format!("{base}/v1/setup"))
            .bearer_auth("api-token")
            .header("x-forwarded-proto", "https")
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let report = setup().await;
    assert_eq!(report["credentials"]["ok"], true, "{report}");
    let host = base.trim_start_matches("http://");
    assert_eq!(
        report["callback"]["url"].as_str(),
        Some(format!("https://{host}/callback").as_str())
    );
    assert_eq!(report["callback"]["verified"], false);
    assert_eq!(report["webhook"]["reachable"], false);
    assert!(!report.to_string().contains("do-not-show"), "{report}");
    assert!(report["trusted_ip"]["outbound_ip"].is_null());

    // WeChat verifies the URL, then calls back for a customer's message.
    let verified: Value = http
        .post(format!("{}/emulator/callback/verify", emu.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    emu.emulator()
        .customer_send(text(&kf, "wmSetup", "hello"))
        .unwrap();
    wait_for("the callback seen", Duration::from_secs(10), || async {
        setup().await["callback"]["last_accepted_at_ms"].is_u64()
    })
    .await;
    let report = setup().await;
    assert_eq!(report["callback"]["verified"], true, "{report}");

    // WeChat refuses a call with 60020 and names the address it sees.
    emu.emulator()
        .inject_fault(json!({"path": "kf/send_msg", "kind": "errcode", "errcode": 60020,
            "errmsg": "not allow to access from your ip, hint: [1], from ip: 203.0.113.7, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"}))
        .unwrap();
    let sent = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth("api-token")
        .json(&json!({"touser": "wmSetup", "open_kfid": kf, "msgtype": "text", "text": {"content": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 422);
    let report = setup().await;
    assert_eq!(
        report["trusted_ip"]["outbound_ip"], "203.0.113.7",
        "{report}"
    );
    assert_eq!(report["trusted_ip"]["refused_60020"], true);
    assert!(
        report["trusted_ip"]["hint"]
            .as_str()
            .unwrap()
            .contains("203.0.113.7")
    );
    let unauthorized = http.get(format!("{base}/v1/setup")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    running.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_accounts_are_listed_with_their_servicers_and_status() {
    use serde_json::Value;

    let running = sandbox().await;
    let info = running.sandbox().unwrap().clone();
    let token = info.generated_api_token.clone().unwrap();
    let body: Value = reqwest::Client::new()
        .get(format!("{}/v1/accounts", running.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let demo = body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["open_kfid"] == info.open_kfid.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the demo account is listed: {body}"));
    assert_eq!(demo["pulled"], true, "{body}");
    assert!(demo["name"].is_string(), "{body}");
    let servicer = demo["servicers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["userid"] == "demo_servicer")
        .cloned()
        .unwrap_or_else(|| panic!("the demo servicer is listed: {body}"));
    assert_eq!(servicer["status"], "receiving", "{body}");
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/accounts", running.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    running.shutdown().await;
}
