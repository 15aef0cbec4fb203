//! The real all-MiniLM-L6-v2 encoder (fetched by scripts/fetch-embedding-model.sh, which
//! scripts/test.sh runs first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use triage_core::openai::ChatRequest;
use triage_core::router::Scorer;
use triage_embed::{default_dir, EmbeddingHead, EmbeddingScorer, Encoder, DEFAULT_HEAD_JSON, DIM};

fn encoder() -> &'static Encoder {
    static E: OnceLock<Encoder> = OnceLock::new();
    E.get_or_init(|| {
        Encoder::load(&default_dir(), 128)
            .unwrap_or_else(|e| panic!("{e}\n(run scripts/fetch-embedding-model.sh, as scripts/test.sh does)"))
    })
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn embeddings_are_unit_vectors_that_place_paraphrases_together() {
    let e = encoder();
    let a = e.embed("How do I reverse a linked list in Rust?").unwrap();
    let b = e.embed("Reverse a singly linked list, in Rust.").unwrap();
    let c = e.embed("What will the weather be like in Paris tomorrow?").unwrap();
    assert_eq!(a.len(), DIM);
    for v in [&a, &b, &c] {
        assert!((cos(v, v) - 1.0).abs() < 1e-4);
    }
    assert!(cos(&a, &b) > 0.6, "paraphrases: {}", cos(&a, &b));
    assert!(cos(&a, &c) < 0.3, "unrelated: {}", cos(&a, &c));
    assert!(cos(&a, &b) > cos(&a, &c) + 0.4);
}

/// Against an independent float64 numpy forward pass of the same weights
/// (tests/reference/minilm_numpy.py): the first 8 components and the sum of all 384.
#[test]
fn embeddings_match_an_independent_reference_implementation() {
    let cases: [(&str, [f32; 8], f32); 2] = [
        (
            "How do I reverse a linked list in Rust?",
            [-0.062503, 0.040017, 0.034548, 0.089576, 0.034267, 0.016544, 0.023841, 0.01795],
            0.065606,
        ),
        (
            "Summarise this note in one line.",
            [-0.06983, 0.169397, 0.02735, 0.028141, -0.006947, 0.025574, 0.079415, 0.001041],
            0.152462,
        ),
    ];
    for (text, head, sum) in cases {
        let e = encoder().embed(text).unwrap();
        for (i, (got, want)) in e.iter().zip(head).enumerate() {
            assert!((got - want).abs() < 2e-5, "{text:?}[{i}]: {got} vs {want}");
        }
        let s: f32 = e.iter().sum();
        assert!((s - sum).abs() < 2e-4, "{text:?}: sum {s} vs {sum}");
    }
}

#[test]
fn a_batch_gives_each_text_the_embedding_it_gets_alone() {
    let e = encoder();
    let short = "Summarise this note in one line.";
    let long = "Write a detailed plan for migrating a PostgreSQL database of forty tables to a new schema without downtime, covering dual writes, backfills, verification and the cut-over.";
    let batch = e.embed_batch(&[short, long]).unwrap();
    for (text, got) in [short, long].iter().zip(&batch) {
        let alone = e.embed(text).unwrap();
        let diff = alone.iter().zip(got).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "padding changed the embedding of {text:?} by {diff}");
    }
    assert!(e.embed_batch(&[]).unwrap().is_empty());
}

#[test]
fn text_past_the_token_limit_is_cut_off() {
    let e = encoder();
    let long = "alpha beta gamma delta ".repeat(100);
    assert_eq!(e.token_count(&long).unwrap(), 128);
    assert_eq!(e.token_count("hello world").unwrap(), 4, "[CLS] hello world [SEP]");
    let a = e.embed(&long).unwrap();
    let b = e.embed(&format!("{long} and a tail that the encoder never reads")).unwrap();
    assert_eq!(a, b);
    // Empty text still embeds ([CLS] [SEP]) instead of failing.
    assert_eq!(e.embed("").unwrap().len(), DIM);
}

#[test]
fn the_shipped_head_scores_requests_with_the_real_encoder() {
    let head = EmbeddingHead::from_json(DEFAULT_HEAD_JSON).unwrap();
    let enc = Encoder::load(&default_dir(), head.file().max_tokens).unwrap();
    let scorer = EmbeddingScorer::new(Arc::new(enc), head.clone()).unwrap();
    let req = |text: &str| -> ChatRequest {
        serde_json::from_value(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]}))
            .unwrap()
    };
    let easy = scorer.score(&req("hi, thanks!"));
    let hard = scorer.score(&req(
        "Prove that every bounded monotone sequence of real numbers converges, then use it to show that the sequence a(n+1) = sqrt(2 + a(n)) with a(1) = sqrt(2) converges and find its limit.",
    ));
    assert!((0.0..=1.0).contains(&easy) && (0.0..=1.0).contains(&hard));
    assert!(hard > easy, "hard {hard} vs easy {easy}");
    let (s, reason) = scorer.score_explained(&req("hi, thanks!"), 5);
    assert_eq!(s, easy);
    assert_eq!(reason.scorer, "embedding");
    assert!(reason.top_features.iter().any(|c| c.feature == "embedding"));
    // A head trained at another input length does not pair with this encoder.
    let other = Encoder::load(&default_dir(), 64).unwrap();
    assert!(EmbeddingScorer::new(Arc::new(other), head).is_err());
}

/// The static embedding's written-out ASCII WordPiece gives exactly the `tokenizers` crate's
/// ids: hand-picked cases (punctuation runs, code, tabs and control characters, capitals, a word
/// over the 100-character limit, pieces missing from the vocabulary) and 2,000 seeded random
/// ASCII strings.
#[test]
fn the_fast_ascii_wordpiece_matches_the_tokenizer() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/static-minilm-64.bin");
    let se = triage_embed::StaticEmbedding::load(&bin, &default_dir().join("tokenizer.json"))
        .unwrap_or_else(|e| panic!("{e}\n(run scripts/fetch-embedding-model.sh, as scripts/test.sh does)"));
    let long = "x".repeat(150);
    let mut cases: Vec<String> = [
        "Hello, World!! How's it going?",
        "fn main() { let v: Vec<u32> = (0..10).map(|x| x * 2).collect(); println!(\"{v:?}\"); }",
        "tabs\tand\nnewlines\r\nand \x07bell \x0bvt \x0cff \x7fdel and \x00nul",
        "UPPER lower MiXeD unaffable unaffableness ## ##ing",
        "zzzqqxjv qwxyzzy 12345.6789 3.14e-10 a_b-c/d\\e",
        "   leading and trailing   ",
        "",
        "!!!???...,,,;;;:::'''\"\"\"```~~~",
        &long,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut state = 7u64;
    let alphabet: Vec<u8> = (0u8..128).collect();
    for _ in 0..2000 {
        let mut s = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 120) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly letters and spaces, sometimes anything ASCII.
            let b = match state % 10 {
                0 => alphabet[(state >> 8) as usize % 128],
                1 | 2 => b' ',
                _ => b'a' + ((state >> 8) % 26) as u8,
            };
            s.push(char::from(b));
        }
        cases.push(s);
    }
    for c in &cases {
        assert_eq!(se.token_ids(c), se.reference_token_ids(c), "{c:?}");
    }
    // Non-ASCII text goes through the tokenizer itself.
    assert_eq!(se.token_ids("café naïve 東京"), se.reference_token_ids("café naïve 東京"));
}
