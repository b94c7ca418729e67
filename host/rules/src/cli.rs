//! The JSON-lines protocol of `veneer rules eval`: one request per line in, one response per
//! line out, in order. A malformed line produces `{"error": ...}` and the stream goes on, so a
//! marketer can pipe a whole test file through and read every answer.
//!
//! The same function answers the dashboard's segment tester in the browser (`host/rules-web`
//! compiles this crate to WebAssembly), so the page and the edge cannot disagree.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::condition::{Condition, SavedGroups};
use crate::experiment::{Context, Experiment, ExperimentSpec};
use crate::hash;
use crate::ruleset::RuleSet;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Condition {
        condition: Value,
        #[serde(default)]
        attributes: Value,
        #[serde(default, rename = "savedGroups")]
        saved_groups: SavedGroups,
    },
    Hash {
        seed: String,
        value: String,
        version: u32,
    },
    Assign {
        experiment: Box<ExperimentSpec>,
        #[serde(default)]
        attributes: Value,
        #[serde(default)]
        url: Option<String>,
    },
    /// A whole rules document against one visitor at one instant, as the edge decides a
    /// request: the segments that match, each experiment's variation, the campaigns live.
    Rules {
        rules: Value,
        #[serde(default)]
        attributes: Value,
        /// The instant (RFC 3339); required, so an answer never depends on the clock of the
        /// machine that computed it.
        at: String,
        #[serde(default = "web")]
        channel: String,
        #[serde(default)]
        url: Option<String>,
    },
}

fn web() -> String {
    "web".to_owned()
}

/// Answers one request line. Never panics, whatever the line holds.
pub fn eval_line(line: &str) -> Value {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({ "error": format!("invalid request: {e}") }),
    };
    match request {
        Request::Condition {
            condition,
            attributes,
            saved_groups,
        } => match Condition::compile(&condition) {
            Ok(c) => json!({ "result": c.matches(&attributes, &saved_groups) }),
            Err(e) => json!({ "error": format!("invalid condition {e}") }),
        },
        Request::Hash {
            seed,
            value,
            version,
        } => json!({ "result": hash::hash(&seed, &value, version) }),
        Request::Assign {
            experiment,
            attributes,
            url,
        } => match Experiment::compile(*experiment) {
            Ok(exp) => {
                let mut ctx = Context::new(&attributes);
                ctx.url = url.as_deref();
                let a = exp.run(&mut ctx);
                let variation = if a.in_experiment {
                    json!(a.variation_id)
                } else {
                    json!(0)
                };
                json!({ "variation": variation, "value": a.value, "inExperiment": a.in_experiment, "hashUsed": a.hash_used })
            }
            Err(e) => json!({ "error": format!("invalid experiment: {e}") }),
        },
        Request::Rules {
            rules,
            attributes,
            at,
            channel,
            url,
        } => match at.parse::<jiff::Timestamp>() {
            Ok(at) => decide(&rules, &attributes, at, &channel, url.as_deref()),
            Err(e) => json!({ "error": format!("at: {at:?} is not an RFC 3339 instant: {e}") }),
        },
    }
}

/// What the edge decides for a new visitor with `attributes` at `at` (no sticky assignments,
/// no frequency caps: those depend on the visitor's history, which a tester does not have).
fn decide(
    rules: &Value,
    attributes: &Value,
    at: jiff::Timestamp,
    channel: &str,
    url: Option<&str>,
) -> Value {
    let rules = match RuleSet::from_value(rules) {
        Ok(r) => r,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return json!({ "error": format!("invalid rules: {}", list.join("; ")) });
        }
    };
    let set = rules.segments(attributes);
    let segments: Vec<&str> = rules.segment_list(&set).collect();
    let experiments: Vec<Value> = rules
        .experiments()
        .iter()
        .map(|exp| {
            let mut ctx = Context::new(attributes);
            ctx.url = url;
            ctx.saved_groups = Some(rules.saved_groups());
            let a = exp.run(&mut ctx);
            let variation = if a.in_experiment { a.variation_id } else { 0 };
            let name = exp
                .spec
                .meta
                .as_ref()
                .and_then(|m| m.get(variation))
                .and_then(|meta| meta.name.clone().or_else(|| meta.key.clone()));
            json!({
                "key": exp.spec.key,
                "variation": variation,
                "name": name,
                "value": a.value,
                "inExperiment": a.in_experiment,
                "hashUsed": a.hash_used,
            })
        })
        .collect();
    let visitor = attributes.get("id").and_then(Value::as_str);
    let campaigns: Vec<Value> = rules
        .active_campaigns(at, channel, &set)
        .into_iter()
        .map(|c| {
            json!({
                "id": c.id,
                "name": c.name,
                "priority": c.priority,
                "start": c.start.to_string(),
                "end": c.end.to_string(),
                "heldOut": c.holdout.is_some() && visitor.is_some_and(|v| c.holds_out(v)),
            })
        })
        .collect();
    json!({ "segments": segments, "experiments": experiments, "campaigns": campaigns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_each_op() {
        assert_eq!(
            eval_line(r#"{"op":"condition","condition":{"a":{"$gt":1}},"attributes":{"a":2}}"#),
            json!({"result": true})
        );
        assert_eq!(
            eval_line(r#"{"op":"hash","seed":"","value":"a","version":1}"#),
            json!({"result": 0.22})
        );
        assert_eq!(
            eval_line(r#"{"op":"hash","seed":"","value":"a","version":9}"#),
            json!({"result": null})
        );
        let a = eval_line(
            r#"{"op":"assign","experiment":{"key":"my-test","variations":[0,1]},"attributes":{"id":"1"}}"#,
        );
        assert_eq!(a["variation"], json!(1));
        assert_eq!(a["inExperiment"], json!(true));
        assert_eq!(a["hashUsed"], json!(true));
    }

    #[test]
    fn malformed_lines_name_the_problem() {
        assert!(eval_line("{").get("error").is_some());
        assert!(
            eval_line(r#"{"op":"nope"}"#)["error"]
                .as_str()
                .is_some_and(|e| e.contains("nope"))
        );
        let e = eval_line(r#"{"op":"condition","condition":{"a":{"$regex":"("}},"attributes":{}}"#);
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|e| e.contains("$.a.$regex")),
            "{e}"
        );
    }

    #[test]
    fn decides_a_whole_rules_document() {
        let rules = json!({
            "segments": {
                "returning": {"visitCount": {"$gt": 1}},
                "nordic": {"country": {"$in": ["NO", "SE"]}}
            },
            "experiments": [{"key": "headline", "variations": ["a", "b"],
                             "meta": [{"key": "control"}, {"name": "Nordic"}]}],
            "campaigns": [
                {"id": "xmas", "start": "2026-12-01T00:00:00Z", "end": "2026-12-27T00:00:00Z",
                 "segments": ["returning"]},
                {"id": "app-only", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z",
                 "channels": ["app"]}
            ]
        });
        let ask = |attributes: Value, at: &str| {
            eval_line(
                &json!({"op": "rules", "rules": rules, "attributes": attributes, "at": at})
                    .to_string(),
            )
        };
        let a = ask(
            json!({"id": "ü-1", "visitCount": 3, "country": "NO"}),
            "2026-12-24T12:00:00+01:00",
        );
        assert_eq!(a["segments"], json!(["returning", "nordic"]));
        assert_eq!(a["campaigns"][0]["id"], json!("xmas"));
        assert_eq!(a["campaigns"].as_array().map(Vec::len), Some(1), "{a}");
        let assign = eval_line(
            r#"{"op":"assign","experiment":{"key":"headline","variations":["a","b"]},"attributes":{"id":"ü-1"}}"#,
        );
        assert_eq!(a["experiments"][0]["variation"], assign["variation"]);
        assert_eq!(a["experiments"][0]["key"], json!("headline"));
        // The campaign's end is exclusive, and a new visitor is in neither segment.
        let b = ask(json!({"id": "x", "visitCount": 1}), "2026-12-27T00:00:00Z");
        assert_eq!(b["segments"], json!([]));
        assert_eq!(b["campaigns"], json!([]));
        assert!(
            ask(json!({}), "tomorrow")["error"]
                .as_str()
                .is_some_and(|e| e.contains("RFC 3339"))
        );
        let bad = eval_line(
            r#"{"op":"rules","rules":{"segments":{"x":{"a":{"$regex":"("}}}},"at":"2026-01-01T00:00:00Z"}"#,
        );
        assert!(
            bad["error"]
                .as_str()
                .is_some_and(|e| e.contains("segments.x")),
            "{bad}"
        );
    }
}
