//! The validated catalog: providers, models, tiers, roles and aliases.
//!
//! Only [`crate::config`] builds a [`Catalog`], after checking every cross-reference, so the rest
//! of the gateway can index into it without re-checking. Indices (`ProviderId`, `ModelId`,
//! `TierId`) are positions in the catalog's vectors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cost::Price;

/// Position of a provider in [`Catalog::providers`].
pub type ProviderId = usize;
/// Position of a model in [`Catalog::models`].
pub type ModelId = usize;
/// Position of a tier in [`Catalog::tiers`] (0 = cheapest).
pub type TierId = usize;
/// Position of a deployment in [`Catalog::deployments`].
pub type DeploymentId = usize;

/// Wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible Chat Completions API: OpenAI, DeepSeek, OpenRouter, Together,
    /// Ollama, llama.cpp server, vLLM, LM Studio, Anthropic's OpenAI-compatible endpoint.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API (`x-api-key`, `anthropic-version`).
    Anthropic,
    /// A GGUF model run in-process by llama.cpp (no network; always `local`).
    Local,
}

impl ProviderKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Local => "local",
        }
    }
}

/// Timeouts of calls to one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// Longest silence between two reads of a streamed body (resets on every byte, SSE comments
    /// included), so a healthy long stream is never cut, and a stalled one is (shared case C25).
    pub idle: Duration,
    /// Whole non-streamed call.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            request: Duration::from_secs(600),
        }
    }
}

/// How a `kind = "local"` provider runs its model (llama.cpp in a supervised worker process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEngine {
    /// The GGUF file.
    pub model_path: String,
    /// Sequences decoded together (slots); default 2.
    pub parallel: u32,
    /// Requests that may wait for a slot beyond `parallel` before the provider reports itself
    /// busy; default 8.
    pub queue: u32,
    /// Tokens of one sequence, prompt and output together; default 4,096.
    pub context: u32,
    /// CPU threads per decode step; 0 (the default) = every core.
    pub threads: u32,
    /// The command that runs the engine's worker process (program, then arguments; the worker
    /// finds its socket in its environment, so the command may be wrapped, e.g. in `nice`).
    /// `None` (the default): the running executable with its hidden `engine-worker` subcommand.
    pub worker: Option<Vec<String>>,
    /// Tokens generated at most when a request sets no `max_tokens`; default
    /// [`crate::config::DEFAULT_LOCAL_MAX_TOKENS`].
    pub max_tokens: u32,
    /// The chat template (Jinja) to use instead of the one in the model file, or where the file
    /// has none; the config's `chat_template`, inline or read from the file it names.
    pub chat_template: Option<String>,
}

/// An upstream API endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// Name from the config (`[providers.NAME]`).
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`; for a `local`
    /// provider, `local://` and its model path (nothing is fetched from it).
    pub base_url: String,
    /// The in-process engine's settings; `Some` exactly when `kind` is `local`.
    pub engine: Option<LocalEngine>,
    /// Environment variable holding the API key; `None` when the provider needs none.
    pub api_key_env: Option<String>,
    /// True when the provider runs on this machine (sensitive content may go there).
    pub local: bool,
    /// Call timeouts.
    pub timeouts: Timeouts,
    /// Interval of the background reachability check.
    pub health_check_interval: Duration,
}

/// What a model can do, beyond plain chat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Function / tool calling.
    pub tools: bool,
    /// Image input.
    pub vision: bool,
    /// `response_format: json_schema` (structured outputs).
    pub json_schema: bool,
}

/// One place a model is served: a provider and the model's name there.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The catalog model it serves.
    pub model: ModelId,
    /// The provider.
    pub provider: ProviderId,
    /// Model name sent upstream.
    pub upstream_model: String,
}

/// A catalog entry: one model, served by one or more deployments.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Catalog id clients may name.
    pub id: String,
    /// Provider of the primary deployment.
    pub provider: ProviderId,
    /// Model name sent upstream by the primary deployment.
    pub upstream_model: String,
    /// Deployments in the order they are tried; the first is the primary.
    pub deployments: Vec<DeploymentId>,
    /// Equivalent models elsewhere, tried in order when every deployment failed.
    pub fallback: Vec<ModelId>,
    /// Larger-context models, tried when an upstream says the prompt is too long.
    pub context_window_fallback: Vec<ModelId>,
    /// Models tried when an upstream refuses on content policy (a 400 or `content_filter`).
    pub content_policy_fallback: Vec<ModelId>,
    /// Price tier.
    pub tier: TierId,
    /// Prices per million tokens.
    pub price: Price,
    /// Context window in tokens (prompt + output).
    pub context_window: u64,
    /// Largest output the model may produce, in tokens, when known.
    pub max_output_tokens: Option<u64>,
    /// Capabilities.
    pub capabilities: Capabilities,
    /// The learned model profile the quality scorer predicts this model's quality with (a model
    /// name of the quality model file, e.g. `gpt-4-1106-preview`; `[[models]] profile`). `None`:
    /// the model's tier takes the model file's default profile for that tier.
    pub profile: Option<String>,
}

/// HTTP server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (default 32 MiB); larger → 413.
    pub max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Who may call the endpoints that [`Endpoint`] names when `auth = "keys"`.
    pub access: BTreeMap<Endpoint, Access>,
    /// A request head (request line and headers) must arrive within this long of its first
    /// byte, else the connection is closed (default 10 s; slowloris).
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this long (default 60 s); else 408.
    pub body_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long idle
    /// (default 60 s). A response being written (a stream) is never idle.
    pub idle_timeout: Duration,
    /// How often a gateway checks the key store for revocations made elsewhere (another
    /// gateway, `triage keys revoke`) and drops its cached keys when there are new ones
    /// (default 1 s): a revoked key stops working within about this long.
    pub key_recheck: Duration,
    /// Bytes of prompt text tokenised exactly per request (default 1 MiB); text beyond it is
    /// counted at the ratio measured on the tokenised part, so a count's cost is bounded.
    pub max_tokenize_bytes: usize,
    /// How often the gateway writes its INFO summary line (requests, errors, tokens, cost since
    /// the last one; default 60 s). Each request's own line is at DEBUG.
    pub log_summary: Duration,
}

/// An endpoint whose access [`ServerSettings::access`] sets (the others always need a key when
/// `auth = "keys"`, except `GET /healthz`, which is always open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `GET /v1/models` (and `/models`).
    Models,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/health/deployments`.
    Deployments,
}

impl Endpoint {
    /// Every endpoint, with its path.
    pub const ALL: [(Endpoint, &'static str); 5] = [
        (Endpoint::CountTokens, "/v1/messages/count_tokens"),
        (Endpoint::Models, "/v1/models"),
        (Endpoint::Readyz, "/readyz"),
        (Endpoint::Metrics, "/metrics"),
        (Endpoint::Deployments, "/v1/health/deployments"),
    ];

    /// The endpoint at `path` (`/models` is `/v1/models`), if it is one of these.
    pub fn of_path(path: &str) -> Option<Endpoint> {
        let path = if path == "/models" { "/v1/models" } else { path };
        Self::ALL.iter().find(|(_, p)| *p == path).map(|(e, _)| *e)
    }
}

/// Who may call an endpoint when `auth = "keys"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key.
    Public,
    /// Any valid key.
    Key,
    /// An admin key.
    Admin,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            max_body_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            // Probes and Prometheus scrapers usually carry no key: the operational endpoints stay
            // open unless configured otherwise; everything that costs work needs a key.
            access: BTreeMap::from([
                (Endpoint::CountTokens, Access::Key),
                (Endpoint::Models, Access::Key),
                (Endpoint::Readyz, Access::Public),
                (Endpoint::Metrics, Access::Public),
                (Endpoint::Deployments, Access::Public),
            ]),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            key_recheck: Duration::from_secs(1),
            max_tokenize_bytes: 1024 * 1024,
            log_summary: Duration::from_secs(60),
        }
    }
}

/// Retries of one deployment, and the request's deadline across all attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries of the same deployment after a retryable failure (so at most 1 + this many calls).
    pub num_retries: u32,
    /// Backoff before the first retry; doubles each retry (with jitter).
    pub initial_backoff: Duration,
    /// Largest backoff between retries.
    pub max_backoff: Duration,
    /// Longest `Retry-After` the gateway waits out itself; longer ones go to the next
    /// deployment, or back to the client.
    pub max_retry_wait: Duration,
    /// Time budget of all attempts of one request, until an answer starts.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            num_retries: 2,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_wait: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
        }
    }
}

/// When a deployment's circuit breaker opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or when at least `min_requests` calls in the window failed at this rate (0..=1).
    pub failure_rate: f64,
    /// Calls a window needs before its failure rate counts.
    pub min_requests: u32,
    /// Length of the failure-rate window.
    pub window: Duration,
    /// How long an open breaker stays open before one probe call is let through (half-open);
    /// each opening draws it with ±20 % jitter, so breakers that opened together do not probe
    /// together.
    pub cooldown: Duration,
    /// Panic threshold (Envoy's `healthy_panic_threshold`): when fewer than this fraction of a
    /// model's usable deployments (two or more) are healthy (breaker closed, not cooling down),
    /// ejections are ignored for that model and every deployment takes calls (default 0.5).
    pub panic_threshold: f64,
    /// At most this fraction of a model's deployments may have an open breaker at once (Envoy's
    /// `max_ejection_percent`); one may always open. A failure that would open one more is
    /// counted but opens nothing (default 0.5: one of two).
    pub max_ejection: f64,
    /// How long a deployment whose upstream rejected Triage's provider key (401, 403) is
    /// skipped (while another deployment can serve; default 10 s).
    pub auth_quarantine: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            panic_threshold: 0.5,
            max_ejection: 0.5,
            auth_quarantine: Duration::from_secs(10),
        }
    }
}

/// What the guard does with a kind of sensitive content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuardAction {
    /// Send it anywhere.
    Allow,
    /// Replace it with a placeholder before any non-local provider sees it; restore it in the answer.
    Redact,
    /// Serve the request only with a model whose provider is local (`local = true`).
    LocalOnly,
    /// Refuse the request (403).
    Block,
}

impl GuardAction {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Allow => "allow",
            GuardAction::Redact => "redact",
            GuardAction::LocalOnly => "local_only",
            GuardAction::Block => "block",
        }
    }
}

/// The sensitive-content policy: a default action and per-kind overrides (kinds by their
/// `triage_core::guard::Kind::as_str` names; `secrets` and `personal_data` name the two groups),
/// a confidence threshold per kind, and overrides per team and per API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    /// For every kind without an override.
    pub default: GuardAction,
    /// Per kind.
    pub kinds: BTreeMap<String, GuardAction>,
    /// Findings below this confidence (per mille) are ignored, per kind name. Kinds not listed:
    /// [`GuardPolicy::DEFAULT_ENTITY_CONFIDENCE`] for the entity recogniser's kinds (`person`,
    /// `address`, `date`, `organization`), 0 for the rules' kinds.
    pub min_confidence: BTreeMap<String, u16>,
    /// `[guard.teams.<team>]`: overrides for the keys of a team.
    pub teams: BTreeMap<String, GuardOverride>,
    /// `[guard.keys.<key id>]`: overrides for one API key (over its team's).
    pub keys: BTreeMap<String, GuardOverride>,
}

/// A team's or a key's policy over the global one: its own default and per-kind actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardOverride {
    /// Replaces the global default when set.
    pub default: Option<GuardAction>,
    /// Per kind (and `secrets` / `personal_data`), over the global ones.
    pub kinds: BTreeMap<String, GuardAction>,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            default: GuardAction::LocalOnly,
            kinds: BTreeMap::new(),
            min_confidence: BTreeMap::new(),
            teams: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }
}

impl GuardPolicy {
    /// Default threshold (per mille) of the entity recogniser's kinds.
    pub const DEFAULT_ENTITY_CONFIDENCE: u16 = 500;

    /// The action for a kind named `kind`, which is a secret or not.
    pub fn action(&self, kind: &str, is_secret: bool) -> GuardAction {
        let group = if is_secret { "secrets" } else { "personal_data" };
        self.kinds.get(kind).or_else(|| self.kinds.get(group)).copied().unwrap_or(self.default)
    }

    /// The action for a kind for a caller: the key's override, then its team's, then the global
    /// policy (each: the kind, then its group, then that level's default).
    pub fn action_for(&self, kind: &str, is_secret: bool, key: Option<&str>, team: Option<&str>) -> GuardAction {
        let group = if is_secret { "secrets" } else { "personal_data" };
        let levels = [key.and_then(|k| self.keys.get(k)), team.and_then(|t| self.teams.get(t))];
        for o in levels.into_iter().flatten() {
            if let Some(a) = o.kinds.get(kind).or_else(|| o.kinds.get(group)) {
                return *a;
            }
        }
        if let Some(a) = self.kinds.get(kind).or_else(|| self.kinds.get(group)) {
            return *a;
        }
        levels.into_iter().flatten().find_map(|o| o.default).unwrap_or(self.default)
    }

    /// The confidence below which a finding of `kind` is ignored (0..=1).
    pub fn min_confidence(&self, kind: &str) -> f32 {
        let default = if matches!(kind, "person" | "address" | "date" | "organization") {
            Self::DEFAULT_ENTITY_CONFIDENCE
        } else {
            0
        };
        f32::from(self.min_confidence.get(kind).copied().unwrap_or(default)) / 1000.0
    }

    /// True when no kind is acted on (scanning can be skipped).
    pub fn is_off(&self) -> bool {
        let quiet = |o: &GuardOverride| {
            o.default.is_none_or(|d| d == GuardAction::Allow) && o.kinds.values().all(|a| *a == GuardAction::Allow)
        };
        self.default == GuardAction::Allow
            && self.kinds.values().all(|a| *a == GuardAction::Allow)
            && self.teams.values().all(quiet)
            && self.keys.values().all(quiet)
    }
}

/// How `model: "auto"` picks a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoRouting {
    /// The difficulty scorer (`triage_core::router`) with its shipped model, or a model file
    /// written by `triage train` / `triage calibrate`.
    Scorer {
        /// Which scorer (`lexical`, `embedding`, `random`).
        kind: crate::router::ScorerKind,
        /// A model file; `None` for the shipped one.
        model_file: Option<String>,
        /// The `embedding` scorer's encoder directory; `None` for the default
        /// (`$TRIAGE_EMBEDDING_DIR`, else `~/.cache/triage/all-MiniLM-L6-v2`).
        encoder_dir: Option<String>,
        /// The `quality` scorer's profile of each tier, cheapest tier first (one entry per
        /// tier): the `profile` of the model the tier picks when no requirement rules a model
        /// out (its cheapest model by blended price, the first listed on a tie), `None` when
        /// that model has no `profile` (the model file's default profile for the tier is used).
        /// Empty when built by hand: every tier takes the file's profiles.
        tier_profiles: Vec<Option<String>>,
    },
    /// The cheapest tier with a capable, available model (no scorer).
    Cheapest,
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No keys: a single-user local setup.
    None,
    /// Every request presents a virtual key (`Authorization: Bearer` or `x-api-key`).
    Keys,
}

/// Spend accounting settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendSettings {
    /// Ledger database URL (`sqlite://PATH` or `postgres://...`); `None` keeps no ledger.
    pub database: Option<String>,
    /// The model whose prices define "always frontier" in saving reports.
    pub baseline_model: Option<ModelId>,
    /// Fraction (0–1) of a budget past which requests step down to a cheaper tier.
    pub soft_limit: f64,
    /// Output tokens reserved when a request sets no `max_tokens` (capped by the model's maximum).
    pub default_output_tokens: u64,
    /// How long a gateway's budget reservations outlive its last heartbeat (renewed every third
    /// of it): after a crash the budget comes back within this plus a third
    /// (`reservation_lease_secs`, default 15 s).
    pub reservation_lease: std::time::Duration,
}

/// Who a budget applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetScope {
    /// Every request.
    Global,
    /// One user's requests.
    User(String),
    /// One team's requests.
    Team(String),
}

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    /// A UTC day.
    Day,
    /// A UTC month.
    Month,
}

/// A budget from the config file (key budgets are set with `triage keys create`).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    /// Who.
    pub scope: BudgetScope,
    /// Per day or month.
    pub period: BudgetPeriod,
    /// Only this tier counts (a per-tier allowance), or every tier.
    pub tier: Option<TierId>,
    /// The hard limit.
    pub limit: crate::cost::NanoUsd,
}

/// Shadow evaluation (`[evals]`): a sample of requests answered by a model cheaper than the
/// reference is answered again by the reference in the background, and a judge model compares
/// the two answers (docs/ROUTING.md, "Production evaluation").
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSettings {
    /// Probability in [0, 1] that an eligible request is shadowed; 0 turns evaluation off.
    pub sample_rate: f64,
    /// The model answers are compared against; `Some` whenever `sample_rate > 0`.
    pub reference: Option<ModelId>,
    /// The model that judges; defaults to the reference.
    pub judge: Option<ModelId>,
    /// Daily budget of the evaluation's own spend (reference and judge calls), a budget line of
    /// its own (scope `evals`), never charged to a user's, key's or team's budget.
    pub max_usd_per_day: crate::cost::NanoUsd,
    /// Store the prompt and both answers with each result (default false: only the router's
    /// representation of the request is kept).
    pub store_text: bool,
    /// Shadow jobs run at most this many at a time (default 2).
    pub concurrency: usize,
    /// Shadow jobs waiting beyond those running; a sampled request finding the queue full is
    /// dropped and counted, never waited for (default 64).
    pub queue: usize,
    /// `max_tokens` of each judge call (default 1,024).
    pub judge_max_tokens: u64,
    /// Virtual key ids whose requests are never evaluated (`[evals.keys] ID = false`).
    pub opt_out_keys: std::collections::BTreeSet<String>,
    /// Users whose requests are never evaluated (`[evals.users]`).
    pub opt_out_users: std::collections::BTreeSet<String>,
    /// Teams whose requests are never evaluated (`[evals.teams]`).
    pub opt_out_teams: std::collections::BTreeSet<String>,
    /// Roles (`role:NAME` requests) that are never evaluated (`[evals.roles]`).
    pub opt_out_roles: std::collections::BTreeSet<String>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            sample_rate: 0.0,
            reference: None,
            judge: None,
            max_usd_per_day: crate::cost::NanoUsd(1_000_000_000),
            store_text: false,
            concurrency: 2,
            queue: 64,
            judge_max_tokens: 1024,
            opt_out_keys: Default::default(),
            opt_out_users: Default::default(),
            opt_out_teams: Default::default(),
            opt_out_roles: Default::default(),
        }
    }
}

impl EvalSettings {
    /// True when requests are sampled for shadow evaluation.
    pub fn enabled(&self) -> bool {
        self.sample_rate > 0.0 && self.reference.is_some()
    }

    /// True when a request of this key id, user, team and role (any may be absent) opted out.
    pub fn opted_out(&self, key: Option<&str>, user: Option<&str>, team: Option<&str>, role: Option<&str>) -> bool {
        key.is_some_and(|k| self.opt_out_keys.contains(k))
            || user.is_some_and(|u| self.opt_out_users.contains(u))
            || team.is_some_and(|t| self.opt_out_teams.contains(t))
            || role.is_some_and(|r| self.opt_out_roles.contains(r))
    }
}

/// What an alias names: a model, a tier, a role or the router (`auto`). Aliases to tiers, roles
/// and `auto` turn a harness's own model names into routing hints (Claude Code's
/// `claude-*haiku*` sub-agents to `role:search`, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasTarget {
    /// A catalog model.
    Model(ModelId),
    /// A tier.
    Tier(TierId),
    /// A role (its name, and its tier).
    Role(String, TierId),
    /// The router decides, as for `model: "auto"`.
    Auto,
}

/// A glob alias: `*` matches any run of characters, `?` one character; ASCII case is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasPattern {
    /// The pattern, as configured.
    pub pattern: String,
    /// What a matching name resolves to.
    pub target: AliasTarget,
}

/// True when `name` matches the glob `pattern` (`*` any run, `?` one character, ASCII case
/// ignored). Iterative with one backtrack point, so linear in practice, never exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i].eq_ignore_ascii_case(&n[j])) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// True when an alias key is a glob pattern (holds `*` or `?`).
pub fn is_pattern(key: &str) -> bool {
    key.contains(['*', '?'])
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    pub(crate) source: String,
    pub(crate) server: ServerSettings,
    pub(crate) tiers: Vec<String>,
    pub(crate) roles: BTreeMap<String, TierId>,
    pub(crate) aliases: BTreeMap<String, AliasTarget>,
    pub(crate) alias_patterns: Vec<AliasPattern>,
    pub(crate) providers: Vec<Provider>,
    pub(crate) models: Vec<Model>,
    pub(crate) deployments: Vec<Deployment>,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerPolicy,
    pub(crate) auth: AuthMode,
    pub(crate) auto_routing: AutoRouting,
    /// `[router] sticky_secs`: how long a conversation keeps the highest tier it was routed to
    /// (0 = off).
    pub(crate) sticky_secs: u64,
    pub(crate) guard: GuardPolicy,
    pub(crate) spend: SpendSettings,
    pub(crate) budgets: Vec<BudgetSpec>,
    pub(crate) evals: EvalSettings,
}

impl Catalog {
    /// Where the catalog came from: a file path, or `built-in defaults`.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Server settings.
    pub fn server(&self) -> &ServerSettings {
        &self.server
    }
    /// Overrides the listen address (the `--listen` flag).
    pub fn set_listen(&mut self, addr: SocketAddr) {
        self.server.listen = addr;
    }
    /// Tier names, cheapest first.
    pub fn tiers(&self) -> &[String] {
        &self.tiers
    }
    /// Role name → tier.
    pub fn roles(&self) -> &BTreeMap<String, TierId> {
        &self.roles
    }
    /// Exact alias → what it names.
    pub fn aliases(&self) -> &BTreeMap<String, AliasTarget> {
        &self.aliases
    }
    /// Glob aliases (`claude-*haiku*`), most specific first (most literal characters, then name).
    pub fn alias_patterns(&self) -> &[AliasPattern] {
        &self.alias_patterns
    }
    /// What `name` names through an exact alias, else through the first glob alias it matches.
    /// Returns the target and the alias (or pattern) that matched.
    pub fn alias_for(&self, name: &str) -> Option<(&AliasTarget, &str)> {
        if let Some((k, t)) = self.aliases.get_key_value(name) {
            return Some((t, k.as_str()));
        }
        self.alias_patterns.iter().find(|p| glob_match(&p.pattern, name)).map(|p| (&p.target, p.pattern.as_str()))
    }
    /// Providers.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }
    /// Models, in config order.
    pub fn models(&self) -> &[Model] {
        &self.models
    }
    /// Every deployment of every model.
    pub fn deployments(&self) -> &[Deployment] {
        &self.deployments
    }
    /// Retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }
    /// Circuit-breaker policy.
    pub fn breaker(&self) -> &BreakerPolicy {
        &self.breaker
    }
    /// The sensitive-content policy.
    pub fn guard(&self) -> &GuardPolicy {
        &self.guard
    }
    /// How `model: "auto"` picks a tier.
    pub fn auto_routing(&self) -> &AutoRouting {
        &self.auto_routing
    }
    /// Sticky routing per conversation (`[router] sticky_secs`, default 1800): how long a
    /// conversation keeps the highest tier `auto` routed it to; `None` when off (0).
    pub fn sticky_routing(&self) -> Option<std::time::Duration> {
        (self.sticky_secs > 0).then(|| std::time::Duration::from_secs(self.sticky_secs))
    }
    /// How clients authenticate.
    pub fn auth(&self) -> AuthMode {
        self.auth
    }
    /// Spend accounting settings.
    pub fn spend(&self) -> &SpendSettings {
        &self.spend
    }
    /// Overrides the ledger database (the `--database` flag; `None` disables it).
    pub fn set_database(&mut self, url: Option<String>) {
        self.spend.database = url;
    }
    /// Budgets from the config file.
    pub fn budgets(&self) -> &[BudgetSpec] {
        &self.budgets
    }
    /// Shadow evaluation settings (`[evals]`).
    pub fn evals(&self) -> &EvalSettings {
        &self.evals
    }
    /// The provider of `model`'s primary deployment.
    pub fn provider_of(&self, model: ModelId) -> &Provider {
        &self.providers[self.models[model].provider]
    }
    /// A model by catalog id.
    pub fn model_by_id(&self, id: &str) -> Option<ModelId> {
        self.models.iter().position(|m| m.id == id)
    }
    /// A tier by name.
    pub fn tier_by_name(&self, name: &str) -> Option<TierId> {
        self.tiers.iter().position(|t| t == name)
    }
    /// Every name a client may put in `model`: `auto`, tiers, `role:*`, aliases, model ids.
    pub fn valid_model_names(&self) -> Vec<String> {
        let mut names = vec!["auto".to_owned()];
        names.extend(self.tiers.iter().cloned());
        names.extend(self.roles.keys().map(|r| format!("role:{r}")));
        names.extend(self.aliases.keys().cloned());
        names.extend(self.models.iter().map(|m| m.id.clone()));
        names
    }
}
