//! The request to the tenant's origin: the client's request minus hop-by-hop headers and
//! Veneer's cookie, plus the plugins' header edits and forwarding headers, with a timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ClientAddr;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::{apply_edits, header_str, strip_hop_by_hop};
use super::identify::VisitorCtx;
use crate::app::Tenant;
use crate::plugin::HeaderEdits;

/// Sends the request on and waits for the origin's response head.
pub(super) async fn fetch(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    parts: Parts,
    body: Incoming,
    edits: &[HeaderEdits],
) -> Result<Response<Incoming>, ProxyError> {
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // Veneer answers `Expect: 100-continue` itself (hyper sends the 100 when the body is read).
    headers.remove(header::EXPECT);
    if !ctx.trusted
        && let Some(geo) = tenant.config.geo_header.as_deref()
    {
        // The origin must not believe a country a client claimed either.
        headers.remove(geo);
    }
    headers.remove(header::COOKIE);
    if !v.origin_cookie.is_empty()
        && let Ok(c) = HeaderValue::try_from(v.origin_cookie.as_str())
    {
        headers.insert(header::COOKIE, c);
    }
    for e in edits {
        apply_edits(&mut headers, e);
    }
    // Ask only for codings Veneer can decode, so any HTML response can be rewritten.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, br"),
    );
    if let Ok(h) = HeaderValue::try_from(ctx.host.as_str()) {
        headers.insert("x-forwarded-host", h);
    }
    if let Some(ClientAddr(peer)) = parts.extensions.get::<ClientAddr>() {
        // Append to the chain a trusted proxy in front of Veneer started; anyone else's
        // X-Forwarded-For is replaced, so a client cannot pose as another address.
        let chain = match header_str(&headers, "x-forwarded-for").filter(|_| ctx.trusted) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(c) = HeaderValue::try_from(chain) {
            headers.insert("x-forwarded-for", c);
        }
    }
    if let Ok(id) = HeaderValue::try_from(ctx.id.as_str()) {
        headers.insert("x-request-id", id);
    }
    if let Ok(h) = HeaderValue::try_from(tenant.origin.as_str()) {
        headers.insert(header::HOST, h);
    }
    let uri = format!("http://{}{}", tenant.origin, v.path_and_query)
        .parse()
        .map_err(|_| ProxyError::BadTarget)?;
    let client_failed = Arc::new(AtomicBool::new(false));
    let body = WatchedBody {
        inner: body,
        failed: client_failed.clone(),
    };
    let mut request = Request::new(body.boxed_unsync());
    *request.method_mut() = parts.method;
    *request.headers_mut() = headers;
    *request.uri_mut() = uri;
    let app = &ctx.app;
    match tokio::time::timeout(app.origin_timeout, app.client.request(request)).await {
        Ok(Ok(r)) => Ok(r),
        // The client's own body broke (bad chunked framing, cut short): its fault, not the
        // origin's, whatever the connection to the origin made of it.
        Ok(Err(e)) if client_failed.load(Ordering::Relaxed) => {
            Err(ProxyError::ClientBody(e.to_string()))
        }
        Ok(Err(e)) => Err(ProxyError::OriginUnreachable(e.to_string())),
        Err(_) => Err(ProxyError::OriginTimeout),
    }
}

/// The client's request body on its way to the origin, noting whether it broke.
struct WatchedBody {
    inner: Incoming,
    failed: Arc<AtomicBool>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
