//! Outbound message payloads for `kf/send_msg` and `kf/send_msg_on_event` (official docs 94677
//! and 95122), with
//! local validation against the documented limits.
//!
//! Validation is deliberately strict: a field the server would silently truncate (link title and
//! description, mini-program title) is rejected instead, so nothing a caller wrote is cut without
//! notice. Menus follow the older, documented rule by default (≤ 10 items, click ids ≤ 64 bytes:
//! the error code 95008 still says "at most 10 menu items" and only one SDK reports the newer
//! limits); [`MenuRules::Extended`] opts into the newer ≤ 50 items with ≤ 10 interactive ones.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::ValidationError;
use crate::MediaId;
// Menus and locations have one shape both ways; the received types are the sent types, and
// they have one path: `crate::message`.
use crate::message::{Location, MenuItem, MsgMenu};

/// Which msgmenu limits to enforce (sources disagree; see `docs/vendor-notes.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MenuRules {
    /// The older, documented rule: at most 10 items in total; `click.id` ≤ 64 bytes.
    #[default]
    Strict,
    /// The newest SDK's rule: at most 50 items, of which click + view + miniprogram ≤ 10;
    /// `click.id` ≤ 128 bytes.
    Extended,
}

impl MenuRules {
    fn max_items(self) -> usize {
        match self {
            MenuRules::Strict => 10,
            MenuRules::Extended => 50,
        }
    }

    fn max_interactive(self) -> usize {
        10
    }

    fn max_click_id(self) -> usize {
        match self {
            MenuRules::Strict => 64,
            MenuRules::Extended => 128,
        }
    }
}

/// A message to send: one variant per outbound `msgtype`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OutboundMessage {
    /// `text`.
    Text(Text),
    /// `image` (a media_id from `media/upload?type=image`).
    Image(MediaPayload),
    /// `voice` (AMR).
    Voice(MediaPayload),
    /// `video` (MP4).
    Video(MediaPayload),
    /// `file`.
    File(MediaPayload),
    /// `link` (图文链接).
    Link(Link),
    /// `miniprogram`.
    MiniProgram(MiniProgram),
    /// `msgmenu`.
    MsgMenu(MsgMenu),
    /// `location`.
    Location(Location),
    /// `ca_link` (获客链接).
    CaLink(CaLink),
}

/// `text` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// 1–2048 bytes.
    pub content: String,
}

/// `image`/`voice`/`video`/`file` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPayload {
    /// A temporary media id of the matching type.
    pub media_id: MediaId,
}

/// `link` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Title, 1–128 bytes.
    pub title: String,
    /// Description, ≤ 512 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Target, ≤ 2048 bytes, `http://` or `https://`.
    pub url: String,
    /// Thumbnail (temporary image media id).
    pub thumb_media_id: MediaId,
}

impl Link {
    /// A link with its required fields.
    pub fn new(
        title: impl Into<String>,
        url: impl Into<String>,
        thumb_media_id: impl Into<MediaId>,
    ) -> Self {
        Self {
            title: title.into(),
            desc: None,
            url: url.into(),
            thumb_media_id: thumb_media_id.into(),
        }
    }

    /// Adds a description.
    pub fn desc(mut self, desc: impl Into<String>) -> Self {
        self.desc = Some(desc.into());
        self
    }
}

/// `miniprogram` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiniProgram {
    /// The mini program's appid (linked to the corp).
    pub appid: String,
    /// Title, ≤ 64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Cover image (temporary image media id).
    pub thumb_media_id: MediaId,
    /// Page path (WeCom asks for a `.html` suffix).
    pub pagepath: String,
}

impl MiniProgram {
    /// A mini-program card with its required fields.
    pub fn new(
        appid: impl Into<String>,
        thumb_media_id: impl Into<MediaId>,
        pagepath: impl Into<String>,
    ) -> Self {
        Self {
            appid: appid.into(),
            title: None,
            thumb_media_id: thumb_media_id.into(),
            pagepath: pagepath.into(),
        }
    }

    /// Adds a title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }
}

/// `ca_link` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaLink {
    /// A customer-acquisition link (e.g. `https://work.weixin.qq.com/ca/…`).
    pub link_url: String,
}

impl OutboundMessage {
    /// A text message.
    pub fn text(content: impl Into<String>) -> Self {
        OutboundMessage::Text(Text {
            content: content.into(),
        })
    }

    /// An image message.
    pub fn image(media_id: impl Into<MediaId>) -> Self {
        OutboundMessage::Image(MediaPayload {
            media_id: media_id.into(),
        })
    }

    /// A voice message.
    pub fn voice(media_id: impl Into<MediaId>) -> Self {
        OutboundMessage::Voice(MediaPayload {
            media_id: media_id.into(),
        })
    }

    /// A video message.
    pub fn video(media_id: impl Into<MediaId>) -> Self {
        OutboundMessage::Video(MediaPayload {
            media_id: media_id.into(),
        })
    }

    /// A file message.
    pub fn file(media_id: impl Into<MediaId>) -> Self {
        OutboundMessage::File(MediaPayload {
            media_id: media_id.into(),
        })
    }

    /// A link message.
    pub fn link(link: Link) -> Self {
        OutboundMessage::Link(link)
    }

    /// A mini-program card.
    pub fn miniprogram(miniprogram: MiniProgram) -> Self {
        OutboundMessage::MiniProgram(miniprogram)
    }

    /// A menu message.
    pub fn msgmenu(menu: MsgMenu) -> Self {
        OutboundMessage::MsgMenu(menu)
    }

    /// A location message.
    pub fn location(location: Location) -> Self {
        OutboundMessage::Location(location)
    }

    /// A customer-acquisition link.
    pub fn ca_link(link_url: impl Into<String>) -> Self {
        OutboundMessage::CaLink(CaLink {
            link_url: link_url.into(),
        })
    }

    /// The `msgtype` on the wire (also the payload's key).
    pub fn msgtype(&self) -> &'static str {
        match self {
            OutboundMessage::Text(_) => "text",
            OutboundMessage::Image(_) => "image",
            OutboundMessage::Voice(_) => "voice",
            OutboundMessage::Video(_) => "video",
            OutboundMessage::File(_) => "file",
            OutboundMessage::Link(_) => "link",
            OutboundMessage::MiniProgram(_) => "miniprogram",
            OutboundMessage::MsgMenu(_) => "msgmenu",
            OutboundMessage::Location(_) => "location",
            OutboundMessage::CaLink(_) => "ca_link",
        }
    }

    /// Writes `"msgtype": …` and the payload under its own key into a map being serialized.
    pub(crate) fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let msgtype = self.msgtype();
        map.serialize_entry("msgtype", msgtype)?;
        match self {
            OutboundMessage::Text(p) => map.serialize_entry(msgtype, p),
            OutboundMessage::Image(p)
            | OutboundMessage::Voice(p)
            | OutboundMessage::Video(p)
            | OutboundMessage::File(p) => map.serialize_entry(msgtype, p),
            OutboundMessage::Link(p) => map.serialize_entry(msgtype, p),
            OutboundMessage::MiniProgram(p) => map.serialize_entry(msgtype, p),
            OutboundMessage::MsgMenu(p) => map.serialize_entry(msgtype, p),
            OutboundMessage::Location(p) => map.serialize_entry(msgtype, p),
            OutboundMessage::CaLink(p) => map.serialize_entry(msgtype, p),
        }
    }

    /// Checks the message against the documented limits (official doc 94677).
    ///
    /// ```
    /// use wechat_kf::client::outbound::{MenuRules, OutboundMessage};
    /// assert!(OutboundMessage::text("hi").validate(MenuRules::Strict).is_ok());
    /// let err = OutboundMessage::text("").validate(MenuRules::Strict).unwrap_err();
    /// assert_eq!(err.field, "text.content");
    /// ```
    pub fn validate(&self, rules: MenuRules) -> Result<(), ValidationError> {
        match self {
            OutboundMessage::Text(text) => bytes_in("text.content", &text.content, 1, 2048),
            OutboundMessage::Image(p)
            | OutboundMessage::Voice(p)
            | OutboundMessage::Video(p)
            | OutboundMessage::File(p) => {
                let field = format!("{}.media_id", self.msgtype());
                bytes_in(&field, p.media_id.as_str(), 1, 256)
            }
            OutboundMessage::Link(link) => {
                bytes_in("link.title", &link.title, 1, 128)?;
                if let Some(desc) = &link.desc {
                    bytes_in("link.desc", desc, 0, 512)?;
                }
                bytes_in("link.url", &link.url, 1, 2048)?;
                http_url("link.url", &link.url)?;
                bytes_in("link.thumb_media_id", link.thumb_media_id.as_str(), 1, 256)
            }
            OutboundMessage::MiniProgram(mp) => {
                bytes_in("miniprogram.appid", &mp.appid, 1, 64)?;
                if let Some(title) = &mp.title {
                    bytes_in("miniprogram.title", title, 0, 64)?;
                }
                bytes_in(
                    "miniprogram.thumb_media_id",
                    mp.thumb_media_id.as_str(),
                    1,
                    256,
                )?;
                bytes_in("miniprogram.pagepath", &mp.pagepath, 1, 1024)
            }
            OutboundMessage::MsgMenu(menu) => validate_menu(menu, rules),
            OutboundMessage::Location(location) => {
                if !location.latitude.is_finite() || !(-90.0..=90.0).contains(&location.latitude) {
                    return Err(ValidationError::new(
                        "location.latitude",
                        "must be between -90 and 90",
                    ));
                }
                if !location.longitude.is_finite()
                    || !(-180.0..=180.0).contains(&location.longitude)
                {
                    return Err(ValidationError::new(
                        "location.longitude",
                        "must be between -180 and 180",
                    ));
                }
                Ok(())
            }
            OutboundMessage::CaLink(link) => {
                bytes_in("ca_link.link_url", &link.link_url, 1, 2048)?;
                http_url("ca_link.link_url", &link.link_url)
            }
        }
    }
}

impl Serialize for OutboundMessage {
    /// `{"msgtype": "<type>", "<type>": {…}}`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        self.serialize_fields(&mut map)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for OutboundMessage {
    /// Reads `{"msgtype": "<type>", "<type>": {…}}`; other keys (`touser`, `open_kfid`,
    /// `msgid`, `code`) are ignored, so a whole `send_msg` or `send_msg_on_event` body reads
    /// too. Menu items of an unknown `type` read as [`MenuItem::Unknown`] (which
    /// [`validate`](Self::validate) then rejects); an unknown `msgtype` is an error.
    ///
    /// ```
    /// use wechat_kf::client::outbound::OutboundMessage;
    /// let body = r#"{"touser":"wm1","open_kfid":"wk1","msgtype":"text","text":{"content":"你好"}}"#;
    /// let message: OutboundMessage = serde_json::from_str(body).unwrap();
    /// assert_eq!(message, OutboundMessage::text("你好"));
    /// ```
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let msgtype = match map.remove("msgtype") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            Some(serde_json::Value::String(_)) => {
                return Err(D::Error::custom("msgtype must not be empty"));
            }
            Some(_) => return Err(D::Error::custom("msgtype must be a string")),
            None => return Err(D::Error::missing_field("msgtype")),
        };
        let payload = map.remove(&msgtype).ok_or_else(|| {
            D::Error::custom(format!(
                "the {msgtype} payload (key {msgtype:?}) is missing"
            ))
        })?;
        fn typed<T: serde::de::DeserializeOwned, E: serde::de::Error>(
            msgtype: &str,
            payload: serde_json::Value,
        ) -> Result<T, E> {
            serde_json::from_value(payload).map_err(|e| E::custom(format!("{msgtype}: {e}")))
        }
        Ok(match msgtype.as_str() {
            "text" => OutboundMessage::Text(typed(&msgtype, payload)?),
            "image" => OutboundMessage::Image(typed(&msgtype, payload)?),
            "voice" => OutboundMessage::Voice(typed(&msgtype, payload)?),
            "video" => OutboundMessage::Video(typed(&msgtype, payload)?),
            "file" => OutboundMessage::File(typed(&msgtype, payload)?),
            "link" => OutboundMessage::Link(typed(&msgtype, payload)?),
            "miniprogram" => OutboundMessage::MiniProgram(typed(&msgtype, payload)?),
            "msgmenu" => OutboundMessage::MsgMenu(typed(&msgtype, payload)?),
            "location" => OutboundMessage::Location(typed(&msgtype, payload)?),
            "ca_link" => OutboundMessage::CaLink(typed(&msgtype, payload)?),
            other => {
                return Err(D::Error::custom(format!("unsupported msgtype {other:?}")));
            }
        })
    }
}

fn validate_menu(menu: &MsgMenu, rules: MenuRules) -> Result<(), ValidationError> {
    if let Some(head) = &menu.head_content {
        bytes_in("msgmenu.head_content", head, 0, 1024)?;
    }
    if let Some(tail) = &menu.tail_content {
        bytes_in("msgmenu.tail_content", tail, 0, 1024)?;
    }
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    if menu.list.is_empty() && empty(&menu.head_content) && empty(&menu.tail_content) {
        return Err(ValidationError::new("msgmenu", "the menu is empty"));
    }
    if menu.list.len() > rules.max_items() {
        return Err(ValidationError::new(
            "msgmenu.list",
            format!(
                "{} items; at most {} are allowed",
                menu.list.len(),
                rules.max_items()
            ),
        ));
    }
    let interactive = menu.list.iter().filter(|i| i.is_interactive()).count();
    if interactive > rules.max_interactive() {
        return Err(ValidationError::new(
            "msgmenu.list",
            format!(
                "{interactive} click/view/miniprogram items; at most {} are allowed",
                rules.max_interactive()
            ),
        ));
    }
    for (index, item) in menu.list.iter().enumerate() {
        let field = |name: &str| format!("msgmenu.list[{index}].{}.{name}", item.item_type());
        match item {
            MenuItem::Click(click) => {
                if let Some(id) = &click.id {
                    bytes_in(&field("id"), id, 1, rules.max_click_id())?;
                }
                bytes_in(&field("content"), &click.content, 1, 128)?;
            }
            MenuItem::View(view) => {
                bytes_in(&field("url"), &view.url, 1, 2048)?;
                bytes_in(&field("content"), &view.content, 1, 1024)?;
            }
            MenuItem::MiniProgram(mini) => {
                bytes_in(&field("appid"), &mini.appid, 1, 32)?;
                bytes_in(&field("pagepath"), &mini.pagepath, 1, 1024)?;
                bytes_in(&field("content"), &mini.content, 1, 1024)?;
            }
            MenuItem::Text(text) => bytes_in(&field("content"), &text.content, 1, 256)?,
            // Kept from a received menu; the server knows only the four types (95009).
            _ => {
                return Err(ValidationError::new(
                    format!("msgmenu.list[{index}].type"),
                    "only click, view, miniprogram and text items can be sent",
                ));
            }
        }
    }
    Ok(())
}

fn bytes_in(field: &str, value: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    let len = value.len();
    if len < min {
        return Err(ValidationError::new(
            field,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("shorter than {min} bytes")
            },
        ));
    }
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("{len} bytes; at most {max} are allowed"),
        ));
    }
    Ok(())
}

fn http_url(field: &str, url: &str) -> Result<(), ValidationError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must start with http:// or https://",
        ))
    }
}

/// Checks a caller-chosen msgid: 1–32 bytes of `[0-9a-zA-Z_-]` (an empty msgid is rejected by
/// the server; omit it instead).
///
/// ```
/// use wechat_kf::client::outbound::validate_msgid;
/// assert!(validate_msgid("order-42_a").is_ok());
/// assert!(validate_msgid("").is_err());
/// assert!(validate_msgid("has space").is_err());
/// ```
pub fn validate_msgid(msgid: &str) -> Result<(), ValidationError> {
    bytes_in("msgid", msgid, 1, 32)?;
    if msgid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(ValidationError::new(
            "msgid",
            "only [0-9a-zA-Z_-] characters are allowed",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strict(message: &OutboundMessage) -> Result<(), ValidationError> {
        message.validate(MenuRules::Strict)
    }

    #[test]
    fn text_must_be_one_to_2048_bytes() {
        assert!(strict(&OutboundMessage::text("a".repeat(2048))).is_ok());
        // 683 three-byte characters = 2049 bytes.
        let err = strict(&OutboundMessage::text("好".repeat(683))).unwrap_err();
        assert_eq!(err.field, "text.content");
        assert!(strict(&OutboundMessage::text("")).is_err());
    }

    #[test]
    fn payloads_are_serialized_under_their_own_key() {
        let link = OutboundMessage::link(Link::new("t", "https://e.com", "m").desc("d"));
        assert_eq!(
            serde_json::to_value(&link).unwrap(),
            json!({"msgtype":"link","link":{"title":"t","desc":"d","url":"https://e.com","thumb_media_id":"m"}})
        );
        let location = OutboundMessage::location(Location::new(23.1, 113.2).name("门店"));
        assert_eq!(
            serde_json::to_value(&location).unwrap(),
            json!({"msgtype":"location","location":{"name":"门店","latitude":23.1,"longitude":113.2}})
        );
        let mp = OutboundMessage::miniprogram(MiniProgram::new("wx1", "m", "p.html").title("t"));
        assert_eq!(
            serde_json::to_value(&mp).unwrap()["miniprogram"]["pagepath"],
            "p.html"
        );
        let ca = OutboundMessage::ca_link("https://work.weixin.qq.com/ca/x");
        assert_eq!(
            serde_json::to_value(&ca).unwrap(),
            json!({"msgtype":"ca_link","ca_link":{"link_url":"https://work.weixin.qq.com/ca/x"}})
        );
    }

    #[test]
    fn menu_items_serialize_as_the_spec_example() {
        let menu = MsgMenu::new()
            .head("请选择：")
            .item(MenuItem::click("101", "转人工"))
            .item(MenuItem::view("https://example.com/faq", "常见问题"))
            .item(MenuItem::miniprogram(
                "wx0123456789abcdef",
                "pages/order.html",
                "查订单",
            ))
            .item(MenuItem::text("工作时间 9:00-18:00"))
            .tail("感谢咨询");
        assert_eq!(
            serde_json::to_value(OutboundMessage::msgmenu(menu)).unwrap(),
            json!({"msgtype":"msgmenu","msgmenu":{"head_content":"请选择：","list":[
                {"type":"click","click":{"id":"101","content":"转人工"}},
                {"type":"view","view":{"url":"https://example.com/faq","content":"常见问题"}},
                {"type":"miniprogram","miniprogram":{"appid":"wx0123456789abcdef","pagepath":"pages/order.html","content":"查订单"}},
                {"type":"text","text":{"content":"工作时间 9:00-18:00","no_newline":0}}],
                "tail_content":"感谢咨询"}})
        );
    }

    #[test]
    fn strict_menus_allow_ten_items_and_extended_menus_fifty_with_ten_interactive() {
        let with = |clicks: usize, texts: usize| {
            let mut menu = MsgMenu::new();
            for i in 0..clicks {
                menu = menu.item(MenuItem::click(i.to_string(), "c"));
            }
            for _ in 0..texts {
                menu = menu.item(MenuItem::text("t"));
            }
            OutboundMessage::msgmenu(menu)
        };
        assert!(with(10, 0).validate(MenuRules::Strict).is_ok());
        assert!(with(10, 1).validate(MenuRules::Strict).is_err());
        assert!(with(10, 40).validate(MenuRules::Extended).is_ok());
        assert!(with(11, 0).validate(MenuRules::Extended).is_err());
        assert!(with(0, 51).validate(MenuRules::Extended).is_err());
    }

    #[test]
    fn menu_fields_are_checked_with_their_path() {
        let menu = MsgMenu::new()
            .item(MenuItem::text("ok"))
            .item(MenuItem::click("x".repeat(65), "label"));
        let err = strict(&OutboundMessage::msgmenu(menu.clone())).unwrap_err();
        assert_eq!(err.field, "msgmenu.list[1].click.id");
        assert!(
            OutboundMessage::msgmenu(menu)
                .validate(MenuRules::Extended)
                .is_ok()
        );
        assert!(strict(&OutboundMessage::msgmenu(MsgMenu::new())).is_err());
        let long_head = MsgMenu::new()
            .head("h".repeat(1025))
            .item(MenuItem::text("t"));
        assert!(strict(&OutboundMessage::msgmenu(long_head)).is_err());
    }

    #[test]
    fn links_need_an_http_url_and_short_title() {
        assert!(strict(&OutboundMessage::link(Link::new("t", "ftp://x", "m"))).is_err());
        assert!(strict(&OutboundMessage::link(Link::new("t", "HTTPS://x", "m"))).is_ok());
        assert!(
            strict(&OutboundMessage::link(Link::new(
                "t".repeat(129),
                "https://x",
                "m"
            )))
            .is_err()
        );
        assert!(
            strict(&OutboundMessage::link(
                Link::new("t", "https://x", "m").desc("d".repeat(513))
            ))
            .is_err()
        );
        assert!(strict(&OutboundMessage::link(Link::new("t", "https://x", ""))).is_err());
    }

    #[test]
    fn locations_must_be_on_earth() {
        assert!(strict(&OutboundMessage::location(Location::new(90.0, -180.0))).is_ok());
        assert!(strict(&OutboundMessage::location(Location::new(90.1, 0.0))).is_err());
        assert!(strict(&OutboundMessage::location(Location::new(0.0, 180.5))).is_err());
        assert!(strict(&OutboundMessage::location(Location::new(f64::NAN, 0.0))).is_err());
    }

    #[test]
    fn every_outbound_type_reads_back_from_its_own_json() {
        let bodies = [
            json!({"msgtype":"text","text":{"content":"hi"}}),
            json!({"msgtype":"image","image":{"media_id":"M"}}),
            json!({"msgtype":"voice","voice":{"media_id":"M"}}),
            json!({"msgtype":"video","video":{"media_id":"M"}}),
            json!({"msgtype":"file","file":{"media_id":"M"}}),
            json!({"msgtype":"link","link":{"title":"t","url":"https://x","thumb_media_id":"M"}}),
            json!({"msgtype":"miniprogram","miniprogram":{"appid":"wx1","thumb_media_id":"M","pagepath":"p.html"}}),
            json!({"msgtype":"location","location":{"latitude":1.5,"longitude":2.5}}),
            json!({"msgtype":"ca_link","ca_link":{"link_url":"https://work.weixin.qq.com/ca/x"}}),
            json!({"msgtype":"msgmenu","msgmenu":{"head_content":"h","list":[
                {"type":"click","click":{"id":"1","content":"a"}},
                {"type":"view","view":{"url":"https://x","content":"b"}},
                {"type":"miniprogram","miniprogram":{"appid":"wx1","pagepath":"p","content":"c"}},
                {"type":"text","text":{"content":"d","no_newline":1}}],"tail_content":"t"}}),
        ];
        for body in bodies {
            let message: OutboundMessage = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(serde_json::to_value(&message).unwrap(), body);
        }
    }

    #[test]
    fn reading_a_message_ignores_the_envelope_and_explains_bad_input() {
        let body = json!({"touser":"wm","open_kfid":"wk","msgid":"m1","msgtype":"text","text":{"content":"x"}});
        let message: OutboundMessage = serde_json::from_value(body).unwrap();
        assert_eq!(message, OutboundMessage::text("x"));
        let err = |v: serde_json::Value| {
            serde_json::from_value::<OutboundMessage>(v)
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({"text":{"content":"x"}})).contains("msgtype"));
        assert!(err(json!({"msgtype":"text"})).contains("missing"));
        assert!(err(json!({"msgtype":"news","news":{}})).contains("unsupported"));
        assert!(err(json!({"msgtype":"text","text":{"content":1}})).contains("text:"));
        assert!(err(json!([])).contains("map"));
    }

    #[test]
    fn msgids_are_limited_to_32_safe_bytes() {
        assert!(validate_msgid(&"a".repeat(32)).is_ok());
        assert!(validate_msgid(&"a".repeat(33)).is_err());
        assert!(validate_msgid("ü").is_err());
    }
}
