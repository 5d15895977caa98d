//! `kf/account/*` and `kf/add_contact_way` (official docs 94661–94665).

use serde::{Deserialize, Serialize};

use super::execute::Call;
use super::{Client, Error};
use crate::{MediaId, OpenKfId};

/// Account endpoints; see [`Client::accounts`].
#[derive(Debug, Clone, Copy)]
pub struct Accounts<'c> {
    client: &'c Client,
}

/// `POST kf/account/add`.
#[derive(Debug, Clone, Serialize)]
pub struct AddAccountRequest {
    name: String,
    media_id: MediaId,
}

impl AddAccountRequest {
    /// An account named `name` (≤ 16 characters) with the avatar `media_id` (an image from
    /// `media/upload`).
    pub fn new(name: impl Into<String>, media_id: impl Into<MediaId>) -> Self {
        Self {
            name: name.into(),
            media_id: media_id.into(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        validate_name("name", &self.name)?;
        validate_avatar("media_id", self.media_id.as_str())
    }
}

/// Response of `kf/account/add`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AddAccountResponse {
    /// The new account's id.
    pub open_kfid: OpenKfId,
}

/// `POST kf/account/update`: only the fields set are changed.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateAccountRequest {
    open_kfid: OpenKfId,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_id: Option<MediaId>,
}

impl UpdateAccountRequest {
    /// Updates the account `open_kfid`.
    pub fn new(open_kfid: impl Into<OpenKfId>) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            name: None,
            media_id: None,
        }
    }

    /// A new name (≤ 16 characters).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A new avatar (an image media_id).
    pub fn media_id(mut self, media_id: impl Into<MediaId>) -> Self {
        self.media_id = Some(media_id.into());
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_open_kfid(&self.open_kfid)?;
        if let Some(name) = &self.name {
            validate_name("name", name)?;
        }
        if let Some(media_id) = &self.media_id {
            validate_avatar("media_id", media_id.as_str())?;
        }
        Ok(())
    }
}

/// `POST kf/account/list` with `offset`/`limit`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListAccountsRequest {
    offset: u32,
    limit: u32,
}

impl ListAccountsRequest {
    /// The first page of 100 accounts.
    pub fn new() -> Self {
        Self {
            offset: 0,
            limit: 100,
        }
    }

    /// Skips `offset` accounts.
    pub fn offset(mut self, offset: u32) -> Self {
        self.offset = offset;
        self
    }

    /// Page size, 1–100 (default 100).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
}

/// Response of `kf/account/list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct ListAccountsResponse {
    /// The accounts of this page.
    #[serde(default)]
    pub account_list: Vec<Account>,
}

/// One KF account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Account {
    /// The account id.
    pub open_kfid: OpenKfId,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Avatar URL.
    #[serde(default)]
    pub avatar: String,
    /// Whether the calling app may manage the account (absent for component apps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manage_privilege: Option<bool>,
}

/// `POST kf/add_contact_way`.
#[derive(Debug, Clone, Serialize)]
pub struct AddContactWayRequest {
    open_kfid: OpenKfId,
    #[serde(skip_serializing_if = "Option::is_none")]
    scene: Option<String>,
}

impl AddContactWayRequest {
    /// A contact link for `open_kfid`.
    pub fn new(open_kfid: impl Into<OpenKfId>) -> Self {
        Self {
            open_kfid: open_kfid.into(),
            scene: None,
        }
    }

    /// A developer-defined scene (≤ 32 bytes of `[0-9a-zA-Z_-]`), returned in `enter_session`.
    pub fn scene(mut self, scene: impl Into<String>) -> Self {
        self.scene = Some(scene.into());
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_open_kfid(&self.open_kfid)?;
        if let Some(scene) = &self.scene {
            if scene.len() > 32 {
                return Err(Error::validation("scene", "longer than 32 bytes"));
            }
            if !scene
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(Error::validation(
                    "scene",
                    "only [0-9a-zA-Z_-] characters are allowed",
                ));
            }
        }
        Ok(())
    }
}

/// Response of `kf/add_contact_way`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AddContactWayResponse {
    /// The chat link (may get `&scene_param=…` appended when a scene was given).
    pub url: String,
}

pub(crate) fn validate_open_kfid(open_kfid: &OpenKfId) -> Result<(), Error> {
    if open_kfid.as_str().is_empty() {
        return Err(Error::validation("open_kfid", "must not be empty"));
    }
    if open_kfid.as_str().len() > 64 {
        return Err(Error::validation("open_kfid", "longer than 64 bytes"));
    }
    Ok(())
}

fn validate_name(field: &str, name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err(Error::validation(field, "must not be empty"));
    }
    if chars > 16 {
        return Err(Error::validation(field, "longer than 16 characters"));
    }
    Ok(())
}

fn validate_avatar(field: &str, media_id: &str) -> Result<(), Error> {
    if media_id.is_empty() {
        return Err(Error::validation(field, "must not be empty"));
    }
    if media_id.len() > 128 {
        return Err(Error::validation(field, "longer than 128 bytes"));
    }
    Ok(())
}

#[derive(Serialize)]
struct OpenKfIdBody<'a> {
    open_kfid: &'a OpenKfId,
}

impl<'c> Accounts<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/account/add`: creates an account. Not retried blindly (a retry could create
    /// two accounts).
    pub async fn add(self, request: AddAccountRequest) -> Result<AddAccountResponse, Error> {
        request.validate()?;
        let call = Call::post("kf/account/add", &request)?.non_idempotent();
        self.client.execute_json(call).await
    }

    /// `POST kf/account/del`: deletes an account.
    pub async fn del(self, open_kfid: impl Into<OpenKfId>) -> Result<(), Error> {
        let open_kfid = open_kfid.into();
        validate_open_kfid(&open_kfid)?;
        let call = Call::post(
            "kf/account/del",
            &OpenKfIdBody {
                open_kfid: &open_kfid,
            },
        )?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/account/update`: renames an account or changes its avatar.
    pub async fn update(self, request: UpdateAccountRequest) -> Result<(), Error> {
        request.validate()?;
        let call = Call::post("kf/account/update", &request)?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/account/list`: one page of accounts (POST with `offset`/`limit`, the current
    /// method; official doc 94661).
    pub async fn list(self, request: ListAccountsRequest) -> Result<ListAccountsResponse, Error> {
        if !(1..=100).contains(&request.limit) {
            return Err(Error::validation("limit", "must be 1..=100"));
        }
        let call = Call::post("kf/account/list", &request)?;
        self.client.execute_json(call).await
    }

    /// Every account: pages through `kf/account/list` with `offset += limit` until a page comes
    /// back with fewer than `limit` items (the response has no `has_more`).
    pub async fn list_all(self) -> Result<Vec<Account>, Error> {
        const LIMIT: u32 = 100;
        let mut all = Vec::new();
        let mut offset = 0u32;
        loop {
            let page = self
                .list(ListAccountsRequest::new().offset(offset).limit(LIMIT))
                .await?;
            let count = page.account_list.len();
            all.extend(page.account_list);
            if count < LIMIT as usize {
                return Ok(all);
            }
            offset = offset.saturating_add(LIMIT);
        }
    }

    /// `POST kf/add_contact_way`: a chat link for an account.
    pub async fn add_contact_way(
        self,
        request: AddContactWayRequest,
    ) -> Result<AddContactWayResponse, Error> {
        request.validate()?;
        let call = Call::post("kf/add_contact_way", &request)?;
        self.client.execute_json(call).await
    }
}
