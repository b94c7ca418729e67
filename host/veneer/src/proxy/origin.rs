//! The request to the tenant's origin: the client's request minus hop-by-hop headers and
//! Veneer's cookie, plus the plugins' header edits and forwarding headers, with a timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::{apply_edits, forwarded_for, strip_hop_by_hop};
use super::identify::VisitorCtx;
use super::{BoxError, ClientAddr};
use crate::app::Tenant;
use crate::plugin::HeaderEdits;

/// The request headers the origin gets: hop-by-hop and client claims removed, the visitor's
/// own cookies only, the plugins' edits, and Veneer's forwarding headers. The cache compares
/// `Vary` against exactly these.
pub(super) fn origin_headers(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    headers: http::HeaderMap,
    extensions: &http::Extensions,
    edits: &[HeaderEdits],
) -> http::HeaderMap {
    let mut headers = headers;
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
    if let Some(ClientAddr(peer)) = extensions.get::<ClientAddr>() {
        // Append to the chain a trusted proxy in front of Veneer started; anyone else's
        // X-Forwarded-For is replaced, so a client cannot pose as another address.
        let previous = forwarded_for(&headers);
        let chain = if ctx.trusted && !previous.is_empty() {
            format!("{previous}, {}", peer.ip())
        } else {
            peer.ip().to_string()
        };
        if let Ok(c) = HeaderValue::try_from(chain) {
            headers.insert("x-forwarded-for", c);
        }
    }
    if let Ok(id) = HeaderValue::try_from(ctx.id.as_str()) {
        headers.insert("x-request-id", id);
    }
    // The origin builds absolute links and secure cookies from this; a client's own claim is
    // replaced like the other forwarding headers (a trusted proxy's is kept).
    if !(ctx.trusted && headers.contains_key("x-forwarded-proto")) {
        let proto = if extensions.get::<super::Tls>().is_some() {
            "https"
        } else {
            "http"
        };
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if let Ok(h) = HeaderValue::try_from(tenant.origin.as_str()) {
        headers.insert(header::HOST, h);
    }
    headers
}

/// Sends the request on and waits for the origin's response head.
pub(super) async fn fetch(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    parts: Parts,
    body: Incoming,
    edits: &[HeaderEdits],
) -> Result<Response<Incoming>, ProxyError> {
    let headers = origin_headers(ctx, tenant, v, parts.headers, &parts.extensions, edits);
    send(ctx, tenant, v, parts.method, headers, body).await
}

/// Like [`fetch`], with the origin's request headers already made by [`origin_headers`].
pub(super) async fn send(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    method: http::Method,
    headers: http::HeaderMap,
    body: Incoming,
) -> Result<Response<Incoming>, ProxyError> {
    let uri = format!("http://{}{}", tenant.origin, v.path_and_query)
        .parse()
        .map_err(|_| ProxyError::BadTarget)?;
    let client_failed = Arc::new(AtomicU8::new(0));
    let progress = Arc::new(Progress::default());
    progress
        .done
        .store(http_body::Body::is_end_stream(&body), Ordering::Relaxed);
    let body = WatchedBody {
        inner: body,
        progress: progress.clone(),
        failed: client_failed.clone(),
        read: 0,
        max: tenant.config.limits.max_body_bytes,
        stall: Duration::from_millis(tenant.config.limits.body_read_timeout_ms),
        timer: None,
    };
    let mut request = Request::new(body.boxed_unsync());
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    *request.uri_mut() = uri;
    let app = &ctx.app;
    let mut sending = std::pin::pin!(app.client.request(request));
    // While the client's body is still being sent, the origin's timeout does not run: a slow
    // upload is the body's stall timeout's business. It does run when the origin stops taking
    // the body (nothing sent for a whole timeout while the client has more to give).
    let mut frames = progress.frames.load(Ordering::Relaxed);
    while !progress.done.load(Ordering::Relaxed) {
        match tokio::time::timeout(app.origin_timeout, &mut sending).await {
            Ok(result) => return classify(result, &client_failed),
            Err(_) => {
                let now = progress.frames.load(Ordering::Relaxed);
                let waiting_on_client = progress.waiting_on_client.load(Ordering::Relaxed);
                if now == frames && !waiting_on_client && !progress.done.load(Ordering::Relaxed) {
                    return Err(ProxyError::OriginTimeout);
                }
                frames = now;
            }
        }
    }
    match tokio::time::timeout(app.origin_timeout, sending).await {
        Ok(result) => classify(result, &client_failed),
        Err(_) => Err(ProxyError::OriginTimeout),
    }
}

/// Whose fault a failed origin request was.
fn classify(
    result: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    client_failed: &AtomicU8,
) -> Result<Response<Incoming>, ProxyError> {
    match result {
        Ok(r) => Ok(r),
        // The client's own body broke (bad chunked framing, cut short): its fault, not the
        // origin's, whatever the connection to the origin made of it.
        Err(e) if client_failed.load(Ordering::Relaxed) != 0 => {
            Err(match client_failed.load(Ordering::Relaxed) {
                TOO_LARGE => ProxyError::BodyTooLarge,
                STALLED => ProxyError::BodyTimeout,
                _ => ProxyError::ClientBody(e.to_string()),
            })
        }
        Err(e) => Err(ProxyError::OriginUnreachable(e.to_string())),
    }
}

/// How far the client's body has got on its way to the origin.
#[derive(Default)]
struct Progress {
    /// Frames passed on.
    frames: AtomicU64,
    /// The body is waiting for the client (not for the origin to take it).
    waiting_on_client: AtomicBool,
    /// The body has ended (or there is none).
    done: AtomicBool,
}

/// How the client's body ended, when it did not end well.
const BROKEN: u8 = 1;
const TOO_LARGE: u8 = 2;
const STALLED: u8 = 3;

/// The client's request body on its way to the origin: size-capped, with a stall timeout, and
/// noting why it failed if it did, so the failure is charged to the client.
struct WatchedBody {
    inner: Incoming,
    progress: Arc<Progress>,
    failed: Arc<AtomicU8>,
    read: u64,
    max: u64,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.progress
                    .waiting_on_client
                    .store(true, Ordering::Relaxed);
                if stalled(&mut this.timer, this.stall, cx) {
                    this.failed.store(STALLED, Ordering::Relaxed);
                    return Poll::Ready(Some(Err("request body stalled".into())));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                this.progress
                    .waiting_on_client
                    .store(false, Ordering::Relaxed);
                this.progress.frames.fetch_add(1, Ordering::Relaxed);
                if this.inner.is_end_stream() {
                    this.progress.done.store(true, Ordering::Relaxed);
                }
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.max {
                        this.failed.store(TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("request body too large".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed.store(BROKEN, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.progress.done.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The origin's response body, failed when the origin sends nothing for `[server]
/// origin_read_timeout_ms` between two frames (like nginx's `proxy_read_timeout`). A body that
/// stops mid-way would otherwise hold the visitor's connection, a plugin's instance and a cache
/// fill that other requests wait on for as long as the origin keeps its connection open. A stall is counted as
/// `veneer_origin_errors_total{kind="body_stalled"}`; the visitor's response, already under
/// way, is cut off.
pub(super) struct StallWatch {
    inner: Incoming,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    tenant: Arc<str>,
    app: Arc<crate::app::App>,
}

impl StallWatch {
    /// Watches `inner`, the body of `tenant`'s origin response.
    pub(super) fn new(inner: Incoming, app: &Arc<crate::app::App>, tenant: &Arc<str>) -> Self {
        StallWatch {
            inner,
            timer: None,
            tenant: tenant.clone(),
            app: app.clone(),
        }
    }
}

impl http_body::Body for StallWatch {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let stall = this.app.origin_read_timeout;
                if !stalled(&mut this.timer, stall, cx) {
                    return Poll::Pending;
                }
                this.app.metrics.inc(
                    "veneer_origin_errors_total",
                    &[("tenant", &this.tenant), ("kind", "body_stalled")],
                );
                tracing::warn!(tenant = %this.tenant, stalled_ms = stall.as_millis() as u64, "the origin's response body stalled: cut off");
                Poll::Ready(Some(Err("the origin's response body stalled".into())))
            }
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body that has just had nothing to give has now had nothing for `stall`: `timer`
/// starts at its first wait and is cleared (by the caller) when a frame comes.
fn stalled(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    stall: Duration,
    cx: &mut Context<'_>,
) -> bool {
    timer
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)))
        .as_mut()
        .poll(cx)
        .is_ready()
}
