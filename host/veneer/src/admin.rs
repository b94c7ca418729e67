//! The admin listener: `/healthz`, `/readyz` and `/metrics` for probes and scrapers, and with a
//! state store (`[server] data_dir`) the JSON admin API under `/v1/` (README "Operating
//! Veneer"). Every `/v1/` call needs a bearer token: operator tokens manage tenants and
//! tokens; a tenant token reaches only its own tenant. Unknown tokens get 401 and tokens
//! without access 403, whether or not the thing asked for exists.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::control::{ApiError, Control, MAX_PLUGIN_BYTES, Principal};
use crate::limits::{ConnectionLimiter, LogBudget, RateLimiter};
use crate::store::{Document, Scope};

/// Largest JSON body the API reads.
const MAX_JSON_BYTES: usize = 8 << 20;
/// Connections one address may hold on the admin listener.
const MAX_ADMIN_CONNECTIONS: u32 = 32;
/// Failed authentications one address may make per second (burst 20) before it is refused
/// (429) for a while: tokens cannot be guessed at speed.
const AUTH_FAILURES_PER_SEC: f64 = 2.0;

/// The admin listener's shared state.
pub struct Admin {
    app: Arc<App>,
    control: Option<Arc<Control>>,
    connections: ConnectionLimiter,
    failures: RateLimiter,
    blocked: DashMap<IpAddr, Instant>,
    log: LogBudget,
}

type AdminBody = Full<Bytes>;

fn reply(status: StatusCode, body: &Value) -> Response<AdminBody> {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn error(e: &ApiError) -> Response<AdminBody> {
    reply(e.status, &json!({"error": e.message}))
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn redirect(to: &'static str) -> Response<AdminBody> {
    let mut r = text(StatusCode::PERMANENT_REDIRECT, String::new());
    r.headers_mut()
        .insert(header::LOCATION, header::HeaderValue::from_static(to));
    r
}

/// A file of the dashboard. It holds no data, so it needs no token: the page signs in and
/// sends the token with each API call.
fn dashboard(method: &Method, name: &str, headers: &http::HeaderMap) -> Response<AdminBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = error(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard's files are read with GET",
        ));
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(asset) = crate::dashboard::asset(name) else {
        return error(&ApiError::new(StatusCode::NOT_FOUND, "not found"));
    };
    // The binary's files change only with the binary: a browser revalidates, and a matching
    // tag saves sending the rules engine again.
    let etag = crate::dashboard::etag(asset.bytes);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    // HEAD gets the body too: hyper never sends it, and it gives the right Content-Length.
    let mut r = if fresh {
        text(StatusCode::NOT_MODIFIED, String::new())
    } else {
        Response::new(Full::new(Bytes::from_static(asset.bytes)))
    };
    let h = r.headers_mut();
    let set = |h: &mut http::HeaderMap, name: header::HeaderName, value: &str| {
        if let Ok(v) = header::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(h, header::CONTENT_TYPE, asset.content_type);
    set(h, header::ETAG, &etag);
    set(h, header::CACHE_CONTROL, "no-cache");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        crate::dashboard::CONTENT_SECURITY_POLICY,
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    r
}

/// Serves the admin listener on `listener` until the task is aborted.
pub fn serve(
    app: Arc<App>,
    control: Option<Arc<Control>>,
    listener: TcpListener,
) -> JoinHandle<()> {
    let admin = Arc::new(Admin {
        app,
        control,
        connections: ConnectionLimiter::new(MAX_ADMIN_CONNECTIONS),
        failures: RateLimiter::default(),
        blocked: DashMap::new(),
        log: LogBudget::new(20),
    });
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(guard) = admin.connections.admit(peer.ip()) else {
                admin.app.metrics.inc(
                    "veneer_connections_refused_total",
                    &[("reason", "admin_per_client_limit")],
                );
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let timeout = admin.app.header_read_timeout();
                let service = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(peer, req).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// What a route needs: operator, or access to one tenant.
enum Need<'a> {
    Operator,
    Tenant(&'a str),
    Anyone,
}

impl Admin {
    async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<AdminBody> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/metrics" => return text(StatusCode::OK, self.app.metrics.render()),
            "/healthz" => {
                // Still 200: a node cut off from the fleet serves its local copy.
                let fleet = self.control.as_ref().and_then(|c| c.fleet());
                return match fleet {
                    Some(f) if !f.connected() => text(
                        StatusCode::OK,
                        "degraded: the cluster (NATS) is unreachable; serving the local copy\n"
                            .into(),
                    ),
                    _ => text(StatusCode::OK, "ok\n".into()),
                };
            }
            "/readyz" => {
                let ready = self.control.as_ref().is_none_or(|c| c.ready());
                return if ready {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: stored tenants are still loading or failed to load\n".into(),
                    )
                };
            }
            "/dashboard" => return redirect("/dashboard/"),
            _ => {}
        }
        if let Some(name) = path.strip_prefix("/dashboard/") {
            return dashboard(req.method(), name, req.headers());
        }
        if !path.starts_with("/v1/") && path != "/v1" {
            return error(&ApiError::new(StatusCode::NOT_FOUND, "not found"));
        }
        let Some(control) = &self.control else {
            return error(&ApiError::new(
                StatusCode::NOT_FOUND,
                "the admin API needs a state store: set [server] data_dir",
            ));
        };
        // Limited like the proxy's clients: IPv6 by its /64.
        let ip = crate::limits::client_key(peer.ip());
        if let Some(until) = self.blocked.get(&ip).map(|u| *u) {
            let now = Instant::now();
            if until > now {
                let mut r = error(&ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications from this address",
                ));
                let secs = (until - now).as_secs().max(1).to_string();
                if let Ok(v) = header::HeaderValue::from_str(&secs) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return r;
            }
            self.blocked.remove(&ip);
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let who = match token.map(|t| control.authenticate(t)) {
            Some(Some(p)) => p,
            found => {
                let reason = if found.is_none() {
                    "missing"
                } else {
                    "invalid"
                };
                return self.refuse(ip, &path, reason, StatusCode::UNAUTHORIZED);
            }
        };
        let method = req.method().clone();
        let query = req.uri().query().unwrap_or("").to_owned();
        let segments: Vec<String> = path
            .trim_start_matches("/v1")
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let need = match segs.as_slice() {
            ["tenants"] if method == Method::GET => Need::Anyone,
            ["tenants"] | ["tokens", ..] | ["audit"] => Need::Operator,
            ["tenants", t] if method != Method::GET => {
                let _ = t;
                Need::Operator
            }
            ["tenants", _, "disable" | "enable"] => Need::Operator,
            ["tenants", t, ..] => Need::Tenant(t),
            _ => Need::Anyone,
        };
        let allowed = match need {
            Need::Anyone => true,
            Need::Operator => who.scope == Scope::Operator,
            Need::Tenant(t) => who.may(t),
        };
        if !allowed {
            return self.refuse(ip, &path, "forbidden", StatusCode::FORBIDDEN);
        }
        let result = self
            .route(control, &who, &method, &segs, &query, req.into_body())
            .await;
        match result {
            Ok((status, body)) => reply(status, &body),
            Err(e) => {
                if e.status.is_server_error() {
                    tracing::error!(actor = %who.actor, %method, path, error = %e.message, "admin call failed");
                }
                error(&e)
            }
        }
    }

    fn refuse(
        &self,
        ip: IpAddr,
        path: &str,
        reason: &'static str,
        status: StatusCode,
    ) -> Response<AdminBody> {
        self.app
            .metrics
            .inc("veneer_admin_auth_failures_total", &[("reason", reason)]);
        let (log, skipped) = self.log.admit();
        if let Some(n) = skipped {
            tracing::warn!(
                skipped = n,
                "more admin authentication failures than logged"
            );
        }
        if log {
            tracing::warn!(client = %ip, path, reason, "admin authentication failed");
        }
        let key: Arc<str> = Arc::from("(admin)");
        if let Err(wait) = self.failures.take(&key, ip, AUTH_FAILURES_PER_SEC, 20.0) {
            self.blocked
                .insert(ip, Instant::now() + wait.max(Duration::from_secs(10)));
        }
        let (status, message) = if status == StatusCode::UNAUTHORIZED {
            (status, "a valid bearer token is required")
        } else {
            (status, "this token does not give access to that")
        };
        let mut r = error(&ApiError::new(status, message));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }

    async fn route(
        &self,
        c: &Control,
        who: &Principal,
        method: &Method,
        segs: &[&str],
        query: &str,
        body: Incoming,
    ) -> Result<(StatusCode, Value), ApiError> {
        let ok = |v: Value| Ok((StatusCode::OK, v));
        let m = method.as_str();
        match (m, segs) {
            ("GET", ["tenants"]) => ok(c.tenants(who)?),
            ("POST", ["tenants"]) => {
                let v = c.create_tenant(who, json_body(body).await?).await?;
                Ok((StatusCode::CREATED, v))
            }
            ("GET", ["tenants", t]) => ok(c.tenant(t)?),
            ("PATCH", ["tenants", t]) => {
                ok(c.update_tenant(who, t, json_body(body).await?).await?)
            }
            ("DELETE", ["tenants", t]) => ok(c.delete_tenant(who, t).await?),
            ("POST", ["tenants", t, "disable"]) => ok(c.set_disabled(who, t, true).await?),
            ("POST", ["tenants", t, "enable"]) => ok(c.set_disabled(who, t, false).await?),
            ("GET", ["tenants", t, "plugins"]) => ok(c.plugins(t)?),
            ("POST", ["tenants", t, "plugins", p, "versions"]) => {
                let q = parse_query(query);
                let activate = q
                    .iter()
                    .any(|(k, v)| k == "activate" && (v == "true" || v == "1"));
                let params: HashMap<String, String> = q
                    .iter()
                    .filter(|(k, _)| k == "param")
                    .filter_map(|(_, v)| v.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let has_params = q.iter().any(|(k, _)| k == "param");
                let bytes = read_body(body, MAX_PLUGIN_BYTES).await?;
                let v = c
                    .upload(who, t, p, bytes, activate, has_params.then_some(params))
                    .await?;
                Ok((StatusCode::CREATED, v))
            }
            ("POST", ["tenants", t, "plugins", p, "activate"]) => {
                let body = json_body(body).await?;
                let version = body.get("version").and_then(Value::as_i64).ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "body: {\"version\": N} expected")
                })?;
                ok(c.activate(who, t, p, version).await?)
            }
            ("POST", ["tenants", t, "plugins", p, "rollback"]) => ok(c.rollback(who, t, p).await?),
            ("PUT", ["tenants", t, "plugins", p, "params"]) => {
                let params: HashMap<String, String> =
                    serde_json::from_value(json_body(body).await?).map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("params: an object of strings expected: {e}"),
                        )
                    })?;
                ok(c.set_params(who, t, p, params).await?)
            }
            ("DELETE", ["tenants", t, "plugins", p]) => ok(c.remove_plugin(who, t, p).await?),
            ("GET", ["tenants", t, doc @ ("rules" | "fragments")]) => {
                ok(c.document(t, document(doc))?)
            }
            ("PUT" | "PATCH", ["tenants", t, doc @ ("rules" | "fragments")]) => {
                let body = json_body(body).await?;
                ok(c.set_document(who, t, document(doc), body, m == "PATCH")
                    .await?)
            }
            ("POST", ["tenants", t, "previews"]) => {
                let body = json_body(body).await?;
                let v = crate::preview::create(c.app(), t, &body)
                    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
                Ok((StatusCode::CREATED, v))
            }
            ("GET", ["tenants", t, "reports", "segments"]) => {
                let (app, t) = (c.app().clone(), (*t).to_owned());
                let report = blocking(move || crate::report::segments(&app, &t)).await?;
                ok(report)
            }
            ("GET", ["tenants", t, "reports", "campaigns", id]) => {
                let goal = parse_query(query)
                    .into_iter()
                    .find(|(k, _)| k == "goal")
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::BAD_REQUEST, "query: goal=NAME is required")
                    })?;
                let (app, t, id) = (c.app().clone(), (*t).to_owned(), (*id).to_owned());
                let report =
                    blocking(move || crate::report::campaign(&app, &t, &id, &goal)).await?;
                ok(report)
            }
            ("GET", ["tenants", t, "reports", "experiments", key]) => {
                let q = parse_query(query);
                let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                let goal = get("goal").ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "query: goal=NAME is required")
                })?;
                let engine = match get("engine").as_deref() {
                    None | Some("bayesian") => veneer_stats::EngineKind::Bayesian,
                    Some("frequentist") => veneer_stats::EngineKind::Frequentist,
                    Some(other) => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("engine {other:?}: use bayesian or frequentist"),
                        ));
                    }
                };
                let (app, t, key) = (c.app().clone(), (*t).to_owned(), (*key).to_owned());
                let report =
                    blocking(move || crate::report::experiment(&app, &t, &key, &goal, engine))
                        .await?;
                ok(report)
            }
            ("POST", ["tenants", t, "profiles", "import"]) => {
                let first_line = parse_query(query)
                    .into_iter()
                    .find(|(k, _)| k == "first_line")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(1);
                let body = read_body(body, crate::profile_admin::MAX_IMPORT_BYTES).await?;
                ok(crate::profile_admin::import(c, who, t, body, first_line).await?)
            }
            ("GET", ["tenants", t, "profiles", kind, id]) => {
                let s = crate::profile_admin::subject(kind, id)?;
                ok(crate::profile_admin::export(c, who, t, s).await?)
            }
            ("DELETE", ["tenants", t, "profiles", kind, id]) => {
                let s = crate::profile_admin::subject(kind, id)?;
                ok(crate::profile_admin::erase(c, who, t, s).await?)
            }
            ("GET", ["tenants", t, "events", "count"]) => {
                let event = parse_query(query)
                    .into_iter()
                    .find(|(k, _)| k == "event")
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::BAD_REQUEST, "query: event=NAME is required")
                    })?;
                c.record(t)?;
                let Some(log) = c.app().analytics.log().cloned() else {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "events are counted only with [server] data_dir",
                    ));
                };
                let t = (*t).to_owned();
                if let Some(fleet) = log.fleet() {
                    let count = crate::outbox::fleet_count(fleet, &t, &event)
                        .await
                        .map_err(|e| fleet.unreachable(&format!("{e:#}")))?;
                    return ok(json!({"tenant": t, "event": event, "count": count}));
                }
                let report = blocking(move || {
                    let count = log.count(&t, &event).map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
                    })?;
                    Ok(json!({"tenant": t, "event": event, "count": count}))
                })
                .await?;
                ok(report)
            }
            ("GET", ["tenants", t, "audit"]) => {
                ok(json!(c.store.audit_log(Some(t), limit(query))?))
            }
            ("GET", ["audit"]) => ok(json!(c.store.audit_log(None, limit(query))?)),
            ("POST", ["tokens"]) => {
                let body = json_body(body).await?;
                // An operator token only when asked for in so many words: a misspelt or
                // malformed tenant must not quietly mint one.
                let tenant = match (body.get("tenant"), body.get("operator")) {
                    (Some(Value::String(t)), None | Some(Value::Bool(false))) => Some(t.as_str()),
                    (None | Some(Value::Null), Some(Value::Bool(true))) => None,
                    _ => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "body: {\"tenant\": NAME} for a tenant token, or {\"operator\": true}",
                        ));
                    }
                };
                let label = body.get("label").and_then(Value::as_str).unwrap_or("");
                let v = c.create_token(who, tenant, label).await?;
                Ok((StatusCode::CREATED, v))
            }
            ("DELETE", ["tokens", id]) => {
                let id = id
                    .parse()
                    .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such token"))?;
                ok(c.revoke_token(who, id).await?)
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route {m} /v1/{}", segs.join("/")),
            )),
        }
    }
}

/// A report, read from the ledger off the async workers.
async fn blocking(
    read: impl FnOnce() -> Result<Value, ApiError> + Send + 'static,
) -> Result<Value, ApiError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn document(name: &str) -> Document {
    if name == "rules" {
        Document::Rules
    } else {
        Document::Fragments
    }
}

fn limit(query: &str) -> u32 {
    parse_query(query)
        .iter()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(100)
        .min(10_000)
}

async fn read_body(body: Incoming, max: usize) -> Result<Vec<u8>, ApiError> {
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body may be at most {max} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

async fn json_body(body: Incoming) -> Result<Value, ApiError> {
    let bytes = read_body(body, MAX_JSON_BYTES).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space, as forms send it).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a path segment or query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips() {
        for s in ["plain", "a=b&c", "ü %", "100%", "%zz", "%4"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
