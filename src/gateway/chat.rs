//! One chat exchange with a provider, whatever its wire, answered to either front: the Chat
//! Completions API itself, or the Responses API translated onto it.
//!
//! The request side picks the upstream body (OpenAI-wire: the client's body with the model
//! rewritten; native wires: the translator's request). The response side runs every answer
//! through the same stages: provider → `chat.completion` (whole) or `chat.completion.chunk` SSE
//! (stream), then, for the Responses front, chat → Responses.

use super::ctx::RequestCtx;
use super::forward::Source;
use super::forward::{self, Plan, UpstreamCredential};
use super::native::Wire;
use super::respond;
use super::routing::Candidate;
use super::Shared;
use crate::upstream::exchange::Exchange;
use crate::upstream::{Host, Kind, Provider};
use bytes::Bytes;
use filters::body::ChatRequest;
use filters::mock::{self, MockInput};
use filters::translate::responses::{self, ResponsesMeta};
use filters::translate::{Chain, RequestOptions, ResponseOptions, StreamTranscoder};
use filters::usage::{self, OpenAiStreamTap};
use filters::ApiError;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which API the client called.
pub enum Front {
    Chat,
    Responses { meta: Box<ResponsesMeta>, id: String },
}

impl Front {
    fn is_chat(&self) -> bool {
        matches!(self, Front::Chat)
    }
}

/// A routed chat request.
pub struct Call<'a> {
    /// The Chat Completions body (the client's, or translated from a Responses request).
    pub body: &'a [u8],
    pub req: ChatRequest<'a>,
    /// Where to send it, best first: later candidates are fallbacks when one fails before the
    /// first response byte.
    pub targets: Vec<Candidate>,
    pub front: Front,
    /// Request headers to send upstream (content type, accept, user agent).
    pub headers: Vec<(&'static str, String)>,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Upstream response headers that carry the provider's request id, by wire.
const UPSTREAM_ID_HEADERS: &[&str] = &["x-request-id", "request-id", "x-amzn-requestid"];

/// An upstream failure another candidate may not share: unreachable, overloaded, rate-limited,
/// or not configured. Client errors (400s) would fail the same way anywhere.
fn worth_falling_back(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
}

/// Serve `call` and write the answer to the client.
pub async fn serve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    call: Call<'_>,
) -> Result<(), ApiError> {
    let Call { body, mut req, targets, mut front, headers } = call;
    let n = targets.len();
    for (i, target) in targets.into_iter().enumerate() {
        let last = i + 1 == n;
        ctx.provider = Some(target.provider.clone());
        ctx.model = Some(target.model.clone());
        if let Some(route) = ctx.route_info.as_mut() {
            route.tier = target.tier.unwrap_or(route.tier);
        }
        ctx.fallbacks = i as u32;
        if target.provider.kind == Kind::Mock {
            return serve_mock(shared, session, ctx, &req, &target.model, &mut front).await;
        }
        let wire = Wire::of(target.provider.kind);
        let sent = send(shared, ctx, body, &mut req, &target, wire, &headers).await;
        let ex = match sent {
            Err(e) if !last && worth_falling_back(e.status) => {
                log::warn!("request {}: `{}` failed ({e}); falling back", ctx.request_id, target.provider.name);
                ctx.upstream_slot = None;
                continue;
            }
            Err(e) => return Err(e),
            Ok(ex) if !last && worth_falling_back(ex.status()) => {
                log::warn!(
                    "request {}: `{}` answered {}; falling back",
                    ctx.request_id,
                    target.provider.name,
                    ex.status()
                );
                // The answer is dropped: so is its hold on the provider's calls in flight.
                ctx.upstream_slot = None;
                continue;
            }
            Ok(ex) => ex,
        };
        let opts = ResponseOptions {
            id: format!("chatcmpl-{}", ctx.request_id.trim_start_matches("req_")),
            created: now_secs(),
            model: target.model.clone(),
            include_usage: req.client_wants_usage || !front.is_chat(),
            max_event: shared.runtime.load().config.upstream.max_response_bytes,
        };
        return answer(shared, session, ctx, ex, &target.provider, wire, req.stream, opts, &mut front).await;
    }
    Err(ApiError::internal("no route candidate"))
}

/// The built-in mock provider answers locally, in the front's shape.
async fn serve_mock(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &ChatRequest<'_>,
    model: &str,
    front: &mut Front,
) -> Result<(), ApiError> {
    let max_event = shared.runtime.load().config.upstream.max_response_bytes;
    let include_usage = req.client_wants_usage || !front.is_chat();
    let input = MockInput::from_request(&req.object);
    ctx.usage = Some(input.usage());
    let created = now_secs();
    if !req.stream {
        let whole = mock::completion(&input, model, created);
        return deliver_whole(session, ctx, front, whole, None).await;
    }
    let events = mock::stream_events(&input, model, created, include_usage);
    let source = Source::Local(events.into_iter().map(Bytes::from).collect());
    let tap: Box<dyn StreamTranscoder> = Box::new(OpenAiStreamTap::new(false, max_event));
    let head = stream_head(ctx, None)?;
    forward::relay_stream(shared, session, ctx, source, with_front(tap, front, max_event), head, front.is_chat()).await
}

/// Build the upstream request for one candidate and send it (with retries across its hosts).
async fn send(
    shared: &Shared,
    ctx: &mut RequestCtx,
    body: &[u8],
    req: &mut ChatRequest<'_>,
    target: &Candidate,
    wire: Option<Wire>,
    headers: &[(&'static str, String)],
) -> Result<Exchange, ApiError> {
    let model = &target.model;
    let stream = req.stream;
    let (upstream_body, upstream_path, mut upstream_headers) = match wire {
        None => (req.to_upstream(model), None, Vec::new()),
        Some(w) => {
            let up = w.request(body, &RequestOptions { model, stream })?;
            (up.body, Some(up.path), up.headers)
        }
    };
    // The translator's headers (e.g. Bedrock's event-stream `accept`) win over the defaults.
    let defaults: Vec<(&'static str, String)> =
        headers.iter().filter(|(n, _)| !upstream_headers.iter().any(|(t, _)| t == n)).cloned().collect();
    upstream_headers.extend(defaults);
    let prov = target.provider.clone();
    let path_model = model.clone();
    let path = move |h: &Host| match &upstream_path {
        Some(p) => format!("{}{p}", h.base_path),
        None => prov.chat_path(h, &path_model),
    };
    let plan = Plan {
        method: "POST",
        path: &path,
        headers: upstream_headers,
        passthrough_headers: Vec::new(),
        body: Bytes::from(upstream_body),
        credential: UpstreamCredential::of(&target.key),
    };
    forward::send(shared, ctx, &target.provider, &plan).await
}

/// Relay the upstream's answer: errors in the OpenAI shape, whole bodies and streams translated
/// for the provider's wire and the client's front.
#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
    provider: &Arc<Provider>,
    wire: Option<Wire>,
    stream: bool,
    opts: ResponseOptions,
    front: &mut Front,
) -> Result<(), ApiError> {
    let status = ex.status();
    let limit = opts.max_event;
    let max_event = opts.max_event;
    let include_usage = opts.include_usage;
    if status >= 400 {
        let body = ex.body(limit).await.map_err(|f| f.into_api_error(&provider.name))?;
        let retry_after = ex.header("retry-after").map(str::to_string);
        return Err(match wire {
            Some(w) => w.error(status, &body, retry_after.as_deref()),
            // An OpenAI-shaped error is relayed as the provider wrote it (its type and code matter
            // to clients), except when the provider rejects the gateway's own key: that is a
            // gateway misconfiguration and its message may quote part of that key.
            None if front.is_chat() && !matches!(status, 401 | 403) && forward::is_openai_error(&body) => {
                return forward::write_whole(shared, session, ctx, ex, status, body).await;
            }
            None => forward::upstream_error(status, &body, retry_after.as_deref(), &provider.name),
        });
    }
    let streamed = match wire {
        Some(_) => stream,
        None => ex.is_event_stream(),
    };
    if !streamed {
        let body = ex.body(limit).await.map_err(|f| f.into_api_error(&provider.name))?;
        let (chat_body, usage) = match wire {
            Some(w) => {
                let t = w.response(&body, &opts)?;
                (t.body, t.usage)
            }
            None => {
                let u = usage::from_openai_body(&body);
                if front.is_chat() {
                    ctx.usage = u;
                    return forward::write_whole(shared, session, ctx, ex, status, body).await;
                }
                (body, u)
            }
        };
        ctx.usage = usage;
        let upstream_id = upstream_id(&ex);
        release(shared, ex, provider).await;
        return deliver_whole(session, ctx, front, chat_body, upstream_id).await;
    }
    let transcoder: Box<dyn StreamTranscoder> = match wire {
        Some(w) => w.stream(opts),
        None => Box::new(OpenAiStreamTap::new(!include_usage, max_event)),
    };
    let head = stream_head(ctx, upstream_id(&ex).as_deref())?;
    let source = Source::Upstream(Box::new(ex), provider.clone());
    forward::relay_stream(shared, session, ctx, source, with_front(transcoder, front, max_event), head, front.is_chat())
        .await
}

/// The provider stage, followed by the Responses stage for that front.
fn with_front(transcoder: Box<dyn StreamTranscoder>, front: &Front, max_event: usize) -> Box<dyn StreamTranscoder> {
    match front {
        Front::Chat => transcoder,
        Front::Responses { meta, id } => {
            Box::new(Chain::new(transcoder, responses::stream((**meta).clone(), id, now_secs(), max_event)))
        }
    }
}

/// The head of a stream the gateway frames itself.
fn stream_head(ctx: &RequestCtx, upstream_id: Option<&str>) -> Result<ResponseHeader, ApiError> {
    let mut h = respond::head(200, ctx).map_err(|e| ApiError::internal(e.to_string()))?;
    let _ = h.insert_header("content-type", "text/event-stream; charset=utf-8");
    if let Some(id) = upstream_id {
        let _ = h.insert_header("x-upstream-request-id", id);
    }
    Ok(h)
}

fn upstream_id(ex: &Exchange) -> Option<String> {
    UPSTREAM_ID_HEADERS.iter().find_map(|h| ex.header(h)).map(str::to_string)
}

async fn release(shared: &Shared, ex: Exchange, provider: &Provider) {
    ex.release(&shared.connector, provider.timeouts.pool_idle).await;
}

/// A whole `chat.completion` body, answered in the front's shape.
async fn deliver_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    front: &mut Front,
    chat_body: Vec<u8>,
    upstream_id: Option<String>,
) -> Result<(), ApiError> {
    let body = match front {
        Front::Chat => chat_body,
        Front::Responses { meta, id } => responses::from_chat(&chat_body, meta, id, now_secs())?,
    };
    let extra: Vec<(&'static str, String)> = upstream_id.map(|v| ("x-upstream-request-id", v)).into_iter().collect();
    let _ = respond::json(session, ctx, 200, body, &extra).await;
    Ok(())
}
