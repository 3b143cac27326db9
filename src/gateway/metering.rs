//! Budgets, rate limits and usage against the shared state store: a request reserves before it
//! goes upstream and settles in `logging`, once its real usage is known.
//!
//! The decisions (what to charge, how to answer a rejection) are `filters::meter`; this module
//! does the store round trips and the fail-open fallback: when Redis is unreachable and the
//! deployment fails open, each node enforces the same limits on local counters and replays what
//! it counted into Redis once it answers again.

use super::ctx::RequestCtx;
use super::runtime::{Principal, ProxyPolicy, Runtime};
use super::Shared;
use crate::state::{Applied, MemoryStore, StateError, StateStore, Window, WindowOp, WindowResult};
use filters::meter::{
    self, Charge, CounterState, Estimate, HistoryField, Metric, Period, Scope, ScopeKind, HISTORY_HOURS,
};
use filters::ApiError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// After a failed store call, how long requests go straight to local counters (failing open),
/// so an outage costs one operation timeout per interval instead of one per request.
const RETRY_STORE_AFTER: Duration = Duration::from_secs(1);

/// Counter changes kept for replay during an outage; past this the oldest are dropped (the
/// limits were enforced locally anyway; only the shared totals lose them).
const MAX_PENDING: usize = 100_000;

/// Usage-history buckets are one hour long.
pub(crate) const HOUR: Window = Window::Fixed(Duration::from_secs(3600));

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn window(period: Period) -> Window {
    period.fixed().map_or(Window::Month, Window::Fixed)
}

/// What a request reserved, settled in `logging`.
#[derive(Debug)]
pub struct Reservation {
    charges: Vec<Charge>,
    /// What was reserved; kept when a stream ends without reporting its usage.
    estimate: Estimate,
    /// Whose usage history the request is recorded in: scope, meter id, and the principal's
    /// name (for the per-day report).
    history: Option<(ScopeKind, String, String)>,
}

/// The store client for budgets and limits, with the local fallback used while failing open.
pub struct Meter {
    store: Arc<dyn StateStore>,
    fail_open: bool,
    local: MemoryStore,
    pending: Mutex<Vec<WindowOp>>,
    skip_store_until_ms: AtomicU64,
}

impl Meter {
    pub fn new(store: Arc<dyn StateStore>, fail_open: bool) -> Self {
        Meter {
            store,
            fail_open,
            local: MemoryStore::new(""),
            pending: Mutex::new(Vec::new()),
            skip_store_until_ms: AtomicU64::new(0),
        }
    }

    /// Applies a batch to the shared store; failing open, to local counters when the store is
    /// unreachable (the batch is then queued for replay).
    async fn apply(&self, ops: &[WindowOp]) -> Result<Applied, StateError> {
        if ops.is_empty() {
            return Ok(Applied { allowed: true, results: Vec::new() });
        }
        let now = now_ms();
        if self.fail_open && now < self.skip_store_until_ms.load(Ordering::Relaxed) {
            return self.apply_locally(ops, now).await;
        }
        self.replay_pending().await;
        match self.store.window_apply(ops).await {
            Err(StateError::Unavailable(m)) if self.fail_open => {
                if self.skip_store_until_ms.swap(now + millis(RETRY_STORE_AFTER), Ordering::Relaxed) <= now {
                    log::warn!("state store unavailable ({m}); enforcing limits on this node's counters");
                }
                self.apply_locally(ops, now).await
            }
            other => other,
        }
    }

    async fn apply_locally(&self, ops: &[WindowOp], now: u64) -> Result<Applied, StateError> {
        let applied = self.local.window_apply(ops).await?;
        if applied.allowed {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.extend(ops.iter().map(|op| WindowOp { limit: None, at_ms: Some(now), ..op.clone() }));
            if pending.len() > MAX_PENDING {
                let excess = pending.len() - MAX_PENDING;
                pending.drain(..excess);
            }
        }
        Ok(applied)
    }

    /// Replays changes counted locally during an outage into the store, each in the window it
    /// happened in. Changes to one counter in one window are summed, and a batch holds each key
    /// once, as `window_apply` requires.
    async fn replay_pending(&self) {
        let queued = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if queued.is_empty() {
            return;
        }
        let mut merged: Vec<WindowOp> = Vec::new();
        let mut index: HashMap<(String, Window, u64), usize> = HashMap::new();
        for op in queued {
            let at = op.at_ms.unwrap_or(0);
            let bucket = match op.window {
                Window::Fixed(d) => at - at % millis(d).max(1),
                // Months start at midnight UTC, so ops of one day always share a month.
                Window::Month => at - at % 86_400_000,
            };
            match index.get(&(op.key.clone(), op.window, bucket)) {
                Some(&i) => merged[i].amount = merged[i].amount.saturating_add(op.amount),
                None => {
                    index.insert((op.key.clone(), op.window, bucket), merged.len());
                    merged.push(op);
                }
            }
        }
        let mut batches: Vec<Vec<WindowOp>> = Vec::new();
        for op in merged {
            match batches.iter_mut().find(|b| b.iter().all(|o| o.key != op.key)) {
                Some(b) => b.push(op),
                None => batches.push(vec![op]),
            }
        }
        let mut left = batches.into_iter();
        let mut replayed = 0usize;
        while let Some(batch) = left.next() {
            if let Err(e) = self.store.window_apply(&batch).await {
                log::warn!("state store: replaying counters failed ({e}); will retry");
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let mut back: Vec<WindowOp> = batch.into_iter().chain(left.flatten()).collect();
                back.append(&mut pending);
                *pending = back;
                return;
            }
            replayed += batch.len();
        }
        log::info!("state store answers again: replayed {replayed} counters counted during the outage");
    }

    pub(crate) async fn read(&self, key: &str, window: Window, count: usize) -> Result<Vec<u64>, StateError> {
        if self.fail_open && now_ms() < self.skip_store_until_ms.load(Ordering::Relaxed) {
            return self.local.window_history(key, window, count).await;
        }
        match self.store.window_history(key, window, count).await {
            Err(StateError::Unavailable(_)) if self.fail_open => self.local.window_history(key, window, count).await,
            other => other,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The scopes whose limits apply to `principal` on `proxy`, innermost first.
fn scopes<'a>(rt: &'a Runtime, principal: &'a Principal, proxy: &'a ProxyPolicy) -> Vec<Scope<'a>> {
    let mut out = Vec::new();
    if let Principal::Granted(k) = principal {
        out.push(Scope { kind: k.scope, id: &k.meter_id, name: &k.name, limits: &k.limits });
        for g in &k.groups {
            if let Some(limits) = rt.group_limits.get(g) {
                out.push(Scope { kind: ScopeKind::Group, id: g, name: g, limits });
            }
        }
    }
    out.push(Scope { kind: ScopeKind::Proxy, id: &proxy.id, name: &proxy.id, limits: &proxy.limits });
    out.retain(|s| !s.limits.is_empty());
    out
}

fn states(results: &[WindowResult]) -> Vec<CounterState> {
    results.iter().map(|r| CounterState { allowed: r.allowed, total: r.total, reset_after: r.reset_after }).collect()
}

/// Reserves this request on every limit that applies (all or nothing), or answers 429. `target`
/// is the first `(provider, model)` the request will try, for the cost estimate.
pub async fn reserve(
    shared: &Shared,
    rt: &Runtime,
    ctx: &mut RequestCtx,
    principal: &Principal,
    proxy: &ProxyPolicy,
    body: &[u8],
    target: Option<(&str, &str)>,
) -> Result<(), ApiError> {
    let history = match principal {
        Principal::Granted(k) => Some((k.scope, k.meter_id.clone(), k.name.clone())),
        Principal::ProviderKey(_) => None,
    };
    let scopes = scopes(rt, principal, proxy);
    if scopes.is_empty() {
        ctx.meter = Some(Reservation { charges: Vec::new(), estimate: Estimate::default(), history });
        return Ok(());
    }
    let price = target.and_then(|(p, m)| rt.prices.get(p, m));
    let estimate =
        meter::estimate(body.len(), meter::max_output_tokens(body), rt.config.metering.default_output_tokens, price);
    let charges = meter::plan(&scopes, &estimate);
    let ops = reservation_ops(&charges);
    let applied = shared.meter.apply(&ops).await.map_err(|e| {
        ApiError::unavailable("state_unavailable", format!("cannot check budgets and rate limits: {e}"))
    })?;
    let states = states(&applied.results);
    ctx.rate_headers = meter::rate_headers(&charges, &states);
    if !applied.allowed {
        ctx.limit_rejected = true;
        let err = meter::rejection(&charges, &states);
        if let Some((c, _)) = charges.iter().zip(&states).find(|(_, s)| !s.allowed) {
            let labels = [c.scope.as_str(), c.metric.as_str(), proxy.id.as_str()];
            shared.metrics.budget_rejections.with_label_values(&labels).inc();
        }
        return Err(err);
    }
    ctx.meter = Some(Reservation { charges, estimate, history });
    Ok(())
}

/// The store batch that reserves `charges`, each under its limit.
pub fn reservation_ops(charges: &[Charge]) -> Vec<WindowOp> {
    charges
        .iter()
        .map(|c| WindowOp {
            key: c.counter.clone(),
            window: window(c.period),
            amount: i64::try_from(c.amount).unwrap_or(i64::MAX),
            limit: Some(c.limit),
            keep: Duration::ZERO,
            at_ms: None,
        })
        .collect()
}

/// The store batch that settles `charges` at the real `tokens` and `cost` (empty for a request
/// no limit applies to).
pub fn settlement_ops(charges: &[Charge], tokens: u64, cost: u64) -> Vec<WindowOp> {
    meter::settlement(charges, tokens, cost)
        .into_iter()
        .map(|(i, delta)| WindowOp {
            key: charges[i].counter.clone(),
            window: window(charges[i].period),
            amount: delta,
            limit: None,
            keep: Duration::ZERO,
            at_ms: None,
        })
        .collect()
}

/// The cost of what the request used, by the price of the model that answered.
pub fn cost_nanos(rt: &Runtime, ctx: &RequestCtx) -> u64 {
    match (&ctx.provider, &ctx.model, &ctx.usage) {
        (Some(p), Some(m), Some(u)) => rt.prices.get(&p.name, m).map_or(0, |price| price.cost_nanos(u)),
        _ => 0,
    }
}

/// Settles the reservation with the real usage (one store batch, only when limits apply) and
/// adds the request to the node's usage buffer (`org_usage`: `/v1/usage` history and the admin
/// report, written every few seconds). Runs in `logging`, after the client has its answer.
pub async fn settle(shared: &Shared, ctx: &mut RequestCtx) {
    let Some(r) = ctx.meter.take() else { return };
    let usage = ctx.usage.unwrap_or_default();
    let (tokens, cost) = match ctx.usage {
        Some(u) => (u.prompt_tokens.saturating_add(u.completion_tokens), ctx.cost_nanos.unwrap_or(0)),
        // An answer went out but its usage never came (the client left mid-stream, or the
        // provider sent none): the estimate stands rather than making the request free.
        None if ctx.response_started && (200..300).contains(&ctx.status) => (r.estimate.tokens, r.estimate.cost_nanos),
        // Refused or failed before an answer: nothing was used.
        None => (0, 0),
    };
    let ops = settlement_ops(&r.charges, tokens, cost);
    if !ops.is_empty() {
        if let Err(e) = shared.meter.apply(&ops).await {
            log::warn!("request {}: usage not recorded in the state store: {e}", ctx.request_id);
        }
    }
    if let Some((kind, id, name)) = &r.history {
        let model = match (&ctx.provider, &ctx.model) {
            (Some(p), Some(m)) => Some(format!("{}:{m}", p.name)),
            _ => None,
        };
        shared.usage_index.add(*kind, id, name, model.as_deref(), &usage, cost);
    }
}

/// `GET /v1/usage`: the caller's own usage over the last 24 hours, and each budget and rate
/// limit that applies to it with what is left.
pub async fn report(
    shared: &Shared,
    rt: &Runtime,
    principal: &Principal,
    proxy: &ProxyPolicy,
) -> Result<Vec<u8>, ApiError> {
    let unavailable = |e: StateError| ApiError::unavailable("state_unavailable", format!("cannot read usage: {e}"));
    // This node's last seconds first; other nodes' follow within their flush interval.
    shared.usage_index.flush(&*shared.state).await;
    let mut last24h = serde_json::Map::new();
    if let Principal::Granted(k) = principal {
        for f in HistoryField::ALL {
            let hours = shared.meter.read(&meter::history_key(k.scope, &k.meter_id, f), HOUR, HISTORY_HOURS).await;
            let total: u64 = hours.map_err(unavailable)?.iter().sum();
            let (name, value) = match f {
                HistoryField::Requests => ("requestCount", serde_json::json!(total)),
                HistoryField::InputTokens => ("inputTokens", serde_json::json!(total)),
                HistoryField::OutputTokens => ("outputTokens", serde_json::json!(total)),
                HistoryField::Cost => ("costUsd", serde_json::json!(round_usd(meter::nanos_to_usd(total)))),
            };
            last24h.insert(name.into(), value);
        }
    }
    let mut budgets = Vec::new();
    let mut rate_limits = Vec::new();
    for s in scopes(rt, principal, proxy) {
        for l in s.limits {
            let w = window(l.window);
            let resets = w.reset_after().as_secs();
            let used = |metric: Metric| {
                let key = meter::counter_key(s.kind, s.id, metric);
                async move { shared.meter.read(&key, w, 1).await.map(|v| v.first().copied().unwrap_or(0)) }
            };
            if let Some(max) = l.cost_usd {
                let spent = meter::nanos_to_usd(used(Metric::Cost).await.map_err(unavailable)?);
                budgets.push(serde_json::json!({
                    "scope": s.kind.as_str(), "id": s.name, "window": l.window.as_str(),
                    "maxCostUsd": max, "spentCostUsd": round_usd(spent),
                    "remainingCostUsd": round_usd((max - spent).max(0.0)), "resetsInSeconds": resets,
                }));
            }
            if l.requests.is_some() || l.tokens.is_some() {
                let mut entry = serde_json::json!({
                    "scope": s.kind.as_str(), "id": s.name, "window": l.window.as_str(),
                    "resetsInSeconds": resets,
                });
                if let Some(max) = l.requests {
                    entry["maxRequests"] = max.into();
                    entry["requests"] = used(Metric::Requests).await.map_err(unavailable)?.into();
                }
                if let Some(max) = l.tokens {
                    entry["maxTokens"] = max.into();
                    entry["tokens"] = used(Metric::Tokens).await.map_err(unavailable)?.into();
                }
                rate_limits.push(entry);
            }
        }
    }
    let body = serde_json::json!({
        "object": "usage",
        "principal": principal.label(),
        "usage": {"last24h": last24h},
        "budgets": budgets,
        "rateLimits": rate_limits,
    });
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// Dollars to a millionth of a cent, so that a report does not show float noise.
fn round_usd(usd: f64) -> f64 {
    (usd * 1e8).round() / 1e8
}
