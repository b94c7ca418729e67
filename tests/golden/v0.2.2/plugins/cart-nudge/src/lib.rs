//! Reminds a visitor of the cart they left: a banner on web pages and `/nudge` in the app's
//! JSON, for the same visitor on every channel. The nudge is a campaign (param `campaign`,
//! default `cart-nudge`) so marketers schedule it, target it (typically the segment
//! `{"cart.abandoned": true}`) and cap it per day (`frequencyCap`) in the rules, and its report
//! counts what was shown; the plugin adds the visitor's own cart to the copy. A purchase
//! empties the cart, which ends the nudge at once.
//!
//! Campaign params: `nudge` (the copy; `{items}` and `{value}` are replaced), `link` (default
//! `/cart`), `colour`.

use veneer_sdk::prelude::*;

struct CartNudge;

/// The copy with the visitor's cart filled in.
fn copy(template: &str, items: u32, value: f64) -> String {
    template
        .replace("{items}", &items.to_string())
        .replace("{value}", &format!("{value:.2}"))
}

impl Plugin for CartNudge {
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let content_type = response.header("content-type").unwrap_or_default();
        let is_html = content_type.starts_with("text/html");
        let is_json = content_type.starts_with("application/json");
        if response.status() != 200 || !(is_html || is_json) || !visitor.consents("marketing") {
            return plan.build();
        }
        let cart = profile::cart();
        if !cart.abandoned || cart.items == 0 {
            return plan.build();
        }
        let id = config("campaign").unwrap_or_else(|| "cart-nudge".to_owned());
        // Live, targeted and under its cap for this visitor today, or no nudge.
        let Some(campaign) = campaigns::active().into_iter().find(|c| c.id() == id) else {
            return plan.build();
        };
        let template = campaign
            .param("nudge")
            .unwrap_or_else(|| "You left {items} item(s) in your cart".to_owned());
        let message = copy(&template, cart.items, cart.value);
        let link = campaign.param("link").unwrap_or_else(|| "/cart".to_owned());
        if is_json {
            plan.json_set(
                "/nudge",
                &format!(
                    "{{\"campaign\":{},\"message\":{},\"items\":{},\"value\":{},\"link\":{}}}",
                    text::json_string(&id),
                    text::json_string(&message),
                    cart.items,
                    cart.value,
                    text::json_string(&link)
                ),
            );
        } else {
            let colour = campaign
                .param("colour")
                .unwrap_or_else(|| "#1d4ed8".to_owned());
            let html = format!(
                r#"<div class="veneer-cart-nudge" data-campaign="{id}" style="background:{colour};color:#fff;padding:.6em;text-align:center">{message} <a href="{link}" style="color:inherit;font-weight:bold">Complete your order</a></div>"#,
                id = text::escape_html(&id),
                colour = text::escape_html(&colour),
                message = text::escape_html(&message),
                link = text::escape_html(&link),
            );
            plan.select(&config("selector").unwrap_or_else(|| "body".to_owned()))
                .prepend_html(&html);
        }
        campaigns::impression(&id);
        plan.build()
    }
}

export_plugin!(CartNudge);

#[cfg(test)]
mod tests {
    use super::*;
    use veneer_sdk::testing::{FakeHost, Profile};

    fn host(abandoned: bool) -> FakeHost {
        FakeHost::new()
            .with_campaign(
                campaigns::Campaign::new("cart-nudge")
                    .with_param("nudge", "{items} items worth {value} wait for you"),
            )
            .with_profile(Profile {
                cart: profile::Cart {
                    items: 2,
                    value: 59.9,
                    skus: vec!["b1".into()],
                    abandoned,
                },
                ..Profile::default()
            })
    }

    #[test]
    fn an_abandoned_cart_is_nudged_on_the_page_and_in_json() {
        let visitor = Visitor::new("v");
        let mut h = host(true);
        let plan = h.on_response::<CartNudge>(&Request::get("/"), &Response::html(), &visitor);
        let ops = plan.ops_on("body");
        assert!(
            matches!(ops.as_slice(), [HtmlOp::PrependHtml(html)] if html.contains("2 items worth 59.90 wait for you")),
            "{ops:?}"
        );
        assert_eq!(h.impressions(), ["cart-nudge"]);
        let plan = h.on_response::<CartNudge>(&Request::get("/api"), &Response::json(), &visitor);
        assert_eq!(plan.json.len(), 1);
    }

    #[test]
    fn a_cart_still_in_use_is_left_alone() {
        let mut h = host(false);
        let plan =
            h.on_response::<CartNudge>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
        assert!(plan.html.is_empty());
        assert!(h.impressions().is_empty());
    }
}
