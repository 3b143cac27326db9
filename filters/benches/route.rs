//! Classification time per request: short, long (8k tokens ≈ 32 KB) and multi-turn chat bodies,
//! through the full path the gateway takes (parse body, pick turns, extract, score), plus the
//! text-only scorer at several lengths to show the cost is linear in text length.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use filters::route::overrides::take_override;
use filters::route::RouterModel;
use std::hint::black_box;

const PARAGRAPH: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips \
in May. How many clips did Natalia sell altogether in April and May? Explain your reasoning step by step. ";

fn body(messages: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"model": "auto", "messages": messages, "max_tokens": 512}).to_string().into_bytes()
}

fn bench(c: &mut Criterion) {
    let model = RouterModel::embedded().expect("embedded model loads");
    let short = body(serde_json::json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": PARAGRAPH}
    ]));
    let long_text = PARAGRAPH.repeat(32 * 1024 / PARAGRAPH.len());
    let long = body(serde_json::json!([{"role": "user", "content": long_text}]));
    let mut turns = vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant."})];
    for i in 0..10 {
        turns.push(serde_json::json!({"role": "user", "content": format!("{PARAGRAPH} (turn {i})")}));
        turns.push(serde_json::json!({"role": "assistant", "content": PARAGRAPH}));
    }
    turns.push(serde_json::json!({"role": "user", "content": "And what if she sold twice as many in June?"}));
    let multi = body(serde_json::Value::Array(turns));

    let mut g = c.benchmark_group("route/classify_request");
    for (name, b) in [("short", &short), ("long_32k", &long), ("multi_turn_21", &multi)] {
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(name, |bench| bench.iter(|| model.classify_request(black_box(b))));
    }
    g.finish();

    let mut g = c.benchmark_group("route/score_text");
    for kb in [1usize, 4, 16, 32] {
        let text = PARAGRAPH.repeat(kb * 1024 / PARAGRAPH.len());
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("{kb}k"), |bench| bench.iter(|| model.classify_text(black_box(&text))));
    }
    g.finish();

    let with_override = body(serde_json::json!([{"role": "user", "content": format!("/max {PARAGRAPH}")}]));
    c.bench_function("route/take_override/short", |bench| bench.iter(|| take_override(black_box(&with_override))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
