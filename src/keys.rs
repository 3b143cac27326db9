//! Virtual keys kept in the state store (created with `portcullis keys create`), next to the
//! static ones in the config file. Only the SHA-256 of a key is stored; the key is shown once.

use crate::state::{StateError, StateStore};
use filters::auth::{sha256, VIRTUAL_KEY_PREFIX};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Hash map holding key records, field = hex SHA-256 of the key.
pub const KEYS_MAP: &str = "virtual_keys";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    pub name: String,
    pub proxies: Vec<String>,
    pub providers: Vec<String>,
    pub created_at: u64,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A new random key: `pc-` and 256 bits of entropy in hex.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{VIRTUAL_KEY_PREFIX}{}", hex::encode(bytes))
}

/// Store a new key; returns the key (to show once) and its id (the hash, hex).
pub async fn create(
    store: &dyn StateStore,
    name: &str,
    proxies: Vec<String>,
    providers: Vec<String>,
) -> Result<(String, String), StateError> {
    let key = generate();
    let id = hex::encode(sha256(key.as_bytes()));
    let rec = StoredKey { name: name.to_string(), proxies, providers, created_at: now(), revoked_at: None };
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

    /// The active record of `key`, if any.
    pub async fn find(&self, key: &str) -> Result<Option<StoredKey>, StateError> {
        let digest = sha256(key.as_bytes());
        if let Ok(cache) = self.cache.lock() {
            if let Some((rec, at)) = cache.get(&digest) {
                if at.elapsed() < CACHE_TTL {
                    return Ok(rec.clone());
                }
            }
        }
        let rec = self
            .store
            .hget(KEYS_MAP, &hex::encode(digest))
            .await?
            .and_then(|v| serde_json::from_slice::<StoredKey>(&v).ok())
            .filter(|k| k.revoked_at.is_none());
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

    #[tokio::test]
    async fn create_find_revoke() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new("t:"));
        let (key, id) = create(&*store, "ci", vec!["default".into()], vec!["mock".into()]).await.unwrap();
        assert!(key.starts_with("pc-") && key.len() == 67);
        let lookup = KeyLookup::new(store.clone());
        assert_eq!(lookup.find(&key).await.unwrap().unwrap().name, "ci");
        assert!(lookup.find("pc-nope").await.unwrap().is_none());
        assert_eq!(revoke(&*store, &id[..10]).await.unwrap(), vec![id.clone()]);
        assert!(KeyLookup::new(store.clone()).find(&key).await.unwrap().is_none());
        assert!(list(&*store).await.unwrap()[0].1.revoked_at.is_some());
    }
}
