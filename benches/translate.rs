//! What translation costs, per provider, next to what the gateway pays anyway.
//!
//! - `request/*`: one Chat Completions request (system prompt, three turns, one tool) translated to
//!   each provider's native body, against `openai_rewrite` — the model rewrite every OpenAI-wire
//!   request gets — as the baseline.
//! - `stream/*`: a recorded provider stream (from `fixtures/`) transcoded to OpenAI chunks in 1 KB
//!   reads, against `sse_passthrough` — the OpenAI tap re-framing a recorded OpenAI stream of the
//!   same kind — as the baseline. Throughput is in upstream bytes; divide the time by the event
//!   count printed at start for ns per event.
//!
//! Run: `cargo bench --bench translate` (about a minute).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use filters::body::ChatRequest;
use filters::translate::{self, RequestOptions, ResponseOptions, StreamTranscoder};
use filters::usage::OpenAiStreamTap;
use std::hint::black_box;
use std::time::Duration;

const CHUNK: usize = 1024;

const REQUEST: &[u8] = br#"{"model":"p:m","messages":[
 {"role":"system","content":"You are a careful assistant. Answer briefly and cite the tool when you use it."},
 {"role":"user","content":"What is the weather in Paris today, and should I take an umbrella?"},
 {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
 {"role":"tool","tool_call_id":"call_1","content":"{\"temp_c\":14,\"sky\":\"light rain\"}"},
 {"role":"user","content":"Thanks. And tomorrow?"}],
 "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
 "temperature":0.3,"max_tokens":512,"stream":true}"#;

fn opts() -> ResponseOptions {
    ResponseOptions {
        id: "chatcmpl-bench".into(),
        created: 1,
        model: "m".into(),
        include_usage: true,
        max_event: 1 << 20,
    }
}

fn bench_requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    let ro = RequestOptions { model: "m", stream: true };
    g.bench_function("openai_rewrite", |b| {
        b.iter(|| ChatRequest::parse(black_box(REQUEST)).map(|mut r| r.to_upstream("m")))
    });
    g.bench_function("anthropic", |b| b.iter(|| translate::anthropic::request(black_box(REQUEST), &ro)));
    g.bench_function("gemini", |b| b.iter(|| translate::gemini::request(black_box(REQUEST), &ro)));
    g.bench_function("bedrock", |b| b.iter(|| translate::bedrock::request(black_box(REQUEST), &ro)));
    g.bench_function("cohere", |b| b.iter(|| translate::cohere::request(black_box(REQUEST), &ro)));
    g.finish();
}

/// Feed `input` in 1 KB reads through a fresh transcoder; returns the output size.
fn run(mut t: impl StreamTranscoder, input: &[u8]) -> usize {
    let mut n = 0;
    for chunk in input.chunks(CHUNK) {
        let mut out = Vec::with_capacity(CHUNK * 2);
        t.feed(chunk, &mut out).expect("fixture transcodes");
        n += black_box(out).len();
    }
    let mut out = Vec::new();
    t.finish(&mut out).expect("fixture ends cleanly");
    n + out.len()
}

fn count_events(input: &[u8]) -> usize {
    let mut n = 0;
    filters::sse::SseReader::new(1 << 20).feed(input, &mut |_| n += 1).expect("valid SSE");
    n
}

fn bench_streams(c: &mut Criterion) {
    const OPENAI: &[u8] = include_bytes!("../fixtures/openai/chat-stream-text.sse");
    const ANTHROPIC: &[u8] = include_bytes!("../fixtures/anthropic/messages-stream-thinking.sse");
    const GEMINI: &[u8] = include_bytes!("../fixtures/gemini/stream-thinking.sse");
    const COHERE: &[u8] = include_bytes!("../fixtures/cohere/chat-stream-text.sse");
    const BEDROCK: &[u8] = include_bytes!("../fixtures/bedrock/converse-stream-text.eventstream");
    let cases: [(&str, &[u8]); 5] = [
        ("sse_passthrough", OPENAI),
        ("anthropic", ANTHROPIC),
        ("gemini", GEMINI),
        ("cohere", COHERE),
        ("bedrock", BEDROCK),
    ];
    for (name, input) in cases {
        let events = if name == "bedrock" { "(binary frames)".to_string() } else { count_events(input).to_string() };
        eprintln!("stream/{name}: {} bytes, {events} events", input.len());
    }
    let mut g = c.benchmark_group("stream");
    for (name, input) in cases {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| match name {
                "sse_passthrough" => run(OpenAiStreamTap::new(false, 1 << 20), black_box(input)),
                "anthropic" => run(translate::anthropic::stream(opts()), black_box(input)),
                "gemini" => run(translate::gemini::stream(opts()), black_box(input)),
                "cohere" => run(translate::cohere::stream(opts()), black_box(input)),
                _ => run(translate::bedrock::stream(opts()), black_box(input)),
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_requests, bench_streams
}
criterion_main!(benches);
