//! Shared state of a running gateway: the catalog, one client per provider, their health.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use triage_core::catalog::{Catalog, ModelId, ProviderId};

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

    /// Latency of the last probe in microseconds (0 before the first).
    pub fn probe_latency_us(&self) -> u64 {
        self.probe_latency_us.load(Ordering::Relaxed)
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
}

/// Shared handle to [`AppState`].
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Builds the state: one HTTP client per provider, keys read from the environment.
    ///
    /// Errors: an HTTP client cannot be built.
    pub fn new(catalog: Catalog) -> Result<AppState, reqwest::Error> {
        let providers = catalog.providers().iter().map(ProviderClient::new).collect::<Result<Vec<_>, _>>()?;
        let health = catalog.providers().iter().map(|_| ProviderHealth::default()).collect();
        Ok(AppState { catalog, providers, health })
    }

    /// Why provider `p` cannot take calls now, or `None` if it can.
    pub fn provider_unavailable(&self, p: ProviderId) -> Option<&'static str> {
        if !self.providers[p].has_key() {
            return Some("no API key");
        }
        match self.health[p].reachability() {
            Reachability::Down => Some("unreachable"),
            _ => None,
        }
    }

    /// True when `model`'s provider can take calls now.
    pub fn model_available(&self, model: ModelId) -> bool {
        self.provider_unavailable(self.catalog.models()[model].provider).is_none()
    }
}
