//! Validation of outbound messages (`send_msg`, `send_msg_on_event`), official doc 94677.
//!
//! Pure: it reads the media store and the linked mini programs but changes nothing.

use crate::clock::Millis;
use crate::errors::{self, ApiError, ApiResult};
use crate::json::Fields;
use crate::state::media::{MediaStore, MediaType};

/// The outbound types of the current official list (official doc 94677: no `business_card`).
pub const OUTBOUND_TYPES: &[&str] = &[
    "text",
    "image",
    "voice",
    "video",
    "file",
    "link",
    "miniprogram",
    "msgmenu",
    "location",
    "ca_link",
];

/// Most menu items in total (newest rule; see `docs/vendor-notes.md`).
pub const MENU_MAX_ITEMS: usize = 50;
/// Most interactive (click / view / miniprogram) menu items.
pub const MENU_MAX_INTERACTIVE: usize = 10;

/// What validation may look at.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Uploaded media.
    pub media: &'a MediaStore,
    /// Mini programs linked to the corp.
    pub appids: &'a [String],
    /// Emulator time.
    pub now: Millis,
}

/// Validates `msgtype` and its payload object inside the request `body`.
pub fn validate(msgtype: &str, body: Fields<'_>, ctx: Context<'_>) -> ApiResult<()> {
    let Some(&msgtype) = OUTBOUND_TYPES.iter().find(|t| **t == msgtype) else {
        return Err(ApiError::new(
            errors::INVALID_MSGTYPE,
            format!("invalid message type {msgtype:?}"),
        ));
    };
    let payload = body.obj_req(msgtype)?;
    match msgtype {
        "text" => text(payload),
        "image" | "voice" | "video" | "file" => {
            let kind = MediaType::parse(msgtype).unwrap_or(MediaType::File);
            let id = payload.str_opt("media_id")?.unwrap_or("");
            ctx.media.check(id, kind, ctx.now)
        }
        "link" => {
            payload.str_req("title")?; // longer titles are truncated, not rejected
            payload.str_opt("desc")?;
            let url = payload.str_max("url", 2048, true)?.unwrap_or("");
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ApiError::invalid(
                    "link.url",
                    "must start with http:// or https://",
                ));
            }
            let thumb = payload.str_opt("thumb_media_id")?.unwrap_or("");
            ctx.media.check(thumb, MediaType::Image, ctx.now)
        }
        "miniprogram" => {
            let appid = payload.str_req("appid")?;
            check_appid(appid, ctx)?;
            payload.str_opt("title")?;
            payload.str_req("pagepath")?;
            let thumb = payload.str_opt("thumb_media_id")?.unwrap_or("");
            ctx.media.check(thumb, MediaType::Image, ctx.now)
        }
        "msgmenu" => msgmenu(payload, ctx),
        "location" => {
            let lat = payload.f64_req("latitude")?;
            let lng = payload.f64_req("longitude")?;
            if !(-90.0..=90.0).contains(&lat) {
                return Err(ApiError::invalid(
                    "location.latitude",
                    "must be within -90..90",
                ));
            }
            if !(-180.0..=180.0).contains(&lng) {
                return Err(ApiError::invalid(
                    "location.longitude",
                    "must be within -180..180",
                ));
            }
            payload.str_opt("name")?;
            payload.str_opt("address")?;
            Ok(())
        }
        "ca_link" => {
            let url = payload.str_max("link_url", 2048, true)?.unwrap_or("");
            if !url.starts_with("https://work.weixin.qq.com/ca/") {
                return Err(ApiError::invalid(
                    "ca_link.link_url",
                    "not a customer-acquisition link",
                ));
            }
            Ok(())
        }
        _ => Err(ApiError::new(
            errors::INVALID_MSGTYPE,
            "invalid message type",
        )),
    }
}

fn text(payload: Fields<'_>) -> ApiResult<()> {
    let content = payload.str_opt("content")?.unwrap_or("");
    if content.is_empty() {
        return Err(ApiError::new(errors::EMPTY_CONTENT, "empty content"));
    }
    if content.len() > 2048 {
        return Err(ApiError::new(
            errors::CONTENT_TOO_LONG,
            "content size out of limit",
        ));
    }
    Ok(())
}

fn check_appid(appid: &str, ctx: Context<'_>) -> ApiResult<()> {
    if ctx.appids.iter().any(|a| a == appid) {
        Ok(())
    } else {
        Err(ApiError::new(
            errors::MINIPROGRAM_NOT_LINKED,
            "miniprogram appid is not linked to the corp",
        ))
    }
}

fn sized(f: Fields<'_>, key: &str, max: usize) -> ApiResult<()> {
    f.str_req(key)?;
    f.str_max(key, max, true).map(|_| ())
}

fn msgmenu(menu: Fields<'_>, ctx: Context<'_>) -> ApiResult<()> {
    menu.str_max("head_content", 1024, false)?;
    menu.str_max("tail_content", 1024, false)?;
    let items = menu.array_opt("list")?.map(Vec::as_slice).unwrap_or(&[]);
    if items.len() > MENU_MAX_ITEMS {
        return Err(ApiError::new(
            errors::TOO_MANY_MENU_ITEMS,
            "too many menu items",
        ));
    }
    let mut interactive = 0;
    for item in items {
        let Some(map) = item.as_object() else {
            return Err(ApiError::wrong_json("msgmenu.list items should be objects"));
        };
        let item = Fields::new(map);
        let kind = item.str_req("type")?;
        match kind {
            "click" => {
                let click = item.obj_req("click")?;
                if let Some(id) = click.str_opt("id")? {
                    if id.is_empty() || id.len() > 128 {
                        return Err(ApiError::invalid("click.id", "must have 1-128 bytes"));
                    }
                }
                sized(click, "content", 128)?;
                interactive += 1;
            }
            "view" => {
                let view = item.obj_req("view")?;
                sized(view, "url", 2048)?;
                sized(view, "content", 1024)?;
                interactive += 1;
            }
            "miniprogram" => {
                let mp = item.obj_req("miniprogram")?;
                sized(mp, "appid", 32)?;
                check_appid(mp.str_req("appid")?, ctx)?;
                sized(mp, "pagepath", 1024)?;
                sized(mp, "content", 1024)?;
                interactive += 1;
            }
            "text" => {
                let text = item.obj_req("text")?;
                sized(text, "content", 256)?;
                if let Some(n) = text.u64_opt("no_newline")? {
                    if n > 1 {
                        return Err(ApiError::invalid("text.no_newline", "must be 0 or 1"));
                    }
                }
            }
            other => {
                return Err(ApiError::new(
                    errors::INVALID_MENU_ITEM_TYPE,
                    format!("invalid menu item type {other:?}"),
                ));
            }
        }
    }
    if interactive > MENU_MAX_INTERACTIVE {
        return Err(ApiError::new(
            errors::TOO_MANY_MENU_ITEMS,
            "too many menu items",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn check(body: Value) -> ApiResult<()> {
        let media = MediaStore::default();
        let appids = vec!["wx0123456789abcdef".to_string()];
        let map = body.as_object().unwrap().clone();
        let msgtype = map["msgtype"].as_str().unwrap().to_string();
        validate(
            &msgtype,
            Fields::new(&map),
            Context {
                media: &media,
                appids: &appids,
                now: 0,
            },
        )
    }

    fn code(body: Value) -> i64 {
        check(body).err().map(|e| e.code).unwrap_or(0)
    }

    #[test]
    fn text_rules_follow_the_spec() {
        assert_eq!(code(json!({"msgtype":"text","text":{"content":"hi"}})), 0);
        assert_eq!(code(json!({"msgtype":"text","text":{"content":""}})), 44004);
        assert_eq!(
            code(json!({"msgtype":"text","text":{"content":"a".repeat(2049)}})),
            45002
        );
        assert_eq!(code(json!({"msgtype":"text"})), 40063);
        assert_eq!(code(json!({"msgtype":"text","text":"hi"})), 40058);
    }

    #[test]
    fn unknown_types_and_business_cards_are_40008() {
        assert_eq!(code(json!({"msgtype":"news","news":{}})), 40008);
        assert_eq!(
            code(json!({"msgtype":"business_card","business_card":{"userid":"a"}})),
            40008
        );
    }

    #[test]
    fn media_needs_a_valid_media_id() {
        assert_eq!(
            code(json!({"msgtype":"image","image":{"media_id":"nope"}})),
            40007
        );
        assert_eq!(code(json!({"msgtype":"image","image":{}})), 41006);
    }

    #[test]
    fn menus_allow_fifty_items_of_which_ten_interactive() {
        let click = json!({"type":"click","click":{"id":"1","content":"a"}});
        let text = json!({"type":"text","text":{"content":"t"}});
        let mut list = vec![click.clone(); 10];
        list.extend(vec![text.clone(); 40]);
        assert_eq!(
            code(json!({"msgtype":"msgmenu","msgmenu":{"list":list}})),
            0
        );
        let eleven = vec![click; 11];
        assert_eq!(
            code(json!({"msgtype":"msgmenu","msgmenu":{"list":eleven}})),
            95008
        );
        let many = vec![text; 51];
        assert_eq!(
            code(json!({"msgtype":"msgmenu","msgmenu":{"list":many}})),
            95008
        );
        let bad = json!([{"type":"button","button":{}}]);
        assert_eq!(
            code(json!({"msgtype":"msgmenu","msgmenu":{"list":bad}})),
            95009
        );
    }

    #[test]
    fn location_and_ca_link_are_range_checked() {
        assert_eq!(
            code(json!({"msgtype":"location","location":{"latitude":91.0,"longitude":0}})),
            40035
        );
        assert_eq!(
            code(json!({"msgtype":"location","location":{"latitude":23.1,"longitude":113.2}})),
            0
        );
        assert_eq!(
            code(
                json!({"msgtype":"ca_link","ca_link":{"link_url":"https://work.weixin.qq.com/ca/x"}})
            ),
            0
        );
        assert_eq!(
            code(json!({"msgtype":"ca_link","ca_link":{"link_url":"https://evil.example/ca/x"}})),
            40035
        );
    }

    #[test]
    fn miniprograms_must_be_linked() {
        let body = json!({"msgtype":"miniprogram","miniprogram":{"appid":"wxother","pagepath":"p.html","thumb_media_id":"x"}});
        assert_eq!(code(body), 90206);
    }
}
