//! `GET /v1/accounts`: the accounts with their servicers and status, as WeChat lists them
//! (`kf/account/list`, official doc 94661; `kf/servicer/list`, official doc 94645), beside the
//! accounts this service pulls. The console's Accounts page shows the same body.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use wechat_kf::client::Client;

use super::auth::{Authorized, BearerToken};
use super::error::ErrorBody;
use crate::config::Secret;
use crate::error::safe_error;
use crate::metrics::Metrics;
use crate::puller::Pullers;

/// The most accounts whose servicers one answer asks WeChat for (one call each).
const MAX_SERVICER_LOOKUPS: usize = 50;

/// What `GET /v1/accounts` reads. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AccountsState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The reply API's token; `None`: the route is not mounted.
    token: Secret,
    client: Client,
    pullers: Arc<Pullers>,
    metrics: Arc<Metrics>,
}

impl BearerToken for AccountsState {
    fn bearer_token(&self) -> &Secret {
        &self.inner.token
    }

    fn auth_metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

impl AccountsState {
    pub(crate) fn new(
        token: Secret,
        client: Client,
        pullers: Arc<Pullers>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AccountsState {
            inner: Arc::new(Inner {
                token,
                client,
                pullers,
                metrics,
            }),
        }
    }
}

/// A servicer of an account (a member, or a department whose members all serve).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ServicerBody {
    /// The member, for a member entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) userid: Option<String>,
    /// The department, for a department entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) department_id: Option<u64>,
    /// `receiving` (status 0), `stopped` (status 1, stop_type 0), `suspended` (status 1,
    /// stop_type 1); absent without manage permission on the account, or for a department.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<&'static str>,
}

/// An account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct AccountBody {
    /// The account.
    pub(crate) open_kfid: String,
    /// Its name, when WeChat listed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// This service pulls its messages.
    pub(crate) pulled: bool,
    /// Its servicers (empty when they could not be read: see `error`).
    pub(crate) servicers: Vec<ServicerBody>,
    /// Why its servicers could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// `GET /v1/accounts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct AccountList {
    /// The accounts WeChat lists, then those pulled that it did not list.
    pub(crate) accounts: Vec<AccountBody>,
    /// Why WeChat's list could not be read (the pulled accounts are still listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

fn status_word(status: Option<u32>, stop_type: Option<u32>) -> Option<&'static str> {
    match (status?, stop_type) {
        (0, _) => Some("receiving"),
        (1, Some(1)) => Some("suspended"),
        (1, _) => Some("stopped"),
        _ => Some("unknown"),
    }
}

/// The accounts and their servicers (what the route below answers and the console shows).
pub(crate) async fn list(client: &Client, pullers: &Pullers, metrics: &Metrics) -> AccountList {
    let pulled = pullers.accounts();
    let (listed, error) = match client.accounts().list_all().await {
        Ok(listed) => (listed, None),
        Err(e) => {
            metrics.api_error("kf/account/list", &e);
            (Vec::new(), Some(safe_error(&e)))
        }
    };
    let mut accounts: Vec<AccountBody> = listed
        .into_iter()
        .map(|a| AccountBody {
            pulled: pulled.contains(&a.open_kfid),
            open_kfid: a.open_kfid.to_string(),
            name: Some(a.name),
            servicers: Vec::new(),
            error: None,
        })
        .collect();
    for open_kfid in pulled {
        if !accounts.iter().any(|a| a.open_kfid == open_kfid.as_str()) {
            accounts.push(AccountBody {
                open_kfid: open_kfid.to_string(),
                name: None,
                pulled: true,
                servicers: Vec::new(),
                error: None,
            });
        }
    }
    for account in accounts.iter_mut().take(MAX_SERVICER_LOOKUPS) {
        match client.servicers().list(account.open_kfid.as_str()).await {
            Ok(list) => {
                account.servicers = list
                    .servicer_list
                    .into_iter()
                    .map(|s| ServicerBody {
                        userid: s.userid.map(|u| u.as_str().to_owned()),
                        department_id: s.department_id,
                        status: status_word(s.status, s.stop_type),
                    })
                    .collect();
            }
            Err(e) => {
                metrics.api_error("kf/servicer/list", &e);
                account.error = Some(safe_error(&e));
            }
        }
    }
    AccountList { accounts, error }
}

/// The accounts routes (the reply API's token).
pub(crate) fn routes(state: AccountsState) -> axum::Router {
    axum::Router::new()
        .route("/v1/accounts", axum::routing::get(accounts))
        .with_state(state)
}

/// The accounts WeChat lists and those this service pulls, each with its servicers and their
/// status (`receiving`, `stopped`, `suspended`). One call to WeChat for the list and one per
/// account (at most 50) for its servicers.
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "operations API",
    responses(
        (status = 200, description = "The accounts (also when WeChat could not be read: see `error`).", body = AccountList),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "The reply API is disabled.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn accounts(
    State(state): State<AccountsState>,
    _: Authorized,
) -> Json<AccountList> {
    let inner = &state.inner;
    Metrics::add(&inner.metrics.api_requests_ok, 1);
    Json(list(&inner.client, &inner.pullers, &inner.metrics).await)
}

#[cfg(test)]
mod tests {
    use super::status_word;

    #[test]
    fn servicer_statuses_are_named() {
        assert_eq!(status_word(Some(0), None), Some("receiving"));
        assert_eq!(status_word(Some(1), Some(0)), Some("stopped"));
        assert_eq!(status_word(Some(1), Some(1)), Some("suspended"));
        assert_eq!(status_word(None, None), None);
        assert_eq!(status_word(Some(7), None), Some("unknown"));
    }
}
