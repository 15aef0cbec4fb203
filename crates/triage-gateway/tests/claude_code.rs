//! Claude Code as a client (issue 19): what it sends, through the real server, against scripted
//! Anthropic- and OpenAI-speaking upstreams; its model names routed by aliases and glob patterns;
//! its own boilerplate not taken for personal data; and provider health that does not invent
//! outages (a failed probe, an upstream 401).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// `openai-model` (mid) and `anthropic-model` (frontier), a `local`-tier OpenAI model
/// `small-model`, role `search` on `local`, and Claude Code's model names mapped by aliases.
fn config(oa: &str, an: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
[roles]
search = "local"
[aliases]
"claude-sonnet-4-6" = "mid"
"claude-*haiku*" = "role:search"
"claude-*opus*" = "auto"
"claude-*" = "frontier"
[retry]
num_retries = 0
[providers.oa]
kind = "openai"
base_url = "{oa}"
[providers.an]
kind = "anthropic"
base_url = "{an}"
api_key_env = "TRIAGE_TEST_ANTHROPIC_KEY"
[[models]]
id = "small-model"
provider = "oa"
upstream_model = "small-upstream"
tier = "local"
price = {{ input = 0.1, output = 0.2 }}
context_window = 128000
capabilities = ["tools"]
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
"#
    )
}

fn anthropic_message(text: &str) -> String {
    json!({"id":"msg_PLACEHOLDER","type":"message","role":"assistant","model":"claude-test-upstream","content":[{"type":"thinking","thinking":"plan","signature":"sig-PLACEHOLDER"},{"type":"text","text":text}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":14,"output_tokens":5}}).to_string()
}

/// A request shaped like Claude Code's: the system prompt as cached blocks with its own
/// boilerplate (a co-author line with a no-reply address, example addresses and IPs), a
/// `system`-role message inside `messages`, an earlier assistant turn with a signed thinking
/// block and a tool call, 22 tools with `cache_control`, `max_tokens` 32,000, thinking on.
fn claude_code_request(model: &str) -> Value {
    let tools: Vec<Value> = (0..22)
        .map(|i| {
            json!({"name": format!("Tool{i}"), "description": format!("Tool number {i}. Example: user@example.com, host 192.0.2.10."),
                   "input_schema": {"type":"object","properties":{"path":{"type":"string"}},"required":["path"]},
                   "cache_control": {"type":"ephemeral"}})
        })
        .collect();
    json!({
        "model": model,
        "max_tokens": 32000,
        "stream": false,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "metadata": {"user_id": "user_PLACEHOLDER_account__session_PLACEHOLDER"},
        "system": [
            {"type":"text","text":"You are Claude Code, Anthropic's official CLI for Claude.","cache_control":{"type":"ephemeral"}},
            {"type":"text","text":"When you commit, end the message with:\n\nGenerated with [Claude Code](https://claude.ai/code)\n\nCo-Authored-By: Claude <noreply@anthropic.com>\nServers in examples use 203.0.113.5 and 198.51.100.7; mail goes to you@example.com.","cache_control":{"type":"ephemeral"}}
        ],
        "messages": [
            {"role":"user","content":[{"type":"text","text":"List the files.","cache_control":{"type":"ephemeral"}}]},
            {"role":"system","content":"<system-reminder>The working directory is /repo.</system-reminder>"},
            {"role":"assistant","content":[
                {"type":"thinking","thinking":"I should list them.","signature":"EqQBCgIYAhIM-PLACEHOLDER"},
                {"type":"tool_use","id":"toolu_01","name":"Tool3","input":{"path":"."}}
            ]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"a.rs\nb.rs","cache_control":{"type":"ephemeral"}}]}
        ],
        "tools": tools
    })
}

async fn setup() -> (FakeUpstream, FakeUpstream, Gateway) {
    std::env::set_var("TRIAGE_TEST_ANTHROPIC_KEY", "sk-ant-test-PLACEHOLDER");
    let o = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let a = FakeUpstream::replay(Reply::json(200, &anthropic_message("done"))).await;
    let gw = start(&config(&o.url(), &a.url())).await;
    (o, a, gw)
}

async fn messages(gw: &Gateway, body: &Value, beta: Option<&str>) -> reqwest::Response {
    let mut b = client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-ant-client-PLACEHOLDER");
    if let Some(v) = beta {
        b = b.header("anthropic-beta", v);
    }
    b.body(body.to_string()).send().await.unwrap()
}

const BETA: &str = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14";

/// The request Claude Code sends first failed with `messages[1].role: unknown variant "system"`.
#[tokio::test]
async fn claude_code_request_reaches_anthropic_with_system_messages_folded_and_beta_forwarded() {
    let (o, a, gw) = setup().await;
    let resp = messages(&gw, &claude_code_request("anthropic-model"), Some(BETA)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(resp.headers()["x-triage-model"], "anthropic-model");
    let v = json_body(resp).await;
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["signature"], "sig-PLACEHOLDER");
    assert_eq!(v["content"][1]["text"], "done");

    let sent = &a.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("anthropic-beta"), Some(BETA));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-test-PLACEHOLDER"), "Triage's key, never the client's");
    let body = sent.json();
    let roles: Vec<&str> = body["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    let system = body["system"].as_array().unwrap();
    assert_eq!(system.len(), 3);
    assert_eq!(system[0]["cache_control"]["type"], "ephemeral");
    assert_eq!(system[2]["text"], "<system-reminder>The working directory is /repo.</system-reminder>");
    assert_eq!(body["messages"][1]["content"][0]["signature"], "EqQBCgIYAhIM-PLACEHOLDER");
    assert_eq!(body["tools"].as_array().unwrap().len(), 22);
    assert_eq!(body["tools"][21]["cache_control"]["type"], "ephemeral");
    assert_eq!(body["max_tokens"], 32000);
    assert_eq!(body["thinking"]["budget_tokens"], 4096);
    assert_eq!(body["model"], "claude-test-upstream");
    assert_eq!(o.calls(), 0);

    // Routed to an OpenAI-compatible model, the beta header is not sent on.
    let resp = messages(&gw, &claude_code_request("openai-model"), Some(BETA)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let sent = &o.requests()[0];
    assert_eq!(sent.header("anthropic-beta"), None);
    let body = sent.json();
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(body["messages"][0]["content"].as_str().unwrap().contains("working directory is /repo"));
    assert!(body["messages"].as_array().unwrap()[1..].iter().all(|m| m["role"] != "system"));
}

/// Claude Code's model names become routing hints: exact aliases and glob patterns to a tier,
/// a role or `auto`; `/v1/models` lists the names and the patterns.
#[tokio::test]
async fn claude_code_model_names_route_by_alias_and_pattern() {
    let (_o, _a, gw) = setup().await;
    for (name, tier, model, reason) in [
        ("claude-sonnet-4-6", "mid", "openai-model", "tier mid, cheapest model openai-model"),
        ("claude-haiku-4-5-20251001", "local", "small-model", "role:search -> tier local, cheapest model small-model"),
        // `auto` (the rule-based scorer in tests): the cheapest capable tier.
        (
            "claude-opus-4-1-20250805",
            "local",
            "small-model",
            "auto: cheapest capable tier local, cheapest model small-model",
        ),
        ("claude-sonnet-4-5-20250929", "frontier", "anthropic-model", "tier frontier, cheapest model anthropic-model"),
    ] {
        let resp = messages(&gw, &claude_code_request(name), Some(BETA)).await;
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(resp.headers()["x-triage-tier"], tier, "{name}");
        assert_eq!(resp.headers()["x-triage-model"], model, "{name}");
        assert_eq!(resp.headers()["x-triage-route-reason"], reason, "{name}");
    }
    let v = json_body(client().get(gw.url("/v1/models")).send().await.unwrap()).await;
    let alias = v["data"].as_array().unwrap().iter().find(|m| m["id"] == "claude-sonnet-4-6").unwrap();
    assert_eq!(alias["triage"], json!({"kind": "alias", "tier": "mid"}));
    let patterns = v["triage_alias_patterns"].as_array().unwrap();
    assert_eq!(patterns[0], json!({"pattern": "claude-*haiku*", "role": "search", "tier": "local"}));
    assert_eq!(patterns.last().unwrap(), &json!({"pattern": "claude-*", "tier": "frontier"}));
}

/// The default guard (`local_only`, no local model here) blocked Claude Code's own system prompt
/// for its `noreply@` co-author line, then the entity recogniser took `Servers` after it for an
/// address; a real-looking address is still caught.
#[tokio::test]
async fn harness_boilerplate_is_not_personal_data() {
    let (_o, a, gw) = setup().await;
    let resp = messages(&gw, &claude_code_request("anthropic-model"), None).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // No finding at all: not the boilerplate's addresses and IPs, and not the entity
    // recogniser's `Servers` (a capitalised word after the e-mail line, once an address).
    assert!(resp.headers().get("x-triage-sensitivity").is_none(), "{:?}", resp.headers().get("x-triage-sensitivity"));
    let mut req = claude_code_request("anthropic-model");
    req["messages"][0]["content"][0]["text"] = json!("Mail dana.quill@corp-mail.net the list.");
    let resp = messages(&gw, &req, None).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(a.calls(), 1);
}

/// A provider whose first probe failed (it was not up yet) is still tried when nothing else can
/// serve, and a success marks it reachable at once.
#[tokio::test]
async fn provider_down_at_the_first_probe_is_still_tried() {
    // A port with nothing listening yet: the start-up probe fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = start(&one_model(&format!("http://127.0.0.1:{port}/v1"), "")).await;
    let mut probed_down = false;
    for _ in 0..100 {
        let h = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
        if h["deployments"][0]["probe"] == "down" {
            probed_down = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(probed_down, "the probe should have failed");
    // The upstream comes up on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async { ([("content-type", "application/json")], COMPLETION) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    for model in ["auto", "openai-model", "mid"] {
        let resp = post(&gw, &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)).await;
        assert_eq!(resp.status(), 200, "{model}: {}", resp.text().await.unwrap());
    }
    let h = json_body(client().get(gw.url("/v1/health/deployments")).send().await.unwrap()).await;
    assert_eq!(h["deployments"][0]["probe"], "up");
}

/// An upstream 401 is an authentication problem of that provider, reported at once and every
/// time (never a cooldown that turns into minutes of 429/503).
#[tokio::test]
async fn upstream_401_names_the_provider_and_never_cools_down() {
    let up = FakeUpstream::replay(Reply::json(
        401,
        r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
    ))
    .await;
    let gw = start(&one_model(&up.url(), "")).await;
    for _ in 0..3 {
        let resp = post(&gw, r#"{"model":"openai-model","messages":[{"role":"user","content":"hi"}]}"#).await;
        assert_eq!(resp.status(), 502);
        let v = json_body(resp).await;
        assert_eq!(v["error"]["code"], "upstream_auth_failed");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("upstream oa refused Triage's credentials") && msg.contains("Incorrect API key"), "{msg}");
    }
    assert_eq!(up.calls(), 3);
    // An Anthropic client gets it in Anthropic's envelope.
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(r#"{"model":"openai-model","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v = json_body(resp).await;
    assert_eq!(v["type"], "error");
    assert!(v["error"]["message"].as_str().unwrap().contains("upstream oa"));
}
