//! Swaps the hero block for the visitor's segment: a welcome-back message for returning
//! visitors, an introduction for new ones, and a compact layout on phones. Copy comes from the
//! tenant's content fragments (`hero-new`, `hero-returning`, with `-mobile` variants), so
//! marketers change it without rebuilding the plugin. Apps and kiosks fetching JSON get the
//! same decision in the document: `/hero/segment` and `/hero/html` are set.

use veneer_sdk::prelude::*;

struct Hero;

impl Plugin for Hero {
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        if response.status() != 200 || !visitor.consents("personalization") {
            return plan.build();
        }
        let selector = config("selector").unwrap_or_else(|| "#hero".to_owned());
        let segment = if visitor.in_segment("returning") {
            "returning"
        } else {
            "new"
        };
        let mobile = matches!(visitor.device(), DeviceClass::Mobile);
        let fragment = mobile
            .then(|| content::fragment(&format!("hero-{segment}-mobile")))
            .flatten()
            .or_else(|| content::fragment(&format!("hero-{segment}")));
        let is_json = response
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            plan.json_set("/hero/segment", &text::json_string(segment));
            if let Some(html) = &fragment {
                plan.json_set("/hero/html", &text::json_string(html));
            }
            return plan.build();
        }
        if let Some(html) = fragment {
            plan.select(&selector)
                .set_inner_html(&html)
                .set_attribute("data-segment", segment);
        }
        if mobile {
            plan.select(&selector).add_class("hero--compact");
        }
        plan.build()
    }
}

export_plugin!(Hero, deterministic);
