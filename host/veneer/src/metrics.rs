//! Counters, gauges and latency histograms, rendered in the Prometheus text format on the
//! admin listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// A counter's identity: its name and label pairs.
type Series = (&'static str, Vec<(&'static str, String)>);

/// Upper bounds of the latency buckets, in seconds (Prometheus' defaults with a finer low
/// end: a plugin hook takes tens of microseconds).
pub const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// One histogram series: a count per bucket, the sum in nanoseconds and the count.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// Labelled counters, gauges and histograms. Label sets are small and bounded (tenants,
/// plugins, fault kinds, hooks).
#[derive(Default)]
pub struct Metrics {
    counters: DashMap<Series, AtomicU64>,
    histograms: DashMap<Series, Histogram>,
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

    /// Records one observation of `seconds` in histogram `name` with `labels`.
    pub fn observe(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        elapsed: std::time::Duration,
    ) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        let record = |h: &Histogram| {
            let secs = elapsed.as_secs_f64();
            if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
            h.sum_nanos.fetch_add(
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            h.count.fetch_add(1, Ordering::Relaxed);
        };
        if let Some(h) = self.histograms.get(&key) {
            record(&h);
            return;
        }
        record(&self.histograms.entry(key).or_default());
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
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                (format!("{name}{{{}}}", labels.join(",")), value)
            })
            .collect();
        rows.sort();
        let mut out = String::new();
        for (series, value) in rows {
            let _ = writeln!(out, "{series} {value}");
        }
        let mut histograms: Vec<(&'static str, String, Vec<u64>, u64, u64)> = self
            .histograms
            .iter()
            .map(|e| {
                let ((name, labels), h) = (e.key(), e.value());
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                (
                    *name,
                    labels.join(","),
                    h.buckets
                        .iter()
                        .map(|b| b.load(Ordering::Relaxed))
                        .collect(),
                    h.sum_nanos.load(Ordering::Relaxed),
                    h.count.load(Ordering::Relaxed),
                )
            })
            .collect();
        histograms.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut typed = None;
        for (name, labels, buckets, sum, count) in histograms {
            if typed != Some(name) {
                let _ = writeln!(out, "# TYPE {name} histogram");
                typed = Some(name);
            }
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(&buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
        out
    }
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let m = Metrics::default();
        let l = [("tenant", "shop")];
        m.observe(
            "veneer_origin_response_seconds",
            &l,
            std::time::Duration::from_micros(300),
        );
        m.observe(
            "veneer_origin_response_seconds",
            &l,
            std::time::Duration::from_millis(30),
        );
        m.observe(
            "veneer_origin_response_seconds",
            &l,
            std::time::Duration::from_secs(60),
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE veneer_origin_response_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("veneer_origin_response_seconds_bucket{tenant=\"shop\",le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("veneer_origin_response_seconds_bucket{tenant=\"shop\",le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("veneer_origin_response_seconds_bucket{tenant=\"shop\",le=\"10\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("veneer_origin_response_seconds_bucket{tenant=\"shop\",le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("veneer_origin_response_seconds_count{tenant=\"shop\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("veneer_origin_response_seconds_sum{tenant=\"shop\"} 60.0303"),
            "{text}"
        );
    }
}
