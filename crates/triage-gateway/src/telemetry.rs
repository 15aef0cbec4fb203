//! Prometheus metrics: names, buckets and the recorder.
//!
//! - `triage_requests_total{endpoint, model, tier, status}`: requests answered (status = HTTP
//!   status, or `stream_error` / `cancelled` for streams that did not end cleanly);
//! - `triage_request_duration_seconds{model, tier}`: whole request, streams until their last byte;
//! - `triage_ttft_seconds{model, tier}`: time to the first streamed chunk;
//! - `triage_upstream_duration_seconds{provider, model}`: one upstream attempt, until its response
//!   headers (non-streamed: the whole answer; streamed: until the first content token);
//! - `triage_attempts_total{model, provider, outcome}`, `triage_retries_total{model, provider}`,
//!   `triage_fallbacks_total{to_model, via}`: what dispatch did;
//! - `triage_breaker_state{model, provider}` (0 closed, 1 half-open, 2 open) and
//!   `triage_breaker_opened_total{model, provider}`;
//! - `triage_tokens_total{model, kind}`: input / output tokens from upstream usage;
//! - `triage_provider_up{provider}`: 1 when the last probe reached the provider.
//! - `triage_ledger_rows_dropped_total`: ledger rows dropped because the writer's bounded queue
//!   was full (the database is not keeping up; see `triage_store::Ledger`).
//! - In-process local engines (`kind = "local"`), read from the engine at each scrape, the
//!   figures llama.cpp's own server exports: `triage_local_in_flight{provider}` and
//!   `triage_local_capacity{provider}` (requests admitted, at most `parallel + queue`);
//!   `triage_local_requests_total{provider, outcome}` (`finished`, `cancelled`, `busy` =
//!   refused); `triage_local_prompt_tokens_total{provider}` and
//!   `triage_local_prompt_seconds_total{provider}` (prompt processing), and
//!   `triage_local_generated_tokens_total{provider}` and
//!   `triage_local_generation_seconds_total{provider}` (generation): a rate of tokens over a
//!   rate of seconds is tokens per second. The engine runs in a worker process:
//!   `triage_local_up{provider}` is 1 while its model is loaded and it takes requests, 0 while
//!   it loads, failed or is down after a crash; `triage_local_crashes_total{provider}` counts
//!   worker processes that died, `triage_local_restarts_total{provider}` those started again,
//!   and requests failed by a death are `triage_local_requests_total{outcome="crashed"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use triage_core::catalog::{Catalog, DeploymentId, ModelId, TierId};
use triage_core::cost::{NanoUsd, TokenUsage};

use crate::providers::{ProviderClient, WireFormat};

/// Latency buckets in seconds, from sub-millisecond gateway work to multi-minute generations.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Installs the process-wide recorder on first call and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; metrics then go there instead.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Sets the local-engine series (see the module docs) from each loaded engine's counters.
pub fn record_local_engines(catalog: &Catalog, clients: &[ProviderClient]) {
    for (provider, client) in catalog.providers().iter().zip(clients) {
        let Some(engine) = client.local_engine() else { continue };
        let s = engine.stats();
        let name = provider.name.clone();
        metrics::gauge!("triage_local_in_flight", "provider" => name.clone()).set(s.in_flight as f64);
        metrics::gauge!("triage_local_capacity", "provider" => name.clone()).set(s.capacity as f64);
        let h = engine.health();
        let up = if h.state == triage_local::EngineState::Ready { 1.0 } else { 0.0 };
        metrics::gauge!("triage_local_up", "provider" => name.clone()).set(up);
        metrics::counter!("triage_local_crashes_total", "provider" => name.clone()).absolute(h.crashes);
        metrics::counter!("triage_local_restarts_total", "provider" => name.clone()).absolute(h.restarts);
        for (outcome, n) in
            [("finished", s.finished), ("cancelled", s.cancelled), ("busy", s.busy), ("crashed", s.crashed)]
        {
            metrics::counter!("triage_local_requests_total", "provider" => name.clone(), "outcome" => outcome)
                .absolute(n);
        }
        metrics::counter!("triage_local_prompt_tokens_total", "provider" => name.clone()).absolute(s.prompt_tokens);
        metrics::counter!("triage_local_generated_tokens_total", "provider" => name.clone())
            .absolute(s.generated_tokens);
        // Seconds as gauges: Prometheus counters here hold integers.
        metrics::gauge!("triage_local_prompt_seconds_total", "provider" => name.clone())
            .set(s.prompt_nanos as f64 / 1e9);
        metrics::gauge!("triage_local_generation_seconds_total", "provider" => name)
            .set(s.generation_nanos as f64 / 1e9);
    }
}

/// Metric handles for the series every answered request touches, registered on first use and
/// kept, so the request path neither builds label sets (an allocation per label) nor looks the
/// series up in the registry. A series appears in `/metrics` when first used, as with the
/// macros. Rarer series (error statuses, retries, fallbacks, breakers) still use the macros.
#[derive(Debug)]
pub struct Instruments {
    models: Vec<ModelInstruments>,
    deployments: Vec<DeploymentInstruments>,
}

/// The per-model series, labelled with the model's id and its own tier.
#[derive(Debug, Default)]
struct ModelInstruments {
    /// `triage_requests_total{status="200"}`, by endpoint (`chat_completions`, `messages`).
    answered: [OnceLock<Counter>; 2],
    /// `triage_request_duration_seconds`.
    duration: OnceLock<Histogram>,
    /// `triage_ttft_seconds`.
    ttft: OnceLock<Histogram>,
    /// `triage_tokens_total{kind="input"}`.
    input_tokens: OnceLock<Counter>,
    /// `triage_tokens_total{kind="output"}`.
    output_tokens: OnceLock<Counter>,
    /// `triage_spend_nanodollars_total`.
    spend: OnceLock<Counter>,
}

/// The per-deployment series, labelled with the model's id and the provider's name.
#[derive(Debug, Default)]
struct DeploymentInstruments {
    /// `triage_upstream_duration_seconds`.
    upstream: OnceLock<Histogram>,
    /// `triage_attempts_total{outcome="200"}`.
    succeeded: OnceLock<Counter>,
}

/// Counts since the last summary line: with a line per request at DEBUG only, the INFO log
/// says what the gateway did once per `server.log_summary_secs` ([`spawn_summary`]).
#[derive(Debug, Default)]
pub struct Summary {
    requests: AtomicU64,
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    failed_attempts: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    cost_nanos: AtomicU64,
    latency_us: AtomicU64,
}

impl Summary {
    /// Counts one answered request with its `status` (an HTTP status, or a stream's end) and
    /// latency.
    pub fn request(&self, status: &str, latency: std::time::Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let bucket = match status.as_bytes().first() {
            Some(b'2') => &self.ok,
            Some(b'4') => &self.client_errors,
            _ => &self.server_errors,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
        self.latency_us.fetch_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Counts an answer's tokens and cost.
    pub fn usage(&self, input: u64, output: u64, cost_nanos: u64) {
        self.input_tokens.fetch_add(input, Ordering::Relaxed);
        self.output_tokens.fetch_add(output, Ordering::Relaxed);
        self.cost_nanos.fetch_add(cost_nanos, Ordering::Relaxed);
    }

    /// Counts a failed upstream attempt.
    pub fn failed_attempt(&self) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes one INFO line with the counts since the last one and resets them; writes nothing
    /// when nothing happened.
    pub fn flush(&self, period: std::time::Duration) {
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        let requests = take(&self.requests);
        let failed_attempts = take(&self.failed_attempts);
        let (ok, client_errors, server_errors) = (take(&self.ok), take(&self.client_errors), take(&self.server_errors));
        let (input, output, cost) = (take(&self.input_tokens), take(&self.output_tokens), take(&self.cost_nanos));
        let latency_us = take(&self.latency_us);
        if requests == 0 && failed_attempts == 0 {
            return;
        }
        tracing::info!(
            period_secs = period.as_secs(),
            requests,
            ok,
            client_errors,
            server_errors,
            failed_attempts,
            mean_latency_ms = if requests == 0 { 0.0 } else { latency_us as f64 / requests as f64 / 1000.0 },
            input_tokens = input,
            output_tokens = output,
            cost_usd = cost as f64 / 1e9,
            "summary"
        );
    }
}

/// How often the recorder's pending histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorder's pending histogram samples into their buckets every 5 s
/// (`PrometheusHandle::run_upkeep`). The recorder keeps each observation (three or so per
/// request: duration, upstream duration, TTFT) until a scrape of `/metrics` renders it or
/// upkeep runs, so a gateway nobody scrapes grew with every request it served (docs/RELIABILITY.md,
/// the soak).
pub fn spawn_metrics_upkeep() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle().run_upkeep();
        }
    })
}

/// Writes [`Summary`]'s line every `server.log_summary_secs`.
pub fn spawn_summary(summary: Arc<Summary>, period: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            summary.flush(period);
        }
    })
}

/// Records one answered request in the metrics and the log.
pub fn record_request(
    c: &Catalog,
    instruments: &Instruments,
    summary: &Summary,
    format: WireFormat,
    d: Option<(ModelId, TierId)>,
    status: &str,
    started: Instant,
) {
    let (model, tier) = match d {
        Some((m, t)) => (c.models()[m].id.as_str(), c.tiers()[t].as_str()),
        None => ("none", "none"),
    };
    let secs = started.elapsed().as_secs_f64();
    // The kept handles are labelled with the model's own tier; any other pair takes the macros.
    let kept = d.filter(|&(m, t)| c.models()[m].tier == t).map(|(m, _)| m);
    match kept.and_then(|m| instruments.duration(c, m)) {
        Some(h) => h.record(secs),
        None => metrics::histogram!("triage_request_duration_seconds", "model" => model.to_owned(), "tier" => tier.to_owned())
            .record(secs),
    }
    match kept.filter(|_| status == "200").and_then(|m| instruments.answered(c, m, format)) {
        Some(k) => k.increment(1),
        None => metrics::counter!("triage_requests_total", "endpoint" => endpoint_label(format), "model" => model.to_owned(), "tier" => tier.to_owned(), "status" => status.to_owned()).increment(1),
    }
    summary.request(status, started.elapsed());
    // One line per request at DEBUG; INFO has the periodic summary (`telemetry::Summary`).
    tracing::debug!(model = %model, tier = %tier, status, latency_ms = secs * 1000.0, "request");
}

/// Records the usage and cost of an answer in the metrics and the log.
pub fn record_usage(
    catalog: &Catalog,
    instruments: &Instruments,
    summary: &Summary,
    model: Option<ModelId>,
    tokens: TokenUsage,
    estimated: bool,
    cost: NanoUsd,
    request_id: &str,
) {
    let Some(model) = model else { return };
    let m = &catalog.models()[model];
    match instruments.usage(catalog, model) {
        Some((input, output, spend)) => {
            input.increment(tokens.input);
            output.increment(tokens.output);
            spend.increment(cost.0);
        }
        None => {
            metrics::counter!("triage_tokens_total", "model" => m.id.clone(), "kind" => "input")
                .increment(tokens.input);
            metrics::counter!("triage_tokens_total", "model" => m.id.clone(), "kind" => "output")
                .increment(tokens.output);
            metrics::counter!("triage_spend_nanodollars_total", "model" => m.id.clone()).increment(cost.0);
        }
    }
    if estimated {
        tracing::warn!(request_id, model = %m.id, "the upstream reported no usage; tokens estimated");
    }
    summary.usage(tokens.input, tokens.output, cost.0);
    tracing::debug!(request_id, model = %m.id, input = tokens.input, cached = tokens.cached_input, output = tokens.output, reasoning = tokens.reasoning, estimated, cost_usd = %cost, "usage");
}

/// The `endpoint` label of a client format.
pub fn endpoint_label(format: WireFormat) -> &'static str {
    match format {
        WireFormat::OpenAi => "chat_completions",
        WireFormat::Anthropic => "messages",
    }
}

impl Instruments {
    /// Empty slots for every model and deployment of `catalog` (nothing is registered yet).
    pub fn new(catalog: &Catalog) -> Instruments {
        Instruments {
            models: catalog.models().iter().map(|_| ModelInstruments::default()).collect(),
            deployments: catalog.deployments().iter().map(|_| DeploymentInstruments::default()).collect(),
        }
    }

    /// `triage_requests_total{endpoint, model, tier, status="200"}` of `model` (labelled with its
    /// own tier).
    pub fn answered(&self, catalog: &Catalog, model: ModelId, format: WireFormat) -> Option<&Counter> {
        let slot = match format {
            WireFormat::OpenAi => 0,
            WireFormat::Anthropic => 1,
        };
        let cell = self.models.get(model)?.answered.get(slot)?;
        Some(cell.get_or_init(|| {
            let (id, tier) = model_labels(catalog, model);
            metrics::counter!("triage_requests_total", "endpoint" => endpoint_label(format), "model" => id, "tier" => tier, "status" => "200")
        }))
    }

    /// `triage_request_duration_seconds{model, tier}` of `model` (labelled with its own tier).
    pub fn duration(&self, catalog: &Catalog, model: ModelId) -> Option<&Histogram> {
        Some(self.models.get(model)?.duration.get_or_init(|| {
            let (id, tier) = model_labels(catalog, model);
            metrics::histogram!("triage_request_duration_seconds", "model" => id, "tier" => tier)
        }))
    }

    /// `triage_ttft_seconds{model, tier}` of `model` (labelled with its own tier).
    pub fn ttft(&self, catalog: &Catalog, model: ModelId) -> Option<&Histogram> {
        Some(self.models.get(model)?.ttft.get_or_init(|| {
            let (id, tier) = model_labels(catalog, model);
            metrics::histogram!("triage_ttft_seconds", "model" => id, "tier" => tier)
        }))
    }

    /// `triage_tokens_total{model, kind}` (input, output) and `triage_spend_nanodollars_total{model}`.
    pub fn usage(&self, catalog: &Catalog, model: ModelId) -> Option<(&Counter, &Counter, &Counter)> {
        let m = self.models.get(model)?;
        let id = || catalog.models()[model].id.clone();
        Some((
            m.input_tokens.get_or_init(|| metrics::counter!("triage_tokens_total", "model" => id(), "kind" => "input")),
            m.output_tokens
                .get_or_init(|| metrics::counter!("triage_tokens_total", "model" => id(), "kind" => "output")),
            m.spend.get_or_init(|| metrics::counter!("triage_spend_nanodollars_total", "model" => id())),
        ))
    }

    /// `triage_upstream_duration_seconds{provider, model}` of deployment `d`.
    pub fn upstream(&self, catalog: &Catalog, d: DeploymentId) -> Option<&Histogram> {
        Some(self.deployments.get(d)?.upstream.get_or_init(|| {
            let (provider, model) = deployment_labels(catalog, d);
            metrics::histogram!("triage_upstream_duration_seconds", "provider" => provider, "model" => model)
        }))
    }

    /// `triage_attempts_total{model, provider, outcome="200"}` of deployment `d`.
    pub fn succeeded(&self, catalog: &Catalog, d: DeploymentId) -> Option<&Counter> {
        Some(self.deployments.get(d)?.succeeded.get_or_init(|| {
            let (provider, model) = deployment_labels(catalog, d);
            metrics::counter!("triage_attempts_total", "model" => model, "provider" => provider, "outcome" => "200")
        }))
    }
}

fn model_labels(catalog: &Catalog, model: ModelId) -> (String, String) {
    let m = &catalog.models()[model];
    (m.id.clone(), catalog.tiers()[m.tier].clone())
}

fn deployment_labels(catalog: &Catalog, d: DeploymentId) -> (String, String) {
    let dep = &catalog.deployments()[d];
    (catalog.providers()[dep.provider].name.clone(), catalog.models()[dep.model].id.clone())
}
