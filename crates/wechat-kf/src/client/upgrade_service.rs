//! "Upgrade service" (升级服务): `kf/customer/get_upgrade_service_config`,
//! `kf/customer/upgrade_service`, `kf/customer/cancel_upgrade_service` (official doc 94674).

use serde::{Deserialize, Serialize};

use super::accounts::validate_open_kfid;
use super::execute::Call;
use super::{Client, Error};
use crate::{ExternalUserId, OpenKfId, UserId};

/// Upgrade-service endpoints; see [`Client::upgrade_service`].
#[derive(Debug, Clone, Copy)]
pub struct UpgradeService<'c> {
    client: &'c Client,
}

/// Response of `kf/customer/get_upgrade_service_config`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct UpgradeServiceConfig {
    /// Configured specialists.
    #[serde(default)]
    pub member_range: MemberRange,
    /// Configured customer groups.
    #[serde(default)]
    pub groupchat_range: GroupchatRange,
}

/// Specialists of the upgrade-service configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct MemberRange {
    /// Members.
    #[serde(default)]
    pub userid_list: Vec<UserId>,
    /// Departments (numbers on the wire, official doc 94674; some SDKs read strings).
    #[serde(default)]
    pub department_id_list: Vec<u64>,
}

/// Customer groups of the upgrade-service configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct GroupchatRange {
    /// Group chat ids.
    #[serde(default)]
    pub chat_id_list: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    userid: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wording: Option<String>,
}

/// `POST kf/customer/upgrade_service`: recommend a specialist (type 1) or a group (type 2).
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeServiceRequest {
    open_kfid: OpenKfId,
    external_userid: ExternalUserId,
    #[serde(rename = "type")]
    kind: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groupchat: Option<Target>,
}

impl UpgradeServiceRequest {
    /// Recommends the specialist `userid` to the customer.
    pub fn member(
        open_kfid: impl Into<OpenKfId>,
        external_userid: impl Into<ExternalUserId>,
        userid: impl Into<UserId>,
    ) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
            kind: 1,
            member: Some(Target {
                userid: Some(userid.into()),
                chat_id: None,
                wording: None,
            }),
            groupchat: None,
        }
    }

    /// Recommends the customer group `chat_id`.
    pub fn groupchat(
        open_kfid: impl Into<OpenKfId>,
        external_userid: impl Into<ExternalUserId>,
        chat_id: impl Into<String>,
    ) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
            kind: 2,
            member: None,
            groupchat: Some(Target {
                userid: None,
                chat_id: Some(chat_id.into()),
                wording: None,
            }),
        }
    }

    /// The recommendation text.
    pub fn wording(mut self, wording: impl Into<String>) -> Self {
        let wording = Some(wording.into());
        if let Some(target) = self.member.as_mut().or(self.groupchat.as_mut()) {
            target.wording = wording;
        }
        self
    }
}

#[derive(Serialize)]
struct SessionBody {
    open_kfid: OpenKfId,
    external_userid: ExternalUserId,
}

impl<'c> UpgradeService<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `GET kf/customer/get_upgrade_service_config`.
    pub async fn config(self) -> Result<UpgradeServiceConfig, Error> {
        self.client
            .execute_json(Call::get("kf/customer/get_upgrade_service_config"))
            .await
    }

    /// `POST kf/customer/upgrade_service` (95021 when the target is not configured).
    pub async fn upgrade(self, request: UpgradeServiceRequest) -> Result<(), Error> {
        validate_open_kfid(&request.open_kfid)?;
        let call = Call::post("kf/customer/upgrade_service", &request)?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/customer/cancel_upgrade_service`.
    pub async fn cancel(
        self,
        open_kfid: impl Into<OpenKfId>,
        external_userid: impl Into<ExternalUserId>,
    ) -> Result<(), Error> {
        let body = SessionBody {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
        };
        validate_open_kfid(&body.open_kfid)?;
        let call = Call::post("kf/customer/cancel_upgrade_service", &body)?;
        self.client.execute_unit(call).await
    }
}
