//! Ledger throughput: how many exposures, impressions and conversions per second the ledger's
//! writer stores (one SQLite transaction per batch, WAL), against the rate a host serves
//! requests at. Each "request" here queues one exposure, one impression and, for one in ten,
//! a conversion — more than a real page view records. One JSON line per run size, the median
//! of five runs.
//!
//! Run with `cargo bench -p veneer-tests --bench ledger`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veneer::ledger::{Conversion, Exposure, Impression, Ledger};
use veneer::metrics::Metrics;
use veneer_tests::TempDir;

fn run(requests: usize) -> (Duration, u64) {
    let dir = TempDir::new();
    let metrics = Arc::new(Metrics::default());
    let ledger = Ledger::open(&dir.0, metrics.clone(), 0).expect("ledger");
    let started = Instant::now();
    for i in 0..requests {
        let visitor = format!("visitor-{i}");
        let at_us = 1_795_000_000_000_000 + i as i64;
        ledger.exposure(Exposure {
            tenant: "shop".into(),
            experiment: "headline".into(),
            variation: (i % 2) as u32,
            visitor: visitor.clone(),
            at_us,
            segments: vec!["returning".into()],
            bot: false,
        });
        ledger.impression(Impression {
            tenant: "shop".into(),
            campaign: "winter-sale".into(),
            visitor: visitor.clone(),
            at_us,
            channel: "web".into(),
            bot: false,
        });
        if i % 10 == 0 {
            ledger.conversion(Conversion {
                tenant: "shop".into(),
                goal: "purchase".into(),
                visitor,
                at_us: at_us + 1,
                value: 42.0,
                currency: Some("EUR".into()),
                bot: false,
                once_within_us: None,
            });
        }
        // Keep the queue from overflowing, as a real request rate would: a producer far
        // ahead of the writer only measures the drop counter.
        if i % 20_000 == 19_999 {
            ledger.flush();
        }
    }
    ledger.flush();
    let took = started.elapsed();
    if requests >= 100_000 {
        let t = Instant::now();
        let figures = ledger
            .figures("shop", "headline", "purchase")
            .expect("figures");
        let experiment_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let campaign = ledger
            .campaign_figures("shop", "winter-sale", "purchase", 7)
            .expect("figures");
        let campaign_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(
            figures.variations.iter().map(|v| v.users).sum::<u64>(),
            requests as u64
        );
        assert_eq!(campaign.reach, requests as u64);
        println!(
            "{{\"scenario\":\"report-from-ledger\",\"visitors\":{requests},\"experiment_report_ms\":{experiment_ms:.0},\"campaign_report_ms\":{campaign_ms:.0}}}"
        );
    }
    let dropped = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("veneer_ledger_rows_total") && l.contains("dropped"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    (took, dropped)
}

fn main() {
    for requests in [20_000usize, 100_000] {
        let mut runs: Vec<(Duration, u64)> = (0..5).map(|_| run(requests)).collect();
        runs.sort();
        let (median, dropped) = runs[runs.len() / 2];
        let (min, max) = (runs[0].0, runs[runs.len() - 1].0);
        let rate = |d: Duration| requests as f64 / d.as_secs_f64();
        let rows = requests as f64 * 2.1;
        println!(
            "{{\"scenario\":\"ledger\",\"requests\":{requests},\"rows\":{rows:.0},\"requests_per_s\":{:.0},\"rows_per_s\":{:.0},\"spread_requests_per_s\":[{:.0},{:.0}],\"dropped\":{dropped}}}",
            rate(median),
            rows / median.as_secs_f64(),
            rate(max),
            rate(min),
        );
    }
}
