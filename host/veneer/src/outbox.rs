//! Event counts that hold across a fleet (`veneer admin events count`), in
//! `data_dir/events.db`.
//!
//! Every analytics event a node records gets an id. A single node folds it into its counts
//! (SQLite) at once. A fleet node appends it to a local **outbox** (durable: a restart resumes
//! where it stopped) and a publisher sends it to the `VENEER_EVENTS` stream with
//! `Nats-Msg-Id` = the event's id and a bounded number of acks in flight; a row leaves the
//! outbox only once JetStream acknowledged it, so a publish that failed (a leader election,
//! NATS down) is retried with the same id and the stream's de-duplication window stores it
//! once. One node of the fleet at a time — the holder of a lease — folds the stream, in
//! order, into per-tenant counts in the `veneer_aggregates` bucket (see [`fold_loop`]); a count
//! asked of any node is read from there, so it is the whole fleet's, each event once.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::fleet::{EVENTS_SUBJECT, Fleet};
use crate::metrics::Metrics;

/// Events buffered before new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Rows one publish round reads from the outbox.
const BATCH: usize = 2_048;
/// The largest event published (NATS's default max_payload is 1 MiB).
const MAX_EVENT_BYTES: usize = 256 << 10;
/// Publishes awaiting their ack at once.
const IN_FLIGHT: usize = 256;
/// How often the writer stores what was recorded, in one transaction (one fsync) however many
/// events arrived meanwhile. A flush stores at once.
const GROUP_COMMIT: Duration = Duration::from_millis(20);

/// An outbox row: (seq, event id, subject, body).
type Pending = (i64, String, String, Vec<u8>);

/// One event on its way to the counts.
struct Row {
    id: String,
    tenant: String,
    event: String,
    body: Vec<u8>,
}

/// Events waiting for the writer. Recording only appends here: waking the writer for every
/// event cost a context switch per request on a busy core (a third of a small page's time), so
/// the writer wakes on its own every [`GROUP_COMMIT`], or at once for a flush.
#[derive(Default)]
struct Queue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    rows: Vec<Row>,
    flushes: Vec<SyncSender<()>>,
    closed: bool,
}

impl Queue {
    /// Appends `row`; `false` when the queue is full (the event is dropped).
    fn push(&self, row: Row) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if w.rows.len() >= QUEUE {
            return false;
        }
        w.rows.push(row);
        true
    }
}

/// The event log of one node.
pub struct EventLog {
    queue: Arc<Queue>,
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
",
            )
            .with_context(|| format!("creating the event schema in {}", path.display()))?;
        let reader = connect(&path)?;
        let queue = Arc::new(Queue::default());
        let wake = Arc::new(tokio::sync::Notify::new());
        let clustered = fleet.is_some();
        {
            let (m, wake, queue) = (metrics.clone(), wake.clone(), queue.clone());
            std::thread::Builder::new()
                .name("veneer-events".into())
                .spawn(move || write_loop(writer, &queue, &m, clustered, &wake))
                .context("starting the event writer")?;
        }
        let log = Arc::new(EventLog {
            queue,
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
        // A single node only counts: no id or body to build on the request's path.
        let (id, body) = match self.fleet {
            None => (String::new(), Vec::new()),
            Some(_) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let body = serde_json::to_vec(&serde_json::json!({"id": id, "event": body}))
                    .unwrap_or_default();
                if body.len() > MAX_EVENT_BYTES {
                    // NATS would refuse it (max_payload), and it would hold up the outbox
                    // behind it.
                    self.metrics.inc(
                        "veneer_event_log_total",
                        &[("outcome", "dropped_too_large")],
                    );
                    return;
                }
                (id, body)
            }
        };
        let row = Row {
            id,
            tenant: tenant.to_owned(),
            event: event.to_owned(),
            body,
        };
        if !self.queue.push(row) {
            self.metrics.inc(
                "veneer_event_log_total",
                &[("outcome", "dropped_queue_full")],
            );
        }
    }

    /// Waits until everything recorded so far is stored (in the outbox or the counts).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        {
            let mut w = self
                .queue
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if w.closed {
                return;
            }
            w.flushes.push(done);
        }
        self.queue.wake.notify_one();
        let _ = wait.recv_timeout(Duration::from_secs(10));
    }

    /// The fleet this log publishes to, if any.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// How many `event`s of `tenant` a single node counted (a fleet node's are in
    /// [`fleet_count`]).
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

    /// Forgets a deleted tenant's counts here (the fleet's: [`reset_counts`], by the node
    /// that deleted it).
    pub fn purge(&self, tenant: &str) {
        // Events still queued for it would otherwise be counted after the delete.
        self.flush();
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
    queue: &Queue,
    metrics: &Metrics,
    clustered: bool,
    wake: &tokio::sync::Notify,
) {
    loop {
        let (rows, flushed, closed) = {
            let w = queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut w, _) = queue
                .wake
                .wait_timeout_while(w, GROUP_COMMIT, |w| w.flushes.is_empty() && !w.closed)
                .unwrap_or_else(PoisonError::into_inner);
            (
                std::mem::take(&mut w.rows),
                std::mem::take(&mut w.flushes),
                w.closed,
            )
        };
        if !rows.is_empty() {
            store(&mut conn, &rows, metrics, clustered, wake);
        }
        for done in flushed {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// Stores one batch: a fleet node's rows into the outbox (and wakes the publisher), a single
/// node's as counts.
fn store(
    conn: &mut Connection,
    rows: &[Row],
    metrics: &Metrics,
    clustered: bool,
    wake: &tokio::sync::Notify,
) {
    let stored = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        if clustered {
            for row in rows {
                tx.execute(
                    "INSERT INTO outbox (id, subject, body) VALUES (?1, ?2, ?3)",
                    params![row.id, subject(&row.tenant), row.body],
                )?;
            }
        } else {
            let mut counts: std::collections::HashMap<(&str, &str), i64> =
                std::collections::HashMap::new();
            for row in rows {
                *counts.entry((&row.tenant, &row.event)).or_default() += 1;
            }
            for ((tenant, event), n) in counts {
                fold(&tx, tenant, event, n)?;
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
    if clustered {
        wake.notify_one();
    }
}

impl Drop for EventLog {
    /// Stores what is still queued, and lets the writer thread end.
    fn drop(&mut self) {
        self.queue
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.queue.wake.notify_one();
    }
}

fn fold(tx: &rusqlite::Transaction<'_>, tenant: &str, event: &str, n: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO counts (tenant, event, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant, event) DO UPDATE SET n = n + ?3",
        params![tenant, event, n],
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
    // A sliding window: the oldest ack is awaited once IN_FLIGHT are outstanding, so the
    // pipe never drains between batches. Acks are taken in order, so `acked` is always a
    // prefix of `rows`.
    let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let mut acked = 0;
    let wait = |ack: async_nats::jetstream::context::PublishAckFuture| async move {
        matches!(
            tokio::time::timeout(Duration::from_secs(10), ack).await,
            Ok(Ok(_))
        )
    };
    for (_, id, subject, body) in rows {
        if pending.len() == IN_FLIGHT {
            let Some(oldest) = pending.pop_front() else {
                break;
            };
            if !wait(oldest).await {
                return acked;
            }
            acked += 1;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        match js
            .publish_with_headers(subject.clone(), headers, body.clone().into())
            .await
        {
            Ok(ack) => pending.push_back(ack),
            Err(_) => break,
        }
    }
    for ack in pending {
        if !wait(ack).await {
            return acked;
        }
        acked += 1;
    }
    acked
}

/// The KV bucket holding the fleet's event counts (`counts.<tenant>`) and the aggregator's
/// lease.
pub const AGGREGATES_BUCKET: &str = "veneer_aggregates";
const LEASE_KEY: &str = "lease.events";
/// The aggregator renews its lease this often; a lease not renewed for [`LEASE_EXPIRES`]
/// (as seen by the node waiting for it, on its own clock) is taken over.
const LEASE_RENEW: Duration = Duration::from_secs(1);
const LEASE_EXPIRES: Duration = Duration::from_secs(5);
/// How long the aggregator waits without a message before it checks its consumer.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// One tenant's counts as the bucket holds them: per event name, and the stream sequence
/// folded up to for this tenant (a message at or below it is never added again).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Counts {
    seq: u64,
    events: std::collections::BTreeMap<String, u64>,
}

fn counts_key(tenant: &str) -> String {
    let key = crate::fleet::tenant_key(tenant);
    format!("counts.{}", key.strip_prefix("tenant.").unwrap_or(&key))
}

async fn aggregates(fleet: &Fleet) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    fleet
        .aggregates
        .get_or_try_init(|| {
            crate::fleet::open_bucket(
                fleet.jetstream(),
                async_nats::jetstream::kv::Config {
                    bucket: AGGREGATES_BUCKET.into(),
                    description: "Veneer event counts, folded once from VENEER_EVENTS".into(),
                    history: 1,
                    num_replicas: fleet.replicas(),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                },
            )
        })
        .await
        .cloned()
}

/// Starts a deleted tenant's fleet counts afresh after the stream's current end: events
/// recorded before the deletion never count for a new tenant of the same name.
pub async fn reset_counts(fleet: &Fleet, tenant: &str) -> anyhow::Result<()> {
    let parts = fleet.parts().await?;
    let mut events = parts.events.clone();
    let end = events.info().await?.state.last_sequence;
    let kv = aggregates(fleet).await?;
    let value = serde_json::to_vec(&Counts {
        seq: end,
        events: Default::default(),
    })?;
    kv.put(counts_key(tenant), value.into()).await?;
    Ok(())
}

/// The fleet-wide count of `event` for `tenant` (`Err` while NATS is unreachable).
pub async fn fleet_count(fleet: &Fleet, tenant: &str, event: &str) -> anyhow::Result<u64> {
    anyhow::ensure!(fleet.connected(), "not connected");
    let kv = aggregates(fleet).await?;
    let Some(value) = kv.get(counts_key(tenant)).await? else {
        return Ok(0);
    };
    let counts: Counts = serde_json::from_slice(&value).context("the counts are unreadable")?;
    Ok(counts.events.get(event).copied().unwrap_or(0))
}

/// Aggregation: one node at a time (the holder of a lease key) reads the stream in order and
/// adds each message to its tenant's counts with compare-and-set, skipping what the counts
/// say they already hold. Every node runs this and waits for the lease; a node that dies
/// loses it to another within [`LEASE_EXPIRES`], which resumes from the counts. Should two
/// nodes ever fold at once (a paused holder waking after losing its lease), the sequence in
/// each tenant's counts and the compare-and-set keep every message counted once.
async fn fold_loop(_log: Arc<EventLog>, fleet: Arc<Fleet>) {
    let node = fleet.node.clone();
    loop {
        let kv = match fleet.parts().await {
            Ok(_) => match aggregates(&fleet).await {
                Ok(kv) => kv,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(revision) = take_lease(&kv, &node).await else {
            continue;
        };
        fleet
            .metrics()
            .set("veneer_fleet_aggregator", &[("node", node.as_str())], 1);
        tracing::info!(node, "this node aggregates the fleet's events");
        if let Err(e) = aggregate(&fleet, &kv, &node, revision).await {
            tracing::warn!(error = %format!("{e:#}"), "event aggregation stopped");
        }
        fleet
            .metrics()
            .set("veneer_fleet_aggregator", &[("node", node.as_str())], 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until this node holds the lease; its revision. `None` on a NATS error.
async fn take_lease(kv: &async_nats::jetstream::kv::Store, node: &str) -> Option<u64> {
    let mut seen: Option<(u64, std::time::Instant)> = None;
    loop {
        match kv.create(LEASE_KEY, node.as_bytes().to_vec().into()).await {
            Ok(rev) => return Some(rev),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {}
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return None;
            }
        }
        let entry = match kv.entry(LEASE_KEY).await {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return None;
            }
        };
        if entry.value.as_ref() == node.as_bytes() && seen.is_none() {
            // This node's own lease from before a restart: take it back at once.
            if let Ok(rev) = kv
                .update(LEASE_KEY, node.as_bytes().to_vec().into(), entry.revision)
                .await
            {
                return Some(rev);
            }
        }
        match seen {
            Some((rev, since)) if rev == entry.revision => {
                if since.elapsed() >= LEASE_EXPIRES
                    && let Ok(rev) = kv
                        .update(LEASE_KEY, node.as_bytes().to_vec().into(), entry.revision)
                        .await
                {
                    return Some(rev);
                }
            }
            _ => seen = Some((entry.revision, std::time::Instant::now())),
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// Folds the stream while this node holds the lease (renewing it); returns when it is lost.
async fn aggregate(
    fleet: &Fleet,
    kv: &async_nats::jetstream::kv::Store,
    node: &str,
    mut lease: u64,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let parts = fleet.parts().await?;
    // Where to start: the lowest sequence any tenant's counts may still miss is above the
    // cursor the last aggregator recorded after each batch.
    let cursor = match kv.get("cursor").await? {
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0),
        None => 0,
    };
    let consumer = parts
        .events
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: cursor + 1,
            },
            ..Default::default()
        })
        .await?;
    let mut chunks = consumer.messages().await?.ready_chunks(4096);
    let mut renew = tokio::time::interval(LEASE_RENEW);
    let mut renewed = std::time::Instant::now();
    // An ordered consumer whose server died can stall without an error: when the stream
    // holds messages past the last one seen and none came for a while, start again from
    // the cursor.
    let mut stall = tokio::time::interval(STALL_CHECK);
    stall.reset();
    let mut upto = cursor;
    let mut progressed = true;
    let mut events = parts.events.clone();
    loop {
        tokio::select! {
            _ = stall.tick() => {
                if !progressed {
                    let end = events.info().await?.state.last_sequence;
                    anyhow::ensure!(end <= upto, "the event consumer stalled at {upto} of {end}; starting again");
                }
                progressed = false;
            }
            _ = renew.tick() => {
                lease = kv
                    .update(LEASE_KEY, node.as_bytes().to_vec().into(), lease)
                    .await
                    .context("the aggregator's lease was lost")?;
                renewed = std::time::Instant::now();
            }
            chunk = chunks.next() => {
                let Some(chunk) = chunk else {
                    anyhow::bail!("the event consumer ended");
                };
                let mut batch: std::collections::BTreeMap<String, Vec<(u64, String)>> =
                    std::collections::BTreeMap::new();
                let mut last = 0;
                for m in chunk {
                    let m = m.map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
                    let Ok(info) = m.info() else { continue };
                    last = last.max(info.stream_sequence);
                    let parsed = serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .ok()
                        .and_then(|v| {
                            let e = v.get("event")?;
                            Some((
                                e.get("tenant")?.as_str()?.to_owned(),
                                e.get("event")?.as_str()?.to_owned(),
                            ))
                        });
                    if let Some((tenant, event)) = parsed {
                        batch.entry(tenant).or_default().push((info.stream_sequence, event));
                    }
                }
                let mut folded = 0u64;
                for (tenant, events) in batch {
                    // A batch over many tenants takes a while: the lease is kept meanwhile.
                    if renewed.elapsed() >= LEASE_RENEW {
                        lease = kv
                            .update(LEASE_KEY, node.as_bytes().to_vec().into(), lease)
                            .await
                            .context("the aggregator's lease was lost")?;
                        renewed = std::time::Instant::now();
                    }
                    folded += add(kv, &tenant, &events).await?;
                }
                if last > 0 {
                    kv.put("cursor", last.to_string().into()).await?;
                    upto = upto.max(last);
                    progressed = true;
                }
                fleet.metrics().add("veneer_fleet_events_folded_total", &[], folded);
            }
        }
    }
}

/// Adds `events` (stream sequence, name) to one tenant's counts with compare-and-set;
/// how many were new.
async fn add(
    kv: &async_nats::jetstream::kv::Store,
    tenant: &str,
    events: &[(u64, String)],
) -> anyhow::Result<u64> {
    let key = counts_key(tenant);
    for _ in 0..100 {
        let entry = kv.entry(key.as_str()).await?;
        let (mut counts, revision) = match &entry {
            Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => (
                serde_json::from_slice::<Counts>(&e.value).unwrap_or_default(),
                Some(e.revision),
            ),
            Some(e) => (Counts::default(), Some(e.revision)),
            None => (Counts::default(), None),
        };
        let mut added = 0;
        for (seq, event) in events {
            if *seq <= counts.seq {
                continue;
            }
            *counts.events.entry(event.clone()).or_default() += 1;
            counts.seq = *seq;
            added += 1;
        }
        if added == 0 {
            return Ok(0);
        }
        let value: bytes::Bytes = serde_json::to_vec(&counts).unwrap_or_default().into();
        let stored = match revision {
            Some(rev) => kv.update(key.as_str(), value, rev).await.is_ok(),
            None => kv.create(key.as_str(), value).await.is_ok(),
        };
        if stored {
            return Ok(added);
        }
    }
    anyhow::bail!("the counts of {tenant:?} kept changing under this aggregator")
}
