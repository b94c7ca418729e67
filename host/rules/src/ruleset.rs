//! A tenant's rules: saved groups, named segments, experiments and campaigns, loaded and
//! checked as a unit so that every error in a file is reported at once, each with its place.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde_json::Value;

use crate::campaign::Campaign;
use crate::caps::CapRule;
use crate::condition::{Condition, SavedGroups};
use crate::experiment::{Experiment, ExperimentSpec};

/// One problem in a rules definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct RuleError {
    /// Where: `segments.returning.$.visitCount.$gt`, `experiments[2].weights`, `line 4 column 7`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled, validated rule set.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    segment_names: Vec<String>,
    segments: Vec<Condition>,
    experiments: Vec<Experiment>,
    campaigns: Vec<Campaign>,
    saved_groups: SavedGroups,
    caps: Vec<CapRule>,
    timezone: Option<jiff::tz::TimeZone>,
}

/// The segments a visitor is in: a bit set over the rule set's segment indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSet {
    bits: Vec<u64>,
}

impl SegmentSet {
    /// Whether segment `index` matched.
    pub fn contains(&self, index: usize) -> bool {
        self.bits
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    fn insert(&mut self, index: usize) {
        let word = index / 64;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (index % 64);
    }
}

impl RuleSet {
    /// Parses and checks a JSON rules document, reporting every error found.
    pub fn from_json_str(text: &str) -> Result<Self, Vec<RuleError>> {
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            vec![RuleError {
                location: format!("line {} column {}", e.line(), e.column()),
                message: e.to_string(),
            }]
        })?;
        Self::from_value(&doc)
    }

    /// Checks and compiles a rules document already parsed (from JSON or TOML).
    pub fn from_value(doc: &Value) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut push =
            |location: String, message: String| errors.push(RuleError { location, message });
        let mut set = RuleSet::default();
        let Value::Object(root) = doc else {
            push(
                "(top level)".into(),
                "expected an object with segments, experiments, campaigns, savedGroups, caps and timezone".into(),
            );
            return Err(errors);
        };
        for key in root.keys() {
            if !matches!(
                key.as_str(),
                "segments" | "experiments" | "campaigns" | "savedGroups" | "caps" | "timezone"
            ) {
                push(
                    key.clone(),
                    "unknown field: expected segments, experiments, campaigns, savedGroups, caps or timezone"
                        .into(),
                );
            }
        }
        match root.get("savedGroups") {
            None => {}
            Some(Value::Object(groups)) => {
                for (name, members) in groups {
                    match members {
                        Value::Array(items) => {
                            set.saved_groups.insert(name.clone(), items.clone());
                        }
                        other => push(
                            format!("savedGroups.{name}"),
                            format!("expected an array of values, found {other}"),
                        ),
                    }
                }
            }
            Some(_) => push(
                "savedGroups".into(),
                "expected an object of group id → array of values".into(),
            ),
        }
        match root.get("segments") {
            None => {}
            Some(Value::Object(segments)) => {
                for (name, condition) in segments {
                    match Condition::compile(condition) {
                        Ok(c) => {
                            set.segment_names.push(name.clone());
                            set.segments.push(c);
                        }
                        Err(e) => push(
                            format!("segments.{name}{}", e.path.trim_start_matches('$')),
                            e.message,
                        ),
                    }
                    check_groups(
                        condition,
                        &set.saved_groups,
                        &format!("segments.{name}"),
                        &mut push,
                    );
                }
            }
            Some(_) => push(
                "segments".into(),
                "expected an object of segment name → condition".into(),
            ),
        }
        match root.get("experiments") {
            None => {}
            Some(Value::Array(items)) => {
                let mut keys = HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    let at = format!("experiments[{i}]");
                    let spec: ExperimentSpec = match serde_json::from_value(item.clone()) {
                        Ok(s) => s,
                        Err(e) => {
                            push(at, e.to_string());
                            continue;
                        }
                    };
                    let at = format!("experiments[{i}] ({})", spec.key);
                    for problem in experiment_problems(&spec) {
                        push(at.clone(), problem);
                    }
                    if let Some(prev) = keys.insert(spec.key.clone(), i) {
                        push(
                            at.clone(),
                            format!("duplicate key, first used by experiments[{prev}]"),
                        );
                    }
                    match Experiment::compile(spec) {
                        Ok(e) => set.experiments.push(e),
                        Err(e) => push(format!("{at}.{}", e.path), e.message),
                    }
                }
            }
            Some(_) => push(
                "experiments".into(),
                "expected an array of experiments".into(),
            ),
        }
        match root.get("campaigns") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("campaigns[{i}]");
                    match serde_json::from_value::<Campaign>(item.clone()) {
                        Ok(c) => {
                            let at = format!("{at} ({})", c.id);
                            if c.end <= c.start {
                                push(
                                    at.clone(),
                                    format!("end {} is not after start {}", c.end, c.start),
                                );
                            }
                            if c.cost.is_some_and(|x| !(x.is_finite() && x >= 0.0)) {
                                push(at.clone(), "cost must be a number >= 0".into());
                            }
                            if c.frequency_cap == Some(0) {
                                push(
                                    at.clone(),
                                    "frequency_cap must be at least 1 (leave it out for no cap)"
                                        .into(),
                                );
                            }
                            if c.holdout.is_some_and(|h| !(h > 0.0 && h <= 0.5)) {
                                push(at.clone(), "holdout must be above 0 and at most 0.5".into());
                            }
                            if c.attribution_days == Some(0) {
                                push(at.clone(), "attribution_days must be at least 1".into());
                            }
                            for s in &c.segments {
                                if !set.segment_names.contains(s) {
                                    push(at.clone(), format!("targets unknown segment {s:?}"));
                                }
                            }
                            set.campaigns.push(c);
                        }
                        Err(e) => push(at, e.to_string()),
                    }
                }
            }
            Some(_) => push("campaigns".into(), "expected an array of campaigns".into()),
        }
        match root.get("timezone") {
            None => {}
            Some(Value::String(name)) => match jiff::tz::TimeZone::get(name) {
                Ok(tz) => set.timezone = Some(tz),
                Err(_) => push(
                    "timezone".into(),
                    format!("{name:?} is not a known IANA time zone (e.g. \"Europe/Oslo\")"),
                ),
            },
            Some(_) => push("timezone".into(), "expected an IANA time zone name".into()),
        }
        match root.get("caps") {
            None => {}
            Some(Value::Array(items)) => {
                if items.len() > crate::caps::MAX_RULES {
                    push(
                        "caps".into(),
                        format!(
                            "{} rules: at most {} are allowed",
                            items.len(),
                            crate::caps::MAX_RULES
                        ),
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    let at = format!("caps[{i}]");
                    match serde_json::from_value::<CapRule>(item.clone()) {
                        Ok(rule) => {
                            let at = format!("{at} ({})", rule.id);
                            for problem in rule.problems() {
                                push(at.clone(), problem);
                            }
                            if set.caps.iter().any(|r| r.id == rule.id) {
                                push(at.clone(), "duplicate id".into());
                            }
                            set.caps.push(rule);
                        }
                        Err(e) => push(at, e.to_string()),
                    }
                }
            }
            Some(_) => push("caps".into(), "expected an array of cap rules".into()),
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Segment names, in definition order (indices match [`SegmentSet`]).
    pub fn segment_names(&self) -> &[String] {
        &self.segment_names
    }

    /// The experiments, in definition order.
    pub fn experiments(&self) -> &[Experiment] {
        &self.experiments
    }

    /// The experiment with `key`.
    pub fn experiment(&self, key: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.spec.key == key)
    }

    /// The campaigns, in definition order.
    pub fn campaigns(&self) -> &[Campaign] {
        &self.campaigns
    }

    /// Frequency cap rules across channels, in definition order.
    pub fn caps(&self) -> &[CapRule] {
        &self.caps
    }

    /// The time zone calendar cap windows use for recipients who give none (`timezone`;
    /// default UTC).
    pub fn timezone(&self) -> jiff::tz::TimeZone {
        self.timezone.clone().unwrap_or(jiff::tz::TimeZone::UTC)
    }

    /// Saved groups.
    pub fn saved_groups(&self) -> &SavedGroups {
        &self.saved_groups
    }

    /// Evaluates every segment against `attributes`.
    pub fn segments(&self, attributes: &Value) -> SegmentSet {
        let mut set = SegmentSet {
            bits: vec![0; self.segments.len().div_ceil(64)],
        };
        for (i, c) in self.segments.iter().enumerate() {
            if c.matches(attributes, &self.saved_groups) {
                set.insert(i);
            }
        }
        set
    }

    /// The set of the named segments (unknown names are left out), as a preview forces it.
    pub fn segments_named(&self, names: &[String]) -> SegmentSet {
        let mut set = SegmentSet {
            bits: vec![0; self.segments.len().div_ceil(64)],
        };
        for (i, name) in self.segment_names().iter().enumerate() {
            if names.contains(name) {
                set.insert(i);
            }
        }
        set
    }

    /// Names of the segments in `set`.
    pub fn segment_list<'a>(&'a self, set: &'a SegmentSet) -> impl Iterator<Item = &'a str> + 'a {
        self.segment_names
            .iter()
            .enumerate()
            .filter(|(i, _)| set.contains(*i))
            .map(|(_, n)| n.as_str())
    }

    /// Campaigns live at `now` for this visitor on `channel`, highest priority first.
    pub fn active_campaigns(
        &self,
        now: Timestamp,
        channel: &str,
        set: &SegmentSet,
    ) -> Vec<&Campaign> {
        let in_segment = |name: &str| {
            self.segment_names
                .iter()
                .position(|n| n == name)
                .is_some_and(|i| set.contains(i))
        };
        let mut live: Vec<&Campaign> = self
            .campaigns
            .iter()
            .filter(|c| c.is_active(now, channel, in_segment))
            .collect();
        live.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.start.cmp(&b.start))
        });
        live
    }
}

/// Problems the reference would paper over at run time (falling back to equal weights, say)
/// but that are almost certainly a mistake in a definition about to go live.
fn experiment_problems(spec: &ExperimentSpec) -> Vec<String> {
    let mut out = Vec::new();
    let n = spec.variations.len();
    if spec.key.is_empty() {
        out.push("key is empty".into());
    }
    if n < 2 {
        out.push(format!("needs at least 2 variations, has {n}"));
    }
    if let Some(w) = &spec.weights {
        if w.len() != n {
            out.push(format!(
                "weights has {} entries for {n} variations",
                w.len()
            ));
        }
        let total: f64 = w.iter().sum();
        if !(0.99..=1.01).contains(&total) || w.iter().any(|x| *x < 0.0) {
            out.push(format!(
                "weights must be non-negative and sum to 1, they sum to {total}"
            ));
        }
    }
    if let Some(c) = spec.coverage
        && !(0.0..=1.0).contains(&c)
    {
        out.push(format!("coverage must be between 0 and 1, is {c}"));
    }
    if let Some(v) = spec.hash_version
        && v != 1
        && v != 2
    {
        out.push(format!("hashVersion must be 1 or 2, is {v}"));
    }
    if let Some(f) = spec.force
        && usize::try_from(f).map_or(true, |f| f >= n)
    {
        out.push(format!("force {f} is not a variation index (0..{n})"));
    }
    if let Some(meta) = &spec.meta
        && meta.len() != n
    {
        out.push(format!(
            "meta has {} entries for {n} variations",
            meta.len()
        ));
    }
    if let Some(ns) = &spec.namespace
        && !(0.0 <= ns.start && ns.start <= ns.end && ns.end <= 1.0)
    {
        out.push(format!(
            "namespace range [{}, {}) is not within [0, 1]",
            ns.start, ns.end
        ));
    }
    out
}

/// `$inGroup` naming a group the file does not define is almost always a typo.
fn check_groups(
    condition: &Value,
    groups: &SavedGroups,
    at: &str,
    push: &mut impl FnMut(String, String),
) {
    match condition {
        Value::Object(map) => {
            for (k, v) in map {
                if (k == "$inGroup" || k == "$notInGroup")
                    && v.as_str().is_some_and(|g| !groups.contains_key(g))
                {
                    push(
                        format!("{at}.{k}"),
                        format!("saved group {v} is not defined in savedGroups"),
                    );
                }
                check_groups(v, groups, &format!("{at}.{k}"), push);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_groups(v, groups, &format!("{at}[{i}]"), push);
            }
        }
        _ => {}
    }
}

/// Experiment assignments for a visitor, keyed by experiment key (used by the host to keep
/// assignments sticky in the visitor cookie).
pub type Assignments = BTreeMap<String, String>;
