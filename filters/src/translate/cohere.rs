//! Cohere v2 Chat (`POST /v2/chat`, base URL `https://api.cohere.com`) ⇄ OpenAI Chat Completions.
//!
//! The gateway adds `Authorization: Bearer <key>`; no other header is needed. Streaming is asked
//! for with `"stream": true` in the body; the answer is SSE with `event:` lines, ended by a
//! `message-end` event (the logical end, carrying finish reason and usage) and `data: [DONE]`.
//!
//! # Request mapping
//!
//! | OpenAI | Cohere |
//! | --- | --- |
//! | `system` / `developer` message | `system` message (text or text parts) |
//! | `user` message, text and `image_url` parts (data URLs and http(s) URLs) | `user` message, `text` / `image_url` parts (`detail` kept) |
//! | `assistant` message: content, `tool_calls`, `reasoning_content` | `assistant`: content, `tool_calls` (arguments string), `reasoning_content` → `tool_plan` when the turn has tool calls |
//! | `tool` message (`tool_call_id`, content) | `tool` message (`tool_call_id`, content) |
//! | `tools` (function tools), `function.strict: true` on any tool | `tools` (same function shape; missing `parameters` → empty object schema), `strict_tools: true` |
//! | `tool_choice`: `auto` / `none` / `required` / named | omitted / `NONE` / `REQUIRED` / `REQUIRED` with `tools` narrowed to the named tool |
//! | `temperature`, `seed`, `frequency_penalty`, `presence_penalty` | same names |
//! | `top_p` | `p`, clamped to Cohere's accepted range 0.01..=0.99 |
//! | `max_completion_tokens` (preferred) or `max_tokens` | `max_tokens` |
//! | `stop` (string or array) | `stop_sequences` |
//! | `response_format` `json_object` / `json_schema` | `{"type":"json_object"}` / `{"type":"json_object","json_schema":<schema>}` (`text` → omitted) |
//! | `reasoning_effort` | `thinking` (table below) |
//!
//! `reasoning_effort` → `thinking` (Cohere's hybrid reasoning models, e.g. `command-a-reasoning`):
//!
//! | effort | thinking |
//! | --- | --- |
//! | `none` | `{"type":"disabled"}` |
//! | `minimal` | `{"type":"enabled","token_budget":1024}` |
//! | `low` | `{"type":"enabled","token_budget":4096}` |
//! | `medium` | `{"type":"enabled","token_budget":8192}` |
//! | `high` | `{"type":"enabled","token_budget":16384}` |
//!
//! Dropped silently (cannot change the answer, or have no Cohere switch and only affect
//! bookkeeping): `user`, `store`, `metadata`, `service_tier`, `safety_identifier`,
//! `prompt_cache_key`, `stream_options` (handled by the gateway), `parallel_tool_calls` (Cohere
//! decides parallelism itself), a message's `name`, `n: 1`, `logprobs: false`,
//! `modalities: ["text"]`, an empty `logit_bias`. Any other field, `n > 1`, `logprobs: true`,
//! `top_logprobs`, audio, `function` messages and non-text/image parts are a 400 naming the
//! field. JSON `null` is treated as absent everywhere.
//!
//! # Response mapping
//!
//! - `message.content[]`: `text` items → `content`; `thinking` items → `reasoning_content`.
//! - `message.tool_plan` (the model's "I will use tool X…" preamble) → `reasoning_content`, after
//!   any thinking text and separated from it by a blank line. It is the model's reasoning about
//!   tool use, not an answer: keeping `content` null on a pure tool-call turn is what OpenAI
//!   clients expect. Streams do the same with `tool-plan-delta`, so both paths agree.
//! - `tool_calls` → `tool_calls` (arguments kept as sent; an empty arguments string becomes `{}`).
//! - `finish_reason`: `COMPLETE` / `STOP_SEQUENCE` → `stop`, `MAX_TOKENS` → `length`,
//!   `TOOL_CALL` → `tool_calls`; `ERROR` → `Err` 502 `upstream_error`; `TIMEOUT` → `Err` 504.
//!   The partial answer of a failed generation is not passed off as a success.
//! - Usage: `usage.tokens` (falling back to `usage.billed_units`) `input_tokens` /
//!   `output_tokens`; `usage.cached_tokens` → `cached_tokens` (Cohere's `input_tokens` already
//!   include them, as OpenAI's `prompt_tokens` do; clamped to the prompt count).
//! - The response id is Cohere's own id (`id`, also on `message-start`) when present.
//! - `citations` are not mapped: they only occur with `documents`, which this translator never sends.

use super::{
    completion, finish, parse_object, unsupported, ChunkWriter, Message, RequestOptions, ResponseOptions,
    StreamTranscoder, ToolCall, Translated, UpstreamRequest,
};
use crate::sse::{Event, SseReader};
use crate::usage::Usage;
use crate::ApiError;
use serde_json::{json, Map, Value};

const PROVIDER: &str = "Cohere";

/// The request path, relative to the base URL `https://api.cohere.com`.
pub const PATH: &str = "/v2/chat";

/// Top-level OpenAI fields this translator reads or knowingly drops; anything else is a 400.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "response_format",
    "reasoning_effort",
    "n",
    "logprobs",
    "top_logprobs",
    "modalities",
    "logit_bias",
    "parallel_tool_calls",
    "user",
    "store",
    "metadata",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

/// `token_budget` for each `reasoning_effort` (see the module docs).
fn thinking(effort: &str) -> Option<Value> {
    let budget = match effort {
        "none" => return Some(json!({"type": "disabled"})),
        "minimal" => 1024,
        "low" => 4096,
        "medium" => 8192,
        "high" => 16384,
        _ => return None,
    };
    Some(json!({"type": "enabled", "token_budget": budget}))
}

/// The field, with JSON `null` read as absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn invalid(param: &str, what: &str) -> ApiError {
    ApiError::bad_request("invalid_value", format!("`{param}` {what}")).with_param(param)
}

fn number(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| invalid(key, "must be a number")),
    }
}

fn integer(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| invalid(key, "must be an integer")),
    }
}

/// OpenAI Chat Completions body → Cohere `/v2/chat` body.
pub fn request(body: &[u8], opts: &RequestOptions<'_>) -> Result<UpstreamRequest, ApiError> {
    let req = parse_object(body)?;
    for (key, value) in &req {
        if !value.is_null() && !KNOWN_FIELDS.contains(&key.as_str()) {
            return Err(unsupported(key, PROVIDER, "Cohere's chat API has no equivalent"));
        }
    }
    check_unsupported_values(&req)?;

    let mut out = Map::new();
    out.insert("model".into(), json!(opts.model));
    out.insert("messages".into(), messages(&req)?);
    tools(&req, &mut out)?;
    if let Some(t) = number(&req, "temperature")? {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = number(&req, "top_p")? {
        out.insert("p".into(), json!(p.clamp(0.01, 0.99)));
    }
    let max = match integer(&req, "max_completion_tokens")? {
        Some(m) => Some(("max_completion_tokens", m)),
        None => integer(&req, "max_tokens")?.map(|m| ("max_tokens", m)),
    };
    if let Some((key, m)) = max {
        if m < 1 {
            return Err(invalid(key, "must be at least 1"));
        }
        out.insert("max_tokens".into(), json!(m));
    }
    if let Some(stop) = field(&req, "stop") {
        out.insert("stop_sequences".into(), stop_sequences(stop)?);
    }
    if let Some(seed) = integer(&req, "seed")? {
        out.insert("seed".into(), json!(seed));
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if let Some(v) = number(&req, key)? {
            out.insert(key.into(), json!(v));
        }
    }
    if let Some(rf) = field(&req, "response_format") {
        if let Some(f) = response_format(rf)? {
            out.insert("response_format".into(), f);
        }
    }
    if let Some(effort) = field(&req, "reasoning_effort") {
        let t = effort
            .as_str()
            .and_then(thinking)
            .ok_or_else(|| invalid("reasoning_effort", "must be one of none, minimal, low, medium, high"))?;
        out.insert("thinking".into(), t);
    }
    if opts.stream {
        out.insert("stream".into(), json!(true));
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(UpstreamRequest { path: PATH.into(), body, headers: Vec::new() })
}

/// Fields that are known but only acceptable with their neutral value.
fn check_unsupported_values(req: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(n) = field(req, "n") {
        if n.as_u64() != Some(1) {
            return Err(unsupported("n", PROVIDER, "Cohere returns a single choice"));
        }
    }
    if let Some(lp) = field(req, "logprobs") {
        if lp != &Value::Bool(false) {
            return Err(unsupported("logprobs", PROVIDER, "log probabilities are not translated"));
        }
    }
    if field(req, "top_logprobs").is_some() {
        return Err(unsupported("top_logprobs", PROVIDER, "log probabilities are not translated"));
    }
    if let Some(m) = field(req, "modalities") {
        if m != &json!(["text"]) {
            return Err(unsupported("modalities", PROVIDER, "only text output is available"));
        }
    }
    if let Some(lb) = field(req, "logit_bias") {
        if lb.as_object().is_none_or(|o| !o.is_empty()) {
            return Err(unsupported("logit_bias", PROVIDER, "Cohere has no logit bias"));
        }
    }
    Ok(())
}

fn stop_sequences(stop: &Value) -> Result<Value, ApiError> {
    match stop {
        Value::String(s) => Ok(json!([s])),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(stop.clone()),
        _ => Err(invalid("stop", "must be a string or an array of strings")),
    }
}

fn response_format(rf: &Value) -> Result<Option<Value>, ApiError> {
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| invalid("response_format.json_schema.schema", "must be a JSON schema object"))?;
            Ok(Some(json!({"type": "json_object", "json_schema": schema})))
        }
        _ => Err(unsupported("response_format.type", PROVIDER, "only text, json_object and json_schema map")),
    }
}

/// `tools` and `tool_choice` (which may narrow the tools, see the module docs).
fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    let mut list = Vec::new();
    let mut strict = false;
    if let Some(tools) = field(req, "tools") {
        let tools = tools.as_array().ok_or_else(|| invalid("tools", "must be an array"))?;
        for (j, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(unsupported(&format!("tools[{j}].type"), PROVIDER, "only function tools are supported"));
            }
            let f = t
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(&format!("tools[{j}].function"), "must be an object"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("tools[{j}].function.name"), "must be a string"))?;
            let mut func = Map::new();
            func.insert("name".into(), json!(name));
            if let Some(d) = field(f, "description") {
                func.insert("description".into(), d.clone());
            }
            let params = field(f, "parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            func.insert("parameters".into(), params);
            strict |= field(f, "strict") == Some(&Value::Bool(true));
            list.push(json!({"type": "function", "function": func}));
        }
    }
    let choice = match field(req, "tool_choice") {
        None => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s)) if s == "none" => Some("NONE"),
        Some(Value::String(s)) if s == "required" => Some("REQUIRED"),
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name", "must be a string"))?;
            list.retain(|t| t["function"]["name"].as_str() == Some(name));
            if list.is_empty() {
                return Err(invalid("tool_choice", &format!("names the function `{name}`, which is not in `tools`")));
            }
            Some("REQUIRED")
        }
        Some(_) => return Err(unsupported("tool_choice", PROVIDER, "only auto, none, required and a named function map")),
    };
    if list.is_empty() {
        if choice == Some("REQUIRED") {
            return Err(invalid("tool_choice", "`required` needs `tools`"));
        }
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(list));
    if strict {
        out.insert("strict_tools".into(), json!(true));
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), json!(c));
    }
    Ok(())
}

fn messages(req: &Map<String, Value>) -> Result<Value, ApiError> {
    let msgs = field(req, "messages").and_then(Value::as_array).ok_or_else(|| invalid("messages", "must be an array"))?;
    msgs.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

fn message(i: usize, m: &Value) -> Result<Value, ApiError> {
    let path = format!("messages[{i}]");
    let m = m.as_object().ok_or_else(|| invalid(&path, "must be an object"))?;
    let role = m.get("role").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{path}.role"), "must be a string"))?;
    let content = field(m, "content");
    let content_path = format!("{path}.content");
    match role {
        "system" | "developer" => {
            let c = content.ok_or_else(|| invalid(&content_path, "is required"))?;
            Ok(json!({"role": "system", "content": parts(&content_path, c, false)?}))
        }
        "user" => {
            let c = content.ok_or_else(|| invalid(&content_path, "is required"))?;
            Ok(json!({"role": "user", "content": parts(&content_path, c, true)?}))
        }
        "assistant" => assistant(&path, m),
        "tool" => {
            let id = field(m, "tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("{path}.tool_call_id"), "must be a string"))?;
            let c = content.ok_or_else(|| invalid(&content_path, "is required"))?;
            Ok(json!({"role": "tool", "tool_call_id": id, "content": parts(&content_path, c, false)?}))
        }
        "function" => Err(unsupported(&format!("{path}.role"), PROVIDER, "legacy function messages; use tool messages")),
        _ => Err(invalid(&format!("{path}.role"), "must be system, developer, user, assistant or tool")),
    }
}

fn assistant(path: &str, m: &Map<String, Value>) -> Result<Value, ApiError> {
    for key in ["audio", "function_call"] {
        if field(m, key).is_some() {
            return Err(unsupported(&format!("{path}.{key}"), PROVIDER, "no Cohere equivalent"));
        }
    }
    let mut out = Map::new();
    out.insert("role".into(), json!("assistant"));
    let content_path = format!("{path}.content");
    if let Some(c) = field(m, "content") {
        let has_content = match c {
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        };
        if has_content {
            out.insert("content".into(), parts(&content_path, c, false)?);
        }
    }
    let mut calls = Vec::new();
    if let Some(tc) = field(m, "tool_calls") {
        let tc = tc.as_array().ok_or_else(|| invalid(&format!("{path}.tool_calls"), "must be an array"))?;
        for (k, call) in tc.iter().enumerate() {
            let cpath = format!("{path}.tool_calls[{k}]");
            if call.get("type").and_then(Value::as_str).is_some_and(|t| t != "function") {
                return Err(unsupported(&format!("{cpath}.type"), PROVIDER, "only function calls are supported"));
            }
            let id = call.get("id").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{cpath}.id"), "must be a string"))?;
            let f = call.get("function").ok_or_else(|| invalid(&format!("{cpath}.function"), "is required"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("{cpath}.function.name"), "must be a string"))?;
            let args = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => "{}".into(),
                Some(_) => return Err(invalid(&format!("{cpath}.function.arguments"), "must be a JSON string")),
            };
            calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
        }
    }
    if !calls.is_empty() {
        if let Some(plan) = field(m, "reasoning_content").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            out.insert("tool_plan".into(), json!(plan));
        }
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(out))
}

/// Message content: a string stays a string; parts become Cohere content items. Only user
/// messages may carry images.
fn parts(path: &str, content: &Value, images: bool) -> Result<Value, ApiError> {
    let items = match content {
        Value::String(_) => return Ok(content.clone()),
        Value::Array(items) => items,
        _ => return Err(invalid(path, "must be a string or an array of content parts")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (j, part) in items.iter().enumerate() {
        let ppath = format!("{path}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text =
                    part.get("text").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{ppath}.text"), "must be a string"))?;
                out.push(json!({"type": "text", "text": text}));
            }
            Some("image_url") if images => out.push(image(&ppath, part)?),
            Some(other) => {
                return Err(unsupported(&format!("{ppath}.type"), PROVIDER, &format!("`{other}` parts are not supported here")))
            }
            None => return Err(invalid(&format!("{ppath}.type"), "must be a string")),
        }
    }
    Ok(Value::Array(out))
}

fn image(path: &str, part: &Value) -> Result<Value, ApiError> {
    let iu = part.get("image_url");
    // OpenAI accepts `image_url` as an object with `url`; some clients send the URL string.
    let url = iu
        .and_then(|v| v.get("url").or(Some(v)))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{path}.image_url.url"), "must be a string"))?;
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("data:") || lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(unsupported(&format!("{path}.image_url.url"), PROVIDER, "images must be data: or http(s) URLs"));
    }
    let mut img = Map::new();
    img.insert("url".into(), json!(url));
    if let Some(detail) = iu.and_then(|v| v.get("detail")).filter(|d| d.is_string()) {
        img.insert("detail".into(), detail.clone());
    }
    Ok(json!({"type": "image_url", "image_url": img}))
}

fn bad_upstream(message: impl Into<String>) -> ApiError {
    ApiError::bad_gateway("upstream_invalid_response", message)
}

/// Cohere `finish_reason` → OpenAI, or the error a failed generation is answered with.
fn finish_reason(reason: Option<&str>) -> Result<&'static str, ApiError> {
    match reason {
        Some("MAX_TOKENS") => Ok(finish::LENGTH),
        Some("TOOL_CALL") => Ok(finish::TOOL_CALLS),
        Some("ERROR") => Err(ApiError::bad_gateway("upstream_error", "Cohere ended the generation with an error")),
        Some("TIMEOUT") => Err(ApiError::gateway_timeout("Cohere timed out while generating")),
        // COMPLETE, STOP_SEQUENCE, and reasons added after this was written.
        _ => Ok(finish::STOP),
    }
}

/// A token count; Cohere's `billed_units` may be floats.
fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.round() as u64))
}

/// `usage` (non-stream body, or `message-end` delta) → [`Usage`].
fn usage(u: Option<&Value>) -> Option<Usage> {
    let u = u?;
    let pick = |key: &str| count(u.get("tokens").and_then(|t| t.get(key))).or_else(|| count(u.get("billed_units").and_then(|b| b.get(key))));
    let (input, output) = (pick("input_tokens"), pick("output_tokens"));
    if input.is_none() && output.is_none() {
        return None;
    }
    let (p, c) = (input.unwrap_or(0), output.unwrap_or(0));
    Some(Usage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p + c,
        cached_tokens: count(u.get("cached_tokens")).unwrap_or(0).min(p),
        ..Default::default()
    })
}

/// Appends a tool plan to the reasoning text, a blank line apart from thinking before it.
fn push_plan(reasoning: &mut String, plan: &str) {
    if plan.is_empty() {
        return;
    }
    if !reasoning.is_empty() {
        reasoning.push_str("\n\n");
    }
    reasoning.push_str(plan);
}

/// A whole Cohere `/v2/chat` answer → `chat.completion`.
pub fn response(body: &[u8], opts: &ResponseOptions) -> Result<Translated, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad_upstream(format!("Cohere response is not valid JSON: {e}")))?;
    let msg = v.get("message").and_then(Value::as_object).ok_or_else(|| bad_upstream("Cohere response has no message"))?;
    let reason = finish_reason(v.get("finish_reason").and_then(Value::as_str))?;

    let mut text = String::new();
    let mut reasoning = String::new();
    match msg.get("content") {
        Some(Value::Array(items)) => {
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(item.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("thinking") => reasoning.push_str(item.get("thinking").and_then(Value::as_str).unwrap_or("")),
                    _ => {}
                }
            }
        }
        Some(Value::String(s)) => text.push_str(s),
        _ => {}
    }
    push_plan(&mut reasoning, msg.get("tool_plan").and_then(Value::as_str).unwrap_or(""));

    let mut tool_calls = Vec::new();
    for call in msg.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let f = call.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| bad_upstream("Cohere tool call has no name"))?;
        let arguments = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Object(o)) => Value::Object(o.clone()).to_string(),
            _ => "{}".into(),
        };
        let id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{}", tool_calls.len()), str::to_string);
        tool_calls.push(ToolCall { id, name: name.to_string(), arguments });
    }

    let message = Message {
        content: if text.is_empty() && !tool_calls.is_empty() { None } else { Some(text) },
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
        ..Default::default()
    };
    let usage = usage(v.get("usage"));
    let mut opts = opts.clone();
    if let Some(id) = v.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        opts.id = id.to_string();
    }
    Ok(Translated { body: completion(&opts, &message, reason, usage.as_ref()), usage })
}

/// Cohere stream → `chat.completion.chunk` SSE.
pub fn stream(opts: ResponseOptions) -> CohereStream {
    CohereStream { reader: SseReader::new(opts.max_event), state: StreamState::new(opts) }
}

/// Incremental transcoder of a Cohere `/v2/chat` SSE stream. Memory: the SSE reader's one event
/// plus a few flags, whatever the stream's length.
#[derive(Debug)]
pub struct CohereStream {
    reader: SseReader,
    state: StreamState,
}

#[derive(Debug)]
struct StreamState {
    writer: ChunkWriter,
    usage: Option<Usage>,
    /// An event was handled (Cohere's id is only taken from a leading `message-start`).
    seen_event: bool,
    /// Some reasoning text was written (a tool plan then starts after a blank line).
    reasoning_written: bool,
    plan_started: bool,
    /// The OpenAI index of the open tool call, and whether it received argument text.
    open_tool: Option<(u32, bool)>,
    /// `message-end` arrived.
    ended: bool,
    /// `finish` ran.
    closed: bool,
    /// The first error; the stream is dead after it.
    failed: Option<ApiError>,
}

impl StreamState {
    fn new(opts: ResponseOptions) -> Self {
        StreamState {
            writer: ChunkWriter::new(opts),
            usage: None,
            seen_event: false,
            reasoning_written: false,
            plan_started: false,
            open_tool: None,
            ended: false,
            closed: false,
            failed: None,
        }
    }

    fn on_event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if self.failed.is_none() {
            if let Err(e) = self.handle(ev, out) {
                self.failed = Some(e);
            }
        }
    }

    fn handle(&mut self, ev: Event, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" || self.ended {
            // `[DONE]` alone is not the end: a stream without `message-end` fails in `finish`.
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|_| bad_upstream("Cohere stream event is not valid JSON"))?;
        let first = !self.seen_event;
        self.seen_event = true;
        let kind = v.get("type").and_then(Value::as_str).or(ev.event.as_deref()).unwrap_or("");
        let message = v.get("delta").and_then(|d| d.get("message"));
        match kind {
            "message-start" => {
                if let Some(id) = v.get("id").and_then(Value::as_str).filter(|s| first && !s.is_empty()) {
                    self.writer.set_id(id);
                }
                self.writer.start(out);
            }
            "content-start" | "content-delta" => {
                let c = message.and_then(|m| m.get("content"));
                if let Some(t) = c.and_then(|c| c.get("thinking")).and_then(Value::as_str) {
                    self.reasoning(out, t);
                }
                if let Some(t) = c.and_then(|c| c.get("text")).and_then(Value::as_str) {
                    self.writer.content(out, t);
                }
            }
            "tool-plan-delta" => {
                let plan = message.and_then(|m| m.get("tool_plan")).and_then(Value::as_str).unwrap_or("");
                if !plan.is_empty() && !self.plan_started {
                    self.plan_started = true;
                    if self.reasoning_written {
                        self.writer.reasoning(out, "\n\n");
                    }
                }
                self.reasoning(out, plan);
            }
            "tool-call-start" => {
                self.close_tool(out);
                let call = message.and_then(|m| m.get("tool_calls"));
                let f = call.and_then(|c| c.get("function"));
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_upstream("Cohere tool-call-start has no function name"))?;
                let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("");
                let id = call.and_then(|c| c.get("id")).and_then(Value::as_str).unwrap_or("");
                let index = if id.is_empty() {
                    let fallback = format!("call_{}", v.get("index").and_then(Value::as_u64).unwrap_or(0));
                    self.writer.tool_call_start(out, &fallback, name, args)
                } else {
                    self.writer.tool_call_start(out, id, name, args)
                };
                self.open_tool = Some((index, !args.is_empty()));
            }
            "tool-call-delta" => {
                let frag = message
                    .and_then(|m| m.get("tool_calls"))
                    .and_then(|c| c.get("function"))
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let (index, has_args) =
                    self.open_tool.as_mut().ok_or_else(|| bad_upstream("Cohere tool-call-delta outside a tool call"))?;
                *has_args |= !frag.is_empty();
                let index = *index;
                self.writer.tool_call_args(out, index, frag);
            }
            "tool-call-end" => self.close_tool(out),
            "message-end" => {
                self.close_tool(out);
                let delta = v.get("delta");
                let reason = finish_reason(delta.and_then(|d| d.get("finish_reason")).and_then(Value::as_str))?;
                self.usage = usage(delta.and_then(|d| d.get("usage")));
                self.writer.finish(out, reason);
                self.ended = true;
            }
            "error" => return Err(stream_error(&v)),
            // Untyped JSON with a message is an error body sent inside the stream.
            "" if v.get("message").is_some_and(Value::is_string) => return Err(stream_error(&v)),
            // content-end, citation-start/-end, debug, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn reasoning(&mut self, out: &mut Vec<u8>, text: &str) {
        if !text.is_empty() {
            self.reasoning_written = true;
            self.writer.reasoning(out, text);
        }
    }

    /// Ends the open tool call; one that got no argument text gets `{}`, as whole responses do.
    fn close_tool(&mut self, out: &mut Vec<u8>) {
        if let Some((index, false)) = self.open_tool.take() {
            self.writer.tool_call_args(out, index, "{}");
        }
    }
}

fn stream_error(v: &Value) -> ApiError {
    let msg = v.get("message").and_then(Value::as_str).unwrap_or("Cohere reported an error mid-stream");
    ApiError::bad_gateway("upstream_error", format!("Cohere stream error: {msg}"))
}

fn sse_error(e: crate::sse::SseError) -> ApiError {
    bad_upstream(e.to_string())
}

impl StreamTranscoder for CohereStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(e) = &self.state.failed {
            return Err(e.clone());
        }
        let state = &mut self.state;
        if let Err(e) = self.reader.feed(chunk, &mut |ev| state.on_event(ev, out)) {
            state.failed.get_or_insert(sse_error(e));
        }
        self.state.failed.clone().map_or(Ok(()), Err)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(e) = &self.state.failed {
            return Err(e.clone());
        }
        if self.state.closed {
            return Ok(());
        }
        let state = &mut self.state;
        if let Err(e) = self.reader.finish(&mut |ev| state.on_event(ev, out)) {
            state.failed.get_or_insert(sse_error(e));
        }
        if let Some(e) = &self.state.failed {
            return Err(e.clone());
        }
        if !self.state.ended {
            let e = ApiError::bad_gateway("upstream_stream_truncated", "Cohere stream ended before message-end");
            self.state.failed = Some(e.clone());
            return Err(e);
        }
        self.state.closed = true;
        let usage = self.state.usage;
        self.state.writer.done(out, usage.as_ref());
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.state.usage
    }
}

/// Seconds from a `Retry-After` header (integer or fractional seconds; HTTP dates are ignored).
fn retry_after_secs(v: &str) -> Option<u64> {
    let v = v.trim();
    v.parse::<u64>().ok().or_else(|| v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.ceil() as u64))
}

/// Cohere's error message (`{"id":…,"message":…}`), or the raw body text, or the status.
fn upstream_message(status: u16, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("Cohere returned HTTP {status}");
    }
    text.chars().take(500).collect()
}

/// A non-2xx Cohere answer → the OpenAI error the client sees (see the module docs of
/// [`crate::translate`] for the policy).
pub fn error(status: u16, body: &[u8], retry_after: Option<&str>) -> ApiError {
    let msg = upstream_message(status, body);
    let retry = retry_after.and_then(retry_after_secs);
    let err = match status {
        400 => ApiError::new(400, "invalid_request_error", Some("invalid_request"), msg),
        404 => ApiError::new(404, "invalid_request_error", Some("not_found"), msg),
        413 => ApiError::new(413, "invalid_request_error", Some("request_too_large"), msg),
        422 => ApiError::new(422, "invalid_request_error", Some("unprocessable_entity"), msg),
        429 => ApiError::new(429, "rate_limit_error", Some("rate_limit_exceeded"), msg),
        // Cohere's invalid-token status is 498; all three mean the gateway's key failed.
        401 | 403 | 498 => {
            ApiError::bad_gateway("upstream_auth_failed", format!("Cohere rejected the gateway's credentials: {msg}"))
        }
        503 => ApiError::unavailable("upstream_unavailable", msg),
        504 => ApiError::gateway_timeout(msg),
        _ => ApiError::bad_gateway("upstream_error", format!("Cohere returned HTTP {status}: {msg}")),
    };
    match retry {
        Some(secs) if status == 429 || status == 503 => err.with_retry_after(secs),
        _ => err,
    }
}
