//! The `triage train`, `triage eval` and `triage calibrate` subcommands as plain functions: the
//! binary parses flags into these structs and prints what they return.

use std::collections::HashMap;
use std::path::PathBuf;

use triage_core::router::features::RequestText;
use triage_core::router::{LexicalModel, ScorerKind, Thresholds};
use triage_embed::EmbeddingHead;

use crate::calibrate::{percentiles, shares_for_cost, thresholds_for_shares};
use crate::data::{self, BENCHMARKS};
use crate::embedding::{self, EmbeddingSetup, Embeddings};
use crate::replay::{self, EvalConfig, Split};
use crate::train::{self, TrainConfig, TrainSet};
use crate::{plot, EvalError};

/// Default shares per tier written into a freshly trained model, cheapest first, for 2 and 3
/// tiers; `triage calibrate` replaces them.
pub const DEFAULT_SHARES: [&[f64]; 2] = [&[0.6, 0.4], &[0.5, 0.3, 0.2]];

/// RouteLLM's prices (paper §5.1), USD per million tokens: Mixtral-8x7B and GPT-4.
pub const ROUTELLM_PRICES: (f64, f64) = (0.24, 24.7);

/// Arguments of `triage train`.
pub struct TrainArgs {
    /// Data folders.
    pub data: Vec<PathBuf>,
    /// Benchmarks to leave out.
    pub exclude: Vec<String>,
    /// Training sets: benchmark names and simple-JSONL files (any number of models per row;
    /// sets without the weak/strong pair are left out); empty = every known benchmark.
    pub sets: Vec<String>,
    /// Benchmark used as the calibration sample for default thresholds (if found), else all training prompts.
    pub calibrate_on: String,
    /// Hyper-parameters.
    pub cfg: TrainConfig,
    /// Which scorer to train: [`ScorerKind::Lexical`] or [`ScorerKind::Embedding`] (with
    /// `embedding` set).
    pub scorer: ScorerKind,
    /// The encoder for [`ScorerKind::Embedding`] (its head is ignored).
    pub embedding: Option<EmbeddingSetup>,
    /// Output file.
    pub out: PathBuf,
}

fn calibrated(scores: &[f32], sample: &str, shares: &[&[f64]]) -> Result<Thresholds, EvalError> {
    let mut t = Thresholds { quantiles: percentiles(scores), sample: sample.to_owned(), ..Default::default() };
    for s in shares {
        t.by_tiers.insert(s.len().to_string(), thresholds_for_shares(scores, s)?);
        t.shares.insert(s.len().to_string(), s.to_vec());
    }
    Ok(t)
}

/// A freshly trained model of either trainable scorer.
enum Trained {
    Lexical(LexicalModel),
    Embedding(EmbeddingHead, HashMap<String, Embeddings>),
}

impl Trained {
    fn score(&self, ds: &data::Dataset, i: usize) -> f32 {
        match self {
            Trained::Lexical(m) => m.score_text(&RequestText::of(&ds.items[i].request)),
            Trained::Embedding(h, emb) => match emb.get(&ds.name) {
                Some(e) => embedding::score_item(h, ds, e, i),
                None => 0.5,
            },
        }
    }
    fn set_thresholds(&mut self, t: Thresholds) -> Result<(), EvalError> {
        match self {
            Trained::Lexical(m) => m.set_thresholds(t),
            Trained::Embedding(h, _) => h.set_thresholds(t),
        }
        .map_err(|e| EvalError::Data(e.to_string()))
    }
    fn eval_config(&self, a: &TrainArgs, benchmark: &str, split: Split, train_sets: Vec<String>) -> EvalConfig {
        let (model, embedding) = match self {
            Trained::Lexical(m) => (Some(m.clone()), None),
            Trained::Embedding(h, _) => {
                (None, a.embedding.clone().map(|s| EmbeddingSetup { head: Some(h.clone()), ..s }))
            }
        };
        EvalConfig {
            data: a.data.clone(),
            benchmark: benchmark.to_owned(),
            router: a.scorer,
            split,
            model,
            embedding,
            train_sets,
            train: a.cfg.clone(),
            price_weak: ROUTELLM_PRICES.0,
            price_strong: ROUTELLM_PRICES.1,
            progress: false,
        }
    }
}

/// Trains a lexical or embedding model on every known benchmark found in `data` except
/// `exclude`, sets default thresholds (from the `calibrate_on` sample's scores,
/// [`DEFAULT_SHARES`]), evaluates the model on each excluded benchmark (held out) and the same
/// recipe under leave-benchmark-out, and writes the model file. Returns a human summary.
///
/// Errors: [`EvalError`] for missing data or encoder, or an unwritable output.
pub fn train_cmd(a: &TrainArgs) -> Result<String, EvalError> {
    let mut sets = Vec::new();
    let names: Vec<&str> =
        if a.sets.is_empty() { BENCHMARKS.to_vec() } else { a.sets.iter().map(String::as_str).collect() };
    for b in names {
        if a.exclude.iter().any(|e| e == b) {
            continue;
        }
        match data::load(&a.data, b, false) {
            Ok(d) => sets.push(d),
            Err(e) => eprintln!("note: not training on {b}: {e}"),
        }
    }
    let ts: Vec<TrainSet<'_>> =
        sets.iter().map(|d| TrainSet { data: d, items: (0..d.items.len()).collect() }).collect();
    let (mut model, rep, features, scorer) = match a.scorer {
        ScorerKind::Lexical => {
            let (m, rep) = train::train(&ts, &a.cfg)?;
            (Trained::Lexical(m), rep, train::feature_meta(&a.cfg), "lexical")
        }
        ScorerKind::Embedding => {
            let setup = a
                .embedding
                .as_ref()
                .ok_or_else(|| EvalError::Usage("the embedding scorer needs its encoder".into()))?;
            let mut emb = HashMap::new();
            for d in &sets {
                emb.insert(d.name.clone(), embedding::embed_dataset(setup, d, &indicatif::ProgressBar::hidden())?);
            }
            let max_tokens = setup.encoder.max_tokens();
            let (h, rep) = embedding::train_head(&ts, &emb, &a.cfg, max_tokens)?;
            (Trained::Embedding(h, emb), rep, embedding::feature_meta(max_tokens), "embedding")
        }
        ScorerKind::Random => return Err(EvalError::Usage("the random scorer has nothing to train".into())),
        ScorerKind::Quality => {
            return Err(EvalError::Usage("the quality scorer is trained by quality::train_cmd".into()))
        }
    };
    let sample: Vec<f32> = match sets.iter().find(|d| d.name == a.calibrate_on) {
        Some(d) => (0..d.items.len()).map(|i| model.score(d, i)).collect(),
        None => sets.iter().flat_map(|d| (0..d.items.len()).map(|i| model.score(d, i))).collect(),
    };
    let sample_name =
        if sets.iter().any(|d| d.name == a.calibrate_on) { a.calibrate_on.clone() } else { "training prompts".into() };
    model.set_thresholds(calibrated(&sample, &sample_name, &DEFAULT_SHARES)?)?;
    let summary = |r: &replay::EvalReport| serde_json::json!({"apgr_mean10": r.router_summary.apgr_mean10, "apgr_trapezoid": r.router_summary.apgr_trapezoid, "cpt50": r.router_summary.cpt50, "cpt80": r.router_summary.cpt80, "prompts": r.prompts, "split": r.split});
    let mut held_out = serde_json::Map::new();
    let mut out = String::new();
    for b in &a.exclude {
        match replay::evaluate(&model.eval_config(a, b, Split::Shipped, Vec::new())) {
            Ok(r) => {
                out.push_str(&format!(
                    "held out {b}: APGR {:.3} (paper mean) / {:.3} (trapezoid); random {:.3} / {:.3}\n",
                    r.router_summary.apgr_mean10,
                    r.router_summary.apgr_trapezoid,
                    r.random.apgr_mean10,
                    r.random.apgr_trapezoid
                ));
                held_out.insert(b.clone(), summary(&r));
            }
            Err(e) => eprintln!("note: cannot evaluate held-out {b}: {e}"),
        }
    }
    // The same recipe under leave-benchmark-out, per RouteLLM benchmark found: what to expect
    // on prompts unlike the training data (the shipped model itself has seen them all).
    let mut lbo = serde_json::Map::new();
    for b in ["mmlu", "gsm8k", "mt-bench"] {
        if a.exclude.iter().any(|e| e == b) || !sets.iter().any(|d| d.name == b) {
            continue;
        }
        let names = sets.iter().map(|d| d.name.clone()).collect();
        if let Ok(r) = replay::evaluate(&model.eval_config(a, b, Split::LeaveBenchmarkOut, names)) {
            out.push_str(&format!(
                "leave-benchmark-out {b}: APGR {:.3} (paper mean) / {:.3} (trapezoid)\n",
                r.router_summary.apgr_mean10, r.router_summary.apgr_trapezoid
            ));
            lbo.insert(b.to_owned(), summary(&r));
        }
    }
    let meta = serde_json::json!({
        "scorer": scorer,
        "date": crate::today_utc(),
        "features": features,
        "training_sets": rep.sets,
        "excluded": a.exclude,
        "split": if a.exclude.is_empty() { "all prompts of every training set (no held-out benchmark)".to_owned() } else { format!("leave out {}", a.exclude.join(", ")) },
        "weak": a.cfg.weak,
        "strong": a.cfg.strong,
        "hyper_parameters": {"buckets": a.cfg.buckets, "epochs": a.cfg.epochs, "lr": a.cfg.lr, "l2": a.cfg.l2, "l2_hashed": a.cfg.l2_hashed, "label": a.cfg.label, "margin": a.cfg.margin, "balance": a.cfg.balance, "seed": a.cfg.seed},
        "metrics": {"train_log_loss": rep.train_log_loss, "positive_share": rep.positive_share, "held_out": held_out, "leave_benchmark_out": lbo},
        "rebuild": format!("cargo run --release -p triage -- train --scorer {scorer} --data ../shared/data/routellm --data ../shared/data/arena-bench --out models/{scorer}-v1.json"),
    });
    let json = match &mut model {
        Trained::Lexical(m) => {
            m.set_meta(meta);
            m.to_json()
        }
        Trained::Embedding(h, _) => {
            h.set_meta(meta);
            h.to_json()
        }
    };
    std::fs::write(&a.out, &json).map_err(|e| EvalError::Usage(format!("cannot write {}: {e}", a.out.display())))?;
    Ok(format!(
        "trained {scorer} on {:?}; train log loss {:.4}, positive share {:.3}\n{out}wrote {} ({} bytes)",
        rep.sets,
        rep.train_log_loss,
        rep.positive_share,
        a.out.display(),
        json.len()
    ))
}

/// Runs `triage eval`: the evaluation, a table (returned), and `<out_dir>/<stem>.json` and
/// `<out_dir>/<stem>.svg` with `stem = eval-<benchmark>-<router>-<split>`.
///
/// Errors: [`EvalError`] for missing data or unwritable outputs.
pub fn eval_cmd(cfg: &EvalConfig, split_name: &str, out_dir: &std::path::Path) -> Result<String, EvalError> {
    let r = replay::evaluate(cfg)?;
    let mut s = replay::table(&r);
    std::fs::create_dir_all(out_dir)
        .map_err(|e| EvalError::Usage(format!("cannot create {}: {e}", out_dir.display())))?;
    let bench = r.benchmark.replace(['/', '\\'], "_");
    let stem = format!("eval-{bench}-{}-{split_name}", r.router);
    let json = serde_json::to_string_pretty(&r).map_err(|e| EvalError::Data(e.to_string()))?;
    let jp = out_dir.join(format!("{stem}.json"));
    let sp = out_dir.join(format!("{stem}.svg"));
    std::fs::write(&jp, json).map_err(|e| EvalError::Usage(format!("cannot write {}: {e}", jp.display())))?;
    std::fs::write(&sp, plot::svg(&r)).map_err(|e| EvalError::Usage(format!("cannot write {}: {e}", sp.display())))?;
    s.push_str(&format!("wrote {} and {}\n", jp.display(), sp.display()));
    Ok(s)
}

/// Runs `triage eval --tiers ...`: scores every prompt of `cfg.benchmark` (arena-bench) under
/// `cfg`'s router and split, then the multi-tier report; writes
/// `<out_dir>/eval-<benchmark>-tiers-<router>-<split>.json` and returns the text.
///
/// Errors: [`EvalError`] for missing data, unknown models or prices, unwritable outputs.
pub fn multi_cmd(
    cfg: &EvalConfig,
    tiers: &[String],
    split_name: &str,
    out_dir: &std::path::Path,
) -> Result<String, EvalError> {
    let ds = data::load(&cfg.data, &cfg.benchmark, true)?;
    let idx: Vec<usize> = (0..ds.items.len()).collect();
    let (scores, split, router, _) = replay::scores_for(cfg, &ds, &idx)?;
    let r = crate::multi::evaluate(&ds, tiers, &scores, &format!("{router}, {split}"))?;
    let mut s = crate::multi::table_text(&r);
    s.push_str(&crate::multi::random_aiq_text(&ds, tiers, replay::RANDOM_SEEDS, r.aiq.router)?);
    std::fs::create_dir_all(out_dir)
        .map_err(|e| EvalError::Usage(format!("cannot create {}: {e}", out_dir.display())))?;
    let jp = out_dir.join(format!("eval-{}-tiers-{router}-{split_name}.json", ds.name));
    let json = serde_json::to_string_pretty(&r).map_err(|e| EvalError::Data(e.to_string()))?;
    std::fs::write(&jp, json).map_err(|e| EvalError::Usage(format!("cannot write {}: {e}", jp.display())))?;
    s.push_str(&format!("wrote {}\n", jp.display()));
    Ok(s)
}

/// Arguments of `triage calibrate`.
pub struct CalibrateArgs {
    /// Data folders.
    pub data: Vec<PathBuf>,
    /// The sample: a benchmark name or a `.jsonl` file (only prompts are read).
    pub sample: String,
    /// Target shares per tier (cheapest first, summing to 1), or
    pub shares: Option<Vec<f64>>,
    /// a target cost in USD per 1,000 requests, with
    pub cost_per_1000: Option<f64>,
    /// each tier's price, USD per million tokens (cheapest first),
    pub tier_prices: Vec<f64>,
    /// tokens per request (prompt + answer) for the cost target,
    pub tokens_per_request: f64,
    /// and the relative split among tiers above the cheapest (default equal).
    pub mix: Option<Vec<f64>>,
}

/// A model whose thresholds `triage calibrate` sets.
pub enum Calibrated<'a> {
    /// A lexical model file.
    Lexical(&'a mut LexicalModel),
    /// An embedding head with the encoder to score the sample.
    Embedding(&'a mut EmbeddingHead, &'a EmbeddingSetup),
}

/// Scores the sample with `model`, derives thresholds for the target, stores them in the
/// model (beside any other tier counts) and returns a summary.
///
/// Errors: [`EvalError::Usage`] for neither or both targets, or inconsistent lengths;
/// [`EvalError::Data`] if the encoder fails.
pub fn calibrate_cmd(model: Calibrated<'_>, a: &CalibrateArgs) -> Result<String, EvalError> {
    let ds = data::load(&a.data, &a.sample, true)?;
    let scores: Vec<f32> = match &model {
        Calibrated::Lexical(m) => ds.items.iter().map(|it| m.score_text(&RequestText::of(&it.request))).collect(),
        Calibrated::Embedding(h, setup) => {
            let emb = embedding::embed_dataset(setup, &ds, &indicatif::ProgressBar::hidden())?;
            (0..ds.items.len()).map(|i| embedding::score_item(h, &ds, &emb, i)).collect()
        }
    };
    let shares = match (&a.shares, a.cost_per_1000) {
        (Some(s), None) => {
            let total: f64 = s.iter().sum();
            // Accept percentages (50,30,20) or fractions.
            s.iter().map(|x| x / total).collect::<Vec<_>>()
        }
        (None, Some(c)) => {
            let costs: Vec<f64> = a.tier_prices.iter().map(|p| p * a.tokens_per_request / 1e6).collect();
            let mix = a.mix.clone().unwrap_or_else(|| vec![1.0; costs.len().saturating_sub(1)]);
            shares_for_cost(c, &costs, &mix)?
        }
        _ => return Err(EvalError::Usage("give exactly one of --shares or --cost-per-1000".into())),
    };
    let t = thresholds_for_shares(&scores, &shares)?;
    let mut th = match &model {
        Calibrated::Lexical(m) => m.file().thresholds.clone(),
        Calibrated::Embedding(h, _) => h.file().thresholds.clone(),
    };
    th.by_tiers.insert(shares.len().to_string(), t.clone());
    th.shares.insert(shares.len().to_string(), shares.clone());
    th.quantiles = percentiles(&scores);
    th.sample = format!("{} ({} prompts)", ds.name, scores.len());
    match model {
        Calibrated::Lexical(m) => m.set_thresholds(th),
        Calibrated::Embedding(h, _) => h.set_thresholds(th),
    }
    .map_err(|e| EvalError::Data(e.to_string()))?;
    let realised: Vec<usize> = (0..shares.len())
        .map(|k| scores.iter().filter(|&&s| triage_core::router::tier_for(s, &t) == k).count())
        .collect();
    let mut s = format!("sample {} ({} prompts)\n", ds.name, scores.len());
    s.push_str(&format!("tiers {}: thresholds {:?}\n", shares.len(), t));
    for (k, (want, got)) in shares.iter().zip(&realised).enumerate() {
        s.push_str(&format!(
            "  tier {k}: target {:.1}%, on the sample {:.1}%\n",
            want * 100.0,
            *got as f64 * 100.0 / scores.len() as f64
        ));
    }
    if a.cost_per_1000.is_some() {
        let cost: f64 =
            realised.iter().zip(&a.tier_prices).map(|(n, p)| *n as f64 * p * a.tokens_per_request / 1e6).sum::<f64>()
                * 1000.0
                / scores.len() as f64;
        s.push_str(&format!("  cost on the sample: ${cost:.4} per 1,000 requests\n"));
    }
    Ok(s)
}

/// Known benchmark names, for help texts.
pub fn benchmarks() -> String {
    BENCHMARKS.join(", ")
}
