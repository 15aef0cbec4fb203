//! Production evaluation, end to end (issue 15): the real gateway in front of scripted fakes
//! speaking the OpenAI wire format, and the real `triage` binary for the report and the
//! retraining.
//!
//! The script: a cheap model that answers badly on anything about SQL and well otherwise, a
//! reference that answers well, a judge that prefers the better answer. An analytics key sends
//! SQL requests, a support key everything else, all with `model: "auto"`; every request is
//! evaluated. `triage evals report` must show the loss on the SQL requests only, with exactly
//! the counts, intervals and costs the script implies; `triage train --from-evals` then writes
//! the router's model file, the gateway reloads it, and `auto` sends new SQL requests to the
//! reference's tier while the rest stays cheap; `triage calibrate --from-evals` sets the
//! threshold for a quality target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use triage_core::evals::wilson;
use triage_store::{NewKey, Store};
use triage_testkit::{FakeUpstream, Recorded, Reply};

const BAD: &str = "BAD answer: I do not know databases.";
const GOOD: &str = "GOOD answer, done properly.";
const REFERENCE: &str = "GOOD reference answer, thorough.";

/// Every text of a recorded OpenAI chat request, concatenated.
fn request_text(r: &Recorded) -> String {
    let v = r.json();
    v["messages"].as_array().into_iter().flatten().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n")
}

fn completion(model: &str, text: &str, usage: (u64, u64)) -> Reply {
    let body = json!({"id":"chatcmpl-e","object":"chat.completion","created":1700000000,"model":model,
        "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":usage.0,"completion_tokens":usage.1,"total_tokens":usage.0 + usage.1}});
    Reply::json(200, &body.to_string())
}

/// The text between the judge prompt's markers of one assistant.
fn section<'a>(prompt: &'a str, who: &str) -> &'a str {
    let start = format!("<|The Start of Assistant {who}'s Answer|>\n");
    let end = format!("\n<|The End of Assistant {who}'s Answer|>");
    let s = prompt.find(&start).map(|i| i + start.len()).unwrap_or(0);
    let e = prompt[s..].find(&end).map_or(prompt.len(), |i| s + i);
    &prompt[s..e]
}

/// The judge prefers the GOOD answer, in either position.
fn judge(r: &Recorded) -> Reply {
    let p = request_text(r);
    let v = match (section(&p, "A").contains("GOOD"), section(&p, "B").contains("GOOD")) {
        (true, false) => "[[A>B]]",
        (false, true) => "[[B>A]]",
        _ => "[[A=B]]",
    };
    completion("judge-upstream", &format!("Compared both.\n{v}"), (100, 10))
}

const TABLES: [&str; 4] = ["orders", "customers", "invoices", "shipments"];
const TOPICS: [&str; 8] =
    ["the sea", "a birthday", "our new office", "spring", "a cat", "the weekly meeting", "a long walk", "the garden"];
/// SQL requests and the others are asked in the same five ways, at about the same length, so
/// that what tells them apart is what they are about.
const SQL_ASKS: [&str; 5] = [
    "Write a SQL query that lists the {} of last week.",
    "Explain what this SQL does: select the {} by date.",
    "Why is my SQL join on {} so slow?",
    "Turn this request into SQL: total {} per month.",
    "Which SQL index helps when filtering {} by date?",
];
const OTHER_ASKS: [&str; 5] = [
    "Write a friendly note that mentions {} of last week.",
    "Explain what this poem does: describe {} by night.",
    "Why is my story about {} so slow?",
    "Turn this request into a poem: {} per month.",
    "Which colour helps when painting {} by day?",
];

/// 20 SQL requests and 40 others, all different.
fn traffic() -> (Vec<String>, Vec<String>) {
    let ask = |asks: &[&str], nouns: &[&str]| -> Vec<String> {
        nouns.iter().flat_map(|n| asks.iter().map(move |a| a.replace("{}", n))).collect()
    };
    (ask(&SQL_ASKS, &TABLES), ask(&OTHER_ASKS, &TOPICS))
}

/// Requests none of the above, about other tables and topics, asked in other ways: what `auto`
/// does with new traffic after retraining.
fn probes() -> (Vec<String>, Vec<String>) {
    let sql = [
        "Please review my SQL for the payments report.",
        "How do I write SQL that sums the refunds per week?",
        "Is this SQL correct: count the suppliers per country?",
        "Show me the SQL to find duplicate employees.",
    ];
    let other = [
        "Please review my letter about the harbour.",
        "How do I describe a rainy day in one word?",
        "Is this sentence correct: the bakery opens at nine?",
        "Show me a kind way to say thank you to a neighbour.",
    ];
    (sql.map(str::to_owned).to_vec(), other.map(str::to_owned).to_vec())
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("triage-evals-loop-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn triage(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_triage"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("TRIAGE_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "triage {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

struct Sent {
    tier: String,
    model: String,
}

async fn chat(client: &reqwest::Client, base: &str, key: &str, prompt: &str) -> Sent {
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({"model":"auto","max_tokens":50,"messages":[{"role":"user","content":prompt}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{prompt}");
    let h = |n: &str| resp.headers()[n].to_str().unwrap().to_owned();
    let sent = Sent { tier: h("x-triage-tier"), model: h("x-triage-model") };
    let body = resp.text().await.unwrap();
    let expected = if sent.model == "big" {
        REFERENCE
    } else if prompt.contains("SQL") {
        BAD
    } else {
        GOOD
    };
    assert!(body.contains(expected), "{prompt}: {body}");
    sent
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_labels_move_sql_to_the_reference_and_leave_the_rest_cheap() {
    let cheap = FakeUpstream::start(|r, _| {
        completion("cheap-upstream", if request_text(r).contains("SQL") { BAD } else { GOOD }, (20, 10))
    })
    .await;
    let reference = FakeUpstream::start(|_, _| completion("big-upstream", REFERENCE, (30, 40))).await;
    let judge_up = FakeUpstream::start(|r, _| judge(r)).await;
    let dir = temp_dir();
    let db = format!("sqlite://{}", dir.join("triage.db").display());
    let model_file = dir.join("router.json");
    std::fs::write(&model_file, triage_core::router::DEFAULT_MODEL_JSON).unwrap();
    let config = format!(
        r#"
tiers = ["local", "frontier"]
auth = "keys"
[router]
scorer = "lexical"
model_file = "{model_file}"
[retry]
num_retries = 0
# Governance is tested in crates/triage-gateway/tests/evals.rs; here the guard's name recogniser
# must not keep a synthetic request ("... total orders per month") from being evaluated.
[guard]
default = "allow"
[providers.cheap]
kind = "openai"
base_url = "{cheap}"
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
price = {{ input = 20.0, output = 40.0 }}
context_window = 100000
[spend]
database = "{db}"
[evals]
sample_rate = 1.0
reference = "big"
judge = "judge-model"
max_usd_per_day = 5.0
concurrency = 2
queue = 100
"#,
        model_file = model_file.display(),
        cheap = cheap.url(),
        reference = reference.url(),
        judge = judge_up.url(),
    );
    let config_path = dir.join("triage.toml");
    std::fs::write(&config_path, &config).unwrap();

    let store = Store::connect(&db).await.unwrap();
    let key =
        |user: &str, team: &str, admin| NewKey { user: user.into(), team: team.into(), admin, ..Default::default() };
    let (analytics, analytics_secret) = store.create_key(&key("ana", "data", false)).await.unwrap();
    let (support, support_secret) = store.create_key(&key("sam", "support", false)).await.unwrap();
    let (_, admin) = store.create_key(&key("ops", "ops", true)).await.unwrap();

    let catalog = triage_core::config::parse(&config, "triage.toml").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(triage_gateway::serve(catalog, listener, std::future::pending::<()>()));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    // Before: the shipped router sends all of it to the cheap tier.
    let (sql, other) = traffic();
    for p in &sql {
        assert_eq!(chat(&client, &base, &analytics_secret, p).await.tier, "local", "{p}");
    }
    for p in &other {
        assert_eq!(chat(&client, &base, &support_secret, p).await.tier, "local", "{p}");
    }
    let n = (sql.len() + other.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r: Value = serde_json::from_str(
            &client.get(format!("{base}/v1/evals")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap(),
        )
        .unwrap();
        if r["live"]["stored"] == n {
            break;
        }
        assert!(Instant::now() < deadline, "evaluations not stored: {}", r["live"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The report: every loss on the analytics key's SQL requests, none elsewhere.
    let table = triage(&config_path, &["evals", "report", "--by", "key"]);
    println!("$ triage evals report --by key\n{table}");
    let r: Value =
        serde_json::from_str(&triage(&config_path, &["evals", "report", "--by", "key", "--format", "json"])).unwrap();
    let group = |id: &str| r["groups"].as_array().unwrap().iter().find(|g| g["key"] == id).cloned().unwrap();
    let (a, s, total) = (group(&analytics.id), group(&support.id), r["total"].clone());
    assert_eq!(r["groups"].as_array().unwrap().len(), 2);
    assert_eq!((a["evaluated"].as_u64(), a["judged"].as_u64()), (Some(20), Some(20)));
    assert_eq!(
        (a["loss"]["count"].as_u64(), a["tie"]["count"].as_u64(), a["win"]["count"].as_u64()),
        (Some(20), Some(0), Some(0))
    );
    let (lo, hi) = wilson(20, 20);
    assert_eq!(a["loss"]["ci95"], json!([lo, hi]));
    assert_eq!(a["quality_kept"]["rate"], json!(0.0));
    assert_eq!(
        (s["evaluated"].as_u64(), s["tie"]["count"].as_u64(), s["loss"]["count"].as_u64()),
        (Some(40), Some(40), Some(0))
    );
    let (lo, hi) = wilson(0, 40);
    assert_eq!(s["loss"]["ci95"], json!([lo, hi]));
    assert_eq!(s["quality_kept"]["rate"], json!(1.0));
    assert_eq!((total["loss"]["count"].as_u64(), total["judged"].as_u64()), (Some(20), Some(60)));
    assert_eq!(total["inconsistent"]["count"], 0);
    assert_eq!((total["judge_failed"].as_u64(), total["errors"].as_u64()), (Some(0), Some(0)));
    // Per request: the cheap answer (20 in, 10 out at $0.5 / $1) 20,000 nano-dollars; the
    // reference (30, 40 at $10 / $30) 1,500,000; two judge calls (100, 10 at $20 / $40; the
    // judge is dearer than the reference, so that `auto` picks the reference in its tier)
    // 4,800,000.
    assert!(close(&total["routed_cost_usd"], 60.0 * 20_000e-9), "{total}");
    assert!(close(&total["reference_cost_usd"], 60.0 * 1_500_000e-9), "{total}");
    assert!(close(&total["eval_spend_usd"], 60.0 * 6_300_000e-9), "{total}");
    assert!(close(&total["saving_share"], 1.0 - 20_000.0 / 1_500_000.0), "{total}");

    // Retrain on those labels; the gateway reloads the file it routes with.
    let before = std::fs::read_to_string(&model_file).unwrap();
    let trained = triage(&config_path, &["train", "--from-evals"]);
    println!("$ triage train --from-evals\n{trained}");
    assert!(trained.contains("production rows: 60 (20 where the reference was better, 33.3 %)"), "{trained}");
    assert!(trained.contains("after (fine-tuned, CV)"), "{trained}");
    let after = std::fs::read_to_string(&model_file).unwrap();
    assert_ne!(before, after);
    let m: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(m["meta"]["from_evals"]["rows"], 60);
    // Cross-validated, never in-sample: every held-out SQL request escalated, nothing else.
    assert_eq!(m["meta"]["from_evals"]["cross_validation"]["after"]["missed"], 0, "{trained}");
    assert_eq!(m["meta"]["from_evals"]["cross_validation"]["after"]["escalated"], 20, "{trained}");
    assert_eq!(m["meta"]["from_evals"]["cross_validation"]["before"]["escalated"], 0, "{trained}");
    // train overwrote the file it started from: the prior it fine-tuned from is kept beside it,
    // and the model names that copy, so calibrate refits from the model before fine-tuning.
    let prior_copy = dir.join("router.prior.json");
    assert_eq!(m["meta"]["from_evals"]["prior"].as_str(), Some(prior_copy.to_str().unwrap()));
    let shipped = triage_core::router::LexicalModel::from_json(triage_core::router::DEFAULT_MODEL_JSON).unwrap();
    assert_eq!(std::fs::read_to_string(&prior_copy).unwrap(), shipped.to_json());

    // Calibration for a quality target, from the same rows, out of sample.
    let calibrated_file = dir.join("calibrated.json");
    let out = triage(
        &config_path,
        &["calibrate", "--from-evals", "--target-quality", "0.95", "--out", calibrated_file.to_str().unwrap()],
    );
    println!("$ triage calibrate --from-evals --target-quality 0.95\n{out}");
    assert!(out.contains("production rows: 60 (routed by the scorer); scores out-of-fold"), "{out}");
    assert!(out.contains("after (CV)"), "{out}");
    assert!(out.contains(&format!("folds refitted from the prior {}", prior_copy.display())), "{out}");
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&calibrated_file).unwrap()).unwrap();
    let t = c["meta"]["calibrated_from_evals"]["threshold"].as_f64().unwrap();
    assert_eq!(c["thresholds"]["by_tiers"]["2"][0].as_f64().map(|x| x as f32), Some(t as f32));
    let cv = &c["meta"]["calibrated_from_evals"]["after_cv"];
    assert_eq!(cv["rows"], 60, "{cv}");

    // The gateway reloads the retrained model (it routes with `router.json`, not the calibrated
    // copy): new SQL requests, asked in new ways, go to the reference; the rest stays cheap.
    let (sql_probes, other_probes) = probes();
    let deadline = Instant::now() + Duration::from_secs(15);
    while chat(&client, &base, &analytics_secret, &sql_probes[0]).await.tier != "frontier" {
        assert!(Instant::now() < deadline, "the retrained model was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &sql_probes {
        let sent = chat(&client, &base, &analytics_secret, p).await;
        assert_eq!((sent.tier.as_str(), sent.model.as_str()), ("frontier", "big"), "{p}");
    }
    for p in other_probes.iter().chain(&other[..5]) {
        let sent = chat(&client, &base, &support_secret, p).await;
        assert_eq!((sent.tier.as_str(), sent.model.as_str()), ("local", "cheap"), "{p}");
    }

    server.abort();
}
