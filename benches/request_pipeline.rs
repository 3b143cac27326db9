//! Per-request cost of the gateway's request phases, measured on the pure `filters` crate.
//!
//! What one Chat Completions request costs the gateway before any I/O: bearer parsing and the
//! virtual-key lookup, endpoint classification, body parse and validation, model resolution and
//! the body rewrite. It is measured for a small (~300 B), a 100 KB and a 5 MB request, each next to
//! a plain copy of the same body: a proxy that forwards the body has to move those bytes anyway,
//! so `pipeline / copy` is the figure that matters and it does not drift with the machine.
//!
//! The response side is measured the same way: the OpenAI stream tap (re-framing plus usage
//! capture) over a recorded stream fed in 1 KB chunks, against a plain copy of the same chunks.
//!
//! Run: `cargo bench --bench request_pipeline` (about 40 s). Filter with a substring, e.g.
//! `cargo bench --bench request_pipeline -- stream_tap`.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use filters::auth::{bearer_token, classify as classify_credential, sha256, Credential, KeyTable};
use filters::body::ChatRequest;
use filters::endpoint::{classify, Endpoint};
use filters::model::{Catalog, Target};
use filters::usage::OpenAiStreamTap;
use filters::ApiError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

/// The recorded OpenAI stream (repo-local copy of the shared fixture).
const STREAM_FIXTURE: &[u8] = include_bytes!("../fixtures/openai/chat-stream-text.sse");
/// Upstream read size the stream tap is fed with.
const STREAM_CHUNK: usize = 1024;
/// The key the requests present, and how many other keys share the table with it.
const PRESENTED_KEY: &str = "pc-load-test-key";
const TABLE_KEYS: usize = 1_000;
const AUTHORIZATION: &[u8] = b"Bearer pc-load-test-key";
const PATH: &str = "/v1/chat/completions";

/// The state the request phases read: what the gateway builds once at start.
struct Gateway {
    keys: KeyTable,
    catalog: Catalog,
}

impl Gateway {
    fn new() -> Self {
        let mut keys = KeyTable::new();
        for i in 0..TABLE_KEYS {
            keys.insert(sha256(format!("pc-other-key-{i:04}").as_bytes()), i + 1);
        }
        keys.insert(sha256(PRESENTED_KEY.as_bytes()), 0);

        let mut providers = BTreeMap::new();
        let listed = |models: &[&str]| models.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        providers.insert("bench".to_string(), listed(&["gpt-4o-mini"]));
        providers.insert("benchsse".to_string(), Vec::new());
        providers.insert("openai".to_string(), listed(&["gpt-4o", "gpt-4.1-nano", "o3-mini"]));
        providers.insert("anthropic".to_string(), listed(&["claude-sonnet-4-5", "claude-haiku-4-5"]));
        providers.insert("ollama".to_string(), listed(&["llama3:8b"]));
        let mut aliases = BTreeMap::new();
        aliases.insert("fast".to_string(), "openai:gpt-4.1-nano".to_string());
        aliases.insert("smart".to_string(), "anthropic:claude-sonnet-4-5".to_string());
        let catalog = Catalog::new(&providers, &aliases).expect("bench catalog is valid");
        Gateway { keys, catalog }
    }
}

/// The request phases in the order the gateway runs them; returns the upstream body.
fn pipeline(gw: &Gateway, authorization: &[u8], method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    // request_filter: authenticate, then route.
    let token = bearer_token(authorization).ok_or_else(|| ApiError::invalid_token("missing bearer token"))?;
    let Credential::VirtualKey(key) = classify_credential(token) else {
        return Err(ApiError::invalid_token("not a virtual key"));
    };
    let record = gw.keys.lookup(key).ok_or_else(|| ApiError::invalid_token("unknown key"))?;
    black_box(record);
    let Endpoint::ChatCompletions { proxy } = classify(method, path) else {
        return Err(ApiError::not_found("no such route"));
    };
    black_box(proxy);
    // request_body_filter: validate, resolve the model, rewrite for the upstream.
    let mut request = ChatRequest::parse(body)?;
    let Target::Provider { provider, model } = gw.catalog.resolve(&request.model)? else {
        return Err(ApiError::bad_request("invalid_model", "auto is not configured"));
    };
    black_box(&provider);
    Ok(request.to_upstream(&model))
}

/// A Chat Completions body of about `target_len` bytes: a system prompt, then user/assistant
/// turns of ~2 KB with the escapes real conversations carry (quotes, newlines, non-ASCII).
fn chat_body(target_len: usize) -> Vec<u8> {
    let turn = "Here is the next part of the document we are reviewing, with \"quoted\" terms, \
                accents (café, naïve, Zürich), a tab\tand line\nbreaks.\n"
        .repeat(14);
    let mut messages = vec![json!({"role": "system", "content": "You are a careful reviewer. Answer briefly."})];
    let overhead = 256;
    let mut len = overhead;
    let mut i = 0usize;
    while len + turn.len() < target_len {
        let role = if i.is_multiple_of(2) { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": turn}));
        len += serde_json::to_string(&turn).map_or(turn.len(), |s| s.len()) + 32;
        i += 1;
    }
    messages.push(json!({"role": "user", "content": "Say hello to the team; the deploy finished at 10:42 \"UTC\"."}));
    let body: Value = json!({
        "model": "bench:gpt-4o-mini",
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "load-test",
    });
    serde_json::to_vec(&body).expect("serializable")
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, bytes: usize) {
    group.throughput(Throughput::Bytes(bytes as u64));
    // Flat sampling: the big bodies take milliseconds, and linear sampling would need far more
    // iterations than ~3 s allows.
    group.sampling_mode(if bytes > 64 * 1024 { SamplingMode::Flat } else { SamplingMode::Auto });
}

fn bench_pipeline(c: &mut Criterion) {
    let gw = Gateway::new();
    for (name, size) in [("pipeline_300B", 300), ("pipeline_100KB", 100 * 1024), ("pipeline_5MB", 5 * 1024 * 1024)] {
        let body = chat_body(size);
        // Sanity outside the timing: the rewrite happened and kept the messages intact.
        let out = pipeline(&gw, AUTHORIZATION, "POST", PATH, &body).expect("pipeline accepts the bench body");
        let (sent, orig): (Value, Value) =
            (serde_json::from_slice(&out).expect("valid JSON"), serde_json::from_slice(&body).expect("valid JSON"));
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(sent["messages"], orig["messages"]);

        let mut group = c.benchmark_group(name);
        configure(&mut group, body.len());
        group.bench_function("copy_baseline", |b| b.iter(|| black_box(black_box(&body[..]).to_vec())));
        group.bench_function("pipeline", |b| {
            b.iter(|| pipeline(&gw, black_box(AUTHORIZATION), "POST", black_box(PATH), black_box(&body)))
        });
        group.finish();
    }
}

/// One stream through the tap, chunk by chunk, each chunk's output a fresh buffer as the
/// response body filter hands it on.
fn tap_stream(input: &[u8]) -> u64 {
    // The gateway asked for the usage chunk itself, so it drops it: the common case.
    let mut tap = OpenAiStreamTap::new(true, 1 << 20);
    let mut sent = 0;
    for chunk in input.chunks(STREAM_CHUNK) {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        tap.feed(chunk, &mut out).expect("fixture is valid SSE");
        sent += black_box(out).len() as u64;
    }
    let mut out = Vec::new();
    tap.finish(&mut out).expect("fixture is valid SSE");
    sent + black_box(out).len() as u64 + tap.usage.map_or(0, |u| u.total_tokens)
}

fn copy_stream(input: &[u8]) -> u64 {
    let mut sent = 0;
    for chunk in input.chunks(STREAM_CHUNK) {
        sent += black_box(chunk.to_vec()).len() as u64;
    }
    sent
}

fn bench_stream_tap(c: &mut Criterion) {
    let mut tap = OpenAiStreamTap::new(true, 1 << 20);
    let mut out = Vec::new();
    for chunk in STREAM_FIXTURE.chunks(STREAM_CHUNK) {
        tap.feed(chunk, &mut out).expect("fixture is valid SSE");
    }
    tap.finish(&mut out).expect("fixture is valid SSE");
    assert!(tap.saw_done && tap.usage.is_some(), "the fixture ends with a usage chunk and [DONE]");

    let mut group = c.benchmark_group("stream_tap_openai_1KB_chunks");
    configure(&mut group, STREAM_FIXTURE.len());
    group.bench_function("copy_baseline", |b| b.iter(|| copy_stream(black_box(STREAM_FIXTURE))));
    group.bench_function("openai_tap", |b| b.iter(|| tap_stream(black_box(STREAM_FIXTURE))));
    group.finish();
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
    targets = bench_pipeline, bench_stream_tap
}
criterion_main!(benches);
