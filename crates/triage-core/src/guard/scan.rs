//! Running the rules over a text: which parts of the text each rule's regex sees.
//!
//! Rules whose pattern starts with a literal run on the whole text (the regex engine's literal
//! prefilter makes that a fast skip); the others run only in small windows around cheap anchors:
//! keyword hits from one Aho-Corasick pass, runs of digits, IBAN-shaped starts, `.xxxxxx.` for
//! Discord tokens. Clean prose therefore costs one keyword pass, one byte pass and a few
//! prefiltered searches.

use std::ops::Range;

use super::checks;
use super::rules::{self, Gate, Hit, Rule};
use super::{Finding, Guard};

/// Runs every rule; returns (priority, finding) for each validated match, overlaps included.
pub(super) fn run_all(guard: &Guard, text: &str) -> Vec<(u8, Finding)> {
    let anchors = Anchors::new(guard, text);
    let mut raw = Vec::new();
    let whole = 0..text.len();
    for (i, rule) in guard.rules.iter().enumerate() {
        match rule.gate {
            Gate::Always => run_rule(rule, text, whole.clone(), &mut raw),
            Gate::Byte(b) => {
                if text.as_bytes().contains(&b) {
                    run_rule(rule, text, whole.clone(), &mut raw);
                }
            }
            Gate::HexColon => {
                if has_hex_colon(text.as_bytes()) {
                    run_rule(rule, text, whole.clone(), &mut raw);
                }
            }
            Gate::Keywords(_, back, fwd) | Gate::Cased(_, back, fwd) => {
                let Some(hits) = anchors.keyword_hits.get(i) else { continue };
                for w in windows(text, hits.iter().map(|&p| (p, p)), back, fwd) {
                    run_rule(rule, text, w, &mut raw);
                }
            }
            Gate::Assign(_, back, fwd) => {
                let Some(hits) = anchors.keyword_hits.get(i) else { continue };
                let near = hits.iter().copied().filter(|&p| assignment_near(text.as_bytes(), p)).map(|p| (p, p));
                for w in windows(text, near, back, fwd) {
                    run_rule(rule, text, w, &mut raw);
                }
            }
            Gate::DigitRun(min) => {
                let runs = anchors.digit_runs.iter().filter(|r| r.2 >= min).map(|r| (r.0, r.1));
                for w in windows(text, runs, 3, 12) {
                    run_rule(rule, text, w, &mut raw);
                }
            }
            Gate::IbanStart => {
                for w in windows(text, iban_starts(text.as_bytes()).into_iter().map(|p| (p, p)), 1, 48) {
                    run_rule(rule, text, w, &mut raw);
                }
            }
            Gate::DotSix => {
                for w in windows(text, dot_six(text.as_bytes()).into_iter().map(|p| (p, p)), 32, 56) {
                    run_rule(rule, text, w, &mut raw);
                }
            }
        }
    }
    raw
}

/// Runs one rule's regex over `window` of `text` and checks each match.
fn run_rule(rule: &Rule, text: &str, window: Range<usize>, raw: &mut Vec<(u8, Finding)>) {
    let Some(hay) = text.get(window.clone()) else { return };
    let off = window.start;
    if rule.group == 0 {
        for m in rule.re.find_iter(hay) {
            let r = m.start() + off..m.end() + off;
            push_hit(raw, rule, &Hit { text, whole: r.clone(), value: r });
        }
    } else {
        // `captures_iter` allocates its capture slots before searching; most texts match no
        // rule, so look first (same regex, same result) and allocate only for a match.
        if !rule.re.is_match(hay) {
            return;
        }
        for caps in rule.re.captures_iter(hay) {
            let Some(whole) = caps.get(0) else { continue };
            let value =
                if rule.group == rules::ANY { caps.iter().skip(1).flatten().next() } else { caps.get(rule.group) };
            let Some(value) = value else { continue };
            let hit = Hit {
                text,
                whole: whole.start() + off..whole.end() + off,
                value: value.start() + off..value.end() + off,
            };
            push_hit(raw, rule, &hit);
        }
    }
}

fn push_hit(raw: &mut Vec<(u8, Finding)>, rule: &Rule, hit: &Hit<'_>) {
    if hit.value.is_empty() {
        return;
    }
    if let Some((span, confidence)) = (rule.check)(hit) {
        if span.start < span.end && hit.text.is_char_boundary(span.start) && hit.text.is_char_boundary(span.end) {
            raw.push((rule.priority, Finding { kind: rule.kind, span, confidence, rule: rule.name }));
        }
    }
}

/// The cheap anchors of one text, computed once per scan.
struct Anchors {
    /// Per rule index, the byte offsets of its keywords (empty for other gates).
    keyword_hits: Vec<Vec<usize>>,
    /// Runs of digits and separators: (start, end, number of digits).
    digit_runs: Vec<(usize, usize, usize)>,
}

impl Anchors {
    fn new(guard: &Guard, text: &str) -> Anchors {
        let mut keyword_hits = vec![Vec::new(); guard.rules.len()];
        for (ac, owners) in
            [(&guard.keywords, &guard.keyword_rules), (&guard.cased_keywords, &guard.cased_keyword_rules)]
        {
            let Some(ac) = ac else { continue };
            for m in ac.find_iter(text) {
                if let Some(rs) = owners.get(m.pattern().as_usize()) {
                    for &r in rs {
                        if let Some(v) = keyword_hits.get_mut(r) {
                            v.push(m.start());
                        }
                    }
                }
            }
        }
        Anchors { keyword_hits, digit_runs: digit_runs(text.as_bytes()) }
    }
}

/// Windows `[start - back, end + fwd)`, widened back to a whitespace byte (so that no match
/// starts in the middle of a word; at most 64 bytes more) and to char boundaries, merged.
/// `anchors` must come in ascending order.
fn windows(text: &str, anchors: impl Iterator<Item = (usize, usize)>, back: usize, fwd: usize) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut out: Vec<Range<usize>> = Vec::new();
    for (s, e) in anchors {
        let mut start = s.saturating_sub(back);
        let floor = start.saturating_sub(64);
        while start > floor && !b.get(start).is_some_and(u8::is_ascii_whitespace) {
            start -= 1;
        }
        let start = checks::floor_boundary(text, start);
        let mut end = e.saturating_add(fwd).min(b.len());
        while end < b.len() && !text.is_char_boundary(end) {
            end += 1;
        }
        match out.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    }
    out
}

/// Runs of ASCII digits joined by at most two separators in a row (` -./()`), with a leading
/// `+` or `(`: phone, card, SSN and IPv4 candidates. Returns (start, end, digit count).
fn digit_runs(b: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > 0 && matches!(b[start - 1], b'+' | b'(') {
            start -= 1;
        }
        let (mut digits, mut end, mut seps) = (0, i, 0);
        let mut j = i;
        while j < b.len() {
            let c = b[j];
            if c.is_ascii_digit() {
                digits += 1;
                seps = 0;
                end = j + 1;
            } else if matches!(c, b' ' | b'-' | b'.' | b'/' | b'(' | b')') && seps < 2 {
                seps += 1;
            } else {
                break;
            }
            j += 1;
        }
        out.push((start, end, digits));
        i = end.max(i + 1);
    }
    out
}

/// True when an assignment or comparison byte (`=`, `:`, `>`, `,`) is within 40 bytes after a
/// keyword at `at` (`api_key = ...`, `"token": ...`, `<secret>...`, `setProperty("KEY", ...)`),
/// or a `=` within 24 bytes before it (`"..." === my_password`).
fn assignment_near(b: &[u8], at: usize) -> bool {
    let after =
        b.get(at..(at + 40).min(b.len())).is_some_and(|s| s.iter().any(|c| matches!(c, b'=' | b':' | b'>' | b',')));
    after || b.get(at.saturating_sub(24)..at).is_some_and(|s| s.contains(&b'='))
}

/// Offsets of `[A-Za-z]{2}[0-9]{2}` (IBANs are written in either case) not preceded by a letter or digit.
fn iban_starts(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        if b[i].is_ascii_alphabetic()
            && b[i + 1].is_ascii_alphabetic()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
        {
            out.push(i);
            i += 4;
        } else {
            i += 1;
        }
    }
    out
}

/// Offsets of a `.` followed by six base64url bytes and another `.`.
fn dot_six(b: &[u8]) -> Vec<usize> {
    let url = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = b.get(from..).and_then(|r| r.iter().position(|&c| c == b'.')) {
        let i = from + off;
        if b.get(i + 7) == Some(&b'.') && b.get(i + 1..i + 7).is_some_and(|s| s.iter().all(url)) {
            out.push(i);
        }
        from = i + 1;
    }
    out
}

/// True when some `:` has an ASCII hex digit or another `:` on both sides: an IPv6 candidate.
pub(super) fn has_hex_colon(b: &[u8]) -> bool {
    let hexish = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_hexdigit() || *c == b':');
    let mut from = 0;
    while let Some(off) = b.get(from..).and_then(|s| s.iter().position(|&c| c == b':')) {
        let i = from + off;
        if i > 0 && hexish(b.get(i - 1)) && hexish(b.get(i + 1)) {
            return true;
        }
        from = i + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_join_separators() {
        let runs = digit_runs(b"call (415) 555-0132 or 12");
        assert_eq!(runs, vec![(5, 19, 10), (23, 25, 2)]);
    }

    #[test]
    fn windows_merge_and_snap() {
        let text = "aaaa bbbb cccc dddd";
        assert_eq!(windows(text, [(7, 7), (9, 9)].into_iter(), 1, 2), vec![4..11]);
    }
}
