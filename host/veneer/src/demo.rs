//! A small static origin for the demo shop (and for anyone who wants to try Veneer without a
//! site of their own): serves a directory, mapping `/` to `index.html` and `/x` to `x.html`.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// The file a request path maps to, refusing anything that climbs out of `root`.
fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let rel = Path::new(request_path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let base = root.join(rel);
    let candidates = [
        base.join("index.html"),
        base.with_extension("html"),
        base.clone(),
    ];
    candidates.into_iter().find(|p| p.is_file())
}

/// Serves the files under `root` on `listener`.
pub fn serve_dir(root: PathBuf, listener: TcpListener) -> JoinHandle<()> {
    let root = Arc::new(root);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let root = root.clone();
                    async move {
                        let response = match resolve(&root, req.uri().path()) {
                            Some(path) => match tokio::fs::read(&path).await {
                                Ok(bytes) => Response::builder()
                                    .header(header::CONTENT_TYPE, content_type(&path))
                                    .header(header::CACHE_CONTROL, "public, max-age=60")
                                    .body(Full::new(Bytes::from(bytes))),
                                Err(_) => Response::builder()
                                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                                    .body(Full::new(Bytes::new())),
                            },
                            None => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                                .body(Full::new(Bytes::from_static(
                                    b"<!doctype html><h1>Not found</h1>",
                                ))),
                        };
                        Ok::<_, Infallible>(
                            response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
