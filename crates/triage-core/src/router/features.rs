//! Lexical features of a whole chat request: hashed word unigrams and bigrams, hashed byte
//! 4-grams, and a few dense counts (length, turns, tools, code, math and reasoning markers).
//!
//! Every text of the request goes in: system and developer prompts, every turn (user, assistant,
//! tool results, assistant tool calls) and every tool definition (name, description, parameter
//! schema). Text is lowercased (ASCII) first. Hashing is FNV-1a (64-bit), fixed here so that a
//! model file stays valid across Rust versions; the sign of each hashed feature comes from the
//! hash's top bit (the "hashing trick" of Weinberger et al., 2009, "Feature Hashing for Large
//! Scale Multitask Learning"), which halves the bias collisions add.

use crate::openai::{ChatRequest, Role};

/// Names of the dense features, in the order of [`Features::dense`].
pub const DENSE_NAMES: [&str; DENSE_LEN] = [
    "log_chars",
    "log_words",
    "user_turns",
    "assistant_turns",
    "has_system",
    "tools",
    "code_fences",
    "code_symbols",
    "digits",
    "math_symbols",
    "latex",
    "questions",
    "reasoning_words",
    "multiple_choice",
    "lines",
    "mean_word_len",
    "non_ascii",
    "numbers",
    "sentences",
];

/// Number of dense features.
pub const DENSE_LEN: usize = 19;

/// The four hashed feature families. Each is scaled by `1/sqrt(n)`, `n` being how many n-grams
/// of that family the text has, so a long prompt does not dominate by sheer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Word (alphanumeric run) unigrams.
    Word,
    /// Word bigrams.
    Bigram,
    /// Byte 4-grams of the lowercased text.
    Char4,
}

impl Family {
    fn seed(self) -> u64 {
        match self {
            Family::Word => 0x9e37_79b9_7f4a_7c15,
            Family::Bigram => 0xc2b2_ae3d_27d4_eb4f,
            Family::Char4 => 0x1656_67b1_9e37_79f9,
        }
    }

    /// Short label used in reasons (`w:`, `b:`, `c:`).
    pub fn label(self) -> &'static str {
        match self {
            Family::Word => "w",
            Family::Bigram => "b",
            Family::Char4 => "c",
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, starting from `seed` xor the FNV offset basis.
#[inline]
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Final mix (splitmix64's), so that low bits depend on every input bit.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hashed feature occurrence: bucket index in `[0, buckets)` and a signed value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hashed {
    /// Bucket index.
    pub index: u32,
    /// Signed, scaled value (±`1/sqrt(n)` per occurrence).
    pub value: f32,
}

#[inline]
fn bucket(h: u64, mask: u64) -> (u32, f32) {
    let h = mix(h);
    let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
    ((h & mask) as u32, sign)
}

/// The text of a request, lowercased, and the request-level counts the text alone does not show.
#[derive(Debug, Clone, Default)]
pub struct RequestText {
    /// Every text of the request joined with newlines, ASCII-lowercased.
    pub text: String,
    /// Number of user messages.
    pub user_turns: usize,
    /// Number of assistant messages.
    pub assistant_turns: usize,
    /// A system or developer message is present.
    pub has_system: bool,
    /// Number of tool definitions.
    pub tools: usize,
}

impl RequestText {
    /// Collects the text of `req`: every message's text parts and tool calls, and every tool
    /// definition (name, description, parameters as JSON).
    pub fn of(req: &ChatRequest) -> Self {
        let mut out = RequestText::default();
        let mut text = String::new();
        for m in &req.messages {
            match m.role {
                Role::System | Role::Developer => out.has_system = true,
                Role::User => out.user_turns += 1,
                Role::Assistant => out.assistant_turns += 1,
                Role::Tool | Role::Function => {}
            }
            if let Some(c) = m.content() {
                c.for_each_text(|t| {
                    text.push_str(t);
                    text.push('\n');
                });
            }
            for call in m.tool_calls.iter().flatten() {
                text.push_str(&call.function.name);
                text.push(' ');
                text.push_str(&call.function.arguments);
                text.push('\n');
            }
        }
        for tool in req.tools.iter().flatten() {
            out.tools += 1;
            if let Some(f) = &tool.function {
                text.push_str(&f.name);
                text.push(' ');
                if let Some(d) = &f.description {
                    text.push_str(d);
                    text.push(' ');
                }
                if let Some(p) = &f.parameters {
                    text.push_str(&p.to_string());
                }
                text.push('\n');
            }
        }
        text.make_ascii_lowercase();
        out.text = text;
        out
    }
}

/// Words the field's routers and difficulty studies associate with multi-step reasoning
/// (proofs, derivations, calculations, step-by-step instructions).
const REASONING_WORDS: [&str; 16] = [
    "prove",
    "proof",
    "derive",
    "why",
    "explain",
    "calculate",
    "compute",
    "solve",
    "reason",
    "step",
    "justify",
    "evaluate",
    "optimize",
    "implement",
    "algorithm",
    "analyze",
];

/// Calls `f(family, hash, value, byte range of the n-gram in rt.text)` for every hashed n-gram
/// occurrence and returns the dense features.
pub(crate) fn walk(rt: &RequestText, mut f: impl FnMut(Family, u64, f32, (usize, usize))) -> [f32; DENSE_LEN] {
    let text = rt.text.as_bytes();
    let mut dense = [0f32; DENSE_LEN];

    // Pass 1: words, counted first so that each family's scale is known before emitting.
    let mut words: Vec<(usize, usize, u64)> = Vec::with_capacity(text.len() / 4 + 1);
    let mut i = 0;
    let mut reasoning = 0u32;
    while i < text.len() {
        if is_word_byte(text[i]) {
            let start = i;
            while i < text.len() && is_word_byte(text[i]) {
                i += 1;
            }
            let w = &text[start..i];
            if REASONING_WORDS.iter().any(|r| r.as_bytes() == w) {
                reasoning += 1;
            }
            words.push((start, i, fnv1a(0, w)));
        } else {
            i += 1;
        }
    }
    let mut code_sym = 0u32;
    let mut digits = 0u32;
    let mut math = 0u32;
    let mut questions = 0u32;
    let mut lines = 1u32;
    let mut non_ascii = 0u32;
    let mut numbers = 0u32;
    let mut sentences = 0u32;
    let mut prev = b' ';
    for &b in text {
        if b.is_ascii_digit() && !prev.is_ascii_digit() && prev != b'.' {
            numbers += 1;
        }
        if (b == b' ' || b == b'\n') && matches!(prev, b'.' | b'?' | b'!') {
            sentences += 1;
        }
        prev = b;
        match b {
            b'{' | b'}' | b';' | b'(' | b')' | b'[' | b']' | b'<' | b'>' | b'_' => code_sym += 1,
            b'0'..=b'9' => digits += 1,
            b'+' | b'-' | b'*' | b'/' | b'^' | b'=' | b'%' => math += 1,
            b'?' => questions += 1,
            b'\n' => lines += 1,
            128.. => non_ascii += 1,
            _ => {}
        }
    }
    let n = text.len().max(1) as f32;
    let nw = words.len();
    let s = rt.text.as_str();
    dense[0] = (1.0 + text.len() as f32).ln() / 8.0;
    dense[1] = (1.0 + nw as f32).ln() / 6.0;
    dense[2] = (rt.user_turns as f32).ln_1p();
    dense[3] = (rt.assistant_turns as f32).ln_1p();
    dense[4] = f32::from(u8::from(rt.has_system));
    dense[5] = (rt.tools as f32).ln_1p();
    dense[6] = (s.matches("```").count() as f32 / 2.0).ln_1p();
    dense[7] = 10.0 * code_sym as f32 / n;
    dense[8] = 10.0 * digits as f32 / n;
    dense[9] = 10.0 * math as f32 / n;
    dense[10] =
        f32::from(u8::from(s.contains("\\frac") || s.contains("$$") || s.contains("\\(") || s.contains("\\sum")));
    dense[11] = (questions as f32).ln_1p();
    dense[12] = (reasoning as f32).ln_1p();
    dense[13] = f32::from(u8::from(s.contains("\na.") && s.contains("\nb.") || s.contains("(a)") && s.contains("(b)")));
    dense[14] = (lines as f32).ln_1p() / 3.0;
    dense[15] = if nw == 0 { 0.0 } else { words.iter().map(|(a, b, _)| (b - a) as f32).sum::<f32>() / nw as f32 / 5.0 };
    dense[16] = 10.0 * non_ascii as f32 / n;
    dense[17] = (numbers as f32).ln_1p() / 2.0;
    dense[18] = (sentences as f32).ln_1p() / 2.0;

    if nw > 0 {
        let v = 1.0 / (nw as f32).sqrt();
        for &(a, b, h) in &words {
            f(Family::Word, h ^ Family::Word.seed(), v, (a, b));
        }
    }
    if nw > 1 {
        let v = 1.0 / ((nw - 1) as f32).sqrt();
        for pair in words.windows(2) {
            let (a, _, h1) = pair[0];
            let (_, b, h2) = pair[1];
            let h = h1.rotate_left(17).wrapping_mul(FNV_PRIME) ^ h2 ^ Family::Bigram.seed();
            f(Family::Bigram, h, v, (a, b));
        }
    }
    if text.len() >= 4 {
        let count = text.len() - 3;
        let v = 1.0 / (count as f32).sqrt();
        // Rolling 4-byte window as a u32: no hashing loop per n-gram.
        let mut w = u32::from_le_bytes([0, text[0], text[1], text[2]]);
        for (j, &b) in text[3..].iter().enumerate() {
            w = (w >> 8) | (u32::from(b) << 24);
            let h = u64::from(w).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ Family::Char4.seed();
            f(Family::Char4, h, v, (j, j + 4));
        }
    }
    dense
}

#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 128
}

/// The features of one request: hashed occurrences (indices may repeat) and the dense vector.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Hashed n-gram occurrences; `index < buckets`.
    pub hashed: Vec<Hashed>,
    /// Dense features, named by [`DENSE_NAMES`].
    pub dense: [f32; DENSE_LEN],
}

/// Extracts the features of `req` into `buckets` hashed buckets.
///
/// `buckets` must be a power of two (the model file's `buckets`); the training code calls this
/// same function, so training and inference see identical features.
pub fn extract(req: &ChatRequest, buckets: u32) -> Features {
    extract_text(&RequestText::of(req), buckets)
}

/// [`extract`] on already collected request text.
pub fn extract_text(rt: &RequestText, buckets: u32) -> Features {
    let mask = u64::from(buckets.max(1) - 1);
    let mut hashed = Vec::with_capacity(rt.text.len() * 2);
    let dense = walk(rt, |_, h, v, _| {
        let (index, sign) = bucket(h, mask);
        hashed.push(Hashed { index, value: sign * v });
    });
    Features { hashed, dense }
}

/// Only the dense features of `rt` (named by [`DENSE_NAMES`]); the hashed n-grams are walked but
/// not kept. Used by scorers that take the request's shape from these features (`embedding`).
pub fn dense(rt: &RequestText) -> [f32; DENSE_LEN] {
    walk(rt, |_, _, _, _| {})
}

/// Calls `f(index, signed value)` for every hashed occurrence of `rt` without allocating the
/// feature list, and returns the dense features (the inference fast path).
pub(crate) fn for_each_hashed(rt: &RequestText, buckets: u32, mut f: impl FnMut(u32, f32)) -> [f32; DENSE_LEN] {
    let mask = u64::from(buckets.max(1) - 1);
    walk(rt, |_, h, v, _| {
        let (index, sign) = bucket(h, mask);
        f(index, sign * v);
    })
}

/// Like [`for_each_hashed`] but also passes the family and the n-gram's byte range in
/// `rt.text` (for reasons; a byte 4-gram's range may split a UTF-8 character).
pub(crate) fn for_each_named(
    rt: &RequestText,
    buckets: u32,
    mut f: impl FnMut(Family, (usize, usize), u32, f32),
) -> [f32; DENSE_LEN] {
    let mask = u64::from(buckets.max(1) - 1);
    walk(rt, |fam, h, v, r| {
        let (index, sign) = bucket(h, mask);
        f(fam, r, index, sign * v);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // FNV-1a 64 reference values (draft-eastlake-fnv, test vectors "" and "a").
        assert_eq!(fnv1a(0, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(0, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn request_text_collects_system_turns_and_tools() {
        let r = req(
            r#"{"model":"auto","messages":[{"role":"system","content":"Be Brief"},{"role":"user","content":"Hi"},{"role":"assistant","content":"Yo"},{"role":"user","content":[{"type":"text","text":"Prove it"}]}],
               "tools":[{"type":"function","function":{"name":"Search","description":"Web search"}}]}"#,
        );
        let rt = RequestText::of(&r);
        assert_eq!(rt.text, "be brief\nhi\nyo\nprove it\nsearch web search \n");
        assert_eq!((rt.user_turns, rt.assistant_turns, rt.has_system, rt.tools), (2, 1, true, 1));
    }

    #[test]
    fn counts_and_scales_of_each_family() {
        let rt = RequestText { text: "why is 2+2=4?".into(), user_turns: 1, ..Default::default() };
        let f = extract_text(&rt, 1 << 10);
        // words: why, is, 2, 2, 4 (5); bigrams: 4; byte 4-grams: 13 - 3 = 10.
        assert_eq!(f.hashed.len(), 5 + 4 + 10);
        assert!(f.hashed.iter().all(|h| h.index < 1024));
        assert!((f.hashed[0].value.abs() - 1.0 / 5f32.sqrt()).abs() < 1e-6);
        assert!((f.hashed[5].value.abs() - 0.5).abs() < 1e-6);
        assert_eq!(f.dense[12], 1f32.ln_1p()); // one reasoning word: "why"
        assert_eq!(f.dense[11], 1f32.ln_1p()); // one question mark
        assert!((f.dense[9] - 10.0 * 2.0 / 13.0).abs() < 1e-6); // '+' and '='
        assert_eq!(DENSE_NAMES.len(), DENSE_LEN);
    }

    #[test]
    fn named_walk_sees_the_same_indices_as_the_fast_path() {
        let rt = RequestText { text: "def f(x):\n    return x ** 2".into(), ..Default::default() };
        let fast = extract_text(&rt, 4096);
        let mut named = Vec::new();
        for_each_named(&rt, 4096, |_, (a, b), i, v| named.push((rt.text.get(a..b).unwrap_or("").to_owned(), i, v)));
        assert_eq!(fast.hashed.len(), named.len());
        for (h, (_, i, v)) in fast.hashed.iter().zip(&named) {
            assert_eq!((h.index, h.value), (*i, *v));
        }
        assert_eq!(named[0].0, "def");
        assert_eq!(named.last().unwrap().0, "** 2");
    }
}
