//! Metering of native pass-through answers (`/v1/anthropic/…`, `/v1/gemini/…`, …): the client
//! gets the provider's bytes, event by event, and the gateway reads the token usage on the way so
//! those calls count in metrics and the access log like translated ones.

use super::{anthropic, bedrock, cohere, gemini, StreamTranscoder};
use crate::eventstream::{Decoder, EventStreamError};
use crate::sse::{write_event, Event, SseError, SseReader};
use crate::usage::Usage;
use crate::ApiError;
use serde_json::Value;

/// The native wire whose usage fields are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeWire {
    Anthropic,
    Gemini,
    Cohere,
    Bedrock,
}

/// Usage of a whole native answer body (`None` when it carries none or is not JSON).
pub fn body_usage(wire: NativeWire, body: &[u8]) -> Option<Usage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match wire {
        NativeWire::Anthropic => anthropic::usage_of(v.get("usage")?),
        // `streamGenerateContent` without `alt=sse` answers a JSON array of chunks.
        NativeWire::Gemini => match &v {
            Value::Array(chunks) => chunks.iter().rev().find_map(|c| c.get("usageMetadata")).map(gemini::usage_of),
            _ => Some(gemini::usage_of(v.get("usageMetadata")?)),
        },
        NativeWire::Cohere => cohere::usage_of(v.get("usage")),
        NativeWire::Bedrock => Some(bedrock::usage_of(v.get("usage")?)),
    }
}

/// Re-frames a native SSE stream unchanged (event names and data) and keeps its usage: Anthropic
/// `message_start` + cumulative `message_delta`, Gemini's `usageMetadata` (the last one wins),
/// Cohere's `message-end`. Memory is bounded by one event.
#[derive(Debug)]
pub struct NativeStreamTap {
    reader: SseReader,
    meter: Meter,
}

#[derive(Debug)]
enum Meter {
    Anthropic(anthropic::UsageMeter),
    /// The last usage found: events containing `key` are parsed and `read` looks for it.
    Last {
        key: Box<memchr::memmem::Finder<'static>>,
        read: fn(&Value) -> Option<Usage>,
        usage: Option<Usage>,
    },
}

impl NativeStreamTap {
    pub fn new(wire: NativeWire, max_event: usize) -> Self {
        let last = |key: &'static [u8], read| Meter::Last {
            key: Box::new(memchr::memmem::Finder::new(key)),
            read,
            usage: None,
        };
        let meter = match wire {
            NativeWire::Anthropic => Meter::Anthropic(anthropic::UsageMeter::default()),
            NativeWire::Gemini => last(b"usageMetadata", |v| v.get("usageMetadata").map(gemini::usage_of)),
            NativeWire::Cohere => last(b"usage", |v| cohere::usage_of(v.get("delta").and_then(|d| d.get("usage")))),
            NativeWire::Bedrock => last(b"usage", |v| v.get("usage").map(bedrock::usage_of)),
        };
        NativeStreamTap { reader: SseReader::new(max_event), meter }
    }
}

impl Meter {
    fn event(&mut self, ev: &Event) {
        match self {
            Meter::Anthropic(m) => m.event(&ev.data),
            Meter::Last { key, read, usage } => {
                // Most events carry no usage; skip parsing those.
                if key.find(ev.data.as_bytes()).is_none() {
                    return;
                }
                if let Some(found) = serde_json::from_str::<Value>(&ev.data).ok().as_ref().and_then(read) {
                    *usage = Some(found);
                }
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Meter::Anthropic(m) => m.usage(),
            Meter::Last { usage, .. } => *usage,
        }
    }
}

fn pass<'a>(meter: &'a mut Meter, out: &'a mut Vec<u8>) -> impl FnMut(Event) + 'a {
    move |ev: Event| {
        meter.event(&ev);
        write_event(out, ev.event.as_deref(), &ev.data);
    }
}

fn stream_error(e: SseError) -> ApiError {
    ApiError::bad_gateway("upstream_stream_error", e.to_string())
}

impl StreamTranscoder for NativeStreamTap {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        self.reader.feed(chunk, &mut pass(&mut self.meter, out)).map_err(stream_error)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        self.reader.finish(&mut pass(&mut self.meter, out)).map_err(stream_error)
    }

    fn usage(&self) -> Option<Usage> {
        self.meter.usage()
    }
}

/// Passes a Bedrock `ConverseStream` body (AWS event-stream, binary) through byte for byte and
/// reads the usage of its `metadata` event. A frame the decoder rejects (corrupt, or over
/// `max_event`) stops the metering, not the stream: the client's SDK judges the bytes.
#[derive(Debug)]
pub struct EventStreamTap {
    decoder: Option<Decoder>,
    usage: Option<Usage>,
}

impl EventStreamTap {
    pub fn new(max_event: usize) -> Self {
        EventStreamTap { decoder: Some(Decoder::new(max_event)), usage: None }
    }
}

impl StreamTranscoder for EventStreamTap {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        out.extend_from_slice(chunk);
        if let Some(d) = &mut self.decoder {
            let usage = &mut self.usage;
            let read = d.feed(chunk, |msg| {
                if msg.header_str(":event-type") == Some("metadata") {
                    if let Some(u) = serde_json::from_slice::<Value>(&msg.payload)
                        .ok()
                        .and_then(|v| v.get("usage").map(bedrock::usage_of))
                    {
                        *usage = Some(u);
                    }
                }
                Ok::<(), EventStreamError>(())
            });
            if read.is_err() {
                self.decoder = None;
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), ApiError> {
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_splits, Rng};

    fn run_pieces(wire: NativeWire, pieces: &[&[u8]]) -> (Vec<u8>, Option<Usage>) {
        let mut tap = NativeStreamTap::new(wire, 1 << 20);
        let mut out = Vec::new();
        for p in pieces {
            tap.feed(p, &mut out).expect("feed");
        }
        tap.finish(&mut out).expect("finish");
        (out, tap.usage())
    }

    fn run(wire: NativeWire, input: &[u8]) -> (Vec<u8>, Option<Usage>) {
        run_pieces(wire, &[input])
    }

    const ANTHROPIC_TEXT: &[u8] = include_bytes!("../../../fixtures/anthropic/messages-text.json");

    #[test]
    fn anthropic_stream_usage_merges_start_and_delta() {
        let s = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (whole, u) = run(NativeWire::Anthropic, s);
        assert_eq!(whole, s.to_vec(), "canonical framing passes through byte for byte");
        let u = u.expect("usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.total_tokens), (15, 7, 3, 22));
        let mut rng = Rng::new(9);
        for _ in 0..50 {
            let pieces = random_splits(s, &mut rng, 40);
            assert_eq!(run_pieces(NativeWire::Anthropic, &pieces), (whole.clone(), Some(u)));
        }
    }

    #[test]
    fn gemini_and_cohere_stream_usage() {
        let g = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1}}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":4,\"thoughtsTokenCount\":2}}\r\n\r\n";
        let u = run(NativeWire::Gemini, g).1.expect("gemini usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.reasoning_tokens), (5, 6, 2));
        let c = b"event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"hi\"}}}}\n\n\
event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":2},\"tokens\":{\"input_tokens\":9,\"output_tokens\":2}}}}\n\n";
        let u = run(NativeWire::Cohere, c).1.expect("cohere usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 2));
    }

    #[test]
    fn whole_bodies_from_fixtures() {
        let a = body_usage(NativeWire::Anthropic, ANTHROPIC_TEXT).expect("anthropic");
        assert!(a.prompt_tokens > 0 && a.completion_tokens > 0);
        assert_eq!(body_usage(NativeWire::Anthropic, b"not json"), None);
        assert_eq!(body_usage(NativeWire::Gemini, b"{\"candidates\":[]}"), None);
        let array = b"[{\"usageMetadata\":{\"promptTokenCount\":2}},{\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":8}},{}]";
        assert_eq!(body_usage(NativeWire::Gemini, array).map(|u| u.completion_tokens), Some(8));
        let b =
            body_usage(NativeWire::Bedrock, b"{\"usage\":{\"inputTokens\":4,\"outputTokens\":6,\"totalTokens\":10}}");
        assert_eq!(b.map(|u| u.total_tokens), Some(10));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng::new(3);
        for wire in [NativeWire::Anthropic, NativeWire::Gemini, NativeWire::Cohere] {
            for _ in 0..200 {
                let alphabet = b"data: {}usage\n\r\":1event";
                let bytes: Vec<u8> = (0..rng.below(400)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
                let mut tap = NativeStreamTap::new(wire, 64);
                let mut out = Vec::new();
                let _ = tap.feed(&bytes, &mut out);
                let _ = tap.finish(&mut out);
                let _ = body_usage(wire, &bytes);
            }
        }
    }

    #[test]
    fn bedrock_event_stream_passes_verbatim_and_meters() {
        use crate::eventstream::{encode, message};
        let ev = |name: &str, payload: &[u8]| {
            encode(&message(&[(":event-type", name), (":message-type", "event")], payload))
        };
        let mut body = ev("contentBlockDelta", br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#);
        body.extend(ev("messageStop", br#"{"stopReason":"end_turn"}"#));
        body.extend(ev(
            "metadata",
            br#"{"usage":{"inputTokens":11,"outputTokens":4,"totalTokens":15},"metrics":{"latencyMs":9}}"#,
        ));
        let mut rng = Rng::new(5);
        for _ in 0..30 {
            let mut tap = EventStreamTap::new(1 << 16);
            let mut out = Vec::new();
            for p in random_splits(&body, &mut rng, 25) {
                tap.feed(p, &mut out).expect("feed");
            }
            tap.finish(&mut out).expect("finish");
            assert_eq!(out, body);
            assert_eq!(tap.usage().map(|u| (u.prompt_tokens, u.completion_tokens)), Some((11, 4)));
        }
        // Corrupt bytes still pass; only the metering stops.
        let mut tap = EventStreamTap::new(1 << 16);
        let mut out = Vec::new();
        tap.feed(b"\xff\xff\xff\xff garbage that is no prelude", &mut out).expect("feed");
        tap.feed(&body, &mut out).expect("feed");
        assert_eq!(tap.usage(), None);
        assert!(out.ends_with(&body));
    }
}
