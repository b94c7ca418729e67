//! Analytics events: plugins record them synchronously, a background task writes them.
//!
//! `record` never blocks a request: events go into a bounded channel and are dropped (and
//! counted) when it is full. The writer appends JSON lines to the configured file, one event
//! per line, flushing after each batch so a crash loses at most what is in flight.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When, RFC 3339.
    pub ts: String,
    /// Tenant name.
    pub tenant: String,
    /// Visitor id.
    pub visitor: String,
    /// Request id.
    pub request_id: String,
    /// Request path.
    pub path: String,
    /// The plugin that recorded it.
    pub plugin: String,
    /// Event name.
    pub event: String,
    /// Properties.
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// The sending side, shared by all requests.
#[derive(Clone)]
pub struct Analytics {
    tx: Option<mpsc::Sender<Event>>,
    metrics: Arc<Metrics>,
}

/// Events buffered before new ones are dropped.
pub const QUEUE: usize = 10_000;

impl Analytics {
    /// Starts the writer task for `file`; with `None`, events are counted and discarded.
    pub fn start(file: Option<PathBuf>, metrics: Arc<Metrics>) -> Self {
        let Some(file) = file else {
            return Analytics { tx: None, metrics };
        };
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        tokio::spawn(async move {
            let mut out = match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .await
            {
                Ok(f) => tokio::io::BufWriter::new(f),
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "cannot open analytics log; events will be discarded");
                    while rx.recv().await.is_some() {}
                    return;
                }
            };
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                for event in batch.drain(..) {
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line).await {
                        tracing::error!(error = %e, "writing analytics log");
                    }
                }
                if let Err(e) = out.flush().await {
                    tracing::error!(error = %e, "flushing analytics log");
                }
            }
        });
        Analytics {
            tx: Some(tx),
            metrics,
        }
    }

    /// Queues an event without waiting.
    pub fn record(&self, event: Event) {
        let Some(tx) = &self.tx else {
            self.metrics
                .inc("veneer_analytics_events_total", &[("outcome", "discarded")]);
            return;
        };
        let outcome = if tx.try_send(event).is_ok() {
            "queued"
        } else {
            "dropped_queue_full"
        };
        self.metrics
            .inc("veneer_analytics_events_total", &[("outcome", outcome)]);
    }
}
