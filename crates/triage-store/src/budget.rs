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

/// A budget line as the database keys it: the line and the start of its period.
pub(crate) type Held = (BudgetLine, String);

/// An amount reserved on every budget line of one request: a row per line in
/// `budget_reservations`, owned by this process's lease ([`Store::instance_id`]).
///
/// It is a guard: settle it with [`Store::settle`] or [`Reservation::settle_in_background`];
/// dropped unsettled (the request's future was dropped at any await point, a task was aborted),
/// it releases itself on a spawned task. If the process dies first, its lease expires and a live
/// gateway's sweeper releases it ([`Store::sweep`]).
#[derive(Debug)]
pub struct Reservation {
    id: String,
    lines: Vec<Held>,
    amount: NanoUsd,
    /// Set while the reservation is held in the database and not yet settled.
    store: Option<Store>,
}

impl Reservation {
    /// The amount reserved on each line.
    pub fn amount(&self) -> NanoUsd {
        self.amount
    }

    /// An empty reservation (no budget applies).
    pub fn none() -> Reservation {
        Reservation { id: String::new(), lines: Vec::new(), amount: NanoUsd(0), store: None }
    }

    /// True when no budget applies.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The reservation's id (its rows in `budget_reservations`); empty for [`Reservation::none`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the reservation by the real cost `actual` (`NanoUsd(0)` releases it) on a spawned
    /// task that outlives the caller (retried on database errors; [`Store::drain`] waits for
    /// it). Nothing happens for an empty reservation or outside a Tokio runtime (the lease
    /// sweep releases it then).
    pub fn settle_in_background(mut self, actual: NanoUsd) {
        if let Some(store) = self.store.take() {
            let lines = std::mem::take(&mut self.lines);
            store.spawn_settle(std::mem::take(&mut self.id), lines, self.amount, actual);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let lines = std::mem::take(&mut self.lines);
            store.spawn_settle(std::mem::take(&mut self.id), lines, self.amount, NanoUsd(0));
        }
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

pub(crate) const KEY_COLS: &str = "scope = ? AND subject = ? AND tier = ? AND period = ? AND period_start = ?";

/// The order in which a transaction locks budget rows: the same in every transaction (reserve,
/// settle, sweep), so that two of them never wait for each other in a cycle (PostgreSQL
/// deadlocks).
pub(crate) fn lock_order(lines: &[Held]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            let (l, start) = &lines[i];
            (&l.scope, &l.subject, l.tier.as_deref().unwrap_or_default(), l.period.as_str(), start, i)
        };
        key(a).cmp(&key(b))
    });
    order
}

/// Who holds a reservation: the request (for `triage budgets`) and the key it came with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holder<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The virtual key id, if any.
    pub key_id: Option<&'a str>,
}

impl Store {
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

    /// [`Store::reserve_for`] with no request id or key.
    ///
    /// Errors: [`StoreError`].
    pub async fn reserve(
        &self,
        lines: &[BudgetLine],
        amount: NanoUsd,
        now_ms: u64,
    ) -> Result<Result<Reservation, Exceeded>, StoreError> {
        self.reserve_for(lines, amount, now_ms, Holder::default()).await
    }

    /// Reserves `amount` on every line in one transaction: each line's counter with a
    /// conditional update (`spent + reserved + amount <= limit`, atomic in both databases, so
    /// concurrent requests can never pass a limit together) and a row per line owned by this
    /// process's lease. All lines or none: if one would pass its limit, nothing is reserved and
    /// the first such line (in the order given) is returned.
    ///
    /// Cancel-safe: the work runs on a spawned task, so dropping this future at any point leaves
    /// either nothing reserved or a [`Reservation`] that releases itself when the task ends.
    ///
    /// Errors: [`StoreError`] (nothing is reserved then).
    pub async fn reserve_for(
        &self,
        lines: &[BudgetLine],
        amount: NanoUsd,
        now_ms: u64,
        holder: Holder<'_>,
    ) -> Result<Result<Reservation, Exceeded>, StoreError> {
        if lines.is_empty() {
            return Ok(Ok(Reservation::none()));
        }
        let store = self.clone();
        let lines = lines.to_vec();
        let request_id = holder.request_id.to_owned();
        let key_id = holder.key_id.map(str::to_owned);
        let pending = store.pending_guard();
        let task = tokio::spawn(async move {
            let _pending = pending;
            store.reserve_in_transaction(lines, amount, now_ms, &request_id, key_id.as_deref()).await
        });
        task.await.map_err(|e| StoreError::Interrupted(e.to_string()))?
    }

    async fn reserve_in_transaction(
        &self,
        lines: Vec<BudgetLine>,
        amount: NanoUsd,
        now_ms: u64,
        request_id: &str,
        key_id: Option<&str>,
    ) -> Result<Result<Reservation, Exceeded>, StoreError> {
        self.ensure_lease().await?;
        let held: Vec<Held> = lines
            .into_iter()
            .map(|l| {
                let (start, _) = l.period.window(now_ms);
                (l, start)
            })
            .collect();
        // SQLite has one writer: queue this process's budget transactions here rather than in
        // SQLite's busy handler, which sleeps up to 100 ms between tries.
        let _writer = self.budget_writer().await;
        let mut tx = self.pool.begin().await?;
        let mut over: Option<usize> = None;
        let add_sql = self
            .sql(&format!(
                "UPDATE budget_usage SET reserved_nanos = reserved_nanos + ? WHERE {KEY_COLS} AND spent_nanos + reserved_nanos + ? <= ?"
            ))
            .into_owned();
        let add = |line: &BudgetLine, start: &str| {
            sqlx::query(&add_sql)
                .bind(amount.0 as i64)
                .bind(line.scope.clone())
                .bind(line.subject.clone())
                .bind(line.tier.clone().unwrap_or_default())
                .bind(line.period.as_str())
                .bind(start.to_owned())
                .bind(amount.0 as i64)
                .bind(line.limit.0 as i64)
        };
        for i in lock_order(&held) {
            let (line, start) = &held[i];
            let mut added = add(line, start).execute(&mut *tx).await?.rows_affected();
            if added != 1 {
                // The period's counter may not exist yet: create it and try once more.
                sqlx::query(&self.sql(
                    "INSERT INTO budget_usage (scope, subject, tier, period, period_start, spent_nanos, reserved_nanos) VALUES (?, ?, ?, ?, ?, 0, 0) ON CONFLICT (scope, subject, tier, period, period_start) DO NOTHING",
                ))
                .bind(&line.scope)
                .bind(&line.subject)
                .bind(line.tier.clone().unwrap_or_default())
                .bind(line.period.as_str())
                .bind(start)
                .execute(&mut *tx)
                .await?;
                added = add(line, start).execute(&mut *tx).await?.rows_affected();
            }
            if added != 1 {
                // Go on: the line reported is the first over its limit in the caller's order.
                over = Some(over.map_or(i, |o| o.min(i)));
            }
        }
        if let Some(i) = over {
            let (line, start) = &held[i];
            let row = sqlx::query(
                &self.sql(&format!("SELECT spent_nanos + reserved_nanos AS used FROM budget_usage WHERE {KEY_COLS}")),
            )
            .bind(&line.scope)
            .bind(&line.subject)
            .bind(line.tier.clone().unwrap_or_default())
            .bind(line.period.as_str())
            .bind(start)
            .fetch_one(&mut *tx)
            .await?;
            let used: i64 = row.try_get("used")?;
            tx.rollback().await?;
            let (_, resets_ms) = line.period.window(now_ms);
            return Ok(Err(Exceeded {
                line: line.clone(),
                used: NanoUsd(used.max(0) as u64),
                resets_at: crate::rfc3339(resets_ms),
                resets_in_ms: resets_ms.saturating_sub(now_ms),
            }));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let created = crate::now_ms() as i64;
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; held.len()].join(", ");
        let sql = self.sql(&format!(
            "INSERT INTO budget_reservations (reservation_id, n, scope, subject, tier, period, period_start, amount_nanos, instance_id, request_id, key_id, created_ms) VALUES {values}"
        ))
        .into_owned();
        let mut q = sqlx::query(&sql);
        for (n, (line, start)) in held.iter().enumerate() {
            q = q
                .bind(id.as_str())
                .bind(n as i32)
                .bind(line.scope.as_str())
                .bind(line.subject.as_str())
                .bind(line.tier.clone().unwrap_or_default())
                .bind(line.period.as_str())
                .bind(start.as_str())
                .bind(amount.0 as i64)
                .bind(self.instance_id())
                .bind(request_id)
                .bind(key_id)
                .bind(created);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Ok(Reservation { id, lines: held, amount, store: Some(self.clone()) }))
    }

    /// Replaces a reservation by the real cost (`NanoUsd(0)` releases it), in one transaction:
    /// its rows are deleted and, if they were still there, the reserved amount moves out of every
    /// line; `actual` is added to every line's spend in any case (a reservation swept while
    /// its request was still running still records what the request cost). Settling twice, or
    /// after a sweep, never releases twice.
    ///
    /// Errors: [`StoreError`]; the settlement is then retried in the background.
    pub async fn settle(&self, mut r: Reservation, actual: NanoUsd) -> Result<(), StoreError> {
        if r.store.is_none() {
            return Ok(());
        }
        match self.settle_rows(&r.id, &r.lines, r.amount, actual).await {
            Ok(_) => {
                r.store = None;
                Ok(())
            }
            Err(e) => {
                r.settle_in_background(actual);
                Err(e)
            }
        }
    }

    /// The settlement transaction of reservation `id` over `lines`.
    pub(crate) async fn settle_rows(
        &self,
        id: &str,
        lines: &[Held],
        amount: NanoUsd,
        actual: NanoUsd,
    ) -> Result<(NanoUsd, usize), StoreError> {
        let _writer = self.budget_writer().await;
        let mut tx = self.pool.begin().await?;
        // A reservation's rows are written together and deleted together (here, by a sweep or a
        // release), each in one transaction: all of them are there, or none.
        let deleted = sqlx::query(&self.sql("DELETE FROM budget_reservations WHERE reservation_id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let free = if deleted > 0 { amount.0 } else { 0 };
        let released = if deleted > 0 {
            (NanoUsd(amount.0.saturating_mul(lines.len() as u64)), lines.len())
        } else {
            (NanoUsd(0), 0)
        };
        if free > 0 || actual.0 > 0 {
            for i in lock_order(lines) {
                let (line, start) = &lines[i];
                sqlx::query(&self.sql(&format!(
                    "UPDATE budget_usage SET reserved_nanos = reserved_nanos - ?, spent_nanos = spent_nanos + ? WHERE {KEY_COLS}"
                )))
                .bind(free as i64)
                .bind(actual.0 as i64)
                .bind(&line.scope)
                .bind(&line.subject)
                .bind(line.tier.clone().unwrap_or_default())
                .bind(line.period.as_str())
                .bind(start)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(released)
    }
}
