//! The pure parts of the OAuth 2.1 authorization server: request parsing (form bodies, client
//! authentication), PKCE, redirect-URI rules, RFC 6749 error bodies and the RFC 8414 metadata.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// The scope that lets a token use the LLM routes.
pub const LLM_PROXY_SCOPE: &str = "llm:proxy";
/// Scopes this server grants.
pub const SCOPES: &[&str] = &[LLM_PROXY_SCOPE];

/// Prefixes of the secrets this server issues (distinct from virtual keys' `pc-`).
pub const ACCESS_TOKEN_PREFIX: &str = "pcat_";
pub const REFRESH_TOKEN_PREFIX: &str = "pcrt_";
pub const CLIENT_ID_PREFIX: &str = "pcc_";
pub const CLIENT_SECRET_PREFIX: &str = "pccs_";

pub const PATH_AUTHORIZE: &str = "/api/auth/oauth2/authorize";
pub const PATH_CALLBACK: &str = "/api/auth/oauth2/callback";
pub const PATH_TOKEN: &str = "/api/auth/oauth2/token";
pub const PATH_REGISTER: &str = "/api/auth/oauth2/register";
pub const PATH_REVOKE: &str = "/api/auth/oauth2/revoke";
pub const PATH_INTROSPECT: &str = "/api/auth/oauth2/introspect";

/// An RFC 6749 §5.2 error: `{"error", "error_description"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status, error, description: description.into() }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", description)
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"error": self.error, "error_description": self.description}))
            .unwrap_or_default()
    }
}

/// Parse an `application/x-www-form-urlencoded` body (or query). Parameters sent twice are an
/// error (RFC 6749 §3.1); empty values count as absent.
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if v.is_empty() {
            continue;
        }
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(format!("parameter `{k}` is sent more than once")));
        }
    }
    Ok(out)
}

/// How a client authenticated at the token, revocation or introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub client_id: String,
    /// `None`: a public client naming itself.
    pub secret: Option<String>,
}

/// The client's credentials: HTTP Basic (RFC 6749 §2.3.1: both parts form-encoded), else
/// `client_id`/`client_secret` in the body. Using both at once is an error.
pub fn client_auth(authorization: Option<&[u8]>, form: &HashMap<String, String>) -> Result<ClientAuth, OAuthError> {
    let in_body = form.get("client_id");
    if let Some(h) = authorization {
        let bad = || OAuthError::invalid_client("malformed Basic credentials");
        let s = std::str::from_utf8(h).map_err(|_| bad())?;
        let (scheme, b64) = s.split_once(' ').ok_or_else(bad)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(OAuthError::invalid_client("client credentials go in HTTP Basic or the body"));
        }
        if form.contains_key("client_secret") {
            return Err(OAuthError::invalid_request("use one client authentication method, not two"));
        }
        let raw = STANDARD.decode(b64.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        let decode =
            |p: &str| url::form_urlencoded::parse(format!("x={p}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let id = decode(id).filter(|i| !i.is_empty()).ok_or_else(bad)?;
        if in_body.is_some_and(|b| *b != id) {
            return Err(OAuthError::invalid_request("client_id differs from the authenticated client"));
        }
        return Ok(ClientAuth { client_id: id, secret: decode(secret).filter(|s| !s.is_empty()) });
    }
    let id = in_body.ok_or_else(|| OAuthError::invalid_client("client authentication is required"))?;
    Ok(ClientAuth { client_id: id.clone(), secret: form.get("client_secret").cloned() })
}

/// A PKCE code verifier is 43–128 characters of `[A-Za-z0-9-._~]` (RFC 7636 §4.1).
pub fn valid_code_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The S256 challenge of a verifier.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` answers `challenge` (S256), compared in constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    valid_code_verifier(verifier) && bool::from(s256_challenge(verifier).as_bytes().ct_eq(challenge.as_bytes()))
}

/// A registered redirect URI: absolute, no fragment, and https, http on a loopback host (native
/// apps, RFC 8252 §7.3), or a private-use scheme with a dot (RFC 8252 §7.1).
pub fn valid_redirect_uri(uri: &str) -> Result<(), String> {
    let u = url::Url::parse(uri).map_err(|_| format!("`{uri}` is not an absolute URI"))?;
    if u.fragment().is_some() {
        return Err(format!("`{uri}` has a fragment"));
    }
    match u.scheme() {
        "https" if u.host_str().is_some() => Ok(()),
        "http" => {
            let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']);
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!("`{uri}`: plain http is allowed for loopback hosts only"))
            }
        }
        s if s.contains('.') && !matches!(s, "javascript" | "data" | "file") => Ok(()),
        _ => Err(format!("`{uri}` must be https, http on a loopback host, or a reverse-DNS private scheme")),
    }
}

/// Whether a presented redirect URI matches a registered one: exact string match, except that
/// the port of a loopback http URI may differ (RFC 8252 §7.3: native apps pick a free port).
pub fn redirect_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (url::Url::parse(registered), url::Url::parse(presented)) else { return false };
    let loopback = |u: &url::Url| {
        u.scheme() == "http" && u.host_str().is_some_and(|h| h == "127.0.0.1" || h == "[::1]" || h == "localhost")
    };
    loopback(&r)
        && loopback(&p)
        && r.host_str() == p.host_str()
        && r.path() == p.path()
        && r.query() == p.query()
        && p.fragment().is_none()
}

/// The scopes a request asks for, checked against what the client may have. No `scope`
/// parameter means all of `allowed`.
pub fn requested_scopes(scope: Option<&str>, allowed: &[String]) -> Result<Vec<String>, OAuthError> {
    let Some(scope) = scope else { return Ok(allowed.to_vec()) };
    let mut out: Vec<String> = Vec::new();
    for s in scope.split_ascii_whitespace() {
        if !allowed.iter().any(|a| a == s) {
            return Err(OAuthError::new(400, "invalid_scope", format!("scope `{s}` is not available to this client")));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    if out.is_empty() {
        return Err(OAuthError::new(400, "invalid_scope", "empty scope"));
    }
    Ok(out)
}

/// RFC 8414 authorization server metadata.
pub fn metadata(issuer: &str, registration: bool) -> serde_json::Value {
    let base = issuer.trim_end_matches('/');
    let mut m = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}{PATH_AUTHORIZE}"),
        "token_endpoint": format!("{base}{PATH_TOKEN}"),
        "revocation_endpoint": format!("{base}{PATH_REVOKE}"),
        "introspection_endpoint": format!("{base}{PATH_INTROSPECT}"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": SCOPES,
        "authorization_response_iss_parameter_supported": true,
    });
    if registration {
        m["registration_endpoint"] = format!("{base}{PATH_REGISTER}").into();
    }
    m
}

/// RFC 9728 protected resource metadata: the LLM routes, protected by this same server.
pub fn resource_metadata(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "resource": issuer,
        "authorization_servers": [issuer],
        "scopes_supported": SCOPES,
        "bearer_methods_supported": ["header"],
    })
}

/// `redirect_uri` with `params` appended to its query.
pub fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => redirect_uri.to_string(),
    }
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`).
pub fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// Standard Base64 (HTTP Basic credentials).
pub fn base64_standard(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Escape text for an HTML page.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_refuse_repeated_parameters() {
        let f = parse_form(b"grant_type=client_credentials&scope=llm%3Aproxy&empty=").unwrap();
        assert_eq!(f["scope"], "llm:proxy");
        assert!(!f.contains_key("empty"));
        assert_eq!(parse_form(b"a=1&a=2").unwrap_err().error, "invalid_request");
    }

    #[test]
    fn basic_and_body_client_auth() {
        let form = parse_form(b"grant_type=client_credentials").unwrap();
        // RFC 6749 §2.3.1: the id and secret are form-encoded before Base64.
        let h = format!("Basic {}", STANDARD.encode("my%3Aapp:s%2Bcret"));
        let a = client_auth(Some(h.as_bytes()), &form).unwrap();
        assert_eq!((a.client_id.as_str(), a.secret.as_deref()), ("my:app", Some("s+cret")));
        let post = parse_form(b"client_id=app&client_secret=s").unwrap();
        let a = client_auth(None, &post).unwrap();
        assert_eq!((a.client_id.as_str(), a.secret.as_deref()), ("app", Some("s")));
        let public = parse_form(b"client_id=cli").unwrap();
        assert_eq!(client_auth(None, &public).unwrap().secret, None);
        assert_eq!(client_auth(Some(h.as_bytes()), &post).unwrap_err().error, "invalid_request");
        assert_eq!(client_auth(None, &form).unwrap_err().error, "invalid_client");
        assert_eq!(client_auth(Some(b"Basic !!!"), &form).unwrap_err().error, "invalid_client");
        assert_eq!(client_auth(Some(b"Bearer x"), &form).unwrap_err().error, "invalid_client");
    }

    #[test]
    fn pkce_s256() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(s256_challenge(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cX"));
        assert!(!pkce_matches("short", &s256_challenge("short")));
        assert!(!valid_code_verifier(&"a".repeat(129)) && !valid_code_verifier(&format!("{}+", "a".repeat(50))));
    }

    #[test]
    fn redirect_uri_rules() {
        for ok in [
            "https://app.example.com/cb",
            "http://127.0.0.1:7777/cb",
            "http://[::1]/cb",
            "http://localhost/cb",
            "com.example.app:/cb",
        ] {
            assert!(valid_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://evil.example.com/cb",
            "https://a.example.com/cb#x",
            "/relative",
            "javascript:alert(1)",
            "myapp:/cb",
        ] {
            assert!(valid_redirect_uri(bad).is_err(), "{bad}");
        }
        assert!(redirect_matches("http://127.0.0.1/cb", "http://127.0.0.1:5123/cb"));
        assert!(!redirect_matches("http://127.0.0.1/cb", "http://127.0.0.1:5123/other"));
        assert!(!redirect_matches("https://a.example.com/cb", "https://a.example.com/cb/"));
        assert!(!redirect_matches("https://a.example.com/cb", "https://a.example.com:444/cb"));
    }

    #[test]
    fn scopes_and_metadata() {
        let allowed = vec![LLM_PROXY_SCOPE.to_string()];
        assert_eq!(requested_scopes(None, &allowed).unwrap(), allowed);
        assert_eq!(requested_scopes(Some("llm:proxy llm:proxy"), &allowed).unwrap(), allowed);
        assert_eq!(requested_scopes(Some("admin"), &allowed).unwrap_err().error, "invalid_scope");
        let m = metadata("http://127.0.0.1:8080", true);
        assert_eq!(m["token_endpoint"], "http://127.0.0.1:8080/api/auth/oauth2/token");
        assert_eq!(m["code_challenge_methods_supported"], serde_json::json!(["S256"]));
        assert!(metadata("https://gw.example.com", false).get("registration_endpoint").is_none());
        assert_eq!(
            redirect_with("http://127.0.0.1:1/cb?x=1", &[("code", "a b"), ("state", "s")]),
            "http://127.0.0.1:1/cb?x=1&code=a+b&state=s"
        );
        assert_eq!(html_escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(cookie("a=1; pc_x=v=w;b=2", "pc_x").as_deref(), Some("v=w"));
        assert_eq!(cookie("a=1", "pc_x"), None);
    }
}
