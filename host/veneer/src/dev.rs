//! `veneer dev`: the host in front of an origin URL or a folder of static files, with plugin
//! crates rebuilt and reloaded as they change. A build that fails prints the compiler's error
//! and the previous build keeps serving; the visitor's segment, variation, consent and clock
//! are switched from the browser with query parameters ([`crate::preview::DEV_PARAMS`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::app::App;
use crate::config::Config;
use crate::plugin_run::{absolute, key_value, params_table, toml_str};

/// `veneer dev`.
#[derive(Args)]
pub struct DevArgs {
    /// A plugin: a crate folder (built for wasm32-wasip2 and rebuilt when its sources change)
    /// or a built component `.wasm` (reloaded when it changes). Repeatable; run in order.
    #[arg(long = "plugin", required = true)]
    pub plugins: Vec<PathBuf>,
    /// The site's origin, e.g. `http://127.0.0.1:3000`.
    #[arg(long)]
    pub origin: Option<String>,
    /// A folder of static files to serve as the origin instead.
    #[arg(long)]
    pub site: Option<PathBuf>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A plugin parameter, `KEY=VALUE`, given to every plugin (repeatable).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Segments, experiments and campaigns (reloaded when it changes).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Content fragments (reloaded when they change).
    #[arg(long)]
    pub fragments: Option<PathBuf>,
    /// How often to look for changes, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub poll_ms: u64,
}

/// One plugin being developed.
struct Source {
    /// The crate folder, or the component itself.
    path: PathBuf,
    /// Whether `path` is a crate to build.
    is_crate: bool,
    /// The component last built (or the file itself).
    wasm: Option<PathBuf>,
    /// What the sources looked like when last built.
    stamp: Stamp,
}

/// Newest modification time and number of files under the watched paths: any save, new file
/// or deletion changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp(Option<SystemTime>, usize);

fn stamp(paths: &[PathBuf]) -> Stamp {
    fn walk(path: &Path, acc: &mut Stamp, depth: usize) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        // Linked folders are not entered (a link loop would never end), and a source tree is
        // not deep.
        let linked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if meta.is_dir() {
            if (linked && depth > 0) || depth > 16 {
                return;
            }
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    walk(&e.path(), acc, depth + 1);
                }
            }
        } else {
            acc.1 += 1;
            if let Ok(m) = meta.modified() {
                acc.0 = acc.0.max(Some(m));
            }
        }
    }
    let mut acc = Stamp::default();
    for p in paths {
        walk(p, &mut acc, 0);
    }
    acc
}

impl Source {
    fn watched(&self) -> Vec<PathBuf> {
        if self.is_crate {
            ["src", "Cargo.toml", "build.rs", "wit"]
                .iter()
                .map(|p| self.path.join(p))
                .collect()
        } else {
            vec![self.path.clone()]
        }
    }

    /// Builds the crate; the component's path, or the compiler's output on failure.
    fn build(&mut self) -> Result<PathBuf, String> {
        if !self.is_crate {
            return Ok(self.path.clone());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(&self.path)
            .output()
            .map_err(|e| format!("running cargo in {}: {e}", self.path.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        // The component is the artifact cargo reports with a `.wasm` file (its name follows
        // the crate's, wherever its target directory is).
        let wasm = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .flat_map(|m| {
                m["filenames"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|f| f.as_str().map(PathBuf::from))
                    .collect::<Vec<_>>()
            })
            .rfind(|f| f.extension().is_some_and(|e| e == "wasm"));
        wasm.ok_or_else(|| {
            format!(
                "{}: the build wrote no .wasm; a plugin crate needs `crate-type = [\"cdylib\"]` under [lib]",
                self.path.display()
            )
        })
    }
}

/// The development host's config: one tenant for `localhost`, the plugins as last built.
fn config_text(
    args: &DevArgs,
    origin: &str,
    sources: &[Source],
    work: &Path,
) -> anyhow::Result<String> {
    let abs = |p: &Path| absolute(p).map(|p| toml_str(&p.to_string_lossy()));
    let params = args
        .params
        .iter()
        .map(|p| key_value("--param", p, '=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncookie_secret = \"veneer-dev-0123456789abcdef0123456789abcdef\"\n\
         cache_dir = {}\nanalytics_log = {}\n\n\
         [[tenant]]\nname = \"dev\"\nhosts = [\"localhost\", \"127.0.0.1\", \"[::1]\"]\norigin = {}\n",
        toml_str(&work.join("cache").to_string_lossy()),
        toml_str(&work.join("events.jsonl").to_string_lossy()),
        toml_str(origin),
    );
    if let Some(r) = &args.rules {
        text.push_str(&format!("rules = {}\n", abs(r)?));
    }
    if let Some(f) = &args.fragments {
        text.push_str(&format!("fragments = {}\n", abs(f)?));
    }
    text.push_str("[tenant.limits]\nrequests_per_second_per_client = 0\n");
    let mut names: Vec<String> = Vec::new();
    for s in sources {
        let Some(wasm) = &s.wasm else { continue };
        // Named after the crate folder or file (`--plugin .` is the folder's own name), made
        // unique when two share a name.
        let stem = std::fs::canonicalize(&s.path)
            .ok()
            .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "plugin".to_owned());
        let mut name = stem.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        names.push(name.clone());
        text.push_str(&format!(
            "[[tenant.plugin]]\nname = {}\npath = {}\nparams = {}\n",
            toml_str(&name),
            abs(wasm)?,
            params_table(&params)
        ));
    }
    Ok(text)
}

/// Loads the config text as the `dev` tenant.
fn load(text: &str, work: &Path, app: Option<&App>) -> anyhow::Result<(Config, Option<App>)> {
    let file = work.join("veneer-dev.toml");
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let config = Config::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    match app {
        None => {
            let app = App::build(&config)?;
            Ok((config, Some(app)))
        }
        Some(app) => {
            let tenant = crate::app::load_tenant(&config, 0, &config.tenants[0], &app.runtime)?;
            app.swap_tenant("dev", Some(Arc::new(tenant)));
            Ok((config, None))
        }
    }
}

/// Runs the development host until interrupted.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let origin = match (&args.origin, &args.site) {
        (Some(o), None) => o.clone(),
        (None, Some(site)) => {
            if !site.is_dir() {
                bail!("--site {}: not a folder", site.display());
            }
            let listener = crate::server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = listener.local_addr()?;
            // The demo's static origin: `/` → index.html, `/x` → x.html, nothing outside.
            // Runs until the process ends; its handle is not needed.
            drop(crate::demo::serve_dir(site.clone(), listener));
            format!("http://{addr}")
        }
        _ => bail!("give the site as --origin URL or --site FOLDER (one of them)"),
    };
    let mut sources = Vec::new();
    for p in &args.plugins {
        let is_crate = p.is_dir();
        if !is_crate && !p.is_file() {
            bail!(
                "--plugin {}: neither a crate folder nor a component file",
                p.display()
            );
        }
        if is_crate && !p.join("Cargo.toml").is_file() {
            bail!("--plugin {}: no Cargo.toml in that folder", p.display());
        }
        sources.push(Source {
            path: p.clone(),
            is_crate,
            wasm: None,
            stamp: Stamp::default(),
        });
    }
    for s in &mut sources {
        s.stamp = stamp(&s.watched());
        eprintln!("veneer dev: building {}", s.path.display());
        let wasm = s.build().map_err(|e| {
            anyhow::anyhow!(
                "{e}\nveneer dev: the first build of {} failed",
                s.path.display()
            )
        })?;
        s.wasm = Some(wasm);
    }
    // Private (the runtime loads precompiled code from the cache inside it) and removed
    // however `run` ends.
    let private = crate::private_dir::PrivateDir::create("dev")?;
    let work = private.path().to_owned();
    let (_, app) = load(&config_text(&args, &origin, &sources, &work)?, &work, None)?;
    let mut app = app.context("building the host")?;
    app.dev = true;
    let app = Arc::new(app);
    let listener = crate::server::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let _server = crate::server::serve(app.clone(), listener);
    eprintln!(
        "veneer dev: http://{addr}/ in front of {origin}\n\
         veneer dev: switch the visitor with ?veneer_segment=NAME&veneer_variation=EXPERIMENT:INDEX\
         &veneer_consent=analytics,personalization&veneer_at=2026-12-24T10:00:00Z\n\
         veneer dev: events recorded go to {}",
        work.join("events.jsonl").display()
    );

    let data_files: Vec<PathBuf> = args
        .rules
        .iter()
        .chain(args.fragments.iter())
        .cloned()
        .collect();
    let mut data_stamp = stamp(&data_files);
    let poll = Duration::from_millis(args.poll_ms.max(50));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let mut changed = false;
        let mut failed = false;
        for s in &mut sources {
            let now = stamp(&s.watched());
            if now == s.stamp {
                continue;
            }
            s.stamp = now;
            eprintln!("veneer dev: {} changed; rebuilding", s.path.display());
            let started = Instant::now();
            let path = s.path.clone();
            let mut building = Source {
                path: path.clone(),
                is_crate: s.is_crate,
                wasm: None,
                stamp: now,
            };
            match tokio::task::spawn_blocking(move || building.build()).await {
                Ok(Ok(wasm)) => {
                    s.wasm = Some(wasm);
                    changed = true;
                    eprintln!(
                        "veneer dev: built {} in {:.1} s",
                        path.display(),
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok(Err(compiler)) => {
                    failed = true;
                    eprintln!(
                        "{compiler}\nveneer dev: build failed: {}; the previous build keeps serving",
                        path.display()
                    );
                }
                Err(e) => {
                    failed = true;
                    eprintln!("veneer dev: build of {} stopped: {e}", path.display());
                }
            }
        }
        let now = stamp(&data_files);
        if now != data_stamp {
            data_stamp = now;
            changed = true;
        }
        // A failed build keeps its previous component, so the others' changes still load.
        if !changed {
            continue;
        }
        if failed {
            eprintln!("veneer dev: loading the other changes with the failed plugin's last build");
        }
        let reloaded = config_text(&args, &origin, &sources, &work)
            .and_then(|text| load(&text, &work, Some(&app)));
        match reloaded {
            Ok(_) => eprintln!("veneer dev: reloaded; new requests use the new build"),
            Err(e) => eprintln!("veneer dev: reload failed, still serving the previous one: {e:#}"),
        }
    }
    drop(private);
    Ok(())
}
