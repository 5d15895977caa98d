//! Whose turn it is: who wrote each stored item and whether the bot may answer it, decided once
//! when the page is committed and stored with the item.
//!
//! WeChat gives a human servicer's message (typed in the WeCom client) the customer's
//! `external_userid`; only `origin` tells them apart (official doc 94670). A bot that answers
//! every item with a customer id answers its own colleagues, and one that answers while a human
//! holds the session talks over them. The verdict here is what the bot is told instead.

use wechat_kf::message::{Message, MessageContent};
use wechat_kf::session::{SendRefusal, ServiceState, SessionView};

/// The `menu_id` prefix of the satisfaction survey's choices: a click on one is a rating, not a
/// new conversation for the bot.
pub const SURVEY_MENU_PREFIX: &str = "wechat_kf_survey_";

/// Who wrote an item (`from` in the webhook body), from its `origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Author {
    /// The WeChat customer (origin 3).
    Customer,
    /// A human servicer in the WeCom client (origin 5).
    Servicer,
    /// WeChat itself (origin 4, events) or an origin this version does not know.
    System,
}

impl Author {
    /// The author of an item with this `origin`.
    pub fn of_origin(origin: Option<u32>) -> Author {
        match origin {
            Some(3) => Author::Customer,
            Some(5) => Author::Servicer,
            _ => Author::System,
        }
    }

    /// The stable name (`"customer"`, `"servicer"`, `"system"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Author::Customer => "customer",
            Author::Servicer => "servicer",
            Author::System => "system",
        }
    }

    /// The author named by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<Author> {
        match name {
            "customer" => Some(Author::Customer),
            "servicer" => Some(Author::Servicer),
            "system" => Some(Author::System),
            _ => None,
        }
    }
}

/// Why the bot may not answer an item (`reason` beside `"bot_may_reply": false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoReply {
    /// A human servicer holds the session (state 3), or wrote the item.
    HumanServicer,
    /// The session waits in the queue for a servicer (state 2).
    Queued,
    /// The session has ended (state 4) and the customer has not written since.
    Ended,
    /// The 48-hour window is closed, or the only recent messages are menu clicks.
    WindowClosed,
    /// The 5 messages allowed per customer message are spent.
    QuotaExhausted,
    /// The session is in a state in which WeChat accepts no `send_msg`.
    StateForbidsSending,
    /// An event or another item WeChat produced, not a customer's message.
    SystemEvent,
    /// The customer's answer to the satisfaction survey (a rating, not a question).
    SurveyAnswer,
}

impl NoReply {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            NoReply::HumanServicer => "human_servicer",
            NoReply::Queued => "queued",
            NoReply::Ended => "ended",
            NoReply::WindowClosed => "window_closed",
            NoReply::QuotaExhausted => "quota_exhausted",
            NoReply::StateForbidsSending => "state_forbids_sending",
            NoReply::SystemEvent => "system_event",
            NoReply::SurveyAnswer => "survey_answer",
        }
    }

    /// Every reason.
    pub const ALL: [NoReply; 8] = [
        NoReply::HumanServicer,
        NoReply::Queued,
        NoReply::Ended,
        NoReply::WindowClosed,
        NoReply::QuotaExhausted,
        NoReply::StateForbidsSending,
        NoReply::SystemEvent,
        NoReply::SurveyAnswer,
    ];

    /// The reason named by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<NoReply> {
        NoReply::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether a human has, or is about to have, the conversation (what
    /// [`WhileHuman`] applies to).
    pub fn is_human(self) -> bool {
        matches!(self, NoReply::HumanServicer | NoReply::Queued)
    }

    /// The reason for a refusal of the send policy.
    pub fn of_refusal(refusal: &SendRefusal) -> NoReply {
        match refusal {
            SendRefusal::HumanServicer { .. } => NoReply::HumanServicer,
            SendRefusal::Queued => NoReply::Queued,
            SendRefusal::Ended => NoReply::Ended,
            SendRefusal::QuotaExhausted { .. } => NoReply::QuotaExhausted,
            SendRefusal::NoCustomerMessage
            | SendRefusal::WindowExpired { .. }
            | SendRefusal::OnlyMenuClicks { .. } => NoReply::WindowClosed,
            // A refusal this version does not know is still a refusal.
            _ => NoReply::StateForbidsSending,
        }
    }
}

/// Who wrote a stored item and whether the bot may answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Who wrote it.
    pub from: Author,
    /// `None` when the bot may answer; else why not.
    pub no_reply: Option<NoReply>,
}

impl Turn {
    /// The turn of what WeChat or the service wrote (events, session changes): never the
    /// bot's to answer.
    pub const SYSTEM: Turn = Turn {
        from: Author::System,
        no_reply: Some(NoReply::SystemEvent),
    };

    /// The turn of an item stored before turns were recorded: its author from `origin`, and
    /// the bot allowed to answer customers (what the service did then).
    pub fn legacy(origin: Option<u32>) -> Turn {
        let from = Author::of_origin(origin);
        Turn {
            from,
            no_reply: match from {
                Author::Customer => None,
                Author::Servicer => Some(NoReply::HumanServicer),
                Author::System => Some(NoReply::SystemEvent),
            },
        }
    }

    /// Whether the bot may answer.
    pub fn bot_may_reply(self) -> bool {
        self.no_reply.is_none()
    }

    /// The stored form of [`no_reply`](Self::no_reply), with [`Turn::read`] its inverse.
    pub fn stored_no_reply(self) -> Option<&'static str> {
        self.no_reply.map(NoReply::as_str)
    }

    /// A turn read back from the store's `author` and `no_reply` columns; a row written before
    /// they existed (`author` NULL) gets [`Turn::legacy`].
    pub fn read(author: Option<&str>, no_reply: Option<&str>, origin: Option<u32>) -> Turn {
        match author.and_then(Author::parse) {
            Some(from) => Turn {
                from,
                no_reply: no_reply
                    .map(|r| NoReply::parse(r).unwrap_or(NoReply::StateForbidsSending)),
            },
            None => Turn::legacy(origin),
        }
    }

    /// The members added beside the original JSON: `"from":…,"bot_may_reply":…` and, when the
    /// bot may not answer, `"reason":…` (no braces, so callers can add members of their own).
    pub fn json_members(self) -> String {
        match self.no_reply {
            None => format!("\"from\":\"{}\",\"bot_may_reply\":true", self.from.as_str()),
            Some(reason) => format!(
                "\"from\":\"{}\",\"bot_may_reply\":false,\"reason\":\"{}\"",
                self.from.as_str(),
                reason.as_str()
            ),
        }
    }
}

/// What the service does with the bot's side of a conversation while a human holds it or it
/// waits in the queue (`conversation.while_human`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhileHuman {
    /// Deliver the items, with `"bot_may_reply": false` (the default).
    #[default]
    Mark,
    /// Store them and deliver them only once the bot may speak again (the customer writes
    /// after the session ended), marked as history, just before that message.
    Hold,
    /// Store them without ever delivering them to the bot.
    Skip,
}

/// The state before an item, as the bot may answer it: `None`, or why not.
fn state_refusal(state: Option<ServiceState>) -> Option<NoReply> {
    match state {
        Some(ServiceState::Human) => Some(NoReply::HumanServicer),
        Some(ServiceState::Queued) => Some(NoReply::Queued),
        Some(ServiceState::Ended) => Some(NoReply::Ended),
        Some(ServiceState::Other(_)) => Some(NoReply::StateForbidsSending),
        Some(ServiceState::New | ServiceState::Bot) | None => None,
    }
}

/// Whether a decoded customer text is an answer to the satisfaction survey.
pub fn is_survey_answer(message: &Message) -> bool {
    matches!(
        message.content(),
        MessageContent::Text(text)
            if text.menu_id.as_deref().is_some_and(|id| id.starts_with(SURVEY_MENU_PREFIX))
    )
}

/// The turn of one item of a page, given the state the item left (`state_after`), the
/// customer's view after the whole page (`final_view`) and WeChat's clock (`now`, unix
/// seconds; `None` decides by the session state only).
///
/// A customer message may be answered when the session it arrived in allowed the bot to
/// speak and the session still does at the end of the page (a servicer who took over later in
/// the same page silences the bot for the earlier messages too), and, with `now`, the bot
/// could still send now (a backlog older than 48 hours cannot be answered). Items of a
/// servicer or of WeChat are never the bot's to answer.
pub fn turn_of(
    from: Author,
    survey_answer: bool,
    state_after: Option<ServiceState>,
    final_view: Option<&SessionView>,
    now: Option<u64>,
) -> Turn {
    let no_reply = match from {
        Author::Servicer => Some(NoReply::HumanServicer),
        Author::System => Some(NoReply::SystemEvent),
        Author::Customer if survey_answer => Some(NoReply::SurveyAnswer),
        Author::Customer => state_refusal(state_after)
            .or_else(|| state_refusal(final_view.and_then(SessionView::state)))
            .or_else(|| {
                let (view, now) = (final_view?, now?);
                view.can_send(now)
                    .err()
                    .map(|refusal| NoReply::of_refusal(&refusal))
            }),
    };
    Turn { from, no_reply }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for from in [Author::Customer, Author::Servicer, Author::System] {
            assert_eq!(Author::parse(from.as_str()), Some(from));
        }
        for reason in NoReply::ALL {
            assert_eq!(NoReply::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Author::parse("bot"), None);
        assert_eq!(NoReply::parse("tired"), None);
    }

    #[test]
    fn a_servicers_message_is_never_the_bots_to_answer() {
        let turn = turn_of(
            Author::Servicer,
            false,
            Some(ServiceState::Human),
            None,
            None,
        );
        assert_eq!(turn.from, Author::Servicer);
        assert_eq!(turn.no_reply, Some(NoReply::HumanServicer));
    }

    #[test]
    fn a_customer_message_in_a_human_session_is_marked_and_one_in_a_new_session_is_not() {
        let human = turn_of(
            Author::Customer,
            false,
            Some(ServiceState::Human),
            None,
            None,
        );
        assert_eq!(human.no_reply, Some(NoReply::HumanServicer));
        let fresh = turn_of(Author::Customer, false, Some(ServiceState::New), None, None);
        assert!(fresh.bot_may_reply());
    }

    #[test]
    fn rows_from_before_turns_were_stored_read_as_the_service_treated_them() {
        assert!(Turn::read(None, None, Some(3)).bot_may_reply());
        assert_eq!(
            Turn::read(None, None, Some(5)).no_reply,
            Some(NoReply::HumanServicer)
        );
        assert_eq!(
            Turn::read(Some("customer"), Some("queued"), Some(3)).no_reply,
            Some(NoReply::Queued)
        );
    }

    #[test]
    fn the_json_members_name_the_reason_only_when_the_bot_may_not_answer() {
        let may = Turn {
            from: Author::Customer,
            no_reply: None,
        };
        assert_eq!(
            may.json_members(),
            r#""from":"customer","bot_may_reply":true"#
        );
        let may_not = Turn {
            from: Author::Customer,
            no_reply: Some(NoReply::Queued),
        };
        assert_eq!(
            may_not.json_members(),
            r#""from":"customer","bot_may_reply":false,"reason":"queued""#
        );
    }
}
