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
}
