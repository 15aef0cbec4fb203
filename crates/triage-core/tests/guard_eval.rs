//! Evaluation of the sensitive-content guard on labelled public test data and on generated
//! sentences. Prints precision and recall per kind and asserts floors a little below the figures
//! recorded in docs/GUARD.md, so that a rule change that loses accuracy fails here.
//!
//! Data: `../shared/data/guard/` relative to the workspace root (read in place, never copied into
//! the repository; see its README for sources and licences). Without it the data-driven parts are
//! skipped with a note and only the generated sets run.
//!
//! Print the tables: `cargo test -p triage-core --test guard_eval -- --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use serde_json::Value;
use triage_core::guard::{Finding, Guard, Kind};

// ------------------------------------------------------------------------------------------------
// Tallies.

#[derive(Default, Clone, Copy)]
struct Tally {
    tp: usize,
    fn_: usize,
    fp: usize,
}

impl Tally {
    fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }
    fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fn_) as f64
        }
    }
    fn add(&mut self, o: &Tally) {
        self.tp += o.tp;
        self.fn_ += o.fn_;
        self.fp += o.fp;
    }
}

type Table = BTreeMap<String, Tally>;

fn print_table(title: &str, t: &Table) {
    println!("\n### {title}\n");
    println!("| kind | TP | FN | FP | precision | recall |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut all = Tally::default();
    for (k, v) in t {
        all.add(v);
        println!("| {k} | {} | {} | {} | {:.3} | {:.3} |", v.tp, v.fn_, v.fp, v.precision(), v.recall());
    }
    println!("| **all** | {} | {} | {} | {:.3} | {:.3} |", all.tp, all.fn_, all.fp, all.precision(), all.recall());
}

fn data_dir() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/guard");
    if root.join("README.md").exists() {
        Some(root)
    } else {
        None
    }
}

fn read_jsonl(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Verbose: set GUARD_EVAL_MISSES=1 to print missed and false rows (test data only).
fn verbose() -> bool {
    std::env::var("GUARD_EVAL_MISSES").is_ok()
}

// ------------------------------------------------------------------------------------------------
// Secrets: gitleaks and detect-secrets rows. A `tp` row counts as found when the guard reports a
// secret kind anywhere in it; an `fp` row counts as a false positive when it reports any secret.

/// Maps a gitleaks rule id to the kind that covers it (the named providers), or to `api_token`
/// ("another provider": any secret finding counts).
fn gitleaks_kind(rule: &str) -> &'static str {
    let r = rule;
    if r.starts_with("aws-access") {
        "aws_access_key"
    } else if r.starts_with("aws-amazon-bedrock") {
        "aws_secret_key"
    } else if r == "gcp-api-key" {
        "gcp_api_key"
    } else if r == "gcp-service-account" {
        "gcp_service_account"
    } else if r.starts_with("azure") {
        "azure_connection_string"
    } else if r.starts_with("openai") {
        "openai_key"
    } else if r.starts_with("anthropic") {
        "anthropic_key"
    } else if r.starts_with("github") {
        "github_token"
    } else if r.starts_with("gitlab") {
        "gitlab_token"
    } else if r.starts_with("slack") {
        "slack_token"
    } else if r.starts_with("stripe") {
        "stripe_key"
    } else if r.starts_with("twilio") {
        "twilio_key"
    } else if r.starts_with("sendgrid") {
        "sendgrid_key"
    } else if r.starts_with("npm") {
        "npm_token"
    } else if r.starts_with("pypi") {
        "pypi_token"
    } else if r.starts_with("huggingface") {
        "huggingface_token"
    } else if r == "private-key" {
        "private_key"
    } else if r == "jwt" || r == "jwt-base64" {
        "jwt"
    } else if r == "generic-api-key" {
        "generic_secret"
    } else if r.contains("password") || r.starts_with("curl-auth") || r == "sidekiq-sensitive-url" {
        "password"
    } else {
        "api_token (other providers)"
    }
}

fn detect_secrets_kind(plugin: &str) -> &'static str {
    match plugin {
        "AWSKeyDetector" => "aws_access_key",
        "AzureStorageKeyDetector" => "azure_connection_string",
        "GitHubTokenDetector" => "github_token",
        "GitLabTokenDetector" => "gitlab_token",
        "SlackDetector" => "slack_token",
        "StripeDetector" => "stripe_key",
        "SendGridDetector" => "sendgrid_key",
        "NpmDetector" => "npm_token",
        "PypiTokenDetector" => "pypi_token",
        "OpenAIDetector" => "openai_key",
        "JwtTokenDetector" => "jwt",
        "private_key_test.py" => "private_key",
        "BasicAuthDetector" => "password",
        "KeywordDetector" => "generic_secret / password",
        "IPPublicDetector" => "ip_address",
        _ => "api_token (other providers)",
    }
}

fn any_secret(f: &[Finding]) -> bool {
    f.iter().any(|x| x.kind.is_secret())
}

fn eval_secret_rows(g: &Guard, rows: &[(String, bool, String)], title: &str, exact: &mut Table) -> Table {
    let mut t = Table::new();
    for (kind, positive, text) in rows {
        let f = g.scan(text);
        let hit = if kind == "ip_address" { f.iter().any(|x| x.kind == Kind::IpAddress) } else { any_secret(&f) };
        let e = t.entry(kind.clone()).or_default();
        let x = exact.entry(kind.clone()).or_default();
        let exact_hit = if kind.contains(' ') { hit } else { f.iter().any(|x| x.kind.as_str() == kind.as_str()) };
        match (positive, hit) {
            (true, true) => {
                e.tp += 1;
                if exact_hit {
                    x.tp += 1
                } else {
                    x.fn_ += 1
                }
            }
            (true, false) => {
                e.fn_ += 1;
                x.fn_ += 1;
                if verbose() {
                    println!("MISS [{title}/{kind}] {:?}", text.chars().take(160).collect::<String>());
                }
            }
            (false, true) => {
                e.fp += 1;
                if verbose() {
                    let rules: Vec<(&str, &str)> =
                        f.iter().map(|x| (x.rule, text.get(x.span.clone()).unwrap_or(""))).collect();
                    println!("FALSE [{title}/{kind}] {rules:?} {:?}", text.chars().take(160).collect::<String>());
                }
            }
            (false, false) => {}
        }
    }
    t
}

// ------------------------------------------------------------------------------------------------
// Personal data with spans.

fn presidio_kind(entity: &str) -> Option<Kind> {
    Some(match entity {
        "EMAIL_ADDRESS" => Kind::Email,
        "PHONE_NUMBER" => Kind::Phone,
        "CREDIT_CARD" => Kind::CreditCard,
        "IBAN_CODE" => Kind::Iban,
        "US_SSN" => Kind::UsSsn,
        "IP_ADDRESS" => Kind::IpAddress,
        "PERSON" => Kind::PersonName,
        "STREET_ADDRESS" => Kind::PostalAddress,
        _ => return None,
    })
}

/// Character offsets to byte offsets.
fn char_to_byte(text: &str, r: Range<usize>) -> Range<usize> {
    let idx: Vec<usize> = text.char_indices().map(|(b, _)| b).chain(std::iter::once(text.len())).collect();
    let a = idx.get(r.start).copied().unwrap_or(text.len());
    let b = idx.get(r.end).copied().unwrap_or(text.len());
    a..b
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Span-level scoring of one text: `expected` spans per kind (only kinds in `scored`).
fn score_spans(
    t: &mut Table,
    text: &str,
    expected: &[(Kind, Range<usize>)],
    found: &[Finding],
    scored: &[Kind],
    title: &str,
) {
    for (k, r) in expected {
        let e = t.entry(k.as_str().to_owned()).or_default();
        if found.iter().any(|f| f.kind == *k && overlaps(&f.span, r)) {
            e.tp += 1;
        } else {
            e.fn_ += 1;
            if verbose() {
                println!(
                    "MISS [{title}/{}] {:?} in {:?}",
                    k.as_str(),
                    text.get(r.clone()).unwrap_or(""),
                    text.chars().take(140).collect::<String>()
                );
            }
        }
    }
    for f in found {
        if !scored.contains(&f.kind) {
            continue;
        }
        if !expected.iter().any(|(k, r)| *k == f.kind && overlaps(&f.span, r)) {
            t.entry(f.kind.as_str().to_owned()).or_default().fp += 1;
            if verbose() {
                println!(
                    "FALSE [{title}/{}] {:?} in {:?}",
                    f.kind.as_str(),
                    text.get(f.span.clone()).unwrap_or(""),
                    text.chars().take(140).collect::<String>()
                );
            }
        }
    }
}

const STRUCTURED: [Kind; 6] = [Kind::Email, Kind::Phone, Kind::CreditCard, Kind::Iban, Kind::UsSsn, Kind::IpAddress];

// ------------------------------------------------------------------------------------------------
// Generated data: a small deterministic RNG and fake values with valid checksums.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }
    fn alnum(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n).map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize])).collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn luhn_complete(prefix: &str, len: usize, rng: &mut Rng) -> String {
    let mut d = format!("{prefix}{}", rng.digits(len - prefix.len() - 1));
    for c in 0..10 {
        let cand = format!("{d}{c}");
        if triage_core::guard::validate::luhn(&cand) {
            d = cand;
            break;
        }
    }
    d
}

fn fake_card(rng: &mut Rng) -> String {
    let (prefix, len) = match rng.below(5) {
        0 => ("4", 16),
        1 => ("51", 16),
        2 => ("37", 15),
        3 => ("6011", 16),
        _ => ("2221", 16),
    };
    let d = luhn_complete(prefix, len, rng);
    match (rng.below(3), len) {
        (0, 16) => format!("{} {} {} {}", &d[..4], &d[4..8], &d[8..12], &d[12..]),
        (1, 16) => format!("{}-{}-{}-{}", &d[..4], &d[4..8], &d[8..12], &d[12..]),
        (0, 15) => format!("{} {} {}", &d[..4], &d[4..10], &d[10..]),
        _ => d,
    }
}

fn fake_iban(rng: &mut Rng) -> String {
    let (cc, bban) = match rng.below(4) {
        0 => ("DE", rng.digits(18)),
        1 => ("GB", format!("{}{}", rng.alnum(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), rng.digits(14))),
        2 => ("FR", rng.digits(23)),
        _ => ("CH", rng.digits(17)),
    };
    // Check digits: 98 - (BBAN + CC + "00") mod 97.
    let rearranged = format!("{bban}{cc}00");
    let mut rem = 0u64;
    for ch in rearranged.chars() {
        let v = ch.to_digit(36).unwrap() as u64;
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    let iban = format!("{cc}{:02}{bban}", 98 - rem);
    if rng.below(2) == 0 {
        iban.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" ")
    } else {
        iban
    }
}

fn fake_ssn(rng: &mut Rng) -> String {
    loop {
        let area = 1 + rng.below(899);
        if area == 666 {
            continue;
        }
        let group = 1 + rng.below(99);
        let serial = 1 + rng.below(9999);
        return format!("{area:03}-{group:02}-{serial:04}");
    }
}

fn fake_phone(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => format!("+1 {}-{}-{}", 200 + rng.below(700), 200 + rng.below(700), rng.digits(4)),
        1 => format!("({}) {}-{}", 200 + rng.below(700), 200 + rng.below(700), rng.digits(4)),
        2 => format!("+44 20 {} {}", rng.digits(4), rng.digits(4)),
        3 => format!("+41 44 {} {} {}", rng.digits(3), rng.digits(2), rng.digits(2)),
        4 => format!("+49 30 {}", rng.digits(7)),
        _ => format!("{}.{}.{}", 200 + rng.below(700), 200 + rng.below(700), rng.digits(4)),
    }
}

fn fake_ip(rng: &mut Rng) -> String {
    if rng.below(4) == 0 {
        format!("2001:db8:{:x}:{:x}::{:x}", rng.below(65535), rng.below(65535), 1 + rng.below(65534))
    } else {
        format!("{}.{}.{}.{}", 1 + rng.below(222), rng.below(256), rng.below(256), 1 + rng.below(254))
    }
}

fn fake_email(rng: &mut Rng) -> String {
    let first = rng.pick(&["alex", "sam", "jo", "maria", "li", "noor", "kim", "pat"]);
    let last = rng.pick(&["smith", "garcia", "chen", "okafor", "muller", "rossi", "tanaka"]);
    let dom = rng.pick(&["example.com", "example.org", "example.net", "mail.example.co.uk"]);
    match rng.below(3) {
        0 => format!("{first}.{last}@{dom}"),
        1 => format!("{first}{}@{dom}", rng.below(100)),
        _ => format!("{first}_{last}+news@{dom}"),
    }
}

const FIRST: &[&str] = &["Alice", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hiro", "Ines", "Jonas"];
const LAST: &[&str] = &["Martin", "Keller", "Rossi", "Ivanova", "Cohen", "Haddad", "Larsen", "Sato", "Moreau", "Berg"];
const CITY: &[&str] = &["Springfield", "Riverton", "Lakeside", "Fairview", "Milltown"];
const STREET: &[&str] = &["Oak", "Maple", "Cedar", "Hill", "Station"];

/// Fills a presidio-research template with generated values; returns the text and the labelled
/// spans of the kinds this guard covers.
fn fill_template(tpl: &str, rng: &mut Rng) -> (String, Vec<(Kind, Range<usize>)>) {
    let mut out = String::new();
    let mut spans = Vec::new();
    let mut rest = tpl;
    while let Some(a) = rest.find("{{") {
        out.push_str(&rest[..a]);
        let Some(b) = rest[a..].find("}}") else { break };
        let name = &rest[a + 2..a + b];
        rest = &rest[a + b + 2..];
        let first = rng.pick(FIRST);
        let last = rng.pick(LAST);
        let (value, kind): (String, Option<Kind>) = match name {
            "credit_card_number" => (fake_card(rng), Some(Kind::CreditCard)),
            "iban" => (fake_iban(rng), Some(Kind::Iban)),
            "ssn" => (fake_ssn(rng), Some(Kind::UsSsn)),
            "phone_number" => (fake_phone(rng), Some(Kind::Phone)),
            "ip_address" => (fake_ip(rng), Some(Kind::IpAddress)),
            "email" => (fake_email(rng), Some(Kind::Email)),
            "person" | "name" | "name_female" | "name_male" => (format!("{first} {last}"), Some(Kind::PersonName)),
            "first_name" | "first_name_male" | "first_name_female" | "first_name_nonbinary" => {
                (first.to_owned(), Some(Kind::PersonName))
            }
            "last_name" | "last_name_male" | "last_name_female" => (last.to_owned(), Some(Kind::PersonName)),
            "address" => (
                format!("{} {} Street, {} 12345", 1 + rng.below(999), rng.pick(STREET), rng.pick(CITY)),
                Some(Kind::PostalAddress),
            ),
            "street_name" => (format!("{} Street", rng.pick(STREET)), Some(Kind::PostalAddress)),
            "building_number" => ((1 + rng.below(300)).to_string(), Some(Kind::PostalAddress)),
            "city" => (rng.pick(CITY).to_owned(), None),
            "country" => ("Freedonia".to_owned(), None),
            "organization" => ("Acme Widgets".to_owned(), None),
            "age" => ((18 + rng.below(70)).to_string(), None),
            "year" => ((1950 + rng.below(70)).to_string(), None),
            "postcode" | "zipcode" => (rng.digits(5), None),
            "date_of_birth" => {
                (format!("{:02}/{:02}/{}", 1 + rng.below(12), 1 + rng.below(28), 1950 + rng.below(50)), None)
            }
            "date_time" => ("2021-03-04 10:00".to_owned(), None),
            "url" => ("https://www.example.com/page".to_owned(), None),
            "prefix_male" | "prefix" => ("Mr.".to_owned(), None),
            "prefix_female" => ("Ms.".to_owned(), None),
            "secondary_address" => (format!("Apt. {}", rng.below(500)), Some(Kind::PostalAddress)),
            "job" => ("engineer".to_owned(), None),
            "day_of_week" => ("Monday".to_owned(), None),
            "state_abbr" => ("CA".to_owned(), None),
            "us_driver_license" => ("D1234567".to_owned(), None),
            _ => ("Freedonian".to_owned(), None),
        };
        let start = out.len();
        out.push_str(&value);
        if let Some(k) = kind {
            spans.push((k, start..out.len()));
        }
    }
    out.push_str(rest);
    (out, spans)
}

/// Sentences of our own around structured values (more samples than the templates give).
const OWN_TEMPLATES: &[(&str, Kind)] = &[
    ("Please send the invoice to {} by Friday.", Kind::Email),
    ("Reply-To: {}", Kind::Email),
    ("You can reach me on {} after 5pm.", Kind::Phone),
    ("Tel. {}", Kind::Phone),
    ("Charge it to {} and keep the receipt.", Kind::CreditCard),
    ("card number: {}", Kind::CreditCard),
    ("Wire the refund to {} please.", Kind::Iban),
    ("IBAN: {}", Kind::Iban),
    ("Her SSN is {} according to the form.", Kind::UsSsn),
    ("SSN: {}", Kind::UsSsn),
    ("The login came from {} at midnight.", Kind::IpAddress),
    ("ssh admin@{}", Kind::IpAddress),
];

fn fake_for(k: Kind, rng: &mut Rng) -> String {
    match k {
        Kind::Email => fake_email(rng),
        Kind::Phone => fake_phone(rng),
        Kind::CreditCard => fake_card(rng),
        Kind::Iban => fake_iban(rng),
        Kind::UsSsn => fake_ssn(rng),
        _ => fake_ip(rng),
    }
}

/// Hard negatives: values that look like numbers, ids or tokens but are none of our kinds.
fn hard_negative(rng: &mut Rng) -> String {
    let v = match rng.below(14) {
        0 => format!(
            "request id {}-{}-4{}-a{}-{}",
            rng.alnum(8, HEX),
            rng.alnum(4, HEX),
            rng.alnum(3, HEX),
            rng.alnum(3, HEX),
            rng.alnum(12, HEX)
        ),
        1 => format!("fixed in commit {}", rng.alnum(40, HEX)),
        2 => format!("short sha {} on main", rng.alnum(7, HEX)),
        3 => format!(
            "upgrade to version {}.{}.{} (build {})",
            rng.below(20),
            rng.below(40),
            rng.below(100),
            rng.digits(5)
        ),
        4 => format!(
            "the total was {} units, {}.{} % more than {}",
            rng.below(100_000),
            rng.below(100),
            rng.below(10),
            1990 + rng.below(35)
        ),
        5 => format!("<img src=\"data:image/png;base64,iVBORw0KGgo{}\">", rng.alnum(120, B64)),
        6 => format!(
            "at {}-{:02}-{:02}T{:02}:{:02}:{:02}Z the job ran",
            2000 + rng.below(30),
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        ),
        7 => format!("timestamp {} ms", 1_600_000_000_000 + rng.below(100_000_000_000)),
        8 => format!("order #{} shipped in {} boxes", rng.digits(8), rng.below(20)),
        9 => format!("sha256:{}", rng.alnum(64, HEX)),
        10 => {
            format!("the function returned {} after {} ms; see line {}", rng.digits(6), rng.below(900), rng.below(3000))
        }
        11 => format!("use std::collections::HashMap; let x = a::b::c({});", rng.below(10)),
        12 => format!("coordinates {}.{}, -{}.{}", rng.below(90), rng.digits(6), rng.below(180), rng.digits(6)),
        _ => format!(
            "pip install package=={}.{}.{} && npm i lib@{}.{}.{}",
            rng.below(9),
            rng.below(30),
            rng.below(9),
            rng.below(9),
            rng.below(30),
            rng.below(9)
        ),
    };
    v
}

/// Secrets of our own covered formats, generated with random bodies (fake by construction).
fn fake_secret(rng: &mut Rng) -> (String, Kind) {
    let akia = format!("AKIA{}", rng.alnum(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"));
    match rng.below(16) {
        0 => (format!("export AWS_ACCESS_KEY_ID={akia}"), Kind::AwsAccessKey),
        1 => (format!("aws_secret_access_key = {}", rng.alnum(40, B64)), Kind::AwsSecretKey),
        2 => (format!("my token is ghp_{}", rng.alnum(36, ALNUM)), Kind::GithubToken),
        3 => (format!("use glpat-{} for the API", rng.alnum(20, ALNUM)), Kind::GitlabToken),
        4 => (
            format!("SLACK_BOT_TOKEN=xoxb-{}-{}-{}", rng.digits(12), rng.digits(13), rng.alnum(24, ALNUM)),
            Kind::SlackToken,
        ),
        5 => (format!("stripe.api_key = \"sk_live_{}\"", rng.alnum(24, ALNUM)), Kind::StripeKey),
        6 => (
            format!("OPENAI_API_KEY=sk-proj-{}T3BlbkFJ{}", rng.alnum(40, ALNUM), rng.alnum(40, ALNUM)),
            Kind::OpenaiKey,
        ),
        7 => (format!("key: sk-ant-api03-{}AA", rng.alnum(93, ALNUM)), Kind::AnthropicKey),
        8 => (format!("//registry.npmjs.org/:_authToken=npm_{}", rng.alnum(36, ALNUM)), Kind::NpmToken),
        9 => (
            format!("HF_TOKEN hf_{}", rng.alnum(34, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")),
            Kind::HuggingfaceToken,
        ),
        10 => {
            let header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
            (format!("Authorization: Bearer {header}.eyJ{}.{}", rng.alnum(40, ALNUM), rng.alnum(43, ALNUM)), Kind::Jwt)
        }
        11 => {
            let body: Vec<String> = (0..6).map(|_| rng.alnum(64, B64)).collect();
            (
                format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----", body.join("\n")),
                Kind::PrivateKey,
            )
        }
        12 => (
            format!("DATABASE_URL=postgresql://app:{}@db.example.com:5432/prod", rng.alnum(16, ALNUM)),
            Kind::DatabaseUrl,
        ),
        13 => (format!("db_password: \"{}\"", rng.alnum(14, ALNUM)), Kind::Password),
        14 => (format!("x-api-key: {}", rng.alnum(32, LOWER_ALNUM)), Kind::GenericSecret),
        _ => (format!("SENDGRID_API_KEY=SG.{}.{}", rng.alnum(22, ALNUM), rng.alnum(43, ALNUM)), Kind::SendgridKey),
    }
}

// ------------------------------------------------------------------------------------------------
// Issue 16: the groups of the table on the presidio-research synthetic sentences. A
// labelled span is found when a finding of the same group overlaps it; a finding of a group that
// overlaps no labelled span of its group is a false positive. `heldout` keeps the sentences whose
// index % 5 == 0 (never used for training or tuning; scripts/guard_ner_data.py trains on the
// others).

/// The group of a presidio-research entity type.
fn label_group(entity: &str) -> Option<&'static str> {
    Some(match entity {
        "PERSON" => "person names",
        "STREET_ADDRESS" => "postal addresses",
        "DATE_TIME" => "dates",
        "ORGANIZATION" => "organizations",
        "EMAIL_ADDRESS" | "PHONE_NUMBER" | "CREDIT_CARD" | "IBAN_CODE" | "US_SSN" | "IP_ADDRESS" => "structured PII",
        _ => return None,
    })
}

/// The group of a finding.
fn finding_group(k: Kind) -> Option<&'static str> {
    Some(match k {
        Kind::Person | Kind::PersonName => "person names",
        Kind::Address | Kind::PostalAddress => "postal addresses",
        Kind::Date | Kind::DateOfBirth => "dates",
        Kind::Organization => "organizations",
        Kind::Email | Kind::Phone | Kind::CreditCard | Kind::Iban | Kind::UsSsn | Kind::IpAddress => "structured PII",
        _ => return None,
    })
}

fn group_eval(g: &Guard, synth: &Value, split: Option<usize>) -> Table {
    let mut t = Table::new();
    for (i, row) in synth.as_array().into_iter().flatten().enumerate() {
        match split {
            Some(0) if i % 5 != 0 => continue,
            Some(1) if i % 5 == 0 => continue,
            _ => {}
        }
        let text = s(row, "full_text");
        let mut expected: Vec<(&str, Range<usize>)> = Vec::new();
        for sp in row.get("spans").and_then(Value::as_array).into_iter().flatten() {
            let Some(grp) = label_group(s(sp, "entity_type")) else { continue };
            let a = sp.get("start_position").and_then(Value::as_u64).unwrap_or(0) as usize;
            let b = sp.get("end_position").and_then(Value::as_u64).unwrap_or(0) as usize;
            expected.push((grp, char_to_byte(text, a..b)));
        }
        let found: Vec<(&str, Range<usize>)> =
            g.scan(text).into_iter().filter_map(|f| Some((finding_group(f.kind)?, f.span))).collect();
        for (grp, r) in &expected {
            let e = t.entry((*grp).to_owned()).or_default();
            if found.iter().any(|(fg, fr)| fg == grp && overlaps(fr, r)) {
                e.tp += 1;
            } else {
                e.fn_ += 1;
                if verbose() {
                    println!("MISS [groups/{grp}] {:?} in {:?}", text.get(r.clone()).unwrap_or(""), text);
                }
            }
        }
        for (fg, fr) in &found {
            if !expected.iter().any(|(grp, r)| grp == fg && overlaps(fr, r)) {
                t.entry((*fg).to_owned()).or_default().fp += 1;
                if verbose() {
                    println!("FALSE [groups/{fg}] {:?} in {:?}", text.get(fr.clone()).unwrap_or(""), text);
                }
            }
        }
    }
    t
}

#[test]
fn entity_groups_on_synthetic_sentences() {
    let Some(dir) = data_dir() else {
        println!("NOTE: ../shared/data/guard not found; skipping the entity groups.");
        return;
    };
    let synth: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("presidio_research_synth_dataset_v2.json")).unwrap())
            .unwrap();
    let g = Guard::new();
    assert!(g.has_recognizer(), "the entity recogniser's weights are missing");
    let held = group_eval(&g, &synth, Some(0));
    print_table("Issue 16 groups, held-out split (index % 5 == 0, never trained or tuned on)", &held);
    print_table("Issue 16 groups, training split (index % 5 != 0)", &group_eval(&g, &synth, Some(1)));
    print_table(
        "Issue 16 groups, rules only (before issue 16), held-out split",
        &group_eval(&Guard::rules_only(), &synth, Some(0)),
    );
    // Floors a little below the recorded held-out figures (docs/GUARD.md).
    let floor = |k: &str, r: f64, p: f64| {
        let v = held.get(k).copied().unwrap_or_default();
        assert!(v.recall() >= r, "{k} recall {:.3} < {r}", v.recall());
        assert!(v.precision() >= p, "{k} precision {:.3} < {p}", v.precision());
    };
    floor("person names", 0.80, 0.80);
    floor("postal addresses", 0.70, 0.75);
    floor("dates", 0.60, 0.60);
    floor("structured PII", 0.95, 0.95);
}

// ------------------------------------------------------------------------------------------------

struct Results {
    secrets: Table,
    secrets_exact: Table,
    pii_cases: Table,
    pii_synth: Table,
    generated: Table,
    negatives: Tally,
}

fn run() -> Results {
    let g = Guard::new();
    let mut secrets_exact = Table::new();
    let mut secrets = Table::new();
    let mut pii_cases = Table::new();
    let mut pii_synth = Table::new();

    if let Some(dir) = data_dir() {
        // gitleaks + detect-secrets.
        let mut rows = Vec::new();
        for v in read_jsonl(&dir.join("gitleaks_rule_cases.jsonl")) {
            let kind = gitleaks_kind(s(&v, "rule_id"));
            rows.push((kind.to_owned(), s(&v, "label") == "tp", s(&v, "text").to_owned()));
        }
        for v in read_jsonl(&dir.join("detect_secrets_plugin_cases.jsonl")) {
            let kind = detect_secrets_kind(s(&v, "plugin"));
            rows.push((kind.to_owned(), s(&v, "label") == "tp", s(&v, "text").to_owned()));
        }
        secrets = eval_secret_rows(&g, &rows, "secrets", &mut secrets_exact);

        // Presidio recognizer cases: only the entity types this guard covers.
        for v in read_jsonl(&dir.join("presidio_recognizer_cases.jsonl")) {
            let Some(kind) = presidio_kind(s(&v, "entity")) else { continue };
            let text = s(&v, "text");
            let found: Vec<Finding> = g.scan(text).into_iter().filter(|f| f.kind == kind).collect();
            let spans: Vec<Range<usize>> = v
                .get("expected_spans")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| {
                            Some(char_to_byte(text, p.get(0)?.as_u64()? as usize..p.get(1)?.as_u64()? as usize))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let count = v.get("expected_count").and_then(Value::as_u64).unwrap_or(0) as usize;
            if spans.is_empty() && count > 0 {
                // Count-only rows: compare the number of findings.
                let e = pii_cases.entry(kind.as_str().to_owned()).or_default();
                let tp = found.len().min(count);
                e.tp += tp;
                e.fn_ += count - tp;
                e.fp += found.len().saturating_sub(count);
                continue;
            }
            let expected: Vec<(Kind, Range<usize>)> = spans.into_iter().map(|r| (kind, r)).collect();
            score_spans(&mut pii_cases, text, &expected, &found, &[kind], "presidio-cases");
        }

        // Presidio-research synthetic sentences.
        let synth: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("presidio_research_synth_dataset_v2.json")).unwrap(),
        )
        .unwrap();
        let scored = [STRUCTURED.as_slice(), &[Kind::PersonName, Kind::PostalAddress]].concat();
        for row in synth.as_array().into_iter().flatten() {
            let text = s(row, "full_text");
            let mut expected = Vec::new();
            for sp in row.get("spans").and_then(Value::as_array).into_iter().flatten() {
                let Some(k) = presidio_kind(s(sp, "entity_type")) else { continue };
                let a = sp.get("start_position").and_then(Value::as_u64).unwrap_or(0) as usize;
                let b = sp.get("end_position").and_then(Value::as_u64).unwrap_or(0) as usize;
                expected.push((k, char_to_byte(text, a..b)));
            }
            let found = g.scan(text);
            score_spans(&mut pii_synth, text, &expected, &found, &scored, "presidio-synth");
        }
    } else {
        println!("NOTE: ../shared/data/guard not found; skipping the labelled data (generated sets only).");
    }

    // Generated sentences: templates (when present) and our own, plus secrets and hard negatives.
    let mut generated = Table::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let templates: Vec<String> = data_dir()
        .and_then(|d| std::fs::read_to_string(d.join("presidio_research_templates.txt")).ok())
        // The template file writes line breaks as `\\n` (and `\\,` for a comma); expand them.
        .map(|t| {
            t.lines().map(|l| l.replace("\\n", "\n").replace("\\,", ",")).filter(|l| !l.trim().is_empty()).collect()
        })
        .unwrap_or_default();
    let all_scored = [STRUCTURED.as_slice(), &[Kind::PersonName, Kind::PostalAddress]].concat();
    for _round in 0..5 {
        for tpl in &templates {
            let (text, expected) = fill_template(tpl, &mut rng);
            let found = g.scan(&text);
            score_spans(&mut generated, &text, &expected, &found, &all_scored, "generated-templates");
        }
    }
    for _ in 0..60 {
        for (tpl, k) in OWN_TEMPLATES {
            let value = fake_for(*k, &mut rng);
            let (a, b) = tpl.split_once("{}").unwrap();
            let text = format!("{a}{value}{b}");
            let expected = vec![(*k, a.len()..a.len() + value.len())];
            let found = g.scan(&text);
            score_spans(&mut generated, &text, &expected, &found, &STRUCTURED, "generated-own");
        }
    }
    for _ in 0..600 {
        let (text, kind) = fake_secret(&mut rng);
        let found = g.scan(&text);
        let e = generated.entry(format!("{} (secret)", kind.as_str())).or_default();
        if found.iter().any(|f| f.kind == kind) {
            e.tp += 1;
        } else {
            e.fn_ += 1;
            if verbose() {
                println!("MISS [generated-secret/{}] {:?}", kind.as_str(), text.chars().take(120).collect::<String>());
            }
        }
    }
    let mut negatives = Tally::default();
    for _ in 0..2000 {
        let text = hard_negative(&mut rng);
        // Entity kinds are scored on their own (a timestamp is a date there).
        let found: Vec<Finding> = g.scan(&text).into_iter().filter(|f| !f.kind.is_entity()).collect();
        if found.is_empty() {
            negatives.tp += 1;
        } else {
            negatives.fp += 1;
            if verbose() {
                let rules: Vec<&str> = found.iter().map(|f| f.rule).collect();
                println!("FALSE [hard-negative] {rules:?} {text:?}");
            }
        }
    }
    Results { secrets, secrets_exact, pii_cases, pii_synth, generated, negatives }
}

fn total(t: &Table, keys: &[&str]) -> Tally {
    let mut all = Tally::default();
    for (k, v) in t {
        if keys.is_empty() || keys.contains(&k.as_str()) {
            all.add(v);
        }
    }
    all
}

#[test]
fn guard_precision_and_recall() {
    let r = run();
    if !r.secrets.is_empty() {
        print_table("Secrets: gitleaks + detect-secrets rows (found = any secret kind in a tp row; FP = any secret kind in an fp row)", &r.secrets);
        print_table(
            "Secrets, kind-exact recall (the finding has the mapped kind; FP column not meaningful)",
            &r.secrets_exact,
        );
        print_table("Personal data: presidio recognizer cases (span overlap, covered entity types only)", &r.pii_cases);
        print_table("Personal data: presidio-research synthetic sentences (span overlap)", &r.pii_synth);
    }
    print_table("Generated: templates and own sentences with fake values; generated secrets", &r.generated);
    println!(
        "\nHard negatives (UUIDs, git SHAs, versions, numbers, base64 images, timestamps, code): {} clean, {} with a finding ({:.4} false-positive rate)",
        r.negatives.tp,
        r.negatives.fp,
        r.negatives.fp as f64 / (r.negatives.tp + r.negatives.fp) as f64
    );

    // Floors: a little below the recorded figures (docs/GUARD.md), so that regressions fail.
    let structured = ["email", "phone", "credit_card", "iban", "us_ssn", "ip_address"];
    let gen_structured = total(&r.generated, &structured);
    println!(
        "\ngenerated structured PII: precision {:.3} recall {:.3}",
        gen_structured.precision(),
        gen_structured.recall()
    );
    assert!(gen_structured.recall() >= 0.99, "generated structured PII recall {:.3}", gen_structured.recall());
    assert!(gen_structured.precision() >= 0.99, "generated structured PII precision {:.3}", gen_structured.precision());
    let gen_secrets: Table =
        r.generated.iter().filter(|(k, _)| k.ends_with("(secret)")).map(|(k, v)| (k.clone(), *v)).collect();
    assert!(
        total(&gen_secrets, &[]).recall() >= 0.99,
        "generated secrets recall {:.3}",
        total(&gen_secrets, &[]).recall()
    );
    assert!(r.negatives.fp * 200 <= r.negatives.tp + r.negatives.fp, "hard negatives: {} false", r.negatives.fp);
    if !r.secrets.is_empty() {
        let sec = total(&r.secrets, &[]);
        println!("labelled secrets: precision {:.3} recall {:.3}", sec.precision(), sec.recall());
        assert!(sec.recall() >= 0.99, "secret recall {:.3}", sec.recall());
        assert!(sec.precision() >= 0.97, "secret precision {:.3}", sec.precision());
        let cases = total(&r.pii_cases, &[]);
        assert!(cases.recall() >= 0.88, "presidio cases recall {:.3}", cases.recall());
        assert!(cases.precision() >= 0.97, "presidio cases precision {:.3}", cases.precision());
        let synth = total(&r.pii_synth, &structured);
        println!("synthetic structured PII: precision {:.3} recall {:.3}", synth.precision(), synth.recall());
        assert!(synth.recall() >= 0.98, "synthetic structured recall {:.3}", synth.recall());
        assert!(synth.precision() >= 0.97, "synthetic structured precision {:.3}", synth.precision());
    }
}
