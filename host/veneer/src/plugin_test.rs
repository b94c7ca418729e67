//! `veneer plugin test FILE.wasm [--fixtures DIR] [--bless]`: fixture tests of a built
//! component in the real runtime and request flow.
//!
//! A fixture is a folder per case:
//!
//! ```text
//! fixtures/returning-visitor/
//!   case.toml      the request, the visitor, the instant, the plugin's parameters
//!   origin.html    what the origin answers (or origin.json, or `origin = "../page.html"`
//!                  in case.toml for a page several cases share)
//!   expected.txt   the answer, the events and the faults, as `veneer plugin run` prints them
//! ```
//!
//! `--bless` writes `expected.txt` from what the plugin does now; without it a case whose
//! answer differs fails with a line diff, and the command exits 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::Deserialize;

use crate::plugin_run::{Visit, content_type};

/// A case's `case.toml`; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// Request path (default `/`, or `/data.json` with `origin.json`).
    path: Option<String>,
    /// Request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Plugin parameters.
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Rules file, relative to the case folder.
    rules: Option<PathBuf>,
    /// Fragments file, relative to the case folder.
    fragments: Option<PathBuf>,
    /// Segments the visitor is in.
    #[serde(default)]
    segments: Vec<String>,
    /// Forced variations by experiment.
    #[serde(default)]
    variations: BTreeMap<String, i64>,
    /// Consent, comma-separated (`none` for none).
    consent: Option<String>,
    /// The instant (RFC 3339).
    at: Option<jiff::Timestamp>,
    /// desktop, mobile, tablet or bot.
    device: Option<String>,
    /// ISO 3166 alpha-2.
    country: Option<String>,
    /// `Accept-Language`.
    language: Option<String>,
    /// The origin's status.
    status: Option<u16>,
    /// The origin's answer from a file shared between cases (relative to the case folder;
    /// `.json` is served as JSON, anything else as HTML), instead of origin.html/origin.json.
    origin: Option<PathBuf>,
}

/// How one case went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The answer is the expected one.
    Passed,
    /// The answer differs: a unified diff, expected → actual.
    Failed(String),
    /// There was no `expected.txt` (and no `--bless`).
    Unexpected,
    /// `--bless` wrote `expected.txt`.
    Blessed,
    /// The case could not run (a bad `case.toml`, no origin file...).
    Broken(String),
}

/// Reads a case folder into a visit.
fn read_case(dir: &Path) -> anyhow::Result<Visit> {
    let case_path = dir.join("case.toml");
    let case: CaseFile = match std::fs::read_to_string(&case_path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", case_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CaseFile::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", case_path.display())),
    };
    let (html, json) = (dir.join("origin.html"), dir.join("origin.json"));
    let (origin, is_json) = match (&case.origin, html.is_file(), json.is_file()) {
        (Some(shared), false, false) => {
            let file = dir.join(shared);
            let is_json = file.extension().is_some_and(|e| e == "json");
            (file, is_json)
        }
        (Some(_), _, _) => bail!(
            "{}: origin is set and the folder has its own origin file; keep one",
            case_path.display()
        ),
        (None, true, false) => (html, false),
        (None, false, true) => (json, true),
        (None, true, true) => bail!(
            "{}: both origin.html and origin.json; keep one",
            dir.display()
        ),
        (None, false, false) => bail!(
            "{}: no origin.html or origin.json (what the origin answers), and no `origin` in case.toml",
            dir.display()
        ),
    };
    let page = std::fs::read(&origin).with_context(|| format!("reading {}", origin.display()))?;
    let device = case.device.unwrap_or_else(|| "desktop".to_owned());
    if !["desktop", "mobile", "tablet", "bot"].contains(&device.as_str()) {
        bail!(
            "{}: device {device:?}: desktop, mobile, tablet or bot",
            case_path.display()
        );
    }
    let status = case.status.unwrap_or(200);
    if !(200..=599).contains(&status) {
        bail!("{}: status {status}: 200 to 599", case_path.display());
    }
    Ok(Visit {
        path: case
            .path
            .unwrap_or_else(|| if is_json { "/data.json" } else { "/" }.to_owned()),
        headers: case.headers.into_iter().collect(),
        params: case.params.into_iter().collect(),
        rules: case.rules.map(|r| dir.join(r)),
        fragments: case.fragments.map(|f| dir.join(f)),
        segments: case.segments,
        variations: case.variations,
        consent: case.consent,
        at: case.at,
        device,
        country: case.country,
        language: case.language,
        origin: (status, content_type(is_json), Bytes::from(page)),
    })
}

/// The case folders under `fixtures`, by name.
fn cases(fixtures: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(fixtures).with_context(|| {
        format!(
            "reading the fixtures folder {} (a folder per case)",
            fixtures.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("{}: no case folders", fixtures.display());
    }
    Ok(dirs)
}

/// Runs every case; returns each case's name and verdict.
pub async fn run_cases(
    file: &Path,
    fixtures: &Path,
    bless: bool,
) -> anyhow::Result<Vec<(String, Verdict)>> {
    if !file.is_file() {
        bail!(
            "{}: no such component (build it with `cargo build --release --target wasm32-wasip2`)",
            file.display()
        );
    }
    let cases = cases(fixtures)?;
    // One private directory for every case: the compile cache inside it is shared.
    let work = crate::private_dir::PrivateDir::create("plugin-test")?;
    let mut verdicts = Vec::new();
    for dir in cases {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let verdict = match run_case(file, &dir, work.path(), bless).await {
            Ok(v) => v,
            Err(e) => Verdict::Broken(format!("{e:#}")),
        };
        verdicts.push((name, verdict));
    }
    Ok(verdicts)
}

async fn run_case(file: &Path, dir: &Path, work: &Path, bless: bool) -> anyhow::Result<Verdict> {
    let visit = read_case(dir)?;
    let actual = crate::plugin_run::visit(file, &visit, work).await?.render();
    let expected_path = dir.join("expected.txt");
    if bless {
        std::fs::write(&expected_path, &actual)
            .with_context(|| format!("writing {}", expected_path.display()))?;
        return Ok(Verdict::Blessed);
    }
    let expected = match std::fs::read_to_string(&expected_path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verdict::Unexpected),
        Err(e) => return Err(e).with_context(|| format!("reading {}", expected_path.display())),
    };
    if expected == actual {
        return Ok(Verdict::Passed);
    }
    let diff = similar::TextDiff::from_lines(&expected, &actual)
        .unified_diff()
        .context_radius(2)
        .header(&expected_path.display().to_string(), "actual")
        .to_string();
    Ok(Verdict::Failed(diff))
}

/// Prints the verdicts; whether every case passed (or was blessed).
pub fn report(verdicts: &[(String, Verdict)], out: &mut String) -> bool {
    let (mut passed, mut failed) = (0, 0);
    for (name, verdict) in verdicts {
        match verdict {
            Verdict::Passed => {
                passed += 1;
                out.push_str(&format!("ok       {name}\n"));
            }
            Verdict::Blessed => {
                passed += 1;
                out.push_str(&format!("blessed  {name} (wrote expected.txt)\n"));
            }
            Verdict::Failed(diff) => {
                failed += 1;
                out.push_str(&format!("FAILED   {name}: the answer differs\n"));
                for line in diff.lines() {
                    out.push_str("    ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Verdict::Unexpected => {
                failed += 1;
                out.push_str(&format!(
                    "FAILED   {name}: no expected.txt (run with --bless to record what the plugin does now)\n"
                ));
            }
            Verdict::Broken(why) => {
                failed += 1;
                let why = why.trim_end().replace('\n', "\n    ");
                out.push_str(&format!("FAILED   {name}: {why}\n"));
            }
        }
    }
    out.push_str(&format!("{passed} passed, {failed} failed\n"));
    failed == 0
}
