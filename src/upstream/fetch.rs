//! Small bounded HTTP exchanges with an IdP (discovery document, key set, token endpoint) over
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

/// GET a document; anything but 200 is an error.
pub async fn get(
    connector: &Connector,
    resolver: &Resolver,
    url: &url::Url,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    match request(connector, resolver, url, "GET", Vec::new(), Bytes::new(), timeout).await? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("HTTP {status}")),
    }
}

/// POST a form; returns the status and body.
pub async fn post_form(
    connector: &Connector,
    resolver: &Resolver,
    url: &url::Url,
    authorization: Option<String>,
    form: String,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded".to_string())];
    headers.extend(authorization.map(|a| ("authorization", a)));
    request(connector, resolver, url, "POST", headers, Bytes::from(form), timeout).await
}

/// POST a body of `content_type`; returns the status and body.
pub async fn post(
    connector: &Connector,
    resolver: &Resolver,
    url: &url::Url,
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let headers = vec![("content-type", content_type.to_string())];
    request(connector, resolver, url, "POST", headers, Bytes::from(body), timeout).await
}

async fn request(
    connector: &Connector,
    resolver: &Resolver,
    url: &url::Url,
    method: &str,
    extra: Vec<(&'static str, String)>,
    body: Bytes,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
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
    let mut headers = vec![
        ("host", authority),
        ("accept", "application/json".into()),
        ("accept-encoding", "identity".into()),
        ("user-agent", concat!("portcullis/", env!("CARGO_PKG_VERSION")).into()),
    ];
    headers.extend(extra);
    let req = Outgoing { method, path: &path, headers, passthrough_headers: Vec::new(), body };
    let fetch = async {
        let mut ex = exchange::send(connector, peer, &req, &t).await.map_err(describe)?;
        let status = ex.status();
        let body = ex.body(MAX_DOCUMENT_BYTES).await.map_err(describe)?;
        ex.release(connector, t.pool_idle).await;
        Ok((status, body))
    };
    tokio::time::timeout(timeout * 2, fetch).await.map_err(|_| "timed out".to_string())?
}
