//! Verdicts per distinct text, so that a conversation resent every turn is scanned only for its
//! new text.
//!
//! Keyed by the text's length and a 64-bit SipHash with a per-process random key (so inputs
//! cannot be crafted to collide); holds only findings (kinds, spans, confidences), never text.
//! Bounded: two generations of at most `cap / 2` entries each; when the young one is full the
//! old one is dropped (an LRU approximation with O(1) work and no per-entry bookkeeping: an entry
//! used again is promoted to the young generation). Own code rather than a cache crate: it is
//! thirty lines, synchronous, and needs no time-based expiry.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use super::Finding;

pub(super) struct VerdictCache {
    hasher: RandomState,
    half: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<(usize, u64), Arc<[Finding]>>,
    old: HashMap<(usize, u64), Arc<[Finding]>>,
    hits: u64,
    misses: u64,
}

impl VerdictCache {
    pub(super) fn new(cap: usize) -> VerdictCache {
        VerdictCache { hasher: RandomState::new(), half: (cap / 2).max(1), inner: Mutex::new(Generations::default()) }
    }

    pub(super) fn key(&self, text: &str) -> (usize, u64) {
        (text.len(), self.hasher.hash_one(text))
    }

    pub(super) fn get(&self, key: (usize, u64)) -> Option<Arc<[Finding]>> {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = g.young.get(&key) {
            let v = Arc::clone(v);
            g.hits += 1;
            return Some(v);
        }
        if let Some(v) = g.old.remove(&key) {
            g.hits += 1;
            self.insert_locked(&mut g, key, Arc::clone(&v));
            return Some(v);
        }
        g.misses += 1;
        None
    }

    pub(super) fn put(&self, key: (usize, u64), v: Arc<[Finding]>) {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.insert_locked(&mut g, key, v);
    }

    fn insert_locked(&self, g: &mut Generations, key: (usize, u64), v: Arc<[Finding]>) {
        if g.young.len() >= self.half {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key, v);
    }

    /// (entries, hits, misses).
    pub(super) fn stats(&self) -> (usize, u64, u64) {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (g.young.len() + g.old.len(), g.hits, g.misses)
    }
}
