use serde_json::{json, Value};

use super::*;
use crate::anthropic::{Event, MessagesRequest, Response};
use crate::openai::{ChatChunk, ChatCompletion, ChatRequest};

fn oreq(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn areq(v: Value) -> MessagesRequest {
    serde_json::from_value(v).unwrap()
}

fn to_anthropic(v: Value) -> Value {
    serde_json::to_value(openai_to_anthropic(&oreq(v), "claude-test-upstream", 64000).unwrap()).unwrap()
}

/// Shared case C15: N tool messages and the user text after them become one user message.
#[test]
fn c15_parallel_tool_results_merge_into_one_user_turn() {
    let up = to_anthropic(
        json!({"model": "anthropic-model", "max_tokens": 256, "messages": [{"role": "user", "content": "Weather in Paris and Tokyo?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_A_PLACEHOLDER", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}, {"id": "toolu_B_PLACEHOLDER", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}]}, {"role": "tool", "tool_call_id": "toolu_A_PLACEHOLDER", "content": "18C cloudy"}, {"role": "tool", "tool_call_id": "toolu_B_PLACEHOLDER", "content": "25C sunny"}, {"role": "user", "content": "Summarize in one line."}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}),
    );
    assert_eq!(
        up["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Tokyo?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_A_PLACEHOLDER", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_B_PLACEHOLDER", "name": "get_weather", "input": {"city": "Tokyo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A_PLACEHOLDER", "content": "18C cloudy"},
                {"type": "tool_result", "tool_use_id": "toolu_B_PLACEHOLDER", "content": "25C sunny"},
                {"type": "text", "text": "Summarize in one line."}]}
        ])
    );
    assert_eq!(up["max_tokens"], 256);
    assert_eq!(up["tools"][0]["input_schema"]["required"], json!(["city"]));
}

/// Shared case C16: every system and developer message reaches `system`, in order.
#[test]
fn c16_system_messages() {
    let a = to_anthropic(
        json!({"model": "m", "max_tokens": 64, "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bonjour"}, {"role": "system", "content": "Keep answers under five words."}, {"role": "user", "content": "How are you?"}]}),
    );
    assert_eq!(
        a["system"],
        json!([{"type": "text", "text": "Answer in French."}, {"type": "text", "text": "Keep answers under five words."}])
    );
    let roles: Vec<&str> = a["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);

    let b = to_anthropic(
        json!({"model": "m", "max_tokens": 16, "messages": [{"role": "system", "content": "Reply with the single word OK."}]}),
    );
    assert_eq!(
        b["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Reply with the single word OK."}]}])
    );
    assert!(b.get("system").is_none());

    let c = to_anthropic(
        json!({"model": "m", "max_tokens": 16, "messages": [{"role": "developer", "content": "Reply with the single word OK."}, {"role": "user", "content": "Go"}]}),
    );
    assert_eq!(c["system"], json!([{"type": "text", "text": "Reply with the single word OK."}]));
}

/// Shared case C17: the model's maximum when the client set none; max_completion_tokens wins.
#[test]
fn c17_max_tokens() {
    let a = to_anthropic(json!({"model": "m", "messages": [{"role": "user", "content": "Write a long story."}]}));
    assert_eq!(a["max_tokens"], 64000);
    let b = to_anthropic(
        json!({"model": "m", "max_completion_tokens": 1000, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(b["max_tokens"], 1000);
}

/// Shared case C19: data URLs become base64 sources, http URLs URL sources (no fetch, no detail).
#[test]
fn c19_image_parts() {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let a = to_anthropic(
        json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]}]}),
    );
    assert_eq!(a["messages"][0]["content"][0], json!({"type": "text", "text": "What is in this image?"}));
    assert_eq!(
        a["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}})
    );
    let b = to_anthropic(
        json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}]}]}),
    );
    assert_eq!(
        b["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}})
    );
    let jpg = to_anthropic(
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}}]}]}),
    );
    assert_eq!(jpg["messages"][0]["content"][0]["source"]["media_type"], "image/jpeg");
    let bad = openai_to_anthropic(&oreq(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]})), "c", 10).unwrap_err();
    assert_eq!(bad.param, "messages[0].content[0].image_url.url");
}

/// Shared case C20 B: `cache_control` on OpenAI content parts reaches Anthropic blocks.
#[test]
fn c20_cache_control_from_openai_parts() {
    let a = to_anthropic(
        json!({"model": "m", "max_tokens": 64, "messages": [{"role": "system", "content": [{"type": "text", "text": "LONG_SYSTEM_PROMPT_PLACEHOLDER", "cache_control": {"type": "ephemeral"}}]}, {"role": "user", "content": "Question one"}]}),
    );
    assert_eq!(
        a["system"][0],
        json!({"type": "text", "text": "LONG_SYSTEM_PROMPT_PLACEHOLDER", "cache_control": {"type": "ephemeral"}})
    );
    let u = openai_usage_of(&serde_json::from_value(json!({"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1800, "output_tokens": 12})).unwrap());
    assert_eq!((u.prompt_tokens, u.cached_tokens(), u.completion_tokens), (1808, 1800, 12));
}

/// Shared case C07 sub-test 2: stored `""` arguments go back as `{}`; n > 1 is refused.
#[test]
fn c07_empty_arguments_and_n() {
    let a = to_anthropic(
        json!({"model": "anthropic-model", "messages": [{"role": "user", "content": "Snooze my alarm."}, {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_01PLACEHOLDER", "type": "function", "function": {"name": "snooze", "arguments": ""}}]}, {"role": "tool", "tool_call_id": "toolu_01PLACEHOLDER", "content": "snoozed for 10 minutes"}], "tools": [{"type": "function", "function": {"name": "snooze", "parameters": {"type": "object", "properties": {}}}}]}),
    );
    assert_eq!(a["messages"][1]["content"][0]["input"], json!({}));
    let e = openai_to_anthropic(
        &oreq(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]})),
        "c",
        10,
    )
    .unwrap_err();
    assert_eq!(e.param, "n");
}

#[test]
fn tool_choice_stop_user_and_temperature() {
    let a = to_anthropic(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required", "parallel_tool_calls": false, "stop": "END", "user": "u-1", "temperature": 1.7, "seed": 3}),
    );
    assert_eq!(a["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
    assert_eq!(a["stop_sequences"], json!(["END"]));
    assert_eq!(a["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(a["temperature"], 1.0);
    assert!(a.get("seed").is_none());
    assert_eq!(a["tools"][0]["input_schema"], json!({"type": "object", "properties": {}}));
}

#[test]
fn anthropic_request_to_openai() {
    let o = serde_json::to_value(anthropic_to_openai(&areq(json!({
        "model": "fast", "max_tokens": 256, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "stop_sequences": ["END"], "top_k": 3, "metadata": {"user_id": "u-PLACEHOLDER"}, "temperature": 0.5,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}, {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}, {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "boom"}], "is_error": true}, {"type": "text", "text": "And tomorrow?"}]}
        ]
    })))).unwrap();
    assert_eq!(
        o,
        json!({
            "model": "fast",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "content": "18C", "tool_call_id": "toolu_1"},
                {"role": "tool", "content": "Error: boom", "tool_call_id": "toolu_2"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "max_tokens": 256,
            "user": "u-PLACEHOLDER",
            "temperature": 0.5,
            "stop": ["END"],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        })
    );
}

/// Shared case C13: stop reasons both ways, whole answers.
#[test]
fn c13_stop_reason_mapping() {
    let r: Response = serde_json::from_value(json!({"id": "msg_PLACEHOLDER", "type": "message", "role": "assistant", "model": "claude-test-upstream", "content": [{"type": "text", "text": "Rivers are long"}], "stop_reason": "max_tokens", "stop_sequence": null, "usage": {"input_tokens": 14, "output_tokens": 5}})).unwrap();
    let c = anthropic_to_openai_response(&r);
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(c.choices[0].message.content.as_deref(), Some("Rivers are long"));
    assert_eq!((c.usage.as_ref().unwrap().prompt_tokens, c.usage.as_ref().unwrap().completion_tokens), (14, 5));
    for (a, o) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        assert_eq!(finish_reason_of(a), o);
    }
    for (o, a) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        assert_eq!(stop_reason_of(o), a);
    }
    let oc: ChatCompletion = serde_json::from_value(json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-test-upstream", "choices": [{"index": 0, "message": {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 31, "completion_tokens": 10, "total_tokens": 41, "prompt_tokens_details": {"cached_tokens": 11}}})).unwrap();
    let a = serde_json::to_value(openai_to_anthropic_response(&oc)).unwrap();
    assert_eq!(a["stop_reason"], "tool_use");
    assert_eq!(a["content"], json!([{"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]));
    assert_eq!(a["usage"], json!({"input_tokens": 20, "output_tokens": 10, "cache_read_input_tokens": 11}));
    assert_eq!(a["id"], "msg_c1");
}

fn events(lines: &[&str]) -> Vec<Event> {
    lines.iter().map(|l| Event::parse(l).unwrap()).collect()
}

fn run_a2o(evs: &[Event]) -> (Vec<Value>, Flow) {
    let mut t = AnthropicToOpenAi::new(1_700_000_000);
    let mut out = Vec::new();
    let mut flow = Flow::Continue;
    for e in evs {
        flow = t.push(e, &mut out);
    }
    (out.iter().map(|c| serde_json::to_value(c).unwrap()).collect(), flow)
}

/// Shared case C07: a no-argument tool streams `{}`; tool-call index counts tool calls.
#[test]
fn c07_streamed_noarg_tool_gets_empty_object() {
    let evs = events(&[
        r#"{"type":"message_start","message":{"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"claude-test-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":310,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Snoozing now."}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01PLACEHOLDER","name":"snooze","input":{}}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":28}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    let (chunks, flow) = run_a2o(&evs);
    assert_eq!(flow, Flow::Done);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Snoozing now.");
    let calls: Vec<&Value> =
        chunks.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten()).collect();
    assert!(calls.iter().all(|c| c["index"] == 0));
    let args: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
    assert_eq!(args, "{}");
    assert_eq!(calls.iter().filter(|c| c.get("id").is_some()).count(), 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(last["usage"]["prompt_tokens"], 310);
    assert_eq!(last["usage"]["completion_tokens"], 28);
}

fn chunk(v: Value) -> ChatChunk {
    serde_json::from_value(v).unwrap()
}

fn run_o2a(chunks: &[ChatChunk]) -> Vec<Value> {
    let mut t = OpenAiToAnthropic::new(7);
    let mut out = Vec::new();
    for c in chunks {
        t.push(c, &mut out);
    }
    t.finish(&mut out);
    out.iter().map(|e| e.to_json()).collect()
}

/// Shared cases C09 and C11 on the Anthropic side: one tool_use block, arguments whole,
/// `tool_use` stop reason even after `finish_reason: "stop"`, no empty text block.
#[test]
fn c09_c11_openai_stream_to_anthropic_events() {
    let c9 = [
        json!({"id":"c9","model":"gpt-test-upstream","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}),
        json!({"id":"c9","model":"gpt-test-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Par"}}]},"finish_reason":null}]}),
        json!({"id":"c9","model":"gpt-test-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":"is\"}"}}]},"finish_reason":"tool_calls"}]}),
    ];
    let ev = run_o2a(&c9.map(chunk));
    let names: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        ev[1]["content_block"],
        json!({"type": "tool_use", "id": "call_PLACEHOLDER1", "name": "get_weather", "input": {}})
    );
    let args: String = ev.iter().filter_map(|e| e["delta"]["partial_json"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Paris"}));
    assert_eq!(ev[5]["delta"]["stop_reason"], "tool_use");
    assert_eq!(ev[0]["message"]["usage"]["input_tokens"], 7);

    let c11 = [
        json!({"id":"c11","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_PLACEHOLDER","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Lima, Peru\"}"}}]},"finish_reason":null}]}),
        json!({"id":"c11","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}),
    ];
    let ev = run_o2a(&c11.map(chunk));
    assert!(ev.iter().all(|e| e["content_block"]["type"] != "text"), "no empty text block");
    assert_eq!(ev.iter().find(|e| e["type"] == "message_delta").unwrap()["delta"]["stop_reason"], "tool_use");
}

#[test]
fn text_then_tool_in_one_chunk_and_usage() {
    let cs = [
        json!({"id":"x","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Let me check.","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}),
        json!({"id":"x","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        json!({"id":"x","model":"m","choices":[],"usage":{"prompt_tokens":31,"completion_tokens":10,"total_tokens":41}}),
    ];
    let ev = run_o2a(&cs.map(chunk));
    let names: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!((ev[1]["index"].as_u64(), ev[4]["index"].as_u64()), (Some(0), Some(1)));
    assert_eq!(ev[7]["usage"], json!({"input_tokens": 31, "output_tokens": 10}));
}

/// Wire-fidelity class on the Anthropic side: tool calls streamed without `index` are told
/// apart by id, one `tool_use` block each, every argument fragment in its own call's block.
#[test]
fn streamed_tool_calls_without_index_are_told_apart_by_id_for_anthropic_clients() {
    let chunks = [
        json!({"id":"t","model":"m","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_A","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]}}]}),
        json!({"id":"t","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"\"Bern\"}"}}]}}]}),
        json!({"id":"t","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_B","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}),
    ];
    let ev = run_o2a(&chunks.map(chunk));
    let starts: Vec<(u64, &str, &str)> = ev
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| {
            let b = &e["content_block"];
            (e["index"].as_u64().unwrap(), b["id"].as_str().unwrap(), b["name"].as_str().unwrap())
        })
        .collect();
    assert_eq!(starts, [(0, "call_A", "get_weather"), (1, "call_B", "get_time")]);
    let args = |i: u64| -> String {
        ev.iter()
            .filter(|e| e["type"] == "content_block_delta" && e["index"] == i)
            .map(|e| e["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!((args(0).as_str(), args(1).as_str()), (r#"{"city":"Bern"}"#, "{}"));
    let stop = ev.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
}

/// Reasoning across formats: `reasoning_effort` becomes an Anthropic thinking budget below
/// `max_tokens`, temperature and top_k left out; no thinking with a forced tool or `minimal`.
#[test]
fn reasoning_effort_becomes_an_anthropic_thinking_budget() {
    let up = to_anthropic(
        json!({"model": "m", "max_tokens": 8000, "reasoning_effort": "medium", "temperature": 0.2, "top_k": 5, "messages": [{"role": "user", "content": "Prove it."}]}),
    );
    assert_eq!(up["thinking"], json!({"type": "enabled", "budget_tokens": 4096}));
    assert!(up.get("temperature").is_none() && up.get("top_k").is_none(), "{up}");
    assert!(up.get("reasoning_effort").is_none());
    let up = to_anthropic(
        json!({"model": "m", "max_tokens": 3000, "reasoning_effort": "high", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(up["thinking"]["budget_tokens"], 2999, "below max_tokens");
    for (effort, max) in [("high", 1000), ("minimal", 8000)] {
        let up = to_anthropic(
            json!({"model": "m", "max_tokens": max, "reasoning_effort": effort, "temperature": 0.2, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert!(up.get("thinking").is_none(), "{effort} {max}: {up}");
        assert_eq!(up["temperature"], 0.2);
    }
    let up = to_anthropic(
        json!({"model": "m", "max_tokens": 8000, "reasoning_effort": "low", "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}], "messages": [{"role": "user", "content": "x"}]}),
    );
    assert!(up.get("thinking").is_none(), "a forced tool keeps the tool: {up}");
    assert_eq!(up["tool_choice"], json!({"type": "any"}));
    assert_eq!(thinking_budget("low", 64000), Some(1024));
}

/// Reasoning across formats: an Anthropic answer's signed thinking reaches an OpenAI client in
/// `reasoning_content` and `thinking_blocks`, and the blocks sent back in the assistant turn
/// reach Anthropic again first in that turn, signature intact (multi-turn tool use with thinking).
#[test]
fn thinking_blocks_with_signatures_survive_an_openai_client_round_trip() {
    let r: Response = serde_json::from_value(json!({"id": "msg_PLACEHOLDER", "type": "message", "role": "assistant", "model": "claude-test-upstream", "content": [{"type": "thinking", "thinking": "Need the weather tool.", "signature": "sig-PLACEHOLDER-1"}, {"type": "redacted_thinking", "data": "opaque-PLACEHOLDER"}, {"type": "tool_use", "id": "toolu_PLACEHOLDER", "name": "get_weather", "input": {"city": "Bern"}}], "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 20, "output_tokens": 30}})).unwrap();
    let c = serde_json::to_value(anthropic_to_openai_response(&r)).unwrap();
    let m = &c["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "Need the weather tool.");
    let blocks = json!([
        {"type": "thinking", "thinking": "Need the weather tool.", "signature": "sig-PLACEHOLDER-1"},
        {"type": "redacted_thinking", "data": "opaque-PLACEHOLDER"}
    ]);
    assert_eq!(m[THINKING_BLOCKS], blocks);
    // The client sends the turn back as it got it, with the tool's result.
    let up = to_anthropic(json!({"model": "m", "max_tokens": 8000, "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "Weather in Bern?"},
        {"role": "assistant", "content": null, "reasoning_content": m["reasoning_content"], "thinking_blocks": m[THINKING_BLOCKS], "tool_calls": m["tool_calls"]},
        {"role": "tool", "tool_call_id": "toolu_PLACEHOLDER", "content": "sunny"}]}));
    let turn = &up["messages"][1]["content"];
    assert_eq!(turn[0], blocks[0]);
    assert_eq!(turn[1], blocks[1]);
    assert_eq!(turn[2]["type"], "tool_use");
    assert!(up["messages"][1].get(THINKING_BLOCKS).is_none());
}

/// Reasoning across formats, streamed: thinking text in `reasoning_content` deltas as it comes,
/// then the whole signed block in one `thinking_blocks` delta when the block ends.
#[test]
fn streamed_thinking_reaches_openai_clients_with_its_signature() {
    let evs = events(&[
        r#"{"type":"message_start","message":{"id":"msg_t","type":"message","role":"assistant","model":"claude-test-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me "}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"think."}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig-PLACEHOLDER-2"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Done."}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    let (chunks, flow) = run_a2o(&evs);
    assert_eq!(flow, Flow::Done);
    let reasoning: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
    assert_eq!(reasoning, "Let me think.");
    let blocks: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"].get(THINKING_BLOCKS)).collect();
    assert_eq!(blocks, [&json!([{"type": "thinking", "thinking": "Let me think.", "signature": "sig-PLACEHOLDER-2"}])]);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Done.");
}
