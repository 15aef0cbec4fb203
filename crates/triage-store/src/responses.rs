//! Stored responses of the Responses API, for `previous_response_id` (table
//! `stored_responses`, migration 0005).
//!
//! Each row holds only what its response added to the conversation (the request's new input
//! items, then the output items, a JSON array as text) and the id of the response it continued,
//! so a long agent session costs its length once, not once per turn. [`Store::conversation`]
//! walks the chain back in one recursive query (SQLite and PostgreSQL both have `WITH
//! RECURSIVE`). The table is bounded by [`Store::sweep_responses`]: rows older than an age, then
//! the oldest beyond a row count; a conversation whose older part was swept is reported as
//! [`Conversation::Incomplete`], never served half.

use sqlx::Row;

use crate::{Store, StoreError};

/// The deepest chain [`Store::conversation`] follows (turns of one conversation).
pub const MAX_CHAIN: i64 = 100_000;

/// One response to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The response id (`resp_...`).
    pub id: String,
    /// The response it continued (`previous_response_id`), if any.
    pub previous_id: Option<String>,
    /// The virtual key that made it (`None` without keys).
    pub key_id: Option<String>,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
    /// What it added to the conversation: a JSON array of Responses items, as text.
    pub items: String,
}

/// What [`Store::conversation`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// The chain's rows' items (JSON arrays as text), oldest first.
    Found(Vec<String>),
    /// No such response (or one of another key: the same answer, so ids cannot be probed).
    Unknown,
    /// The response is stored but an earlier one of its conversation is gone (swept): the id
    /// of the first missing one.
    Incomplete(String),
}

impl Store {
    /// Stores one response (an id stored twice keeps the first).
    ///
    /// Errors: [`StoreError`].
    pub async fn put_response(&self, r: &StoredResponse) -> Result<(), StoreError> {
        sqlx::query(&self.sql(
            "INSERT INTO stored_responses (id, previous_id, key_id, created_ms, items) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        ))
        .bind(&r.id)
        .bind(r.previous_id.as_deref())
        .bind(r.key_id.as_deref())
        .bind(r.created_ms)
        .bind(&r.items)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The conversation that ends with response `id`, as `key_id` may see it: every row of
    /// the chain must belong to that key (`None`: rows without a key).
    ///
    /// Errors: [`StoreError`].
    pub async fn conversation(&self, id: &str, key_id: Option<&str>) -> Result<Conversation, StoreError> {
        let rows = sqlx::query(&self.sql(
            "WITH RECURSIVE chain (id, previous_id, key_id, items, depth) AS ( \
               SELECT id, previous_id, key_id, items, CAST(0 AS BIGINT) FROM stored_responses WHERE id = ? \
               UNION ALL \
               SELECT r.id, r.previous_id, r.key_id, r.items, c.depth + 1 FROM stored_responses r \
                 JOIN chain c ON r.id = c.previous_id WHERE c.depth < ? \
             ) SELECT id, previous_id, key_id, items, depth FROM chain ORDER BY depth DESC",
        ))
        .bind(id)
        .bind(MAX_CHAIN)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(Conversation::Unknown);
        }
        let mut items = Vec::with_capacity(rows.len());
        for (n, row) in rows.iter().enumerate() {
            let owner: Option<String> = row.try_get("key_id")?;
            if owner.as_deref() != key_id {
                return Ok(Conversation::Unknown);
            }
            if n == 0 {
                if let Some(missing) = row.try_get::<Option<String>, _>("previous_id")? {
                    return Ok(Conversation::Incomplete(missing));
                }
            }
            items.push(row.try_get::<String, _>("items")?);
        }
        Ok(Conversation::Found(items))
    }

    /// Deletes the responses made before `older_than_ms` (Unix milliseconds), then the oldest
    /// beyond `max_rows`; returns how many rows went.
    ///
    /// Errors: [`StoreError`].
    pub async fn sweep_responses(&self, older_than_ms: i64, max_rows: u64) -> Result<u64, StoreError> {
        let aged = sqlx::query(&self.sql("DELETE FROM stored_responses WHERE created_ms < ?"))
            .bind(older_than_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // The creation time of the newest row that must go (the `max_rows`-th newest is kept).
        let cut: Option<i64> = sqlx::query(
            &self.sql("SELECT created_ms FROM stored_responses ORDER BY created_ms DESC, id DESC LIMIT 1 OFFSET ?"),
        )
        .bind(i64::try_from(max_rows).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get::<i64, _>("created_ms"))
        .transpose()?;
        let counted = match cut {
            Some(cut) => sqlx::query(&self.sql("DELETE FROM stored_responses WHERE created_ms <= ?"))
                .bind(cut)
                .execute(&self.pool)
                .await?
                .rows_affected(),
            None => 0,
        };
        Ok(aged + counted)
    }

    /// Number of stored responses.
    ///
    /// Errors: [`StoreError`].
    pub async fn stored_responses(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM stored_responses").fetch_one(&self.pool).await?;
        Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
    }
}
