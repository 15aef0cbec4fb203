//! The production-evaluation report (`triage evals report`, `GET /v1/evals`): per group the
//! count, win / tie / loss of the routed answer against the reference with 95 % Wilson
//! intervals, the judge's order-inconsistency rate, the estimated share of reference quality
//! kept, the saving against sending everything to the reference, the evaluation's spend, the
//! trend by ISO week, and explicit feedback beside.
//!
//! Definitions (docs/ROUTING.md, "Production evaluation"):
//! - *judged* = win + tie + loss; a judge reply without a verdict (`judge_failed`) or a failed
//!   call (`error`) is counted apart, never as a verdict;
//! - rates are of judged pairs; an order-inconsistent pair is a tie (and counted in
//!   `inconsistent`);
//! - *quality kept* = (win + tie) / judged: the share of requests whose routed answer was at
//!   least as good as the reference's (1 − the share where the reference would have been better);
//! - *saving* = 1 − routed cost / reference cost over the evaluated requests: what routing saved
//!   against sending them all to the reference;
//! - *eval spend* = reference + judge calls.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use triage_core::cost::NanoUsd;
use triage_core::evals::{reason_kind, wilson};

use crate::{iso_week, EvalRecord, FeedbackRow, Store, StoreError};

/// A grouping of the evaluation report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalGroupBy {
    /// Tier that answered.
    Tier,
    /// Model that answered.
    Model,
    /// Role (`role:NAME` requests; `-` for others).
    Role,
    /// Virtual key id (`-` without keys).
    Key,
    /// Kind of routing decision (`triage_core::evals::reason_kind`).
    Reason,
}

impl EvalGroupBy {
    /// Parses `tier`, `model`, `role`, `key` or `reason`.
    pub fn parse(s: &str) -> Option<EvalGroupBy> {
        Some(match s {
            "tier" => EvalGroupBy::Tier,
            "model" => EvalGroupBy::Model,
            "role" => EvalGroupBy::Role,
            "key" => EvalGroupBy::Key,
            "reason" => EvalGroupBy::Reason,
            _ => return None,
        })
    }

    /// The name [`EvalGroupBy::parse`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            EvalGroupBy::Tier => "tier",
            EvalGroupBy::Model => "model",
            EvalGroupBy::Role => "role",
            EvalGroupBy::Key => "key",
            EvalGroupBy::Reason => "reason",
        }
    }

    fn of_eval(self, e: &EvalRecord) -> String {
        match self {
            EvalGroupBy::Tier => e.tier.clone(),
            EvalGroupBy::Model => e.model.clone(),
            EvalGroupBy::Role => e.role.clone().unwrap_or_else(|| "-".into()),
            EvalGroupBy::Key => e.key_id.clone().unwrap_or_else(|| "-".into()),
            EvalGroupBy::Reason => e.reason.clone(),
        }
    }

    fn of_feedback(self, f: &FeedbackRow) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        match self {
            EvalGroupBy::Tier => or_dash(&f.tier),
            EvalGroupBy::Model => or_dash(&f.model),
            EvalGroupBy::Role => or_dash(&f.role),
            EvalGroupBy::Key => or_dash(&f.key_id),
            EvalGroupBy::Reason => {
                reason_kind(&f.requested_model, f.route_reason.as_deref().unwrap_or_default()).to_owned()
            }
        }
    }
}

/// The figures of one group (or of the total, or of one week).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalGroup {
    /// The group's name (a tier, model, role, key, reason kind, `total`, or a week `2026-W48`).
    pub key: String,
    /// Evaluated requests (every outcome).
    pub evaluated: u64,
    /// Routed answer better.
    pub wins: u64,
    /// Neither better (order-inconsistent pairs included).
    pub ties: u64,
    /// Reference better.
    pub losses: u64,
    /// Judge replies without a verdict.
    pub judge_failed: u64,
    /// Reference or judge calls that failed.
    pub errors: u64,
    /// Order-inconsistent pairs (counted in `ties`).
    pub inconsistent: u64,
    /// Cost of the routed answers.
    pub routed_cost: NanoUsd,
    /// Cost of the reference's answers.
    pub reference_cost: NanoUsd,
    /// Cost of the judge calls.
    pub judge_cost: NanoUsd,
    /// Requests with explicit feedback.
    pub feedback: u64,
    /// Sum of their scores.
    pub feedback_sum: f64,
}

impl EvalGroup {
    fn add(&mut self, e: &EvalRecord) {
        self.evaluated += 1;
        match e.outcome.as_str() {
            "win" => self.wins += 1,
            "tie" => self.ties += 1,
            "loss" => self.losses += 1,
            "judge_failed" => self.judge_failed += 1,
            _ => self.errors += 1,
        }
        self.inconsistent += u64::from(e.inconsistent);
        self.routed_cost = self.routed_cost.saturating_add(e.routed_cost);
        self.reference_cost = self.reference_cost.saturating_add(e.reference_cost);
        self.judge_cost = self.judge_cost.saturating_add(e.judge_cost);
    }

    /// Judged pairs: wins + ties + losses.
    pub fn judged(&self) -> u64 {
        self.wins + self.ties + self.losses
    }

    /// `k / judged`, 0 when nothing was judged.
    pub fn rate(&self, k: u64) -> f64 {
        k as f64 / self.judged().max(1) as f64
    }

    /// Estimated share of reference quality kept: (wins + ties) / judged.
    pub fn kept(&self) -> f64 {
        self.rate(self.wins + self.ties)
    }

    /// What the evaluation cost: reference plus judge calls.
    pub fn eval_spend(&self) -> NanoUsd {
        self.reference_cost.saturating_add(self.judge_cost)
    }

    /// 1 − routed cost / reference cost (`None` when the reference cost nothing).
    pub fn saving(&self) -> Option<f64> {
        (self.reference_cost.0 > 0).then(|| 1.0 - self.routed_cost.0 as f64 / self.reference_cost.0 as f64)
    }

    /// Mean feedback score (`None` without feedback).
    pub fn feedback_mean(&self) -> Option<f64> {
        (self.feedback > 0).then(|| self.feedback_sum / self.feedback as f64)
    }

    /// The group as JSON; every proportion comes with its 95 % Wilson interval `[low, high]`.
    pub fn to_json(&self) -> Value {
        let n = self.judged();
        let p = |k: u64| {
            let (lo, hi) = wilson(k, n);
            json!({"count": k, "rate": self.rate(k), "ci95": [lo, hi]})
        };
        json!({
            "key": self.key,
            "evaluated": self.evaluated,
            "judged": n,
            "win": p(self.wins),
            "tie": p(self.ties),
            "loss": p(self.losses),
            "quality_kept": p(self.wins + self.ties),
            "inconsistent": p(self.inconsistent),
            "judge_failed": self.judge_failed,
            "errors": self.errors,
            "routed_cost_usd": self.routed_cost.as_usd_f64(),
            "reference_cost_usd": self.reference_cost.as_usd_f64(),
            "saving_usd": self.reference_cost.0.saturating_sub(self.routed_cost.0) as f64 / 1e9,
            "saving_share": self.saving(),
            "eval_spend_usd": self.eval_spend().as_usd_f64(),
            "feedback": {"count": self.feedback, "mean_score": self.feedback_mean()},
        })
    }
}

/// The evaluation report: one [`EvalGroup`] per group, the total, and the total per ISO week.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// The grouping.
    pub by: EvalGroupBy,
    /// Groups, sorted by name.
    pub groups: Vec<EvalGroup>,
    /// Every evaluated request.
    pub total: EvalGroup,
    /// The total per ISO week, oldest first.
    pub weeks: Vec<EvalGroup>,
}

fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

fn pct_ci(k: u64, n: u64) -> String {
    if n == 0 {
        return "-".into();
    }
    let (lo, hi) = wilson(k, n);
    format!("{} [{}-{}]", pct(k as f64 / n as f64), pct(lo), pct(hi))
}

fn usd(n: NanoUsd) -> String {
    format!("{:.6}", n.as_usd_f64())
}

impl EvalReport {
    /// Builds the report from results and feedback on requests since `since` (RFC 3339 or
    /// `YYYY-MM-DD`).
    ///
    /// Errors: [`StoreError`].
    pub async fn build(store: &Store, by: EvalGroupBy, since: Option<&str>) -> Result<EvalReport, StoreError> {
        let evals = store.evals(since, false).await?;
        let feedback = store.feedback_rows(since).await?;
        Ok(EvalReport::from_rows(by, &evals, &feedback))
    }

    /// The report over these rows (no database).
    pub fn from_rows(by: EvalGroupBy, evals: &[EvalRecord], feedback: &[FeedbackRow]) -> EvalReport {
        let mut groups: BTreeMap<String, EvalGroup> = BTreeMap::new();
        let mut weeks: BTreeMap<String, EvalGroup> = BTreeMap::new();
        let mut total = EvalGroup { key: "total".into(), ..Default::default() };
        for e in evals {
            let k = by.of_eval(e);
            groups.entry(k.clone()).or_insert_with(|| EvalGroup { key: k, ..Default::default() }).add(e);
            let w = iso_week(e.ts_ms);
            weeks.entry(w.clone()).or_insert_with(|| EvalGroup { key: w, ..Default::default() }).add(e);
            total.add(e);
        }
        for f in feedback {
            let k = by.of_feedback(f);
            let g = groups.entry(k.clone()).or_insert_with(|| EvalGroup { key: k, ..Default::default() });
            g.feedback += 1;
            g.feedback_sum += f.score;
            total.feedback += 1;
            total.feedback_sum += f.score;
            let w = iso_week(crate::ms_of_rfc3339(&f.ts).unwrap_or(0));
            let wk = weeks.entry(w.clone()).or_insert_with(|| EvalGroup { key: w, ..Default::default() });
            wk.feedback += 1;
            wk.feedback_sum += f.score;
        }
        EvalReport { by, groups: groups.into_values().collect(), total, weeks: weeks.into_values().collect() }
    }

    /// The report as JSON: `by`, `groups`, `total` and `weeks`, each group as
    /// [`EvalGroup::to_json`].
    pub fn to_json(&self) -> Value {
        json!({
            "by": self.by.name(),
            "groups": self.groups.iter().map(EvalGroup::to_json).collect::<Vec<_>>(),
            "total": self.total.to_json(),
            "weeks": self.weeks.iter().map(EvalGroup::to_json).collect::<Vec<_>>(),
        })
    }

    /// The report as CSV: a header line, then one line per group, the total, and one line per
    /// week (`section` says which).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "section,key,evaluated,judged,wins,ties,losses,win_rate,win_ci_low,win_ci_high,loss_rate,loss_ci_low,loss_ci_high,quality_kept,kept_ci_low,kept_ci_high,inconsistent,inconsistent_rate,judge_failed,errors,routed_cost_usd,reference_cost_usd,saving_share,eval_spend_usd,feedback_count,feedback_mean\n",
        );
        let line = |section: &str, g: &EvalGroup| {
            let n = g.judged();
            let (wl, wh) = wilson(g.wins, n);
            let (ll, lh) = wilson(g.losses, n);
            let (kl, kh) = wilson(g.wins + g.ties, n);
            format!(
                "{section},{},{},{n},{},{},{},{:.6},{wl:.6},{wh:.6},{:.6},{ll:.6},{lh:.6},{:.6},{kl:.6},{kh:.6},{},{:.6},{},{},{},{},{},{},{},{}\n",
                g.key.replace(',', ";"),
                g.evaluated,
                g.wins,
                g.ties,
                g.losses,
                g.rate(g.wins),
                g.rate(g.losses),
                g.kept(),
                g.inconsistent,
                g.rate(g.inconsistent),
                g.judge_failed,
                g.errors,
                usd(g.routed_cost),
                usd(g.reference_cost),
                g.saving().map_or(String::new(), |s| format!("{s:.6}")),
                usd(g.eval_spend()),
                g.feedback,
                g.feedback_mean().map_or(String::new(), |m| format!("{m:.6}")),
            )
        };
        for g in &self.groups {
            out.push_str(&line("group", g));
        }
        out.push_str(&line("total", &self.total));
        for w in &self.weeks {
            out.push_str(&line("week", w));
        }
        out
    }

    /// The report as aligned text tables: the groups and the total, then the trend by week.
    /// Percentages with their 95 % Wilson interval in brackets.
    pub fn to_table(&self) -> String {
        let head: Vec<String> = [
            self.by.name().to_uppercase().as_str(),
            "N",
            "JUDGED",
            "WIN % [95% CI]",
            "TIE %",
            "LOSS % [95% CI]",
            "KEPT % [95% CI]",
            "INCONSISTENT",
            "FAILED",
            "SAVED",
            "EVAL $",
            "FEEDBACK",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let cells = |g: &EvalGroup| -> Vec<String> {
            let n = g.judged();
            vec![
                g.key.clone(),
                g.evaluated.to_string(),
                n.to_string(),
                pct_ci(g.wins, n),
                if n == 0 { "-".into() } else { pct(g.rate(g.ties)) },
                pct_ci(g.losses, n),
                pct_ci(g.wins + g.ties, n),
                if n == 0 { "-".into() } else { format!("{} ({} %)", g.inconsistent, pct(g.rate(g.inconsistent))) },
                format!("{}+{}", g.judge_failed, g.errors),
                g.saving().map_or("-".into(), |s| format!("{} %", pct(s))),
                usd(g.eval_spend()),
                g.feedback_mean().map_or("-".into(), |m| format!("{m:.2} (n={})", g.feedback)),
            ]
        };
        let mut rows = vec![head];
        rows.extend(self.groups.iter().map(cells));
        rows.push(cells(&self.total));
        let mut out = align(&rows);
        out.push_str(
            "FAILED = judge replies without a verdict + failed reference or judge calls (not counted as verdicts)\n",
        );
        if !self.weeks.is_empty() {
            out.push_str("\ntrend by week:\n");
            let mut wrows =
                vec![["WEEK", "N", "JUDGED", "WIN %", "LOSS %", "KEPT % [95% CI]", "INCONSISTENT %", "EVAL $"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect::<Vec<_>>()];
            for w in &self.weeks {
                let n = w.judged();
                let or_dash = |x: f64| if n == 0 { "-".to_owned() } else { pct(x) };
                wrows.push(vec![
                    w.key.clone(),
                    w.evaluated.to_string(),
                    n.to_string(),
                    or_dash(w.rate(w.wins)),
                    or_dash(w.rate(w.losses)),
                    pct_ci(w.wins + w.ties, n),
                    or_dash(w.rate(w.inconsistent)),
                    usd(w.eval_spend()),
                ]);
            }
            out.push_str(&align(&wrows));
        }
        out
    }
}

/// Left-aligns the first column and right-aligns the others.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<0$}", w[i]) } else { format!("{c:>0$}", w[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, outcome: &str, inconsistent: bool, ts_ms: u64) -> EvalRecord {
        EvalRecord {
            request_id: format!("r-{key}-{outcome}-{ts_ms}"),
            ts_ms,
            key_id: Some(key.into()),
            tier: "local".into(),
            model: "cheap".into(),
            reason: "auto".into(),
            outcome: outcome.into(),
            inconsistent,
            routed_cost: NanoUsd(100),
            reference_cost: NanoUsd(1000),
            judge_cost: NanoUsd(50),
            ..Default::default()
        }
    }

    #[test]
    fn groups_count_outcomes_and_intervals_are_wilson() {
        let day = 1_796_012_684_000; // 2026-11-30, week 49
        let week_before = day - 7 * 86_400_000;
        let mut rows = Vec::new();
        for i in 0..8 {
            rows.push(row("sql", "loss", false, day + i));
        }
        rows.push(row("sql", "tie", false, day));
        rows.push(row("sql", "judge_failed", false, day));
        for i in 0..10 {
            rows.push(row("chat", "tie", i < 2, week_before + i));
        }
        rows.push(row("chat", "win", false, week_before));
        let fb = vec![FeedbackRow {
            request_id: "x".into(),
            score: 0.0,
            ts: crate::rfc3339(day),
            key_id: Some("sql".into()),
            ..Default::default()
        }];
        let r = EvalReport::from_rows(EvalGroupBy::Key, &rows, &fb);
        assert_eq!(r.groups.len(), 2);
        let chat = &r.groups[0];
        let sql = &r.groups[1];
        assert_eq!((sql.key.as_str(), sql.evaluated, sql.judged(), sql.losses, sql.judge_failed), ("sql", 10, 9, 8, 1));
        assert_eq!((chat.key.as_str(), chat.judged(), chat.ties, chat.wins, chat.inconsistent), ("chat", 11, 10, 1, 2));
        assert!((sql.kept() - 1.0 / 9.0).abs() < 1e-12);
        assert_eq!(chat.kept(), 1.0);
        assert_eq!(sql.feedback_mean(), Some(0.0));
        assert_eq!(r.total.evaluated, 21);
        assert_eq!(r.total.eval_spend(), NanoUsd(21 * 1050));
        assert_eq!(sql.saving(), Some(0.9));
        let j = r.to_json();
        let ci = &j["groups"][1]["loss"]["ci95"];
        let (lo, hi) = wilson(8, 9);
        assert_eq!((ci[0].as_f64(), ci[1].as_f64()), (Some(lo), Some(hi)));
        assert_eq!(j["groups"][0]["inconsistent"]["count"], 2);
        // Trend: the week before holds the chat rows, this week the sql ones.
        let weeks: Vec<(&str, u64)> = r.weeks.iter().map(|w| (w.key.as_str(), w.evaluated)).collect();
        assert_eq!(weeks, [("2026-W48", 11), ("2026-W49", 10)]);
        let table = r.to_table();
        assert!(table.contains("88.9 ["), "{table}");
        assert!(table.contains("trend by week"), "{table}");
        let csv = r.to_csv();
        assert_eq!(csv.lines().count(), 1 + 2 + 1 + 2);
        assert!(csv.lines().nth(2).unwrap().starts_with("group,sql,10,9,0,1,8,"), "{csv}");
    }
}
