//! `POST /v1/responses` through the real server against scripted OpenAI-compatible upstreams
//! (issue 19): translation to Chat Completions, the stored conversation of
//! `previous_response_id`, `store: false`, errors before and during a stream, and the refused
//! WebSocket upgrade. The official SDK's view is in tests/python/test_responses_sdk.py.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn responses(gw: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/responses"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// `(event name, data)` of a Responses SSE body; the name and the data's `type` agree.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["type"], name.as_str());
            (name, v)
        })
        .collect()
}

#[tokio::test]
async fn responses_request_is_translated_and_answered() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = responses(
        &gw,
        &json!({"model": "openai-model", "instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
                "max_output_tokens": 100, "reasoning": {"effort": "low"}, "text": {"format": {"type": "json_object"}}, "metadata": {"k": "v"}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "openai-model");
    let v = json_body(resp).await;
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], "hello");
    assert_eq!(v["usage"]["input_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 6);
    assert_eq!(v["metadata"], json!({"k": "v"}));
    let sent = up.requests()[0].json();
    assert_eq!(
        sent,
        json!({"model": "gpt-test-upstream", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
               "max_completion_tokens": 100, "reasoning_effort": "low", "response_format": {"type": "json_object"}})
    );

    // The stored conversation comes first in the next request; store: false is never kept.
    let id = v["id"].as_str().unwrap();
    let resp =
        responses(&gw, &json!({"model": "openai-model", "previous_response_id": id, "input": "More?", "store": false}))
            .await;
    assert_eq!(resp.status(), 200);
    let sent = up.requests()[1].json();
    let roles: Vec<&str> = sent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(sent["messages"][1]["content"], "hello");
    let unstored = json_body(resp).await["id"].as_str().unwrap().to_owned();
    let resp = responses(&gw, &json!({"model": "openai-model", "previous_response_id": unstored, "input": "x"})).await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["param"], "previous_response_id");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn responses_stream_event_sequence_and_errors() {
    let stream = chunk_line("c1", r#"{"role":"assistant","content":"Hel"}"#, None)
        + &chunk_line("c1", r#"{"content":"lo"}"#, None)
        + &chunk_line("c1", "{}", Some("stop"))
        + "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test-upstream\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n"
        + "data: [DONE]\n\n";
    let up = FakeUpstream::replay(Reply::sse(&stream)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = responses(&gw, &json!({"model": "openai-model", "input": "Hi", "stream": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let ev = events(&resp.text().await.unwrap());
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    let text: String = ev
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello");
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["usage"]["output_tokens"], 2);
    assert_eq!(done["model"], "gpt-test-upstream");
    assert_eq!(up.requests()[0].json()["stream_options"], json!({"include_usage": true}));

    // An upstream that fails before the answer: OpenAI's error envelope, not a stream.
    let bad = FakeUpstream::replay(Reply::json(
        400,
        r#"{"error":{"message":"bad thing","type":"invalid_request_error","param":null,"code":null}}"#,
    ))
    .await;
    let gw = start(&one_model(&bad.url(), "")).await;
    let resp = responses(&gw, &json!({"model": "openai-model", "input": "Hi", "stream": true})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json_body(resp).await["error"]["message"], "bad thing");

    // A stream that breaks after it started ends with response.failed.
    let broken = FakeUpstream::replay(Reply::steps(
        200,
        vec![Step::Write(chunk_line("c2", r#"{"role":"assistant","content":"Hi"}"#, None).into_bytes()), Step::Reset],
    ))
    .await;
    let gw = start(&one_model(&broken.url(), "")).await;
    let resp = responses(&gw, &json!({"model": "openai-model", "input": "Hi", "stream": true})).await;
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.last().unwrap().0, "response.failed");
    assert_eq!(ev.last().unwrap().1["response"]["status"], "failed");
}

#[tokio::test]
async fn responses_refuses_websockets_and_built_in_tools_at_once() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let t = Instant::now();
    let resp = client()
        .get(gw.url("/v1/responses"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(json_body(resp).await["error"]["code"], "websocket_not_supported");
    let resp = responses(
        &gw,
        &json!({"model": "openai-model", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": []}]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["param"], "tools[0].type");
    assert!(v["error"]["message"].as_str().unwrap().contains("\"file_search\""));
    assert_eq!(up.calls(), 0);
}
