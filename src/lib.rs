//! Portcullis: an LLM security gateway and model router on Cloudflare Pingora.
pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod key_vault;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
