//! One shadow evaluation: reserve its cost on the evaluation's own daily budget, ask the
//! reference, ask the judge in both orders, store the result and the ledger rows of its calls.
//!
//! The calls go through the gateway's own dispatch (the model's deployments with retries and
//! circuit breakers, never another model), non-streamed, as ledger rows of kind `eval` with no
//! key, user or team: evaluation spend is never charged to a client's budget. Before the calls,
//! their estimated cost (prompt tokens plus output limits at the models' prices) is reserved on
//! the budget line `evals * daily` with the same atomic reservation every budget uses; a
//! reservation that would pass `max_usd_per_day` skips the job (`triage_evals_skipped_total
//! {reason="budget"}`), and the real cost replaces the reservation after the calls.

use std::time::Instant;

use triage_core::catalog::ModelId;
use triage_core::cost::{NanoUsd, TokenUsage};
use triage_core::evals::{self as rules, Verdict};
use triage_core::openai::ChatRequest;
use triage_core::route::{Candidate, Requirements, Via};
use triage_store::{AttemptRecord, BudgetLine, EvalRecord, EvalTexts, Period, RequestRecord};

use crate::dispatch::{dispatch, Answer, Failed};
use crate::inbound::{Format, Inbound};
use crate::providers::Completion;
use crate::shadow::{Job, Skip};
use crate::state::SharedState;

/// The outcome of one evaluation call.
struct Call {
    /// The answer's text, `None` if the call failed.
    text: Option<String>,
    /// What it cost.
    cost: NanoUsd,
    /// `model@provider:outcome` of each attempt, for the error message.
    attempts: String,
}

/// The evaluation's budget line: scope `evals`, daily, at `max_usd_per_day`.
pub fn budget_line(catalog: &triage_core::catalog::Catalog) -> BudgetLine {
    BudgetLine {
        scope: "evals".into(),
        subject: "*".into(),
        tier: None,
        period: Period::Day,
        limit: catalog.evals().max_usd_per_day,
        soft: 1.0,
    }
}

/// Runs one job to its end (errors are recorded in the result, never raised).
pub async fn run(state: &SharedState, job: Job) {
    let c = &state.catalog;
    let s = c.evals();
    let (Some(reference), Some(judge), Some(store), Some(shadow)) = (s.reference, s.judge, &state.store, &state.evals)
    else {
        return;
    };
    crate::tokens::load_tokenizer().await;
    let reference_req = rules::reference_request(&job.request, &c.models()[reference].id);
    let conversation = rules::conversation_text(&job.request);

    // Reserve the estimated cost on the evaluation's own daily budget.
    let reference_est = crate::budget::estimate(state, reference, &Requirements::of(&reference_req));
    let judge_probe = rules::judge_request(&c.models()[judge].id, &conversation, &job.answer, "", s.judge_max_tokens);
    let judge_req = Requirements::of(&judge_probe);
    let judge_in = judge_req.prompt.estimate() + reference_output_limit(state, reference, &reference_req);
    let judge_est =
        c.models()[judge].price.cost(&TokenUsage { input: judge_in, output: s.judge_max_tokens, ..Default::default() });
    let amount = reference_est.saturating_add(NanoUsd(judge_est.0.saturating_mul(2)));
    let reservation = match store
        .reserve_for(
            &[budget_line(&state.catalog)],
            amount,
            triage_store::now_ms(),
            triage_store::Holder { request_id: &job.meta.request_id, key_id: None },
        )
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(over)) => {
            tracing::debug!(request_id = %job.meta.request_id, used = %over.used, "evaluation budget spent; not evaluated");
            shadow.stats.skip(Skip::Budget);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "evaluation budget store failed; not evaluated");
            shadow.stats.skip(Skip::Budget);
            return;
        }
    };

    let (representation, score) = represent(state, &job).await;
    let id = &job.meta.request_id;
    let reference_call = call(state, reference, reference_req, &format!("{id}#reference")).await;
    let mut record = EvalRecord {
        request_id: id.clone(),
        ts_ms: job.meta.ts_ms,
        key_id: job.meta.key_id.clone(),
        user: job.meta.user.clone(),
        team: job.meta.team.clone(),
        role: job.meta.role.clone(),
        endpoint: job.meta.endpoint.to_owned(),
        requested_model: job.meta.requested_model.clone(),
        reason: rules::reason_kind(&job.meta.requested_model, &job.meta.reason).to_owned(),
        tier: c.tiers()[job.meta.tier].clone(),
        model: c.models()[job.meta.model].id.clone(),
        reference_model: c.models()[reference].id.clone(),
        judge_model: c.models()[judge].id.clone(),
        routed_cost: job.meta.cost,
        reference_cost: reference_call.cost,
        score,
        representation,
        ..Default::default()
    };
    match &reference_call.text {
        None => {
            record.outcome = "error".into();
            record.error = Some(format!("reference call failed: {}", reference_call.attempts));
        }
        Some(reference_text) => {
            let judge_id = &c.models()[judge].id;
            let max = s.judge_max_tokens;
            let first = rules::judge_request(judge_id, &conversation, &job.answer, reference_text, max);
            let second = rules::judge_request(judge_id, &conversation, reference_text, &job.answer, max);
            let (id1, id2) = (format!("{id}#judge-1"), format!("{id}#judge-2"));
            let (a, b) = tokio::join!(call(state, judge, first, &id1), call(state, judge, second, &id2));
            record.judge_cost = a.cost.saturating_add(b.cost);
            match (&a.text, &b.text) {
                (Some(ta), Some(tb)) => {
                    let (va, vb) = (rules::parse_verdict(ta), rules::parse_verdict(tb));
                    record.verdict_first = va.map(|v| v.as_str().to_owned());
                    record.verdict_second = vb.map(|v| v.as_str().to_owned());
                    judge_outcome(&mut record, va, vb);
                }
                _ => {
                    record.outcome = "error".into();
                    record.error = Some(format!("judge call failed: {}; {}", a.attempts, b.attempts));
                }
            }
            if s.store_text {
                record.texts = Some(EvalTexts {
                    prompt: conversation.clone(),
                    answer: job.answer.clone(),
                    reference: reference_text.clone(),
                });
            }
        }
    }
    let spent = record.reference_cost.saturating_add(record.judge_cost);
    if let Err(e) = store.settle(reservation, spent).await {
        tracing::error!(error = %e, "evaluation budget settlement failed");
    }
    metrics::counter!("triage_evals_spend_nanodollars_total").increment(spent.0);
    metrics::counter!("triage_evals_total", "outcome" => record.outcome.clone()).increment(1);
    if record.inconsistent {
        metrics::counter!("triage_evals_inconsistent_total").increment(1);
    }
    match store.insert_eval(&record).await {
        Ok(()) => {
            shadow.stats.stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => tracing::error!(error = %e, request_id = %id, "evaluation result not stored"),
    }
}

/// Sets the outcome from the two verdicts: a missing verdict is a failed judgement, never a
/// verdict; otherwise [`rules::combine`].
fn judge_outcome(record: &mut EvalRecord, first: Option<Verdict>, second: Option<Verdict>) {
    match (first, second) {
        (Some(a), Some(b)) => {
            let j = rules::combine(a, b);
            record.outcome = j.outcome.as_str().to_owned();
            record.inconsistent = j.inconsistent;
        }
        _ => record.outcome = "judge_failed".into(),
    }
}

/// The output tokens reserved for the reference's answer: the request's limit, else the
/// model's default (`[spend] default_output_tokens`, capped at the model's maximum).
fn reference_output_limit(state: &crate::AppState, model: ModelId, req: &ChatRequest) -> u64 {
    let m = &state.catalog.models()[model];
    let default = state.catalog.spend().default_output_tokens;
    req.output_limit().unwrap_or_else(|| m.max_output_tokens.map_or(default, |x| x.min(default)))
}

/// The router's representation and score of the request (the score the router gave it when it
/// routed the request, else its score now); `(None, score)` without a router. An expensive
/// scorer (the embedding encoder) runs on the blocking pool under the scoring permits.
async fn represent(state: &SharedState, job: &Job) -> (Option<String>, Option<f64>) {
    let Some(router) = state.router.get() else { return (None, job.meta.score) };
    let known = job.meta.score;
    let work = {
        let (router, req) = (router.clone(), job.request.clone());
        move || {
            let rep = router.scorer().representation(&req);
            let score = known.or_else(|| Some(f64::from(router.scorer().score(&req))));
            (rep, score)
        }
    };
    let (rep, score) = if router.scorer().is_blocking() {
        let Ok(_permit) = state.scoring_slots.acquire().await else { return (None, known) };
        match tokio::task::spawn_blocking(work).await {
            Ok(x) => x,
            Err(_) => return (None, known),
        }
    } else {
        work()
    };
    (rep.and_then(|r| serde_json::to_string(&r).ok()), score)
}

/// Calls `model` (its own deployments only) with `req`, non-streamed, and writes the call's
/// ledger row (kind `eval`, id `ledger_id`).
async fn call(state: &SharedState, model: ModelId, req: ChatRequest, ledger_id: &str) -> Call {
    let c = &state.catalog;
    let plan: Vec<Candidate> = c.models()[model]
        .deployments
        .iter()
        .enumerate()
        .map(|(i, &d)| Candidate { deployment: d, via: if i == 0 { Via::Primary } else { Via::Deployment } })
        .collect();
    let body_len = serde_json::to_vec(&req).map_or(1024, |b| b.len());
    let prompt_estimate = Requirements::of(&req).prompt.cheap_estimate();
    let mut inbound = Inbound {
        format: Format::OpenAi,
        openai: req,
        anthropic: None,
        stream: false,
        wants_stream_usage: false,
        redacted: None,
        body_len,
        anthropic_headers: Vec::new(),
    };
    let (started, started_ms) = (Instant::now(), triage_store::now_ms());
    let (text, usage, estimated, status, attempts, deployment) =
        match dispatch(state, &mut inbound, plan, |_, _| Vec::new(), started).await {
            Ok(served) => {
                let (text, usage) = match &served.answer {
                    Answer::Complete(Completion::OpenAi(r)) => {
                        (rules::completion_text(r), r.usage.as_ref().map(TokenUsage::from_openai))
                    }
                    Answer::Complete(Completion::Anthropic(r)) => {
                        (rules::anthropic_text(r), Some(TokenUsage::from_anthropic(&r.usage)))
                    }
                    Answer::Stream(_) => (String::new(), None),
                };
                let estimated = usage.is_none();
                let usage = usage.unwrap_or(TokenUsage {
                    input: prompt_estimate,
                    output: (text.len() as u64).div_ceil(4),
                    ..Default::default()
                });
                (Some(text), usage, estimated, "200", served.attempts, Some(served.deployment))
            }
            Err(Failed { attempts, .. }) => (None, TokenUsage::default(), false, "error", attempts, None),
        };
    let cost = c.models()[model].price.cost(&usage);
    let attempts_text = crate::request::attempts_header(&state.catalog, &attempts);
    if let Some(ledger) = &state.ledger {
        let m = &c.models()[model];
        ledger.record(RequestRecord {
            request_id: ledger_id.to_owned(),
            ts_ms: started_ms,
            endpoint: "evals".into(),
            requested_model: m.id.clone(),
            tier: Some(c.tiers()[m.tier].clone()),
            model: Some(m.id.clone()),
            provider: deployment.map(|d| c.providers()[c.deployments()[d].provider].name.clone()),
            route_reason: Some("production evaluation".into()),
            usage,
            cost,
            baseline_cost: cost,
            usage_estimated: estimated,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            status: status.into(),
            attempts: attempts
                .iter()
                .map(|a| {
                    let d = &c.deployments()[a.deployment];
                    AttemptRecord {
                        model: c.models()[d.model].id.clone(),
                        provider: c.providers()[d.provider].name.clone(),
                        outcome: a.outcome.clone(),
                        latency_ms: a.latency.as_secs_f64() * 1000.0,
                    }
                })
                .collect(),
            kind: "eval".into(),
            ..Default::default()
        });
    }
    Call { text, cost, attempts: attempts_text }
}
