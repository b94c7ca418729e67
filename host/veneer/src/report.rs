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
    let t = serving(app, tenant)?;
    let exp = t.rules.experiment(key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("tenant {tenant:?} has no experiment {key:?}"),
        )
    })?;
    known_goal(&t, tenant, goal)?;
    let ledger = ledger(app)?;
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
    let mut report = comparison(&figures, "variations", &names, engine, &weights);
    report.insert("tenant".into(), json!(tenant));
    report.insert("experiment".into(), json!(key));
    report.insert("goal".into(), json!(goal));
    report.insert("engine".into(), json!(engine));
    report.insert("bots_excluded".into(), json!(figures.bots_excluded));
    Ok(Value::Object(report))
}

/// Groups of visitors compared with the first (an experiment's variations, or a campaign's
/// held-out and shown visitors): the figures per group under `label`, the sample-ratio check,
/// GrowthBook's statistics for the conversion rate and the value per user, and the same by
/// day and by segment.
fn comparison(
    figures: &crate::ledger::Figures,
    label: &str,
    names: &[Value],
    engine: EngineKind,
    weights: &[f64],
) -> serde_json::Map<String, Value> {
    let groups = padded(&figures.variations, names.len());
    let srm_p = veneer_stats::srm(
        &groups.iter().map(|v| v.users as f64).collect::<Vec<_>>(),
        weights,
    );
    let v = json!({
        label: rows(&groups, names),
        "srm_p": srm_p,
        "srm_warning": srm_p < SRM_THRESHOLD,
        "conversion_rate": analysis(&groups, Metric::Proportion, engine, weights),
        "value_per_user": analysis(&groups, Metric::Mean, engine, weights),
        "by_day": breakdown(&figures.by_day, "day", names, engine, weights),
        "by_segment": breakdown(&figures.by_segment, "segment", names, engine, weights),
    });
    match v {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Per group (day, segment): the figures and the conversion-rate statistics.
fn breakdown(
    groups: &[(String, Vec<VariationFigures>)],
    label: &str,
    names: &[Value],
    engine: EngineKind,
    weights: &[f64],
) -> Vec<Value> {
    groups
        .iter()
        .map(|(k, v)| {
            let v = padded(v, names.len());
            json!({
                label: k,
                "variations": rows(&v, names),
                "conversion_rate": analysis(&v, Metric::Proportion, engine, weights),
            })
        })
        .collect()
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
    // Both engines' verdicts side by side (p-value and chance to win); the interval and the
    // estimate are the chosen engine's.
    let other = Request {
        engine: match engine {
            EngineKind::Bayesian => EngineKind::Frequentist,
            EngineKind::Frequentist => EngineKind::Bayesian,
        },
        ..request.clone()
    };
    match (
        veneer_stats::analyze(&request),
        veneer_stats::analyze(&other),
    ) {
        (Ok(chosen), Ok(other)) => chosen
            .variations
            .into_iter()
            .zip(other.variations)
            .map(|(mut v, o)| {
                v.p_value = v.p_value.or(o.p_value);
                v.chance_to_win = v.chance_to_win.or(o.chance_to_win);
                v.risk = v.risk.or(o.risk);
                serde_json::to_value(v).unwrap_or(Value::Null)
            })
            .collect(),
        (Err(e), _) | (_, Err(e)) => json!({ "error": e.0 }),
    }
}

/// How many visitors each of the tenant's segments holds, counted among the visitors exposed
/// to an experiment or a campaign holdout (the ledger records segments with exposures only).
pub fn segments(app: &App, tenant: &str) -> Result<Value, ApiError> {
    let t = serving(app, tenant)?;
    let ledger = ledger(app)?;
    ledger.flush();
    let names = t.rules.segment_names().to_vec();
    let (total, sizes) = ledger.segment_sizes(tenant, &names).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the ledger: {e:#}"),
        )
    })?;
    let per_segment: Vec<Value> = names
        .iter()
        .zip(sizes)
        .map(|(name, visitors)| {
            json!({
                "segment": name,
                "visitors": visitors,
                "share": if total == 0 { 0.0 } else { visitors as f64 / total as f64 },
            })
        })
        .collect();
    Ok(json!({
        "tenant": tenant,
        "exposed_visitors": total,
        "segments": per_segment,
    }))
}

/// The report of campaign `id` of `tenant` for goal `goal`: impressions, reach, conversions
/// within the campaign's attribution window after an impression, their value, and the return
/// on the campaign's cost, by day and by channel.
pub fn campaign(app: &App, tenant: &str, id: &str, goal: &str) -> Result<Value, ApiError> {
    let t = serving(app, tenant)?;
    let c = t
        .rules
        .campaigns()
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("tenant {tenant:?} has no campaign {id:?}"),
            )
        })?;
    let g = known_goal(&t, tenant, goal)?;
    let ledger = ledger(app)?;
    ledger.flush();
    let window = c.attribution_window_days();
    let f = ledger
        .campaign_figures(tenant, id, goal, window)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the ledger: {e:#}"),
            )
        })?;
    let per_reach = |x: f64| {
        if f.reach == 0 {
            0.0
        } else {
            x / f.reach as f64
        }
    };
    // With a holdout, the eligible visitors in each group (recorded when the campaign was
    // live for them, shown or not) against the goal: the campaign's uplift over not running.
    let holdout = match c.holdout {
        Some(share) => {
            let g = ledger
                .figures(tenant, &c.holdout_key(), goal)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reading the ledger: {e:#}"),
                    )
                })?;
            let names = [json!("held out"), json!("shown")];
            let mut holdout = comparison(
                &g,
                "groups",
                &names,
                EngineKind::Bayesian,
                &[share, 1.0 - share],
            );
            holdout.insert("share".into(), json!(share));
            Value::Object(holdout)
        }
        None => Value::Null,
    };
    Ok(json!({
        "tenant": tenant,
        "campaign": id,
        "name": c.name,
        "start": c.start.to_string(),
        "end": c.end.to_string(),
        "channels": c.channels,
        "goal": goal,
        "currency": g.currency,
        "attribution_days": window,
        "impressions": f.impressions,
        "reach": f.reach,
        "conversions": f.conversions,
        "conversion_rate": per_reach(f.conversions as f64),
        "value": f.value,
        "value_per_user": per_reach(f.value),
        "cost": c.cost,
        "roi": c.cost.filter(|cost| *cost > 0.0).map(|cost| (f.value - cost) / cost),
        "by_day": f.by_day,
        "opens": f.opens,
        "clicks": f.clicks,
        "by_channel": f.by_channel,
        "bots_excluded": f.bots_excluded,
        "holdout": holdout,
    }))
}

fn known_goal<'t>(
    t: &'t crate::app::Tenant,
    tenant: &str,
    goal: &str,
) -> Result<&'t crate::config::Goal, ApiError> {
    t.config
        .goals
        .iter()
        .find(|g| g.name == goal)
        .ok_or_else(|| {
            let names: Vec<&str> = t.config.goals.iter().map(|g| g.name.as_str()).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "tenant {tenant:?} has no goal {goal:?} (its goals: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            )
        })
}

/// The tenant named `tenant`, as it serves now.
fn serving(app: &App, tenant: &str) -> Result<std::sync::Arc<crate::app::Tenant>, ApiError> {
    app.tenant_named(tenant).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no tenant {tenant:?} is serving"),
        )
    })
}

fn ledger(app: &App) -> Result<&crate::ledger::Ledger, ApiError> {
    app.ledger.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "reports need a ledger: set [server] data_dir",
        )
    })
}
