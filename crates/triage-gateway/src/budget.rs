//! What a request may spend: the budgets that apply ([`budget_lines`]: config budgets of the
//! key's user and team and global ones, the key's own daily and monthly budgets, per-tier
//! allowances), the request's estimated cost ([`estimate`]: prompt tokens plus the output limit,
//! at the model's prices) reserved atomically ([`admit`]); past a budget's soft limit, or over a
//! tier allowance, the request steps down to the next cheaper capable tier when the client let
//! Triage choose; over a hard limit it is refused (429 `budget_exceeded`, with the limit and the
//! reset time). The reservation is one transaction over every line, owned by this process's
//! lease, and a guard: a request future dropped at any point (the client hung up) releases it
//! (`triage_store::Reservation`); [`crate::accounting`] settles it with the real cost.

use std::time::Duration;

use triage_core::catalog::{BudgetPeriod, BudgetScope, ModelId, TierId};
use triage_core::cost::{NanoUsd, TokenUsage};
use triage_core::route::{self, Requirements, RouteDecision, Target};
use triage_store::{BudgetLine, Holder, KeyRecord, Period, Reservation};

use crate::error::GatewayError;
use crate::state::AppState;

fn period(p: BudgetPeriod) -> Period {
    match p {
        BudgetPeriod::Day => Period::Day,
        BudgetPeriod::Month => Period::Month,
    }
}

/// The budgets that apply to a request of `key` routed to `tier`.
pub fn budget_lines(state: &AppState, key: Option<&KeyRecord>, tier: TierId) -> Vec<BudgetLine> {
    let c = &state.catalog;
    let soft = c.spend().soft_limit;
    let mut lines = Vec::new();
    for b in c.budgets() {
        if b.tier.is_some_and(|t| t != tier) {
            continue;
        }
        let (scope, subject) = match &b.scope {
            BudgetScope::Global => ("global", "*".to_owned()),
            BudgetScope::User(u) if key.is_some_and(|k| &k.user == u) => ("user", u.clone()),
            BudgetScope::Team(t) if key.is_some_and(|k| &k.team == t) => ("team", t.clone()),
            _ => continue,
        };
        lines.push(BudgetLine {
            scope: scope.into(),
            subject,
            tier: b.tier.map(|t| c.tiers()[t].clone()),
            period: period(b.period),
            limit: b.limit,
            soft,
        });
    }
    if let Some(k) = key {
        for (p, limit) in [(Period::Day, k.budget_day), (Period::Month, k.budget_month)] {
            if let Some(limit) = limit {
                lines.push(BudgetLine {
                    scope: "key".into(),
                    subject: k.id.clone(),
                    tier: None,
                    period: p,
                    limit,
                    soft,
                });
            }
        }
    }
    lines
}

/// The cost to reserve for `model`: prompt tokens plus the output limit (or the configured
/// default, capped at the model's maximum output), at the model's prices.
pub fn estimate(state: &AppState, model: ModelId, req: &Requirements<'_>) -> NanoUsd {
    let m = &state.catalog.models()[model];
    let default_out = state.catalog.spend().default_output_tokens;
    let out = if req.output_tokens > 0 {
        req.output_tokens
    } else {
        m.max_output_tokens.map_or(default_out, |x| x.min(default_out))
    };
    m.price.cost(&TokenUsage { input: req.prompt.estimate(), output: out, ..Default::default() })
}

/// The next cheaper tier with a capable, allowed, available model below `tier`.
fn step_down(
    state: &AppState,
    req: &Requirements<'_>,
    tier: TierId,
    available: &impl Fn(ModelId) -> bool,
) -> Option<RouteDecision> {
    (0..tier).rev().find_map(|t| route::select(&state.catalog, &Target::Tier(t), req, available).ok())
}

/// Applies budgets to a routed request (`request_id` owns the reservation); see the module docs.
/// Returns the (possibly stepped-down) decision and the reservation to settle.
///
/// Errors: [`GatewayError::BudgetExceeded`].
pub async fn admit(
    state: &AppState,
    request_id: &str,
    key: Option<&KeyRecord>,
    target: &Target,
    mut decision: RouteDecision,
    req: &Requirements<'_>,
    available: &impl Fn(ModelId) -> bool,
) -> Result<(RouteDecision, Reservation, bool), GatewayError> {
    let Some(store) = &state.store else { return Ok((decision, Reservation::none(), false)) };
    let chooses = !matches!(target, Target::Model { .. });
    let mut stepped = false;
    loop {
        let lines = budget_lines(state, key, decision.tier);
        if lines.is_empty() {
            return Ok((decision, Reservation::none(), stepped));
        }
        // The reservation uses the exact prompt count.
        crate::tokens::count_prompt(&state.count_slots, &req.prompt).await;
        let amount = estimate(state, decision.model, req);
        let now = triage_store::now_ms();
        let db = |e: triage_store::StoreError| {
            tracing::error!(error = %e, "budget store failed");
            GatewayError::BudgetStore
        };
        if chooses {
            let mut soft_hit = None;
            for line in &lines {
                let (spent, reserved) = store.budget_used(line, now).await.map_err(db)?;
                let used = spent.0 + reserved.0 + amount.0;
                if (used as f64) > line.soft * line.limit.0 as f64 {
                    soft_hit = Some((line.describe(), used as f64 / line.limit.0.max(1) as f64));
                    break;
                }
            }
            if let Some((what, frac)) = soft_hit {
                if let Some(mut d) = step_down(state, req, decision.tier, available) {
                    d.reason = format!(
                        "{}; {what} at {:.0} % (soft limit): stepped down to tier {}",
                        decision.reason,
                        frac * 100.0,
                        state.catalog.tiers()[d.tier]
                    );
                    decision = d;
                    stepped = true;
                    continue;
                }
            }
        }
        let holder = Holder { request_id, key_id: key.map(|k| k.id.as_str()) };
        match store.reserve_for(&lines, amount, now, holder).await.map_err(db)? {
            Ok(r) => return Ok((decision, r, stepped)),
            Err(over) => {
                if chooses && over.line.tier.is_some() {
                    if let Some(mut d) = step_down(state, req, decision.tier, available) {
                        d.reason = format!(
                            "{}; {} exhausted: stepped down to tier {}",
                            decision.reason,
                            over.line.describe(),
                            state.catalog.tiers()[d.tier]
                        );
                        decision = d;
                        stepped = true;
                        continue;
                    }
                }
                let wait = Some(Duration::from_millis(over.resets_in_ms));
                return Err(GatewayError::BudgetExceeded {
                    message: format!(
                        "{} is exhausted (${} used; this request needs about ${amount}); it resets at {}",
                        over.line.describe(),
                        over.used,
                        over.resets_at
                    ),
                    retry_after: wait,
                });
            }
        }
    }
}
