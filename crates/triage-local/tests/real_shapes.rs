//! The engine on a model of a real model's widths and number formats.
//!
//! The tiny fixture (64-wide, F32) never reaches the matrix kernels real models run: llama.cpp
//! multiplies Q4_K, Q6_K and Q8_0 weights with kernels of their own (ggml's `vec_dot_q4_K_q8_K`
//! and friends, the repacked AVX2/AVX-512 GEMMs, and on AMX CPUs `ggml_backend_amx_mul_mat`,
//! which crashed in issue 17 and is compiled out: docs/RELIABILITY.md), chosen by the blocks'
//! layout (256-wide super-blocks for the K-quants) and the matrices' widths. So this test writes
//! the random-weight llama at the widths of a real 1 B-class model (1,024-wide embeddings, a
//! 2,816-wide feed-forward: whole 256-wide super-blocks; 16 heads over 4 key/value heads; a
//! 4,096-token vocabulary) in Q4_K_M's layout (Q4_K and Q6_K blocks) and in Q8_0, and runs
//! prompts of hundreds of tokens (batched prefill: matrix-matrix kernels) and generation
//! (matrix-vector kernels) through the engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use triage_local::{Engine, EngineConfig, GenerateRequest, Message, Output, Sampling};
use triage_testkit::gguf::{TinyLlama, Weights};

fn real_widths() -> TinyLlama {
    TinyLlama {
        seed: 7,
        layers: 2,
        embd: 1024,
        heads: 16,
        kv_heads: 4,
        ff: 2816,
        vocab: 4096,
        weights: Weights::F32,
        ..TinyLlama::default()
    }
}

/// The model in `weights`, written once per content.
fn model(weights: Weights) -> PathBuf {
    TinyLlama { weights, ..real_widths() }.write_temp().unwrap()
}

fn ask(prompt: &str, max_tokens: u32, cache_prompt: bool) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message::new("user", prompt)],
        max_tokens: Some(max_tokens),
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: None },
        cache_prompt,
        ..GenerateRequest::default()
    }
}

async fn run(e: &Engine, r: GenerateRequest) -> Output {
    e.generate(r).unwrap().collect().await.unwrap()
}

async fn serves_real_shapes(weights: Weights, bits_per_weight: f64) {
    let path = model(weights);
    let size = std::fs::metadata(&path).unwrap().len();
    // The weights really are in the quantized format: bytes per weight of the file, against
    // F32's 32 bits.
    let params = real_widths().parameters() as f64;
    let bits = size as f64 * 8.0 / params;
    assert!((bits_per_weight - 0.6..bits_per_weight + 0.6).contains(&bits), "{weights:?}: {bits:.2} bits a weight");
    let e = Engine::load(EngineConfig {
        model_path: path,
        parallel: 2,
        queue: 2,
        context: 4096,
        threads: 2,
        chat_template: None,
    })
    .unwrap();
    // Hundreds of prompt tokens: prefill runs matrix-matrix products of every weight.
    let long: String = (0..60).map(|i| format!("item {i} is {}; ", i * 7 % 13)).collect();
    let prompt_tokens = e.count_tokens(&e.render(&[Message::new("user", &long)]).unwrap()) as u32;
    assert!((300..4000).contains(&prompt_tokens), "{prompt_tokens}");
    let first = run(&e, ask(&long, 24, false)).await;
    assert_eq!((first.usage.prompt_tokens, first.usage.completion_tokens), (prompt_tokens, 24));
    // The same numbers every time the same work is done.
    let again = run(&e, ask(&long, 24, false)).await;
    assert_eq!(again.text, first.text);
    // Two sequences per step (the batched kernels; a prompt read in chunks next to a generating
    // sequence). Different batch shapes may round differently, so only the counts are exact.
    let (a, b) = tokio::join!(run(&e, ask(&long, 24, false)), run(&e, ask("Count the items.", 24, false)));
    assert_eq!((a.usage.prompt_tokens, a.usage.completion_tokens, b.usage.completion_tokens), (prompt_tokens, 24, 24));
    let s = e.stats();
    assert_eq!(s.generated_tokens, 4 * 24);
}

#[tokio::test]
async fn q4_k_m_at_real_widths_runs_through_the_engine() {
    // Q4_K: 4.5 bits a weight, Q6_K 6.56; about a quarter of the weights are Q6_K here.
    serves_real_shapes(Weights::Q4KM, 5.2).await;
}

#[tokio::test]
async fn q8_0_at_real_widths_runs_through_the_engine() {
    serves_real_shapes(Weights::Q8_0, 8.5).await;
}
