//! Which provider endpoints the native pass-through routes (`/v1/{provider}/...`) may reach with
//! the gateway's own provider keys.
//!
//! A pooled key usually belongs to an organisation, and a provider's API holds far more than
//! inference behind it: files, fine-tunes, batches, stored responses, organisation admin. So by
//! default only the inference endpoints of each provider kind are open; a deployment adds more
//! per provider with `passthrough_paths`. A caller presenting the provider's own key is not held
//! to these rules: it could call the provider directly with that key anyway.

/// One allowed endpoint: a method (or `*`) and a path pattern whose segments are literals, `*`
/// (any one segment) or a literal with one `*` inside (`*:generateContent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    method: String,
    segments: Vec<String>,
}

impl Rule {
    /// Parses `"METHOD /path/pattern"`.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let (method, path) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("`{text}`: expected \"METHOD /path\", e.g. \"POST /files\" or \"GET /files/*\""))?;
        let method = method.trim().to_ascii_uppercase();
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(format!("`{text}`: the path must start with `/`"));
        }
        if method != "*" && !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("`{text}`: `{method}` is not an HTTP method"));
        }
        let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
        if segments.iter().any(|s| s.matches('*').count() > 1) {
            return Err(format!("`{text}`: a segment takes at most one `*`"));
        }
        Ok(Rule { method, segments })
    }

    fn matches(&self, method: &str, segments: &[String]) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && self.segments.len() == segments.len()
            && self.segments.iter().zip(segments).all(|(p, s)| segment_matches(p, s))
    }
}

fn segment_matches(pattern: &str, segment: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == segment,
        Some((prefix, suffix)) => {
            segment.len() >= prefix.len() + suffix.len() && segment.starts_with(prefix) && segment.ends_with(suffix)
        }
    }
}

/// Inference endpoints open by default, by provider kind.
fn defaults(kind: &str) -> &'static [&'static str] {
    const OPENAI: &[&str] = &[
        "POST /chat/completions",
        "POST /completions",
        "POST /embeddings",
        "POST /responses",
        "POST /moderations",
        "POST /audio/speech",
        "POST /audio/transcriptions",
        "POST /audio/translations",
        "POST /images/generations",
        "POST /images/edits",
        "POST /images/variations",
        "GET /models",
        "GET /models/*",
    ];
    const AZURE: &[&str] = &[
        "POST /openai/deployments/*/chat/completions",
        "POST /openai/deployments/*/completions",
        "POST /openai/deployments/*/embeddings",
        "POST /openai/deployments/*/audio/speech",
        "POST /openai/deployments/*/audio/transcriptions",
        "POST /openai/deployments/*/audio/translations",
        "POST /openai/deployments/*/images/generations",
        "POST /openai/v1/chat/completions",
        "POST /openai/v1/responses",
        "POST /openai/v1/embeddings",
        "GET /openai/models",
        "GET /openai/v1/models",
    ];
    const ANTHROPIC: &[&str] = &[
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
        "POST /v1/complete",
        "GET /v1/models",
        "GET /v1/models/*",
    ];
    const GEMINI: &[&str] = &[
        "POST /v1beta/models/*:generateContent",
        "POST /v1beta/models/*:streamGenerateContent",
        "POST /v1beta/models/*:countTokens",
        "POST /v1beta/models/*:embedContent",
        "POST /v1beta/models/*:batchEmbedContents",
        "POST /v1/models/*:generateContent",
        "POST /v1/models/*:streamGenerateContent",
        "POST /v1/models/*:countTokens",
        "POST /v1/models/*:embedContent",
        "POST /v1/models/*:batchEmbedContents",
        "POST /v1beta/openai/chat/completions",
        "POST /v1beta/openai/embeddings",
        "GET /v1beta/models",
        "GET /v1beta/models/*",
        "GET /v1/models",
        "GET /v1/models/*",
    ];
    const BEDROCK: &[&str] = &[
        "POST /model/*/converse",
        "POST /model/*/converse-stream",
        "POST /model/*/invoke",
        "POST /model/*/invoke-with-response-stream",
    ];
    const COHERE: &[&str] = &[
        "POST /v2/chat",
        "POST /v2/embed",
        "POST /v2/rerank",
        "POST /v1/chat",
        "POST /v1/embed",
        "POST /v1/rerank",
        "POST /v1/tokenize",
        "GET /v1/models",
        "GET /v1/models/*",
    ];
    match kind {
        "openai" | "openai_compatible" => OPENAI,
        "azure" => AZURE,
        "anthropic" => ANTHROPIC,
        "gemini" => GEMINI,
        "bedrock" => BEDROCK,
        "cohere" => COHERE,
        "mock" => &["POST /chat/completions"],
        _ => &[],
    }
}

/// The endpoints one provider's pass-through route may reach with pooled keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
    /// `passthrough_paths = ["*"]`: the provider's whole API.
    everything: bool,
}

impl Rules {
    /// The kind's defaults plus `extra` (`"METHOD /path"` entries, or `"*"` for everything).
    pub fn new(kind: &str, extra: &[String]) -> Result<Rules, String> {
        let mut rules = Rules::default();
        for text in defaults(kind) {
            rules.rules.push(Rule::parse(text)?);
        }
        for text in extra {
            if text.trim() == "*" {
                rules.everything = true;
            } else {
                rules.rules.push(Rule::parse(text)?);
            }
        }
        Ok(rules)
    }

    /// Whether `method` on `rest` (the path after `/v1/{provider}`, query included) is open.
    /// Paths that a server could resolve to somewhere else (`.` or `..` segments, encoded
    /// slashes or dots, backslashes) are refused whatever the rules say.
    pub fn allows(&self, method: &str, rest: &str) -> bool {
        let Some(segments) = plain_segments(rest) else { return false };
        self.everything || self.rules.iter().any(|r| r.matches(method, &segments))
    }
}

/// The path's segments, or `None` when it is not a plain path.
fn plain_segments(rest: &str) -> Option<Vec<String>> {
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let lower = path.to_ascii_lowercase();
    if path.contains('\\') || lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") {
        return None;
    }
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    if segments.iter().any(|s| s == "." || s == "..") {
        return None;
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(kind: &str, extra: &[&str]) -> Rules {
        Rules::new(kind, &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn inference_is_open_and_the_rest_of_the_api_is_not() {
        let openai = rules("openai", &[]);
        assert!(openai.allows("POST", "/chat/completions"));
        assert!(openai.allows("post", "/chat/completions?x=1"));
        assert!(openai.allows("GET", "/models/gpt-4o"));
        for (m, p) in [
            ("GET", "/files"),
            ("POST", "/files"),
            ("POST", "/fine_tuning/jobs"),
            ("GET", "/responses/resp_123"),
            ("DELETE", "/models/ft:gpt-4o:org"),
            ("GET", "/organization/users"),
            ("GET", "/chat/completions"),
            ("POST", "/chat/completions/extra"),
        ] {
            assert!(!openai.allows(m, p), "{m} {p}");
        }
        let gemini = rules("gemini", &[]);
        assert!(gemini.allows("POST", "/v1beta/models/gemini-2.5-flash:generateContent"));
        assert!(gemini.allows("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
        assert!(!gemini.allows("POST", "/v1beta/models/gemini-2.5-flash:tuneModel"));
        assert!(!gemini.allows("GET", "/v1beta/files"));
        let bedrock = rules("bedrock", &[]);
        assert!(bedrock.allows("POST", "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream"));
        assert!(!bedrock.allows("GET", "/guardrails"));
        assert!(rules("anthropic", &[]).allows("POST", "/v1/messages"));
        assert!(!rules("anthropic", &[]).allows("POST", "/v1/messages/batches"));
        assert!(rules("cohere", &[]).allows("POST", "/v2/chat"));
        assert!(rules("azure", &[]).allows("POST", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"));
    }

    #[test]
    fn traversal_and_encoded_separators_are_refused() {
        let openai = rules("openai", &["*"]);
        for p in [
            "/chat/completions/../../files",
            "/./chat/completions",
            "/chat%2fcompletions",
            "/chat/%2e%2e/files",
            "/chat\\completions",
        ] {
            assert!(!openai.allows("POST", p), "{p}");
        }
        assert!(openai.allows("GET", "/files"), "`*` opens everything else");
    }

    #[test]
    fn deployments_add_endpoints() {
        let r = rules("openai", &["GET /files", "* /files/*", "POST /batches"]);
        assert!(r.allows("GET", "/files"));
        assert!(r.allows("DELETE", "/files/file-abc"));
        assert!(r.allows("POST", "/batches"));
        assert!(!r.allows("GET", "/batches"));
        for bad in ["files", "POST files", "P0ST /x", "GET /a*b*c"] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }
}
