//! The per-request context: what each phase decided, read by later phases and by `logging`.

use super::metering::Reservation;
use super::routing::RouteInfo;
use crate::upstream::Provider;
use filters::meta::AgentMeta;
use filters::usage::Usage;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RequestCtx {
    pub started: Instant,
    pub request_id: String,
    pub route: &'static str,
    pub principal: Option<String>,
    pub provider: Option<Arc<Provider>>,
    /// The model the upstream saw.
    pub model: Option<String>,
    pub status: u16,
    pub error: Option<String>,
    /// The error's OpenAI `code` (or `type`), a bounded label for the errors metric.
    pub error_code: Option<&'static str>,
    /// The proxy that served the request, once known (a configured id: a bounded label).
    pub proxy: Option<String>,
    pub usage: Option<Usage>,
    pub meta: AgentMeta,
    pub upstream_latency: Option<Duration>,
    pub first_token: Option<Duration>,
    /// A response header has gone to the client; errors now end the stream instead.
    pub response_started: bool,
    pub attempts: u32,
    /// `auto` routing: what was decided and why.
    pub route_info: Option<RouteInfo>,
    /// Route candidates that failed before this one answered.
    pub fallbacks: u32,
    /// What the request reserved on its budgets and limits, settled in `logging`.
    pub meter: Option<Reservation>,
    /// `x-ratelimit-*` headers for the response.
    pub rate_headers: Vec<(&'static str, String)>,
    /// What the request cost, in nano-dollars (set in `logging`).
    pub cost_nanos: Option<u64>,
    /// The gateway's own budget or rate limit refused the request.
    pub limit_rejected: bool,
    /// The client's address, for the audit trail.
    pub client: Option<String>,
    /// This request's span in the caller's trace (or a new one), when traces are exported.
    pub trace: Option<filters::trace::SpanContext>,
    /// The `traceparent` sent upstream: the gateway's span, or without tracing the caller's
    /// own (valid) header unchanged.
    pub upstream_traceparent: Option<String>,
    /// Wall-clock start, for the span.
    pub started_unix_nanos: u64,
    /// This request's slot among the node's requests in flight.
    pub admission: Option<super::admission::Slot>,
    /// The upstream call's slot among its provider's calls in flight.
    pub upstream_slot: Option<super::admission::Slot>,
    /// The named provider key the upstream call used (its name; `None`: the provider's own).
    pub provider_key: Option<String>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            route: "unknown",
            principal: None,
            provider: None,
            model: None,
            status: 0,
            error: None,
            error_code: None,
            proxy: None,
            usage: None,
            meta: AgentMeta::default(),
            upstream_latency: None,
            first_token: None,
            response_started: false,
            attempts: 0,
            route_info: None,
            fallbacks: 0,
            meter: None,
            rate_headers: Vec::new(),
            cost_nanos: None,
            limit_rejected: false,
            client: None,
            trace: None,
            upstream_traceparent: None,
            provider_key: None,
            admission: None,
            upstream_slot: None,
            started_unix_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
