//! Defaults for the hosted OpenAI-wire providers, so `kind = "openai_compatible"` plus a preset
//! name is a complete provider table.

/// How a provider expects its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `api-key: <key>` (Azure)
    ApiKey,
    /// No key (local vLLM, Ollama).
    None,
    /// `x-api-key: <key>` (Anthropic)
    XApiKey,
    /// `x-goog-api-key: <key>` (Gemini)
    GoogApiKey,
    /// AWS Signature Version 4 over the whole request (Bedrock with IAM credentials).
    Sigv4,
}

#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub base_url: &'static str,
    pub api_key_env: Option<&'static str>,
    pub auth: AuthStyle,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "groq",
        base_url: "https://api.groq.com/openai/v1",
        api_key_env: Some("GROQ_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset {
        name: "mistral",
        base_url: "https://api.mistral.ai/v1",
        api_key_env: Some("MISTRAL_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset { name: "xai", base_url: "https://api.x.ai/v1", api_key_env: Some("XAI_API_KEY"), auth: AuthStyle::Bearer },
    Preset {
        name: "openrouter",
        base_url: "https://openrouter.ai/api/v1",
        api_key_env: Some("OPENROUTER_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset {
        name: "cerebras",
        base_url: "https://api.cerebras.ai/v1",
        api_key_env: Some("CEREBRAS_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset {
        name: "deepseek",
        base_url: "https://api.deepseek.com/v1",
        api_key_env: Some("DEEPSEEK_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset {
        name: "perplexity",
        base_url: "https://api.perplexity.ai",
        api_key_env: Some("PERPLEXITY_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset {
        name: "minimax",
        base_url: "https://api.minimax.io/v1",
        api_key_env: Some("MINIMAX_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset {
        name: "zhipuai",
        base_url: "https://open.bigmodel.cn/api/paas/v4",
        api_key_env: Some("ZHIPUAI_API_KEY"),
        auth: AuthStyle::Bearer,
    },
    Preset { name: "vllm", base_url: "http://127.0.0.1:8000/v1", api_key_env: None, auth: AuthStyle::None },
    Preset { name: "ollama", base_url: "http://127.0.0.1:11434/v1", api_key_env: None, auth: AuthStyle::None },
];

/// Default base URLs of the first-party kinds.
pub fn kind_default_base_url(kind: &str) -> Option<&'static str> {
    match kind {
        "openai" => Some("https://api.openai.com/v1"),
        "anthropic" => Some("https://api.anthropic.com"),
        "gemini" => Some("https://generativelanguage.googleapis.com"),
        "cohere" => Some("https://api.cohere.com"),
        _ => None,
    }
}

pub fn kind_default_key_env(kind: &str) -> Option<&'static str> {
    match kind {
        "openai" => Some("OPENAI_API_KEY"),
        "anthropic" => Some("ANTHROPIC_API_KEY"),
        "gemini" => Some("GEMINI_API_KEY"),
        "cohere" => Some("CO_API_KEY"),
        "azure" => Some("AZURE_OPENAI_API_KEY"),
        _ => None,
    }
}

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Hosts the egress allow-list holds when the config does not set one: the official API hosts
/// of every built-in kind and preset. Anything else must be listed explicitly.
pub fn default_allowed_hosts() -> Vec<String> {
    let mut hosts: Vec<String> = ["openai", "anthropic", "gemini", "cohere"]
        .iter()
        .filter_map(|k| kind_default_base_url(k))
        .chain(PRESETS.iter().filter(|p| p.auth != AuthStyle::None).map(|p| p.base_url))
        .filter_map(|u| url::Url::parse(u).ok()?.host_str().map(str::to_string))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}
