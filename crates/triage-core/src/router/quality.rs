//! The per-model quality predictor at request time (issue 14): predicted quality q̂(m, p) of
//! each tier's model profile on a request, and the tier chosen from them by a margin δ or a
//! cost weight λ ([`super::choice`]).
//!
//! The predictor is a low-rank factorisation trained by `triage-eval` (`quality.rs`):
//!
//! ```text
//! z(p)    = W · x(p)              (k numbers: a learned projection of the request's features)
//! q̂(m, p) = b_m + u_m · z(p)      (u_m: k numbers per model; b_m: its overall level)
//! ```
//!
//! `x(p)` is the lexical scorer's 19 dense features (standardised), optionally hashed n-gram
//! buckets and optionally extra dense features (a static token embedding, computed by the
//! caller: this crate has no tokenizer). Units are standardised quality (per training dataset:
//! mean 0, variance 1), so a margin of 0.1 is a tenth of a standard deviation of quality.
//!
//! A model file ([`QualityFile`], JSON) holds the predictor, the profile (learned model name)
//! of each tier per tier count, the tiers' costs and the rule. Pure logic: no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::choice::{self, Candidate, Rule};
use super::features::{self, RequestText};
use super::{Contribution, Decision, Reason, RouterError, Scorer};
use crate::openai::ChatRequest;

/// Extra dense features of a request text (for example a static token embedding), appended to
/// the 19 lexical dense features. Must return the same length for every text.
pub type ExtraFeatures = Arc<dyn Fn(&RequestText) -> Vec<f32> + Send + Sync>;

/// A model name reduced for matching across datasets and catalogs: lowercased, organisation
/// prefix (`org/`) removed, `_` → `-`, and `gpt4-…` → `gpt-4-…`.
pub fn canonical(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase().replace('_', "-");
    match base.strip_prefix("gpt4") {
        Some(rest) if rest.is_empty() || rest.starts_with('-') => format!("gpt-4{rest}"),
        _ => base,
    }
}

/// The trained predictor (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityModel {
    /// Rank k.
    pub rank: usize,
    /// Hashed buckets (0 = none).
    pub buckets: u32,
    /// Means of the dense features (19 lexical, then the extra ones).
    pub dense_mean: Vec<f32>,
    /// Standard deviations of the dense features.
    pub dense_sd: Vec<f32>,
    /// Projection rows of the hashed buckets, `buckets × k`, row-major.
    pub w_hashed: Vec<f32>,
    /// Projection rows of the dense features, `dense × k`, row-major.
    pub w_dense: Vec<f32>,
    /// Canonical model names.
    pub models: Vec<String>,
    /// One vector of k numbers per model.
    pub vectors: Vec<Vec<f32>>,
    /// Mean per-dataset offset of each model (standardised units): its overall level.
    pub offsets: Vec<f32>,
}

/// The raw dense features of `rt`: the 19 lexical ones, then `extra`'s.
pub fn raw_dense(rt: &RequestText, extra: Option<&ExtraFeatures>) -> Vec<f32> {
    let mut d = features::dense(rt).to_vec();
    if let Some(f) = extra {
        d.extend(f(rt));
    }
    d
}

/// The hashed n-gram entries of `rt` in `buckets` buckets, sorted by index, duplicates summed.
pub fn merged_hashed(rt: &RequestText, buckets: u32) -> Vec<(u32, f32)> {
    let f = features::extract_text(rt, buckets);
    let mut h: Vec<(u32, f32)> = f.hashed.iter().map(|x| (x.index, x.value)).collect();
    h.sort_unstable_by_key(|x| x.0);
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(h.len());
    for (i, v) in h {
        match out.last_mut() {
            Some(l) if l.0 == i => l.1 += v,
            _ => out.push((i, v)),
        }
    }
    out
}

impl QualityModel {
    /// Checks the shapes (vectors of length `rank`, projections of the stated sizes, means and
    /// deviations of equal length).
    ///
    /// Errors: [`RouterError::Model`] naming the field.
    pub fn validate(&self) -> Result<(), RouterError> {
        let k = self.rank;
        let bad = |what: &str| Err(RouterError::Model(format!("quality model: {what}")));
        if k == 0 {
            return bad("rank 0");
        }
        if self.w_hashed.len() != self.buckets as usize * k {
            return bad("w_hashed is not buckets × rank");
        }
        let nd = self.dense_mean.len();
        if nd < features::DENSE_LEN || self.dense_sd.len() != nd || self.w_dense.len() != nd * k {
            return bad("dense_mean, dense_sd and w_dense disagree in length");
        }
        if self.models.is_empty() || self.vectors.len() != self.models.len() || self.offsets.len() != self.models.len()
        {
            return bad("models, vectors and offsets disagree in length");
        }
        if self.vectors.iter().any(|v| v.len() != k) {
            return bad("a model vector is not of length rank");
        }
        Ok(())
    }

    /// Number of extra dense features beyond the 19 lexical ones.
    pub fn extra_len(&self) -> usize {
        self.dense_mean.len().saturating_sub(features::DENSE_LEN)
    }

    /// The projection z(p) of `rt` (k numbers). Missing extra features count as their mean.
    pub fn project(&self, rt: &RequestText, extra: Option<&ExtraFeatures>) -> Vec<f32> {
        self.project_with(rt, &raw_dense(rt, extra))
    }

    /// [`Self::project`] with the raw dense features ([`raw_dense`]) already computed.
    pub fn project_with(&self, rt: &RequestText, raw: &[f32]) -> Vec<f32> {
        let k = self.rank;
        let mut z = vec![0f32; k];
        if self.buckets != 0 {
            for (i, v) in merged_hashed(rt, self.buckets) {
                if let Some(w) = self.w_hashed.get(i as usize * k..(i as usize + 1) * k) {
                    for (zj, wj) in z.iter_mut().zip(w) {
                        *zj += v * wj;
                    }
                }
            }
        }
        for (j, (m, s)) in self.dense_mean.iter().zip(&self.dense_sd).enumerate() {
            let x = raw.get(j).map_or(0.0, |x| (x - m) / s);
            if !x.is_finite() {
                continue;
            }
            if let Some(w) = self.w_dense.get(j * k..(j + 1) * k) {
                for (zj, wj) in z.iter_mut().zip(w) {
                    *zj += x * wj;
                }
            }
        }
        z
    }

    /// The vector and level of `model` (matched by [`canonical`]); the mean of all vectors and
    /// levels (the default profile) for a model never seen.
    pub fn vector(&self, model: &str) -> (Vec<f32>, f32) {
        let c = canonical(model);
        match self.models.iter().position(|m| *m == c) {
            Some(i) => (self.vectors[i].clone(), self.offsets[i]),
            None => {
                let n = self.vectors.len().max(1) as f32;
                let mut v = vec![0f32; self.rank];
                for u in &self.vectors {
                    for (a, b) in v.iter_mut().zip(u) {
                        *a += b / n;
                    }
                }
                (v, self.offsets.iter().sum::<f32>() / n)
            }
        }
    }

    /// Predicted quality (standardised units) of each of `models` given the projection `z`.
    pub fn predict_z(&self, z: &[f32], models: &[&str]) -> Vec<f32> {
        models
            .iter()
            .map(|m| {
                let (u, b) = self.vector(m);
                b + u.iter().zip(z).map(|(x, y)| x * y).sum::<f32>()
            })
            .collect()
    }

    /// Predicted quality (standardised units) of each of `models` on the request text `rt`.
    pub fn predict(&self, rt: &RequestText, models: &[&str], extra: Option<&ExtraFeatures>) -> Vec<f32> {
        self.predict_z(&self.project(rt, extra), models)
    }

    /// How each feature weighs in `q̂(strong) − q̂(weak)` on `rt`: per lexical dense feature
    /// (named by [`features::DENSE_NAMES`]) its standardised value × its projection row ·
    /// (u_strong − u_weak); the extra features summed as `static embedding`, the hashed n-grams
    /// summed as `n-grams`, and the levels' difference as `level`. The entries sum to the gain.
    /// Sorted by absolute size, largest first.
    pub fn contributions(
        &self,
        rt: &RequestText,
        weak: &str,
        strong: &str,
        extra: Option<&ExtraFeatures>,
    ) -> Vec<(String, f32)> {
        self.contributions_with(rt, &raw_dense(rt, extra), weak, strong)
    }

    /// [`Self::contributions`] with the raw dense features already computed.
    pub fn contributions_with(&self, rt: &RequestText, raw: &[f32], weak: &str, strong: &str) -> Vec<(String, f32)> {
        let k = self.rank;
        let ((uw, bw), (us, bs)) = (self.vector(weak), self.vector(strong));
        let d: Vec<f32> = us.iter().zip(&uw).map(|(a, b)| a - b).collect();
        let row_dot = |w: &[f32]| w.iter().zip(&d).map(|(x, y)| x * y).sum::<f32>();
        let mut out: Vec<(String, f32)> = Vec::new();
        let mut extra_sum = 0f32;
        for (j, (m, sd)) in self.dense_mean.iter().zip(&self.dense_sd).enumerate() {
            let x = raw.get(j).map_or(0.0, |x| (x - m) / sd);
            let Some(w) = self.w_dense.get(j * k..(j + 1) * k) else { continue };
            let c = if x.is_finite() { x * row_dot(w) } else { 0.0 };
            match features::DENSE_NAMES.get(j) {
                Some(name) => out.push(((*name).to_owned(), c)),
                None => extra_sum += c,
            }
        }
        if self.extra_len() > 0 {
            out.push(("static embedding".to_owned(), extra_sum));
        }
        if self.buckets != 0 {
            let h: f32 = merged_hashed(rt, self.buckets)
                .iter()
                .filter_map(|&(i, v)| self.w_hashed.get(i as usize * k..(i as usize + 1) * k).map(|w| v * row_dot(w)))
                .sum();
            out.push(("n-grams".to_owned(), h));
        }
        out.push(("level".to_owned(), bs - bw));
        out.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        out
    }

    /// The two-model score: `q̂(strong) − q̂(weak)` on `rt` (higher = the strong model gains more).
    pub fn pair_score(&self, rt: &RequestText, weak: &str, strong: &str, extra: Option<&ExtraFeatures>) -> f32 {
        let p = self.predict(rt, &[weak, strong], extra);
        p[1] - p[0]
    }
}

/// The choice rule as stored in a model file: `{"margin": 0.1}` or `{"lambda": 0.02}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RuleSpec {
    /// [`Rule::Margin`]: the cheapest tier whose predicted quality is ≥ best − δ.
    Margin(f32),
    /// [`Rule::Lambda`]: the tier maximising predicted quality − λ · cost.
    Lambda(f32),
}

impl RuleSpec {
    /// The [`Rule`] it stands for.
    pub fn rule(self) -> Rule {
        match self {
            RuleSpec::Margin(d) => Rule::Margin(d),
            RuleSpec::Lambda(l) => Rule::Lambda(l),
        }
    }

    /// `margin 0.100` or `lambda 0.0200`.
    pub fn label(self) -> String {
        match self {
            RuleSpec::Margin(d) => format!("margin {d:.3}"),
            RuleSpec::Lambda(l) => format!("lambda {l:.4}"),
        }
    }
}

impl Default for RuleSpec {
    fn default() -> Self {
        RuleSpec::Margin(0.1)
    }
}

/// The quality scorer's model file (`[router] scorer = "quality"`, `model_file = ...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityFile {
    /// Always `"quality"`: tells this file from a lexical or embedding one.
    pub kind: String,
    /// The predictor.
    pub model: QualityModel,
    /// The static token embedding table the predictor's extra features come from (a path
    /// relative to the model file's folder, e.g. `static-minilm-64.bin`); `None` = no extra
    /// features (the model's dense features are the 19 lexical ones).
    #[serde(default)]
    pub static_embed: Option<String>,
    /// Tier count (as a string key) → the model profile of each tier, cheapest first. A tier
    /// count without an entry takes evenly spaced entries of the longest list.
    #[serde(default)]
    pub profiles: BTreeMap<String, Vec<String>>,
    /// Tier count → cost of each tier (USD per million tokens, blended), cheapest first. A tier
    /// count without an entry costs 0, 1, 2, … (the order only: enough for a margin rule).
    #[serde(default)]
    pub tier_costs: BTreeMap<String, Vec<f64>>,
    /// The choice rule.
    #[serde(default)]
    pub rule: RuleSpec,
    /// How the file was made (informative: data, split, command, date, calibration).
    #[serde(default)]
    pub meta: serde_json::Value,
}

impl QualityFile {
    /// Parses and validates a model file.
    ///
    /// Errors: [`RouterError::Model`] for invalid JSON, another kind of file, bad shapes, a
    /// negative margin or λ, or cost lists of the wrong length.
    pub fn from_json(json: &str) -> Result<Self, RouterError> {
        let f: QualityFile = serde_json::from_str(json).map_err(|e| RouterError::Model(e.to_string()))?;
        if f.kind != "quality" {
            return Err(RouterError::Model(format!("kind is \"{}\", not \"quality\"", f.kind)));
        }
        f.model.validate()?;
        let (RuleSpec::Margin(v) | RuleSpec::Lambda(v)) = f.rule;
        if !(v.is_finite() && v >= 0.0) {
            return Err(RouterError::Model(format!("rule {}: must be a finite number ≥ 0", f.rule.label())));
        }
        for (k, v) in f.profiles.iter().map(|(k, v)| (k, v.len())).chain(f.tier_costs.iter().map(|(k, v)| (k, v.len())))
        {
            let n: usize =
                k.parse().map_err(|_| RouterError::Model(format!("tier count key {k:?} is not a number")))?;
            if n != v {
                return Err(RouterError::Model(format!("{n} tiers need {n} profiles and costs, got {v}")));
            }
        }
        if f.tier_costs.values().flatten().any(|c| !c.is_finite()) {
            return Err(RouterError::Model("tier costs must be finite".into()));
        }
        Ok(f)
    }

    /// The profile (model name) of each of `tiers` tiers, cheapest first (see [`Self::profiles`]).
    /// Without any list: the known models ordered by their level, evenly spaced.
    pub fn profiles_for(&self, tiers: usize) -> Vec<String> {
        if tiers == 0 {
            return Vec::new();
        }
        if let Some(v) = self.profiles.get(&tiers.to_string()) {
            return v.clone();
        }
        let source: Vec<String> = match self.profiles.values().max_by_key(|v| v.len()) {
            Some(v) => v.clone(),
            None => {
                let mut idx: Vec<usize> = (0..self.model.models.len()).collect();
                idx.sort_by(|&a, &b| self.model.offsets[a].total_cmp(&self.model.offsets[b]));
                idx.into_iter().map(|i| self.model.models[i].clone()).collect()
            }
        };
        if tiers == 1 || source.len() <= 1 {
            return vec![source.last().cloned().unwrap_or_default(); tiers];
        }
        let m = source.len() - 1;
        (0..tiers).map(|i| source[(i * m + (tiers - 1) / 2) / (tiers - 1)].clone()).collect()
    }

    /// The cost of each of `tiers` tiers (see [`Self::tier_costs`]).
    pub fn costs_for(&self, tiers: usize) -> Vec<f64> {
        self.tier_costs.get(&tiers.to_string()).cloned().unwrap_or_else(|| (0..tiers).map(|i| i as f64).collect())
    }
}

/// The quality predictor as a [`Scorer`]: it picks the tier itself ([`Scorer::decide_tiers`]).
pub struct QualityScorer {
    file: QualityFile,
    extra: Option<ExtraFeatures>,
    /// Per-tier profile overrides from the catalog (`[[models]] profile`), cheapest first;
    /// used when their length is the tier count asked for.
    tier_profiles: Vec<Option<String>>,
}

impl std::fmt::Debug for QualityScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QualityScorer").field("rule", &self.file.rule).finish_non_exhaustive()
    }
}

/// The tiers' predicted qualities and the chosen tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierQualities {
    /// Profile of each tier, cheapest first.
    pub profiles: Vec<String>,
    /// Predicted quality of each tier's profile.
    pub quality: Vec<f32>,
    /// The chosen tier.
    pub tier: usize,
}

impl QualityScorer {
    /// A scorer over `file`, with `extra` computing the file's extra features (required when
    /// the model has any: a static embedding).
    ///
    /// Errors: [`RouterError::Model`] if the model has extra features and `extra` is `None`.
    pub fn new(file: QualityFile, extra: Option<ExtraFeatures>) -> Result<Self, RouterError> {
        if file.model.extra_len() > 0 && extra.is_none() {
            return Err(RouterError::Model(format!(
                "the quality model reads {} extra features (static embedding {}) and none were given",
                file.model.extra_len(),
                file.static_embed.as_deref().unwrap_or("?")
            )));
        }
        Ok(QualityScorer { file, extra, tier_profiles: Vec::new() })
    }

    /// The same scorer with the catalog's profile of each tier (cheapest first; `None` keeps
    /// the file's default profile for that tier). Applies to decisions over exactly that many
    /// tiers; other tier counts use the file's profiles.
    pub fn with_tier_profiles(mut self, tier_profiles: Vec<Option<String>>) -> Self {
        self.tier_profiles = tier_profiles;
        self
    }

    /// The profile of each of `tiers` tiers, cheapest first: the catalog's where it maps the
    /// tier, else the model file's ([`QualityFile::profiles_for`]).
    pub fn profiles_for(&self, tiers: usize) -> Vec<String> {
        let mut p = self.file.profiles_for(tiers);
        if self.tier_profiles.len() == tiers {
            for (slot, o) in p.iter_mut().zip(&self.tier_profiles) {
                if let Some(o) = o {
                    slot.clone_from(o);
                }
            }
        }
        p
    }

    /// The model file.
    pub fn file(&self) -> &QualityFile {
        &self.file
    }

    /// Predicted quality of every tier's profile on `req`, and the tier the rule chooses.
    pub fn tiers(&self, req: &ChatRequest, num_tiers: usize) -> TierQualities {
        let rt = RequestText::of(req);
        self.tiers_with(&rt, &raw_dense(&rt, self.extra.as_ref()), num_tiers)
    }

    fn tiers_with(&self, rt: &RequestText, raw: &[f32], num_tiers: usize) -> TierQualities {
        let n = num_tiers.max(1);
        let profiles = self.profiles_for(n);
        let names: Vec<&str> = profiles.iter().map(String::as_str).collect();
        let quality = self.file.model.predict_z(&self.file.model.project_with(rt, raw), &names);
        let costs = self.file.costs_for(n);
        let cands: Vec<Candidate> =
            quality.iter().zip(&costs).map(|(&quality, &cost)| Candidate { quality, cost }).collect();
        let tier = choice::choose(&cands, self.file.rule.rule()).unwrap_or(0);
        TierQualities { profiles, quality, tier }
    }
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Scorer for QualityScorer {
    fn name(&self) -> &str {
        "quality"
    }

    /// The logistic of `q̂(strongest profile) − q̂(cheapest profile)` for two tiers: how much the
    /// stronger model is predicted to gain (in [0, 1]; 0.5 = no gain).
    fn score(&self, req: &ChatRequest) -> f32 {
        let t = self.tiers(req, 2);
        logistic(t.quality[1] - t.quality[0])
    }

    fn decide_tiers(&self, req: &ChatRequest, num_tiers: usize) -> Option<Decision> {
        let rt = RequestText::of(req);
        let raw = raw_dense(&rt, self.extra.as_ref());
        let t = self.tiers_with(&rt, &raw, num_tiers);
        let gain = t.quality.last().copied().unwrap_or(0.0) - t.quality.first().copied().unwrap_or(0.0);
        let mut top_features: Vec<Contribution> = t
            .profiles
            .iter()
            .zip(&t.quality)
            .map(|(p, &q)| Contribution { feature: format!("q:{p}"), logit: q })
            .collect();
        let (RuleSpec::Margin(v) | RuleSpec::Lambda(v)) = self.file.rule;
        let rule = match self.file.rule {
            RuleSpec::Margin(_) => "margin",
            RuleSpec::Lambda(_) => "lambda",
        };
        top_features.push(Contribution { feature: rule.to_owned(), logit: v });
        // How the request's features weighed in the strongest tier's predicted gain over the
        // cheapest (`x:` + feature name; the three largest).
        if let (Some(cheap), Some(top)) = (t.profiles.first(), t.profiles.last()) {
            for (name, c) in
                self.file.model.contributions_with(&rt, &raw, cheap, top).into_iter().filter(|c| c.1 != 0.0).take(3)
            {
                top_features.push(Contribution { feature: format!("x:{name}"), logit: c });
            }
        }
        Some(Decision {
            tier: t.tier.min(num_tiers.saturating_sub(1)),
            score: logistic(gain),
            thresholds: Vec::new(),
            reason: Reason { scorer: "quality".to_owned(), top_features },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made predictor on one feature direction: rank 1, the standardised length feature
    /// (dense feature 0, ln(1 + chars) / 8, taken as mean 0.6, sd 0.2) projected with weight 1; `small` loses quality as requests get longer,
    /// `big` gains; `mid` in between.
    pub(crate) fn toy_file(rule: RuleSpec) -> QualityFile {
        let nd = features::DENSE_LEN;
        let mut w_dense = vec![0f32; nd];
        w_dense[0] = 1.0;
        let mut dense_mean = vec![0f32; nd];
        dense_mean[0] = 0.6;
        let mut dense_sd = vec![1f32; nd];
        dense_sd[0] = 0.2;
        QualityFile {
            kind: "quality".into(),
            model: QualityModel {
                rank: 1,
                buckets: 0,
                dense_mean,
                dense_sd,
                w_hashed: vec![],
                w_dense,
                models: vec!["small".into(), "mid".into(), "big".into()],
                vectors: vec![vec![-0.5], vec![0.0], vec![0.5]],
                offsets: vec![0.0, 0.1, 0.2],
            },
            static_embed: None,
            profiles: BTreeMap::from([("3".into(), vec!["small".into(), "mid".into(), "big".into()])]),
            tier_costs: BTreeMap::from([("3".into(), vec![0.1, 1.0, 20.0])]),
            rule,
            meta: serde_json::Value::Null,
        }
    }

    fn req(text: &str) -> ChatRequest {
        serde_json::from_value(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]}))
            .unwrap()
    }

    #[test]
    fn the_file_round_trips_and_is_validated() {
        let f = toy_file(RuleSpec::Margin(0.25));
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(QualityFile::from_json(&json).unwrap(), f);
        assert!(json.contains(r#""rule":{"margin":0.25}"#), "{json}");
        let mut bad = f.clone();
        bad.tier_costs.insert("2".into(), vec![1.0]);
        assert!(QualityFile::from_json(&serde_json::to_string(&bad).unwrap()).is_err());
        let mut bad = f.clone();
        bad.rule = RuleSpec::Lambda(-1.0);
        assert!(QualityFile::from_json(&serde_json::to_string(&bad).unwrap()).is_err());
        let mut bad = f;
        bad.model.vectors[0] = vec![1.0, 2.0];
        assert!(QualityFile::from_json(&serde_json::to_string(&bad).unwrap()).is_err());
        assert!(QualityFile::from_json(crate::router::DEFAULT_MODEL_JSON).is_err());
    }

    #[test]
    fn profiles_for_missing_tier_counts_are_evenly_spaced() {
        let f = toy_file(RuleSpec::Margin(0.0));
        assert_eq!(f.profiles_for(3), ["small", "mid", "big"]);
        assert_eq!(f.profiles_for(2), ["small", "big"]);
        assert_eq!(f.profiles_for(1), ["big"]);
        assert_eq!(f.costs_for(2), [0.0, 1.0]);
        let mut g = f;
        g.profiles.clear();
        // By level: small 0.0 < mid 0.1 < big 0.2.
        assert_eq!(g.profiles_for(2), ["small", "big"]);
        assert_eq!(g.profiles_for(3), ["small", "mid", "big"]);
    }

    #[test]
    fn the_catalogs_profiles_override_the_files_per_tier() {
        let hard = req(&"Prove the lemma, then derive the bound and check it for every case. ".repeat(40));
        let file = QualityScorer::new(toy_file(RuleSpec::Margin(0.0)), None).unwrap();
        // The frontier tier's cheapest model maps to the "small" profile; the others keep the file's.
        let mapped = QualityScorer::new(toy_file(RuleSpec::Margin(0.0)), None).unwrap().with_tier_profiles(vec![
            None,
            None,
            Some("small".into()),
        ]);
        assert_eq!(mapped.profiles_for(3), ["small", "mid", "small"]);
        let (a, b) = (file.tiers(&hard, 3), mapped.tiers(&hard, 3));
        assert_eq!(b.profiles, ["small", "mid", "small"]);
        assert_eq!(b.quality[2], a.quality[0], "the top tier is now predicted as small");
        assert_eq!(b.quality[1], a.quality[1]);
        // With margin 0 the file sends the hard request to big (tier 2); mapped to small, the top
        // tier is no better than the local one, so the cheaper tier with the best quality wins.
        assert_eq!(a.tier, 2);
        assert_ne!(b.tier, 2);
        // Other tier counts keep the file's profiles; a model never trained on gets the default.
        assert_eq!(mapped.profiles_for(2), ["small", "big"]);
        let unknown = QualityScorer::new(toy_file(RuleSpec::Margin(0.0)), None).unwrap().with_tier_profiles(vec![
            None,
            Some("never-seen".into()),
            None,
        ]);
        let (v, level) = unknown.file().model.vector("never-seen");
        let z = unknown.file().model.project(&RequestText::of(&hard), None);
        let q = level + v.iter().zip(&z).map(|(x, y)| x * y).sum::<f32>();
        assert!((unknown.tiers(&hard, 3).quality[1] - q).abs() < 1e-6);
    }

    #[test]
    fn an_easy_and_a_hard_request_go_to_different_tiers() {
        let s = QualityScorer::new(toy_file(RuleSpec::Margin(0.3)), None).unwrap();
        let easy = req("hi");
        let hard = req(&"Prove the lemma, then derive the bound and check it for every case. ".repeat(40));
        let de = s.decide_tiers(&easy, 3).unwrap();
        let dh = s.decide_tiers(&hard, 3).unwrap();
        assert_eq!(de.tier, 0, "{de:?}");
        assert_eq!(dh.tier, 2, "{dh:?}");
        assert!(dh.score > 0.5 && de.score < 0.5);
        assert_eq!(de.reason.top_features.len(), 6);
        assert_eq!(de.reason.top_features[3].feature, "margin");
        // The largest weight of the gain big − small is the length: x = (0.173 − 0.6) / 0.2 for
        // "hi" (ln(1 + 3) / 8: the request text is "hi\n"), times w · (u_big − u_small) = 1; then
        // the levels' difference; features that weigh nothing are not listed.
        assert_eq!(de.reason.top_features[4].feature, "x:log_chars");
        let x = ((4f32).ln() / 8.0 - 0.6) / 0.2;
        assert!((de.reason.top_features[4].logit - x).abs() < 1e-4, "{:?}", de.reason.top_features);
        assert_eq!(de.reason.top_features[5].feature, "x:level");
        // The contributions sum to the gain.
        let rt = RequestText::of(&hard);
        let c = s.file().model.contributions(&rt, "small", "big", None);
        let gain = s.file().model.pair_score(&rt, "small", "big", None);
        assert!((c.iter().map(|x| x.1).sum::<f32>() - gain).abs() < 1e-4);
        assert_eq!(c.iter().find(|x| x.0 == "level").map(|x| x.1), Some(0.2));
        assert!(de.reason.summary().starts_with("quality: q:small "), "{}", de.reason.summary());
        // Margin 0: the best predicted tier whatever its cost; a huge margin: always the cheapest.
        let best = QualityScorer::new(toy_file(RuleSpec::Margin(0.0)), None).unwrap();
        assert_eq!(best.decide_tiers(&easy, 3).unwrap().tier, 0);
        let cheap = QualityScorer::new(toy_file(RuleSpec::Margin(100.0)), None).unwrap();
        assert_eq!(cheap.decide_tiers(&hard, 3).unwrap().tier, 0);
        // λ prices quality: a large λ keeps even the hard request cheap.
        let l = QualityScorer::new(toy_file(RuleSpec::Lambda(10.0)), None).unwrap();
        assert_eq!(l.decide_tiers(&hard, 3).unwrap().tier, 0);
        let l0 = QualityScorer::new(toy_file(RuleSpec::Lambda(0.0)), None).unwrap();
        assert_eq!(l0.decide_tiers(&hard, 3).unwrap().tier, 2);
    }

    #[test]
    fn a_model_with_extra_features_needs_them() {
        let mut f = toy_file(RuleSpec::Margin(0.1));
        f.model.dense_mean.push(0.0);
        f.model.dense_sd.push(1.0);
        f.model.w_dense.push(0.0);
        assert!(QualityScorer::new(f.clone(), None).is_err());
        let extra: ExtraFeatures = Arc::new(|_: &RequestText| vec![1.0]);
        assert!(QualityScorer::new(f, Some(extra)).is_ok());
    }
}
