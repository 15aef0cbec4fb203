//! A fast fake OpenAI-compatible upstream for benchmarks and SDK tests, on axum.
//!
//! `POST /v1/chat/completions` answers in the real wire format:
//! - a request whose last message is a `tool` result gets `The tool said: <result>`;
//! - a request with `tools` (and no tool result yet) gets a call of its first tool with `{}`
//!   arguments (`finish_reason: "tool_calls"`), unless a user message has a line
//!   `fake-call <tool name> <JSON arguments>` naming one of the tools: then that tool is called
//!   with those arguments (so that real agent CLIs, whose first tool is not the one a test
//!   wants, run a chosen tool: `fake-call Read {"file_path": "/tmp/x/note.txt"}`), or a line
//!   `fake-text`: then the answer is the fixed text although tools are offered;
//! - anything else gets a fixed text, split into `chunks` pieces when streamed, with
//!   `chunk_delay` between them; usage comes in a final `choices: []` chunk when
//!   `stream_options.include_usage` is set.
//!
//! `POST /v1/messages` answers the same way in Anthropic's Messages format (a `tool_result` in
//! the last user turn gets `The tool said: <result>`; `tools` get a `tool_use` block).
//!
//! `GET /v1/models` lists one model.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Behaviour of the fixed upstream.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// Text pieces of a streamed answer.
    pub chunks: usize,
    /// Pause between streamed pieces.
    pub chunk_delay: Duration,
}

impl Default for Fixed {
    fn default() -> Self {
        Fixed { chunks: 5, chunk_delay: Duration::ZERO }
    }
}

/// The axum app of the fixed upstream.
pub fn app(cfg: Fixed) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(|| async { Json(json!({"object":"list","data":[{"id":"fake-model","object":"model","created":0,"owned_by":"fake"}]})) }))
        .with_state(cfg)
}

const TEXT: &str = "Hello from the fake upstream.";

/// The texts of a message's content: a string, or the `text` of its parts (both formats).
fn texts(content: &Value) -> Vec<&str> {
    match content {
        Value::String(s) => vec![s.as_str()],
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => Vec::new(),
    }
}

/// A user message has a line `fake-text`: answer with text although tools are offered.
fn text_asked(messages: &[Value]) -> bool {
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .any(|m| texts(&m["content"]).iter().any(|t| t.lines().any(|l| l.trim() == "fake-text")))
}

/// The last `fake-call <name> <JSON arguments>` line of the user messages whose name is one of
/// `tool_names`: the tool's name and its arguments (a JSON text).
fn scripted_call(messages: &[Value], tool_names: &[&str]) -> Option<(String, String)> {
    let mut found = None;
    for m in messages.iter().filter(|m| m["role"] == "user") {
        for text in texts(&m["content"]) {
            for line in text.lines() {
                let Some(rest) = line.trim().strip_prefix("fake-call ") else { continue };
                let (name, args) = rest.trim().split_once(' ').unwrap_or((rest.trim(), "{}"));
                let args = args.trim();
                if tool_names.contains(&name) && serde_json::from_str::<Value>(args).is_ok_and(|v| v.is_object()) {
                    found = Some((name.to_owned(), args.to_owned()));
                }
            }
        }
    }
    found
}

fn answer(req: &Value) -> (Option<String>, Option<Value>) {
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    if last["role"] == "tool" {
        let content = match &last["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return (Some(format!("The tool said: {content}")), None);
    }
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["function"]["name"].as_str()).collect();
    if let Some((name, arguments)) = scripted_call(&messages, &names) {
        let call = json!({"id": "call_fake_1", "type": "function", "function": {"name": name, "arguments": arguments}});
        return (None, Some(call));
    }
    if let Some(tool) = tools.first().filter(|_| !text_asked(&messages)) {
        let name = tool["function"]["name"].as_str().unwrap_or("tool");
        let call = json!({"id": "call_fake_1", "type": "function", "function": {"name": name, "arguments": "{}"}});
        return (None, Some(call));
    }
    (Some(TEXT.to_owned()), None)
}

fn prompt_tokens(req: &Value) -> u64 {
    req["messages"]
        .as_array()
        .map_or(0, |m| m.iter().map(|m| m["content"].to_string().split_whitespace().count() as u64 + 3).sum())
}

async fn chat(State(cfg): State<Fixed>, Json(req): Json<Value>) -> Response {
    let model = req["model"].as_str().unwrap_or("fake-model").to_owned();
    let (text, call) = answer(&req);
    let prompt = prompt_tokens(&req);
    let completion = text.as_deref().map_or(5, |t| t.split_whitespace().count() as u64);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let finish = if call.is_some() { "tool_calls" } else { "stop" };
    if req["stream"] != true {
        let mut message = json!({"role": "assistant", "content": text});
        if let Some(c) = &call {
            message["tool_calls"] = json!([c]);
        }
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = req["stream_options"]["include_usage"] == true;
    let chunk = |delta: Value, finish: Option<&str>| {
        let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events: Vec<String> = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    if let Some(t) = &text {
        let n = cfg.chunks.max(1);
        let step = t.len().div_ceil(n);
        let mut rest = t.as_str();
        while !rest.is_empty() {
            let mut cut = step.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (piece, tail) = rest.split_at(cut);
            events.push(chunk(json!({"content": piece}), None));
            rest = tail;
        }
    }
    if let Some(c) = &call {
        let name = c["function"]["name"].clone();
        events.push(chunk(json!({"tool_calls": [{"index": 0, "id": c["id"], "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
        // The arguments in two pieces, as real upstreams stream them.
        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
        let mut cut = args.len() / 2;
        while !args.is_char_boundary(cut) {
            cut += 1;
        }
        for piece in [&args[..cut], &args[cut..]].into_iter().filter(|p| !p.is_empty()) {
            events.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), None));
        }
    }
    events.push(chunk(json!({}), Some(finish)));
    if include_usage {
        let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    let delay = cfg.chunk_delay;
    let stream = futures_util::stream::unfold((events.into_iter(), true), move |(mut it, first)| async move {
        let next = it.next()?;
        if !first && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(next), (it, false)))
    });
    ([(CONTENT_TYPE, "text/event-stream")], Body::from_stream(stream)).into_response()
}

fn anthropic_answer(req: &Value) -> (Option<String>, Option<Value>) {
    let last = req["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
    let result =
        last["content"].as_array().and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result")).cloned();
    if let Some(r) = result {
        let content = match &r["content"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(""),
            other => other.to_string(),
        };
        return (Some(format!("The tool said: {content}")), None);
    }
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    if let Some((name, arguments)) = scripted_call(&messages, &names) {
        let input: Value = serde_json::from_str(&arguments).unwrap_or_else(|_| json!({}));
        return (None, Some(json!({"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": input})));
    }
    if let Some(tool) = tools.first().filter(|_| !text_asked(&messages)) {
        let name = tool["name"].as_str().unwrap_or("tool");
        return (None, Some(json!({"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {}})));
    }
    (Some(TEXT.to_owned()), None)
}

async fn messages(State(cfg): State<Fixed>, Json(req): Json<Value>) -> Response {
    let model = req["model"].as_str().unwrap_or("fake-claude").to_owned();
    let (text, call) = anthropic_answer(&req);
    let input = prompt_tokens(&req);
    let output = text.as_deref().map_or(5, |t| t.split_whitespace().count() as u64);
    let stop = if call.is_some() { "tool_use" } else { "end_turn" };
    if req["stream"] != true {
        let content = match (&text, &call) {
            (Some(t), _) => json!([{"type": "text", "text": t}]),
            (None, Some(c)) => json!([c]),
            _ => json!([]),
        };
        return Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": output},
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
    )];
    if let Some(t) = &text {
        events.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        let n = cfg.chunks.max(1);
        let step = t.len().div_ceil(n);
        let mut rest = t.as_str();
        while !rest.is_empty() {
            let mut cut = step.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (piece, tail) = rest.split_at(cut);
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
            rest = tail;
        }
        events.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    }
    if let Some(c) = &call {
        let mut start = c.clone();
        start["input"] = json!({});
        events.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": start}),
        ));
        let partial = c["input"].to_string();
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": partial}})));
        events.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    }
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    let delay = cfg.chunk_delay;
    let stream = futures_util::stream::unfold((events.into_iter(), true), move |(mut it, first)| async move {
        let next = it.next()?;
        if !first && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(next), (it, false)))
    });
    ([(CONTENT_TYPE, "text/event-stream")], Body::from_stream(stream)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_call_line_picks_the_named_tool_and_its_arguments() {
        let messages = vec![
            json!({"role": "system", "content": "fake-call Bash {\"command\": \"no\"}"}),
            json!({"role": "user", "content": [{"type": "text", "text": "<reminder/>"}, {"type": "text", "text": "Read it.\nfake-call Read {\"file_path\": \"/tmp/n.txt\"}"}]}),
        ];
        assert_eq!(
            scripted_call(&messages, &["Bash", "Read"]),
            Some(("Read".to_owned(), "{\"file_path\": \"/tmp/n.txt\"}".to_owned()))
        );
        // A tool the request does not offer, or arguments that are not a JSON object: no call.
        assert_eq!(scripted_call(&messages, &["Bash"]), None);
        let bad = vec![json!({"role": "user", "content": "fake-call Read [1]"})];
        assert_eq!(scripted_call(&bad, &["Read"]), None);
        assert!(!text_asked(&messages));
        assert!(text_asked(&[json!({"role": "user", "content": "Say hello\nfake-text"})]));
    }
}
