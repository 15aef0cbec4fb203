//! The `embedding` scorer in the eval harness: embeddings of every prompt (computed once and
//! cached on disk, since the encoder takes milliseconds per prompt and every fold reuses them)
//! and the fit of its logistic head.
//!
//! The head reads `[embedding (384), standardised dense features (19)]` (see
//! `triage_embed::head`); the fit is the same recipe as the lexical scorer's
//! ([`crate::train`]): AdaGrad on the logistic loss with L2, seeded shuffles, one intercept per
//! training set during the fit (its base rate), the shipped intercept their weighted mean.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use indicatif::ProgressBar;
use triage_core::router::features::{self, RequestText, DENSE_LEN};
use triage_core::router::lexical::sigmoid;
use triage_core::router::Thresholds;
use triage_embed::{embedding_text, EmbeddingHead, Encoder, DIM};

use crate::data::Dataset;
use crate::train::{adagrad, labelled, standardise, Rng, TrainConfig, TrainReport, TrainSet};
use crate::EvalError;

/// Prompts per forward pass when filling the cache (sorted by length so padding stays small).
const BATCH: usize = 16;

/// What the harness needs to score with embeddings.
#[derive(Clone)]
pub struct EmbeddingSetup {
    /// The encoder (its `max_tokens` is the one heads are trained with).
    pub encoder: Arc<Encoder>,
    /// The head for the `shipped` split.
    pub head: Option<EmbeddingHead>,
    /// Cache file of computed embeddings (`None`: no cache).
    pub cache: Option<PathBuf>,
}

/// Embeddings of every item of a dataset, by item index.
pub type Embeddings = Vec<Vec<f32>>;

fn key(max_tokens: usize, text: &str) -> u64 {
    triage_core::router::features::fnv1a(max_tokens as u64, text.as_bytes())
}

/// Reads the cache file: records of a little-endian `u64` key and [`DIM`] little-endian `f32`.
/// A missing file is an empty cache; a truncated last record is ignored.
fn read_cache(path: &std::path::Path) -> HashMap<u64, Vec<f32>> {
    let mut map = HashMap::new();
    let mut bytes = Vec::new();
    if std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).is_err() {
        return map;
    }
    let rec = 8 + 4 * DIM;
    for r in bytes.chunks_exact(rec) {
        let (k, v) = r.split_at(8);
        let mut kb = [0u8; 8];
        kb.copy_from_slice(k);
        let e = v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        map.insert(u64::from_le_bytes(kb), e);
    }
    map
}

fn append_cache(path: &std::path::Path, recs: &[(u64, &[f32])]) -> Result<(), EvalError> {
    let err = |e: std::io::Error| EvalError::Usage(format!("embedding cache {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut buf = Vec::with_capacity(recs.len() * (8 + 4 * DIM));
    for (k, e) in recs {
        buf.extend_from_slice(&k.to_le_bytes());
        for x in *e {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
    // Drop a torn last record (a run killed mid-write) so the new records stay aligned.
    let len = f.metadata().map_err(err)?.len();
    let rec = (8 + 4 * DIM) as u64;
    if len % rec != 0 {
        f.set_len(len - len % rec).map_err(err)?;
    }
    f.write_all(&buf).map_err(err)
}

/// Embeddings of every item of `ds` (by item index), from the cache where present; the rest
/// are computed in batches and appended to the cache.
///
/// Errors: [`EvalError::Data`] if the encoder fails; [`EvalError::Usage`] if the cache cannot
/// be written.
pub fn embed_dataset(setup: &EmbeddingSetup, ds: &Dataset, pb: &ProgressBar) -> Result<Embeddings, EvalError> {
    let enc = &setup.encoder;
    let texts: Vec<String> = ds.items.iter().map(|it| embedding_text(&it.request)).collect();
    let keys: Vec<u64> = texts.iter().map(|t| key(enc.max_tokens(), t)).collect();
    let mut cache = setup.cache.as_deref().map(read_cache).unwrap_or_default();
    let mut missing: Vec<usize> = (0..texts.len()).filter(|&i| !cache.contains_key(&keys[i])).collect();
    pb.inc((texts.len() - missing.len()) as u64);
    missing.sort_by_key(|&i| texts[i].len());
    missing.dedup_by_key(|i| keys[*i]);
    for chunk in missing.chunks(BATCH) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        let embs = enc.embed_batch(&batch).map_err(|e| EvalError::Data(e.to_string()))?;
        if let Some(path) = &setup.cache {
            let recs: Vec<(u64, &[f32])> = chunk.iter().zip(&embs).map(|(&i, e)| (keys[i], e.as_slice())).collect();
            append_cache(path, &recs)?;
        }
        for (&i, e) in chunk.iter().zip(embs) {
            cache.insert(keys[i], e);
        }
        pb.inc(chunk.len() as u64);
    }
    keys.iter()
        .map(|k| cache.get(k).cloned().ok_or_else(|| EvalError::Data("embedding missing after computing it".into())))
        .collect()
}

/// The score of item `i` of a dataset under `head`, given the dataset's embeddings.
pub fn score_item(head: &EmbeddingHead, ds: &Dataset, emb: &Embeddings, i: usize) -> f32 {
    let dense = features::dense(&RequestText::of(&ds.items[i].request));
    head.score_parts(&emb[i], &dense)
}

struct Example {
    x: Vec<f32>,
    dense: [f32; DENSE_LEN],
    y: f32,
    w: f32,
    set: usize,
}

/// Fits a head on `sets`, whose embeddings are `emb[dataset name]`. Thresholds are left empty.
///
/// Errors: [`EvalError::Data`] if a set lacks the weak or strong model or its embeddings, or
/// nothing is left to train on.
pub fn train_head(
    sets: &[TrainSet<'_>],
    emb: &HashMap<String, Embeddings>,
    cfg: &TrainConfig,
    max_tokens: usize,
) -> Result<(EmbeddingHead, TrainReport), EvalError> {
    let (labelled, counts) = labelled(sets, cfg)?;
    let mut examples = Vec::with_capacity(labelled.len());
    for l in &labelled {
        let e = emb.get(&l.data.name).ok_or_else(|| EvalError::Data(format!("no embeddings of {}", l.data.name)))?;
        examples.push(Example {
            x: e.get(l.item)
                .cloned()
                .ok_or_else(|| EvalError::Data(format!("no embedding of {} item {}", l.data.name, l.item)))?,
            dense: features::dense(&RequestText::of(&l.data.items[l.item].request)),
            y: l.y,
            w: l.w,
            set: l.set,
        });
    }
    let wsum: f32 = examples.iter().map(|e| e.w).sum();
    let (mu, sd) = standardise(examples.iter_mut().map(|e| (e.w, &mut e.dense)));
    // Inputs of the fit: the embedding, then the standardised dense features.
    for e in &mut examples {
        e.x.extend_from_slice(&e.dense);
    }
    let dim = DIM + DENSE_LEN;
    let nsets = counts.len().max(1);
    let (mut w, mut gw) = (vec![0f32; dim], vec![0f32; dim]);
    let (mut b, mut gb) = (vec![0f32; nsets], vec![0f32; nsets]);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = Rng::new(cfg.seed);
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        for &k in &order {
            let e = &examples[k];
            let z = b[e.set] + e.x.iter().zip(&w).map(|(x, wj)| x * wj).sum::<f32>();
            let g = (sigmoid(z) - e.y) * e.w;
            for j in 0..dim {
                let gj = g * e.x[j] + cfg.l2 * w[j];
                adagrad(&mut w[j], &mut gw[j], gj, cfg.lr);
            }
            adagrad(&mut b[e.set], &mut gb[e.set], g, cfg.lr);
        }
    }
    let bias = examples.iter().map(|e| b[e.set] * e.w).sum::<f32>() / wsum;
    let (mut loss, mut pos) = (0f64, 0f64);
    for e in &examples {
        let z = b[e.set] + e.x.iter().zip(&w).map(|(x, wj)| x * wj).sum::<f32>();
        let p = f64::from(sigmoid(z)).clamp(1e-7, 1.0 - 1e-7);
        let y = f64::from(e.y);
        loss += f64::from(e.w) * -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
        pos += f64::from(e.w) * y;
    }
    let report =
        TrainReport { sets: counts, positive_share: pos / f64::from(wsum), train_log_loss: loss / f64::from(wsum) };
    let mut dense_w = [0f32; DENSE_LEN];
    dense_w.copy_from_slice(&w[DIM..]);
    w.truncate(DIM);
    let head =
        EmbeddingHead::new(max_tokens, bias, w, (dense_w, mu, sd), Thresholds::default(), serde_json::Value::Null)
            .map_err(|e| EvalError::Data(e.to_string()))?;
    Ok((head, report))
}

/// Metadata describing the head's inputs, for the model file.
pub fn feature_meta(max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "embedding": format!("{} mean-pooled, L2-normalised, of the last user message then the system prompt, first {max_tokens} tokens", triage_embed::ENCODER_NAME),
        "dense": triage_core::router::features::DENSE_NAMES,
        "model": "logistic regression (AdaGrad, L2) on [embedding, standardised dense features]",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{user_request, Item};

    #[test]
    fn the_head_learns_a_direction_of_the_embedding_space() {
        // Hard prompts point along +e0, easy ones along -e0; the texts carry no signal.
        let mut items = Vec::new();
        let mut emb = Vec::new();
        for i in 0..200 {
            let hard = i % 2 == 0;
            items.push(Item {
                id: i.to_string(),
                request: user_request(&format!("prompt {i}")),
                group: i.to_string(),
                quality: vec![if hard { 0.0 } else { 1.0 }, 1.0],
                answer_chars: Vec::new(),
            });
            let mut e = vec![0f32; DIM];
            e[0] = if hard { 1.0 } else { -1.0 };
            e[1 + i % 7] = 0.5;
            emb.push(e);
        }
        let ds = Dataset {
            name: "toy".into(),
            models: vec!["w".into(), "s".into()],
            items,
            dropped_contaminated: 0,
            scale: 1.0,
        };
        let cfg = TrainConfig { epochs: 10, weak: "w".into(), strong: "s".into(), ..Default::default() };
        let map = HashMap::from([("toy".to_owned(), emb.clone())]);
        let (head, rep) = train_head(&[TrainSet { data: &ds, items: (0..200).collect() }], &map, &cfg, 128).unwrap();
        assert_eq!(rep.sets["toy"], 200);
        assert!(rep.train_log_loss < 0.1, "{}", rep.train_log_loss);
        assert_eq!(head.file().max_tokens, 128);
        assert!(score_item(&head, &ds, &emb, 0) > 0.9);
        assert!(score_item(&head, &ds, &emb, 1) < 0.1);
        // Without its embeddings a set cannot be trained on.
        let err = train_head(&[TrainSet { data: &ds, items: vec![0] }], &HashMap::new(), &cfg, 128).unwrap_err();
        assert!(err.to_string().contains("no embeddings of toy"), "{err}");
    }

    #[test]
    fn the_cache_file_round_trips_and_ignores_a_torn_record() {
        let dir = std::env::temp_dir().join(format!("triage-embcache-{}", std::process::id()));
        let path = dir.join("c.bin");
        let _ = std::fs::remove_file(&path);
        let a: Vec<f32> = (0..DIM).map(|i| i as f32 / 7.0).collect();
        let b: Vec<f32> = (0..DIM).map(|i| -(i as f32)).collect();
        append_cache(&path, &[(1, &a), (2, &b)]).unwrap();
        // A torn third record (the process died mid-write) is dropped on read.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9u8; 20]).unwrap();
        let m = read_cache(&path);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&1], a);
        assert_eq!(m[&2], b);
        // The next append first cuts the torn bytes off, so its record reads back whole.
        append_cache(&path, &[(3, &a)]).unwrap();
        let m = read_cache(&path);
        assert_eq!(m.len(), 3);
        assert_eq!(m[&3], a);
        assert_ne!(key(128, "x"), key(256, "x"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
