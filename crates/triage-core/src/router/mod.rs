//! The router's difficulty scorer: from a whole chat request to a score in [0, 1] and a tier.
//!
//! A [`Scorer`] reads the system prompt, every turn and the tool definitions and returns its
//! estimate of the probability that the cheaper model's answer would be worse than the stronger
//! one's (the "strong model needed" probability of RouteLLM, arXiv 2406.18665, §3). Ascending
//! thresholds on that score pick the tier: with `n` tiers there are `n - 1` thresholds, and a
//! score at or above threshold `i` goes at least to tier `i + 1` ([`tier_for`]). Nothing here
//! assumes two models.
//!
//! Scorers: [`lexical`] (hashed n-grams and a few dense features into a logistic regression),
//! [`random`] (the baseline), [`quality`] (a per-model quality predictor that picks the tier
//! itself, by a margin or a cost weight), and `embedding` (all-MiniLM-L6-v2 sentence embeddings plus the
//! dense features into a logistic head; in the crate `triage-embed`, which keeps candle out of
//! this one). docs/ROUTING.md holds the measurements that chose the default.
//!
//! Pure logic: the only input besides requests is a model file parsed from a string.

pub mod choice;
pub mod features;
pub mod lexical;
pub mod quality;
pub mod random;
pub mod representation;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::openai::ChatRequest;
pub use lexical::LexicalModel;
pub use random::RandomScorer;
pub use representation::Representation;

/// The shipped default model file (`models/lexical-v1.json` at the repository root). Rebuild it
/// with the command in docs/ROUTING.md.
pub const DEFAULT_MODEL_JSON: &str = include_str!("../../../../models/lexical-v1.json");

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouterError {
    /// A model file could not be parsed or is inconsistent.
    #[error("invalid router model: {0}")]
    Model(String),
    /// A scorer name that does not exist.
    #[error("unknown scorer \"{0}\"; valid: lexical, embedding, quality, random")]
    UnknownScorer(String),
}

/// Something that scores the difficulty of a request.
pub trait Scorer: Send + Sync {
    /// The scorer's name (`lexical`, `random`, later `embedding`).
    fn name(&self) -> &str;

    /// Estimated probability in [0, 1] that the cheaper model's answer would be worse than the
    /// stronger model's, for the whole request (system prompt, turns, tools).
    fn score(&self, req: &ChatRequest) -> f32;

    /// Calibrated thresholds that ship with this scorer's model, if any.
    fn thresholds(&self) -> Option<&Thresholds> {
        None
    }

    /// Why the score is what it is: the `top` features that weighed most. Scorers without
    /// features return an empty list.
    fn explain(&self, _req: &ChatRequest, _top: usize) -> Reason {
        Reason { scorer: self.name().to_owned(), top_features: Vec::new() }
    }

    /// The score and the reason together. Scorers whose score is expensive override this to
    /// compute it once.
    fn score_explained(&self, req: &ChatRequest, top: usize) -> (f32, Reason) {
        (self.score(req), self.explain(req, top))
    }

    /// True when one score takes milliseconds of CPU (a neural encoder), so that an async
    /// caller should run it off its event loop (the gateway uses a bounded blocking pool);
    /// false for scorers that take microseconds.
    fn is_blocking(&self) -> bool {
        false
    }

    /// The request's representation (the features this scorer reads, not the text), for
    /// production evaluation to store and retrain on; `None` for scorers without features.
    fn representation(&self, _req: &ChatRequest) -> Option<Representation> {
        None
    }

    /// A scorer that chooses the tier itself (the quality predictor: predicted quality per
    /// tier, then a margin or cost rule) returns its whole decision for `num_tiers` tiers here;
    /// threshold scorers return `None` and the [`Router`] applies its thresholds to the score.
    fn decide_tiers(&self, _req: &ChatRequest, _num_tiers: usize) -> Option<Decision> {
        None
    }
}

/// Which scorer to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorerKind {
    /// [`LexicalModel`].
    Lexical,
    /// [`RandomScorer`].
    Random,
    /// all-MiniLM-L6-v2 sentence embeddings into a logistic head (crate `triage-embed`, which
    /// keeps candle out of this pure-logic crate).
    Embedding,
    /// [`quality::QualityScorer`]: predicted quality per tier, chosen by margin or λ.
    Quality,
}

impl std::str::FromStr for ScorerKind {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self, RouterError> {
        match s {
            "lexical" => Ok(ScorerKind::Lexical),
            "random" => Ok(ScorerKind::Random),
            "embedding" => Ok(ScorerKind::Embedding),
            "quality" => Ok(ScorerKind::Quality),
            _ => Err(RouterError::UnknownScorer(s.to_owned())),
        }
    }
}

/// One feature's contribution to the score's logit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    /// Feature name: `w:<word>`, `b:<two words>`, `c:<4 bytes>`, or a dense feature's name.
    pub feature: String,
    /// Contribution to the logit (weight × value); positive pushes toward a stronger tier.
    pub logit: f32,
}

/// Why a scorer scored a request as it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// The scorer's name.
    pub scorer: String,
    /// The features that weighed most, by absolute contribution, largest first.
    pub top_features: Vec<Contribution>,
}

impl Reason {
    /// One line of printable ASCII (fit for the `x-triage-route-reason` header): e.g.
    /// `lexical: w:prove +0.41, digits +0.22`. Non-ASCII and control bytes become `?`.
    pub fn summary(&self) -> String {
        let mut s = format!("{}:", self.scorer);
        for (i, c) in self.top_features.iter().enumerate() {
            let _ = write!(s, "{} {} {:+.2}", if i == 0 { "" } else { "," }, c.feature, c.logit);
        }
        s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
    }
}

/// Calibrated thresholds, per number of tiers, plus score quantiles of a reference sample.
///
/// `by_tiers["3"] = [t1, t2]` means: score < t1 → tier 0, t1 ≤ score < t2 → tier 1, else tier 2.
/// For a tier count without an entry, thresholds come from `quantiles` (the 0th..100th
/// percentiles of the calibration sample's scores) with equal shares per tier, or, without
/// quantiles, evenly spaced in [0, 1].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Tier count (as a string key, JSON-friendly) → ascending thresholds, `count - 1` of them.
    #[serde(default)]
    pub by_tiers: BTreeMap<String, Vec<f32>>,
    /// Target share of requests per tier that produced `by_tiers` (informative), same keys.
    #[serde(default)]
    pub shares: BTreeMap<String, Vec<f64>>,
    /// 101 score percentiles of the calibration sample (0th..100th), ascending; may be empty.
    #[serde(default)]
    pub quantiles: Vec<f32>,
    /// What the calibration sample was (informative).
    #[serde(default)]
    pub sample: String,
}

impl Thresholds {
    /// Checks that every list is ascending, within [0, 1] and of length `tiers - 1`.
    ///
    /// Errors: [`RouterError::Model`] naming the offending entry.
    pub fn validate(&self) -> Result<(), RouterError> {
        for (k, v) in &self.by_tiers {
            let n: usize =
                k.parse().map_err(|_| RouterError::Model(format!("thresholds key {k:?} is not a number")))?;
            if v.len() + 1 != n {
                return Err(RouterError::Model(format!(
                    "thresholds for {n} tiers need {} values, got {}",
                    n - 1,
                    v.len()
                )));
            }
            if v.windows(2).any(|w| w[0] > w[1]) || v.iter().any(|t| !(0.0..=1.0).contains(t)) {
                return Err(RouterError::Model(format!("thresholds for {n} tiers must ascend within [0, 1]: {v:?}")));
            }
        }
        if self.quantiles.windows(2).any(|w| w[0] > w[1]) {
            return Err(RouterError::Model("quantiles must ascend".into()));
        }
        Ok(())
    }

    /// The thresholds for `tiers` tiers (`tiers - 1` values; empty for 0 or 1 tier).
    pub fn for_tiers(&self, tiers: usize) -> Vec<f32> {
        if tiers <= 1 {
            return Vec::new();
        }
        if let Some(v) = self.by_tiers.get(&tiers.to_string()) {
            return v.clone();
        }
        (1..tiers)
            .map(|i| {
                let share_below = i as f64 / tiers as f64;
                if self.quantiles.len() >= 2 {
                    quantile_of(&self.quantiles, share_below)
                } else {
                    share_below as f32
                }
            })
            .collect()
    }
}

/// Linear interpolation in a percentile table `q` (q[0] = min, q[last] = max) at `p` in [0, 1].
fn quantile_of(q: &[f32], p: f64) -> f32 {
    let x = p.clamp(0.0, 1.0) * (q.len() - 1) as f64;
    let i = x.floor() as usize;
    let f = (x - i as f64) as f32;
    match (q.get(i), q.get(i + 1)) {
        (Some(a), Some(b)) => a + (b - a) * f,
        (Some(a), None) => *a,
        _ => 0.0,
    }
}

/// The tier for `score`: the number of `thresholds` (ascending) that are ≤ `score`.
///
/// With thresholds `[0.3, 0.7]`: 0.1 → 0, 0.3 → 1, 0.69 → 1, 0.7 → 2.
pub fn tier_for(score: f32, thresholds: &[f32]) -> usize {
    thresholds.iter().take_while(|&&t| score >= t).count()
}

/// A routing decision: the tier (0 = cheapest), the score, the thresholds used and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Tier index, 0 = cheapest, `num_tiers - 1` = strongest.
    pub tier: usize,
    /// The scorer's score in [0, 1].
    pub score: f32,
    /// The thresholds applied (`num_tiers - 1`, ascending).
    pub thresholds: Vec<f32>,
    /// The features that weighed most.
    pub reason: Reason,
}

/// A scorer with its thresholds: what the gateway holds to route `model: "auto"`.
pub struct Router {
    scorer: Box<dyn Scorer>,
    thresholds: Thresholds,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("scorer", &self.scorer.name()).field("thresholds", &self.thresholds).finish()
    }
}

impl Router {
    /// The shipped default: the lexical model of [`DEFAULT_MODEL_JSON`] with its thresholds.
    ///
    /// Errors: [`RouterError::Model`] if the embedded file is invalid (a build defect; a unit
    /// test loads it).
    pub fn default_model() -> Result<Self, RouterError> {
        Self::from_lexical_json(DEFAULT_MODEL_JSON)
    }

    /// A router over a lexical model file's contents (JSON) and its thresholds.
    ///
    /// Errors: [`RouterError::Model`] for an invalid file.
    pub fn from_lexical_json(json: &str) -> Result<Self, RouterError> {
        let m = LexicalModel::from_json(json)?;
        let thresholds = m.file().thresholds.clone();
        Ok(Router { scorer: Box::new(m), thresholds })
    }

    /// A router over any scorer. Thresholds: the scorer's own if it has some, else `fallback`.
    pub fn new(scorer: Box<dyn Scorer>, fallback: Thresholds) -> Self {
        let thresholds = scorer.thresholds().cloned().unwrap_or(fallback);
        Router { scorer, thresholds }
    }

    /// Replaces the thresholds (e.g. after `triage calibrate`).
    pub fn with_thresholds(mut self, t: Thresholds) -> Self {
        self.thresholds = t;
        self
    }

    /// The scorer.
    pub fn scorer(&self) -> &dyn Scorer {
        self.scorer.as_ref()
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Score and tier only (no reason): the hot path, tens of microseconds for a 500-token prompt.
    pub fn tier(&self, req: &ChatRequest, num_tiers: usize) -> (usize, f32) {
        if let Some(d) = self.scorer.decide_tiers(req, num_tiers) {
            return (d.tier, d.score);
        }
        let score = self.scorer.score(req);
        (tier_for(score, &self.thresholds.for_tiers(num_tiers)), score)
    }

    /// The full decision for a catalog of `num_tiers` tiers, with the 5 features that weighed most.
    pub fn decide(&self, req: &ChatRequest, num_tiers: usize) -> Decision {
        if let Some(d) = self.scorer.decide_tiers(req, num_tiers) {
            return d;
        }
        let (score, reason) = self.scorer.score_explained(req, 5);
        let thresholds = self.thresholds.for_tiers(num_tiers);
        Decision { tier: tier_for(score, &thresholds).min(num_tiers.saturating_sub(1)), score, thresholds, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_for_counts_thresholds_at_or_below_the_score() {
        let t = [0.3, 0.7];
        assert_eq!(tier_for(0.1, &t), 0);
        assert_eq!(tier_for(0.3, &t), 1);
        assert_eq!(tier_for(0.69, &t), 1);
        assert_eq!(tier_for(0.7, &t), 2);
        assert_eq!(tier_for(1.0, &t), 2);
        assert_eq!(tier_for(0.9, &[]), 0);
        assert_eq!(tier_for(0.5, &[0.5]), 1);
    }

    #[test]
    fn thresholds_for_missing_tier_counts_come_from_quantiles() {
        let mut t = Thresholds::default();
        assert_eq!(t.for_tiers(1), Vec::<f32>::new());
        assert_eq!(t.for_tiers(4), vec![0.25, 0.5, 0.75]);
        t.quantiles = (0..=100).map(|i| (i as f32 / 100.0).powi(2)).collect();
        let v = t.for_tiers(2);
        assert!((v[0] - 0.25).abs() < 1e-6);
        t.by_tiers.insert("3".into(), vec![0.2, 0.9]);
        assert_eq!(t.for_tiers(3), vec![0.2, 0.9]);
        t.validate().unwrap();
        t.by_tiers.insert("3".into(), vec![0.9, 0.2]);
        assert!(t.validate().is_err());
    }

    #[test]
    fn the_shipped_model_loads_and_decides() {
        let r = Router::default_model().unwrap();
        let hard: ChatRequest = serde_json::from_str(
            r#"{"model":"auto","messages":[{"role":"user","content":"Prove that there are infinitely many primes p such that p + 2 is also prime, or explain step by step why this is open. Then compute the sum of the first 50 twin primes."}]}"#,
        )
        .unwrap();
        let easy: ChatRequest =
            serde_json::from_str(r#"{"model":"auto","messages":[{"role":"user","content":"hi, how are you?"}]}"#)
                .unwrap();
        let d = r.decide(&hard, 3);
        assert_eq!(d.thresholds.len(), 2);
        assert!((0.0..=1.0).contains(&d.score));
        assert!(!d.reason.top_features.is_empty());
        assert!(r.scorer().score(&hard) > r.scorer().score(&easy));
        assert_eq!(r.decide(&easy, 1).tier, 0);
        assert!(d.reason.summary().starts_with("lexical: "));
    }

    #[test]
    fn reason_summary_is_printable_ascii() {
        let r = Reason {
            scorer: "lexical".into(),
            top_features: vec![
                Contribution { feature: "w:caf\u{e9}".into(), logit: 0.5 },
                Contribution { feature: "c:a\nb".into(), logit: -0.25 },
            ],
        };
        assert_eq!(r.summary(), "lexical: w:caf? +0.50, c:a?b -0.25");
    }
}
