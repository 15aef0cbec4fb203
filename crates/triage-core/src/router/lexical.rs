//! The `lexical` scorer: a logistic regression over the request's lexical features ([`super::features`]).
//!
//! `score = sigmoid(bias + Σ w[bucket] · value + Σ dense_w[j] · dense[j])`. The model file is JSON
//! (format `triage-lexical-v1`): the hashed weights are stored quantised to integers
//! (`weight = q · weight_scale`, `|q| ≤ 32767`) so that 16,384 buckets take about 80 kB, and the
//! training metadata (features, data sets, split, date, metrics) rides along in `meta`.

use serde::{Deserialize, Serialize};

use super::features::{self, Family, RequestText, DENSE_LEN, DENSE_NAMES};
use super::{Contribution, Reason, RouterError, Scorer, Thresholds};
use crate::openai::ChatRequest;

/// Model file format tag.
pub const FORMAT: &str = "triage-lexical-v1";

/// What a lexical model file holds (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LexicalFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Number of hashed buckets (a power of two).
    pub buckets: u32,
    /// Intercept (logit).
    pub bias: f32,
    /// Names of the dense features, which must equal [`DENSE_NAMES`].
    pub dense_names: Vec<String>,
    /// Weights of the dense features, same order.
    pub dense_weights: Vec<f32>,
    /// Mean of each dense feature over the training data (reasons report contributions
    /// relative to it: `w · (x − mean)`); empty means all zero.
    #[serde(default)]
    pub dense_means: Vec<f32>,
    /// Multiplier turning `weights_q` into weights.
    pub weight_scale: f32,
    /// Quantised hashed weights, `buckets` of them.
    pub weights_q: Vec<i16>,
    /// Calibrated thresholds.
    pub thresholds: Thresholds,
    /// Training metadata (free-form JSON: features, training sets, split, date, metrics).
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// A loaded lexical model.
#[derive(Debug, Clone)]
pub struct LexicalModel {
    buckets: u32,
    bias: f32,
    dense_weights: [f32; DENSE_LEN],
    dense_means: [f32; DENSE_LEN],
    weights: Vec<f32>,
    file: LexicalFile,
}

impl LexicalModel {
    /// Builds a model from float weights (as training produces them), quantising the hashed
    /// weights exactly as the file stores them.
    ///
    /// Errors: [`RouterError::Model`] if `buckets` is not a power of two or lengths disagree.
    pub fn from_weights(
        buckets: u32,
        bias: f32,
        dense_weights: [f32; DENSE_LEN],
        dense_means: [f32; DENSE_LEN],
        weights: &[f32],
        thresholds: Thresholds,
        meta: serde_json::Value,
    ) -> Result<Self, RouterError> {
        let max = weights.iter().fold(0f32, |m, w| m.max(w.abs()));
        let weight_scale = if max > 0.0 { max / 32767.0 } else { 1.0 };
        let weights_q = weights.iter().map(|w| (w / weight_scale).round().clamp(-32767.0, 32767.0) as i16).collect();
        Self::from_file(LexicalFile {
            format: FORMAT.to_owned(),
            buckets,
            bias,
            dense_names: DENSE_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            dense_weights: dense_weights.to_vec(),
            dense_means: dense_means.to_vec(),
            weight_scale,
            weights_q,
            thresholds,
            meta,
        })
    }

    /// Parses a model file (JSON).
    ///
    /// Errors: [`RouterError::Model`] naming the problem (bad JSON, wrong format tag, feature
    /// names that differ from this build's, wrong lengths).
    pub fn from_json(s: &str) -> Result<Self, RouterError> {
        let file: LexicalFile =
            serde_json::from_str(s).map_err(|e| RouterError::Model(format!("lexical model file: {e}")))?;
        Self::from_file(file)
    }

    fn from_file(file: LexicalFile) -> Result<Self, RouterError> {
        if file.format != FORMAT {
            return Err(RouterError::Model(format!("format is {:?}, expected {FORMAT:?}", file.format)));
        }
        if !file.buckets.is_power_of_two() {
            return Err(RouterError::Model(format!("buckets = {} is not a power of two", file.buckets)));
        }
        if file.weights_q.len() != file.buckets as usize {
            return Err(RouterError::Model(format!(
                "weights_q has {} entries, buckets = {}",
                file.weights_q.len(),
                file.buckets
            )));
        }
        if file.dense_names.iter().map(String::as_str).ne(DENSE_NAMES.iter().copied()) {
            return Err(RouterError::Model(format!(
                "dense features {:?} differ from this build's {:?}",
                file.dense_names, DENSE_NAMES
            )));
        }
        let mut dense_weights = [0f32; DENSE_LEN];
        if file.dense_weights.len() != DENSE_LEN {
            return Err(RouterError::Model(format!(
                "dense_weights has {} entries, expected {DENSE_LEN}",
                file.dense_weights.len()
            )));
        }
        dense_weights.copy_from_slice(&file.dense_weights);
        let mut dense_means = [0f32; DENSE_LEN];
        match file.dense_means.len() {
            0 => {}
            DENSE_LEN => dense_means.copy_from_slice(&file.dense_means),
            n => return Err(RouterError::Model(format!("dense_means has {n} entries, expected {DENSE_LEN}"))),
        }
        file.thresholds.validate()?;
        let weights = file.weights_q.iter().map(|&q| f32::from(q) * file.weight_scale).collect();
        Ok(LexicalModel { buckets: file.buckets, bias: file.bias, dense_weights, dense_means, weights, file })
    }

    /// The model file (JSON, pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.file).unwrap_or_default()
    }

    /// The file's contents (metadata and thresholds included).
    pub fn file(&self) -> &LexicalFile {
        &self.file
    }

    /// Replaces the calibrated thresholds.
    ///
    /// Errors: [`RouterError::Model`] if a threshold list is not ascending within [0, 1].
    pub fn set_thresholds(&mut self, t: Thresholds) -> Result<(), RouterError> {
        t.validate()?;
        self.file.thresholds = t;
        Ok(())
    }

    /// Replaces the metadata.
    pub fn set_meta(&mut self, meta: serde_json::Value) {
        self.file.meta = meta;
    }

    /// Number of hashed buckets.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The logit of collected request text.
    pub fn logit_text(&self, rt: &RequestText) -> f32 {
        let w = &self.weights;
        let mut z = self.bias;
        let dense = features::for_each_hashed(rt, self.buckets, |i, v| {
            z += w.get(i as usize).copied().unwrap_or(0.0) * v;
        });
        z + dense.iter().zip(&self.dense_weights).map(|(d, w)| d * w).sum::<f32>()
    }

    /// Score in [0, 1] of collected request text.
    pub fn score_text(&self, rt: &RequestText) -> f32 {
        sigmoid(self.logit_text(rt))
    }

    /// The logit of a stored representation (`None` if it is not this model's kind and size):
    /// the same sum as [`LexicalModel::logit_text`], from the features instead of the text.
    pub fn logit_representation(&self, r: &super::Representation) -> Option<f32> {
        if r.kind != format!("lexical/{FORMAT}")
            || r.dim != self.buckets + DENSE_LEN as u32
            || r.dense.len() != DENSE_LEN
        {
            return None;
        }
        let hashed: f32 = r.sparse.iter().map(|&(i, v)| self.weights.get(i as usize).copied().unwrap_or(0.0) * v).sum();
        let dense: f32 = r.dense.iter().zip(&self.dense_weights).map(|(d, w)| d * w).sum();
        Some(self.bias + hashed + dense)
    }

    /// The model's weights as floats: intercept, dense weights, hashed weights (dequantised),
    /// the starting point (the prior) of fine-tuning on production labels.
    pub fn weights(&self) -> (f32, [f32; DENSE_LEN], [f32; DENSE_LEN], &[f32]) {
        (self.bias, self.dense_weights, self.dense_means, &self.weights)
    }
}

/// The logistic function.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl Scorer for LexicalModel {
    fn name(&self) -> &str {
        "lexical"
    }

    fn score(&self, req: &ChatRequest) -> f32 {
        self.score_text(&RequestText::of(req))
    }

    fn thresholds(&self) -> Option<&Thresholds> {
        Some(&self.file.thresholds)
    }

    fn representation(&self, req: &ChatRequest) -> Option<super::Representation> {
        let f = features::extract(req, self.buckets);
        Some(super::Representation::lexical(f.hashed.iter().map(|h| (h.index, h.value)), &f.dense, self.buckets))
    }

    /// The `top` features whose contribution to the logit is largest in absolute value; hashed
    /// n-grams are summed per distinct n-gram (`w:word`, `b:two words`, `c:4-byte`); a dense
    /// feature counts relative to its training mean (`w · (x − mean)`), so "longer than usual"
    /// shows as a positive `log_chars`.
    fn explain(&self, req: &ChatRequest, top: usize) -> Reason {
        /// A candidate feature; named (allocated) only if it makes the top list.
        enum Name {
            Ngram(Family, (usize, usize)),
            Dense(usize),
        }
        let rt = RequestText::of(req);
        // Aggregate per (family, bucket): n-grams sharing a bucket share its weight, so their
        // contributions are one; the first n-gram seen names it. Sized once for the text's
        // n-grams (about one per byte), so neither grows while walking.
        let n = rt.text.len() + 16;
        let mut cand: Vec<(Name, f32)> = Vec::with_capacity(n + DENSE_LEN);
        let mut index: std::collections::HashMap<(Family, u32), usize> = std::collections::HashMap::with_capacity(n);
        let dense = features::for_each_named(&rt, self.buckets, |fam, r, i, v| {
            let c = self.weights.get(i as usize).copied().unwrap_or(0.0) * v;
            match index.entry((fam, i)) {
                std::collections::hash_map::Entry::Occupied(e) => cand[*e.get()].1 += c,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(cand.len());
                    cand.push((Name::Ngram(fam, r), c));
                }
            }
        });
        for (j, d) in dense.iter().enumerate() {
            let c = (d - self.dense_means[j]) * self.dense_weights[j];
            if c != 0.0 {
                cand.push((Name::Dense(j), c));
            }
        }
        cand.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let text = rt.text.as_str();
        Reason {
            scorer: "lexical".to_owned(),
            top_features: cand
                .into_iter()
                .take(top)
                .map(|(name, logit)| Contribution {
                    feature: match name {
                        Name::Ngram(f, (a, b)) => format!("{}:{}", f.label(), text.get(a..b).unwrap_or("")),
                        Name::Dense(j) => DENSE_NAMES[j].to_owned(),
                    },
                    logit,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Router;
    impl Router {
        fn default_model_lexical() -> LexicalModel {
            LexicalModel::from_json(super::super::DEFAULT_MODEL_JSON).unwrap()
        }
    }

    fn tiny() -> LexicalModel {
        let mut w = vec![0f32; 1024];
        // Put weight on the bucket of the word "prove".
        let rt = RequestText { text: "prove".into(), ..Default::default() };
        let f = features::extract_text(&rt, 1024);
        w[f.hashed[0].index as usize] = 2.0 * f.hashed[0].value.signum();
        LexicalModel::from_weights(
            1024,
            -1.0,
            [0.0; DENSE_LEN],
            [0.0; DENSE_LEN],
            &w,
            Thresholds::default(),
            serde_json::json!({}),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_through_json_and_scores_identically() {
        let m = tiny();
        let back = LexicalModel::from_json(&m.to_json()).unwrap();
        let rt = RequestText { text: "prove".into(), ..Default::default() };
        assert_eq!(m.score_text(&rt), back.score_text(&rt));
        // "prove" alone: word weight 2 (value 1) + bigram none + byte 4-grams "prov","rove" on
        // zero buckets (barring a collision with the word's bucket) -> logit 1.
        let z = m.logit_text(&rt);
        assert!((z - 1.0).abs() < 1e-3, "{z}");
    }

    #[test]
    fn rejects_a_wrong_format_and_lengths() {
        let m = tiny();
        let mut f = m.file().clone();
        f.format = "x".into();
        assert!(LexicalModel::from_json(&serde_json::to_string(&f).unwrap()).is_err());
        let mut f = m.file().clone();
        f.weights_q.pop();
        let e = LexicalModel::from_json(&serde_json::to_string(&f).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "invalid router model: weights_q has 1023 entries, buckets = 1024");
    }

    #[test]
    fn a_stored_representation_scores_like_the_text() {
        let m = Router::default_model_lexical();
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"auto","messages":[{"role":"system","content":"You are a DBA."},{"role":"user","content":"Write a SQL query joining orders and customers; explain the index it needs."}]}"#,
        )
        .unwrap();
        let rep = m.representation(&r).unwrap();
        rep.validate().unwrap();
        let from_text = m.logit_text(&RequestText::of(&r));
        let from_rep = m.logit_representation(&rep).unwrap();
        assert!((from_text - from_rep).abs() < 1e-4, "{from_text} vs {from_rep}");
        let json: super::super::Representation = serde_json::from_str(&serde_json::to_string(&rep).unwrap()).unwrap();
        assert!((m.logit_representation(&json).unwrap() - from_text).abs() < 1e-4);
        let other = super::super::Representation { kind: "embedding/x".into(), ..rep };
        assert_eq!(m.logit_representation(&other), None);
    }

    #[test]
    fn explain_names_the_heaviest_feature() {
        let m = tiny();
        let r: ChatRequest =
            serde_json::from_str(r#"{"model":"auto","messages":[{"role":"user","content":"Prove"}]}"#).unwrap();
        let reason = m.explain(&r, 3);
        assert_eq!(reason.top_features[0].feature, "w:prove");
        assert!((reason.top_features[0].logit - 2.0).abs() < 1e-3);
    }
}
