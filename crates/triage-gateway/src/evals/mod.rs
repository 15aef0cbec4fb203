//! Production evaluation's workers: each queued job ([`crate::shadow`] samples the requests and
//! queues them once their client has the whole answer) is sent to the reference model and
//! judged ([`worker`]), and its row stored; `POST /v1/feedback` and `GET /v1/evals` ([`http`]).

pub mod http;
pub mod worker;

use std::sync::Arc;

use crate::state::SharedState;

/// Starts the `[evals] concurrency` workers that run queued jobs (none when evaluation is off).
pub fn spawn(state: &SharedState) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(shadow) = &state.evals else { return Vec::new() };
    let Some(rx) = shadow.take_receiver() else { return Vec::new() };
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    (0..state.catalog.evals().concurrency.max(1))
        .map(|_| {
            let (state, rx) = (state.clone(), rx.clone());
            tokio::spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some(job) = job else { return };
                    worker::run(&state, job).await;
                }
            })
        })
        .collect()
}
