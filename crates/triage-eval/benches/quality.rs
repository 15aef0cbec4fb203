//! Decision latency of the per-model quality predictor (issue 14 target: ≤ 1 ms p50 for a
//! 512-token request on 2 cores), with and without the static token embedding, and of the
//! static embedding alone. The predictor's weights are the shipped shape (16,384 buckets, rank
//! 8, 19 dense + 64 static dimensions) with seeded values: latency does not depend on them.
//! Needs `models/static-minilm-64.bin` (`triage distill-static`) and the encoder's
//! `tokenizer.json` (scripts/fetch-embedding-model.sh) for the static rows.
//! Also the shipped `models/quality-v1.json` through `Router::decide`, as the gateway runs it.
//! Run: `cargo bench -p triage-eval --bench quality`.
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use triage_core::openai::ChatRequest;
use triage_core::router::features::RequestText;
use triage_eval::quality::{ExtraFeatures, QualityModel};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn request(tokens: usize) -> ChatRequest {
    let para = "Explain step by step why the following Python function is slow for large inputs, \
                then rewrite it in O(n log n): def pairs(xs): return [(a, b) for a in xs for b in xs if a + b == 0]. \
                Also compute 37 * 41 + 2^10 and prove that the sum of the first n odd numbers is n^2. ";
    let mut text = String::new();
    while triage_core::tokens::count_text(&text) < tokens as u64 {
        text.push_str(para);
    }
    let body = serde_json::json!({"model": "auto", "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": text}
    ]});
    serde_json::from_value(body).unwrap_or_else(|e| unreachable!("{e}"))
}

fn model(dense: usize) -> QualityModel {
    let (k, buckets) = (8usize, 1u32 << 14);
    let mut s = 1u64;
    let mut r = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let models = ["mixtral-8x7b-instruct-v0.1", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"];
    QualityModel {
        rank: k,
        buckets,
        dense_mean: vec![0.0; dense],
        dense_sd: vec![1.0; dense],
        w_hashed: (0..buckets as usize * k).map(|_| r()).collect(),
        w_dense: (0..dense * k).map(|_| r()).collect(),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        vectors: models.iter().map(|_| (0..k).map(|_| r()).collect()).collect(),
        offsets: vec![0.0; models.len()],
    }
}

fn bench(c: &mut Criterion) {
    let req = request(512);
    let text = RequestText::of(&req).text;
    eprintln!("request: {} bytes, {} o200k tokens", text.len(), triage_core::tokens::count_text(&text));
    let names = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"];
    let lexical_only = model(triage_core::router::features::DENSE_LEN);
    c.bench_function("quality predict 3 models, lexical features, 512-token request", |b| {
        b.iter(|| lexical_only.predict(&RequestText::of(std::hint::black_box(&req)), &names, None))
    });
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/static-minilm-64.bin");
    let tok = triage_embed::default_dir().join("tokenizer.json");
    let before = rss_kib();
    let se = match triage_embed::StaticEmbedding::load(&bin, &tok) {
        Ok(se) => Arc::new(se),
        Err(e) => {
            eprintln!("skipping the static rows: {e}");
            return;
        }
    };
    eprintln!("RSS for the static table + tokenizer: +{} KiB", rss_kib().saturating_sub(before));
    let dim = se.dim();
    let se2 = Arc::clone(&se);
    let extra: ExtraFeatures = Arc::new(move |rt: &RequestText| se2.embed(&rt.text));
    let with_static = model(triage_core::router::features::DENSE_LEN + dim);
    c.bench_function("static embedding alone, 512-token request", |b| b.iter(|| se.embed(std::hint::black_box(&text))));
    c.bench_function("quality predict 3 models, lexical + static embedding, 512-token request", |b| {
        b.iter(|| with_static.predict(&RequestText::of(std::hint::black_box(&req)), &names, Some(&extra)))
    });
    // The shipped file as the gateway runs it: request text, 19 dense + 64 static features,
    // 3 tier profiles, the margin rule (`Router::decide`, the whole decision with its reason).
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/quality-v1.json");
    let json = std::fs::read_to_string(&shipped).unwrap_or_else(|e| unreachable!("{}: {e}", shipped.display()));
    let file = triage_core::router::quality::QualityFile::from_json(&json).unwrap_or_else(|e| unreachable!("{e}"));
    let before = rss_kib();
    let scorer =
        triage_core::router::quality::QualityScorer::new(file, Some(extra)).unwrap_or_else(|e| unreachable!("{e}"));
    let router = triage_core::router::Router::new(Box::new(scorer), Default::default());
    eprintln!("RSS for the shipped quality model: +{} KiB", rss_kib().saturating_sub(before));
    c.bench_function("quality router decide (models/quality-v1.json, 3 tiers), 512-token request", |b| {
        b.iter(|| router.decide(std::hint::black_box(&req), 3))
    });
    let short = request(30);
    c.bench_function("quality router decide (models/quality-v1.json, 3 tiers), 30-token request", |b| {
        b.iter(|| router.decide(std::hint::black_box(&short), 3))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
