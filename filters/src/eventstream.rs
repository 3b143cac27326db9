//! Incremental decoder (and encoder) for the AWS event-stream binary framing
//! (`application/vnd.amazon.eventstream`), the body of Bedrock `ConverseStream` responses.
//!
//! One message on the wire, all integers big-endian:
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC32 (of the 8 bytes before it)
//! headers (headers length bytes) | payload | message CRC32 (of everything before it)
//! ```
//!
//! A header is `name length u8 | name | value type u8 | value`, the value laid out by type:
//! 0 true and 1 false (no bytes), 2 byte (i8), 3 short (i16), 4 integer (i32), 5 long (i64),
//! 6 byte array (u16 length + bytes), 7 string (u16 length + UTF-8), 8 timestamp (i64
//! milliseconds since the epoch), 9 UUID (16 bytes).
//!
//! Input may be split at any byte; the decoder yields the same messages however the bytes
//! arrive. It buffers at most one message, and a message whose declared length exceeds
//! `max_event` is refused before any of it is buffered, so memory is bounded by `max_event`
//! whatever the stream's length. Both CRCs are checked: the framing has no resynchronisation
//! point, so after any error the stream is unusable and every later call fails too.

use std::fmt;

/// The content type of an event-stream body.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Prelude: total length, headers length, prelude CRC.
const PRELUDE_LEN: usize = 12;
/// Prelude plus the trailing message CRC: the smallest possible message.
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;

/// A header value, one variant per wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Integer(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: HeaderValue,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The value of a string header (`:event-type`, `:message-type`, `:exception-type`, ...).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name).and_then(|h| match &h.value {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStreamError {
    /// A message declared a length above the configured bound.
    MessageTooLarge {
        declared: usize,
        max: usize,
    },
    /// A message declared lengths that cannot be (total below 16, headers past the payload).
    BadLength,
    PreludeCrc,
    MessageCrc,
    /// The headers section does not parse (unknown type, truncated value, non-UTF-8 text).
    BadHeaders(&'static str),
    /// The stream ended inside a message.
    Truncated {
        buffered: usize,
    },
    /// An earlier error left the stream unusable.
    Poisoned,
}

impl fmt::Display for EventStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventStreamError::MessageTooLarge { declared, max } => {
                write!(f, "upstream event-stream message of {declared} bytes exceeds {max} bytes")
            }
            EventStreamError::BadLength => f.write_str("upstream event-stream message has impossible lengths"),
            EventStreamError::PreludeCrc => f.write_str("upstream event-stream prelude CRC mismatch"),
            EventStreamError::MessageCrc => f.write_str("upstream event-stream message CRC mismatch"),
            EventStreamError::BadHeaders(why) => write!(f, "upstream event-stream headers are invalid: {why}"),
            EventStreamError::Truncated { buffered } => {
                write!(f, "upstream event-stream ended inside a message ({buffered} bytes buffered)")
            }
            EventStreamError::Poisoned => f.write_str("upstream event-stream is unusable after an earlier error"),
        }
    }
}

impl std::error::Error for EventStreamError {}

impl From<EventStreamError> for crate::ApiError {
    /// A broken upstream stream is the upstream's fault: 502.
    fn from(e: EventStreamError) -> Self {
        crate::ApiError::bad_gateway("upstream_protocol_error", e.to_string())
    }
}

/// Incremental decoder; see the module docs.
#[derive(Debug)]
pub struct Decoder {
    /// The current partial message: the prelude first, then (once its length is known and
    /// checked) the rest, never more than one message.
    buf: Vec<u8>,
    /// Total length of the current message, once its prelude has been checked.
    total: Option<usize>,
    max_event: usize,
    poisoned: bool,
}

impl Decoder {
    pub fn new(max_event: usize) -> Self {
        Decoder { buf: Vec::new(), total: None, max_event, poisoned: false }
    }

    /// Bytes currently buffered (for tests of the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes; each complete message is passed to `emit`, whose error stops decoding and is
    /// returned as is.
    pub fn feed<E: From<EventStreamError>>(
        &mut self,
        mut input: &[u8],
        mut emit: impl FnMut(Message) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.poisoned {
            return Err(EventStreamError::Poisoned.into());
        }
        while !input.is_empty() {
            let want = self.total.unwrap_or(PRELUDE_LEN);
            let take = (want - self.buf.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.buf.extend_from_slice(head);
            input = rest;
            if self.buf.len() < want {
                break;
            }
            match self.total {
                None => {
                    let total = self.check_prelude().inspect_err(|_| self.poisoned = true)?;
                    self.total = Some(total);
                    self.buf.reserve_exact(total - PRELUDE_LEN);
                }
                Some(_) => {
                    let msg = decode_message(&self.buf).inspect_err(|_| self.poisoned = true)?;
                    self.buf.clear();
                    self.total = None;
                    emit(msg)?;
                }
            }
        }
        Ok(())
    }

    /// The body ended: an error if it ended inside a message.
    pub fn finish(&self) -> Result<(), EventStreamError> {
        if self.poisoned {
            return Err(EventStreamError::Poisoned);
        }
        if !self.buf.is_empty() {
            return Err(EventStreamError::Truncated { buffered: self.buf.len() });
        }
        Ok(())
    }

    /// Validate the 12-byte prelude in `buf`; returns the message's total length.
    fn check_prelude(&self) -> Result<usize, EventStreamError> {
        let p = &self.buf;
        let total = be_u32(p, 0).ok_or(EventStreamError::BadLength)? as usize;
        let headers = be_u32(p, 4).ok_or(EventStreamError::BadLength)? as usize;
        let crc = be_u32(p, 8).ok_or(EventStreamError::BadLength)?;
        if crc32fast::hash(&p[..8]) != crc {
            return Err(EventStreamError::PreludeCrc);
        }
        if total < MIN_MESSAGE_LEN || headers > total - MIN_MESSAGE_LEN {
            return Err(EventStreamError::BadLength);
        }
        if total > self.max_event {
            return Err(EventStreamError::MessageTooLarge { declared: total, max: self.max_event });
        }
        Ok(total)
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Decode one whole message whose prelude was already checked.
fn decode_message(m: &[u8]) -> Result<Message, EventStreamError> {
    let total = m.len();
    let headers_len = be_u32(m, 4).ok_or(EventStreamError::BadLength)? as usize;
    let crc = be_u32(m, total - 4).ok_or(EventStreamError::BadLength)?;
    if crc32fast::hash(&m[..total - 4]) != crc {
        return Err(EventStreamError::MessageCrc);
    }
    let headers_end = PRELUDE_LEN + headers_len;
    let headers = m.get(PRELUDE_LEN..headers_end).ok_or(EventStreamError::BadLength)?;
    let payload = m.get(headers_end..total - 4).ok_or(EventStreamError::BadLength)?;
    Ok(Message { headers: decode_headers(headers)?, payload: payload.to_vec() })
}

/// A cursor over the headers section that fails cleanly on truncation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EventStreamError> {
        if n > self.0.len() {
            return Err(EventStreamError::BadHeaders("truncated header"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EventStreamError> {
        self.take(N)?.try_into().map_err(|_| EventStreamError::BadHeaders("truncated header"))
    }
}

fn decode_headers(bytes: &[u8]) -> Result<Vec<Header>, EventStreamError> {
    let mut r = Reader(bytes);
    let mut headers = Vec::new();
    while !r.0.is_empty() {
        let [name_len] = r.array::<1>()?;
        if name_len == 0 {
            return Err(EventStreamError::BadHeaders("empty header name"));
        }
        let name = std::str::from_utf8(r.take(name_len as usize)?)
            .map_err(|_| EventStreamError::BadHeaders("header name is not UTF-8"))?
            .to_string();
        let [kind] = r.array::<1>()?;
        let value = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(r.array()?)),
            3 => HeaderValue::Short(i16::from_be_bytes(r.array()?)),
            4 => HeaderValue::Integer(i32::from_be_bytes(r.array()?)),
            5 => HeaderValue::Long(i64::from_be_bytes(r.array()?)),
            6 | 7 => {
                let len = u16::from_be_bytes(r.array()?) as usize;
                let raw = r.take(len)?;
                if kind == 6 {
                    HeaderValue::Bytes(raw.to_vec())
                } else {
                    let s = std::str::from_utf8(raw)
                        .map_err(|_| EventStreamError::BadHeaders("string header is not UTF-8"))?;
                    HeaderValue::String(s.to_string())
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(r.array()?)),
            9 => HeaderValue::Uuid(r.array()?),
            _ => return Err(EventStreamError::BadHeaders("unknown header value type")),
        };
        headers.push(Header { name, value });
    }
    Ok(headers)
}

/// Encode one message (for mocks and tests). Names longer than 255 bytes and byte/string values
/// longer than 65535 bytes are cut to fit the wire's length fields.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut headers = Vec::new();
    for h in &msg.headers {
        let name = &h.name.as_bytes()[..h.name.len().min(255)];
        headers.push(name.len() as u8);
        headers.extend_from_slice(name);
        let mut var = |kind: u8, raw: &[u8]| {
            let raw = &raw[..raw.len().min(u16::MAX as usize)];
            headers.push(kind);
            headers.extend_from_slice(&(raw.len() as u16).to_be_bytes());
            headers.extend_from_slice(raw);
        };
        match &h.value {
            HeaderValue::Bytes(b) => var(6, b),
            HeaderValue::String(s) => var(7, s.as_bytes()),
            HeaderValue::Bool(b) => headers.push(if *b { 0 } else { 1 }),
            HeaderValue::Byte(v) => {
                headers.push(2);
                headers.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Short(v) => {
                headers.push(3);
                headers.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Integer(v) => {
                headers.push(4);
                headers.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Long(v) => {
                headers.push(5);
                headers.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Timestamp(v) => {
                headers.push(8);
                headers.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(u) => {
                headers.push(9);
                headers.extend_from_slice(u);
            }
        }
    }
    let total = MIN_MESSAGE_LEN + headers.len() + msg.payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&msg.payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A message with string headers only, the shape Bedrock sends.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Message {
    Message {
        headers: headers
            .iter()
            .map(|(n, v)| Header { name: (*n).to_string(), value: HeaderValue::String((*v).to_string()) })
            .collect(),
        payload: payload.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_splits, Rng};

    const TEXT: &[u8] = include_bytes!("../../fixtures/bedrock/converse-stream-text.eventstream");
    const TOOL: &[u8] = include_bytes!("../../fixtures/bedrock/converse-stream-tool-use.eventstream");
    const REASONING: &[u8] = include_bytes!("../../fixtures/bedrock/converse-stream-reasoning.eventstream");
    const TEXT_DECODED: &str = include_str!("../../fixtures/bedrock/converse-stream-text.decoded.jsonl");
    const TOOL_DECODED: &str = include_str!("../../fixtures/bedrock/converse-stream-tool-use.decoded.jsonl");
    const REASONING_DECODED: &str = include_str!("../../fixtures/bedrock/converse-stream-reasoning.decoded.jsonl");

    fn decode_chunks(chunks: &[&[u8]], max: usize) -> Result<Vec<Message>, EventStreamError> {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |m| {
                out.push(m);
                Ok::<_, EventStreamError>(())
            })?;
            assert!(d.buffered() <= max);
        }
        d.finish()?;
        Ok(out)
    }

    fn decode_all(bytes: &[u8]) -> Vec<Message> {
        decode_chunks(&[bytes], 1 << 20).unwrap()
    }

    /// Every fixture decodes to exactly the neighbouring DERIVED `.decoded.jsonl` view.
    #[test]
    fn fixtures_match_decoded_views() {
        for (raw, decoded, count) in
            [(TEXT, TEXT_DECODED, 33), (TOOL, TOOL_DECODED, 26), (REASONING, REASONING_DECODED, 25)]
        {
            let msgs = decode_all(raw);
            assert_eq!(msgs.len(), count);
            let lines: Vec<serde_json::Value> =
                decoded.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(lines.len(), count);
            for (m, want) in msgs.iter().zip(&lines) {
                for name in [":event-type", ":content-type", ":message-type"] {
                    assert_eq!(m.header_str(name), want[name].as_str(), "{name}");
                }
                let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                assert_eq!(payload, want["payload"]);
            }
            // Re-encoding reproduces the recorded bytes exactly.
            let again: Vec<u8> = msgs.iter().flat_map(encode).collect();
            assert_eq!(again, raw);
        }
    }

    #[test]
    fn any_split_gives_same_messages() {
        let whole = decode_all(TEXT);
        let bytes: Vec<&[u8]> = TEXT.chunks(1).collect();
        assert_eq!(decode_chunks(&bytes, 1 << 20).unwrap(), whole);
        for split in 0..TOOL.len() {
            assert_eq!(decode_chunks(&[&TOOL[..split], &TOOL[split..]], 1 << 20).unwrap(), decode_all(TOOL));
        }
        let mut rng = Rng::new(0x9e3779b97f4a7c15);
        for _ in 0..200 {
            let chunks = random_splits(REASONING, &mut rng, 64);
            assert_eq!(decode_chunks(&chunks, 1 << 20).unwrap(), decode_all(REASONING));
        }
    }

    #[test]
    fn all_header_types_roundtrip() {
        let msg = Message {
            headers: vec![
                Header { name: "t".into(), value: HeaderValue::Bool(true) },
                Header { name: "f".into(), value: HeaderValue::Bool(false) },
                Header { name: "b".into(), value: HeaderValue::Byte(-3) },
                Header { name: "s".into(), value: HeaderValue::Short(-300) },
                Header { name: "i".into(), value: HeaderValue::Integer(70000) },
                Header { name: "l".into(), value: HeaderValue::Long(-(1 << 40)) },
                Header { name: "ba".into(), value: HeaderValue::Bytes(vec![0, 255, 7]) },
                Header { name: "str".into(), value: HeaderValue::String("héllo".into()) },
                Header { name: "ts".into(), value: HeaderValue::Timestamp(1_700_000_000_000) },
                Header { name: "u".into(), value: HeaderValue::Uuid([7; 16]) },
            ],
            payload: b"{}".to_vec(),
        };
        let bytes = encode(&msg);
        assert_eq!(decode_all(&bytes), vec![msg.clone()]);
        assert_eq!(msg.header_str("str"), Some("héllo"));
        assert_eq!(msg.header_str("i"), None);
        // Empty headers and empty payload are legal.
        let empty = Message::default();
        assert_eq!(encode(&empty).len(), MIN_MESSAGE_LEN);
        assert_eq!(decode_all(&encode(&empty)), vec![empty]);
    }

    #[test]
    fn corrupt_input_is_a_clean_error() {
        let mut bad = TEXT.to_vec();
        bad[8] ^= 1;
        assert_eq!(decode_chunks(&[&bad], 1 << 20), Err(EventStreamError::PreludeCrc));
        let mut bad = TEXT.to_vec();
        bad[40] ^= 1;
        assert_eq!(decode_chunks(&[&bad], 1 << 20), Err(EventStreamError::MessageCrc));
        assert_eq!(
            decode_chunks(&[&TEXT[..TEXT.len() - 1]], 1 << 20),
            Err(EventStreamError::Truncated { buffered: decode_tail_len(TEXT) - 1 })
        );
        // A declared length over the bound is refused before buffering the message.
        assert!(matches!(
            decode_chunks(&[TEXT], 100),
            Err(EventStreamError::MessageTooLarge { declared: 143, max: 100 })
        ));
        // Unknown header type, with valid CRCs.
        let mut raw = encode(&message(&[("a", "b")], b"x"));
        raw[12 + 2] = 42;
        let n = raw.len();
        let crc = crc32fast::hash(&raw[..n - 4]);
        raw[n - 4..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_chunks(&[&raw], 1 << 20), Err(EventStreamError::BadHeaders("unknown header value type")));
        // After an error the decoder stays failed.
        let mut d = Decoder::new(1 << 20);
        let mut sink = |_m: Message| Ok::<_, EventStreamError>(());
        assert!(d.feed(&raw, &mut sink).is_err());
        assert_eq!(d.feed(TEXT, &mut sink), Err(EventStreamError::Poisoned));
        assert_eq!(d.finish(), Err(EventStreamError::Poisoned));
    }

    /// Length of the last message of a stream.
    fn decode_tail_len(bytes: &[u8]) -> usize {
        let mut at = 0;
        let mut last = 0;
        while at < bytes.len() {
            last = be_u32(bytes, at).unwrap() as usize;
            at += last;
        }
        last
    }

    /// Random bytes, mutations and truncations of the fixtures: never a panic, memory within
    /// the bound, and garbage ends in an error (from `feed` or from `finish`).
    #[test]
    fn fuzz() {
        let mut rng = Rng::new(0x2545f4914f6cdd1d);
        let max = 4096;
        let fixtures = [TEXT, TOOL, REASONING];
        for i in 0..5000 {
            let input: Vec<u8> = match i % 3 {
                0 => {
                    let len = rng.below(2048);
                    rng.bytes(len)
                }
                1 => {
                    let mut v = fixtures[rng.below(3)].to_vec();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(v.len());
                        v[at] = rng.byte();
                    }
                    v
                }
                _ => {
                    let f = fixtures[rng.below(3)];
                    f[..rng.below(f.len())].to_vec()
                }
            };
            let mut d = Decoder::new(max);
            let mut count = 0usize;
            let mut result = Ok(());
            for piece in random_splits(&input, &mut rng, 64) {
                result = d.feed(piece, |_m| {
                    count += 1;
                    Ok::<_, EventStreamError>(())
                });
                assert!(d.buffered() <= max);
                if result.is_err() {
                    break;
                }
            }
            let ended = result.and_then(|_| d.finish());
            if i % 3 == 0 && !input.is_empty() {
                assert!(ended.is_err(), "random bytes decoded cleanly");
            }
            if i % 3 == 2 && ended.is_ok() {
                // A truncation that ends cleanly ends on a message boundary.
                assert!(count < 33);
            }
        }
    }
}
