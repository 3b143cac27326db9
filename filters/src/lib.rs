//! Portcullis phase logic, free of Pingora and of I/O.
//!
//! Every function here takes bytes or plain structs and returns a decision, bytes or an
//! [`ApiError`]. The server crate does the I/O those decisions need. Keeping this crate pure is
//! what makes it unit-testable against recorded transcripts and cheap to benchmark.

pub mod audit;
pub mod auth;
pub mod body;
pub mod endpoint;
pub mod error;
pub mod eventstream;
pub mod jwt;
pub mod meta;
pub mod meter;
pub mod mock;
pub mod model;
pub mod oauth;
pub mod passthrough;
pub mod route;
pub mod sealed;
pub mod sigv4;
pub mod sse;
#[cfg(test)]
pub(crate) mod testutil;
pub mod trace;
pub mod translate;
pub mod usage;

pub use error::ApiError;
