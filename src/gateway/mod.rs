//! The Pingora `ProxyHttp` implementation. Each request is one walk through the phases:
//! `request_filter` routes, authenticates, reads and rewrites the body, and owns the upstream
//! exchange (see `upstream::exchange` for why); `logging` records metrics and the access log.

pub mod admission;
pub mod chat;
pub mod ctx;
pub mod forward;
pub mod handlers;
pub mod metering;
pub mod native;
pub mod oauth;
pub mod oidc;
pub mod org_usage;
pub mod overrides;
pub mod personal_keys;
pub mod provider_keys;
pub mod reread;
pub mod respond;
pub mod routing;
pub mod runtime;

use crate::keys::KeyLookup;
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::upstream::dns::Resolver;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::RequestCtx;
use filters::endpoint::{self, Endpoint};
use filters::meta::AgentMeta;
use filters::ApiError;
use pingora::connectors::http::Connector;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use runtime::Runtime;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// State shared by every request.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub state: Arc<dyn StateStore>,
    pub stored_keys: KeyLookup,
    /// Access tokens and stored clients of the OAuth server.
    pub oauth: crate::oauth::Lookups,
    /// `state.on_redis_error = "fail_open"`.
    pub fail_open: bool,
    /// Budgets and rate limits (the state store, with the fail-open fallback).
    pub meter: metering::Meter,
    /// The hash-chained audit trail of security decisions.
    pub audit: crate::audit::AuditLog,
    /// Request spans to the OpenTelemetry collector.
    pub tracer: crate::telemetry::Tracer,
    pub connector: Connector,
    pub resolver: Resolver,
    pub metrics: Metrics,
    /// Serve `/metrics` on the client listener too (when `admin_listen == listen`).
    pub metrics_on_main: bool,
    /// LLM requests in flight on this node (`server.max_in_flight`).
    pub requests_in_flight: Arc<admission::Gate>,
    /// Which (day, principal, model) this node has indexed for the usage report.
    pub usage_index: Arc<org_usage::Index>,
    request_seq: AtomicU64,
    request_salt: u32,
}

impl Shared {
    pub fn new(runtime: Runtime, metrics: Metrics, state: Arc<dyn StateStore>) -> Self {
        let cfg = &runtime.config;
        let fail_open = cfg.state.on_redis_error == "fail_open";
        let metrics_on_main = cfg.server.admin_listen == cfg.server.listen;
        let resolver = Resolver::new(
            std::time::Duration::from_secs(cfg.upstream.dns_ttl_seconds),
            std::time::Duration::from_millis(cfg.upstream.connect_timeout_ms),
        );
        let tracer = crate::telemetry::Tracer::new(cfg.telemetry.otlp_endpoint.as_deref(), &cfg.telemetry.service_name);
        let mut opts = pingora::connectors::ConnectorOptions::new(128);
        opts.keepalive_pool_size = 1024;
        let requests_in_flight = admission::Gate::new(Some(metrics.requests_in_flight.clone()));
        Shared {
            requests_in_flight,
            usage_index: Arc::default(),
            runtime: ArcSwap::from_pointee(runtime),
            stored_keys: KeyLookup::new(state.clone()),
            oauth: crate::oauth::Lookups::new(state.clone()),
            meter: metering::Meter::new(state.clone(), fail_open),
            audit: crate::audit::AuditLog::disabled(),
            tracer,
            state,
            fail_open,
            connector: Connector::new(Some(opts)),
            resolver,
            metrics,
            metrics_on_main,
            request_seq: AtomicU64::new(0),
            request_salt: rand::random(),
        }
    }

    fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("req_{:08x}{:012x}", self.request_salt, n)
    }
}

pub struct Gateway {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        ctx.request_id = self.shared.next_request_id();
        if let Err(e) = self.dispatch(session, ctx).await {
            ctx.status = e.status;
            ctx.error = Some(e.message.clone());
            ctx.error_code = Some(e.code.unwrap_or(e.kind));
            if !ctx.response_started {
                // The client may already be gone; nothing else to do then.
                let _ = respond::error(session, ctx, &e).await;
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        // Every route is answered from request_filter, which owns the upstream exchange.
        Err(pingora::Error::explain(pingora::ErrorType::InternalError, "no upstream peer phase in portcullis"))
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        if ctx.meter.is_some() {
            ctx.cost_nanos = Some(metering::cost_nanos(&self.shared.runtime.load(), ctx));
        }
        self.record(ctx);
        metering::settle(&self.shared, ctx).await;
    }
}

impl Gateway {
    async fn dispatch(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
        ctx.client = session.client_addr().map(|a| a.to_string());
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let headers = &session.req_header().headers;
        if headers.keys().any(|k| AgentMeta::is_meta_header(k.as_str())) {
            ctx.meta = AgentMeta::from_headers(|name| headers.get(name).map(|v| v.as_bytes()));
        }
        let caller_trace = session.req_header().headers.get("traceparent");
        let incoming = caller_trace.and_then(|v| filters::trace::parse_traceparent(v.as_bytes()));
        if self.shared.tracer.enabled() {
            let span = filters::trace::SpanContext::start(incoming, rand::random(), rand::random());
            ctx.upstream_traceparent = Some(span.upstream_traceparent());
            ctx.trace = Some(span);
        } else if incoming.is_some() {
            ctx.upstream_traceparent = caller_trace.and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        let ep = endpoint::classify(&method, &path);
        ctx.route = ep.label();
        if matches!(ep, Endpoint::ChatCompletions { .. } | Endpoint::Responses { .. } | Endpoint::Passthrough { .. }) {
            let max = self.shared.runtime.load().config.server.max_in_flight;
            let Some(slot) = self.shared.requests_in_flight.try_enter(max) else {
                return Err(ApiError::unavailable(
                    "overloaded",
                    format!("this gateway node is at its limit of {max} requests in flight; retry shortly"),
                )
                .with_retry_after(1));
            };
            ctx.admission = Some(slot);
        }
        match ep {
            Endpoint::Health => self.ok_json(session, ctx, br#"{"status":"ok"}"#).await,
            Endpoint::Ready => match self.shared.state.ping().await {
                Ok(()) => self.ok_json(session, ctx, br#"{"status":"ready"}"#).await,
                // Failing open, a node serves through an outage; a 503 would make the load
                // balancer drain every node at once.
                Err(_) if self.shared.fail_open => {
                    self.ok_json(session, ctx, br#"{"status":"ready","state":"unavailable"}"#).await
                }
                Err(e) => Err(ApiError::unavailable("state_unavailable", format!("not ready: {e}"))),
            },
            Endpoint::Metrics if self.shared.metrics_on_main => {
                let body = self.shared.metrics.render();
                let mut h = respond::head(200, ctx).map_err(|e| ApiError::internal(e.to_string()))?;
                let _ = h.insert_header("content-type", "text/plain; version=0.0.4");
                let _ = h.insert_header("content-length", body.len().to_string());
                ctx.status = 200;
                ctx.response_started = true;
                if session.write_response_header(Box::new(h), false).await.is_ok() {
                    let _ = session.write_response_body(Some(body.into()), true).await;
                }
                Ok(())
            }
            Endpoint::Metrics | Endpoint::NotFound => {
                Err(ApiError::not_found(format!("no route for {method} {}", path.split('?').next().unwrap_or(""))))
            }
            Endpoint::MethodNotAllowed { allowed } => Err(ApiError::new(
                405,
                "invalid_request_error",
                Some("method_not_allowed"),
                format!("{method} is not allowed here; use {allowed}"),
            )),
            Endpoint::ChatCompletions { proxy } => handlers::chat(&self.shared, session, ctx, proxy).await,
            Endpoint::Responses { proxy } => handlers::responses(&self.shared, session, ctx, proxy).await,
            Endpoint::Models { proxy } => handlers::models(&self.shared, session, ctx, proxy).await,
            Endpoint::Usage => handlers::usage(&self.shared, session, ctx).await,
            Endpoint::PersonalKeys { provider } => {
                personal_keys::serve(&self.shared, session, ctx, &method, provider).await
            }
            Endpoint::OAuth(route) => oauth::serve(&self.shared, session, ctx, route).await,
            Endpoint::Admin if self.shared.metrics_on_main => {
                let body =
                    handlers::read_body(session, crate::admin::api::MAX_BODY, std::time::Duration::from_secs(10))
                        .await?;
                let h = &session.req_header().headers;
                let auth = h.get("authorization").map(|v| v.as_bytes().to_vec());
                let cookies: Vec<&str> = h.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).collect();
                let cookies = cookies.join("; ");
                let bare = path.split('?').next().unwrap_or_default();
                let resp = if crate::admin::console::handles(bare) {
                    crate::admin::console::serve(&self.shared, &method, &path, Some(&cookies), &body).await
                } else {
                    let a = crate::admin::api::serve(&self.shared, &method, &path, auth.as_deref(), &body).await;
                    crate::admin::response(a.status, "application/json", a.body)
                };
                respond::http_response(session, ctx, resp).await;
                Ok(())
            }
            Endpoint::Admin => {
                Err(ApiError::not_found("the admin console and API are on the admin listener (server.admin_listen)"))
            }
            Endpoint::Passthrough { provider, rest } => {
                handlers::passthrough(&self.shared, session, ctx, &method, provider, rest).await
            }
        }
    }

    async fn ok_json(&self, session: &mut Session, ctx: &mut RequestCtx, body: &[u8]) -> Result<(), ApiError> {
        let _ = respond::json(session, ctx, 200, body.to_vec(), &[]).await;
        Ok(())
    }

    fn record(&self, ctx: &RequestCtx) {
        let m = &self.shared.metrics;
        let provider = ctx.provider.as_ref().map_or("", |p| p.name.as_str());
        let model = match (&ctx.provider, &ctx.model) {
            (Some(p), Some(model)) => p.model_label(model),
            _ => "",
        };
        let status = if ctx.status == 0 { 499 } else { ctx.status };
        let status_s = status.to_string();
        let agent = m.agent_label(ctx.meta.agent_id.as_deref());
        let proxy = ctx.proxy.as_deref().unwrap_or("");
        m.requests.with_label_values(&[ctx.route, provider, model, proxy, &status_s, &agent]).inc();
        let elapsed = ctx.started.elapsed();
        m.duration.with_label_values(&[ctx.route, provider, model, proxy, &status_s]).observe(elapsed.as_secs_f64());
        if let Some(code) = ctx.error_code {
            m.errors.with_label_values(&[ctx.route, provider, model, proxy, code]).inc();
        }
        if let Some(u) = ctx.upstream_latency {
            m.upstream_duration.with_label_values(&[provider, model]).observe(u.as_secs_f64());
        }
        if let Some(t) = ctx.first_token {
            m.ttft.with_label_values(&[provider, model]).observe(t.as_secs_f64());
        }
        if let Some(u) = &ctx.usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("cached", u.cached_tokens),
                ("reasoning", u.reasoning_tokens),
            ] {
                if n > 0 {
                    m.tokens.with_label_values(&[provider, model, proxy, kind]).inc_by(n);
                }
            }
        }
        if let Some(nanos) = ctx.cost_nanos.filter(|n| *n > 0) {
            m.cost.with_label_values(&[provider, model, proxy]).inc_by(filters::meter::nanos_to_usd(nanos));
        }
        if ctx.meta.execution_id.is_some() {
            m.agent_executions.with_label_values(&[&agent]).inc();
        }
        if self.shared.tracer.enabled() {
            self.shared.tracer.record(span(ctx, provider, status, elapsed));
        }
        // Security decisions go to the audit trail: refused credentials, denied access and the
        // gateway's own budget and rate-limit refusals (not a provider's 4xx relayed).
        let decision = match status {
            401 => Some("auth_failed"),
            403 => Some("access_denied"),
            429 if ctx.limit_rejected => Some("limit_exceeded"),
            _ => None,
        };
        if let Some(event) = decision {
            self.shared.audit.record(&serde_json::json!({
                "ts": crate::gateway::chat::now_secs(),
                "event": event,
                "request_id": ctx.request_id,
                "route": ctx.route,
                "client": ctx.client,
                "principal": ctx.principal,
                "proxy": ctx.proxy,
                "provider": provider,
                "code": ctx.error_code,
                "message": ctx.error,
            }));
        }
        log::info!(
            target: "access",
            "{}",
            serde_json::json!({
                "request_id": ctx.request_id,
                "route": ctx.route,
                "principal": ctx.principal,
                "proxy": ctx.proxy,
                "provider": provider,
                "provider_key": ctx.provider_key,
                "model": ctx.model,
                "status": status,
                "duration_ms": elapsed.as_secs_f64() * 1000.0,
                "upstream_header_ms": ctx.upstream_latency.map(|d| d.as_secs_f64() * 1000.0),
                "ttft_ms": ctx.first_token.map(|d| d.as_secs_f64() * 1000.0),
                "attempts": ctx.attempts,
                // `auto` decisions; `route` above is the endpoint.
                "routing": ctx.route_info.as_ref().map(|r| serde_json::json!({
                    "tier": r.tier.as_str(),
                    "score": r.score,
                    "classified": r.classified.as_str(),
                    "override": r.override_tier.map(|t| t.as_str()),
                    "policy_capped": r.policy_capped,
                    "fallbacks": ctx.fallbacks,
                })),
                "cost_usd": ctx.cost_nanos.map(filters::meter::nanos_to_usd),
                "usage": ctx.usage.map(|u| serde_json::json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cached_tokens": u.cached_tokens, "reasoning_tokens": u.reasoning_tokens})),
                "agent_id": ctx.meta.agent_id,
                "user_id": ctx.meta.user_id,
                "session_id": ctx.meta.session_id,
                "execution_id": ctx.meta.execution_id,
                "error": ctx.error,
            })
        );
    }
}

/// The request as an OpenTelemetry span with the `gen_ai.*` attributes.
fn span(ctx: &RequestCtx, provider: &str, status: u16, elapsed: std::time::Duration) -> filters::trace::Span {
    use filters::trace::{AttrValue, Span};
    let ids = ctx.trace.unwrap_or_else(|| filters::trace::SpanContext::start(None, rand::random(), rand::random()));
    let operation = match ctx.route {
        "chat_completions" | "responses" => "chat",
        other => other,
    };
    let model = ctx.model.as_deref().unwrap_or_default();
    let end = ctx.started_unix_nanos.saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    let mut s = Span {
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent_span_id,
        name: if model.is_empty() { operation.to_string() } else { format!("{operation} {model}") },
        start_unix_nanos: ctx.started_unix_nanos,
        end_unix_nanos: end,
        error: (status >= 400).then(|| ctx.error.clone().unwrap_or_else(|| format!("HTTP {status}"))),
        attributes: Vec::with_capacity(16),
    };
    s.attr_str("gen_ai.operation.name", Some(operation));
    s.attr_str("gen_ai.provider.name", Some(provider));
    s.attr_str("gen_ai.request.model", Some(model));
    s.attr_str("gen_ai.conversation.id", ctx.meta.session_id.as_deref());
    s.attr_str("gen_ai.agent.id", ctx.meta.agent_id.as_deref());
    if let Some(u) = &ctx.usage {
        s.attr("gen_ai.usage.input_tokens", AttrValue::Int(i64::try_from(u.prompt_tokens).unwrap_or(i64::MAX)));
        s.attr("gen_ai.usage.output_tokens", AttrValue::Int(i64::try_from(u.completion_tokens).unwrap_or(i64::MAX)));
    }
    s.attr("http.response.status_code", AttrValue::Int(i64::from(status)));
    s.attr_str("portcullis.request_id", Some(&ctx.request_id));
    s.attr_str("portcullis.route", Some(ctx.route));
    s.attr_str("portcullis.proxy", ctx.proxy.as_deref());
    s.attr_str("portcullis.principal", ctx.principal.as_deref());
    s.attr_str("portcullis.user_id", ctx.meta.user_id.as_deref());
    s.attr_str("portcullis.execution_id", ctx.meta.execution_id.as_deref());
    if let Some(r) = &ctx.route_info {
        s.attr_str("portcullis.route.tier", Some(r.tier.as_str()));
    }
    if let Some(nanos) = ctx.cost_nanos {
        s.attr("portcullis.cost_usd", AttrValue::Float(filters::meter::nanos_to_usd(nanos)));
    }
    s
}
