//! Spend through the real server: the ledger (costs of streamed and whole answers, attempts),
//! virtual keys (401/403), budgets (the C29 race, soft-limit and allowance step-downs, 429), and
//! `GET /v1/spend`. Runs against SQLite, and PostgreSQL too when `TRIAGE_TEST_POSTGRES_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use triage_core::cost::{NanoUsd, TokenUsage};
use triage_store::{NewKey, Store};

fn databases() -> Vec<String> {
    let mut v = vec![temp_db()];
    if let Ok(pg) = std::env::var("TRIAGE_TEST_POSTGRES_URL") {
        v.push(pg);
    }
    v
}

/// `tiny` (local, free), `openai-model` (mid, $1 in / $3 out) on `url`; `extra` appended.
fn config(url: &str, db: &str, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "mid", "frontier"]
{extra}
[providers.oa]
kind = "openai"
base_url = "{url}"
[[models]]
id = "tiny"
provider = "oa"
upstream_model = "tiny-upstream"
tier = "local"
price = {{ input = 0.0, output = 0.0 }}
context_window = 100000
[[models]]
id = "openai-model"
provider = "oa"
upstream_model = "gpt-test-upstream"
tier = "mid"
price = {{ input = 1.0, output = 3.0 }}
context_window = 128000
capabilities = ["tools"]
[[models]]
id = "openai-reasoning-model"
provider = "oa"
upstream_model = "o-test-upstream"
tier = "frontier"
price = {{ input = 1.10, output = 4.40 }}
context_window = 200000
[spend]
database = "{db}"
"#
    )
}

async fn row(store: &Store, id: &str) -> (String, Option<String>, NanoUsd, TokenUsage, bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = store.request_summary(id).await.unwrap() {
            return r;
        }
        assert!(Instant::now() < deadline, "request {id} never reached the ledger");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_id(gw: &Gateway, id: &str, body: &str, key: Option<&str>) -> reqwest::Response {
    let mut r = client().post(gw.url("/v1/chat/completions")).header("x-request-id", id).body(body.to_owned());
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

/// Shared cases C27 and C28: what the ledger records for whole and streamed answers.
#[tokio::test]
async fn ledger_costs_whole_and_streamed_answers() {
    for db in databases() {
        let reasoning = r#"{"id":"c","object":"chat.completion","created":1,"model":"o-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"3"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2008,"completion_tokens":266,"total_tokens":2274,"completion_tokens_details":{"reasoning_tokens":261}}}"#;
        let c28 = chunk_line("c28", r#"{"role":"assistant","content":"Hi!"}"#, None)
            + &chunk_line("c28", "{}", Some("stop"))
            + "data: {\"id\":\"c28\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":10,\"total_tokens\":41}}\n\ndata: [DONE]\n\n";
        let ollama = chunk_line("c28", r#"{"role":"assistant","content":"Hi!"}"#, None)
            + "data: {\"id\":\"c28\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-test-upstream\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":10,\"total_tokens\":41}}\n\ndata: [DONE]\n\n";
        let no_usage =
            chunk_line("n", r#"{"role":"assistant","content":"twelve chars"}"#, Some("stop")) + "data: [DONE]\n\n";
        let up = FakeUpstream::start(move |r, _| {
            let v = r.json();
            match v["messages"][0]["content"].as_str().unwrap_or_default() {
                "reasoning" => Reply::json(200, reasoning),
                "v1" => Reply::sse(&c28),
                "v2" => Reply::sse(&ollama),
                _ => Reply::sse(&no_usage),
            }
        })
        .await;
        let gw = start(&config(&up.url(), &db, "")).await;
        let store = Store::connect(&db).await.unwrap();
        let tag = uuid::Uuid::new_v4().simple().to_string();

        let id = format!("c27-{tag}");
        assert_eq!(
            post_id(
                &gw,
                &id,
                r#"{"model":"openai-reasoning-model","messages":[{"role":"user","content":"reasoning"}]}"#,
                None
            )
            .await
            .status(),
            200
        );
        let (status, model, cost, usage, estimated) = row(&store, &id).await;
        assert_eq!(
            (status.as_str(), model.as_deref(), cost),
            ("200", Some("openai-reasoning-model"), NanoUsd(3_379_200))
        );
        assert_eq!(
            (usage.input, usage.output, usage.reasoning, usage.total(), estimated),
            (2008, 266, 261, 2274, false)
        );

        for (variant, content) in [("v1", "v1"), ("v2", "v2")] {
            let id = format!("c28-{variant}-{tag}");
            let body =
                json!({"model": "openai-model", "stream": true, "messages": [{"role": "user", "content": content}]});
            let _ = post_id(&gw, &id, &body.to_string(), None).await.text().await.unwrap();
            let (status, _, cost, usage, estimated) = row(&store, &id).await;
            assert_eq!((status.as_str(), usage.input, usage.output, estimated), ("200", 31, 10, false), "{variant}");
            assert_eq!(cost, NanoUsd(31 * 1000 + 10 * 3000));
        }

        // C28 point 5: no usage from the upstream is an estimate, flagged, never a silent 0.
        let id = format!("c28-none-{tag}");
        let _ = post_id(
            &gw,
            &id,
            r#"{"model":"openai-model","stream":true,"messages":[{"role":"user","content":"none"}]}"#,
            None,
        )
        .await
        .text()
        .await
        .unwrap();
        let (_, _, cost, usage, estimated) = row(&store, &id).await;
        assert!(estimated);
        assert_eq!(usage.output, 3, "12 characters ≈ 3 tokens");
        assert!(usage.input > 0 && cost.0 > 0);

        // An unknown model is recorded too (status 404, no cost).
        let id = format!("404-{tag}");
        assert_eq!(
            post_id(&gw, &id, r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#, None).await.status(),
            404
        );
        assert_eq!(row(&store, &id).await.0, "404");
    }
}

#[tokio::test]
async fn attempts_are_recorded_per_request() {
    let db = temp_db();
    let p = FakeUpstream::replay(Reply::json(500, "{}")).await;
    let b = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let toml = config(&p.url(), &db, "[retry]\nnum_retries = 1\ninitial_backoff_ms = 1\n")
        .replace("capabilities = [\"tools\"]", "capabilities = [\"tools\"]\nfallback = [\"backup\"]")
        + &format!("[providers.b]\nkind = \"openai\"\nbase_url = \"{}\"\n[[models]]\nid = \"backup\"\nprovider = \"b\"\ntier = \"frontier\"\nprice = {{ input = 2.0, output = 4.0 }}\ncontext_window = 1000\n", b.url());
    let toml = toml.replace("[spend]\ndatabase", "[spend]\nbaseline_model = \"backup\"\ndatabase");
    let gw = start(&toml).await;
    let store = Store::connect(&db).await.unwrap();
    assert_eq!(
        post_id(&gw, "att-1", r#"{"model":"openai-model","messages":[{"role":"user","content":"x"}]}"#, None)
            .await
            .status(),
        200
    );
    let (_, model, cost, _, _) = row(&store, "att-1").await;
    assert_eq!(model.as_deref(), Some("backup"));
    assert_eq!(cost, NanoUsd(5 * 2000 + 1 * 4000), "priced at the model that answered");
    let a = store.attempts_of("att-1").await.unwrap();
    let outcomes: Vec<&str> = a.iter().map(|x| x.2.as_str()).collect();
    assert_eq!(outcomes, ["500", "500", "200"]);
    assert_eq!(a[2].0, "backup");
}

#[tokio::test]
async fn virtual_keys_authenticate_and_restrict() {
    let db = temp_db();
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let store = Store::connect(&db).await.unwrap();
    let (_, local_only) = store
        .create_key(&NewKey { user: "u1".into(), team: "t1".into(), tiers: vec!["local".into()], ..Default::default() })
        .await
        .unwrap();
    let (_, only_reasoning) = store
        .create_key(&NewKey {
            user: "u2".into(),
            team: "t1".into(),
            models: vec!["openai-reasoning-model".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (revoked_rec, revoked) =
        store.create_key(&NewKey { user: "u3".into(), team: "t1".into(), ..Default::default() }).await.unwrap();
    store.revoke_key(&revoked_rec.id).await.unwrap();
    let gw = start(&config(&up.url(), &db, "auth = \"keys\"\n[aliases]\nfast = \"openai-model\"")).await;
    let body = r#"{"model":"auto","messages":[{"role":"user","content":"x"}]}"#;

    let resp = post_id(&gw, "k1", body, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(json_body(resp).await["error"]["code"], "invalid_api_key");
    assert_eq!(post_id(&gw, "k2", body, Some("tr-not-a-key")).await.status(), 401);
    assert_eq!(post_id(&gw, "k3", body, Some(&revoked)).await.status(), 401);

    let resp = post_id(&gw, "k4", body, Some(&local_only)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-triage-tier"], "local");
    // A tool request needs the mid tier, which this key may not use.
    let tools = r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    assert_eq!(post_id(&gw, "k5", tools, Some(&local_only)).await.status(), 403);
    let resp =
        post_id(&gw, "k6", r#"{"model":"mid","messages":[{"role":"user","content":"x"}]}"#, Some(&local_only)).await;
    assert_eq!(resp.status(), 403);
    // Shared case C32 point 6: an alias does not get around the model list.
    let resp =
        post_id(&gw, "k7", r#"{"model":"fast","messages":[{"role":"user","content":"x"}]}"#, Some(&only_reasoning))
            .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(json_body(resp).await["error"]["code"], "model_not_allowed");
    // Anthropic-style x-api-key works too.
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &only_reasoning)
        .body(r#"{"model":"openai-reasoning-model","max_tokens":8,"messages":[{"role":"user","content":"x"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.calls(), 2);
    // The spend report needs an admin key.
    assert_eq!(client().get(gw.url("/v1/spend")).bearer_auth(&local_only).send().await.unwrap().status(), 403);
    let (_, admin) = store
        .create_key(&NewKey { user: "ops".into(), team: "ops".into(), admin: true, ..Default::default() })
        .await
        .unwrap();
    let report = json_body(client().get(gw.url("/v1/spend?by=user")).bearer_auth(&admin).send().await.unwrap()).await;
    let users: Vec<&str> = report["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert!(users.contains(&"u1") && users.contains(&"u2"), "{report}");
}

/// Shared case C29: 8 requests at once against a $0.0010 key budget, each costing $0.0004;
/// at most 2 reach the upstream, the rest get 429 `budget_exceeded` before any call, the
/// recorded spend stays within the budget, and a 9th request afterwards is refused. The same
/// holds with two gateway replicas sharing the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c29_concurrent_requests_cannot_overspend() {
    for db in databases() {
        for replicas in [1usize, 2] {
            let usage = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":100,"total_tokens":200}}"#;
            let up = FakeUpstream::replay(Reply::steps(
                200,
                vec![Step::Sleep(Duration::from_secs(1)), Step::Write(usage.as_bytes().to_vec())],
            ))
            .await;
            let store = Store::connect(&db).await.unwrap();
            let (rec, key) = store
                .create_key(&NewKey {
                    user: "race".into(),
                    team: "race".into(),
                    budget_month: Some(NanoUsd(1_000_000)),
                    ..Default::default()
                })
                .await
                .unwrap();
            let toml = config(&up.url(), &db, "auth = \"keys\"");
            let gws: Vec<Arc<Gateway>> = {
                let mut v = Vec::new();
                for _ in 0..replicas {
                    v.push(Arc::new(start(&toml).await));
                }
                v
            };
            let prompt = "lorem ".repeat(94);
            let body = Arc::new(
                json!({"model": "openai-model", "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]})
                    .to_string(),
            );
            let barrier = Arc::new(tokio::sync::Barrier::new(8));
            let mut tasks = Vec::new();
            for i in 0..8 {
                let (gw, key, body, barrier) = (gws[i % replicas].clone(), key.clone(), body.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let r = client()
                        .post(gw.url("/v1/chat/completions"))
                        .bearer_auth(&key)
                        .body((*body).clone())
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    (status, json_body(r).await)
                }));
            }
            let mut ok = 0;
            for t in tasks {
                let (status, body) = t.await.unwrap();
                match status {
                    200 => ok += 1,
                    429 => {
                        assert_eq!(body["error"]["code"], "budget_exceeded");
                        let msg = body["error"]["message"].as_str().unwrap();
                        assert!(msg.contains("monthly budget of $0.001") && msg.contains("resets at"), "{msg}");
                    }
                    s => panic!("unexpected status {s}: {body}"),
                }
            }
            assert_eq!(ok, 2, "two $0.0004 requests fit in $0.0010, a third does not");
            assert_eq!(up.calls(), ok, "refused requests never reach the upstream");
            let line = triage_store::BudgetLine {
                scope: "key".into(),
                subject: rec.id.clone(),
                tier: None,
                period: triage_store::Period::Month,
                limit: NanoUsd(1_000_000),
                soft: 0.8,
            };
            // Settlement happens right after each answer; give it a moment.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let (spent, reserved) = store.budget_used(&line, triage_store::now_ms()).await.unwrap();
                if reserved.0 == 0 {
                    assert_eq!(spent, NanoUsd(400_000 * ok as u64), "spend equals the sum of real costs");
                    assert!(spent.0 <= 1_000_000);
                    break;
                }
                assert!(Instant::now() < deadline, "reservations never settled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = client()
                .post(gws[0].url("/v1/chat/completions"))
                .bearer_auth(&key)
                .body((*body).clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 429);
            let ra: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(ra > 0 && ra <= 31 * 86_400);
        }
    }
}

/// The issue's race: 200 concurrent requests against a budget that allows 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_against_a_budget_for_fifty() {
    let db = temp_db();
    let usage = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":10,"total_tokens":20}}"#;
    let up = FakeUpstream::replay(Reply::steps(
        200,
        vec![Step::Sleep(Duration::from_millis(300)), Step::Write(usage.as_bytes().to_vec())],
    ))
    .await;
    // Each request reserves (prompt ≈ 8 + max_tokens 10) and really costs 10×$1 + 10×$3 per
    // million = 40,000 nano-dollars; the team's budget holds 50 reservations.
    let est_per_request = {
        let r: triage_core::openai::ChatRequest = serde_json::from_str(
            r#"{"model":"openai-model","max_tokens":10,"messages":[{"role":"user","content":"hello there"}]}"#,
        )
        .unwrap();
        let req = triage_core::route::Requirements::of(&r);
        req.prompt.estimate() * 1000 + 10 * 3000
    };
    let limit = est_per_request * 50;
    let toml = config(
        &up.url(),
        &db,
        "auth = \"keys\"\n[[budgets]]\nscope = \"team\"\nsubject = \"fifty\"\nperiod = \"day\"\nlimit_usd = LIMIT\n",
    )
    .replace("LIMIT", &format!("{}", limit as f64 / 1e9));
    let store = Store::connect(&db).await.unwrap();
    let (_, key) =
        store.create_key(&NewKey { user: "u".into(), team: "fifty".into(), ..Default::default() }).await.unwrap();
    let gw = Arc::new(start(&toml).await);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (gw, key) = (gw.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .body(
                    r#"{"model":"openai-model","max_tokens":10,"messages":[{"role":"user","content":"hello there"}]}"#,
                )
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        *counts.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts.get(&200), Some(&50), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&150), "{counts:?}");
    assert_eq!(up.calls(), 50);
}

/// Soft limit: past 50 % of the global daily budget, `auto` steps down to the cheaper tier and
/// says so; a per-tier allowance that is used up steps down the same way.
#[tokio::test]
async fn soft_limit_and_tier_allowance_step_down() {
    let db = temp_db();
    let usage = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-test-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":100,"total_tokens":200}}"#;
    let up = FakeUpstream::replay(Reply::json(200, usage)).await;
    let extra = "[[budgets]]\nscope = \"global\"\nperiod = \"day\"\nlimit_usd = 0.001\n";
    let toml = config(&up.url(), &db, extra).replace("[spend]\n", "[spend]\nsoft_limit = 0.5\n");
    let gw = start(&toml).await;
    let tools = r#"{"model":"auto","max_tokens":100,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    let plain = r#"{"model":"mid","max_tokens":100,"messages":[{"role":"user","content":"x"}]}"#;
    // $0.0004 spent after the first request; the second would pass 50 %.
    let r1 = post_id(&gw, "s1", plain, None).await;
    assert_eq!(r1.headers()["x-triage-tier"], "mid");
    let _ = r1.text().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r2 = post_id(&gw, "s2", plain, None).await;
    assert_eq!(r2.headers()["x-triage-tier"], "local");
    let reason = r2.headers()["x-triage-route-reason"].to_str().unwrap().to_owned();
    assert!(
        reason.contains("global * daily budget of $0.001")
            && reason.contains("soft limit): stepped down to tier local"),
        "{reason}"
    );
    // A request only the mid tier can serve is not stepped down below what it needs: it is
    // admitted while the hard limit holds...
    let r3 = post_id(&gw, "s3", tools, None).await;
    assert_eq!((r3.status().as_u16(), r3.headers()["x-triage-tier"].to_str().unwrap()), (200, "mid"));
    let _ = r3.text().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and refused at it.
    let r4 = post_id(&gw, "s4", tools, None).await;
    assert_eq!(r4.status(), 429);

    // A per-tier allowance: at most $0.0005 a day of the mid tier, then local.
    let db = temp_db();
    let extra = "[[budgets]]\nscope = \"global\"\nperiod = \"day\"\nlimit_usd = 0.0005\ntier = \"mid\"\n";
    let gw = start(&config(&up.url(), &db, extra)).await;
    assert_eq!(post_id(&gw, "t1", plain, None).await.headers()["x-triage-tier"], "mid");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = post_id(&gw, "t2", plain, None).await;
    assert_eq!(r.headers()["x-triage-tier"], "local");
    let reason = r.headers()["x-triage-route-reason"].to_str().unwrap().to_owned();
    assert!(reason.contains("mid budget of $0.0005") && reason.contains("stepped down to tier local"), "{reason}");
    // An explicit model is never stepped down: it is refused.
    let r = post_id(
        &gw,
        "t3",
        r#"{"model":"openai-model","max_tokens":100,"messages":[{"role":"user","content":"x"}]}"#,
        None,
    )
    .await;
    assert_eq!(r.status(), 429);
    let report: Value = json_body(client().get(gw.url("/v1/spend?by=tier")).send().await.unwrap()).await;
    // t1 and the refused t3 were routed to mid, t2 to local.
    let mid = report["tier_share"]["mid"].as_f64().unwrap();
    assert!((mid - 2.0 / 3.0).abs() < 1e-9, "{report}");
}

/// Shared case C29 point 5: a request the client abandons mid-flight releases its reservation
/// and is still recorded (as `cancelled`).
#[tokio::test]
async fn abandoned_requests_release_their_reservation() {
    let db = temp_db();
    let up = FakeUpstream::replay(Reply::steps(
        200,
        vec![Step::Sleep(Duration::from_secs(3)), Step::Write(COMPLETION.as_bytes().to_vec())],
    ))
    .await;
    let store = Store::connect(&db).await.unwrap();
    let (rec, key) = store
        .create_key(&NewKey {
            user: "c".into(),
            team: "c".into(),
            budget_day: Some(NanoUsd(1_000_000_000)),
            ..Default::default()
        })
        .await
        .unwrap();
    let gw = start(&config(&up.url(), &db, "auth = \"keys\"")).await;
    let line = triage_store::BudgetLine {
        scope: "key".into(),
        subject: rec.id.clone(),
        tier: None,
        period: triage_store::Period::Day,
        limit: NanoUsd(1_000_000_000),
        soft: 0.8,
    };
    let request = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-request-id", "gone-1")
        .body(r#"{"model":"openai-model","max_tokens":50,"messages":[{"role":"user","content":"x"}]}"#)
        .send();
    // The client gives up once its request is upstream.
    let sent = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.calls() == 0 {
        assert!(Instant::now() < deadline, "the request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sent.abort();
    assert!(sent.await.is_err(), "the client gave up");
    let (status, model, cost, usage, estimated) = row(&store, "gone-1").await;
    // It was upstream when its client left: the prompt is billed (estimated, flagged so).
    assert_eq!((status.as_str(), model.as_deref(), estimated), ("cancelled", Some("openai-model"), true));
    assert_eq!((usage.output, cost), (0, NanoUsd(usage.input * 1000)));
    assert!(usage.input > 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (spent, reserved) = store.budget_used(&line, triage_store::now_ms()).await.unwrap();
        if reserved.0 == 0 {
            assert_eq!(spent, cost, "the budget counts what the ledger records");
            break;
        }
        assert!(Instant::now() < deadline, "reservation never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 18, item 2: clients that hang up while their request is being admitted. 2,000 requests
/// (64 at a time) over four budget lines (the key's day and month, a user and a team budget),
/// each client giving up after a time spread log-uniformly from 0.1 ms to 1 s: while
/// connecting or sending, being authenticated, routed or admitted, waiting on the 30 ms
/// upstream, or answered (the test checks that each of these stages was hit). Afterwards nothing
/// is reserved on any line, no reservation row is left, and what the budgets count as spent
/// equals the ledger's cost for the same requests (none lost, none counted twice). On today's
/// main this leaked reservations on both databases (the issue: 62 of 2,000 on SQLite, 559 on
/// PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_hanging_up_during_admission_leak_no_reservation() {
    for db in databases() {
        let up = FakeUpstream::replay(Reply::steps(
            200,
            vec![Step::Sleep(Duration::from_millis(30)), Step::Write(COMPLETION.as_bytes().to_vec())],
        ))
        .await;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let (user, team) = (format!("hang-u-{tag}"), format!("hang-t-{tag}"));
        let budgets = format!(
            "auth = \"keys\"\n[[budgets]]\nscope = \"team\"\nsubject = \"{team}\"\nperiod = \"day\"\nlimit_usd = 100\n[[budgets]]\nscope = \"user\"\nsubject = \"{user}\"\nperiod = \"month\"\nlimit_usd = 100\n"
        );
        let gw = Arc::new(start(&config(&up.url(), &db, &budgets)).await);
        let store = Store::connect(&db).await.unwrap();
        let (rec, key) = store
            .create_key(&NewKey {
                user: user.clone(),
                team: team.clone(),
                budget_day: Some(NanoUsd(100_000_000_000)),
                budget_month: Some(NanoUsd(100_000_000_000)),
                ..Default::default()
            })
            .await
            .unwrap();
        let line = |scope: &str, subject: &str, period| triage_store::BudgetLine {
            scope: scope.into(),
            subject: subject.into(),
            tier: None,
            period,
            limit: NanoUsd(100_000_000_000),
            soft: 0.8,
        };
        use triage_store::Period::{Day, Month};
        let lines = [
            line("key", &rec.id, Day),
            line("key", &rec.id, Month),
            line("user", &user, Month),
            line("team", &team, Day),
        ];
        let body = r#"{"model":"openai-model","max_tokens":50,"messages":[{"role":"user","content":"x"}]}"#;
        // One whole request first (the key is cached, the tokenizer loaded).
        assert_eq!(post_id(&gw, &format!("{tag}-warm"), body, Some(&key)).await.status(), 200);
        let key = Arc::new(key);
        let permits = Arc::new(tokio::sync::Semaphore::new(64));
        let n = 2000u64;
        let mut tasks = Vec::new();
        for i in 0..n {
            let (gw, key, permits, tag) = (gw.clone(), key.clone(), permits.clone(), tag.clone());
            // Interleaved so that every stretch of the run has short and long waits.
            let j = (i * 1237) % n;
            let wait_us = (100.0 * 10_000f64.powf(j as f64 / n as f64)) as u64;
            tasks.push(tokio::spawn(async move {
                let _p = permits.acquire().await.unwrap();
                let c = reqwest::Client::builder().timeout(Duration::from_micros(wait_us)).build().unwrap();
                let r = c
                    .post(gw.url("/v1/chat/completions"))
                    .header("x-request-id", format!("{tag}-{i}"))
                    .bearer_auth(&*key)
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) => (r.status().as_u16(), r.bytes().await.is_ok()),
                    Err(_) => (0, false),
                }
            }));
        }
        let mut outcomes = std::collections::BTreeMap::new();
        for t in tasks {
            let (status, _) = t.await.unwrap();
            *outcomes.entry(status).or_insert(0u64) += 1;
        }
        assert!(outcomes.keys().all(|s| *s == 0 || *s == 200), "{outcomes:?}");
        // Every request the gateway saw ends (the upstream's 30 ms), settles and reaches the ledger.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (used, ledger) = loop {
            let mut used = Vec::new();
            for l in &lines {
                used.push(store.budget_used(l, triage_store::now_ms()).await.unwrap());
            }
            let ledger = store
                .spend(triage_store::GroupBy::User, None)
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.key == user)
                .map(|r| r.cost)
                .unwrap_or(NanoUsd(0));
            let status = store.budget_status(triage_store::now_ms()).await.unwrap();
            let rows: u64 = status
                .iter()
                .filter(|s| s.subject == rec.id || s.subject == user || s.subject == team)
                .map(|s| s.reservations)
                .sum();
            let settled = used.iter().all(|(spent, reserved)| reserved.0 == 0 && *spent == ledger) && rows == 0;
            if settled || Instant::now() > deadline {
                assert_eq!(rows, 0, "reservation rows left ({:?}): {status:?}", store.backend());
                break (used, ledger);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (l, (spent, reserved)) in lines.iter().zip(&used) {
            assert_eq!(*reserved, NanoUsd(0), "{} leaked a reservation on {db}", l.describe());
            assert_eq!(*spent, ledger, "{}: budget spend vs ledger on {db}", l.describe());
        }
        // Where the clients hung up, from the ledger: never seen (before the handler or its
        // authentication), cancelled before going upstream (routing, admission), cancelled
        // upstream, answered.
        let mut stages = [0u64; 4];
        for i in 0..n {
            let stage = match store.request_summary(&format!("{tag}-{i}")).await.unwrap() {
                None => 0,
                Some((status, _, cost, _, _)) if status == "cancelled" && cost.0 == 0 => 1,
                Some((status, ..)) if status == "cancelled" => 2,
                Some(_) => 3,
            };
            stages[stage] += 1;
        }
        eprintln!(
            "{db}: {n} requests: {} hung up before being seen, {} during routing/admission, {} upstream, {} answered; {outcomes:?}; spent {ledger} on each line, nothing reserved",
            stages[0], stages[1], stages[2], stages[3]
        );
        // Before, during and after admission (how many hang up while upstream, a 30 ms window,
        // depends on the machine's load).
        assert!(stages[0] > 0 && stages[1] > 0 && stages[2] + stages[3] > 0, "every stage is hit: {stages:?}");
    }
}
