//! Choosing a model from predicted qualities (issue 14), and keeping a conversation on the
//! tier it reached (sticky routing).
//!
//! With a per-model quality predictor q̂(m, p), routing is a choice among the capable, available
//! models, each with its predicted quality and its cost:
//!
//! - [`Rule::Margin`]`(δ)`: the cheapest model whose predicted quality is within `δ` of the best
//!   predicted quality (`q̂ ≥ max q̂ − δ`). `δ = 0` picks a best model (the cheapest among equals);
//!   a larger `δ` trades quality for cost.
//! - [`Rule::Lambda`]`(λ)`: the model maximising `q̂ − λ·cost`. `λ = 0` picks a best model;
//!   a larger `λ` prefers cheaper ones.
//!
//! `triage calibrate` sets `δ` or `λ` for a target cost or quality share on a sample.
//!
//! Sticky routing: a short follow-up after a hard turn ("now commit it") scores low on its own,
//! and routing it to the cheapest tier mid-task breaks the task. [`StickyRoutes`] remembers,
//! per conversation (keyed by [`conversation_key`]: a hash of the system prompt and the first
//! user message, the part of a conversation every later request repeats), the highest tier
//! routed so far, and a later request of that conversation never goes below it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::openai::{ChatRequest, Role};

/// How to choose among candidates (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Cheapest with predicted quality ≥ best − margin.
    Margin(f32),
    /// Maximise predicted quality − λ · cost (cost in the caller's unit, e.g. USD per million tokens).
    Lambda(f32),
}

/// One capable, available model: its predicted quality and its cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Predicted quality (any unit, higher is better).
    pub quality: f32,
    /// Cost (any unit, lower is cheaper; the same unit for every candidate).
    pub cost: f64,
}

/// The index of the chosen candidate under `rule`; `None` for no candidates. Ties go to the
/// cheaper candidate, then the higher predicted quality, then the lower index. Non-finite
/// qualities never win over finite ones.
pub fn choose(candidates: &[Candidate], rule: Rule) -> Option<usize> {
    let q = |c: &Candidate| if c.quality.is_finite() { c.quality } else { f32::NEG_INFINITY };
    let better_tie = |a: &Candidate, b: &Candidate| {
        a.cost.total_cmp(&b.cost).then_with(|| q(b).total_cmp(&q(a))) // cheaper first, then higher quality
    };
    match rule {
        Rule::Margin(margin) => {
            let best = candidates.iter().map(q).fold(f32::NEG_INFINITY, f32::max);
            let floor = best - margin.max(0.0);
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| q(c) >= floor)
                .min_by(|(i, a), (j, b)| better_tie(a, b).then(i.cmp(j)))
                .map(|(i, _)| i)
        }
        Rule::Lambda(lambda) => {
            let value = |c: &Candidate| f64::from(q(c)) - f64::from(lambda.max(0.0)) * c.cost;
            candidates
                .iter()
                .enumerate()
                .min_by(|(i, a), (j, b)| value(b).total_cmp(&value(a)).then(better_tie(a, b)).then(i.cmp(j)))
                .map(|(i, _)| i)
        }
    }
}

/// The key of the conversation `req` belongs to: an FNV-1a hash of its system/developer
/// messages and its first user message (roles and texts). Every later request of the same
/// conversation repeats these, so they share the key. `None` without a user message.
pub fn conversation_key(req: &ChatRequest) -> Option<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut seen_user = false;
    for m in &req.messages {
        let tag: &[u8] = match m.role {
            Role::System | Role::Developer => b"\x01system",
            Role::User if !seen_user => b"\x01user",
            _ => continue,
        };
        eat(tag);
        if let Some(c) = m.content() {
            c.for_each_text(|t| eat(t.as_bytes()));
        }
        if m.role == Role::User {
            seen_user = true;
        }
    }
    seen_user.then_some(h)
}

/// Per-conversation memory of the highest tier routed (see the module docs). Bounded: entries
/// expire `ttl` after their last use, and at `capacity` the least recently used go first.
#[derive(Debug)]
pub struct StickyRoutes {
    entries: Mutex<HashMap<u64, (usize, Instant)>>,
    ttl: Duration,
    capacity: usize,
}

impl StickyRoutes {
    /// A memory of at most `capacity` conversations (at least 1), each forgotten `ttl` after
    /// its last request.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        StickyRoutes { entries: Mutex::new(HashMap::new()), ttl, capacity: capacity.max(1) }
    }

    /// The tier for a request of conversation `key` whose own decision is `tier`, at time
    /// `now`. A `follow_up` (the request carries earlier assistant turns) gets the higher of
    /// `tier` and the highest tier this conversation was routed to before (within the ttl); a
    /// first turn starts the conversation afresh with its own `tier` (two independent requests
    /// with the same text are not one conversation). The result is remembered. Returns
    /// `(tier, sticky)` where `sticky` says the remembered tier overrode a lower decision.
    pub fn apply(&self, key: u64, tier: usize, follow_up: bool, now: Instant) -> (usize, bool) {
        let Ok(mut map) = self.entries.lock() else { return (tier, false) };
        let prev =
            map.get(&key).filter(|(_, t)| follow_up && now.saturating_duration_since(*t) <= self.ttl).map(|e| e.0);
        let out = prev.map_or(tier, |p| p.max(tier));
        if !map.contains_key(&key) && map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, (_, t)| now.saturating_duration_since(*t) <= ttl);
            if map.len() >= self.capacity {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(key, (out, now));
        (out, prev.is_some_and(|p| p > tier))
    }

    /// Number of conversations remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    /// Whether no conversation is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(quality: f32, cost: f64) -> Candidate {
        Candidate { quality, cost }
    }

    #[test]
    fn a_model_that_is_always_best_is_picked_when_it_is_cheapest() {
        let cands = [c(0.9, 1.0), c(0.5, 2.0), c(0.7, 30.0)];
        for m in [0.0, 0.1, 0.5, 10.0] {
            assert_eq!(choose(&cands, Rule::Margin(m)), Some(0), "margin {m}");
        }
        for l in [0.0, 0.01, 1.0, 100.0] {
            assert_eq!(choose(&cands, Rule::Lambda(l)), Some(0), "lambda {l}");
        }
    }

    #[test]
    fn the_margin_trades_quality_for_cost_as_documented() {
        // cheap 0.60 ($0.2), mid 0.75 ($1), frontier 0.80 ($10)
        let cands = [c(0.60, 0.2), c(0.75, 1.0), c(0.80, 10.0)];
        assert_eq!(choose(&cands, Rule::Margin(0.0)), Some(2));
        assert_eq!(choose(&cands, Rule::Margin(0.049)), Some(2));
        assert_eq!(choose(&cands, Rule::Margin(0.05)), Some(1)); // 0.75 ≥ 0.80 − 0.05
        assert_eq!(choose(&cands, Rule::Margin(0.2)), Some(0));
        assert_eq!(choose(&cands, Rule::Margin(-1.0)), Some(2)); // a negative margin is 0
        assert_eq!(choose(&[], Rule::Margin(0.1)), None);
    }

    #[test]
    fn lambda_prices_quality_as_documented() {
        let cands = [c(0.60, 0.2), c(0.75, 1.0), c(0.80, 10.0)];
        assert_eq!(choose(&cands, Rule::Lambda(0.0)), Some(2));
        // value: 0.60 − 0.2λ, 0.75 − λ, 0.80 − 10λ. λ = 0.001: 0.5998, 0.749, 0.79 -> frontier.
        assert_eq!(choose(&cands, Rule::Lambda(0.001)), Some(2));
        // λ = 0.01: 0.598, 0.74, 0.70 -> mid.
        assert_eq!(choose(&cands, Rule::Lambda(0.01)), Some(1));
        // λ = 0.5: 0.50, 0.25, -4.2 -> cheap.
        assert_eq!(choose(&cands, Rule::Lambda(0.5)), Some(0));
        // NaN never wins.
        assert_eq!(choose(&[c(f32::NAN, 0.0), c(0.1, 5.0)], Rule::Lambda(0.0)), Some(1));
    }

    fn req(msgs: &[(&str, &str)]) -> ChatRequest {
        let messages: Vec<serde_json::Value> =
            msgs.iter().map(|(r, t)| serde_json::json!({"role": r, "content": t})).collect();
        serde_json::from_value(serde_json::json!({"model": "auto", "messages": messages})).unwrap()
    }

    #[test]
    fn a_conversation_stays_on_its_model() {
        let first = req(&[("system", "you are a coding agent"), ("user", "refactor the parser into three modules")]);
        let follow = req(&[
            ("system", "you are a coding agent"),
            ("user", "refactor the parser into three modules"),
            ("assistant", "done"),
            ("user", "now commit it"),
        ]);
        let other = req(&[("system", "you are a coding agent"), ("user", "now commit it")]);
        let (k1, k2, k3) =
            (conversation_key(&first).unwrap(), conversation_key(&follow).unwrap(), conversation_key(&other).unwrap());
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
        let s = StickyRoutes::new(Duration::from_secs(600), 100);
        let t0 = Instant::now();
        assert_eq!(s.apply(k1, 2, false, t0), (2, false)); // the hard first turn goes to the frontier
        assert_eq!(s.apply(k2, 0, true, t0 + Duration::from_secs(5)), (2, true)); // the follow-up stays
        assert_eq!(s.apply(k3, 0, false, t0 + Duration::from_secs(6)), (0, false)); // another conversation does not
                                                                                    // A harder follow-up raises the conversation's tier; an easy one after it stays there.
        assert_eq!(s.apply(k2, 3, true, t0 + Duration::from_secs(7)), (3, false));
        assert_eq!(s.apply(k2, 1, true, t0 + Duration::from_secs(8)), (3, true));
        // The same first turn sent again is a new conversation: its own tier.
        assert_eq!(s.apply(k1, 0, false, t0 + Duration::from_secs(9)), (0, false));
        assert_eq!(s.apply(k2, 0, true, t0 + Duration::from_secs(10)), (0, false));
        // After the ttl the conversation is forgotten.
        assert_eq!(s.apply(k2, 3, true, t0 + Duration::from_secs(11)), (3, false));
        assert_eq!(s.apply(k2, 0, true, t0 + Duration::from_secs(700)), (0, false));
        assert!(conversation_key(&req(&[("system", "only a system prompt")])).is_none());
    }

    #[test]
    fn the_memory_is_bounded() {
        let s = StickyRoutes::new(Duration::from_secs(600), 3);
        let t0 = Instant::now();
        for k in 0..10u64 {
            s.apply(k, 1, false, t0 + Duration::from_secs(k));
        }
        assert_eq!(s.len(), 3);
        // The most recent three are kept.
        assert_eq!(s.apply(9, 0, true, t0 + Duration::from_secs(20)), (1, true));
        assert_eq!(s.apply(0, 0, true, t0 + Duration::from_secs(21)), (0, false));
    }
}
