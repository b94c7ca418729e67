//! The plugin chain: `on-request` for every plugin (each may continue with header edits,
//! redirect or answer), then `on-response` for those that continued. Never fails a request: a
//! plugin that faults, or asks for what the host refuses, is dropped from the chain (fail open).

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;
use super::ctx::RequestCtx;
use super::finish::full;
use super::headers::{export_headers, reserved_cookie};
use super::identify::VisitorCtx;
use super::memo::{KeptPlan, Memo, Recorded, Recorder, Signature, Variant};
use super::services::Services;
use crate::app::{App, Tenant};
use crate::plugin::{
    Admission, Budget, HeaderEdits, Instance, PluginFault, RequestAction, ResponseHead,
    ResponsePlan, SyntheticResponse,
};
use crate::rewrite::{self, CheckedPlan};

/// What the `on-request` pass decided.
pub(super) enum Requested {
    /// Go on to the origin with these plugins and their request header edits.
    Continue {
        /// Plugins that continued, in chain order.
        chain: Vec<Live>,
        /// Their request header edits, in chain order.
        edits: Vec<HeaderEdits>,
    },
    /// A plugin answered (redirect or its own response), counted under this outcome.
    Reply(Response<Body>, &'static str),
}

/// Runs `on-request` through the tenant's chain.
pub(super) async fn on_request(ctx: &RequestCtx, tenant: &Tenant, v: &VisitorCtx) -> Requested {
    let (app, name, request_id) = (&ctx.app, tenant.config.name.as_str(), ctx.id.as_str());
    let mut chain: Vec<Live> = Vec::with_capacity(tenant.plugins.len());
    let mut edits: Vec<HeaderEdits> = Vec::new();
    // Held only for the plugin calls, never while the origin answers.
    let turn = plugin_turn(app, tenant).await;
    let plugins = if turn.is_some() {
        tenant.plugins.as_slice()
    } else {
        for p in &tenant.plugins {
            tap_fault(app, request_id, p.name());
        }
        &[]
    };
    for (index, plugin) in plugins.iter().enumerate() {
        let admission = plugin.admit();
        if admission == Admission::Skip {
            skipped(app, name, plugin.name(), request_id);
            continue;
        }
        let budget = *plugin.budget();
        // A deterministic plugin's kept answer, when it applies to this visitor (never for
        // a breaker's trial request: that one must run the plugin).
        let memo = tenant.memos.get(index).and_then(Option::as_ref);
        let key = memo
            .filter(|_| admission == Admission::Run)
            .map(|_| Memo::key(&v.request_head, &v.visitor));
        if let (Some(memo), Some(key)) = (memo, &key)
            && let Some(variant) = memo.recall(key, &*v.services)
        {
            count_memo(app, name, plugin.name(), "hit");
            edits.push(variant.edits.clone());
            chain.push(Live {
                name: Arc::from(plugin.name()),
                instance: None,
                budget,
                memo: Some(Memoing::Recalled { index, variant }),
                kept: None,
            });
            continue;
        }
        let recorder = key.as_ref().map(|_| {
            count_memo(app, name, plugin.name(), "miss");
            Arc::new(Recorder::new(v.services.clone(), false))
        });
        let services: Arc<dyn crate::plugin::HostServices> = match &recorder {
            Some(r) => r.clone(),
            None => v.services.clone(),
        };
        let mut instance = match plugin.instantiate(services, admission).await {
            Ok(i) => i,
            Err(f) => {
                report_fault(app, name, plugin.name(), request_id, &f);
                continue;
            }
        };
        let started = std::time::Instant::now();
        let answer = instance.on_request(&v.request_head, &v.visitor).await;
        app.metrics.observe(
            "veneer_plugin_hook_seconds",
            &[
                ("tenant", name),
                ("plugin", plugin.name()),
                ("hook", "on_request"),
            ],
            started.elapsed(),
        );
        let refused = match answer {
            Ok(RequestAction::Continue(e)) => match budget.check_edits(&e) {
                Ok(()) => {
                    let memo = match (key, recorder) {
                        (Some(key), Some(recorder)) if !instance.read_unkeyed() => {
                            recorder.take().map(|request| Memoing::Recording {
                                memo: memo.cloned(),
                                key,
                                recorder,
                                request,
                                edits: e.clone(),
                            })
                        }
                        _ => None,
                    };
                    edits.push(e);
                    chain.push(Live {
                        name: Arc::from(plugin.name()),
                        instance: Some(instance),
                        budget,
                        memo,
                        kept: None,
                    });
                    continue;
                }
                Err(f) => f,
            },
            Ok(RequestAction::Redirect((status, location))) => {
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308));
                match (status, HeaderValue::try_from(location)) {
                    (Some(status), Ok(location)) => {
                        let mut r = full(status, "");
                        r.headers_mut().insert(header::LOCATION, location);
                        return Requested::Reply(r, "plugin_redirect");
                    }
                    _ => PluginFault::InvalidPlan("redirect status or location".into()),
                }
            }
            Ok(RequestAction::Respond(synthetic)) => {
                match check_synthetic(&synthetic, &budget, tenant).and_then(|()| {
                    synthetic_response(synthetic)
                        .ok_or_else(|| PluginFault::InvalidPlan("synthetic response".into()))
                }) {
                    Ok(r) => return Requested::Reply(r, "plugin_response"),
                    Err(f) => f,
                }
            }
            Err(f) => {
                report_fault(app, name, plugin.name(), request_id, &f);
                continue;
            }
        };
        instance.mark_faulted();
        report_fault(app, name, plugin.name(), request_id, &refused);
    }
    Requested::Continue { chain, edits }
}

/// Runs `on-response` through the plugins that continued; returns their checked plans.
pub(super) async fn on_response(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    mut chain: Vec<Live>,
    origin: &http::response::Parts,
) -> Vec<(Live, CheckedPlan)> {
    let (app, name, request_id) = (&ctx.app, tenant.config.name.as_str(), ctx.id.as_str());
    let mut plans = Vec::new();
    if chain.is_empty() {
        return plans;
    }
    let turn = plugin_turn(app, tenant).await;
    if turn.is_none() {
        for live in chain.drain(..) {
            tap_fault(app, request_id, &live.name);
            if let Some(instance) = live.instance {
                instance.abandon();
            }
        }
    }
    let head = Arc::new(ResponseHead {
        status: origin.status.as_u16(),
        headers: export_headers(&origin.headers),
    });
    for mut live in chain {
        let signature = live.memo.as_ref().map(|_| Signature::of(&head));
        if let (Some(Memoing::Recalled { index, variant }), Some(signature)) =
            (&live.memo, &signature)
        {
            if let Some((plan, place)) = Memo::recall_response(variant, signature, &*v.services) {
                // No instance ran to tell its breaker if applying the plan faults: this does.
                live.kept = Some(Kept {
                    place,
                    recalled: Some((*index, v.services.clone())),
                });
                plans.push((live, plan));
                continue;
            }
            // Kept for another kind of response: run the plugin after all, its request hook
            // again first (its edits were sent, its effects done: only its state matters).
            count_memo(app, name, &live.name, "response_miss");
            let (index, variant) = (*index, variant.clone());
            match rerun_request(ctx, tenant, v, index).await {
                Some((instance, recorder)) => {
                    live.instance = Some(instance);
                    live.memo = Some(Memoing::Rerun { variant, recorder });
                }
                None => continue,
            }
        }
        let Some(instance) = live.instance.as_mut() else {
            continue;
        };
        let started = std::time::Instant::now();
        let answer = instance
            .on_response(&v.request_head, &head, &v.visitor)
            .await;
        app.metrics.observe(
            "veneer_plugin_hook_seconds",
            &[
                ("tenant", name),
                ("plugin", &live.name),
                ("hook", "on_response"),
            ],
            started.elapsed(),
        );
        match answer.and_then(|plan| check_response_plan(plan, &live.budget, tenant)) {
            Ok(plan) => {
                if let (Some(memo), Some(signature)) = (live.memo.take(), signature) {
                    live.kept = keep(&live, memo, signature, &plan).map(|place| Kept {
                        place,
                        recalled: None,
                    });
                }
                plans.push((live, plan))
            }
            Err(f) => {
                instance.mark_faulted();
                report_fault(app, name, &live.name, request_id, &f)
            }
        }
    }
    plans
}

/// Keeps a deterministic plugin's answer to this request, when nothing it did stands in the
/// way: it read only what the answer is keyed by, and its plan needs no instance later (no
/// element callbacks, no rule that records an event when it applies). Returns where the plan
/// was kept.
fn keep(live: &Live, memo: Memoing, signature: Signature, plan: &CheckedPlan) -> Option<KeptPlan> {
    if live.instance.as_ref().is_none_or(Instance::read_unkeyed) || plan.needs_instance() {
        return None;
    }
    match memo {
        Memoing::Recording {
            memo: Some(memo),
            key,
            recorder,
            request,
            edits,
        } => {
            let response = recorder.take()?;
            // Made now, so every request it is served to has it.
            plan.html_fingerprint();
            Some(memo.keep(key, request, edits, signature, response, plan.clone()))
        }
        Memoing::Rerun { variant, recorder } => {
            let response = recorder.take()?;
            plan.html_fingerprint();
            Some(Memo::keep_response(
                &variant,
                signature,
                response,
                plan.clone(),
            ))
        }
        Memoing::Recalled { .. } | Memoing::Recording { memo: None, .. } => None,
    }
}

/// A fresh instance of the tenant's plugin `index` that has run `on-request` again (silently:
/// its effects were done by the recall), ready for `on-response`; `None` after a fault
/// (reported).
async fn rerun_request(
    ctx: &RequestCtx,
    tenant: &Tenant,
    v: &VisitorCtx,
    index: usize,
) -> Option<(Instance, Arc<Recorder>)> {
    let (app, name, request_id) = (&ctx.app, tenant.config.name.as_str(), ctx.id.as_str());
    let plugin = tenant.plugins.get(index)?;
    // Its breaker may have opened since the answer was recalled (another request's faults).
    let admission = plugin.admit();
    if admission == Admission::Skip {
        skipped(app, name, plugin.name(), request_id);
        return None;
    }
    let recorder = Arc::new(Recorder::new(v.services.clone(), true));
    let mut instance = match plugin.instantiate(recorder.clone(), admission).await {
        Ok(i) => i,
        Err(f) => {
            report_fault(app, name, plugin.name(), request_id, &f);
            return None;
        }
    };
    match instance.on_request(&v.request_head, &v.visitor).await {
        Ok(_) => {
            // What it read and did then is the recalled answer's; from here on, it records
            // (and does) what `on-response` reads and does.
            recorder.take();
            Some((instance, recorder))
        }
        Err(f) => {
            report_fault(app, name, plugin.name(), request_id, &f);
            None
        }
    }
}

/// A plugin left out of this request: its circuit breaker is open.
fn skipped(app: &App, tenant: &str, plugin: &str, request_id: &str) {
    tap_fault(app, request_id, plugin);
    app.metrics.inc(
        "veneer_plugin_skipped_total",
        &[
            ("tenant", tenant),
            ("plugin", plugin),
            ("reason", "breaker_open"),
        ],
    );
}

fn count_memo(app: &App, tenant: &str, plugin: &str, result: &str) {
    app.metrics.inc(
        "veneer_plugin_memo_total",
        &[("tenant", tenant), ("plugin", plugin), ("result", result)],
    );
}

fn synthetic_response(s: SyntheticResponse) -> Option<Response<Body>> {
    let mut r = Response::new(
        Full::new(bytes::Bytes::from(s.body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::from_u16(s.status).ok()?;
    for (k, v) in s.headers {
        r.headers_mut().append(
            HeaderName::try_from(k).ok()?,
            HeaderValue::try_from(v).ok()?,
        );
    }
    Some(r)
}

/// A plugin taking part in this request.
pub(super) struct Live {
    /// Its name in the tenant config.
    pub(super) name: Arc<str>,
    /// Its instance for this request; `None` when its answers were kept ones.
    pub(super) instance: Option<Instance>,
    /// What its plans may ask of the host.
    pub(super) budget: Budget,
    /// Where a deterministic plugin's answers come from or go to.
    memo: Option<Memoing>,
    /// Its plan, when it is a kept one (recalled, or kept by this request).
    pub(super) kept: Option<Kept>,
}

/// A plan served from (or just put in) a deterministic plugin's memo.
pub(super) struct Kept {
    place: KeptPlan,
    /// A recalled plan's plugin (its index in the tenant) and the request's services: no
    /// instance ran to tell the plugin's breaker of a fault in applying it.
    recalled: Option<(usize, Arc<Services>)>,
}

impl Kept {
    /// Applying the plan to the body faulted: it is not served again, and the fault counts
    /// against the plugin as a run's would. Only the request that forgets the plan counts it:
    /// others already applying the same plan (a burst on one page) fault with it but do not
    /// count again: one bad plan is one fault, not one per request that held it.
    pub(super) fn faulted(&self) {
        if self.place.forget()
            && let Some((index, services)) = &self.recalled
            && let Some(plugin) = services.tenant.plugins.get(*index)
        {
            plugin.kept_plan_faulted(&**services);
        }
    }
}

/// A deterministic plugin's answers in this request.
enum Memoing {
    /// `on-request`'s answer was a kept one (the tenant's plugin `index`).
    Recalled { index: usize, variant: Arc<Variant> },
    /// It ran, recording, and its answers are kept under `key` if it keeps its promise.
    Recording {
        memo: Option<Arc<Memo>>,
        key: Box<[u8]>,
        recorder: Arc<Recorder>,
        request: Recorded,
        edits: HeaderEdits,
    },
    /// `on-request` was recalled but the response is of a new kind: it ran again, and its
    /// plan is kept beside the recalled answer.
    Rerun {
        variant: Arc<Variant>,
        recorder: Arc<Recorder>,
    },
}

/// Everything the host checks in a response plan before applying it.
fn check_response_plan(
    plan: ResponsePlan,
    budget: &Budget,
    tenant: &Tenant,
) -> Result<rewrite::CheckedPlan, PluginFault> {
    budget.check_plan(&plan)?;
    if let Some(name) = reserved_cookie(&plan.headers.set, tenant) {
        return Err(PluginFault::InvalidPlan(format!(
            "set-cookie for {name}, which only the host may set"
        )));
    }
    rewrite::validate_plan(plan)
}

/// Everything the host checks in a plugin's own response before sending it.
fn check_synthetic(
    s: &SyntheticResponse,
    budget: &Budget,
    tenant: &Tenant,
) -> Result<(), PluginFault> {
    budget.check_synthetic(s)?;
    match reserved_cookie(&s.headers, tenant) {
        Some(name) => Err(PluginFault::InvalidPlan(format!(
            "set-cookie for {name}, which only the host may set"
        ))),
        None => Ok(()),
    }
}

/// A message being rendered (`veneer render`, an e-mail image) lists the plugins that failed
/// or were skipped (breaker open, tenant busy): it went out without them.
fn tap_fault(app: &App, request_id: &str, plugin: &str) {
    if app.message_faults.is_empty() {
        return;
    }
    if let Some(mut faults) = app.message_faults.get_mut(request_id)
        && !faults.iter().any(|p| p == plugin)
    {
        faults.push(plugin.to_owned());
    }
}

pub(super) fn report_fault(
    app: &App,
    tenant: &str,
    plugin: &str,
    request_id: &str,
    fault: &PluginFault,
) {
    // The stored version now serving (faults are rare and the breaker bounds them, so the
    // lookup stays off the hot path); `None` for plugins from the config file.
    let version = app.tenant_named(tenant).and_then(|t| {
        t.plugins
            .iter()
            .find(|p| p.name() == plugin)
            .and_then(|p| p.version())
    });
    tracing::warn!(tenant, plugin, version, request_id, kind = fault.kind(), error = %fault, "plugin fault: serving without this plugin");
    tap_fault(app, request_id, plugin);
    app.metrics.inc(
        "veneer_plugin_faults_total",
        &[
            ("tenant", tenant),
            ("plugin", plugin),
            ("kind", fault.kind()),
        ],
    );
    // Every failure is also counted by its source; a plugin's fails open (the visitor still
    // gets the page), so it is the one source whose count is not of error responses.
    app.metrics.inc(
        "veneer_errors_total",
        &[
            ("tenant", tenant),
            ("source", "plugin"),
            ("outcome", fault.kind()),
        ],
    );
}

/// Waits for a turn to run the tenant's plugins (see `plugin_concurrency`); `None`, counted,
/// when none came within 10 × the tenant's plugin time budget: the request is then served
/// without its plugins, as if they had failed open.
async fn plugin_turn<'t>(
    app: &App,
    tenant: &'t Tenant,
) -> Option<tokio::sync::SemaphorePermit<'t>> {
    if tenant.plugins.is_empty() {
        return None;
    }
    if let Ok(permit) = tenant.plugin_slots.try_acquire() {
        return Some(permit);
    }
    // Long enough that a busy tenant's own requests queue rather than lose their
    // personalization; a tenant whose plugins spin waits its turn and then goes without.
    let wait = std::time::Duration::from_millis(tenant.config.limits.plugin_time_ms * 10);
    match tokio::time::timeout(wait, tenant.plugin_slots.acquire()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => {
            app.metrics.inc(
                "veneer_plugin_skipped_total",
                &[
                    ("tenant", &tenant.config.name),
                    ("plugin", "*"),
                    ("reason", "tenant_busy"),
                ],
            );
            None
        }
    }
}
