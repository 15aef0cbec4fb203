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

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
