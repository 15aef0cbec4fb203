//! Per-model quality prediction q(m, p) (issue 14): instead of one "strong model needed" score
//! for one fixed pair, predict for a prompt p and a model m how well m answers p, trained jointly
//! on every dataset and model given.
//!
//! The model is a low-rank factorisation (matrix factorisation / item-response style):
//!
//! ```text
//! z(p)       = W · x(p)                        (k numbers: a learned projection of the prompt)
//! q̂(m, p, d) = c[d, m] + u_m · z(p)            (u_m: k numbers per model; c: per-dataset offset)
//! ```
//!
//! `x(p)` is the lexical scorer's representation (hashed word/bigram/byte-4-gram buckets and the
//! 19 dense features, standardised), optionally followed by extra dense features (a static token
//! embedding). `c[d, m]` absorbs each dataset's judge and scale per model, so only the
//! prompt-dependent part `u_m · z(p)` is shared between datasets. Qualities are standardised per
//! dataset (mean 0, variance 1 over every known (prompt, model) cell).
//!
//! A dataset whose quality is relative to a reference model (AlpacaEval: every answer judged
//! against gpt4_1106_preview, whose own cells are a constant 0.5) is detected by that constant
//! column: its cells are modelled as `c[d, m] + (u_m − u_ref) · z(p)`. The reference's own
//! cells stay targets (modelled by `c[d, ref]` alone): they place the reference's level on the
//! dataset's scale (in AlpacaEval 2, above every model that loses to it on average). Leaving them
//! out left `c[d, ref]` untrained at 0, which pulled the reference's overall level toward the
//! middle and made a model that is always best look average (found by the hand-made test
//! `the_trained_predictor_picks_the_always_best_model_when_it_is_cheapest`).
//!
//! Model names are matched across datasets by [`canonical`] (`mistralai/Mixtral-8x7B-Instruct-v0.1`
//! and `Mixtral-8x7B-Instruct-v0.1` are one model; `gpt4_1106_preview` and `gpt-4-1106-preview`
//! too). A model never seen in training gets the mean vector of all models (the default profile).
//!
//! The two-model RouteLLM comparison is the special case `score(p) = q̂(strong, p) − q̂(weak, p)
//! = (u_strong − u_weak) · z(p)` (offsets cancel in the ranking within one dataset).
//!
//! Fit: squared error, AdaGrad, L2, seeded initialisation and shuffle (deterministic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use triage_core::router::features::RequestText;
pub use triage_core::router::quality::{
    canonical, merged_hashed, raw_dense, ExtraFeatures, QualityFile, QualityModel, RuleSpec,
};

use crate::data::{self, Dataset};
use crate::replay::{self, EvalConfig, EvalReport, Split};
use crate::train::{adagrad, Rng, TrainReport};
use crate::EvalError;

/// Hyper-parameters of the quality predictor.
#[derive(Clone)]
pub struct QualityConfig {
    /// Rank k of the projection (numbers per model vector).
    pub rank: usize,
    /// Hashed buckets (power of two; 0 = no hashed n-grams, dense features only).
    pub buckets: u32,
    /// Epochs over the training prompts.
    pub epochs: usize,
    /// AdaGrad learning rate.
    pub lr: f32,
    /// L2 on the projection rows of the hashed n-grams.
    pub l2_hashed: f32,
    /// L2 on the projection rows of the dense features and on the model vectors.
    pub l2: f32,
    /// Dataset weighting: each dataset's cells weigh `n_d^-balance` (0 = every cell equal,
    /// 0.5 = square-root balance, 1 = every dataset equal), normalised to mean 1.
    pub balance: f32,
    /// Seed of the initialisation and the shuffle.
    pub seed: u64,
    /// Extra dense features (see [`ExtraFeatures`]) and their name.
    pub extra: Option<(String, ExtraFeatures)>,
    /// Train on these models only (names matched by [`canonical`]); `None` = every model.
    pub only_models: Option<Vec<String>>,
    /// Fit the within-prompt differences between models (errors centred over a prompt's
    /// cells) instead of the raw qualities.
    pub within_prompt: bool,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            rank: 8,
            buckets: 1 << 14,
            epochs: 6,
            lr: 0.05,
            l2_hashed: 1e-3,
            l2: 1e-4,
            balance: 0.5,
            seed: 1,
            extra: None,
            only_models: None,
            within_prompt: true,
        }
    }
}

/// A prompt's features: merged hashed entries and the standardised dense vector.
#[derive(Debug, Clone)]
struct Row {
    hashed: Vec<(u32, f32)>,
    dense: Vec<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One training dataset: the dataset and the items to train on.
pub struct QualitySet<'a> {
    /// The dataset.
    pub data: &'a Dataset,
    /// Item indices into `data.items`.
    pub items: Vec<usize>,
}

/// The reference model of a dataset whose qualities are relative to it: a model known on
/// every item with one constant quality. `None` otherwise.
fn reference_model(d: &Dataset) -> Option<usize> {
    (0..d.models.len()).find(|&m| {
        let mut vals = d.items.iter().map(|it| it.quality[m]);
        match vals.next() {
            Some(first) if first.is_finite() => vals.all(|v| v == first) && d.items.len() > 1,
            _ => false,
        }
    })
}

struct Cell {
    model: usize,
    y: f32,
}

struct Example {
    row: Row,
    set: usize,
    reference: Option<usize>,
    cells: Vec<Cell>,
    w: f32,
}

/// Trains the predictor on `sets` with `cfg`. Deterministic for a given seed.
///
/// Errors: [`EvalError::Data`] if there is nothing to train on.
pub fn train(sets: &[QualitySet<'_>], cfg: &QualityConfig) -> Result<(QualityModel, TrainReport), EvalError> {
    if cfg.buckets != 0 && !cfg.buckets.is_power_of_two() {
        return Err(EvalError::Usage(format!("buckets = {} is not a power of two", cfg.buckets)));
    }
    let extra = cfg.extra.as_ref().map(|e| &e.1);
    // Global model list (canonical names, sorted for determinism).
    let mut names: Vec<String> = sets
        .iter()
        .flat_map(|s| s.data.models.iter().map(|m| canonical(m)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    names.sort();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    // Raw rows and standardised targets.
    let mut examples = Vec::new();
    let mut counts = BTreeMap::new();
    let mut raw: Vec<Vec<f32>> = Vec::new();
    for (si, s) in sets.iter().enumerate() {
        let d = s.data;
        let reference = reference_model(d);
        let cols: Vec<usize> = d.models.iter().map(|m| index[canonical(m).as_str()]).collect();
        let keep: Vec<bool> = d
            .models
            .iter()
            .map(|m| cfg.only_models.as_ref().is_none_or(|o| o.iter().any(|x| canonical(x) == canonical(m))))
            .collect();
        let vals: Vec<f64> = s
            .items
            .iter()
            .flat_map(|&i| {
                d.items[i].quality.iter().enumerate().filter(|(m, q)| keep[*m] && q.is_finite()).map(|x| *x.1)
            })
            .collect();
        if vals.is_empty() {
            continue;
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt().max(1e-9);
        counts.insert(d.name.clone(), vals.len());
        let w = (vals.len() as f32).powf(-cfg.balance);
        for &i in &s.items {
            let it = &d.items[i];
            let cells: Vec<Cell> = it
                .quality
                .iter()
                .enumerate()
                .filter(|(m, q)| keep[*m] && q.is_finite())
                .map(|(m, q)| Cell { model: cols[m], y: ((q - mean) / sd) as f32 })
                .collect();
            if cells.is_empty() {
                continue;
            }
            let rt = RequestText::of(&it.request);
            raw.push(raw_dense(&rt, extra));
            examples.push(Example {
                row: Row {
                    hashed: if cfg.buckets == 0 { Vec::new() } else { merged_hashed(&rt, cfg.buckets) },
                    dense: Vec::new(),
                },
                set: si,
                reference: reference.map(|r| cols[r]),
                cells,
                w,
            });
        }
    }
    if examples.is_empty() {
        return Err(EvalError::Data("no training cells".into()));
    }
    // Normalise weights so that the mean weight per cell is 1.
    let ncells: f32 = examples.iter().map(|e| e.cells.len() as f32).sum();
    let wsum: f32 = examples.iter().map(|e| e.w * e.cells.len() as f32).sum();
    for e in &mut examples {
        e.w *= ncells / wsum;
    }
    // Standardise the dense features.
    let nd = raw[0].len();
    let n = raw.len() as f32;
    let mut mu = vec![0f32; nd];
    let mut sd = vec![0f32; nd];
    for r in &raw {
        for (m, v) in mu.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    for r in &raw {
        for ((s, v), m) in sd.iter_mut().zip(r).zip(&mu) {
            *s += (v - m).powi(2) / n;
        }
    }
    for s in &mut sd {
        *s = s.sqrt().max(0.05);
    }
    for (e, r) in examples.iter_mut().zip(&raw) {
        e.row.dense = r.iter().zip(mu.iter().zip(&sd)).map(|(x, (m, s))| (x - m) / s).collect();
    }
    let k = cfg.rank.max(1);
    let nb = cfg.buckets as usize;
    let nm = names.len();
    let mut rng = Rng::new(cfg.seed);
    let mut gauss = |scale: f32| {
        // Sum of 4 uniforms, centred: close enough to a normal for an initialisation.
        let s: f32 = (0..4).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32).sum::<f32>() - 2.0;
        s * scale * 1.7
    };
    let mut wh = vec![0f32; nb * k];
    let mut wd: Vec<f32> = (0..nd * k).map(|_| gauss(0.1)).collect();
    let mut u: Vec<f32> = (0..nm * k).map(|_| gauss(0.1)).collect();
    let mut c = vec![0f32; sets.len() * nm];
    let (mut gwh, mut gwd, mut gu, mut gc) =
        (vec![0f32; nb * k], vec![0f32; nd * k], vec![0f32; nm * k], vec![0f32; sets.len() * nm]);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = Rng::new(cfg.seed.wrapping_add(17));
    let mut last_loss = 0f64;
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        let (mut loss, mut lw) = (0f64, 0f64);
        for &ei in &order {
            let e = &examples[ei];
            let mut z = vec![0f32; k];
            for &(i, v) in &e.row.hashed {
                for j in 0..k {
                    z[j] += v * wh[i as usize * k + j];
                }
            }
            for (di, &x) in e.row.dense.iter().enumerate() {
                for j in 0..k {
                    z[j] += x * wd[di * k + j];
                }
            }
            let mut gz = vec![0f32; k];
            let ueffs: Vec<Vec<f32>> = e
                .cells
                .iter()
                .map(|cell| {
                    let mut ueff: Vec<f32> = u[cell.model * k..(cell.model + 1) * k].to_vec();
                    if let Some(r) = e.reference {
                        for j in 0..k {
                            ueff[j] -= u[r * k + j];
                        }
                    }
                    ueff
                })
                .collect();
            let errs: Vec<f32> = e
                .cells
                .iter()
                .zip(&ueffs)
                .map(|(cell, ue)| c[e.set * nm + cell.model] + dot(ue, &z) - cell.y)
                .collect();
            // Within-prompt loss: the errors centred over the prompt's cells (a free intercept per
            // prompt), so the fit learns which model gains where, not how hard a prompt is for all.
            let shift =
                if cfg.within_prompt && errs.len() > 1 { errs.iter().sum::<f32>() / errs.len() as f32 } else { 0.0 };
            for ((cell, ueff), raw_err) in e.cells.iter().zip(ueffs).zip(&errs) {
                let ci = e.set * nm + cell.model;
                let d = raw_err - shift;
                let err = d * e.w;
                loss += f64::from(d * d * e.w);
                lw += f64::from(e.w);
                // The reference's own cell is c[d, ref] alone (u_ref − u_ref = 0): no vector moves.
                if e.reference != Some(cell.model) {
                    for j in 0..k {
                        gz[j] += err * ueff[j];
                        let g = err * z[j] + cfg.l2 * u[cell.model * k + j];
                        adagrad(&mut u[cell.model * k + j], &mut gu[cell.model * k + j], g, cfg.lr);
                        if let Some(r) = e.reference {
                            let g = -err * z[j] + cfg.l2 * u[r * k + j];
                            adagrad(&mut u[r * k + j], &mut gu[r * k + j], g, cfg.lr);
                        }
                    }
                }
                adagrad(&mut c[ci], &mut gc[ci], err, cfg.lr);
            }
            for &(i, v) in &e.row.hashed {
                for (j, gzj) in gz.iter().enumerate() {
                    let p = i as usize * k + j;
                    let g = gzj * v + cfg.l2_hashed * wh[p];
                    adagrad(&mut wh[p], &mut gwh[p], g, cfg.lr);
                }
            }
            for (di, &x) in e.row.dense.iter().enumerate() {
                for (j, gzj) in gz.iter().enumerate() {
                    let p = di * k + j;
                    let g = gzj * x + cfg.l2 * wd[p];
                    adagrad(&mut wd[p], &mut gwd[p], g, cfg.lr);
                }
            }
        }
        last_loss = loss / lw.max(1e-12);
    }
    // Overall level of each model: mean of its per-dataset offsets where it has cells.
    let mut offsets = vec![0f32; nm];
    let mut seen = vec![0f32; nm];
    for (si, s) in sets.iter().enumerate() {
        for m in &s.data.models {
            let mi = index[canonical(m).as_str()];
            offsets[mi] += c[si * nm + mi];
            seen[mi] += 1.0;
        }
    }
    for (o, s) in offsets.iter_mut().zip(&seen) {
        if *s > 0.0 {
            *o /= s;
        }
    }
    let model = QualityModel {
        rank: k,
        buckets: cfg.buckets,
        dense_mean: mu,
        dense_sd: sd,
        w_hashed: wh,
        w_dense: wd,
        models: names,
        vectors: u.chunks(k).map(<[f32]>::to_vec).collect(),
        offsets,
    };
    let report = TrainReport { sets: counts, positive_share: f64::NAN, train_log_loss: last_loss };
    Ok((model, report))
}

/// The prompts of `ds` (indices `idx`) scored with a predictor trained out of fold under
/// `cfg.split` (leave-dataset-out or grouped-5-fold; `shipped` is refused), on `cfg.train_sets`
/// plus, for grouped folds, the other folds. Training items whose prompt text also occurs in
/// the scored fold are dropped from every training set (AlpacaEval's three files share their
/// instructions), so no scored prompt is ever trained on. Returns scores
/// `q̂(strong) − q̂(weak)`, the split label and the training reports.
///
/// Errors: [`EvalError`] for missing data or a shipped split.
pub fn scores_for(
    cfg: &EvalConfig,
    qc: &QualityConfig,
    ds: &Dataset,
    idx: &[usize],
) -> Result<(Vec<f32>, String, Vec<TrainReport>), EvalError> {
    if cfg.split == Split::Shipped {
        return Err(EvalError::Usage(
            "the quality router is evaluated with --split leave-dataset-out or grouped-5-fold".into(),
        ));
    }
    let others: Vec<Dataset> = cfg
        .train_sets
        .iter()
        .filter(|b| **b != ds.name && **b != cfg.benchmark)
        .map(|b| data::load(&cfg.data, b, false))
        .collect::<Result<_, _>>()?;
    let k = if cfg.split == Split::Grouped5Fold { 5 } else { 1 };
    let folds = if k == 1 {
        vec![0; idx.len()]
    } else {
        let groups: Vec<&str> = idx.iter().map(|&i| ds.items[i].group.as_str()).collect();
        replay::grouped_folds(&groups, k)
    };
    let text = |d: &Dataset, i: usize| data::first_user_text(&d.items[i].request);
    let extra = qc.extra.as_ref().map(|e| &e.1);
    let mut scores = vec![0f32; idx.len()];
    let mut reports = Vec::new();
    let pb = if cfg.progress { indicatif::ProgressBar::new(k as u64) } else { indicatif::ProgressBar::hidden() };
    if let Ok(s) =
        indicatif::ProgressStyle::with_template("training quality predictor [{bar:30}] {pos}/{len} folds ({elapsed})")
    {
        pb.set_style(s.progress_chars("=> "));
    }
    for f in 0..k {
        let scored: HashSet<String> =
            idx.iter().zip(&folds).filter(|(_, &g)| g == f).map(|(&i, _)| text(ds, i)).collect();
        let mut sets: Vec<QualitySet<'_>> = others
            .iter()
            .map(|d| QualitySet {
                data: d,
                items: (0..d.items.len()).filter(|&i| !scored.contains(&text(d, i))).collect(),
            })
            .collect();
        if k > 1 {
            let own: Vec<usize> = idx
                .iter()
                .zip(&folds)
                .filter(|(&i, &g)| g != f && !scored.contains(&text(ds, i)))
                .map(|(&i, _)| i)
                .collect();
            sets.push(QualitySet { data: ds, items: own });
        }
        let (m, rep) = train(&sets, qc)?;
        reports.push(rep);
        for j in (0..idx.len()).filter(|&j| folds[j] == f) {
            let rt = RequestText::of(&ds.items[idx[j]].request);
            scores[j] = m.pair_score(&rt, &cfg.train.weak, &cfg.train.strong, extra);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let names: Vec<&str> = others.iter().map(|d| d.name.as_str()).collect();
    let label = if k == 1 {
        format!(
            "leave-dataset-out (quality predictor trained on {}; prompts shared with the evaluated set dropped)",
            names.join(", ")
        )
    } else {
        format!(
            "grouped-5-fold on {} (each fold: quality predictor trained on the other folds + {}; prompts shared with the fold dropped)",
            ds.name,
            names.join(", ")
        )
    };
    Ok((scores, label, reports))
}

/// `triage eval --router quality`: the evaluation of the pair `cfg.train.weak` →
/// `cfg.train.strong` on `cfg.benchmark` with the quality predictor's two-model score.
///
/// Errors: as [`scores_for`].
pub fn evaluate(cfg: &EvalConfig, qc: &QualityConfig) -> Result<EvalReport, EvalError> {
    let ds = data::load(&cfg.data, &cfg.benchmark, true)?;
    let idx = replay::pair_items(&ds, &cfg.train.weak, &cfg.train.strong)?;
    let (scores, label, reports) = scores_for(cfg, qc, &ds, &idx)?;
    replay::report_from_scores(cfg, &ds, &idx, &scores, label, "quality".to_owned(), reports)
}

/// Scores of every item of `ds` for multi-tier routing: `q̂(top tier) − q̂(cheapest tier)`,
/// out of fold as in [`scores_for`] (NaN for items without both models).
///
/// Errors: as [`scores_for`].
pub fn tier_scores(
    cfg: &EvalConfig,
    qc: &QualityConfig,
    ds: &Dataset,
    cheapest: &str,
    top: &str,
) -> Result<Vec<f32>, EvalError> {
    let idx: Vec<usize> = (0..ds.items.len()).collect();
    let mut train = cfg.train.clone();
    train.weak = cheapest.to_owned();
    train.strong = top.to_owned();
    let c = EvalConfig {
        data: cfg.data.clone(),
        benchmark: cfg.benchmark.clone(),
        router: cfg.router,
        split: cfg.split,
        model: None,
        embedding: None,
        train_sets: cfg.train_sets.clone(),
        train,
        price_weak: cfg.price_weak,
        price_strong: cfg.price_strong,
        progress: cfg.progress,
    };
    Ok(scores_for(&c, qc, ds, &idx)?.0)
}

/// `triage eval --router quality`: the two-model report (or, with `tiers`, the multi-tier
/// report on arena-bench-style data with the score `q̂(top tier) − q̂(cheapest tier)` and the
/// random scorer's AIQ spread); writes `<out_dir>/eval-<benchmark>-quality-<split>.json` (and
/// `.svg` for two models) and returns the text.
///
/// Errors: [`EvalError`] for missing data, unknown models or unwritable outputs.
pub fn eval_cmd(
    cfg: &EvalConfig,
    qc: &QualityConfig,
    tiers: &[String],
    split_name: &str,
    out_dir: &std::path::Path,
) -> Result<String, EvalError> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| EvalError::Usage(format!("cannot create {}: {e}", out_dir.display())))?;
    let write = |path: std::path::PathBuf, body: String| {
        std::fs::write(&path, body).map_err(|e| EvalError::Usage(format!("cannot write {}: {e}", path.display())))
    };
    if tiers.is_empty() {
        let r = evaluate(cfg, qc)?;
        let mut s = replay::table(&r);
        let stem = format!("eval-{}-quality-{split_name}", r.benchmark.replace(['/', '\\'], "_"));
        let jp = out_dir.join(format!("{stem}.json"));
        write(jp.clone(), serde_json::to_string_pretty(&r).map_err(|e| EvalError::Data(e.to_string()))?)?;
        let sp = out_dir.join(format!("{stem}.svg"));
        write(sp.clone(), crate::plot::svg(&r))?;
        s.push_str(&format!("wrote {} and {}\n", jp.display(), sp.display()));
        return Ok(s);
    }
    let ds = data::load(&cfg.data, &cfg.benchmark, true)?;
    let (cheap, top) = (tiers.first().cloned().unwrap_or_default(), tiers.last().cloned().unwrap_or_default());
    let scores = tier_scores(cfg, qc, &ds, &cheap, &top)?;
    let split = match cfg.split {
        Split::Grouped5Fold => "grouped-5-fold",
        _ => "leave-dataset-out",
    };
    let r = crate::multi::evaluate(&ds, tiers, &scores, &format!("quality predictor, {split}"))?;
    let mut s = crate::multi::table_text(&r);
    s.push_str(&crate::multi::random_aiq_text(&ds, tiers, replay::RANDOM_SEEDS, r.aiq.router)?);
    let jp = out_dir.join(format!("eval-{}-tiers-quality-{split_name}.json", ds.name));
    write(jp.clone(), serde_json::to_string_pretty(&r).map_err(|e| EvalError::Data(e.to_string()))?)?;
    s.push_str(&format!("wrote {}\n", jp.display()));
    Ok(s)
}

/// Arguments of `triage train --scorer quality`.
pub struct QualityTrainArgs {
    /// Data folders (benchmarks are looked up there).
    pub data: Vec<PathBuf>,
    /// Training sets: benchmark names and simple-JSONL files, any number of each, any number
    /// of models per row.
    pub sets: Vec<String>,
    /// Hyper-parameters (with the extra features' function, if any).
    pub qc: QualityConfig,
    /// The static embedding table's file name as written into the model file (relative to the
    /// model file's folder); `None` without extra features.
    pub static_embed: Option<String>,
    /// The tier profiles, cheapest first (stored for this tier count; a 3-list also gives the
    /// 2-tier list from its ends).
    pub profiles: Vec<String>,
    /// Each tier's price, USD per million tokens, cheapest first (empty: none stored).
    pub tier_prices: Vec<f64>,
    /// The choice rule.
    pub rule: RuleSpec,
    /// Output file.
    pub out: PathBuf,
}

/// Writes `body` to `path` atomically (a temporary file renamed over it), so a gateway that
/// reloads the file never reads half of it.
///
/// Errors: [`EvalError::Usage`] naming the file.
pub fn write_atomically(path: &Path, body: &str) -> Result<(), EvalError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| EvalError::Usage(format!("cannot write {}: {e}", path.display())))
}

/// `triage train --scorer quality`: trains the predictor on every item of `a.sets` (each
/// dataset keeps its own offsets; no split: evaluate with `triage eval --router quality`),
/// writes the model file (profiles, tier costs, rule, metadata) and returns a summary.
///
/// Errors: [`EvalError`] for missing data, fewer than one profile, or an unwritable output.
pub fn train_cmd(a: &QualityTrainArgs) -> Result<String, EvalError> {
    if a.profiles.is_empty() {
        return Err(EvalError::Usage("name the tier profiles (--profiles cheap,...,strong)".into()));
    }
    if !a.tier_prices.is_empty() && a.tier_prices.len() != a.profiles.len() {
        return Err(EvalError::Usage(format!("{} tier prices for {} profiles", a.tier_prices.len(), a.profiles.len())));
    }
    let sets: Vec<Dataset> = a.sets.iter().map(|b| data::load(&a.data, b, false)).collect::<Result<_, _>>()?;
    let qs: Vec<QualitySet<'_>> =
        sets.iter().map(|d| QualitySet { data: d, items: (0..d.items.len()).collect() }).collect();
    let (model, rep) = train(&qs, &a.qc)?;
    let n = a.profiles.len();
    let mut profiles = BTreeMap::from([(n.to_string(), a.profiles.clone())]);
    let mut tier_costs = BTreeMap::new();
    if !a.tier_prices.is_empty() {
        tier_costs.insert(n.to_string(), a.tier_prices.clone());
    }
    if n == 3 {
        profiles.insert("2".into(), vec![a.profiles[0].clone(), a.profiles[2].clone()]);
        if !a.tier_prices.is_empty() {
            tier_costs.insert("2".into(), vec![a.tier_prices[0], a.tier_prices[2]]);
        }
    }
    let unknown: Vec<&String> = a.profiles.iter().filter(|p| !model.models.contains(&canonical(p))).collect();
    let meta = serde_json::json!({
        "trained_on": rep.sets,
        "train_loss": rep.train_log_loss,
        "hyper_parameters": {
            "rank": a.qc.rank, "buckets": a.qc.buckets, "epochs": a.qc.epochs, "lr": a.qc.lr,
            "l2": a.qc.l2, "l2_hashed": a.qc.l2_hashed, "balance": a.qc.balance, "seed": a.qc.seed,
            "within_prompt": a.qc.within_prompt,
            "extra": a.qc.extra.as_ref().map(|e| e.0.clone()),
        },
        "split": "none: every item of every set (evaluate with triage eval --router quality --split leave-dataset-out|grouped-5-fold)",
    });
    let file = QualityFile {
        kind: "quality".into(),
        model,
        static_embed: a.static_embed.clone(),
        profiles,
        tier_costs,
        rule: a.rule,
        meta,
    };
    let json = serde_json::to_string(&file).map_err(|e| EvalError::Data(e.to_string()))?;
    write_atomically(&a.out, &json)?;
    let mut s = String::new();
    for (name, cells) in &rep.sets {
        s.push_str(&format!("trained on {name}: {cells} (prompt, model) cells\n"));
    }
    s.push_str(&format!(
        "{} models; tier profiles {}; rule {}; training loss {:.4}\n",
        file.model.models.len(),
        a.profiles.join(" < "),
        a.rule.label(),
        rep.train_log_loss
    ));
    if !unknown.is_empty() {
        s.push_str(&format!(
            "note: profiles never seen in training get the default profile (mean vector): {}\n",
            unknown.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    s.push_str(&format!("wrote {} ({} bytes)\n", a.out.display(), json.len()));
    Ok(s)
}

/// What `triage calibrate --scorer quality` aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QualityTarget {
    /// USD per 1,000 requests at most (the best quality within it).
    CostPer1000(f64),
    /// Mean realised quality at least this share of always-the-top-tier's (the cheapest such
    /// point); needs the sample's qualities of the profile models.
    QualityShare(f64),
}

/// The outcome of one rule parameter on a calibration sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RulePoint {
    /// The rule.
    pub rule: RuleSpec,
    /// Share of the sample per tier, cheapest first.
    pub shares: Vec<f64>,
    /// USD per 1,000 requests.
    pub cost_per_1000: f64,
    /// Mean realised quality / always-top mean quality (NaN without qualities).
    pub quality_share: f64,
}

/// Chooses the margin (or λ, after `lambda`) for `target` on a sample: `pred[i][t]` the
/// predicted quality of tier t's profile on prompt i, `real[i][t]` the realised quality (NaN
/// where unknown), `usd[t]` a request's cost on tier t (USD), `prices[t]` the tier's price per
/// million tokens (λ's unit, as stored in the model file). Cost and quality move monotonically
/// with the parameter only on average, so the parameter is scanned on a fine grid (margin:
/// 0 to the largest spread of a prompt's predictions in 4,000 steps; λ: 0 and 10⁻⁶…10³ in 4,000
/// log steps). For a cost target: the smallest parameter meeting it (the most quality within
/// budget); for a quality share: the largest meeting it (the cheapest). When no parameter
/// meets the target, the closest point is returned and `met` is false.
///
/// Errors: [`EvalError::Usage`] for an empty sample or mismatched lengths.
pub fn choose_rule(
    pred: &[Vec<f32>],
    real: &[Vec<f64>],
    usd: &[f64],
    prices: &[f64],
    lambda: bool,
    target: QualityTarget,
) -> Result<(RulePoint, bool), EvalError> {
    let n = usd.len();
    if pred.is_empty() || pred.iter().any(|p| p.len() != n) || prices.len() != n || real.len() != pred.len() {
        return Err(EvalError::Usage("calibration: empty sample or tier lists of different lengths".into()));
    }
    let eval = |rule: RuleSpec| -> RulePoint {
        let mut counts = vec![0usize; n];
        let (mut cost, mut q, mut qn) = (0f64, 0f64, 0usize);
        let mut top_sum = 0f64;
        for (p, r) in pred.iter().zip(real) {
            let cands: Vec<triage_core::router::choice::Candidate> = p
                .iter()
                .zip(prices)
                .map(|(&quality, &cost)| triage_core::router::choice::Candidate { quality, cost })
                .collect();
            let t = triage_core::router::choice::choose(&cands, rule.rule()).unwrap_or(0);
            counts[t] += 1;
            cost += usd[t];
            if r[t].is_finite() && r[n - 1].is_finite() {
                q += r[t];
                top_sum += r[n - 1];
                qn += 1;
            }
        }
        let m = pred.len() as f64;
        RulePoint {
            rule,
            shares: counts.iter().map(|&c| c as f64 / m).collect(),
            cost_per_1000: 1000.0 * cost / m,
            quality_share: if qn == 0 || top_sum == 0.0 { f64::NAN } else { q / top_sum },
        }
    };
    let grid: Vec<RuleSpec> = if lambda {
        std::iter::once(0.0)
            .chain((0..4000).map(|i| 10f32.powf(-6.0 + 9.0 * i as f32 / 3999.0)))
            .map(RuleSpec::Lambda)
            .collect()
    } else {
        let spread = pred
            .iter()
            .map(|p| {
                let (lo, hi) = p.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                hi - lo
            })
            .fold(0f32, f32::max);
        (0..=4000).map(|i| RuleSpec::Margin(spread * 1.001 * i as f32 / 4000.0)).collect()
    };
    let points: Vec<RulePoint> = grid.into_iter().map(eval).collect();
    let pick = match target {
        QualityTarget::CostPer1000(c) => match points.iter().find(|p| p.cost_per_1000 <= c + 1e-12) {
            Some(p) => (p.clone(), true),
            None => {
                let p = points
                    .iter()
                    .min_by(|a, b| a.cost_per_1000.total_cmp(&b.cost_per_1000))
                    .cloned()
                    .ok_or_else(|| EvalError::Usage("no calibration point".into()))?;
                (p, false)
            }
        },
        QualityTarget::QualityShare(share) => {
            if points.iter().all(|p| p.quality_share.is_nan()) {
                return Err(EvalError::Usage(
                    "a quality-share target needs the sample's qualities of every tier profile".into(),
                ));
            }
            match points.iter().rev().find(|p| p.quality_share >= share) {
                Some(p) => (p.clone(), true),
                None => (points[0].clone(), false),
            }
        }
    };
    Ok(pick)
}

/// `triage calibrate --scorer quality`: predicts every tier profile's quality on the sample
/// `ds`, chooses the margin (or λ) for `target` ([`choose_rule`]), stores it and the tier
/// prices in `file` and returns a summary. `tier_prices` (USD per million tokens, cheapest
/// first) give the tier count; `tokens_per_request` converts them to a request's cost.
///
/// Errors: as [`choose_rule`], or a tier count the file has no profiles for.
pub fn calibrate_cmd(
    file: &mut QualityFile,
    extra: Option<&ExtraFeatures>,
    ds: &Dataset,
    tier_prices: &[f64],
    tokens_per_request: f64,
    lambda: bool,
    target: QualityTarget,
) -> Result<String, EvalError> {
    let n = tier_prices.len();
    if n < 2 {
        return Err(EvalError::Usage("--tier-prices: at least two tiers".into()));
    }
    let profiles = file.profiles_for(n);
    let names: Vec<&str> = profiles.iter().map(String::as_str).collect();
    let cols: Vec<Option<usize>> =
        profiles.iter().map(|p| ds.models.iter().position(|m| canonical(m) == canonical(p))).collect();
    let pb = indicatif::ProgressBar::new(ds.items.len() as u64);
    let mut pred = Vec::with_capacity(ds.items.len());
    let mut real = Vec::with_capacity(ds.items.len());
    for it in &ds.items {
        let rt = RequestText::of(&it.request);
        pred.push(file.model.predict(&rt, &names, extra));
        real.push(cols.iter().map(|c| c.map_or(f64::NAN, |c| it.quality[c])).collect::<Vec<f64>>());
        pb.inc(1);
    }
    pb.finish_and_clear();
    let usd: Vec<f64> = tier_prices.iter().map(|p| p * tokens_per_request / 1e6).collect();
    let (point, met) = choose_rule(&pred, &real, &usd, tier_prices, lambda, target)?;
    file.rule = point.rule;
    file.tier_costs.insert(n.to_string(), tier_prices.to_vec());
    file.profiles.entry(n.to_string()).or_insert_with(|| profiles.clone());
    if let serde_json::Value::Object(m) = &mut file.meta {
        m.insert(
            "calibration".into(),
            serde_json::json!({"sample": ds.name, "prompts": ds.items.len(), "target": format!("{target:?}"),
                "rule": point.rule.label(), "shares": point.shares, "cost_per_1000": point.cost_per_1000,
                "quality_share": if point.quality_share.is_finite() { Some(point.quality_share) } else { None }}),
        );
    }
    let mut s = format!(
        "quality scorer, {n} tiers ({}): {}{}\n",
        profiles.join(" < "),
        point.rule.label(),
        if met { "" } else { " (target not reachable on this sample: closest point)" }
    );
    s.push_str(&format!(
        "on the sample ({}, {} prompts): {} per tier; ${:.4} per 1,000 requests at {} tokens per request",
        ds.name,
        ds.items.len(),
        point.shares.iter().map(|x| format!("{:.1} %", 100.0 * x)).collect::<Vec<_>>().join(" / "),
        point.cost_per_1000,
        tokens_per_request
    ));
    if point.quality_share.is_finite() {
        s.push_str(&format!("; quality {:.3} of always-{}", point.quality_share, profiles[n - 1]));
    }
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{user_request, Item};

    #[test]
    fn canonical_names_match_across_datasets() {
        assert_eq!(canonical("mistralai/Mixtral-8x7B-Instruct-v0.1"), canonical("Mixtral-8x7B-Instruct-v0.1"));
        assert_eq!(canonical("gpt4_1106_preview"), "gpt-4-1106-preview");
        assert_eq!(canonical("gpt-4-1106-preview"), "gpt-4-1106-preview");
        assert_eq!(canonical("gpt4"), "gpt-4");
        assert_eq!(canonical("gpt35_turbo_instruct"), "gpt35-turbo-instruct");
    }

    /// Prompts mentioning "proof" are won by `big` only; elsewhere both models score the same.
    fn toy(n: usize, relative: bool) -> Dataset {
        let items = (0..n)
            .map(|i| {
                let hard = i % 2 == 0;
                let prompt =
                    if hard { format!("write a proof of lemma {i}") } else { format!("say hello to friend {i}") };
                let (small, big) = if hard { (0.0, 1.0) } else { (1.0, 1.0) };
                let quality = if relative { vec![0.5, if hard { 0.0 } else { 0.5 }] } else { vec![big, small] };
                Item {
                    id: i.to_string(),
                    request: user_request(&prompt),
                    group: i.to_string(),
                    quality,
                    answer_chars: vec![],
                }
            })
            .collect();
        Dataset {
            name: "toy".into(),
            models: vec!["big".into(), "small".into()],
            items,
            dropped_contaminated: 0,
            scale: 1.0,
        }
    }

    #[test]
    fn learns_which_prompts_need_the_big_model_and_is_deterministic() {
        let d = toy(200, false);
        let sets = [QualitySet { data: &d, items: (0..200).collect() }];
        let cfg = QualityConfig { buckets: 1 << 10, ..Default::default() };
        let (m, _) = train(&sets, &cfg).unwrap();
        let hard = RequestText::of(&user_request("write a proof of lemma 999"));
        let easy = RequestText::of(&user_request("say hello to friend 999"));
        assert!(m.pair_score(&hard, "small", "big", None) > m.pair_score(&easy, "small", "big", None) + 0.5);
        let (m2, _) = train(&sets, &cfg).unwrap();
        assert_eq!(m.vectors, m2.vectors);
        assert_eq!(m.w_dense, m2.w_dense);
    }

    #[test]
    fn a_constant_reference_column_is_modelled_relative_to_it() {
        // AlpacaEval-like: "big" is the reference (0.5 everywhere), "small" loses on hard prompts.
        let d = toy(200, true);
        assert_eq!(reference_model(&d), Some(0));
        let sets = [QualitySet { data: &d, items: (0..200).collect() }];
        let (m, _) = train(&sets, &QualityConfig { buckets: 1 << 10, ..Default::default() }).unwrap();
        let hard = RequestText::of(&user_request("write a proof of lemma 999"));
        let easy = RequestText::of(&user_request("say hello to friend 999"));
        assert!(m.pair_score(&hard, "small", "big", None) > m.pair_score(&easy, "small", "big", None) + 0.5);
    }

    /// Three models on every prompt: `ace` always scores 1, `mid` 0.5 (0 on "proof" prompts),
    /// `low` 0 — so `ace` is the best model everywhere.
    fn always_best(n: usize) -> Dataset {
        let items = (0..n)
            .map(|i| {
                let hard = i % 2 == 0;
                let prompt =
                    if hard { format!("write a proof of lemma {i}") } else { format!("say hello to friend {i}") };
                Item {
                    id: i.to_string(),
                    request: user_request(&prompt),
                    group: i.to_string(),
                    quality: vec![1.0, 0.0, if hard { 0.0 } else { 0.5 }],
                    answer_chars: vec![],
                }
            })
            .collect();
        Dataset {
            name: "always".into(),
            models: vec!["ace".into(), "low".into(), "mid".into()],
            items,
            dropped_contaminated: 0,
            scale: 1.0,
        }
    }

    /// The trained predictor behind the gateway's scorer, on hand-made cases: the model that is
    /// always best is picked for every request like the training prompts (on text unlike any
    /// training prompt the projection extrapolates and nothing is promised) whenever it is also
    /// the cheapest tier, whatever
    /// the margin or λ; when it is the dearest, margin 0 (or λ 0) still picks it and a margin
    /// wider than every predicted gap (or a large λ) picks the cheapest tier.
    #[test]
    fn the_trained_predictor_picks_the_always_best_model_when_it_is_cheapest() {
        use triage_core::router::quality::QualityScorer;
        let d = always_best(200);
        let sets = [QualitySet { data: &d, items: (0..200).collect() }];
        // 200 prompts are few for 6 epochs at the default rate: train to convergence.
        let cfg = QualityConfig { buckets: 1 << 10, epochs: 40, ..Default::default() };
        let (model, _) = train(&sets, &cfg).unwrap();
        let requests: Vec<_> = [
            "write a proof of lemma 7",
            "say hello to friend 7",
            "write a proof of lemma 12",
            "say hello to friend 12",
        ]
        .iter()
        .map(|p| user_request(p))
        .collect();
        let scorer = |profiles: [&str; 3], costs: [f64; 3], rule: RuleSpec| {
            let file = QualityFile {
                kind: "quality".into(),
                model: model.clone(),
                static_embed: None,
                profiles: BTreeMap::from([("3".into(), profiles.iter().map(|p| p.to_string()).collect())]),
                tier_costs: BTreeMap::from([("3".into(), costs.to_vec())]),
                rule,
                meta: serde_json::Value::Null,
            };
            QualityScorer::new(file, None).unwrap()
        };
        // `ace` is the cheapest tier: picked for every request under every rule.
        for rule in [
            RuleSpec::Margin(0.0),
            RuleSpec::Margin(0.5),
            RuleSpec::Margin(100.0),
            RuleSpec::Lambda(0.0),
            RuleSpec::Lambda(10.0),
        ] {
            let s = scorer(["ace", "low", "mid"], [1.0, 2.0, 3.0], rule);
            for r in &requests {
                let t = s.tiers(r, 3);
                assert_eq!(t.tier, 0, "{rule:?}: {t:?}");
                assert!(t.quality[0] > t.quality[1] && t.quality[0] > t.quality[2], "{t:?}");
            }
        }
        // `ace` is the dearest tier: margin 0 and λ 0 still pick it, everywhere.
        for rule in [RuleSpec::Margin(0.0), RuleSpec::Lambda(0.0)] {
            let s = scorer(["low", "mid", "ace"], [0.0, 1.0, 20.0], rule);
            for r in &requests {
                assert_eq!(s.tiers(r, 3).tier, 2, "{rule:?}");
            }
        }
        // A margin wider than any predicted gap, or a λ that prices 20 cost units above any
        // gap, picks the cheapest tier everywhere.
        for rule in [RuleSpec::Margin(100.0), RuleSpec::Lambda(10.0)] {
            let s = scorer(["low", "mid", "ace"], [0.0, 1.0, 20.0], rule);
            for r in &requests {
                assert_eq!(s.tiers(r, 3).tier, 0, "{rule:?}");
            }
        }
        // In between, a margin just wider than mid's gap to ace on easy prompts (but not on
        // proofs) keeps easy prompts on mid and sends proofs to ace.
        let easy = RequestText::of(&requests[1]);
        let hard = RequestText::of(&requests[0]);
        let gap = |rt: &RequestText| {
            let q = model.predict(rt, &["mid", "ace"], None);
            q[1] - q[0]
        };
        let (ge, gh) = (gap(&easy), gap(&hard));
        assert!(gh > ge + 0.2, "proofs: mid further behind ({gh} vs {ge})");
        let s = scorer(["low", "mid", "ace"], [0.0, 1.0, 20.0], RuleSpec::Margin((ge + gh) / 2.0));
        assert_eq!(s.tiers(&requests[1], 3).tier, 1);
        assert_eq!(s.tiers(&requests[0], 3).tier, 2);
    }

    /// Predictions, realised qualities, USD per request and prices per tier.
    type Sample = (Vec<Vec<f32>>, Vec<Vec<f64>>, Vec<f64>, Vec<f64>);

    /// Two tiers; on prompts 0..4 the cheap model is predicted close (gap 0.1, 0.2, 0.3, 0.4);
    /// cheap costs $0.001 a request, strong $0.02.
    fn sample() -> Sample {
        let pred = (1..=4).map(|i| vec![0.0, 0.1 * i as f32]).collect();
        // Realised: the cheap model is as good on the two smallest gaps, worse on the others.
        let real = vec![vec![1.0, 1.0], vec![1.0, 1.0], vec![0.0, 1.0], vec![0.0, 1.0]];
        (pred, real, vec![0.001, 0.02], vec![1.0, 20.0])
    }

    #[test]
    fn the_margin_is_set_for_a_cost_target() {
        let (pred, real, usd, prices) = sample();
        // $10 per 1,000 = half the prompts on the strong tier: the smallest margin that keeps
        // the two smallest gaps cheap is just above 0.2.
        let (p, met) = choose_rule(&pred, &real, &usd, &prices, false, QualityTarget::CostPer1000(10.5)).unwrap();
        assert!(met);
        let RuleSpec::Margin(d) = p.rule else { panic!("{p:?}") };
        assert!((0.2..0.3).contains(&d), "{d}");
        assert_eq!(p.shares, vec![0.5, 0.5]);
        assert!((p.cost_per_1000 - 10.5).abs() < 1e-9);
        assert!((p.quality_share - 1.0).abs() < 1e-12);
        // Everything strong costs $20 per 1,000: a target of $25 needs no margin.
        let (p, _) = choose_rule(&pred, &real, &usd, &prices, false, QualityTarget::CostPer1000(25.0)).unwrap();
        assert_eq!(p.rule, RuleSpec::Margin(0.0));
        // Below always-cheap ($1) the target cannot be met: the cheapest point, flagged.
        let (p, met) = choose_rule(&pred, &real, &usd, &prices, false, QualityTarget::CostPer1000(0.5)).unwrap();
        assert!(!met);
        assert_eq!(p.shares, vec![1.0, 0.0]);
    }

    #[test]
    fn the_margin_and_lambda_are_set_for_a_quality_share() {
        let (pred, real, usd, prices) = sample();
        // Quality share 1.0: the cheapest point keeping every prompt's realised quality is the
        // one sending gaps 0.3 and 0.4 to the strong model (margin in [0.2, 0.3)).
        let (p, met) = choose_rule(&pred, &real, &usd, &prices, false, QualityTarget::QualityShare(1.0)).unwrap();
        assert!(met);
        assert_eq!(p.shares, vec![0.5, 0.5]);
        // 0.75: one of the losing prompts may stay cheap.
        let (p, _) = choose_rule(&pred, &real, &usd, &prices, false, QualityTarget::QualityShare(0.75)).unwrap();
        assert_eq!(p.shares, vec![0.75, 0.25]);
        // λ: the value is q − λ·price; strong wins prompt i while 0.1·i > 19λ.
        let (p, met) = choose_rule(&pred, &real, &usd, &prices, true, QualityTarget::QualityShare(1.0)).unwrap();
        assert!(met);
        assert_eq!(p.shares, vec![0.5, 0.5]);
        let RuleSpec::Lambda(l) = p.rule else { panic!("{p:?}") };
        assert!(l * 19.0 >= 0.2 - 1e-4 && l * 19.0 < 0.3, "{l}");
        // Without realised qualities a quality target is refused.
        let none = vec![vec![f64::NAN, f64::NAN]; 4];
        assert!(choose_rule(&pred, &none, &usd, &prices, false, QualityTarget::QualityShare(0.9)).is_err());
    }
}
