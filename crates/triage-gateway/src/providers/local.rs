//! Provider `kind = "local"`: a GGUF model run by llama.cpp in a supervised worker process of
//! this same executable ([`triage_local::EngineProcess`]), so that a crash in native inference
//! code ends the worker, not the gateway.
//!
//! It speaks OpenAI Chat Completions like an OpenAI-compatible server on loopback would, so
//! everything above it (translation for Anthropic clients, stream priming, accounting) is the
//! same: the body it gets is an OpenAI request, the answer a [`ChatCompletion`] or a stream of
//! [`ChatChunk`]s ending with a usage chunk. When the engine's queue is full a call fails at
//! once with [`UpstreamError::Busy`], and [`LocalProvider::busy`] makes the deployment show as
//! unavailable, so routing and fallback go elsewhere. While the worker loads its model, calls
//! wait for it; a model file that cannot be loaded leaves the provider `failed` with the reason;
//! a worker that dies fails its requests in flight with [`UpstreamError::Crashed`] (fallback
//! where the policy allows, 503 otherwise) and is restarted with a backoff. Never the gateway
//! down.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use triage_core::catalog::{Provider, Timeouts};
use triage_core::openai::{ChatChunk, ChatCompletion, ChatRequest, Content, ContentPart, Role};
use triage_local::{
    EngineConfig, EngineError, EngineProcess, EngineState, Event, GenerateRequest, Generation, Message, Sampling, Tool,
    ToolCall, ToolChoice, WorkerCommand,
};

use super::{CallError, ChunkStream, Completion, Reply, StreamItem, TimeoutKind, UpstreamError};

/// The engine of one `local` provider.
#[derive(Debug)]
pub struct LocalProvider {
    engine: Result<Arc<EngineProcess>, String>,
    timeouts: Timeouts,
    /// `max_tokens` of a request that sets none (the provider's `max_tokens`).
    default_max_tokens: u32,
}

fn client_error(message: impl Into<String>, code: &str) -> CallError {
    let body =
        json!({"error": {"message": message.into(), "type": "invalid_request_error", "param": null, "code": code}});
    CallError::Status {
        status: StatusCode::BAD_REQUEST,
        body: Bytes::from(body.to_string()),
        retry_after: None,
        retry_after_ms: None,
    }
}

/// What a failed generation means to dispatch: a prompt too long for the context is a
/// context-length 400 (so `context_window_fallback` applies), a template that cannot take the
/// messages a plain 400, busy is busy, and the rest are failures of the engine.
fn engine_failure(e: EngineError) -> CallError {
    match e {
        EngineError::ContextExceeded { .. } => client_error(e.to_string(), "context_length_exceeded"),
        EngineError::Template(_) | EngineError::Tools(_) => client_error(e.to_string(), "invalid_request"),
        EngineError::Busy { .. } => CallError::Failed(UpstreamError::Busy(e.to_string())),
        EngineError::Crashed(_) => CallError::Failed(UpstreamError::Crashed(e.to_string())),
        EngineError::Load { .. } | EngineError::Stopped => CallError::Failed(UpstreamError::Connect(e.to_string())),
        EngineError::Decode(_) => CallError::Failed(UpstreamError::InBand(e.to_string().into())),
    }
}

/// `tool_choice`: `auto` (the default), `none`, `required`, or `{"type": "function", "function":
/// {"name": ...}}`.
fn tool_choice(v: Option<&Value>) -> Result<ToolChoice, CallError> {
    let bad = || client_error("tool_choice must be \"auto\", \"none\", \"required\" or a function", "invalid_request");
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => ToolChoice::Function(name.to_owned()),
            None => return Err(bad()),
        },
    })
}

/// Flattens an OpenAI request into the engine's request, or says (as a 400) what the local
/// engine cannot do: images, tools other than functions, `n > 1`, JSON-schema output. Tools,
/// `tool_choice`, `parallel_tool_calls`, assistant `tool_calls` and `tool` messages are passed
/// on; whether the model's template supports tools is the engine's answer (a 400 if not). A
/// request without `max_tokens` (or `max_completion_tokens`) gets `default_max_tokens`.
fn to_generate(req: &ChatRequest, default_max_tokens: u32) -> Result<GenerateRequest, CallError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(client_error("the local engine generates one choice (n = 1)", "invalid_request"));
    }
    let mut tools = Vec::new();
    for t in req.tools.iter().flatten() {
        match (&t.function, t.kind.as_str()) {
            (Some(f), "function") => tools.push(Tool {
                name: f.name.clone(),
                description: f.description.clone(),
                parameters: f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            _ => {
                return Err(client_error(
                    format!("the local engine calls function tools only (not {:?})", t.kind),
                    "invalid_request",
                ))
            }
        }
    }
    if req.response_format.as_ref().is_some_and(|f| f.kind != "text") {
        return Err(client_error("the local engine supports only text output", "invalid_request"));
    }
    let mut messages: Vec<Message> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool | Role::Function => "tool",
        };
        let mut text = String::new();
        match m.content() {
            Some(Content::Text(t)) => text.push_str(t),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    match p {
                        ContentPart::Text { text: t, .. } => text.push_str(t),
                        _ => {
                            return Err(client_error(
                                "the local engine reads text only (no images or other content parts)",
                                "invalid_request",
                            ))
                        }
                    }
                }
            }
            None => {}
        }
        let mut message = Message::new(role, text);
        message.tool_calls = m
            .tool_calls
            .iter()
            .flatten()
            .map(|c| ToolCall {
                id: c.id.clone(),
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone(),
            })
            .collect();
        if role == "tool" {
            message.tool_call_id = m.tool_call_id.clone();
            // The function's name, for templates that print it: the message's own `name`, or
            // that of the call it answers.
            message.name = m.extra.get("name").and_then(Value::as_str).map(str::to_owned).or_else(|| {
                let id = m.tool_call_id.as_deref()?;
                messages.iter().flat_map(|p| &p.tool_calls).find(|c| c.id == id).map(|c| c.name.clone())
            });
        }
        messages.push(message);
    }
    let number = |k: &str| req.extra.get(k).and_then(Value::as_f64);
    let stop = match req.extra.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let seed = req.extra.get("seed").and_then(|v| v.as_u64().or_else(|| v.as_i64().map(|i| i as u64)));
    Ok(GenerateRequest {
        messages,
        max_tokens: Some(req.output_limit().map_or(default_max_tokens, |n| u32::try_from(n).unwrap_or(u32::MAX))),
        stop,
        sampling: Sampling {
            temperature: number("temperature").unwrap_or(1.0) as f32,
            top_p: number("top_p").unwrap_or(1.0) as f32,
            seed,
        },
        tools,
        tool_choice: tool_choice(req.extra.get("tool_choice"))?,
        parallel_tool_calls: req.extra.get("parallel_tool_calls").and_then(Value::as_bool).unwrap_or(true),
        // llama.cpp server's extension field: `"cache_prompt": false` reads the whole prompt again.
        cache_prompt: req.extra.get("cache_prompt").and_then(Value::as_bool).unwrap_or(true),
    })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// OpenAI's usage object; prompt tokens the engine's prompt cache reused are reported as
/// OpenAI reports its own cache hits, in `prompt_tokens_details.cached_tokens`.
fn usage_json(u: triage_local::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

impl LocalProvider {
    /// Starts `p`'s engine worker (it loads the model in the background; calls wait for it).
    /// Without a `worker` command in the config, the worker is this executable run with
    /// [`triage_local::WORKER_SUBCOMMAND`] (the `triage` binary's hidden subcommand).
    pub fn new(p: &Provider) -> LocalProvider {
        let Some(e) = &p.engine else {
            return LocalProvider {
                engine: Err("the provider has no model_path".to_owned()),
                timeouts: p.timeouts,
                default_max_tokens: triage_core::config::DEFAULT_LOCAL_MAX_TOKENS,
            };
        };
        let command = match &e.worker {
            Some(cmd) => match cmd.split_first() {
                Some((program, args)) => {
                    Ok(WorkerCommand { program: program.into(), args: args.iter().map(Into::into).collect() })
                }
                None => Err("the worker command is empty".to_owned()),
            },
            None => WorkerCommand::current_exe(&[triage_local::WORKER_SUBCOMMAND]),
        };
        let engine = command.map(|command| {
            let config = EngineConfig {
                model_path: e.model_path.clone().into(),
                parallel: e.parallel,
                queue: e.queue,
                context: e.context,
                threads: e.threads,
                chat_template: e.chat_template.clone(),
            };
            Arc::new(EngineProcess::start(config, command, &p.name))
        });
        if let Err(why) = &engine {
            tracing::error!(provider = %p.name, error = %why, "cannot start the local engine; the provider is unavailable");
        }
        LocalProvider { engine, timeouts: p.timeouts, default_max_tokens: e.max_tokens }
    }

    /// The engine (absent only when it could not be started at all).
    pub fn engine(&self) -> Option<&Arc<EngineProcess>> {
        self.engine.as_ref().ok()
    }

    /// Where the engine is: loading, ready, failed (with the reason) or crashed (restarting).
    pub fn state(&self) -> EngineState {
        match &self.engine {
            Ok(e) => e.state(),
            Err(why) => EngineState::Failed(why.clone()),
        }
    }

    /// True when the engine's slots and queue are all taken.
    pub fn busy(&self) -> bool {
        self.engine().is_some_and(|e| e.is_busy())
    }

    /// "Reachable" unless the model failed to load or the worker is down after a crash.
    ///
    /// Errors: [`UpstreamError::Connect`] with the reason.
    pub fn probe(&self) -> Result<StatusCode, UpstreamError> {
        match self.state() {
            EngineState::Loading | EngineState::Ready => Ok(StatusCode::OK),
            s => Err(UpstreamError::Connect(s.describe())),
        }
    }

    /// Runs an OpenAI request (`body`) on the engine. Waits for a slot and the prompt's prefill
    /// (up to the first-byte timeout), then returns the whole answer or a stream.
    ///
    /// Errors: a 400 status for what the engine cannot do or a prompt longer than its context;
    /// [`UpstreamError::Busy`] when the queue is full; timeouts as for HTTP providers.
    pub async fn call(&self, body: &[u8], stream: bool) -> Result<Reply, CallError> {
        let engine = self.engine.as_ref().map_err(|e| CallError::Failed(UpstreamError::Connect(e.clone())))?;
        let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
            client_error(format!("the request is not a chat completion request: {e}"), "invalid_request")
        })?;
        let mut generation = engine.generate(to_generate(&req, self.default_max_tokens)?).map_err(engine_failure)?;
        let first_byte = self.timeouts.first_byte;
        let prompt_tokens = match tokio::time::timeout(first_byte, generation.next()).await {
            Err(_) => return Err(CallError::Failed(UpstreamError::Timeout(TimeoutKind::FirstByte(first_byte)))),
            Ok(Some(Event::Started { prompt_tokens })) => prompt_tokens,
            Ok(Some(Event::Failed(e))) => return Err(engine_failure(e)),
            Ok(_) => return Err(CallError::Failed(UpstreamError::Truncated)),
        };
        let id = format!("chatcmpl-local-{}", uuid::Uuid::new_v4().simple());
        if stream {
            let chunks = LocalChunks { generation, id, model: req.model, created: now_secs(), prompt_tokens, state: 0 };
            return Ok(Reply::Stream(ChunkStream::local(chunks, self.timeouts.idle)));
        }
        let request = self.timeouts.request;
        let out = match tokio::time::timeout(request, generation.collect()).await {
            Err(_) => return Err(CallError::Failed(UpstreamError::Timeout(TimeoutKind::Request(request)))),
            Ok(r) => r.map_err(engine_failure)?,
        };
        let mut message = json!({"role": "assistant", "content": out.text});
        if !out.tool_calls.is_empty() {
            if out.text.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = out
                .tool_calls
                .iter()
                .map(
                    |c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}),
                )
                .collect();
        }
        let completion = json!({
            "id": id,
            "object": "chat.completion",
            "created": now_secs(),
            "model": req.model,
            "choices": [{
                "index": 0,
                "message": message,
                "finish_reason": out.finish.as_str(),
            }],
            "usage": usage_json(out.usage),
        });
        serde_json::from_value::<ChatCompletion>(completion)
            .map(|c| Reply::Complete(Completion::OpenAi(c)))
            .map_err(|e| CallError::Failed(UpstreamError::Protocol(e.to_string())))
    }
}

/// A generation's events as OpenAI chunks: a role chunk, content chunks, one chunk per tool call
/// (index, id, type, name and the whole arguments text), the finish chunk, a usage-only chunk
/// (as with `stream_options.include_usage`), then the end.
pub struct LocalChunks {
    generation: Generation,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u32,
    /// 0 before the role chunk, 1 while generating, 2 after the end.
    state: u8,
}

impl LocalChunks {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Result<StreamItem, UpstreamError> {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        serde_json::from_value::<ChatChunk>(c)
            .map(StreamItem::Chunk)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))
    }

    /// Waits for the next event and appends its chunks to `out`; `Ok(false)` at the end.
    ///
    /// Errors: the engine failed mid-stream.
    pub(super) async fn next_into(&mut self, out: &mut Vec<StreamItem>) -> Result<bool, UpstreamError> {
        match self.state {
            0 => {
                self.state = 1;
                out.push(self.chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]), None)?);
                return Ok(true);
            }
            2 => return Ok(false),
            _ => {}
        }
        match self.generation.next().await {
            Some(Event::Text(t)) => {
                out.push(self.chunk(json!([{"index": 0, "delta": {"content": t}}]), None)?);
                Ok(true)
            }
            Some(Event::ToolCalls(calls)) => {
                for (index, c) in calls.iter().enumerate() {
                    let call = json!({
                        "index": index,
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    });
                    out.push(self.chunk(json!([{"index": 0, "delta": {"tool_calls": [call]}}]), None)?);
                }
                Ok(true)
            }
            Some(Event::Started { .. }) => Ok(true),
            Some(Event::Finished { reason, usage }) => {
                self.state = 2;
                debug_assert_eq!(usage.prompt_tokens, self.prompt_tokens);
                out.push(self.chunk(json!([{"index": 0, "delta": {}, "finish_reason": reason.as_str()}]), None)?);
                out.push(self.chunk(json!([]), Some(usage_json(usage)))?);
                out.push(StreamItem::Done);
                Ok(true)
            }
            Some(Event::Failed(e)) => {
                self.state = 2;
                Err(UpstreamError::InBand(e.to_string().into()))
            }
            None => {
                self.state = 2;
                Err(UpstreamError::Truncated)
            }
        }
    }
}
