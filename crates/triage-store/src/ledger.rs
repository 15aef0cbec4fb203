//! The ledger: one row per request and per upstream attempt, written in the background.
//!
//! [`Ledger::record`] only queues the row (no I/O on the request path, never waits); a writer
//! task commits queued rows in batches (one transaction per batch of at most 1,000 rows, at most
//! every 50 ms, with multi-row `INSERT`s, on one pooled connection that the writer keeps).
//! [`Ledger::shutdown`] writes everything queued before
//! it returns, so a clean shutdown loses nothing. Rows never hold prompt or completion text.
//!
//! The queue is bounded: it holds at most [`QUEUE_CAPACITY`] rows, so a database that cannot
//! keep up costs a bounded amount of memory (a row is about 1 KiB) instead of growing without
//! limit. When it is full, [`Ledger::record`] drops the row rather than make the request wait:
//! every dropped row is counted ([`Ledger::dropped`] and the
//! `triage_ledger_rows_dropped_total` counter) and logged at `error` level, at most once a second
//! with the running total, so a loss is never silent. Budget reservations and settlements do not
//! go through this queue; a dropped row loses the request's report line, not its budget effect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Row};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use triage_core::cost::{NanoUsd, TokenUsage};

use crate::{rfc3339, Store, StoreError, Utc};

/// Rows the ledger queue holds before [`Ledger::record`] drops new ones: 8,192 rows, about
/// 8 MiB; at 10,000 requests a second that absorbs 0.8 s of a writer that has stalled.
pub const QUEUE_CAPACITY: usize = 8192;

/// Rows per transaction.
const BATCH_ROWS: usize = 1000;

/// Rows per `INSERT` statement, at most. 64 request rows bind 1,856 parameters (SQLite allows
/// 32,766, PostgreSQL 65,535). Shorter remainders are written in power-of-two pieces, so each
/// table has at most 7 statement shapes for the statement caches.
const ROWS_PER_STATEMENT: usize = 64;

/// How often, at most, a dropped row is logged.
const DROP_LOG_INTERVAL_MS: u64 = 1000;

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// Catalog model id.
    pub model: String,
    /// Provider name.
    pub provider: String,
    /// `200`, an upstream status, or a failure or skip name.
    pub outcome: String,
    /// Time to the upstream's answer headers, ms.
    pub latency_ms: f64,
}

/// One request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestRecord {
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// Arrival time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Virtual key id.
    pub key_id: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Team.
    pub team: Option<String>,
    /// `role:<name>` the request used, if any.
    pub role: Option<String>,
    /// `chat_completions` or `messages`.
    pub endpoint: String,
    /// The `model` field as sent.
    pub requested_model: String,
    /// Tier that served it.
    pub tier: Option<String>,
    /// Catalog model that served it.
    pub model: Option<String>,
    /// Provider that served it.
    pub provider: Option<String>,
    /// The route reason.
    pub route_reason: Option<String>,
    /// The router's difficulty score, when a scorer ran.
    pub score: Option<f64>,
    /// Sensitive-content kinds found (comma-separated), never the content.
    pub sensitivity: Option<String>,
    /// Token counts.
    pub usage: TokenUsage,
    /// Cost at the serving model's prices.
    pub cost: NanoUsd,
    /// What the same tokens would have cost on the baseline (frontier) model.
    pub baseline_cost: NanoUsd,
    /// True when the upstream reported no usage and the counts are Triage's estimate.
    pub usage_estimated: bool,
    /// Whole request, ms.
    pub latency_ms: f64,
    /// Time to first streamed token, ms.
    pub ttft_ms: Option<f64>,
    /// HTTP status, or `stream_error` / `cancelled`.
    pub status: String,
    /// Streamed.
    pub stream: bool,
    /// Every attempt.
    pub attempts: Vec<AttemptRecord>,
    /// The ledger kind: `request` (a client's request; also when empty) or `eval` (a call made
    /// by production evaluation, paid from its own budget and kept apart in spend reports).
    pub kind: String,
}

enum Msg {
    Record(Box<RequestRecord>),
    Flush(oneshot::Sender<()>),
}

/// Drop accounting shared by every clone of a [`Ledger`].
#[derive(Debug, Default)]
struct Drops {
    /// Rows dropped since start.
    total: AtomicU64,
    /// When a drop was last logged, ms since the Unix epoch.
    logged_ms: AtomicU64,
}

/// Handle to the background ledger writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    drops: Arc<Drops>,
}

impl Ledger {
    /// Starts the writer task on `store`, with a queue of [`QUEUE_CAPACITY`] rows.
    pub fn spawn(store: Store) -> Ledger {
        Ledger::with_capacity(store, QUEUE_CAPACITY)
    }

    /// Starts the writer task on `store` with a queue of `capacity` rows (at least 1).
    pub fn with_capacity(store: Store, capacity: usize) -> Ledger {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(writer(store, rx));
        Ledger { tx, drops: Arc::default() }
    }

    /// Queues a row; never blocks or waits. The row is written within about 50 ms, unless the
    /// queue is full (or the writer has stopped): then it is dropped, counted and logged (see
    /// the module docs).
    pub fn record(&self, r: RequestRecord) {
        let why = match self.tx.try_send(Msg::Record(Box::new(r))) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "the ledger queue is full (the database is not keeping up)",
            Err(TrySendError::Closed(_)) => "the ledger writer has stopped",
        };
        let total = self.drops.total.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("triage_ledger_rows_dropped_total").increment(1);
        let now = crate::now_ms();
        let last = self.drops.logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_LOG_INTERVAL_MS
            && self.drops.logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::error!(dropped_total = total, capacity = self.tx.max_capacity(), "{why}: request rows dropped");
        }
    }

    /// Rows dropped so far because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.drops.total.load(Ordering::Relaxed)
    }

    /// Waits until every row queued before this call is written (waiting for room in the queue
    /// first, if it is full).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes everything queued, then returns (the writer keeps running for late rows).
    pub async fn shutdown(&self) {
        self.flush().await;
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<RequestRecord> = Vec::with_capacity(BATCH_ROWS);
    // One connection for every batch (see `Store::write_batch_kept`).
    let mut conn = None;
    while let Some(first) = rx.recv().await {
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        fn push(m: Msg, batch: &mut Vec<RequestRecord>, flushes: &mut Vec<oneshot::Sender<()>>) {
            match m {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(ack) => flushes.push(ack),
            }
        }
        push(first, &mut batch, &mut flushes);
        // Gather what else arrives within 50 ms (or up to 1,000 rows) into one transaction.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while batch.len() < BATCH_ROWS && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => push(m, &mut batch, &mut flushes),
                _ => break,
            }
        }
        // At most 1,000 rows a transaction: a burst is written in steady batches instead of one
        // ever-growing one (the rest stays queued for the next round).
        while batch.len() < BATCH_ROWS {
            match rx.try_recv() {
                Ok(m) => push(m, &mut batch, &mut flushes),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let mut tries = 0;
            loop {
                match store.write_batch_kept(&mut conn, &batch).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 => {
                        tries += 1;
                        tracing::warn!(error = %e, rows = batch.len(), "ledger write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, rows = batch.len(), "ledger write failed; rows lost");
                        break;
                    }
                }
            }
            batch.clear();
            if batch.capacity() > BATCH_ROWS {
                batch.shrink_to(BATCH_ROWS);
            }
        }
        for ack in flushes {
            let _ = ack.send(());
        }
    }
}

/// Splits `n` rows into statement sizes: whole [`ROWS_PER_STATEMENT`] pieces, then powers of two.
pub(crate) fn statement_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= ROWS_PER_STATEMENT { ROWS_PER_STATEMENT } else { 1 << n.ilog2() };
        n -= size;
        Some(size)
    })
}

/// `INSERT {head} VALUES {row}, {row}, ... {tail}` with `rows` copies of `row`.
fn multi_insert(head: &str, row: &str, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * (row.len() + 2) + 8);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

const REQUEST_HEAD: &str = "INSERT INTO requests (request_id, ts, day, key_id, user_id, team, role, endpoint, requested_model, tier, model, provider, route_reason, score, sensitivity, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_nanos, baseline_cost_nanos, usage_estimated, latency_ms, ttft_ms, status, attempts, stream, cache_write_tokens, kind)";
// Optional numbers go through NULLIF: PostgreSQL caches a statement's parameter types, and a
// NULL bound first would fix the wrong one.
const REQUEST_ROW: &str =
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, -1.0), ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, -1.0), ?, ?, ?, ?, ?)";
const REQUEST_TAIL: &str = "ON CONFLICT (request_id) DO NOTHING";
const ATTEMPT_HEAD: &str = "INSERT INTO attempts (request_id, n, model, provider, outcome, latency_ms)";
const ATTEMPT_ROW: &str = "(?, ?, ?, ?, ?, ?)";
const ATTEMPT_TAIL: &str = "ON CONFLICT (request_id, n) DO NOTHING";

/// A spend report grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// UTC day.
    Day,
    /// User.
    User,
    /// Team.
    Team,
    /// Tier.
    Tier,
    /// Model.
    Model,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::User => "COALESCE(user_id, '-')",
            GroupBy::Team => "COALESCE(team, '-')",
            GroupBy::Tier => "COALESCE(tier, '-')",
            GroupBy::Model => "COALESCE(model, '-')",
        }
    }
}

/// One row of a spend report.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    /// The group (a day, user, team, tier or model).
    pub key: String,
    /// Requests.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost.
    pub cost: NanoUsd,
    /// Cost had every request gone to the baseline (frontier) model.
    pub baseline_cost: NanoUsd,
}

impl Store {
    /// Writes request rows and their attempts in one transaction, with multi-row `INSERT`s of up
    /// to 64 rows. Idempotent per request id (a row written twice is kept once, also within one
    /// call).
    ///
    /// Errors: [`StoreError`]; nothing of the batch is written then.
    pub async fn write_batch(&self, rows: &[RequestRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_rows(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::write_batch`] on a connection kept across calls: `conn` is acquired from the pool
    /// when `None`, and dropped (back to the pool, or closed) after an error. The ledger writer
    /// keeps one connection so that only its SQLite page cache fills as the file grows, instead
    /// of every pooled connection's in turn.
    ///
    /// Errors: [`StoreError`]; nothing of the batch is written then.
    pub(crate) async fn write_batch_kept(
        &self,
        conn: &mut Option<PoolConnection<Any>>,
        rows: &[RequestRecord],
    ) -> Result<(), StoreError> {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(self.pool.acquire().await?),
        };
        let result = async {
            let mut tx = sqlx::Connection::begin(&mut **c).await?;
            self.insert_rows(&mut tx, rows).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            *conn = None;
        }
        result
    }

    /// The multi-row `INSERT`s of `rows` and their attempts, inside the caller's transaction.
    async fn insert_rows(&self, tx: &mut AnyConnection, rows: &[RequestRecord]) -> Result<(), StoreError> {
        let mut rest = rows;
        for size in statement_sizes(rows.len()) {
            let (piece, after) = rest.split_at(size);
            rest = after;
            let sql = self.sql(&multi_insert(REQUEST_HEAD, REQUEST_ROW, size, REQUEST_TAIL)).into_owned();
            let mut q = sqlx::query(&sql);
            for r in piece {
                q = q
                    .bind(r.request_id.as_str())
                    .bind(rfc3339(r.ts_ms))
                    .bind(Utc::from_ms(r.ts_ms).date())
                    .bind(r.key_id.as_deref())
                    .bind(r.user.as_deref())
                    .bind(r.team.as_deref())
                    .bind(r.role.as_deref())
                    .bind(r.endpoint.as_str())
                    .bind(r.requested_model.as_str())
                    .bind(r.tier.as_deref())
                    .bind(r.model.as_deref())
                    .bind(r.provider.as_deref())
                    .bind(r.route_reason.as_deref())
                    .bind(r.score.unwrap_or(-1.0))
                    .bind(r.sensitivity.as_deref())
                    .bind(r.usage.input as i64)
                    .bind(r.usage.cached_input as i64)
                    .bind(r.usage.output as i64)
                    .bind(r.usage.reasoning as i64)
                    .bind(r.cost.0 as i64)
                    .bind(r.baseline_cost.0 as i64)
                    .bind(i32::from(r.usage_estimated))
                    .bind(r.latency_ms)
                    .bind(r.ttft_ms.unwrap_or(-1.0))
                    .bind(r.status.as_str())
                    .bind(r.attempts.len() as i32)
                    .bind(i32::from(r.stream))
                    .bind(r.usage.cache_write as i64)
                    .bind(if r.kind.is_empty() { "request" } else { r.kind.as_str() });
            }
            q.execute(&mut *tx).await?;
        }
        let attempts: Vec<(&str, i32, &AttemptRecord)> = rows
            .iter()
            .flat_map(|r| r.attempts.iter().enumerate().map(move |(n, a)| (r.request_id.as_str(), n as i32, a)))
            .collect();
        let mut rest = attempts.as_slice();
        for size in statement_sizes(attempts.len()) {
            let (piece, after) = rest.split_at(size);
            rest = after;
            let sql = self.sql(&multi_insert(ATTEMPT_HEAD, ATTEMPT_ROW, size, ATTEMPT_TAIL)).into_owned();
            let mut q = sqlx::query(&sql);
            for (request_id, n, a) in piece {
                q = q
                    .bind(*request_id)
                    .bind(*n)
                    .bind(a.model.as_str())
                    .bind(a.provider.as_str())
                    .bind(a.outcome.as_str())
                    .bind(a.latency_ms);
            }
            q.execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Totals per group since `since` (RFC 3339 or `YYYY-MM-DD`; `None` for all time).
    ///
    /// Errors: [`StoreError`].
    pub async fn spend(&self, by: GroupBy, since: Option<&str>) -> Result<Vec<SpendRow>, StoreError> {
        let col = by.column();
        let sql = format!(
            "SELECT {col} AS k, COUNT(*) AS n, CAST(SUM(input_tokens) AS BIGINT) AS i, CAST(SUM(cached_input_tokens) AS BIGINT) AS ci, CAST(SUM(output_tokens) AS BIGINT) AS o, CAST(SUM(cost_nanos) AS BIGINT) AS c, CAST(SUM(baseline_cost_nanos) AS BIGINT) AS b FROM requests WHERE ts >= ? AND kind = 'request' GROUP BY {col} ORDER BY {col}"
        );
        let rows = sqlx::query(&self.sql(&sql)).bind(since.unwrap_or("")).fetch_all(&self.pool).await?;
        let u = |r: &sqlx::any::AnyRow, c: &str| -> Result<u64, StoreError> {
            Ok(r.try_get::<Option<i64>, _>(c)?.unwrap_or(0).max(0) as u64)
        };
        rows.iter()
            .map(|r| {
                Ok(SpendRow {
                    key: r.try_get("k")?,
                    requests: u(r, "n")?,
                    input_tokens: u(r, "i")?,
                    cached_input_tokens: u(r, "ci")?,
                    output_tokens: u(r, "o")?,
                    cost: NanoUsd(u(r, "c")?),
                    baseline_cost: NanoUsd(u(r, "b")?),
                })
            })
            .collect()
    }

    /// The attempts of one request, in order: (model, provider, outcome).
    ///
    /// Errors: [`StoreError`].
    pub async fn attempts_of(&self, request_id: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows =
            sqlx::query(&self.sql("SELECT model, provider, outcome FROM attempts WHERE request_id = ? ORDER BY n"))
                .bind(request_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok((r.try_get("model")?, r.try_get("provider")?, r.try_get("outcome")?))).collect()
    }

    /// One request row's status, model and cost, for tests and `triage spend --request`.
    ///
    /// Errors: [`StoreError`].
    pub async fn request_summary(
        &self,
        request_id: &str,
    ) -> Result<Option<(String, Option<String>, NanoUsd, TokenUsage, bool)>, StoreError> {
        let row = sqlx::query(&self.sql(
            "SELECT status, model, cost_nanos, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, usage_estimated FROM requests WHERE request_id = ?",
        ))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let n = |c: &str| -> Result<u64, StoreError> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
        let usage = TokenUsage {
            input: n("input_tokens")?,
            cached_input: n("cached_input_tokens")?,
            cache_write: n("cache_write_tokens")?,
            output: n("output_tokens")?,
            reasoning: n("reasoning_tokens")?,
        };
        Ok(Some((
            r.try_get("status")?,
            r.try_get("model")?,
            NanoUsd(n("cost_nanos")?),
            usage,
            r.try_get::<i32, _>("usage_estimated")? != 0,
        )))
    }

    /// Number of request rows.
    ///
    /// Errors: [`StoreError`].
    pub async fn request_count(&self) -> Result<u64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM requests").fetch_one(&self.pool).await?;
        Ok(r.try_get::<i64, _>("n")?.max(0) as u64)
    }
}
