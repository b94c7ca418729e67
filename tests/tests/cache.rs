//! The tenant cache of origin responses, against a real origin that counts its requests:
//! Cache-Control, Expires, Vary, revalidation with ETag, stale-while-revalidate, coalescing,
//! and one cached page personalized per visitor without leaking one visitor's output to
//! another.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use veneer_tests::{Host, HostSpec};

/// Origin requests per path.
#[derive(Default)]
struct Counts(Mutex<HashMap<String, u64>>);

impl Counts {
    fn bump(&self, path: &str) -> u64 {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(path.to_owned()).or_default();
        *n += 1;
        *n
    }

    fn get(&self, path: &str) -> u64 {
        let m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(path).copied().unwrap_or(0)
    }
}

async fn origin_answer(counts: Arc<Counts>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let n = counts.bump(&path);
    let mut r = Response::builder().header(header::CONTENT_TYPE, "text/html; charset=utf-8");
    let body = match path.as_str() {
        "/fresh" => {
            r = r.header(header::CACHE_CONTROL, "max-age=60");
            format!("<h1>fresh {n}</h1>")
        }
        "/private" => {
            r = r.header(header::CACHE_CONTROL, "private, max-age=60");
            format!("<h1>private {n}</h1>")
        }
        "/nostore" => {
            r = r.header(header::CACHE_CONTROL, "no-store");
            format!("<h1>nostore {n}</h1>")
        }
        "/cookie" => {
            r = r
                .header(header::CACHE_CONTROL, "max-age=60")
                .header(header::SET_COOKIE, "session=abc");
            format!("<h1>cookie {n}</h1>")
        }
        "/expires" => {
            let now = jiff::Timestamp::now();
            let later = now + jiff::SignedDuration::from_secs(60);
            let fmt = |t: jiff::Timestamp| t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
            r = r
                .header(header::DATE, fmt(now))
                .header(header::EXPIRES, fmt(later));
            format!("<h1>expires {n}</h1>")
        }
        "/vary" => {
            let lang = req
                .headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            r = r
                .header(header::CACHE_CONTROL, "max-age=60")
                .header(header::VARY, "accept-language");
            format!("<h1>vary {lang} {n}</h1>")
        }
        "/etag" => {
            r = r
                .header(header::CACHE_CONTROL, "max-age=1")
                .header(header::ETAG, "\"v1\"");
            if req
                .headers()
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v == "\"v1\"")
            {
                let mut not_modified = r.body(Full::new(Bytes::new())).unwrap_or_default();
                *not_modified.status_mut() = http::StatusCode::NOT_MODIFIED;
                return not_modified;
            }
            format!("<h1>etag {n}</h1>")
        }
        "/swr" => {
            r = r.header(
                header::CACHE_CONTROL,
                "max-age=1, stale-while-revalidate=30",
            );
            format!("<h1>swr {n}</h1>")
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            r = r.header(header::CACHE_CONTROL, "max-age=60");
            format!("<h1>slow {n}</h1>")
        }
        _ => {
            r = r.header(header::CACHE_CONTROL, "max-age=60");
            format!("<html><body><h1>Hello</h1><p>page {n}</p></body></html>")
        }
    };
    r.body(Full::new(Bytes::from(body))).unwrap_or_default()
}

async fn origin(counts: Arc<Counts>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let counts = counts.clone();
                    async move { Ok::<_, Infallible>(origin_answer(counts, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

const CONFIG: &str = "[[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\", \"127.0.0.1\"]\n\
origin = \"{origin}\"\nrules = \"rules.json\"\n\
[tenant.limits]\nrequests_per_second_per_client = 0\n\
[tenant.cache]\nmax_bytes = 1048576\n\
[[tenant.plugin]]\nname = \"copy\"\npath = \"{plugins}/static_rewrites.wasm\"\n\
params = { segment = \"mobile\", rule1 = \"h1 | set-inner-text | Hello, phone\" }\n\
[[tenant.plugin]]\nname = \"tablet-copy\"\npath = \"{plugins}/static_rewrites.wasm\"\n\
params = { segment = \"tablet\", rule1 = \"h1 | set-inner-text | Hello, tablet\" }\n";

const RULES: &str =
    r#"{"segments": {"mobile": {"device": "mobile"}, "tablet": {"device": "tablet"}}}"#;

async fn start() -> (Arc<Counts>, Host) {
    let counts = Arc::new(Counts::default());
    let addr = origin(counts.clone()).await;
    let host = Host::start(
        HostSpec {
            config: CONFIG,
            files: &[("rules.json", RULES)],
        },
        addr,
    )
    .await;
    (counts, host)
}

/// GET with extra headers.
async fn fetch(host: &Host, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut req = client.get(host.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.send().await.expect("request")
}

/// GET with extra headers; (status, x-veneer-cache, cache-control, body).
async fn get(host: &Host, path: &str, headers: &[(&str, &str)]) -> (u16, String, String, String) {
    let r = fetch(host, path, headers).await;
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (status, cache, cc) = (r.status().as_u16(), h("x-veneer-cache"), h("cache-control"));
    (status, cache, cc, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn cache_control_and_expires_decide_what_is_kept() {
    let (counts, host) = start().await;
    let first = get(&host, "/fresh", &[]).await;
    let second = get(&host, "/fresh", &[]).await;
    assert_eq!((first.1.as_str(), second.1.as_str()), ("MISS", "HIT"));
    assert_eq!(second.3, "<h1>fresh 1</h1>");
    assert_eq!(counts.get("/fresh"), 1);
    // The request may ask to skip or revalidate.
    assert_eq!(
        get(&host, "/fresh", &[("cache-control", "no-store")])
            .await
            .1,
        "BYPASS"
    );
    assert_eq!(counts.get("/fresh"), 2);

    // A request with the site's cookies gets its own answer, which is not shared.
    let own = get(&host, "/expires", &[("cookie", "session=alice")]).await;
    let again = get(&host, "/expires", &[("cookie", "session=alice")]).await;
    assert_eq!((own.1.as_str(), again.1.as_str()), ("MISS", "MISS"));
    for path in ["/private", "/nostore", "/cookie"] {
        get(&host, path, &[]).await;
        let again = get(&host, path, &[]).await;
        assert_eq!(again.1, "MISS", "{path} is not kept");
        assert_eq!(counts.get(path), 2, "{path}");
    }
    get(&host, "/expires", &[]).await;
    assert_eq!(get(&host, "/expires", &[]).await.1, "HIT");
    assert_eq!(counts.get("/expires"), 3, "two for alice, one shared");
    // POST goes through.
    let r = reqwest::Client::new()
        .post(host.url("/fresh"))
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.headers().get("x-veneer-cache").map(|v| v.as_bytes()),
        Some(&b"BYPASS"[..])
    );
    let metrics = host.app.metrics.render();
    assert!(
        metrics.contains("veneer_cache_requests_total{tenant=\"shop\",status=\"HIT\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (counts, host) = start().await;
    let en = get(&host, "/vary", &[("accept-language", "en")]).await;
    let nb = get(&host, "/vary", &[("accept-language", "nb")]).await;
    assert_eq!((en.1.as_str(), nb.1.as_str()), ("MISS", "MISS"));
    let en2 = get(&host, "/vary", &[("accept-language", "en")]).await;
    let nb2 = get(&host, "/vary", &[("accept-language", "nb")]).await;
    assert_eq!((en2.1.as_str(), nb2.1.as_str()), ("HIT", "HIT"));
    assert_eq!(en2.3, "<h1>vary en 1</h1>");
    assert_eq!(nb2.3, "<h1>vary nb 2</h1>");
    assert_eq!(counts.get("/vary"), 2);
}

#[tokio::test]
async fn stale_entries_are_revalidated_or_served_while_revalidating() {
    let (counts, host) = start().await;
    get(&host, "/etag", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = get(&host, "/etag", &[]).await;
    assert_eq!(again.1, "REVALIDATED");
    assert_eq!(
        again.3, "<h1>etag 1</h1>",
        "the stored body, confirmed by a 304"
    );
    assert_eq!(counts.get("/etag"), 2);
    assert_eq!(
        get(&host, "/etag", &[]).await.1,
        "HIT",
        "fresh again after the 304"
    );

    get(&host, "/swr", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(&host, "/swr", &[]).await;
    assert_eq!(
        (stale.1.as_str(), stale.3.as_str()),
        ("STALE", "<h1>swr 1</h1>")
    );
    // The background revalidation stores the new answer.
    let mut refreshed = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        refreshed = get(&host, "/swr", &[]).await.3;
        if refreshed == "<h1>swr 2</h1>" {
            break;
        }
    }
    assert_eq!(refreshed, "<h1>swr 2</h1>");
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let (counts, host) = start().await;
    let host = Arc::new(host);
    let answers: Vec<_> = (0..8)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { get(&host, "/slow", &[]).await })
        })
        .collect();
    for a in answers {
        let (status, _, _, body) = a.await.expect("request");
        assert_eq!((status, body.as_str()), (200, "<h1>slow 1</h1>"));
    }
    assert_eq!(counts.get("/slow"), 1);
}

#[tokio::test]
async fn one_cached_page_is_personalized_per_visitor_without_leaking() {
    let (counts, host) = start().await;
    let phone = [(
        "user-agent",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile",
    )];
    let desk = [(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    )];
    let a = get(&host, "/page", &phone).await;
    let b = get(&host, "/page", &desk).await;
    let c = get(&host, "/page", &phone).await;
    assert_eq!(counts.get("/page"), 1, "one origin request for all three");
    assert_eq!(
        (a.1.as_str(), b.1.as_str(), c.1.as_str()),
        ("MISS", "HIT", "HIT")
    );
    assert!(a.3.contains("<h1>Hello, phone</h1>"), "{}", a.3);
    assert!(
        b.3.contains("<h1>Hello</h1>"),
        "the desktop visitor gets the page as cached: {}",
        b.3
    );
    assert!(c.3.contains("<h1>Hello, phone</h1>"), "{}", c.3);
    // Personalized responses are nobody else's: private downstream.
    assert!(a.2.contains("private"), "{}", a.2);
    assert_eq!(b.2, "max-age=60");
}

/// (x-veneer-output-cache, body) of a GET.
async fn output(host: &Host, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let r = fetch(host, path, headers).await;
    let status = r
        .headers()
        .get("x-veneer-output-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_cached_page_rewritten_by_the_same_plans_is_rewritten_once() {
    let (counts, host) = start().await;
    let phone = [(
        "user-agent",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile",
    )];
    let desk = [(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    )];
    // From the origin: nothing to reuse yet. From the cache: rewritten (kept the second time
    // the same rewrite is made), then reused.
    let first = output(&host, "/page", &phone).await;
    let second = output(&host, "/page", &phone).await;
    let third = output(&host, "/page", &phone).await;
    let fourth = output(&host, "/page", &phone).await;
    assert_eq!(first.0, "", "an origin response is not from a cached body");
    assert_eq!(
        (second.0.as_str(), third.0.as_str(), fourth.0.as_str()),
        ("MISS", "MISS", "HIT")
    );
    assert!(fourth.1.contains("<h1>Hello, phone</h1>"), "{}", fourth.1);
    assert_eq!(second.1, fourth.1, "the same bytes");
    assert_eq!(first.1, fourth.1);
    // Other plans on the same page: their own copy, never the phone's.
    let tablet = [(
        "user-agent",
        "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)",
    )];
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(output(&host, "/page", &tablet).await);
    }
    assert_eq!(seen[2].0, "HIT");
    for (_, body) in &seen {
        assert!(
            body.contains("<h1>Hello, tablet</h1>") && !body.contains("phone"),
            "{body}"
        );
    }
    assert_eq!(output(&host, "/page", &phone).await, fourth);
    // A visitor whose plugins plan nothing gets the cached page as it is.
    let desktop = output(&host, "/page", &desk).await;
    assert_eq!(desktop.0, "");
    assert!(desktop.1.contains("<h1>Hello</h1>"), "{}", desktop.1);
    // Another page, another client coding: their own rewrites.
    let _ = output(&host, "/other", &phone).await;
    assert_eq!(output(&host, "/other", &phone).await.0, "MISS");
    assert_eq!(output(&host, "/other", &phone).await.0, "MISS");
    let other = output(&host, "/other", &phone).await;
    assert_eq!(other.0, "HIT");
    assert!(
        other.1.contains("page 1") && other.1.contains("Hello, phone"),
        "{}",
        other.1
    );
    let gzip = [phone[0], ("accept-encoding", "gzip")];
    assert_eq!(output(&host, "/page", &gzip).await.0, "MISS");
    assert_eq!(output(&host, "/page", &gzip).await.0, "MISS");
    assert_eq!(output(&host, "/page", &gzip).await.0, "HIT");
    assert_eq!(counts.get("/page"), 1);
    let metrics = host.app.metrics.render();
    assert!(
        metrics.contains(r#"veneer_output_cache_total{tenant="shop",status="HIT"} 5"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn rewrites_that_record_events_are_done_for_every_visitor() {
    let counts = Arc::new(Counts::default());
    let addr = origin(counts.clone()).await;
    let config = "[[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\", \"127.0.0.1\"]\n\
        origin = \"{origin}\"\nrules = \"rules.json\"\n\
        [tenant.limits]\nrequests_per_second_per_client = 0\n\
        [tenant.cache]\nmax_bytes = 1048576\n\
        [[tenant.plugin]]\nname = \"promo\"\npath = \"{plugins}/promo_slot.wasm\"\n\
        params = { slot = \"h1\" }\n";
    let rules = r#"{"campaigns": [{"id": "sale", "name": "Sale", "start": "2020-01-01T00:00:00Z",
        "end": "2099-01-01T00:00:00Z", "params": {"banner": "Sale now on"}}]}"#;
    let host = Host::start(
        HostSpec {
            config,
            files: &[("rules.json", rules)],
        },
        addr,
    )
    .await;
    for _ in 0..3 {
        let (status, body) = output(&host, "/page", &[]).await;
        assert_eq!(
            status, "",
            "never kept: the rule records promo_shown when it applies"
        );
        assert!(body.contains("Sale now on"), "{body}");
    }
    let shown = host
        .events(3)
        .await
        .into_iter()
        .filter(|e| e["event"] == "promo_shown")
        .count();
    assert_eq!(shown, 3, "one promo_shown per visitor who saw it");
    assert_eq!(counts.get("/page"), 1);
}
