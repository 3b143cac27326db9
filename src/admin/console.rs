//! The admin web console at `/admin` on the admin listener: server-rendered pages (no script)
//! to manage stored keys, OAuth clients, provider keys and policy overrides, see org usage and
//! browse the audit trail, after an OpenID Connect sign-in with PKCE at
//! `oauth.login_idp`. Only IdP users in `admin.groups` (with MFA unless `admin.require_mfa =
//! false`) get a session. Sessions live in the state store behind an HttpOnly, SameSite=Lax
//! cookie; every form carries the session's CSRF token, and a sign-in is bound to the browser
//! that started it by a second cookie. Changes go through the same operations
//! as the admin API, so they are audited the same way.

use super::api;
use crate::gateway::Shared;
use filters::oauth::{html_escape as esc, parse_form};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const SESSION_COOKIE: &str = "pc_admin_session";
/// Binds a sign-in to the browser that started it (no login CSRF).
const LOGIN_COOKIE: &str = "pc_admin_login";
const SESSION_SECONDS: u64 = 8 * 3600;
const LOGIN_SECONDS: u64 = 600;

#[derive(Serialize, Deserialize)]
struct ConsoleSession {
    actor: String,
    csrf: String,
}

#[derive(Serialize, Deserialize)]
struct Login {
    verifier: String,
    nonce: String,
}

fn digest(s: &str) -> String {
    hex::encode(filters::auth::sha256(s.as_bytes()))
}

fn reply(status: u16, body: String, extra: Vec<(&'static str, String)>) -> http::Response<Vec<u8>> {
    let mut builder = http::Response::builder()
        .status(status)
        .header("content-type", if body.is_empty() { "text/plain" } else { "text/html; charset=utf-8" })
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        )
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer");
    for (k, v) in extra {
        builder = builder.header(k, v);
    }
    builder.body(body.into_bytes()).unwrap_or_else(|_| http::Response::new(Vec::new()))
}

fn redirect(status: u16, location: &str, extra: Vec<(&'static str, String)>) -> http::Response<Vec<u8>> {
    let mut extra = extra;
    extra.push(("location", location.to_string()));
    reply(status, String::new(), extra)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Portcullis</title>\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>\
         body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         table{{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}}td,th{{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}}\
         form.inline{{display:inline}}fieldset{{margin:1rem 0}}code{{background:#f3f3f3;padding:.1rem .3rem}}\
         </style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    )
}

fn error_page(status: u16, message: &str) -> http::Response<Vec<u8>> {
    reply(
        status,
        page("Portcullis admin", &format!("<p>{}</p><p><a href=\"/admin\">Back</a></p>", esc(message))),
        Vec::new(),
    )
}

fn cookie(header: Option<&str>, name: &str) -> Option<String> {
    filters::oauth::cookie(header?, name)
}

/// Whether `path` belongs to the console.
pub fn handles(path: &str) -> bool {
    path == "/admin" || (path.starts_with("/admin/") && !api::handles(path))
}

/// The URL the IdP sends the browser back to.
fn callback(shared: &Shared) -> String {
    let rt = shared.runtime.load();
    let base =
        rt.config.admin.public_url.clone().unwrap_or_else(|| format!("http://{}", rt.config.server.admin_listen));
    format!("{}/admin/callback", base.trim_end_matches('/'))
}

pub async fn serve(
    shared: &Arc<Shared>,
    method: &str,
    path_and_query: &str,
    cookies: Option<&str>,
    body: &[u8],
) -> http::Response<Vec<u8>> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let path = path.trim_end_matches('/');
    let st = &*shared.state;
    let session = match cookie(cookies, SESSION_COOKIE) {
        Some(sid) => match st.get(&format!("admin:session:{}", digest(&sid))).await {
            Ok(v) => v.and_then(|v| serde_json::from_slice::<ConsoleSession>(&v).ok()).map(|s| (sid, s)),
            Err(e) => return error_page(503, &format!("state store: {e}")),
        },
        None => None,
    };
    match (method, path) {
        ("GET", "/admin/callback") => finish_login(shared, query, cookies).await,
        ("GET", "/admin") => match session {
            Some((_, s)) => main_page(shared, &s).await,
            None => start_login(shared).await,
        },
        ("GET", "/admin/audit") => match session {
            Some(_) => audit_page(shared, query).await,
            None => redirect(303, "/admin", Vec::new()),
        },
        ("POST", _) => {
            let Some((sid, s)) = session else { return redirect(303, "/admin", Vec::new()) };
            let form = parse_form(body).unwrap_or_default();
            let csrf_ok = form.get("csrf").is_some_and(|c| filters::auth::secret_eq(c.as_bytes(), s.csrf.as_bytes()));
            if !csrf_ok {
                return error_page(403, "this form did not come from your console session; reload the page");
            }
            action(shared, path, &sid, &s, &form).await
        }
        _ => error_page(404, "no such page"),
    }
}

async fn start_login(shared: &Shared) -> http::Response<Vec<u8>> {
    let rt = shared.runtime.load_full();
    let Some(issuer) = rt.config.oauth.login_idp.as_deref().and_then(|n| rt.oidc.by_name(n)) else {
        return error_page(503, "console sign-in needs oauth.login_idp (an [[auth.oidc]] entry with a login client)");
    };
    let discovery = match issuer.discovery(shared).await {
        Ok(d) => d,
        Err(e) => return error_page(503, &format!("the sign-in IdP cannot be reached: {e}")),
    };
    let Some(endpoint) = discovery.authorization_endpoint.clone() else {
        return error_page(503, "the sign-in IdP publishes no authorization_endpoint");
    };
    let state = crate::oauth::random_secret("");
    let login = Login { verifier: crate::oauth::random_secret(""), nonce: crate::oauth::random_secret("") };
    let value = serde_json::to_vec(&login).unwrap_or_default();
    let key = format!("admin:login:{}", digest(&state));
    if let Err(e) = shared.state.set(&key, &value, Some(Duration::from_secs(LOGIN_SECONDS))).await {
        return error_page(503, &format!("state store: {e}"));
    }
    // Lax, not Strict: the IdP's redirect back is a cross-site navigation.
    let cookie = format!(
        "{LOGIN_COOKIE}={state}; Path=/admin; HttpOnly; SameSite=Lax; Max-Age={LOGIN_SECONDS}{}",
        secure(shared)
    );
    redirect(
        302,
        &issuer.login_url(&endpoint, &callback(shared), &state, &login.nonce, &login.verifier),
        vec![("set-cookie", cookie)],
    )
}

async fn finish_login(shared: &Shared, query: &str, cookies: Option<&str>) -> http::Response<Vec<u8>> {
    let rt = shared.runtime.load_full();
    let q = parse_form(query.as_bytes()).unwrap_or_default();
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
        return error_page(400, "the sign-in did not complete");
    };
    if !cookie(cookies, LOGIN_COOKIE).is_some_and(|c| filters::auth::secret_eq(c.as_bytes(), state.as_bytes())) {
        return error_page(400, "this sign-in was not started in this browser; start again from /admin");
    }
    let login = match shared.state.take(&format!("admin:login:{}", digest(state))).await {
        Ok(Some(v)) => match serde_json::from_slice::<Login>(&v) {
            Ok(l) => l,
            Err(_) => return error_page(400, "this sign-in has expired; start again"),
        },
        Ok(None) => return error_page(400, "this sign-in has expired or was already used; start again"),
        Err(e) => return error_page(503, &format!("state store: {e}")),
    };
    let Some(issuer) = rt.config.oauth.login_idp.as_deref().and_then(|n| rt.oidc.by_name(n)) else {
        return error_page(503, "no sign-in IdP is configured");
    };
    let discovery = match issuer.discovery(shared).await {
        Ok(d) => d,
        Err(e) => return error_page(503, &format!("the sign-in IdP cannot be reached: {e}")),
    };
    let claims =
        match issuer.redeem_login(shared, &discovery, code, &callback(shared), &login.verifier, &login.nonce).await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("admin console sign-in: {e}");
                return error_page(401, "the IdP's answer could not be verified");
            }
        };
    let (user, groups, mfa) = match issuer.identity(&claims, &rt.groups) {
        Ok(x) => x,
        Err(e) => return error_page(403, &e.message),
    };
    let actor = format!("{}:{user}", issuer.config().name);
    let admin = &rt.config.admin;
    let audit = |event: &str, why: &str| {
        shared.audit.record(&serde_json::json!({
            "ts": crate::gateway::chat::now_secs(), "event": event, "principal": actor, "route": "admin_console", "message": why,
        }));
    };
    if !groups.iter().any(|g| admin.groups.contains(g)) {
        audit("access_denied", "not in an admin group");
        return error_page(403, &format!("{actor} is not an admin (not in admin.groups)"));
    }
    if admin.require_mfa && !mfa {
        audit("access_denied", "no multi-factor sign-in");
        return error_page(403, "the admin console requires multi-factor sign-in (MFA required)");
    }
    let sid = crate::oauth::random_secret("");
    let s = ConsoleSession { actor: actor.clone(), csrf: crate::oauth::random_secret("") };
    let value = serde_json::to_vec(&s).unwrap_or_default();
    let key = format!("admin:session:{}", digest(&sid));
    if let Err(e) = shared.state.set(&key, &value, Some(Duration::from_secs(SESSION_SECONDS))).await {
        return error_page(503, &format!("state store: {e}"));
    }
    audit("admin_signed_in", "console session started");
    // Lax, so the browser sends it on the redirect that ends the IdP's cross-site sign-in;
    // every state-changing form also carries the session's CSRF token.
    let cookie = format!(
        "{SESSION_COOKIE}={sid}; Path=/admin; HttpOnly; SameSite=Lax; Max-Age={SESSION_SECONDS}{}",
        secure(shared)
    );
    let done = format!("{LOGIN_COOKIE}=; Path=/admin; HttpOnly; SameSite=Lax; Max-Age=0");
    redirect(303, "/admin", vec![("set-cookie", cookie), ("set-cookie", done)])
}

fn secure(shared: &Shared) -> &'static str {
    if callback(shared).starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn hidden(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

async fn main_page(shared: &Shared, s: &ConsoleSession) -> http::Response<Vec<u8>> {
    let listed = (
        api::list_keys(shared).await,
        api::list_clients(shared).await,
        api::list_provider_keys(shared).await,
        api::audit_state(shared).await,
    );
    let (keys, clients, provider_keys, audit) = match listed {
        (Ok(k), Ok(c), Ok(p), Ok(a)) => (k, c, p, a),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return error_page(e.status, &e.message),
    };
    let overrides = match api::list_overrides(shared).await {
        Ok(o) => o,
        Err(e) => return error_page(e.status, &e.message),
    };
    let usage = match crate::gateway::org_usage::report(shared, 7).await {
        Ok(u) => u,
        Err(e) => return error_page(503, &format!("state store: {e}")),
    };
    let csrf = hidden(&s.csrf);
    let text = |v: &serde_json::Value, k: &str| {
        esc(&v.get(k).map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).unwrap_or_default())
    };
    let list = |v: &serde_json::Value, k: &str| {
        esc(&v
            .get(k)
            .and_then(|x| x.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default())
    };
    let mut body = format!(
        "<p>Signed in as <strong>{}</strong>. <form class=\"inline\" method=\"post\" action=\"/admin/logout\">{csrf}<button>Sign out</button></form></p>",
        esc(&s.actor)
    );
    body.push_str("<h2>Virtual keys</h2><table><tr><th>name</th><th>id</th><th>providers</th><th>provider keys</th><th>proxies</th><th>groups</th><th>status</th><th></th></tr>");
    for k in &keys {
        let active = k.get("revoked_at").is_none_or(|v| v.is_null());
        let revoke = if active {
            format!("<form class=\"inline\" method=\"post\" action=\"/admin/keys/revoke\">{csrf}<input type=\"hidden\" name=\"id\" value=\"{}\"><button>Revoke</button></form>", text(k, "id"))
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{revoke}</td></tr>",
            text(k, "name"),
            text(k, "id"),
            list(k, "providers"),
            list(k, "provider_keys"),
            list(k, "proxies"),
            list(k, "groups"),
            if active { "active" } else { "revoked" }
        ));
    }
    body.push_str(&format!(
        "</table><form method=\"post\" action=\"/admin/keys\"><fieldset><legend>New key</legend>{csrf}\
         <label>name <input name=\"name\" required></label> <label>providers <input name=\"providers\" placeholder=\"openai,anthropic\"></label> \
         <label>provider keys <input name=\"provider_keys\" placeholder=\"team-a-openai\"></label> \
         <label>proxies <input name=\"proxies\" placeholder=\"default\"></label> <label>groups <input name=\"groups\"></label> \
         <button>Create key</button></fieldset></form>"
    ));
    body.push_str("<h2>OAuth clients</h2><table><tr><th>name</th><th>client id</th><th>kind</th><th>proxies</th><th>providers</th><th>provider keys</th><th>redirect URIs</th><th>status</th><th></th></tr>");
    for c in &clients {
        let active = c.get("revoked_at").is_none_or(|v| v.is_null());
        let stored = c.get("source").and_then(|v| v.as_str()) == Some("stored");
        let revoke = if active && stored {
            format!("<form class=\"inline\" method=\"post\" action=\"/admin/clients/revoke\">{csrf}<input type=\"hidden\" name=\"id\" value=\"{}\"><button>Revoke</button></form>", text(c, "client_id"))
        } else {
            String::new()
        };
        let kind = if c.get("public").and_then(|v| v.as_bool()) == Some(true) { "public" } else { "confidential" };
        body.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{kind}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{revoke}</td></tr>",
            text(c, "name"), text(c, "client_id"), if stored { "" } else { " (config file)" },
            list(c, "proxies"), list(c, "providers"), list(c, "provider_keys"), list(c, "redirect_uris"), if active { "active" } else { "revoked" }
        ));
    }
    body.push_str(&format!(
        "</table><form method=\"post\" action=\"/admin/clients\"><fieldset><legend>New client</legend>{csrf}\
         <label>name <input name=\"name\" required></label> <label>proxies <input name=\"proxies\" placeholder=\"default\"></label> \
         <label>providers <input name=\"providers\"></label> <label>provider keys <input name=\"provider_keys\"></label> \
         <label>redirect URIs <input name=\"redirect_uris\" placeholder=\"https://app.example.com/callback\"></label> \
         <label><input type=\"checkbox\" name=\"public\" value=\"1\"> public (PKCE, no secret)</label> \
         <button>Create client</button></fieldset></form>"
    ));
    body.push_str("<h2>Provider keys</h2><table><tr><th>name</th><th>provider</th><th>key</th><th>users</th><th>groups</th><th>source</th><th></th></tr>");
    for k in &provider_keys {
        let stored = k.get("source").and_then(|v| v.as_str()) == Some("stored");
        let delete = if stored {
            format!("<form class=\"inline\" method=\"post\" action=\"/admin/provider-keys/delete\">{csrf}<input type=\"hidden\" name=\"name\" value=\"{}\"><button>Delete</button></form>", text(k, "name"))
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{delete}</td></tr>",
            text(k, "name"),
            text(k, "provider"),
            if stored { text(k, "hint") } else { "(config file)".to_string() },
            list(k, "users"),
            list(k, "groups"),
            text(k, "source"),
        ));
    }
    body.push_str(&format!(
        "</table><form method=\"post\" action=\"/admin/provider-keys\"><fieldset><legend>Store or rotate a provider key</legend>{csrf}\
         <label>name <input name=\"name\" required></label> <label>provider <input name=\"provider\" required placeholder=\"openai\"></label> \
         <label>API key <input type=\"password\" name=\"api_key\" required autocomplete=\"off\"></label> \
         <label>users <input name=\"users\" placeholder=\"corp:alice\"></label> <label>groups <input name=\"groups\"></label> \
         <button>Save key</button></fieldset></form>"
    ));
    body.push_str("<h2>Policy overrides</h2><p>Applied live on every node; a group's replaces its policy from the file, a principal's is its innermost layer, a proxy's tier map replaces the file's.</p><table><tr><th>scope</th><th>name</th><th>override</th><th>file</th><th></th></tr>");
    let rows = ["groups", "tiers", "principals"].into_iter().flat_map(|scope| {
        let entries = overrides.get(scope).and_then(|v| v.as_object()).cloned().unwrap_or_default();
        entries.into_iter().map(move |(name, v)| (scope, name, v))
    });
    for (scope, name, v) in rows {
        let (current, file) = if scope == "principals" {
            (v.get("value").cloned(), None)
        } else {
            (v.get("override").and_then(|o| o.get("value")).cloned(), v.get("file").cloned())
        };
        let remove = if current.is_some() {
            format!("<form class=\"inline\" method=\"post\" action=\"/admin/policies/remove\">{csrf}<input type=\"hidden\" name=\"scope\" value=\"{scope}\"><input type=\"hidden\" name=\"name\" value=\"{}\"><button>Remove</button></form>", esc(&name))
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{scope}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{remove}</td></tr>",
            esc(&name),
            esc(&current.map(|c| c.to_string()).unwrap_or_default()),
            esc(&file.map(|f| f.to_string()).unwrap_or_default()),
        ));
    }
    body.push_str(&format!(
        "</table><form method=\"post\" action=\"/admin/policies\"><fieldset><legend>Set an override</legend>{csrf}\
         <label>scope <select name=\"scope\"><option>groups</option><option>principals</option><option>tiers</option></select></label> \
         <label>name <input name=\"name\" required placeholder=\"interns, corp:alice, default\"></label> \
         <label>JSON <textarea name=\"value\" required rows=\"2\" cols=\"60\" placeholder='{{\"max_tier\": \"medium\"}}'></textarea></label> \
         <button>Apply</button></fieldset></form>"
    ));
    let view = api::providers_view(shared);
    body.push_str("<h2>Providers</h2><p>File-managed (read-only here).</p><table><tr><th>name</th><th>kind</th><th>hosts</th><th>models</th></tr>");
    for p in view.get("providers").and_then(|v| v.as_array()).cloned().unwrap_or_default() {
        let hosts: Vec<String> = p
            .get("hosts")
            .and_then(|h| h.as_array())
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|h| {
                let allowed = h.get("egress_allowed").and_then(|v| v.as_bool()).unwrap_or(false);
                format!(
                    "{}{}",
                    h.get("host").and_then(|v| v.as_str()).unwrap_or_default(),
                    if allowed { "" } else { " (egress denied)" }
                )
            })
            .collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&p, "name"),
            text(&p, "kind"),
            esc(&hosts.join(", ")),
            list(&p, "models")
        ));
    }
    body.push_str(&format!("</table><p>Egress allow-list: <code>{}</code></p>", list(&view, "egress_allow_hosts")));
    body.push_str("<h2>Usage, last 7 days (UTC)</h2><table><tr><th>day</th><th>principal</th><th>model</th><th>requests</th><th>input tokens</th><th>output tokens</th><th>cost USD</th></tr>");
    for r in usage.iter().take(500) {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}</td></tr>",
            esc(&r.day),
            esc(&r.principal),
            esc(&r.model),
            r.requests,
            r.input_tokens,
            r.output_tokens,
            r.cost_usd
        ));
    }
    body.push_str("</table>");
    let audit_line =
        match (audit.get("enabled").and_then(|v| v.as_bool()), audit.get("intact").and_then(|v| v.as_bool())) {
            (Some(false), _) => "no audit trail is configured (audit.path)".to_string(),
            (_, Some(true)) => format!("intact, {} records", audit.get("records").cloned().unwrap_or_default()),
            _ => format!("BROKEN at line {}", audit.get("broken_line").cloned().unwrap_or_default()),
        };
    body.push_str(&format!(
        "<h2>Audit trail</h2><p>{}. <a href=\"/admin/audit\">Browse the records</a></p>",
        esc(&audit_line)
    ));
    reply(200, page("Portcullis admin", &body), Vec::new())
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
fn utc_time(ts: u64) -> String {
    let (y, m, d) = crate::state::civil_from_days((ts / 86_400) as i64);
    let s = ts % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// The audit trail's records, newest first, a page at a time, with event and principal filters
/// (read-only, so a plain GET form with no CSRF token).
async fn audit_page(shared: &Shared, query: &str) -> http::Response<Vec<u8>> {
    let q = match api::AuditQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return error_page(e.status, &e.message),
    };
    let listed = match api::audit_records(shared, &q).await {
        Ok(v) => v,
        Err(e) => return error_page(e.status, &e.message),
    };
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or_default());
    let mut body = format!(
        "<p><a href=\"/admin\">Back to the console</a>. This node's trail; <code>portcullis audit verify</code> checks the whole chain.</p>\
         <form method=\"get\" action=\"/admin/audit\"><label>event <input name=\"event\" value=\"{}\" placeholder=\"auth_failed\"></label> \
         <label>principal or admin <input name=\"principal\" value=\"{}\" placeholder=\"corp:alice\"></label> <button>Filter</button></form>\
         <table><tr><th>#</th><th>time (UTC)</th><th>event</th><th>principal / admin</th><th>details</th><th>seal</th></tr>",
        value(&q.filter.event),
        value(&q.filter.principal)
    );
    for e in listed["data"].as_array().cloned().unwrap_or_default() {
        let record = e["record"].as_object().cloned().unwrap_or_default();
        let field = |k: &str| record.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let who = [field("principal"), field("actor")].into_iter().filter(|w| !w.is_empty()).collect::<Vec<_>>();
        let details: serde_json::Map<String, serde_json::Value> = record
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ts" | "event" | "principal" | "actor"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sealed = e["sealed"].as_bool() == Some(true);
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            e["seq"],
            record.get("ts").and_then(|v| v.as_u64()).map(utc_time).unwrap_or_default(),
            esc(&field("event")),
            esc(&who.join(" / ")),
            esc(&serde_json::Value::Object(details).to_string()),
            if sealed { "ok" } else { "<strong>CHANGED</strong>" }
        ));
    }
    body.push_str("</table>");
    if let Some(n) = listed["unreadable_lines"].as_u64().filter(|&n| n > 0) {
        body.push_str(&format!(
            "<p><strong>{n} unreadable lines</strong> in this range: run <code>portcullis audit verify</code>.</p>"
        ));
    }
    if let Some(cursor) = listed["next_cursor"].as_str() {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        next.append_pair("limit", &q.limit.to_string()).append_pair("cursor", cursor);
        for (k, v) in [("event", &q.filter.event), ("principal", &q.filter.principal)] {
            if let Some(v) = v {
                next.append_pair(k, v);
            }
        }
        body.push_str(&format!(
            "<p><a id=\"older\" href=\"/admin/audit?{}\">Older records</a></p>",
            esc(&next.finish())
        ));
    }
    reply(200, page("Audit trail", &body), Vec::new())
}

fn split(v: Option<&String>) -> Vec<String> {
    v.map(|s| s.split([',', '\n', ' ']).map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

async fn action(
    shared: &Shared,
    path: &str,
    sid: &str,
    s: &ConsoleSession,
    form: &HashMap<String, String>,
) -> http::Response<Vec<u8>> {
    let name = form.get("name").cloned().unwrap_or_default();
    let proxies = match split(form.get("proxies")) {
        p if p.is_empty() => api::default_proxies(),
        p => p,
    };
    let done = |title: &str, body: String| {
        reply(200, page(title, &format!("{body}<p><a href=\"/admin\">Back to the console</a></p>")), Vec::new())
    };
    let result = match path {
        "/admin/keys" => {
            let k = api::NewKey {
                name,
                providers: split(form.get("providers")),
                provider_keys: split(form.get("provider_keys")),
                proxies,
                groups: split(form.get("groups")),
                limits: None,
            };
            api::create_key(shared, &s.actor, k).await.map(|v| {
                done(
                    "Key created",
                    format!(
                        "<p>Key <strong>{}</strong> (id <code>{}</code>). Copy it now; it is not shown again:</p><p><code id=\"secret\">{}</code></p>",
                        esc(v["name"].as_str().unwrap_or_default()), esc(v["id"].as_str().unwrap_or_default()), esc(v["key"].as_str().unwrap_or_default())
                    ),
                )
            })
        }
        "/admin/clients" => {
            let c = api::NewClient {
                name,
                providers: split(form.get("providers")),
                provider_keys: split(form.get("provider_keys")),
                proxies,
                groups: split(form.get("groups")),
                redirect_uris: split(form.get("redirect_uris")),
                public: form.get("public").is_some(),
                limits: None,
            };
            api::create_client(shared, &s.actor, c).await.map(|v| {
                let secret = v["client_secret"].as_str().map_or_else(
                    || "<p>A public client has no secret: it uses PKCE.</p>".to_string(),
                    |sec| {
                        format!(
                            "<p>Secret (copy it now; it is not shown again): <code id=\"secret\">{}</code></p>",
                            esc(sec)
                        )
                    },
                );
                done(
                    "Client created",
                    format!(
                        "<p>Client id: <code id=\"client-id\">{}</code></p>{secret}",
                        esc(v["client_id"].as_str().unwrap_or_default())
                    ),
                )
            })
        }
        "/admin/provider-keys" => {
            let k = api::NewProviderKey {
                name,
                provider: form.get("provider").cloned().unwrap_or_default(),
                api_key: form.get("api_key").map(|k| k.trim().to_string()).unwrap_or_default(),
                // Blank on a rotation: the stored lists stay.
                users: Some(split(form.get("users"))).filter(|u| !u.is_empty()),
                groups: Some(split(form.get("groups"))).filter(|g| !g.is_empty()),
                description: None,
            };
            api::set_provider_key(shared, &s.actor, k).await.map(|_| redirect(303, "/admin", Vec::new()))
        }
        "/admin/policies" => {
            let scope = form.get("scope").map_or("", String::as_str);
            let value = form.get("value").map_or("", String::as_str);
            api::set_override(shared, &s.actor, scope, &name, value.as_bytes())
                .await
                .map(|_| redirect(303, "/admin", Vec::new()))
        }
        "/admin/policies/remove" => {
            let scope = form.get("scope").map_or("", String::as_str);
            api::remove_override(shared, &s.actor, scope, &name).await.map(|_| redirect(303, "/admin", Vec::new()))
        }
        "/admin/provider-keys/delete" => {
            api::delete_provider_key(shared, &s.actor, &name).await.map(|_| redirect(303, "/admin", Vec::new()))
        }
        "/admin/keys/revoke" => api::revoke_key(shared, &s.actor, form.get("id").map_or("", String::as_str))
            .await
            .map(|_| redirect(303, "/admin", Vec::new())),
        "/admin/clients/revoke" => api::revoke_client(shared, &s.actor, form.get("id").map_or("", String::as_str))
            .await
            .map(|_| redirect(303, "/admin", Vec::new())),
        "/admin/logout" => {
            let _ = shared.state.delete(&format!("admin:session:{}", digest(sid))).await;
            let gone = format!("{SESSION_COOKIE}=; Path=/admin; HttpOnly; SameSite=Lax; Max-Age=0");
            Ok(redirect(303, "/admin", vec![("set-cookie", gone)]))
        }
        _ => Ok(error_page(404, "no such action")),
    };
    result.unwrap_or_else(|e| error_page(e.status, &e.message))
}
