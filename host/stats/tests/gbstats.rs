//! Every reference vector that GrowthBook's stats engine (gbstats 0.8.0) computed, answered by
//! veneer-stats to 1e-6 (absolute, or relative for values above 1). The vectors and the script
//! that generates them are in `tests/gbstats/`.

use serde_json::Value;

/// Whether `ours` agrees with gbstats' `theirs` (a number or null for a non-finite value).
fn agrees(ours: &Value, theirs: &Value) -> bool {
    match (ours.as_f64(), theirs.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        (None, None) => ours.is_null() == theirs.is_null() || ours == theirs,
        _ => false,
    }
}

fn compare(path: &str, ours: &Value, theirs: &Value, failures: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                compare(
                    &format!("{path}.{k}"),
                    a.get(k).unwrap_or(&Value::Null),
                    v,
                    failures,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), x, y, failures);
            }
        }
        (Value::String(a), Value::String(b)) if a == b => {}
        (a, b) if a.is_number() || b.is_number() || (a.is_null() && b.is_null()) => {
            if !agrees(a, b) {
                failures.push(format!("{path}: ours {a}, gbstats {b}"));
            }
        }
        (a, b) => failures.push(format!("{path}: ours {a}, gbstats {b}")),
    }
}

#[test]
fn every_reference_vector_from_gbstats_agrees_to_1e_6() {
    let text = include_str!("gbstats/reference.jsonl");
    let mut cases = 0;
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let case: Value = serde_json::from_str(line).expect("reference line");
        let ours: Value =
            serde_json::from_str(&veneer_stats::answer_line(&case["request"].to_string()))
                .expect("our answer is JSON");
        compare(
            &format!("line {}", i + 1),
            &ours,
            &case["answer"],
            &mut failures,
        );
        cases += 1;
    }
    assert!(cases >= 400, "only {cases} reference vectors");
    assert!(
        failures.is_empty(),
        "{} disagreements with gbstats, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
