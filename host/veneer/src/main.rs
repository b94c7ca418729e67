//! `veneer`: the edge personalization host.
//!
//! - `veneer serve --config FILE` runs the proxy.
//! - `veneer demo` runs the demo shop on embedded defaults.
//! - `veneer rules eval` / `veneer rules check FILE` test segment and experiment rules.
//! - `veneer plugin check FILE` says which plugin contract a component targets and whether
//!   this host can run it.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use veneer::app::App;
use veneer::config::Config;
use veneer::{demo, server};

// glibc's allocator showed up at ~15% of a proxied request's CPU (many small, short-lived
// allocations across threads); mimalloc handles that pattern with thread-local free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "veneer",
    version,
    about = "Edge personalization with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo shop (origin and proxy) on embedded defaults.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API and the dashboard listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// A MaxMind-format country database (examples/demo.sh installs one).
        #[arg(long)]
        geoip: Option<PathBuf>,
    },
    /// Develop plugins: the host in front of an origin or a folder of files, rebuilding and
    /// reloading plugin crates as they change; switch the visitor with ?veneer_segment=...
    Dev(Box<veneer::dev::DevArgs>),
    /// Test segment and experiment rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// An experiment's results from a running host: users, conversions, uplift with its
    /// interval, chance to win or p-value, by day and by segment (see README "Reports").
    Report(veneer::admin_cli::ReportArgs),
    /// Experiment statistics as GrowthBook computes them: JSON lines on stdin, one JSON
    /// answer per line on stdout, in order (see README "Statistics").
    Stats,
    /// Start something new: `veneer new plugin NAME`.
    New {
        #[command(subcommand)]
        what: NewCommand,
    },
    /// Inspect plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Drive a running host's admin API (tenants, tokens, plugins, rules, fragments, audit).
    Admin(veneer::admin_cli::AdminArgs),
    /// Personalize messages (e-mail, push, app, kiosk, voice) for a list of recipients with
    /// the tenant's rules, campaigns and plugins: one JSON line per recipient on stdout, in
    /// input order (exit status 2 when a line was too large or invalid).
    Render(Box<veneer::render::RenderArgs>),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print the contract version a component targets, its imports and exports, and whether
    /// this host links it (exit status 1 if not).
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// Run a plugin on a page as a chosen visitor at a chosen instant, through the real
    /// request flow, and print the answer, the events it recorded and any fault.
    Run(Box<veneer::plugin_run::RunArgs>),
    /// Run fixture cases (a folder per case: case.toml, origin.html or origin.json,
    /// expected.txt) through the component in the real request flow; a differing answer
    /// prints a diff and the command exits 1.
    Test {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The folder of cases.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Write each case's expected.txt from what the plugin does now.
        #[arg(long)]
        bless: bool,
    },
}

#[derive(Subcommand)]
enum NewCommand {
    /// A plugin crate on the SDK, outside this repository, that builds and tests at once.
    Plugin {
        /// The plugin's name (lower-case, digits and '-').
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The SDK's directory (default: this binary's checkout's guest-sdk).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Read JSON requests from stdin, one per line; write one JSON answer per line.
    Eval,
    /// Check a rules file (segments, experiments, campaigns, saved groups); report every error.
    Check {
        /// The rules JSON file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // Scripts drive these commands: a usage error is one line on stderr and exit status 2
    // (help and version print as clap prints them).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{line} (see `veneer help`)");
            std::process::exit(2);
        }
    };
    // A fixture run prints a verdict per case; the host's start-up lines would bury them.
    let default_level = match &cli.command {
        Command::Plugin {
            command: PluginCommand::Test { .. },
        }
        | Command::Render(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VENEER_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, and never with NO_COLOR (no-color.org).
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();
    let result = match cli.command {
        Command::Serve { config } => run_async(serve(config)),
        Command::Demo {
            listen,
            admin_listen,
            geoip,
        } => run_async(run_demo(listen, admin_listen, geoip)),
        Command::Dev(args) => run_async(veneer::dev::run(*args)),
        Command::Rules {
            command: RulesCommand::Eval,
        } => answer_lines(veneer_rules::cli::eval_line),
        Command::Rules {
            command: RulesCommand::Check { file },
        } => return rules_check(&file),
        Command::Stats => answer_lines(veneer_stats::answer_line),
        Command::New {
            what: NewCommand::Plugin { name, path, sdk },
        } => veneer::scaffold::new_plugin(&name, path.as_deref(), sdk.as_deref()).map(|dir| {
            println!("{}", dir.display());
        }),
        Command::Report(args) => run_async(async move {
            let out = veneer::admin_cli::report(args).await?;
            print!("{out}");
            Ok(())
        }),
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => plugin_check(&file),
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    fixtures,
                    bless,
                },
        } => {
            return run_async(async move {
                veneer::plugin_test::run_cases(&file, &fixtures, bless).await
            })
            .map_or_else(
                |e| {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                },
                |verdicts| {
                    let mut out = String::new();
                    let ok = veneer::plugin_test::report(&verdicts, &mut out);
                    print!("{out}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                },
            );
        }
        Command::Plugin {
            command: PluginCommand::Run(args),
        } => run_async(async move {
            print!("{}", veneer::plugin_run::run(*args).await?);
            Ok(())
        }),
        Command::Render(args) => {
            let result = run_async(async move {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                veneer::render::run(*args, &mut out).await
            });
            return match result {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(2),
                Err(e) => {
                    let reason = format!("{e:#}");
                    eprintln!("veneer: {}", reason.lines().collect::<Vec<_>>().join("; "));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Admin(args) => run_async(async move {
            let out = veneer::admin_cli::run(args).await?;
            println!("{out}");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: scripts read the reason from stderr.
            let reason = format!("{e:#}");
            eprintln!("veneer: {}", reason.lines().collect::<Vec<_>>().join("; "));
            ExitCode::FAILURE
        }
    }
}

fn plugin_check(file: &Path) -> anyhow::Result<()> {
    use veneer::plugin::{Contract, Limits, Runtime, RuntimeOptions};
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // A fresh private directory for the compile cache: the runtime loads precompiled code
    // from its cache directory, so it must never be one another user could write to.
    let cache = veneer::private_dir::PrivateDir::create("plugin-check")?;
    let runtime = Runtime::new(&RuntimeOptions {
        cache_dir: cache.path().to_owned(),
        max_memory_bytes: 64 << 20,
        max_instances: 4,
    })?;
    let info = runtime
        .inspect(&bytes)
        .with_context(|| format!("{}", file.display()))?;
    runtime
        .load_bytes("check", &bytes, Default::default(), Limits::default())
        .with_context(|| format!("{}", file.display()))?;
    println!("{}: veneer:plugin@{}", file.display(), info.version);
    println!(
        "  links against: {} (this host supports {})",
        info.contract,
        Contract::supported_list()
    );
    println!("  exports: {}", info.exports.join(", "));
    println!("  imports: {}", info.imports.join(", "));
    if info.deterministic {
        println!(
            "  declares itself deterministic: its answers are kept and served again per URL, \
             segments, device, locale and consents (see the plugin guide)"
        );
    }
    Ok(())
}

fn run_async<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?
        .block_on(f)
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let token = std::env::var("VENEER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| config.server.admin_token.clone());
    start(config, token).await
}

/// Serves `config` until SIGTERM or SIGINT; `admin_token` is the bootstrap operator token.
async fn start(config: Config, admin_token: Option<String>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let store = match &config.server.data_dir {
        Some(dir) => Some(veneer::store::Store::open(&config.resolve(dir))?),
        None => None,
    };
    let app = Arc::new(App::build_with(&config, store.is_none())?);
    let control = match store {
        Some(store) => {
            let token = admin_token;
            if token.is_none() {
                tracing::warn!(
                    "no VENEER_ADMIN_TOKEN (or [server] admin_token): only tokens already in the store can use the admin API"
                );
            }
            let mut control =
                veneer::control::Control::new(store, app.clone(), &config, token.as_deref())
                    .map_err(|e| anyhow::anyhow!("opening the state store: {}", e.message))?;
            let fleet = match &config.cluster {
                Some(cluster) => {
                    let credentials = cluster.credentials.as_ref().map(|c| config.resolve(c));
                    let fleet =
                        veneer::fleet::Fleet::connect(cluster, credentials, app.metrics.clone())
                            .await?;
                    tracing::info!(node = %cluster.node, nats = ?cluster.nats, "fleet node: sharing state through NATS JetStream");
                    control = control.with_fleet(fleet.clone());
                    veneer::fleet::ProfileShare::start(fleet.clone(), app.profiles.clone());
                    Some(fleet)
                }
                None => None,
            };
            if let Some(dir) = &config.server.data_dir {
                let log = veneer::outbox::EventLog::open(
                    &config.resolve(dir),
                    fleet,
                    app.metrics.clone(),
                )?;
                app.analytics.attach(log);
            }
            control
                .seed(&config)
                .await
                .context("importing the config into the state store")?;
            control.load_all().await?;
            // Serving the local copy first, then following the fleet: a node starts with
            // NATS down (static stability).
            let control = Arc::new(control);
            veneer::fleet::spawn_sync(control.clone());
            Some(control)
        }
        None => None,
    };
    let listener = server::bind(config.server.listen).await?;
    // The bound address: with port 0 in the config, the port the kernel chose.
    let bound = listener.local_addr().unwrap_or(config.server.listen);
    tracing::info!(listen = %bound, tenants = config.tenants.len(), "veneer is serving");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let plain = server::serve_until(app.clone(), listener, until_stopped());
    let secure = match config.server.tls_listen {
        Some(addr) => {
            let tls = veneer::tls::watch(app.clone())?;
            let listener = server::bind(addr).await?;
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(tls_listen = %addr, "serving TLS (certificates by SNI, h2 and HTTP/1.1 by ALPN)");
            Some(server::serve_tls_until(
                app.clone(),
                listener,
                tls,
                until_stopped(),
            ))
        }
        None => None,
    };
    // Both listeners stop together and drain together.
    let mut proxy = tokio::spawn(async move {
        let _ = plain.await;
        if let Some(secure) = secure {
            let _ = secure.await;
        }
    });
    if let Some(admin) = config.server.admin_listen {
        let api = control.is_some();
        let listener = server::bind(admin).await?;
        let admin = listener.local_addr().unwrap_or(admin);
        veneer::admin::serve(app.clone(), control, listener);
        tracing::info!(%admin, api, "admin endpoint (/metrics, /healthz, /readyz; /v1 admin API with a data_dir)");
    } else if control.is_some() {
        tracing::warn!("data_dir is set but admin_listen is not: the admin API is not served");
    }
    let signal = tokio::select! {
        _ = &mut proxy => anyhow::bail!("the listener stopped"),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // Stop accepting, let in-flight requests (and their streaming bodies) finish within the
    // grace period, then write out the analytics queue. A second signal exits at once.
    let grace = std::time::Duration::from_millis(config.server.shutdown_grace_ms);
    tracing::info!(
        signal,
        ?grace,
        "stopping: refusing new connections, draining in-flight requests"
    );
    let _ = stop.send(true);
    tokio::select! {
        _ = &mut proxy => tracing::info!("in-flight requests finished"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over: cutting the requests still in flight");
        }
        _ = term.recv() => second_signal(),
        _ = int.recv() => second_signal(),
    }
    tokio::select! {
        () = app.analytics.flush() => tracing::info!("analytics written; exiting"),
        () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
            tracing::warn!("analytics log did not flush within 5 s");
        }
        _ = term.recv() => second_signal(),
        _ = int.recv() => second_signal(),
    }
    if let Some(log) = app.analytics.log().cloned() {
        let _ = tokio::task::spawn_blocking(move || log.flush()).await;
    }
    let profiles = app.profiles.clone();
    let flushed = tokio::task::spawn_blocking(move || profiles.flush());
    tokio::select! {
        _ = flushed => tracing::info!("profiles written"),
        () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
            tracing::warn!("profiles did not flush within 5 s");
        }
        _ = term.recv() => second_signal(),
        _ = int.recv() => second_signal(),
    }
    if let Some(ledger) = app.ledger.clone() {
        let flushed = tokio::task::spawn_blocking(move || ledger.flush());
        tokio::select! {
            _ = flushed => tracing::info!("ledger written"),
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                tracing::warn!("ledger did not flush within 5 s");
            }
            _ = term.recv() => second_signal(),
            _ = int.recv() => second_signal(),
        }
    }
    Ok(())
}

/// A second SIGTERM/SIGINT during the drain: the operator wants out now.
fn second_signal() -> ! {
    tracing::warn!("second signal: exiting at once");
    std::process::exit(1)
}

/// The demo's files, resolved from the source tree the binary was built from.
fn examples_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    dir.canonicalize().unwrap_or(dir)
}

async fn run_demo(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    geoip: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = examples_dir();
    let origin = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let origin_addr = origin.local_addr()?;
    demo::serve_dir(dir.join("site"), origin);
    let text = include_str!("../../../examples/shop/veneer.toml");
    let mut config = Config::parse(text, &dir.join("veneer.toml"), &dir).map_err(|e| {
        anyhow::anyhow!("{e}\n(the demo's plugins are built by examples/demo.sh; run that instead of `veneer demo` directly)")
    })?;
    config.server.listen = listen;
    config.server.geoip = geoip;
    for t in &mut config.tenants {
        t.origin = format!("http://{origin_addr}");
    }
    // A state store of its own for each run (reports start empty, the config is read afresh)
    // and an operator token nobody else knows, handed over in the dashboard link.
    let state = veneer::private_dir::PrivateDir::create("demo")?;
    config.server.data_dir = Some(state.path().to_path_buf());
    config.server.admin_listen = Some(admin_listen);
    // Fresh each run, never an exported VENEER_ADMIN_TOKEN: the link below is printed.
    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let base = format!("http://{listen}");
    println!("Veneer demo shop: origin on http://{origin_addr}, Veneer on {base}\n");
    println!("Open {base}/ and {base}/products in a browser, or compare segments with curl:\n");
    let hero = "grep -A1 'id=\"hero\"'";
    println!("  curl -s {base}/ | {hero}                                   # a new visitor");
    println!(
        "  curl -s '{base}/?utm_source=newsletter' | {hero}           # a newsletter reader: \"returning\""
    );
    println!(
        "  curl -s -A 'Mozilla/5.0 (iPhone) Mobile' {base}/ | {hero}  # a phone: compact hero"
    );
    println!("  curl -s -H 'Accept-Language: nb-NO' {base}/ | {hero}       # Norwegian copy");
    println!(
        "  curl -s '{base}/?headline=1' | grep '<h1'                     # QA link: headline variation 1"
    );
    println!(
        "  curl -s {base}/products | grep -E 'on-sale|<s>'               # campaign links and prices"
    );
    println!(
        "  curl -s '{base}/api/home.json?utm_source=newsletter'          # the app/kiosk JSON, personalized"
    );
    let jar = "-c /tmp/veneer-jar -b /tmp/veneer-jar";
    println!("\nA customer's journey (curl keeps Veneer's cookie in a jar, as a browser would):\n");
    println!(
        "  target/debug/veneer admin profile import examples/shop/crm.jsonl --tenant shop --url http://{admin_listen} --token {token}"
    );
    println!(
        "  curl -s {jar} '{base}/login?customer=c-ada' | grep '<h1'      # the shop signs Ada in (veneer-identify)"
    );
    println!(
        "  curl -s {jar} {base}/ | grep veneer-banner                    # Ada is gold: the members' banner"
    );
    println!(
        "  curl -s {jar} {base}/products/trail-boots >/dev/null; curl -s {jar} {base}/ | {hero}   # boots affinity: the hero follows"
    );
    println!(
        "  curl -s {jar} -H 'content-type: application/json' -d '{{\"event\":\"cart_add\",\"items\":[{{\"sku\":\"trail-boots\",\"category\":\"boots\",\"price\":1899}}]}}' {base}/_veneer/event"
    );
    println!(
        "  sleep 60; curl -s {jar} {base}/ | grep veneer-cart-nudge     # a minute later: the nudge (and in {base}/api/home.json)"
    );
    println!(
        "  curl -s {jar} -H 'content-type: application/json' -d '{{\"event\":\"purchase\"}}' {base}/_veneer/event"
    );
    println!(
        "  curl -s {jar} {base}/thank-you | grep -A1 veneer-cross-sell  # no nudge; cross-sell for boots"
    );
    println!(
        "\nIn a browser: {base}/login?customer=c-ada, a product, {base}/cart (add, wait a minute, check out)."
    );
    println!(
        "\nAnalytics events are appended to {}",
        dir.join("analytics.jsonl").display()
    );
    println!(
        "\nThe dashboard (campaigns, experiment results, segment tester; reports fill as you browse):\n  \
         http://{admin_listen}/dashboard/#token={token}"
    );
    let result = start(config, Some(token)).await;
    drop(state);
    result
}

/// A JSON-lines protocol: each non-blank line of stdin answered by one line of stdout, flushed
/// at once so a script can converse line by line.
fn answer_lines<T: std::fmt::Display>(answer: impl Fn(&str) -> T) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        writeln!(out, "{}", answer(&line)).context("writing stdout")?;
        out.flush().context("writing stdout")?;
    }
    Ok(())
}

fn rules_check(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match veneer_rules::RuleSet::from_json_str(&text) {
        Ok(rules) => {
            println!(
                "{}: ok ({} segments, {} experiments, {} campaigns)",
                file.display(),
                rules.segment_names().len(),
                rules.experiments().len(),
                rules.campaigns().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", file.display());
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}
