//! Answer translation (whole answers) and the stop-reason and usage mappings.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::anthropic::{self as a, Block};
use crate::openai::{self as o, ChatCompletion};

/// Anthropic `stop_reason` → OpenAI `finish_reason` (shared case C13). `pause_turn` (a server
/// tool paused the turn) has no OpenAI equivalent and maps to `stop`.
pub fn finish_reason_of(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason` (shared case C13). `stop` maps to
/// `end_turn` (OpenAI does not say whether a stop string fired).
pub fn stop_reason_of(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic usage → OpenAI usage: `prompt_tokens` counts uncached, cache-read and cache-write
/// input tokens; `prompt_tokens_details.cached_tokens` the cache reads (shared case C20 B).
pub fn openai_usage_of(u: &a::Usage) -> o::Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let write = u.cache_creation_input_tokens.unwrap_or(0);
    let prompt = u.input_tokens + read + write;
    o::Usage {
        prompt_tokens: prompt,
        completion_tokens: u.output_tokens,
        total_tokens: prompt + u.output_tokens,
        prompt_tokens_details: (read > 0 || u.cache_read_input_tokens.is_some())
            .then(|| o::PromptTokensDetails { cached_tokens: Some(read), extra: Map::new() }),
        completion_tokens_details: None,
        extra: Map::new(),
    }
}

/// OpenAI usage → Anthropic usage: cached tokens become `cache_read_input_tokens` and are taken
/// out of `input_tokens`.
pub fn anthropic_usage_of(u: &o::Usage) -> a::Usage {
    let cached = u.cached_tokens().min(u.prompt_tokens);
    a::Usage {
        input_tokens: u.prompt_tokens - cached,
        output_tokens: u.completion_tokens,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: (cached > 0).then_some(cached),
        extra: Map::new(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A tool call's arguments as an OpenAI JSON string (`{}` when the input is empty or absent, the
/// same whether streamed or not: shared case C07).
pub fn arguments_of(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_owned(),
        v => v.to_string(),
    }
}

/// An Anthropic answer as an OpenAI chat completion.
pub fn anthropic_to_openai_response(r: &a::Response) -> ChatCompletion {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    for b in &r.content {
        match b {
            Block::Text { text: t, .. } => text.push_str(t),
            Block::Thinking { thinking, .. } => {
                reasoning.push_str(thinking);
                thinking_blocks.push(serde_json::to_value(b).unwrap_or(Value::Null));
            }
            Block::Other(m) if m.get("type").and_then(Value::as_str) == Some("redacted_thinking") => {
                thinking_blocks.push(Value::Object(m.clone()));
            }
            Block::ToolUse { id, name, input, .. } => calls.push(o::ToolCall {
                id: id.clone(),
                kind: "function".into(),
                function: o::FunctionCall { name: name.clone(), arguments: arguments_of(input) },
                extra: Map::new(),
            }),
            _ => tracing::debug!("answer block has no OpenAI equivalent; dropped"),
        }
    }
    let finish = r.stop_reason.as_deref().map(finish_reason_of).map(str::to_owned);
    // Thinking goes in `reasoning_content` (its text, as DeepSeek and vLLM put it) and, signed,
    // in `thinking_blocks` (crate::translate::request::THINKING_BLOCKS) for the next turn.
    let mut extra = Map::new();
    if !reasoning.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !thinking_blocks.is_empty() {
        extra.insert(crate::translate::request::THINKING_BLOCKS.into(), Value::Array(thinking_blocks));
    }
    ChatCompletion {
        id: r.id.clone(),
        object: "chat.completion".into(),
        created: now_secs(),
        model: r.model.clone(),
        choices: vec![o::Choice {
            index: 0,
            message: o::ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || calls.is_empty()).then_some(text),
                tool_calls: (!calls.is_empty()).then_some(calls),
                extra,
            },
            finish_reason: finish,
            extra: Map::new(),
        }],
        usage: Some(openai_usage_of(&r.usage)),
        extra: Map::new(),
    }
}

/// An OpenAI chat completion (its first choice) as an Anthropic answer. Tool calls reported with
/// `finish_reason: "stop"` still end with `tool_use` (shared case C11).
pub fn openai_to_anthropic_response(c: &ChatCompletion) -> a::Response {
    let mut content = Vec::new();
    let mut stop_reason = None;
    if let Some(choice) = c.choices.first() {
        if let Some(t) = choice.message.content.as_deref().filter(|t| !t.is_empty()) {
            content.push(Block::Text { text: t.to_owned(), extra: Map::new() });
        }
        let calls = choice.message.tool_calls.as_deref().unwrap_or_default();
        for call in calls {
            let args = call.function.arguments.trim();
            let input = if args.is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(args).unwrap_or_else(|_| {
                    tracing::debug!("tool-call arguments from the upstream are not JSON; kept as a string");
                    serde_json::json!({"_raw_arguments": args})
                })
            };
            content.push(Block::ToolUse {
                id: call.id.clone(),
                name: call.function.name.clone(),
                input,
                extra: Map::new(),
            });
        }
        stop_reason = choice.finish_reason.as_deref().map(|f| {
            if !calls.is_empty() && f == "stop" {
                "tool_use"
            } else {
                stop_reason_of(f)
            }
        });
    }
    a::Response {
        id: if c.id.starts_with("msg_") { c.id.clone() } else { format!("msg_{}", c.id) },
        kind: "message".into(),
        role: "assistant".into(),
        model: c.model.clone(),
        content,
        stop_reason: stop_reason.map(str::to_owned).or_else(|| Some("end_turn".into())),
        stop_sequence: None,
        usage: c.usage.as_ref().map(anthropic_usage_of).unwrap_or_default(),
        extra: Map::new(),
    }
}
