//! Who is calling and what they may use: the virtual key from `Authorization: Bearer` or
//! `x-api-key` ([`authenticate`]; 401 when missing or unknown), looked up by hash and cached for
//! 30 s ([`KeyCache`]), dropped from the cache when a key is revoked
//! ([`spawn_revocation_watch`]); the models a key may use ([`allowed`]).

use std::time::Duration;

use axum::http::HeaderMap;
use triage_core::catalog::{AuthMode, Catalog, ModelId};
use triage_store::{KeyRecord, Store};

use crate::error::GatewayError;

const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_CAPACITY: u64 = 10_000;

/// Recently looked-up keys (secret → record, or `None` for an unknown key), so most requests
/// skip the database: at most 10,000 entries, each kept 30 s. Admission and eviction are
/// frequency-based (moka's TinyLFU), so a caller cycling through unknown keys does not push out
/// the keys in use.
#[derive(Debug, Clone)]
pub struct KeyCache {
    entries: moka::sync::Cache<String, Option<KeyRecord>>,
}

impl Default for KeyCache {
    fn default() -> KeyCache {
        KeyCache::new(KEY_CACHE_CAPACITY, KEY_CACHE_TTL)
    }
}

impl KeyCache {
    /// A cache of at most `capacity` keys, each kept `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> KeyCache {
        KeyCache { entries: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build() }
    }

    /// The cached lookup of `secret`: `Some(None)` for a key known not to exist.
    pub fn get(&self, secret: &str) -> Option<Option<KeyRecord>> {
        self.entries.get(secret)
    }

    /// Caches the lookup of `secret`.
    pub fn insert(&self, secret: &str, record: Option<KeyRecord>) {
        self.entries.insert(secret.to_owned(), record);
    }

    /// Forgets every cached key: the next request of each key reads the store again.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

/// With `auth = "keys"` and a store: every `server.key_recheck_ms`, reads the store's revocation
/// stamp (how many keys are revoked, and the latest revocation) and, when it changed, drops the
/// cached keys, so a key revoked by another gateway on the same database or by `triage keys
/// revoke` stops working within about that long rather than the cache's 30 s.
pub fn spawn_revocation_watch(
    mode: AuthMode,
    every: Duration,
    store: Option<Store>,
    keys: KeyCache,
) -> Option<tokio::task::JoinHandle<()>> {
    if mode != AuthMode::Keys {
        return None;
    }
    let store = store?;
    Some(tokio::spawn(async move {
        let mut last = store.revocation_stamp().await.ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.revocation_stamp().await {
                Ok(stamp) if last.as_ref() != Some(&stamp) => {
                    if last.is_some() {
                        tracing::info!(revoked = stamp.0, "keys were revoked: key cache cleared");
                    }
                    keys.clear();
                    last = Some(stamp);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read key revocations"),
            }
        }
    }))
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)).filter(|k| !k.is_empty())
}

/// The caller's virtual key (`None` with `auth = "none"`): looked up in `keys`, else in `store`
/// (and cached). `AppState::authenticate` calls it with the gateway's own.
///
/// Errors: [`GatewayError::Unauthorized`] for a missing, unknown or revoked key.
pub async fn authenticate(
    mode: AuthMode,
    keys: &KeyCache,
    store: Option<&Store>,
    headers: &HeaderMap,
) -> Result<Option<KeyRecord>, GatewayError> {
    if mode == AuthMode::None {
        return Ok(None);
    }
    let Some(secret) = presented_key(headers) else {
        return Err(GatewayError::Unauthorized(
            "missing API key: send a Triage virtual key as `Authorization: Bearer <key>` or `x-api-key`".into(),
        ));
    };
    let record = match keys.get(secret) {
        Some(r) => r,
        None => {
            let store = store.ok_or_else(|| GatewayError::Unauthorized("no key store".into()))?;
            let r = store.find_key(secret).await.map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                GatewayError::Unauthorized("the key store is unavailable".into())
            })?;
            keys.insert(secret, r.clone());
            r
        }
    };
    match record {
        Some(k) if !k.revoked => Ok(Some(k)),
        Some(_) => Err(GatewayError::Unauthorized("this API key has been revoked".into())),
        None => Err(GatewayError::Unauthorized("invalid API key".into())),
    }
}

/// True when `key` may use `model` (its tier and id are allowed).
pub fn allowed(catalog: &Catalog, key: Option<&KeyRecord>, model: ModelId) -> bool {
    let Some(k) = key else { return true };
    let m = &catalog.models()[model];
    (k.tiers.is_empty() || k.tiers.contains(&catalog.tiers()[m.tier]))
        && (k.models.is_empty() || k.models.contains(&m.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_x_api_key_are_both_read() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer tr-abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("tr-abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "tr-def".parse().unwrap());
        assert_eq!(presented_key(&h), Some("tr-def"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    fn record(id: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            user: "user-1".into(),
            team: "team-1".into(),
            tiers: vec![],
            models: vec![],
            admin: false,
            budget_day: None,
            budget_month: None,
            revoked: false,
        }
    }

    /// The old cache forgot every key once it held 10,000: a caller sending unknown keys flushed
    /// the keys in use. Now the cache stays bounded and the key in use stays cached.
    #[test]
    fn a_flood_of_unknown_keys_stays_bounded_and_keeps_the_key_in_use() {
        let cache = KeyCache::new(100, Duration::from_secs(600));
        cache.insert("tr-in-use", Some(record("key_in_use")));
        for i in 0..5_000 {
            // As `authenticate` does: a miss, then the store's answer (unknown) cached.
            let unknown = format!("tr-unknown-{i}");
            assert_eq!(cache.get(&unknown), None);
            cache.insert(&unknown, None);
            if i % 10 == 0 {
                assert_eq!(cache.get("tr-in-use").flatten().map(|k| k.id), Some("key_in_use".to_owned()), "at {i}");
            }
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.entry_count() <= 100, "{} entries", cache.entries.entry_count());
        assert_eq!(cache.get("tr-in-use").flatten().map(|k| k.id), Some("key_in_use".to_owned()));
    }

    #[test]
    fn clearing_forgets_every_key() {
        let cache = KeyCache::default();
        cache.insert("tr-a", Some(record("key_a")));
        cache.insert("tr-b", None);
        assert_eq!(cache.get("tr-b"), Some(None));
        cache.clear();
        assert_eq!((cache.get("tr-a"), cache.get("tr-b")), (None, None));
    }
}
