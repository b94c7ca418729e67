//! A/B test of the home page headline. The host assigns the visitor (GrowthBook-compatible,
//! sticky in the visitor cookie); the plugin shows the variation's text and tracks exposure
//! only for visitors actually in the experiment.

use veneer_sdk::prelude::*;

struct Headline;

impl Plugin for Headline {
    fn on_response(request: &Request, response: &Response, _visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let experiment = config("experiment").unwrap_or_else(|| "headline".to_owned());
        let on_path =
            config("path").is_none_or(|p| request.path().split('?').next() == Some(p.as_str()));
        if response.status() != 200 || !on_path {
            return plan.build();
        }
        let Some(a) = campaigns::assign(&experiment) else {
            log(
                Level::Warn,
                &format!("experiment {experiment} is not defined for this tenant"),
            );
            return plan.build();
        };
        if !a.in_experiment() {
            return plan.build();
        }
        // Variation values are JSON; a string value is the headline text.
        let value = a.value();
        let text = value
            .trim()
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .map(str::to_owned);
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            plan.select(&config("selector").unwrap_or_else(|| "h1".to_owned()))
                .set_inner_text(&text);
        }
        let (experiment, key) = (a.experiment(), a.key());
        plan.set_header("x-veneer-experiment", &format!("{experiment}={key}"));
        analytics::track(
            "experiment_viewed",
            &[
                ("experiment", &experiment),
                ("variation", &key),
                ("path", &request.path()),
            ],
        );
        plan.build()
    }
}

export_plugin!(Headline, deterministic);
