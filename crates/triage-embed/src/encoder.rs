//! all-MiniLM-L6-v2 in-process: WordPiece tokenisation (`tokenizers`), the 6-layer BERT encoder
//! (`candle-transformers`), mean pooling over the attention mask and L2 normalisation, exactly as
//! sentence-transformers computes the model's sentence embedding (its `1_Pooling/config.json`:
//! mean tokens; `max_seq_length` 256).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

use crate::EmbedError;

/// Embedding width of all-MiniLM-L6-v2.
pub const DIM: usize = 384;

/// The most tokens (with `[CLS]` and `[SEP]`) the encoder can read: sentence-transformers'
/// `max_seq_length` for this model. A head file names how many its encoder read
/// ([`crate::EmbeddingFile::max_tokens`], at most this); longer texts are truncated at the end.
pub const MAX_TOKENS: usize = 256;

/// The encoder's name, as written into model files.
pub const ENCODER_NAME: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The directory the encoder is looked for in when none is configured:
/// `$TRIAGE_EMBEDDING_DIR`, else `$XDG_CACHE_HOME/triage/all-MiniLM-L6-v2`, else
/// `$HOME/.cache/triage/all-MiniLM-L6-v2` (where `scripts/fetch-embedding-model.sh` writes it).
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRIAGE_EMBEDDING_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("triage").join("all-MiniLM-L6-v2")
}

/// A loaded sentence encoder. Cheap to share behind an `Arc`; `embed` takes `&self` and may be
/// called from several threads at once.
pub struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dir: PathBuf,
    max_tokens: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("dir", &self.dir).field("max_tokens", &self.max_tokens).finish_non_exhaustive()
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load(format!("{}: {e} (fetch the encoder once with scripts/fetch-embedding-model.sh)", path.display()))
}

impl Encoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir` (about 90 MB,
    /// read into memory), on the CPU, reading at most `max_tokens` tokens of each text
    /// (clamped to 3..=[`MAX_TOKENS`]). The attention's cost grows with its square and the
    /// rest linearly: see docs/BENCHMARKS.md for the latency at 64, 128 and 256 tokens.
    ///
    /// Errors: [`EmbedError::Load`] naming the missing or invalid file.
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        let max_tokens = max_tokens.clamp(3, MAX_TOKENS);
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
        let config: Config = serde_json::from_str(&cfg_text).map_err(|e| io(&cfg_path, e))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| io(&tok_path, e))?;
        // The shipped tokenizer.json pads and truncates to 128; here truncation is the caller's
        // and a batch is padded to its longest member, as sentence-transformers does.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| io(&tok_path, e))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        let w_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&w_path).map_err(|e| io(&w_path, e))?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device).map_err(|e| io(&w_path, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| io(&w_path, e))?;
        if config.hidden_size != DIM {
            return Err(io(&cfg_path, format!("hidden_size {} is not {DIM}", config.hidden_size)));
        }
        Ok(Encoder { model, tokenizer, device, dir: dir.to_owned(), max_tokens })
    }

    /// The directory the encoder was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most tokens the encoder reads of a text.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of tokens the encoder reads of `text` (with `[CLS]` and `[SEP]`, at most
    /// [`Encoder::max_tokens`]).
    ///
    /// Errors: [`EmbedError::Run`] if tokenisation fails.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| EmbedError::Run(e.to_string()))?;
        Ok(enc.get_ids().len())
    }

    /// The sentence embedding of `text`: [`DIM`] floats, unit L2 norm.
    ///
    /// Errors: [`EmbedError::Run`] if tokenisation or the forward pass fails.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut v = self.embed_batch(&[text])?;
        v.pop().ok_or_else(|| EmbedError::Run("empty batch".into()))
    }

    /// Sentence embeddings of `texts`, in order, padded to the longest member (the result does
    /// not depend on the batch: padding is masked out of attention and pooling).
    ///
    /// Errors: [`EmbedError::Run`] if tokenisation or the forward pass fails.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let run = |e: &dyn std::fmt::Display| EmbedError::Run(e.to_string());
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| run(&e))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let n = encodings.len();
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device).map_err(|e| run(&e))?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device).map_err(|e| run(&e))?;
        let types = ids.zeros_like().map_err(|e| run(&e))?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(|e| run(&e))?;
        pool(&hidden, &mask).map_err(|e| run(&e))
    }
}

impl Encoder {
    /// Number of tokens in the tokenizer's vocabulary (with special tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The sentence embedding of each single token id alone (`[CLS] id [SEP]`, mean-pooled,
    /// L2-normalised), for distilling static token embeddings ([`crate::static_embed`]).
    ///
    /// Errors: [`EmbedError::Run`] if the forward pass fails.
    pub fn embed_token_ids(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let run = |e: &dyn std::fmt::Display| EmbedError::Run(e.to_string());
        let cls = self.tokenizer.token_to_id("[CLS]").unwrap_or(101);
        let sep = self.tokenizer.token_to_id("[SEP]").unwrap_or(102);
        let n = ids.len();
        let flat: Vec<u32> = ids.iter().flat_map(|&i| [cls, i, sep]).collect();
        let ids = Tensor::from_vec(flat, (n, 3), &self.device).map_err(|e| run(&e))?;
        let mask = Tensor::ones((n, 3), DType::U32, &self.device).map_err(|e| run(&e))?;
        let types = ids.zeros_like().map_err(|e| run(&e))?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(|e| run(&e))?;
        pool(&hidden, &mask).map_err(|e| run(&e))
    }
}

/// Mean pooling of `hidden` (n × len × DIM) over the tokens where `mask` (n × len, 0/1) is 1,
/// then L2 normalisation.
fn pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)?.to_vec2::<f32>()
}
