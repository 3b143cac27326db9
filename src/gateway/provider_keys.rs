//! Which upstream key a credential draws on for a provider: a named provider key mapped to it
//! (virtual keys, OAuth clients), an IdP user's own or their group's named key, or the provider
//! table's own keys when the credential lists the provider. Named keys come from the config file
//! and from the key vault (`crate::key_vault`), whose snapshot is reread every few seconds.

use super::reread::Reread;
use super::runtime::Grant;
use crate::config::Config;
use crate::state::{StateError, StateStore};
use crate::upstream::{collect_keys, KeyPool};
use filters::meter::ScopeKind;
use filters::sealed::Sealer;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A `[provider_keys.NAME]` credential, ready to use.
#[derive(Debug)]
pub struct NamedKey {
    pub name: String,
    pub provider: String,
    pub keys: KeyPool,
    /// Where its key comes from, for the error when none is set.
    pub hint: String,
    users: HashSet<String>,
    groups: HashSet<String>,
    /// A user's own key (`PUT /v1/provider-keys/PROVIDER`), used by that user before any other.
    personal: bool,
}

/// Every named provider key: the config file's by name, and the vault's last snapshot.
#[derive(Debug, Default)]
pub struct ProviderKeys {
    by_name: BTreeMap<String, Arc<NamedKey>>,
    pub stored: Reread<VaultSnapshot>,
    /// Providers whose table sets `personal_keys = true`.
    personal_providers: HashSet<String>,
}

/// The longest a node goes without reading the whole vault, whatever its version stamp says (a
/// change by an older gateway, or one whose stamp failed to move, is seen within this).
const FULL_REREAD: std::time::Duration = std::time::Duration::from_secs(60);

/// The vault's usable keys and the vault version they were read at (`key_vault::version`).
#[derive(Debug, Default, Clone)]
pub struct VaultSnapshot {
    version: Option<Vec<u8>>,
    /// When the whole vault was last read.
    read_at: Option<std::time::Instant>,
    /// Whether it was read with the secrets key (without, no stored key opens).
    opened: bool,
    keys: Vec<Arc<NamedKey>>,
}

/// The key an upstream call is authenticated with.
#[derive(Debug, Clone)]
pub enum KeyChoice {
    /// The provider table's own keys.
    Pool,
    Named(Arc<NamedKey>),
}

impl KeyChoice {
    /// The named key, for logs (never the secret).
    pub fn name(&self) -> Option<&str> {
        match self {
            KeyChoice::Pool => None,
            KeyChoice::Named(k) => Some(&k.name),
        }
    }
}

impl ProviderKeys {
    /// The config file's named keys (checked by `Config::validate`), their secrets from `env`.
    pub fn build(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> ProviderKeys {
        let mut by_name = BTreeMap::new();
        for (name, k) in &config.provider_keys {
            let keys = collect_keys(&k.api_key, &k.api_key_env, &k.api_keys, &k.api_keys_env, None, env);
            let hint = k
                .api_key_env
                .as_ref()
                .or(k.api_keys_env.first())
                .map_or_else(|| format!("provider_keys.{name}.api_key"), |e| format!("the {e} environment variable"));
            let key = NamedKey {
                name: name.clone(),
                provider: k.provider.clone(),
                keys: KeyPool::new(keys),
                hint,
                users: k.users.iter().cloned().collect(),
                groups: k.groups.iter().cloned().collect(),
                personal: false,
            };
            by_name.insert(name.clone(), Arc::new(key));
        }
        let personal_providers =
            config.providers.iter().filter(|(_, p)| p.personal_keys).map(|(n, _)| n.clone()).collect();
        ProviderKeys { by_name, personal_providers, ..Default::default() }
    }

    /// Whether users may store their own key for `provider`.
    pub fn accepts_personal(&self, provider: &str) -> bool {
        self.personal_providers.contains(provider)
    }

    /// The key `grant` uses for `provider`, in order: a named key mapped to the credential; for
    /// an IdP user, their own stored key, a key that lists the user, then one that lists one of their groups (the
    /// config file's first, each source by name; a group matches whichever IdP's claim names
    /// it); the provider's own keys when the credential lists the provider. `None`: no access.
    pub fn choose(&self, grant: &Grant, provider: &str) -> Option<KeyChoice> {
        let stored = self.stored.load();
        let all = || self.by_name.values().chain(stored.keys.iter());
        // A stored credential can outlive a key it was mapped to: an unknown name maps nothing.
        // A user's own key is never mapped to a credential, whatever its mapping says.
        let mapped = grant.provider_keys.iter().filter_map(|n| all().find(|k| &k.name == n && !k.personal));
        if let Some(k) = mapped.into_iter().find(|k| k.provider == provider) {
            return Some(KeyChoice::Named(k.clone()));
        }
        if grant.scope == ScopeKind::User {
            let of_provider = || all().filter(|k| k.provider == provider);
            if let Some(k) = of_provider().find(|k| k.personal && k.users.contains(&grant.name)) {
                return Some(KeyChoice::Named(k.clone()));
            }
            if let Some(k) = of_provider().find(|k| k.users.contains(&grant.name)) {
                return Some(KeyChoice::Named(k.clone()));
            }
            if let Some(k) = of_provider().find(|k| grant.groups.iter().any(|g| k.groups.contains(g))) {
                return Some(KeyChoice::Named(k.clone()));
            }
        }
        grant.providers.contains(provider).then_some(KeyChoice::Pool)
    }

    /// The names and providers of every named key a credential may be mapped to (not users'
    /// own keys), for checking a new credential's mapping.
    pub fn names(&self) -> Vec<(String, String)> {
        let stored = self.stored.load();
        self.by_name
            .values()
            .chain(stored.keys.iter())
            .filter(|k| !k.personal)
            .map(|k| (k.name.clone(), k.provider.clone()))
            .collect()
    }

    /// The vault has never been read (a request finding no key may be missing a stored one).
    pub fn vault_unread(&self) -> bool {
        self.stored.unread()
    }

    /// Reread the vault and swap in its keys. Keys that cannot be used are left out and
    /// logged: no secrets key, another provider than configured, a name the config file uses, a
    /// value that does not open.
    pub async fn refresh(
        &self,
        store: &dyn StateStore,
        sealer: Option<&Sealer>,
        config: &Config,
    ) -> Result<(), StateError> {
        let ticket = self.stored.begin();
        let version = match crate::key_vault::version(store).await {
            Ok(v) => v,
            Err(e) => return self.stored.finish(ticket, Err(e)),
        };
        let last = self.stored.load_full();
        let recent = last.read_at.is_some_and(|t| t.elapsed() < FULL_REREAD);
        if !self.stored.unread()
            && recent
            && version.is_some()
            && last.version == version
            && last.opened == sealer.is_some()
        {
            // Nothing changed since the last read: keep the keys, only the freshness moves.
            return self.stored.finish(ticket, Ok(VaultSnapshot::clone(&last)));
        }
        let listed = match crate::key_vault::list(store).await {
            Ok(l) => l,
            Err(e) => return self.stored.finish(ticket, Err(e)),
        };
        let mut keys = Vec::with_capacity(listed.len());
        for rec in listed {
            let skip = |why: &str| log::warn!("stored provider key `{}` is not used: {why}", rec.name);
            if self.by_name.contains_key(&rec.name) {
                skip("the config file defines a key of that name");
                continue;
            }
            let personal = crate::key_vault::is_personal(&rec.name);
            if personal {
                // Its name is derived from its one user and provider, so it cannot serve anyone
                // else, and it stops working when the provider stops taking personal keys.
                let owner = rec.users.first().filter(|_| rec.users.len() == 1 && rec.groups.is_empty());
                if owner.is_none_or(|u| crate::key_vault::personal_name(u, &rec.provider) != rec.name) {
                    skip("a personal key must belong to exactly the one user its name is derived from");
                    continue;
                }
                if !self.accepts_personal(&rec.provider) {
                    skip(&format!("provider `{}` does not take personal keys (personal_keys = false)", rec.provider));
                    continue;
                }
            } else if let Some((_, why)) =
                config.provider_key_problems(&rec.name, &rec.provider, &[], &[], None).into_iter().next()
            {
                skip(&why);
                continue;
            }
            let Some(sealer) = sealer else {
                skip(&format!("no secrets key to open it ({} is unset)", config.secrets.key_env));
                continue;
            };
            match crate::key_vault::open(sealer, &rec) {
                Ok(key) => keys.push(Arc::new(NamedKey {
                    name: rec.name,
                    provider: rec.provider,
                    keys: KeyPool::new(vec![key]),
                    hint: "the admin API or `portcullis provider-keys set`".into(),
                    users: rec.users.into_iter().collect(),
                    groups: rec.groups.into_iter().collect(),
                    personal,
                })),
                Err(e) => skip(&e),
            }
        }
        let read_at = Some(std::time::Instant::now());
        self.stored.finish(ticket, Ok(VaultSnapshot { version, read_at, opened: sealer.is_some(), keys }))
    }
}

/// Keep the vault snapshot and the admin overrides recent (see `reread::keep_fresh`). A node
/// that cannot read them at all (the state store down since it started) routes on the file's
/// policies, as it serves unlimited requests through an outage, and logs why.
pub async fn ensure_fresh(shared: &super::Shared) {
    use super::reread::{keep_fresh, Freshness};
    let rt = shared.runtime.load();
    if rt.provider_keys.stored.freshness() == Freshness::Fresh && rt.overrides.freshness() == Freshness::Fresh {
        return;
    }
    let rt = shared.runtime.load_full();
    let (store, r) = (shared.state.clone(), rt.clone());
    keep_fresh(&rt.provider_keys.stored, "stored provider keys", move || async move {
        r.provider_keys.refresh(&*store, r.sealer.as_deref(), &r.config).await
    })
    .await;
    let (store, r) = (shared.state.clone(), rt.clone());
    keep_fresh(&rt.overrides, "policy overrides", move || async move { r.refresh_overrides(&*store).await }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::reread::Freshness;
    use filters::route::policy::Policy;

    const CONFIG: &str = r#"
[egress]
allow_hosts = ["127.0.0.1"]
[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-pool"
personal_keys = true
[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-ant-pool"
[groups.team-a]
[groups.team-b]
[[auth.oidc]]
name = "corp"
issuer = "http://127.0.0.1:9"
audiences = ["portcullis"]
providers = []
[provider_keys.a-team]
provider = "openai"
api_key_env = "TEAM_A_KEY"
groups = ["team-a"]
[provider_keys.b-team]
provider = "openai"
api_key = "sk-b"
groups = ["team-a", "team-b"]
[provider_keys.alice]
provider = "openai"
api_key = "sk-alice"
users = ["corp:alice"]
[provider_keys.batch]
provider = "anthropic"
api_keys = ["sk-batch-1", "sk-batch-2"]
"#;

    fn keys(env: &[(&str, &str)]) -> ProviderKeys {
        let cfg = Config::parse(CONFIG, std::iter::empty()).unwrap();
        let env: std::collections::HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = |k: &str| env.get(k).cloned();
        ProviderKeys::build(&cfg, &lookup)
    }

    fn grant(scope: ScopeKind, name: &str, providers: &[&str], mapped: &[&str], groups: &[&str]) -> Grant {
        Grant {
            name: name.into(),
            scope,
            mfa: false,
            proxies: HashSet::new(),
            providers: providers.iter().map(|s| s.to_string()).collect(),
            provider_keys: mapped.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            policy: Policy::default(),
            meter_id: name.into(),
            limits: Vec::new().into(),
        }
    }

    fn chosen(k: &ProviderKeys, g: &Grant, provider: &str) -> Option<String> {
        k.choose(g, provider).map(|c| c.name().unwrap_or("pool").to_string())
    }

    #[test]
    fn a_credential_uses_its_mapped_key_for_that_provider_only() {
        let k = keys(&[("TEAM_A_KEY", "sk-a")]);
        let g = grant(ScopeKind::Client, "client:batch", &[], &["batch"], &[]);
        assert_eq!(chosen(&k, &g, "anthropic").as_deref(), Some("batch"));
        assert_eq!(chosen(&k, &g, "openai"), None, "a mapping grants its own provider only");
        // The mapping wins over the provider's own keys.
        let g = grant(ScopeKind::Key, "ci", &["anthropic", "openai"], &["batch"], &[]);
        assert_eq!(chosen(&k, &g, "anthropic").as_deref(), Some("batch"));
        assert_eq!(chosen(&k, &g, "openai").as_deref(), Some("pool"));
        // A name no longer configured (a stored credential outliving the table) maps nothing.
        let g = grant(ScopeKind::Key, "old", &[], &["gone"], &[]);
        assert_eq!(chosen(&k, &g, "openai"), None);
    }

    #[test]
    fn users_get_their_own_key_then_their_groups_then_the_pool() {
        let k = keys(&[("TEAM_A_KEY", "sk-a")]);
        let alice = grant(ScopeKind::User, "corp:alice", &["openai"], &[], &["team-a"]);
        assert_eq!(chosen(&k, &alice, "openai").as_deref(), Some("alice"));
        let bob = grant(ScopeKind::User, "corp:bob", &["openai"], &[], &["team-a"]);
        assert_eq!(chosen(&k, &bob, "openai").as_deref(), Some("a-team"), "first group key by name");
        let carol = grant(ScopeKind::User, "corp:carol", &[], &[], &["team-b"]);
        assert_eq!(chosen(&k, &carol, "openai").as_deref(), Some("b-team"));
        let dave = grant(ScopeKind::User, "corp:dave", &["openai"], &[], &[]);
        assert_eq!(chosen(&k, &dave, "openai").as_deref(), Some("pool"));
        let erin = grant(ScopeKind::User, "corp:erin", &[], &[], &[]);
        assert_eq!(chosen(&k, &erin, "openai"), None);
        // Apps do not inherit user or group keys: a virtual key in team-a draws on none of them.
        let app = grant(ScopeKind::Key, "corp:alice", &[], &[], &["team-a"]);
        assert_eq!(chosen(&k, &app, "openai"), None);
    }

    #[test]
    fn named_keys_rotate_and_never_print() {
        let k = keys(&[]);
        let batch = k.by_name.get("batch").unwrap();
        assert_eq!((batch.keys.next_key(), batch.keys.next_key()), (Some("sk-batch-1"), Some("sk-batch-2")));
        // An unset env var leaves the key empty (a 503 naming the variable at request time).
        let a = k.by_name.get("a-team").unwrap();
        assert!(a.keys.is_empty());
        assert_eq!(a.hint, "the TEAM_A_KEY environment variable");
        let printed = format!("{k:?}");
        assert!(!printed.contains("sk-batch") && !printed.contains("sk-alice"), "{printed}");
    }

    #[tokio::test]
    async fn stored_keys_join_after_a_refresh_and_unusable_ones_are_left_out() {
        let cfg = Config::parse(CONFIG, std::iter::empty()).unwrap();
        let k = ProviderKeys::build(&cfg, &|_: &str| None);
        assert!(k.vault_unread() && k.stored.freshness() == Freshness::Missing);
        let store = crate::state::MemoryStore::new("t:");
        let sealer = Sealer::new(&[5; 32]);
        let put = |name: &str, provider: &str, users: &[&str]| crate::key_vault::NewProviderKey {
            name: name.into(),
            provider: provider.into(),
            api_key: format!("sk-{name}"),
            users: Some(users.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        };
        for new in [put("bob-own", "openai", &["corp:bob"]), put("alice", "openai", &[]), put("x", "gone", &[])] {
            crate::key_vault::put(&store, &sealer, new, "test").await.unwrap();
        }
        k.refresh(&store, Some(&sealer), &cfg).await.unwrap();
        assert!(!k.vault_unread() && k.stored.freshness() == Freshness::Fresh);
        let bob = grant(ScopeKind::User, "corp:bob", &[], &[], &["team-a"]);
        assert_eq!(chosen(&k, &bob, "openai").as_deref(), Some("bob-own"), "a stored personal key");
        // `alice` is the config file's name (its key stays), `x` names no configured provider.
        let names: Vec<String> = k.names().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.iter().filter(|n| *n == "alice").count(), 1);
        assert!(names.contains(&"bob-own".to_string()) && !names.contains(&"x".to_string()));
        // Without the secrets key nothing stored can be opened.
        k.refresh(&store, None, &cfg).await.unwrap();
        assert_eq!(chosen(&k, &bob, "openai").as_deref(), Some("a-team"));
    }

    #[tokio::test]
    async fn a_users_own_key_comes_first_and_only_serves_them() {
        let cfg = Config::parse(CONFIG, std::iter::empty()).unwrap();
        let k = ProviderKeys::build(&cfg, &|_: &str| None);
        assert!(k.accepts_personal("openai") && !k.accepts_personal("anthropic"));
        let store = crate::state::MemoryStore::new("t:");
        let sealer = Sealer::new(&[6; 32]);
        let personal = |user: &str, provider: &str, users: &[&str]| crate::key_vault::NewProviderKey {
            name: crate::key_vault::personal_name(user, provider),
            provider: provider.into(),
            api_key: format!("sk-own-{user}"),
            users: Some(users.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        };
        for new in [
            personal("corp:alice", "openai", &["corp:alice"]),
            // A record under bob's name that lists someone else is not bob's, nor theirs.
            personal("corp:bob", "openai", &["corp:mallory"]),
            // anthropic does not take personal keys.
            personal("corp:carol", "anthropic", &["corp:carol"]),
        ] {
            crate::key_vault::put(&store, &sealer, new, "test").await.unwrap();
        }
        k.refresh(&store, Some(&sealer), &cfg).await.unwrap();
        let alice = grant(ScopeKind::User, "corp:alice", &["openai"], &[], &["team-a"]);
        let own = crate::key_vault::personal_name("corp:alice", "openai");
        assert_eq!(chosen(&k, &alice, "openai"), Some(own), "before the config file's key that lists her");
        let mallory = grant(ScopeKind::User, "corp:mallory", &[], &[], &[]);
        assert_eq!(chosen(&k, &mallory, "openai"), None);
        let carol = grant(ScopeKind::User, "corp:carol", &[], &[], &[]);
        assert_eq!(chosen(&k, &carol, "anthropic"), None);
        // A virtual key named like her never draws on it, nor one mapped to its name.
        let app = grant(ScopeKind::Key, "corp:alice", &[], &[], &[]);
        assert_eq!(chosen(&k, &app, "openai"), None);
        let own = crate::key_vault::personal_name("corp:alice", "openai");
        let mapped = grant(ScopeKind::Client, "client:x", &[], &[&own], &[]);
        assert_eq!(chosen(&k, &mapped, "openai"), None);
        assert!(!k.names().iter().any(|(n, _)| *n == own), "a personal key offered for mapping");
        // The admin path cannot make a key that passes for a personal one.
        let problems =
            cfg.provider_key_problems(&crate::key_vault::personal_name("corp:x", "openai"), "openai", &[], &[], None);
        assert!(problems.iter().any(|(_, m)| m.contains("users' own keys")), "{problems:?}");
    }

    #[tokio::test]
    async fn the_vault_is_reread_only_when_its_version_moved() {
        let cfg = Config::parse(CONFIG, std::iter::empty()).unwrap();
        let k = ProviderKeys::build(&cfg, &|_: &str| None);
        let store = crate::state::MemoryStore::new("t:");
        let sealer = Sealer::new(&[7; 32]);
        let put = |name: &str| crate::key_vault::NewProviderKey {
            name: name.into(),
            provider: "openai".into(),
            api_key: format!("sk-{name}"),
            users: Some(vec!["corp:bob".into()]),
            ..Default::default()
        };
        crate::key_vault::put(&store, &sealer, put("first"), "test").await.unwrap();
        k.refresh(&store, Some(&sealer), &cfg).await.unwrap();
        let names = |k: &ProviderKeys| k.stored.load().keys.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&k), ["first"]);
        // A record written without moving the version is not read (the vault was not reread)...
        let quiet = store.hget(crate::key_vault::VAULT_MAP, "first").await.unwrap().unwrap();
        let quiet = String::from_utf8(quiet).unwrap().replace("\"first\"", "\"quiet\"");
        store.hset(crate::key_vault::VAULT_MAP, "quiet", quiet.as_bytes()).await.unwrap();
        k.refresh(&store, Some(&sealer), &cfg).await.unwrap();
        assert_eq!(names(&k), ["first"]);
        assert_eq!(k.stored.freshness(), Freshness::Fresh, "an unchanged vault still counts as read");
        // ...and every change moves it: a put and a delete are seen at the next refresh.
        crate::key_vault::put(&store, &sealer, put("second"), "test").await.unwrap();
        k.refresh(&store, Some(&sealer), &cfg).await.unwrap();
        assert_eq!(names(&k), ["first", "second"], "the forged record does not open under its new name");
        assert!(crate::key_vault::delete(&store, "first").await.unwrap());
        k.refresh(&store, Some(&sealer), &cfg).await.unwrap();
        assert_eq!(names(&k), ["second"]);
    }
}
