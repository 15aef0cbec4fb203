//! The router's model file is reloaded while the gateway runs: a new file written over the old
//! one (atomically, by rename) changes where `auto` goes within about a second, without a
//! restart and without failing any request sent meanwhile; a file that does not parse leaves the
//! current router in place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use triage_core::router::{LexicalModel, Thresholds, DEFAULT_MODEL_JSON};

/// The shipped lexical model with one threshold for two tiers: 1.0 sends everything to the
/// cheap tier (no score reaches it), 0.0 everything to the dear one.
fn model_with_threshold(t: f32) -> String {
    let mut m = LexicalModel::from_json(DEFAULT_MODEL_JSON).unwrap();
    let mut th = Thresholds::default();
    th.by_tiers.insert("2".into(), vec![t]);
    m.set_thresholds(th).unwrap();
    m.to_json()
}

/// Writes `text` to `path` as `triage train` does: a temporary file renamed over it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn tier_of(gw: &Gateway) -> String {
    let resp = post(gw, r#"{"model":"auto","messages":[{"role":"user","content":"Say hello."}]}"#).await;
    assert_eq!(resp.status(), 200);
    resp.headers()["x-triage-tier"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_model_file_is_reloaded_without_dropping_requests() {
    let up = FakeUpstream::replay(Reply::json(200, COMPLETION)).await;
    let dir = std::env::temp_dir().join(format!("triage-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("router.json");
    write_atomically(&file, &model_with_threshold(1.0));
    let config = format!(
        r#"
tiers = ["cheap", "dear"]
[router]
scorer = "lexical"
model_file = "{}"
[providers.oa]
kind = "openai"
base_url = "{}"
[[models]]
id = "small"
provider = "oa"
tier = "cheap"
price = {{ input = 0.1, output = 0.2 }}
context_window = 100000
[[models]]
id = "large"
provider = "oa"
tier = "dear"
price = {{ input = 5.0, output = 10.0 }}
context_window = 100000
"#,
        file.display(),
        up.url()
    );
    let gw = start(&config).await;
    assert_eq!(tier_of(&gw).await, "cheap");

    // Requests keep flowing while the file changes under them: every one succeeds.
    let url = gw.url("/v1/chat/completions");
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..200 {
            let r = client()
                .post(&url)
                .body(r#"{"model":"auto","messages":[{"role":"user","content":"Say hello."}]}"#)
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A file that is not a model is refused; the current router stays.
    write_atomically(&file, "{ not a model");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tier_of(&gw).await, "cheap", "a broken file leaves the router as it was");
    write_atomically(&file, &model_with_threshold(0.0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while tier_of(&gw).await != "dear" {
        assert!(Instant::now() < deadline, "the new model file was never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = traffic.await.unwrap();
    assert_eq!(statuses.len(), 200);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let metrics = client().get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("triage_router_reloads_total{outcome=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("triage_router_reloads_total{outcome=\"failed\"}"), "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}
