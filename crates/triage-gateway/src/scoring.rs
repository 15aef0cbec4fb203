//! The difficulty router in the gateway: building it from the `[router]` configuration, and
//! scoring a request for `model: "auto"` without stalling the event loop.
//!
//! The `lexical` and `random` scorers take microseconds and run inline. The `embedding` scorer
//! runs a neural encoder (milliseconds of CPU per request, docs/BENCHMARKS.md), so it runs on
//! tokio's blocking pool behind a semaphore with one permit per core: a burst of `auto`
//! requests queues for the encoder instead of starving the threads that relay other traffic.

use std::sync::Arc;

use tokio::sync::Semaphore;
use triage_core::catalog::AutoRouting;
use triage_core::openai::ChatRequest;
use triage_core::router::{Decision, RandomScorer, Router, ScorerKind, Thresholds};

/// Builds the router `auto` describes: `None` for [`AutoRouting::Cheapest`].
///
/// Errors: a model file that cannot be read or parsed, or (embedding) an encoder directory
/// without the encoder's files; the message names the file and how to fetch the encoder.
pub fn build_router(auto: &AutoRouting) -> Result<Option<Arc<Router>>, String> {
    let AutoRouting::Scorer { kind, model_file, encoder_dir } = auto else {
        return Ok(None);
    };
    let file = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("router model {path}: {e}"));
    let router = match kind {
        ScorerKind::Lexical => match model_file {
            None => Router::default_model().map_err(|e| e.to_string())?,
            Some(p) => Router::from_lexical_json(&file(p)?).map_err(|e| format!("router model {p}: {e}"))?,
        },
        ScorerKind::Random => Router::new(Box::new(RandomScorer { seed: 1 }), Thresholds::default()),
        ScorerKind::Embedding => {
            let head = match model_file {
                None => triage_embed::EmbeddingHead::from_json(triage_embed::DEFAULT_HEAD_JSON),
                Some(p) => triage_embed::EmbeddingHead::from_json(&file(p)?),
            }
            .map_err(|e| format!("router model {}: {e}", model_file.as_deref().unwrap_or("(shipped)")))?;
            let dir = encoder_dir.as_ref().map_or_else(triage_embed::default_dir, std::path::PathBuf::from);
            let encoder = triage_embed::Encoder::load(&dir, head.file().max_tokens).map_err(|e| e.to_string())?;
            let scorer = triage_embed::EmbeddingScorer::new(Arc::new(encoder), head).map_err(|e| e.to_string())?;
            Router::new(Box::new(scorer), Thresholds::default())
        }
    };
    Ok(Some(Arc::new(router)))
}

/// Permits for concurrent blocking scorers: one per core.
pub fn scoring_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// The router's decision for `req` over `tiers` tiers: inline for a cheap scorer, on the
/// blocking pool (one request per core at a time) for an expensive one. `None` only if the
/// blocking task could not run (the runtime is shutting down) or panicked; the caller then
/// routes as without a router.
pub async fn decide(router: &Arc<Router>, slots: &Semaphore, req: &ChatRequest, tiers: usize) -> Option<Decision> {
    if !router.scorer().is_blocking() {
        return Some(router.decide(req, tiers));
    }
    let _permit = slots.acquire().await.ok()?;
    let (r, req) = (Arc::clone(router), req.clone());
    match tokio::task::spawn_blocking(move || r.decide(&req, tiers)).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "router scorer task failed; routing to the cheapest capable tier");
            None
        }
    }
}
