//! `veneer render`: batch personalization of messages (e-mail, push, app, kiosk, voice) with
//! the same rules, campaigns, plugins and rewrite code as `veneer serve`.
//!
//! Each recipient line becomes a message rendered by [`crate::proxy::message::render`]; one
//! JSON line comes out per line in, in input order:
//! `{"id","status","reason","body","bytes","campaigns","assignments","faults"}`, status
//! `rendered | capped | skipped | too_large | fault`. Recipients are split among `--jobs`
//! workers by a hash of their id, so one recipient's messages are checked against the caps
//! and recorded one after another whatever the number of workers.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::app::App;
use crate::config::Config;
use crate::email::Token;
use crate::proxy::message::{self, Message, Outcome};
use crate::sends::{Send, Sends};

/// The largest APNs or FCM payload, serialized (both services refuse more).
pub const PUSH_MAX_BYTES: usize = 4096;
/// SSML must stay under this many characters (the common voice platforms' limit).
pub const SSML_MAX_CHARS: usize = 8000;

/// `veneer render`.
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The TOML config file (the same as `veneer serve`'s).
    #[arg(long)]
    pub config: PathBuf,
    /// The tenant whose rules, campaigns and plugins render the messages.
    #[arg(long)]
    pub tenant: String,
    /// email, push, app, kiosk or voice: campaigns apply when their `channels` include it.
    #[arg(long)]
    pub channel: String,
    /// The template: HTML (e-mail, kiosk), JSON (app; the payload for apns/fcm) or SSML.
    #[arg(long)]
    pub template: PathBuf,
    /// Recipients, one JSON object per line:
    /// `{"id": "...", "consent": {"marketing": true}, "attributes": {...}}`.
    #[arg(long)]
    pub recipients: PathBuf,
    /// The instant the messages are rendered for (RFC 3339; default now).
    #[arg(long)]
    pub at: Option<String>,
    /// The send's id (default: a new one); a re-run of one send id is not counted twice.
    #[arg(long)]
    pub send_id: Option<String>,
    /// html, json, apns, fcm or ssml (default: html for email and kiosk, json for app, apns
    /// for push, ssml for voice).
    #[arg(long)]
    pub format: Option<String>,
    /// Workers rendering at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
    Apns,
    Fcm,
    Ssml,
}

impl Format {
    fn parse(s: &str) -> anyhow::Result<Format> {
        Ok(match s {
            "html" => Format::Html,
            "json" => Format::Json,
            "apns" => Format::Apns,
            "fcm" => Format::Fcm,
            "ssml" => Format::Ssml,
            other => bail!("--format {other:?}: expected html, json, apns, fcm or ssml"),
        })
    }

    fn default_for(channel: &str) -> Format {
        match channel {
            "app" => Format::Json,
            "push" => Format::Apns,
            "voice" => Format::Ssml,
            _ => Format::Html,
        }
    }

    fn is_json(self) -> bool {
        matches!(self, Format::Json | Format::Apns | Format::Fcm)
    }

    /// Why `body` is too large for this format, if it is.
    fn too_large(self, body: &[u8]) -> Option<String> {
        match self {
            Format::Apns | Format::Fcm if body.len() > PUSH_MAX_BYTES => Some(format!(
                "payload is {} bytes, over the {PUSH_MAX_BYTES}-byte limit",
                body.len()
            )),
            Format::Ssml => {
                let chars = String::from_utf8_lossy(body).chars().count();
                (chars >= SSML_MAX_CHARS).then(|| {
                    format!("SSML is {chars} characters; it must stay under {SSML_MAX_CHARS}")
                })
            }
            _ => None,
        }
    }
}

/// One recipient line, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipient {
    id: String,
    #[serde(default)]
    consent: Consent,
    #[serde(default)]
    attributes: Map<String, Value>,
    /// A test send: rendered, never counted or recorded.
    #[serde(default)]
    test: bool,
}

#[derive(serde::Deserialize, Default)]
struct Consent {
    #[serde(default)]
    marketing: bool,
}

/// One output line.
#[derive(Serialize)]
struct Line {
    id: Option<String>,
    status: &'static str,
    reason: Option<String>,
    body: Option<String>,
    bytes: usize,
    campaigns: Vec<String>,
    assignments: Vec<Assignment>,
    faults: Vec<String>,
}

#[derive(Serialize)]
struct Assignment {
    experiment: String,
    variation: u32,
    key: String,
}

impl Line {
    fn bare(id: Option<String>, status: &'static str, reason: String) -> Line {
        Line {
            id,
            status,
            reason: Some(reason),
            body: None,
            bytes: 0,
            campaigns: Vec::new(),
            assignments: Vec::new(),
            faults: Vec::new(),
        }
    }
}

/// A line ready to write.
struct Written {
    /// The line as JSON.
    json: Vec<u8>,
    /// Why an invalid input line was refused (also said on stderr).
    invalid: Option<String>,
}

/// What every worker shares.
struct Job {
    app: Arc<App>,
    sends: Sends,
    tenant: String,
    channel: String,
    format: Format,
    template: Bytes,
    at: Timestamp,
    send_id: String,
    /// The template has `{{veneer:token}}` to fill.
    tokens: bool,
}

/// Runs `veneer render`: writes one line per recipient to `out`; `Ok(true)` when a line was
/// too large or invalid (exit status 2).
pub async fn run(args: RenderArgs, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    if !crate::sends::channel_known(&args.channel) {
        bail!(
            "--channel {:?}: expected email, push, app, kiosk or voice",
            args.channel
        );
    }
    let format = match &args.format {
        Some(f) => Format::parse(f)?,
        None => Format::default_for(&args.channel),
    };
    if args.jobs == 0 {
        bail!("--jobs 0: at least 1");
    }
    let at = match &args.at {
        Some(a) => a
            .parse::<Timestamp>()
            .with_context(|| format!("--at {a:?}: expected an RFC 3339 instant"))?,
        None => Timestamp::now(),
    };
    let template = std::fs::read(&args.template)
        .with_context(|| format!("reading the template {}", args.template.display()))?;
    if format.is_json() {
        serde_json::from_slice::<Value>(&template).with_context(|| {
            format!(
                "the template {} is not JSON (--format {})",
                args.template.display(),
                args.format.as_deref().unwrap_or("for this channel")
            )
        })?;
    }
    let recipients = std::fs::File::open(&args.recipients)
        .with_context(|| format!("reading the recipients {}", args.recipients.display()))?;
    let config = Config::load(&args.config)?;
    if !config.tenants.iter().any(|t| t.name == args.tenant) {
        bail!(
            "{}: no tenant named {:?}",
            args.config.display(),
            args.tenant
        );
    }
    let sends = Sends::open(
        config
            .server
            .data_dir
            .as_ref()
            .map(|d| config.resolve(d))
            .as_deref(),
    )?;
    let app = Arc::new(App::build(&config)?);
    if config.server.data_dir.is_none()
        && app
            .tenant_named(&args.tenant)
            .is_some_and(|t| !t.rules.caps().is_empty())
    {
        eprintln!(
            "veneer: note: {} has no [server] data_dir: frequency caps count this run's sends only",
            args.config.display()
        );
    }
    let job = Arc::new(Job {
        app: app.clone(),
        sends,
        tenant: args.tenant.clone(),
        channel: args.channel.clone(),
        format,
        tokens: template
            .windows(crate::email::TOKEN_PLACEHOLDER.len())
            .any(|w| w == crate::email::TOKEN_PLACEHOLDER.as_bytes()),
        template: Bytes::from(template),
        at,
        send_id: args
            .send_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
    });

    // Workers by recipient id; the writer puts lines back in input order.
    // Lines are serialized by the workers (a 50 KB body's JSON escaping is real work); the
    // writer only puts them in order.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(usize, Written, bool)>(1024);
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..args.jobs {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<Recipient, String>)>(256);
        queues.push(tx);
        let (job, done) = (job.clone(), done_tx.clone());
        workers.push(tokio::spawn(async move {
            while let Some((n, line)) = rx.recv().await {
                let (out, bad) = match line {
                    Ok(r) => one(&job, r).await,
                    Err(why) => (Line::bare(None, "fault", why), true),
                };
                let written = Written {
                    invalid: out.id.is_none().then(|| out.reason.clone()).flatten(),
                    json: serde_json::to_vec(&out).unwrap_or_default(),
                };
                if done.send((n, written, bad)).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(done_tx);
    let reader = tokio::task::spawn_blocking({
        let path = args.recipients.clone();
        move || -> anyhow::Result<()> {
            let mut reader = std::io::BufReader::new(recipients);
            let mut raw = Vec::new();
            // Lines are numbered as an editor numbers them; blank ones get no output line.
            let mut number = 0;
            let mut n = 0;
            loop {
                raw.clear();
                let read = reader
                    .read_until(b'\n', &mut raw)
                    .with_context(|| format!("reading {}", path.display()))?;
                if read == 0 {
                    break;
                }
                number += 1;
                let Ok(line) = std::str::from_utf8(&raw) else {
                    n += 1;
                    let refused = Err(format!("line {number}: not UTF-8 text"));
                    if queues[n % queues.len()]
                        .blocking_send((n, refused))
                        .is_err()
                    {
                        break;
                    }
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                n += 1;
                let parsed = serde_json::from_str::<Recipient>(line)
                    .map_err(|e| format!("line {number}: {e}"))
                    .and_then(|r| {
                        if r.id.is_empty() || r.id.len() > 256 {
                            Err(format!("line {number}: id must be 1 to 256 characters"))
                        } else {
                            Ok(r)
                        }
                    });
                let worker = match &parsed {
                    Ok(r) => {
                        usize::try_from(crate::sends::partition(&r.id)).unwrap_or(0) % queues.len()
                    }
                    Err(_) => n % queues.len(),
                };
                if queues[worker].blocking_send((n, parsed)).is_err() {
                    break;
                }
            }
            Ok(())
        }
    });
    let mut next = 1;
    let mut waiting = BTreeMap::new();
    let mut any_bad = false;
    while let Some((n, line, bad)) = done_rx.recv().await {
        waiting.insert(n, line);
        any_bad |= bad;
        while let Some(line) = waiting.remove(&next) {
            if let Some(reason) = &line.invalid {
                eprintln!("{}: {reason}", args.recipients.display());
            }
            out.write_all(&line.json)?;
            out.write_all(b"\n")?;
            next += 1;
        }
    }
    reader.await.context("the recipients' reader")??;
    for w in workers {
        let _ = w.await;
    }
    out.flush()?;
    // Events and exposures are written before the command returns.
    app.analytics.flush().await;
    if let Some(ledger) = app.ledger.clone() {
        let _ = tokio::task::spawn_blocking(move || ledger.flush()).await;
    }
    Ok(any_bad)
}

/// Renders one recipient's message: the line and whether it makes the exit status 2.
async fn one(job: &Job, r: Recipient) -> (Line, bool) {
    if !r.consent.marketing {
        return (
            Line::bare(Some(r.id), "skipped", "no_consent".into()),
            false,
        );
    }
    // Each recipient's own token in the template's image and link URLs.
    let template = if job.tokens {
        let token = Token::new(&job.tenant, &r.id, &job.send_id, &r.attributes, job.at)
            .sign(&job.app.signer);
        let text = String::from_utf8_lossy(&job.template);
        Bytes::from(text.replace(crate::email::TOKEN_PLACEHOLDER, &token))
    } else {
        job.template.clone()
    };
    let m = Arc::new(Message {
        tenant: job.tenant.clone(),
        recipient: r.id.clone(),
        channel: job.channel.clone(),
        attributes: r.attributes,
        at: job.at,
        send_id: job.send_id.clone(),
        test: r.test,
        template,
        content_type: if job.format.is_json() {
            "application/json"
        } else {
            "text/html; charset=utf-8"
        },
        open: false,
    });
    let rendered = message::render(&job.app, m.clone(), Some(&job.sends)).await;
    let mut line = Line {
        id: Some(r.id),
        status: "rendered",
        reason: None,
        body: None,
        bytes: 0,
        campaigns: rendered.campaigns,
        assignments: rendered
            .assignments
            .into_iter()
            .map(|(experiment, variation, key)| Assignment {
                experiment,
                variation,
                key,
            })
            .collect(),
        faults: rendered.faults,
    };
    match rendered.outcome {
        Outcome::Capped(rule) => {
            line.status = "capped";
            line.reason = Some(format!("cap:{rule}"));
            (line, false)
        }
        Outcome::Fault(why) => {
            line.status = "fault";
            line.reason = Some(why);
            (line, false)
        }
        Outcome::Rendered { body } => {
            line.bytes = body.len();
            if let Some(why) = job.format.too_large(&body) {
                line.status = "too_large";
                line.reason = Some(why);
                return (line, true);
            }
            if job.format.is_json() && serde_json::from_slice::<Value>(&body).is_err() {
                line.status = "fault";
                line.reason = Some("the personalized payload is not JSON".into());
                return (line, false);
            }
            if rendered.counts && !m.test {
                let send = Send {
                    tenant: &job.tenant,
                    recipient: &m.recipient,
                    channel: &job.channel,
                    tags: &rendered.tags,
                    at: job.at,
                    send_id: &job.send_id,
                };
                if let Err(e) = job.sends.record(&send) {
                    line.status = "fault";
                    line.reason = Some(format!("recording the send: {e:#}"));
                    return (line, false);
                }
            }
            line.body = Some(String::from_utf8_lossy(&body).into_owned());
            (line, false)
        }
    }
}
