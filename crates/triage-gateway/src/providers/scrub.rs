//! Provider secrets kept out of everything that carries upstream text back: error bodies passed
//! to clients, in-stream error events of both wire formats, the messages of 502s built from them,
//! and every log line (the text is scrubbed where it enters, so no later path can leak it).
//!
//! A [`Scrubber`] holds one provider's API key. It redacts the key as sent, JSON-escaped
//! (`/` as `\/` too) and percent-encoded, and also every fragment of [`FRAGMENT`] or more
//! consecutive characters of it (an upstream that quotes part of the key, or wraps it, leaks it
//! just as well), replacing each run with `[REDACTED]`. Keys shorter than [`MIN_KEY`] bytes are
//! not secrets worth the name (`EMPTY`, `none`) and are left alone.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use bytes::Bytes;

use super::{ApiKey, CallError, UpstreamError};

/// Shortest key that is scrubbed, in bytes.
pub const MIN_KEY: usize = 8;
/// Shortest run of a key's characters that counts as leaking it, in characters.
pub const FRAGMENT: usize = 12;
/// What a redacted run is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The secrets of one provider, and the one function that removes them from text.
#[derive(Clone, Default)]
pub struct Scrubber {
    matcher: Option<Arc<AhoCorasick>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.matcher.is_some() { "Scrubber(key)" } else { "Scrubber(none)" })
    }
}

/// `s` JSON-escaped the way serde writes it, and with `/` escaped too (both are valid JSON).
fn json_forms(s: &str) -> [String; 2] {
    let plain = serde_json::to_string(s).unwrap_or_default();
    let plain = plain.trim_matches('"').to_owned();
    let slashes = plain.replace('/', "\\/");
    [plain, slashes]
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded.
fn percent_encoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Scrubber {
    /// A scrubber for `key` (none, or a key shorter than [`MIN_KEY`]: scrubs nothing).
    pub fn new(key: Option<&ApiKey>) -> Scrubber {
        let Some(key) = key.map(ApiKey::expose).filter(|k| k.len() >= MIN_KEY) else {
            return Scrubber::default();
        };
        let chars: Vec<(usize, char)> = key.char_indices().collect();
        let frag = FRAGMENT.min(chars.len());
        let mut needles: Vec<String> = Vec::new();
        for start in 0..=chars.len() - frag {
            let from = chars[start].0;
            let to = chars.get(start + frag).map_or(key.len(), |c| c.0);
            let window = &key[from..to];
            needles.push(window.to_owned());
            needles.extend(json_forms(window));
            needles.push(percent_encoded(window));
        }
        needles.sort();
        needles.dedup();
        // Standard semantics find overlapping matches, so a run of fragments is covered whole.
        Scrubber { matcher: AhoCorasick::new(&needles).ok().map(Arc::new) }
    }

    /// `text` with every run of the secret (see the module docs) replaced by `[REDACTED]`;
    /// borrowed when nothing matched.
    pub fn scrub<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(m) = &self.matcher else { return Cow::Borrowed(text) };
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for hit in m.find_overlapping_iter(text) {
            match runs.last_mut() {
                Some(last) if hit.start() <= last.1 => last.1 = last.1.max(hit.end()),
                _ => runs.push((hit.start(), hit.end())),
            }
        }
        if runs.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in runs {
            out.extend_from_slice(&text[at..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            at = end;
        }
        out.extend_from_slice(&text[at..]);
        Cow::Owned(out)
    }

    /// [`Scrubber::scrub`] on a body.
    pub fn bytes(&self, body: Bytes) -> Bytes {
        match self.scrub(&body) {
            Cow::Borrowed(_) => body,
            Cow::Owned(v) => Bytes::from(v),
        }
    }

    /// [`Scrubber::scrub`] on a message.
    pub fn text(&self, s: String) -> String {
        match self.scrub(s.as_bytes()) {
            Cow::Borrowed(_) => s,
            // Replacing whole runs of the key's characters keeps UTF-8 valid; lossy just in case.
            Cow::Owned(v) => String::from_utf8_lossy(&v).into_owned(),
        }
    }

    /// The error with every upstream-provided text scrubbed.
    pub fn upstream_error(&self, e: UpstreamError) -> UpstreamError {
        if self.matcher.is_none() {
            return e;
        }
        match e {
            UpstreamError::Connect(m) => UpstreamError::Connect(self.text(m)),
            UpstreamError::Io(m) => UpstreamError::Io(self.text(m)),
            UpstreamError::Protocol(m) => UpstreamError::Protocol(self.text(m)),
            UpstreamError::InBand(m) => {
                UpstreamError::InBand(super::InBandError { kind: m.kind, message: self.text(m.message) })
            }
            UpstreamError::Busy(m) => UpstreamError::Busy(self.text(m)),
            UpstreamError::Crashed(m) => UpstreamError::Crashed(self.text(m)),
            e @ (UpstreamError::Timeout(_) | UpstreamError::Truncated) => e,
        }
    }

    /// The error with its body or message scrubbed.
    pub fn call_error(&self, e: CallError) -> CallError {
        match e {
            CallError::Status { status, body, retry_after, retry_after_ms } => {
                CallError::Status { status, body: self.bytes(body), retry_after, retry_after_ms }
            }
            CallError::Failed(f) => CallError::Failed(self.upstream_error(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Scrubber {
        Scrubber::new(Some(&ApiKey(k.to_owned())))
    }

    #[test]
    fn every_occurrence_and_form_is_removed() {
        let s = key("sk-test-PLACEHOLDER/0001+x");
        let out = s.text("bad key sk-test-PLACEHOLDER/0001+x and sk-test-PLACEHOLDER/0001+x!".into());
        assert_eq!(out, "bad key [REDACTED] and [REDACTED]!");
        let escaped = s.text(r#"{"m":"sk-test-PLACEHOLDER\/0001+x"}"#.into());
        assert_eq!(escaped, r#"{"m":"[REDACTED]"}"#);
        let pct = s.text("url?key=sk-test-PLACEHOLDER%2F0001%2Bx&a=1".into());
        assert_eq!(pct, "url?key=[REDACTED]&a=1");
    }

    #[test]
    fn fragments_of_twelve_characters_are_removed_shorter_ones_kept() {
        let s = key("sk-test-PLACEHOLDER-0001-abcdef");
        // The first 15 characters, then a line break, then the rest: both runs go.
        assert_eq!(s.text("key sk-test-PLACEHO\nLDER-0001-abcdef bad".into()), "key [REDACTED]\n[REDACTED] bad");
        // A run of 11 after the break is not.
        assert_eq!(s.text("key sk-test-PLACEHO\nLDER-0001-a".into()), "key [REDACTED]\nLDER-0001-a");
        // 11 characters of it are not the key.
        assert_eq!(s.text("sk-test-PLA".into()), "sk-test-PLA");
        // Nothing to do: the same allocation comes back.
        let body = Bytes::from_static(b"{\"error\":\"fine\"}");
        assert_eq!(s.bytes(body.clone()).as_ptr(), body.as_ptr());
    }

    #[test]
    fn short_or_missing_keys_scrub_nothing() {
        assert_eq!(key("EMPTY").text("EMPTY key".into()), "EMPTY key");
        assert_eq!(Scrubber::new(None).text("anything".into()), "anything");
        assert_eq!(format!("{:?}", key("sk-test-PLACEHOLDER-0001")), "Scrubber(key)");
    }

    #[test]
    fn errors_are_scrubbed_in_every_variant() {
        let s = key("sk-test-PLACEHOLDER-0001");
        let e = s.upstream_error(UpstreamError::InBand("invalid key sk-test-PLACEHOLDER-0001".into()));
        assert_eq!(e, UpstreamError::InBand("invalid key [REDACTED]".into()));
        let e = s.call_error(CallError::Status {
            status: http::StatusCode::UNAUTHORIZED,
            body: Bytes::from_static(b"key=sk-test-PLACEHOLDER-0001"),
            retry_after: None,
            retry_after_ms: None,
        });
        assert!(matches!(e, CallError::Status { body, .. } if &body[..] == b"key=[REDACTED]"));
    }
}
