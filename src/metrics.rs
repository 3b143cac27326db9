//! Prometheus metrics. Labels are bounded: route, provider, configured model (or `other`),
//! status code — never a user, key or raw client string.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub agent_executions: IntCounterVec,
    /// Requests refused by a budget or rate limit, by scope kind, what ran out and proxy.
    pub budget_rejections: IntCounterVec,
    /// Error answers (and streams ended by an error) by route, provider, model, proxy and code.
    pub errors: IntCounterVec,
    /// Spend in US dollars by provider and model.
    pub cost: CounterVec,
    /// LLM requests in flight on this node.
    pub requests_in_flight: IntGauge,
    /// Agent ids seen so far; past `MAX_AGENT_LABELS` new ones are labelled `other`.
    agents: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct `external_agent_id` label values kept before new ones collapse into `other`.
const MAX_AGENT_LABELS: usize = 500;

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route, provider, model and status"),
            &["route", "provider", "model", "proxy", "status", "external_agent_id"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Whole request latency").buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "provider", "model", "proxy", "status"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new("upstream_header_seconds", "Time from sending upstream to its response header")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "model"],
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new("time_to_first_token_seconds", "Time from request to the first streamed event")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "model"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("tokens_total", "Tokens by provider, model and kind (prompt, completion, cached, reasoning)"),
            &["provider", "model", "proxy", "kind"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("upstream_errors_total", "Failed upstream attempts by provider and reason"),
            &["provider", "reason"],
        )?;
        let agent_executions = IntCounterVec::new(
            Opts::new("agent_executions_total", "Requests carrying an execution id, by agent"),
            &["external_agent_id"],
        )?;
        let budget_rejections = IntCounterVec::new(
            Opts::new(
                "budget_rejections_total",
                "Requests refused by a budget or rate limit (scope: key, group, proxy; metric: requests, tokens, cost)",
            ),
            &["scope", "metric", "proxy"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Error answers by route, provider, model, proxy and OpenAI error code"),
            &["route", "provider", "model", "proxy", "code"],
        )?;
        let cost = CounterVec::new(
            Opts::new("cost_usd_total", "Spend in US dollars by provider, model and proxy"),
            &["provider", "model", "proxy"],
        )?;
        let requests_in_flight = IntGauge::new("requests_in_flight", "LLM requests in flight on this node")?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        for c in [&requests, &tokens, &upstream_errors, &agent_executions, &budget_rejections, &errors] {
            registry.register(Box::new(c.clone()))?;
        }
        for h in [&duration, &upstream_duration, &ttft] {
            registry.register(Box::new(h.clone()))?;
        }
        Ok(Metrics {
            registry,
            requests,
            duration,
            upstream_duration,
            ttft,
            tokens,
            upstream_errors,
            agent_executions,
            budget_rejections,
            errors,
            cost,
            requests_in_flight,
            agents: Default::default(),
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Metrics {
    /// The `external_agent_id` label for a client-sent agent id: the id itself while it is
    /// well-formed and among the first `MAX_AGENT_LABELS` seen, so series stay bounded.
    pub fn agent_label(&self, agent: Option<&str>) -> String {
        let Some(a) = agent else { return String::new() };
        if a.len() > 64 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
            return "invalid".into();
        }
        let Ok(mut seen) = self.agents.lock() else {
            return "other".into();
        };
        if seen.contains(a) || (seen.len() < MAX_AGENT_LABELS && seen.insert(a.to_string())) {
            a.to_string()
        } else {
            "other".into()
        }
    }
}
