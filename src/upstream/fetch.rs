//! A bounded HTTP GET of a small JSON document (an IdP's discovery document or key set) over
//! the same connector, resolver and TLS verification as provider traffic.

use super::exchange::{self, Outgoing};
use super::Timeouts;
use crate::upstream::dns::Resolver;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use std::time::Duration;

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

fn describe(f: exchange::Failure) -> String {
    match f {
        exchange::Failure::Connect(m) | exchange::Failure::Timeout(m) | exchange::Failure::Broken(m) => m,
    }
}

pub async fn get(
    connector: &Connector,
    resolver: &Resolver,
    url: &url::Url,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        s => return Err(format!("unsupported scheme `{s}`")),
    };
    let host = url.host_str().ok_or("no host")?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().ok_or("no port")?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let t = Timeouts { connect: timeout, first_byte: timeout, idle: timeout, pool_idle: Duration::from_secs(30) };
    let addr = resolver.resolve(&host, port).await?;
    let peer = exchange::peer(addr, tls, &host, &t, true);
    let req = Outgoing {
        method: "GET",
        path: &path,
        headers: vec![
            ("host", authority),
            ("accept", "application/json".into()),
            ("accept-encoding", "identity".into()),
            ("user-agent", concat!("portcullis/", env!("CARGO_PKG_VERSION")).into()),
        ],
        passthrough_headers: Vec::new(),
        body: Bytes::new(),
    };
    let fetch = async {
        let mut ex = exchange::send(connector, peer, &req, &t).await.map_err(describe)?;
        let status = ex.status();
        let body = ex.body(MAX_DOCUMENT_BYTES).await.map_err(describe)?;
        ex.release(connector, t.pool_idle).await;
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout * 2, fetch).await.map_err(|_| "timed out".to_string())?
}
