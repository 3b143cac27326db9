//! The OAuth 2.1 authorization server's endpoints: metadata (RFC 8414, RFC 9728), token
//! (client credentials, authorization code with PKCE S256, refresh with rotation), revocation
//! (RFC 7009), introspection (RFC 7662), dynamic registration of public clients (RFC 7591),
//! and the authorize endpoint, where a user signs in at the configured IdP and consents.
//!
//! These endpoints answer in RFC 6749's error shape (`{"error","error_description"}`), which
//! OAuth client libraries parse, not in the OpenAI one.

use super::ctx::RequestCtx;
use super::handlers::read_body;
use super::oidc::Issuer;
use super::respond;
use super::runtime::{Grant, Principal, Runtime};
use super::Shared;
use crate::oauth::{self as store, ClientRecord, NewClient, Pending, Redeemed, TokenRecord, User};
use crate::state::StateError;
use bytes::Bytes;
use filters::endpoint::OAuthRoute;
use filters::meter::ScopeKind;
use filters::oauth::{self, OAuthError, LLM_PROXY_SCOPE};
use filters::ApiError;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest form or registration body.
const MAX_BODY: usize = 64 * 1024;
/// How long a user has to sign in at the IdP and decide on the consent page.
const PENDING_SECONDS: u64 = 600;
/// Cookie that binds the consent form to the browser that signed in.
const CSRF_COOKIE: &str = "pc_oauth_csrf";

fn unavailable(e: StateError) -> OAuthError {
    OAuthError::new(503, "temporarily_unavailable", format!("state store: {e}"))
}

/// A response the handler has decided on.
enum Reply {
    Json(u16, serde_json::Value),
    Error(OAuthError),
    /// An error on a page a person sees (a browser, no usable redirect URI).
    Page(u16, String),
    Html(String, Vec<(&'static str, String)>),
    Redirect(String),
}

impl From<OAuthError> for Reply {
    fn from(e: OAuthError) -> Self {
        Reply::Error(e)
    }
}

pub async fn serve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: OAuthRoute,
) -> Result<(), ApiError> {
    let rt = shared.runtime.load_full();
    let post = session.req_header().method == http::Method::POST;
    let reply = match route {
        OAuthRoute::ServerMetadata => {
            Reply::Json(200, oauth::metadata(&rt.config.server.public_url, rt.config.oauth.registration == "open"))
        }
        OAuthRoute::ResourceMetadata => Reply::Json(200, oauth::resource_metadata(&rt.config.server.public_url)),
        OAuthRoute::Token => token(shared, &rt, session, ctx).await.unwrap_or_else(Reply::Error),
        OAuthRoute::Revoke => revoke(shared, &rt, session).await.unwrap_or_else(Reply::Error),
        OAuthRoute::Introspect => introspect(shared, &rt, session).await.unwrap_or_else(Reply::Error),
        OAuthRoute::Register => register(shared, &rt, session, ctx).await.unwrap_or_else(Reply::Error),
        OAuthRoute::Authorize if post => consent(shared, &rt, session, ctx).await,
        OAuthRoute::Authorize => authorize(shared, &rt, session).await,
        OAuthRoute::Callback => callback(shared, &rt, session).await,
    };
    write(session, ctx, reply).await;
    Ok(())
}

async fn write(session: &mut Session, ctx: &mut RequestCtx, reply: Reply) {
    let no_store = [("cache-control", "no-store".to_string()), ("pragma", "no-cache".to_string())];
    let (status, content_type, body, mut extra): (u16, &str, Vec<u8>, Vec<(&'static str, String)>) = match reply {
        Reply::Json(status, v) => {
            (status, "application/json", serde_json::to_vec(&v).unwrap_or_default(), no_store.to_vec())
        }
        Reply::Error(e) => {
            ctx.error = Some(e.description.clone());
            ctx.error_code = Some(e.error);
            let mut extra = no_store.to_vec();
            if e.status == 401 {
                extra.push(("www-authenticate", r#"Basic realm="portcullis""#.to_string()));
            }
            (e.status, "application/json", e.body(), extra)
        }
        Reply::Page(status, message) => {
            ctx.error = Some(message.clone());
            ctx.error_code = Some("invalid_request");
            (
                status,
                "text/html; charset=utf-8",
                page("Sign-in failed", &format!("<p>{}</p>", oauth::html_escape(&message))).into_bytes(),
                no_store.to_vec(),
            )
        }
        Reply::Html(html, headers) => {
            let mut extra = no_store.to_vec();
            extra.extend(headers);
            (200, "text/html; charset=utf-8", html.into_bytes(), extra)
        }
        Reply::Redirect(location) => (302, "text/plain", Vec::new(), {
            let mut e = no_store.to_vec();
            e.push(("location", location));
            e
        }),
    };
    if content_type.starts_with("text/html") {
        extra.push((
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".into(),
        ));
        extra.push(("x-frame-options", "DENY".into()));
        extra.push(("referrer-policy", "no-referrer".into()));
    }
    let Ok(mut h) = respond::head(status, ctx) else { return };
    let _ = h.insert_header("content-type", content_type);
    let _ = h.insert_header("content-length", body.len().to_string());
    for (k, v) in &extra {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            let _ = h.append_header(*k, v);
        }
    }
    ctx.status = status;
    ctx.response_started = true;
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    if session.write_response_header(Box::new(h), false).await.is_ok() {
        let _ = session.write_response_body(Some(Bytes::from(body)), true).await;
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}\
         button{{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        t = oauth::html_escape(title)
    )
}

async fn form_body(session: &mut Session) -> Result<HashMap<String, String>, OAuthError> {
    let body = read_body(session, MAX_BODY, Duration::from_secs(10))
        .await
        .map_err(|e| OAuthError::invalid_request(e.message))?;
    oauth::parse_form(&body)
}

fn query(session: &Session) -> Result<HashMap<String, String>, OAuthError> {
    oauth::parse_form(session.req_header().uri.query().unwrap_or_default().as_bytes())
}

/// A client by id: a static one from the config, else a stored one (read fresh from the store:
/// these endpoints are not hot, and a revoked client must stop at once).
async fn find_client(shared: &Shared, rt: &Runtime, id: &str) -> Result<Option<Arc<ClientRecord>>, OAuthError> {
    if let Some(c) = rt.oauth_clients.get(id) {
        return Ok(Some(c.clone()));
    }
    let stored = shared.state.hget(store::CLIENTS_MAP, id).await.map_err(unavailable)?;
    Ok(stored.and_then(|v| serde_json::from_slice::<ClientRecord>(&v).ok()).map(Arc::new))
}

/// Authenticate the client calling the token, revocation or introspection endpoint.
async fn authenticate_client(
    shared: &Shared,
    rt: &Runtime,
    session: &Session,
    form: &HashMap<String, String>,
) -> Result<Arc<ClientRecord>, OAuthError> {
    let auth = oauth::client_auth(session.req_header().headers.get("authorization").map(|v| v.as_bytes()), form)?;
    let fail = OAuthError::invalid_client;
    let Some(client) = find_client(shared, rt, &auth.client_id).await? else {
        return Err(fail("unknown client or wrong secret"));
    };
    if client.revoked_at.is_some() {
        return Err(fail("this client has been revoked"));
    }
    match (&auth.secret, client.is_public()) {
        (Some(s), false) if client.secret_matches(s) => Ok(client),
        (None, true) => Ok(client),
        (Some(_), true) => Err(fail("a public client has no secret")),
        _ => Err(fail("unknown client or wrong secret")),
    }
}

fn token_reply(access: &str, expires_in: u64, scope: &[String], refresh: Option<&str>) -> Reply {
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope.join(" "),
    });
    if let Some(r) = refresh {
        body["refresh_token"] = r.into();
    }
    Reply::Json(200, body)
}

fn audit(shared: &Shared, ctx: &RequestCtx, event: &str, fields: serde_json::Value) {
    let mut record = serde_json::json!({
        "ts": super::chat::now_secs(), "event": event, "request_id": ctx.request_id, "client": ctx.client,
    });
    if let (Some(r), Some(f)) = (record.as_object_mut(), fields.as_object()) {
        r.extend(f.clone());
    }
    shared.audit.record(&record);
}

async fn token(
    shared: &Shared,
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Reply, OAuthError> {
    let form = form_body(session).await?;
    let client = authenticate_client(shared, rt, session, &form).await?;
    ctx.principal = Some(format!("client:{}", client.name));
    let st = &*shared.state;
    let cfg = &rt.config.oauth;
    let now = store::now();
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or_default();
    let allowed = [LLM_PROXY_SCOPE.to_string()];
    let reply = match grant_type {
        "client_credentials" => {
            if client.is_public() {
                return Err(OAuthError::new(
                    400,
                    "unauthorized_client",
                    "a public client cannot use client_credentials",
                ));
            }
            let scope = oauth::requested_scopes(form.get("scope").map(String::as_str), &allowed)?;
            let rec = TokenRecord {
                client_id: client.client_id.clone(),
                scope: scope.clone(),
                issued_at: now,
                expires_at: now + cfg.access_token_seconds,
                user: None,
                family: None,
            };
            let access = store::issue_access(st, &rec).await.map_err(unavailable)?;
            token_reply(&access, cfg.access_token_seconds, &scope, None)
        }
        "authorization_code" => {
            let need = |k: &str| form.get(k).ok_or_else(|| OAuthError::invalid_request(format!("`{k}` is required")));
            let (code, redirect_uri, verifier) = (need("code")?, need("redirect_uri")?, need("code_verifier")?);
            let rec = match store::redeem_code(st, code, cfg.refresh_token_seconds).await.map_err(unavailable)? {
                Redeemed::Fresh(rec) => rec,
                Redeemed::Replayed => {
                    shared.oauth.evict_all_tokens();
                    return Err(OAuthError::invalid_grant(
                        "this code was already used; the tokens issued for it are revoked",
                    ));
                }
                Redeemed::Unknown => return Err(OAuthError::invalid_grant("unknown or expired code")),
            };
            if rec.client_id != client.client_id {
                return Err(OAuthError::invalid_grant("the code was issued to another client"));
            }
            if rec.redirect_uri != *redirect_uri {
                return Err(OAuthError::invalid_grant("redirect_uri differs from the authorization request"));
            }
            if !oauth::pkce_matches(verifier, &rec.code_challenge) {
                return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"));
            }
            issue_user_tokens(st, cfg, &client, rec.scope, rec.user, rec.family, now + cfg.refresh_token_seconds)
                .await?
        }
        "refresh_token" => {
            let presented =
                form.get("refresh_token").ok_or_else(|| OAuthError::invalid_request("`refresh_token` is required"))?;
            let rec = match store::redeem_refresh(st, presented).await.map_err(unavailable)? {
                Redeemed::Fresh(rec) => rec,
                Redeemed::Replayed => {
                    shared.oauth.evict_all_tokens();
                    return Err(OAuthError::invalid_grant(
                        "this refresh token was already used; the authorization is revoked",
                    ));
                }
                Redeemed::Unknown => {
                    return Err(OAuthError::invalid_grant("unknown, expired or revoked refresh token"))
                }
            };
            if rec.client_id != client.client_id {
                return Err(OAuthError::invalid_grant("the refresh token was issued to another client"));
            }
            let (Some(user), Some(family)) = (rec.user, rec.family) else {
                return Err(OAuthError::invalid_grant("not a refresh token of a user authorization"));
            };
            // A refresh may narrow the scope, never widen it.
            let scope = oauth::requested_scopes(form.get("scope").map(String::as_str), &rec.scope)?;
            issue_user_tokens(st, cfg, &client, scope, user, family, rec.expires_at).await?
        }
        "" => return Err(OAuthError::invalid_request("`grant_type` is required")),
        other => {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                format!("grant_type `{other}` is not supported"),
            ))
        }
    };
    audit(shared, ctx, "token_issued", serde_json::json!({"client_id": client.client_id, "grant_type": grant_type}));
    Ok(reply)
}

/// Access and (rotated) refresh token for a user authorization. The refresh token keeps the
/// authorization's absolute expiry.
async fn issue_user_tokens(
    st: &dyn crate::state::StateStore,
    cfg: &crate::config::OAuth,
    client: &ClientRecord,
    scope: Vec<String>,
    user: User,
    family: String,
    refresh_expires: u64,
) -> Result<Reply, OAuthError> {
    let now = store::now();
    let mut rec = TokenRecord {
        client_id: client.client_id.clone(),
        scope: scope.clone(),
        issued_at: now,
        expires_at: (now + cfg.access_token_seconds).min(refresh_expires),
        user: Some(user),
        family: Some(family),
    };
    let access = store::issue_access(st, &rec).await.map_err(unavailable)?;
    rec.expires_at = refresh_expires;
    let refresh = store::issue_refresh(st, &rec).await.map_err(unavailable)?;
    Ok(token_reply(&access, cfg.access_token_seconds.min(refresh_expires.saturating_sub(now)), &scope, Some(&refresh)))
}

async fn revoke(shared: &Shared, rt: &Runtime, session: &mut Session) -> Result<Reply, OAuthError> {
    let form = form_body(session).await?;
    let client = authenticate_client(shared, rt, session, &form).await?;
    let token = form.get("token").ok_or_else(|| OAuthError::invalid_request("`token` is required"))?;
    let st = &*shared.state;
    // RFC 7009 §2.2: an unknown token is not an error, and another client's token is left alone.
    if let Some(rec) = store::find_access(st, token).await.map_err(unavailable)? {
        if rec.client_id == client.client_id {
            store::revoke_access(st, token).await.map_err(unavailable)?;
            shared.oauth.evict_token(token);
        }
    } else if let Some(rec) = store::find_refresh(st, token).await.map_err(unavailable)? {
        if rec.client_id == client.client_id {
            // Revoking a refresh token ends the authorization, its access tokens included.
            if let Some(f) = &rec.family {
                store::revoke_family(st, f).await.map_err(unavailable)?;
            }
            shared.oauth.evict_all_tokens();
        }
    }
    Ok(Reply::Json(200, serde_json::json!({})))
}

async fn introspect(shared: &Shared, rt: &Runtime, session: &mut Session) -> Result<Reply, OAuthError> {
    let form = form_body(session).await?;
    let client = authenticate_client(shared, rt, session, &form).await?;
    let token = form.get("token").ok_or_else(|| OAuthError::invalid_request("`token` is required"))?;
    let st = &*shared.state;
    let (rec, kind) = match store::find_access(st, token).await.map_err(unavailable)? {
        Some(r) => (Some(r), "access_token"),
        None => (store::find_refresh(st, token).await.map_err(unavailable)?, "refresh_token"),
    };
    let Some(rec) = rec.filter(|r| r.client_id == client.client_id) else {
        return Ok(Reply::Json(200, serde_json::json!({"active": false})));
    };
    let mut body = serde_json::json!({
        "active": true,
        "client_id": rec.client_id,
        "scope": rec.scope.join(" "),
        "token_type": if kind == "access_token" { "Bearer" } else { "refresh_token" },
        "exp": rec.expires_at,
        "iat": rec.issued_at,
        "iss": rt.config.server.public_url,
    });
    if let Some(u) = &rec.user {
        body["sub"] = format!("{}:{}", u.idp, u.sub).into();
        body["username"] = u.sub.clone().into();
    }
    Ok(Reply::Json(200, body))
}

async fn register(shared: &Shared, rt: &Runtime, session: &mut Session, ctx: &RequestCtx) -> Result<Reply, OAuthError> {
    if rt.config.oauth.registration != "open" {
        return Err(OAuthError::new(403, "access_denied", "dynamic client registration is disabled"));
    }
    // Registration is open to anyone: bound how many clients one address can create.
    let addr =
        session.client_addr().and_then(|a| a.as_inet()).map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
    let made = shared
        .state
        .window_incr(&format!("oauth:register:{addr}"), 1, Duration::from_secs(3600))
        .await
        .map_err(unavailable)?;
    if made > i64::try_from(rt.config.oauth.registrations_per_hour).unwrap_or(i64::MAX) {
        return Err(OAuthError::new(
            429,
            "temporarily_unavailable",
            "too many client registrations from this address; try again later",
        ));
    }
    let body = read_body(session, MAX_BODY, Duration::from_secs(10))
        .await
        .map_err(|e| OAuthError::invalid_request(e.message))?;
    let meta: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| OAuthError::new(400, "invalid_client_metadata", format!("body is not JSON: {e}")))?;
    let bad = |m: String| OAuthError::new(400, "invalid_client_metadata", m);
    let strings = |key: &str, default: &[&str]| -> Result<Vec<String>, OAuthError> {
        match meta.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| bad(format!("`{key}` must be an array of strings")))
                })
                .collect(),
            Some(_) => Err(bad(format!("`{key}` must be an array of strings"))),
        }
    };
    let redirect_uris = strings("redirect_uris", &[])?;
    if redirect_uris.is_empty() || redirect_uris.len() > 10 {
        return Err(OAuthError::new(400, "invalid_redirect_uri", "give 1 to 10 redirect_uris"));
    }
    for u in &redirect_uris {
        oauth::valid_redirect_uri(u).map_err(|m| OAuthError::new(400, "invalid_redirect_uri", m))?;
    }
    let method = meta.get("token_endpoint_auth_method").and_then(|v| v.as_str()).unwrap_or("none");
    if method != "none" {
        return Err(bad(format!(
            "token_endpoint_auth_method `{method}`: only public clients (\"none\", with PKCE) register themselves"
        )));
    }
    let grant_types = strings("grant_types", &["authorization_code", "refresh_token"])?;
    if let Some(g) = grant_types.iter().find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token")) {
        return Err(bad(format!("grant type `{g}` is not available to a registered client")));
    }
    let response_types = strings("response_types", &["code"])?;
    if response_types.iter().any(|r| r != "code") {
        return Err(bad("only the `code` response type is supported".into()));
    }
    if let Some(scope) = meta.get("scope") {
        let scope = scope.as_str().ok_or_else(|| bad("`scope` must be a string".into()))?;
        oauth::requested_scopes(Some(scope), &[LLM_PROXY_SCOPE.to_string()])?;
    }
    let name = match meta.get("client_name") {
        None => "unnamed client".to_string(),
        Some(v) => v
            .as_str()
            .filter(|n| !n.is_empty() && n.chars().count() <= 100)
            .ok_or_else(|| bad("`client_name` must be a string of 1 to 100 characters".into()))?
            .to_string(),
    };
    let new = NewClient {
        name: name.clone(),
        public: true,
        redirect_uris: redirect_uris.clone(),
        registered: true,
        ..Default::default()
    };
    let (rec, _) = store::create_client(&*shared.state, new).await.map_err(unavailable)?;
    audit(shared, ctx, "client_registered", serde_json::json!({"client_id": rec.client_id, "name": name}));
    Ok(Reply::Json(
        201,
        serde_json::json!({
            "client_id": rec.client_id,
            "client_id_issued_at": rec.created_at,
            "client_name": name,
            "redirect_uris": redirect_uris,
            "token_endpoint_auth_method": "none",
            "grant_types": grant_types,
            "response_types": response_types,
            "scope": LLM_PROXY_SCOPE,
        }),
    ))
}

/// The login IdP and its discovered endpoints.
async fn login_idp<'a>(
    shared: &Shared,
    rt: &'a Runtime,
) -> Result<(&'a Arc<Issuer>, Arc<super::oidc::Discovery>), String> {
    let name = rt.config.oauth.login_idp.as_deref().ok_or("no sign-in IdP is configured (oauth.login_idp)")?;
    let issuer = rt.oidc.by_name(name).ok_or("the sign-in IdP is not configured")?;
    let d = issuer.discovery(shared).await.map_err(|e| format!("the sign-in IdP cannot be reached: {e}"))?;
    Ok((issuer, d))
}

fn callback_url(rt: &Runtime) -> String {
    format!("{}{}", rt.config.server.public_url.trim_end_matches('/'), oauth::PATH_CALLBACK)
}

/// `GET /authorize`: check the client's request, then send the browser to the IdP.
async fn authorize(shared: &Shared, rt: &Runtime, session: &Session) -> Reply {
    let q = match query(session) {
        Ok(q) => q,
        Err(e) => return Reply::Page(400, e.description),
    };
    let Some(client_id) = q.get("client_id") else { return Reply::Page(400, "the request names no client_id".into()) };
    let client = match find_client(shared, rt, client_id).await {
        Ok(Some(c)) if c.revoked_at.is_none() => c,
        Ok(_) => return Reply::Page(400, "unknown client".into()),
        Err(e) => return Reply::Page(e.status, e.description),
    };
    let redirect_uri = match q.get("redirect_uri") {
        Some(r) if client.redirect_uris.iter().any(|reg| oauth::redirect_matches(reg, r)) => r.clone(),
        Some(_) => return Reply::Page(400, "redirect_uri is not registered for this client".into()),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return Reply::Page(400, "redirect_uri is required".into()),
    };
    // From here on, errors go back to the client's redirect URI (RFC 6749 §4.1.2.1).
    let state = q.get("state").cloned();
    let iss = rt.config.server.public_url.clone();
    let back = |error: &str, description: &str| {
        let mut p = vec![("error", error), ("error_description", description), ("iss", iss.as_str())];
        if let Some(s) = &state {
            p.push(("state", s));
        }
        Reply::Redirect(oauth::redirect_with(&redirect_uri, &p))
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return back("unsupported_response_type", "response_type must be `code`");
    }
    let Some(challenge) = q.get("code_challenge") else {
        return back("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256");
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") || challenge.len() != 43 {
        return back("invalid_request", "code_challenge_method must be S256 (plain is not accepted)");
    }
    let scope = match oauth::requested_scopes(q.get("scope").map(String::as_str), &[LLM_PROXY_SCOPE.to_string()]) {
        Ok(s) => s,
        Err(e) => return back(e.error, &e.description),
    };
    let (issuer, discovery) = match login_idp(shared, rt).await {
        Ok(x) => x,
        Err(m) => return back("temporarily_unavailable", &m),
    };
    let Some(endpoint) = &discovery.authorization_endpoint else {
        return back("temporarily_unavailable", "the sign-in IdP publishes no authorization_endpoint");
    };
    let pending_id = store::random_secret("");
    let idp_verifier = store::random_secret("");
    let pending = Pending {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        code_challenge: challenge.clone(),
        scope,
        idp_verifier: idp_verifier.clone(),
        nonce: store::random_secret(""),
        user: None,
        csrf_sha256: None,
    };
    if let Err(e) = store::put_pending(&*shared.state, &pending_id, &pending, PENDING_SECONDS).await {
        return back("temporarily_unavailable", &format!("state store: {e}"));
    }
    Reply::Redirect(issuer.login_url(endpoint, &callback_url(rt), &pending_id, &pending.nonce, &idp_verifier))
}

/// `GET /callback`: the IdP sends the browser back; redeem its code, verify the ID token, and
/// show the consent page.
async fn callback(shared: &Shared, rt: &Runtime, session: &Session) -> Reply {
    let q = match query(session) {
        Ok(q) => q,
        Err(e) => return Reply::Page(400, e.description),
    };
    let Some(pending_id) = q.get("state") else { return Reply::Page(400, "the sign-in has no state".into()) };
    let pending = match store::get_pending(&*shared.state, pending_id).await {
        Ok(Some(p)) if p.user.is_none() => p,
        Ok(_) => {
            return Reply::Page(400, "this sign-in has expired or was already used; start again from the app".into())
        }
        Err(e) => return Reply::Page(503, format!("state store: {e}")),
    };
    let iss = rt.config.server.public_url.clone();
    let back = |error: &str, description: &str| {
        let mut p = vec![("error", error), ("error_description", description), ("iss", iss.as_str())];
        if let Some(s) = &pending.state {
            p.push(("state", s));
        }
        Reply::Redirect(oauth::redirect_with(&pending.redirect_uri, &p))
    };
    if q.contains_key("error") {
        let _ = store::take_pending(&*shared.state, pending_id).await;
        return back("access_denied", "the sign-in at the IdP did not complete");
    }
    let Some(code) = q.get("code") else { return Reply::Page(400, "the IdP sent no code".into()) };
    let (issuer, discovery) = match login_idp(shared, rt).await {
        Ok(x) => x,
        Err(m) => return back("temporarily_unavailable", &m),
    };
    let claims = match issuer
        .redeem_login(shared, &discovery, code, &callback_url(rt), &pending.idp_verifier, &pending.nonce)
        .await
    {
        Ok(c) => c,
        Err(m) => {
            log::warn!("oauth sign-in: {m}");
            let _ = store::take_pending(&*shared.state, pending_id).await;
            return back("access_denied", "the IdP's answer could not be verified");
        }
    };
    let (sub, groups, mfa) = match issuer.identity(&claims, &rt.groups) {
        Ok(x) => x,
        Err(e) => {
            let _ = store::take_pending(&*shared.state, pending_id).await;
            return back("access_denied", &e.message);
        }
    };
    let client_name = match find_client(shared, rt, &pending.client_id).await {
        Ok(Some(c)) => c.name.clone(),
        _ => return back("access_denied", "the client is no longer registered"),
    };
    let csrf = store::random_secret("");
    let mut pending = pending.clone();
    pending.user = Some(User { idp: issuer.config().name.clone(), sub: sub.clone(), groups, mfa });
    pending.csrf_sha256 = Some(hex::encode(filters::auth::sha256(csrf.as_bytes())));
    if let Err(e) = store::put_pending(&*shared.state, pending_id, &pending, PENDING_SECONDS).await {
        return Reply::Page(503, format!("state store: {e}"));
    }
    let secure = if rt.config.server.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path=/api/auth/oauth2; HttpOnly; SameSite=Lax; Max-Age={PENDING_SECONDS}{secure}"
    );
    let e = oauth::html_escape;
    let body = format!(
        "<p><strong>{client}</strong> asks to use this gateway as <strong>{user}</strong>, with the scope \
         <code>{scope}</code>: it will be able to send model requests that count against your budgets.</p>\
         <p>It will be sent back to <code>{redirect}</code>.</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"consent\" value=\"{consent}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button name=\"decision\" value=\"allow\" type=\"submit\">Allow</button>\
         <button name=\"decision\" value=\"deny\" type=\"submit\">Deny</button></form>",
        client = e(&client_name),
        user = e(&format!("{}:{sub}", issuer.config().name)),
        scope = e(&pending.scope.join(" ")),
        redirect = e(&pending.redirect_uri),
        action = oauth::PATH_AUTHORIZE,
        consent = e(pending_id),
        csrf = e(&csrf),
    );
    Reply::Html(page("Allow access?", &body), vec![("set-cookie", cookie)])
}

fn cookie(session: &Session, name: &str) -> Option<String> {
    session
        .req_header()
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| oauth::cookie(v, name))
}

/// `POST /authorize`: the consent decision.
async fn consent(shared: &Shared, rt: &Runtime, session: &mut Session, ctx: &RequestCtx) -> Reply {
    let form = match form_body(session).await {
        Ok(f) => f,
        Err(e) => return Reply::Page(400, e.description),
    };
    let (Some(id), Some(csrf)) = (form.get("consent"), form.get("csrf")) else {
        return Reply::Page(400, "the consent form is incomplete".into());
    };
    let st = &*shared.state;
    let pending = match store::get_pending(st, id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Reply::Page(400, "this sign-in has expired or was already used; start again from the app".into())
        }
        Err(e) => return Reply::Page(503, format!("state store: {e}")),
    };
    let digest = hex::encode(filters::auth::sha256(csrf.as_bytes()));
    let form_ok =
        pending.csrf_sha256.as_deref().is_some_and(|want| filters::auth::secret_eq(want.as_bytes(), digest.as_bytes()));
    let cookie_ok =
        cookie(session, CSRF_COOKIE).is_some_and(|c| filters::auth::secret_eq(c.as_bytes(), csrf.as_bytes()));
    if !(form_ok && cookie_ok) {
        return Reply::Page(400, "the consent form did not come from this sign-in".into());
    }
    // Taken, not read: a decision is made once.
    let pending = match store::take_pending(st, id).await {
        Ok(Some(p)) => p,
        Ok(None) => return Reply::Page(400, "this sign-in was already used".into()),
        Err(e) => return Reply::Page(503, format!("state store: {e}")),
    };
    let Some(user) = pending.user.clone() else { return Reply::Page(400, "nobody has signed in".into()) };
    let iss = rt.config.server.public_url.as_str();
    let mut params: Vec<(&str, &str)> = vec![("iss", iss)];
    if let Some(s) = &pending.state {
        params.push(("state", s));
    }
    let fields = serde_json::json!({"client_id": pending.client_id, "principal": format!("{}:{}", user.idp, user.sub)});
    if form.get("decision").map(String::as_str) != Some("allow") {
        audit(shared, ctx, "consent_denied", fields);
        params.push(("error", "access_denied"));
        return Reply::Redirect(oauth::redirect_with(&pending.redirect_uri, &params));
    }
    let cfg = &rt.config.oauth;
    let family = match store::open_family(st, cfg.refresh_token_seconds).await {
        Ok(f) => f,
        Err(e) => return Reply::Page(503, format!("state store: {e}")),
    };
    let rec = store::CodeRecord {
        client_id: pending.client_id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        code_challenge: pending.code_challenge.clone(),
        scope: pending.scope.clone(),
        user,
        family,
    };
    let code = match store::store_code(st, &rec, cfg.code_seconds).await {
        Ok(c) => c,
        Err(e) => return Reply::Page(503, format!("state store: {e}")),
    };
    audit(shared, ctx, "consent_granted", fields);
    params.push(("code", &code));
    Reply::Redirect(oauth::redirect_with(&pending.redirect_uri, &params))
}

/// The principal behind an access token this server issued.
pub async fn principal(shared: &Shared, rt: &Runtime, token: &str) -> Result<Principal, ApiError> {
    let invalid = |m: &str| ApiError::unauthorized("invalid_token", m.to_string());
    let rec = shared
        .oauth
        .access(token)
        .await
        .map_err(|e| ApiError::unavailable("state_unavailable", format!("cannot verify the token: {e}")))?
        .ok_or_else(|| invalid("invalid, expired or revoked access token"))?;
    if !rec.scope.iter().any(|s| s == LLM_PROXY_SCOPE) {
        return Err(ApiError::forbidden(
            "insufficient_scope",
            format!("the token lacks the `{LLM_PROXY_SCOPE}` scope"),
        ));
    }
    let client = match rt.oauth_clients.get(&rec.client_id) {
        Some(c) => Some(c.clone()),
        None => shared
            .oauth
            .client(&rec.client_id)
            .await
            .map_err(|e| ApiError::unavailable("state_unavailable", format!("cannot verify the token: {e}")))?
            .map(Arc::new),
    };
    let client =
        client.filter(|c| c.revoked_at.is_none()).ok_or_else(|| invalid("the token's client has been revoked"))?;
    let grant = match &rec.user {
        Some(u) => {
            let issuer = rt.oidc.by_name(&u.idp).ok_or_else(|| invalid("the token's IdP is no longer configured"))?;
            issuer.user_grant(&u.sub, u.groups.iter().filter(|g| rt.groups.contains_key(*g)).cloned().collect(), u.mfa)
        }
        None => Grant {
            name: format!("client:{}", client.name),
            scope: ScopeKind::Client,
            mfa: false,
            proxies: client.proxies.iter().cloned().collect(),
            providers: client.providers.iter().cloned().collect(),
            provider_keys: client.provider_keys.clone(),
            groups: client.groups.clone(),
            policy: Default::default(),
            meter_id: client.client_id.clone(),
            limits: client.limits.clone().map_or_else(|| rt.default_key_limits.clone(), Into::into),
        },
    };
    Ok(Principal::Granted(Arc::new(grant)))
}
