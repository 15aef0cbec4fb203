//! In-process entity recogniser for what has no fixed shape: person names, postal addresses (any
//! country's layout, on one line or several), dates and organisations.
//!
//! Why this model: the MiniLM encoder the project runs costs ~44 ms for 128 tokens on 2 cores,
//! far above the ≤ 5 ms budget for a new 500-token message. This is a greedy averaged-perceptron
//! token tagger (BIO tags over four entity types) over hashed features: the word and its
//! neighbours (lower case), word shapes, prefixes and suffixes, gazetteer membership (first and
//! last names, street and organisation words, cities, countries, months, weekdays) and the two
//! previous tags. Cost is a few hundred nanoseconds per token (docs/BENCHMARKS.md).
//!
//! The weights (`weights.bin`, 2^18 buckets × 9 tags, `i16` with one scale) and the gazetteer
//! are compiled into the binary: nothing is read or downloaded at run time. Both are made by a
//! deterministic setup step (scripts/guard_ner_data.py, then the `train_guard_ner` example);
//! the training data are generated sentences (Faker values in 42 locales in our own templates
//! and the presidio-research templates) plus the training part of the presidio-research
//! synthetic sentences; its held-out part (index % 5 == 0) is only evaluated.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use super::Kind;

mod filters;

/// Number of tags: O, then B/I for PER, ADDR, DATE, ORG.
pub const TAGS: usize = 9;
/// log2 of the number of feature buckets.
pub const BITS: u32 = 18;
const BUCKETS: usize = 1 << BITS;

const GAZETTEER: &str = include_str!("gazetteer.txt");
static WEIGHTS: &[u8] = include_bytes!("weights.bin");

/// The tag names, index = tag id.
pub const TAG_NAMES: [&str; TAGS] = ["O", "B-PER", "I-PER", "B-ADDR", "I-ADDR", "B-DATE", "I-DATE", "B-ORG", "I-ORG"];

/// Entity type of a tag (0 = none, 1 = person, 2 = address, 3 = date, 4 = organisation).
pub fn entity(tag: usize) -> usize {
    tag.div_ceil(2)
}

/// The kind an entity type reports.
pub fn kind_of(entity: usize) -> Option<Kind> {
    match entity {
        1 => Some(Kind::Person),
        2 => Some(Kind::Address),
        3 => Some(Kind::Date),
        4 => Some(Kind::Organization),
        _ => None,
    }
}

/// Tag id of a label (`PER`, `ADDR`, `DATE`, `ORG`) at the beginning (`b`) or inside.
pub fn tag_of(label: &str, begin: bool) -> usize {
    let e = match label {
        "PER" => 1,
        "ADDR" => 2,
        "DATE" => 3,
        "ORG" => 4,
        _ => return 0,
    };
    if begin {
        e * 2 - 1
    } else {
        e * 2
    }
}

// Gazetteer bits.
const G_FIRST: u16 = 1;
const G_LAST: u16 = 2;
const G_STREET: u16 = 4;
const G_CITY: u16 = 8;
const G_COUNTRY: u16 = 16;
const G_ORG: u16 = 32;
const G_MONTH: u16 = 64;
const G_WEEKDAY: u16 = 128;
const G_TITLE: u16 = 256;
const G_COMMON: u16 = 512;

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "januar",
    "februar",
    "märz",
    "mai",
    "juni",
    "juli",
    "oktober",
    "dezember",
    "janvier",
    "février",
    "mars",
    "avril",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
];
const WEEKDAYS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "mon",
    "tue",
    "tues",
    "wed",
    "thu",
    "thur",
    "thurs",
    "fri",
    "sat",
    "sun",
    "today",
    "tomorrow",
    "yesterday",
];
const TITLES: &[&str] =
    &["mr", "mrs", "ms", "miss", "dr", "prof", "sir", "madam", "dear", "herr", "frau", "mme", "mlle", "sr", "sra"];
/// Capitalised words that start sentences or name things in technical text (never a name).
const COMMON: &[&str] = &[
    "the", "a", "an", "i", "we", "you", "he", "she", "they", "it", "this", "that", "these", "please", "thanks", "hi",
    "hello", "can", "could", "would", "should", "will", "is", "are", "was", "what", "how", "why", "when", "where",
    "who", "which", "my", "our", "your", "his", "her", "their", "and", "or", "but", "if", "in", "on", "at", "to",
    "for", "from", "with", "by", "of", "as", "use", "add", "set", "get", "run", "see", "note", "error", "warning",
    "true", "false", "null", "none", "yes", "no", "ok", "let", "fn", "def", "class", "return", "import", "select",
    "insert", "update", "delete", "create", "table", "json", "api", "http", "https", "url", "sql", "rust", "python",
    "java", "linux", "docker", "git", "github", "readme", "todo", "fixme",
];

struct Gaz {
    words: HashMap<u64, u16>,
}

fn gaz() -> &'static Gaz {
    static G: OnceLock<Gaz> = OnceLock::new();
    G.get_or_init(|| {
        let mut words: HashMap<u64, u16> = HashMap::with_capacity(20_000);
        for line in GAZETTEER.lines() {
            let Some((tag, w)) = line.split_once('\t') else { continue };
            let bit = match tag {
                "first" => G_FIRST,
                "last" => G_LAST,
                "street" => G_STREET,
                "city" => G_CITY,
                "country" => G_COUNTRY,
                "org" => G_ORG,
                _ => continue,
            };
            // Country names of several words: each word.
            for part in w.split(' ') {
                *words.entry(fnv(part.as_bytes())).or_default() |= bit;
            }
        }
        for (list, bit) in [(MONTHS, G_MONTH), (WEEKDAYS, G_WEEKDAY), (TITLES, G_TITLE), (COMMON, G_COMMON)] {
            for w in list {
                *words.entry(fnv(w.as_bytes())).or_default() |= bit;
            }
        }
        Gaz { words }
    })
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// One token: its byte span and the hashed attributes the features use.
#[derive(Debug, Clone)]
pub struct Token {
    /// Byte span in the text.
    pub span: Range<usize>,
    lower: u64,
    shape: u64,
    prefix: u64,
    suffix: u64,
    gaz: u16,
    /// First token of a line.
    line_start: bool,
    /// Number of ASCII digits (for number tokens).
    digits: u8,
}

const PAD_START: u64 = 0x0053_5441_5254;
const PAD_END: u64 = 0x0045_4e44;

/// Splits `text` into tokens: runs of letters and digits (with inner `'`, `’` and `-` between
/// letters), newlines, and single punctuation characters. Spaces are dropped.
pub fn tokenize(text: &str) -> Vec<Token> {
    let g = gaz();
    let mut out = Vec::new();
    let mut line_start = true;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == '\n' {
            out.push(make_token(text, i..i + 1, g, line_start));
            line_start = true;
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        if c.is_alphanumeric() {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = it.peek() {
                if d.is_alphanumeric() {
                    end = j + d.len_utf8();
                    it.next();
                } else if matches!(d, '\'' | '’' | '-') {
                    // Joined only between letters.
                    let next = text.get(j + d.len_utf8()..).and_then(|r| r.chars().next());
                    if next.is_some_and(char::is_alphabetic)
                        && text[..j].chars().next_back().is_some_and(char::is_alphabetic)
                    {
                        end = j + d.len_utf8();
                        it.next();
                    } else {
                        break;
                    }
                } else {
                    break;
                }
            }
            out.push(make_token(text, i..end, g, line_start));
        } else {
            out.push(make_token(text, i..i + c.len_utf8(), g, line_start));
        }
        line_start = false;
    }
    out
}

fn make_token(text: &str, span: Range<usize>, g: &Gaz, line_start: bool) -> Token {
    let s = &text[span.clone()];
    let lower = s.to_lowercase();
    let lb = lower.as_bytes();
    let lower_h = fnv(lb);
    // Shape: X, x, d, or the character itself; runs longer than 2 collapse (`Xxx`, `dd`).
    let mut shape = String::with_capacity(8);
    let mut last = ' ';
    let mut run = 0;
    for c in s.chars() {
        let k = if c.is_uppercase() {
            'X'
        } else if c.is_lowercase() {
            'x'
        } else if c.is_ascii_digit() {
            'd'
        } else {
            c
        };
        if k == last {
            run += 1;
        } else {
            run = 1;
            last = k;
        }
        if run <= 2 {
            shape.push(k);
        }
    }
    let chars: Vec<char> = lower.chars().collect();
    let pre: String = chars.iter().take(3).collect();
    let suf: String = chars.iter().rev().take(3).collect();
    let digits = s.bytes().filter(u8::is_ascii_digit).count().min(255) as u8;
    Token {
        span,
        lower: lower_h,
        shape: fnv(shape.as_bytes()),
        prefix: fnv(pre.as_bytes()),
        suffix: fnv(suf.as_bytes()),
        gaz: g.words.get(&lower_h).copied().unwrap_or(0),
        line_start,
        digits,
    }
}

/// Feature bucket of template `t` with value `v`.
#[inline]
fn bucket(t: u64, v: u64) -> u32 {
    (mix(v ^ t.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & (BUCKETS as u64 - 1)) as u32
}

/// The static features of token `i` (everything but the previous tags), appended to `out`.
/// `gaz_mask` lets training drop gazetteer evidence now and then.
pub fn static_features(toks: &[Token], i: usize, gaz_mask: u16, out: &mut Vec<u32>) {
    let at = |j: isize| -> Option<&Token> { usize::try_from(j).ok().and_then(|j| toks.get(j)) };
    let ii = i as isize;
    let w = |j: isize| at(ii + j).map_or(if j < 0 { PAD_START } else { PAD_END }, |t| t.lower);
    let s = |j: isize| at(ii + j).map_or(if j < 0 { PAD_START } else { PAD_END }, |t| t.shape);
    let gz = |j: isize| at(ii + j).map_or(0, |t| t.gaz & gaz_mask);
    let t0 = &toks[i];
    out.push(bucket(0, 0));
    out.push(bucket(1, w(0)));
    out.push(bucket(2, w(-1)));
    out.push(bucket(3, w(1)));
    out.push(bucket(4, w(-2)));
    out.push(bucket(5, w(2)));
    out.push(bucket(6, s(0)));
    out.push(bucket(7, s(-1)));
    out.push(bucket(8, s(1)));
    out.push(bucket(9, t0.suffix));
    out.push(bucket(10, t0.prefix));
    for (tmpl, g) in [(11u64, gz(0)), (12, gz(-1)), (13, gz(1)), (14, gz(-2)), (15, gz(2))] {
        for bit in 0..10 {
            if g & (1 << bit) != 0 {
                out.push(bucket(tmpl, bit));
            }
        }
    }
    out.push(bucket(16, w(-1) ^ s(0).rotate_left(7)));
    out.push(bucket(17, s(-1) ^ s(0).rotate_left(7) ^ s(1).rotate_left(14)));
    out.push(bucket(18, u64::from(t0.line_start) ^ s(0).rotate_left(3)));
    out.push(bucket(19, w(-1) ^ w(-2).rotate_left(11)));
    out.push(bucket(20, w(1) ^ w(2).rotate_left(11)));
    out.push(bucket(21, u64::from(t0.digits)));
    out.push(bucket(22, u64::from(gz(0)) ^ s(0).rotate_left(13)));
    out.push(bucket(23, w(1) ^ s(0).rotate_left(5)));
    out.push(bucket(24, s(0) ^ s(1).rotate_left(9)));
    out.push(bucket(25, s(-1) ^ s(0).rotate_left(9)));
}

/// The features that depend on the two previous tags.
#[inline]
pub fn tag_features(toks: &[Token], i: usize, prev: usize, prev2: usize, out: &mut Vec<u32>) {
    let s0 = toks[i].shape;
    let w0 = toks[i].lower;
    out.push(bucket(30, prev as u64));
    out.push(bucket(31, (prev as u64) ^ s0.rotate_left(5)));
    out.push(bucket(32, (prev as u64) | ((prev2 as u64) << 8)));
    out.push(bucket(33, (prev as u64) ^ w0.rotate_left(5)));
}

/// Weights: dense `[BUCKETS][TAGS]` scores, `i16` scaled by `scale`.
pub struct Model {
    weights: &'static [u8],
    scale: f32,
    /// Softmax temperature for the confidence.
    temperature: f32,
}

/// Header: magic `TGNR`, version u32, scale f32, temperature f32; then `BUCKETS * TAGS` `i16`
/// little endian.
pub const HEADER: usize = 16;

impl Model {
    /// The compiled-in model, or `None` when the embedded weights do not have the expected
    /// size (then the guard runs its rules only; a unit test asserts that this does not happen).
    pub fn builtin() -> Option<&'static Model> {
        static M: OnceLock<Option<Model>> = OnceLock::new();
        M.get_or_init(|| Model::from_bytes(WEIGHTS)).as_ref()
    }

    #[doc(hidden)]
    pub fn from_bytes(b: &'static [u8]) -> Option<Model> {
        if b.len() != HEADER + BUCKETS * TAGS * 2 || b.get(..4) != Some(b"TGNR") {
            return None;
        }
        let f = |o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        // Warm the gazetteer with the model.
        let _ = gaz();
        Some(Model { weights: &b[HEADER..], scale: f(8), temperature: f(12) })
    }

    #[inline]
    fn add(&self, feats: &[u32], scores: &mut [f32; TAGS]) {
        let mut acc = [0i32; TAGS];
        for &f in feats {
            let o = f as usize * TAGS * 2;
            if let Some(row) = self.weights.get(o..o + TAGS * 2) {
                for (t, a) in acc.iter_mut().enumerate() {
                    *a += i32::from(i16::from_le_bytes([row[2 * t], row[2 * t + 1]]));
                }
            }
        }
        for (s, a) in scores.iter_mut().zip(acc) {
            *s += a as f32 * self.scale;
        }
    }

    /// Tags `text`: entity spans (byte ranges) with their kind and confidence.
    pub fn find(&self, text: &str) -> Vec<(Kind, Range<usize>, f32)> {
        let toks = tokenize(text);
        // Texts of one or two words (schema strings, enum values, tool arguments such as
        // `"Paris"`) carry no context to tell a name from a word: not tagged.
        if toks.iter().filter(|t| text[t.span.clone()].chars().next().is_some_and(char::is_alphanumeric)).count() < 3 {
            return Vec::new();
        }
        let tagged = self.tag_probs(&toks, self.temperature);
        let mut tags: Vec<usize> = tagged.iter().map(|t| t.0).collect();
        let probs: Vec<f32> = tagged.iter().map(|t| t.1).collect();
        // A lone punctuation or newline token never starts an entity.
        for (i, t) in tags.iter_mut().enumerate() {
            if *t % 2 == 1 && !text[toks[i].span.clone()].chars().next().is_some_and(char::is_alphanumeric) {
                *t = 0;
            }
        }
        spans_of(text, &toks, &tags, &probs)
    }

    /// Greedy tagging: per token, the tag and its softmax probability at temperature `t`.
    #[doc(hidden)]
    pub fn tag_probs(&self, toks: &[Token], t: f32) -> Vec<(usize, f32)> {
        let mut out = Vec::with_capacity(toks.len());
        let mut feats = Vec::with_capacity(64);
        let (mut prev, mut prev2) = (0usize, 0usize);
        for i in 0..toks.len() {
            feats.clear();
            static_features(toks, i, u16::MAX, &mut feats);
            tag_features(toks, i, prev, prev2, &mut feats);
            let mut scores = [0f32; TAGS];
            self.add(&feats, &mut scores);
            let best = valid_best(&scores, prev);
            // Confidence: a logistic of the margin between the chosen tag and the best allowed
            // tag of another entity type (or of none).
            let e = entity(best);
            let other = (0..TAGS)
                .filter(|&x| entity(x) != e && (x == 0 || x % 2 == 1 || prev != 0 && entity(prev) == entity(x)))
                .map(|x| scores[x])
                .fold(f32::MIN, f32::max);
            let p = 1.0 / (1.0 + (-(scores[best] - other) / t).exp());
            out.push((best, p));
            prev2 = prev;
            prev = best;
        }
        out
    }
}

/// The best tag allowed after `prev` (an `I-X` only continues `B-X` or `I-X`).
pub fn valid_best(scores: &[f32; TAGS], prev: usize) -> usize {
    let mut best = 0;
    let mut bv = f32::MIN;
    for (t, &v) in scores.iter().enumerate() {
        let ok = t == 0 || t % 2 == 1 || prev != 0 && entity(prev) == entity(t);
        if ok && v > bv {
            bv = v;
            best = t;
        }
    }
    best
}

/// Drops spans that cannot be what the model says: code (`{`, `=`, `$`, `<`, ... inside), a
/// "date" with neither a digit nor a month name (`tomorrow`, `Monday` alone are not dates of
/// anyone), a name or organisation without a letter.
fn plausible(kind: Kind, s: &str, toks: &[Token]) -> bool {
    if s.contains(['{', '}', '[', ']', '<', '>', '=', '$', '\\', '|', ';', '`', '!', '*', '~', '^']) {
        return false;
    }
    match kind {
        Kind::Date => {
            s.bytes().any(|b| b.is_ascii_digit())
                || toks.iter().any(|t| t.gaz & G_MONTH != 0)
                || ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
                    .iter()
                    .any(|d| s.to_lowercase().contains(d))
        }
        Kind::Person | Kind::Organization => s.chars().any(char::is_alphabetic),
        _ => s.chars().any(char::is_alphanumeric),
    }
}

/// True when a span sits where code has names: a key before `=` or `(`, part of a dotted,
/// snake-case or path identifier (`config.Name`, `user_Name`, `/Users/Name`, `@Name`), a type
/// (`-> Response {`).
fn code_position(text: &str, span: &Range<usize>) -> bool {
    let before = text[..span.start].chars().next_back();
    let rest = &text[span.end..];
    let after = rest.chars().next();
    let next_sign = rest.trim_start_matches([' ', '"', '\'']).chars().next();
    matches!(before, Some('.' | '_' | '/' | '@' | '#' | '$' | '-' | '\\'))
        || matches!(after, Some('_' | '/' | '('))
        || (after == Some('.') && rest[1..].chars().next().is_some_and(char::is_alphanumeric))
        || matches!(next_sign, Some('=' | '(' | '{'))
        || text[..span.start].trim_end().ends_with("->")
}

/// Product and vendor names that agent harnesses and their users write in every prompt
/// (`You are Claude Code, Anthropic's official CLI for Claude`, `Build Steps for Windows`):
/// the assistant's, its maker's and the platforms' names are not anyone's personal data.
/// Lower case.
const PRODUCT_NAMES: &[&str] = &[
    "claude",
    "anthropic",
    "openai",
    "chatgpt",
    "gpt",
    "codex",
    "gemini",
    "google",
    "copilot",
    "github",
    "microsoft",
    "cursor",
    "llama",
    "meta",
    "mistral",
    "ollama",
    "triage",
    "code",
    "cli",
    "sdk",
    "api",
    "ai",
    "windows",
    "linux",
    "macos",
    "ubuntu",
    "debian",
    "docker",
    "kubernetes",
    "postgres",
    "postgresql",
    "mysql",
    "redis",
    "python",
    "rust",
    "node",
    "npm",
    "git",
    "aws",
    "azure",
    "gcp",
    "slack",
    "jira",
    "chrome",
    "firefox",
    "safari",
    "android",
    "ios",
    "xcode",
    "vscode",
    "terraform",
    "nginx",
    "react",
    "markdown",
    "commonmark",
    "json",
    "yaml",
];

/// Well-known cities (capitals and large cities, and the words of their names), lower case:
/// a span of nothing but place names (`Tokyo`, `Tokyo 25C`) is a location, not a person or an
/// organisation. Countries come from the gazetteer. A word that is also a first name (`Sydney`,
/// `Florence`) does not count as a place.
const PLACES: &[&str] = &[
    "ababa",
    "abu",
    "abuja",
    "accra",
    "addis",
    "adelaide",
    "aires",
    "alexandria",
    "algiers",
    "almaty",
    "amman",
    "amsterdam",
    "anchorage",
    "angeles",
    "ankara",
    "antananarivo",
    "antwerp",
    "astana",
    "asuncion",
    "asunción",
    "athens",
    "atlanta",
    "auckland",
    "baghdad",
    "baku",
    "baltimore",
    "bangalore",
    "bangkok",
    "barcelona",
    "basel",
    "beijing",
    "beirut",
    "belfast",
    "belgrade",
    "bengaluru",
    "bergen",
    "berlin",
    "bern",
    "birmingham",
    "bishkek",
    "bogota",
    "bogotá",
    "bordeaux",
    "boston",
    "brasilia",
    "brasília",
    "bratislava",
    "brisbane",
    "brooklyn",
    "brussels",
    "bucharest",
    "budapest",
    "buenos",
    "busan",
    "cairo",
    "calgary",
    "canberra",
    "caracas",
    "cardiff",
    "casablanca",
    "chennai",
    "chicago",
    "christchurch",
    "cleveland",
    "cologne",
    "colombo",
    "copenhagen",
    "dakar",
    "dallas",
    "damascus",
    "delhi",
    "denver",
    "detroit",
    "dhabi",
    "dhaka",
    "diego",
    "doha",
    "dresden",
    "dubai",
    "dublin",
    "durban",
    "dusseldorf",
    "düsseldorf",
    "edinburgh",
    "francisco",
    "frankfurt",
    "geneva",
    "glasgow",
    "gothenburg",
    "guadalajara",
    "guangzhou",
    "hamburg",
    "hanoi",
    "harare",
    "havana",
    "helsinki",
    "hong",
    "honolulu",
    "houston",
    "hyderabad",
    "islamabad",
    "istanbul",
    "jakarta",
    "janeiro",
    "jeddah",
    "jerusalem",
    "johannesburg",
    "jose",
    "kabul",
    "kampala",
    "karachi",
    "kathmandu",
    "khartoum",
    "kiev",
    "kigali",
    "kinshasa",
    "kolkata",
    "kong",
    "krakow",
    "kuala",
    "kuwait",
    "kyiv",
    "kyoto",
    "lagos",
    "lahore",
    "leeds",
    "leipzig",
    "lima",
    "lisbon",
    "liverpool",
    "ljubljana",
    "london",
    "los",
    "luanda",
    "lumpur",
    "lusaka",
    "luxembourg",
    "lyon",
    "madrid",
    "manchester",
    "manhattan",
    "manila",
    "maputo",
    "marseille",
    "medellin",
    "medellín",
    "melbourne",
    "mexico",
    "miami",
    "milan",
    "minneapolis",
    "minsk",
    "monterrey",
    "montevideo",
    "montreal",
    "moscow",
    "mumbai",
    "munich",
    "muscat",
    "nairobi",
    "naples",
    "nashville",
    "nice",
    "oakland",
    "orlando",
    "osaka",
    "oslo",
    "ottawa",
    "paris",
    "paulo",
    "perth",
    "petersburg",
    "philadelphia",
    "phoenix",
    "pittsburgh",
    "portland",
    "porto",
    "prague",
    "pretoria",
    "pyongyang",
    "quebec",
    "quito",
    "rabat",
    "reykjavik",
    "riga",
    "rio",
    "riyadh",
    "rome",
    "rotterdam",
    "sacramento",
    "salvador",
    "san",
    "santiago",
    "sao",
    "sarajevo",
    "seattle",
    "seoul",
    "seville",
    "shanghai",
    "shenzhen",
    "singapore",
    "skopje",
    "sofia",
    "stockholm",
    "stuttgart",
    "são",
    "taipei",
    "tallinn",
    "tampa",
    "tashkent",
    "tbilisi",
    "tehran",
    "tirana",
    "tokyo",
    "toronto",
    "toulouse",
    "tripoli",
    "tunis",
    "turin",
    "utrecht",
    "valencia",
    "vancouver",
    "venice",
    "vienna",
    "vilnius",
    "warsaw",
    "washington",
    "wellington",
    "yerevan",
    "yokohama",
    "york",
    "zagreb",
    "zurich",
    "zürich",
];

/// True when [`PLACES`] is sorted (its look-up is a binary search).
#[doc(hidden)]
pub fn places_sorted() -> bool {
    PLACES.windows(2).all(|w| w[0] < w[1])
}

/// True when `t` is a place name and not a first name.
fn place(text: &str, t: &Token) -> bool {
    t.gaz & G_FIRST == 0
        && (t.gaz & G_COUNTRY != 0 || PLACES.binary_search(&text[t.span.clone()].to_lowercase().as_str()).is_ok())
}

/// True when the words of a person or organisation span can be a name: in a script with case,
/// at least one word starts with a capital letter or every word is a known first or last name
/// (`lorem ipsum`, `line one`, `alpha beta` are not names; `aksel kristensen` is), not every
/// word is a product or vendor name ([`PRODUCT_NAMES`]) and not every word is a place
/// ([`PLACES`], countries).
fn name_like(text: &str, toks: &[Token]) -> bool {
    let words: Vec<&Token> =
        toks.iter().filter(|t| text[t.span.clone()].chars().next().is_some_and(char::is_alphabetic)).collect();
    let cased = words.iter().any(|t| text[t.span.clone()].chars().any(|c| c.is_lowercase() || c.is_uppercase()));
    if cased
        && !words.iter().any(|t| text[t.span.clone()].chars().next().is_some_and(char::is_uppercase))
        && !words.iter().all(|t| t.gaz & (G_FIRST | G_LAST) != 0)
    {
        return false;
    }
    !words.iter().all(|t| {
        let w = text[t.span.clone()].to_lowercase();
        let w = w.trim_end_matches("'s").trim_end_matches("’s");
        PRODUCT_NAMES.contains(&w)
    }) && !words.iter().all(|t| place(text, t))
}

/// Joins BIO tags into spans; trailing punctuation and newlines are not part of an entity.
fn spans_of(text: &str, toks: &[Token], tags: &[usize], probs: &[f32]) -> Vec<(Kind, Range<usize>, f32)> {
    let mut out = Vec::new();
    // Address spans (first and last token, confidence): the tagger often splits an address into
    // parts (`2060`, `Avenida Otoniel Dutra 1277`, `Suite 829`, `Salvador`, `Brazil 10988`).
    let mut addresses: Vec<(usize, usize, f32)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = tags[i];
        if t == 0 {
            i += 1;
            continue;
        }
        let e = entity(t);
        let mut j = i + 1;
        while j < toks.len() && tags[j] != 0 && tags[j].is_multiple_of(2) && entity(tags[j]) == e {
            j += 1;
        }
        // Trim trailing tokens that are not letters or digits.
        let mut last = j - 1;
        while last > i && !text[toks[last].span.clone()].chars().next().is_some_and(char::is_alphanumeric) {
            last -= 1;
        }
        let conf = probs[i..=last].iter().sum::<f32>() / (last - i + 1) as f32;
        let span = toks[i].span.start..toks[last].span.end;
        let span_toks = &toks[i..=last];
        if let Some(k) = kind_of(e).filter(|k| {
            plausible(*k, &text[span.clone()], span_toks)
                && match k {
                    Kind::Person | Kind::Organization => {
                        !code_position(text, &span)
                            && name_like(text, span_toks)
                            && filters::name_shaped(text, &span, span_toks, *k == Kind::Person)
                    }
                    // Judged below, as a block with the address parts around it.
                    Kind::Address => {
                        addresses.push((i, last, conf));
                        false
                    }
                    Kind::Date => filters::date_like(text, span_toks) && !filters::session_date(text, &span),
                    _ => true,
                }
        }) {
            out.push((k, span, conf));
        }
        i = j;
    }
    // Parts separated only by spaces, punctuation and line breaks form one block; a block is
    // reported when, as a whole, it has the shape of an address.
    let mut k = 0;
    while k < addresses.len() {
        let mut m = k;
        while m + 1 < addresses.len() {
            let gap = &text[toks[addresses[m].1].span.end..toks[addresses[m + 1].0].span.start];
            if gap.len() <= 12 && !gap.chars().any(char::is_alphanumeric) {
                m += 1;
            } else {
                break;
            }
        }
        if filters::address_like(text, toks, addresses[k].0, addresses[m].1) {
            for &(a, b, conf) in &addresses[k..=m] {
                out.push((Kind::Address, toks[a].span.start..toks[b].span.end, conf));
            }
        }
        k = m + 1;
    }
    out.sort_by_key(|f| f.1.start);
    out
}

/// Training (used by the `train_guard_ner` example; deterministic for a given input and seed).
#[doc(hidden)]
pub mod train {
    use super::*;

    /// One sentence: its text and tag per token.
    pub struct Example {
        /// Tokens of the text.
        pub toks: Vec<Token>,
        /// Gold tag ids.
        pub tags: Vec<usize>,
    }

    /// Tags each token from labelled byte spans (`label` in PER, ADDR, DATE, ORG).
    pub fn example(text: &str, spans: &[(usize, usize, String)]) -> Example {
        let toks = tokenize(text);
        let mut tags = vec![0usize; toks.len()];
        for (a, b, label) in spans {
            let mut first = true;
            for (t, tok) in toks.iter().enumerate() {
                if tok.span.start >= *a && tok.span.end <= *b {
                    tags[t] = tag_of(label, first);
                    first = false;
                }
            }
        }
        Example { toks, tags }
    }

    /// Averaged perceptron over `epochs` passes; returns the serialized model (header + i16).
    pub fn train(data: &[&Example], epochs: usize, seed: u64) -> Vec<u8> {
        let n = BUCKETS * TAGS;
        let mut w = vec![0f32; n];
        let mut total = vec![0f64; n];
        let mut stamp = vec![0u64; n];
        let mut clock: u64 = 0;
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = seed | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut feats = Vec::with_capacity(64);
        for _ in 0..epochs {
            for i in (1..order.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            for &k in &order {
                let ex = data[k];
                let (mut prev, mut prev2) = (0usize, 0usize);
                for i in 0..ex.toks.len() {
                    clock += 1;
                    // Drop the gazetteer for a third of the tokens: names not in the lists must
                    // still be found from their context.
                    let mask = if next() % 3 == 0 { 0 } else { u16::MAX };
                    feats.clear();
                    static_features(&ex.toks, i, mask, &mut feats);
                    tag_features(&ex.toks, i, prev, prev2, &mut feats);
                    let mut scores = [0f32; TAGS];
                    for &f in &feats {
                        let o = f as usize * TAGS;
                        for t in 0..TAGS {
                            scores[t] += w[o + t];
                        }
                    }
                    let guess = valid_best(&scores, prev);
                    let gold = ex.tags[i];
                    if guess != gold {
                        for &f in &feats {
                            for (t, d) in [(gold, 1f32), (guess, -1f32)] {
                                let o = f as usize * TAGS + t;
                                total[o] += f64::from(w[o]) * (clock - stamp[o]) as f64;
                                stamp[o] = clock;
                                w[o] += d;
                            }
                        }
                    }
                    // Teacher forcing on the previous tags.
                    prev2 = prev;
                    prev = gold;
                }
            }
        }
        let avg: Vec<f32> = (0..n)
            .map(|o| {
                let t = total[o] + f64::from(w[o]) * (clock - stamp[o]) as f64;
                (t / clock.max(1) as f64) as f32
            })
            .collect();
        let max = avg.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-9);
        let scale = max / 32_767.0;
        let mut out = Vec::with_capacity(HEADER + n * 2);
        out.extend_from_slice(b"TGNR");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        // Temperature: the mean absolute weight times the features per token, a scale for the
        // score differences (set again by the trainer after calibration).
        out.extend_from_slice(&1f32.to_le_bytes());
        for v in avg {
            let q = (v / scale).round().clamp(-32_767.0, 32_767.0) as i16;
            out.extend_from_slice(&q.to_le_bytes());
        }
        out
    }
}
