//! Sending a request to a provider (with retry across hosts and keys before the first byte) and
//! relaying its answer to the client: whole bodies bounded, streams event by event.

use super::ctx::RequestCtx;
use super::provider_keys::{KeyChoice, NamedKey};
use super::respond;
use super::Shared;
use crate::config::presets::AuthStyle;
use crate::upstream::exchange::{self, Exchange, Failure, Outgoing};
use crate::upstream::{Kind, Provider};
use bytes::Bytes;
use filters::sigv4;
use filters::translate::meter::{self, EventStreamTap, NativeStreamTap, NativeWire};
use filters::translate::StreamTranscoder;
use filters::usage::{self, OpenAiStreamTap};
use filters::ApiError;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Whose key authenticates the upstream call.
pub enum UpstreamCredential<'a> {
    /// Draw from the provider's key pool.
    Pool,
    /// A named provider key the caller has access to.
    Named(&'a NamedKey),
    /// The caller's own provider key (pass-through), sent as the provider expects it.
    Caller(&'a str),
}

impl<'a> UpstreamCredential<'a> {
    pub fn of(choice: &'a KeyChoice) -> Self {
        match choice {
            KeyChoice::Pool => UpstreamCredential::Pool,
            KeyChoice::Named(k) => UpstreamCredential::Named(k),
        }
    }
}

/// What to send, independent of which host/key an attempt lands on.
pub struct Plan<'a> {
    pub method: &'a str,
    /// Path after the host's base path, with query; or a function of the host for Azure.
    pub path: &'a (dyn Fn(&crate::upstream::Host) -> String + Send + Sync),
    pub headers: Vec<(&'static str, String)>,
    pub passthrough_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
    pub credential: UpstreamCredential<'a>,
}

/// Hop-by-hop and gateway-owned response headers that are not relayed to the client.
const SKIP_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "set-cookie",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "date",
    "server",
];

/// Try the plan on up to `max_attempts` hosts/keys; returns the first exchange whose response
/// header arrived and is not a retryable failure (or the last one when attempts run out).
pub async fn send(
    shared: &Shared,
    ctx: &mut RequestCtx,
    provider: &Arc<Provider>,
    plan: &Plan<'_>,
) -> Result<Exchange, ApiError> {
    let Some(slot) = provider.in_flight.try_enter(provider.max_in_flight) else {
        shared.metrics.upstream_errors.with_label_values(&[&provider.name, "overloaded"]).inc();
        return Err(ApiError::unavailable(
            "upstream_overloaded",
            format!("provider `{}` is at its limit of {} calls in flight", provider.name, provider.max_in_flight),
        )
        .with_retry_after(1));
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut last_err: Option<ApiError> = None;
    let attempts = provider.max_attempts.max(1);
    for attempt in 0..attempts {
        let Some(hi) = provider.pick_host(&tried) else {
            break;
        };
        tried.push(hi);
        let host = &provider.hosts[hi];
        if !host.egress_allowed {
            return Err(ApiError::forbidden(
                "egress_denied",
                format!("provider `{}` host `{}` is not in egress.allow_hosts", provider.name, host.host),
            ));
        }
        let mut headers = plan.headers.clone();
        headers.push(("host", host.authority.clone()));
        if let Some(tp) = &ctx.upstream_traceparent {
            headers.push(("traceparent", tp.clone()));
        }
        // Set again by a named key: an earlier fallback candidate's name must not stay.
        ctx.provider_key = None;
        match plan.credential {
            UpstreamCredential::Pool => match host.keys.next_key() {
                Some(k) => headers.extend(provider.auth_header(k)),
                None if matches!(provider.auth, AuthStyle::None | AuthStyle::Sigv4) => {}
                None => {
                    return Err(ApiError::unavailable(
                        "provider_not_configured",
                        format!("provider `{}` has no API key configured (set {})", provider.name, provider.key_hint),
                    ))
                }
            },
            UpstreamCredential::Named(named) => match named.keys.next_key() {
                Some(k) => {
                    headers.extend(provider.auth_header(k));
                    ctx.provider_key = Some(named.name.clone());
                }
                None => {
                    return Err(ApiError::unavailable(
                        "provider_not_configured",
                        format!("provider key `{}` has no API key configured (set {})", named.name, named.hint),
                    ))
                }
            },
            UpstreamCredential::Caller(k) => headers.extend(provider.auth_header(k)),
        }
        let addr = match shared.resolver.resolve(&host.host, host.port).await {
            Ok(a) => a,
            Err(e) => {
                shared.metrics.upstream_errors.with_label_values(&[&provider.name, "dns"]).inc();
                last_err =
                    Some(ApiError::bad_gateway("upstream_unavailable", format!("provider `{}`: {e}", provider.name)));
                continue;
            }
        };
        let peer = exchange::peer(addr, host.tls, &host.host, &provider.timeouts, provider.tls_verify);
        let path = (plan.path)(host);
        if provider.auth == AuthStyle::Sigv4 && matches!(plan.credential, UpstreamCredential::Pool) {
            headers.extend(sigv4_headers(provider, plan, &host.authority, &path)?);
        }
        let out = Outgoing {
            method: plan.method,
            path: &path,
            headers,
            // The gateway's `traceparent` replaces the caller's.
            passthrough_headers: plan
                .passthrough_headers
                .iter()
                .filter(|(n, _)| ctx.upstream_traceparent.is_none() || n.as_str() != "traceparent")
                .cloned()
                .collect(),
            body: plan.body.clone(),
        };
        ctx.attempts = attempt + 1;
        let more = attempt + 1 < attempts && provider.has_alternatives();
        match exchange::send(&shared.connector, peer, &out, &provider.timeouts).await {
            Ok(ex) => {
                let status = ex.status();
                if more && matches!(status, 429 | 500 | 502 | 503 | 504) {
                    shared.metrics.upstream_errors.with_label_values(&[&provider.name, "status"]).inc();
                    // Drain nothing: the connection is dropped; try the next host/key.
                    drop(ex);
                    continue;
                }
                ctx.upstream_latency = Some(ex.header_latency);
                ctx.upstream_slot = Some(slot);
                return Ok(ex);
            }
            Err(f) => {
                let reason = match &f {
                    Failure::Connect(_) => "connect",
                    Failure::Timeout(_) => "timeout",
                    Failure::Broken(_) => "broken",
                };
                shared.metrics.upstream_errors.with_label_values(&[&provider.name, reason]).inc();
                let retryable = matches!(f, Failure::Connect(_));
                last_err = Some(f.into_api_error(&provider.name));
                if !retryable {
                    break;
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        ApiError::bad_gateway("upstream_unavailable", format!("provider `{}` has no usable host", provider.name))
    }))
}

fn response_head(ex: &Exchange, ctx: &RequestCtx, status: u16) -> pingora::Result<ResponseHeader> {
    let mut h = respond::head(status, ctx)?;
    if let Some(up) = ex.session.response_header() {
        for (name, value) in up.headers.iter() {
            let n = name.as_str();
            if SKIP_RESPONSE_HEADERS.contains(&n) {
                if n == "x-request-id" {
                    h.insert_header("x-upstream-request-id", value.clone())?;
                }
                continue;
            }
            h.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(h)
}

/// SigV4 signature headers for one attempt (signed per host: the host is part of the signature).
fn sigv4_headers(
    provider: &Provider,
    plan: &Plan<'_>,
    authority: &str,
    path: &str,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let (Some(creds), Some(region)) = (&provider.aws, &provider.region) else {
        return Err(ApiError::unavailable(
            "provider_not_configured",
            format!("provider `{}` has no AWS credentials or region configured", provider.name),
        ));
    };
    let signed: Vec<(&str, &str)> =
        plan.headers.iter().filter(|(n, _)| *n == "content-type").map(|(n, v)| (*n, v.as_str())).collect();
    let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(sigv4::sign(
        &sigv4::Request {
            method: plan.method,
            host: authority,
            path_and_query: path,
            headers: &signed,
            body: &plan.body,
        },
        &sigv4::Credentials {
            access_key_id: &creds.access_key_id,
            secret_access_key: &creds.secret_access_key,
            session_token: creds.session_token.as_deref(),
        },
        &sigv4::Scope { region, service: filters::translate::bedrock::SIGNING_SERVICE, time },
    ))
}

/// Relay a native pass-through answer to the client: status, headers and body as the provider
/// sent them (streams re-framed event by event).
pub async fn relay(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
) -> Result<(), ApiError> {
    let status = ex.status();
    let pname = ctx.provider.as_ref().map_or("", |p| p.name.as_str()).to_string();
    let limit = shared.runtime.load().config.upstream.max_response_bytes;
    let wire = ctx.provider.as_ref().and_then(|p| native_wire(p.kind));
    // Bedrock's ConverseStream is binary (AWS event-stream), not SSE.
    let binary = wire == Some(NativeWire::Bedrock)
        && ex
            .header("content-type")
            .is_some_and(|c| c.trim_start().starts_with(filters::translate::bedrock::STREAM_CONTENT_TYPE));
    if (binary || ex.is_event_stream()) && status < 400 {
        let mut head = response_head(&ex, ctx, status).map_err(|e| ApiError::internal(e.to_string()))?;
        let provider = ctx.provider.clone().ok_or_else(|| ApiError::internal("relay without a provider"))?;
        let tap: Box<dyn StreamTranscoder> = match wire {
            _ if binary => Box::new(EventStreamTap::new(limit)),
            Some(wire) => Box::new(NativeStreamTap::new(wire, limit)),
            None => Box::new(OpenAiStreamTap::new(false, limit)),
        };
        if !binary {
            head.remove_header("content-type");
            let ct = ex.header("content-type").unwrap_or("text/event-stream").to_string();
            let _ = head.insert_header("content-type", ct);
        }
        // Error events are SSE: only an SSE stream can carry one.
        return relay_stream(shared, session, ctx, Source::Upstream(Box::new(ex), provider), tap, head, !binary).await;
    }
    let body = ex.body(limit).await.map_err(|f| f.into_api_error(&pname))?;
    ctx.usage = match wire {
        Some(wire) => meter::body_usage(wire, &body),
        None => usage::from_openai_body(&body),
    };
    write_whole(shared, session, ctx, ex, status, body).await
}

/// The native wire a pass-through answer of `kind` speaks; `None` for the OpenAI wire.
fn native_wire(kind: Kind) -> Option<NativeWire> {
    match kind {
        Kind::Anthropic => Some(NativeWire::Anthropic),
        Kind::Gemini => Some(NativeWire::Gemini),
        Kind::Cohere => Some(NativeWire::Cohere),
        Kind::Bedrock => Some(NativeWire::Bedrock),
        Kind::OpenAi | Kind::Azure | Kind::OpenAiCompatible | Kind::Mock => None,
    }
}

/// Answer an upstream's whole body with its status and (filtered) headers.
pub async fn write_whole(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ex: Exchange,
    status: u16,
    body: Vec<u8>,
) -> Result<(), ApiError> {
    let mut h = response_head(&ex, ctx, status).map_err(|e| ApiError::internal(e.to_string()))?;
    h.insert_header("content-length", body.len().to_string()).map_err(|e| ApiError::internal(e.to_string()))?;
    let idle = ctx.provider.as_ref().map_or(std::time::Duration::from_secs(60), |p| p.timeouts.pool_idle);
    ex.release(&shared.connector, idle).await;
    ctx.status = status;
    ctx.response_started = true;
    // Client write errors mean the client left; nothing more to do.
    if session.write_response_header(Box::new(h), false).await.is_ok() {
        let _ = session.write_response_body(Some(Bytes::from(body)), true).await;
    }
    Ok(())
}

/// Where stream bytes come from.
pub enum Source {
    Upstream(Box<Exchange>, Arc<Provider>),
    /// Events generated by the gateway (the mock provider).
    Local(VecDeque<Bytes>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        match self {
            Source::Upstream(ex, _) => ex.chunk().await,
            Source::Local(q) => Ok(q.pop_front()),
        }
    }
}

/// Relay a stream through `transcoder`, event by event, under `head`. After the head is sent an
/// error ends the stream: with an OpenAI error event when `error_events` (chat streams), else
/// with whatever the transcoder wrote for it (the Responses front frames its own failure).
pub async fn relay_stream(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut source: Source,
    mut transcoder: Box<dyn StreamTranscoder>,
    mut head: ResponseHeader,
    error_events: bool,
) -> Result<(), ApiError> {
    let _ = head.insert_header("cache-control", "no-cache");
    if session.req_header().version == http::Version::HTTP_11 {
        let _ = head.insert_header("transfer-encoding", "chunked");
    }
    ctx.status = head.status.as_u16();
    ctx.response_started = true;
    if session.write_response_header(Box::new(head), false).await.is_err() {
        return Ok(());
    }
    let pname = match &source {
        Source::Upstream(_, p) => p.name.clone(),
        Source::Local(_) => "mock".to_string(),
    };
    let mut clean = false;
    // The idle timeout bounds each read; this bounds the whole answer, so an upstream that
    // drips a byte now and then cannot hold a worker's stream forever.
    let max_seconds = shared.runtime.load().config.upstream.max_response_seconds;
    let deadline = tokio::time::Instant::from_std(ctx.started + Duration::from_secs(max_seconds));
    loop {
        let mut out = Vec::new();
        let (step, end) = match tokio::time::timeout_at(deadline, source.next()).await {
            Err(_) => {
                let e = ApiError::gateway_timeout(format!(
                    "the answer took longer than upstream.max_response_seconds ({max_seconds} s)"
                ));
                transcoder.abort(&e, &mut out);
                (Err(e), true)
            }
            Ok(Ok(Some(bytes))) => (transcoder.feed(&bytes, &mut out), false),
            Ok(Ok(None)) => (transcoder.finish(&mut out), true),
            Ok(Err(f)) => {
                let e = f.into_api_error(&pname);
                transcoder.abort(&e, &mut out);
                (Err(e), true)
            }
        };
        if let Err(e) = step {
            ctx.error = Some(e.message.clone());
            ctx.error_code = Some(e.code.unwrap_or(e.kind));
            ctx.status = e.status;
            if error_events {
                out.extend_from_slice(&usage::stream_error_event(&e));
            }
            let _ = session.write_response_body(Some(Bytes::from(out)), true).await;
            break;
        }
        if !out.is_empty() {
            if ctx.first_token.is_none() {
                ctx.first_token = Some(ctx.started.elapsed());
            }
            if session.write_response_body(Some(Bytes::from(out)), end).await.is_err() {
                ctx.error = Some("client disconnected".into());
                ctx.error_code = Some("client_disconnected");
                break;
            }
        } else if end {
            let _ = session.write_response_body(None, true).await;
        }
        if end {
            clean = true;
            break;
        }
    }
    if let Some(u) = transcoder.usage() {
        ctx.usage = Some(u);
    }
    if let (true, Source::Upstream(ex, provider)) = (clean, source) {
        ex.release(&shared.connector, provider.timeouts.pool_idle).await;
    }
    Ok(())
}

pub fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").and_then(|e| e.get("message")).is_some_and(|m| m.is_string()))
}

/// Map an upstream error to the OpenAI shape: keep the provider's message when it has one.
pub fn upstream_error(status: u16, body: &[u8], retry_after: Option<&str>, provider: &str) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Wire {
        error: WireInner,
    }
    #[derive(serde::Deserialize)]
    struct WireInner {
        message: Option<String>,
        param: Option<String>,
    }
    let parsed = serde_json::from_slice::<Wire>(body).ok();
    let message = parsed.as_ref().and_then(|w| w.error.message.clone()).unwrap_or_else(|| {
        format!(
            "provider `{provider}` returned HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    });
    let (kind, code): (&'static str, &'static str) = match status {
        400 | 422 => ("invalid_request_error", "upstream_bad_request"),
        401 => ("api_error", "upstream_auth_failed"),
        403 => ("permission_error", "upstream_forbidden"),
        404 => ("invalid_request_error", "model_not_found"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        529 => ("api_error", "overloaded"),
        _ => ("api_error", "upstream_error"),
    };
    // The provider rejecting *our* key is a gateway configuration problem, not the caller's.
    let status_out = match status {
        401 => 502,
        529 => 503,
        s if (400..600).contains(&s) => s,
        _ => 502,
    };
    // The provider's words about a rejected key may quote it (OpenAI shows its last characters).
    let message = if status == 401 {
        format!("provider `{provider}` rejected the gateway's credentials (HTTP 401); the provider's message is not passed on, as it may quote the key")
    } else {
        message
    };
    let mut e = ApiError::new(status_out, kind, Some(code), message);
    if let Some(p) = parsed.and_then(|w| w.error.param) {
        e = e.with_param(p);
    }
    if let Some(secs) = retry_after.and_then(|r| r.trim().parse::<f64>().ok()) {
        e = e.with_retry_after(secs.ceil().max(0.0) as u64);
    }
    e
}
