//! Caller-supplied attribution headers (`X-Portcullis-*`, and `X-Archestra-*` for apps that already
//! send them). They enrich logs, metrics and traces and never change the LLM request.

/// Attribution carried by one request. Values are bounded and free of control characters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentMeta {
    pub agent_id: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub execution_id: Option<String>,
}

/// Longest value kept from any attribution header.
pub const MAX_META_LEN: usize = 256;

fn clean(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || s.len() > MAX_META_LEN || s.chars().any(char::is_control) {
        return None;
    }
    Some(s.to_string())
}

impl AgentMeta {
    /// Whether a header of this name can carry agent metadata (a request with none skips the
    /// lookups).
    pub fn is_meta_header(name: &str) -> bool {
        let n = name.as_bytes();
        let has = |p: &[u8]| n.len() > p.len() && n[..p.len()].eq_ignore_ascii_case(p);
        has(b"x-portcullis-") || has(b"x-archestra-")
    }

    /// Build from a header lookup (`name` is the whole lower-case header name).
    /// `X-Portcullis-*` wins over `X-Archestra-*`; individual headers win over the composite
    /// `-Meta` header `agent/execution/session`.
    pub fn from_headers<'h>(get: impl Fn(&str) -> Option<&'h [u8]>) -> Self {
        let pick = |[ours, theirs]: [&str; 2]| get(ours).and_then(clean).or_else(|| get(theirs).and_then(clean));
        let mut meta = AgentMeta {
            agent_id: pick(["x-portcullis-agent-id", "x-archestra-agent-id"]),
            user_id: pick(["x-portcullis-user-id", "x-archestra-user-id"]),
            session_id: pick(["x-portcullis-session-id", "x-archestra-session-id"]),
            execution_id: pick(["x-portcullis-execution-id", "x-archestra-execution-id"]),
        };
        if let Some(composite) = pick(["x-portcullis-meta", "x-archestra-meta"]) {
            let mut parts = composite.splitn(3, '/');
            let mut fill = |slot: &mut Option<String>| {
                if let Some(p) = parts.next() {
                    if slot.is_none() && !p.is_empty() {
                        *slot = Some(p.to_string());
                    }
                }
            };
            fill(&mut meta.agent_id);
            fill(&mut meta.execution_id);
            fill(&mut meta.session_id);
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn meta(h: &[(&str, &str)]) -> AgentMeta {
        let m: HashMap<String, Vec<u8>> = h.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        AgentMeta::from_headers(|k| m.get(k).map(|v| v.as_slice()))
    }

    #[test]
    fn only_prefixed_headers_can_carry_metadata() {
        for name in ["x-portcullis-agent-id", "X-Archestra-Meta", "x-portcullis-anything"] {
            assert!(AgentMeta::is_meta_header(name), "{name}");
        }
        for name in ["x-portcullis-", "content-type", "x-portcullisagent", "authorization"] {
            assert!(!AgentMeta::is_meta_header(name), "{name}");
        }
    }

    #[test]
    fn composite_and_precedence() {
        let m = meta(&[("x-archestra-meta", "my-agent//session-456"), ("x-portcullis-agent-id", "explicit")]);
        assert_eq!(m.agent_id.as_deref(), Some("explicit"));
        assert_eq!(m.execution_id, None);
        assert_eq!(m.session_id.as_deref(), Some("session-456"));
        let m = meta(&[("x-portcullis-meta", "a/e/s"), ("x-archestra-execution-id", "e2")]);
        assert_eq!(
            (m.agent_id.as_deref(), m.execution_id.as_deref(), m.session_id.as_deref()),
            (Some("a"), Some("e2"), Some("s"))
        );
        assert_eq!(meta(&[("x-portcullis-agent-id", "bad\u{7}")]).agent_id, None);
    }
}
