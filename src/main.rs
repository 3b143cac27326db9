use clap::Parser;
use portcullis::cli::{Cli, Command};
use portcullis::config::{Config, Source};
use portcullis::server::{self, ServeFlags};
use std::process::ExitCode;

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
                Source::Embedded => log::info!("config: embedded default (no conf/portcullis.toml found)"),
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
    }
}

fn report(errors: &[portcullis::config::ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("config error: {e}");
    }
    ExitCode::from(2)
}
