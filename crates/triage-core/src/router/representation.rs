//! A request's router representation: the features a scorer reads, without the text, so that
//! production labels can retrain the router without keeping any prompt.
//!
//! One shape for every scorer: a vector of `dim` numbers, stored as sparse entries (index, value)
//! followed by a dense tail. `kind` names the scorer and its feature version; a model trains only
//! on rows of its own kind and dimension.
//!
//! - `lexical/triage-lexical-v1`: the hashed n-grams (index < buckets, merged and sorted) as
//!   `sparse`, the 19 dense features ([`super::features::DENSE_NAMES`]) as `dense`;
//!   `dim = buckets + 19`.
//! - `embedding/...`: no sparse part; the sentence embedding then the 19 dense features.

use serde::{Deserialize, Serialize};

/// A request's representation; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Representation {
    /// Scorer and feature version, e.g. `lexical/triage-lexical-v1`.
    pub kind: String,
    /// Length of the whole vector: sparse indices are below `dim - dense.len()`.
    pub dim: u32,
    /// Sparse part: (index, value), indices ascending and distinct.
    #[serde(default)]
    pub sparse: Vec<(u32, f32)>,
    /// Dense tail.
    #[serde(default)]
    pub dense: Vec<f32>,
}

impl Representation {
    /// A lexical representation from hashed features (any order, repeats summed) and the dense
    /// features, for a model of `buckets` buckets.
    pub fn lexical(hashed: impl IntoIterator<Item = (u32, f32)>, dense: &[f32], buckets: u32) -> Representation {
        let mut h: Vec<(u32, f32)> = hashed.into_iter().collect();
        h.sort_unstable_by_key(|x| x.0);
        let mut sparse: Vec<(u32, f32)> = Vec::with_capacity(h.len());
        for (i, v) in h {
            match sparse.last_mut() {
                Some(last) if last.0 == i => last.1 += v,
                _ => sparse.push((i, v)),
            }
        }
        Representation {
            kind: format!("lexical/{}", super::lexical::FORMAT),
            dim: buckets + dense.len() as u32,
            sparse,
            dense: dense.to_vec(),
        }
    }

    /// Checks the shape: sparse indices ascending, distinct and below `dim - dense.len()`,
    /// every value finite.
    ///
    /// Errors: a message naming the fault.
    pub fn validate(&self) -> Result<(), String> {
        let sparse_dim = (self.dim as usize).checked_sub(self.dense.len()).ok_or("dense part longer than dim")?;
        if self.sparse.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("sparse indices are not ascending and distinct".into());
        }
        if self.sparse.last().is_some_and(|l| l.0 as usize >= sparse_dim) {
            return Err(format!("a sparse index is not below {sparse_dim}"));
        }
        if self.sparse.iter().map(|x| x.1).chain(self.dense.iter().copied()).any(|v| !v.is_finite()) {
            return Err("a value is not finite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_entries_are_merged_sorted_and_checked() {
        let r = Representation::lexical([(7, 0.5), (2, 1.0), (7, 0.25)], &[1.0, 2.0], 16);
        assert_eq!(r.kind, "lexical/triage-lexical-v1");
        assert_eq!(r.dim, 18);
        assert_eq!(r.sparse, vec![(2, 1.0), (7, 0.75)]);
        r.validate().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Representation>(&json).unwrap(), r);
        let bad = Representation { sparse: vec![(16, 1.0)], ..r.clone() };
        assert!(bad.validate().is_err());
        let bad = Representation { sparse: vec![(3, 1.0), (3, 1.0)], ..r };
        assert!(bad.validate().is_err());
    }
}
