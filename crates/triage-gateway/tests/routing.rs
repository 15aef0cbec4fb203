//! Routing through the real server: `auto`, tiers, roles, aliases (shared case C32),
//! capability requirements, unavailable providers; and the read-only endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Three tiers on three fake upstreams: `tiny` (local, no capabilities, 2,000-token window),
/// `openai-model` (mid, tools), `big` (frontier, everything); alias `fast` → `openai-model`;
/// role `plan-review` → frontier.
async fn three_tiers() -> (FakeUpstream, FakeUpstream, FakeUpstream, Gateway) {
    let local = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let mid = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let big = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let toml = format!(
        r#"
tiers = ["local", "mid", "frontier"]
[roles]
plan-review = "frontier"
search = "local"
[aliases]
fast = "openai-model"
[providers.loc]
kind = "openai"
base_url = "{}"
local = true
[providers.mid]
kind = "openai"
base_url = "{}"
[providers.big]
kind = "openai"
base_url = "{}"
[[models]]
id = "tiny"
provider = "loc"
upstream_model = "tiny-upstream"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 2000
[[models]]
id = "openai-model"
provider = "mid"
upstream_model = "gpt-test-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
capabilities = ["tools"]
[[models]]
id = "big"
provider = "big"
upstream_model = "big-upstream"
tier = "frontier"
price = {{ input = 10.0, output = 30.0 }}
context_window = 200000
capabilities = ["tools", "vision", "json_schema"]
"#,
        local.url(),
        mid.url(),
        big.url()
    );
    let gw = start(&toml).await;
    (local, mid, big, gw)
}

async fn route_of(gw: &Gateway, body: serde_json::Value) -> (u16, String, String) {
    let resp = post(gw, &body.to_string()).await;
    let status = resp.status().as_u16();
    let h = resp.headers();
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, get("x-triage-model"), get("x-triage-route-reason"))
}

fn msgs(text: &str) -> serde_json::Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn auto_picks_the_cheapest_capable_tier() {
    let (local, mid, big, gw) = three_tiers().await;
    assert_eq!(route_of(&gw, json!({"model": "auto", "messages": msgs("hi")})).await.1, "tiny");
    assert_eq!(local.requests()[0].json()["model"], "tiny-upstream");

    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let (s, m, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs("hi"), "tools": tools})).await;
    assert_eq!((s, m.as_str()), (200, "openai-model"));
    assert_eq!(reason, "auto: cheapest capable tier mid (skipped local), cheapest model openai-model");

    let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]);
    assert_eq!(route_of(&gw, json!({"model": "auto", "messages": image})).await.1, "big");

    // A prompt longer than tiny's 2,000-token window goes up a tier.
    let long = "alpha beta gamma delta ".repeat(600);
    assert_eq!(route_of(&gw, json!({"model": "auto", "messages": msgs(&long)})).await.1, "openai-model");
    assert_eq!((local.calls(), mid.calls(), big.calls()), (1, 2, 1));
}

#[tokio::test]
async fn tiers_roles_and_ids_pin_the_choice() {
    let (_l, _m, big, gw) = three_tiers().await;
    assert_eq!(route_of(&gw, json!({"model": "frontier", "messages": msgs("hi")})).await.1, "big");
    let (_, m, reason) = route_of(&gw, json!({"model": "role:plan-review", "messages": msgs("hi")})).await;
    assert_eq!((m.as_str(), reason.as_str()), ("big", "role:plan-review -> tier frontier, cheapest model big"));
    assert_eq!(route_of(&gw, json!({"model": "role:search", "messages": msgs("hi")})).await.1, "tiny");
    assert_eq!(route_of(&gw, json!({"model": "big", "messages": msgs("hi")})).await.1, "big");
    assert_eq!(big.calls(), 3);
}

/// Shared case C32 V1 and V4: an alias resolves to the real model, and the alias never
/// reaches the upstream.
#[tokio::test]
async fn c32_alias_resolves_on_every_path() {
    let (_l, mid, _b, gw) = three_tiers().await;
    let (s, m, reason) = route_of(&gw, json!({"model": "fast", "messages": msgs("hi")})).await;
    assert_eq!((s, m.as_str(), reason.as_str()), (200, "openai-model", "alias fast -> model openai-model"));
    let sent = &mid.requests()[0];
    assert_eq!(sent.json()["model"], "gpt-test-upstream");
    assert!(!String::from_utf8_lossy(&sent.body).contains("fast"));
}

#[tokio::test]
async fn c32_alias_resolves_when_streaming() {
    let upstream = chunk_line("a", r#"{"role":"assistant","content":"hi"}"#, Some("stop")) + "data: [DONE]\n\n";
    let up = FakeUpstream::replay(Reply::sse(&upstream)).await;
    let gw = start(&one_model(&up.url(), "[aliases]\nfast = \"openai-model\"\n")).await;
    let resp = post(&gw, r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-model"], "openai-model");
    let _ = resp.text().await.unwrap();
    let sent = &up.requests()[0];
    assert_eq!(sent.json()["model"], "gpt-test-upstream");
    assert!(!String::from_utf8_lossy(&sent.body).contains("fast"));
}

#[tokio::test]
async fn unmet_requirements_are_400_naming_them() {
    let (_l, _m, _b, gw) = three_tiers().await;
    let resp = post(
        &gw,
        &json!({"model": "tiny", "messages": msgs("hi"), "tools": [{"type": "function", "function": {"name": "f"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v = json_body(resp).await;
    assert_eq!(v["error"]["code"], "no_capable_model");
    assert_eq!(
        v["error"]["message"],
        "no model can serve this request: the request has tools, and model tiny has no `tools` capability"
    );

    let resp = post(&gw, &json!({"model": "mid", "messages": msgs("hi"), "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}).to_string()).await;
    assert_eq!(resp.status(), 400);
    assert!(json_body(resp).await["error"]["message"].as_str().unwrap().contains("json_schema"));

    let resp = post(&gw, &json!({"model": "auto", "max_tokens": 500000, "messages": msgs("hi")}).to_string()).await;
    assert_eq!(resp.status(), 400);
    assert!(json_body(resp).await["error"]["message"].as_str().unwrap().contains("context window"));
}

#[tokio::test]
async fn a_provider_without_its_key_is_skipped_and_shown_unavailable() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let extra = format!(
        r#"
[providers.keyless]
kind = "openai"
base_url = "{}"
api_key_env = "TRIAGE_TEST_KEY_THAT_IS_NEVER_SET"
[[models]]
id = "cheap-but-keyless"
provider = "keyless"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 100000
"#,
        up.url()
    );
    let gw = start(&one_model(&up.url(), &extra)).await;
    assert_eq!(route_of(&gw, json!({"model": "auto", "messages": msgs("hi")})).await.1, "openai-model");
    let resp = post(&gw, &json!({"model": "cheap-but-keyless", "messages": msgs("hi")}).to_string()).await;
    assert_eq!(resp.status(), 503);

    let models = json_body(client().get(gw.url("/v1/models")).send().await.unwrap()).await;
    let entry = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "cheap-but-keyless").unwrap().clone();
    assert_eq!(entry["triage"]["available"], false);
    assert_eq!(entry["object"], "model");
}

#[tokio::test]
async fn models_endpoint_lists_auto_tiers_roles_aliases_and_models() {
    let (_l, _m, _b, gw) = three_tiers().await;
    let v = json_body(client().get(gw.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["auto", "local", "mid", "frontier", "role:plan-review", "role:search", "fast", "tiny", "openai-model", "big"]
    );
    let big = &v["data"][9]["triage"];
    assert_eq!(big["tier"], "frontier");
    assert_eq!(big["price_per_million"]["output"], 30.0);
    assert_eq!(big["capabilities"], json!(["tools", "vision", "json_schema"]));
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (_l, _m, _b, gw) = three_tiers().await;
    let c = client();
    assert_eq!(c.get(gw.url("/healthz")).send().await.unwrap().status(), 200);
    let ready = c.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(route_of(&gw, json!({"model": "auto", "messages": msgs("hi")})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let m = c.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        m.contains(r#"triage_requests_total{endpoint="chat_completions",model="tiny",tier="local",status="200"}"#),
        "{m}"
    );
    assert!(m.contains("triage_request_duration_seconds_bucket"));
    assert!(m.contains("triage_upstream_duration_seconds_bucket"));
}

#[tokio::test]
async fn readyz_is_503_when_no_provider_is_available() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = start(&one_model(&format!("http://127.0.0.1:{port}/v1"), "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = client().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let v = json_body(resp).await;
    assert_eq!(v["providers"][0]["reason"], "unreachable");
}

/// Graceful shutdown: after the signal, an in-flight stream still finishes, and the server
/// stops accepting new connections.
#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let steps = vec![
        Step::Write(chunk_line("g", r#"{"role":"assistant","content":"a"}"#, None).into_bytes()),
        Step::Sleep(Duration::from_millis(800)),
        Step::Write((chunk_line("g", r#"{"content":"b"}"#, Some("stop")) + "data: [DONE]\n\n").into_bytes()),
    ];
    let up = FakeUpstream::replay(Reply::steps(200, steps)).await;
    let mut gw = start(&one_model(&up.url(), "")).await;
    let resp = post(&gw, r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_eq!(resp.status(), 200);
    let server = gw.shutdown();
    let body = resp.text().await.unwrap();
    assert_eq!(content(&chunks(&sse_data(&body))), "ab");
    assert!(body.ends_with("data: [DONE]\n\n"));
    tokio::time::timeout(Duration::from_secs(3), server).await.expect("server stops").unwrap().unwrap();
    assert!(client().get(gw.url("/healthz")).send().await.is_err());
}

/// Three tiers on one upstream (`tiny` local without tools, `middle`, `big`) routed by `scorer`.
fn scored_tiers(up: &FakeUpstream, scorer: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
[router]
scorer = "{scorer}"
[providers.p]
kind = "openai"
base_url = "{}"
[[models]]
id = "tiny"
provider = "p"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 100000
[[models]]
id = "middle"
provider = "p"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 100000
capabilities = ["tools"]
[[models]]
id = "big"
provider = "p"
tier = "frontier"
price = {{ input = 10.0, output = 30.0 }}
context_window = 100000
capabilities = ["tools"]
"#,
        up.url()
    )
}

/// `auto` with the shipped difficulty scorer: the reason carries the score, the thresholds and
/// the features that weighed most; a tier that cannot serve the request gives way to the next
/// dearer one.
#[tokio::test]
async fn auto_uses_the_difficulty_scorer() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&scored_tiers(&up, "lexical")).await;
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs("hi")})).await;
    assert_eq!(s, 200);
    assert!(
        reason.starts_with("auto: score 0.") && reason.contains(" vs thresholds ") && reason.contains("; lexical: "),
        "{reason}"
    );
    let tier = reason.split(" -> tier ").nth(1).unwrap().split([' ', ',']).next().unwrap().to_owned();
    let expected_model = match tier.as_str() {
        "local" => "tiny",
        "mid" => "middle",
        _ => "big",
    };
    assert_eq!(model, expected_model);

    let hard = "Prove that for every integer n > 1 the sum of the reciprocals of the primes up to n diverges, then derive the asymptotic rate and write a Rust program that checks it numerically, explaining each step.";
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs(hard), "tools": tools})).await;
    assert_eq!(s, 200);
    assert_ne!(model, "tiny", "tools need the mid tier or above: {reason}");
    if reason.contains("-> tier mid (nothing in tier local") {
        assert_eq!(model, "middle");
    }
}

/// `auto` with the `embedding` scorer (all-MiniLM-L6-v2 in-process; scripts/test.sh fetches it):
/// the reason names the scorer and its parts, a request that needs tools never lands on the
/// tool-less local tier, and concurrent requests all get through the bounded encoder pool.
#[tokio::test]
async fn auto_uses_the_embedding_scorer() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&scored_tiers(&up, "embedding")).await;
    let score = |reason: &str| -> f64 {
        reason.strip_prefix("auto: score ").unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    let (s, _, easy) = route_of(&gw, json!({"model": "auto", "messages": msgs("hi there, thanks!")})).await;
    assert_eq!(s, 200);
    assert!(easy.contains("; embedding: ") && easy.contains("embedding "), "{easy}");
    let hard = "Prove that for every integer n > 1 the sum of the reciprocals of the primes up to n diverges, then derive the asymptotic rate and write a Rust program that checks it numerically, explaining each step.";
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs(hard), "tools": tools})).await;
    assert_eq!(s, 200);
    assert_ne!(model, "tiny", "tools need the mid tier or above: {reason}");
    assert!(score(&reason) > score(&easy), "{reason} vs {easy}");
    // The same request scores the same every time (the encoder is deterministic), also when
    // eight arrive at once and queue for the encoder.
    let runs = futures_util::future::join_all(
        (0..8).map(|_| route_of(&gw, json!({"model": "auto", "messages": msgs("hi there, thanks!")}))),
    )
    .await;
    for (s, _, r) in runs {
        assert_eq!(s, 200);
        assert_eq!(score(&r), score(&easy));
    }
}

/// A hand-made quality model (the `[router] scorer = "quality"` file format): rank 1 on the
/// mean word length alone (dense feature 15, word length / 5, taken as mean 1.5 and sd 0.5);
/// `small` loses quality as words get longer, `big` gains, `mid` in between, levels 0 / 0.1 / 0.2;
/// tiers local / mid / frontier → small / mid / big at $0.1 / $1 / $20; margin 0.3.
fn quality_model_file(dir: &std::path::Path) -> String {
    let mut w_dense = vec![0.0f32; 19];
    w_dense[15] = 1.0;
    let mut mean = vec![0.0f32; 19];
    mean[15] = 1.5;
    let mut sd = vec![1.0f32; 19];
    sd[15] = 0.5;
    let file = json!({
        "kind": "quality",
        "model": {
            "rank": 1, "buckets": 0, "dense_mean": mean, "dense_sd": sd, "w_hashed": [], "w_dense": w_dense,
            "models": ["small", "mid", "big"], "vectors": [[-0.5], [0.0], [0.5]], "offsets": [0.0, 0.1, 0.2]
        },
        "profiles": {"3": ["small", "mid", "big"]},
        "tier_costs": {"3": [0.1, 1.0, 20.0]},
        "rule": {"margin": 0.3}
    });
    let path = dir.join(format!("quality-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, file.to_string()).unwrap();
    path.display().to_string()
}

fn quality_tiers(up: &FakeUpstream, model_file: &str, sticky_secs: u64) -> String {
    scored_tiers(up, "quality").replace(
        "scorer = \"quality\"\n",
        &format!("scorer = \"quality\"\nmodel_file = \"{model_file}\"\nsticky_secs = {sticky_secs}\n"),
    )
}

/// Long words, short words, and a short follow-up after the long-worded first turn.
const HARD: &str = "Characterise asymptotically polymorphic serialisation implementations thoroughly";

fn follow_up() -> serde_json::Value {
    json!([
        {"role": "user", "content": HARD},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "now do it"}
    ])
}

/// `auto` with the quality scorer: the predicted quality of each tier's profile decides, by the
/// margin; an easy and a hard request land on different tiers; the reason shows every tier's
/// predicted quality and the rule.
#[tokio::test]
async fn auto_uses_the_quality_scorer() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let file = quality_model_file(&std::env::temp_dir());
    let gw = start(&quality_tiers(&up, &file, 0)).await;
    // "hi there": mean word length 3.5 → x = −1.6: small 0.80, mid 0.10, big −0.60 → local.
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs("hi there")})).await;
    assert_eq!(s, 200);
    assert_eq!(model, "tiny", "{reason}");
    assert!(
        reason.contains(" -> tier local")
            && reason.contains("; quality: q:small +0.80, q:mid +0.10, q:big -0.60, margin +0.30"),
        "{reason}"
    );
    // HARD: mean word length 12.5 → x = 2: small −1.0, mid 0.1, big 1.2 → frontier.
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs(HARD)})).await;
    assert_eq!(s, 200);
    assert_eq!(model, "big", "{reason}");
    assert!(reason.contains(" -> tier frontier") && reason.contains("q:big +1.20"), "{reason}");
    // Without sticky routing (sticky_secs = 0) the short follow-up is scored on its own:
    // mean word length 8.4 → x = 0.36: small −0.18, mid 0.10, big 0.38 → mid (0.10 ≥ 0.38 − 0.3).
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": follow_up()})).await;
    assert_eq!(s, 200);
    assert_eq!(model, "middle", "{reason}");
    assert!(!reason.contains("sticky"), "{reason}");
}

/// The shipped quality model (`models/quality-v1.json`: 19 dense features + the static
/// embedding `models/static-minilm-64.bin`, whose tokenizer is the encoder directory's
/// `tokenizer.json`, fetched by scripts/fetch-embedding-model.sh as scripts/test.sh does) through
/// the gateway: every decision is the library's decision on the same request (the tier its
/// predicted qualities and calibrated margin choose, the model the catalog picks there); the
/// reason names the file's tier profiles. Then a catalog whose frontier model maps to the
/// cheapest tier's profile (`[[models]] profile`): the frontier tier is predicted exactly as
/// the local one, so the margin rule never pays for it.
#[tokio::test]
async fn the_shipped_quality_model_routes_and_catalog_profiles_map_tiers() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/quality-v1.json");
    let json = std::fs::read_to_string(shipped).unwrap();
    let lib = triage_gateway::scoring::quality_scorer(shipped, &json, None)
        .unwrap_or_else(|e| panic!("{e}\n(run scripts/fetch-embedding-model.sh, as scripts/test.sh does)"));
    let profiles = lib.file().profiles_for(3);
    assert_eq!(
        profiles,
        ["mistralai/Mistral-7B-Instruct-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]
    );
    let prompts = [
        "hi there",
        "Translate 'good morning' into French.",
        "Prove that there are infinitely many primes p such that p + 2 is also prime, or explain precisely why this is open and what the best known bounds on prime gaps are.",
        "Write a Rust function that reverses the order of the words in a sentence, with unit tests for empty input.",
    ];
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let gw = start(&quality_tiers(&up, shipped, 0)).await;
    let ids = ["tiny", "middle", "big"];
    let mut tiers_seen = std::collections::BTreeSet::new();
    for p in prompts {
        let want = lib.tiers(&serde_json::from_value(json!({"model": "auto", "messages": msgs(p)})).unwrap(), 3);
        let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs(p)})).await;
        assert_eq!(s, 200, "{p}: {model} {reason}");
        assert_eq!(model, ids[want.tier], "{p}: {reason}");
        for (name, q) in want.profiles.iter().zip(&want.quality) {
            assert!(reason.contains(&format!("q:{name} {q:+.2}")), "{p}: {reason}");
        }
        tiers_seen.insert(want.tier);
    }
    assert!(tiers_seen.len() >= 2, "the shipped model sends these prompts to one tier only: {tiers_seen:?}");
    // The frontier model mapped to the local tier's profile: never worth its price.
    let mapped = quality_tiers(&up, shipped, 0)
        .replace("id = \"big\"\n", "id = \"big\"\nprofile = \"mistralai/Mistral-7B-Instruct-v0.1\"\n");
    let gw = start(&mapped).await;
    for p in prompts {
        let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs(p)})).await;
        assert_eq!(s, 200, "{p}: {model} {reason}");
        assert_ne!(model, "big", "{p}: {reason}");
        let qs: Vec<&str> = reason.split("q:").skip(1).take(3).collect();
        assert!(qs[0].starts_with("mistralai/Mistral-7B") && qs[2].starts_with("mistralai/Mistral-7B"), "{reason}");
        assert_eq!(qs[0].split(',').next(), qs[2].split(',').next(), "{reason}");
    }
}

/// Sticky routing end to end at the gateway: after a first turn routed to the frontier, the
/// short follow-up of the same conversation (which alone scores mid) stays on the frontier and
/// the reason says so; the same follow-up text in another conversation goes where it scores.
#[tokio::test]
async fn a_conversation_stays_on_its_tier_at_the_gateway() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let file = quality_model_file(&std::env::temp_dir());
    let gw = start(&quality_tiers(&up, &file, 600)).await;
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": msgs(HARD)})).await;
    assert_eq!((s, model.as_str()), (200, "big"), "{reason}");
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": follow_up()})).await;
    assert_eq!((s, model.as_str()), (200, "big"), "{reason}");
    assert!(
        reason.starts_with(
            "sticky: this conversation was routed to tier frontier before, so it stays there (this turn alone scored tier mid); auto: "
        ),
        "{reason}"
    );
    // Another conversation (different first turn) with a follow-up: its own score, local.
    let other = json!([
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "now do it"}
    ]);
    let (s, model, reason) = route_of(&gw, json!({"model": "auto", "messages": other})).await;
    assert_eq!((s, model.as_str()), (200, "tiny"), "{reason}");
    assert!(!reason.contains("sticky"), "{reason}");
}

/// A quality model file that does not load is refused at start with a message naming it
/// (the server never starts with a router it cannot run).
#[test]
fn a_broken_quality_model_file_is_refused_with_its_name() {
    use triage_core::catalog::AutoRouting;
    use triage_core::router::ScorerKind;
    let path = std::env::temp_dir().join(format!("quality-bad-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, r#"{"kind": "quality", "model": {"rank": 0}}"#).unwrap();
    let p = path.display().to_string();
    let auto = AutoRouting::Scorer {
        kind: ScorerKind::Quality,
        model_file: Some(p.clone()),
        encoder_dir: None,
        tier_profiles: Vec::new(),
    };
    let e = triage_gateway::scoring::build_router(&auto).unwrap_err();
    assert!(e.starts_with(&format!("router model {p}: ")), "{e}");
    let none = AutoRouting::Scorer {
        kind: ScorerKind::Quality,
        model_file: None,
        encoder_dir: None,
        tier_profiles: Vec::new(),
    };
    assert!(triage_gateway::scoring::build_router(&none).unwrap_err().contains("needs [router] model_file"));
}
