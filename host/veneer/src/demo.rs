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
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file a request path maps to (percent-decoded; `/` → `index.html`, `/x` → `x.html` or
/// `x/index.html`), refusing anything outside `root`: `..`, a file beside the folder, and a
/// symbolic link that leads out of it.
fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(request_path)
        .decode_utf8()
        .ok()?;
    if decoded.contains(['\0', '\\']) {
        return None;
    }
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let base = root.join(rel);
    let mut candidates = vec![base.join("index.html")];
    if !rel.as_os_str().is_empty() && base.extension().is_none() {
        candidates.push(base.with_extension("html"));
    }
    candidates.push(base);
    let file = candidates.into_iter().find(|p| p.is_file())?;
    let inside = std::fs::canonicalize(&file)
        .ok()?
        .starts_with(std::fs::canonicalize(root).ok()?);
    inside.then_some(file)
}

/// The shop's sign-in and sign-out, as a real shop's origin would answer them: the page, and
/// `veneer-identify` naming the customer (or `-`) for Veneer to link the visitor to.
fn account(uri: &http::Uri) -> Option<Response<Full<Bytes>>> {
    let (customer, page) = match uri.path() {
        "/login" => {
            let customer = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("customer="))
                .filter(|c| {
                    !c.is_empty()
                        && c.len() <= 64
                        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                .unwrap_or("c-ada")
                .to_owned();
            let page = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed in · Fjellvind Outdoor</title></head>\
                 <body><header><a href=\"/\">Fjellvind Outdoor</a> · <a href=\"/products\">Products</a> · <a href=\"/cart\">Cart</a> · <a href=\"/logout\">Sign out</a></header>\
                 <main><h1>Signed in as {customer}</h1><section id=\"hero\"></section><div id=\"recommendations\"></div></main></body></html>"
            );
            (customer, page)
        }
        "/logout" => (
            "-".to_owned(),
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed out</title></head>\
             <body><header><a href=\"/\">Fjellvind Outdoor</a></header><main><h1>Signed out</h1></main></body></html>"
                .to_owned(),
        ),
        _ => return None,
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "private, no-store")
        .header(crate::profile::IDENTIFY_HEADER, customer)
        .body(Full::new(Bytes::from(page)))
        .ok()
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
                        if let Some(r) = account(req.uri()) {
                            return Ok::<_, Infallible>(r);
                        }
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

#[cfg(test)]
mod resolve_tests {
    use super::resolve;

    #[test]
    fn files_are_found_and_never_outside_the_folder() {
        let dir = std::env::temp_dir().join(format!("veneer-static-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("products")).expect("dir");
        std::fs::write(dir.join("index.html"), "<h1>Home</h1>").expect("write");
        std::fs::write(dir.join("products.html"), "<h1>Products</h1>").expect("write");
        std::fs::write(dir.join("products/data.json"), "{}").expect("write");
        std::fs::write(dir.join("a b.html"), "spaced").expect("write");
        let found = |p: &str| {
            resolve(&dir, p).and_then(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        };
        assert_eq!(found("/").as_deref(), Some("index.html"));
        assert_eq!(found("/products").as_deref(), Some("products.html"));
        assert_eq!(found("/products/data.json").as_deref(), Some("data.json"));
        assert_eq!(found("/a%20b").as_deref(), Some("a b.html"));
        for refused in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/missing",
            "/products/../index.html",
        ] {
            assert_eq!(found(refused), None, "{refused}");
        }
        // Nothing beside the folder, and no link out of it.
        let beside = dir.with_extension("html");
        std::fs::write(&beside, "outside").expect("write");
        std::fs::remove_file(dir.join("index.html")).expect("remove");
        assert_eq!(found("/"), None);
        std::os::unix::fs::symlink("/etc/hostname", dir.join("leak.txt")).expect("symlink");
        assert_eq!(found("/leak.txt"), None);
        let _ = std::fs::remove_file(&beside);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
