//! Decision latency of the `embedding` scorer (needs scripts/fetch-embedding-model.sh first):
//! - `decide_embedding_256_token_prompt`: score + tier + reason of a request whose prompt is
//!   256 encoder tokens, with the shipped head (its encoder reads the first
//!   `DEFAULT_MAX_TOKENS` of them), as the gateway runs it for `model: "auto"`;
//! - `encode_N_tokens`: the encoder alone reading N tokens, for N = 64, 128, 256.
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use triage_core::openai::ChatRequest;
use triage_core::router::Router;
use triage_embed::{default_dir, EmbeddingHead, EmbeddingScorer, Encoder, DEFAULT_HEAD_JSON, MAX_TOKENS};

fn prompt(tokens: usize, enc: &Encoder) -> String {
    let words = "explain how a binary search tree keeps its ordering invariant when a node with two children is deleted and why";
    let mut s = String::new();
    for w in words.split(' ').cycle() {
        if enc.token_count(&s).unwrap_or(usize::MAX) >= tokens {
            break;
        }
        s.push_str(w);
        s.push(' ');
    }
    s
}

fn bench(c: &mut Criterion) {
    let full = match Encoder::load(&default_dir(), MAX_TOKENS) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let p256 = prompt(256, &full);
    if let Ok(head) = EmbeddingHead::from_json(DEFAULT_HEAD_JSON) {
        if let Ok(enc) = Encoder::load(&default_dir(), head.file().max_tokens) {
            if let Ok(scorer) = EmbeddingScorer::new(Arc::new(enc), head) {
                let router = Router::new(Box::new(scorer), Default::default());
                let req: Result<ChatRequest, _> = serde_json::from_value(serde_json::json!({
                    "model": "auto", "messages": [{"role": "user", "content": p256}]
                }));
                if let Ok(req) = req {
                    c.bench_function("decide_embedding_256_token_prompt", |b| b.iter(|| router.decide(&req, 3)));
                }
            }
        }
    }
    for n in [64usize, 128, 256] {
        let p = prompt(n, &full);
        let enc = match Encoder::load(&default_dir(), n) {
            Ok(e) => e,
            Err(_) => continue,
        };
        c.bench_function(&format!("encode_{n}_tokens"), |b| b.iter(|| enc.embed(&p)));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
