//! Experiment assignment: the reference SDK's `run` for one experiment, with sticky bucketing.
//!
//! [`Experiment::compile`] checks and compiles a GrowthBook experiment object once (its
//! condition included); [`Experiment::run`] then assigns a visitor deterministically. The
//! order of checks follows the reference exactly (query-string override, forced variation,
//! active, hash attribute, sticky bucket, filters/namespace, condition, prerequisites, hash,
//! version blocking, force, QA mode), because each step changes `inExperiment`/`hashUsed`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::condition::{Condition, ConditionError, SavedGroups};
use crate::hash::{self, BucketRange, Namespace};

/// An experiment as GrowthBook writes it (camelCase JSON).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Unique key; also the default hash seed and the query-string override name.
    pub key: String,
    /// The variations' values (any JSON).
    pub variations: Vec<Value>,
    /// Traffic split, one weight per variation, summing to 1.
    pub weights: Option<Vec<f64>>,
    /// `false` stops new and existing assignment (the control is served).
    pub active: Option<bool>,
    /// Fraction of eligible visitors included, 0 to 1.
    pub coverage: Option<f64>,
    /// Explicit bucket ranges; override weights and coverage.
    pub ranges: Option<Vec<BucketRange>>,
    /// Targeting condition on visitor attributes.
    pub condition: Option<Value>,
    /// Prerequisite features: `{id, condition, gate}`.
    pub parent_conditions: Option<Vec<ParentCondition>>,
    /// Mutual-exclusion slice `[id, start, end]`.
    pub namespace: Option<Namespace>,
    /// Forces every included visitor into this variation (QA).
    pub force: Option<i64>,
    /// The attribute hashed for assignment (default `id`).
    pub hash_attribute: Option<String>,
    /// Used when the hash attribute is missing, if sticky bucketing is on.
    pub fallback_attribute: Option<String>,
    /// 1 (legacy, biased) or 2.
    pub hash_version: Option<u32>,
    /// Hash seed (default: the key).
    pub seed: Option<String>,
    /// Hash-range filters, each `{seed, ranges, attribute?, hashVersion?}`.
    pub filters: Option<Vec<Filter>>,
    /// Per-variation metadata; `key` names the variation in sticky buckets.
    pub meta: Option<Vec<VariationMeta>>,
    /// Bumping it re-buckets every visitor.
    pub bucket_version: Option<u32>,
    /// Visitors bucketed under an older version are excluded.
    pub min_bucket_version: Option<u32>,
    /// Opt this experiment out of sticky bucketing.
    pub disable_sticky_bucketing: Option<bool>,
    /// Display name.
    pub name: Option<String>,
    /// Experiment phase label.
    pub phase: Option<String>,
    /// `draft`, `running` or `stopped`; draft and stopped experiments assign nobody.
    pub status: Option<String>,
}

/// A prerequisite: the value of feature `id` must satisfy `condition` (`{"value": ...}`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ParentCondition {
    /// Feature key.
    pub id: String,
    /// Condition over `{"value": <feature value>}`.
    pub condition: Value,
    /// Gate: a failing gate blocks rather than merely excludes.
    #[serde(default)]
    pub gate: bool,
}

/// A hash-range filter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Hash seed.
    pub seed: String,
    /// Ranges a visitor's hash must fall in.
    pub ranges: Vec<BucketRange>,
    /// Attribute hashed (default `id`).
    pub attribute: Option<String>,
    /// Hash version (default 2).
    pub hash_version: Option<u32>,
}

/// Per-variation metadata.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct VariationMeta {
    /// Stable variation key, used by sticky buckets.
    pub key: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Passthrough variations count as not-in-experiment for features.
    pub passthrough: Option<bool>,
}

/// A compiled experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The experiment as written.
    pub spec: ExperimentSpec,
    condition: Option<Condition>,
    parents: Vec<(String, Condition, bool)>,
}

/// A visitor's sticky assignments for one attribute value, as GrowthBook stores them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StickyDoc {
    /// Attribute name the doc is keyed by.
    pub attribute_name: String,
    /// Attribute value (stringified).
    pub attribute_value: String,
    /// `"<experiment>__<bucketVersion>"` → variation key.
    pub assignments: BTreeMap<String, String>,
}

/// Sticky docs by `"<attributeName>||<attributeValue>"`.
pub type StickyDocs = BTreeMap<String, StickyDoc>;

/// What `run` needs to know about the visitor and the surroundings.
pub struct Context<'a> {
    /// Visitor attributes (a JSON object).
    pub attributes: &'a Value,
    /// Current URL, for query-string overrides.
    pub url: Option<&'a str>,
    /// Forced variations by experiment key.
    pub forced_variations: Option<&'a HashMap<String, i64>>,
    /// QA mode: nobody is assigned unless forced.
    pub qa_mode: bool,
    /// `false` disables all experiments.
    pub enabled: bool,
    /// Saved groups for `$inGroup`.
    pub saved_groups: Option<&'a SavedGroups>,
    /// Feature values for prerequisites.
    pub features: Option<&'a dyn Fn(&str) -> Value>,
    /// Sticky bucketing: the visitor's docs, updated in place when an assignment is made.
    pub sticky: Option<&'a mut StickyDocs>,
}

/// The outcome of [`Experiment::run`], field for field the reference's result object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Variation index (0 when not in the experiment).
    pub variation_id: usize,
    /// The variation's value.
    pub value: Value,
    /// Variation key (meta key or the index as a string).
    pub key: String,
    /// Whether the visitor is in the experiment (exposure should be tracked).
    pub in_experiment: bool,
    /// Whether hashing decided the assignment.
    pub hash_used: bool,
    /// The attribute used to hash.
    pub hash_attribute: String,
    /// Its value.
    pub hash_value: String,
    /// The visitor's hash bucket, when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<f64>,
    /// Whether a stored sticky bucket decided the assignment.
    pub sticky_bucket_used: bool,
    /// Passthrough variation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
}

impl<'a> Context<'a> {
    /// A context for `attributes` with experiments enabled and nothing else set.
    pub fn new(attributes: &'a Value) -> Self {
        Context {
            attributes,
            url: None,
            forced_variations: None,
            qa_mode: false,
            enabled: true,
            saved_groups: None,
            features: None,
            sticky: None,
        }
    }
}

static EMPTY_GROUPS: std::sync::LazyLock<SavedGroups> = std::sync::LazyLock::new(SavedGroups::new);

impl Experiment {
    /// Compiles an experiment strictly: its condition and prerequisite conditions must compile.
    pub fn compile(spec: ExperimentSpec) -> Result<Self, ConditionError> {
        Self::build(spec, Condition::compile)
    }

    /// Compiles with the reference SDK's run-time tolerance for conditions.
    pub fn compile_lenient(spec: ExperimentSpec) -> Result<Self, ConditionError> {
        Self::build(spec, Condition::compile_lenient)
    }

    fn build(
        spec: ExperimentSpec,
        compile: fn(&Value) -> Result<Condition, ConditionError>,
    ) -> Result<Self, ConditionError> {
        let condition = spec
            .condition
            .as_ref()
            .map(|c| compile(c).map_err(|e| prefix(e, "condition")))
            .transpose()?;
        let parents = spec
            .parent_conditions
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| {
                compile(&p.condition)
                    .map(|c| (p.id.clone(), c, p.gate))
                    .map_err(|e| prefix(e, &format!("parentConditions[{i}].condition")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Experiment {
            spec,
            condition,
            parents,
        })
    }

    fn hash_attribute<'v>(
        &'v self,
        ctx: &'v Context<'_>,
        use_fallback: bool,
    ) -> (&'v str, Option<String>) {
        let attr = self.spec.hash_attribute.as_deref().unwrap_or("id");
        let value = hash::hash_value_string(ctx.attributes.get(attr));
        if value.is_none()
            && use_fallback
            && let Some(fallback) = self.spec.fallback_attribute.as_deref()
            && let Some(v) = hash::hash_value_string(ctx.attributes.get(fallback))
        {
            return (fallback, Some(v));
        }
        (attr, value)
    }

    fn sticky_enabled(&self, ctx: &Context<'_>) -> bool {
        ctx.sticky.is_some() && !self.spec.disable_sticky_bucketing.unwrap_or(false)
    }

    fn result(
        &self,
        ctx: &Context<'_>,
        index: Option<i64>,
        hash_used: bool,
        bucket: Option<f64>,
        sticky_used: bool,
    ) -> Assignment {
        let n = self.spec.variations.len();
        let (index, in_experiment) = match index.and_then(|i| usize::try_from(i).ok()) {
            Some(i) if i < n => (i, true),
            _ => (0, false),
        };
        let (attr, value) = self.hash_attribute(ctx, self.sticky_enabled(ctx));
        let meta = self.spec.meta.as_ref().and_then(|m| m.get(index));
        Assignment {
            variation_id: index,
            value: self
                .spec
                .variations
                .get(index)
                .cloned()
                .unwrap_or(Value::Null),
            key: meta
                .and_then(|m| m.key.clone())
                .unwrap_or_else(|| index.to_string()),
            in_experiment,
            hash_used,
            hash_attribute: attr.to_owned(),
            hash_value: value.unwrap_or_default(),
            bucket,
            sticky_bucket_used: sticky_used,
            passthrough: meta.and_then(|m| m.passthrough),
        }
    }

    fn sticky_key(&self, version: u32) -> String {
        format!("{}__{}", self.spec.key, version)
    }

    /// The stored variation for this visitor, if any; `Err(())` when a stored bucket from a
    /// version below `minBucketVersion` blocks the visitor.
    fn sticky_variation(&self, ctx: &Context<'_>) -> Result<Option<usize>, ()> {
        let Some(docs) = ctx.sticky.as_deref() else {
            return Ok(None);
        };
        let mut assignments: BTreeMap<&str, &str> = BTreeMap::new();
        let attr = self.spec.hash_attribute.as_deref().unwrap_or("id");
        let mut add = |name: &str| {
            if let Some(value) = hash::hash_value_string(ctx.attributes.get(name))
                && let Some(doc) = docs.get(&format!("{name}||{value}"))
            {
                for (k, v) in &doc.assignments {
                    assignments.insert(k, v);
                }
            }
        };
        // The hash attribute's doc wins over the fallback's, so it is merged last.
        if let Some(fallback) = self.spec.fallback_attribute.as_deref() {
            add(fallback);
        }
        add(attr);
        for v in 0..self.spec.min_bucket_version.unwrap_or(0) {
            if assignments.contains_key(self.sticky_key(v).as_str()) {
                return Err(());
            }
        }
        let Some(key) = assignments.get(
            self.sticky_key(self.spec.bucket_version.unwrap_or(0))
                .as_str(),
        ) else {
            return Ok(None);
        };
        Ok(self
            .spec
            .meta
            .iter()
            .flatten()
            .position(|m| m.key.as_deref() == Some(key)))
    }

    /// Assigns the visitor described by `ctx`, following the reference's `run` step by step.
    pub fn run(&self, ctx: &mut Context<'_>) -> Assignment {
        let spec = &self.spec;
        let n = spec.variations.len();
        if n < 2 || !ctx.enabled {
            return self.result(ctx, None, false, None, false);
        }
        if let Some(i) = ctx
            .url
            .and_then(|url| hash::query_string_override(&spec.key, url, n))
        {
            return self.result(ctx, i64::try_from(i).ok(), false, None, false);
        }
        if let Some(&i) = ctx.forced_variations.and_then(|f| f.get(&spec.key)) {
            return self.result(ctx, Some(i), false, None, false);
        }
        if spec.status.as_deref() == Some("draft") || spec.active == Some(false) {
            return self.result(ctx, None, false, None, false);
        }
        let sticky_on = self.sticky_enabled(ctx);
        let (hash_attr, hash_value) = self.hash_attribute(ctx, sticky_on);
        let hash_attr = hash_attr.to_owned();
        let Some(hash_value) = hash_value else {
            return self.result(ctx, None, false, None, false);
        };

        let (mut assigned, mut blocked) = (None, false);
        if sticky_on {
            match self.sticky_variation(ctx) {
                Ok(v) => assigned = v,
                Err(()) => blocked = true,
            }
        }
        let found_sticky = assigned.is_some();
        if !found_sticky && !self.eligible(ctx, &hash_value) {
            return self.result(ctx, None, false, None, false);
        }
        let seed = spec.seed.as_deref().unwrap_or(&spec.key);
        let Some(bucket) = hash::hash(seed, &hash_value, spec.hash_version.unwrap_or(1)) else {
            return self.result(ctx, None, false, None, false);
        };
        if !found_sticky {
            assigned = match &spec.ranges {
                Some(ranges) => hash::choose_variation(bucket, ranges),
                None => hash::choose_variation(
                    bucket,
                    &hash::bucket_ranges(n, spec.coverage, spec.weights.as_deref()),
                ),
            };
        }
        if blocked {
            return self.result(ctx, None, false, None, true);
        }
        let Some(assigned) = assigned else {
            return self.result(ctx, None, false, None, false);
        };
        if let Some(force) = spec.force {
            return self.result(ctx, Some(force), false, None, false);
        }
        if ctx.qa_mode || spec.status.as_deref() == Some("stopped") {
            return self.result(ctx, None, false, None, false);
        }
        let result = self.result(
            ctx,
            i64::try_from(assigned).ok(),
            true,
            Some(bucket),
            found_sticky,
        );
        if sticky_on && let Some(docs) = ctx.sticky.as_deref_mut() {
            let doc = docs
                .entry(format!("{hash_attr}||{hash_value}"))
                .or_insert_with(|| StickyDoc {
                    attribute_name: hash_attr.clone(),
                    attribute_value: hash_value.clone(),
                    assignments: BTreeMap::new(),
                });
            doc.assignments.insert(
                self.sticky_key(spec.bucket_version.unwrap_or(0)),
                result.key.clone(),
            );
        }
        result
    }

    /// Filters or namespace, condition and prerequisites: the checks a sticky bucket skips.
    fn eligible(&self, ctx: &Context<'_>, hash_value: &str) -> bool {
        let spec = &self.spec;
        if let Some(filters) = &spec.filters {
            let filtered_out = filters.iter().any(|f| {
                let attr = f.attribute.as_deref().unwrap_or("id");
                let Some(value) = hash::hash_value_string(ctx.attributes.get(attr)) else {
                    return true;
                };
                match hash::hash(&f.seed, &value, f.hash_version.unwrap_or(2)) {
                    Some(n) => !f.ranges.iter().any(|r| hash::in_range(n, *r)),
                    None => true,
                }
            });
            if filtered_out {
                return false;
            }
        } else if let Some(ns) = &spec.namespace
            && !hash::in_namespace(hash_value, ns)
        {
            return false;
        }
        let groups = ctx.saved_groups.unwrap_or(&EMPTY_GROUPS);
        if let Some(c) = &self.condition
            && !c.matches(ctx.attributes, groups)
        {
            return false;
        }
        for (id, condition, _gate) in &self.parents {
            let value = ctx.features.map_or(Value::Null, |f| f(id));
            let wrapped = serde_json::json!({ "value": value });
            if !condition.matches(&wrapped, groups) {
                return false;
            }
        }
        true
    }
}

fn prefix(mut e: ConditionError, field: &str) -> ConditionError {
    e.path = format!("{field}{}", e.path.trim_start_matches('$'));
    e
}
