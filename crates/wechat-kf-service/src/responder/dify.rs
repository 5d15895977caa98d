//! The `dify` agent: Dify's chat-messages API in blocking mode. Dify keeps the conversation
//! itself; the service keeps Dify's `conversation_id` per (account, customer) in memory and
//! sends only this turn's words. Dify has no protocol crate; its API is three fields each way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{Answer, Ask, ModelError, Usage, post_json};
use crate::config::Secret;

/// A Dify app.
#[derive(Debug)]
pub(crate) struct Dify {
    pub(crate) http: reqwest::Client,
    /// `<base_url>/chat-messages`.
    pub(crate) url: String,
    pub(crate) api_key: Option<Secret>,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    inputs: serde_json::Map<String, serde_json::Value>,
    query: String,
    response_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<&'a str>,
    user: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    answer: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<DifyUsage>,
}

#[derive(Deserialize)]
struct DifyUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl Dify {
    /// One attempt. Dify answers 404 for a conversation it no longer has: reported as
    /// `conversation_gone`, so the turn is asked again in a new conversation.
    pub(crate) async fn ask(&self, ask: &Ask<'_>, timeout: Duration) -> Result<Answer, ModelError> {
        let query = ask
            .asked
            .iter()
            .map(|said| said.describe())
            .collect::<Vec<_>>()
            .join("\n");
        let request = ChatRequest {
            inputs: serde_json::Map::new(),
            query,
            response_mode: "blocking",
            conversation_id: ask.conversation_id,
            user: &ask.user,
        };
        let body = serde_json::to_vec(&request).map_err(|_| ModelError::invalid("request"))?;
        let bytes =
            match post_json(&self.http, &self.url, self.api_key.as_ref(), body, timeout).await {
                Err(e) if e.status == Some(404) && ask.conversation_id.is_some() => {
                    return Err(ModelError {
                        kind: "conversation_gone",
                        retryable: true,
                        ..e
                    });
                }
                other => other?,
            };
        let response: ChatResponse =
            serde_json::from_slice(&bytes).map_err(|_| ModelError::invalid("response"))?;
        Ok(Answer {
            text: response.answer,
            action: None,
            conversation_id: response.conversation_id.filter(|c| !c.is_empty()),
            usage: response.metadata.and_then(|m| m.usage).map(|u| Usage {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
            }),
        })
    }
}
