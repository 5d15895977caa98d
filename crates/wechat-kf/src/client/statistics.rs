//! `kf/get_corp_statistic` and `kf/get_servicer_statistic` (official docs 95489, 95490).

use serde::{Deserialize, Serialize};

use super::accounts::validate_open_kfid;
use super::execute::Call;
use super::{Client, Error};
use crate::{OpenKfId, UserId};

/// Statistics endpoints; see [`Client::statistics`].
#[derive(Debug, Clone, Copy)]
pub struct Statistics<'c> {
    client: &'c Client,
}

/// The body of both statistics calls.
#[derive(Debug, Clone, Serialize)]
pub struct StatisticsRequest {
    open_kfid: OpenKfId,
    start_time: u32,
    end_time: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    servicer_userid: Option<UserId>,
}

impl StatisticsRequest {
    /// Days from `start_time` to `end_time` inclusive (unix timestamps of China-time midnights;
    /// at most 31 days, within the last 180).
    pub fn new(open_kfid: impl Into<OpenKfId>, start_time: u32, end_time: u32) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            start_time,
            end_time,
            servicer_userid: None,
        }
    }

    /// For `get_servicer_statistic`: one servicer instead of the account aggregate.
    pub fn servicer_userid(mut self, userid: impl Into<UserId>) -> Self {
        self.servicer_userid = Some(userid.into());
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_open_kfid(&self.open_kfid)?;
        if self.end_time < self.start_time {
            return Err(Error::validation("end_time", "before start_time"));
        }
        // 31 days inclusive = 30 full days between the two midnights.
        if self.end_time - self.start_time > 30 * 86_400 + 86_399 {
            return Err(Error::validation(
                "end_time",
                "the range spans more than 31 days",
            ));
        }
        Ok(())
    }
}

/// Response of `kf/get_corp_statistic`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct CorpStatisticResponse {
    /// One entry per day.
    #[serde(default)]
    pub statistic_list: Vec<CorpStatisticEntry>,
}

/// One day of corp statistics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CorpStatisticEntry {
    /// The day's 00:00 timestamp.
    pub stat_time: u64,
    /// The figures (absent for days without data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<CorpStatistic>,
}

/// Corp-level figures of one day.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct CorpStatistic {
    /// Sessions assigned to a servicer or the bot.
    #[serde(default)]
    pub session_cnt: u64,
    /// Distinct customers who sent messages.
    #[serde(default)]
    pub customer_cnt: u64,
    /// Customer messages.
    #[serde(default)]
    pub customer_msg_cnt: u64,
    /// Customers who added a specialist or joined a group.
    #[serde(default)]
    pub upgrade_service_customer_cnt: u64,
    /// Sessions handed to the bot.
    #[serde(default)]
    pub ai_session_reply_cnt: u64,
    /// Share of bot sessions transferred to humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_transfer_rate: Option<f64>,
    /// Share of bot-received messages that hit the knowledge base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_knowledge_hit_rate: Option<f64>,
    /// Customers set to "do not receive messages".
    #[serde(default)]
    pub msg_rejected_customer_cnt: u64,
}

/// Response of `kf/get_servicer_statistic`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct ServicerStatisticResponse {
    /// One entry per day.
    #[serde(default)]
    pub statistic_list: Vec<ServicerStatisticEntry>,
}

/// One day of servicer statistics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ServicerStatisticEntry {
    /// The day's 00:00 timestamp.
    pub stat_time: u64,
    /// The figures (absent for days without data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<ServicerStatistic>,
}

/// Servicer-level figures of one day. Rates are absent when they cannot be computed.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct ServicerStatistic {
    /// Sessions.
    #[serde(default)]
    pub session_cnt: u64,
    /// Customers.
    #[serde(default)]
    pub customer_cnt: u64,
    /// Customer messages.
    #[serde(default)]
    pub customer_msg_cnt: u64,
    /// Reply rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_rate: Option<f64>,
    /// Average first-reply time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_reply_average_sec: Option<f64>,
    /// Satisfaction surveys sent (the wire name is spelled "investgate").
    #[serde(default)]
    pub satisfaction_investgate_cnt: u64,
    /// Survey participation rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satisfaction_participation_rate: Option<f64>,
    /// Share of "satisfied" answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satisfied_rate: Option<f64>,
    /// Share of "middling" answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middling_rate: Option<f64>,
    /// Share of "dissatisfied" answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dissatisfied_rate: Option<f64>,
    /// Customers who added a specialist or joined a group.
    #[serde(default)]
    pub upgrade_service_customer_cnt: u64,
    /// Specialist invitations sent.
    #[serde(default)]
    pub upgrade_service_member_invite_cnt: u64,
    /// Customers who added a specialist.
    #[serde(default)]
    pub upgrade_service_member_customer_cnt: u64,
    /// Group invitations sent.
    #[serde(default)]
    pub upgrade_service_groupchat_invite_cnt: u64,
    /// Customers who joined a group.
    #[serde(default)]
    pub upgrade_service_groupchat_customer_cnt: u64,
    /// Customers set to "do not receive messages".
    #[serde(default)]
    pub msg_rejected_customer_cnt: u64,
}

impl<'c> Statistics<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/get_corp_statistic`. A `servicer_userid` set on the request is not sent.
    pub async fn corp(
        self,
        mut request: StatisticsRequest,
    ) -> Result<CorpStatisticResponse, Error> {
        request.servicer_userid = None;
        request.validate()?;
        let call = Call::post("kf/get_corp_statistic", &request)?;
        self.client.execute_json(call).await
    }

    /// `POST kf/get_servicer_statistic`.
    pub async fn servicer(
        self,
        request: StatisticsRequest,
    ) -> Result<ServicerStatisticResponse, Error> {
        request.validate()?;
        let call = Call::post("kf/get_servicer_statistic", &request)?;
        self.client.execute_json(call).await
    }
}
