//! Visiting every text of a request that could carry personal data or a secret.
//!
//! [`TextVisit`] is the one seam between the guard and a wire format: the OpenAI Chat
//! Completions request implements it here; another format (Anthropic Messages) implements it the
//! same way, adding [`Location`] variants if it needs them.

use serde_json::Value;

use crate::openai::{ChatRequest, Content, ContentPart};

/// Where in a request a text is. Message indexes count from 0 in `messages`; tool indexes in
/// `tools`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A message's content (system, developer, user, assistant or tool result): `part` is `None`
    /// for string content, `Some(i)` for the i-th part of multi-part content (text parts only).
    Content {
        /// Index in `messages`.
        message: usize,
        /// Index of the text part, `None` for plain string content.
        part: Option<usize>,
    },
    /// A string inside the arguments of an assistant's tool call. `pointer` is the JSON Pointer
    /// (RFC 6901) of the string in the parsed arguments, or empty when the arguments are not
    /// JSON and were scanned as raw text.
    ToolCallArguments {
        /// Index in `messages`.
        message: usize,
        /// Index in that message's `tool_calls`.
        call: usize,
        /// JSON Pointer of the string, `""` for raw text.
        pointer: String,
    },
    /// `tools[tool].function.description`.
    ToolDescription {
        /// Index in `tools`.
        tool: usize,
    },
    /// A string value inside `tools[tool].function.parameters` (the JSON Schema), at `pointer`.
    ToolParameters {
        /// Index in `tools`.
        tool: usize,
        /// JSON Pointer of the string in `parameters`.
        pointer: String,
    },
}

/// A request whose texts the guard can read and rewrite.
///
/// Both methods must visit the same texts in the same order (the redactor scans with the first
/// and rewrites with the second, matching texts by position).
pub trait TextVisit {
    /// Calls `f` with every text and its location.
    fn visit_texts(&self, f: &mut dyn FnMut(&Location, &str));
    /// Calls `f` with every text, mutably. Implementations re-encode derived texts (JSON
    /// arguments) only when `f` changed something.
    fn visit_texts_mut(&mut self, f: &mut dyn FnMut(&Location, &mut String));
}

impl TextVisit for ChatRequest {
    fn visit_texts(&self, f: &mut dyn FnMut(&Location, &str)) {
        for (mi, m) in self.messages.iter().enumerate() {
            match m.content() {
                Some(Content::Text(t)) => f(&Location::Content { message: mi, part: None }, t),
                Some(Content::Parts(parts)) => {
                    for (pi, p) in parts.iter().enumerate() {
                        if let ContentPart::Text { text, .. } = p {
                            f(&Location::Content { message: mi, part: Some(pi) }, text);
                        }
                    }
                }
                None => {}
            }
            for (ci, call) in m.tool_calls.iter().flatten().enumerate() {
                let args = &call.function.arguments;
                match serde_json::from_str::<Value>(args) {
                    Ok(v) if !args.trim().is_empty() => {
                        walk_json(&v, &mut String::new(), &mut |ptr, s| {
                            f(&Location::ToolCallArguments { message: mi, call: ci, pointer: ptr.to_owned() }, s);
                        });
                    }
                    _ => f(&Location::ToolCallArguments { message: mi, call: ci, pointer: String::new() }, args),
                }
            }
        }
        for (ti, tool) in self.tools.iter().flatten().enumerate() {
            let Some(func) = &tool.function else { continue };
            if let Some(d) = &func.description {
                f(&Location::ToolDescription { tool: ti }, d);
            }
            if let Some(p) = &func.parameters {
                walk_json(p, &mut String::new(), &mut |ptr, s| {
                    f(&Location::ToolParameters { tool: ti, pointer: ptr.to_owned() }, s);
                });
            }
        }
    }

    fn visit_texts_mut(&mut self, f: &mut dyn FnMut(&Location, &mut String)) {
        for (mi, m) in self.messages.iter_mut().enumerate() {
            match m.content.as_mut().and_then(Option::as_mut) {
                Some(Content::Text(t)) => f(&Location::Content { message: mi, part: None }, t),
                Some(Content::Parts(parts)) => {
                    for (pi, p) in parts.iter_mut().enumerate() {
                        if let ContentPart::Text { text, .. } = p {
                            f(&Location::Content { message: mi, part: Some(pi) }, text);
                        }
                    }
                }
                None => {}
            }
            for (ci, call) in m.tool_calls.iter_mut().flatten().enumerate() {
                let args = &mut call.function.arguments;
                match serde_json::from_str::<Value>(args) {
                    Ok(mut v) if !args.trim().is_empty() => {
                        let mut changed = false;
                        walk_json_mut(&mut v, &mut String::new(), &mut |ptr, s| {
                            let old = s.clone();
                            f(&Location::ToolCallArguments { message: mi, call: ci, pointer: ptr.to_owned() }, s);
                            changed |= *s != old;
                        });
                        if changed {
                            if let Ok(text) = serde_json::to_string(&v) {
                                *args = text;
                            }
                        }
                    }
                    _ => f(&Location::ToolCallArguments { message: mi, call: ci, pointer: String::new() }, args),
                }
            }
        }
        for (ti, tool) in self.tools.iter_mut().flatten().enumerate() {
            let Some(func) = &mut tool.function else { continue };
            if let Some(d) = &mut func.description {
                f(&Location::ToolDescription { tool: ti }, d);
            }
            if let Some(p) = &mut func.parameters {
                walk_json_mut(p, &mut String::new(), &mut |ptr, s| {
                    f(&Location::ToolParameters { tool: ti, pointer: ptr.to_owned() }, s);
                });
            }
        }
    }
}

/// Visits every string value (not keys) of `v` in document order, with its JSON Pointer.
fn walk_json(v: &Value, ptr: &mut String, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(ptr, s),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                walk_json(x, ptr, f);
                ptr.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk_json(x, ptr, f);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

fn walk_json_mut(v: &mut Value, ptr: &mut String, f: &mut dyn FnMut(&str, &mut String)) {
    match v {
        Value::String(s) => f(ptr, s),
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                walk_json_mut(x, ptr, f);
                ptr.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk_json_mut(x, ptr, f);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

/// Anthropic Messages: `system` (as message index `usize::MAX`), every text block and string
/// content, `tool_result` texts (block `b`, inner text block `i` as part `b * 1000 + i`),
/// `tool_use` inputs, and tool descriptions and input schemas. Thinking blocks are signed by
/// Anthropic and are left as they are.
impl TextVisit for crate::anthropic::MessagesRequest {
    fn visit_texts(&self, f: &mut dyn FnMut(&Location, &str)) {
        use crate::anthropic::{Block, Content as AContent, System};
        const SYSTEM: usize = usize::MAX;
        match &self.system {
            Some(System::Text(t)) => f(&Location::Content { message: SYSTEM, part: None }, t),
            Some(System::Blocks(bs)) => {
                for (i, b) in bs.iter().enumerate() {
                    if let Block::Text { text, .. } = b {
                        f(&Location::Content { message: SYSTEM, part: Some(i) }, text);
                    }
                }
            }
            None => {}
        }
        for (mi, m) in self.messages.iter().enumerate() {
            match &m.content {
                AContent::Text(t) => f(&Location::Content { message: mi, part: None }, t),
                AContent::Blocks(bs) => {
                    for (bi, b) in bs.iter().enumerate() {
                        match b {
                            Block::Text { text, .. } => f(&Location::Content { message: mi, part: Some(bi) }, text),
                            Block::ToolUse { input, .. } => walk_json(input, &mut String::new(), &mut |ptr, s| {
                                f(&Location::ToolCallArguments { message: mi, call: bi, pointer: ptr.to_owned() }, s);
                            }),
                            Block::ToolResult { content: Some(AContent::Text(t)), .. } => {
                                f(&Location::Content { message: mi, part: Some(bi * 1000) }, t)
                            }
                            Block::ToolResult { content: Some(AContent::Blocks(inner)), .. } => {
                                for (ii, ib) in inner.iter().enumerate() {
                                    if let Block::Text { text, .. } = ib {
                                        f(&Location::Content { message: mi, part: Some(bi * 1000 + ii) }, text);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        for (ti, tool) in self.tools.iter().flatten().enumerate() {
            if let Some(d) = &tool.description {
                f(&Location::ToolDescription { tool: ti }, d);
            }
            if let Some(p) = &tool.input_schema {
                walk_json(p, &mut String::new(), &mut |ptr, s| {
                    f(&Location::ToolParameters { tool: ti, pointer: ptr.to_owned() }, s);
                });
            }
        }
    }

    fn visit_texts_mut(&mut self, f: &mut dyn FnMut(&Location, &mut String)) {
        use crate::anthropic::{Block, Content as AContent, System};
        const SYSTEM: usize = usize::MAX;
        match &mut self.system {
            Some(System::Text(t)) => f(&Location::Content { message: SYSTEM, part: None }, t),
            Some(System::Blocks(bs)) => {
                for (i, b) in bs.iter_mut().enumerate() {
                    if let Block::Text { text, .. } = b {
                        f(&Location::Content { message: SYSTEM, part: Some(i) }, text);
                    }
                }
            }
            None => {}
        }
        for (mi, m) in self.messages.iter_mut().enumerate() {
            match &mut m.content {
                AContent::Text(t) => f(&Location::Content { message: mi, part: None }, t),
                AContent::Blocks(bs) => {
                    for (bi, b) in bs.iter_mut().enumerate() {
                        match b {
                            Block::Text { text, .. } => f(&Location::Content { message: mi, part: Some(bi) }, text),
                            Block::ToolUse { input, .. } => walk_json_mut(input, &mut String::new(), &mut |ptr, s| {
                                f(&Location::ToolCallArguments { message: mi, call: bi, pointer: ptr.to_owned() }, s);
                            }),
                            Block::ToolResult { content: Some(AContent::Text(t)), .. } => {
                                f(&Location::Content { message: mi, part: Some(bi * 1000) }, t)
                            }
                            Block::ToolResult { content: Some(AContent::Blocks(inner)), .. } => {
                                for (ii, ib) in inner.iter_mut().enumerate() {
                                    if let Block::Text { text, .. } = ib {
                                        f(&Location::Content { message: mi, part: Some(bi * 1000 + ii) }, text);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        for (ti, tool) in self.tools.iter_mut().flatten().enumerate() {
            if let Some(d) = &mut tool.description {
                f(&Location::ToolDescription { tool: ti }, d);
            }
            if let Some(p) = &mut tool.input_schema {
                walk_json_mut(p, &mut String::new(), &mut |ptr, s| {
                    f(&Location::ToolParameters { tool: ti, pointer: ptr.to_owned() }, s);
                });
            }
        }
    }
}
