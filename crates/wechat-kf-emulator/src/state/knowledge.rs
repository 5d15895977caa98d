//! Knowledge base: groups and intents (official docs 95971, 95972).
//!
//! The spec names no error codes for broken constraints (duplicate names, unknown ids, quotas);
//! the emulator answers 40035 with a clear errmsg.

use serde_json::{Map, Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::ids;
use crate::json::Fields;
use crate::state::media::{MediaStore, MediaType};

/// Most groups.
pub const MAX_GROUPS: usize = 100;
/// Most intents per group.
pub const MAX_INTENTS_PER_GROUP: usize = 200;

/// A group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Id.
    pub group_id: String,
    /// Name (≤ 12 chars, unique).
    pub name: String,
    /// The system default group (cannot be changed).
    pub is_default: bool,
}

/// An intent (Q&A), stored in its list-response form.
#[derive(Debug, Clone)]
pub struct Intent {
    /// Id.
    pub intent_id: String,
    /// Group.
    pub group_id: String,
    /// `{"text":{"content"}}`.
    pub question: Value,
    /// `{"items":[…]}` or absent.
    pub similar_questions: Option<Value>,
    /// `[{text, attachments}]`, attachments in list form.
    pub answers: Value,
}

/// The corp's knowledge base.
#[derive(Debug)]
pub struct Knowledge {
    /// Groups in creation order (the default one first).
    pub groups: Vec<Group>,
    /// Intents in creation order.
    pub intents: Vec<Intent>,
}

fn bad(msg: &str) -> ApiError {
    ApiError::invalid("knowledge", msg)
}

/// What intent validation needs.
#[derive(Debug, Clone, Copy)]
pub struct IntentContext<'a> {
    /// Media for attachment ids.
    pub media: &'a MediaStore,
    /// Linked mini programs.
    pub appids: &'a [String],
    /// Emulator time.
    pub now: i64,
}

impl Knowledge {
    /// A knowledge base with only the default group.
    pub fn new() -> Knowledge {
        Knowledge {
            groups: vec![Group {
                group_id: ids::alnum(20),
                name: "默认分组".into(),
                is_default: true,
            }],
            intents: Vec::new(),
        }
    }

    fn check_name(&self, name: &str, except: Option<&str>) -> ApiResult<()> {
        if name.chars().count() > 12 {
            return Err(bad("group name longer than 12 characters"));
        }
        if self
            .groups
            .iter()
            .any(|g| g.name == name && Some(g.group_id.as_str()) != except)
        {
            return Err(bad("group name already exists"));
        }
        Ok(())
    }

    fn group_index(&self, group_id: &str) -> ApiResult<usize> {
        self.groups
            .iter()
            .position(|g| g.group_id == group_id)
            .ok_or_else(|| bad("group_id not found"))
    }

    /// `add_group`.
    pub fn add_group(&mut self, name: &str) -> ApiResult<String> {
        self.check_name(name, None)?;
        if self.groups.len() >= MAX_GROUPS {
            return Err(bad("at most 100 groups"));
        }
        let id = ids::alnum(20);
        self.groups.push(Group {
            group_id: id.clone(),
            name: name.to_string(),
            is_default: false,
        });
        Ok(id)
    }

    /// `del_group` (also deletes its intents).
    pub fn del_group(&mut self, group_id: &str) -> ApiResult<()> {
        let i = self.group_index(group_id)?;
        if self.groups[i].is_default {
            return Err(bad("the default group cannot be deleted"));
        }
        self.groups.remove(i);
        self.intents.retain(|it| it.group_id != group_id);
        Ok(())
    }

    /// `mod_group`.
    pub fn mod_group(&mut self, group_id: &str, name: &str) -> ApiResult<()> {
        let i = self.group_index(group_id)?;
        if self.groups[i].is_default {
            return Err(bad("the default group cannot be modified"));
        }
        self.check_name(name, Some(group_id))?;
        self.groups[i].name = name.to_string();
        Ok(())
    }

    /// `add_intent`.
    pub fn add_intent(&mut self, body: Fields<'_>, ctx: IntentContext<'_>) -> ApiResult<String> {
        let group_id = body.str_req("group_id")?;
        self.group_index(group_id)?;
        let question = parse_question(body.obj_req("question")?)?;
        self.check_question_unique(&question, None)?;
        if self
            .intents
            .iter()
            .filter(|i| i.group_id == group_id)
            .count()
            >= MAX_INTENTS_PER_GROUP
        {
            return Err(bad("at most 200 intents per group"));
        }
        let similar = body
            .obj_opt("similar_questions")?
            .map(parse_similar)
            .transpose()?;
        let answers = parse_answers(body, ctx)?;
        let id = ids::alnum(24);
        self.intents.push(Intent {
            intent_id: id.clone(),
            group_id: group_id.to_string(),
            question,
            similar_questions: similar,
            answers,
        });
        Ok(id)
    }

    fn check_question_unique(&self, question: &Value, except: Option<&str>) -> ApiResult<()> {
        if self
            .intents
            .iter()
            .any(|i| &i.question == question && Some(i.intent_id.as_str()) != except)
        {
            return Err(bad("question already exists"));
        }
        Ok(())
    }

    /// `del_intent`.
    pub fn del_intent(&mut self, intent_id: &str) -> ApiResult<()> {
        let before = self.intents.len();
        self.intents.retain(|i| i.intent_id != intent_id);
        if self.intents.len() == before {
            return Err(bad("intent_id not found"));
        }
        Ok(())
    }

    /// `mod_intent`: each given part replaces the old one wholesale.
    pub fn mod_intent(&mut self, body: Fields<'_>, ctx: IntentContext<'_>) -> ApiResult<()> {
        let intent_id = body.str_req("intent_id")?;
        let i = self
            .intents
            .iter()
            .position(|it| it.intent_id == intent_id)
            .ok_or_else(|| bad("intent_id not found"))?;
        let question = body.obj_opt("question")?.map(parse_question).transpose()?;
        if let Some(q) = &question {
            self.check_question_unique(q, Some(intent_id))?;
        }
        let similar = body
            .obj_opt("similar_questions")?
            .map(parse_similar)
            .transpose()?;
        let answers = if body.has("answers") {
            Some(parse_answers(body, ctx)?)
        } else {
            None
        };
        let intent = &mut self.intents[i];
        if let Some(q) = question {
            intent.question = q;
        }
        if let Some(s) = similar {
            intent.similar_questions = Some(s);
        }
        if let Some(a) = answers {
            intent.answers = a;
        }
        Ok(())
    }
}

impl Default for Knowledge {
    fn default() -> Knowledge {
        Knowledge::new()
    }
}

fn text_content(f: Fields<'_>, max_chars: usize, what: &str) -> ApiResult<Value> {
    let text = f.obj_req("text")?;
    let content = text.str_req("content")?;
    if content.chars().count() > max_chars {
        return Err(bad(&format!("{what} longer than {max_chars} characters")));
    }
    Ok(json!({"text": {"content": content}}))
}

fn parse_question(q: Fields<'_>) -> ApiResult<Value> {
    text_content(q, 200, "question")
}

fn parse_similar(s: Fields<'_>) -> ApiResult<Value> {
    let items = s.array_opt("items")?.map(Vec::as_slice).unwrap_or(&[]);
    if items.len() > 100 {
        return Err(bad("at most 100 similar questions"));
    }
    let mut out = Vec::new();
    for item in items {
        let map = item
            .as_object()
            .ok_or_else(|| ApiError::wrong_json("similar_questions.items should be objects"))?;
        out.push(text_content(Fields::new(map), 200, "similar question")?);
    }
    Ok(json!({"items": out}))
}

fn parse_answers(body: Fields<'_>, ctx: IntentContext<'_>) -> ApiResult<Value> {
    let answers = body
        .array_opt("answers")?
        .ok_or_else(|| ApiError::missing("answers"))?;
    if answers.len() != 1 {
        return Err(bad("exactly one answer is supported"));
    }
    let map = answers[0]
        .as_object()
        .ok_or_else(|| ApiError::wrong_json("answers should be objects"))?;
    let answer = Fields::new(map);
    let mut out = match text_content(answer, 500, "answer")? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let attachments = answer
        .array_opt("attachments")?
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if attachments.len() > 4 {
        return Err(bad("at most 4 attachments"));
    }
    let mut listed = Vec::new();
    for a in attachments {
        let map = a
            .as_object()
            .ok_or_else(|| ApiError::wrong_json("attachments should be objects"))?;
        let a = Fields::new(map);
        let msgtype = a.str_req("msgtype")?;
        let item = match msgtype {
            "image" | "video" => {
                let p = a.obj_req(msgtype)?;
                let id = p.str_opt("media_id")?.unwrap_or("");
                let kind = if msgtype == "image" {
                    MediaType::Image
                } else {
                    MediaType::Video
                };
                ctx.media.check(id, kind, ctx.now)?;
                let name = ctx
                    .media
                    .get(id, ctx.now)
                    .map(|m| m.filename.clone())
                    .unwrap_or_default();
                json!({"msgtype": msgtype, msgtype: {"name": name}})
            }
            "link" => {
                let p = a.obj_req("link")?;
                let title = p.str_req("title")?;
                let url = p.str_req("url")?;
                json!({"msgtype":"link","link":{"title":title,"desc":p.str_opt("desc")?.unwrap_or(""),"url":url,"pic_url":p.str_opt("pic_url")?.unwrap_or("")}})
            }
            "miniprogram" => {
                let p = a.obj_req("miniprogram")?;
                let appid = p.str_req("appid")?;
                if !ctx.appids.iter().any(|x| x == appid) {
                    return Err(ApiError::new(
                        crate::errors::MINIPROGRAM_NOT_LINKED,
                        "miniprogram appid is not linked to the corp",
                    ));
                }
                ctx.media.check(
                    p.str_opt("thumb_media_id")?.unwrap_or(""),
                    MediaType::Image,
                    ctx.now,
                )?;
                json!({"msgtype":"miniprogram","miniprogram":{"title":p.str_opt("title")?.unwrap_or(""),"appid":appid,"pagepath":p.str_req("pagepath")?}})
            }
            _ => {
                return Err(ApiError::new(
                    crate::errors::INVALID_MSGTYPE,
                    "invalid attachment msgtype",
                ));
            }
        };
        listed.push(item);
    }
    if !listed.is_empty() {
        out.insert("attachments".into(), Value::from(listed));
    }
    Ok(Value::from(vec![Value::Object(out)]))
}
