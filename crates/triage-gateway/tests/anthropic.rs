//! The Anthropic Messages API in and out, through the real server: Anthropic and OpenAI clients
//! against Anthropic-speaking and OpenAI-speaking scripted upstreams (shared cases C02 C, C04 B/D,
//! C05 C, C06 A, C07, C09, C11, C12 B, C13, C15, C16, C17, C19, C20, C24, C28 V3/V4, C30 V2/V3, C32 V2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// `openai-model` (OpenAI-compatible) and `anthropic-model` (Anthropic, max output 64,000);
/// alias `fast` → openai-model; `extra` goes into anthropic-model's entry.
fn config(oa: &str, an: &str, anthropic_extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
[aliases]
fast = "openai-model"
[retry]
num_retries = 0
[providers.oa]
kind = "openai"
base_url = "{oa}"
idle_timeout_ms = 2000
[providers.an]
kind = "anthropic"
base_url = "{an}"
api_key_env = "TRIAGE_TEST_ANTHROPIC_KEY"
idle_timeout_ms = 2000
[[models]]
id = "openai-model"
provider = "oa"
upstream_model = "gpt-test-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
capabilities = ["tools", "vision"]
[[models]]
id = "anthropic-model"
provider = "an"
upstream_model = "claude-test-upstream"
tier = "frontier"
price = {{ input = 3.0, cached_input = 0.3, output = 15.0 }}
context_window = 200000
max_output_tokens = 64000
capabilities = ["tools", "vision"]
{anthropic_extra}
"#
    )
}

async fn setup(oa: Reply, an: Reply, extra: &str) -> (FakeUpstream, FakeUpstream, Gateway) {
    std::env::set_var("TRIAGE_TEST_ANTHROPIC_KEY", "sk-ant-test-PLACEHOLDER");
    let o = FakeUpstream::replay(oa).await;
    let a = FakeUpstream::replay(an).await;
    let gw = start(&config(&o.url(), &a.url(), extra)).await;
    (o, a, gw)
}

async fn post_to(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    client().post(gw.url(path)).header("content-type", "application/json").body(body.to_string()).send().await.unwrap()
}

/// `(event name, data)` of an Anthropic-format SSE body; asserts the grammar's framing.
fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap_or_else(|| panic!("event without data: {e:?}"));
            let name = name.strip_prefix("event: ").unwrap_or_else(|| panic!("no event line: {e:?}"));
            let data = data.strip_prefix("data: ").unwrap_or_else(|| panic!("no data line: {e:?}"));
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], name, "event name and data type agree");
            (name.to_owned(), v)
        })
        .collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events.iter().filter_map(|(_, v)| v["delta"]["text"].as_str()).collect()
}

fn sse_event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn message_start(input: u64) -> String {
    sse_event(
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"claude-test-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":input,"output_tokens":1}}}),
    )
}

fn anthropic_text_stream(text: &str, input: u64, output: u64, stop: &str) -> String {
    message_start(input)
        + &sse_event(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        )
        + &sse_event("ping", json!({"type":"ping"}))
        + &sse_event(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":text}}),
        )
        + &sse_event("content_block_stop", json!({"type":"content_block_stop","index":0}))
        + &sse_event(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":stop,"stop_sequence":null},"usage":{"output_tokens":output}}),
        )
        + &sse_event("message_stop", json!({"type":"message_stop"}))
}

fn anthropic_message(text: &str, stop: &str) -> String {
    json!({"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"claude-test-upstream","content":[{"type":"text","text":text}],"stop_reason":stop,"stop_sequence":null,"usage":{"input_tokens":14,"output_tokens":5}}).to_string()
}

const OPENAI_PONG: &str = "data: {\"id\":\"c4\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"pong\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c4\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c4\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":10,\"total_tokens\":41}}\n\ndata: [DONE]\n\n";

/// Shared case C02 C: `event:` and `data:` lines in separate writes stay paired.
#[tokio::test]
async fn c02_anthropic_event_and_data_split_across_writes() {
    let writes = [
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_PLACEHOLDER\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test-upstream\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello world\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    let (_o, a, gw) = setup(Reply::json(200, "{}"), Reply::sse_writes(&writes), "").await;
    let resp = post_to(&gw, "/v1/messages", &json!({"model": "anthropic-model", "stream": true, "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello world"}]})).await;
    assert_eq!(resp.status(), 200);
    let ev = anthropic_events(&resp.text().await.unwrap());
    assert_eq!(text_of(&ev), "Hello world");
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[4].1["delta"]["stop_reason"], "end_turn");
    let sent = &a.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-test-PLACEHOLDER"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.json()["model"], "claude-test-upstream");
}

/// Shared case C04 B and D: one `[DONE]` for an OpenAI client of an Anthropic stream; none,
/// and one `message_stop`, for an Anthropic client of an OpenAI stream.
#[tokio::test]
async fn c04_terminators_follow_the_client_protocol() {
    let (_o, _a, gw) =
        setup(Reply::sse(OPENAI_PONG), Reply::sse(&anthropic_text_stream("pong", 5, 1, "end_turn")), "").await;
    let resp =
        post(&gw, r#"{"model":"anthropic-model","stream":true,"messages":[{"role":"user","content":"ping"}]}"#).await;
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(content(&chunks(&data)), "pong");

    let resp = post_to(&gw, "/v1/messages", &json!({"model": "openai-model", "max_tokens": 16, "stream": true, "messages": [{"role": "user", "content": "ping"}]})).await;
    let body = resp.text().await.unwrap();
    assert!(!body.contains("[DONE]"));
    let ev = anthropic_events(&body);
    assert_eq!(ev.iter().filter(|(n, _)| n == "message_stop").count(), 1);
    assert_eq!(ev.last().unwrap().0, "message_stop");
    assert_eq!(text_of(&ev), "pong");
    // Shared case C28 V3: the real usage arrives in message_delta.
    let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["usage"]["output_tokens"], 10);
    assert_eq!(delta["usage"]["input_tokens"], 31);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
}

/// Shared case C05 C and C28 V4: usage from an Anthropic stream.
#[tokio::test]
async fn c05_c28_usage_from_an_anthropic_stream() {
    let (_o, _a, gw) =
        setup(Reply::json(200, "{}"), Reply::sse(&anthropic_text_stream("Hi there!", 12, 3, "end_turn")), "").await;
    let resp = post(&gw, r#"{"model":"anthropic-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello!"}]}"#).await;
    let c = chunks(&sse_data(&resp.text().await.unwrap()));
    let last = c.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}));
    assert!(c[..c.len() - 1].iter().all(|c| c.get("usage").is_none()));
    assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");

    let resp = post_to(&gw, "/v1/messages", &json!({"model": "anthropic-model", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "Hello"}]})).await;
    let ev = anthropic_events(&resp.text().await.unwrap());
    assert_eq!(ev[0].1["message"]["usage"]["input_tokens"], 12);
    assert_eq!(ev.iter().find(|(n, _)| n == "message_delta").unwrap().1["usage"]["output_tokens"], 3);
}

/// Shared case C06 A: a tool-call-only Anthropic stream to an OpenAI client.
#[tokio::test]
async fn c06_tool_only_stream_has_a_role_and_a_whole_call() {
    let up = message_start(20)
        + &sse_event(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_01PLACEHOLDER","name":"get_time","input":{}}}),
        )
        + &sse_event(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"tz\":\"UTC\"}"}}),
        )
        + &sse_event("content_block_stop", json!({"type":"content_block_stop","index":0}))
        + &sse_event(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}),
        )
        + &sse_event("message_stop", json!({"type":"message_stop"}));
    let (_o, _a, gw) = setup(Reply::json(200, "{}"), Reply::sse(&up), "").await;
    let req = json!({"model": "anthropic-model", "stream": true, "messages": [{"role": "user", "content": "What time is it in UTC?"}], "tools": [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}]});
    let c = chunks(&sse_data(&post(&gw, &req.to_string()).await.text().await.unwrap()));
    assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
    let calls: Vec<&Value> =
        c.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten()).collect();
    assert_eq!(calls[0]["id"], "toolu_01PLACEHOLDER");
    assert_eq!(calls[0]["function"]["name"], "get_time");
    let args: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
    assert_eq!(args, "{\"tz\":\"UTC\"}");
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

const C07_STREAM: &[(&str, &str)] = &[
    (
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"claude-test-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":310,"output_tokens":1}}}"#,
    ),
    ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
    (
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Snoozing now."}}"#,
    ),
    ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
    (
        "content_block_start",
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01PLACEHOLDER","name":"snooze","input":{}}}"#,
    ),
    (
        "content_block_delta",
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
    ),
    ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
    (
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":28}}"#,
    ),
    ("message_stop", r#"{"type":"message_stop"}"#),
];

/// Shared case C07: a no-argument tool call is `{}` streamed and not; `""` sent back becomes `{}`.
#[tokio::test]
async fn c07_noarg_tool_call_arguments() {
    let stream: String = C07_STREAM.iter().map(|(n, d)| format!("event: {n}\ndata: {d}\n\n")).collect();
    let whole = json!({"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"claude-test-upstream","content":[{"type":"text","text":"Snoozing now."},{"type":"tool_use","id":"toolu_01PLACEHOLDER","name":"snooze","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":310,"output_tokens":28}});
    let whole_s = whole.to_string();
    let a =
        FakeUpstream::start(
            move |r, _| if r.json()["stream"] == true { Reply::sse(&stream) } else { Reply::json(200, &whole_s) },
        )
        .await;
    let o = FakeUpstream::replay(Reply::json(200, "{}")).await;
    std::env::set_var("TRIAGE_TEST_ANTHROPIC_KEY", "sk-ant-test-PLACEHOLDER");
    let gw = start(&config(&o.url(), &a.url(), "")).await;
    let tools = json!([{"type": "function", "function": {"name": "snooze", "description": "Snooze the alarm", "parameters": {"type": "object", "properties": {}}}}]);
    let req = json!({"model": "anthropic-model", "stream": true, "messages": [{"role": "user", "content": "Snooze my alarm."}], "tools": tools});
    let c = chunks(&sse_data(&post(&gw, &req.to_string()).await.text().await.unwrap()));
    assert_eq!(content(&c), "Snoozing now.");
    let calls: Vec<&Value> =
        c.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten()).collect();
    assert!(calls.iter().all(|c| c["index"] == 0), "tool-call index counts tool calls");
    assert_eq!(calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect::<String>(), "{}");
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");

    let mut req2 = req.clone();
    req2["stream"] = json!(false);
    let v = json_body(post(&gw, &req2.to_string()).await).await;
    assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(v["choices"][0]["message"]["content"], "Snoozing now.");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let follow = json!({"model": "anthropic-model", "messages": [{"role": "user", "content": "Snooze my alarm."}, {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_01PLACEHOLDER", "type": "function", "function": {"name": "snooze", "arguments": ""}}]}, {"role": "tool", "tool_call_id": "toolu_01PLACEHOLDER", "content": "snoozed for 10 minutes"}], "tools": tools});
    assert_eq!(post(&gw, &follow.to_string()).await.status(), 200);
    let sent = a.requests().last().unwrap().json();
    assert_eq!(
        sent["messages"][1]["content"][0],
        json!({"type": "tool_use", "id": "toolu_01PLACEHOLDER", "name": "snooze", "input": {}})
    );
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
}

/// Shared cases C09 and C11 for an Anthropic client of an OpenAI-compatible (vLLM, Ollama) upstream.
#[tokio::test]
async fn c09_c11_anthropic_client_of_openai_tool_streams() {
    let c9 = [
        r#"data: {"id":"c9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Par"}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":"is\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        "data: [DONE]",
    ]
    .join("\n\n")
        + "\n\n";
    let (o, _a, gw) = setup(Reply::sse(&c9), Reply::json(200, "{}"), "").await;
    let req = json!({"model": "openai-model", "max_tokens": 256, "stream": true, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]});
    let ev = anthropic_events(&post_to(&gw, "/v1/messages", &req).await.text().await.unwrap());
    let starts: Vec<&Value> = ev.iter().filter(|(n, _)| n == "content_block_start").map(|(_, v)| v).collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["content_block"]["id"], "call_PLACEHOLDER1");
    assert_eq!(starts[0]["content_block"]["name"], "get_weather");
    let args: String = ev.iter().filter_map(|(_, v)| v["delta"]["partial_json"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Paris"}));
    assert_eq!(ev.iter().find(|(n, _)| n == "message_delta").unwrap().1["delta"]["stop_reason"], "tool_use");
    // The upstream got an OpenAI request with the tool translated.
    let sent = o.requests()[0].json();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["max_tokens"], 256);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

/// Shared case C12 B: translated Anthropic deltas are not buffered.
#[tokio::test]
async fn c12_translated_stream_is_not_buffered() {
    let delta = |t: &str| {
        sse_event(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}),
        )
    };
    let steps = vec![
        Step::Write((message_start(5) + &sse_event("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})) + &delta("one")).into_bytes()),
        Step::Sleep(Duration::from_millis(1000)),
        Step::Write(delta(" two").into_bytes()),
        Step::Sleep(Duration::from_millis(1000)),
        Step::Write((delta(" three") + &sse_event("content_block_stop", json!({"type":"content_block_stop","index":0})) + &sse_event("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}})) + &sse_event("message_stop", json!({"type":"message_stop"}))).into_bytes()),
    ];
    let (_o, _a, gw) = setup(Reply::json(200, "{}"), Reply::steps(200, steps), "").await;
    let t = Instant::now();
    let resp =
        post(&gw, r#"{"model":"anthropic-model","stream":true,"messages":[{"role":"user","content":"Count"}]}"#).await;
    let mut s = resp.bytes_stream();
    let mut arrivals = Vec::new();
    while let Some(b) = s.next().await {
        let b = String::from_utf8(b.unwrap().to_vec()).unwrap();
        for w in ["\"one\"", "\" two\"", "\" three\""] {
            if b.contains(w) {
                arrivals.push(t.elapsed());
            }
        }
    }
    assert_eq!(arrivals.len(), 3);
    assert!(arrivals[0] < Duration::from_millis(500));
    for w in arrivals.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap > Duration::from_millis(600) && gap < Duration::from_millis(1500), "{gap:?}");
    }
}

/// Shared case C13: stop reasons both ways, streamed and not.
#[tokio::test]
async fn c13_stop_reasons() {
    // Vector 1: Anthropic max_tokens → OpenAI length.
    let (_o, _a, gw) =
        setup(Reply::json(200, "{}"), Reply::json(200, &anthropic_message("Rivers are long", "max_tokens")), "").await;
    let v = json_body(post(&gw, r#"{"model":"anthropic-model","max_tokens":5,"messages":[{"role":"user","content":"Write a long essay about rivers."}]}"#).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "Rivers are long");
    assert_eq!((v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()), (Some(14), Some(5)));

    // Vector 2: Anthropic → Anthropic keeps stop_sequence.
    let stop_seq = json!({"id":"msg_1","type":"message","role":"assistant","model":"claude-test-upstream","content":[{"type":"text","text":"a"}],"stop_reason":"stop_sequence","stop_sequence":"END","usage":{"input_tokens":3,"output_tokens":1}});
    let (_o, a, gw) = setup(Reply::json(200, "{}"), Reply::json(200, &stop_seq.to_string()), "").await;
    let v = json_body(post_to(&gw, "/v1/messages", &json!({"model": "anthropic-model", "max_tokens": 16, "stop_sequences": ["END"], "messages": [{"role": "user", "content": "x"}]})).await).await;
    assert_eq!((v["stop_reason"].as_str(), v["stop_sequence"].as_str()), (Some("stop_sequence"), Some("END")));
    assert_eq!(a.requests()[0].json()["stop_sequences"], json!(["END"]));

    // Vector 3: OpenAI length → Anthropic max_tokens.
    let length = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"Rivers"},"finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}"#;
    let (_o, _a, gw) = setup(Reply::json(200, length), Reply::json(200, "{}"), "").await;
    let v = json_body(
        post_to(
            &gw,
            "/v1/messages",
            &json!({"model": "openai-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["content"], json!([{"type": "text", "text": "Rivers"}]));
    assert_eq!(v["usage"], json!({"input_tokens": 4, "output_tokens": 5}));
}

/// Shared case C15: the upstream gets exactly three alternating messages.
#[tokio::test]
async fn c15_parallel_tool_results_reach_anthropic_as_one_turn() {
    let (_o, a, gw) =
        setup(Reply::json(200, "{}"), Reply::json(200, &anthropic_message("Paris 18C, Tokyo 25C.", "end_turn")), "")
            .await;
    let req = json!({"model": "anthropic-model", "max_tokens": 256, "messages": [{"role": "user", "content": "Weather in Paris and Tokyo?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_A_PLACEHOLDER", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}, {"id": "toolu_B_PLACEHOLDER", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}]}, {"role": "tool", "tool_call_id": "toolu_A_PLACEHOLDER", "content": "18C cloudy"}, {"role": "tool", "tool_call_id": "toolu_B_PLACEHOLDER", "content": "25C sunny"}, {"role": "user", "content": "Summarize in one line."}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
    assert_eq!(post(&gw, &req.to_string()).await.status(), 200);
    let m = &a.requests()[0].json()["messages"];
    assert_eq!(m.as_array().unwrap().len(), 3);
    assert_eq!(m[2]["content"][0]["tool_use_id"], "toolu_A_PLACEHOLDER");
    assert_eq!(m[2]["content"][1]["tool_use_id"], "toolu_B_PLACEHOLDER");
    assert_eq!(m[2]["content"][2], json!({"type": "text", "text": "Summarize in one line."}));
}

/// Shared cases C16 and C17: system prompts, and max_tokens for Anthropic.
#[tokio::test]
async fn c16_c17_system_and_max_tokens() {
    let (_o, a, gw) = setup(Reply::json(200, "{}"), Reply::json(200, &anthropic_message("OK", "end_turn")), "").await;
    assert_eq!(post(&gw, r#"{"model":"anthropic-model","max_tokens":16,"messages":[{"role":"system","content":"Reply with the single word OK."}]}"#).await.status(), 200);
    let sent = a.requests()[0].json();
    assert_eq!(sent["messages"][0]["role"], "user");
    assert_eq!(
        post(&gw, r#"{"model":"anthropic-model","messages":[{"role":"user","content":"Write a long story."}]}"#)
            .await
            .status(),
        200
    );
    assert_eq!(a.requests()[1].json()["max_tokens"], 64000);
    assert_eq!(post(&gw, r#"{"model":"anthropic-model","max_completion_tokens":1000,"messages":[{"role":"user","content":"Write a long story."}]}"#).await.status(), 200);
    assert_eq!(a.requests()[2].json()["max_tokens"], 1000);

    // Anthropic inbound without max_tokens: 400 in Anthropic's shape, no upstream call.
    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "anthropic-model", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_tokens"));
    assert_eq!(a.calls(), 3);
}

/// Shared case C19: images to Anthropic, from both client formats.
#[tokio::test]
async fn c19_images() {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let (_o, a, gw) =
        setup(Reply::json(200, "{}"), Reply::json(200, &anthropic_message("A pixel.", "end_turn")), "").await;
    let req = json!({"model": "anthropic-model", "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]}]});
    assert_eq!(post(&gw, &req.to_string()).await.status(), 200);
    assert_eq!(
        a.requests()[0].json()["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}})
    );
    let req = json!({"model": "anthropic-model", "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}]}]});
    assert_eq!(post(&gw, &req.to_string()).await.status(), 200);
    assert_eq!(
        a.requests()[1].json()["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}})
    );
    let native = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}});
    let req = json!({"model": "anthropic-model", "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, native]}]});
    assert_eq!(post_to(&gw, "/v1/messages", &req).await.status(), 200);
    assert_eq!(a.requests()[2].json()["messages"][0]["content"][1], native);
    // An unsupported data-URL type is a clear 400, not an upstream error.
    let bad = json!({"model": "anthropic-model", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}]});
    let resp = post(&gw, &bad.to_string()).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_body(resp).await["error"]["param"], "messages[0].content[0].image_url.url");
    assert_eq!(a.calls(), 3);
}

/// Shared case C20: cache_control kept Anthropic → Anthropic; dropped for an OpenAI upstream.
#[tokio::test]
async fn c20_cache_control() {
    let cached = json!({"id":"msg_1","type":"message","role":"assistant","model":"claude-test-upstream","content":[{"type":"text","text":"a"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":8,"cache_creation_input_tokens":0,"cache_read_input_tokens":1800,"output_tokens":12}});
    let (o, a, gw) = setup(Reply::json(200, COMPLETION), Reply::json(200, &cached.to_string()), "").await;
    let req = json!({"model": "anthropic-model", "max_tokens": 64, "system": [{"type": "text", "text": "LONG_SYSTEM_PROMPT_PLACEHOLDER", "cache_control": {"type": "ephemeral", "ttl": "1h"}}], "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}}], "messages": [{"role": "user", "content": [{"type": "text", "text": "Question one", "cache_control": {"type": "ephemeral"}}]}]});
    let v = json_body(post_to(&gw, "/v1/messages", &req).await).await;
    assert_eq!(v["usage"]["cache_read_input_tokens"], 1800);
    let mut expected = req.clone();
    expected["model"] = json!("claude-test-upstream");
    assert_eq!(a.requests()[0].json(), expected, "Anthropic → Anthropic is forwarded unchanged but for the model");

    let b = json!({"model": "anthropic-model", "max_tokens": 64, "messages": [{"role": "system", "content": [{"type": "text", "text": "LONG_SYSTEM_PROMPT_PLACEHOLDER", "cache_control": {"type": "ephemeral"}}]}, {"role": "user", "content": "Question one"}]});
    let v = json_body(post(&gw, &b.to_string()).await).await;
    assert_eq!(a.requests()[1].json()["system"][0]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(v["usage"]["prompt_tokens"], 1808);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1800);

    let mut c = req.clone();
    c["model"] = json!("openai-model");
    assert_eq!(post_to(&gw, "/v1/messages", &c).await.status(), 200);
    let sent = String::from_utf8(o.requests()[0].body.clone()).unwrap();
    assert!(!sent.contains("cache_control"), "{sent}");
}

/// Shared case C24 on the Anthropic endpoint: a 429 falls back, or returns in Anthropic's shape.
#[tokio::test]
async fn c24_rate_limit_on_the_messages_endpoint() {
    let limited = Reply::json(429, r#"{"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}"#).header("retry-after", "20");
    let (_o, a, gw) = setup(Reply::json(200, COMPLETION), limited.clone(), r#"fallback = ["openai-model"]"#).await;
    let t = Instant::now();
    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "anthropic-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(resp.headers()["x-triage-model"], "openai-model");
    let v = json_body(resp).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "hello");
    assert_eq!(a.calls(), 1);

    let (_o, _a, gw) = setup(Reply::json(200, COMPLETION), limited, "").await;
    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "anthropic-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "20");
    let v = json_body(resp).await;
    assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("rate_limit_error")));
    // The gateway's own 429 for the cooling deployment is Anthropic-shaped too.
    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "anthropic-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(json_body(resp).await["error"]["type"], "rate_limit_error");
}

/// Shared cases C30 V2/V3 and C32 V2, and errors in Anthropic's envelope.
#[tokio::test]
async fn c30_c32_messages_endpoint_validation_and_aliases() {
    let (o, a, gw) = setup(
        Reply::json(200, COMPLETION),
        Reply::json(529, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
        "",
    )
    .await;
    let resp = post_to(&gw, "/v1/messages", &json!({"model": "anthropic-model", "max_tokens": 16})).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));

    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sent = &o.requests()[0];
    assert_eq!(sent.json()["model"], "gpt-test-upstream");
    assert!(!String::from_utf8_lossy(&sent.body).contains("fast"));
    let v = json_body(resp).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");

    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "nope", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json_body(resp).await["error"]["type"], "not_found_error");

    // An overloaded Anthropic upstream is a 529 overloaded_error for an Anthropic client.
    let resp = post_to(
        &gw,
        "/v1/messages",
        &json!({"model": "anthropic-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 529);
    assert_eq!(json_body(resp).await["error"]["type"], "overloaded_error");
    assert_eq!(a.calls(), 1);

    let resp = post_to(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "anthropic-model", "messages": [{"role": "user", "content": "Hello world"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_body(resp).await["input_tokens"], 8);
}

/// An Anthropic stream that stalls mid-answer ends with an `error` event for either client.
#[tokio::test]
async fn stalled_anthropic_stream_ends_with_an_error_event() {
    let steps = vec![
        Step::Write(
            (message_start(5)
                + &sse_event(
                    "content_block_start",
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                )
                + &sse_event(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Once"}}),
                ))
                .into_bytes(),
        ),
        Step::Hang,
    ];
    let (_o, _a, gw) = setup(Reply::json(200, "{}"), Reply::steps(200, steps), "").await;
    let body = post_to(&gw, "/v1/messages", &json!({"model": "anthropic-model", "max_tokens": 16, "stream": true, "messages": [{"role": "user", "content": "Tell me a story"}]})).await.text().await.unwrap();
    let ev = anthropic_events(&body);
    let (name, last) = ev.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(ev.iter().all(|(n, _)| n != "message_stop"));
    assert_eq!(text_of(&ev), "Once");
}
