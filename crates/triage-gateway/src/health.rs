//! Background reachability checks: every provider is probed at start and then on its interval,
//! so routing skips a provider that is down before a request has to find out.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::state::{AppState, Reachability};

/// Probes every provider once, concurrently, and records the results.
pub async fn probe_all(state: &AppState) {
    let probes = (0..state.providers.len()).map(|p| probe_one(state, p));
    futures_util::future::join_all(probes).await;
}

async fn probe_one(state: &AppState, p: usize) {
    let name = &state.catalog.providers()[p].name;
    if !state.providers[p].has_key() {
        state.health[p].record(Reachability::Down, 0);
        return;
    }
    let start = Instant::now();
    let result = state.providers[p].probe().await;
    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let r = match &result {
        Ok(s) if s.as_u16() == 401 || s.as_u16() == 403 => {
            tracing::warn!(provider = %name, status = s.as_u16(), "provider rejected the API key");
            Reachability::Down
        }
        Ok(_) => Reachability::Up,
        Err(e) => {
            tracing::debug!(provider = %name, error = %e, "provider unreachable");
            Reachability::Down
        }
    };
    let before = state.health[p].reachability();
    if before != r && before != Reachability::Unknown {
        tracing::info!(provider = %name, state = ?r, "provider reachability changed");
    }
    metrics::gauge!("triage_provider_up", "provider" => name.clone()).set(if r == Reachability::Up {
        1.0
    } else {
        0.0
    });
    state.health[p].record(r, us);
}

/// Starts one probe loop per provider (first probe immediately). Abort the handles to stop.
pub fn spawn(state: Arc<AppState>) -> Vec<JoinHandle<()>> {
    (0..state.providers.len())
        .map(|p| {
            let state = state.clone();
            tokio::spawn(async move {
                let every = state.catalog.providers()[p].health_check_interval;
                loop {
                    probe_one(&state, p).await;
                    tokio::time::sleep(every).await;
                }
            })
        })
        .collect()
}
