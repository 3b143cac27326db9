//! Model-id resolution: `provider:model`, `auto`, aliases, and bare names that a provider's
//! model list maps unambiguously.

use crate::ApiError;
use std::collections::{BTreeMap, HashMap};

/// Where a model id sends the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `auto`: the tier router decides.
    Auto,
    /// A provider table and the model name the upstream sees (prefix stripped).
    Provider { provider: String, model: String },
}

/// The configured names a model id may refer to.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Configured provider table names, sorted (error messages list them).
    providers: Vec<String>,
    /// Alias → `(provider, model)`.
    aliases: HashMap<String, (String, String)>,
    /// Bare model name → the providers whose model list contains it.
    listed: HashMap<String, Vec<String>>,
}

impl Catalog {
    /// `providers` maps each provider name to its listed models.
    pub fn new(providers: &BTreeMap<String, Vec<String>>, aliases: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut cat = Catalog { providers: providers.keys().cloned().collect(), ..Default::default() };
        for (name, models) in providers {
            for m in models {
                cat.listed.entry(m.clone()).or_default().push(name.clone());
            }
        }
        for (alias, target) in aliases {
            let Some((p, m)) = target.split_once(':') else {
                return Err(format!("alias `{alias}` must map to provider:model, got `{target}`"));
            };
            if !providers.contains_key(p) {
                return Err(format!("alias `{alias}` names unknown provider `{p}`"));
            }
            if m.is_empty() {
                return Err(format!("alias `{alias}` has an empty model name"));
            }
            cat.aliases.insert(alias.clone(), (p.to_string(), m.to_string()));
        }
        Ok(cat)
    }

    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    pub fn has_provider(&self, name: &str) -> bool {
        self.providers.binary_search_by(|p| p.as_str().cmp(name)).is_ok()
    }

    /// Resolve a client-supplied model id.
    pub fn resolve(&self, id: &str) -> Result<Target, ApiError> {
        if id.is_empty() {
            return Err(ApiError::bad_request("invalid_model", "`model` must not be empty").with_param("model"));
        }
        if id == "auto" {
            return Ok(Target::Auto);
        }
        if let Some((p, m)) = self.aliases.get(id) {
            return Ok(Target::Provider { provider: p.clone(), model: m.clone() });
        }
        if let Some((prefix, model)) = id.split_once(':') {
            if self.has_provider(prefix) {
                if model.is_empty() {
                    return Err(ApiError::bad_request(
                        "invalid_model",
                        format!("model `{id}` names provider `{prefix}` but no model after the colon"),
                    )
                    .with_param("model"));
                }
                return Ok(Target::Provider { provider: prefix.to_string(), model: model.to_string() });
            }
            // Bare names may contain colons (`llama3:8b`): only a listed one passes.
            if let Some(t) = self.unique_listed(id) {
                return Ok(t);
            }
            return Err(ApiError::bad_request(
                "model_not_found",
                format!(
                    "model `{id}`: unknown provider prefix `{prefix}`; configured providers: {}",
                    self.provider_list()
                ),
            )
            .with_param("model"));
        }
        if let Some(t) = self.unique_listed(id) {
            return Ok(t);
        }
        let hint = match self.listed.get(id) {
            Some(ps) if ps.len() > 1 => {
                format!(" (it is listed by several providers: {})", ps.join(", "))
            }
            _ => String::new(),
        };
        Err(ApiError::bad_request(
            "model_not_found",
            format!(
                "model `{id}` is not routable{hint}; use `provider:model` (configured providers: {}), `auto`, or a configured alias",
                self.provider_list()
            ),
        )
        .with_param("model"))
    }

    fn unique_listed(&self, id: &str) -> Option<Target> {
        match self.listed.get(id).map(Vec::as_slice) {
            Some([p]) => Some(Target::Provider { provider: p.clone(), model: id.to_string() }),
            _ => None,
        }
    }

    fn provider_list(&self) -> String {
        if self.providers.is_empty() {
            "none".into()
        } else {
            self.providers.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        let mut p = BTreeMap::new();
        p.insert("openai".to_string(), vec!["gpt-4o-mini".to_string()]);
        p.insert("ollama".to_string(), vec!["llama3:8b".to_string()]);
        p.insert("groq".to_string(), vec!["shared".to_string()]);
        p.insert("mistral".to_string(), vec!["shared".to_string()]);
        let mut a = BTreeMap::new();
        a.insert("fast".to_string(), "groq:llama-3.1-8b".to_string());
        Catalog::new(&p, &a).unwrap()
    }

    fn target(p: &str, m: &str) -> Target {
        Target::Provider { provider: p.into(), model: m.into() }
    }

    #[test]
    fn resolves() {
        let c = cat();
        assert_eq!(c.resolve("openai:gpt-4o").unwrap(), target("openai", "gpt-4o"));
        assert_eq!(c.resolve("ollama:llama3:8b").unwrap(), target("ollama", "llama3:8b"));
        assert_eq!(c.resolve("llama3:8b").unwrap(), target("ollama", "llama3:8b"));
        assert_eq!(c.resolve("gpt-4o-mini").unwrap(), target("openai", "gpt-4o-mini"));
        assert_eq!(c.resolve("fast").unwrap(), target("groq", "llama-3.1-8b"));
        assert_eq!(c.resolve("auto").unwrap(), Target::Auto);
    }

    #[test]
    fn errors() {
        let c = cat();
        let e = c.resolve("nope:gpt").unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("model_not_found")));
        assert!(e.message.contains("groq, mistral, ollama, openai"), "{}", e.message);
        let e = c.resolve("gpt-4o").unwrap_err();
        assert!(e.message.contains("provider:model"));
        let e = c.resolve("shared").unwrap_err();
        assert!(e.message.contains("several providers"));
        assert_eq!(c.resolve("openai:").unwrap_err().code, Some("invalid_model"));
        assert_eq!(c.resolve("").unwrap_err().param.as_deref(), Some("model"));
    }

    #[test]
    fn bad_alias() {
        let p = BTreeMap::new();
        let mut a = BTreeMap::new();
        a.insert("x".to_string(), "nope".to_string());
        assert!(Catalog::new(&p, &a).is_err());
    }
}
