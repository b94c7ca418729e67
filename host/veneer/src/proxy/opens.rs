//! E-mail opens and clicks on a tenant's own host: `GET /_veneer/i/TOKEN/SLOT.png` draws the
//! slot for the token's recipient at this instant (campaigns as they are now: after a
//! campaign's end the image shows what comes after it), and `GET /_veneer/c/TOKEN/SLOT`
//! sends the reader where the drawn slot links.
//!
//! An image request is always answered 200 with image bytes whose `Content-Type` matches
//! them: on any fault (a tampered or expired token, a plugin fault, an unreadable template,
//! over the slot's time budget) the slot's fallback image. Every hit is logged with its kind
//! (`email_open`); only `human` and `gmail_proxy` count as opens.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use serde_json::Value;

use super::Body;
use super::ctx::RequestCtx;
use super::message::{self, Message, Outcome};
use crate::analytics::Event;
use crate::app::Tenant;
use crate::config::EmailSlot;
use crate::email::{self, OpenKind, Token};

/// Whether `path` is an e-mail image or click.
pub(super) fn is_email_path(path: &str) -> bool {
    path.starts_with(email::IMAGE_PREFIX) || path.starts_with(email::CLICK_PREFIX)
}

/// Answers an e-mail image or click.
pub(super) async fn answer(
    ctx: &mut RequestCtx,
    tenant: &Arc<Tenant>,
    parts: &Parts,
) -> Response<Body> {
    let path = parts.uri.path();
    let kind = email::classify(
        &parts.method,
        &parts.headers,
        ctx.client_ip,
        &ctx.app.email.apple_mpp,
    );
    if let Some(rest) = path.strip_prefix(email::IMAGE_PREFIX) {
        ctx.outcome = "email_image";
        image(ctx, tenant, rest, kind, parts.method == Method::HEAD).await
    } else {
        ctx.outcome = "email_click";
        let rest = path.strip_prefix(email::CLICK_PREFIX).unwrap_or_default();
        click(ctx, tenant, rest, kind).await
    }
}

/// The token and slot of `TOKEN/SLOT[.ext]`.
fn split(rest: &str) -> (&str, &str) {
    let (token, slot) = rest.split_once('/').unwrap_or((rest, ""));
    let slot = slot
        .strip_suffix(".png")
        .or_else(|| slot.strip_suffix(".gif"))
        .or_else(|| slot.strip_suffix(".jpg"))
        .unwrap_or(slot);
    (token, slot)
}

async fn image(
    ctx: &RequestCtx,
    tenant: &Arc<Tenant>,
    rest: &str,
    kind: OpenKind,
    head: bool,
) -> Response<Body> {
    let (token, name) = split(rest);
    let app = &ctx.app;
    let slot = tenant.config.email_slots.iter().find(|s| s.name == name);
    let fallback = slot
        .and_then(|s| app.email.file(&app.resolve(&s.fallback)))
        .filter(|b| email::image_type(b).is_some())
        .unwrap_or_else(|| Bytes::from_static(email::BLANK_PNG));
    let verified = Token::verify(&app.signer, token, &tenant.name, ctx.now.as_second());
    let (bytes, result, campaign) = match (slot, &verified) {
        (None, _) => (fallback, "unknown_slot", None),
        (Some(_), None) => (fallback, "bad_token", None),
        (Some(slot), Some(t)) if !may_draw(ctx, tenant, t, &slot.name, "image") => {
            (fallback, "limited", None)
        }
        (Some(slot), Some(t)) => {
            let budget = Duration::from_millis(slot.budget_ms);
            match tokio::time::timeout(budget, draw_png(ctx, tenant, slot, t, kind)).await {
                Ok(Ok((png, campaign))) => (png, "drawn", campaign),
                Ok(Err(why)) => {
                    tracing::info!(tenant = %tenant.name, slot = %slot.name, request_id = %ctx.id, why, "e-mail image not drawn: fallback served");
                    (fallback, "fallback", None)
                }
                Err(_) => (fallback, "over_budget", None),
            }
        }
    };
    app.metrics.inc(
        "veneer_email_images_total",
        &[("tenant", &tenant.name), ("result", result)],
    );
    // A token replayed past its rate is not a reader opening the e-mail again: not logged, so
    // the replay cannot flood the queues every tenant's events go through either.
    if let Some(t) = verified.as_ref().filter(|_| result != "limited") {
        record(
            ctx,
            tenant,
            t,
            "email_open",
            vec![
                ("kind", kind.as_str().to_owned()),
                ("counted", kind.counted().to_string()),
                ("slot", name.to_owned()),
                ("send_id", t.send_id.clone()),
                ("channel", "email".to_owned()),
            ],
        );
        app.metrics.inc(
            "veneer_email_opens_total",
            &[("tenant", &tenant.name), ("kind", kind.as_str())],
        );
        if kind.counted() {
            signal(ctx, tenant, t, campaign, "open");
        }
    }
    let content_type = email::image_type(&bytes).unwrap_or("image/png");
    let body = if head {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        Full::new(bytes.clone())
            .map_err(|never| match never {})
            .boxed_unsync()
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    r
}

async fn click(
    ctx: &RequestCtx,
    tenant: &Arc<Tenant>,
    rest: &str,
    kind: OpenKind,
) -> Response<Body> {
    let (token, name) = split(rest);
    let app = &ctx.app;
    let slot = tenant.config.email_slots.iter().find(|s| s.name == name);
    let verified = Token::verify(&app.signer, token, &tenant.name, ctx.now.as_second());
    let default = slot.map_or_else(|| "/".to_owned(), |s| s.link.clone());
    let limited = matches!((slot, &verified),
        (Some(s), Some(t)) if !may_draw(ctx, tenant, t, &s.name, "click"));
    let (target, campaign) = match (slot, &verified) {
        (Some(slot), Some(t)) if !limited => {
            let budget = Duration::from_millis(slot.budget_ms);
            match tokio::time::timeout(budget, draw_svg(ctx, tenant, slot, t, kind)).await {
                Ok(Ok((svg, campaign))) => (
                    email::slot_link(&svg)
                        .filter(|l| email::safe_link(l))
                        .unwrap_or(default),
                    campaign,
                ),
                _ => (default, None),
            }
        }
        _ => (default, None),
    };
    if let Some(t) = verified.as_ref().filter(|_| !limited) {
        record(
            ctx,
            tenant,
            t,
            "email_click",
            vec![
                ("kind", kind.as_str().to_owned()),
                ("slot", name.to_owned()),
                ("send_id", t.send_id.clone()),
                ("target", target.clone()),
                ("channel", "email".to_owned()),
            ],
        );
        if kind != OpenKind::Scanner {
            signal(ctx, tenant, t, campaign, "click");
        }
    }
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::try_from(target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether `slot` may be drawn for this recipient's token now (`[tenant.limits]
/// email_draws_per_minute_per_token`); a refusal is counted under `path` (`image`, `click`).
fn may_draw(ctx: &RequestCtx, tenant: &Tenant, t: &Token, slot: &str, path: &str) -> bool {
    let per_minute = tenant.config.limits.email_draws_per_minute_per_token;
    // One send goes to every recipient of a campaign: the bucket is the recipient's in it, one
    // per slot (an e-mail with several draws each of them at every open).
    let key = (
        tenant.name.clone(),
        format!("{}\n{}\n{slot}", t.send_id, t.recipient),
    );
    let allowed = ctx
        .app
        .email_draws
        .take_key(key, per_minute / 60.0, per_minute)
        .is_ok();
    if !allowed {
        ctx.app.metrics.inc(
            "veneer_email_draws_limited_total",
            &[("tenant", &tenant.name), ("path", path)],
        );
    }
    allowed
}

/// The slot drawn for the token's recipient now, as SVG: the tenant's plugins personalize the
/// template, then its placeholders are filled for the highest-priority live campaign (whose id
/// comes with it, for reports).
async fn draw_svg(
    ctx: &RequestCtx,
    tenant: &Arc<Tenant>,
    slot: &EmailSlot,
    t: &Token,
    kind: OpenKind,
) -> Result<(String, Option<String>), String> {
    let app = &ctx.app;
    let template = app
        .email
        .file(&app.resolve(&slot.svg))
        .ok_or("the template cannot be read")?;
    let m = Arc::new(Message {
        tenant: tenant.name.to_string(),
        recipient: t.recipient.clone(),
        channel: "email".into(),
        attributes: t.attributes.clone(),
        at: ctx.now,
        send_id: t.send_id.clone(),
        // A hit that is not a reader's (a scanner, Apple's or Gmail's prefetch) records no
        // plugin events or exposures.
        test: !kind.counted(),
        template,
        content_type: "text/html; charset=utf-8",
        open: true,
    });
    let rendered = message::render(app, m, None).await;
    if !rendered.faults.is_empty() {
        return Err(format!("plugin fault: {}", rendered.faults.join(", ")));
    }
    let Outcome::Rendered { body } = rendered.outcome else {
        return Err("not rendered".into());
    };
    let svg = String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8")?;
    let campaign = rendered
        .campaigns
        .first()
        .and_then(|id| tenant.rules.campaigns().iter().find(|c| &c.id == id));
    let mut attributes = Value::Object(t.attributes.clone());
    if let Value::Object(map) = &mut attributes {
        map.insert("id".into(), Value::String(t.recipient.clone()));
    }
    let svg = email::fill(&svg, &attributes, campaign, ctx.now);
    Ok((svg, campaign.map(|c| c.id.clone())))
}

/// The slot drawn now, as PNG (rasterized on the blocking pool, cached by the SVG's hash).
async fn draw_png(
    ctx: &RequestCtx,
    tenant: &Arc<Tenant>,
    slot: &EmailSlot,
    t: &Token,
    kind: OpenKind,
) -> Result<(Bytes, Option<String>), String> {
    let (svg, campaign) = draw_svg(ctx, tenant, slot, t, kind).await?;
    let app = ctx.app.clone();
    let png = tokio::task::spawn_blocking(move || app.email.png(&svg))
        .await
        .map_err(|e| format!("drawing: {e}"))??;
    Ok((png, campaign))
}

/// An open or click for the campaign the slot showed, in the ledger for the campaign report.
fn signal(
    ctx: &RequestCtx,
    tenant: &Tenant,
    t: &Token,
    campaign: Option<String>,
    kind: &'static str,
) {
    let (Some(ledger), Some(campaign)) = (&ctx.app.ledger, campaign) else {
        return;
    };
    ledger.signal(crate::ledger::Signal {
        tenant: tenant.name.to_string(),
        campaign,
        channel: "email".into(),
        visitor: t.recipient.clone(),
        kind,
        at_us: ctx.now.as_microsecond(),
    });
}

fn record(
    ctx: &RequestCtx,
    tenant: &Tenant,
    t: &Token,
    event: &str,
    properties: Vec<(&str, String)>,
) {
    ctx.app.analytics.record(Event {
        ts: ctx.now.to_string(),
        tenant: tenant.name.to_string(),
        visitor: t.recipient.clone(),
        request_id: ctx.id.clone(),
        path: String::new(),
        plugin: "veneer".into(),
        event: event.into(),
        properties: properties
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect(),
    });
}
