//! The rule table: one entry per detector, each a regular expression (Rust `regex`: linear time,
//! no backtracking), a gate that decides cheaply whether the rule can match at all, and a check
//! that validates a match (checksum, entropy, context words) and sets its confidence.
//!
//! Every pattern here is written for Triage from the public format of the value it finds (the
//! providers' documented token prefixes and lengths, ISO/IEC 7812 card numbers, ISO 13616 IBANs,
//! RFC 5322/5321 addresses, RFC 4291 IPv6 text forms, RFC 7519 JWTs, RFC 7468 PEM armour); no
//! third-party rule set is copied.

use std::borrow::Cow;
use std::ops::Range;

use regex::{Regex, RegexBuilder};

use super::checks::*;
use super::Kind;

/// Where a rule's regex runs. Rules whose pattern starts with a literal (a token prefix) run
/// on the whole text: the regex engine's own literal prefilter skips everything else. Rules
/// without a literal run only in windows around cheap anchors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gate {
    /// The whole text.
    Always,
    /// The whole text, when this byte occurs.
    Byte(u8),
    /// The whole text, when a `:` sits between hex digits or colons (IPv6 candidates).
    HexColon,
    /// Windows from `back` bytes before to `fwd` bytes after each occurrence of a keyword (ASCII
    /// case-insensitive; one Aho-Corasick pass finds the keywords of all rules).
    Keywords(&'static [&'static str], usize, usize),
    /// Like `Keywords`, case-sensitive (`Mr`, `Dr`, `Street`).
    Cased(&'static [&'static str], usize, usize),
    /// Like `Keywords`, only where an assignment byte (`=`, `:`, `>`, `,`) follows the keyword
    /// within 40 bytes.
    Assign(&'static [&'static str], usize, usize),
    /// Windows around runs of digits and separators holding at least this many digits.
    DigitRun(usize),
    /// Windows starting at two capital letters followed by two digits (IBAN candidates).
    IbanStart,
    /// Windows around `.xxxxxx.` (a dot, six base64url characters, a dot: Discord tokens).
    DotSix,
}

/// A match handed to a check: the whole text, the whole match and the value's span.
pub(crate) struct Hit<'a> {
    pub text: &'a str,
    pub whole: Range<usize>,
    pub value: Range<usize>,
}

impl Hit<'_> {
    pub fn value_str(&self) -> &str {
        self.text.get(self.value.clone()).unwrap_or("")
    }
}

/// A check returns the span to report (usually the value) and a confidence in 0..=1, or `None`
/// to drop the match.
pub(crate) type Check = fn(&Hit<'_>) -> Option<(Range<usize>, f32)>;

/// A rule as written in the table below.
pub(crate) struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub pattern: Cow<'static, str>,
    /// Capture group that holds the value (0 = the whole match).
    pub group: usize,
    pub gate: Gate,
    pub check: Check,
    /// Higher wins when two findings overlap (specific formats over generic assignments).
    pub priority: u8,
}

/// `Spec::group` value meaning "the first capture group (from 1) that took part in the match".
pub(crate) const ANY: usize = usize::MAX;

/// A compiled rule.
pub(crate) struct Rule {
    pub name: &'static str,
    pub kind: Kind,
    pub re: Regex,
    pub group: usize,
    pub gate: Gate,
    pub check: Check,
    pub priority: u8,
}

/// Compiles a spec. `\b` is made ASCII-only and `\d` becomes `[0-9]` so that the lazy DFA runs
/// on any input (a Unicode word boundary makes it give up on non-ASCII text).
pub(crate) fn compile(spec: &Spec) -> Result<Rule, regex::Error> {
    let pat = spec.pattern.replace(r"\b", r"(?-u:\b)").replace(r"\d", "0-9");
    let pat = relax_long_bounds(&fix_digit_classes(&pat));
    let re = RegexBuilder::new(&pat).size_limit(32 << 20).dfa_size_limit(16 << 20).build()?;
    Ok(Rule {
        name: spec.name,
        kind: spec.kind,
        re,
        group: spec.group,
        gate: spec.gate,
        check: spec.check,
        priority: spec.priority,
    })
}

/// Turns counted repetitions with a large upper bound (`{6,300}`) into open-ended ones
/// (`{6,}`): each counted step is an automaton state, and hundreds of them make the lazy DFA
/// thrash its cache. The checks bound the lengths instead.
fn relax_long_bounds(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut rest = p;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let close = tail.find('}').unwrap_or(0);
        let inner = tail.get(1..close).unwrap_or("");
        let relaxed = inner.split_once(',').and_then(|(lo, hi)| {
            let (lo_n, hi_n) = (lo.trim().parse::<usize>().ok()?, hi.trim().parse::<usize>().ok()?);
            (hi_n >= 64 && lo_n < hi_n).then(|| format!("{{{lo_n},}}"))
        });
        match relaxed {
            Some(r) if close > 0 => {
                out.push_str(&r);
                rest = &tail[close + 1..];
            }
            _ => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// After `\d` -> `0-9`, a bare `0-9` outside a class must become `[0-9]`.
fn fix_digit_classes(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 16);
    let mut depth = 0usize;
    let mut escaped = false;
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if escaped {
            escaped = false;
            out.push(char::from(c));
            i += 1;
            continue;
        }
        match c {
            b'\\' => {
                escaped = true;
                out.push('\\');
            }
            b'[' => {
                depth += 1;
                out.push('[');
            }
            b']' if depth > 0 => {
                depth -= 1;
                out.push(']');
            }
            b'0' if depth == 0 && b.get(i..i + 3) == Some(b"0-9") => {
                out.push_str("[0-9]");
                i += 3;
                continue;
            }
            _ => {
                // Copy the whole UTF-8 sequence.
                let len = utf8_len(c);
                if let Some(s) = p.get(i..i + len) {
                    out.push_str(s);
                }
                i += len;
                continue;
            }
        }
        i += 1;
    }
    out
}

fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

/// Key-like names for generic assignments (gate keywords; the regex repeats them).
const KEY_WORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "pass",
    "pwd",
    "auth",
    "credential",
    "creds",
    "access_id",
    "accessid",
    "access-id",
    "access.id",
    // Provider names whose bare `name: value` assignments hold an API token.
    "login",
    "cloudflare",
    "sourcegraph",
    "artifactory",
];
const PASS_WORDS: &[&str] = &["pass", "pwd", "secret", "_pw", "pw_", "-pw"];

/// Assignment operators: `=`, `:`, `:=`, `=>`, `?=`, `.=`, `:::=`, `,` (setProperty("K", "v")),
/// `>` (XML element), optionally with quotes and type names between.
const ASSIGN: &str =
    r#"(?:(?:\[\d*\])?["'`]?[ \t]*(?:[:.?]{0,3}=>?|:|,|[ \t]+string[ \t]*=|[ \t]+str[ \t]*=)[ \t]*|["'`]?>\s*)"#;

/// A value: double-, single- or back-quoted (anything but the quote and a newline), or bare.
const VALUE: &str = r#"(?:@?"([^"\n]{6,300})"|'([^'\n]{6,300})'|`([^`\n]{6,300})`|([^\s"'`;,\\<>\[\](){}|]{6,300}))"#;

pub(crate) fn specs() -> Vec<Spec> {
    let generic = format!(
        r#"(?i)\b(?:[a-z0-9_.\-]{{0,40}}?(?:api[_.\-]?key|apikey|secret|token|key|auth|credential|creds|access[_.\-]?id|login|cloudflare|sourcegraph|artifactory)[a-z0-9_.\-]{{0,20}}){ASSIGN}{VALUE}"#
    );
    let cli_flag = format!(
        r#"(?i)(?:^|\s)--?[a-z0-9\-]{{0,30}}(?:key|token|secret|password|passwd|auth)[a-z0-9\-]{{0,20}}(?:\s+|=){VALUE}"#
    );
    let password = format!(
        r#"(?i)\b(?:[a-z0-9_.\-]{{0,30}}?(?:password|passwd|passphrase|pass|pwd|pw|secret)[a-z0-9_.\-]{{0,20}}){ASSIGN}(?:@?"([^"\n]{{4,200}})"|'([^'\n]{{4,200}})'|`([^`\n]{{4,200}})`|([^\s"'`<>]{{6,200}}))"#
    );
    let compare = r#"(?i)\b(?:[a-z0-9_.\-]{0,30}?(?:password|passwd|pass|pwd|secret|api_?key|apikey|private_key|token)[a-z0-9_]{0,20})\s*(?:===?|!==?)\s*(?:"([^"\n]{6,300})"|'([^'\n]{6,300})')|(?:"([^"\n]{6,300})"|'([^'\n]{6,300})')\s*(?:===?|!==?)\s*[a-z0-9_.]{0,30}?(?:password|passwd|pass|pwd|secret|api_?key|apikey|private_key|token)"#;
    let aws_secret = format!(
        r#"(?i)\b(?:aws)?[a-z0-9_.\-]{{0,20}}?(?:secret[_.\-]?access[_.\-]?key|secret[_.\-]?key|aws[_.\-]?secret)[a-z0-9_.\-]{{0,10}}{ASSIGN}["'`]?([A-Za-z0-9/+]{{40}})(?:[^A-Za-z0-9/+]|$)"#
    );

    vec![
        // ---------------------------------------------------------------- personal data
        Spec {
            name: "email",
            kind: Kind::Email,
            pattern: r"\b[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,24}|xn--[a-z0-9]{2,30})\b".into(),
            group: 0,
            gate: Gate::Byte(b'@'),
            check: email,
            priority: 5,
        },
        Spec {
            name: "credit_card",
            kind: Kind::CreditCard,
            pattern: r"\b(?:\d{4}[ \-]){3}\d{1,7}\b|\b\d{4}[ \-]\d{6}[ \-]\d{4,5}\b|\b\d{12,19}\b".into(),
            group: 0,
            gate: Gate::DigitRun(12),
            check: card,
            priority: 7,
        },
        Spec {
            name: "iban",
            kind: Kind::Iban,
            pattern: r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?\b".into(),
            group: 0,
            gate: Gate::IbanStart,
            check: iban,
            priority: 7,
        },
        Spec {
            name: "us_ssn",
            kind: Kind::UsSsn,
            pattern: r"\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b|\b\d{3}\.\d{2}\.\d{4}\b|\b\d{9}\b".into(),
            group: 0,
            gate: Gate::DigitRun(9),
            check: ssn,
            priority: 6,
        },
        Spec {
            name: "ipv4",
            kind: Kind::IpAddress,
            pattern: r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d{1,3})?".into(),
            group: 0,
            gate: Gate::DigitRun(4),
            check: ipv4,
            priority: 5,
        },
        Spec {
            name: "ipv6",
            kind: Kind::IpAddress,
            pattern: r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:/\d{1,3})?".into(),
            group: 0,
            gate: Gate::HexColon,
            check: ipv6,
            priority: 5,
        },
        Spec {
            name: "phone_international",
            kind: Kind::Phone,
            pattern: r"(?:\+|\b00)\d{1,3}(?:[ .\-/]?(?:\(0?\d{1,5}\)|\d{1,6})){1,7}(?: ?(?:x|ext\.?) ?\d{1,5})?\b".into(),
            group: 0,
            gate: Gate::Always,
            check: phone_strong,
            priority: 4,
        },
        Spec {
            name: "phone_nanp",
            kind: Kind::Phone,
            pattern: r"(?:\b1[ .\-]|\b001[ .\-])?(?:\(\d{3}\)[ .\-]?\d{3}[ .\-]?\d{4}|\b\d{3}[.\-]\d{3}[.\-]\d{4}|\b[2-9]\d{2} [2-9]\d{2} \d{4}|\b\d{3}[.\-]\d{4}[.\-]\d{3}|\b\d{3}[.\-]\d{2}[.\-]\d{2}[.\-]\d{3})(?: ?(?:x|ext\.?) ?\d{1,5})?\b".into(),
            group: 0,
            gate: Gate::DigitRun(10),
            check: phone_strong,
            priority: 4,
        },
        Spec {
            // National numbers with a trunk prefix, grouped any way (`020 7946 0018`,
            // `0171/234 56 78`, `06-12 34 56 78`).
            name: "phone_national",
            kind: Kind::Phone,
            pattern: r"\(?\b0\d{1,4}\)?(?:[ .\-/]{1,2}\d{2,8}){1,5}\b".into(),
            group: 0,
            gate: Gate::DigitRun(9),
            check: phone_national,
            priority: 3,
        },
        Spec {
            name: "phone_context",
            kind: Kind::Phone,
            pattern: r"(?:\(\d{1,5}\)[ .\-]?)?\d{2,12}(?:[ .\-]\d{2,8}){0,4}(?: ?(?:x|ext\.?) ?\d{1,5})?".into(),
            group: 0,
            gate: Gate::DigitRun(7),
            check: phone_context,
            priority: 3,
        },
        Spec {
            name: "date_of_birth",
            kind: Kind::DateOfBirth,
            pattern: r"(?i)\b(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:19|20)?\d{2}|(?:19|20)\d{2}-\d{2}-\d{2}|\d{1,2}(?:st|nd|rd|th)? (?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? (?:19|20)\d{2}|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? (?:19|20)\d{2})\b".into(),
            group: 0,
            gate: Gate::Keywords(&["born", "birth", "dob", "d.o.b", "geboren", "né le", "née le"], 8, 80),
            check: dob,
            priority: 4,
        },
        Spec {
            name: "street_address",
            kind: Kind::PostalAddress,
            pattern: r"\b\d{1,6}[A-Za-z]?,? (?:[A-Z][A-Za-z'.\-]+ ){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Circle|Square|Highway|Hwy|Crescent|Close|Alley|Row|Walk|Trail|Plaza|Gardens|Forges?|Mews|Hill|Park|Grove)\b\.?(?:,? (?:Apt|Suite|Unit|Ste)\.? ?\w{1,6})?".into(),
            group: 0,
            gate: Gate::Cased(&["Street", "Avenue", "Road", "Lane", "Drive", "Boulevard", "Blvd", "Court", "Place", "Terrace", "Parkway", "Circle", "Square", "Highway", "Crescent", "Close", "Alley", "Row", "Walk", "Trail", "Plaza", "Gardens", "Forge", "Mews", "Hill", "Park", "Grove", "St", "Ave", "Rd", "Ln", "Dr", "Ct", "Pl", "Way", "Hwy", "Pkwy"], 80, 60),
            check: street,
            priority: 3,
        },
        Spec {
            name: "address_label",
            kind: Kind::PostalAddress,
            pattern: r"(?i)\b(?:address|addr|adresse|anschrift)\s*[:=]\s*([^\n]{8,120})".into(),
            group: 1,
            gate: Gate::Keywords(&["address", "addr", "adresse", "anschrift"], 4, 150),
            check: street,
            priority: 3,
        },
        Spec {
            name: "name_label",
            kind: Kind::PersonName,
            pattern: r"(?:\b(?i:name|full name|patient|patient name|client|customer|employee)[ \t]*[:=][ \t]*|\b(?:Dear|Mr\.?|Mrs\.?|Ms\.?|Miss|Dr\.?|Prof\.?|[Pp]atient)[ \t]+|\b[Mm]y name is\s+)(\p{Lu}[\p{Ll}'\-]+(?:[ ]\p{Lu}\.?)?(?:[ ](?:van |de |von |da |del |di |le |la )?\p{Lu}[\p{Ll}'\-]+){0,3})".into(),
            group: 1,
            gate: Gate::Cased(&["Name", "NAME", "name", "Patient", "patient", "Dear", "Mr", "Mrs", "Ms", "Miss", "Dr", "Prof", "Client", "client", "Customer", "customer", "Employee", "employee", "My name", "my name"], 16, 120),
            check: name_ctx,
            priority: 2,
        },
        // ---------------------------------------------------------------- cloud keys
        Spec {
            name: "aws_access_key_id",
            kind: Kind::AwsAccessKey,
            pattern: r"\b((?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA|AGPA|ANPA|ANVA|APKA|A3T[A-Z0-9])[A-Z2-7]{16})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: aws_key_id,
            priority: 9,
        },
        Spec {
            name: "aws_secret_access_key",
            kind: Kind::AwsSecretKey,
            pattern: aws_secret.into(),
            group: 1,
            gate: Gate::Assign(&["secret"], 60, 140),
            check: random_value,
            priority: 9,
        },
        Spec {
            name: "aws_bedrock_key",
            kind: Kind::AwsSecretKey,
            pattern: r"\b(ABSKQmVkcm9ja0FQSUtleS[A-Za-z0-9+/=]{20,}|bedrock-api-key-[A-Za-z0-9+/=]{20,})".into(),
            group: 1,
            gate: Gate::Always,
            check: bedrock,
            priority: 9,
        },
        Spec {
            name: "gcp_service_account",
            kind: Kind::GcpServiceAccount,
            pattern: r#""type"\s*:\s*"service_account"|"private_key_id"\s*:\s*"([0-9a-f]{40})""#.into(),
            group: 0,
            gate: Gate::Always,
            check: accept,
            priority: 8,
        },
        Spec {
            name: "gcp_api_key",
            kind: Kind::GcpApiKey,
            // Google API keys are `AIzaSy` + 33 (Google Cloud, "API keys" format).
            pattern: r"\b(AIzaS[yY][0-9A-Za-z_\-]{33})(?:[^0-9A-Za-z_\-]|$)".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 9,
        },
        Spec {
            name: "google_oauth_token",
            kind: Kind::ApiToken,
            pattern: r"\b(ya29\.[0-9A-Za-z_\-]{30,})".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 8,
        },
        Spec {
            name: "azure_storage_connection_string",
            kind: Kind::AzureConnectionString,
            pattern: r"(?i)(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig)=([A-Za-z0-9+/%]{20,}={0,2})".into(),
            group: 1,
            gate: Gate::Always,
            check: token_random,
            priority: 9,
        },
        Spec {
            name: "azure_ad_client_secret",
            kind: Kind::AzureConnectionString,
            pattern: r"(?:^|[^A-Za-z0-9_~.\-])([A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?:[^A-Za-z0-9_~.\-]|$)".into(),
            group: 1,
            gate: Gate::Keywords(&["q~"], 12, 48),
            check: token_random,
            priority: 8,
        },
        // ---------------------------------------------------------------- AI providers
        Spec {
            name: "anthropic_key",
            kind: Kind::AnthropicKey,
            pattern: r"\b(sk-ant-(?:api|admin|sid|oat)\d{2}-[A-Za-z0-9_\-]{20,120})".into(),
            group: 1,
            gate: Gate::Keywords(&["sk-ant-"], 2, 200),
            check: token,
            priority: 10,
        },
        Spec {
            name: "openai_key",
            kind: Kind::OpenaiKey,
            pattern: r"\b(sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{16,200}T3BlbkFJ[A-Za-z0-9_\-]{16,200}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200}|sk-[A-Za-z0-9]{48})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 10,
        },
        Spec {
            name: "huggingface_token",
            kind: Kind::HuggingfaceToken,
            pattern: r"\b((?:hf_|api_org_)[A-Za-z0-9]{30,40})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token_random,
            priority: 9,
        },
        Spec {
            name: "ai_provider_key",
            kind: Kind::ApiToken,
            pattern: r"\b((?:pplx|gsk|xai|r8|csk|nvapi|fw|tvly)[_\-][A-Za-z0-9_\-]{30,100})\b".into(),
            group: 1,
            gate: Gate::Keywords(&["pplx-", "gsk_", "xai-", "r8_", "csk-", "nvapi-", "fw_", "tvly-"], 2, 120),
            check: token_random,
            priority: 8,
        },
        // ---------------------------------------------------------------- code hosting, CI
        Spec {
            name: "github_token",
            kind: Kind::GithubToken,
            pattern: r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 10,
        },
        Spec {
            name: "gitlab_token",
            kind: Kind::GitlabToken,
            pattern: r"\b((?:glpat|gldt|glrt|glrtr|glptt|glcbt|glimt|glsoat|glffct|glagent|gloas|glft|glsa|glwt)-[A-Za-z0-9_\-.]{20,300}|GR1348941[A-Za-z0-9_\-]{20,})|_gitlab_session=([0-9a-z]{32})".into(),
            group: 0,
            gate: Gate::Always,
            check: gitlab,
            priority: 10,
        },
        Spec {
            name: "npm_token",
            kind: Kind::NpmToken,
            pattern: r"\b(npm_[A-Za-z0-9]{36})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 10,
        },
        Spec {
            name: "pypi_token",
            kind: Kind::PypiToken,
            pattern: r"\b(pypi-AgE[A-Za-z0-9_\-]{50,})".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 10,
        },
        Spec {
            name: "package_registry_token",
            kind: Kind::ApiToken,
            pattern: r"\b(rubygems_[a-f0-9]{48}|CLOJARS_[a-z0-9]{60}|oy2[a-z0-9]{43}|dckr_pat_[A-Za-z0-9_\-]{27,})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 8,
        },
        // ---------------------------------------------------------------- chat, payments, mail
        Spec {
            name: "slack_token",
            kind: Kind::SlackToken,
            pattern: r"\b(xox[abposre]-(?:\d+-)?[0-9A-Za-z\-]{8,}|xoxe\.xox[bp]-\d-[A-Za-z0-9]{100,}|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+)|(hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,})".into(),
            group: 0,
            gate: Gate::Always,
            check: slack,
            priority: 10,
        },
        Spec {
            name: "stripe_key",
            kind: Kind::StripeKey,
            pattern: r"\b((?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,247}|whsec_[A-Za-z0-9]{32,})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 10,
        },
        Spec {
            name: "twilio_key",
            kind: Kind::TwilioKey,
            pattern: r"\b(SK[0-9a-fA-F]{32})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: token_random,
            priority: 8,
        },
        Spec {
            name: "sendgrid_key",
            kind: Kind::SendgridKey,
            pattern: r"\b(SG\.[A-Za-z0-9_\-=]{16,32}\.[A-Za-z0-9_\-=]{16,64}|SG\.[A-Za-z0-9_\-=]{60,70})".into(),
            group: 1,
            gate: Gate::Always,
            check: token_random,
            priority: 10,
        },
        Spec {
            name: "mail_provider_key",
            kind: Kind::ApiToken,
            pattern: r"\b(xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}|key-[0-9a-f]{32}|pubkey-[0-9a-f]{32}|[0-9a-f]{32}-us\d{1,2})\b".into(),
            group: 1,
            gate: Gate::Keywords(&["xkeysib-", "key-", "-us"], 40, 140),
            check: token_random,
            priority: 8,
        },
        Spec {
            name: "discord_bot_token",
            kind: Kind::ApiToken,
            pattern: r"\b([A-Za-z0-9_\-]{23,28}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,40})\b".into(),
            group: 1,
            gate: Gate::DotSix,
            check: discord,
            priority: 7,
        },
        Spec {
            name: "telegram_bot_token",
            kind: Kind::ApiToken,
            pattern: r"\b(\d{5,16}:A[A-Za-z0-9_\-]{32,40})\b".into(),
            group: 1,
            gate: Gate::Keywords(&[":a"], 20, 60),
            check: telegram,
            priority: 7,
        },
        Spec {
            name: "facebook_token",
            kind: Kind::ApiToken,
            pattern: r"\b(EAA[A-Za-z0-9]{80,}|\d{15,16}\|[A-Za-z0-9_\-]{27})".into(),
            group: 1,
            gate: Gate::Keywords(&["eaa", "|"], 20, 400),
            check: token_random,
            priority: 7,
        },
        Spec {
            name: "square_token",
            kind: Kind::ApiToken,
            pattern: r"\b((?:sq0atp|sq0csp)-[0-9A-Za-z_\-\\]{22,60}|EAAA[A-Za-z0-9_\-]{60})".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 8,
        },
        // ---------------------------------------------------------------- other SaaS prefixes
        Spec {
            name: "saas_prefixed_token",
            kind: Kind::ApiToken,
            pattern: r"\b((?:dop|doo|dor)_v1_[a-f0-9]{64}|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}|glc_[A-Za-z0-9+/=_\-]{32,400}|hv[sb]\.[A-Za-z0-9_\-]{24,300}|pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_=\-.]{32,64}|sntry[su]_[A-Za-z0-9+/=_\-]{40,}|lin_api_[A-Za-z0-9]{40}|pul-[a-f0-9]{40}|dt0c01\.[A-Z0-9a-z]{24}\.[A-Za-z0-9]{64}|PMAK-[a-f0-9]{24}-[a-f0-9]{34}|dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}|FLW(?:SECK|PUBK)_TEST-[a-h0-9]{12,32}-X|FLWSECK_TEST-[a-h0-9]{12}|ATATT3[A-Za-z0-9_\-=]{186}|CFPAT-[A-Za-z0-9_\-]{43}|nfp_[A-Za-z0-9]{36}|NR(?:AK|JS|II)-[A-Za-z0-9\-]{19,32}|dapi[a-h0-9]{32}(?:-\d)?|AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}|ops_eyJ[A-Za-z0-9+/=]{100,}|fo1_[A-Za-z0-9_\-]{43}|fm[12][ar]?_[A-Za-z0-9+/=]{100,}|sgp_(?:[a-fA-F0-9]{16}|local)_[a-fA-F0-9]{40}|sgp_[a-fA-F0-9]{40}|dnkey-[a-z0-9=_\-]{26}-[a-z0-9=_\-]{52}|sm_(?:aat|pat|sat)_[a-z0-9]{16}|EZ[AT]K[A-Za-z0-9]{54}|duffel_(?:test|live)_[A-Za-z0-9_\-=]{43}|shippo_(?:live|test)_[a-fA-F0-9]{40}|ntn_[0-9]{11}[A-Za-z0-9]{35}|secret_[A-Za-z0-9]{43}|pnu_[A-Za-z0-9]{36}|rdme_[a-z0-9]{70}|sq[pua]_[a-f0-9]{40}|tfp_[A-Za-z0-9_\-.=]{59}|tk-us-[A-Za-z0-9_\-]{48}|ico-[A-Za-z0-9]{32}|fio-u-[A-Za-z0-9_\-=]{64}|API-[A-Z0-9]{26}|sha256~[A-Za-z0-9_\-]{43}|[a-z0-9]{14}\.atlasv1\.[A-Za-z0-9\-_=]{60,70}|AKCp[A-Za-z0-9]{69}|cmVmd[A-Za-z0-9]{59}|A3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}|HRKU-AA[A-Za-z0-9_\-]{58}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|s-s4t2(?:ud|af)-[a-f0-9]{64}|pat[A-Za-z0-9]{14}\.[a-f0-9]{64}|(?:sat|pat)\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}|t1\.[A-Z0-9a-z_\-]+=*\.[A-Z0-9a-z_\-]{86}=*|YC[A-Za-z0-9_\-]{38}|AQVN[A-Za-z0-9_\-]{35,38}|LTAI[A-Za-z0-9]{20}|v1\.0-[a-f0-9]{24}-[a-f0-9]{146}|p8e-[A-Za-z0-9]{32}|access-(?:sandbox|development|production)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b".into(),
            group: 1,
            gate: Gate::Keywords(&[
                "dop_", "doo_", "dor_", "shp", "glc_", "hvs.", "hvb.", "pscale_", "sntry", "lin_api_", "pul-", "dt0c01.",
                "pmak-", "dp.", "flw", "atatt3", "cfpat-", "nfp_", "nrak-", "nrjs-", "nrii-", "dapi", "age-secret-key-1",
                "ops_eyj", "fo1_", "fm1", "fm2", "sgp_", "dnkey-", "sm_", "ezak", "eztk", "duffel_", "shippo_", "ntn_",
                "secret_", "pnu_", "rdme_", "sqp_", "squ_", "sqa_", "tfp_", "tk-us-", "ico-", "fio-u-", "api-", "sha256~",
                ".atlasv1.", "akcp", "cmvmd", "a3-", "hrku-", "glsa_", "s-s4t2", "pat", "sat.", "t1.", "yc", "aqvn",
                "ltai", "v1.0-", "p8e-", "access-",
            ], 8, 420),
            check: token_random,
            priority: 8,
        },
        // ---------------------------------------------------------------- keys, tokens, URLs
        Spec {
            name: "private_key_block",
            kind: Kind::PrivateKey,
            pattern: r"-----BEGIN[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----(?s:.){16,16000}?-----END[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----|-----BEGIN[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----(?:\\n|\s)+[A-Za-z0-9+/=:\- ]{16,}(?:(?:\\n|\s)+[A-Za-z0-9+/=]{16,})*".into(),
            group: 0,
            gate: Gate::Keywords(&["private key"], 40, 16_200),
            check: private_key,
            priority: 11,
        },
        Spec {
            name: "pkcs12_or_putty_key",
            kind: Kind::PrivateKey,
            pattern: r"PuTTY-User-Key-File-\d: [^\n]+\n(?:[^\n]*\n){0,4}Private-Lines: \d+".into(),
            group: 0,
            gate: Gate::Always,
            check: accept,
            priority: 11,
        },
        Spec {
            name: "jwt",
            kind: Kind::Jwt,
            pattern: r"\b(ey[A-Za-z0-9_\-]{10,}\.ey[A-Za-z0-9_\-]{2,}(?:\.[A-Za-z0-9_\-]{0,600})?|ey[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{10,600})".into(),
            group: 1,
            gate: Gate::Always,
            check: jwt,
            priority: 9,
        },
        Spec {
            name: "database_url",
            kind: Kind::DatabaseUrl,
            pattern: r#"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver|jdbc:[a-z0-9]+|clickhouse|cockroachdb|couchdb|neo4j(?:\+s)?|bolt|cassandra|memcached|oracle|db2|snowflake|elasticsearch|kafka)://[^\s:/@'"`]{1,100}:([^\s@/'"`]{1,200})@[^\s'"`]{2,}"#.into(),
            group: 1,
            gate: Gate::Always,
            check: db_url,
            priority: 9,
        },
        Spec {
            name: "url_credentials",
            kind: Kind::Password,
            pattern: r#"(?i)\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@'"`]{1,100}:([^\s@/'"`]{3,200})@[A-Za-z0-9.\-]{2,}"#.into(),
            group: 1,
            gate: Gate::Always,
            check: db_url,
            priority: 7,
        },
        Spec {
            name: "authorization_header",
            kind: Kind::GenericSecret,
            pattern: r#"(?i)\bauthorization\s*[:=]\s*["']?(?:(?:basic|bearer|token|digest|apikey|api-token|api-key|sso-key|key|negotiate)\s+)?([A-Za-z0-9+/=._~\-@!$%]{8,})"#.into(),
            group: 1,
            gate: Gate::Always,
            check: keyed_secret,
            priority: 6,
        },
        Spec {
            name: "curl_user",
            kind: Kind::Password,
            pattern: r#"(?:\s-u|--user)\s*["']?[^\s:"']{0,100}["']?:["']?([^\s"']{3,200})"#.into(),
            group: 1,
            gate: Gate::Keywords(&["curl"], 0, 1_000),
            check: curl_user,
            priority: 6,
        },
        Spec {
            name: "password_comparison",
            kind: Kind::Password,
            pattern: compare.into(),
            group: ANY,
            gate: Gate::Assign(KEY_WORDS, 340, 340),
            check: self::password,
            priority: 5,
        },
        Spec {
            name: "cli_secret_flag",
            kind: Kind::GenericSecret,
            pattern: cli_flag.into(),
            group: ANY,
            gate: Gate::Keywords(&["-key", "-token", "-secret", "-password", "-passwd", "-auth", "-api"], 40, 340),
            check: keyed_secret,
            priority: 5,
        },
        Spec {
            name: "config_password_value",
            kind: Kind::Password,
            pattern: r#"(?i)key\s*=\s*"[^"]{0,40}password[^"]{0,20}"\s+value\s*=\s*"([^"\n]{4,200})""#.into(),
            group: 1,
            gate: Gate::Always,
            check: self::password,
            priority: 6,
        },
        Spec {
            name: "kubernetes_secret_data",
            kind: Kind::GenericSecret,
            pattern: r#"(?m)^[ \t]+[A-Za-z0-9_.\-]{1,60}:[ \t]*(?:[|>][-+]?[ \t]*\n[ \t]+)?["']?([A-Za-z0-9+/]{12,}={0,2})["']?[ \t]*$"#.into(),
            group: 1,
            gate: Gate::Keywords(&["kind: secret", "kind: 'secret'", "kind: \"secret\""], 4_096, 4_096),
            check: k8s_data,
            priority: 4,
        },
        Spec {
            name: "bundler_contribsys_credentials",
            kind: Kind::ApiToken,
            pattern: r"(?i)BUNDLE_(?:ENTERPRISE|GEMS)__CONTRIBSYS__COM\s*[:=]\s*([a-f0-9]{8}:[a-f0-9]{8})".into(),
            group: 1,
            gate: Gate::Always,
            check: accept,
            priority: 7,
        },
        Spec {
            name: "webhook_url",
            kind: Kind::ApiToken,
            pattern: r"(https://[a-z0-9\-]+\.webhook\.office\.com/webhookb2/[A-Za-z0-9@\-/]{40,}|https://discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{40,})".into(),
            group: 1,
            gate: Gate::Always,
            check: token,
            priority: 7,
        },
        Spec {
            name: "age_secret_key",
            kind: Kind::PrivateKey,
            pattern: r"\b(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b".into(),
            group: 1,
            gate: Gate::Always,
            check: accept,
            priority: 9,
        },
        Spec {
            name: "password_assignment",
            kind: Kind::Password,
            pattern: password.into(),
            group: ANY,
            gate: Gate::Assign(PASS_WORDS, 48, 340),
            check: self::password,
            priority: 5,
        },
        Spec {
            name: "keyed_high_entropy",
            kind: Kind::GenericSecret,
            pattern: generic.into(),
            group: ANY,
            gate: Gate::Assign(KEY_WORDS, 64, 360),
            check: keyed_secret,
            priority: 4,
        },
    ]
}
