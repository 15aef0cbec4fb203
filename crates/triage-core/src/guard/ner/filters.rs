//! What a span must look like to be reported as its kind, beyond what the tagger says.
//!
//! The tagger learnt from sentences about people; agent harnesses send headings, bullet lists,
//! git logs, environment blocks and code, where a capitalised word after a number looks to it
//! like a street (`7cf520a Remove dead code`, `Servers` after an e-mail line, `OS Version:
//! Linux 6.8.0-45`). Each check below removes one class of such false alarms by what the span
//! lacks (tests in `guard/tests.rs` are named after the classes):
//! - an address needs two words and a house number or postcode (not a version, time, date,
//!   list number or commit id), with a street word, a place or two capitalised words;
//! - a date needs a month, a weekday, a year or a valid day-month-year triple, and is not the
//!   session's own date (`Today's date:`, `knowledge cutoff`, a release or changelog line);
//! - a person or organisation holds no digit, no file name or dotted path, no `camelCase`
//!   identifier, is not a heading line by itself, and a single word is a known name.

use std::ops::Range;

use super::{Token, G_CITY, G_COMMON, G_COUNTRY, G_FIRST, G_LAST, G_MONTH, G_ORG, G_STREET, G_WEEKDAY};

fn s<'a>(text: &'a str, t: &Token) -> &'a str {
    &text[t.span.clone()]
}

fn is_word(text: &str, t: &Token) -> bool {
    s(text, t).chars().next().is_some_and(char::is_alphanumeric)
}

/// `Main`, `Paris`: an upper-case letter then lower case (all-caps words are headings,
/// SQL keywords and acronyms more often than names).
fn title_case(text: &str, t: &Token) -> bool {
    let mut c = s(text, t).chars();
    c.next().is_some_and(char::is_uppercase) && c.next().is_some_and(char::is_lowercase)
}

/// The character just before / after the token (no space between).
fn before(text: &str, t: &Token) -> Option<char> {
    text[..t.span.start].chars().next_back()
}
fn after(text: &str, t: &Token) -> Option<char> {
    text[t.span.end..].chars().next()
}

/// True when the token is glued by `.` (or `:`/`_`) to a letter or digit on either side:
/// versions (`6.8.0`), times (`09:12`), IPs, decimals, file names (`Cargo.toml`), paths.
fn dotted(text: &str, t: &Token) -> bool {
    let left = {
        let mut it = text[..t.span.start].chars().rev();
        matches!(it.next(), Some('.' | ':' | '_')) && it.next().is_some_and(char::is_alphanumeric)
    };
    let right = {
        let mut it = text[t.span.end..].chars();
        matches!(it.next(), Some('.' | ':' | '_')) && it.next().is_some_and(char::is_alphanumeric)
    };
    left || right
}

/// Number of alphanumeric parts in the chain of tokens glued by `-` or `/` around token `i`
/// (`2026-12-07` has 3, `12-14` has 2, `00-950` has 2).
fn chain_parts(text: &str, toks: &[Token], i: usize) -> usize {
    let glued = |a: &Token, b: &Token| a.span.end == b.span.start;
    let mut n = 1;
    let mut j = i;
    while j >= 2
        && glued(&toks[j - 1], &toks[j])
        && glued(&toks[j - 2], &toks[j - 1])
        && matches!(s(text, &toks[j - 1]), "-" | "/")
        && is_word(text, &toks[j - 2])
    {
        n += 1;
        j -= 2;
    }
    let mut j = i;
    while j + 2 < toks.len()
        && glued(&toks[j], &toks[j + 1])
        && glued(&toks[j + 1], &toks[j + 2])
        && matches!(s(text, &toks[j + 1]), "-" | "/")
        && is_word(text, &toks[j + 2])
    {
        n += 1;
        j += 2;
    }
    n
}

/// True when alphanumeric token `i` is within two words of a month name (`7 Dec`, `December
/// 7, 2026`): part of a date, not a house number.
fn near_month(text: &str, toks: &[Token], i: usize) -> bool {
    let words: Vec<usize> = (0..toks.len()).filter(|&j| is_word(text, &toks[j])).collect();
    let Some(p) = words.iter().position(|&j| j == i) else { return false };
    let lo = p.saturating_sub(2);
    let hi = (p + 2).min(words.len() - 1);
    (lo..=hi).any(|q| q != p && toks[words[q]].gaz & G_MONTH != 0)
}

/// True when token `i` can be a house number or a postcode: digits (up to 6), digits with a
/// letter or two (`12a`, `221B`, `1AA`), or a short letters-then-digits postcode part (`SW1A`,
/// `M1`); not a commit id (`7cf520a`), not glued into a version, time, IP, decimal or file name,
/// not a date (three parts, or next to a month), not a list number (`2.` at a line start).
fn number_like(text: &str, toks: &[Token], i: usize) -> bool {
    let t = &toks[i];
    let v = s(text, t);
    if t.digits == 0 {
        return false;
    }
    let letters = v.chars().filter(|c| c.is_alphabetic()).count();
    let digits = usize::from(t.digits);
    let shape = if letters == 0 {
        digits <= 6 && v.len() == digits
    } else if v.starts_with(|c: char| c.is_ascii_digit()) {
        letters <= 2
            && v.len() <= 6
            && v.trim_start_matches(|c: char| c.is_ascii_digit()).chars().all(char::is_alphabetic)
    } else {
        v.len() <= 4 && letters <= 2
    };
    // `#412` is an issue or pull request.
    if !shape
        || dotted(text, t)
        || before(text, t) == Some('#')
        || chain_parts(text, toks, i) >= 3
        || near_month(text, toks, i)
    {
        return false;
    }
    // A list number: the first thing on its line, followed by `.` or `)`.
    let line_start = text[..t.span.start].rsplit('\n').next().is_some_and(|p| p.trim().is_empty());
    !(line_start && matches!(after(text, t), Some('.' | ')')))
}

/// Street-type words of the gazetteer that are also everyday or technical words in lower case.
const AMBIGUOUS_STREET: &[&str] = &[
    "access",
    "bis",
    "block",
    "box",
    "branch",
    "break",
    "bridge",
    "center",
    "common",
    "course",
    "cross",
    "cutting",
    "dip",
    "divide",
    "edge",
    "extension",
    "fall",
    "falls",
    "field",
    "fields",
    "fire",
    "flat",
    "floor",
    "follow",
    "fork",
    "ground",
    "key",
    "keys",
    "land",
    "landing",
    "light",
    "lights",
    "line",
    "little",
    "lock",
    "locks",
    "loop",
    "lower",
    "mission",
    "mount",
    "neck",
    "norte",
    "pad",
    "park",
    "part",
    "pass",
    "path",
    "pocket",
    "point",
    "points",
    "port",
    "ports",
    "radial",
    "ramp",
    "range",
    "reach",
    "reserve",
    "rest",
    "ride",
    "right",
    "ring",
    "rise",
    "round",
    "route",
    "row",
    "run",
    "service",
    "shore",
    "spring",
    "spur",
    "square",
    "state",
    "station",
    "strip",
    "summit",
    "sur",
    "top",
    "trace",
    "track",
    "trail",
    "tunnel",
    "union",
    "unit",
    "upper",
    "view",
    "views",
    "wall",
    "way",
    "ways",
];

/// True when the address block `toks[a..=b]` has the shape of one (see the module comment).
/// The two tokens on each side count as evidence too: the tagger often leaves out a trailing
/// `St.` or a leading house number.
pub(super) fn address_like(text: &str, all: &[Token], a: usize, b: usize) -> bool {
    let toks = &all[a..=b];
    if toks.iter().filter(|t| is_word(text, t)).count() < 2 {
        return false;
    }
    let around = &all[a.saturating_sub(2)..(b + 3).min(all.len())];
    // A street word: capitalised (`Main Street`, `Rue`), or in lower case one that is not also
    // an everyday or technical word (`avenida`, `suite`, `st`, but not `port`, `line`, `key`).
    let street = around.iter().any(|t| {
        let w = s(text, t);
        t.gaz & G_STREET != 0
            && w.chars().count() >= 2
            && (w.starts_with(char::is_uppercase) || !AMBIGUOUS_STREET.contains(&w))
    });
    let numbers = (a..=b).filter(|&i| number_like(text, all, i)).count();
    if numbers == 0 {
        // No house number: only a name right before a street word (`Isaac Lodge Street`).
        return all.get(b + 1).is_some_and(|t| {
            let w = s(text, t);
            t.gaz & G_STREET != 0 && w.starts_with(char::is_uppercase) && w.chars().count() >= 2
        }) && title_case(text, &all[b]);
    }
    let place = toks.iter().any(|t| {
        let w = s(text, t);
        t.gaz & (G_CITY | G_COUNTRY) != 0 && (w.starts_with(char::is_uppercase) || w.chars().count() >= 4)
    });
    let caps = toks
        .iter()
        .filter(|t| {
            t.digits == 0
                && s(text, t).starts_with(char::is_uppercase)
                && s(text, t).chars().any(char::is_lowercase)
                && t.gaz & (G_COMMON | G_MONTH | G_WEEKDAY) == 0
                && !dotted(text, t)
        })
        .count();
    // The word before the block: `lives at`, `enter on`, `sent to`, `address: `.
    let prev = text[..toks[0].span.start].trim_end_matches([' ', ':', '\n']).to_lowercase();
    let context = ["at", "on", "to", "of", "address", "lives", "located", "is"]
        .iter()
        .any(|w| prev.ends_with(w) && !prev[..prev.len() - w.len()].ends_with(|c: char| c.is_alphanumeric()));
    street || place || caps >= 2 || (caps >= 1 || numbers >= 2) && (numbers >= 2 && caps >= 1 || context)
}

/// True when a date span can be a date: a month or weekday name, a year (1800–2199), or a
/// day-month-year triple (`12/07/2026`, `07.12.26`) whose parts are in range. A lone small
/// number (`4`, `48`), a version (`2.3.0`) or a duration (`600000ms / 10`) is not.
pub(super) fn date_like(text: &str, toks: &[Token]) -> bool {
    if toks.iter().any(|t| t.gaz & G_MONTH != 0) {
        return true;
    }
    if toks.iter().any(|t| t.gaz & G_WEEKDAY != 0 && s(text, t).chars().count() >= 6) {
        return true;
    }
    for (i, t) in toks.iter().enumerate() {
        let v = s(text, t);
        if v.len() == usize::from(t.digits) {
            if v.len() == 4 && v.parse::<u32>().is_ok_and(|y| (1800..=2199).contains(&y)) && !dotted(text, t) {
                return true;
            }
            if chain_parts(text, toks, i) == 3 || triple(text, toks, i) {
                return true;
            }
        }
    }
    false
}

/// True when token `i` starts `a.b.c` of numbers that is a valid day-month-year date.
fn triple(text: &str, toks: &[Token], i: usize) -> bool {
    let glued = |a: &Token, b: &Token| a.span.end == b.span.start;
    if i + 4 >= toks.len() {
        return false;
    }
    let parts = [&toks[i], &toks[i + 2], &toks[i + 4]];
    let seps = [s(text, &toks[i + 1]), s(text, &toks[i + 3])];
    if seps[0] != "." || seps[1] != "." || !glued(&toks[i], &toks[i + 1]) || !glued(&toks[i + 3], &toks[i + 4]) {
        return false;
    }
    let n: Vec<Option<u32>> = parts.iter().map(|t| s(text, t).parse::<u32>().ok()).collect();
    let (Some(a), Some(b), Some(c)) = (n[0], n[1], n[2]) else { return false };
    let year_len = s(text, parts[2]).len();
    (1..=31).contains(&a) && (1..=12).contains(&b) && (year_len == 2 || year_len == 4) && c > 0
}

/// Words that, before a date on the same line, make it the session's or a document's own date
/// rather than anyone's: an agent's `<env>` block, a knowledge cutoff, a release or changelog.
const SESSION_DATE_WORDS: &[&str] = &[
    "today",
    "current date",
    "current time",
    "cutoff",
    "cut-off",
    "knowledge",
    "released",
    "release date",
    "last updated",
    "updated",
    "last modified",
    "modified",
    "generated",
    "timestamp",
    "as of",
    "copyright",
    "©",
    "version",
    "changelog",
    "build date",
];

/// True when the date at `span` is the session's or a document's own date: a
/// [`SESSION_DATE_WORDS`] word earlier on its line, a commit id first on its line (`git log`),
/// or a version number on its line (`## [2.3.0] - 2026-12-07`).
pub(super) fn session_date(text: &str, span: &Range<usize>) -> bool {
    let line_start = text[..span.start].rfind('\n').map_or(0, |p| p + 1);
    let line_end = text[span.end..].find('\n').map_or(text.len(), |p| span.end + p);
    let prefix = text[line_start..span.start].to_lowercase();
    let whole_word = |w: &str| {
        prefix.match_indices(w).any(|(i, _)| {
            !prefix[..i].ends_with(char::is_alphanumeric) && !prefix[i + w.len()..].starts_with(char::is_alphanumeric)
        })
    };
    if SESSION_DATE_WORDS.iter().any(|w| whole_word(w)) {
        return true;
    }
    let line = &text[line_start..line_end];
    let first = line.split_whitespace().next().unwrap_or("");
    let commit_id = (7..=40).contains(&first.len())
        && first.chars().all(|c| c.is_ascii_hexdigit())
        && first.chars().any(|c| c.is_ascii_digit())
        && first.chars().any(|c| c.is_ascii_alphabetic());
    commit_id || has_version(line)
}

/// True when `line` holds `d.d.d` (a software version).
fn has_version(line: &str) -> bool {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.') {
            let mut j = i;
            let mut dots = 0;
            loop {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j + 1 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
                    dots += 1;
                    j += 1;
                } else {
                    break;
                }
            }
            if dots >= 2 {
                // A dotted date (`07.12.2026`) is not a version.
                let parts: Vec<&str> = line[i..j].split('.').collect();
                if !(parts.len() == 3 && parts[0].len() <= 2 && parts[1].len() <= 2 && parts[2].len() >= 2) {
                    return true;
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    false
}

/// True when a person or organisation span has the shape of a name (see the module comment).
pub(super) fn name_shaped(text: &str, span: &Range<usize>, toks: &[Token], person: bool) -> bool {
    let words: Vec<&Token> = toks.iter().filter(|t| is_word(text, t)).collect();
    // Initials (`U.N.`, `J.R.R.`) are dotted and fine.
    let file_or_path = |t: &Token| dotted(text, t) && s(text, t).chars().count() > 1;
    let known = |t: &Token| t.gaz & (G_FIRST | G_LAST | G_ORG) != 0;
    if words.iter().any(|t| person && t.digits > 0 || file_or_path(t) || camel(s(text, t)) && !known(t)) {
        return false;
    }
    if words.len() == 1 && !known(words[0]) {
        let line_start = text[..span.start].rfind('\n').map_or(0, |p| p + 1);
        let line_end = text[span.end..].find('\n').map_or(text.len(), |p| span.end + p);
        let lead = text[line_start..span.start].trim();
        let tail = text[span.end..line_end].trim();
        // A heading: one word alone on its line after `#`, or before a list.
        let next_line = text[line_end..].trim_start_matches('\n').trim_start();
        let list_follows = next_line.starts_with(['-', '*', '+']) || {
            let d = next_line.trim_start_matches(|c: char| c.is_ascii_digit());
            d.len() < next_line.len() && d.starts_with(['.', ')'])
        };
        if (lead.starts_with('#') || lead.is_empty() && list_follows) && matches!(tail, "" | ":") {
            return false;
        }
        // A value under a technical key (`kind: Deployment`, `type: Summary`), not under a key
        // that holds names (`name:`, `author:`).
        let key = lead.strip_suffix(':').unwrap_or("");
        if !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
            && !NAME_KEYS.iter().any(|k| key.contains(k))
            && tail.is_empty()
        {
            return false;
        }
    }
    true
}

/// Keys whose values are names (`name:`, `author:`, `owner:` ...).
const NAME_KEYS: &[&str] = &[
    "name",
    "author",
    "owner",
    "contact",
    "user",
    "customer",
    "patient",
    "company",
    "employer",
    "org",
    "from",
    "to",
    "manager",
    "maintainer",
    "member",
    "person",
    "client",
    "signed",
    "by",
    "who",
    "assignee",
    "reviewer",
];

/// `camelCase`, `HashMap`, `setOpen`: a lower-case letter followed by an upper-case one, except
/// after name prefixes (`McDonald`, `MacArthur`, `DeVito`, `LaToya`, `VanDyke`, `O'Brien`).
fn camel(w: &str) -> bool {
    let cs: Vec<char> = w.chars().collect();
    for k in 1..cs.len() {
        if cs[k].is_uppercase() && cs[k - 1].is_lowercase() {
            let prefix: String = cs[..k].iter().collect();
            if !["Mc", "Mac", "De", "Di", "Da", "La", "Le", "Van", "Von", "Fitz", "Du"].contains(&prefix.as_str()) {
                return true;
            }
        }
    }
    false
}
