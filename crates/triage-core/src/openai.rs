//! OpenAI Chat Completions wire types (<https://platform.openai.com/docs/api-reference/chat>).
//!
//! The request is Triage's internal request shape too. Every struct keeps the fields it does not
//! interpret in an `extra` map that is serialized back unchanged, so a field Triage does not know
//! (a new sampling knob, `metadata`, `logprobs`, a vendor extension) is forwarded, never dropped.
//! Inbound requests are parsed strictly (a wrong type is a 400 naming the field); upstream
//! responses are parsed leniently (missing ids or timestamps default), because providers differ.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// A JSON object whose fields Triage forwards without interpreting them.
pub type Extra = Map<String, Value>;

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Requested model: `auto`, a tier, `role:<name>`, an alias or a catalog model id.
    pub model: String,
    /// The conversation; must not be empty.
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options; `include_usage` asks for a final usage-only chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Tool (function) definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Output format: `text`, `json_object` or `json_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Legacy output-token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Output-token limit (reasoning tokens included); takes precedence over `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Number of choices to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// Every other field (`temperature`, `stop`, `seed`, `tool_choice`, `user`, `metadata`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// True when the client asked for the final usage chunk of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage == Some(true))
    }

    /// The output-token limit the client set: `max_completion_tokens`, else `max_tokens`.
    pub fn output_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send one extra chunk with `choices: []` and the whole request's usage before `[DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other options, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One entry of `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `function` for function tools.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function definition (present for `function` tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function tool's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    /// Function name.
    pub name: String,
    /// What the function does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Other fields (`strict`), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Other fields (`json_schema`), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Message author role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System instructions.
    System,
    /// Developer instructions (OpenAI's newer name for system).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// A legacy function result.
    Function,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author role.
    pub role: Role,
    /// Text or parts. The outer `Option` is presence, the inner one an explicit `null` (an
    /// assistant turn that only calls tools), so that both forward exactly as sent; read it
    /// through [`Message::content`].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub content: Option<Option<Content>>,
    /// Tool calls of an assistant turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Which tool call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Other fields (`name`, `refusal`, ...), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    /// The content, `None` when absent or null.
    pub fn content(&self) -> Option<&Content> {
        self.content.as_ref().and_then(Option::as_ref)
    }
}

/// Deserializes a field that is present (maybe `null`) as `Some(value)`; absence stays `None`
/// through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Message content: a string, or a list of parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Multi-part content (text, images, audio, files).
    Parts(Vec<ContentPart>),
}

impl Content {
    /// Calls `f` on every text this content holds.
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        match self {
            Content::Text(t) => f(t),
            Content::Parts(parts) => {
                for p in parts {
                    if let ContentPart::Text { text, .. } = p {
                        f(text);
                    }
                }
            }
        }
    }

    /// True when some part is an image.
    pub fn has_image(&self) -> bool {
        matches!(self, Content::Parts(parts) if parts.iter().any(|p| matches!(p, ContentPart::ImageUrl { .. })))
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(t) => s.serialize_str(t),
            Content::Parts(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(p) = seq.next_element()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

/// One part of multi-part content.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    /// `{"type": "text", "text": ...}`.
    Text {
        /// The text.
        text: String,
        /// Other fields of the part (e.g. `cache_control`), forwarded.
        extra: Extra,
    },
    /// `{"type": "image_url", "image_url": {"url": ..., "detail": ...}}`.
    ImageUrl {
        /// An `https:` URL or a `data:` URL.
        url: String,
        /// The whole `image_url` object, `url` and `detail` included, as sent.
        image_url: Extra,
        /// Other fields of the part, forwarded.
        extra: Extra,
    },
    /// Any other part type (`input_audio`, `file`, ...), forwarded as sent.
    Other(Extra),
}

impl Serialize for ContentPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ContentPart::Text { text, extra } => {
                let mut m = s.serialize_map(Some(2 + extra.len()))?;
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
                for (k, v) in extra {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            ContentPart::ImageUrl { image_url, extra, .. } => {
                let mut m = s.serialize_map(Some(2 + extra.len()))?;
                m.serialize_entry("type", "image_url")?;
                m.serialize_entry("image_url", image_url)?;
                for (k, v) in extra {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            ContentPart::Other(map) => map.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ContentPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Extra::deserialize(d)?;
        let kind = match map.get("type") {
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(de::Error::custom("content part `type` must be a string")),
            None => return Err(de::Error::custom("content part is missing `type`")),
        };
        match kind.as_str() {
            "text" => {
                let text = match map.remove("text") {
                    Some(Value::String(t)) => t,
                    _ => return Err(de::Error::custom("text part needs a string `text`")),
                };
                map.remove("type");
                Ok(ContentPart::Text { text, extra: map })
            }
            "image_url" => {
                let image_url = match map.remove("image_url") {
                    Some(Value::Object(o)) => o,
                    // Some clients send the URL as a bare string; normalise to the object form.
                    Some(Value::String(u)) => {
                        let mut o = Extra::new();
                        o.insert("url".into(), Value::String(u));
                        o
                    }
                    _ => return Err(de::Error::custom("image_url part needs an `image_url` object with a `url`")),
                };
                let url = match image_url.get("url") {
                    Some(Value::String(u)) => u.clone(),
                    _ => return Err(de::Error::custom("image_url part needs a string `image_url.url`")),
                };
                map.remove("type");
                Ok(ContentPart::ImageUrl { url, image_url, extra: map })
            }
            _ => Ok(ContentPart::Other(map)),
        }
    }
}

/// A tool call of an assistant turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id, echoed by the `tool` message that answers it.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Function name and arguments.
    pub function: FunctionCall,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

fn function_kind() -> String {
    "function".to_owned()
}

/// A function call: name and JSON-encoded arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON text (may be empty from some clients; treat as `{}`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub arguments: String,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Token usage as OpenAI reports it. `prompt_tokens` includes cached tokens and
/// `completion_tokens` includes reasoning tokens (the `*_details` are breakdowns, not extras).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens, reasoning ones included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    #[serde(default)]
    pub total_tokens: u64,
    /// Breakdown of the input (`cached_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Breakdown of the output (`reasoning_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// Cached input tokens, 0 when not reported.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0)
    }

    /// Reasoning tokens (a part of `completion_tokens`), 0 when not reported.
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0)
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Input tokens read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Output tokens spent on hidden reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A whole (non-streamed) chat completion, as an upstream returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default = "completion_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered, as the upstream names it.
    #[serde(default)]
    pub model: String,
    /// The choices.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields (`system_fingerprint`, ...), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

/// One choice of a [`ChatCompletion`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// The answer.
    pub message: ResponseMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`, ...
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (`logprobs`), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The assistant message of a [`Choice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// `assistant`.
    #[serde(default = "assistant_role")]
    pub role: String,
    /// The text, or null.
    #[serde(default)]
    pub content: Option<String>,
    /// Tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Other fields (`refusal`, `reasoning_content`, ...), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

/// One streamed chunk (`chat.completion.chunk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Completion id, the same on every chunk.
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default = "chunk_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// Choice deltas; empty on the final usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage; only on the final usage chunk of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

/// One choice of a [`ChatChunk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the chunk that ends the choice; serialized as `null` before that, as OpenAI does.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (`logprobs`), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The incremental part of a [`ChunkChoice`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant` on the first chunk of each choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool-call fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Other fields (`refusal`, `reasoning_content`), forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A fragment of one tool call in a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which tool call of the choice this fragment belongs to.
    #[serde(default)]
    pub index: u32,
    /// Call id (first fragment only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first fragment only).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (first fragment) and an arguments fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Function part of a [`ToolCallDelta`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    /// Function name (first fragment only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the JSON arguments, to be concatenated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`ErrorEnvelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable message.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, or null.
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `budget_exceeded`, ...), or null.
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip_unchanged() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}},{"type":"input_audio","input_audio":{"data":"AA==","format":"wav"}}],"name":"u1"}],"temperature":0.2,"seed":7,"metadata":{"k":"v"},"parallel_tool_calls":false,"tool_choice":"auto","logit_bias":{"50256":-100}}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        let back: Value = serde_json::to_value(&req).unwrap();
        let orig: Value = serde_json::from_str(body).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn numeric_content_is_rejected_with_its_path() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":42}]}"#;
        let de = &mut serde_json::Deserializer::from_str(body);
        let err = serde_path_to_error::deserialize::<_, ChatRequest>(de).unwrap_err();
        assert_eq!(err.path().to_string(), "messages[0].content");
        assert!(err.inner().to_string().contains("a string or an array of content parts"));
    }

    #[test]
    fn tool_call_with_empty_or_null_arguments_parses() {
        let m: Message = serde_json::from_str(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":""}},{"id":"b","function":{"name":"g","arguments":null}}]}"#,
        )
        .unwrap();
        let calls = m.tool_calls.clone().unwrap();
        assert_eq!(calls[0].function.arguments, "");
        assert_eq!(calls[1].kind, "function");
        assert_eq!(m.content(), None);
        assert_eq!(m.content, Some(None));
        assert_eq!(serde_json::to_value(&m).unwrap()["content"], Value::Null);
    }

    #[test]
    fn usage_details_are_breakdowns() {
        let u: Usage = serde_json::from_str(
            r#"{"prompt_tokens":2008,"completion_tokens":266,"total_tokens":2274,"completion_tokens_details":{"reasoning_tokens":261}}"#,
        )
        .unwrap();
        assert_eq!(u.reasoning_tokens(), 261);
        assert_eq!(u.cached_tokens(), 0);
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"prompt_tokens":2008,"completion_tokens":266,"total_tokens":2274,"completion_tokens_details":{"reasoning_tokens":261}})
        );
    }

    #[test]
    fn chunk_keeps_null_finish_reason_and_omits_absent_usage() {
        let c: ChatChunk = serde_json::from_str(
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null,"logprobs":null}]}"#,
        )
        .unwrap();
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(
            s,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null,"logprobs":null}]}"#
        );
    }
}
