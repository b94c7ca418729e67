//! Shows a banner at the top of every page for the highest-priority live campaign that has a
//! `banner` parameter, and tells the host it showed it (`campaigns::impression`), which
//! records the impression for the campaign's report. Campaign start and end are enforced by the
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
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let is_html = response
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html"));
        // Only HTML gets a banner, so only HTML counts an impression.
        if response.status() != 200 || !is_html || !visitor.consents("marketing") {
            return plan.build();
        }
        let live = campaigns::active();
        let Some((campaign, text)) = live
            .iter()
            .find_map(|c| c.param("banner").map(|text| (c, text)))
        else {
            return plan.build();
        };
        let id = campaign.id();
        let colour = campaign.param("colour").unwrap_or_else(|| "#b3001b".into());
        let link = campaign.param("link").unwrap_or_else(|| "/".into());
        let html = format!(
            r#"<div class="veneer-banner" data-campaign="{id}" style="background:{colour};color:#fff;padding:.6em;text-align:center"><a href="{link}" style="color:inherit">{text}</a></div>"#,
            id = escape(&id),
            colour = escape(&colour),
            link = escape(&link),
            text = escape(&text),
        );
        plan.select(&config("selector").unwrap_or_else(|| "body".to_owned()))
            .prepend_html(&html);
        campaigns::impression(&id);
        plan.build()
    }
}

export_plugin!(Banner);
