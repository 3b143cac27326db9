//! Translators between the OpenAI Chat Completions wire and each provider's native API.
//!
//! Every provider module offers the same four pure functions, bytes in and bytes out:
//!
//! - `request(body, &RequestOptions) -> Result<UpstreamRequest, ApiError>`: the client's Chat
//!   Completions body → the provider's native request (path relative to the base URL, body,
//!   extra headers other than auth). What cannot be mapped is a 400 naming the field.
//! - `response(body, &ResponseOptions) -> Result<Translated, ApiError>`: the provider's whole
//!   answer → a `chat.completion` object.
//! - `stream(ResponseOptions) -> impl StreamTranscoder`: the provider's stream →
//!   `chat.completion.chunk` SSE, incrementally, memory bounded by one event.
//! - `error(status, body, retry_after) -> ApiError`: the provider's error → the OpenAI shape.
//!
//! [`ChunkWriter`] and [`completion`] build the OpenAI side so every provider emits the same
//! envelope. `responses` maps the Responses API onto Chat Completions for non-OpenAI providers.

pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod gemini;
pub mod meter;
pub mod responses;

use crate::usage::Usage;
use crate::ApiError;
use serde_json::{json, Map, Value};

/// What a request translator needs besides the client's body.
#[derive(Debug, Clone)]
pub struct RequestOptions<'a> {
    /// The model the upstream sees (the `provider:` prefix already stripped).
    pub model: &'a str,
    /// The client asked for a stream.
    pub stream: bool,
}

/// A translated upstream request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    /// Appended to the base URL's path, with any query (`/v1/messages`,
    /// `/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse`).
    pub path: String,
    pub body: Vec<u8>,
    /// Headers the provider needs beyond auth and content type (`anthropic-version`, ...).
    pub headers: Vec<(&'static str, String)>,
}

/// What a response translator needs to build the OpenAI envelope.
#[derive(Debug, Clone)]
pub struct ResponseOptions {
    /// `chatcmpl-...` id the gateway assigns when the provider gives none usable.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id reported to the client.
    pub model: String,
    /// `stream_options.include_usage`: end the stream with a usage-only chunk.
    pub include_usage: bool,
    /// Bound on one upstream event (bytes).
    pub max_event: usize,
}

/// A translated whole response.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// A `chat.completion` JSON object.
    pub body: Vec<u8>,
    pub usage: Option<Usage>,
}

/// Incremental stream translation. Upstream bytes may be split anywhere; the output is the same.
pub trait StreamTranscoder: Send {
    /// Feed upstream bytes; complete `chat.completion.chunk` SSE events are appended to `out`.
    /// A provider error event inside the stream is returned as `Err` (the gateway ends the stream
    /// with an OpenAI error event).
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError>;
    /// The upstream body ended. Flush what is pending, then the usage chunk (when asked for) and
    /// `data: [DONE]`. A stream that ended before the provider's end marker is an `Err`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError>;
    /// Usage seen so far (final after `finish`).
    fn usage(&self) -> Option<Usage>;
    /// The upstream failed mid-stream (connection lost, timeout): a front that frames its own
    /// failure events writes them here. Chat streams write nothing; the gateway adds the event.
    fn abort(&mut self, _error: &ApiError, _out: &mut Vec<u8>) {}
}

/// Two transcoders in a row: the provider's stream → chat chunks → a second front (the
/// Responses API event stream). An error of the first stage is handed to the second as an OpenAI
/// error event, so the second can close its own stream properly, and is then returned.
pub struct Chain<A, B> {
    first: A,
    second: B,
    buf: Vec<u8>,
}

impl<A: StreamTranscoder, B: StreamTranscoder> Chain<A, B> {
    pub fn new(first: A, second: B) -> Self {
        Chain { first, second, buf: Vec::new() }
    }

    fn pass(&mut self, step: Result<(), ApiError>, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let fed = self.second.feed(&self.buf, out);
        self.buf.clear();
        if let Err(e) = step {
            self.abort(&e, out);
            return Err(e);
        }
        fed
    }
}

impl<A: StreamTranscoder, B: StreamTranscoder> StreamTranscoder for Chain<A, B> {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        let step = self.first.feed(chunk, &mut self.buf);
        self.pass(step, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let step = self.first.finish(&mut self.buf);
        self.pass(step, out)?;
        self.second.finish(out)
    }

    fn usage(&self) -> Option<Usage> {
        self.first.usage()
    }

    /// The second stage learns of the failure as an OpenAI error event, as if the chat stream
    /// had carried it.
    fn abort(&mut self, error: &ApiError, out: &mut Vec<u8>) {
        let mut event = Vec::new();
        crate::sse::write_event(&mut event, None, &String::from_utf8_lossy(&error.to_json()));
        let _ = self.second.feed(&event, out);
    }
}

impl<T: StreamTranscoder + ?Sized> StreamTranscoder for Box<T> {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        (**self).feed(chunk, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        (**self).finish(out)
    }

    fn usage(&self) -> Option<Usage> {
        (**self).usage()
    }

    fn abort(&mut self, error: &ApiError, out: &mut Vec<u8>) {
        (**self).abort(error, out)
    }
}

/// OpenAI `finish_reason` values.
pub mod finish {
    pub const STOP: &str = "stop";
    pub const LENGTH: &str = "length";
    pub const TOOL_CALLS: &str = "tool_calls";
    pub const CONTENT_FILTER: &str = "content_filter";
}

/// The OpenAI `usage` object. `prompt_tokens` includes cached and cache-written tokens, as
/// OpenAI counts them; the details carry the split.
pub fn usage_json(u: &Usage) -> Value {
    let mut prompt_details = Map::new();
    prompt_details.insert("cached_tokens".into(), json!(u.cached_tokens));
    if u.cache_write_tokens > 0 {
        prompt_details.insert("cache_creation_tokens".into(), json!(u.cache_write_tokens));
    }
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// One tool call of a whole response.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments.
    pub arguments: String,
}

/// The assistant message of a whole response, provider-neutral.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// `None` is JSON null (e.g. a pure tool-call answer).
    pub content: Option<String>,
    /// Reasoning/thinking text, sent as `reasoning_content` (the field DeepSeek, vLLM and
    /// OpenRouter use).
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<String>,
    /// Provider-specific members added to the message as they are (e.g. `thinking_blocks`).
    pub extra: Map<String, Value>,
}

/// A whole `chat.completion` body.
pub fn completion(opts: &ResponseOptions, msg: &Message, finish_reason: &str, usage: Option<&Usage>) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert("content".into(), msg.content.as_ref().map_or(Value::Null, |c| json!(c)));
    m.insert("refusal".into(), msg.refusal.as_ref().map_or(Value::Null, |c| json!(c)));
    if let Some(r) = &msg.reasoning {
        m.insert("reasoning_content".into(), json!(r));
    }
    if !msg.tool_calls.is_empty() {
        let calls: Vec<Value> = msg
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    for (k, v) in &msg.extra {
        m.insert(k.clone(), v.clone());
    }
    let mut body = json!({
        "id": opts.id,
        "object": "chat.completion",
        "created": opts.created,
        "model": opts.model,
        "choices": [{"index": 0, "message": Value::Object(m), "logprobs": null, "finish_reason": finish_reason}],
    });
    if let Some(u) = usage {
        body["usage"] = usage_json(u);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Writes `chat.completion.chunk` events with one envelope (id, created, model) for a stream.
/// Streams open with a role chunk, as OpenAI's do; call the methods in stream order.
///
/// Chunks are written as bytes around a cached envelope prefix rather than built as JSON trees:
/// this runs once per upstream event, and text deltas (almost all of them) then cost one string
/// escape.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    opts: ResponseOptions,
    started: bool,
    finished: bool,
    /// Tool calls announced so far (OpenAI indexes them 0, 1, ... per response).
    tool_calls: u32,
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":`
    prefix: Vec<u8>,
}

/// A JSON string literal (serializing a `str` into a `Vec` cannot fail).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

impl ChunkWriter {
    pub fn new(opts: ResponseOptions) -> Self {
        let mut w = ChunkWriter { opts, started: false, finished: false, tool_calls: 0, prefix: Vec::new() };
        w.build_prefix();
        w
    }

    fn build_prefix(&mut self) {
        let p = &mut self.prefix;
        p.clear();
        p.extend_from_slice(b"data: {\"id\":");
        push_json_str(p, &self.opts.id);
        p.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        p.extend_from_slice(self.opts.created.to_string().as_bytes());
        p.extend_from_slice(b",\"model\":");
        push_json_str(p, &self.opts.model);
        p.extend_from_slice(b",\"choices\":");
    }

    pub fn options(&self) -> &ResponseOptions {
        &self.opts
    }

    /// Replace the reported id (when the provider's first event carries one worth keeping).
    pub fn set_id(&mut self, id: impl Into<String>) {
        self.opts.id = id.into();
        self.build_prefix();
    }

    /// One chunk of choice 0: `delta` writes the delta object.
    fn chunk(&self, out: &mut Vec<u8>, finish_reason: Option<&str>, delta: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":");
        delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(r) => push_json_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]");
        if self.opts.include_usage {
            // OpenAI sends `"usage": null` on every chunk when include_usage is on.
            out.extend_from_slice(b",\"usage\":null");
        }
        out.extend_from_slice(b"}\n\n");
    }

    fn delta(&mut self, out: &mut Vec<u8>, delta: Value) {
        self.start(out);
        self.chunk(out, None, |o| {
            let _ = serde_json::to_writer(&mut *o, &delta);
        });
    }

    /// A delta with one string member, the common case (text and reasoning deltas).
    fn text_delta(&mut self, out: &mut Vec<u8>, key: &[u8], text: &str) {
        self.start(out);
        self.chunk(out, None, |o| {
            o.extend_from_slice(b"{\"");
            o.extend_from_slice(key);
            o.extend_from_slice(b"\":");
            push_json_str(o, text);
            o.push(b'}');
        });
    }

    /// The opening role chunk (written once; every other method calls it first).
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.chunk(out, None, |o| o.extend_from_slice(br#"{"role":"assistant","content":"","refusal":null}"#));
    }

    pub fn content(&mut self, out: &mut Vec<u8>, text: &str) {
        if !text.is_empty() {
            self.text_delta(out, b"content", text);
        }
    }

    pub fn reasoning(&mut self, out: &mut Vec<u8>, text: &str) {
        if !text.is_empty() {
            self.text_delta(out, b"reasoning_content", text);
        }
    }

    /// A delta carrying provider-specific members (e.g. a thinking block's signature).
    pub fn extra(&mut self, out: &mut Vec<u8>, members: Map<String, Value>) {
        self.delta(out, Value::Object(members));
    }

    /// Announce a tool call; returns its OpenAI index. `arguments` may be the first fragment
    /// or empty.
    pub fn tool_call_start(&mut self, out: &mut Vec<u8>, id: &str, name: &str, arguments: &str) -> u32 {
        let index = self.tool_calls;
        self.tool_calls += 1;
        self.delta(
            out,
            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}),
        );
        index
    }

    /// A fragment of a tool call's arguments.
    pub fn tool_call_args(&mut self, out: &mut Vec<u8>, index: u32, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        self.start(out);
        self.chunk(out, None, |o| {
            o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            o.extend_from_slice(index.to_string().as_bytes());
            o.extend_from_slice(b",\"function\":{\"arguments\":");
            push_json_str(o, fragment);
            o.extend_from_slice(b"}}]}");
        });
    }

    /// The chunk with `finish_reason` (written once).
    pub fn finish(&mut self, out: &mut Vec<u8>, reason: &str) {
        if self.finished {
            return;
        }
        self.start(out);
        self.finished = true;
        self.chunk(out, Some(reason), |o| o.extend_from_slice(b"{}"));
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// End of stream: the usage chunk when the client asked for it, then `[DONE]`.
    pub fn done(&mut self, out: &mut Vec<u8>, usage: Option<&Usage>) {
        self.start(out);
        if self.opts.include_usage {
            let u = usage.copied().unwrap_or_default();
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(b"[],\"usage\":");
            let _ = serde_json::to_writer(&mut *out, &usage_json(&u));
            out.extend_from_slice(b"}\n\n");
        }
        crate::sse::write_event(out, None, "[DONE]");
    }
}

/// Parse a JSON request body into a value, as a 400 when it is not a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("invalid_json", "request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {e}"))),
    }
}

/// A 400 for a request field the provider has no equivalent for.
pub fn unsupported(param: &str, provider: &str, why: &str) -> ApiError {
    ApiError::bad_request("unsupported_parameter", format!("`{param}` cannot be sent to {provider}: {why}"))
        .with_param(param)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseReader;

    fn opts(include_usage: bool) -> ResponseOptions {
        ResponseOptions { id: "chatcmpl-x".into(), created: 1, model: "m".into(), include_usage, max_event: 1 << 20 }
    }

    #[test]
    fn chunk_writer_stream_shape() {
        let mut w = ChunkWriter::new(opts(true));
        let mut out = Vec::new();
        w.content(&mut out, "Hi");
        let i = w.tool_call_start(&mut out, "call_1", "f", "");
        w.tool_call_args(&mut out, i, "{}");
        w.finish(&mut out, finish::TOOL_CALLS);
        let u = Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, ..Default::default() };
        w.done(&mut out, Some(&u));
        let mut events = Vec::new();
        SseReader::new(1 << 20).feed(&out, &mut |e| events.push(e.data)).unwrap();
        assert_eq!(events.len(), 7);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let usage: Value = serde_json::from_str(&events[5]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
    }

    #[test]
    fn completion_shape() {
        let msg = Message {
            content: None,
            tool_calls: vec![ToolCall { id: "c".into(), name: "f".into(), arguments: "{}".into() }],
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&completion(&opts(false), &msg, finish::TOOL_CALLS, None)).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "f");
        assert!(v.get("usage").is_none());
    }
}
