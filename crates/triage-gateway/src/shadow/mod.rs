//! Production evaluation on the request path: which requests are shadowed to the reference model
//! and judged, and the copy of each one's answer. The workers that run the jobs are
//! [`crate::evals`].
//!
//! The request path meets this module at three narrow points, and pays nothing when a request is
//! not sampled:
//! 1. [`Shadow::sample`], after routing: a Bernoulli draw at `sample_rate`; a sampled request
//!    that may be shadowed (not opted out; not flagged by the guard unless the reference and the
//!    judge are both local) gets a [`Ticket`] (a copy of the request, a buffer for the answer)
//!    and a [`Release`] that travels with the response body;
//! 2. the answer's text is copied into the ticket as it is relayed ([`Ticket::observe`]) or
//!    when the whole answer is written ([`Ticket::set_answer`]);
//! 3. [`finished`], from the request's accounting once it ended with a 200 and was served by a
//!    model cheaper than the reference, turns the ticket into a [`Job`] held by the release;
//!    dropping the release (the response body was written to its end) queues the job.
//!
//! So shadow work starts only after the client has its whole answer, and never makes it wait:
//! the queue is bounded (`[evals] queue`), a full queue drops the job and counts it
//! (`triage_evals_skipped_total{reason="queue_full"}`), and `[evals] concurrency` workers run
//! the jobs ([`crate::evals::spawn`], [`crate::evals::worker`]).

pub mod capture;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use triage_core::catalog::{Catalog, EvalSettings, ModelId, TierId};
use triage_core::cost::NanoUsd;
use triage_core::openai::ChatRequest;

pub use capture::{with_release, Ticket};

/// Why a sampled request was not evaluated; the label of `triage_evals_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The key, user, team or role opted out (`evals = false`).
    OptOut,
    /// The guard found sensitive content and the reference or judge is not local.
    Sensitive,
    /// The answer did not come from a model cheaper than the reference (or did not succeed).
    NotCheaper,
    /// The queue of shadow jobs was full.
    QueueFull,
    /// The evaluation's daily budget is spent.
    Budget,
}

impl Skip {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::OptOut => "opt_out",
            Skip::Sensitive => "sensitive",
            Skip::NotCheaper => "not_cheaper",
            Skip::QueueFull => "queue_full",
            Skip::Budget => "budget",
        }
    }

    const ALL: [Skip; 5] = [Skip::OptOut, Skip::Sensitive, Skip::NotCheaper, Skip::QueueFull, Skip::Budget];
}

/// Running totals since start (also exported as metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests drawn by the sample.
    pub sampled: AtomicU64,
    /// Jobs queued.
    pub queued: AtomicU64,
    /// Sampled requests not evaluated, per [`Skip`] (in `Skip::ALL` order).
    skipped: [AtomicU64; 5],
    /// Evaluations stored (any outcome).
    pub stored: AtomicU64,
}

impl Stats {
    /// Sampled requests skipped for `why`.
    pub fn skipped(&self, why: Skip) -> u64 {
        Skip::ALL.iter().position(|s| *s == why).map_or(0, |i| self.skipped[i].load(Ordering::Relaxed))
    }

    /// Counts a sampled request skipped for `why` (and its metric).
    pub fn skip(&self, why: Skip) {
        if let Some(i) = Skip::ALL.iter().position(|s| *s == why) {
            self.skipped[i].fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("triage_evals_skipped_total", "reason" => why.as_str()).increment(1);
    }

    /// The totals as JSON (for `GET /v1/evals`).
    pub fn to_json(&self) -> serde_json::Value {
        let skipped: serde_json::Map<String, serde_json::Value> =
            Skip::ALL.iter().map(|s| (s.as_str().to_owned(), self.skipped(*s).into())).collect();
        serde_json::json!({
            "sampled": self.sampled.load(Ordering::Relaxed),
            "queued": self.queued.load(Ordering::Relaxed),
            "stored": self.stored.load(Ordering::Relaxed),
            "skipped": skipped,
        })
    }
}

/// Who sent an evaluated request and how it was routed: what its evaluation row records.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The request id.
    pub request_id: String,
    /// Arrival, ms since the epoch.
    pub ts_ms: u64,
    /// Key id, user, team.
    pub key_id: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Team.
    pub team: Option<String>,
    /// Role of a `role:NAME` request.
    pub role: Option<String>,
    /// `chat_completions` or `messages`.
    pub endpoint: &'static str,
    /// The `model` field as sent.
    pub requested_model: String,
    /// The route reason (`x-triage-route-reason`).
    pub reason: String,
    /// The model that answered.
    pub model: ModelId,
    /// Its tier.
    pub tier: TierId,
    /// What the answer cost.
    pub cost: NanoUsd,
    /// The router's score, when it scored the request.
    pub score: Option<f64>,
}

/// One shadow evaluation to run.
#[derive(Debug)]
pub struct Job {
    /// The client's request (OpenAI shape).
    pub request: ChatRequest,
    /// The answer the client got, as text.
    pub answer: String,
    /// Who, how routed, at what cost.
    pub meta: Meta,
}

/// Shadow evaluation's queue and totals, held by the gateway's state.
#[derive(Debug)]
pub struct Shadow {
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Totals since start.
    pub stats: Arc<Stats>,
}

/// Carries a finished request's [`Job`] until the response body is dropped (written to its end,
/// or abandoned), then queues it: see the module docs.
#[derive(Debug)]
pub struct Release {
    job: Arc<Mutex<Option<Job>>>,
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(job) = self.job.lock().ok().and_then(|mut j| j.take()) else { return };
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.stats.skip(Skip::QueueFull),
        }
    }
}

impl Shadow {
    /// The queue of `settings.queue` jobs.
    pub fn new(settings: &EvalSettings) -> Shadow {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        Shadow { tx, rx: Mutex::new(Some(rx)), stats: Arc::default() }
    }

    /// The sampling decision for a request, after routing: `None` (nearly always) or a ticket
    /// and its release. `flagged` says the guard found sensitive content; `key`, `user`, `team`,
    /// `role` identify the sender for the opt-outs.
    pub fn sample(
        &self,
        catalog: &Catalog,
        request: &ChatRequest,
        flagged: bool,
        sender: [Option<&str>; 4],
    ) -> Option<(Ticket, Release)> {
        let s = catalog.evals();
        if fastrand::f64() >= s.sample_rate {
            return None;
        }
        self.stats.sampled.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("triage_evals_sampled_total").increment(1);
        let [key, user, team, role] = sender;
        if s.opted_out(key, user, team, role) {
            self.stats.skip(Skip::OptOut);
            return None;
        }
        if flagged {
            let c = catalog;
            let local = |m: Option<ModelId>| m.is_some_and(|m| c.provider_of(m).local);
            if !(local(s.reference) && local(s.judge)) {
                self.stats.skip(Skip::Sensitive);
                return None;
            }
        }
        let job = Arc::new(Mutex::new(None));
        let release = Release { job: job.clone(), tx: self.tx.clone(), stats: self.stats.clone() };
        Some((Ticket::new(request.clone(), job), release))
    }

    /// The queue's receiving end, the first time it is asked for (the workers share it).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Job>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }
}

/// Called once a sampled request has been accounted for: with a 200 served by a model cheaper
/// than the reference, the ticket becomes a job (queued when the response body is dropped);
/// otherwise it is counted as [`Skip::NotCheaper`] and dropped.
pub fn finished(shadow: Option<&Shadow>, c: &Catalog, ticket: Ticket, status: &str, meta: Meta) {
    let Some(shadow) = shadow else { return };
    let Some(reference) = c.evals().reference else { return };
    let cheaper = meta.model != reference
        && (meta.tier < c.models()[reference].tier
            || c.models()[meta.model].price.blended() < c.models()[reference].price.blended());
    if status != "200" || !cheaper {
        shadow.stats.skip(Skip::NotCheaper);
        return;
    }
    ticket.into_job(meta);
}
