//! Operator edge cases and load-time errors, beyond what the conformance suite covers.

use serde_json::{Value, json};
use veneer_rules::{Condition, RuleSet, SavedGroups};

fn eval(condition: Value, attributes: Value) -> bool {
    Condition::compile(&condition)
        .expect("compiles")
        .matches(&attributes, &SavedGroups::new())
}

fn error(condition: Value) -> String {
    Condition::compile(&condition)
        .expect_err("should be rejected")
        .to_string()
}

#[test]
fn equality_coerces_like_the_reference() {
    assert!(eval(json!({"age": "30"}), json!({"age": 30})));
    assert!(eval(json!({"age": 30}), json!({"age": "30"})));
    assert!(eval(json!({"age": 30}), json!({"age": " 30 "})));
    assert!(!eval(json!({"age": 30}), json!({"age": "thirty"})));
    assert!(eval(json!({"flag": true}), json!({"flag": 1})));
    assert!(
        !eval(json!({"flag": false}), json!({})),
        "false never matches a missing attribute"
    );
    assert!(eval(json!({"gone": null}), json!({})));
}

#[test]
fn comparisons_on_missing_and_mixed_types() {
    assert!(
        eval(json!({"n": {"$lt": 5}}), json!({})),
        "missing is null, and null < 5 in JavaScript"
    );
    assert!(
        !eval(json!({"n": {"$gt": 5}}), json!({"n": "abc"})),
        "NaN comparisons are false"
    );
    assert!(
        eval(json!({"n": {"$gt": "10"}}), json!({"n": "9"})),
        "two strings compare as strings"
    );
    assert!(
        !eval(json!({"n": {"$gt": 10}}), json!({"n": "9"})),
        "string vs number compares numerically"
    );
    assert!(
        !eval(json!({"n": {"$eq": "1"}}), json!({"n": 1})),
        "$eq is strict"
    );
}

#[test]
fn membership_operators() {
    assert!(eval(
        json!({"c": {"$in": ["US", "CA"]}}),
        json!({"c": "CA"})
    ));
    assert!(
        eval(json!({"tags": {"$in": ["a"]}}), json!({"tags": ["b", "a"]})),
        "arrays intersect"
    );
    assert!(
        !eval(json!({"c": {"$in": ["1"]}}), json!({"c": 1})),
        "$in is strict"
    );
    assert!(eval(json!({"c": {"$nin": ["US"]}}), json!({})));
    assert!(eval(json!({"c": {"$ini": ["us"]}}), json!({"c": "US"})));
    assert!(eval(
        json!({"tags": {"$all": ["a", "b"]}}),
        json!({"tags": ["b", "c", "a"]})
    ));
    assert!(!eval(
        json!({"tags": {"$all": ["a"]}}),
        json!({"tags": "a"})
    ));
    assert!(eval(
        json!({"tags": {"$size": {"$gt": 1}}}),
        json!({"tags": [1, 2]})
    ));
    assert!(!eval(json!({"tags": {"$size": 0}}), json!({})));
    assert!(eval(
        json!({"items": {"$elemMatch": {"$gt": 5}}}),
        json!({"items": [1, 9]})
    ));
    assert!(eval(
        json!({"items": {"$elemMatch": {"sku": "x"}}}),
        json!({"items": [{"sku": "y"}, {"sku": "x"}]})
    ));
}

#[test]
fn saved_groups() {
    let c = Condition::compile(&json!({"id": {"$inGroup": "vip"}})).expect("compiles");
    let mut groups = SavedGroups::new();
    groups.insert("vip".into(), vec![json!("u1"), json!(7)]);
    assert!(c.matches(&json!({"id": "u1"}), &groups));
    assert!(c.matches(&json!({"id": 7}), &groups));
    assert!(!c.matches(&json!({"id": "7"}), &groups));
    assert!(
        !c.matches(&json!({"id": "u1"}), &SavedGroups::new()),
        "unknown group is empty"
    );
}

#[test]
fn versions_exists_type_regex_and_paths() {
    assert!(eval(
        json!({"v": {"$vgt": "1.9.0"}}),
        json!({"v": "1.10.0"})
    ));
    assert!(eval(
        json!({"v": {"$vlt": "1.0.0"}}),
        json!({"v": "1.0.0-rc.1"})
    ));
    assert!(eval(
        json!({"v": {"$veq": "v2.0.0+build"}}),
        json!({"v": "2.0.0"})
    ));
    assert!(eval(json!({"a": {"$exists": false}}), json!({"a": null})));
    assert!(eval(json!({"a": {"$exists": true}}), json!({"a": 0})));
    assert!(eval(json!({"a": {"$type": "array"}}), json!({"a": []})));
    assert!(eval(
        json!({"ua": {"$regex": "iPhone|Android"}}),
        json!({"ua": "Mozilla (iPhone)"})
    ));
    assert!(
        eval(json!({"n": {"$regex": "^4"}}), json!({"n": 42})),
        "non-strings are stringified"
    );
    assert!(eval(
        json!({"user.address.city": "Oslo"}),
        json!({"user": {"address": {"city": "Oslo"}}})
    ));
    assert!(eval(json!({"list.1": "b"}), json!({"list": ["a", "b"]})));
    assert!(!eval(json!({"list.01": "b"}), json!({"list": ["a", "b"]})));
}

#[test]
fn logical_operators() {
    let c = json!({"$or": [{"country": "NO"}, {"$and": [{"country": "SE"}, {"age": {"$gte": 18}}]}], "$nor": [{"banned": true}]});
    assert!(eval(c.clone(), json!({"country": "NO"})));
    assert!(eval(c.clone(), json!({"country": "SE", "age": 20})));
    assert!(!eval(c.clone(), json!({"country": "SE", "age": 17})));
    assert!(!eval(c, json!({"country": "NO", "banned": true})));
    assert!(
        eval(json!({"$or": []}), json!({})),
        "empty $or holds, as in the reference"
    );
    assert!(eval(json!({"$not": {"a": 1}}), json!({"a": 2})));
}

#[test]
fn strict_compile_names_the_path_and_problem() {
    let e = error(json!({"$and": [{"ok": 1}, {"bday": {"$regex": "(unclosed"}}]}));
    assert!(
        e.starts_with("at $.$and[1].bday.$regex: invalid regular expression"),
        "{e}"
    );
    assert_eq!(
        error(json!({"name": {"$regx": "a"}})),
        "at $.name.$regx: unknown operator \"$regx\""
    );
    assert!(error(json!({"c": {"$in": "US"}})).contains("$in expects an array"));
    assert!(error(json!({"$or": {"a": 1}})).contains("expected an array of conditions"));
    assert!(error(json!({"a": {"$type": "strnig"}})).contains("unknown type"));
    assert!(error(json!({"a": {"$gt": 1, "b": 2}})).contains("cannot be mixed"));
    assert!(error(json!(["a"])).contains("must be a JSON object"));
}

#[test]
fn rule_set_reports_every_error_with_its_location() {
    let doc = r#"{
      "savedGroups": {"vip": ["u1"]},
      "segments": {
        "returning": {"visitCount": {"$gt": 1}},
        "broken": {"ua": {"$regex": "("}},
        "typo": {"id": {"$inGroup": "vipp"}}
      },
      "experiments": [
        {"key": "hero", "variations": ["a", "b"], "weights": [0.5, 0.6]},
        {"key": "hero", "variations": ["a"]},
        {"key": "x", "variations": [0, 1], "condition": {"a": {"$bogus": 1}}}
      ],
      "campaigns": [
        {"id": "xmas", "start": "2026-12-27T00:00:00Z", "end": "2026-12-01T00:00:00Z", "segments": ["nobody"]}
      ]
    }"#;
    let errors = RuleSet::from_json_str(doc).expect_err("has errors");
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("segments.broken.ua.$regex: invalid regular expression"),
        "{text:#?}"
    );
    assert!(
        has("segments.typo.id.$inGroup: saved group \"vipp\""),
        "{text:#?}"
    );
    assert!(
        has("experiments[0] (hero): weights must be non-negative and sum to 1"),
        "{text:#?}"
    );
    assert!(
        has("experiments[1] (hero): needs at least 2 variations"),
        "{text:#?}"
    );
    assert!(has("experiments[1] (hero): duplicate key"), "{text:#?}");
    assert!(
        has("experiments[2] (x).condition.a.$bogus: unknown operator"),
        "{text:#?}"
    );
    assert!(has("campaigns[0] (xmas): end"), "{text:#?}");
    assert!(has("targets unknown segment \"nobody\""), "{text:#?}");
    assert_eq!(errors.len(), 8, "{text:#?}");
}

#[test]
fn rule_set_evaluates_segments_and_campaigns() {
    let doc = r#"{
      "segments": {"new": {"visitCount": {"$lte": 1}}, "returning": {"visitCount": {"$gt": 1}}, "mobile": {"device": "mobile"}},
      "campaigns": [
        {"id": "all", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z", "priority": 1},
        {"id": "xmas", "start": "2026-12-01T00:00:00Z", "end": "2026-12-27T00:00:00Z", "priority": 5, "segments": ["returning"]}
      ]
    }"#;
    let rules = RuleSet::from_json_str(doc).expect("valid");
    let set = rules.segments(&json!({"visitCount": 3, "device": "mobile"}));
    assert_eq!(
        rules.segment_list(&set).collect::<Vec<_>>(),
        ["returning", "mobile"]
    );
    let now = "2026-12-24T18:00:00Z".parse().expect("time");
    let ids: Vec<&str> = rules
        .active_campaigns(now, "web", &set)
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["xmas", "all"]);
    let after = "2026-12-28T00:00:00Z".parse().expect("time");
    assert_eq!(rules.active_campaigns(after, "web", &set).len(), 1);
}
