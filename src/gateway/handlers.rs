//! Route handlers: Chat Completions, Responses, model lists and native pass-through.

use super::chat::{self, Call, Front};
use super::ctx::RequestCtx;
use super::forward::{self, Plan, UpstreamCredential};
use super::metering;
use super::respond;
use super::routing::{self, Candidate};
use super::runtime::{Grant, Principal, ProxyPolicy, Runtime};
use super::Shared;
use crate::upstream::{Host, Kind};
use bytes::{Bytes, BytesMut};
use filters::auth::{bearer_token, classify, Credential};
use filters::body::ChatRequest;
use filters::meter::ScopeKind;
use filters::model::Target;
use filters::ApiError;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// Read the whole request body, refusing past `limit` (before reading it when Content-Length
/// says so) and giving up after `timeout`.
pub async fn read_body(session: &mut Session, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(16 * 1024).min(limit));
    let read = async {
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(ApiError::payload_too_large(limit));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!("could not read the request body: {}", e.etype().as_str()),
                    ))
                }
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::new(
                408,
                "invalid_request_error",
                Some("request_timeout"),
                "the request body did not arrive in time",
            ))
        }
    }
    Ok(buf.freeze())
}

fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session.req_header().headers.get(name).and_then(|v| v.to_str().ok())
}

/// The credential a request presents. Gateway routes take `Authorization: Bearer`; pass-through
/// routes also take the header or query parameter the provider's own SDK uses.
fn presented_token(session: &Session, passthrough: bool) -> Result<Option<String>, ApiError> {
    if let Some(v) = session.req_header().headers.get("authorization") {
        return match bearer_token(v.as_bytes()) {
            Some(t) => Ok(Some(t.to_string())),
            None => Err(ApiError::invalid_token("malformed Authorization header; expected `Bearer <token>`")),
        };
    }
    if passthrough {
        for h in ["x-api-key", "api-key", "x-goog-api-key"] {
            if let Some(v) = header(session, h) {
                return Ok(Some(v.trim().to_string()));
            }
        }
        if let Some(q) = session.req_header().uri.query() {
            if let Some((_, v)) = url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "key") {
                return Ok(Some(v.into_owned()));
            }
        }
    }
    Ok(None)
}

/// Authenticate the caller. `provider_keys_ok`: a non-gateway token is accepted as the
/// provider's own key (pass-through routes whose proxy allows it).
pub(super) async fn authenticate(
    shared: &Shared,
    rt: &Runtime,
    session: &Session,
    ctx: &mut RequestCtx,
    passthrough: bool,
    provider_keys_ok: bool,
) -> Result<Principal, ApiError> {
    let token = presented_token(session, passthrough)?
        .ok_or_else(|| ApiError::invalid_token("missing credentials: send `Authorization: Bearer <key>`"))?;
    let principal = match classify(&token) {
        Credential::VirtualKey(k) => match rt.lookup_key(k) {
            Some(rec) => Principal::Granted(rec),
            None => match shared.stored_keys.find(k, shared.fail_open).await {
                Ok(Some(stored)) => Principal::Granted(Arc::new(Grant {
                    meter_id: format!("stored-{}", hex::encode(&filters::auth::sha256(k.as_bytes())[..8])),
                    name: stored.name,
                    scope: ScopeKind::Key,
                    mfa: false,
                    proxies: stored.proxies.into_iter().collect(),
                    providers: stored.providers.into_iter().collect(),
                    provider_keys: stored.provider_keys,
                    groups: stored.groups,
                    policy: Default::default(),
                    limits: stored.limits.map_or_else(|| rt.default_key_limits.clone(), Into::into),
                })),
                Ok(None) => return Err(ApiError::invalid_token("invalid API key")),
                // A key the store cannot check now is not known to be bad: 503 (retry later), not
                // 401, which SDKs report as a wrong key. Failing open, keys looked up before the
                // outage are served from their last lookup (`KeyLookup::find`).
                Err(e) => {
                    return Err(ApiError::unavailable("state_unavailable", format!("cannot verify the key: {e}")))
                }
            },
        },
        Credential::Other(k) if k.starts_with(filters::oauth::ACCESS_TOKEN_PREFIX) => {
            super::oauth::principal(shared, rt, k).await?
        }
        Credential::Other(k) => match rt.oidc.authenticate(shared, k, &rt.groups).await? {
            Some(grant) => Principal::Granted(grant),
            None if provider_keys_ok => Principal::ProviderKey(k.to_string()),
            None if filters::jwt::looks_like_jwt(k) => {
                return Err(ApiError::unauthorized("invalid_token", "token is not from an accepted issuer"))
            }
            None => return Err(ApiError::invalid_token("invalid API key")),
        },
    };
    ctx.principal = Some(principal.label().to_string());
    if matches!(principal, Principal::Granted(_)) {
        super::provider_keys::ensure_fresh(shared).await;
    }
    Ok(principal)
}

fn mfa_required(proxy: &str) -> ApiError {
    ApiError::unauthorized(
        "mfa_required",
        format!("proxy `{proxy}` requires an IdP token that shows multi-factor sign-in"),
    )
}

pub(super) fn check_proxy_access(principal: &Principal, proxy: &ProxyPolicy) -> Result<(), ApiError> {
    let id = &proxy.id;
    match principal {
        Principal::Granted(k) if !k.proxies.contains(id) => {
            Err(ApiError::forbidden("proxy_not_allowed", format!("this credential may not use proxy `{id}`")))
        }
        Principal::Granted(k) if proxy.require_mfa && !k.mfa => Err(mfa_required(id)),
        Principal::ProviderKey(_) if proxy.require_mfa => Err(mfa_required(id)),
        _ => Ok(()),
    }
}

fn body_limits(rt: &Runtime) -> (usize, Duration) {
    (rt.config.server.max_body_bytes, Duration::from_millis(rt.config.server.body_read_timeout_ms))
}

/// `POST /v1/chat/completions` and `/v1/model-router/{proxy}/chat/completions`.
pub async fn chat(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    proxy_id: &str,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let proxy = rt.proxy(proxy_id)?;
    ctx.proxy = Some(proxy.id.clone());
    let principal = authenticate(shared, &rt, session, ctx, false, false).await?;
    check_proxy_access(&principal, proxy)?;
    let (limit, timeout) = body_limits(&rt);
    let body = read_body(session, limit, timeout).await?;
    let req = ChatRequest::parse(&body)?;
    let routed = routing::route(&rt, &principal, proxy, &body, &req.model)?;
    ctx.route_info = routed.info;
    let first = routed.targets.first().map(|t| (t.provider.name.as_str(), t.model.as_str()));
    metering::reserve(shared, &rt, ctx, &principal, proxy, &body, first).await?;
    let headers = json_headers(session, req.stream);
    // The body is parsed again only when an override was stripped from it.
    let (body, req) = match &routed.rewritten {
        Some(b) => (&b[..], ChatRequest::parse(b)?),
        None => (&body[..], req),
    };
    let call = Call { body, req, targets: routed.targets, front: Front::Chat, headers };
    chat::serve(shared, session, ctx, call).await
}

fn json_headers(session: &Session, stream: bool) -> Vec<(&'static str, String)> {
    let ua = header(session, "user-agent").map_or_else(|| "portcullis".to_string(), |u| format!("portcullis ({u})"));
    vec![
        ("content-type", "application/json".into()),
        ("accept", if stream { "text/event-stream" } else { "application/json" }.into()),
        ("accept-encoding", "identity".into()),
        ("user-agent", ua),
    ]
}

/// `POST /v1/responses`: OpenAI providers serve it natively; every other provider gets the
/// request translated to Chat Completions and the answer translated back.
pub async fn responses(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    proxy_id: &str,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let proxy = rt.proxy(proxy_id)?;
    ctx.proxy = Some(proxy.id.clone());
    let principal = authenticate(shared, &rt, session, ctx, false, false).await?;
    check_proxy_access(&principal, proxy)?;
    let (limit, timeout) = body_limits(&rt);
    let body = read_body(session, limit, timeout).await?;
    let mut obj = filters::body::JsonObject::parse(&body)?;
    let model_id = obj
        .str_member("model")?
        .map(|m| m.into_owned())
        .ok_or_else(|| ApiError::bad_request("invalid_request_body", "`model` is required").with_param("model"))?;
    let stream = obj.bool_member("stream")?.unwrap_or(false);
    let native = match rt.catalog.resolve(&model_id)? {
        Target::Provider { provider, model } => {
            let (p, key) = rt.authorize(&principal, proxy, &provider)?;
            (p.kind == Kind::OpenAi).then(|| (p.clone(), model, key))
        }
        Target::Auto => None,
    };
    let Some((provider, model, key)) = native else {
        // Every other provider (and `auto`) gets Chat Completions, translated back.
        drop(obj);
        let translated = filters::translate::responses::to_chat(&body)?;
        let routed = routing::route(&rt, &principal, proxy, &translated.chat_body, &model_id)?;
        ctx.route_info = routed.info;
        let first = routed.targets.first().map(|t| (t.provider.name.as_str(), t.model.as_str()));
        metering::reserve(shared, &rt, ctx, &principal, proxy, &body, first).await?;
        let chat_body = routed.rewritten.map_or(translated.chat_body, |b| b.to_vec());
        let req = ChatRequest::parse(&chat_body)?;
        let headers = json_headers(session, req.stream);
        let front = Front::Responses {
            meta: Box::new(translated.meta),
            id: format!("resp_{}", ctx.request_id.trim_start_matches("req_")),
        };
        let call = Call { body: &chat_body, req, targets: routed.targets, front, headers };
        return chat::serve(shared, session, ctx, call).await;
    };
    if !rt.policy_for(&principal, proxy).allows_model(&format!("{}:{model}", provider.name)) {
        return Err(ApiError::forbidden(
            "model_not_allowed",
            format!("your routing policy does not allow `{}:{model}`", provider.name),
        ));
    }
    metering::reserve(shared, &rt, ctx, &principal, proxy, &body, Some((&provider.name, &model))).await?;
    ctx.provider = Some(provider.clone());
    ctx.model = Some(model.clone());
    obj.set_str("model", &model);
    let upstream_body = Bytes::from(obj.to_vec());
    drop(obj);
    let prov = provider.clone();
    let path = move |h: &Host| prov.responses_path(h);
    let plan = Plan {
        method: "POST",
        path: &path,
        headers: json_headers(session, stream),
        passthrough_headers: Vec::new(),
        body: upstream_body,
        credential: UpstreamCredential::of(&key),
    };
    let mut ex = forward::send(shared, ctx, &provider, &plan).await?;
    let status = ex.status();
    if status >= 400 {
        // As on the chat route: OpenAI's own error bodies go to the client as written, except
        // when OpenAI rejects the gateway's key (a 502: the caller's credentials were fine).
        let body = ex.body(limit).await.map_err(|f| f.into_api_error(&provider.name))?;
        if matches!(status, 401 | 403) || !forward::is_openai_error(&body) {
            return Err(forward::upstream_error(status, &body, ex.header("retry-after"), &provider.name));
        }
        return forward::write_whole(shared, session, ctx, ex, status, body).await;
    }
    forward::relay(shared, session, ctx, ex).await
}

/// `GET /v1/models`: the `provider:model` ids this caller may use through this proxy.
pub async fn models(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    proxy_id: &str,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let proxy = rt.proxy(proxy_id)?;
    ctx.proxy = Some(proxy.id.clone());
    let principal = authenticate(shared, &rt, session, ctx, false, false).await?;
    check_proxy_access(&principal, proxy)?;
    let policy = rt.policy_for(&principal, proxy);
    let usable = |id: &str| {
        id.split_once(':').is_some_and(|(p, _)| proxy.allows_provider(p) && rt.key_for(&principal, p).is_some())
            && policy.allows_model(id)
    };
    let mut ids: Vec<String> = Vec::new();
    // `auto` and the tier models first, when this caller can reach any of them.
    let tiered: Vec<String> = filters::route::policy::visible_models(&rt.tier_map(proxy), &policy)
        .into_iter()
        .filter(|id| id == "auto" || usable(id))
        .collect();
    if tiered.len() > 1 {
        ids.extend(tiered);
    }
    for (name, p) in &rt.registry.providers {
        for m in &p.models {
            let id = format!("{name}:{m}");
            if usable(&id) && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let data: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            let owner = id.split_once(':').map_or("portcullis", |(p, _)| p);
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default();
    let _ = respond::json(session, ctx, 200, body, &[]).await;
    Ok(())
}

/// Client request headers never forwarded on pass-through: hop-by-hop, credentials (replaced
/// by the upstream key), cookies and the gateway's own attribution headers.
fn forwardable(name: &str) -> bool {
    !matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-connection"
            | "content-length"
            | "authorization"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "cookie"
            | "accept-encoding"
            | "expect"
            | "forwarded"
            | "x-forwarded-for"
    ) && !name.starts_with("x-portcullis-")
        && !name.starts_with("x-archestra-")
}

/// Remove `key=` from a query string (Google SDKs put the key there).
fn strip_key_param(rest: &str) -> String {
    let Some((path, query)) = rest.split_once('?') else {
        return rest.to_string();
    };
    let kept: Vec<&str> = query.split('&').filter(|kv| !kv.starts_with("key=") && *kv != "key").collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// `/v1/{provider}/...`: the provider's native API, untranslated, through the full pipeline.
pub async fn passthrough(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: &str,
    provider_name: &str,
    rest: &str,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let proxy = rt.proxy(filters::endpoint::DEFAULT_PROXY)?;
    ctx.proxy = Some(proxy.id.clone());
    let Some(provider) = rt.registry.get(provider_name).cloned() else {
        return Err(ApiError::not_found(format!(
            "no provider `{provider_name}`; configured providers: {}",
            rt.catalog.providers().join(", ")
        )));
    };
    let principal = authenticate(shared, &rt, session, ctx, true, proxy.passthrough_provider_keys).await?;
    check_proxy_access(&principal, proxy)?;
    let (_, key) = rt.authorize(&principal, proxy, provider_name)?;
    ctx.provider = Some(provider.clone());
    // With the gateway's own keys, only the endpoints the deployment opened (see
    // `filters::passthrough`); the caller's own key reaches what it could reach directly.
    let open = rt.passthrough.get(provider_name).is_some_and(|r| r.allows(method, rest));
    if matches!(principal, Principal::Granted(_)) && !open {
        let path = rest.split('?').next().unwrap_or_default();
        return Err(ApiError::forbidden(
            "endpoint_not_allowed",
            format!(
                "{method} {path} is not open on the `{provider_name}` pass-through route; the gateway's keys reach \
                 its inference endpoints only (add others with providers.{provider_name}.passthrough_paths)"
            ),
        ));
    }
    let (limit, timeout) = body_limits(&rt);
    let body = read_body(session, limit, timeout).await?;
    let named = filters::endpoint::passthrough_models(rest, &body);
    let policy = rt.policy_for(&principal, proxy);
    // A request naming no model (files, batches, model lists) is only for callers whose policy
    // allows the whole provider.
    let wildcard = [String::from("*")];
    for m in if named.is_empty() { &wildcard[..] } else { &named[..] } {
        let id = format!("{provider_name}:{m}");
        if !policy.allows_model(&id) {
            return Err(ApiError::forbidden(
                "model_not_allowed",
                if named.is_empty() {
                    format!("your routing policy does not allow `{provider_name}` requests that name no model")
                } else {
                    format!("your routing policy does not allow `{id}`")
                },
            ));
        }
    }
    ctx.model = named.into_iter().next();
    let named_model = ctx.model.clone();
    let first = named_model.as_deref().map(|m| (provider_name, m));
    metering::reserve(shared, &rt, ctx, &principal, proxy, &body, first).await?;
    if provider.kind == Kind::Mock {
        return passthrough_mock(shared, session, ctx, method, rest, provider, &body).await;
    }
    let passthrough_headers: Vec<(http::HeaderName, http::HeaderValue)> = session
        .req_header()
        .headers
        .iter()
        .filter(|(n, _)| forwardable(n.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let rest = strip_key_param(rest);
    let path = move |h: &Host| format!("{}{rest}", h.base_path);
    let caller_key = match &principal {
        Principal::ProviderKey(k) => Some(k.clone()),
        Principal::Granted(_) => None,
    };
    let plan = Plan {
        method,
        path: &path,
        headers: vec![("accept-encoding", "identity".into())],
        passthrough_headers,
        body,
        credential: caller_key.as_deref().map_or_else(|| UpstreamCredential::of(&key), UpstreamCredential::Caller),
    };
    let ex = forward::send(shared, ctx, &provider, &plan).await?;
    forward::relay(shared, session, ctx, ex).await
}

async fn passthrough_mock(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: &str,
    rest: &str,
    provider: Arc<crate::upstream::Provider>,
    body: &[u8],
) -> Result<(), ApiError> {
    let path = rest.split('?').next().unwrap_or_default();
    if method != "POST" || path != "/chat/completions" {
        return Err(ApiError::not_found(format!(
            "the mock provider serves POST /chat/completions, not {method} {path}"
        )));
    }
    let req = ChatRequest::parse(body)?;
    let model = req.model.clone();
    ctx.model = Some(model.clone());
    let headers = json_headers(session, req.stream);
    let targets = vec![Candidate { provider, model, tier: None, key: super::provider_keys::KeyChoice::Pool }];
    chat::serve(shared, session, ctx, Call { body, req, targets, front: Front::Chat, headers }).await
}

/// `GET /v1/usage`: the caller's own usage, budgets and rate limits on the default proxy.
pub async fn usage(shared: &Shared, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let proxy = rt.proxy(filters::endpoint::DEFAULT_PROXY)?;
    ctx.proxy = Some(proxy.id.clone());
    let principal = authenticate(shared, &rt, session, ctx, false, false).await?;
    let body = metering::report(shared, &rt, &principal, proxy).await?;
    let _ = respond::json(session, ctx, 200, body, &[]).await;
    Ok(())
}
