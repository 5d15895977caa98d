//! The payload of each message type (the object under the key named like the `msgtype`).
//!
//! Fields the spec documents as always present are plain values; everything else is an
//! `Option` and is left out when re-encoded. Unknown extra fields are tolerated here and kept in
//! the message's raw JSON ([`Message::raw`](super::Message::raw)).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::{ChannelsSubType, lenient};
use crate::{MediaId, UserId};

/// `text`: a text message, or the label of a menu item the customer tapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text.
    pub content: String,
    /// Present when the customer tapped a `click` menu item: that item's `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu_id: Option<String>,
}

macro_rules! media_payload {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// The temporary media id; download it with `media/get` within 3 days.
            pub media_id: MediaId,
        }
    };
}

media_payload!(
    /// `image`: a picture.
    Image
);
media_payload!(
    /// `voice`: a voice note (AMR or SILK, per `voice_format` of the pull).
    Voice
);
media_payload!(
    /// `video`: a video.
    Video
);
media_payload!(
    /// `file`: a file.
    File
);

/// `location`: a shared location (received, and sent with `send_msg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude, −90…90 (sent as a number; a numeric string is accepted too).
    #[serde(deserialize_with = "lenient::f64_or_string")]
    pub latitude: f64,
    /// Longitude, −180…180 (sent as a number; a numeric string is accepted too).
    #[serde(deserialize_with = "lenient::f64_or_string")]
    pub longitude: f64,
    /// Name of the place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Address of the place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Location {
    /// A location at the given coordinates.
    pub fn new(latitude: f64, longitude: f64) -> Self {
        Self {
            latitude,
            longitude,
            name: None,
            address: None,
        }
    }

    /// Sets the place name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the address.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
}

/// `link`: a shared article or web page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Target URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Thumbnail URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pic_url: Option<String>,
}

/// `business_card`: a WeCom member's card shared in the chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessCard {
    /// The member whose card was shared (`userid`, not `user_id`).
    pub userid: UserId,
}

/// `miniprogram`: a mini program card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiniProgram {
    /// Card title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The mini program's appid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    /// The page the card opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagepath: Option<String>,
    /// Cover image media id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_media_id: Option<MediaId>,
}

/// `msgmenu`: a menu message. The same type is received in `sync_msg` and sent with
/// `send_msg` / `send_msg_on_event` (the client validates it against the documented limits).
///
/// ```
/// use wechat_kf::message::{MenuItem, MsgMenu};
///
/// let menu = MsgMenu::new()
///     .head("请选择：")
///     .item(MenuItem::click("101", "转人工"))
///     .item(MenuItem::view("https://example.com/faq", "常见问题"))
///     .tail("感谢咨询");
/// assert_eq!(menu.list[0].item_type(), "click");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgMenu {
    /// Text before the items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_content: Option<String>,
    /// The menu items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list: Vec<MenuItem>,
    /// Text after the items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_content: Option<String>,
}

impl MsgMenu {
    /// An empty menu.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the text before the items.
    pub fn head(mut self, head: impl Into<String>) -> Self {
        self.head_content = Some(head.into());
        self
    }

    /// Appends an item.
    pub fn item(mut self, item: MenuItem) -> Self {
        self.list.push(item);
        self
    }

    /// Sets the text after the items.
    pub fn tail(mut self, tail: impl Into<String>) -> Self {
        self.tail_content = Some(tail.into());
        self
    }
}

/// One item of a [`MsgMenu`], tagged by its `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MenuItem {
    /// `click`: tapping it sends a text message with `menu_id` = `id`.
    Click(MenuClick),
    /// `view`: opens a URL.
    View(MenuView),
    /// `miniprogram`: opens a mini program page.
    MiniProgram(MenuMiniProgram),
    /// `text`: plain text between items.
    Text(MenuText),
    /// An item type this library does not know, kept as its original JSON.
    Unknown(RawPayload),
}

impl MenuItem {
    /// A reply button: tapping it makes the customer send `content` with `menu_id` = `id`.
    pub fn click(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self::Click(MenuClick {
            id: Some(id.into()),
            content: content.into(),
        })
    }

    /// A link.
    pub fn view(url: impl Into<String>, content: impl Into<String>) -> Self {
        Self::View(MenuView {
            url: url.into(),
            content: content.into(),
        })
    }

    /// A mini program page.
    pub fn miniprogram(
        appid: impl Into<String>,
        pagepath: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Self::MiniProgram(MenuMiniProgram {
            appid: appid.into(),
            pagepath: pagepath.into(),
            content: content.into(),
        })
    }

    /// Plain text followed by a line break (`no_newline: 0`, as in the official example).
    pub fn text(content: impl Into<String>) -> Self {
        Self::Text(MenuText {
            content: content.into(),
            no_newline: Some(0),
        })
    }

    /// Plain text with no line break after it (`no_newline: 1`).
    pub fn text_without_newline(content: impl Into<String>) -> Self {
        Self::Text(MenuText {
            content: content.into(),
            no_newline: Some(1),
        })
    }

    /// The item's `type` on the wire (`unknown` for an item type this library does not know).
    pub fn item_type(&self) -> &str {
        match self {
            Self::Click(_) => "click",
            Self::View(_) => "view",
            Self::MiniProgram(_) => "miniprogram",
            Self::Text(_) => "text",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Whether tapping the item does something (every type but `text`).
    pub fn is_interactive(&self) -> bool {
        !matches!(self, Self::Text(_))
    }
}

/// A `click` menu item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuClick {
    /// Item id, echoed as `menu_id` when tapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Item label.
    pub content: String,
}

/// A `view` menu item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuView {
    /// URL to open.
    pub url: String,
    /// Item label.
    pub content: String,
}

/// A `miniprogram` menu item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuMiniProgram {
    /// Mini program appid.
    pub appid: String,
    /// Page path.
    pub pagepath: String,
    /// Item label.
    pub content: String,
}

/// A `text` menu item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuText {
    /// The text (`\n` as two characters produces a line break).
    pub content: String,
    /// 1 = no line break after the item; 0 or absent = line break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_newline: Option<u32>,
}

/// Wire shape of a menu item: `{"type": "...", "<type>": {...}}`.
#[derive(Serialize, Deserialize)]
struct MenuItemWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    click: Option<MenuClick>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    view: Option<MenuView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    miniprogram: Option<MenuMiniProgram>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<MenuText>,
}

impl Serialize for MenuItem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let empty = MenuItemWire {
            kind: "".into(),
            click: None,
            view: None,
            miniprogram: None,
            text: None,
        };
        let wire = match self {
            Self::Click(item) => MenuItemWire {
                kind: "click".into(),
                click: Some(item.clone()),
                ..empty
            },
            Self::View(item) => MenuItemWire {
                kind: "view".into(),
                view: Some(item.clone()),
                ..empty
            },
            Self::MiniProgram(item) => MenuItemWire {
                kind: "miniprogram".into(),
                miniprogram: Some(item.clone()),
                ..empty
            },
            Self::Text(item) => MenuItemWire {
                kind: "text".into(),
                text: Some(item.clone()),
                ..empty
            },
            Self::Unknown(raw) => return raw.serialize(serializer),
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MenuItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Keep the item's own JSON so that an unknown `type` survives untouched.
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let wire: MenuItemWire<'_> = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        let missing = |field: &'static str| D::Error::missing_field(field);
        Ok(match wire.kind.as_ref() {
            "click" => Self::Click(wire.click.ok_or_else(|| missing("click"))?),
            "view" => Self::View(wire.view.ok_or_else(|| missing("view"))?),
            "miniprogram" => {
                Self::MiniProgram(wire.miniprogram.ok_or_else(|| missing("miniprogram"))?)
            }
            "text" => Self::Text(wire.text.ok_or_else(|| missing("text"))?),
            _ => Self::Unknown(RawPayload(raw)),
        })
    }
}

/// `channels_shop_product`: a Channels shop product card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelsShopProduct {
    /// Product id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// Product image URL (`head_img`, not `head_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_img: Option<String>,
    /// Product title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Price in fen (分). Documented as a string; a number is accepted and kept as its text.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sales_price: Option<String>,
    /// Shop name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_nickname: Option<String>,
    /// Shop avatar URL (`shop_head_img`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_head_img: Option<String>,
}

/// `channels_shop_order`: a Channels shop order card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelsShopOrder {
    /// Order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Product titles, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_titles: Option<String>,
    /// Price as displayed, e.g. `¥39.80`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_wording: Option<String>,
    /// Order state as displayed, e.g. `待发货`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Shop name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_nickname: Option<String>,
}

/// `merged_msg`: a forwarded chat history (聊天记录).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedMsg {
    /// Title, e.g. `群聊的聊天记录`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The forwarded messages.
    #[serde(default)]
    pub item: Vec<MergedItem>,
}

/// One message inside a [`MergedMsg`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedItem {
    /// When the original message was sent (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_time: Option<u64>,
    /// The original message type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgtype: Option<String>,
    /// Display name of the original sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The original message as a JSON *string* (`{"msgtype":"text","text":{...}}`); decode it
    /// with [`MergedItem::content`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_content: Option<String>,
}

/// `channels`: a shared Channels (视频号) post, live stream or profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channels {
    /// What was shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<ChannelsSubType>,
    /// Channels account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Post title (only for posts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// A payload whose fields are undocumented (`meeting`, `schedule`, `note`), kept as raw JSON.
#[derive(Debug, Clone)]
pub struct RawPayload(pub Box<RawValue>);

impl RawPayload {
    /// The payload's JSON text as received.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parses the payload into any type (for callers who know more than the spec).
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for RawPayload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for RawPayload {}

impl Serialize for RawPayload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawPayload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}
