//! What a plugin may ask the host to do for one response.
//!
//! A plugin's own time and memory are bounded by the engine, but a plan is cheap for the
//! plugin and can be unbounded for the host: 5,000 rules `*` → `append-html` of 4 KB turn a
//! small page into gigabytes of output, and 50,000 header edits overflow a header map. The
//! budget bounds the plan itself (counted as it is recorded, so host memory stays bounded too)
//! and, while the body streams, the bytes a plugin inserts relative to the bytes that came in.

use super::PluginFault;
use super::model::{HeaderEdits, HtmlOp, JsonOp, ResponsePlan, SyntheticResponse};

/// Limits on one plugin's plan for one response; see the tenant's `[tenant.limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// HTML rules plus subscriptions in a plan; operations per element callback.
    pub max_rules: usize,
    /// Bytes of HTML, text and attribute values in a plan or one element callback's answer.
    pub max_inserted_bytes: usize,
    /// Header edits (set + remove) in a plan.
    pub max_header_edits: usize,
    /// Bytes of header names and values in a plan.
    pub max_header_bytes: usize,
    /// JSON operations in a plan.
    pub max_json_ops: usize,
    /// Bytes of JSON pointers and values in a plan.
    pub max_json_bytes: usize,
    /// Streaming: inserted bytes ≤ input bytes so far × `max_growth` + `extra_bytes`.
    pub max_growth: f64,
    /// See `max_growth`.
    pub extra_bytes: u64,
}

impl Budget {
    /// Every limit as a number, for keys that must change when any limit does (the
    /// destructuring makes a new field a compile error here until it is added).
    pub fn fingerprint(&self) -> [u64; 8] {
        let Budget {
            max_rules,
            max_inserted_bytes,
            max_header_edits,
            max_header_bytes,
            max_json_ops,
            max_json_bytes,
            max_growth,
            extra_bytes,
        } = *self;
        [
            max_rules as u64,
            max_inserted_bytes as u64,
            max_header_edits as u64,
            max_header_bytes as u64,
            max_json_ops as u64,
            max_json_bytes as u64,
            max_growth.to_bits(),
            extra_bytes,
        ]
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_rules: 256,
            max_inserted_bytes: 256 << 10,
            max_header_edits: 64,
            max_header_bytes: 16 << 10,
            max_json_ops: 256,
            max_json_bytes: 256 << 10,
            max_growth: 2.0,
            extra_bytes: 1 << 20,
        }
    }
}

/// Bytes an operation inserts into the document.
pub fn op_bytes(op: &HtmlOp) -> usize {
    match op {
        HtmlOp::SetInnerHtml(s)
        | HtmlOp::SetInnerText(s)
        | HtmlOp::PrependHtml(s)
        | HtmlOp::AppendHtml(s)
        | HtmlOp::BeforeHtml(s)
        | HtmlOp::AfterHtml(s)
        | HtmlOp::ReplaceHtml(s)
        | HtmlOp::AddClass(s) => s.len(),
        HtmlOp::SetAttribute((n, v)) => n.len() + v.len() + 4,
        HtmlOp::Remove | HtmlOp::Unwrap | HtmlOp::RemoveAttribute(_) | HtmlOp::RemoveClass(_) => 0,
    }
}

fn json_bytes(op: &JsonOp) -> usize {
    match op {
        JsonOp::Set((p, v)) | JsonOp::Append((p, v)) => p.len() + v.len(),
        JsonOp::Remove(p) => p.len(),
    }
}

/// Running totals of what one plan has asked for, checked against the budget at every step.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    rules: usize,
    inserted: usize,
    header_edits: usize,
    header_bytes: usize,
    json_ops: usize,
    json_bytes: usize,
}

impl Usage {
    /// Charges one HTML rule or subscription carrying `bytes`.
    pub fn rule(&mut self, budget: &Budget, bytes: usize) -> Result<(), String> {
        self.rules += 1;
        self.inserted += bytes;
        if self.rules > budget.max_rules {
            return Err(format!(
                "more than {} rules and subscriptions (plan_max_rules)",
                budget.max_rules
            ));
        }
        if self.inserted > budget.max_inserted_bytes {
            return Err(format!(
                "more than {} bytes of inserted content (plan_max_inserted_bytes)",
                budget.max_inserted_bytes
            ));
        }
        Ok(())
    }

    /// Charges `bytes` of a rule's options (its event's name and properties, its fallback
    /// selector) to the rule it belongs to: bytes the plan carries, not another rule.
    pub fn rule_option(&mut self, budget: &Budget, bytes: usize) -> Result<(), String> {
        self.inserted += bytes;
        if self.inserted > budget.max_inserted_bytes {
            return Err(format!(
                "more than {} bytes of inserted content and rule options (plan_max_inserted_bytes)",
                budget.max_inserted_bytes
            ));
        }
        Ok(())
    }

    /// Charges one header edit of `bytes`.
    pub fn header(&mut self, budget: &Budget, bytes: usize) -> Result<(), String> {
        self.header_edits += 1;
        self.header_bytes += bytes;
        if self.header_edits > budget.max_header_edits {
            return Err(format!(
                "more than {} header edits (plan_max_header_edits)",
                budget.max_header_edits
            ));
        }
        if self.header_bytes > budget.max_header_bytes {
            return Err(format!(
                "more than {} bytes of headers (plan_max_header_bytes)",
                budget.max_header_bytes
            ));
        }
        Ok(())
    }

    /// Charges one JSON operation of `bytes`.
    pub fn json(&mut self, budget: &Budget, bytes: usize) -> Result<(), String> {
        self.json_ops += 1;
        self.json_bytes += bytes;
        if self.json_ops > budget.max_json_ops {
            return Err(format!(
                "more than {} JSON operations (plan_max_json_ops)",
                budget.max_json_ops
            ));
        }
        if self.json_bytes > budget.max_json_bytes {
            return Err(format!(
                "more than {} bytes of JSON operations (plan_max_json_bytes)",
                budget.max_json_bytes
            ));
        }
        Ok(())
    }
}

fn over(e: String) -> PluginFault {
    PluginFault::Budget(e)
}

impl Budget {
    /// Checks a whole plan (contract 0.1.0 returns it at once; 0.2.0 was charged as it was
    /// recorded, and this confirms it).
    pub fn check_plan(&self, plan: &ResponsePlan) -> Result<(), PluginFault> {
        let mut u = Usage::default();
        self.charge_edits(&mut u, &plan.headers)?;
        for rule in &plan.html {
            u.rule(self, op_bytes(&rule.op) + rule.selector.len())
                .map_err(over)?;
        }
        for sub in &plan.subscribe {
            u.rule(self, sub.selector.len()).map_err(over)?;
        }
        for options in plan.rule_options.values() {
            let event = options.on_apply.as_ref().map_or(0, |(name, props)| {
                name.len() + props.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            });
            let fallback = options.fallback.as_ref().map_or(0, String::len);
            u.rule_option(self, event + fallback).map_err(over)?;
        }
        for op in &plan.json {
            u.json(self, json_bytes(op)).map_err(over)?;
        }
        Ok(())
    }

    /// Checks request or response header edits.
    pub fn check_edits(&self, edits: &HeaderEdits) -> Result<(), PluginFault> {
        self.charge_edits(&mut Usage::default(), edits)
    }

    fn charge_edits(&self, u: &mut Usage, edits: &HeaderEdits) -> Result<(), PluginFault> {
        for (n, v) in &edits.set {
            u.header(self, n.len() + v.len()).map_err(over)?;
        }
        for n in &edits.remove {
            u.header(self, n.len()).map_err(over)?;
        }
        Ok(())
    }

    /// Checks a synthetic response's headers (its body is bounded by the plugin's memory).
    pub fn check_synthetic(&self, r: &SyntheticResponse) -> Result<(), PluginFault> {
        let mut u = Usage::default();
        for (n, v) in &r.headers {
            u.header(self, n.len() + v.len()).map_err(over)?;
        }
        Ok(())
    }

    /// Checks one element callback's answer.
    pub fn check_element_ops(&self, ops: &[HtmlOp]) -> Result<(), PluginFault> {
        let mut u = Usage::default();
        for op in ops {
            u.rule(self, op_bytes(op)).map_err(over)?;
        }
        Ok(())
    }

    /// The most a plugin may have inserted once `input` bytes of the body came in.
    pub fn output_allowance(&self, input: u64) -> u64 {
        // Float to integer saturates, so a huge factor cannot wrap.
        let grown = (input as f64 * self.max_growth) as u64;
        grown.saturating_add(self.extra_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::model::HtmlRule;

    #[test]
    fn plans_over_any_limit_are_refused_with_the_limit_named() {
        let budget = Budget {
            max_rules: 2,
            max_inserted_bytes: 12,
            max_header_edits: 1,
            ..Budget::default()
        };
        let rule = |s: &str| HtmlRule {
            selector: "*".into(),
            op: HtmlOp::AppendHtml(s.into()),
        };
        let mut plan = ResponsePlan {
            html: vec![rule("a"), rule("b")],
            ..ResponsePlan::default()
        };
        assert!(budget.check_plan(&plan).is_ok());
        plan.html.push(rule("c"));
        let e = budget.check_plan(&plan).expect_err("three rules");
        assert!(e.to_string().contains("plan_max_rules"), "{e}");
        plan.html = vec![rule("0123456789xy")];
        let e = budget
            .check_plan(&plan)
            .expect_err("12 bytes and the selector");
        assert!(e.to_string().contains("plan_max_inserted_bytes"), "{e}");
        plan.html.clear();
        plan.headers.set = vec![("a".into(), "1".into()), ("b".into(), "2".into())];
        let e = budget.check_plan(&plan).expect_err("two edits");
        assert!(e.to_string().contains("plan_max_header_edits"), "{e}");
    }

    #[test]
    fn output_allowance_grows_with_input_and_saturates() {
        let b = Budget {
            max_growth: 2.0,
            extra_bytes: 100,
            ..Budget::default()
        };
        assert_eq!(b.output_allowance(0), 100);
        assert_eq!(b.output_allowance(1000), 2100);
        let huge = Budget {
            max_growth: 1e300,
            ..b
        };
        assert_eq!(huge.output_allowance(u64::MAX), u64::MAX);
    }
}
