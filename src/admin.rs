//! The admin listener: `/metrics` (Prometheus) and liveness, kept off the client listener so
//! metrics are never exposed to API callers by accident.

use crate::gateway::Shared;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    pub shared: Arc<Shared>,
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let len = resp.body().len();
    let headers = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => response(200, "text/plain; version=0.0.4", self.shared.metrics.render()),
            "/health" | "/healthz" => response(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            _ => {
                let e = filters::ApiError::not_found(format!("no admin route {path}"));
                response(404, "application/json", e.to_json())
            }
        }
    }
}
