//! Checks that turn a pattern match into a finding: checksums (Luhn, ISO 7064 mod 97), number
//! ranges (US SSN areas), Shannon entropy, placeholder detection and a small base64url decoder
//! for JWT headers. All functions are pure, allocation-free unless noted, and never panic.

/// Luhn (mod 10) check over the ASCII digits of `s`; other bytes (spaces, dashes) are skipped.
///
/// Source: ISO/IEC 7812-1 annex B. Returns false when `s` holds no digit.
pub fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for b in s.bytes().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if n % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

/// True when the digits of a card candidate start with an issuer prefix of a payment network
/// (Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37, Diners 30/36/38/39, Discover/UnionPay/
/// Maestro 6, Maestro 50/56-58, JCB 35/1800/2131, UATP 1 with 15 digits) and the length fits
/// (12-19 digits). Source: the networks' public IIN ranges (ISO/IEC 7812).
pub fn card_prefix_ok(digits: &str) -> bool {
    let b = digits.as_bytes();
    let len = b.len();
    if !(12..=19).contains(&len) {
        return false;
    }
    let p2 = digits.get(..2).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    let p4 = digits.get(..4).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    match b[0] {
        b'4' => len >= 13,
        b'5' => true,
        b'6' => true,
        b'3' => matches!(p2, 30 | 34 | 35 | 36 | 37 | 38 | 39) && len >= 14,
        b'2' => (2221..=2720).contains(&p4) || p4 == 2131 || p4 == 2014 || p4 == 2149,
        b'1' => p4 == 1800 || len == 15,
        _ => false,
    }
}

/// ISO 13616 IBAN check: country code, two check digits, then mod 97 of the rearranged number
/// equals 1 (ISO 7064 MOD 97-10). Spaces are ignored; letters may be either case. When the
/// country is in [`iban_length`]'s table the length must match it.
pub fn iban(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').map(|b| b.to_ascii_uppercase()).collect();
    if compact.len() < 15 || compact.len() > 34 {
        return false;
    }
    if !compact[..2].iter().all(u8::is_ascii_uppercase) || !compact[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    if let Some(len) = iban_length(&compact[..2]) {
        if compact.len() != len {
            return false;
        }
    }
    let mut rem = 0u32;
    for &b in compact[4..].iter().chain(compact[..4].iter()) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

/// IBAN length of a country (ISO 13616 registry, as published by SWIFT), `None` when the country
/// is not in this table (then any length 15-34 is accepted).
pub fn iban_length(cc: &[u8]) -> Option<usize> {
    let n = match cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    };
    Some(n)
}

/// US Social Security Number structure check on the 9 digits of `s` (separators skipped): area
/// not 000, 666 or 900-999, group not 00, serial not 0000 (SSA, "Social Security Number
/// Randomization", 2011), and not one of the widely published sample numbers (078-05-1120,
/// 219-09-9999, 123-45-6789).
pub fn ssn(s: &str) -> bool {
    let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    if d.len() != 9 {
        return false;
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return false;
    }
    let all: u32 = d.iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    !matches!(all, 78_051_120 | 219_099_999 | 123_456_789)
}

/// Shannon entropy of the bytes of `s`, in bits per byte (0 for an empty string).
pub fn entropy(s: &str) -> f32 {
    let b = s.as_bytes();
    if b.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &x in b {
        counts[usize::from(x)] += 1;
    }
    let n = b.len() as f32;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

/// True when `s` looks like a placeholder or a reference rather than a literal secret:
/// runs of `x`/`X`/`*`/`.`/`0`, template syntax (`${...}`, `{{...}}`, `<...>`, `%...%`, `$VAR`),
/// or stock words such as `changeme`, `example`, `your_api_key`.
pub fn is_placeholder(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if is_reference(s) {
        return true;
    }
    if s.contains("xxxx") || s.contains("XXXX") || s.contains("****") || s.contains("....") || s.contains("####") {
        return true;
    }
    const WORDS: [&str; 16] = [
        "example",
        "changeme",
        "placeholder",
        "your_",
        "your-",
        "yourapikey",
        "dummy",
        "redacted",
        "replace",
        "insert",
        "undefined",
        "null",
        "none",
        "todo",
        "notreal",
        "fake",
    ];
    if WORDS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    // One repeated character, or very few distinct ones in a long string.
    let b = s.as_bytes();
    let distinct = {
        let mut seen = [false; 256];
        let mut n = 0;
        for &x in b {
            if !seen[usize::from(x)] {
                seen[usize::from(x)] = true;
                n += 1;
            }
        }
        n
    };
    distinct <= 2 || (b.len() >= 16 && distinct <= 4) || is_alphabet(s) || has_sample_run(s)
}

/// True when `s` holds a run of twelve or more consecutive ascending letters or digits
/// (`abcdefghijklmnopqrstuvwxyz`, `klmnopqrstuvwx`), which a random value practically never
/// has (about one chance in 62^11 per position): documentation samples are written this way.
/// Shorter runs (`12345678-ABCD-...`) are not enough: labelled secret examples use them.
///
/// Counting ignores case (`klMnopqrstuvwx`) and goes on from `9` to `0` or `a`
/// (`1234567890abcdef`, `123456789012345678`). A value that is mostly one such run
/// (`xoxp-1234567890`: a run of 8 or more covering half its letters and digits) is a sample too.
pub fn has_sample_run(s: &str) -> bool {
    let follows = |a: u8, b: u8| {
        let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
        a.is_ascii_alphanumeric() && (b == a + 1 && a != b'9' && a != b'z' || a == b'9' && (b == b'0' || b == b'a'))
    };
    let mut run = 1;
    let mut longest = 1;
    for w in s.as_bytes().windows(2) {
        run = if follows(w[0], w[1]) { run + 1 } else { 1 };
        longest = longest.max(run);
        if run >= 12 {
            return true;
        }
    }
    let alnum = s.bytes().filter(u8::is_ascii_alphanumeric).count();
    longest >= 8 && longest * 2 >= alnum
}

/// True when `s` is a constant alphabet rather than a random value: no character twice, and
/// most neighbouring characters are consecutive (`ABCDEFGHIJKLMNOPQRSTUVWXYZ`, `0123456789abcdef`, the base58
/// alphabet `123456789ABCDEFGHJKLMNPQRSTUVWXYZabc...`), or it runs along a keyboard row
/// (`qwertyuiop`).
pub fn is_alphabet(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 {
        return false;
    }
    // An alphabet lists each symbol once (`12345678ABCDEFH12345678` repeats: a sample value).
    let mut seen = [false; 256];
    for &x in b {
        if std::mem::replace(&mut seen[usize::from(x)], true) {
            return false;
        }
    }
    let steps = b.windows(2).filter(|w| w[1] == w[0].wrapping_add(1) || w[1] == w[0].wrapping_add(2)).count();
    if steps * 10 >= (b.len() - 1) * 7 {
        return true;
    }
    const ROWS: [&str; 4] = ["1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm"];
    let lower = s.to_ascii_lowercase();
    let on_rows = lower.as_bytes().windows(3).filter(|w| {
        let t = std::str::from_utf8(w).unwrap_or("");
        ROWS.iter().any(|r| r.contains(t))
    });
    on_rows.count() * 10 >= (b.len() - 2) * 8
}

/// True when the whole of `s` is a reference to a value held elsewhere: `${VAR}`, `{{ var }}`,
/// `<your-key>`, `%VAR%`, `$VAR`, `{var}`, `process.env.X`, `os.environ[...]`, SOPS `ENC[...]`,
/// `vault:` and Secrets Manager ARNs.
pub fn is_reference(s: &str) -> bool {
    let ident =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    (s.starts_with("${") && s.ends_with('}'))
        || (s.starts_with("{{") && s.ends_with("}}"))
        || (s.starts_with('<') && s.ends_with('>'))
        || (s.len() > 2 && s.starts_with('%') && s.ends_with('%'))
        || s.strip_prefix('$').is_some_and(ident)
        || s.strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        || (s.len() > 2
            && s.starts_with('[')
            && s.ends_with(']')
            && s[1..s.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b' ' | b':' | b'.')))
        || s.starts_with("$(")
        || (s.len() > 2 && s.starts_with('`') && s.ends_with('`'))
        || s.starts_with("process.env")
        || s.starts_with("os.environ")
        || s.starts_with("os.getenv")
        || s.starts_with("env(")
        || s.starts_with("ENV[")
        || s.starts_with("ENC[")
        || s.starts_with("vault:")
        || s.starts_with("arn:aws:secretsmanager")
}

/// True when most parts of `s` (split at `_ - . / :`) read like words: `my-tokens_are-correct`,
/// `SlackAppConfigurationAccessTokenHere`. Used to drop made-up sample tokens.
pub fn is_wordy(s: &str) -> bool {
    let parts: Vec<&str> = s.split(['_', '-', '.', '/', ':']).filter(|p| p.len() >= 3).collect();
    let wordlike =
        parts.iter().filter(|p| p.bytes().all(|b| b.is_ascii_alphabetic()) && vowel_ratio(p) >= 0.25).count();
    if parts.len() >= 3 && wordlike * 2 > parts.len() {
        return true;
    }
    // Several parts that are words by their case and letters (`Need5_T00-be-exactly-40-chars`,
    // `checking_Length-Is-checking_Length-Is`): lower case, or a capital then lower case, with a
    // vowel and no run of five consonants. Random tokens split at `-`/`_` give such parts rarely.
    let all: Vec<&str> = s.split(['_', '-', '.', '/', ':']).filter(|p| !p.is_empty()).collect();
    let words = all.iter().filter(|p| word_shaped(p)).count();
    if words >= 4 || words >= 3 && words * 2 > all.len() {
        return true;
    }
    // A camel-case run of words (`SlackAppConfigurationAccessTokenHere`): four or more word-shaped
    // humps of three or more letters covering most of a part.
    for p in &all {
        let mut humps: Vec<&str> = Vec::new();
        let mut start = 0;
        for (i, c) in p.char_indices().skip(1) {
            if c.is_ascii_uppercase() {
                humps.push(&p[start..i]);
                start = i;
            }
        }
        humps.push(&p[start..]);
        let covered: usize = humps.iter().filter(|h| h.len() >= 3 && word_shaped(h)).map(|h| h.len()).sum();
        if humps.iter().filter(|h| h.len() >= 3 && word_shaped(h)).count() >= 4 && covered * 10 >= p.len() * 8 {
            return true;
        }
    }
    // CamelCase run of words with no digits.
    let humps = s.bytes().filter(u8::is_ascii_uppercase).count();
    s.len() >= 20 && s.bytes().all(|b| b.is_ascii_alphabetic()) && humps >= 4 && vowel_ratio(s) >= 0.3
}

/// True when `p` reads as a word by its shape: 2+ letters, all lower case or a capital then
/// lower case (`be`, `Length`, `ELse` not), a vowel, no run of five consonants.
fn word_shaped(p: &str) -> bool {
    let b = p.as_bytes();
    if b.len() < 2 || !b.iter().all(u8::is_ascii_alphabetic) || !b[1..].iter().all(u8::is_ascii_lowercase) {
        return false;
    }
    let vowel = |c: u8| b"aeiouy".contains(&c.to_ascii_lowercase());
    let mut run = 0;
    for &c in b {
        run = if vowel(c) { 0 } else { run + 1 };
        if run >= 5 {
            return false;
        }
    }
    b.iter().any(|&c| vowel(c))
}

/// Counts of character classes in `s`: (lower, upper, digit, other).
pub fn classes(s: &str) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for b in s.bytes() {
        match b {
            b'a'..=b'z' => c.0 += 1,
            b'A'..=b'Z' => c.1 += 1,
            b'0'..=b'9' => c.2 += 1,
            _ => c.3 += 1,
        }
    }
    c
}

/// True when `s` looks machine-generated: long enough, entropy at or above `min_bits` bits per
/// byte, and at least two character classes with some digits or mixed case. Used for values next
/// to key-like names (`api_key = ...`).
pub fn looks_random(s: &str, min_bits: f32) -> bool {
    if s.len() < 8 || is_placeholder(s) {
        return false;
    }
    let (lo, up, di, _) = classes(s);
    let kinds = usize::from(lo > 0) + usize::from(up > 0) + usize::from(di > 0);
    if kinds < 2 && !(s.len() >= 32 && di == 0 && entropy(s) >= 4.0) {
        return false;
    }
    // Words joined by separators (camelCase identifiers, dotted names) are not secrets.
    if di == 0 && looks_like_identifier(s) {
        return false;
    }
    entropy(s) >= min_bits
}

/// True for identifiers made of dictionary-like chunks: `some_variable_name`,
/// `com.example.Thing`, `MyClassName`, `XSalsa20.key_length`.
pub fn looks_like_identifier(s: &str) -> bool {
    let parts: Vec<&str> = s.split(['_', '.', '-', '/', ':']).filter(|p| !p.is_empty()).collect();
    if parts.len() >= 2 && parts.iter().all(|p| p.len() <= 12 && vowel_ratio(p) >= 0.2) {
        return true;
    }
    // CamelCase with readable chunks.
    let b = s.as_bytes();
    let humps = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    humps >= 2 && b.iter().all(u8::is_ascii_alphabetic) && vowel_ratio(s) >= 0.25 && s.len() / humps >= 4
}

fn vowel_ratio(s: &str) -> f32 {
    let n = s.bytes().filter(u8::is_ascii_alphabetic).count();
    if n == 0 {
        return 0.0;
    }
    let v = s.bytes().filter(|b| matches!(b.to_ascii_lowercase(), b'a' | b'e' | b'i' | b'o' | b'u' | b'y')).count();
    v as f32 / n as f32
}

/// Decodes base64url (or standard base64) without padding into bytes; `None` on a bad byte.
/// Allocates the output.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4 + 1);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// True when the first segment of a JWT candidate decodes to a JSON object header with an
/// `alg` or `typ` field (RFC 7519 / RFC 7515).
pub fn jwt_header(token: &str) -> bool {
    let head = token.split('.').next().unwrap_or("");
    match base64url_decode(head) {
        Some(bytes) => {
            let t = String::from_utf8_lossy(&bytes);
            t.trim_start().starts_with('{') && (t.contains("\"alg\"") || t.contains("\"typ\"") || t.contains("\"kid\""))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn("4012888888881881"));
        assert!(luhn("4012 8888 8888 1881"));
        assert!(!luhn("4012-8888-8888-1882"));
        assert!(!luhn(""));
    }

    #[test]
    fn iban_mod97() {
        assert!(iban("GB82WEST12345698765432"));
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!iban("GB82WEST12345698765433"));
        assert!(!iban("GB82WEST1234569876543"));
    }

    #[test]
    fn ssn_ranges() {
        assert!(ssn("078-05-1123"));
        assert!(!ssn("000-12-3456"));
        assert!(!ssn("666-12-3456"));
        assert!(!ssn("900-12-3456"));
        assert!(!ssn("123-00-3456"));
        assert!(!ssn("123-45-0000"));
        assert!(!ssn("078-05-1120"));
    }

    #[test]
    fn entropy_values() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-6);
    }

    #[test]
    fn jwt_header_decodes() {
        assert!(jwt_header("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.x"));
        assert!(!jwt_header("eyJub3RoaW5nIjoxfQ.e30.x"));
    }

    #[test]
    fn placeholders() {
        assert!(is_placeholder("xxxxxxxxxxxx"));
        assert!(is_placeholder("${API_KEY}"));
        assert!(is_placeholder("<your key>"));
        assert!(!is_placeholder("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9a8b7c6d"));
    }
}
