//! Configuration: the TOML the user wrote, checked and turned into a [`Catalog`].
//!
//! Two stages, as in ripgrep and TensorZero: `Raw*` structs mirror the file (unknown fields are
//! errors), then [`parse`] validates every value and cross-reference. Every error names the file,
//! the line and the field, e.g. `triage.toml:42: models[1].provider: unknown provider "opnai"`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::catalog::{
    Access, AliasPattern, AliasTarget, AuthMode, AutoRouting, BreakerPolicy, BudgetPeriod, BudgetScope, BudgetSpec,
    Capabilities, Catalog, Deployment, Endpoint, GuardAction, GuardPolicy, LocalEngine, Model, ModelId, Provider,
    ProviderKind, RetryPolicy, ServerSettings, SpendSettings, Timeouts,
};
use crate::cost::{PerMillion, Price};
use crate::router::ScorerKind;

mod evals;

/// The built-in default configuration, also what `triage init` writes.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Name given to the built-in defaults in messages.
pub const DEFAULT_SOURCE: &str = "built-in defaults";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("{file}: cannot read the config file: {source}")]
    Io {
        /// The path.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A value is missing, malformed or inconsistent.
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        /// The path.
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// Dotted path of the field, e.g. `models[1].provider`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads the catalog from `path`, or the built-in defaults when `path` does not exist and
/// `required` is false (the default `./triage.toml` may be absent; an explicit `--config` may not).
///
/// Errors: [`ConfigError`].
pub fn load(path: &Path, required: bool) -> Result<Catalog, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => defaults(),
        Err(source) => Err(ConfigError::Io { file: path.display().to_string(), source }),
    }
}

/// The built-in default catalog.
///
/// Errors: none in practice (the defaults are checked by a test), but the type stays honest.
pub fn defaults() -> Result<Catalog, ConfigError> {
    parse(DEFAULT_CONFIG, DEFAULT_SOURCE)
}

/// A GGUF model file found on this machine, to be served in-process by the built-in catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLocalModel {
    /// The catalog id clients may name; [`with_local_model`] makes it unique.
    pub id: String,
    /// The GGUF file.
    pub model_path: std::path::PathBuf,
    /// Tokens of one sequence (prompt and answer), the engine's `context` and the model's
    /// `context_window`.
    pub context: u32,
    /// The model's chat template takes tool definitions: the model gets the `tools` capability.
    pub tools: bool,
    /// Where it was found, for the comment above it (e.g. "registered with `triage models add`").
    pub found_in: String,
}

/// Name of the provider [`with_local_model`] adds.
pub const FOUND_LOCAL_PROVIDER: &str = "gguf";

/// `config` (the text of a configuration such as [`DEFAULT_CONFIG`]) with `found` added as a
/// `kind = "local"` provider named [`FOUND_LOCAL_PROVIDER`] and a model of the first tier, free,
/// placed before the file's first `[[models]]` entry (and the comment above it) so that it is the
/// first choice of that tier (ties in price go to the model listed first).
///
/// The model's id is `found.id` reduced to lowercase letters, digits and `.` `_` `:` `-` (others
/// become `-`), with `-gguf` appended when it would name a tier of the default catalog (a tier
/// name is resolved before a model id) or be empty. The result is checked by [`parse`] like any file.
pub fn with_local_model(config: &str, found: &FoundLocalModel) -> String {
    let mut id: String = found
        .id
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') { c } else { '-' })
        .collect();
    if id.is_empty() || ["auto", "local", "mid", "frontier"].contains(&id.as_str()) || id.starts_with("role:") {
        id.push_str(if id.is_empty() { "gguf" } else { "-gguf" });
    }
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let capabilities = if found.tools { r#"["tools"]"# } else { "[]" };
    let section = format!(
        "# A GGUF model found on this machine ({found_in}), run in-process by llama.cpp:
         # `parallel` sequences at once, `queue` more waiting, `context` tokens each.
         [providers.{provider}]
         kind = \"local\"
         model_path = {path}
         parallel = 2
         queue = 8
         context = {context}
         
         [[models]]
         id = {id}
         provider = \"{provider}\"
         tier = \"local\"
         price = {{ input = 0.0, cached_input = 0.0, output = 0.0 }}
         context_window = {context}
         capabilities = {capabilities}
         
",
        found_in = found.found_in.replace('\n', " "),
        provider = FOUND_LOCAL_PROVIDER,
        path = quote(&found.model_path.to_string_lossy()),
        context = found.context.max(1),
        id = quote(&id),
    );
    // Insert before the first `[[models]]` line and the comment lines right above it.
    let mut at = config.len();
    let mut offset = 0;
    let mut comment_start: Option<usize> = None;
    for line in config.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("[[models]]") {
            at = comment_start.unwrap_or(offset);
            break;
        }
        if t.starts_with('#') {
            comment_start.get_or_insert(offset);
        } else {
            comment_start = None;
        }
        offset += line.len();
    }
    let mut out = String::with_capacity(config.len() + section.len() + 1);
    out.push_str(&config[..at]);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&section);
    out.push_str(&config[at..]);
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    tiers: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    aliases: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    providers: BTreeMap<Spanned<String>, RawProvider>,
    #[serde(default)]
    models: Vec<Spanned<RawModel>>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    breaker: RawBreaker,
    auth: Option<Spanned<String>>,
    #[serde(default)]
    router: RawRouter,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    spend: RawSpend,
    #[serde(default)]
    budgets: Vec<Spanned<RawBudget>>,
    #[serde(default)]
    evals: evals::RawEvals,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    default: Option<Spanned<String>>,
    #[serde(default)]
    kinds: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    min_confidence: BTreeMap<String, Spanned<f64>>,
    #[serde(default)]
    teams: BTreeMap<String, RawGuardOverride>,
    #[serde(default)]
    keys: BTreeMap<String, RawGuardOverride>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGuardOverride {
    default: Option<Spanned<String>>,
    #[serde(default)]
    kinds: BTreeMap<String, Spanned<String>>,
}

fn guard_action(ctx: &Ctx<'_>, v: &Spanned<String>, field: &str) -> Result<GuardAction, ConfigError> {
    Ok(match v.get_ref().as_str() {
        "allow" => GuardAction::Allow,
        "redact" => GuardAction::Redact,
        "local_only" => GuardAction::LocalOnly,
        "block" => GuardAction::Block,
        other => {
            return Err(ctx.err(&v.span(), field, format!("\"{other}\" is not local_only, redact, block or allow")))
        }
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    scorer: Option<Spanned<String>>,
    model_file: Option<String>,
    encoder_dir: Option<String>,
    sticky_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpend {
    database: Option<String>,
    baseline_model: Option<Spanned<String>>,
    soft_limit: Option<Spanned<f64>>,
    default_output_tokens: Option<u64>,
    reservation_lease_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    scope: Spanned<String>,
    subject: Option<String>,
    period: Spanned<String>,
    limit_usd: Spanned<f64>,
    tier: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    num_retries: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    max_retry_wait_ms: Option<u64>,
    deadline_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: Option<u32>,
    failure_rate: Option<Spanned<f64>>,
    min_requests: Option<u32>,
    window_ms: Option<u64>,
    cooldown_ms: Option<u64>,
    panic_threshold: Option<Spanned<f64>>,
    max_ejection: Option<Spanned<f64>>,
    auth_quarantine_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    provider: Spanned<String>,
    upstream_model: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<u64>>,
    shutdown_grace_secs: Option<u64>,
    #[serde(default)]
    access: BTreeMap<Spanned<String>, Spanned<String>>,
    header_read_timeout_ms: Option<Spanned<u64>>,
    body_read_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    key_recheck_ms: Option<Spanned<u64>>,
    max_tokenize_bytes: Option<Spanned<u64>>,
    log_summary_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Spanned<ProviderKind>,
    base_url: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    local: bool,
    model_path: Option<Spanned<String>>,
    parallel: Option<Spanned<u32>>,
    queue: Option<Spanned<u32>>,
    context: Option<Spanned<u32>>,
    threads: Option<Spanned<u32>>,
    worker: Option<Spanned<Vec<String>>>,
    max_tokens: Option<Spanned<u32>>,
    chat_template: Option<Spanned<String>>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    health_check_interval_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: Spanned<String>,
    provider: Spanned<String>,
    upstream_model: Option<String>,
    tier: Spanned<String>,
    price: Spanned<RawPrice>,
    context_window: Spanned<u64>,
    max_output_tokens: Option<u64>,
    #[serde(default)]
    capabilities: Vec<RawCapability>,
    #[serde(default)]
    deployments: Vec<RawDeployment>,
    #[serde(default)]
    fallback: Vec<Spanned<String>>,
    #[serde(default)]
    context_window_fallback: Vec<Spanned<String>>,
    #[serde(default)]
    content_policy_fallback: Vec<Spanned<String>>,
    profile: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    output: f64,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawCapability {
    Tools,
    Vision,
    JsonSchema,
}

/// Reports errors against one source text.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn err(&self, span: &Range<usize>, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: self.line(span),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The dotted field at byte `offset`, from the nearest table header and the key on its line.
    fn field_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        let line = self.text[line_start..line_end].trim();
        let mut table = String::new();
        let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
        for l in self.text[..line_start].lines() {
            let l = l.trim();
            if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                let n = arrays.entry(name.trim().to_owned()).or_insert(0);
                table = format!("{}[{}]", name.trim(), *n);
                *n += 1;
            } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
                table = name.trim().to_owned();
            }
        }
        let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_owned());
        match (table.is_empty(), key) {
            (_, None) if line.starts_with('[') => line.trim_matches(|c| c == '[' || c == ']').to_owned(),
            (true, Some(k)) => k,
            (false, Some(k)) => format!("{table}.{k}"),
            (_, None) => table,
        }
    }
}

/// The quality scorer's profile of each tier (see [`AutoRouting::Scorer`]'s `tier_profiles`):
/// the `profile` of the tier's cheapest model (blended price; the first listed on a tie).
fn tier_profiles(tiers: &[String], models: &[Model]) -> Vec<Option<String>> {
    (0..tiers.len())
        .map(|t| {
            let mut best: Option<&Model> = None;
            for m in models.iter().filter(|m| m.tier == t) {
                if best.is_none_or(|b| m.price.blended() < b.price.blended()) {
                    best = Some(m);
                }
            }
            best.and_then(|m| m.profile.clone())
        })
        .collect()
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

/// Parses and validates configuration text. `file` names the source in error messages.
///
/// Errors: [`ConfigError::Invalid`] for the first problem found.
pub fn parse(text: &str, file: &str) -> Result<Catalog, ConfigError> {
    let ctx = Ctx { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(&span, ctx.field_at(span.start), e.message().trim().to_owned())
    })?;

    let server = validate_server(&ctx, raw.server)?;

    let tiers: Vec<String> = match &raw.tiers {
        Some(t) => {
            if t.get_ref().is_empty() {
                return Err(ctx.err(&t.span(), "tiers", "must list at least one tier, cheapest first"));
            }
            let mut seen = HashSet::new();
            for name in t.get_ref() {
                check_name(&ctx, name, "tiers")?;
                if !seen.insert(name.get_ref().as_str()) {
                    return Err(ctx.err(&name.span(), "tiers", format!("tier \"{}\" is listed twice", name.get_ref())));
                }
            }
            t.get_ref().iter().map(|s| s.get_ref().clone()).collect()
        }
        None => vec!["local".into(), "mid".into(), "frontier".into()],
    };

    let mut providers = Vec::with_capacity(raw.providers.len());
    for (name, p) in raw.providers {
        let field = format!("providers.{}", name.get_ref());
        check_name(&ctx, &name, &field)?;
        let kind = *p.kind.get_ref();
        let (url, engine) = if kind == ProviderKind::Local {
            let engine = local_engine(&ctx, &p, &field)?;
            (format!("local://{}", engine.model_path), Some(engine))
        } else {
            let engine_field = [
                ("model_path", p.model_path.as_ref().map(Spanned::span)),
                ("parallel", p.parallel.as_ref().map(Spanned::span)),
                ("queue", p.queue.as_ref().map(Spanned::span)),
                ("context", p.context.as_ref().map(Spanned::span)),
                ("threads", p.threads.as_ref().map(Spanned::span)),
                ("worker", p.worker.as_ref().map(Spanned::span)),
                ("max_tokens", p.max_tokens.as_ref().map(Spanned::span)),
                ("chat_template", p.chat_template.as_ref().map(Spanned::span)),
            ]
            .into_iter()
            .find_map(|(n, s)| s.map(|s| (n, s)));
            if let Some((name, span)) = engine_field {
                return Err(ctx.err(
                    &span,
                    format!("{field}.{name}"),
                    "only a kind = \"local\" provider runs a model file",
                ));
            }
            let Some(base_url) = &p.base_url else {
                return Err(ctx.err(&p.kind.span(), format!("{field}.base_url"), "is required for this kind"));
            };
            let url = base_url.get_ref().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len() {
                return Err(ctx.err(
                    &base_url.span(),
                    format!("{field}.base_url"),
                    format!("\"{}\" is not an http:// or https:// URL", base_url.get_ref()),
                ));
            }
            (url.to_owned(), None)
        };
        let api_key_env = match p.api_key_env {
            Some(v) => {
                let ok = !v.get_ref().is_empty() && v.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(ctx.err(
                        &v.span(),
                        format!("{field}.api_key_env"),
                        "must be the NAME of an environment variable (letters, digits, _), never the key itself",
                    ));
                }
                Some(v.into_inner())
            }
            None => None,
        };
        let d = Timeouts::default();
        providers.push(Provider {
            name: name.into_inner(),
            kind,
            base_url: url,
            engine,
            api_key_env,
            local: p.local || kind == ProviderKind::Local,
            timeouts: Timeouts {
                connect: ms(p.connect_timeout_ms, d.connect),
                first_byte: ms(p.first_byte_timeout_ms, d.first_byte),
                idle: ms(p.idle_timeout_ms, d.idle),
                request: ms(p.request_timeout_ms, d.request),
            },
            health_check_interval: Duration::from_secs(p.health_check_interval_secs.unwrap_or(30).max(1)),
        });
    }

    let mut models: Vec<Model> = Vec::with_capacity(raw.models.len());
    let mut deployments: Vec<Deployment> = Vec::new();
    let mut fallback_refs: Vec<[Vec<Spanned<String>>; 3]> = Vec::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        let f = |name: &str| format!("models[{i}].{name}");
        let m = m.into_inner();
        check_name(&ctx, &m.id, &f("id"))?;
        let id = m.id.get_ref();
        if id == "auto" || id.starts_with("role:") || tiers.contains(id) {
            return Err(ctx.err(&m.id.span(), f("id"), format!("\"{id}\" is reserved (auto, a tier name, or role:*)")));
        }
        if models.iter().any(|o| &o.id == id) {
            return Err(ctx.err(&m.id.span(), f("id"), format!("model id \"{id}\" is defined twice")));
        }
        let provider = providers.iter().position(|p| &p.name == m.provider.get_ref()).ok_or_else(|| {
            ctx.err(&m.provider.span(), f("provider"), format!("unknown provider \"{}\"", m.provider.get_ref()))
        })?;
        let tier = tiers.iter().position(|t| t == m.tier.get_ref()).ok_or_else(|| {
            ctx.err(
                &m.tier.span(),
                f("tier"),
                format!("unknown tier \"{}\" (tiers: {})", m.tier.get_ref(), tiers.join(", ")),
            )
        })?;
        let price_span = m.price.span();
        let rp = m.price.into_inner();
        let money = |v: f64, which: &str| {
            PerMillion::from_usd(v).ok_or_else(|| {
                ctx.err(
                    &price_span,
                    f(&format!("price.{which}")),
                    format!("{v} is not a price in USD per million tokens (0 to 1000000)"),
                )
            })
        };
        let input = money(rp.input, "input")?;
        let price = Price {
            input,
            cached_input: match rp.cached_input {
                Some(v) => money(v, "cached_input")?,
                None => input,
            },
            cache_write: match rp.cache_write {
                Some(v) => money(v, "cache_write")?,
                None => input,
            },
            output: money(rp.output, "output")?,
        };
        if *m.context_window.get_ref() == 0 {
            return Err(ctx.err(&m.context_window.span(), f("context_window"), "must be a positive number of tokens"));
        }
        let mut capabilities = Capabilities::default();
        for c in m.capabilities {
            match c {
                RawCapability::Tools => capabilities.tools = true,
                RawCapability::Vision => capabilities.vision = true,
                RawCapability::JsonSchema => capabilities.json_schema = true,
            }
        }
        let id = m.id.into_inner();
        let upstream_model = m.upstream_model.unwrap_or_else(|| id.clone());
        let mut ids = vec![deployments.len()];
        deployments.push(Deployment { model: i, provider, upstream_model: upstream_model.clone() });
        for (j, d) in m.deployments.into_iter().enumerate() {
            let p = providers.iter().position(|p| &p.name == d.provider.get_ref()).ok_or_else(|| {
                ctx.err(
                    &d.provider.span(),
                    f(&format!("deployments[{j}].provider")),
                    format!("unknown provider \"{}\"", d.provider.get_ref()),
                )
            })?;
            let up = d.upstream_model.unwrap_or_else(|| upstream_model.clone());
            if deployments.iter().any(|o| o.model == i && o.provider == p && o.upstream_model == up) {
                return Err(ctx.err(
                    &d.provider.span(),
                    f(&format!("deployments[{j}]")),
                    "the same deployment is listed twice",
                ));
            }
            ids.push(deployments.len());
            deployments.push(Deployment { model: i, provider: p, upstream_model: up });
        }
        for &d in &ids {
            if let Some(e) = &providers[deployments[d].provider].engine {
                if *m.context_window.get_ref() > u64::from(e.context) {
                    return Err(ctx.err(
                        &m.context_window.span(),
                        f("context_window"),
                        format!(
                            "{} tokens is more than the local provider \"{}\" holds (context = {})",
                            m.context_window.get_ref(),
                            providers[deployments[d].provider].name,
                            e.context
                        ),
                    ));
                }
            }
        }
        let profile = match m.profile {
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(ctx.err(&p.span(), f("profile"), "must name a model of the quality model file"))
            }
            p => p.map(|p| p.into_inner().trim().to_owned()),
        };
        fallback_refs.push([m.fallback, m.context_window_fallback, m.content_policy_fallback]);
        models.push(Model {
            upstream_model,
            id,
            provider,
            deployments: ids,
            fallback: Vec::new(),
            context_window_fallback: Vec::new(),
            content_policy_fallback: Vec::new(),
            tier,
            price,
            context_window: m.context_window.into_inner(),
            max_output_tokens: m.max_output_tokens,
            capabilities,
            profile,
        });
    }
    for (i, lists) in fallback_refs.into_iter().enumerate() {
        let [fallback, context, policy] = lists;
        let resolve = |list: Vec<Spanned<String>>, name: &str| -> Result<Vec<ModelId>, ConfigError> {
            let mut out = Vec::with_capacity(list.len());
            for (k, r) in list.into_iter().enumerate() {
                let field = format!("models[{i}].{name}[{k}]");
                let target = models
                    .iter()
                    .position(|m| &m.id == r.get_ref())
                    .ok_or_else(|| ctx.err(&r.span(), field.clone(), format!("unknown model \"{}\"", r.get_ref())))?;
                if target == i {
                    return Err(ctx.err(&r.span(), field, "a model cannot fall back to itself"));
                }
                if !out.contains(&target) {
                    out.push(target);
                }
            }
            Ok(out)
        };
        let fallback = resolve(fallback, "fallback")?;
        let context = resolve(context, "context_window_fallback")?;
        let policy = resolve(policy, "content_policy_fallback")?;
        let m = &mut models[i];
        m.fallback = fallback;
        m.context_window_fallback = context;
        m.content_policy_fallback = policy;
    }

    let mut roles = BTreeMap::new();
    for (role, tier) in raw.roles {
        let t = tiers.iter().position(|t| t == tier.get_ref()).ok_or_else(|| {
            ctx.err(
                &tier.span(),
                format!("roles.{role}"),
                format!("unknown tier \"{}\" (tiers: {})", tier.get_ref(), tiers.join(", ")),
            )
        })?;
        roles.insert(role, t);
    }

    let mut aliases = BTreeMap::new();
    let mut alias_patterns = Vec::new();
    for (alias, target) in raw.aliases {
        let pattern = crate::catalog::is_pattern(&alias);
        if !pattern && (alias == "auto" || tiers.contains(&alias) || models.iter().any(|m| m.id == alias)) {
            return Err(ctx.err(
                &target.span(),
                format!("aliases.{alias}"),
                "an alias may not shadow auto, a tier or a model id",
            ));
        }
        let name = target.get_ref();
        let resolved = if name == "auto" {
            AliasTarget::Auto
        } else if let Some(t) = tiers.iter().position(|t| t == name) {
            AliasTarget::Tier(t)
        } else if let Some(role) = name.strip_prefix("role:") {
            let t = roles.get(role).copied().ok_or_else(|| {
                ctx.err(&target.span(), format!("aliases.{alias}"), format!("unknown role \"{role}\""))
            })?;
            AliasTarget::Role(role.to_owned(), t)
        } else {
            let m = models.iter().position(|m| &m.id == name).ok_or_else(|| {
                ctx.err(
                    &target.span(),
                    format!("aliases.{alias}"),
                    format!("unknown model \"{name}\" (an alias names a model id, a tier, role:<name> or auto)"),
                )
            })?;
            AliasTarget::Model(m)
        };
        if pattern {
            alias_patterns.push(AliasPattern { pattern: alias, target: resolved });
        } else {
            aliases.insert(alias, resolved);
        }
    }
    // Most specific pattern first: the one with the most literal characters, then by name.
    alias_patterns.sort_by(|a: &AliasPattern, b: &AliasPattern| {
        let lit = |p: &str| p.chars().filter(|c| !matches!(c, '*' | '?')).count();
        lit(&b.pattern).cmp(&lit(&a.pattern)).then_with(|| a.pattern.cmp(&b.pattern))
    });

    let d = RetryPolicy::default();
    let r = raw.retry;
    let retry = RetryPolicy {
        num_retries: r.num_retries.unwrap_or(d.num_retries).min(10),
        initial_backoff: ms(r.initial_backoff_ms, d.initial_backoff),
        max_backoff: ms(r.max_backoff_ms, d.max_backoff),
        max_retry_wait: ms(r.max_retry_wait_ms, d.max_retry_wait),
        deadline: ms(r.deadline_ms, d.deadline),
    };
    let d = BreakerPolicy::default();
    let b = raw.breaker;
    let fraction = |v: &Option<Spanned<f64>>, field: &str, default: f64| match v {
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(ctx.err(&v.span(), field, "must be a fraction in [0, 1]")),
        None => Ok(default),
    };
    let failure_rate = match b.failure_rate {
        Some(v) if (0.0..=1.0).contains(v.get_ref()) && *v.get_ref() > 0.0 => *v.get_ref(),
        Some(v) => return Err(ctx.err(&v.span(), "breaker.failure_rate", "must be a fraction in (0, 1]")),
        None => d.failure_rate,
    };
    let breaker = BreakerPolicy {
        consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures).max(1),
        failure_rate,
        min_requests: b.min_requests.unwrap_or(d.min_requests).max(1),
        window: ms(b.window_ms, d.window),
        cooldown: ms(b.cooldown_ms, d.cooldown),
        panic_threshold: fraction(&b.panic_threshold, "breaker.panic_threshold", d.panic_threshold)?,
        max_ejection: fraction(&b.max_ejection, "breaker.max_ejection", d.max_ejection)?,
        auth_quarantine: ms(b.auth_quarantine_ms, d.auth_quarantine),
    };

    let auth = match raw.auth {
        None => AuthMode::None,
        Some(a) => match a.get_ref().as_str() {
            "none" => AuthMode::None,
            "keys" => AuthMode::Keys,
            other => return Err(ctx.err(&a.span(), "auth", format!("\"{other}\" is not \"none\" or \"keys\""))),
        },
    };
    let auto_routing = {
        let kind = match &raw.router.scorer {
            None => Some(ScorerKind::Lexical),
            Some(k) => match k.get_ref().as_str() {
                "cheapest" => None,
                other => Some(other.parse::<ScorerKind>().map_err(|_| {
                    ctx.err(
                        &k.span(),
                        "router.scorer",
                        format!(
                            "\"{other}\" is not \"lexical\", \"embedding\", \"quality\", \"random\" or \"cheapest\""
                        ),
                    )
                })?),
            },
        };
        match kind {
            Some(kind) => AutoRouting::Scorer {
                kind,
                model_file: raw.router.model_file,
                encoder_dir: raw.router.encoder_dir,
                tier_profiles: tier_profiles(&tiers, &models),
            },
            None => AutoRouting::Cheapest,
        }
    };
    let guard = {
        let default = match &raw.guard.default {
            Some(v) => guard_action(&ctx, v, "guard.default")?,
            None => GuardAction::LocalOnly,
        };
        let is_kind = |k: &str| crate::guard::Kind::ALL.iter().any(|x| x.as_str() == k);
        let names = || crate::guard::Kind::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ");
        let kinds_of = |raw: &BTreeMap<String, Spanned<String>>, at: &str| -> Result<_, ConfigError> {
            let mut kinds = BTreeMap::new();
            for (k, v) in raw {
                if !(k == "secrets" || k == "personal_data" || is_kind(k)) {
                    return Err(ctx.err(
                        &v.span(),
                        format!("{at}.{k}"),
                        format!("unknown kind (secrets, personal_data, or one of: {})", names()),
                    ));
                }
                kinds.insert(k.clone(), guard_action(&ctx, v, &format!("{at}.{k}"))?);
            }
            Ok(kinds)
        };
        let kinds = kinds_of(&raw.guard.kinds, "guard.kinds")?;
        let mut min_confidence = BTreeMap::new();
        for (k, v) in &raw.guard.min_confidence {
            let at = format!("guard.min_confidence.{k}");
            if !is_kind(k) {
                return Err(ctx.err(&v.span(), at, format!("unknown kind (one of: {})", names())));
            }
            let c = *v.get_ref();
            if !(0.0..=1.0).contains(&c) {
                return Err(ctx.err(&v.span(), at, format!("{c} is not between 0 and 1")));
            }
            min_confidence.insert(k.clone(), (c * 1000.0).round() as u16);
        }
        let overrides = |raw: &BTreeMap<String, RawGuardOverride>, at: &str| -> Result<_, ConfigError> {
            let mut out = BTreeMap::new();
            for (name, o) in raw {
                let default = match &o.default {
                    Some(v) => Some(guard_action(&ctx, v, &format!("{at}.{name}.default"))?),
                    None => None,
                };
                let kinds = kinds_of(&o.kinds, &format!("{at}.{name}.kinds"))?;
                out.insert(name.clone(), crate::catalog::GuardOverride { default, kinds });
            }
            Ok(out)
        };
        let teams = overrides(&raw.guard.teams, "guard.teams")?;
        let keys = overrides(&raw.guard.keys, "guard.keys")?;
        GuardPolicy { default, kinds, min_confidence, teams, keys }
    };
    let rs = raw.spend;
    let database = match rs.database {
        None => Some("sqlite://triage.db".to_owned()),
        Some(d) if d.is_empty() => None,
        Some(d) => Some(d),
    };
    if auth == AuthMode::Keys && database.is_none() {
        return Err(ctx.err(&(0..0), "spend.database", "auth = \"keys\" needs a database for the keys"));
    }
    let baseline_model =
        match rs.baseline_model {
            Some(b) => Some(models.iter().position(|m| &m.id == b.get_ref()).ok_or_else(|| {
                ctx.err(&b.span(), "spend.baseline_model", format!("unknown model \"{}\"", b.get_ref()))
            })?),
            None => {
                let top = tiers.len().saturating_sub(1);
                (0..models.len()).filter(|&m| models[m].tier == top).min_by_key(|&m| models[m].price.blended())
            }
        };
    let soft_limit = match rs.soft_limit {
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => return Err(ctx.err(&v.span(), "spend.soft_limit", "must be a fraction between 0 and 1")),
        None => 0.8,
    };
    let reservation_lease = match rs.reservation_lease_secs {
        Some(v) if (1..=3600).contains(v.get_ref()) => std::time::Duration::from_secs(*v.get_ref()),
        Some(v) => {
            return Err(ctx.err(&v.span(), "spend.reservation_lease_secs", "must be between 1 and 3600 seconds"))
        }
        None => std::time::Duration::from_secs(15),
    };
    let spend = SpendSettings {
        database,
        baseline_model,
        soft_limit,
        default_output_tokens: rs.default_output_tokens.unwrap_or(4096),
        reservation_lease,
    };
    let mut budgets = Vec::new();
    for (i, b) in raw.budgets.into_iter().enumerate() {
        let b = b.into_inner();
        let f = |n: &str| format!("budgets[{i}].{n}");
        let need_subject = |kind: &str| -> Result<String, ConfigError> {
            b.subject
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ctx.err(&b.scope.span(), f("subject"), format!("a {kind} budget needs a subject")))
        };
        let scope = match b.scope.get_ref().as_str() {
            "global" => BudgetScope::Global,
            "user" => BudgetScope::User(need_subject("user")?),
            "team" => BudgetScope::Team(need_subject("team")?),
            other => {
                return Err(ctx.err(
                    &b.scope.span(),
                    f("scope"),
                    format!("\"{other}\" is not global, user or team (key budgets are set with `triage keys create`)"),
                ))
            }
        };
        let period = match b.period.get_ref().as_str() {
            "day" => BudgetPeriod::Day,
            "month" => BudgetPeriod::Month,
            other => return Err(ctx.err(&b.period.span(), f("period"), format!("\"{other}\" is not day or month"))),
        };
        let tier = match &b.tier {
            Some(t) => Some(
                tiers
                    .iter()
                    .position(|x| x == t.get_ref())
                    .ok_or_else(|| ctx.err(&t.span(), f("tier"), format!("unknown tier \"{}\"", t.get_ref())))?,
            ),
            None => None,
        };
        let usd = *b.limit_usd.get_ref();
        if !usd.is_finite() || usd < 0.0 {
            return Err(ctx.err(&b.limit_usd.span(), f("limit_usd"), "must be a non-negative amount of USD"));
        }
        budgets.push(BudgetSpec { scope, period, tier, limit: crate::cost::NanoUsd((usd * 1e9).round() as u64) });
    }
    let evals = evals::validate(&ctx, raw.evals, &models, &roles, spend.database.is_some())?;
    // Sticky routing per conversation (issue 14): on for 30 minutes unless set; 0 turns it off.
    let sticky_secs = raw.router.sticky_secs.unwrap_or(1800);

    Ok(Catalog {
        source: file.to_owned(),
        server,
        tiers,
        roles,
        aliases,
        alias_patterns,
        providers,
        models,
        deployments,
        retry,
        breaker,
        auth,
        auto_routing,
        sticky_secs,
        guard,
        spend,
        budgets,
        evals,
    })
}

/// The engine settings of a `kind = "local"` provider.
fn local_engine(ctx: &Ctx<'_>, p: &RawProvider, field: &str) -> Result<LocalEngine, ConfigError> {
    if let Some(u) = &p.base_url {
        return Err(ctx.err(&u.span(), format!("{field}.base_url"), "a local provider has no URL; it runs model_path"));
    }
    if let Some(k) = &p.api_key_env {
        return Err(ctx.err(&k.span(), format!("{field}.api_key_env"), "a local provider needs no API key"));
    }
    let Some(path) = &p.model_path else {
        return Err(ctx.err(&p.kind.span(), format!("{field}.model_path"), "is required: the GGUF file to run"));
    };
    if path.get_ref().trim().is_empty() {
        return Err(ctx.err(&path.span(), format!("{field}.model_path"), "must name a GGUF file"));
    }
    let positive = |v: &Option<Spanned<u32>>, name: &str, default: u32| match v {
        Some(v) if *v.get_ref() == 0 => Err(ctx.err(&v.span(), format!("{field}.{name}"), "must be at least 1")),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    };
    let worker = match &p.worker {
        Some(w) if w.get_ref().first().is_none_or(|prog| prog.trim().is_empty()) => {
            return Err(ctx.err(
                &w.span(),
                format!("{field}.worker"),
                "must name a program, then its arguments, e.g. [\"/usr/bin/triage\", \"engine-worker\"]",
            ))
        }
        Some(w) => Some(w.get_ref().clone()),
        None => None,
    };
    let chat_template = match &p.chat_template {
        None => None,
        Some(t) if t.get_ref().trim().is_empty() => {
            return Err(ctx.err(
                &t.span(),
                format!("{field}.chat_template"),
                "is empty: give a Jinja chat template, or the path of a file holding one",
            ))
        }
        // Jinja has `{{` or `{%`; anything else is the path of a file holding the template.
        Some(t) if t.get_ref().contains("{{") || t.get_ref().contains("{%") => Some(t.get_ref().clone()),
        Some(t) => match std::fs::read_to_string(t.get_ref()) {
            Ok(text) if !text.trim().is_empty() => Some(text),
            Ok(_) => {
                return Err(ctx.err(
                    &t.span(),
                    format!("{field}.chat_template"),
                    format!("the file {} is empty", t.get_ref()),
                ))
            }
            Err(e) => {
                return Err(ctx.err(
                    &t.span(),
                    format!("{field}.chat_template"),
                    format!(
                        "is not Jinja (no `{{{{` or `{{%`), so it names a file, and {} cannot be read: {e}",
                        t.get_ref()
                    ),
                ))
            }
        },
    };
    Ok(LocalEngine {
        worker,
        model_path: path.get_ref().clone(),
        parallel: positive(&p.parallel, "parallel", 2)?,
        queue: p.queue.as_ref().map_or(8, |q| *q.get_ref()),
        context: positive(&p.context, "context", 4096)?,
        threads: p.threads.as_ref().map_or(0, |t| *t.get_ref()),
        max_tokens: positive(&p.max_tokens, "max_tokens", DEFAULT_LOCAL_MAX_TOKENS)?,
        chat_template,
    })
}

/// Tokens a local engine generates at most for a request that sets no `max_tokens` (nor
/// `max_completion_tokens`), unless the provider's `max_tokens` says otherwise: without a limit
/// a base model that never ends its turn would generate until its context is full (minutes on a
/// laptop's CPU). 512 tokens is a long answer (about 380 English words) and, for a small model on
/// two cores, some seconds.
pub const DEFAULT_LOCAL_MAX_TOKENS: u32 = 512;

fn validate_server(ctx: &Ctx<'_>, raw: RawServer) -> Result<ServerSettings, ConfigError> {
    let mut s = ServerSettings::default();
    if let Some(l) = raw.listen {
        s.listen = l.get_ref().parse::<SocketAddr>().map_err(|_| {
            ctx.err(&l.span(), "server.listen", format!("\"{}\" is not an address like 127.0.0.1:8787", l.get_ref()))
        })?;
    }
    if let Some(b) = raw.max_body_bytes {
        s.max_body_bytes = usize::try_from(*b.get_ref())
            .ok()
            .filter(|&n| n >= 1024)
            .ok_or_else(|| ctx.err(&b.span(), "server.max_body_bytes", "must be at least 1024 bytes"))?;
    }
    if let Some(g) = raw.shutdown_grace_secs {
        s.shutdown_grace = Duration::from_secs(g);
    }
    for (path, level) in raw.access {
        let field = format!("server.access.\"{}\"", path.get_ref());
        let Some(endpoint) = Endpoint::of_path(path.get_ref()) else {
            let known: Vec<&str> = Endpoint::ALL.iter().map(|(_, p)| *p).collect();
            return Err(ctx.err(&path.span(), field, format!("not one of {}", known.join(", "))));
        };
        let access = match level.get_ref().as_str() {
            "public" => Access::Public,
            "key" => Access::Key,
            "admin" => Access::Admin,
            other => return Err(ctx.err(&level.span(), field, format!("\"{other}\" is not public, key or admin"))),
        };
        s.access.insert(endpoint, access);
    }
    let positive_ms = |v: &Option<Spanned<u64>>, name: &str, into: &mut Duration| -> Result<(), ConfigError> {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                return Err(ctx.err(&v.span(), format!("server.{name}"), "must be at least 1"));
            }
            *into = Duration::from_millis(*v.get_ref());
        }
        Ok(())
    };
    positive_ms(&raw.header_read_timeout_ms, "header_read_timeout_ms", &mut s.header_read_timeout)?;
    positive_ms(&raw.body_read_timeout_ms, "body_read_timeout_ms", &mut s.body_read_timeout)?;
    positive_ms(&raw.idle_timeout_ms, "idle_timeout_ms", &mut s.idle_timeout)?;
    positive_ms(&raw.key_recheck_ms, "key_recheck_ms", &mut s.key_recheck)?;
    if let Some(v) = raw.log_summary_secs {
        if *v.get_ref() == 0 {
            return Err(ctx.err(&v.span(), "server.log_summary_secs", "must be at least 1"));
        }
        s.log_summary = Duration::from_secs(*v.get_ref());
    }
    if let Some(b) = raw.max_tokenize_bytes {
        s.max_tokenize_bytes = usize::try_from(*b.get_ref())
            .ok()
            .filter(|&n| n >= 1024)
            .ok_or_else(|| ctx.err(&b.span(), "server.max_tokenize_bytes", "must be at least 1024 bytes"))?;
    }
    Ok(s)
}

fn check_name(ctx: &Ctx<'_>, name: &Spanned<String>, field: &str) -> Result<(), ConfigError> {
    let n = name.get_ref();
    let ok = !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic()) && !n.contains(',');
    if ok {
        Ok(())
    } else {
        Err(ctx.err(&name.span(), field, format!("\"{n}\" must be non-empty printable ASCII without spaces or commas")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(text: &str) -> String {
        parse(text, "t.toml").unwrap_err().to_string()
    }

    const BASE: &str = r#"
tiers = ["local", "frontier"]

[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:9/v1/"

[[models]]
id = "small"
provider = "up"
tier = "local"
price = { input = 0.1, output = 0.2 }
context_window = 1000
"#;

    #[test]
    fn guard_thresholds_and_key_and_team_overrides() {
        let text = format!(
            "{BASE}\n[guard]\ndefault = \"local_only\"\n[guard.kinds]\norganization = \"allow\"\n[guard.min_confidence]\nperson = 0.7\n[guard.teams.legal]\ndefault = \"block\"\nkinds = {{ date = \"redact\" }}\n[guard.keys.key_1]\nkinds = {{ person = \"allow\" }}\n"
        );
        let c = parse(&text, "t.toml").unwrap();
        let g = c.guard();
        assert!((g.min_confidence("person") - 0.7).abs() < 1e-6);
        assert!((g.min_confidence("address") - 0.5).abs() < 1e-6);
        assert_eq!(g.min_confidence("email"), 0.0);
        // Global: kinds, then the default.
        assert_eq!(g.action_for("organization", false, None, None), GuardAction::Allow);
        assert_eq!(g.action_for("person", false, None, None), GuardAction::LocalOnly);
        // Team: its kinds, the global kinds, then its default.
        assert_eq!(g.action_for("date", false, None, Some("legal")), GuardAction::Redact);
        assert_eq!(g.action_for("organization", false, None, Some("legal")), GuardAction::Allow);
        assert_eq!(g.action_for("person", false, None, Some("legal")), GuardAction::Block);
        // Key over its team.
        assert_eq!(g.action_for("person", false, Some("key_1"), Some("legal")), GuardAction::Allow);
        assert_eq!(g.action_for("date", false, Some("key_1"), Some("legal")), GuardAction::Redact);
        // Unknown kinds and out-of-range thresholds are refused.
        let bad = format!("{BASE}\n[guard.min_confidence]\nperson = 1.5\n");
        assert!(err_of(&bad).contains("not between 0 and 1"), "{}", err_of(&bad));
        let bad = format!("{BASE}\n[guard.teams.t]\nkinds = {{ nobody = \"allow\" }}\n");
        assert!(err_of(&bad).contains("unknown kind"), "{}", err_of(&bad));
    }

    #[test]
    fn defaults_parse_and_have_three_tiers() {
        let c = defaults().unwrap();
        assert_eq!(c.tiers(), ["local", "mid", "frontier"]);
        assert_eq!(c.source(), DEFAULT_SOURCE);
        let local = &c.models()[0];
        assert_eq!(c.tiers()[local.tier], "local");
        assert_eq!(c.provider_of(0).base_url, "http://127.0.0.1:11434/v1");
        assert!(c.provider_of(0).local);
        assert!(c
            .models()
            .iter()
            .any(|m| c.provider_of(m.provider).api_key_env.as_deref() == Some("ANTHROPIC_API_KEY")));
        assert!(c.models().iter().any(|m| c.provider_of(m.provider).api_key_env.as_deref() == Some("OPENAI_API_KEY")));
    }

    #[test]
    fn a_found_local_model_becomes_the_first_choice_of_the_local_tier() {
        let found = FoundLocalModel {
            id: "Qwen2.5 1.5B Instruct".into(),
            model_path: "/models/a \"quoted\" dir/q.gguf".into(),
            context: 4096,
            tools: true,
            found_in: "registered with `triage models add`".into(),
        };
        let text = with_local_model(DEFAULT_CONFIG, &found);
        let c = parse(&text, DEFAULT_SOURCE).unwrap();
        let m = &c.models()[0];
        assert_eq!(m.id, "qwen2.5-1.5b-instruct");
        assert_eq!(c.tiers()[m.tier], "local");
        assert_eq!(m.context_window, 4096);
        assert!(m.capabilities.tools);
        let p = c.provider_of(0);
        assert_eq!(p.name, FOUND_LOCAL_PROVIDER);
        assert!(p.local);
        let engine = p.engine.as_ref().unwrap();
        assert_eq!(engine.model_path, "/models/a \"quoted\" dir/q.gguf");
        assert_eq!((engine.parallel, engine.queue, engine.context), (2, 8, 4096));
        // Everything the defaults had is still there, after it.
        let defaults = defaults().unwrap();
        assert_eq!(c.models().len(), defaults.models().len() + 1);
        assert_eq!(c.models()[1].id, defaults.models()[0].id);
        // The comment introducing the models stays with them.
        let models_comment = text.find("# Models.").unwrap();
        assert!(text.find("[providers.gguf]").unwrap() < models_comment);

        // Names that a tier would shadow, or that are empty, get a suffix.
        for (given, id) in [("local", "local-gguf"), ("", "gguf"), ("AUTO", "auto-gguf")] {
            let f = FoundLocalModel { id: given.into(), tools: false, ..found.clone() };
            let c = parse(&with_local_model(DEFAULT_CONFIG, &f), "t").unwrap();
            assert_eq!(c.models()[0].id, id);
            assert!(!c.models()[0].capabilities.tools);
        }
    }

    #[test]
    fn base_parses_with_trailing_slash_trimmed_and_cached_price_defaulting_to_input() {
        let c = parse(BASE, "t.toml").unwrap();
        assert_eq!(c.providers()[0].base_url, "http://127.0.0.1:9/v1");
        assert_eq!(c.models()[0].price.cached_input, c.models()[0].price.input);
        assert_eq!(c.models()[0].upstream_model, "small");
    }

    #[test]
    fn unknown_provider_names_file_line_and_field() {
        let text = BASE.replace("provider = \"up\"", "provider = \"nope\"");
        assert_eq!(err_of(&text), "t.toml:10: models[0].provider: unknown provider \"nope\"");
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = BASE.replace("kind = \"openai\"", "kind = \"openai\"\ntimeout = 3");
        let e = err_of(&text);
        assert!(e.starts_with("t.toml:6: providers.up.timeout: unknown field `timeout`"), "{e}");
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let text = BASE.replace("context_window = 1000", "context_window = \"big\"");
        let e = err_of(&text);
        assert!(e.starts_with("t.toml:13: models[0].context_window:"), "{e}");
    }

    #[test]
    fn unknown_kind_is_reported() {
        let e = err_of(&BASE.replace("kind = \"openai\"", "kind = \"grpc\""));
        assert!(e.starts_with("t.toml:5: providers.up.kind: unknown variant `grpc`"), "{e}");
    }

    #[test]
    fn key_in_api_key_env_is_refused() {
        let e = err_of(&BASE.replace("kind = \"openai\"", "kind = \"openai\"\napi_key_env = \"sk-abc-123\""));
        assert!(e.starts_with("t.toml:6: providers.up.api_key_env: must be the NAME"), "{e}");
    }

    #[test]
    fn role_to_unknown_tier_and_alias_to_unknown_model() {
        let e = err_of(&format!("{BASE}\n[roles]\nsearch = \"mid\"\n"));
        assert_eq!(e, "t.toml:16: roles.search: unknown tier \"mid\" (tiers: local, frontier)");
        let e = err_of(&format!("{BASE}\n[aliases]\nfast = \"big\"\n"));
        assert_eq!(
            e,
            "t.toml:16: aliases.fast: unknown model \"big\" (an alias names a model id, a tier, role:<name> or auto)"
        );
        let e = err_of(&format!("{BASE}\n[aliases]\n\"claude-*\" = \"role:nope\"\n"));
        assert_eq!(e, "t.toml:16: aliases.claude-*: unknown role \"nope\"");
    }

    #[test]
    fn negative_price_and_duplicate_id() {
        let e = err_of(&BASE.replace("input = 0.1", "input = -1.0"));
        assert!(e.starts_with("t.toml:12: models[0].price.input:"), "{e}");
        let dup = format!("{BASE}\n[[models]]\nid = \"small\"\nprovider = \"up\"\ntier = \"local\"\nprice = {{ input = 0.1, output = 0.2 }}\ncontext_window = 1\n");
        assert_eq!(err_of(&dup), "t.toml:16: models[1].id: model id \"small\" is defined twice");
    }

    #[test]
    fn deployments_and_fallbacks_resolve() {
        let text = format!(
            "{BASE}deployments = [{{ provider = \"up2\", upstream_model = \"other-name\" }}]\nfallback = [\"big\"]\n\n[[models]]\nid = \"big\"\nprovider = \"up\"\ntier = \"frontier\"\nprice = {{ input = 1.0, output = 2.0 }}\ncontext_window = 9000\ncontent_policy_fallback = [\"small\"]\n\n[providers.up2]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8/v1\"\n\n[retry]\nnum_retries = 1\n[breaker]\ncooldown_ms = 7000\n"
        );
        let c = parse(&text, "t.toml").unwrap();
        let small = &c.models()[0];
        assert_eq!(small.deployments, [0, 1]);
        assert_eq!(c.deployments()[1].upstream_model, "other-name");
        assert_eq!(c.providers()[c.deployments()[1].provider].name, "up2");
        assert_eq!(small.fallback, [1]);
        assert_eq!(c.models()[1].content_policy_fallback, [0]);
        assert_eq!(c.retry().num_retries, 1);
        assert_eq!(c.breaker().cooldown, Duration::from_secs(7));
        let bad = text.replace("fallback = [\"big\"]", "fallback = [\"huge\"]");
        assert_eq!(err_of(&bad), "t.toml:15: models[0].fallback[0]: unknown model \"huge\"");
    }

    #[test]
    fn auth_spend_and_budgets() {
        let c = parse(BASE, "t.toml").unwrap();
        assert_eq!(c.auth(), AuthMode::None);
        assert_eq!(c.spend().database.as_deref(), Some("sqlite://triage.db"));
        assert_eq!(c.spend().baseline_model, None, "no model in the top tier");
        let text = format!("auth = \"keys\"\n{BASE}\n[spend]\ndatabase = \"postgres://db/x\"\nbaseline_model = \"small\"\n\n[[budgets]]\nscope = \"team\"\nsubject = \"eng\"\nperiod = \"month\"\nlimit_usd = 20.5\ntier = \"frontier\"\n");
        let c = parse(&text, "t.toml").unwrap();
        assert_eq!(c.auth(), AuthMode::Keys);
        assert_eq!(c.spend().baseline_model, Some(0));
        assert_eq!(c.budgets()[0].scope, BudgetScope::Team("eng".into()));
        assert_eq!(c.budgets()[0].limit, crate::cost::NanoUsd(20_500_000_000));
        assert_eq!(c.budgets()[0].tier, Some(1));
        let e = err_of(&text.replace("scope = \"team\"", "scope = \"planet\""));
        assert!(e.starts_with("t.toml:21: budgets[0].scope:"), "{e}");
        let e = err_of(&format!("auth = \"keys\"\n{BASE}\n[spend]\ndatabase = \"\"\n"));
        assert!(e.contains("spend.database"), "{e}");
    }

    #[test]
    fn bad_listen_address() {
        let e = err_of(&format!("{BASE}[server]\nlisten = \"localhost\"\n"));
        assert_eq!(e, "t.toml:15: server.listen: \"localhost\" is not an address like 127.0.0.1:8787");
    }

    #[test]
    fn a_models_profile_maps_its_tier_for_the_quality_scorer() {
        use crate::catalog::AutoRouting;
        // Two frontier models: the cheaper one decides the tier's profile; local has none.
        let cfg = format!(
            "{BASE}\n[[models]]\nid = \"big\"\nprovider = \"up\"\ntier = \"frontier\"\nprice = {{ input = 10, output = 30 }}\ncontext_window = 1000\nprofile = \"gpt-4-0314\"\n\n[[models]]\nid = \"big2\"\nprovider = \"up\"\ntier = \"frontier\"\nprice = {{ input = 5, output = 15 }}\ncontext_window = 1000\nprofile = \" gpt-4-1106-preview \"\n\n[router]\nscorer = \"quality\"\nmodel_file = \"q.json\"\n"
        );
        let c = parse(&cfg, "t.toml").unwrap();
        assert_eq!(c.models()[1].profile.as_deref(), Some("gpt-4-0314"));
        assert_eq!(c.models()[0].profile, None);
        let AutoRouting::Scorer { tier_profiles, .. } = c.auto_routing() else { panic!("{:?}", c.auto_routing()) };
        assert_eq!(*tier_profiles, vec![None, Some("gpt-4-1106-preview".to_owned())]);
        let e = err_of(&format!("{BASE}profile = \"  \"\n"));
        assert!(e.contains("models[0].profile") && e.contains("must name a model"), "{e}");
    }

    #[test]
    fn router_scorers_parse_and_an_unknown_one_is_named() {
        use crate::catalog::AutoRouting;
        assert_eq!(
            *parse(BASE, "t.toml").unwrap().auto_routing(),
            AutoRouting::Scorer {
                kind: ScorerKind::Lexical,
                model_file: None,
                encoder_dir: None,
                tier_profiles: vec![None, None]
            }
        );
        let emb = format!("{BASE}\n[router]\nscorer = \"embedding\"\nencoder_dir = \"/opt/minilm\"\n");
        assert_eq!(
            *parse(&emb, "t.toml").unwrap().auto_routing(),
            AutoRouting::Scorer {
                kind: ScorerKind::Embedding,
                model_file: None,
                encoder_dir: Some("/opt/minilm".into()),
                tier_profiles: vec![None, None]
            }
        );
        let cheap = format!("{BASE}\n[router]\nscorer = \"cheapest\"\n");
        assert_eq!(*parse(&cheap, "t.toml").unwrap().auto_routing(), AutoRouting::Cheapest);
        let e = err_of(&format!("{BASE}\n[router]\nscorer = \"bert\"\n"));
        assert!(e.contains("router.scorer") && e.contains("\"bert\" is not \"lexical\", \"embedding\""), "{e}");
    }

    const LOCAL: &str = r#"
tiers = ["local", "frontier"]

[providers.engine]
kind = "local"
model_path = "/models/tiny.gguf"
parallel = 3
context = 2048

[[models]]
id = "tiny"
provider = "engine"
tier = "local"
price = { input = 0, output = 0 }
context_window = 2048
"#;

    #[test]
    fn a_local_provider_runs_its_model_file_and_is_local() {
        let c = parse(LOCAL, "t.toml").unwrap();
        let p = &c.providers()[0];
        assert_eq!(p.kind, ProviderKind::Local);
        assert!(p.local, "marked local without saying so");
        assert_eq!(p.base_url, "local:///models/tiny.gguf");
        assert_eq!(
            p.engine,
            Some(LocalEngine {
                model_path: "/models/tiny.gguf".into(),
                parallel: 3,
                queue: 8,
                context: 2048,
                threads: 0,
                worker: None,
                max_tokens: DEFAULT_LOCAL_MAX_TOKENS,
                chat_template: None,
            })
        );
        assert_eq!(parse(BASE, "t.toml").unwrap().providers()[0].engine, None);
    }

    #[test]
    fn local_provider_fields_are_checked() {
        let e = err_of(&LOCAL.replace("model_path = \"/models/tiny.gguf\"\n", ""));
        assert_eq!(e, "t.toml:5: providers.engine.model_path: is required: the GGUF file to run");
        let e = err_of(&LOCAL.replace("parallel = 3", "parallel = 0"));
        assert_eq!(e, "t.toml:7: providers.engine.parallel: must be at least 1");
        let e = err_of(&LOCAL.replace("parallel = 3", "base_url = \"http://127.0.0.1:1/v1\""));
        assert!(e.starts_with("t.toml:7: providers.engine.base_url: a local provider has no URL"), "{e}");
        let e = err_of(&LOCAL.replace("context_window = 2048", "context_window = 4096"));
        assert_eq!(
            e,
            "t.toml:15: models[0].context_window: 4096 tokens is more than the local provider \"engine\" holds (context = 2048)"
        );
        let e = err_of(&BASE.replace("kind = \"openai\"", "kind = \"openai\"\nmodel_path = \"x.gguf\""));
        assert!(e.starts_with("t.toml:6: providers.up.model_path: only a kind = \"local\" provider"), "{e}");
        let e = err_of(&BASE.replace("base_url = \"http://127.0.0.1:9/v1/\"\n", ""));
        assert_eq!(e, "t.toml:5: providers.up.base_url: is required for this kind");
        // The worker command: a program and its arguments.
        let e = err_of(&LOCAL.replace("parallel = 3", "worker = []"));
        assert!(e.starts_with("t.toml:7: providers.engine.worker: must name a program"), "{e}");
        let c =
            parse(&LOCAL.replace("parallel = 3", "worker = [\"nice\", \"triage\", \"engine-worker\"]"), "t").unwrap();
        let worker = c.providers()[0].engine.as_ref().unwrap().worker.clone();
        assert_eq!(worker, Some(vec!["nice".into(), "triage".into(), "engine-worker".into()]));
        let e = err_of(&BASE.replace("kind = \"openai\"", "kind = \"openai\"\nworker = [\"x\"]"));
        assert!(e.starts_with("t.toml:6: providers.up.worker: only a kind = \"local\" provider"), "{e}");
    }

    #[test]
    fn a_local_providers_default_max_tokens_and_chat_template_are_read() {
        let engine = |text: &str| parse(text, "t").unwrap().providers()[0].engine.clone().unwrap();
        let e = engine(&LOCAL.replace("parallel = 3", "max_tokens = 64"));
        assert_eq!((e.max_tokens, e.chat_template), (64, None));
        let e = err_of(&LOCAL.replace("parallel = 3", "max_tokens = 0"));
        assert_eq!(e, "t.toml:7: providers.engine.max_tokens: must be at least 1");
        let e = err_of(&BASE.replace("kind = \"openai\"", "kind = \"openai\"\nmax_tokens = 9"));
        assert!(e.starts_with("t.toml:6: providers.up.max_tokens: only a kind = \"local\" provider"), "{e}");
        // Inline Jinja is taken as it is.
        let inline = "{% for m in messages %}{{ m.content }}{% endfor %}";
        let e = engine(&LOCAL.replace("parallel = 3", &format!("chat_template = {inline:?}")));
        assert_eq!(e.chat_template.as_deref(), Some(inline));
        // Anything else names a file holding the template.
        let dir = std::env::temp_dir().join(format!("triage-config-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("chat.jinja");
        std::fs::write(&file, "<|user|>{{ messages[0].content }}").unwrap();
        let e = engine(&LOCAL.replace("parallel = 3", &format!("chat_template = {:?}", file.display().to_string())));
        assert_eq!(e.chat_template.as_deref(), Some("<|user|>{{ messages[0].content }}"));
        let missing = dir.join("missing.jinja").display().to_string();
        let e = err_of(&LOCAL.replace("parallel = 3", &format!("chat_template = {missing:?}")));
        assert!(
            e.starts_with(
                "t.toml:7: providers.engine.chat_template: is not Jinja (no `{{` or `{%`), so it names a file, and "
            ) && e.contains("missing.jinja cannot be read"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err_of("tiers = [\"a\"\n[x]");
        assert!(e.starts_with("t.toml:"), "{e}");
    }
}
