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
    /// The counted event log (with a data_dir), attached once the node knows its fleet.
    log: Arc<std::sync::OnceLock<Arc<crate::outbox::EventLog>>>,
}

/// Events buffered before new ones are dropped.
pub const QUEUE: usize = 10_000;

/// When the log is rotated, and how many old files are kept.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate once the file is past this size (0: never).
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` newest).
    pub keep: u32,
}

async fn open(
    file: &std::path::Path,
) -> std::io::Result<(tokio::io::BufWriter<tokio::fs::File>, u64)> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .await?;
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((tokio::io::BufWriter::new(f), size))
}

/// `FILE` → `FILE.1` → `FILE.2` ..., dropping what falls past `keep`.
async fn rotate(file: &std::path::Path, keep: u32) {
    let numbered = |n: u32| {
        let mut name = file.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        let _ = tokio::fs::remove_file(file).await;
        return;
    }
    let _ = tokio::fs::remove_file(numbered(keep)).await;
    for n in (1..keep).rev() {
        let _ = tokio::fs::rename(numbered(n), numbered(n + 1)).await;
    }
    if let Err(e) = tokio::fs::rename(file, numbered(1)).await {
        tracing::error!(file = %file.display(), error = %e, "rotating the analytics log");
    }
}

impl Analytics {
    /// Starts the writer task for `file`; with `None`, events are counted and discarded.
    pub fn start(file: Option<PathBuf>, rotation: Rotation, metrics: Arc<Metrics>) -> Self {
        let Some(file) = file else {
            return Analytics {
                tx: None,
                metrics,
                log: Arc::default(),
            };
        };
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        tokio::spawn(async move {
            let (mut out, mut size) = match open(&file).await {
                Ok(opened) => opened,
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
                    size += line.len() as u64;
                }
                if let Err(e) = out.flush().await {
                    tracing::error!(error = %e, "flushing analytics log");
                }
                if rotation.max_bytes > 0 && size >= rotation.max_bytes {
                    rotate(&file, rotation.keep).await;
                    match open(&file).await {
                        Ok((f, s)) => (out, size) = (f, s),
                        Err(e) => {
                            tracing::error!(file = %file.display(), error = %e, "reopening the analytics log after rotation");
                        }
                    }
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
            log: Arc::default(),
        }
    }

    /// Counts every event from now on in `log` too (once; later calls are ignored).
    pub fn attach(&self, log: Arc<crate::outbox::EventLog>) {
        let _ = self.log.set(log);
    }

    /// The counted event log, if one is attached.
    pub fn log(&self) -> Option<&Arc<crate::outbox::EventLog>> {
        self.log.get()
    }

    /// Queues an event without waiting.
    pub fn record(&self, event: Event) {
        if let Some(log) = self.log.get() {
            log.record(&event.tenant, &event.event, &event);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event {
            ts: "2026-11-25T00:00:00Z".into(),
            tenant: "shop".into(),
            visitor: format!("v{n}"),
            request_id: "r".into(),
            path: "/".into(),
            plugin: "p".into(),
            event: "page_view".into(),
            properties: serde_json::Map::new(),
        }
    }

    #[tokio::test]
    async fn the_log_rotates_past_its_size_and_keeps_a_bounded_number_of_files() {
        let dir = std::env::temp_dir().join(format!("veneer-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("events.jsonl");
        let analytics = Analytics::start(
            Some(file.clone()),
            Rotation {
                max_bytes: 2_000,
                keep: 2,
            },
            Arc::new(Metrics::default()),
        );
        for n in 0..200 {
            analytics.record(event(n));
            if n % 10 == 9 {
                analytics.flush().await;
            }
        }
        analytics.flush().await;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["events.jsonl", "events.jsonl.1", "events.jsonl.2"],
            "the current file and two rotated ones, no more"
        );
        for name in &names {
            let text = std::fs::read_to_string(dir.join(name)).expect("read");
            // Rotation happens between batches, so a file may pass the size by one batch.
            assert!(
                text.len() < 2_000 + 10 * 200,
                "{name}: {} bytes",
                text.len()
            );
            assert!(
                text.lines()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
                "whole lines only"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
