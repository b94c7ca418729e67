//! The single exit: every response, whatever produced it, leaves through [`respond`], which
//! turns a failure into its status, writes the visitor cookie, sets `x-request-id` and counts
//! the request once.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;
use super::ctx::RequestCtx;
use super::error::{ProxyError, Source};
use super::identify::VisitorCtx;
use crate::app::App;
use crate::visitor;

/// A short plain-text response from Veneer itself.
pub(super) fn full(status: StatusCode, text: impl Into<String>) -> Response<Body> {
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

/// Finishes a request. The rule for the visitor cookie: it is written on every response once
/// the visitor was identified (a failed origin still counts the visit), never before.
pub(super) fn respond(
    ctx: &mut RequestCtx,
    result: Result<Response<Body>, ProxyError>,
) -> Response<Body> {
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            ctx.outcome = e.outcome();
            let tenant = ctx.tenant_name();
            match e.source() {
                Source::Client | Source::Host => {
                    let (log, skipped) = ctx.app.refusal_log.admit();
                    if let Some(n) = skipped {
                        tracing::info!(
                            skipped = n,
                            "more requests were refused than logged (see veneer_errors_total)"
                        );
                    }
                    if log {
                        tracing::info!(tenant, request_id = %ctx.id, host = %ctx.host, error = e.detail(), "request refused");
                    }
                }
                Source::Origin => {
                    tracing::warn!(tenant, request_id = %ctx.id, error = e.detail(), "origin failed");
                }
            }
            ctx.app.metrics.inc(
                "veneer_errors_total",
                &[
                    ("tenant", tenant),
                    ("source", e.source_label()),
                    ("outcome", e.outcome()),
                ],
            );
            if let Some(kind) = e.origin_kind() {
                ctx.app.metrics.inc(
                    "veneer_origin_errors_total",
                    &[("tenant", tenant), ("kind", kind)],
                );
            }
            let mut r = full(e.status(), e.message(&ctx.host, &ctx.id));
            if let ProxyError::MethodNotAllowed(allow) = &e
                && let Ok(v) = HeaderValue::try_from(allow.as_str())
            {
                r.headers_mut().insert(header::ALLOW, v);
            }
            if let ProxyError::TooManyRequests(wait) = &e {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            if let ProxyError::TenantBusy = &e {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            r
        }
    };
    if let Some(status) = ctx.cache_status {
        response
            .headers_mut()
            .insert("x-veneer-cache", HeaderValue::from_static(status));
    }
    if ctx.preview.is_some() {
        // A preview is not a visit: no cookie, and never cached anywhere.
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    } else if let Some(v) = ctx.visitor.as_mut() {
        write_cookie(&ctx.app, v, response.headers_mut());
    }
    if let Ok(v) = HeaderValue::try_from(ctx.id.as_str()) {
        response.headers_mut().insert("x-request-id", v);
    }
    ctx.app.metrics.inc(
        "veneer_requests_total",
        &[("tenant", ctx.tenant_name()), ("outcome", ctx.outcome)],
    );
    response
}

/// Writes the visitor cookie with this request's sticky assignments.
fn write_cookie(app: &App, v: &mut VisitorCtx, headers: &mut HeaderMap) {
    let docs = v
        .services
        .sticky
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(doc) = docs.get(&v.sticky_key) {
        let mut assignments: BTreeMap<String, String> = doc.assignments.clone();
        while assignments.len() > visitor::MAX_ASSIGNMENTS {
            let Some(first) = assignments.keys().next().cloned() else {
                break;
            };
            assignments.remove(&first);
        }
        v.state.sticky = assignments;
    }
    drop(docs);
    let caps = v
        .services
        .caps
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    v.state.caps = caps.into_iter().take(visitor::MAX_ASSIGNMENTS).collect();
    let value = format!(
        "{}={}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax",
        visitor::COOKIE,
        app.signer.encode(&v.state)
    );
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.append(header::SET_COOKIE, value);
    }
}
