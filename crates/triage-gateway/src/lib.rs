//! The I/O edge of Triage: the HTTP server, upstream provider clients, streaming relay, health
//! checks and metrics. The decisions themselves (parsing, routing, normalising, pricing) are in
//! `triage-core`; this crate wires them to sockets.
#![deny(missing_docs)]

pub mod accounting;
pub mod auth;
pub mod budget;
pub mod conn;
pub mod dispatch;
pub mod error;
pub mod evals;
pub mod guarding;
pub mod health;
pub mod http;
pub mod inbound;
pub mod pipeline;
pub mod providers;
pub mod relay;
pub mod request;
pub mod responses;
pub mod scoring;
pub mod shadow;
pub mod state;
pub mod telemetry;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use triage_core::catalog::Catalog;

pub use error::GatewayError;
pub use state::{AppState, SharedState};

/// Runs the gateway on `listener` until `shutdown` resolves, then stops accepting connections,
/// lets in-flight requests and streams finish for up to `server.shutdown_grace`, writes every
/// queued ledger row, settles every budget reservation and ends its lease.
///
/// Errors: the database cannot be opened, an HTTP client cannot be built, or the listener fails.
pub async fn serve(
    catalog: Catalog,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    telemetry::handle();
    // The o200k tokenizer is not loaded here: its tables (about 30 MiB) are built the first time
    // a request needs an exact count (`tokens::load_tokenizer`), which most never do.
    let grace = catalog.server().shutdown_grace;
    let store = match &catalog.spend().database {
        Some(url) => Some(
            triage_store::Store::connect(url)
                .await
                .map_err(|e| std::io::Error::other(format!("{}: {e}", triage_store::redact_url(url))))?,
        ),
        None => None,
    };
    let mut state = AppState::new(catalog).map_err(std::io::Error::other)?;
    if let Some(store) = store {
        state = state.with_store(store);
    }
    let state = Arc::new(state);
    let ledger = state.ledger.clone();
    let mut probes = health::spawn(state.clone());
    // Budget reservations are owned by this process's lease: renew it, and give back what the
    // expired leases of stopped gateways (a previous process killed with requests in flight)
    // still hold, at start-up and then every third of a lease.
    if let Some(store) = &state.store {
        probes.push(store.spawn_lease_keeper(state.catalog.spend().reservation_lease));
    }
    probes.extend(evals::spawn(&state));
    probes.push(scoring::spawn_reloader(state.router.clone(), state.catalog.auto_routing().clone()));
    probes.extend(auth::spawn_revocation_watch(
        state.catalog.auth(),
        state.catalog.server().key_recheck,
        state.store.clone(),
        state.keys.clone(),
    ));
    probes.push(telemetry::spawn_summary(state.summary.clone(), state.catalog.server().log_summary));
    probes.push(telemetry::spawn_metrics_upkeep());
    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let limits = conn::Limits::of(state.catalog.server());
    let server = conn::serve(listener, http::app(state.clone()), limits, async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections, in-flight requests may finish"
        );
        notify.notify_one();
    });
    let result = tokio::select! {
        r = server => r,
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(in_flight = state.in_flight(), "shutdown grace period over; ending the remaining requests");
            // Every request still running ends itself now (a stream with an error event) and
            // records its ledger row; wait a little for them.
            state.stop_in_flight();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while state.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Ok(())
        }
    };
    for p in probes {
        p.abort();
    }
    // Streams cut at the end of the grace period have recorded themselves by now: write every
    // queued ledger row before returning, so a clean shutdown loses none.
    if let Some(l) = ledger {
        tokio::task::yield_now().await;
        l.shutdown().await;
    }
    // Every request has settled (or released) its reservation on a spawned task: wait for
    // those, then give back anything still held and end the lease.
    if let Some(store) = &state.store {
        let left = store.drain(std::time::Duration::from_secs(5)).await;
        match store.retire().await {
            Ok(r) if r.reservations > 0 || left > 0 => tracing::warn!(
                pending = left,
                released = r.reservations,
                "budget reservations still held at shutdown were released"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not release this gateway's reservations at shutdown; its lease expires")
            }
        }
    }
    result
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
