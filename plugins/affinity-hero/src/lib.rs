//! Swaps the hero block (`selector`, default `#hero`) for the category the visitor is most
//! interested in: the content fragment `hero-affinity-CATEGORY`, once the category's score
//! (page views, decaying with the tenant's half-life) reaches `min_score` (default 1). Apps
//! get `/hero/affinity` and `/hero/html` in JSON. Other visitors keep the page's hero (or what
//! an earlier plugin put there).

use veneer_sdk::prelude::*;

struct AffinityHero;

impl Plugin for AffinityHero {
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let content_type = response.header("content-type").unwrap_or_default();
        let is_html = content_type.starts_with("text/html");
        let is_json = content_type.starts_with("application/json");
        if response.status() != 200 || !(is_html || is_json) || !visitor.consents("personalization")
        {
            return plan.build();
        }
        let min_score = config("min_score")
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0);
        let Some((category, html)) = profile::top_categories(3)
            .into_iter()
            .filter(|(_, score)| *score >= min_score)
            .find_map(|(c, _)| content::fragment(&format!("hero-affinity-{c}")).map(|h| (c, h)))
        else {
            return plan.build();
        };
        if is_json {
            plan.json_set("/hero/affinity", &text::json_string(&category));
            plan.json_set("/hero/html", &text::json_string(&html));
            return plan.build();
        }
        plan.select(&config("selector").unwrap_or_else(|| "#hero".to_owned()))
            .set_inner_html(&html)
            .set_attribute("data-affinity", &category);
        plan.build()
    }
}

export_plugin!(AffinityHero);

#[cfg(test)]
mod tests {
    use super::*;
    use veneer_sdk::testing::{FakeHost, Profile};

    fn host(score: f64) -> FakeHost {
        FakeHost::new()
            .with_fragment("hero-affinity-boots", "<h2>Boots for every trail</h2>")
            .with_profile(Profile {
                affinity: vec![("boots".into(), score), ("tents".into(), 0.2)],
                ..Profile::default()
            })
    }

    #[test]
    fn the_strongest_category_gets_its_hero() {
        let plan = host(2.5).on_response::<AffinityHero>(
            &Request::get("/"),
            &Response::html(),
            &Visitor::new("v"),
        );
        assert_eq!(plan.ops_on("#hero").len(), 2);
        let plan = host(0.5).on_response::<AffinityHero>(
            &Request::get("/"),
            &Response::html(),
            &Visitor::new("v"),
        );
        assert!(plan.html.is_empty(), "below min_score");
    }
}
