//! Runs the fuzz targets for a while: `cargo run --release -p veneer-tests --bin fuzz --
//! [--seconds N] [--seed S] [TARGET...]` (every target when none is named; N seconds each).
//! Exits non-zero when any input panicked; those inputs are in `target/fuzz-crashes/`.

use std::path::Path;
use std::time::Duration;

fn main() {
    let mut seconds = 60u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let number = |v: Option<String>, what: &str| -> u64 {
            v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("fuzz: {what} needs a whole number");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--seconds" => seconds = number(args.next(), "--seconds"),
            "--seed" => seed = number(args.next(), "--seed"),
            _ => names.push(arg),
        }
    }
    let targets = veneer_tests::fuzz::targets();
    for name in &names {
        if !targets.iter().any(|t| t.name == name) {
            let known: Vec<_> = targets.iter().map(|t| t.name).collect();
            eprintln!("fuzz: no target {name:?}; targets: {}", known.join(", "));
            std::process::exit(2);
        }
    }
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut crashed = false;
    for target in targets
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
    {
        let report =
            veneer_tests::fuzz::fuzz(target, Duration::from_secs(seconds), seed, &regressions);
        println!(
            "{:<16} {:>10} inputs  {:>4} outcomes  {} crashes  (seed {seed})",
            target.name,
            report.execs,
            report.outcomes,
            report.crashes.len()
        );
        for path in &report.crashes {
            println!("  crash: {}", path.display());
        }
        crashed |= !report.crashes.is_empty();
    }
    if crashed {
        std::process::exit(1);
    }
}
