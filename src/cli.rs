//! Command-line interface.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "LLM security gateway and model router on Cloudflare Pingora")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (default conf/portcullis.toml, else the embedded default).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Run in the background (Pingora daemon mode).
        #[arg(long, short = 'd')]
        daemon: bool,
        /// Take over the listeners of a running instance (graceful upgrade).
        #[arg(long, short = 'u')]
        upgrade: bool,
        /// Test the configuration and exit.
        #[arg(long, short = 't')]
        test: bool,
    },
    /// Validate a config file and print every error with its key path.
    CheckConfig {
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Classify prompts offline with the gateway's `auto` router: reads JSON lines
    /// `{"id","prompt"}` or `{"id","messages"}` on stdin, writes `{"id","tier","score"}` lines.
    Classify {
        /// Use this config's `routing.model_file` (default: conf/portcullis.toml, else embedded).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// A router model file; overrides the config.
        #[arg(long)]
        model_file: Option<PathBuf>,
    },
    /// Manage virtual keys stored in the state store (secrets shown once, stored hashed).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[arg(long, short = 'c', global = true)]
        config: Option<PathBuf>,
    },
    /// Manage OAuth clients stored in the state store (secrets shown once, stored hashed).
    Clients {
        #[command(subcommand)]
        action: ClientsAction,
        #[arg(long, short = 'c', global = true)]
        config: Option<PathBuf>,
    },
    /// Manage provider keys stored sealed in the state store (the key is read from stdin,
    /// never shown again).
    ProviderKeys {
        #[command(subcommand)]
        action: ProviderKeysAction,
        #[arg(long, short = 'c', global = true)]
        config: Option<PathBuf>,
    },
    /// The hash-chained audit trail (`audit.path`).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        #[arg(long, short = 'c', global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientsAction {
    /// Create a client and print its id and (confidential clients) its secret once.
    Create {
        #[arg(long)]
        name: String,
        /// Providers whose upstream keys its client-credentials tokens may draw on.
        #[arg(long, value_delimiter = ',', default_value = "")]
        providers: Vec<String>,
        /// Named provider keys (`[provider_keys.NAME]`) its client-credentials tokens use, one per
        /// provider (comma-separated).
        #[arg(long = "provider-keys", value_delimiter = ',')]
        provider_keys: Vec<String>,
        /// Proxies its client-credentials tokens may use (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "default")]
        proxies: Vec<String>,
        /// Groups whose routing policy and limits apply (comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Redirect URIs for the authorization-code flow (repeatable).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// A public client: no secret, authorization code with PKCE only.
        #[arg(long)]
        public: bool,
        /// A budget or rate limit, `WINDOW:CAP=N` as for `keys create`.
        #[arg(long = "limit", value_name = "WINDOW:CAP=N")]
        limits: Vec<String>,
    },
    /// List stored clients (never the secrets).
    List,
    /// Revoke clients by name or client id; their tokens stop working.
    Revoke { name_or_id: String },
}

#[derive(Subcommand, Debug)]
pub enum ProviderKeysAction {
    /// Store (or rotate) a named provider key; the API key is the first line of stdin.
    Set {
        #[arg(long)]
        name: String,
        /// The provider table it authenticates to.
        #[arg(long)]
        provider: String,
        /// IdP users (`idp-name:user`) whose own key it is (comma-separated).
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        /// Groups whose IdP users may draw on it (comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List stored provider keys (never the keys: their last four characters).
    List,
    /// Delete a stored provider key.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Walk the whole chain; exit 0 when intact, 1 with the first broken line.
    Verify,
}

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Create a key and print it once.
    Create {
        #[arg(long)]
        name: String,
        /// Providers whose own upstream keys it may draw on (comma-separated).
        #[arg(long, value_delimiter = ',', required_unless_present = "provider_keys")]
        providers: Vec<String>,
        /// Named provider keys (`[provider_keys.NAME]`) it uses, one per provider (comma-separated).
        #[arg(long = "provider-keys", value_delimiter = ',')]
        provider_keys: Vec<String>,
        /// Proxies it may use (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "default")]
        proxies: Vec<String>,
        /// Groups whose routing policy and limits apply (comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// A budget or rate limit, `WINDOW:CAP=N` with WINDOW minute|hour|day|month and CAP
        /// requests|tokens|cost_usd, e.g. `--limit minute:requests=60 --limit day:cost_usd=25`
        /// (default: the configured `metering.key_limits`).
        #[arg(long = "limit", value_name = "WINDOW:CAP=N")]
        limits: Vec<String>,
    },
    /// List stored keys (never the secrets).
    List,
    /// Revoke keys by name or by id prefix (at least 8 hex digits).
    Revoke { name_or_id: String },
}
