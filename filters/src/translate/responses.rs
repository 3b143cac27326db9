//! The OpenAI Responses API (`POST /v1/responses`) on top of Chat Completions, for providers that
//! only speak (or are translated to) Chat Completions.
//!
//! The gateway calls [`to_chat`] on the client's Responses body, sends the resulting chat body
//! through the provider's chat translator, and turns the answer back with [`from_chat`] (a whole
//! `chat.completion`) or [`stream`] (`chat.completion.chunk` SSE → the Responses event stream).
//! [`ResponsesMeta`] carries the request fields a Responses object echoes.
//!
//! # Request mapping
//!
//! | Responses | Chat Completions |
//! | --- | --- |
//! | `model` | `model` (unchanged; the gateway resolves the provider) |
//! | `instructions` | a leading `system` message |
//! | `input` string | one `user` message |
//! | `message` items (`user`/`system`/`developer`/`assistant`, string or parts) | messages; `input_text`/`output_text` → text, `input_image.image_url` → `image_url` part (user only), `refusal` → assistant text |
//! | `reasoning` item | the next assistant message's `reasoning_content` (summary and `reasoning_text` joined) |
//! | `function_call` items | `tool_calls` of one assistant message (a model turn's reasoning, text and calls merge) |
//! | `function_call_output` | a `tool` message with `tool_call_id` |
//! | `tools` (flat function tools) | `tools` (`{type:function,function:{name,description,parameters,strict}}`) |
//! | `tool_choice` (`auto`/`none`/`required`/`{type:function,name}`) | `tool_choice` |
//! | `max_output_tokens` | `max_completion_tokens` |
//! | `temperature`, `top_p`, `parallel_tool_calls`, `user` | same names |
//! | `text.format` text / json_object / json_schema | `response_format` (text → omitted) |
//! | `text.verbosity` | `verbosity` (the provider translator decides) |
//! | `reasoning.effort` | `reasoning_effort` |
//! | `stream` | `stream`, with `stream_options.include_usage: true` (the Responses stream ends with usage) |
//!
//! Rejected with a 400 naming the field: `previous_response_id`, `conversation` and
//! `item_reference` items (this gateway stores no responses, so the client must send the whole
//! conversation in `input`), `prompt` (stored prompt templates), `background: true`, built-in
//! tools (`web_search`, `file_search`, `code_interpreter`, `computer_use_preview`, `mcp`, ...)
//! and their call items, `input_image.file_id` and `input_file` (no file store), `tool_choice`
//! forms other than the four above, `top_logprobs > 0` and `include` values that ask for
//! logprobs or unknown data, and any unknown top-level field.
//!
//! Accepted but without effect, because they cannot change the answer: `store` (nothing is
//! stored whatever the value; the response echoes `store: false`), `metadata` (echoed only),
//! `service_tier`, `safety_identifier`, `prompt_cache_key`, `prompt_cache_retention`,
//! `stream_options` (obfuscation padding is never sent), `max_tool_calls` (it limits built-in
//! tools, which are rejected), `reasoning.summary` (reasoning text is returned as a summary
//! whenever the provider returns any), `include` values about built-in tools or
//! `reasoning.encrypted_content` (there is none to return). `truncation: "auto"` is accepted and
//! ignored: a request that fits the context behaves the same, one that does not gets the
//! provider's context-length error instead of silent truncation; responses echo `"disabled"`.
//!
//! `reasoning` input items may carry OpenAI's `encrypted_content`; it is dropped because only
//! OpenAI can decrypt it and no provider behind this translation produced it (a conversation
//! moved here from OpenAI keeps the readable summary).
//!
//! Signed reasoning survives a round trip: a chat answer's `thinking_blocks` (Anthropic's
//! thinking/redacted_thinking blocks with signatures, which Anthropic requires back next to
//! tool results) go into the reasoning item's `encrypted_content` as
//! `portcullis.thinking_blocks.v1:<JSON array>`, always (not only with `include`, since clients
//! replaying output items need them and the field is optional in every SDK). A reasoning item
//! sent back with such content becomes the assistant message's `thinking_blocks` (and no
//! `reasoning_content`, which would repeat the blocks' text).
//!
//! # Response mapping
//!
//! Output items, in order: a `reasoning` item (summary = `reasoning_content`) when there is
//! reasoning text, a `message` item (`output_text` part, then a `refusal` part if any) when
//! there is text or a refusal, then one `function_call` item per tool call. Item ids derive from
//! the response id (`resp_X` → `rs_X_0`, `msg_X_1`, `fc_X_2`: index = output index).
//! `finish_reason` `length` → `status: incomplete`, `incomplete_details.reason:
//! max_output_tokens`; `content_filter` → incomplete with reason `content_filter`. Usage maps
//! prompt/completion tokens to input/output tokens with cached and reasoning details.
//!
//! # Stream
//!
//! Events are those OpenAI sends, each with `sequence_number`, framed `event: <type>` +
//! `data: <json>`, and no `[DONE]`: `response.created`, `response.in_progress`, per item
//! `response.output_item.added` … `response.output_item.done` (with the content-part,
//! text/refusal/summary and function-arguments events in between), and finally
//! `response.completed` or `response.incomplete` carrying the whole response with usage, sent
//! when the chat stream's `[DONE]` arrives. An item closes when the next one starts or at the
//! finish reason. Tool-call deltas must arrive call by call (as every chat translator here emits
//! them); a delta for an already closed call is an upstream protocol error.
//!
//! Failures (a chat `data: {"error":{...}}` event, a chunk that is not JSON, an SSE framing
//! error, the body ending before `[DONE]`, or the output outgrowing its bound) produce OpenAI's
//! mid-stream failure sequence: an `error` event then `response.failed`, after which input is
//! ignored. `feed` and `finish` still return `Ok`: the failure is already in the Responses
//! stream, so the gateway just ends the body.
//!
//! Memory: one SSE event (`max_event`) plus the accumulated output, which `response.completed`
//! must repeat whole; the output's text and arguments are bounded by `max_event` too, beyond
//! which the stream fails with `response_too_large`.

use super::unsupported;
use crate::sse::{write_event, Event, SseReader};
use crate::usage::{self, Usage};
use crate::ApiError;
use serde_json::{json, Map, Value};

/// A Responses request turned into a Chat Completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatFromResponses {
    pub chat_body: Vec<u8>,
    /// The Responses request's `model`, as given.
    pub model: String,
    pub stream: bool,
    pub meta: ResponsesMeta,
}

/// The request fields a Responses object echoes (as the client sent them, in Responses form).
/// `Value::Null` means "not sent"; the response then shows OpenAI's neutral default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResponsesMeta {
    pub model: String,
    /// String or null.
    pub instructions: Value,
    /// Responses-form tools array, or null.
    pub tools: Value,
    pub tool_choice: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub max_output_tokens: Value,
    pub max_tool_calls: Value,
    /// `{"format": {...}, "verbosity": ...}`, or null.
    pub text: Value,
    /// `{"effort": ..., "summary": ...}`, or null.
    pub reasoning: Value,
    pub metadata: Value,
    pub user: Value,
    pub parallel_tool_calls: Option<bool>,
}

/// Top-level request fields this translation knows; anything else is a 400.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_output_tokens",
    "text",
    "reasoning",
    "parallel_tool_calls",
    "user",
    "stream",
    "stream_options",
    "store",
    "metadata",
    "include",
    "truncation",
    "background",
    "previous_response_id",
    "conversation",
    "prompt",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "top_logprobs",
    "max_tool_calls",
];

/// `include` values that ask for nothing this translation could return differently.
const SAFE_INCLUDES: &[&str] = &[
    "reasoning.encrypted_content",
    "web_search_call.results",
    "web_search_call.action.sources",
    "file_search_call.results",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "message.input_image.image_url",
];

const WHO: &str = "a provider without the Responses API";
const NO_STORE: &str = "this gateway does not store responses or conversations; send the whole conversation in `input`";

fn reject(param: &str, why: &str) -> ApiError {
    unsupported(param, WHO, why)
}

fn invalid(param: &str, why: &str) -> ApiError {
    ApiError::bad_request("invalid_value", format!("`{param}` {why}")).with_param(param)
}

/// A field that is present and not null.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(&join(at, key), "must be a string")),
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, ApiError> {
    str_field(obj, key, at)?.ok_or_else(|| invalid(&join(at, key), "is required"))
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(key, "must be a boolean")),
    }
}

fn number_field(obj: &Map<String, Value>, key: &str) -> Result<Option<Value>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(invalid(key, "must be a number")),
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Translate a Responses request body into a Chat Completions body.
pub fn to_chat(body: &[u8]) -> Result<ChatFromResponses, ApiError> {
    let req = super::parse_object(body)?;
    if let Some(k) = req.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(reject(k, "this Responses field has no Chat Completions equivalent"));
    }
    for key in ["previous_response_id", "conversation"] {
        if field(&req, key).is_some() {
            return Err(reject(key, NO_STORE));
        }
    }
    if field(&req, "prompt").is_some() {
        return Err(reject("prompt", "stored prompt templates live on OpenAI; send the prompt text in `input`"));
    }
    if bool_field(&req, "background")? == Some(true) {
        return Err(reject(
            "background",
            "background responses need a stored response to poll; this gateway stores none",
        ));
    }
    bool_field(&req, "store")?;
    match field(&req, "top_logprobs") {
        None => {}
        Some(v) if v.as_u64() == Some(0) => {}
        Some(_) => return Err(reject("top_logprobs", "log probabilities cannot be translated")),
    }
    if let Some(inc) = field(&req, "include") {
        let list = inc.as_array().ok_or_else(|| invalid("include", "must be an array of strings"))?;
        for v in list {
            match v.as_str() {
                Some(s) if SAFE_INCLUDES.contains(&s) => {}
                Some(s) => return Err(reject("include", &format!("`{s}` cannot be returned by this translation"))),
                None => return Err(invalid("include", "must be an array of strings")),
            }
        }
    }
    match str_field(&req, "truncation", "")? {
        None | Some("auto") | Some("disabled") => {}
        Some(_) => return Err(invalid("truncation", "must be `auto` or `disabled`")),
    }
    let model = required_str(&req, "model", "")?.to_string();
    if model.is_empty() {
        return Err(invalid("model", "is required"));
    }
    let stream = bool_field(&req, "stream")?.unwrap_or(false);

    let mut meta = ResponsesMeta { model: model.clone(), ..Default::default() };
    let mut messages = Vec::new();
    if let Some(instr) = str_field(&req, "instructions", "")? {
        meta.instructions = json!(instr);
        messages.push(json!({"role": "system", "content": instr}));
    }
    match field(&req, "input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => convert_input(items, &mut messages)?,
        Some(_) => return Err(invalid("input", "must be a string or an array of input items")),
        None => return Err(invalid("input", "is required (this gateway stores no earlier responses)")),
    }
    if messages.is_empty() {
        return Err(invalid("input", "must contain at least one message"));
    }

    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = field(&req, "tools") {
        let converted = convert_tools(tools)?;
        if !converted.is_empty() {
            chat.insert("tools".into(), Value::Array(converted));
        }
        meta.tools = tools.clone();
    }
    if let Some(tc) = field(&req, "tool_choice") {
        chat.insert("tool_choice".into(), convert_tool_choice(tc)?);
        meta.tool_choice = tc.clone();
    }
    if let Some(v) = number_field(&req, "temperature")? {
        chat.insert("temperature".into(), v.clone());
        meta.temperature = v;
    }
    if let Some(v) = number_field(&req, "top_p")? {
        chat.insert("top_p".into(), v.clone());
        meta.top_p = v;
    }
    if let Some(v) = field(&req, "max_output_tokens") {
        let n = v.as_u64().ok_or_else(|| invalid("max_output_tokens", "must be a positive integer"))?;
        chat.insert("max_completion_tokens".into(), json!(n));
        meta.max_output_tokens = json!(n);
    }
    if let Some(v) = field(&req, "max_tool_calls") {
        meta.max_tool_calls = v.clone();
    }
    if let Some(text) = field(&req, "text") {
        let text_obj = text.as_object().ok_or_else(|| invalid("text", "must be an object"))?;
        if let Some(format) = field(text_obj, "format") {
            if let Some(rf) = convert_format(format)? {
                chat.insert("response_format".into(), rf);
            }
        }
        if let Some(verbosity) = str_field(text_obj, "verbosity", "text")? {
            chat.insert("verbosity".into(), json!(verbosity));
        }
        meta.text = text.clone();
    }
    if let Some(reasoning) = field(&req, "reasoning") {
        let r = reasoning.as_object().ok_or_else(|| invalid("reasoning", "must be an object"))?;
        if let Some(effort) = str_field(r, "effort", "reasoning")? {
            chat.insert("reasoning_effort".into(), json!(effort));
        }
        let summary = field(r, "summary").or_else(|| field(r, "generate_summary")).cloned().unwrap_or(Value::Null);
        meta.reasoning = json!({"effort": field(r, "effort").cloned().unwrap_or(Value::Null), "summary": summary});
    }
    if let Some(p) = bool_field(&req, "parallel_tool_calls")? {
        chat.insert("parallel_tool_calls".into(), json!(p));
        meta.parallel_tool_calls = Some(p);
    }
    if let Some(user) = str_field(&req, "user", "")? {
        chat.insert("user".into(), json!(user));
        meta.user = json!(user);
    }
    if let Some(md) = field(&req, "metadata") {
        if !md.is_object() {
            return Err(invalid("metadata", "must be an object"));
        }
        meta.metadata = md.clone();
    }
    if stream {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let chat_body = serde_json::to_vec(&Value::Object(chat)).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(ChatFromResponses { chat_body, model, stream, meta })
}

/// Input items → chat messages. A model turn (reasoning, assistant text, function calls in a
/// row) becomes one assistant message, as Chat Completions represents it.
fn convert_input(items: &[Value], out: &mut Vec<Value>) -> Result<(), ApiError> {
    // Index in `out` of the assistant message the current model turn merges into.
    let mut turn: Option<usize> = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let obj = item.as_object().ok_or_else(|| invalid(&at, "must be an object"))?;
        let kind = match str_field(obj, "type", &at)? {
            Some(t) => t,
            None if obj.contains_key("role") => "message",
            None => return Err(invalid(&join(&at, "type"), "is required")),
        };
        match kind {
            "message" => {
                let role = required_str(obj, "role", &at)?;
                match role {
                    "assistant" => {
                        let text = assistant_text(field(obj, "content"), &at)?;
                        let idx = match turn {
                            Some(t)
                                if out
                                    .get(t)
                                    .is_some_and(|m| m.get("content").is_none() && m.get("tool_calls").is_none()) =>
                            {
                                t
                            }
                            _ => new_assistant(out),
                        };
                        set(out, idx, "content", json!(text));
                        turn = Some(idx);
                    }
                    "user" | "system" | "developer" => {
                        turn = None;
                        let content = message_content(field(obj, "content"), role, &at)?;
                        out.push(json!({"role": role, "content": content}));
                    }
                    _ => return Err(invalid(&join(&at, "role"), "must be user, assistant, system or developer")),
                }
            }
            "function_call" => {
                let call_id = required_str(obj, "call_id", &at)?;
                let name = required_str(obj, "name", &at)?;
                let arguments = str_field(obj, "arguments", &at)?.unwrap_or("{}");
                let idx = match turn {
                    Some(t) => t,
                    None => new_assistant(out),
                };
                let call =
                    json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                if let Some(Value::Object(m)) = out.get_mut(idx) {
                    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                        calls.push(call);
                    } else {
                        m.insert("tool_calls".into(), json!([call]));
                    }
                }
                turn = Some(idx);
            }
            "function_call_output" => {
                turn = None;
                let call_id = required_str(obj, "call_id", &at)?;
                let output = tool_output(field(obj, "output"), &at)?;
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            "reasoning" => {
                let text = reasoning_text(obj, &at)?;
                let blocks = our_blocks(obj);
                if text.is_empty() && blocks.is_empty() {
                    // Encrypted-only reasoning (OpenAI's): nothing a provider here can use.
                    continue;
                }
                let idx = match turn {
                    Some(t)
                        if out.get(t).is_some_and(|m| m.get("content").is_none() && m.get("tool_calls").is_none()) =>
                    {
                        t
                    }
                    _ => new_assistant(out),
                };
                if blocks.is_empty() {
                    let joined = match out.get(idx).and_then(|m| m.get("reasoning_content")).and_then(Value::as_str) {
                        Some(prev) => format!("{prev}\n\n{text}"),
                        None => text,
                    };
                    set(out, idx, "reasoning_content", json!(joined));
                } else if let Some(Value::Object(m)) = out.get_mut(idx) {
                    // The signed blocks already hold the thinking text; sending the summary too
                    // would repeat it.
                    if let Some(Value::Array(prev)) = m.get_mut("thinking_blocks") {
                        prev.extend(blocks);
                    } else {
                        m.insert("thinking_blocks".into(), Value::Array(blocks));
                    }
                }
                turn = Some(idx);
            }
            "item_reference" => return Err(reject(&at, NO_STORE)),
            other => {
                return Err(reject(
                    &join(&at, "type"),
                    &format!(
                        "`{other}` items belong to OpenAI's built-in tools, which this translation does not offer"
                    ),
                ))
            }
        }
    }
    // An assistant message created for reasoning alone still needs a `content` member.
    for m in out.iter_mut() {
        if let Value::Object(m) = m {
            if m.get("role").and_then(Value::as_str) == Some("assistant") && !m.contains_key("content") {
                m.insert("content".into(), Value::Null);
            }
        }
    }
    Ok(())
}

fn new_assistant(out: &mut Vec<Value>) -> usize {
    out.push(json!({"role": "assistant"}));
    out.len() - 1
}

fn set(out: &mut [Value], idx: usize, key: &str, value: Value) {
    if let Some(Value::Object(m)) = out.get_mut(idx) {
        m.insert(key.into(), value);
    }
}

/// An assistant message's content as one string (Chat Completions assistant turns are text).
fn assistant_text(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let pat = format!("{at}.content[{j}]");
                let p = part.as_object().ok_or_else(|| invalid(&pat, "must be an object"))?;
                match str_field(p, "type", &pat)? {
                    Some("output_text") | Some("input_text") | Some("text") => {
                        text.push_str(required_str(p, "text", &pat)?)
                    }
                    Some("refusal") => text.push_str(required_str(p, "refusal", &pat)?),
                    _ => return Err(reject(&join(&pat, "type"), "assistant content must be text or refusal parts")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(invalid(&join(at, "content"), "must be a string or an array of content parts")),
    }
}

/// A user/system/developer message's content: a string, or chat content parts (images only in
/// user messages, as Chat Completions allows).
fn message_content(content: Option<&Value>, role: &str, at: &str) -> Result<Value, ApiError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(json!(s)),
        Some(Value::Array(parts)) => parts,
        _ => return Err(invalid(&join(at, "content"), "must be a string or an array of content parts")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let pat = format!("{at}.content[{j}]");
        let p = part.as_object().ok_or_else(|| invalid(&pat, "must be an object"))?;
        match str_field(p, "type", &pat)? {
            Some("input_text") | Some("output_text") | Some("text") => {
                out.push(json!({"type": "text", "text": required_str(p, "text", &pat)?}))
            }
            Some("input_image") => {
                if role != "user" {
                    return Err(reject(&pat, "Chat Completions accepts images only in user messages"));
                }
                if field(p, "file_id").is_some() {
                    return Err(reject(
                        &join(&pat, "file_id"),
                        "this gateway has no file store; send the image as a data URL or https URL in `image_url`",
                    ));
                }
                let url = required_str(p, "image_url", &pat)?;
                let mut image = json!({"url": url});
                if let Some(detail) = str_field(p, "detail", &pat)? {
                    image["detail"] = json!(detail);
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some("input_file") => {
                return Err(reject(&pat, "file inputs cannot be translated to Chat Completions for this provider"))
            }
            Some(other) => {
                return Err(reject(&join(&pat, "type"), &format!("`{other}` content parts cannot be translated")))
            }
            None => return Err(invalid(&join(&pat, "type"), "is required")),
        }
    }
    match out.as_slice() {
        [one] if one.get("type").and_then(Value::as_str) == Some("text") => {
            Ok(one.get("text").cloned().unwrap_or_default())
        }
        _ => Ok(Value::Array(out)),
    }
}

/// A `function_call_output.output`: a string, or text parts (joined; chat tool messages are text).
fn tool_output(output: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match output {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let pat = format!("{at}.output[{j}]");
                let p = part.as_object().ok_or_else(|| invalid(&pat, "must be an object"))?;
                match str_field(p, "type", &pat)? {
                    Some("input_text") | Some("output_text") | Some("text") => {
                        text.push_str(required_str(p, "text", &pat)?)
                    }
                    _ => return Err(reject(&pat, "tool results can only carry text through Chat Completions")),
                }
            }
            Ok(text)
        }
        _ => Err(invalid(&join(at, "output"), "is required (a string or text parts)")),
    }
}

/// The thinking blocks of a reasoning item this gateway produced (see [`BLOCKS_PREFIX`]); none
/// for anything else, such as OpenAI's own encrypted content.
fn our_blocks(obj: &Map<String, Value>) -> Vec<Value> {
    obj.get("encrypted_content")
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix(BLOCKS_PREFIX))
        .and_then(|json| serde_json::from_str::<Vec<Value>>(json).ok())
        .unwrap_or_default()
}

/// A reasoning item's readable text: its summary parts, then its `reasoning_text` content.
fn reasoning_text(obj: &Map<String, Value>, at: &str) -> Result<String, ApiError> {
    let mut texts = Vec::new();
    for key in ["summary", "content"] {
        match field(obj, key) {
            None => {}
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("text").and_then(Value::as_str) {
                        Some(t) if !t.is_empty() => texts.push(t.to_string()),
                        Some(_) => {}
                        None => return Err(invalid(&join(at, key), "parts must carry `text`")),
                    }
                }
            }
            Some(_) => return Err(invalid(&join(at, key), "must be an array")),
        }
    }
    Ok(texts.join("\n\n"))
}

fn convert_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let list = tools.as_array().ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let t = tool.as_object().ok_or_else(|| invalid(&at, "must be an object"))?;
        match required_str(t, "type", &at)? {
            "function" => {
                let mut f = Map::new();
                f.insert("name".into(), json!(required_str(t, "name", &at)?));
                for key in ["description", "parameters", "strict"] {
                    if let Some(v) = field(t, key) {
                        f.insert(key.into(), v.clone());
                    }
                }
                out.push(json!({"type": "function", "function": f}));
            }
            other => {
                return Err(reject(
                    &at,
                    &format!("the built-in tool `{other}` runs only on OpenAI's own Responses API; declare a function tool instead"),
                ))
            }
        }
    }
    Ok(out)
}

fn convert_tool_choice(tc: &Value) -> Result<Value, ApiError> {
    match tc {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(tc.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = required_str(o, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(reject(
            "tool_choice",
            "only auto, none, required and {\"type\":\"function\",\"name\":...} can be translated",
        )),
    }
}

/// `text.format` → `response_format` (`None` for plain text, the default).
fn convert_format(format: &Value) -> Result<Option<Value>, ApiError> {
    let f = format.as_object().ok_or_else(|| invalid("text.format", "must be an object"))?;
    match required_str(f, "type", "text.format")? {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let mut js = Map::new();
            js.insert("name".into(), json!(required_str(f, "name", "text.format")?));
            let schema = field(f, "schema").ok_or_else(|| invalid("text.format.schema", "is required"))?;
            js.insert("schema".into(), schema.clone());
            for key in ["strict", "description"] {
                if let Some(v) = field(f, key) {
                    js.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        other => Err(reject("text.format.type", &format!("`{other}` has no Chat Completions equivalent"))),
    }
}

/// Ids of the response's items, derived from the response id so they are unique per response
/// and reproducible in tests.
fn item_id(prefix: &str, response_id: &str, index: usize) -> String {
    let suffix = response_id.strip_prefix("resp_").unwrap_or(response_id);
    format!("{prefix}_{suffix}_{index}")
}

/// The Responses `usage` object.
fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    })
}

/// Response status and `incomplete_details.reason` for a chat finish reason.
fn status_for(finish: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some(super::finish::LENGTH) => ("incomplete", Some("max_output_tokens")),
        Some(super::finish::CONTENT_FILTER) => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

/// How a response ended, for [`response_object`].
struct Outcome<'a> {
    status: &'a str,
    incomplete: Option<&'a str>,
    error: Value,
    model: &'a str,
    output: &'a [Value],
    usage: Option<&'a Usage>,
}

fn or_default(v: &Value, default: Value) -> Value {
    if v.is_null() {
        default
    } else {
        v.clone()
    }
}

/// The `response` object, echoing the request fields the SDK's `Response` model carries.
fn response_object(meta: &ResponsesMeta, id: &str, created: u64, o: &Outcome<'_>) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": o.status,
        "background": false,
        "error": o.error,
        "incomplete_details": o.incomplete.map(|r| json!({"reason": r})),
        "instructions": meta.instructions,
        "max_output_tokens": meta.max_output_tokens,
        "max_tool_calls": meta.max_tool_calls,
        "model": o.model,
        "output": o.output,
        "parallel_tool_calls": meta.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": null,
        "reasoning": or_default(&meta.reasoning, json!({"effort": null, "summary": null})),
        "store": false,
        "temperature": meta.temperature,
        "text": or_default(&meta.text, json!({"format": {"type": "text"}})),
        "tool_choice": or_default(&meta.tool_choice, json!("auto")),
        "tools": or_default(&meta.tools, json!([])),
        "top_p": meta.top_p,
        "truncation": "disabled",
        "usage": o.usage.map(usage_json),
        "user": meta.user,
        "metadata": or_default(&meta.metadata, json!({})),
    })
}

/// Prefix of the `encrypted_content` this gateway writes: the provider's signed reasoning blocks
/// (the chat message's `thinking_blocks`, e.g. Anthropic's thinking with its signature), opaque to
/// the client, so that the next turn can send them back as the provider requires around tool use.
const BLOCKS_PREFIX: &str = "portcullis.thinking_blocks.v1:";

fn reasoning_item(id: &str, text: &str, blocks: &[Value]) -> Value {
    let summary = if text.is_empty() { json!([]) } else { json!([{"type": "summary_text", "text": text}]) };
    let mut item = json!({"id": id, "type": "reasoning", "summary": summary});
    if !blocks.is_empty() {
        item["encrypted_content"] = json!(format!("{BLOCKS_PREFIX}{}", Value::Array(blocks.to_vec())));
    }
    item
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

fn part_value(kind: PartKind, text: &str) -> Value {
    match kind {
        PartKind::Text => text_part(text),
        PartKind::Refusal => refusal_part(text),
    }
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn function_call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

fn upstream_invalid(why: impl Into<String>) -> ApiError {
    ApiError::bad_gateway("invalid_upstream_response", why)
}

/// A whole `chat.completion` body → a Responses `response` object.
pub fn from_chat(
    completion: &[u8],
    meta: &ResponsesMeta,
    response_id: &str,
    created: u64,
) -> Result<Vec<u8>, ApiError> {
    let v: Value = serde_json::from_slice(completion)
        .map_err(|e| upstream_invalid(format!("the chat completion to translate is not JSON: {e}")))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| upstream_invalid("the chat completion to translate has no choices"))?;
    let msg = choice
        .get("message")
        .and_then(Value::as_object)
        .ok_or_else(|| upstream_invalid("the chat completion has no message"))?;
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let (status, incomplete) = status_for(finish);
    let item_status = if incomplete.is_some() { "incomplete" } else { "completed" };
    let model = v.get("model").and_then(Value::as_str).unwrap_or(&meta.model);
    let usage = usage::from_openai_body(completion);

    let text_of = |key: &str| msg.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut output = Vec::new();
    let blocks = msg.get("thinking_blocks").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let reasoning = text_of("reasoning_content");
    if reasoning.is_some() || !blocks.is_empty() {
        output.push(reasoning_item(&item_id("rs", response_id, output.len()), reasoning.unwrap_or_default(), blocks));
    }
    let mut parts = Vec::new();
    if let Some(t) = text_of("content") {
        parts.push(text_part(t));
    }
    if let Some(r) = text_of("refusal") {
        parts.push(refusal_part(r));
    }
    if !parts.is_empty() {
        output.push(message_item(&item_id("msg", response_id, output.len()), item_status, parts));
    }
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function");
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
            let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default();
            let call_id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let id = item_id("fc", response_id, output.len());
            output.push(function_call_item(&id, "completed", call_id, name, args));
        }
    }
    let outcome = Outcome { status, incomplete, error: Value::Null, model, output: &output, usage: usage.as_ref() };
    let body = response_object(meta, response_id, created, &outcome);
    serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))
}

/// The kind of the message content part being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Text,
    Refusal,
}

/// The output item being streamed (items stream one after another, as OpenAI sends them).
#[derive(Debug)]
enum Open {
    None,
    /// `summary`: the summary part was announced (not for signed blocks without text).
    Reasoning {
        id: String,
        index: usize,
        text: String,
        summary: bool,
        blocks: Vec<Value>,
    },
    Message {
        id: String,
        index: usize,
        parts: Vec<Value>,
        part: Option<(PartKind, String)>,
    },
    Call {
        id: String,
        index: usize,
        chat_index: u64,
        call_id: String,
        name: String,
        args: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing written yet (`response.created` goes out with the first upstream event).
    Waiting,
    Running,
    /// `response.completed`/`incomplete`/`failed` written; further input is ignored.
    Ended,
}

/// Why a stream failed, as the OpenAI error object `{type, code, message, param}`.
#[derive(Debug)]
struct Failure(Value);

impl Failure {
    fn api(e: &ApiError) -> Self {
        Failure(json!({"type": e.kind, "code": e.code, "message": e.message, "param": e.param}))
    }

    /// From a chat stream's `{"error": {...}}` event (the gateway's `stream_error_event`, or an
    /// OpenAI-wire upstream's own).
    fn chat(err: &Value) -> Self {
        let s = |k: &str| err.get(k).and_then(Value::as_str).map_or(Value::Null, |v| json!(v));
        let message = err.get("message").and_then(Value::as_str).unwrap_or("the upstream stream failed");
        let kind = err.get("type").and_then(Value::as_str).unwrap_or("api_error");
        Failure(json!({"type": kind, "code": s("code"), "message": message, "param": s("param")}))
    }
}

fn str_or_empty(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or_default()
}

/// Chat Completions chunk SSE → Responses event stream. See the module docs.
#[derive(Debug)]
pub struct ResponsesStream {
    reader: SseReader,
    state: State,
}

#[derive(Debug)]
struct State {
    meta: ResponsesMeta,
    id: String,
    created: u64,
    model: String,
    /// Bound on the accumulated output (text, arguments, ids), in bytes.
    limit: usize,
    size: usize,
    seq: u64,
    phase: Phase,
    /// Closed output items, repeated in the final response.
    output: Vec<Value>,
    open: Open,
    /// Chat tool-call indexes already opened, to detect interleaved deltas.
    calls_seen: Vec<u64>,
    finish: Option<String>,
    usage: Option<Usage>,
}

/// A Responses event stream for one response. `max_event` bounds one upstream SSE event and
/// the accumulated output.
pub fn stream(meta: ResponsesMeta, response_id: &str, created: u64, max_event: usize) -> ResponsesStream {
    ResponsesStream {
        reader: SseReader::new(max_event),
        state: State {
            model: meta.model.clone(),
            meta,
            id: response_id.to_string(),
            created,
            limit: max_event,
            size: 0,
            seq: 0,
            phase: Phase::Waiting,
            output: Vec::new(),
            open: Open::None,
            calls_seen: Vec::new(),
            finish: None,
            usage: None,
        },
    }
}

impl ResponsesStream {
    /// End the stream with OpenAI's failure sequence (`error`, `response.failed`), for an error
    /// the gateway got outside the chat bytes (e.g. from the provider translator's `feed`).
    /// Does nothing once the stream has ended.
    pub fn fail(&mut self, err: &ApiError, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Ended {
            self.state.fail(out, Failure::api(err));
        }
    }
}

impl super::StreamTranscoder for ResponsesStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        if self.state.phase == Phase::Ended {
            return Ok(());
        }
        let state = &mut self.state;
        if let Err(e) = self.reader.feed(chunk, &mut |ev| state.on_event(ev, out)) {
            state.fail(out, Failure::api(&upstream_invalid(e.to_string())));
        }
        if state.phase == Phase::Ended {
            // Nothing more will be read: release the partial event.
            self.reader = SseReader::new(0);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        if self.state.phase == Phase::Ended {
            return Ok(());
        }
        let state = &mut self.state;
        if let Err(e) = self.reader.finish(&mut |ev| state.on_event(ev, out)) {
            state.fail(out, Failure::api(&upstream_invalid(e.to_string())));
        }
        if state.phase != Phase::Ended {
            let err = upstream_invalid("the upstream stream ended before the response was complete");
            state.fail(out, Failure::api(&err));
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.state.usage
    }
}

impl State {
    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut v: Value) {
        if let Value::Object(m) = &mut v {
            m.insert("type".into(), json!(kind));
            m.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        write_event(out, Some(kind), &serde_json::to_string(&v).unwrap_or_default());
    }

    fn response(&self, status: &str, incomplete: Option<&str>, error: Value) -> Value {
        let usage = if status == "in_progress" { None } else { self.usage.as_ref() };
        let outcome = Outcome { status, incomplete, error, model: &self.model, output: &self.output, usage };
        response_object(&self.meta, &self.id, self.created, &outcome)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.phase != Phase::Waiting {
            return;
        }
        self.phase = Phase::Running;
        let r = self.response("in_progress", None, Value::Null);
        self.emit(out, "response.created", json!({"response": r}));
        let r = self.response("in_progress", None, Value::Null);
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn on_event(&mut self, ev: Event, out: &mut Vec<u8>) {
        if self.phase == Phase::Ended {
            return;
        }
        if let Err(f) = self.on_data(&ev.data, out) {
            self.fail(out, f);
        }
    }

    fn on_data(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), Failure> {
        if data == "[DONE]" {
            self.start(out);
            self.complete(out);
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| Failure::api(&upstream_invalid("an upstream chat stream chunk is not JSON")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(Failure::chat(err));
        }
        if self.phase == Phase::Waiting {
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                self.model = m.to_string();
            }
        }
        self.start(out);
        if v.get("usage").is_some_and(Value::is_object) {
            self.usage = usage::from_openai_body(data.as_bytes());
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return Ok(());
        };
        if let Some(delta) = choice.get("delta") {
            let text = |k: &str| delta.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
            if let Some(t) = text("reasoning_content") {
                self.reasoning_delta(out, t)?;
            }
            if let Some(blocks) = delta.get("thinking_blocks").and_then(Value::as_array) {
                self.thinking_blocks(out, blocks)?;
            }
            if let Some(t) = text("content") {
                self.message_delta(out, PartKind::Text, t)?;
            }
            if let Some(t) = text("refusal") {
                self.message_delta(out, PartKind::Refusal, t)?;
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let f = call.get("function");
                    let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let (id, name) = (str_or_empty(call.get("id")), str_or_empty(f.and_then(|f| f.get("name"))));
                    let args = str_or_empty(f.and_then(|f| f.get("arguments")));
                    self.tool_delta(out, chat_index, id, name, args)?;
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_string());
            self.close(out);
        }
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<(), Failure> {
        self.size = self.size.saturating_add(n);
        if self.size > self.limit {
            let msg =
                format!("the response exceeds the gateway's limit of {} bytes for one streamed response", self.limit);
            return Err(Failure::api(&ApiError::bad_gateway("response_too_large", msg)));
        }
        Ok(())
    }

    fn item_status(&self) -> &'static str {
        match status_for(self.finish.as_deref()) {
            (_, Some(_)) => "incomplete",
            _ => "completed",
        }
    }

    /// Make sure a reasoning item is open (closing any other item).
    fn open_reasoning(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        if matches!(self.open, Open::Reasoning { .. }) {
            return Ok(());
        }
        self.close(out);
        let index = self.output.len();
        let id = item_id("rs", &self.id, index);
        self.grow(id.len())?;
        let item = json!({"id": id, "type": "reasoning", "summary": []});
        self.emit(out, "response.output_item.added", json!({"output_index": index, "item": item}));
        self.open = Open::Reasoning { id, index, text: String::new(), summary: false, blocks: Vec::new() };
        Ok(())
    }

    fn reasoning_delta(&mut self, out: &mut Vec<u8>, t: &str) -> Result<(), Failure> {
        self.grow(t.len())?;
        self.open_reasoning(out)?;
        let Open::Reasoning { id, index, summary, .. } = &mut self.open else {
            return Ok(());
        };
        let (id, index) = (id.clone(), *index);
        if !std::mem::replace(summary, true) {
            let part = json!({"type": "summary_text", "text": ""});
            let ev = json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part});
            self.emit(out, "response.reasoning_summary_part.added", ev);
        }
        if let Open::Reasoning { text, .. } = &mut self.open {
            text.push_str(t);
        }
        let ev = json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": t});
        self.emit(out, "response.reasoning_summary_text.delta", ev);
        Ok(())
    }

    /// Signed thinking blocks (a chat delta's `thinking_blocks`): kept for the reasoning item's
    /// `encrypted_content`, sent when the item closes.
    fn thinking_blocks(&mut self, out: &mut Vec<u8>, new: &[Value]) -> Result<(), Failure> {
        self.grow(Value::Array(new.to_vec()).to_string().len())?;
        self.open_reasoning(out)?;
        if let Open::Reasoning { blocks, .. } = &mut self.open {
            blocks.extend_from_slice(new);
        }
        Ok(())
    }

    fn message_delta(&mut self, out: &mut Vec<u8>, kind: PartKind, t: &str) -> Result<(), Failure> {
        self.grow(t.len())?;
        if !matches!(self.open, Open::Message { .. }) {
            self.close(out);
            let index = self.output.len();
            let id = item_id("msg", &self.id, index);
            self.grow(id.len())?;
            let item = message_item(&id, "in_progress", Vec::new());
            self.emit(out, "response.output_item.added", json!({"output_index": index, "item": item}));
            self.open = Open::Message { id, index, parts: Vec::new(), part: None };
        }
        let Open::Message { id, index, parts, part } = &mut self.open else {
            return Ok(());
        };
        let (id, index) = (id.clone(), *index);
        if part.as_ref().map(|p| p.0) != Some(kind) {
            if let Some((prev, text)) = part.take() {
                let content_index = parts.len();
                parts.push(part_value(prev, &text));
                self.part_done(out, &id, index, content_index, prev, text);
            }
            let Open::Message { parts, part, .. } = &mut self.open else {
                return Ok(());
            };
            *part = Some((kind, String::new()));
            let content_index = parts.len();
            let empty = part_value(kind, "");
            let ev = json!({"item_id": id, "output_index": index, "content_index": content_index, "part": empty});
            self.emit(out, "response.content_part.added", ev);
        }
        let Open::Message { parts, part: Some((_, text)), .. } = &mut self.open else {
            return Ok(());
        };
        text.push_str(t);
        let content_index = parts.len();
        match kind {
            PartKind::Text => {
                let ev = json!({"item_id": id, "output_index": index, "content_index": content_index, "delta": t, "logprobs": []});
                self.emit(out, "response.output_text.delta", ev);
            }
            PartKind::Refusal => {
                let ev = json!({"item_id": id, "output_index": index, "content_index": content_index, "delta": t});
                self.emit(out, "response.refusal.delta", ev);
            }
        }
        Ok(())
    }

    /// The `.done` events of one content part.
    fn part_done(
        &mut self,
        out: &mut Vec<u8>,
        id: &str,
        index: usize,
        content_index: usize,
        kind: PartKind,
        text: String,
    ) {
        let part = part_value(kind, &text);
        match kind {
            PartKind::Text => {
                let ev = json!({"item_id": id, "output_index": index, "content_index": content_index, "text": text, "logprobs": []});
                self.emit(out, "response.output_text.done", ev);
            }
            PartKind::Refusal => {
                let ev = json!({"item_id": id, "output_index": index, "content_index": content_index, "refusal": text});
                self.emit(out, "response.refusal.done", ev);
            }
        }
        let ev = json!({"item_id": id, "output_index": index, "content_index": content_index, "part": part});
        self.emit(out, "response.content_part.done", ev);
    }

    fn tool_delta(
        &mut self,
        out: &mut Vec<u8>,
        chat_index: u64,
        id: &str,
        name: &str,
        args: &str,
    ) -> Result<(), Failure> {
        let is_open = matches!(&self.open, Open::Call { chat_index: c, .. } if *c == chat_index);
        if !is_open {
            if self.calls_seen.contains(&chat_index) {
                let msg =
                    "the upstream chat stream interleaved tool-call deltas, which a Responses stream cannot carry";
                return Err(Failure::api(&upstream_invalid(msg)));
            }
            self.close(out);
            self.calls_seen.push(chat_index);
            let index = self.output.len();
            let fc = item_id("fc", &self.id, index);
            let call_id = if id.is_empty() { item_id("call", &self.id, index) } else { id.to_string() };
            self.grow(fc.len() + call_id.len() + name.len() + 8)?;
            let item = function_call_item(&fc, "in_progress", &call_id, name, "");
            self.emit(out, "response.output_item.added", json!({"output_index": index, "item": item}));
            self.open = Open::Call { id: fc, index, chat_index, call_id, name: name.to_string(), args: String::new() };
        }
        if args.is_empty() {
            return Ok(());
        }
        self.grow(args.len())?;
        let Open::Call { id, index, args: acc, .. } = &mut self.open else {
            return Ok(());
        };
        acc.push_str(args);
        let ev = json!({"item_id": id, "output_index": index, "delta": args});
        self.emit(out, "response.function_call_arguments.delta", ev);
        Ok(())
    }

    /// Close the open item: its `.done` events, then keep it for the final response.
    fn close(&mut self, out: &mut Vec<u8>) {
        let status = self.item_status();
        let item = match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Reasoning { id, index, text, summary, blocks } => {
                if summary {
                    let ev = json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text});
                    self.emit(out, "response.reasoning_summary_text.done", ev);
                    let part = json!({"type": "summary_text", "text": text});
                    let ev = json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part});
                    self.emit(out, "response.reasoning_summary_part.done", ev);
                }
                (index, reasoning_item(&id, &text, &blocks))
            }
            Open::Message { id, index, mut parts, part } => {
                if let Some((kind, text)) = part {
                    let content_index = parts.len();
                    parts.push(part_value(kind, &text));
                    self.part_done(out, &id, index, content_index, kind, text);
                }
                (index, message_item(&id, status, parts))
            }
            Open::Call { id, index, call_id, name, args, .. } => {
                let ev = json!({"item_id": id, "output_index": index, "arguments": args, "name": name});
                self.emit(out, "response.function_call_arguments.done", ev);
                (index, function_call_item(&id, status, &call_id, &name, &args))
            }
        };
        let (index, item) = item;
        self.emit(out, "response.output_item.done", json!({"output_index": index, "item": item}));
        self.output.push(item);
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        let (status, incomplete) = status_for(self.finish.as_deref());
        let kind = if incomplete.is_some() { "response.incomplete" } else { "response.completed" };
        let r = self.response(status, incomplete, Value::Null);
        self.emit(out, kind, json!({"response": r}));
        self.phase = Phase::Ended;
    }

    /// OpenAI's mid-stream failure: an `error` event (the SDKs raise from it), then
    /// `response.failed` with the error in the response's own code vocabulary.
    fn fail(&mut self, out: &mut Vec<u8>, f: Failure) {
        self.start(out);
        let err = f.0;
        let message = err.get("message").cloned().unwrap_or_else(|| json!("the upstream stream failed"));
        let code = err.get("code").cloned().unwrap_or(Value::Null);
        let param = err.get("param").cloned().unwrap_or(Value::Null);
        let rate_limited = err.get("type").and_then(Value::as_str) == Some("rate_limit_error")
            || code.as_str() == Some("rate_limit_exceeded");
        let response_code = if rate_limited { "rate_limit_exceeded" } else { "server_error" };
        self.emit(out, "error", json!({"code": code, "message": message, "param": param, "error": err}));
        let r = self.response("failed", None, json!({"code": response_code, "message": message}));
        self.emit(out, "response.failed", json!({"response": r}));
        self.phase = Phase::Ended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use crate::translate::{ChunkWriter, ResponseOptions, StreamTranscoder};

    const TEXT_SSE: &[u8] = include_bytes!("../../../fixtures/openai/chat-stream-text.sse");
    const TOOL_SSE: &[u8] = include_bytes!("../../../fixtures/openai/chat-stream-tool-call.sse");
    const PARALLEL_SSE: &[u8] = include_bytes!("../../../fixtures/openai/chat-stream-parallel-tool-calls.sse");
    const LENGTH_SSE: &[u8] = include_bytes!("../../../fixtures/openai/chat-stream-finish-length-usage.sse");
    const REFUSAL_SSE: &[u8] = include_bytes!("../../../fixtures/openai/chat-stream-refusal.sse");
    const NANO_SSE: &[u8] = include_bytes!("../../../fixtures/openai/chat-stream-text-gpt5-nano.sse");
    const TEXT_JSON: &[u8] = include_bytes!("../../../fixtures/openai/chat-completion-text.json");
    const TOOL_JSON: &[u8] = include_bytes!("../../../fixtures/openai/chat-completion-tool-call.json");
    const RESPONSES_JSON: &[u8] = include_bytes!("../../../fixtures/openai/responses-reasoning-encrypted-content.json");
    const RESPONSES_ERROR: &str =
        include_str!("../../../fixtures/openai/responses-stream-error-insufficient-quota.chunks.txt");

    fn chat(body: Value) -> (Value, ChatFromResponses) {
        let t = to_chat(&serde_json::to_vec(&body).unwrap()).unwrap();
        (serde_json::from_slice(&t.chat_body).unwrap(), t)
    }

    fn err(body: Value) -> ApiError {
        to_chat(&serde_json::to_vec(&body).unwrap()).unwrap_err()
    }

    // ---- request mapping ----

    #[test]
    fn request_scalars_and_instructions() {
        let (c, t) = chat(json!({
            "model": "anthropic:claude-sonnet-4-5",
            "instructions": "Be brief.",
            "input": "Hello",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_output_tokens": 300,
            "parallel_tool_calls": false,
            "user": "u-1",
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"format": {"type": "text"}, "verbosity": "low"},
            "store": true,
            "metadata": {"k": "v"},
            "truncation": "auto",
            "include": ["reasoning.encrypted_content"],
            "service_tier": "auto",
            "safety_identifier": "s",
            "prompt_cache_key": "p",
            "top_logprobs": 0,
            "max_tool_calls": 3,
            "background": false,
        }));
        assert_eq!(t.model, "anthropic:claude-sonnet-4-5");
        assert!(!t.stream);
        assert_eq!(c["model"], "anthropic:claude-sonnet-4-5");
        assert_eq!(
            c["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
        );
        assert_eq!(c["temperature"], 0.2);
        assert_eq!(c["top_p"], 0.9);
        assert_eq!(c["max_completion_tokens"], 300);
        assert_eq!(c["parallel_tool_calls"], false);
        assert_eq!(c["user"], "u-1");
        assert_eq!(c["reasoning_effort"], "low");
        assert_eq!(c["verbosity"], "low");
        for absent in ["response_format", "stream", "stream_options", "store", "metadata", "max_tokens", "service_tier"]
        {
            assert!(c.get(absent).is_none(), "{absent}");
        }
        let m = &t.meta;
        assert_eq!(m.instructions, "Be brief.");
        assert_eq!(m.temperature, 0.2);
        assert_eq!(m.max_output_tokens, 300);
        assert_eq!(m.max_tool_calls, 3);
        assert_eq!(m.parallel_tool_calls, Some(false));
        assert_eq!(m.reasoning, json!({"effort": "low", "summary": "auto"}));
        assert_eq!(m.metadata, json!({"k": "v"}));
        assert_eq!(m.user, "u-1");
    }

    #[test]
    fn request_stream_asks_for_usage() {
        let (c, t) =
            chat(json!({"model": "m", "input": "x", "stream": true, "stream_options": {"include_obfuscation": false}}));
        assert!(t.stream);
        assert_eq!(c["stream"], true);
        assert_eq!(c["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn request_items_and_turn_merging() {
        let (c, _) = chat(json!({"model": "m", "input": [
            {"role": "developer", "content": "dev rules"},
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "sys"}]},
            {"role": "user", "content": [
                {"type": "input_text", "text": "What is in this image?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                {"type": "input_image", "image_url": "https://example.com/a.png"}
            ]},
            {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA", "summary": [{"type": "summary_text", "text": "think"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "noon"}]},
            {"type": "reasoning", "id": "rs_2", "encrypted_content": "gAAAA", "summary": []},
            {"type": "function_call", "call_id": "call_c", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_c", "output": "rain"},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "thanks"}
        ]}));
        let expected = json!([
            {"role": "developer", "content": "dev rules"},
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]},
            {"role": "assistant", "reasoning_content": "think", "content": "Let me check.", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_c", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_c", "content": "rain"},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "thanks"}
        ]);
        assert_eq!(c["messages"], expected);
    }

    #[test]
    fn request_round_trips_our_own_output() {
        // An agent loop sends the previous response's output back as input.
        let completion = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "hmm",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
        let resp: Value = serde_json::from_slice(
            &from_chat(&serde_json::to_vec(&completion).unwrap(), &ResponsesMeta::default(), "resp_1", 1).unwrap(),
        )
        .unwrap();
        let mut input = vec![json!({"role": "user", "content": "go"})];
        input.extend(resp["output"].as_array().unwrap().iter().cloned());
        input.push(json!({"type": "function_call_output", "call_id": "call_1", "output": "ok"}));
        let (c, _) = chat(json!({"model": "m", "input": input}));
        assert_eq!(
            c["messages"][1],
            json!({"role": "assistant", "reasoning_content": "hmm", "content": "Checking.",
                   "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        assert_eq!(c["messages"][2], json!({"role": "tool", "tool_call_id": "call_1", "content": "ok"}));
    }

    #[test]
    fn request_tools_choice_and_formats() {
        let (c, t) = chat(json!({
            "model": "m", "input": "x",
            "tools": [{"type": "function", "name": "get_weather", "description": "d",
                       "parameters": {"type": "object", "properties": {}}, "strict": true},
                      {"type": "function", "name": "bare"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true, "description": "o"}}
        }));
        assert_eq!(
            c["tools"],
            json!([{"type": "function", "function": {"name": "get_weather", "description": "d",
                    "parameters": {"type": "object", "properties": {}}, "strict": true}},
                   {"type": "function", "function": {"name": "bare"}}])
        );
        assert_eq!(c["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
        assert_eq!(
            c["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true, "description": "o"}})
        );
        assert_eq!(t.meta.tools[0]["name"], "get_weather");
        assert_eq!(t.meta.tool_choice["name"], "get_weather");
        for choice in ["auto", "none", "required"] {
            let (c, _) = chat(json!({"model": "m", "input": "x", "tool_choice": choice}));
            assert_eq!(c["tool_choice"], choice);
        }
        let (c, _) = chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}));
        assert_eq!(c["response_format"], json!({"type": "json_object"}));
    }

    #[track_caller]
    fn assert_400(body: Value, param: &str, needle: &str) {
        let e = err(body);
        assert_eq!(e.status, 400, "{e}");
        assert_eq!(e.param.as_deref(), Some(param), "{e}");
        assert!(e.message.contains(needle), "{e}");
    }

    #[test]
    fn request_rejections() {
        let base = |extra: Value| {
            let mut b = json!({"model": "m", "input": "x"});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        assert_400(base(json!({"previous_response_id": "resp_1"})), "previous_response_id", "does not store");
        assert_400(base(json!({"conversation": "conv_1"})), "conversation", "does not store");
        assert_400(base(json!({"background": true})), "background", "background");
        assert_400(base(json!({"prompt": {"id": "pmpt_1"}})), "prompt", "prompt");
        assert_400(base(json!({"frobnicate": 1})), "frobnicate", "no Chat Completions equivalent");
        assert_400(base(json!({"include": ["message.output_text.logprobs"]})), "include", "logprobs");
        assert_400(base(json!({"top_logprobs": 2})), "top_logprobs", "log probabilities");
        assert_400(base(json!({"truncation": "sometimes"})), "truncation", "auto");
        for tool in
            ["web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use_preview", "mcp"]
        {
            assert_400(base(json!({"tools": [{"type": tool}]})), "tools[0]", tool);
        }
        assert_400(
            base(json!({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}})),
            "tool_choice",
            "auto",
        );
        assert_400(base(json!({"tool_choice": {"type": "web_search_preview"}})), "tool_choice", "auto");
        assert_400(base(json!({"text": {"format": {"type": "grammar"}}})), "text.format.type", "grammar");
        assert_400(
            base(json!({"text": {"format": {"type": "json_schema", "schema": {}}}})),
            "text.format.name",
            "required",
        );
        assert_400(base(json!({"temperature": "hot"})), "temperature", "number");
        assert_400(base(json!({"max_output_tokens": -1})), "max_output_tokens", "integer");
        assert_400(json!({"input": "x"}), "model", "required");
        assert_400(json!({"model": "m"}), "input", "required");
        assert_400(json!({"model": "m", "input": 5}), "input", "string");
        let items = |item: Value| json!({"model": "m", "input": [item]});
        assert_400(items(json!({"type": "item_reference", "id": "msg_1"})), "input[0]", "does not store");
        assert_400(items(json!({"type": "web_search_call", "id": "ws_1"})), "input[0].type", "web_search_call");
        assert_400(
            items(json!({"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]})),
            "input[0].content[0].file_id",
            "file store",
        );
        assert_400(
            items(json!({"role": "user", "content": [{"type": "input_file", "file_data": "x"}]})),
            "input[0].content[0]",
            "file",
        );
        assert_400(
            items(json!({"role": "system", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]})),
            "input[0].content[0]",
            "user messages",
        );
        assert_400(items(json!({"role": "tool", "content": "x"})), "input[0].role", "must be");
        assert_400(items(json!({"type": "function_call", "name": "f"})), "input[0].call_id", "required");
        assert_400(items(json!({"type": "function_call_output", "call_id": "c"})), "input[0].output", "required");
        assert_400(items(json!(3)), "input[0]", "object");
        let bad = to_chat(b"not json").unwrap_err();
        assert_eq!((bad.status, bad.code), (400, Some("invalid_json")));
    }

    // ---- whole responses ----

    fn from(completion: &[u8], meta: &ResponsesMeta) -> Value {
        serde_json::from_slice(&from_chat(completion, meta, "resp_abc", 1700000000).unwrap()).unwrap()
    }

    #[test]
    fn from_chat_text_fixture() {
        let fixture: Value = serde_json::from_slice(TEXT_JSON).unwrap();
        let r = from(TEXT_JSON, &ResponsesMeta { model: "openai:gpt-4.1-nano".into(), ..Default::default() });
        assert_eq!(r["id"], "resp_abc");
        assert_eq!(r["object"], "response");
        assert_eq!(r["created_at"], 1700000000);
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], fixture["model"]);
        assert_eq!(r["output"].as_array().unwrap().len(), 1);
        let msg = &r["output"][0];
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["id"], "msg_abc_0");
        assert_eq!(msg["role"], "assistant");
        assert_eq!(msg["status"], "completed");
        assert_eq!(msg["content"][0]["type"], "output_text");
        assert_eq!(msg["content"][0]["text"], fixture["choices"][0]["message"]["content"]);
        assert_eq!(msg["content"][0]["annotations"], json!([]));
        let u = &fixture["usage"];
        assert_eq!(r["usage"]["input_tokens"], u["prompt_tokens"]);
        assert_eq!(r["usage"]["output_tokens"], u["completion_tokens"]);
        assert_eq!(r["usage"]["total_tokens"], u["total_tokens"]);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], u["prompt_tokens_details"]["cached_tokens"]);
        assert_eq!(
            r["usage"]["output_tokens_details"]["reasoning_tokens"],
            u["completion_tokens_details"]["reasoning_tokens"]
        );
        // Defaults echoed in the shape OpenAI's own objects have.
        let openai: Value = serde_json::from_slice(RESPONSES_JSON).unwrap();
        for key in openai.as_object().unwrap().keys() {
            let optional = [
                "billing",
                "prompt_cache_key",
                "prompt_cache_retention",
                "safety_identifier",
                "service_tier",
                "top_logprobs",
            ];
            assert!(r.get(key).is_some() || optional.contains(&key.as_str()), "missing {key}");
        }
        assert_eq!(r["error"], Value::Null);
        assert_eq!(r["incomplete_details"], Value::Null);
        assert_eq!(r["tools"], json!([]));
        assert_eq!(r["tool_choice"], "auto");
        assert_eq!(r["text"], json!({"format": {"type": "text"}}));
        assert_eq!(r["metadata"], json!({}));
        assert_eq!(r["parallel_tool_calls"], true);
        assert_eq!(r["store"], false);
    }

    #[test]
    fn from_chat_tool_call_fixture() {
        let fixture: Value = serde_json::from_slice(TOOL_JSON).unwrap();
        let call = &fixture["choices"][0]["message"]["tool_calls"][0];
        let r = from(TOOL_JSON, &ResponsesMeta::default());
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"].as_array().unwrap().len(), 1);
        let fc = &r["output"][0];
        assert_eq!(fc["type"], "function_call");
        assert_eq!(fc["id"], "fc_abc_0");
        assert_eq!(fc["call_id"], call["id"]);
        assert_eq!(fc["name"], call["function"]["name"]);
        assert_eq!(fc["arguments"], call["function"]["arguments"]);
        assert_eq!(fc["status"], "completed");
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 256);
        assert_eq!(r["usage"]["total_tokens"], 449);
    }

    #[test]
    fn from_chat_reasoning_refusal_length_and_echo() {
        let (_, t) = chat(json!({"model": "m", "input": "x", "instructions": "sys", "temperature": 0.5,
            "tools": [{"type": "function", "name": "f"}], "tool_choice": "required",
            "text": {"format": {"type": "json_object"}}, "metadata": {"a": "b"}}));
        let completion = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant", "content": "partial", "refusal": "no", "reasoning_content": "because"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                      "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 3}}});
        let r = from(&serde_json::to_vec(&completion).unwrap(), &t.meta);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(
            r["output"][0],
            json!({"id": "rs_abc_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "because"}]})
        );
        assert_eq!(r["output"][1]["status"], "incomplete");
        assert_eq!(r["output"][1]["content"][1], json!({"type": "refusal", "refusal": "no"}));
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(r["instructions"], "sys");
        assert_eq!(r["temperature"], 0.5);
        assert_eq!(r["tools"], json!([{"type": "function", "name": "f"}]));
        assert_eq!(r["tool_choice"], "required");
        assert_eq!(r["text"], json!({"format": {"type": "json_object"}}));
        assert_eq!(r["metadata"], json!({"a": "b"}));
        let filtered = json!({"choices": [{"finish_reason": "content_filter", "message": {"content": null}}]});
        let r = from(&serde_json::to_vec(&filtered).unwrap(), &t.meta);
        assert_eq!(r["incomplete_details"]["reason"], "content_filter");
        assert_eq!(r["output"], json!([]));
        assert_eq!(r["usage"], Value::Null);
        assert_eq!(r["model"], "m");
    }

    #[test]
    fn from_chat_bad_bodies() {
        for body in [&b"nope"[..], b"{}", b"{\"choices\":[]}", b"{\"choices\":[{\"message\":3}]}", b"[]"] {
            assert_eq!(from_chat(body, &ResponsesMeta::default(), "resp_1", 0).unwrap_err().status, 502);
        }
    }

    // ---- streams ----

    fn run_chunks(input: &[u8], sizes: &mut dyn FnMut() -> usize, max_event: usize) -> Vec<u8> {
        let meta = ResponsesMeta { model: "gw-model".into(), ..Default::default() };
        let mut s = stream(meta, "resp_s", 42, max_event);
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            s.feed(&rest[..n], &mut out).unwrap();
            // SseReader counts its line buffer by capacity, which Vec growth may double.
            assert!(s.reader.buffered() <= 3 * max_event + 64, "{} > {max_event}", s.reader.buffered());
            rest = &rest[n..];
        }
        s.finish(&mut out).unwrap();
        out
    }

    fn run(input: &[u8]) -> Vec<u8> {
        run_chunks(input, &mut || usize::MAX, 1 << 20)
    }

    /// (event name, data) of every event; checks framing, `type` and `sequence_number`.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let mut evs = Vec::new();
        let mut r = SseReader::new(1 << 24);
        r.feed(out, &mut |e| evs.push(e)).unwrap();
        r.finish(&mut |e| evs.push(e)).unwrap();
        let parsed: Vec<(String, Value)> = evs
            .into_iter()
            .map(|e| {
                assert_ne!(e.data, "[DONE]");
                let v: Value = serde_json::from_str(&e.data).unwrap();
                let name = e.event.unwrap();
                assert_eq!(v["type"], name.as_str());
                (name, v)
            })
            .collect();
        for (i, (_, v)) in parsed.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        parsed
    }

    fn names(evs: &[(String, Value)]) -> Vec<&str> {
        let mut n: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        n.dedup();
        n
    }

    /// The chat fixture's own content, refusal and per-index tool arguments, joined by the test.
    fn chat_parts(input: &[u8]) -> (String, String, Vec<(String, String, String)>) {
        let (mut content, mut refusal, mut calls) =
            (String::new(), String::new(), Vec::<(String, String, String)>::new());
        for line in std::str::from_utf8(input).unwrap().lines() {
            let Some(data) = line.strip_prefix("data: ") else { continue };
            let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
            let Some(delta) = v["choices"].get(0).map(|c| &c["delta"]) else { continue };
            content.push_str(delta["content"].as_str().unwrap_or_default());
            refusal.push_str(delta["refusal"].as_str().unwrap_or_default());
            for c in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = c["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.push((
                        c["id"].as_str().unwrap().into(),
                        c["function"]["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                }
                calls[i].2.push_str(c["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        (content, refusal, calls)
    }

    fn last_usage(input: &[u8]) -> Value {
        let text = std::str::from_utf8(input).unwrap();
        let line = text.lines().rfind(|l| l.contains("\"usage\":{")).unwrap();
        serde_json::from_str::<Value>(line.strip_prefix("data: ").unwrap()).unwrap()["usage"].clone()
    }

    fn joined(evs: &[(String, Value)], name: &str, key: &str) -> String {
        evs.iter().filter(|(n, _)| n == name).map(|(_, v)| v[key].as_str().unwrap()).collect()
    }

    fn check_splits(input: &[u8]) {
        let whole = run(input);
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ input.len() as u64);
        assert_eq!(run_chunks(input, &mut || 1, 1 << 20), whole, "1-byte feeding");
        for _ in 0..60 {
            let mut sizes = || 1 + rng.below(64);
            assert_eq!(run_chunks(input, &mut sizes, 1 << 20), whole);
        }
        for _ in 0..40 {
            let cut = rng.below(input.len());
            let mut first = true;
            let mut sizes = || if std::mem::take(&mut first) { cut.max(1) } else { usize::MAX };
            assert_eq!(run_chunks(input, &mut sizes, 1 << 20), whole, "split at {cut}");
        }
    }

    #[test]
    fn stream_text_fixture() {
        let evs = events(&run(TEXT_SSE));
        assert_eq!(
            names(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let (content, _, _) = chat_parts(TEXT_SSE);
        assert!(!content.is_empty());
        assert_eq!(joined(&evs, "response.output_text.delta", "delta"), content);
        let delta = &evs.iter().find(|(n, _)| n == "response.output_text.delta").unwrap().1;
        assert_eq!(delta["item_id"], "msg_s_0");
        assert_eq!((delta["output_index"].as_u64(), delta["content_index"].as_u64()), (Some(0), Some(0)));
        assert_eq!(delta["logprobs"], json!([]));
        assert_eq!(joined(&evs, "response.output_text.done", "text"), content);
        let created = &evs[0].1["response"];
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["output"], json!([]));
        assert_eq!(created["id"], "resp_s");
        assert_eq!(created["model"], "gpt-4o-2024-08-06");
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], content.as_str());
        assert_eq!(done["output"][0]["status"], "completed");
        let u = last_usage(TEXT_SSE);
        assert_eq!(done["usage"]["input_tokens"], u["prompt_tokens"]);
        assert_eq!(done["usage"]["output_tokens"], u["completion_tokens"]);
        assert_eq!(done["usage"]["total_tokens"], u["total_tokens"]);
        check_splits(TEXT_SSE);
    }

    #[test]
    fn stream_tool_call_fixture() {
        let evs = events(&run(TOOL_SSE));
        assert_eq!(
            names(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let (_, _, calls) = chat_parts(TOOL_SSE);
        let (id, name, args) = &calls[0];
        assert_eq!(joined(&evs, "response.function_call_arguments.delta", "delta"), *args);
        let done = &evs.iter().find(|(n, _)| n == "response.function_call_arguments.done").unwrap().1;
        assert_eq!(done["arguments"], args.as_str());
        assert_eq!(done["name"], name.as_str());
        let added = &evs[2].1["item"];
        assert_eq!(added["call_id"], id.as_str());
        assert_eq!(added["status"], "in_progress");
        let r = &evs.last().unwrap().1["response"];
        assert_eq!(r["output"][0]["arguments"], args.as_str());
        assert_eq!(r["output"][0]["status"], "completed");
        assert_eq!(r["usage"]["total_tokens"], last_usage(TOOL_SSE)["total_tokens"]);
        check_splits(TOOL_SSE);
    }

    #[test]
    fn stream_parallel_tool_calls_fixture() {
        let evs = events(&run(PARALLEL_SSE));
        let (_, _, calls) = chat_parts(PARALLEL_SSE);
        assert_eq!(calls.len(), 2);
        let added: Vec<&Value> =
            evs.iter().filter(|(n, _)| n == "response.output_item.added").map(|(_, v)| v).collect();
        let dones: Vec<&Value> =
            evs.iter().filter(|(n, _)| n == "response.function_call_arguments.done").map(|(_, v)| v).collect();
        for (i, (id, name, args)) in calls.iter().enumerate() {
            assert_eq!(added[i]["output_index"], i as u64);
            assert_eq!(added[i]["item"]["call_id"], id.as_str());
            assert_eq!(dones[i]["arguments"], args.as_str());
            assert_eq!(dones[i]["name"], name.as_str());
            let deltas: String = evs
                .iter()
                .filter(|(n, v)| n == "response.function_call_arguments.delta" && v["output_index"] == i as u64)
                .map(|(_, v)| v["delta"].as_str().unwrap())
                .collect();
            assert_eq!(deltas, *args);
        }
        // Each item closes before the next opens, as OpenAI streams them.
        let order: Vec<&str> = names(&evs)
            .into_iter()
            .filter(|n| n.starts_with("response.output_item") || n.ends_with("arguments.done"))
            .collect();
        assert_eq!(
            order,
            [
                "response.output_item.added",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.done",
                "response.output_item.done"
            ]
        );
        assert_eq!(evs.last().unwrap().1["response"]["output"].as_array().unwrap().len(), 2);
        check_splits(PARALLEL_SSE);
    }

    #[test]
    fn stream_finish_length_fixture() {
        let evs = events(&run(LENGTH_SSE));
        assert_eq!(names(&evs), ["response.created", "response.in_progress", "response.incomplete"]);
        let r = &evs[2].1["response"];
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(r["output"], json!([]));
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 100);
        assert_eq!(r["usage"]["total_tokens"], 112);
        check_splits(LENGTH_SSE);
    }

    #[test]
    fn stream_refusal_and_no_usage_fixtures() {
        let evs = events(&run(REFUSAL_SSE));
        let (_, refusal, _) = chat_parts(REFUSAL_SSE);
        assert_eq!(joined(&evs, "response.refusal.delta", "delta"), refusal);
        assert_eq!(joined(&evs, "response.refusal.done", "refusal"), refusal);
        let r = &evs.last().unwrap().1["response"];
        assert_eq!(r["output"][0]["content"][0], json!({"type": "refusal", "refusal": refusal}));
        check_splits(REFUSAL_SSE);

        let evs = events(&run(NANO_SSE));
        let (content, _, _) = chat_parts(NANO_SSE);
        assert_eq!(joined(&evs, "response.output_text.delta", "delta"), content);
        let r = &evs.last().unwrap().1;
        assert_eq!(r["type"], "response.completed");
        assert_eq!(r["response"]["usage"], Value::Null);
        check_splits(NANO_SSE);
    }

    /// A chat stream as the gateway's provider translators write it (ChunkWriter).
    fn writer_stream(build: impl FnOnce(&mut ChunkWriter, &mut Vec<u8>)) -> Vec<u8> {
        let opts = ResponseOptions {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "p:m".into(),
            include_usage: true,
            max_event: 1 << 20,
        };
        let mut w = ChunkWriter::new(opts);
        let mut out = Vec::new();
        build(&mut w, &mut out);
        out
    }

    #[test]
    fn stream_reasoning_text_and_tool_from_chunk_writer() {
        let input = writer_stream(|w, out| {
            w.reasoning(out, "Let me ");
            w.reasoning(out, "think.");
            w.content(out, "Calling.");
            let i = w.tool_call_start(out, "call_1", "f", "");
            w.tool_call_args(out, i, "{\"a\":");
            w.tool_call_args(out, i, "1}");
            w.finish(out, "tool_calls");
            let u = Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                reasoning_tokens: 3,
                cached_tokens: 4,
                ..Default::default()
            };
            w.done(out, Some(&u));
        });
        let evs = events(&run(&input));
        assert_eq!(
            names(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert_eq!(joined(&evs, "response.reasoning_summary_text.delta", "delta"), "Let me think.");
        let r = &evs.last().unwrap().1["response"];
        assert_eq!(r["model"], "p:m");
        assert_eq!(
            r["output"][0],
            json!({"id": "rs_s_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Let me think."}]})
        );
        assert_eq!(r["output"][1]["id"], "msg_s_1");
        assert_eq!(r["output"][2]["id"], "fc_s_2");
        assert_eq!(r["output"][2]["arguments"], "{\"a\":1}");
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 4);
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 3);
        check_splits(&input);
    }

    fn failure(evs: &[(String, Value)]) -> (&Value, &Value) {
        let n = evs.len();
        assert!(n >= 4);
        assert_eq!(evs[0].0, "response.created");
        assert_eq!(evs[1].0, "response.in_progress");
        assert_eq!(evs[n - 2].0, "error");
        assert_eq!(evs[n - 1].0, "response.failed");
        assert_eq!(evs[n - 1].1["response"]["status"], "failed");
        (&evs[n - 2].1, &evs[n - 1].1["response"])
    }

    #[test]
    fn stream_error_event_gives_openai_failure_sequence() {
        // OpenAI's own failure, for the shape to imitate.
        let openai: Vec<Value> = RESPONSES_ERROR.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let their_error = &openai[2];
        let err = ApiError::new(429, "rate_limit_error", Some("rate_limit_exceeded"), "slow down");
        let mut input = writer_stream(|w, out| w.content(out, "Hi"));
        input.extend(crate::usage::stream_error_event(&err));
        input.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"ignored\"}}]}\n\n");
        let out = run(&input);
        let evs = events(&out);
        let (e, r) = failure(&evs);
        for key in their_error.as_object().unwrap().keys() {
            assert!(e.get(key).is_some(), "error event lacks {key}");
        }
        assert_eq!(e["message"], "slow down");
        assert_eq!(e["code"], "rate_limit_exceeded");
        assert_eq!(e["error"]["message"], "slow down");
        assert_eq!(e["error"]["type"], "rate_limit_error");
        assert_eq!(r["error"], json!({"code": "rate_limit_exceeded", "message": "slow down"}));
        assert!(!String::from_utf8(out).unwrap().contains("ignored"));
        check_splits(&input);
    }

    #[test]
    fn stream_early_end_and_garbage_fail_cleanly() {
        let half = TEXT_SSE.len() / 2;
        let boundary = half + memchr::memmem::find(&TEXT_SSE[half..], b"\n\n").unwrap() + 2;
        let cut = &TEXT_SSE[..boundary];
        let evs = events(&run(cut));
        let (e, r) = failure(&evs);
        assert!(e["message"].as_str().unwrap().contains("ended"));
        assert_eq!(r["error"]["code"], "server_error");
        let evs = events(&run(b""));
        assert_eq!(evs.len(), 4);
        failure(&evs);
        let evs = events(&run(b"data: {not json\n\n"));
        assert!(failure(&evs).0["message"].as_str().unwrap().contains("not JSON"));
        let evs = events(&run(b"data: \xff\xfe\n\n"));
        failure(&evs);

        let mut s = stream(ResponsesMeta::default(), "resp_f", 0, 1 << 20);
        let mut out = Vec::new();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n", &mut out).unwrap();
        s.fail(&ApiError::unavailable("overloaded", "Overloaded"), &mut out);
        s.fail(&ApiError::unavailable("overloaded", "again"), &mut out);
        s.feed(b"data: [DONE]\n\n", &mut out).unwrap();
        s.finish(&mut out).unwrap();
        let evs = events(&out);
        let (e, _) = failure(&evs);
        assert_eq!(e["code"], "overloaded");
        assert_eq!(evs.iter().filter(|(n, _)| n == "error").count(), 1);
    }

    #[test]
    fn stream_interleaved_tool_deltas_fail() {
        let input = b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n\
data: [DONE]\n\n";
        let evs = events(&run(input));
        assert!(failure(&evs).0["message"].as_str().unwrap().contains("interleaved"));
    }

    #[test]
    fn stream_output_is_bounded() {
        let big = writer_stream(|w, out| {
            for _ in 0..100 {
                w.content(out, &"x".repeat(100));
            }
            w.finish(out, "stop");
            w.done(out, None);
        });
        let evs = events(&run_chunks(&big, &mut || 512, 4096));
        let (e, _) = failure(&evs);
        assert_eq!(e["code"], "response_too_large");
        let evs = events(&run_chunks(&big, &mut || 512, 1 << 20));
        assert_eq!(evs.last().unwrap().0, "response.completed");
    }

    #[test]
    fn stream_usage_accessor() {
        let mut s = stream(ResponsesMeta::default(), "resp_u", 0, 1 << 20);
        let mut out = Vec::new();
        s.feed(TOOL_SSE, &mut out).unwrap();
        s.finish(&mut out).unwrap();
        let u = s.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (48, 19, 67));
    }

    #[test]
    fn stream_fuzz_never_panics_and_always_terminates() {
        let mut rng = Rng::new(0xDEAD_BEEF_CAFE_F00D);
        let fixtures = [TEXT_SSE, TOOL_SSE, PARALLEL_SSE, LENGTH_SSE, REFUSAL_SSE];
        for iter in 0..3000 {
            let input: Vec<u8> = if iter % 3 == 0 {
                let len = rng.below(400);
                rng.bytes(len)
            } else {
                let f = fixtures[rng.below(fixtures.len())];
                let mut v = f[..rng.below(f.len() + 1)].to_vec();
                for _ in 0..rng.below(8) {
                    if v.is_empty() {
                        break;
                    }
                    let at = rng.below(v.len());
                    v[at] = b"{}[]\":,\n x0\\"[rng.below(12)];
                }
                v
            };
            let max_event = [256usize, 4096, 1 << 20][rng.below(3)];
            let mut sizes = || 1 + rng.below(64);
            let out = run_chunks(&input, &mut sizes, max_event);
            let evs = events(&out);
            let last = evs.last().unwrap().0.as_str();
            assert!(matches!(last, "response.completed" | "response.incomplete" | "response.failed"), "{last}");
        }
    }

    #[test]
    fn thinking_blocks_round_trip_whole_and_streamed() {
        let blocks = json!([{"type": "thinking", "thinking": "plan", "signature": "sig=="},
                            {"type": "redacted_thinking", "data": "opaque"}]);
        let completion = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null, "reasoning_content": "plan", "thinking_blocks": blocks,
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
        let r = from(&serde_json::to_vec(&completion).unwrap(), &ResponsesMeta::default());
        let enc = r["output"][0]["encrypted_content"].as_str().unwrap();
        assert!(enc.starts_with(BLOCKS_PREFIX));
        assert_eq!(r["output"][0]["summary"][0]["text"], "plan");

        let input = writer_stream(|w, out| {
            w.reasoning(out, "pl");
            w.reasoning(out, "an");
            let mut m = Map::new();
            m.insert("thinking_blocks".into(), json!([blocks[0]]));
            w.extra(out, m);
            let mut m = Map::new();
            m.insert("thinking_blocks".into(), json!([blocks[1]]));
            w.extra(out, m);
            let i = w.tool_call_start(out, "toolu_1", "f", "{}");
            w.tool_call_args(out, i, "");
            w.finish(out, "tool_calls");
            w.done(out, None);
        });
        let evs = events(&run(&input));
        let done = &evs.iter().find(|(n, _)| n == "response.output_item.done").unwrap().1["item"];
        assert_eq!(done["encrypted_content"], enc);
        let streamed = &evs.last().unwrap().1["response"]["output"];
        let mut expected = r["output"][0].clone();
        expected["id"] = json!("rs_s_0");
        assert_eq!(streamed[0], expected);
        check_splits(&input);

        for output in [r["output"].clone(), streamed.clone()] {
            let mut items = vec![json!({"role": "user", "content": "go"})];
            items.extend(output.as_array().unwrap().iter().cloned());
            items.push(json!({"type": "function_call_output", "call_id": "toolu_1", "output": "ok"}));
            let (c, _) = chat(json!({"model": "m", "input": items}));
            let a = &c["messages"][1];
            assert_eq!(a["thinking_blocks"], blocks);
            assert!(a.get("reasoning_content").is_none());
            assert_eq!(a["tool_calls"][0]["id"], "toolu_1");
        }

        // Blocks without readable text: a reasoning item without summary events.
        let input = writer_stream(|w, out| {
            let mut m = Map::new();
            m.insert("thinking_blocks".into(), json!([blocks[1]]));
            w.extra(out, m);
            w.content(out, "Hi");
            w.finish(out, "stop");
            w.done(out, None);
        });
        let evs = events(&run(&input));
        assert!(!names(&evs).iter().any(|n| n.contains("reasoning_summary")));
        let out = &evs.last().unwrap().1["response"]["output"];
        assert_eq!(out[0]["summary"], json!([]));
        assert!(out[0]["encrypted_content"].as_str().unwrap().starts_with(BLOCKS_PREFIX));
        assert_eq!(out[1]["content"][0]["text"], "Hi");
    }
}
