//! Element callbacks: decisions that need the element itself.
//!
//! - Links inside products marked `data-sale="true"` get the live campaign's id appended to
//!   their `href` (for attribution) and an `on-sale` class; other links are left alone.
//! - Their prices (`.price`, delivered as whole text nodes) show the campaign's discount:
//!   `NOK 1299` becomes `<s>NOK 1299</s> NOK 1039` during a 20 % campaign.
//!
//! The subscriptions are narrow on purpose: each callback costs a few microseconds.

use std::cell::RefCell;

use veneer_sdk::prelude::*;
use veneer_sdk::{attribute, campaigns::Campaign};

struct ProductLinks;

thread_local! {
    // One instance serves one request, so this is per-request state shared between hooks.
    static CAMPAIGN: RefCell<Option<Campaign>> = const { RefCell::new(None) };
}

const LINKS: u32 = 0;
const PRICES: u32 = 1;

impl Plugin for ProductLinks {
    fn on_response(_request: &Request, response: &Response, _visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        if response.status != 200 {
            return plan.build();
        }
        let Some(campaign) = campaigns::active().into_iter().next() else {
            return plan.build();
        };
        CAMPAIGN.with(|c| *c.borrow_mut() = Some(campaign));
        let links = plan.subscribe(r#"[data-sale="true"] a[href]"#);
        let prices = plan.subscribe_text(r#"[data-sale="true"] .price"#);
        debug_assert_eq!((links, prices), (LINKS, PRICES));
        plan.build()
    }

    fn on_element(subscription: u32, element: &ElementInfo) -> Vec<HtmlOp> {
        if subscription != LINKS {
            return Vec::new();
        }
        let Some(id) = CAMPAIGN.with(|c| c.borrow().as_ref().map(|c| c.id.clone())) else {
            return Vec::new();
        };
        let href = attribute(element, "href").unwrap_or("/");
        let sep = if href.contains('?') { '&' } else { '?' };
        vec![
            HtmlOp::SetAttribute(("href".into(), format!("{href}{sep}campaign={id}"))),
            HtmlOp::AddClass("on-sale".into()),
        ]
    }

    fn on_text(subscription: u32, text: &str) -> Option<String> {
        if subscription != PRICES {
            return None;
        }
        let discount: f64 = CAMPAIGN.with(|c| {
            c.borrow().as_ref().and_then(|c| {
                veneer_sdk::campaigns::param(c, "discount").and_then(|d| d.parse().ok())
            })
        })?;
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        let price: f64 = digits.parse().ok()?;
        let currency: String = text
            .trim()
            .chars()
            .take_while(|c| c.is_alphabetic())
            .collect();
        let sale = (price * (100.0 - discount) / 100.0).round();
        let currency = if currency.is_empty() {
            String::new()
        } else {
            format!("{currency} ")
        };
        Some(format!("<s>{}</s> {currency}{sale}", text.trim()))
    }
}

export_plugin!(ProductLinks);
