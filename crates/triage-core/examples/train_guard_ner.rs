//! Trains the guard's entity recogniser (issue 16) and writes its weights.
//!
//! ```sh
//! .venv/bin/python scripts/guard_ner_data.py --out target/guard-ner
//! cargo run --release -p triage-core --example train_guard_ner -- \
//!     target/guard-ner/train.jsonl crates/triage-core/src/guard/ner/weights.bin
//! ```
//!
//! Deterministic: the same input file gives the same weights (fixed shuffle seed, no threads).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use triage_core::guard::ner::{self, train};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = args.get(1).map_or("target/guard-ner/train.jsonl", String::as_str);
    let output = args.get(2).map_or("crates/triage-core/src/guard/ner/weights.bin", String::as_str);
    let epochs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let text = std::fs::read_to_string(input).expect("read the training file");
    let mut data = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let t = v["text"].as_str().unwrap_or("");
        let spans: Vec<(usize, usize, String)> = v["spans"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s[0].as_u64().unwrap_or(0) as usize,
                            s[1].as_u64().unwrap_or(0) as usize,
                            s[2].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        data.push(train::example(t, &spans));
    }
    // Confidence temperature: train on nine tenths, pick the temperature whose mean confidence
    // on the last tenth matches its tagging accuracy; then train again on everything. (The
    // evaluation's held-out split was never in the input file.)
    type Indexed<'a> = Vec<(usize, &'a train::Example)>;
    let (dev, rest): (Indexed<'_>, Indexed<'_>) = data.iter().enumerate().partition(|(i, _)| i % 10 == 9);
    let dev: Vec<&train::Example> = dev.into_iter().map(|x| x.1).collect();
    let rest: Vec<&train::Example> = rest.into_iter().map(|x| x.1).collect();
    let tokens: usize = data.iter().map(|e| e.toks.len()).sum();
    println!("{} sentences, {tokens} tokens, {epochs} epochs", data.len());
    let t0 = std::time::Instant::now();
    let first = train::train(&rest, epochs, 16);
    let leaked: &'static [u8] = Box::leak(first.into_boxed_slice());
    let model = ner::Model::from_bytes(leaked).expect("model");
    for t in [1f32, 10.0, 100.0, 1000.0] {
        let (acc, conf) = calibrate(&model, &dev, t);
        println!("T {t}: accuracy {acc:.3}, mean confidence {conf:.3}");
    }
    let (mut lo, mut hi) = (0.1f32, 10_000f32);
    for _ in 0..30 {
        let t = (lo * hi).sqrt();
        let (acc, conf) = calibrate(&model, &dev, t);
        if conf > acc {
            lo = t;
        } else {
            hi = t;
        }
    }
    let t = (lo * hi).sqrt();
    let all: Vec<&train::Example> = data.iter().collect();
    let mut bytes = train::train(&all, epochs, 16);
    println!("trained twice in {:.1} s", t0.elapsed().as_secs_f64());
    bytes[12..16].copy_from_slice(&t.to_le_bytes());
    std::fs::write(output, &bytes).expect("write weights");
    println!("temperature {t:.3}; wrote {} bytes to {output}", bytes.len());
}

/// Over the tokens the model puts in an entity: (share whose gold tag is of the same entity
/// type, mean confidence of that type) at temperature `t`.
fn calibrate(model: &ner::Model, data: &[&train::Example], t: f32) -> (f32, f32) {
    let (mut right, mut n, mut conf) = (0usize, 0usize, 0f64);
    for ex in data {
        for (p, gold) in model.tag_probs(&ex.toks, t).into_iter().zip(&ex.tags) {
            if p.0 != 0 {
                n += 1;
                right += usize::from(ner::entity(p.0) == ner::entity(*gold));
                conf += f64::from(p.1);
            }
        }
    }
    (right as f32 / n.max(1) as f32, (conf / n.max(1) as f64) as f32)
}
