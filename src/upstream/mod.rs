//! Provider registry: each `[providers.NAME]` table becomes a [`Provider`] with its hosts,
//! key pools, timeouts and egress verdict, resolved once at start-up.

pub mod dns;
pub mod exchange;
pub mod fetch;

use crate::config::presets::{self, AuthStyle};
use crate::config::{self, Config};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, LoadBalancer};
use pingora::services::background::{background_service, GenBackgroundService};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What wire a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Azure,
    OpenAiCompatible,
    Anthropic,
    Gemini,
    Bedrock,
    Cohere,
    Mock,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Azure => "azure",
            Kind::OpenAiCompatible => "openai_compatible",
            Kind::Anthropic => "anthropic",
            Kind::Gemini => "gemini",
            Kind::Bedrock => "bedrock",
            Kind::Cohere => "cohere",
            Kind::Mock => "mock",
        }
    }
}

/// Upstream keys for one host, handed out in rotation.
#[derive(Default)]
pub struct KeyPool {
    keys: Vec<String>,
    next: AtomicUsize,
}

impl std::fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("KeyPool").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

impl KeyPool {
    pub fn new(keys: Vec<String>) -> Self {
        KeyPool { keys, next: AtomicUsize::new(0) }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The next key in rotation.
    pub fn next_key(&self) -> Option<&str> {
        if self.keys.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.keys.len();
        Some(&self.keys[i])
    }
}

/// One upstream host (a deployment): where to connect and which keys to use there.
#[derive(Debug)]
pub struct Host {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix of the base URL without a trailing slash (`/v1`, `/openai/v1`, ``).
    pub base_path: String,
    /// `Host` header value (`host` or `host:port` for non-default ports).
    pub authority: String,
    pub keys: KeyPool,
    pub egress_allowed: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub pool_idle: Duration,
}

/// A health-checked balancer over a provider's hosts, and each backend address's host index.
pub type HostBalancer = (Arc<LoadBalancer<RoundRobin>>, HashMap<SocketAddr, usize>);

/// A configured provider instance.
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    pub auth: AuthStyle,
    pub hosts: Vec<Host>,
    /// Health-checked balancer over `hosts` when there are several; maps addresses back to hosts.
    pub balancer: Option<HostBalancer>,
    pub models: Vec<String>,
    pub api_version: Option<String>,
    pub azure_deployments: BTreeMap<String, String>,
    pub timeouts: Timeouts,
    pub max_attempts: u32,
    pub tls_verify: bool,
    /// Bedrock: the region signed for.
    pub region: Option<String>,
    /// Bedrock: IAM credentials for SigV4.
    pub aws: Option<AwsCredentials>,
    /// Where to tell the operator to put a missing key.
    pub key_hint: String,
    /// Calls in flight to this provider, capped at `max_in_flight` (0: no cap).
    pub in_flight: Arc<crate::gateway::admission::Gate>,
    pub max_in_flight: usize,
    next_host: AtomicUsize,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("hosts", &self.hosts.len())
            .finish()
    }
}

impl Provider {
    /// Label for metrics: the model if configured for this provider, else `other`, so labels
    /// stay bounded whatever clients send.
    pub fn model_label<'a>(&'a self, model: &str) -> &'a str {
        self.models.iter().find(|m| *m == model).map_or("other", String::as_str)
    }

    /// Whether another attempt could land somewhere different.
    pub fn has_alternatives(&self) -> bool {
        self.hosts.len() > 1 || self.hosts.iter().any(|h| h.keys.len() > 1)
    }

    /// Pick a host index, avoiding `tried` when possible. With several hosts the health-checked
    /// balancer decides; unhealthy hosts are skipped while any healthy one remains.
    pub fn pick_host(&self, tried: &[usize]) -> Option<usize> {
        if self.hosts.is_empty() {
            return None;
        }
        if let Some((lb, by_addr)) = &self.balancer {
            let idx_of = |b: &pingora::lb::Backend| b.addr.as_inet().and_then(|a| by_addr.get(a).copied());
            let pick = lb
                .select_with(b"", 256, |b, healthy| healthy && idx_of(b).is_some_and(|i| !tried.contains(&i)))
                .and_then(|b| idx_of(&b));
            if pick.is_some() {
                return pick;
            }
        }
        let n = self.hosts.len();
        let start = self.next_host.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| (start + i) % n).find(|i| !tried.contains(i)).or(Some(start % n))
    }

    /// Upstream path and query for Chat Completions.
    pub fn chat_path(&self, host: &Host, model: &str) -> String {
        match self.kind {
            Kind::Azure => {
                let deployment = self.azure_deployments.get(model).map_or(model, String::as_str);
                let enc: String = url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
                let mut p = format!("{}/openai/deployments/{enc}/chat/completions", host.base_path);
                if let Some(v) = &self.api_version {
                    p.push_str("?api-version=");
                    p.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
                }
                p
            }
            _ => format!("{}/chat/completions", host.base_path),
        }
    }

    /// Upstream path for `/v1/responses` (OpenAI serves it natively).
    pub fn responses_path(&self, host: &Host) -> String {
        format!("{}/responses", host.base_path)
    }

    /// The header carrying the upstream key.
    pub fn auth_header(&self, key: &str) -> Option<(&'static str, String)> {
        match self.auth {
            AuthStyle::Bearer => Some(("authorization", format!("Bearer {key}"))),
            AuthStyle::ApiKey => Some(("api-key", key.to_string())),
            AuthStyle::XApiKey => Some(("x-api-key", key.to_string())),
            AuthStyle::GoogApiKey => Some(("x-goog-api-key", key.to_string())),
            AuthStyle::None | AuthStyle::Sigv4 => None,
        }
    }
}

/// AWS credentials for SigV4 signing.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("AwsCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

fn aws_credentials(p: &config::Provider, env: &dyn Fn(&str) -> Option<String>) -> Option<AwsCredentials> {
    let from_env = |name: &Option<String>, default: &str| env(name.as_deref().unwrap_or(default));
    let id = p.aws_access_key_id.clone().or_else(|| from_env(&p.aws_access_key_id_env, "AWS_ACCESS_KEY_ID"))?;
    let secret =
        p.aws_secret_access_key.clone().or_else(|| from_env(&p.aws_secret_access_key_env, "AWS_SECRET_ACCESS_KEY"))?;
    let session_token = from_env(&p.aws_session_token_env, "AWS_SESSION_TOKEN").filter(|t| !t.is_empty());
    (!id.is_empty() && !secret.is_empty()).then_some(AwsCredentials {
        access_key_id: id,
        secret_access_key: secret,
        session_token,
    })
}

/// Every provider, by name.
#[derive(Debug, Default)]
pub struct Registry {
    pub providers: BTreeMap<String, Arc<Provider>>,
}

/// Background services (balancer health checks) the server must run.
pub type HealthServices = Vec<GenBackgroundService<LoadBalancer<RoundRobin>>>;

pub(crate) fn collect_keys(
    api_key: &Option<String>,
    api_key_env: &Option<String>,
    api_keys: &[String],
    api_keys_env: &[String],
    default_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut keys: Vec<String> = api_key.iter().cloned().chain(api_keys.iter().cloned()).collect();
    let envs = api_key_env.iter().map(String::as_str).chain(api_keys_env.iter().map(String::as_str));
    keys.extend(envs.filter_map(env));
    if keys.is_empty() && api_key_env.is_none() && api_keys_env.is_empty() {
        if let Some(v) = default_env.and_then(env) {
            keys.push(v);
        }
    }
    keys.retain(|k| !k.trim().is_empty());
    keys
}

fn parse_host(base_url: &str, keys: Vec<String>, allowed: &[String]) -> Result<Host, String> {
    let url = url::Url::parse(base_url).map_err(|e| format!("`{base_url}`: {e}"))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        s => return Err(format!("unsupported scheme `{s}`")),
    };
    let host = url.host_str().ok_or("base_url has no host")?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().ok_or("base_url has no port")?;
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    let egress_allowed = config::host_allowed(&host, allowed);
    Ok(Host { tls, host, port, base_path, authority, keys: KeyPool::new(keys), egress_allowed })
}

impl Registry {
    /// Build every provider. Multi-host providers get a health-checked balancer whose
    /// background service is returned for the server to run.
    pub fn build(
        cfg: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Registry, HealthServices), Vec<config::ConfigError>> {
        let allowed = cfg.allowed_hosts();
        let mut errors = Vec::new();
        let mut providers = BTreeMap::new();
        let mut services = Vec::new();
        let d = &cfg.upstream;
        for (name, p) in &cfg.providers {
            let kind = match p.kind.as_str() {
                "openai" => Kind::OpenAi,
                "azure" => Kind::Azure,
                "openai_compatible" => Kind::OpenAiCompatible,
                "anthropic" => Kind::Anthropic,
                "gemini" => Kind::Gemini,
                "bedrock" => Kind::Bedrock,
                "cohere" => Kind::Cohere,
                _ => Kind::Mock,
            };
            let preset = if kind == Kind::OpenAiCompatible {
                presets::preset(p.preset.as_deref().unwrap_or(name))
            } else {
                None
            };
            let default_env = preset.and_then(|ps| ps.api_key_env).or_else(|| presets::kind_default_key_env(&p.kind));
            let region = (kind == Kind::Bedrock)
                .then(|| p.region.clone().or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION")))
                .flatten();
            let aws = if kind == Kind::Bedrock { aws_credentials(p, env) } else { None };
            let auth = p.auth.unwrap_or(match kind {
                Kind::Azure => AuthStyle::ApiKey,
                Kind::Mock => AuthStyle::None,
                Kind::Anthropic => AuthStyle::XApiKey,
                Kind::Gemini => AuthStyle::GoogApiKey,
                // A Bedrock API key (bearer) when one is configured, else IAM credentials.
                Kind::Bedrock if p.api_key.is_some() || p.api_key_env.is_some() => AuthStyle::Bearer,
                Kind::Bedrock => AuthStyle::Sigv4,
                _ => preset.map_or(AuthStyle::Bearer, |ps| ps.auth),
            });
            let mut hosts = Vec::new();
            if kind != Kind::Mock {
                let official = match (&region, kind) {
                    (Some(r), Kind::Bedrock) => Some(format!("https://bedrock-runtime.{r}.amazonaws.com")),
                    _ => preset
                        .map(|ps| ps.base_url.to_string())
                        .or_else(|| presets::kind_default_base_url(&p.kind).map(str::to_string)),
                };
                if kind == Kind::Bedrock && region.is_none() {
                    errors.push(config::ConfigError {
                        path: format!("providers.{name}.region"),
                        message: "bedrock needs a region (or AWS_REGION in the environment)".into(),
                    });
                }
                if auth == AuthStyle::Sigv4 && aws.is_none() {
                    errors.push(config::ConfigError {
                        path: format!("providers.{name}.aws_access_key_id"),
                        message: "bedrock needs AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
                                  environment, the aws_*_env keys, or an api_key (Bedrock API key)"
                            .into(),
                    });
                }
                // With no explicit allow-list, a provider's own official host is allowed.
                let official_allowed = cfg.egress.allow_hosts.is_none() && p.base_url.is_none();
                let base = p.base_url.clone().or(official);
                let keys = collect_keys(&p.api_key, &p.api_key_env, &p.api_keys, &p.api_keys_env, default_env, env);
                if p.deployments.is_empty() {
                    match base.as_deref().map(|b| parse_host(b, keys, &allowed)) {
                        Some(Ok(mut h)) => {
                            h.egress_allowed |= official_allowed;
                            hosts.push(h)
                        }
                        Some(Err(e)) => {
                            errors.push(config::ConfigError { path: format!("providers.{name}.base_url"), message: e })
                        }
                        None => errors.push(config::ConfigError {
                            path: format!("providers.{name}.base_url"),
                            message: "required".into(),
                        }),
                    }
                }
                for (i, dep) in p.deployments.iter().enumerate() {
                    let mut dk =
                        collect_keys(&dep.api_key, &dep.api_key_env, &dep.api_keys, &dep.api_keys_env, None, env);
                    if dk.is_empty() {
                        dk = keys_fallback(p, default_env, env);
                    }
                    match parse_host(&dep.base_url, dk, &allowed) {
                        Ok(h) => hosts.push(h),
                        Err(e) => errors.push(config::ConfigError {
                            path: format!("providers.{name}.deployments[{i}].base_url"),
                            message: e,
                        }),
                    }
                }
            }
            let mut balancer = None;
            let distinct: std::collections::BTreeSet<(String, u16)> =
                hosts.iter().map(|h| (h.host.clone(), h.port)).collect();
            if distinct.len() > 1 {
                match build_balancer(&hosts, d.health_check_interval_seconds) {
                    Ok((svc, map)) => {
                        balancer = Some((svc.task(), map));
                        services.push(svc);
                    }
                    Err(e) => {
                        errors.push(config::ConfigError { path: format!("providers.{name}.deployments"), message: e })
                    }
                }
            }
            let key_hint = p
                .api_key_env
                .clone()
                .or_else(|| default_env.map(str::to_string))
                .map_or_else(|| format!("providers.{name}.api_key"), |e| format!("the {e} environment variable"));
            providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name: name.clone(),
                    kind,
                    auth,
                    hosts,
                    balancer,
                    models: p.models.clone(),
                    api_version: p.api_version.clone(),
                    azure_deployments: p.azure_deployments.clone(),
                    timeouts: Timeouts {
                        connect: Duration::from_millis(p.connect_timeout_ms.unwrap_or(d.connect_timeout_ms)),
                        first_byte: Duration::from_millis(p.first_byte_timeout_ms.unwrap_or(d.first_byte_timeout_ms)),
                        idle: Duration::from_millis(p.idle_timeout_ms.unwrap_or(d.idle_timeout_ms)),
                        pool_idle: Duration::from_secs(d.pool_idle_timeout_seconds),
                    },
                    max_attempts: p.max_attempts.unwrap_or(d.max_attempts).max(1),
                    tls_verify: p.tls_verify,
                    region,
                    aws,
                    key_hint,
                    in_flight: crate::gateway::admission::Gate::new(None),
                    max_in_flight: p.max_in_flight,
                    next_host: AtomicUsize::new(0),
                }),
            );
        }
        if errors.is_empty() {
            Ok((Registry { providers }, services))
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }
}

fn keys_fallback(p: &config::Provider, default_env: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    collect_keys(&p.api_key, &p.api_key_env, &p.api_keys, &p.api_keys_env, default_env, env)
}

type Balancer = (GenBackgroundService<LoadBalancer<RoundRobin>>, HashMap<SocketAddr, usize>);

fn build_balancer(hosts: &[Host], interval_secs: u64) -> Result<Balancer, String> {
    use std::net::ToSocketAddrs;
    let mut by_addr = HashMap::new();
    let mut addrs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        // Resolved once at start-up (before any worker runs); a name that does not resolve is a
        // configuration error rather than a panic inside Pingora.
        let addr = (h.host.as_str(), h.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", h.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", h.host))?;
        by_addr.entry(addr).or_insert(i);
        addrs.push(addr);
    }
    let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs).map_err(|e| e.to_string())?;
    let mut hc = TcpHealthCheck::new();
    hc.consecutive_failure = 2;
    lb.set_health_check(hc);
    lb.health_check_frequency = Some(Duration::from_secs(interval_secs.max(1)));
    Ok((background_service("deployment health check", lb), by_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str, env: &[(&str, &str)]) -> Registry {
        let cfg = Config::parse(text, std::iter::empty()).unwrap();
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Registry::build(&cfg, &|k| env.get(k).cloned()).unwrap().0
    }

    #[test]
    fn presets_and_paths() {
        let r = build(
            r#"
[egress]
allow_hosts = ["api.groq.com", "x.openai.azure.com"]
[providers.groq]
kind = "openai_compatible"
[providers.az]
kind = "azure"
base_url = "https://x.openai.azure.com"
api_key = "k"
api_version = "2024-10-21"
azure_deployments = { "gpt-4o" = "dep 1" }
"#,
            &[("GROQ_API_KEY", "gsk")],
        );
        let g = r.get("groq").unwrap();
        assert_eq!(g.hosts[0].host, "api.groq.com");
        assert_eq!(g.hosts[0].base_path, "/openai/v1");
        assert_eq!(g.hosts[0].keys.next_key(), Some("gsk"));
        assert_eq!(g.chat_path(&g.hosts[0], "llama"), "/openai/v1/chat/completions");
        assert!(g.hosts[0].egress_allowed);
        let a = r.get("az").unwrap();
        assert_eq!(
            a.chat_path(&a.hosts[0], "gpt-4o"),
            "/openai/deployments/dep+1/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(a.auth_header("k"), Some(("api-key", "k".to_string())));
    }

    #[test]
    fn key_rotation_and_egress() {
        let r = build(
            r#"
[providers.openai]
kind = "openai"
base_url = "http://10.1.2.3:8080/v1"
api_keys = ["a", "b"]
"#,
            &[],
        );
        let p = r.get("openai").unwrap();
        let h = &p.hosts[0];
        assert_eq!((h.keys.next_key(), h.keys.next_key(), h.keys.next_key()), (Some("a"), Some("b"), Some("a")));
        assert!(!h.egress_allowed, "10.1.2.3 is not in the default allow list");
        assert_eq!(h.authority, "10.1.2.3:8080");
    }

    #[test]
    fn multi_host_balancer() {
        let r = build(
            r#"
[egress]
allow_hosts = ["127.0.0.1", "127.0.0.2"]
[providers.vllm]
kind = "openai_compatible"
preset = "vllm"
[[providers.vllm.deployments]]
base_url = "http://127.0.0.1:8001/v1"
[[providers.vllm.deployments]]
base_url = "http://127.0.0.2:8002/v1"
"#,
            &[],
        );
        let p = r.get("vllm").unwrap();
        assert!(p.balancer.is_some());
        let a = p.pick_host(&[]).unwrap();
        let b = p.pick_host(&[a]).unwrap();
        assert_ne!(a, b);
    }
}
