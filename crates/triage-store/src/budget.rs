//! Budget counters: atomic reservations before a call, settlement at the real cost after it.

use sqlx::Row;
use triage_core::cost::NanoUsd;

use crate::{Store, StoreError, Utc};

/// A budget period (UTC calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC month.
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The period containing `ms` (`YYYY-MM-DD` or `YYYY-MM`), and when the next one starts
    /// (ms since the epoch).
    pub fn window(self, ms: u64) -> (String, u64) {
        let t = Utc::from_ms(ms);
        match self {
            Period::Day => (t.date(), (ms / 86_400_000 + 1) * 86_400_000),
            Period::Month => {
                let (y, m) = if t.month == 12 { (t.year + 1, 1) } else { (t.year, t.month + 1) };
                (t.month_str(), crate::time::ms_of_date(y, m, 1))
            }
        }
    }
}

/// One budget that applies to a request: who (`scope`/`subject`), which tier (`None` = all),
/// which period, the hard limit and the soft fraction.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetLine {
    /// `key`, `user`, `team` or `global`.
    pub scope: String,
    /// The key id, user, or team name (`*` for global).
    pub subject: String,
    /// Only requests routed to this tier count (`None`: every tier).
    pub tier: Option<String>,
    /// The period.
    pub period: Period,
    /// Hard limit.
    pub limit: NanoUsd,
    /// Fraction of the limit (0–1) past which requests step down a tier.
    pub soft: f64,
}

impl BudgetLine {
    /// Human description, e.g. `team eng monthly frontier budget of $20`.
    pub fn describe(&self) -> String {
        let period = match self.period {
            Period::Day => "daily",
            Period::Month => "monthly",
        };
        let tier = self.tier.as_deref().map(|t| format!(" {t}")).unwrap_or_default();
        format!("{} {} {period}{tier} budget of ${}", self.scope, self.subject, self.limit)
    }
}

/// Reserved amounts, to settle or release.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    lines: Vec<(BudgetLine, String)>,
    amount: NanoUsd,
}

impl Reservation {
    /// The amount reserved on each line.
    pub fn amount(&self) -> NanoUsd {
        self.amount
    }

    /// An empty reservation (no budget applies).
    pub fn none() -> Reservation {
        Reservation { lines: Vec::new(), amount: NanoUsd(0) }
    }

    /// True when no budget applies.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A budget a reservation would overrun.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    /// The budget.
    pub line: BudgetLine,
    /// Spent plus reserved, before this request.
    pub used: NanoUsd,
    /// When the period resets (RFC 3339).
    pub resets_at: String,
    /// Milliseconds until then.
    pub resets_in_ms: u64,
}

const KEY_COLS: &str = "scope = ? AND subject = ? AND tier = ? AND period = ? AND period_start = ?";

impl Store {
    async fn ensure_row(&self, line: &BudgetLine, start: &str) -> Result<(), StoreError> {
        sqlx::query(&self.sql(
            "INSERT INTO budget_usage (scope, subject, tier, period, period_start, spent_nanos, reserved_nanos) VALUES (?, ?, ?, ?, ?, 0, 0) ON CONFLICT (scope, subject, tier, period, period_start) DO NOTHING",
        ))
        .bind(&line.scope)
        .bind(&line.subject)
        .bind(line.tier.clone().unwrap_or_default())
        .bind(line.period.as_str())
        .bind(start)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spent and reserved on `line` in the period containing `now_ms`.
    ///
    /// Errors: [`StoreError`].
    pub async fn budget_used(&self, line: &BudgetLine, now_ms: u64) -> Result<(NanoUsd, NanoUsd), StoreError> {
        let (start, _) = line.period.window(now_ms);
        let row =
            sqlx::query(&self.sql(&format!("SELECT spent_nanos, reserved_nanos FROM budget_usage WHERE {KEY_COLS}")))
                .bind(&line.scope)
                .bind(&line.subject)
                .bind(line.tier.clone().unwrap_or_default())
                .bind(line.period.as_str())
                .bind(&start)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => (
                NanoUsd(r.try_get::<i64, _>("spent_nanos")?.max(0) as u64),
                NanoUsd(r.try_get::<i64, _>("reserved_nanos")?.max(0) as u64),
            ),
            None => (NanoUsd(0), NanoUsd(0)),
        })
    }

    /// Reserves `amount` on every line atomically per line; if one would pass its limit, the
    /// lines already reserved are released and the overrun line is returned.
    ///
    /// Errors: [`StoreError`].
    pub async fn reserve(
        &self,
        lines: &[BudgetLine],
        amount: NanoUsd,
        now_ms: u64,
    ) -> Result<Result<Reservation, Exceeded>, StoreError> {
        let mut done: Vec<(BudgetLine, String)> = Vec::with_capacity(lines.len());
        for line in lines {
            let (start, resets_ms) = line.period.window(now_ms);
            self.ensure_row(line, &start).await?;
            let r = sqlx::query(&self.sql(&format!(
                "UPDATE budget_usage SET reserved_nanos = reserved_nanos + ? WHERE {KEY_COLS} AND spent_nanos + reserved_nanos + ? <= ?"
            )))
            .bind(amount.0 as i64)
            .bind(&line.scope)
            .bind(&line.subject)
            .bind(line.tier.clone().unwrap_or_default())
            .bind(line.period.as_str())
            .bind(&start)
            .bind(amount.0 as i64)
            .bind(line.limit.0 as i64)
            .execute(&self.pool)
            .await?;
            if r.rows_affected() != 1 {
                let (spent, reserved) = self.budget_used(line, now_ms).await?;
                self.settle(&Reservation { lines: done, amount }, NanoUsd(0)).await?;
                return Ok(Err(Exceeded {
                    line: line.clone(),
                    used: spent.saturating_add(reserved),
                    resets_at: crate::rfc3339(resets_ms),
                    resets_in_ms: resets_ms.saturating_sub(now_ms),
                }));
            }
            done.push((line.clone(), start));
        }
        Ok(Ok(Reservation { lines: done, amount }))
    }

    /// Replaces a reservation by the real cost (`NanoUsd(0)` releases it).
    ///
    /// Errors: [`StoreError`].
    pub async fn settle(&self, r: &Reservation, actual: NanoUsd) -> Result<(), StoreError> {
        for (line, start) in &r.lines {
            sqlx::query(&self.sql(&format!(
                "UPDATE budget_usage SET reserved_nanos = reserved_nanos - ?, spent_nanos = spent_nanos + ? WHERE {KEY_COLS}"
            )))
            .bind(r.amount.0 as i64)
            .bind(actual.0 as i64)
            .bind(&line.scope)
            .bind(&line.subject)
            .bind(line.tier.clone().unwrap_or_default())
            .bind(line.period.as_str())
            .bind(start)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
