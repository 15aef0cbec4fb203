//! Who owns a budget reservation, and for how long: each process that reserves registers an
//! instance (a row in `gateway_instances`) whose lease its heartbeat renews; a reservation whose
//! owner's lease has expired belongs to a process that died (`kill -9`, a crash, a host lost)
//! or froze, and any live gateway's sweeper releases it. Two gateways sharing one PostgreSQL
//! never release each other's reservations while both heartbeats run.
//!
//! Times come from each process's clock: gateways sharing a database need clocks that agree to
//! well within a lease (NTP does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use triage_core::cost::NanoUsd;

use crate::budget::{BudgetLine, Period, KEY_COLS};
use crate::{Store, StoreError};

/// A budget line's key: (scope, subject, tier, period, period start).
type LineKey = (String, String, String, String, String);
/// Reservations held on a budget line: (count, count whose gateway instance is gone or expired,
/// oldest creation time in ms since the epoch).
type HeldCounts = (u64, u64, Option<u64>);

/// The lease of a process that has not set one: a gateway's budget comes back at most this long
/// (plus one sweep interval, a third of it) after the process holding it died.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// A reservation older than this is released by the sweeper even when its owner is alive: a
/// backstop for a settlement that failed for good (the database unreachable through every
/// retry). No request of a gateway runs this long.
pub const MAX_RESERVATION_AGE: Duration = Duration::from_secs(3600);

/// An instance row left this long after its lease expired, with no reservations, is deleted.
const FORGET_INSTANCE_AFTER_MS: u64 = 86_400_000;

/// This process's lease and its background settlements.
#[derive(Debug)]
pub(crate) struct Leases {
    /// The instance id (a UUID, new for every [`Store::connect`]).
    pub(crate) instance: String,
    started_ms: u64,
    ttl_ms: AtomicU64,
    /// Until when the lease is known to be held (ms since the epoch; 0: never registered).
    valid_until: AtomicU64,
    /// Settlements and releases spawned and not yet finished.
    pending: AtomicUsize,
    /// SQLite: this process's budget transactions, one at a time.
    writer: tokio::sync::Mutex<()>,
}

impl Leases {
    pub(crate) fn new() -> Leases {
        Leases {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            started_ms: crate::now_ms(),
            ttl_ms: AtomicU64::new(DEFAULT_LEASE.as_millis() as u64),
            valid_until: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

/// Decrements the pending count when a spawned settlement ends (or is dropped).
pub(crate) struct Pending(Arc<Leases>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a sweep or a release did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Reservations released.
    pub reservations: u64,
    /// Budget-line rows released (a reservation has one per line).
    pub rows: u64,
    /// The amount given back, summed over lines.
    pub amount: NanoUsd,
}

/// One budget counter with its live reservations, for `triage budgets`.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    /// `key`, `user`, `team`, `global` or `evals`.
    pub scope: String,
    /// The key id, user, team, or `*`.
    pub subject: String,
    /// The tier of an allowance (`None`: every tier).
    pub tier: Option<String>,
    /// `day` or `month`.
    pub period: String,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period_start: String,
    /// Spent in the period.
    pub spent: NanoUsd,
    /// Reserved now.
    pub reserved: NanoUsd,
    /// Reservations held now.
    pub reservations: u64,
    /// Of which held by a process whose lease has expired (the sweeper releases them).
    pub stale: u64,
    /// Creation time of the oldest reservation (ms since the epoch).
    pub oldest_ms: Option<u64>,
}

type HeldRow = (String, i64, BudgetLine, String, NanoUsd);

/// A value bound to a `?` of [`Store::reservation_rows`]' condition.
enum Bind {
    Text(String),
    Int(i64),
}

impl Store {
    /// This process's instance id: the owner of the reservations it makes.
    pub fn instance_id(&self) -> &str {
        &self.leases.instance
    }

    /// The lease duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.leases.ttl_ms.load(Ordering::Relaxed))
    }

    /// Sets the lease duration (at least 300 ms), used from the next renewal on.
    pub fn set_lease(&self, lease: Duration) {
        self.leases.ttl_ms.store((lease.as_millis() as u64).max(300), Ordering::Relaxed);
    }

    /// Writes this instance's lease: held until now plus the lease duration.
    ///
    /// Errors: [`StoreError`].
    pub async fn renew_lease(&self) -> Result<(), StoreError> {
        let now = crate::now_ms();
        let until = now + self.leases.ttl_ms.load(Ordering::Relaxed);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        sqlx::query(&self.sql(
            "INSERT INTO gateway_instances (id, host, pid, started_ms, heartbeat_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms, expires_ms = excluded.expires_ms",
        ))
        .bind(self.instance_id())
        .bind(host)
        .bind(i64::from(std::process::id()))
        .bind(self.leases.started_ms as i64)
        .bind(now as i64)
        .bind(until as i64)
        .execute(&self.pool)
        .await?;
        self.leases.valid_until.store(until, Ordering::Release);
        Ok(())
    }

    /// Renews the lease unless it is held for at least half its duration more (the heartbeat
    /// keeps it so; a process without one renews here, before reserving).
    pub(crate) async fn ensure_lease(&self) -> Result<(), StoreError> {
        let ttl = self.leases.ttl_ms.load(Ordering::Relaxed);
        if self.leases.valid_until.load(Ordering::Acquire) < crate::now_ms() + ttl / 2 {
            self.renew_lease().await?;
        }
        Ok(())
    }

    /// Starts the lease keeper of a gateway: sets the lease duration, registers the instance,
    /// releases what expired leases hold (a previous process's, at start-up), then every third
    /// of `lease` renews the lease and sweeps again. The task ends when aborted.
    pub fn spawn_lease_keeper(&self, lease: Duration) -> tokio::task::JoinHandle<()> {
        self.set_lease(lease);
        let ms = self.leases.ttl_ms.load(Ordering::Relaxed);
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ms / 3));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.renew_lease().await {
                    tracing::error!(error = %e, "budget lease renewal failed");
                }
                match store.sweep(crate::now_ms()).await {
                    Ok(r) if r.reservations > 0 => tracing::warn!(
                        reservations = r.reservations,
                        amount_usd = %r.amount,
                        "released budget reservations of gateways that stopped without settling them"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "budget reservation sweep failed"),
                }
            }
        })
    }

    /// Releases every reservation whose owner's lease expired before `now_ms` (or whose owner
    /// is unknown), and every reservation older than [`MAX_RESERVATION_AGE`]; this process's
    /// own live reservations are never touched. Each reservation in one transaction; a
    /// reservation settled meanwhile is not released twice.
    ///
    /// Errors: [`StoreError`].
    pub async fn sweep(&self, now_ms: u64) -> Result<Released, StoreError> {
        let too_old = now_ms.saturating_sub(MAX_RESERVATION_AGE.as_millis() as u64);
        let rows = self
            .reservation_rows(
                "(r.instance_id <> ? AND (i.id IS NULL OR i.expires_ms < ?)) OR r.created_ms < ?",
                &[Bind::Text(self.instance_id().to_owned()), Bind::Int(now_ms as i64), Bind::Int(too_old as i64)],
            )
            .await?;
        let released = self.release_rows(rows).await?;
        if released.reservations > 0 {
            metrics::counter!("triage_budget_reservations_swept_total").increment(released.reservations);
        }
        sqlx::query(&self.sql(
            "DELETE FROM gateway_instances WHERE expires_ms < ? AND id NOT IN (SELECT instance_id FROM budget_reservations)",
        ))
        .bind(now_ms.saturating_sub(FORGET_INSTANCE_AFTER_MS) as i64)
        .execute(&self.pool)
        .await?;
        Ok(released)
    }

    /// Releases the reservations of virtual key `key_id` (every line of each, not only the
    /// key's own budget): those whose owner's lease has expired, or all of them with `live`
    /// (a request still running then settles its real cost, but its reservation is gone).
    ///
    /// Errors: [`StoreError`].
    pub async fn release_key(&self, key_id: &str, live: bool, now_ms: u64) -> Result<Released, StoreError> {
        let of_key = "r.reservation_id IN (SELECT reservation_id FROM budget_reservations WHERE key_id = ? OR (scope = 'key' AND subject = ?))";
        let mut binds = vec![Bind::Text(key_id.to_owned()), Bind::Text(key_id.to_owned())];
        let cond = if live {
            of_key.to_owned()
        } else {
            binds.push(Bind::Int(now_ms as i64));
            format!("{of_key} AND (i.id IS NULL OR i.expires_ms < ?)")
        };
        let rows = self.reservation_rows(&cond, &binds).await?;
        self.release_rows(rows).await
    }

    /// Releases this instance's remaining reservations and removes its lease (a clean
    /// shutdown, after [`Store::drain`]).
    ///
    /// Errors: [`StoreError`].
    pub async fn retire(&self) -> Result<Released, StoreError> {
        let me = self.instance_id().to_owned();
        let rows = self.reservation_rows("r.instance_id = ?", &[Bind::Text(me.clone())]).await?;
        let released = self.release_rows(rows).await?;
        sqlx::query(&self.sql("DELETE FROM gateway_instances WHERE id = ?")).bind(&me).execute(&self.pool).await?;
        self.leases.valid_until.store(0, Ordering::Release);
        Ok(released)
    }

    /// Waits until every reservation and settlement spawned by this process has finished, for at most
    /// `timeout`. Returns how many are still pending.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.leases.pending.load(Ordering::Acquire);
            if n == 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reservations, settlements and releases spawned and not yet finished.
    pub fn pending_settlements(&self) -> usize {
        self.leases.pending.load(Ordering::Acquire)
    }

    /// On SQLite (one writer per database), a turn for one budget transaction of this process;
    /// `None` on PostgreSQL (row locks).
    pub(crate) async fn budget_writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            crate::Backend::Sqlite => Some(self.leases.writer.lock().await),
            crate::Backend::Postgres => None,
        }
    }

    /// Counts a spawned reservation or settlement until the guard drops.
    pub(crate) fn pending_guard(&self) -> Pending {
        self.leases.pending.fetch_add(1, Ordering::AcqRel);
        Pending(self.leases.clone())
    }

    /// Spawns the settlement of reservation `id` (retried with backoff on database errors).
    pub(crate) fn spawn_settle(&self, id: String, lines: Vec<(BudgetLine, String)>, amount: NanoUsd, actual: NanoUsd) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(reservation = %id, "no runtime to settle a budget reservation; its lease sweep will");
            return;
        };
        let pending = self.pending_guard();
        let store = self.clone();
        handle.spawn(async move {
            let _pending = pending;
            let mut wait = Duration::from_millis(50);
            for attempt in 1..=6 {
                match store.settle_rows(&id, &lines, amount, actual).await {
                    Ok(_) => return,
                    Err(e) if attempt == 6 => {
                        tracing::error!(error = %e, reservation = %id, "budget settlement failed; the reservation is released by the sweep after its maximum age");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, reservation = %id, attempt, "budget settlement failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        });
    }

    /// Reservation rows (joined with their owner) matching `cond` with `binds`, grouped by
    /// reservation.
    async fn reservation_rows(&self, cond: &str, binds: &[Bind]) -> Result<BTreeMap<String, Vec<HeldRow>>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT r.reservation_id, r.n, r.scope, r.subject, r.tier, r.period, r.period_start, r.amount_nanos FROM budget_reservations r LEFT JOIN gateway_instances i ON i.id = r.instance_id WHERE {cond}"
        ))
        .into_owned();
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(t) => q.bind(t.as_str()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut out: BTreeMap<String, Vec<HeldRow>> = BTreeMap::new();
        for r in rows {
            let id: String = r.try_get("reservation_id")?;
            let n: i32 = r.try_get("n")?;
            let tier: String = r.try_get("tier")?;
            let period = match r.try_get::<String, _>("period")?.as_str() {
                "day" => Period::Day,
                _ => Period::Month,
            };
            let line = BudgetLine {
                scope: r.try_get("scope")?,
                subject: r.try_get("subject")?,
                tier: (!tier.is_empty()).then_some(tier),
                period,
                limit: NanoUsd(0),
                soft: 1.0,
            };
            let start: String = r.try_get("period_start")?;
            let amount = NanoUsd(r.try_get::<i64, _>("amount_nanos")?.max(0) as u64);
            out.entry(id.clone()).or_default().push((id, i64::from(n), line, start, amount));
        }
        Ok(out)
    }

    /// Releases the given rows, one transaction per reservation.
    async fn release_rows(&self, rows: BTreeMap<String, Vec<HeldRow>>) -> Result<Released, StoreError> {
        let mut total = Released::default();
        for (id, rows) in rows {
            let mut released_here = 0;
            let _writer = self.budget_writer().await;
            let mut tx = self.pool.begin().await?;
            let held: Vec<(BudgetLine, String)> = rows.iter().map(|(_, _, l, s, _)| (l.clone(), s.clone())).collect();
            for i in crate::budget::lock_order(&held) {
                let (_, n, line, start, amount) = &rows[i];
                let deleted =
                    sqlx::query(&self.sql("DELETE FROM budget_reservations WHERE reservation_id = ? AND n = ?"))
                        .bind(&id)
                        .bind(*n as i32)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if deleted != 1 {
                    continue;
                }
                sqlx::query(
                    &self.sql(&format!("UPDATE budget_usage SET reserved_nanos = reserved_nanos - ? WHERE {KEY_COLS}")),
                )
                .bind(amount.0 as i64)
                .bind(&line.scope)
                .bind(&line.subject)
                .bind(line.tier.clone().unwrap_or_default())
                .bind(line.period.as_str())
                .bind(start)
                .execute(&mut *tx)
                .await?;
                released_here += 1;
                total.amount = total.amount.saturating_add(*amount);
            }
            tx.commit().await?;
            if released_here > 0 {
                total.reservations += 1;
                total.rows += released_here;
            }
        }
        Ok(total)
    }

    /// Every budget counter of the current day and month (at `now_ms`), with its live
    /// reservations: how many, how many held by expired leases, and the oldest's creation time.
    ///
    /// Errors: [`StoreError`].
    pub async fn budget_status(&self, now_ms: u64) -> Result<Vec<BudgetStatus>, StoreError> {
        let (day, _) = Period::Day.window(now_ms);
        let (month, _) = Period::Month.window(now_ms);
        let rows = sqlx::query(&self.sql(
            "SELECT scope, subject, tier, period, period_start, spent_nanos, reserved_nanos FROM budget_usage WHERE (period = 'day' AND period_start = ?) OR (period = 'month' AND period_start = ?) OR reserved_nanos <> 0 ORDER BY scope, subject, tier, period, period_start",
        ))
        .bind(&day)
        .bind(&month)
        .fetch_all(&self.pool)
        .await?;
        let held = sqlx::query(&self.sql(
            "SELECT r.scope, r.subject, r.tier, r.period, r.period_start, COUNT(*) AS n, MIN(r.created_ms) AS oldest, CAST(SUM(CASE WHEN i.id IS NULL OR i.expires_ms < ? THEN 1 ELSE 0 END) AS BIGINT) AS stale FROM budget_reservations r LEFT JOIN gateway_instances i ON i.id = r.instance_id GROUP BY r.scope, r.subject, r.tier, r.period, r.period_start",
        ))
        .bind(now_ms as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut live: BTreeMap<LineKey, HeldCounts> = BTreeMap::new();
        for r in held {
            let k = (
                r.try_get("scope")?,
                r.try_get("subject")?,
                r.try_get("tier")?,
                r.try_get("period")?,
                r.try_get("period_start")?,
            );
            let n: i64 = r.try_get("n")?;
            let stale: i64 = r.try_get("stale")?;
            let oldest: Option<i64> = r.try_get("oldest")?;
            live.insert(k, (n.max(0) as u64, stale.max(0) as u64, oldest.map(|o| o.max(0) as u64)));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let k: (String, String, String, String, String) = (
                r.try_get("scope")?,
                r.try_get("subject")?,
                r.try_get("tier")?,
                r.try_get("period")?,
                r.try_get("period_start")?,
            );
            let (reservations, stale, oldest_ms) = live.get(&k).copied().unwrap_or((0, 0, None));
            let (scope, subject, tier, period, period_start) = k;
            out.push(BudgetStatus {
                scope,
                subject,
                tier: (!tier.is_empty()).then_some(tier),
                period,
                period_start,
                spent: NanoUsd(r.try_get::<i64, _>("spent_nanos")?.max(0) as u64),
                reserved: NanoUsd(r.try_get::<i64, _>("reserved_nanos")?.max(0) as u64),
                reservations,
                stale,
                oldest_ms,
            });
        }
        Ok(out)
    }

    /// How many reservation rows exist (every line of every live reservation), for tests and
    /// checks: after every request has ended and been settled, zero.
    ///
    /// Errors: [`StoreError`].
    pub async fn reservation_rows_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM budget_reservations").fetch_one(&self.pool).await?;
        Ok(n.max(0) as u64)
    }
}
