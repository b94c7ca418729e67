//! Places one promotion for the highest-priority live campaign: before the page's first promo
//! slot (`slot`, default `.promo-slot`), or, on a page without one, at the end of `fallback`
//! (default `main`). The `promo_shown` event is recorded by the host only when the promotion
//! was really placed, so its count matches what visitors saw (contract 0.2.1's `first-only`,
//! `fallback-append` and `track-applied`).

use veneer_sdk::prelude::*;

struct PromoSlot;

impl Plugin for PromoSlot {
    fn on_response(_request: &Request, response: &Response, _visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let html = response
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/html"));
        if response.status() != 200 || !html {
            return plan.build();
        }
        let Some(campaign) = campaigns::active().into_iter().next() else {
            return plan.build();
        };
        let copy = campaign.param("banner").unwrap_or_else(|| campaign.name());
        let promo = format!(
            r#"<aside class="promo" data-campaign="{}">{}</aside>"#,
            text::escape_html(&campaign.id()),
            text::escape_html(&copy)
        );
        let slot = config("slot").unwrap_or_else(|| ".promo-slot".to_owned());
        let fallback = config("fallback").unwrap_or_else(|| "main".to_owned());
        plan.select(&slot)
            .before_html(&promo)
            .first_only()
            .track_applied("promo_shown", &[("campaign", &campaign.id())])
            .or_append_to(&fallback);
        plan.build()
    }
}

export_plugin!(PromoSlot);
