use clap::Parser;
use portcullis::cli::{AuditAction, Cli, ClientsAction, Command, KeysAction, ProviderKeysAction};
use portcullis::config::{Config, Source};
use portcullis::server::{self, ServeFlags};
use std::process::ExitCode;
use std::sync::Arc;

// mimalloc instead of glibc malloc: allocation was ~12 % of the process's CPU per request under
// load (perf), and mimalloc's thread-local free lists halve it (load-tests/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, daemon, upgrade, test } => {
            let (cfg, source) = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errors) => return report(&errors),
            };
            match &source {
                Source::File(p) => log::info!("config: {p}"),
                Source::Embedded => {
                    log::info!("config: embedded default (no conf/portcullis.toml found)")
                }
            }
            for w in cfg.warnings() {
                log::warn!("config: {w}");
            }
            match server::run(cfg, ServeFlags { daemon, upgrade, test }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(errors) => report(&errors),
            }
        }
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok((cfg, _)) => {
                let env = |k: &str| std::env::var(k).ok();
                if let Err(errors) = portcullis::gateway::runtime::Runtime::build(cfg.clone(), &env) {
                    return report(&errors);
                }
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("config OK");
                ExitCode::SUCCESS
            }
            Err(errors) => report(&errors),
        },
        Command::Classify { config, model_file } => classify_command(config, model_file),
        Command::Audit { action: AuditAction::Verify, config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok((c, _)) => c,
                Err(errors) => return report(&errors),
            };
            let Some(path) = cfg.audit.path else {
                eprintln!("error: audit.path is not set: this configuration keeps no audit trail");
                return ExitCode::from(2);
            };
            match portcullis::audit::verify_file(std::path::Path::new(&path)) {
                Ok(Ok(tip)) => {
                    println!("audit trail {path}: intact, {} records, last hash {}", tip.seq, tip.hash);
                    ExitCode::SUCCESS
                }
                Ok(Err(b)) => {
                    println!("audit trail {path}: broken at line {}: {}", b.line, b.reason);
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: cannot read the audit trail {path}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Keys { action, config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok((c, _)) => c,
                Err(errors) => return report(&errors),
            };
            keys_command(&cfg, action)
        }
        Command::Clients { action, config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok((c, _)) => c,
                Err(errors) => return report(&errors),
            };
            clients_command(&cfg, action)
        }
        Command::ProviderKeys { action, config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok((c, _)) => c,
                Err(errors) => return report(&errors),
            };
            provider_keys_command(&cfg, action)
        }
    }
}

/// `portcullis classify`: the same model and code path as the gateway, over stdin.
fn classify_command(config: Option<std::path::PathBuf>, model_file: Option<std::path::PathBuf>) -> ExitCode {
    use std::io::{BufRead, Write};
    let model_file = match model_file {
        Some(p) => Some(p.display().to_string()),
        None => match Config::load(config.as_deref()) {
            Ok((cfg, _)) => cfg.routing.model_file,
            Err(errors) => return report(&errors),
        },
    };
    let model = match &model_file {
        None => filters::route::RouterModel::embedded(),
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|t| filters::route::RouterModel::from_json(&t)),
    };
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: router model: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: reading stdin: {e}");
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match filters::route::classify_line(&model, &line) {
            Ok(result) => {
                if writeln!(out, "{result}").is_err() {
                    return ExitCode::from(2);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("line {}: {e}", n + 1);
            }
        }
    }
    let _ = out.flush();
    if failed > 0 {
        eprintln!("{failed} line(s) could not be classified");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The shared state store and a runtime to drive it, for the CLI's stored keys and clients.
fn open_store(
    cfg: &Config,
    what: &str,
) -> Result<(Arc<dyn portcullis::state::StateStore>, tokio::runtime::Runtime), ExitCode> {
    if cfg.state.backend == "memory" {
        eprintln!(
            "error: state.backend is \"memory\": stored {what} would live only inside one gateway process. \
             Use a shared store (state.backend = \"redis\") or static entries in the config file."
        );
        return Err(ExitCode::from(2));
    }
    let st = &cfg.state;
    let store = portcullis::state::from_config(
        &st.backend,
        &st.redis_url,
        &st.key_prefix,
        std::time::Duration::from_millis(st.op_timeout_ms.max(2000)),
    )
    .map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    Ok((store, rt))
}

fn limits_flag(limits: &[String]) -> Result<Option<Vec<filters::meter::Limit>>, String> {
    if limits.is_empty() {
        return Ok(None);
    }
    filters::meter::parse_limit_flags(limits).map(Some).map_err(|e| format!("--limit: {e}"))
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys_command(cfg: &Config, action: KeysAction) -> ExitCode {
    let (store, rt) = match open_store(cfg, "keys") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let result: Result<(), String> = rt.block_on(async {
        match action {
            KeysAction::Create { name, providers, provider_keys, proxies, groups, limits } => {
                cfg.check_grants(
                    &providers,
                    &provider_keys,
                    &known_provider_keys(cfg, &*store).await?,
                    &proxies,
                    &groups,
                )?;
                let limits = limits_flag(&limits)?;
                let record = serde_json::json!({
                    "ts": now_secs(), "event": "key_created", "name": name, "providers": providers,
                    "provider_keys": provider_keys, "proxies": proxies, "groups": groups, "limits": limits,
                });
                let grants = portcullis::keys::Grants { proxies, providers, provider_keys, groups, limits };
                let (key, id) = portcullis::keys::create(&*store, &name, grants).await.map_err(|e| e.to_string())?;
                let mut record = record;
                record["id"] = short_id(&id).into();
                audit(cfg, &record)?;
                println!("{key}");
                eprintln!("created key `{name}` (id {}); this is the only time the key is shown", short_id(&id));
                Ok(())
            }
            KeysAction::List => {
                for (id, k) in portcullis::keys::list(&*store).await.map_err(|e| e.to_string())? {
                    let status = if k.revoked_at.is_some() { "revoked" } else { "active" };
                    println!(
                        "{}  {:<20} {:<8} providers={} proxies={}{}{}{}",
                        short_id(&id),
                        k.name,
                        status,
                        k.providers.join(","),
                        k.proxies.join(","),
                        if k.provider_keys.is_empty() {
                            String::new()
                        } else {
                            format!(" provider_keys={}", k.provider_keys.join(","))
                        },
                        if k.groups.is_empty() { String::new() } else { format!(" groups={}", k.groups.join(",")) },
                        k.limits
                            .as_deref()
                            .map_or(String::new(), |l| format!(" limits={}", filters::meter::limit_flags(l)))
                    );
                }
                Ok(())
            }
            KeysAction::Revoke { name_or_id } => {
                let ids = portcullis::keys::revoke(&*store, &name_or_id).await.map_err(|e| e.to_string())?;
                if ids.is_empty() {
                    return Err(format!("no active key matches `{name_or_id}`"));
                }
                for id in &ids {
                    println!("revoked {}", short_id(id));
                }
                let ids: Vec<&str> = ids.iter().map(|id| short_id(id)).collect();
                audit(
                    cfg,
                    &serde_json::json!({"ts": now_secs(), "event": "key_revoked", "match": name_or_id, "ids": ids}),
                )?;
                Ok(())
            }
        }
    });
    finish(result)
}

fn report(errors: &[portcullis::config::ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("config error: {e}");
    }
    ExitCode::from(2)
}

/// The first 12 characters of a key id, for display; ids read back from the store are not
/// trusted to be that long (or to split there).
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Appends an admin change to the audit trail, when one is configured.
fn audit(cfg: &Config, record: &serde_json::Value) -> Result<(), String> {
    match &cfg.audit.path {
        Some(path) => portcullis::audit::append(std::path::Path::new(path), &record.to_string())
            .map(drop)
            .map_err(|e| format!("the change is made but the audit trail {path} could not record it: {e}")),
        None => Ok(()),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Named provider keys a new key or client may map: the file's and the vault's.
async fn known_provider_keys(
    cfg: &Config,
    store: &dyn portcullis::state::StateStore,
) -> Result<Vec<(String, String)>, String> {
    let mut known = cfg.configured_provider_keys();
    let stored = portcullis::key_vault::list(store).await.map_err(|e| e.to_string())?;
    known.extend(stored.into_iter().map(|k| (k.name, k.provider)));
    Ok(known)
}

fn provider_keys_command(cfg: &Config, action: ProviderKeysAction) -> ExitCode {
    let (store, rt) = match open_store(cfg, "provider keys") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let result: Result<(), String> = rt.block_on(async {
        match action {
            ProviderKeysAction::Set { name, provider, users, groups, description } => {
                let problems = cfg.provider_key_problems(&name, &provider, &users, &groups, description.as_deref());
                if let Some((field, m)) = problems.into_iter().next() {
                    return Err(if field.is_empty() { format!("--name: {m}") } else { format!("--{field}: {m}") });
                }
                if cfg.provider_keys.contains_key(&name) {
                    return Err(format!("`{name}` is a provider key of the config file; change it there"));
                }
                let var = &cfg.secrets.key_env;
                let secret = std::env::var(var)
                    .map_err(|_| format!("provider keys are stored sealed: set {var} (the gateway's secrets key)"))?;
                let sealer = filters::sealed::Sealer::from_text(&secret).map_err(|e| format!("{var}: {e}"))?;
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the key from stdin: {e}"))?;
                let api_key = line.trim().to_string();
                portcullis::key_vault::check_api_key(&api_key).map_err(|e| format!("stdin: {e}"))?;
                let new = portcullis::key_vault::NewProviderKey {
                    name: name.clone(),
                    provider: provider.clone(),
                    api_key,
                    // Left out on a rotation: the stored lists stay.
                    users: (!users.is_empty()).then_some(users),
                    groups: (!groups.is_empty()).then_some(groups),
                    description,
                };
                let put = portcullis::key_vault::put(&*store, &sealer, new, "cli").await.map_err(|e| e.to_string())?;
                let (rec, replaced) = match put {
                    portcullis::key_vault::Put::Created(r) => (r, false),
                    portcullis::key_vault::Put::Rotated(r) => (r, true),
                    portcullis::key_vault::Put::OtherProvider(p) => {
                        return Err(format!("the stored key `{name}` is for provider `{p}`; delete it first"))
                    }
                };
                let event = if replaced { "provider_key_rotated" } else { "provider_key_created" };
                audit(
                    cfg,
                    &serde_json::json!({"ts": now_secs(), "event": event, "actor": "cli", "name": name,
                                        "provider": provider, "hint": rec.hint, "users": rec.users, "groups": rec.groups}),
                )?;
                println!("{} provider key `{name}` for `{provider}`", if replaced { "rotated" } else { "stored" });
                Ok(())
            }
            ProviderKeysAction::List => {
                for k in portcullis::key_vault::list(&*store).await.map_err(|e| e.to_string())? {
                    println!(
                        "{:<24} {:<12} {}{}{}",
                        k.name,
                        k.provider,
                        k.hint,
                        if k.users.is_empty() { String::new() } else { format!(" users={}", k.users.join(",")) },
                        if k.groups.is_empty() { String::new() } else { format!(" groups={}", k.groups.join(",")) },
                    );
                }
                Ok(())
            }
            ProviderKeysAction::Delete { name } => {
                if !portcullis::key_vault::delete(&*store, &name).await.map_err(|e| e.to_string())? {
                    return Err(format!("no stored provider key `{name}`"));
                }
                audit(cfg, &serde_json::json!({"ts": now_secs(), "event": "provider_key_deleted", "actor": "cli", "name": name}))?;
                println!("deleted {name}");
                Ok(())
            }
        }
    });
    finish(result)
}

fn clients_command(cfg: &Config, action: ClientsAction) -> ExitCode {
    let (store, rt) = match open_store(cfg, "clients") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let result: Result<(), String> = rt.block_on(async {
        match action {
            ClientsAction::Create {
                name,
                providers,
                provider_keys,
                proxies,
                groups,
                redirect_uris,
                public,
                limits,
            } => {
                let providers: Vec<String> = providers.into_iter().filter(|p| !p.is_empty()).collect();
                cfg.check_grants(
                    &providers,
                    &provider_keys,
                    &known_provider_keys(cfg, &*store).await?,
                    &proxies,
                    &groups,
                )?;
                for u in &redirect_uris {
                    filters::oauth::valid_redirect_uri(u).map_err(|m| format!("--redirect-uri: {m}"))?;
                }
                if public && redirect_uris.is_empty() {
                    return Err("a --public client needs at least one --redirect-uri".into());
                }
                let new = portcullis::oauth::NewClient {
                    name: name.clone(),
                    public,
                    redirect_uris,
                    proxies,
                    providers,
                    provider_keys,
                    groups,
                    limits: limits_flag(&limits)?,
                    registered: false,
                };
                let (rec, secret) = portcullis::oauth::create_client(&*store, new).await.map_err(|e| e.to_string())?;
                audit(
                    cfg,
                    &serde_json::json!({
                        "ts": now_secs(), "event": "client_created", "client_id": rec.client_id, "name": name,
                        "public": public, "providers": rec.providers, "provider_keys": rec.provider_keys,
                        "proxies": rec.proxies, "groups": rec.groups,
                        "redirect_uris": rec.redirect_uris, "limits": rec.limits,
                    }),
                )?;
                println!("client_id: {}", rec.client_id);
                if let Some(s) = secret {
                    println!("client_secret: {s}");
                    eprintln!("created client `{name}`; this is the only time the secret is shown");
                }
                Ok(())
            }
            ClientsAction::List => {
                for c in portcullis::oauth::list_clients(&*store).await.map_err(|e| e.to_string())? {
                    let status = if c.revoked_at.is_some() { "revoked" } else { "active" };
                    let kind = if c.is_public() { "public" } else { "confidential" };
                    println!(
                        "{}  {:<20} {:<8} {kind}{}{}{}{}",
                        c.client_id,
                        c.name,
                        status,
                        if c.providers.is_empty() {
                            String::new()
                        } else {
                            format!(" providers={}", c.providers.join(","))
                        },
                        if c.provider_keys.is_empty() {
                            String::new()
                        } else {
                            format!(" provider_keys={}", c.provider_keys.join(","))
                        },
                        if c.redirect_uris.is_empty() {
                            String::new()
                        } else {
                            format!(" redirect_uris={}", c.redirect_uris.join(","))
                        },
                        if c.registered { " registered" } else { "" },
                    );
                }
                Ok(())
            }
            ClientsAction::Revoke { name_or_id } => {
                let ids = portcullis::oauth::revoke_clients(&*store, &name_or_id).await.map_err(|e| e.to_string())?;
                if ids.is_empty() {
                    return Err(format!("no active client matches `{name_or_id}`"));
                }
                for id in &ids {
                    println!("revoked {id}");
                }
                audit(
                    cfg,
                    &serde_json::json!({"ts": now_secs(), "event": "client_revoked", "match": name_or_id, "ids": ids}),
                )
            }
        }
    });
    finish(result)
}
