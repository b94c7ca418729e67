//! `veneer admin ...`: the admin API from the command line, so operators script it without
//! curl. Every command takes `--url` and `--token` (defaults: `VENEER_ADMIN_URL`,
//! `VENEER_ADMIN_TOKEN`); it exits 0 on success and otherwise prints a one-line reason on
//! stderr. Commands that create something print its id (or the token) alone on stdout;
//! the others print the API's JSON answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::admin::percent_encode;

/// `veneer admin`.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin listener, e.g. `http://127.0.0.1:9090`.
    #[arg(long, global = true, env = "VENEER_ADMIN_URL")]
    pub url: Option<String>,
    /// A bearer token (operator or tenant).
    #[arg(
        long,
        global = true,
        env = "VENEER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Tenants (sites): create, list, show, update, disable, enable, delete.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Admin tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Plugin versions: push, activate, roll back, list, params, remove.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// A tenant's rules (segments, experiments, campaigns, saved groups).
    Rules {
        #[command(subcommand)]
        command: DocCommand,
    },
    /// A tenant's content fragments.
    Fragments {
        #[command(subcommand)]
        command: DocCommand,
    },
    /// Preview links: a page as a segment, variation, consent and instant, recording nothing.
    Preview {
        #[command(subcommand)]
        command: PreviewCommand,
    },
    /// Customer profiles: CRM import, and data-subject export and erasure.
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Analytics events as counted (on a fleet node: the whole fleet's).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The audit log, newest first.
    Audit {
        /// Only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print how many events of this name the tenant recorded (the number alone).
    Count {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The event's name.
        #[arg(long)]
        event: String,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Import CRM attributes from a JSON-lines file, one
    /// `{"customer": ID, "attributes": {...}}` per line (an upsert of the attributes named;
    /// `null` removes one). A malformed line is reported with its number and nothing of it is
    /// written; the rest is imported, and the command fails if any line was refused.
    Import {
        /// The JSON-lines file.
        file: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Print everything kept about a customer or a visitor (profile, linked visitors, ledger rows).
    Export {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        who: SubjectArgs,
    },
    /// Erase everything kept about a customer (with their linked visitors) or a visitor.
    Erase {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        who: SubjectArgs,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SubjectArgs {
    /// A customer id.
    #[arg(long)]
    customer: Option<String>,
    /// A visitor id (the visitor cookie's).
    #[arg(long)]
    visitor: Option<String>,
}

impl SubjectArgs {
    fn path(&self) -> String {
        match (&self.customer, &self.visitor) {
            (Some(c), _) => format!("customers/{}", percent_encode(c)),
            (None, Some(v)) => format!("visitors/{}", percent_encode(v)),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }
}

/// Bytes sent per import request (whole lines).
const IMPORT_PART_BYTES: usize = 4 << 20;

async fn import(api: &Api, file: &Path, tenant: &str) -> anyhow::Result<String> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (mut imported, mut refused) = (0u64, 0u64);
    let mut first_line = 1usize;
    let mut rest = text.as_slice();
    let refuse = |line: usize, error: &str| eprintln!("{}:{line}: {error}", file.display());
    while !rest.is_empty() {
        // Whole lines up to the part size. A line longer than the host takes is refused here
        // (with its number, like any other) rather than sent.
        let first_end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        if first_end > crate::profile::MAX_LINE_BYTES + 2 {
            refuse(
                first_line,
                &format!("longer than {} bytes", crate::profile::MAX_LINE_BYTES),
            );
            refused += 1;
            first_line += 1;
            rest = &rest[first_end..];
            continue;
        }
        let mut end = rest.len().min(IMPORT_PART_BYTES);
        if end < rest.len() {
            end = rest[..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(first_end, |i| i + 1);
        }
        let (part, next) = rest.split_at(end);
        let path = format!(
            "/v1/tenants/{}/profiles/import?first_line={first_line}",
            percent_encode(tenant)
        );
        let report = api
            .send(
                Method::POST,
                &path,
                Some("application/x-ndjson"),
                Bytes::copy_from_slice(part),
            )
            .await?;
        imported += report["imported"].as_u64().unwrap_or(0);
        refused += report["refused_count"].as_u64().unwrap_or(0);
        for r in report["refused"].as_array().into_iter().flatten() {
            refuse(
                usize::try_from(r["line"].as_u64().unwrap_or(0)).unwrap_or(0),
                r["error"].as_str().unwrap_or("refused"),
            );
        }
        first_line +=
            part.iter().filter(|&&b| b == b'\n').count() + usize::from(!part.ends_with(b"\n"));
        rest = next;
    }
    let lines = |n: u64| if n == 1 { "line" } else { "lines" };
    if refused > 0 {
        bail!(
            "{imported} {} imported, {refused} refused (listed above)",
            lines(imported)
        );
    }
    Ok(format!("{imported} {} imported", lines(imported)))
}

#[derive(Subcommand)]
enum PreviewCommand {
    /// Create a link; prints its path (add it to the site's address).
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// A segment the visitor is shown as being in (repeat for more; none given: the
        /// rules decide).
        #[arg(long = "segment")]
        segments: Vec<String>,
        /// A forced variation, `EXPERIMENT=INDEX` (repeatable).
        #[arg(long = "variation")]
        variations: Vec<String>,
        /// Consent shown as given, e.g. `analytics,personalization` (`none` for none).
        #[arg(long)]
        consent: Option<String>,
        /// The instant to show the page at (RFC 3339), e.g. one second before a campaign ends.
        #[arg(long)]
        at: Option<String>,
        /// How long the link works, in seconds (default a day).
        #[arg(long)]
        ttl: Option<u64>,
        /// The page (default `/`).
        #[arg(long)]
        path: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Its name.
        name: String,
        /// A Host it serves (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Its origin, `http://host:port`.
        #[arg(long)]
        origin: String,
    },
    /// List the tenants this token sees.
    List,
    /// Show one tenant.
    Show {
        /// Its name.
        name: String,
    },
    /// Change a tenant: a JSON merge patch of its spec, e.g. '{"origin": "http://..."}'.
    Update {
        /// Its name.
        name: String,
        /// The patch.
        #[arg(long)]
        json: String,
    },
    /// Stop serving a tenant (its state is kept).
    Disable {
        /// Its name.
        name: String,
    },
    /// Serve a disabled tenant again.
    Enable {
        /// Its name.
        name: String,
    },
    /// Delete a tenant and everything it owns.
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints the token alone (it is not shown again).
    Create {
        /// A tenant token for this tenant (without: an operator token).
        #[arg(long)]
        tenant: Option<String>,
        /// A note for the audit log.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a token by id.
    Revoke {
        /// Its id.
        id: i64,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Upload a component and activate it; prints the new version id alone.
    Push {
        /// The `.wasm` component.
        file: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The plugin's name in the chain.
        #[arg(long)]
        name: String,
        /// A param, KEY=VALUE (repeat for more; replaces the plugin's params).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Upload without activating.
        #[arg(long)]
        no_activate: bool,
    },
    /// Activate a stored version.
    Activate {
        /// The version id.
        version: i64,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The plugin.
        #[arg(long)]
        name: String,
    },
    /// Re-activate the version active before the current one.
    Rollback {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The plugin.
        #[arg(long)]
        name: String,
    },
    /// List a tenant's plugins and their versions.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Replace a plugin's params.
    Params {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The plugin.
        #[arg(long)]
        name: String,
        /// KEY=VALUE (repeat for more).
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// Take a plugin out of the chain (its versions stay stored).
    Remove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The plugin.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum DocCommand {
    /// Replace it with a file (rules: the same JSON as the `rules` file; fragments: JSON, or
    /// the TOML of the `fragments` file).
    Set {
        /// The file.
        file: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Merge a JSON merge patch (RFC 7396) into it.
    Patch {
        /// The patch file.
        file: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Print it.
    Get {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// Runs one `veneer admin` command; the text to print on success.
pub async fn run(args: AdminArgs) -> anyhow::Result<String> {
    let api = Api::from_args(args.url, args.token)?;
    let t = |s: &str| percent_encode(s);
    match args.command {
        AdminCommand::Tenant { command } => match command {
            TenantCommand::Create {
                name,
                hosts,
                origin,
            } => {
                let v = api
                    .json(
                        Method::POST,
                        "/v1/tenants",
                        &json!({"name": name, "hosts": hosts, "origin": origin}),
                    )
                    .await?;
                Ok(pretty(&v))
            }
            TenantCommand::List => Ok(pretty(&api.get("/v1/tenants").await?)),
            TenantCommand::Show { name } => Ok(pretty(
                &api.get(&format!("/v1/tenants/{}", t(&name))).await?,
            )),
            TenantCommand::Update { name, json } => {
                let patch: Value =
                    serde_json::from_str(&json).context("--json is not valid JSON")?;
                let v = api
                    .json(Method::PATCH, &format!("/v1/tenants/{}", t(&name)), &patch)
                    .await?;
                Ok(pretty(&v))
            }
            TenantCommand::Disable { name } => {
                let path = format!("/v1/tenants/{}/disable", t(&name));
                Ok(pretty(&api.json(Method::POST, &path, &json!({})).await?))
            }
            TenantCommand::Enable { name } => {
                let path = format!("/v1/tenants/{}/enable", t(&name));
                Ok(pretty(&api.json(Method::POST, &path, &json!({})).await?))
            }
            TenantCommand::Delete { name } => {
                let path = format!("/v1/tenants/{}", t(&name));
                Ok(pretty(
                    &api.send(Method::DELETE, &path, None, Bytes::new()).await?,
                ))
            }
        },
        AdminCommand::Token { command } => match command {
            TokenCommand::Create { tenant, label } => {
                let v = api
                    .json(
                        Method::POST,
                        "/v1/tokens",
                        &match &tenant {
                            Some(t) => json!({"tenant": t, "label": label}),
                            None => json!({"operator": true, "label": label}),
                        },
                    )
                    .await?;
                field(&v, "token")
            }
            TokenCommand::Revoke { id } => {
                let path = format!("/v1/tokens/{id}");
                Ok(pretty(
                    &api.send(Method::DELETE, &path, None, Bytes::new()).await?,
                ))
            }
        },
        AdminCommand::Plugin { command } => match command {
            PluginCommand::Push {
                file,
                tenant,
                name,
                params,
                no_activate,
            } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let mut query = format!("activate={}", !no_activate);
                for p in &params {
                    if !p.contains('=') {
                        bail!("--param {p:?}: KEY=VALUE expected");
                    }
                    query.push_str(&format!("&param={}", percent_encode(p)));
                }
                let path = format!(
                    "/v1/tenants/{}/plugins/{}/versions?{query}",
                    t(&tenant),
                    t(&name)
                );
                let v = api
                    .send(
                        Method::POST,
                        &path,
                        Some("application/wasm"),
                        Bytes::from(bytes),
                    )
                    .await?;
                field(&v, "version")
            }
            PluginCommand::Activate {
                version,
                tenant,
                name,
            } => {
                let path = format!("/v1/tenants/{}/plugins/{}/activate", t(&tenant), t(&name));
                let v = api
                    .json(Method::POST, &path, &json!({"version": version}))
                    .await?;
                Ok(pretty(&v))
            }
            PluginCommand::Rollback { tenant, name } => {
                let path = format!("/v1/tenants/{}/plugins/{}/rollback", t(&tenant), t(&name));
                let v = api.json(Method::POST, &path, &json!({})).await?;
                field(&v, "version")
            }
            PluginCommand::List { tenant } => {
                let path = format!("/v1/tenants/{}/plugins", t(&tenant));
                Ok(pretty(&api.get(&path).await?))
            }
            PluginCommand::Params {
                tenant,
                name,
                params,
            } => {
                let path = format!("/v1/tenants/{}/plugins/{}/params", t(&tenant), t(&name));
                let v = api
                    .json(Method::PUT, &path, &json!(key_values(&params)?))
                    .await?;
                Ok(pretty(&v))
            }
            PluginCommand::Remove { tenant, name } => {
                let path = format!("/v1/tenants/{}/plugins/{}", t(&tenant), t(&name));
                Ok(pretty(
                    &api.send(Method::DELETE, &path, None, Bytes::new()).await?,
                ))
            }
        },
        AdminCommand::Rules { command } => doc(&api, "rules", command).await,
        AdminCommand::Fragments { command } => doc(&api, "fragments", command).await,
        AdminCommand::Preview {
            command:
                PreviewCommand::Create {
                    tenant,
                    segments,
                    variations,
                    consent,
                    at,
                    ttl,
                    path,
                },
        } => {
            let mut forced = serde_json::Map::new();
            for v in &variations {
                let (k, n) = v
                    .split_once('=')
                    .and_then(|(k, n)| Some((k, n.parse::<i64>().ok()?)))
                    .with_context(|| format!("--variation {v:?}: EXPERIMENT=INDEX expected"))?;
                forced.insert(k.to_owned(), json!(n));
            }
            let mut body = json!({ "variations": forced });
            if !segments.is_empty() {
                body["segments"] = json!(segments);
            }
            if let Some(c) = consent {
                let list: Vec<&str> = c
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && *s != "none")
                    .collect();
                body["consent"] = json!(list);
            }
            if let Some(at) = at {
                body["at"] = json!(at);
            }
            if let Some(ttl) = ttl {
                body["ttl_seconds"] = json!(ttl);
            }
            if let Some(p) = path {
                body["path"] = json!(p);
            }
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/tenants/{}/previews", t(&tenant)),
                    &body,
                )
                .await?;
            field(&v, "path")
        }
        AdminCommand::Profile { command } => match command {
            ProfileCommand::Import { file, tenant } => import(&api, &file, &tenant).await,
            ProfileCommand::Export { tenant, who } => {
                let path = format!("/v1/tenants/{}/profiles/{}", t(&tenant), who.path());
                Ok(pretty(&api.get(&path).await?))
            }
            ProfileCommand::Erase { tenant, who } => {
                let path = format!("/v1/tenants/{}/profiles/{}", t(&tenant), who.path());
                Ok(pretty(
                    &api.send(Method::DELETE, &path, None, Bytes::new()).await?,
                ))
            }
        },
        AdminCommand::Events {
            command: EventsCommand::Count { tenant, event },
        } => {
            let path = format!(
                "/v1/tenants/{}/events/count?event={}",
                t(&tenant),
                percent_encode(&event)
            );
            field(&api.get(&path).await?, "count")
        }
        AdminCommand::Audit { tenant, limit } => {
            let path = match tenant {
                Some(name) => format!("/v1/tenants/{}/audit?limit={limit}", t(&name)),
                None => format!("/v1/audit?limit={limit}"),
            };
            Ok(pretty(&api.get(&path).await?))
        }
    }
}

async fn doc(api: &Api, kind: &str, command: DocCommand) -> anyhow::Result<String> {
    let (method, file, tenant) = match command {
        DocCommand::Get { tenant } => {
            let path = format!("/v1/tenants/{}/{kind}", percent_encode(&tenant));
            return Ok(pretty(&api.get(&path).await?));
        }
        DocCommand::Set { file, tenant } => (Method::PUT, file, tenant),
        DocCommand::Patch { file, tenant } => (Method::PATCH, file, tenant),
    };
    let body = read_document(&file)?;
    let path = format!("/v1/tenants/{}/{kind}", percent_encode(&tenant));
    api.json(method, &path, &body).await?;
    Ok(format!("{kind} of {tenant} updated"))
}

/// A JSON file, or a TOML file (by its extension) as JSON.
fn read_document(file: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if file.extension().is_some_and(|e| e == "toml") {
        let v: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: not TOML", file.display()))?;
        return serde_json::to_value(v).context("converting TOML");
    }
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))
}

fn key_values(params: &[String]) -> anyhow::Result<HashMap<String, String>> {
    params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--param {p:?}: KEY=VALUE expected"))
        })
        .collect()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn field(v: &Value, key: &str) -> anyhow::Result<String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => bail!("the answer has no {key:?}: {v}"),
    }
}

struct Api {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// From `--url` and `--token` (or their environment variables).
    fn from_args(url: Option<String>, token: Option<String>) -> anyhow::Result<Api> {
        let url = url.context("no admin URL: pass --url or set VENEER_ADMIN_URL")?;
        let token = token.context("no token: pass --token or set VENEER_ADMIN_TOKEN")?;
        Api::new(&url, token)
    }

    fn new(url: &str, token: String) -> anyhow::Result<Api> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("--url {url:?}: an http:// URL of the admin listener expected");
        }
        Ok(Api {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None, Bytes::new()).await
    }

    async fn json(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(method, path, Some("application/json"), bytes)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Value> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Full::new(body)).context("building the request")?;
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            self.client.request(req),
        )
        .await
        .context("the admin API did not answer within 120 s")?
        .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| json!({"error": String::from_utf8_lossy(&bytes).trim().to_owned()}),
        );
        if !status.is_success() {
            let reason = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            // One line: multi-line reasons (every rules error) are joined.
            bail!(
                "{status}: {}",
                reason.lines().collect::<Vec<_>>().join("; ")
            );
        }
        Ok(value)
    }
}

/// `veneer report`: an experiment's or a campaign's results, or the tenant's segment sizes, as a
/// readable table (or the API's JSON).
#[derive(Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["experiment", "campaign", "segments"])))]
pub struct ReportArgs {
    /// The admin listener, e.g. `http://127.0.0.1:9090`.
    #[arg(long, env = "VENEER_ADMIN_URL")]
    pub url: Option<String>,
    /// A bearer token (operator, or the tenant's).
    #[arg(long, env = "VENEER_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The experiment's key.
    #[arg(long)]
    pub experiment: Option<String>,
    /// The campaign's id.
    #[arg(long)]
    pub campaign: Option<String>,
    /// Visitors per segment, among those exposed to an experiment or a campaign holdout.
    #[arg(long)]
    pub segments: bool,
    /// The goal conversions are counted for (with --experiment or --campaign).
    #[arg(long, required_unless_present = "segments")]
    pub goal: Option<String>,
    /// `bayesian` (chance to win, risk) or `frequentist` (p-value).
    #[arg(long, default_value = "bayesian")]
    pub engine: String,
    /// Print the API's JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Fetches and formats an experiment report.
pub async fn report(args: ReportArgs) -> anyhow::Result<String> {
    let api = Api::from_args(args.url, args.token)?;
    let tenant = percent_encode(&args.tenant);
    if args.segments {
        let v = api
            .get(&format!("/v1/tenants/{tenant}/reports/segments"))
            .await?;
        return Ok(if args.json {
            pretty(&v)
        } else {
            segments_table(&v)
        });
    }
    let goal = percent_encode(args.goal.as_deref().unwrap_or_default());
    let (path, campaign) = match (&args.experiment, &args.campaign) {
        (Some(e), _) => (
            format!(
                "/v1/tenants/{tenant}/reports/experiments/{}?goal={goal}&engine={}",
                percent_encode(e),
                percent_encode(&args.engine)
            ),
            false,
        ),
        (None, Some(c)) => (
            format!(
                "/v1/tenants/{tenant}/reports/campaigns/{}?goal={goal}",
                percent_encode(c)
            ),
            true,
        ),
        (None, None) => bail!("give --experiment KEY or --campaign ID"),
    };
    let v = api.get(&path).await?;
    if args.json {
        return Ok(pretty(&v));
    }
    Ok(if campaign {
        campaign_table(&v)
    } else {
        report_table(&v)
    })
}

/// Segment sizes as a marketer reads them.
pub fn segments_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let total = v["exposed_visitors"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "tenant {}: {total} visitor(s) exposed to experiments or holdouts",
        v["tenant"].as_str().unwrap_or("?")
    );
    let segments = v["segments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let width = segments
        .iter()
        .filter_map(|s| s["segment"].as_str())
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>6}",
        "segment", "visitors", "share"
    );
    for s in segments {
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>5.1}%",
            s["segment"].as_str().unwrap_or("?"),
            s["visitors"].as_u64().unwrap_or(0),
            s["share"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    out
}

/// A campaign report as a marketer reads it.
pub fn campaign_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let currency = v["currency"].as_str().unwrap_or("");
    let _ = writeln!(
        out,
        "campaign {} ({}) · goal {} · tenant {}\nlive {} → {} · conversions within {} days of an impression",
        s("campaign"),
        s("name"),
        s("goal"),
        s("tenant"),
        s("start"),
        s("end"),
        v["attribution_days"]
    );
    let _ = writeln!(
        out,
        "\nimpressions {}   reach {}   conversions {} ({:.2}% of reach)   value {:.2} {currency}   value/user {:.2}",
        v["impressions"],
        v["reach"],
        v["conversions"],
        n("conversion_rate") * 100.0,
        n("value"),
        n("value_per_user"),
    );
    match (v["cost"].as_f64(), v["roi"].as_f64()) {
        (Some(cost), Some(roi)) => {
            let _ = writeln!(
                out,
                "cost {cost:.2} {currency}   return on investment {:+.1}%",
                roi * 100.0
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "cost not set (add \"cost\" to the campaign for its ROI)"
            );
        }
    }
    let empty = Vec::new();
    if let Some(h) = v["holdout"].as_object() {
        let groups = h.get("groups").and_then(Value::as_array).unwrap_or(&empty);
        let _ = writeln!(
            out,
            "\nholdout: {:.0}% of eligible visitors not shown (its control group); sample ratio p = {:.4}{}",
            h.get("share").and_then(Value::as_f64).unwrap_or(0.0) * 100.0,
            h.get("srm_p").and_then(Value::as_f64).unwrap_or(1.0),
            if h.get("srm_warning").and_then(Value::as_bool) == Some(true) {
                "  WARNING: the split is off"
            } else {
                ""
            }
        );
        for g in groups {
            let _ = writeln!(
                out,
                "  {:<10} users {:>7}   conversions {:>6}   rate {:>6.2}%   value/user {:.2}",
                g["name"].as_str().unwrap_or_default(),
                g["users"].as_u64().unwrap_or(0),
                g["conversions"].as_u64().unwrap_or(0),
                g["rate"].as_f64().unwrap_or(0.0) * 100.0,
                g["value_per_user"].as_f64().unwrap_or(0.0),
            );
        }
        let missing = Value::Null;
        let r = h
            .get("conversion_rate")
            .and_then(|c| c.get(0))
            .unwrap_or(&missing);
        let ci = r["ci"].as_array();
        let _ = writeln!(
            out,
            "  uplift in rate from showing it: {} [{}, {}], chance it helps {}",
            pct(r["expected"].as_f64()),
            pct(ci.and_then(|c| c.first()).and_then(Value::as_f64)),
            pct(ci.and_then(|c| c.get(1)).and_then(Value::as_f64)),
            r["chance_to_win"]
                .as_f64()
                .map_or_else(|| "—".to_owned(), |c| format!("{:.1}%", c * 100.0))
        );
    }
    for (title, key) in [("by day", "by_day"), ("by channel", "by_channel")] {
        let rows = v[key].as_array().unwrap_or(&empty);
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{title:<14} {:>11} {:>8} {:>11} {:>12}",
            "impressions", "reach", "conversions", "value"
        );
        for r in rows {
            let _ = writeln!(
                out,
                "{:<14} {:>11} {:>8} {:>11} {:>12.2}",
                r["key"].as_str().unwrap_or_default(),
                r["impressions"].as_u64().unwrap_or(0),
                r["reach"].as_u64().unwrap_or(0),
                r["conversions"].as_u64().unwrap_or(0),
                r["value"].as_f64().unwrap_or(0.0)
            );
        }
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), |x| format!("{:+.1}%", x * 100.0))
}

/// The report as a marketer reads it.
pub fn report_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    let srm_p = v["srm_p"].as_f64().unwrap_or(1.0);
    let _ = writeln!(
        out,
        "experiment {} · goal {} · tenant {} · {} engine",
        s("experiment"),
        s("goal"),
        s("tenant"),
        s("engine")
    );
    let _ = writeln!(
        out,
        "sample ratio: p = {srm_p:.4}{}   bots excluded: {}",
        if v["srm_warning"].as_bool() == Some(true) {
            "  WARNING: the traffic split is off (sample ratio mismatch); do not trust these results"
        } else {
            " (ok)"
        },
        v["bots_excluded"].as_u64().unwrap_or(0)
    );
    let bayesian = s("engine") == "bayesian";
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>11} {:>8} {:>11}   {:<30} {:>13}",
        "variation",
        "users",
        "conversions",
        "rate",
        "value/user",
        "uplift in rate (95% interval)",
        if bayesian { "chance to win" } else { "p-value" }
    );
    let empty = Vec::new();
    let results = v["conversion_rate"].as_array().unwrap_or(&empty);
    for (i, row) in v["variations"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let name = format!(
            "{} {}",
            row["variation"],
            row["name"].as_str().unwrap_or_default()
        );
        let (uplift, decision) = if i == 0 {
            ("control".to_owned(), String::new())
        } else {
            let missing = Value::Null;
            let r = results.get(i - 1).unwrap_or(&missing);
            let ci = r["ci"].as_array();
            let lo = ci.and_then(|c| c.first()).and_then(Value::as_f64);
            let hi = ci.and_then(|c| c.get(1)).and_then(Value::as_f64);
            let uplift = match r["error_message"].as_str() {
                Some(msg) => format!("n/a ({msg})"),
                None => format!("{} [{}, {}]", pct(r["expected"].as_f64()), pct(lo), pct(hi)),
            };
            let decision = if bayesian {
                r["chance_to_win"]
                    .as_f64()
                    .map_or_else(String::new, |c| format!("{:.1}%", c * 100.0))
            } else {
                r["p_value"]
                    .as_f64()
                    .map_or_else(String::new, |p| format!("{p:.4}"))
            };
            (uplift, decision)
        };
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>11} {:>7.2}% {:>11.2}   {:<30} {:>13}",
            name,
            row["users"].as_u64().unwrap_or(0),
            row["conversions"].as_u64().unwrap_or(0),
            row["rate"].as_f64().unwrap_or(0.0) * 100.0,
            row["value_per_user"].as_f64().unwrap_or(0.0),
            uplift,
            decision
        );
    }
    for (title, key, label) in [
        ("by day (exposure date, UTC)", "by_day", "day"),
        ("by segment (at exposure)", "by_segment", "segment"),
    ] {
        let groups = v[key].as_array().unwrap_or(&empty);
        if groups.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}: users / conversions per variation");
        for g in groups {
            let cells: Vec<String> = g["variations"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| format!("{}/{}", r["users"], r["conversions"]))
                .collect();
            let _ = writeln!(
                out,
                "  {:<24} {}",
                g[label].as_str().unwrap_or_default(),
                cells.join("   ")
            );
        }
    }
    out
}
