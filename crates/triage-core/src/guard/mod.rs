//! Sensitive-content guard: finds personal data and secrets in a request before any routing
//! decision, and redacts them with stable placeholders that a streaming [`Restorer`] puts back
//! into the answer.
//!
//! Why it exists: DESIGN.md's request flow puts the guard right after parsing, so that the
//! router can keep sensitive requests on the `local` tier and, when a request must leave the
//! machine, replace what it found with `<EMAIL_1>`-style placeholders first.
//!
//! - [`Guard::scan`] runs every rule over one text and returns [`Finding`]s: [`Kind`], byte span,
//!   confidence and the rule's name. A finding never holds the matched text, and this module
//!   never logs.
//! - [`Guard::scan_request`] visits every text of a [`ChatRequest`](crate::openai::ChatRequest)
//!   (system/developer/user/assistant/tool messages, text parts, tool-call arguments, tool
//!   descriptions and the strings of their parameter schemas; see [`TextVisit`]) and tags each
//!   finding with a [`Location`].
//! - [`Guard::redact_request`] replaces the findings of the kinds a caller selects and returns a
//!   [`Redaction`]; [`Redaction::restorer`] gives a [`Restorer`] for the streamed answer.
//!
//! Rules (see `rules.rs`) are Rust `regex` patterns (finite automata: linear in the input, no
//! backtracking) written from the public formats of the values (provider token prefixes,
//! ISO/IEC 7812 card numbers with the Luhn check, ISO 13616 IBANs with mod 97, the SSA's SSN
//! ranges, RFC 5322 addresses, RFC 4291 IPv6, RFC 7519 JWTs, RFC 7468 PEM armour), validated by
//! checksums, Shannon entropy and context words (`checks.rs`, [`validate`]). Rules that start
//! with a literal run on the whole text behind the regex engine's literal prefilter; the others
//! run only in windows around cheap anchors (keyword hits from one Aho-Corasick pass, runs of
//! digits, IBAN-shaped starts; `scan.rs`), so clean prose costs a few passes over the bytes.
//! Precision and recall per kind, and what is not covered, are in docs/GUARD.md.

mod cache;
mod checks;
pub mod ner;
mod redact;
mod rules;
mod scan;
pub mod validate;
mod visit;

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

pub use redact::{Redaction, Restorer};
pub use visit::{Location, TextVisit};

use rules::{Gate, Rule};

/// What a finding is. Personal data first, then secrets ([`Kind::is_secret`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An e-mail address (RFC 5322 `local@domain.tld`).
    Email,
    /// A phone number, international (`+41 44 123 45 67`) or national with separators or a
    /// context word (`Phone: 044 123 45 67`).
    Phone,
    /// A payment card number: 12-19 digits, a network's issuer prefix and a valid Luhn digit.
    CreditCard,
    /// An IBAN with a valid ISO 7064 mod-97 check and its country's length.
    Iban,
    /// A US Social Security Number outside the never-issued ranges.
    UsSsn,
    /// An IPv4 or IPv6 address (CIDR suffix included).
    IpAddress,
    /// A date next to a birth context word (`born`, `DOB`, `date of birth`).
    DateOfBirth,
    /// A street address (number, name, street type) or the text after an `address:` label.
    PostalAddress,
    /// A person's name after a supporting word (`name:`, `patient`, `Dear`, `Mr`, `my name is`).
    PersonName,
    /// An AWS access key id (`AKIA...`, `ASIA...`).
    AwsAccessKey,
    /// An AWS secret access key next to its key name, or an Amazon Bedrock API key.
    AwsSecretKey,
    /// A Google Cloud service-account key file (`"type": "service_account"`, `private_key_id`).
    GcpServiceAccount,
    /// A Google API key (`AIza...`).
    GcpApiKey,
    /// An Azure storage/service-bus connection string key or an Entra ID client secret.
    AzureConnectionString,
    /// An OpenAI API key (`sk-...T3BlbkFJ...`, `sk-proj-...`).
    OpenaiKey,
    /// An Anthropic API key (`sk-ant-api03-...`).
    AnthropicKey,
    /// A GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// A GitLab token (`glpat-` and the other `gl*-` prefixes, runner registration tokens).
    GitlabToken,
    /// A Slack token (`xoxb-`, `xoxp-`, ...) or incoming-webhook URL.
    SlackToken,
    /// A Stripe secret or restricted key (`sk_live_`, `rk_live_`) or webhook secret.
    StripeKey,
    /// A Twilio API key (`SK` + 32 hex).
    TwilioKey,
    /// A SendGrid API key (`SG.xxx.yyy`).
    SendgridKey,
    /// An npm access token (`npm_`).
    NpmToken,
    /// A PyPI upload token (`pypi-AgEIcHlwaS5vcmc...`).
    PypiToken,
    /// A Hugging Face token (`hf_`, `api_org_`).
    HuggingfaceToken,
    /// A PEM / OpenSSH / PGP private key block.
    PrivateKey,
    /// A JSON Web Token (three base64url segments, a JSON header with `alg`/`typ`).
    Jwt,
    /// The password of a database URL (`postgres://user:PASSWORD@host`).
    DatabaseUrl,
    /// A password: `password = "..."` assignments, `user:password@` in URLs, `curl -u`.
    Password,
    /// A high-entropy value assigned to a key-like name (`api_key = ...`, `token: ...`) or an
    /// `Authorization` header value.
    GenericSecret,
    /// A token of another provider recognised by its documented prefix (DigitalOcean, Shopify,
    /// Vault, Databricks, Discord, Telegram, ...).
    ApiToken,
    /// A person's name found by the entity recogniser (no supporting word needed).
    Person,
    /// A postal address found by the entity recogniser (any country's layout, one line or
    /// several).
    Address,
    /// A date (of birth, of an appointment, ...) found by the entity recogniser.
    Date,
    /// An organisation's name found by the entity recogniser.
    Organization,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 35] = [
        Kind::Email,
        Kind::Phone,
        Kind::CreditCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::IpAddress,
        Kind::DateOfBirth,
        Kind::PostalAddress,
        Kind::PersonName,
        Kind::AwsAccessKey,
        Kind::AwsSecretKey,
        Kind::GcpServiceAccount,
        Kind::GcpApiKey,
        Kind::AzureConnectionString,
        Kind::OpenaiKey,
        Kind::AnthropicKey,
        Kind::GithubToken,
        Kind::GitlabToken,
        Kind::SlackToken,
        Kind::StripeKey,
        Kind::TwilioKey,
        Kind::SendgridKey,
        Kind::NpmToken,
        Kind::PypiToken,
        Kind::HuggingfaceToken,
        Kind::PrivateKey,
        Kind::Jwt,
        Kind::DatabaseUrl,
        Kind::Password,
        Kind::GenericSecret,
        Kind::ApiToken,
        Kind::Person,
        Kind::Address,
        Kind::Date,
        Kind::Organization,
    ];

    /// Stable snake_case name for headers, metrics and the ledger (`"email"`, `"aws_access_key"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::CreditCard => "credit_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::IpAddress => "ip_address",
            Kind::DateOfBirth => "date_of_birth",
            Kind::PostalAddress => "postal_address",
            Kind::PersonName => "person_name",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::AwsSecretKey => "aws_secret_key",
            Kind::GcpServiceAccount => "gcp_service_account",
            Kind::GcpApiKey => "gcp_api_key",
            Kind::AzureConnectionString => "azure_connection_string",
            Kind::OpenaiKey => "openai_key",
            Kind::AnthropicKey => "anthropic_key",
            Kind::GithubToken => "github_token",
            Kind::GitlabToken => "gitlab_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeKey => "stripe_key",
            Kind::TwilioKey => "twilio_key",
            Kind::SendgridKey => "sendgrid_key",
            Kind::NpmToken => "npm_token",
            Kind::PypiToken => "pypi_token",
            Kind::HuggingfaceToken => "huggingface_token",
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::DatabaseUrl => "database_url",
            Kind::Password => "password",
            Kind::GenericSecret => "generic_secret",
            Kind::ApiToken => "api_token",
            Kind::Person => "person",
            Kind::Address => "address",
            Kind::Date => "date",
            Kind::Organization => "organization",
        }
    }

    /// The placeholder label: `<LABEL_n>` replaces a value of this kind (`"EMAIL"`, `"AWS_KEY"`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Email => "EMAIL",
            Kind::Phone => "PHONE",
            Kind::CreditCard => "CARD",
            Kind::Iban => "IBAN",
            Kind::UsSsn => "SSN",
            Kind::IpAddress => "IP",
            Kind::DateOfBirth => "DOB",
            Kind::PostalAddress => "ADDRESS",
            Kind::PersonName => "NAME",
            Kind::AwsAccessKey => "AWS_KEY",
            Kind::AwsSecretKey => "AWS_SECRET",
            Kind::GcpServiceAccount => "GCP_KEY",
            Kind::GcpApiKey => "GCP_API_KEY",
            Kind::AzureConnectionString => "AZURE_KEY",
            Kind::OpenaiKey => "OPENAI_KEY",
            Kind::AnthropicKey => "ANTHROPIC_KEY",
            Kind::GithubToken => "GITHUB_TOKEN",
            Kind::GitlabToken => "GITLAB_TOKEN",
            Kind::SlackToken => "SLACK_TOKEN",
            Kind::StripeKey => "STRIPE_KEY",
            Kind::TwilioKey => "TWILIO_KEY",
            Kind::SendgridKey => "SENDGRID_KEY",
            Kind::NpmToken => "NPM_TOKEN",
            Kind::PypiToken => "PYPI_TOKEN",
            Kind::HuggingfaceToken => "HF_TOKEN",
            Kind::PrivateKey => "PRIVATE_KEY",
            Kind::Jwt => "JWT",
            Kind::DatabaseUrl => "DB_PASSWORD",
            Kind::Password => "PASSWORD",
            Kind::GenericSecret => "SECRET",
            Kind::ApiToken => "API_TOKEN",
            Kind::Person => "PERSON",
            Kind::Address => "ADDRESS",
            Kind::Date => "DATE",
            Kind::Organization => "ORG",
        }
    }

    /// True for credentials (keys, tokens, passwords); false for personal data.
    pub fn is_secret(self) -> bool {
        !matches!(
            self,
            Kind::Email
                | Kind::Phone
                | Kind::CreditCard
                | Kind::Iban
                | Kind::UsSsn
                | Kind::IpAddress
                | Kind::DateOfBirth
                | Kind::PostalAddress
                | Kind::PersonName
                | Kind::Person
                | Kind::Address
                | Kind::Date
                | Kind::Organization
        )
    }

    /// True for the kinds of the entity recogniser (`person`, `address`, `date`,
    /// `organization`), whose findings carry a model confidence rather than a rule's.
    pub fn is_entity(self) -> bool {
        matches!(self, Kind::Person | Kind::Address | Kind::Date | Kind::Organization)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detected value. Holds no text: only where it is and what it is, so it can be logged or
/// stored (its `Debug` output cannot leak the value).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Byte offsets of the value in the scanned text (`text[span]` is the value; always on
    /// `char` boundaries).
    pub span: Range<usize>,
    /// 0..=1: how sure the rule is (checksummed formats ~0.95, context-supported ones ~0.7).
    pub confidence: f32,
    /// Name of the rule that fired (`"email"`, `"keyed_high_entropy"`, ...).
    pub rule: &'static str,
}

/// The detector: all rules compiled once. Build one with [`Guard::new`] at start-up and share it
/// (`Arc<Guard>`); it is `Send + Sync` and scanning takes `&self`.
///
/// Cost: `new` compiles 56 regexes and two Aho-Corasick automata (about 15 ms in release; the
/// regexes' lazy DFAs then grow per thread as they meet input). [`Guard::scan`] is linear in the
/// text; a clean 8 KB request takes about 65 µs on a 2 vCPU EPYC (docs/BENCHMARKS.md).
pub struct Guard {
    rules: Vec<Rule>,
    /// The entity recogniser (person, address, date, organisation); `None` for rules only.
    ner: Option<&'static ner::Model>,
    /// Verdicts per distinct text (bounded); `None` when built without a cache.
    cache: Option<cache::VerdictCache>,
    /// Keyword prefilter over all `Gate::Keywords` rules (ASCII case-insensitive).
    keywords: Option<AhoCorasick>,
    /// Keyword prefilter over all `Gate::Cased` rules (case-sensitive).
    cased_keywords: Option<AhoCorasick>,
    /// For each cased keyword pattern id, the rules it enables.
    cased_keyword_rules: Vec<Vec<usize>>,
    /// For each keyword pattern id, the rules it enables.
    keyword_rules: Vec<Vec<usize>>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("rules", &self.rules.len()).finish()
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

impl Guard {
    /// Compiles every rule. A rule whose pattern fails to compile is left out (a unit test
    /// asserts that none does), so this never fails or panics.
    pub fn new() -> Guard {
        let mut compiled = Vec::new();
        for spec in rules::specs() {
            if let Ok(rule) = rules::compile(&spec) {
                compiled.push(rule);
            }
        }
        Guard::from_rules(compiled, ner::Model::builtin())
    }

    /// The rules without the entity recogniser (what the guard was before issue 16).
    pub fn rules_only() -> Guard {
        let mut g = Guard::new();
        g.ner = None;
        g
    }

    fn from_rules(rules: Vec<Rule>, ner: Option<&'static ner::Model>) -> Guard {
        let (keywords, keyword_rules) = keyword_automaton(&rules, false);
        let (cased_keywords, cased_keyword_rules) = keyword_automaton(&rules, true);
        let cache = Some(cache::VerdictCache::new(CACHE_ENTRIES));
        Guard { rules, ner, cache, keywords, keyword_rules, cased_keywords, cased_keyword_rules }
    }

    /// True when the entity recogniser runs.
    pub fn has_recognizer(&self) -> bool {
        self.ner.is_some()
    }

    /// Scans one text. Returns findings sorted by span start, never overlapping (where two rules
    /// match the same bytes, the more specific rule wins, then the longer span). Linear in
    /// `text.len()`; never panics, on any UTF-8.
    ///
    /// Verdicts are cached per distinct text (bounded, per `Guard`): scanning the same text again
    /// costs one hash of it and a map look-up. [`Guard::scan_uncached`] always scans.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        if text.is_empty() {
            return Vec::new();
        }
        let Some(cache) = &self.cache else { return self.scan_uncached(text) };
        let key = cache.key(text);
        if let Some(hit) = cache.get(key) {
            return hit.to_vec();
        }
        let found = self.scan_uncached(text);
        cache.put(key, found.as_slice().into());
        found
    }

    /// (entries, hits, misses) of the verdict cache (zeros without one).
    pub fn cache_stats(&self) -> (usize, u64, u64) {
        self.cache.as_ref().map_or((0, 0, 0), cache::VerdictCache::stats)
    }

    /// Returns this guard without its verdict cache (benchmarks of the scan itself).
    pub fn without_cache(mut self) -> Guard {
        self.cache = None;
        self
    }

    /// [`Guard::scan`] without the verdict cache.
    pub fn scan_uncached(&self, text: &str) -> Vec<Finding> {
        if text.is_empty() {
            return Vec::new();
        }
        let raw = scan::run_all(self, text);
        let mut out = resolve(raw);
        if let Some(model) = self.ner {
            add_entities(&mut out, text, model.find(text));
        }
        out
    }
}

/// Entity findings go around the rules' findings: where a rule found something inside an address
/// (a phone in an address block), the address keeps the pieces beside it. A name, organisation or
/// date never contains a key, an e-mail or a card number: an entity of those kinds that overlaps a
/// rule's finding is the recogniser mistaking the structured value's context for an entity, and is
/// dropped (its leftover pieces would be the words around the value: "key", "mail").
fn add_entities(out: &mut Vec<Finding>, text: &str, found: Vec<(Kind, Range<usize>, f32)>) {
    if found.is_empty() {
        return;
    }
    let rules_found: Vec<Range<usize>> = out.iter().map(|f| f.span.clone()).collect();
    for (kind, span, confidence) in found {
        let overlaps_rule = rules_found.iter().any(|r| span.start < r.end && r.start < span.end);
        if overlaps_rule && kind != Kind::Address {
            continue;
        }
        let mut pieces = vec![span];
        for r in &rules_found {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    if p.end <= r.start || r.end <= p.start {
                        vec![p]
                    } else {
                        vec![p.start..r.start.max(p.start), r.end.min(p.end)..p.end]
                    }
                })
                .collect();
        }
        for p in pieces {
            let Some(piece) = text.get(p.clone()) else { continue };
            let lead = piece.len() - piece.trim_start_matches(|c: char| !c.is_alphanumeric()).len();
            let kept = piece.trim_matches(|c: char| !c.is_alphanumeric());
            if kept.is_empty() {
                continue;
            }
            let span = p.start + lead..p.start + lead + kept.len();
            out.push(Finding { kind, span, confidence, rule: "entity_recognizer" });
        }
    }
    out.sort_by_key(|f| f.span.start);
}

/// Resolves overlapping rule findings: higher priority, then longer, then earlier wins.
fn resolve(mut raw: Vec<(u8, Finding)>) -> Vec<Finding> {
    {
        if raw.is_empty() {
            return Vec::new();
        }
        // Resolve overlaps: higher priority, then longer, then earlier wins.
        raw.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then((b.1.span.end - b.1.span.start).cmp(&(a.1.span.end - a.1.span.start)))
                .then(a.1.span.start.cmp(&b.1.span.start))
        });
        let mut out: Vec<Finding> = Vec::new();
        for (_, f) in raw {
            if out.iter().all(|o| o.span.end <= f.span.start || f.span.end <= o.span.start) {
                out.push(f);
            }
        }
        out.sort_by_key(|f| f.span.start);
        out
    }
}

impl Guard {
    /// Scans every text of a request ([`TextVisit`]: messages, parts, tool calls, tool
    /// definitions) and tags each finding with where it is. Spans are relative to the visited
    /// string ([`Location`] says which).
    pub fn scan_request<R: TextVisit + ?Sized>(&self, req: &R) -> Vec<(Location, Finding)> {
        let mut out = Vec::new();
        req.visit_texts(&mut |loc, text| {
            for f in self.scan(text) {
                out.push((loc.clone(), f));
            }
        });
        out
    }

    /// The set of kinds in a request: the sensitivity verdict for routing and the ledger.
    pub fn kinds<R: TextVisit + ?Sized>(&self, req: &R) -> BTreeSet<Kind> {
        let mut out = BTreeSet::new();
        req.visit_texts(&mut |_, text| {
            for f in self.scan(text) {
                out.insert(f.kind);
            }
        });
        out
    }

    /// Replaces, in place, every finding whose kind `select` accepts with a placeholder
    /// `<LABEL_n>` ([`Kind::label`]; `n` counts per label from 1; the same value gets the same
    /// placeholder everywhere in the request; a placeholder that already occurs in the request's
    /// text is skipped so that restoring is exact). Tool-call arguments that parse as JSON are
    /// redacted string by string and re-serialized; otherwise as raw text. Returns the map to
    /// restore the answer with; [`Redaction::is_empty`] when nothing was replaced.
    pub fn redact_request<R, F>(&self, req: &mut R, select: F) -> Redaction
    where
        R: TextVisit + ?Sized,
        F: Fn(Kind) -> bool,
    {
        self.redact_request_where(req, |f: &Finding| select(f.kind))
    }

    /// [`Guard::redact_request`] with a selection per finding (kind and confidence: the
    /// gateway drops findings below a kind's threshold).
    pub fn redact_request_where<R, F>(&self, req: &mut R, select: F) -> Redaction
    where
        R: TextVisit + ?Sized,
        F: Fn(&Finding) -> bool,
    {
        let mut per_text: Vec<Vec<Finding>> = Vec::new();
        let mut reserved = std::collections::HashSet::new();
        req.visit_texts(&mut |_, text| {
            redact::collect_placeholder_like(text, &mut reserved);
            per_text.push(self.scan(text).into_iter().filter(|f| select(f)).collect());
        });
        let mut redaction = Redaction::with_reserved(reserved);
        if per_text.iter().all(Vec::is_empty) {
            return redaction;
        }
        let mut i = 0usize;
        req.visit_texts_mut(&mut |_, text| {
            if let Some(findings) = per_text.get(i) {
                if !findings.is_empty() {
                    *text = redaction.apply(text, findings);
                }
            }
            i += 1;
        });
        redaction
    }

    /// Redacts one text (the same placeholders as [`Guard::redact_request`]), returning the new
    /// text and the map.
    pub fn redact_text<F: Fn(Kind) -> bool>(&self, text: &str, select: F) -> (String, Redaction) {
        let mut reserved = std::collections::HashSet::new();
        redact::collect_placeholder_like(text, &mut reserved);
        let mut redaction = Redaction::with_reserved(reserved);
        let findings: Vec<Finding> = self.scan(text).into_iter().filter(|f| select(f.kind)).collect();
        let out = if findings.is_empty() { text.to_owned() } else { redaction.apply(text, &findings) };
        (out, redaction)
    }

    /// Number of compiled rules (for diagnostics).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// Distinct texts whose verdicts a guard keeps (about 100 bytes each, text not included).
const CACHE_ENTRIES: usize = 16_384;

/// Builds the keyword automaton of the keyword-gated rules (case-insensitive ones, or the
/// case-sensitive ones when `cased`). Leftmost-longest matching reports one keyword per place,
/// so each pattern also enables the rules of every other pattern it contains (`password`
/// enables the rules gated on `pass`).
fn keyword_automaton(rules: &[Rule], cased: bool) -> (Option<AhoCorasick>, Vec<Vec<usize>>) {
    let mut patterns: Vec<&'static str> = Vec::new();
    let mut owners: Vec<Vec<usize>> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let words = match rule.gate {
            Gate::Keywords(w, _, _) | Gate::Assign(w, _, _) if !cased => w,
            Gate::Cased(w, _, _) if cased => w,
            _ => continue,
        };
        for w in words {
            let same = |p: &&str| if cased { *p == *w } else { p.eq_ignore_ascii_case(w) };
            match patterns.iter().position(same) {
                Some(at) => owners[at].push(i),
                None => {
                    patterns.push(w);
                    owners.push(vec![i]);
                }
            }
        }
    }
    let norm = |p: &str| if cased { p.to_owned() } else { p.to_ascii_lowercase() };
    let mut enabled: Vec<Vec<usize>> = Vec::with_capacity(patterns.len());
    for p in &patterns {
        let mut rs: Vec<usize> = Vec::new();
        for (q, o) in patterns.iter().zip(&owners) {
            if norm(p).contains(&norm(q)) {
                rs.extend(o);
            }
        }
        rs.sort_unstable();
        rs.dedup();
        enabled.push(rs);
    }
    if patterns.is_empty() {
        return (None, enabled);
    }
    let ac = AhoCorasickBuilder::new()
        .ascii_case_insensitive(!cased)
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .ok();
    (ac, enabled)
}

#[cfg(test)]
mod tests;
