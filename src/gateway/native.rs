//! Providers that do not speak the OpenAI wire: one dispatch over the pure translators in
//! `filters::translate`, so the handlers treat every native wire the same way.

use crate::upstream::Kind;
use filters::translate::{
    anthropic, bedrock, cohere, gemini, RequestOptions, ResponseOptions, StreamTranscoder, Translated, UpstreamRequest,
};
use filters::ApiError;

/// A native provider wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Anthropic,
    Gemini,
    Bedrock,
    Cohere,
}

impl Wire {
    /// The wire of a provider kind; `None` for OpenAI-wire kinds (forwarded, not translated).
    pub fn of(kind: Kind) -> Option<Wire> {
        match kind {
            Kind::Anthropic => Some(Wire::Anthropic),
            Kind::Gemini => Some(Wire::Gemini),
            Kind::Bedrock => Some(Wire::Bedrock),
            Kind::Cohere => Some(Wire::Cohere),
            Kind::OpenAi | Kind::Azure | Kind::OpenAiCompatible | Kind::Mock => None,
        }
    }

    /// Chat Completions request → the provider's native request.
    pub fn request(self, body: &[u8], opts: &RequestOptions<'_>) -> Result<UpstreamRequest, ApiError> {
        match self {
            Wire::Anthropic => anthropic::request(body, opts),
            Wire::Gemini => gemini::request(body, opts),
            Wire::Bedrock => bedrock::request(body, opts),
            Wire::Cohere => cohere::request(body, opts),
        }
    }

    /// The provider's whole answer → `chat.completion`.
    pub fn response(self, body: &[u8], opts: &ResponseOptions) -> Result<Translated, ApiError> {
        match self {
            Wire::Anthropic => anthropic::response(body, opts),
            Wire::Gemini => gemini::response(body, opts),
            Wire::Bedrock => bedrock::response(body, opts),
            Wire::Cohere => cohere::response(body, opts),
        }
    }

    /// A transcoder from the provider's stream to `chat.completion.chunk` SSE.
    pub fn stream(self, opts: ResponseOptions) -> Box<dyn StreamTranscoder> {
        match self {
            Wire::Anthropic => Box::new(anthropic::stream(opts)),
            Wire::Gemini => Box::new(gemini::stream(opts)),
            Wire::Bedrock => Box::new(bedrock::stream(opts)),
            Wire::Cohere => Box::new(cohere::stream(opts)),
        }
    }

    /// The provider's error answer → the OpenAI error shape.
    pub fn error(self, status: u16, body: &[u8], retry_after: Option<&str>) -> ApiError {
        match self {
            Wire::Anthropic => anthropic::error(
                status,
                body,
                retry_after.and_then(|r| r.trim().parse::<f64>().ok()).map(|s| s.ceil().max(0.0) as u64),
            ),
            Wire::Gemini => gemini::error(status, body, retry_after),
            Wire::Bedrock => bedrock::error(status, body, retry_after),
            Wire::Cohere => cohere::error(status, body, retry_after),
        }
    }
}
