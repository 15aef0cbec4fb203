//! Who is calling, what they may use, what it will cost, and what it did cost.
//!
//! - [`authenticate`]: the virtual key from `Authorization: Bearer` or `x-api-key` (401 when
//!   missing or unknown), looked up by hash and cached for 30 s.
//! - [`admit`]: the budgets that apply (config budgets of the key's user and team and global ones,
//!   the key's own daily and monthly budgets, per-tier allowances), the request's estimated cost
//!   (prompt tokens plus the output limit, at the model's prices) reserved atomically; past a
//!   budget's soft limit, or over a tier allowance, the request steps down to the next cheaper
//!   capable tier when the client let Triage choose; over a hard limit it is refused (429
//!   `budget_exceeded`, with the limit and the reset time). The reservation is one transaction
//!   over every line, owned by this process's lease, and a guard: a request future dropped at
//!   any point (the client hung up) releases it (`triage_store::Reservation`).
//! - [`Accounting::finish`]: the real cost replaces the reservation, and one ledger row per
//!   request (with its attempts) is queued for the background writer.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use triage_core::catalog::{AuthMode, BudgetPeriod, BudgetScope, ModelId, TierId};
use triage_core::cost::{NanoUsd, TokenUsage};
use triage_core::route::{self, Requirements, RouteDecision, Target};
use triage_store::{AttemptRecord, BudgetLine, Holder, KeyRecord, Period, RequestRecord, Reservation};

use crate::error::GatewayError;
use crate::inbound::Format;
use crate::request::{Attempt, RouteInfo};
use crate::state::{AppState, SharedState};
use crate::telemetry::{record_request, record_usage};

const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_CAPACITY: u64 = 10_000;

/// Recently looked-up keys (secret → record, or `None` for an unknown key), so most requests
/// skip the database: at most 10,000 entries, each kept 30 s. Admission and eviction are
/// frequency-based (moka's TinyLFU), so a caller cycling through unknown keys does not push out
/// the keys in use.
#[derive(Debug, Clone)]
pub struct KeyCache {
    entries: moka::sync::Cache<String, Option<KeyRecord>>,
}

impl Default for KeyCache {
    fn default() -> KeyCache {
        KeyCache::new(KEY_CACHE_CAPACITY, KEY_CACHE_TTL)
    }
}

impl KeyCache {
    /// A cache of at most `capacity` keys, each kept `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> KeyCache {
        KeyCache { entries: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build() }
    }

    /// The cached lookup of `secret`: `Some(None)` for a key known not to exist.
    pub fn get(&self, secret: &str) -> Option<Option<KeyRecord>> {
        self.entries.get(secret)
    }

    /// Caches the lookup of `secret`.
    pub fn insert(&self, secret: &str, record: Option<KeyRecord>) {
        self.entries.insert(secret.to_owned(), record);
    }

    /// Forgets every cached key: the next request of each key reads the store again.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

/// With `auth = "keys"` and a store: every `server.key_recheck_ms`, reads the store's revocation
/// stamp (how many keys are revoked, and the latest revocation) and, when it changed, drops the
/// cached keys, so a key revoked by another gateway on the same database or by `triage keys
/// revoke` stops working within about that long rather than the cache's 30 s.
pub fn spawn_revocation_watch(state: SharedState) -> Option<tokio::task::JoinHandle<()>> {
    if state.catalog.auth() != AuthMode::Keys {
        return None;
    }
    let store = state.store.clone()?;
    let every = state.catalog.server().key_recheck;
    Some(tokio::spawn(async move {
        let mut last = store.revocation_stamp().await.ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.revocation_stamp().await {
                Ok(stamp) if last.as_ref() != Some(&stamp) => {
                    if last.is_some() {
                        tracing::info!(revoked = stamp.0, "keys were revoked: key cache cleared");
                    }
                    state.keys.clear();
                    last = Some(stamp);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read key revocations"),
            }
        }
    }))
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)).filter(|k| !k.is_empty())
}

/// The caller's virtual key (`None` with `auth = "none"`).
///
/// Errors: [`GatewayError::Unauthorized`] for a missing, unknown or revoked key.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<KeyRecord>, GatewayError> {
    if state.catalog.auth() == AuthMode::None {
        return Ok(None);
    }
    let Some(secret) = presented_key(headers) else {
        return Err(GatewayError::Unauthorized(
            "missing API key: send a Triage virtual key as `Authorization: Bearer <key>` or `x-api-key`".into(),
        ));
    };
    let record = match state.keys.get(secret) {
        Some(r) => r,
        None => {
            let store = state.store.as_ref().ok_or_else(|| GatewayError::Unauthorized("no key store".into()))?;
            let r = store.find_key(secret).await.map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                GatewayError::Unauthorized("the key store is unavailable".into())
            })?;
            state.keys.insert(secret, r.clone());
            r
        }
    };
    match record {
        Some(k) if !k.revoked => Ok(Some(k)),
        Some(_) => Err(GatewayError::Unauthorized("this API key has been revoked".into())),
        None => Err(GatewayError::Unauthorized("invalid API key".into())),
    }
}

/// True when `key` may use `model` (its tier and id are allowed).
pub fn allowed(state: &AppState, key: Option<&KeyRecord>, model: ModelId) -> bool {
    let Some(k) = key else { return true };
    let m = &state.catalog.models()[model];
    (k.tiers.is_empty() || k.tiers.contains(&state.catalog.tiers()[m.tier]))
        && (k.models.is_empty() || k.models.contains(&m.id))
}

fn period(p: BudgetPeriod) -> Period {
    match p {
        BudgetPeriod::Day => Period::Day,
        BudgetPeriod::Month => Period::Month,
    }
}

/// The budgets that apply to a request of `key` routed to `tier`.
pub fn budget_lines(state: &AppState, key: Option<&KeyRecord>, tier: TierId) -> Vec<BudgetLine> {
    let c = &state.catalog;
    let soft = c.spend().soft_limit;
    let mut lines = Vec::new();
    for b in c.budgets() {
        if b.tier.is_some_and(|t| t != tier) {
            continue;
        }
        let (scope, subject) = match &b.scope {
            BudgetScope::Global => ("global", "*".to_owned()),
            BudgetScope::User(u) if key.is_some_and(|k| &k.user == u) => ("user", u.clone()),
            BudgetScope::Team(t) if key.is_some_and(|k| &k.team == t) => ("team", t.clone()),
            _ => continue,
        };
        lines.push(BudgetLine {
            scope: scope.into(),
            subject,
            tier: b.tier.map(|t| c.tiers()[t].clone()),
            period: period(b.period),
            limit: b.limit,
            soft,
        });
    }
    if let Some(k) = key {
        for (p, limit) in [(Period::Day, k.budget_day), (Period::Month, k.budget_month)] {
            if let Some(limit) = limit {
                lines.push(BudgetLine {
                    scope: "key".into(),
                    subject: k.id.clone(),
                    tier: None,
                    period: p,
                    limit,
                    soft,
                });
            }
        }
    }
    lines
}

/// The cost to reserve for `model`: prompt tokens plus the output limit (or the configured
/// default, capped at the model's maximum output), at the model's prices.
pub fn estimate(state: &AppState, model: ModelId, req: &Requirements<'_>) -> NanoUsd {
    let m = &state.catalog.models()[model];
    let default_out = state.catalog.spend().default_output_tokens;
    let out = if req.output_tokens > 0 {
        req.output_tokens
    } else {
        m.max_output_tokens.map_or(default_out, |x| x.min(default_out))
    };
    m.price.cost(&TokenUsage { input: req.prompt.estimate(), output: out, ..Default::default() })
}

/// The next cheaper tier with a capable, allowed, available model below `tier`.
fn step_down(
    state: &AppState,
    req: &Requirements<'_>,
    tier: TierId,
    available: &impl Fn(ModelId) -> bool,
) -> Option<RouteDecision> {
    (0..tier).rev().find_map(|t| route::select(&state.catalog, &Target::Tier(t), req, available).ok())
}

/// Applies budgets to a routed request (`request_id` owns the reservation); see the module docs.
/// Returns the (possibly stepped-down) decision and the reservation to settle.
///
/// Errors: [`GatewayError::BudgetExceeded`].
pub async fn admit(
    state: &AppState,
    request_id: &str,
    key: Option<&KeyRecord>,
    target: &Target,
    mut decision: RouteDecision,
    req: &Requirements<'_>,
    available: &impl Fn(ModelId) -> bool,
) -> Result<(RouteDecision, Reservation, bool), GatewayError> {
    let Some(store) = &state.store else { return Ok((decision, Reservation::none(), false)) };
    let chooses = !matches!(target, Target::Model { .. });
    let mut stepped = false;
    loop {
        let lines = budget_lines(state, key, decision.tier);
        if lines.is_empty() {
            return Ok((decision, Reservation::none(), stepped));
        }
        // The reservation uses the exact prompt count.
        crate::tokens::count_prompt(&state.count_slots, &req.prompt).await;
        let amount = estimate(state, decision.model, req);
        let now = triage_store::now_ms();
        let db = |e: triage_store::StoreError| {
            tracing::error!(error = %e, "budget store failed");
            GatewayError::BudgetStore
        };
        if chooses {
            let mut soft_hit = None;
            for line in &lines {
                let (spent, reserved) = store.budget_used(line, now).await.map_err(db)?;
                let used = spent.0 + reserved.0 + amount.0;
                if (used as f64) > line.soft * line.limit.0 as f64 {
                    soft_hit = Some((line.describe(), used as f64 / line.limit.0.max(1) as f64));
                    break;
                }
            }
            if let Some((what, frac)) = soft_hit {
                if let Some(mut d) = step_down(state, req, decision.tier, available) {
                    d.reason = format!(
                        "{}; {what} at {:.0} % (soft limit): stepped down to tier {}",
                        decision.reason,
                        frac * 100.0,
                        state.catalog.tiers()[d.tier]
                    );
                    decision = d;
                    stepped = true;
                    continue;
                }
            }
        }
        let holder = Holder { request_id, key_id: key.map(|k| k.id.as_str()) };
        match store.reserve_for(&lines, amount, now, holder).await.map_err(db)? {
            Ok(r) => return Ok((decision, r, stepped)),
            Err(over) => {
                if chooses && over.line.tier.is_some() {
                    if let Some(mut d) = step_down(state, req, decision.tier, available) {
                        d.reason = format!(
                            "{}; {} exhausted: stepped down to tier {}",
                            decision.reason,
                            over.line.describe(),
                            state.catalog.tiers()[d.tier]
                        );
                        decision = d;
                        stepped = true;
                        continue;
                    }
                }
                let wait = Some(Duration::from_millis(over.resets_in_ms));
                return Err(GatewayError::BudgetExceeded {
                    message: format!(
                        "{} is exhausted (${} used; this request needs about ${amount}); it resets at {}",
                        over.line.describe(),
                        over.used,
                        over.resets_at
                    ),
                    retry_after: wait,
                });
            }
        }
    }
}

/// Everything needed to account for one request once it ends.
#[derive(Debug)]
pub struct Accounting {
    /// Shared state.
    pub state: SharedState,
    /// The request id.
    pub request_id: String,
    /// Arrival time.
    pub started: Instant,
    /// Arrival, ms since the epoch.
    pub started_ms: u64,
    /// The client's format.
    pub format: Format,
    /// The caller's key.
    pub key: Option<KeyRecord>,
    /// The `model` field as sent.
    pub requested_model: String,
    /// Streamed.
    pub stream: bool,
    /// The budget reservation to settle.
    pub reservation: Reservation,
    /// Prompt tokens as Triage estimated them (for requests whose upstream reports no usage).
    pub prompt_estimate: u64,
    /// The router's difficulty score, for `auto` requests.
    pub score: Option<f64>,
    /// Kinds of sensitive content found, comma-separated.
    pub sensitivity: Option<String>,
    /// Set once recorded; a request dropped before (a client that went away) records itself
    /// as `cancelled` and releases its reservation.
    pub done: bool,
    /// The ticket of a request sampled for production evaluation ([`crate::evals`]).
    pub shadow: Option<crate::evals::Ticket>,
    /// Set when the request goes upstream (the routed model): one that ends before (refused,
    /// or its client hung up during admission) cost nothing, and no usage is estimated for it;
    /// one dropped after (its client hung up while it waited on the upstream) is recorded as
    /// `cancelled` on this model with its prompt's estimated cost, as a provider bills it.
    pub dispatched: Option<RouteInfo>,
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if !self.done {
            let route = self.dispatched.take();
            self.dispatched = route.clone();
            self.record(route.as_ref(), "cancelled", None, 0, None);
        }
    }
}

impl Accounting {
    /// A copy with nothing to settle, left behind where the original moved on (so that a
    /// request is settled and recorded exactly once).
    pub fn detached(&self) -> Accounting {
        Accounting {
            state: self.state.clone(),
            request_id: self.request_id.clone(),
            started: self.started,
            started_ms: self.started_ms,
            format: self.format,
            key: None,
            requested_model: String::new(),
            stream: self.stream,
            reservation: Reservation::none(),
            prompt_estimate: 0,
            score: None,
            sensitivity: None,
            done: true,
            shadow: None,
            dispatched: None,
        }
    }

    /// Records the outcome: metrics, log, ledger row, budget settlement. `output_chars` is the
    /// length of streamed output, used to estimate output tokens when the upstream reported no
    /// usage (about 4 characters a token), so nothing is ever recorded as free by mistake.
    pub fn finish(
        mut self,
        route: Option<&RouteInfo>,
        status: &str,
        usage: Option<TokenUsage>,
        output_chars: u64,
        ttft_ms: Option<f64>,
    ) {
        self.record(route, status, usage, output_chars, ttft_ms);
    }

    fn record(
        &mut self,
        route: Option<&RouteInfo>,
        status: &str,
        usage: Option<TokenUsage>,
        output_chars: u64,
        ttft_ms: Option<f64>,
    ) {
        if self.done {
            return;
        }
        self.done = true;
        let st = &self.state;
        let c = &st.catalog;
        let answered = matches!(status, "200" | "stream_error" | "cancelled" | "shutdown");
        let (usage, estimated) = match usage {
            Some(u) => (u, false),
            None if answered && route.is_some() && self.dispatched.is_some() => (
                TokenUsage { input: self.prompt_estimate, output: output_chars.div_ceil(4), ..Default::default() },
                true,
            ),
            None => (TokenUsage::default(), false),
        };
        let (cost, baseline) = match route {
            Some(r) if usage.total() > 0 => {
                let cost = c.models()[r.model].price.cost(&usage);
                let base = c.spend().baseline_model.map_or(cost, |b| c.models()[b].price.cost(&usage));
                (cost, base)
            }
            _ => (NanoUsd(0), NanoUsd(0)),
        };
        record_request(
            c,
            &st.instruments,
            &st.summary,
            self.format,
            route.map(|r| (r.model, r.tier)),
            status,
            self.started,
        );
        if route.is_some() && answered {
            record_usage(
                c,
                &st.instruments,
                &st.summary,
                route.map(|r| r.model),
                usage,
                estimated,
                cost,
                &self.request_id,
            );
        }
        // On a spawned task: a request dropped right after this still settles.
        std::mem::replace(&mut self.reservation, Reservation::none()).settle_in_background(cost);
        if let (Some(ticket), Some(r)) = (self.shadow.take(), route) {
            let meta = crate::evals::Meta {
                request_id: self.request_id.clone(),
                ts_ms: self.started_ms,
                key_id: self.key.as_ref().map(|k| k.id.clone()),
                user: self.key.as_ref().map(|k| k.user.clone()),
                team: self.key.as_ref().map(|k| k.team.clone()),
                role: self.requested_model.strip_prefix("role:").map(str::to_owned),
                endpoint: self.format.endpoint(),
                requested_model: self.requested_model.clone(),
                reason: r.reason.clone(),
                model: r.model,
                tier: r.tier,
                cost,
                score: self.score,
            };
            crate::evals::finished(st, ticket, status, meta);
        }
        let Some(ledger) = &st.ledger else { return };
        let attempts = route.map(|r| r.attempts.as_slice()).unwrap_or_default();
        let dep = attempts.last().map(|a| &c.deployments()[a.deployment]);
        ledger.record(RequestRecord {
            request_id: self.request_id.clone(),
            ts_ms: self.started_ms,
            key_id: self.key.as_ref().map(|k| k.id.clone()),
            user: self.key.as_ref().map(|k| k.user.clone()),
            team: self.key.as_ref().map(|k| k.team.clone()),
            role: self.requested_model.strip_prefix("role:").map(str::to_owned),
            endpoint: self.format.endpoint().into(),
            requested_model: self.requested_model.clone(),
            tier: route.map(|r| c.tiers()[r.tier].clone()),
            model: route.map(|r| c.models()[r.model].id.clone()),
            provider: dep.map(|d| c.providers()[d.provider].name.clone()),
            route_reason: route.map(|r| r.reason.clone()),
            score: self.score,
            sensitivity: self.sensitivity.clone(),
            usage,
            cost,
            baseline_cost: baseline,
            usage_estimated: estimated,
            latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            ttft_ms,
            status: status.to_owned(),
            stream: self.stream,
            attempts: attempts.iter().map(|a| attempt_record(st, a)).collect(),
            kind: String::new(),
        });
    }
}

fn attempt_record(state: &AppState, a: &Attempt) -> AttemptRecord {
    let d = &state.catalog.deployments()[a.deployment];
    AttemptRecord {
        model: state.catalog.models()[d.model].id.clone(),
        provider: state.catalog.providers()[d.provider].name.clone(),
        outcome: a.outcome.clone(),
        latency_ms: a.latency.as_secs_f64() * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_x_api_key_are_both_read() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer tr-abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("tr-abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "tr-def".parse().unwrap());
        assert_eq!(presented_key(&h), Some("tr-def"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    fn record(id: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            user: "user-1".into(),
            team: "team-1".into(),
            tiers: vec![],
            models: vec![],
            admin: false,
            budget_day: None,
            budget_month: None,
            revoked: false,
        }
    }

    /// The old cache forgot every key once it held 10,000: a caller sending unknown keys flushed
    /// the keys in use. Now the cache stays bounded and the key in use stays cached.
    #[test]
    fn a_flood_of_unknown_keys_stays_bounded_and_keeps_the_key_in_use() {
        let cache = KeyCache::new(100, Duration::from_secs(600));
        cache.insert("tr-in-use", Some(record("key_in_use")));
        for i in 0..5_000 {
            // As `authenticate` does: a miss, then the store's answer (unknown) cached.
            let unknown = format!("tr-unknown-{i}");
            assert_eq!(cache.get(&unknown), None);
            cache.insert(&unknown, None);
            if i % 10 == 0 {
                assert_eq!(cache.get("tr-in-use").flatten().map(|k| k.id), Some("key_in_use".to_owned()), "at {i}");
            }
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.entry_count() <= 100, "{} entries", cache.entries.entry_count());
        assert_eq!(cache.get("tr-in-use").flatten().map(|k| k.id), Some("key_in_use".to_owned()));
    }

    #[test]
    fn clearing_forgets_every_key() {
        let cache = KeyCache::default();
        cache.insert("tr-a", Some(record("key_a")));
        cache.insert("tr-b", None);
        assert_eq!(cache.get("tr-b"), Some(None));
        cache.clear();
        assert_eq!((cache.get("tr-a"), cache.get("tr-b")), (None, None));
    }
}
