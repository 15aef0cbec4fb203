//! Streaming through the real server against scripted upstreams: the shared cases C02, C04,
//! C05, C06, C09, C11, C12, C25 and C28 (OpenAI inbound, OpenAI-compatible upstream).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

const STREAM_REQ: &str =
    r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"Say hello world"}]}"#;

/// Shared case C02 variant A's TCP writes.
fn c02_writes() -> Vec<String> {
    vec![
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel".to_owned(),
        "lo\"},\"finish_reason\":null}]}\r\n\r\ndata:{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":null}]}\r\n\r\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r".to_owned(),
        "\n\r\ndata: [DONE]\r\n\r\n".to_owned(),
    ]
}

async fn stream_body(gw: &Gateway, req: &str) -> (reqwest::header::HeaderMap, String) {
    let resp = post(gw, req).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (headers, resp.text().await.unwrap())
}

fn assert_c02(body: &str) {
    let data = sse_data(body);
    assert_eq!(data.len(), 4, "3 chunks and one [DONE]: {data:?}");
    assert_eq!(data[3], "[DONE]");
    let c = chunks(&data);
    assert_eq!(content(&c), "Hello world");
    assert_eq!(c[2]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn c02_events_split_across_reads_with_crlf() {
    let up = FakeUpstream::replay(Reply::sse_writes(&c02_writes())).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (headers, body) = stream_body(&gw, STREAM_REQ).await;
    assert_c02(&body);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.get("content-length").is_none());
    assert_eq!(headers["x-triage-model"], "openai-model");
    assert_eq!(up.calls(), 1, "no retry");
}

#[tokio::test]
async fn c02_one_byte_per_write() {
    let bytes: Vec<Vec<u8>> = c02_writes().concat().into_bytes().into_iter().map(|b| vec![b]).collect();
    let up = FakeUpstream::replay(Reply::sse_writes(&bytes)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    assert_c02(&body);
}

fn c04_upstream(with_done: bool) -> String {
    let mut s =
        chunk_line("c4", r#"{"role":"assistant","content":"pong"}"#, None) + &chunk_line("c4", "{}", Some("stop"));
    if with_done {
        s += "data: [DONE]\n\n";
    }
    s
}

#[tokio::test]
async fn c04_exactly_one_done_whether_or_not_upstream_sends_it() {
    for with_done in [true, false] {
        let up = FakeUpstream::replay(Reply::sse(&c04_upstream(with_done))).await;
        let gw = start(&one_model(&up.url(), "")).await;
        let (_, body) =
            stream_body(&gw, r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"ping"}]}"#)
                .await;
        let data = sse_data(&body);
        assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1, "{body}");
        assert_eq!(data.last().unwrap(), "[DONE]");
        assert_eq!(content(&chunks(&data)), "pong");
    }
}

#[tokio::test]
async fn c04_close_before_finish_is_an_error_not_a_clean_end() {
    let up = FakeUpstream::replay(Reply::sse(&chunk_line("c4", r#"{"role":"assistant","content":"po"}"#, None))).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let data = sse_data(&body);
    assert!(!data.contains(&"[DONE]".to_owned()), "{body}");
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].as_str().unwrap().contains("closed before"), "{last}");
    assert_eq!(content(&chunks(&data[..1].to_vec())), "po");
}

const C05_UPSTREAM: &str = "data: {\"id\":\"c5\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi there!\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c5\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\ndata: [DONE]\n\n";

fn c05_standard_upstream() -> String {
    chunk_line("c5", r#"{"role":"assistant","content":"Hi there!"}"#, None)
        + &chunk_line("c5", "{}", Some("stop"))
        + "data: {\"id\":\"c5\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\ndata: [DONE]\n\n"
}

#[tokio::test]
async fn c05_usage_arrives_in_one_final_chunk_when_asked() {
    for upstream in [C05_UPSTREAM.to_owned(), c05_standard_upstream()] {
        let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
        let gw = start(&one_model(&up.url(), "")).await;
        let (_, body) = stream_body(
            &gw,
            r#"{"model":"openai-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello!"}]}"#,
        )
        .await;
        let data = sse_data(&body);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let c = chunks(&data);
        let last = c.last().unwrap();
        assert_eq!(last["choices"], serde_json::json!([]));
        assert_eq!(last["usage"], serde_json::json!({"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}));
        for earlier in &c[..c.len() - 1] {
            assert!(earlier.get("usage").is_none_or(|u| u.is_null()), "{earlier}");
            assert_eq!(earlier["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(c[c.len() - 2]["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn c05_d_and_c28_no_usage_chunk_unless_asked_but_upstream_is_asked() {
    let up = FakeUpstream::replay(Reply::sse(&c05_standard_upstream())).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) =
        stream_body(&gw, r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"Hello"}]}"#)
            .await;
    let c = chunks(&sse_data(&body));
    assert!(c.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()), "{body}");
    assert!(c.iter().all(|c| c.get("usage").is_none()));
    let sent = up.requests()[0].json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "gpt-test-upstream");
}

#[tokio::test]
async fn c06_opening_role_only_chunk_is_forwarded() {
    let upstream = chunk_line("c6", r#"{"role":"assistant","content":""}"#, None)
        + &chunk_line("c6", r#"{"content":"1"}"#, None)
        + &chunk_line("c6", "{}", Some("stop"))
        + "data: [DONE]\n\n";
    let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let c = chunks(&sse_data(&body));
    assert_eq!(c.len(), 3);
    assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(c[1]["choices"][0]["delta"].get("role").is_none());
    assert_eq!(content(&c), "1");
    assert_eq!(c[2]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn c06_role_is_added_when_the_upstream_omits_it() {
    let upstream = chunk_line("x", r#"{"content":"a"}"#, None) + &chunk_line("x", "{}", Some("stop"));
    let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let c = chunks(&sse_data(&body));
    assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
}

#[tokio::test]
async fn c09_repeated_tool_call_metadata_is_sent_once() {
    let upstream = [
        r#"data: {"id":"c9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Par"}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_PLACEHOLDER1","type":"function","function":{"name":"get_weather","arguments":"is\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        "data: [DONE]",
    ]
    .join("\n\n")
        + "\n\n";
    let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let req = r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"Weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}"#;
    let (_, body) = stream_body(&gw, req).await;
    let c = chunks(&sse_data(&body));
    let (mut name, mut args, mut ids) = (String::new(), String::new(), Vec::new());
    for ch in &c {
        for tc in ch["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(tc["index"], 0);
            name += tc["function"]["name"].as_str().unwrap_or("");
            args += tc["function"]["arguments"].as_str().unwrap_or("");
            if let Some(id) = tc["id"].as_str() {
                ids.push(id.to_owned());
            }
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(ids, ["call_PLACEHOLDER1"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&args).unwrap(), serde_json::json!({"city":"Paris"}));
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn c11_stop_after_streamed_tool_call_becomes_tool_calls() {
    let upstream = [
        r#"data: {"id":"c11","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_PLACEHOLDER","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Lima, Peru\"}"}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c11","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#,
        "data: [DONE]",
    ]
    .join("\n\n")
        + "\n\n";
    let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let req = r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"What's the weather in Lima?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}]}"#;
    let (_, body) = stream_body(&gw, req).await;
    let c = chunks(&sse_data(&body));
    let tc = &c[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(tc["id"], "call_PLACEHOLDER");
    assert_eq!(tc["function"]["arguments"], "{\"location\":\"Lima, Peru\"}");
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

/// Shared case C12: chunks leave the gateway as they arrive, not all at the end.
#[tokio::test]
async fn c12_chunks_are_not_buffered() {
    let steps = vec![
        Step::Write(chunk_line("c12", r#"{"role":"assistant","content":"one"}"#, None).into_bytes()),
        Step::Sleep(Duration::from_millis(1500)),
        Step::Write(chunk_line("c12", r#"{"content":" two"}"#, None).into_bytes()),
        Step::Sleep(Duration::from_millis(1500)),
        Step::Write((chunk_line("c12", r#"{"content":" three"}"#, Some("stop")) + "data: [DONE]\n\n").into_bytes()),
    ];
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let sent = Instant::now();
    let resp = post(
        &gw,
        r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"Count to three slowly"}]}"#,
    )
    .await;
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        let s = String::from_utf8(b.to_vec()).unwrap();
        for word in ["one", " two", " three"] {
            if s.contains(&format!("\"content\":\"{word}\"")) {
                arrivals.push(sent.elapsed());
            }
        }
        text += &s;
    }
    assert_eq!(arrivals.len(), 3, "{text}");
    assert!(arrivals[0] < Duration::from_millis(500), "first chunk after {:?}", arrivals[0]);
    for w in arrivals.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap > Duration::from_millis(1000) && gap < Duration::from_millis(2000), "gap {gap:?}");
    }
}

/// Shared case C25 H: a stream that stalls after content ends with an error event within the
/// 2 s idle timeout (+0.5 s), and without `[DONE]`.
#[tokio::test]
async fn c25_stalled_stream_ends_with_an_error_event() {
    let steps = vec![
        Step::Write(chunk_line("c25", r#"{"role":"assistant","content":"Once"}"#, None).into_bytes()),
        Step::Write(chunk_line("c25", r#"{"content":" upon"}"#, None).into_bytes()),
        Step::Hang,
    ];
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let sent = Instant::now();
    let (_, body) = stream_body(
        &gw,
        r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"Tell me a story"}]}"#,
    )
    .await;
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(2500), "ended after {took:?}");
    let data = sse_data(&body);
    assert!(!data.contains(&"[DONE]".to_owned()));
    let err: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert!(err["error"]["message"].as_str().unwrap().contains("sent nothing for 2000 ms"));
    assert_eq!(content(&chunks(&data[..2].to_vec())), "Once upon");
}

/// Shared case C25 S: a slow but healthy stream (a chunk every 1.5 s for 12 s) is never cut.
#[tokio::test]
async fn c25_slow_healthy_stream_completes() {
    let mut steps = vec![Step::Write(chunk_line("s", r#"{"role":"assistant","content":"0"}"#, None).into_bytes())];
    for i in 1..8 {
        steps.push(Step::Sleep(Duration::from_millis(1500)));
        steps.push(Step::Write(chunk_line("s", &format!(r#"{{"content":"{i}"}}"#), None).into_bytes()));
    }
    steps.push(Step::Write((chunk_line("s", "{}", Some("stop")) + "data: [DONE]\n\n").into_bytes()));
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(content(&chunks(&data)), "01234567");
}

/// Shared case C25 F without a fallback: no first byte within 2 s → 504 with a timeout body.
#[tokio::test]
async fn c25_no_first_byte_is_a_504() {
    let up = FakeUpstream::replay(Reply::silence(Duration::from_secs(10))).await;
    let gw = start(&one_model(&up.url(), "[retry]\nnum_retries = 0\n")).await;
    let sent = Instant::now();
    let resp = post(&gw, STREAM_REQ).await;
    assert_eq!(resp.status(), 504);
    assert!(sent.elapsed() < Duration::from_millis(3000));
    assert_eq!(up.calls(), 1);
    let body = json_body(resp).await;
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn reset_mid_stream_gives_an_error_event() {
    let steps =
        vec![Step::Write(chunk_line("r", r#"{"role":"assistant","content":"par"}"#, None).into_bytes()), Step::Reset];
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let data = sse_data(&body);
    assert!(!data.contains(&"[DONE]".to_owned()));
    let err: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(err["error"]["type"], "api_error");
}

#[tokio::test]
async fn in_band_error_after_200_is_relayed_as_an_error_event() {
    let upstream = chunk_line("e", r#"{"role":"assistant","content":"x"}"#, None)
        + "data: {\"error\":{\"message\":\"model overloaded\",\"type\":\"server_error\"}}\n\n";
    let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let data = sse_data(&body);
    let err: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("model overloaded"), "{err}");
    assert!(!data.contains(&"[DONE]".to_owned()));
}

#[tokio::test]
async fn multibyte_utf8_split_across_writes_survives() {
    let line = chunk_line("u", r#"{"role":"assistant","content":"héllo 東京"}"#, Some("stop"));
    let bytes = line.as_bytes();
    let cut = line.find('東').unwrap() + 1; // inside the 3-byte character
    let up = FakeUpstream::replay(Reply::sse_writes(&[&bytes[..cut], &bytes[cut..]])).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    assert_eq!(content(&chunks(&sse_data(&body))), "héllo 東京");
}

#[tokio::test]
async fn sse_comments_keep_a_slow_stream_alive() {
    let mut steps = vec![Step::Write(chunk_line("k", r#"{"role":"assistant","content":"a"}"#, None).into_bytes())];
    for _ in 0..3 {
        steps.push(Step::Sleep(Duration::from_millis(1200)));
        steps.push(Step::Write(b": keep-alive\n\n".to_vec()));
    }
    steps.push(Step::Write((chunk_line("k", r#"{"content":"b"}"#, Some("stop")) + "data: [DONE]\n\n").into_bytes()));
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let (_, body) = stream_body(&gw, STREAM_REQ).await;
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(content(&chunks(&data)), "ab");
}

/// A client that disconnects mid-stream cancels the upstream request: the gateway closes the
/// upstream connection, so the upstream's next writes fail.
#[tokio::test]
async fn client_disconnect_closes_the_upstream_connection() {
    let mut steps = vec![Step::Write(chunk_line("d", r#"{"role":"assistant","content":"a"}"#, None).into_bytes())];
    for _ in 0..100 {
        steps.push(Step::Sleep(Duration::from_millis(50)));
        steps.push(Step::Write(chunk_line("d", r#"{"content":"b"}"#, None).into_bytes()));
    }
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, STREAM_REQ).await;
    let mut s = resp.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"a\""));
    drop(s);
    // The fake records a failed write as a finished connection; wait for it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while up.aborted() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.aborted(), 1, "the upstream connection must be closed after the client left");
}
