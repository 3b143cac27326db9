//! OpenAI Chat Completions ⇄ Anthropic Messages (`POST /v1/messages`, `anthropic-version:
//! 2023-06-01`, key in `x-api-key`).
//!
//! # Request mapping
//!
//! | OpenAI | Anthropic |
//! | --- | --- |
//! | `system` / `developer` messages | top-level `system` text blocks, in order (Anthropic has no mid-conversation system turn, so later ones are hoisted too) |
//! | `user` text / `image_url` / `file` (PDF data URL) parts | `text` / `image` (`base64` from data URLs, `url` from http(s) URLs) / `document` blocks |
//! | `assistant` content, `tool_calls`, `thinking_blocks` | `text`, `tool_use` (arguments parsed, key order kept), `thinking` / `redacted_thinking` blocks first |
//! | `tool` messages (`tool_call_id`) | `tool_result` blocks in one `user` turn (consecutive turns of one role are merged, as Anthropic requires) |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens` (required upstream: default [`DEFAULT_MAX_TOKENS`], plus the thinking budget when thinking is on) |
//! | `temperature` (0–1 only), `top_p`, `stop` (string or array) | `temperature`, `top_p`, `stop_sequences` |
//! | `tools` (`function` only; `strict` kept) | `tools` with `input_schema` (verbatim, key order kept; `{"type":"object"}` when absent) |
//! | `tool_choice` auto / none / required / named | `{"type":"auto"}` / `{"type":"none"}` / `{"type":"any"}` / `{"type":"tool","name"}` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | `response_format` `json_schema` | `output_config.format` `{"type":"json_schema","schema"}` (name/description have no equivalent) |
//! | `reasoning_effort` | `thinking: {"type":"enabled","budget_tokens"}`, table below; `"none"` leaves thinking off |
//! | `safety_identifier`, else `user` | `metadata.user_id` |
//! | `stream` | `stream: true` |
//!
//! Thinking budget (tokens) per `reasoning_effort`: `minimal` 1024 (Anthropic's minimum), `low`
//! 2048, `medium` 8192, `high` 16384. Anthropic counts thinking inside `max_tokens`, as OpenAI
//! counts reasoning inside `max_completion_tokens`: without a client limit `max_tokens` is the
//! budget plus [`DEFAULT_MAX_TOKENS`]; with one at or below the budget the budget shrinks to half
//! the limit (at least 1024), and a limit of 1024 or less is a 400. With thinking on, Anthropic
//! rejects `temperature` other than 1, `top_p` below 0.95 and forced tool use, so those are 400s
//! here with the OpenAI parameter named.
//!
//! 400 (no Anthropic equivalent): `n` > 1, `logprobs: true`, `top_logprobs`, non-zero
//! `frequency_penalty` / `presence_penalty`, non-empty `logit_bias`, `audio`, `modalities` other
//! than text, `response_format: json_object` (Anthropic has no unconstrained JSON mode: send a
//! `json_schema`), `verbosity`, `web_search_options`, legacy `functions` / `function_call` /
//! role `function`, non-function tools, `input_audio` parts, `file` parts other than PDF data,
//! images that are neither data URLs nor http(s), `temperature` above 1, and any field this
//! module does not know (an unknown field may change the answer, so it is never dropped).
//!
//! Dropped silently because they cannot change the answer: `store`, `metadata` (OpenAI's stored
//! completion tags), `service_tier`, `seed`, `prompt_cache_key`, `prompt_cache_retention`,
//! `prediction` (a latency hint), `stream_options` (the gateway handles it), `logprobs: false`,
//! zero penalties, `image_url.detail`, a message's `name`, `json_schema.name` / `description` /
//! `strict` (Anthropic's structured output is always strict), empty text parts and messages left
//! with no content (Anthropic rejects empty text blocks).
//!
//! # Response mapping
//!
//! `text` blocks are joined into `content`; `thinking` text into `reasoning_content`; thinking
//! blocks (with signatures) and `redacted_thinking` blocks are also returned as the message's
//! `thinking_blocks`, which a client sends back on the assistant message to continue a tool loop
//! with thinking on. In streams the signature arrives as a delta
//! `{"thinking_blocks":[{"type":"thinking","signature":…}]}` (the thinking text is the streamed
//! `reasoning_content`) and a redacted block as `{"thinking_blocks":[{"type":"redacted_thinking","data":…}]}`.
//! `tool_use` becomes `tool_calls` (a call streamed with no argument fragments gets `{}`). Blocks a
//! Chat Completions request cannot have asked for (server tools and their results, compaction,
//! citations) are not part of the OpenAI answer and are skipped. The Anthropic message id
//! (`msg_…`) is the completion id. `stop_reason`: `end_turn`, `stop_sequence`, `pause_turn` →
//! `stop`; `max_tokens`, `model_context_window_exceeded` → `length`; `tool_use` → `tool_calls`;
//! `refusal` → `content_filter`.
//!
//! Usage: `prompt_tokens` = `input_tokens` + `cache_creation_input_tokens` +
//! `cache_read_input_tokens` (OpenAI counts cached prompt tokens inside the prompt);
//! `cached_tokens` = cache reads, `cache_write_tokens` = cache creation, `reasoning_tokens` =
//! `output_tokens_details.thinking_tokens` when sent. In streams, `message_delta.usage` is
//! cumulative: each field it carries replaces the one from `message_start`.

use super::{
    completion, finish, parse_object, unsupported, ChunkWriter, Message, RequestOptions, ResponseOptions,
    StreamTranscoder, ToolCall, Translated, UpstreamRequest,
};
use crate::sse::{Event, SseError, SseReader};
use crate::usage::Usage;
use crate::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// The provider name used in error messages.
pub const PROVIDER: &str = "Anthropic";
/// Request path relative to the base URL (`https://api.anthropic.com`).
pub const PATH: &str = "/v1/messages";
/// The `anthropic-version` header every request carries.
pub const VERSION: &str = "2023-06-01";
/// `max_tokens` when the client sets no limit (Anthropic requires one). 4096 is accepted by
/// every current Claude model.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// Anthropic's smallest thinking budget.
const MIN_BUDGET: u64 = 1024;
/// Blocks open at once in a stream before the stream is deemed broken (Anthropic opens one at a
/// time; the bound keeps a hostile stream from growing our state).
const MAX_OPEN_BLOCKS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// The Anthropic request, serialized with raw JSON where the client's key order matters (tool
/// schemas and arguments: the order of properties steers generation).
#[derive(Serialize)]
struct Out<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Value>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct Turn {
    role: &'static str,
    content: Vec<Block>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Block {
    Plain(Value),
    ToolUse(ToolUse),
}

#[derive(Serialize)]
struct ToolUse {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    name: String,
    input: Box<RawValue>,
}

#[derive(Serialize)]
struct OutTool {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<Value>,
}

#[derive(Serialize)]
struct OutputConfig {
    format: Format,
}

#[derive(Serialize)]
struct Format {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: Box<RawValue>,
}

/// Borrowed raw views of the request parts whose key order must survive.
#[derive(Deserialize, Default)]
struct RawParts<'a> {
    #[serde(default, borrow)]
    tools: Option<Vec<RawTool<'a>>>,
    #[serde(default, borrow)]
    response_format: Option<RawFormat<'a>>,
}

#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(default, borrow)]
    function: Option<RawFunction<'a>>,
}

#[derive(Deserialize)]
struct RawFunction<'a> {
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawFormat<'a> {
    #[serde(default, borrow)]
    json_schema: Option<RawSchema<'a>>,
}

#[derive(Deserialize)]
struct RawSchema<'a> {
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

fn bad(param: &str, why: &str) -> ApiError {
    unsupported(param, PROVIDER, why)
}

fn invalid(param: &str, why: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_value", why).with_param(param)
}

/// The raw JSON of `v`, or of its `Value` when no raw text was found.
fn raw_or(raw: Option<&RawValue>, v: &Value) -> Result<Box<RawValue>, ApiError> {
    match raw {
        Some(r) => Ok(r.to_owned()),
        None => serde_json::value::to_raw_value(v).map_err(|e| ApiError::internal(e.to_string())),
    }
}

fn is_null_or(v: Option<&Value>, ok: impl Fn(&Value) -> bool) -> bool {
    v.is_none_or(|v| v.is_null() || ok(v))
}

/// Fields that have no Anthropic equivalent, are accepted only at their neutral value, or are
/// dropped as harmless; anything unknown is a 400.
fn check_fields(req: &Map<String, Value>) -> Result<(), ApiError> {
    const MAPPED: &[&str] = &[
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "user",
        "safety_identifier",
        "n",
    ];
    const DROPPED: &[&str] =
        &["store", "metadata", "service_tier", "seed", "prompt_cache_key", "prompt_cache_retention", "prediction"];
    for (k, v) in req {
        let k = k.as_str();
        if MAPPED.contains(&k) || DROPPED.contains(&k) {
            continue;
        }
        let neutral = match k {
            "logprobs" => v.is_null() || v == &json!(false),
            "top_logprobs" => v.is_null() || v == &json!(0),
            "frequency_penalty" | "presence_penalty" => v.is_null() || v.as_f64() == Some(0.0),
            "logit_bias" => v.is_null() || v.as_object().is_some_and(Map::is_empty),
            "modalities" => v.is_null() || v == &json!(["text"]),
            "audio" | "verbosity" | "web_search_options" | "functions" | "function_call" => v.is_null(),
            _ => return Err(bad(k, "unknown parameter")),
        };
        if !neutral {
            return Err(bad(k, "Anthropic has no equivalent"));
        }
    }
    if !is_null_or(req.get("n"), |v| v.as_u64() == Some(1)) {
        return Err(bad("n", "Anthropic returns one choice per request; only n=1 is supported"));
    }
    Ok(())
}

/// `max_completion_tokens`, else `max_tokens`: (value, the parameter it came from).
fn client_limit(req: &Map<String, Value>) -> Result<Option<(u64, &'static str)>, ApiError> {
    for name in ["max_completion_tokens", "max_tokens"] {
        match req.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => return Ok(Some((n, name))),
                _ => return Err(invalid(name, format!("`{name}` must be a positive integer"))),
            },
        }
    }
    Ok(None)
}

fn budget_for(effort: &str) -> Result<Option<u64>, ApiError> {
    Ok(match effort {
        "none" => None,
        "minimal" => Some(MIN_BUDGET),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(16384),
        _ => {
            return Err(invalid(
                "reasoning_effort",
                format!("`reasoning_effort` must be none, minimal, low, medium or high, not {effort:?}"),
            ))
        }
    })
}

/// Translate a Chat Completions body into an Anthropic Messages request.
pub fn request(body: &[u8], opts: &RequestOptions) -> Result<UpstreamRequest, ApiError> {
    let req = parse_object(body)?;
    check_fields(&req)?;
    // A shape the raw view cannot read is reported by the `Value` checks below.
    let raw: RawParts = serde_json::from_slice(body).unwrap_or_default();

    let effort = match req.get("reasoning_effort") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => budget_for(s)?,
        Some(_) => return Err(invalid("reasoning_effort", "`reasoning_effort` must be a string")),
    };
    let limit = client_limit(&req)?;
    let (max_tokens, thinking) = match (effort, limit) {
        (None, l) => (l.map_or(DEFAULT_MAX_TOKENS, |(n, _)| n), None),
        (Some(b), None) => (b + DEFAULT_MAX_TOKENS, Some(b)),
        (Some(b), Some((n, name))) => {
            let b = if n <= b { (n / 2).max(MIN_BUDGET) } else { b };
            if b >= n {
                return Err(invalid(
                    name,
                    format!("`{name}` must exceed {MIN_BUDGET} when `reasoning_effort` turns Anthropic thinking on"),
                ));
            }
            (n, Some(b))
        }
    };

    let temperature = match req.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {
                if thinking.is_some() && t != 1.0 {
                    return Err(bad(
                        "temperature",
                        "with `reasoning_effort` set, Anthropic accepts only temperature 1",
                    ));
                }
                Some(v.clone())
            }
            Some(_) => return Err(bad("temperature", "Anthropic accepts temperatures from 0 to 1")),
            None => return Err(invalid("temperature", "`temperature` must be a number")),
        },
    };
    let top_p = match req.get("top_p") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(p) if thinking.is_some() && p < 0.95 => {
                return Err(bad("top_p", "with `reasoning_effort` set, Anthropic accepts top_p from 0.95 to 1"))
            }
            Some(_) => Some(v.clone()),
            None => return Err(invalid("top_p", "`top_p` must be a number")),
        },
    };
    let stop_sequences = match req.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop", "`stop` must be a string or an array of strings"))?,
        Some(_) => return Err(invalid("stop", "`stop` must be a string or an array of strings")),
    };

    let tools = tools(&req, &raw)?;
    let tool_choice = tool_choice(&req, !tools.is_empty(), thinking.is_some())?;
    let output_config = response_format(&req, &raw)?;
    let metadata = match ["safety_identifier", "user"].iter().find_map(|k| req.get(*k).filter(|v| !v.is_null())) {
        None => None,
        Some(Value::String(u)) => Some(json!({ "user_id": u })),
        Some(_) => return Err(invalid("user", "`user` must be a string")),
    };
    let (system, messages) = messages(&req)?;

    let out = Out {
        model: opts.model,
        max_tokens,
        system,
        messages,
        temperature,
        top_p,
        stop_sequences,
        tools,
        tool_choice,
        thinking: thinking.map(|b| json!({"type": "enabled", "budget_tokens": b})),
        output_config,
        metadata,
        stream: opts.stream,
    };
    let body = serde_json::to_vec(&out).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(UpstreamRequest { path: PATH.to_string(), body, headers: vec![("anthropic-version", VERSION.to_string())] })
}

fn tools(req: &Map<String, Value>, raw: &RawParts) -> Result<Vec<OutTool>, ApiError> {
    let list = match req.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("tools", "`tools` must be an array")),
    };
    let raw_tools = raw.tools.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(&format!("{p}.type"), "only `function` tools can be sent to Anthropic"));
        }
        let f = t.get("function").and_then(Value::as_object).ok_or_else(|| invalid(&p, "a tool needs `function`"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("{p}.function.name"), "a tool needs a `name`"))?;
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(invalid(&format!("{p}.function.description"), "`description` must be a string")),
        };
        let input_schema = match f.get("parameters") {
            None | Some(Value::Null) => raw_or(None, &json!({"type": "object", "properties": {}}))?,
            Some(v @ Value::Object(_)) => {
                let r = raw_tools.get(i).and_then(|t| t.function.as_ref()).and_then(|f| f.parameters);
                raw_or(r, v)?
            }
            Some(_) => return Err(invalid(&format!("{p}.function.parameters"), "`parameters` must be an object")),
        };
        out.push(OutTool {
            name: name.to_string(),
            description,
            input_schema,
            strict: f.get("strict").and_then(Value::as_bool),
            cache_control: t.get("cache_control").filter(|v| !v.is_null()).cloned(),
        });
    }
    Ok(out)
}

fn tool_choice(req: &Map<String, Value>, has_tools: bool, thinking: bool) -> Result<Option<Value>, ApiError> {
    let choice = match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            _ => return Err(invalid("tool_choice", format!("unknown `tool_choice` {s:?}"))),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad("tool_choice", "only {\"type\":\"function\",\"function\":{\"name\"}} is supported")
                })?;
            Some(json!({"type": "tool", "name": name}))
        }
        Some(_) => return Err(invalid("tool_choice", "`tool_choice` must be a string or an object")),
    };
    if !has_tools {
        return match choice {
            Some(c) if c["type"] == "any" || c["type"] == "tool" => {
                Err(invalid("tool_choice", "`tool_choice` requires `tools`"))
            }
            _ => Ok(None),
        };
    }
    if thinking && choice.as_ref().is_some_and(|c| c["type"] == "any" || c["type"] == "tool") {
        return Err(bad("tool_choice", "with `reasoning_effort` set, Anthropic allows only auto or none"));
    }
    let serial = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    Ok(match choice {
        Some(c) if c["type"] == "none" => Some(c),
        Some(mut c) if serial => {
            c["disable_parallel_tool_use"] = json!(true);
            Some(c)
        }
        None if serial => Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        c => c,
    })
}

fn response_format(req: &Map<String, Value>, raw: &RawParts) -> Result<Option<OutputConfig>, ApiError> {
    let rf = match req.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| invalid("response_format.json_schema.schema", "a JSON schema object is required"))?;
            let r = raw.response_format.as_ref().and_then(|f| f.json_schema.as_ref()).and_then(|j| j.schema);
            Ok(Some(OutputConfig { format: Format { kind: "json_schema", schema: raw_or(r, schema)? } }))
        }
        Some("json_object") => {
            Err(bad("response_format", "Anthropic has no unconstrained JSON mode; use `json_schema` with a schema"))
        }
        _ => Err(invalid("response_format", "`response_format.type` must be text, json_object or json_schema")),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// The text of `content` when it is a string or an array of text parts (system, tool results).
fn text_parts(content: Option<&Value>, p: &str) -> Result<Vec<Value>, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(if s.is_empty() { Vec::new() } else { vec![text_block(s)] }),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = part
                            .get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid(&format!("{p}.content[{j}].text"), "a text part needs `text`"))?;
                        if !t.is_empty() {
                            out.push(with_cache_control(text_block(t), part));
                        }
                    }
                    _ => return Err(bad(&format!("{p}.content[{j}]"), "only text parts are allowed here")),
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(&format!("{p}.content"), "`content` must be a string or an array of parts")),
    }
}

/// Prompt-caching breakpoints some OpenAI clients already set on parts are carried over.
fn with_cache_control(mut block: Value, part: &Value) -> Value {
    if let Some(cc) = part.get("cache_control").filter(|v| !v.is_null()) {
        block["cache_control"] = cc.clone();
    }
    block
}

/// `data:<media type>;base64,<data>` → (media type, data).
fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

fn image_block(part: &Value, p: &str) -> Result<Value, ApiError> {
    let iu = part.get("image_url");
    let url = iu
        .and_then(|u| u.get("url").and_then(Value::as_str).or_else(|| u.as_str()))
        .ok_or_else(|| invalid(&format!("{p}.image_url.url"), "an image part needs `image_url.url`"))?;
    let source = if let Some((media, data)) = data_url(url) {
        if !matches!(media, "image/jpeg" | "image/png" | "image/gif" | "image/webp") {
            return Err(bad(&format!("{p}.image_url.url"), "Anthropic accepts JPEG, PNG, GIF and WebP images"));
        }
        json!({"type": "base64", "media_type": media, "data": data})
    } else if url.starts_with("https://") || url.starts_with("http://") {
        json!({"type": "url", "url": url})
    } else {
        return Err(bad(&format!("{p}.image_url.url"), "images must be base64 data URLs or http(s) URLs"));
    };
    Ok(with_cache_control(json!({"type": "image", "source": source}), part))
}

fn file_block(part: &Value, p: &str) -> Result<Value, ApiError> {
    let data = part.get("file").and_then(|f| f.get("file_data")).and_then(Value::as_str).and_then(data_url);
    match data {
        Some(("application/pdf", data)) => Ok(with_cache_control(
            json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}),
            part,
        )),
        _ => Err(bad(&format!("{p}.file"), "only PDF files sent inline as `file_data` data URLs are supported")),
    }
}

fn user_blocks(content: Option<&Value>, p: &str) -> Result<Vec<Value>, ApiError> {
    let parts = match content {
        Some(Value::Array(parts)) => parts,
        other => return text_parts(other, p),
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let pp = format!("{p}.content[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => out.extend(text_parts(Some(&Value::Array(vec![part.clone()])), p)?),
            Some("image_url") => out.push(image_block(part, &pp)?),
            Some("file") => out.push(file_block(part, &pp)?),
            Some("input_audio") => return Err(bad(&pp, "Anthropic does not accept audio input")),
            _ => return Err(bad(&pp, "unknown content part type")),
        }
    }
    Ok(out)
}

fn thinking_blocks(msg: &Value, p: &str) -> Result<Vec<Value>, ApiError> {
    let blocks = match msg.get("thinking_blocks") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(b)) => b,
        Some(_) => return Err(invalid(&format!("{p}.thinking_blocks"), "`thinking_blocks` must be an array")),
    };
    let reasoning = msg.get("reasoning_content").and_then(Value::as_str).unwrap_or_default();
    let mut out = Vec::new();
    for (k, b) in blocks.iter().enumerate() {
        let pp = format!("{p}.thinking_blocks[{k}]");
        match b.get("type").and_then(Value::as_str) {
            Some("thinking") => {
                let sig = b
                    .get("signature")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(&pp, "a thinking block needs its `signature`"))?;
                // Streamed answers carry the thinking text as `reasoning_content` only.
                let text = b.get("thinking").and_then(Value::as_str).unwrap_or(reasoning);
                out.push(json!({"type": "thinking", "thinking": text, "signature": sig}));
            }
            Some("redacted_thinking") => {
                let data = b
                    .get("data")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(&pp, "a redacted block needs `data`"))?;
                out.push(json!({"type": "redacted_thinking", "data": data}));
            }
            _ => return Err(invalid(&pp, "thinking blocks are `thinking` or `redacted_thinking`")),
        }
    }
    Ok(out)
}

fn assistant_blocks(msg: &Value, p: &str) -> Result<Vec<Block>, ApiError> {
    if !is_null_or(msg.get("function_call"), |_| false) {
        return Err(bad(&format!("{p}.function_call"), "legacy function calls are not supported; use tool_calls"));
    }
    if !is_null_or(msg.get("audio"), |_| false) {
        return Err(bad(&format!("{p}.audio"), "Anthropic has no audio output"));
    }
    let mut out: Vec<Block> = thinking_blocks(msg, p)?.into_iter().map(Block::Plain).collect();
    match msg.get("content") {
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let text = match part.get("type").and_then(Value::as_str) {
                    Some("text") => part.get("text"),
                    Some("refusal") => part.get("refusal"),
                    _ => return Err(bad(&format!("{p}.content[{j}]"), "assistant content parts are text or refusal")),
                };
                let text = text
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(&format!("{p}.content[{j}]"), "a part needs its text"))?;
                if !text.is_empty() {
                    out.push(Block::Plain(with_cache_control(text_block(text), part)));
                }
            }
        }
        other => out.extend(text_parts(other, p)?.into_iter().map(Block::Plain)),
    }
    let calls = match msg.get("tool_calls") {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Array(c)) => c,
        Some(_) => return Err(invalid(&format!("{p}.tool_calls"), "`tool_calls` must be an array")),
    };
    for (k, c) in calls.iter().enumerate() {
        let pp = format!("{p}.tool_calls[{k}]");
        if !is_null_or(c.get("type"), |t| t == "function") {
            return Err(bad(&format!("{pp}.type"), "only function tool calls can be sent to Anthropic"));
        }
        let id = c.get("id").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{pp}.id"), "missing `id`"))?;
        let f = c.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("{pp}.function.name"), "missing `name`"))?;
        let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default();
        let ap = format!("{pp}.function.arguments");
        let input = if args.trim().is_empty() {
            raw_or(None, &json!({}))?
        } else {
            match serde_json::from_str::<Value>(args) {
                Ok(Value::Object(_)) => RawValue::from_string(args.trim().to_string())
                    .map_err(|e| invalid(&ap, format!("`arguments` is not valid JSON: {e}")))?,
                Ok(_) => return Err(bad(&ap, "Anthropic tool input must be a JSON object")),
                Err(e) => return Err(invalid(&ap, format!("`arguments` is not valid JSON: {e}"))),
            }
        };
        out.push(Block::ToolUse(ToolUse { kind: "tool_use", id: id.to_string(), name: name.to_string(), input }));
    }
    Ok(out)
}

fn tool_result(msg: &Value, p: &str) -> Result<Value, ApiError> {
    let id = msg
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{p}.tool_call_id"), "a tool message needs `tool_call_id`"))?;
    let content = match msg.get("content") {
        Some(Value::String(s)) => json!(s),
        other => {
            let blocks = match other {
                Some(Value::Array(_)) => user_blocks(other, p)?,
                _ => text_parts(other, p)?,
            };
            Value::Array(blocks)
        }
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// System blocks and the alternating turns.
fn messages(req: &Map<String, Value>) -> Result<(Vec<Value>, Vec<Turn>), ApiError> {
    let list = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return Err(invalid("messages", "`messages` must be a non-empty array")),
    };
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, msg) in list.iter().enumerate() {
        let p = format!("messages[{i}]");
        let role = msg.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, blocks): (&'static str, Vec<Block>) = match role {
            "system" | "developer" => {
                system.extend(text_parts(msg.get("content"), &p)?);
                continue;
            }
            "user" => ("user", user_blocks(msg.get("content"), &p)?.into_iter().map(Block::Plain).collect()),
            "assistant" => ("assistant", assistant_blocks(msg, &p)?),
            "tool" => ("user", vec![Block::Plain(tool_result(msg, &p)?)]),
            "function" => return Err(bad(&format!("{p}.role"), "legacy function messages are not supported")),
            _ => return Err(invalid(&format!("{p}.role"), format!("unknown role {role:?}"))),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(t) if t.role == role => t.content.extend(blocks),
            _ => turns.push(Turn { role, content: blocks }),
        }
    }
    if turns.is_empty() {
        return Err(invalid("messages", "at least one user or assistant message with content is required"));
    }
    Ok((system, turns))
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// `usage` of a whole Messages body → [`Usage`] (meters native pass-through answers).
pub(crate) fn usage_of(v: &Value) -> Option<Usage> {
    WireUsage::deserialize(v).ok().map(WireUsage::to_usage)
}

/// Usage of a native Messages stream: `message_start`'s counts, replaced field by field by each
/// cumulative `message_delta`.
#[derive(Debug, Default)]
pub(crate) struct UsageMeter(Option<WireUsage>);

impl UsageMeter {
    pub(crate) fn event(&mut self, data: &str) {
        #[derive(Deserialize)]
        struct Start {
            usage: Option<WireUsage>,
        }
        #[derive(Deserialize)]
        struct Ev {
            #[serde(rename = "type")]
            kind: Option<String>,
            message: Option<Start>,
            usage: Option<WireUsage>,
        }
        static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"usage"));
        if USAGE.find(data.as_bytes()).is_none() {
            return;
        }
        let Ok(e) = serde_json::from_str::<Ev>(data) else { return };
        let found = match e.kind.as_deref() {
            Some("message_start") => e.message.and_then(|m| m.usage),
            Some("message_delta") => e.usage,
            _ => None,
        };
        if let Some(u) = found {
            self.0.get_or_insert_with(WireUsage::default).merge(&u);
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.0.map(WireUsage::to_usage)
    }
}

/// Anthropic `usage`; every field optional because `message_delta` may carry any subset.
#[derive(Deserialize, Default, Clone, Copy, Debug)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
struct OutputDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

impl WireUsage {
    /// Later (cumulative) counts replace earlier ones field by field.
    fn merge(&mut self, later: &WireUsage) {
        fn take(a: &mut Option<u64>, b: Option<u64>) {
            if b.is_some() {
                *a = b;
            }
        }
        take(&mut self.input_tokens, later.input_tokens);
        take(&mut self.output_tokens, later.output_tokens);
        take(&mut self.cache_creation_input_tokens, later.cache_creation_input_tokens);
        take(&mut self.cache_read_input_tokens, later.cache_read_input_tokens);
        if let Some(t) = later.output_tokens_details.and_then(|d| d.thinking_tokens) {
            self.output_tokens_details = Some(OutputDetails { thinking_tokens: Some(t) });
        }
    }

    fn to_usage(self) -> Usage {
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0).saturating_add(write).saturating_add(read);
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            cached_tokens: read,
            reasoning_tokens: self.output_tokens_details.and_then(|d| d.thinking_tokens).unwrap_or(0),
            cache_write_tokens: write,
        }
    }
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    content: Vec<WireBlock<'a>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireBlock<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => finish::LENGTH,
        Some("tool_use") => finish::TOOL_CALLS,
        Some("refusal") => finish::CONTENT_FILTER,
        _ => finish::STOP,
    }
}

fn unreadable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_gateway("upstream_bad_response", format!("{PROVIDER} sent an unreadable {what}: {e}"))
}

/// Translate a whole Anthropic message into a `chat.completion`.
pub fn response(body: &[u8], opts: &ResponseOptions) -> Result<Translated, ApiError> {
    let msg: WireMessage = serde_json::from_slice(body).map_err(|e| unreadable("response", e))?;
    if msg.kind.as_deref() == Some("error") {
        return Err(error(500, body, None));
    }
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut blocks = Vec::new();
    let mut tool_calls = Vec::new();
    for b in &msg.content {
        match b.kind.as_str() {
            "text" => text.get_or_insert_with(String::new).push_str(b.text.as_deref().unwrap_or_default()),
            "thinking" => {
                let t = b.thinking.as_deref().unwrap_or_default();
                reasoning.get_or_insert_with(String::new).push_str(t);
                blocks.push(json!({"type": "thinking", "thinking": t, "signature": b.signature}));
            }
            "redacted_thinking" => blocks.push(json!({"type": "redacted_thinking", "data": b.data})),
            "tool_use" => tool_calls.push(ToolCall {
                id: b.id.clone().unwrap_or_default(),
                name: b.name.clone().unwrap_or_default(),
                arguments: b.input.map_or_else(|| "{}".to_string(), |r| r.get().to_string()),
            }),
            _ => {}
        }
    }
    let mut extra = Map::new();
    if !blocks.is_empty() {
        extra.insert("thinking_blocks".into(), Value::Array(blocks));
    }
    let content = match text {
        None if tool_calls.is_empty() => Some(String::new()),
        t => t,
    };
    let message = Message { content, reasoning, tool_calls, refusal: None, extra };
    let usage = msg.usage.map(WireUsage::to_usage);
    let mut opts = opts.clone();
    if let Some(id) = msg.id.filter(|i| !i.is_empty()) {
        opts.id = id;
    }
    let body = completion(&opts, &message, finish_reason(msg.stop_reason.as_deref()), usage.as_ref());
    Ok(Translated { body, usage })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireError {
    error: WireErrorInner,
}

#[derive(Deserialize)]
struct WireErrorInner {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Map an Anthropic error (HTTP status and body) to the OpenAI shape. `retry_after` is the
/// upstream `retry-after` header in seconds. Anthropic rejecting the gateway's own key is a 502
/// (the caller's credentials were fine); `overloaded_error` (529) is a 503.
pub fn error(status: u16, body: &[u8], retry_after: Option<u64>) -> ApiError {
    let status_in = status;
    let parsed = serde_json::from_slice::<WireError>(body).ok().map(|w| w.error);
    let kind = parsed.as_ref().and_then(|e| e.kind.as_deref()).unwrap_or_default();
    let message = parsed.as_ref().and_then(|e| e.message.clone()).unwrap_or_else(|| {
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        format!("{PROVIDER} returned HTTP {status}: {shown}")
    });
    let (status, kind, code): (u16, &'static str, &'static str) = match (kind, status) {
        ("invalid_request_error", _) | (_, 400 | 422) => (400, "invalid_request_error", "upstream_bad_request"),
        ("authentication_error", _) | (_, 401) => (502, "api_error", "upstream_auth_failed"),
        ("billing_error", _) | (_, 402) => (402, "insufficient_quota", "insufficient_quota"),
        ("permission_error", _) | (_, 403) => (403, "permission_error", "upstream_forbidden"),
        ("not_found_error", _) | (_, 404) => (404, "invalid_request_error", "model_not_found"),
        ("request_too_large", _) | (_, 413) => (413, "invalid_request_error", "request_too_large"),
        ("rate_limit_error", _) | (_, 429) => (429, "rate_limit_error", "rate_limit_exceeded"),
        ("overloaded_error", _) | (_, 529) => (503, "api_error", "overloaded"),
        ("timeout_error", _) | (_, 504) => (504, "api_error", "upstream_timeout"),
        ("api_error", _) => (500, "api_error", "upstream_error"),
        (_, s) if (500..600).contains(&s) => (s, "api_error", "upstream_error"),
        _ => (502, "api_error", "upstream_error"),
    };
    let message = if code == "upstream_auth_failed" {
        format!("{PROVIDER} rejected the gateway's API key (HTTP {status_in}); the provider's message is not passed on, as it may quote the key")
    } else {
        message
    };
    let e = ApiError::new(status, kind, Some(code), message);
    match retry_after {
        Some(s) => e.with_retry_after(s),
        None => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    content_block: Option<WireBlock<'a>>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

/// What an open content block turns into.
#[derive(Debug, Clone, Copy)]
enum Open {
    Text,
    Thinking,
    /// `args` is whether any argument fragment was sent (a call with none gets `{}`).
    Tool {
        index: u32,
        args: bool,
    },
    Skipped,
}

#[derive(Debug)]
struct State {
    w: ChunkWriter,
    usage: Option<WireUsage>,
    open: Vec<(u64, Open)>,
    finish: Option<&'static str>,
    stopped: bool,
    failed: Option<ApiError>,
}

/// Anthropic SSE → `chat.completion.chunk` SSE. `[DONE]` is written when `message_stop`
/// arrives; `finish` fails if it never did.
#[derive(Debug)]
pub struct AnthropicStream {
    reader: SseReader,
    st: State,
}

/// A transcoder for one Anthropic stream.
pub fn stream(opts: ResponseOptions) -> AnthropicStream {
    AnthropicStream {
        reader: SseReader::new(opts.max_event),
        st: State {
            w: ChunkWriter::new(opts),
            usage: None,
            open: Vec::new(),
            finish: None,
            stopped: false,
            failed: None,
        },
    }
}

impl AnthropicStream {
    /// Bytes held between calls: the SSE reader's partial event (the open-block list is bounded
    /// by a small constant).
    pub fn buffered(&self) -> usize {
        self.reader.buffered()
    }
}

/// An `error` event: the HTTP status Anthropic would have sent for its type, then [`error`].
fn stream_error(data: &str) -> ApiError {
    let kind = serde_json::from_str::<WireError>(data).ok().and_then(|w| w.error.kind);
    let status = match kind.as_deref() {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("invalid_request_error") => 400,
        Some("request_too_large") => 413,
        Some("timeout_error") => 504,
        _ => 500,
    };
    error(status, data.as_bytes(), None)
}

fn sse_error(e: SseError) -> ApiError {
    ApiError::bad_gateway("upstream_stream_error", format!("{PROVIDER} stream: {e}"))
}

impl State {
    fn event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if self.failed.is_some() || self.stopped {
            return;
        }
        if let Err(e) = self.handle(&ev, out) {
            self.failed = Some(e);
        }
    }

    fn handle(&mut self, ev: &Event, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let name = ev.event.as_deref().unwrap_or_default();
        let e: WireEvent =
            serde_json::from_str(&ev.data).map_err(|e| unreadable(&format!("stream event {name:?}"), e))?;
        let kind = e.kind.as_deref().unwrap_or(name);
        match kind {
            "message_start" => {
                let m = e.message.ok_or_else(|| unreadable("message_start", "no `message`"))?;
                if let Some(id) = m.id.filter(|i| !i.is_empty()) {
                    self.w.set_id(id);
                }
                if let Some(u) = m.usage {
                    self.usage.get_or_insert_with(WireUsage::default).merge(&u);
                }
                self.w.start(out);
            }
            "content_block_start" => {
                let index = e.index.ok_or_else(|| unreadable("content_block_start", "no `index`"))?;
                let b = e.content_block.ok_or_else(|| unreadable("content_block_start", "no `content_block`"))?;
                let open = match b.kind.as_str() {
                    "text" => {
                        self.w.content(out, b.text.as_deref().unwrap_or_default());
                        Open::Text
                    }
                    "thinking" => {
                        self.w.reasoning(out, b.thinking.as_deref().unwrap_or_default());
                        self.signature(out, b.signature.as_deref());
                        Open::Thinking
                    }
                    "redacted_thinking" => {
                        let mut m = Map::new();
                        m.insert("thinking_blocks".into(), json!([{"type": "redacted_thinking", "data": b.data}]));
                        self.w.extra(out, m);
                        Open::Skipped
                    }
                    "tool_use" => {
                        let id = b.id.as_deref().unwrap_or_default();
                        let index = self.w.tool_call_start(out, id, b.name.as_deref().unwrap_or_default(), "");
                        Open::Tool { index, args: false }
                    }
                    _ => Open::Skipped,
                };
                self.open.retain(|(i, _)| *i != index);
                if self.open.len() >= MAX_OPEN_BLOCKS {
                    return Err(unreadable("stream", "too many open content blocks"));
                }
                self.open.push((index, open));
            }
            "content_block_delta" => {
                let index = e.index.ok_or_else(|| unreadable("content_block_delta", "no `index`"))?;
                let d = e.delta.ok_or_else(|| unreadable("content_block_delta", "no `delta`"))?;
                let slot = self.open.iter_mut().find(|(i, _)| *i == index).map(|(_, o)| o);
                match (slot, d.kind.as_deref()) {
                    (Some(Open::Text), Some("text_delta")) => {
                        self.w.content(out, d.text.as_deref().unwrap_or_default())
                    }
                    (Some(Open::Thinking), Some("thinking_delta")) => {
                        self.w.reasoning(out, d.thinking.as_deref().unwrap_or_default())
                    }
                    (Some(Open::Thinking), Some("signature_delta")) => self.signature(out, d.signature.as_deref()),
                    (Some(Open::Tool { index, args }), Some("input_json_delta")) => {
                        let frag = d.partial_json.as_deref().unwrap_or_default();
                        *args |= !frag.is_empty();
                        let index = *index;
                        self.w.tool_call_args(out, index, frag);
                    }
                    (None, _) => return Err(unreadable("content_block_delta", format!("block {index} is not open"))),
                    // Citations and deltas of skipped blocks are not part of the OpenAI answer.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = e.index.ok_or_else(|| unreadable("content_block_stop", "no `index`"))?;
                if let Some(pos) = self.open.iter().position(|(i, _)| *i == index) {
                    if let (_, Open::Tool { index, args: false }) = self.open.remove(pos) {
                        self.w.tool_call_args(out, index, "{}");
                    }
                }
            }
            "message_delta" => {
                if let Some(u) = e.usage {
                    self.usage.get_or_insert_with(WireUsage::default).merge(&u);
                }
                if let Some(r) = e.delta.and_then(|d| d.stop_reason) {
                    self.finish = Some(finish_reason(Some(&r)));
                }
            }
            "message_stop" => {
                self.stopped = true;
                self.w.finish(out, self.finish.unwrap_or(finish::STOP));
                let usage = self.usage.map(WireUsage::to_usage);
                self.w.done(out, usage.as_ref());
            }
            "error" => return Err(stream_error(&ev.data)),
            // `ping` and event types added after this was written.
            _ => {}
        }
        Ok(())
    }

    fn signature(&mut self, out: &mut Vec<u8>, sig: Option<&str>) {
        if let Some(sig) = sig.filter(|s| !s.is_empty()) {
            let mut m = Map::new();
            m.insert("thinking_blocks".into(), json!([{"type": "thinking", "signature": sig}]));
            self.w.extra(out, m);
        }
    }
}

impl StreamTranscoder for AnthropicStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(e) = &self.st.failed {
            return Err(e.clone());
        }
        let st = &mut self.st;
        if let Err(e) = self.reader.feed(chunk, &mut |ev| st.event(ev, out)) {
            st.failed.get_or_insert(sse_error(e));
        }
        self.st.failed.clone().map_or(Ok(()), Err)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(e) = &self.st.failed {
            return Err(e.clone());
        }
        let st = &mut self.st;
        if let Err(e) = self.reader.finish(&mut |ev| st.event(ev, out)) {
            st.failed.get_or_insert(sse_error(e));
        }
        // A last event cut off mid-JSON is the truncation itself, reported as such below.
        if let Some(e) = &self.st.failed {
            if self.st.stopped || e.code != Some("upstream_bad_response") {
                return Err(e.clone());
            }
        }
        if !self.st.stopped {
            let e = ApiError::bad_gateway(
                "upstream_stream_truncated",
                format!("{PROVIDER} stream ended before `message_stop`"),
            );
            self.st.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.st.usage.map(WireUsage::to_usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_splits, Rng};

    const TEXT_JSON: &[u8] = include_bytes!("../../../fixtures/anthropic/messages-text.json");
    const THINKING_JSON: &[u8] = include_bytes!("../../../fixtures/anthropic/messages-thinking.json");
    const TOOL_JSON: &[u8] = include_bytes!("../../../fixtures/anthropic/messages-tool-use.json");
    const CACHE_JSON: &[u8] = include_bytes!("../../../fixtures/anthropic/messages-cache-usage.json");
    const ERR_400: &[u8] = include_bytes!("../../../fixtures/anthropic/error-400-invalid-request.json");
    const ERR_404: &[u8] = include_bytes!("../../../fixtures/anthropic/error-404-not-found.json");
    const ERR_429: &[u8] = include_bytes!("../../../fixtures/anthropic/error-429-rate-limit.json");

    /// Every recorded stream: (name, raw SSE bytes). Data-only `.chunks.txt` files are framed as
    /// SSE without `event:` lines (the decoder reads the type from the data).
    fn streams() -> Vec<(&'static str, Vec<u8>)> {
        let chunks =
            |s: &str| s.lines().filter(|l| !l.is_empty()).flat_map(|l| format!("data: {l}\n\n").into_bytes()).collect();
        vec![
            ("text", include_bytes!("../../../fixtures/anthropic/messages-stream-text.sse").to_vec()),
            ("tool", include_bytes!("../../../fixtures/anthropic/messages-stream-tool-use.sse").to_vec()),
            (
                "max_tokens",
                include_bytes!("../../../fixtures/anthropic/messages-stream-text-then-tool-use-max-tokens.sse")
                    .to_vec(),
            ),
            ("thinking", include_bytes!("../../../fixtures/anthropic/messages-stream-thinking.sse").to_vec()),
            ("redacted", include_bytes!("../../../fixtures/anthropic/messages-stream-redacted-thinking.sse").to_vec()),
            (
                "compaction",
                include_bytes!("../../../fixtures/anthropic/messages-stream-cache-read-compaction.sse").to_vec(),
            ),
            ("text_chunks", chunks(include_str!("../../../fixtures/anthropic/messages-stream-text.chunks.txt"))),
            (
                "cache_chunks",
                chunks(include_str!("../../../fixtures/anthropic/messages-stream-cache-creation.chunks.txt")),
            ),
        ]
    }

    fn ropts(include_usage: bool) -> ResponseOptions {
        ResponseOptions {
            id: "chatcmpl-gw".into(),
            created: 7,
            model: "anthropic:claude".into(),
            include_usage,
            max_event: 1 << 16,
        }
    }

    fn v(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    /// Feed `input` in pieces of the given sizes (the rest at once); output and results.
    fn run(
        opts: ResponseOptions,
        input: &[u8],
        sizes: &mut dyn FnMut() -> usize,
    ) -> (Vec<u8>, Result<(), ApiError>, Option<Usage>) {
        let mut t = stream(opts);
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            let (a, b) = rest.split_at(n);
            if let Err(e) = t.feed(a, &mut out) {
                return (out, Err(e), t.usage());
            }
            rest = b;
        }
        let r = t.finish(&mut out);
        (out, r, t.usage())
    }

    fn whole(opts: ResponseOptions, input: &[u8]) -> (Vec<u8>, Result<(), ApiError>, Option<Usage>) {
        run(opts, input, &mut || usize::MAX)
    }

    fn events(out: &[u8]) -> Vec<String> {
        let mut evs = Vec::new();
        let mut r = SseReader::new(1 << 20);
        r.feed(out, &mut |e| evs.push(e.data)).unwrap();
        r.finish(&mut |e| evs.push(e.data)).unwrap();
        evs
    }

    /// What a client reassembles from our chunks: content, reasoning, tool calls (id, name, args),
    /// finish reason, signature deltas, usage chunk.
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        content: String,
        reasoning: String,
        tools: Vec<(String, String, String)>,
        finish: Option<String>,
        signatures: Vec<String>,
        redacted: usize,
        usage: Option<Value>,
        ids: Vec<String>,
    }

    fn seen(out: &[u8]) -> Seen {
        let evs = events(out);
        assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "stream ends with [DONE]");
        let mut s = Seen::default();
        for (n, e) in evs.iter().enumerate() {
            if e == "[DONE]" {
                assert_eq!(n, evs.len() - 1);
                continue;
            }
            let c: Value = serde_json::from_str(e).unwrap();
            assert_eq!(c["object"], "chat.completion.chunk");
            s.ids.push(c["id"].as_str().unwrap().to_string());
            if c["choices"] == json!([]) {
                s.usage = Some(c["usage"].clone());
                continue;
            }
            let ch = &c["choices"][0];
            let d = &ch["delta"];
            if n == 0 {
                assert_eq!(d["role"], "assistant", "role chunk first");
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                assert!(s.finish.is_none(), "one finish chunk");
                s.finish = Some(f.to_string());
            }
            s.content.push_str(d["content"].as_str().unwrap_or_default());
            s.reasoning.push_str(d["reasoning_content"].as_str().unwrap_or_default());
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(i, s.tools.len());
                    s.tools.push((id.to_string(), tc["function"]["name"].as_str().unwrap().to_string(), String::new()));
                }
                s.tools[i].2.push_str(tc["function"]["arguments"].as_str().unwrap_or_default());
            }
            for b in d["thinking_blocks"].as_array().into_iter().flatten() {
                match b["type"].as_str() {
                    Some("thinking") => s.signatures.push(b["signature"].as_str().unwrap().to_string()),
                    Some("redacted_thinking") => s.redacted += 1,
                    _ => panic!("bad thinking block {b}"),
                }
            }
        }
        s
    }

    /// The same facts computed straight from the provider's events.
    fn expected(input: &[u8]) -> Seen {
        let mut evs = Vec::new();
        let mut r = SseReader::new(1 << 20);
        r.feed(input, &mut |e| evs.push(e.data)).unwrap();
        r.finish(&mut |e| evs.push(e.data)).unwrap();
        let mut s = Seen::default();
        let mut tool_of_block = std::collections::HashMap::new();
        for e in evs {
            let e: Value = serde_json::from_str(&e).unwrap();
            match e["type"].as_str().unwrap() {
                "content_block_start" => {
                    let b = &e["content_block"];
                    match b["type"].as_str().unwrap() {
                        "tool_use" => {
                            tool_of_block.insert(e["index"].as_u64().unwrap(), s.tools.len());
                            s.tools.push((
                                b["id"].as_str().unwrap().into(),
                                b["name"].as_str().unwrap().into(),
                                String::new(),
                            ));
                        }
                        "redacted_thinking" => s.redacted += 1,
                        _ => {}
                    }
                }
                "content_block_delta" => {
                    let d = &e["delta"];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => s.content.push_str(d["text"].as_str().unwrap()),
                        "thinking_delta" => s.reasoning.push_str(d["thinking"].as_str().unwrap()),
                        "signature_delta" => s.signatures.push(d["signature"].as_str().unwrap().into()),
                        "input_json_delta" => {
                            if let Some(t) = tool_of_block.get(&e["index"].as_u64().unwrap()) {
                                s.tools[*t].2.push_str(d["partial_json"].as_str().unwrap());
                            }
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    s.finish = Some(finish_reason(e["delta"]["stop_reason"].as_str()).to_string());
                }
                _ => {}
            }
        }
        s
    }

    // ---- whole responses ---------------------------------------------------------------------

    #[test]
    fn golden_text_response() {
        let t = response(TEXT_JSON, &ropts(false)).unwrap();
        let b = v(&t.body);
        assert_eq!(b["id"], "msg_01VdEjxAP5ahtHKrrRdNBteQ");
        assert_eq!(b["object"], "chat.completion");
        assert_eq!(b["model"], "anthropic:claude");
        let m = &b["choices"][0]["message"];
        assert_eq!(m["content"], v(TEXT_JSON)["content"][0]["text"]);
        assert_eq!(m["role"], "assistant");
        assert!(m.get("tool_calls").is_none() && m.get("reasoning_content").is_none());
        assert_eq!(b["choices"][0]["finish_reason"], "stop");
        assert_eq!(b["usage"]["prompt_tokens"], 12);
        assert_eq!(b["usage"]["completion_tokens"], 29);
        assert_eq!(b["usage"]["total_tokens"], 41);
        assert_eq!(t.usage.unwrap().total_tokens, 41);
    }

    #[test]
    fn golden_thinking_response() {
        let b = v(&response(THINKING_JSON, &ropts(false)).unwrap().body);
        let src = v(THINKING_JSON);
        let m = &b["choices"][0]["message"];
        assert_eq!(m["content"], "925 ÷ 5 = 185");
        assert_eq!(m["reasoning_content"], src["content"][0]["thinking"]);
        assert_eq!(m["thinking_blocks"][0]["signature"], src["content"][0]["signature"]);
        assert_eq!(m["thinking_blocks"][0]["thinking"], src["content"][0]["thinking"]);
        assert_eq!(b["usage"]["prompt_tokens"], 69);
        assert_eq!(b["usage"]["completion_tokens"], 33);
        assert!(m.get("context_management").is_none());
    }

    #[test]
    fn golden_tool_response() {
        let b = v(&response(TOOL_JSON, &ropts(false)).unwrap().body);
        let m = &b["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(b["choices"][0]["finish_reason"], "tool_calls");
        let tc = &m["tool_calls"][0];
        assert_eq!(tc["id"], "toolu_011bpynHqFZ9P4u5rSaXsTJQ");
        assert_eq!(tc["type"], "function");
        assert_eq!(tc["function"]["name"], "get_weather");
        // Arguments are Anthropic's input text verbatim (key order kept).
        assert_eq!(tc["function"]["arguments"], r#"{"location":"San Francisco, CA","units":"f"}"#);
        assert_eq!(b["usage"]["prompt_tokens"], 656);
        assert_eq!(b["usage"]["completion_tokens"], 74);
    }

    #[test]
    fn golden_cache_usage() {
        let t = response(CACHE_JSON, &ropts(false)).unwrap();
        let u = t.usage.unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 3 + 418 + 1111,
                completion_tokens: 33,
                total_tokens: 1532 + 33,
                cached_tokens: 1111,
                reasoning_tokens: 0,
                cache_write_tokens: 418
            }
        );
        let b = v(&t.body);
        assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 1111);
        assert_eq!(b["usage"]["prompt_tokens_details"]["cache_creation_tokens"], 418);
    }

    #[test]
    fn response_edge_cases() {
        assert_eq!(response(b"not json", &ropts(false)).unwrap_err().status, 502);
        let e = response(ERR_429, &ropts(false)).unwrap_err();
        assert_eq!(e.status, 429);
        let b = v(&response(br#"{"id":"","content":[],"stop_reason":"max_tokens"}"#, &ropts(false)).unwrap().body);
        assert_eq!(b["id"], "chatcmpl-gw");
        assert_eq!(b["choices"][0]["message"]["content"], "");
        assert_eq!(b["choices"][0]["finish_reason"], "length");
        assert!(b.get("usage").is_none());
        for (stop, fin) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("model_context_window_exceeded", "length"),
        ] {
            assert_eq!(finish_reason(Some(stop)), fin);
        }
        let r = br#"{"content":[{"type":"redacted_thinking","data":"abc"},{"type":"server_tool_use","id":"s","name":"x","input":{}},{"type":"text","text":"a"},{"type":"text","text":"b"}],"usage":{"input_tokens":1,"output_tokens":5,"output_tokens_details":{"thinking_tokens":3}}}"#;
        let t = response(r, &ropts(false)).unwrap();
        let b = v(&t.body);
        assert_eq!(b["choices"][0]["message"]["content"], "ab");
        assert_eq!(
            b["choices"][0]["message"]["thinking_blocks"],
            json!([{"type": "redacted_thinking", "data": "abc"}])
        );
        assert!(b["choices"][0]["message"].get("tool_calls").is_none(), "server tools are not client tool calls");
        assert_eq!(t.usage.unwrap().reasoning_tokens, 3);
    }

    // ---- streams -----------------------------------------------------------------------------

    #[test]
    fn golden_streams_whole_and_split() {
        for (name, input) in streams() {
            for include_usage in [false, true] {
                let (out, r, usage) = whole(ropts(include_usage), &input);
                r.unwrap_or_else(|e| panic!("{name}: {e}"));
                let got = seen(&out);
                let want = expected(&input);
                assert_eq!(got.content, want.content, "{name} content");
                assert_eq!(got.reasoning, want.reasoning, "{name} reasoning");
                assert_eq!(got.signatures, want.signatures, "{name} signatures");
                assert_eq!(got.redacted, want.redacted, "{name} redacted");
                assert_eq!(got.finish, want.finish, "{name} finish");
                assert_eq!(got.tools.len(), want.tools.len(), "{name} tools");
                for (g, w) in got.tools.iter().zip(&want.tools) {
                    assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{name}");
                    // A call streamed without fragments is completed to `{}`.
                    let want_args = if w.2.is_empty() { "{}" } else { &w.2 };
                    assert_eq!(g.2, want_args, "{name} arguments");
                }
                assert!(got.ids.iter().all(|i| i.starts_with("msg_") && *i == got.ids[0]), "{name}: one msg_ id");
                assert_eq!(got.usage.is_some(), include_usage, "{name}");
                if let Some(u) = &got.usage {
                    assert_eq!(u["total_tokens"], usage.unwrap().total_tokens);
                }
                let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ input.len() as u64);
                for round in 0..40 {
                    let mut sizes: Box<dyn FnMut() -> usize> = match round {
                        0 => Box::new(|| 1),
                        1 => Box::new(|| 2),
                        _ => Box::new(|| 1 + rng.below(64)),
                    };
                    let (split, r2, _) = run(ropts(include_usage), &input, &mut *sizes);
                    drop(sizes);
                    r2.unwrap();
                    assert_eq!(split, out, "{name}: split output differs (round {round})");
                }
                // Two-piece splits at arbitrary positions.
                for _ in 0..40 {
                    let at = rng.below(input.len());
                    let mut first = true;
                    let (split, _, _) = run(ropts(include_usage), &input, &mut || {
                        if std::mem::take(&mut first) {
                            at.max(1)
                        } else {
                            usize::MAX
                        }
                    });
                    assert_eq!(split, out, "{name}: split at {at}");
                }
            }
        }
    }

    #[test]
    fn stream_text_exact() {
        let input = &streams()[0].1;
        let (out, _, usage) = whole(ropts(true), input);
        let s = seen(&out);
        assert_eq!(s.content, "[12345,67890]");
        assert_eq!(s.finish.as_deref(), Some("stop"));
        assert_eq!(
            usage.unwrap(),
            Usage { prompt_tokens: 135, completion_tokens: 10, total_tokens: 145, ..Default::default() }
        );
        let evs = events(&out);
        let first: Value = serde_json::from_str(&evs[0]).unwrap();
        assert_eq!(first["id"], "msg_013nnniYDrJDocdy5nrMU7cH");
        assert_eq!(first["model"], "anthropic:claude");
        assert_eq!(first["created"], 7);
        assert_eq!(first["usage"], Value::Null, "usage: null on chunks when include_usage");
    }

    #[test]
    fn stream_tool_use() {
        let input = &streams()[1].1;
        let (out, _, usage) = whole(ropts(false), input);
        let s = seen(&out);
        assert_eq!(s.tools.len(), 1);
        assert_eq!(s.tools[0].1, "get_weather");
        assert_eq!(v(s.tools[0].2.as_bytes()), json!({"location": "San Francisco, CA", "units": "f"}));
        assert_eq!(s.finish.as_deref(), Some("tool_calls"));
        assert_eq!(usage.unwrap().completion_tokens, 74);
        assert!(s.usage.is_none());
    }

    #[test]
    fn stream_max_tokens_mid_tool() {
        let input = &streams()[2].1;
        let (out, r, usage) = whole(ropts(false), input);
        r.unwrap();
        let s = seen(&out);
        assert_eq!(s.finish.as_deref(), Some("length"));
        assert!(s.content.starts_with("I'll create a comprehensive tax guide"));
        assert_eq!(s.tools[0].1, "make_file");
        assert!(serde_json::from_str::<Value>(&s.tools[0].2).is_err(), "the cut-off JSON is passed on as sent");
        // message_delta carries only output_tokens: input comes from message_start.
        assert_eq!(
            usage.unwrap(),
            Usage { prompt_tokens: 450, completion_tokens: 124, total_tokens: 574, ..Default::default() }
        );
    }

    #[test]
    fn stream_usage_variants() {
        let all = streams();
        let u = |name: &str| {
            let input = &all.iter().find(|(n, _)| *n == name).unwrap().1;
            whole(ropts(true), input).2.unwrap()
        };
        let c = u("compaction");
        assert_eq!((c.prompt_tokens, c.cached_tokens, c.completion_tokens), (181, 0, 8));
        let c = u("cache_chunks");
        assert_eq!(
            c,
            Usage {
                prompt_tokens: 6 + 3337 + 6289,
                completion_tokens: 198,
                total_tokens: 9632 + 198,
                cached_tokens: 6289,
                reasoning_tokens: 0,
                cache_write_tokens: 3337
            }
        );
        let t = u("thinking");
        assert_eq!((t.prompt_tokens, t.completion_tokens), (43, 282));
        let s = seen(&whole(ropts(false), &all.iter().find(|(n, _)| *n == "cache_chunks").unwrap().1).0);
        assert!(s.tools.is_empty(), "server tool use is not a client tool call");
        assert!(s.content.contains("**650**"));
    }

    #[test]
    fn stream_thinking_signature_roundtrips_into_request() {
        let input = &streams()[3].1;
        let s = seen(&whole(ropts(false), input).0);
        assert!(s.reasoning.starts_with("This is a straightforward question"));
        assert_eq!(s.signatures.len(), 1);
        // A client sends the streamed pieces back; Anthropic gets the whole thinking block.
        let body = json!({
            "model": "m",
            "reasoning_effort": "low",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": s.reasoning,
                 "thinking_blocks": [{"type": "thinking", "signature": s.signatures[0]}]},
                {"role": "user", "content": "more"},
            ],
        });
        let out = req(&body);
        assert_eq!(
            out["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": s.reasoning, "signature": s.signatures[0]})
        );
        assert_eq!(out["messages"][1]["content"][1], json!({"type": "text", "text": "a"}));
    }

    #[test]
    fn stream_errors() {
        // Truncated: no message_stop.
        let input = &streams()[0].1;
        let cut = &input[..input.len() - 40];
        let (out, r, _) = whole(ropts(false), cut);
        let e = r.unwrap_err();
        assert_eq!((e.status, e.code), (502, Some("upstream_stream_truncated")));
        assert!(!events(&out).contains(&"[DONE]".to_string()));
        // Mid-stream overloaded error event (the shape Anthropic documents).
        let mut s = input[..input.len() / 2].to_vec();
        let at = s.windows(2).rposition(|w| w == b"\n\n").unwrap() + 2;
        s.truncate(at);
        s.extend_from_slice(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"details\":null,\"type\":\"overloaded_error\",\"message\":\"Overloaded\"},\"request_id\":\"req_1\"}\n\n");
        let mut t = stream(ropts(false));
        let mut out = Vec::new();
        let e = t.feed(&s, &mut out).unwrap_err();
        assert_eq!((e.status, e.code, e.message.as_str()), (503, Some("overloaded"), "Overloaded"));
        assert!(!out.is_empty(), "what came before the error is still sent");
        assert_eq!(t.feed(b"data: {}\n\n", &mut out).unwrap_err(), e, "the error sticks");
        assert_eq!(t.finish(&mut out).unwrap_err(), e);
        // Garbage data.
        let (_, r, _) = whole(ropts(false), b"event: message_start\ndata: {nope\n\n");
        assert_eq!(r.unwrap_err().status, 502);
        // A delta for a block never opened.
        let (_, r, _) = whole(ropts(false), b"data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n");
        assert_eq!(r.unwrap_err().status, 502);
        // An event larger than max_event.
        let mut o = ropts(false);
        o.max_event = 64;
        let (_, r, _) = whole(o, input);
        assert_eq!(r.unwrap_err().code, Some("upstream_stream_error"));
        // Empty body.
        assert_eq!(whole(ropts(false), b"").1.unwrap_err().code, Some("upstream_stream_truncated"));
    }

    #[test]
    fn stream_fuzz_never_panics_and_stays_bounded() {
        let inputs = streams();
        let max_event = 4096;
        let mut rng = Rng::new(0xDEAD_BEEF_CAFE_F00D);
        let alphabet: &[u8] = b"data: event:{}[]\":,\n\r \\0123456789abcdefghijklmnopqrstuvwxyz_type";
        for iter in 0..3000 {
            let mut input = if iter % 50 == 1 {
                // One event near or over the bound, arriving in small pieces.
                let mut big = b"event: content_block_delta\ndata: ".to_vec();
                big.resize(big.len() + rng.below(3 * max_event), b'x');
                big
            } else if iter % 3 == 0 {
                let len = rng.below(3000);
                rng.bytes(len)
            } else {
                inputs[rng.below(inputs.len())].1.clone()
            };
            if iter % 3 != 0 {
                for _ in 0..1 + rng.below(8) {
                    if input.is_empty() {
                        break;
                    }
                    let i = rng.below(input.len());
                    match rng.below(4) {
                        0 => input[i] = alphabet[rng.below(alphabet.len())],
                        1 => input[i] = rng.byte(),
                        2 => input.truncate(i),
                        _ => {
                            let j = (i + rng.below(200)).min(input.len());
                            input.drain(i..j);
                        }
                    }
                }
            }
            let mut t = stream(ResponseOptions { max_event, ..ropts(iter % 2 == 0) });
            let mut out = Vec::new();
            let mut failed = false;
            for piece in random_splits(&input, &mut rng, 64) {
                if t.feed(piece, &mut out).is_err() {
                    failed = true;
                    break;
                }
                // SseReader holds at most max_event bytes; `buffered` reports its line buffer's
                // capacity, which Vec growth may round up to twice that.
                assert!(t.buffered() <= 2 * max_event + 64, "buffered {} bytes", t.buffered());
                out.clear();
            }
            if !failed {
                let _ = t.finish(&mut out);
            }
            let _ = t.usage();
        }
        // Random bytes never end cleanly.
        for _ in 0..200 {
            let len = 1 + rng.below(500);
            let input = rng.bytes(len);
            assert!(whole(ropts(false), &input).1.is_err());
        }
    }

    // ---- errors ------------------------------------------------------------------------------

    #[test]
    fn error_fixtures() {
        let e = error(429, ERR_429, Some(7));
        assert_eq!(
            (e.status, e.kind, e.code, e.retry_after),
            (429, "rate_limit_error", Some("rate_limit_exceeded"), Some(7))
        );
        assert!(e.message.starts_with("This request would exceed your organization's rate limit"));
        let e = error(400, ERR_400, None);
        assert_eq!((e.status, e.kind), (400, "invalid_request_error"));
        assert!(e.message.contains("tool_result"));
        let e = error(404, ERR_404, None);
        assert_eq!((e.status, e.kind, e.code), (404, "invalid_request_error", Some("model_not_found")));
        assert_eq!(e.message, "model: claude-sonet-4-5");
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
        let e = error(529, body, Some(3));
        assert_eq!((e.status, e.code, e.retry_after), (503, Some("overloaded"), Some(3)));
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_1"}"#;
        let e = error(401, body, None);
        assert_eq!((e.status, e.code), (502, Some("upstream_auth_failed")));
        assert!(!e.message.contains("x-api-key") && e.message.contains("HTTP 401"), "{}", e.message);
        let body = br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
        assert_eq!(error(500, body, None).status, 500);
        assert_eq!(
            error(403, br#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#, None).status,
            403
        );
        assert_eq!(error(413, b"", None).code, Some("request_too_large"));
        let e = error(502, b"<html>bad gateway</html>", None);
        assert_eq!(e.status, 502);
        assert!(e.message.contains("HTTP 502") && e.message.contains("<html>"));
        assert_eq!(error(302, b"", None).status, 502);
    }

    // ---- requests ----------------------------------------------------------------------------

    fn req_with(body: &Value, stream: bool) -> Result<UpstreamRequest, ApiError> {
        request(&serde_json::to_vec(body).unwrap(), &RequestOptions { model: "claude-sonnet-4-5", stream })
    }

    fn req(body: &Value) -> Value {
        let r = req_with(body, false).unwrap_or_else(|e| panic!("{e}"));
        v(&r.body)
    }

    fn rejects(body: Value, param: &str) {
        let e = req_with(&body, false).expect_err(param);
        assert_eq!(e.status, 400, "{param}: {e}");
        assert_eq!(e.param.as_deref(), Some(param), "{e}");
    }

    fn hi() -> Value {
        json!([{"role": "user", "content": "hi"}])
    }

    #[test]
    fn request_basic() {
        let r = req_with(&json!({"model": "anthropic:x", "messages": hi()}), true).unwrap();
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.headers, vec![("anthropic-version", "2023-06-01".to_string())]);
        let b = v(&r.body);
        assert_eq!(
            b,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": true,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
        assert!(req(&json!({"messages": hi()})).get("stream").is_none());
    }

    #[test]
    fn request_system_and_history() {
        let b = req(&json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": "a", "name": "alice"},
            {"role": "user", "content": [{"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "refusal", "refusal": "no"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "d"},
        ]}));
        assert_eq!(b["system"], json!([{"type": "text", "text": "be brief"}, {"type": "text", "text": "and kind"}]));
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "no"}]},
                {"role": "user", "content": [{"type": "text", "text": "d"}]},
            ])
        );
        rejects(
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, {"role": "user", "content": "x"}]}),
            "messages[0].content[0]",
        );
        rejects(json!({"messages": [{"role": "system", "content": "only"}]}), "messages");
        rejects(json!({"messages": []}), "messages");
        rejects(json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role");
        rejects(json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}), "messages[0].role");
    }

    #[test]
    fn request_images_and_files() {
        let b = req(&json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        ]}]}));
        let c = &b["messages"][0]["content"];
        assert_eq!(
            c[1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
        );
        assert_eq!(c[2], json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}));
        assert_eq!(
            c[3],
            json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}})
        );
        let part = |p: Value| json!({"messages": [{"role": "user", "content": [p]}]});
        rejects(
            part(json!({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}})),
            "messages[0].content[0].image_url.url",
        );
        rejects(
            part(json!({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA=="}})),
            "messages[0].content[0].image_url.url",
        );
        rejects(
            part(json!({"type": "image_url", "image_url": {"url": "data:image/png,raw"}})),
            "messages[0].content[0].image_url.url",
        );
        rejects(
            part(json!({"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}})),
            "messages[0].content[0]",
        );
        rejects(part(json!({"type": "file", "file": {"file_id": "file-1"}})), "messages[0].content[0].file");
        rejects(part(json!({"type": "video"})), "messages[0].content[0]");
    }

    #[test]
    fn request_tools_round_trip() {
        let params = r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"number"}},"required":["zeta"]}"#;
        let raw = format!(
            r#"{{"messages":[
                {{"role":"user","content":"weather?"}},
                {{"role":"assistant","content":null,"tool_calls":[
                    {{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"zeta\":\"Paris\",\"alpha\":1}}"}}}},
                    {{"id":"call_2","type":"function","function":{{"name":"get_time","arguments":""}}}}]}},
                {{"role":"tool","tool_call_id":"call_1","content":"sunny"}},
                {{"role":"tool","tool_call_id":"call_2","content":[{{"type":"text","text":"noon"}}]}},
                {{"role":"user","content":"thanks"}}],
              "tools":[{{"type":"function","function":{{"name":"get_weather","description":"Weather","parameters":{params},"strict":true}}}},
                       {{"type":"function","function":{{"name":"get_time"}}}}],
              "tool_choice":"auto","parallel_tool_calls":false}}"#
        );
        let r = request(raw.as_bytes(), &RequestOptions { model: "m", stream: false }).unwrap();
        let text = String::from_utf8(r.body.clone()).unwrap();
        // The schema and the arguments keep the client's key order.
        assert!(text.contains(&format!(r#""input_schema":{params}"#)), "{text}");
        assert!(text.contains(r#""input":{"zeta":"Paris","alpha":1}"#), "{text}");
        let b = v(&r.body);
        assert_eq!(b["tools"][0]["name"], "get_weather");
        assert_eq!(b["tools"][0]["description"], "Weather");
        assert_eq!(b["tools"][0]["strict"], true);
        assert_eq!(b["tools"][1]["input_schema"], json!({"type": "object", "properties": {}}));
        assert_eq!(b["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
        assert_eq!(
            b["messages"][1]["content"],
            json!([
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"zeta": "Paris", "alpha": 1}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ])
        );
        assert_eq!(
            b["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                {"type": "text", "text": "thanks"},
            ]})
        );
        assert_eq!(b["messages"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn request_tool_choice() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let tc = |c: Value| req(&json!({"messages": hi(), "tools": tools, "tool_choice": c}))["tool_choice"].clone();
        assert_eq!(tc(json!("auto")), json!({"type": "auto"}));
        assert_eq!(tc(json!("none")), json!({"type": "none"}));
        assert_eq!(tc(json!("required")), json!({"type": "any"}));
        assert_eq!(tc(json!({"type": "function", "function": {"name": "f"}})), json!({"type": "tool", "name": "f"}));
        assert_eq!(tc(Value::Null), Value::Null);
        let b =
            req(&json!({"messages": hi(), "tools": tools, "tool_choice": "required", "parallel_tool_calls": false}));
        assert_eq!(b["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        let b = req(&json!({"messages": hi(), "tools": tools, "tool_choice": "none", "parallel_tool_calls": false}));
        assert_eq!(b["tool_choice"], json!({"type": "none"}));
        assert!(req(&json!({"messages": hi(), "tool_choice": "auto"})).get("tool_choice").is_none());
        rejects(json!({"messages": hi(), "tool_choice": "required"}), "tool_choice");
        rejects(json!({"messages": hi(), "tools": tools, "tool_choice": "sometimes"}), "tool_choice");
        rejects(json!({"messages": hi(), "tools": tools, "tool_choice": {"type": "allowed_tools"}}), "tool_choice");
        rejects(json!({"messages": hi(), "tools": [{"type": "custom", "custom": {"name": "x"}}]}), "tools[0].type");
        rejects(json!({"messages": hi(), "tools": [{"type": "function", "function": {}}]}), "tools[0].function.name");
        rejects(
            json!({"messages": hi(), "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
            "tools[0].function.parameters",
        );
        let call = |args: &str| json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}]});
        rejects(call("{not json"), "messages[1].tool_calls[0].function.arguments");
        rejects(call("[1,2]"), "messages[1].tool_calls[0].function.arguments");
        rejects(json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id");
        rejects(
            json!({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]}),
            "messages[0].function_call",
        );
    }

    #[test]
    fn request_sampling_and_limits() {
        let b = req(
            &json!({"messages": hi(), "temperature": 0.2, "top_p": 0.9, "stop": "END", "max_tokens": 100, "user": "u-1"}),
        );
        assert_eq!((b["temperature"].clone(), b["top_p"].clone()), (json!(0.2), json!(0.9)));
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert_eq!(b["max_tokens"], 100);
        assert_eq!(b["metadata"], json!({"user_id": "u-1"}));
        let b = req(
            &json!({"messages": hi(), "stop": ["a", "b"], "max_tokens": 100, "max_completion_tokens": 50, "safety_identifier": "s", "user": "u"}),
        );
        assert_eq!(b["stop_sequences"], json!(["a", "b"]));
        assert_eq!(b["max_tokens"], 50);
        assert_eq!(b["metadata"]["user_id"], "s");
        assert!(req(&json!({"messages": hi(), "stop": null})).get("stop_sequences").is_none());
        assert!(req(&json!({"messages": hi(), "stop": []})).get("stop_sequences").is_none());
        rejects(json!({"messages": hi(), "temperature": 1.5}), "temperature");
        rejects(json!({"messages": hi(), "temperature": "hot"}), "temperature");
        rejects(json!({"messages": hi(), "top_p": "x"}), "top_p");
        rejects(json!({"messages": hi(), "stop": [1]}), "stop");
        rejects(json!({"messages": hi(), "max_tokens": 0}), "max_tokens");
        rejects(json!({"messages": hi(), "max_completion_tokens": -3}), "max_completion_tokens");
        rejects(json!({"messages": hi(), "user": 5}), "user");
    }

    #[test]
    fn request_reasoning() {
        for (effort, budget) in [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 16384)] {
            let b = req(&json!({"messages": hi(), "reasoning_effort": effort}));
            assert_eq!(b["thinking"], json!({"type": "enabled", "budget_tokens": budget}));
            assert_eq!(b["max_tokens"], budget + DEFAULT_MAX_TOKENS);
        }
        let b = req(&json!({"messages": hi(), "reasoning_effort": "high", "max_completion_tokens": 40000}));
        assert_eq!((b["max_tokens"].clone(), b["thinking"]["budget_tokens"].clone()), (json!(40000), json!(16384)));
        let b = req(&json!({"messages": hi(), "reasoning_effort": "high", "max_completion_tokens": 6000}));
        assert_eq!((b["max_tokens"].clone(), b["thinking"]["budget_tokens"].clone()), (json!(6000), json!(3000)));
        let b = req(&json!({"messages": hi(), "reasoning_effort": "medium", "max_tokens": 1500}));
        assert_eq!(b["thinking"]["budget_tokens"], 1024);
        assert!(req(&json!({"messages": hi(), "reasoning_effort": "none"})).get("thinking").is_none());
        let b = req(&json!({"messages": hi(), "reasoning_effort": "low", "temperature": 1, "top_p": 0.95}));
        assert_eq!(b["temperature"], 1);
        rejects(json!({"messages": hi(), "reasoning_effort": "low", "max_tokens": 1024}), "max_tokens");
        rejects(json!({"messages": hi(), "reasoning_effort": "extreme"}), "reasoning_effort");
        rejects(json!({"messages": hi(), "reasoning_effort": 3}), "reasoning_effort");
        rejects(json!({"messages": hi(), "reasoning_effort": "low", "temperature": 0.5}), "temperature");
        rejects(json!({"messages": hi(), "reasoning_effort": "low", "top_p": 0.5}), "top_p");
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        rejects(
            json!({"messages": hi(), "reasoning_effort": "low", "tools": tools, "tool_choice": "required"}),
            "tool_choice",
        );
        rejects(
            json!({"messages": [{"role": "assistant", "content": "x", "thinking_blocks": [{"type": "thinking", "thinking": "t"}]}]}),
            "messages[0].thinking_blocks[0]",
        );
        let b = req(
            &json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x", "thinking_blocks": [{"type": "redacted_thinking", "data": "zz"}]}]}),
        );
        assert_eq!(b["messages"][1]["content"][0], json!({"type": "redacted_thinking", "data": "zz"}));
    }

    #[test]
    fn request_response_format() {
        let schema = r#"{"type":"object","properties":{"b":{"type":"string"},"a":{"type":"integer"}},"required":["b","a"],"additionalProperties":false}"#;
        let raw = format!(
            r#"{{"messages":[{{"role":"user","content":"x"}}],"response_format":{{"type":"json_schema","json_schema":{{"name":"r","strict":true,"schema":{schema}}}}}}}"#
        );
        let r = request(raw.as_bytes(), &RequestOptions { model: "m", stream: false }).unwrap();
        let text = String::from_utf8(r.body).unwrap();
        assert!(
            text.contains(&format!(r#""output_config":{{"format":{{"type":"json_schema","schema":{schema}}}}}"#)),
            "{text}"
        );
        assert!(req(&json!({"messages": hi(), "response_format": {"type": "text"}})).get("output_config").is_none());
        rejects(json!({"messages": hi(), "response_format": {"type": "json_object"}}), "response_format");
        rejects(
            json!({"messages": hi(), "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format.json_schema.schema",
        );
        rejects(json!({"messages": hi(), "response_format": {"type": "yaml"}}), "response_format");
    }

    #[test]
    fn request_unsupported_and_dropped_fields() {
        for (k, val) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("frequency_penalty", json!(0.5)),
            ("presence_penalty", json!(-1)),
            ("logit_bias", json!({"50256": -100})),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            ("verbosity", json!("low")),
            ("web_search_options", json!({})),
            ("functions", json!([{"name": "f"}])),
            ("function_call", json!("auto")),
            ("some_future_field", json!(1)),
        ] {
            let mut body = json!({"messages": hi()});
            body[k] = val;
            let e = req_with(&body, false).expect_err(k);
            assert_eq!((e.status, e.code, e.param.as_deref()), (400, Some("unsupported_parameter"), Some(k)), "{k}");
        }
        let b = req(&json!({
            "messages": hi(), "n": 1, "logprobs": false, "top_logprobs": null, "frequency_penalty": 0, "presence_penalty": 0.0,
            "logit_bias": {}, "modalities": ["text"], "audio": null, "store": true, "metadata": {"a": "b"},
            "service_tier": "auto", "seed": 42, "prompt_cache_key": "k", "prediction": {"type": "content", "content": "x"},
            "stream_options": {"include_usage": true}, "parallel_tool_calls": true,
        }));
        assert_eq!(
            b,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
        assert_eq!(request(b"[1]", &RequestOptions { model: "m", stream: false }).unwrap_err().status, 400);
        assert_eq!(
            request(b"{", &RequestOptions { model: "m", stream: false }).unwrap_err().code,
            Some("invalid_json")
        );
    }
}
