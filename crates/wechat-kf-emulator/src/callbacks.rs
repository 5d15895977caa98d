//! Callback delivery: one encrypted `kf_msg_or_event` POST per batch of new data per account, at
//! most one in flight per account (new data meanwhile schedules exactly one more), retried like
//! WeChat; and the URL-verification GET on demand.

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::Emulator;
use crate::crypto;
use crate::ids;
use crate::state::{CallbackSlot, DeliveryAttempt};

/// How long the receiver has to answer a verification GET.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts (or schedules) a callback for each account that got new data.
pub(crate) fn notify(emu: &Emulator, accounts: Vec<String>) {
    if emu.callback_url().is_none() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // not inside tokio: no way to deliver
    };
    for open_kfid in accounts {
        let start = emu.with_state(|s, _| {
            let slot = s
                .callback_slots
                .entry(open_kfid.clone())
                .or_insert_with(CallbackSlot::default);
            if slot.in_flight {
                slot.pending = true;
                false
            } else {
                slot.in_flight = true;
                true
            }
        });
        if start {
            runtime.spawn(delivery_loop(emu.clone(), open_kfid));
        }
    }
}

async fn delivery_loop(emu: Emulator, open_kfid: String) {
    loop {
        if let Some(url) = emu.callback_url() {
            deliver(&emu, &open_kfid, &url).await;
        }
        let again = emu.with_state(|s, _| {
            let slot = s.callback_slots.entry(open_kfid.clone()).or_default();
            if slot.pending && emu.callback_url().is_some() {
                slot.pending = false;
                true
            } else {
                *slot = CallbackSlot::default();
                false
            }
        });
        if !again {
            return;
        }
    }
}

/// Delivers one `kf_msg_or_event` callback (with retries). Returns whether it was received.
async fn deliver(emu: &Emulator, open_kfid: &str, url: &str) -> bool {
    let (token, delivery, now) = emu.with_state(|s, now| {
        let (token, _) = s.callback_tokens.issue(open_kfid, now);
        let id = s.next_delivery;
        s.next_delivery += 1;
        (token, id, now)
    });
    let plain = crypto::kf_event_plaintext(&emu.config().corp_id, now / 1000, &token, open_kfid);
    let target = Target {
        delivery,
        event: KF_MSG_OR_EVENT,
        open_kfid,
        token: &token,
    };
    post_encrypted(emu, url, &target, &plain, now).await.ok
}

const KF_MSG_OR_EVENT: &str = "kf_msg_or_event";
const KF_ACCOUNT_AUTH_CHANGE: &str = "kf_account_auth_change";

/// What one delivery is about (for the attempt log).
struct Target<'a> {
    delivery: u64,
    event: &'static str,
    open_kfid: &'a str,
    token: &'a str,
}

/// The outcome of one delivery.
pub(crate) struct Outcome {
    /// The delivery id.
    pub delivery: u64,
    /// Whether an attempt got HTTP 200.
    pub ok: bool,
    /// How many attempts were made.
    pub attempts: u32,
}

/// Encrypts `plain`, POSTs it to `url` and retries like WeChat: the identical request after a
/// timeout, a connection failure or a non-200 status, `callback_retries` times.
async fn post_encrypted(
    emu: &Emulator,
    url: &str,
    target: &Target<'_>,
    plain: &str,
    now: i64,
) -> Outcome {
    let config = emu.config();
    let Some(crypt) = emu.crypt() else {
        emu.with_state(|s, now| {
            s.record_delivery(attempt(
                target,
                1,
                None,
                Some("invalid EncodingAESKey".into()),
                now,
            ));
            s.counters.callbacks_failed += 1;
        });
        return Outcome {
            delivery: target.delivery,
            ok: false,
            attempts: 1,
        };
    };
    let timestamp = (now / 1000).to_string();
    let nonce = ids::digits(10);
    let encrypted = crypt.encrypt(plain);
    let signature = crypt.sign(&timestamp, &nonce, &encrypted);
    let body = crypto::envelope_xml(&config.corp_id, &encrypted);
    let sep = if url.contains('?') { '&' } else { '?' };
    let full_url =
        format!("{url}{sep}msg_signature={signature}&timestamp={timestamp}&nonce={nonce}");
    let attempts = config.callback_retries.saturating_add(1);
    for n in 1..=attempts {
        let result = emu
            .http()
            .post(&full_url)
            .header("Content-Type", "text/xml")
            .timeout(config.callback_timeout)
            .body(body.clone())
            .send()
            .await;
        let (status, error) = match result {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) if e.is_timeout() => (None, Some("timeout".to_string())),
            Err(e) if e.is_connect() => (None, Some("connection failed".to_string())),
            Err(_) => (None, Some("request failed".to_string())),
        };
        let ok = status == Some(200);
        emu.with_state(|s, now| {
            s.record_delivery(attempt(target, n, status, error, now));
            if ok {
                s.counters.callbacks_sent += 1;
            } else if n == attempts {
                s.counters.callbacks_failed += 1;
            }
        });
        if ok {
            return Outcome {
                delivery: target.delivery,
                ok: true,
                attempts: n,
            };
        }
        if n < attempts {
            tokio::time::sleep(config.callback_retry_delay).await;
        }
    }
    tracing::debug!(
        delivery = target.delivery,
        "callback failed after every retry"
    );
    Outcome {
        delivery: target.delivery,
        ok: false,
        attempts,
    }
}

/// Sends one `kf_account_auth_change` callback (official doc 97712) to the current callback URL
/// and waits for the outcome (retries included). `None` without a callback URL.
pub(crate) async fn auth_change(emu: &Emulator, add: &[String], del: &[String]) -> Option<Outcome> {
    let url = emu.callback_url()?;
    let (delivery, now) = emu.with_state(|s, now| {
        let id = s.next_delivery;
        s.next_delivery += 1;
        (id, now)
    });
    let plain = crypto::auth_change_plaintext(&emu.config().corp_id, now / 1000, add, del);
    let target = Target {
        delivery,
        event: KF_ACCOUNT_AUTH_CHANGE,
        open_kfid: "",
        token: "",
    };
    Some(post_encrypted(emu, &url, &target, &plain, now).await)
}

fn attempt(
    target: &Target<'_>,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    at: i64,
) -> DeliveryAttempt {
    DeliveryAttempt {
        delivery: target.delivery,
        event: target.event,
        attempt,
        open_kfid: target.open_kfid.to_string(),
        token: target.token.to_string(),
        ok: status == Some(200),
        status,
        error,
        at,
    }
}

/// Sends the URL-verification GET and reports whether the echo matched.
pub(crate) async fn verify(emu: &Emulator, url: Option<String>) -> Value {
    let Some(url) = url.or_else(|| emu.callback_url()) else {
        return json!({"ok": false, "error": "no callback URL configured"});
    };
    let Some(crypt) = emu.crypt() else {
        return json!({"ok": false, "error": "invalid EncodingAESKey"});
    };
    let echo = ids::digits(19);
    let encrypted = crypt.encrypt(&echo);
    let timestamp = emu.clock().now_secs().to_string();
    let nonce = ids::digits(10);
    let signature = crypt.sign(&timestamp, &nonce, &encrypted);
    let sep = if url.contains('?') { '&' } else { '?' };
    let echostr = utf8_percent_encode(&encrypted, NON_ALPHANUMERIC);
    let full_url = format!(
        "{url}{sep}msg_signature={signature}&timestamp={timestamp}&nonce={nonce}&echostr={echostr}"
    );
    match emu
        .http()
        .get(&full_url)
        .timeout(VERIFY_TIMEOUT)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let ok = status == 200 && body == echo;
            let received: String = body.chars().take(200).collect();
            json!({"ok": ok, "status": status, "expected": echo, "received": received})
        }
        Err(e) => {
            let error = if e.is_timeout() {
                "timeout (1 s)"
            } else {
                "request failed"
            };
            json!({"ok": false, "error": error, "expected": echo})
        }
    }
}
