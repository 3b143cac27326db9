//! OpenAI Chat Completions ⇄ AWS Bedrock Runtime Converse / ConverseStream.
//!
//! The gateway sends to `https://bedrock-runtime.{region}.amazonaws.com` ([`base_url`]) the path
//! [`path`] builds: `/model/{modelId}/converse` or `/model/{modelId}/converse-stream`, the model
//! id percent-encoded as one path segment (`:` → `%3A`, `/` → `%2F`, as the AWS SDKs encode the
//! `modelId` label; inference-profile ARNs contain both). Requests are signed with
//! [`crate::sigv4::sign`] for service [`SIGNING_SERVICE`]; a stream answers with content type
//! [`STREAM_CONTENT_TYPE`] (binary event-stream, decoded by [`crate::eventstream`]).
//!
//! # Request mapping
//!
//! - `system` / `developer` messages → top-level `system` text blocks, wherever they appear.
//! - `user` text and `image_url` parts → `text` / `image {format, source.bytes}`. Converse takes
//!   image bytes only: `data:image/{png,jpeg,gif,webp};base64,...` URLs are passed through (the
//!   base64 text is Converse's JSON encoding of `bytes`); http(s) URLs are a 400. `detail` is
//!   dropped (Converse has no resolution hint).
//! - `assistant` → `reasoningContent` blocks from `thinking_blocks` first (`thinking` with
//!   `signature` → `reasoningText`, `redacted_thinking` `data` → `redactedContent`), then text,
//!   then `toolUse` per tool call (arguments parsed as JSON). `reasoning_content` alone is
//!   dropped: without its signature Bedrock cannot take it back.
//! - `tool` messages → `toolResult {toolUseId, content:[{text}]}` in a user turn. Consecutive
//!   same-role turns are merged (Converse requires alternation), so parallel results share one.
//! - `max_completion_tokens` (else `max_tokens`), `temperature`, `top_p`, `stop` →
//!   `inferenceConfig {maxTokens, temperature, topP, stopSequences}`.
//! - `tools` → `toolConfig.tools[].toolSpec {name, description, inputSchema.json, strict}`;
//!   `tool_choice` `auto` → `{auto}`, `required` → `{any}`, named → `{tool:{name}}`. Converse
//!   has no `none`: the whole `toolConfig` is left out, which stops tool calls; but Bedrock
//!   refuses `toolUse`/`toolResult` history without a `toolConfig`, so `none` with tool
//!   history is a 400 rather than a request that may still call tools.
//! - `response_format` `json_schema` → `outputConfig.textFormat` (`json_schema`, the schema as
//!   a JSON string); `json_object` is a 400 (Bedrock structured output needs a schema).
//! - `reasoning_effort` → `additionalModelRequestFields.thinking {type: enabled,
//!   budget_tokens}` (Claude's field; Bedrock hands it to the model, and a model without it
//!   answers a 400): `minimal` 1024, `low` 2048, `medium` 8192, `high` 16384; `none` sends no
//!   thinking. `maxTokens` must exceed the budget: when absent it becomes budget + 4096, when
//!   at most the budget it becomes budget + the requested value (the request still caps the
//!   visible answer). Claude forbids sampling changes with thinking: `temperature` other than
//!   1 and `top_p` below 0.95 are a 400.
//!
//! Dropped because they cannot change the answer: `user`, `store`, `metadata`,
//! `service_tier`, `seed`, `parallel_tool_calls`, `safety_identifier`, `prompt_cache_key`,
//! `stream_options` (the gateway's), and the neutral values `n: 1`, `logprobs: false`, zero
//! penalties, empty `logit_bias`, `modalities: ["text"]`. Any other field, or a non-neutral
//! value of those (`n > 1`, `logprobs: true`, audio, `prediction`, ...), is a 400 naming it.
//!
//! # Response mapping
//!
//! Text blocks → `content`; `reasoningContent` → `reasoning_content` plus `thinking_blocks`
//! (Anthropic's convention, sent back as above); `toolUse` → `tool_calls`. `stopReason`
//! `end_turn`/`stop_sequence` → `stop`, `max_tokens`/`model_context_window_exceeded` →
//! `length`, `tool_use` → `tool_calls`, `guardrail_intervened`/`content_filtered` →
//! `content_filter`. `prompt_tokens` = `inputTokens + cacheReadInputTokens +
//! cacheWriteInputTokens` (cached / cache-write split in the details). Converse bodies carry no
//! id, so the gateway's is used.
//!
//! Streams: `messageStart` opens; only `toolUse` blocks get a `contentBlockStart`; text,
//! `toolUse.input` fragments and `reasoningContent` text are passed on as they come; a
//! reasoning block's `signature` delta emits one `thinking_blocks` delta with the block's whole
//! text and signature (the block's text is the one thing kept across events, bounded by
//! `max_event` like an event). `messageStop` writes `finish_reason`; `metadata` (usage) comes
//! after it and ends the stream; a body that ends after `messageStop` without `metadata` ends
//! cleanly without usage, one that ends before `messageStop` is an error. Exception frames
//! (`:message-type` `exception` / `error`) are errors: `throttlingException` 429,
//! `serviceUnavailableException` 503, `validationException` 400, `modelStreamErrorException`
//! and the rest 502.

use super::{
    completion, finish, parse_object, unsupported, ChunkWriter, Message, RequestOptions, ResponseOptions,
    StreamTranscoder, ToolCall, Translated, UpstreamRequest,
};
use crate::eventstream::{self, Decoder};
use crate::usage::Usage;
use crate::ApiError;
use serde_json::{json, Map, Value};

const PROVIDER: &str = "Bedrock";

/// Content type of a ConverseStream answer.
pub const STREAM_CONTENT_TYPE: &str = eventstream::CONTENT_TYPE;

/// SigV4 service name of Bedrock Runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

/// The Bedrock Runtime endpoint of a region.
pub fn base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// `/model/{modelId}/converse[-stream]`, the model id encoded as one path segment.
pub fn path(model: &str, stream: bool) -> String {
    let op = if stream { "converse-stream" } else { "converse" };
    format!("/model/{}/{op}", crate::sigv4::encode(model, true))
}

/// Thinking budget per `reasoning_effort`; `None` means no thinking.
fn thinking_budget(effort: &str) -> Result<Option<u64>, ApiError> {
    Ok(Some(match effort {
        "none" => return Ok(None),
        "minimal" => 1024,
        "low" => 2048,
        "medium" => 8192,
        "high" => 16384,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("`reasoning_effort` must be none, minimal, low, medium or high, not {effort:?}"),
            )
            .with_param("reasoning_effort"))
        }
    }))
}

/// Room for the answer when thinking is on and the client set no limit.
const ANSWER_TOKENS_WITH_THINKING: u64 = 4096;

fn invalid(param: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_value", format!("`{param}` {why}")).with_param(param)
}

/// Present and not JSON null.
fn field<'a>(req: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    req.get(name).filter(|v| !v.is_null())
}

/// Reject fields with no Converse equivalent (or non-neutral values of ignorable ones).
fn check_fields(req: &Map<String, Value>) -> Result<(), ApiError> {
    for (name, value) in req {
        if value.is_null() {
            continue;
        }
        let neutral = match name.as_str() {
            "model"
            | "messages"
            | "stream"
            | "stream_options"
            | "max_tokens"
            | "max_completion_tokens"
            | "temperature"
            | "top_p"
            | "stop"
            | "tools"
            | "tool_choice"
            | "response_format"
            | "reasoning_effort" => continue,
            "user"
            | "store"
            | "metadata"
            | "service_tier"
            | "seed"
            | "parallel_tool_calls"
            | "safety_identifier"
            | "prompt_cache_key" => continue,
            "n" => value.as_u64() == Some(1),
            "logprobs" => value == &Value::Bool(false),
            "top_logprobs" => value.as_u64() == Some(0),
            "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
            "logit_bias" => value.as_object().is_some_and(Map::is_empty),
            "modalities" => value == &json!(["text"]),
            _ => false,
        };
        if !neutral {
            return Err(unsupported(name, PROVIDER, "Converse has no equivalent"));
        }
    }
    Ok(())
}

/// Converse turns under construction; consecutive same-role content is merged.
#[derive(Default)]
struct Turns {
    turns: Vec<(&'static str, Vec<Value>)>,
    has_tool_blocks: bool,
}

impl Turns {
    fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        match self.turns.last_mut() {
            Some((r, content)) if *r == role => content.extend(blocks),
            _ => self.turns.push((role, blocks)),
        }
    }

    fn into_json(self) -> Vec<Value> {
        self.turns.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()
    }
}

/// Text of a `content` that may only hold text (string or `text` parts).
fn text_only(content: Option<&Value>, param: &str) -> Result<Vec<String>, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                _ => Err(unsupported(&format!("{param}[{j}]"), PROVIDER, "only text parts are accepted here")),
            })
            .collect(),
        Some(_) => Err(invalid(param, "must be a string or an array of content parts")),
    }
}

fn text_blocks(texts: Vec<String>) -> Vec<Value> {
    texts.into_iter().filter(|t| !t.is_empty()).map(|t| json!({"text": t})).collect()
}

/// `image_url` part → Converse `image` block (data URLs only).
fn image_block(part: &Value, param: &str) -> Result<Value, ApiError> {
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(param, "needs `image_url.url`"))?;
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(unsupported(param, PROVIDER, "Converse takes image bytes only; send the image as a data: URL"));
    };
    let (mime, data) = rest.split_once(";base64,").ok_or_else(|| invalid(param, "must be a base64 data: URL"))?;
    let format = match mime.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(unsupported(param, PROVIDER, &format!("image type {other:?} is not png, jpeg, gif or webp")))
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

fn user_blocks(content: Option<&Value>, param: &str) -> Result<Vec<Value>, ApiError> {
    match content {
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = part.get("text").and_then(Value::as_str).ok_or_else(|| invalid(&p, "needs `text`"))?;
                        blocks.extend(text_blocks(vec![t.to_string()]));
                    }
                    Some("image_url") => blocks.push(image_block(part, &p)?),
                    _ => return Err(unsupported(&format!("{p}.type"), PROVIDER, "only text and image_url parts map")),
                }
            }
            Ok(blocks)
        }
        other => Ok(text_blocks(text_only(other, param)?)),
    }
}

/// `thinking_blocks` of an assistant message → `reasoningContent` blocks.
fn reasoning_blocks(blocks: &Value, param: &str) -> Result<Vec<Value>, ApiError> {
    let arr = blocks.as_array().ok_or_else(|| invalid(param, "must be an array"))?;
    arr.iter()
        .enumerate()
        .map(|(k, b)| {
            let p = format!("{param}[{k}]");
            let s = |name: &str| b.get(name).and_then(Value::as_str);
            match s("type") {
                Some("thinking") => {
                    let text = s("thinking").ok_or_else(|| invalid(&p, "needs `thinking`"))?;
                    let sig = s("signature").ok_or_else(|| invalid(&p, "needs `signature`"))?;
                    Ok(json!({"reasoningContent": {"reasoningText": {"text": text, "signature": sig}}}))
                }
                Some("redacted_thinking") => {
                    let data = s("data").ok_or_else(|| invalid(&p, "needs `data`"))?;
                    Ok(json!({"reasoningContent": {"redactedContent": data}}))
                }
                _ => Err(unsupported(&format!("{p}.type"), PROVIDER, "only thinking and redacted_thinking blocks map")),
            }
        })
        .collect()
}

fn assistant_blocks(msg: &Map<String, Value>, param: &str) -> Result<Vec<Value>, ApiError> {
    let mut blocks = Vec::new();
    if let Some(tb) = field(msg, "thinking_blocks") {
        blocks.extend(reasoning_blocks(tb, &format!("{param}.thinking_blocks"))?);
    }
    match field(msg, "content") {
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let text = match part.get("type").and_then(Value::as_str) {
                    Some("text") => part.get("text"),
                    Some("refusal") => part.get("refusal"),
                    _ => None,
                };
                let text = text.and_then(Value::as_str).ok_or_else(|| {
                    unsupported(&format!("{param}.content[{j}]"), PROVIDER, "only text and refusal parts map")
                })?;
                blocks.extend(text_blocks(vec![text.to_string()]));
            }
        }
        other => blocks.extend(text_blocks(text_only(other, &format!("{param}.content"))?)),
    }
    if let Some(calls) = field(msg, "tool_calls") {
        let calls = calls.as_array().ok_or_else(|| invalid(&format!("{param}.tool_calls"), "must be an array"))?;
        for (k, call) in calls.iter().enumerate() {
            let p = format!("{param}.tool_calls[{k}]");
            let id = call.get("id").and_then(Value::as_str).ok_or_else(|| invalid(&p, "needs `id`"))?;
            let f = call.get("function").ok_or_else(|| invalid(&p, "needs `function`"))?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| invalid(&p, "needs `function.name`"))?;
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            let input: Value = if args.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(args)
                    .map_err(|e| invalid(&format!("{p}.function.arguments"), format!("is not valid JSON: {e}")))?
            };
            blocks.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
        }
    }
    for legacy in ["function_call", "audio"] {
        if field(msg, legacy).is_some() {
            return Err(unsupported(&format!("{param}.{legacy}"), PROVIDER, "Converse has no equivalent"));
        }
    }
    Ok(blocks)
}

fn convert_messages(messages: Option<&Value>) -> Result<(Vec<Value>, Turns), ApiError> {
    let messages = messages.and_then(Value::as_array).ok_or_else(|| invalid("messages", "must be an array"))?;
    let mut system = Vec::new();
    let mut turns = Turns::default();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let msg = m.as_object().ok_or_else(|| invalid(&param, "must be an object"))?;
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
        let content = field(msg, "content");
        match role {
            "system" | "developer" => system.extend(text_blocks(text_only(content, &format!("{param}.content"))?)),
            "user" => {
                let blocks = user_blocks(content, &format!("{param}.content"))?;
                if blocks.is_empty() {
                    return Err(invalid(&format!("{param}.content"), "must not be empty"));
                }
                turns.push("user", blocks);
            }
            "assistant" => {
                let blocks = assistant_blocks(msg, &param)?;
                if blocks.is_empty() {
                    return Err(invalid(&format!("{param}.content"), "must not be empty without tool_calls"));
                }
                turns.has_tool_blocks |= blocks.iter().any(|b| b.get("toolUse").is_some());
                turns.push("assistant", blocks);
            }
            "tool" => {
                let id = msg
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(&format!("{param}.tool_call_id"), "is required"))?;
                let text = text_only(content, &format!("{param}.content"))?.concat();
                turns.has_tool_blocks = true;
                turns.push("user", vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})]);
            }
            _ => {
                return Err(unsupported(
                    &format!("{param}.role"),
                    PROVIDER,
                    "only system, developer, user, assistant and tool roles map",
                ))
            }
        }
    }
    Ok((system, turns))
}

fn tool_config(req: &Map<String, Value>, has_tool_blocks: bool) -> Result<Option<Value>, ApiError> {
    let tools = match field(req, "tools") {
        Some(t) => t.as_array().ok_or_else(|| invalid("tools", "must be an array"))?.as_slice(),
        None => &[],
    };
    let choice = field(req, "tool_choice");
    let choice = match choice {
        None => None,
        Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
        Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
        Some(Value::String(s)) if s == "none" => {
            if has_tool_blocks {
                return Err(unsupported(
                    "tool_choice",
                    PROVIDER,
                    "Converse has no `none`; leaving out the tools is refused when the history has tool calls",
                ));
            }
            return Ok(None);
        }
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice", "needs `function.name`"))?;
            Some(json!({"tool": {"name": name}}))
        }
        Some(_) => {
            return Err(unsupported("tool_choice", PROVIDER, "only auto, none, required or a named function map"))
        }
    };
    if tools.is_empty() {
        if choice.as_ref().is_some_and(|c| c.get("auto").is_none()) {
            return Err(invalid("tool_choice", "requires `tools`"));
        }
        return Ok(None);
    }
    let mut specs = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let p = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(&format!("{p}.type"), PROVIDER, "only function tools map"));
        }
        let f = t.get("function").ok_or_else(|| invalid(&p, "needs `function`"))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| invalid(&p, "needs `function.name`"))?;
        let schema = f
            .get("parameters")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(json!({"type": "object", "properties": {}}));
        let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
        if let Some(d) = f.get("description").and_then(Value::as_str).filter(|d| !d.is_empty()) {
            spec["description"] = json!(d);
        }
        if f.get("strict") == Some(&Value::Bool(true)) {
            spec["strict"] = json!(true);
        }
        specs.push(json!({"toolSpec": spec}));
    }
    let mut config = json!({"tools": specs});
    if let Some(c) = choice {
        config["toolChoice"] = c;
    }
    Ok(Some(config))
}

fn positive_int(req: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match field(req, name) {
        None => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| invalid(name, "must be a positive integer")),
    }
}

fn number(req: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(req, name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| invalid(name, "must be a number")),
    }
}

fn output_config(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let Some(rf) = field(req, "response_format") else { return Ok(None) };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            let js = rf.get("json_schema").ok_or_else(|| invalid("response_format", "needs `json_schema`"))?;
            let schema = js.get("schema").ok_or_else(|| invalid("response_format", "needs `json_schema.schema`"))?;
            let mut def = json!({"schema": serde_json::to_string(schema).unwrap_or_default()});
            for k in ["name", "description"] {
                if let Some(v) = js.get(k).and_then(Value::as_str) {
                    def[k] = json!(v);
                }
            }
            Ok(Some(json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": def}}})))
        }
        Some("json_object") => {
            Err(unsupported("response_format", PROVIDER, "Bedrock structured output needs a schema: use json_schema"))
        }
        _ => Err(unsupported("response_format", PROVIDER, "only text and json_schema map")),
    }
}

/// The client's Chat Completions body → a Converse request.
pub fn request(body: &[u8], opts: &RequestOptions<'_>) -> Result<UpstreamRequest, ApiError> {
    let req = parse_object(body)?;
    check_fields(&req)?;
    let (system, turns) = convert_messages(req.get("messages"))?;
    let has_tool_blocks = turns.has_tool_blocks;
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(turns.into_json()));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }

    let mut max_tokens = match positive_int(&req, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => positive_int(&req, "max_tokens")?,
    };
    let temperature = number(&req, "temperature")?;
    let top_p = number(&req, "top_p")?;
    let budget = match field(&req, "reasoning_effort") {
        None => None,
        Some(v) => thinking_budget(v.as_str().ok_or_else(|| invalid("reasoning_effort", "must be a string"))?)?,
    };
    if let Some(budget) = budget {
        if temperature.is_some_and(|t| t != 1.0) {
            return Err(unsupported(
                "temperature",
                PROVIDER,
                "Claude thinking (reasoning_effort) requires temperature 1",
            ));
        }
        if top_p.is_some_and(|p| p < 0.95) {
            return Err(unsupported(
                "top_p",
                PROVIDER,
                "Claude thinking (reasoning_effort) requires top_p of at least 0.95",
            ));
        }
        max_tokens = Some(match max_tokens {
            None => budget + ANSWER_TOKENS_WITH_THINKING,
            Some(n) if n <= budget => budget + n,
            Some(n) => n,
        });
        out.insert(
            "additionalModelRequestFields".into(),
            json!({"thinking": {"type": "enabled", "budget_tokens": budget}}),
        );
    }
    let mut inference = Map::new();
    if let Some(n) = max_tokens {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(t) = temperature {
        inference.insert("temperature".into(), json!(t));
    }
    if let Some(p) = top_p {
        inference.insert("topP".into(), json!(p));
    }
    match field(&req, "stop") {
        None => {}
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(invalid("stop", "must be a string or an array of strings")),
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tc) = tool_config(&req, has_tool_blocks)? {
        out.insert("toolConfig".into(), tc);
    }
    if let Some(oc) = output_config(&req)? {
        out.insert("outputConfig".into(), oc);
    }
    Ok(UpstreamRequest {
        path: path(opts.model, opts.stream),
        body: serde_json::to_vec(&Value::Object(out)).unwrap_or_default(),
        // ConverseStream answers in AWS event-stream framing, not SSE.
        headers: if opts.stream { vec![("accept", STREAM_CONTENT_TYPE.to_string())] } else { Vec::new() },
    })
}

fn count(v: &Value, name: &str) -> u64 {
    v.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// Converse `usage` → OpenAI counts (prompt includes cache reads and writes).
pub(crate) fn usage_of(u: &Value) -> Usage {
    let (input, output) = (count(u, "inputTokens"), count(u, "outputTokens"));
    let (read, write) = (count(u, "cacheReadInputTokens"), count(u, "cacheWriteInputTokens"));
    let prompt = input + read + write;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: prompt + output,
        cached_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
    }
}

fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => finish::LENGTH,
        "tool_use" => finish::TOOL_CALLS,
        "guardrail_intervened" | "content_filtered" => finish::CONTENT_FILTER,
        _ => finish::STOP,
    }
}

fn bad_upstream(why: impl Into<String>) -> ApiError {
    ApiError::bad_gateway("upstream_invalid_response", why)
}

/// A whole Converse answer → `chat.completion`.
pub fn response(body: &[u8], opts: &ResponseOptions) -> Result<Translated, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad_upstream(format!("Bedrock answer is not JSON: {e}")))?;
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_upstream("Bedrock answer has no output.message.content"))?;
    let mut msg = Message::default();
    let mut text: Option<String> = None;
    let mut thinking_blocks = Vec::new();
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.get_or_insert_with(String::new).push_str(t);
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(rt) = r.get("reasoningText") {
                let t = rt.get("text").and_then(Value::as_str).unwrap_or("");
                msg.reasoning.get_or_insert_with(String::new).push_str(t);
                if let Some(sig) = rt.get("signature").and_then(Value::as_str) {
                    thinking_blocks.push(json!({"type": "thinking", "thinking": t, "signature": sig}));
                }
            } else if let Some(data) = r.get("redactedContent").and_then(Value::as_str) {
                thinking_blocks.push(json!({"type": "redacted_thinking", "data": data}));
            }
        } else if let Some(tu) = b.get("toolUse") {
            let s = |k: &str| tu.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let input = tu.get("input").cloned().unwrap_or(json!({}));
            msg.tool_calls.push(ToolCall {
                id: s("toolUseId"),
                name: s("name"),
                arguments: serde_json::to_string(&input).unwrap_or_default(),
            });
        }
    }
    msg.content = match text {
        Some(t) => Some(t),
        None if !msg.tool_calls.is_empty() => None,
        None => Some(String::new()),
    };
    if !thinking_blocks.is_empty() {
        msg.extra.insert("thinking_blocks".into(), Value::Array(thinking_blocks));
    }
    let reason = finish_reason(v.get("stopReason").and_then(Value::as_str).unwrap_or(""));
    let usage = v.get("usage").map(usage_of);
    Ok(Translated { body: completion(opts, &msg, reason, usage.as_ref()), usage })
}

/// An exception named by Bedrock (`throttlingException`, `ThrottlingException`, ...) → OpenAI.
fn exception(name: &str, message: &str) -> ApiError {
    let message = if message.is_empty() { name.to_string() } else { message.to_string() };
    let key = name.to_ascii_lowercase();
    let key = key.strip_suffix("exception").unwrap_or(&key);
    match key {
        "throttling" => ApiError::new(429, "rate_limit_error", Some("rate_limit_exceeded"), message),
        "serviceunavailable" => ApiError::unavailable("service_unavailable", message),
        "validation" => ApiError::bad_request("validation_error", message),
        "modelstreamerror" => ApiError::bad_gateway("model_stream_error", message),
        "modeltimeout" => ApiError::gateway_timeout(message),
        _ => ApiError::bad_gateway("upstream_error", message),
    }
}

/// The `message` of a Bedrock error body (`{"message": ...}`; some services say `Message`), or
/// the body itself cut to a readable length.
fn error_message(status: u16, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.get("message").or_else(|| v.get("Message")).and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("Bedrock answered HTTP {status}")
    } else {
        text.chars().take(1000).collect()
    }
}

/// Seconds from a `Retry-After` value (integer or decimal seconds; HTTP dates are ignored).
fn retry_seconds(v: &str) -> Option<u64> {
    let v = v.trim();
    v.parse::<u64>()
        .ok()
        .or_else(|| v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.ceil() as u64))
}

/// A non-2xx Bedrock answer → the OpenAI error shape. The exception name travels in the
/// `x-amzn-ErrorType` header, which is not passed here, so the status decides: 400
/// ValidationException, 403 AccessDenied (the gateway's credentials) → 502, 404
/// ResourceNotFound, 408 ModelTimeout → 504, 424 ModelError → 502, 429 Throttling, 500
/// InternalServer → 502, 503 ServiceUnavailable.
pub fn error(status: u16, body: &[u8], retry_after: Option<&str>) -> ApiError {
    let message = error_message(status, body);
    let e = match status {
        400 => ApiError::bad_request("validation_error", message),
        401 | 403 => ApiError::bad_gateway(
            "upstream_auth_failed",
            format!("Bedrock refused the gateway's credentials (HTTP {status}); the provider's message is not passed on, as it may quote the key"),
        ),
        404 => ApiError::new(404, "invalid_request_error", Some("model_not_found"), message),
        408 => ApiError::gateway_timeout(message),
        413 => ApiError::new(413, "invalid_request_error", Some("request_too_large"), message),
        422 => ApiError::new(422, "invalid_request_error", Some("unprocessable_entity"), message),
        424 => ApiError::bad_gateway("model_error", message),
        429 => ApiError::new(429, "rate_limit_error", Some("rate_limit_exceeded"), message),
        503 => ApiError::unavailable("service_unavailable", message),
        _ => ApiError::bad_gateway("upstream_error", message),
    };
    match retry_after.and_then(retry_seconds) {
        Some(s) if matches!(e.status, 429 | 503) => e.with_retry_after(s),
        _ => e,
    }
}

/// ConverseStream event-stream → `chat.completion.chunk` SSE.
pub struct BedrockStream {
    decoder: Decoder,
    state: State,
}

/// Everything but the decoder, so the decoder's callback can borrow it.
struct State {
    writer: ChunkWriter,
    max_event: usize,
    /// Open `toolUse` blocks: Bedrock `contentBlockIndex` → OpenAI tool-call index.
    tools: Vec<(u64, u32)>,
    /// Text of the reasoning block in progress, sent whole with its signature.
    thinking: String,
    usage: Option<Usage>,
    /// `messageStop` seen (`finish_reason` written).
    stopped: bool,
    /// `[DONE]` written.
    done: bool,
}

/// Start translating a ConverseStream body.
pub fn stream(opts: ResponseOptions) -> BedrockStream {
    let max_event = opts.max_event;
    BedrockStream {
        decoder: Decoder::new(max_event),
        state: State {
            writer: ChunkWriter::new(opts),
            max_event,
            tools: Vec::new(),
            thinking: String::new(),
            usage: None,
            stopped: false,
            done: false,
        },
    }
}

impl State {
    fn handle(&mut self, msg: eventstream::Message, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let payload = || -> Result<Value, ApiError> {
            serde_json::from_slice(&msg.payload)
                .map_err(|e| bad_upstream(format!("Bedrock stream event is not JSON: {e}")))
        };
        match msg.header_str(":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let name = msg.header_str(":exception-type").unwrap_or("exception");
                let p = payload().unwrap_or(Value::Null);
                let m = p.get("message").or_else(|| p.get("Message")).and_then(Value::as_str).unwrap_or("");
                return Err(exception(name, m));
            }
            "error" => {
                let code = msg.header_str(":error-code").unwrap_or("error");
                return Err(exception(code, msg.header_str(":error-message").unwrap_or("")));
            }
            other => return Err(bad_upstream(format!("Bedrock stream message type {other:?} is unknown"))),
        }
        if self.done {
            return Ok(());
        }
        let p = payload()?;
        let w = &mut self.writer;
        match msg.header_str(":event-type").unwrap_or("") {
            "messageStart" => w.start(out),
            "contentBlockStart" => {
                if let Some(tu) = p.pointer("/start/toolUse") {
                    let s = |k: &str| tu.get(k).and_then(Value::as_str).unwrap_or("");
                    let index = w.tool_call_start(out, s("toolUseId"), s("name"), "");
                    self.tools.push((count(&p, "contentBlockIndex"), index));
                }
            }
            "contentBlockDelta" => {
                let Some(d) = p.get("delta") else { return Ok(()) };
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    w.content(out, t);
                } else if let Some(tu) = d.get("toolUse") {
                    let block = count(&p, "contentBlockIndex");
                    let index = self
                        .tools
                        .iter()
                        .find(|(b, _)| *b == block)
                        .map(|(_, i)| *i)
                        .ok_or_else(|| bad_upstream(format!("Bedrock toolUse delta for unopened block {block}")))?;
                    w.tool_call_args(out, index, tu.get("input").and_then(Value::as_str).unwrap_or(""));
                } else if let Some(r) = d.get("reasoningContent") {
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        if self.thinking.len() + t.len() > self.max_event {
                            return Err(bad_upstream(format!(
                                "Bedrock reasoning block exceeds {} bytes",
                                self.max_event
                            )));
                        }
                        self.thinking.push_str(t);
                        w.reasoning(out, t);
                    }
                    if let Some(sig) = r.get("signature").and_then(Value::as_str) {
                        let text = std::mem::take(&mut self.thinking);
                        let block = json!([{"type": "thinking", "thinking": text, "signature": sig}]);
                        w.extra(out, Map::from_iter([("thinking_blocks".to_string(), block)]));
                    }
                    if let Some(data) = r.get("redactedContent").and_then(Value::as_str) {
                        let block = json!([{"type": "redacted_thinking", "data": data}]);
                        w.extra(out, Map::from_iter([("thinking_blocks".to_string(), block)]));
                    }
                }
            }
            "contentBlockStop" => {
                let block = count(&p, "contentBlockIndex");
                self.tools.retain(|(b, _)| *b != block);
                self.thinking.clear();
            }
            "messageStop" => {
                w.finish(out, finish_reason(p.get("stopReason").and_then(Value::as_str).unwrap_or("")));
                self.stopped = true;
            }
            "metadata" => {
                if let Some(u) = p.get("usage") {
                    self.usage = Some(usage_of(u));
                }
                if self.stopped {
                    w.done(out, self.usage.as_ref());
                    self.done = true;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl StreamTranscoder for BedrockStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        let state = &mut self.state;
        self.decoder.feed(chunk, |msg| state.handle(msg, out))
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        self.decoder.finish()?;
        let s = &mut self.state;
        if s.done {
            return Ok(());
        }
        if !s.stopped {
            return Err(ApiError::bad_gateway("upstream_stream_incomplete", "Bedrock stream ended before messageStop"));
        }
        s.writer.done(out, s.usage.as_ref());
        s.done = true;
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.state.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::{encode, message};
    use crate::sse::SseReader;
    use crate::testutil::{random_splits, Rng};

    const TEXT: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-text.json");
    const REASONING: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-reasoning.json");
    const TOOL_REASONING: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-tool-use-with-reasoning.json");
    const CACHE_WRITE: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-cache-write.json");
    const CACHE_READ: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-cache-read.json");
    const ERROR_400: &[u8] = include_bytes!("../../../fixtures/bedrock/error-400-invalid-model.json");
    const STREAM_TEXT: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-stream-text.eventstream");
    const STREAM_TOOL: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-stream-tool-use.eventstream");
    const STREAM_REASONING: &[u8] = include_bytes!("../../../fixtures/bedrock/converse-stream-reasoning.eventstream");
    const DECODED_TEXT: &str = include_str!("../../../fixtures/bedrock/converse-stream-text.decoded.jsonl");
    const DECODED_TOOL: &str = include_str!("../../../fixtures/bedrock/converse-stream-tool-use.decoded.jsonl");
    const DECODED_REASONING: &str = include_str!("../../../fixtures/bedrock/converse-stream-reasoning.decoded.jsonl");

    fn opts(include_usage: bool) -> ResponseOptions {
        ResponseOptions {
            id: "chatcmpl-test".into(),
            created: 7,
            model: "bedrock:m".into(),
            include_usage,
            max_event: 1 << 16,
        }
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    // ---------- whole responses ----------

    fn translate(body: &[u8]) -> (Value, Option<Usage>) {
        let t = response(body, &opts(false)).unwrap();
        (parse(&t.body), t.usage)
    }

    /// The fixture's text blocks joined, computed from the raw JSON.
    fn fixture_text(body: &[u8]) -> String {
        let v = parse(body);
        v["output"]["message"]["content"].as_array().unwrap().iter().filter_map(|b| b["text"].as_str()).collect()
    }

    #[test]
    fn golden_text() {
        let (v, usage) = translate(TEXT);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-test");
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], fixture_text(TEXT));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(m.get("tool_calls").is_none() && m.get("reasoning_content").is_none());
        assert_eq!(
            usage.unwrap(),
            Usage { prompt_tokens: 22, completion_tokens: 57, total_tokens: 79, ..Default::default() }
        );
        assert_eq!(v["usage"]["total_tokens"], 79);
    }

    #[test]
    fn golden_reasoning() {
        let (v, _) = translate(REASONING);
        let raw = parse(REASONING);
        let rt = &raw["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"];
        let m = &v["choices"][0]["message"];
        assert_eq!(m["reasoning_content"], rt["text"]);
        assert_eq!(m["content"], fixture_text(REASONING));
        assert_eq!(
            m["thinking_blocks"],
            json!([{"type": "thinking", "thinking": rt["text"], "signature": rt["signature"]}])
        );
        assert_eq!(v["usage"]["prompt_tokens"], 51);
        assert_eq!(v["usage"]["completion_tokens"], 78);
    }

    #[test]
    fn golden_tool_use_with_reasoning() {
        let (v, usage) = translate(TOOL_REASONING);
        let m = &v["choices"][0]["message"];
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(m["content"], "I'll need to check what country you're from to answer that question.");
        assert_eq!(
            m["tool_calls"],
            json!([{"id": "tooluse_W9DaUFg4Tj2cRPpndqxWSg", "type": "function", "function": {"name": "get_user_country", "arguments": "{}"}}])
        );
        assert!(m["reasoning_content"].as_str().unwrap().starts_with("The user is asking"));
        let raw = parse(TOOL_REASONING);
        assert_eq!(
            m["thinking_blocks"][0]["signature"],
            raw["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"]["signature"]
        );
        assert_eq!(usage.unwrap().total_tokens, 527);
    }

    #[test]
    fn golden_cache_usage() {
        let (v, usage) = translate(CACHE_WRITE);
        let u = usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.completion_tokens, u.total_tokens),
            (1324, 0, 1322, 5, 1329)
        );
        assert_eq!(v["usage"]["prompt_tokens_details"], json!({"cached_tokens": 0, "cache_creation_tokens": 1322}));
        let (v, usage) = translate(CACHE_READ);
        let u = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.total_tokens), (1324, 1322, 0, 1329));
        assert_eq!(v["usage"]["total_tokens"], parse(CACHE_READ)["usage"]["totalTokens"]);
        assert_eq!(v["choices"][0]["message"]["content"], "21");
    }

    #[test]
    fn response_edge_cases() {
        assert_eq!(response(b"not json", &opts(false)).unwrap_err().status, 502);
        assert_eq!(response(b"{}", &opts(false)).unwrap_err().status, 502);
        for (stop, want) in [
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("model_context_window_exceeded", "length"),
        ] {
            let body = json!({"output": {"message": {"role": "assistant", "content": []}}, "stopReason": stop});
            let (v, usage) = translate(&serde_json::to_vec(&body).unwrap());
            assert_eq!(v["choices"][0]["finish_reason"], want);
            assert_eq!(v["choices"][0]["message"]["content"], "");
            assert!(usage.is_none());
        }
        let body = json!({"output": {"message": {"content": [{"reasoningContent": {"redactedContent": "AAEC"}}, {"toolUse": {"toolUseId": "t", "name": "f", "input": {"a": [1]}}}]}}, "stopReason": "tool_use"});
        let (v, _) = translate(&serde_json::to_vec(&body).unwrap());
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["thinking_blocks"], json!([{"type": "redacted_thinking", "data": "AAEC"}]));
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], r#"{"a":[1]}"#);
    }

    // ---------- streams ----------

    fn run_stream(chunks: &[&[u8]], include_usage: bool) -> Result<(Vec<u8>, Option<Usage>), ApiError> {
        let mut s = stream(opts(include_usage));
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out)?;
            assert!(s.decoder.buffered() <= s.state.max_event);
        }
        s.finish(&mut out)?;
        Ok((out, s.usage()))
    }

    fn events(out: &[u8]) -> Vec<String> {
        let mut evs = Vec::new();
        SseReader::new(1 << 20).feed(out, &mut |e| evs.push(e.data)).unwrap();
        evs
    }

    /// What the client reassembles from the chunks.
    #[derive(Debug, Default, PartialEq)]
    struct Assembled {
        content: String,
        reasoning: String,
        tools: Vec<(String, String, String)>,
        thinking_blocks: Vec<Value>,
        finish: Vec<String>,
        usage: Option<Value>,
        done: bool,
    }

    fn assemble(out: &[u8]) -> Assembled {
        let mut a = Assembled::default();
        let evs = events(out);
        for (i, e) in evs.iter().enumerate() {
            if e == "[DONE]" {
                assert_eq!(i, evs.len() - 1, "[DONE] is last");
                a.done = true;
                continue;
            }
            let v: Value = serde_json::from_str(e).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["id"], "chatcmpl-test");
            if i == 0 {
                assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
            }
            if !v["usage"].is_null() {
                a.usage = Some(v["usage"].clone());
            }
            let Some(c) = v["choices"].get(0) else { continue };
            let d = &c["delta"];
            a.content.push_str(d["content"].as_str().unwrap_or(""));
            a.reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
            if let Some(tb) = d["thinking_blocks"].as_array() {
                a.thinking_blocks.extend(tb.iter().cloned());
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let idx = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(idx, a.tools.len());
                    a.tools.push((id.into(), tc["function"]["name"].as_str().unwrap().into(), String::new()));
                }
                a.tools[idx].2.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = c["finish_reason"].as_str() {
                a.finish.push(f.into());
            }
        }
        a
    }

    /// The same view computed straight from the DERIVED decoded fixture.
    fn expected(decoded: &str) -> Assembled {
        let mut a = Assembled { done: true, ..Default::default() };
        let mut reasoning_block = String::new();
        for line in decoded.lines().filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let p = &v["payload"];
            match v[":event-type"].as_str().unwrap() {
                "contentBlockStart" => {
                    let tu = &p["start"]["toolUse"];
                    a.tools.push((
                        tu["toolUseId"].as_str().unwrap().into(),
                        tu["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                }
                "contentBlockDelta" => {
                    let d = &p["delta"];
                    a.content.push_str(d["text"].as_str().unwrap_or(""));
                    if let Some(t) = d["reasoningContent"]["text"].as_str() {
                        a.reasoning.push_str(t);
                        reasoning_block.push_str(t);
                    }
                    if let Some(sig) = d["reasoningContent"]["signature"].as_str() {
                        a.thinking_blocks
                            .push(json!({"type": "thinking", "thinking": reasoning_block, "signature": sig}));
                    }
                    if let Some(inp) = d["toolUse"]["input"].as_str() {
                        a.tools.last_mut().unwrap().2.push_str(inp);
                    }
                }
                "messageStop" => a.finish.push(finish_reason(p["stopReason"].as_str().unwrap()).into()),
                "metadata" => {
                    let u = &p["usage"];
                    a.usage = Some(json!({
                        "prompt_tokens": u["inputTokens"], "completion_tokens": u["outputTokens"],
                        "total_tokens": u["totalTokens"],
                        "prompt_tokens_details": {"cached_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0},
                    }));
                }
                _ => {}
            }
        }
        a
    }

    #[test]
    fn golden_streams_any_split() {
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        for (raw, decoded, finish) in [
            (STREAM_TEXT, DECODED_TEXT, "stop"),
            (STREAM_TOOL, DECODED_TOOL, "tool_calls"),
            (STREAM_REASONING, DECODED_REASONING, "stop"),
        ] {
            let (whole, usage) = run_stream(&[raw], true).unwrap();
            let got = assemble(&whole);
            let want = expected(decoded);
            assert_eq!(got, want);
            assert_eq!(got.finish, vec![finish.to_string()]);
            let u = usage.unwrap();
            assert_eq!(Some(u.total_tokens), want.usage.as_ref().and_then(|u| u["total_tokens"].as_u64()));
            let bytes: Vec<&[u8]> = raw.chunks(1).collect();
            assert_eq!(run_stream(&bytes, true).unwrap().0, whole, "1-byte feeding");
            for _ in 0..100 {
                assert_eq!(run_stream(&random_splits(raw, &mut rng, 64), true).unwrap().0, whole);
            }
            // Without include_usage: no usage chunk, no `usage` member, same text.
            let (plain, _) = run_stream(&[raw], false).unwrap();
            let a = assemble(&plain);
            assert_eq!((a.content, a.usage), (want.content.clone(), None));
            assert!(!String::from_utf8(plain).unwrap().contains("\"usage\""));
        }
    }

    #[test]
    fn stream_tool_and_reasoning_details() {
        let a = assemble(&run_stream(&[STREAM_TOOL], false).unwrap().0);
        assert_eq!(
            a.tools,
            vec![("tooluse_lAG_zP8QRHmSYOwZzzaCqA".into(), "get_temperature".into(), r#"{"city":"Paris"}"#.into())]
        );
        assert!(a.content.starts_with("<thinking> To find"));
        let a = assemble(&run_stream(&[STREAM_REASONING], false).unwrap().0);
        assert_eq!(a.thinking_blocks.len(), 1);
        assert_eq!(a.thinking_blocks[0]["thinking"], a.reasoning.as_str());
        assert!(a.thinking_blocks[0]["signature"].as_str().unwrap().starts_with("Eu0CCkgIBxABGAIqQJDc"));
        assert_eq!(a.content, "Hello! It's nice to meet you. How can I help you today?");
    }

    fn frame(event: &str, payload: Value) -> Vec<u8> {
        encode(&message(
            &[(":event-type", event), (":content-type", "application/json"), (":message-type", "event")],
            &serde_json::to_vec(&payload).unwrap(),
        ))
    }

    fn exception_frame(name: &str, msg: &str) -> Vec<u8> {
        encode(&message(
            &[(":exception-type", name), (":content-type", "application/json"), (":message-type", "exception")],
            &serde_json::to_vec(&json!({"message": msg})).unwrap(),
        ))
    }

    #[test]
    fn stream_exceptions_map_status() {
        let start = frame("messageStart", json!({"role": "assistant"}));
        for (name, status, kind) in [
            ("throttlingException", 429, "rate_limit_error"),
            ("serviceUnavailableException", 503, "api_error"),
            ("modelStreamErrorException", 502, "api_error"),
            ("validationException", 400, "invalid_request_error"),
            ("internalServerException", 502, "api_error"),
        ] {
            let mut s = stream(opts(false));
            let mut out = Vec::new();
            s.feed(&start, &mut out).unwrap();
            let e = s.feed(&exception_frame(name, "Too many tokens, please wait."), &mut out).unwrap_err();
            assert_eq!((e.status, e.kind), (status, kind), "{name}");
            assert_eq!(e.message, "Too many tokens, please wait.");
        }
        let err = encode(&message(
            &[(":message-type", "error"), (":error-code", "ThrottlingException"), (":error-message", "slow down")],
            b"",
        ));
        let e = run_stream(&[&start, &err], false).unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (429, "slow down"));
        // An exception after the text already streamed is still an error from feed.
        let mut body = STREAM_TEXT[..STREAM_TEXT.len() / 2].to_vec();
        let cut = {
            let mut at = 0;
            while at + 4 <= body.len() {
                let n = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
                if at + n > body.len() {
                    break;
                }
                at += n;
            }
            at
        };
        body.truncate(cut);
        body.extend(exception_frame("modelStreamErrorException", "boom"));
        assert_eq!(run_stream(&[&body], false).unwrap_err().status, 502);
    }

    #[test]
    fn stream_end_markers() {
        // Ends before messageStop: an error from finish.
        let start = frame("messageStart", json!({"role": "assistant"}));
        let delta = frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}));
        let e = run_stream(&[&start, &delta], false).unwrap_err();
        assert_eq!((e.status, e.code), (502, Some("upstream_stream_incomplete")));
        // Ends inside a frame: an error too.
        assert_eq!(run_stream(&[&STREAM_TEXT[..STREAM_TEXT.len() - 3]], false).unwrap_err().status, 502);
        // messageStop without metadata: finish and [DONE] without usage numbers.
        let stop = frame("messageStop", json!({"stopReason": "max_tokens"}));
        let (out, usage) = run_stream(&[&start, &delta, &stop], true).unwrap();
        let a = assemble(&out);
        assert_eq!((a.content.as_str(), a.finish, a.done), ("Hi", vec!["length".to_string()], true));
        assert!(usage.is_none());
        assert_eq!(a.usage.unwrap()["total_tokens"], 0);
        // A toolUse delta for a block never opened is a protocol error.
        let bad = frame("contentBlockDelta", json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}}));
        assert_eq!(run_stream(&[&start, &bad], false).unwrap_err().status, 502);
        // Non-JSON payload.
        let junk = encode(&message(&[(":event-type", "contentBlockDelta"), (":message-type", "event")], b"{nope"));
        assert_eq!(run_stream(&[&start, &junk], false).unwrap_err().status, 502);
        // Cache usage in metadata is counted into prompt_tokens.
        let meta = frame(
            "metadata",
            json!({"usage": {"inputTokens": 2, "outputTokens": 5, "cacheReadInputTokens": 10, "cacheWriteInputTokens": 3, "totalTokens": 20}}),
        );
        let (_, usage) = run_stream(&[&start, &delta, &stop, &meta], true).unwrap();
        let u = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.total_tokens), (15, 10, 3, 20));
    }

    #[test]
    fn stream_reasoning_block_bounded() {
        let mut o = opts(false);
        o.max_event = 512;
        let mut s = stream(o);
        let mut out = Vec::new();
        let chunk = frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "x".repeat(150)}}}),
        );
        for _ in 0..3 {
            s.feed(&chunk, &mut out).unwrap();
        }
        assert_eq!(s.feed(&chunk, &mut out).unwrap_err().status, 502);
        assert!(s.state.thinking.len() <= 512);
    }

    /// Random bytes and random mutations/truncations of the fixtures: never a panic, memory
    /// within max_event plus a constant, garbage is an Err.
    #[test]
    fn fuzz_stream() {
        let mut rng = Rng::new(0xdead_beef_cafe_f00d);
        let fixtures = [STREAM_TEXT, STREAM_TOOL, STREAM_REASONING];
        for i in 0..3000 {
            let input: Vec<u8> = match i % 3 {
                0 => {
                    let len = 1 + rng.below(1024);
                    rng.bytes(len)
                }
                1 => {
                    let mut v = fixtures[rng.below(3)].to_vec();
                    for _ in 0..1 + rng.below(3) {
                        let at = rng.below(v.len());
                        v[at] ^= 1 + rng.below(255) as u8;
                    }
                    v
                }
                _ => {
                    let f = fixtures[rng.below(3)];
                    f[..rng.below(f.len())].to_vec()
                }
            };
            let mut o = opts(true);
            o.max_event = 1024;
            let mut s = stream(o);
            let mut out = Vec::new();
            let mut r = Ok(());
            for c in random_splits(&input, &mut rng, 64) {
                r = s.feed(c, &mut out);
                assert!(s.decoder.buffered() + s.state.thinking.len() <= 2 * 1024);
                if r.is_err() {
                    break;
                }
            }
            let r = r.and_then(|_| s.finish(&mut out));
            if i % 3 != 2 {
                assert!(r.is_err(), "case {i}: garbage or a corrupted frame must fail");
            }
            if let Err(e) = r {
                assert!(e.status >= 400);
            }
        }
    }

    // ---------- requests ----------

    fn req(body: Value) -> Result<Value, ApiError> {
        req_with(body, "anthropic.claude-3-7-sonnet-20250219-v1:0", false)
    }

    fn req_with(body: Value, model: &str, stream: bool) -> Result<Value, ApiError> {
        let r = request(&serde_json::to_vec(&body).unwrap(), &RequestOptions { model, stream })?;
        let accept: Vec<&str> = r.headers.iter().filter(|(n, _)| *n == "accept").map(|(_, v)| v.as_str()).collect();
        assert_eq!(accept, if stream { vec![STREAM_CONTENT_TYPE] } else { vec![] });
        let mut v = parse(&r.body);
        v["__path"] = json!(r.path);
        Ok(v)
    }

    fn err(body: Value) -> ApiError {
        req(body).unwrap_err()
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn request_basic_and_path() {
        let v = req(json!({
            "model": "bedrock:ignored",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                user("Hi"),
                {"role": "assistant", "content": "Salut"},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]},
            ],
            "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END",
            "user": "u1", "store": false, "metadata": {"a": "b"}, "seed": 3, "n": 1, "logprobs": false,
            "stream": false, "service_tier": "auto", "parallel_tool_calls": true,
        }))
        .unwrap();
        assert_eq!(v["__path"], "/model/anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse");
        assert_eq!(v["system"], json!([{"text": "Be brief."}, {"text": "Use French."}]));
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"text": "Salut"}]},
                {"role": "user", "content": [{"text": "Again"}]},
            ])
        );
        assert_eq!(
            v["inferenceConfig"],
            json!({"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert!(v.get("toolConfig").is_none() && v.get("additionalModelRequestFields").is_none());

        let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123";
        let v = req_with(
            json!({"messages": [user("x")], "max_completion_tokens": 5, "max_tokens": 9, "stop": ["a", "b"]}),
            arn,
            true,
        )
        .unwrap();
        assert_eq!(v["__path"], "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse-stream");
        assert_eq!(v["inferenceConfig"], json!({"maxTokens": 5, "stopSequences": ["a", "b"]}));
        assert_eq!(base_url("eu-west-3"), "https://bedrock-runtime.eu-west-3.amazonaws.com");
    }

    #[test]
    fn request_images() {
        let v = req(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/AAAA", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklG"}},
        ]}]}))
        .unwrap();
        assert_eq!(
            v["messages"][0]["content"],
            json!([
                {"text": "What is this?"},
                {"image": {"format": "jpeg", "source": {"bytes": "/9j/AAAA"}}},
                {"image": {"format": "webp", "source": {"bytes": "UklG"}}},
            ])
        );
        let e = err(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
        );
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[0].content[0]")));
        let e = err(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA"}}]}]}),
        );
        assert_eq!(e.status, 400);
        let e = err(json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
    }

    fn weather_tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}},
            {"type": "function", "function": {"name": "now"}}])
    }

    #[test]
    fn request_tools_and_choice() {
        let v = req(json!({"messages": [user("Weather?")], "tools": weather_tools()})).unwrap();
        assert_eq!(
            v["toolConfig"],
            json!({"tools": [
                {"toolSpec": {"name": "get_weather", "description": "Weather by city", "strict": true,
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}},
                {"toolSpec": {"name": "now", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
            ]})
        );
        for (choice, want) in [
            (json!("auto"), json!({"auto": {}})),
            (json!("required"), json!({"any": {}})),
            (json!({"type": "function", "function": {"name": "now"}}), json!({"tool": {"name": "now"}})),
        ] {
            let v = req(json!({"messages": [user("x")], "tools": weather_tools(), "tool_choice": choice})).unwrap();
            assert_eq!(v["toolConfig"]["toolChoice"], want);
        }
        // none without tool history: no toolConfig at all.
        let v = req(json!({"messages": [user("x")], "tools": weather_tools(), "tool_choice": "none"})).unwrap();
        assert!(v.get("toolConfig").is_none());
        // none with tool history: Bedrock needs the toolConfig, so this cannot be honoured.
        let e = err(
            json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "noon"}], "tools": weather_tools(), "tool_choice": "none"}),
        );
        assert_eq!((e.status, e.param.as_deref()), (400, Some("tool_choice")));
        assert_eq!(err(json!({"messages": [user("x")], "tool_choice": "required"})).status, 400);
        assert_eq!(
            err(json!({"messages": [user("x")], "tools": [{"type": "web_search"}]})).param.as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            err(json!({"messages": [user("x")], "tools": weather_tools(), "tool_choice": {"type": "allowed_tools"}}))
                .status,
            400
        );
    }

    #[test]
    fn request_tool_round_trip_parallel() {
        let v = req(json!({"messages": [
            user("Weather in Paris and Rome?"),
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "21C"}]},
            user("Thanks"),
        ], "tools": weather_tools()}))
        .unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
                {"role": "assistant", "content": [
                    {"text": "Checking."},
                    {"toolUse": {"toolUseId": "c1", "name": "get_weather", "input": {"city": "Paris"}}},
                    {"toolUse": {"toolUseId": "c2", "name": "get_weather", "input": {}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "c1", "content": [{"text": "18C"}]}},
                    {"toolResult": {"toolUseId": "c2", "content": [{"text": "21C"}]}},
                    {"text": "Thanks"}]},
            ])
        );
        let e = err(
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls[0].function.arguments"));
        assert_eq!(
            err(json!({"messages": [{"role": "tool", "content": "x"}]})).param.as_deref(),
            Some("messages[0].tool_call_id")
        );
        assert_eq!(err(json!({"messages": [{"role": "function", "name": "f", "content": "x"}]})).status, 400);
        assert_eq!(err(json!({"messages": [{"role": "assistant", "content": ""}]})).status, 400);
        assert_eq!(
            err(json!({"messages": [{"role": "assistant", "content": null, "function_call": {"name": "f"}}]})).status,
            400
        );
    }

    /// A Converse answer with reasoning + tool use, translated to OpenAI and sent back: the
    /// signed reasoning block comes back first in the assistant turn.
    #[test]
    fn thinking_blocks_survive_tool_round_trip() {
        let (v, _) = translate(TOOL_REASONING);
        let mut assistant = v["choices"][0]["message"].clone();
        assistant.as_object_mut().unwrap().remove("refusal");
        let call_id = assistant["tool_calls"][0]["id"].as_str().unwrap().to_string();
        let r = req(json!({"messages": [user("Largest city in my country?"), assistant,
            {"role": "tool", "tool_call_id": call_id, "content": "France"}],
            "tools": [{"type": "function", "function": {"name": "get_user_country"}}], "reasoning_effort": "low"}))
        .unwrap();
        let raw = parse(TOOL_REASONING);
        let content = &r["messages"][1]["content"];
        assert_eq!(content[0], raw["output"]["message"]["content"][0]);
        assert_eq!(content[1], json!({"text": "I'll need to check what country you're from to answer that question."}));
        assert_eq!(content[2], raw["output"]["message"]["content"][2]);
        assert_eq!(r["messages"][2]["content"][0]["toolResult"]["toolUseId"], "tooluse_W9DaUFg4Tj2cRPpndqxWSg");
        let v = req(json!({"messages": [{"role": "assistant", "content": "a", "thinking_blocks": [{"type": "redacted_thinking", "data": "QUJD"}]}]})).unwrap();
        assert_eq!(v["messages"][0]["content"][0], json!({"reasoningContent": {"redactedContent": "QUJD"}}));
        let e = err(
            json!({"messages": [{"role": "assistant", "content": "a", "thinking_blocks": [{"type": "thinking", "thinking": "t"}]}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].thinking_blocks[0]"));
    }

    #[test]
    fn request_reasoning_effort() {
        for (effort, budget) in [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 16384)] {
            let v = req(json!({"messages": [user("x")], "reasoning_effort": effort})).unwrap();
            assert_eq!(
                v["additionalModelRequestFields"],
                json!({"thinking": {"type": "enabled", "budget_tokens": budget}})
            );
            assert_eq!(v["inferenceConfig"]["maxTokens"], budget + 4096);
        }
        let v = req(json!({"messages": [user("x")], "reasoning_effort": "low", "max_tokens": 500, "temperature": 1}))
            .unwrap();
        assert_eq!(v["inferenceConfig"], json!({"maxTokens": 2548, "temperature": 1.0}));
        let v = req(
            json!({"messages": [user("x")], "reasoning_effort": "low", "max_completion_tokens": 30000, "top_p": 0.95}),
        )
        .unwrap();
        assert_eq!(v["inferenceConfig"], json!({"maxTokens": 30000, "topP": 0.95}));
        let v = req(json!({"messages": [user("x")], "reasoning_effort": "none"})).unwrap();
        assert!(v.get("additionalModelRequestFields").is_none());
        assert_eq!(
            err(json!({"messages": [user("x")], "reasoning_effort": "low", "temperature": 0.5})).param.as_deref(),
            Some("temperature")
        );
        assert_eq!(
            err(json!({"messages": [user("x")], "reasoning_effort": "low", "top_p": 0.5})).param.as_deref(),
            Some("top_p")
        );
        assert_eq!(
            err(json!({"messages": [user("x")], "reasoning_effort": "max"})).param.as_deref(),
            Some("reasoning_effort")
        );
    }

    #[test]
    fn request_response_format() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false});
        let v = req(json!({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": true}}})).unwrap();
        let js = &v["outputConfig"]["textFormat"];
        assert_eq!(js["type"], "json_schema");
        assert_eq!(js["structure"]["jsonSchema"]["name"], "out");
        let sent: Value = serde_json::from_str(js["structure"]["jsonSchema"]["schema"].as_str().unwrap()).unwrap();
        assert_eq!(sent, schema);
        let v = req(json!({"messages": [user("x")], "response_format": {"type": "text"}})).unwrap();
        assert!(v.get("outputConfig").is_none());
        assert_eq!(
            err(json!({"messages": [user("x")], "response_format": {"type": "json_object"}})).param.as_deref(),
            Some("response_format")
        );
    }

    #[test]
    fn request_rejects_semantic_fields() {
        for (k, v) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("audio", json!({"voice": "alloy", "format": "mp3"})),
            ("modalities", json!(["text", "audio"])),
            ("prediction", json!({"type": "content", "content": "x"})),
            ("frequency_penalty", json!(0.5)),
            ("presence_penalty", json!(-1)),
            ("logit_bias", json!({"50256": -100})),
            ("functions", json!([{"name": "f"}])),
            ("web_search_options", json!({})),
            ("verbosity", json!("low")),
        ] {
            let e = err(json!({"messages": [user("x")], k: v}));
            assert_eq!((e.status, e.param.as_deref()), (400, Some(k)), "{k}");
        }
        // Neutral values and nulls pass.
        req(json!({"messages": [user("x")], "n": 1, "frequency_penalty": 0, "logit_bias": {}, "modalities": ["text"], "audio": null, "top_logprobs": 0})).unwrap();
        assert_eq!(err(json!({"messages": [user("x")], "max_tokens": 0})).param.as_deref(), Some("max_tokens"));
        assert_eq!(err(json!({"messages": [user("x")], "temperature": "hot"})).param.as_deref(), Some("temperature"));
        assert_eq!(err(json!({"messages": [user("x")], "stop": [1]})).param.as_deref(), Some("stop"));
        assert_eq!(err(json!({"messages": "x"})).param.as_deref(), Some("messages"));
        assert_eq!(request(b"[1]", &RequestOptions { model: "m", stream: false }).unwrap_err().status, 400);
    }

    // ---------- errors ----------

    #[test]
    fn error_mapping() {
        let e = error(400, ERROR_400, None);
        assert_eq!(
            (e.status, e.kind, e.message.as_str()),
            (400, "invalid_request_error", "The provided model identifier is invalid.")
        );
        let body = br#"{"message":"Too many requests, please wait before trying again."}"#;
        let e = error(429, body, Some("7"));
        assert_eq!((e.status, e.kind, e.retry_after), (429, "rate_limit_error", Some(7)));
        assert_eq!(e.message, "Too many requests, please wait before trying again.");
        assert_eq!(error(429, body, Some("1.5")).retry_after, Some(2));
        assert_eq!(error(429, body, None).retry_after, None);
        let e = error(403, br#"{"message":"The security token included in the request is invalid."}"#, None);
        assert_eq!((e.status, e.code), (502, Some("upstream_auth_failed")));
        assert!(!e.message.contains("security token") && e.message.contains("HTTP 403"), "{}", e.message);
        assert_eq!(error(401, b"", None).status, 502);
        assert_eq!(
            (error(404, br#"{"message":"Model not found"}"#, None).status, error(404, b"{}", None).kind),
            (404, "invalid_request_error")
        );
        assert_eq!(error(408, b"{}", None).status, 504);
        assert_eq!(error(413, b"{}", None).status, 413);
        assert_eq!(error(422, b"{}", None).status, 422);
        assert_eq!(
            (error(424, br#"{"message":"model crashed"}"#, None).status, error(424, b"", None).code),
            (502, Some("model_error"))
        );
        assert_eq!(error(500, br#"{"Message":"internal"}"#, None).message, "internal");
        assert_eq!(error(500, b"", None).status, 502);
        let e = error(503, br#"{"message":"Bedrock is unable to process your request."}"#, Some("3"));
        assert_eq!((e.status, e.retry_after), (503, Some(3)));
        assert_eq!(error(502, b"<html>bad gateway</html>", None).message, "<html>bad gateway</html>");
        assert_eq!(error(500, b"", None).message, "Bedrock answered HTTP 500");
        assert_eq!(error(400, &vec![b'x'; 5000], None).message.len(), 1000);
    }
}
