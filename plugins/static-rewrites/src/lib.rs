//! Declarative rewrites straight from the tenant config, for copy changes that need no code.
//!
//! Each parameter named `rule1`, `rule2`, ... (up to `rule20`) holds `selector | operation |
//! value`, for example `h1 | set-inner-text | Winter sale` or `a.cta | set-attribute |
//! href=/sale`. Operations: set-inner-html, set-inner-text, prepend-html, append-html,
//! before-html, after-html, replace-html, remove, set-attribute (name=value),
//! remove-attribute, add-class, remove-class. An optional `segment` parameter limits the
//! rules to visitors in that segment. With `once = "true"` each rule applies to its first match
//! only (as nginx's `sub_filter_once`), and once all of them are placed the rest of the page
//! streams through unparsed. All rules run natively in the host: no per-element call.

use veneer_sdk::prelude::*;

struct StaticRewrites;

impl Plugin for StaticRewrites {
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let wanted = config("segment");
        let once = config("once").is_some_and(|v| v == "true");
        if response.status() != 200 || wanted.is_some_and(|s| !visitor.in_segment(&s)) {
            return plan.build();
        }
        for i in 1..=20 {
            let Some(rule) = config(&format!("rule{i}")) else {
                continue;
            };
            let mut parts = rule.splitn(3, '|').map(str::trim);
            let (Some(selector), Some(op)) = (parts.next(), parts.next()) else {
                log(
                    Level::Warn,
                    &format!("rule{i}: expected `selector | operation | value`"),
                );
                continue;
            };
            let value = parts.next().unwrap_or("");
            let mut s = plan.select(selector);
            match op {
                "set-inner-html" => s.set_inner_html(value),
                "set-inner-text" => s.set_inner_text(value),
                "prepend-html" => s.prepend_html(value),
                "append-html" => s.append_html(value),
                "before-html" => s.before_html(value),
                "after-html" => s.after_html(value),
                "replace-html" => s.replace_html(value),
                "remove" => s.remove(),
                "remove-attribute" => s.remove_attribute(value),
                "add-class" => s.add_class(value),
                "remove-class" => s.remove_class(value),
                "set-attribute" => {
                    let (name, v) = value.split_once('=').unwrap_or((value, ""));
                    s.set_attribute(name.trim(), v.trim())
                }
                other => {
                    log(
                        Level::Warn,
                        &format!("rule{i}: unknown operation {other:?}"),
                    );
                    continue;
                }
            };
            if once {
                s.first_only();
            }
        }
        plan.build()
    }
}

export_plugin!(StaticRewrites, deterministic);
