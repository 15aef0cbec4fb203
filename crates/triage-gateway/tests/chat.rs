//! Non-streamed chat completions through the real server: forwarding, headers, usage, and every
//! error path (shared cases C11, C27, C30, C32 on the OpenAI endpoint).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn every_field_is_forwarded_and_only_model_is_rewritten() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let req = json!({
        "model": "openai-model",
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": "low"}}], "name": "u1"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "temperature": 0.3, "top_p": 0.9, "max_completion_tokens": 50, "stop": ["END"], "seed": 42,
        "user": "user-PLACEHOLDER", "metadata": {"trace": "t-1"}, "logprobs": true, "top_logprobs": 2,
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "service_tier": "auto", "a_future_field": {"x": [1, 2]}
    });
    let resp = post(&gw, &req.to_string()).await;
    assert_eq!(resp.status(), 200);
    let mut expected = req.clone();
    expected["model"] = json!("gpt-test-upstream");
    let sent = up.requests()[0].json();
    assert_eq!(sent, expected);
    assert_eq!(up.requests()[0].path, "/v1/chat/completions");
    // The answer comes back unchanged (fields Triage does not interpret included).
    let body = json_body(resp).await;
    assert_eq!(body, serde_json::from_str::<serde_json::Value>(COMPLETION).unwrap());
}

#[tokio::test]
async fn route_headers_and_request_id_on_every_answer() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "req-PLACEHOLDER-1")
        .body(r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-request-id"], "req-PLACEHOLDER-1");
    assert_eq!(h["x-triage-model"], "openai-model");
    assert_eq!(h["x-triage-tier"], "mid");
    assert_eq!(
        h["x-triage-route-reason"],
        "auto: cheapest capable tier mid (skipped local), cheapest model openai-model"
    );

    // Errors carry a request id too (a fresh UUID when the client sent none).
    let resp = post(&gw, "{").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-request-id"].to_str().unwrap().len(), 36);
}

/// Shared case C27: usage passes through exactly, reasoning breakdown included.
#[tokio::test]
async fn c27_usage_is_returned_exactly() {
    let completion = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"3"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2008,"completion_tokens":266,"total_tokens":2274,"completion_tokens_details":{"reasoning_tokens":261}}}"#;
    let up = FakeUpstream::replay(Reply::json(200, completion)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let body = json_body(post(&gw, r#"{"model":"openai-model","reasoning_effort":"medium","messages":[{"role":"user","content":"How many r's in strawberry?"}]}"#).await).await;
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens":2008,"completion_tokens":266,"total_tokens":2274,"completion_tokens_details":{"reasoning_tokens":261}})
    );
    assert_eq!(up.requests()[0].json()["reasoning_effort"], "medium");
}

/// Shared case C11 point 4: non-streamed tool calls with `finish_reason: "stop"`.
#[tokio::test]
async fn c11_non_streamed_tool_calls_finish_as_tool_calls() {
    let completion = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_PLACEHOLDER","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Lima, Peru\"}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let up = FakeUpstream::replay(Reply::json(200, completion)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let body = json_body(post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"Lima?"}],"tools":[{"type":"function","function":{"name":"get_weather"}}]}"#).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["id"], "call_PLACEHOLDER");
    assert!(body["choices"][0]["message"]["content"].is_null());
}

async fn expect_400(gw: &Gateway, body: &str, mention: &str) -> serde_json::Value {
    let resp = post(gw, body).await;
    assert_eq!(resp.status(), 400, "{body}");
    let v = json_body(resp).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(mention), "message {msg:?} should mention {mention:?}");
    assert!(!msg.contains(".rs") && !msg.contains("src/"), "no internals in {msg:?}");
    v
}

/// Shared case C30: malformed requests get 400 naming the field, and reach no upstream.
#[tokio::test]
async fn c30_malformed_requests_are_400_and_never_reach_the_upstream() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let v = expect_400(&gw, r#"{"model":"openai-model"}"#, "messages").await;
    assert_eq!(v["error"]["param"], "messages");
    let v = expect_400(&gw, r#"{"model":"openai-model","messages":"hi"}"#, "messages").await;
    assert_eq!(v["error"]["param"], "messages");
    let v = expect_400(
        &gw,
        r#"{"model":"openai-model","messages":[{"role":"user","content":42}]}"#,
        "string or an array of content parts",
    )
    .await;
    assert_eq!(v["error"]["param"], "messages[0].content");
    expect_400(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}"#, "not valid JSON").await;
    expect_400(&gw, r#"{"model":"openai-model","messages":[]}"#, "at least one message").await;
    let v = expect_400(
        &gw,
        r#"{"model":"openai-model","messages":[{"role":"robot","content":"hi"}]}"#,
        "unknown variant `robot`",
    )
    .await;
    assert_eq!(v["error"]["param"], "messages[0].role");
    expect_400(&gw, r#"{"messages":[{"role":"user","content":"hi"}]}"#, "model").await;
    expect_400(
        &gw,
        r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#,
        "max_tokens",
    )
    .await;
    expect_400(
        &gw,
        r#"{"model":"openai-model","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
        "image_url",
    )
    .await;
    expect_400(&gw, r#"[1,2]"#, "JSON object").await;
    expect_400(
        &gw,
        r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]} trailing"#,
        "not valid JSON",
    )
    .await;
    assert_eq!(up.calls(), 0);
}

/// Shared case C30 V8: a body over the limit is refused at once with 413, declared or not.
#[tokio::test]
async fn c30_oversized_body_is_413() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(
        &one_model(&up.url(), "[server]\nmax_body_bytes = 1048576\n")
            .replace("[server]\nshutdown_grace_secs = 5\n", ""),
    )
    .await;
    let big = format!(
        r#"{{"model":"openai-model","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let sent = Instant::now();
    let resp = post(&gw, &big).await;
    assert_eq!(resp.status(), 413);
    assert!(sent.elapsed() < Duration::from_secs(2));
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "request_too_large");
    // Without content-length (chunked), the limit still holds.
    let stream = futures_util::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])));
    let resp =
        client().post(gw.url("/v1/chat/completions")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(up.calls(), 0);
}

/// Shared case C30 V9: an upstream 422 is relayed as a 4xx with its body, never 200/null.
#[tokio::test]
async fn c30_upstream_4xx_is_passed_through() {
    let up = FakeUpstream::replay(Reply::json(422, r#"{"error":{"message":"invalid request"}}"#)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["x-triage-model"], "openai-model");
    assert_eq!(json_body(resp).await, json!({"error":{"message":"invalid request"}}));
}

#[tokio::test]
async fn upstream_429_keeps_status_and_retry_after() {
    let up = FakeUpstream::replay(
        Reply::json(429, r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#).header("retry-after", "20"),
    )
    .await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "20");
}

#[tokio::test]
async fn upstream_500_is_a_502_with_the_upstream_message() {
    let up =
        FakeUpstream::replay(Reply::json(500, r#"{"error":{"message":"upstream boom","type":"server_error"}}"#)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 502);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["message"], "upstream oa answered HTTP 500: upstream boom");
    assert_eq!(v["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    // A port with nothing listening: bind, read the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = start(&one_model(&format!("http://127.0.0.1:{port}/v1"), "")).await;
    // The first probe marks the provider down; an explicit model request still reports 503.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(json_body(resp).await["error"]["code"], "provider_unavailable");

    let up = FakeUpstream::replay(Reply::silence(Duration::from_secs(10))).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 504);
}

#[tokio::test]
async fn connection_refused_mid_life_is_a_502() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let url = up.url();
    let gw = start(&one_model(&url, "")).await;
    // Wait for the first probe to find the provider up, then take it away.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
        if h["deployments"][0]["probe"] == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "the first probe never ran: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 502);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "upstream_unavailable");
}

#[tokio::test]
async fn the_provider_key_is_sent_upstream_and_never_returned() {
    let key = "sk-test-PLACEHOLDER-abcdef0123456789";
    std::env::set_var("TRIAGE_TEST_KEY_ECHO", key);
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {key}","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
    );
    let up = FakeUpstream::start(move |_, _| Reply::json(401, &body).header("x-echo", "k")).await;
    let toml = one_model(&up.url(), "")
        .replace("kind = \"openai\"", "kind = \"openai\"\napi_key_env = \"TRIAGE_TEST_KEY_ECHO\"");
    let gw = start(&toml).await;
    let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    // The upstream refused the gateway's provider key: not the client's 401 (issue 18, item 5).
    assert_eq!(resp.status(), 502);
    let headers = format!("{:?}", resp.headers());
    let text = resp.text().await.unwrap();
    assert!(!text.contains(key) && !headers.contains(key), "{text}");
    assert!(text.contains("[REDACTED]"));
    assert!(text.contains("\"code\":\"upstream_auth_failed\""), "{text}");
    assert_eq!(up.requests()[0].header("authorization"), Some(format!("Bearer {key}").as_str()));
}

#[tokio::test]
async fn unknown_model_is_404_with_the_valid_names() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 404);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(
        v["error"]["message"],
        "model \"no-such-model\" does not exist; valid names: auto, local, mid, frontier, openai-model"
    );
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = client().get(gw.url("/v1/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(json_body(resp).await["error"]["code"], "not_found");
}
