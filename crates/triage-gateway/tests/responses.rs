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

/// Codex CLI 0.171's request shape (seen against `triage serve`): function tools, a `namespace`
/// tool (a group of function tools), and the built-in `web_search` offered with every request.
/// Class: tools a harness offers that only OpenAI defines. The namespace's tools go upstream as
/// function tools `<namespace>__<name>` and a call of one comes back with its `namespace`; the
/// built-in tool offered beside function tools is left out (named in `x-triage-dropped-tools`).
#[tokio::test]
async fn harness_tool_kinds_namespace_and_offered_built_ins_are_translated() {
    let call = r#"{"id":"chatcmpl-2","object":"chat.completion","created":1700000000,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"multi_agent_v1__close_agent","arguments":"{\"id\":\"x\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
    let up = FakeUpstream::replay(Reply::json(200, call)).await;
    let gw = start(&one_model(&up.url(), "")).await;
    let tools = json!([
        {"type": "function", "name": "exec_command", "strict": false, "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
         "tools": [{"type": "function", "name": "close_agent", "description": "Close an agent.", "strict": false, "parameters": {"type": "object"}}]},
        {"type": "web_search", "external_web_access": false}
    ]);
    let body = json!({"model": "openai-model", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Close it"}]},
        {"type": "function_call", "call_id": "call_0", "name": "close_agent", "namespace": "multi_agent_v1", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_0", "output": "not found"}
    ], "tools": tools, "tool_choice": "auto", "store": false});
    let resp = responses(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-dropped-tools"], "web_search");
    let v = json_body(resp).await;
    assert_eq!(v["output"][0]["type"], "function_call");
    assert_eq!(v["output"][0]["name"], "close_agent");
    assert_eq!(v["output"][0]["namespace"], "multi_agent_v1");
    assert_eq!(v["output"][0]["arguments"], "{\"id\":\"x\"}");
    let sent = up.requests()[0].json();
    let names: Vec<&str> =
        sent["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["exec_command", "multi_agent_v1__close_agent"]);
    assert_eq!(sent["messages"][1]["tool_calls"][0]["function"]["name"], "multi_agent_v1__close_agent");

    // Streamed: the call's events carry the namespace too.
    let up = FakeUpstream::replay(Reply::sse(&format!(
        "{}{}data: [DONE]\n\n",
        chunk_line("c", r#"{"role":"assistant","tool_calls":[{"index":0,"id":"call_b","type":"function","function":{"name":"multi_agent_v1__close_agent","arguments":"{}"}}]}"#, None),
        chunk_line("c", "{}", Some("tool_calls"))
    )))
    .await;
    let gw = start(&one_model(&up.url(), "")).await;
    let mut body = body;
    body["stream"] = json!(true);
    let resp = responses(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let ev = events(&resp.text().await.unwrap());
    let added = ev.iter().find(|(n, _)| n == "response.output_item.added").unwrap();
    assert_eq!(added.1["item"]["namespace"], "multi_agent_v1");
    assert_eq!(added.1["item"]["name"], "close_agent");
    let done = ev.iter().find(|(n, _)| n == "response.completed").unwrap();
    assert_eq!(done.1["response"]["output"][0]["namespace"], "multi_agent_v1");
}

fn databases() -> Vec<String> {
    let mut v = vec![temp_db()];
    if let Ok(pg) = std::env::var("TRIAGE_TEST_POSTGRES_URL") {
        v.push(pg);
    }
    v
}

async fn keyed_responses(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/responses"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// `previous_response_id` is served from the database (SQLite, and PostgreSQL when
/// `TRIAGE_TEST_POSTGRES_URL` is set): a conversation continues across a restart of the gateway
/// (streamed turns included: stored before `response.completed`), only the key that made it
/// may continue it, `store: false` is never kept, and an unknown id is a clear 400.
#[tokio::test]
async fn previous_response_id_is_served_from_the_database_across_restarts() {
    for db in databases() {
        let up = FakeUpstream::start(|req, _| {
            let n = req.json()["messages"].as_array().map_or(0, Vec::len);
            if req.json()["stream"] == true {
                Reply::sse(&format!(
                    "{}{}data: [DONE]\n\n",
                    chunk_line("c", &format!(r#"{{"role":"assistant","content":"answer {n}"}}"#), None),
                    chunk_line("c", "{}", Some("stop"))
                ))
            } else {
                Reply::json(200, &COMPLETION.replace("\"hello\"", &format!("\"answer {n}\"")))
            }
        })
        .await;
        let store = triage_store::Store::connect(&db).await.unwrap();
        let new_key = triage_store::NewKey { user: "u".into(), team: "t".into(), ..Default::default() };
        let (mine_rec, mine) = store.create_key(&new_key).await.unwrap();
        let (_, theirs) = store.create_key(&new_key).await.unwrap();
        let config = format!("auth = \"keys\"\n{}\n[spend]\ndatabase = \"{db}\"\n", one_model(&up.url(), ""));

        let gw = start(&config).await;
        let a = keyed_responses(&gw, &mine, &json!({"model": "openai-model", "input": "First"})).await;
        assert_eq!(a.status(), 200);
        let a = json_body(a).await["id"].as_str().unwrap().to_owned();
        let b = keyed_responses(
            &gw,
            &mine,
            &json!({"model": "openai-model", "input": "Second", "previous_response_id": a, "stream": true}),
        )
        .await;
        assert_eq!(b.status(), 200);
        let ev = events(&b.text().await.unwrap());
        let b = ev.last().unwrap().1["response"]["id"].as_str().unwrap().to_owned();
        drop(gw);

        // A new gateway process on the same database.
        let gw = start(&config).await;
        let c =
            keyed_responses(&gw, &mine, &json!({"model": "openai-model", "input": "Third", "previous_response_id": b}))
                .await;
        assert_eq!(c.status(), 200, "{db}");
        let v = json_body(c).await;
        assert_eq!(v["output"][0]["content"][0]["text"], "answer 5");
        let c = v["id"].as_str().unwrap().to_owned();
        let sent = up.requests()[2].json();
        let turns: Vec<(String, String)> = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap().to_owned()))
            .collect();
        let turn = |r: &str, c: &str| (r.to_owned(), c.to_owned());
        assert_eq!(
            turns,
            [
                turn("user", "First"),
                turn("assistant", "answer 1"),
                turn("user", "Second"),
                turn("assistant", "answer 3"),
                turn("user", "Third")
            ]
        );

        // Another key cannot continue it; the answer is the same as for an unknown id.
        let other =
            keyed_responses(&gw, &theirs, &json!({"model": "openai-model", "input": "x", "previous_response_id": b}))
                .await;
        assert_eq!(other.status(), 400);
        let e = json_body(other).await;
        assert_eq!(e["error"]["param"], "previous_response_id");
        assert!(e["error"]["message"].as_str().unwrap().contains("no response"), "{e}");

        // store: false is never kept.
        let d = keyed_responses(&gw, &mine, &json!({"model": "openai-model", "input": "x", "store": false})).await;
        let d = json_body(d).await["id"].as_str().unwrap().to_owned();
        let cont =
            keyed_responses(&gw, &mine, &json!({"model": "openai-model", "input": "x", "previous_response_id": d}))
                .await;
        assert_eq!(cont.status(), 400);
        let unknown = keyed_responses(
            &gw,
            &mine,
            &json!({"model": "openai-model", "input": "x", "previous_response_id": "resp_nope"}),
        )
        .await;
        assert_eq!(unknown.status(), 400);
        let e = json_body(unknown).await;
        assert!(e["error"]["message"].as_str().unwrap().contains("\"resp_nope\""), "{e}");
        assert_eq!(up.calls(), 4, "refused requests never reach the upstream");
        // Each response row holds only its own turn's items (its input, then its output).
        let triage_store::Conversation::Found(rows) = store.conversation(&c, Some(&mine_rec.id)).await.unwrap() else {
            panic!("the conversation of {c} is stored")
        };
        let rows: Vec<Vec<Value>> = rows.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
        assert_eq!(rows.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(rows[1][0]["content"], "Second");
        assert_eq!(rows[2][1]["content"][0]["text"], "answer 5");
        assert_eq!(
            store.conversation(&a, None).await.unwrap(),
            triage_store::Conversation::Unknown,
            "a key's response is not visible without the key"
        );
    }
}
