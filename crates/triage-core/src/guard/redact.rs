//! Placeholders and their inverse.
//!
//! A [`Redaction`] maps each redacted value to a placeholder `<LABEL_n>` (`<EMAIL_1>`,
//! `<AWS_KEY_2>`). Placeholders are prefix-free (each ends at its only `>`), so restoring is a
//! single left-to-right pass, and a [`Restorer`] can do the same pass over a stream: it holds
//! back only a tail that could still become a placeholder (`<EMA` at the end of a chunk), at most
//! the length of the longest placeholder, and passes everything else through at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::{Finding, Kind};

#[derive(Default, Clone)]
struct Table {
    /// placeholder -> (original value, kind)
    by_placeholder: HashMap<String, (String, Kind)>,
    /// Length in bytes of the longest placeholder.
    max_len: usize,
}

/// The result of redacting a request: which placeholder stands for which original value.
///
/// Holds the original values (they are needed to restore the answer) but never prints them:
/// `Debug` shows only the placeholders. Keep it for the life of the request, then drop it.
pub struct Redaction {
    table: Table,
    by_value: HashMap<String, String>,
    counters: HashMap<&'static str, usize>,
    reserved: HashSet<String>,
}

impl fmt::Debug for Redaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.table.by_placeholder.keys().collect();
        names.sort();
        f.debug_struct("Redaction").field("placeholders", &names).finish()
    }
}

impl Redaction {
    /// An empty redaction that will not hand out any placeholder in `reserved` (placeholders
    /// that already occur in the request text).
    pub(crate) fn with_reserved(reserved: HashSet<String>) -> Redaction {
        Redaction { table: Table::default(), by_value: HashMap::new(), counters: HashMap::new(), reserved }
    }

    /// True when nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.table.by_placeholder.is_empty()
    }

    /// Number of distinct values replaced.
    pub fn len(&self) -> usize {
        self.table.by_placeholder.len()
    }

    /// The kinds that were replaced.
    pub fn kinds(&self) -> BTreeSet<Kind> {
        self.table.by_placeholder.values().map(|(_, k)| *k).collect()
    }

    /// The placeholders handed out, with their kinds, sorted (no original values).
    pub fn placeholders(&self) -> Vec<(String, Kind)> {
        let mut v: Vec<(String, Kind)> = self.table.by_placeholder.iter().map(|(p, (_, k))| (p.clone(), *k)).collect();
        v.sort();
        v
    }

    /// Replaces `findings` (sorted by start, not overlapping, spans on char boundaries of
    /// `text`) with placeholders and returns the new text.
    pub(crate) fn apply(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0usize;
        for f in findings {
            if f.span.start < last || f.span.end > text.len() {
                continue;
            }
            let (Some(before), Some(value)) = (text.get(last..f.span.start), text.get(f.span.clone())) else {
                continue;
            };
            out.push_str(before);
            let ph = self.placeholder_for(value, f.kind);
            out.push_str(&ph);
            last = f.span.end;
        }
        out.push_str(text.get(last..).unwrap_or(""));
        out
    }

    fn placeholder_for(&mut self, value: &str, kind: Kind) -> String {
        if let Some(p) = self.by_value.get(value) {
            return p.clone();
        }
        let label = kind.label();
        let n = self.counters.entry(label).or_insert(0);
        let ph = loop {
            *n += 1;
            let cand = format!("<{label}_{n}>");
            if !self.reserved.contains(&cand) {
                break cand;
            }
        };
        let table = &mut self.table;
        table.max_len = table.max_len.max(ph.len());
        table.by_placeholder.insert(ph.clone(), (value.to_owned(), kind));
        self.by_value.insert(value.to_owned(), ph.clone());
        ph
    }

    /// Restores a whole text: every placeholder of this redaction becomes its original value;
    /// everything else is copied. The inverse of redaction: restoring a redacted text gives the
    /// original back exactly.
    pub fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let used = restore_into(&self.table, text, &mut out, true, false);
        debug_assert_eq!(used, text.len());
        out
    }

    /// A streaming restorer for the answer (plain text: message content deltas).
    pub fn restorer(&self) -> Restorer {
        Restorer { table: Arc::new(self.table.clone()), pending: String::new(), json: false }
    }

    /// A streaming restorer whose replacements are JSON-string-escaped (without the quotes), for
    /// text that is itself inside a JSON string literal, such as streamed tool-call `arguments`.
    pub fn json_restorer(&self) -> Restorer {
        Restorer { table: Arc::new(self.table.clone()), pending: String::new(), json: true }
    }
}

/// Restores placeholders in a stream of chunks. `push` returns the text that can be released
/// now; `finish` returns the held-back tail. The concatenation of all outputs equals
/// [`Redaction::restore`] of the concatenated input, whatever the chunking.
pub struct Restorer {
    table: Arc<Table>,
    pending: String,
    json: bool,
}

impl fmt::Debug for Restorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restorer").field("held_bytes", &self.pending.len()).finish()
    }
}

impl Restorer {
    /// Feeds one chunk; returns the restored text that is final. Holds back at most the longest
    /// placeholder's length minus one byte, and only when the chunk ends inside something that
    /// could still be a placeholder.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.table.by_placeholder.is_empty() {
            return chunk.to_owned();
        }
        self.pending.push_str(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let used = restore_into(&self.table, &self.pending, &mut out, false, self.json);
        self.pending.drain(..used);
        out
    }

    /// Ends the stream: returns whatever was held back (restored where it is a placeholder).
    pub fn finish(&mut self) -> String {
        let mut out = String::with_capacity(self.pending.len());
        restore_into(&self.table, &self.pending, &mut out, true, self.json);
        self.pending.clear();
        out
    }
}

/// Restores `s` into `out`. Returns how many bytes of `s` were consumed: all of them when
/// `at_end`, else up to a trailing possible placeholder prefix.
fn restore_into(table: &Table, s: &str, out: &mut String, at_end: bool, json: bool) -> usize {
    let mut pos = 0usize;
    while let Some(off) = s.get(pos..).and_then(|r| r.find('<')) {
        let lt = pos + off;
        out.push_str(s.get(pos..lt).unwrap_or(""));
        let rest = s.get(lt..).unwrap_or("");
        let window = &rest.as_bytes()[..rest.len().min(table.max_len)];
        match window.iter().position(|&b| b == b'>') {
            Some(gt) => {
                let cand = rest.get(..=gt).unwrap_or("");
                if let Some((value, _)) = table.by_placeholder.get(cand) {
                    push_value(out, value, json);
                    pos = lt + gt + 1;
                    continue;
                }
            }
            None => {
                if !at_end && rest.len() < table.max_len && is_prefix_of_placeholder(table, rest) {
                    return lt;
                }
            }
        }
        out.push('<');
        pos = lt + 1;
    }
    out.push_str(s.get(pos..).unwrap_or(""));
    s.len()
}

fn is_prefix_of_placeholder(table: &Table, rest: &str) -> bool {
    // Cheap syntactic test first: `<` then upper-case letters, `_` and digits.
    if !rest.bytes().skip(1).all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
        return false;
    }
    table.by_placeholder.keys().any(|p| p.starts_with(rest))
}

fn push_value(out: &mut String, value: &str, json: bool) {
    if !json {
        out.push_str(value);
        return;
    }
    match serde_json::to_string(value) {
        Ok(q) => out.push_str(q.get(1..q.len().saturating_sub(1)).unwrap_or("")),
        Err(_) => out.push_str(value),
    }
}

/// Adds every `<UPPER_n>`-shaped substring of `text` to `set` (placeholders to avoid).
pub(crate) fn collect_placeholder_like(text: &str, set: &mut HashSet<String>) {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'<')) {
        let start = i + off;
        let mut j = start + 1;
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        if j < b.len() && b[j] == b'>' && j > start + 1 {
            if let Some(s) = text.get(start..=j) {
                set.insert(s.to_owned());
            }
        }
        i = start + 1;
    }
}
