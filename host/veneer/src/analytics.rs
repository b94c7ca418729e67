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

/// `file` with `suffix` appended to its name: `FILE.1`, `FILE.erasing`.
fn suffixed(file: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `FILE` → `FILE.1` → `FILE.2` ..., dropping what falls past `keep`.
async fn rotate(file: &std::path::Path, keep: u32) {
    let numbered = |n: u32| suffixed(file, &format!(".{n}"));
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
                    // Erasures still reach what older files there are.
                    while let Some(message) = rx.recv().await {
                        if let Message::Erase(erase) = message {
                            carry_out(*erase, &file, rotation.keep).await;
                        }
                    }
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
                        Message::Erase(erase) => {
                            // Here, in the writer, so no line is appended and no file rotated
                            // while the files are rewritten; events wait in the queue.
                            if let Err(e) = out.flush().await {
                                tracing::error!(error = %e, "flushing analytics log");
                            }
                            carry_out(*erase, &file, rotation.keep).await;
                            // The current file may have been replaced: append to the new one.
                            match open(&file).await {
                                Ok((f, s)) => (out, size) = (f, s),
                                Err(e) => {
                                    tracing::error!(file = %file.display(), error = %e, "reopening the analytics log after an erasure");
                                }
                            }
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

    /// Removes every event of `tenant` whose visitor is one of `visitors` from the log and
    /// its rotated files (a data-subject erasure), after writing what was recorded before;
    /// how many lines went. Without a log, nothing to do.
    pub async fn erase(&self, tenant: &str, visitors: Vec<String>) -> std::io::Result<usize> {
        let Some(tx) = &self.tx else {
            return Ok(0);
        };
        let stopped = || std::io::Error::other("the analytics writer has stopped");
        let (done, wait) = oneshot::channel();
        let erase = Erase {
            tenant: tenant.to_owned(),
            visitors: visitors.into_iter().collect(),
            done,
        };
        if tx.send(Message::Erase(Box::new(erase))).await.is_err() {
            return Err(stopped());
        }
        wait.await.unwrap_or_else(|_| Err(stopped()))
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
    /// A data-subject erasure (boxed: rare and large).
    Erase(Box<Erase>),
}

/// A data-subject erasure for the writer to carry out.
struct Erase {
    tenant: String,
    visitors: std::collections::HashSet<String>,
    done: oneshot::Sender<std::io::Result<usize>>,
}

/// Carries out `erase` on the log `file` and its `keep` rotated files (on the blocking pool),
/// and answers it.
async fn carry_out(erase: Erase, file: &std::path::Path, keep: u32) {
    let Erase {
        tenant,
        visitors,
        done,
    } = erase;
    let path = file.to_owned();
    let result =
        tokio::task::spawn_blocking(move || erase_in_files(&path, keep, &tenant, &visitors))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let _ = done.send(result);
}

/// [`erase_in`] for the log and each rotated file it keeps; lines removed in all.
fn erase_in_files(
    file: &std::path::Path,
    keep: u32,
    tenant: &str,
    visitors: &std::collections::HashSet<String>,
) -> std::io::Result<usize> {
    let mut removed = erase_in(file, tenant, visitors)?;
    for n in 1..=keep {
        removed += erase_in(&suffixed(file, &format!(".{n}")), tenant, visitors)?;
    }
    Ok(removed)
}

/// Rewrites `path` without the lines of `tenant`'s `visitors` (a missing file has none); a
/// file with none of theirs is left as it is. The new file replaces the old by a rename, so a
/// crash leaves one or the other whole.
fn erase_in(
    path: &std::path::Path,
    tenant: &str,
    visitors: &std::collections::HashSet<String>,
) -> std::io::Result<usize> {
    use std::io::{BufRead, Write};
    #[derive(serde::Deserialize)]
    struct Whose<'a> {
        #[serde(borrow)]
        tenant: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        visitor: std::borrow::Cow<'a, str>,
    }
    let input = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let temp = suffixed(path, ".erasing");
    let copy = || -> std::io::Result<usize> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
        let mut removed = 0;
        for line in std::io::BufReader::new(input).split(b'\n') {
            let line = line?;
            // A line that is not an event (a torn write) is kept: it names no one.
            let theirs = serde_json::from_slice::<Whose>(&line)
                .is_ok_and(|w| w.tenant == tenant && visitors.contains(w.visitor.as_ref()));
            if theirs {
                removed += 1;
            } else {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
        }
        let out = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        if removed > 0 {
            out.sync_all()?;
        }
        Ok(removed)
    };
    let removed = match copy() {
        Ok(n) if n > 0 => n,
        other => {
            // Nothing of theirs, or the copy failed (a full disk): the file stays as it was.
            let _ = std::fs::remove_file(&temp);
            return other;
        }
    };
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // The rename itself must reach the disk, or a crash could bring the old file back.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
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

    /// A log `events.jsonl` in a fresh folder named for `test`, rotated past `max_bytes`.
    fn log_in(test: &str, max_bytes: u64, keep: u32) -> (PathBuf, Analytics) {
        let dir = std::env::temp_dir().join(format!("veneer-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let analytics = Analytics::start(
            Some(dir.join("events.jsonl")),
            Rotation { max_bytes, keep },
            Arc::new(Metrics::default()),
        );
        (dir, analytics)
    }

    #[tokio::test]
    async fn the_log_rotates_past_its_size_and_keeps_a_bounded_number_of_files() {
        let (dir, analytics) = log_in("rotate", 2_000, 2);
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

    #[tokio::test]
    async fn an_erasure_removes_a_visitors_lines_from_every_file_and_the_log_goes_on() {
        let (dir, analytics) = log_in("erase", 3_000, 3);
        // Visitors v0..v4 in turn, so each file holds some of v1's lines; and v1 of another
        // tenant, who is someone else.
        for n in 0..60 {
            analytics.record(event(n % 5));
            if n % 10 == 9 {
                analytics.flush().await;
            }
        }
        let mut elsewhere = event(1);
        elsewhere.tenant = "other".into();
        analytics.record(elsewhere);
        let files = || {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .expect("dir")
                .filter_map(|e| Some(e.ok()?.path()))
                .collect();
            names.sort();
            names
        };
        let lines = |who: &str, tenant: &str| {
            files()
                .iter()
                .flat_map(|f| {
                    std::fs::read_to_string(f)
                        .expect("read")
                        .lines()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .filter(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("a whole line");
                    v["visitor"] == who && v["tenant"] == tenant
                })
                .count()
        };
        // Recorded just before the erasure, still in the queue: erased too.
        analytics.record(event(1));
        let removed = analytics
            .erase("shop", vec!["v1".into(), "nobody".into()])
            .await
            .expect("erase");
        assert_eq!(removed, 13, "12 in turn and the one queued");
        assert!(files().len() > 2, "rotated files were rewritten too");
        assert_eq!(lines("v1", "shop"), 0);
        assert_eq!(lines("v1", "other"), 1, "another tenant's v1 is not theirs");
        assert_eq!(lines("v2", "shop"), 12);
        assert!(
            !files()
                .iter()
                .any(|f| f.to_string_lossy().ends_with(".erasing")),
            "no temporary file left"
        );
        // The writer appends to the rewritten file afterwards.
        analytics.record(event(7));
        analytics.flush().await;
        assert_eq!(lines("v7", "shop"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
