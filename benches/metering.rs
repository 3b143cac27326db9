//! Per-request cost of budgets and rate limits on the memory state backend (a single node).
//!
//! A metered request does two store batches: the reservation (one charge per cap, all or
//! nothing, plus the `x-ratelimit-*` headers) before it goes upstream, and the settlement (the
//! estimate replaced by the real usage, plus four usage-history counters) in `logging`. Both are
//! measured next to the smallest store operation, one `window_add`, driven the same way, so the
//! ratio does not drift with the machine.
//!
//! Run: `cargo bench --bench metering` (about 20 s).

use criterion::{criterion_group, criterion_main, Criterion};
use filters::meter::{self, CounterState, Limit, Period, Price, Scope, ScopeKind};
use filters::usage::Usage;
use portcullis::gateway::metering;
use portcullis::state::{MemoryStore, StateStore};
use std::hint::black_box;
use std::time::Duration;

/// A chat request body of typical size (~300 B) with an output cap.
const BODY: &[u8] = br#"{"model":"openai:gpt-4o-mini","max_tokens":256,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the following paragraph in two sentences, keeping every number: revenue grew 12% to $4.1bn while costs fell."}]}"#;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let store = MemoryStore::new("bench:");
    let key_limits = [
        Limit { window: Period::Minute, requests: Some(u64::MAX / 4), tokens: Some(u64::MAX / 4), cost_usd: None },
        Limit { window: Period::Day, requests: None, tokens: None, cost_usd: Some(1e9) },
    ];
    let scopes = [Scope { kind: ScopeKind::Key, id: "bench", name: "bench", limits: &key_limits }];
    let price = Price { input: 0.15, output: 0.6, cached_input: None, cache_write: None };
    let usage = Usage { prompt_tokens: 60, completion_tokens: 40, total_tokens: 100, ..Usage::default() };

    let mut g = c.benchmark_group("metering");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("baseline_one_window_add", |b| {
        b.iter(|| rt.block_on(store.window_add("base", 1, u64::MAX / 4, Duration::from_secs(60))).expect("add"))
    });
    g.bench_function("reserve", |b| {
        b.iter(|| {
            let est = meter::estimate(BODY.len(), meter::max_output_tokens(black_box(BODY)), 512, Some(&price));
            let charges = meter::plan(&scopes, &est);
            let ops = metering::reservation_ops(&charges);
            let applied = rt.block_on(store.window_apply(&ops)).expect("apply");
            let states: Vec<CounterState> = applied
                .results
                .iter()
                .map(|r| CounterState { allowed: r.allowed, total: r.total, reset_after: r.reset_after })
                .collect();
            black_box(meter::rate_headers(&charges, &states))
        })
    });
    let est = meter::estimate(BODY.len(), Some(256), 512, Some(&price));
    let charges = meter::plan(&scopes, &est);
    g.bench_function("settle", |b| {
        b.iter(|| {
            let cost = price.cost_nanos(&usage);
            let ops = metering::settlement_ops(&charges, usage.total_tokens, cost);
            black_box(rt.block_on(store.window_apply(&ops)).expect("apply"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
