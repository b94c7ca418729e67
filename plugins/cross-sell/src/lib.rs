//! After a purchase, shows what goes with it: the content fragment `cross-sell-CATEGORY` for
//! the category bought most recently (or `cross-sell` when there is none for it) in the page's
//! recommendations slot (`selector`, default `#recommendations`; on a page without one, at the
//! end of `fallback`, default `main`), and as `/crossSell` in the app's JSON. Only within
//! `within_days` (default 30) of the last purchase. The `cross_sell_shown` event is recorded
//! when it was really placed.

use veneer_sdk::prelude::*;

struct CrossSell;

const DAY_MS: i64 = 86_400_000;

impl Plugin for CrossSell {
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let content_type = response.header("content-type").unwrap_or_default();
        let is_html = content_type.starts_with("text/html");
        let is_json = content_type.starts_with("application/json");
        if response.status() != 200 || !(is_html || is_json) || !visitor.consents("personalization")
        {
            return plan.build();
        }
        let bought = profile::purchases();
        let within = config("within_days")
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(30);
        let recent = bought
            .last_ms
            .is_some_and(|at| now_ms().saturating_sub(at) <= within.saturating_mul(DAY_MS));
        if bought.count == 0 || !recent {
            return plan.build();
        }
        let Some((category, html)) = bought
            .categories
            .iter()
            .find_map(|c| content::fragment(&format!("cross-sell-{c}")).map(|h| (c.clone(), h)))
            .or_else(|| content::fragment("cross-sell").map(|h| (String::new(), h)))
        else {
            return plan.build();
        };
        if is_json {
            plan.json_set(
                "/crossSell",
                &format!(
                    "{{\"category\":{},\"html\":{}}}",
                    text::json_string(&category),
                    text::json_string(&html)
                ),
            );
            return plan.build();
        }
        let selector = config("selector").unwrap_or_else(|| "#recommendations".to_owned());
        let fallback = config("fallback").unwrap_or_else(|| "main".to_owned());
        let block = format!(
            r#"<section class="veneer-cross-sell" data-category="{}">{html}</section>"#,
            text::escape_html(&category)
        );
        plan.select(&selector)
            .set_inner_html(&block)
            .first_only()
            .track_applied("cross_sell_shown", &[("category", &category)])
            .or_append_to(&fallback);
        plan.build()
    }
}

export_plugin!(CrossSell);

#[cfg(test)]
mod tests {
    use super::*;
    use veneer_sdk::testing::{FakeHost, Profile};

    #[test]
    fn a_recent_purchase_brings_its_category_s_cross_sell() {
        let mut h = FakeHost::new()
            .at_ms(10 * DAY_MS)
            .with_fragment("cross-sell-boots", "<p>Socks for your boots</p>")
            .with_profile(Profile {
                purchases: profile::Purchases {
                    count: 1,
                    last_ms: Some(9 * DAY_MS),
                    categories: vec!["boots".into()],
                },
                ..Profile::default()
            });
        let plan =
            h.on_response::<CrossSell>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
        let ops = plan.ops_on("#recommendations");
        assert!(
            matches!(ops.as_slice(), [HtmlOp::SetInnerHtml(html)] if html.contains("Socks for your boots")),
            "{ops:?}"
        );
        // Long after the purchase, nothing.
        let mut h = h.at_ms(60 * DAY_MS);
        let plan =
            h.on_response::<CrossSell>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
        assert!(plan.html.is_empty());
    }
}
