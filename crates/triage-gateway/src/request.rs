//! What a request carries between the stages of its path: the route it took ([`RouteInfo`]) and
//! each upstream attempt ([`Attempt`]). A leaf: it imports no other module of the gateway.

use std::time::Duration;

use triage_core::catalog::{Catalog, DeploymentId, ModelId, TierId};
use triage_core::route::RouteDecision;

/// What the response headers report: the model that answered (or was routed to, on failure).
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// The model.
    pub model: ModelId,
    /// Its tier.
    pub tier: TierId,
    /// Why.
    pub reason: String,
    /// Every upstream attempt, once dispatch ran.
    pub attempts: Vec<Attempt>,
}

impl RouteInfo {
    /// The routed model, before dispatch.
    pub fn routed(d: &RouteDecision) -> Self {
        RouteInfo { model: d.model, tier: d.tier, reason: d.reason.clone(), attempts: Vec::new() }
    }
}

/// One call (or skip) of a deployment.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The deployment.
    pub deployment: DeploymentId,
    /// `200`, an upstream status, or a failure / skip name (`timeout`, `connect`, `reset`,
    /// `in_band_error`, `truncated`, `busy`, `breaker_open`, `cooling_down`, `no_api_key`, ...).
    pub outcome: String,
    /// Time to the response headers (zero for a skip).
    pub latency: Duration,
}

/// The `x-triage-attempts` header value: `model@provider:outcome` per attempt, comma-separated.
pub fn attempts_header(c: &Catalog, attempts: &[Attempt]) -> String {
    let mut out = String::new();
    for (i, a) in attempts.iter().enumerate() {
        let dep = &c.deployments()[a.deployment];
        let (model, provider) = (&c.models()[dep.model].id, &c.providers()[dep.provider].name);
        if i > 0 {
            out.push_str(", ");
        }
        out.reserve(model.len() + provider.len() + a.outcome.len() + 2);
        out.push_str(model);
        out.push('@');
        out.push_str(provider);
        out.push(':');
        out.push_str(&a.outcome);
    }
    out
}
