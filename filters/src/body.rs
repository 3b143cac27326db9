//! Request bodies: a top-level JSON object whose member values stay raw, so a multi-megabyte chat
//! request is validated in one pass and rewritten (model name, stream options) with one copy and
//! without building a tree of its messages.

use crate::ApiError;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A member value: borrowed from the request, or replaced by the gateway.
#[derive(Debug)]
enum Member<'a> {
    Raw(&'a RawValue),
    Owned(Box<RawValue>),
}

impl Member<'_> {
    fn get(&self) -> &RawValue {
        match self {
            Member::Raw(r) => r,
            Member::Owned(b) => b,
        }
    }
}

/// A parsed top-level JSON object. Duplicate keys are rejected: two `model` members must never
/// let the gateway check one and the provider use the other.
#[derive(Debug)]
pub struct JsonObject<'a> {
    members: Vec<(Cow<'a, str>, Member<'a>)>,
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Vec<(Cow<'de, str>, Member<'de>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Member<'de>)> = Vec::with_capacity(16);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value: &'de RawValue = map.next_value()?;
            members.push((key, Member::Raw(value)));
        }
        Ok(members)
    }
}

/// Shorthand for a 400 about one request field.
fn field_error(param: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_request_body", message).with_param(param)
}

impl<'a> JsonObject<'a> {
    /// Parse `bytes` as a JSON object. Invalid JSON or a non-object is a 400.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("invalid_json", "request body is empty; expected a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let members = (&mut de).deserialize_map(ObjectVisitor).and_then(|m| de.end().map(|_| m)).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("request body is not a valid JSON object: {e}"))
        })?;
        Ok(JsonObject { members })
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v.get())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A string member, `None` when absent; wrong type is a 400 naming the field.
    pub fn str_member(&self, key: &str) -> Result<Option<Cow<'_, str>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<Cow<'_, str>>(raw.get())
                .map(Some)
                .map_err(|_| field_error(key, format!("`{key}` must be a string"))),
        }
    }

    /// A boolean member, `None` when absent or null.
    pub fn bool_member(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key).map(RawValue::get) {
            None | Some("null") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(field_error(key, format!("`{key}` must be a boolean"))),
        }
    }

    /// Check that a member, if present, starts like the JSON type named (`[`, `{`).
    pub fn expect_kind(&self, key: &str, open: u8, what: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some(raw) if raw.get().as_bytes().first() == Some(&open) => Ok(true),
            Some(_) => Err(field_error(key, format!("`{key}` must be {what}"))),
        }
    }

    /// Replace or append a member with an already-serialized JSON value.
    pub fn set_raw(&mut self, key: &str, value: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = Member::Owned(value),
            None => self.members.push((Cow::Owned(key.to_string()), Member::Owned(value))),
        }
    }

    /// Replace or append a string member.
    pub fn set_str(&mut self, key: &str, value: &str) {
        // A serialized string is always valid JSON.
        if let Ok(raw) = serde_json::value::to_raw_value(value) {
            self.set_raw(key, raw);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.members.retain(|(k, _)| k != key);
    }

    /// Serialize back to bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let cap = self.members.iter().map(|(k, v)| k.len() + v.get().get().len() + 4).sum::<usize>() + 2;
        let mut out = Vec::with_capacity(cap);
        out.push(b'{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing a str into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, k.as_ref());
            out.push(b':');
            out.extend_from_slice(v.get().get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// What the gateway needs to know about a Chat Completions request, and its rewritten form.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub object: JsonObject<'a>,
    pub model: String,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of the stream.
    pub client_wants_usage: bool,
}

impl<'a> ChatRequest<'a> {
    /// Parse and validate the members the gateway relies on.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ApiError> {
        let object = JsonObject::parse(bytes)?;
        let model = match object.str_member("model")? {
            Some(m) => m.into_owned(),
            None => return Err(field_error("model", "`model` is required".into())),
        };
        let has_messages = object.expect_kind("messages", b'[', "an array of messages")?;
        if !has_messages {
            return Err(field_error("messages", "`messages` is required".into()));
        }
        if object.get("messages").map(RawValue::get).is_some_and(|m| m[1..].trim_start().starts_with(']')) {
            return Err(field_error("messages", "`messages` must not be empty".into()));
        }
        let stream = object.bool_member("stream")?.unwrap_or(false);
        let mut client_wants_usage = false;
        if object.expect_kind("stream_options", b'{', "an object")? {
            #[derive(serde::Deserialize)]
            struct StreamOptions {
                include_usage: Option<bool>,
            }
            let raw = object.get("stream_options").map(RawValue::get).unwrap_or("{}");
            let so: StreamOptions = serde_json::from_str(raw).map_err(|_| {
                field_error("stream_options.include_usage", "`stream_options.include_usage` must be a boolean".into())
            })?;
            client_wants_usage = so.include_usage.unwrap_or(false);
        }
        Ok(ChatRequest { object, model, stream, client_wants_usage })
    }

    /// The body for an OpenAI-wire upstream: model replaced, and on streams the usage chunk
    /// requested so the gateway can meter, whether or not the client asked for it.
    pub fn to_upstream(&mut self, upstream_model: &str) -> Vec<u8> {
        self.object.set_str("model", upstream_model);
        if self.stream && !self.client_wants_usage {
            // Keep the client's other stream options (e.g. include_obfuscation).
            let mut opts: serde_json::Map<String, serde_json::Value> =
                self.object.get("stream_options").and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default();
            opts.insert("include_usage".into(), serde_json::Value::Bool(true));
            if let Ok(raw) = serde_json::value::to_raw_value(&opts) {
                self.object.set_raw("stream_options", raw);
            }
        }
        self.object.to_vec()
    }
}

/// Read the `model` member of any JSON body (pass-through routes), tolerating non-JSON bodies.
pub fn sniff_model(bytes: &[u8]) -> Option<String> {
    JsonObject::parse(bytes).ok()?.str_member("model").ok()?.map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn rewrites_model_and_keeps_rest() {
        let body =
            br#"{"model":"openai:gpt-4o","messages":[{"role":"user","content":"h\u00e9 \"q\""}],"temperature":0.5}"#;
        let mut req = ChatRequest::parse(body).unwrap();
        assert_eq!(req.model, "openai:gpt-4o");
        assert!(!req.stream);
        let out = req.to_upstream("gpt-4o");
        let v: Value = serde_json::from_slice(&out).unwrap();
        let orig: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["messages"], orig["messages"]);
        assert_eq!(v["temperature"], 0.5);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn stream_injects_usage() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#;
        let mut req = ChatRequest::parse(body).unwrap();
        assert!(req.stream && !req.client_wants_usage);
        let v: Value = serde_json::from_slice(&req.to_upstream("m")).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(ChatRequest::parse(body).unwrap().client_wants_usage);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let v: Value = serde_json::from_slice(&ChatRequest::parse(body).unwrap().to_upstream("m")).unwrap();
        assert_eq!(v["stream_options"], serde_json::json!({"include_obfuscation": false, "include_usage": true}));
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (b"", "invalid_json", None),
            (b"{", "invalid_json", None),
            (b"[1]", "invalid_json", None),
            (b"{} x", "invalid_json", None),
            (br#"{"model":"a","model":"b","messages":[1]}"#, "invalid_json", None),
            (br#"{"messages":[{}]}"#, "invalid_request_body", Some("model")),
            (br#"{"model":5,"messages":[{}]}"#, "invalid_request_body", Some("model")),
            (br#"{"model":"m"}"#, "invalid_request_body", Some("messages")),
            (br#"{"model":"m","messages":{}}"#, "invalid_request_body", Some("messages")),
            (br#"{"model":"m","messages":[ ]}"#, "invalid_request_body", Some("messages")),
            (br#"{"model":"m","messages":[{}],"stream":"yes"}"#, "invalid_request_body", Some("stream")),
        ];
        for (body, code, param) in cases {
            let e = ChatRequest::parse(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.code, Some(*code), "{}", String::from_utf8_lossy(body));
            assert_eq!(e.param.as_deref(), *param, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn sniff() {
        assert_eq!(sniff_model(br#"{"model":"x","a":1}"#).as_deref(), Some("x"));
        assert_eq!(sniff_model(b"garbage"), None);
    }
}
