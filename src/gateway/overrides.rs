//! The admin's overrides layer: group and per-principal routing policies and per-proxy tier
//! maps set through the admin API or console. They live in the state store, so every node applies
//! them within seconds without a restart, and every change is audited. A group override replaces
//! that group's `policy` from the file, a proxy's tier map replaces its `tiers`, and a principal
//! override is the innermost policy layer (it can only narrow, like every layer).

use crate::config::Config;
use crate::state::{StateError, StateStore};
use filters::route::policy::{Policy, TierMap};
use filters::route::Tier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Hash map of overrides, field = `{scope}/{name}`.
pub const OVERRIDES_MAP: &str = "policy_overrides";

/// What an override applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A `[groups.NAME]` policy.
    Group,
    /// One principal, by the name logs give it (`ci`, `client:batch`, `corp:alice`).
    Principal,
    /// A proxy's tier → model map.
    Tiers,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "groups" => Some(Scope::Group),
            "principals" => Some(Scope::Principal),
            "tiers" => Some(Scope::Tiers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Group => "groups",
            Scope::Principal => "principals",
            Scope::Tiers => "tiers",
        }
    }
}

/// Every override in force.
#[derive(Debug, Default)]
pub struct Overrides {
    pub groups: BTreeMap<String, Policy>,
    pub principals: BTreeMap<String, Policy>,
    pub tiers: BTreeMap<String, Arc<TierMap>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    value: serde_json::Value,
    updated_at: u64,
    updated_by: String,
}

fn field(scope: Scope, name: &str) -> String {
    format!("{}/{name}", scope.as_str())
}

fn check_model_ids(config: &Config, ids: &[String], wildcard: bool) -> Result<(), String> {
    for id in ids {
        match id.split_once(':') {
            Some((p, m)) if config.providers.contains_key(p) && !m.is_empty() && (wildcard || m != "*") => {}
            _ => {
                return Err(format!(
                    "`{id}` must be provider:model{} with a configured provider",
                    if wildcard { " (or provider:*)" } else { "" }
                ))
            }
        }
    }
    Ok(())
}

/// Parse and check an override's value for `scope`/`name` against the configuration.
pub fn validate(
    config: &Config,
    proxies: &[String],
    scope: Scope,
    name: &str,
    value: &[u8],
) -> Result<serde_json::Value, String> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err("the name must be 1 to 200 characters".into());
    }
    match scope {
        Scope::Group if !config.groups.contains_key(name) => return Err(format!("unknown group `{name}`")),
        Scope::Tiers if !proxies.iter().any(|p| p == name) => return Err(format!("unknown proxy `{name}`")),
        _ => {}
    }
    let json: serde_json::Value = serde_json::from_slice(value).map_err(|e| format!("invalid JSON: {e}"))?;
    match scope {
        Scope::Group | Scope::Principal => {
            let p: Policy = serde_json::from_value(json.clone()).map_err(|e| format!("not a policy: {e}"))?;
            check_model_ids(config, p.allowed_models.as_deref().unwrap_or_default(), true)?;
        }
        Scope::Tiers => {
            let t: TierMap = serde_json::from_value(json.clone()).map_err(|e| format!("not a tier map: {e}"))?;
            for tier in Tier::ALL {
                check_model_ids(config, t.models(tier), false).map_err(|m| format!("{tier}: {m}"))?;
            }
        }
    }
    Ok(json)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Store a validated override; `true` when it replaced one.
pub async fn set(
    store: &dyn StateStore,
    scope: Scope,
    name: &str,
    value: serde_json::Value,
    actor: &str,
) -> Result<bool, StateError> {
    let f = field(scope, name);
    let replaced = store.hget(OVERRIDES_MAP, &f).await?.is_some();
    let rec = Record { value, updated_at: now(), updated_by: actor.to_string() };
    let bytes = serde_json::to_vec(&rec).map_err(|e| StateError::Corrupt(e.to_string()))?;
    store.hset(OVERRIDES_MAP, &f, &bytes).await?;
    Ok(replaced)
}

pub async fn remove(store: &dyn StateStore, scope: Scope, name: &str) -> Result<bool, StateError> {
    store.hdel(OVERRIDES_MAP, &field(scope, name)).await
}

/// Every stored override, as stored (for listings): (scope, name, value, updated_at, updated_by).
pub async fn list(store: &dyn StateStore) -> Result<Vec<(Scope, String, serde_json::Value, u64, String)>, StateError> {
    let mut out = Vec::new();
    for (f, bytes) in store.hgetall(OVERRIDES_MAP).await? {
        let Some((scope, name)) = f.split_once('/').and_then(|(s, n)| Some((Scope::parse(s)?, n.to_string()))) else {
            continue;
        };
        if let Ok(r) = serde_json::from_slice::<Record>(&bytes) {
            out.push((scope, name, r.value, r.updated_at, r.updated_by));
        }
    }
    Ok(out)
}

/// Read the overrides in force. One that no longer fits the configuration (its group or proxy
/// is gone) is left out and logged.
pub async fn read(store: &dyn StateStore, config: &Config, proxies: &[String]) -> Result<Overrides, StateError> {
    let mut out = Overrides::default();
    for (scope, name, value, _, _) in list(store).await? {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if let Err(e) = validate(config, proxies, scope, &name, &bytes) {
            log::warn!("policy override {}/{name} is not applied: {e}", scope.as_str());
            continue;
        }
        match scope {
            Scope::Group | Scope::Principal => {
                let Ok(p) = serde_json::from_value::<Policy>(value) else { continue };
                let map = if scope == Scope::Group { &mut out.groups } else { &mut out.principals };
                map.insert(name, p);
            }
            Scope::Tiers => {
                if let Ok(t) = serde_json::from_value::<TierMap>(value) {
                    out.tiers.insert(name, Arc::new(t));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    const CONFIG: &str = "[providers.mock]\nkind = \"mock\"\n[groups.interns]\n";

    #[tokio::test]
    async fn overrides_are_checked_stored_and_read_back() {
        let cfg = Config::parse(CONFIG, std::iter::empty()).unwrap();
        let proxies = vec!["default".to_string()];
        let v = |s: &str| s.as_bytes().to_vec();
        let bad = [
            (Scope::Group, "nobody", "{}", "unknown group"),
            (Scope::Tiers, "nowhere", "{}", "unknown proxy"),
            (Scope::Group, "interns", "{\"max_tier\":\"huge\"}", "not a policy"),
            (Scope::Group, "interns", "{\"allowed_models\":[\"openai:*\"]}", "configured provider"),
            (Scope::Tiers, "default", "{\"simple\":[\"mock:*\"]}", "simple: `mock:*`"),
            (Scope::Principal, "", "{}", "1 to 200"),
            (Scope::Principal, "ci", "not json", "invalid JSON"),
        ];
        for (scope, name, value, needle) in bad {
            let e = validate(&cfg, &proxies, scope, name, &v(value)).unwrap_err();
            assert!(e.contains(needle), "{name} {value}: {e}");
        }
        let store = MemoryStore::new("t:");
        let ok = |scope, name: &str, value: &str| validate(&cfg, &proxies, scope, name, &v(value)).unwrap();
        assert!(!set(&store, Scope::Group, "interns", ok(Scope::Group, "interns", "{\"max_tier\":\"simple\"}"), "a")
            .await
            .unwrap());
        set(
            &store,
            Scope::Principal,
            "corp:alice",
            ok(Scope::Principal, "corp:alice", "{\"max_tier\":\"medium\"}"),
            "a",
        )
        .await
        .unwrap();
        set(&store, Scope::Tiers, "default", ok(Scope::Tiers, "default", "{\"reasoning\":[\"mock:echo\"]}"), "a")
            .await
            .unwrap();
        let o = read(&store, &cfg, &proxies).await.unwrap();
        assert_eq!(o.groups["interns"].max_tier, Some(Tier::Simple));
        assert_eq!(o.principals["corp:alice"].max_tier, Some(Tier::Medium));
        assert_eq!(o.tiers["default"].reasoning, vec!["mock:echo".to_string()]);
        // A group the file no longer has is not applied.
        let cfg2 = Config::parse("[providers.mock]\nkind = \"mock\"\n", std::iter::empty()).unwrap();
        assert!(read(&store, &cfg2, &proxies).await.unwrap().groups.is_empty());
        assert!(remove(&store, Scope::Group, "interns").await.unwrap());
        assert!(!remove(&store, Scope::Group, "interns").await.unwrap());
    }
}
