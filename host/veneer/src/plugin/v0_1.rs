//! Contract `veneer:plugin@0.1.0` (frozen: `wit/v0.1.0/veneer.wit`): its bindings and the
//! conversions between its records and the host's model.
//!
//! 0.1.0 passes everything as records, so a call copies the visitor and the request head
//! into the guest; components built for it keep working unchanged on this host.

use wasmtime::Store;

use super::StoreState;
use super::model;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "personalizer",
        // Calls into plugins are driven as futures (see `Instance` in the parent module).
        exports: { default: async },
    });
}

use bindings::veneer::plugin as wit;
pub use bindings::{Personalizer, PersonalizerPre};
use wit::types as t;

/// Links this version's host interfaces.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    Personalizer::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
}

/// Calls `on-request`.
pub async fn on_request(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    request: &model::RequestHead,
    visitor: &model::Visitor,
) -> wasmtime::Result<model::RequestAction> {
    let action = b
        .veneer_plugin_hooks()
        .call_on_request(store, &request_head(request), &visitor_record(visitor))
        .await?;
    Ok(match action {
        t::RequestAction::Continue(e) => model::RequestAction::Continue(edits(e)),
        t::RequestAction::Redirect(r) => model::RequestAction::Redirect(r),
        t::RequestAction::Respond(s) => model::RequestAction::Respond(model::SyntheticResponse {
            status: s.status,
            headers: s.headers,
            body: s.body,
        }),
    })
}

/// Calls `on-response`.
pub async fn on_response(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    request: &model::RequestHead,
    response: &model::ResponseHead,
    visitor: &model::Visitor,
) -> wasmtime::Result<model::ResponsePlan> {
    let response = t::ResponseHead {
        status: response.status,
        headers: response.headers.clone(),
    };
    let plan = b
        .veneer_plugin_hooks()
        .call_on_response(
            store,
            &request_head(request),
            &response,
            &visitor_record(visitor),
        )
        .await?;
    Ok(model::ResponsePlan {
        headers: edits(plan.headers),
        html: plan
            .html
            .into_iter()
            .map(|r| model::HtmlRule {
                selector: r.selector,
                op: html_op(r.op),
            })
            .collect(),
        json: plan
            .json
            .into_iter()
            .map(|op| match op {
                t::JsonOp::Set(a) => model::JsonOp::Set(a),
                t::JsonOp::Remove(p) => model::JsonOp::Remove(p),
                t::JsonOp::Append(a) => model::JsonOp::Append(a),
            })
            .collect(),
        subscribe: plan
            .subscribe
            .into_iter()
            .map(|s| model::Subscription {
                selector: s.selector,
                text: s.text,
            })
            .collect(),
        ..model::ResponsePlan::default()
    })
}

/// Calls `on-element`; returns a future the caller polls.
pub async fn on_element(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    subscription: u32,
    element: &model::ElementInfo,
) -> wasmtime::Result<Vec<model::HtmlOp>> {
    let info = t::ElementInfo {
        tag: element.tag.clone(),
        attributes: element.attributes.clone(),
    };
    let ops = b
        .veneer_plugin_hooks()
        .call_on_element(store, subscription, &info)
        .await?;
    Ok(ops.into_iter().map(html_op).collect())
}

/// Calls `on-text`.
pub async fn on_text(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    subscription: u32,
    text: &str,
) -> wasmtime::Result<Option<String>> {
    b.veneer_plugin_hooks()
        .call_on_text(store, subscription, text)
        .await
}

fn request_head(r: &model::RequestHead) -> t::RequestHead {
    t::RequestHead {
        method: r.method.clone(),
        path: r.path.clone(),
        host: r.host.clone(),
        headers: r.headers.clone(),
    }
}

fn visitor_record(v: &model::Visitor) -> t::Visitor {
    t::Visitor {
        id: v.id.clone(),
        segments: v.segments.clone(),
        device: match v.device {
            model::DeviceClass::Desktop => t::DeviceClass::Desktop,
            model::DeviceClass::Mobile => t::DeviceClass::Mobile,
            model::DeviceClass::Tablet => t::DeviceClass::Tablet,
            model::DeviceClass::Bot => t::DeviceClass::Bot,
        },
        country: v.country.clone(),
        locale: v.locale.clone(),
        visit_count: v.visit_count,
        first_seen: v.first_seen,
        utm: v.utm.clone(),
        referrer: v.referrer.clone(),
        consent: t::Consent {
            analytics: v.consent.analytics,
            personalization: v.consent.personalization,
            marketing: v.consent.marketing,
        },
    }
}

fn edits(e: t::HeaderEdits) -> model::HeaderEdits {
    model::HeaderEdits {
        set: e.set,
        remove: e.remove,
    }
}

fn html_op(op: t::HtmlOp) -> model::HtmlOp {
    use model::HtmlOp as M;
    match op {
        t::HtmlOp::SetInnerHtml(s) => M::SetInnerHtml(s),
        t::HtmlOp::SetInnerText(s) => M::SetInnerText(s),
        t::HtmlOp::PrependHtml(s) => M::PrependHtml(s),
        t::HtmlOp::AppendHtml(s) => M::AppendHtml(s),
        t::HtmlOp::BeforeHtml(s) => M::BeforeHtml(s),
        t::HtmlOp::AfterHtml(s) => M::AfterHtml(s),
        t::HtmlOp::ReplaceHtml(s) => M::ReplaceHtml(s),
        t::HtmlOp::Remove => M::Remove,
        t::HtmlOp::Unwrap => M::Unwrap,
        t::HtmlOp::SetAttribute(a) => M::SetAttribute(a),
        t::HtmlOp::RemoveAttribute(n) => M::RemoveAttribute(n),
        t::HtmlOp::AddClass(c) => M::AddClass(c),
        t::HtmlOp::RemoveClass(c) => M::RemoveClass(c),
    }
}

fn level(l: t::Level) -> model::Level {
    match l {
        t::Level::Debug => model::Level::Debug,
        t::Level::Info => model::Level::Info,
        t::Level::Warn => model::Level::Warn,
        t::Level::Error => model::Level::Error,
    }
}

impl t::Host for StoreState {}

impl wit::content::Host for StoreState {
    fn fragment(&mut self, key: String) -> Option<String> {
        self.services.fragment(&key)
    }
}

impl wit::analytics::Host for StoreState {
    fn track(&mut self, name: String, properties: Vec<(String, String)>) {
        self.record_event(&name, properties);
    }
}

impl wit::campaigns::Host for StoreState {
    fn active(&mut self) -> Vec<wit::campaigns::Campaign> {
        self.services
            .active_campaigns()
            .iter()
            .map(|c| wit::campaigns::Campaign {
                id: c.id.clone(),
                name: c.name.clone(),
                priority: c.priority,
                ends_at: c.ends_at,
                params: c.params.clone(),
            })
            .collect()
    }

    fn assign(&mut self, experiment: String) -> Option<wit::campaigns::Assignment> {
        self.services
            .assign(&experiment)
            .map(|a| wit::campaigns::Assignment {
                experiment: a.experiment,
                variation: a.variation,
                key: a.key,
                value: a.value,
                in_experiment: a.in_experiment,
            })
    }
}

impl wit::host::Host for StoreState {
    fn config(&mut self, key: String) -> Option<String> {
        self.param(&key)
    }

    fn log(&mut self, l: t::Level, message: String) {
        self.write_log(level(l), &message);
    }
}
