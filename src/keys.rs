//! Virtual keys kept in the state store (created with `portcullis keys create`), next to the
//! static ones in the config file. Only the SHA-256 of a key is stored; the key is shown once.

use crate::state::{StateError, StateStore};
use filters::auth::{sha256, VIRTUAL_KEY_PREFIX};
use filters::meter::Limit;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Hash map holding key records, field = hex SHA-256 of the key.
pub const KEYS_MAP: &str = "virtual_keys";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub name: String,
    pub proxies: Vec<String>,
    pub providers: Vec<String>,
    /// Named provider keys it uses.
    #[serde(default)]
    pub provider_keys: Vec<String>,
    /// Groups whose routing policy and limits apply.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The key's budgets and rate limits; `None`: the configured `metering.key_limits`.
    #[serde(default)]
    pub limits: Option<Vec<Limit>>,
    pub created_at: u64,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A new random key: `pc-` and 256 bits of entropy in hex.
pub fn generate() -> String {
    crate::oauth::random_secret(VIRTUAL_KEY_PREFIX)
}

/// What a new key may do.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub proxies: Vec<String>,
    pub providers: Vec<String>,
    pub provider_keys: Vec<String>,
    pub groups: Vec<String>,
    pub limits: Option<Vec<Limit>>,
}

/// Store a new key; returns the key (to show once) and its id (the hash, hex).
pub async fn create(store: &dyn StateStore, name: &str, grants: Grants) -> Result<(String, String), StateError> {
    let key = generate();
    let id = hex::encode(sha256(key.as_bytes()));
    let Grants { proxies, providers, provider_keys, groups, limits } = grants;
    let rec = StoredKey {
        name: name.to_string(),
        proxies,
        providers,
        provider_keys,
        groups,
        limits,
        created_at: now(),
        revoked_at: None,
    };
    let value = serde_json::to_vec(&rec).map_err(|e| StateError::Corrupt(e.to_string()))?;
    store.hset(KEYS_MAP, &id, &value).await?;
    Ok((key, id))
}

pub async fn list(store: &dyn StateStore) -> Result<Vec<(String, StoredKey)>, StateError> {
    let mut out: Vec<(String, StoredKey)> = store
        .hgetall(KEYS_MAP)
        .await?
        .into_iter()
        .filter_map(|(id, v)| serde_json::from_slice(&v).ok().map(|k| (id, k)))
        .collect();
    out.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.1.name.cmp(&b.1.name)));
    Ok(out)
}

/// Revoke every active key whose name or id (prefix of at least 8 hex digits) matches.
pub async fn revoke(store: &dyn StateStore, name_or_id: &str) -> Result<Vec<String>, StateError> {
    let mut revoked = Vec::new();
    for (id, mut rec) in list(store).await? {
        let id_match = name_or_id.len() >= 8 && id.starts_with(name_or_id);
        if rec.revoked_at.is_none() && (rec.name == name_or_id || id_match) {
            rec.revoked_at = Some(now());
            let value = serde_json::to_vec(&rec).map_err(|e| StateError::Corrupt(e.to_string()))?;
            store.hset(KEYS_MAP, &id, &value).await?;
            revoked.push(id);
        }
    }
    Ok(revoked)
}

/// How long a stored-key lookup is trusted before asking the store again: bounds both the
/// store load from a busy key and how long a revoked key keeps working on other nodes.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;

/// A lookup result (an active record or none) and when it was fetched.
type CachedLookup = (Option<StoredKey>, Instant);

/// Gateway-side lookups of stored keys with a short cache.
pub struct KeyLookup {
    store: Arc<dyn StateStore>,
    cache: Mutex<HashMap<[u8; 32], CachedLookup>>,
}

impl KeyLookup {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        KeyLookup { store, cache: Mutex::new(HashMap::new()) }
    }

    /// The active record of `key`, if any. With `stale_ok` (failing open), a store outage answers
    /// from the last lookup however old it is, so keys in use before the outage keep working.
    pub async fn find(&self, key: &str, stale_ok: bool) -> Result<Option<StoredKey>, StateError> {
        let digest = sha256(key.as_bytes());
        let cached = self.cache.lock().ok().and_then(|cache| cache.get(&digest).cloned());
        if let Some((rec, at)) = &cached {
            if at.elapsed() < CACHE_TTL {
                return Ok(rec.clone());
            }
        }
        let fetched = match self.store.hget(KEYS_MAP, &hex::encode(digest)).await {
            Ok(v) => v,
            Err(StateError::Unavailable(_)) if stale_ok && cached.is_some() => {
                return Ok(cached.and_then(|(rec, _)| rec));
            }
            Err(e) => return Err(e),
        };
        let rec = fetched.and_then(|v| serde_json::from_slice::<StoredKey>(&v).ok()).filter(|k| k.revoked_at.is_none());
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(digest, (rec.clone(), Instant::now()));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    fn grants() -> Grants {
        Grants { proxies: vec!["default".into()], providers: vec!["mock".into()], ..Grants::default() }
    }

    #[tokio::test]
    async fn create_find_revoke() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new("t:"));
        let (key, id) = create(&*store, "ci", grants()).await.unwrap();
        assert!(key.starts_with("pc-") && key.len() == 67);
        let lookup = KeyLookup::new(store.clone());
        assert_eq!(lookup.find(&key, false).await.unwrap().unwrap().name, "ci");
        assert!(lookup.find("pc-nope", false).await.unwrap().is_none());
        assert_eq!(revoke(&*store, &id[..10]).await.unwrap(), vec![id.clone()]);
        assert!(KeyLookup::new(store.clone()).find(&key, false).await.unwrap().is_none());
        assert!(list(&*store).await.unwrap()[0].1.revoked_at.is_some());
    }

    /// A store whose map reads fail while `down` is set (an outage).
    struct Flaky {
        inner: MemoryStore,
        down: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StateError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                Err(StateError::Unavailable("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait::async_trait]
    impl StateStore for Flaky {
        fn backend(&self) -> &'static str {
            "flaky"
        }
        async fn ping(&self) -> Result<(), StateError> {
            self.check()
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
            self.inner.get(key).await
        }
        async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StateError> {
            self.inner.set(key, value, ttl).await
        }
        async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, StateError> {
            self.inner.set_nx(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<bool, StateError> {
            self.inner.delete(key).await
        }
        async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
            self.inner.take(key).await
        }
        async fn hset(&self, map: &str, field: &str, value: &[u8]) -> Result<(), StateError> {
            self.inner.hset(map, field, value).await
        }
        async fn hget(&self, map: &str, field: &str) -> Result<Option<Vec<u8>>, StateError> {
            self.check()?;
            self.inner.hget(map, field).await
        }
        async fn hdel(&self, map: &str, field: &str) -> Result<bool, StateError> {
            self.inner.hdel(map, field).await
        }
        async fn hgetall(&self, map: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
            self.inner.hgetall(map).await
        }
        async fn window_apply(&self, ops: &[crate::state::WindowOp]) -> Result<crate::state::Applied, StateError> {
            self.inner.window_apply(ops).await
        }
        async fn window_history(
            &self,
            key: &str,
            window: crate::state::Window,
            count: usize,
        ) -> Result<Vec<u64>, StateError> {
            self.inner.window_history(key, window, count).await
        }
        async fn window_add(
            &self,
            key: &str,
            amount: u64,
            limit: u64,
            window: Duration,
        ) -> Result<crate::state::WindowResult, StateError> {
            self.inner.window_add(key, amount, limit, window).await
        }
        async fn window_incr(&self, key: &str, amount: i64, window: Duration) -> Result<i64, StateError> {
            self.inner.window_incr(key, amount, window).await
        }
        async fn window_get(&self, key: &str, window: Duration) -> Result<u64, StateError> {
            self.inner.window_get(key, window).await
        }
    }

    #[tokio::test]
    async fn outage_answers_from_the_last_lookup_only_when_failing_open() {
        let flaky = Arc::new(Flaky { inner: MemoryStore::new("t:"), down: false.into() });
        let store: Arc<dyn StateStore> = flaky.clone();
        let (key, _) = create(&*store, "ci", grants()).await.unwrap();
        let lookup = KeyLookup::new(store.clone());
        assert!(lookup.find(&key, false).await.unwrap().is_some());
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        // Within the cache TTL nothing asks the store.
        assert!(lookup.find(&key, false).await.unwrap().is_some());
        // Past it: failing closed reports the outage, failing open serves the last answer.
        if let Ok(mut c) = lookup.cache.lock() {
            for (_, at) in c.values_mut() {
                *at = at.checked_sub(CACHE_TTL).unwrap_or(*at);
            }
        }
        assert!(matches!(lookup.find(&key, false).await, Err(StateError::Unavailable(_))));
        assert_eq!(lookup.find(&key, true).await.unwrap().map(|k| k.name), Some("ci".into()));
        // A key never seen cannot be vouched for, even failing open.
        assert!(matches!(lookup.find("pc-unseen", true).await, Err(StateError::Unavailable(_))));
    }
}
