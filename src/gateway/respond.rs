//! Writing gateway-generated responses (errors, JSON, SSE heads) to the client.

use super::ctx::RequestCtx;
use bytes::Bytes;
use filters::ApiError;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

pub type WriteResult = pingora::Result<()>;

/// Build a response header with the gateway's standard headers.
pub fn head(status: u16, ctx: &RequestCtx) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(8))?;
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(p) = &ctx.provider {
        h.insert_header("x-portcullis-provider", p.name.as_str())?;
    }
    if let Some(m) = &ctx.model {
        if let Ok(v) = http::HeaderValue::from_str(m) {
            h.insert_header("x-portcullis-model", v)?;
        }
    }
    for (name, value) in &ctx.rate_headers {
        h.insert_header(*name, value.as_str())?;
    }
    if let Some(r) = &ctx.route_info {
        h.insert_header("x-portcullis-tier", r.tier.as_str())?;
        h.insert_header("x-portcullis-route-score", format!("{:.4}", r.score))?;
        h.insert_header("x-portcullis-classified-tier", r.classified.as_str())?;
        if let Some(t) = r.override_tier {
            h.insert_header("x-portcullis-route-override", t.as_str())?;
        }
        if r.policy_capped {
            h.insert_header("x-portcullis-route-policy", "capped")?;
        }
        if ctx.fallbacks > 0 {
            h.insert_header("x-portcullis-route-fallbacks", ctx.fallbacks.to_string())?;
        }
    }
    Ok(h)
}

/// A complete JSON response.
pub async fn json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Vec<u8>,
    extra: &[(&'static str, String)],
) -> WriteResult {
    let mut h = head(status, ctx)?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        h.insert_header(*k, v.as_str())?;
    }
    ctx.status = status;
    ctx.response_started = true;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await
}

/// An error in the OpenAI shape, with `WWW-Authenticate` on 401 and `Retry-After` when known.
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &ApiError) -> WriteResult {
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    if err.status == 401 {
        extra.push(("www-authenticate", r#"Bearer error="invalid_token""#.to_string()));
    }
    if let Some(s) = err.retry_after {
        extra.push(("retry-after", s.to_string()));
    }
    if err.code == Some("budget_exceeded") {
        // A spent budget does not come back within an SDK's retry loop.
        extra.push(("x-should-retry", "false".to_string()));
    }
    ctx.error = Some(err.message.clone());
    ctx.error_code = Some(err.code.unwrap_or(err.kind));
    // A rejected request's body may still be in flight; the connection cannot be reused.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    json(session, ctx, err.status, err.to_json(), &extra).await
}

/// A complete response built elsewhere (the admin console and API), with the request id added.
pub async fn http_response(session: &mut Session, ctx: &mut RequestCtx, resp: http::Response<Vec<u8>>) {
    let (parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let Ok(mut h) = head(status, ctx) else { return };
    for (name, value) in &parts.headers {
        let _ = h.append_header(name.clone(), value.clone());
    }
    ctx.status = status;
    ctx.response_started = true;
    if session.write_response_header(Box::new(h), false).await.is_ok() {
        let _ = session.write_response_body(Some(Bytes::from(body)), true).await;
    }
}
