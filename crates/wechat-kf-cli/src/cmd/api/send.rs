//! `send <type>` and `send-on-event`: one subcommand per outbound message type.

use std::sync::Arc;

use clap::{Args, Subcommand};
use wechat_kf::client::messages::{SendMsgOnEventRequest, SendMsgRequest, SendMsgResponse};
use wechat_kf::client::outbound::{Link, MiniProgram, OutboundMessage};
use wechat_kf::message::{Location, MenuClick, MenuItem, MsgMenu};
use wechat_kf::{ExternalUserId, OpenKfId};
use wechat_kf_service::store::{self, SessionUpdate, Store};

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
    /// The store of `wechat-kf serve` (SQLite file or postgres:// URL): the send is checked
    /// against the customer's session view there (quota, 48-hour window, a human holding the
    /// session) and recorded in it, as the service's own sends are [env: WECHAT_KF_DB].
    #[arg(
        long,
        global = true,
        env = "WECHAT_KF_DB",
        hide_env = true,
        help_heading = "Quota tracking"
    )]
    db: Option<String>,
    #[command(subcommand)]
    message: MessageCommand,
}

/// What `send --help` says about the quota it shares (or not) with the service.
const QUOTA_NOTE: &str = "Quota: with --db (or WECHAT_KF_DB) naming the store of `wechat-kf \
serve`, this command shares the service's quota tracking: it refuses (exit 1) what the \
customer's session view refuses (5 messages per customer message, the 48-hour window, a human \
servicer holding the session) and records what it sends there, as the reply API does. Without \
a store it does not share it: it calls WeChat directly, the message still counts against \
WeChat's quota, and the service learns of it only when WeChat refuses a later send (95001, \
95002).";

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
    let tracking = match &args.db {
        Some(db) => Some(Tracking::open(db).await?),
        None => None,
    };
    let (kf, customer) = (OpenKfId::from(open_kfid), ExternalUserId::from(to));
    let known = match &tracking {
        Some(tracking) => tracking.check(&kf, &customer).await?,
        None => false,
    };
    let mut request = SendMsgRequest::new(customer.clone(), kf.clone(), message);
    if let Some(msgid) = args.msgid {
        request = request.msgid(msgid);
    }
    let sent = client.messages().send(request).await;
    if let Some(tracking) = &tracking {
        tracking.record(&kf, &customer, known, &sent).await;
        tracking.store.close().await;
    }
    report(sent?)
}

/// The service's store, for the quota it tracks per customer (the session views).
struct Tracking {
    store: Arc<dyn Store>,
}

impl Tracking {
    async fn open(location: &str) -> Result<Tracking, CliError> {
        let usage = |why: &str| CliError::Usage(format!("send: --db {location:?}: {why}"));
        if location == ":memory:" {
            return Err(usage(
                "an in-memory store lives inside serve; send through its reply API",
            ));
        }
        // A mistyped path must not create an empty store that tracks nothing.
        let is_url = location.starts_with("postgres://") || location.starts_with("postgresql://");
        if !is_url && !std::path::Path::new(location).exists() {
            return Err(usage("no such store (start serve with it first)"));
        }
        let store = store::open(location, store::OpenOptions::default())
            .await
            .map_err(|e| CliError::Failed(format!("send: {e}")))?;
        Ok(Tracking { store })
    }

    /// Refuses what the customer's session view refuses; whether the service knows the
    /// customer (an unknown one: WeChat decides).
    async fn check(&self, kf: &OpenKfId, customer: &ExternalUserId) -> Result<bool, CliError> {
        let view = self
            .store
            .session(kf.clone(), customer.clone())
            .await
            .map_err(|e| CliError::Failed(format!("send: {e}")))?;
        match view {
            None => Ok(false),
            Some(view) => match view.can_send(unix_now()) {
                Ok(_) => Ok(true),
                Err(refusal) => Err(CliError::Failed(format!(
                    "send: refused by the session view in the store, nothing sent: {refusal}"
                ))),
            },
        }
    }

    /// Records the send (for a customer the service knows), or what WeChat's refusal says.
    async fn record(
        &self,
        kf: &OpenKfId,
        customer: &ExternalUserId,
        known: bool,
        sent: &Result<SendMsgResponse, wechat_kf::client::Error>,
    ) {
        let at = unix_now();
        let update = match sent {
            // As the service does: a send alone never creates a view (it would refuse the
            // next send without the customer's message).
            Ok(_) if known => SessionUpdate::Sent { at },
            Ok(_) => return,
            Err(e) => match e.send_refusal() {
                Some(refusal) => SessionUpdate::Refused { refusal, at },
                None => return,
            },
        };
        let now_ms = i64::try_from(at.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Err(e) = self
            .store
            .update_session(kf.clone(), customer.clone(), update, now_ms)
            .await
        {
            eprintln!("wechat-kf: warning: the send is not recorded in the store: {e}");
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
