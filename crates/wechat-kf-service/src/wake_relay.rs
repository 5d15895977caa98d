//! Callbacks on every instance (PostgreSQL): a standby verifies and decrypts a callback like
//! the leader, answers `200 success`, and passes the wake to the leader with `NOTIFY`; the
//! leader `LISTEN`s and wakes the account's puller. So a load balancer may send a callback to
//! any instance, and a callback that reaches a standby is pulled at once rather than at the
//! next safety pull.
//!
//! Notifications are per database and schemas are not: the payload names the sender's schema
//! (`current_schema()`), and a leader acts only on its own. A wake lost on the way (the
//! leader's listening connection was being replaced) is caught by the safety pull, as any lost
//! callback is.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use wechat_kf::OpenKfId;

use crate::error::Error;
use crate::puller::Pullers;
use crate::store::connect_error;

/// The notification channel.
const CHANNEL: &str = "wechat_kf_wake";

/// Pause before the leader's listening connection is opened again.
const RECONNECT: Duration = Duration::from_secs(1);

/// A wake on its way to the leader.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Payload {
    schema: String,
    /// The account; none for callbacks that name none (every account is woken).
    open_kfid: Option<OpenKfId>,
    /// The callback's Token (what `sync_msg` pulls with).
    token: Option<String>,
}

/// A standby's side: sends wakes to the leader (one connection, opened when first needed).
pub(crate) struct Relay {
    url: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay to the leader of the database at `url`.
    pub(crate) fn new(url: &str) -> Relay {
        Relay {
            url: url.to_owned(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// Passes a wake to the leader. An error (the database is unreachable) is the caller's to
    /// answer: WeChat retries a callback that was not answered `200`.
    pub(crate) async fn send(
        &self,
        open_kfid: Option<&OpenKfId>,
        token: Option<&str>,
    ) -> Result<(), Error> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            let (fresh, connection) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(|e| connect_error(&self.url, &e))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            *client = Some(fresh);
        }
        let Some(open) = client.as_ref() else {
            return Err(Error::Config("no connection".into()));
        };
        let sent = open
            .execute(
                "SELECT pg_notify($1, json_build_object('schema', current_schema(), \
                 'open_kfid', $2::text, 'token', $3::text)::text)",
                &[&CHANNEL, &open_kfid.map(OpenKfId::as_str), &token],
            )
            .await;
        if let Err(e) = sent {
            *client = None;
            return Err(e.into());
        }
        Ok(())
    }
}

/// The leader's side: listens for the standbys' wakes until `shutdown`, reconnecting when the
/// connection ends.
pub(crate) async fn listen(url: String, pullers: Arc<Pullers>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match listen_once(&url, &pullers, &shutdown).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                // One line per outage, not per attempt.
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot listen for callbacks relayed by standbys; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

async fn listen_once(
    url: &str,
    pullers: &Pullers,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| connect_error(url, &e))?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if tx.send(n.payload().to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await?
        .get(0);
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    tracing::debug!("listening for callbacks relayed by standbys");
    loop {
        let payload = tokio::select! {
            () = shutdown.cancelled() => break,
            payload = notifications.recv() => match payload {
                Some(payload) => payload,
                None => break,
            },
        };
        let Ok(wake) = serde_json::from_str::<Payload>(&payload) else {
            continue;
        };
        if Some(&wake.schema) != schema.as_ref() {
            continue;
        }
        match &wake.open_kfid {
            Some(open_kfid) => {
                pullers.wake(open_kfid, wake.token);
            }
            None => pullers.wake_all(wake.token),
        }
    }
    driver.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_schema_and_may_name_no_account() {
        let wake: Payload =
            serde_json::from_str(r#"{"schema":"wk_1","open_kfid":null,"token":"T"}"#).unwrap();
        assert_eq!(wake.open_kfid, None);
        assert_eq!(wake.token.as_deref(), Some("T"));
        let wake: Payload =
            serde_json::from_str(r#"{"schema":"wk_1","open_kfid":"wkA","token":null}"#).unwrap();
        assert_eq!(wake.open_kfid, Some(OpenKfId::from("wkA")));
    }
}
