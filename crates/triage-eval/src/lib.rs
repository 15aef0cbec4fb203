//! Offline evaluation of Triage's router (issue 9): datasets of per-model outcomes, training of
//! the lexical scorer, threshold calibration, benchmark replay with RouteLLM's metrics (PGR,
//! APGR, CPT) beside random and oracle routing, and an SVG plot.
//!
//! It exists so that every claim about the router is a command that recomputes it from data
//! (docs/ROUTING.md lists them). The router itself (scoring, thresholds, tiers) lives in
//! `triage_core::router`; this crate only feeds it data and measures it.
#![deny(missing_docs)]

pub mod calibrate;
pub mod commands;
pub mod data;
pub mod embedding;
pub mod from_evals;
pub mod metrics;
pub mod multi;
pub mod plot;
pub mod quality;
pub mod replay;
pub mod train;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Missing or malformed data (names the file, line or model).
    #[error("data: {0}")]
    Data(String),
    /// A bad argument or configuration.
    #[error("{0}")]
    Usage(String),
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock (for model metadata).
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    civil_from_days((secs / 86_400) as i64)
}

/// Days since 1970-01-01 → `YYYY-MM-DD` (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), "1970-01-01");
        assert_eq!(super::civil_from_days(20_513), "2026-03-01");
        assert_eq!(super::civil_from_days(11_016), "2000-02-29");
    }
}
