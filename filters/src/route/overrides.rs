//! Inline tier overrides typed by the user at the start of their last message, stripped before
//! the request is forwarded so the upstream model never sees them:
//!
//! - `/simple`, `/medium`, `/complex`, `/max` (any alias) followed by whitespace or the end;
//! - `[simple]`, `[medium]`, `[complex]`, `[reasoning]` (any alias);
//! - `<alias> mode:` — the colon is required, so "simple mode of transport" is prose.
//!
//! Aliases are those of [`Tier::from_alias`]; matching is case-insensitive and leading whitespace
//! is allowed. Only the last user message is looked at: an override typed three turns ago must not
//! keep steering the conversation. When content is an array of parts, the first text part is the
//! one inspected. The body is rewritten by splicing the one JSON string that changed, so every
//! other byte reaches the upstream as the client sent it.

use super::Tier;
use crate::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Result of [`take_override`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The tier asked for, if the last user message starts with an override.
    pub tier: Option<Tier>,
    /// The body with the override stripped; `None` when the body is unchanged.
    pub body: Option<Vec<u8>>,
}

/// Recognises an override at the start of `text`. Returns the tier and the byte length to strip
/// (the override, surrounding leading whitespace and the whitespace after it).
pub fn parse_override(text: &str) -> Option<(Tier, usize)> {
    let start = text.len() - text.trim_start().len();
    let rest = &text[start..];
    let (tier, len) = if let Some(r) = rest.strip_prefix('/') {
        let word = leading_word(r);
        let after = &r[word.len()..];
        if !(after.is_empty() || after.starts_with(char::is_whitespace)) {
            return None;
        }
        (Tier::from_alias(word)?, 1 + word.len())
    } else if let Some(r) = rest.strip_prefix('[') {
        let word = leading_word(r);
        if !r[word.len()..].starts_with(']') {
            return None;
        }
        (Tier::from_alias(word)?, word.len() + 2)
    } else {
        let word = leading_word(rest);
        let tier = Tier::from_alias(word)?;
        let after = &rest[word.len()..];
        let spaced = after.trim_start_matches([' ', '\t']);
        if spaced.len() == after.len() {
            return None;
        }
        let m = spaced.get(..4).filter(|m| m.eq_ignore_ascii_case("mode"))?;
        let colon = spaced[m.len()..].trim_start_matches([' ', '\t']);
        let colon = colon.strip_prefix(':')?;
        (tier, rest.len() - colon.len())
    };
    let tail = &rest[len..];
    let ws = tail.len() - tail.trim_start().len();
    Some((tier, start + len + ws))
}

/// The ASCII letters at the start of `s` (aliases are ASCII words).
fn leading_word(s: &str) -> &str {
    let n = s.bytes().take_while(u8::is_ascii_alphabetic).count();
    &s[..n]
}

#[derive(Deserialize)]
struct Messages<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartHead<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

/// Finds and strips an override in the last user message of a chat request body.
///
/// A body that is not a JSON object, has no `messages` array or no user message is answered
/// with no override and no change (validation is the request phase's job, not this one's);
/// only a body that is not JSON at all is an error.
pub fn take_override(body: &[u8]) -> Result<Override, ApiError> {
    let none = Override { tier: None, body: None };
    let req: Messages = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) if e.is_data() => return Ok(none),
        Err(e) => return Err(ApiError::bad_request("invalid_request_body", format!("request body: {e}"))),
    };
    let Some(messages) = req.messages else { return Ok(none) };
    let last_user = messages.iter().rev().find_map(|raw| {
        let head: Head = serde_json::from_str(raw.get()).ok()?;
        (head.role.as_deref() == Some("user")).then_some(head.content)
    });
    let Some(Some(content)) = last_user else { return Ok(none) };
    // The JSON string to inspect: the content itself, or the first text part's `text`.
    let target = if content.get().starts_with('"') {
        content
    } else {
        let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(content.get()) else { return Ok(none) };
        let first_text = parts.iter().find_map(|raw| {
            let p: PartHead = serde_json::from_str(raw.get()).ok()?;
            matches!(p.kind.as_deref(), Some("text" | "input_text")).then_some(p.text).flatten()
        });
        match first_text {
            Some(t) => t,
            None => return Ok(none),
        }
    };
    let Ok(text) = serde_json::from_str::<Cow<str>>(target.get()) else { return Ok(none) };
    let Some((tier, strip)) = parse_override(&text) else { return Ok(none) };
    Ok(Override { tier: Some(tier), body: splice(body, target, &text[strip..]) })
}

/// `body` with the JSON string `raw` (borrowed from `body`) replaced by `replacement`. `None`
/// if `raw` does not lie inside `body`, which would be a bug; the caller then forwards unchanged.
fn splice(body: &[u8], raw: &RawValue, replacement: &str) -> Option<Vec<u8>> {
    let raw = raw.get().as_bytes();
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.len())?;
    if body.get(start..end)? != raw {
        return None;
    }
    let encoded = serde_json::to_string(replacement).ok()?;
    let mut out = Vec::with_capacity(body.len() - raw.len() + encoded.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Option<(Tier, String)> {
        parse_override(s).map(|(t, n)| (t, s[n..].to_string()))
    }

    #[test]
    fn slash_forms() {
        assert_eq!(parse("/simple what is 2+2"), Some((Tier::Simple, "what is 2+2".into())));
        assert_eq!(parse("/medium  x"), Some((Tier::Medium, "x".into())));
        assert_eq!(parse("/complex\nx"), Some((Tier::Complex, "x".into())));
        assert_eq!(parse("/max prove it"), Some((Tier::Reasoning, "prove it".into())));
        assert_eq!(parse("/max"), Some((Tier::Reasoning, "".into())));
        assert_eq!(parse("  /MAX   "), Some((Tier::Reasoning, "".into())));
        assert_eq!(parse("/cheap hi"), Some((Tier::Simple, "hi".into())));
        assert_eq!(parse("/maximal x"), None);
        assert_eq!(parse("/max-effort x"), None);
        assert_eq!(parse("/usr/bin/env"), None);
        assert_eq!(parse("/"), None);
    }

    #[test]
    fn bracket_forms() {
        assert_eq!(parse("[simple] hi"), Some((Tier::Simple, "hi".into())));
        assert_eq!(parse("[MEDIUM]hi"), Some((Tier::Medium, "hi".into())));
        assert_eq!(parse(" [complex] hi"), Some((Tier::Complex, "hi".into())));
        assert_eq!(parse("[reasoning] hi"), Some((Tier::Reasoning, "hi".into())));
        assert_eq!(parse("[deep]"), Some((Tier::Reasoning, "".into())));
        assert_eq!(parse("[simple hi"), None);
        assert_eq!(parse("[note] hi"), None);
    }

    #[test]
    fn mode_forms() {
        assert_eq!(parse("simple mode: hi"), Some((Tier::Simple, "hi".into())));
        assert_eq!(parse("Think Mode:why?"), Some((Tier::Reasoning, "why?".into())));
        assert_eq!(parse("advanced mode : x"), Some((Tier::Complex, "x".into())));
        assert_eq!(parse("balanced  mode:\n x"), Some((Tier::Medium, "x".into())));
        assert_eq!(parse("simple mode of transport"), None);
        assert_eq!(parse("simple mode"), None);
        assert_eq!(parse("simplemode: x"), None);
        assert_eq!(parse("simple modes: x"), None);
        assert_eq!(parse("Deep learning mode: x"), None);
        assert_eq!(parse("what is simple mode: x"), None);
    }

    fn messages(body: &[u8]) -> Value {
        serde_json::from_slice::<Value>(body).expect("json")["messages"].clone()
    }

    #[test]
    fn strips_string_content_and_keeps_other_bytes() {
        let body = br#"{"model":"auto","messages":[{"role":"system","content":"/max sys"},{"role":"user","content":"/max \u00e9tude"}],"stream":true}"#;
        let o = take_override(body).expect("ok");
        assert_eq!(o.tier, Some(Tier::Reasoning));
        let out = o.body.expect("rewritten");
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            r#"{"model":"auto","messages":[{"role":"system","content":"/max sys"},{"role":"user","content":"étude"}],"stream":true}"#
        );
    }

    #[test]
    fn strips_first_text_part() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "[complex] describe"},
            {"type": "text", "text": "/max not this one"}
        ]}]})
        .to_string();
        let o = take_override(body.as_bytes()).expect("ok");
        assert_eq!(o.tier, Some(Tier::Complex));
        let m = messages(&o.body.expect("rewritten"));
        assert_eq!(m[0]["content"][1]["text"], "describe");
        assert_eq!(m[0]["content"][2]["text"], "/max not this one");
    }

    #[test]
    fn only_the_last_user_message() {
        let body = json!({"messages": [
            {"role": "user", "content": "/max earlier"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "plain follow-up"}
        ]})
        .to_string();
        assert_eq!(take_override(body.as_bytes()).expect("ok"), Override { tier: None, body: None });
        // The last user message counts even when an assistant or tool message follows it.
        let body = json!({"messages": [
            {"role": "user", "content": "simple mode: hi"},
            {"role": "assistant", "content": "/max"}
        ]})
        .to_string();
        let o = take_override(body.as_bytes()).expect("ok");
        assert_eq!(o.tier, Some(Tier::Simple));
        assert_eq!(messages(&o.body.expect("rewritten"))[0]["content"], "hi");
    }

    #[test]
    fn no_override_no_rewrite() {
        for body in [
            json!({"messages": [{"role": "user", "content": "simple mode of transport"}]}).to_string(),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            json!({"messages": [{"role": "user"}]}).to_string(),
            json!({"messages": "x"}).to_string(),
            json!([1, 2]).to_string(),
            json!({}).to_string(),
        ] {
            assert_eq!(take_override(body.as_bytes()).expect("ok"), Override { tier: None, body: None }, "{body}");
        }
        assert!(take_override(b"{not json").is_err());
    }
}
