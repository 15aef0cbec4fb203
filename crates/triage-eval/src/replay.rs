//! Replaying a benchmark through a router: scores per prompt (from the shipped model, a
//! random scorer, or models trained per fold so that no prompt is scored by a model that saw
//! it), then the sweep and every metric beside the random and oracle baselines.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use triage_core::router::features::RequestText;
use triage_core::router::{LexicalModel, RandomScorer, ScorerKind};

use crate::data::{self, Dataset};
use crate::embedding::{self, EmbeddingSetup};
use crate::metrics::{self, Summary};
use crate::train::{self, TrainConfig, TrainReport, TrainSet};
use crate::EvalError;

/// How scores are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The given (shipped) model, untouched: it may have been trained on these prompts.
    Shipped,
    /// Train on every other benchmark found, never on the evaluated one.
    LeaveBenchmarkOut,
    /// Five folds of the evaluated benchmark grouped by [`data::Item::group`] (MMLU: domain,
    /// MT Bench: category, GSM8K: prompt); each fold is scored by a model trained on the other
    /// four folds plus every other benchmark.
    Grouped5Fold,
}

impl std::str::FromStr for Split {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "shipped" | "none" => Ok(Split::Shipped),
            // "leave-dataset-out" is the same split under the issue-14 name: train on every
            // other dataset given (`--train-on`, any number of benchmarks and JSONL files).
            "leave-benchmark-out" | "leave-dataset-out" => Ok(Split::LeaveBenchmarkOut),
            "grouped-5-fold" => Ok(Split::Grouped5Fold),
            _ => Err(EvalError::Usage(format!(
                "unknown split {s:?}; valid: shipped, leave-benchmark-out (= leave-dataset-out), grouped-5-fold"
            ))),
        }
    }
}

/// What to evaluate.
pub struct EvalConfig {
    /// Data folders to search (RouteLLM layout, arena-bench).
    pub data: Vec<PathBuf>,
    /// Benchmark to evaluate (`mmlu`, `gsm8k`, `mt-bench`, `arena-bench` or a `.jsonl` path).
    pub benchmark: String,
    /// Router.
    pub router: ScorerKind,
    /// Split.
    pub split: Split,
    /// The model for [`Split::Shipped`].
    pub model: Option<LexicalModel>,
    /// The encoder (and, for [`Split::Shipped`], the head) of the `embedding` router.
    pub embedding: Option<EmbeddingSetup>,
    /// Benchmarks to train on besides the evaluated one (for the two training splits).
    pub train_sets: Vec<String>,
    /// Training hyper-parameters (models names included).
    pub train: TrainConfig,
    /// Weak model price, USD per million tokens.
    pub price_weak: f64,
    /// Strong model price, USD per million tokens.
    pub price_strong: f64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Every figure of one evaluation (serialised to the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Benchmark name.
    pub benchmark: String,
    /// Router name.
    pub router: String,
    /// Split label, e.g. `leave-benchmark-out (trained on gsm8k, mt-bench, arena-bench)`.
    pub split: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Contaminated prompts dropped.
    pub dropped_contaminated: usize,
    /// Weak model.
    pub weak: String,
    /// Strong model.
    pub strong: String,
    /// Prices used, USD per million tokens (weak, strong).
    pub prices_usd_per_million: (f64, f64),
    /// Quality of the weak model alone and of the strong model alone.
    pub quality_weak: f64,
    /// See `quality_weak`.
    pub quality_strong: f64,
    /// The router's figures.
    pub router_summary: Summary,
    /// Random routing's expected figures.
    pub random: Summary,
    /// The oracle's figures.
    pub oracle: Summary,
    /// Training reports, one per fitted model.
    pub training: Vec<TrainReport>,
    /// Trapezoid APGR of the `random` scorer over seeds 1..=N ([`RANDOM_SEEDS`]): the spread
    /// one random draw has on these prompts, to compare the router with.
    pub random_spread: RandomSpread,
    /// Per-prompt grid of quality for the router, the oracle (k = 0..=n), for plots.
    #[serde(skip)]
    pub curves: Curves,
}

/// How many seeds of the `random` scorer give the spread printed beside every evaluation.
pub const RANDOM_SEEDS: u64 = 20;

/// Trapezoid APGR of the `random` scorer (FNV hash of the request text with a seed) over
/// seeds 1..=`seeds` on the evaluated prompts.
#[derive(Debug, Clone, Serialize)]
pub struct RandomSpread {
    /// Number of seeds.
    pub seeds: u64,
    /// Mean trapezoid APGR.
    pub mean: f64,
    /// 95th percentile (nearest rank) of the trapezoid APGR.
    pub p95: f64,
    /// Smallest and largest.
    pub min: f64,
    /// See `min`.
    pub max: f64,
}

/// Trapezoid APGR of the random scorer for seeds `1..=seeds` on prompts `idx` of `ds`
/// (qualities `weak`, `strong` aligned with `idx`): mean, nearest-rank 95th percentile, min, max.
pub fn random_spread(ds: &Dataset, idx: &[usize], weak: &[f64], strong: &[f64], seeds: u64) -> RandomSpread {
    let texts: Vec<String> = idx.iter().map(|&i| RequestText::of(&ds.items[i].request).text).collect();
    let mut v: Vec<f64> = (1..=seeds.max(1))
        .map(|seed| {
            let r = RandomScorer { seed };
            let sc: Vec<f32> = texts.iter().map(|t| r.score_str(t)).collect();
            metrics::summarize(&metrics::routed_quality(&sc, weak, strong), 1.0, 1.0).apgr_trapezoid
        })
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n) - 1;
    RandomSpread { seeds: n as u64, mean: v.iter().sum::<f64>() / n as f64, p95: v[rank], min: v[0], max: v[n - 1] }
}

/// Quality at every k for the router and the oracle.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    /// Router.
    pub router: Vec<f64>,
    /// Oracle.
    pub oracle: Vec<f64>,
}

fn bar(n: usize, on: bool, what: &str) -> ProgressBar {
    if !on {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(n as u64);
    if let Ok(s) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} prompts ({elapsed})") {
        b.set_style(s.progress_chars("=> "));
    }
    b.set_message(what.to_owned());
    b
}

fn score_items(model: &LexicalModel, ds: &Dataset, idx: &[usize], pb: &ProgressBar) -> Vec<(usize, f32)> {
    idx.iter()
        .map(|&i| {
            pb.inc(1);
            (i, model.score_text(&RequestText::of(&ds.items[i].request)))
        })
        .collect()
}

/// Assigns groups to 5 folds: groups sorted by size (largest first, then name) go one by one to
/// the fold with the fewest prompts so far. Returns the fold of each item.
pub fn grouped_folds(groups: &[&str], k: usize) -> Vec<usize> {
    let mut sizes: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for g in groups {
        *sizes.entry(g).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = sizes.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut load = vec![0usize; k];
    let mut fold_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (g, n) in order {
        let f = (0..k).min_by_key(|&f| (load[f], f)).unwrap_or(0);
        load[f] += n;
        fold_of.insert(g, f);
    }
    groups.iter().map(|g| fold_of.get(g).copied().unwrap_or(0)).collect()
}

/// Scores of `ds.items[idx]` under `cfg`'s router and split (out-of-fold for the training
/// splits), with the split's label, the router's name and the training reports.
///
/// Errors: [`EvalError`] for missing training data or model.
pub fn scores_for(
    cfg: &EvalConfig,
    ds: &Dataset,
    idx: &[usize],
) -> Result<(Vec<f32>, String, String, Vec<TrainReport>), EvalError> {
    const SHIPPED: &str = "shipped model, untouched (it may have seen these prompts)";
    match cfg.router {
        ScorerKind::Random => {
            let r = RandomScorer { seed: cfg.train.seed };
            let s = idx.iter().map(|&i| r.score_str(&RequestText::of(&ds.items[i].request).text)).collect();
            Ok((s, "none (untrained)".to_owned(), "random".to_owned(), Vec::new()))
        }
        ScorerKind::Lexical => {
            let (scores, label, reports) = match cfg.split {
                Split::Shipped => {
                    let m = cfg.model.as_ref().ok_or_else(|| EvalError::Usage("no model given".into()))?;
                    let pb = bar(idx.len(), cfg.progress, "scoring");
                    let s = score_items(m, ds, idx, &pb).into_iter().map(|x| x.1).collect();
                    pb.finish_and_clear();
                    (s, SHIPPED.to_owned(), Vec::new())
                }
                Split::LeaveBenchmarkOut | Split::Grouped5Fold => out_of_fold(
                    cfg,
                    ds,
                    idx,
                    |sets, _| train::train(sets, &cfg.train),
                    |m, i| m.score_text(&RequestText::of(&ds.items[i].request)),
                )?,
            };
            Ok((scores, label, "lexical".to_owned(), reports))
        }
        ScorerKind::Quality => {
            Err(EvalError::Usage("the quality router is evaluated by quality::evaluate (--router quality)".into()))
        }
        ScorerKind::Embedding => {
            let setup = cfg.embedding.as_ref().ok_or_else(|| {
                EvalError::Usage("the embedding router needs its encoder (scripts/fetch-embedding-model.sh)".into())
            })?;
            let pb = bar(ds.items.len(), cfg.progress, &format!("embedding {}", ds.name));
            let own = embedding::embed_dataset(setup, ds, &pb)?;
            pb.finish_and_clear();
            let (scores, label, reports) = match cfg.split {
                Split::Shipped => {
                    let head =
                        setup.head.as_ref().ok_or_else(|| EvalError::Usage("no embedding model given".into()))?;
                    let s = idx.iter().map(|&i| embedding::score_item(head, ds, &own, i)).collect();
                    (s, SHIPPED.to_owned(), Vec::new())
                }
                Split::LeaveBenchmarkOut | Split::Grouped5Fold => {
                    let mut emb = std::collections::HashMap::new();
                    emb.insert(ds.name.clone(), own.clone());
                    out_of_fold(
                        cfg,
                        ds,
                        idx,
                        |sets, others| {
                            for d in others {
                                if !emb.contains_key(&d.name) {
                                    let pb = bar(d.items.len(), cfg.progress, &format!("embedding {}", d.name));
                                    emb.insert(d.name.clone(), embedding::embed_dataset(setup, d, &pb)?);
                                    pb.finish_and_clear();
                                }
                            }
                            embedding::train_head(sets, &emb, &cfg.train, setup.encoder.max_tokens())
                        },
                        |head, i| embedding::score_item(head, ds, &own, i),
                    )?
                }
            };
            Ok((scores, label, "embedding".to_owned(), reports))
        }
    }
}

/// The training splits: loads the other benchmarks, then per fold fits a model with `fit` on
/// the other benchmarks (plus, for grouped folds, the evaluated benchmark's other folds) and
/// scores the fold's items with `score(model, item index)`. Returns the scores (in `idx`
/// order), the split's label and the training reports.
fn out_of_fold<M>(
    cfg: &EvalConfig,
    ds: &Dataset,
    idx: &[usize],
    mut fit: impl FnMut(&[TrainSet<'_>], &[Dataset]) -> Result<(M, TrainReport), EvalError>,
    score: impl Fn(&M, usize) -> f32,
) -> Result<(Vec<f32>, String, Vec<TrainReport>), EvalError> {
    let others: Vec<Dataset> = cfg
        .train_sets
        .iter()
        .filter(|b| **b != ds.name && **b != cfg.benchmark)
        .map(|b| data::load(&cfg.data, b, false))
        .collect::<Result<_, _>>()?;
    let names: Vec<&str> = others.iter().map(|d| d.name.as_str()).collect();
    let k = if cfg.split == Split::Grouped5Fold { 5 } else { 1 };
    let folds = if k == 1 {
        vec![0; idx.len()]
    } else {
        let groups: Vec<&str> = idx.iter().map(|&i| ds.items[i].group.as_str()).collect();
        grouped_folds(&groups, k)
    };
    let mut s = vec![0f32; idx.len()];
    let mut training = Vec::new();
    let pb = bar(idx.len(), cfg.progress, "training and scoring");
    for f in 0..k {
        let mut sets: Vec<TrainSet<'_>> =
            others.iter().map(|d| TrainSet { data: d, items: (0..d.items.len()).collect() }).collect();
        if k > 1 {
            let own: Vec<usize> = idx.iter().zip(&folds).filter(|(_, &g)| g != f).map(|(&i, _)| i).collect();
            sets.push(TrainSet { data: ds, items: own });
        }
        let (m, rep) = fit(&sets, &others)?;
        training.push(rep);
        for j in (0..idx.len()).filter(|&j| folds[j] == f) {
            s[j] = score(&m, idx[j]);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let label = if k == 1 {
        format!("leave-benchmark-out (trained on {})", names.join(", "))
    } else {
        format!(
            "grouped-5-fold on {} (groups: {}; each fold trained on the other folds + {})",
            ds.name,
            match ds.name.as_str() {
                "mmlu" => "domain",
                "mt-bench" => "category",
                _ => "prompt",
            },
            names.join(", ")
        )
    };
    Ok((s, label, training))
}

/// Runs one evaluation.
///
/// Errors: [`EvalError`] for missing data, models or a bad configuration.
pub fn evaluate(cfg: &EvalConfig) -> Result<EvalReport, EvalError> {
    let ds = data::load(&cfg.data, &cfg.benchmark, true)?;
    let idx = pair_items(&ds, &cfg.train.weak, &cfg.train.strong)?;
    let (scores, split_label, router_name, training) = scores_for(cfg, &ds, &idx)?;
    report_from_scores(cfg, &ds, &idx, &scores, split_label, router_name, training)
}

/// The items of `ds` where both models have a quality.
///
/// Errors: [`EvalError::Data`] if a model is absent or no item has both.
pub fn pair_items(ds: &Dataset, weak: &str, strong: &str) -> Result<Vec<usize>, EvalError> {
    let pairs = ds.pair(weak, strong)?;
    if pairs.is_empty() {
        return Err(EvalError::Data(format!("{}: no prompt has both models' quality", ds.name)));
    }
    Ok(pairs.iter().map(|p| p.0).collect())
}

/// The report for scores obtained elsewhere: `scores[j]` is the score of `ds.items[idx[j]]`
/// (higher = send to `cfg.train.strong`); the sweep, every metric, random (expected and over
/// [`RANDOM_SEEDS`] seeds) and the oracle.
///
/// Errors: [`EvalError::Data`] if a model is absent.
pub fn report_from_scores(
    cfg: &EvalConfig,
    ds: &Dataset,
    idx: &[usize],
    scores: &[f32],
    split_label: String,
    router_name: String,
    training: Vec<TrainReport>,
) -> Result<EvalReport, EvalError> {
    let (wi, si) = (ds.model_index(&cfg.train.weak)?, ds.model_index(&cfg.train.strong)?);
    let weak: Vec<f64> = idx.iter().map(|&i| ds.items[i].quality[wi]).collect();
    let strong: Vec<f64> = idx.iter().map(|&i| ds.items[i].quality[si]).collect();
    let (pw, ps) = (cfg.price_weak, cfg.price_strong);
    let q = metrics::routed_quality(scores, &weak, &strong);
    let oq = metrics::routed_quality(&metrics::oracle_scores(&weak, &strong), &weak, &strong);
    let rq = metrics::random_quality(&weak, &strong);
    Ok(EvalReport {
        benchmark: ds.name.clone(),
        router: router_name,
        split: split_label,
        prompts: idx.len(),
        dropped_contaminated: ds.dropped_contaminated,
        weak: cfg.train.weak.clone(),
        strong: cfg.train.strong.clone(),
        prices_usd_per_million: (pw, ps),
        quality_weak: q[0],
        quality_strong: q[q.len() - 1],
        router_summary: metrics::summarize(&q, pw, ps),
        random: metrics::summarize(&rq, pw, ps),
        oracle: metrics::summarize(&oq, pw, ps),
        training,
        random_spread: random_spread(ds, idx, &weak, &strong, RANDOM_SEEDS),
        curves: Curves { router: q, oracle: oq },
    })
}

/// The report as a text table: the sweep (strong share, quality, PGR and relative cost for the
/// router, random and the oracle) then the summary figures.
pub fn table(r: &EvalReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "benchmark {} | router {} | {} prompts ({} contaminated dropped)",
        r.benchmark, r.router, r.prompts, r.dropped_contaminated
    );
    let _ = writeln!(s, "split: {}", r.split);
    let _ = writeln!(
        s,
        "weak {} = {:.4}, strong {} = {:.4}; prices ${}/M vs ${}/M",
        r.weak, r.quality_weak, r.strong, r.quality_strong, r.prices_usd_per_million.0, r.prices_usd_per_million.1
    );
    let _ = writeln!(
        s,
        "{:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "strong%", "quality", "PGR", "cost/strong", "random q", "oracle q", "oracle PGR"
    );
    for ((p, rp), op) in r.router_summary.sweep.iter().zip(&r.random.sweep).zip(&r.oracle.sweep) {
        let _ = writeln!(
            s,
            "{:>7.0}% {:>9.4} {:>8.3} {:>11.3} {:>9.4} {:>9.4} {:>9.3}",
            p.strong_share * 100.0,
            p.quality,
            p.pgr,
            p.cost_rel,
            rp.quality,
            op.quality,
            op.pgr
        );
    }
    let _ = writeln!(
        s,
        "{:<10} {:>15} {:>12} {:>7} {:>7} {:>22}",
        "", "APGR(trapezoid)", "APGR(mean10)", "CPT50", "CPT80", "95%-quality cost/strong"
    );
    for (name, m) in [(r.router.as_str(), &r.router_summary), ("random", &r.random), ("oracle", &r.oracle)] {
        let _ = writeln!(
            s,
            "{:<10} {:>15.3} {:>12.3} {:>6.1}% {:>6.1}% {:>10.3} (at {:.1}% strong)",
            name,
            m.apgr_trapezoid,
            m.apgr_mean10,
            m.cpt50 * 100.0,
            m.cpt80 * 100.0,
            m.cheapest_95.cost_rel,
            m.cheapest_95.strong_share * 100.0
        );
    }
    let sp = &r.random_spread;
    let _ = writeln!(
        s,
        "APGR (trapezoid; random = 0.500, RouteLLM's published scale): {} {:.3}; random scorer over {} seeds: mean {:.3}, 95th percentile {:.3} (min {:.3}, max {:.3})",
        r.router, r.router_summary.apgr_trapezoid, sp.seeds, sp.mean, sp.p95, sp.min, sp.max
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_folds_balance_sizes_and_keep_groups_whole() {
        let groups = ["a", "a", "a", "b", "b", "c", "d", "e", "f", "f"];
        let f = grouped_folds(&groups, 5);
        // Sizes: a 3, b 2, f 2, c 1, d 1, e 1 -> a:0, b:1, f:2, c:3, d:4, e:3 (ties to lowest fold).
        assert_eq!(f, vec![0, 0, 0, 1, 1, 3, 4, 3, 2, 2]);
    }
}
