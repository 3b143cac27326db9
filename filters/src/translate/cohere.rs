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
        Some(_) => {
            return Err(unsupported("tool_choice", PROVIDER, "only auto, none, required and a named function map"))
        }
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
    let msgs =
        field(req, "messages").and_then(Value::as_array).ok_or_else(|| invalid("messages", "must be an array"))?;
    msgs.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

fn message(i: usize, m: &Value) -> Result<Value, ApiError> {
    let path = format!("messages[{i}]");
    let m = m.as_object().ok_or_else(|| invalid(&path, "must be an object"))?;
    let role =
        m.get("role").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{path}.role"), "must be a string"))?;
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
        "function" => {
            Err(unsupported(&format!("{path}.role"), PROVIDER, "legacy function messages; use tool messages"))
        }
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
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("{cpath}.id"), "must be a string"))?;
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
                let text = part
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(&format!("{ppath}.text"), "must be a string"))?;
                out.push(json!({"type": "text", "text": text}));
            }
            Some("image_url") if images => out.push(image(&ppath, part)?),
            Some(other) => {
                return Err(unsupported(
                    &format!("{ppath}.type"),
                    PROVIDER,
                    &format!("`{other}` parts are not supported here"),
                ))
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
pub(crate) fn usage_of(u: Option<&Value>) -> Option<Usage> {
    let u = u?;
    let pick = |key: &str| {
        count(u.get("tokens").and_then(|t| t.get(key)))
            .or_else(|| count(u.get("billed_units").and_then(|b| b.get(key))))
    };
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
    let msg =
        v.get("message").and_then(Value::as_object).ok_or_else(|| bad_upstream("Cohere response has no message"))?;
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
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad_upstream("Cohere tool call has no name"))?;
        let arguments = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Object(o)) => Value::Object(o.clone()).to_string(),
            _ => "{}".into(),
        };
        let id =
            call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{}", tool_calls.len()), str::to_string);
        tool_calls.push(ToolCall { id, name: name.to_string(), arguments });
    }

    let message = Message {
        content: if text.is_empty() && !tool_calls.is_empty() { None } else { Some(text) },
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
        ..Default::default()
    };
    let usage = usage_of(v.get("usage"));
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
                let (index, has_args) = self
                    .open_tool
                    .as_mut()
                    .ok_or_else(|| bad_upstream("Cohere tool-call-delta outside a tool call"))?;
                *has_args |= !frag.is_empty();
                let index = *index;
                self.writer.tool_call_args(out, index, frag);
            }
            "tool-call-end" => self.close_tool(out),
            "message-end" => {
                self.close_tool(out);
                let delta = v.get("delta");
                let reason = finish_reason(delta.and_then(|d| d.get("finish_reason")).and_then(Value::as_str))?;
                self.usage = usage_of(delta.and_then(|d| d.get("usage")));
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
    v.parse::<u64>()
        .ok()
        .or_else(|| v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.ceil() as u64))
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
            ApiError::bad_gateway("upstream_auth_failed", format!("Cohere rejected the gateway's credentials (HTTP {status}); the provider's message is not passed on, as it may quote the key"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_splits, Rng};

    const TEXT: &[u8] = include_bytes!("../../../fixtures/cohere/chat-text.json");
    const CACHED: &[u8] = include_bytes!("../../../fixtures/cohere/chat-text-cached-tokens.json");
    const TOOL: &[u8] = include_bytes!("../../../fixtures/cohere/chat-tool-call.json");
    const REASONING_TOOL: &[u8] = include_bytes!("../../../fixtures/cohere/chat-reasoning-tool-call.json");
    const STREAM_TEXT: &[u8] = include_bytes!("../../../fixtures/cohere/chat-stream-text.sse");
    const STREAM_TOOL: &[u8] = include_bytes!("../../../fixtures/cohere/chat-stream-tool-call.sse");
    const CHUNKS_REASONING: &str = include_str!("../../../fixtures/cohere/chat-stream-reasoning.chunks.txt");
    const CHUNKS_TOOLS: &str = include_str!("../../../fixtures/cohere/chat-stream-tool-call.chunks.txt");
    const ERR_404: &[u8] = include_bytes!("../../../fixtures/cohere/error-404-model-not-found.json");

    fn ropts(include_usage: bool, max_event: usize) -> ResponseOptions {
        ResponseOptions {
            id: "chatcmpl-gw".into(),
            created: 1_700_000_000,
            model: "cohere:command-a".into(),
            include_usage,
            max_event,
        }
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    // ---------------------------------------------------------------- whole responses

    fn translate(body: &[u8]) -> (Value, Option<Usage>) {
        let t = response(body, &ropts(false, 1 << 20)).unwrap();
        (parse(&t.body), t.usage)
    }

    #[test]
    fn golden_text() {
        let fixture = parse(TEXT);
        let (v, u) = translate(TEXT);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], fixture["id"]);
        assert_eq!(v["model"], "cohere:command-a");
        let m = &v["choices"][0]["message"];
        assert_eq!(m["role"], "assistant");
        assert_eq!(m["content"], fixture["message"]["content"][0]["text"]);
        assert!(m.get("reasoning_content").is_none() && m.get("tool_calls").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let u = u.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens), (70, 28, 98, 0));
        assert_eq!(v["usage"]["prompt_tokens"], 70);
        assert_eq!(v["usage"]["total_tokens"], 98);
    }

    #[test]
    fn golden_cached_tokens() {
        let (v, u) = translate(CACHED);
        assert_eq!(v["choices"][0]["message"]["content"], "The capital of France is Paris.");
        let u = u.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens), (507, 10, 517, 448));
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 448);
    }

    #[test]
    fn golden_tool_call() {
        let fixture = parse(TOOL);
        let (v, u) = translate(TOOL);
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["reasoning_content"], fixture["message"]["tool_plan"]);
        assert_eq!(m["tool_calls"][0]["id"], "Person_zh3gneaxfh7q");
        assert_eq!(m["tool_calls"][0]["type"], "function");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "Person");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            fixture["message"]["tool_calls"][0]["function"]["arguments"]
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let u = u.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (906, 77, 983));
    }

    #[test]
    fn golden_reasoning_tool_call() {
        let fixture = parse(REASONING_TOOL);
        let (v, u) = translate(REASONING_TOOL);
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["reasoning_content"], fixture["message"]["content"][0]["thinking"]);
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_the_weather");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"location\":\"Osaka\"}");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let u = u.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_tokens), (1494, 330, 1008));
    }

    #[test]
    fn response_finish_reasons_and_fallbacks() {
        let body = |reason: &str| {
            json!({"id": "x", "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
                   "finish_reason": reason, "usage": {"billed_units": {"input_tokens": 4.0, "output_tokens": 2}}})
            .to_string()
        };
        for (reason, want) in
            [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"), ("NEW_THING", "stop")]
        {
            let (v, u) = translate(body(reason).as_bytes());
            assert_eq!(v["choices"][0]["finish_reason"], want, "{reason}");
            assert_eq!(u.unwrap().total_tokens, 6, "billed_units fallback");
        }
        let e = response(body("ERROR").as_bytes(), &ropts(false, 1 << 20)).unwrap_err();
        assert_eq!((e.status, e.code), (502, Some("upstream_error")));
        let e = response(body("TIMEOUT").as_bytes(), &ropts(false, 1 << 20)).unwrap_err();
        assert_eq!(e.status, 504);
        // Thinking and a tool plan in one answer, empty arguments, no id.
        let both = json!({"message": {"content": [{"type": "thinking", "thinking": "T"}], "tool_plan": "P",
                          "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": ""}}]},
                          "finish_reason": "TOOL_CALL"});
        let (v, u) = translate(both.to_string().as_bytes());
        assert_eq!(v["id"], "chatcmpl-gw");
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "T\n\nP");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["id"], "call_0");
        assert!(u.is_none() && v.get("usage").is_none());
    }

    #[test]
    fn response_garbage_is_502() {
        for body in [&b"not json"[..], b"[]", b"{}", b"{\"message\":{\"tool_calls\":[{\"function\":{}}]}}"] {
            assert_eq!(response(body, &ropts(false, 1 << 20)).unwrap_err().status, 502);
        }
    }

    // ---------------------------------------------------------------- streams

    /// The data payloads of a recorded SSE body, parsed independently of the code under test.
    fn sse_payloads(raw: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(raw).unwrap();
        text.split("\n\n")
            .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn chunk_payloads(raw: &str) -> Vec<Value> {
        raw.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// A data-only `.chunks.txt` recording in Cohere's real framing (`event:` + `data:`, `[DONE]`).
    fn chunks_to_sse(raw: &str) -> Vec<u8> {
        let mut out = String::new();
        for line in raw.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            out.push_str(&format!("event: {}\ndata: {}\n\n", v["type"].as_str().unwrap(), line));
        }
        out.push_str("data: [DONE]\n\n");
        out.into_bytes()
    }

    #[derive(Debug, Default, PartialEq)]
    struct Answer {
        id: String,
        content: String,
        reasoning: String,
        /// (id, name, arguments)
        tools: Vec<(String, String, String)>,
        finish: String,
        /// (prompt, completion, cached)
        usage: (u64, u64, u64),
    }

    fn num(v: &Value) -> u64 {
        v.as_u64().unwrap_or(0)
    }

    /// What the client must end up with, computed from the provider's own events.
    fn expected(payloads: &[Value]) -> Answer {
        let mut a = Answer::default();
        let mut plan = String::new();
        for p in payloads {
            let m = &p["delta"]["message"];
            match p["type"].as_str().unwrap() {
                "message-start" => a.id = p["id"].as_str().unwrap().into(),
                "content-delta" => {
                    a.content += m["content"]["text"].as_str().unwrap_or("");
                    a.reasoning += m["content"]["thinking"].as_str().unwrap_or("");
                }
                "tool-plan-delta" => plan += m["tool_plan"].as_str().unwrap(),
                "tool-call-start" => a.tools.push((
                    m["tool_calls"]["id"].as_str().unwrap().into(),
                    m["tool_calls"]["function"]["name"].as_str().unwrap().into(),
                    m["tool_calls"]["function"]["arguments"].as_str().unwrap().into(),
                )),
                "tool-call-delta" => {
                    a.tools.last_mut().unwrap().2 += m["tool_calls"]["function"]["arguments"].as_str().unwrap()
                }
                "message-end" => {
                    let d = &p["delta"];
                    a.finish = match d["finish_reason"].as_str().unwrap() {
                        "TOOL_CALL" => "tool_calls",
                        "MAX_TOKENS" => "length",
                        _ => "stop",
                    }
                    .into();
                    let u = &d["usage"];
                    a.usage = (
                        num(&u["tokens"]["input_tokens"]),
                        num(&u["tokens"]["output_tokens"]),
                        num(&u["cached_tokens"]),
                    );
                }
                _ => {}
            }
        }
        if !plan.is_empty() && !a.reasoning.is_empty() {
            a.reasoning += "\n\n";
        }
        a.reasoning += &plan;
        a
    }

    /// What an OpenAI client reassembles from our output (also checks the envelope).
    fn reassemble(out: &[u8]) -> Answer {
        let mut events = Vec::new();
        SseReader::new(1 << 20).feed(out, &mut |e| events.push(e.data)).unwrap();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let mut a = Answer::default();
        for (n, data) in events[..events.len() - 1].iter().enumerate() {
            let c: Value = serde_json::from_str(data).unwrap();
            assert_eq!(c["object"], "chat.completion.chunk");
            if n == 0 {
                a.id = c["id"].as_str().unwrap().into();
                assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
            }
            assert_eq!(c["id"].as_str(), Some(a.id.as_str()), "one id per stream");
            if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
                assert_eq!(c["choices"], json!([]));
                assert_eq!(num(&u["total_tokens"]), num(&u["prompt_tokens"]) + num(&u["completion_tokens"]));
                a.usage = (
                    num(&u["prompt_tokens"]),
                    num(&u["completion_tokens"]),
                    num(&u["prompt_tokens_details"]["cached_tokens"]),
                );
                continue;
            }
            let ch = &c["choices"][0];
            let d = &ch["delta"];
            a.content += d["content"].as_str().unwrap_or("");
            a.reasoning += d["reasoning_content"].as_str().unwrap_or("");
            for tc in d["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(i, a.tools.len(), "tool calls are indexed 0, 1, ...");
                    a.tools.push((id.into(), tc["function"]["name"].as_str().unwrap().into(), String::new()));
                }
                a.tools[i].2 += tc["function"]["arguments"].as_str().unwrap_or("");
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                assert!(a.finish.is_empty(), "one finish chunk");
                a.finish = f.into();
            }
        }
        a
    }

    /// Feeds `input` in the given piece sizes (the rest in one piece), then finishes.
    fn run(input: &[u8], sizes: &mut dyn FnMut() -> usize, opts: ResponseOptions) -> Result<Vec<u8>, ApiError> {
        let mut s = stream(opts);
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            s.feed(&rest[..n], &mut out)?;
            rest = &rest[n..];
        }
        s.finish(&mut out)?;
        Ok(out)
    }

    fn check_stream(input: &[u8], payloads: &[Value]) {
        let opts = ropts(true, 1 << 20);
        let whole = run(input, &mut || usize::MAX, opts.clone()).unwrap();
        let want = expected(payloads);
        assert!(!want.id.is_empty());
        assert_eq!(reassemble(&whole), want);
        let one = run(input, &mut || 1, opts.clone()).unwrap();
        assert_eq!(one, whole, "1-byte feeding");
        for seed in 1..=150u64 {
            let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let split = run(input, &mut || 1 + rng.below(64), opts.clone()).unwrap();
            assert_eq!(split, whole, "seed {seed}");
        }
        // Without include_usage: no usage chunk, otherwise the same.
        let plain = run(input, &mut || usize::MAX, ropts(false, 1 << 20)).unwrap();
        assert!(!String::from_utf8(plain).unwrap().contains("\"usage\""));
    }

    #[test]
    fn golden_stream_text() {
        let payloads = sse_payloads(STREAM_TEXT);
        check_stream(STREAM_TEXT, &payloads);
        let a = expected(&payloads);
        assert!(a.content.starts_with("Hi there! You're Pickle Rick?"));
        assert_eq!((a.finish.as_str(), a.usage), ("stop", (70, 69, 0)));
    }

    #[test]
    fn golden_stream_tool_call() {
        let payloads = sse_payloads(STREAM_TOOL);
        check_stream(STREAM_TOOL, &payloads);
        let a = expected(&payloads);
        assert_eq!(a.tools.len(), 1);
        let args: Value = serde_json::from_str(&a.tools[0].2).unwrap();
        assert_eq!(args, json!({"name": "Erick", "age": 27}));
        assert!(a.reasoning.starts_with("I will use the Person tool"));
        assert_eq!((a.finish.as_str(), a.usage), ("tool_calls", (906, 77, 0)));
    }

    #[test]
    fn golden_stream_reasoning() {
        let payloads = chunk_payloads(CHUNKS_REASONING);
        check_stream(&chunks_to_sse(CHUNKS_REASONING), &payloads);
        let a = expected(&payloads);
        assert!(a.reasoning.starts_with("The user is asking") && a.content == "The answer to 2 + 2 is 4.");
        assert_eq!(a.usage, (1394, 54, 1360));
    }

    #[test]
    fn golden_stream_parallel_tool_calls() {
        let payloads = chunk_payloads(CHUNKS_TOOLS);
        check_stream(&chunks_to_sse(CHUNKS_TOOLS), &payloads);
        let a = expected(&payloads);
        let names: Vec<&str> = a.tools.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(names, ["weather", "cityAttractions"]);
        assert_eq!(a.usage, (1549, 95, 1504));
    }

    #[test]
    fn stream_and_whole_agree() {
        // The same answer, whole and streamed, reads the same to a client.
        let whole = parse(&response(TOOL, &ropts(false, 1 << 20)).unwrap().body);
        let streamed = reassemble(&run(STREAM_TOOL, &mut || usize::MAX, ropts(true, 1 << 20)).unwrap());
        let m = &whole["choices"][0]["message"];
        assert_eq!(m["reasoning_content"].as_str(), Some(streamed.reasoning.as_str()));
        assert_eq!(whole["choices"][0]["finish_reason"].as_str(), Some(streamed.finish.as_str()));
    }

    fn feed_all(input: &[u8]) -> (Result<(), ApiError>, Vec<u8>) {
        let mut s = stream(ropts(false, 1 << 20));
        let mut out = Vec::new();
        let r = s.feed(input, &mut out).and_then(|()| s.finish(&mut out));
        (r, out)
    }

    #[test]
    fn stream_end_and_error_handling() {
        // [DONE] without message-end is a truncated stream.
        let cut = b"event: message-start\ndata: {\"id\":\"a\",\"type\":\"message-start\"}\n\ndata: [DONE]\n\n";
        assert_eq!(feed_all(cut).0.unwrap_err().code, Some("upstream_stream_truncated"));
        // message-end without [DONE] is complete.
        let no_done = b"data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\"}}\n\n";
        let (r, out) = feed_all(no_done);
        r.unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with("data: [DONE]\n\n"));
        // A generation that failed upstream.
        let failed = b"data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"ERROR\"}}\n\n";
        assert_eq!(feed_all(failed).0.unwrap_err().status, 502);
        let timeout = b"data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"TIMEOUT\"}}\n\n";
        assert_eq!(feed_all(timeout).0.unwrap_err().status, 504);
        // Error bodies inside the stream.
        let e = feed_all(b"data: {\"id\":\"x\",\"message\":\"internal error\"}\n\n").0.unwrap_err();
        assert!(e.message.contains("internal error") && e.status == 502);
        assert_eq!(feed_all(b"event: error\ndata: {\"message\":\"boom\"}\n\n").0.unwrap_err().status, 502);
        // Deltas for a tool call never started; non-JSON data.
        let orphan = b"data: {\"type\":\"tool-call-delta\",\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"x\"}}}}}\n\n";
        assert!(feed_all(orphan).0.is_err());
        assert!(feed_all(b"data: nope\n\n").0.is_err());
        // Once failed, the stream stays failed and writes nothing more.
        let mut s = stream(ropts(false, 1 << 20));
        let mut out = Vec::new();
        assert!(s.feed(b"data: nope\n\n", &mut out).is_err());
        let len = out.len();
        assert!(s.feed(STREAM_TEXT, &mut out).is_err() && s.finish(&mut out).is_err());
        assert_eq!(out.len(), len);
    }

    #[test]
    fn stream_tool_call_without_arguments_gets_empty_object() {
        let input = concat!(
            "data: {\"type\":\"tool-call-start\",\"index\":0,\"delta\":{\"message\":{\"tool_calls\":{\"id\":\"t1\",\"type\":\"function\",\"function\":{\"name\":\"now\",\"arguments\":\"\"}}}}}\n\n",
            "data: {\"type\":\"tool-call-end\",\"index\":0}\n\n",
            "data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"TOOL_CALL\"}}\n\n",
        );
        let (r, out) = feed_all(input.as_bytes());
        r.unwrap();
        let a = reassemble(&out);
        assert_eq!(a.tools, vec![("t1".into(), "now".into(), "{}".into())]);
        assert_eq!(a.id, "chatcmpl-gw", "no message-start: the gateway's id");
    }

    /// `SseReader::buffered` reports the line buffer's capacity, which `Vec` growth may take up to
    /// twice the bytes it holds; the bytes held never exceed `max_event`. Hence the `2 *` bound.
    #[test]
    fn fuzz_stream_decoder() {
        let max_event = 512;
        let fixtures: Vec<Vec<u8>> = vec![
            STREAM_TEXT.to_vec(),
            STREAM_TOOL.to_vec(),
            chunks_to_sse(CHUNKS_REASONING),
            chunks_to_sse(CHUNKS_TOOLS),
        ];
        let alphabet = b"data: event:{}[]\"\n\r\n:,message-endtype\\\xff\xc3";
        let mut rng = Rng::new(0x2545_F491_4F6C_DD1D);
        for iter in 0..4000 {
            let input: Vec<u8> = match iter % 4 {
                // Random bytes, biased towards SSE and JSON syntax.
                0 => (0..rng.below(600)).map(|_| alphabet[rng.below(alphabet.len())]).collect(),
                1 => {
                    let len = rng.below(600);
                    rng.bytes(len)
                }
                // A fixture with random byte mutations.
                2 => {
                    let mut f = fixtures[rng.below(fixtures.len())].clone();
                    for _ in 0..1 + rng.below(8) {
                        let i = rng.below(f.len());
                        f[i] = alphabet[rng.below(alphabet.len())];
                    }
                    f
                }
                // A fixture truncated anywhere.
                _ => {
                    let f = &fixtures[rng.below(fixtures.len())];
                    f[..rng.below(f.len())].to_vec()
                }
            };
            let mut s = stream(ropts(rng.below(2) == 0, max_event));
            let mut out = Vec::new();
            let mut result = Ok(());
            for piece in random_splits(&input, &mut rng, 64) {
                result = s.feed(piece, &mut out);
                assert!(
                    s.reader.buffered() <= 2 * max_event + 64,
                    "iteration {iter}: {} buffered",
                    s.reader.buffered()
                );
                if result.is_err() {
                    break;
                }
            }
            let result = result.and_then(|()| s.finish(&mut out));
            if iter % 4 < 2 {
                assert!(result.is_err(), "iteration {iter}: garbage must not pass as a stream");
            }
            if let Err(e) = result {
                assert!(e.status >= 500, "iteration {iter}: {e}");
            }
        }
        // A truncated recording fails, whatever the cut, until its message-end is complete.
        let end = memchr::memmem::find(STREAM_TEXT, b"event: message-end").unwrap();
        for cut in (0..end).step_by(7) {
            assert!(feed_all(&STREAM_TEXT[..cut]).0.is_err(), "cut at {cut}");
        }
        // One event bigger than max_event is an error, not unbounded buffering.
        let mut s = stream(ropts(false, max_event));
        let big = format!("data: {{\"type\":\"content-delta\",\"text\":\"{}\"}}\n\n", "a".repeat(4 * max_event));
        let mut out = Vec::new();
        assert!(big.as_bytes().chunks(32).try_for_each(|c| s.feed(c, &mut out)).is_err());
        assert!(s.reader.buffered() <= 2 * max_event + 64);
    }

    // ---------------------------------------------------------------- requests

    fn req_with(body: Value, stream: bool) -> Result<Value, ApiError> {
        let r = request(body.to_string().as_bytes(), &RequestOptions { model: "command-a-03-2025", stream })?;
        assert_eq!(r.path, "/v2/chat");
        assert!(r.headers.is_empty());
        Ok(parse(&r.body))
    }

    fn req(extra: Value) -> Value {
        let mut body = json!({"model": "cohere:x", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        req_with(body, false).unwrap()
    }

    fn req_err(extra: Value) -> ApiError {
        let mut body = json!({"model": "cohere:x", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e = req_with(body, false).unwrap_err();
        assert_eq!(e.status, 400);
        e
    }

    #[test]
    fn request_minimal_and_stream() {
        let v = req(json!({}));
        assert_eq!(v, json!({"model": "command-a-03-2025", "messages": [{"role": "user", "content": "hi"}]}));
        let v = req_with(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,
                                "stream_options": {"include_usage": true}}),
            true,
        )
        .unwrap();
        assert_eq!(v["stream"], true);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn request_messages_multi_turn() {
        let v = req(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "dev rules"}]},
            {"role": "user", "name": "bob", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "reasoning_content": "I will call get_weather.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
        ]}));
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": [{"type": "text", "text": "dev rules"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "tool_plan": "I will call get_weather.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
            ])
        );
    }

    #[test]
    fn request_sampling_fields() {
        let v = req(json!({"temperature": 0.2, "top_p": 0.5, "max_tokens": 50, "stop": "END", "seed": 7,
                           "frequency_penalty": 0.1, "presence_penalty": 0.3}));
        assert_eq!(v["temperature"], 0.2);
        assert_eq!(v["p"], 0.5);
        assert_eq!(v["max_tokens"], 50);
        assert_eq!(v["stop_sequences"], json!(["END"]));
        assert_eq!(v["seed"], 7);
        assert_eq!(v["frequency_penalty"], 0.1);
        assert_eq!(v["presence_penalty"], 0.3);
        assert!(v.get("top_p").is_none() && v.get("stop").is_none());
        assert_eq!(req(json!({"top_p": 1.0}))["p"], 0.99);
        assert_eq!(req(json!({"top_p": 0}))["p"], 0.01);
        assert_eq!(req(json!({"max_tokens": 10, "max_completion_tokens": 20}))["max_tokens"], 20);
        assert_eq!(req(json!({"stop": ["a", "b"]}))["stop_sequences"], json!(["a", "b"]));
        // null is absent; harmless fields are dropped.
        let v = req(json!({"temperature": null, "n": 1, "logprobs": false, "user": "u1", "store": true,
                           "metadata": {"a": "b"}, "service_tier": "auto", "parallel_tool_calls": false,
                           "modalities": ["text"], "logit_bias": {}, "safety_identifier": "s", "prompt_cache_key": "k"}));
        assert_eq!(v, json!({"model": "command-a-03-2025", "messages": [{"role": "user", "content": "hi"}]}));
    }

    #[test]
    fn request_response_format_and_reasoning() {
        assert!(req(json!({"response_format": {"type": "text"}})).get("response_format").is_none());
        assert_eq!(
            req(json!({"response_format": {"type": "json_object"}}))["response_format"],
            json!({"type": "json_object"})
        );
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let v = req(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": schema}}}),
        );
        assert_eq!(v["response_format"], json!({"type": "json_object", "json_schema": schema}));
        for (effort, want) in [
            ("none", json!({"type": "disabled"})),
            ("minimal", json!({"type": "enabled", "token_budget": 1024})),
            ("low", json!({"type": "enabled", "token_budget": 4096})),
            ("medium", json!({"type": "enabled", "token_budget": 8192})),
            ("high", json!({"type": "enabled", "token_budget": 16384})),
        ] {
            assert_eq!(req(json!({"reasoning_effort": effort}))["thinking"], want, "{effort}");
        }
        assert_eq!(req_err(json!({"reasoning_effort": "max"})).param.as_deref(), Some("reasoning_effort"));
        assert!(req_err(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}))
            .param
            .is_some());
        assert_eq!(
            req_err(json!({"response_format": {"type": "grammar"}})).param.as_deref(),
            Some("response_format.type")
        );
    }

    fn weather_tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather", "strict": true,
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time"}},
        ])
    }

    #[test]
    fn request_tools_and_tool_choice() {
        let v = req(json!({"tools": weather_tools(), "tool_choice": "auto"}));
        assert_eq!(
            v["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
            ])
        );
        assert_eq!(v["strict_tools"], true);
        assert!(v.get("tool_choice").is_none());
        assert_eq!(req(json!({"tools": weather_tools(), "tool_choice": "none"}))["tool_choice"], "NONE");
        assert_eq!(req(json!({"tools": weather_tools(), "tool_choice": "required"}))["tool_choice"], "REQUIRED");
        let named = req(
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        );
        assert_eq!(named["tool_choice"], "REQUIRED");
        assert_eq!(named["tools"].as_array().unwrap().len(), 1);
        assert_eq!(named["tools"][0]["function"]["name"], "get_time");
        // No tools: `none`/`auto` need nothing, `required` cannot be honoured.
        assert!(req(json!({"tool_choice": "none"})).get("tool_choice").is_none());
        req_err(json!({"tool_choice": "required"}));
        req_err(json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}));
        let e =
            req_err(json!({"tools": weather_tools(), "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = req_err(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn request_unsupported_is_400_naming_the_field() {
        for (extra, param) in [
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"audio": {"voice": "alloy", "format": "wav"}}), "audio"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"prediction": {"type": "content", "content": "x"}}), "prediction"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"stop": 5}), "stop"),
            (json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (json!({"messages": [{"role": "assistant", "audio": {"id": "a"}}]}), "messages[0].audio"),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
        ] {
            let e = req_err(extra.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        let e = request(b"{nope", &RequestOptions { model: "m", stream: false }).unwrap_err();
        assert_eq!(e.status, 400);
    }

    // ---------------------------------------------------------------- errors

    #[test]
    fn error_mapping() {
        let e = error(404, ERR_404, None);
        assert_eq!((e.status, e.kind), (404, "invalid_request_error"));
        assert_eq!(e.message, parse(ERR_404)["message"].as_str().unwrap());
        let body = br#"{"id":"1","message":"You are using a Trial key, which is limited to 10 API calls / minute."}"#;
        let e = error(429, body, Some("7"));
        assert_eq!((e.status, e.kind, e.retry_after), (429, "rate_limit_error", Some(7)));
        assert!(e.message.contains("Trial key"));
        assert_eq!(error(429, body, Some("1.2")).retry_after, Some(2));
        assert_eq!(error(429, body, None).retry_after, None);
        for status in [401, 403, 498] {
            let e = error(status, br#"{"id":"1","message":"invalid api token"}"#, None);
            assert_eq!((e.status, e.code), (502, Some("upstream_auth_failed")), "{status}");
            assert!(!e.message.contains("invalid api token"), "{}", e.message);
        }
        for (status, want) in [(400, 400), (413, 413), (422, 422), (500, 502), (501, 502), (503, 503), (504, 504)] {
            assert_eq!(error(status, br#"{"id":"1","message":"m"}"#, None).status, want, "{status}");
        }
        let e = error(503, b"", Some("3"));
        assert_eq!((e.status, e.retry_after), (503, Some(3)));
        assert!(e.message.contains("503"));
        assert_eq!(error(500, b"<html>oops</html>", None).message, "Cohere returned HTTP 500: <html>oops</html>");
    }
}
