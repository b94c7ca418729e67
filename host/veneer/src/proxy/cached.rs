//! The origin, through the tenant's cache when it has one (see [`crate::cache`]): a fresh
//! entry is served without contacting the origin, a stale one is revalidated (in the
//! background within `stale-while-revalidate`), and concurrent misses for one key make one
//! origin request. The status (`HIT`, `MISS`, `STALE`, `REVALIDATED`, `EXPIRED`, `BYPASS`)
//! goes out in `x-veneer-cache` and `veneer_cache_requests_total`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::Body;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::strip_hop_by_hop;
use super::identify::VisitorCtx;
use super::origin;
use crate::app::Tenant;
use crate::cache::{self, Cache, Entry, Fill, Lookup};
use crate::plugin::HeaderEdits;

/// The origin's response (or the cache's), with the cache status when the tenant has a cache.
pub(super) struct Fetched {
    pub(super) response: Response<Body>,
    pub(super) status: Option<&'static str>,
    /// The [`Entry::id`] of the stored body the response carries, when it came from the cache.
    pub(super) entry: Option<u64>,
}

/// The origin's response as the proxy passes it on: hop-by-hop headers gone, the body watched
/// for stalls.
fn boxed(ctx: &RequestCtx, tenant: &Tenant, r: Response<Incoming>) -> Response<Body> {
    let (mut head, body) = r.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let body = origin::StallWatch::new(body, &ctx.app, &tenant.name);
    Response::from_parts(head, body.boxed_unsync())
}

fn from_entry(e: &Entry, head_only: bool) -> Response<Body> {
    let body = if head_only {
        Bytes::new()
    } else {
        e.body.clone()
    };
    let mut r = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = e.status;
    *r.headers_mut() = e.headers.clone();
    r.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age().as_secs()));
    r
}

/// Fetches through the cache (or straight from the origin without one).
pub(super) async fn fetch(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    parts: Parts,
    body: Incoming,
    edits: &[HeaderEdits],
) -> Result<Fetched, ProxyError> {
    let Some(cache) = tenant.cache.clone() else {
        let r = origin::fetch(ctx, tenant, v, parts, body, edits).await?;
        return Ok(Fetched {
            response: boxed(ctx, tenant, r),
            status: None,
            entry: None,
        });
    };
    let Some(no_cache) = cache::request_policy(&parts.method, &parts.headers) else {
        let r = origin::fetch(ctx, tenant, v, parts, body, edits).await?;
        return Ok(Fetched {
            response: boxed(ctx, tenant, r),
            status: Some("BYPASS"),
            entry: None,
        });
    };
    let head_only = parts.method == Method::HEAD;
    // Varying headers are compared as the origin sees them (after the plugins' edits, with
    // Veneer's forwarding headers); the key holds the scheme the origin is told, the host
    // (a tenant's hosts may be different sites to its origin) and the target.
    // Built once: compared here and sent as they are.
    let seen = origin::origin_headers(ctx, tenant, v, parts.headers, &parts.extensions, edits);
    let proto = seen
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .unwrap_or("http");
    let key = format!(
        "{proto} {} {}",
        ctx.host.to_ascii_lowercase(),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    // Credentials make the answer the visitor's own unless the origin says otherwise.
    let authorized = seen.contains_key(header::AUTHORIZATION) || seen.contains_key(header::COOKIE);
    let mut waited = false;
    loop {
        match cache.lookup(&key, &seen, no_cache) {
            Lookup::Fresh(e) => {
                return Ok(Fetched {
                    response: from_entry(&e, head_only),
                    status: Some("HIT"),
                    entry: Some(e.id),
                });
            }
            // Revalidated in the background only without credentials: that request goes out
            // on behalf of nobody in particular.
            Lookup::StaleWhileRevalidate(e) if !authorized => {
                if let Fill::Leader(guard) = cache.begin_fill(&key) {
                    let (app, origin) = (ctx.app.clone(), tenant.origin.clone());
                    let (cache, key, seen, e) =
                        (cache.clone(), key.clone(), seen.clone(), e.clone());
                    tokio::spawn(async move {
                        revalidate_in_background(&app, &origin, &cache, &key, &seen, &e).await;
                        drop(guard);
                    });
                }
                return Ok(Fetched {
                    response: from_entry(&e, head_only),
                    status: Some("STALE"),
                    entry: Some(e.id),
                });
            }
            Lookup::Stale(e) | Lookup::StaleWhileRevalidate(e) => {
                let mut headers = seen.clone();
                for (name, value) in e.validators() {
                    headers.insert(name, value);
                }
                let r = origin::send(ctx, tenant, v, parts.method, headers, body).await?;
                if r.status() == StatusCode::NOT_MODIFIED {
                    let mut not_modified = r.headers().clone();
                    strip_hop_by_hop(&mut not_modified);
                    let (response, entry) = match e.refreshed(&not_modified, &seen) {
                        Some(fresh) => {
                            let response = from_entry(&fresh, head_only);
                            let id = fresh.id;
                            cache.store(&key, fresh);
                            (response, id)
                        }
                        None => (from_entry(&e, head_only), e.id),
                    };
                    return Ok(Fetched {
                        response,
                        status: Some("REVALIDATED"),
                        entry: Some(entry),
                    });
                }
                return Ok(Fetched {
                    response: keep(ctx, tenant, &cache, &key, &seen, authorized, head_only, r)
                        .await,
                    status: Some("EXPIRED"),
                    entry: None,
                });
            }
            Lookup::Miss if head_only || waited => {
                // A HEAD cannot fill the cache; a second miss after waiting means the
                // response was not storable: fetch without coalescing.
                let r = origin::send(ctx, tenant, v, parts.method, seen.clone(), body).await?;
                return Ok(Fetched {
                    response: keep(ctx, tenant, &cache, &key, &seen, authorized, head_only, r)
                        .await,
                    status: Some("MISS"),
                    entry: None,
                });
            }
            Lookup::Miss => match cache.begin_fill(&key) {
                Fill::Leader(guard) => {
                    let r = origin::send(ctx, tenant, v, parts.method, seen.clone(), body).await?;
                    let response =
                        keep(ctx, tenant, &cache, &key, &seen, authorized, false, r).await;
                    drop(guard);
                    return Ok(Fetched {
                        response,
                        status: Some("MISS"),
                        entry: None,
                    });
                }
                Fill::Follower(done) => {
                    // Someone is fetching this key: wait for it (bounded), then look again.
                    let _ = tokio::time::timeout(ctx.app.origin_timeout, done).await;
                    waited = true;
                }
            },
        }
    }
}

/// Stores the origin's response when it may be, and gives it back either way. The answer to a
/// HEAD has no body to keep.
#[allow(clippy::too_many_arguments)]
async fn keep(
    ctx: &RequestCtx,
    tenant: &Tenant,
    cache: &Arc<Cache>,
    key: &str,
    seen: &HeaderMap,
    authorized: bool,
    head_only: bool,
    r: Response<Incoming>,
) -> Response<Body> {
    let r = boxed(ctx, tenant, r);
    if head_only {
        return r;
    }
    let Some(freshness) = cache::storable(r.status(), r.headers(), authorized) else {
        return r;
    };
    let declared = r
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > cache.max_object_bytes) {
        return r;
    }
    let (head, body) = r.into_parts();
    // Read the whole body (bounded); one too large, or broken, goes on as it came.
    let mut collected = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    collected.extend_from_slice(&data);
                    if collected.len() > cache.max_object_bytes {
                        let first = Full::new(Bytes::from(collected))
                            .map_err(|never| match never {})
                            .boxed_unsync();
                        return Response::from_parts(head, super::body::chain(first, body));
                    }
                }
            }
            Err(e) => {
                let first = Full::new(Bytes::from(collected))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                return Response::from_parts(
                    head,
                    super::body::chain(first, super::body::failing(e)),
                );
            }
        }
    }
    // Stored bytes are counted by length: give the spare capacity back.
    collected.shrink_to_fit();
    let entry = Entry::new(
        head.status,
        head.headers.clone(),
        Bytes::from(collected),
        freshness,
        seen,
    );
    let response = from_entry(&entry, false);
    if cache.store(key, entry) {
        ctx.app.metrics.set(
            "veneer_cache_bytes",
            &[("tenant", &tenant.name)],
            cache.bytes() as u64,
        );
    }
    response
}

/// Revalidates a stale entry with the origin, outside any client request.
async fn revalidate_in_background(
    app: &crate::app::App,
    origin: &http::uri::Authority,
    cache: &Arc<Cache>,
    key: &str,
    seen: &HeaderMap,
    e: &Arc<Entry>,
) {
    let path = key.splitn(3, ' ').nth(2).unwrap_or("/");
    let uri = format!("http://{origin}{path}");
    let mut req = http::Request::new(
        http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    let Ok(uri) = uri.parse() else { return };
    *req.uri_mut() = uri;
    // The headers the origin saw for the request that found the entry stale (no credentials:
    // such requests revalidate inline), so the answer fits this variant.
    *req.headers_mut() = seen.clone();
    for (name, value) in e.validators() {
        req.headers_mut().insert(name, value);
    }
    let answer = tokio::time::timeout(app.origin_timeout, app.client.request(req)).await;
    let Ok(Ok(r)) = answer else {
        return;
    };
    if r.status() == StatusCode::NOT_MODIFIED {
        let mut not_modified = r.headers().clone();
        strip_hop_by_hop(&mut not_modified);
        if let Some(fresh) = e.refreshed(&not_modified, seen) {
            cache.store(key, fresh);
        }
        return;
    }
    // Outside any request, the whole read is bounded below instead of each wait.
    let (mut head, mut body) = r.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let Some(freshness) = cache::storable(head.status, &head.headers, false) else {
        return;
    };
    let mut collected = Vec::new();
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                collected.extend_from_slice(&data);
                if collected.len() > cache.max_object_bytes {
                    return false;
                }
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(30), read_all).await,
        Ok(true)
    ) {
        return;
    }
    collected.shrink_to_fit();
    let entry = Entry::new(
        head.status,
        head.headers,
        Bytes::from(collected),
        freshness,
        seen,
    );
    cache.store(key, entry);
}
