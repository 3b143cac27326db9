//! Provider keys stored through the admin API or `portcullis provider-keys`: sealed with
//! AES-256-GCM under the secrets key (`[secrets] key_env`) in the state store, so every node of a
//! cluster reads the same keys and a rotation needs no restart. The key itself is never logged,
//! listed or returned; listings show its last four characters.

use crate::state::{StateError, StateStore};
use filters::sealed::Sealer;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hash map holding the sealed keys, field = the key's name.
pub const VAULT_MAP: &str = "provider_keys";
/// A random value replaced after every change to the vault, so a node rereads (and opens) the
/// whole vault only when it changed, not on every refresh.
const VERSION_KEY: &str = "provider_keys:version";

/// Longest provider key accepted (real ones are under 300 characters).
pub const MAX_KEY_LEN: usize = 4096;

/// Names of users' own keys (`PUT /v1/provider-keys/PROVIDER`) start with this; no other key
/// may, so an admin-made key can never pass for one.
pub const PERSONAL_PREFIX: &str = "personal-";

pub fn is_personal(name: &str) -> bool {
    name.starts_with(PERSONAL_PREFIX)
}

/// The vault name of `user`'s own key for `provider`: one per user and provider, and no user
/// name in it (names show in logs and listings).
pub fn personal_name(user: &str, provider: &str) -> String {
    let digest = filters::auth::sha256(format!("{user}\n{provider}").as_bytes());
    format!("{PERSONAL_PREFIX}{}", &hex::encode(digest)[..24])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredProviderKey {
    pub name: String,
    pub provider: String,
    /// `filters::sealed` value of the API key, bound to name and provider.
    pub sealed: String,
    /// `…` and the key's last four characters, to tell keys apart.
    pub hint: String,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub updated_at: u64,
    pub updated_by: String,
}

/// A key to store (also the admin API's request body). On a rotation, `users`, `groups` and
/// `description` left out keep their stored values.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProviderKey {
    pub name: String,
    pub provider: String,
    pub api_key: String,
    #[serde(default)]
    pub users: Option<Vec<String>>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What [`put`] did.
#[derive(Debug)]
pub enum Put {
    Created(StoredProviderKey),
    Rotated(StoredProviderKey),
    /// A stored key of that name is for another provider: credentials mapped to the name must
    /// not silently reach a different provider, so the change is refused (delete it first).
    OtherProvider(String),
}

/// What a sealed key is bound to: moving it onto another name or provider breaks it.
pub fn aad(name: &str, provider: &str) -> String {
    format!("portcullis/provider-key/v1/{name}/{provider}")
}

fn hint(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if key.chars().count() >= 12 {
        format!("…{tail}")
    } else {
        "…".to_string()
    }
}

/// The API key's form: printable ASCII without spaces, 1 to `MAX_KEY_LEN` characters.
pub fn check_api_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the API key must be 1 to {MAX_KEY_LEN} printable ASCII characters without spaces"));
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seal and store `new`, replacing a key of the same name for the same provider.
pub async fn put(store: &dyn StateStore, sealer: &Sealer, new: NewProviderKey, actor: &str) -> Result<Put, StateError> {
    let old: Option<StoredProviderKey> =
        store.hget(VAULT_MAP, &new.name).await?.and_then(|v| serde_json::from_slice(&v).ok());
    if let Some(o) = old.as_ref().filter(|o| o.provider != new.provider) {
        return Ok(Put::OtherProvider(o.provider.clone()));
    }
    let nonce: [u8; 12] = rand::random();
    let sealed =
        sealer.seal(&aad(&new.name, &new.provider), new.api_key.as_bytes(), nonce).map_err(StateError::Corrupt)?;
    let rec = StoredProviderKey {
        hint: hint(&new.api_key),
        users: new.users.or_else(|| old.as_ref().map(|o| o.users.clone())).unwrap_or_default(),
        groups: new.groups.or_else(|| old.as_ref().map(|o| o.groups.clone())).unwrap_or_default(),
        description: new.description.or_else(|| old.as_ref().and_then(|o| o.description.clone())),
        name: new.name,
        provider: new.provider,
        sealed,
        updated_at: now(),
        updated_by: actor.to_string(),
    };
    let value = serde_json::to_vec(&rec).map_err(|e| StateError::Corrupt(e.to_string()))?;
    store.hset(VAULT_MAP, &rec.name, &value).await?;
    bump_version(store).await?;
    Ok(if old.is_some() { Put::Rotated(rec) } else { Put::Created(rec) })
}

/// After the change it follows (a reader that sees the new version also sees the change). The
/// change is made either way: a failure here is logged, and nodes find it at their next full
/// reread (`FULL_REREAD` in `gateway::provider_keys`).
async fn bump_version(store: &dyn StateStore) -> Result<(), StateError> {
    if let Err(e) = store.set(VERSION_KEY, hex::encode(rand::random::<[u8; 16]>()).as_bytes(), None).await {
        log::warn!(
            "provider key vault changed, but its version stamp was not: other nodes see it within a minute ({e})"
        );
    }
    Ok(())
}

/// The vault's current version; `None` when it was never changed by this version of the gateway.
pub async fn version(store: &dyn StateStore) -> Result<Option<Vec<u8>>, StateError> {
    store.get(VERSION_KEY).await
}

/// Every stored key (sealed), by name.
pub async fn list(store: &dyn StateStore) -> Result<Vec<StoredProviderKey>, StateError> {
    let mut out: Vec<StoredProviderKey> =
        store.hgetall(VAULT_MAP).await?.into_iter().filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One stored key (sealed), by name.
pub async fn get(store: &dyn StateStore, name: &str) -> Result<Option<StoredProviderKey>, StateError> {
    Ok(store.hget(VAULT_MAP, name).await?.and_then(|v| serde_json::from_slice(&v).ok()))
}

pub async fn delete(store: &dyn StateStore, name: &str) -> Result<bool, StateError> {
    let deleted = store.hdel(VAULT_MAP, name).await?;
    if deleted {
        bump_version(store).await?;
    }
    Ok(deleted)
}

/// The stored key's API key, opened.
pub fn open(sealer: &Sealer, rec: &StoredProviderKey) -> Result<String, String> {
    let bytes = sealer.open(&aad(&rec.name, &rec.provider), &rec.sealed)?;
    String::from_utf8(bytes).map_err(|_| "the opened key is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    #[tokio::test]
    async fn keys_are_stored_sealed_and_replaced_by_name() {
        let store = MemoryStore::new("t:");
        let sealer = Sealer::new(&[3; 32]);
        let new = |key: &str| NewProviderKey {
            name: "team".into(),
            provider: "openai".into(),
            api_key: key.into(),
            groups: Some(vec!["eng".into()]),
            ..Default::default()
        };
        assert!(matches!(put(&store, &sealer, new("sk-first-0123456789"), "admin").await.unwrap(), Put::Created(_)));
        // A rotation that leaves the access lists out keeps them.
        let rotate = NewProviderKey { groups: None, ..new("sk-second-9876543210") };
        assert!(matches!(put(&store, &sealer, rotate, "admin").await.unwrap(), Put::Rotated(_)));
        let moved = NewProviderKey { provider: "anthropic".into(), ..new("sk-ant-0123456789") };
        assert!(matches!(put(&store, &sealer, moved, "admin").await.unwrap(), Put::OtherProvider(p) if p == "openai"));
        let all = list(&store).await.unwrap();
        assert_eq!(all.len(), 1);
        let rec = &all[0];
        assert_eq!((rec.hint.as_str(), rec.updated_by.as_str()), ("…3210", "admin"));
        assert_eq!(rec.groups, vec!["eng".to_string()]);
        let raw = String::from_utf8(store.hget(VAULT_MAP, "team").await.unwrap().unwrap()).unwrap();
        assert!(!raw.contains("sk-second"), "stored in the clear: {raw}");
        assert_eq!(open(&sealer, rec).unwrap(), "sk-second-9876543210");
        assert!(open(&Sealer::new(&[4; 32]), rec).is_err());
        let mut moved = rec.clone();
        moved.name = "other".into();
        assert!(open(&sealer, &moved).is_err(), "a sealed key is bound to its name");
        assert!(delete(&store, "team").await.unwrap() && list(&store).await.unwrap().is_empty());
    }

    #[test]
    fn hints_and_key_form() {
        assert_eq!(hint("short"), "…");
        assert_eq!(hint("sk-abcdefgh1234"), "…1234");
        assert!(check_api_key("sk-ok").is_ok());
        for bad in ["", "sk with space", "sk-\n", &"x".repeat(MAX_KEY_LEN + 1)] {
            assert!(check_api_key(bad).is_err(), "{bad:?}");
        }
    }
}
