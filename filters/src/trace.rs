//! Request traces in the OpenTelemetry wire format (OTLP/HTTP with JSON encoding), with the
//! `gen_ai.*` semantic-convention attributes. Pure: the gateway fills a [`Span`] per request and
//! ships batches of [`export_body`] to the configured collector.

use serde_json::{json, Value};

/// W3C trace context of the incoming request (`traceparent: 00-<trace>-<parent>-<flags>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's `sampled` flag, passed on upstream.
    pub sampled: bool,
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parse a `traceparent` header; all-zero ids and unknown versions' malformed forms are refused
/// (a new trace is started instead).
pub fn parse_traceparent(v: &[u8]) -> Option<TraceContext> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || flags.len() != 2 || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if [version, trace, parent, flags].iter().any(|p| p.bytes().any(|b| b.is_ascii_uppercase())) {
        return None;
    }
    let trace_id: [u8; 16] = hex_array(trace)?;
    let parent: [u8; 8] = hex_array(parent)?;
    let [flags] = hex_array::<1>(flags)?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some(TraceContext { trace_id, parent_span_id: Some(parent), sampled: flags & 1 == 1 })
}

/// The `traceparent` to send upstream: this request's span as the parent.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!("00-{}-{}-{}", hex::encode(trace_id), hex::encode(span_id), if sampled { "01" } else { "00" })
}

/// This request's place in a trace: the caller's trace (or a new one), the caller's span as the
/// parent, and the gateway's own span, fixed when the request starts so the upstream call can
/// name it as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's sampling decision (a new trace is sampled: the gateway exports it).
    pub sampled: bool,
}

impl SpanContext {
    /// `new_trace_id` is used when the caller sent no valid trace context.
    pub fn start(incoming: Option<TraceContext>, new_trace_id: [u8; 16], span_id: [u8; 8]) -> SpanContext {
        SpanContext {
            trace_id: incoming.map_or(new_trace_id, |t| t.trace_id),
            span_id,
            parent_span_id: incoming.and_then(|t| t.parent_span_id),
            sampled: incoming.is_none_or(|t| t.sampled),
        }
    }

    /// The `traceparent` for the upstream call.
    pub fn upstream_traceparent(&self) -> String {
        traceparent(&self.trace_id, &self.span_id, self.sampled)
    }
}

/// One attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Float(f64),
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// An error status (4xx from the gateway, 5xx) with its message.
    pub error: Option<String>,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

impl Span {
    pub fn attr(&mut self, key: &'static str, value: AttrValue) {
        self.attributes.push((key, value));
    }

    pub fn attr_str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.attributes.push((key, AttrValue::Str(v.to_string())));
        }
    }

    fn to_otlp(&self) -> Value {
        let attributes: Vec<Value> = self
            .attributes
            .iter()
            .map(|(k, v)| {
                // OTLP JSON: 64-bit integers are strings.
                let value = match v {
                    AttrValue::Str(s) => json!({"stringValue": s}),
                    AttrValue::Int(i) => json!({"intValue": i.to_string()}),
                    AttrValue::Float(f) => json!({"doubleValue": f}),
                };
                json!({"key": k, "value": value})
            })
            .collect();
        let mut span = json!({
            "traceId": hex::encode(self.trace_id),
            "spanId": hex::encode(self.span_id),
            "name": self.name,
            // SPAN_KIND_SERVER
            "kind": 2,
            "startTimeUnixNano": self.start_unix_nanos.to_string(),
            "endTimeUnixNano": self.end_unix_nanos.to_string(),
            "attributes": attributes,
            // STATUS_CODE_ERROR = 2, STATUS_CODE_OK = 1
            "status": match &self.error {
                Some(m) => json!({"code": 2, "message": m}),
                None => json!({"code": 1}),
            },
        });
        if let Some(p) = self.parent_span_id {
            span["parentSpanId"] = hex::encode(p).into();
        }
        span
    }
}

/// An `ExportTraceServiceRequest` in OTLP JSON for a batch of spans.
pub fn export_body(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let body = json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "portcullis"},
                "spans": spans.iter().map(Span::to_otlp).collect::<Vec<_>>(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_joins_the_callers_trace_or_starts_one() {
        let caller = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let s = SpanContext::start(caller, [9; 16], [7; 8]);
        assert_eq!(s.trace_id, caller.unwrap().trace_id);
        assert_eq!(s.parent_span_id, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
        assert_eq!(s.upstream_traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-01");
        let s = SpanContext::start(None, [9; 16], [7; 8]);
        assert_eq!((s.trace_id, s.parent_span_id), ([9; 16], None));
    }

    #[test]
    fn traceparent_round_trip() {
        let h = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = parse_traceparent(h).unwrap();
        assert_eq!(hex::encode(c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_span_id.map(hex::encode).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(
            traceparent(&c.trace_id, &[1; 8], c.sampled),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0101010101010101-01"
        );
        let unsampled = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        assert!(SpanContext::start(Some(unsampled), [9; 16], [7; 8]).upstream_traceparent().ends_with("-00"));
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn otlp_json_shape() {
        let mut s = Span {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent_span_id: Some([3; 8]),
            name: "chat mock:echo".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            error: None,
            attributes: Vec::new(),
        };
        s.attr_str("gen_ai.conversation.id", Some("sess-1"));
        s.attr_str("gen_ai.agent.id", None);
        s.attr("gen_ai.usage.input_tokens", AttrValue::Int(12));
        let body: Value = serde_json::from_slice(&export_body("portcullis", &[s])).unwrap();
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "07070707070707070707070707070707");
        assert_eq!(span["parentSpanId"], "0303030303030303");
        assert_eq!(span["startTimeUnixNano"], "1");
        assert_eq!(span["attributes"].as_array().unwrap().len(), 2);
        assert_eq!(span["attributes"][1]["value"]["intValue"], "12");
        assert_eq!(span["status"]["code"], 1);
    }
}
