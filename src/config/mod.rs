//! The TOML configuration: typed with `deny_unknown_fields` (a typo must never silently disable
//! a security setting), overridable by `PORTCULLIS_<SECTION>__<KEY>` environment variables, and
//! validated as a whole so `check-config` can print every error with its key path.

pub mod presets;

use filters::meter::{Limit, Price};
use filters::route::policy::{Policy, TierMap};
use filters::route::Tier;
use presets::AuthStyle;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

/// The default configuration, compiled in so `portcullis serve` runs on a fresh machine.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../conf/portcullis.toml");

/// Prefix of environment overrides: `PORTCULLIS_SERVER__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub state: State,
    #[serde(default)]
    pub upstream: UpstreamDefaults,
    #[serde(default)]
    pub egress: Egress,
    #[serde(default)]
    pub providers: BTreeMap<String, Provider>,
    #[serde(default)]
    pub proxies: BTreeMap<String, Proxy>,
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: Auth,
    /// `model: "auto"`: the classifier and the default tier → model map.
    #[serde(default)]
    pub routing: Routing,
    /// Named groups of principals and the routing policy they share.
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Budgets and rate limits that apply beyond the scopes' own `limits`.
    #[serde(default)]
    pub metering: Metering,
    /// USD per million tokens, by `provider:model` or `provider:*`.
    #[serde(default)]
    pub pricing: BTreeMap<String, Price>,
    /// The hash-chained audit trail.
    #[serde(default)]
    pub audit: Audit,
    /// The OAuth 2.1 authorization server.
    #[serde(default)]
    pub oauth: OAuth,
    /// Who may use the admin API.
    #[serde(default)]
    pub admin: Admin,
    /// OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Named provider keys, usable only by the credentials mapped to them and the users and
    /// groups they list.
    #[serde(default)]
    pub provider_keys: BTreeMap<String, ProviderKey>,
    /// The key that seals provider keys stored through the admin API.
    #[serde(default)]
    pub secrets: Secrets,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// Environment variable holding the secrets key (32 bytes, hex or base64); every node of a
    /// cluster needs the same one. Unset variable: provider keys cannot be stored.
    pub key_env: String,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets { key_env: "PORTCULLIS_SECRETS_KEY".into() }
    }
}

/// A named credential for one provider table (`[provider_keys.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKey {
    /// The provider table (its hosts, wire and auth style) this key authenticates to.
    pub provider: String,
    pub description: Option<String>,
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub api_keys_env: Vec<String>,
    /// IdP users (`idp-name:user`, as logs name them) whose own key this is.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups whose IdP users may draw on it.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// OTLP/HTTP traces endpoint (JSON encoding), e.g. `http://127.0.0.1:4318/v1/traces`;
    /// unset: no traces.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { otlp_endpoint: None, service_name: "portcullis".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Hex SHA-256 of admin bearer tokens (for automation).
    pub tokens_sha256: Vec<String>,
    /// IdP users in one of these `[groups.X]` (from the IdP's `groups_claim`) are admins.
    pub groups: Vec<String>,
    /// IdP admins must have signed in with MFA.
    pub require_mfa: bool,
    /// How browsers reach the admin listener (the console's sign-in callback is registered at
    /// the IdP as `{public_url}/admin/callback`); default `http://{server.admin_listen}`.
    pub public_url: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { tokens_sha256: Vec::new(), groups: Vec::new(), require_mfa: true, public_url: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth {
    pub access_token_seconds: u64,
    pub refresh_token_seconds: u64,
    pub code_seconds: u64,
    /// RFC 7591 dynamic registration of public clients: "open" or "disabled".
    pub registration: String,
    /// Registrations one client address may make per hour.
    pub registrations_per_hour: u64,
    /// The `[[auth.oidc]]` entry users sign in with at the authorize endpoint.
    pub login_idp: Option<String>,
}

impl Default for OAuth {
    fn default() -> Self {
        OAuth {
            access_token_seconds: 3600,
            refresh_token_seconds: 30 * 86_400,
            code_seconds: 60,
            registration: "open".into(),
            registrations_per_hour: 100,
            login_idp: None,
        }
    }
}

/// An OAuth client from the config file (`portcullis clients create` adds stored ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub name: String,
    pub client_id: String,
    /// Hex SHA-256 of the secret; absent for a public client (PKCE only).
    pub client_secret_sha256: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default = "default_proxies")]
    pub proxies: Vec<String>,
    /// Providers whose keys its client-credentials tokens may draw on.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Named provider keys its client-credentials tokens use (one per provider).
    #[serde(default)]
    pub provider_keys: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Budgets and rate limits on this client's own tokens (default: `metering.key_limits`).
    pub limits: Option<Vec<Limit>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// The trail file (JSON lines, appended); unset: no trail.
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metering {
    /// Limits for every virtual key that has no `limits` of its own (stored keys included).
    pub key_limits: Vec<Limit>,
    /// Output tokens reserved for a request that sets no `max_tokens`.
    pub default_output_tokens: u64,
}

impl Default for Metering {
    fn default() -> Self {
        Metering { key_limits: Vec::new(), default_output_tokens: 512 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: String,
    pub admin_listen: String,
    pub public_url: String,
    /// Worker threads per service (Pingora `threads`).
    pub threads: usize,
    pub max_body_bytes: usize,
    /// Time for the whole client request body to arrive.
    pub body_read_timeout_ms: u64,
    /// LLM requests (chat, responses, pass-through) in flight on this node at most; more get
    /// 503 `overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// How long in-flight requests (long streams) may finish after a shutdown or upgrade.
    pub graceful_shutdown_seconds: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// Daemon mode: drop privileges to this user/group after binding.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Daemon mode: where stderr logs go.
    pub error_log: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            public_url: "http://127.0.0.1:8080".into(),
            threads: 2,
            max_body_bytes: 32 * 1024 * 1024,
            body_read_timeout_ms: 60_000,
            max_in_flight: 10_000,
            graceful_shutdown_seconds: 300,
            pid_file: "/tmp/portcullis.pid".into(),
            upgrade_sock: "/tmp/portcullis_upgrade.sock".into(),
            user: None,
            group: None,
            error_log: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct State {
    pub backend: String,
    pub redis_url: String,
    pub on_redis_error: String,
    pub key_prefix: String,
    pub op_timeout_ms: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            backend: "memory".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            on_redis_error: "fail_closed".into(),
            key_prefix: "portcullis:".into(),
            op_timeout_ms: 500,
        }
    }
}

/// Timeouts and retry defaults every provider inherits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDefaults {
    pub connect_timeout_ms: u64,
    /// Until the response header arrives: reasoning models can think for minutes.
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two body chunks.
    pub idle_timeout_ms: u64,
    pub pool_idle_timeout_seconds: u64,
    /// Attempts across deployments and keys before the first response byte.
    pub max_attempts: u32,
    pub health_check_interval_seconds: u64,
    pub dns_ttl_seconds: u64,
    /// Largest upstream response body buffered (non-streaming) or single SSE event.
    pub max_response_bytes: usize,
    /// Longest a streamed answer may last from the request's arrival.
    pub max_response_seconds: u64,
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 300_000,
            idle_timeout_ms: 120_000,
            pool_idle_timeout_seconds: 90,
            max_attempts: 2,
            health_check_interval_seconds: 10,
            dns_ttl_seconds: 60,
            max_response_bytes: 64 * 1024 * 1024,
            max_response_seconds: 1800,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// `None`: the official API hosts of the built-in kinds and presets.
    pub allow_hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub kind: String,
    /// `openai_compatible` presets: groq, mistral, xai, ...
    pub preset: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    /// Several keys for one host rotate in a pool.
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub api_keys_env: Vec<String>,
    /// Override how the key is sent (`bearer`, `api_key`, `none`).
    pub auth: Option<AuthStyle>,
    /// Azure: `api-version` query parameter.
    pub api_version: Option<String>,
    /// Azure: model name → deployment name (default: the model name).
    #[serde(default)]
    pub azure_deployments: BTreeMap<String, String>,
    /// Models listed in `/v1/models`; a bare name listed by exactly one provider routes there.
    #[serde(default)]
    pub models: Vec<String>,
    /// Endpoints `/v1/{provider}/...` may reach with the gateway's keys beyond the kind's
    /// inference endpoints: `"METHOD /path"` (`*` for a method or a path segment), or `"*"`
    /// for the provider's whole API.
    #[serde(default)]
    pub passthrough_paths: Vec<String>,
    /// Several hosts serving this provider, load-balanced with health checks.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    /// Calls in flight to this provider at most (streams count until they end); over it, a
    /// request falls back to its next candidate or gets 503 `upstream_overloaded`. 0: no cap.
    #[serde(default)]
    pub max_in_flight: usize,
    /// IdP users may store their own key for this provider (`PUT /v1/provider-keys/NAME`), which
    /// their requests then spend before any other.
    #[serde(default)]
    pub personal_keys: bool,
    /// Verify the upstream TLS certificate (never turn off outside tests).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Bedrock: AWS region (default: `AWS_REGION`, then `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// Bedrock SigV4 credentials: env var names (defaults: the standard AWS variables).
    pub aws_access_key_id_env: Option<String>,
    pub aws_secret_access_key_env: Option<String>,
    pub aws_session_token_env: Option<String>,
    /// Bedrock SigV4 credentials inline (prefer the env vars; for tests and sealed configs).
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub base_url: String,
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub api_keys_env: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub description: Option<String>,
    /// Providers this proxy may route to (default: all).
    pub providers: Option<Vec<String>>,
    /// Accept a provider's own API key on `/v1/{provider}/...` and forward it unchanged.
    #[serde(default)]
    pub passthrough_provider_keys: bool,
    /// This proxy's tier → model map for `auto` (default: `routing.tiers`).
    pub tiers: Option<TierMap>,
    /// Routing policy for everyone on this proxy (the outermost layer).
    #[serde(default)]
    pub policy: Policy,
    /// Budgets and rate limits on the proxy's total traffic.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Only IdP tokens carrying an MFA `amr` may use this proxy (virtual keys may not).
    #[serde(default)]
    pub require_mfa: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// A router model file (`conf/router-model.json` format); default: the embedded model.
    pub model_file: Option<String>,
    /// Tier → `provider:model` candidates, cheapest first, for proxies without their own.
    #[serde(default)]
    pub tiers: TierMap,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub description: Option<String>,
    #[serde(default)]
    pub policy: Policy,
    /// Budgets and rate limits on the group's total (all its members together).
    #[serde(default)]
    pub limits: Vec<Limit>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub virtual_keys: Vec<VirtualKey>,
    /// External OpenID Connect IdPs whose JWTs are accepted as bearer tokens.
    #[serde(default)]
    pub oidc: Vec<Oidc>,
    /// OAuth clients of the gateway's own authorization server.
    #[serde(default)]
    pub oauth_clients: Vec<OAuthClient>,
}

/// One trusted IdP: how its tokens are verified and what their holders may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// Names the IdP in logs, audit records and its users' meter ids.
    pub name: String,
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Default: `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Refuse tokens whose `amr` carries none of `mfa_amr`.
    #[serde(default)]
    pub require_mfa: bool,
    #[serde(default = "default_mfa_amr")]
    pub mfa_amr: Vec<String>,
    /// A scope the token's `scope` (or `scp`) must contain.
    pub required_scope: Option<String>,
    /// The claim that names the user.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// A claim listing the user's groups; those that name a `[groups.X]` apply.
    pub groups_claim: Option<String>,
    #[serde(default = "default_proxies")]
    pub proxies: Vec<String>,
    /// Providers whose keys this IdP's users may draw on.
    pub providers: Vec<String>,
    /// Routing policy for this IdP's users (the innermost layer).
    #[serde(default)]
    pub policy: Policy,
    /// Budgets and rate limits on each user separately.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Keys are refetched at most this long after the last fetch (sooner on an unknown `kid`).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// The gateway's own client at this IdP, for signing users in at the OAuth authorize
    /// endpoint (`oauth.login_idp`).
    pub login_client_id: Option<String>,
    pub login_client_secret: Option<String>,
    pub login_client_secret_env: Option<String>,
}

fn default_jwt_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"].map(String::from).to_vec()
}

fn default_leeway() -> u64 {
    60
}

fn default_mfa_amr() -> Vec<String> {
    vec!["mfa".to_string()]
}

fn default_user_claim() -> String {
    "sub".to_string()
}

fn default_jwks_refresh() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKey {
    pub name: String,
    pub key_sha256: String,
    #[serde(default = "default_proxies")]
    pub proxies: Vec<String>,
    /// Providers whose keys this virtual key may draw on.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Named provider keys it uses (one per provider), ahead of the providers' own keys.
    #[serde(default)]
    pub provider_keys: Vec<String>,
    /// Groups whose routing policy applies to this key.
    #[serde(default)]
    pub groups: Vec<String>,
    /// This key's own routing policy (the innermost layer).
    #[serde(default)]
    pub policy: Policy,
    /// This key's budgets and rate limits (default: `metering.key_limits`).
    #[serde(default)]
    pub limits: Option<Vec<Limit>>,
}

fn default_proxies() -> Vec<String> {
    vec![filters::endpoint::DEFAULT_PROXY.to_string()]
}

/// The toml crate appends "in `key`" on a second line; the key path already says where.
/// The message's first line, with any quoted string value removed: the value given for a key
/// may be a secret (`api_keys = "sk-..."` where a list belongs), and the key path says where.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim_end();
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i + "string".len()]);
        let after = &rest[i + "string \"".len()..];
        rest = after.find('"').map_or("", |j| &after[j + 1..]);
    }
    out.push_str(rest);
    out
}

const ENV_NAME_RULE: &str =
    "must name an environment variable (A-Z, 0-9, '_'), not hold the secret: set the value in that variable";

/// Whether the provider authenticates with an API key (not SigV4, not `auth = "none"`).
fn sends_api_key(p: &Provider) -> bool {
    match p.auth {
        Some(AuthStyle::None | AuthStyle::Sigv4) => false,
        Some(_) => true,
        None => p.kind != "bedrock" || p.api_key.is_some() || p.api_key_env.is_some(),
    }
}

/// An environment variable name (upper case, as keys are named): a value pasted where its name
/// belongs would otherwise be echoed in hints and logs.
fn valid_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_uppercase() || c == b'_')
        && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// Type errors of every section, map entry and array element, each with its full key path.
fn type_errors(doc: &toml::Table) -> Vec<ConfigError> {
    fn check<T: serde::de::DeserializeOwned>(path: &str, value: &toml::Value, out: &mut Vec<ConfigError>) {
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(value.clone()) {
            let inner = e.path().to_string();
            let full = match inner.as_str() {
                "." => path.to_string(),
                i if i.starts_with('[') => format!("{path}{i}"),
                i => format!("{path}.{i}"),
            };
            out.push(err(full, first_line(&e.into_inner().to_string())));
        }
    }
    fn each<T: serde::de::DeserializeOwned>(section: &str, value: &toml::Value, out: &mut Vec<ConfigError>) {
        match value.as_table() {
            Some(t) => t.iter().for_each(|(name, v)| check::<T>(&format!("{section}.{name}"), v, out)),
            None => check::<BTreeMap<String, T>>(section, value, out),
        }
    }
    let mut out = Vec::new();
    for (section, value) in doc {
        let out = &mut out;
        match section.as_str() {
            "server" => check::<Server>(section, value, out),
            "state" => check::<State>(section, value, out),
            "upstream" => check::<UpstreamDefaults>(section, value, out),
            "egress" => check::<Egress>(section, value, out),
            "routing" => check::<Routing>(section, value, out),
            "metering" => check::<Metering>(section, value, out),
            "audit" => check::<Audit>(section, value, out),
            "oauth" => check::<OAuth>(section, value, out),
            "admin" => check::<Admin>(section, value, out),
            "telemetry" => check::<Telemetry>(section, value, out),
            "secrets" => check::<Secrets>(section, value, out),
            "aliases" => check::<BTreeMap<String, String>>(section, value, out),
            "providers" => each::<Provider>(section, value, out),
            "proxies" => each::<Proxy>(section, value, out),
            "groups" => each::<Group>(section, value, out),
            "pricing" => each::<Price>(section, value, out),
            "provider_keys" => each::<ProviderKey>(section, value, out),
            "auth" => {
                let lists = ["virtual_keys", "oidc", "oauth_clients"];
                for (i, k) in
                    value.get("oauth_clients").and_then(toml::Value::as_array).into_iter().flatten().enumerate()
                {
                    check::<OAuthClient>(&format!("auth.oauth_clients[{i}]"), k, out);
                }
                for (i, k) in
                    value.get("virtual_keys").and_then(toml::Value::as_array).into_iter().flatten().enumerate()
                {
                    check::<VirtualKey>(&format!("auth.virtual_keys[{i}]"), k, out);
                }
                for (i, k) in value.get("oidc").and_then(toml::Value::as_array).into_iter().flatten().enumerate() {
                    check::<Oidc>(&format!("auth.oidc[{i}]"), k, out);
                }
                let rest: toml::Table = value
                    .as_table()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| !(lists.contains(&k.as_str()) && v.is_array()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                check::<Auth>(section, &toml::Value::Table(rest), out);
            }
            other => out.push(err(other, format!("unknown section `{other}`"))),
        }
    }
    out
}

/// One configuration error, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { path: path.into(), message: message.into() }
}

/// Where the configuration came from (for logs).
#[derive(Debug, Clone)]
pub enum Source {
    File(String),
    Embedded,
}

impl Config {
    /// Load a file (or, with `None`, `conf/portcullis.toml` if present, else the embedded
    /// default), apply environment overrides, then validate.
    pub fn load(path: Option<&Path>) -> Result<(Config, Source), Vec<ConfigError>> {
        let (text, source) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| vec![err("", format!("cannot read {}: {e}", p.display()))])?,
                Source::File(p.display().to_string()),
            ),
            None => match std::fs::read_to_string("conf/portcullis.toml") {
                Ok(t) => (t, Source::File("conf/portcullis.toml".into())),
                Err(_) => (EMBEDDED_DEFAULT.to_string(), Source::Embedded),
            },
        };
        let cfg = Self::parse(&text, std::env::vars())?;
        Ok((cfg, source))
    }

    /// Parse TOML text with the given environment, then validate.
    pub fn parse(text: &str, env: impl Iterator<Item = (String, String)>) -> Result<Config, Vec<ConfigError>> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let loc = e.span().map(|s| line_of(text, s.start)).map(|l| format!("line {l}")).unwrap_or_default();
            vec![err(loc, msg)]
        })?;
        let mut errors = Vec::new();
        for (name, value) in env {
            // Only `PORTCULLIS_<SECTION>__<KEY>` names are overrides; other PORTCULLIS_* variables
            // (e.g. a test harness's PORTCULLIS_BIN) belong to someone else.
            if let Some(rest) = name.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__")) {
                if let Err(e) = apply_override(&mut doc, rest, &value) {
                    errors.push(err(format!("env {name}"), e));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let cfg: Config = match serde_path_to_error::deserialize(toml::Value::Table(doc.clone())) {
            Ok(cfg) => cfg,
            Err(e) => {
                // serde stops at the first error; checking each section and entry on its own
                // finds the others, so one `check-config` run lists them all.
                let path = e.path().to_string();
                let first =
                    err(if path == "." { String::new() } else { path }, first_line(&e.into_inner().to_string()));
                let all = type_errors(&doc);
                return Err(if all.is_empty() { vec![first] } else { all });
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Hosts upstream connections may go to.
    pub fn allowed_hosts(&self) -> Vec<String> {
        self.egress.allow_hosts.clone().unwrap_or_else(presets::default_allowed_hosts)
    }

    /// Problems that do not stop start-up: providers whose hosts egress refuses.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let allowed = self.allowed_hosts();
        let mut out = Vec::new();
        for (name, p) in &self.providers {
            let urls = p.base_url.iter().map(|u| (format!("providers.{name}.base_url"), u)).chain(
                p.deployments
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("providers.{name}.deployments[{i}].base_url"), &d.base_url)),
            );
            for (path, u) in urls {
                if let Some(host) = url::Url::parse(u).ok().and_then(|u| u.host_str().map(str::to_string)) {
                    let host = host.trim_matches(['[', ']']).to_string();
                    if !host_allowed(&host, &allowed) {
                        out.push(err(
                            path,
                            format!("host `{host}` is not in egress.allow_hosts: requests to it are refused"),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Every check that spans keys; all errors, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let s = &self.server;
        for (key, value) in [("server.listen", &s.listen), ("server.admin_listen", &s.admin_listen)] {
            if value.parse::<SocketAddr>().is_err() {
                errors.push(err(key, format!("`{value}` is not an ip:port socket address")));
            }
        }
        if url::Url::parse(&s.public_url).is_err() {
            errors.push(err("server.public_url", "not a valid URL"));
        }
        if s.threads == 0 {
            errors.push(err("server.threads", "must be at least 1"));
        }
        if s.max_in_flight == 0 {
            errors.push(err("server.max_in_flight", "must be at least 1"));
        }
        if s.max_body_bytes < 1024 {
            errors.push(err("server.max_body_bytes", "must be at least 1024"));
        }
        match self.state.backend.as_str() {
            "memory" => {}
            "redis" => {
                if url::Url::parse(&self.state.redis_url).map(|u| u.scheme().starts_with("redis")).unwrap_or(false) {
                } else {
                    errors.push(err("state.redis_url", "must be a redis:// or rediss:// URL"));
                }
            }
            other => errors.push(err("state.backend", format!("`{other}`: expected \"memory\" or \"redis\""))),
        }
        if !matches!(self.state.on_redis_error.as_str(), "fail_closed" | "fail_open") {
            errors.push(err("state.on_redis_error", "expected \"fail_closed\" or \"fail_open\""));
        }
        if self.upstream.max_response_seconds == 0 {
            errors.push(err("upstream.max_response_seconds", "must be at least 1"));
        }
        if self.upstream.max_attempts == 0 {
            errors.push(err("upstream.max_attempts", "must be at least 1"));
        }
        let allowed = self.allowed_hosts();
        for (name, p) in &self.providers {
            self.validate_provider(name, p, &allowed, &mut errors);
        }
        for (alias, target) in &self.aliases {
            match target.split_once(':') {
                Some((p, m)) if self.providers.contains_key(p) && !m.is_empty() => {}
                _ => errors.push(err(
                    format!("aliases.{alias}"),
                    format!("`{target}` must be provider:model with a configured provider"),
                )),
            }
        }
        let tier_maps = std::iter::once(("routing.tiers".to_string(), &self.routing.tiers)).chain(
            self.proxies.iter().filter_map(|(id, p)| p.tiers.as_ref().map(|t| (format!("proxies.{id}.tiers"), t))),
        );
        for (at, map) in tier_maps {
            for tier in Tier::ALL {
                for (i, m) in map.models(tier).iter().enumerate() {
                    match m.split_once(':') {
                        Some((p, model)) if self.providers.contains_key(p) && !model.is_empty() => {}
                        _ => errors.push(err(
                            format!("{at}.{tier}[{i}]"),
                            format!("`{m}` must be provider:model with a configured provider"),
                        )),
                    }
                }
            }
        }
        for (i, k) in self.auth.virtual_keys.iter().enumerate() {
            for g in &k.groups {
                if !self.groups.contains_key(g) {
                    errors.push(err(format!("auth.virtual_keys[{i}].groups"), format!("unknown group `{g}`")));
                }
            }
        }
        for (id, proxy) in &self.proxies {
            if !valid_name(id) {
                errors.push(err(format!("proxies.{id}"), "proxy ids use a-z, 0-9, '-' and '_'"));
            }
            for (i, p) in proxy.providers.iter().flatten().enumerate() {
                if !self.providers.contains_key(p) {
                    errors.push(err(format!("proxies.{id}.providers[{i}]"), format!("unknown provider `{p}`")));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, k) in self.auth.virtual_keys.iter().enumerate() {
            let at = |f: &str| format!("auth.virtual_keys[{i}].{f}");
            match filters::auth::parse_sha256_hex(&k.key_sha256) {
                Some(d) if k.key_sha256.trim().len() == 64 => {
                    if !seen.insert(d) {
                        errors.push(err(at("key_sha256"), "duplicate key"));
                    }
                }
                _ => errors.push(err(
                    at("key_sha256"),
                    "must be the 64-hex-digit SHA-256 of the key (the key itself never goes in config)",
                )),
            }
            for (j, p) in k.providers.iter().enumerate() {
                if !self.providers.contains_key(p) {
                    errors
                        .push(err(format!("auth.virtual_keys[{i}].providers[{j}]"), format!("unknown provider `{p}`")));
                }
            }
            for (j, p) in k.proxies.iter().enumerate() {
                if p != filters::endpoint::DEFAULT_PROXY && !self.proxies.contains_key(p) {
                    errors.push(err(format!("auth.virtual_keys[{i}].proxies[{j}]"), format!("unknown proxy `{p}`")));
                }
            }
        }
        self.validate_oidc(&allowed, &mut errors);
        self.validate_oauth(&mut errors);
        self.validate_provider_keys(&mut errors);
        if !valid_env_name(&self.secrets.key_env) {
            errors.push(err("secrets.key_env", ENV_NAME_RULE));
        }
        for (i, o) in self.auth.oidc.iter().enumerate() {
            if o.login_client_secret_env.as_deref().is_some_and(|e| !valid_env_name(e)) {
                errors.push(err(format!("auth.oidc[{i}].login_client_secret_env"), ENV_NAME_RULE));
            }
        }
        if let Some(u) = &self.telemetry.otlp_endpoint {
            match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
                    if !host_allowed(&host, &allowed) {
                        errors.push(err(
                            "telemetry.otlp_endpoint",
                            format!("host `{host}` is not in egress.allow_hosts"),
                        ));
                    }
                }
                _ => errors.push(err("telemetry.otlp_endpoint", format!("`{u}` is not an http(s) URL"))),
            }
        }
        self.validate_metering(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// IdP entries: URLs egress allows, algorithms this gateway verifies, known grants.
    fn validate_oidc(&self, allowed: &[String], errors: &mut Vec<ConfigError>) {
        let mut names = std::collections::HashSet::new();
        let mut issuers = std::collections::HashSet::new();
        for (i, o) in self.auth.oidc.iter().enumerate() {
            let at = |f: &str| format!("auth.oidc[{i}].{f}");
            if !valid_name(&o.name) {
                errors.push(err(at("name"), "IdP names use a-z, 0-9, '-' and '_'"));
            } else if !names.insert(o.name.as_str()) {
                errors.push(err(at("name"), format!("`{}` names another IdP", o.name)));
            }
            if !issuers.insert(o.issuer.as_str()) {
                errors.push(err(at("issuer"), "another IdP entry has this issuer"));
            }
            let urls = std::iter::once(("issuer", &o.issuer)).chain(o.jwks_url.iter().map(|u| ("jwks_url", u)));
            for (field, u) in urls {
                if let Err(m) = idp_url(u, allowed) {
                    errors.push(err(at(field), m));
                }
            }
            if o.audiences.is_empty() || o.audiences.iter().any(|a| a.is_empty()) {
                errors.push(err(at("audiences"), "list at least one audience; tokens for other audiences are refused"));
            }
            if o.algorithms.is_empty() {
                errors.push(err(at("algorithms"), "list at least one algorithm"));
            }
            for (j, a) in o.algorithms.iter().enumerate() {
                if filters::jwt::Alg::parse(a).is_none() {
                    let known: Vec<&str> = filters::jwt::Alg::ALL.iter().map(|a| a.as_str()).collect();
                    errors.push(err(
                        format!("auth.oidc[{i}].algorithms[{j}]"),
                        format!("`{a}` is not verified here; use one of {}", known.join(", ")),
                    ));
                }
            }
            if o.user_claim.is_empty() {
                errors.push(err(at("user_claim"), "must name a claim"));
            }
            if o.jwks_refresh_seconds < 10 {
                errors.push(err(at("jwks_refresh_seconds"), "must be at least 10"));
            }
            for (j, p) in o.providers.iter().enumerate() {
                if !self.providers.contains_key(p) {
                    errors.push(err(format!("auth.oidc[{i}].providers[{j}]"), format!("unknown provider `{p}`")));
                }
            }
            for (j, p) in o.proxies.iter().enumerate() {
                if p != filters::endpoint::DEFAULT_PROXY && !self.proxies.contains_key(p) {
                    errors.push(err(format!("auth.oidc[{i}].proxies[{j}]"), format!("unknown proxy `{p}`")));
                }
            }
            if let Err(m) = filters::meter::validate_limits(&o.limits) {
                errors.push(err(at("limits"), m));
            }
        }
    }

    /// The authorization server and its static clients.
    /// Named provider keys, and the mappings of keys and clients onto them.
    fn validate_provider_keys(&self, errors: &mut Vec<ConfigError>) {
        for (name, k) in &self.provider_keys {
            for (field, m) in
                self.provider_key_problems(name, &k.provider, &k.users, &k.groups, k.description.as_deref())
            {
                let at = if field.is_empty() {
                    format!("provider_keys.{name}")
                } else {
                    format!("provider_keys.{name}.{field}")
                };
                errors.push(err(at, m));
            }
            for e in k.api_key_env.iter().chain(&k.api_keys_env) {
                if !valid_env_name(e) {
                    errors.push(err(format!("provider_keys.{name}.api_key_env"), ENV_NAME_RULE));
                }
            }
            if k.api_key.is_none() && k.api_key_env.is_none() && k.api_keys.is_empty() && k.api_keys_env.is_empty() {
                errors
                    .push(err(format!("provider_keys.{name}"), "set api_key_env (or api_key, api_keys, api_keys_env)"));
            }
        }
        let known = self.configured_provider_keys();
        let mappings = self
            .auth
            .virtual_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("auth.virtual_keys[{i}].provider_keys"), &k.provider_keys))
            .chain(
                self.auth
                    .oauth_clients
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("auth.oauth_clients[{i}].provider_keys"), &c.provider_keys)),
            );
        for (at, names) in mappings {
            if let Err(m) = check_provider_key_mapping(names, &known) {
                errors.push(err(at, m));
            }
        }
    }

    /// What is wrong with a named provider key's name, provider, users or groups, by field
    /// (`""`: the name).
    pub fn provider_key_problems(
        &self,
        name: &str,
        provider: &str,
        users: &[String],
        groups: &[String],
        description: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !valid_name(name) || name.len() > 64 {
            out.push(("", "names are 1 to 64 of a-z, 0-9, '-' and '_'".to_string()));
        }
        if crate::key_vault::is_personal(name) {
            out.push((
                "",
                format!(
                    "names starting with `{}` are users' own keys (PUT /v1/provider-keys/PROVIDER)",
                    crate::key_vault::PERSONAL_PREFIX
                ),
            ));
        }
        match self.providers.get(provider) {
            None => out.push(("provider", format!("unknown provider `{provider}`"))),
            Some(p) if p.kind == "mock" => out.push(("provider", "the mock provider takes no key".to_string())),
            Some(p) if !sends_api_key(p) => out.push((
                "provider",
                format!("provider `{provider}` sends no API key (it signs with SigV4 or uses no auth)"),
            )),
            Some(_) => {}
        }
        for (field, list) in [("users", users), ("groups", groups)] {
            if list.len() > 256 || list.iter().any(|v| v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
            {
                out.push((field, "at most 256 entries of 1 to 200 characters without control characters".to_string()));
            }
        }
        if description.is_some_and(|d| d.chars().count() > 500 || d.chars().any(char::is_control)) {
            out.push(("description", "at most 500 characters without control characters".to_string()));
        }
        for g in groups {
            if !self.groups.contains_key(g) {
                out.push(("groups", format!("unknown group `{g}`")));
            }
        }
        for u in users {
            match u.split_once(':') {
                Some((idp, user)) if !user.is_empty() && self.auth.oidc.iter().any(|o| o.name == idp) => {}
                _ => out.push(("users", format!("`{u}` must be `idp-name:user` with a configured [[auth.oidc]] name"))),
            }
        }
        out
    }

    /// The file's named provider keys as (name, provider).
    pub fn configured_provider_keys(&self) -> Vec<(String, String)> {
        self.provider_keys.iter().map(|(n, k)| (n.clone(), k.provider.clone())).collect()
    }

    /// Providers, named provider keys (among `known`: name, provider), proxies and groups a new
    /// key or client names must be configured.
    pub fn check_grants(
        &self,
        providers: &[String],
        provider_keys: &[String],
        known: &[(String, String)],
        proxies: &[String],
        groups: &[String],
    ) -> Result<(), String> {
        if let Some(p) = providers.iter().find(|p| !self.providers.contains_key(*p)) {
            return Err(format!("unknown provider `{p}`"));
        }
        check_provider_key_mapping(provider_keys, known)?;
        if let Some(p) =
            proxies.iter().find(|p| *p != filters::endpoint::DEFAULT_PROXY && !self.proxies.contains_key(*p))
        {
            return Err(format!("unknown proxy `{p}`"));
        }
        if let Some(g) = groups.iter().find(|g| !self.groups.contains_key(*g)) {
            return Err(format!("unknown group `{g}`"));
        }
        Ok(())
    }

    fn validate_oauth(&self, errors: &mut Vec<ConfigError>) {
        let o = &self.oauth;
        for (key, v, min) in [
            ("oauth.access_token_seconds", o.access_token_seconds, 60),
            ("oauth.refresh_token_seconds", o.refresh_token_seconds, 60),
            ("oauth.code_seconds", o.code_seconds, 10),
        ] {
            if v < min {
                errors.push(err(key, format!("must be at least {min}")));
            }
        }
        if o.code_seconds > 600 {
            errors.push(err("oauth.code_seconds", "at most 600: codes are short-lived by design"));
        }
        if !matches!(o.registration.as_str(), "open" | "disabled") {
            errors.push(err("oauth.registration", "expected \"open\" or \"disabled\""));
        }
        if let Some(name) = &o.login_idp {
            match self.auth.oidc.iter().position(|i| &i.name == name) {
                None => errors.push(err("oauth.login_idp", format!("no [[auth.oidc]] entry is named `{name}`"))),
                Some(i) => {
                    let idp = &self.auth.oidc[i];
                    if idp.login_client_id.is_none() {
                        errors.push(err(format!("auth.oidc[{i}].login_client_id"), "required by oauth.login_idp"));
                    }
                    if idp.login_client_secret.is_some() && idp.login_client_secret_env.is_some() {
                        errors.push(err(
                            format!("auth.oidc[{i}].login_client_secret"),
                            "set either `login_client_secret` or `login_client_secret_env`, not both",
                        ));
                    }
                }
            }
        }
        for (i, h) in self.admin.tokens_sha256.iter().enumerate() {
            if h.trim().len() != 64 || filters::auth::parse_sha256_hex(h).is_none() {
                errors.push(err(format!("admin.tokens_sha256[{i}]"), "must be the 64-hex-digit SHA-256 of the token"));
            }
        }
        for g in &self.admin.groups {
            if !self.groups.contains_key(g) {
                errors.push(err("admin.groups", format!("unknown group `{g}`")));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, c) in self.auth.oauth_clients.iter().enumerate() {
            let at = |f: &str| format!("auth.oauth_clients[{i}].{f}");
            if c.client_id.is_empty() || c.client_id.len() > 128 || !c.client_id.bytes().all(|b| b.is_ascii_graphic()) {
                errors.push(err(at("client_id"), "1 to 128 visible ASCII characters"));
            } else if !ids.insert(c.client_id.as_str()) {
                errors.push(err(at("client_id"), "another client has this id"));
            }
            if let Some(h) = &c.client_secret_sha256 {
                if h.trim().len() != 64 || filters::auth::parse_sha256_hex(h).is_none() {
                    errors.push(err(at("client_secret_sha256"), "must be the 64-hex-digit SHA-256 of the secret"));
                }
            } else if c.redirect_uris.is_empty() {
                errors.push(err(at("redirect_uris"), "a public client (no secret) needs redirect_uris"));
            }
            for (j, u) in c.redirect_uris.iter().enumerate() {
                if let Err(m) = filters::oauth::valid_redirect_uri(u) {
                    errors.push(err(format!("auth.oauth_clients[{i}].redirect_uris[{j}]"), m));
                }
            }
            for (j, p) in c.providers.iter().enumerate() {
                if !self.providers.contains_key(p) {
                    errors.push(err(
                        format!("auth.oauth_clients[{i}].providers[{j}]"),
                        format!("unknown provider `{p}`"),
                    ));
                }
            }
            for (j, p) in c.proxies.iter().enumerate() {
                if p != filters::endpoint::DEFAULT_PROXY && !self.proxies.contains_key(p) {
                    errors.push(err(format!("auth.oauth_clients[{i}].proxies[{j}]"), format!("unknown proxy `{p}`")));
                }
            }
            for g in &c.groups {
                if !self.groups.contains_key(g) {
                    errors.push(err(at("groups"), format!("unknown group `{g}`")));
                }
            }
            if let Some(l) = &c.limits {
                if let Err(m) = filters::meter::validate_limits(l) {
                    errors.push(err(at("limits"), m));
                }
            }
        }
    }

    /// Limits, prices and key names (a key's counters are keyed by its name).
    fn validate_metering(&self, errors: &mut Vec<ConfigError>) {
        let mut check = |at: String, limits: &[filters::meter::Limit]| {
            if let Err(m) = filters::meter::validate_limits(limits) {
                errors.push(err(at, m));
            }
        };
        check("metering.key_limits".into(), &self.metering.key_limits);
        for (i, k) in self.auth.virtual_keys.iter().enumerate() {
            if let Some(l) = &k.limits {
                check(format!("auth.virtual_keys[{i}].limits"), l);
            }
        }
        for (name, g) in &self.groups {
            check(format!("groups.{name}.limits"), &g.limits);
        }
        for (id, p) in &self.proxies {
            check(format!("proxies.{id}.limits"), &p.limits);
        }
        let mut names = std::collections::HashSet::new();
        for (i, k) in self.auth.virtual_keys.iter().enumerate() {
            if !names.insert(k.name.as_str()) {
                errors.push(err(
                    format!("auth.virtual_keys[{i}].name"),
                    format!("`{}` is used by another key; names key the budgets and usage", k.name),
                ));
            }
        }
        if let Err((id, m)) = filters::meter::PriceTable::new(&self.pricing) {
            errors.push(err(format!("pricing.\"{id}\""), m));
        } else {
            for id in self.pricing.keys() {
                if id.split_once(':').is_some_and(|(p, _)| !self.providers.contains_key(p)) {
                    errors.push(err(format!("pricing.\"{id}\""), "not a configured provider"));
                }
            }
        }
    }

    fn validate_provider(&self, name: &str, p: &Provider, allowed: &[String], errors: &mut Vec<ConfigError>) {
        let envs = p.api_key_env.iter().chain(&p.api_keys_env).chain(&p.aws_access_key_id_env);
        let envs = envs.chain(&p.aws_secret_access_key_env).chain(&p.aws_session_token_env);
        let deployment_envs = p.deployments.iter().flat_map(|d| d.api_key_env.iter().chain(&d.api_keys_env));
        if envs.chain(deployment_envs).any(|e| !valid_env_name(e)) {
            errors.push(err(format!("providers.{name}"), format!("an `*_env` key: {ENV_NAME_RULE}")));
        }
        for (i, rule) in p.passthrough_paths.iter().enumerate() {
            if rule.trim() != "*" {
                if let Err(m) = filters::passthrough::Rule::parse(rule) {
                    errors.push(err(format!("providers.{name}.passthrough_paths[{i}]"), m));
                }
            }
        }
        let at = |f: &str| format!("providers.{name}.{f}");
        if p.personal_keys && (p.kind == "mock" || !sends_api_key(p)) {
            errors.push(err(
                at("personal_keys"),
                "needs a provider that sends an API key (not mock, not SigV4 or no auth)",
            ));
        }
        if !valid_name(name) || filters::endpoint::RESERVED_PROVIDER_NAMES.contains(&name) {
            errors.push(err(
                format!("providers.{name}"),
                "provider names use a-z, 0-9, '-' and '_' and must not be a gateway route name",
            ));
        }
        match p.kind.as_str() {
            "openai" | "azure" | "mock" => {}
            "openai_compatible" => {
                let preset = p.preset.as_deref().or(presets::preset(name).map(|p| p.name));
                match preset {
                    Some(ps) if presets::preset(ps).is_some() => {}
                    Some(ps) => errors.push(err(at("preset"), format!("unknown preset `{ps}`; known: {}", presets::PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")))),
                    None if p.base_url.is_none() && p.deployments.is_empty() => {
                        errors.push(err(at("base_url"), "openai_compatible needs `base_url` or a `preset`"))
                    }
                    None => {}
                }
            }
            "anthropic" | "gemini" | "bedrock" | "cohere" => {}
            other => errors.push(err(at("kind"), format!("unknown kind `{other}`; expected openai | anthropic | gemini | bedrock | cohere | azure | openai_compatible | mock"))),
        }
        if p.kind == "azure" && p.base_url.is_none() && p.deployments.is_empty() {
            errors.push(err(at("base_url"), "azure needs the resource URL, e.g. https://NAME.openai.azure.com"));
        }
        let aws_keys = [&p.region, &p.aws_access_key_id_env, &p.aws_secret_access_key_env, &p.aws_session_token_env];
        if p.kind != "bedrock" && aws_keys.iter().any(|k| k.is_some()) {
            errors.push(err(at("region"), "region and aws_* keys apply to `bedrock` providers only"));
        }
        if p.aws_access_key_id.is_some() != p.aws_secret_access_key.is_some() {
            errors.push(err(at("aws_secret_access_key"), "aws_access_key_id and aws_secret_access_key go together"));
        }
        if p.preset.is_some() && p.kind != "openai_compatible" {
            errors.push(err(at("preset"), "only `openai_compatible` providers take a preset"));
        }
        if p.kind == "mock" {
            return;
        }
        let mut urls: Vec<(String, &str)> = Vec::new();
        if let Some(u) = &p.base_url {
            urls.push((at("base_url"), u));
        }
        for (i, d) in p.deployments.iter().enumerate() {
            urls.push((format!("providers.{name}.deployments[{i}].base_url"), &d.base_url));
        }
        for (path, u) in urls {
            match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                    // Hosts outside egress.allow_hosts are refused per request (403
                    // egress_denied) and reported by `warnings()`, not a start-up error, so a
                    // live config change can never open egress by accident either way.
                    let _ = allowed;
                }
                _ => errors.push(err(path, format!("`{u}` is not an http(s) URL"))),
            }
        }
        if p.api_key.is_some() && p.api_key_env.is_some() {
            errors.push(err(at("api_key"), "set either `api_key` or `api_key_env`, not both"));
        }
    }
}

/// An IdP URL: https (plain http only to a loopback host, for a local IdP), on a host egress
/// allows, since the gateway fetches its keys.
pub fn idp_url(u: &str, allowed: &[String]) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|_| format!("`{u}` is not a URL"))?;
    let host = url.host_str().ok_or_else(|| format!("`{u}` has no host"))?.trim_matches(['[', ']']).to_string();
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("`{u}` must be https (http only for a loopback IdP)")),
    }
    if !host_allowed(&host, allowed) {
        return Err(format!("host `{host}` is not in egress.allow_hosts; the gateway fetches the IdP's keys from it"));
    }
    Ok(())
}

/// Whether `host` is allowed: exact match, or a `*.example.com` wildcard for subdomains.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        if let Some(suffix) = a.strip_prefix("*.") {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        } else {
            a.eq_ignore_ascii_case(host)
        }
    })
}

/// A credential's named provider keys: each among `known` (name, provider), at most one per
/// provider.
pub fn check_provider_key_mapping(names: &[String], known: &[(String, String)]) -> Result<(), String> {
    let mut providers = std::collections::HashSet::new();
    for n in names {
        let Some((_, provider)) = known.iter().find(|(k, _)| k == n) else {
            return Err(format!("unknown provider key `{n}`"));
        };
        if !providers.insert(provider.as_str()) {
            return Err(format!("two keys for provider `{provider}`: map one key per provider"));
        }
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Apply `SECTION__KEY[__KEY...]=value`. The value is read as a TOML value when it parses as one
/// (numbers, booleans, arrays), else as a string; it stays a string where the file already has
/// one and for secrets and URLs, so an all-digit key is not turned into a number (whose type
/// error would print it).
fn apply_override(doc: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty path segment".into());
    }
    let (last, parents) = segments.split_last().ok_or("empty path")?;
    let mut table = doc;
    for seg in parents {
        let entry = table.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("`{seg}` is not a table"))?;
    }
    let stringly = matches!(table.get(last.as_str()), Some(toml::Value::String(_)))
        || ["key", "secret", "token", "password", "url", "sha256"].iter().any(|s| last.ends_with(s));
    let value = if stringly {
        toml::Value::String(raw.to_string())
    } else {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()))
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn embedded_default_is_valid() {
        parse(EMBEDDED_DEFAULT, &[]).unwrap();
    }

    #[test]
    fn all_digit_secrets_from_the_environment_stay_strings() {
        let text = "[providers.openai]\nkind = \"openai\"\napi_key = \"sk-file\"\n";
        let cfg = parse(text, &[("PORTCULLIS_PROVIDERS__OPENAI__API_KEY", "98765432101234")]).unwrap();
        assert_eq!(cfg.providers["openai"].api_key.as_deref(), Some("98765432101234"));
        // Not in the file either: the key's name says it is a secret.
        let text = "[providers.openai]\nkind = \"openai\"\n";
        let cfg = parse(text, &[("PORTCULLIS_PROVIDERS__OPENAI__API_KEY", "123")]).unwrap();
        assert_eq!(cfg.providers["openai"].api_key.as_deref(), Some("123"));
        // Numbers elsewhere are still numbers.
        let cfg = parse(text, &[("PORTCULLIS_SERVER__THREADS", "3")]).unwrap();
        assert_eq!(cfg.server.threads, 3);
    }

    #[test]
    fn every_type_error_is_reported_not_just_the_first() {
        let key = "0".repeat(64);
        let text = format!(
            "[server]\nthreads = \"two\"\n[upstream]\nmax_attempts = -1\n[providers.a]\nkind = \"openai\"\n\
             base_ur = \"x\"\n[providers.b]\nkind = 3\n[[auth.virtual_keys]]\nname = \"k\"\nkey_sha256 = \"{key}\"\n\
             providers = \"mock\"\n[metering]\ndefault_output_tokens = \"many\"\n[bogus]\nx = 1\n"
        );
        let e = parse(&text, &[]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "server.threads",
            "upstream.max_attempts",
            "providers.a.base_ur",
            "providers.b.kind",
            "auth.virtual_keys[0].providers",
            "metering.default_output_tokens",
            "bogus",
        ] {
            assert!(paths.contains(&p), "missing {p} in {e:?}");
        }
        assert_eq!(paths.len(), 7, "each error once: {e:?}");
    }

    #[test]
    fn oidc_entries_are_checked() {
        let text = r#"
[egress]
allow_hosts = ["login.example.com", "127.0.0.1"]
[providers.mock]
kind = "mock"
[[auth.oidc]]
name = "corp"
issuer = "https://login.example.com"
audiences = ["portcullis"]
providers = ["mock"]
[[auth.oidc]]
name = "corp"
issuer = "http://idp.internal.example.com"
jwks_url = "https://keys.example.net/jwks"
audiences = []
algorithms = ["HS256", "RS256"]
providers = ["nope"]
proxies = ["ghost"]
[[auth.oidc]]
name = "local"
issuer = "http://127.0.0.1:9000"
audiences = ["a"]
providers = []
"#;
        let e = parse(text, &[]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "auth.oidc[1].name",
            "auth.oidc[1].issuer",
            "auth.oidc[1].jwks_url",
            "auth.oidc[1].audiences",
            "auth.oidc[1].algorithms[0]",
            "auth.oidc[1].providers[0]",
            "auth.oidc[1].proxies[0]",
        ] {
            assert!(paths.contains(&p), "missing {p} in {e:?}");
        }
        assert!(!paths.iter().any(|p| p.starts_with("auth.oidc[0]")), "{e:?}");
        let issuer = e.iter().find(|e| e.path == "auth.oidc[1].issuer").unwrap();
        assert!(issuer.message.contains("https"), "{issuer:?}");
        let jwks = e.iter().find(|e| e.path == "auth.oidc[1].jwks_url").unwrap();
        assert!(jwks.message.contains("egress.allow_hosts"), "{jwks:?}");
        // The valid entries alone load, with their defaults.
        let ok = text.split("[[auth.oidc]]").take(2).collect::<Vec<_>>().join("[[auth.oidc]]");
        let c = parse(&ok, &[]).unwrap();
        let o = &c.auth.oidc[0];
        assert_eq!(
            (o.leeway_seconds, o.user_claim.as_str(), o.mfa_amr.as_slice()),
            (60, "sub", &["mfa".to_string()][..])
        );
        assert_eq!(o.proxies, ["default"]);
        let typo = format!("{ok}aud = \"x\"\n");
        assert_eq!(parse(&typo, &[]).unwrap_err()[0].path, "auth.oidc[0].aud");
    }

    #[test]
    fn oauth_settings_are_checked() {
        let text = r#"
[providers.mock]
kind = "mock"
[oauth]
registration = "sometimes"
login_idp = "nobody"
code_seconds = 3600
[[auth.oauth_clients]]
name = "a"
client_id = "dup"
client_secret_sha256 = "abc"
providers = ["nope"]
[[auth.oauth_clients]]
name = "b"
client_id = "dup"
redirect_uris = ["http://evil.example.com/cb"]
"#;
        let e = parse(text, &[]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "oauth.registration",
            "oauth.login_idp",
            "oauth.code_seconds",
            "auth.oauth_clients[0].client_secret_sha256",
            "auth.oauth_clients[0].providers[0]",
            "auth.oauth_clients[1].client_id",
            "auth.oauth_clients[1].redirect_uris[0]",
        ] {
            assert!(paths.contains(&p), "missing {p} in {e:?}");
        }
        let c = parse("", &[]).unwrap();
        assert_eq!((c.oauth.access_token_seconds, c.oauth.registration.as_str()), (3600, "open"));
    }

    #[test]
    fn unknown_key_has_path() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n", &[]).unwrap_err();
        assert_eq!(e[0].path, "server.listne");
        assert!(e[0].message.contains("listne"), "{e:?}");
        let e = parse("[providers.x]\nkind = \"openai\"\nbase_ur = \"x\"\n", &[]).unwrap_err();
        assert_eq!(e[0].path, "providers.x.base_ur");
    }

    #[test]
    fn env_overrides() {
        let c =
            parse("", &[("PORTCULLIS_SERVER__LISTEN", "127.0.0.1:9999"), ("PORTCULLIS_SERVER__THREADS", "4")]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9999");
        assert_eq!(c.server.threads, 4);
        parse("", &[("PORTCULLIS_BIN", "/x")]).unwrap();
        let e = parse("", &[("PORTCULLIS_SERVER__THREADS", "\"x\"")]).unwrap_err();
        assert_eq!(e[0].path, "server.threads");
    }

    #[test]
    fn collects_all_errors_with_paths() {
        let text = r#"
[server]
listen = "nope"
[state]
backend = "etcd"
[providers.openai]
kind = "openai"
base_url = "https://evil.example.com/v1"
[providers.bad]
kind = "weird"
[[auth.virtual_keys]]
name = "k"
key_sha256 = "abc"
providers = ["nope"]
"#;
        let e = parse(text, &[]).unwrap_err();
        let cfg: Config = toml::from_str(text).unwrap();
        assert_eq!(cfg.warnings()[0].path, "providers.openai.base_url");
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "server.listen",
            "state.backend",
            "providers.bad.kind",
            "auth.virtual_keys[0].key_sha256",
            "auth.virtual_keys[0].providers[0]",
        ] {
            assert!(paths.contains(&p), "missing {p} in {paths:?}");
        }
    }

    #[test]
    fn metering_errors_have_paths() {
        let key = "0".repeat(64);
        let other = "1".repeat(64);
        let text = format!(
            r#"
[providers.mock]
kind = "mock"
passthrough_paths = ["POST /files", "files"]
[pricing]
"mock:*" = {{ input = 1.0, output = 2.0 }}
"gpt-4o" = {{ input = 1.0, output = 2.0 }}
[groups.eng]
limits = [{{ window = "day" }}]
[proxies.default]
limits = [{{ window = "minute", requests = 1 }}, {{ window = "minute", tokens = 5 }}]
[[auth.virtual_keys]]
name = "k"
key_sha256 = "{key}"
providers = ["mock"]
limits = [{{ window = "hour", cost_usd = -1 }}]
[[auth.virtual_keys]]
name = "k"
key_sha256 = "{other}"
providers = ["mock"]
"#
        );
        let e = parse(&text, &[]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "pricing.\"gpt-4o\"",
            "groups.eng.limits",
            "proxies.default.limits",
            "auth.virtual_keys[0].limits",
            "auth.virtual_keys[1].name",
            "providers.mock.passthrough_paths[1]",
        ] {
            assert!(paths.contains(&p), "missing {p} in {paths:?}");
        }
        // An unknown window or cap is a type error with its path.
        let e = parse("[metering]\nkey_limits = [{ window = \"week\", requests = 1 }]\n", &[]).unwrap_err();
        assert!(e[0].path.starts_with("metering.key_limits"), "{e:?}");
    }

    #[test]
    fn wildcard_hosts() {
        let a = vec!["*.openai.azure.com".to_string(), "127.0.0.1".to_string()];
        assert!(host_allowed("me.openai.azure.com", &a));
        assert!(!host_allowed("openai.azure.com", &a));
        assert!(!host_allowed("evilopenai.azure.com", &a));
        assert!(host_allowed("127.0.0.1", &a));
    }

    #[test]
    fn provider_keys_and_their_mappings_are_checked() {
        let key = "0".repeat(64);
        let text = format!(
            r#"
[providers.openai]
kind = "openai"
[providers.mock]
kind = "mock"
personal_keys = true
[groups.team]
[[auth.oidc]]
name = "corp"
issuer = "https://idp.example.com"
audiences = ["x"]
providers = []
[provider_keys.ok]
provider = "openai"
api_key_env = "K"
groups = ["team"]
users = ["corp:alice"]
[provider_keys.twin]
provider = "openai"
api_key = "k"
[provider_keys.Bad]
provider = "nowhere"
[provider_keys.fake]
provider = "mock"
api_key = "k"
groups = ["nobody"]
users = ["alice", "other:bob"]
[provider_keys.personal-0a]
provider = "openai"
api_key = "k"
[[auth.virtual_keys]]
name = "k"
key_sha256 = "{key}"
provider_keys = ["ok", "twin"]
[[auth.oauth_clients]]
name = "c"
client_id = "c"
client_secret_sha256 = "{key}"
provider_keys = ["missing"]
"#
        );
        let e = parse(&text, &[]).unwrap_err();
        let found = |path: &str, needle: &str| e.iter().any(|e| e.path == path && e.message.contains(needle));
        assert!(found("provider_keys.Bad", "names are 1 to 64"), "{e:?}");
        assert!(found("provider_keys.Bad.provider", "unknown provider `nowhere`"), "{e:?}");
        assert!(found("provider_keys.Bad", "set api_key_env"), "{e:?}");
        assert!(found("provider_keys.fake.provider", "mock provider takes no key"), "{e:?}");
        assert!(found("provider_keys.fake.groups", "unknown group `nobody`"), "{e:?}");
        assert!(found("provider_keys.fake.users", "`alice` must be `idp-name:user`"), "{e:?}");
        assert!(found("provider_keys.fake.users", "`other:bob`"), "{e:?}");
        assert!(found("auth.virtual_keys[0].provider_keys", "two keys for provider `openai`"), "{e:?}");
        assert!(found("auth.oauth_clients[0].provider_keys", "unknown provider key `missing`"), "{e:?}");
        assert!(!e.iter().any(|e| e.path.starts_with("provider_keys.ok")), "{e:?}");
        assert!(found("providers.mock.personal_keys", "needs a provider that sends an API key"), "{e:?}");
        assert!(found("provider_keys.personal-0a", "users' own keys"), "{e:?}");
    }

    #[test]
    fn type_errors_and_pasted_secrets_never_echo_a_value() {
        let text = "[providers.openai]\nkind = \"openai\"\napi_keys = \"sk-SECRET-LEAK-1234\"\n";
        let e = parse(text, &[]).unwrap_err();
        assert!(e.iter().any(|e| e.path == "providers.openai.api_keys"), "{e:?}");
        assert!(!format!("{e:?}").contains("sk-SECRET"), "{e:?}");
        let text = "[providers.openai]\nkind = \"openai\"\napi_key_env = \"sk-proj-abc123\"\n[secrets]\nkey_env = \"5e5e5e5e\"\n";
        let e = parse(text, &[]).unwrap_err();
        assert!(e.iter().any(|e| e.path == "providers.openai" && e.message.contains("environment variable")), "{e:?}");
        assert!(e.iter().any(|e| e.path == "secrets.key_env"), "{e:?}");
        assert!(
            valid_env_name("OPENAI_API_KEY")
                && !valid_env_name("sk-x")
                && !valid_env_name("ab12")
                && !valid_env_name("")
        );
    }
}
