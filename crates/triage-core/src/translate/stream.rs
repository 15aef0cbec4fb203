//! Streamed answer translation, one event or chunk at a time (never buffering content).

use serde_json::{json, Map, Value};

use crate::anthropic::{self as a, Block, Event};
use crate::openai::{self as o, ChatChunk, ChunkChoice, Delta, FunctionCallDelta, ToolCallDelta};
use crate::translate::response::{anthropic_usage_of, finish_reason_of, openai_usage_of, stop_reason_of};

/// What a translated Anthropic event means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// `message_stop`: the answer is complete.
    Done,
    /// An `error` event: the upstream failed mid-stream, with this message.
    Error(String),
}

/// Anthropic stream events → OpenAI chunks, for an OpenAI client of an Anthropic model.
///
/// The role goes on the chunk made from `message_start` (C06); each `tool_use` block becomes
/// one tool call numbered by tool calls, not by content blocks (C07 point 4); a tool call whose
/// arguments never arrived (a tool without parameters) gets `{}` on its block's stop (C07);
/// `message_delta`'s stop reason is mapped once (C13) and carries the usage, which the chunk
/// normaliser moves to the final usage chunk (C05 C, C28).
#[derive(Debug, Default)]
pub struct AnthropicToOpenAi {
    id: String,
    model: String,
    created: u64,
    /// (content block index, tool-call index, arguments sent).
    tools: Vec<(u32, u32, bool)>,
    usage: a::Usage,
    finished: bool,
    /// The open thinking block: (content block index, its text, its signature).
    thinking: Option<(u32, String, Option<String>)>,
}

impl AnthropicToOpenAi {
    /// A translator for one stream; `created` is the Unix time stamped on every chunk.
    pub fn new(created: u64) -> Self {
        AnthropicToOpenAi { created, ..Default::default() }
    }

    fn chunk(&self, delta: Delta, finish: Option<String>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish, extra: Map::new() }],
            usage: None,
            extra: Map::new(),
        }
    }

    fn tool_delta(&self, index: u32, id: Option<String>, name: Option<String>, args: String) -> ChatChunk {
        let tc = ToolCallDelta {
            index,
            kind: id.as_ref().map(|_| "function".to_owned()),
            id,
            function: Some(FunctionCallDelta { name, arguments: Some(args) }),
            extra: Map::new(),
        };
        self.chunk(Delta { tool_calls: Some(vec![tc]), ..Default::default() }, None)
    }

    /// A chunk whose delta carries one whole thinking block, signed, in `thinking_blocks`
    /// (crate::translate::request::THINKING_BLOCKS), sent when the block ends.
    fn thinking_blocks(&self, block: Value) -> ChatChunk {
        let mut extra = Map::new();
        extra.insert(crate::translate::request::THINKING_BLOCKS.into(), Value::Array(vec![block]));
        self.chunk(Delta { extra, ..Default::default() }, None)
    }

    /// The usage as Anthropic reported it so far (`message_start`, then `message_delta`s), with
    /// its cache reads and writes apart (the translated chunks fold writes into
    /// `prompt_tokens`, where they would be priced as plain input).
    pub fn anthropic_usage(&self) -> &a::Usage {
        &self.usage
    }

    /// Translates one event, appending the chunks it yields to `out`.
    pub fn push(&mut self, ev: &Event, out: &mut Vec<ChatChunk>) -> Flow {
        match ev {
            Event::MessageStart { message } => {
                self.id.clone_from(&message.id);
                self.model.clone_from(&message.model);
                self.usage = message.usage.clone();
                out.push(self.chunk(
                    Delta { role: Some("assistant".into()), content: Some(String::new()), ..Default::default() },
                    None,
                ));
            }
            Event::ContentBlockStart { index, content_block } => match content_block {
                Block::ToolUse { id, name, input, .. } => {
                    let k = self.tools.len() as u32;
                    let args = match input {
                        Value::Object(m) if !m.is_empty() => input.to_string(),
                        _ => String::new(),
                    };
                    self.tools.push((*index, k, !args.is_empty()));
                    out.push(self.tool_delta(k, Some(id.clone()), Some(name.clone()), args));
                }
                Block::Text { text, .. } if !text.is_empty() => {
                    out.push(self.chunk(Delta { content: Some(text.clone()), ..Default::default() }, None));
                }
                Block::Thinking { thinking, signature, .. } => {
                    self.thinking = Some((*index, thinking.clone(), signature.clone()));
                    if !thinking.is_empty() {
                        let mut extra = Map::new();
                        extra.insert("reasoning_content".into(), Value::String(thinking.clone()));
                        out.push(self.chunk(Delta { extra, ..Default::default() }, None));
                    }
                }
                Block::Other(m) if m.get("type").and_then(Value::as_str) == Some("redacted_thinking") => {
                    out.push(self.thinking_blocks(Value::Object(m.clone())));
                }
                _ => {}
            },
            Event::ContentBlockDelta { index, delta } => {
                let s = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        out.push(self.chunk(Delta { content: Some(s("text")), ..Default::default() }, None));
                    }
                    Some("input_json_delta") => {
                        let part = s("partial_json");
                        if let Some(t) = self.tools.iter_mut().find(|t| t.0 == *index) {
                            if !part.is_empty() {
                                t.2 = true;
                                let k = t.1;
                                out.push(self.tool_delta(k, None, None, part));
                            }
                        }
                    }
                    Some("thinking_delta") => {
                        let text = s("thinking");
                        if let Some((_, t, _)) = self.thinking.as_mut().filter(|t| t.0 == *index) {
                            t.push_str(&text);
                        }
                        let mut extra = Map::new();
                        extra.insert("reasoning_content".into(), Value::String(text));
                        out.push(self.chunk(Delta { extra, ..Default::default() }, None));
                    }
                    Some("signature_delta") => {
                        if let Some((_, _, sig)) = self.thinking.as_mut().filter(|t| t.0 == *index) {
                            sig.get_or_insert_with(String::new).push_str(&s("signature"));
                        }
                    }
                    _ => {} // citations_delta: no OpenAI equivalent
                }
            }
            Event::ContentBlockStop { index } => {
                if let Some((_, thinking, signature)) = self.thinking.take_if(|t| t.0 == *index) {
                    let block = Block::Thinking { thinking, signature, extra: Map::new() };
                    out.push(self.thinking_blocks(serde_json::to_value(&block).unwrap_or(Value::Null)));
                }
                if let Some(&(_, k, false)) = self.tools.iter().find(|t| t.0 == *index) {
                    out.push(self.tool_delta(k, None, None, "{}".into()));
                    if let Some(t) = self.tools.iter_mut().find(|t| t.0 == *index) {
                        t.2 = true;
                    }
                }
            }
            Event::MessageDelta { delta, .. } => {
                if let Some(u) = ev.delta_usage() {
                    u.apply(&mut self.usage);
                }
                if let Some(reason) = delta.get("stop_reason").and_then(Value::as_str) {
                    if !self.finished {
                        self.finished = true;
                        let mut c = self.chunk(Delta::default(), Some(finish_reason_of(reason).to_owned()));
                        c.usage = Some(openai_usage_of(&self.usage));
                        out.push(c);
                    }
                }
            }
            Event::MessageStop => return Flow::Done,
            Event::Error { error } => {
                let msg = error.get("message").and_then(Value::as_str).unwrap_or("upstream error").to_owned();
                return Flow::Error(msg);
            }
            Event::Ping | Event::Other(_) => {}
        }
        Flow::Continue
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u32),
    Tool(u32),
}

/// OpenAI chunks → Anthropic stream events, for an Anthropic client of an OpenAI-compatible model.
///
/// Emits `message_start` on the first chunk (with `input_tokens` from `prompt_estimate`, since
/// OpenAI reports usage only at the end; the real count follows in `message_delta.usage`), a
/// text block for content, one `tool_use` block per tool call (repeated ids and names of
/// the same call open nothing new, C09), no empty text blocks (C11), and on [`finish`]
/// `content_block_stop`, `message_delta` (stop reason `tool_use` whenever a tool was called,
/// C11; usage) and exactly one `message_stop`, never `[DONE]` (C04 D).
///
/// [`finish`]: OpenAiToAnthropic::finish
#[derive(Debug, Default)]
pub struct OpenAiToAnthropic {
    started: bool,
    prompt_estimate: u64,
    open: Option<Open>,
    next_block: u32,
    /// (OpenAI tool-call index, content block index).
    tools: Vec<(u32, u32)>,
    finish_reason: Option<String>,
    usage: Option<o::Usage>,
    /// Tells apart tool calls streamed without `index` (by id).
    indexer: crate::stream::ToolCallIndexer,
}

fn delta_event(index: u32, delta: Value) -> Event {
    let delta = match delta {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Event::ContentBlockDelta { index, delta }
}

impl OpenAiToAnthropic {
    /// A translator for one stream.
    pub fn new(prompt_estimate: u64) -> Self {
        OpenAiToAnthropic { prompt_estimate, ..Default::default() }
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some(Open::Text(i) | Open::Tool(i)) = self.open.take() {
            out.push(Event::ContentBlockStop { index: i });
        }
    }

    /// Translates one chunk, appending the events it yields to `out`.
    pub fn push(&mut self, chunk: &ChatChunk, out: &mut Vec<Event>) {
        if let Some(u) = &chunk.usage {
            self.usage = Some(u.clone());
        }
        if !self.started {
            self.started = true;
            let id = if chunk.id.starts_with("msg_") { chunk.id.clone() } else { format!("msg_{}", chunk.id) };
            out.push(Event::MessageStart {
                message: a::Response {
                    id,
                    kind: "message".into(),
                    role: "assistant".into(),
                    model: chunk.model.clone(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: a::Usage { input_tokens: self.prompt_estimate, output_tokens: 0, ..Default::default() },
                    extra: Map::new(),
                },
            });
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else { return };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some(Open::Text(i)) => i,
                _ => {
                    self.close(out);
                    let i = self.next_block;
                    self.next_block += 1;
                    self.open = Some(Open::Text(i));
                    out.push(Event::ContentBlockStart {
                        index: i,
                        content_block: Block::Text { text: String::new(), extra: Map::new() },
                    });
                    i
                }
            };
            out.push(delta_event(index, json!({"type": "text_delta", "text": text})));
        }
        for tc in choice.delta.tool_calls.iter().flatten() {
            let tc_index = self.indexer.index(choice.index, tc);
            let args = tc.function.as_ref().and_then(|f| f.arguments.clone()).unwrap_or_default();
            let block = match self.tools.iter().find(|t| t.0 == tc_index) {
                Some(&(_, b)) => b,
                None => {
                    self.close(out);
                    let b = self.next_block;
                    self.next_block += 1;
                    self.tools.push((tc_index, b));
                    self.open = Some(Open::Tool(b));
                    let id = tc.id.clone().unwrap_or_else(|| format!("toolu_{}_{}", b, tc_index));
                    let name = tc.function.as_ref().and_then(|f| f.name.clone()).unwrap_or_default();
                    out.push(Event::ContentBlockStart {
                        index: b,
                        content_block: Block::ToolUse { id, name, input: Value::Object(Map::new()), extra: Map::new() },
                    });
                    b
                }
            };
            if !args.is_empty() {
                out.push(delta_event(block, json!({"type": "input_json_delta", "partial_json": args})));
            }
        }
        if let Some(f) = &choice.finish_reason {
            self.finish_reason.get_or_insert_with(|| f.clone());
        }
    }

    /// True once the upstream reported a finish reason.
    pub fn has_finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// The usage the upstream reported, if any.
    pub fn usage(&self) -> Option<&o::Usage> {
        self.usage.as_ref()
    }

    /// Ends the message: closes the open block, then `message_delta` and `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.close(out);
        let stop = if !self.tools.is_empty() {
            "tool_use"
        } else {
            stop_reason_of(self.finish_reason.as_deref().unwrap_or("stop"))
        };
        let usage = match &self.usage {
            Some(u) => anthropic_usage_of(u),
            None => a::Usage { input_tokens: self.prompt_estimate, ..Default::default() },
        };
        let mut delta = Map::new();
        delta.insert("stop_reason".into(), stop.into());
        delta.insert("stop_sequence".into(), Value::Null);
        let usage = match serde_json::to_value(usage) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        out.push(Event::MessageDelta { delta, usage: Some(usage) });
        out.push(Event::MessageStop);
    }
}
