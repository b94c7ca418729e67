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

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))
}

/// Runs the plugin once and returns what to print.
pub async fn run(args: RunArgs) -> anyhow::Result<String> {
    let ua = user_agent(&args.device)?;
    let json = args.page.extension().is_some_and(|e| e == "json");
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| if json { "/data.json" } else { "/" }.to_owned());
    if !path.starts_with('/') {
        bail!("--path {path:?}: a path starting with '/'");
    }
    let page = std::fs::read(&args.page)
        .with_context(|| format!("reading the page {}", args.page.display()))?;
    let work = tempdir()?;
    // A throwaway origin answering every path with the page, typed by the page's own file
    // name (whatever the request path looks like).
    let content_type = if json {
        "application/json"
    } else {
        "text/html"
    };
    let origin = crate::server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let origin_addr = origin.local_addr()?;
    serve_page(Bytes::from(page), content_type, origin);

    let mut params = String::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?}: KEY=VALUE expected"))?;
        params.push_str(&format!("{} = {}, ", toml_str(k), toml_str(v)));
    }
    let mut tenant = format!(
        "[[tenant]]\nname = \"run\"\nhosts = [\"plugin.run\"]\norigin = \"http://{origin_addr}\"\n\
         geo_header = \"x-veneer-run-country\"\n"
    );
    match &args.rules {
        Some(r) => {
            let text =
                std::fs::read_to_string(r).with_context(|| format!("reading {}", r.display()))?;
            let rules = veneer_rules::RuleSet::from_json_str(&text).map_err(|errors| {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::anyhow!("{}: {}", r.display(), list.join("; "))
            })?;
            for s in &args.segments {
                if !rules.segment_names().contains(s) {
                    bail!("--segment {s:?}: {} defines no such segment", r.display());
                }
            }
            tenant.push_str(&format!(
                "rules = {}\n",
                toml_str(&absolute(r)?.to_string_lossy())
            ));
        }
        // Without rules, each --segment is a segment of its own that the visitor is in.
        None if !args.segments.is_empty() => {
            let segments: serde_json::Map<String, serde_json::Value> = args
                .segments
                .iter()
                .map(|s| (s.clone(), serde_json::json!({})))
                .collect();
            let file = work.join("rules.json");
            std::fs::write(
                &file,
                serde_json::json!({ "segments": segments }).to_string(),
            )?;
            tenant.push_str(&format!("rules = {}\n", toml_str(&file.to_string_lossy())));
        }
        None => {}
    }
    if let Some(f) = &args.fragments {
        tenant.push_str(&format!(
            "fragments = {}\n",
            toml_str(&absolute(f)?.to_string_lossy())
        ));
    }
    tenant.push_str(&format!(
        "[tenant.limits]\nrequests_per_second_per_client = 0\n\
         [[tenant.plugin]]\nname = \"plugin\"\npath = {}\nparams = {{ {} }}\n",
        toml_str(&absolute(&args.file)?.to_string_lossy()),
        params.trim_end_matches(", ")
    ));
    let events = work.join("events.jsonl");
    // A private compile cache: the runtime loads precompiled code from it, so it must not be
    // a directory another user could have written to.
    let cache = work.join("cache");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncookie_secret = \"plugin-run-{}-0123456789abcdef0123456789\"\n\
         cache_dir = {}\nanalytics_log = {}\ntrusted_proxies = [\"127.0.0.1\"]\n\n{tenant}",
        std::process::id(),
        toml_str(&cache.to_string_lossy()),
        toml_str(&events.to_string_lossy()),
    );
    let file = work.join("veneer.toml");
    std::fs::write(&file, &text)?;
    let config = Config::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Arc::new(App::build(&config)?);
    let listener = crate::server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let _server = crate::server::serve(app.clone(), listener);

    // The visitor's segments, variations, consent and instant travel as a preview, as a
    // marketer's preview link would carry them (so such a run records no events).
    let mut variations = std::collections::BTreeMap::new();
    for v in &args.variations {
        let (k, n) = v
            .split_once('=')
            .and_then(|(k, n)| Some((k.to_owned(), n.parse::<i64>().ok()?)))
            .with_context(|| format!("--variation {v:?}: EXPERIMENT=INDEX expected"))?;
        variations.insert(k, n);
    }
    let overridden = !args.segments.is_empty()
        || !variations.is_empty()
        || args.consent.is_some()
        || args.at.is_some();
    let mut url = format!("http://{addr}{path}");
    if overridden {
        let preview = Preview {
            tenant: "run".into(),
            segments: (!args.segments.is_empty()).then(|| args.segments.clone()),
            variations,
            consent: args.consent.as_ref().map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty() && s != "none")
                    .collect()
            }),
            at: args
                .at
                .as_deref()
                .map(|a| a.parse().with_context(|| format!("--at {a:?}: RFC 3339")))
                .transpose()?,
            expires: jiff::Timestamp::now().as_second() + 600,
        };
        url.push(if path.contains('?') { '&' } else { '?' });
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
    if let Some(c) = &args.country {
        req = req.header("x-veneer-run-country", c.as_str());
    }
    if let Some(l) = &args.language {
        req = req.header(http::header::ACCEPT_LANGUAGE, l.as_str());
    }
    let response = client
        .request(req.body(Empty::new())?)
        .await
        .context("requesting the page through the plugin")?;
    let (head, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    app.analytics.flush().await;

    let mut out = format!("{} {}\n", head.status.as_u16(), path);
    let mut names: Vec<_> = head
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::SET_COOKIE && *k != http::header::DATE)
        .collect();
    names.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (k, v) in names {
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&body));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let recorded = std::fs::read_to_string(&events).unwrap_or_default();
    out.push_str("\n--- events");
    if overridden {
        out.push_str(" (none: a run with segments, variations, consent or an instant is a preview, which records nothing)");
    }
    out.push('\n');
    for line in recorded.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            out.push_str(&format!(
                "{} {}\n",
                v["event"].as_str().unwrap_or_default(),
                v["properties"]
            ));
        }
    }
    let metrics = app.metrics.render();
    let faults: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("veneer_plugin_faults_total"))
        .collect();
    out.push_str("--- faults\n");
    if faults.is_empty() {
        out.push_str("none\n");
    }
    for f in faults {
        out.push_str(f);
        out.push('\n');
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

/// Serves `page` for every request on `listener`.
fn serve_page(page: Bytes, content_type: &'static str, listener: tokio::net::TcpListener) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let mut response = http::Response::new(http_body_util::Full::new(page.clone()));
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
    });
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "veneer-plugin-run-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
