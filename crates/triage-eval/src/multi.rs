//! Routing over three or more price tiers on arena-bench (300 prompts × 15 models, GPT-4 judge
//! scores 1–10): the router's quality–cost curve against every single model, the convex hull of
//! fixed mixes, the oracle, and RouterBench's AIQ (Hu et al., arXiv 2403.12031, §3.2).
//!
//! Cost of a prompt on a model = (prompt chars / 4 × input price + answer chars / 4 × output
//! price) / 10⁶ USD: 4 characters per token is OpenAI's rule of thumb for English text, and
//! arena-bench gives each answer's length. Prices: [`LIST_PRICES`].
//!
//! The router orders prompts by one difficulty score; a point of its curve sends the lowest
//! `a` % to the cheapest tier, the highest `c` % to the strongest and the rest to the middle
//! tiers (split evenly by score rank for more than three), for `a`, `c` on a 5 % grid.
//! The oracle picks, per prompt, the tier maximising `quality − λ·cost`, swept over λ: the
//! best any router could do with these tiers. "Fixed mixes" send each prompt to tier t with a
//! fixed probability regardless of the prompt: their frontier is the convex hull of the
//! single-model points (a random router's curve lies on it).

use serde::Serialize;

use crate::data::Dataset;
use crate::metrics::{aiq, upper_hull};
use crate::train::Rng;
use crate::EvalError;

/// Public list prices, USD per million tokens (input, output), as published by each provider
/// in early 2024 (OpenAI, Anthropic and Mistral AI pricing pages; Google's PaLM 2 chat-bison at
/// $0.0005 per 1,000 characters ≈ $2 per million tokens; open models the others do not sell
/// are priced at Together AI's serverless tiers by size: 7B $0.2, 13B $0.3, 33B $0.8, 70B $0.9).
/// Recalled, not fetched: check them before relying on a figure.
pub const LIST_PRICES: [(&str, f64, f64); 15] = [
    ("gpt-4-1106-preview", 10.0, 30.0),
    ("gpt-4-0314", 30.0, 60.0),
    ("gpt-3.5-turbo-1106", 1.0, 2.0),
    ("gpt-3.5-turbo", 1.5, 2.0),
    ("claude-2.1", 8.0, 24.0),
    ("claude-1", 8.0, 24.0),
    ("claude-instant-1", 0.8, 2.4),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", 0.7, 0.7),
    ("mistralai/Mistral-7B-Instruct-v0.1", 0.25, 0.25),
    ("Starling-LM-7B-alpha", 0.2, 0.2),
    ("openchat_3.5", 0.2, 0.2),
    ("vicuna-33b-v1.3", 0.8, 0.8),
    ("Llama-2-70b-chat", 0.9, 0.9),
    ("llama-13b", 0.3, 0.3),
    ("palm-2-chat-bison-001", 2.0, 2.0),
];

/// One model's point: USD per 1,000 requests and mean judge score.
#[derive(Debug, Clone, Serialize)]
pub struct ModelPoint {
    /// Model name.
    pub model: String,
    /// USD per 1,000 requests.
    pub cost_per_1000: f64,
    /// Mean judge score (1–10).
    pub quality: f64,
}

/// One point of the router's sweep.
#[derive(Debug, Clone, Serialize)]
pub struct RouterPoint {
    /// Share of prompts per tier, cheapest first.
    pub shares: Vec<f64>,
    /// USD per 1,000 requests.
    pub cost_per_1000: f64,
    /// Mean judge score.
    pub quality: f64,
}

/// AIQ of each curve over the tier models' cost range, and its bootstrap spread for the router.
#[derive(Debug, Clone, Serialize)]
pub struct Aiq {
    /// The router's hull.
    pub router: f64,
    /// Fixed mixes of the tier models (the random router).
    pub tier_mix: f64,
    /// Fixed mixes of all 15 models.
    pub all_models_mix: f64,
    /// The oracle over the tiers.
    pub oracle: f64,
    /// 5th and 95th percentile of AIQ(router) − AIQ(tier mix) over 200 bootstrap resamples of
    /// the prompts (scores held fixed).
    pub router_minus_mix_p5_p95: (f64, f64),
}

/// The multi-tier report.
#[derive(Debug, Clone, Serialize)]
pub struct MultiReport {
    /// Prompts used (those every model has a score for).
    pub prompts: usize,
    /// Tier models, cheapest first.
    pub tiers: Vec<String>,
    /// How the scores were obtained.
    pub split: String,
    /// Every model alone.
    pub singles: Vec<ModelPoint>,
    /// The router's sweep.
    pub router: Vec<RouterPoint>,
    /// Non-decreasing upper hull of the router's points, (USD per 1,000, quality).
    pub router_hull: Vec<(f64, f64)>,
    /// Hull of all single models (fixed mixes).
    pub all_models_hull: Vec<(f64, f64)>,
    /// The oracle's hull.
    pub oracle_hull: Vec<(f64, f64)>,
    /// AIQ figures.
    pub aiq: Aiq,
    /// Cheapest router point with quality ≥ the best tier model's, if any.
    pub cheapest_matching_frontier: Option<RouterPoint>,
}

fn price(model: &str) -> Result<(f64, f64), EvalError> {
    LIST_PRICES
        .iter()
        .find(|p| p.0 == model)
        .map(|p| (p.1, p.2))
        .ok_or_else(|| EvalError::Usage(format!("no list price for {model}")))
}

/// Per prompt and tier: (quality, USD cost). Rows = prompts in `items` order.
fn table(ds: &Dataset, items: &[usize], models: &[String]) -> Result<Vec<Vec<(f64, f64)>>, EvalError> {
    let cols: Vec<(usize, (f64, f64))> =
        models.iter().map(|m| Ok((ds.model_index(m)?, price(m)?))).collect::<Result<_, EvalError>>()?;
    Ok(items
        .iter()
        .map(|&i| {
            let it = &ds.items[i];
            let prompt_tokens = crate::data::first_user_text(&it.request).chars().count() as f64 / 4.0;
            cols.iter()
                .map(|&(c, (pin, pout))| {
                    let answer_tokens = it.answer_chars.get(c).copied().unwrap_or(0.0) / 4.0;
                    (it.quality[c], (prompt_tokens * pin + answer_tokens * pout) / 1e6)
                })
                .collect()
        })
        .collect())
}

/// Router points for prompts `rows` (indices into `tab`), ordered by `scores`.
fn sweep(tab: &[Vec<(f64, f64)>], rows: &[usize], scores: &[f32]) -> Vec<RouterPoint> {
    let mut order: Vec<usize> = rows.to_vec();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let n = order.len();
    let tiers = tab.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    for a in 0..=20usize {
        for c in 0..=(20 - a) {
            let lo = ((a as f64 / 20.0) * n as f64).round() as usize;
            let hi = n - ((c as f64 / 20.0) * n as f64).round() as usize;
            let mut q = 0.0;
            let mut cost = 0.0;
            let mut counts = vec![0usize; tiers];
            for (rank, &p) in order.iter().enumerate() {
                let t = if rank < lo {
                    0
                } else if rank >= hi {
                    tiers - 1
                } else if tiers == 3 {
                    1
                } else {
                    1 + (rank - lo) * (tiers - 2) / (hi - lo).max(1)
                };
                counts[t] += 1;
                q += tab[p][t].0;
                cost += tab[p][t].1;
            }
            out.push(RouterPoint {
                shares: counts.iter().map(|&k| k as f64 / n.max(1) as f64).collect(),
                cost_per_1000: 1000.0 * cost / n.max(1) as f64,
                quality: q / n.max(1) as f64,
            });
        }
    }
    out
}

fn oracle(tab: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let n = tab.len().max(1) as f64;
    let mut pts = Vec::new();
    // λ in quality points per USD per request: 0 and 10^-1 .. 10^7.
    let lambdas = std::iter::once(0.0).chain((0..=80).map(|i| 10f64.powf(-1.0 + i as f64 / 10.0)));
    for l in lambdas {
        let (mut q, mut c) = (0.0, 0.0);
        for row in tab {
            let best = row
                .iter()
                .max_by(|a, b| (a.0 - l * a.1).total_cmp(&(b.0 - l * b.1)).then(b.1.total_cmp(&a.1)))
                .copied()
                .unwrap_or((0.0, 0.0));
            q += best.0;
            c += best.1;
        }
        pts.push((1000.0 * c / n, q / n));
    }
    upper_hull(&pts)
}

/// Builds the report for `tiers` (model names, cheapest first) on arena-bench `ds`, with one
/// difficulty score per item of `ds` (`scores[i]` for `ds.items[i]`; NaN where unscored).
///
/// Errors: [`EvalError`] if a model or its price is unknown or fewer than 2 tiers are given.
pub fn evaluate(ds: &Dataset, tiers: &[String], scores: &[f32], split: &str) -> Result<MultiReport, EvalError> {
    if tiers.len() < 2 {
        return Err(EvalError::Usage("give at least 2 tier models".into()));
    }
    let all: Vec<String> = ds.models.iter().filter(|m| price(m).is_ok()).cloned().collect();
    let items: Vec<usize> = (0..ds.items.len())
        .filter(|&i| {
            scores.get(i).is_some_and(|s| s.is_finite())
                && all.iter().all(|m| ds.model_index(m).is_ok_and(|c| ds.items[i].quality[c].is_finite()))
        })
        .collect();
    let tab_all = table(ds, &items, &all)?;
    let tab = table(ds, &items, tiers)?;
    let sc: Vec<f32> = items.iter().map(|&i| scores[i]).collect();
    let n = items.len().max(1) as f64;
    let singles: Vec<ModelPoint> = all
        .iter()
        .enumerate()
        .map(|(j, m)| ModelPoint {
            model: m.clone(),
            cost_per_1000: 1000.0 * tab_all.iter().map(|r| r[j].1).sum::<f64>() / n,
            quality: tab_all.iter().map(|r| r[j].0).sum::<f64>() / n,
        })
        .collect();
    let tier_pts: Vec<(f64, f64)> = tiers
        .iter()
        .filter_map(|t| singles.iter().find(|s| &s.model == t))
        .map(|s| (s.cost_per_1000, s.quality))
        .collect();
    let (c_min, c_max) = tier_pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let rows: Vec<usize> = (0..items.len()).collect();
    let router = sweep(&tab, &rows, &sc);
    let rp: Vec<(f64, f64)> = router.iter().map(|p| (p.cost_per_1000, p.quality)).collect();
    let all_pts: Vec<(f64, f64)> = singles.iter().map(|s| (s.cost_per_1000, s.quality)).collect();
    let oracle_hull = oracle(&tab);
    // Bootstrap: resample prompts, recompute both the router's and the tier mix's AIQ.
    let mut rng = Rng::new(7);
    let mut diffs = Vec::new();
    for _ in 0..200 {
        let sample: Vec<usize> =
            (0..items.len()).map(|_| (rng.next_u64() % items.len().max(1) as u64) as usize).collect();
        let pts: Vec<(f64, f64)> = sweep(&tab, &sample, &sc).iter().map(|p| (p.cost_per_1000, p.quality)).collect();
        let k = sample.len().max(1) as f64;
        let mix: Vec<(f64, f64)> = (0..tiers.len())
            .map(|t| {
                let c = 1000.0 * sample.iter().map(|&p| tab[p][t].1).sum::<f64>() / k;
                let q = sample.iter().map(|&p| tab[p][t].0).sum::<f64>() / k;
                (c, q)
            })
            .collect();
        let (lo, hi) = mix.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        diffs.push(aiq(&pts, lo, hi) - aiq(&mix, lo, hi));
    }
    diffs.sort_by(f64::total_cmp);
    let pct = |p: f64| diffs.get(((diffs.len() - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN);
    let best_tier_q = tier_pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let cheapest_matching_frontier = router
        .iter()
        .filter(|p| p.quality >= best_tier_q - 1e-12)
        .min_by(|a, b| a.cost_per_1000.total_cmp(&b.cost_per_1000))
        .cloned();
    Ok(MultiReport {
        prompts: items.len(),
        tiers: tiers.to_vec(),
        split: split.to_owned(),
        aiq: Aiq {
            router: aiq(&rp, c_min, c_max),
            tier_mix: aiq(&tier_pts, c_min, c_max),
            all_models_mix: aiq(&all_pts, c_min, c_max),
            oracle: aiq(&oracle_hull, c_min, c_max),
            router_minus_mix_p5_p95: (pct(0.05), pct(0.95)),
        },
        router_hull: upper_hull(&rp),
        all_models_hull: upper_hull(&all_pts),
        oracle_hull,
        singles,
        router,
        cheapest_matching_frontier,
    })
}

/// The report as text: single models, hulls, AIQ and the cheapest router point that matches
/// the strongest tier.
pub fn table_text(r: &MultiReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "arena-bench, {} prompts; tiers: {}", r.prompts, r.tiers.join(" < "));
    let _ = writeln!(s, "scores: {}", r.split);
    let _ = writeln!(s, "{:<40} {:>12} {:>8}", "model", "$/1k req", "quality");
    let mut singles = r.singles.clone();
    singles.sort_by(|a, b| a.cost_per_1000.total_cmp(&b.cost_per_1000));
    for m in &singles {
        let mark = if r.tiers.contains(&m.model) { " (tier)" } else { "" };
        let _ = writeln!(s, "{:<40} {:>12.4} {:>8.3}{mark}", m.model, m.cost_per_1000, m.quality);
    }
    let _ = writeln!(s, "router hull ($/1k req, quality): {}", fmt_pts(&r.router_hull));
    let _ = writeln!(s, "oracle hull: {}", fmt_pts(&r.oracle_hull));
    let _ = writeln!(s, "all-models hull: {}", fmt_pts(&r.all_models_hull));
    let a = &r.aiq;
    let _ = writeln!(
        s,
        "AIQ over the tiers' cost range: router {:.3}, tier mix (random) {:.3}, all-model mix {:.3}, oracle {:.3}; router − mix 90% bootstrap interval [{:.3}, {:.3}]",
        a.router, a.tier_mix, a.all_models_mix, a.oracle, a.router_minus_mix_p5_p95.0, a.router_minus_mix_p5_p95.1
    );
    match &r.cheapest_matching_frontier {
        Some(p) => {
            let _ = writeln!(
                s,
                "cheapest router point at the strongest tier's quality: ${:.4}/1k req, quality {:.3}, shares {:?}",
                p.cost_per_1000,
                p.quality,
                p.shares.iter().map(|x| (x * 1000.0).round() / 10.0).collect::<Vec<_>>()
            );
        }
        None => {
            let _ = writeln!(s, "no router point reaches the strongest tier's quality");
        }
    }
    s
}

/// AIQ of the `random` scorer under the same sweep for seeds `1..=seeds` (the spread a curve
/// must beat: the upper hull of a 231-point sweep picks lucky points), as a line comparing
/// `router_aiq` with its mean and nearest-rank 95th percentile and with the hull of all single
/// models.
///
/// Errors: as [`evaluate`].
pub fn random_aiq_text(ds: &Dataset, tiers: &[String], seeds: u64, router_aiq: f64) -> Result<String, EvalError> {
    let texts: Vec<String> =
        ds.items.iter().map(|it| triage_core::router::features::RequestText::of(&it.request).text).collect();
    let mut v = Vec::new();
    let mut hull = f64::NAN;
    for seed in 1..=seeds.max(1) {
        let r = triage_core::router::RandomScorer { seed };
        let sc: Vec<f32> = texts.iter().map(|t| r.score_str(t)).collect();
        let rep = evaluate(ds, tiers, &sc, "random")?;
        hull = rep.aiq.all_models_mix;
        v.push(rep.aiq.router);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let p95 = v[((0.95 * n as f64).ceil() as usize).clamp(1, n) - 1];
    let mean = v.iter().sum::<f64>() / n as f64;
    Ok(format!(
        "AIQ router {router_aiq:.3} vs random scorer over {n} seeds: mean {mean:.3}, 95th percentile {p95:.3} (min {:.3}, max {:.3}); hull of all single models {hull:.3}; above random's p95: {}, above the hull: {}\n",
        v[0],
        v[n - 1],
        router_aiq > p95,
        router_aiq > hull
    ))
}

fn fmt_pts(p: &[(f64, f64)]) -> String {
    p.iter().map(|(c, q)| format!("({c:.3}, {q:.2})")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_assigns_lowest_scores_to_the_cheapest_tier() {
        // 4 prompts, 3 tiers: quality rises with the tier only for high-score prompts.
        let tab: Vec<Vec<(f64, f64)>> =
            (0..4).map(|i| (0..3).map(|t| (if i >= 2 { t as f64 } else { 0.0 }, t as f64)).collect()).collect();
        let scores = [0.1, 0.2, 0.8, 0.9];
        let pts = sweep(&tab, &[0, 1, 2, 3], &scores);
        assert_eq!(pts.len(), 231);
        // a = 50 %, c = 50 %: prompts 0, 1 local (cost 0), 2, 3 frontier (quality 2, cost 2).
        let p = pts.iter().find(|p| p.shares == [0.5, 0.0, 0.5]).unwrap();
        assert_eq!((p.quality, p.cost_per_1000), (1.0, 1000.0));
        // The oracle reaches the same quality at the same cost: it never pays for prompts 0, 1.
        let o = oracle(&tab);
        assert_eq!(o.first(), Some(&(0.0, 0.0)));
        assert_eq!(o.last(), Some(&(1000.0, 1.0)));
    }
}
