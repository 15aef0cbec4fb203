//! The `embedding` scorer: the sentence embedding of the request's prompt, plus the lexical
//! scorer's dense shape features of the whole request, into a logistic regression.
//!
//! `score = sigmoid(bias + w · e + Σ d[j] · (x[j] − mean[j]) / sd[j])`, where `e` is the
//! all-MiniLM-L6-v2 embedding (unit norm, [`DIM`] floats) of [`embedding_text`] and `x` are the
//! dense features of [`triage_core::router::features`] (length, turns, tools, code, math, …) over
//! the whole request. A mean-pooled embedding does not see how long a request is, and length is
//! the strongest single signal measured on the RouteLLM data (docs/ROUTING.md), so the head reads
//! both. The model file (JSON, format `triage-embedding-v1`) holds the head, its thresholds and
//! its training metadata; the encoder's weights are not in it (see `scripts/fetch-embedding-model.sh`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use triage_core::openai::{ChatRequest, Role};
use triage_core::router::features::{self, RequestText, DENSE_LEN, DENSE_NAMES};
use triage_core::router::lexical::sigmoid;
use triage_core::router::{Contribution, Reason, RouterError, Scorer, Thresholds};

use crate::encoder::{Encoder, DIM, ENCODER_NAME};

/// Model file format tag.
pub const FORMAT: &str = "triage-embedding-v1";

/// What an embedding head file holds (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The sentence encoder the head was trained on ([`ENCODER_NAME`]).
    pub encoder: String,
    /// Tokens the encoder read of each text when the head was trained (at most
    /// [`crate::MAX_TOKENS`]); the scorer's encoder must read the same.
    pub max_tokens: usize,
    /// Intercept (logit).
    pub bias: f32,
    /// Weights of the embedding, [`DIM`] of them.
    pub embedding_weights: Vec<f32>,
    /// Names of the dense features, which must equal [`DENSE_NAMES`].
    pub dense_names: Vec<String>,
    /// Weights of the standardised dense features, same order (all zero: embedding only).
    pub dense_weights: Vec<f32>,
    /// Training mean of each dense feature.
    pub dense_means: Vec<f32>,
    /// Training standard deviation of each dense feature (floored at 0.05).
    pub dense_sds: Vec<f32>,
    /// Calibrated thresholds.
    pub thresholds: Thresholds,
    /// Training metadata (free-form JSON: features, training sets, split, date, metrics).
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// A parsed, validated head (no encoder): what training produces and the scorer applies.
#[derive(Debug, Clone)]
pub struct EmbeddingHead {
    file: EmbeddingFile,
}

/// The text the encoder reads for a request: the last user message's text (the prompt being
/// answered), then the system prompt, so that truncation at [`crate::encoder::MAX_TOKENS`] keeps
/// the prompt. A request without user text falls back to all of its text.
pub fn embedding_text(req: &ChatRequest) -> String {
    let mut out = String::new();
    if let Some(c) = req.messages.iter().rev().find(|m| m.role == Role::User).and_then(|m| m.content()) {
        c.for_each_text(|t| {
            out.push_str(t);
            out.push('\n');
        });
    }
    for m in req.messages.iter().filter(|m| matches!(m.role, Role::System | Role::Developer)) {
        if let Some(c) = m.content() {
            c.for_each_text(|t| {
                out.push_str(t);
                out.push('\n');
            });
        }
    }
    if out.trim().is_empty() {
        return RequestText::of(req).text;
    }
    out
}

fn check_len(what: &str, v: &[f32], n: usize) -> Result<(), RouterError> {
    if v.len() != n {
        return Err(RouterError::Model(format!("{what} has {} entries, expected {n}", v.len())));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(RouterError::Model(format!("{what} holds a non-finite value")));
    }
    Ok(())
}

impl EmbeddingHead {
    /// Builds a head from trained weights.
    ///
    /// Errors: [`RouterError::Model`] if lengths are wrong or a value is not finite.
    pub fn new(
        max_tokens: usize,
        bias: f32,
        embedding_weights: Vec<f32>,
        dense: ([f32; DENSE_LEN], [f32; DENSE_LEN], [f32; DENSE_LEN]),
        thresholds: Thresholds,
        meta: serde_json::Value,
    ) -> Result<Self, RouterError> {
        Self::from_file(EmbeddingFile {
            format: FORMAT.to_owned(),
            encoder: ENCODER_NAME.to_owned(),
            max_tokens,
            bias,
            embedding_weights,
            dense_names: DENSE_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            dense_weights: dense.0.to_vec(),
            dense_means: dense.1.to_vec(),
            dense_sds: dense.2.to_vec(),
            thresholds,
            meta,
        })
    }

    /// Parses a head file (JSON).
    ///
    /// Errors: [`RouterError::Model`] naming the problem (bad JSON, wrong format tag or encoder,
    /// dense feature names that differ from this build's, wrong lengths, non-finite values).
    pub fn from_json(s: &str) -> Result<Self, RouterError> {
        let file: EmbeddingFile =
            serde_json::from_str(s).map_err(|e| RouterError::Model(format!("embedding model file: {e}")))?;
        Self::from_file(file)
    }

    fn from_file(file: EmbeddingFile) -> Result<Self, RouterError> {
        if file.format != FORMAT {
            return Err(RouterError::Model(format!("format is {:?}, expected {FORMAT:?}", file.format)));
        }
        if file.encoder != ENCODER_NAME {
            return Err(RouterError::Model(format!(
                "trained on encoder {:?}; this build has {ENCODER_NAME:?}",
                file.encoder
            )));
        }
        if file.dense_names.iter().map(String::as_str).ne(DENSE_NAMES.iter().copied()) {
            return Err(RouterError::Model(format!(
                "dense features {:?} differ from this build's {:?}",
                file.dense_names, DENSE_NAMES
            )));
        }
        if !(3..=crate::MAX_TOKENS).contains(&file.max_tokens) {
            return Err(RouterError::Model(format!(
                "max_tokens {} outside 3..={}",
                file.max_tokens,
                crate::MAX_TOKENS
            )));
        }
        check_len("embedding_weights", &file.embedding_weights, DIM)?;
        check_len("dense_weights", &file.dense_weights, DENSE_LEN)?;
        check_len("dense_means", &file.dense_means, DENSE_LEN)?;
        check_len("dense_sds", &file.dense_sds, DENSE_LEN)?;
        if file.dense_sds.iter().any(|&s| s <= 0.0) || !file.bias.is_finite() {
            return Err(RouterError::Model("dense_sds must be positive and bias finite".into()));
        }
        file.thresholds.validate()?;
        Ok(EmbeddingHead { file })
    }

    /// The model file (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.file).unwrap_or_default()
    }

    /// The parsed file.
    pub fn file(&self) -> &EmbeddingFile {
        &self.file
    }

    /// Replaces the thresholds.
    ///
    /// Errors: [`RouterError::Model`] if they are not ascending within [0, 1].
    pub fn set_thresholds(&mut self, t: Thresholds) -> Result<(), RouterError> {
        t.validate()?;
        self.file.thresholds = t;
        Ok(())
    }

    /// Replaces the metadata.
    pub fn set_meta(&mut self, meta: serde_json::Value) {
        self.file.meta = meta;
    }

    /// The embedding's share of the logit, `w · e`.
    pub fn embedding_logit(&self, embedding: &[f32]) -> f32 {
        self.file.embedding_weights.iter().zip(embedding).map(|(w, e)| w * e).sum()
    }

    /// Each dense feature's share of the logit, `d[j] · (x[j] − mean[j]) / sd[j]`.
    pub fn dense_contributions(&self, dense: &[f32; DENSE_LEN]) -> [f32; DENSE_LEN] {
        let f = &self.file;
        std::array::from_fn(|j| f.dense_weights[j] * (dense[j] - f.dense_means[j]) / f.dense_sds[j])
    }

    /// The score for an embedding and the request's dense features.
    pub fn score_parts(&self, embedding: &[f32], dense: &[f32; DENSE_LEN]) -> f32 {
        sigmoid(self.file.bias + self.embedding_logit(embedding) + self.dense_contributions(dense).iter().sum::<f32>())
    }
}

/// The `embedding` scorer: a shared [`Encoder`] and a head.
#[derive(Debug, Clone)]
pub struct EmbeddingScorer {
    encoder: Arc<Encoder>,
    head: EmbeddingHead,
}

impl EmbeddingScorer {
    /// A scorer over a loaded encoder and a head.
    ///
    /// Errors: [`RouterError::Model`] if the encoder reads a different number of tokens than
    /// the head was trained with (load the encoder with the head's `max_tokens`).
    pub fn new(encoder: Arc<Encoder>, head: EmbeddingHead) -> Result<Self, RouterError> {
        if encoder.max_tokens() != head.file.max_tokens {
            return Err(RouterError::Model(format!(
                "the head was trained on {}-token inputs, the encoder reads {}",
                head.file.max_tokens,
                encoder.max_tokens()
            )));
        }
        Ok(EmbeddingScorer { encoder, head })
    }

    /// The head.
    pub fn head(&self) -> &EmbeddingHead {
        &self.head
    }

    /// The encoder.
    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// The embedding of `req`'s [`embedding_text`]; on an encoder failure (logged), `None`.
    fn embedding(&self, req: &ChatRequest) -> Option<Vec<f32>> {
        match self.encoder.embed(&embedding_text(req)) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "embedding scorer: encoder failed; scoring on dense features only");
                None
            }
        }
    }
}

impl Scorer for EmbeddingScorer {
    fn name(&self) -> &str {
        "embedding"
    }

    /// The head's score. If the encoder fails (it should not: tokenisation accepts any UTF-8
    /// and input is truncated), the embedding's share is taken as 0 and the dense features
    /// decide, so a request is never refused for its routing.
    fn score(&self, req: &ChatRequest) -> f32 {
        let dense = features::dense(&RequestText::of(req));
        self.head.score_parts(self.embedding(req).as_deref().unwrap_or(&[]), &dense)
    }

    fn thresholds(&self) -> Option<&Thresholds> {
        Some(&self.head.file.thresholds)
    }

    /// The embedding's share of the logit (`embedding`, always listed when `top > 0`) beside
    /// the dense features' shares (relative to their training means), largest in absolute
    /// value first.
    fn explain(&self, req: &ChatRequest, top: usize) -> Reason {
        self.score_explained(req, top).1
    }

    /// One embedding for both the score and the reason.
    fn score_explained(&self, req: &ChatRequest, top: usize) -> (f32, Reason) {
        let dense = features::dense(&RequestText::of(req));
        let embedding = self.embedding(req);
        let score = self.head.score_parts(embedding.as_deref().unwrap_or(&[]), &dense);
        let mut parts: Vec<Contribution> = self
            .head
            .dense_contributions(&dense)
            .iter()
            .zip(DENSE_NAMES)
            .filter(|(c, _)| **c != 0.0)
            .map(|(c, n)| Contribution { feature: n.to_owned(), logit: *c })
            .collect();
        // The embedding's share is always shown (it is what this scorer adds); the dense
        // features that weighed most fill the rest.
        parts.sort_by(|a, b| b.logit.abs().total_cmp(&a.logit.abs()));
        if let Some(e) = &embedding {
            parts.truncate(top.saturating_sub(1));
            parts.push(Contribution { feature: "embedding".to_owned(), logit: self.head.embedding_logit(e) });
            parts.sort_by(|a, b| b.logit.abs().total_cmp(&a.logit.abs()));
        }
        parts.truncate(top);
        (score, Reason { scorer: "embedding".to_owned(), top_features: parts })
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(ew: f32, dw: f32) -> EmbeddingHead {
        let mut d = [0f32; DENSE_LEN];
        d[0] = dw;
        EmbeddingHead::new(
            128,
            -0.5,
            vec![ew; DIM],
            (d, [1.0; DENSE_LEN], [2.0; DENSE_LEN]),
            Thresholds::default(),
            serde_json::Value::Null,
        )
        .unwrap()
    }

    #[test]
    fn score_is_the_logistic_of_the_linear_parts() {
        let h = head(0.1, 1.0);
        let e = vec![0.5f32; DIM];
        let mut x = [1.0f32; DENSE_LEN];
        x[0] = 5.0;
        // logit = -0.5 + 384 * 0.05 + 1.0 * (5 - 1) / 2 = -0.5 + 19.2 + 2 = 20.7
        assert!((h.embedding_logit(&e) - 19.2).abs() < 1e-3);
        assert_eq!(h.dense_contributions(&x)[0], 2.0);
        assert!((h.score_parts(&e, &x) - sigmoid(20.7)).abs() < 1e-6);
        // Without an embedding only the dense part counts: sigmoid(-0.5 + 2).
        assert!((h.score_parts(&[], &x) - sigmoid(1.5)).abs() < 1e-6);
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_named() {
        let h = head(0.25, -1.0);
        let back = EmbeddingHead::from_json(&h.to_json()).unwrap();
        assert_eq!(back.file().embedding_weights, h.file().embedding_weights);
        assert_eq!(back.file().dense_weights, h.file().dense_weights);
        let mut bad: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
        bad["embedding_weights"] = serde_json::json!([1.0, 2.0]);
        let err = EmbeddingHead::from_json(&bad.to_string()).unwrap_err().to_string();
        assert!(err.contains("embedding_weights has 2 entries, expected 384"), "{err}");
        let mut bad: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
        bad["format"] = serde_json::json!("triage-lexical-v1");
        assert!(EmbeddingHead::from_json(&bad.to_string()).unwrap_err().to_string().contains("format"));
        let mut bad: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
        bad["dense_sds"][3] = serde_json::json!(0.0);
        assert!(EmbeddingHead::from_json(&bad.to_string()).is_err());
    }

    #[test]
    fn the_prompt_comes_first_then_the_system_prompt() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"auto","messages":[
                {"role":"system","content":"Be terse."},
                {"role":"user","content":"first question"},
                {"role":"assistant","content":"an answer"},
                {"role":"user","content":[{"type":"text","text":"second question"}]}]}"#,
        )
        .unwrap();
        assert_eq!(embedding_text(&req), "second question\nBe terse.\n");
        let tools_only: ChatRequest =
            serde_json::from_str(r#"{"model":"auto","messages":[{"role":"assistant","content":"Hello"}]}"#).unwrap();
        assert_eq!(embedding_text(&tools_only), "hello\n");
    }
}
