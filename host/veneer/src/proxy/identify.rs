//! Who is asking: the visitor's signed cookie, device, country, locale, UTM, referrer and
//! consent become the rules' attributes, the segments they are in, and one visitor shared by
//! the plugins, the host services and the cookie written at the end.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::header;
use http::request::Parts;
use serde_json::Value;
use veneer_rules::experiment::{StickyDoc, StickyDocs};

use super::ctx::RequestCtx;
use super::headers::{export_headers, header_str};
use super::services::Services;
use crate::app::{App, Tenant};
use crate::plugin::{DeviceClass, HostServices as _, RequestHead, Visitor};
use crate::profile::{Profile, Profiles, Subject};
use crate::visitor::{self, Facts, VisitorState};

/// The profile a request reads and adds to.
pub(super) struct ProfileRef {
    /// Whose it is.
    pub(super) subject: Subject,
    /// The cached profile.
    pub(super) shared: Arc<Mutex<Profile>>,
    /// Where it is stored.
    pub(super) profiles: Arc<Profiles>,
    /// `shared` is the cached copy (`false`: a new visitor's, cached once it holds something).
    pub(super) cached: bool,
}

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
    /// The visitor's (or their customer's) profile: only with personalization consent, never
    /// for bots.
    pub(super) profile: Option<ProfileRef>,
}

impl VisitorCtx {
    /// Records behaviour: `change` is applied to the profile and the profile queued for
    /// storing, only with analytics consent and not for a preview. `true` when it was.
    pub(super) fn record(&self, tenant: &Tenant, change: impl FnOnce(&mut Profile)) -> bool {
        let Some(p) = &self.profile else { return false };
        if !self.services.consent.analytics || self.services.quiet() {
            return false;
        }
        let name = &tenant.config.name;
        let shared = if p.cached {
            p.shared.clone()
        } else {
            p.profiles.adopt(name, &p.subject, p.shared.clone())
        };
        change(&mut shared.lock().unwrap_or_else(PoisonError::into_inner));
        p.profiles.save(name, &p.subject, &shared);
        true
    }
}

/// Links the visitor of `state` to `customer` (`None`: unlinks, a logout). The anonymous
/// visitor's behaviour so far moves to the customer's profile, so it follows them.
pub(super) async fn link(
    app: &App,
    tenant: &Tenant,
    state: &mut VisitorState,
    customer: Option<String>,
    now: i64,
) {
    if state.customer == customer {
        return;
    }
    let Some(c) = customer else {
        state.customer = None;
        state.customer_of = None;
        return;
    };
    let name = &tenant.config.name;
    let half_life = tenant.config.profile.half_life_secs();
    let anon = Subject::Visitor(state.id.clone());
    let theirs = app.profiles.get(name, &anon).await;
    let moved = std::mem::take(&mut *theirs.lock().unwrap_or_else(PoisonError::into_inner));
    if !moved.is_empty() {
        // Moved, not copied: a later login must not add it to the customer a second time.
        app.profiles.forget(name, &anon);
    }
    let subject = Subject::Customer(c.clone());
    let ours = app.profiles.get(name, &subject).await;
    {
        let mut p = ours.lock().unwrap_or_else(PoisonError::into_inner);
        p.absorb(&moved, now, half_life);
        p.link(&state.id);
    }
    app.profiles.save(name, &subject, &ours);
    app.metrics
        .inc("veneer_identified_total", &[("tenant", name)]);
    state.customer = Some(c);
    state.customer_of = Some(name.clone());
}

/// The profile of whoever the visitor of `state` is now (after a link or an unlink).
/// `known`: the visitor came with a valid cookie (a new visitor has no stored profile, so
/// nothing is read for them).
pub(super) async fn profile_of(
    app: &App,
    tenant: &Tenant,
    state: &VisitorState,
    known: bool,
) -> ProfileRef {
    let name = &tenant.config.name;
    let subject = match &state.customer {
        Some(c) => Subject::Customer(c.clone()),
        None => Subject::Visitor(state.id.clone()),
    };
    let (shared, cached) = if known || state.customer.is_some() {
        (app.profiles.get(name, &subject).await, true)
    } else {
        app.profiles.cached_or_new(name, &subject)
    };
    ProfileRef {
        subject,
        shared,
        profiles: app.profiles.clone(),
        cached,
    }
}

/// The customer a request names by the tenant's own means: a header from its trusted edge
/// authentication, or a verified JWT cookie.
fn requested_customer(
    ctx: &RequestCtx,
    tenant: &Tenant,
    headers: &http::HeaderMap,
    cookie_header: &str,
) -> Option<String> {
    let id = &tenant.config.identity;
    let from_header = id
        .header
        .as_deref()
        .filter(|_| ctx.trusted)
        .and_then(|h| header_str(headers, h))
        .map(|v| v.trim().to_owned());
    let from_jwt = || {
        let cookie = visitor::cookie(cookie_header, id.jwt_cookie.as_deref()?)?;
        visitor::jwt_claim(
            cookie,
            id.jwt_secret.as_deref()?.as_bytes(),
            id.jwt_claim.as_deref().unwrap_or("sub"),
            ctx.now.as_second(),
        )
    };
    from_header
        .or_else(from_jwt)
        .filter(|c| crate::profile::valid_customer_id(c))
}

/// Identifies the visitor of `parts` for `tenant`.
pub(super) async fn visitor(ctx: &RequestCtx, tenant: &Arc<Tenant>, parts: &Parts) -> VisitorCtx {
    let app = &ctx.app;
    let now_secs = u64::try_from(ctx.now.as_second()).unwrap_or(0);
    let headers = &parts.headers;
    let cookie_header = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    let message = ctx.message.as_deref();
    let (mut state, known) = match message {
        // A message's recipient is the visitor: their id is the hash attribute, so their
        // experiment groups are the ones the web gives a visitor with that id.
        Some(m) => {
            let mut fresh = VisitorState::fresh(m.recipient.clone(), now_secs);
            if let Some(n) = m.attributes.get("visitCount").and_then(Value::as_u64) {
                fresh.visits = u32::try_from(n).unwrap_or(u32::MAX);
            }
            (fresh, false)
        }
        None => visitor::resume_known(
            &app.signer,
            visitor::cookie(&cookie_header, visitor::COOKIE),
            now_secs,
        ),
    };
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
    // A recipient's country and locale are theirs, as a visitor's come from their request.
    let (country, locale) = match message {
        Some(m) => (m.text("country").or(country), m.text("locale").or(locale)),
        None => (country, locale),
    };
    let utm = visitor::utm_params(parts.uri.query().unwrap_or(""));
    let referrer = header_str(headers, header::REFERER).map(str::to_owned);
    let consent = match ctx.preview.as_ref().and_then(|p| p.consent.as_ref()) {
        // Only recipients who consented to marketing get a message at all.
        _ if message.is_some() => crate::plugin::Consent {
            analytics: true,
            personalization: true,
            marketing: true,
        },
        Some(chosen) => visitor::consent(Some(&chosen.join(",")), &[], false),
        None => visitor::consent(
            visitor::cookie(&cookie_header, &tenant.config.consent_cookie),
            &tenant.config.default_consent,
            header_str(headers, "sec-gpc") == Some("1"),
        ),
    };
    let now = ctx.now.as_second();
    let profiles_on = tenant.config.profile.enabled;
    // A link counts only on the site that made it, and only with personalization consent
    // (without it the cookie forgets the customer).
    if state.customer.is_some()
        && (!consent.personalization
            || !profiles_on
            || state.customer_of.as_deref() != Some(&*tenant.name))
    {
        state.customer = None;
        state.customer_of = None;
    }
    let identity = &tenant.config.identity;
    // With its own proof of identity (a trusted header, a JWT cookie), the tenant's proof
    // decides on every request: signed out at the tenant's edge is signed out here. A preview
    // reads the visitor's profile but never links or changes it.
    if ctx.preview.is_none()
        && message.is_none()
        && profiles_on
        && consent.personalization
        && (identity.header.is_some() || identity.jwt_cookie.is_some())
    {
        let requested = requested_customer(ctx, tenant, headers, &cookie_header);
        link(app, tenant, &mut state, requested, now).await;
    }
    // A message's attributes come from its recipient line (customer attributes included).
    let profile = if message.is_none()
        && profiles_on
        && consent.personalization
        && !matches!(device, DeviceClass::Bot)
    {
        Some(profile_of(app, tenant, &state, known).await)
    } else {
        None
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
    let mut attributes = facts.attributes();
    if let (Some(m), Value::Object(map)) = (message, &mut attributes) {
        m.merge_attributes(map);
    }
    let mut stage = None;
    if let (Some(p), Value::Object(map)) = (&profile, &mut attributes) {
        let customer = match &p.subject {
            Subject::Customer(c) => Some(c.as_str()),
            Subject::Visitor(_) => None,
        };
        p.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attributes_into(map, customer, now, &tenant.config.profile);
    }
    if !tenant.journey.is_empty() {
        let groups = tenant.rules.saved_groups();
        stage = tenant
            .journey
            .iter()
            .rev()
            .find(|(_, when)| when.matches(&attributes, groups))
            .map(|(name, _)| name.clone());
        if let Value::Object(map) = &mut attributes {
            map.insert(
                "journey".into(),
                stage.clone().map_or(Value::Null, Value::String),
            );
        }
    }
    let attributes = Arc::new(attributes);
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
        channel: match message {
            Some(m) => m.channel.clone(),
            None => tenant
                .config
                .channel_rules
                .iter()
                .find(|r| r.matches(headers, parts.uri.path()))
                .map_or_else(|| tenant.config.channel.clone(), |r| r.name.clone()),
        },
        assigned: Mutex::new(Vec::new()),
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
    let v = VisitorCtx {
        state,
        sticky_key,
        visitor,
        services,
        request_head,
        origin_cookie,
        path_and_query,
        profile,
    };
    if stage.is_some() {
        journey_transition(tenant, &v, stage);
    }
    v
}

/// A visitor whose stage changed: the new stage is stored and the transition recorded as a
/// `journey_stage` event (`from`, `to`), which reports and exports break results down by.
fn journey_transition(tenant: &Tenant, v: &VisitorCtx, stage: Option<String>) {
    let mut from = None;
    let changed = v.record(tenant, |p| {
        if p.stage != stage {
            from = Some(p.stage.replace(stage.clone().unwrap_or_default()));
        }
    });
    if let (true, Some(from)) = (changed, from) {
        let properties = vec![
            ("from".to_owned(), from.unwrap_or_default()),
            ("to".to_owned(), stage.unwrap_or_default()),
        ];
        v.services.track("veneer", "journey_stage", properties);
    }
}
