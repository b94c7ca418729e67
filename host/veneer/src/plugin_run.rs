//! `veneer plugin run FILE.wasm --page PAGE`: the quickest way to see what a plugin does. A
//! real host (the same request flow as `veneer serve`) in front of a throwaway origin serving
//! the page, one request as the chosen visitor at the chosen instant, and the answer printed
//! with the events the plugin recorded and any fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::app::App;
use crate::config::Config;
use crate::preview::Preview;

/// `veneer plugin run`.
#[derive(Args)]
pub struct RunArgs {
    /// The plugin component (`.wasm`).
    pub file: PathBuf,
    /// The origin's page: HTML, or JSON for a `.json` file.
    #[arg(long)]
    pub page: PathBuf,
    /// The request path (default `/`, or `/data.json` for a JSON page).
    #[arg(long)]
    pub path: Option<String>,
    /// A plugin parameter, `KEY=VALUE` (repeatable).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Segments, experiments and campaigns (`veneer rules check` format).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Content fragments (TOML).
    #[arg(long)]
    pub fragments: Option<PathBuf>,
    /// A segment the visitor is in (repeatable; none given: the rules decide).
    #[arg(long = "segment")]
    pub segments: Vec<String>,
    /// A forced variation, `EXPERIMENT=INDEX` (repeatable).
    #[arg(long = "variation")]
    pub variations: Vec<String>,
    /// The visitor's consent, e.g. `analytics,marketing` (default: all).
    #[arg(long)]
    pub consent: Option<String>,
    /// The instant of the request (RFC 3339; default now).
    #[arg(long)]
    pub at: Option<String>,
    /// The visitor's device: desktop, mobile, tablet or bot.
    #[arg(long, default_value = "desktop")]
    pub device: String,
    /// The visitor's country (ISO 3166 alpha-2).
    #[arg(long)]
    pub country: Option<String>,
    /// The visitor's `Accept-Language`.
    #[arg(long)]
    pub language: Option<String>,
    /// A request header, `NAME: VALUE` (repeatable), e.g. `--header "cookie: cart=3"`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
}

fn user_agent(device: &str) -> anyhow::Result<&'static str> {
    Ok(match device {
        "desktop" => "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        "mobile" => "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
        "tablet" => "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) Safari/604.1",
        "bot" => "Googlebot/2.1 (+http://www.google.com/bot.html)",
        other => bail!("--device {other:?}: desktop, mobile, tablet or bot"),
    })
}

/// `s` as a TOML string.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `p` made absolute (it must exist), so a generated config can live elsewhere.
pub(crate) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))
}

/// Plugin parameters as an inline TOML table, `{ k = "v", ... }`.
pub(crate) fn params_table(params: &[(String, String)]) -> String {
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
        .collect();
    format!("{{ {} }}", pairs.join(", "))
}

/// Splits a `KEY<sep>VALUE` argument of `flag`.
pub(crate) fn key_value<'a>(
    flag: &str,
    s: &'a str,
    sep: char,
) -> anyhow::Result<(&'a str, &'a str)> {
    s.split_once(sep)
        .map(|(k, v)| (k.trim(), v.trim()))
        .with_context(|| format!("{flag} {s:?}: KEY{sep}VALUE expected"))
}

/// One request through a plugin, as `plugin run` and each `plugin test` case describe it.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The request path (with its query).
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Plugin parameters.
    pub params: Vec<(String, String)>,
    /// Segments, experiments and campaigns.
    pub rules: Option<PathBuf>,
    /// Content fragments.
    pub fragments: Option<PathBuf>,
    /// Segments the visitor is in (empty: the rules decide).
    pub segments: Vec<String>,
    /// Forced variations.
    pub variations: std::collections::BTreeMap<String, i64>,
    /// The visitor's consent, comma-separated (`None`: all).
    pub consent: Option<String>,
    /// The request's instant (`None`: now).
    pub at: Option<jiff::Timestamp>,
    /// desktop, mobile, tablet or bot.
    pub device: String,
    /// The visitor's country.
    pub country: Option<String>,
    /// The visitor's `Accept-Language`.
    pub language: Option<String>,
    /// What the origin answers: status, content type and body.
    pub origin: (u16, &'static str, Bytes),
}

/// What a visit produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The response status.
    pub status: u16,
    /// The request path.
    pub path: String,
    /// Response headers that do not change from run to run, sorted by name.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Bytes,
    /// Events recorded (name and JSON properties, one per line).
    pub events: Vec<String>,
    /// Plugin faults (metric lines).
    pub faults: Vec<String>,
}

impl Outcome {
    /// The outcome as `plugin run` prints it and `plugin test` compares it.
    pub fn render(&self) -> String {
        let mut out = format!("{} {}\n", self.status, self.path);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out.push('\n');
        out.push_str(&String::from_utf8_lossy(&self.body));
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("\n--- events\n");
        if self.events.is_empty() {
            out.push_str("none\n");
        }
        for e in &self.events {
            out.push_str(e);
            out.push('\n');
        }
        out.push_str("--- faults\n");
        if self.faults.is_empty() {
            out.push_str("none\n");
        }
        for f in &self.faults {
            out.push_str(f);
            out.push('\n');
        }
        out
    }
}

/// Headers that differ on every run (ids, clocks, timings, the visitor's new cookie).
const VOLATILE: &[&str] = &["date", "set-cookie", "x-request-id", "server-timing", "age"];

/// Runs the plugin once and returns what to print.
pub async fn run(args: RunArgs) -> anyhow::Result<String> {
    let json = args.page.extension().is_some_and(|e| e == "json");
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| if json { "/data.json" } else { "/" }.to_owned());
    let page = std::fs::read(&args.page)
        .with_context(|| format!("reading the page {}", args.page.display()))?;
    let mut variations = std::collections::BTreeMap::new();
    for v in &args.variations {
        let (k, n) = key_value("--variation", v, '=')?;
        let n = n
            .parse::<i64>()
            .with_context(|| format!("--variation {v:?}: EXPERIMENT=INDEX expected"))?;
        variations.insert(k.to_owned(), n);
    }
    let request = Visit {
        path,
        headers: args
            .headers
            .iter()
            .map(|h| key_value("--header", h, ':').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<anyhow::Result<_>>()?,
        params: args
            .params
            .iter()
            .map(|p| key_value("--param", p, '=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<anyhow::Result<_>>()?,
        rules: args.rules.clone(),
        fragments: args.fragments.clone(),
        segments: args.segments.clone(),
        variations,
        consent: args.consent.clone(),
        at: args
            .at
            .as_deref()
            .map(|a| a.parse().with_context(|| format!("--at {a:?}: RFC 3339")))
            .transpose()?,
        device: args.device.clone(),
        country: args.country.clone(),
        language: args.language.clone(),
        origin: (200, content_type(json), Bytes::from(page)),
    };
    let work = crate::private_dir::PrivateDir::create("plugin-run")?;
    Ok(visit(&args.file, &request, work.path()).await?.render())
}

/// The content type of an origin page.
pub fn content_type(json: bool) -> &'static str {
    if json {
        "application/json"
    } else {
        "text/html; charset=utf-8"
    }
}

/// Runs `file` for one visit on a throwaway host and origin; `work` holds the host's files
/// (its compile cache is reused by later visits in the same directory).
pub async fn visit(file: &Path, v: &Visit, work: &Path) -> anyhow::Result<Outcome> {
    let ua = user_agent(&v.device)?;
    if !v.path.starts_with('/') {
        bail!("path {:?}: a path starting with '/'", v.path);
    }
    let origin = crate::server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let origin_addr = origin.local_addr()?;
    // Stopped however this visit ends (an error below included), so a fixture run of many
    // cases leaves no origin or host behind.
    let _origin_task = AbortOnDrop(serve_page(v.origin.clone(), origin));

    let mut tenant = format!(
        "[[tenant]]\nname = \"run\"\nhosts = [\"plugin.run\"]\norigin = \"http://{origin_addr}\"\n\
         geo_header = \"x-veneer-run-country\"\n"
    );
    match &v.rules {
        Some(r) => {
            let text =
                std::fs::read_to_string(r).with_context(|| format!("reading {}", r.display()))?;
            let rules = veneer_rules::RuleSet::from_json_str(&text).map_err(|errors| {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::anyhow!("{}: {}", r.display(), list.join("; "))
            })?;
            for s in &v.segments {
                if !rules.segment_names().contains(s) {
                    bail!("segment {s:?}: {} defines no such segment", r.display());
                }
            }
            tenant.push_str(&format!(
                "rules = {}\n",
                toml_str(&absolute(r)?.to_string_lossy())
            ));
        }
        // Without rules, each segment asked for is a segment of its own that the visitor is in.
        None if !v.segments.is_empty() => {
            let segments: serde_json::Map<String, serde_json::Value> = v
                .segments
                .iter()
                .map(|s| (s.clone(), serde_json::json!({})))
                .collect();
            let file = work.join(format!("rules-{}.json", uuid::Uuid::new_v4().simple()));
            std::fs::write(
                &file,
                serde_json::json!({ "segments": segments }).to_string(),
            )?;
            tenant.push_str(&format!("rules = {}\n", toml_str(&file.to_string_lossy())));
        }
        None => {}
    }
    if let Some(f) = &v.fragments {
        tenant.push_str(&format!(
            "fragments = {}\n",
            toml_str(&absolute(f)?.to_string_lossy())
        ));
    }
    tenant.push_str(&format!(
        "[tenant.limits]\nrequests_per_second_per_client = 0\n\
         [[tenant.plugin]]\nname = \"plugin\"\npath = {}\nparams = {}\n",
        toml_str(&absolute(file)?.to_string_lossy()),
        params_table(&v.params)
    ));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let events = work.join(format!("events-{run_id}.jsonl"));
    // A private compile cache: the runtime loads precompiled code from it, so it must not be
    // a directory another user could have written to.
    let cache = work.join("cache");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncookie_secret = \"plugin-run-{run_id}-0123456789abcdef\"\n\
         cache_dir = {}\nanalytics_log = {}\ntrusted_proxies = [\"127.0.0.1\"]\n\n{tenant}",
        toml_str(&cache.to_string_lossy()),
        toml_str(&events.to_string_lossy()),
    );
    let config_file = work.join(format!("veneer-{run_id}.toml"));
    std::fs::write(&config_file, &text)?;
    let config = Config::load(&config_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Arc::new(App::build(&config)?);
    let listener = crate::server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let _server = AbortOnDrop(crate::server::serve(app.clone(), listener));

    // The visitor's segments, variations, consent and instant travel as a preview, as a
    // marketer's preview link would carry them, but one that records what the visit would.
    let overridden =
        !v.segments.is_empty() || !v.variations.is_empty() || v.consent.is_some() || v.at.is_some();
    let mut url = format!("http://{addr}{}", v.path);
    if overridden {
        let preview = Preview {
            tenant: "run".into(),
            segments: (!v.segments.is_empty()).then(|| v.segments.clone()),
            variations: v.variations.clone(),
            consent: v.consent.as_ref().map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty() && s != "none")
                    .collect()
            }),
            at: v.at,
            expires: jiff::Timestamp::now().as_second() + 600,
            record: true,
        };
        url.push(if v.path.contains('?') { '&' } else { '?' });
        url.push_str(&format!(
            "{}={}",
            crate::preview::PARAM,
            preview.sign(&app.signer)
        ));
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(&url)
        .header(http::header::HOST, "plugin.run")
        .header(http::header::USER_AGENT, ua);
    if let Some(c) = &v.country {
        req = req.header("x-veneer-run-country", c.as_str());
    }
    if let Some(l) = &v.language {
        req = req.header(http::header::ACCEPT_LANGUAGE, l.as_str());
    }
    for (k, val) in &v.headers {
        req = req.header(k.as_str(), val.as_str());
    }
    let response = client
        .request(req.body(Empty::new())?)
        .await
        .context("requesting the page through the plugin")?;
    let (head, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    app.analytics.flush().await;

    let mut headers: Vec<(String, String)> = head
        .headers
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    headers.sort();
    let recorded = std::fs::read_to_string(&events).unwrap_or_default();
    // Sorted: the host's events and the plugin's reach the log by different paths, so their
    // order is not the same from run to run.
    let mut events: Vec<String> = recorded
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap_or_default(),
                e["properties"]
            )
        })
        .collect();
    events.sort();
    let faults = app
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("veneer_plugin_faults_total"))
        .map(str::to_owned)
        .collect();
    Ok(Outcome {
        status: head.status.as_u16(),
        path: v.path.clone(),
        headers,
        body,
        events,
        faults,
    })
}

/// Serves the origin's answer for every request on `listener`.
fn serve_page(
    (status, content_type, page): (u16, &'static str, Bytes),
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let mut response = http::Response::new(http_body_util::Full::new(page.clone()));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(content_type),
                    );
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
