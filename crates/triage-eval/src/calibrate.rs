//! Threshold calibration: from a sample of prompts' scores to thresholds that give each tier a
//! target share of requests, or that meet a target cost per 1,000 requests (RouteLLM's
//! `calibrate_threshold`, which picks the score quantile that sends a target share of a sample
//! to the strong model; generalised here to any number of tiers).

use crate::EvalError;

/// Thresholds (ascending, `shares.len() - 1` of them) such that, on `scores`, tier `i` receives
/// about `shares[i]` of the prompts. `shares` are per tier, cheapest first, summing to 1.
///
/// Threshold `i` is the score at rank `round(n · (shares[0] + … + shares[i]))` of the sorted
/// sample (1.0 if that rank is n, i.e. nothing above).
///
/// Errors: [`EvalError::Usage`] for an empty sample, fewer than 2 shares, or shares that are
/// negative or do not sum to 1 (±0.001).
pub fn thresholds_for_shares(scores: &[f32], shares: &[f64]) -> Result<Vec<f32>, EvalError> {
    if scores.is_empty() {
        return Err(EvalError::Usage("the calibration sample is empty".into()));
    }
    if shares.len() < 2 || shares.iter().any(|s| *s < 0.0) || (shares.iter().sum::<f64>() - 1.0).abs() > 1e-3 {
        return Err(EvalError::Usage(format!("shares must be ≥ 2 non-negative numbers summing to 1, got {shares:?}")));
    }
    let mut s = scores.to_vec();
    s.sort_by(f32::total_cmp);
    let n = s.len();
    let mut cum = 0.0;
    let mut out = Vec::with_capacity(shares.len() - 1);
    for sh in &shares[..shares.len() - 1] {
        cum += sh;
        let k = ((cum * n as f64).round() as usize).min(n);
        out.push(if k == n { 1.0 } else { s[k] });
    }
    // Keep them ascending even with rounding at equal scores.
    for i in 1..out.len() {
        out[i] = out[i].max(out[i - 1]);
    }
    Ok(out)
}

/// The 0th..100th percentiles (101 values) of `scores`, ascending (empty for an empty sample).
pub fn percentiles(scores: &[f32]) -> Vec<f32> {
    let mut s = scores.to_vec();
    s.sort_by(f32::total_cmp);
    if s.is_empty() {
        return s;
    }
    (0..=100).map(|p| s[((p as f64 / 100.0) * (s.len() - 1) as f64).round() as usize]).collect()
}

/// Shares per tier that meet `target_per_1000` USD per 1,000 requests, given each tier's cost
/// per request `tier_cost` (cheapest first, USD) and the relative split `upper_mix` among tiers
/// 1.. (e.g. `[1, 1]` for equal mid and frontier shares; length `tier_cost.len() - 1`).
///
/// The cost per request is linear in the share u sent above the cheapest tier:
/// `(1 − u)·c0 + u·Σ m_j·c_j` with `m` normalised, so `u = (C − c0) / (Σ m_j·c_j − c0)`,
/// clamped to [0, 1].
///
/// Errors: [`EvalError::Usage`] for mismatched lengths or a mix that is all zero.
pub fn shares_for_cost(target_per_1000: f64, tier_cost: &[f64], upper_mix: &[f64]) -> Result<Vec<f64>, EvalError> {
    if tier_cost.len() < 2 || upper_mix.len() + 1 != tier_cost.len() {
        return Err(EvalError::Usage(format!(
            "need a cost per tier (≥ 2) and a mix for each tier above the cheapest: costs {tier_cost:?}, mix {upper_mix:?}"
        )));
    }
    let total: f64 = upper_mix.iter().sum();
    if total <= 0.0 || upper_mix.iter().any(|m| *m < 0.0) {
        return Err(EvalError::Usage(format!("the mix {upper_mix:?} must be non-negative with a positive sum")));
    }
    let m: Vec<f64> = upper_mix.iter().map(|x| x / total).collect();
    let c0 = tier_cost[0];
    let upper: f64 = m.iter().zip(&tier_cost[1..]).map(|(a, c)| a * c).sum();
    let per_request = target_per_1000 / 1000.0;
    let u = if upper > c0 { ((per_request - c0) / (upper - c0)).clamp(0.0, 1.0) } else { 1.0 };
    let mut shares = vec![1.0 - u];
    shares.extend(m.iter().map(|a| a * u));
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_score_quantiles() {
        let scores: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let t = thresholds_for_shares(&scores, &[0.5, 0.3, 0.2]).unwrap();
        assert_eq!(t, vec![0.5, 0.8]);
        let tiers: Vec<usize> = scores.iter().map(|&s| triage_core::router::tier_for(s, &t)).collect();
        assert_eq!(tiers.iter().filter(|&&x| x == 0).count(), 50);
        assert_eq!(tiers.iter().filter(|&&x| x == 2).count(), 20);
        assert_eq!(thresholds_for_shares(&scores, &[1.0, 0.0]).unwrap(), vec![1.0]);
        assert!(thresholds_for_shares(&scores, &[0.5, 0.4]).is_err());
        assert_eq!(percentiles(&scores)[50], 0.5);
    }

    #[test]
    fn a_cost_target_solves_for_the_upper_share() {
        // RouteLLM prices with 1,000 tokens per request: weak $0.00024, strong $0.0247 a request.
        // $5 per 1,000 requests -> u = (0.005 - 0.00024) / (0.0247 - 0.00024) = 0.19460...
        let s = shares_for_cost(5.0, &[0.00024, 0.0247], &[1.0]).unwrap();
        assert!((s[1] - 0.00476 / 0.02446).abs() < 1e-9);
        assert!((s[0] + s[1] - 1.0).abs() < 1e-12);
        // Three tiers, equal mix: upper cost = (1 + 10) / 2 = 5.5; (3 - 0) / 5.5 per request.
        let s = shares_for_cost(3000.0, &[0.0, 1.0, 10.0], &[1.0, 1.0]).unwrap();
        assert!((s[1] - 3.0 / 11.0).abs() < 1e-12 && (s[2] - 3.0 / 11.0).abs() < 1e-12);
        assert_eq!(shares_for_cost(1e9, &[0.0, 1.0], &[1.0]).unwrap(), vec![0.0, 1.0]);
    }
}
