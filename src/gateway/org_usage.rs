//! Usage per principal, model and UTC day, for the admin API and console: daily counters added
//! to each request's settlement batch (so no extra round trip), and an index of which
//! (day, principal, model) have counters, written once per node and day for each.

use super::ctx::RequestCtx;
use super::Shared;
use crate::state::{StateError, StateStore, Window, WindowOp};
use filters::meter::{self, HistoryField, ScopeKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Daily usage buckets.
pub const DAY: Window = Window::Fixed(Duration::from_secs(86_400));
/// Days of usage kept (and the most a report covers).
pub const KEEP_DAYS: u64 = 31;
/// Hash map of (day, principal, model) with counters.
const INDEX_MAP: &str = "usage_index";

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

/// Index entries this node has written, for the current day only.
#[derive(Debug, Default)]
pub struct Index {
    written: Mutex<(u64, HashSet<String>)>,
}

/// The day counters for `ctx`'s request, to append to its settlement batch; `None` when it is
/// not a metered model call.
pub fn daily_ops(ctx: &RequestCtx, kind: ScopeKind, meter_id: &str, cost: u64) -> Option<(String, Vec<WindowOp>)> {
    let model = format!("{}:{}", ctx.provider.as_ref()?.name, ctx.model.as_ref()?);
    let usage = ctx.usage.unwrap_or_default();
    let ops = HistoryField::ALL
        .iter()
        .filter_map(|f| {
            let amount = f.amount(&usage, cost);
            (amount > 0).then(|| WindowOp {
                key: meter::daily_key(kind, meter_id, &model, *f),
                window: DAY,
                amount: i64::try_from(amount).unwrap_or(i64::MAX),
                limit: None,
                keep: Duration::from_secs(KEEP_DAYS * 86_400),
                at_ms: None,
            })
        })
        .collect();
    Some((model, ops))
}

impl Index {
    /// Record that `principal` used `model` today, unless this node already did.
    pub async fn note(&self, store: &dyn StateStore, kind: ScopeKind, meter_id: &str, principal: &str, model: &str) {
        let day = today();
        let entry = Entry {
            day,
            scope: kind.as_str().to_string(),
            meter_id: meter_id.to_string(),
            principal: principal.to_string(),
            model: model.to_string(),
        };
        let field = format!("{day}|{}|{meter_id}|{model}", entry.scope);
        {
            let Ok(mut w) = self.written.lock() else { return };
            if w.0 != day {
                *w = (day, HashSet::new());
            }
            if !w.1.insert(field.clone()) {
                return;
            }
        }
        let Ok(value) = serde_json::to_vec(&entry) else { return };
        // Not retried on failure: during a store outage every request would wait on it again.
        // The counters are kept either way; the report misses the row only if no node indexed it.
        if let Err(e) = store.hset(INDEX_MAP, &field, &value).await {
            log::warn!("usage index not updated for {principal} / {model}: {e}");
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

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_789), "2026-12-02");
    }
}
