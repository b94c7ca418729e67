//! Segment evaluation cost: one typical segment (4 operators) and a tenant with 50 segments.
//! Run with `cargo bench -p veneer-rules --bench segments`.
#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented functions"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use veneer_rules::{Condition, RuleSet, SavedGroups};

fn visitor() -> Value {
    json!({
        "id": "3f1c9a7e-2b4d-4e8f-9a1b-6c5d4e3f2a10",
        "visitCount": 4,
        "device": "mobile",
        "country": "NO",
        "utm": {"source": "newsletter", "campaign": "xmas"},
        "consent": {"personalization": true, "analytics": true},
        "tags": ["buyer", "newsletter"],
        "appVersion": "2.14.1",
        "path": "/products/winter-jacket"
    })
}

fn typical() -> Value {
    json!({
        "visitCount": {"$gt": 1},
        "country": {"$in": ["NO", "SE", "DK", "FI"]},
        "device": "mobile",
        "consent.personalization": true
    })
}

/// Fifty segments of the shapes tenants write: equality, membership, ranges, regexes on
/// paths, versions, nested and/or.
fn fifty() -> Value {
    let mut segments = serde_json::Map::new();
    let countries = ["NO", "SE", "DK", "FI", "DE", "FR", "US", "CA", "GB", "NL"];
    for i in 0..50 {
        let c = countries[i % countries.len()];
        let segment = match i % 5 {
            0 => json!({"country": c, "visitCount": {"$gte": i % 7}}),
            1 => {
                json!({"$or": [{"device": "mobile"}, {"device": "tablet"}], "country": {"$in": [c, "NO"]}})
            }
            2 => {
                json!({"path": {"$regex": format!("^/products/{}", ["winter", "summer", "sale"][i % 3])}, "consent.personalization": true})
            }
            3 => {
                json!({"appVersion": {"$vgte": format!("2.{}.0", i % 20)}, "tags": {"$elemMatch": {"$eq": "buyer"}}})
            }
            _ => {
                json!({"utm.source": {"$ne": "ads"}, "$and": [{"visitCount": {"$lt": 10 + i}}, {"country": {"$nin": ["US"]}}]})
            }
        };
        segments.insert(format!("segment-{i}"), segment);
    }
    json!({ "segments": segments })
}

fn bench(c: &mut Criterion) {
    let attrs = visitor();
    let groups = SavedGroups::new();
    let one = Condition::compile(&typical()).expect("valid");
    assert!(one.matches(&attrs, &groups));
    c.bench_function("typical segment (4 operators)", |b| {
        b.iter(|| black_box(&one).matches(black_box(&attrs), &groups))
    });

    let rules = RuleSet::from_value(&fifty()).expect("valid");
    c.bench_function("tenant with 50 segments", |b| {
        b.iter(|| rules.segments(black_box(&attrs)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
