//! Assembling the Pingora server: the client listener (the gateway), the admin listener and
//! background services, with Pingora settings taken from `[server]`.

use crate::admin::AdminApp;
use crate::config::{Config, ConfigError};
use crate::gateway::runtime::Runtime;
use crate::gateway::{Gateway, Shared};
use crate::metrics::Metrics;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::sync::Arc;

pub struct ServeFlags {
    pub daemon: bool,
    pub upgrade: bool,
    pub test: bool,
}

/// Build everything and run until shutdown. Returns only on start-up errors.
pub fn run(config: Config, flags: ServeFlags) -> Result<(), Vec<ConfigError>> {
    let env = |k: &str| std::env::var(k).ok();
    let (runtime, health_services) = Runtime::build(config, &env)?;
    let cfg = runtime.config.clone();
    let metrics =
        Metrics::new().map_err(|e| vec![ConfigError { path: String::new(), message: format!("metrics: {e}") }])?;
    let st = &cfg.state;
    let store = crate::state::from_config(
        &st.backend,
        &st.redis_url,
        &st.key_prefix,
        std::time::Duration::from_millis(st.op_timeout_ms),
    )
    .map_err(|e| vec![ConfigError { path: "state".into(), message: e.to_string() }])?;
    let audit = match &cfg.audit.path {
        Some(path) => crate::audit::AuditLog::open(path.into()).map_err(|e| {
            vec![ConfigError { path: "audit.path".into(), message: format!("cannot open {path}: {e}") }]
        })?,
        None => crate::audit::AuditLog::disabled(),
    };
    let mut shared = Shared::new(runtime, metrics, store);
    shared.audit = audit;
    let shared = Arc::new(shared);

    let mut args = vec!["portcullis".to_string()];
    if flags.daemon {
        args.push("--daemon".into());
    }
    if flags.upgrade {
        args.push("--upgrade".into());
    }
    if flags.test {
        args.push("--test".into());
    }
    let opt = <Opt as clap::Parser>::parse_from(args);
    let conf = ServerConf {
        threads: cfg.server.threads,
        pid_file: cfg.server.pid_file.clone(),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        user: cfg.server.user.clone(),
        group: cfg.server.group.clone(),
        error_log: cfg.server.error_log.clone(),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_seconds),
        grace_period_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway { shared: shared.clone() },
        "portcullis",
    );
    proxy.add_tcp(&cfg.server.listen);
    server.add_service(proxy);
    if cfg.server.admin_listen != cfg.server.listen {
        let mut admin = Service::new("portcullis admin".to_string(), AdminApp { shared: shared.clone() });
        admin.add_tcp(&cfg.server.admin_listen);
        server.add_service(admin);
    }
    for svc in health_services {
        server.add_service(svc);
    }
    let flusher = crate::gateway::org_usage::Flusher { shared: shared.clone() };
    server.add_service(pingora::services::background::background_service("usage flusher", flusher));
    log::info!("portcullis listening on {} (admin {})", cfg.server.listen, cfg.server.admin_listen);
    server.run_forever();
}
