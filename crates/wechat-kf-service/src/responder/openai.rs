//! The `openai` agent: one chat-completions request per customer turn to any OpenAI-compatible
//! endpoint. The request and the answer are `async-openai`'s types (the protocol, kept up to
//! date by that crate); they travel over the service's own `reqwest` client, so there is one
//! HTTP/TLS stack and the deadline and retries are the responder's.

use std::path::Path;
use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage,
    ChatCompletionRequestMessageContentPartImage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionRequestUserMessageContentPart,
    ChatCompletionTool, ChatCompletionTools, CreateChatCompletionRequest,
    CreateChatCompletionResponse, FunctionObject, ImageUrl,
};
use base64::Engine as _;
use serde_json::json;

use super::model::{Action, Answer, Ask, ModelError, Usage, post_json};
use super::prompt::Said;
use crate::config::Secret;
use crate::store::MemoryRole;

/// Largest image file sent to a model (a data URL is a third larger still).
const MAX_IMAGE_BYTES: u64 = 8 * 1024 * 1024;

/// An OpenAI-compatible endpoint with one model and prompt.
#[derive(Debug)]
pub(crate) struct OpenAi {
    pub(crate) http: reqwest::Client,
    /// `<base_url>/chat/completions`.
    pub(crate) url: String,
    pub(crate) api_key: Option<Secret>,
    pub(crate) model: String,
    pub(crate) system_prompt: Option<String>,
    pub(crate) temperature: Option<f32>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) tools: bool,
    pub(crate) vision: bool,
}

/// The tools offered to the model. Their results are never sent back to it in the same turn
/// (the service acts on them and remembers what it did, without ids).
fn tools() -> Vec<ChatCompletionTools> {
    let function = |name: &str, description: &str, parameters| {
        ChatCompletionTools::Function(ChatCompletionTool {
            function: FunctionObject {
                name: name.into(),
                description: Some(description.into()),
                parameters: Some(parameters),
                strict: None,
            },
        })
    };
    vec![
        function(
            "transfer_to_human",
            "Hand the conversation over to a human customer-service agent, when the customer \
             asks for a person or you cannot help.",
            json!({
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why, in a few words."}},
                "required": ["reason"],
            }),
        ),
        function(
            "end_conversation",
            "End the conversation when the customer's request is fully resolved and they said \
             goodbye.",
            json!({"type": "object", "properties": {}}),
        ),
    ]
}

/// A data URL of an image file, or `None` when it cannot be read or is too large.
async fn data_url(path: &Path) -> Option<String> {
    let size = tokio::fs::metadata(path).await.ok()?.len();
    if size > MAX_IMAGE_BYTES {
        return None;
    }
    let bytes = tokio::fs::read(path).await.ok()?;
    let mime = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    };
    Some(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn user_text(text: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessage {
        content: ChatCompletionRequestUserMessageContent::Text(text),
        name: None,
    }
    .into()
}

fn assistant_text(text: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestAssistantMessage {
        content: Some(ChatCompletionRequestAssistantMessageContent::Text(text)),
        ..Default::default()
    }
    .into()
}

impl OpenAi {
    /// The request for a turn: the prompt, the remembered conversation, then what the customer
    /// said (images as image parts when `vision` is on).
    pub(crate) async fn request(&self, ask: &Ask<'_>) -> CreateChatCompletionRequest {
        let mut messages: Vec<ChatCompletionRequestMessage> = Vec::new();
        if let Some(prompt) = &self.system_prompt {
            messages.push(
                ChatCompletionRequestSystemMessage {
                    content: ChatCompletionRequestSystemMessageContent::Text(prompt.clone()),
                    name: None,
                }
                .into(),
            );
        }
        for entry in &ask.history {
            messages.push(match entry.role {
                MemoryRole::Customer => user_text(entry.content.clone()),
                // A human servicer spoke for the business: context, marked as theirs.
                MemoryRole::Servicer => assistant_text(format!("[human agent] {}", entry.content)),
                MemoryRole::Assistant | MemoryRole::Conversation => {
                    assistant_text(entry.content.clone())
                }
            });
        }
        for said in &ask.asked {
            let image = match said {
                Said::Image(Some(path)) if self.vision => data_url(path).await,
                _ => None,
            };
            messages.push(match image {
                Some(url) => ChatCompletionRequestUserMessage {
                    content: ChatCompletionRequestUserMessageContent::Array(vec![
                        ChatCompletionRequestUserMessageContentPart::ImageUrl(
                            ChatCompletionRequestMessageContentPartImage {
                                image_url: ImageUrl { url, detail: None },
                                ..Default::default()
                            },
                        ),
                    ]),
                    name: None,
                }
                .into(),
                None => user_text(said.describe()),
            });
        }
        // `max_tokens`, not OpenAI's newer `max_completion_tokens`: the compatible servers
        // (DeepSeek, DashScope, Ollama, vLLM, …) read the older name.
        #[allow(deprecated)]
        CreateChatCompletionRequest {
            messages,
            model: self.model.clone(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            tools: self.tools.then(tools),
            ..Default::default()
        }
    }

    /// One attempt.
    pub(crate) async fn ask(&self, ask: &Ask<'_>, timeout: Duration) -> Result<Answer, ModelError> {
        let request = self.request(ask).await;
        let body = serde_json::to_vec(&request).map_err(|_| ModelError::invalid("request"))?;
        let bytes = post_json(&self.http, &self.url, self.api_key.as_ref(), body, timeout).await?;
        let response: CreateChatCompletionResponse =
            serde_json::from_slice(&bytes).map_err(|_| ModelError::invalid("response"))?;
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(ModelError::invalid("response without choices"));
        };
        let message = choice.message;
        let mut action = None;
        for call in message.tool_calls.unwrap_or_default() {
            let ChatCompletionMessageToolCalls::Function(call) = call else {
                continue;
            };
            match call.function.name.as_str() {
                "transfer_to_human" => {
                    let reason =
                        serde_json::from_str::<serde_json::Value>(&call.function.arguments)
                            .ok()
                            .and_then(|v| v["reason"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                    action = Some(Action::Transfer { reason });
                    break;
                }
                "end_conversation" => {
                    action = Some(Action::End);
                    break;
                }
                // A tool we did not offer: ignored.
                _ => {}
            }
        }
        Ok(Answer {
            text: message.content.unwrap_or_default(),
            action,
            conversation_id: None,
            usage: response.usage.map(|u| Usage {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
            }),
        })
    }
}
