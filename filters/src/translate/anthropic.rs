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
        format!("{PROVIDER} rejected the gateway's API key: {message}")
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
        if let Some(e) = &self.st.failed {
            return Err(e.clone());
        }
        if !self.st.stopped {
            return Err(ApiError::bad_gateway(
                "upstream_stream_truncated",
                format!("{PROVIDER} stream ended before `message_stop`"),
            ));
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.st.usage.map(WireUsage::to_usage)
    }
}
