//! What a request did cost, once it ends: [`Accounting::finish`] replaces the budget reservation
//! ([`crate::budget`]) with the real cost, records the request's metrics
//! ([`crate::telemetry`]), hands a sampled request to production evaluation, and queues one
//! ledger row per request (with its attempts) for the background writer. Who is calling is
//! [`crate::auth`]; what they may spend is [`crate::budget`].

use std::time::Instant;

use triage_core::cost::{NanoUsd, TokenUsage};
use triage_store::{AttemptRecord, KeyRecord, RequestRecord, Reservation};

use crate::inbound::Format;
use crate::request::{Attempt, RouteInfo};
use crate::state::{AppState, SharedState};
use crate::telemetry::{record_request, record_usage};

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
    pub shadow: Option<crate::shadow::Ticket>,
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
            let meta = crate::shadow::Meta {
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
            crate::shadow::finished(st.evals.as_ref(), c, ticket, status, meta);
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
