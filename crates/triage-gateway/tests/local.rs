//! Provider `kind = "local"` end to end: the real server in front of the real llama.cpp engine
//! running a tiny random-weight GGUF that the test writes (no download, no network). Answers are
//! checked against the engine run directly on the same file: same text, same token counts.
//!
//! The server runs in this test process; its engine runs in a worker process, which is this test
//! binary started again with only [`engine_worker`] selected (the `worker` line of the config).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use common::*;
use serde_json::json;
use triage_local::{Engine, EngineConfig, EngineError, GenerateRequest, Message, Output, Sampling, Tool, ToolChoice};
use triage_testkit::gguf::TinyLlama;

/// POSTs an Anthropic Messages request.
async fn post_messages(gw: &Gateway, body: &serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// The engine worker's entry point: the gateway starts this test binary with only this test
/// selected and the worker's environment set; run as a plain test it returns at once.
#[test]
#[ignore = "the engine worker's entry point, started by the gateway under test"]
fn engine_worker() {
    triage_local::run_test_worker_if_asked();
}

/// The `worker` line of a local provider: this test binary, running [`engine_worker`].
fn worker_line() -> String {
    let exe = std::env::current_exe().unwrap().display().to_string();
    let args = ["engine_worker", "--exact", "--ignored", "--nocapture", "--test-threads", "1", "-q"];
    let quoted: Vec<String> = std::iter::once(exe.as_str()).chain(args).map(|a| format!("{a:?}")).collect();
    format!("worker = [{}]", quoted.join(", "))
}

fn model_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| TinyLlama::default().write_temp().expect("write the tiny GGUF")).clone()
}

/// A local provider (1 slot, no queue unless `queue`) serving `tiny`, with `extra` appended.
fn config(queue: u32, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]

[server]
shutdown_grace_secs = 5

[providers.engine]
kind = "local"
model_path = "{}"
parallel = 1
queue = {queue}
context = 512
threads = 1
{worker}

[[models]]
id = "tiny"
provider = "engine"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 512
{extra}
"#,
        model_file().display(),
        worker = worker_line(),
    )
}

const QUESTION: &str = "What is the capital of France?";

/// What the engine itself answers to QUESTION, greedily, in `max_tokens` tokens.
async fn direct(max_tokens: u32) -> Output {
    direct_with(Sampling { temperature: 0.0, top_p: 1.0, seed: None }, max_tokens).await
}

/// What the engine itself answers to QUESTION with `sampling`.
async fn direct_with(sampling: Sampling, max_tokens: u32) -> Output {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let e = ENGINE.get_or_init(|| {
        Engine::load(EngineConfig {
            model_path: model_file(),
            parallel: 1,
            queue: 4,
            context: 512,
            threads: 1,
            chat_template: None,
        })
        .unwrap()
    });
    let req = GenerateRequest {
        messages: vec![Message::new("user", QUESTION)],
        max_tokens: Some(max_tokens),
        stop: vec![],
        sampling,
        ..GenerateRequest::default()
    };
    e.generate(req).unwrap().collect().await.unwrap()
}

fn request(stream: bool, max_tokens: u32) -> String {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

#[tokio::test]
async fn a_chat_completion_is_served_by_the_local_engine() {
    let expected = direct(12).await;
    let gw = start(&config(0, "")).await;
    let resp = post(&gw, &request(false, 12)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "tiny");
    assert_eq!(resp.headers()["x-triage-attempts"], "tiny@engine:200");
    let body = json_body(resp).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected.text.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let p = expected.usage.prompt_tokens;
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": p, "completion_tokens": 12, "total_tokens": p + 12, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    // Greedy: the same request, the same answer.
    let again = json_body(post(&gw, &request(false, 12)).await).await;
    assert_eq!(again["choices"], body["choices"]);
}

#[tokio::test]
async fn sampling_fields_and_stop_reach_the_engine() {
    let gw = start(&config(0, "")).await;
    let ask = |extra: serde_json::Value| {
        let mut req =
            json!({"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "max_completion_tokens": 24});
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let gw = &gw;
        async move {
            let resp = post(gw, &req.to_string()).await;
            assert_eq!(resp.status(), 200);
            json_body(resp).await
        }
    };
    // temperature, top_p and seed: the engine's own answer with the same sampling, every time.
    let sampled = direct_with(Sampling { temperature: 0.8, top_p: 0.9, seed: Some(7) }, 24).await;
    let a = ask(json!({"temperature": 0.8, "top_p": 0.9, "seed": 7})).await;
    assert_eq!(a["choices"][0]["message"]["content"], sampled.text.as_str());
    let b = ask(json!({"temperature": 0.8, "top_p": 0.9, "seed": 7})).await;
    assert_eq!(a["choices"], b["choices"]);
    // stop, as a string: the text ends right before its first occurrence.
    let full = direct(24).await.text;
    let chars: Vec<usize> = full.char_indices().map(|(i, _)| i).collect();
    let stop = &full[chars[chars.len() / 2]..chars[chars.len() / 2 + 2]];
    let v = ask(json!({"temperature": 0, "stop": stop})).await;
    assert_eq!(v["choices"][0]["message"]["content"], &full[..full.find(stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn what_the_engine_cannot_do_yet_is_a_400_saying_so() {
    let gw = start(&config(0, "")).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2});
    let resp = post(&gw, &req.to_string()).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["message"], "the local engine generates one choice (n = 1)");
}

#[tokio::test]
async fn a_streamed_completion_follows_the_chunk_grammar() {
    let expected = direct(10).await;
    let gw = start(&config(0, "")).await;
    let resp = post(&gw, &request(true, 10)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks(&data);
    assert!(chunks.len() >= 4, "{chunks:?}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "tiny");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(content(&chunks), expected.text);
    // The finish chunk, then the usage-only chunk the client asked for.
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    let p = expected.usage.prompt_tokens;
    assert_eq!(
        chunks[n - 1]["usage"],
        json!({"prompt_tokens": p, "completion_tokens": 10, "total_tokens": p + 10, "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

/// The same prompt again is read from the engine's prompt cache: the answer is the same, and the
/// reused tokens are reported as OpenAI and Anthropic report cache hits.
#[tokio::test]
async fn a_repeated_prompt_is_served_from_the_prompt_cache_and_reported_as_cached() {
    let expected = direct(6).await;
    let gw = start(&config(0, "")).await;
    let first = json_body(post(&gw, &request(false, 6)).await).await;
    let again = json_body(post(&gw, &request(false, 6)).await).await;
    let p = u64::from(expected.usage.prompt_tokens);
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{first}");
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], p - 1, "{again}");
    assert_eq!(again["usage"]["prompt_tokens"], p);
    assert_eq!(again["choices"][0]["message"]["content"], expected.text.as_str());
    // llama.cpp server's `cache_prompt: false` reads the whole prompt again.
    let mut fresh: serde_json::Value = serde_json::from_str(&request(false, 6)).unwrap();
    fresh["cache_prompt"] = json!(false);
    let fresh = json_body(post(&gw, &fresh.to_string()).await).await;
    assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{fresh}");
    assert_eq!(fresh["choices"][0]["message"]["content"], expected.text.as_str());
    // Anthropic counts cache reads apart from the input tokens.
    let body = json!({"model": "tiny", "max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]});
    let resp = post_messages(&gw, &body).await;
    let v = json_body(resp).await;
    assert_eq!(v["content"][0]["text"], expected.text.as_str());
    assert_eq!(
        (v["usage"]["input_tokens"].as_u64(), v["usage"]["cache_read_input_tokens"].as_u64()),
        (Some(1), Some(p - 1)),
        "{v}"
    );
}

#[tokio::test]
async fn an_anthropic_client_is_served_by_the_local_engine() {
    let expected = direct(8).await;
    let gw = start(&config(0, "")).await;
    let body = json!({"model": "tiny", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]});
    let resp = post_messages(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], expected.text.as_str());
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["input_tokens"], expected.usage.prompt_tokens);
    assert_eq!(v["usage"]["output_tokens"], 8);
}

#[tokio::test]
async fn a_missing_model_file_leaves_the_provider_failed_not_the_gateway() {
    let text = config(0, "").replace(&model_file().display().to_string(), "/nonexistent/tiny.gguf");
    let (gw, state) = start_with_state(&text).await;
    let engine = state.providers.iter().find_map(|p| p.local_engine()).expect("a local engine").clone();
    let err = engine.ready().await.unwrap_err();
    assert_eq!(err.to_string(), "cannot load /nonexistent/tiny.gguf: no such file");
    let resp = post(&gw, &request(false, 4)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-triage-attempts"], "tiny@engine:failed");
    assert_eq!(json_body(resp).await["error"]["code"], "provider_unavailable");
    let health = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    let tiny = &health["deployments"][0];
    assert_eq!(tiny["reason"], "failed: no such file");
    assert_eq!(tiny["engine"]["state"], "failed: no such file");
    assert_eq!(tiny["engine"]["crashes"], 0);
}

/// The server on a state the test keeps a handle on (to fill the engine's slot itself).
async fn start_with_state(toml: &str) -> (Gateway, Arc<triage_gateway::AppState>) {
    let catalog = triage_core::config::parse(toml, "test.toml").unwrap();
    let state = Arc::new(triage_gateway::AppState::new(catalog).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = triage_gateway::http::app(state.clone());
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    (Gateway::running(addr, task), state)
}

#[tokio::test]
async fn a_busy_engine_sends_plain_work_to_the_fallback_and_sensitive_work_gets_503() {
    let cloud = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let extra = format!(
        "fallback = [\"cloud-model\"]\n\n[providers.cloud]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[[models]]\nid = \"cloud-model\"\nprovider = \"cloud\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 2.0 }}\ncontext_window = 100000\n\n[spend]\ndatabase = \"\"\n\n[router]\nscorer = \"cheapest\"\n",
        cloud.url()
    );
    let (gw, state) = start_with_state(&config(0, &extra)).await;
    let engine = state.providers.iter().find_map(|p| p.local_engine()).expect("loaded").clone();

    // Hold the only slot: a long generation nobody reads.
    let held = engine
        .generate(GenerateRequest {
            messages: vec![Message::new("user", "Hold the slot.")],
            max_tokens: Some(400),
            stop: vec![],
            sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
            ..GenerateRequest::default()
        })
        .unwrap();
    assert!(engine.is_busy());

    let resp = post(&gw, &request(false, 4)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "cloud-model");
    assert_eq!(resp.headers()["x-triage-attempts"], "tiny@engine:busy, cloud-model@cloud:200");

    let health = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    let tiny = health["deployments"].as_array().unwrap().iter().find(|d| d["model"] == "tiny");
    assert_eq!(tiny.unwrap()["reason"], "busy");

    // Sensitive content may not leave the machine: with the engine full it gets 503.
    let secret = json!({"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Mail dana.quill@corp-mail.net the summary."}]}).to_string();
    let resp = post(&gw, &secret).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(cloud.calls(), 1, "the sensitive request never reached the cloud");

    // Once the slot is free, the same sensitive request is served locally.
    drop(held);
    engine.until_idle().await;
    let resp = post(&gw, &secret).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "tiny");
    assert_eq!(cloud.calls(), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_the_slot() {
    let (gw, state) = start_with_state(&config(0, "\n[spend]\ndatabase = \"\"\n")).await;
    let engine = state.providers.iter().find_map(|p| p.local_engine()).expect("loaded").clone();
    let mut resp = post(&gw, &request(true, 400)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    engine.until_idle().await;
    let s = engine.stats();
    assert_eq!((s.in_flight, s.finished + s.cancelled), (0, 1));
    // The slot serves the next request.
    let resp = post(&gw, &request(false, 4)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "tiny");
}

/// `/metrics` reports the engine's own counters: places, requests, and the tokens and seconds of
/// prompt processing and generation (a provider name of its own: the recorder is process-wide).
#[tokio::test]
async fn metrics_report_the_engines_tokens_and_places() {
    let text = config(0, "\n[spend]\ndatabase = \"\"\n")
        .replace("[providers.engine]", "[providers.metered]")
        .replace("provider = \"engine\"", "provider = \"metered\"");
    let (gw, _state) = start_with_state(&text).await;
    let resp = post(&gw, &request(false, 5)).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("triage_local_capacity{provider=\"metered\"}"), 1.0);
    assert_eq!(value("triage_local_in_flight{provider=\"metered\"}"), 0.0);
    assert_eq!(value("triage_local_prompt_tokens_total{provider=\"metered\"}"), prompt as f64);
    assert_eq!(value("triage_local_generated_tokens_total{provider=\"metered\"}"), 5.0);
    assert_eq!(value("triage_local_requests_total{provider=\"metered\",outcome=\"busy\"}"), 0.0);
    assert!(value("triage_local_prompt_seconds_total{provider=\"metered\"}") > 0.0);
    assert!(value("triage_local_generation_seconds_total{provider=\"metered\"}") > 0.0);
}

// ---- Tool calling through the gateway, on the tiny model with a ChatML + tools template. ----

fn tools_model_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        TinyLlama { chat_template: triage_testkit::gguf::CHATML_TOOLS_TEMPLATE, ..TinyLlama::default() }
            .write_temp()
            .expect("write the tiny GGUF")
    })
    .clone()
}

/// The tiny model declares the `tools` capability, or the router would not send it tool requests.
const TOOLS_CAPABILITY: &str = "capabilities = [\"tools\"]";

/// The tools model with a 2048-token context: the tools in the prompt take ~300 tokens.
fn tools_config() -> String {
    config(0, TOOLS_CAPABILITY)
        .replace(&model_file().display().to_string(), &tools_model_file().display().to_string())
        .replace("context = 512", "context = 2048")
        .replace("context_window = 512", "context_window = 2048")
}

fn weather_tool() -> serde_json::Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"],
        },
    }})
}

const TOOL_QUESTION: &str = "What is the weather in Oslo?";

/// What the engine itself answers with `tool_choice: required`: the call and the token counts.
async fn direct_tool_call() -> Output {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    let e = ENGINE.get_or_init(|| {
        Engine::load(EngineConfig {
            model_path: tools_model_file(),
            parallel: 1,
            queue: 4,
            context: 2048,
            threads: 1,
            chat_template: None,
        })
        .unwrap()
    });
    let f = &weather_tool()["function"];
    let req = GenerateRequest {
        messages: vec![Message::new("user", TOOL_QUESTION)],
        max_tokens: Some(400),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
        tools: vec![Tool {
            name: "get_weather".into(),
            description: Some("The weather in a city.".into()),
            parameters: f["parameters"].clone(),
        }],
        tool_choice: ToolChoice::Required,
        ..GenerateRequest::default()
    };
    e.generate(req).unwrap().collect().await.unwrap()
}

fn tool_request(stream: bool) -> String {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": TOOL_QUESTION}],
        "tools": [weather_tool()],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 400,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

fn assert_weather_arguments(arguments: &str) {
    let args: serde_json::Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{arguments}: {e}"));
    assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 12), "{args}");
    assert!(args["days"].as_i64().is_some_and(|d| (1..=7).contains(&d)), "{args}");
}

#[tokio::test]
async fn a_required_tool_call_comes_back_as_openai_tool_calls() {
    let expected = direct_tool_call().await;
    assert_eq!(expected.tool_calls.len(), 1, "{expected:?}");
    let gw = start(&tools_config()).await;
    let resp = post(&gw, &tool_request(false)).await;
    assert_eq!(resp.status(), 200);
    let body = json_body(resp).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], serde_json::Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"), "{calls:?}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(arguments, expected.tool_calls[0].arguments);
    assert_weather_arguments(arguments);
    let (p, c) = (expected.usage.prompt_tokens, expected.usage.completion_tokens);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c, "prompt_tokens_details": {"cached_tokens": 0}})
    );

    // The next turn: the call and its result go back through the template (a longer prompt
    // than the first turn's, tools shown again).
    let next = json!({
        "model": "tiny",
        "messages": [
            {"role": "user", "content": TOOL_QUESTION},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Sunny, 21 C"},
        ],
        "tools": [weather_tool()],
        "temperature": 0,
        "max_tokens": 4,
    });
    let resp = post(&gw, &next.to_string()).await;
    assert_eq!(resp.status(), 200);
    let body = json_body(resp).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > u64::from(p), "{body}");
}

#[tokio::test]
async fn a_streamed_tool_call_follows_the_chunk_grammar() {
    let expected = direct_tool_call().await;
    let gw = start(&tools_config()).await;
    let resp = post(&gw, &tool_request(true)).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks(&data);
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // No content beyond the role chunk's empty string: the call text is never streamed.
    assert_eq!(content(&chunks), "");
    let deltas: Vec<&serde_json::Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
    assert_eq!(deltas.len(), 1, "{chunks:?}");
    assert_eq!(deltas[0]["index"], 0);
    assert!(deltas[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(deltas[0]["type"], "function");
    assert_eq!(deltas[0]["function"]["name"], "get_weather");
    assert_eq!(deltas[0]["function"]["arguments"], expected.tool_calls[0].arguments.as_str());
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    let (p, c) = (expected.usage.prompt_tokens, expected.usage.completion_tokens);
    assert_eq!(
        chunks[n - 1]["usage"],
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c, "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

#[tokio::test]
async fn an_anthropic_client_gets_a_tool_use_block() {
    let expected = direct_tool_call().await;
    let gw = start(&tools_config()).await;
    let f = &weather_tool()["function"];
    let body = json!({
        "model": "tiny",
        "max_tokens": 400,
        "temperature": 0,
        "messages": [{"role": "user", "content": TOOL_QUESTION}],
        "tools": [{"name": "get_weather", "description": f["description"], "input_schema": f["parameters"]}],
        "tool_choice": {"type": "any"},
    });
    let resp = post_messages(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["stop_reason"], "tool_use");
    let block = v["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").expect("a tool_use block");
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], serde_json::from_str::<serde_json::Value>(&expected.tool_calls[0].arguments).unwrap());
    assert_eq!(v["usage"]["input_tokens"], expected.usage.prompt_tokens);
    assert_eq!(v["usage"]["output_tokens"], expected.usage.completion_tokens);
}

#[tokio::test]
async fn tools_for_a_template_without_tool_support_are_a_400_saying_why() {
    let gw = start(&config(0, TOOLS_CAPABILITY)).await;
    let resp = post(&gw, &tool_request(false)).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(
        v["error"]["message"],
        "tools: this model cannot call tools: its chat template does not show tools to the model"
    );
}

// ---- A crash of the engine's worker process, under cloud and local traffic. ----

/// A prompt the tiny model answers at full length (`tokens` tokens, greedy, in a context of
/// `context`), found by running the engine in-process.
async fn long_prompt(context: u32, tokens: u32) -> String {
    let e = Engine::load(EngineConfig {
        model_path: model_file(),
        parallel: 1,
        queue: 0,
        context,
        threads: 1,
        chat_template: None,
    })
    .unwrap();
    for i in 0..40 {
        let prompt = format!("Tell me a long story, number {i}.");
        let req = GenerateRequest {
            messages: vec![Message::new("user", &prompt)],
            max_tokens: Some(tokens),
            sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
            ..GenerateRequest::default()
        };
        if e.generate(req).unwrap().collect().await.unwrap().usage.completion_tokens == tokens {
            return prompt;
        }
    }
    panic!("no prompt answered at full length");
}

/// Polls `cond` every 5 ms for at most 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_engine_leaves_cloud_traffic_untouched_and_comes_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cloud = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let extra = format!(
        "fallback = [\"cloud-model\"]\n\n[providers.cloud]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[[models]]\nid = \"cloud-model\"\nprovider = \"cloud\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 2.0 }}\ncontext_window = 100000\n\n[spend]\ndatabase = \"\"\n\n[router]\nscorer = \"cheapest\"\n",
        cloud.url()
    );
    let text = config(2, &extra)
        .replace("parallel = 1", "parallel = 2")
        .replace("context = 512", "context = 2048")
        .replace("context_window = 512", "context_window = 2048");
    let (gw, state) = start_with_state(&text).await;
    let engine = state.providers.iter().find_map(|p| p.local_engine()).expect("a local engine").clone();
    engine.ready().await.unwrap();
    let prompt = long_prompt(2048, 1500).await;
    let gw = Arc::new(gw);

    // Cloud traffic through the crash and the restart: two loops, at most 3,000 requests each.
    let stop = Arc::new(AtomicBool::new(false));
    let cloud_loop = |gw: Arc<Gateway>, stop: Arc<AtomicBool>| {
        tokio::spawn(async move {
            let body = json!({"model": "cloud-model", "messages": [{"role": "user", "content": "hi"}]}).to_string();
            let mut seen = Vec::new();
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = post(&gw, &body).await;
                let model = r.headers().get("x-triage-model").map(|v| v.to_str().unwrap().to_owned());
                seen.push((r.status().as_u16(), model));
            }
            seen
        })
    };
    let loops = [cloud_loop(gw.clone(), stop.clone()), cloud_loop(gw.clone(), stop.clone())];

    // Slot 1: a generation nobody reads (paused by flow control).
    let long = |max| GenerateRequest {
        messages: vec![Message::new("user", &prompt)],
        max_tokens: Some(max),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
        ..GenerateRequest::default()
    };
    let held = engine.generate(long(1500)).unwrap();
    // Slot 2: a stream whose first chunk the client has.
    let body = json!({"model": "tiny", "stream": true, "temperature": 0, "max_tokens": 1500,
        "messages": [{"role": "user", "content": prompt}]});
    let mut stream = post(&gw, &body.to_string()).await;
    assert_eq!(stream.status(), 200);
    let mut streamed = String::from_utf8(stream.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    // Waiting in the queue: plain work (which may fall back) and sensitive work (which may not).
    let plain = tokio::spawn({
        let gw = gw.clone();
        async move { post(&gw, &request(false, 4)).await }
    });
    eventually("the plain request queued", || engine.in_flight() == 3).await;
    let secret = json!({"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Mail dana.quill@corp-mail.net the summary."}]}).to_string();
    let sensitive = tokio::spawn({
        let gw = gw.clone();
        async move { post(&gw, &secret).await }
    });
    eventually("the sensitive request queued", || engine.in_flight() == 4).await;

    engine.crash_for_test();

    // Everything in flight on the engine fails cleanly.
    let Err(EngineError::Crashed(how)) = held.collect().await else { panic!("the held generation did not fail") };
    assert!(how.contains("killed by signal 6 (SIGABRT)"), "{how}");
    while let Some(c) = stream.chunk().await.unwrap() {
        streamed.push_str(std::str::from_utf8(&c).unwrap());
    }
    let data = sse_data(&streamed);
    assert!(!data.iter().any(|d| d == "[DONE]"), "a broken stream ends without [DONE]");
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].as_str().unwrap().contains("the local engine crashed"), "{last}");
    let plain = plain.await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["x-triage-model"], "cloud-model");
    assert_eq!(plain.headers()["x-triage-attempts"], "tiny@engine:crashed, cloud-model@cloud:200");
    let sensitive = sensitive.await.unwrap();
    assert_eq!(sensitive.status(), 503);
    assert!(json_body(sensitive).await["error"]["message"].as_str().unwrap().contains("the local engine crashed"));
    assert!(
        !cloud.requests().iter().any(|r| r.json().to_string().contains("corp-mail.net")),
        "the sensitive request never reached the cloud"
    );

    // The crash shows in the health report and the metrics; the engine comes back.
    let report = || async {
        let h = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
        h["deployments"].as_array().unwrap().iter().find(|d| d["model"] == "tiny").unwrap().clone()
    };
    let tiny = report().await;
    assert_eq!(tiny["engine"]["crashes"], 1);
    assert!(tiny["engine"]["last_crash"].as_str().unwrap().contains("SIGABRT"), "{tiny}");
    let state_now = tiny["engine"]["state"].as_str().unwrap().to_owned();
    assert!(state_now.starts_with("crashed: ") || state_now == "loading" || state_now == "ready", "{state_now}");
    tokio::time::timeout(std::time::Duration::from_secs(30), engine.ready()).await.unwrap().unwrap();
    let tiny = report().await;
    assert_eq!(
        (&tiny["engine"]["state"], &tiny["engine"]["restarts"], &tiny["available"]),
        (&json!("ready"), &json!(1), &json!(true))
    );
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        "triage_local_crashes_total{provider=\"engine\"} 1",
        "triage_local_restarts_total{provider=\"engine\"} 1",
        "triage_local_up{provider=\"engine\"} 1",
        "triage_local_requests_total{provider=\"engine\",outcome=\"crashed\"} 4",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} in\n{metrics}");
    }
    let resp = post(&gw, &request(false, 4)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "tiny");

    // The cloud traffic did not notice.
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for l in loops {
        for (status, model) in l.await.unwrap() {
            assert_eq!((status, model.as_deref()), (200, Some("cloud-model")));
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} cloud requests ran through the crash");
}

// ---- Defaults and clear errors. ----

#[tokio::test]
async fn a_request_without_max_tokens_gets_the_providers_default() {
    let expected = direct(7).await;
    let gw = start(&config(0, "").replace("threads = 1\n", "threads = 1\nmax_tokens = 7\n")).await;
    let body = json!({"model": "tiny", "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]});
    let resp = post(&gw, &body.to_string()).await;
    assert_eq!(resp.status(), 200);
    let v = json_body(resp).await;
    assert_eq!(v["choices"][0]["message"]["content"], expected.text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    // A request's own limit still wins.
    let v = json_body(post(&gw, &request(false, 3)).await).await;
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

/// The tiny model (no tools, 512 tokens) and, in the same tier, a tools-capable model with a
/// large context on an Ollama-like provider that is not running.
fn with_ollama_down() -> String {
    config(
        0,
        "\n[providers.ollama]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nlocal = true\n\n[[models]]\nid = \"qwen-ollama\"\nprovider = \"ollama\"\ntier = \"local\"\nprice = { input = 0.0, output = 0.0 }\ncontext_window = 32768\ncapabilities = [\"tools\"]\n\n[spend]\ndatabase = \"\"\n",
    )
}

#[tokio::test]
async fn what_the_local_tier_cannot_serve_is_a_400_saying_why_not_a_503_naming_another_provider() {
    let (gw, state) = start_with_state(&with_ollama_down()).await;
    triage_gateway::health::probe_all(&state).await;
    let tools = json!({"model": "local", "max_tokens": 4, "tools": [weather_tool()],
        "messages": [{"role": "user", "content": QUESTION}]});
    let resp = post(&gw, &tools.to_string()).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(
        v["error"]["message"],
        "no model can serve this request: the request has tools, and model tiny has no `tools` capability (the models that could serve it are unavailable now: providers ollama)"
    );
    let long = "lorem ipsum dolor sit amet ".repeat(200);
    let body = json!({"model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": long}]});
    let resp = post(&gw, &body.to_string()).await;
    assert_eq!(resp.status(), 400);
    let m = json_body(resp).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        m.contains("exceed the context window of model tiny (512 tokens)") && m.ends_with("providers ollama)"),
        "{m}"
    );
    // What the tiny model can serve, it serves.
    let resp = post(&gw, &request(false, 4).replace("\"tiny\"", "\"local\"")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "tiny");
}

#[tokio::test]
async fn a_local_engines_health_is_its_own_state_never_unreachable() {
    let (gw, state) = start_with_state(&config(0, "\n[spend]\ndatabase = \"\"\n")).await;
    let engine = state.providers.iter().find_map(|p| p.local_engine()).expect("a local engine").clone();
    engine.ready().await.unwrap();
    // A probe taken while the worker was down (after a crash) is stale once it is back.
    state.health[0].record(triage_gateway::state::Reachability::Down, 0);
    let health = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    let tiny = &health["deployments"][0];
    assert_eq!(
        (&tiny["available"], &tiny["reason"], &tiny["engine"]["state"]),
        (&json!(true), &json!(null), &json!("ready"))
    );
    let resp = post(&gw, &request(false, 2)).await;
    assert_eq!(resp.status(), 200);
}
