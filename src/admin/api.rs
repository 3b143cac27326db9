//! The admin JSON API under `/admin/api/`: stored virtual keys and OAuth clients (create, list,
//! revoke), stored provider keys (set, list, delete; sealed in the key vault), the policy
//! overrides layer (group and principal policies, proxies' tier maps: set, list, remove; applied
//! live), the providers and egress allow-list (read-only: they stay file-managed) and the audit
//! trail's state. Every change goes to the audit trail with the admin who
//! made it.
//!
//! Admins are holders of a token whose SHA-256 is in `admin.tokens_sha256`, or IdP users (JWT)
//! in one of `admin.groups`, with MFA unless `admin.require_mfa = false`. The same code serves
//! the admin listener and, when `admin_listen == listen`, the client listener.

use crate::gateway::Shared;
use crate::keys;
use crate::oauth;
use filters::ApiError;
use serde::Deserialize;
use std::sync::Arc;

/// Largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;

/// An answer: status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

fn ok(status: u16, v: serde_json::Value) -> Answer {
    Answer { status, body: serde_json::to_vec(&v).unwrap_or_default() }
}

fn err(e: ApiError) -> Answer {
    Answer { status: e.status, body: e.to_json() }
}

/// Whether `path` is an admin API path.
pub fn handles(path: &str) -> bool {
    path == "/admin/api" || path.starts_with("/admin/api/")
}

/// Who is acting, for the audit trail.
async fn admin(shared: &Shared, authorization: Option<&[u8]>) -> Result<String, ApiError> {
    let rt = shared.runtime.load_full();
    let cfg = &rt.config.admin;
    let token = authorization
        .and_then(filters::auth::bearer_token)
        .ok_or_else(|| ApiError::invalid_token("admin credentials required: send `Authorization: Bearer <token>`"))?;
    let digest = filters::auth::sha256(token.as_bytes());
    for (i, h) in cfg.tokens_sha256.iter().enumerate() {
        if let Some(want) = filters::auth::parse_sha256_hex(h) {
            use subtle::ConstantTimeEq;
            if bool::from(want.ct_eq(&digest)) {
                return Ok(format!("admin-token-{i}"));
            }
        }
    }
    let Some(grant) = rt.oidc.authenticate(shared, token, &rt.groups).await? else {
        return Err(ApiError::invalid_token("not an admin token"));
    };
    if !grant.groups.iter().any(|g| cfg.groups.contains(g)) {
        return Err(ApiError::forbidden("not_admin", format!("`{}` is not in an admin group", grant.name)));
    }
    if cfg.require_mfa && !grant.mfa {
        return Err(ApiError::unauthorized("mfa_required", "the admin API requires multi-factor sign-in"));
    }
    Ok(grant.name.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub provider_keys: Vec<String>,
    #[serde(default = "default_proxies")]
    pub proxies: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub limits: Option<Vec<filters::meter::Limit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub name: String,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub provider_keys: Vec<String>,
    #[serde(default = "default_proxies")]
    pub proxies: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub limits: Option<Vec<filters::meter::Limit>>,
}

pub fn default_proxies() -> Vec<String> {
    vec![filters::endpoint::DEFAULT_PROXY.to_string()]
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_request_body", format!("invalid body: {e}")))
}

/// Providers, provider keys (the file's and the vault's), proxies, groups and limits must name
/// what the configuration has.
async fn check_grants(
    shared: &Shared,
    providers: &[String],
    provider_keys: &[String],
    proxies: &[String],
    groups: &[String],
    limits: Option<&[filters::meter::Limit]>,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    if !provider_keys.is_empty() {
        rt.provider_keys.refresh(&*shared.state, rt.sealer.as_deref(), &rt.config).await.map_err(state_error)?;
    }
    let bad = |m: String| ApiError::bad_request("invalid_grant", m);
    rt.config.check_grants(providers, provider_keys, &rt.provider_keys.names(), proxies, groups).map_err(bad)?;
    if let Some(l) = limits {
        filters::meter::validate_limits(l).map_err(bad)?;
    }
    Ok(())
}

pub(crate) fn state_error(e: crate::state::StateError) -> ApiError {
    ApiError::unavailable("state_unavailable", format!("state store: {e}"))
}

/// Serve one admin API request.
pub async fn serve(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Answer {
    match route(shared, method, path, authorization, body).await {
        Ok(a) => a,
        Err(e) => err(e),
    }
}

async fn route(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let actor = admin(shared, authorization).await?;
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let rest = path.trim_end_matches('/').strip_prefix("/admin/api").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let list = |data: Vec<serde_json::Value>| ok(200, serde_json::json!({"object": "list", "data": data}));
    match (method, segments.as_slice()) {
        ("GET", ["keys"]) => Ok(list(list_keys(shared).await?)),
        ("POST", ["keys"]) => Ok(ok(201, create_key(shared, &actor, parse(body)?).await?)),
        ("DELETE", ["keys", which]) => {
            Ok(ok(200, serde_json::json!({"revoked": revoke_key(shared, &actor, which).await?})))
        }
        ("GET", ["clients"]) => Ok(list(list_clients(shared).await?)),
        ("POST", ["clients"]) => Ok(ok(201, create_client(shared, &actor, parse(body)?).await?)),
        ("DELETE", ["clients", which]) => {
            Ok(ok(200, serde_json::json!({"revoked": revoke_client(shared, &actor, which).await?})))
        }
        ("GET", ["provider-keys"]) => Ok(list(list_provider_keys(shared).await?)),
        ("POST", ["provider-keys"]) => {
            let (replaced, v) = set_provider_key(shared, &actor, parse(body)?).await?;
            Ok(ok(if replaced { 200 } else { 201 }, v))
        }
        ("DELETE", ["provider-keys", name]) => {
            Ok(ok(200, serde_json::json!({"deleted": delete_provider_key(shared, &actor, name).await?})))
        }
        ("GET", ["policies"]) => Ok(ok(200, list_overrides(shared).await?)),
        ("PUT", ["policies", scope, name]) => {
            let (replaced, v) = set_override(shared, &actor, scope, name, body).await?;
            Ok(ok(if replaced { 200 } else { 201 }, v))
        }
        ("DELETE", ["policies", scope, name]) => Ok(ok(200, remove_override(shared, &actor, scope, name).await?)),
        ("GET", ["providers"]) => Ok(ok(200, providers_view(shared))),
        ("GET", ["usage"]) => {
            let days = match filters::oauth::parse_form(query.as_bytes()).ok().and_then(|f| f.get("days").cloned()) {
                None => 7,
                Some(d) => d
                    .parse::<u64>()
                    .ok()
                    .filter(|d| (1..=crate::gateway::org_usage::KEEP_DAYS).contains(d))
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_days", "`days` must be a whole number from 1 to 31")
                            .with_param("days")
                    })?,
            };
            let rows = crate::gateway::org_usage::report(shared, days).await.map_err(state_error)?;
            Ok(ok(200, serde_json::json!({"object": "list", "days": days, "data": rows})))
        }
        ("GET", ["audit"]) => Ok(ok(200, audit_state(shared).await?)),
        ("GET", ["audit", "records"]) => Ok(ok(200, audit_records(shared, &AuditQuery::parse(query)?).await?)),
        (_, ["policies"] | ["policies", _, _] | ["providers"] | ["usage"]) => Err(ApiError::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{method} is not allowed on {path}"),
        )),
        (
            _,
            ["keys"]
            | ["clients"]
            | ["provider-keys"]
            | ["keys", _]
            | ["clients", _]
            | ["provider-keys", _]
            | ["audit"]
            | ["audit", "records"],
        ) => Err(ApiError::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::not_found(format!("no admin route {path}"))),
    }
}

/// Record an admin change in the audit trail.
fn record(shared: &Shared, actor: &str, event: &str, fields: serde_json::Value) {
    let mut r = serde_json::json!({"ts": crate::gateway::chat::now_secs(), "event": event, "actor": actor});
    if let (Some(r), Some(f)) = (r.as_object_mut(), fields.as_object()) {
        r.extend(f.clone());
    }
    shared.audit.record(&r);
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Stored virtual keys (never the keys themselves).
pub async fn list_keys(shared: &Shared) -> Result<Vec<serde_json::Value>, ApiError> {
    let keys = keys::list(&*shared.state).await.map_err(state_error)?;
    Ok(keys
        .into_iter()
        .map(|(id, k)| {
            serde_json::json!({
                "id": short(&id), "name": k.name, "providers": k.providers, "provider_keys": k.provider_keys,
                "proxies": k.proxies, "groups": k.groups, "limits": k.limits,
                "created_at": k.created_at, "revoked_at": k.revoked_at,
            })
        })
        .collect())
}

/// Create a stored key; the answer holds the key, shown this once.
pub async fn create_key(shared: &Shared, actor: &str, k: NewKey) -> Result<serde_json::Value, ApiError> {
    check_grants(shared, &k.providers, &k.provider_keys, &k.proxies, &k.groups, k.limits.as_deref()).await?;
    if k.name.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_request_body", "a key needs a name"));
    }
    if k.providers.is_empty() && k.provider_keys.is_empty() {
        return Err(ApiError::bad_request("invalid_grant", "a key needs `providers` or `provider_keys`"));
    }
    let granted = serde_json::json!({"providers": k.providers, "provider_keys": k.provider_keys,
                                     "proxies": k.proxies, "groups": k.groups});
    let grants = keys::Grants {
        proxies: k.proxies,
        providers: k.providers,
        provider_keys: k.provider_keys,
        groups: k.groups,
        limits: k.limits,
    };
    let (key, id) = keys::create(&*shared.state, &k.name, grants).await.map_err(state_error)?;
    let mut fields = serde_json::json!({"name": k.name, "id": short(&id)});
    fields["grants"] = granted;
    record(shared, actor, "key_created", fields);
    Ok(serde_json::json!({"id": short(&id), "name": k.name, "key": key}))
}

pub async fn revoke_key(shared: &Shared, actor: &str, which: &str) -> Result<Vec<String>, ApiError> {
    let ids = keys::revoke(&*shared.state, which).await.map_err(state_error)?;
    if ids.is_empty() {
        return Err(ApiError::not_found(format!("no active key matches `{which}`")));
    }
    let ids: Vec<String> = ids.iter().map(|i| short(i).to_string()).collect();
    record(shared, actor, "key_revoked", serde_json::json!({"match": which, "ids": ids}));
    Ok(ids)
}

/// Clients from the config file and stored ones (never a secret).
pub async fn list_clients(shared: &Shared) -> Result<Vec<serde_json::Value>, ApiError> {
    let rt = shared.runtime.load_full();
    let mut items: Vec<serde_json::Value> = rt.oauth_clients.values().map(|c| client_json(c, "config")).collect();
    let stored = oauth::list_clients(&*shared.state).await.map_err(state_error)?;
    items.extend(stored.iter().map(|c| client_json(c, "stored")));
    Ok(items)
}

/// Create a stored client; the answer holds its secret (confidential clients), shown once.
pub async fn create_client(shared: &Shared, actor: &str, c: NewClient) -> Result<serde_json::Value, ApiError> {
    check_grants(shared, &c.providers, &c.provider_keys, &c.proxies, &c.groups, c.limits.as_deref()).await?;
    if c.name.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_request_body", "a client needs a name"));
    }
    for u in &c.redirect_uris {
        filters::oauth::valid_redirect_uri(u).map_err(|m| ApiError::bad_request("invalid_redirect_uri", m))?;
    }
    if c.public && c.redirect_uris.is_empty() {
        return Err(ApiError::bad_request("invalid_redirect_uri", "a public client needs redirect_uris"));
    }
    let new = oauth::NewClient {
        name: c.name.clone(),
        public: c.public,
        redirect_uris: c.redirect_uris,
        proxies: c.proxies,
        providers: c.providers,
        provider_keys: c.provider_keys,
        groups: c.groups,
        limits: c.limits,
        registered: false,
    };
    let (rec, secret) = oauth::create_client(&*shared.state, new).await.map_err(state_error)?;
    let fields = serde_json::json!({"client_id": rec.client_id, "name": c.name, "providers": rec.providers,
                                    "provider_keys": rec.provider_keys, "proxies": rec.proxies, "groups": rec.groups});
    record(shared, actor, "client_created", fields);
    let mut out = client_json(&rec, "stored");
    out["client_secret"] = secret.into();
    Ok(out)
}

pub async fn revoke_client(shared: &Shared, actor: &str, which: &str) -> Result<Vec<String>, ApiError> {
    let ids = oauth::revoke_clients(&*shared.state, which).await.map_err(state_error)?;
    if ids.is_empty() {
        return Err(ApiError::not_found(format!("no active stored client matches `{which}`")));
    }
    record(shared, actor, "client_revoked", serde_json::json!({"match": which, "ids": ids}));
    Ok(ids)
}

pub use crate::key_vault::NewProviderKey;

/// Named provider keys: the config file's and the vault's (never a key; the vault's show their
/// last four characters).
pub async fn list_provider_keys(shared: &Shared) -> Result<Vec<serde_json::Value>, ApiError> {
    let rt = shared.runtime.load_full();
    let mut items: Vec<serde_json::Value> = rt
        .config
        .provider_keys
        .iter()
        .map(|(name, k)| {
            serde_json::json!({
                "name": name, "provider": k.provider, "users": k.users, "groups": k.groups,
                "description": k.description, "source": "config",
            })
        })
        .collect();
    let stored = crate::key_vault::list(&*shared.state).await.map_err(state_error)?;
    items.extend(stored.into_iter().map(|k| {
        serde_json::json!({
            "name": k.name, "provider": k.provider, "users": k.users, "groups": k.groups,
            "description": k.description, "hint": k.hint, "updated_at": k.updated_at,
            "updated_by": k.updated_by, "source": "stored",
        })
    }));
    Ok(items)
}

/// Seal and store a provider key (a new one, or a rotation of a stored one); `true` when it
/// replaced one. This node uses it at once, the others within seconds.
pub async fn set_provider_key(
    shared: &Shared,
    actor: &str,
    k: NewProviderKey,
) -> Result<(bool, serde_json::Value), ApiError> {
    let rt = shared.runtime.load_full();
    let bad = |m: String| ApiError::bad_request("invalid_provider_key", m);
    let (users, groups) = (k.users.clone().unwrap_or_default(), k.groups.clone().unwrap_or_default());
    let problems = rt.config.provider_key_problems(&k.name, &k.provider, &users, &groups, k.description.as_deref());
    if let Some((field, m)) = problems.into_iter().next() {
        return Err(bad(if field.is_empty() { m } else { format!("{field}: {m}") }).with_param(field));
    }
    if rt.config.provider_keys.contains_key(&k.name) {
        return Err(bad(format!("`{}` is a provider key of the config file; change it there", k.name)));
    }
    crate::key_vault::check_api_key(&k.api_key).map_err(|m| bad(m).with_param("api_key"))?;
    let Some(sealer) = rt.sealer.as_deref() else {
        return Err(ApiError::new(
            409,
            "invalid_request_error",
            Some("secrets_key_missing"),
            format!(
                "provider keys are stored sealed: set {} (32 bytes, hex or base64) on every node",
                rt.config.secrets.key_env
            ),
        ));
    };
    let (rec, replaced) = match crate::key_vault::put(&*shared.state, sealer, k, actor).await.map_err(state_error)? {
        crate::key_vault::Put::Created(r) => (r, false),
        crate::key_vault::Put::Rotated(r) => (r, true),
        crate::key_vault::Put::OtherProvider(p) => {
            return Err(ApiError::new(
                409,
                "invalid_request_error",
                Some("provider_key_conflict"),
                format!("the stored key of that name is for provider `{p}`; delete it first (credentials mapped to a name must not reach another provider)"),
            ))
        }
    };
    let event = if replaced { "provider_key_rotated" } else { "provider_key_created" };
    let fields = serde_json::json!({"name": rec.name, "provider": rec.provider, "hint": rec.hint, "users": rec.users, "groups": rec.groups});
    record(shared, actor, event, fields);
    // The change is stored and audited; the 5 s reread picks it up if this read fails.
    if let Err(e) = rt.provider_keys.refresh(&*shared.state, Some(sealer), &rt.config).await {
        log::warn!("provider key `{}` stored; rereading the vault failed: {e}", rec.name);
    }
    Ok((replaced, serde_json::json!({"name": rec.name, "provider": rec.provider, "replaced": replaced})))
}

pub async fn delete_provider_key(shared: &Shared, actor: &str, name: &str) -> Result<String, ApiError> {
    let rt = shared.runtime.load_full();
    if !crate::key_vault::delete(&*shared.state, name).await.map_err(state_error)? {
        return Err(ApiError::not_found(format!("no stored provider key `{name}`")));
    }
    record(shared, actor, "provider_key_deleted", serde_json::json!({"name": name}));
    if let Err(e) = rt.provider_keys.refresh(&*shared.state, rt.sealer.as_deref(), &rt.config).await {
        log::warn!("provider key `{name}` deleted; rereading the vault failed: {e}");
    }
    Ok(name.to_string())
}

fn scope_of(scope: &str) -> Result<crate::gateway::overrides::Scope, ApiError> {
    crate::gateway::overrides::Scope::parse(scope)
        .ok_or_else(|| ApiError::not_found(format!("no override scope `{scope}`; use groups, principals or tiers")))
}

/// The overrides in force, next to what the file says for the same groups and proxies.
pub async fn list_overrides(shared: &Shared) -> Result<serde_json::Value, ApiError> {
    use crate::gateway::overrides::{self, Scope};
    let rt = shared.runtime.load_full();
    let stored = overrides::list(&*shared.state).await.map_err(state_error)?;
    let entry = |scope: Scope, name: &str| {
        stored
            .iter()
            .find(|(s, n, ..)| *s == scope && n == name)
            .map(|(_, _, v, at, by)| serde_json::json!({"value": v, "updated_at": at, "updated_by": by}))
    };
    let groups: serde_json::Map<String, serde_json::Value> = rt
        .config
        .groups
        .iter()
        .map(|(n, g)| (n.clone(), serde_json::json!({"file": g.policy, "override": entry(Scope::Group, n)})))
        .collect();
    let tiers: serde_json::Map<String, serde_json::Value> = rt
        .proxies
        .values()
        .map(|p| (p.id.clone(), serde_json::json!({"file": *p.tiers, "override": entry(Scope::Tiers, &p.id)})))
        .collect();
    let principals: serde_json::Map<String, serde_json::Value> = stored
        .iter()
        .filter(|(s, ..)| *s == Scope::Principal)
        .map(|(_, n, v, at, by)| (n.clone(), serde_json::json!({"value": v, "updated_at": at, "updated_by": by})))
        .collect();
    Ok(serde_json::json!({"groups": groups, "principals": principals, "tiers": tiers}))
}

/// Set an override (applied on this node at once, on the others within seconds); `true` when it
/// replaced one.
pub async fn set_override(
    shared: &Shared,
    actor: &str,
    scope: &str,
    name: &str,
    body: &[u8],
) -> Result<(bool, serde_json::Value), ApiError> {
    use crate::gateway::overrides;
    let scope = scope_of(scope)?;
    let rt = shared.runtime.load_full();
    let value = overrides::validate(&rt.config, &rt.proxy_ids(), scope, name, body)
        .map_err(|m| ApiError::bad_request("invalid_override", m))?;
    let replaced = overrides::set(&*shared.state, scope, name, value.clone(), actor).await.map_err(state_error)?;
    let fields = serde_json::json!({"scope": scope.as_str(), "name": name, "value": value});
    record(shared, actor, "policy_override_set", fields.clone());
    if let Err(e) = rt.refresh_overrides(&*shared.state).await {
        log::warn!("override stored; rereading the overrides failed: {e}");
    }
    Ok((replaced, fields))
}

pub async fn remove_override(
    shared: &Shared,
    actor: &str,
    scope: &str,
    name: &str,
) -> Result<serde_json::Value, ApiError> {
    let scope = scope_of(scope)?;
    let rt = shared.runtime.load_full();
    if !crate::gateway::overrides::remove(&*shared.state, scope, name).await.map_err(state_error)? {
        return Err(ApiError::not_found(format!("no {} override `{name}`", scope.as_str())));
    }
    let fields = serde_json::json!({"scope": scope.as_str(), "name": name});
    record(shared, actor, "policy_override_removed", fields.clone());
    if let Err(e) = rt.refresh_overrides(&*shared.state).await {
        log::warn!("override removed; rereading the overrides failed: {e}");
    }
    Ok(fields)
}

/// Providers and the egress allow-list, read-only (they stay file-managed for change control);
/// never a key.
pub fn providers_view(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load_full();
    let providers: Vec<serde_json::Value> = rt
        .registry
        .providers
        .values()
        .map(|p| {
            let hosts: Vec<serde_json::Value> = p
                .hosts
                .iter()
                .map(|h| serde_json::json!({"host": h.authority, "egress_allowed": h.egress_allowed, "keys": h.keys.len()}))
                .collect();
            serde_json::json!({"name": p.name, "kind": p.kind.as_str(), "models": p.models, "hosts": hosts,
                               "max_in_flight": p.max_in_flight})
        })
        .collect();
    serde_json::json!({"providers": providers, "egress_allow_hosts": rt.config.allowed_hosts()})
}

/// Whether the audit trail is intact.
pub async fn audit_state(shared: &Shared) -> Result<serde_json::Value, ApiError> {
    let Some(path) = shared.runtime.load().config.audit.path.clone() else {
        return Ok(serde_json::json!({"enabled": false}));
    };
    let checked = tokio::task::spawn_blocking(move || crate::audit::verify_file(std::path::Path::new(&path)))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot read the audit trail: {e}")))?;
    Ok(match checked {
        Ok(tip) => serde_json::json!({"enabled": true, "intact": true, "records": tip.seq, "last_hash": tip.hash}),
        Err(b) => serde_json::json!({"enabled": true, "intact": false, "broken_line": b.line, "reason": b.reason}),
    })
}

/// A page request for the audit trail's records: `limit` (1–500, default 50), `cursor` (a
/// `next_cursor` from the page before), `event` and `principal` filters.
pub struct AuditQuery {
    pub limit: usize,
    pub cursor: Option<u64>,
    pub filter: filters::audit::RecordFilter,
}

impl AuditQuery {
    pub fn parse(query: &str) -> Result<AuditQuery, ApiError> {
        let form = filters::oauth::parse_form(query.as_bytes())
            .map_err(|_| ApiError::bad_request("invalid_query", "the query string is not valid form encoding"))?;
        let bad =
            |param: &'static str, message: &str| ApiError::bad_request("invalid_query", message).with_param(param);
        let limit = match form.get("limit").filter(|v| !v.is_empty()) {
            None => 50,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| bad("limit", "`limit` must be a whole number from 1 to 500"))?,
        };
        let cursor = match form.get("cursor").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| bad("cursor", "`cursor` must be a `next_cursor` value"))?),
        };
        let text = |param: &'static str| -> Result<Option<String>, ApiError> {
            match form.get(param).filter(|v| !v.is_empty()) {
                Some(v) if v.len() > 256 => Err(bad(param, "a filter is at most 256 characters")),
                v => Ok(v.cloned()),
            }
        };
        let filter = filters::audit::RecordFilter { event: text("event")?, principal: text("principal")? };
        Ok(AuditQuery { limit, cursor, filter })
    }
}

/// The newest audit records that match, a page at a time (this node's trail file).
pub async fn audit_records(shared: &Shared, q: &AuditQuery) -> Result<serde_json::Value, ApiError> {
    let Some(path) = shared.runtime.load().config.audit.path.clone() else {
        return Err(ApiError::not_found("no audit trail is configured (audit.path)"));
    };
    let (cursor, limit, filter) = (q.cursor, q.limit, q.filter.clone());
    let page = tokio::task::spawn_blocking(move || {
        crate::audit::read_back(std::path::Path::new(&path), cursor, limit, &filter)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => ApiError::bad_request("invalid_query", e.to_string()).with_param("cursor"),
        _ => ApiError::internal(format!("cannot read the audit trail: {e}")),
    })?;
    Ok(serde_json::json!({
        "object": "list", "data": page.entries,
        "next_cursor": page.next_cursor.map(|c| c.to_string()), "unreadable_lines": page.unreadable,
    }))
}

fn client_json(c: &oauth::ClientRecord, source: &str) -> serde_json::Value {
    serde_json::json!({
        "client_id": c.client_id, "name": c.name, "public": c.is_public(), "source": source,
        "registered": c.registered, "redirect_uris": c.redirect_uris, "providers": c.providers,
        "provider_keys": c.provider_keys,
        "proxies": c.proxies, "groups": c.groups, "limits": c.limits,
        "created_at": c.created_at, "revoked_at": c.revoked_at,
    })
}
