//! The o200k tokenizer is loaded only when a request needs an exact token count: a gateway that
//! serves small prompts never builds its tables (about 30 MiB). One test per file: the tokenizer
//! is process-wide state, and this file is its own test process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use triage_core::tokens;

#[tokio::test]
async fn the_tokenizer_loads_on_the_first_request_that_needs_an_exact_count() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    assert!(!tokens::is_loaded(), "loaded at start-up");

    // A small OpenAI prompt: the byte bound fits every window, nothing is counted.
    for model in ["openai-model", "auto"] {
        let resp =
            post(&gw, &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()).await;
        assert_eq!(resp.status(), 200);
    }
    assert!(!tokens::is_loaded(), "loaded by a request that needed no exact count");

    // count_tokens needs the count: it loads the tables and counts exactly.
    let resp = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .header("content-type", "application/json")
        .body(json!({"model": "openai-model", "messages": [{"role": "user", "content": "Hello world"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json_body(resp).await["input_tokens"], 8);
    assert!(tokens::is_loaded());
}
