//! Anthropic Messages API wire types (<https://docs.anthropic.com/en/api/messages>).
//!
//! As with [`crate::openai`], every struct keeps the fields Triage does not interpret in an
//! `extra` map, so a request or answer that goes Anthropic → Anthropic is forwarded without loss
//! (`cache_control`, `citations`, `thinking`, beta fields). Content blocks Triage does not
//! translate are kept whole as [`Block::Other`].

use serde::de::{self, Deserializer};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::openai::Extra;

/// `POST /v1/messages` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// Requested model (resolved like OpenAI's `model`: `auto`, a tier, a role, an alias, an id).
    pub model: String,
    /// The conversation, alternating user and assistant.
    pub messages: Vec<Message>,
    /// Output-token limit; required by Anthropic.
    pub max_tokens: u64,
    /// System prompt: a string or text blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Tool definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `{"type": "auto" | "any" | "tool" | "none", ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Custom stop strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Every other field (`temperature`, `top_p`, `top_k`, `metadata`, `thinking`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl MessagesRequest {
    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Moves every `system`-role message out of `messages` into the top-level `system`, after
    /// what is already there and in their order; text blocks keep their `cache_control`.
    /// Anthropic rejects a `system` role inside `messages` with a 400 (shared case C16), and
    /// Claude Code sends one. Non-text blocks of such a message are dropped (the top-level
    /// `system` takes text only). Returns how many messages were moved.
    pub fn fold_system_messages(&mut self) -> usize {
        if !self.messages.iter().any(|m| m.role == Role::System) {
            return 0;
        }
        let mut moved: Vec<Block> = Vec::new();
        let mut count = 0;
        self.messages.retain_mut(|m| {
            if m.role != Role::System {
                return true;
            }
            count += 1;
            match std::mem::replace(&mut m.content, Content::Text(String::new())) {
                Content::Text(t) => moved.push(Block::Text { text: t, extra: Map::new() }),
                Content::Blocks(bs) => moved.extend(bs.into_iter().filter(|b| matches!(b, Block::Text { .. }))),
            }
            false
        });
        moved.retain(|b| !matches!(b, Block::Text { text, .. } if text.is_empty()));
        if moved.is_empty() {
            return count;
        }
        self.system = Some(match self.system.take() {
            None => System::Blocks(moved),
            Some(System::Text(t)) if t.is_empty() => System::Blocks(moved),
            Some(System::Text(t)) => {
                let mut all = vec![Block::Text { text: t, extra: Map::new() }];
                all.extend(moved);
                System::Blocks(all)
            }
            Some(System::Blocks(mut b)) => {
                b.extend(moved);
                System::Blocks(b)
            }
        });
        count
    }
}

/// The `system` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum System {
    /// A plain string.
    Text(String),
    /// Text blocks (which may carry `cache_control`).
    Blocks(Vec<Block>),
}

/// Message author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user (also carries tool results).
    User,
    /// The model.
    Assistant,
    /// A system instruction inside `messages`, as agent harnesses (Claude Code) send it. The
    /// Messages API has no such role: [`MessagesRequest::fold_system_messages`] moves these into
    /// the top-level `system` before anything else reads the request.
    System,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// A string or content blocks.
    pub content: Content,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Message content.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<Block>),
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(t) => s.serialize_str(t),
            Content::Blocks(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut blocks = Vec::new();
                while let Some(b) = seq.next_element()? {
                    blocks.push(b);
                }
                Ok(Content::Blocks(blocks))
            }
        }
        d.deserialize_any(V)
    }
}

/// A content block.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// `{"type": "text", "text"}`.
    Text {
        /// The text.
        text: String,
        /// Other fields (`cache_control`, `citations`).
        extra: Extra,
    },
    /// `{"type": "image", "source": {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}`.
    Image {
        /// The source object, as sent.
        source: Extra,
        /// Other fields (`cache_control`).
        extra: Extra,
    },
    /// `{"type": "tool_use", "id", "name", "input"}`.
    ToolUse {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments object.
        input: Value,
        /// Other fields.
        extra: Extra,
    },
    /// `{"type": "tool_result", "tool_use_id", "content", "is_error"}`.
    ToolResult {
        /// The call answered.
        tool_use_id: String,
        /// A string or blocks, absent for an empty result.
        content: Option<Content>,
        /// True when the tool failed.
        is_error: Option<bool>,
        /// Other fields (`cache_control`).
        extra: Extra,
    },
    /// `{"type": "thinking", "thinking", "signature"}`.
    Thinking {
        /// The reasoning text.
        thinking: String,
        /// Anthropic's signature over it.
        signature: Option<String>,
        /// Other fields.
        extra: Extra,
    },
    /// Any other block (`document`, `redacted_thinking`, `server_tool_use`, ...), kept as sent.
    Other(Extra),
}

fn take_str<E: de::Error>(map: &mut Extra, key: &str, what: &str) -> Result<String, E> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(E::custom(format!("{what} block needs a string `{key}`"))),
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Extra::deserialize(d)?;
        let kind = match map.get("type") {
            Some(Value::String(k)) => k.clone(),
            _ => return Err(de::Error::custom("content block needs a string `type`")),
        };
        let block = match kind.as_str() {
            "text" => {
                map.remove("type");
                Block::Text { text: take_str(&mut map, "text", "text")?, extra: map }
            }
            "image" => {
                map.remove("type");
                let source = match map.remove("source") {
                    Some(Value::Object(o)) => o,
                    _ => return Err(de::Error::custom("image block needs a `source` object")),
                };
                Block::Image { source, extra: map }
            }
            "tool_use" => {
                map.remove("type");
                let id = take_str(&mut map, "id", "tool_use")?;
                let name = take_str(&mut map, "name", "tool_use")?;
                let input = map.remove("input").unwrap_or_else(|| Value::Object(Map::new()));
                Block::ToolUse { id, name, input, extra: map }
            }
            "tool_result" => {
                map.remove("type");
                let tool_use_id = take_str(&mut map, "tool_use_id", "tool_result")?;
                let content = match map.remove("content") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(serde_json::from_value::<Content>(v).map_err(de::Error::custom)?),
                };
                let is_error = match map.remove("is_error") {
                    Some(Value::Bool(b)) => Some(b),
                    None | Some(Value::Null) => None,
                    Some(_) => return Err(de::Error::custom("tool_result `is_error` must be a boolean")),
                };
                Block::ToolResult { tool_use_id, content, is_error, extra: map }
            }
            "thinking" => {
                map.remove("type");
                let thinking = take_str(&mut map, "thinking", "thinking")?;
                let signature = match map.remove("signature") {
                    Some(Value::String(s)) => Some(s),
                    _ => None,
                };
                Block::Thinking { thinking, signature, extra: map }
            }
            _ => Block::Other(map),
        };
        Ok(block)
    }
}

impl Serialize for Block {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn rest<M: SerializeMap>(m: &mut M, extra: &Extra) -> Result<(), M::Error> {
            for (k, v) in extra {
                m.serialize_entry(k, v)?;
            }
            Ok(())
        }
        match self {
            Block::Text { text, extra } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
                rest(&mut m, extra)?;
                m.end()
            }
            Block::Image { source, extra } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "image")?;
                m.serialize_entry("source", source)?;
                rest(&mut m, extra)?;
                m.end()
            }
            Block::ToolUse { id, name, input, extra } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "tool_use")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("name", name)?;
                m.serialize_entry("input", input)?;
                rest(&mut m, extra)?;
                m.end()
            }
            Block::ToolResult { tool_use_id, content, is_error, extra } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "tool_result")?;
                m.serialize_entry("tool_use_id", tool_use_id)?;
                if let Some(c) = content {
                    m.serialize_entry("content", c)?;
                }
                if let Some(e) = is_error {
                    m.serialize_entry("is_error", e)?;
                }
                rest(&mut m, extra)?;
                m.end()
            }
            Block::Thinking { thinking, signature, extra } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "thinking")?;
                m.serialize_entry("thinking", thinking)?;
                if let Some(sig) = signature {
                    m.serialize_entry("signature", sig)?;
                }
                rest(&mut m, extra)?;
                m.end()
            }
            Block::Other(map) => map.serialize(s),
        }
    }
}

/// A tool definition. Client tools have `input_schema`; server tools (`type` set) are kept whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Tool name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Other fields (`type` of server tools, `cache_control`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token usage. `input_tokens` excludes cache reads and writes (they are separate counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens (thinking included).
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A whole (non-streamed) answer, also the `message` of `message_start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Message id.
    #[serde(default)]
    pub id: String,
    /// `message`.
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    /// `assistant`.
    #[serde(default = "assistant")]
    pub role: String,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Content blocks.
    #[serde(default)]
    pub content: Vec<Block>,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use`, `pause_turn`, `refusal`.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that fired.
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Usage.
    #[serde(default)]
    pub usage: Usage,
    /// Other fields, forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

fn message_type() -> String {
    "message".to_owned()
}

fn assistant() -> String {
    "assistant".to_owned()
}

/// A streamed event. Unknown event types are kept as [`Event::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `message_start`.
    MessageStart {
        /// The message so far (empty content, input usage).
        message: Response,
    },
    /// `content_block_start`.
    ContentBlockStart {
        /// Block index.
        index: u32,
        /// The opening block (empty text, a tool_use with empty input, ...).
        content_block: Block,
    },
    /// `content_block_delta`.
    ContentBlockDelta {
        /// Block index.
        index: u32,
        /// The delta object (`text_delta`, `input_json_delta`, `thinking_delta`, `signature_delta`, ...).
        delta: Extra,
    },
    /// `content_block_stop`.
    ContentBlockStop {
        /// Block index.
        index: u32,
    },
    /// `message_delta`: stop reason and cumulative output usage.
    MessageDelta {
        /// `{"stop_reason", "stop_sequence"}`.
        delta: Extra,
        /// Usage so far, as sent (often only `output_tokens`); read it with [`Event::delta_usage`].
        usage: Option<Extra>,
    },
    /// `message_stop`.
    MessageStop,
    /// `ping`.
    Ping,
    /// `error`: `{"type", "message"}`.
    Error {
        /// The error object.
        error: Extra,
    },
    /// Any other event, as sent.
    Other(Extra),
}

impl Event {
    /// The SSE `event:` name.
    pub fn name(&self) -> &str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Ping => "ping",
            Event::Error { .. } => "error",
            Event::Other(m) => m.get("type").and_then(Value::as_str).unwrap_or("unknown"),
        }
    }

    /// The event as its JSON data.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.name().to_owned()));
        match self {
            Event::MessageStart { message } => {
                m.insert("message".into(), serde_json::to_value(message).unwrap_or(Value::Null));
            }
            Event::ContentBlockStart { index, content_block } => {
                m.insert("index".into(), (*index).into());
                m.insert("content_block".into(), serde_json::to_value(content_block).unwrap_or(Value::Null));
            }
            Event::ContentBlockDelta { index, delta } => {
                m.insert("index".into(), (*index).into());
                m.insert("delta".into(), Value::Object(delta.clone()));
            }
            Event::ContentBlockStop { index } => {
                m.insert("index".into(), (*index).into());
            }
            Event::MessageDelta { delta, usage } => {
                m.insert("delta".into(), Value::Object(delta.clone()));
                if let Some(u) = usage {
                    m.insert("usage".into(), Value::Object(u.clone()));
                }
            }
            Event::MessageStop | Event::Ping => {}
            Event::Error { error } => {
                m.insert("error".into(), Value::Object(error.clone()));
            }
            Event::Other(o) => return Value::Object(o.clone()),
        }
        Value::Object(m)
    }

    /// The usage of a `message_delta`, with the counts it did not send left absent (`None`).
    pub fn delta_usage(&self) -> Option<DeltaUsage> {
        let Event::MessageDelta { usage: Some(u), .. } = self else { return None };
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        Some(DeltaUsage {
            output_tokens: n("output_tokens"),
            input_tokens: n("input_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
        })
    }

    /// Parses an event's data. Errors: the data is not a JSON object of a known shape.
    pub fn parse(data: &str) -> Result<Event, serde_json::Error> {
        let mut m: Extra = serde_json::from_str(data)?;
        let kind = m.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        let index = |m: &Extra| m.get("index").and_then(Value::as_u64).unwrap_or(0) as u32;
        let obj = |m: &mut Extra, k: &str| match m.remove(k) {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        Ok(match kind.as_str() {
            "message_start" => {
                Event::MessageStart { message: serde_json::from_value(Value::Object(obj(&mut m, "message")))? }
            }
            "content_block_start" => Event::ContentBlockStart {
                index: index(&m),
                content_block: serde_json::from_value(Value::Object(obj(&mut m, "content_block")))?,
            },
            "content_block_delta" => Event::ContentBlockDelta { index: index(&m), delta: obj(&mut m, "delta") },
            "content_block_stop" => Event::ContentBlockStop { index: index(&m) },
            "message_delta" => {
                let usage = match m.remove("usage") {
                    Some(Value::Object(u)) => Some(u),
                    _ => None,
                };
                Event::MessageDelta { delta: obj(&mut m, "delta"), usage }
            }
            "message_stop" => Event::MessageStop,
            "ping" => Event::Ping,
            "error" => Event::Error { error: obj(&mut m, "error") },
            _ => Event::Other(m),
        })
    }
}

/// The counts a `message_delta` may carry; each is cumulative for the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaUsage {
    /// Output tokens so far.
    pub output_tokens: Option<u64>,
    /// Uncached input tokens (newer API versions repeat them here).
    pub input_tokens: Option<u64>,
    /// Cache reads.
    pub cache_read_input_tokens: Option<u64>,
    /// Cache writes.
    pub cache_creation_input_tokens: Option<u64>,
}

impl DeltaUsage {
    /// Applies these counts to `u`.
    pub fn apply(&self, u: &mut Usage) {
        if let Some(v) = self.output_tokens {
            u.output_tokens = v;
        }
        if let Some(v) = self.input_tokens.filter(|&v| v > 0) {
            u.input_tokens = v;
        }
        if self.cache_read_input_tokens.is_some() {
            u.cache_read_input_tokens = self.cache_read_input_tokens;
        }
        if self.cache_creation_input_tokens.is_some() {
            u.cache_creation_input_tokens = self.cache_creation_input_tokens;
        }
    }
}

/// Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(kind: &str, message: &str) -> Value {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error type for an HTTP status
/// (<https://docs.anthropic.com/en/api/errors>).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_without_loss() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Question one","cache_control":{"type":"ephemeral"}},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"document","source":{"type":"text","media_type":"text/plain","data":"doc"}}]},{"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"tool_use","id":"toolu_1","name":"lookup","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"r"}],"is_error":false}]}],"max_tokens":64,"system":[{"type":"text","text":"LONG","cache_control":{"type":"ephemeral","ttl":"1h"}}],"tools":[{"name":"lookup","input_schema":{"type":"object","properties":{"q":{"type":"string"}}},"cache_control":{"type":"ephemeral"}}],"top_k":5,"metadata":{"user_id":"u-PLACEHOLDER"},"thinking":{"type":"enabled","budget_tokens":1024}}"#;
        let req: MessagesRequest = serde_json::from_str(body).unwrap();
        assert_eq!(serde_json::to_value(&req).unwrap(), serde_json::from_str::<Value>(body).unwrap());
    }

    #[test]
    fn system_role_messages_fold_into_the_system_prompt_in_order() {
        // Claude Code's shape: a system prompt as blocks, and a `system` message inside `messages`.
        let body = r#"{"model":"claude-sonnet-4-6","max_tokens":32000,"system":[{"type":"text","text":"You are a coding agent.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"},{"role":"system","content":[{"type":"text","text":"Reminder: be brief.","cache_control":{"type":"ephemeral"}}]},{"role":"assistant","content":"ok"},{"role":"system","content":"Second note."},{"role":"user","content":"go"}]}"#;
        let mut req: MessagesRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.fold_system_messages(), 2);
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["system"],
            serde_json::json!([
                {"type":"text","text":"You are a coding agent.","cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"Reminder: be brief.","cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"Second note."}
            ])
        );
        let roles: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        // A string system prompt becomes the first block; a request without system messages is untouched.
        let mut req: MessagesRequest = serde_json::from_str(
            r#"{"model":"m","max_tokens":8,"system":"Base.","messages":[{"role":"system","content":"Extra."},{"role":"user","content":"q"}]}"#,
        )
        .unwrap();
        req.fold_system_messages();
        assert_eq!(
            serde_json::to_value(&req.system).unwrap(),
            serde_json::json!([{"type":"text","text":"Base."},{"type":"text","text":"Extra."}])
        );
        let mut plain: MessagesRequest = serde_json::from_str(
            r#"{"model":"m","max_tokens":8,"system":"Base.","messages":[{"role":"user","content":"q"}]}"#,
        )
        .unwrap();
        let before = plain.clone();
        assert_eq!(plain.fold_system_messages(), 0);
        assert_eq!(plain, before);
    }

    #[test]
    fn missing_max_tokens_names_the_field() {
        let e = serde_json::from_str::<MessagesRequest>(r#"{"model":"m","messages":[]}"#).unwrap_err();
        assert!(e.to_string().contains("max_tokens"), "{e}");
    }

    #[test]
    fn events_parse_and_serialize_back() {
        for data in [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"c","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"snooze","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":28}}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ] {
            let ev = Event::parse(data).unwrap();
            assert_eq!(ev.to_json(), serde_json::from_str::<Value>(data).unwrap(), "{data}");
        }
    }
}
