//! Sending a request to a provider (with retry across hosts and keys before the first byte) and
//! relaying its answer to the client: whole bodies bounded, streams event by event.

use super::ctx::RequestCtx;
use super::respond;
use super::Shared;
use crate::upstream::exchange::{self, Exchange, Failure, Outgoing};
use crate::upstream::Provider;
use bytes::Bytes;
use filters::usage::{self, OpenAiStreamTap};
use filters::ApiError;
use pingora::proxy::Session;
use std::sync::Arc;

/// Whose key authenticates the upstream call.
pub enum UpstreamCredential<'a> {
    /// Draw from the provider's key pool.
    Pool,
    /// The caller's own provider key (pass-through), sent as the provider expects it.
    Caller(&'a str),
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
        match plan.credential {
            UpstreamCredential::Pool => match host.keys.next_key() {
                Some(k) => headers.extend(provider.auth_header(k)),
                None if provider.auth == crate::config::presets::AuthStyle::None => {}
                None => {
                    return Err(ApiError::unavailable(
                        "provider_not_configured",
                        format!("provider `{}` has no API key configured (set {})", provider.name, provider.key_hint),
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
        let out = Outgoing {
            method: plan.method,
            path: &path,
            headers,
            passthrough_headers: plan.passthrough_headers.clone(),
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

/// How the answer is relayed.
#[derive(Clone, Copy)]
pub struct RelayMode {
    /// Drop the usage-only chunk (the gateway asked for it, the client did not).
    pub drop_usage_chunk: bool,
    /// Native pass-through: upstream error bodies go to the client unchanged.
    pub native_errors: bool,
}

fn response_head(ex: &Exchange, ctx: &RequestCtx, status: u16) -> pingora::Result<pingora::http::ResponseHeader> {
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

/// Relay an upstream answer to the client.
pub async fn relay(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
    mode: RelayMode,
) -> Result<(), ApiError> {
    let status = ex.status();
    let provider = ctx.provider.clone();
    let pname = provider.as_ref().map_or("", |p| p.name.as_str()).to_string();
    let limit = shared.runtime.load().config.upstream.max_response_bytes;
    if ex.is_event_stream() && status < 400 {
        return relay_stream(shared, session, ctx, ex, mode, &pname).await;
    }
    let body = ex.body(limit).await.map_err(|f| f.into_api_error(&pname))?;
    // An OpenAI-shaped upstream error is relayed as the provider wrote it (its type and code
    // matter to clients), except when the provider rejects the gateway's own key: that is a
    // gateway misconfiguration and its message may quote part of that key.
    if status >= 400 && !mode.native_errors && (matches!(status, 401 | 403) || !is_openai_error(&body)) {
        return Err(upstream_error(status, &body, ex.header("retry-after"), &pname));
    }
    ctx.usage = usage::from_openai_body(&body);
    let mut h = response_head(&ex, ctx, status).map_err(|e| ApiError::internal(e.to_string()))?;
    h.insert_header("content-length", body.len().to_string()).map_err(|e| ApiError::internal(e.to_string()))?;
    ex.release(
        &shared.connector,
        provider.as_ref().map_or(std::time::Duration::from_secs(60), |p| p.timeouts.pool_idle),
    )
    .await;
    ctx.status = status;
    ctx.response_started = true;
    // Client write errors mean the client left; nothing more to do.
    if session.write_response_header(Box::new(h), false).await.is_ok() {
        let _ = session.write_response_body(Some(Bytes::from(body)), true).await;
    }
    Ok(())
}

async fn relay_stream(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
    mode: RelayMode,
    pname: &str,
) -> Result<(), ApiError> {
    let status = ex.status();
    let max_event = shared.runtime.load().config.upstream.max_response_bytes;
    let mut h = response_head(&ex, ctx, status).map_err(|e| ApiError::internal(e.to_string()))?;
    if session.req_header().version == http::Version::HTTP_11 {
        let _ = h.insert_header("transfer-encoding", "chunked");
    }
    let _ = h.insert_header("cache-control", "no-cache");
    ctx.status = status;
    ctx.response_started = true;
    if session.write_response_header(Box::new(h), false).await.is_err() {
        return Ok(());
    }
    let mut tap = OpenAiStreamTap::new(mode.drop_usage_chunk, max_event);
    let mut clean = false;
    loop {
        let mut out = Vec::new();
        let (step, end) = match ex.chunk().await {
            Ok(Some(bytes)) => (
                tap.feed(&bytes, &mut out).map_err(|e| ApiError::bad_gateway("upstream_stream_error", e.to_string())),
                false,
            ),
            Ok(None) => {
                (tap.finish(&mut out).map_err(|e| ApiError::bad_gateway("upstream_stream_error", e.to_string())), true)
            }
            Err(f) => (Err(f.into_api_error(pname)), true),
        };
        if let Err(e) = step {
            // After the first byte the status is sent: end the stream with an error event.
            ctx.error = Some(e.message.clone());
            ctx.status = e.status;
            out.extend_from_slice(&usage::stream_error_event(&e));
            let _ = session.write_response_body(Some(Bytes::from(out)), true).await;
            break;
        }
        if !out.is_empty() {
            if ctx.first_token.is_none() {
                ctx.first_token = Some(ctx.started.elapsed());
            }
            if session.write_response_body(Some(Bytes::from(out)), end).await.is_err() {
                ctx.error = Some("client disconnected".into());
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
    ctx.usage = tap.usage;
    if clean {
        let idle = ctx.provider.as_ref().map_or(std::time::Duration::from_secs(60), |p| p.timeouts.pool_idle);
        ex.release(&shared.connector, idle).await;
    }
    Ok(())
}

fn is_openai_error(body: &[u8]) -> bool {
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
    let mut e = ApiError::new(status_out, kind, Some(code), message);
    if let Some(p) = parsed.and_then(|w| w.error.param) {
        e = e.with_param(p);
    }
    if let Some(secs) = retry_after.and_then(|r| r.trim().parse::<f64>().ok()) {
        e = e.with_retry_after(secs.ceil().max(0.0) as u64);
    }
    e
}
