//! The `random` scorer: the baseline every router must beat.
//!
//! The score is a hash of the request's text (FNV-1a with a seed), mapped to [0, 1): uniform over
//! requests, yet the same request always gets the same score, so runs are reproducible. Routing
//! on it sends a share of requests to the strong tier independent of their difficulty, which is
//! the "random router" of RouteLLM (arXiv 2406.18665, §5): expected PGR equals the strong-call share.

use super::features::{fnv1a, RequestText};
use super::Scorer;
use crate::openai::ChatRequest;

/// Uniform pseudo-random scores keyed by the request text and a seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomScorer {
    /// Seed; different seeds give independent scores.
    pub seed: u64,
}

impl RandomScorer {
    /// Score in [0, 1) of a text.
    pub fn score_str(&self, text: &str) -> f32 {
        let h = fnv1a(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), text.as_bytes());
        let h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        ((h >> 40) as f32) / (1u64 << 24) as f32
    }
}

impl Scorer for RandomScorer {
    fn name(&self) -> &str {
        "random"
    }

    fn score(&self, req: &ChatRequest) -> f32 {
        self.score_str(&RequestText::of(req).text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_in_range_stable_and_roughly_uniform() {
        let r = RandomScorer { seed: 7 };
        let s: Vec<f32> = (0..10_000).map(|i| r.score_str(&format!("prompt {i}"))).collect();
        assert!(s.iter().all(|x| (0.0..1.0).contains(x)));
        assert_eq!(r.score_str("a"), r.score_str("a"));
        let below_half = s.iter().filter(|&&x| x < 0.5).count();
        assert!((4800..5200).contains(&below_half), "{below_half}");
        let tenth = s.iter().filter(|&&x| x < 0.1).count();
        assert!((900..1100).contains(&tenth), "{tenth}");
    }
}
