//! Which gateway endpoint a request path names. Pure string work on the path; the method is
//! checked too so a GET on a POST-only route is a clear 405-style error rather than a proxy.

/// The proxy id `/v1/chat/completions` and friends belong to.
pub const DEFAULT_PROXY: &str = "default";

/// Path segments under `/v1/` that are gateway routes and so cannot be provider names.
pub const RESERVED_PROVIDER_NAMES: &[&str] =
    &["chat", "responses", "models", "model-router", "usage", "completions", "embeddings", "auto"];

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
    /// `/v1/{provider}/{rest}`: native pass-through; `rest` keeps its leading `/` and the query.
    Passthrough {
        provider: &'a str,
        rest: &'a str,
    },
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
            Endpoint::Passthrough { .. } => "passthrough",
            Endpoint::NotFound => "not_found",
            Endpoint::MethodNotAllowed { .. } => "method_not_allowed",
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
        _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(classify("GET", "/nope"), Endpoint::NotFound);
    }
}
