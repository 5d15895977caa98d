//! `kf/service_state/get` and `kf/service_state/trans` (endpoints.md §1.5).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::accounts::validate_open_kfid;
use super::execute::Call;
use super::{Client, Error};
use crate::{ExternalUserId, OpenKfId, UserId};

/// Session state endpoints; see [`Client::service_state`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceStates<'c> {
    client: &'c Client,
}

/// A session state (`service_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceState {
    /// 0 未处理: new, unhandled.
    New,
    /// 1 由智能助手接待: handled by the bot / the API.
    Bot,
    /// 2 待接入池排队中: queued for a servicer.
    Queued,
    /// 3 由人工接待: handled by a human servicer.
    Human,
    /// 4 已结束/未开始: ended or not started.
    Ended,
    /// A value the spec does not list.
    Other(u32),
}

impl ServiceState {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            ServiceState::New => 0,
            ServiceState::Bot => 1,
            ServiceState::Queued => 2,
            ServiceState::Human => 3,
            ServiceState::Ended => 4,
            ServiceState::Other(code) => code,
        }
    }

    /// The state for a number on the wire.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => ServiceState::New,
            1 => ServiceState::Bot,
            2 => ServiceState::Queued,
            3 => ServiceState::Human,
            4 => ServiceState::Ended,
            other => ServiceState::Other(other),
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ServiceState::New => "new",
            ServiceState::Bot => "bot",
            ServiceState::Queued => "queued",
            ServiceState::Human => "human",
            ServiceState::Ended => "ended",
            ServiceState::Other(_) => "other",
        };
        write!(f, "{} ({name})", self.code())
    }
}

impl Serialize for ServiceState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.code())
    }
}

impl<'de> Deserialize<'de> for ServiceState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u32::deserialize(deserializer).map(ServiceState::from_code)
    }
}

/// Response of `kf/service_state/get`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceStateInfo {
    /// The session state.
    pub service_state: ServiceState,
    /// The servicer (meaningful in state 3). The field is `servicer_userid` (pitfalls.md #1).
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
