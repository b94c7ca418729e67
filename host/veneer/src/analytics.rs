//! Analytics events: plugins record them synchronously, a background task writes them.
//!
//! `record` never blocks a request: events go into a bounded channel and are dropped (and
//! counted) when it is full. The writer appends JSON lines to the configured file, one event
//! per line, flushing after each batch so a crash loses at most what is in flight.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

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
    tx: Option<mpsc::Sender<Message>>,
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
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
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
                let mut flushed = Vec::new();
                for message in batch.drain(..) {
                    let event = match message {
                        Message::Event(event) => *event,
                        Message::Flush(done) => {
                            flushed.push(done);
                            continue;
                        }
                    };
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line).await {
                        tracing::error!(error = %e, "writing analytics log");
                    }
                }
                if let Err(e) = out.flush().await {
                    tracing::error!(error = %e, "flushing analytics log");
                }
                // Everything queued before a flush request is on disk now.
                for done in flushed {
                    let _ = done.send(());
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
        let outcome = if tx.try_send(Message::Event(Box::new(event))).is_ok() {
            "queued"
        } else {
            "dropped_queue_full"
        };
        self.metrics
            .inc("veneer_analytics_events_total", &[("outcome", outcome)]);
    }

    /// Waits until every event recorded before this call is written and flushed to the log
    /// (at shutdown). Events recorded meanwhile are still accepted.
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (done, wait) = oneshot::channel();
        // `send` (not `try_send`): a flush must not be lost to a full queue; it waits its turn.
        if tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// What the writer task receives.
enum Message {
    /// An event to append (boxed: the queue holds many, most of them small).
    Event(Box<Event>),
    /// Answer once everything before it is flushed.
    Flush(oneshot::Sender<()>),
}
