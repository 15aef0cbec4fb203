//! Provider keys never reach a client or a log line: a fake upstream quotes the key it was sent
//! in every kind of error it can send (HTTP error bodies in both wire formats, plain text, a
//! junk `Retry-After`, a 200 JSON error to a stream, a non-completion 200, in-stream error events
//! before and after the first token in both formats; the key as sent, JSON-escaped,
//! percent-encoded and in fragments), and every answer of the gateway, to both client formats,
//! streamed or not, and every log line at every level must be free of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use common::*;
use serde_json::json;

/// Placeholders shaped like real keys (with `/` and `+`, which JSON and URLs escape).
const OPENAI_KEY: &str = "sk-test-PLACEHOLDER/openai+0123456789abcdefXYZ";
const ANTHROPIC_KEY: &str = "sk-ant-test-PLACEHOLDER/anthropic+0123456789abcdef";

/// Every log line of this test binary, at every level.
static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default).lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(|| Capture)
        .with_ansi(false)
        .try_init();
}

/// The forms of `key` an upstream may quote: as sent, JSON-escaped with `\/`, percent-encoded.
fn forms(key: &str) -> Vec<String> {
    let pct: String = key
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![key.to_owned(), key.replace('/', "\\/"), pct]
}

/// The first 12-character fragment of any form of either key found in `text`, if any.
fn leak(text: &str) -> Option<String> {
    for key in [OPENAI_KEY, ANTHROPIC_KEY] {
        for form in forms(key) {
            for i in 0..=form.len() - 12 {
                let frag = &form[i..i + 12];
                if text.contains(frag) {
                    return Some(frag.to_owned());
                }
            }
        }
    }
    None
}

/// One upstream error shape: its name (also its model id and provider), the provider kind, and
/// the reply quoting the key.
fn shapes() -> Vec<(&'static str, &'static str, Reply)> {
    let ko = OPENAI_KEY;
    let ka = ANTHROPIC_KEY;
    let ko_json = ko.replace('/', "\\/");
    let ko_pct = forms(ko)[2].clone();
    let chunk = chunk_line("c1", r#"{"role":"assistant","content":"partial answer"}"#, None);
    let a_start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n";
    let a_text = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"partial answer\"}}\n\n";
    let a_error = format!(
        "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":\"bad key {ka}\"}}}}\n\n"
    );
    vec![
        (
            "o401",
            "openai",
            Reply::json(
                401,
                &format!(
                    r#"{{"error":{{"message":"Incorrect API key provided: {ko}","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
                ),
            ),
        ),
        (
            "o400",
            "openai",
            Reply::json(400, &format!(r#"{{"error":{{"message":"bad request for {ko}","param":"{ko}"}}}}"#)),
        ),
        (
            "o500text",
            "openai",
            Reply::json(500, &format!("upstream crashed; key={ko}")).header("content-type", "text/plain"),
        ),
        (
            "o429junk",
            "openai",
            Reply::json(429, &format!(r#"{{"error":{{"message":"slow down {ko_json}"}}}}"#)).header("retry-after", ko),
        ),
        (
            "o503frag",
            "openai",
            Reply::json(503, &format!(r#"{{"error":{{"message":"key {}... rejected"}}}}"#, &ko[..20])),
        ),
        ("o422pct", "openai", Reply::json(422, &format!(r#"{{"error":{{"message":"GET /v1?key={ko_pct} failed"}}}}"#))),
        ("o200json", "openai", Reply::json(200, &format!(r#"{{"error":{{"message":"quota of {ko} exhausted"}}}}"#))),
        ("osse_before", "openai", Reply::sse(&format!("data: {{\"error\":{{\"message\":\"key {ko} revoked\"}}}}\n\n"))),
        (
            "osse_after",
            "openai",
            Reply::sse_writes(&[chunk, format!("data: {{\"error\":{{\"message\":\"key {ko} revoked\"}}}}\n\n")]),
        ),
        (
            "a401",
            "anthropic",
            Reply::json(
                401,
                &format!(
                    r#"{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key {ka}"}}}}"#
                ),
            ),
        ),
        (
            "a529",
            "anthropic",
            Reply::json(
                529,
                &format!(r#"{{"type":"error","error":{{"type":"overloaded_error","message":"busy for {ka}"}}}}"#),
            ),
        ),
        ("asse_before", "anthropic", Reply::sse(&a_error)),
        ("asse_after", "anthropic", Reply::sse_writes(&[a_start.to_owned(), a_text.to_owned(), a_error.clone()])),
    ]
}

fn config(url: &str) -> String {
    let mut toml =
        String::from("tiers = [\"mid\"]\n[retry]\nnum_retries = 0\n[breaker]\nconsecutive_failures = 1000\n");
    for (name, kind, _) in shapes() {
        let env = if kind == "openai" { "TRIAGE_TEST_LEAK_OPENAI_KEY" } else { "TRIAGE_TEST_LEAK_ANTHROPIC_KEY" };
        toml.push_str(&format!(
            "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"{url}\"\napi_key_env = \"{env}\"\nfirst_byte_timeout_ms = 3000\nidle_timeout_ms = 3000\n\
             [[models]]\nid = \"{name}\"\nprovider = \"{name}\"\ntier = \"mid\"\nprice = {{ input = 1.0, output = 1.0 }}\ncontext_window = 100000\n"
        ));
    }
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_never_reach_clients_or_logs() {
    capture_logs();
    std::env::set_var("TRIAGE_TEST_LEAK_OPENAI_KEY", OPENAI_KEY);
    std::env::set_var("TRIAGE_TEST_LEAK_ANTHROPIC_KEY", ANTHROPIC_KEY);
    let replies: std::collections::HashMap<&str, Reply> = shapes().into_iter().map(|(n, _, r)| (n, r)).collect();
    let up = FakeUpstream::start(move |r, _| {
        let model = r.json()["model"].as_str().unwrap_or_default().to_owned();
        replies.get(model.as_str()).cloned().unwrap_or_else(|| Reply::json(500, "{}"))
    })
    .await;
    let gw = start(&config(&up.url())).await;

    let mut checked = 0;
    let mut redacted_seen = 0;
    for (name, _, _) in shapes() {
        for (path, stream) in [
            ("/v1/chat/completions", false),
            ("/v1/chat/completions", true),
            ("/v1/messages", false),
            ("/v1/messages", true),
        ] {
            // The fake answers by upstream model name, which is the model id here.
            let body = json!({"model": name, "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
            let resp = client()
                .post(gw.url(path))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = format!("{:?}", resp.headers());
            let text = resp.text().await.unwrap();
            let what = format!("{name} via {path} (stream {stream}): HTTP {status}\n{headers}\n{text}");
            assert!(leak(&headers).is_none(), "key in the headers of {what}");
            if let Some(frag) = leak(&text) {
                panic!("key fragment {frag:?} in the answer to {what}");
            }
            assert!(status >= 400 || text.contains("error"), "every shape is an error to the client: {what}");
            redacted_seen += usize::from(text.contains("[REDACTED]"));
            checked += 1;
        }
    }
    assert_eq!(checked, 13 * 4);
    // The messages are still relayed, only without the key (not replaced by something generic).
    assert!(redacted_seen >= 20, "only {redacted_seen} answers carried the scrubbed message");
    drop(gw);
    let logs = String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned();
    assert!(logs.contains("[REDACTED]"), "the failures were logged (scrubbed)");
    if let Some(frag) = leak(&logs) {
        let line = logs.lines().find(|l| l.contains(&frag)).unwrap_or_default();
        panic!("key fragment {frag:?} in a log line: {line}");
    }
}
