//! The console's HTML, written with `maud` (escaped at compile time). Every page works without
//! the script; with it, the parts marked `data-live` reload on each server event.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use qrcode::QrCode;
use qrcode::render::svg;
use serde_json::Value;

use crate::http::accounts::AccountList;
use crate::http::conversations::{
    ConversationBody, ConversationList, ConversationSummary, From, HistoryItem,
};
use crate::http::sandbox_api::{ChatSide, CustomerChat};
use crate::http::setup::SetupBody;
use crate::store::{DeliveryListing, MessageListing, SendListing};

/// `s` percent-encoded for a query string.
pub(super) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `HH:MM:SS` (UTC) of a unix time in seconds.
fn clock(at: i64) -> String {
    let s = at.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// `HH:MM:SS` (UTC) of unix milliseconds.
fn clock_ms(at: i64) -> String {
    clock(at / 1000)
}

/// "47h 59m" of a number of seconds.
fn span(secs: u64) -> String {
    format!("{}h {:02}m", secs / 3600, secs % 3600 / 60)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Sandbox,
    Conversations,
    Deliveries,
    Accounts,
    Health,
    None,
}

fn layout(title: &str, csrf: Option<&str>, current: Nav, body: Markup) -> Markup {
    let link = |nav: Nav, href: &str, text: &str| {
        html! {
            li { a href=(href) aria-current=[(nav == current).then_some("page")] { (text) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(csrf) = csrf { meta name="csrf-token" content=(csrf); }
                title { (title) " · wechat-kf console" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "wechat-kf" }
                    @if let Some(csrf) = csrf {
                        nav aria-label="Console" {
                            ul {
                                (link(Nav::Sandbox, "/console/sandbox", "Sandbox"))
                                (link(Nav::Conversations, "/console/conversations", "Conversations"))
                                (link(Nav::Deliveries, "/console/deliveries", "Deliveries"))
                                (link(Nav::Accounts, "/console/accounts", "Accounts"))
                                (link(Nav::Health, "/console/health", "Setup & health"))
                            }
                        }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page with a title and one sentence.
pub(super) fn message_page(title: &str, text: &str) -> Markup {
    layout(title, None, Nav::None, html! { p { (text) } })
}

/// The login form.
pub(super) fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        Nav::None,
        html! {
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.login method="post" action="/console/login" {
                label for="token" { "Console token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
            p.hint { "The token is console.token (WECHAT_KF_CONSOLE_TOKEN); in sandbox mode it is printed at start." }
        },
    )
}

fn from_label(from: From) -> &'static str {
    match from {
        From::Customer => "customer",
        From::Servicer => "servicer",
        From::System => "system",
        From::Bot => "bot",
    }
}

fn item_text(item: &HistoryItem) -> String {
    match &item.text {
        Some(text) => text.clone(),
        None => format!("[{}]", item.kind),
    }
}

/// A message's downloaded media: the image shown, the voice note playable (its converted file
/// when there is one), other files downloadable.
fn media_of(item: &HistoryItem) -> Markup {
    let Some(record) = &item.media else {
        return html! {};
    };
    let open_kfid = item
        .message
        .get("open_kfid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let src = format!(
        "/console/media/{}/{}",
        query_escape(open_kfid),
        query_escape(&item.msgid)
    );
    if let Some(error) = record.pointer("/error/kind").and_then(Value::as_str) {
        return html! { " " span.error { "media not downloaded (" (error) ")" } };
    }
    if record.get("path").is_none() {
        return match record.get("url").and_then(Value::as_str) {
            Some(url) => html! { " " span.hint { "stored at " (url) } },
            None => html! {},
        };
    }
    let name = record
        .get("file_name")
        .and_then(Value::as_str)
        .unwrap_or("the file");
    match item.kind.as_str() {
        "image" => {
            html! { br; img.media src=(src) alt={ "Image " (name) " from the " (from_label(item.from)) } loading="lazy"; }
        }
        "voice" => {
            let src = if record.get("converted").is_some() {
                format!("{src}?converted=true")
            } else {
                src
            };
            let transcript = record.get("transcript").and_then(Value::as_str);
            html! {
                br; audio controls preload="none" src=(src) aria-label={ "Voice note " (name) } {} " " a href=(src) download { "download" }
                @if let Some(t) = transcript { br; span.hint { "transcript: " (t) } }
            }
        }
        "video" => {
            html! { br; video.media controls preload="none" src=(src) aria-label={ "Video " (name) } {} }
        }
        _ => html! { " " a href=(src) download=(name) { "Download " (name) } },
    }
}

/// One history item as a list entry.
fn history_item(item: &HistoryItem) -> Markup {
    let from = from_label(item.from);
    html! {
        li class={ "turn " (from) } {
            span.who {
                (from)
                @if let Some(s) = &item.servicer_userid { " " (s) }
                @match item.via.as_deref() { Some("console") => { " (console)" } Some("reply_api") => { " (reply API)" } _ => {} }
            }
            " "
            time { (clock(item.at)) }
            " "
            span.text { (item_text(item)) }
            (media_of(item))
            @if item.from == From::Bot {
                " "
                span class={ "state " (item.state) } { (item.state) }
                @if let Some(error) = &item.error { " " span.error { (error) } }
            }
        }
    }
}

/// The history list (the live part of a conversation).
pub(super) fn history(body: &ConversationBody) -> Markup {
    html! {
        p.session {
            "State: " strong.state-word { (body.state) }
            @if let Some(s) = &body.session.servicer_userid { " (servicer " (s) ")" }
            " · "
            (session_line(&body.session, body.now))
        }
        @if body.items.is_empty() {
            p { "No messages yet." }
        } @else {
            ol.history aria-label="History" {
                @for item in &body.items { (history_item(item)) }
            }
        }
    }
}

fn session_line(session: &crate::http::bodies::SessionBody, now: u64) -> String {
    if session.can_send {
        match (session.window_closes_at, session.remaining) {
            (Some(closes), Some(left)) => format!(
                "window {} left · {left} sends left",
                span(closes.saturating_sub(now))
            ),
            _ => "may be written to".into(),
        }
    } else {
        match &session.refusal {
            Some(refusal) => format!(
                "sending refused: {}",
                serde_json::to_value(refusal)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| "refused".into())
            ),
            None => "sending refused".into(),
        }
    }
}

/// The customer's side of the sandbox chat (the live part of the sandbox page).
pub(super) fn customer_pane(chat: &CustomerChat) -> Markup {
    html! {
        @if chat.items.is_empty() {
            p { "Nothing yet: write below." }
        } @else {
            ol.chat aria-label="Chat as the customer sees it" {
                @for line in &chat.items {
                    @let side = match line.from { ChatSide::Customer => "mine", ChatSide::Service => "theirs" };
                    li class={ "bubble " (side) } {
                        span.who { @if line.from == ChatSide::Customer { "you" } @else { "account" } }
                        " "
                        time { (clock(line.at)) }
                        " "
                        span.text { @match &line.text { Some(t) => (t), None => { "[" (line.kind) "]" } } }
                    }
                }
            }
        }
    }
}

/// The sandbox page: the customer's chat beside the service's conversation view.
pub(super) fn sandbox(
    csrf: &str,
    accounts: &[Value],
    open_kfid: &str,
    customer: &str,
    chat: Option<&CustomerChat>,
    conversation: Option<&ConversationBody>,
) -> Markup {
    let chat_url = format!(
        "/console/fragments/chat?open_kfid={}&customer={}",
        query_escape(open_kfid),
        query_escape(customer)
    );
    let conversation_url = format!(
        "/console/fragments/conversation/{}/{}",
        query_escape(open_kfid),
        query_escape(customer)
    );
    layout(
        "Sandbox",
        Some(csrf),
        Nav::Sandbox,
        html! {
            p.hint { "Chat as a customer of the embedded emulator; the bot's answers arrive as the customer would see them." }
            form.pick method="get" action="/console/sandbox" {
                label for="account" { "Account" }
                select id="account" name="open_kfid" {
                    @for a in accounts {
                        @let id = a.get("open_kfid").and_then(Value::as_str).unwrap_or_default();
                        @let name = a.get("name").and_then(Value::as_str).unwrap_or(id);
                        option value=(id) selected[id == open_kfid] { (name) " (" (id) ")" }
                    }
                }
                label for="customer" { "Customer id" }
                input id="customer" name="customer" value=(customer) pattern="[A-Za-z0-9_\\-]+" required;
                button type="submit" { "Open" }
            }
            div.panes {
                section.pane aria-labelledby="customer-heading" {
                    h2 id="customer-heading" { "Customer" }
                    div id="customer-pane" data-live=(chat_url) aria-live="polite" {
                        @match chat { Some(chat) => (customer_pane(chat)), None => p.error { "Invalid account or customer id." } }
                    }
                    form.send id="send-form" method="post" action="/console/sandbox/send" data-refresh="customer-pane conversation-pane" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="open_kfid" value=(open_kfid);
                        input type="hidden" name="customer" value=(customer);
                        label for="text" { "Message as the customer" }
                        input id="text" name="text" required maxlength="2048" autocomplete="off";
                        button type="submit" { "Send" }
                    }
                    @for (kind, label) in [("image", "Send an image"), ("voice", "Send a voice note")] {
                        form.inline method="post" action="/console/sandbox/send" data-refresh="customer-pane conversation-pane" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="open_kfid" value=(open_kfid);
                            input type="hidden" name="customer" value=(customer);
                            input type="hidden" name="send" value=(kind);
                            button type="submit" { (label) }
                        }
                    }
                }
                section.pane aria-labelledby="service-heading" {
                    h2 id="service-heading" { "Conversation (the service's view)" }
                    div id="conversation-pane" data-live=(conversation_url) aria-live="polite" {
                        @match conversation { Some(c) => (history(c)), None => p.error { "Invalid account or customer id." } }
                    }
                    p { a href={ "/console/conversations/" (query_escape(open_kfid)) "/" (query_escape(customer)) } { "Open the conversation" } }
                    h3 { "Hand to a human" }
                    p.hint { "As in the WeCom client: queue the session, then the demo servicer takes it (the bot's replies are then refused), or ends it." }
                    form.inline method="post" action={ "/console/conversations/" (query_escape(open_kfid)) "/" (query_escape(customer)) "/transfer" } data-refresh="conversation-pane" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="service_state" value="2";
                        button type="submit" { "Queue the session" }
                    }
                    form.inline method="post" action="/console/sandbox/servicer" data-refresh="conversation-pane" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="open_kfid" value=(open_kfid);
                        input type="hidden" name="customer" value=(customer);
                        input type="hidden" name="hook" value="pick";
                        button type="submit" { "A servicer takes it" }
                    }
                    form.inline method="post" action="/console/sandbox/servicer" data-refresh="conversation-pane" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="open_kfid" value=(open_kfid);
                        input type="hidden" name="customer" value=(customer);
                        input type="hidden" name="hook" value="end";
                        button type="submit" { "The servicer ends it" }
                    }
                }
            }
        },
    )
}

fn conversation_row(c: &ConversationSummary, now: u64) -> Markup {
    let href = format!(
        "/console/conversations/{}/{}",
        query_escape(&c.open_kfid),
        query_escape(&c.external_userid)
    );
    html! {
        tr {
            td { a href=(href) { (c.external_userid) } }
            td { (c.open_kfid) }
            td { span class={ "state-word " (c.state) } { (c.state) } }
            td { span.who { (from_label(c.last_message.from)) } ": " (item_text(&c.last_message)) }
            td { time { (clock(c.last_message.at)) } }
            td { (session_line(&c.session, now)) }
        }
    }
}

/// The rows of the conversation list (its live part).
pub(super) fn conversation_rows(list: &ConversationList) -> Markup {
    html! {
        @if list.conversations.is_empty() {
            tr { td colspan="6" { "No conversation yet." } }
        }
        @for c in &list.conversations { (conversation_row(c, list.now)) }
    }
}

/// The conversation list.
pub(super) fn conversations(
    csrf: &str,
    list: &ConversationList,
    accounts: &[String],
    open_kfid: Option<&str>,
) -> Markup {
    let live = match open_kfid {
        Some(k) => format!(
            "/console/fragments/conversations?open_kfid={}",
            query_escape(k)
        ),
        None => "/console/fragments/conversations".into(),
    };
    layout(
        "Conversations",
        Some(csrf),
        Nav::Conversations,
        html! {
            form.pick method="get" action="/console/conversations" {
                label for="filter-account" { "Account" }
                select id="filter-account" name="open_kfid" {
                    option value="" selected[open_kfid.is_none()] { "All accounts" }
                    @for a in accounts { option value=(a) selected[open_kfid == Some(a.as_str())] { (a) } }
                }
                button type="submit" { "Show" }
            }
            div.scroll {
                table {
                    caption { "Customers, newest activity first" }
                    thead { tr { th scope="col" { "Customer" } th scope="col" { "Account" } th scope="col" { "State" } th scope="col" { "Last message" } th scope="col" { "At (UTC)" } th scope="col" { "Window and quota" } } }
                    tbody id="conversation-rows" data-live=(live) aria-live="polite" { (conversation_rows(list)) }
                }
            }
        },
    )
}

/// One conversation, with the actions.
pub(super) fn conversation(
    csrf: &str,
    open_kfid: &str,
    customer: &str,
    body: &ConversationBody,
    notice: Option<&str>,
) -> Markup {
    let base = format!(
        "/console/conversations/{}/{}",
        query_escape(open_kfid),
        query_escape(customer)
    );
    let live = format!(
        "/console/fragments/conversation/{}/{}",
        query_escape(open_kfid),
        query_escape(customer)
    );
    layout(
        &format!("Conversation with {customer}"),
        Some(csrf),
        Nav::Conversations,
        html! {
            p.hint { "Account " (open_kfid) }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            div id="conversation-pane" data-live=(live) aria-live="polite" { (history(body)) }
            section aria-labelledby="act-heading" {
                h2 id="act-heading" { "Act" }
                form.send method="post" action={ (base) "/reply" } data-refresh="conversation-pane" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="reply-text" { "Reply as the account" }
                    input id="reply-text" name="text" required maxlength="2048" autocomplete="off";
                    button type="submit" { "Send reply" }
                }
                form.inline method="post" action={ (base) "/transfer" } data-refresh="conversation-pane" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="service_state" value="2";
                    button type="submit" { "Transfer to the queue" }
                }
                form.inline method="post" action={ (base) "/transfer" } data-refresh="conversation-pane" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="service_state" value="3";
                    label for="servicer" { "Servicer" }
                    input id="servicer" name="servicer_userid" required autocomplete="off";
                    button type="submit" { "Transfer to the servicer" }
                }
                form.inline method="post" action={ (base) "/transfer" } data-refresh="conversation-pane" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="service_state" value="4";
                    button type="submit" { "End the session" }
                }
            }
        },
    )
}

/// What the deliveries page lists.
pub(super) struct DeliveryRows {
    /// Deliveries in flight or waiting for a retry.
    pub(super) deliveries: Vec<DeliveryListing>,
    /// Queued replies and the sends of the reply API and the console.
    pub(super) sends: Vec<SendListing>,
    /// The newest stored messages.
    pub(super) messages: Vec<MessageListing>,
}

/// The deliveries, sends and messages tables (the live part of the deliveries page).
pub(super) fn deliveries_tables(csrf: &str, rows: &DeliveryRows) -> Markup {
    let DeliveryRows {
        deliveries,
        sends,
        messages,
    } = rows;
    html! {
        section aria-labelledby="d-heading" {
            h2 id="d-heading" { "Webhook deliveries in flight or waiting for a retry" }
            @if deliveries.is_empty() { p id="no-deliveries" { "None: every stored message was delivered." } }
            @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Delivery" } th scope="col" { "Customers" } th scope="col" { "Messages" } th scope="col" { "Attempts" } th scope="col" { "Next attempt (UTC)" } th scope="col" { "Last error" } th scope="col" { "Act" } } }
                    tbody { @for d in deliveries { tr.delivery {
                        td { code { (d.id) } } td { (d.customers.join(", ")) } td { (d.msgids.len()) } td { (d.attempts) }
                        td { (clock_ms(d.next_attempt_at_ms)) } td.error-text { (d.last_error.as_deref().unwrap_or("")) }
                        td {
                            form.inline method="post" action={ "/console/deliveries/" (query_escape(&d.id)) "/retry" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" aria-label={ "Retry delivery " (d.id) " now" } { "Retry now" }
                            }
                            form.inline method="post" action={ "/console/deliveries/" (query_escape(&d.id)) "/give_up" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" aria-label={ "Give delivery " (d.id) " up" } { "Give up" }
                            }
                        }
                    } } }
                } }
            }
        }
        section aria-labelledby="m-heading" {
            h2 id="m-heading" { "Messages, newest first" }
            @if messages.is_empty() { p { "None stored yet." } }
            @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Customer" } th scope="col" { "Type" } th scope="col" { "Stored (UTC)" } th scope="col" { "State" } th scope="col" { "Act" } } }
                    tbody { @for m in messages { tr.message data-msgid=(m.msgid.as_str()) {
                        td { a href={ "/console/conversations/" (query_escape(m.open_kfid.as_str())) "/" (query_escape(m.external_userid.as_str())) } { (m.external_userid.as_str()) } }
                        td { (m.kind) }
                        td { (clock_ms(m.stored_at_ms)) }
                        td { span class={ "state " (m.state) } { (m.state) } }
                        td {
                            @if m.state != "pending" {
                                form.inline method="post" action={ "/console/messages/" (query_escape(m.open_kfid.as_str())) "/" (query_escape(m.msgid.as_str())) "/replay" } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" aria-label={ "Replay message " (m.msgid.as_str()) " to the bot" } { "Replay" }
                                }
                            }
                        }
                    } } }
                } }
            }
        }
        section aria-labelledby="s-heading" {
            h2 id="s-heading" { "Sends" }
            p.hint { "Replies queued from the bot's answers, and the sends of the reply API and this console." }
            @if sends.is_empty() { p { "None yet." } }
            @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Lane" } th scope="col" { "Endpoint" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Queued (UTC)" } th scope="col" { "Next attempt (UTC)" } th scope="col" { "Error" } } }
                    tbody { @for s in sends { tr {
                        td { (s.lane) } td { (s.endpoint) } td { span class={ "state " (s.state) } { (s.state) } }
                        td { (s.attempts) } td { (clock_ms(s.created_at_ms)) }
                        td { @if let Some(at) = s.next_attempt_at_ms { (clock_ms(at)) } }
                        td { (s.last_error.as_deref().unwrap_or("")) }
                    } } }
                } }
            }
        }
    }
}

/// Deliveries and sends.
pub(super) fn deliveries(csrf: &str, rows: &DeliveryRows, notice: Option<&str>) -> Markup {
    layout(
        "Deliveries and sends",
        Some(csrf),
        Nav::Deliveries,
        html! {
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            div id="deliveries" data-live="/console/fragments/deliveries" aria-live="polite" {
                (deliveries_tables(csrf, rows))
            }
        },
    )
}

/// A contact-way link just made, or why not.
pub(super) enum ContactWay {
    /// Made.
    Made {
        open_kfid: String,
        scene: String,
        url: String,
    },
    /// WeChat refused, or was unreachable.
    Failed(String),
}

/// `url` as an SVG QR code.
fn qr_svg(url: &str) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

/// The accounts, and the contact-way form.
pub(super) fn accounts(csrf: &str, list: &AccountList, made: Option<&ContactWay>) -> Markup {
    let rows = &list.accounts;
    layout(
        "Accounts",
        Some(csrf),
        Nav::Accounts,
        html! {
            p.hint { "The same list as " code { "GET /v1/accounts" } ": WeChat's accounts and their servicers." }
            @if let Some(error) = &list.error { p.error role="alert" { "WeChat's account list could not be read: " (error) } }
            @if rows.is_empty() { p { "No account yet." } }
            @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Account" } th scope="col" { "Name" } th scope="col" { "Pulled" } th scope="col" { "Servicers (status)" } } }
                    tbody { @for a in rows { tr.account {
                        td { code { (a.open_kfid) } }
                        td { (a.name.as_deref().unwrap_or("")) }
                        td { @if a.pulled { "yes" } @else { "no" } }
                        td {
                            @if let Some(error) = &a.error { span.error { "not readable: " (error) } }
                            @for (i, s) in a.servicers.iter().enumerate() {
                                @if i > 0 { ", " }
                                @match (&s.userid, s.department_id) {
                                    (Some(userid), _) => { (userid) }
                                    (None, Some(d)) => { "department " (d) }
                                    _ => { "?" }
                                }
                                @if let Some(status) = s.status { " " span class={ "state " (status) } { (status) } }
                            }
                        }
                    } } }
                } }
            }
            section aria-labelledby="cw-heading" {
                h2 id="cw-heading" { "Contact-way link" }
                form.send method="post" action="/console/accounts/contact_way" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="cw-account" { "Account" }
                    select id="cw-account" name="open_kfid" {
                        @for a in rows { option value=(a.open_kfid) { (a.name.as_deref().unwrap_or(&a.open_kfid)) } }
                    }
                    label for="cw-scene" { "Scene (optional)" }
                    input id="cw-scene" name="scene" maxlength="32" pattern="[A-Za-z0-9_\\-]*" autocomplete="off";
                    button type="submit" { "Create the link" }
                }
                @match made {
                    Some(ContactWay::Made { open_kfid, scene, url }) => {
                        figure.qr {
                            @if let Some(svg) = qr_svg(url) {
                                div role="img" aria-label="QR code of the contact-way link" { (PreEscaped(svg)) }
                            }
                            figcaption {
                                "Link for " (open_kfid) @if !scene.is_empty() { " (scene " (scene) ")" } ": "
                                a id="contact-way-url" href=(url) { (url) }
                            }
                        }
                    }
                    Some(ContactWay::Failed(why)) => { p.error role="alert" { "Not created: " (why) } }
                    None => {}
                }
            }
        },
    )
}

/// A time in unix milliseconds as `HH:MM:SS UTC`, or "never".
fn when(at_ms: Option<u64>) -> String {
    at_ms.map_or_else(
        || "never since start".into(),
        |ms| format!("{} UTC", clock_ms(i64::try_from(ms).unwrap_or(0))),
    )
}

/// Setup and health: the body of `GET /v1/setup`.
pub(super) fn health(csrf: &str, report: &SetupBody, counters: &[(&str, u64)]) -> Markup {
    let SetupBody {
        sandbox,
        ready,
        not_ready,
        credentials,
        callback,
        trusted_ip,
        webhook,
        budget,
    } = report;
    let mark = |ok: bool| if ok { "ok" } else { "error" };
    html! {
        (layout(
            "Setup and health",
            Some(csrf),
            Nav::Health,
            html! {
                p.hint { "The same report as " code { "GET /v1/setup" } "." }
                section aria-labelledby="ready-heading" {
                    h2 id="ready-heading" { "Readiness" }
                    @if *ready { p.ok id="readiness" { "Ready: WeChat answers, the store writes." } }
                    @else { ul.error id="readiness" { @for line in not_ready { li { (line) } } } }
                }
                section aria-labelledby="cred-heading" {
                    h2 id="cred-heading" { "Credentials" }
                    p id="credentials" class=(mark(credentials.ok)) {
                        @if credentials.ok { "An access token was obtained for corp " code { (credentials.corp_id) } "." }
                        @else {
                            "No access token for corp " code { (credentials.corp_id) } ": "
                            (credentials.error.as_deref().unwrap_or("refused"))
                            @if let Some(code) = credentials.errcode { " (errcode " (code) ")" }
                            ". Check wechat.corp_id and wechat.secret."
                        }
                    }
                }
                section aria-labelledby="cb-heading" {
                    h2 id="cb-heading" { "Callback" }
                    @if !callback.enabled {
                        p { "Callbacks are off (no wechat.callback_token and wechat.encoding_aes_key): only the safety pull runs." }
                    } @else {
                        @if *sandbox { p.hint { "Sandbox: the embedded emulator calls this service's callback URL." } }
                        dl.facts {
                            dt { "URL to enter in the WeCom admin" }
                            dd { @match &callback.url { Some(url) => code id="callback-url" { (url) }, None => "this service's public URL and the callback path" }
                                " (WeChat Customer Service → API → callback settings; behind a proxy, its public https host)" }
                            dt { "Verified by WeChat" }
                            dd id="callback-verified" class=(if *sandbox { "hint" } else { mark(callback.verified) }) {
                                @if callback.verified { "yes, last at " (when(callback.verified_at_ms)) }
                                @else { "not since start: save the URL in the WeCom admin to have WeChat verify it" }
                            }
                            dt { "Last callback of corp " code { (callback.corp_id) } }
                            dd id="callback-last" { (when(callback.last_accepted_at_ms)) " (" (callback.accepted) " accepted)" }
                            dt { "Refused as forged" }
                            dd class=(mark(callback.forged == 0)) { (callback.forged) @if callback.forged > 0 { ", last at " (when(callback.last_forged_at_ms)) ": check the Token and EncodingAESKey" } }
                        }
                    }
                }
                section aria-labelledby="ip-heading" {
                    h2 id="ip-heading" { "Trusted IPs (errcode 60020)" }
                    p id="trusted-ip" class=(mark(!trusted_ip.refused_60020)) {
                        @if let Some(ip) = &trusted_ip.outbound_ip { "WeChat sees this service as " strong { (ip) } ". " }
                        (trusted_ip.hint)
                    }
                }
                section aria-labelledby="wh-heading" {
                    h2 id="wh-heading" { "Webhook" }
                    @match webhook.target {
                        "webhook" => {
                            p id="webhook" class=(mark(webhook.reachable == Some(true) && webhook.failing_deliveries == 0)) {
                                code { (webhook.origin.as_deref().unwrap_or("?")) } " "
                                @match webhook.reachable {
                                    Some(true) => "accepts connections",
                                    _ => { "is unreachable: " (webhook.error.as_deref().unwrap_or("")) }
                                }
                                "; " (webhook.failing_deliveries) " deliveries waiting for a retry"
                                @if let Some(error) = &webhook.last_error { " (last error: " (error) ")" }
                                "."
                            }
                        }
                        "echo" => { p id="webhook" { "No webhook: the sandbox's echo bot answers." } }
                        "stdout" => { p id="webhook" { "No webhook: messages are written to stdout as JSON Lines." } }
                        kind => { p id="webhook" { "No webhook: the built-in " (kind) " responder answers." } }
                    }
                    p.hint { (webhook.acknowledged) " deliveries acknowledged, " (webhook.failed_attempts) " failed attempts since start." }
                }
                section aria-labelledby="budget-heading" {
                    h2 id="budget-heading" { "WeChat call budget" }
                    @if budget.is_empty() { p { "No call counted yet." } }
                    @else {
                        div.scroll { table {
                            thead { tr { th scope="col" { "API" } th scope="col" { "This minute" } th scope="col" { "This hour" } th scope="col" { "Waits" } th scope="col" { "45009 blocks" } } }
                            tbody { @for b in budget { tr {
                                td { code { (b.api) } }
                                td { (b.minute) @if let Some(l) = b.per_minute.filter(|l| *l > 0) { " of " (l) } }
                                td { (b.hour) @if let Some(l) = b.per_hour.filter(|l| *l > 0) { " of " (l) } }
                                td { (b.waits) } td { (b.blocks) }
                            } } }
                        } }
                    }
                }
                section aria-labelledby="c-heading" {
                    h2 id="c-heading" { "Since start" }
                    dl.counters { @for (name, value) in counters { dt { (name) } dd { (value) } } }
                    p.hint { "All series: " a href="/metrics" { "/metrics" } "." }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_escape("wm_a-1"), "wm_a-1");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
    }

    #[test]
    fn a_contact_way_link_becomes_an_svg_qr_code() {
        let svg = qr_svg("https://work.weixin.qq.com/kfid/kfc123").unwrap();
        assert!(svg.contains("<svg"));
    }

    fn item(from: From, kind: &str, state: &str, media: Option<Value>) -> HistoryItem {
        HistoryItem {
            from,
            kind: kind.into(),
            msgid: "m/1".into(),
            at: 0,
            text: (kind == "text").then(|| "hello".into()),
            servicer_userid: (from == From::Servicer).then(|| "zhangsan".into()),
            state: state.into(),
            error: (state == "refused").then(|| "human_servicer (95018)".into()),
            message: serde_json::json!({"open_kfid": "wkA"}),
            media,
            via: None,
        }
    }

    #[test]
    fn the_history_tells_turns_apart_and_shows_media_and_results() {
        let voice = serde_json::json!({"path": "/m/v.amr", "file_name": "v.amr",
            "converted": {"path": "/m/v.mp3"}, "transcript": "<你好>"});
        let file = serde_json::json!({"path": "/m/r.pdf", "file_name": "report.pdf"});
        let image = serde_json::json!({"path": "/m/i.png", "file_name": "i.png"});
        let html = |i: HistoryItem| history_item(&i).into_string();
        let voice = html(item(From::Customer, "voice", "delivered", Some(voice)));
        assert!(
            voice.contains("<audio") && voice.contains("/console/media/wkA/m%2F1?converted=true"),
            "{voice}"
        );
        assert!(voice.contains("transcript: &lt;你好&gt;"), "{voice}");
        let file = html(item(From::Customer, "file", "delivered", Some(file)));
        assert!(
            file.contains("download=\"report.pdf\"") && file.contains("Download report.pdf"),
            "{file}"
        );
        let image = html(item(From::Customer, "image", "delivered", Some(image)));
        assert!(
            image.contains("<img") && image.contains("alt=\"Image i.png from the customer\""),
            "{image}"
        );
        let refused = html(item(From::Bot, "text", "refused", None));
        assert!(
            refused.contains("turn bot")
                && refused.contains("state refused")
                && refused.contains("human_servicer (95018)"),
            "{refused}"
        );
        let joined = html(item(From::Bot, "text", "joined", None));
        assert!(joined.contains("state joined"), "{joined}");
        let servicer = html(item(From::Servicer, "text", "delivered", None));
        assert!(
            servicer.contains("turn servicer") && servicer.contains("zhangsan"),
            "{servicer}"
        );
        let system = html(item(From::System, "event:enter_session", "delivered", None));
        assert!(system.contains("turn system"), "{system}");
        let failed = serde_json::json!({"error": {"kind": "too_large"}});
        let failed = html(item(From::Customer, "image", "delivered", Some(failed)));
        assert!(
            failed.contains("media not downloaded (too_large)"),
            "{failed}"
        );
    }

    #[test]
    fn content_is_escaped() {
        let page = message_page("<b>", "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
    }
}
