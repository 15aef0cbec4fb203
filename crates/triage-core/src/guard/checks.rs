//! The checks that turn a pattern match into a finding (or drop it): placeholders, key names,
//! context words before and after, checksums and ranges (via [`super::validate`]), and the span to
//! report. Each is a `Check` of the rule table in `rules.rs`.

use std::ops::Range;

use super::rules::Hit;
use super::validate;

// ---------------------------------------------------------------------------------------------
// Checks.

pub(super) fn accept(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    Some((h.value.clone(), 0.9))
}

/// Token with a documented prefix: reject placeholders (`xxxx`, repeated characters).
pub(super) fn token(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    if validate::is_placeholder(v) {
        return None;
    }
    // The random part after the prefix must not be a single repeated character.
    Some((h.value.clone(), 0.95))
}

/// Token whose random part must carry some entropy (short prefixes such as `key-`).
pub(super) fn token_random(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    // `name.ico-...`: a file name or host part, not a token prefix.
    if h.value.start > 0 && h.text.as_bytes().get(h.value.start - 1) == Some(&b'.') {
        return None;
    }
    if validate::is_placeholder(v) || validate::entropy(v) < 3.0 {
        return None;
    }
    Some((h.value.clone(), 0.85))
}

/// Telegram bot token: bot id, `:`, then exactly 35 characters (`A` + 34) and nothing more of
/// the token alphabet after them (Telegram Bot API, "Authorizing your bot").
pub(super) fn telegram(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let (_, secret) = v.split_once(':')?;
    let next = h.text.as_bytes().get(h.value.end).copied();
    if secret.len() != 35 || next.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
        return None;
    }
    token_random(h)
}

/// Bedrock short-lived API key: `bedrock-api-key-` and base64 of a presigned URL on
/// `bedrock.amazonaws.com`; long-term keys start `ABSK` + base64 of `BedrockAPIKey-`.
pub(super) fn bedrock(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    if let Some(b64) = v.strip_prefix("bedrock-api-key-") {
        let head: String = b64.chars().take(28).collect();
        let decoded = validate::base64url_decode(&head.replace('+', "-").replace('/', "_"))?;
        if !decoded.starts_with(b"bedrock.amazonaws.com") {
            return None;
        }
    }
    token(h)
}

pub(super) fn aws_key_id(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let body = v.get(4..).unwrap_or("");
    // AWS's documented example ids (`AKIAIOSFODNN7EXAMPLE`) are samples, like every other
    // `EXAMPLE` value.
    if body.contains("EXAMPLE") {
        return None;
    }
    Some((h.value.clone(), 0.95))
}

pub(super) fn random_value(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    if validate::looks_random(v, 3.0) {
        Some((h.value.clone(), 0.8))
    } else {
        None
    }
}

pub(super) fn jwt(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str().trim_end_matches('.');
    if !validate::jwt_header(v) {
        return None;
    }
    // An unsigned token (`alg: none`: `header.payload.` or `header.payload`) carries its claims
    // all the same; with no signature the payload must decode to a JSON object too.
    let segs: Vec<&str> = v.split('.').collect();
    if segs.len() < 3 || segs[2].is_empty() {
        let payload = segs.get(1).and_then(|p| validate::base64url_decode(p));
        if !payload.is_some_and(|p| String::from_utf8_lossy(&p).trim_start().starts_with('{')) {
            return None;
        }
    }
    Some((h.value.start..h.value.start + v.len(), 0.95))
}

pub(super) fn private_key(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    // The body (between the armour lines) must hold real base64, not a word.
    let body: usize = v
        .lines()
        .flat_map(|l| l.split("\\n"))
        .filter(|l| !l.starts_with("-----") && !l.contains(':'))
        .map(|l| l.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/').count())
        .sum();
    if body >= 24 {
        Some((h.value.clone(), 0.99))
    } else {
        None
    }
}

pub(super) fn email(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let (local, domain) = v.split_once('@')?;
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") || domain.contains("..") {
        return None;
    }
    // Image names such as `logo@2x.png` are not addresses.
    let tld = domain.rsplit('.').next().unwrap_or("");
    if matches!(
        tld.to_ascii_lowercase().as_str(),
        "png" | "jpg" | "jpeg" | "gif" | "svg" | "webp" | "js" | "css" | "ts"
    ) {
        return None;
    }
    Some((h.value.clone(), 0.95))
}

pub(super) fn digits_of(s: &str) -> String {
    s.bytes().filter(u8::is_ascii_digit).map(char::from).collect()
}

/// Byte before `r.start` and after `r.end`.
pub(super) fn around(text: &str, r: &Range<usize>) -> (u8, u8) {
    let b = text.as_bytes();
    let before = if r.start > 0 { b.get(r.start - 1).copied().unwrap_or(b' ') } else { b' ' };
    let after = b.get(r.end).copied().unwrap_or(b' ');
    (before, after)
}

pub(super) fn card(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let d = digits_of(v);
    if !validate::card_prefix_ok(&d) || !validate::luhn(&d) {
        return None;
    }
    // Separators, if any, must be one kind.
    let seps: Vec<u8> = v.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    let (before, after) = around(h.text, &h.value);
    if before.is_ascii_alphanumeric() || after.is_ascii_alphanumeric() {
        return None;
    }
    if before == b'.' || after == b'.' && h.text.as_bytes().get(h.value.end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if d.bytes().all(|b| b == d.as_bytes()[0]) {
        return None;
    }
    let conf = if seps.is_empty() && !context(h.text, h.whole.start, 40, CARD_WORDS) { 0.7 } else { 0.95 };
    Some((h.value.clone(), conf))
}

pub(super) const CARD_WORDS: &[&str] =
    &["card", "visa", "mastercard", "amex", "cc", "credit", "debit", "payment", "pan"];

pub(super) fn iban(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    // Written in lower case, only a country of the registry with its exact length counts (a
    // random lower-case token passes mod 97 at one of several cut points too often).
    if v.bytes().any(|b| b.is_ascii_lowercase()) {
        let cc = v.as_bytes().get(..2)?.to_ascii_uppercase();
        let len = validate::iban_length(&cc)?;
        let compact: Vec<u8> = v.bytes().filter(|b| *b != b' ').collect();
        if compact.len() < len {
            return None;
        }
    }
    // Try the longest prefix (in whole 1-4 character groups) that passes mod 97.
    let mut end = v.len();
    loop {
        let cand = v.get(..end)?;
        if validate::iban(cand) {
            return Some((h.value.start..h.value.start + end, 0.97));
        }
        // Drop the last group or character.
        let cut = cand.trim_end().rfind(' ').filter(|&i| i >= 8);
        match cut {
            Some(i) if cand.len() - i <= 5 => end = i,
            _ => {
                if end <= 15 {
                    return None;
                }
                end -= 1;
            }
        }
        if end < 15 {
            return None;
        }
    }
}

pub(super) const SSN_WORDS: &[&str] =
    &["ssn", "social security", "social sec", "ss#", "ss #", "ssn#", "tax id", "taxpayer"];

pub(super) fn ssn(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    if !validate::ssn(v) {
        return None;
    }
    let (before, after) = around(h.text, &h.value);
    if before.is_ascii_alphanumeric()
        || after.is_ascii_alphanumeric()
        || matches!(before, b'-' | b'.' | b'/' | b'+')
        || matches!(after, b'-' | b'/')
    {
        return None;
    }
    if after == b'.' && h.text.as_bytes().get(h.value.end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let ctx = context(h.text, h.whole.start, 48, SSN_WORDS);
    let plain = v.bytes().all(|b| b.is_ascii_digit());
    if plain && !ctx {
        return None;
    }
    // `123 45 6789` in running text is often something else; want context for spaces too.
    if v.contains(' ') && !ctx {
        return Some((h.value.clone(), 0.6));
    }
    Some((h.value.clone(), if ctx { 0.95 } else { 0.85 }))
}

pub(super) const VERSION_WORDS: &[&str] =
    &["version", "ver ", "ver.", "v.", "release", "build", "oid", "snmp", "sha", "commit"];

pub(super) fn ipv4(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    let (before, after) = around(h.text, &h.value);
    if before.is_ascii_alphanumeric() || before == b'.' || before == b'v' || before == b'V' {
        return None;
    }
    if after == b'.' && h.text.as_bytes().get(h.value.end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if after.is_ascii_alphanumeric() && after != b'@' {
        return None;
    }
    if context(h.text, h.whole.start, 16, VERSION_WORDS) {
        return None;
    }
    let mut span = h.value.clone();
    if let Some(p) = prefix {
        match p.parse::<u8>() {
            Ok(n) if n <= 32 => {}
            _ => span.end = h.value.start + addr.len(),
        }
    }
    let conf = if ip.is_loopback() || ip.is_unspecified() || ip.is_private() { 0.7 } else { 0.9 };
    Some((span, conf))
}

pub(super) fn ipv6(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let raw = h.value_str();
    let (addr, prefix) = match raw.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (raw, None),
    };
    // A trailing sentence dot or colon is not part of the address.
    let addr = addr.trim_end_matches('.');
    let start = h.value.start + (addr.len() - addr.trim_start_matches('.').len());
    let addr = addr.trim_start_matches('.');
    if addr == "::" || addr.len() < 3 {
        return None;
    }
    let ip: std::net::Ipv6Addr = addr.parse().ok()?;
    let end = start + addr.len();
    let (before, after) = around(h.text, &(start..end));
    if before.is_ascii_alphanumeric() || before == b':' || before == b'_' {
        return None;
    }
    if after.is_ascii_alphanumeric() || after == b'_' {
        return None;
    }
    let groups = addr.split([':', '.']).filter(|g| !g.is_empty()).count();
    let has_digit = addr.bytes().any(|b| b.is_ascii_digit());
    if !has_digit || (groups < 2 && addr != "::1") {
        return None;
    }
    let mut span = start..end;
    // A CIDR suffix belongs to the address when nothing was trimmed before the `/`.
    if let Some(p) = prefix.map(|p| p.trim_end_matches('.')) {
        let whole_addr = raw.split_once('/').map_or("", |(a, _)| a);
        if whole_addr.len() == addr.len() && p.parse::<u8>().is_ok_and(|n| n <= 128) {
            span.end = end + 1 + p.len();
        }
    }
    let conf = if ip.is_loopback() { 0.6 } else { 0.9 };
    Some((span, conf))
}

pub(super) const PHONE_WORDS: &[&str] = &[
    "phone",
    "tel",
    "mobile",
    "cell",
    "fax",
    "desk",
    "office",
    "call",
    "contact",
    "whatsapp",
    "sms",
    "text me",
    "number",
    "dial",
    "reach",
    "messages to",
    "answering at",
    "landline",
    "hotline",
    "handy",
    "telefon",
    "ph:",
    "ph.",
    "mob",
    "registered",
    "no.",
    "#:",
];
pub(super) const PHONE_STRONG: &[&str] = &[
    "phone", "tel", "mobile", "cell", "fax", "desk", "call", "whatsapp", "sms", "text me", "dial", "landline",
    "hotline", "telefon", "ph:", "ph.", "mob",
];
pub(super) const NOT_PHONE: &[&str] = &[
    "license",
    "licence",
    "passport",
    "account",
    "order",
    "invoice",
    "tracking",
    "serial",
    "policy",
    "member",
    "case",
    "ticket",
    "routing",
    "reference",
    "ref",
    "id",
    "zip",
    "postal",
    "route",
    "flight",
    "room",
    "model",
];
pub(super) const PHONE_AFTER: &[&str] =
    &["office", "fax", "mobile", "-office", "-fax", "(office)", "(home)", "(work)", "home", "work", "cell"];

pub(super) fn phone_strong(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let d = digits_of(v);
    if !((8..=15).contains(&d.len()) || v.contains('x') || v.contains("ext")) {
        return None;
    }
    let (before, after) = around(h.text, &h.value);
    if before.is_ascii_alphanumeric() || before == b'.' || before == b'/' || before == b'-' {
        return None;
    }
    if after.is_ascii_digit()
        || (after == b'.' && h.text.as_bytes().get(h.value.end + 1).is_some_and(u8::is_ascii_digit))
    {
        return None;
    }
    if looks_like_date(v) {
        return None;
    }
    Some((h.value.clone(), 0.85))
}

/// A national number with a trunk `0`: 9-12 digits in groups, not a date, a decimal or a
/// version, not next to an identifier's name.
pub(super) fn phone_national(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let d = digits_of(v);
    if !(9..=12).contains(&d.len()) || d.starts_with("00") {
        return None;
    }
    let (before, after) = around(h.text, &h.value);
    if before.is_ascii_alphanumeric() || matches!(before, b'.' | b'/' | b'-' | b'_' | b',' | b':') {
        return None;
    }
    if after.is_ascii_alphanumeric() || matches!(after, b'_' | b'-' | b'/' | b':' | b'%') {
        return None;
    }
    if after == b'.' && h.text.as_bytes().get(h.value.end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    // One kind of separator besides spaces, and not `0.5 0.25`-style decimals.
    let seps: Vec<u8> = v.bytes().filter(|b| !b.is_ascii_digit() && *b != b' ' && *b != b'(' && *b != b')').collect();
    if seps.windows(2).any(|w| w[0] != w[1]) || looks_like_date(v) || v.starts_with("0.") {
        return None;
    }
    if !context(h.text, h.value.start, 40, PHONE_STRONG) && context(h.text, h.value.start, 40, NOT_PHONE) {
        return None;
    }
    Some((h.value.clone(), 0.65))
}

pub(super) fn phone_context(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let d = digits_of(v);
    if !(7..=15).contains(&d.len()) {
        return None;
    }
    let (before, after) = around(h.text, &h.value);
    if before.is_ascii_alphanumeric() || before == b'.' || before == b'/' || before == b'-' || before == b'_' {
        return None;
    }
    if after.is_ascii_alphanumeric() && after != b'x' || after == b'_' {
        return None;
    }
    if after == b'.' && h.text.as_bytes().get(h.value.end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if looks_like_date(v)
        || v.bytes().filter(|b| *b == b'.').count() == 3
            && d.len() <= 12
            && !v.contains(' ')
            && v.split('.').all(|g| g.len() <= 3)
            && v.split('.').count() == 4
    {
        return None;
    }
    let strong = context(h.text, h.value.start, 40, PHONE_STRONG);
    let ctx_before = strong || context(h.text, h.value.start, 40, PHONE_WORDS);
    let ctx_after = context_after(h.text, h.value.end, 14, PHONE_AFTER);
    if !(ctx_before || ctx_after) {
        return None;
    }
    // "license number 1234567": a weak word next to another identifier's name.
    if !strong && !ctx_after && context(h.text, h.value.start, 40, NOT_PHONE) {
        return None;
    }
    Some((h.value.clone(), 0.7))
}

pub(super) fn looks_like_date(v: &str) -> bool {
    let parts: Vec<&str> = v.split(['-', '/', '.']).collect();
    if parts.len() == 3 && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        return matches!(
            lens.as_slice(),
            [4, 2, 2] | [2, 2, 4] | [1, 2, 4] | [2, 1, 4] | [1, 1, 4] | [4, 1, 1] | [4, 1, 2] | [4, 2, 1]
        );
    }
    false
}

pub(super) const DOB_WORDS: &[&str] =
    &["born", "birth", "dob", "d.o.b", "birthday", "geboren", "né le", "née le", "date of birth", "age"];

pub(super) fn dob(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    if context(h.text, h.value.start, 40, DOB_WORDS) {
        Some((h.value.clone(), 0.8))
    } else {
        None
    }
}

pub(super) fn street(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    Some((h.value.clone(), 0.75))
}

pub(super) fn name_ctx(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let first = v.split_whitespace().next().unwrap_or("");
    let lower = first.to_lowercase();
    if NOT_NAMES.contains(&lower.as_str()) {
        return None;
    }
    Some((h.value.clone(), 0.7))
}

pub(super) const NOT_NAMES: &[&str] = &[
    "the",
    "a",
    "an",
    "this",
    "that",
    "my",
    "your",
    "our",
    "sir",
    "madam",
    "team",
    "all",
    "customer",
    "friend",
    "friends",
    "colleagues",
    "user",
    "admin",
    "there",
    "here",
    "is",
    "and",
    "or",
    "not",
    "it",
    "to",
    "please",
    "thanks",
    "hi",
    "hello",
    "valued",
    "we",
    "i",
    "you",
    "they",
    "he",
    "she",
    "string",
    "none",
    "null",
    "true",
    "false",
    "required",
    "optional",
    "field",
    "value",
];

/// True when the credential at `value` is a documentation placeholder: it sits inside `<...>`,
/// `[...]` or `{...}` (`<user:password>`, `https://[USER]:[PASSWORD]@host`), or it is a word
/// such as `password`, `YOUR_PASSWORD`, `db-pass`.
pub(super) fn credential_placeholder(text: &str, value: &Range<usize>) -> bool {
    let v = text.get(value.clone()).unwrap_or("");
    if validate::is_placeholder(v) {
        return true;
    }
    let b = text.as_bytes();
    // The token around the value: back to whitespace, a quote or `=`.
    let mut s = value.start;
    while s > 0 && !matches!(b[s - 1], b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'`' | b'=') {
        s -= 1;
    }
    let opener = text.get(s..value.start).unwrap_or("").bytes().find(|c| matches!(c, b'<' | b'[' | b'{'));
    let closer = v.bytes().chain(b.get(value.end).copied()).any(|c| matches!(c, b'>' | b']' | b'}'));
    if opener.is_some() && closer {
        return true;
    }
    let word = v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_ascii_lowercase();
    word.bytes().all(|c| c.is_ascii_lowercase() || matches!(c, b'_' | b'-' | b'.'))
        && ["pass", "pwd", "secret", "your", "token", "user", "changeit"].iter().any(|w| word.contains(w))
}

pub(super) fn db_url(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    if credential_placeholder(h.text, &h.value)
        || matches!(v.to_ascii_lowercase().as_str(), "password" | "pass" | "pwd" | "secret" | "passwd")
    {
        return None;
    }
    if v.starts_with('$') || v.starts_with('{') || v.starts_with('<') || v.starts_with('%') {
        return None;
    }
    Some((h.value.clone(), 0.9))
}

/// `password = "..."`: any literal that is not a placeholder, an empty string or a reference.
pub(super) fn password(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let (before, _) = around(h.text, &h.value);
    let quoted = matches!(before, b'"' | b'\'' | b'`');
    let raw = h.value_str();
    let v = if quoted { raw } else { raw.trim_end_matches([';', ',', ')', '.']) };
    let span = h.value.start..h.value.start + v.len();
    if v.len() < if quoted { 4 } else { 6 } || v.len() > 200 || credential_placeholder(h.text, &span) {
        return None;
    }
    // `<db-password>@host`: the host part of a URL after a placeholder, not a value.
    if !quoted && v.starts_with('@') {
        return None;
    }
    // A quoted value may hold spaces (a passphrase), but not a sentence addressed to a reader
    // (`"Enter your password"`); unquoted, a space ends the value.
    if v.contains(' ') {
        let l = v.to_ascii_lowercase();
        if !quoted
            || ["your ", "enter ", "must ", "please", "the ", " is ", " at least", "should "]
                .iter()
                .any(|w| l.contains(w))
        {
            return None;
        }
    }
    if !key_may_hold_secret(h, v) {
        return None;
    }
    let lower = v.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "password" | "passwd" | "secret" | "required" | "optional" | "string" | "true" | "false"
    ) {
        return None;
    }
    if !quoted && is_code_reference(v) {
        return None;
    }
    if !quoted && unquoted_code_expression(h.text, &h.value) {
        return None;
    }

    // Punctuation only (`,.:-¨@*¿?!`): a constant list of symbols, not a credential.
    if !v.chars().any(char::is_alphanumeric) {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && v.contains('_') {
        return None;
    }
    let conf = if validate::entropy(v) >= 3.0 { 0.85 } else { 0.6 };
    Some((span, conf))
}

/// True when an unquoted value sits where code has an expression, not a literal: after `=>`
/// (a PHP, Ruby or Perl hash entry: `'password' => m{{h}o)p...`; a literal there is quoted),
/// or as the whole right-hand side of a statement that ends the line with `;` (`passwd =
/// m{{h}o)p...;`, `private_key = compute_key(x);` in C-like code). A `key=value;` list
/// (`Server=db;Password=s3cr3t;`) is not code: it has an earlier `;` on the line.
fn unquoted_code_expression(text: &str, value: &Range<usize>) -> bool {
    let head = text.get(..value.start).unwrap_or("").trim_end();
    if head.ends_with("=>") {
        return true;
    }
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[value.start..].find('\n').map_or(text.len(), |i| value.start + i);
    let line = &text[line_start..line_end];
    let before = &text[line_start..value.start];
    line.trim_end().ends_with(';') && !before.contains(';') && line.matches(';').count() == 1
}

/// True when an unquoted value is code that refers to a value held elsewhere, not a literal: an
/// identifier or a member path (`var.db_password`, `config.db.pass_2`, `settings["pw"]`,
/// `Self::PASSWORD`), a call (`getenv("PW")`, `vault.read(...)`), a shell substitution or
/// variable (`$(cat /run/secrets/x)`, `` `cat f` ``, `${PW}`, `$PW`), or a file path.
pub(super) fn is_code_reference(v: &str) -> bool {
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'@';
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let b = v.as_bytes();
    if b.is_empty() {
        return true;
    }
    if v.starts_with('$') || v.starts_with('`') || v.starts_with('/') || v.starts_with("./") || v.starts_with("~/") {
        return true;
    }
    if v.starts_with("os.") || v.starts_with("process.") || v.starts_with("env") {
        return true;
    }
    // Plain words: `hunter_two`, `db-pass` (letters only) read as a name.
    if b.iter().all(|&c| c.is_ascii_alphabetic() || matches!(c, b'_' | b'.' | b'-')) {
        return true;
    }
    if !ident_start(b[0]) {
        return false;
    }
    // A path of identifiers joined by `.`, `::` or `->`, with `[...]` indexes and a call at the
    // end; an identifier with digits must be part of a path or a call (`pass2word` alone may be
    // a literal).
    let mut i = 0;
    let mut joins = 0;
    while i < b.len() {
        let c = b[i];
        if ident(c) {
            i += 1;
        } else if c == b'.' && b.get(i + 1).is_some_and(|&n| ident_start(n)) {
            joins += 1;
            i += 1;
        } else if v[i..].starts_with("::") || v[i..].starts_with("->") {
            joins += 1;
            i += 2;
        } else if c == b'[' {
            // `creds["db"]`: the value stops at the quote, so an open `[` ends a path too.
            let Some(close) = v[i..].find(']') else { return i + 1 == v.len() };
            joins += 1;
            i += close + 1;
        } else {
            return c == b'(';
        }
    }
    joins > 0
}

/// A value next to a key-like name: must look random.
pub(super) fn keyed_secret(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let v_trim = v.trim_end_matches(['.', ')', ']', '}', '>', '\'', '"']);
    let value = h.value.start..h.value.start + v_trim.len();
    if v_trim.len() < 10
        || v_trim.len() > 300
        || validate::is_placeholder(v_trim)
        || v_trim.contains(char::is_whitespace)
    {
        return None;
    }
    if !key_may_hold_secret(h, v_trim) || (validate::is_wordy(v_trim) && !v_trim.bytes().any(|b| b.is_ascii_digit())) {
        return None;
    }
    // A time-based (version 1) UUID is made of a clock and a node id: predictable, an
    // identifier (`_authToken=743b294a-cd03-11ec-...`), never a secret.
    if is_uuid(v_trim) && v_trim.as_bytes().get(14) == Some(&b'1') {
        return None;
    }
    // The value is itself a name of a key (`chain_Anvil2_Key`, `apiToken`): an identifier.
    if names_a_key(v_trim) {
        return None;
    }
    // A value cut short for display (`ops_eyJ...`, `abc..[Redacted]`) is not the secret.
    if h.text.get(value.end..).is_some_and(|rest| rest.starts_with("..")) {
        return None;
    }
    if has_version_number(v_trim) {
        return None;
    }
    // Host names and file names.
    if let Some((_, ext)) = v_trim.rsplit_once('.') {
        let ext_l = ext.to_ascii_lowercase();
        if (2..=4).contains(&ext.len())
            && ext.bytes().all(|b| b.is_ascii_alphabetic())
            && (matches!(
                ext_l.as_str(),
                "com"
                    | "org"
                    | "net"
                    | "io"
                    | "pem"
                    | "cer"
                    | "crt"
                    | "key"
                    | "json"
                    | "yaml"
                    | "yml"
                    | "txt"
                    | "png"
                    | "jpg"
                    | "local"
                    | "internal"
                    | "dev"
                    | "xml"
                    | "html"
                    | "js"
                    | "ts"
                    | "py"
                    | "rs"
                    | "go"
            ) || v_trim.matches('.').count() >= 2)
        {
            return None;
        }
    }
    // URLs, paths, versions, dotted identifiers and plain words are not secrets.
    if v_trim.contains("://") || v_trim.starts_with('/') || v_trim.starts_with("./") {
        return None;
    }
    let (lo, up, di, other) = validate::classes(v_trim);
    let ent = validate::entropy(v_trim);
    // Digits only: long numeric ids (bot ids, client ids) count when 16+ digits.
    if lo + up == 0 {
        return if di >= 16 && other == 0 && ent >= 2.5 { Some((value, 0.6)) } else { None };
    }
    if di == 0 && validate::looks_like_identifier(v_trim) {
        return None;
    }
    if di == 0 && up == 0 && other == 0 && v_trim.len() < 20 {
        return None;
    }
    if is_version_like(v_trim) {
        return None;
    }
    if ent < 3.0 {
        return None;
    }
    let conf = if ent >= 4.0 { 0.85 } else { 0.7 };
    Some((value, conf))
}

/// The key name of an assignment: identifier characters at the start of the match, lower case.
pub(super) fn key_name(h: &Hit<'_>) -> String {
    h.text
        .get(h.whole.start..h.value.start)
        .unwrap_or("")
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Key-name prefixes of test doubles.
const TEST_DOUBLE: &[&str] =
    &["nonmatching", "non_matching", "fake", "dummy", "mock", "invalid", "notreal", "not_real", "bogus", "sample"];

/// False for key names that hold public or structural values (`public_key`, `primaryKey`,
/// `key_name`, `kms_key_id` with a UUID).
pub(super) fn key_may_hold_secret(h: &Hit<'_>, value: &str) -> bool {
    let key = key_name(h);
    const ENDS: &[&str] = &[
        "name",
        "file",
        "path",
        "url",
        "uri",
        "size",
        "length",
        "len",
        "type",
        "event",
        "pressed",
        "hash",
        "alias",
        "version",
        "signatures",
        "pair",
        "format",
        "source",
        "store",
        "ref",
        "mode",
        "class",
        "count",
        "index",
    ];
    const CONTAINS: &[&str] = &[
        "public",
        "pubkey",
        "pub_key",
        "foreign",
        "primary",
        "schema",
        "sortkey",
        "sort_key",
        "partition",
        "bucket_key",
        "bucketkey",
        "cache",
        "idx",
        "keyboard",
        "keycode",
        "keypress",
        "keying",
        "keyword",
        "monkey",
        "hotkey",
        "keyframe",
        "turkey",
        "donkey",
        "jockey",
        "hockey",
        "whiskey",
        "keynote",
        "keyspace",
        "keystroke",
    ];
    if ENDS.iter().any(|w| key.ends_with(w)) || CONTAINS.iter().any(|w| key.contains(w)) {
        return false;
    }
    // A name that says the value is a test double (`nonMatchingToken`, `fake_api_key`,
    // `dummySecret`, `invalid_token`, `mock_key`): a fixture, not a credential.
    if TEST_DOUBLE.iter().any(|w| key.starts_with(w)) {
        return false;
    }
    !((key.ends_with("id") || key.ends_with("ids")) && is_uuid(value))
}

/// True when `v` is an identifier that names a key (`chain_Anvil2_Key`, `DB_PASSWORD`,
/// `apiToken`): letters, digits and `_`, ending in a key word after `_` or a capital.
pub(super) fn names_a_key(v: &str) -> bool {
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return false;
    }
    let b = v.as_bytes();
    ["key", "token", "secret", "password", "passwd"].iter().any(|w| {
        let at = v.len().saturating_sub(w.len());
        let after_underscore = at > 0 && b[at - 1] == b'_';
        let camel_hump = at > 0 && b[at].is_ascii_uppercase() && b[at + 1].is_ascii_lowercase();
        v.len() > w.len() && v.to_ascii_lowercase().ends_with(w) && (after_underscore || camel_hump)
    })
}

/// `1.2.3`-style version numbers inside a value.
pub(super) fn has_version_number(v: &str) -> bool {
    let b = v.as_bytes();
    b.windows(5).any(|w| {
        w[0].is_ascii_digit()
            && w[1] == b'.'
            && w[2].is_ascii_digit()
            && (w[3] == b'.' || (w[3].is_ascii_digit() && w[4] == b'.'))
    })
}

pub(super) fn is_uuid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(super) fn discord(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let first = v.split('.').next().unwrap_or("");
    let decoded = validate::base64url_decode(first)?;
    let digits = decoded.iter().filter(|b| b.is_ascii_digit()).count();
    if decoded.len() >= 15 && digits * 10 >= decoded.len() * 7 {
        Some((h.value.clone(), 0.9))
    } else {
        None
    }
}

pub(super) fn k8s_data(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let decoded = validate::base64url_decode(v)?;
    let has_digit_or_pad = v.bytes().any(|b| b.is_ascii_digit() || b == b'=' || b == b'+');
    if decoded.len() < 8 || !has_digit_or_pad || validate::is_placeholder(v) {
        return None;
    }
    Some((h.value.clone(), 0.8))
}

pub(super) fn is_version_like(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    l.contains("snapshot") || l.contains("-rc") || l.starts_with("rc0") || l.starts_with("v1.") || l.contains("release")
}

/// True when one of `words` (lower-case ASCII) ends within `window` bytes before `at`.
pub(crate) fn context(text: &str, at: usize, window: usize, words: &[&str]) -> bool {
    let start = floor_boundary(text, at.saturating_sub(window));
    let Some(slice) = text.get(start..at.min(text.len())) else { return false };
    let lower = slice.to_ascii_lowercase();
    words.iter().any(|w| contains_word_start(&lower, w))
}

/// True when `w` occurs in `hay` at a word start (not preceded by an ASCII letter or digit).
pub(super) fn contains_word_start(hay: &str, w: &str) -> bool {
    let hb = hay.as_bytes();
    let mut from = 0;
    while let Some(off) = hay.get(from..).and_then(|h| h.find(w)) {
        let at = from + off;
        if at == 0 || !hb[at - 1].is_ascii_alphanumeric() {
            return true;
        }
        from = at + 1;
    }
    false
}

pub(super) fn context_after(text: &str, at: usize, window: usize, words: &[&str]) -> bool {
    let end = ceil_boundary(text, (at + window).min(text.len()));
    let Some(slice) = text.get(at.min(text.len())..end) else { return false };
    let lower = slice.to_ascii_lowercase();
    let t = lower.trim_start();
    words.iter().any(|w| t.starts_with(w))
}

pub(crate) fn floor_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(super) fn ceil_boundary(text: &str, mut i: usize) -> usize {
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

pub(super) fn gitlab(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let v = v.strip_prefix("_gitlab_session=").unwrap_or(v);
    let start = h.value.end - v.len();
    let tail = v.split_once('-').map(|(_, t)| t).unwrap_or(v);
    if validate::is_placeholder(tail) || validate::is_wordy(tail) || validate::entropy(tail) < 3.0 {
        return None;
    }
    Some((start..h.value.end, 0.95))
}

pub(super) fn slack(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    let tail = v.get(5..).unwrap_or("");
    if v.starts_with("hooks.") {
        return if validate::is_placeholder(v) { None } else { Some((h.value.clone(), 0.95)) };
    }
    if validate::is_placeholder(tail)
        || validate::is_wordy(tail)
        || !tail.bytes().any(|b| b.is_ascii_digit())
        || tail.len() < 14
        || !tail.bytes().any(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    Some((h.value.clone(), 0.95))
}

pub(super) fn curl_user(h: &Hit<'_>) -> Option<(Range<usize>, f32)> {
    let v = h.value_str();
    if credential_placeholder(h.text, &h.value) || v.starts_with('$') || v.contains("${") || v.contains("{{") {
        return None;
    }
    let lower = v.to_ascii_lowercase();
    if matches!(lower.as_str(), "password" | "pass" | "test" | "secret") {
        return None;
    }
    Some((h.value.clone(), 0.8))
}
