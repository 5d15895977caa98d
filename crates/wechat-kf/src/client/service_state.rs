//! `kf/service_state/get` and `kf/service_state/trans` (official doc 94669).

use serde::{Deserialize, Serialize};

use super::accounts::validate_open_kfid;
use super::execute::Call;
use super::{Client, Error};
use crate::session::ServiceState;
use crate::{ExternalUserId, OpenKfId, UserId};

/// Session state endpoints; see [`Client::service_state`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceStates<'c> {
    client: &'c Client,
}

/// Response of `kf/service_state/get`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceStateInfo {
    /// The session state.
    pub service_state: ServiceState,
    /// The servicer (meaningful in state 3). The field is `servicer_userid` (official doc 94669), not `service_userid` as some SDKs read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servicer_userid: Option<UserId>,
}

/// `POST kf/service_state/trans`.
#[derive(Debug, Clone, Serialize)]
pub struct TransServiceStateRequest {
    open_kfid: OpenKfId,
    external_userid: ExternalUserId,
    service_state: ServiceState,
    #[serde(skip_serializing_if = "Option::is_none")]
    servicer_userid: Option<UserId>,
}

impl TransServiceStateRequest {
    /// Moves the session of `external_userid` on `open_kfid` into `state`.
    pub fn new(
        open_kfid: impl Into<OpenKfId>,
        external_userid: impl Into<ExternalUserId>,
        state: ServiceState,
    ) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
            service_state: state,
            servicer_userid: None,
        }
    }

    /// The servicer to assign (required when the target state is 3).
    pub fn servicer_userid(mut self, userid: impl Into<UserId>) -> Self {
        self.servicer_userid = Some(userid.into());
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_open_kfid(&self.open_kfid)?;
        if self.external_userid.as_str().is_empty() {
            return Err(Error::validation("external_userid", "must not be empty"));
        }
        if self.service_state == ServiceState::Human
            && self
                .servicer_userid
                .as_ref()
                .is_none_or(|u| u.as_str().is_empty())
        {
            return Err(Error::validation(
                "servicer_userid",
                "required when the target state is 3 (human)",
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct TransResponse {
    #[serde(default)]
    msg_code: Option<String>,
}

impl<'c> ServiceStates<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/service_state/get`.
    pub async fn get(
        self,
        open_kfid: impl Into<OpenKfId>,
        external_userid: impl Into<ExternalUserId>,
    ) -> Result<ServiceStateInfo, Error> {
        #[derive(Serialize)]
        struct Body {
            open_kfid: OpenKfId,
            external_userid: ExternalUserId,
        }
        let body = Body {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
        };
        validate_open_kfid(&body.open_kfid)?;
        let call = Call::post("kf/service_state/get", &body)?;
        let mut info: ServiceStateInfo = self.client.execute_json(call).await?;
        if info
            .servicer_userid
            .as_ref()
            .is_some_and(|u| u.as_str().is_empty())
        {
            info.servicer_userid = None;
        }
        Ok(info)
    }

    /// `POST kf/service_state/trans`: returns the `msg_code` for `send_msg_on_event`, when the
    /// server issued one (first entry into 2 or 3, entry into 4). Not retried blindly: a
    /// repeated transition could fail or issue a second code.
    pub async fn trans(self, request: TransServiceStateRequest) -> Result<Option<String>, Error> {
        request.validate()?;
        let call = Call::post("kf/service_state/trans", &request)?.non_idempotent();
        let response: TransResponse = self.client.execute_json(call).await?;
        Ok(response.msg_code.filter(|c| !c.is_empty()))
    }
}
