//! The request flow, top to bottom, in [`handle`]:
//!
//! ```text
//! tenant by Host → visitor (cookie, device, geo, locale, UTM, consent) → segments
//!   → plugin chain: on-request (continue with header edits │ redirect │ respond)
//!   → origin (pooled client, timeout) → plugin chain: on-response (headers + plans)
//!   → body: HTML → streaming rewrite │ JSON → patch (size-capped) │ other → untouched
//!   → visitor cookie → client
//! ```
//!
//! Plugin faults never reach the visitor: a plugin that traps, times out, runs out of memory or
//! returns an invalid plan is dropped from this request's chain, logged and counted, and the
//! response is what it would have been without it. Origin faults become 502 (unreachable,
//! broken) or 504 (too slow), with a short plain-text body.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use jiff::Timestamp;
use veneer_rules::SegmentSet;
use veneer_rules::experiment::{Context as RunContext, StickyDoc, StickyDocs};

use crate::analytics::Event;
use crate::app::{App, Tenant};
use crate::plugin::{
    Admission, Assignment, Budget, Campaign, Consent, HeaderEdits, HostServices, Instance,
    PluginFault, RequestAction, RequestHead, ResponseHead, ResponsePlan, SyntheticResponse,
    Transition, Visitor,
};
use crate::rewrite::{self, Coding, HtmlBody, HtmlJob, PluginHandle};
use crate::visitor::{self, Facts, VisitorState};

/// The client's socket address, put in request extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

fn full(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.into()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn apply_edits(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        if let Ok(name) = HeaderName::try_from(name.as_str()) {
            headers.remove(name);
        }
    }
    for (name, value) in &edits.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(n, v);
        }
    }
}

fn export_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// Per-request host services handed to the plugins (see [`HostServices`]).
struct Services {
    tenant: Arc<Tenant>,
    app_analytics: crate::analytics::Analytics,
    metrics: Arc<crate::metrics::Metrics>,
    request_id: String,
    visitor_id: String,
    path: String,
    url: String,
    locale: Option<String>,
    consent: Consent,
    attributes: Arc<serde_json::Value>,
    segments: SegmentSet,
    now: Timestamp,
    campaigns: OnceLock<Vec<Arc<Campaign>>>,
    /// Campaign ids whose impression was recorded in this request (one event each).
    impressions: Mutex<Vec<String>>,
    sticky: Mutex<StickyDocs>,
}

impl HostServices for Services {
    fn fragment(&self, key: &str) -> Option<String> {
        self.tenant.fragments.get(key, self.locale.as_deref())
    }

    fn track(&self, plugin: &str, name: &str, properties: Vec<(String, String)>) {
        if !self.consent.analytics {
            self.metrics.inc(
                "veneer_analytics_events_total",
                &[("outcome", "dropped_no_consent")],
            );
            return;
        }
        self.app_analytics.record(Event {
            ts: self.now.to_string(),
            tenant: self.tenant.config.name.clone(),
            visitor: self.visitor_id.clone(),
            request_id: self.request_id.clone(),
            path: self.path.clone(),
            plugin: plugin.to_owned(),
            event: name.chars().take(128).collect(),
            properties: properties
                .into_iter()
                .take(32)
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        });
    }

    fn active_campaigns(&self) -> &[Arc<Campaign>] {
        self.campaigns.get_or_init(|| {
            let t = &self.tenant;
            t.rules
                .active_campaigns(self.now, &t.config.channel, &self.segments)
                .into_iter()
                .map(|c| {
                    Arc::new(Campaign {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        priority: c.priority,
                        starts_at: c.start.as_second(),
                        ends_at: c.end.as_second(),
                        params: c
                            .params
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                })
                .collect()
        })
    }

    fn impression(&self, plugin: &str, campaign_id: &str) {
        let Some(campaign) = self.active_campaigns().iter().find(|c| c.id == campaign_id) else {
            // Counted, not logged: a plugin could call this in a loop with any id.
            self.metrics.inc(
                "veneer_campaign_impressions_ignored_total",
                &[("tenant", &self.tenant.config.name), ("plugin", plugin)],
            );
            return;
        };
        {
            let mut seen = self
                .impressions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if seen.iter().any(|id| id == campaign_id) {
                return;
            }
            seen.push(campaign_id.to_owned());
        }
        let properties = vec![
            ("campaign".to_owned(), campaign.id.clone()),
            ("name".to_owned(), campaign.name.clone()),
        ];
        self.track(plugin, "campaign_impression", properties);
    }

    fn now_ms(&self) -> i64 {
        self.now.as_millisecond()
    }

    fn assign(&self, experiment: &str) -> Option<Assignment> {
        let exp = self.tenant.rules.experiment(experiment)?;
        let mut sticky = self.sticky.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ctx = RunContext::new(self.attributes.as_ref());
        ctx.url = Some(&self.url);
        ctx.saved_groups = Some(self.tenant.rules.saved_groups());
        ctx.sticky = Some(&mut sticky);
        let a = exp.run(&mut ctx);
        Some(Assignment {
            experiment: experiment.to_owned(),
            variation: u32::try_from(a.variation_id).unwrap_or(0),
            key: a.key,
            value: a.value.to_string(),
            in_experiment: a.in_experiment,
        })
    }

    fn request_id(&self) -> &str {
        &self.request_id
    }

    fn breaker_changed(&self, plugin: &str, transition: Transition) {
        let tenant = self.tenant.config.name.as_str();
        let open = transition == Transition::Opened;
        if open {
            tracing::warn!(
                tenant,
                plugin,
                "plugin keeps faulting: skipping it for its cool-down (circuit breaker open)"
            );
            self.metrics.inc(
                "veneer_plugin_breaker_trips_total",
                &[("tenant", tenant), ("plugin", plugin)],
            );
        } else {
            tracing::info!(tenant, plugin, "plugin recovered: circuit breaker closed");
        }
        self.metrics.set(
            "veneer_plugin_breaker_open",
            &[("tenant", tenant), ("plugin", plugin)],
            u64::from(open),
        );
    }

    fn tenant(&self) -> &str {
        &self.tenant.config.name
    }
}

/// A plugin taking part in this request.
struct Live {
    name: Arc<str>,
    instance: Instance,
    budget: Budget,
}

/// Cookies only the host may set: a plugin's `Set-Cookie` for one of them would let it forge
/// the visitor's identity, sticky assignments or consent.
fn reserved_cookie<'a>(headers: &'a [(String, String)], tenant: &Tenant) -> Option<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split('=').next().map(str::trim))
        .find(|name| *name == visitor::COOKIE || *name == tenant.config.consent_cookie)
}

/// Everything the host checks in a response plan before applying it.
fn check_response_plan(
    plan: ResponsePlan,
    budget: &Budget,
    tenant: &Tenant,
) -> Result<rewrite::CheckedPlan, PluginFault> {
    budget.check_plan(&plan)?;
    if let Some(name) = reserved_cookie(&plan.headers.set, tenant) {
        return Err(PluginFault::InvalidPlan(format!(
            "set-cookie for {name}, which only the host may set"
        )));
    }
    rewrite::validate_plan(plan)
}

/// Everything the host checks in a plugin's own response before sending it.
fn check_synthetic(
    s: &SyntheticResponse,
    budget: &Budget,
    tenant: &Tenant,
) -> Result<(), PluginFault> {
    budget.check_synthetic(s)?;
    match reserved_cookie(&s.headers, tenant) {
        Some(name) => Err(PluginFault::InvalidPlan(format!(
            "set-cookie for {name}, which only the host may set"
        ))),
        None => Ok(()),
    }
}

fn report_fault(app: &App, tenant: &str, plugin: &str, request_id: &str, fault: &PluginFault) {
    tracing::warn!(tenant, plugin, request_id, kind = fault.kind(), error = %fault, "plugin fault: serving without this plugin");
    app.metrics.inc(
        "veneer_plugin_faults_total",
        &[
            ("tenant", tenant),
            ("plugin", plugin),
            ("kind", fault.kind()),
        ],
    );
}

/// Waits for a turn to run the tenant's plugins (see `plugin_concurrency`); `None`, counted,
/// when none came within 10 × the tenant's plugin time budget: the request is then served
/// without its plugins, as if they had failed open.
async fn plugin_turn<'t>(
    app: &App,
    tenant: &'t Tenant,
) -> Option<tokio::sync::SemaphorePermit<'t>> {
    if tenant.plugins.is_empty() {
        return None;
    }
    if let Ok(permit) = tenant.plugin_slots.try_acquire() {
        return Some(permit);
    }
    // Long enough that a busy tenant's own requests queue rather than lose their
    // personalization; a tenant whose plugins spin waits its turn and then goes without.
    let wait = std::time::Duration::from_millis(tenant.config.limits.plugin_time_ms * 10);
    match tokio::time::timeout(wait, tenant.plugin_slots.acquire()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => {
            app.metrics.inc(
                "veneer_plugin_skipped_total",
                &[
                    ("tenant", &tenant.config.name),
                    ("plugin", "*"),
                    ("reason", "tenant_busy"),
                ],
            );
            None
        }
    }
}

/// Handles one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let request_id = header_str(req.headers(), "x-request-id")
        .filter(|v| v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header_str(req.headers(), header::HOST).map(str::to_owned))
        .unwrap_or_default();

    // 1. Tenant.
    let Some(tenant) = app.tenant(&host).cloned() else {
        app.metrics.inc(
            "veneer_requests_total",
            &[("tenant", "(unknown)"), ("outcome", "unknown_host")],
        );
        return full(
            StatusCode::NOT_FOUND,
            format!("veneer: no site is configured for host {host:?}\n"),
        );
    };
    let name = tenant.config.name.clone();

    // 2. Visitor.
    let now = Timestamp::now();
    let now_secs = u64::try_from(now.as_second()).unwrap_or(0);
    let headers = req.headers();
    let cookie_header = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    let mut state = visitor::resume(
        &app.signer,
        visitor::cookie(&cookie_header, visitor::COOKIE),
        now_secs,
    );
    let user_agent = header_str(headers, header::USER_AGENT).unwrap_or("");
    let device = visitor::device_class(user_agent);
    let country = tenant
        .config
        .geo_header
        .as_deref()
        .and_then(|h| header_str(headers, h))
        .map(|c| c.trim().to_ascii_uppercase())
        .filter(|c| c.len() == 2);
    let locale = header_str(headers, header::ACCEPT_LANGUAGE).and_then(visitor::preferred_locale);
    let query = req.uri().query().unwrap_or("");
    let utm = visitor::utm_params(query);
    let referrer = header_str(headers, header::REFERER).map(str::to_owned);
    let consent = visitor::consent(
        visitor::cookie(&cookie_header, &tenant.config.consent_cookie),
        &tenant.config.default_consent,
        header_str(headers, "sec-gpc") == Some("1"),
    );
    let path = req.uri().path().to_owned();
    let facts = Facts {
        state: &state,
        device,
        country: country.as_deref(),
        locale: locale.as_deref(),
        utm: &utm,
        referrer: referrer.as_deref(),
        path: &path,
        host: &host,
        user_agent,
        consent,
    };
    let attributes = Arc::new(facts.attributes());
    let segments = tenant.rules.segments(&attributes);
    let segment_names: Vec<String> = tenant
        .rules
        .segment_list(&segments)
        .map(str::to_owned)
        .collect();
    let visitor_wit = Arc::new(Visitor {
        id: state.id.clone(),
        segments: segment_names,
        device,
        country: country.clone(),
        locale: locale.clone(),
        visit_count: state.visits,
        first_seen: state.first,
        utm: utm.clone(),
        referrer,
        consent,
        attributes: attributes.clone(),
    });
    let path_and_query = req
        .uri()
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
        request_id: request_id.clone(),
        visitor_id: state.id.clone(),
        path: path.clone(),
        url: format!("http://{host}{path_and_query}"),
        locale,
        consent,
        attributes,
        segments,
        now,
        campaigns: OnceLock::new(),
        impressions: Mutex::new(Vec::new()),
        sticky: Mutex::new(sticky),
    });

    // 3. Plugin chain, on-request.
    let mut request_head = RequestHead {
        method: req.method().as_str().to_owned(),
        path: path_and_query.clone(),
        host: host.clone(),
        headers: export_headers(req.headers())
            .into_iter()
            .filter(|(k, _)| k != "cookie")
            .collect(),
    };
    let stripped_cookie = visitor::strip_cookie(&cookie_header, visitor::COOKIE);
    if !stripped_cookie.is_empty() {
        request_head
            .headers
            .push(("cookie".into(), stripped_cookie.clone()));
    }
    let request_head = Arc::new(request_head);
    let mut chain: Vec<Live> = Vec::with_capacity(tenant.plugins.len());
    let mut request_edits: Vec<HeaderEdits> = Vec::new();
    let turn = plugin_turn(&app, &tenant).await;
    let plugins = if turn.is_some() {
        tenant.plugins.as_slice()
    } else {
        &[]
    };
    for plugin in plugins {
        let admission = plugin.admit();
        if admission == Admission::Skip {
            app.metrics.inc(
                "veneer_plugin_skipped_total",
                &[
                    ("tenant", &name),
                    ("plugin", plugin.name()),
                    ("reason", "breaker_open"),
                ],
            );
            continue;
        }
        let budget = *plugin.budget();
        let mut instance = match plugin.instantiate(services.clone(), admission).await {
            Ok(i) => i,
            Err(f) => {
                report_fault(&app, &name, plugin.name(), &request_id, &f);
                continue;
            }
        };
        match instance.on_request(&request_head, &visitor_wit).await {
            Ok(RequestAction::Continue(edits)) => match budget.check_edits(&edits) {
                Ok(()) => {
                    request_edits.push(edits);
                    chain.push(Live {
                        name: Arc::from(plugin.name()),
                        instance,
                        budget,
                    });
                }
                Err(f) => {
                    instance.mark_faulted();
                    report_fault(&app, &name, plugin.name(), &request_id, &f);
                }
            },
            Ok(RequestAction::Redirect((status, location))) => {
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308));
                match (status, HeaderValue::try_from(location)) {
                    (Some(status), Ok(location)) => {
                        let mut r = full(status, "");
                        r.headers_mut().insert(header::LOCATION, location);
                        finish_visitor(&app, &services, &mut state, &sticky_key, r.headers_mut());
                        app.metrics.inc(
                            "veneer_requests_total",
                            &[("tenant", &name), ("outcome", "plugin_redirect")],
                        );
                        return r;
                    }
                    _ => {
                        instance.mark_faulted();
                        report_fault(
                            &app,
                            &name,
                            plugin.name(),
                            &request_id,
                            &PluginFault::InvalidPlan("redirect status or location".into()),
                        )
                    }
                }
            }
            Ok(RequestAction::Respond(synthetic)) => {
                match check_synthetic(&synthetic, &budget, &tenant).and_then(|()| {
                    synthetic_response(synthetic)
                        .ok_or_else(|| PluginFault::InvalidPlan("synthetic response".into()))
                }) {
                    Ok(mut r) => {
                        finish_visitor(&app, &services, &mut state, &sticky_key, r.headers_mut());
                        app.metrics.inc(
                            "veneer_requests_total",
                            &[("tenant", &name), ("outcome", "plugin_response")],
                        );
                        return r;
                    }
                    Err(f) => {
                        instance.mark_faulted();
                        report_fault(&app, &name, plugin.name(), &request_id, &f)
                    }
                }
            }
            Err(f) => report_fault(&app, &name, plugin.name(), &request_id, &f),
        }
    }

    // Not held while the origin answers: a slow origin must not use up the tenant's turns.
    drop(turn);

    // 4. Origin.
    let (parts, body) = req.into_parts();
    let is_head = parts.method == Method::HEAD;
    let client_accept = header_str(&parts.headers, header::ACCEPT_ENCODING).map(str::to_owned);
    let mut origin_headers = parts.headers;
    strip_hop_by_hop(&mut origin_headers);
    origin_headers.remove(header::COOKIE);
    if !stripped_cookie.is_empty()
        && let Ok(v) = HeaderValue::try_from(stripped_cookie)
    {
        origin_headers.insert(header::COOKIE, v);
    }
    for edits in &request_edits {
        apply_edits(&mut origin_headers, edits);
    }
    // Ask only for codings Veneer can decode, so any HTML response can be rewritten.
    origin_headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, br"),
    );
    if let Ok(v) = HeaderValue::try_from(host.as_str()) {
        origin_headers.insert("x-forwarded-host", v);
    }
    if let Some(ClientAddr(peer)) = parts.extensions.get::<ClientAddr>() {
        // Append to any chain a trusted edge in front of Veneer already started.
        let chain = match header_str(&origin_headers, "x-forwarded-for") {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::try_from(chain) {
            origin_headers.insert("x-forwarded-for", v);
        }
    }
    if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
        origin_headers.insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::try_from(tenant.origin.as_str()) {
        origin_headers.insert(header::HOST, v);
    }
    let uri = format!("http://{}{}", tenant.origin, path_and_query);
    let mut origin_req = Request::new(body.boxed_unsync());
    *origin_req.method_mut() = parts.method.clone();
    *origin_req.headers_mut() = origin_headers;
    *origin_req.uri_mut() = match uri.parse() {
        Ok(u) => u,
        Err(_) => {
            return full(
                StatusCode::BAD_REQUEST,
                "veneer: malformed request target\n",
            );
        }
    };
    let response = match tokio::time::timeout(app.origin_timeout, app.client.request(origin_req))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(tenant = %name, request_id, error = %e, "origin request failed");
            app.metrics.inc(
                "veneer_origin_errors_total",
                &[("tenant", &name), ("kind", "unreachable")],
            );
            return full(
                StatusCode::BAD_GATEWAY,
                format!(
                    "veneer: the origin for {host} could not be reached (request {request_id})\n"
                ),
            );
        }
        Err(_) => {
            tracing::warn!(tenant = %name, request_id, timeout = ?app.origin_timeout, "origin timed out");
            app.metrics.inc(
                "veneer_origin_errors_total",
                &[("tenant", &name), ("kind", "timeout")],
            );
            return full(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "veneer: the origin for {host} did not answer in time (request {request_id})\n"
                ),
            );
        }
    };

    // 5. Plugin chain, on-response.
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let response_head = Arc::new(ResponseHead {
        status: parts.status.as_u16(),
        headers: export_headers(&parts.headers),
    });
    let mut plans: Vec<(Live, rewrite::CheckedPlan)> = Vec::new();
    let turn = if chain.is_empty() {
        None
    } else {
        plugin_turn(&app, &tenant).await
    };
    if turn.is_none() {
        for live in chain.drain(..) {
            live.instance.abandon();
        }
    }
    for mut live in chain {
        match live
            .instance
            .on_response(&request_head, &response_head, &visitor_wit)
            .await
            .and_then(|plan| check_response_plan(plan, &live.budget, &tenant))
        {
            Ok(plan) => plans.push((live, plan)),
            Err(f) => {
                live.instance.mark_faulted();
                report_fault(&app, &name, &live.name, &request_id, &f)
            }
        }
    }
    drop(turn);
    for (_, plan) in &plans {
        apply_edits(&mut parts.headers, &plan.plan.headers);
    }

    // 6. Body.
    let status = parts.status;
    let content_type = header_str(&parts.headers, header::CONTENT_TYPE)
        .unwrap_or("")
        .to_ascii_lowercase();
    let bodyless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let partial =
        status == StatusCode::PARTIAL_CONTENT || parts.headers.contains_key(header::CONTENT_RANGE);
    let origin_coding =
        Coding::from_content_encoding(header_str(&parts.headers, header::CONTENT_ENCODING));
    let wants_html = plans.iter().any(|(_, p)| p.touches_html());
    let wants_json = plans.iter().any(|(_, p)| !p.plan.json.is_empty());
    let is_html = content_type.starts_with("text/html");
    let is_json = content_type.starts_with("application/json")
        || (content_type.starts_with("application/") && content_type.contains("+json"));
    let target = Coding::negotiate(client_accept.as_deref());
    let passthrough = |body: Incoming| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();

    let body: Body = match origin_coding {
        Some(from) if !bodyless && !partial && is_html && wants_html => {
            let report: rewrite::FaultReporter = {
                let (app, tenant, request_id) = (app.clone(), name.clone(), request_id.clone());
                Arc::new(move |plugin: &str, fault: &PluginFault| {
                    report_fault(&app, &tenant, plugin, &request_id, fault)
                })
            };
            let job = HtmlJob {
                plugins: plans
                    .into_iter()
                    .filter(|(_, p)| p.touches_html())
                    .map(|(live, plan)| {
                        let handle = PluginHandle {
                            name: live.name,
                            instance: Mutex::new(live.instance),
                            faulted: AtomicBool::new(false),
                            budget: live.budget,
                            inserted: AtomicU64::new(0),
                        };
                        (Arc::new(handle), plan)
                    })
                    .collect(),
                report,
                on_unsupported_charset: Some({
                    let (app, tenant, request_id) = (app.clone(), name.clone(), request_id.clone());
                    Box::new(move |content_type: &str| {
                        tracing::info!(tenant = %tenant, request_id, content_type, "charset cannot be rewritten safely: page passed through unchanged");
                        app.metrics.inc(
                            "veneer_html_unsupported_charset_total",
                            &[("tenant", &tenant)],
                        );
                    })
                }),
            };
            mark_rewritten(&mut parts.headers, target);
            app.metrics.inc(
                "veneer_requests_total",
                &[("tenant", &name), ("outcome", "rewritten_html")],
            );
            RewriteBody {
                inner: body,
                html: Some(HtmlBody::new(job, from, target, Some(&content_type))),
            }
            .boxed_unsync()
        }
        Some(from) if !bodyless && !partial && is_json && wants_json => {
            let ops: Vec<_> = plans
                .iter()
                .flat_map(|(_, p)| p.plan.json.iter().cloned())
                .collect();
            match json_body(body, from, &ops, tenant.config.limits.json_max_bytes).await {
                Ok(Ok(patched)) => {
                    let mut enc = rewrite::Encoder::new(target);
                    let mut bytes = enc.push(&patched).unwrap_or_default();
                    bytes.extend(enc.finish().unwrap_or_default());
                    mark_rewritten(&mut parts.headers, target);
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    app.metrics.inc(
                        "veneer_requests_total",
                        &[("tenant", &name), ("outcome", "rewritten_json")],
                    );
                    Full::new(Bytes::from(bytes))
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }
                Ok(Err(original)) => original,
                Err(e) => {
                    tracing::warn!(tenant = %name, request_id, error = %e, "origin body failed");
                    return full(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "veneer: the origin's response body failed (request {request_id})\n"
                        ),
                    );
                }
            }
        }
        _ => {
            app.metrics.inc(
                "veneer_requests_total",
                &[("tenant", &name), ("outcome", "passthrough")],
            );
            passthrough(body)
        }
    };

    finish_visitor(&app, &services, &mut state, &sticky_key, &mut parts.headers);
    if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
        parts.headers.insert("x-request-id", v);
    }
    Response::from_parts(parts, body)
}

/// Headers of a response whose body Veneer changed.
fn mark_rewritten(headers: &mut HeaderMap, coding: Coding) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::ACCEPT_RANGES);
    // The origin's validators describe the origin's bytes, not these.
    headers.remove(header::ETAG);
    headers.remove("content-md5");
    if let Some(c) = coding.header() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
    }
    headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    // A personalized page must not be stored by shared caches for other visitors.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
}

/// Writes the visitor cookie with this request's sticky assignments.
fn finish_visitor(
    app: &App,
    services: &Services,
    state: &mut VisitorState,
    sticky_key: &str,
    headers: &mut HeaderMap,
) {
    let docs = services
        .sticky
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(doc) = docs.get(sticky_key) {
        let mut assignments: BTreeMap<String, String> = doc.assignments.clone();
        while assignments.len() > visitor::MAX_ASSIGNMENTS {
            let Some(first) = assignments.keys().next().cloned() else {
                break;
            };
            assignments.remove(&first);
        }
        state.sticky = assignments;
    }
    let value = format!(
        "{}={}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax",
        visitor::COOKIE,
        app.signer.encode(state)
    );
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.append(header::SET_COOKIE, v);
    }
}

fn synthetic_response(s: crate::plugin::SyntheticResponse) -> Option<Response<Body>> {
    let mut r = Response::new(
        Full::new(Bytes::from(s.body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::from_u16(s.status).ok()?;
    for (k, v) in s.headers {
        r.headers_mut().append(
            HeaderName::try_from(k).ok()?,
            HeaderValue::try_from(v).ok()?,
        );
    }
    Some(r)
}

/// Buffers a JSON body (up to `cap` decoded bytes) and patches it. `Ok(Err(body))` gives the
/// original bytes back untouched when the body is too large, not JSON, or a patch fails.
async fn json_body(
    mut body: Incoming,
    from: Coding,
    ops: &[crate::plugin::JsonOp],
    cap: usize,
) -> Result<Result<Vec<u8>, Body>, hyper::Error> {
    let mut raw: Vec<Bytes> = Vec::new();
    let mut decoder = rewrite::Decoder::new(from);
    let mut decoded = Vec::new();
    let mut ok = true;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if ok {
            match decoder.push(&data) {
                Ok(d) => decoded.extend(d),
                Err(_) => ok = false,
            }
        }
        raw.push(data);
        if decoded.len() > cap {
            // Too big to patch: send what was read and stream the rest untouched.
            let head = Full::new(Bytes::from(raw.concat())).map_err(|never| match never {});
            let rest = body.map_err(|e| Box::new(e) as BoxError);
            return Ok(Err(Chain {
                first: Some(head.boxed_unsync()),
                second: rest.boxed_unsync(),
            }
            .boxed_unsync()));
        }
    }
    let original = || {
        Full::new(Bytes::from(raw.concat()))
            .map_err(|never| match never {})
            .boxed_unsync()
    };
    if !ok {
        return Ok(Err(original()));
    }
    match decoder.finish() {
        Ok(rest) => decoded.extend(rest),
        Err(_) => return Ok(Err(original())),
    }
    match rewrite::apply_json(&decoded, ops) {
        Ok(patched) => Ok(Ok(patched)),
        Err(e) => {
            tracing::warn!(error = %e, "JSON plan could not be applied; serving the origin's body");
            Ok(Err(original()))
        }
    }
}

/// Two bodies, one after the other.
struct Chain {
    first: Option<Body>,
    second: Body,
}

impl http_body::Body for Chain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.as_mut() {
            match Pin::new(first).poll_frame(cx) {
                Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        Pin::new(&mut self.second).poll_frame(cx)
    }
}

/// The origin's body, rewritten chunk by chunk as it arrives.
struct RewriteBody {
    inner: Incoming,
    html: Option<HtmlBody>,
}

impl http_body::Body for RewriteBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(html) = this.html.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.html = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let pushed = html.push(&data);
                    if pushed.is_ok() && this.inner.is_end_stream() {
                        // The last chunk: finish now, so a small page goes out in one write.
                        let Some(html) = this.html.take() else {
                            return Poll::Ready(None);
                        };
                        return match (pushed, html.finish()) {
                            (Ok(a), Ok(b)) => {
                                Poll::Ready(Some(Ok(Frame::data([a, b].concat().into()))))
                            }
                            (Err(e), _) | (_, Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
                        };
                    }
                    match pushed {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => {
                            this.html = None;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    let Some(html) = this.html.take() else {
                        return Poll::Ready(None);
                    };
                    return match html.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                    };
                }
            }
        }
    }
}
