//! Google Gemini (`generateContent` / `streamGenerateContent?alt=sse`) ⇄ OpenAI Chat Completions.
//!
//! # Wire
//!
//! - Path: `/v1beta/models/{model}:generateContent`, streaming
//!   `/v1beta/models/{model}:streamGenerateContent?alt=sse` (`{model}` percent-escaped; a leading
//!   `models/` is tolerated). No extra headers: the gateway adds `x-goog-api-key`.
//! - `alt=sse` streams are CRLF-framed `data:` events, no event names, no `[DONE]`. Every event is
//!   a whole `GenerateContentResponse` with `usageMetadata` (the last one is final). The body's end
//!   is the end marker: `finish` after an event that carried a `finishReason` (or a prompt
//!   `blockReason`) is clean, otherwise it is an `Err`. An `{"error":{...}}` event is an `Err`
//!   with the mapped status.
//!
//! # Request mapping
//!
//! | OpenAI | Gemini |
//! | --- | --- |
//! | `system` / `developer` messages (anywhere) | `systemInstruction.parts`, in order |
//! | `user` | `user` turn: `text`, `image_url` data URL → `inlineData`, http(s) URL → `fileData {fileUri, mimeType}` (the API fetches public/signed HTTPS URLs since 2026-01; the MIME type is required, so it is taken from the URL's extension, else 400), `input_audio` → `inlineData audio/*`, `file.file_data` data URL → `inlineData` (`file_id` → 400) |
//! | `assistant` | `model` turn: text, `tool_calls` → `functionCall {name, args}` (+ `thoughtSignature` decoded from the id, see below); `reasoning_content` is dropped (Gemini carries prior reasoning in signatures, not text) |
//! | `tool` (and legacy `function`) | `functionResponse {name, response}` in a `user` turn; the name comes from the earlier assistant `tool_calls` with that id (unknown id → 400); `response` is the content parsed as JSON when it is an object, else `{"result": <JSON value or text>}` |
//! | consecutive turns of one role | merged (parallel tool results end up in one `user` turn) |
//! | `tools[].function` | `tools[0].functionDeclarations[]` with `parametersJsonSchema`: the documented field that takes full JSON Schema (`additionalProperties`, `$ref`, ...), so no lossy down-conversion to the OpenAPI-subset `parameters`. `strict` is dropped (Gemini has no strict mode; the schema is still enforced by the model's decoder as Gemini does) |
//! | `tool_choice` auto / none / required / `{function:{name}}` | `toolConfig.functionCallingConfig.mode` AUTO / NONE / ANY / ANY + `allowedFunctionNames` |
//! | `temperature`, `top_p`, `top_k`, `seed`, `presence_penalty`, `frequency_penalty` | `generationConfig.temperature`, `topP`, `topK`, `seed`, `presencePenalty`, `frequencyPenalty` |
//! | `max_completion_tokens` (else `max_tokens`) | `generationConfig.maxOutputTokens` |
//! | `stop` (string or array) | `generationConfig.stopSequences` |
//! | `n` | `generationConfig.candidateCount` (non-streaming only: the stream writer has one choice; `n > 1` with `stream` → 400) |
//! | `response_format` json_object / json_schema | `responseMimeType: application/json` (+ `responseJsonSchema`, the full-JSON-Schema field) |
//! | `reasoning_effort` | `thinkingConfig {thinkingBudget, includeThoughts: true}`, table below |
//!
//! `reasoning_effort` → `thinkingBudget`: `none` 0 (disables thinking where the model allows it),
//! `minimal` 512 (the smallest budget every 2.5 model accepts: Pro ≥ 128, Flash-Lite ≥ 512),
//! `low` 1024, `medium` 8192, `high` 24576 (the Flash maximum). Gemini 3 accepts `thinkingBudget`
//! for backwards compatibility. Without `reasoning_effort` no `thinkingConfig` is sent (the
//! model's default; models without thinking reject the field).
//!
//! Dropped silently because they cannot change the answer: `store`, `metadata`, `service_tier`,
//! `user`, `prompt_cache_key`, `safety_identifier`, `stream_options` (the gateway handles
//! `include_usage`), `parallel_tool_calls` (Gemini has no switch; it decides per turn), a message's
//! `name`, an image's `detail`, `logprobs: false`, empty `logit_bias`, `modalities: ["text"]`.
//! Rejected with a 400 naming the field: `logprobs: true`, `top_logprobs`, `logit_bias`, `audio`,
//! non-text `modalities`, `prediction`, `web_search_options`, `verbosity`, legacy
//! `functions`/`function_call`, non-function tools, and any field not listed here.
//!
//! # Response mapping
//!
//! Text parts → `content`; parts with `thought: true` → `reasoning_content`. Function calls have no
//! id on Gemini: ids are generated as `call_<responseId>_<n>` (stable for a given answer, distinct
//! across turns). A call's `thoughtSignature` must come back on that `functionCall` part or Gemini 3
//! rejects the next turn, and OpenAI clients echo only the standard fields, so it rides inside the
//! id: `call_<responseId>_<n>__ts__<signature>` with the base64 alphabet made URL-safe
//! (`+`→`-`, `/`→`_`, `=`→`.`; a signature outside the standard base64 alphabet is hex-encoded
//! after `__th__` instead). Signatures on text parts (Gemini 3 puts one on the final, often empty,
//! text part) are dropped: the thought-signatures guide validates them only on function calls and
//! says omitting others only may lower quality.
//!
//! `finishReason` STOP → `stop` (`tool_calls` when calls were emitted), MAX_TOKENS → `length`,
//! SAFETY / RECITATION / BLOCKLIST / PROHIBITED_CONTENT / SPII / IMAGE_SAFETY and a prompt
//! `blockReason` → `content_filter`, anything else (OTHER, MALFORMED_FUNCTION_CALL, ...) → `stop`.
//! Usage: `prompt_tokens` = `promptTokenCount` (includes `cachedContentTokenCount`) +
//! `toolUsePromptTokenCount`; `completion_tokens` = `candidatesTokenCount` + `thoughtsTokenCount`;
//! `reasoning_tokens` = `thoughtsTokenCount`; `cached_tokens` = `cachedContentTokenCount`.
//!
//! Vertex AI can stream a call's arguments as `partialArgs [{jsonPath, stringValue|numberValue|
//! boolValue|nullValue, willContinue}]` between a `functionCall {name, willContinue: true}` and a
//! terminating `functionCall {}`. The arguments are assembled (bounded by `max_event`) and the call
//! is sent to the client whole when it completes, like AI Studio sends it.
//!
//! The chunk/completion id is the gateway's `ResponseOptions::id` (Gemini's `responseId` is not in
//! OpenAI's id format and the gateway logs by its own id).

use super::{
    completion, finish, parse_object, unsupported, ChunkWriter, Message, RequestOptions, ResponseOptions,
    StreamTranscoder, ToolCall, Translated, UpstreamRequest,
};
use crate::sse::SseReader;
use crate::usage::Usage;
use crate::ApiError;
use serde_json::{json, Map, Value};

const PROVIDER: &str = "Gemini";
/// Separates the generated call id from the URL-safe base64 thought signature.
const SIG_MARK: &str = "__ts__";
/// Separates the generated call id from a hex-encoded signature (non-base64 alphabet).
const SIG_HEX_MARK: &str = "__th__";

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// The client's Chat Completions body → a Gemini `generateContent` request.
pub fn request(body: &[u8], opts: &RequestOptions<'_>) -> Result<UpstreamRequest, ApiError> {
    let req = parse_object(body)?;
    let mut out = Map::new();
    let mut gen = Map::new();
    let mut tools: Option<Value> = None;
    let mut tool_choice: Option<&Value> = None;

    for (key, value) in &req {
        if value.is_null() {
            continue;
        }
        let k = key.as_str();
        match k {
            "model"
            | "messages"
            | "stream"
            | "stream_options"
            | "store"
            | "metadata"
            | "service_tier"
            | "user"
            | "parallel_tool_calls"
            | "prompt_cache_key"
            | "safety_identifier" => {}
            "temperature" => insert_number(&mut gen, "temperature", value, k)?,
            "top_p" => insert_number(&mut gen, "topP", value, k)?,
            "top_k" => insert_number(&mut gen, "topK", value, k)?,
            "presence_penalty" => insert_number(&mut gen, "presencePenalty", value, k)?,
            "frequency_penalty" => insert_number(&mut gen, "frequencyPenalty", value, k)?,
            "seed" => {
                let seed = value.as_i64().ok_or_else(|| invalid(k, "must be an integer"))?;
                gen.insert("seed".into(), json!(seed));
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| invalid(k, "must be a positive integer"))?;
                // `max_completion_tokens` is the current name; it wins over the legacy one.
                if k == "max_completion_tokens" || req.get("max_completion_tokens").is_none_or(Value::is_null) {
                    gen.insert("maxOutputTokens".into(), json!(n));
                }
            }
            "stop" => {
                let stops: Vec<Value> = match value {
                    Value::String(s) => vec![json!(s)],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => return Err(invalid(k, "must be a string or an array of strings")),
                };
                if !stops.is_empty() {
                    gen.insert("stopSequences".into(), Value::Array(stops));
                }
            }
            "n" => {
                let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| invalid(k, "must be a positive integer"))?;
                if n > 1 {
                    if opts.stream {
                        return Err(unsupported(
                            k,
                            PROVIDER,
                            "more than one choice is only supported without `stream`",
                        ));
                    }
                    gen.insert("candidateCount".into(), json!(n));
                }
            }
            "response_format" => response_format(value, &mut gen)?,
            "reasoning_effort" => {
                let effort = value.as_str().unwrap_or_default();
                let budget = match effort {
                    "none" => 0,
                    "minimal" => 512,
                    "low" => 1024,
                    "medium" => 8192,
                    "high" => 24576,
                    _ => return Err(invalid(k, "must be one of none, minimal, low, medium, high")),
                };
                gen.insert("thinkingConfig".into(), json!({"thinkingBudget": budget, "includeThoughts": budget > 0}));
            }
            "tools" => tools = function_declarations(value)?,
            "tool_choice" => tool_choice = Some(value),
            "logprobs" => {
                if value.as_bool() != Some(false) {
                    return Err(unsupported(k, PROVIDER, "log probabilities are not translated"));
                }
            }
            "logit_bias" => {
                if !value.as_object().is_some_and(Map::is_empty) {
                    return Err(unsupported(k, PROVIDER, "Gemini has no token bias"));
                }
            }
            "modalities" => {
                if value != &json!(["text"]) {
                    return Err(unsupported(k, PROVIDER, "only text output is translated"));
                }
            }
            "top_logprobs" | "audio" | "prediction" | "web_search_options" | "verbosity" => {
                return Err(unsupported(k, PROVIDER, "no equivalent in generateContent"));
            }
            "functions" | "function_call" => {
                return Err(unsupported(k, PROVIDER, "legacy function calling is not translated; use `tools`"));
            }
            _ => return Err(unsupported(k, PROVIDER, "unknown field")),
        }
    }

    let messages =
        req.get("messages").and_then(Value::as_array).ok_or_else(|| invalid("messages", "must be an array"))?;
    let (system, contents) = contents(messages)?;
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    out.insert("contents".into(), Value::Array(contents));
    match (tools, tool_choice) {
        (Some(decls), choice) => {
            out.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
            if let Some(choice) = choice {
                out.insert("toolConfig".into(), json!({ "functionCallingConfig": function_calling_config(choice)? }));
            }
        }
        (None, Some(choice)) => {
            // Without tools `none`/`auto` mean what they say; forcing a call cannot be honoured.
            if !matches!(choice.as_str(), Some("none" | "auto")) {
                return Err(invalid("tool_choice", "requires `tools`"));
            }
        }
        (None, None) => {}
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }

    let model = escape_path_segment(opts.model.strip_prefix("models/").unwrap_or(opts.model));
    let path = if opts.stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    };
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(UpstreamRequest { path, body, headers: Vec::new() })
}

fn invalid(param: &str, why: &str) -> ApiError {
    ApiError::bad_request("invalid_value", format!("`{param}` {why}")).with_param(param)
}

fn insert_number(gen: &mut Map<String, Value>, name: &str, value: &Value, param: &str) -> Result<(), ApiError> {
    if !value.is_number() {
        return Err(invalid(param, "must be a number"));
    }
    gen.insert(name.into(), value.clone());
    Ok(())
}

/// Percent-escape everything outside RFC 3986's unreserved set (a model id is one path segment).
fn escape_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn response_format(value: &Value, gen: &mut Map<String, Value>) -> Result<(), ApiError> {
    let param = "response_format";
    match value.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let schema = value
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| invalid("response_format.json_schema.schema", "must be a JSON Schema object"))?;
            gen.insert("responseMimeType".into(), json!("application/json"));
            gen.insert("responseJsonSchema".into(), schema.clone());
        }
        _ => return Err(invalid(param, "type must be text, json_object or json_schema")),
    }
    Ok(())
}

fn function_declarations(value: &Value) -> Result<Option<Value>, ApiError> {
    let tools = value.as_array().ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut decls = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(&format!("tools[{i}].type"), PROVIDER, "only function tools are translated"));
        }
        let f = tool.get("function").ok_or_else(|| invalid(&format!("tools[{i}].function"), "is required"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("tools[{i}].function.name"), "must be a string"))?;
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if let Some(desc) = f.get("description").and_then(Value::as_str) {
            d.insert("description".into(), json!(desc));
        }
        match f.get("parameters") {
            None | Some(Value::Null) => {}
            Some(p @ Value::Object(_)) => {
                d.insert("parametersJsonSchema".into(), p.clone());
            }
            Some(_) => return Err(invalid(&format!("tools[{i}].function.parameters"), "must be a JSON Schema object")),
        }
        decls.push(Value::Object(d));
    }
    Ok((!decls.is_empty()).then_some(Value::Array(decls)))
}

fn function_calling_config(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"mode": "AUTO"})),
            "none" => Ok(json!({"mode": "NONE"})),
            "required" => Ok(json!({"mode": "ANY"})),
            _ => Err(invalid("tool_choice", "must be auto, none, required or a named function")),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name", "must be a string"))?;
            Ok(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
        }
        _ => Err(unsupported("tool_choice", PROVIDER, "only auto, none, required and a named function are translated")),
    }
}

/// A `contents` turn being built.
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

/// Messages → (`systemInstruction` parts, `contents`).
fn contents(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    // (full OpenAI id, function name) of every assistant tool call so far, for tool results.
    let mut calls: Vec<(String, String)> = Vec::new();

    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content").unwrap_or(&Value::Null);
        let (turn_role, parts) = match role {
            "system" | "developer" => {
                system.extend(text_parts(content, &format!("messages[{i}].content"))?);
                continue;
            }
            "user" => ("user", user_parts(content, i)?),
            "assistant" => ("model", assistant_parts(m, i, &mut calls)?),
            "tool" => {
                let param = format!("messages[{i}].tool_call_id");
                let id = m.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| invalid(&param, "is required"))?;
                let name = call_name(&calls, id).ok_or_else(|| {
                    invalid(
                        &param,
                        "does not match a tool call of an earlier assistant message (Gemini needs its name)",
                    )
                })?;
                ("user", vec![function_response(name, content, i)?])
            }
            "function" => {
                let param = format!("messages[{i}].name");
                let name = m.get("name").and_then(Value::as_str).ok_or_else(|| invalid(&param, "is required"))?;
                ("user", vec![function_response(name, content, i)?])
            }
            _ => return Err(invalid(&format!("messages[{i}].role"), "is not a known role")),
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == turn_role => last.parts.extend(parts),
            _ => turns.push(Turn { role: turn_role, parts }),
        }
    }
    let contents = turns.into_iter().map(|t| json!({"role": t.role, "parts": t.parts})).collect();
    Ok((system, contents))
}

/// The function name of the nearest earlier call with this id (ids may repeat across turns). A
/// client that kept only the id's base (before the signature) still matches.
fn call_name<'a>(calls: &'a [(String, String)], id: &str) -> Option<&'a str> {
    let base = split_call_id(id).0;
    calls
        .iter()
        .rev()
        .find(|(cid, _)| cid == id)
        .or_else(|| calls.iter().rev().find(|(cid, _)| split_call_id(cid).0 == base))
        .map(|(_, name)| name.as_str())
}

/// Text-only content (system, assistant, tool): a string or an array of text/refusal parts.
fn text_parts(content: &Value, param: &str) -> Result<Vec<Value>, ApiError> {
    Ok(content_text(content, param)?.into_iter().filter(|t| !t.is_empty()).map(|t| json!({ "text": t })).collect())
}

fn content_text(content: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| invalid(&format!("{param}[{j}].text"), "must be a string")),
                Some("refusal") => Ok(p.get("refusal").and_then(Value::as_str).unwrap_or_default().to_string()),
                _ => Err(unsupported(&format!("{param}[{j}].type"), PROVIDER, "only text parts are allowed here")),
            })
            .collect(),
        _ => Err(invalid(param, "must be a string or an array of content parts")),
    }
}

fn user_parts(content: &Value, i: usize) -> Result<Vec<Value>, ApiError> {
    let param = format!("messages[{i}].content");
    let Value::Array(parts) = content else {
        return text_parts(content, &param);
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let here = format!("{param}[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text =
                    p.get("text").and_then(Value::as_str).ok_or_else(|| invalid(&here, "text must be a string"))?;
                if !text.is_empty() {
                    out.push(json!({ "text": text }));
                }
            }
            Some("image_url") => {
                let iu = p.get("image_url").unwrap_or(&Value::Null);
                let url = iu.get("url").and_then(Value::as_str).or_else(|| iu.as_str());
                let url = url.ok_or_else(|| invalid(&format!("{here}.image_url.url"), "must be a string"))?;
                out.push(image_part(url, &format!("{here}.image_url.url"))?);
            }
            Some("input_audio") => {
                let a = p.get("input_audio").unwrap_or(&Value::Null);
                let data = a.get("data").and_then(Value::as_str);
                let data = data.ok_or_else(|| invalid(&format!("{here}.input_audio.data"), "must be base64 text"))?;
                let mime = match a.get("format").and_then(Value::as_str) {
                    Some("wav") => "audio/wav",
                    Some("mp3") => "audio/mp3",
                    _ => return Err(invalid(&format!("{here}.input_audio.format"), "must be wav or mp3")),
                };
                out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
            }
            Some("file") => {
                let f = p.get("file").unwrap_or(&Value::Null);
                let Some(data) = f.get("file_data").and_then(Value::as_str) else {
                    return Err(unsupported(
                        &format!("{here}.file"),
                        PROVIDER,
                        "only inline `file_data` is translated",
                    ));
                };
                let (mime, b64) = parse_data_url(data).ok_or_else(|| {
                    invalid(&format!("{here}.file.file_data"), "must be a base64 data URL (data:<mime>;base64,...)")
                })?;
                out.push(json!({"inlineData": {"mimeType": mime, "data": b64}}));
            }
            _ => return Err(unsupported(&format!("{here}.type"), PROVIDER, "unknown content part type")),
        }
    }
    Ok(out)
}

/// `data:<mime>;base64,<data>` → (mime, data).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    (!mime.is_empty()).then_some((mime, data))
}

fn image_part(url: &str, param: &str) -> Result<Value, ApiError> {
    if url.starts_with("data:") {
        let (mime, data) =
            parse_data_url(url).ok_or_else(|| invalid(param, "must be a base64 data URL (data:<mime>;base64,...)"))?;
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(unsupported(param, PROVIDER, "only data URLs and http(s) URLs are translated"));
    }
    // Gemini's `fileData.mimeType` is required; the extension is all a gateway knows without
    // fetching the image itself.
    let path = lower.split(['?', '#']).next().unwrap_or_default();
    let ext = path.rsplit('.').next().unwrap_or_default();
    let mime = match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "gif" => "image/gif",
        _ => {
            return Err(unsupported(
                param,
                PROVIDER,
                "Gemini needs the image's MIME type and the URL has no known image extension (png, jpg, jpeg, webp, heic, heif, gif); send a data URL",
            ))
        }
    };
    Ok(json!({"fileData": {"fileUri": url, "mimeType": mime}}))
}

fn assistant_parts(m: &Value, i: usize, calls: &mut Vec<(String, String)>) -> Result<Vec<Value>, ApiError> {
    let mut parts = text_parts(m.get("content").unwrap_or(&Value::Null), &format!("messages[{i}].content"))?;
    if m.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(&format!("messages[{i}].function_call"), PROVIDER, "use `tool_calls`"));
    }
    let Some(tool_calls) = m.get("tool_calls").filter(|v| !v.is_null()) else {
        return Ok(parts);
    };
    let tool_calls =
        tool_calls.as_array().ok_or_else(|| invalid(&format!("messages[{i}].tool_calls"), "must be an array"))?;
    for (j, tc) in tool_calls.iter().enumerate() {
        let here = format!("messages[{i}].tool_calls[{j}]");
        let f = tc.get("function").unwrap_or(&Value::Null);
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("{here}.function.name"), "must be a string"))?;
        let args_text = f.get("arguments").and_then(Value::as_str).unwrap_or_default();
        let args: Value = if args_text.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args_text)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| invalid(&format!("{here}.function.arguments"), "must be a JSON object"))?
        };
        let id = tc.get("id").and_then(Value::as_str).unwrap_or_default();
        let signature = decode_signature(id).map_err(|why| invalid(&format!("{here}.id"), why))?;
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        if let Some(sig) = signature {
            part["thoughtSignature"] = json!(sig);
        }
        parts.push(part);
        calls.push((id.to_string(), name.to_string()));
    }
    Ok(parts)
}

/// A tool result → `functionResponse`. Gemini's `response` must be an object.
fn function_response(name: &str, content: &Value, i: usize) -> Result<Value, ApiError> {
    let text = content_text(content, &format!("messages[{i}].content"))?.concat();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(obj @ Value::Object(_)) => obj,
        Ok(other) => json!({ "result": other }),
        Err(_) => json!({ "result": text }),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

// ---------------------------------------------------------------------------------------------
// Tool call ids carrying thought signatures
// ---------------------------------------------------------------------------------------------

/// `call_<prefix>_<n>` plus the signature, URL- and JSON-safe.
fn call_id(prefix: &str, n: u32, signature: Option<&str>) -> String {
    let mut id = format!("call_{prefix}_{n}");
    if let Some(sig) = signature.filter(|s| !s.is_empty()) {
        if sig.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
            id.push_str(SIG_MARK);
            id.extend(sig.chars().map(|c| match c {
                '+' => '-',
                '/' => '_',
                '=' => '.',
                c => c,
            }));
        } else {
            id.push_str(SIG_HEX_MARK);
            id.push_str(&hex::encode(sig));
        }
    }
    id
}

/// (the id without the signature, the encoded signature part if any).
fn split_call_id(id: &str) -> (&str, Option<(&'static str, &str)>) {
    for mark in [SIG_MARK, SIG_HEX_MARK] {
        if let Some((base, sig)) = id.split_once(mark) {
            return (base, Some((mark, sig)));
        }
    }
    (id, None)
}

/// The thought signature a tool call id carries, if any.
fn decode_signature(id: &str) -> Result<Option<String>, &'static str> {
    match split_call_id(id).1 {
        None => Ok(None),
        Some((SIG_MARK, sig)) => Ok(Some(
            sig.chars()
                .map(|c| match c {
                    '-' => '+',
                    '_' => '/',
                    '.' => '=',
                    c => c,
                })
                .collect(),
        )),
        Some((_, hexed)) => hex::decode(hexed)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or("carries a malformed thought signature"),
    }
}

/// The id prefix for generated call ids: the answer's `responseId` (stable for one answer,
/// distinct across turns), else the gateway's id; alphanumerics only so the markers stay unique.
fn id_prefix(response_id: Option<&str>, fallback: &str) -> String {
    let p: String = response_id.unwrap_or(fallback).chars().filter(char::is_ascii_alphanumeric).take(64).collect();
    if p.is_empty() {
        "gemini".into()
    } else {
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// `usageMetadata` → [`Usage`] (also used to meter native pass-through answers).
pub(crate) fn usage_of(meta: &Value) -> Usage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    let prompt = n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount"));
    let completion = n("candidatesTokenCount").saturating_add(thoughts);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        cached_tokens: n("cachedContentTokenCount"),
        reasoning_tokens: thoughts,
        cache_write_tokens: 0,
    }
}

/// Gemini `finishReason` → OpenAI, before the tool-call adjustment.
fn map_finish(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => finish::LENGTH,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            finish::CONTENT_FILTER
        }
        _ => finish::STOP,
    }
}

fn final_finish(reason: &'static str, tool_calls: bool) -> &'static str {
    if reason == finish::STOP && tool_calls {
        finish::TOOL_CALLS
    } else {
        reason
    }
}

fn invalid_upstream(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_gateway("invalid_upstream_response", format!("Gemini sent an unreadable answer: {why}"))
}

fn parts_of(candidate: &Value) -> &[Value] {
    candidate.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A whole `generateContent` answer → `chat.completion` (one choice per candidate).
pub fn response(body: &[u8], opts: &ResponseOptions) -> Result<Translated, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(invalid_upstream)?;
    let obj = v.as_object().ok_or_else(|| invalid_upstream("not a JSON object"))?;
    if let Some(e) = obj.get("error") {
        return Err(error_from_value(e, body, None));
    }
    let usage = obj.get("usageMetadata").map(usage_of);
    let prefix = id_prefix(obj.get("responseId").and_then(Value::as_str), &opts.id);
    let mut candidates: Vec<&Value> =
        obj.get("candidates").and_then(Value::as_array).map(|c| c.iter().collect()).unwrap_or_default();
    candidates.sort_by_key(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0));

    let mut n_calls = 0u32;
    let mut choices: Vec<(Message, &'static str)> = Vec::with_capacity(candidates.len().max(1));
    for cand in candidates {
        let mut msg = Message::default();
        let (mut text, mut reasoning) = (None::<String>, None::<String>);
        for part in parts_of(cand) {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                let slot =
                    if part.get("thought").and_then(Value::as_bool) == Some(true) { &mut reasoning } else { &mut text };
                slot.get_or_insert_with(String::new).push_str(t);
            } else if let Some(fc) = part.get("functionCall") {
                let name = fc.get("name").and_then(Value::as_str).unwrap_or_default();
                let args = fc.get("args").filter(|a| !a.is_null()).cloned().unwrap_or_else(|| json!({}));
                let sig = part.get("thoughtSignature").and_then(Value::as_str);
                msg.tool_calls.push(ToolCall {
                    id: call_id(&prefix, n_calls, sig),
                    name: name.to_string(),
                    arguments: args.to_string(),
                });
                n_calls += 1;
            }
        }
        msg.content = match text {
            Some(t) => Some(t),
            None if msg.tool_calls.is_empty() => Some(String::new()),
            None => None,
        };
        msg.reasoning = reasoning;
        let reason = cand.get("finishReason").and_then(Value::as_str).map_or(finish::STOP, map_finish);
        let reason = final_finish(reason, !msg.tool_calls.is_empty());
        choices.push((msg, reason));
    }
    if choices.is_empty() {
        // No candidate: the prompt itself was blocked (`promptFeedback.blockReason`).
        let blocked = obj.get("promptFeedback").and_then(|p| p.get("blockReason")).is_some();
        let msg = Message { content: Some(String::new()), ..Default::default() };
        choices.push((msg, if blocked { finish::CONTENT_FILTER } else { finish::STOP }));
    }

    let mut body = match choices.first() {
        Some((msg, reason)) => completion(opts, msg, reason, usage.as_ref()),
        None => completion(opts, &Message::default(), finish::STOP, usage.as_ref()),
    };
    if choices.len() > 1 {
        let mut whole: Value = serde_json::from_slice(&body).map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(list) = whole.get_mut("choices").and_then(Value::as_array_mut) {
            for (index, (msg, reason)) in choices.iter().enumerate().skip(1) {
                let one: Value = serde_json::from_slice(&completion(opts, msg, reason, None)).unwrap_or_default();
                if let Some(mut choice) = one.get("choices").and_then(|c| c.get(0)).cloned() {
                    choice["index"] = json!(index);
                    list.push(choice);
                }
            }
        }
        body = serde_json::to_vec(&whole).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(Translated { body, usage })
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// A Vertex function call whose arguments arrive as `partialArgs`.
#[derive(Debug)]
struct PartialCall {
    name: String,
    signature: Option<String>,
    args: Value,
    /// Bytes of argument values accumulated (bounded by `max_event`).
    size: usize,
    /// The `jsonPath` of a string value still being continued.
    open_string: Option<String>,
}

enum Seg {
    Key(String),
    Index(usize),
}

/// `$`, `$.a.b`, `$.a[0]`, `$['a b']` → segments.
fn parse_json_path(path: &str) -> Option<Vec<Seg>> {
    let mut rest = path.strip_prefix('$')?;
    let mut segs = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            segs.push(Seg::Key(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            if let Some(q) = r.chars().next().filter(|c| *c == '\'' || *c == '"') {
                let inner = &r[1..];
                let close = inner.find(q)?;
                segs.push(Seg::Key(inner[..close].to_string()));
                rest = inner[close + 1..].strip_prefix(']')?;
            } else {
                let close = r.find(']')?;
                segs.push(Seg::Index(r[..close].parse().ok()?));
                rest = &r[close + 1..];
            }
        } else {
            return None;
        }
    }
    Some(segs)
}

/// The value at `path`, creating objects/arrays on the way. Arrays only grow by one element at a
/// time, so a hostile index cannot allocate.
fn slot<'a>(root: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = root;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => {
                if cur.is_null() {
                    *cur = Value::Object(Map::new());
                }
                cur.as_object_mut()?.entry(k.clone()).or_insert(Value::Null)
            }
            Seg::Index(i) => {
                if cur.is_null() {
                    *cur = Value::Array(Vec::new());
                }
                let arr = cur.as_array_mut()?;
                if *i == arr.len() {
                    arr.push(Value::Null);
                }
                arr.get_mut(*i)?
            }
        };
    }
    Some(cur)
}

impl PartialCall {
    fn apply(&mut self, partial_args: &[Value], max_event: usize) -> Result<(), ApiError> {
        for pa in partial_args {
            let path = pa.get("jsonPath").and_then(Value::as_str).unwrap_or("$");
            let segs =
                parse_json_path(path).ok_or_else(|| invalid_upstream(format!("bad partialArgs jsonPath {path:?}")))?;
            let target = slot(&mut self.args, &segs)
                .ok_or_else(|| invalid_upstream(format!("partialArgs jsonPath {path:?} does not fit the arguments")))?;
            let continues = pa.get("willContinue").and_then(Value::as_bool) == Some(true);
            if let Some(s) = pa.get("stringValue").and_then(Value::as_str) {
                self.size += s.len();
                match target {
                    Value::String(existing) if self.open_string.as_deref() == Some(path) => existing.push_str(s),
                    _ => *target = json!(s),
                }
                self.open_string = continues.then(|| path.to_string());
            } else {
                self.open_string = None;
                self.size += 8;
                if let Some(n) = pa.get("numberValue").filter(|n| n.is_number()) {
                    *target = n.clone();
                } else if let Some(b) = pa.get("boolValue").and_then(Value::as_bool) {
                    *target = json!(b);
                } else {
                    *target = Value::Null;
                }
            }
            if self.size > max_event {
                return Err(ApiError::bad_gateway(
                    "upstream_event_too_large",
                    format!("Gemini streamed function arguments beyond {max_event} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// Incremental `streamGenerateContent?alt=sse` → `chat.completion.chunk` transcoder.
#[derive(Debug)]
pub struct GeminiStream {
    reader: SseReader,
    state: StreamState,
}

#[derive(Debug)]
struct StreamState {
    writer: ChunkWriter,
    max_event: usize,
    usage: Option<Usage>,
    /// The mapped finish reason once Gemini sent one (or blocked the prompt).
    finish: Option<&'static str>,
    tool_calls: u32,
    prefix: Option<String>,
    partial: Option<PartialCall>,
    /// The first error; the stream is dead after it.
    failed: Option<ApiError>,
    ended: bool,
}

/// A transcoder for one Gemini stream.
pub fn stream(opts: ResponseOptions) -> GeminiStream {
    GeminiStream {
        reader: SseReader::new(opts.max_event),
        state: StreamState {
            max_event: opts.max_event,
            writer: ChunkWriter::new(opts),
            usage: None,
            finish: None,
            tool_calls: 0,
            prefix: None,
            partial: None,
            failed: None,
            ended: false,
        },
    }
}

impl StreamState {
    fn event(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), ApiError> {
        if data.trim().is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(invalid_upstream)?;
        let obj = v.as_object().ok_or_else(|| invalid_upstream("stream event is not a JSON object"))?;
        if let Some(e) = obj.get("error") {
            return Err(error_from_value(e, data.as_bytes(), None));
        }
        if self.prefix.is_none() {
            let fallback = self.writer.options().id.clone();
            self.prefix = Some(id_prefix(obj.get("responseId").and_then(Value::as_str), &fallback));
        }
        if let Some(u) = obj.get("usageMetadata") {
            self.usage = Some(usage_of(u));
        }
        if obj.get("promptFeedback").and_then(|p| p.get("blockReason")).is_some() {
            self.finish = Some(finish::CONTENT_FILTER);
        }
        let candidates = obj.get("candidates").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        // `n > 1` is refused for streams, so only candidate 0 exists.
        for cand in candidates.iter().filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) {
            self.writer.start(out);
            for part in parts_of(cand) {
                self.part(part, out)?;
            }
            if let Some(reason) = cand.get("finishReason").and_then(Value::as_str) {
                self.close_partial(out);
                self.finish = Some(map_finish(reason));
            }
        }
        Ok(())
    }

    fn part(&mut self, part: &Value, out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                self.writer.reasoning(out, t);
            } else {
                self.writer.content(out, t);
            }
            return Ok(());
        }
        let Some(fc) = part.get("functionCall") else {
            return Ok(());
        };
        let name = fc.get("name").and_then(Value::as_str);
        let continues = fc.get("willContinue").and_then(Value::as_bool) == Some(true);
        let signature = part.get("thoughtSignature").and_then(Value::as_str).map(str::to_string);
        if let Some(name) = name {
            // A new call closes the one being streamed.
            self.close_partial(out);
            let args = fc.get("args").filter(|a| a.is_object()).cloned().unwrap_or_else(|| json!({}));
            if !continues {
                self.emit_call(out, name, &args.to_string(), signature.as_deref());
                return Ok(());
            }
            self.partial = Some(PartialCall { name: name.to_string(), signature, args, size: 0, open_string: None });
        }
        if let Some(partial) = self.partial.as_mut() {
            if let Some(pa) = fc.get("partialArgs").and_then(Value::as_array) {
                partial.apply(pa, self.max_event)?;
            }
            if !continues {
                self.close_partial(out);
            }
        }
        Ok(())
    }

    fn close_partial(&mut self, out: &mut Vec<u8>) {
        if let Some(p) = self.partial.take() {
            self.emit_call(out, &p.name, &p.args.to_string(), p.signature.as_deref());
        }
    }

    fn emit_call(&mut self, out: &mut Vec<u8>, name: &str, args: &str, signature: Option<&str>) {
        let prefix = self.prefix.as_deref().unwrap_or("gemini");
        let id = call_id(prefix, self.tool_calls, signature);
        self.tool_calls += 1;
        self.writer.tool_call_start(out, &id, name, args);
    }
}

impl GeminiStream {
    /// Bytes held between calls (SSE buffer + streamed arguments), for the memory-bound tests.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.reader.buffered() + self.state.partial.as_ref().map_or(0, |p| p.size)
    }

    fn fail(&mut self, e: ApiError) -> Result<(), ApiError> {
        self.state.failed = Some(e.clone());
        Err(e)
    }
}

fn sse_error(e: crate::sse::SseError) -> ApiError {
    ApiError::bad_gateway("invalid_upstream_stream", format!("Gemini stream: {e}"))
}

impl StreamTranscoder for GeminiStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(e) = &self.state.failed {
            return Err(e.clone());
        }
        let state = &mut self.state;
        let mut err = None;
        let r = self.reader.feed(chunk, &mut |ev| {
            if err.is_none() {
                err = state.event(&ev.data, out).err();
            }
        });
        match (err, r) {
            (Some(e), _) => self.fail(e),
            (None, Err(e)) => self.fail(sse_error(e)),
            (None, Ok(())) => Ok(()),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        if let Some(e) = &self.state.failed {
            return Err(e.clone());
        }
        if self.state.ended {
            return Ok(());
        }
        let state = &mut self.state;
        let mut err = None;
        let r = self.reader.finish(&mut |ev| {
            if err.is_none() {
                err = state.event(&ev.data, out).err();
            }
        });
        match (err, r) {
            (Some(e), _) => return self.fail(e),
            (None, Err(e)) => return self.fail(sse_error(e)),
            (None, Ok(())) => {}
        }
        let Some(reason) = self.state.finish else {
            return self.fail(ApiError::bad_gateway(
                "upstream_stream_truncated",
                "the Gemini stream ended before a finishReason",
            ));
        };
        let state = &mut self.state;
        state.close_partial(out);
        state.writer.finish(out, final_finish(reason, state.tool_calls > 0));
        state.writer.done(out, state.usage.as_ref());
        state.ended = true;
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.state.usage
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An upstream non-2xx answer → the OpenAI error shape.
pub fn error(status: u16, body: &[u8], retry_after: Option<&str>) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // REST errors are `{"error":{...}}`; some endpoints wrap them in a one-element array.
    let inner = parsed.as_ref().and_then(|v| v.get("error").or_else(|| v.get(0).and_then(|e| e.get("error"))));
    match inner {
        Some(e) => classify(status, e, body, retry_after),
        None => classify(status, &Value::Null, body, retry_after),
    }
}

/// An `error` object found inside a 200 body or a stream event.
fn error_from_value(e: &Value, raw: &[u8], retry_after: Option<&str>) -> ApiError {
    let status = e.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(502);
    classify(status, e, raw, retry_after)
}

fn classify(status: u16, e: &Value, raw: &[u8], retry_after: Option<&str>) -> ApiError {
    let message = e.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() {
            format!("Gemini answered HTTP {status}")
        } else {
            format!("Gemini answered HTTP {status}: {}", text.chars().take(500).collect::<String>())
        }
    });
    let rpc = e.get("status").and_then(Value::as_str).unwrap_or_default();
    let details = e.get("details").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    // Google reports a bad key as 400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID.
    let key_problem =
        details.iter().any(|d| d.get("reason").and_then(Value::as_str).is_some_and(|r| r.starts_with("API_KEY_")));
    let retry = retry_after.and_then(parse_retry_after).or_else(|| retry_delay(details));

    if key_problem || matches!(rpc, "PERMISSION_DENIED" | "UNAUTHENTICATED") || matches!(status, 401 | 403) {
        return ApiError::bad_gateway(
            "upstream_auth_failed",
            format!("Gemini rejected the gateway's credentials (HTTP {status}); the provider's message is not passed on, as it may quote the key"),
        );
    }
    let err = match (rpc, status) {
        ("RESOURCE_EXHAUSTED", _) | (_, 429) => {
            ApiError::new(429, "rate_limit_error", Some("rate_limit_exceeded"), message)
        }
        ("UNAVAILABLE", _) | (_, 503) => ApiError::unavailable("upstream_unavailable", message),
        ("DEADLINE_EXCEEDED", _) | (_, 504) => ApiError::gateway_timeout(message),
        ("NOT_FOUND", _) | (_, 404) => ApiError::new(404, "invalid_request_error", Some("not_found"), message),
        ("INVALID_ARGUMENT", _) => ApiError::bad_request("invalid_argument", message),
        ("FAILED_PRECONDITION", _) => ApiError::bad_request("failed_precondition", message),
        ("OUT_OF_RANGE", _) => ApiError::bad_request("out_of_range", message),
        (_, 400) => ApiError::bad_request("invalid_request", message),
        (_, 413) => ApiError::new(413, "invalid_request_error", Some("request_too_large"), message),
        (_, 422) => ApiError::new(422, "invalid_request_error", Some("unprocessable_entity"), message),
        _ => ApiError::bad_gateway("upstream_error", message),
    };
    match retry {
        Some(secs) if matches!(err.status, 429 | 503) => err.with_retry_after(secs),
        _ => err,
    }
}

/// `Retry-After` in delta-seconds (fractions rounded up).
fn parse_retry_after(v: &str) -> Option<u64> {
    parse_seconds(v.trim())
}

fn parse_seconds(v: &str) -> Option<u64> {
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil().min(u64::MAX as f64) as u64)
}

/// `google.rpc.RetryInfo.retryDelay` ("34.4s") in whole seconds, rounded up.
fn retry_delay(details: &[Value]) -> Option<u64> {
    details
        .iter()
        .filter(|d| d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("google.rpc.RetryInfo")))
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str)?.strip_suffix('s').and_then(parse_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseReader;
    use crate::testutil::{random_sizes, random_splits, Rng};

    const TEXT_JSON: &[u8] = include_bytes!("../../../fixtures/gemini/generate-content-text.json");
    const TOOL_JSON: &[u8] = include_bytes!("../../../fixtures/gemini/generate-content-tool-call.json");
    const STREAM_TEXT: &[u8] = include_bytes!("../../../fixtures/gemini/stream-text.sse");
    const STREAM_THINKING: &[u8] = include_bytes!("../../../fixtures/gemini/stream-thinking.sse");
    const STREAM_TOOL: &[u8] = include_bytes!("../../../fixtures/gemini/stream-tool-call.sse");
    const STREAM_TOOL_SIG: &[u8] = include_bytes!("../../../fixtures/gemini/stream-tool-call-thought-signature.sse");
    const CHUNKS_TEXT: &str = include_str!("../../../fixtures/gemini/stream-text.chunks.txt");
    const CHUNKS_VERTEX: &str = include_str!("../../../fixtures/gemini/vertex-stream-partial-function-args.chunks.txt");
    const ERR_429: &[u8] = include_bytes!("../../../fixtures/gemini/error-429-resource-exhausted.json");
    const ERR_404: &[u8] = include_bytes!("../../../fixtures/gemini/error-404-model-not-found.json");

    fn ropts(include_usage: bool) -> ResponseOptions {
        ResponseOptions {
            id: "chatcmpl-test".into(),
            created: 7,
            model: "gemini-x".into(),
            include_usage,
            max_event: 1 << 20,
        }
    }

    /// A `.chunks.txt` fixture (one JSON payload per line) in Gemini's CRLF SSE framing.
    fn chunks_to_sse(chunks: &str) -> Vec<u8> {
        chunks
            .lines()
            .filter(|l| !l.trim().is_empty())
            .flat_map(|l| format!("data: {l}\r\n\r\n").into_bytes())
            .collect()
    }

    /// The provider's own payloads, parsed independently of the transcoder.
    fn fixture_payloads(sse: &[u8]) -> Vec<Value> {
        String::from_utf8(sse.to_vec())
            .unwrap()
            .split("\r\n\r\n")
            .filter_map(|b| b.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn run(input: &[u8], pieces: &[usize], opts: ResponseOptions) -> (Vec<u8>, Result<(), ApiError>, Option<Usage>) {
        let mut t = stream(opts);
        let mut out = Vec::new();
        let mut rest = input;
        for &n in pieces {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(n.min(rest.len()));
            if let Err(e) = t.feed(a, &mut out) {
                return (out, Err(e), t.usage());
            }
            rest = b;
        }
        if !rest.is_empty() {
            if let Err(e) = t.feed(rest, &mut out) {
                return (out, Err(e), t.usage());
            }
        }
        let r = t.finish(&mut out);
        (out, r, t.usage())
    }

    #[derive(Debug, Default)]
    struct Seen {
        content: String,
        reasoning: String,
        calls: Vec<(String, String, String)>,
        finish: Option<String>,
        usage: Option<Value>,
        events: usize,
        done: bool,
    }

    fn decode_output(out: &[u8]) -> Seen {
        let mut datas = Vec::new();
        SseReader::new(1 << 24).feed(out, &mut |e| datas.push(e.data)).unwrap();
        let mut seen = Seen::default();
        for d in datas {
            seen.events += 1;
            if d == "[DONE]" {
                seen.done = true;
                continue;
            }
            let v: Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["id"], "chatcmpl-test");
            if v["usage"].is_object() {
                seen.usage = Some(v["usage"].clone());
            }
            let Some(c) = v["choices"].get(0) else { continue };
            let delta = &c["delta"];
            seen.content.push_str(delta["content"].as_str().unwrap_or_default());
            seen.reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
            for tc in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(i, seen.calls.len());
                    seen.calls.push((id.into(), tc["function"]["name"].as_str().unwrap().into(), String::new()));
                }
                seen.calls[i].2.push_str(tc["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(seen.finish.is_none(), "one finish chunk");
                seen.finish = Some(f.into());
            }
        }
        seen
    }

    /// Whole, 1-byte and many random splits give byte-identical output; returns it decoded.
    fn golden(input: &[u8], include_usage: bool) -> (Seen, Option<Usage>) {
        let (whole, r, usage) = run(input, &[], ropts(include_usage));
        r.unwrap();
        let ones = vec![1; input.len()];
        assert_eq!(run(input, &ones, ropts(include_usage)).0, whole, "1-byte feeding");
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ input.len() as u64);
        for _ in 0..200 {
            let pieces = random_sizes(input.len(), &mut rng, 64);
            let (out, r, u) = run(input, &pieces, ropts(include_usage));
            r.unwrap();
            assert_eq!(out, whole, "split {pieces:?}");
            assert_eq!(u, usage);
        }
        let seen = decode_output(&whole);
        assert!(seen.done && whole.ends_with(b"data: [DONE]\n\n"));
        (seen, usage)
    }

    /// Text and reasoning as the provider sent them, joined by the test.
    fn expected_text(payloads: &[Value]) -> (String, String) {
        let (mut text, mut thought) = (String::new(), String::new());
        for p in payloads {
            for part in p["candidates"][0]["content"]["parts"].as_array().into_iter().flatten() {
                if let Some(t) = part["text"].as_str() {
                    if part["thought"] == json!(true) {
                        thought.push_str(t)
                    } else {
                        text.push_str(t)
                    }
                }
            }
        }
        (text, thought)
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn req(v: Value) -> Value {
        let r = request(&body(v), &RequestOptions { model: "gemini-2.5-flash", stream: false }).unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }

    fn req_err(v: Value) -> ApiError {
        request(&body(v), &RequestOptions { model: "gemini-2.5-flash", stream: false }).unwrap_err()
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    // -- golden: whole responses -----------------------------------------------------------------

    #[test]
    fn golden_text_response() {
        let t = response(TEXT_JSON, &ropts(false)).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let fixture: Value = serde_json::from_slice(TEXT_JSON).unwrap();
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], fixture["candidates"][0]["content"]["parts"][0]["text"]);
        assert!(msg.get("tool_calls").is_none() && msg.get("reasoning_content").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["id"], "chatcmpl-test");
        let u = t.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.reasoning_tokens), (9, 28 + 244, 281, 244));
        assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 244);
        assert_eq!(v["usage"]["total_tokens"], fixture["usageMetadata"]["totalTokenCount"]);
    }

    #[test]
    fn golden_tool_call_response_and_signature_round_trip() {
        let t = response(TOOL_JSON, &ropts(false)).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let fixture: Value = serde_json::from_slice(TOOL_JSON).unwrap();
        let part = &fixture["candidates"][0]["content"]["parts"][0];
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let call = &msg["tool_calls"][0];
        assert_eq!(call["function"]["name"], "weather");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, part["functionCall"]["args"]);
        let id = call["id"].as_str().unwrap();
        assert!(id.starts_with("call_m36LaZGyCLz1xs0PtNSBQU_0__ts__"), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "URL-safe: {id}");
        let u = t.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (29, 15 + 893, 937));

        // An OpenAI client echoes only the standard fields; the signature comes back on the call.
        let history = json!({"model": "x", "messages": [
            user("weather in SF?"),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "weather", "arguments": call["function"]["arguments"]}}]},
            {"role": "tool", "tool_call_id": id, "content": "{\"temp\": 18}"},
        ]});
        let g = req(history);
        let model_turn = &g["contents"][1];
        assert_eq!(model_turn["role"], "model");
        assert_eq!(model_turn["parts"][0]["thoughtSignature"], part["thoughtSignature"]);
        assert_eq!(
            model_turn["parts"][0]["functionCall"],
            json!({"name": "weather", "args": {"location": "San Francisco"}})
        );
        assert_eq!(
            g["contents"][2],
            json!({"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"temp": 18}}}]})
        );
    }

    #[test]
    fn signature_outside_base64_alphabet_is_hex_encoded() {
        let sig = "a+b/c=d-e_f~\u{e9}";
        let id = call_id("p", 3, Some(sig));
        assert!(id.starts_with("call_p_3__th__"));
        assert_eq!(decode_signature(&id).unwrap().as_deref(), Some(sig));
        let b64 = "Ab+/9==";
        assert_eq!(decode_signature(&call_id("p", 0, Some(b64))).unwrap().as_deref(), Some(b64));
        assert_eq!(decode_signature("call_plain").unwrap(), None);
        assert!(decode_signature("call_x__th__zz").is_err());
        assert_eq!(call_id("p", 1, None), "call_p_1");
    }

    #[test]
    fn multiple_candidates_become_choices() {
        let b = json!({"candidates": [
            {"index": 1, "content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "MAX_TOKENS"},
            {"index": 0, "content": {"parts": [{"text": "A"}], "role": "model"}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}, "responseId": "r"});
        let v: Value = serde_json::from_slice(&response(&body(b), &ropts(false)).unwrap().body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "A");
        assert_eq!(v["choices"][1]["message"]["content"], "B");
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][1]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
    }

    #[test]
    fn finish_reasons_thoughts_and_blocked_prompt() {
        for (g, o) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let b = json!({"candidates": [{"content": {"parts": [{"text": "t"}]}, "finishReason": g}]});
            let v: Value = serde_json::from_slice(&response(&body(b), &ropts(false)).unwrap().body).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], o, "{g}");
        }
        let b = json!({"candidates": [{"content": {"parts": [{"text": "why", "thought": true}, {"text": "ans"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 5}});
        let t = response(&body(b), &ropts(false)).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "why");
        assert_eq!(v["choices"][0]["message"]["content"], "ans");
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            t.usage.unwrap(),
            Usage {
                prompt_tokens: 10,
                completion_tokens: 7,
                total_tokens: 17,
                cached_tokens: 4,
                reasoning_tokens: 5,
                cache_write_tokens: 0
            }
        );
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}});
        let v: Value = serde_json::from_slice(&response(&body(blocked), &ropts(false)).unwrap().body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(response(b"not json", &ropts(false)).unwrap_err().status, 502);
        assert_eq!(response(ERR_429, &ropts(false)).unwrap_err().status, 429);
    }

    // -- golden: streams -------------------------------------------------------------------------

    #[test]
    fn golden_stream_text() {
        let (seen, usage) = golden(STREAM_TEXT, true);
        let (text, thought) = expected_text(&fixture_payloads(STREAM_TEXT));
        assert_eq!(seen.content, text);
        assert_eq!(seen.content, "The capital of France is Paris.\n");
        assert_eq!(seen.reasoning, thought);
        assert_eq!(seen.finish.as_deref(), Some("stop"));
        let u = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (13, 8, 21));
        assert_eq!(seen.usage.unwrap()["total_tokens"], 21);
        // Without include_usage: no usage chunk, same content.
        let (no_usage, _) = golden(STREAM_TEXT, false);
        assert!(no_usage.usage.is_none());
        assert_eq!(no_usage.events, seen.events - 1);
    }

    #[test]
    fn golden_stream_thinking() {
        let (seen, usage) = golden(STREAM_THINKING, false);
        let payloads = fixture_payloads(STREAM_THINKING);
        let (text, thought) = expected_text(&payloads);
        assert!(!thought.is_empty() && !text.is_empty());
        assert_eq!(seen.reasoning, thought);
        assert_eq!(seen.content, text);
        let last = &payloads.last().unwrap()["usageMetadata"];
        let u = usage.unwrap();
        assert_eq!(u.reasoning_tokens, last["thoughtsTokenCount"].as_u64().unwrap());
        assert_eq!(u.prompt_tokens, last["promptTokenCount"].as_u64().unwrap());
        assert_eq!(seen.finish.as_deref(), Some("stop"));
    }

    #[test]
    fn golden_stream_tool_call() {
        let (seen, _) = golden(STREAM_TOOL, false);
        let fixture = &fixture_payloads(STREAM_TOOL)[0]["candidates"][0]["content"]["parts"][0]["functionCall"];
        assert_eq!(seen.calls.len(), 1);
        let (id, name, args) = &seen.calls[0];
        assert_eq!(id, "call_1lpeaMTxIpW1nvgPO3vwQY_0");
        assert_eq!(name, fixture["name"].as_str().unwrap());
        assert_eq!(serde_json::from_str::<Value>(args).unwrap(), fixture["args"]);
        assert_eq!(seen.finish.as_deref(), Some("tool_calls"));
        assert_eq!(seen.content, "");
    }

    #[test]
    fn golden_stream_tool_call_thought_signature() {
        let (seen, usage) = golden(STREAM_TOOL_SIG, true);
        let part = &fixture_payloads(STREAM_TOOL_SIG)[0]["candidates"][0]["content"]["parts"][0];
        let (id, name, args) = &seen.calls[0];
        assert_eq!(name, "get_country");
        assert_eq!(args, "{}");
        assert_eq!(decode_signature(id).unwrap().as_deref(), part["thoughtSignature"].as_str());
        assert_eq!(seen.finish.as_deref(), Some("tool_calls"));
        let u = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.total_tokens), (29, 212, 202, 241));
    }

    #[test]
    fn golden_stream_text_chunks_with_text_signature() {
        let sse = chunks_to_sse(CHUNKS_TEXT);
        let (seen, usage) = golden(&sse, false);
        let (text, _) = expected_text(&fixture_payloads(&sse));
        assert_eq!(seen.content, text);
        assert!(seen.calls.is_empty());
        assert_eq!(seen.finish.as_deref(), Some("stop"));
        assert_eq!(usage.unwrap().completion_tokens, 23 + 185);
        // The signature on the empty final text part is dropped, nothing else is emitted for it.
        assert!(!String::from_utf8(run(&sse, &[], ropts(false)).0).unwrap().contains("EqsFCqgF"));
    }

    #[test]
    fn golden_vertex_partial_function_args() {
        let sse = chunks_to_sse(CHUNKS_VERTEX);
        let (seen, usage) = golden(&sse, false);
        let payloads = fixture_payloads(&sse);
        // Expected, assembled by the test: each call opens with a name and its location string is
        // the concatenation of the stringValue pieces until the call's empty terminator.
        let mut expected: Vec<(String, String)> = Vec::new();
        for p in &payloads {
            let fc = &p["candidates"][0]["content"]["parts"][0]["functionCall"];
            if let Some(n) = fc["name"].as_str() {
                expected.push((n.into(), String::new()));
            }
            for pa in fc["partialArgs"].as_array().into_iter().flatten() {
                expected.last_mut().unwrap().1.push_str(pa["stringValue"].as_str().unwrap());
            }
        }
        assert_eq!(seen.calls.len(), 2);
        for ((id, name, args), (en, loc)) in seen.calls.iter().zip(&expected) {
            assert_eq!(name, en);
            assert_eq!(serde_json::from_str::<Value>(args).unwrap(), json!({ "location": loc }));
            assert!(id.starts_with("call_dqHOab6xGLzWodAPkPuViA4_"));
        }
        assert_eq!(expected[0].1, "Boston");
        let sig = payloads[0]["candidates"][0]["content"]["parts"][0]["thoughtSignature"].as_str();
        assert_eq!(decode_signature(&seen.calls[0].0).unwrap().as_deref(), sig);
        assert_eq!(decode_signature(&seen.calls[1].0).unwrap(), None);
        assert_eq!(seen.finish.as_deref(), Some("tool_calls"));
        let u = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (26, 23 + 132));
    }

    #[test]
    fn partial_args_paths_and_values() {
        let mut p = PartialCall { name: "f".into(), signature: None, args: json!({}), size: 0, open_string: None };
        p.apply(
            &[
                json!({"jsonPath": "$.a.b", "stringValue": "x", "willContinue": true}),
                json!({"jsonPath": "$.a.b", "stringValue": "y"}),
                json!({"jsonPath": "$.n", "numberValue": 4}),
                json!({"jsonPath": "$.list[0]", "boolValue": true}),
                json!({"jsonPath": "$.list[1]", "nullValue": "NULL_VALUE"}),
                json!({"jsonPath": "$['odd key']", "stringValue": "z"}),
            ],
            1 << 10,
        )
        .unwrap();
        assert_eq!(p.args, json!({"a": {"b": "xy"}, "n": 4, "list": [true, null], "odd key": "z"}));
        assert!(p.apply(&[json!({"jsonPath": "$.list[9]", "boolValue": true})], 1 << 10).is_err());
        assert!(p.apply(&[json!({"jsonPath": "a.b", "boolValue": true})], 1 << 10).is_err());
        assert!(p.apply(&[json!({"jsonPath": "$.big", "stringValue": "x".repeat(2000)})], 1 << 10).is_err());
    }

    #[test]
    fn stream_error_event_and_truncation() {
        let ev = format!("data: {}\r\n\r\n", String::from_utf8(ERR_429.to_vec()).unwrap().replace(['\n', '\r'], ""));
        let mut input = STREAM_TEXT[..STREAM_TEXT.len() / 2].to_vec();
        let cut = input.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap() + 4;
        input.truncate(cut);
        input.extend_from_slice(ev.as_bytes());
        let (out, r, _) = run(&input, &[], ropts(false));
        let e = r.unwrap_err();
        assert_eq!((e.status, e.retry_after), (429, Some(35)));
        assert!(decode_output(&out).content.starts_with("The"));

        // Ends without any finishReason: an error, not a clean [DONE].
        let (out, r, _) = run(&input[..cut], &[], ropts(false));
        assert_eq!(r.unwrap_err().code, Some("upstream_stream_truncated"));
        assert!(!decode_output(&out).done);

        // Mid-stream 503.
        let unavailable = b"data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
        assert_eq!(run(unavailable, &[], ropts(false)).1.unwrap_err().status, 503);
        // A prompt blocked in the stream ends cleanly with content_filter.
        let blocked = b"data: {\"promptFeedback\":{\"blockReason\":\"PROHIBITED_CONTENT\"},\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n";
        let (out, r, _) = run(blocked, &[], ropts(false));
        r.unwrap();
        assert_eq!(decode_output(&out).finish.as_deref(), Some("content_filter"));
    }

    // -- request translation ---------------------------------------------------------------------

    #[test]
    fn request_paths_and_model_escaping() {
        let b = body(json!({"model": "gemini:whatever", "messages": [user("hi")]}));
        let r = request(&b, &RequestOptions { model: "gemini-2.5-flash", stream: false }).unwrap();
        assert_eq!(r.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        assert!(r.headers.is_empty());
        let r = request(&b, &RequestOptions { model: "models/gemini-2.5-pro", stream: true }).unwrap();
        assert_eq!(r.path, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
        let r = request(&b, &RequestOptions { model: "tuned x/y?z", stream: false }).unwrap();
        assert_eq!(r.path, "/v1beta/models/tuned%20x%2Fy%3Fz:generateContent");
        let g: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(g, json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}));
        assert_eq!(request(b"[1]", &RequestOptions { model: "m", stream: false }).unwrap_err().status, 400);
    }

    #[test]
    fn request_roles_system_history_merging() {
        let g = req(json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "no emoji"}]},
            user("one"),
            {"role": "user", "content": [{"type": "text", "text": "two"}], "name": "bob"},
            {"role": "assistant", "content": "reply", "reasoning_content": "dropped"},
            user("three"),
        ]}));
        assert_eq!(g["systemInstruction"], json!({"parts": [{"text": "be brief"}, {"text": "no emoji"}]}));
        assert_eq!(
            g["contents"],
            json!([
                {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
                {"role": "model", "parts": [{"text": "reply"}]},
                {"role": "user", "parts": [{"text": "three"}]},
            ])
        );
        assert_eq!(
            req_err(json!({"messages": [{"role": "wizard", "content": "x"}]})).param.as_deref(),
            Some("messages[0].role")
        );
    }

    #[test]
    fn request_images_audio_files() {
        let g = req(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=large"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        ]}]}));
        assert_eq!(
            g["contents"][0]["parts"],
            json!([
                {"text": "what?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"fileUri": "https://example.com/cat.JPG?size=large", "mimeType": "image/jpeg"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            ])
        );
        let img = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        let e = req_err(img("https://example.com/render?id=3"));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[0].content[0].image_url.url")));
        assert_eq!(req_err(img("ftp://x/y.png")).status, 400);
        assert_eq!(req_err(img("data:image/png,notbase64")).status, 400);
        let e = req_err(
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].file"));
        let e = req_err(json!({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather", "strict": true,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}})
    }

    #[test]
    fn request_tools_and_tool_choice() {
        let g = req(
            json!({"messages": [user("hi")], "tools": [weather_tool()], "tool_choice": "auto", "parallel_tool_calls": false}),
        );
        assert_eq!(
            g["tools"],
            json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
            "parametersJsonSchema": weather_tool()["function"]["parameters"]}]}])
        );
        assert_eq!(g["toolConfig"], json!({"functionCallingConfig": {"mode": "AUTO"}}));
        let choice = |c: Value| {
            req(json!({"messages": [user("hi")], "tools": [weather_tool()], "tool_choice": c}))["toolConfig"].clone()
        };
        assert_eq!(choice(json!("none")), json!({"functionCallingConfig": {"mode": "NONE"}}));
        assert_eq!(choice(json!("required")), json!({"functionCallingConfig": {"mode": "ANY"}}));
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "get_weather"}})),
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        assert!(req(json!({"messages": [user("hi")]}))["toolConfig"].is_null());
        assert_eq!(
            req_err(json!({"messages": [user("hi")], "tool_choice": "required"})).param.as_deref(),
            Some("tool_choice")
        );
        assert!(req(json!({"messages": [user("hi")], "tool_choice": "none"})).get("toolConfig").is_none());
        let e = req_err(json!({"messages": [user("hi")], "tools": [{"type": "web_search"}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = req_err(
            json!({"messages": [user("hi")], "tools": [weather_tool()], "tool_choice": {"type": "allowed_tools"}}),
        );
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn request_parallel_tool_results_in_one_user_turn() {
        let g = req(json!({"messages": [
            user("weather in Paris and Rome"),
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "[1, 2]"}]},
            user("thanks"),
        ], "tools": [weather_tool()]}));
        assert_eq!(
            g["contents"][1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ])
        );
        assert_eq!(
            g["contents"][2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": [1, 2]}}},
                {"text": "thanks"},
            ]})
        );
        assert_eq!(g["contents"].as_array().unwrap().len(), 3);
        let e = req_err(json!({"messages": [user("x"), {"role": "tool", "tool_call_id": "nope", "content": "1"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_call_id"));
        let bad_args = json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]});
        assert_eq!(req_err(bad_args).param.as_deref(), Some("messages[1].tool_calls[0].function.arguments"));
        // Ids repeat across turns: the nearest earlier call wins.
        let g = req(json!({"messages": [
            user("x"),
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "second", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "2"},
        ]}));
        assert_eq!(g["contents"][4]["parts"][0]["functionResponse"]["name"], "second");
    }

    #[test]
    fn request_generation_config() {
        let g = req(
            json!({"messages": [user("hi")], "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": "END",
            "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.1, "n": 2, "user": "u1", "store": true,
            "metadata": {"a": "b"}, "service_tier": "auto", "logprobs": false, "stream_options": {"include_usage": true}}),
        );
        assert_eq!(
            g["generationConfig"],
            json!({"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "stopSequences": ["END"],
            "seed": 7, "presencePenalty": 0.5, "frequencyPenalty": 0.1, "candidateCount": 2})
        );
        let g = req(
            json!({"messages": [user("hi")], "max_tokens": 50, "max_completion_tokens": 80, "stop": ["a", "b"], "n": 1}),
        );
        assert_eq!(g["generationConfig"], json!({"maxOutputTokens": 80, "stopSequences": ["a", "b"]}));
        let e = request(&body(json!({"messages": [user("hi")], "n": 2})), &RequestOptions { model: "m", stream: true })
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        assert_eq!(
            req_err(json!({"messages": [user("hi")], "temperature": "hot"})).param.as_deref(),
            Some("temperature")
        );
        assert_eq!(req_err(json!({"messages": [user("hi")], "stop": [1]})).param.as_deref(), Some("stop"));
        assert_eq!(req_err(json!({"messages": [user("hi")], "max_tokens": 0})).param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn request_response_format() {
        let g = req(json!({"messages": [user("hi")], "response_format": {"type": "json_object"}}));
        assert_eq!(g["generationConfig"], json!({"responseMimeType": "application/json"}));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false});
        let g = req(
            json!({"messages": [user("hi")], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}}}),
        );
        assert_eq!(
            g["generationConfig"],
            json!({"responseMimeType": "application/json", "responseJsonSchema": schema})
        );
        assert!(req(json!({"messages": [user("hi")], "response_format": {"type": "text"}}))
            .get("generationConfig")
            .is_none());
        assert_eq!(req_err(json!({"messages": [user("hi")], "response_format": {"type": "yaml"}})).status, 400);
        let e = req_err(
            json!({"messages": [user("hi")], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        );
        assert_eq!(e.param.as_deref(), Some("response_format.json_schema.schema"));
    }

    #[test]
    fn request_reasoning_effort_table() {
        for (effort, budget) in [("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 24576)] {
            let g = req(json!({"messages": [user("hi")], "reasoning_effort": effort}));
            assert_eq!(
                g["generationConfig"]["thinkingConfig"],
                json!({"thinkingBudget": budget, "includeThoughts": true})
            );
        }
        let g = req(json!({"messages": [user("hi")], "reasoning_effort": "none"}));
        assert_eq!(g["generationConfig"]["thinkingConfig"], json!({"thinkingBudget": 0, "includeThoughts": false}));
        assert_eq!(
            req_err(json!({"messages": [user("hi")], "reasoning_effort": "max"})).param.as_deref(),
            Some("reasoning_effort")
        );
    }

    #[test]
    fn request_rejects_what_cannot_be_mapped() {
        for (field, value) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(2)),
            ("logit_bias", json!({"50256": -100})),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            ("prediction", json!({"type": "content", "content": "x"})),
            ("web_search_options", json!({})),
            ("functions", json!([])),
            ("verbosity", json!("low")),
            ("brand_new_field", json!(1)),
        ] {
            let mut b = json!({"messages": [user("hi")]});
            b[field] = value;
            let e = req_err(b);
            assert_eq!((e.status, e.param.as_deref()), (400, Some(field)), "{field}");
        }
        // Harmless defaults pass.
        req(json!({"messages": [user("hi")], "logit_bias": {}, "modalities": ["text"], "temperature": null}));
    }

    // -- errors ----------------------------------------------------------------------------------

    #[test]
    fn error_fixtures() {
        let e = error(429, ERR_429, None);
        assert_eq!((e.status, e.kind, e.retry_after), (429, "rate_limit_error", Some(35)));
        assert_eq!(e.message, "You exceeded your current quota, please check your plan.");
        assert_eq!(error(429, ERR_429, Some("7")).retry_after, Some(7));
        let e = error(404, ERR_404, None);
        assert_eq!((e.status, e.kind), (404, "invalid_request_error"));
        assert!(e.message.starts_with("models/gemini-3.6-flahs is not found"));
    }

    #[test]
    fn error_mapping() {
        let g = |code: u16, status: &str, extra: Value| {
            let mut e = json!({"error": {"code": code, "message": "m", "status": status}});
            if !extra.is_null() {
                e["error"]["details"] = extra;
            }
            body(e)
        };
        let key = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]);
        assert_eq!(error(400, &g(400, "INVALID_ARGUMENT", key), None).status, 502);
        assert_eq!(error(403, &g(403, "PERMISSION_DENIED", Value::Null), None).status, 502);
        assert_eq!(error(401, &g(401, "UNAUTHENTICATED", Value::Null), None).status, 502);
        let e = error(400, &g(400, "INVALID_ARGUMENT", Value::Null), None);
        assert_eq!((e.status, e.kind, e.message.as_str()), (400, "invalid_request_error", "m"));
        assert_eq!(error(400, &g(400, "FAILED_PRECONDITION", Value::Null), None).status, 400);
        let e = error(503, &g(503, "UNAVAILABLE", Value::Null), Some("3"));
        assert_eq!((e.status, e.retry_after), (503, Some(3)));
        assert_eq!(error(500, &g(500, "INTERNAL", Value::Null), None).status, 502);
        assert_eq!(error(504, &g(504, "DEADLINE_EXCEEDED", Value::Null), None).status, 504);
        assert_eq!(error(413, b"too big", None).status, 413);
        let e = error(502, b"<html>bad gateway</html>", None);
        assert_eq!((e.status, e.code), (502, Some("upstream_error")));
        assert!(e.message.contains("bad gateway"));
        let wrapped = body(json!([{"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}]}}]));
        assert_eq!(error(429, &wrapped, None).retry_after, Some(31));
    }

    // -- robustness ------------------------------------------------------------------------------

    /// Feed `input` in random pieces with a small event bound; never panics, memory stays bounded.
    fn fuzz_one(rng: &mut Rng, input: &[u8], max_event: usize) -> Result<(), ApiError> {
        let mut t = stream(ResponseOptions { max_event, ..ropts(rng.below(2) == 0) });
        let mut out = Vec::new();
        for piece in random_splits(input, rng, 64) {
            let r = t.feed(piece, &mut out);
            // Vec growth may double the line buffer's capacity; the bytes held stay ≤ max_event.
            assert!(t.buffered() <= 2 * max_event + 64, "buffered {} > bound", t.buffered());
            r?;
        }
        t.finish(&mut out)
    }

    #[test]
    fn fuzz_random_bytes_are_clean_errors() {
        let mut rng = Rng::new(0xDEAD_BEEF_CAFE_F00D);
        for i in 0..3000 {
            let len = rng.below(600);
            let mut input = rng.bytes(len);
            if i % 3 == 0 {
                // Make it look like SSE so the JSON layer is exercised too.
                input.splice(0..0, b"data: {\"candidates\":[{\"content\":".iter().copied());
            }
            assert!(fuzz_one(&mut rng, &input, 256).is_err(), "garbage {i} was accepted");
        }
    }

    #[test]
    fn fuzz_mutated_and_truncated_fixtures() {
        let fixtures = [
            STREAM_TEXT.to_vec(),
            STREAM_THINKING.to_vec(),
            STREAM_TOOL.to_vec(),
            STREAM_TOOL_SIG.to_vec(),
            chunks_to_sse(CHUNKS_TEXT),
            chunks_to_sse(CHUNKS_VERTEX),
        ];
        let mut rng = Rng::new(0x1234_5678_9ABC_DEF1);
        for i in 0..3000 {
            let f = &fixtures[i % fixtures.len()];
            let mut input = f.clone();
            match rng.below(4) {
                0 => {
                    // Truncate before the final event is complete: must not end cleanly.
                    let last = input.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap();
                    let prev = input[..last].windows(4).rposition(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
                    input.truncate(prev + rng.below(last.saturating_sub(prev).max(1)));
                    let _ = fuzz_one(&mut rng, &input, 1 << 16);
                }
                1 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(input.len());
                        input[at] = rng.byte();
                    }
                    let _ = fuzz_one(&mut rng, &input, 1 << 16);
                }
                2 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(input.len());
                        if rng.below(2) == 0 {
                            input.remove(at);
                        } else {
                            input.insert(at, b"{}[]\":,\r\n"[rng.below(9)]);
                        }
                    }
                    let _ = fuzz_one(&mut rng, &input, 1 << 16);
                }
                _ => {
                    // A bound smaller than the fixture's events: a clean EventTooLarge.
                    let r = fuzz_one(&mut rng, &input, 64);
                    assert_eq!(r.unwrap_err().status, 502);
                }
            }
        }
    }

    #[test]
    fn truncated_fixture_is_an_error() {
        for f in [STREAM_TEXT, STREAM_TOOL, STREAM_TOOL_SIG, STREAM_THINKING] {
            let last = f.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap();
            let prev = f[..last].windows(4).rposition(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
            // Drop the last event (the one with finishReason) entirely, or cut its JSON.
            for cut in [prev, prev + (last - prev) / 2] {
                let (_, r, _) = run(&f[..cut], &[], ropts(false));
                assert!(r.is_err(), "cut at {cut}");
            }
        }
    }
}
