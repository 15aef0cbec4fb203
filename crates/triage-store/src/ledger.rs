//! The ledger: one row per request and per upstream attempt, written in the background.
//!
//! [`Ledger::record`] only queues the row (no I/O on the request path); a writer task commits
//! queued rows in batches (one transaction per batch, at most every 50 ms). [`Ledger::shutdown`]
//! writes everything queued before it returns, so a clean shutdown loses nothing. Rows never hold
//! prompt or completion text.

use std::time::Duration;

use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use triage_core::cost::{NanoUsd, TokenUsage};

use crate::{rfc3339, Store, StoreError, Utc};

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
}

enum Msg {
    Record(Box<RequestRecord>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the background ledger writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Ledger {
    /// Starts the writer task on `store`.
    pub fn spawn(store: Store) -> Ledger {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store, rx));
        Ledger { tx }
    }

    /// Queues a row. Never blocks; the row is written within about 50 ms.
    pub fn record(&self, r: RequestRecord) {
        if self.tx.send(Msg::Record(Box::new(r))).is_err() {
            tracing::error!("ledger writer has stopped; a request row is lost");
        }
    }

    /// Waits until every row queued before this call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes everything queued, then returns (the writer keeps running for late rows).
    pub async fn shutdown(&self) {
        self.flush().await;
    }
}

async fn writer(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut batch: Vec<RequestRecord> = Vec::new();
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
        while batch.len() < 1000 && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => push(m, &mut batch, &mut flushes),
                _ => break,
            }
        }
        // At most 1,000 rows a transaction: a burst is written in steady batches instead of one
        // ever-growing one (the rest stays queued for the next round).
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(m) => push(m, &mut batch, &mut flushes),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let mut tries = 0;
            loop {
                match store.write_batch(&batch).await {
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
        }
        for ack in flushes {
            let _ = ack.send(());
        }
    }
}

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
    /// Writes request rows and their attempts in one transaction. Idempotent per request id
    /// (a row written twice is kept once).
    ///
    /// Errors: [`StoreError`].
    pub async fn write_batch(&self, rows: &[RequestRecord]) -> Result<(), StoreError> {
        let insert_request = self.sql(
            "INSERT INTO requests (request_id, ts, day, key_id, user_id, team, role, endpoint, requested_model, tier, model, provider, route_reason, score, sensitivity, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_nanos, baseline_cost_nanos, usage_estimated, latency_ms, ttft_ms, status, attempts, stream, cache_write_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, -1.0), ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, -1.0), ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        );
        let insert_attempt = self.sql(
            "INSERT INTO attempts (request_id, n, model, provider, outcome, latency_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, n) DO NOTHING",
        );
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(&insert_request)
                .bind(&r.request_id)
                .bind(rfc3339(r.ts_ms))
                .bind(Utc::from_ms(r.ts_ms).date())
                .bind(r.key_id.clone())
                .bind(r.user.clone())
                .bind(r.team.clone())
                .bind(r.role.clone())
                .bind(&r.endpoint)
                .bind(&r.requested_model)
                .bind(r.tier.clone())
                .bind(r.model.clone())
                .bind(r.provider.clone())
                .bind(r.route_reason.clone())
                // Optional numbers go through NULLIF: PostgreSQL caches a statement's parameter
                // types, and a NULL bound first would fix the wrong one.
                .bind(r.score.unwrap_or(-1.0))
                .bind(r.sensitivity.clone())
                .bind(r.usage.input as i64)
                .bind(r.usage.cached_input as i64)
                .bind(r.usage.output as i64)
                .bind(r.usage.reasoning as i64)
                .bind(r.cost.0 as i64)
                .bind(r.baseline_cost.0 as i64)
                .bind(i32::from(r.usage_estimated))
                .bind(r.latency_ms)
                .bind(r.ttft_ms.unwrap_or(-1.0))
                .bind(&r.status)
                .bind(r.attempts.len() as i32)
                .bind(i32::from(r.stream))
                .bind(r.usage.cache_write as i64)
                .execute(&mut *tx)
                .await?;
            for (n, a) in r.attempts.iter().enumerate() {
                sqlx::query(&insert_attempt)
                    .bind(&r.request_id)
                    .bind(n as i32)
                    .bind(&a.model)
                    .bind(&a.provider)
                    .bind(&a.outcome)
                    .bind(a.latency_ms)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Totals per group since `since` (RFC 3339 or `YYYY-MM-DD`; `None` for all time).
    ///
    /// Errors: [`StoreError`].
    pub async fn spend(&self, by: GroupBy, since: Option<&str>) -> Result<Vec<SpendRow>, StoreError> {
        let col = by.column();
        let sql = format!(
            "SELECT {col} AS k, COUNT(*) AS n, CAST(SUM(input_tokens) AS BIGINT) AS i, CAST(SUM(cached_input_tokens) AS BIGINT) AS ci, CAST(SUM(output_tokens) AS BIGINT) AS o, CAST(SUM(cost_nanos) AS BIGINT) AS c, CAST(SUM(baseline_cost_nanos) AS BIGINT) AS b FROM requests WHERE ts >= ? GROUP BY {col} ORDER BY {col}"
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
