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
    dim: usize,
    scales: Vec<f32>,
    table: Vec<i8>,
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
        Ok(StaticEmbedding { tokenizer, dim, scales, table })
    }

    /// Dimension of an embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The mean of the rows of `text`'s WordPiece tokens (no `[CLS]`/`[SEP]`), L2-normalised;
    /// zeros for a text without tokens. Reads every token (no truncation).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut acc = vec![0f32; self.dim];
        let Ok(enc) = self.tokenizer.encode(text, false) else { return acc };
        for &id in enc.get_ids() {
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
