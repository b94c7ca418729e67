//! A message (e-mail, push, app, kiosk, voice) rendered by `veneer render`: the same stages
//! as a page, in the same order, for a request no client sent. The recipient's id and
//! attributes stand in for the cookie and the request's facts, the template stands in for
//! the origin's response, and the campaigns are matched on the message's channel at the
//! message's instant. What differs from [`super::handle`], and why:
//!
//! ```text
//! identify (recipient id, attributes, channel)    as a page (no cookie, no profile read)
//! caps (campaign tags, the send ledger)           → capped: the message is not rendered
//! plugins::on_request                             a plugin's own reply becomes the message
//! the template                                    instead of the origin (never cached)
//! plugins::on_response, body::personalize         as a page: byte for byte the same body
//! message_rendered | message_aborted              instead of page_view and path goals
//! ```

use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use jiff::Timestamp;
use serde_json::{Map, Value};

use super::ctx::RequestCtx;
use super::{Body, body, identify, plugins};
use crate::app::App;
use crate::plugin::HostServices as _;
use crate::sends::{Send, Sends};

/// One message to render.
#[derive(Debug, Clone)]
pub struct Message {
    /// The tenant whose rules and plugins render it.
    pub tenant: String,
    /// The recipient's id (never an e-mail address): the visitor id rules and experiments see.
    pub recipient: String,
    /// `email`, `push`, `app`, `kiosk` or `voice`.
    pub channel: String,
    /// The recipient's attributes, over the ones a request would give.
    pub attributes: Map<String, Value>,
    /// The instant it is rendered for.
    pub at: Timestamp,
    /// The send this message belongs to.
    pub send_id: String,
    /// A test send: rendered, but nothing recorded and never counted toward caps.
    pub test: bool,
    /// The template (what the origin would answer).
    pub template: Bytes,
    /// The template's content type (`text/html; charset=utf-8` or `application/json`).
    pub content_type: &'static str,
    /// Drawn at an open (an e-mail image): not a dispatch, so neither capped nor recorded as
    /// `message_rendered`.
    pub open: bool,
}

impl Message {
    /// The recipient's attributes merged over `map`; a dotted key (`customer.tier`) is put at
    /// its path, as rules read it.
    pub(super) fn merge_attributes(&self, map: &mut Map<String, Value>) {
        for (k, v) in &self.attributes {
            let path: Vec<&str> = k.split('.').collect();
            put(map, &path, v.clone());
        }
        map.insert("id".into(), Value::String(self.recipient.clone()));
    }

    /// A text attribute of the recipient.
    pub(super) fn text(&self, key: &str) -> Option<String> {
        self.attributes.get(key)?.as_str().map(str::to_owned)
    }
}

/// Puts `v` at `path` in `map`, making objects on the way (a non-object in the way is
/// replaced: the recipient's attributes win).
fn put(map: &mut Map<String, Value>, path: &[&str], v: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert((*last).to_owned(), v);
        }
        [first, rest @ ..] => {
            let slot = map
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(next) = slot {
                put(next, rest, v);
            }
        }
    }
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Rendered.
    Rendered {
        /// The personalized body.
        body: Bytes,
    },
    /// Held back by the cap with this id.
    Capped(String),
    /// Could not be rendered (unknown tenant, a broken template): why.
    Fault(String),
}

/// A rendered (or refused) message and what decided it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The outcome.
    pub outcome: Outcome,
    /// The campaigns live for the recipient on the channel at the instant, highest priority
    /// first.
    pub campaigns: Vec<String>,
    /// The experiments the plugins asked about: key, variation index and variation key.
    pub assignments: Vec<(String, u32, String)>,
    /// Plugins that faulted (the message went out without them).
    pub faults: Vec<String>,
    /// Tags the message counts under (its highest-priority campaign's).
    pub tags: Vec<String>,
    /// Whether sending it counts toward caps.
    pub counts: bool,
}

impl Rendered {
    fn fault(why: String) -> Rendered {
        Rendered {
            outcome: Outcome::Fault(why),
            campaigns: Vec::new(),
            assignments: Vec::new(),
            faults: Vec::new(),
            tags: Vec::new(),
            counts: false,
        }
    }
}

/// Renders `m` with the tenant's rules and plugins; `sends` holds the caps' counts (`None`:
/// no caps, as for an open).
pub async fn render(app: &Arc<App>, m: Arc<Message>, sends: Option<&Sends>) -> Rendered {
    let Some(tenant) = app.tenant_named(&m.tenant) else {
        return Rendered::fault(format!("no tenant {:?}", m.tenant));
    };
    let host = tenant.config.hosts.first().cloned().unwrap_or_default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    // A test send records nothing, as a preview.
    let preview = m.test.then(|| {
        Arc::new(crate::preview::Preview {
            tenant: tenant.name.to_string(),
            segments: None,
            variations: Default::default(),
            consent: None,
            at: Some(m.at),
            expires: i64::MAX,
            record: false,
        })
    });
    let mut ctx = RequestCtx {
        app: app.clone(),
        id: id.clone(),
        host: host.clone(),
        trusted: false,
        client_ip: None,
        now: m.at,
        tenant: Some(tenant.clone()),
        visitor: None,
        outcome: "message",
        cache_status: None,
        preview,
        message: Some(m.clone()),
    };
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = http::Uri::from_static("/");
    if let Ok(h) = HeaderValue::try_from(host.as_str()) {
        request.headers_mut().insert(header::HOST, h);
    }
    let (parts, ()) = request.into_parts();
    let visitor = identify::visitor(&ctx, &tenant, &parts).await;

    // Caps: the campaigns this message would carry decide which rules govern it.
    let live = tenant
        .rules
        .active_campaigns(m.at, &m.channel, &visitor.services.segments);
    let campaigns: Vec<String> = live.iter().map(|c| c.id.clone()).collect();
    // A message is sent for its highest-priority live campaign (what a banner shows): that
    // campaign's tags and flags decide how caps treat it. A message with no campaign is
    // untagged and capped like any other.
    let primary = live.first();
    let exempt = primary.is_some_and(|c| !c.frequency_capping);
    let counts = !m.test && primary.is_none_or(|c| c.counts_toward_caps);
    let tags: Vec<String> = primary.map(|c| c.tags.clone()).unwrap_or_default();
    drop(live);
    let base = Rendered {
        outcome: Outcome::Fault(String::new()),
        campaigns,
        assignments: Vec::new(),
        faults: Vec::new(),
        tags,
        counts,
    };
    let caps = tenant.rules.caps();
    if let Some(sends) = sends.filter(|_| !exempt && !caps.is_empty() && m.channel != "web") {
        let tz = m
            .text("tz")
            .and_then(|name| jiff::tz::TimeZone::get(&name).ok())
            .unwrap_or_else(|| tenant.rules.timezone());
        let send = Send {
            tenant: &tenant.name,
            recipient: &m.recipient,
            channel: &m.channel,
            tags: &base.tags,
            at: m.at,
            send_id: &m.send_id,
        };
        match sends.capped(&send, caps, &tz) {
            Ok(Some(rule)) => {
                if !m.test {
                    visitor.services.track(
                        "veneer",
                        "message_aborted",
                        vec![
                            ("channel".into(), m.channel.clone()),
                            ("send_id".into(), m.send_id.clone()),
                            ("reason".into(), format!("cap:{rule}")),
                        ],
                    );
                }
                count(app, &tenant.name, &m.channel, "capped");
                return Rendered {
                    outcome: Outcome::Capped(rule),
                    counts: false,
                    ..base
                };
            }
            Ok(None) => {}
            Err(e) => {
                return Rendered {
                    counts: false,
                    ..Rendered::fault(format!("reading the send ledger: {e:#}"))
                };
            }
        }
    }

    app.message_faults.insert(id.clone(), Vec::new());
    // Removed however this ends: a render cut off by a time budget or a gone client too.
    let tap = FaultTap {
        app: app.clone(),
        id: id.clone(),
    };
    let body = stages(&mut ctx, &tenant, visitor, &m).await;
    let faults = tap.take();
    let assignments = ctx.visitor.as_ref().map_or_else(Vec::new, |v| {
        v.services
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| (a.experiment.clone(), a.variation, a.key.clone()))
            .collect()
    });
    let outcome = match body {
        Ok(body) => {
            if let Some(v) = ctx.visitor.as_ref().filter(|_| !m.open) {
                v.services.track(
                    "veneer",
                    "message_rendered",
                    vec![
                        ("channel".into(), m.channel.clone()),
                        ("send_id".into(), m.send_id.clone()),
                        ("campaigns".into(), base.campaigns.join(",")),
                        ("bytes".into(), body.len().to_string()),
                    ],
                );
            }
            Outcome::Rendered { body }
        }
        Err(why) => Outcome::Fault(why),
    };
    if !m.open {
        let status = match outcome {
            Outcome::Rendered { .. } => "rendered",
            _ => "fault",
        };
        count(app, &tenant.name, &m.channel, status);
    }
    Rendered {
        outcome,
        assignments,
        faults,
        ..base
    }
}

/// This message's entry in [`App::message_faults`], removed on drop.
struct FaultTap {
    app: Arc<App>,
    id: String,
}

impl FaultTap {
    fn take(&self) -> Vec<String> {
        self.app
            .message_faults
            .remove(&self.id)
            .map(|(_, f)| f)
            .unwrap_or_default()
    }
}

impl Drop for FaultTap {
    fn drop(&mut self) {
        self.app.message_faults.remove(&self.id);
    }
}

/// The page stages from the plugins on, for the template.
async fn stages(
    ctx: &mut RequestCtx,
    tenant: &Arc<crate::app::Tenant>,
    visitor: identify::VisitorCtx,
    m: &Message,
) -> Result<Bytes, String> {
    let requested = plugins::on_request(ctx, tenant, &visitor).await;
    let chain = match requested {
        plugins::Requested::Continue { chain, .. } => chain,
        // A plugin's own answer is the message, as it would be the page.
        plugins::Requested::Reply(response, _) => {
            ctx.visitor = Some(visitor);
            // A redirect or a refusal is not a message.
            if !response.status().is_success() {
                return Err(format!("a plugin answered {} instead", response.status()));
            }
            return collect(response).await;
        }
    };
    let mut template = Response::new(
        Full::new(m.template.clone())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    template.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(m.content_type),
    );
    let (head, body) = template.into_parts();
    let plans = plugins::on_response(ctx, tenant, &visitor, chain, &head).await;
    ctx.visitor = Some(visitor);
    let client = body::ClientView {
        is_head: false,
        accept_encoding: None,
    };
    let response = body::personalize(ctx, tenant, client, head, body, plans, None)
        .await
        .map_err(|e| e.detail().to_owned())?;
    collect(response).await
}

async fn collect(response: Response<Body>) -> Result<Bytes, String> {
    response
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| format!("rendering the body: {e}"))
}

fn count(app: &App, tenant: &str, channel: &str, status: &str) {
    app.metrics.inc(
        "veneer_messages_total",
        &[("tenant", tenant), ("channel", channel), ("status", status)],
    );
}
