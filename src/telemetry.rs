//! Exporting request spans to an OpenTelemetry collector (OTLP/HTTP, JSON encoding), off the
//! request path: `record` only queues; a background task batches and posts. A full queue drops
//! spans (counted and logged) rather than slowing requests.

use crate::upstream::dns::Resolver;
use crate::upstream::fetch;
use filters::trace::Span;
use pingora::connectors::http::Connector;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 4096;
const BATCH: usize = 256;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Tracer {
    tx: Option<mpsc::Sender<Span>>,
    /// The exporter, until the first span starts it inside the serving runtime.
    pending: Mutex<Option<Exporter>>,
    dropped: AtomicU64,
}

struct Exporter {
    rx: mpsc::Receiver<Span>,
    url: url::Url,
    service: String,
}

impl Tracer {
    pub fn disabled() -> Self {
        Tracer { tx: None, pending: Mutex::new(None), dropped: AtomicU64::new(0) }
    }

    /// A tracer posting to `endpoint`, or a disabled one when it is unset or unparsable.
    pub fn new(endpoint: Option<&str>, service: &str) -> Self {
        let Some(url) = endpoint.and_then(|e| url::Url::parse(e).ok()) else { return Self::disabled() };
        let (tx, rx) = mpsc::channel(QUEUE);
        let exporter = Exporter { rx, url, service: service.to_string() };
        Tracer { tx: Some(tx), pending: Mutex::new(Some(exporter)), dropped: AtomicU64::new(0) }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue a finished span. Must be called from within a tokio runtime.
    pub fn record(&self, span: Span) {
        let Some(tx) = &self.tx else { return };
        if let Some(exporter) = self.pending.lock().ok().and_then(|mut p| p.take()) {
            tokio::spawn(exporter.run());
        }
        if tx.try_send(span).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("telemetry: {n} spans dropped (the collector is slow or unreachable)");
            }
        }
    }
}

impl Exporter {
    async fn run(mut self) {
        let connector = Connector::new(None);
        let resolver = Resolver::new(Duration::from_secs(60), POST_TIMEOUT);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let deadline = tokio::time::sleep(FLUSH_EVERY);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    got = self.rx.recv() => match got {
                        Some(span) => {
                            batch.push(span);
                            if batch.len() >= BATCH {
                                break;
                            }
                        }
                        None => {
                            self.flush(&connector, &resolver, &mut batch).await;
                            return;
                        }
                    },
                    _ = &mut deadline => break,
                }
            }
            self.flush(&connector, &resolver, &mut batch).await;
        }
    }

    async fn flush(&self, connector: &Connector, resolver: &Resolver, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let body = filters::trace::export_body(&self.service, batch);
        let n = batch.len();
        batch.clear();
        match fetch::post(connector, resolver, &self.url, "application/json", body, POST_TIMEOUT).await {
            Ok((200..=299, _)) => {}
            Ok((status, _)) => log::warn!("telemetry: the collector refused {n} spans with HTTP {status}"),
            Err(e) => log::warn!("telemetry: cannot send {n} spans: {e}"),
        }
    }
}
