//! Decision latency of the shipped lexical scorer on a 500-token prompt (issue 9 asks for
//! < 50 µs p50), and of the random baseline. Run: `cargo bench -p triage-eval --bench decide`.
//! (The embedding scorer's is `cargo bench -p triage-embed --bench embed`.)
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use criterion::{criterion_group, criterion_main, Criterion};
use triage_core::openai::ChatRequest;
use triage_core::router::{RandomScorer, Router};

fn prompt_500_tokens() -> ChatRequest {
    // About 2,000 characters of mixed prose, code and math: ~500 o200k tokens.
    let para = "Explain step by step why the following Python function is slow for large inputs, \
                then rewrite it in O(n log n): def pairs(xs): return [(a, b) for a in xs for b in xs if a + b == 0]. \
                Also compute 37 * 41 + 2^10 and prove that the sum of the first n odd numbers is n^2. ";
    let text = para.repeat(7);
    let body = serde_json::json!({
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": text}
        ]
    });
    serde_json::from_value(body).unwrap_or_else(|e| unreachable!("{e}"))
}

fn bench(c: &mut Criterion) {
    let router = Router::default_model().unwrap_or_else(|e| unreachable!("{e}"));
    let req = prompt_500_tokens();
    let text = triage_core::router::features::RequestText::of(&req).text;
    eprintln!("prompt: {} bytes, {} o200k tokens", text.len(), triage_core::tokens::count_text(&text));
    c.bench_function("lexical score+tier, 500-token prompt", |b| b.iter(|| router.tier(std::hint::black_box(&req), 3)));
    c.bench_function("lexical decide with reason, 500-token prompt", |b| {
        b.iter(|| router.decide(std::hint::black_box(&req), 3))
    });
    let random = Router::new(Box::new(RandomScorer { seed: 1 }), Default::default());
    c.bench_function("random score+tier, 500-token prompt", |b| b.iter(|| random.tier(std::hint::black_box(&req), 3)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
