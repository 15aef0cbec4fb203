//! Virtual keys: handed to users once, stored only as a SHA-256 hash.

use sha2::{Digest, Sha256};
use sqlx::Row;
use triage_core::cost::NanoUsd;

use crate::{now_ms, rfc3339, Store, StoreError};

/// A key to create.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// The user it belongs to.
    pub user: String,
    /// The user's team.
    pub team: String,
    /// Tiers it may use (empty = all).
    pub tiers: Vec<String>,
    /// Models it may use (empty = all).
    pub models: Vec<String>,
    /// May read `GET /v1/spend` and other admin endpoints.
    pub admin: bool,
    /// Daily budget of this key.
    pub budget_day: Option<NanoUsd>,
    /// Monthly budget of this key.
    pub budget_month: Option<NanoUsd>,
}

/// A stored key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id (`key_...`), safe to log.
    pub id: String,
    /// The user.
    pub user: String,
    /// The team.
    pub team: String,
    /// Allowed tiers (empty = all).
    pub tiers: Vec<String>,
    /// Allowed models (empty = all).
    pub models: Vec<String>,
    /// Admin rights.
    pub admin: bool,
    /// Daily budget.
    pub budget_day: Option<NanoUsd>,
    /// Monthly budget.
    pub budget_month: Option<NanoUsd>,
    /// Revoked keys are refused.
    pub revoked: bool,
}

/// SHA-256 of a key's secret, hex.
fn hash(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn list(s: &str) -> Vec<String> {
    s.split(',').filter(|x| !x.is_empty()).map(str::to_owned).collect()
}

fn nanos(v: Option<i64>) -> Option<NanoUsd> {
    v.map(|n| NanoUsd(n.max(0) as u64))
}

impl Store {
    /// Creates a key; returns its record and its secret (`tr-...`), which is shown once and
    /// never stored.
    ///
    /// Errors: [`StoreError`].
    pub async fn create_key(&self, k: &NewKey) -> Result<(KeyRecord, String), StoreError> {
        let secret = format!("tr-{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let id = format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        sqlx::query(&self.sql(
            "INSERT INTO virtual_keys (id, key_hash, user_id, team, tiers, models, is_admin, budget_day_nanos, budget_month_nanos, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULLIF(?, -1), NULLIF(?, -1), ?)",
        ))
        .bind(&id)
        .bind(hash(&secret))
        .bind(&k.user)
        .bind(&k.team)
        .bind(k.tiers.join(","))
        .bind(k.models.join(","))
        .bind(i32::from(k.admin))
        .bind(k.budget_day.map_or(-1, |n| n.0 as i64))
        .bind(k.budget_month.map_or(-1, |n| n.0 as i64))
        .bind(rfc3339(now_ms()))
        .execute(&self.pool)
        .await?;
        let rec = KeyRecord {
            id,
            user: k.user.clone(),
            team: k.team.clone(),
            tiers: k.tiers.clone(),
            models: k.models.clone(),
            admin: k.admin,
            budget_day: k.budget_day,
            budget_month: k.budget_month,
            revoked: false,
        };
        Ok((rec, secret))
    }

    /// The key whose secret is `secret`, if any (revoked keys included, flagged).
    ///
    /// Errors: [`StoreError`].
    pub async fn find_key(&self, secret: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&self.sql(
            "SELECT id, user_id, team, tiers, models, is_admin, budget_day_nanos, budget_month_nanos, revoked_at FROM virtual_keys WHERE key_hash = ?",
        ))
        .bind(hash(secret))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| record(&r)).transpose()
    }

    /// Every key, newest first.
    ///
    /// Errors: [`StoreError`].
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, team, tiers, models, is_admin, budget_day_nanos, budget_month_nanos, revoked_at FROM virtual_keys ORDER BY created_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// The revocation stamp: how many keys are revoked, and the latest revocation time. A
    /// gateway that caches keys drops its cache when the stamp changes.
    ///
    /// Errors: [`StoreError`].
    pub async fn revocation_stamp(&self) -> Result<(i64, Option<String>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(revoked_at) AS latest FROM virtual_keys WHERE revoked_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get::<i64, _>("n")?, row.try_get::<Option<String>, _>("latest")?))
    }

    /// Revokes key `id`. Returns false if there is no such key.
    ///
    /// Errors: [`StoreError`].
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(&self.sql("UPDATE virtual_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"))
            .bind(rfc3339(now_ms()))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

fn record(r: &sqlx::any::AnyRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        id: r.try_get("id")?,
        user: r.try_get("user_id")?,
        team: r.try_get("team")?,
        tiers: list(&r.try_get::<String, _>("tiers")?),
        models: list(&r.try_get::<String, _>("models")?),
        admin: r.try_get::<i32, _>("is_admin")? != 0,
        budget_day: nanos(r.try_get("budget_day_nanos")?),
        budget_month: nanos(r.try_get("budget_month_nanos")?),
        revoked: r.try_get::<Option<String>, _>("revoked_at")?.is_some(),
    })
}
