//! Who is asking: the visitor's signed cookie, device, country, locale, UTM, referrer and
//! consent become the rules' attributes, the segments they are in, and one visitor shared by
//! the plugins, the host services and the cookie written at the end.

use std::sync::{Arc, Mutex, OnceLock};

use http::header;
use http::request::Parts;
use veneer_rules::experiment::{StickyDoc, StickyDocs};

use super::ctx::RequestCtx;
use super::headers::{export_headers, header_str};
use super::services::Services;
use crate::app::Tenant;
use crate::plugin::{RequestHead, Visitor};
use crate::visitor::{self, Facts, VisitorState};

/// The identified visitor of one request.
pub(super) struct VisitorCtx {
    /// Cookie state (id, visits, sticky assignments), written back at the end.
    pub(super) state: VisitorState,
    /// The key of this visitor's sticky-bucket document.
    pub(super) sticky_key: String,
    /// What plugins see.
    pub(super) visitor: Arc<Visitor>,
    /// Host services for this request's plugins.
    pub(super) services: Arc<Services>,
    /// The request as plugins see it (Veneer's cookie removed).
    pub(super) request_head: Arc<RequestHead>,
    /// The client's `Cookie` header without Veneer's cookie, for the origin.
    pub(super) origin_cookie: String,
    /// Path and query of the request.
    pub(super) path_and_query: String,
}

/// Identifies the visitor of `parts` for `tenant`.
pub(super) fn visitor(ctx: &RequestCtx, tenant: &Arc<Tenant>, parts: &Parts) -> VisitorCtx {
    let app = &ctx.app;
    let now_secs = u64::try_from(ctx.now.as_second()).unwrap_or(0);
    let headers = &parts.headers;
    let cookie_header = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    let state = visitor::resume(
        &app.signer,
        visitor::cookie(&cookie_header, visitor::COOKIE),
        now_secs,
    );
    let user_agent = header_str(headers, header::USER_AGENT).unwrap_or("");
    let device = visitor::device_class(user_agent);
    // The geo header counts only from a trusted proxy: anyone can send `cf-ipcountry: NO`.
    let country = tenant
        .config
        .geo_header
        .as_deref()
        .filter(|_| ctx.trusted)
        .and_then(|h| header_str(headers, h))
        .map(|c| c.trim().to_ascii_uppercase())
        .filter(|c| c.len() == 2)
        .or_else(|| app.geo.as_ref()?.country(ctx.client_ip?));
    let locale = header_str(headers, header::ACCEPT_LANGUAGE).and_then(visitor::preferred_locale);
    let utm = visitor::utm_params(parts.uri.query().unwrap_or(""));
    let referrer = header_str(headers, header::REFERER).map(str::to_owned);
    let consent = match ctx.preview.as_ref().and_then(|p| p.consent.as_ref()) {
        Some(chosen) => visitor::consent(Some(&chosen.join(",")), &[], false),
        None => visitor::consent(
            visitor::cookie(&cookie_header, &tenant.config.consent_cookie),
            &tenant.config.default_consent,
            header_str(headers, "sec-gpc") == Some("1"),
        ),
    };
    let path = parts.uri.path().to_owned();
    let facts = Facts {
        state: &state,
        device,
        country: country.as_deref(),
        locale: locale.as_deref(),
        utm: &utm,
        referrer: referrer.as_deref(),
        path: &path,
        host: &ctx.host,
        user_agent,
        consent,
    };
    let attributes = Arc::new(facts.attributes());
    let segments = match ctx.preview.as_ref().and_then(|p| p.segments.as_ref()) {
        Some(names) => tenant.rules.segments_named(names),
        None => tenant.rules.segments(&attributes),
    };
    let mut segment_names: Vec<String> = tenant
        .rules
        .segment_list(&segments)
        .map(str::to_owned)
        .collect();
    // A developer trying a plugin before writing its rules still gets the segments they
    // switch to (plugins see them; rules-based targeting knows only the rules' own).
    if ctx.app.dev
        && let Some(names) = ctx.preview.as_ref().and_then(|p| p.segments.as_ref())
    {
        for n in names {
            if !segment_names.contains(n) {
                segment_names.push(n.clone());
            }
        }
    }
    let visitor = Arc::new(Visitor {
        id: state.id.clone(),
        segments: segment_names,
        device,
        country,
        locale: locale.clone(),
        visit_count: state.visits,
        first_seen: state.first,
        utm,
        referrer,
        consent,
        attributes: attributes.clone(),
    });
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut sticky = StickyDocs::new();
    let sticky_key = format!("id||{}", state.id);
    sticky.insert(
        sticky_key.clone(),
        StickyDoc {
            attribute_name: "id".into(),
            attribute_value: state.id.clone(),
            assignments: state.sticky.clone(),
        },
    );
    let services = Arc::new(Services {
        tenant: tenant.clone(),
        app_analytics: app.analytics.clone(),
        metrics: app.metrics.clone(),
        request_id: ctx.id.clone(),
        visitor_id: state.id.clone(),
        path,
        url: format!("http://{}{path_and_query}", ctx.host),
        locale,
        consent,
        attributes,
        segments,
        now: ctx.now,
        campaigns: OnceLock::new(),
        impressions: Mutex::new(Vec::new()),
        sticky: Mutex::new(sticky),
        ledger: app.ledger.clone(),
        preview: ctx.preview.clone(),
        channel: tenant
            .config
            .channel_rules
            .iter()
            .find(|r| r.matches(headers, parts.uri.path()))
            .map_or_else(|| tenant.config.channel.clone(), |r| r.name.clone()),
        caps: Mutex::new(state.caps.clone()),
    });
    // Plugins see the request as the client sent it, minus Veneer's own cookie.
    let origin_cookie = visitor::strip_cookie(&cookie_header, visitor::COOKIE);
    let mut plugin_headers: Vec<(String, String)> = export_headers(headers)
        .into_iter()
        .filter(|(k, _)| k != "cookie")
        .collect();
    if !origin_cookie.is_empty() {
        plugin_headers.push(("cookie".into(), origin_cookie.clone()));
    }
    let request_head = Arc::new(RequestHead {
        method: parts.method.as_str().to_owned(),
        path: path_and_query.clone(),
        host: ctx.host.clone(),
        headers: plugin_headers,
    });
    VisitorCtx {
        state,
        sticky_key,
        visitor,
        services,
        request_head,
        origin_cookie,
        path_and_query,
    }
}
