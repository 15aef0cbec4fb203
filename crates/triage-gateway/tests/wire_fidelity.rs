//! Wire fidelity by class (issue 19, item 4), through the real server against scripted upstreams
//! speaking each server's wire format: context-window errors in every dialect Triage knows go to
//! `context_window_fallback` and never count against the circuit breaker; errors reach each
//! client in its own envelope, with the upstream's error type kept when both speak the same
//! format (an overloaded error mid-stream stays an overloaded error); streamed tool calls whose
//! chunks carry no `index` are told apart by id. Each test is named after its class.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const REQ: &str = r#"{"model":"primary-model","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_REQ: &str = r#"{"model":"primary-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// `primary-model` on a `kind` upstream at `primary` (with `extra` in its entry), `backup-model`
/// on an OpenAI-compatible one at `backup`; no retries; a breaker that opens on the first
/// failure, so any error that counted against it would be seen at once.
fn config(kind: &str, primary: &str, backup: &str, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
[retry]
num_retries = 0
[breaker]
consecutive_failures = 1
cooldown_ms = 60000
[providers.primary]
kind = "{kind}"
base_url = "{primary}"
api_key_env = "TRIAGE_TEST_WIRE_KEY"
idle_timeout_ms = 2000
[providers.backup]
kind = "openai"
base_url = "{backup}"
[[models]]
id = "primary-model"
provider = "primary"
upstream_model = "primary-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 8192
capabilities = ["tools"]
{extra}
[[models]]
id = "backup-model"
provider = "backup"
upstream_model = "backup-upstream"
tier = "frontier"
price = {{ input = 2.0, output = 6.0 }}
context_window = 1000000
capabilities = ["tools"]
"#
    )
}

async fn gateway(kind: &str, primary: &FakeUpstream, backup: &FakeUpstream, extra: &str) -> Gateway {
    std::env::set_var("TRIAGE_TEST_WIRE_KEY", "sk-test-PLACEHOLDER");
    start(&config(kind, &primary.url(), &backup.url(), extra)).await
}

async fn post_to(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    client().post(gw.url(path)).header("content-type", "application/json").body(body.to_string()).send().await.unwrap()
}

fn backup_completion() -> String {
    COMPLETION.replace("\"hello\"", "\"from backup\"").replace("gpt-test-upstream", "backup-upstream")
}

fn sse_event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn anthropic_start() -> String {
    sse_event(
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"primary-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}),
    ) + &sse_event(
        "content_block_start",
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
    )
}

/// `(event name, data)` of an Anthropic-format SSE body.
fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap_or_else(|| panic!("event without data: {e:?}"));
            let name = name.strip_prefix("event: ").unwrap_or_else(|| panic!("no event line: {e:?}"));
            let data = data.strip_prefix("data: ").unwrap_or_else(|| panic!("no data line: {e:?}"));
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// `failures` of the primary deployment in `/v1/health/deployments`, and its breaker state.
async fn primary_health(gw: &Gateway) -> (u64, String) {
    let health = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    let d = health["deployments"].as_array().unwrap().iter().find(|d| d["model"] == "primary-model").unwrap();
    (d["failures"].as_u64().unwrap(), d["breaker"].as_str().unwrap().to_owned())
}

/// How each server says the prompt is too long: (dialect, provider kind, status, body). The
/// wordings are those the servers send (placeholders for the numbers).
fn context_window_dialects() -> Vec<(&'static str, &'static str, u16, &'static str)> {
    vec![
        (
            "OpenAI",
            "openai",
            400,
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        ),
        (
            "Anthropic, prompt",
            "anthropic",
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
        ),
        (
            "Anthropic, prompt and max_tokens",
            "anthropic",
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 195000 + 32000 > 200000, decrease input length or `max_tokens` and try again"}}"#,
        ),
        (
            "vLLM",
            "openai",
            400,
            r#"{"object":"error","message":"The decoder prompt (length 9000) is longer than the maximum model length of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens.","type":"BadRequestError","param":null,"code":400}"#,
        ),
        (
            "SGLang",
            "openai",
            400,
            r#"{"object":"error","message":"The input (9000 tokens) is longer than the model's context length (8192 tokens).","type":"BadRequestError","param":null,"code":400}"#,
        ),
        (
            "llama.cpp server",
            "openai",
            400,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":8192}}"#,
        ),
        (
            "llama.cpp server, older builds (500)",
            "openai",
            500,
            r#"{"error":{"code":500,"message":"input is too large to process. increase the physical batch size","type":"server_error"}}"#,
        ),
        ("Ollama (500)", "openai", 500, r#"{"error":"the input length exceeds the context length"}"#),
        (
            "TGI (422)",
            "openai",
            422,
            r#"{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8192. Given: 9000 `inputs` tokens and 512 `max_new_tokens`","error_type":"validation"}"#,
        ),
        (
            "Mistral",
            "openai",
            400,
            r#"{"object":"error","message":"Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length","type":"invalid_request_error","param":null,"code":null}"#,
        ),
        ("Bedrock", "openai", 400, r#"{"message":"Input is too long for requested model."}"#),
        (
            "Vertex AI / Gemini",
            "openai",
            400,
            r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
        ),
    ]
}

/// Class: a context-window error in any dialect goes to `context_window_fallback` at once (no
/// retry) and never counts against the breaker (which here opens on the first failure).
#[tokio::test]
async fn context_window_errors_of_every_dialect_use_the_context_window_fallback() {
    for (dialect, kind, status, body) in context_window_dialects() {
        let p = FakeUpstream::replay(Reply::json(status, body)).await;
        let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
        let gw = gateway(kind, &p, &b, r#"context_window_fallback = ["backup-model"]"#).await;
        let path = if kind == "anthropic" { "/v1/messages" } else { "/v1/chat/completions" };
        let req = json!({"model": "primary-model", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
        for round in 0..2 {
            let resp = post_to(&gw, path, &req).await;
            assert_eq!(resp.status(), 200, "{dialect}, round {round}");
            assert_eq!(
                resp.headers()["x-triage-attempts"],
                format!("primary-model@primary:{status}, backup-model@backup:200").as_str(),
                "{dialect}, round {round}: the primary is tried again (its breaker stayed closed)"
            );
        }
        assert_eq!((p.calls(), b.calls()), (2, 2), "{dialect}: no retry of a context-window error");
        assert_eq!(primary_health(&gw).await, (0, "closed".to_owned()), "{dialect}");
    }
}

/// Class: an error event inside a 200 stream that says the prompt is too long (vLLM and proxies
/// stream it as an OpenAI error chunk, Anthropic as an `error` event) is a context-window error
/// too: fallback, no breaker count.
#[tokio::test]
async fn context_window_error_event_in_a_200_stream_uses_the_context_window_fallback() {
    let openai_event = "data: {\"error\":{\"message\":\"This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.\",\"type\":\"BadRequestError\",\"code\":400}}\n\n".to_owned();
    let anthropic_event = sse_event(
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"primary-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}),
    ) + &sse_event(
        "error",
        json!({"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}),
    );
    let backup_stream =
        chunk_line("b", r#"{"role":"assistant","content":"from backup"}"#, Some("stop")) + "data: [DONE]\n\n";
    for (kind, upstream) in [("openai", openai_event), ("anthropic", anthropic_event)] {
        let p = FakeUpstream::replay(Reply::sse(&upstream)).await;
        let b = FakeUpstream::replay(Reply::sse(&backup_stream)).await;
        let gw = gateway(kind, &p, &b, r#"context_window_fallback = ["backup-model"]"#).await;
        for round in 0..2 {
            let resp = post(&gw, STREAM_REQ).await;
            assert_eq!(resp.status(), 200, "{kind}");
            assert_eq!(
                resp.headers()["x-triage-attempts"],
                "primary-model@primary:in_band_error, backup-model@backup:200",
                "{kind}, round {round}"
            );
            assert_eq!(content(&chunks(&sse_data(&resp.text().await.unwrap()))), "from backup", "{kind}");
        }
        assert_eq!(primary_health(&gw).await, (0, "closed".to_owned()), "{kind}");
    }
}

/// Class: with no `context_window_fallback`, a context-window error is the client's to see as
/// one, a 400 with OpenAI's `context_length_exceeded` code, whatever the upstream's wording or
/// envelope (an error event in a 200 stream included), and the breaker stays closed.
#[tokio::test]
async fn context_window_error_without_fallback_is_a_400_context_length_exceeded() {
    let vllm = r#"{"object":"error","message":"The decoder prompt (length 9000) is longer than the maximum model length of 8192.","type":"BadRequestError","param":null,"code":400}"#;
    let p = FakeUpstream::replay(Reply::json(400, vllm)).await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let gw = gateway("openai", &p, &b, "").await;
    let resp = post(&gw, REQ).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("longer than the maximum model length"), "{v}");

    let event = "data: {\"error\":{\"message\":\"This model's maximum context length is 8192 tokens.\",\"type\":\"BadRequestError\"}}\n\n";
    let p = FakeUpstream::replay(Reply::sse(event)).await;
    let gw = gateway("openai", &p, &b, "").await;
    let resp = post(&gw, STREAM_REQ).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(primary_health(&gw).await, (0, "closed".to_owned()));
    assert_eq!(b.calls(), 0);
}

/// Class: an Anthropic upstream's error reaches an OpenAI client in OpenAI's envelope (no
/// top-level `type: "error"`), its type and message kept; an OpenAI upstream's error reaches an
/// Anthropic client in Anthropic's envelope. Same format both ends: the body as the upstream
/// sent it.
#[tokio::test]
async fn upstream_errors_reach_each_client_in_its_own_envelope() {
    let anthropic_400 = r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.0.content: text content blocks must be non-empty"}}"#;
    let openai_400 = r#"{"error":{"message":"Invalid 'messages[0].content': string too long.","type":"invalid_request_error","param":"messages[0].content","code":"string_above_max_length"}}"#;
    let req = json!({"model": "primary-model", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});

    let p = FakeUpstream::replay(Reply::json(400, anthropic_400)).await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let gw = gateway("anthropic", &p, &b, "").await;
    let resp = post_to(&gw, "/v1/chat/completions", &req).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert!(v.get("type").is_none(), "OpenAI's envelope: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "upstream_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("text content blocks must be non-empty"), "{v}");
    let resp = post_to(&gw, "/v1/messages", &req).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.unwrap(), anthropic_400, "Anthropic to Anthropic: as sent");

    let p = FakeUpstream::replay(Reply::json(400, openai_400)).await;
    let gw = gateway("openai", &p, &b, "").await;
    let resp = post_to(&gw, "/v1/messages", &req).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["type"], "error", "Anthropic's envelope: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("string too long"), "{v}");
    let resp = post_to(&gw, "/v1/chat/completions", &req).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.unwrap(), openai_400, "OpenAI to OpenAI: as sent");
}

/// Class: Anthropic's `overloaded_error` stays an overloaded error for an Anthropic client, in
/// the middle of a stream (the closing `error` event) and before its first token (a 529); an
/// OpenAI client is told `upstream_overloaded`.
#[tokio::test]
async fn overloaded_error_mid_stream_stays_an_overloaded_error() {
    let overloaded =
        sse_event("error", json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}));
    let text = sse_event(
        "content_block_delta",
        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}),
    );
    let mid = anthropic_start() + &text + &overloaded;
    let p = FakeUpstream::replay(Reply::sse(&mid)).await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let gw = gateway("anthropic", &p, &b, "").await;
    let req = json!({"model": "primary-model", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post_to(&gw, "/v1/messages", &req).await;
    assert_eq!(resp.status(), 200);
    let events = anthropic_events(&resp.text().await.unwrap());
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(last["error"]["type"], "overloaded_error", "{last}");
    assert!(events.iter().any(|(_, e)| e["delta"]["text"] == "Hel"));

    // A fresh gateway each time: the failure opened this one's breaker (it opens on the first).
    let gw = gateway("anthropic", &p, &b, "").await;
    let resp = post_to(&gw, "/v1/chat/completions", &req).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.unwrap());
    let err: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_overloaded", "{err}");

    // Before the first token: no answer has started, so the client gets the error itself.
    let early = anthropic_start() + &overloaded;
    let p = FakeUpstream::replay(Reply::sse(&early)).await;
    let gw = gateway("anthropic", &p, &b, "").await;
    let resp = post_to(&gw, "/v1/messages", &req).await;
    assert_eq!(resp.status(), 529);
    assert_eq!(json_body(resp).await["error"]["type"], "overloaded_error");
    let gw = gateway("anthropic", &p, &b, "").await;
    let resp = post_to(&gw, "/v1/chat/completions", &req).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(json_body(resp).await["error"]["code"], "upstream_overloaded");
}

/// Class: tool calls streamed without `index` (each call whole in one chunk, or its first chunk
/// with an id and later ones without) are told apart by id, for OpenAI and Anthropic clients.
#[tokio::test]
async fn streamed_tool_calls_without_index_are_told_apart_by_id() {
    let calls = chunk_line(
        "t",
        r#"{"role":"assistant","tool_calls":[{"id":"call_A","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]}"#,
        None,
    ) + &chunk_line("t", r#"{"tool_calls":[{"function":{"arguments":"\"Bern\"}"}}]}"#, None)
        + &chunk_line(
            "t",
            r#"{"tool_calls":[{"id":"call_B","type":"function","function":{"name":"get_time","arguments":"{}"}}]}"#,
            Some("tool_calls"),
        )
        + "data: [DONE]\n\n";
    let p = FakeUpstream::replay(Reply::sse(&calls)).await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let gw = gateway("openai", &p, &b, "").await;

    let resp = post(&gw, STREAM_REQ).await;
    assert_eq!(resp.status(), 200);
    let mut got: Vec<(String, String, String)> = Vec::new();
    for c in chunks(&sse_data(&resp.text().await.unwrap())) {
        for tc in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if got.len() <= i {
                got.resize(i + 1, Default::default());
            }
            got[i].0 += tc["id"].as_str().unwrap_or("");
            got[i].1 += tc["function"]["name"].as_str().unwrap_or("");
            got[i].2 += tc["function"]["arguments"].as_str().unwrap_or("");
        }
    }
    assert_eq!(
        got,
        [
            ("call_A".to_owned(), "get_weather".to_owned(), r#"{"city":"Bern"}"#.to_owned()),
            ("call_B".to_owned(), "get_time".to_owned(), "{}".to_owned()),
        ]
    );

    let req = json!({"model": "primary-model", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post_to(&gw, "/v1/messages", &req).await;
    assert_eq!(resp.status(), 200);
    let events = anthropic_events(&resp.text().await.unwrap());
    let blocks: Vec<(String, String)> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, e)| {
            let b = &e["content_block"];
            (b["id"].as_str().unwrap().to_owned(), b["name"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(blocks, [("call_A".to_owned(), "get_weather".to_owned()), ("call_B".to_owned(), "get_time".to_owned())]);
    let args: Vec<String> = (0..2u64)
        .map(|i| {
            events
                .iter()
                .filter(|(n, e)| n == "content_block_delta" && e["index"] == i)
                .map(|(_, e)| e["delta"]["partial_json"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(args, [r#"{"city":"Bern"}"#, "{}"]);
}

/// Class: cache-write tokens are priced at `cache_write` on every path, the Anthropic stream
/// translated for an OpenAI client included (its chunks fold writes into `prompt_tokens`).
#[tokio::test]
async fn cache_write_tokens_are_priced_as_such_in_translated_streams() {
    let db = temp_db();
    let usage = json!({"input_tokens": 10, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 0, "output_tokens": 1});
    let stream = sse_event(
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"primary-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":usage}}),
    ) + &sse_event(
        "content_block_start",
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
    ) + &sse_event(
        "content_block_delta",
        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}),
    ) + &sse_event("content_block_stop", json!({"type":"content_block_stop","index":0}))
        + &sse_event(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":5}}),
        )
        + &sse_event("message_stop", json!({"type":"message_stop"}));
    let mut whole_usage = usage.clone();
    whole_usage["output_tokens"] = json!(5);
    let whole = json!({"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"primary-upstream","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":whole_usage}).to_string();
    let p =
        FakeUpstream::start(
            move |r, _| {
                if r.json()["stream"] == true {
                    Reply::sse(&stream)
                } else {
                    Reply::json(200, &whole)
                }
            },
        )
        .await;
    let b = FakeUpstream::replay(Reply::json(200, &backup_completion())).await;
    let spend = format!("[spend]\ndatabase = \"{db}\"");
    let toml = config("anthropic", &p.url(), &b.url(), &spend).replace(
        "price = { input = 1.0, output = 3.0 }",
        "price = { input = 3.0, cached_input = 0.3, cache_write = 3.75, output = 15.0 }",
    );
    std::env::set_var("TRIAGE_TEST_WIRE_KEY", "sk-test-PLACEHOLDER");
    let gw = start(&toml).await;
    let store = triage_store::Store::connect(&db).await.unwrap();
    // 10 × $3 + 1,000 written × $3.75 + 5 × $15 per million tokens, in nano-dollars.
    let expected = triage_core::cost::NanoUsd(30_000 + 3_750_000 + 75_000);
    for (id, path, stream) in [
        ("cw-openai-stream", "/v1/chat/completions", true),
        ("cw-openai-whole", "/v1/chat/completions", false),
        ("cw-anthropic-stream", "/v1/messages", true),
        ("cw-responses-stream", "/v1/responses", true),
    ] {
        let body = if path == "/v1/responses" {
            json!({"model": "primary-model", "stream": stream, "input": "hi"})
        } else {
            json!({"model": "primary-model", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        };
        let resp = client()
            .post(gw.url(path))
            .header("x-request-id", id)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{id}");
        let _ = resp.text().await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (_, _, cost, usage, _) = loop {
            if let Some(r) = store.request_summary(id).await.unwrap() {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "{id} never reached the ledger");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!((usage.input, usage.cache_write, usage.output), (1010, 1000, 5), "{id}");
        assert_eq!(cost, expected, "{id}");
    }
}
