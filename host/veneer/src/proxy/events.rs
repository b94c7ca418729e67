//! The marketer's loop on the request path: the beacon (`POST /_veneer/event`) that pages and
//! apps send events and conversions to, and goals reached by visiting a path. Both record for
//! the visitor of the signed cookie, never for anyone a body names, and only with analytics
//! consent.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::Body;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::identify::VisitorCtx;
use crate::app::Tenant;
use crate::plugin::HostServices as _;

/// Where pages and apps post events, on every tenant's own host.
pub(super) const BEACON_PATH: &str = "/_veneer/event";

/// The largest event body accepted.
pub(super) const MAX_EVENT_BYTES: usize = 4096;

/// The largest value (revenue) one event may carry; goals may set a lower `max_value`.
const MAX_VALUE: f64 = 1e9;

/// A path goal reached again within this time (a reload) is the same conversion.
const PATH_GOAL_ONCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Events one visitor may send per second (with a burst of twice as many).
const EVENTS_PER_SECOND: f64 = 10.0;

/// The beacon's body, exactly as documented.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    event: String,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Answers a beacon request: 204 once the event is recorded (or left out for want of consent).
pub(super) async fn beacon(
    ctx: &mut RequestCtx,
    tenant: &Arc<Tenant>,
    visitor: &VisitorCtx,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Body>, ProxyError> {
    if parts.method != Method::POST {
        return Err(ProxyError::MethodNotAllowed("POST".into()));
    }
    same_origin(parts, &ctx.host)?;
    let services = &visitor.services;
    ctx.app
        .event_rates
        .take_key(
            (tenant.name.clone(), services.visitor_id.clone()),
            EVENTS_PER_SECOND,
            EVENTS_PER_SECOND * 2.0,
        )
        .map_err(ProxyError::TooManyRequests)?;
    let timeout = std::time::Duration::from_millis(tenant.config.limits.body_read_timeout_ms);
    let bytes =
        match tokio::time::timeout(timeout, Limited::new(body, MAX_EVENT_BYTES).collect()).await {
            Err(_) => return Err(ProxyError::BodyTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::BodyTooLarge);
            }
            Ok(Err(e)) => return Err(ProxyError::ClientBody(e.to_string())),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
    let posted: Posted = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::BadEvent(format!("expected {{\"event\": NAME, \"value\": NUMBER?, \"currency\": CODE?, \"properties\": {{...}}?}}: {e}")))?;
    check(&posted)?;
    ctx.outcome = "event";
    if services.consent.analytics {
        let mut properties: Vec<(String, String)> = posted
            .properties
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        if let Some(v) = posted.value {
            properties.push(("value".into(), v.to_string()));
        }
        if let Some(c) = &posted.currency {
            properties.push(("currency".into(), c.clone()));
        }
        services.track("beacon", &posted.event, properties);
        let mut stored = true;
        for goal in tenant
            .config
            .goals
            .iter()
            .filter(|g| g.event.as_deref() == Some(posted.event.as_str()))
        {
            // Money in another currency than the goal's is not added to its sums.
            if let (Some(theirs), Some(ours)) = (&posted.currency, &goal.currency)
                && theirs != ours
            {
                ctx.app.metrics.inc(
                    "veneer_conversions_refused_total",
                    &[("tenant", &tenant.name), ("reason", "currency")],
                );
                continue;
            }
            let value = posted.value.or(goal.value).unwrap_or(0.0);
            if goal.max_value.is_some_and(|max| value.abs() > max) {
                ctx.app.metrics.inc(
                    "veneer_conversions_refused_total",
                    &[("tenant", &tenant.name), ("reason", "value_over_max")],
                );
                continue;
            }
            stored &= services.converted(
                goal,
                value,
                posted.currency.clone().or_else(|| goal.currency.clone()),
                None,
            );
        }
        if !stored {
            // Better a retry than a conversion silently lost.
            return Err(ProxyError::TenantBusy);
        }
    } else {
        ctx.app.metrics.inc(
            "veneer_analytics_events_total",
            &[("outcome", "dropped_no_consent")],
        );
    }
    let mut response = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A browser names the page's origin on a cross-site POST; only the tenant's own pages (and
/// apps and servers, which send no `Origin`) may post.
fn same_origin(parts: &Parts, host: &str) -> Result<(), ProxyError> {
    if let Some(site) = parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(ProxyError::CrossOrigin);
    }
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    if origin_host.is_some_and(|h| h.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(ProxyError::CrossOrigin)
    }
}

fn check(p: &Posted) -> Result<(), ProxyError> {
    let bad = |m: &str| Err(ProxyError::BadEvent(m.to_owned()));
    if p.event.is_empty()
        || p.event.len() > 64
        || !p
            .event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return bad("event: 1 to 64 letters, digits, '-', '_', '.' or ':'");
    }
    if p.value
        .is_some_and(|v| !v.is_finite() || v.abs() > MAX_VALUE)
    {
        return bad("value: a number between -1e9 and 1e9");
    }
    if let Some(c) = &p.currency
        && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return bad("currency: a 3-letter ISO 4217 code such as EUR");
    }
    if let Some(props) = &p.properties {
        if props.len() > 32 {
            return bad("properties: at most 32");
        }
        if props.values().any(|v| v.is_object() || v.is_array()) {
            return bad("properties: strings, numbers, booleans or null only");
        }
    }
    Ok(())
}

/// After a successful GET: a `page_view` event for an HTML page, and a conversion for every
/// path goal the path reaches.
pub(super) fn after_response(
    tenant: &Tenant,
    visitor: &VisitorCtx,
    method: &Method,
    path: &str,
    response: &Response<Body>,
) {
    if *method != Method::GET || !response.status().is_success() {
        return;
    }
    let services = &visitor.services;
    if !services.consent.analytics {
        return;
    }
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/html"));
    if html {
        services.track("veneer", "page_view", Vec::new());
    }
    for goal in tenant.config.goals.iter().filter(|g| g.matches_path(path)) {
        services.converted(
            goal,
            goal.value.unwrap_or(0.0),
            goal.currency.clone(),
            Some(PATH_GOAL_ONCE_WITHIN),
        );
    }
}
