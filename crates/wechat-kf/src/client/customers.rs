//! `kf/customer/batchget` (official doc 95159).

use serde::{Deserialize, Serialize};

use super::execute::Call;
use super::{Client, Error};
use crate::ExternalUserId;

/// Customer endpoints; see [`Client::customers`].
#[derive(Debug, Clone, Copy)]
pub struct Customers<'c> {
    client: &'c Client,
}

/// `POST kf/customer/batchget`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchGetCustomersRequest {
    external_userid_list: Vec<ExternalUserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    need_enter_session_context: Option<u32>,
}

impl BatchGetCustomersRequest {
    /// Profiles of 1–100 customers.
    pub fn new(ids: impl IntoIterator<Item = impl Into<ExternalUserId>>) -> Self {
        Self {
            external_userid_list: ids.into_iter().map(Into::into).collect(),
            need_enter_session_context: None,
        }
    }

    /// Also return the context of each customer's last `enter_session` within 48 h.
    pub fn need_enter_session_context(mut self, need: bool) -> Self {
        self.need_enter_session_context = Some(u32::from(need));
        self
    }
}

/// Response of `kf/customer/batchget`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct BatchGetCustomersResponse {
    /// The customers found.
    #[serde(default)]
    pub customer_list: Vec<Customer>,
    /// Ids that are unknown or not accessible.
    #[serde(default)]
    pub invalid_external_userid: Vec<ExternalUserId>,
}

/// A customer profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Customer {
    /// The customer's id.
    pub external_userid: ExternalUserId,
    /// WeChat nickname.
    #[serde(default)]
    pub nickname: String,
    /// Avatar URL (not for third-party apps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// 0 unknown, 1 male, 2 female.
    #[serde(default)]
    pub gender: u32,
    /// UnionID, when the corp bound a WeChat developer account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    /// The last `enter_session` context, when requested and present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enter_session_context: Option<EnterSessionContext>,
}

/// Context of a customer's last `enter_session`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct EnterSessionContext {
    /// The contact link's scene.
    #[serde(default)]
    pub scene: String,
    /// The appended scene_param.
    #[serde(default)]
    pub scene_param: String,
    /// Present when the customer came from Channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_channels: Option<WechatChannelsContext>,
}

/// Channels (视频号) information of an `enter_session` context.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct WechatChannelsContext {
    /// Channels name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Channels shop name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_nickname: Option<String>,
    /// Where the customer came from (1–5).
    #[serde(default)]
    pub scene: u32,
}

impl<'c> Customers<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/customer/batchget`.
    pub async fn batchget(
        self,
        request: BatchGetCustomersRequest,
    ) -> Result<BatchGetCustomersResponse, Error> {
        let count = request.external_userid_list.len();
        if !(1..=100).contains(&count) {
            return Err(Error::validation(
                "external_userid_list",
                format!("{count} ids; 1 to 100 are allowed"),
            ));
        }
        let call = Call::post("kf/customer/batchget", &request)?;
        self.client.execute_json(call).await
    }
}
