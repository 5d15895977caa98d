//! `kf/servicer/*` (official docs 94646, 94647, 94645).

use serde::{Deserialize, Serialize};

use super::accounts::validate_open_kfid;
use super::execute::Call;
use super::{Client, Error};
use crate::{OpenKfId, UserId};

/// Servicer endpoints; see [`Client::servicers`].
#[derive(Debug, Clone, Copy)]
pub struct Servicers<'c> {
    client: &'c Client,
}

/// The body of `kf/servicer/add` and `kf/servicer/del`: users and/or departments.
#[derive(Debug, Clone, Serialize)]
pub struct ServicerRequest {
    open_kfid: OpenKfId,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    userid_list: Vec<UserId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    department_id_list: Vec<u64>,
}

impl ServicerRequest {
    /// A request for the account `open_kfid`; add users and/or departments (at least one).
    pub fn new(open_kfid: impl Into<OpenKfId>) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            userid_list: Vec::new(),
            department_id_list: Vec::new(),
        }
    }

    /// Adds WeCom users (≤ 100 per call).
    pub fn userids(mut self, userids: impl IntoIterator<Item = impl Into<UserId>>) -> Self {
        self.userid_list.extend(userids.into_iter().map(Into::into));
        self
    }

    /// Adds departments (≤ 100 per call). Ids are numbers on the wire.
    pub fn department_ids(mut self, ids: impl IntoIterator<Item = u64>) -> Self {
        self.department_id_list.extend(ids);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_open_kfid(&self.open_kfid)?;
        if self.userid_list.is_empty() && self.department_id_list.is_empty() {
            return Err(Error::validation(
                "userid_list",
                "give at least one userid or department id",
            ));
        }
        if self.userid_list.len() > 100 {
            return Err(Error::validation("userid_list", "more than 100 ids"));
        }
        if self.department_id_list.len() > 100 {
            return Err(Error::validation("department_id_list", "more than 100 ids"));
        }
        if self.userid_list.iter().any(|u| u.as_str().is_empty()) {
            return Err(Error::validation("userid_list", "contains an empty userid"));
        }
        Ok(())
    }
}

/// Response of `kf/servicer/add` / `del`: one result per id. A top-level success does not mean
/// every item succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct ServicerResultList {
    /// Per-item results.
    #[serde(default)]
    pub result_list: Vec<ServicerResult>,
}

/// One item of [`ServicerResultList`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServicerResult {
    /// The user, for a user item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<UserId>,
    /// The department, for a department item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department_id: Option<u64>,
    /// 0 on success (including "ignored").
    #[serde(default)]
    pub errcode: i64,
    /// `success`, `ignored` or an error text.
    #[serde(default)]
    pub errmsg: String,
}

impl ServicerResult {
    /// Whether this item succeeded (or was ignored because there was nothing to do).
    pub fn is_ok(&self) -> bool {
        self.errcode == 0
    }
}

/// Response of `kf/servicer/list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct ServicersResponse {
    /// Users and departments.
    #[serde(default)]
    pub servicer_list: Vec<ServicerEntry>,
}

/// One entry of `servicer_list`: a user (with `userid`) or a department (with `department_id`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServicerEntry {
    /// The user, for a user entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<UserId>,
    /// The department, for a department entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department_id: Option<u64>,
    /// 0 = receiving, 1 = stopped (needs manage permission; note the
    /// `servicer_status_change` event uses 1/2 instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// When `status` is 1: 0 = stopped, 1 = temporarily suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_type: Option<u32>,
}

impl<'c> Servicers<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/servicer/add`.
    pub async fn add(self, request: ServicerRequest) -> Result<ServicerResultList, Error> {
        request.validate()?;
        let call = Call::post("kf/servicer/add", &request)?;
        self.client.execute_json(call).await
    }

    /// `POST kf/servicer/del`.
    pub async fn del(self, request: ServicerRequest) -> Result<ServicerResultList, Error> {
        request.validate()?;
        let call = Call::post("kf/servicer/del", &request)?;
        self.client.execute_json(call).await
    }

    /// `GET kf/servicer/list?open_kfid=…`.
    pub async fn list(self, open_kfid: impl Into<OpenKfId>) -> Result<ServicersResponse, Error> {
        let open_kfid = open_kfid.into();
        validate_open_kfid(&open_kfid)?;
        let call = Call::get("kf/servicer/list").query("open_kfid", open_kfid.into_string());
        self.client.execute_json(call).await
    }
}
