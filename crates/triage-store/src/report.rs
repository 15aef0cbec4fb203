//! Spend reports: totals per group, the counterfactual "always frontier" cost and the saving,
//! and the share of requests per tier, as a table, CSV or JSON.

use serde_json::{json, Value};
use triage_core::cost::NanoUsd;

use crate::{GroupBy, SpendRow, Store, StoreError};

/// A spend report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The grouping.
    pub by: GroupBy,
    /// Rows, one per group.
    pub rows: Vec<SpendRow>,
    /// (tier, requests) for the same period.
    pub tiers: Vec<(String, u64)>,
    /// Production evaluation's own spend in the period (ledger kind `eval`: reference and judge
    /// calls), not part of `rows`: it is paid from the evaluation's budget, never a user's.
    pub eval_spend: NanoUsd,
}

fn usd(n: NanoUsd) -> String {
    format!("{:.6}", n.as_usd_f64())
}

/// `baseline / cost`: how many times cheaper than always-frontier (∞ shown as `-`).
fn ratio(cost: NanoUsd, baseline: NanoUsd) -> Option<f64> {
    (cost.0 > 0).then(|| baseline.0 as f64 / cost.0 as f64)
}

impl GroupBy {
    /// Parses `day`, `user`, `team`, `tier` or `model`.
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "day" => GroupBy::Day,
            "user" => GroupBy::User,
            "team" => GroupBy::Team,
            "tier" => GroupBy::Tier,
            "model" => GroupBy::Model,
            _ => return None,
        })
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::User => "user",
            GroupBy::Team => "team",
            GroupBy::Tier => "tier",
            GroupBy::Model => "model",
        }
    }
}

impl Report {
    /// Builds the report for requests since `since` (RFC 3339 or `YYYY-MM-DD`).
    ///
    /// Errors: [`StoreError`].
    pub async fn build(store: &Store, by: GroupBy, since: Option<&str>) -> Result<Report, StoreError> {
        let rows = store.spend(by, since).await?;
        let tiers = store.spend(GroupBy::Tier, since).await?.into_iter().map(|r| (r.key, r.requests)).collect();
        let eval_spend = store.eval_spend(since).await?;
        Ok(Report { by, rows, tiers, eval_spend })
    }

    fn total(&self) -> SpendRow {
        let mut t = SpendRow {
            key: "total".into(),
            requests: 0,
            input_tokens: 0,
            cached_input_tokens: 0,
            output_tokens: 0,
            cost: NanoUsd(0),
            baseline_cost: NanoUsd(0),
        };
        for r in &self.rows {
            t.requests += r.requests;
            t.input_tokens += r.input_tokens;
            t.cached_input_tokens += r.cached_input_tokens;
            t.output_tokens += r.output_tokens;
            t.cost = t.cost.saturating_add(r.cost);
            t.baseline_cost = t.baseline_cost.saturating_add(r.baseline_cost);
        }
        t
    }

    /// The report as JSON: `rows`, `total` (each with `cost_usd`, `baseline_cost_usd`,
    /// `saving_usd`, `baseline_over_cost`), `tier_share` (fraction of requests per tier) and
    /// `eval_spend_usd` (production evaluation's own spend, not in the totals).
    pub fn to_json(&self) -> Value {
        let row = |r: &SpendRow| {
            json!({
                "key": r.key, "requests": r.requests, "input_tokens": r.input_tokens,
                "cached_input_tokens": r.cached_input_tokens, "output_tokens": r.output_tokens,
                "cost_usd": r.cost.as_usd_f64(), "baseline_cost_usd": r.baseline_cost.as_usd_f64(),
                "saving_usd": r.baseline_cost.0.saturating_sub(r.cost.0) as f64 / 1e9,
                "baseline_over_cost": ratio(r.cost, r.baseline_cost),
            })
        };
        let n: u64 = self.tiers.iter().map(|t| t.1).sum();
        let share: serde_json::Map<String, Value> =
            self.tiers.iter().map(|(t, k)| (t.clone(), json!(*k as f64 / n.max(1) as f64))).collect();
        json!({"by": self.by.name(), "rows": self.rows.iter().map(row).collect::<Vec<_>>(), "total": row(&self.total()), "tier_share": share, "eval_spend_usd": self.eval_spend.as_usd_f64()})
    }

    /// The report as CSV with a header line.
    pub fn to_csv(&self) -> String {
        let mut out = format!(
            "{},requests,input_tokens,cached_input_tokens,output_tokens,cost_usd,baseline_cost_usd\n",
            self.by.name()
        );
        for r in self.rows.iter().chain(std::iter::once(&self.total())) {
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                r.key.replace(',', ";"),
                r.requests,
                r.input_tokens,
                r.cached_input_tokens,
                r.output_tokens,
                usd(r.cost),
                usd(r.baseline_cost)
            ));
        }
        out
    }

    /// The report as an aligned text table, with the saving and the tier shares below it.
    pub fn to_table(&self) -> String {
        let head = [
            self.by.name().to_uppercase(),
            "REQUESTS".into(),
            "IN TOK".into(),
            "OUT TOK".into(),
            "COST $".into(),
            "FRONTIER $".into(),
            "SAVED".into(),
        ];
        let cells = |r: &SpendRow| {
            [
                r.key.clone(),
                r.requests.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                usd(r.cost),
                usd(r.baseline_cost),
                ratio(r.cost, r.baseline_cost).map_or("-".into(), |x| format!("{x:.1}x")),
            ]
        };
        let mut rows: Vec<[String; 7]> = vec![head];
        rows.extend(self.rows.iter().map(cells));
        rows.push(cells(&self.total()));
        let mut w = [0usize; 7];
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| if i == 0 { format!("{c:<0$}", w[i]) } else { format!("{c:>0$}", w[i]) })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        let n: u64 = self.tiers.iter().map(|t| t.1).sum();
        if n > 0 {
            let shares: Vec<String> =
                self.tiers.iter().map(|(t, k)| format!("{t} {:.0} %", *k as f64 * 100.0 / n as f64)).collect();
            out.push_str(&format!("requests per tier: {}\n", shares.join(", ")));
        }
        if self.eval_spend.0 > 0 {
            out.push_str(&format!(
                "evaluation spend (reference and judge calls, its own budget, not in the totals): ${}\n",
                usd(self.eval_spend)
            ));
        }
        out
    }
}
