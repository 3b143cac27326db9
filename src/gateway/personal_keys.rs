//! Users' own provider keys: `GET /v1/provider-keys` lists the caller's, `PUT
//! /v1/provider-keys/{provider}` with `{"api_key": "..."}` stores (or rotates) theirs for a
//! provider whose table sets `personal_keys = true`, `DELETE` removes it. Only IdP users have
//! them; their requests to that provider (a JWT, or a token from the authorization-code flow)
//! then spend their own key before any other. Changing one takes the user's own IdP JWT: an app
//! the user let act for them must not swap in a key of an account the app's owner reads. The key is sealed in the vault like an admin's
//! (`crate::key_vault`), named from the user and provider, never returned, and every change is in
//! the audit trail.

use super::ctx::RequestCtx;
use super::handlers::{authenticate, check_proxy_access, read_body};
use super::runtime::Principal;
use super::{respond, Shared};
use crate::admin::api::state_error;
use crate::key_vault::{self, NewProviderKey, Put};
use filters::error::ApiError;
use filters::meter::ScopeKind;
use pingora::proxy::Session;
use serde::Deserialize;
use std::time::Duration;

/// A provider key is at most `key_vault::MAX_KEY_LEN` bytes; the body has room for the JSON.
const MAX_BODY: usize = 16 * 1024;
/// Stores and deletes per user and hour: each one rereads the whole vault on this node.
const CHANGES_PER_HOUR: i64 = 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    api_key: String,
}

pub async fn serve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: &str,
    provider: Option<&str>,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let proxy = rt.proxy(filters::endpoint::DEFAULT_PROXY)?;
    ctx.proxy = Some(proxy.id.clone());
    let principal = authenticate(shared, &rt, session, ctx, false, false).await?;
    check_proxy_access(&principal, proxy)?;
    let user = match &principal {
        Principal::Granted(g) if g.scope == ScopeKind::User => g.name.clone(),
        _ => {
            return Err(ApiError::forbidden(
                "personal_keys_users_only",
                "personal provider keys belong to IdP users (a JWT or a user's OAuth token); virtual keys and \
                 client tokens use their provider key mappings",
            ))
        }
    };
    let Some(provider) = provider else {
        let body = list(shared, &rt, &user).await?;
        let _ = respond::json(session, ctx, 200, body, &[]).await;
        return Ok(());
    };
    if !rt.config.providers.contains_key(provider) {
        return Err(ApiError::not_found(format!("no provider `{provider}`")));
    }
    if app_token(session) {
        return Err(ApiError::forbidden(
            "personal_keys_need_idp_token",
            "change your provider keys with your own IdP token, not an app's access token",
        ));
    }
    let name = key_vault::personal_name(&user, provider);
    let user_tag = hex::encode(&filters::auth::sha256(user.as_bytes())[..12]);
    let changes = shared
        .state
        .window_incr(&format!("personal_keys:changes:{user_tag}"), 1, Duration::from_secs(3600))
        .await
        .map_err(state_error)?;
    if changes > CHANGES_PER_HOUR {
        return Err(ApiError::new(
            429,
            "rate_limit_exceeded",
            Some("rate_limit_exceeded"),
            format!("at most {CHANGES_PER_HOUR} changes to your provider keys an hour; try again later"),
        )
        .with_retry_after(600));
    }
    let audit = |event: &str, hint: Option<&str>| {
        shared.audit.record(&serde_json::json!({
            "ts": super::chat::now_secs(), "event": event, "principal": user, "actor": user,
            "route": "provider_keys", "name": name, "provider": provider, "personal": true, "hint": hint,
        }));
    };
    if method.eq_ignore_ascii_case("DELETE") {
        if !key_vault::delete(&*shared.state, &name).await.map_err(state_error)? {
            return Err(ApiError::not_found(format!("you have no key stored for `{provider}`")));
        }
        audit("provider_key_deleted", None);
        refresh(shared, &rt).await;
        let body = serde_json::json!({"provider": provider, "deleted": true});
        let _ = respond::json(session, ctx, 200, body.to_string().into_bytes(), &[]).await;
        return Ok(());
    }
    if !rt.provider_keys.accepts_personal(provider) {
        return Err(ApiError::forbidden(
            "personal_keys_not_allowed",
            format!("provider `{provider}` does not take personal keys (its table sets no `personal_keys = true`)"),
        ));
    }
    let Some(sealer) = rt.sealer.as_deref() else {
        return Err(ApiError::new(
            409,
            "invalid_request_error",
            Some("secrets_key_missing"),
            "this gateway stores no provider keys: its secrets key is not set",
        ));
    };
    let raw = read_body(session, MAX_BODY, Duration::from_secs(10)).await?;
    // serde's message can quote the value (the key itself), so it is not passed on.
    let body: PutBody = serde_json::from_slice(&raw).map_err(|_| {
        ApiError::bad_request("invalid_request_body", "the body must be a JSON object {\"api_key\": \"...\"}")
            .with_param("api_key")
    })?;
    let api_key = body.api_key.trim().to_string();
    key_vault::check_api_key(&api_key)
        .map_err(|m| ApiError::bad_request("invalid_request_body", m).with_param("api_key"))?;
    let new = NewProviderKey {
        name: name.clone(),
        provider: provider.to_string(),
        api_key,
        users: Some(vec![user.clone()]),
        groups: Some(Vec::new()),
        description: None,
    };
    let (rec, replaced) = match key_vault::put(&*shared.state, sealer, new, &user).await.map_err(state_error)? {
        Put::Created(r) => (r, false),
        Put::Rotated(r) => (r, true),
        // The name hashes the provider in, so another provider's record under it is not ours.
        Put::OtherProvider(_) => return Err(ApiError::internal("a stored key collides with this one's name")),
    };
    audit(if replaced { "provider_key_rotated" } else { "provider_key_created" }, Some(&rec.hint));
    refresh(shared, &rt).await;
    let body = serde_json::json!({"provider": provider, "hint": rec.hint, "replaced": replaced});
    let _ = respond::json(session, ctx, if replaced { 200 } else { 201 }, body.to_string().into_bytes(), &[]).await;
    Ok(())
}

/// Whether the bearer is an access token this gateway issued to an app (not the user's own JWT).
fn app_token(session: &Session) -> bool {
    let auth = session.req_header().headers.get("authorization");
    auth.and_then(|v| filters::auth::bearer_token(v.as_bytes()))
        .is_some_and(|t| t.starts_with(filters::oauth::ACCESS_TOKEN_PREFIX))
}

/// The caller's own keys (provider and last four characters) and the providers that take one:
/// one lookup per such provider, never a read of the whole vault.
async fn list(shared: &Shared, rt: &super::runtime::Runtime, user: &str) -> Result<Vec<u8>, ApiError> {
    let accepting: Vec<&String> = rt.config.providers.keys().filter(|p| rt.provider_keys.accepts_personal(p)).collect();
    let mut mine = Vec::new();
    for p in &accepting {
        let stored = key_vault::get(&*shared.state, &key_vault::personal_name(user, p)).await.map_err(state_error)?;
        if let Some(k) = stored {
            mine.push(serde_json::json!({"provider": k.provider, "hint": k.hint, "updated_at": k.updated_at}));
        }
    }
    Ok(serde_json::json!({"object": "list", "data": mine, "providers_accepting_personal_keys": accepting})
        .to_string()
        .into_bytes())
}

/// This node uses the change at once; the others reread the vault within seconds.
async fn refresh(shared: &Shared, rt: &super::runtime::Runtime) {
    if let Err(e) = rt.provider_keys.refresh(&*shared.state, rt.sealer.as_deref(), &rt.config).await {
        log::warn!("personal provider key changed; rereading the vault failed: {e}");
    }
}
