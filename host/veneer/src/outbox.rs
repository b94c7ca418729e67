//! Event counts that hold across a fleet (`veneer admin events count`), in
//! `data_dir/events.db`.
//!
//! Every analytics event a node records gets an id. A single node folds it into its counts
//! at once. A fleet node appends it to a local **outbox** (durable: a restart resumes where it
//! stopped) and a publisher sends it to the `VENEER_EVENTS` stream with `Nats-Msg-Id` = the
//! event's id and a bounded number of acks in flight; a row leaves the outbox only once
//! JetStream acknowledged it, so a publish that failed (a leader election, NATS down) is
//! retried with the same id and the stream's de-duplication window stores it once. Each node
//! then folds the whole stream, in stream order, into its own counts, and keeps the stream
//! sequence it folded up to in the same transaction as the counts: a message is folded
//! exactly once whatever the restarts, and a count asked of any node is the fleet's.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::fleet::{EVENTS_SUBJECT, Fleet};
use crate::metrics::Metrics;

/// Events buffered before new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Rows one publish round reads from the outbox.
const BATCH: usize = 2_048;
/// Publishes awaiting their ack at once.
const IN_FLIGHT: usize = 256;

/// An outbox row: (seq, event id, subject, body).
type Pending = (i64, String, String, Vec<u8>);

/// One event on its way to the counts.
struct Row {
    id: String,
    tenant: String,
    event: String,
    body: Vec<u8>,
}

enum Message {
    Row(Row),
    Flush(SyncSender<()>),
}

/// The event log of one node.
pub struct EventLog {
    tx: SyncSender<Message>,
    reader: Mutex<Connection>,
    metrics: Arc<Metrics>,
    path: PathBuf,
    fleet: Option<Arc<Fleet>>,
    wake: Arc<tokio::sync::Notify>,
}

impl EventLog {
    /// Opens (or creates) `dir/events.db`; with `fleet`, starts the publisher and the folder
    /// (they wait for NATS while it is unreachable; the outbox keeps what they owe).
    pub fn open(
        dir: &Path,
        fleet: Option<Arc<Fleet>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<EventLog>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("events.db");
        let writer = connect(&path)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
                    subject TEXT NOT NULL, body BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS counts (
                    tenant TEXT NOT NULL, event TEXT NOT NULL, n INTEGER NOT NULL,
                    PRIMARY KEY (tenant, event)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS folded (
                    k INTEGER PRIMARY KEY CHECK (k = 0), seq INTEGER NOT NULL);",
            )
            .with_context(|| format!("creating the event schema in {}", path.display()))?;
        let reader = connect(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let wake = Arc::new(tokio::sync::Notify::new());
        let clustered = fleet.is_some();
        {
            let (m, wake) = (metrics.clone(), wake.clone());
            std::thread::Builder::new()
                .name("veneer-events".into())
                .spawn(move || write_loop(writer, rx, &m, clustered, &wake))
                .context("starting the event writer")?;
        }
        let log = Arc::new(EventLog {
            tx,
            reader: Mutex::new(reader),
            metrics,
            path,
            fleet,
            wake,
        });
        if let Some(fleet) = &log.fleet {
            tokio::spawn(publish_loop(log.clone(), fleet.clone()));
            tokio::spawn(fold_loop(log.clone(), fleet.clone()));
        }
        Ok(log)
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one event (never blocks: a full queue drops and counts).
    pub fn record(&self, tenant: &str, event: &str, body: &impl serde::Serialize) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let body =
            serde_json::to_vec(&serde_json::json!({"id": id, "event": body})).unwrap_or_default();
        let row = Row {
            id,
            tenant: tenant.to_owned(),
            event: event.to_owned(),
            body,
        };
        if self.tx.try_send(Message::Row(row)).is_err() {
            self.metrics.inc(
                "veneer_event_log_total",
                &[("outcome", "dropped_queue_full")],
            );
        }
    }

    /// Waits until everything recorded so far is stored (in the outbox or the counts).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }

    /// How many `event`s of `tenant` were counted (fleet-wide on a fleet node: every node's
    /// events folded so far).
    pub fn count(&self, tenant: &str, event: &str) -> anyhow::Result<u64> {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let n: Option<i64> = conn
            .query_row(
                "SELECT n FROM counts WHERE tenant = ?1 AND event = ?2",
                params![tenant, event],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(0) as u64)
    }

    /// Rows waiting in the outbox.
    pub fn outbox_depth(&self) -> u64 {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map_or(0, |n| n as u64)
    }

    /// Forgets a deleted tenant's counts.
    pub fn purge(&self, tenant: &str) {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = conn.execute("DELETE FROM counts WHERE tenant = ?1", params![tenant]);
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("opening the event log {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A fleet node's outbox must survive a crash once written: FULL, so a row the node
    // recorded is either stored or the write failed.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn subject(tenant: &str) -> String {
    let key = crate::fleet::tenant_key(tenant);
    format!(
        "{EVENTS_SUBJECT}.{}",
        key.strip_prefix("tenant.").unwrap_or(&key)
    )
}

fn write_loop(
    mut conn: Connection,
    rx: Receiver<Message>,
    metrics: &Metrics,
    clustered: bool,
    wake: &tokio::sync::Notify,
) {
    while let Ok(first) = rx.recv() {
        let mut rows = Vec::new();
        let mut flushed = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Row(row) => rows.push(row),
                Message::Flush(done) => flushed.push(done),
            }
            next = if rows.len() < 4096 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let stored = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for row in &rows {
                if clustered {
                    tx.execute(
                        "INSERT INTO outbox (id, subject, body) VALUES (?1, ?2, ?3)",
                        params![row.id, subject(&row.tenant), row.body],
                    )?;
                } else {
                    fold_one(&tx, &row.tenant, &row.event)?;
                }
            }
            tx.commit()
        })();
        let outcome = match stored {
            Ok(()) => "stored",
            Err(e) => {
                tracing::error!(error = %e, rows = rows.len(), "writing events");
                "write_failed"
            }
        };
        metrics.add(
            "veneer_event_log_total",
            &[("outcome", outcome)],
            rows.len() as u64,
        );
        if clustered && !rows.is_empty() {
            wake.notify_one();
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn fold_one(tx: &rusqlite::Transaction<'_>, tenant: &str, event: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO counts (tenant, event, n) VALUES (?1, ?2, 1)
         ON CONFLICT (tenant, event) DO UPDATE SET n = n + 1",
        params![tenant, event],
    )?;
    Ok(())
}

/// Sends the outbox to the stream, oldest first, and deletes what JetStream acknowledged.
async fn publish_loop(log: Arc<EventLog>, fleet: Arc<Fleet>) {
    let node = fleet.node.clone();
    let mut backoff = Duration::from_millis(50);
    loop {
        let reader = log.clone();
        let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Pending>> {
            let conn = reader.reader.lock().unwrap_or_else(PoisonError::into_inner);
            let mut stmt =
                conn.prepare("SELECT seq, id, subject, body FROM outbox ORDER BY seq LIMIT ?1")?;
            let rows = stmt
                .query_map(params![BATCH as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reading the event outbox");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        fleet.metrics().set(
            "veneer_fleet_outbox_depth",
            &[("node", node.as_str())],
            log.outbox_depth(),
        );
        if rows.is_empty() {
            // Woken by the writer, or every second to publish what an earlier failure left.
            let _ = tokio::time::timeout(Duration::from_secs(1), log.wake.notified()).await;
            continue;
        }
        let acked = publish(&fleet, &rows).await;
        if acked > 0 {
            let done: Vec<i64> = rows[..acked].iter().map(|r| r.0).collect();
            let writer = log.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let conn = writer.reader.lock().unwrap_or_else(PoisonError::into_inner);
                let (first, last) = (done[0], done[done.len() - 1]);
                conn.execute(
                    "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2",
                    params![first, last],
                )
            })
            .await;
            fleet
                .metrics()
                .add("veneer_fleet_events_published_total", &[], acked as u64);
        }
        if acked < rows.len() {
            // Not all taken (a leader election, NATS down): the rest again, same ids.
            fleet.metrics().add(
                "veneer_fleet_publish_retries_total",
                &[],
                (rows.len() - acked) as u64,
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// Publishes `rows` with at most [`IN_FLIGHT`] acks pending; returns how many leading rows
/// were acknowledged (a failure stops there: later rows are sent again, and any of them the
/// stream already took are recognised by their id).
async fn publish(fleet: &Fleet, rows: &[Pending]) -> usize {
    let js = fleet.jetstream();
    let mut acked = 0;
    for chunk in rows.chunks(IN_FLIGHT) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (_, id, subject, body) in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            match js
                .publish_with_headers(subject.clone(), headers, body.clone().into())
                .await
            {
                Ok(ack) => pending.push(ack),
                Err(_) => break,
            }
        }
        let sent = pending.len();
        let mut ok = 0;
        for ack in pending {
            match tokio::time::timeout(Duration::from_secs(10), ack).await {
                Ok(Ok(_)) => ok += 1,
                _ => break,
            }
        }
        acked += ok;
        if ok < chunk.len() || sent < chunk.len() {
            return acked;
        }
    }
    acked
}

/// Folds the stream into this node's counts, from the sequence after the last folded.
async fn fold_loop(log: Arc<EventLog>, fleet: Arc<Fleet>) {
    use futures_util::StreamExt as _;
    loop {
        let parts = match fleet.parts().await {
            Ok(parts) => parts,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let from = {
            let conn = log.reader.lock().unwrap_or_else(PoisonError::into_inner);
            conn.query_row("SELECT seq FROM folded WHERE k = 0", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .ok()
            .flatten()
            .unwrap_or(0) as u64
        };
        let consumer = parts
            .events
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(c) => c.messages().await,
            Err(e) => {
                tracing::debug!(error = %e, "creating the event consumer");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(messages) = messages else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut chunks = messages.ready_chunks(4096);
        while let Some(chunk) = chunks.next().await {
            let mut folded = Vec::with_capacity(chunk.len());
            let mut failed = false;
            for m in chunk {
                let Ok(m) = m else {
                    failed = true;
                    break;
                };
                let Ok(info) = m.info() else { continue };
                let seq = info.stream_sequence;
                let tenant_event = serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .ok()
                    .and_then(|v| {
                        let e = v.get("event")?;
                        Some((
                            e.get("tenant")?.as_str()?.to_owned(),
                            e.get("event")?.as_str()?.to_owned(),
                        ))
                    });
                folded.push((seq, tenant_event));
            }
            if !folded.is_empty() && !fold(&log, folded).await {
                break;
            }
            if failed {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Adds a run of stream messages to the counts with the new folded sequence, in one
/// transaction; messages at or below the sequence already folded are skipped.
async fn fold(log: &Arc<EventLog>, batch: Vec<(u64, Option<(String, String)>)>) -> bool {
    let log = log.clone();
    let done = tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
        let mut conn = log.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction()?;
        let mut last: u64 = tx
            .query_row("SELECT seq FROM folded WHERE k = 0", [], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64;
        for (seq, tenant_event) in batch {
            if seq <= last {
                continue;
            }
            if let Some((tenant, event)) = tenant_event {
                fold_one(&tx, &tenant, &event)?;
            }
            last = seq;
        }
        tx.execute(
            "INSERT INTO folded (k, seq) VALUES (0, ?1) ON CONFLICT (k) DO UPDATE SET seq = excluded.seq",
            params![last as i64],
        )?;
        tx.commit()
    })
    .await;
    match done {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "folding events");
            false
        }
        Err(_) => false,
    }
}
