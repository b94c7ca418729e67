//! The front door: requests a proxy must not pass on are refused here, before any tenant work,
//! each with a clear 400 or 405 counted as a client error. hyper already re-frames every
//! request; these are the checks RFC 9110/9112 leave to an intermediary, where a front end and
//! Veneer (or Veneer and the origin) could otherwise disagree about what the request is.

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri};

use super::Body;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::finish::full;
use crate::app::Tenant;

/// Longest method name accepted (the registered ones are at most 17 bytes).
const MAX_METHOD: usize = 32;

/// The methods every tenant could serve, for `OPTIONS *`.
const ALLOW_ANY: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// What the front door decided.
pub(super) enum Admitted {
    /// Go on to the tenant.
    Proceed,
    /// Answered by the host itself (`OPTIONS *`).
    Reply(Response<Body>),
}

/// Checks the request line and framing headers.
pub(super) fn check(parts: &Parts) -> Result<Admitted, ProxyError> {
    let method = parts.method.as_str();
    if method.len() > MAX_METHOD
        || !method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(ProxyError::BadRequest("method is not an upper-case token"));
    }
    if parts.method == Method::CONNECT {
        // Veneer is not a forward proxy: nothing is tunnelled.
        return Err(ProxyError::MethodNotAllowed(ALLOW_ANY.to_owned()));
    }
    if parts.method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed(ALLOW_ANY.to_owned()));
    }
    if parts.uri == "*" {
        if parts.method != Method::OPTIONS {
            return Err(ProxyError::BadRequest("`*` is only a target for OPTIONS"));
        }
        let mut r = full(StatusCode::NO_CONTENT, "");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(ALLOW_ANY));
        return Ok(Admitted::Reply(r));
    }
    target(&parts.uri, &parts.headers, parts.version)?;
    if parts
        .extensions
        .get::<super::ConflictingFraming>()
        .is_some()
    {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    framing(&parts.headers)?;
    Ok(Admitted::Proceed)
}

fn target(uri: &Uri, headers: &HeaderMap, version: http::Version) -> Result<(), ProxyError> {
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if version >= http::Version::HTTP_2 {
        // HTTP/2 carries the target in pseudo-headers (hyper has checked them); a Host header
        // beside `:authority` must name the same host (RFC 9113 §8.3.1), or a front-end
        // reading one and Veneer the other would disagree about the site.
        return match (uri.authority(), host) {
            (Some(a), Some(h)) if !h.eq_ignore_ascii_case(a.as_str()) => Err(
                ProxyError::BadRequest(":authority and Host name different hosts"),
            ),
            _ => Ok(()),
        };
    }
    if version == http::Version::HTTP_11 && host.is_none() {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, absolute form or not.
        return Err(ProxyError::BadRequest(
            "HTTP/1.1 request without a Host header",
        ));
    }
    match (uri.scheme(), uri.authority()) {
        // Origin form: `/path?query`, the usual one.
        (None, None) => Ok(()),
        // Authority form (`host:port`) belongs to CONNECT alone.
        (None, Some(_)) => Err(ProxyError::BadRequest("authority-form target")),
        // Absolute form: accepted only when it names the same host as the Host header.
        (Some(_), Some(authority)) => match host {
            Some(h) if h.eq_ignore_ascii_case(authority.as_str()) => Ok(()),
            None => Ok(()),
            Some(_) => Err(ProxyError::BadRequest(
                "absolute-form target disagrees with Host",
            )),
        },
        (Some(_), None) => Err(ProxyError::BadRequest("target without a host")),
    }
}

fn framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let encodings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !encodings.is_empty() {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        // Exactly `chunked`: lenient readings (`Chunked`, `identity, chunked`, trailing
        // spaces) are how two parsers come to disagree about where a request ends.
        if encodings.len() != 1 || encodings[0].as_bytes() != b"chunked" {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding other than exactly `chunked`",
            ));
        }
    }
    for value in headers.values() {
        if value
            .as_bytes()
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(ProxyError::BadRequest(
                "control character in a header value",
            ));
        }
    }
    Ok(())
}

/// The tenant's own method allowlist.
pub(super) fn method_allowed(method: &Method, allowed: &[Method]) -> Result<(), ProxyError> {
    if allowed.contains(method) {
        return Ok(());
    }
    let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    Err(ProxyError::MethodNotAllowed(allow.join(", ")))
}

/// The tenant's per-client request rate, and a declared body over its size limit.
pub(super) fn within_limits(
    ctx: &RequestCtx,
    tenant: &Tenant,
    parts: &Parts,
) -> Result<(), ProxyError> {
    let limits = &tenant.config.limits;
    if let Some(ip) = ctx.client_ip {
        ctx.app
            .rates
            .take(
                &tenant.name,
                ip,
                limits.requests_per_second_per_client,
                limits.burst_per_client,
            )
            .map_err(ProxyError::TooManyRequests)?;
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(())
}
