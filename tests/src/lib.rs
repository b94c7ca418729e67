//! Harness for Veneer's end-to-end tests: a real origin server and a real host, both on
//! `127.0.0.1:0`, with real plugins compiled to wasm32-wasip2 by this crate's build script.

pub mod fuzz;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use veneer::app::App;
use veneer::config::Config;

/// Path of a compiled plugin, e.g. `plugin("hero")`.
pub fn plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("VENEER_PLUGIN_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// The JavaScript example plugin (`plugins/js-greeter`), built with componentize-js by its
/// `build.sh` on first use in this process (npm packages are fetched once into `target/js`).
pub fn js_plugin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let out = std::process::Command::new("bash")
                .arg(root.join("plugins/js-greeter/build.sh"))
                .output()
                .expect("running plugins/js-greeter/build.sh (needs bash)");
            assert!(
                out.status.success(),
                "building the JavaScript plugin failed (it needs node and npm; tests/run.sh installs them):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            root.join("target/js/js_greeter.wasm")
        })
        .clone()
}

/// The shared pages directory (`../shared/pages`), if present.
pub fn shared_pages() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pages");
    dir.is_dir().then_some(dir)
}

/// One canned origin response.
#[derive(Clone)]
pub struct Page {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body, sent as these chunks (with `delay` between them).
    pub chunks: Vec<Bytes>,
    /// Pause between chunks (forces separate writes, so the client sees chunked transfer).
    pub delay: Duration,
    /// The page served instead after this one has been served once (see [`Page::then`]).
    later: Option<Later>,
}

/// What a page turns into after its first response; the counter is shared by the page's
/// clones, so "once" holds across connections.
#[derive(Clone)]
struct Later {
    served: Arc<std::sync::atomic::AtomicUsize>,
    page: Box<Page>,
}

impl Page {
    /// A 200 response with one body.
    pub fn new(content_type: &str, body: impl Into<Bytes>) -> Self {
        Page {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            chunks: vec![body.into()],
            delay: Duration::ZERO,
            later: None,
        }
    }

    /// An HTML page.
    pub fn html(body: &str) -> Self {
        Self::new("text/html; charset=utf-8", body.to_owned())
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Splits the body into chunks of `size` bytes sent `delay` apart.
    pub fn chunked(mut self, size: usize, delay: Duration) -> Self {
        let body: Vec<u8> = self.chunks.concat();
        self.chunks = body.chunks(size).map(Bytes::copy_from_slice).collect();
        self.delay = delay;
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Serves this page once, then `later` for every request after: an origin whose page
    /// changes under the same URL.
    pub fn then(mut self, later: Page) -> Self {
        self.later = Some(Later {
            served: Arc::default(),
            page: Box::new(later),
        });
        self
    }

    /// The page to serve now, counting this response.
    fn current(&self) -> &Page {
        match &self.later {
            Some(l) if l.served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 => {
                l.page.current()
            }
            _ => self,
        }
    }
}

/// A real HTTP origin serving canned pages by path; `/slow` never answers in time.
pub struct Origin {
    /// Its address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Starts an origin serving `pages` (path → page).
    pub async fn start(pages: HashMap<String, Page>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let pages = Arc::new(pages);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let pages = pages.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let pages = pages.clone();
                        async move { Ok::<_, Infallible>(respond(&pages, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, task }
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn respond(pages: &HashMap<String, Page>, req: Request<Incoming>) -> Response<OriginBody> {
    let path = req.uri().path().to_owned();
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if path == "/echo-body" {
        // Like an origin handling a form post: reads the whole body before answering.
        let read = req.into_body().collect().await.map(|b| b.to_bytes().len());
        let text = match read {
            Ok(n) => format!("read {n} bytes"),
            Err(e) => format!("body failed: {e}"),
        };
        return Response::new(Full::new(Bytes::from(text)).boxed());
    }
    if path == "/echo-headers" {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        lines.sort();
        let mut r = Response::new(Full::new(Bytes::from(lines.join("\n"))).boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        return r;
    }
    let Some(page) = pages.get(&path).map(Page::current) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")).boxed());
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let length = (page.chunks.len() == 1).then(|| page.chunks[0].len());
    let body = ChunkStream {
        chunks: page.chunks.clone().into(),
        delay: page.delay,
        sleep: None,
        first: true,
    };
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK);
    for (k, v) in &page.headers {
        r.headers_mut().append(
            http::HeaderName::try_from(k.as_str()).expect("name"),
            http::HeaderValue::try_from(v.as_str()).expect("value"),
        );
    }
    if let Some(n) = length.filter(|_| page.status != 304) {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    r
}

/// Yields body chunks as data frames, sleeping `delay` before each one after the first, so
/// each reaches the wire as its own write.
struct ChunkStream {
    chunks: std::collections::VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    first: bool,
}

impl http_body::Body for ChunkStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if !this.first && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        this.first = false;
        Poll::Ready(this.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// A running host.
pub struct Host {
    /// Where visitors connect.
    pub addr: SocketAddr,
    /// The host's state (metrics, tenants).
    pub app: Arc<App>,
    /// The analytics log file.
    pub analytics: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("veneer-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The cookie secret every test host uses, so tests can mint visitor cookies.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// Everything a test host needs: config TOML with `{origin}`, and files written beside it.
pub struct HostSpec<'a> {
    /// The config; `{origin}` is replaced with the origin's address.
    pub config: &'a str,
    /// Files to write into the config's directory (name, contents).
    pub files: &'a [(&'a str, &'a str)],
}

impl Host {
    /// Starts a host for `spec` in front of `origin`.
    pub async fn start(spec: HostSpec<'_>, origin: SocketAddr) -> Host {
        Host::start_with_server(spec, origin, "").await
    }

    /// Like [`Host::start`], with extra `[server]` lines (e.g. `trusted_proxies = [...]`).
    pub async fn start_with_server(spec: HostSpec<'_>, origin: SocketAddr, server: &str) -> Host {
        let dir = TempDir::new();
        for (name, contents) in spec.files {
            std::fs::write(dir.0.join(name), contents).expect("write test file");
        }
        let analytics = dir.0.join("analytics.jsonl");
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/veneer-test-cache");
        let header = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncookie_secret = \"{SECRET}\"\ncache_dir = \"{}\"\nanalytics_log = \"{}\"\norigin_timeout_ms = 500\n{server}\n\n",
            cache.display(),
            analytics.display()
        );
        let text = format!(
            "{header}{}",
            spec.config
                .replace("{origin}", &format!("http://{origin}"))
                .replace("{plugins}", env!("VENEER_PLUGIN_DIR"))
        );
        let file = dir.0.join("veneer.toml");
        std::fs::write(&file, &text).expect("write config");
        let config =
            Config::load(&file).unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        let app =
            Arc::new(App::build(&config).unwrap_or_else(|e| panic!("host failed to start: {e:#}")));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind host");
        let addr = listener.local_addr().expect("host address");
        let task = veneer::server::serve(app.clone(), listener);
        Host {
            addr,
            app,
            analytics,
            task,
            _dir: dir,
        }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Analytics events written so far (waits up to 2 s for `at_least` of them). Everything
    /// recorded by requests already answered is written first: a request's events are queued
    /// before its response goes out, and the flush waits for the queue.
    pub async fn events(&self, at_least: usize) -> Vec<serde_json::Value> {
        self.app.analytics.flush().await;
        for _ in 0..40 {
            let lines = std::fs::read_to_string(&self.analytics).unwrap_or_default();
            let events: Vec<_> = lines
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if events.len() >= at_least {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lines = std::fs::read_to_string(&self.analytics).unwrap_or_default();
        lines
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Host services with nothing in them, for driving plugins directly (benchmarks, runtime tests).
pub struct NoServices;

impl veneer::plugin::HostServices for NoServices {
    fn fragment(&self, _key: &str) -> Option<String> {
        None
    }
    fn track(&self, _plugin: &str, _name: &str, _properties: Vec<(String, String)>) {}
    fn active_campaigns(&self) -> &[Arc<veneer::plugin::Campaign>] {
        &[]
    }
    fn assign(&self, _experiment: &str) -> Option<veneer::plugin::Assignment> {
        None
    }
    fn impression(&self, _plugin: &str, _campaign_id: &str) {}
    fn breaker_changed(&self, _plugin: &str, _transition: veneer::plugin::Transition) {}
    fn now_ms(&self) -> i64 {
        1_700_000_000_000
    }
    fn request_id(&self) -> &str {
        "bench"
    }
    fn tenant(&self) -> &str {
        "bench"
    }
}

/// A consenting visitor for driving plugins directly.
pub fn test_visitor(
    device: veneer::plugin::DeviceClass,
    segments: &[&str],
) -> std::sync::Arc<veneer::plugin::Visitor> {
    std::sync::Arc::new(veneer::plugin::Visitor {
        id: "3f1c9a7e-2b4d-4e8f-9a1b-6c5d4e3f2a10".into(),
        segments: segments.iter().map(|s| (*s).to_owned()).collect(),
        device,
        country: Some("NO".into()),
        locale: Some("nb-NO".into()),
        visit_count: 3,
        first_seen: 1_700_000_000,
        utm: vec![],
        referrer: None,
        consent: veneer::plugin::Consent {
            analytics: true,
            personalization: true,
            marketing: true,
        },
        attributes: std::sync::Arc::new(serde_json::json!({"device": "desktop", "visitCount": 3})),
    })
}
