//! # wechat-kf
//!
//! A typed, lossless and fast Rust toolkit for WeChat Customer Service (微信客服, the WeCom
//! `cgi-bin/kf/*` API):
//!
//! * [`message`]: every message and event `kf/sync_msg` can return ([`message::SyncMsgResponse`],
//!   [`message::Message`]), typed, with each message's original JSON kept
//!   ([`message::Message::raw`]) and unknown types preserved.
//! * [`crypto`]: the callback crypto (WXBizMsgCrypt), both directions.
//! * [`callback`]: the events inside a decrypted callback.
//! * [`session`]: whether a reply may be sent now (session state, 48-hour window, quota), as pure
//!   functions of the observed messages.
//! * `client` (feature `client`, on by default): the async API client, access tokens, every
//!   `kf/*` endpoint and the cursor puller.
//! * `voice` (feature `voice`, on by default): voice-note conversion.
//!
//! ## Where things are
//!
//! Every public item has exactly one path:
//!
//! * the id newtypes shared by everything ([`OpenKfId`], [`ExternalUserId`], [`MsgId`],
//!   [`UserId`], [`MediaId`]) at the crate root;
//! * what WeChat sends you under [`message`] (inbound), and under [`callback`];
//! * the client's core (`Client`, `ClientBuilder`, `Error`, `ErrCode`, `RetryPolicy`, `Secret`)
//!   under `client`, and each endpoint group's handle, request and response types in a module
//!   named after the `Client` method that opens it: `client::messages` (`Client::messages`),
//!   `client::accounts`, `client::servicers`, `client::service_state`, `client::customers`,
//!   `client::upgrade_service`, `client::statistics`, `client::knowledge`, `client::media`;
//! * what you send under `client::outbound` (`OutboundMessage` and its payloads; menus and
//!   locations have one shape both ways and live in [`message`]);
//! * access-token storage under `client::token`, the cursor puller under `client::puller`.
//!
//! So `message::Text` is a text you received and `client::outbound::Text` one you send.
//!
//! ```
//! use wechat_kf::message::SyncMsgResponse;
//!
//! let body = r#"{"errcode":0,"errmsg":"ok","next_cursor":"c1","has_more":0,"msg_list":[
//!   {"msgid":"m1","open_kfid":"wk1","external_userid":"wm1","send_time":1700000000,
//!    "origin":3,"msgtype":"text","text":{"content":"你好"}}]}"#;
//! let resp: SyncMsgResponse = serde_json::from_str(body).unwrap();
//! assert_eq!(resp.msg_list[0].text().unwrap().content, "你好");
//! ```

#[cfg(feature = "answer")]
pub mod answer;
pub mod callback;
pub mod crypto;
mod ids;
pub mod message;
mod scan;
pub mod session;
#[cfg(feature = "voice")]
pub mod voice;

#[cfg(feature = "client")]
pub mod client;

pub use ids::*;

/// The README's code blocks, compiled as doc-tests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
