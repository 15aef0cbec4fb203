//! Router metrics: PGR, APGR (two ways), CPT, cost at 95 % quality, AIQ and convex hulls.
//!
//! Definitions (RouteLLM, Ong et al., arXiv 2406.18665, §4; RouterBench, Hu et al.,
//! arXiv 2403.12031, §3):
//! - A router sends the top-k prompts by score to the strong model, the rest to the weak one;
//!   quality(k) = mean over prompts of the chosen model's quality; share = k / n.
//! - PGR(k) = (quality(k) − quality(weak only)) / (quality(strong only) − quality(weak only)).
//! - APGR, paper: the mean of PGR at strong-call shares 10 %, 20 %, …, 100 % (random routing
//!   scores 0.55 on it). APGR, trapezoid: the area under PGR over the 11-point sweep 0 %, 10 %,
//!   …, 100 % by the trapezoid rule, as RouteLLM's evaluation code integrates (random: 0.5).
//! - CPT(x %): the smallest strong-call share whose PGR reaches x % (on the per-prompt grid).
//! - Cost of a point, relative to always-strong: ((1 − share)·p_weak + share·p_strong) / p_strong
//!   with per-million-token prices, assuming equal tokens per prompt (RouteLLM §5.1: $24.7 for
//!   GPT-4 and $0.24 for Mixtral per million tokens).
//! - AIQ: the area under the non-decreasing upper convex hull of (cost, quality) points, divided
//!   by the cost range (RouterBench §3.2).
//!
//! Ties in the router's score are broken by prompt order, so results are deterministic.

use serde::Serialize;

/// Quality after sending the top-`k` prompts by `scores` to the strong model, for every
/// `k = 0..=n` (`n + 1` values; `[0]` = weak only, `[n]` = strong only).
///
/// `scores`, `weak`, `strong` have one entry per prompt, qualities in any unit.
pub fn routed_quality(scores: &[f32], weak: &[f64], strong: &[f64]) -> Vec<f64> {
    let n = scores.len().min(weak.len()).min(strong.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut total: f64 = weak[..n].iter().sum();
    let mut out = Vec::with_capacity(n + 1);
    let denom = n.max(1) as f64;
    out.push(total / denom);
    for &i in &order {
        total += strong[i] - weak[i];
        out.push(total / denom);
    }
    out
}

/// Expected quality of random routing at every `k`: a straight line from weak-only to
/// strong-only (each prompt is equally likely to be among the k sent to the strong model).
pub fn random_quality(weak: &[f64], strong: &[f64]) -> Vec<f64> {
    let n = weak.len().min(strong.len());
    let d = n.max(1) as f64;
    let (qw, qs) = (weak[..n].iter().sum::<f64>() / d, strong[..n].iter().sum::<f64>() / d);
    (0..=n).map(|k| qw + (qs - qw) * k as f64 / d).collect()
}

/// The oracle's scores: strong quality minus weak quality per prompt (strong only where it helps
/// most: for correctness data, exactly where the weak model fails and the strong one succeeds).
pub fn oracle_scores(weak: &[f64], strong: &[f64]) -> Vec<f32> {
    weak.iter().zip(strong).map(|(w, s)| (s - w) as f32).collect()
}

/// One point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Share of prompts sent to the strong model, in [0, 1].
    pub strong_share: f64,
    /// Mean quality (the data's unit: accuracy, or 1–10 judge score).
    pub quality: f64,
    /// Performance gap recovered.
    pub pgr: f64,
    /// Cost relative to always-strong, in [p_weak / p_strong, 1].
    pub cost_rel: f64,
}

/// Every figure of one router on one benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sweep at 0 %, 10 %, …, 100 % strong calls.
    pub sweep: Vec<Point>,
    /// APGR as the paper defines it: mean PGR at 10 %, …, 100 %.
    pub apgr_mean10: f64,
    /// APGR as the trapezoid area under PGR over the 11-point sweep.
    pub apgr_trapezoid: f64,
    /// CPT(50 %): smallest strong-call share with PGR ≥ 0.5 (per-prompt grid).
    pub cpt50: f64,
    /// CPT(80 %).
    pub cpt80: f64,
    /// Cheapest point (per-prompt grid) whose quality ≥ 95 % of strong-only quality.
    pub cheapest_95: Point,
}

/// Relative cost of a strong-call share: `((1 − s)·p_weak + s·p_strong) / p_strong`.
pub fn cost_rel(share: f64, p_weak: f64, p_strong: f64) -> f64 {
    ((1.0 - share) * p_weak + share * p_strong) / p_strong
}

/// Summarises a quality curve `q` (`n + 1` values from [`routed_quality`] or
/// [`random_quality`]) with prices per million tokens `p_weak`, `p_strong`.
/// PGR is NaN when strong-only and weak-only quality are equal.
pub fn summarize(q: &[f64], p_weak: f64, p_strong: f64) -> Summary {
    let n = q.len().saturating_sub(1);
    let (qw, qs) = (q.first().copied().unwrap_or(0.0), q.last().copied().unwrap_or(0.0));
    let pgr = |k: usize| (q[k] - qw) / (qs - qw);
    let point = |k: usize| {
        let s = if n == 0 { 0.0 } else { k as f64 / n as f64 };
        Point { strong_share: s, quality: q[k], pgr: pgr(k), cost_rel: cost_rel(s, p_weak, p_strong) }
    };
    let sweep: Vec<Point> = (0..=10).map(|i| point(((i as f64 / 10.0) * n as f64).round() as usize)).collect();
    let apgr_mean10 = sweep[1..].iter().map(|p| p.pgr).sum::<f64>() / 10.0;
    let apgr_trapezoid = sweep.windows(2).map(|w| 0.1 * (w[0].pgr + w[1].pgr) / 2.0).sum::<f64>();
    let cpt = |x: f64| (0..=n).find(|&k| pgr(k) >= x - 1e-12).map_or(1.0, |k| point(k).strong_share);
    let cheapest_95 = point((0..=n).find(|&k| q[k] >= 0.95 * qs - 1e-12).unwrap_or(n));
    Summary { sweep, apgr_mean10, apgr_trapezoid, cpt50: cpt(0.5), cpt80: cpt(0.8), cheapest_95 }
}

/// The upper convex hull of `(cost, quality)` points, made non-decreasing (points past the best
/// quality are dropped: spending more for less is never chosen), sorted by cost.
pub fn upper_hull(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points.iter().copied().filter(|(c, q)| c.is_finite() && q.is_finite()).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for pt in p {
        if hull.last().is_some_and(|l| l.0 == pt.0) {
            continue; // same cost, lower quality (sorted)
        }
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // Remove b if it lies on or below the segment a -> pt.
            let cross = (b.0 - a.0) * (pt.1 - a.1) - (b.1 - a.1) * (pt.0 - a.0);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(pt);
    }
    // Non-decreasing: cut after the maximum quality.
    if let Some(best) = hull.iter().enumerate().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|(i, _)| i) {
        hull.truncate(best + 1);
    }
    hull
}

/// AIQ: area under the non-decreasing upper hull of `points` over costs `[c_min, c_max]`,
/// divided by `c_max − c_min`. Below the hull's first cost the quality counts as 0 (no router
/// point reaches there); past its last cost it stays at the hull's best quality.
pub fn aiq(points: &[(f64, f64)], c_min: f64, c_max: f64) -> f64 {
    let hull = upper_hull(points);
    if hull.is_empty() || c_max <= c_min {
        return f64::NAN;
    }
    let at = |c: f64| -> f64 {
        if c < hull[0].0 {
            return 0.0;
        }
        for w in hull.windows(2) {
            if c <= w[1].0 {
                let t = (c - w[0].0) / (w[1].0 - w[0].0);
                return w[0].1 + t * (w[1].1 - w[0].1);
            }
        }
        hull[hull.len() - 1].1
    };
    // Exact piecewise-linear integration over breakpoints within [c_min, c_max].
    let mut xs: Vec<f64> = vec![c_min, c_max];
    xs.extend(hull.iter().map(|p| p.0).filter(|&c| c > c_min && c < c_max));
    if hull[0].0 > c_min && hull[0].0 < c_max {
        xs.push(hull[0].0 - 1e-12);
    }
    xs.sort_by(f64::total_cmp);
    let area: f64 = xs.windows(2).map(|w| (w[1] - w[0]) * (at(w[0]) + at(w[1])) / 2.0).sum();
    area / (c_max - c_min)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ten prompts: the weak model is right on 0..6, the strong one on 0..9 (so prompts 6, 7, 8
    // need the strong model, prompt 9 is lost either way). weak-only = 0.6, strong-only = 0.9.
    fn data() -> (Vec<f64>, Vec<f64>) {
        let weak = (0..10).map(|i| if i < 6 { 1.0 } else { 0.0 }).collect();
        let strong = (0..10).map(|i| if i < 9 { 1.0 } else { 0.0 }).collect();
        (weak, strong)
    }

    #[test]
    fn a_perfect_router_recovers_the_gap_at_the_oracle_share() {
        let (w, s) = data();
        let q = routed_quality(&oracle_scores(&w, &s), &w, &s);
        let m = summarize(&q, 0.24, 24.7);
        // PGR at 0 %, 10 %, 20 %, 30 % = 0, 1/3, 2/3, 1; then 1.
        let pgr: Vec<f64> = m.sweep.iter().map(|p| (p.pgr * 1000.0).round() / 1000.0).collect();
        assert_eq!(pgr, [0.0, 0.333, 0.667, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        // mean10 = (1/3 + 2/3 + 8) / 10 = 0.9; trapezoid = 0.1 * (0 + 2*(1/3 + 2/3 + 7) + 1) / 2 = 0.85.
        assert!((m.apgr_mean10 - 0.9).abs() < 1e-12);
        assert!((m.apgr_trapezoid - 0.85).abs() < 1e-12);
        assert!((m.cpt50 - 0.2).abs() < 1e-12);
        assert!((m.cpt80 - 0.3).abs() < 1e-12);
        // 95 % of 0.9 = 0.855: needs quality 0.9 at 30 % strong calls (0.8 at 20 %).
        assert!((m.cheapest_95.strong_share - 0.3).abs() < 1e-12);
        assert!((m.cheapest_95.cost_rel - (0.7 * 0.24 + 0.3 * 24.7) / 24.7).abs() < 1e-12);
    }

    #[test]
    fn a_random_router_scores_half_by_area_and_0_55_by_the_paper_mean() {
        let (w, s) = data();
        let m = summarize(&random_quality(&w, &s), 1.0, 10.0);
        assert!((m.apgr_trapezoid - 0.5).abs() < 1e-12);
        assert!((m.apgr_mean10 - 0.55).abs() < 1e-12);
        assert!((m.cpt50 - 0.5).abs() < 1e-12);
        assert!((m.cpt80 - 0.8).abs() < 1e-12);
        assert!((m.sweep[4].cost_rel - (0.6 * 1.0 + 0.4 * 10.0) / 10.0).abs() < 1e-12);
    }

    #[test]
    fn an_inverted_router_recovers_nothing_until_the_end() {
        let (w, s) = data();
        let inv: Vec<f32> = oracle_scores(&w, &s).iter().map(|x| -x).collect();
        let q = routed_quality(&inv, &w, &s);
        let m = summarize(&q, 0.24, 24.7);
        // The 7 prompts with gain 0 go first (ties by index: 0..6, 9), then 6, 7, 8.
        let pgr: Vec<f64> = m.sweep.iter().map(|p| (p.pgr * 1000.0).round() / 1000.0).collect();
        assert_eq!(pgr, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.333, 0.667, 1.0]);
        assert!((m.apgr_mean10 - 0.2).abs() < 1e-12);
        assert!((m.apgr_trapezoid - 0.15).abs() < 1e-12);
        assert!((m.cpt50 - 0.9).abs() < 1e-12);
        assert!((m.cpt80 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn hull_and_aiq_on_three_models() {
        // (cost, quality): a cheap model, a dominated one, a mid one, the frontier one.
        let pts = [(1.0, 2.0), (4.0, 3.0), (3.0, 5.0), (10.0, 8.0), (12.0, 7.0)];
        assert_eq!(upper_hull(&pts), vec![(1.0, 2.0), (3.0, 5.0), (10.0, 8.0)]);
        // Area over [1, 10]: (3-1)*(2+5)/2 + (10-3)*(5+8)/2 = 7 + 45.5 = 52.5; / 9.
        assert!((aiq(&pts, 1.0, 10.0) - 52.5 / 9.0).abs() < 1e-12);
        // Past the last hull point quality stays 8: over [1, 12] add 2*8 = 16.
        assert!((aiq(&pts, 1.0, 12.0) - 68.5 / 11.0).abs() < 1e-12);
    }
}
