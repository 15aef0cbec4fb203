//! Shared state of a running gateway: the catalog, one client per provider, their health.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use triage_core::breaker::{Admission, Breaker, BreakerState};
use triage_core::catalog::{Catalog, DeploymentId, ModelId, ProviderId};

use triage_local::EngineState;

use crate::providers::ProviderClient;

/// Reachability of a provider, from the background probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Not probed yet; treated as available.
    Unknown,
    /// The last probe got an answer.
    Up,
    /// The last probe failed, or the upstream rejected the key.
    Down,
}

/// Live health of one provider.
#[derive(Debug)]
pub struct ProviderHealth {
    state: AtomicU8,
    /// Latency of the last successful probe, in microseconds.
    probe_latency_us: AtomicU64,
    /// Unix seconds of the last probe.
    last_probe: AtomicU64,
}

impl Default for ProviderHealth {
    fn default() -> Self {
        ProviderHealth { state: AtomicU8::new(0), probe_latency_us: AtomicU64::new(0), last_probe: AtomicU64::new(0) }
    }
}

impl ProviderHealth {
    /// Current reachability.
    pub fn reachability(&self) -> Reachability {
        match self.state.load(Ordering::Relaxed) {
            1 => Reachability::Up,
            2 => Reachability::Down,
            _ => Reachability::Unknown,
        }
    }

    /// Records a probe result.
    pub fn record(&self, r: Reachability, latency_us: u64) {
        let v = match r {
            Reachability::Unknown => 0,
            Reachability::Up => 1,
            Reachability::Down => 2,
        };
        self.state.store(v, Ordering::Relaxed);
        self.probe_latency_us.store(latency_us, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.last_probe.store(now, Ordering::Relaxed);
    }

    /// Marks the provider reachable after a successful call (the probe may be behind).
    pub fn mark_up(&self) {
        self.state.store(1, Ordering::Relaxed);
    }

    /// Latency of the last probe in microseconds (0 before the first).
    pub fn probe_latency_us(&self) -> u64 {
        self.probe_latency_us.load(Ordering::Relaxed)
    }
}

/// Live health of one deployment: its circuit breaker, a `Retry-After` cooldown, and call
/// statistics.
#[derive(Debug)]
pub struct DeploymentHealth {
    breaker: Mutex<Breaker>,
    cooldown_until: Mutex<Option<Instant>>,
    /// When the upstream last refused the provider key, and its status.
    auth_failed: Mutex<Option<(Instant, u16)>>,
    /// Exponentially weighted mean latency of successful calls (to response headers), µs.
    latency_ewma_us: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// Why a deployment cannot take a call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Its provider needs a key and has none.
    NoKey,
    /// The provider's last reachability probe failed.
    Unreachable,
    /// The circuit breaker is open for this long still.
    BreakerOpen(Duration),
    /// The upstream asked to wait (`Retry-After`, quota) this long still.
    CoolingDown(Duration),
    /// A local engine's parallel slots and queue are all taken.
    Busy,
    /// A local engine's model cannot be loaded (the engine's state says why).
    EngineFailed,
    /// A local engine's worker process died and is being restarted.
    EngineCrashed,
}

impl Unavailable {
    /// Short name for headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::NoKey => "no_api_key",
            Unavailable::Unreachable => "unreachable",
            Unavailable::BreakerOpen(_) => "breaker_open",
            Unavailable::CoolingDown(_) => "cooling_down",
            Unavailable::Busy => "busy",
            Unavailable::EngineFailed => "failed",
            Unavailable::EngineCrashed => "crashed",
        }
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    /// The catalog.
    pub catalog: Catalog,
    /// One client per provider, indexed like `catalog.providers()`.
    pub providers: Vec<ProviderClient>,
    /// One health record per provider.
    pub health: Vec<ProviderHealth>,
    /// One health record per deployment, indexed like `catalog.deployments()`.
    pub deployments: Vec<DeploymentHealth>,
    /// The database (ledger, keys, budgets), when configured.
    pub store: Option<triage_store::Store>,
    /// The background ledger writer, when a database is configured.
    pub ledger: Option<triage_store::Ledger>,
    /// Recently looked-up virtual keys.
    pub keys: crate::auth::KeyCache,
    /// The sensitive-content guard (`None` when the policy allows everything).
    pub guard: Option<triage_core::guard::Guard>,
    /// The difficulty router for `model: "auto"` (holding `None`: cheapest capable tier);
    /// replaced when its model file changes or on SIGHUP ([`crate::scoring::spawn_reloader`]).
    pub router: Arc<crate::scoring::RouterSlot>,
    /// Production evaluation (`[evals]`); `None` when off or without a database.
    pub evals: Option<crate::shadow::Shadow>,
    /// Permits for concurrent blocking scorers (the embedding encoder): one per core.
    pub scoring_slots: Arc<tokio::sync::Semaphore>,
    /// Per-conversation memory of the highest `auto` tier (`[router] sticky_secs`; `None` = off).
    pub sticky: Option<Arc<triage_core::router::choice::StickyRoutes>>,
    /// Permits for concurrent exact token counts ([`crate::tokens::count_prompt`]): one per core.
    pub count_slots: Arc<tokio::sync::Semaphore>,
    /// Counts for the periodic INFO summary line.
    pub summary: Arc<crate::telemetry::Summary>,
    /// Metric handles of the series every answered request touches.
    pub instruments: crate::telemetry::Instruments,
    /// Set when the shutdown grace period is over: in-flight requests end themselves.
    stop: tokio::sync::watch::Sender<bool>,
    /// Requests being handled (streams until their last byte).
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(SharedState);

impl InFlight {
    /// Marks a request in flight.
    pub fn new(state: SharedState) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared handle to [`AppState`].
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Builds the state: one HTTP client per provider (keys read from the environment), the
    /// router's model.
    ///
    /// Errors: an HTTP client cannot be built, or the router's model file cannot be loaded.
    pub fn new(catalog: Catalog) -> Result<AppState, String> {
        let providers = catalog
            .providers()
            .iter()
            .map(crate::providers::client_for)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let health = catalog.providers().iter().map(|_| ProviderHealth::default()).collect();
        let router = crate::scoring::build_router(catalog.auto_routing())?;
        let deployments = catalog
            .deployments()
            .iter()
            .map(|_| DeploymentHealth {
                breaker: Mutex::new(Breaker::new(*catalog.breaker())),
                cooldown_until: Mutex::new(None),
                auth_failed: Mutex::new(None),
                latency_ewma_us: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            })
            .collect();
        // Rules and the entity recogniser (person, address, date, organization).
        let guard = (!catalog.guard().is_off()).then(triage_core::guard::Guard::new);
        let instruments = crate::telemetry::Instruments::new(&catalog);
        let sticky =
            catalog.sticky_routing().map(|ttl| Arc::new(triage_core::router::choice::StickyRoutes::new(ttl, 100_000)));
        triage_core::tokens::set_max_tokenize_bytes(catalog.server().max_tokenize_bytes);
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Ok(AppState {
            count_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
            summary: Default::default(),
            catalog,
            instruments,
            providers,
            health,
            deployments,
            store: None,
            ledger: None,
            keys: Default::default(),
            router: Arc::new(crate::scoring::RouterSlot::new(router)),
            evals: None,
            scoring_slots: crate::scoring::scoring_slots(),
            sticky,
            guard,
            stop: tokio::sync::watch::Sender::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The caller's virtual key, from this gateway's key cache and store
    /// ([`crate::auth::authenticate`]).
    ///
    /// Errors: [`crate::GatewayError::Unauthorized`] for a missing, unknown or revoked key.
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<triage_store::KeyRecord>, crate::GatewayError> {
        crate::auth::authenticate(self.catalog.auth(), &self.keys, self.store.as_ref(), headers).await
    }

    /// Tells every in-flight request to end now (the shutdown grace period is over).
    pub fn stop_in_flight(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once [`AppState::stop_in_flight`] was called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Attaches the database and starts the ledger writer on it; with `[evals]` on, prepares
    /// shadow evaluation's queue (its workers start with [`crate::evals::spawn`]).
    pub fn with_store(mut self, store: triage_store::Store) -> AppState {
        self.ledger = Some(triage_store::Ledger::spawn(store.clone()));
        self.store = Some(store);
        if self.catalog.evals().enabled() {
            self.evals = Some(crate::shadow::Shadow::new(self.catalog.evals()));
        }
        self
    }

    /// Why deployment `d` cannot take a call at `now`, or `None` if it can (a half-open breaker
    /// counts as callable: admission then decides who probes). An open breaker or a cooldown
    /// (an ejection) does not count while `d`'s model is in panic ([`AppState::panicking`]).
    pub fn deployment_unavailable(&self, d: DeploymentId, now: Instant) -> Option<Unavailable> {
        if let Some(why) = self.hard_unavailable(d) {
            return Some(why);
        }
        let why = self.ejection(d, now)?;
        if self.panicking(self.catalog.deployments()[d].model, now) {
            return None;
        }
        Some(why)
    }

    /// Why `d` cannot take a call whatever its health: no key, unreachable, a failed or crashed
    /// or full local engine.
    fn hard_unavailable(&self, d: DeploymentId) -> Option<Unavailable> {
        let p = self.catalog.deployments()[d].provider;
        if !self.providers[p].has_key() {
            return Some(Unavailable::NoKey);
        }
        // A local engine's own state is the truth (its probe only repeats it, and lags: a
        // worker back after a crash would read `unreachable` until the next probe).
        match self.providers[p].local_state() {
            Some(EngineState::Failed(_)) => return Some(Unavailable::EngineFailed),
            Some(EngineState::Crashed(_)) => return Some(Unavailable::EngineCrashed),
            Some(EngineState::Loading | EngineState::Ready) => {}
            None => {
                if self.health[p].reachability() == Reachability::Down {
                    return Some(Unavailable::Unreachable);
                }
            }
        }
        if self.providers[p].busy() {
            return Some(Unavailable::Busy);
        }
        None
    }

    /// `d`'s ejection at `now`: a `Retry-After` or quarantine cooldown, or an open breaker.
    fn ejection(&self, d: DeploymentId, now: Instant) -> Option<Unavailable> {
        let h = &self.deployments[d];
        if let Some(until) = h.cooldown_until.lock().ok().and_then(|c| *c) {
            if let Some(rem) = until.checked_duration_since(now).filter(|r| !r.is_zero()) {
                return Some(Unavailable::CoolingDown(rem));
            }
        }
        let b = h.breaker.lock().ok()?;
        match b.state(now) {
            BreakerState::Open => Some(Unavailable::BreakerOpen(b.remaining(now).unwrap_or_default())),
            _ => None,
        }
    }

    /// True when `model` is in panic (Envoy's healthy panic threshold): it has two or more
    /// deployments that could take calls but for their health, and fewer than
    /// `breaker.panic_threshold` of them are healthy (breaker not open, not cooling down). Its
    /// ejections are then ignored and load spreads over all of them, so a partial outage
    /// never becomes a total one.
    pub fn panicking(&self, model: ModelId, now: Instant) -> bool {
        let (mut usable, mut healthy) = (0usize, 0usize);
        for &d in &self.catalog.models()[model].deployments {
            if self.hard_unavailable(d).is_none() {
                usable += 1;
                if self.ejection(d, now).is_none() {
                    healthy += 1;
                }
            }
        }
        usable >= 2 && (healthy as f64) < self.catalog.breaker().panic_threshold * usable as f64
    }

    /// True when `d` is only ejected (open breaker or cooldown), not hard-unavailable: a last
    /// resort when nothing else of a request's plan can serve it.
    pub fn only_ejected(&self, d: DeploymentId, now: Instant) -> bool {
        self.hard_unavailable(d).is_none() && self.ejection(d, now).is_some()
    }

    /// True when opening `d`'s breaker now keeps its model within `breaker.max_ejection`: no
    /// other deployment of the model is ejected, or one more still fits the fraction.
    fn may_eject(&self, d: DeploymentId) -> bool {
        let siblings = &self.catalog.models()[self.catalog.deployments()[d].model].deployments;
        let ejected = siblings
            .iter()
            .filter(|&&s| s != d)
            .filter(|&&s| self.deployments[s].breaker.lock().is_ok_and(|b| b.is_ejected()))
            .count();
        ejected == 0 || (ejected + 1) as f64 <= self.catalog.breaker().max_ejection * siblings.len() as f64
    }

    /// The state of `d`'s breaker at `now`.
    pub fn breaker_state(&self, d: DeploymentId, now: Instant) -> BreakerState {
        self.deployments[d].breaker.lock().map(|b| b.state(now)).unwrap_or(BreakerState::Closed)
    }

    /// Asks `d`'s breaker for a call; while `d`'s model is in panic, or when `force` (the last
    /// deployment able to serve a request), an open breaker lets the call through.
    pub fn admit(&self, d: DeploymentId, now: Instant, force: bool) -> Admission {
        let panic = force || self.panicking(self.catalog.deployments()[d].model, now);
        match self.deployments[d].breaker.lock().map(|mut b| b.admit(now)).unwrap_or(Admission::Call) {
            Admission::Refused if panic => Admission::Call,
            a => a,
        }
    }

    /// Releases a half-open probe whose call ended without a verdict.
    pub fn release_probe(&self, d: DeploymentId) {
        if let Ok(mut b) = self.deployments[d].breaker.lock() {
            b.release_probe();
        }
    }

    /// Records a successful call of `d` that took `latency` to its response headers.
    pub fn record_success(&self, d: DeploymentId, latency: Duration) {
        // A provider that answers is up, whatever its last probe said.
        let p = self.catalog.deployments()[d].provider;
        if self.health[p].reachability() != Reachability::Up {
            self.health[p].mark_up();
            tracing::info!(provider = %self.catalog.providers()[p].name, "provider answered a call: marked reachable");
        }
        let h = &self.deployments[d];
        h.calls.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let old = h.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 4 + us) / 5 };
        h.latency_ewma_us.store(new, Ordering::Relaxed);
        if let Ok(mut b) = h.breaker.lock() {
            let was = b.state(Instant::now());
            b.on_success(Instant::now());
            if was != BreakerState::Closed {
                self.breaker_changed(d, BreakerState::Closed);
            }
        }
    }

    /// Records a provider failure of `d` (never a client's fault or cancellation). Its breaker
    /// opens only within `breaker.max_ejection` of its model, after a jittered cooldown.
    pub fn record_failure(&self, d: DeploymentId) {
        let h = &self.deployments[d];
        h.calls.fetch_add(1, Ordering::Relaxed);
        h.failures.fetch_add(1, Ordering::Relaxed);
        let may_open = self.may_eject(d);
        let opened =
            h.breaker.lock().map(|mut b| b.on_failure_with(Instant::now(), may_open, fastrand::f64())).unwrap_or(false);
        if opened {
            self.breaker_changed(d, BreakerState::Open);
        }
    }

    /// Quarantines `d` for `breaker.auth_quarantine` after its upstream refused Triage's
    /// provider key (`status` 401 or 403): logged at WARN once per quarantine, counted in
    /// `triage_upstream_auth_failures_total`, shown in `/v1/health/deployments`.
    pub fn quarantine_auth(&self, d: DeploymentId, status: u16) {
        let dep = &self.catalog.deployments()[d];
        let (model, provider) = (&self.catalog.models()[dep.model].id, &self.catalog.providers()[dep.provider].name);
        let for_ = self.catalog.breaker().auth_quarantine;
        let fresh = self.deployments[d]
            .auth_failed
            .lock()
            .map(|mut a| {
                let fresh = a.is_none_or(|(at, _)| at.elapsed() >= for_);
                *a = Some((Instant::now(), status));
                fresh
            })
            .unwrap_or(true);
        if fresh {
            tracing::warn!(model = %model, provider = %provider, status, quarantine_secs = for_.as_secs_f64(),
                "the upstream refused the provider's API key: check the key in its api_key_env; deployment quarantined");
        }
        metrics::counter!("triage_upstream_auth_failures_total", "model" => model.clone(), "provider" => provider.clone()).increment(1);
        self.cool_down(d, for_);
    }

    /// Makes `d` skip calls for `for_` (an upstream's `Retry-After`, a quota or key refusal).
    pub fn cool_down(&self, d: DeploymentId, for_: Duration) {
        if let Ok(mut c) = self.deployments[d].cooldown_until.lock() {
            let until = Instant::now() + for_;
            if c.is_none_or(|old| old < until) {
                *c = Some(until);
            }
        }
    }

    fn breaker_changed(&self, d: DeploymentId, to: BreakerState) {
        let dep = &self.catalog.deployments()[d];
        let model = self.catalog.models()[dep.model].id.clone();
        let provider = self.catalog.providers()[dep.provider].name.clone();
        tracing::warn!(model = %model, provider = %provider, state = to.as_str(), "circuit breaker changed state");
        let v = match to {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        };
        metrics::gauge!("triage_breaker_state", "model" => model.clone(), "provider" => provider.clone()).set(v);
        if to == BreakerState::Open {
            metrics::counter!("triage_breaker_opened_total", "model" => model, "provider" => provider).increment(1);
        }
    }

    /// A snapshot of `d`'s health, for `GET /v1/health/deployments`.
    pub fn deployment_report(&self, d: DeploymentId) -> serde_json::Value {
        let now = Instant::now();
        let dep = &self.catalog.deployments()[d];
        let h = &self.deployments[d];
        let (state, error_rate) =
            h.breaker.lock().map(|b| (b.state(now), b.error_rate())).unwrap_or((BreakerState::Closed, 0.0));
        let unavailable = self.deployment_unavailable(d, now);
        let p = &self.health[dep.provider];
        let engine = self.providers[dep.provider].local_engine().map(|e| e.health());
        // A local engine's reason says why in words: `failed: <reason>`, `crashed: <how>`.
        let reason = match (unavailable, &engine) {
            (Some(Unavailable::EngineFailed | Unavailable::EngineCrashed), Some(h)) => Some(h.state.describe()),
            (u, _) => u.map(|u| u.as_str().to_owned()),
        };
        let mut report = serde_json::json!({
            "model": self.catalog.models()[dep.model].id,
            "provider": self.catalog.providers()[dep.provider].name,
            "upstream_model": dep.upstream_model,
            "available": unavailable.is_none(),
            "reason": reason,
            "wait_secs": match unavailable {
                Some(Unavailable::BreakerOpen(r) | Unavailable::CoolingDown(r)) => Some(r.as_secs_f64()),
                _ => None,
            },
            "breaker": state.as_str(),
            "error_rate": error_rate,
            "calls": h.calls.load(Ordering::Relaxed),
            "failures": h.failures.load(Ordering::Relaxed),
            "latency_ms": h.latency_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "probe": match p.reachability() { Reachability::Up => "up", Reachability::Down => "down", Reachability::Unknown => "unknown" },
            "probe_latency_ms": p.probe_latency_us() as f64 / 1000.0,
            "panic": self.panicking(dep.model, now),
        });
        if let Some((at, status)) = h.auth_failed.lock().ok().and_then(|a| *a) {
            report["upstream_auth_failed"] =
                serde_json::json!({"status": status, "secs_ago": at.elapsed().as_secs_f64()});
        }
        if let Some(h) = engine {
            // `state`: loading (calls wait for it), ready, busy, failed: <reason>, crashed: <how>.
            let state = match (&h.state, unavailable) {
                (EngineState::Ready, Some(Unavailable::Busy)) => "busy".to_owned(),
                (s, _) => s.describe(),
            };
            report["engine"] = serde_json::json!({
                "state": state,
                "crashes": h.crashes,
                "restarts": h.restarts,
                "last_crash": h.last_crash,
                "pid": h.pid,
            });
        }
        report
    }

    /// Why provider `p` cannot take calls now, or `None` if it can (a local engine still
    /// loading can: calls wait for it).
    pub fn provider_unavailable(&self, p: ProviderId) -> Option<String> {
        if !self.providers[p].has_key() {
            return Some("no API key".into());
        }
        match self.providers[p].local_state() {
            Some(s @ (EngineState::Failed(_) | EngineState::Crashed(_))) => return Some(s.describe()),
            Some(EngineState::Loading | EngineState::Ready) => return None,
            None => {}
        }
        match self.health[p].reachability() {
            Reachability::Down => Some("unreachable".into()),
            _ => None,
        }
    }

    /// True when some deployment of `model` can take a call now.
    pub fn model_available(&self, model: ModelId) -> bool {
        let now = Instant::now();
        self.catalog.models()[model].deployments.iter().any(|&d| self.deployment_unavailable(d, now).is_none())
    }

    /// True when some deployment of `model` can take a call now, or is skipped only because its
    /// HTTP provider failed (or has not passed) a reachability probe: what routing falls back to
    /// when nothing is available, so such a provider is still tried (issue 19).
    pub fn model_available_last_resort(&self, model: ModelId) -> bool {
        let now = Instant::now();
        self.catalog.models()[model].deployments.iter().any(|&d| match self.deployment_unavailable(d, now) {
            None => true,
            Some(Unavailable::Unreachable) => {
                self.providers[self.catalog.deployments()[d].provider].local_state().is_none()
            }
            Some(_) => false,
        })
    }

    /// True when some deployment of `model` can take a call now or is only busy (a full local
    /// engine): what sensitive work, which may not leave the machine, routes on, so that it is
    /// answered 503 while the engine is full rather than sent elsewhere.
    pub fn model_available_or_busy(&self, model: ModelId) -> bool {
        let now = Instant::now();
        self.catalog.models()[model]
            .deployments
            .iter()
            .any(|&d| matches!(self.deployment_unavailable(d, now), None | Some(Unavailable::Busy)))
    }
}
