//! The request flow. [`handle`] is the only place the order of the stages is written:
//!
//! ```text
//! admit (request hygiene)          → error: bad request (400) │ CONNECT, TRACE (405) │ OPTIONS * answered
//! route (tenant by Host, methods)  → error: unknown host (404) │ method not allowed here (405)
//!                                    │ tenant at its concurrency cap (503) │ over rate (429)
//! identify (cookie, device, geo, locale, UTM, consent, customer and profile, journey stage
//!           → segments, one shared visitor)
//! opens (e-mail image or click)    → GET /_veneer/i/TOKEN/SLOT.png: always 200 and an image;
//!                                    GET /_veneer/c/TOKEN/SLOT: 302 to what the image showed
//! events::beacon                   → POST /_veneer/event answered here (204), never proxied
//! plugins::on_request              → a plugin may answer: redirect │ its own response
//! cached::fetch (→ origin)         → the tenant cache's entry │ the origin's response
//!                                    error: unreachable (502) │ too slow (504) │ bad target (400)
//! events::origin_signals           → the origin's `veneer-identify` (link a customer) and
//!                                    `veneer-event` (cart events), taken out of the response
//! plugins::on_response             → header edits + checked plans
//! body::personalize                → HTML streamed through the rewriter (or, for a cached page
//!                                    and plans without callbacks, the tenant cache's copy of
//!                                    the same rewrite) │ JSON patched │ untouched
//! events::after_response           → page_view (and the page's category for affinity), path
//!                                    goals reached (conversions)
//! finish::respond                  → the single exit: status for errors, visitor cookie,
//!                                    x-request-id, one count in veneer_requests_total
//! ```
//!
//! Plugin faults never reach the visitor: a plugin that traps, times out, runs out of memory or
//! asks for what the host refuses is dropped from this request's chain, logged and counted,
//! and the response is what it would have been without it. Failures that do reach the client
//! are [`error::ProxyError`]s, mapped to their status in one place.

mod admit;
mod body;
mod cached;
mod ctx;
mod error;
mod events;
mod finish;
mod headers;
mod identify;
mod memo;
pub mod message;
mod opens;
mod origin;
mod plugins;
mod services;

pub use memo::Memo;

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use jiff::Timestamp;

use crate::app::App;
use ctx::RequestCtx;
use error::ProxyError;
use headers::header_str;

/// The client's socket address, put in request extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Put in request extensions by the TLS listener: the client connected over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// Put in request extensions by the listener when the request's raw head carried both
/// `Content-Length` and `Transfer-Encoding` (hyper drops the length before a service sees it).
#[derive(Debug, Clone, Copy)]
pub struct ConflictingFraming;

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The front door's verdict on a request head as a status, `None` when the request goes on to
/// a tenant (`OPTIONS *`, answered by the host, is `204`). The fuzz targets feed it arbitrary
/// heads; [`handle`] runs the same checks.
pub fn admit_status(parts: &http::request::Parts) -> Option<http::StatusCode> {
    match admit::check(parts) {
        Ok(admit::Admitted::Proceed) => None,
        Ok(admit::Admitted::Reply(r)) => Some(r.status()),
        Err(e) => Some(e.status()),
    }
}

/// Handles one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    // Only a trusted proxy in front of Veneer may name the request (or say who the client is).
    let peer = req
        .extensions()
        .get::<ClientAddr>()
        .map(|ClientAddr(p)| p.ip());
    let trusted = peer.is_some_and(|ip| app.is_trusted(ip));
    let client_ip = if trusted {
        // Walk back through the proxies, over every X-Forwarded-For line: the nearest address
        // that is not one of ours. An entry that is not an address ends the walk (whatever is
        // left of it could be the client's own invention).
        let chain = headers::forwarded_for(req.headers());
        let mut nearest = peer;
        for entry in chain.rsplit(',') {
            match entry.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if app.is_trusted(ip) => nearest = Some(ip),
                Ok(ip) => {
                    nearest = Some(ip);
                    break;
                }
                Err(_) => break,
            }
        }
        nearest
    } else {
        peer
    };
    let id = header_str(req.headers(), "x-request-id")
        .filter(|v| trusted && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header_str(req.headers(), header::HOST).map(str::to_owned))
        .unwrap_or_default();
    let mut ctx = RequestCtx {
        app,
        id,
        host,
        trusted,
        client_ip,
        now: Timestamp::now(),
        tenant: None,
        visitor: None,
        outcome: "passthrough",
        cache_status: None,
        preview: None,
        message: None,
    };
    let result = run(&mut ctx, req).await;
    finish::respond(&mut ctx, result)
}

/// A preview link (`veneer_preview=TOKEN` in the query): verified, taken out of the URL the
/// origin sees, and its instant made the request's.
fn preview(
    ctx: &mut RequestCtx,
    tenant: &crate::app::Tenant,
    parts: &mut http::request::Parts,
) -> Result<(), ProxyError> {
    let (p, rest) = match parts.uri.query().and_then(crate::preview::take_from_query) {
        Some((token, rest)) => (
            crate::preview::Preview::verify(
                &ctx.app.signer,
                &token,
                &tenant.name,
                ctx.now.as_second(),
            )
            .map_err(|r| ProxyError::BadPreview(r.reason()))?,
            rest,
        ),
        // A development host takes the visitor's settings straight from the query.
        None if ctx.app.dev => {
            let query = parts.uri.query().unwrap_or_default();
            match crate::preview::dev_switches(query, &tenant.name)
                .map_err(ProxyError::BadDevSwitch)?
            {
                Some(found) => found,
                None => return Ok(()),
            }
        }
        None => return Ok(()),
    };
    let path_and_query = if rest.is_empty() {
        parts.uri.path().to_owned()
    } else {
        format!("{}?{rest}", parts.uri.path())
    };
    let mut uri = http::uri::Parts::from(parts.uri.clone());
    uri.path_and_query = path_and_query.parse().ok();
    parts.uri = http::Uri::from_parts(uri).map_err(|_| ProxyError::BadTarget)?;
    if let Some(at) = p.at {
        ctx.now = at;
    }
    ctx.app
        .metrics
        .inc("veneer_preview_requests_total", &[("tenant", &tenant.name)]);
    ctx.preview = Some(Arc::new(p));
    Ok(())
}

/// The stages, in order; `?` is every early exit.
async fn run(ctx: &mut RequestCtx, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    if let admit::Admitted::Reply(response) = admit::check(&parts)? {
        ctx.outcome = "options";
        return Ok(response);
    }
    let tenant = ctx.app.tenant(&ctx.host).ok_or(ProxyError::UnknownHost)?;
    ctx.tenant = Some(tenant.clone());
    // E-mail images and clicks: answered here, before the tenant's concurrency cap, its
    // methods and per-client limits (an image proxy fetches for many readers from few
    // addresses), so an image request always gets an image.
    if opens::is_email_path(parts.uri.path()) {
        return Ok(opens::answer(ctx, &tenant, &parts).await);
    }
    // Held until the response head is ready (streaming bodies are not counted).
    let _slot = match &tenant.request_slots {
        Some(slots) => Some(
            slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| ProxyError::TenantBusy)?,
        ),
        None => None,
    };
    admit::method_allowed(&parts.method, &tenant.methods)?;
    if let Err(e) = admit::within_limits(ctx, &tenant, &parts) {
        if matches!(e, ProxyError::TooManyRequests(_)) {
            let delay = tenant.config.limits.refusal_delay_ms;
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        return Err(e);
    }
    preview(ctx, &tenant, &mut parts)?;
    let visitor = identify::visitor(ctx, &tenant, &parts).await;
    if parts.uri.path() == events::BEACON_PATH {
        let answer = events::beacon(ctx, &tenant, &visitor, &parts, body).await;
        ctx.visitor = Some(visitor);
        return answer;
    }
    let requested = plugins::on_request(ctx, &tenant, &visitor).await;
    let (chain, edits) = match requested {
        plugins::Requested::Continue { chain, edits } => (chain, edits),
        plugins::Requested::Reply(response, outcome) => {
            ctx.outcome = outcome;
            ctx.visitor = Some(visitor);
            return Ok(response);
        }
    };
    let client = body::ClientView {
        is_head: parts.method == Method::HEAD,
        accept_encoding: header_str(&parts.headers, header::ACCEPT_ENCODING).map(str::to_owned),
    };
    let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
    let started = std::time::Instant::now();
    let fetched = cached::fetch(ctx, &tenant, &visitor, parts, body, &edits).await;
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            ctx.visitor = Some(visitor);
            return Err(e);
        }
    };
    // Only answers that came from the origin time the origin.
    if !matches!(fetched.status, Some("HIT" | "STALE")) {
        ctx.app.metrics.observe(
            "veneer_origin_response_seconds",
            &[("tenant", &tenant.name)],
            started.elapsed(),
        );
    }
    if let Some(status) = fetched.status {
        ctx.cache_status = Some(status);
        ctx.app.metrics.inc(
            "veneer_cache_requests_total",
            &[("tenant", &tenant.name), ("status", status)],
        );
    }
    let (mut head, body) = fetched.response.into_parts();
    let mut visitor = visitor;
    let signals = events::take_origin_signals(&mut head.headers);
    events::origin_signals(ctx, &tenant, &mut visitor, signals).await;
    let plans = plugins::on_response(ctx, &tenant, &visitor, chain, &head).await;
    ctx.visitor = Some(visitor);
    let response =
        body::personalize(ctx, &tenant, client, head, body, plans, fetched.entry).await?;
    if let Some(visitor) = &ctx.visitor {
        events::after_response(&tenant, visitor, &method, &path, &response);
    }
    Ok(response)
}
