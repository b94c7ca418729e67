//! The experiment ledger: who was exposed to which variation and when, and every conversion,
//! kept in SQLite (`data_dir/ledger.db`) so reports survive restarts. Requests never wait for
//! it: they hand rows to a bounded queue (a full queue drops and counts), and one writer thread
//! stores them in a transaction per batch. A graceful stop drains the queue first.
//!
//! Reports are computed from these rows when asked for: a conversion counts for the variation
//! a visitor was exposed to if it came at or after the exposure (attribution), each visitor
//! once per experiment (the first exposure wins, as the sticky assignment does), and bots are
//! kept but left out of the figures.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::metrics::Metrics;

/// Rows buffered before new ones are dropped (and counted).
pub const QUEUE: usize = 65_536;

/// A visitor's first exposure to an experiment.
#[derive(Debug, Clone)]
pub struct Exposure {
    /// Tenant name.
    pub tenant: String,
    /// Experiment key.
    pub experiment: String,
    /// Variation index (0 is the control).
    pub variation: u32,
    /// Visitor id.
    pub visitor: String,
    /// Microseconds since the epoch (fine enough that two requests of one visitor never tie,
    /// while what one request records shares its instant).
    pub at_us: i64,
    /// The segments the visitor was in.
    pub segments: Vec<String>,
    /// A bot (kept, left out of reports).
    pub bot: bool,
}

/// A campaign shown to a visitor (a plugin said so with `campaigns.impression`).
#[derive(Debug, Clone)]
pub struct Impression {
    /// Tenant name.
    pub tenant: String,
    /// Campaign id.
    pub campaign: String,
    /// Visitor id.
    pub visitor: String,
    /// Milliseconds since the epoch.
    pub at_us: i64,
    /// The channel it was shown on.
    pub channel: String,
    /// A bot (kept, left out of reports).
    pub bot: bool,
}

/// A conversion: a goal reached, with its value.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// Tenant name.
    pub tenant: String,
    /// Goal name.
    pub goal: String,
    /// Visitor id.
    pub visitor: String,
    /// Milliseconds since the epoch.
    pub at_us: i64,
    /// Revenue or any value (0 when none).
    pub value: f64,
    /// Count it only if the visitor has not reached this goal within this many microseconds
    /// (a reloaded thank-you page is one conversion, not two).
    pub once_within_us: Option<i64>,
    /// ISO 4217 code of `value`, when it is money.
    pub currency: Option<String>,
    /// A bot (kept, left out of reports).
    pub bot: bool,
}

/// An e-mail open (counted kinds only) or click, for the campaign the image showed.
#[derive(Debug, Clone)]
pub struct Signal {
    /// Tenant name.
    pub tenant: String,
    /// The campaign the drawn slot showed.
    pub campaign: String,
    /// The channel (`email`).
    pub channel: String,
    /// The recipient's id.
    pub visitor: String,
    /// `open` or `click`.
    pub kind: &'static str,
    /// Microseconds since the epoch.
    pub at_us: i64,
}

enum Row {
    Signal(Signal),
    Purge(String),
    Erase(String, Vec<String>),
    Exposure(Exposure),
    Impression(Impression),
    Conversion(Conversion),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The ledger: a queue in front of the writer thread, and a reader connection for reports.
pub struct Ledger {
    tx: SyncSender<Row>,
    reader: Mutex<Connection>,
    metrics: Arc<Metrics>,
    path: PathBuf,
}

/// One variation's figures for one goal.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VariationFigures {
    /// Variation index.
    pub variation: u32,
    /// Visitors exposed (bots left out).
    pub users: u64,
    /// Exposed visitors who reached the goal at or after their exposure.
    pub conversions: u64,
    /// Their values, summed per visitor then over visitors.
    pub value_sum: f64,
    /// The sum over visitors of the square of each visitor's value.
    pub value_sum_squares: f64,
}

/// An experiment's figures, overall and broken down.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Per variation, in variation order.
    pub variations: Vec<VariationFigures>,
    /// Per exposure day (UTC, `YYYY-MM-DD`), per variation.
    pub by_day: Vec<(String, Vec<VariationFigures>)>,
    /// Per segment the visitors were in at exposure, per variation.
    pub by_segment: Vec<(String, Vec<VariationFigures>)>,
    /// Exposed bots, left out of every figure above.
    pub bots_excluded: u64,
}

impl Ledger {
    /// Opens (or creates) `dir/ledger.db` and starts the writer thread; rows older than
    /// `retention_days` are deleted (hourly), so the ledger stays bounded.
    pub fn open(dir: &Path, metrics: Arc<Metrics>, retention_days: u32) -> anyhow::Result<Ledger> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("ledger.db");
        let writer = connect(&path)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS exposures (
                    tenant TEXT NOT NULL, experiment TEXT NOT NULL, visitor TEXT NOT NULL,
                    variation INTEGER NOT NULL, at_us INTEGER NOT NULL, day TEXT NOT NULL,
                    segments TEXT NOT NULL, bot INTEGER NOT NULL,
                    PRIMARY KEY (tenant, experiment, visitor)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS conversions (
                    tenant TEXT NOT NULL, goal TEXT NOT NULL, visitor TEXT NOT NULL,
                    at_us INTEGER NOT NULL, value REAL NOT NULL, currency TEXT,
                    bot INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS conversions_by_visitor
                    ON conversions (tenant, goal, visitor, at_us);
                 CREATE TABLE IF NOT EXISTS impressions (
                    tenant TEXT NOT NULL, campaign TEXT NOT NULL, visitor TEXT NOT NULL,
                    at_us INTEGER NOT NULL, day TEXT NOT NULL, channel TEXT NOT NULL,
                    bot INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS impressions_by_visitor
                    ON impressions (tenant, campaign, visitor, at_us);
                 CREATE TABLE IF NOT EXISTS signals (
                    tenant TEXT NOT NULL, campaign TEXT NOT NULL, channel TEXT NOT NULL,
                    visitor TEXT NOT NULL, kind TEXT NOT NULL, at_us INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS signals_by_campaign ON signals (tenant, campaign);
                 CREATE INDEX IF NOT EXISTS signals_by_time ON signals (at_us);
                 CREATE INDEX IF NOT EXISTS exposures_by_time ON exposures (at_us);
                 CREATE INDEX IF NOT EXISTS impressions_by_time ON impressions (at_us);
                 CREATE INDEX IF NOT EXISTS conversions_by_time ON conversions (at_us);",
            )
            .with_context(|| format!("creating the ledger schema in {}", path.display()))?;
        let reader = connect(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("veneer-ledger".into())
            .spawn(move || write_loop(writer, rx, &m, retention_days))
            .context("starting the ledger writer")?;
        Ok(Ledger {
            tx,
            reader: Mutex::new(reader),
            metrics,
            path,
        })
    }

    /// Where the ledger lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an exposure (never blocks).
    pub fn exposure(&self, e: Exposure) {
        self.send(Row::Exposure(e), "exposure");
    }

    /// Queues an impression (never blocks).
    pub fn impression(&self, i: Impression) {
        self.send(Row::Impression(i), "impression");
    }

    /// Queues an e-mail open or click (never blocks).
    pub fn signal(&self, s: Signal) {
        self.send(Row::Signal(s), "signal");
    }

    /// Queues a conversion (never blocks); `false` when it could not be queued.
    pub fn conversion(&self, c: Conversion) -> bool {
        self.send(Row::Conversion(c), "conversion")
    }

    /// Queues the deletion of everything recorded for `tenant` (a deleted tenant's figures
    /// must not become a new tenant's of the same name).
    pub fn purge(&self, tenant: &str) {
        let _ = self.tx.send(Row::Purge(tenant.to_owned()));
    }

    /// Deletes every row of `visitors` in `tenant` (a data-subject erasure); done when it
    /// returns.
    pub fn erase_visitors(&self, tenant: &str, visitors: Vec<String>) {
        let _ = self.tx.send(Row::Erase(tenant.to_owned(), visitors));
        self.flush();
    }

    /// Every row recorded for `visitors` in `tenant` (a data-subject export).
    pub fn visitor_rows(
        &self,
        tenant: &str,
        visitors: &[String],
    ) -> anyhow::Result<serde_json::Value> {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = serde_json::Map::new();
        for (table, columns) in [
            ("exposures", "experiment, variation, at_us, segments"),
            ("impressions", "campaign, channel, at_us, ''"),
            ("conversions", "goal, value, at_us, currency"),
        ] {
            let mut stmt = conn.prepare(&format!(
                "SELECT visitor, {columns} FROM {table} WHERE tenant = ?1 AND visitor = ?2 ORDER BY at_us"
            ))?;
            let mut rows = Vec::new();
            for v in visitors {
                let found = stmt.query_map(params![tenant, v], |r| {
                    let second: rusqlite::types::Value = r.get(2)?;
                    let fourth: rusqlite::types::Value = r.get(4)?;
                    let plain = |v: rusqlite::types::Value| match v {
                        rusqlite::types::Value::Integer(i) => serde_json::json!(i),
                        rusqlite::types::Value::Real(f) => serde_json::json!(f),
                        rusqlite::types::Value::Text(t) => serde_json::json!(t),
                        _ => serde_json::Value::Null,
                    };
                    Ok(serde_json::json!([
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        plain(second),
                        r.get::<_, i64>(3)?,
                        plain(fourth)
                    ]))
                })?;
                for row in found {
                    rows.push(row?);
                }
            }
            out.insert(table.to_owned(), serde_json::Value::Array(rows));
        }
        Ok(serde_json::Value::Object(out))
    }

    fn send(&self, row: Row, kind: &'static str) -> bool {
        let (queued, outcome) = match self.tx.try_send(row) {
            Ok(()) => (true, "queued"),
            Err(TrySendError::Full(_)) => (false, "dropped_queue_full"),
            Err(TrySendError::Disconnected(_)) => (false, "dropped_writer_gone"),
        };
        self.metrics.inc(
            "veneer_ledger_rows_total",
            &[("kind", kind), ("outcome", outcome)],
        );
        queued
    }

    /// Waits until every row queued before this call is stored.
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Row::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// An experiment's figures for one goal.
    pub fn figures(&self, tenant: &str, experiment: &str, goal: &str) -> anyhow::Result<Figures> {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        // Per visitor: their variation, exposure day and segments, and what they converted
        // at or after their exposure.
        let sql = "SELECT e.variation, e.day, e.segments, COUNT(c.at_us), COALESCE(SUM(c.value), 0)
             FROM exposures e
             LEFT JOIN conversions c ON c.tenant = e.tenant AND c.goal = ?3
                  AND c.visitor = e.visitor AND c.at_us > e.at_us
             WHERE e.tenant = ?1 AND e.experiment = ?2 AND e.bot = 0
             GROUP BY e.visitor";
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![tenant, experiment, goal], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, f64>(4)?,
            ))
        })?;
        let mut figures = Figures::default();
        for row in rows {
            let (variation, day, segments, converted, value) = row?;
            let variation = u32::try_from(variation).unwrap_or(0);
            let add = |list: &mut Vec<VariationFigures>| {
                let i = variation as usize;
                if list.len() <= i {
                    list.resize_with(i + 1, VariationFigures::default);
                    for (j, v) in list.iter_mut().enumerate() {
                        v.variation = u32::try_from(j).unwrap_or(u32::MAX);
                    }
                }
                let v = &mut list[i];
                v.users += 1;
                v.conversions += u64::from(converted > 0);
                v.value_sum += value;
                v.value_sum_squares += value * value;
            };
            add(&mut figures.variations);
            add(group(&mut figures.by_day, &day));
            for s in segments.split(',').filter(|s| !s.is_empty()) {
                add(group(&mut figures.by_segment, s));
            }
        }
        figures.by_day.sort_by(|a, b| a.0.cmp(&b.0));
        figures.by_segment.sort_by(|a, b| a.0.cmp(&b.0));
        figures.bots_excluded = conn.query_row(
            "SELECT COUNT(*) FROM exposures WHERE tenant = ?1 AND experiment = ?2 AND bot = 1",
            params![tenant, experiment],
            |r| r.get::<_, i64>(0),
        )? as u64;
        Ok(figures)
    }
}

/// A campaign's figures for one goal.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CampaignFigures {
    /// Impressions (bots left out).
    pub impressions: u64,
    /// Visitors who saw it.
    pub reach: u64,
    /// Visitors who reached the goal within the window after an impression.
    pub conversions: u64,
    /// Those conversions' values.
    pub value: f64,
    /// Impressions, reach, conversions and value per UTC day (of the impression, and of the
    /// conversion for conversions and value).
    pub by_day: Vec<PeriodFigures>,
    /// Impressions, reach, conversions and value per channel (a conversion goes to the channel
    /// of the visitor's latest impression before it).
    pub by_channel: Vec<PeriodFigures>,
    /// Impressions shown to bots, left out of every figure above.
    pub bots_excluded: u64,
    /// E-mail opens by a person or Gmail's proxy (Apple's, prefetches and scanners left out).
    pub opens: u64,
    /// E-mail clicks (scanners left out): the primary signal of a message.
    pub clicks: u64,
}

/// One row of a campaign breakdown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeriodFigures {
    /// The day or channel.
    pub key: String,
    /// Impressions.
    pub impressions: u64,
    /// Distinct visitors who saw it.
    pub reach: u64,
    /// Attributed converters (by day only).
    pub conversions: u64,
    /// Attributed value (by day only).
    pub value: f64,
    /// E-mail opens counted (by channel only).
    pub opens: u64,
    /// Clicks (by channel only).
    pub clicks: u64,
}

impl Ledger {
    /// How many distinct visitors (bots left out) were exposed to any experiment or campaign
    /// holdout, and of them how many were in each of `segments` when exposed.
    pub fn segment_sizes(
        &self,
        tenant: &str,
        segments: &[String],
    ) -> anyhow::Result<(u64, Vec<u64>)> {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let total: i64 = conn.query_row(
            "SELECT COUNT(DISTINCT visitor) FROM exposures WHERE tenant = ?1 AND bot = 0",
            params![tenant],
            |r| r.get(0),
        )?;
        // Segments are stored as ",a,b,": instr, unlike LIKE, takes any name literally.
        let mut stmt = conn.prepare_cached(
            "SELECT COUNT(DISTINCT visitor) FROM exposures
             WHERE tenant = ?1 AND bot = 0 AND instr(segments, ',' || ?2 || ',') > 0",
        )?;
        let mut sizes = Vec::with_capacity(segments.len());
        for name in segments {
            let n: i64 = stmt.query_row(params![tenant, name], |r| r.get(0))?;
            sizes.push(u64::try_from(n).unwrap_or(0));
        }
        Ok((u64::try_from(total).unwrap_or(0), sizes))
    }

    /// A campaign's figures for one goal: a conversion counts if it came within
    /// `window_days` after one of the visitor's impressions.
    pub fn campaign_figures(
        &self,
        tenant: &str,
        campaign: &str,
        goal: &str,
        window_days: u32,
    ) -> anyhow::Result<CampaignFigures> {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let window_us = i64::from(window_days) * 86_400_000_000;
        let mut figures = CampaignFigures::default();
        // Each breakdown counts a visitor once per group (a visitor seen on two days is in
        // both days' reach, once in the total).
        for (column, list) in [
            ("day", &mut figures.by_day),
            ("channel", &mut figures.by_channel),
        ] {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {column}, COUNT(*), COUNT(DISTINCT visitor) FROM impressions
                 WHERE tenant = ?1 AND campaign = ?2 AND bot = 0 GROUP BY {column}"
            ))?;
            let rows = stmt.query_map(params![tenant, campaign], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (key, n, reach) = row?;
                let p = period(list, &key);
                p.impressions = n as u64;
                p.reach = reach as u64;
            }
        }
        (figures.impressions, figures.reach, figures.bots_excluded) = conn.query_row(
            "SELECT COALESCE(SUM(bot = 0), 0),
                    COUNT(DISTINCT CASE WHEN bot = 0 THEN visitor END),
                    COALESCE(SUM(bot = 1), 0)
             FROM impressions WHERE tenant = ?1 AND campaign = ?2",
            params![tenant, campaign],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )?;
        let mut signals = conn.prepare_cached(
            "SELECT channel, kind, COUNT(*) FROM signals
             WHERE tenant = ?1 AND campaign = ?2 GROUP BY channel, kind",
        )?;
        let rows = signals.query_map(params![tenant, campaign], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (channel, kind, n) = row?;
            let n = u64::try_from(n).unwrap_or(0);
            let p = period(&mut figures.by_channel, &channel);
            if kind == "open" {
                p.opens += n;
                figures.opens += n;
            } else {
                p.clicks += n;
                figures.clicks += n;
            }
        }
        // A conversion counts if it came after one of the visitor's impressions (strictly: not
        // in the same request) and within the window; by channel, for the channel of the
        // latest such impression.
        let mut converted = conn.prepare_cached(
            "SELECT c.visitor, c.at_us, c.value,
                    (SELECT i.channel FROM impressions i WHERE i.tenant = c.tenant
                       AND i.campaign = ?2 AND i.visitor = c.visitor AND i.bot = 0
                       AND i.at_us < c.at_us AND c.at_us < i.at_us + ?4
                     ORDER BY i.at_us DESC LIMIT 1)
             FROM conversions c
             WHERE c.tenant = ?1 AND c.goal = ?3 AND c.bot = 0 AND EXISTS (
                SELECT 1 FROM impressions i WHERE i.tenant = c.tenant AND i.campaign = ?2
                  AND i.visitor = c.visitor AND i.bot = 0
                  AND i.at_us < c.at_us AND c.at_us < i.at_us + ?4)
             ORDER BY c.visitor, c.at_us",
        )?;
        let rows = converted.query_map(params![tenant, campaign, goal, window_us], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut counted_day = std::collections::HashSet::new();
        let mut counted_channel = std::collections::HashSet::new();
        let mut counted = std::collections::HashSet::new();
        for row in rows {
            let (visitor, at_us, value, channel) = row?;
            let day = day_of(at_us);
            let p = period(&mut figures.by_day, &day);
            p.value += value;
            if counted_day.insert((day, visitor.clone())) {
                p.conversions += 1;
            }
            if let Some(channel) = channel {
                let p = period(&mut figures.by_channel, &channel);
                p.value += value;
                if counted_channel.insert((channel, visitor.clone())) {
                    p.conversions += 1;
                }
            }
            if counted.insert(visitor) {
                figures.conversions += 1;
            }
            figures.value += value;
        }
        figures.by_day.sort_by(|a, b| a.key.cmp(&b.key));
        figures.by_channel.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(figures)
    }
}

fn period<'a>(list: &'a mut Vec<PeriodFigures>, key: &str) -> &'a mut PeriodFigures {
    let i = match list.iter().position(|p| p.key == key) {
        Some(i) => i,
        None => {
            list.push(PeriodFigures {
                key: key.to_owned(),
                ..PeriodFigures::default()
            });
            list.len() - 1
        }
    };
    &mut list[i]
}

fn group<'a>(
    groups: &'a mut Vec<(String, Vec<VariationFigures>)>,
    key: &str,
) -> &'a mut Vec<VariationFigures> {
    let i = match groups.iter().position(|(k, _)| k == key) {
        Some(i) => i,
        None => {
            groups.push((key.to_owned(), Vec::new()));
            groups.len() - 1
        }
    };
    &mut groups[i].1
}

/// The UTC date of an instant, `YYYY-MM-DD`.
fn day_of(at_us: i64) -> String {
    jiff::Timestamp::from_microsecond(at_us)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening ledger {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A batch committed is on disk; the queue in front of it is what a crash can lose.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Deletes rows older than `retention_days`.
fn prune(conn: &Connection, retention_days: u32) -> rusqlite::Result<usize> {
    let cutoff =
        jiff::Timestamp::now().as_microsecond() - i64::from(retention_days) * 86_400_000_000;
    let mut n = 0;
    for table in ["exposures", "impressions", "conversions", "signals"] {
        n += conn.execute(
            &format!("DELETE FROM {table} WHERE at_us < ?1"),
            params![cutoff],
        )?;
    }
    Ok(n)
}

fn write_loop(mut conn: Connection, rx: Receiver<Row>, metrics: &Metrics, retention_days: u32) {
    let mut batch = Vec::with_capacity(1024);
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        if retention_days > 0
            && pruned_at.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(3600))
        {
            match prune(&conn, retention_days) {
                Ok(n) if n > 0 => tracing::info!(
                    rows = n,
                    retention_days,
                    "ledger rows past retention deleted"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the ledger"),
            }
            pruned_at = Some(std::time::Instant::now());
        }
        let Ok(first) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            if matches!(
                rx.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Disconnected)
            ) {
                return;
            }
            continue;
        };
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        let mut waiting = Vec::new();
        let stored = store(&mut conn, &mut batch, &mut waiting);
        match stored {
            Ok(n) => metrics.add("veneer_ledger_rows_stored_total", &[], n),
            Err(e) => {
                metrics.inc("veneer_ledger_write_errors_total", &[]);
                tracing::error!(error = %e, "ledger batch could not be stored");
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

fn store(
    conn: &mut Connection,
    batch: &mut Vec<Row>,
    waiting: &mut Vec<std::sync::mpsc::Sender<()>>,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut n = 0;
    {
        let mut exposure = tx.prepare_cached(
            "INSERT OR IGNORE INTO exposures
             (tenant, experiment, visitor, variation, at_us, day, segments, bot)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut impression = tx.prepare_cached(
            "INSERT INTO impressions (tenant, campaign, visitor, at_us, day, channel, bot)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut conversion = tx.prepare_cached(
            "INSERT INTO conversions (tenant, goal, visitor, at_us, value, currency, bot)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE NOT EXISTS (
                SELECT 1 FROM conversions WHERE tenant = ?1 AND goal = ?2 AND visitor = ?3
                  AND at_us > ?4 - ?8 AND at_us <= ?4)",
        )?;
        let mut signal = tx.prepare_cached(
            "INSERT INTO signals (tenant, campaign, channel, visitor, kind, at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for row in batch.drain(..) {
            match row {
                Row::Signal(x) => {
                    signal.execute(params![
                        x.tenant, x.campaign, x.channel, x.visitor, x.kind, x.at_us
                    ])?;
                    n += 1;
                }
                Row::Impression(i) => {
                    impression.execute(params![
                        i.tenant,
                        i.campaign,
                        i.visitor,
                        i.at_us,
                        day_of(i.at_us),
                        i.channel,
                        i.bot
                    ])?;
                    n += 1;
                }
                Row::Exposure(e) => {
                    let day = day_of(e.at_us);
                    let segments = format!(",{},", e.segments.join(","));
                    exposure.execute(params![
                        e.tenant,
                        e.experiment,
                        e.visitor,
                        e.variation,
                        e.at_us,
                        day,
                        segments,
                        e.bot
                    ])?;
                    n += 1;
                }
                Row::Conversion(c) => {
                    // Without a dedupe window, a window of 0 matches nothing before it.
                    conversion.execute(params![
                        c.tenant,
                        c.goal,
                        c.visitor,
                        c.at_us,
                        c.value,
                        c.currency,
                        c.bot,
                        c.once_within_us.unwrap_or(0)
                    ])?;
                    n += 1;
                }
                Row::Flush(done) => waiting.push(done),
                Row::Erase(tenant, visitors) => {
                    for table in ["exposures", "impressions", "conversions", "signals"] {
                        let mut stmt = tx.prepare_cached(&format!(
                            "DELETE FROM {table} WHERE tenant = ?1 AND visitor = ?2"
                        ))?;
                        for v in &visitors {
                            stmt.execute(params![tenant, v])?;
                        }
                    }
                }
                Row::Purge(tenant) => {
                    for table in ["exposures", "impressions", "conversions", "signals"] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE tenant = ?1"),
                            params![tenant],
                        )?;
                    }
                }
            }
        }
    }
    tx.commit()?;
    Ok(n)
}
