//! The validated, ready-to-serve model of a configuration: providers, proxies, keys and the
//! model catalog. Built once per (re)load and shared read-only behind an `ArcSwap`.

use super::overrides::Overrides;
use super::provider_keys::{KeyChoice, ProviderKeys};
use super::reread::Reread;
use crate::config::{Config, ConfigError};
use crate::upstream::{HealthServices, Provider, Registry};
use filters::auth::{parse_sha256_hex, KeyTable};
use filters::endpoint::DEFAULT_PROXY;
use filters::meter::{Limit, PriceTable, ScopeKind};
use filters::model::Catalog;
use filters::route::policy::{Policy, TierMap};
use filters::route::RouterModel;
use filters::ApiError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What a verified credential (a virtual key, or an IdP user's token) may do, and how it is
/// metered.
#[derive(Debug, Clone)]
pub struct Grant {
    /// For logs and audit records: the key's name, or `idp:user`.
    pub name: String,
    /// `Key` for virtual keys, `User` for IdP users: the scope of its meter.
    pub scope: ScopeKind,
    /// The credential proves multi-factor sign-in (an IdP token whose `amr` says so).
    pub mfa: bool,
    pub proxies: HashSet<String>,
    /// Providers whose own keys it may draw on.
    pub providers: HashSet<String>,
    /// Named provider keys mapped to the credential (`[provider_keys.NAME]` names).
    pub provider_keys: Vec<String>,
    /// Groups whose routing policy and limits apply.
    pub groups: Vec<String>,
    /// The key's own routing policy.
    pub policy: Policy,
    /// Names this credential's budget and usage counters: the name for static keys (unique in
    /// the file), `stored-` and the id prefix for stored keys (whose names need not be unique),
    /// `{idp}-` and a hash of the user claim for IdP users.
    pub meter_id: String,
    /// Budgets and rate limits on this credential.
    pub limits: Arc<[Limit]>,
}

#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    pub id: String,
    /// `None`: every provider.
    pub providers: Option<HashSet<String>>,
    pub passthrough_provider_keys: bool,
    /// Tier → model map for `auto` from the file (see `Runtime::tier_map` for the one in force).
    pub tiers: Arc<TierMap>,
    /// The proxy layer of the routing policy.
    pub policy: Policy,
    /// Budgets and rate limits on the proxy's total.
    pub limits: Vec<Limit>,
    /// Only credentials that show multi-factor sign-in may use it.
    pub require_mfa: bool,
}

impl ProxyPolicy {
    pub fn allows_provider(&self, p: &str) -> bool {
        self.providers.as_ref().is_none_or(|s| s.contains(p))
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A virtual key or an IdP token.
    Granted(Arc<Grant>),
    /// A provider's own key presented on its pass-through route, forwarded unchanged.
    ProviderKey(String),
}

impl Principal {
    /// Name for logs (never the secret).
    pub fn label(&self) -> &str {
        match self {
            Principal::Granted(k) => &k.name,
            Principal::ProviderKey(_) => "provider-key",
        }
    }
}

pub struct Runtime {
    pub config: Config,
    /// The `auto` classifier.
    pub router: RouterModel,
    /// Group name → routing policy.
    pub groups: HashMap<String, Policy>,
    pub registry: Registry,
    pub catalog: Catalog,
    pub keys: KeyTable,
    pub key_records: Vec<Arc<Grant>>,
    pub proxies: HashMap<String, ProxyPolicy>,
    /// Group name → budgets and rate limits on the group's total.
    pub group_limits: HashMap<String, Vec<Limit>>,
    /// Limits of keys without their own (stored keys included).
    pub default_key_limits: Arc<[Limit]>,
    pub prices: PriceTable,
    /// Provider name → endpoints its pass-through route may reach with pooled keys.
    pub passthrough: HashMap<String, filters::passthrough::Rules>,
    /// External IdPs whose JWTs are accepted.
    pub oidc: super::oidc::Issuers,
    /// OAuth clients from the config file, by client id.
    pub oauth_clients: HashMap<String, Arc<crate::oauth::ClientRecord>>,
    /// Named provider keys.
    pub provider_keys: ProviderKeys,
    /// Seals and opens provider keys stored in the vault; `None` without a secrets key.
    pub sealer: Option<Arc<filters::sealed::Sealer>>,
    /// The admin's policy and tier-map overrides (the state store's, reread every few seconds).
    pub overrides: Reread<Overrides>,
}

impl Runtime {
    pub fn build(
        config: Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Runtime, HealthServices), Vec<ConfigError>> {
        let (registry, services) = Registry::build(&config, env)?;
        let provider_keys = ProviderKeys::build(&config, env);
        let sealer = match env(&config.secrets.key_env).filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(text) => Some(Arc::new(filters::sealed::Sealer::from_text(&text).map_err(|m| {
                vec![ConfigError {
                    path: "secrets.key_env".into(),
                    message: format!("{}: {m}", config.secrets.key_env),
                }]
            })?)),
        };
        let listed: BTreeMap<String, Vec<String>> =
            config.providers.iter().map(|(n, p)| (n.clone(), p.models.clone())).collect();
        let catalog = Catalog::new(&listed, &config.aliases)
            .map_err(|m| vec![ConfigError { path: "aliases".into(), message: m }])?;
        let mut keys = KeyTable::new();
        let mut key_records = Vec::new();
        let default_key_limits: Arc<[Limit]> = config.metering.key_limits.clone().into();
        for (i, k) in config.auth.virtual_keys.iter().enumerate() {
            if let Some(d) = parse_sha256_hex(&k.key_sha256) {
                keys.insert(d, i);
            }
            key_records.push(Arc::new(Grant {
                name: k.name.clone(),
                scope: ScopeKind::Key,
                mfa: false,
                proxies: k.proxies.iter().cloned().collect(),
                providers: k.providers.iter().cloned().collect(),
                provider_keys: k.provider_keys.clone(),
                groups: k.groups.clone(),
                policy: k.policy.clone(),
                meter_id: k.name.clone(),
                limits: k.limits.clone().map_or_else(|| default_key_limits.clone(), Into::into),
            }));
        }
        let mut proxies: HashMap<String, ProxyPolicy> = config
            .proxies
            .iter()
            .map(|(id, p)| {
                (
                    id.clone(),
                    ProxyPolicy {
                        id: id.clone(),
                        providers: p.providers.as_ref().map(|v| v.iter().cloned().collect()),
                        passthrough_provider_keys: p.passthrough_provider_keys,
                        tiers: Arc::new(p.tiers.clone().unwrap_or_else(|| config.routing.tiers.clone())),
                        policy: p.policy.clone(),
                        limits: p.limits.clone(),
                        require_mfa: p.require_mfa,
                    },
                )
            })
            .collect();
        proxies.entry(DEFAULT_PROXY.to_string()).or_insert_with(|| ProxyPolicy {
            id: DEFAULT_PROXY.to_string(),
            providers: None,
            passthrough_provider_keys: false,
            tiers: Arc::new(config.routing.tiers.clone()),
            policy: Policy::default(),
            limits: Vec::new(),
            require_mfa: false,
        });
        let router = match &config.routing.model_file {
            None => RouterModel::embedded(),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|text| RouterModel::from_json(&text)),
        }
        .map_err(|m| vec![ConfigError { path: "routing.model_file".into(), message: m }])?;
        let groups = config.groups.iter().map(|(n, g)| (n.clone(), g.policy.clone())).collect();
        let group_limits = config.groups.iter().map(|(n, g)| (n.clone(), g.limits.clone())).collect();
        let prices = PriceTable::new(&config.pricing)
            .map_err(|(id, m)| vec![ConfigError { path: format!("pricing.\"{id}\""), message: m }])?;
        let mut passthrough = HashMap::new();
        for (name, p) in &config.providers {
            let rules = filters::passthrough::Rules::new(&p.kind, &p.passthrough_paths)
                .map_err(|m| vec![ConfigError { path: format!("providers.{name}.passthrough_paths"), message: m }])?;
            passthrough.insert(name.clone(), rules);
        }
        let oidc = super::oidc::Issuers::new(&config.auth.oidc);
        let oauth_clients = config
            .auth
            .oauth_clients
            .iter()
            .map(|c| {
                let rec = crate::oauth::ClientRecord {
                    client_id: c.client_id.clone(),
                    name: c.name.clone(),
                    secret_sha256: c.client_secret_sha256.as_ref().map(|h| h.trim().to_ascii_lowercase()),
                    redirect_uris: c.redirect_uris.clone(),
                    proxies: c.proxies.clone(),
                    providers: c.providers.clone(),
                    provider_keys: c.provider_keys.clone(),
                    groups: c.groups.clone(),
                    limits: c.limits.clone(),
                    created_at: 0,
                    revoked_at: None,
                    registered: false,
                };
                (c.client_id.clone(), Arc::new(rec))
            })
            .collect();
        let runtime = Runtime {
            config,
            router,
            groups,
            registry,
            catalog,
            keys,
            key_records,
            proxies,
            group_limits,
            default_key_limits,
            prices,
            passthrough,
            oidc,
            oauth_clients,
            provider_keys,
            sealer,
            overrides: Reread::default(),
        };
        Ok((runtime, services))
    }

    /// The routing policy that applies to `principal` on `proxy`: proxy < groups (an admin
    /// override replaces the file's) < the credential's own < an admin override for it.
    pub fn policy_for(&self, principal: &Principal, proxy: &ProxyPolicy) -> Policy {
        let ov = self.overrides.load();
        let mut layers: Vec<&Policy> = vec![&proxy.policy];
        if let Principal::Granted(k) = principal {
            layers.extend(k.groups.iter().filter_map(|g| ov.groups.get(g).or_else(|| self.groups.get(g))));
            layers.push(&k.policy);
            layers.extend(ov.principals.get(&k.name));
        }
        Policy::merge(&layers)
    }

    /// The tier → model map in force on `proxy`: an admin override, else the file's.
    pub fn tier_map(&self, proxy: &ProxyPolicy) -> Arc<TierMap> {
        self.overrides.load().tiers.get(&proxy.id).cloned().unwrap_or_else(|| proxy.tiers.clone())
    }

    /// Reread the admin overrides from the state store.
    pub async fn refresh_overrides(
        &self,
        store: &dyn crate::state::StateStore,
    ) -> Result<(), crate::state::StateError> {
        let ticket = self.overrides.begin();
        let read = super::overrides::read(store, &self.config, &self.proxy_ids()).await;
        self.overrides.finish(ticket, read)
    }

    /// Every proxy id (the overridable tier maps).
    pub fn proxy_ids(&self) -> Vec<String> {
        self.proxies.keys().cloned().collect()
    }

    pub fn proxy(&self, id: &str) -> Result<&ProxyPolicy, ApiError> {
        self.proxies.get(id).ok_or_else(|| ApiError::not_found(format!("unknown proxy `{id}`")))
    }

    pub fn lookup_key(&self, key: &str) -> Option<Arc<Grant>> {
        self.keys.lookup(key).and_then(|i| self.key_records.get(i).cloned())
    }

    /// Which key `principal` draws on for `provider`; `None`: it has no access to one.
    pub fn key_for(&self, principal: &Principal, provider: &str) -> Option<KeyChoice> {
        match principal {
            Principal::Granted(g) => self.provider_keys.choose(g, provider),
            Principal::ProviderKey(_) => Some(KeyChoice::Pool),
        }
    }

    /// Check that `principal` may use `provider` through `proxy`; returns the provider and the
    /// key to call it with.
    pub fn authorize(
        &self,
        principal: &Principal,
        proxy: &ProxyPolicy,
        provider: &str,
    ) -> Result<(&Arc<Provider>, KeyChoice), ApiError> {
        let p = self.registry.get(provider).ok_or_else(|| {
            ApiError::bad_request("model_not_found", format!("unknown provider `{provider}`")).with_param("model")
        })?;
        if !proxy.allows_provider(provider) {
            return Err(ApiError::forbidden(
                "provider_not_allowed",
                format!("proxy `{}` does not route to provider `{provider}`", proxy.id),
            ));
        }
        let Some(key) = self.key_for(principal, provider) else {
            if self.provider_keys.vault_unread() {
                return Err(ApiError::unavailable(
                    "state_unavailable",
                    "the stored provider keys cannot be read from the state store; retry shortly",
                ));
            }
            return Err(ApiError::forbidden(
                "provider_not_allowed",
                format!("this credential has no access to a `{provider}` provider key"),
            ));
        };
        Ok((p, key))
    }
}
