//! Production evaluation through the real server, against scripted fakes speaking the real wire
//! formats: a cheap model that answers badly about SQL only, a reference that answers well, and a
//! judge that prefers the better answer (always the first one shown for poems: a position bias;
//! no verdict at all for riddles). Both client formats, streamed and whole, through OpenAI- and
//! Anthropic-speaking cheap upstreams; sampling, governance (sensitive content, opt-outs), the
//! evaluation's budget, the bounded queue, the timing of shadow work, and feedback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use triage_core::cost::NanoUsd;
use triage_store::Store;
use triage_testkit::Recorded;

/// Every text of a recorded chat request (OpenAI or Anthropic), concatenated.
fn request_text(r: &Recorded) -> String {
    let v = r.json();
    let mut out = String::new();
    for m in v["messages"].as_array().into_iter().flatten() {
        match &m["content"] {
            Value::String(s) => out.push_str(s),
            Value::Array(parts) => {
                for p in parts {
                    out.push_str(p["text"].as_str().unwrap_or_default());
                }
            }
            _ => {}
        }
        out.push('\n');
    }
    out
}

fn openai_completion(model: &str, text: &str, usage: (u64, u64)) -> String {
    json!({"id":"chatcmpl-e","object":"chat.completion","created":1700000000,"model":model,
        "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":usage.0,"completion_tokens":usage.1,"total_tokens":usage.0 + usage.1}})
    .to_string()
}

/// An OpenAI answer: SSE when the request asked for a stream (text in two chunks, usage chunk,
/// `[DONE]`), else a whole completion.
fn openai_answer(r: &Recorded, model: &str, text: &str, usage: (u64, u64)) -> Reply {
    if r.json()["stream"] != json!(true) {
        return Reply::json(200, &openai_completion(model, text, usage));
    }
    let (a, b) = text.split_at(text.len() / 2);
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-e","object":"chat.completion.chunk","created":1700000000,"model":model,
                "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        )
    };
    let usage_chunk = format!(
        "data: {}\n\n",
        json!({"id":"chatcmpl-e","object":"chat.completion.chunk","created":1700000000,"model":model,"choices":[],
            "usage":{"prompt_tokens":usage.0,"completion_tokens":usage.1,"total_tokens":usage.0 + usage.1}})
    );
    Reply::sse_writes(&[
        chunk(json!({"role":"assistant","content":a}), Value::Null),
        chunk(json!({"content":b}), Value::Null),
        chunk(json!({}), json!("stop")),
        usage_chunk,
        "data: [DONE]\n\n".to_owned(),
    ])
}

/// An Anthropic answer, streamed (events) or whole.
fn anthropic_answer(r: &Recorded, text: &str, usage: (u64, u64)) -> Reply {
    if r.json()["stream"] != json!(true) {
        let body = json!({"id":"msg_e","type":"message","role":"assistant","model":"claude-cheap-upstream",
            "content":[{"type":"text","text":text}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":usage.0,"output_tokens":usage.1}});
        return Reply::json(200, &body.to_string());
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let (a, b) = text.split_at(text.len() / 2);
    Reply::sse_writes(&[
        ev(
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_e","type":"message","role":"assistant","model":"claude-cheap-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":usage.0,"output_tokens":1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":a}}),
        ),
        ev(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":b}}),
        ),
        ev("content_block_stop", json!({"type":"content_block_stop","index":0})),
        ev(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":usage.1}}),
        ),
        ev("message_stop", json!({"type":"message_stop"})),
    ])
}

const BAD: &str = "BAD answer: I do not know databases.";
const GOOD: &str = "GOOD answer, done properly.";
const REFERENCE: &str = "GOOD reference answer, thorough.";

/// The cheap model: bad about SQL, good otherwise.
fn cheap_text(r: &Recorded) -> &'static str {
    if request_text(r).contains("SQL") {
        BAD
    } else {
        GOOD
    }
}

/// The text between the judge prompt's markers of one assistant.
fn section<'a>(prompt: &'a str, who: &str) -> &'a str {
    let start = format!("<|The Start of Assistant {who}'s Answer|>\n");
    let end = format!("\n<|The End of Assistant {who}'s Answer|>");
    let s = prompt.find(&start).map(|i| i + start.len()).unwrap_or(0);
    let e = prompt[s..].find(&end).map_or(prompt.len(), |i| s + i);
    &prompt[s..e]
}

/// The scripted judge: prefers the answer that is GOOD; for poems always the first shown
/// (position bias); for riddles no verdict at all.
fn judge_text(r: &Recorded) -> String {
    let prompt = request_text(r);
    if prompt.contains("riddle") {
        return "Both answers have merit; I cannot decide.".into();
    }
    if prompt.contains("poem") {
        return "The first one reads better.\n[[A>B]]".into();
    }
    let (a, b) = (section(&prompt, "A").contains("GOOD"), section(&prompt, "B").contains("GOOD"));
    let v = match (a, b) {
        (true, false) => "[[A>B]]",
        (false, true) => "[[B>A]]",
        _ => "[[A=B]]",
    };
    format!("Compared.\n{v}")
}

struct Fakes {
    cheap: FakeUpstream,
    cheap_an: FakeUpstream,
    reference: FakeUpstream,
    judge: FakeUpstream,
}

/// Usage each fake reports: cheap (20 in, 10 out), reference (30, 40), judge (100, 10).
async fn fakes(reference_delay: Duration) -> Fakes {
    std::env::set_var("TRIAGE_TEST_ANTHROPIC_KEY", "sk-ant-test-PLACEHOLDER");
    let cheap = FakeUpstream::start(|r, _| openai_answer(r, "cheap-upstream", cheap_text(r), (20, 10))).await;
    let cheap_an = FakeUpstream::start(|r, _| anthropic_answer(r, cheap_text(r), (20, 10))).await;
    let reference = FakeUpstream::start(move |r, _| {
        let body = openai_completion("big-upstream", REFERENCE, (30, 40));
        if r.json()["stream"] == json!(true) {
            return Reply::json(400, r#"{"error":{"message":"the reference must not be asked to stream"}}"#);
        }
        if reference_delay.is_zero() {
            Reply::json(200, &body)
        } else {
            Reply::steps(200, vec![Step::Sleep(reference_delay), Step::Write(body.into_bytes())])
        }
    })
    .await;
    let judge =
        FakeUpstream::start(|r, _| Reply::json(200, &openai_completion("judge-upstream", &judge_text(r), (100, 10))))
            .await;
    Fakes { cheap, cheap_an, reference, judge }
}

/// Two tiers: `cheap` (OpenAI, local provider) and `cheap-an` (Anthropic) in `local`, `big` (the
/// reference) and `judge-model` in `frontier`; `[evals]` with `evals` appended to its section.
fn config(f: &Fakes, db: &str, evals: &str, extra: &str) -> String {
    format!(
        r#"
tiers = ["local", "frontier"]
{extra}
[retry]
num_retries = 0
[providers.cheap]
kind = "openai"
base_url = "{cheap}"
local = true
[providers.cheapan]
kind = "anthropic"
base_url = "{cheap_an}"
api_key_env = "TRIAGE_TEST_ANTHROPIC_KEY"
[providers.ref]
kind = "openai"
base_url = "{reference}"
[providers.judge]
kind = "openai"
base_url = "{judge}"
[[models]]
id = "cheap"
provider = "cheap"
upstream_model = "cheap-upstream"
tier = "local"
price = {{ input = 0.5, output = 1.0 }}
context_window = 100000
[[models]]
id = "cheap-an"
provider = "cheapan"
upstream_model = "claude-cheap-upstream"
tier = "local"
price = {{ input = 0.5, output = 1.5 }}
context_window = 100000
[[models]]
id = "big"
provider = "ref"
upstream_model = "big-upstream"
tier = "frontier"
price = {{ input = 10.0, output = 30.0 }}
context_window = 100000
[[models]]
id = "judge-model"
provider = "judge"
upstream_model = "judge-upstream"
tier = "frontier"
price = {{ input = 3.0, output = 15.0 }}
context_window = 100000
[spend]
database = "{db}"
[evals]
reference = "big"
judge = "judge-model"
{evals}
"#,
        cheap = f.cheap.url(),
        cheap_an = f.cheap_an.url(),
        reference = f.reference.url(),
        judge = f.judge.url(),
    )
}

/// Sends a chat request in either client format; returns the response.
async fn send(gw: &Gateway, anthropic: bool, id: &str, model: &str, prompt: &str, stream: bool) -> reqwest::Response {
    let (path, body) = if anthropic {
        (
            "/v1/messages",
            json!({"model":model,"max_tokens":50,"stream":stream,"messages":[{"role":"user","content":prompt}]}),
        )
    } else {
        (
            "/v1/chat/completions",
            json!({"model":model,"max_tokens":50,"stream":stream,"messages":[{"role":"user","content":prompt}]}),
        )
    };
    client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// `GET /v1/evals` as JSON.
async fn report(gw: &Gateway, by: &str) -> Value {
    report_as(gw, by, None).await
}

/// `GET /v1/evals` as JSON, with an (admin) key.
async fn report_as(gw: &Gateway, by: &str, key: Option<&str>) -> Value {
    let mut r = client().get(gw.url(&format!("/v1/evals?by={by}")));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    json_body(r.send().await.unwrap()).await
}

/// Waits until `done(live totals)` holds (the shadow work runs in the background).
async fn wait_live(gw: &Gateway, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_live_as(gw, None, what, done).await
}

async fn wait_live_as(gw: &Gateway, key: Option<&str>, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = report_as(gw, "tier", key).await;
        if done(&r["live"]) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", r["live"]);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn live(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

/// The whole path, per prompt kind, in both client formats, streamed and whole, through both
/// upstream formats: every outcome, verdict, cost and captured answer is the one the script
/// implies.
#[tokio::test]
async fn shadow_evaluation_records_what_the_script_implies() {
    let f = fakes(Duration::ZERO).await;
    let db = temp_db();
    let gw = start(&config(
        &f,
        &db,
        "sample_rate = 1.0\nstore_text = true\nmax_usd_per_day = 5.0",
        "[router]\nscorer = \"lexical\"",
    ))
    .await;
    let kinds = [
        ("sql", "Write a SQL query listing every order of last week.", "loss", Some(("B>A", "A>B")), false),
        ("hello", "Say hello to the new team member.", "tie", Some(("A=B", "A=B")), false),
        ("poem", "Write a short poem about the sea.", "tie", Some(("A>B", "A>B")), true),
        ("riddle", "Tell me a riddle about time.", "judge_failed", None, false),
    ];
    let mut sent = Vec::new();
    for (kind, prompt, ..) in &kinds {
        for anthropic in [false, true] {
            for stream in [false, true] {
                // OpenAI upstream for every kind, the Anthropic upstream for two of them.
                let mut models = vec!["local"];
                if matches!(*kind, "sql" | "hello") {
                    models.push("cheap-an");
                }
                for model in models {
                    let id = format!(
                        "{kind}-{}-{}-{model}",
                        if anthropic { "an" } else { "oa" },
                        if stream { "s" } else { "w" }
                    );
                    let resp = send(&gw, anthropic, &id, model, prompt, stream).await;
                    assert_eq!(resp.status(), 200, "{id}");
                    assert_eq!(resp.headers()["x-request-id"], id.as_str());
                    let text = resp.text().await.unwrap();
                    assert!(text.contains(&cheap_text_for(prompt)[..10]), "{id}: {text}");
                    sent.push((id, *kind, model));
                }
            }
        }
    }
    let n = sent.len() as u64;
    assert_eq!(n, 24);
    wait_live(&gw, "every evaluation", |l| live(l, "/stored") == n).await;

    let store = Store::connect(&db).await.unwrap();
    let rows = store.evals(None, true).await.unwrap();
    assert_eq!(rows.len() as u64, n);
    for (id, kind, model) in &sent {
        let row = rows.iter().find(|r| &r.request_id == id).unwrap_or_else(|| panic!("{id} not evaluated"));
        let (_, prompt, outcome, verdicts, inconsistent) = kinds.iter().find(|k| k.0 == *kind).unwrap();
        assert_eq!(row.outcome, *outcome, "{id}");
        assert_eq!(row.inconsistent, *inconsistent, "{id}");
        assert_eq!(
            (row.verdict_first.as_deref(), row.verdict_second.as_deref()),
            verdicts.map_or((None, None), |(a, b)| (Some(a), Some(b))),
            "{id}"
        );
        let cheap_model = if *model == "local" { "cheap" } else { "cheap-an" };
        assert_eq!(
            (row.model.as_str(), row.tier.as_str(), row.reference_model.as_str(), row.judge_model.as_str()),
            (cheap_model, "local", "big", "judge-model")
        );
        // (20 in, 10 out) at $0.5/$1.0 (or $1.5 out): 10,000 + 10,000 (15,000) nanodollars.
        let routed = if *model == "local" { 20_000 } else { 25_000 };
        assert_eq!(row.routed_cost, NanoUsd(routed), "{id}");
        // Reference (30 in, 40 out) at $10/$30: 300,000 + 1,200,000.
        assert_eq!(row.reference_cost, NanoUsd(1_500_000), "{id}");
        // Two judge calls of (100 in, 10 out) at $3/$15: 2 x (300,000 + 150,000).
        assert_eq!(row.judge_cost, NanoUsd(900_000), "{id}");
        assert_eq!(row.reason, if *model == "local" { "tier" } else { "model" });
        let texts = row.texts.as_ref().unwrap();
        assert_eq!(texts.answer, cheap_text_for(prompt), "{id}: the answer as the client got it");
        assert_eq!(texts.reference, REFERENCE);
        assert!(texts.prompt.contains(prompt));
        let rep: triage_core::router::Representation =
            serde_json::from_str(row.representation.as_deref().unwrap()).unwrap();
        assert_eq!(rep.kind, "lexical/triage-lexical-v1");
        rep.validate().unwrap();
        assert!(row.score.is_some_and(|s| (0.0..=1.0).contains(&s)));
        assert_eq!(row.endpoint, if id.contains("-an-") { "messages" } else { "chat_completions" });
    }
    // The reference got each request whole, never streamed; the judge saw each pair twice, the
    // routed answer first once and second once.
    assert_eq!(f.reference.calls() as u64, n);
    assert!(f
        .reference
        .requests()
        .iter()
        .all(|r| r.json().get("stream").is_none() && r.json()["model"] == "big-upstream"));
    assert_eq!(f.judge.calls() as u64, 2 * n);
    let sql_judged: Vec<(bool, bool)> = f
        .judge
        .requests()
        .iter()
        .filter(|r| request_text(r).contains("SQL"))
        .map(|r| {
            let p = request_text(r);
            (section(&p, "A").contains("BAD"), section(&p, "B").contains("BAD"))
        })
        .collect();
    assert_eq!(sql_judged.iter().filter(|x| x.0).count(), sql_judged.len() / 2);
    assert_eq!(sql_judged.iter().filter(|x| x.1).count(), sql_judged.len() / 2);

    // The report: per model, exactly the counts the script implies.
    let r = report(&gw, "model").await;
    let g = |key: &str| r["groups"].as_array().unwrap().iter().find(|g| g["key"] == key).cloned().unwrap();
    let cheap = g("cheap");
    assert_eq!((cheap["evaluated"].as_u64(), cheap["judged"].as_u64()), (Some(16), Some(12)));
    assert_eq!(
        (cheap["loss"]["count"].as_u64(), cheap["tie"]["count"].as_u64(), cheap["win"]["count"].as_u64()),
        (Some(4), Some(8), Some(0))
    );
    assert_eq!((cheap["inconsistent"]["count"].as_u64(), cheap["judge_failed"].as_u64()), (Some(4), Some(4)));
    let (lo, hi) = triage_core::evals::wilson(4, 12);
    assert_eq!(cheap["loss"]["ci95"], json!([lo, hi]));
    assert_eq!(cheap["quality_kept"]["rate"], json!(8.0 / 12.0));
    let an = g("cheap-an");
    assert_eq!(
        (an["evaluated"].as_u64(), an["loss"]["count"].as_u64(), an["tie"]["count"].as_u64()),
        (Some(8), Some(4), Some(4))
    );
    let total = &r["total"];
    assert_eq!(total["eval_spend_usd"], json!(24.0 * 2_400_000.0 / 1e9));
    // The evaluation's ledger rows are its own kind: in the spend report's eval spend, not in
    // the requests.
    let spend = json_body(client().get(gw.url("/v1/spend?by=model")).send().await.unwrap()).await;
    assert_eq!(spend["total"]["requests"], 24);
    assert!((spend["eval_spend_usd"].as_f64().unwrap() - 24.0 * 2_400_000.0 / 1e9).abs() < 1e-12, "{spend}");
}

fn cheap_text_for(prompt: &str) -> String {
    if prompt.contains("SQL") { BAD } else { GOOD }.to_owned()
}

/// 400 requests at a 30 % sample: the number sampled lies in its 99.9 % binomial interval
/// (120 ± 3.29 sd, sd = sqrt(400 · 0.3 · 0.7) = 9.17), and every sampled one is evaluated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_rate_stays_within_its_binomial_interval() {
    let f = fakes(Duration::ZERO).await;
    let gw = start(&config(&f, &temp_db(), "sample_rate = 0.3\nconcurrency = 4\nqueue = 1000", "")).await;
    for i in 0..400 {
        let resp = send(&gw, false, &format!("s{i}"), "local", "Say hello.", false).await;
        assert_eq!(resp.status(), 200);
    }
    let live_totals = wait_live(&gw, "the sampled evaluations", |l| {
        live(l, "/stored") == live(l, "/sampled") && live(l, "/sampled") > 0
    })
    .await["live"]
        .clone();
    let sampled = live(&live_totals, "/sampled");
    assert!((90..=150).contains(&sampled), "sampled {sampled} of 400 at 0.3");
    assert_eq!(f.reference.calls() as u64, sampled);
    assert_eq!(f.cheap.calls(), 400);
}

/// Requests with personal data or secrets are never sent to the cloud reference or judge, under
/// `local_only` and under `redact` alike; the rest are evaluated.
#[tokio::test]
async fn sensitive_requests_never_reach_the_cloud_fakes() {
    for policy in ["local_only", "redact"] {
        let f = fakes(Duration::ZERO).await;
        let gw = start(&config(&f, &temp_db(), "sample_rate = 1.0", &format!("[guard]\ndefault = \"{policy}\""))).await;
        let secret = "Write a SQL query for the customer jane.doe@example.com, password = \"hunter2-PLACEHOLDER\"";
        for i in 0..3 {
            let resp = send(&gw, i % 2 == 1, &format!("sens-{policy}-{i}"), "local", secret, i == 2).await;
            assert_eq!(resp.status(), 200, "{policy}");
            assert!(resp.headers().contains_key("x-triage-sensitivity"));
        }
        let resp = send(&gw, false, &format!("plain-{policy}"), "local", "Say hello.", false).await;
        assert_eq!(resp.status(), 200);
        let l = wait_live(&gw, "the plain request's evaluation", |l| live(l, "/stored") == 1).await["live"].clone();
        assert_eq!(live(&l, "/skipped/sensitive"), 3, "{policy}: {l}");
        for fake in [&f.reference, &f.judge] {
            assert!(fake.requests().iter().all(|r| !String::from_utf8_lossy(&r.body).contains("jane.doe")), "{policy}");
            assert!(fake.requests().iter().all(|r| !String::from_utf8_lossy(&r.body).contains("hunter2")), "{policy}");
        }
        assert_eq!(f.reference.calls(), 1, "{policy}: only the plain request");
    }
}

/// Keys, teams and roles that opted out (`evals = false`) are never evaluated.
#[tokio::test]
async fn opted_out_roles_and_keys_are_not_evaluated() {
    let f = fakes(Duration::ZERO).await;
    let db = temp_db();
    let store = Store::connect(&db).await.unwrap();
    let new =
        |user: &str, team: &str| triage_store::NewKey { user: user.into(), team: team.into(), ..Default::default() };
    let (legal, legal_secret) = store.create_key(&new("lee", "legal")).await.unwrap();
    let (_, eng_secret) = store.create_key(&new("eve", "eng")).await.unwrap();
    let (quiet, quiet_secret) = store.create_key(&new("quinn", "eng")).await.unwrap();
    let (_, admin) = store
        .create_key(&triage_store::NewKey { user: "ops".into(), team: "ops".into(), admin: true, ..Default::default() })
        .await
        .unwrap();
    let evals = format!(
        "sample_rate = 1.0\n[evals.teams]\nlegal = false\n[evals.roles]\nsearch = false\n[evals.keys]\n{} = false",
        quiet.id
    );
    let gw = start(&config(&f, &db, &evals, "auth = \"keys\"\n[roles]\nsearch = \"local\"\nchat = \"local\"")).await;
    let post = |secret: String, model: &'static str, id: &'static str| {
        let gw_url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(gw_url)
                .bearer_auth(secret)
                .header("x-request-id", id)
                .body(json!({"model":model,"messages":[{"role":"user","content":"Say hello."}]}).to_string())
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post(legal_secret, "local", "o1").await.status(), 200);
    assert_eq!(post(quiet_secret, "local", "o2").await.status(), 200);
    assert_eq!(post(eng_secret.clone(), "role:search", "o3").await.status(), 200);
    assert_eq!(post(eng_secret, "role:chat", "o4").await.status(), 200);
    let l = wait_live_as(&gw, Some(&admin), "the one evaluation", |l| live(l, "/stored") == 1).await["live"].clone();
    assert_eq!(live(&l, "/skipped/opt_out"), 3, "{l}");
    let rows = store.evals(None, false).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), ["o4"]);
    assert_eq!(rows[0].role.as_deref(), Some("chat"));
    assert_eq!(rows[0].reason, "role");
    assert_ne!(legal.id, quiet.id);
}

/// The evaluation's daily budget is enforced like any budget: once its reservations would pass
/// `max_usd_per_day`, shadowing stops; what it spent stays within the limit and is the sum of
/// its ledger rows; the clients' requests are unaffected.
#[tokio::test]
async fn the_eval_budget_stops_shadowing_when_spent() {
    let f = fakes(Duration::ZERO).await;
    let db = temp_db();
    // One evaluation really costs $0.0024; its reservation (output limits at list price) is more.
    let gw = start(&config(
        &f,
        &db,
        "sample_rate = 1.0\nconcurrency = 1\nmax_usd_per_day = 0.01\njudge_max_tokens = 64",
        "",
    ))
    .await;
    for i in 0..8 {
        let resp = send(&gw, false, &format!("b{i}"), "local", "Say hello.", false).await;
        assert_eq!(resp.status(), 200);
    }
    let l = wait_live(&gw, "every job stored or skipped", |l| live(l, "/stored") + live(l, "/skipped/budget") == 8)
        .await["live"]
        .clone();
    let stored = live(&l, "/stored");
    assert!((1..8).contains(&stored), "{l}");
    assert_eq!(f.reference.calls() as u64, stored, "no reference call once the budget is spent");
    let store = Store::connect(&db).await.unwrap();
    let spent = store.eval_spend(None).await.unwrap();
    assert_eq!(spent, NanoUsd(stored * 2_400_000));
    assert!(spent <= NanoUsd(10_000_000));
    let catalog =
        triage_core::config::parse(&config(&f, &db, "sample_rate = 1.0\nmax_usd_per_day = 0.01", ""), "t").unwrap();
    let line = triage_gateway::evals::worker::budget_line(&catalog);
    let (used, reserved) = store.budget_used(&line, triage_store::now_ms()).await.unwrap();
    assert_eq!((used, reserved), (spent, NanoUsd(0)), "settled at the real cost");
}

/// Shadow work starts only once the client has its whole answer, and never delays it: while the
/// answer streams (paused mid-way), the reference has not been called; the client's first token
/// and last byte both arrive before the reference could have answered once (it takes 6 s), so
/// the answer never waited on shadow work; the reference is called afterwards. (Orders of
/// events, not tight time bounds: the test holds on a loaded machine.)
#[tokio::test]
async fn shadow_work_starts_after_the_answer_and_adds_no_latency() {
    const REFERENCE_DELAY: Duration = Duration::from_secs(6);
    let mut f = fakes(REFERENCE_DELAY).await;
    f.cheap = FakeUpstream::start(|_, _| {
        let chunk = |c: &str| chunk_line("chatcmpl-t", &json!({"content": c}).to_string(), None);
        Reply::steps(
            200,
            vec![
                Step::Write(chunk("first half ").into_bytes()),
                Step::Sleep(Duration::from_millis(400)),
                Step::Write(chunk_line("chatcmpl-t", r#"{"content":"second half"}"#, Some("stop")).into_bytes()),
                Step::Write(b"data: [DONE]\n\n".to_vec()),
            ],
        )
    })
    .await;
    let gw = start(&config(&f, &temp_db(), "sample_rate = 1.0", "")).await;
    let started = Instant::now();
    let resp = send(&gw, false, "t1", "local", "Say hello.", true).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let ttft = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("first half"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(f.reference.calls(), 0, "no shadow work while the answer streams");
    let mut rest = Vec::new();
    while let Some(b) = body.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    let total = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    assert!(ttft < REFERENCE_DELAY, "TTFT {ttft:?}");
    assert!(
        total < REFERENCE_DELAY,
        "the client's answer took {total:?}; the reference alone takes {REFERENCE_DELAY:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.reference.calls() == 0 {
        assert!(Instant::now() < deadline, "the reference was never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_live(&gw, "the evaluation", |l| live(l, "/stored") == 1).await;
}

/// With one worker busy on a slow reference and a queue of one, further sampled requests are
/// dropped and counted, and every client answer still comes at once.
#[tokio::test]
async fn a_full_queue_drops_jobs_and_never_blocks_traffic() {
    let f = fakes(Duration::from_secs(3)).await;
    let gw = start(&config(&f, &temp_db(), "sample_rate = 1.0\nconcurrency = 1\nqueue = 1", "")).await;
    for i in 0..5 {
        let t = Instant::now();
        let resp = send(&gw, false, &format!("q{i}"), "local", "Say hello.", false).await;
        assert_eq!(resp.status(), 200);
        assert!(t.elapsed() < Duration::from_millis(1000), "request {i} waited {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let l = report(&gw, "tier").await["live"].clone();
    let (queued, dropped) = (live(&l, "/queued"), live(&l, "/skipped/queue_full"));
    assert_eq!(queued + dropped, 5, "{l}");
    assert!(dropped >= 3, "{l}");
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("triage_evals_skipped_total{reason=\"queue_full\"}"), "{metrics}");
}

/// `POST /v1/feedback` stores a score with the request it names, checks its fields and whose
/// request it is, and the report shows it beside the evaluations.
#[tokio::test]
async fn feedback_is_stored_with_the_request() {
    let f = fakes(Duration::ZERO).await;
    let db = temp_db();
    let store = Store::connect(&db).await.unwrap();
    let new =
        |user: &str, admin| triage_store::NewKey { user: user.into(), team: "eng".into(), admin, ..Default::default() };
    let (alice, alice_secret) = store.create_key(&new("alice", false)).await.unwrap();
    let (_, bob_secret) = store.create_key(&new("bob", false)).await.unwrap();
    let (_, admin_secret) = store.create_key(&new("ops", true)).await.unwrap();
    let gw = start(&config(&f, &db, "sample_rate = 1.0", "auth = \"keys\"")).await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&alice_secret)
        .body(json!({"model":"local","messages":[{"role":"user","content":"Write a SQL query."}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let feedback = |secret: &str, body: Value| {
        client().post(gw.url("/v1/feedback")).bearer_auth(secret).body(body.to_string()).send()
    };
    let r = feedback(&alice_secret, json!({"request_id": id, "score": 0, "comment": "wrong join"})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r).await, json!({"request_id": id, "score": 0.0}));
    assert_eq!(store.feedback_of(&id).await.unwrap(), Some((0.0, Some("wrong join".into()))));
    let r = feedback(&bob_secret, json!({"request_id": id, "score": 1})).await.unwrap();
    assert_eq!(r.status(), 403, "another key's request");
    let r = feedback(&alice_secret, json!({"request_id": "no-such-id", "score": 1})).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = feedback(&alice_secret, json!({"request_id": id, "score": 3})).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["error"]["param"], "score");
    let r = feedback(&alice_secret, json!({"request_id": id})).await.unwrap();
    assert_eq!((r.status().as_u16(), json_body(r).await["error"]["param"].clone()), (400, json!("score")));
    let r = client()
        .post(gw.url("/v1/feedback"))
        .body(json!({"request_id": id, "score": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The report (admin only) shows the evaluation and the feedback beside it, per key.
    assert_eq!(client().get(gw.url("/v1/evals")).bearer_auth(&alice_secret).send().await.unwrap().status(), 403);
    let deadline = Instant::now() + Duration::from_secs(10);
    let rep = loop {
        let rep =
            json_body(client().get(gw.url("/v1/evals?by=key")).bearer_auth(&admin_secret).send().await.unwrap()).await;
        if rep["total"]["evaluated"] == 1 {
            break rep;
        }
        assert!(Instant::now() < deadline, "{rep}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let g = &rep["groups"][0];
    assert_eq!(g["key"], alice.id.as_str());
    assert_eq!(g["loss"]["count"], 1);
    assert_eq!(g["feedback"], json!({"count": 1, "mean_score": 0.0}));
}
