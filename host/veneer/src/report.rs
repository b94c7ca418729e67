//! Experiment reports: the ledger's figures per variation (overall, by day, by segment) with
//! GrowthBook's statistics (veneer-stats) for the conversion rate and the value per user, and
//! a sample-ratio-mismatch warning. Served by the admin API and printed by `veneer report`.

use serde_json::{Value, json};
use veneer_stats::{Arm, EngineKind, Metric, Request};

use crate::app::App;
use crate::control::ApiError;
use crate::ledger::VariationFigures;
use http::StatusCode;

/// Below this sample-ratio-mismatch p-value the split is reported as off (GrowthBook's
/// default threshold).
pub const SRM_THRESHOLD: f64 = 0.001;

/// The report of experiment `key` of `tenant` for goal `goal`.
pub fn experiment(
    app: &App,
    tenant: &str,
    key: &str,
    goal: &str,
    engine: EngineKind,
) -> Result<Value, ApiError> {
    let t = app.tenant_named(tenant).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no tenant {tenant:?} is serving"),
        )
    })?;
    let exp = t.rules.experiment(key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("tenant {tenant:?} has no experiment {key:?}"),
        )
    })?;
    if !t.config.goals.iter().any(|g| g.name == goal) {
        let names: Vec<&str> = t.config.goals.iter().map(|g| g.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "tenant {tenant:?} has no goal {goal:?} (its goals: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        ));
    }
    let ledger = app.ledger.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "reports need a ledger: set [server] data_dir",
        )
    })?;
    // Everything accepted so far is counted.
    ledger.flush();
    let figures = ledger.figures(tenant, key, goal).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the ledger: {e:#}"),
        )
    })?;
    let spec = &exp.spec;
    let arms = spec.variations.len().max(2);
    let weights = spec
        .weights
        .clone()
        .filter(|w| w.len() == arms)
        .unwrap_or_else(|| vec![1.0 / arms as f64; arms]);
    let names: Vec<Value> = (0..arms)
        .map(|i| {
            spec.meta
                .as_ref()
                .and_then(|m| m.get(i))
                .and_then(|m| m.name.clone().or_else(|| m.key.clone()))
                .map_or_else(|| json!(i.to_string()), Value::String)
        })
        .collect();
    let overall = padded(&figures.variations, arms);
    let srm_p = veneer_stats::srm(
        &overall.iter().map(|v| v.users as f64).collect::<Vec<_>>(),
        &weights,
    );
    let breakdown = |groups: &[(String, Vec<VariationFigures>)], label: &str| -> Vec<Value> {
        groups
            .iter()
            .map(|(k, v)| {
                let v = padded(v, arms);
                json!({
                    label: k,
                    "variations": rows(&v, &names),
                    "conversion_rate": analysis(&v, Metric::Proportion, engine, &weights),
                })
            })
            .collect()
    };
    Ok(json!({
        "tenant": tenant,
        "experiment": key,
        "goal": goal,
        "engine": engine,
        "variations": rows(&overall, &names),
        "srm_p": srm_p,
        "srm_warning": srm_p < SRM_THRESHOLD,
        "conversion_rate": analysis(&overall, Metric::Proportion, engine, &weights),
        "value_per_user": analysis(&overall, Metric::Mean, engine, &weights),
        "by_day": breakdown(&figures.by_day, "day"),
        "by_segment": breakdown(&figures.by_segment, "segment"),
        "bots_excluded": figures.bots_excluded,
    }))
}

fn padded(v: &[VariationFigures], arms: usize) -> Vec<VariationFigures> {
    (0..arms)
        .map(|i| {
            v.get(i).cloned().unwrap_or(VariationFigures {
                variation: u32::try_from(i).unwrap_or(u32::MAX),
                ..VariationFigures::default()
            })
        })
        .collect()
}

fn rows(v: &[VariationFigures], names: &[Value]) -> Vec<Value> {
    v.iter()
        .zip(names)
        .map(|(f, name)| {
            let per_user = |x: f64| {
                if f.users == 0 {
                    0.0
                } else {
                    x / f.users as f64
                }
            };
            json!({
                "variation": f.variation,
                "name": name,
                "users": f.users,
                "conversions": f.conversions,
                "rate": per_user(f.conversions as f64),
                "value": f.value_sum,
                "value_per_user": per_user(f.value_sum),
            })
        })
        .collect()
}

/// GrowthBook's statistics for one metric, each variation against the control.
fn analysis(v: &[VariationFigures], metric: Metric, engine: EngineKind, weights: &[f64]) -> Value {
    let request = Request {
        metric,
        arms: v
            .iter()
            .map(|f| match metric {
                Metric::Proportion => Arm {
                    users: f.users as f64,
                    sum: f.conversions as f64,
                    sum_squares: f.conversions as f64,
                },
                Metric::Mean => Arm {
                    users: f.users as f64,
                    sum: f.value_sum,
                    sum_squares: f.value_sum_squares,
                },
            })
            .collect(),
        weights: Some(weights.to_vec()),
        engine,
        difference: veneer_stats::Difference::Relative,
        sequential: false,
        // GrowthBook's default for a metric: the flat prior.
        prior: None,
    };
    match veneer_stats::analyze(&request) {
        Ok(a) => serde_json::to_value(a.variations).unwrap_or(Value::Null),
        Err(e) => json!({ "error": e.0 }),
    }
}
