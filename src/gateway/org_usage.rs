//! Usage history: per principal and hour for `GET /v1/usage`, and per principal, model and UTC
//! day for the admin API and console. Requests add to a per-node buffer (a map update, no store
//! round trip on the request path); every few seconds the buffer is written in one batch, to
//! hourly counters per principal and daily counters per (principal, model), with an index of
//! which (day, principal, model) have counters. A report flushes its own node first; others'
//! last seconds follow within `FLUSH_EVERY`, and a node that stops loses at most that much of
//! the history (never of budgets or limits, which are metered apart, per request).

use super::Shared;
use crate::state::{StateError, StateStore, Window, WindowOp};
use filters::meter::{self, HistoryField, ScopeKind};
use filters::usage::Usage;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Daily usage buckets.
pub const DAY: Window = Window::Fixed(Duration::from_secs(86_400));
/// Days of usage kept (and the most a report covers).
pub const KEEP_DAYS: u64 = 31;
/// Hash map of (day, principal, model) with counters.
const INDEX_MAP: &str = "usage_index";
/// How often a node writes its buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Distinct (principal, model) buffered at most; past it new ones wait for the next flush.
const MAX_PENDING: usize = 50_000;
/// (principal, model) entries per store batch: at most 8 counters each.
const FLUSH_CHUNK: usize = 100;

/// The hourly counters (per principal, summed over its models) and the daily ones (per
/// principal and model) that `batch` adds to.
fn flush_ops(batch: &[Pending]) -> Vec<WindowOp> {
    let mut hourly: HashMap<(ScopeKind, &str), [u64; 4]> = HashMap::new();
    for p in batch {
        let sum = hourly.entry((p.kind, p.meter_id.as_str())).or_default();
        sum.iter_mut().zip(p.amounts).for_each(|(a, b)| *a = a.saturating_add(b));
    }
    let hourly_ops = hourly.into_iter().flat_map(|((kind, id), amounts)| {
        HistoryField::ALL.iter().zip(amounts).filter(|(_, a)| *a > 0).map(move |(f, a)| WindowOp {
            key: meter::history_key(kind, id, *f),
            window: super::metering::HOUR,
            amount: i64::try_from(a).unwrap_or(i64::MAX),
            limit: None,
            keep: meter::HISTORY_KEEP,
            at_ms: None,
        })
    });
    let daily_ops = batch.iter().filter(|p| !p.model.is_empty()).flat_map(|p| {
        HistoryField::ALL.iter().zip(p.amounts).filter(|(_, a)| *a > 0).map(|(f, a)| WindowOp {
            key: meter::daily_key(p.kind, &p.meter_id, &p.model, *f),
            window: DAY,
            amount: i64::try_from(a).unwrap_or(i64::MAX),
            limit: None,
            keep: Duration::from_secs(KEEP_DAYS * 86_400),
            at_ms: None,
        })
    });
    hourly_ops.chain(daily_ops).collect()
}

fn today() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

fn day_string(day: u64) -> String {
    let (y, m, d) = crate::state::civil_from_days(i64::try_from(day).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Who used what, as the index stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
struct Entry {
    day: u64,
    scope: String,
    meter_id: String,
    /// The principal's name in logs (`ci`, `client:batch`, `corp:alice`).
    principal: String,
    /// `provider:model`.
    model: String,
}

/// The buffer's key of one (principal, model).
fn pending_key(kind: ScopeKind, meter_id: &str, model: &str) -> String {
    format!("{}|{meter_id}|{model}", kind.as_str())
}

/// Buffered usage of one (principal, model) since the last flush.
#[derive(Debug, Clone)]
struct Pending {
    kind: ScopeKind,
    meter_id: String,
    principal: String,
    /// `provider:model`; empty for a request that reached no model (hourly history only).
    model: String,
    /// By `HistoryField::ALL`.
    amounts: [u64; 4],
}

/// The node's buffer and the index entries it has written today.
#[derive(Debug, Default)]
pub struct Index {
    pending: Mutex<HashMap<String, Pending>>,
    written: Mutex<(u64, HashSet<String>)>,
}

impl Index {
    /// Add one request's usage, of `provider:model` when it reached one ([`Flusher`] writes it).
    pub fn add(&self, kind: ScopeKind, meter_id: &str, principal: &str, model: Option<&str>, usage: &Usage, cost: u64) {
        let model = model.unwrap_or_default();
        let key = pending_key(kind, meter_id, model);
        let Ok(mut pending) = self.pending.lock() else { return };
        let len = pending.len();
        let slot = match pending.get_mut(&key) {
            Some(p) => p,
            None if len >= MAX_PENDING => return,
            None => pending.entry(key).or_insert_with(|| Pending {
                kind,
                meter_id: meter_id.to_string(),
                principal: principal.to_string(),
                model: model.to_string(),
                amounts: [0; 4],
            }),
        };
        for (a, f) in slot.amounts.iter_mut().zip(HistoryField::ALL) {
            *a = a.saturating_add(f.amount(usage, cost));
        }
    }

    /// Write the buffer: the hourly and daily counters in one batch, then the index entries this
    /// node has not written today. On a store error the buffer is kept for the next flush.
    pub async fn flush(&self, store: &dyn StateStore) {
        let batch: Vec<Pending> = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => p.drain().map(|(_, v)| v).collect(),
            _ => return,
        };
        // Small batches: a store call that times out may still have run, so a retried batch can
        // count twice; keeping each one short keeps that window (and Redis's pauses) short.
        let mut chunks = batch.chunks(FLUSH_CHUNK);
        while let Some(chunk) = chunks.next() {
            match store.window_apply(&flush_ops(chunk)).await {
                Ok(_) => {
                    for p in chunk.iter().filter(|p| !p.model.is_empty()) {
                        self.note(store, p).await;
                    }
                }
                Err(e @ StateError::Unavailable(_)) => {
                    log::warn!("usage history not written (kept for the next try): {e}");
                    self.put_back(chunk.iter().chain(chunks.flatten()));
                    return;
                }
                // A counter the store refuses would fail every retry: drop this part, keep going.
                Err(e) => log::error!("usage history dropped for {} principals: {e}", chunk.len()),
            }
        }
    }

    fn put_back<'a>(&self, batch: impl Iterator<Item = &'a Pending>) {
        let Ok(mut pending) = self.pending.lock() else { return };
        for p in batch {
            let key = pending_key(p.kind, &p.meter_id, &p.model);
            match pending.get_mut(&key) {
                Some(q) => q.amounts.iter_mut().zip(p.amounts).for_each(|(a, b)| *a = a.saturating_add(b)),
                None => {
                    pending.insert(key, p.clone());
                }
            }
        }
    }

    /// Record that the principal used the model today, unless this node already did.
    async fn note(&self, store: &dyn StateStore, p: &Pending) {
        let day = today();
        let scope = p.kind.as_str().to_string();
        let field = format!("{day}|{scope}|{}|{}", p.meter_id, p.model);
        {
            let Ok(mut w) = self.written.lock() else { return };
            if w.0 != day {
                *w = (day, HashSet::new());
            }
            if !w.1.insert(field.clone()) {
                return;
            }
        }
        let entry =
            Entry { day, scope, meter_id: p.meter_id.clone(), principal: p.principal.clone(), model: p.model.clone() };
        let Ok(value) = serde_json::to_vec(&entry) else { return };
        // Not retried: the report misses the row only if no node indexed it.
        if let Err(e) = store.hset(INDEX_MAP, &field, &value).await {
            log::warn!("usage index not updated for {} / {}: {e}", entry.principal, entry.model);
        }
    }
}

/// The background service that writes every node's buffer every `FLUSH_EVERY`, and again as the
/// server shuts down gracefully (SIGTERM, an upgrade), so a restart loses none of it.
pub struct Flusher {
    pub shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Flusher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let store = self.shared.state.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => self.shared.usage_index.flush(&*store).await,
                _ = shutdown.changed() => break,
            }
        }
        // Requests still finishing in the grace period add to the buffer: keep writing it until
        // the runtime stops.
        loop {
            self.shared.usage_index.flush(&*store).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    pub day: String,
    pub principal: String,
    pub scope: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Usage over the last `days` UTC days (today included), newest day first and the most
/// expensive first within a day. Index entries past `KEEP_DAYS` are removed on the way.
pub async fn report(shared: &Shared, days: u64) -> Result<Vec<Row>, StateError> {
    let store = &*shared.state;
    shared.usage_index.flush(store).await;
    let days = days.clamp(1, KEEP_DAYS);
    let today = today();
    let mut wanted: BTreeMap<(String, String, String), (String, HashSet<u64>)> = BTreeMap::new();
    for (field, value) in store.hgetall(INDEX_MAP).await? {
        let Ok(e) = serde_json::from_slice::<Entry>(&value) else { continue };
        if e.day + KEEP_DAYS <= today {
            store.hdel(INDEX_MAP, &field).await?;
            continue;
        }
        if e.day + days > today {
            wanted
                .entry((e.scope, e.meter_id, e.model))
                .or_insert_with(|| (e.principal, HashSet::new()))
                .1
                .insert(e.day);
        }
    }
    let count = usize::try_from(days).unwrap_or(1);
    let mut rows = Vec::new();
    for ((scope, meter_id, model), (principal, on_days)) in wanted {
        let Some(kind) = ScopeKind::parse(&scope) else { continue };
        let mut series = Vec::with_capacity(4);
        for f in HistoryField::ALL {
            series.push(shared.meter.read(&meter::daily_key(kind, &meter_id, &model, f), DAY, count).await?);
        }
        for day in on_days {
            let back = usize::try_from(today - day).unwrap_or(usize::MAX);
            let at = |i: usize| series[i].get(back).copied().unwrap_or(0);
            if at(0) == 0 {
                continue;
            }
            rows.push(Row {
                day: day_string(day),
                principal: principal.clone(),
                scope: scope.clone(),
                model: model.clone(),
                requests: at(0),
                input_tokens: at(1),
                output_tokens: at(2),
                cost_usd: (meter::nanos_to_usd(at(3)) * 1e6).round() / 1e6,
            });
        }
    }
    rows.sort_by(|a, b| b.day.cmp(&a.day).then(b.cost_usd.total_cmp(&a.cost_usd)).then(a.principal.cmp(&b.principal)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_buffered_and_flushed_as_daily_counters() {
        let store: Arc<dyn StateStore> = Arc::new(crate::state::MemoryStore::new("t:"));
        let index = Arc::new(Index::default());
        let usage = Usage { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, ..Default::default() };
        for _ in 0..3 {
            index.add(ScopeKind::Key, "ci", "ci", Some("openai:gpt-4o-mini"), &usage, 7);
        }
        // Refused before reaching a model: the principal's hourly history only.
        index.add(ScopeKind::Key, "ci", "ci", None, &Usage::default(), 0);
        let hourly = |f| meter::history_key(ScopeKind::Key, "ci", f);
        let key = |f| meter::daily_key(ScopeKind::Key, "ci", "openai:gpt-4o-mini", f);
        assert_eq!(store.window_history(&key(HistoryField::Requests), DAY, 1).await.unwrap(), vec![0], "buffered");
        index.flush(&*store).await;
        for (f, want) in [(HistoryField::Requests, 3), (HistoryField::InputTokens, 30), (HistoryField::Cost, 21)] {
            assert_eq!(store.window_history(&key(f), DAY, 1).await.unwrap(), vec![want]);
        }
        assert_eq!(store.hgetall(INDEX_MAP).await.unwrap().len(), 1);
        let hour = super::super::metering::HOUR;
        assert_eq!(store.window_history(&hourly(HistoryField::Requests), hour, 1).await.unwrap(), vec![4]);
        assert_eq!(store.window_history(&hourly(HistoryField::OutputTokens), hour, 1).await.unwrap(), vec![15]);
        index.flush(&*store).await; // nothing pending: nothing written twice
        assert_eq!(store.window_history(&key(HistoryField::Requests), DAY, 1).await.unwrap(), vec![3]);
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_789), "2026-12-02");
    }
}
