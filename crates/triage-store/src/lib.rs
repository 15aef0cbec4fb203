//! Triage's database: the spend ledger, virtual keys, budget counters, production
//! evaluation's results and feedback, and stored responses (`previous_response_id`).
//!
//! One code path for SQLite (the embedded default, a file in WAL mode) and PostgreSQL (for
//! several gateway instances sharing budgets), through sqlx's `Any` driver. The schema lives in
//! `migrations/`, versioned and applied at start-up. Money is integer nano-dollars (see
//! `triage_core::cost`); times are RFC 3339 UTC text, which sorts like time.
//!
//! A budget reservation is one transaction over every budget line of a request: a conditional
//! `UPDATE` per line (`... WHERE spent + reserved + amount <= limit`, atomic in both databases,
//! so concurrent requests, from one gateway or many, can never together pass a limit; shared
//! case C29) and a row per line owned by the process's lease (`lease`), so that what a dead
//! process held is given back.
#![deny(missing_docs)]

mod budget;
mod evals;
mod evals_report;
mod keys;
mod lease;
mod ledger;
mod report;
mod responses;
mod time;

use std::borrow::Cow;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

pub use budget::{BudgetLine, Exceeded, Holder, Period, Reservation};
pub use evals::{EvalRecord, EvalTexts, Feedback, FeedbackRow, RequestOwner};
pub use evals_report::{EvalGroup, EvalGroupBy, EvalReport};
pub use keys::{KeyRecord, NewKey};
pub use lease::{BudgetStatus, Released, DEFAULT_LEASE, MAX_RESERVATION_AGE};
pub use ledger::{AttemptRecord, GroupBy, Ledger, RequestRecord, SpendRow};
pub use report::Report;
pub use responses::{Conversation, StoredResponse, MAX_CHAIN};
pub use time::{iso_week, ms_of_rfc3339, now_ms, rfc3339, Utc};

/// A database error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or refused a statement.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A database task ended before its answer (the runtime shutting down).
    #[error("database task interrupted: {0}")]
    Interrupted(String),
    /// The URL names no supported database.
    #[error("unsupported database URL \"{0}\" (use sqlite://PATH or postgres://...)")]
    Url(String),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: `?` placeholders.
    Sqlite,
    /// PostgreSQL: `$1` placeholders.
    Postgres,
}

/// The migrations in `migrations/` (`NNNN_name.sql`, applied in order of `NNNN`), embedded in
/// the binary at build time: a new migration is a new file, nothing else to edit.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A connection pool to the database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    leases: std::sync::Arc<lease::Leases>,
}

/// `url` as it may be shown in a message or a log: a password in its user info is replaced by
/// `***` (`postgres://triage:s3cret@db:5432/x` → `postgres://triage:***@db:5432/x`); anything
/// else is unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The user info ends at the authority's last '@' (a password may contain '@').
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let Some(colon) = rest[..at].find(':') else { return url.to_owned() };
    format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..])
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` — created if missing, WAL mode — or `postgres://...`)
    /// and applies the migrations.
    ///
    /// Errors: [`StoreError`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            let url = if rest.contains('?') { url.to_owned() } else { format!("sqlite://{rest}?mode=rwc") };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let mut opts = AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 4 } else { 16 });
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        if let Err(first) = MIGRATOR.run(&pool).await {
            // Another process (a second gateway, or `triage keys` beside a running one) may be
            // applying the same migration right now; once it has, this run finds it applied.
            tracing::debug!(error = %first, "migration raced another process; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            MIGRATOR.run(&pool).await?;
        }
        Ok(Store { pool, backend, leases: std::sync::Arc::new(lease::Leases::new()) })
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `sql` with `?` placeholders rewritten to `$1, $2, ...` for PostgreSQL.
    fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        match self.backend {
            Backend::Sqlite => Cow::Borrowed(sql),
            Backend::Postgres => {
                let mut out = String::with_capacity(sql.len() + 8);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod evals_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod responses_tests;
#[cfg(test)]
mod tests;
