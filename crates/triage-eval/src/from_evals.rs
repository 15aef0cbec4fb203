//! Closing the loop (issue 15): the lexical scorer fine-tuned on the gateway's own production
//! evaluation labels, and its thresholds moved for a quality target, with every before / after
//! figure measured by k-fold cross-validation on the production rows, never in-sample.
//!
//! A production row is one shadow-evaluated request: the router's representation of it (its
//! features, not its text; `triage_core::router::Representation`) and the judge's outcome. The
//! label is "the reference would have been better" (outcome `loss`) against `win` or `tie`;
//! rows without a verdict (`judge_failed`, `error`) carry no label and are left out.
//!
//! **Fine-tuning** ([`fine_tune`]) starts from the current model (the shipped one, trained on the
//! public benchmarks) and keeps it as a Gaussian prior: it minimises
//!
//! ```text
//! Σ_rows logloss(y, σ(z)) + (λ / 2) · (‖w − w₀‖² + ‖d − d₀‖²) + (λ / 200) · (b − b₀)²
//! ```
//!
//! over the hashed weights `w`, the dense weights `d` (standardised over the rows during the
//! fit, then folded back) and the intercept `b`, where `w₀, d₀, b₀` are the prior model's and
//! λ is the prior strength (`--prior-strength`, default [`DEFAULT_PRIOR_STRENGTH`]). With λ = 1
//! a weight moves one unit away from the shipped one only where the production rows' log loss
//! gains about one unit from it; the intercept is nearly free (λ/100), so the deployment's own
//! base rate of losses is learnt at once. The more production rows, the less the prior counts:
//! its weight does not grow with the data. Full-batch AdaGrad (Duchi, Hazan and Singer, 2011),
//! deterministic, no shuffling.
//!
//! **Cross-validation** ([`folds`]): rows are split into k folds by a hash of their
//! representation, so identical requests (a repeated prompt) fall in the same fold and never
//! score each other. "Before" scores every row with the prior model (which never saw them);
//! "after" scores every row of fold i with a model fine-tuned on the other folds.
//!
//! **Calibration** ([`calibrate`]): the rows were answered by a model cheaper than the
//! reference. Sending a request at or above the threshold `t` of the reference's tier to the
//! reference removes its loss (the reference's answer is then the answer); a request below `t`
//! keeps its outcome. The threshold chosen is the highest whose share of rows that stay cheap
//! and lose stays within `1 − target_quality`. Its cross-validated figure picks the threshold on
//! the other folds and measures it on the held-out fold.

use std::collections::BTreeMap;

use serde::Serialize;
use triage_core::evals::wilson;
use triage_core::router::features::DENSE_LEN;
use triage_core::router::lexical::sigmoid;
use triage_core::router::{LexicalModel, Representation, Thresholds};

use crate::EvalError;

/// Default prior strength λ (see the module docs); measured in docs/ROUTING.md.
pub const DEFAULT_PRIOR_STRENGTH: f32 = 0.1;

/// How much stiffer the prior is on the dense weights than on the hashed ones: a dense feature
/// (length, code, math markers) weighs on every request, so a few hundred production rows must
/// not rewrite it as easily as the weight of one n-gram.
pub const DENSE_STIFFNESS: f32 = 10.0;

/// Fewest labelled rows (and of each label) cross-validation is run on.
pub const MIN_ROWS: usize = 10;

/// One shadow-evaluated request: what the router saw and whether the reference was better.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductionRow {
    /// The request id.
    pub id: String,
    /// The router's representation of the request.
    pub representation: Representation,
    /// The reference's answer was better (outcome `loss`).
    pub loss: bool,
    /// The router's scorer chose the tier (reason kind `auto`): only such requests move when
    /// thresholds move.
    pub auto: bool,
}

impl ProductionRow {
    /// The label of a stored outcome: `loss` → `Some(true)`, `win` / `tie` → `Some(false)`,
    /// anything else (`judge_failed`, `error`) → `None` (no verdict, no label).
    pub fn label_of(outcome: &str) -> Option<bool> {
        match outcome {
            "loss" => Some(true),
            "win" | "tie" => Some(false),
            _ => None,
        }
    }
}

/// Fine-tuning and cross-validation settings.
#[derive(Debug, Clone, Serialize)]
pub struct FineTuneConfig {
    /// Prior strength λ.
    pub prior_strength: f32,
    /// Iterations of Nesterov's accelerated gradient (full batch).
    pub iterations: usize,
    /// Step as a multiple of 1/L, L the gradient's Lipschitz bound (1 is safe).
    pub lr: f32,
    /// Cross-validation folds.
    pub folds: usize,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        FineTuneConfig { prior_strength: DEFAULT_PRIOR_STRENGTH, iterations: 500, lr: 1.0, folds: 5 }
    }
}

/// The rows `model` can read (its representation kind and size), and how many were not.
pub fn usable<'a>(model: &LexicalModel, rows: &'a [ProductionRow]) -> (Vec<&'a ProductionRow>, usize) {
    let (ok, other): (Vec<&ProductionRow>, Vec<&ProductionRow>) =
        rows.iter().partition(|r| model.logit_representation(&r.representation).is_some());
    (ok, other.len())
}

/// Fine-tunes `prior` on `rows` (see the module docs); the result keeps the prior's thresholds,
/// dense means and metadata (the caller sets its own).
///
/// Errors: [`EvalError::Data`] if a row is not of the prior's kind or there are no rows.
pub fn fine_tune(
    prior: &LexicalModel,
    rows: &[&ProductionRow],
    cfg: &FineTuneConfig,
) -> Result<LexicalModel, EvalError> {
    if rows.is_empty() {
        return Err(EvalError::Data("no production rows to fine-tune on".into()));
    }
    if rows.iter().any(|r| prior.logit_representation(&r.representation).is_none()) {
        return Err(EvalError::Data("a production row is not of the model's representation kind".into()));
    }
    let (b0, d0, means, w0) = prior.weights();
    let buckets = prior.buckets() as usize;
    // Centre the dense features over the rows (for a well-conditioned intercept) and express
    // the prior in that space: b' = b + Σ dⱼ·μⱼ. They are not rescaled: they are already of
    // order 1 (logs and shares), and a feature that hardly varies among the rows must not get a
    // weight that explodes on the next request where it does.
    let n = rows.len() as f32;
    let mut mu = [0f32; DENSE_LEN];
    for r in rows {
        for (m, x) in mu.iter_mut().zip(&r.representation.dense) {
            *m += x / n;
        }
    }
    let sd = [1f32; DENSE_LEN];
    let zs: Vec<[f32; DENSE_LEN]> = rows
        .iter()
        .map(|r| {
            let mut z = [0f32; DENSE_LEN];
            for j in 0..DENSE_LEN {
                z[j] = r.representation.dense[j] - mu[j];
            }
            z
        })
        .collect();
    let prior_d: [f32; DENSE_LEN] = std::array::from_fn(|j| d0[j] * sd[j]);
    let prior_b = b0 + (0..DENSE_LEN).map(|j| d0[j] * mu[j]).sum::<f32>();
    // Only the buckets some row touches can move (elsewhere the gradient is the prior's, zero):
    // the fit works on those, numbered 0..touched.len().
    let mut touched: Vec<u32> = rows.iter().flat_map(|r| r.representation.sparse.iter().map(|&(i, _)| i)).collect();
    touched.sort_unstable();
    touched.dedup();
    touched.retain(|&i| (i as usize) < buckets);
    let pos = |i: u32| touched.binary_search(&i).ok();
    let xs: Vec<Vec<(usize, f32)>> = rows
        .iter()
        .map(|r| r.representation.sparse.iter().filter_map(|&(i, v)| pos(i).map(|p| (p, v))).collect())
        .collect();
    let w_prior: Vec<f32> = touched.iter().map(|&i| w0[i as usize]).collect();
    // θ = (touched hashed weights, dense weights, intercept), from the prior.
    let dim = touched.len() + DENSE_LEN + 1;
    let mut theta_prior: Vec<f32> = w_prior.clone();
    theta_prior.extend_from_slice(&prior_d);
    theta_prior.push(prior_b);
    let lambda = cfg.prior_strength.max(0.0);
    // Objective per row (mean log loss plus the prior over n): its gradient is Lipschitz with
    // L ≤ max‖x‖²/4 + λ/n, so 1/L is a safe step (Nesterov's accelerated gradient; the
    // problem is convex).
    let max_norm = xs
        .iter()
        .zip(&zs)
        .map(|(x, z)| x.iter().map(|p| p.1 * p.1).sum::<f32>() + z.iter().map(|v| v * v).sum::<f32>() + 1.0)
        .fold(0f32, f32::max);
    let step = cfg.lr / (max_norm / 4.0 + lambda / n);
    let ys: Vec<f32> = rows.iter().map(|r| f32::from(u8::from(r.loss))).collect();
    let mut theta = theta_prior.clone();
    let mut prev = theta.clone();
    let mut look = theta.clone();
    let mut g = vec![0f32; dim];
    let nw = touched.len();
    for k in 0..cfg.iterations {
        // Look-ahead point y = θ + (k − 1)/(k + 2)·(θ − θ_prev).
        let mom = k as f32 / (k as f32 + 3.0);
        for q in 0..dim {
            look[q] = theta[q] + mom * (theta[q] - prev[q]);
        }
        for q in 0..dim {
            let l = if q == dim - 1 {
                lambda / 100.0
            } else if q >= nw {
                lambda * DENSE_STIFFNESS
            } else {
                lambda
            };
            g[q] = l * (look[q] - theta_prior[q]) / n;
        }
        for ((x, z), y) in xs.iter().zip(&zs).zip(&ys) {
            let logit = look[dim - 1]
                + x.iter().map(|&(p, v)| look[p] * v).sum::<f32>()
                + z.iter().zip(&look[nw..nw + DENSE_LEN]).map(|(a, w)| a * w).sum::<f32>();
            let e = (sigmoid(logit) - y) / n;
            for &(p, v) in x {
                g[p] += e * v;
            }
            for j in 0..DENSE_LEN {
                g[nw + j] += e * z[j];
            }
            g[dim - 1] += e;
        }
        std::mem::swap(&mut prev, &mut theta);
        for q in 0..dim {
            theta[q] = look[q] - step * g[q];
        }
    }
    let mut w = w0.to_vec();
    for (q, &i) in touched.iter().enumerate() {
        w[i as usize] = theta[q];
    }
    let d: [f32; DENSE_LEN] = std::array::from_fn(|j| theta[nw + j]);
    let b = theta[dim - 1];
    let dense: [f32; DENSE_LEN] = std::array::from_fn(|j| d[j] / sd[j]);
    let bias = b - (0..DENSE_LEN).map(|j| dense[j] * mu[j]).sum::<f32>();
    LexicalModel::from_weights(
        prior.buckets(),
        bias,
        dense,
        means,
        &w,
        prior.file().thresholds.clone(),
        prior.file().meta.clone(),
    )
    .map_err(|e| EvalError::Data(e.to_string()))
}

/// FNV-1a over a representation's entries: identical requests hash alike.
fn rep_hash(r: &Representation) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (i, v) in &r.sparse {
        eat(&i.to_le_bytes());
        eat(&v.to_bits().to_le_bytes());
    }
    for v in &r.dense {
        eat(&v.to_bits().to_le_bytes());
    }
    h
}

/// The fold (0..k) of each row: a hash of its representation, so identical requests share one.
pub fn folds(rows: &[&ProductionRow], k: usize) -> Vec<usize> {
    let k = k.max(2) as u64;
    rows.iter().map(|r| (splitmix(rep_hash(&r.representation)) % k) as usize).collect()
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks there is enough to cross-validate: at least [`MIN_ROWS`] rows, with both labels.
///
/// Errors: [`EvalError::Data`] saying what is missing.
pub fn check_enough(rows: &[&ProductionRow]) -> Result<(), EvalError> {
    let losses = rows.iter().filter(|r| r.loss).count();
    if rows.len() < MIN_ROWS || losses == 0 || losses == rows.len() {
        return Err(EvalError::Data(format!(
            "{} labelled production rows ({losses} losses): cross-validation needs at least {MIN_ROWS}, with losses and non-losses both present",
            rows.len()
        )));
    }
    Ok(())
}

/// Each row's score from a model fine-tuned from `prior` on the other folds (k-fold
/// cross-validation; `fold[i]` from [`folds`]).
///
/// Errors: as [`fine_tune`].
pub fn out_of_fold_scores(
    prior: &LexicalModel,
    rows: &[&ProductionRow],
    fold: &[usize],
    cfg: &FineTuneConfig,
) -> Result<Vec<f32>, EvalError> {
    let mut scores = vec![f32::NAN; rows.len()];
    let k = fold.iter().copied().max().map_or(0, |m| m + 1);
    for f in 0..k {
        let train: Vec<&ProductionRow> = rows.iter().zip(fold).filter(|(_, g)| **g != f).map(|(r, _)| *r).collect();
        let held: Vec<usize> = (0..rows.len()).filter(|&i| fold[i] == f).collect();
        if held.is_empty() {
            continue;
        }
        let model = if train.is_empty() { prior.clone() } else { fine_tune(prior, &train, cfg)? };
        for i in held {
            scores[i] = score(&model, rows[i]);
        }
    }
    Ok(scores)
}

/// The model's score of a row (0.5 if it is not of the model's kind).
pub fn score(model: &LexicalModel, row: &ProductionRow) -> f32 {
    model.logit_representation(&row.representation).map_or(0.5, sigmoid)
}

/// Figures of one set of scores on the production rows at one threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Rows.
    pub rows: usize,
    /// Rows where the reference was better.
    pub losses: usize,
    /// Mean log loss of the scores as probabilities of a loss.
    pub log_loss: f64,
    /// Area under the ROC curve of the scores for losses (`None` with one label only).
    pub auc: Option<f64>,
    /// The threshold of the reference's tier.
    pub threshold: f32,
    /// Rows at or above it (would go to the reference's tier).
    pub escalated: usize,
    /// Rows below it whose reference answer was better (losses kept cheap).
    pub missed: usize,
}

impl Figures {
    /// Share of rows sent to the reference's tier.
    pub fn escalated_share(&self) -> f64 {
        self.escalated as f64 / self.rows.max(1) as f64
    }

    /// Share of rows kept cheap where the reference would have been better, with its 95 %
    /// Wilson interval.
    pub fn missed_share(&self) -> (f64, (f64, f64)) {
        (self.missed as f64 / self.rows.max(1) as f64, wilson(self.missed as u64, self.rows as u64))
    }
}

/// The [`Figures`] of `scores` (aligned with `rows`) at `threshold`.
pub fn figures(rows: &[&ProductionRow], scores: &[f32], threshold: f32) -> Figures {
    let mut log_loss = 0.0;
    for (r, &s) in rows.iter().zip(scores) {
        let p = f64::from(s).clamp(1e-7, 1.0 - 1e-7);
        log_loss -= if r.loss { p.ln() } else { (1.0 - p).ln() };
    }
    let escalated = scores.iter().filter(|&&s| s >= threshold).count();
    let missed = rows.iter().zip(scores).filter(|(r, s)| r.loss && **s < threshold).count();
    Figures {
        rows: rows.len(),
        losses: rows.iter().filter(|r| r.loss).count(),
        log_loss: log_loss / rows.len().max(1) as f64,
        auc: auc(rows, scores),
        threshold,
        escalated,
        missed,
    }
}

/// ROC AUC by the Mann–Whitney statistic (ties count one half); `None` with one label only.
pub fn auc(rows: &[&ProductionRow], scores: &[f32]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = scores.iter().copied().zip(rows.iter().map(|r| r.loss)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|x| x.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // Sum of the positives' mid-ranks (1-based).
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + 1 + j) as f64 / 2.0;
        rank_sum += v[i..j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// The threshold of the reference's tier: the highest at which the estimated share of `rows`
/// that stay below it and would have been better answered by the reference is at most
/// `max_missed`; `None` when no row needs escalating (the target holds with every row kept
/// cheap). The estimate below a threshold is the larger of the losses counted there and the
/// scores summed there (each score being the predicted probability of a loss): the first
/// alone chases the sample's noise, the second alone trusts the scores' calibration.
pub fn threshold_for(rows: &[&ProductionRow], scores: &[f32], max_missed: f64) -> Option<f32> {
    let mut v: Vec<(f32, bool)> = scores.iter().copied().zip(rows.iter().map(|r| r.loss)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let allowed = max_missed * v.len() as f64 + 1e-9;
    // Walk up in groups of equal score: a threshold at a group's score keeps every row below it.
    let (mut losses, mut predicted, mut i) = (0usize, 0f64, 0);
    while i < v.len() {
        let mut j = i;
        let (mut group_losses, mut group_predicted) = (0, 0.0);
        while j < v.len() && v[j].0 == v[i].0 {
            group_losses += usize::from(v[j].1);
            group_predicted += f64::from(v[j].0);
            j += 1;
        }
        if ((losses + group_losses) as f64).max(predicted + group_predicted) > allowed {
            return Some(v[i].0);
        }
        losses += group_losses;
        predicted += group_predicted;
        i = j;
    }
    None
}

/// Where the reference's tier begins in a catalog of `tiers` tiers: the threshold index is
/// `reference_tier - 1`.
fn boundary(thresholds: &Thresholds, tiers: usize, reference_tier: usize) -> Result<(Vec<f32>, usize), EvalError> {
    if tiers < 2 || reference_tier == 0 || reference_tier >= tiers {
        return Err(EvalError::Usage(format!(
            "the reference must be in a tier above the cheapest (reference tier {reference_tier} of {tiers})"
        )));
    }
    Ok((thresholds.for_tiers(tiers), reference_tier - 1))
}

/// What `triage train --from-evals` measured.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// The prior model's scores (it never saw the rows).
    pub before: Figures,
    /// Out-of-fold scores of the fine-tuning recipe.
    pub after: Figures,
    /// Rows of another representation kind, not used.
    pub other_kind: usize,
}

/// Fine-tunes `prior` on every usable row and measures the recipe by cross-validation, both at
/// the reference tier's current threshold (`tiers`, `reference_tier`: the catalog's). Returns
/// the model (fitted on all rows, thresholds unchanged, `meta.from_evals` recorded beside the
/// prior's metadata) and the figures.
///
/// Errors: [`EvalError`] for too few rows or a reference in the cheapest tier.
pub fn train(
    prior: &LexicalModel,
    prior_name: &str,
    rows: &[ProductionRow],
    cfg: &FineTuneConfig,
    tiers: usize,
    reference_tier: usize,
) -> Result<(LexicalModel, TrainOutcome), EvalError> {
    let (usable, other_kind) = usable(prior, rows);
    check_enough(&usable)?;
    let (th, at) = boundary(&prior.file().thresholds, tiers, reference_tier)?;
    let t = th[at];
    let before_scores: Vec<f32> = usable.iter().map(|r| score(prior, r)).collect();
    let fold = folds(&usable, cfg.folds);
    let after_scores = out_of_fold_scores(prior, &usable, &fold, cfg)?;
    let mut model = fine_tune(prior, &usable, cfg)?;
    let before = figures(&usable, &before_scores, t);
    let after = figures(&usable, &after_scores, t);
    let mut meta = match prior.file().meta.clone() {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    meta.insert(
        "from_evals".into(),
        serde_json::json!({
            "prior": prior_name,
            "date": crate::today_utc(),
            "rows": usable.len(),
            "losses": before.losses,
            "fine_tune": cfg,
            "cross_validation": {"folds": cfg.folds, "before": before, "after": after},
        }),
    );
    model.set_meta(serde_json::Value::Object(meta));
    Ok((model, TrainOutcome { before, after, other_kind }))
}

/// What `triage calibrate --from-evals` measured and chose.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrateOutcome {
    /// Rows the thresholds decide for (routed by the scorer; every usable row if none was).
    pub rows: usize,
    /// Whether the rows are the scorer-routed ones only.
    pub auto_only: bool,
    /// Whether the scores are out-of-fold (the model was fine-tuned on these rows).
    pub refitted: bool,
    /// At the current threshold.
    pub before: Figures,
    /// At the threshold chosen on the other folds, per held-out fold, summed.
    pub after_cv: Figures,
    /// The threshold chosen on every row (set in the model).
    pub threshold: f32,
    /// The model's thresholds for the catalog's tier count after the change.
    pub thresholds: Vec<f32>,
}

/// Moves the threshold of the reference's tier so that the share of rows kept cheap whose
/// reference answer was better stays within `1 − target_quality` (see the module docs), and
/// writes it into `model` for `tiers` tiers (lower thresholds lowered to it where above it,
/// higher ones raised to it). When `prior` is given (the model was fine-tuned on these rows
/// from it), scores are out-of-fold: every row is scored by a model fine-tuned without it.
///
/// Errors: [`EvalError`] for too few rows, a target outside (0, 1], or a reference in the
/// cheapest tier.
pub fn calibrate(
    model: &mut LexicalModel,
    prior: Option<&LexicalModel>,
    rows: &[ProductionRow],
    target_quality: f64,
    cfg: &FineTuneConfig,
    tiers: usize,
    reference_tier: usize,
) -> Result<CalibrateOutcome, EvalError> {
    if !(target_quality > 0.0 && target_quality <= 1.0) {
        return Err(EvalError::Usage(format!("--target-quality must be in (0, 1], got {target_quality}")));
    }
    let max_missed = 1.0 - target_quality;
    let (all, _) = usable(model, rows);
    let auto: Vec<&ProductionRow> = all.iter().copied().filter(|r| r.auto).collect();
    let auto_only = auto.len() >= MIN_ROWS;
    let rows: Vec<&ProductionRow> = if auto_only { auto } else { all };
    check_enough(&rows)?;
    let (mut th, at) = boundary(&model.file().thresholds, tiers, reference_tier)?;
    let fold = folds(&rows, cfg.folds);
    let scores = match prior {
        Some(p) => out_of_fold_scores(p, &rows, &fold, cfg)?,
        None => rows.iter().map(|r| score(model, r)).collect(),
    };
    let before = figures(&rows, &scores, th[at]);
    // No escalation needed: the threshold goes just above every row's score (none of them need
    // the reference), never past 1.
    let above_all = |s: &[f32]| s.iter().copied().fold(0f32, f32::max).next_up().min(1.0);
    // Cross-validated: choose on the other folds, measure on the held-out one.
    let k = fold.iter().copied().max().map_or(0, |m| m + 1);
    let (mut escalated, mut missed, mut log_loss) = (0, 0, 0.0);
    for f in 0..k {
        let (mut tr_rows, mut tr_scores, mut te_rows, mut te_scores) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..rows.len() {
            if fold[i] == f {
                te_rows.push(rows[i]);
                te_scores.push(scores[i]);
            } else {
                tr_rows.push(rows[i]);
                tr_scores.push(scores[i]);
            }
        }
        if te_rows.is_empty() {
            continue;
        }
        let t = threshold_for(&tr_rows, &tr_scores, max_missed).unwrap_or_else(|| above_all(&tr_scores));
        let fig = figures(&te_rows, &te_scores, t);
        escalated += fig.escalated;
        missed += fig.missed;
        log_loss += fig.log_loss * fig.rows as f64;
    }
    let t = threshold_for(&rows, &scores, max_missed).unwrap_or_else(|| above_all(&scores));
    let after_cv = Figures {
        rows: rows.len(),
        losses: before.losses,
        log_loss: log_loss / rows.len() as f64,
        auc: before.auc,
        threshold: t,
        escalated,
        missed,
    };
    th[at] = t;
    for (j, x) in th.iter_mut().enumerate() {
        if j < at {
            *x = x.min(t);
        } else if j > at {
            *x = x.max(t);
        }
    }
    let mut all_th = model.file().thresholds.clone();
    all_th.by_tiers.insert(tiers.to_string(), th.clone());
    all_th.shares.remove(&tiers.to_string());
    all_th.sample = format!(
        "production evaluations ({} rows{}), target quality {target_quality}",
        rows.len(),
        if auto_only { ", routed by the scorer" } else { "" }
    );
    model.set_thresholds(all_th).map_err(|e| EvalError::Data(e.to_string()))?;
    let mut meta = match model.file().meta.clone() {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    meta.insert(
        "calibrated_from_evals".into(),
        serde_json::json!({"date": crate::today_utc(), "target_quality": target_quality, "tiers": tiers,
            "reference_tier": reference_tier, "threshold": t, "before": before, "after_cv": after_cv}),
    );
    model.set_meta(serde_json::Value::Object(meta));
    Ok(CalibrateOutcome {
        rows: rows.len(),
        auto_only,
        refitted: prior.is_some(),
        before,
        after_cv,
        threshold: t,
        thresholds: th,
    })
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn row_text(name: &str, f: &Figures) -> String {
    let (m, (lo, hi)) = f.missed_share();
    format!(
        "{name:<28} {:>8.4} {:>6} {:>11} {:>10}  {} [{:.1}-{:.1}]\n",
        f.log_loss,
        f.auc.map_or("-".to_owned(), |a| format!("{a:.3}")),
        format!("{:.4}", f.threshold),
        pct(f.escalated_share()),
        pct(m),
        lo * 100.0,
        hi * 100.0
    )
}

fn table_head() -> String {
    format!(
        "{:<28} {:>8} {:>6} {:>11} {:>10}  {}\n",
        "", "LOG LOSS", "AUC", "THRESHOLD", "ESCALATED", "REFERENCE BETTER, KEPT CHEAP [95% CI]"
    )
}

/// The text `triage train --from-evals` prints.
pub fn train_text(o: &TrainOutcome, cfg: &FineTuneConfig) -> String {
    let mut s = format!(
        "production rows: {} ({} where the reference was better, {}){}\n",
        o.before.rows,
        o.before.losses,
        pct(o.before.losses as f64 / o.before.rows.max(1) as f64),
        if o.other_kind > 0 { format!("; {} of another scorer's kind not used", o.other_kind) } else { String::new() }
    );
    s.push_str(&format!(
        "fine-tuned from the prior with prior strength {} ({} iterations, lr {}); figures by {}-fold cross-validation (folds by request representation): every row scored by a model that did not see it\n",
        cfg.prior_strength, cfg.iterations, cfg.lr, cfg.folds
    ));
    s.push_str(&table_head());
    s.push_str(&row_text("before (prior model)", &o.before));
    s.push_str(&row_text("after (fine-tuned, CV)", &o.after));
    s.push_str("ESCALATED = rows at or above the reference tier's threshold (unchanged by training; `triage calibrate --from-evals` moves it)\n");
    s
}

/// The text `triage calibrate --from-evals` prints.
pub fn calibrate_text(o: &CalibrateOutcome, target_quality: f64, cfg: &FineTuneConfig) -> String {
    let mut s = format!(
        "production rows: {} ({}); scores {}\n",
        o.rows,
        if o.auto_only {
            "routed by the scorer"
        } else {
            "every labelled row: fewer than 10 were routed by the scorer"
        },
        if o.refitted {
            format!("out-of-fold: the model was fine-tuned on these rows, so each fold is scored by a model refitted without it ({}-fold)", cfg.folds)
        } else {
            "of the model as it is (it never saw these rows)".to_owned()
        }
    );
    s.push_str(&format!(
        "target: reference better on at most {} of requests kept cheap (quality {target_quality}); threshold chosen on the other folds, measured on the held-out fold\n",
        pct(1.0 - target_quality)
    ));
    s.push_str(&table_head());
    s.push_str(&row_text("before (current threshold)", &o.before));
    s.push_str(&row_text("after (CV)", &o.after_cv));
    s.push_str(&format!("threshold chosen on every row: {:.4}; thresholds now {:?}\n", o.threshold, o.thresholds));
    s
}

/// Counts of stored outcomes, for a line saying what was left out.
pub fn outcome_counts<'a>(outcomes: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o.to_owned()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::user_request;
    use triage_core::router::{Scorer, DEFAULT_MODEL_JSON};

    fn shipped() -> LexicalModel {
        LexicalModel::from_json(DEFAULT_MODEL_JSON).unwrap()
    }

    const TABLES: [&str; 6] = ["orders", "customers", "invoices", "shipments", "employees", "products"];
    const TOPICS: [&str; 6] = ["the sea", "a birthday", "our new office", "spring", "a cat", "the weekly meeting"];

    /// SQL requests lose against the reference, the others tie.
    fn rows(n: usize) -> Vec<ProductionRow> {
        let m = shipped();
        (0..n)
            .map(|i| {
                let sql = i % 3 == 0;
                let p = if sql {
                    format!("Write a SQL query listing the {} of last week, number {i}.", TABLES[i % 6])
                } else {
                    format!("Write a friendly note about {}, number {i}.", TOPICS[i % 6])
                };
                ProductionRow {
                    id: i.to_string(),
                    representation: m.representation(&user_request(&p)).unwrap(),
                    loss: sql,
                    auto: true,
                }
            })
            .collect()
    }

    #[test]
    fn labels_come_only_from_verdicts() {
        assert_eq!(ProductionRow::label_of("loss"), Some(true));
        assert_eq!(ProductionRow::label_of("tie"), Some(false));
        assert_eq!(ProductionRow::label_of("win"), Some(false));
        assert_eq!(ProductionRow::label_of("judge_failed"), None);
        assert_eq!(ProductionRow::label_of("error"), None);
    }

    #[test]
    fn auc_and_thresholds_match_hand_computed_values() {
        let rs: Vec<ProductionRow> = [false, true, false, true, true]
            .iter()
            .enumerate()
            .map(|(i, &loss)| ProductionRow {
                id: i.to_string(),
                representation: Representation { kind: "x".into(), dim: 0, sparse: vec![], dense: vec![] },
                loss,
                auto: true,
            })
            .collect();
        let r: Vec<&ProductionRow> = rs.iter().collect();
        let s = [0.1, 0.2, 0.3, 0.4, 0.4];
        // Positives at 0.2, 0.4, 0.4; negatives at 0.1, 0.3: pairs won 2 + 2 + 2 of 6 minus the
        // 0.2 < 0.3 pair: 5 / 6.
        assert!((auc(&r, &s).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // At most 1 of 5 (0.2): below 0.4, 1 loss and 0.6 predicted; the group at 0.4 brings
        // the losses to 3 -> t = 0.4.
        assert_eq!(threshold_for(&r, &s, 0.2), Some(0.4));
        // None may stay: t = 0.1 (even the first row's predicted 0.1 is over 0).
        assert_eq!(threshold_for(&r, &s, 0.0), Some(0.1));
        // 0.1 of 5 = 0.5: the loss at 0.2 passes it -> t = 0.2.
        assert_eq!(threshold_for(&r, &s, 0.1), Some(0.2));
        // 2.2 of 5: losses 3 > 2.2 only with the group at 0.4.
        assert_eq!(threshold_for(&r, &s, 0.44), Some(0.4));
        assert_eq!(threshold_for(&r, &s, 0.7), None);
        let f = figures(&r, &s, 0.4);
        assert_eq!((f.escalated, f.missed, f.losses), (2, 1, 3));
    }

    #[test]
    fn fine_tuning_learns_the_production_labels_and_cross_validation_shows_it() {
        let rs = rows(60);
        let prior = shipped();
        let cfg = FineTuneConfig::default();
        let (model, out) = train(&prior, "shipped", &rs, &cfg, 2, 1).unwrap();
        assert_eq!((out.before.rows, out.before.losses, out.other_kind), (60, 20, 0));
        // Every SQL row was routed cheap under the shipped threshold; after fine-tuning,
        // held-out SQL rows score above it and the others below.
        assert!(out.after.auc.unwrap() > 0.99, "{out:?}");
        assert!(out.after.log_loss < out.before.log_loss, "{out:?}");
        assert_eq!(out.after.missed, 0, "{out:?}");
        assert_eq!(out.after.escalated, 20, "{out:?}");
        let t = prior.file().thresholds.for_tiers(2)[0];
        let s = |p: &str| model.score_text(&triage_core::router::features::RequestText::of(&user_request(p)));
        assert!(s("Write a SQL query that counts the invoices per customer.") > t);
        assert!(s("Write a friendly note about the holidays.") < t);
        assert!(model.file().meta["from_evals"]["rows"] == 60);
        // The prior's own figures are unchanged by training (it never saw the rows).
        assert_eq!(
            out.before.auc,
            auc(&rs.iter().collect::<Vec<_>>(), &rs.iter().map(|r| score(&prior, r)).collect::<Vec<_>>())
        );
    }

    /// The end-to-end scenario's traffic (crates/triage/tests/evals_loop.rs): SQL requests and
    /// others asked in the same five ways; after fine-tuning, requests asked in new ways about
    /// new tables and topics go to the reference's tier when about SQL, and stay cheap otherwise.
    #[test]
    fn fine_tuning_generalises_to_new_phrasings() {
        let sql_asks = [
            "Write a SQL query that lists the {} of last week.",
            "Explain what this SQL does: select the {} by date.",
            "Why is my SQL join on {} so slow?",
            "Turn this request into SQL: total {} per month.",
            "Which SQL index helps when filtering {} by date?",
        ];
        let other_asks = [
            "Write a friendly note that mentions {} of last week.",
            "Explain what this poem does: describe {} by night.",
            "Why is my story about {} so slow?",
            "Turn this request into a poem: {} per month.",
            "Which colour helps when painting {} by day?",
        ];
        let m = shipped();
        let mut rs = Vec::new();
        for (asks, nouns, loss) in [
            (&sql_asks, &["orders", "customers", "invoices", "shipments"][..], true),
            (
                &other_asks,
                &[
                    "the sea",
                    "a birthday",
                    "our new office",
                    "spring",
                    "a cat",
                    "the weekly meeting",
                    "a long walk",
                    "the garden",
                ][..],
                false,
            ),
        ] {
            for n in nouns {
                for a in asks.iter() {
                    let p = a.replace("{}", n);
                    rs.push(ProductionRow {
                        id: p.clone(),
                        representation: m.representation(&user_request(&p)).unwrap(),
                        loss,
                        auto: true,
                    });
                }
            }
        }
        let r: Vec<&ProductionRow> = rs.iter().collect();
        let model = fine_tune(&m, &r, &FineTuneConfig::default()).unwrap();
        let t = m.file().thresholds.for_tiers(2)[0];
        let s = |p: &str| model.score_text(&triage_core::router::features::RequestText::of(&user_request(p)));
        let sql = [
            "Please review my SQL for the payments report.",
            "How do I write SQL that sums the refunds per week?",
            "Is this SQL correct: count the suppliers per country?",
            "Show me the SQL to find duplicate employees.",
        ];
        let other = [
            "Please review my letter about the harbour.",
            "How do I describe a rainy day in one word?",
            "Is this sentence correct: the bakery opens at nine?",
            "Show me a kind way to say thank you to a neighbour.",
        ];
        let scores: Vec<(f32, &str)> = sql.iter().chain(&other).map(|p| (s(p), *p)).collect();
        println!("threshold {t}: {scores:?}");
        for p in sql {
            assert!(s(p) > t, "{p}: {} vs {t}; {scores:?}", s(p));
        }
        for p in other {
            assert!(s(p) < t, "{p}: {} vs {t}; {scores:?}", s(p));
        }
    }

    #[test]
    fn identical_requests_share_a_fold() {
        let mut rs = rows(20);
        rs.push(ProductionRow { id: "dup".into(), ..rs[3].clone() });
        let r: Vec<&ProductionRow> = rs.iter().collect();
        let f = folds(&r, 5);
        assert_eq!(f[3], f[20]);
        assert!(f.iter().all(|&x| x < 5));
        assert!((0..5).filter(|k| f.contains(k)).count() >= 3, "{f:?}");
    }

    #[test]
    fn calibration_meets_the_target_under_cross_validation() {
        let rs = rows(60);
        let prior = shipped();
        let cfg = FineTuneConfig::default();
        let (mut model, _) = train(&prior, "shipped", &rs, &cfg, 2, 1).unwrap();
        let o = calibrate(&mut model, Some(&prior), &rs, 0.95, &cfg, 2, 1).unwrap();
        assert!(o.refitted && o.auto_only);
        // Out of fold, the fine-tuned scores put every SQL row above the shipped threshold.
        assert_eq!((o.before.escalated, o.before.missed), (20, 0), "{o:?}");
        // 95 %: up to 3 of the 60 rows may stay cheap and lose, so the threshold rises above
        // the lowest SQL scores (cheaper); chosen on 4 folds, the held-out fold misses about
        // as many (the figure is what to expect, not a guarantee).
        assert!(o.threshold > o.before.threshold, "{o:?}");
        assert!(o.after_cv.missed <= 6 && o.after_cv.escalated >= 14, "{o:?}");
        assert_eq!(model.file().thresholds.for_tiers(2), vec![o.threshold]);
        // Three tiers, reference in the top one: the lower threshold never exceeds it.
        let mut m3 = shipped();
        let o3 = calibrate(&mut m3, None, &rs, 0.99, &cfg, 3, 2).unwrap();
        let t3 = m3.file().thresholds.for_tiers(3);
        assert_eq!(t3[1], o3.threshold);
        assert!(t3[0] <= t3[1]);
        assert!(calibrate(&mut m3, None, &rs, 0.9, &cfg, 3, 0).is_err());
        assert!(calibrate(&mut m3, None, &rs[..5], 0.9, &cfg, 2, 1).is_err());
    }
}
