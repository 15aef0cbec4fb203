//! Prompt-token estimates, for context-window checks and (later) budget reservations.
//!
//! Counts use OpenAI's `o200k_base` BPE (tiktoken-rs) plus the per-message framing of OpenAI's
//! cookbook recipe "How to count tokens with tiktoken" (3 tokens per message, 3 to prime the
//! reply). Other providers tokenise differently; the figure is an estimate for every model but
//! OpenAI's own. Images count a flat 85 tokens each (OpenAI's low-detail image cost).
//!
//! Tokenising costs tens of microseconds per thousand tokens, so [`PromptSize`] first offers a
//! free upper bound: a BPE token always covers at least one byte, so the text's byte length bounds
//! its token count, and a request whose byte bound fits every window is never tokenised.
//!
//! The tokenizer's tables (about 30 MiB of heap, about 100 ms to build) are loaded on first use,
//! not at start-up: a gateway whose requests never need an exact count never holds them. An
//! async caller that is about to need one should load them off its executor first
//! ([`is_loaded`], then [`warm_up`] on a blocking thread).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::openai::{ChatRequest, Content};

const TOKENS_PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;
const TOKENS_PER_IMAGE: u64 = 85;

/// Bytes of prompt text [`PromptSize::estimate`] tokenises exactly (default 1 MiB); see
/// [`set_max_tokenize_bytes`].
static MAX_TOKENIZE_BYTES: AtomicUsize = AtomicUsize::new(1024 * 1024);

/// Sets how many bytes of a prompt's text [`PromptSize::estimate`] tokenises exactly (the
/// gateway's `server.max_tokenize_bytes`); text beyond them is counted at the tokens-per-byte
/// ratio of the tokenised part. Tokenising costs up to about 0.5 s per MiB (one long "word"),
/// so this bounds what one request can cost.
pub fn set_max_tokenize_bytes(bytes: usize) {
    MAX_TOKENIZE_BYTES.store(bytes.max(1024), Ordering::Relaxed);
}

/// The o200k_base tokenizer, `None` if it failed to load; built on first use.
static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Loads the tokenizer now rather than on the first request that needs it. Blocks the calling
/// thread for about 100 ms the first time (and allocates about 30 MiB); returns at once after.
pub fn warm_up() {
    let _ = bpe();
}

/// True once the tokenizer has been loaded (or has failed to load): counting no longer blocks
/// on building its tables.
pub fn is_loaded() -> bool {
    BPE.get().is_some()
}

/// Token count of `text` (o200k_base), or its byte length if the tokenizer failed to load.
pub fn count_text(text: &str) -> u64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => text.len() as u64,
    }
}

/// A request's prompt size: a free upper bound, and an exact count computed at most once.
#[derive(Debug)]
pub struct PromptSize<'a> {
    request: &'a ChatRequest,
    upper_bound: u64,
    exact: OnceLock<u64>,
}

impl<'a> PromptSize<'a> {
    /// Measures the byte-length upper bound of `request`'s prompt (O(n), no tokenising).
    pub fn new(request: &'a ChatRequest) -> Self {
        let mut bound = REPLY_PRIMING;
        visit(request, &mut |t, k| bound += t.len() as u64 + k);
        PromptSize { request, upper_bound: bound, exact: OnceLock::new() }
    }

    /// An upper bound of the prompt's token count.
    pub fn upper_bound(&self) -> u64 {
        self.upper_bound
    }

    /// The estimated prompt token count (tokenises on first call, at most
    /// [`set_max_tokenize_bytes`] bytes of text; the rest at the ratio measured on those).
    pub fn estimate(&self) -> u64 {
        *self.exact.get_or_init(|| self.count_capped(MAX_TOKENIZE_BYTES.load(Ordering::Relaxed)))
    }

    /// True once [`PromptSize::estimate`] has counted (it returns at once from then on).
    pub fn is_counted(&self) -> bool {
        self.exact.get().is_some()
    }

    /// Tokenises the first `cap` bytes of text; the bytes after them count at the measured
    /// tokens per byte (4 bytes a token when nothing was tokenised), never above the byte bound.
    fn count_capped(&self, cap: usize) -> u64 {
        let mut n = REPLY_PRIMING;
        let (mut budget, mut counted_bytes, mut counted_tokens, mut rest) = (cap, 0u64, 0u64, 0u64);
        visit(self.request, &mut |t, k| {
            n += k;
            let mut cut = t.len().min(budget);
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut > 0 {
                counted_tokens += count_text(&t[..cut]);
                counted_bytes += cut as u64;
                budget -= cut;
            }
            rest += (t.len() - cut) as u64;
        });
        let extra = match (rest, counted_bytes) {
            (0, _) => 0,
            (r, 0) => r.div_ceil(4),
            (r, b) => u64::try_from((u128::from(r) * u128::from(counted_tokens)).div_ceil(u128::from(b))).unwrap_or(r),
        };
        (n + counted_tokens + extra).min(self.upper_bound)
    }

    /// The exact count if something already asked for it, else a free approximation of it: the
    /// byte bound at about 4 bytes a token (OpenAI's rule of thumb for English text). For
    /// figures that are flagged as estimates anyway; never tokenises.
    pub fn cheap_estimate(&self) -> u64 {
        match self.exact.get() {
            Some(&n) => n,
            None => self.upper_bound.div_ceil(4),
        }
    }

    /// True when deciding whether the prompt plus `output` tokens fit in `window` tokens needs
    /// the exact count ([`PromptSize::fits`] would tokenise): the byte bound alone does not fit.
    pub fn fit_needs_count(&self, output: u64, window: u64) -> bool {
        self.upper_bound.saturating_add(output) > window && self.exact.get().is_none()
    }

    /// True when the prompt plus `output` tokens fit in `window` tokens.
    pub fn fits(&self, output: u64, window: u64) -> bool {
        self.upper_bound.saturating_add(output) <= window || self.estimate().saturating_add(output) <= window
    }
}

/// Calls `f(text, fixed_tokens)` on every prompt text and every fixed token overhead.
fn visit(req: &ChatRequest, f: &mut impl FnMut(&str, u64)) {
    for m in &req.messages {
        f("", TOKENS_PER_MESSAGE);
        if let Some(c) = m.content() {
            c.for_each_text(|t| f(t, 0));
            if let Content::Parts(parts) = c {
                let images = parts.iter().filter(|p| matches!(p, crate::openai::ContentPart::ImageUrl { .. })).count();
                f("", images as u64 * TOKENS_PER_IMAGE);
            }
        }
        for call in m.tool_calls.iter().flatten() {
            f(&call.function.name, 0);
            f(&call.function.arguments, 0);
        }
    }
    for tool in req.tools.iter().flatten() {
        if let Some(func) = &tool.function {
            f(&func.name, 0);
            if let Some(d) = &func.description {
                f(d, 0);
            }
            if let Some(p) = &func.parameters {
                f(&p.to_string(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    /// A prompt longer than the cap costs a bounded count: the tokenised part is exact, the
    /// rest is extrapolated at its ratio (regression: count_tokens of 8 MB froze the gateway).
    #[test]
    fn the_count_tokenises_at_most_the_cap() {
        let words = "the quick brown fox jumps over the lazy dog ".repeat(1000); // 44,000 bytes
        let json = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{words}"}}]}}"#);
        let r = req(&json);
        let size = PromptSize::new(&r);
        let exact = size.count_capped(usize::MAX);
        let capped = size.count_capped(4096);
        assert_eq!(exact, 3 + 3 + 9 * 1000 + 1);
        let off = exact.abs_diff(capped);
        assert!(off * 100 <= exact, "capped {capped} vs exact {exact}");
        // Nothing tokenised: 4 bytes a token.
        let none = PromptSize::new(&r).count_capped(0);
        assert_eq!(none, 3 + 3 + 44_000u64.div_ceil(4));
    }

    #[test]
    fn hello_world_counts_like_the_cookbook() {
        // "Hello world" is 2 tokens in o200k_base; + 3 per message + 3 priming.
        let r = req(r#"{"model":"m","messages":[{"role":"user","content":"Hello world"}]}"#);
        let s = PromptSize::new(&r);
        assert_eq!(s.estimate(), 8);
        assert_eq!(s.upper_bound(), 11 + 6);
    }

    #[test]
    fn upper_bound_is_never_below_the_estimate() {
        let r = req(
            r#"{"model":"m","messages":[{"role":"system","content":"Résumé: ünïcödé — 東京"},{"role":"user","content":[{"type":"text","text":"x y z"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
        );
        let s = PromptSize::new(&r);
        assert!(s.estimate() <= s.upper_bound());
        assert!(s.estimate() > 85);
    }

    #[test]
    fn cheap_estimate_never_tokenises_but_reuses_an_exact_count() {
        let r = req(r#"{"model":"m","messages":[{"role":"user","content":"Hello world"}]}"#);
        let s = PromptSize::new(&r);
        assert_eq!(s.cheap_estimate(), 17u64.div_ceil(4));
        assert_eq!(s.estimate(), 8);
        assert_eq!(s.cheap_estimate(), 8);
    }

    #[test]
    fn fit_needs_count_only_when_the_byte_bound_does_not_fit() {
        let r = req(r#"{"model":"m","messages":[{"role":"user","content":"Hello world"}]}"#);
        let s = PromptSize::new(&r);
        // Bound 17: fits 17 + 0 in 17, not 17 + 1.
        assert!(!s.fit_needs_count(0, 17));
        assert!(s.fit_needs_count(1, 17));
        assert!(s.fits(1, 17));
        // Counted once, never needed again.
        assert!(!s.fit_needs_count(1, 17));
    }

    #[test]
    fn fits_uses_the_exact_count_when_the_bound_is_too_big() {
        let long = "word ".repeat(1000); // 5,000 bytes, about 1,000 tokens
        let r = req(&format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{long}"}}]}}"#));
        let s = PromptSize::new(&r);
        assert!(s.upper_bound() > 5000);
        assert!(s.fits(100, 2000));
        assert!(!s.fits(1500, 2000));
    }
}
