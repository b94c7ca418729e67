//! Listeners: the visitor-facing proxy (HTTP/1.1 and h2c on one port) and the admin endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::framing::{Activity, FramingFlag, Watched};
use crate::proxy;

/// Accepts connections on `listener` and serves them with `app` until the task is aborted.
pub fn serve(app: Arc<App>, listener: TcpListener) -> JoinHandle<()> {
    serve_until(app, listener, std::future::pending())
}

/// Like [`serve`], until `stop` resolves: then the listener closes (new connections are
/// refused), idle keep-alive connections close, and the task ends once every in-flight
/// request, its streaming body included, has finished. The caller bounds that wait.
pub fn serve_until(
    app: Arc<App>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    serve_with(app, listener, None, stop)
}

/// Like [`serve_until`], terminating TLS with `tls` (certificates by SNI, h2 or HTTP/1.1 by
/// ALPN) before HTTP.
pub fn serve_tls_until(
    app: Arc<App>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    serve_with(
        app,
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        stop,
    )
}

fn serve_with(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut stop => break,
            };
            let (stream, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // One client address cannot hold every connection (trusted proxies carry many
            // clients, so they are exempt).
            let guard = if app.is_trusted(peer.ip()) {
                None
            } else {
                match app.connections.admit(peer.ip()) {
                    Some(g) => Some(g),
                    None => {
                        app.metrics.inc(
                            "veneer_connections_refused_total",
                            &[("reason", "per_client_limit")],
                        );
                        drop(stream);
                        continue;
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let (app, watcher, tls) = (app.clone(), graceful.watcher(), tls.clone());
            let header_timeout = app.header_read_timeout();
            tokio::spawn(async move {
                let _guard = guard;
                // The head timeout starts once hyper knows the protocol; a client that sends
                // nothing at all is cut off here, so it cannot hold a connection slot for ever.
                let mut first = [0u8; 1];
                if !matches!(
                    tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                    Ok(Ok(n)) if n > 0
                ) {
                    return;
                }
                match tls {
                    None => serve_connection(app, stream, peer, false, watcher).await,
                    Some(acceptor) => {
                        // A handshake gets the same time as a request head.
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve_connection(app, tls, peer, true, watcher).await,
                            Ok(Err(e)) => {
                                app.metrics.inc("veneer_tls_handshake_errors_total", &[]);
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                app.metrics.inc("veneer_tls_handshake_errors_total", &[]);
                            }
                        }
                    }
                }
            });
        }
        drop(listener);
        tracing::info!(
            connections = graceful.count(),
            "listener closed; waiting for in-flight requests"
        );
        graceful.shutdown().await;
    })
}

/// Serves one accepted connection (HTTP/1.1 or HTTP/2) until it closes.
async fn serve_connection<S>(
    app: Arc<App>,
    stream: S,
    peer: SocketAddr,
    tls: bool,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = app.header_read_timeout();
    // Requests on one HTTP/1 connection reach the service in order, so counting them here
    // matches the watcher's count of heads.
    let flag = FramingFlag::default();
    let activity = Activity::new();
    let stream = Watched::new(stream, flag.clone(), activity.clone());
    let ordinal = std::sync::atomic::AtomicU64::new(0);
    let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = in_flight.clone();
    let server = app.server.clone();
    let host = app.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let guard = InFlight::enter(&counted);
        let n = ordinal.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if req.version() < http::Version::HTTP_2 && flag.conflicting(n) {
            req.extensions_mut().insert(proxy::ConflictingFraming);
        }
        req.extensions_mut().insert(proxy::ClientAddr(peer));
        if tls {
            req.extensions_mut().insert(proxy::Tls);
        }
        async move {
            // The request stays in flight until its body has gone out (a streaming response
            // that pauses is not idle).
            let response = proxy::handle(app, req).await;
            Ok::<_, Infallible>(response.map(|inner| Guarded {
                inner,
                _guard: guard,
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(server.max_header_bytes)
        .max_headers(server.max_headers);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
    let idle = std::time::Duration::from_millis(server.idle_timeout_ms);
    let send = std::time::Duration::from_millis(server.send_timeout_ms);
    // Whether the connection was closed because its client stopped reading (a write has
    // waited `send`), not for being idle with nothing in flight.
    let idle_cut = async {
        loop {
            tokio::time::sleep(idle.min(send) / 4).await;
            if activity.write_blocked() >= send {
                return true;
            }
            let busy = in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0;
            if !busy && activity.idle() >= idle {
                return false;
            }
        }
    };
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                connection_error(&host, peer, &*e);
            }
        }
        stuck = idle_cut => {
            if stuck {
                host.metrics.inc(
                    "veneer_connections_closed_total",
                    &[("reason", "send_timeout")],
                );
                tracing::info!(%peer, "connection closed: its client took nothing of the response for send_timeout_ms");
            } else {
                tracing::debug!(%peer, "idle connection closed");
            }
        }
    }
}

/// A connection that hyper ended: a request head it could not parse (control bytes in a header
/// value, a bad header name, a head over `max_header_bytes`) was answered by hyper itself with
/// a bare 400/431 before any request reached Veneer. Those are client errors like the ones
/// Veneer refuses itself: counted under `veneer_errors_total{source="client"}` (tenant
/// `(unknown)`: no head, no Host) and logged within the refusal log's budget. A connection the
/// head timeout closed is counted in `veneer_connections_closed_total{reason="head_timeout"}`.
/// Anything else (a reset, a broken pipe) is routine.
fn connection_error(app: &App, peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    let outcome = match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => "request_head_too_large",
        Some(h) if h.is_parse() => "bad_request_head",
        Some(h) if h.is_timeout() => {
            // hyper's head timer also runs while a keep-alive connection sits idle between
            // requests, so this is mostly routine; counted apart from client errors.
            app.metrics.inc(
                "veneer_connections_closed_total",
                &[("reason", "head_timeout")],
            );
            tracing::debug!(%peer, "connection closed by the head timeout");
            return;
        }
        _ => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        }
    };
    app.metrics.inc(
        "veneer_errors_total",
        &[
            ("tenant", "(unknown)"),
            ("source", "client"),
            ("outcome", outcome),
        ],
    );
    let (log, skipped) = app.refusal_log.admit();
    if let Some(n) = skipped {
        tracing::info!(
            skipped = n,
            "more requests were refused than logged (see veneer_errors_total)"
        );
    }
    if log {
        tracing::info!(%peer, outcome, error = %e, "request head refused by the HTTP parser");
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct Guarded<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a request in flight on its connection until dropped.
struct InFlight(Arc<std::sync::atomic::AtomicU64>);

impl InFlight {
    fn enter(counter: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` (no admin API: that needs a state store, see
/// [`crate::admin::serve`]).
pub fn serve_admin(app: Arc<App>, listener: TcpListener) -> JoinHandle<()> {
    crate::admin::serve(app, None, listener)
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
