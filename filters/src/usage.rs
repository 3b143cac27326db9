//! Token usage as the OpenAI wire reports it, read from complete responses and from streams.

use crate::sse::{write_event, Event, SseError, SseReader};
use serde::Deserialize;

/// Token counts of one exchange.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Prompt tokens written to a provider's prompt cache (Anthropic, Bedrock); priced apart.
    pub cache_write_tokens: u64,
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<Details>,
    #[serde(default, alias = "output_tokens_details")]
    completion_tokens_details: Option<Details>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        let p = w.prompt_tokens.unwrap_or(0);
        let c = w.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: w.total_tokens.unwrap_or(p + c),
            cached_tokens: w.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
            reasoning_tokens: w.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    /// Responses API stream events (`response.completed`, `.incomplete`, `.failed`) carry the
    /// usage inside the response object.
    #[serde(default)]
    response: Option<ResponseObject>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Usage from a complete Chat Completions (or Responses) body.
pub fn from_openai_body(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage.map(Usage::from)
}

/// Re-frames an OpenAI-wire SSE stream event by event, records the usage chunk, and drops that
/// chunk when only the gateway (not the client) asked for it.
#[derive(Debug)]
pub struct OpenAiStreamTap {
    reader: SseReader,
    drop_usage_chunk: bool,
    pub usage: Option<Usage>,
    pub saw_done: bool,
    pub events: u64,
}

impl OpenAiStreamTap {
    pub fn new(drop_usage_chunk: bool, max_event: usize) -> Self {
        OpenAiStreamTap { reader: SseReader::new(max_event), drop_usage_chunk, usage: None, saw_done: false, events: 0 }
    }

    /// Feed upstream bytes; complete events are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), SseError> {
        let (drop_usage, usage, done, events) =
            (self.drop_usage_chunk, &mut self.usage, &mut self.saw_done, &mut self.events);
        self.reader.feed(chunk, &mut |ev| handle(ev, drop_usage, usage, done, events, out))
    }

    /// Upstream ended: flush a trailing unterminated event.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SseError> {
        let (drop_usage, usage, done, events) =
            (self.drop_usage_chunk, &mut self.usage, &mut self.saw_done, &mut self.events);
        self.reader.finish(&mut |ev| handle(ev, drop_usage, usage, done, events, out))
    }
}

/// Built once: `memmem::find` builds its searcher on every call, which showed in stream profiles.
static USAGE_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));

fn handle(
    ev: Event,
    drop_usage: bool,
    usage: &mut Option<Usage>,
    done: &mut bool,
    events: &mut u64,
    out: &mut Vec<u8>,
) {
    *events += 1;
    if ev.data == "[DONE]" {
        *done = true;
    } else if USAGE_KEY.find(ev.data.as_bytes()).is_some() {
        if let Ok(parsed) = serde_json::from_str::<WithUsage>(&ev.data) {
            if let Some(u) = parsed.response.and_then(|r| r.usage) {
                *usage = Some(u.into());
            } else if let Some(u) = parsed.usage {
                *usage = Some(u.into());
                if drop_usage && parsed.choices.as_ref().is_some_and(Vec::is_empty) {
                    return;
                }
            }
        }
    }
    write_event(out, ev.event.as_deref(), &ev.data);
}

/// OpenAI-wire upstreams are "transcoded" by re-framing: the same trait as the translators, so
/// the gateway relays every stream through one loop (and the Responses front end can sit on top).
impl crate::translate::StreamTranscoder for OpenAiStreamTap {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), crate::ApiError> {
        OpenAiStreamTap::feed(self, chunk, out).map_err(stream_error)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), crate::ApiError> {
        OpenAiStreamTap::finish(self, out).map_err(stream_error)
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

fn stream_error(e: SseError) -> crate::ApiError {
    crate::ApiError::bad_gateway("upstream_stream_error", e.to_string())
}

/// An SSE error event in the shape OpenAI SDKs raise from (`data: {"error":{...}}`).
pub fn stream_error_event(err: &crate::ApiError) -> Vec<u8> {
    let mut out = Vec::new();
    let body = err.to_json();
    write_event(&mut out, None, &String::from_utf8_lossy(&body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../fixtures/openai/chat-stream-text.sse");

    #[test]
    fn body_usage() {
        let u = from_openai_body(include_bytes!("../../fixtures/openai/chat-completion-text.json")).unwrap();
        assert!(u.prompt_tokens > 0 && u.total_tokens == u.prompt_tokens + u.completion_tokens);
        assert_eq!(from_openai_body(b"{}"), None);
    }

    fn run(drop: bool, chunk: usize) -> (Vec<u8>, Option<Usage>, bool) {
        let mut tap = OpenAiStreamTap::new(drop, 1 << 20);
        let mut out = Vec::new();
        for c in FIXTURE.as_bytes().chunks(chunk) {
            tap.feed(c, &mut out).unwrap();
        }
        tap.finish(&mut out).unwrap();
        (out, tap.usage, tap.saw_done)
    }

    #[test]
    fn responses_stream_usage_is_read_from_the_final_response() {
        let sse = include_str!("../../fixtures/openai/responses-stream-text.sse");
        for n in [1, 7, usize::MAX] {
            let mut tap = OpenAiStreamTap::new(false, 1 << 20);
            let mut out = Vec::new();
            for c in sse.as_bytes().chunks(n.min(sse.len())) {
                tap.feed(c, &mut out).unwrap();
            }
            tap.finish(&mut out).unwrap();
            let u = tap.usage.unwrap();
            assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (278, 9, 287));
            assert_eq!(out, sse.as_bytes(), "re-framed unchanged");
        }
    }

    #[test]
    fn stream_usage_any_split() {
        let (whole, usage, done) = run(false, usize::MAX);
        assert_eq!(whole, FIXTURE.as_bytes(), "canonical framing reproduces OpenAI's bytes");
        assert_eq!(usage.unwrap().total_tokens, 44);
        assert!(done);
        for n in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(run(false, n).0, whole);
        }
        let (dropped, usage, _) = run(true, 5);
        assert_eq!(usage.unwrap().completion_tokens, 30);
        let text = String::from_utf8(dropped).unwrap();
        assert!(!text.contains("\"usage\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
