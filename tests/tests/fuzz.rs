//! A short run of every fuzz target (the regression inputs and seeds, then mutations for
//! `VENEER_FUZZ_SECONDS`, default 3, per target); the README's fuzz command runs them longer.

use std::path::Path;
use std::time::Duration;

#[test]
fn no_input_makes_a_target_panic() {
    let seconds = std::env::var("VENEER_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for target in veneer_tests::fuzz::targets() {
        // A fixed seed: the test command's run is repeatable; the long runs vary it.
        let report =
            veneer_tests::fuzz::fuzz(&target, Duration::from_secs(seconds), 0x5eed, &regressions);
        println!(
            "{}: {} inputs, {} outcomes",
            target.name, report.execs, report.outcomes
        );
        assert!(
            report.crashes.is_empty(),
            "{} panicked on {:?}",
            target.name,
            report.crashes
        );
        assert!(
            report.outcomes >= 3,
            "{} reached too little: {report:?}",
            target.name
        );
    }
}
