//! The knowledge base: `kf/knowledge/*` (official docs 95971, 95972).

use serde::{Deserialize, Deserializer, Serialize};

use super::execute::Call;
use super::{Client, Error};
use crate::MediaId;

/// Knowledge-base endpoints; see [`Client::knowledge`].
#[derive(Debug, Clone, Copy)]
pub struct Knowledge<'c> {
    client: &'c Client,
}

/// A `{"content": …}` object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct TextContent {
    /// The text.
    #[serde(default)]
    pub content: String,
}

/// A question: `{"text": {"content": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Question {
    /// The question text (≤ 200 characters).
    #[serde(default)]
    pub text: TextContent,
}

impl Question {
    /// A question with this text.
    pub fn new(content: impl Into<String>) -> Self {
        Self {
            text: TextContent {
                content: content.into(),
            },
        }
    }
}

/// Similar phrasings of a question.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct SimilarQuestions {
    /// ≤ 100 items, each ≤ 200 characters.
    #[serde(default)]
    pub items: Vec<Question>,
}

/// An answer: text plus up to 4 attachments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Answer {
    /// The answer text (≤ 500 characters).
    #[serde(default)]
    pub text: TextContent,
    /// Up to 4 attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl Answer {
    /// An answer with this text.
    pub fn new(content: impl Into<String>) -> Self {
        Self {
            text: TextContent {
                content: content.into(),
            },
            attachments: Vec::new(),
        }
    }

    /// Adds an attachment.
    pub fn attachment(mut self, attachment: Attachment) -> Self {
        self.attachments.push(attachment);
        self
    }
}

/// An answer attachment: `{"msgtype": T, T: {…}}`. Unknown types keep their `msgtype` and lose
/// nothing the client needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Attachment {
    /// `image`, `video`, `link` or `miniprogram`.
    pub msgtype: String,
    /// For `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaAttachment>,
    /// For `video`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<MediaAttachment>,
    /// For `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkAttachment>,
    /// For `miniprogram`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram: Option<MiniProgramAttachment>,
}

impl Attachment {
    /// An image attachment.
    pub fn image(media_id: impl Into<MediaId>) -> Self {
        Self {
            msgtype: "image".into(),
            image: Some(MediaAttachment::new(media_id)),
            ..Self::default()
        }
    }

    /// A video attachment.
    pub fn video(media_id: impl Into<MediaId>) -> Self {
        Self {
            msgtype: "video".into(),
            video: Some(MediaAttachment::new(media_id)),
            ..Self::default()
        }
    }

    /// A link attachment.
    pub fn link(link: LinkAttachment) -> Self {
        Self {
            msgtype: "link".into(),
            link: Some(link),
            ..Self::default()
        }
    }

    /// A mini-program attachment.
    pub fn miniprogram(miniprogram: MiniProgramAttachment) -> Self {
        Self {
            msgtype: "miniprogram".into(),
            miniprogram: Some(miniprogram),
            ..Self::default()
        }
    }
}

/// An image or video attachment: `media_id` in requests, `name` in list responses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct MediaAttachment {
    /// The media id (requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<MediaId>,
    /// The file name (list responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl MediaAttachment {
    /// An attachment referring to `media_id`.
    pub fn new(media_id: impl Into<MediaId>) -> Self {
        Self {
            media_id: Some(media_id.into()),
            name: None,
        }
    }
}

/// A link attachment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct LinkAttachment {
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Target URL.
    #[serde(default)]
    pub url: String,
    /// Picture URL (`pic_url`; `picurl` is accepted when reading).
    #[serde(default, alias = "picurl", skip_serializing_if = "Option::is_none")]
    pub pic_url: Option<String>,
}

/// A mini-program attachment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct MiniProgramAttachment {
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Cover (requests; omitted in list responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_media_id: Option<MediaId>,
    /// Mini program appid.
    #[serde(default)]
    pub appid: String,
    /// Page path.
    #[serde(default)]
    pub pagepath: String,
}

/// A knowledge-base group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct KnowledgeGroup {
    /// Group id.
    pub group_id: String,
    /// Name (≤ 12 characters).
    #[serde(default)]
    pub name: String,
    /// Whether this is the system default group (cannot be changed or deleted).
    #[serde(default, deserialize_with = "flag")]
    pub is_default: bool,
}

/// A Q&A ("intent"). Reads the doc sample that nests `similar_questions` and `answers` inside
/// `question` as well as the field table's sibling layout; writes siblings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Intent {
    /// Group id.
    pub group_id: String,
    /// Intent id.
    pub intent_id: String,
    /// The question.
    pub question: Question,
    /// Similar questions.
    pub similar_questions: SimilarQuestions,
    /// Answers (exactly one supported).
    pub answers: Vec<Answer>,
}

impl<'de> Deserialize<'de> for Intent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct QuestionWire {
            #[serde(default)]
            text: TextContent,
            #[serde(default)]
            similar_questions: Option<SimilarQuestions>,
            #[serde(default)]
            answers: Option<Vec<Answer>>,
        }
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            group_id: String,
            #[serde(default)]
            intent_id: String,
            #[serde(default)]
            question: Option<QuestionWire>,
            #[serde(default)]
            similar_questions: Option<SimilarQuestions>,
            #[serde(default)]
            answers: Option<Vec<Answer>>,
        }
        let wire = Wire::deserialize(deserializer)?;
        let (text, nested_similar, nested_answers) = match wire.question {
            Some(q) => (q.text, q.similar_questions, q.answers),
            None => (TextContent::default(), None, None),
        };
        Ok(Intent {
            group_id: wire.group_id,
            intent_id: wire.intent_id,
            question: Question { text },
            similar_questions: wire
                .similar_questions
                .or(nested_similar)
                .unwrap_or_default(),
            answers: wire.answers.or(nested_answers).unwrap_or_default(),
        })
    }
}

fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    Ok(match Option::<Flag>::deserialize(deserializer)? {
        Some(Flag::Bool(b)) => b,
        Some(Flag::Int(i)) => i != 0,
        None => false,
    })
}

/// `POST kf/knowledge/list_group`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListGroupsRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
}

impl ListGroupsRequest {
    /// The first page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues after `cursor`.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// Page size (default 500, max 1000).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only this group.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }
}

/// Response of `kf/knowledge/list_group`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct ListGroupsResponse {
    /// Cursor for the next page.
    #[serde(default)]
    pub next_cursor: String,
    /// Whether more pages follow.
    #[serde(default, deserialize_with = "flag")]
    pub has_more: bool,
    /// The groups.
    #[serde(default)]
    pub group_list: Vec<KnowledgeGroup>,
}

/// `POST kf/knowledge/list_intent`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListIntentsRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intent_id: Option<String>,
}

impl ListIntentsRequest {
    /// The first page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues after `cursor`.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// Page size (default 500, max 1000).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only this group.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Only this intent.
    pub fn intent_id(mut self, intent_id: impl Into<String>) -> Self {
        self.intent_id = Some(intent_id.into());
        self
    }
}

/// Response of `kf/knowledge/list_intent`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct ListIntentsResponse {
    /// Cursor for the next page.
    #[serde(default)]
    pub next_cursor: String,
    /// Whether more pages follow.
    #[serde(default, deserialize_with = "flag")]
    pub has_more: bool,
    /// The intents.
    #[serde(default)]
    pub intent_list: Vec<Intent>,
}

/// `POST kf/knowledge/add_intent`.
#[derive(Debug, Clone, Serialize)]
pub struct AddIntentRequest {
    group_id: String,
    question: Question,
    #[serde(skip_serializing_if = "Option::is_none")]
    similar_questions: Option<SimilarQuestions>,
    answers: Vec<Answer>,
}

impl AddIntentRequest {
    /// A Q&A in `group_id`.
    pub fn new(group_id: impl Into<String>, question: impl Into<String>, answer: Answer) -> Self {
        Self {
            group_id: group_id.into(),
            question: Question::new(question),
            similar_questions: None,
            answers: vec![answer],
        }
    }

    /// Similar phrasings (≤ 100).
    pub fn similar_questions(mut self, items: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.similar_questions = Some(SimilarQuestions {
            items: items.into_iter().map(Question::new).collect(),
        });
        self
    }
}

/// `POST kf/knowledge/mod_intent`: each part given replaces the old one wholesale.
#[derive(Debug, Clone, Serialize)]
pub struct ModIntentRequest {
    intent_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<Question>,
    #[serde(skip_serializing_if = "Option::is_none")]
    similar_questions: Option<SimilarQuestions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<Vec<Answer>>,
}

impl ModIntentRequest {
    /// Modifies `intent_id`.
    pub fn new(intent_id: impl Into<String>) -> Self {
        Self {
            intent_id: intent_id.into(),
            question: None,
            similar_questions: None,
            answers: None,
        }
    }

    /// Replaces the question.
    pub fn question(mut self, question: impl Into<String>) -> Self {
        self.question = Some(Question::new(question));
        self
    }

    /// Replaces the similar questions.
    pub fn similar_questions(mut self, items: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.similar_questions = Some(SimilarQuestions {
            items: items.into_iter().map(Question::new).collect(),
        });
        self
    }

    /// Replaces the answer.
    pub fn answer(mut self, answer: Answer) -> Self {
        self.answers = Some(vec![answer]);
        self
    }
}

fn chars_at_most(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let count = value.chars().count();
    if count == 0 {
        return Err(Error::validation(field, "must not be empty"));
    }
    if count > max {
        return Err(Error::validation(
            field,
            format!("{count} characters; at most {max} are allowed"),
        ));
    }
    Ok(())
}

fn validate_parts(
    question: Option<&Question>,
    similar: Option<&SimilarQuestions>,
    answers: Option<&[Answer]>,
) -> Result<(), Error> {
    if let Some(question) = question {
        chars_at_most("question.text.content", &question.text.content, 200)?;
    }
    if let Some(similar) = similar {
        if similar.items.len() > 100 {
            return Err(Error::validation(
                "similar_questions.items",
                "more than 100 items",
            ));
        }
        for (i, item) in similar.items.iter().enumerate() {
            chars_at_most(
                &format!("similar_questions.items[{i}].text.content"),
                &item.text.content,
                200,
            )?;
        }
    }
    if let Some(answers) = answers {
        if answers.len() != 1 {
            return Err(Error::validation(
                "answers",
                "exactly one answer is supported",
            ));
        }
        chars_at_most("answers[0].text.content", &answers[0].text.content, 500)?;
        if answers[0].attachments.len() > 4 {
            return Err(Error::validation(
                "answers[0].attachments",
                "more than 4 attachments",
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct GroupIdResponse {
    group_id: String,
}

#[derive(Deserialize)]
struct IntentIdResponse {
    intent_id: String,
}

impl<'c> Knowledge<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// `POST kf/knowledge/add_group`: returns the new group id.
    pub async fn add_group(self, name: impl Into<String>) -> Result<String, Error> {
        #[derive(Serialize)]
        struct Body {
            name: String,
        }
        let body = Body { name: name.into() };
        chars_at_most("name", &body.name, 12)?;
        let call = Call::post("kf/knowledge/add_group", &body)?.non_idempotent();
        let response: GroupIdResponse = self.client.execute_json(call).await?;
        Ok(response.group_id)
    }

    /// `POST kf/knowledge/del_group`.
    pub async fn del_group(self, group_id: impl Into<String>) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Body {
            group_id: String,
        }
        let call = Call::post(
            "kf/knowledge/del_group",
            &Body {
                group_id: group_id.into(),
            },
        )?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/knowledge/mod_group`: renames a group.
    pub async fn mod_group(
        self,
        group_id: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Body {
            group_id: String,
            name: String,
        }
        let body = Body {
            group_id: group_id.into(),
            name: name.into(),
        };
        chars_at_most("name", &body.name, 12)?;
        let call = Call::post("kf/knowledge/mod_group", &body)?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/knowledge/list_group`: one page.
    pub async fn list_groups(
        self,
        request: ListGroupsRequest,
    ) -> Result<ListGroupsResponse, Error> {
        if request.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err(Error::validation("limit", "must be 1..=1000"));
        }
        let call = Call::post("kf/knowledge/list_group", &request)?;
        self.client.execute_json(call).await
    }

    /// `POST kf/knowledge/add_intent`: returns the new intent id.
    pub async fn add_intent(self, request: AddIntentRequest) -> Result<String, Error> {
        validate_parts(
            Some(&request.question),
            request.similar_questions.as_ref(),
            Some(&request.answers),
        )?;
        let call = Call::post("kf/knowledge/add_intent", &request)?.non_idempotent();
        let response: IntentIdResponse = self.client.execute_json(call).await?;
        Ok(response.intent_id)
    }

    /// `POST kf/knowledge/del_intent`.
    pub async fn del_intent(self, intent_id: impl Into<String>) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Body {
            intent_id: String,
        }
        let call = Call::post(
            "kf/knowledge/del_intent",
            &Body {
                intent_id: intent_id.into(),
            },
        )?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/knowledge/mod_intent`.
    pub async fn mod_intent(self, request: ModIntentRequest) -> Result<(), Error> {
        validate_parts(
            request.question.as_ref(),
            request.similar_questions.as_ref(),
            request.answers.as_deref(),
        )?;
        let call = Call::post("kf/knowledge/mod_intent", &request)?;
        self.client.execute_unit(call).await
    }

    /// `POST kf/knowledge/list_intent`: one page.
    pub async fn list_intents(
        self,
        request: ListIntentsRequest,
    ) -> Result<ListIntentsResponse, Error> {
        if request.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err(Error::validation("limit", "must be 1..=1000"));
        }
        let call = Call::post("kf/knowledge/list_intent", &request)?;
        self.client.execute_json(call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_are_read_in_both_documented_layouts() {
        let siblings = r#"{"group_id":"g","intent_id":"i","question":{"text":{"content":"q"}},
            "similar_questions":{"items":[{"text":{"content":"s"}}]},
            "answers":[{"text":{"content":"a"},"attachments":[{"msgtype":"image","image":{"name":"x.png"}}]}]}"#;
        let nested = r#"{"group_id":"g","intent_id":"i","question":{"text":{"content":"q"},
            "similar_questions":{"items":[{"text":{"content":"s"}}]},
            "answers":[{"text":{"content":"a"},"attachments":[{"msgtype":"image","image":{"name":"x.png"}}]}]}}"#;
        let a: Intent = serde_json::from_str(siblings).unwrap();
        let b: Intent = serde_json::from_str(nested).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.answers[0].attachments[0]
                .image
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("x.png")
        );
    }

    #[test]
    fn link_attachments_accept_picurl() {
        let link: LinkAttachment =
            serde_json::from_str(r#"{"title":"t","url":"u","picurl":"p"}"#).unwrap();
        assert_eq!(link.pic_url.as_deref(), Some("p"));
        assert_eq!(serde_json::to_value(&link).unwrap()["pic_url"], "p");
    }
}
