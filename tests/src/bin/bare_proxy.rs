//! The benchmark's floor: the smallest reasonable hyper 1 proxy (HTTP/1.1 server, pooled legacy
//! client, bodies streamed through untouched). `tests/bench/http.sh` measures Veneer against
//! it on the same core in the same run, so a ratio says what Veneer's own work costs.
//!
//! `bare_proxy LISTEN ORIGIN` (e.g. `127.0.0.1:8081 127.0.0.1:8080`).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN ORIGIN");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().unwrap_or_else(|e| {
        eprintln!("bare_proxy: {listen}: {e}");
        std::process::exit(2)
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("bare_proxy: cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, origin) = (client.clone(), origin.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<Incoming>| {
                let (client, origin) = (client.clone(), origin.clone());
                async move {
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = format!("http://{origin}{path}").parse().unwrap_or_default();
                    let req = http::Request::from_parts(parts, body.boxed_unsync());
                    let response = match client.request(req).await {
                        Ok(r) => r.map(|b| b.boxed_unsync()),
                        Err(_) => {
                            let mut r = http::Response::new(
                                http_body_util::Empty::new()
                                    .map_err(|never| match never {})
                                    .boxed_unsync(),
                            );
                            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                            r
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
