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
use super::identify;
use super::identify::VisitorCtx;
use crate::app::Tenant;
use crate::plugin::HostServices as _;
use crate::profile::{EVENT_HEADER, IDENTIFY_HEADER, Item};

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

/// The beacon's body, exactly as documented (also the origin's `veneer-event` header).
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
    /// Cart lines, for `cart_add`, `cart_remove` and `purchase`.
    #[serde(default)]
    items: Option<Vec<Item>>,
}

/// Lines one cart event may carry.
const MAX_ITEMS: usize = 50;

/// What the origin said about the visitor in its response headers (taken out: the client
/// never sees them).
#[derive(Default)]
pub(super) struct OriginSignals {
    identify: Option<String>,
    events: Vec<String>,
}

/// Takes Veneer's own headers out of an origin response.
pub(super) fn take_origin_signals(headers: &mut http::HeaderMap) -> OriginSignals {
    if !headers.contains_key(IDENTIFY_HEADER) && !headers.contains_key(EVENT_HEADER) {
        return OriginSignals::default();
    }
    let identify = headers
        .get(IDENTIFY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    let events = headers
        .get_all(EVENT_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .take(8)
        .collect();
    headers.remove(IDENTIFY_HEADER);
    headers.remove(EVENT_HEADER);
    OriginSignals { identify, events }
}

/// Acts on what the origin said: links (or unlinks) the customer, and records its events as
/// if the page had posted them. Needs personalization consent to link; a preview changes
/// nothing.
pub(super) async fn origin_signals(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &mut VisitorCtx,
    signals: OriginSignals,
) {
    if ctx.preview.is_some() {
        return;
    }
    // A logout is honoured whatever the consent; a login needs personalization consent.
    if let Some(id) = signals.identify
        && tenant.config.profile.enabled
        && (id == "-" || v.services.consent.personalization)
    {
        let customer = if id == "-" {
            None
        } else if crate::profile::valid_customer_id(&id) {
            Some(id)
        } else {
            ctx.app.metrics.inc(
                "veneer_identify_refused_total",
                &[("tenant", &tenant.name), ("reason", "bad_id")],
            );
            tracing::warn!(tenant = %tenant.name, request_id = %ctx.id, "the origin's veneer-identify is not a usable customer id");
            return;
        };
        let before = v.state.customer.clone();
        identify::link(
            &ctx.app,
            tenant,
            &mut v.state,
            customer,
            ctx.now.as_second(),
        )
        .await;
        // What this response records (its events, the page view) is the new subject's.
        if v.state.customer != before && v.profile.is_some() {
            v.profile = Some(identify::profile_of(&ctx.app, tenant, &v.state, true).await);
        }
    }
    for text in signals.events {
        let posted = serde_json::from_str::<Posted>(&text)
            .map_err(|e| e.to_string())
            .and_then(|p| check(&p).map(|()| p).map_err(|e| e.detail().to_owned()));
        match posted {
            Ok(p) => {
                if v.services.consent.analytics {
                    v.services.track("origin", &p.event, properties(&p));
                }
                cart(ctx, tenant, v, &p);
            }
            Err(error) => {
                ctx.app.metrics.inc(
                    "veneer_origin_events_refused_total",
                    &[("tenant", &tenant.name)],
                );
                tracing::warn!(tenant = %tenant.name, request_id = %ctx.id, error, "the origin's veneer-event was refused");
            }
        }
    }
}

/// A cart event changes the visitor's (or customer's) cart: `cart_add`, `cart_remove`, and
/// `purchase` (of the items named, or of the cart), which empties it.
fn cart(ctx: &RequestCtx, tenant: &Tenant, v: &VisitorCtx, p: &Posted) {
    let items = p.items.as_deref().unwrap_or_default();
    let now = ctx.now.as_second();
    match p.event.as_str() {
        "cart_add" => v.record(tenant, |profile| profile.cart_add(items, now)),
        "cart_remove" => v.record(tenant, |profile| profile.cart_remove(items, now)),
        "purchase" => v.record(tenant, |profile| profile.purchase(items, p.value, now)),
        _ => false,
    };
}

fn properties(p: &Posted) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = p
        .properties
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    if let Some(v) = p.value {
        properties.push(("value".into(), v.to_string()));
    }
    if let Some(c) = &p.currency {
        properties.push(("currency".into(), c.clone()));
    }
    if let Some(items) = &p.items {
        let skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
        properties.push(("items".into(), skus.join(",")));
    }
    properties
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
        .map_err(|e| ProxyError::BadEvent(format!("expected {{\"event\": NAME, \"value\": NUMBER?, \"currency\": CODE?, \"properties\": {{...}}?, \"items\": [{{\"sku\": ID, \"category\": NAME?, \"price\": NUMBER?, \"quantity\": N?}}]?}}: {e}")))?;
    check(&posted)?;
    ctx.outcome = "event";
    if services.consent.analytics {
        services.track("beacon", &posted.event, properties(&posted));
        cart(ctx, tenant, visitor, &posted);
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
    if let Some(items) = &p.items {
        if items.len() > MAX_ITEMS {
            return bad("items: at most 50");
        }
        if let Some(problem) = items.iter().find_map(Item::problem) {
            return Err(ProxyError::BadEvent(problem));
        }
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
        if let Some(category) = tenant.config.profile.category(path) {
            let now = services.now.as_second();
            let half_life = tenant.config.profile.half_life_secs();
            visitor.record(tenant, |p| p.viewed(category, now, half_life));
        }
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
