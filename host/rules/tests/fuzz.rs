//! Property tests: arbitrary JSON conditions and attributes through compile + evaluate, in
//! both strict and lenient modes, never panic; and assignment is deterministic and in range.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use veneer_rules::experiment::{Context, Experiment, ExperimentSpec};
use veneer_rules::{Condition, SavedGroups};

const KEYS: &[&str] = &[
    "a",
    "b",
    "a.b",
    "list.0",
    "$and",
    "$or",
    "$nor",
    "$not",
    "$eq",
    "$ne",
    "$lt",
    "$lte",
    "$gt",
    "$gte",
    "$in",
    "$nin",
    "$ini",
    "$nini",
    "$all",
    "$alli",
    "$size",
    "$elemMatch",
    "$exists",
    "$type",
    "$regex",
    "$regexi",
    "$veq",
    "$vgt",
    "$vlte",
    "$inGroup",
    "$notInGroup",
    "$bogus",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("(".to_owned()),
            Just("1.2.3".to_owned()),
            Just("string".to_owned()),
            ".{0,6}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn compile_and_evaluate_never_panic(condition in json_value(), attributes in json_value(), group in json_value()) {
        let mut groups = SavedGroups::new();
        groups.insert("a".into(), vec![group]);
        if let Ok(c) = Condition::compile(&condition) {
            let _ = c.matches(&attributes, &groups);
        }
        if let Ok(c) = Condition::compile_lenient(&condition) {
            let _ = c.matches(&attributes, &groups);
        }
    }

    #[test]
    fn assignment_is_deterministic_and_in_range(id in ".{0,12}", n in 2usize..6, coverage in 0.0f64..=1.0, seed in ".{0,8}") {
        let spec = ExperimentSpec { key: "exp".into(), variations: (0..n).map(|i| json!(i)).collect(), coverage: Some(coverage), seed: Some(seed), hash_version: Some(2), ..ExperimentSpec::default() };
        let exp = Experiment::compile(spec).expect("valid");
        let attrs = json!({"id": id});
        let first = exp.run(&mut Context::new(&attrs));
        let second = exp.run(&mut Context::new(&attrs));
        prop_assert_eq!(&first, &second);
        prop_assert!(first.variation_id < n);
    }
}
