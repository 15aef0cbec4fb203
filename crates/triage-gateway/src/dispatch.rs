//! Dispatch: try a request's plan of deployments in order, with retries, circuit breakers,
//! `Retry-After` cooldowns and typed fallbacks, until one answers.
//!
//! What triggers what (the fallback issue's table):
//! - retry the same deployment, then fall back: connect errors, resets, timeouts, 408, 429, 500,
//!   502, 503, 504, 529, and errors or early ends of a stream before its first content token;
//! - fall back without retrying: 401, 402, 403, and quota or credit exhaustion;
//! - neither (they would fail everywhere): other 4xx caused by the request itself;
//! - typed: a context-length error goes to `context_window_fallback` (a 4xx or 500 in any
//!   dialect's wording, see [`crate::error::is_context_window_error`], or an error event inside a 200 stream;
//!   it never counts against the circuit breaker), a content-policy 4xx or a
//!   `finish_reason: "content_filter"` answer with no content goes to `content_policy_fallback`.
//!   Content-policy refusals do not use the generic `fallback` list (routing around a safety
//!   refusal must be configured explicitly).
//!
//! A `Retry-After` (or `retry-after-ms`) is honoured: the deployment is skipped until it passes;
//! when another deployment is ready the request moves on at once, otherwise the gateway waits it
//! out if it is at most `retry.max_retry_wait`. A timeout also moves on at once when another
//! deployment is ready (it has already cost a whole timeout); other retryable failures are
//! retried on the same deployment first, with exponential backoff and jitter. Streams are held back until their first content
//! token, so a stream that fails before it is retried or failed over without the client seeing
//! anything. Client cancellations drop this future: they never count as provider failures.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use triage_core::anthropic::Event;
use triage_core::breaker::{Admission, BreakerState};
use triage_core::catalog::{DeploymentId, ProviderKind};
use triage_core::retry;
use triage_core::route::{Candidate, TypedFallback};

use crate::error::{is_context_window_error, GatewayError, CONTEXT_WINDOW_WORDINGS};
use crate::inbound::Inbound;
use crate::providers::{Batch, CallError, ChunkStream, Completion, Reply, StreamItem, UpstreamError};
use crate::request::Attempt;
use crate::state::{AppState, Unavailable};

/// A stream whose opening events were held back until its first content token.
pub struct PrimedStream {
    /// The rest of the upstream stream.
    pub stream: ChunkStream,
    /// Items read so far, to send first.
    pub held: Vec<StreamItem>,
    /// How the last read ended, if the stream already ended while priming.
    pub ended: Option<Batch>,
}

/// A successful answer.
pub enum Answer {
    /// A whole answer.
    Complete(Completion),
    /// A primed stream.
    Stream(PrimedStream),
}

/// The outcome of [`dispatch`] when some deployment answered.
pub struct Served {
    /// The answer.
    pub answer: Answer,
    /// The deployment that answered.
    pub deployment: DeploymentId,
    /// Every attempt, the successful one last.
    pub attempts: Vec<Attempt>,
}

/// The outcome of [`dispatch`] when none did.
pub struct Failed {
    /// The error for the client (the last upstream error, or why nothing could be called).
    pub error: GatewayError,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
}

/// How a failed attempt is handled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    /// Retry the same deployment (after backoff or `retry_after`), then fall back.
    Retryable { retry_after: Option<Duration>, provider_fault: bool },
    /// Skip this deployment for `cooldown`, move to the next one; `auth`: the upstream refused
    /// Triage's provider key (quarantined for `breaker.auth_quarantine`).
    NextDeployment { cooldown: Option<Duration>, auth: bool },
    /// Switch to the typed fallback list.
    Typed(TypedFallback),
    /// Give up: the request itself is at fault.
    Fatal,
}

enum AttemptError {
    Call(CallError),
    /// The request cannot be expressed for this deployment's provider (a 400).
    Request(GatewayError),
    /// A 200 answer refused on content policy (no content, `finish_reason: "content_filter"`),
    /// kept so it can be served if no content-policy fallback exists.
    Refused(Answer),
}

fn retry_after_of(headers_value: Option<&http::HeaderValue>, ms_value: Option<&http::HeaderValue>) -> Option<Duration> {
    if let Some(ms) = ms_value.and_then(|v| v.to_str().ok()).and_then(retry::parse_retry_after_ms) {
        return Some(ms);
    }
    headers_value.and_then(|v| v.to_str().ok()).and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
}

fn contains_any(text: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| text.contains(n))
}

/// Classifies an upstream status and body.
fn classify_status(status: u16, body: &[u8], retry_after: Option<Duration>) -> Class {
    let text = String::from_utf8_lossy(&body[..body.len().min(8192)]).to_lowercase();
    let quota =
        contains_any(&text, &["insufficient_quota", "exceeded your current quota", "credit balance", "billing"]);
    // Some servers (llama.cpp's older builds, Ollama) answer an over-long prompt with a 500.
    if matches!(status, 400..=499 | 500) && contains_any(&text, CONTEXT_WINDOW_WORDINGS) && status != 429 {
        return Class::Typed(TypedFallback::ContextWindow);
    }
    match status {
        429 if quota => Class::NextDeployment { cooldown: retry_after.or(Some(Duration::from_secs(60))), auth: false },
        429 => Class::Retryable { retry_after, provider_fault: false },
        408 | 500 | 502 | 503 | 504 | 529 => Class::Retryable { retry_after, provider_fault: true },
        402 => Class::NextDeployment { cooldown: retry_after.or(Some(Duration::from_secs(60))), auth: false },
        401 | 403 => Class::NextDeployment { cooldown: retry_after, auth: true },
        s if (400..500).contains(&s) => {
            if contains_any(
                &text,
                &[
                    "content_filter",
                    "content_policy",
                    "content management policy",
                    "responsibleaipolicyviolation",
                    "safety system",
                ],
            ) {
                Class::Typed(TypedFallback::ContentPolicy)
            } else {
                Class::Fatal
            }
        }
        _ => Class::Retryable { retry_after, provider_fault: true },
    }
}

fn classify(e: &AttemptError) -> Class {
    match e {
        AttemptError::Request(_) => Class::Fatal,
        AttemptError::Refused(_) => Class::Typed(TypedFallback::ContentPolicy),
        AttemptError::Call(CallError::Status { status, body, retry_after, retry_after_ms }) => {
            classify_status(status.as_u16(), body, retry_after_of(retry_after.as_ref(), retry_after_ms.as_ref()))
        }
        // A full local engine is no fault of the provider: go to the next deployment at once.
        AttemptError::Call(CallError::Failed(UpstreamError::Busy(_))) => {
            Class::NextDeployment { cooldown: None, auth: false }
        }
        // A dead engine worker is restarted by its supervisor: no point retrying it now.
        AttemptError::Call(CallError::Failed(UpstreamError::Crashed(_))) => {
            Class::NextDeployment { cooldown: None, auth: false }
        }
        // An error event inside a 200 stream saying the prompt is too long (vLLM, proxies).
        AttemptError::Call(CallError::Failed(UpstreamError::InBand(e))) if is_context_window_error(&e.message) => {
            Class::Typed(TypedFallback::ContextWindow)
        }
        AttemptError::Call(CallError::Failed(_)) => Class::Retryable { retry_after: None, provider_fault: true },
    }
}

fn outcome_of(e: &AttemptError) -> String {
    match e {
        AttemptError::Request(_) => "invalid_for_provider".to_owned(),
        AttemptError::Refused(_) => "content_filter".to_owned(),
        AttemptError::Call(CallError::Status { status, .. }) => status.as_u16().to_string(),
        AttemptError::Call(CallError::Failed(f)) => match f {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Io(_) => "reset",
            UpstreamError::Protocol(_) => "protocol_error",
            UpstreamError::InBand(_) => "in_band_error",
            UpstreamError::Truncated => "truncated",
            UpstreamError::Busy(_) => "busy",
            UpstreamError::Crashed(_) => "crashed",
        }
        .to_owned(),
    }
}

fn to_gateway_error(e: AttemptError, provider: &str) -> GatewayError {
    match e {
        AttemptError::Request(g) => g,
        AttemptError::Call(CallError::Status { status, body, retry_after, .. }) => {
            GatewayError::UpstreamStatus { provider: provider.to_owned(), status, body, retry_after }
        }
        AttemptError::Call(CallError::Failed(source)) => {
            GatewayError::Upstream { provider: provider.to_owned(), source }
        }
        AttemptError::Refused(_) => GatewayError::Upstream {
            provider: provider.to_owned(),
            source: UpstreamError::Protocol("refused on content policy".into()),
        },
    }
}

/// True when an item commits the answer: it carries content, a tool call, a refusal or
/// reasoning text, or a finish other than a content-filter refusal.
fn commits(item: &StreamItem) -> bool {
    match item {
        StreamItem::Done => true,
        StreamItem::Chunk(c) => c.choices.iter().any(|ch| {
            ch.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || ch.delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                || !ch.delta.extra.is_empty()
                || ch.finish_reason.as_deref().is_some_and(|f| f != "content_filter")
        }),
        StreamItem::Event(e) => match e {
            Event::ContentBlockStart { content_block, .. } => {
                matches!(content_block, triage_core::anthropic::Block::ToolUse { .. })
            }
            Event::ContentBlockDelta { delta, .. } => ["text", "partial_json", "thinking"]
                .iter()
                .any(|k| delta.get(*k).and_then(|v| v.as_str()).is_some_and(|t| !t.is_empty())),
            Event::MessageDelta { delta, .. } => {
                delta.get("stop_reason").and_then(|v| v.as_str()).is_some_and(|r| r != "refusal")
            }
            Event::MessageStop => true,
            _ => false,
        },
    }
}

fn is_policy_refusal(items: &[StreamItem]) -> bool {
    items.iter().any(|i| match i {
        StreamItem::Chunk(c) => c.choices.iter().any(|ch| ch.finish_reason.as_deref() == Some("content_filter")),
        StreamItem::Event(Event::MessageDelta { delta, .. }) => {
            delta.get("stop_reason").and_then(|v| v.as_str()) == Some("refusal")
        }
        _ => false,
    })
}

/// Reads a stream until its first committing item; a failure before that is the attempt's.
async fn prime(mut stream: ChunkStream) -> Result<Answer, AttemptError> {
    let mut held = Vec::new();
    loop {
        let start = held.len();
        let batch = stream.next_batch(&mut held).await;
        if held[start..].iter().any(commits) {
            let ended = if matches!(batch, Batch::More) { None } else { Some(batch) };
            return Ok(Answer::Stream(PrimedStream { stream, held, ended }));
        }
        match batch {
            Batch::More => continue,
            Batch::End | Batch::Failed(_) if is_policy_refusal(&held) => {
                let ended = Some(batch);
                return Err(AttemptError::Refused(Answer::Stream(PrimedStream { stream, held, ended })));
            }
            Batch::End => return Err(AttemptError::Call(CallError::Failed(UpstreamError::Truncated))),
            Batch::Failed(e) => return Err(AttemptError::Call(CallError::Failed(e))),
        }
    }
}

async fn call(state: &AppState, d: DeploymentId, inbound: &mut Inbound) -> Result<Answer, AttemptError> {
    let dep = &state.catalog.deployments()[d];
    let provider = &state.catalog.providers()[dep.provider];
    let model = &state.catalog.models()[dep.model];
    let body =
        inbound.body_for(provider.kind, &dep.upstream_model, model, provider.local).map_err(AttemptError::Request)?;
    // The client's provider headers (`anthropic-beta`) go to Anthropic upstreams only.
    let extra: &[(http::HeaderName, http::HeaderValue)] =
        if provider.kind == ProviderKind::Anthropic { &inbound.anthropic_headers } else { &[] };
    match state.providers[dep.provider].call_with(body, inbound.stream, extra).await.map_err(AttemptError::Call)? {
        Reply::Complete(c) => {
            if is_refused(&c) {
                Err(AttemptError::Refused(Answer::Complete(c)))
            } else {
                Ok(Answer::Complete(c))
            }
        }
        Reply::Stream(s) => prime(s).await,
    }
}

/// A whole answer refused on content policy: no content and `content_filter` / `refusal`.
fn is_refused(c: &Completion) -> bool {
    match c {
        Completion::OpenAi(c) => {
            !c.choices.is_empty()
                && c.choices.iter().all(|ch| {
                    ch.finish_reason.as_deref() == Some("content_filter")
                        && ch.message.content.as_deref().is_none_or(str::is_empty)
                        && ch.message.tool_calls.as_ref().is_none_or(Vec::is_empty)
                })
        }
        Completion::Anthropic(r) => {
            r.stop_reason.as_deref() == Some("refusal")
                && r.content
                    .iter()
                    .all(|b| matches!(b, triage_core::anthropic::Block::Text { text, .. } if text.is_empty()))
        }
    }
}

/// Releases a half-open probe if the attempt's future is dropped (client cancellation).
struct ProbeGuard<'a> {
    state: &'a AppState,
    deployment: DeploymentId,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.release_probe(self.deployment);
        }
    }
}

/// Tries `plan` in order; see the module docs. Each attempt sends the request in its
/// provider's format, with that deployment's upstream model name. `typed(kind,
/// failed_deployment)` gives the typed fallback plan.
pub async fn dispatch(
    state: &AppState,
    inbound: &mut Inbound,
    plan: Vec<Candidate>,
    typed: impl Fn(TypedFallback, DeploymentId) -> Vec<Candidate>,
    started: Instant,
) -> Result<Served, Failed> {
    let policy = *state.catalog.retry();
    let deadline = started + policy.deadline;
    let mut queue: VecDeque<Candidate> = plan.into();
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut last: Option<(AttemptError, DeploymentId)> = None;
    let mut typed_used = false;
    let mut shortest_wait: Option<Duration> = None;
    // Candidates skipped because they were only ejected (open breaker, cooldown) while another
    // could serve: tried last, so the last deployment able to serve is never removed.
    let mut deferred: VecDeque<Candidate> = VecDeque::new();

    'plan: loop {
        let (cand, last_resort) = match queue.pop_front() {
            Some(c) => (c, false),
            None => match deferred.pop_front() {
                Some(c) => (c, true),
                None => break,
            },
        };
        let d = cand.deployment;
        let dep = &state.catalog.deployments()[d];
        let model_id = &state.catalog.models()[dep.model].id;
        let provider_name = &state.catalog.providers()[dep.provider].name;
        if let Some(why) = state.deployment_unavailable(d, Instant::now()) {
            // A provider that only failed its reachability probe (or was not up yet at start) is
            // no outage either: tried last, when nothing else served (issue 19).
            let probe_only = why == Unavailable::Unreachable && state.providers[dep.provider].local_state().is_none();
            let ejected = probe_only || state.only_ejected(d, Instant::now());
            let wait = match why {
                Unavailable::BreakerOpen(w) | Unavailable::CoolingDown(w) => Some(w),
                _ => None,
            };
            if ejected && !last_resort {
                deferred.push_back(cand);
                attempts.push(Attempt { deployment: d, outcome: why.as_str().to_owned(), latency: Duration::ZERO });
                continue;
            }
            // The last resort: an open breaker lets the call through; a cooldown is waited out
            // when it is short enough (`retry.max_retry_wait`) and within the deadline.
            let cooling = match why {
                Unavailable::CoolingDown(w) => Some(w),
                _ => None,
            };
            let too_long = cooling.is_some_and(|w| w > policy.max_retry_wait || Instant::now() + w > deadline);
            if !ejected || too_long {
                if let Some(w) = wait {
                    shortest_wait = Some(shortest_wait.map_or(w, |s| s.min(w)));
                }
                if !last_resort {
                    attempts.push(Attempt { deployment: d, outcome: why.as_str().to_owned(), latency: Duration::ZERO });
                }
                continue;
            }
            if let Some(w) = cooling {
                tokio::time::sleep(w).await;
            }
        }
        if !attempts.is_empty() {
            metrics::counter!("triage_fallbacks_total", "to_model" => model_id.clone(), "via" => cand.via.as_str())
                .increment(1);
        }
        let mut retries = 0u32;
        loop {
            let admission = state.admit(d, Instant::now(), last_resort);
            if admission == Admission::Refused {
                attempts.push(Attempt { deployment: d, outcome: "breaker_open".into(), latency: Duration::ZERO });
                continue 'plan;
            }
            let mut guard = ProbeGuard { state, deployment: d, armed: admission == Admission::Probe };
            let t = Instant::now();
            let result = call(state, d, inbound).await;
            let latency = t.elapsed();
            guard.armed = false;
            match state.instruments.upstream(&state.catalog, d) {
                Some(h) => h.record(latency.as_secs_f64()),
                None => metrics::histogram!("triage_upstream_duration_seconds", "provider" => provider_name.clone(), "model" => model_id.clone())
                    .record(latency.as_secs_f64()),
            }
            let err = match result {
                Ok(answer) => {
                    state.record_success(d, latency);
                    match state.instruments.succeeded(&state.catalog, d) {
                        Some(k) => k.increment(1),
                        None => metrics::counter!("triage_attempts_total", "model" => model_id.clone(), "provider" => provider_name.clone(), "outcome" => "200").increment(1),
                    }
                    attempts.push(Attempt { deployment: d, outcome: "200".into(), latency });
                    return Ok(Served { answer, deployment: d, attempts });
                }
                Err(e) => e,
            };
            let outcome = outcome_of(&err);
            metrics::counter!("triage_attempts_total", "model" => model_id.clone(), "provider" => provider_name.clone(), "outcome" => outcome.clone()).increment(1);
            state.summary.failed_attempt();
            tracing::debug!(model = %model_id, provider = %provider_name, outcome = %outcome, "upstream attempt failed");
            attempts.push(Attempt { deployment: d, outcome, latency });
            let class = classify(&err);
            let timed_out = matches!(err, AttemptError::Call(CallError::Failed(UpstreamError::Timeout(_))));
            match class {
                Class::Fatal => {
                    last = Some((err, d));
                    break 'plan;
                }
                Class::Typed(kind) => {
                    if admission == Admission::Probe {
                        state.release_probe(d);
                    }
                    let next = if typed_used { Vec::new() } else { typed(kind, d) };
                    last = Some((err, d));
                    if next.is_empty() {
                        break 'plan;
                    }
                    typed_used = true;
                    queue = next.into();
                    deferred.clear();
                    continue 'plan;
                }
                Class::NextDeployment { cooldown, auth } => {
                    if admission == Admission::Probe {
                        state.release_probe(d);
                    }
                    if auth {
                        if let AttemptError::Call(CallError::Status { status, .. }) = &err {
                            state.quarantine_auth(d, status.as_u16());
                        }
                    }
                    if let Some(c) = cooldown {
                        state.cool_down(d, c);
                    }
                    last = Some((err, d));
                    continue 'plan;
                }
                Class::Retryable { retry_after, provider_fault } => {
                    if provider_fault {
                        state.record_failure(d);
                    } else if admission == Admission::Probe {
                        state.release_probe(d);
                    }
                    if let Some(ra) = retry_after {
                        state.cool_down(d, ra);
                    }
                    last = Some((err, d));
                    if retries >= policy.num_retries {
                        continue 'plan;
                    }
                    // A rate limit or a timeout already says this deployment is slow to come back:
                    // when another one is ready, go there at once instead of waiting here.
                    let other_ready =
                        || queue.iter().any(|c| state.deployment_unavailable(c.deployment, Instant::now()).is_none());
                    // Left for another deployment with retries to spare, this one comes back as
                    // a last resort (its cooldown waited out, if short) should the others fail.
                    let wait = match retry_after {
                        Some(ra) if ra > policy.max_retry_wait => continue 'plan,
                        Some(_) if other_ready() => {
                            if !last_resort {
                                deferred.push_back(cand);
                            }
                            continue 'plan;
                        }
                        Some(ra) => ra,
                        None if timed_out && other_ready() => {
                            if !last_resort {
                                deferred.push_back(cand);
                            }
                            continue 'plan;
                        }
                        None => retry::backoff(&policy, retries, fastrand::f64()),
                    };
                    let opened = state.breaker_state(d, Instant::now()) == BreakerState::Open;
                    if opened && !last_resort {
                        deferred.push_back(cand);
                        continue 'plan;
                    }
                    if opened || Instant::now() + wait > deadline {
                        continue 'plan;
                    }
                    metrics::counter!("triage_retries_total", "model" => model_id.clone(), "provider" => provider_name.clone()).increment(1);
                    tokio::time::sleep(wait).await;
                    retries += 1;
                }
            }
        }
    }

    let error = match last {
        Some((AttemptError::Refused(answer), d)) => {
            // No content-policy fallback: the refusal is the answer.
            return Ok(Served { answer, deployment: d, attempts });
        }
        Some((err, d)) => {
            let provider = &state.catalog.providers()[state.catalog.deployments()[d].provider].name;
            to_gateway_error(err, provider)
        }
        None => {
            let cooling = attempts.iter().any(|a| a.outcome == Unavailable::CoolingDown(Duration::ZERO).as_str());
            GatewayError::NothingAvailable { retry_after: shortest_wait, rate_limited: cooling }
        }
    };
    Err(Failed { error, attempts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_follow_the_table() {
        let retryable = |s| matches!(classify_status(s, b"{}", None), Class::Retryable { .. });
        for s in [408, 429, 500, 502, 503, 504, 529] {
            assert!(retryable(s), "{s}");
        }
        for s in [401, 402, 403] {
            assert!(matches!(classify_status(s, b"{}", None), Class::NextDeployment { .. }), "{s}");
        }
        assert_eq!(classify_status(401, b"{}", None), Class::NextDeployment { cooldown: None, auth: true });
        for s in [400, 404, 413, 422] {
            assert_eq!(classify_status(s, b"{\"error\":{\"message\":\"bad\"}}", None), Class::Fatal, "{s}");
        }
        let quota = br#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#;
        assert!(matches!(classify_status(429, quota, None), Class::NextDeployment { .. }));
        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#;
        assert_eq!(classify_status(400, ctx, None), Class::Typed(TypedFallback::ContextWindow));
        let policy = br#"{"error":{"message":"The response was filtered due to the prompt triggering the content management policy.","code":"content_filter"}}"#;
        assert_eq!(classify_status(400, policy, None), Class::Typed(TypedFallback::ContentPolicy));
        assert_eq!(
            classify_status(429, b"{}", Some(Duration::from_secs(3))),
            Class::Retryable { retry_after: Some(Duration::from_secs(3)), provider_fault: false }
        );
    }
}
