//! The body: HTML is rewritten while it streams, JSON is buffered (size-capped) and patched,
//! anything else (and HEAD, 204, 304, 206, unknown codings) passes through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};

use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::{apply_edits, header_str};
use super::plugins::{Kept, Live, report_fault};
use super::{Body, BoxError};
use crate::app::Tenant;
use crate::plugin::PluginFault;
use crate::rewrite::{self, CheckedPlan, Coding, HtmlBody, HtmlJob, PluginHandle, hash_field};

/// What the client asked for that shapes the body.
pub(super) struct ClientView {
    /// A HEAD request (no body).
    pub(super) is_head: bool,
    /// The client's `Accept-Encoding`.
    pub(super) accept_encoding: Option<String>,
}

/// Applies the plans' header edits and personalizes the body; sets the request's outcome.
/// `cached_body` is the cache entry the body came from, if it did: a page rewritten before
/// from that very body by the very same plans is served from the tenant's cache.
pub(super) async fn personalize(
    ctx: &mut RequestCtx,
    tenant: &Tenant,
    client: ClientView,
    mut parts: http::response::Parts,
    body: Body,
    mut plans: Vec<(Live, CheckedPlan)>,
    cached_body: Option<u64>,
) -> Result<Response<Body>, ProxyError> {
    for (_, plan) in &plans {
        apply_edits(&mut parts.headers, &plan.plan.headers);
    }
    let (app, name, request_id) = (&ctx.app, tenant.config.name.clone(), ctx.id.clone());
    let status = parts.status;
    let content_type = header_str(&parts.headers, header::CONTENT_TYPE)
        .unwrap_or("")
        .to_ascii_lowercase();
    let bodyless = client.is_head
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
    let target = Coding::negotiate(client.accept_encoding.as_deref());

    let body: Body = match origin_coding {
        Some(from) if !bodyless && !partial && is_html && wants_html => {
            let output = tenant.cache.clone().zip(
                cached_body.and_then(|id| output_key(id, from, target, &content_type, &plans)),
            );
            let mut keep = None;
            if let Some((cache, key)) = output {
                let found = cache.output(&key);
                let status = match found {
                    crate::cache::Output::Hit(_) => "HIT",
                    _ => "MISS",
                };
                app.metrics.inc(
                    "veneer_output_cache_total",
                    &[("tenant", &name), ("status", status)],
                );
                parts
                    .headers
                    .insert("x-veneer-output-cache", HeaderValue::from_static(status));
                match found {
                    crate::cache::Output::Hit(bytes) => {
                        mark_rewritten(&mut parts.headers, target);
                        ctx.outcome = "rewritten_html";
                        let body = Full::new(bytes)
                            .map_err(|never| match never {})
                            .boxed_unsync();
                        return Ok(Response::from_parts(parts, body));
                    }
                    crate::cache::Output::Keep => keep = Some((cache, key)),
                    crate::cache::Output::Skip => {}
                }
            }
            // Set by any fault, or a page passed through unchanged: such a rewrite is not kept.
            let spoiled = Arc::new(AtomicBool::new(false));
            let kept: Vec<(Arc<str>, Kept)> = plans
                .iter_mut()
                .filter_map(|(live, _)| Some((live.name.clone(), live.kept.take()?)))
                .collect();
            let report: rewrite::FaultReporter = {
                let (app, tenant, request_id) = (app.clone(), name.clone(), request_id.clone());
                let spoiled = spoiled.clone();
                Arc::new(move |plugin: &str, fault: &PluginFault| {
                    spoiled.store(true, std::sync::atomic::Ordering::Relaxed);
                    if let Some((_, kept)) = kept.iter().find(|(name, _)| &**name == plugin) {
                        kept.faulted();
                    }
                    report_fault(&app, &tenant, plugin, &request_id, fault)
                })
            };
            let callbacks = plans
                .iter()
                .any(|(_, p)| p.touches_html() && !p.plan.subscribe.is_empty());
            let job = HtmlJob {
                plugins: plans
                    .into_iter()
                    .filter(|(_, p)| p.touches_html())
                    .map(|(live, plan)| {
                        let handle = PluginHandle::new(live.name, live.instance, live.budget);
                        (Arc::new(handle), plan)
                    })
                    .collect(),
                report,
                on_unsupported_charset: Some({
                    let (app, tenant, request_id) = (app.clone(), name.clone(), request_id.clone());
                    let spoiled = spoiled.clone();
                    Box::new(move |content_type: &str| {
                        spoiled.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(tenant = %tenant, request_id, content_type, "charset cannot be rewritten safely: page passed through unchanged");
                        app.metrics.inc(
                            "veneer_html_unsupported_charset_total",
                            &[("tenant", &tenant)],
                        );
                    })
                }),
            };
            mark_rewritten(&mut parts.headers, target);
            ctx.outcome = "rewritten_html";
            let rewritten = RewriteBody {
                inner: body,
                html: Some(HtmlBody::new(job, from, target, Some(&content_type))),
                next: None,
                turns: callbacks.then(|| {
                    let (app, tenant_name) = (app.clone(), name.clone());
                    Turns::new(
                        tenant.plugin_slots.clone(),
                        std::time::Duration::from_millis(
                            tenant.config.limits.plugin_time_ms.saturating_mul(10),
                        ),
                        Box::new(move || {
                            app.metrics.inc(
                                "veneer_plugin_skipped_total",
                                &[
                                    ("tenant", &tenant_name),
                                    ("plugin", "*"),
                                    ("reason", "tenant_busy"),
                                ],
                            );
                        }),
                    )
                }),
            }
            .boxed_unsync();
            match keep {
                // Kept only when every plugin's plan applied without a fault and the page was
                // rewritten: then the same inputs make the same bytes.
                Some((cache, key)) => {
                    let (app, tenant_name) = (app.clone(), name.clone());
                    StoreOutput {
                        inner: rewritten,
                        collected: Vec::new(),
                        limit: cache.max_object_bytes,
                        finish: Some(Box::new(move |bytes: Bytes| {
                            if !spoiled.load(std::sync::atomic::Ordering::Relaxed)
                                && cache.store_output(&key, bytes)
                            {
                                app.metrics.set(
                                    "veneer_output_cache_bytes",
                                    &[("tenant", &tenant_name)],
                                    cache.output_bytes() as u64,
                                );
                            }
                        })),
                    }
                    .boxed_unsync()
                }
                None => rewritten,
            }
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
                    ctx.outcome = "rewritten_json";
                    Full::new(Bytes::from(bytes))
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }
                Ok(Err(original)) => {
                    ctx.outcome = "passthrough";
                    original
                }
                Err(e) => return Err(ProxyError::OriginBody(e.to_string())),
            }
        }
        // Veneer asks the origin for gzip and br (so it can rewrite anything); a client that
        // takes neither gets the body decoded (or re-encoded) as it streams.
        Some(from)
            if !bodyless && !partial && !from.accepted_by(client.accept_encoding.as_deref()) =>
        {
            ctx.outcome = "passthrough";
            match target.header() {
                Some(name) => {
                    parts
                        .headers
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static(name));
                }
                None => {
                    parts.headers.remove(header::CONTENT_ENCODING);
                }
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::ETAG);
            parts
                .headers
                .append(header::VARY, HeaderValue::from_static("accept-encoding"));
            RecodeBody {
                inner: body,
                decoder: Some(rewrite::Decoder::new(from)),
                encoder: Some(rewrite::Encoder::new(target)),
            }
            .boxed_unsync()
        }
        _ => {
            ctx.outcome = "passthrough";
            body
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// The output cache's key for rewriting cached body `entry` with `plans`: a digest of all that
/// shapes the bytes (the body, its coding and type, the client's coding, and each plugin's
/// name, limits and rules in order). `None` when the rewrite is not a function of those alone:
/// element callbacks run plugin code per element, and a rule that records an event when it
/// applies must record it for every visitor.
fn output_key(
    entry: u64,
    from: Coding,
    target: Coding,
    content_type: &str,
    plans: &[(Live, CheckedPlan)],
) -> Option<String> {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let mut digest = sha2::Sha256::new();
    hash_field(
        &mut digest,
        format_args!("{entry}|{from:?}|{target:?}|{content_type}"),
    );
    for (live, plan) in plans.iter().filter(|(_, p)| p.touches_html()) {
        if plan.needs_instance() {
            return None;
        }
        hash_field(&mut digest, format_args!("{}", live.name));
        for n in live.budget.fingerprint() {
            digest.update(n.to_le_bytes());
        }
        digest.update(plan.html_fingerprint());
    }
    let hash = digest.finalize();
    let mut key = String::with_capacity(32);
    for b in &hash[..16] {
        let _ = write!(key, "{b:02x}");
    }
    Some(key)
}

/// Passes a body through, keeping a copy; at its end (and only if it ended well and fit in
/// `limit`) hands the whole of it to `finish`.
struct StoreOutput {
    inner: Body,
    collected: Vec<u8>,
    limit: usize,
    finish: Option<Box<dyn FnOnce(Bytes) + Send>>,
}

impl http_body::Body for StoreOutput {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && this.finish.is_some()
                {
                    if this.collected.len() + data.len() > this.limit {
                        this.finish = None;
                        this.collected = Vec::new();
                    } else {
                        this.collected.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.finish = None;
                this.collected = Vec::new();
            }
            Poll::Ready(None) => {
                if let Some(finish) = this.finish.take() {
                    // Kept bytes are counted by length: give the spare capacity back.
                    let mut collected = std::mem::take(&mut this.collected);
                    collected.shrink_to_fit();
                    finish(Bytes::from(collected));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Polled to its end while a copy is pending, so the copy is kept.
        self.finish.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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

/// Buffers a JSON body (up to `cap` decoded bytes) and patches it. `Ok(Err(body))` gives the
/// original bytes back untouched when the body is too large, not JSON, or a patch fails.
async fn json_body(
    mut body: Body,
    from: Coding,
    ops: &[crate::plugin::JsonOp],
    cap: usize,
) -> Result<Result<Vec<u8>, Body>, BoxError> {
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
            return Ok(Err(Chain {
                first: Some(head.boxed_unsync()),
                second: body,
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

/// A body decoded from one content coding and encoded into another as it streams.
struct RecodeBody {
    inner: Body,
    decoder: Option<rewrite::Decoder>,
    encoder: Option<rewrite::Encoder>,
}

impl http_body::Body for RecodeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let (Some(decoder), Some(encoder)) = (this.decoder.as_mut(), this.encoder.as_mut())
            else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let out = decoder.push(&data).and_then(|plain| encoder.push(&plain));
                    match out {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out.into())))),
                        Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                    }
                }
                Poll::Ready(None) => {
                    let (Some(decoder), Some(mut encoder)) =
                        (this.decoder.take(), this.encoder.take())
                    else {
                        return Poll::Ready(None);
                    };
                    let out = decoder.finish().and_then(|rest| {
                        let mut out = encoder.push(&rest)?;
                        out.extend(encoder.finish()?);
                        Ok(out)
                    });
                    return match out {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(out.into())))),
                        Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                    };
                }
            }
        }
    }
}

/// `first`, then `second`.
pub(super) fn chain(first: Body, second: Body) -> Body {
    Chain {
        first: Some(first),
        second,
    }
    .boxed_unsync()
}

/// A body that fails with `e` when read.
pub(super) fn failing(e: BoxError) -> Body {
    Failing(Some(e)).boxed_unsync()
}

struct Failing(Option<BoxError>);

impl http_body::Body for Failing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
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
    inner: Body,
    html: Option<HtmlBody>,
    /// What comes next for the rewriter, once it may run.
    next: Option<Step>,
    /// Set when the plans subscribe to element or text callbacks.
    turns: Option<Turns>,
}

enum Step {
    /// A chunk of the body; `last` when the origin has nothing after it.
    Chunk(Bytes, bool),
    Finish,
}

/// Streaming callbacks run inside the body's poll and cannot yield, so each chunk that runs
/// them takes one of the tenant's plugin turns (the ones `on-request` and `on-response`
/// take), and a chunk whose callbacks ran long pauses for as long while still holding the
/// turn. A tenant whose callbacks spin then holds at most half of its turns' worth of
/// threads, and never more turns than its `plugin_concurrency`.
struct Turns {
    slots: Arc<tokio::sync::Semaphore>,
    /// How long a chunk waits for a turn before it runs without one (the tenant's
    /// `10 × plugin_time_ms`, as `on-request` waits): a body must not stop mid-page for good.
    wait: std::time::Duration,
    acquiring: Option<Pin<Box<AcquireFuture>>>,
    /// A turn taken for the current chunk (released right after it, or by a timer).
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The current chunk may run (with a turn, or after waiting `wait` in vain).
    granted: bool,
    /// Called when no turn came in time: the body's plugins are stopped for the rest of it.
    starved: Box<dyn Fn() + Send>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

type AcquireFuture = dyn Future<
        Output = Result<
            Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            tokio::time::error::Elapsed,
        >,
    > + Send;

/// Callbacks running longer than this in one chunk make the chunk pause after them.
const LONG_CHUNK: std::time::Duration = std::time::Duration::from_millis(1);

impl Turns {
    fn new(
        slots: Arc<tokio::sync::Semaphore>,
        wait: std::time::Duration,
        starved: Box<dyn Fn() + Send>,
    ) -> Self {
        Turns {
            slots,
            wait,
            acquiring: None,
            held: None,
            granted: false,
            starved,
            pause: None,
        }
    }

    /// Ready once the last long chunk's pause is over and this chunk may run: `true` with a
    /// turn, `false` when none came in time.
    fn poll_turn(&mut self, cx: &mut TaskContext<'_>) -> Poll<bool> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        if self.granted {
            return Poll::Ready(true);
        }
        // A wait already under way goes first: its permit may have been handed over.
        if self.acquiring.is_none() {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                self.held = Some(permit);
                self.granted = true;
                return Poll::Ready(true);
            }
            let (slots, wait) = (self.slots.clone(), self.wait);
            self.acquiring = Some(Box::pin(tokio::time::timeout(wait, slots.acquire_owned())));
        }
        let Some(acquiring) = self.acquiring.as_mut() else {
            return Poll::Ready(false);
        };
        match acquiring.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(outcome) => {
                self.acquiring = None;
                self.held = outcome.ok().and_then(Result::ok);
                self.granted = true;
                if self.held.is_none() {
                    // No turn in time: the tenant's plugins are busy elsewhere; this body goes
                    // on without them rather than stop mid-page.
                    (self.starved)();
                }
                Poll::Ready(self.held.is_some())
            }
        }
    }

    /// After a chunk. A long one holds its turn for as long again, on a timer (not until this
    /// body is polled next: a client that stops reading must not keep the turn), and this body
    /// pauses as long before its next chunk.
    fn ran(&mut self, took: std::time::Duration) {
        self.granted = false;
        let permit = self.held.take();
        if took >= LONG_CHUNK {
            if let Some(permit) = permit {
                tokio::spawn(async move {
                    tokio::time::sleep(took).await;
                    drop(permit);
                });
            }
            self.pause = Some(Box::pin(tokio::time::sleep(took)));
        }
    }
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
            if this.html.is_none() {
                return Poll::Ready(None);
            }
            if this.next.is_none() {
                this.next = match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(e))) => {
                        this.html = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => Some(Step::Chunk(data, this.inner.is_end_stream())),
                        Err(_) => continue,
                    },
                    Poll::Ready(None) => Some(Step::Finish),
                };
            }
            if let Some(turns) = this.turns.as_mut() {
                match turns.poll_turn(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(false) => {
                        if let Some(html) = this.html.as_ref() {
                            html.stop_plugins();
                        }
                        // Nothing left to call back: no more turns needed.
                        this.turns = None;
                    }
                    Poll::Ready(true) => {}
                }
            }
            let (Some(step), Some(html)) = (this.next.take(), this.html.as_mut()) else {
                return Poll::Ready(None);
            };
            let started = std::time::Instant::now();
            let out = match step {
                Step::Chunk(data, last) => {
                    let pushed = html.push(data);
                    if pushed.is_ok() && last {
                        // The last chunk: finish now, so a small page goes out in one write.
                        match (pushed, this.html.take().map(HtmlBody::finish)) {
                            (Ok(a), Some(Ok(b))) if b.is_empty() => Ok(a),
                            (Ok(a), Some(Ok(b))) if a.is_empty() => Ok(b),
                            (Ok(a), Some(Ok(b))) => Ok([a, b].concat().into()),
                            (Err(e), _) | (_, Some(Err(e))) => Err(e),
                            (Ok(a), None) => Ok(a),
                        }
                    } else {
                        pushed
                    }
                }
                Step::Finish => match this.html.take() {
                    Some(html) => html.finish(),
                    None => return Poll::Ready(None),
                },
            };
            if let Some(turns) = this.turns.as_mut() {
                turns.ran(started.elapsed());
            }
            match out {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(e) => {
                    this.html = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }
}
