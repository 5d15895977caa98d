//! `send <type>` and `send-on-event`: one subcommand per outbound message type.

use clap::{Args, Subcommand};
use wechat_kf::client::messages::{SendMsgOnEventRequest, SendMsgRequest, SendMsgResponse};
use wechat_kf::client::outbound::{Link, MiniProgram, OutboundMessage};
use wechat_kf::message::{Location, MenuClick, MenuItem, MsgMenu};

use super::{CliError, CliResult, ConnArgs, out};

/// `send`.
#[derive(Debug, Args)]
#[command(after_help = QUOTA_NOTE)]
pub struct SendArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The sending account.
    #[arg(long, global = true)]
    open_kfid: Option<String>,
    /// The customer (external_userid).
    #[arg(long, global = true, visible_aliases = ["to", "external-userid"])]
    customer: Option<String>,
    /// A caller-chosen msgid (≤ 32 bytes of [0-9a-zA-Z_-]); makes retries safe.
    #[arg(long, global = true)]
    msgid: Option<String>,
    #[command(subcommand)]
    message: MessageCommand,
}

/// What `send --help` says about the quota: this command talks to WeChat directly.
const QUOTA_NOTE: &str = "Quota: this command calls WeChat directly and has no store, so it does \
not share the quota tracking of `wechat-kf serve` (its reply API and webhook replies count the \
5 messages per customer message and the 48-hour window in the service's store). A message sent \
here still counts against WeChat's quota: the service learns of it only when WeChat refuses a \
later send (95001, 95002). To share the tracking, send through the running service's reply \
API (POST /v1/messages) instead.";

/// `send-on-event`.
#[derive(Debug, Args)]
pub struct SendOnEventArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The welcome_code or msg_code.
    #[arg(long)]
    code: String,
    /// A caller-chosen msgid.
    #[arg(long)]
    msgid: Option<String>,
    /// The text to send.
    content: String,
}

/// The message to send.
#[derive(Debug, Subcommand)]
enum MessageCommand {
    /// A text message.
    Text {
        /// 1–2048 bytes.
        content: String,
    },
    /// An image (media_id from `media upload --type image`).
    Image {
        /// The media id.
        #[arg(long)]
        media_id: String,
    },
    /// A voice message (AMR media_id).
    Voice {
        /// The media id.
        #[arg(long)]
        media_id: String,
    },
    /// A video (MP4 media_id).
    Video {
        /// The media id.
        #[arg(long)]
        media_id: String,
    },
    /// A file.
    File {
        /// The media id.
        #[arg(long)]
        media_id: String,
    },
    /// A link card.
    Link {
        /// Title (≤ 128 bytes).
        #[arg(long)]
        title: String,
        /// Target URL (http/https).
        #[arg(long)]
        url: String,
        /// Thumbnail image media_id.
        #[arg(long)]
        thumb_media_id: String,
        /// Description (≤ 512 bytes).
        #[arg(long)]
        desc: Option<String>,
    },
    /// A mini-program card.
    Miniprogram {
        /// Mini program appid.
        #[arg(long)]
        appid: String,
        /// Cover image media_id.
        #[arg(long)]
        thumb_media_id: String,
        /// Page path (e.g. pages/index.html).
        #[arg(long)]
        pagepath: String,
        /// Title (≤ 64 bytes).
        #[arg(long)]
        title: Option<String>,
    },
    /// A menu. Items, in order: `click:ID:LABEL`, `view:LABEL:URL`,
    /// `miniprogram:APPID:PAGEPATH:LABEL`, `text:CONTENT`; or the whole msgmenu object with
    /// --json.
    Menu {
        /// Text before the items.
        #[arg(long)]
        head: Option<String>,
        /// An item (repeatable, kept in order).
        #[arg(long = "item")]
        items: Vec<String>,
        /// Text after the items.
        #[arg(long)]
        tail: Option<String>,
        /// The msgmenu object as JSON (official doc 94677) instead of the flags above.
        #[arg(long, conflicts_with_all = ["head", "items", "tail"])]
        json: Option<String>,
    },
    /// A location.
    Location {
        /// −90…90.
        #[arg(long, allow_negative_numbers = true)]
        latitude: f64,
        /// −180…180.
        #[arg(long, allow_negative_numbers = true)]
        longitude: f64,
        /// Place name.
        #[arg(long)]
        name: Option<String>,
        /// Address.
        #[arg(long)]
        address: Option<String>,
    },
    /// A customer-acquisition link (获客链接).
    CaLink {
        /// The link.
        #[arg(long)]
        url: String,
    },
}

fn parse_item(spec: &str) -> Result<MenuItem, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "invalid --item {spec:?}: use click:ID:LABEL, view:LABEL:URL, \
             miniprogram:APPID:PAGEPATH:LABEL or text:CONTENT"
        ))
    };
    let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
    match kind {
        "click" => {
            let (id, label) = rest.split_once(':').ok_or_else(bad)?;
            Ok(if id.is_empty() {
                MenuItem::Click(MenuClick {
                    id: None,
                    content: label.to_owned(),
                })
            } else {
                MenuItem::click(id, label)
            })
        }
        "view" => {
            let (label, url) = rest.split_once(':').ok_or_else(bad)?;
            Ok(MenuItem::view(url, label))
        }
        "miniprogram" => {
            let mut parts = rest.splitn(3, ':');
            let (Some(appid), Some(pagepath), Some(label)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            Ok(MenuItem::miniprogram(appid, pagepath, label))
        }
        "text" => Ok(MenuItem::text(rest)),
        _ => Err(bad()),
    }
}

/// Reads a msgmenu object given as JSON (the same shape `sync_msg` returns and `send_msg` takes).
fn menu_from_json(json: &str) -> Result<MsgMenu, CliError> {
    serde_json::from_str(json).map_err(|e| CliError::Usage(format!("invalid --json: {e}")))
}

fn build_message(command: MessageCommand) -> Result<OutboundMessage, CliError> {
    Ok(match command {
        MessageCommand::Text { content } => OutboundMessage::text(content),
        MessageCommand::Image { media_id } => OutboundMessage::image(media_id),
        MessageCommand::Voice { media_id } => OutboundMessage::voice(media_id),
        MessageCommand::Video { media_id } => OutboundMessage::video(media_id),
        MessageCommand::File { media_id } => OutboundMessage::file(media_id),
        MessageCommand::Link {
            title,
            url,
            thumb_media_id,
            desc,
        } => {
            let mut link = Link::new(title, url, thumb_media_id);
            if let Some(desc) = desc {
                link = link.desc(desc);
            }
            OutboundMessage::link(link)
        }
        MessageCommand::Miniprogram {
            appid,
            thumb_media_id,
            pagepath,
            title,
        } => {
            let mut card = MiniProgram::new(appid, thumb_media_id, pagepath);
            if let Some(title) = title {
                card = card.title(title);
            }
            OutboundMessage::miniprogram(card)
        }
        MessageCommand::Menu {
            head,
            items,
            tail,
            json,
        } => {
            let menu = match json {
                Some(json) => menu_from_json(&json)?,
                None => {
                    let mut menu = MsgMenu::new();
                    menu.head_content = head;
                    menu.tail_content = tail;
                    for item in &items {
                        menu.list.push(parse_item(item)?);
                    }
                    menu
                }
            };
            OutboundMessage::msgmenu(menu)
        }
        MessageCommand::Location {
            latitude,
            longitude,
            name,
            address,
        } => {
            let mut location = Location::new(latitude, longitude);
            if let Some(name) = name {
                location = location.name(name);
            }
            if let Some(address) = address {
                location = location.address(address);
            }
            OutboundMessage::location(location)
        }
        MessageCommand::CaLink { url } => OutboundMessage::ca_link(url),
    })
}

fn report(sent: SendMsgResponse) -> CliResult {
    if sent.duplicate_on_retry {
        eprintln!("note: a retry found the message already accepted (duplicate msgid)");
    }
    out(sent.msgid)
}

/// Runs `send`; prints the msgid.
pub async fn run(args: SendArgs) -> CliResult {
    let open_kfid = args
        .open_kfid
        .ok_or_else(|| CliError::Usage("send: --open-kfid is required".into()))?;
    let to = args
        .customer
        .ok_or_else(|| CliError::Usage("send: --customer <external_userid> is required".into()))?;
    let message = build_message(args.message)?;
    let client = args.conn.client()?;
    let mut request = SendMsgRequest::new(to, open_kfid, message);
    if let Some(msgid) = args.msgid {
        request = request.msgid(msgid);
    }
    report(client.messages().send(request).await?)
}

/// Runs `send-on-event`; prints the msgid.
pub async fn run_on_event(args: SendOnEventArgs) -> CliResult {
    let client = args.conn.client()?;
    let mut request = SendMsgOnEventRequest::new(args.code, OutboundMessage::text(args.content));
    if let Some(msgid) = args.msgid {
        request = request.msgid(msgid);
    }
    report(client.messages().send_on_event(request).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_items_parse_in_the_documented_mini_syntax() {
        assert_eq!(
            parse_item("click:101:转人工").unwrap(),
            MenuItem::click("101", "转人工")
        );
        assert_eq!(
            parse_item("view:FAQ:https://example.com/faq").unwrap(),
            MenuItem::view("https://example.com/faq", "FAQ")
        );
        assert_eq!(
            parse_item("miniprogram:wx1:pages/a.html:查订单").unwrap(),
            MenuItem::miniprogram("wx1", "pages/a.html", "查订单")
        );
        assert_eq!(parse_item("text:a:b").unwrap(), MenuItem::text("a:b"));
        assert!(parse_item("bogus:x").is_err());
    }

    #[test]
    fn menus_read_from_json_round_trip() {
        let json = r#"{"head_content":"h","list":[{"type":"click","click":{"id":"1","content":"a"}},
            {"type":"text","text":{"content":"t","no_newline":1}}],"tail_content":"t"}"#;
        let menu = menu_from_json(json).unwrap();
        assert_eq!(menu.list.len(), 2);
        assert_eq!(menu.list[1], MenuItem::text_without_newline("t"));
    }
}
