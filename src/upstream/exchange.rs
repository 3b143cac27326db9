//! One upstream HTTP exchange over Pingora's pooled connector.
//!
//! The gateway owns the exchange (rather than letting Pingora proxy the request) because it must
//! read and rewrite whole request bodies of any size before choosing the upstream: Pingora sends
//! the upstream header before `request_body_filter` runs and replays at most 64 KiB of a body
//! read early. Owning it also gives retry/fallback before the first byte and stream transcoding.

use bytes::Bytes;
use filters::ApiError;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Timeouts;

/// Everything needed to send one request upstream.
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'static str, String)>,
    /// Headers copied from the client on pass-through routes.
    pub passthrough_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

/// An upstream connection whose response header has arrived.
pub struct Exchange {
    pub session: HttpSession,
    pub peer: HttpPeer,
    pub header_latency: Duration,
    pub reused: bool,
}

/// Why an attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing reached the upstream: safe to try elsewhere.
    Connect(String),
    /// The request was (maybe partly) sent; the response did not start in time.
    Timeout(String),
    /// The request was sent and the exchange broke.
    Broken(String),
}

impl Failure {
    pub fn into_api_error(self, provider: &str) -> ApiError {
        match self {
            Failure::Connect(m) => {
                ApiError::bad_gateway("upstream_unavailable", format!("provider `{provider}` is unreachable: {m}"))
            }
            Failure::Timeout(m) => {
                ApiError::gateway_timeout(format!("provider `{provider}` did not answer in time: {m}"))
            }
            Failure::Broken(m) => {
                ApiError::bad_gateway("upstream_error", format!("provider `{provider}` connection failed: {m}"))
            }
        }
    }
}

fn describe(e: &Error) -> String {
    // Pingora errors carry context; the root cause is enough for a client message.
    match e.context.as_ref() {
        Some(c) => format!("{} ({})", e.etype().as_str(), c.as_str()),
        None => e.etype().as_str().to_string(),
    }
}

fn classify_connect(e: &Error) -> Failure {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => Failure::Connect(describe(e)),
        _ => Failure::Connect(describe(e)),
    }
}

/// Build a peer for `addr`.
pub fn peer(addr: SocketAddr, tls: bool, sni: &str, t: &Timeouts, verify: bool) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tls, sni.to_string());
    let o = &mut peer.options;
    o.connection_timeout = Some(t.connect);
    o.total_connection_timeout = Some(t.connect * 2);
    o.read_timeout = Some(t.first_byte);
    o.write_timeout = Some(t.idle);
    o.idle_timeout = Some(t.pool_idle);
    o.verify_cert = verify;
    o.verify_hostname = verify;
    peer
}

/// Connect (pooled), send the request and wait for the response header.
pub async fn send(
    connector: &Connector,
    peer: HttpPeer,
    req: &Outgoing<'_>,
    t: &Timeouts,
) -> Result<Exchange, Failure> {
    let start = Instant::now();
    let (mut session, reused) = connector.get_http_session(&peer).await.map_err(|e| classify_connect(&e))?;
    let mut header = RequestHeader::build(req.method, req.path.as_bytes(), Some(req.headers.len() + 4))
        .map_err(|e| Failure::Connect(describe(&e)))?;
    for (name, value) in &req.passthrough_headers {
        header.append_header(name.clone(), value.clone()).map_err(|e| Failure::Connect(describe(&e)))?;
    }
    for (name, value) in &req.headers {
        header.insert_header(*name, value.as_str()).map_err(|e| Failure::Connect(describe(&e)))?;
    }
    header.insert_header("content-length", req.body.len().to_string()).map_err(|e| Failure::Connect(describe(&e)))?;
    let sent = async {
        session.write_request_header(Box::new(header)).await?;
        if !req.body.is_empty() {
            session.write_request_body(req.body.clone(), true).await?;
        }
        session.finish_request_body().await
    }
    .await;
    if let Err(e) = sent {
        // A pooled connection the upstream already closed fails on first write: nothing was
        // processed, so the caller may retry on a fresh connection.
        return Err(if reused { Failure::Connect(describe(&e)) } else { Failure::Broken(describe(&e)) });
    }
    session.set_read_timeout(Some(t.first_byte));
    if let Err(e) = session.read_response_header().await {
        return Err(match e.etype() {
            ErrorType::ReadTimedout => Failure::Timeout(describe(&e)),
            _ if reused => Failure::Connect(describe(&e)),
            _ => Failure::Broken(describe(&e)),
        });
    }
    session.set_read_timeout(Some(t.idle));
    Ok(Exchange { session, peer, header_latency: start.elapsed(), reused })
}

impl Exchange {
    pub fn status(&self) -> u16 {
        self.session.response_header().map_or(502, |h| h.status.as_u16())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.session.response_header()?.headers.get(name)?.to_str().ok()
    }

    pub fn is_event_stream(&self) -> bool {
        self.header("content-type")
            .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
    }

    /// Next body chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        self.session.read_response_body().await.map_err(|e| match e.etype() {
            ErrorType::ReadTimedout => Failure::Timeout(describe(&e)),
            _ => Failure::Broken(describe(&e)),
        })
    }

    /// Read the whole body, bounded.
    pub async fn body(&mut self, limit: usize) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > limit {
                return Err(Failure::Broken(format!("response body exceeds {limit} bytes")));
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// Return the connection to the pool when the exchange completed cleanly.
    pub async fn release(self, connector: &Connector, idle: Duration) {
        let Exchange { mut session, peer, .. } = self;
        if session.response_done() {
            connector.release_http_session(session, &peer, Some(idle)).await;
        } else {
            session.shutdown().await;
        }
    }
}
