//! The JSON-lines protocol of `veneer rules eval`: one request per line in, one response per
//! line out, in order. A malformed line produces `{"error": ...}` and the stream goes on, so a
//! marketer can pipe a whole test file through and read every answer.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::condition::{Condition, SavedGroups};
use crate::experiment::{Context, Experiment, ExperimentSpec};
use crate::hash;

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
    }
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
}
