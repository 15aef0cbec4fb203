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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use triage_local::{Engine, EngineConfig, GenerateRequest, Message, Output, Sampling};
use triage_testkit::gguf::{TinyLlama, Weights};

/// Where llama.cpp's log (sent to `tracing` by the engine) is written while a model loads.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

/// Loads the engine and returns what llama.cpp logged while it loaded the model. The model is
/// read on the calling thread, so a subscriber for this thread only sees this load, not the
/// other test's running at the same time.
fn load_logged(config: EngineConfig) -> (Engine, String) {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let engine = tracing::subscriber::with_default(subscriber, || Engine::load(config)).unwrap();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (engine, text)
}

/// llama.cpp's count of the model's tensors by type, from the loader's
/// `llama_model_loader: - type q4_K:   11 tensors` lines.
fn tensor_types(log: &str) -> BTreeMap<String, u32> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("- type ").nth(1)?;
            let (ty, n) = rest.split_once(':')?;
            let mut words = n.split_whitespace();
            let n = words.next()?.parse().ok()?;
            (words.next()? == "tensors").then(|| (ty.trim().to_owned(), n))
        })
        .collect()
}

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

/// The tensors of `real_widths()` by the type they are written in: per layer the four
/// attention and three feed-forward matrices and two norms; the embeddings, the output matrix
/// and the final norm.
fn expected_types(weights: Weights) -> BTreeMap<String, u32> {
    let layers = real_widths().layers;
    let norms = 2 * layers + 1;
    let types: Vec<(&str, u32)> = match weights {
        // Q6_K for attn_v, ffn_down and output, as llama-quantize's Q4_K_M.
        Weights::Q4KM => vec![("f32", norms), ("q4_K", 1 + 5 * layers), ("q6_K", 2 * layers + 1)],
        Weights::Q8_0 => vec![("f32", norms), ("q8_0", 1 + 7 * layers + 1)],
        _ => unreachable!(),
    };
    types.into_iter().map(|(t, n)| (t.to_owned(), n)).collect()
}

async fn serves_real_shapes(weights: Weights, bits_per_weight: f64) -> String {
    let path = model(weights);
    let size = std::fs::metadata(&path).unwrap().len();
    // The weights really are in the quantized format: bytes per weight of the file, against
    // F32's 32 bits.
    let params = real_widths().parameters() as f64;
    let bits = size as f64 * 8.0 / params;
    assert!((bits_per_weight - 0.6..bits_per_weight + 0.6).contains(&bits), "{weights:?}: {bits:.2} bits a weight");
    let (e, log) = load_logged(EngineConfig {
        model_path: path,
        parallel: 2,
        queue: 2,
        context: 4096,
        threads: 2,
        chat_template: None,
    });
    // llama.cpp read every matrix in the quantized type it was written in (not converted): the
    // kernels that multiply them are the Q4_K / Q6_K / Q8_0 ones.
    assert_eq!(tensor_types(&log), expected_types(weights), "llama.cpp's load log:\n{log}");
    // Hundreds of prompt tokens: prefill runs matrix-matrix products of every weight.
    let long: String = (0..60).map(|i| format!("item {i} is {}; ", i * 7 % 13)).collect();
    let prompt_tokens = e.count_tokens(&e.render(&[Message::new("user", &long)]).unwrap()) as u32;
    assert!((300..4000).contains(&prompt_tokens), "{prompt_tokens}");
    let first = run(&e, ask(&long, 24, false)).await;
    assert_eq!((first.usage.prompt_tokens, first.usage.completion_tokens), (prompt_tokens, 24));
    // The tokens became text (random weights pick byte tokens too, so not all of it is valid
    // UTF-8, and how much is left is the model's choice).
    assert!(!first.text.is_empty());
    // The same numbers every time the same work is done.
    let again = run(&e, ask(&long, 24, false)).await;
    assert_eq!(again.text, first.text);
    // Two sequences per step (the batched kernels; a prompt read in chunks next to a generating
    // sequence). Different batch shapes may round differently, so only the counts are exact.
    let (a, b) = tokio::join!(run(&e, ask(&long, 24, false)), run(&e, ask("Count the items.", 24, false)));
    assert_eq!((a.usage.prompt_tokens, a.usage.completion_tokens, b.usage.completion_tokens), (prompt_tokens, 24, 24));
    let s = e.stats();
    assert_eq!(s.generated_tokens, 4 * 24);
    log
}

#[tokio::test]
async fn q4_k_m_at_real_widths_runs_through_the_engine() {
    // Q4_K: 4.5 bits a weight, Q6_K 6.56; about a quarter of the weights are Q6_K here.
    let log = serves_real_shapes(Weights::Q4KM, 5.2).await;
    // On x86-64 with AVX2 (every machine this is built for: x86-64-v3 or the native CPU) ggml
    // repacks the layers' Q4_K matrices (not the embeddings, which are looked up, not
    // multiplied) into 8-row interleaved blocks for its AVX2/AVX-512 GEMM and GEMV
    // (`ggml_repack_get_optimal_repack_type` in ggml-cpu/repack.cpp, "repack tensor … with
    // q4_K_8x8" in its log): the Q4_K kernels real Q4_K_M models run, where AMX CPUs ran
    // `ggml_backend_amx_mul_mat` before it was compiled out. The Q6_K matrices stay in place
    // (`ggml_vec_dot_q6_K_q8_K`).
    #[cfg(target_arch = "x86_64")]
    {
        let repacked = log.lines().filter(|l| l.contains("repack tensor blk.") && l.contains("with q4_K_8x8")).count();
        assert_eq!(repacked as u32, 5 * real_widths().layers, "{log}");
    }
}

#[tokio::test]
async fn q8_0_at_real_widths_runs_through_the_engine() {
    serves_real_shapes(Weights::Q8_0, 8.5).await;
}
