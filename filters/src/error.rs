//! The one error type every phase returns, rendered in the OpenAI error shape so that OpenAI SDKs
//! raise the matching exception class for the status code.

use serde::Serialize;
use std::fmt;

/// An error answered to the client as `{"error":{"message","type","code","param"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI `type`: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `api_error`, ...
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
    /// Seconds the client should wait before retrying (429/503), sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: Option<&'a str>,
    param: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, message: message.into(), param: None, retry_after: None }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", Some(code), message)
    }

    /// 401 for missing, malformed, unknown or revoked credentials.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::unauthorized("invalid_api_key", message)
    }

    /// 401 with a specific code (`invalid_token` for a refused JWT, `mfa_required`).
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, "authentication_error", Some(code), message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, "permission_error", Some(code), message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found_error", Some("not_found"), message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("request body exceeds the gateway limit of {limit} bytes"),
        )
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(502, "api_error", Some(code), message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, "api_error", Some(code), message)
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "api_error", Some("upstream_timeout"), message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "api_error", Some("internal_error"), message)
    }

    /// The JSON body in the OpenAI error shape.
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            error: Inner { message: &self.message, kind: self.kind, code: self.code, param: self.param.as_deref() },
        };
        // Serializing plain strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Status class label for metrics: `2xx`, `4xx`, `5xx`.
    pub fn status_class(&self) -> &'static str {
        status_class(self.status)
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code.unwrap_or(self.kind), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = ApiError::bad_request("model_not_found", "nope \"x\"").with_param("model");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "nope \"x\"");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
    }

    #[test]
    fn null_code_and_param() {
        let e = ApiError::new(500, "api_error", None, "x");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert!(v["error"]["code"].is_null());
        assert!(v["error"]["param"].is_null());
    }
}
