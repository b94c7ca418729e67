//! The flood benchmark (README "Per-client limits"): one client address floods the host at
//! full speed while another keeps sending at a steady rate; how much of its throughput and
//! tail latency does the steady client keep?
//!
//! `flood --veneer PATH [--seconds N] [--runs N] [--rate R] [--flood-conns C]`
//!
//! It starts an origin in this process and `PATH serve` as a child process with the default
//! per-client limits except a request rate per client of 1,000/s (so a steady client at `R`
//! requests/s, default 300, is well inside it). Each run measures the steady client from
//! 127.0.0.3 alone for N seconds, then again while `C` connections (default 64) from
//! 127.0.0.2 send requests back to back. Latency is timed from each request's scheduled
//! instant, so a stalled host cannot hide queueing (no coordinated omission). Prints one
//! line per phase, then the medians over the runs. `tests/bench/flood.sh` builds and pins it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use veneer_tests::{Origin, Page};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Args {
    veneer: String,
    seconds: u64,
    runs: usize,
    rate: u64,
    flood_conns: usize,
}

fn args() -> Args {
    let mut a = Args {
        veneer: String::new(),
        seconds: 10,
        runs: 3,
        rate: 300,
        flood_conns: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{arg} needs a whole number")))
        };
        match arg.as_str() {
            "--veneer" => a.veneer = value.clone(),
            "--seconds" => a.seconds = number(),
            "--runs" => a.runs = number() as usize,
            "--rate" => a.rate = number(),
            "--flood-conns" => a.flood_conns = number() as usize,
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    if a.veneer.is_empty() {
        usage("--veneer PATH is required");
    }
    a
}

fn usage(why: &str) -> ! {
    eprintln!(
        "flood: {why}\nusage: flood --veneer PATH [--seconds N] [--runs N] [--rate R] [--flood-conns C]"
    );
    std::process::exit(2)
}

fn client(from: IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// One request; `Some(status)` when a whole response arrived.
async fn get(client: &HttpClient, url: &hyper::Uri) -> Option<u16> {
    let response = client.get(url.clone()).await.ok()?;
    let status = response.status().as_u16();
    response.into_body().collect().await.ok()?;
    Some(status)
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    ok_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

/// The steady client: `rate` requests/s, each on its own schedule slot.
async fn steady(url: &hyper::Uri, rate: u64, seconds: u64) -> Phase {
    let client = client("127.0.0.3".parse().unwrap_or(IpAddr::from([127, 0, 0, 3])));
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = rate * seconds;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let status = get(&client, &url).await;
            (status, scheduled.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((Some(200), latency)) => latencies.push(latency),
            _ => failed += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    Phase {
        ok_per_sec: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
    }
}

/// The flooder: `conns` loops sending back to back until `stop`; counts by status.
fn flood(url: &hyper::Uri, conns: usize, stop: Arc<AtomicBool>) -> Arc<[AtomicU64; 3]> {
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let client = client(IpAddr::from([127, 0, 0, 2]));
    for _ in 0..conns {
        let (client, url, stop, counts) =
            (client.clone(), url.clone(), stop.clone(), counts.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let slot = match get(&client, &url).await {
                    Some(200) => 0,
                    Some(429) => 1,
                    _ => 2,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    counts
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let a = args();
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/site/index.html"),
    )
    .unwrap_or_else(|_| "<html><body><h1>Hello</h1></body></html>".to_owned());
    let origin = Origin::start(HashMap::from([("/".to_owned(), Page::html(&page))])).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| usage(&format!("no free port: {e}")));
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = veneer_tests::TempDir::new();
    let config = format!(
        "[server]\nlisten = \"{listen}\"\ncookie_secret = \"flood-bench-secret-flood-bench-secret\"\n\
         analytics_log = \"{}\"\n\n[[tenant]]\nname = \"shop\"\nhosts = [\"127.0.0.1\"]\n\
         origin = \"http://{}\"\n\n[tenant.limits]\nrequests_per_second_per_client = 1000\n\
         burst_per_client = 1000\n",
        dir.0.join("analytics.jsonl").display(),
        origin.addr
    );
    let file = dir.0.join("veneer.toml");
    std::fs::write(&file, config).unwrap_or_else(|e| usage(&format!("cannot write config: {e}")));
    let mut host = std::process::Command::new(&a.veneer)
        .args(["serve", "--config"])
        .arg(&file)
        .env("VENEER_LOG", "info")
        .spawn()
        .unwrap_or_else(|e| usage(&format!("cannot start {}: {e}", a.veneer)));

    let url: hyper::Uri = format!("http://{listen}/")
        .parse()
        .unwrap_or_else(|_| usage("bad url"));
    let warm = client(IpAddr::from([127, 0, 0, 4]));
    let ready = Instant::now();
    while get(&warm, &url).await != Some(200) {
        if ready.elapsed() > Duration::from_secs(20) {
            let _ = host.kill();
            usage("the host did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm-up: connections, caches, the allocator.
    let _ = steady(&url, a.rate, 2).await;

    let (mut tput, mut p99) = (Vec::new(), Vec::new());
    for run in 1..=a.runs {
        let alone = steady(&url, a.rate, a.seconds).await;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = flood(&url, a.flood_conns, stop.clone());
        // Let the flood reach full speed before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        let flooded = steady(&url, a.rate, a.seconds).await;
        let after = counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        stop.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let secs = a.seconds as f64;
        println!(
            "run {run}: steady alone {:.0} ok/s p50 {:.2} ms p99 {:.2} ms ({} failed) | \
             flooded {:.0} ok/s p50 {:.2} ms p99 {:.2} ms ({} failed) | flood {:.0} ok/s, \
             {:.0} refused (429)/s, {:.0} failed/s",
            alone.ok_per_sec,
            alone.p50_ms,
            alone.p99_ms,
            alone.failed,
            flooded.ok_per_sec,
            flooded.p50_ms,
            flooded.p99_ms,
            flooded.failed,
            (after[0] - before[0]) as f64 / secs,
            (after[1] - before[1]) as f64 / secs,
            (after[2] - before[2]) as f64 / secs,
        );
        tput.push(flooded.ok_per_sec / alone.ok_per_sec);
        p99.push(flooded.p99_ms / alone.p99_ms);
    }
    let (t, p) = (median(tput), median(p99));
    println!(
        "median over {} runs: steady client keeps {:.2} x its throughput (target >= 0.80), \
         p99 {:.2} x its unloaded figure (target <= 2.00)",
        a.runs, t, p
    );
    let _ = host.kill();
    let _ = host.wait();
}
