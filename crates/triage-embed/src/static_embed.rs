//! Static token embeddings distilled from all-MiniLM-L6-v2 (the Model2Vec method, Tulkens and
//! van Dongen 2024): every vocabulary token is run through the encoder once (`[CLS] token
//! [SEP]`, mean-pooled, L2-normalised), the 30,522 vectors are reduced by PCA to a few dozen
//! dimensions and quantised to i8 (one f32 scale per token). A request is then embedded in
//! microseconds: WordPiece-tokenise it (the encoder's own `tokenizer.json`) and average the
//! rows of its tokens. No transformer runs at request time.
//!
//! File format (`.bin`, little-endian): magic `TRSTATIC1\0`, `u32` vocabulary size, `u32`
//! dimension, then per token `f32` scale and `dim` × `i8`.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::{EmbedError, Encoder, DIM};

const MAGIC: &[u8; 10] = b"TRSTATIC1\0";

/// A static embedding table with its tokenizer.
pub struct StaticEmbedding {
    tokenizer: Tokenizer,
    wordpiece: Option<AsciiWordPiece>,
    dim: usize,
    scales: Vec<f32>,
    table: Vec<i8>,
}

/// BERT's uncased WordPiece for ASCII text, written out (the `tokenizers` crate spends about
/// 1 ms on a 512-token request, most of the static embedding's time; this takes tens of
/// microseconds): the `BertNormalizer` (control characters dropped, `\t` `\n` `\r` as spaces,
/// lowercase; accents and Chinese characters do not occur in ASCII), the `BertPreTokenizer`
/// (split on whitespace, every ASCII punctuation character a word of its own) and greedy
/// longest-match-first WordPiece with the `##` prefix, `[UNK]` for a word with an unmatched
/// piece or more than `max_input_chars_per_word` characters. Text with any non-ASCII byte goes
/// through the `tokenizers` crate. A test checks both give the same ids.
struct AsciiWordPiece {
    vocab: std::collections::HashMap<String, u32>,
    unk: u32,
    max_chars: usize,
}

impl AsciiWordPiece {
    /// From a tokenizer whose pipeline is the BERT uncased one; `None` otherwise.
    fn of(tokenizer: &Tokenizer) -> Option<Self> {
        let json = serde_json::to_value(tokenizer).ok()?;
        let norm = &json["normalizer"];
        let model = &json["model"];
        let bert = norm["type"] == "BertNormalizer"
            && norm["lowercase"] == true
            && norm["clean_text"] == true
            && json["pre_tokenizer"]["type"] == "BertPreTokenizer"
            && model["type"] == "WordPiece"
            && model["continuing_subword_prefix"] == "##";
        if !bert {
            return None;
        }
        let unk = tokenizer.token_to_id(model["unk_token"].as_str()?)?;
        let max_chars = usize::try_from(model["max_input_chars_per_word"].as_u64()?).ok()?;
        Some(AsciiWordPiece { vocab: tokenizer.get_vocab(false), unk, max_chars })
    }

    /// The ids of ASCII `text` (the caller checks it is ASCII).
    fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut norm = String::with_capacity(text.len());
        for b in text.bytes() {
            match b {
                b'\t' | b'\n' | b'\r' => norm.push(' '),
                0..=0x1f | 0x7f => {}
                _ => norm.push(char::from(b.to_ascii_lowercase())),
            }
        }
        let mut piece = String::with_capacity(64);
        for word in norm.split(' ').filter(|w| !w.is_empty()) {
            let bytes = word.as_bytes();
            let mut start = 0;
            for i in 0..=bytes.len() {
                let cut = i == bytes.len() || bytes[i].is_ascii_punctuation();
                if !cut {
                    continue;
                }
                if i > start {
                    self.word(&word[start..i], &mut piece, out);
                }
                if i < bytes.len() {
                    self.word(&word[i..=i], &mut piece, out);
                }
                start = i + 1;
            }
        }
    }

    fn word(&self, w: &str, piece: &mut String, out: &mut Vec<u32>) {
        if w.len() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let mark = out.len();
        let mut start = 0;
        while start < w.len() {
            let mut end = w.len();
            let mut found = None;
            while end > start {
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.push_str(&w[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => out.push(id),
                None => {
                    out.truncate(mark);
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }
}

impl std::fmt::Debug for StaticEmbedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedding")
            .field("dim", &self.dim)
            .field("vocab", &self.scales.len())
            .finish_non_exhaustive()
    }
}

/// The table as bytes in the file format above.
fn to_bytes(dim: usize, rows: &[Vec<f32>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + rows.len() * (dim + 4));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    for r in rows {
        let m = r.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
        let scale = m / 127.0;
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend(r.iter().map(|v| ((v / scale).round().clamp(-127.0, 127.0) as i8) as u8));
    }
    out
}

impl StaticEmbedding {
    /// Reads the table `bin` and the tokenizer `tokenizer_json` (the encoder's `tokenizer.json`).
    ///
    /// Errors: [`EmbedError::Load`] naming the file and the fault.
    pub fn load(bin: &Path, tokenizer_json: &Path) -> Result<Self, EmbedError> {
        let bytes = std::fs::read(bin).map_err(|e| EmbedError::Load(format!("{}: {e}", bin.display())))?;
        let tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| EmbedError::Load(format!("{}: {e}", tokenizer_json.display())))?;
        Self::from_parts(&bytes, tokenizer).map_err(|e| EmbedError::Load(format!("{}: {e}", bin.display())))
    }

    /// From the file's bytes and a tokenizer.
    ///
    /// Errors: a message if the bytes are not a table of this format.
    pub fn from_parts(bytes: &[u8], mut tokenizer: Tokenizer) -> Result<Self, String> {
        if bytes.len() < 18 || &bytes[..10] != MAGIC {
            return Err("not a static embedding table".into());
        }
        let u = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize;
        let (vocab, dim) = (u(10), u(14));
        if bytes.len() != 18 + vocab * (dim + 4) {
            return Err(format!("{} bytes for {vocab} tokens × {dim}", bytes.len()));
        }
        let mut scales = Vec::with_capacity(vocab);
        let mut table = Vec::with_capacity(vocab * dim);
        for t in 0..vocab {
            let o = 18 + t * (dim + 4);
            scales.push(f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]));
            table.extend(bytes[o + 4..o + 4 + dim].iter().map(|&b| b as i8));
        }
        tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
        tokenizer.with_padding(None);
        let wordpiece = AsciiWordPiece::of(&tokenizer);
        Ok(StaticEmbedding { tokenizer, wordpiece, dim, scales, table })
    }

    /// Dimension of an embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The WordPiece ids of `text` (no `[CLS]`/`[SEP]`): the written-out tokenizer for ASCII
    /// text, the `tokenizers` crate otherwise (empty if it fails).
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        match &self.wordpiece {
            Some(wp) if text.is_ascii() => {
                let mut ids = Vec::with_capacity(text.len() / 3);
                wp.encode(text, &mut ids);
                ids
            }
            _ => self.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default(),
        }
    }

    /// The `tokenizers` crate's ids for `text`, for comparison with [`Self::token_ids`].
    pub fn reference_token_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    /// The mean of the rows of `text`'s WordPiece tokens (no `[CLS]`/`[SEP]`), L2-normalised;
    /// zeros for a text without tokens. Reads every token (no truncation).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut acc = vec![0f32; self.dim];
        let ids = self.token_ids(text);
        for &id in &ids {
            let id = id as usize;
            if id >= self.scales.len() {
                continue;
            }
            let s = self.scales[id];
            for (a, &q) in acc.iter_mut().zip(&self.table[id * self.dim..(id + 1) * self.dim]) {
                *a += s * f32::from(q);
            }
        }
        let n = acc.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            for a in &mut acc {
                *a /= n;
            }
        }
        acc
    }
}

/// Distils the table from `encoder`: every vocabulary token embedded alone, PCA to `dim`
/// dimensions (subspace iteration on the covariance, seeded), written to `out`. `progress` is
/// called with (tokens done, total). Deterministic.
///
/// Errors: [`EmbedError`] if the encoder fails or `out` cannot be written.
pub fn distill(
    encoder: &Encoder,
    dim: usize,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<usize, EmbedError> {
    let vocab = encoder.vocab_size();
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(vocab);
    let batch = 256;
    let mut start = 0;
    while start < vocab {
        let ids: Vec<u32> = (start..(start + batch).min(vocab)).map(|i| i as u32).collect();
        rows.extend(encoder.embed_token_ids(&ids)?);
        start += batch;
        progress(start.min(vocab), vocab);
    }
    let reduced = pca(&rows, dim.clamp(1, DIM));
    let bytes = to_bytes(dim.clamp(1, DIM), &reduced);
    std::fs::write(out, &bytes).map_err(|e| EmbedError::Run(format!("{}: {e}", out.display())))?;
    Ok(bytes.len())
}

/// Projects `rows` (n × d) on their top `k` principal components (centred), found by 40 rounds
/// of subspace iteration on the d × d covariance from a fixed start.
fn pca(rows: &[Vec<f32>], k: usize) -> Vec<Vec<f32>> {
    let d = rows.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += f64::from(*v) / n;
        }
    }
    let mut cov = vec![0f64; d * d];
    for r in rows {
        let c: Vec<f64> = r.iter().zip(&mean).map(|(v, m)| f64::from(*v) - m).collect();
        for i in 0..d {
            let ci = c[i];
            for j in i..d {
                cov[i * d + j] += ci * c[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[i * d + j] = cov[j * d + i];
        }
    }
    // q: d × k, columns orthonormal.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut q: Vec<f64> = (0..d * k)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    orthonormalise(&mut q, d, k);
    for _ in 0..40 {
        let mut next = vec![0f64; d * k];
        for i in 0..d {
            for l in 0..d {
                let c = cov[i * d + l];
                if c == 0.0 {
                    continue;
                }
                for j in 0..k {
                    next[i * k + j] += c * q[l * k + j];
                }
            }
        }
        q = next;
        orthonormalise(&mut q, d, k);
    }
    rows.iter()
        .map(|r| {
            (0..k).map(|j| (0..d).map(|i| (f64::from(r[i]) - mean[i]) * q[i * k + j]).sum::<f64>() as f32).collect()
        })
        .collect()
}

/// Modified Gram–Schmidt on the columns of `q` (d × k, row-major).
fn orthonormalise(q: &mut [f64], d: usize, k: usize) {
    for j in 0..k {
        for p in 0..j {
            let dot: f64 = (0..d).map(|i| q[i * k + j] * q[i * k + p]).sum();
            for i in 0..d {
                q[i * k + j] -= dot * q[i * k + p];
            }
        }
        let norm = (0..d).map(|i| q[i * k + j].powi(2)).sum::<f64>().sqrt().max(1e-300);
        for i in 0..d {
            q[i * k + j] /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_keeps_the_direction_of_largest_variance() {
        // Points spread along (1, 1, 0) with a little noise along (0, 0, 1).
        let rows: Vec<Vec<f32>> = (0..100)
            .map(|i| {
                let t = i as f32 - 49.5;
                vec![t, t, 0.01 * ((i % 2) as f32 - 0.5)]
            })
            .collect();
        let p = pca(&rows, 1);
        // The projection is ±t·√2.
        let ratio = p[0][0] / (rows[0][0] * 2f32.sqrt());
        assert!((ratio.abs() - 1.0).abs() < 1e-3, "{ratio}");
    }

    #[test]
    fn quantised_table_round_trips_within_a_step() {
        let rows = vec![vec![0.5f32, -1.0, 0.25], vec![0.0, 0.0, 0.0]];
        let bytes = to_bytes(3, &rows);
        assert_eq!(bytes.len(), 18 + 2 * 7);
        assert_eq!(&bytes[..10], MAGIC);
        let scale = f32::from_le_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]);
        assert!((scale - 1.0 / 127.0).abs() < 1e-9);
        assert_eq!(bytes[22..25].iter().map(|&b| b as i8).collect::<Vec<_>>(), vec![64, -127, 32]);
    }
}
