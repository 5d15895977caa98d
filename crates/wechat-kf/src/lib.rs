//! # wechat-kf
//!
//! A typed, lossless and fast Rust toolkit for WeChat Customer Service (微信客服, the WeCom
//! `cgi-bin/kf/*` API):
//!
//! * [`SyncMsgResponse`] and [`Message`]: every message and event `kf/sync_msg` can return, typed,
//!   with each message's original JSON kept ([`Message::raw`]) and unknown types preserved.
//! * [`crypto`]: the callback crypto (WXBizMsgCrypt), both directions.
//! * [`callback`]: the events inside a decrypted callback.
//! * `client` (feature `client`, on by default): the async API client, access tokens, every
//!   `kf/*` endpoint and the cursor puller.
//!
//! ```
//! let body = r#"{"errcode":0,"errmsg":"ok","next_cursor":"c1","has_more":0,"msg_list":[
//!   {"msgid":"m1","open_kfid":"wk1","external_userid":"wm1","send_time":1700000000,
//!    "origin":3,"msgtype":"text","text":{"content":"你好"}}]}"#;
//! let resp: wechat_kf::SyncMsgResponse = serde_json::from_str(body).unwrap();
//! assert_eq!(resp.msg_list[0].text().unwrap().content, "你好");
//! ```

pub mod callback;
pub mod crypto;
mod ids;
pub mod message;
mod scan;
pub mod session;
mod sync;
#[cfg(feature = "voice")]
pub mod voice;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "client")]
pub use client::{Client, ErrCode, Error};
pub use ids::*;
pub use message::*;
pub use sync::*;

/// The README's code blocks, compiled as doc-tests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
