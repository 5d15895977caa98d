//! The events inside a decrypted callback (official doc 94670; `kf_account_auth_change`: official doc 97712).
//!
//! A KF callback never carries message content: `kf_msg_or_event` only says "account X has new
//! data, pull it with this token" (pass [`KfMsgOrEvent::token`] and [`KfMsgOrEvent::open_kfid`]
//! to `kf/sync_msg`). `kf_account_auth_change` tells a third-party app which accounts it gained or
//! lost. Anything else is kept as [`CallbackEvent::Unknown`] with its raw XML.
//!
//! ```
//! use wechat_kf::callback::CallbackEvent;
//!
//! let xml = "<xml><ToUserName><![CDATA[ww1]]></ToUserName><CreateTime>1348831860</CreateTime>\
//!            <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
//!            <Token><![CDATA[ENCApHxn]]></Token><OpenKfId><![CDATA[wkA]]></OpenKfId></xml>";
//! let CallbackEvent::KfMsgOrEvent(event) = CallbackEvent::from_xml(xml)? else { panic!() };
//! assert_eq!(event.token, "ENCApHxn");
//! assert_eq!(event.open_kfid.as_ref().map(|id| id.as_str()), Some("wkA"));
//! # Ok::<(), wechat_kf::crypto::CryptoError>(())
//! ```

use std::borrow::Cow;

use serde::Serialize;

use crate::OpenKfId;
use crate::crypto::xml::{self, Step};
use crate::crypto::{CallbackCrypto, CryptoError};

/// A decrypted callback, parsed. Serializes to JSON with a `type` tag (`kf_msg_or_event`,
/// `kf_account_auth_change`, `unknown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallbackEvent {
    /// `kf_msg_or_event`: new messages or events wait in `kf/sync_msg`.
    KfMsgOrEvent(KfMsgOrEvent),
    /// `kf_account_auth_change`: accounts granted to or revoked from a third-party app.
    KfAccountAuthChange(KfAccountAuthChange),
    /// Any other callback, kept as raw XML.
    Unknown(UnknownEvent),
}

/// `kf_msg_or_event`: the trigger to call `kf/sync_msg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KfMsgOrEvent {
    /// `ToUserName`: the corp id.
    pub to_user_name: String,
    /// `CreateTime`: unix seconds.
    pub create_time: i64,
    /// `Token`: pass as `sync_msg.token`; valid for 10 minutes.
    pub token: String,
    /// `OpenKfId`: the account with new data (absent in callbacks from before 2023).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_kfid: Option<OpenKfId>,
}

/// `kf_account_auth_change`: a corp granted or revoked management of accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KfAccountAuthChange {
    /// `ToUserName`.
    pub to_user_name: String,
    /// `FromUserName` (`sys`), when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_user_name: Option<String>,
    /// `CreateTime`: unix seconds.
    pub create_time: i64,
    /// Every `AuthAddOpenKfId`, in document order.
    pub auth_add_open_kfid: Vec<OpenKfId>,
    /// Every `AuthDelOpenKfId`, in document order.
    pub auth_del_open_kfid: Vec<OpenKfId>,
}

/// A callback of a type this crate does not model; the raw XML is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownEvent {
    /// `MsgType`, when present.
    pub msg_type: Option<String>,
    /// `Event`, when present.
    pub event: Option<String>,
    /// `ToUserName`, when present.
    pub to_user_name: Option<String>,
    /// `CreateTime`, when present and numeric.
    pub create_time: Option<i64>,
    /// The whole decrypted XML, unchanged.
    pub raw: String,
}

impl CallbackEvent {
    /// Parses the decrypted (inner) callback XML.
    ///
    /// Tolerant of element order, whitespace, CDATA or plain text (entities decoded) and unknown
    /// elements; the first of duplicated single-valued elements wins. Fails with
    /// [`CryptoError::MalformedXml`] (-40002) on unreadable XML, or when a known event lacks a
    /// required element (`ToUserName`, `CreateTime`, and `Token` for `kf_msg_or_event`).
    pub fn from_xml(xml: &str) -> Result<CallbackEvent, CryptoError> {
        // WeCom's own form first, in one strict pass; anything unusual starts over on the
        // tolerant scanner, which reads the strict form identically.
        if let Some(mut scan) = xml::strict(xml) {
            let mut fields = Fields::default();
            loop {
                match scan.step() {
                    Step::Element(name, text) => fields.put(name, || Ok(Cow::Borrowed(text)))?,
                    Step::End => return fields.into_event(xml),
                    Step::Unusual => break,
                }
            }
        }
        Self::from_xml_general(xml)
    }

    /// [`from_xml`](Self::from_xml) through the tolerant scanner only, without the strict fast
    /// path; the same results, slower. Kept callable so that the differential tests and the fuzz
    /// target can hold the two to each other.
    #[doc(hidden)]
    pub fn from_xml_general(xml: &str) -> Result<CallbackEvent, CryptoError> {
        let mut fields = Fields::default();
        for element in xml::children(xml).map_err(CryptoError::MalformedXml)? {
            let element = element.map_err(CryptoError::MalformedXml)?;
            fields.put(element.name, || element.text())?;
        }
        fields.into_event(xml)
    }

    /// `ToUserName`, when the event has one.
    pub fn to_user_name(&self) -> Option<&str> {
        match self {
            Self::KfMsgOrEvent(e) => Some(&e.to_user_name),
            Self::KfAccountAuthChange(e) => Some(&e.to_user_name),
            Self::Unknown(e) => e.to_user_name.as_deref(),
        }
    }

    /// `CreateTime` (unix seconds), when the event has one.
    pub fn create_time(&self) -> Option<i64> {
        match self {
            Self::KfMsgOrEvent(e) => Some(e.create_time),
            Self::KfAccountAuthChange(e) => Some(e.create_time),
            Self::Unknown(e) => e.create_time,
        }
    }
}

/// The elements collected in one pass, before choosing the event type; borrowed from the XML so
/// that only the values kept are copied.
#[derive(Default)]
struct Fields<'a> {
    to_user_name: Option<Cow<'a, str>>,
    from_user_name: Option<Cow<'a, str>>,
    create_time: Option<Cow<'a, str>>,
    msg_type: Option<Cow<'a, str>>,
    event: Option<Cow<'a, str>>,
    token: Option<Cow<'a, str>>,
    open_kfid: Option<Cow<'a, str>>,
    auth_add: Vec<OpenKfId>,
    auth_del: Vec<OpenKfId>,
}

impl<'a> Fields<'a> {
    /// Records one element; `text` is only decoded when the element is kept (the first of
    /// duplicated single-valued elements wins, and its text alone may fail).
    #[inline]
    fn put(
        &mut self,
        name: &str,
        text: impl FnOnce() -> xml::XmlResult<Cow<'a, str>>,
    ) -> Result<(), CryptoError> {
        let slot = match name {
            "ToUserName" => &mut self.to_user_name,
            "FromUserName" => &mut self.from_user_name,
            "CreateTime" => &mut self.create_time,
            "MsgType" => &mut self.msg_type,
            "Event" => &mut self.event,
            "Token" => &mut self.token,
            "OpenKfId" => &mut self.open_kfid,
            "AuthAddOpenKfId" => {
                let id = text().map_err(CryptoError::MalformedXml)?;
                self.auth_add.push(OpenKfId::new(id));
                return Ok(());
            }
            "AuthDelOpenKfId" => {
                let id = text().map_err(CryptoError::MalformedXml)?;
                self.auth_del.push(OpenKfId::new(id));
                return Ok(());
            }
            _ => return Ok(()),
        };
        if slot.is_none() {
            *slot = Some(text().map_err(CryptoError::MalformedXml)?);
        }
        Ok(())
    }

    fn into_event(self, raw: &str) -> Result<CallbackEvent, CryptoError> {
        match self.event.as_deref() {
            Some("kf_msg_or_event") => Ok(CallbackEvent::KfMsgOrEvent(KfMsgOrEvent {
                to_user_name: required(self.to_user_name, "missing <ToUserName> element")?,
                create_time: create_time(self.create_time)?,
                token: required(self.token, "missing <Token> element")?,
                // An empty element is the same as an absent one.
                open_kfid: self
                    .open_kfid
                    .filter(|id| !id.is_empty())
                    .map(OpenKfId::new),
            })),
            Some("kf_account_auth_change") => {
                Ok(CallbackEvent::KfAccountAuthChange(KfAccountAuthChange {
                    to_user_name: required(self.to_user_name, "missing <ToUserName> element")?,
                    from_user_name: self.from_user_name.map(Cow::into_owned),
                    create_time: create_time(self.create_time)?,
                    auth_add_open_kfid: self.auth_add,
                    auth_del_open_kfid: self.auth_del,
                }))
            }
            _ => Ok(CallbackEvent::Unknown(UnknownEvent {
                msg_type: self.msg_type.map(Cow::into_owned),
                event: self.event.map(Cow::into_owned),
                to_user_name: self.to_user_name.map(Cow::into_owned),
                create_time: self.create_time.and_then(|t| t.parse().ok()),
                raw: raw.to_owned(),
            })),
        }
    }
}

// The event parser lives here, so the crypto module never needs to know about events.
impl CallbackCrypto {
    /// Verifies, decrypts and parses a POST body into a [`CallbackEvent`].
    ///
    /// Faster than [`decrypt_message`](Self::decrypt_message) followed by
    /// [`CallbackEvent::from_xml`]: the inner XML is parsed where it was decrypted.
    pub fn decrypt_event(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        body_xml: &str,
    ) -> Result<CallbackEvent, CryptoError> {
        self.decrypt_message_with(
            msg_signature,
            timestamp,
            nonce,
            body_xml,
            CallbackEvent::from_xml,
        )?
    }
}

fn required(value: Option<Cow<'_, str>>, missing: &'static str) -> Result<String, CryptoError> {
    value
        .map(Cow::into_owned)
        .ok_or(CryptoError::MalformedXml(missing))
}

fn create_time(value: Option<Cow<'_, str>>) -> Result<i64, CryptoError> {
    value
        .ok_or(CryptoError::MalformedXml("missing <CreateTime> element"))?
        .parse()
        .map_err(|_| CryptoError::MalformedXml("<CreateTime> is not an integer"))
}
