//! GrowthBook's language-agnostic SDK suite, run case by case against the rules engine.
//!
//! The suite lives in `../shared/conformance/growthbook-cases.json` (outside the repository);
//! the test skips with a message when it is absent. Every mismatch is collected and reported
//! together, so one run shows the whole picture.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::{Value, json};
use veneer_rules::experiment::{Context, Experiment, ExperimentSpec, StickyDoc, StickyDocs};
use veneer_rules::hash;
use veneer_rules::{Condition, SavedGroups};

fn cases() -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/growthbook-cases.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("cases file is valid JSON")),
        Err(e) => {
            eprintln!(
                "SKIPPED: GrowthBook conformance suite not found at {} ({e}); clone with ../shared beside the project",
                path.display()
            );
            None
        }
    }
}

struct Exclusions(Vec<(String, String)>);

impl Exclusions {
    fn load() -> Self {
        let text = include_str!("conformance-exclusions.toml");
        let doc: toml::Value = toml::from_str(text).expect("exclusions file parses");
        let list = doc
            .get("exclude")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        Exclusions(
            list.iter()
                .map(|e| {
                    assert!(
                        e.get("reason")
                            .and_then(|r| r.as_str())
                            .is_some_and(|r| !r.is_empty()),
                        "every exclusion needs a reason: {e:?}"
                    );
                    (
                        e["section"].as_str().unwrap_or_default().to_owned(),
                        e["name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        )
    }

    fn skips(&self, section: &str, name: &str) -> bool {
        self.0.iter().any(|(s, n)| s == section && n == name)
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn ranges(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .expect("ranges")
        .iter()
        .map(|r| (f(&r[0]), f(&r[1])))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn growthbook_conformance() {
    let Some(cases) = cases() else { return };
    let excluded = Exclusions::load();
    let mut failures: Vec<String> = Vec::new();
    let mut ran = 0usize;
    let mut fail = |section: &str, name: &str, detail: String| {
        failures.push(format!("{section} / {name}: {detail}"))
    };

    for (section, _) in &excluded.0 {
        assert!(
            cases.get(section).is_some(),
            "exclusion names unknown section {section}"
        );
    }
    for (section, name) in &excluded.0 {
        let known = cases[section]
            .as_array()
            .is_some_and(|list| list.iter().any(|c| c[0].as_str() == Some(name)));
        assert!(
            known,
            "exclusion names a case that does not exist: {section} / {name}"
        );
    }

    for case in cases["evalCondition"].as_array().expect("evalCondition") {
        let name = case[0].as_str().unwrap_or_default();
        if excluded.skips("evalCondition", name) {
            continue;
        }
        ran += 1;
        let groups: SavedGroups = case
            .get(4)
            .map(|g| serde_json::from_value(g.clone()).expect("groups"))
            .unwrap_or_default();
        match Condition::compile_lenient(&case[1]) {
            Ok(c) => {
                let got = c.matches(&case[2], &groups);
                if Value::Bool(got) != case[3] {
                    fail(
                        "evalCondition",
                        name,
                        format!("expected {}, got {got}", case[3]),
                    );
                }
            }
            Err(e) => fail("evalCondition", name, format!("did not compile: {e}")),
        }
    }

    for case in cases["hash"].as_array().expect("hash") {
        ran += 1;
        let (seed, value) = (
            case[0].as_str().unwrap_or_default(),
            case[1].as_str().unwrap_or_default(),
        );
        let version = u32::try_from(case[2].as_u64().unwrap_or(0)).unwrap_or(0);
        let got = hash::hash(seed, value, version);
        let ok = match (got, case[3].as_f64()) {
            (Some(g), Some(e)) => close(g, e),
            (None, None) => true,
            _ => false,
        };
        if !ok {
            fail(
                "hash",
                &format!("{seed}/{value}/v{version}"),
                format!("expected {}, got {got:?}", case[3]),
            );
        }
    }

    for case in cases["getBucketRange"].as_array().expect("getBucketRange") {
        ran += 1;
        let name = case[0].as_str().unwrap_or_default();
        let args = &case[1];
        let n = usize::try_from(args[0].as_u64().unwrap_or(0)).unwrap_or(0);
        let weights: Option<Vec<f64>> = args[2].as_array().map(|w| w.iter().map(f).collect());
        let got = hash::bucket_ranges(n, args[1].as_f64(), weights.as_deref());
        let want = ranges(&case[2]);
        let ok = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| close(g.0, w.0) && close(g.1, w.1));
        if !ok {
            fail(
                "getBucketRange",
                name,
                format!("expected {want:?}, got {got:?}"),
            );
        }
    }

    for case in cases["chooseVariation"]
        .as_array()
        .expect("chooseVariation")
    {
        ran += 1;
        let name = case[0].as_str().unwrap_or_default();
        let got = hash::choose_variation(f(&case[1]), &ranges(&case[2]))
            .map_or(-1, |i| i64::try_from(i).unwrap_or(-1));
        if Some(got) != case[3].as_i64() {
            fail(
                "chooseVariation",
                name,
                format!("expected {}, got {got}", case[3]),
            );
        }
    }

    for case in cases["getQueryStringOverride"]
        .as_array()
        .expect("getQueryStringOverride")
    {
        ran += 1;
        let name = case[0].as_str().unwrap_or_default();
        let n = usize::try_from(case[3].as_u64().unwrap_or(0)).unwrap_or(0);
        let got = hash::query_string_override(
            case[1].as_str().unwrap_or_default(),
            case[2].as_str().unwrap_or_default(),
            n,
        );
        if got.map(|g| json!(g)).unwrap_or(Value::Null) != case[4] {
            fail(
                "getQueryStringOverride",
                name,
                format!("expected {}, got {got:?}", case[4]),
            );
        }
    }

    for case in cases["inNamespace"].as_array().expect("inNamespace") {
        ran += 1;
        let name = case[0].as_str().unwrap_or_default();
        let ns: hash::Namespace = serde_json::from_value(case[2].clone()).expect("namespace");
        let got = hash::in_namespace(case[1].as_str().unwrap_or_default(), &ns);
        if Value::Bool(got) != case[3] {
            fail(
                "inNamespace",
                name,
                format!("expected {}, got {got}", case[3]),
            );
        }
    }

    for case in cases["getEqualWeights"]
        .as_array()
        .expect("getEqualWeights")
    {
        ran += 1;
        let n = case[0].as_i64().unwrap_or(0);
        let got = hash::equal_weights(n);
        let want: Vec<f64> = case[1].as_array().expect("weights").iter().map(f).collect();
        let round = |x: f64| (x * 1e8).round() / 1e8;
        if got.len() != want.len() || got.iter().zip(&want).any(|(g, w)| round(*g) != round(*w)) {
            fail(
                "getEqualWeights",
                &n.to_string(),
                format!("expected {want:?}, got {got:?}"),
            );
        }
    }

    for case in cases["run"].as_array().expect("run") {
        let name = case[0].as_str().unwrap_or_default();
        if excluded.skips("run", name) {
            continue;
        }
        ran += 1;
        let ctx_json = &case[1];
        let spec: ExperimentSpec = match serde_json::from_value(case[2].clone()) {
            Ok(s) => s,
            Err(e) => {
                fail("run", name, format!("experiment did not parse: {e}"));
                continue;
            }
        };
        let exp = Experiment::compile_lenient(spec).expect("compiles");
        let features = Features::from_context(ctx_json);
        let attributes = ctx_json
            .get("attributes")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let forced: Option<HashMap<String, i64>> = ctx_json
            .get("forcedVariations")
            .map(|f| serde_json::from_value(f.clone()).expect("forced"));
        let groups: Option<SavedGroups> = ctx_json
            .get("savedGroups")
            .map(|g| serde_json::from_value(g.clone()).expect("groups"));
        let lookup = |id: &str| features.value(id, &attributes);
        let mut ctx = Context::new(&attributes);
        ctx.url = ctx_json.get("url").and_then(Value::as_str);
        ctx.forced_variations = forced.as_ref();
        ctx.qa_mode = ctx_json
            .get("qaMode")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        ctx.enabled = ctx_json
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        ctx.saved_groups = groups.as_ref();
        ctx.features = Some(&lookup);
        let got = exp.run(&mut ctx);
        let got_triple = (got.value.clone(), got.in_experiment, got.hash_used);
        let want = (
            case[3].clone(),
            case[4].as_bool().unwrap_or(false),
            case[5].as_bool().unwrap_or(false),
        );
        if got_triple != want {
            fail(
                "run",
                name,
                format!("expected {want:?}, got {got_triple:?}"),
            );
        }
    }

    for case in cases["stickyBucket"].as_array().expect("stickyBucket") {
        let name = case[0].as_str().unwrap_or_default();
        if excluded.skips("stickyBucket", name) {
            continue;
        }
        ran += 1;
        let ctx_json = &case[1];
        let attributes = ctx_json
            .get("attributes")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let features = Features::from_context(ctx_json);
        let mut docs = features.load_sticky_docs(&case[2], &attributes);
        let feature_key = case[3].as_str().unwrap_or_default();
        let got = features.experiment_result(feature_key, &attributes, &mut docs);
        let got_json = got.map_or(Value::Null, |r| {
            let mut v = serde_json::to_value(&r).expect("serialises");
            v["featureId"] = json!(feature_key);
            v
        });
        if !subset_equal(&case[4], &got_json) {
            fail(
                "stickyBucket",
                name,
                format!("result: expected {}, got {got_json}", case[4]),
            );
        }
        let got_docs = serde_json::to_value(&docs).expect("serialises");
        if got_docs != case[5] {
            fail(
                "stickyBucket",
                name,
                format!("docs: expected {}, got {got_docs}", case[5]),
            );
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {ran} conformance cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{ran} GrowthBook conformance cases passed");
}

/// Every field of `want` equals the same field of `got` (numbers within 1e-9).
fn subset_equal(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| subset_equal(v, gv))),
        (Value::Number(a), Value::Number(b)) => close(
            a.as_f64().unwrap_or(f64::NAN),
            b.as_f64().unwrap_or(f64::NAN),
        ),
        (a, b) => a == b,
    }
}

/// Just enough of GrowthBook's feature evaluation to drive the cases that reach assignment
/// through a feature: default values (for prerequisites) and experiment rules (for sticky
/// buckets). Veneer itself has no feature flags; this lives in the test on purpose.
struct Features(BTreeMap<String, Value>);

impl Features {
    fn from_context(ctx: &Value) -> Self {
        let map = ctx
            .get("features")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        Features(map.unwrap_or_default())
    }

    fn value(&self, id: &str, _attributes: &Value) -> Value {
        self.0
            .get(id)
            .and_then(|f| f.get("defaultValue"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn experiments(&self, id: &str) -> Vec<Experiment> {
        let rules = self
            .0
            .get(id)
            .and_then(|f| f.get("rules"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        rules
            .iter()
            .filter(|r| r.get("variations").is_some())
            .map(|r| {
                let mut rule = r.clone();
                if let Some(obj) = rule.as_object_mut() {
                    obj.entry("key").or_insert_with(|| json!(id));
                }
                Experiment::compile_lenient(serde_json::from_value(rule).expect("rule parses"))
                    .expect("compiles")
            })
            .collect()
    }

    /// The SDK loads only the docs for attribute values this visitor has, among the
    /// attributes its experiments hash on.
    fn load_sticky_docs(&self, docs: &Value, attributes: &Value) -> StickyDocs {
        let mut names = Vec::new();
        for id in self.0.keys() {
            for e in self.experiments(id) {
                names.push(e.spec.hash_attribute.clone().unwrap_or_else(|| "id".into()));
                names.extend(e.spec.fallback_attribute.clone());
            }
        }
        let mut out = StickyDocs::new();
        for doc in docs.as_array().into_iter().flatten() {
            let doc: StickyDoc = serde_json::from_value(doc.clone()).expect("doc parses");
            let matches = names.contains(&doc.attribute_name)
                && hash::hash_value_string(attributes.get(&doc.attribute_name)).as_deref()
                    == Some(doc.attribute_value.as_str());
            if matches {
                out.insert(
                    format!("{}||{}", doc.attribute_name, doc.attribute_value),
                    doc,
                );
            }
        }
        out
    }

    fn experiment_result(
        &self,
        id: &str,
        attributes: &Value,
        docs: &mut StickyDocs,
    ) -> Option<veneer_rules::Assignment> {
        for exp in self.experiments(id) {
            let mut ctx = Context::new(attributes);
            ctx.sticky = Some(docs);
            let result = exp.run(&mut ctx);
            if result.in_experiment && result.passthrough != Some(true) {
                return Some(result);
            }
        }
        None
    }
}
