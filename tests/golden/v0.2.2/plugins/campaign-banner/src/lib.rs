//! Shows a banner at the top of every page for the highest-priority live campaign that has a
//! `banner` parameter (and hands it to apps and kiosks as `/campaign` in JSON responses), and tells the host it showed it (`campaigns::impression`), which
//! records the impression for the campaign's report. Campaign start and end are enforced by the
//! host clock, so the banner appears and disappears everywhere at the configured instants.

use veneer_sdk::prelude::*;

struct Banner;

impl Plugin for Banner {
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let content_type = response.header("content-type").unwrap_or_default();
        let is_html = content_type.starts_with("text/html");
        let is_json = content_type.starts_with("application/json");
        // HTML gets the banner in the page; an app or kiosk fetching JSON gets the campaign
        // under `/campaign` to show itself. Either way the host records one impression.
        if response.status() != 200 || !(is_html || is_json) || !visitor.consents("marketing") {
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
        if is_json {
            plan.json_set(
                "/campaign",
                &format!(
                    "{{\"id\":{},\"banner\":{},\"link\":{}}}",
                    text::json_string(&id),
                    text::json_string(&text),
                    text::json_string(&link)
                ),
            );
        } else {
            let html = format!(
                r#"<div class="veneer-banner" data-campaign="{id}" style="background:{colour};color:#fff;padding:.6em;text-align:center"><a href="{link}" style="color:inherit">{text}</a></div>"#,
                id = text::escape_html(&id),
                colour = text::escape_html(&colour),
                link = text::escape_html(&link),
                text = text::escape_html(&text),
            );
            plan.select(&config("selector").unwrap_or_else(|| "body".to_owned()))
                .prepend_html(&html);
        }
        campaigns::impression(&id);
        plan.build()
    }
}

export_plugin!(Banner);
