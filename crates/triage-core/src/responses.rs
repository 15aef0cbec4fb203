//! The OpenAI Responses API (`POST /v1/responses`,
//! <https://platform.openai.com/docs/api-reference/responses>) translated to and from Chat
//! Completions, so that it goes through the same pipeline as every other request (auth, guard,
//! routing, budgets, fallback, ledger) and reaches every provider kind: OpenAI-compatible
//! upstreams directly, Anthropic ones and the local engine through the existing translations.
//!
//! - [`to_chat`]: a Responses request (with the stored items of `previous_response_id`, if any)
//!   to a Chat Completions request body. `input` as a string or items (messages,
//!   `function_call`, `function_call_output`; `reasoning` items are accepted and not sent on),
//!   `instructions`, function tools and `tool_choice`, `text.format`, `reasoning.effort`,
//!   `max_output_tokens`. `namespace` tools (a named group of function tools, as Codex sends
//!   them) become function tools named `<namespace>__<name>`, and calls of them go back to the
//!   client as `function_call` items with `namespace` and the tool's own name. A built-in tool
//!   (`web_search`, `file_search`, ...) offered beside function tools, and not forced by
//!   `tool_choice`, is left out (named in [`Translated::dropped_tools`]): agent harnesses offer
//!   them with every request, and the model simply cannot call them here. A built-in tool asked
//!   for on its own, or forced, or an input item of a kind no provider behind Triage can take,
//!   is an error naming it.
//! - [`from_chat`]: a whole Chat Completion to a Response object.
//! - [`StreamConverter`]: Chat Completion chunks to the Responses event sequence
//!   (`response.created`, `response.in_progress`, `response.output_item.added`,
//!   `response.content_part.added`, `response.output_text.delta`,
//!   `response.function_call_arguments.delta`, the matching `…done` events, and
//!   `response.completed` / `response.incomplete`, or `response.failed` on an error).
//!
//! Everything here is pure: ids and times are the caller's.

use serde_json::{json, Map, Value};

use crate::openai::{ChatChunk, ChatCompletion, Usage};

/// A request Triage cannot translate: the field at fault and why (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct RequestError {
    /// The field, e.g. `tools[1].type`.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn err(param: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError { param: param.into(), message: message.into() }
}

/// A translated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The Chat Completions request body.
    pub chat: Value,
    /// The conversation so far as Responses items (stored items of `previous_response_id`, then
    /// this request's input), to store with the answer.
    pub items: Vec<Value>,
    /// The request's settings echoed in the Response object (`instructions`, `tools`, ...).
    pub echo: Map<String, Value>,
    /// The client asked for a stream.
    pub stream: bool,
    /// `store` was not `false`: the answer may be kept for `previous_response_id`.
    pub store: bool,
    /// Function tools of `namespace` tools: the Chat Completions name (`<namespace>__<name>`)
    /// to the namespace and the tool's own name, to restore in the answer's calls.
    pub namespaced: Namespaced,
    /// The types of the built-in tools left out (offered beside function tools, not forced).
    pub dropped_tools: Vec<String>,
}

/// Chat Completions tool names made from `namespace` tools, to (namespace, tool name).
pub type Namespaced = std::collections::HashMap<String, (String, String)>;

/// The Chat Completions name of function `name` in namespace `ns`.
fn flat_name(ns: &str, name: &str) -> String {
    format!("{ns}__{name}")
}

/// Gives a `function_call` item whose name was made from a namespace tool its `namespace` and
/// the tool's own name back (other items are left as they are).
pub fn restore_namespace(item: &mut Value, namespaced: &Namespaced) {
    if item.get("type").and_then(Value::as_str) != Some("function_call") {
        return;
    }
    let Some((ns, name)) = item.get("name").and_then(Value::as_str).and_then(|n| namespaced.get(n)) else {
        return;
    };
    let (ns, name) = (ns.clone(), name.clone());
    item["name"] = Value::String(name);
    item["namespace"] = Value::String(ns);
}

/// Built-in tool types of the Responses API that only OpenAI itself runs.
const BUILT_IN_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "computer_use",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
];

/// Translates a Responses request. `history` is the stored conversation of
/// `previous_response_id` (its items and output), when the request names one.
///
/// Errors: [`RequestError`] naming the field (missing `model` or `input`, a built-in tool, an
/// input item of an unsupported type, `background: true`).
pub fn to_chat(req: &Value, history: Option<&[Value]>) -> Result<Translated, RequestError> {
    let obj = req.as_object().ok_or_else(|| err("body", "the body must be a JSON object"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(err("model", "this field is required (a model name, a tier, role:<name> or auto)")),
    };
    if obj.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(err("background", "background responses are not supported by Triage; leave background unset"));
    }
    for unsupported in ["conversation", "prompt"] {
        if obj.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(err(unsupported, format!("`{unsupported}` is not supported by Triage")));
        }
    }
    let mut items: Vec<Value> = history.map(<[Value]>::to_vec).unwrap_or_default();
    match obj.get("input") {
        Some(Value::String(s)) => items.push(json!({"type": "message", "role": "user", "content": s})),
        Some(Value::Array(a)) => items.extend(a.iter().cloned()),
        None | Some(Value::Null) if history.is_some() => {}
        _ => return Err(err("input", "this field is required: a string or an array of input items")),
    }
    let first_new = items.len()
        - obj
            .get("input")
            .and_then(Value::as_array)
            .map_or(usize::from(obj.get("input").is_some_and(Value::is_string)), Vec::len);

    let mut messages: Vec<Value> = Vec::new();
    if let Some(Value::String(i)) = obj.get("instructions") {
        if !i.is_empty() {
            messages.push(json!({"role": "system", "content": i}));
        }
    }
    for (n, item) in items.iter().enumerate() {
        // Errors name the position in this request's `input` (history was checked before).
        let param = if n >= first_new { format!("input[{}]", n - first_new) } else { "previous_response_id".into() };
        item_to_messages(item, &param, &mut messages)?;
    }
    if messages.is_empty() {
        return Err(err("input", "must contain at least one item"));
    }

    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model));
    chat.insert("messages".into(), Value::Array(messages));
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let mut namespaced = Namespaced::new();
    let mut dropped_tools = Vec::new();
    if let Some(Value::Array(tools)) = obj.get("tools") {
        let kind = |t: &Value| t.get("type").and_then(Value::as_str).map(str::to_owned);
        let has_functions = tools.iter().any(|t| matches!(kind(t).as_deref(), Some("function" | "namespace")));
        let forced = obj.get("tool_choice").and_then(|c| c.get("type")).and_then(Value::as_str);
        let mut out = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            match kind(t).as_deref() {
                Some("namespace") => out.extend(namespace_to_chat(t, i, &mut namespaced)?),
                Some(k) if has_functions && forced != Some(k) && BUILT_IN_TOOLS.contains(&k) && k != "custom" => {
                    dropped_tools.push(k.to_owned());
                }
                _ => out.push(tool_to_chat(t, i)?),
            }
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        chat.insert("tool_choice".into(), tool_choice_to_chat(tc)?);
    }
    if let Some(f) = obj.get("text").and_then(|t| t.get("format")).filter(|v| !v.is_null()) {
        match f.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = f.get(k) {
                        schema.insert(k.into(), v.clone());
                    }
                }
                if !schema.contains_key("name") {
                    schema.insert("name".into(), Value::String("response".into()));
                }
                chat.insert("response_format".into(), json!({"type": "json_schema", "json_schema": schema}));
            }
            Some(other) => {
                return Err(err("text.format.type", format!("\"{other}\" is not text, json_object or json_schema")))
            }
        }
    }
    if let Some(e) = obj.get("reasoning").and_then(|r| r.get("effort")).and_then(Value::as_str) {
        chat.insert("reasoning_effort".into(), Value::String(e.to_owned()));
    }
    if let Some(m) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        match m.as_u64() {
            Some(n) if n > 0 => {
                chat.insert("max_completion_tokens".into(), n.into());
            }
            _ => return Err(err("max_output_tokens", "must be a positive integer")),
        }
    }
    for k in ["temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs"] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            chat.insert(k.into(), v.clone());
        }
    }

    let mut echo = Map::new();
    for (k, default) in [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("previous_response_id", Value::Null),
        ("temperature", json!(1.0)),
        ("top_p", json!(1.0)),
        ("parallel_tool_calls", json!(true)),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("text", json!({"format": {"type": "text"}})),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("metadata", json!({})),
        ("truncation", json!("disabled")),
        ("user", Value::Null),
    ] {
        echo.insert(k.into(), obj.get(k).filter(|v| !v.is_null()).cloned().unwrap_or(default));
    }
    let store = obj.get("store").and_then(Value::as_bool) != Some(false);
    echo.insert("store".into(), Value::Bool(store));
    Ok(Translated { chat: Value::Object(chat), items, echo, stream, store, namespaced, dropped_tools })
}

/// The text of a content array's text parts (`input_text`, `output_text`, `text`, `refusal`).
fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").or_else(|| p.get("refusal")).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("")
}

fn item_to_messages(item: &Value, param: &str, out: &mut Vec<Value>) -> Result<(), RequestError> {
    let kind = item.get("type").and_then(Value::as_str);
    let role = item.get("role").and_then(Value::as_str);
    match (kind, role) {
        (Some("message") | None, Some(role)) => {
            let role = match role {
                "user" | "system" | "developer" | "assistant" => role,
                other => return Err(err(format!("{param}.role"), format!("\"{other}\" is not user, system, developer or assistant"))),
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) if role == "user" => {
                    let mut out_parts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.iter().enumerate() {
                        out_parts.push(user_part(p, &format!("{param}.content[{j}]"))?);
                    }
                    Value::Array(out_parts)
                }
                Some(Value::Array(parts)) => Value::String(parts_text(parts)),
                _ => return Err(err(format!("{param}.content"), "a string or an array of content parts is required")),
            };
            if role == "assistant" {
                match out.last_mut() {
                    // The answer text after its reasoning: one turn.
                    Some(last) if is_reasoning_turn(last) => last["content"] = content,
                    // Text after tool calls of the same turn starts a new assistant message.
                    _ => out.push(json!({"role": "assistant", "content": content})),
                }
            } else {
                out.push(json!({"role": role, "content": content}));
            }
        }
        (Some("function_call"), _) => {
            let call_id = str_field(item, "call_id", param)?;
            let name = str_field(item, "name", param)?;
            let name = match item.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() => flat_name(ns, &name),
                _ => name,
            };
            let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
            // Parallel calls join the assistant message before them (one turn, several calls).
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                Some(last)
                    if last["role"] == "assistant"
                        && last.get("tool_calls").is_none()
                        && (last["content"].is_string() || is_reasoning_turn(last)) =>
                {
                    last["tool_calls"] = json!([call]);
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        (Some("function_call_output"), _) => {
            let call_id = str_field(item, "call_id", param)?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts_text(parts),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Reasoning passed back: the signed thinking blocks Triage put in `encrypted_content`
        // go with the assistant turn that follows (to Anthropic; OpenAI-compatible upstreams
        // get none); other reasoning items are not sent on.
        (Some("reasoning"), _) => {
            if let Some(blocks) = thinking_blocks_of_item(item) {
                out.push(json!({"role": "assistant", "content": null, crate::translate::THINKING_BLOCKS: blocks}));
            }
        }
        (Some(other), _) => {
            return Err(err(
                format!("{param}.type"),
                format!("input items of type \"{other}\" are not supported by Triage (messages, function_call, function_call_output and reasoning are)"),
            ))
        }
        (None, None) => return Err(err(param, "an input item needs a `type` or a `role`")),
    }
    Ok(())
}

/// An assistant message holding only thinking blocks passed back, waiting for its turn's text or
/// calls.
fn is_reasoning_turn(m: &Value) -> bool {
    m["role"] == "assistant"
        && m["content"].is_null()
        && m.get(crate::translate::THINKING_BLOCKS).is_some()
        && m.get("tool_calls").is_none()
}

fn str_field(item: &Value, key: &str, param: &str) -> Result<String, RequestError> {
    item.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| err(format!("{param}.{key}"), "this field is required (a string)"))
}

fn user_part(p: &Value, param: &str) -> Result<Value, RequestError> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "text" | "output_text") => {
            Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()}))
        }
        Some("input_image") => {
            let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                return Err(err(
                    format!("{param}.image_url"),
                    "an image URL or data URL is required (file ids are not supported)",
                ));
            };
            let mut image = json!({"url": url});
            if let Some(d) = p.get("detail").and_then(Value::as_str) {
                image["detail"] = Value::String(d.to_owned());
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some(other) => {
            Err(err(format!("{param}.type"), format!("content parts of type \"{other}\" are not supported by Triage")))
        }
        None => Err(err(format!("{param}.type"), "a content part needs a `type`")),
    }
}

fn tool_to_chat(t: &Value, i: usize) -> Result<Value, RequestError> {
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("tools[{i}].name"), "a function tool needs a name"))?;
            let mut f = Map::new();
            f.insert("name".into(), Value::String(name.to_owned()));
            for k in ["description", "parameters", "strict"] {
                if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                    f.insert(k.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": f}))
        }
        Some(other) => {
            let what = if BUILT_IN_TOOLS.contains(&other) { "the built-in tool" } else { "the tool type" };
            Err(err(
                format!("tools[{i}].type"),
                format!("{what} \"{other}\" is not supported by Triage: only OpenAI runs it, and requests may be routed elsewhere; define it as a function tool"),
            ))
        }
        None => Err(err(format!("tools[{i}].type"), "a tool needs a `type`")),
    }
}

/// The function tools of a `namespace` tool (`{"type": "namespace", "name", "description",
/// "tools": [function tools]}`), named `<namespace>__<name>`; `namespaced` learns the names.
fn namespace_to_chat(t: &Value, i: usize, namespaced: &mut Namespaced) -> Result<Vec<Value>, RequestError> {
    let ns = t
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(format!("tools[{i}].name"), "a namespace tool needs a name"))?;
    let inner = t
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| err(format!("tools[{i}].tools"), "a namespace tool needs its tools (an array)"))?;
    let mut out = Vec::with_capacity(inner.len());
    for (j, f) in inner.iter().enumerate() {
        let mut tool = tool_to_chat(f, i).map_err(|e| err(format!("tools[{i}].tools[{j}]"), e.message))?;
        let Some(name) = tool["function"]["name"].as_str().map(str::to_owned) else { continue };
        let flat = flat_name(ns, &name);
        tool["function"]["name"] = Value::String(flat.clone());
        namespaced.insert(flat, (ns.to_owned(), name));
        out.push(tool);
    }
    Ok(out)
}

fn tool_choice_to_chat(tc: &Value) -> Result<Value, RequestError> {
    match tc {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => Ok(tc.clone()),
        Value::String(s) => Err(err("tool_choice", format!("\"{s}\" is not auto, none or required"))),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(err("tool_choice.name", "this field is required")),
            },
            Some("allowed_tools") => Ok(Value::String(
                o.get("mode").and_then(Value::as_str).filter(|m| *m == "required").unwrap_or("auto").to_owned(),
            )),
            Some(other) => {
                Err(err("tool_choice.type", format!("\"{other}\" is not supported by Triage (function is)")))
            }
            None => Err(err("tool_choice.type", "this field is required")),
        },
        _ => Err(err("tool_choice", "a string or an object is required")),
    }
}

/// The Responses `usage` object of a Chat Completions usage.
pub fn usage_of(u: &Usage) -> Value {
    let cached = u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0);
    let reasoning = u.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0);
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// `(status, incomplete_details)` for a Chat Completions finish reason.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A Response object: `id`, `created_at` (Unix seconds), `model`, `status`, `output`, `usage`,
/// and the request's settings from `echo`.
pub fn response_object(
    id: &str,
    created_at: u64,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Value,
    echo: &Map<String, Value>,
) -> Value {
    let mut r = Map::new();
    r.insert("id".into(), Value::String(id.to_owned()));
    r.insert("object".into(), Value::String("response".into()));
    r.insert("created_at".into(), created_at.into());
    r.insert("status".into(), Value::String(status.to_owned()));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    r.insert("model".into(), Value::String(model.to_owned()));
    r.insert("output".into(), Value::Array(output));
    r.insert("usage".into(), usage);
    for (k, v) in echo {
        r.insert(k.clone(), v.clone());
    }
    Value::Object(r)
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// What starts a reasoning item's `encrypted_content` made by Triage: the signed thinking blocks
/// of an Anthropic answer follow as JSON (opaque to clients, which send it back as it came).
pub const THINKING_CONTENT_PREFIX: &str = "triage-thinking-v1:";

/// A reasoning item; `blocks` (Anthropic's signed thinking blocks, the Chat Completions
/// message's `thinking_blocks`) go in `encrypted_content` so that a client passing the item back
/// (`include: ["reasoning.encrypted_content"]` clients, or `previous_response_id`) continues a
/// tool-use turn with thinking.
fn reasoning_item(id: &str, text: &str, blocks: &[Value]) -> Value {
    let summary = if text.is_empty() { json!([]) } else { json!([{"type": "summary_text", "text": text}]) };
    let mut item = json!({"type": "reasoning", "id": id, "summary": summary});
    if !blocks.is_empty() {
        item["encrypted_content"] =
            Value::String(format!("{THINKING_CONTENT_PREFIX}{}", Value::Array(blocks.to_vec())));
    }
    item
}

/// The signed thinking blocks in a reasoning item's `encrypted_content`, if Triage made it.
fn thinking_blocks_of_item(item: &Value) -> Option<Value> {
    let content = item.get("encrypted_content")?.as_str()?.strip_prefix(THINKING_CONTENT_PREFIX)?;
    serde_json::from_str::<Value>(content).ok().filter(Value::is_array)
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// A whole Chat Completion as a Response object (`id` and the item ids derive from `id`).
/// Reasoning text (`reasoning_content`) becomes a `reasoning` item with a summary, text a
/// `message` item, each tool call a `function_call` item; `finish_reason: "length"` makes the
/// status `incomplete` (reason `max_output_tokens`).
pub fn from_chat(c: &ChatCompletion, id: &str, created_at: u64, echo: &Map<String, Value>) -> Value {
    let base = id.trim_start_matches("resp_");
    let mut output = Vec::new();
    let choice = c.choices.first();
    let finish = choice.and_then(|ch| ch.finish_reason.as_deref());
    if let Some(ch) = choice {
        let m = &ch.message;
        let reasoning = m.extra.get("reasoning_content").and_then(Value::as_str).unwrap_or_default();
        let blocks =
            m.extra.get(crate::translate::THINKING_BLOCKS).and_then(Value::as_array).cloned().unwrap_or_default();
        if !reasoning.is_empty() || !blocks.is_empty() {
            output.push(reasoning_item(&format!("rs_{base}"), reasoning, &blocks));
        }
        let text = m.content.as_deref().unwrap_or_default();
        let calls = m.tool_calls.as_deref().unwrap_or_default();
        if !text.is_empty() || calls.is_empty() {
            output.push(message_item(&format!("msg_{base}"), text, "completed"));
        }
        for (i, call) in calls.iter().enumerate() {
            output.push(call_item(
                &format!("fc_{base}_{i}"),
                &call.id,
                &call.function.name,
                &call.function.arguments,
                "completed",
            ));
        }
    }
    let (status, incomplete) = status_of(finish);
    let usage = c.usage.as_ref().map_or(Value::Null, usage_of);
    let mut r = response_object(id, created_at, &c.model, status, output, usage, echo);
    r["incomplete_details"] = incomplete;
    r
}

/// One Responses stream event: its `type` (also the SSE `event:` name) and its data.
pub type StreamEvent = (String, Value);

#[derive(Debug)]
struct OpenCall {
    output_index: usize,
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// Turns the Chat Completion chunks of one answer into the Responses event sequence. Feed every
/// chunk to [`StreamConverter::chunk`], then call [`StreamConverter::finish`] (or
/// [`StreamConverter::fail`]); [`StreamConverter::start`] gives the opening events. Every event
/// carries an increasing `sequence_number`.
#[derive(Debug)]
pub struct StreamConverter {
    id: String,
    base: String,
    created_at: u64,
    model: String,
    echo: Map<String, Value>,
    seq: u64,
    output: Vec<Option<Value>>,
    text: Option<(usize, String, String)>,
    reasoning: Option<(usize, String, String)>,
    /// Signed thinking blocks streamed (`thinking_blocks` deltas) for the open reasoning item.
    thinking_blocks: Vec<Value>,
    calls: Vec<(u32, OpenCall)>,
    usage: Option<Usage>,
    finish: Option<String>,
    ended: bool,
    namespaced: Namespaced,
}

impl StreamConverter {
    /// A converter for response `id` (`resp_...`), created at `created_at` (Unix seconds) for
    /// the requested `model`, echoing the request's settings.
    pub fn new(id: &str, created_at: u64, model: &str, echo: Map<String, Value>) -> StreamConverter {
        StreamConverter {
            id: id.to_owned(),
            base: id.trim_start_matches("resp_").to_owned(),
            created_at,
            model: model.to_owned(),
            echo,
            seq: 0,
            output: Vec::new(),
            text: None,
            reasoning: None,
            thinking_blocks: Vec::new(),
            calls: Vec::new(),
            usage: None,
            finish: None,
            ended: false,
            namespaced: Namespaced::new(),
        }
    }

    /// Calls of these Chat Completions names go out with their namespace
    /// ([`Translated::namespaced`]).
    pub fn with_namespaces(mut self, namespaced: Namespaced) -> StreamConverter {
        self.namespaced = namespaced;
        self
    }

    fn event(&mut self, kind: &str, mut data: Value) -> StreamEvent {
        data["type"] = Value::String(kind.to_owned());
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        (kind.to_owned(), data)
    }

    fn snapshot(&self, status: &str) -> Value {
        let output: Vec<Value> = self.output.iter().flatten().cloned().collect();
        let usage = self.usage.as_ref().map_or(Value::Null, usage_of);
        response_object(&self.id, self.created_at, &self.model, status, output, usage, &self.echo)
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<StreamEvent> {
        let r = self.snapshot("in_progress");
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn close_reasoning(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((idx, id, text)) = self.reasoning.take() {
            let part = json!({"type": "summary_text", "text": text});
            out.push(self.event(
                "response.reasoning_summary_text.done",
                json!({"item_id": id, "output_index": idx, "summary_index": 0, "text": text}),
            ));
            out.push(self.event(
                "response.reasoning_summary_part.done",
                json!({"item_id": id, "output_index": idx, "summary_index": 0, "part": part}),
            ));
            let blocks = std::mem::take(&mut self.thinking_blocks);
            let item = reasoning_item(&id, &text, &blocks);
            self.output[idx] = Some(item.clone());
            out.push(self.event("response.output_item.done", json!({"output_index": idx, "item": item})));
        }
    }

    fn close_text(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((idx, id, text)) = self.text.take() {
            out.push(self.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": idx, "content_index": 0, "text": text, "logprobs": []}),
            ));
            let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            out.push(self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": idx, "content_index": 0, "part": part}),
            ));
            let item = message_item(&id, &text, "completed");
            self.output[idx] = Some(item.clone());
            out.push(self.event("response.output_item.done", json!({"output_index": idx, "item": item})));
        }
    }

    fn close_calls(&mut self, out: &mut Vec<StreamEvent>) {
        for (_, c) in std::mem::take(&mut self.calls) {
            out.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": c.id, "output_index": c.output_index, "arguments": c.arguments}),
            ));
            let mut item = call_item(&c.id, &c.call_id, &c.name, &c.arguments, "completed");
            restore_namespace(&mut item, &self.namespaced);
            self.output[c.output_index] = Some(item.clone());
            out.push(self.event("response.output_item.done", json!({"output_index": c.output_index, "item": item})));
        }
    }

    /// The events for one chunk (choice 0 only; Triage's own streams have one choice).
    pub fn chunk(&mut self, c: &ChatChunk) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if let Some(u) = &c.usage {
            self.usage = Some(u.clone());
        }
        // The model that answers, as in a whole answer (the requested name until it is known).
        if !c.model.is_empty() && c.model != self.model {
            self.model.clone_from(&c.model);
        }
        let Some(ch) = c.choices.iter().find(|ch| ch.index == 0) else { return out };
        if let Some(blocks) = ch.delta.extra.get(crate::translate::THINKING_BLOCKS).and_then(Value::as_array) {
            self.thinking_blocks.extend(blocks.iter().cloned());
        }
        if let Some(r) = ch.delta.extra.get("reasoning_content").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            if self.reasoning.is_none() {
                let idx = self.output.len();
                let id = format!("rs_{}", self.base);
                self.output.push(None);
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": idx, "item": {"type": "reasoning", "id": id, "summary": []}}),
                ));
                out.push(self.event("response.reasoning_summary_part.added", json!({"item_id": id, "output_index": idx, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})));
                self.reasoning = Some((idx, id, String::new()));
            }
            if let Some((idx, id, text)) = self.reasoning.as_mut() {
                text.push_str(r);
                let (idx, id) = (*idx, id.clone());
                out.push(self.event(
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": idx, "summary_index": 0, "delta": r}),
                ));
            }
        }
        if let Some(t) = ch.delta.content.as_deref().filter(|t| !t.is_empty()) {
            self.close_reasoning(&mut out);
            if self.text.is_none() {
                let idx = self.output.len();
                let id = format!("msg_{}_{idx}", self.base);
                self.output.push(None);
                out.push(self.event("response.output_item.added", json!({"output_index": idx, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}})));
                out.push(self.event("response.content_part.added", json!({"item_id": id, "output_index": idx, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})));
                self.text = Some((idx, id, String::new()));
            }
            if let Some((idx, id, text)) = self.text.as_mut() {
                text.push_str(t);
                let (idx, id) = (*idx, id.clone());
                out.push(self.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": idx, "content_index": 0, "delta": t, "logprobs": []}),
                ));
            }
        }
        for tc in ch.delta.tool_calls.iter().flatten() {
            self.close_reasoning(&mut out);
            self.close_text(&mut out);
            let pos = self.calls.iter().position(|(i, _)| *i == tc.index);
            let pos = match pos {
                Some(p) => p,
                None => {
                    let idx = self.output.len();
                    let n = self.calls.len();
                    let id = format!("fc_{}_{idx}", self.base);
                    let call_id = tc.id.clone().unwrap_or_else(|| format!("call_{}_{n}", self.base));
                    let name = tc.function.as_ref().and_then(|f| f.name.clone()).unwrap_or_default();
                    self.output.push(None);
                    let mut item = call_item(&id, &call_id, &name, "", "in_progress");
                    restore_namespace(&mut item, &self.namespaced);
                    out.push(self.event("response.output_item.added", json!({"output_index": idx, "item": item})));
                    self.calls
                        .push((tc.index, OpenCall { output_index: idx, id, call_id, name, arguments: String::new() }));
                    self.calls.len() - 1
                }
            };
            if let Some(args) = tc.function.as_ref().and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty()) {
                let (idx, id) = {
                    let c = &mut self.calls[pos].1;
                    c.arguments.push_str(args);
                    (c.output_index, c.id.clone())
                };
                out.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": idx, "delta": args}),
                ));
            }
        }
        if let Some(f) = &ch.finish_reason {
            self.finish = Some(f.clone());
        }
        out
    }

    /// Closes every open item and ends with `response.completed` (or `response.incomplete`).
    /// Returns no events after the stream has ended.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.ended = true;
        self.close_reasoning(&mut out);
        if self.text.is_none() && self.calls.is_empty() && self.output.is_empty() {
            // An empty answer is still one (empty) message.
            let idx = self.output.len();
            let id = format!("msg_{}_{idx}", self.base);
            self.output.push(None);
            out.push(self.event("response.output_item.added", json!({"output_index": idx, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}})));
            self.text = Some((idx, id, String::new()));
        }
        self.close_text(&mut out);
        self.close_calls(&mut out);
        let (status, incomplete) = status_of(self.finish.as_deref());
        let mut r = self.snapshot(status);
        r["incomplete_details"] = incomplete;
        let kind = if status == "incomplete" { "response.incomplete" } else { "response.completed" };
        out.push(self.event(kind, json!({"response": r})));
        out
    }

    /// Ends with `response.failed` carrying `error` (`{"code", "message"}`).
    pub fn fail(&mut self, code: &str, message: &str) -> Vec<StreamEvent> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        let mut r = self.snapshot("failed");
        r["error"] = json!({"code": code, "message": message});
        vec![self.event("response.failed", json!({"response": r}))]
    }

    /// The output items so far (all of them after [`StreamConverter::finish`]).
    pub fn output(&self) -> Vec<Value> {
        self.output.iter().flatten().cloned().collect()
    }

    /// True once the final event was produced.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(req: Value) -> Translated {
        to_chat(&req, None).unwrap()
    }

    #[test]
    fn string_input_and_instructions() {
        let r = t(
            json!({"model": "auto", "instructions": "Be brief.", "input": "Hi", "max_output_tokens": 50, "reasoning": {"effort": "low"}, "store": false}),
        );
        assert_eq!(
            r.chat,
            json!({"model": "auto", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "reasoning_effort": "low", "max_completion_tokens": 50})
        );
        assert!(!r.store && !r.stream);
        assert_eq!(r.echo["instructions"], "Be brief.");
        assert_eq!(r.items, vec![json!({"type": "message", "role": "user", "content": "Hi"})]);
    }

    #[test]
    fn items_tools_and_formats() {
        let r = t(json!({
            "model": "m", "stream": true,
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Bern?"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Bern\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny at noon."}]}
            ],
            "tools": [{"type": "function", "name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}}
        }));
        let m = r.chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "developer", "content": "Use tools."}));
        assert_eq!(
            m[1]["content"][2],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}})
        );
        assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(m[2]["tool_calls"][1]["function"]["name"], "time");
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"}));
        assert_eq!(m[4]["content"], "noon");
        assert_eq!(m[5], json!({"role": "assistant", "content": "Sunny at noon."}));
        assert_eq!(m.len(), 6);
        assert_eq!(
            r.chat["tools"][0],
            json!({"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(r.chat["tool_choice"], json!({"type": "function", "function": {"name": "weather"}}));
        assert_eq!(
            r.chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(r.chat["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn unsupported_things_are_named() {
        let e =
            to_chat(&json!({"model": "m", "input": "x", "tools": [{"type": "web_search_preview"}]}), None).unwrap_err();
        assert_eq!(e.param, "tools[0].type");
        assert!(e.message.contains("built-in tool \"web_search_preview\""), "{}", e.message);
        let e = to_chat(&json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}), None).unwrap_err();
        assert_eq!(e.param, "input[0].type");
        assert_eq!(to_chat(&json!({"input": "x"}), None).unwrap_err().param, "model");
        assert_eq!(to_chat(&json!({"model": "m"}), None).unwrap_err().param, "input");
        assert_eq!(
            to_chat(&json!({"model": "m", "input": "x", "max_output_tokens": 0}), None).unwrap_err().param,
            "max_output_tokens"
        );
    }

    #[test]
    fn built_in_tools_offered_beside_function_tools_are_left_out_unless_forced() {
        // Codex offers `web_search` with every request, beside its function tools.
        let tools = json!([{"type": "function", "name": "f"}, {"type": "web_search", "external_web_access": false}]);
        let r = to_chat(&json!({"model": "m", "input": "x", "tools": tools}), None).unwrap();
        assert_eq!(r.chat["tools"].as_array().unwrap().len(), 1);
        assert_eq!(r.chat["tools"][0]["function"]["name"], "f");
        assert_eq!(r.dropped_tools, vec!["web_search".to_owned()]);
        // Forced by tool_choice: the client wants it to run, which no provider here can do.
        let e =
            to_chat(&json!({"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "web_search"}}), None)
                .unwrap_err();
        assert_eq!(e.param, "tools[1].type");
        // A freeform `custom` tool is never dropped silently.
        let custom = json!([{"type": "function", "name": "f"}, {"type": "custom", "name": "apply_patch"}]);
        assert_eq!(
            to_chat(&json!({"model": "m", "input": "x", "tools": custom}), None).unwrap_err().param,
            "tools[1].type"
        );
    }

    #[test]
    fn namespace_tools_become_function_tools_and_calls_get_their_namespace_back() {
        let ns = json!({"type": "namespace", "name": "multi_agent_v1", "description": "agents",
            "tools": [{"type": "function", "name": "close_agent", "description": "Close", "parameters": {"type": "object"}, "strict": false}]});
        let req = json!({"model": "m", "input": [
            {"type": "message", "role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c0", "name": "close_agent", "namespace": "multi_agent_v1", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c0", "output": "closed"}
        ], "tools": [{"type": "function", "name": "exec_command"}, ns]});
        let r = to_chat(&req, None).unwrap();
        let names: Vec<&str> =
            r.chat["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["exec_command", "multi_agent_v1__close_agent"]);
        assert_eq!(r.chat["tools"][1]["function"]["description"], "Close");
        // A call passed back with its namespace goes upstream under the flat name.
        assert_eq!(r.chat["messages"][1]["tool_calls"][0]["function"]["name"], "multi_agent_v1__close_agent");
        assert_eq!(
            r.namespaced["multi_agent_v1__close_agent"],
            ("multi_agent_v1".to_owned(), "close_agent".to_owned())
        );
        // A call of the flat name goes to the client with its namespace (whole and streamed).
        let c: ChatCompletion = serde_json::from_value(json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "multi_agent_v1__close_agent", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "exec_command", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]})).unwrap();
        let mut resp = from_chat(&c, "resp_a", 1, &Map::new());
        for item in resp["output"].as_array_mut().unwrap() {
            restore_namespace(item, &r.namespaced);
        }
        assert_eq!(resp["output"][0]["name"], "close_agent");
        assert_eq!(resp["output"][0]["namespace"], "multi_agent_v1");
        assert_eq!(resp["output"][1]["name"], "exec_command");
        assert!(resp["output"][1].get("namespace").is_none());
        let mut conv = StreamConverter::new("resp_b", 1, "m", Map::new()).with_namespaces(r.namespaced.clone());
        let mut events = conv.start();
        let chunk: ChatChunk =
            serde_json::from_value(json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "multi_agent_v1__close_agent", "arguments": "{}"}}]}}]}))
            .unwrap();
        events.extend(conv.chunk(&chunk));
        events.extend(conv.finish());
        let added = events.iter().find(|(n, _)| n == "response.output_item.added").unwrap();
        assert_eq!(
            (added.1["item"]["name"].as_str(), added.1["item"]["namespace"].as_str()),
            (Some("close_agent"), Some("multi_agent_v1"))
        );
        let done = events.iter().find(|(n, _)| n == "response.completed").unwrap();
        assert_eq!(done.1["response"]["output"][0]["namespace"], "multi_agent_v1");
        assert_eq!(conv.output()[0]["name"], "close_agent");
    }

    #[test]
    fn history_comes_first() {
        let history = vec![
            json!({"type": "message", "role": "user", "content": "Name a color."}),
            message_item("msg_1", "Blue.", "completed"),
        ];
        let r = to_chat(&json!({"model": "m", "input": "Another?", "previous_response_id": "resp_1"}), Some(&history))
            .unwrap();
        let roles: Vec<&str> =
            r.chat["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(r.chat["messages"][1]["content"], "Blue.");
        assert_eq!(r.items.len(), 3);
        assert_eq!(r.echo["previous_response_id"], "resp_1");
    }

    #[test]
    fn completion_to_response() {
        let c: ChatCompletion = serde_json::from_value(json!({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}})).unwrap();
        let r = from_chat(&c, "resp_abc", 7, &Map::new());
        assert_eq!(r["status"], "completed");
        assert_eq!(
            r["output"],
            json!([{"type": "function_call", "id": "fc_abc_0", "call_id": "call_9", "name": "f", "arguments": "{\"a\":1}", "status": "completed"}])
        );
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
        );
        let mut c = c;
        c.choices[0].message.tool_calls = None;
        c.choices[0].message.content = Some("partial".into());
        c.choices[0].finish_reason = Some("length".into());
        let r = from_chat(&c, "resp_abc", 7, &Map::new());
        assert_eq!(
            (r["status"].as_str(), &r["incomplete_details"]),
            (Some("incomplete"), &json!({"reason": "max_output_tokens"}))
        );
        assert_eq!(r["output"][0]["content"][0]["text"], "partial");
    }

    #[test]
    fn stream_event_sequence() {
        let mut s = StreamConverter::new("resp_z", 1, "m", Map::new());
        let mut events = s.start();
        let chunk = |v: Value| -> ChatChunk { serde_json::from_value(v).unwrap() };
        for c in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        ] {
            events.extend(s.chunk(&chunk(c)));
        }
        events.extend(s.finish());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let seqs: Vec<u64> = events.iter().map(|(_, d)| d["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..15).collect::<Vec<u64>>());
        let done = &events[14].1["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"x\":1}");
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["usage"]["total_tokens"], 7);
        assert!(s.finish().is_empty());
        let failed = StreamConverter::new("resp_y", 1, "m", Map::new()).fail("upstream_error", "boom");
        assert_eq!(failed[0].1["response"]["error"]["message"], "boom");
    }
    /// Reasoning across formats in the Responses API: an answer's signed thinking blocks go in
    /// its reasoning item's `encrypted_content`; the item passed back puts them first in the
    /// assistant turn of the calls that follow it (to Anthropic), whole or streamed.
    #[test]
    fn thinking_blocks_round_trip_through_reasoning_items() {
        let blocks = json!([{"type": "thinking", "thinking": "Use the tool.", "signature": "sig-PLACEHOLDER-3"}]);
        let c: ChatCompletion = serde_json::from_value(json!({"id": "c", "object": "chat.completion", "created": 1, "model": "claude-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "reasoning_content": "Use the tool.", "thinking_blocks": blocks,
                "tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]})).unwrap();
        let r = from_chat(&c, "resp_t", 7, &Map::new());
        let reasoning = &r["output"][0];
        assert_eq!(reasoning["type"], "reasoning");
        assert_eq!(reasoning["summary"][0]["text"], "Use the tool.");
        assert_eq!(reasoning["encrypted_content"], format!("{THINKING_CONTENT_PREFIX}{blocks}"));

        let mut input = r["output"].as_array().unwrap().clone();
        input.insert(0, json!({"role": "user", "content": "Go"}));
        input.push(json!({"type": "function_call_output", "call_id": "call_7", "output": "ok"}));
        let next = t(json!({"model": "m", "input": input}));
        assert_eq!(
            next.chat["messages"],
            json!([
                {"role": "user", "content": "Go"},
                {"role": "assistant", "content": null, "thinking_blocks": blocks,
                 "tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_7", "content": "ok"}
            ])
        );

        let mut s = StreamConverter::new("resp_s", 1, "m", Map::new());
        let chunk = |v: Value| -> ChatChunk { serde_json::from_value(v).unwrap() };
        s.start();
        for c in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Use the tool."}}]}),
            json!({"choices": [{"index": 0, "delta": {"thinking_blocks": blocks}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Done."}, "finish_reason": "stop"}]}),
        ] {
            s.chunk(&chunk(c));
        }
        s.finish();
        let out = s.output();
        assert_eq!(out[0]["encrypted_content"], format!("{THINKING_CONTENT_PREFIX}{blocks}"));
        assert_eq!(out[1]["content"][0]["text"], "Done.");
    }
}
