//! Incremental Server-Sent Events reader and writer, shared by every stream transcoder.
//!
//! Input may be split at any byte (mid-line, mid-UTF-8 character, between `\r` and `\n`); the
//! reader yields the same events however the bytes arrive. Memory is bounded by `max_event`
//! bytes: one partial line plus one event's data, never the stream's length.

use std::fmt;

/// Default bound on one event (partial line + accumulated data).
pub const DEFAULT_MAX_EVENT: usize = 4 * 1024 * 1024;

/// One dispatched event. `data` lines are joined with `\n` as the SSE spec says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// One event grew beyond the configured bound.
    EventTooLarge(usize),
    /// A field was not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge(n) => write!(f, "upstream SSE event exceeds {n} bytes"),
            SseError::InvalidUtf8 => f.write_str("upstream SSE stream is not valid UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

#[derive(Debug)]
pub struct SseReader {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`; a leading `\n` now belongs to that line break.
    pending_cr: bool,
    event: Option<String>,
    id: Option<String>,
    data: String,
    has_data: bool,
    max_event: usize,
}

impl Default for SseReader {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT)
    }
}

impl SseReader {
    pub fn new(max_event: usize) -> Self {
        SseReader {
            line: Vec::new(),
            pending_cr: false,
            event: None,
            id: None,
            data: String::new(),
            has_data: false,
            max_event,
        }
    }

    /// Feed bytes; each complete event is passed to `emit`.
    pub fn feed(&mut self, mut input: &[u8], emit: &mut dyn FnMut(Event)) -> Result<(), SseError> {
        if self.pending_cr {
            self.pending_cr = false;
            if input.first() == Some(&b'\n') {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            match memchr::memchr2(b'\n', b'\r', input) {
                Some(i) => {
                    let line_end = i;
                    let mut next = i + 1;
                    if input[i] == b'\r' {
                        if i + 1 < input.len() {
                            if input[i + 1] == b'\n' {
                                next += 1;
                            }
                        } else {
                            self.pending_cr = true;
                        }
                    }
                    if self.line.is_empty() {
                        self.process_line_owned(&input[..line_end], emit)?;
                    } else {
                        self.push_line(&input[..line_end])?;
                        let line = std::mem::take(&mut self.line);
                        let r = self.process_line_owned(&line, emit);
                        self.line = line;
                        self.line.clear();
                        r?;
                    }
                    input = &input[next..];
                }
                None => {
                    self.push_line(input)?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// End of input: a final event without its blank line is still dispatched (as browsers do
    /// not, but upstreams sometimes omit the last blank line).
    pub fn finish(&mut self, emit: &mut dyn FnMut(Event)) -> Result<(), SseError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line_owned(&line, emit)?;
        }
        self.dispatch(emit);
        Ok(())
    }

    /// Bytes currently buffered (for tests of the memory bound).
    pub fn buffered(&self) -> usize {
        self.line.capacity().max(self.line.len()) + self.data.len()
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() + self.data.len() > self.max_event {
            return Err(SseError::EventTooLarge(self.max_event));
        }
        // Grow by doubling, but never past the bound, so capacity (real memory) stays within it.
        let need = self.line.len() + bytes.len();
        if need > self.line.capacity() {
            let target = need.max(self.line.capacity() * 2).min(self.max_event.max(need));
            self.line.reserve_exact(target - self.line.len());
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line_owned(&mut self, line: &[u8], emit: &mut dyn FnMut(Event)) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(emit);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event {
                    return Err(SseError::EventTooLarge(self.max_event));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(value.to_string()),
            b"id" => self.id = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, emit: &mut dyn FnMut(Event)) {
        if !self.has_data && self.event.is_none() {
            return;
        }
        let ev = Event { event: self.event.take(), data: std::mem::take(&mut self.data), id: self.id.take() };
        self.has_data = false;
        emit(ev);
    }
}

/// Append one event in canonical framing (`event:` line if named, one `data:` line per data
/// line, blank line).
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<Event> {
        let mut r = SseReader::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut |e| out.push(e)).unwrap();
        }
        r.finish(&mut |e| out.push(e)).unwrap();
        out
    }

    #[test]
    fn basic_and_crlf() {
        let s = b"event: a\r\ndata: x\r\ndata:y\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        let whole = collect(&[s]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].event.as_deref(), Some("a"));
        assert_eq!(whole[0].data, "x\ny");
        assert_eq!(whole[1].data, "[DONE]");
        for split in 0..s.len() {
            assert_eq!(collect(&[&s[..split], &s[split..]]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(collect(&bytes), whole);
    }

    #[test]
    fn bare_cr_line_endings() {
        assert_eq!(collect(&[b"data: a\r\rdata: b\r", b"\r"]).len(), 2);
    }

    #[test]
    fn utf8_split() {
        let s = "data: héllo 🦀\n\n".as_bytes();
        for split in 0..s.len() {
            let ev = collect(&[&s[..split], &s[split..]]);
            assert_eq!(ev[0].data, "héllo 🦀");
        }
    }

    #[test]
    fn bounded() {
        let mut r = SseReader::new(64);
        let big = vec![b'a'; 100];
        let mut sink = |_e: Event| {};
        assert!(r.feed(b"data: ", &mut sink).is_ok());
        assert_eq!(r.feed(&big, &mut sink), Err(SseError::EventTooLarge(64)));
    }

    #[test]
    fn unterminated_last_event() {
        let ev = collect(&[b"data: tail"]);
        assert_eq!(ev[0].data, "tail");
    }

    #[test]
    fn writer_roundtrip() {
        let mut out = Vec::new();
        write_event(&mut out, Some("e"), "a\nb");
        assert_eq!(out, b"event: e\ndata: a\ndata: b\n\n");
        assert_eq!(collect(&[&out])[0].data, "a\nb");
    }
}
