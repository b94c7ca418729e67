//! The fleet's event pipeline under load, for `tests/bench/fleet.sh`: N nodes in one process
//! (each its own NATS connection, outbox and node name, as separate hosts would be) record
//! EVENTS events in all, as fast as their outboxes take them; prints JSON lines with each
//! node's rate to the stream (recorded → acknowledged by JetStream, outbox empty), the
//! aggregation's rate, and whether the fleet-wide count equals the exact sum.
//!
//! `fleet_events --nats nats://127.0.0.1:4222,... --nodes 3 --events 1000000 --dir DIR`

use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nats: Vec<String> = arg("--nats", "nats://127.0.0.1:4222")
        .split(',')
        .map(str::to_owned)
        .collect();
    let nodes: usize = arg("--nodes", "3").parse()?;
    let total: u64 = arg("--events", "1000000").parse()?;
    let dir = std::path::PathBuf::from(arg("--dir", "target/tmp/fleet-events"));
    let tenant = format!("bench{}", std::process::id());
    let per_node = total / nodes as u64;
    let total = per_node * nodes as u64;

    let mut logs = Vec::new();
    for i in 0..nodes {
        let metrics = Arc::new(veneer::metrics::Metrics::default());
        let cluster = veneer::config::Cluster {
            nats: nats.clone(),
            node: format!("bench-{i}"),
            credentials: None,
            replicas: None,
            resync_secs: 60,
        };
        let fleet = veneer::fleet::Fleet::connect(&cluster, None, metrics.clone()).await?;
        let started = Instant::now();
        while fleet.parts().await.is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "NATS not reachable"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log =
            veneer::outbox::EventLog::open(&dir.join(format!("node{i}")), Some(fleet), metrics)?;
        logs.push(log);
    }

    let started = Instant::now();
    let mut recorders = Vec::new();
    for log in &logs {
        let log = log.clone();
        let tenant = tenant.clone();
        recorders.push(tokio::spawn(async move {
            let body = serde_json::json!({"tenant": tenant, "event": "view", "path": "/"});
            let mut sent = 0;
            while sent < per_node {
                let n = (per_node - sent).min(20_000);
                let (log, tenant, body) = (log.clone(), tenant.clone(), body.clone());
                tokio::task::spawn_blocking(move || {
                    for _ in 0..n {
                        log.record(&tenant, "view", &body);
                    }
                    // Stored in the outbox before more are queued: none is dropped.
                    log.flush();
                })
                .await
                .ok();
                sent += n;
            }
            loop {
                let depth = {
                    let log = log.clone();
                    tokio::task::spawn_blocking(move || log.outbox_depth())
                        .await
                        .unwrap_or(1)
                };
                if depth == 0 {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut rates = Vec::new();
    for (i, r) in recorders.into_iter().enumerate() {
        let took = r.await?;
        let rate = per_node as f64 / took.as_secs_f64();
        rates.push(rate);
        println!(
            "{}",
            serde_json::json!({"scenario": "fleet-events-publish", "node": i, "events": per_node,
                               "seconds": took.as_secs_f64(), "events_per_s": rate.round()})
        );
    }
    let published = started.elapsed();

    let fleet = logs[0].fleet().cloned().expect("fleet");
    let counted = loop {
        let n = veneer::outbox::fleet_count(&fleet, &tenant, "view")
            .await
            .unwrap_or(0);
        if n >= total || started.elapsed() > published + Duration::from_secs(600) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all = started.elapsed();
    println!(
        "{}",
        serde_json::json!({"scenario": "fleet-events-count", "nodes": nodes, "events": total,
                           "counted": counted, "exact": counted == total,
                           "seconds_to_counted": all.as_secs_f64(),
                           "aggregated_per_s": (total as f64 / all.as_secs_f64()).round(),
                           "min_node_publish_per_s": rates.iter().cloned().fold(f64::MAX, f64::min).round()})
    );
    // Nothing more arrives and nothing is counted twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = veneer::outbox::fleet_count(&fleet, &tenant, "view").await?;
    anyhow::ensure!(
        again == total,
        "counted {again} of {total} events (exactly {total} expected)"
    );
    Ok(())
}
