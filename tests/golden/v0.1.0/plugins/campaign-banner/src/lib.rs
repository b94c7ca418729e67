//! Shows a banner at the top of every page for the highest-priority live campaign that has a
//! `banner` parameter, and records an impression. Campaign start and end are enforced by the
//! host clock, so the banner appears and disappears everywhere at the configured instants.

use veneer_sdk::prelude::*;

struct Banner;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Plugin for Banner {
    fn on_response(request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let is_html = response
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/html"));
        // Only HTML gets a banner, so only HTML counts an impression.
        if response.status != 200 || !is_html || !visitor.consent.marketing {
            return plan.build();
        }
        let live = campaigns::active();
        let Some(campaign) = live
            .iter()
            .find(|c| campaigns::param(c, "banner").is_some())
        else {
            return plan.build();
        };
        let text = campaigns::param(campaign, "banner").unwrap_or_default();
        let colour = campaigns::param(campaign, "colour").unwrap_or("#b3001b");
        let link = campaigns::param(campaign, "link").unwrap_or("/");
        let html = format!(
            r#"<div class="veneer-banner" data-campaign="{id}" style="background:{colour};color:#fff;padding:.6em;text-align:center"><a href="{link}" style="color:inherit">{text}</a></div>"#,
            id = escape(&campaign.id),
            colour = escape(colour),
            link = escape(link),
            text = escape(text),
        );
        plan.select(&config("selector").unwrap_or_else(|| "body".to_owned()))
            .prepend_html(&html);
        analytics::track(
            "campaign_impression",
            &[("campaign", &campaign.id), ("path", &request.path)],
        );
        plan.build()
    }
}

export_plugin!(Banner);
