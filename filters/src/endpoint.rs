//! Which gateway endpoint a request path names. Pure string work on the path; the method is
//! checked too so a GET on a POST-only route is a clear 405-style error rather than a proxy.

/// The proxy id `/v1/chat/completions` and friends belong to.
pub const DEFAULT_PROXY: &str = "default";

/// Path segments under `/v1/` that are gateway routes and so cannot be provider names.
pub const RESERVED_PROVIDER_NAMES: &[&str] =
    &["chat", "responses", "models", "model-router", "usage", "provider-keys", "completions", "embeddings", "auto"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Health,
    Ready,
    Metrics,
    ChatCompletions {
        proxy: &'a str,
    },
    Responses {
        proxy: &'a str,
    },
    Models {
        proxy: &'a str,
    },
    Usage,
    /// `/v1/provider-keys` (GET: the caller's own keys) and `/v1/provider-keys/{provider}` (PUT
    /// stores, DELETE removes the caller's own key for that provider).
    PersonalKeys {
        provider: Option<&'a str>,
    },
    /// `/v1/{provider}/{rest}`: native pass-through; `rest` keeps its leading `/` and the query.
    Passthrough {
        provider: &'a str,
        rest: &'a str,
    },
    /// The OAuth 2.1 authorization server.
    OAuth(OAuthRoute),
    /// `/admin` (console) and `/admin/api/...`, served here only when the admin listener is the
    /// client listener.
    Admin,
    NotFound,
    MethodNotAllowed {
        allowed: &'static str,
    },
}

impl Endpoint<'_> {
    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Ready => "ready",
            Endpoint::Metrics => "metrics",
            Endpoint::ChatCompletions { .. } => "chat_completions",
            Endpoint::Responses { .. } => "responses",
            Endpoint::Models { .. } => "models",
            Endpoint::Usage => "usage",
            Endpoint::PersonalKeys { .. } => "provider_keys",
            Endpoint::Passthrough { .. } => "passthrough",
            Endpoint::OAuth(r) => r.label(),
            Endpoint::Admin => "admin",
            Endpoint::NotFound => "not_found",
            Endpoint::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }
}

/// The OAuth server's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthRoute {
    /// RFC 8414 metadata.
    ServerMetadata,
    /// RFC 9728 metadata.
    ResourceMetadata,
    Token,
    Register,
    Revoke,
    Introspect,
    /// GET starts a sign-in; POST carries the consent decision.
    Authorize,
    /// The IdP's redirect back after sign-in.
    Callback,
}

impl OAuthRoute {
    pub fn label(self) -> &'static str {
        match self {
            OAuthRoute::ServerMetadata => "oauth_metadata",
            OAuthRoute::ResourceMetadata => "oauth_resource_metadata",
            OAuthRoute::Token => "oauth_token",
            OAuthRoute::Register => "oauth_register",
            OAuthRoute::Revoke => "oauth_revoke",
            OAuthRoute::Introspect => "oauth_introspect",
            OAuthRoute::Authorize => "oauth_authorize",
            OAuthRoute::Callback => "oauth_callback",
        }
    }
}

fn method_gate<'a>(method: &str, allowed: &'static str, ok: Endpoint<'a>) -> Endpoint<'a> {
    if method.eq_ignore_ascii_case(allowed) || (allowed == "GET" && method.eq_ignore_ascii_case("HEAD")) {
        ok
    } else {
        Endpoint::MethodNotAllowed { allowed }
    }
}

/// Classify `method` + `path_and_query`.
pub fn classify<'a>(method: &str, path_and_query: &'a str) -> Endpoint<'a> {
    let path = path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p);
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    match path {
        "/health" | "/healthz" => return method_gate(method, "GET", Endpoint::Health),
        "/ready" | "/readyz" => return method_gate(method, "GET", Endpoint::Ready),
        "/metrics" => return method_gate(method, "GET", Endpoint::Metrics),
        "/v1/chat/completions" => {
            return method_gate(method, "POST", Endpoint::ChatCompletions { proxy: DEFAULT_PROXY })
        }
        "/v1/responses" => return method_gate(method, "POST", Endpoint::Responses { proxy: DEFAULT_PROXY }),
        "/v1/models" => return method_gate(method, "GET", Endpoint::Models { proxy: DEFAULT_PROXY }),
        "/v1/usage" => return method_gate(method, "GET", Endpoint::Usage),
        "/v1/provider-keys" => return method_gate(method, "GET", Endpoint::PersonalKeys { provider: None }),
        "/.well-known/oauth-authorization-server" => {
            return method_gate(method, "GET", Endpoint::OAuth(OAuthRoute::ServerMetadata))
        }
        "/.well-known/oauth-protected-resource" => {
            return method_gate(method, "GET", Endpoint::OAuth(OAuthRoute::ResourceMetadata))
        }
        crate::oauth::PATH_TOKEN => return method_gate(method, "POST", Endpoint::OAuth(OAuthRoute::Token)),
        crate::oauth::PATH_REGISTER => return method_gate(method, "POST", Endpoint::OAuth(OAuthRoute::Register)),
        crate::oauth::PATH_REVOKE => return method_gate(method, "POST", Endpoint::OAuth(OAuthRoute::Revoke)),
        crate::oauth::PATH_INTROSPECT => return method_gate(method, "POST", Endpoint::OAuth(OAuthRoute::Introspect)),
        crate::oauth::PATH_CALLBACK => return method_gate(method, "GET", Endpoint::OAuth(OAuthRoute::Callback)),
        crate::oauth::PATH_AUTHORIZE => {
            return if method.eq_ignore_ascii_case("POST") {
                Endpoint::OAuth(OAuthRoute::Authorize)
            } else {
                method_gate(method, "GET", Endpoint::OAuth(OAuthRoute::Authorize))
            }
        }
        _ => {}
    }
    if path == "/admin" || path.starts_with("/admin/") {
        return Endpoint::Admin;
    }
    if let Some(provider) = path.strip_prefix("/v1/provider-keys/") {
        if provider.is_empty() || provider.contains('/') {
            return Endpoint::NotFound;
        }
        return if method.eq_ignore_ascii_case("PUT") || method.eq_ignore_ascii_case("DELETE") {
            Endpoint::PersonalKeys { provider: Some(provider) }
        } else {
            Endpoint::MethodNotAllowed { allowed: "PUT or DELETE" }
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/model-router/") {
        let Some((proxy, tail)) = rest.split_once('/') else {
            return Endpoint::NotFound;
        };
        if proxy.is_empty() {
            return Endpoint::NotFound;
        }
        return match tail {
            "chat/completions" => method_gate(method, "POST", Endpoint::ChatCompletions { proxy }),
            "responses" => method_gate(method, "POST", Endpoint::Responses { proxy }),
            "models" => method_gate(method, "GET", Endpoint::Models { proxy }),
            _ => Endpoint::NotFound,
        };
    }
    if let Some(rest) = path_and_query.strip_prefix("/v1/") {
        let (provider, tail) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !provider.is_empty() && !RESERVED_PROVIDER_NAMES.contains(&provider) {
            return Endpoint::Passthrough { provider, rest: tail };
        }
    }
    Endpoint::NotFound
}

/// Every model a native (pass-through) request names, so a routing policy can be applied to all
/// of them: the path segment after `models/` (Gemini, its `:method` cut) or `model/` (Bedrock),
/// percent-decoded, and the body's `model` member (OpenAI, Anthropic, Cohere). The provider
/// serves what the path names, so a body cannot vouch for it: both are returned.
pub fn passthrough_models(rest: &str, body: &[u8]) -> Vec<String> {
    let path = rest.split('?').next().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    while let Some(seg) = segments.next() {
        let named = match seg {
            "models" => segments.next().map(|m| percent_decode(m.split(':').next().unwrap_or(m))),
            "model" => segments.next().map(percent_decode),
            _ => None,
        };
        out.extend(named.filter(|m| !m.is_empty()));
    }
    out.extend(crate::body::sniff_model(body).filter(|m| !m.is_empty()));
    out.dedup();
    out
}

/// `%XX` decoding; malformed escapes stay as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_models_from_path_and_body() {
        let body = br#"{"model":"gpt-4o","messages":[]}"#;
        assert_eq!(passthrough_models("/chat/completions", body), ["gpt-4o"]);
        assert_eq!(
            passthrough_models("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", b""),
            ["gemini-2.0-flash"]
        );
        assert_eq!(
            passthrough_models("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream", b"{}"),
            ["anthropic.claude-3-5-sonnet-20240620-v1:0"]
        );
        // A body cannot hide the model the path names.
        assert_eq!(
            passthrough_models("/v1beta/models/gemini-2.5-pro:generateContent", br#"{"model":"gemini-2.0-flash"}"#),
            ["gemini-2.5-pro", "gemini-2.0-flash"]
        );
        assert!(passthrough_models("/files", b"").is_empty());
        assert!(passthrough_models("/models", b"not json").is_empty());
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }

    #[test]
    fn personal_key_routes() {
        assert_eq!(classify("GET", "/v1/provider-keys"), Endpoint::PersonalKeys { provider: None });
        assert_eq!(classify("PUT", "/v1/provider-keys/openai"), Endpoint::PersonalKeys { provider: Some("openai") });
        assert_eq!(
            classify("DELETE", "/v1/provider-keys/openai/"),
            Endpoint::PersonalKeys { provider: Some("openai") }
        );
        assert_eq!(classify("POST", "/v1/provider-keys"), Endpoint::MethodNotAllowed { allowed: "GET" });
        assert_eq!(
            classify("GET", "/v1/provider-keys/openai"),
            Endpoint::MethodNotAllowed { allowed: "PUT or DELETE" }
        );
        assert_eq!(classify("PUT", "/v1/provider-keys/a/b"), Endpoint::NotFound);
    }

    #[test]
    fn routes() {
        assert_eq!(classify("GET", "/health"), Endpoint::Health);
        assert_eq!(classify("POST", "/v1/chat/completions"), Endpoint::ChatCompletions { proxy: "default" });
        assert_eq!(classify("POST", "/v1/chat/completions?x=1"), Endpoint::ChatCompletions { proxy: "default" });
        assert_eq!(classify("GET", "/v1/chat/completions"), Endpoint::MethodNotAllowed { allowed: "POST" });
        assert_eq!(classify("GET", "/v1/models"), Endpoint::Models { proxy: "default" });
        assert_eq!(
            classify("POST", "/v1/model-router/team-a/chat/completions"),
            Endpoint::ChatCompletions { proxy: "team-a" }
        );
        assert_eq!(classify("GET", "/v1/model-router/team-a/models"), Endpoint::Models { proxy: "team-a" });
        assert_eq!(classify("POST", "/v1/model-router//chat/completions"), Endpoint::NotFound);
        assert_eq!(classify("POST", "/v1/model-router/x/other"), Endpoint::NotFound);
        assert_eq!(
            classify("POST", "/v1/openai/chat/completions"),
            Endpoint::Passthrough { provider: "openai", rest: "/chat/completions" }
        );
        assert_eq!(
            classify("POST", "/v1/gemini/v1beta/models/g:generateContent?key=k"),
            Endpoint::Passthrough { provider: "gemini", rest: "/v1beta/models/g:generateContent?key=k" }
        );
        assert_eq!(classify("POST", "/v1/chat"), Endpoint::NotFound);
        assert_eq!(classify("POST", "/api/auth/oauth2/token"), Endpoint::OAuth(OAuthRoute::Token));
        assert_eq!(classify("GET", "/api/auth/oauth2/token"), Endpoint::MethodNotAllowed { allowed: "POST" });
        assert_eq!(classify("GET", "/api/auth/oauth2/authorize?x=1"), Endpoint::OAuth(OAuthRoute::Authorize));
        assert_eq!(classify("POST", "/api/auth/oauth2/authorize"), Endpoint::OAuth(OAuthRoute::Authorize));
        assert_eq!(
            classify("GET", "/.well-known/oauth-authorization-server"),
            Endpoint::OAuth(OAuthRoute::ServerMetadata)
        );
        assert_eq!(classify("GET", "/nope"), Endpoint::NotFound);
    }
}
