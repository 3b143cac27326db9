//! The built-in `mock` provider: deterministic, offline OpenAI Chat Completions answers, streamed
//! or whole, so the gateway runs and demos with no network and no keys.

use crate::body::JsonObject;
use crate::sse::write_event;
use crate::usage::Usage;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the mock needs from a chat request.
#[derive(Debug, Default)]
pub struct MockInput {
    pub last_user_text: String,
    pub prompt_chars: usize,
    /// A tool the mock is required to call (`tool_choice` = `required` or a named function).
    pub forced_tool: Option<String>,
}

#[derive(Deserialize)]
struct Msg {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Value,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

impl MockInput {
    pub fn from_request(obj: &JsonObject<'_>) -> Self {
        let messages: Vec<Msg> =
            obj.get("messages").and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default();
        let prompt_chars = messages.iter().map(|m| text_of(&m.content).chars().count()).sum();
        let last_user_text =
            messages.iter().rev().find(|m| m.role == "user").map(|m| text_of(&m.content)).unwrap_or_default();
        let last_is_tool = messages.last().is_some_and(|m| m.role == "tool");
        let tools: Vec<Value> = obj.get("tools").and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default();
        let choice: Value =
            obj.get("tool_choice").and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null);
        let first_tool = tools.first().and_then(|t| t.pointer("/function/name")).and_then(Value::as_str);
        let forced_tool = if last_is_tool {
            None
        } else if choice == "required" {
            first_tool.map(str::to_string)
        } else {
            choice.pointer("/function/name").and_then(Value::as_str).map(str::to_string)
        };
        MockInput { last_user_text, prompt_chars, forced_tool }
    }

    /// The reply text.
    pub fn reply(&self) -> String {
        let said: String = self.last_user_text.chars().take(200).collect();
        format!("Hello from the Portcullis mock provider. You said: {said}")
    }

    pub fn usage(&self) -> Usage {
        let prompt = (self.prompt_chars as u64).div_ceil(4).max(1);
        let completion = if self.forced_tool.is_some() { 5 } else { self.reply().split_whitespace().count() as u64 };
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Default::default()
        }
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}
    })
}

fn call_id(seed: &str) -> String {
    let d = crate::auth::sha256(seed.as_bytes());
    format!("call_{}", &hex::encode(d)[..24])
}

fn completion_id(input: &MockInput, model: &str) -> String {
    let d = crate::auth::sha256(format!("{model}\0{}", input.last_user_text).as_bytes());
    format!("chatcmpl-mock{}", &hex::encode(d)[..20])
}

/// A complete `chat.completion` body.
pub fn completion(input: &MockInput, model: &str, created: u64) -> Vec<u8> {
    let usage = input.usage();
    let (message, finish) = match &input.forced_tool {
        Some(tool) => (
            json!({"role":"assistant","content":null,"refusal":null,"tool_calls":[
                {"id": call_id(&input.last_user_text),"type":"function","function":{"name":tool,"arguments":"{}"}}]}),
            "tool_calls",
        ),
        None => (json!({"role":"assistant","content":input.reply(),"refusal":null}), "stop"),
    };
    let v = json!({
        "id": completion_id(input, model),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index":0,"message":message,"logprobs":null,"finish_reason":finish}],
        "usage": usage_json(&usage),
        "system_fingerprint": "fp_portcullis_mock"
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The `chat.completion.chunk` SSE events of a streamed answer, one element per event, ending
/// with the usage chunk (when asked) and `data: [DONE]`.
pub fn stream_events(input: &MockInput, model: &str, created: u64, include_usage: bool) -> Vec<Vec<u8>> {
    let id = completion_id(input, model);
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({"id":id,"object":"chat.completion.chunk","created":created,"model":model,
            "system_fingerprint":"fp_portcullis_mock",
            "choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":finish}]});
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    };
    let mut events = Vec::new();
    let mut push = |v: Value| {
        let mut out = Vec::new();
        write_event(&mut out, None, &v.to_string());
        events.push(out);
    };
    match &input.forced_tool {
        Some(tool) => {
            push(chunk(
                json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":call_id(&input.last_user_text),
                    "type":"function","function":{"name":tool,"arguments":""}}]}),
                Value::Null,
            ));
            push(chunk(json!({"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}), Value::Null));
            push(chunk(json!({}), json!("tool_calls")));
        }
        None => {
            push(chunk(json!({"role":"assistant","content":"","refusal":null}), Value::Null));
            let reply = input.reply();
            let mut start = 0;
            // One word (with its leading space) per chunk, like real token streams.
            for (i, _) in reply.match_indices(' ').chain(std::iter::once((reply.len(), ""))) {
                if i > start {
                    push(chunk(json!({"content": &reply[start..i]}), Value::Null));
                    start = i;
                }
            }
            push(chunk(json!({}), json!("stop")));
        }
    }
    if include_usage {
        push(json!({"id":id,"object":"chat.completion.chunk","created":created,"model":model,
            "system_fingerprint":"fp_portcullis_mock","choices":[],"usage":usage_json(&input.usage())}));
    }
    let mut done = Vec::new();
    write_event(&mut done, None, "[DONE]");
    events.push(done);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::OpenAiStreamTap;

    fn input(body: &str) -> MockInput {
        MockInput::from_request(&JsonObject::parse(body.as_bytes()).unwrap())
    }

    #[test]
    fn deterministic_text() {
        let i = input(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"Hi there"}]}]}"#,
        );
        assert_eq!(i.last_user_text, "Hi there");
        let a = completion(&i, "echo", 1);
        assert_eq!(a, completion(&i, "echo", 1));
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert!(v["choices"][0]["message"]["content"].as_str().unwrap().ends_with("You said: Hi there"));
    }

    #[test]
    fn stream_reassembles_to_reply() {
        let i = input(r#"{"model":"m","messages":[{"role":"user","content":"one two"}]}"#);
        let events = stream_events(&i, "echo", 1, true);
        let mut tap = OpenAiStreamTap::new(false, 1 << 20);
        let mut out = Vec::new();
        let mut text = String::new();
        for e in &events {
            tap.feed(e, &mut out).unwrap();
            let s = std::str::from_utf8(e).unwrap().trim().trim_start_matches("data: ");
            if let Ok(v) = serde_json::from_str::<Value>(s) {
                if let Some(c) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) {
                    text.push_str(c);
                }
            }
        }
        assert_eq!(text, i.reply());
        assert_eq!(tap.usage, Some(i.usage()));
        assert!(tap.saw_done);
    }

    #[test]
    fn forced_tool() {
        let i = input(
            r#"{"model":"m","messages":[{"role":"user","content":"w"}],"tools":[{"type":"function","function":{"name":"get_weather"}}],"tool_choice":"required"}"#,
        );
        let v: Value = serde_json::from_slice(&completion(&i, "m", 1)).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    }
}
