//! Element callbacks: decisions that need the element itself.
//!
//! - Links inside products marked `data-sale="true"` get the live campaign's id appended to
//!   their `href` (for attribution) and an `on-sale` class; other links are left alone.
//! - Their prices (`.price`, delivered as whole text nodes) show the campaign's discount:
//!   `NOK 1299` becomes `<s>NOK 1299</s> NOK 1039` during a 20 % campaign.
//!
//! The subscriptions are narrow on purpose: each callback costs a few microseconds.
//! Params `links` and `prices` replace the two selectors (`prices = ""` subscribes to no text).

use std::cell::RefCell;

use veneer_sdk::prelude::*;

struct ProductLinks;

/// What the element callbacks need from the live campaign.
struct Sale {
    id: String,
    discount: Option<f64>,
}

thread_local! {
    // One instance serves one request, so this is per-request state shared between hooks.
    static SALE: RefCell<Option<Sale>> = const { RefCell::new(None) };
}

const LINKS: u32 = 0;
const PRICES: u32 = 1;

impl Plugin for ProductLinks {
    fn on_response(_request: &Request, response: &Response, _visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        if response.status() != 200 {
            return plan.build();
        }
        let Some(campaign) = campaigns::active().into_iter().next() else {
            return plan.build();
        };
        let sale = Sale {
            id: campaign.id(),
            discount: campaign.param("discount").and_then(|d| d.parse().ok()),
        };
        SALE.with(|s| *s.borrow_mut() = Some(sale));
        // `links` widens or narrows the links tagged (the benchmark tags every `a[href]`).
        let links = plan.subscribe(
            &config("links").unwrap_or_else(|| r#"[data-sale="true"] a[href]"#.to_owned()),
        );
        // `prices` likewise; empty subscribes to none. An ancestor's attribute in the
        // selector makes the rewriter read every tag's attributes, so the benchmark, which
        // times the link callbacks, leaves it out.
        let prices = config("prices").unwrap_or_else(|| r#"[data-sale="true"] .price"#.to_owned());
        debug_assert_eq!(links, LINKS);
        if !prices.trim().is_empty() {
            let prices = plan.subscribe_text(&prices);
            debug_assert_eq!(prices, PRICES);
        }
        plan.build()
    }

    fn on_element(subscription: u32, element: &Element) {
        if subscription != LINKS {
            return;
        }
        let Some(id) = SALE.with(|s| s.borrow().as_ref().map(|s| s.id.clone())) else {
            return;
        };
        let href = element.attribute("href").unwrap_or_else(|| "/".into());
        let sep = if href.contains('?') { '&' } else { '?' };
        element.set_attribute("href", &format!("{href}{sep}campaign={id}"));
        element.add_class("on-sale");
    }

    fn on_text(subscription: u32, text: &str) -> Option<String> {
        if subscription != PRICES {
            return None;
        }
        let discount = SALE.with(|s| s.borrow().as_ref().and_then(|s| s.discount))?;
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
