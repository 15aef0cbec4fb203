//! The difficulty router in the gateway: building it from the `[router]` configuration, scoring
//! a request for `model: "auto"` without stalling the event loop, and reloading a changed model
//! file while the gateway runs.
//!
//! The `lexical` and `random` scorers take microseconds and run inline. The `embedding` scorer
//! runs a neural encoder (milliseconds of CPU per request, docs/BENCHMARKS.md), so it runs on
//! tokio's blocking pool behind a semaphore with one permit per core: a burst of `auto`
//! requests queues for the encoder instead of starving the threads that relay other traffic.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use triage_core::catalog::AutoRouting;
use triage_core::openai::ChatRequest;
use triage_core::router::{Decision, RandomScorer, Router, ScorerKind, Thresholds};

/// Builds the router `auto` describes: `None` for [`AutoRouting::Cheapest`].
///
/// Errors: a model file that cannot be read or parsed, or (embedding) an encoder directory
/// without the encoder's files; the message names the file and how to fetch the encoder.
pub fn build_router(auto: &AutoRouting) -> Result<Option<Arc<Router>>, String> {
    let AutoRouting::Scorer { kind, model_file, encoder_dir, tier_profiles } = auto else {
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
        ScorerKind::Quality => {
            let p = model_file.as_deref().ok_or_else(|| {
                "[router] scorer = \"quality\" needs [router] model_file (a quality model: `triage train --scorer quality`)"
                    .to_owned()
            })?;
            let scorer =
                quality_scorer(p, &file(p)?, encoder_dir.as_deref())?.with_tier_profiles(tier_profiles.clone());
            Router::new(Box::new(scorer), Thresholds::default())
        }
    };
    Ok(Some(Arc::new(router)))
}

/// The quality scorer of the model file at `path` (contents `json`). When the model reads a
/// static token embedding, its table is the file the model names, relative to the model file's
/// folder, and its tokenizer the encoder directory's `tokenizer.json` (`encoder_dir`, else the
/// default: scripts/fetch-embedding-model.sh).
///
/// Errors: a message naming the file that does not parse or load.
pub fn quality_scorer(
    path: &str,
    json: &str,
    encoder_dir: Option<&str>,
) -> Result<triage_core::router::quality::QualityScorer, String> {
    use triage_core::router::quality::{QualityFile, QualityScorer};
    let qf = QualityFile::from_json(json).map_err(|e| format!("router model {path}: {e}"))?;
    let extra = match &qf.static_embed {
        None => None,
        Some(table) => Some(static_extra(path, table, encoder_dir)?),
    };
    QualityScorer::new(qf, extra).map_err(|e| format!("router model {path}: {e}"))
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

/// The router in use, replaceable while requests run: a request takes the current one
/// ([`RouterSlot::get`], an `Arc` clone under a read lock) and keeps it to its end, so a reload
/// never changes a decision half-way and never makes a request wait or fail.
#[derive(Debug, Default)]
pub struct RouterSlot(RwLock<Option<Arc<Router>>>);

impl RouterSlot {
    /// A slot holding `router`.
    pub fn new(router: Option<Arc<Router>>) -> RouterSlot {
        RouterSlot(RwLock::new(router))
    }

    /// The current router (`None`: cheapest capable tier).
    pub fn get(&self) -> Option<Arc<Router>> {
        self.0.read().map(|r| r.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Replaces the router; requests already routed keep theirs.
    pub fn set(&self, router: Option<Arc<Router>>) {
        match self.0.write() {
            Ok(mut g) => *g = router,
            Err(e) => *e.into_inner() = router,
        }
    }
}

/// How often the router's model file is checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// The model file's modification time and length, to notice a change.
fn stamp(path: &str) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Rebuilds the router from `[router]` (the model file as it is now) and puts it in the slot.
/// A file that does not load leaves the current router in place.
///
/// Errors: the message of [`build_router`], already logged.
pub async fn reload(slot: &RouterSlot, auto: &AutoRouting, why: &str) -> Result<(), String> {
    let auto = auto.clone();
    let built = tokio::task::spawn_blocking(move || build_router(&auto)).await.map_err(|e| e.to_string())?;
    match built {
        Ok(r) => {
            slot.set(r);
            metrics::counter!("triage_router_reloads_total", "outcome" => "ok").increment(1);
            tracing::info!(why, "router model reloaded");
            Ok(())
        }
        Err(e) => {
            metrics::counter!("triage_router_reloads_total", "outcome" => "failed").increment(1);
            tracing::error!(why, error = %e, "router model not reloaded; the previous one stays in use");
            Err(e)
        }
    }
}

/// Reloads the router when its model file (`[router] model_file`) changes (checked every
/// [`RELOAD_POLL`]) and on SIGHUP. Write a new model file atomically (to a temporary file, then
/// rename it over the old one, as `triage train` and `triage calibrate` do) so that a reload
/// never reads half a file; one that does not parse is logged and skipped.
pub fn spawn_reloader(slot: Arc<RouterSlot>, auto: AutoRouting) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = match &auto {
            AutoRouting::Scorer { model_file: Some(p), .. } => Some(p.clone()),
            _ => None,
        };
        let mut last = path.as_deref().and_then(stamp);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = tick.tick() => {
                    let Some(p) = &path else { continue };
                    let now = stamp(p);
                    if now.is_some() && now != last {
                        last = now;
                        let _ = reload(&slot, &auto, "the model file changed").await;
                    }
                }
                _ = hangup => {
                    last = path.as_deref().and_then(stamp);
                    let _ = reload(&slot, &auto, "SIGHUP").await;
                }
            }
        }
    })
}

/// The extra features of a quality model that reads a static token embedding: the table
/// `table` (relative to the model file `model_path`'s folder, or absolute) with the tokenizer
/// of the encoder directory (`encoder_dir`, else the default).
///
/// Errors: a message naming the model file and the file that did not load.
pub fn static_extra(
    model_path: &str,
    table: &str,
    encoder_dir: Option<&str>,
) -> Result<triage_core::router::quality::ExtraFeatures, String> {
    let bin = std::path::Path::new(model_path).parent().unwrap_or(std::path::Path::new(".")).join(table);
    let dir = encoder_dir.map_or_else(triage_embed::default_dir, std::path::PathBuf::from);
    let se = triage_embed::StaticEmbedding::load(&bin, &dir.join("tokenizer.json"))
        .map_err(|e| format!("router model {model_path}: static embedding: {e}"))?;
    let se = Arc::new(se);
    Ok(Arc::new(move |rt: &triage_core::router::features::RequestText| se.embed(&rt.text)))
}
