//! Request translation between the OpenAI Chat Completions and Anthropic Messages formats.

use serde_json::{json, Map, Value};

use crate::anthropic::{self as a, Block, MessagesRequest};
use crate::openai::{self as o, ChatRequest, Content, ContentPart, Role};

/// Why an OpenAI request cannot be expressed for Anthropic (the client gets a 400 naming it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct TranslateError {
    /// The request field at fault.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn err(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError { param: param.into(), message: message.into() }
}

fn dropped(field: &str, why: &str) {
    tracing::debug!(field, why, "field dropped in translation");
}

/// Media types Anthropic accepts for images; `image/jpg` is normalised to `image/jpeg`.
fn normalise_media_type(mt: &str) -> Option<&'static str> {
    match mt.to_ascii_lowercase().as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some("image/jpeg"),
        "image/png" => Some("image/png"),
        "image/gif" => Some("image/gif"),
        "image/webp" => Some("image/webp"),
        _ => None,
    }
}

/// An OpenAI `image_url` as an Anthropic image source: a `data:` URL becomes a base64 source with
/// the URL's media type, an http(s) URL a URL source (never fetched).
fn image_source(url: &str, param: &str) -> Result<Map<String, Value>, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) =
            rest.split_once(',').ok_or_else(|| err(param, "a data: URL needs a comma before its data"))?;
        let mt = meta.strip_suffix(";base64").ok_or_else(|| err(param, "only base64 data: URLs are supported"))?;
        let media_type = normalise_media_type(mt)
            .ok_or_else(|| err(param, format!("image media type \"{mt}\" is not supported (jpeg, png, gif, webp)")))?;
        let mut s = Map::new();
        s.insert("type".into(), "base64".into());
        s.insert("media_type".into(), media_type.into());
        s.insert("data".into(), data.into());
        Ok(s)
    } else if url.starts_with("https://") || url.starts_with("http://") {
        let mut s = Map::new();
        s.insert("type".into(), "url".into());
        s.insert("url".into(), url.into());
        Ok(s)
    } else {
        Err(err(param, "an image URL must be http(s) or a base64 data: URL"))
    }
}

/// Keeps only `cache_control` from an OpenAI part's extra fields (LiteLLM's convention for
/// prompt caching on OpenAI-format requests).
fn cache_control_of(extra: &Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(cc) = extra.get("cache_control") {
        m.insert("cache_control".into(), cc.clone());
    }
    m
}

fn openai_content_to_blocks(c: &Content, param: &str) -> Result<Vec<Block>, TranslateError> {
    match c {
        Content::Text(t) if t.is_empty() => Ok(Vec::new()),
        Content::Text(t) => Ok(vec![Block::Text { text: t.clone(), extra: Map::new() }]),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text, extra } => {
                        out.push(Block::Text { text: text.clone(), extra: cache_control_of(extra) })
                    }
                    ContentPart::ImageUrl { url, extra, .. } => out.push(Block::Image {
                        source: image_source(url, &format!("{param}[{i}].image_url.url"))?,
                        extra: cache_control_of(extra),
                    }),
                    ContentPart::Other(m) => {
                        let kind = m.get("type").and_then(Value::as_str).unwrap_or("?");
                        let file_data = m.get("file").and_then(|f| f.get("file_data")).and_then(Value::as_str);
                        match (kind, file_data) {
                            ("file", Some(data)) if data.starts_with("data:application/pdf;base64,") => {
                                let mut doc = Map::new();
                                doc.insert("type".into(), "document".into());
                                doc.insert(
                                    "source".into(),
                                    json!({"type": "base64", "media_type": "application/pdf", "data": &data["data:application/pdf;base64,".len()..]}),
                                );
                                out.push(Block::Other(doc));
                            }
                            _ => dropped(&format!("{param}[{i}]"), "content part type has no Anthropic equivalent"),
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

fn text_of_content(c: &Content) -> String {
    let mut s = String::new();
    c.for_each_text(|t| {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(t);
    });
    s
}

/// Appends `blocks` to the conversation as `role`, merging with the previous message of the
/// same role (Anthropic wants user and assistant turns to alternate).
fn push_turn(out: &mut Vec<a::Message>, role: a::Role, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.role == role {
            let mut merged = match std::mem::replace(&mut last.content, a::Content::Blocks(Vec::new())) {
                a::Content::Text(t) => vec![Block::Text { text: t, extra: Map::new() }],
                a::Content::Blocks(b) => b,
            };
            merged.extend(blocks);
            last.content = a::Content::Blocks(merged);
            return;
        }
    }
    out.push(a::Message { role, content: a::Content::Blocks(blocks), extra: Map::new() });
}

/// Anthropic thinking budgets for OpenAI's `reasoning_effort`, in tokens: `low` is Anthropic's
/// minimum budget (1,024), `medium` and `high` four and sixteen times it. `minimal` and `none`
/// mean no extended thinking. A budget must stay below `max_tokens` (Anthropic's rule): it is
/// lowered to `max_tokens - 1`, and no thinking is asked when that is under the minimum.
pub fn thinking_budget(effort: &str, max_tokens: u64) -> Option<u64> {
    let budget: u64 = match effort {
        "low" => 1024,
        "medium" => 4096,
        "high" => 16384,
        _ => return None,
    };
    let budget = budget.min(max_tokens.saturating_sub(1));
    (budget >= 1024).then_some(budget)
}

/// The documented field that carries Anthropic thinking blocks through OpenAI's format: an
/// assistant message's (or delta's) `thinking_blocks`, a list of `{"type": "thinking",
/// "thinking", "signature"}` and `{"type": "redacted_thinking", "data"}` objects as Anthropic
/// sent them. A client that sends them back in the assistant turn keeps multi-turn tool use with
/// thinking working (Anthropic requires the signed blocks).
pub const THINKING_BLOCKS: &str = "thinking_blocks";

/// The `thinking_blocks` of an OpenAI assistant message as Anthropic blocks (others ignored).
fn thinking_blocks_of(m: &o::Message) -> Vec<Block> {
    let Some(Value::Array(list)) = m.extra.get(THINKING_BLOCKS) else { return Vec::new() };
    list.iter()
        .filter(|b| matches!(b.get("type").and_then(Value::as_str), Some("thinking" | "redacted_thinking")))
        .filter_map(|b| serde_json::from_value::<Block>(b.clone()).ok())
        .collect()
}

/// OpenAI Chat Completions → Anthropic Messages, for an OpenAI client routed to an Anthropic
/// model. `upstream_model` names the model; `default_max_tokens` is used when the client set no
/// limit (Anthropic requires one; shared case C17: the model's configured maximum, never a small
/// fixed guess). `max_completion_tokens` takes precedence over `max_tokens`.
///
/// System and developer messages, wherever they are, become the top-level `system` blocks in
/// order (C16); a request with no user or assistant turn sends its system text as the user turn.
/// Tool calls become `tool_use` blocks (arguments `""` → `{}`, C07); consecutive `tool` messages
/// and the user text after them become one user message, tool results first (C15).
/// `reasoning_effort` becomes extended thinking ([`thinking_budget`]; `temperature` and `top_k`,
/// which Anthropic refuses with thinking, are then left out, and a forced `tool_choice` keeps
/// the tool and drops the thinking); an assistant message's [`THINKING_BLOCKS`] go back as its
/// first blocks. Fields with no Anthropic equivalent are dropped with a debug log.
///
/// Errors: [`TranslateError`] for `n > 1`, an unsupported image, or tool-call arguments that are
/// not JSON.
pub fn openai_to_anthropic(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<MessagesRequest, TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(err("n", "n > 1 is not supported by this model (Anthropic returns one choice)"));
    }
    let mut system: Vec<Block> = Vec::new();
    let mut messages: Vec<a::Message> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = m.content() {
                    system.extend(
                        openai_content_to_blocks(c, &param)?.into_iter().filter(|b| matches!(b, Block::Text { .. })),
                    );
                }
            }
            Role::User => {
                let blocks = match m.content() {
                    Some(c) => openai_content_to_blocks(c, &param)?,
                    None => Vec::new(),
                };
                push_turn(&mut messages, a::Role::User, blocks);
            }
            Role::Assistant => {
                let mut blocks = thinking_blocks_of(m);
                if let Some(c) = m.content() {
                    blocks.extend(openai_content_to_blocks(c, &param)?);
                }
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let args = call.function.arguments.trim();
                    let input = if args.is_empty() {
                        Value::Object(Map::new())
                    } else {
                        serde_json::from_str::<Value>(args).map_err(|e| {
                            err(
                                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                format!("not valid JSON: {e}"),
                            )
                        })?
                    };
                    blocks.push(Block::ToolUse {
                        id: call.id.clone(),
                        name: call.function.name.clone(),
                        input,
                        extra: Map::new(),
                    });
                }
                push_turn(&mut messages, a::Role::Assistant, blocks);
            }
            Role::Tool | Role::Function => {
                let id =
                    m.tool_call_id.clone().or_else(|| m.extra.get("name").and_then(Value::as_str).map(str::to_owned));
                let Some(tool_use_id) = id else {
                    return Err(err(format!("messages[{i}].tool_call_id"), "a tool message needs tool_call_id"));
                };
                let content = m.content().map(|c| match c {
                    Content::Text(t) => a::Content::Text(t.clone()),
                    Content::Parts(_) => a::Content::Text(text_of_content(c)),
                });
                let block = Block::ToolResult { tool_use_id, content, is_error: None, extra: Map::new() };
                // Tool results go before any other block of the user turn they join.
                match messages.last_mut() {
                    Some(last) if last.role == a::Role::User => {
                        if let a::Content::Blocks(b) = &mut last.content {
                            let at = b.iter().take_while(|x| matches!(x, Block::ToolResult { .. })).count();
                            b.insert(at, block);
                        }
                    }
                    _ => push_turn(&mut messages, a::Role::User, vec![block]),
                }
            }
        }
    }
    if messages.is_empty() && !system.is_empty() {
        // Anthropic needs a user turn (shared case C16 B): the system text becomes it.
        messages.push(a::Message {
            role: a::Role::User,
            content: a::Content::Blocks(std::mem::take(&mut system)),
            extra: Map::new(),
        });
    }

    let mut extra = Map::new();
    for (k, v) in &req.extra {
        match k.as_str() {
            "temperature" => {
                // OpenAI's range is 0–2, Anthropic's 0–1.
                let t = v.as_f64().map(|t| t.clamp(0.0, 1.0));
                if let Some(t) = t {
                    extra.insert(k.clone(), json!(t));
                }
            }
            "top_p" | "top_k" => {
                extra.insert(k.clone(), v.clone());
            }
            "user" => {
                extra.insert("metadata".into(), json!({"user_id": v}));
            }
            "stop" | "tool_choice" | "parallel_tool_calls" | "reasoning_effort" => {}
            other => dropped(other, "no Anthropic equivalent"),
        }
    }
    let stop_sequences = match req.extra.get("stop") {
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(a)) => Some(a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
        _ => None,
    };
    let tools: Option<Vec<a::Tool>> = req.tools.as_ref().map(|tools| {
        tools
            .iter()
            .filter_map(|t| {
                let f = t.function.as_ref()?;
                let mut extra = Map::new();
                if let Some(cc) = t.extra.get("cache_control") {
                    extra.insert("cache_control".into(), cc.clone());
                }
                Some(a::Tool {
                    name: f.name.clone(),
                    description: f.description.clone(),
                    input_schema: Some(
                        f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                    ),
                    extra,
                })
            })
            .collect()
    });
    let mut tool_choice = match req.extra.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    };
    if req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false))
        && tools.as_ref().is_some_and(|t| !t.is_empty())
    {
        let tc = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(o) = tc.as_object_mut() {
            o.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    let max_tokens = req.output_limit().unwrap_or(default_max_tokens);
    let forced_tool = tool_choice
        .as_ref()
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "any" || t == "tool");
    let budget = req.extra.get("reasoning_effort").and_then(Value::as_str).and_then(|e| thinking_budget(e, max_tokens));
    match budget {
        Some(_) if forced_tool => dropped("reasoning_effort", "Anthropic takes no thinking with a forced tool_choice"),
        Some(b) => {
            extra.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": b}));
            for k in ["temperature", "top_k"] {
                if extra.remove(k).is_some() {
                    dropped(k, "Anthropic takes no temperature or top_k with thinking");
                }
            }
            if extra.get("top_p").and_then(Value::as_f64).is_some_and(|p| p < 0.95) {
                extra.remove("top_p");
                dropped("top_p", "Anthropic takes top_p only from 0.95 with thinking");
            }
        }
        None => {}
    }
    Ok(MessagesRequest {
        model: upstream_model.to_owned(),
        messages,
        max_tokens,
        system: (!system.is_empty()).then_some(a::System::Blocks(system)),
        stream: req.stream,
        tools: tools.filter(|t| !t.is_empty()),
        tool_choice,
        stop_sequences,
        extra,
    })
}

fn image_url_of(source: &Map<String, Value>) -> Option<String> {
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let mt = source.get("media_type").and_then(Value::as_str)?;
            let data = source.get("data").and_then(Value::as_str)?;
            Some(format!("data:{mt};base64,{data}"))
        }
        Some("url") => source.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn blocks_to_parts(blocks: &[Block], param: &str) -> Vec<ContentPart> {
    let mut parts = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::Text { text, .. } => parts.push(ContentPart::Text { text: text.clone(), extra: Map::new() }),
            Block::Image { source, .. } => match image_url_of(source) {
                Some(url) => {
                    let mut image_url = Map::new();
                    image_url.insert("url".into(), url.clone().into());
                    parts.push(ContentPart::ImageUrl { url, image_url, extra: Map::new() });
                }
                None => dropped(&format!("{param}[{i}]"), "image source type has no OpenAI equivalent"),
            },
            Block::Other(m) if m.get("type").and_then(Value::as_str) == Some("document") => {
                let src = m.get("source").cloned().unwrap_or(Value::Null);
                match (src.get("type").and_then(Value::as_str), src.get("data").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => {
                        parts.push(ContentPart::Text { text: text.to_owned(), extra: Map::new() })
                    }
                    (Some("base64"), Some(data)) => {
                        let mt = src.get("media_type").and_then(Value::as_str).unwrap_or("application/pdf");
                        let mut file = Map::new();
                        file.insert("type".into(), "file".into());
                        file.insert(
                            "file".into(),
                            json!({"file_data": format!("data:{mt};base64,{data}"), "filename": "document.pdf"}),
                        );
                        parts.push(ContentPart::Other(file));
                    }
                    _ => dropped(&format!("{param}[{i}]"), "document source has no OpenAI equivalent"),
                }
            }
            _ => dropped(&format!("{param}[{i}]"), "block type has no OpenAI equivalent here"),
        }
    }
    parts
}

fn parts_to_content(parts: Vec<ContentPart>) -> Option<Content> {
    if parts.is_empty() {
        return None;
    }
    if parts.iter().all(|p| matches!(p, ContentPart::Text { .. })) {
        let mut text = String::new();
        for p in &parts {
            if let ContentPart::Text { text: t, .. } = p {
                text.push_str(t);
            }
        }
        if parts.len() == 1 {
            return Some(Content::Text(text));
        }
    }
    Some(Content::Parts(parts))
}

fn message(role: Role, content: Option<Content>) -> o::Message {
    o::Message { role, content: Some(content), tool_calls: None, tool_call_id: None, extra: Map::new() }
}

/// Anthropic Messages → OpenAI Chat Completions, for an Anthropic client routed to an
/// OpenAI-compatible model. `system` becomes a system message; `tool_result` blocks become
/// `tool` messages placed right after the assistant turn that called them, the rest of that
/// user turn following as a user message; `tool_use` blocks become `tool_calls` (ids kept);
/// images become `image_url` parts (base64 as data URLs). `thinking` blocks, `cache_control`,
/// `top_k` and server tools have no OpenAI equivalent and are dropped with a debug log;
/// a tool result's `is_error` is kept by prefixing the content with `Error: `.
pub fn anthropic_to_openai(req: &MessagesRequest) -> ChatRequest {
    let mut messages: Vec<o::Message> = Vec::new();
    match &req.system {
        Some(a::System::Text(t)) if !t.is_empty() => {
            messages.push(message(Role::System, Some(Content::Text(t.clone()))))
        }
        Some(a::System::Blocks(b)) => {
            let text: Vec<&str> = b
                .iter()
                .filter_map(|b| if let Block::Text { text, .. } = b { Some(text.as_str()) } else { None })
                .collect();
            if !text.is_empty() {
                messages.push(message(Role::System, Some(Content::Text(text.join("\n\n")))));
            }
        }
        _ => {}
    }
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        let blocks: Vec<Block> = match &m.content {
            a::Content::Text(t) => vec![Block::Text { text: t.clone(), extra: Map::new() }],
            a::Content::Blocks(b) => b.clone(),
        };
        match m.role {
            a::Role::System => {
                // Normally folded into `system` at parse time; translated alike if not.
                let text: Vec<&str> = blocks
                    .iter()
                    .filter_map(|b| if let Block::Text { text, .. } = b { Some(text.as_str()) } else { None })
                    .collect();
                if !text.is_empty() {
                    messages.push(message(Role::System, Some(Content::Text(text.join("\n\n")))));
                }
            }
            a::Role::User => {
                let mut rest = Vec::new();
                for b in blocks {
                    match b {
                        Block::ToolResult { tool_use_id, content, is_error, .. } => {
                            let mut text = match &content {
                                Some(a::Content::Text(t)) => t.clone(),
                                Some(a::Content::Blocks(bs)) => bs
                                    .iter()
                                    .filter_map(|b| {
                                        if let Block::Text { text, .. } = b {
                                            Some(text.as_str())
                                        } else {
                                            None
                                        }
                                    })
                                    .collect::<Vec<_>>()
                                    .join("\n"),
                                None => String::new(),
                            };
                            if is_error == Some(true) {
                                text = format!("Error: {text}");
                            }
                            messages.push(o::Message {
                                role: Role::Tool,
                                content: Some(Some(Content::Text(text))),
                                tool_calls: None,
                                tool_call_id: Some(tool_use_id),
                                extra: Map::new(),
                            });
                        }
                        other => rest.push(other),
                    }
                }
                if let Some(c) = parts_to_content(blocks_to_parts(&rest, &param)) {
                    messages.push(message(Role::User, Some(c)));
                }
            }
            a::Role::Assistant => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for b in &blocks {
                    match b {
                        Block::Text { text: t, .. } => text.push_str(t),
                        Block::ToolUse { id, name, input, .. } => calls.push(o::ToolCall {
                            id: id.clone(),
                            kind: "function".into(),
                            function: o::FunctionCall { name: name.clone(), arguments: input.to_string() },
                            extra: Map::new(),
                        }),
                        Block::Thinking { .. } => {
                            dropped(&param, "thinking blocks are not sent to OpenAI-compatible models")
                        }
                        _ => dropped(&param, "block type has no OpenAI equivalent in an assistant turn"),
                    }
                }
                let content = if text.is_empty() { None } else { Some(Content::Text(text)) };
                if content.is_none() && calls.is_empty() {
                    continue;
                }
                messages.push(o::Message {
                    role: Role::Assistant,
                    content: Some(content),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    tool_call_id: None,
                    extra: Map::new(),
                });
            }
        }
    }

    let mut extra = Map::new();
    for (k, v) in &req.extra {
        match k.as_str() {
            "temperature" | "top_p" => {
                extra.insert(k.clone(), v.clone());
            }
            "metadata" => {
                if let Some(u) = v.get("user_id") {
                    extra.insert("user".into(), u.clone());
                }
            }
            other => dropped(other, "no OpenAI equivalent"),
        }
    }
    if let Some(stops) = &req.stop_sequences {
        extra.insert("stop".into(), json!(stops));
    }
    let tools: Vec<o::Tool> = req
        .tools
        .iter()
        .flatten()
        .filter(|t| {
            let client_tool = t.extra.get("type").and_then(Value::as_str).is_none_or(|k| k == "custom");
            if !client_tool {
                dropped(&t.name, "server tools run at Anthropic only");
            }
            client_tool
        })
        .map(|t| o::Tool {
            kind: "function".into(),
            function: Some(o::FunctionDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: Some(t.input_schema.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))),
                extra: Map::new(),
            }),
            extra: Map::new(),
        })
        .collect();
    if let Some(tc) = &req.tool_choice {
        let mapped = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => Some(json!("auto")),
            Some("any") => Some(json!("required")),
            Some("none") => Some(json!("none")),
            Some("tool") => tc.get("name").map(|n| json!({"type": "function", "function": {"name": n}})),
            _ => None,
        };
        if let Some(m) = mapped {
            if !tools.is_empty() {
                extra.insert("tool_choice".into(), m);
            }
        }
        if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) && !tools.is_empty() {
            extra.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    ChatRequest {
        model: req.model.clone(),
        messages,
        stream: req.stream,
        stream_options: None,
        tools: (!tools.is_empty()).then_some(tools),
        response_format: None,
        max_tokens: Some(req.max_tokens),
        max_completion_tokens: None,
        n: None,
        extra,
    }
}
