//! Training the lexical scorer: hashed-feature logistic regression fitted with AdaGrad.
//!
//! Written here rather than taken from a crate: the model is one dot product, the fit is ~60
//! lines, and a dependency (linfa, smartcore) would bring ndarray and much more to CI's build
//! for nothing the gateway needs. The optimiser is AdaGrad (Duchi, Hazan and Singer, JMLR 2011)
//! on the logistic loss with L2 regularisation, over shuffled examples (seeded, deterministic).
//!
//! Labels ("strong model needed"), chosen by [`Label`]; qualities are first divided by the
//! dataset's scale (1 for correctness, 9 for 1–10 judge scores):
//! - `strong-better`: 1 if strong − weak > margin (correctness, margin 0: weak wrong and strong
//!   right), else 0. The score then estimates P(weak answer worse than strong answer).
//! - `gain`: the soft label clamp(strong − weak, 0, 1).
//! - `weak-fails`: 1 − weak (ignores the strong model).
//!
//! Each training set gets its own intercept while fitting (its base rate of "strong needed"
//! differs: ~12 % on MMLU, ~50 % on chat prompts), so that the shared weights learn what ranks
//! prompts within a set rather than which set a prompt comes from.

use std::collections::BTreeMap;

use serde::Serialize;
use triage_core::router::features::{self, RequestText, DENSE_LEN, DENSE_NAMES};
use triage_core::router::{LexicalModel, Thresholds};

use crate::data::Dataset;
use crate::EvalError;

/// What "strong model needed" means for a training prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Label {
    /// 1 if strong − weak > margin (in units of the dataset's scale), else 0.
    StrongBetter,
    /// Soft label clamp(strong − weak, 0, 1).
    Gain,
    /// 1 − weak quality.
    WeakFails,
}

impl std::str::FromStr for Label {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "strong-better" => Ok(Label::StrongBetter),
            "gain" => Ok(Label::Gain),
            "weak-fails" => Ok(Label::WeakFails),
            _ => Err(EvalError::Usage(format!("unknown label {s:?}; valid: strong-better, gain, weak-fails"))),
        }
    }
}

/// How much each training set weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Every example weighs 1.
    None,
    /// A set of n examples weighs ∝ sqrt(n) in total.
    Sqrt,
    /// Every set weighs the same in total.
    Equal,
}

impl std::str::FromStr for Balance {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "none" => Ok(Balance::None),
            "sqrt" => Ok(Balance::Sqrt),
            "equal" => Ok(Balance::Equal),
            _ => Err(EvalError::Usage(format!("unknown balance {s:?}; valid: none, sqrt, equal"))),
        }
    }
}

/// Training hyper-parameters.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    /// Hashed buckets (power of two).
    pub buckets: u32,
    /// Passes over the data.
    pub epochs: usize,
    /// AdaGrad learning rate.
    pub lr: f32,
    /// L2 penalty per update, on the dense weights.
    pub l2: f32,
    /// L2 penalty per update, on the hashed n-gram weights (a stronger prior keeps the n-grams
    /// from memorising one benchmark's vocabulary).
    pub l2_hashed: f32,
    /// Label definition.
    pub label: Label,
    /// Margin for [`Label::StrongBetter`], as a fraction of the dataset's scale.
    pub margin: f64,
    /// Set weighting.
    pub balance: Balance,
    /// Shuffle seed.
    pub seed: u64,
    /// Weak model name.
    pub weak: String,
    /// Strong model name.
    pub strong: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            buckets: 1 << 14,
            epochs: 6,
            lr: 0.05,
            l2: 1e-4,
            l2_hashed: 3e-2,
            label: Label::StrongBetter,
            margin: 0.0,
            balance: Balance::None,
            seed: 1,
            weak: crate::data::WEAK.to_owned(),
            strong: crate::data::STRONG.to_owned(),
        }
    }
}

/// One training example: merged sparse features, dense features, label and weight.
struct Example {
    hashed: Vec<(u32, f32)>,
    dense: [f32; DENSE_LEN],
    y: f32,
    w: f32,
    set: usize,
}

pub(crate) fn label(cfg: &TrainConfig, weak: f64, strong: f64, scale: f64) -> f32 {
    let (w, s) = (weak / scale, strong / scale);
    (match cfg.label {
        Label::StrongBetter => f64::from(u8::from(s - w > cfg.margin + 1e-9)),
        Label::Gain => (s - w).clamp(0.0, 1.0),
        Label::WeakFails => (1.0 - w).clamp(0.0, 1.0),
    }) as f32
}

fn example(rt: &RequestText, buckets: u32, y: f32, w: f32, set: usize) -> Example {
    let f = features::extract_text(rt, buckets);
    let mut h: Vec<(u32, f32)> = f.hashed.iter().map(|x| (x.index, x.value)).collect();
    h.sort_unstable_by_key(|x| x.0);
    let mut merged: Vec<(u32, f32)> = Vec::with_capacity(h.len());
    for (i, v) in h {
        match merged.last_mut() {
            Some(last) if last.0 == i => last.1 += v,
            _ => merged.push((i, v)),
        }
    }
    Example { hashed: merged, dense: f.dense, y, w, set }
}

/// A training set: a dataset and the indices of the items to train on.
pub struct TrainSet<'a> {
    /// The dataset.
    pub data: &'a Dataset,
    /// Item indices into `data.items`.
    pub items: Vec<usize>,
}

/// What a fit reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Examples per training set (name → count) with the weak/strong pair present.
    pub sets: BTreeMap<String, usize>,
    /// Share of positive labels (weighted mean of y).
    pub positive_share: f64,
    /// Weighted mean logistic loss on the training data after the last epoch.
    pub train_log_loss: f64,
}

/// One training prompt: where it is, its label and its weight (normalised to mean 1).
pub(crate) struct Labelled<'a> {
    /// Its dataset.
    pub data: &'a Dataset,
    /// Item index in `data.items`.
    pub item: usize,
    /// Label ("strong model needed"), see [`Label`].
    pub y: f32,
    /// Example weight from [`Balance`], normalised so that the mean over all examples is 1
    /// (the learning rate then means the same for every balance).
    pub w: f32,
    /// Index of its training set (for the per-set intercepts).
    pub set: usize,
}

/// The usable prompts of `sets` (both models' quality known), labelled and weighted, with the
/// count per set name.
///
/// Sets without the weak or the strong model are left out.
///
/// Errors: [`EvalError::Data`] if nothing is usable.
pub(crate) fn labelled<'a>(
    sets: &[TrainSet<'a>],
    cfg: &TrainConfig,
) -> Result<(Vec<Labelled<'a>>, BTreeMap<String, usize>), EvalError> {
    let mut out = Vec::new();
    let mut counts = BTreeMap::new();
    for set in sets {
        // A set without the pair (a multi-model file of other models) has nothing to teach this
        // pair: it is left out (the report's `sets` lists the sets used).
        let (Ok(wi), Ok(si)) = (set.data.model_index(&cfg.weak), set.data.model_index(&cfg.strong)) else {
            continue;
        };
        let usable: Vec<usize> = set
            .items
            .iter()
            .copied()
            .filter(|&i| set.data.items[i].quality[wi].is_finite() && set.data.items[i].quality[si].is_finite())
            .collect();
        if usable.is_empty() {
            continue;
        }
        let n = usable.len() as f32;
        let w = match cfg.balance {
            Balance::None => 1.0,
            Balance::Sqrt => 1.0 / n.sqrt(),
            Balance::Equal => 1.0 / n,
        };
        counts.insert(set.data.name.clone(), usable.len());
        for i in usable {
            let it = &set.data.items[i];
            let y = label(cfg, it.quality[wi], it.quality[si], set.data.scale);
            out.push(Labelled { data: set.data, item: i, y, w, set: counts.len() - 1 });
        }
    }
    if out.is_empty() {
        return Err(EvalError::Data("no training examples".into()));
    }
    let mean_w = out.iter().map(|e| f64::from(e.w)).sum::<f64>() / out.len() as f64;
    for e in &mut out {
        e.w = (f64::from(e.w) / mean_w) as f32;
    }
    Ok((out, counts))
}

/// Standardises dense feature rows in place to weighted mean 0 and variance 1, and returns the
/// means and standard deviations used (each deviation floored at 0.05: a nearly constant
/// feature gets a small weight, not a huge one that the intercept must cancel).
pub(crate) fn standardise<'r>(
    rows: impl Iterator<Item = (f32, &'r mut [f32; DENSE_LEN])>,
) -> ([f32; DENSE_LEN], [f32; DENSE_LEN]) {
    let rows: Vec<(f32, &mut [f32; DENSE_LEN])> = rows.collect();
    let wsum: f32 = rows.iter().map(|r| r.0).sum::<f32>().max(f32::MIN_POSITIVE);
    let mut mu = [0f32; DENSE_LEN];
    let mut sd = [0f32; DENSE_LEN];
    for (w, x) in &rows {
        for (m, v) in mu.iter_mut().zip(x.iter()) {
            *m += w * v / wsum;
        }
    }
    for (w, x) in &rows {
        for ((s, v), m) in sd.iter_mut().zip(x.iter()).zip(&mu) {
            *s += w * (v - m).powi(2) / wsum;
        }
    }
    for v in &mut sd {
        *v = v.sqrt().max(0.05);
    }
    for (_, x) in rows {
        for ((v, m), s) in x.iter_mut().zip(&mu).zip(&sd) {
            *v = (*v - m) / s;
        }
    }
    (mu, sd)
}

/// Trains a lexical model on `sets`. Thresholds are left empty (see `calibrate`).
///
/// Errors: [`EvalError::Data`] if a set lacks the weak or strong model, or nothing is left to train on.
pub fn train(sets: &[TrainSet<'_>], cfg: &TrainConfig) -> Result<(LexicalModel, TrainReport), EvalError> {
    if !cfg.buckets.is_power_of_two() {
        return Err(EvalError::Usage(format!("buckets = {} is not a power of two", cfg.buckets)));
    }
    let (labelled, counts) = labelled(sets, cfg)?;
    let mut examples: Vec<Example> = labelled
        .iter()
        .map(|l| example(&RequestText::of(&l.data.items[l.item].request), cfg.buckets, l.y, l.w, l.set))
        .collect();
    // Standardise the dense features (weighted mean 0, variance 1) for a well-conditioned fit,
    // then fold the transform back into the weights and intercepts so inference needs none.
    let (mu, sd) = standardise(examples.iter_mut().map(|e| (e.w, &mut e.dense)));
    let (mut set_bias, zdense, weights) = fit(&examples, cfg, counts.len());
    let mut dense = [0f32; DENSE_LEN];
    let mut shift = 0f32;
    for j in 0..DENSE_LEN {
        dense[j] = zdense[j] / sd[j];
        shift += dense[j] * mu[j];
    }
    for b in &mut set_bias {
        *b -= shift;
    }
    for e in &mut examples {
        for j in 0..DENSE_LEN {
            e.dense[j] = e.dense[j] * sd[j] + mu[j];
        }
    }
    // One intercept per training set absorbs the sets' different base rates (a fixed effect),
    // so the features learn the ranking within a set; the shipped intercept is their
    // example-weighted mean.
    let bias = examples.iter().map(|e| set_bias[e.set] * e.w).sum::<f32>() / examples.iter().map(|e| e.w).sum::<f32>();
    let mut loss = 0.0;
    let mut pos = 0.0;
    let mut wsum = 0.0;
    for e in &examples {
        let z = set_bias[e.set]
            + e.hashed.iter().map(|&(i, v)| weights[i as usize] * v).sum::<f32>()
            + e.dense.iter().zip(&dense).map(|(d, w)| d * w).sum::<f32>();
        let p = f64::from(triage_core::router::lexical::sigmoid(z)).clamp(1e-7, 1.0 - 1e-7);
        let y = f64::from(e.y);
        loss += f64::from(e.w) * -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
        pos += f64::from(e.w) * y;
        wsum += f64::from(e.w);
    }
    let report = TrainReport { sets: counts, positive_share: pos / wsum, train_log_loss: loss / wsum };
    let model = LexicalModel::from_weights(
        cfg.buckets,
        bias,
        dense,
        mu,
        &weights,
        Thresholds::default(),
        serde_json::Value::Null,
    )
    .map_err(|e| EvalError::Data(e.to_string()))?;
    Ok((model, report))
}

/// xorshift64* (Vigna, 2016): enough for shuffling.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// One AdaGrad update of weight `w` with gradient `grad` (Duchi, Hazan and Singer, 2011):
/// `acc += grad²; w -= lr · grad / sqrt(acc + 1e-6)`.
#[inline]
pub(crate) fn adagrad(w: &mut f32, acc: &mut f32, grad: f32, lr: f32) {
    *acc += grad * grad;
    *w -= lr * grad / (*acc + 1e-6).sqrt();
}

fn fit(examples: &[Example], cfg: &TrainConfig, sets: usize) -> (Vec<f32>, [f32; DENSE_LEN], Vec<f32>) {
    let nb = cfg.buckets as usize;
    let mut w = vec![0f32; nb];
    let mut gw = vec![0f32; nb];
    let mut d = [0f32; DENSE_LEN];
    let mut gd = [0f32; DENSE_LEN];
    let (mut b, mut gb) = (vec![0f32; sets.max(1)], vec![0f32; sets.max(1)]);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = Rng::new(cfg.seed);
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        for &k in &order {
            let e = &examples[k];
            let z = b[e.set]
                + e.hashed.iter().map(|&(i, v)| w[i as usize] * v).sum::<f32>()
                + e.dense.iter().zip(&d).map(|(x, wj)| x * wj).sum::<f32>();
            let g = (triage_core::router::lexical::sigmoid(z) - e.y) * e.w;
            for &(i, v) in &e.hashed {
                let i = i as usize;
                let gi = g * v + cfg.l2_hashed * w[i];
                adagrad(&mut w[i], &mut gw[i], gi, cfg.lr);
            }
            for j in 0..DENSE_LEN {
                let gj = g * e.dense[j] + cfg.l2 * d[j];
                adagrad(&mut d[j], &mut gd[j], gj, cfg.lr);
            }
            adagrad(&mut b[e.set], &mut gb[e.set], g, cfg.lr);
        }
    }
    (b, d, w)
}

/// Metadata describing the features, for the model file.
pub fn feature_meta(cfg: &TrainConfig) -> serde_json::Value {
    serde_json::json!({
        "hashed": format!("word unigrams, word bigrams, byte 4-grams of the lowercased request text; FNV-1a + splitmix64, signed, {} buckets; each family scaled by 1/sqrt(count)", cfg.buckets),
        "dense": DENSE_NAMES,
        "model": "logistic regression (AdaGrad, L2)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{user_request, Item};

    #[test]
    fn learns_a_separable_toy_problem() {
        // "prove ..." prompts need the strong model; "hello ..." prompts do not.
        let mut items = Vec::new();
        for i in 0..200 {
            let hard = i % 2 == 0;
            let p = if hard { format!("prove theorem {i}") } else { format!("hello friend {i}") };
            items.push(Item {
                id: i.to_string(),
                request: user_request(&p),
                group: i.to_string(),
                quality: vec![if hard { 0.0 } else { 1.0 }, 1.0],
                answer_chars: Vec::new(),
            });
        }
        let ds = Dataset {
            name: "toy".into(),
            models: vec!["w".into(), "s".into()],
            items,
            dropped_contaminated: 0,
            scale: 1.0,
        };
        let cfg = TrainConfig { buckets: 1 << 10, weak: "w".into(), strong: "s".into(), ..Default::default() };
        let (m, rep) = train(&[TrainSet { data: &ds, items: (0..200).collect() }], &cfg).unwrap();
        assert_eq!(rep.sets["toy"], 200);
        assert!((rep.positive_share - 0.5).abs() < 1e-9);
        assert!(rep.train_log_loss < 0.1, "{}", rep.train_log_loss);
        let s = |p: &str| m.score_text(&RequestText::of(&user_request(p)));
        assert!(s("prove theorem 1000") > 0.9);
        assert!(s("hello friend 1000") < 0.1);
    }

    #[test]
    fn labels_follow_their_definitions() {
        let cfg = |label, margin| TrainConfig { label, margin, ..Default::default() };
        assert_eq!(label(&cfg(Label::StrongBetter, 0.0), 0.0, 1.0, 1.0), 1.0);
        assert_eq!(label(&cfg(Label::StrongBetter, 0.0), 1.0, 1.0, 1.0), 0.0);
        // Judge scores 7 vs 9 on a scale of 9: gain 2/9 > 0.1 but not > 0.25.
        assert_eq!(label(&cfg(Label::StrongBetter, 0.1), 7.0, 9.0, 9.0), 1.0);
        assert_eq!(label(&cfg(Label::StrongBetter, 0.25), 7.0, 9.0, 9.0), 0.0);
        assert!((label(&cfg(Label::Gain, 0.0), 7.0, 9.0, 9.0) - 2.0 / 9.0).abs() < 1e-6);
        assert_eq!(label(&cfg(Label::Gain, 0.0), 9.0, 7.0, 9.0), 0.0);
        assert_eq!(label(&cfg(Label::WeakFails, 0.0), 0.0, 0.0, 1.0), 1.0);
    }
}
