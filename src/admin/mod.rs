//! The admin listener: `/metrics` (Prometheus), liveness and the admin API (`api`), kept off
//! the client listener so they are never exposed to API callers by accident.

pub mod api;
pub mod console;

use crate::gateway::Shared;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    pub shared: Arc<Shared>,
}

pub fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
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
        if console::handles(&path) {
            let method = session.req_header().method.as_str().to_string();
            let target = session.req_header().uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
            let cookies: Vec<String> = session
                .req_header()
                .headers
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok().map(String::from))
                .collect();
            let body = match read_body(session).await {
                Ok(b) => b,
                Err(e) => return response(e.status, "application/json", e.to_json()),
            };
            let cookies = cookies.join("; ");
            return console::serve(&self.shared, &method, &target, Some(cookies.as_str()), &body).await;
        }
        if api::handles(&path) {
            let method = session.req_header().method.as_str().to_string();
            let target = session.req_header().uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
            let authorization = session.req_header().headers.get("authorization").map(|v| v.as_bytes().to_vec());
            let body = match read_body(session).await {
                Ok(b) => b,
                Err(e) => return response(e.status, "application/json", e.to_json()),
            };
            let a = api::serve(&self.shared, &method, &target, authorization.as_deref(), &body).await;
            return response(a.status, "application/json", a.body);
        }
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

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, filters::ApiError> {
    let mut out = Vec::new();
    let read = async {
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if out.len() + chunk.len() > api::MAX_BODY {
                        return Err(filters::ApiError::payload_too_large(api::MAX_BODY));
                    }
                    out.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(()),
                Err(_) => {
                    return Err(filters::ApiError::bad_request("invalid_body", "could not read the request body"))
                }
            }
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(filters::ApiError::bad_request("request_timeout", "the request body did not arrive in time"))
        }
    }
    Ok(out)
}
