//! Counters and gauges, rendered in the Prometheus text format on the admin listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// A counter's identity: its name and label pairs.
type Series = (&'static str, Vec<(&'static str, String)>);

/// Labelled counters. Label sets are small and bounded (tenants, plugins, fault kinds).
#[derive(Default)]
pub struct Metrics {
    counters: DashMap<Series, AtomicU64>,
}

impl Metrics {
    /// Adds one to counter `name` with `labels`.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Adds `n` to counter `name` with `labels`.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        if let Some(c) = self.counters.get(&key) {
            c.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.counters
            .entry(key)
            .or_default()
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Sets gauge `name` with `labels` to `value`.
    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.counters
            .entry(key)
            .or_default()
            .store(value, Ordering::Relaxed);
    }

    /// The current value of a counter (0 if never incremented).
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.counters
            .get(&key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut rows: Vec<(String, u64)> = self
            .counters
            .iter()
            .map(|e| {
                let ((name, labels), value) = (e.key(), e.value().load(Ordering::Relaxed));
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                (format!("{name}{{{}}}", labels.join(",")), value)
            })
            .collect();
        rows.sort();
        let mut out = String::new();
        for (series, value) in rows {
            let _ = writeln!(out, "{series} {value}");
        }
        out
    }
}
