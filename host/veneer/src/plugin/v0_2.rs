//! Contract `veneer:plugin@0.2.x` (`wit/veneer.wit`, 0.2.2 today): its bindings and the host
//! side of its resources. Components built for 0.2.0 and 0.2.1 link to these bindings by
//! semver (0.2.1 only added methods, 0.2.2 the `profile` interface).
//!
//! 0.2.0 hands the plugin resources instead of records: the visitor, request and response are
//! read through getters (backed by `Arc`s of the host's model, so nothing is copied until the
//! plugin asks), and the plugin states what it wants by calling methods on `request-plan`,
//! `response-plan` and `element`, which collect the host's model types. The host creates the
//! resources for one call, lends them to the guest, and takes the plans back when it returns.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::Resource;

use super::StoreState;
use super::budget::op_bytes;
use super::lent::{ElementView, LentElement};
use super::model::{self, HtmlOp, HtmlRule, JsonOp};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/veneer.wit",
        world: "personalizer",
        // Calls into plugins are driven as futures (see `Instance` in the parent module).
        exports: { default: async },
        // A host function given a handle that is not in the table traps the guest.
        imports: { default: trappable },
        with: {
            "veneer:plugin/types.visitor": super::VisitorRes,
            "veneer:plugin/types.request": super::RequestRes,
            "veneer:plugin/types.response": super::ResponseRes,
            "veneer:plugin/types.request-plan": super::RequestPlanRes,
            "veneer:plugin/types.response-plan": super::ResponsePlanRes,
            "veneer:plugin/types.element": super::ElementRes,
            "veneer:plugin/types.text-node": super::TextRes,
            "veneer:plugin/campaigns.campaign": super::CampaignRes,
            "veneer:plugin/campaigns.assignment": super::AssignmentRes,
        },
    });
}

use bindings::veneer::plugin as wit;
pub use bindings::{Personalizer, PersonalizerPre};
use wit::types as t;

/// The visitor resource: a shared view of the request's visitor.
pub struct VisitorRes(Arc<model::Visitor>);
/// The request resource.
pub struct RequestRes(Arc<model::RequestHead>);
/// The response resource.
pub struct ResponseRes(Arc<model::ResponseHead>);
/// What `on-request` asked for.
#[derive(Default)]
pub struct RequestPlanRes {
    edits: model::HeaderEdits,
    reply: Option<model::RequestAction>,
}
/// The plan `on-response` builds.
#[derive(Default)]
pub struct ResponsePlanRes(model::ResponsePlan);
/// An element lent to `on-element`, with the operations asked for it.
pub struct ElementRes {
    element: LentElement,
    ops: Vec<HtmlOp>,
}

impl ElementRes {
    /// The element, while the call it was lent to runs.
    fn read(&self) -> wasmtime::Result<&dyn ElementView> {
        self.element
            .get()
            .ok_or_else(|| wasmtime::format_err!("element read after its on-element call ended"))
    }
}
/// A text node lent to `on-text`, with its replacement if the plugin asked for one.
pub struct TextRes {
    text: String,
    replacement: Option<String>,
}
/// A live campaign handed to the guest (shared with the request's list, not copied).
pub struct CampaignRes(Arc<model::Campaign>);
/// An experiment assignment handed to the guest.
pub struct AssignmentRes(model::Assignment);

/// Handles a guest may hold at once (campaigns and assignments it did not drop). The host's
/// table lives outside the plugin's memory limit, so it is bounded here; each handle is small
/// (campaigns are shared `Arc`s).
const MAX_OWNED_HANDLES: usize = 1_000;

/// Links this version's host interfaces.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    Personalizer::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

/// Calls `on-request`.
pub async fn on_request(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    request: &Arc<model::RequestHead>,
    visitor: &Arc<model::Visitor>,
) -> wasmtime::Result<model::RequestAction> {
    let table = &mut store.data_mut().table;
    let req = table.push(RequestRes(request.clone()))?;
    let vis = table.push(VisitorRes(visitor.clone()))?;
    let plan = table.push(RequestPlanRes::default())?;
    let result = b
        .veneer_plugin_hooks()
        .call_on_request(&mut *store, borrow(&req), borrow(&vis), borrow(&plan))
        .await;
    // The call's own error classifies the fault, so it goes first; the lent resources are
    // removed either way.
    let table = &mut store.data_mut().table;
    let (r1, r2, plan) = (table.delete(req), table.delete(vis), table.delete(plan));
    result?;
    r1?;
    r2?;
    let plan = plan?;
    Ok(plan
        .reply
        .unwrap_or(model::RequestAction::Continue(plan.edits)))
}

/// Calls `on-response`.
pub async fn on_response(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    request: &Arc<model::RequestHead>,
    response: &Arc<model::ResponseHead>,
    visitor: &Arc<model::Visitor>,
) -> wasmtime::Result<model::ResponsePlan> {
    let table = &mut store.data_mut().table;
    let req = table.push(RequestRes(request.clone()))?;
    let resp = table.push(ResponseRes(response.clone()))?;
    let vis = table.push(VisitorRes(visitor.clone()))?;
    let plan = table.push(ResponsePlanRes::default())?;
    let result = b
        .veneer_plugin_hooks()
        .call_on_response(
            &mut *store,
            borrow(&req),
            borrow(&resp),
            borrow(&vis),
            borrow(&plan),
        )
        .await;
    let table = &mut store.data_mut().table;
    let (r1, r2, r3) = (table.delete(req), table.delete(resp), table.delete(vis));
    let plan = table.delete(plan);
    result?;
    r1?;
    r2?;
    r3?;
    Ok(plan?.0)
}

/// Calls `on-element`.
pub async fn on_element(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    subscription: u32,
    element: LentElement,
) -> wasmtime::Result<Vec<HtmlOp>> {
    let el = store.data_mut().table.push(ElementRes {
        element,
        ops: Vec::new(),
    })?;
    let result = b
        .veneer_plugin_hooks()
        .call_on_element(&mut *store, subscription, borrow(&el))
        .await;
    let el = store.data_mut().table.delete(el);
    result?;
    Ok(el?.ops)
}

/// Calls `on-text`.
pub async fn on_text(
    b: &Personalizer,
    store: &mut Store<StoreState>,
    subscription: u32,
    text: &str,
) -> wasmtime::Result<Option<String>> {
    let node = store.data_mut().table.push(TextRes {
        text: text.to_owned(),
        replacement: None,
    })?;
    let result = b
        .veneer_plugin_hooks()
        .call_on_text(&mut *store, subscription, borrow(&node))
        .await;
    let node = store.data_mut().table.delete(node);
    result?;
    Ok(node?.replacement)
}

impl StoreState {
    fn push_owned<T: Send + 'static>(&mut self, value: T) -> wasmtime::Result<Resource<T>> {
        if self.owned_handles >= MAX_OWNED_HANDLES {
            wasmtime::bail!(
                "more than {MAX_OWNED_HANDLES} campaign/assignment handles held at once"
            );
        }
        let handle = self.table.push(value)?;
        self.owned_handles += 1;
        Ok(handle)
    }

    fn drop_owned<T: 'static>(&mut self, r: Resource<T>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        self.owned_handles = self.owned_handles.saturating_sub(1);
        Ok(())
    }
}

type R<T> = wasmtime::Result<T>;

impl t::Host for StoreState {}

impl t::HostVisitor for StoreState {
    fn id(&mut self, v: Resource<VisitorRes>) -> R<String> {
        self.unkeyed = true;
        Ok(self.table.get(&v)?.0.id.clone())
    }
    fn segments(&mut self, v: Resource<VisitorRes>) -> R<Vec<String>> {
        Ok(self.table.get(&v)?.0.segments.clone())
    }
    fn in_segment(&mut self, v: Resource<VisitorRes>, name: String) -> R<bool> {
        Ok(self.table.get(&v)?.0.segments.contains(&name))
    }
    fn device(&mut self, v: Resource<VisitorRes>) -> R<t::DeviceClass> {
        Ok(match self.table.get(&v)?.0.device {
            model::DeviceClass::Desktop => t::DeviceClass::Desktop,
            model::DeviceClass::Mobile => t::DeviceClass::Mobile,
            model::DeviceClass::Tablet => t::DeviceClass::Tablet,
            model::DeviceClass::Bot => t::DeviceClass::Bot,
        })
    }
    fn country(&mut self, v: Resource<VisitorRes>) -> R<Option<String>> {
        self.unkeyed = true;
        Ok(self.table.get(&v)?.0.country.clone())
    }
    fn locale(&mut self, v: Resource<VisitorRes>) -> R<Option<String>> {
        Ok(self.table.get(&v)?.0.locale.clone())
    }
    fn visit_count(&mut self, v: Resource<VisitorRes>) -> R<u32> {
        self.unkeyed = true;
        Ok(self.table.get(&v)?.0.visit_count)
    }
    fn first_seen(&mut self, v: Resource<VisitorRes>) -> R<u64> {
        self.unkeyed = true;
        Ok(self.table.get(&v)?.0.first_seen)
    }
    fn utm(&mut self, v: Resource<VisitorRes>, name: String) -> R<Option<String>> {
        self.unkeyed = true;
        Ok(model::header(&self.table.get(&v)?.0.utm, &name).map(str::to_owned))
    }
    fn utm_params(&mut self, v: Resource<VisitorRes>) -> R<Vec<(String, String)>> {
        self.unkeyed = true;
        Ok(self.table.get(&v)?.0.utm.clone())
    }
    fn referrer(&mut self, v: Resource<VisitorRes>) -> R<Option<String>> {
        self.unkeyed = true;
        Ok(self.table.get(&v)?.0.referrer.clone())
    }
    fn consents(&mut self, v: Resource<VisitorRes>, purpose: String) -> R<bool> {
        Ok(self.table.get(&v)?.0.consent.purpose(&purpose))
    }
    fn attribute(&mut self, v: Resource<VisitorRes>, name: String) -> R<Option<String>> {
        self.unkeyed = true;
        Ok(self
            .table
            .get(&v)?
            .0
            .attributes
            .get(&name)
            .filter(|a| !a.is_null())
            .map(serde_json::Value::to_string))
    }
    fn drop(&mut self, _: Resource<VisitorRes>) -> R<()> {
        // Only lent (borrowed) to the guest, never owned by it; the host removes it.
        Ok(())
    }
}

impl t::HostRequest for StoreState {
    fn method(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.table.get(&r)?.0.method.clone())
    }
    fn path(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.table.get(&r)?.0.path.clone())
    }
    fn host(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.table.get(&r)?.0.host.clone())
    }
    fn header(&mut self, r: Resource<RequestRes>, name: String) -> R<Option<String>> {
        self.unkeyed = true;
        Ok(model::header(&self.table.get(&r)?.0.headers, &name).map(str::to_owned))
    }
    fn headers(&mut self, r: Resource<RequestRes>) -> R<Vec<(String, String)>> {
        self.unkeyed = true;
        Ok(self.table.get(&r)?.0.headers.clone())
    }
    fn drop(&mut self, _: Resource<RequestRes>) -> R<()> {
        // Only lent (borrowed) to the guest, never owned by it; the host removes it.
        Ok(())
    }
}

impl t::HostResponse for StoreState {
    fn status(&mut self, r: Resource<ResponseRes>) -> R<u16> {
        Ok(self.table.get(&r)?.0.status)
    }
    fn header(&mut self, r: Resource<ResponseRes>, name: String) -> R<Option<String>> {
        // The content type is part of a memoized answer's key; any other header is not.
        self.unkeyed |= !name.eq_ignore_ascii_case("content-type");
        Ok(model::header(&self.table.get(&r)?.0.headers, &name).map(str::to_owned))
    }
    fn headers(&mut self, r: Resource<ResponseRes>) -> R<Vec<(String, String)>> {
        self.unkeyed = true;
        Ok(self.table.get(&r)?.0.headers.clone())
    }
    fn drop(&mut self, _: Resource<ResponseRes>) -> R<()> {
        // Only lent (borrowed) to the guest, never owned by it; the host removes it.
        Ok(())
    }
}

impl t::HostRequestPlan for StoreState {
    fn set_header(&mut self, p: Resource<RequestPlanRes>, name: String, value: String) -> R<()> {
        self.charge(|u, b| u.header(b, name.len() + value.len()))?;
        self.table.get_mut(&p)?.edits.set.push((name, value));
        Ok(())
    }
    fn remove_header(&mut self, p: Resource<RequestPlanRes>, name: String) -> R<()> {
        self.charge(|u, b| u.header(b, name.len()))?;
        self.table.get_mut(&p)?.edits.remove.push(name);
        Ok(())
    }
    fn redirect(&mut self, p: Resource<RequestPlanRes>, status: u16, location: String) -> R<()> {
        self.table.get_mut(&p)?.reply = Some(model::RequestAction::Redirect((status, location)));
        Ok(())
    }
    fn respond(
        &mut self,
        p: Resource<RequestPlanRes>,
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> R<()> {
        for (n, v) in &headers {
            self.charge(|u, b| u.header(b, n.len() + v.len()))?;
        }
        self.table.get_mut(&p)?.reply =
            Some(model::RequestAction::Respond(model::SyntheticResponse {
                status,
                headers,
                body,
            }));
        Ok(())
    }
    fn drop(&mut self, _: Resource<RequestPlanRes>) -> R<()> {
        // Only lent (borrowed) to the guest, never owned by it; the host removes it.
        Ok(())
    }
}

impl StoreState {
    fn rule(&mut self, p: &Resource<ResponsePlanRes>, selector: String, op: HtmlOp) -> R<()> {
        let bytes = op_bytes(&op) + selector.len();
        self.charge(|u, b| u.rule(b, bytes))?;
        self.table
            .get_mut(p)?
            .0
            .html
            .push(HtmlRule { selector, op });
        Ok(())
    }

    /// Sets an option of the plan's most recent rule; with no rule yet, the plan is invalid.
    fn rule_option(
        &mut self,
        p: &Resource<ResponsePlanRes>,
        call: &str,
        set: impl FnOnce(&mut model::RuleOptions),
    ) -> R<()> {
        let plan = &mut self.table.get_mut(p)?.0;
        match plan.html.len().checked_sub(1) {
            Some(last) => set(plan.rule_options.entry(last).or_default()),
            None => {
                plan.misuse
                    .get_or_insert_with(|| format!("{call} with no HTML rule before it"));
            }
        }
        Ok(())
    }

    fn add_subscription(
        &mut self,
        p: &Resource<ResponsePlanRes>,
        selector: String,
        text: bool,
    ) -> R<u32> {
        self.charge(|u, b| u.rule(b, selector.len()))?;
        let plan = &mut self.table.get_mut(p)?.0;
        plan.subscribe.push(model::Subscription { selector, text });
        Ok(u32::try_from(plan.subscribe.len() - 1).unwrap_or(u32::MAX))
    }

    fn element_op(&mut self, e: &Resource<ElementRes>, op: HtmlOp) -> R<()> {
        let bytes = op_bytes(&op);
        self.charge(|u, b| u.rule(b, bytes))?;
        self.table.get_mut(e)?.ops.push(op);
        Ok(())
    }
}

impl t::HostResponsePlan for StoreState {
    fn set_header(&mut self, p: Resource<ResponsePlanRes>, name: String, value: String) -> R<()> {
        self.charge(|u, b| u.header(b, name.len() + value.len()))?;
        self.table.get_mut(&p)?.0.headers.set.push((name, value));
        Ok(())
    }
    fn remove_header(&mut self, p: Resource<ResponsePlanRes>, name: String) -> R<()> {
        self.charge(|u, b| u.header(b, name.len()))?;
        self.table.get_mut(&p)?.0.headers.remove.push(name);
        Ok(())
    }
    fn set_inner_html(&mut self, p: Resource<ResponsePlanRes>, s: String, html: String) -> R<()> {
        self.rule(&p, s, HtmlOp::SetInnerHtml(html))
    }
    fn set_inner_text(&mut self, p: Resource<ResponsePlanRes>, s: String, text: String) -> R<()> {
        self.rule(&p, s, HtmlOp::SetInnerText(text))
    }
    fn prepend_html(&mut self, p: Resource<ResponsePlanRes>, s: String, html: String) -> R<()> {
        self.rule(&p, s, HtmlOp::PrependHtml(html))
    }
    fn append_html(&mut self, p: Resource<ResponsePlanRes>, s: String, html: String) -> R<()> {
        self.rule(&p, s, HtmlOp::AppendHtml(html))
    }
    fn before_html(&mut self, p: Resource<ResponsePlanRes>, s: String, html: String) -> R<()> {
        self.rule(&p, s, HtmlOp::BeforeHtml(html))
    }
    fn after_html(&mut self, p: Resource<ResponsePlanRes>, s: String, html: String) -> R<()> {
        self.rule(&p, s, HtmlOp::AfterHtml(html))
    }
    fn replace_html(&mut self, p: Resource<ResponsePlanRes>, s: String, html: String) -> R<()> {
        self.rule(&p, s, HtmlOp::ReplaceHtml(html))
    }
    fn remove(&mut self, p: Resource<ResponsePlanRes>, s: String) -> R<()> {
        self.rule(&p, s, HtmlOp::Remove)
    }
    fn unwrap(&mut self, p: Resource<ResponsePlanRes>, s: String) -> R<()> {
        self.rule(&p, s, HtmlOp::Unwrap)
    }
    fn set_attribute(
        &mut self,
        p: Resource<ResponsePlanRes>,
        s: String,
        name: String,
        value: String,
    ) -> R<()> {
        self.rule(&p, s, HtmlOp::SetAttribute((name, value)))
    }
    fn remove_attribute(&mut self, p: Resource<ResponsePlanRes>, s: String, name: String) -> R<()> {
        self.rule(&p, s, HtmlOp::RemoveAttribute(name))
    }
    fn add_class(&mut self, p: Resource<ResponsePlanRes>, s: String, class: String) -> R<()> {
        self.rule(&p, s, HtmlOp::AddClass(class))
    }
    fn remove_class(&mut self, p: Resource<ResponsePlanRes>, s: String, class: String) -> R<()> {
        self.rule(&p, s, HtmlOp::RemoveClass(class))
    }
    fn json_set(&mut self, p: Resource<ResponsePlanRes>, pointer: String, json: String) -> R<()> {
        self.charge(|u, b| u.json(b, pointer.len() + json.len()))?;
        self.table
            .get_mut(&p)?
            .0
            .json
            .push(JsonOp::Set((pointer, json)));
        Ok(())
    }
    fn json_remove(&mut self, p: Resource<ResponsePlanRes>, pointer: String) -> R<()> {
        self.charge(|u, b| u.json(b, pointer.len()))?;
        self.table.get_mut(&p)?.0.json.push(JsonOp::Remove(pointer));
        Ok(())
    }
    fn json_append(
        &mut self,
        p: Resource<ResponsePlanRes>,
        pointer: String,
        json: String,
    ) -> R<()> {
        self.charge(|u, b| u.json(b, pointer.len() + json.len()))?;
        self.table
            .get_mut(&p)?
            .0
            .json
            .push(JsonOp::Append((pointer, json)));
        Ok(())
    }
    fn first_only(&mut self, p: Resource<ResponsePlanRes>) -> R<()> {
        self.rule_option(&p, "first-only", |o| o.first_only = true)
    }
    fn track_applied(
        &mut self,
        p: Resource<ResponsePlanRes>,
        name: String,
        properties: Vec<(String, String)>,
    ) -> R<()> {
        let bytes = name.len()
            + properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        self.charge(|u, b| u.rule_option(b, bytes))?;
        self.rule_option(&p, "track-applied", |o| {
            o.on_apply = Some((name, properties))
        })
    }
    fn fallback_append(&mut self, p: Resource<ResponsePlanRes>, selector: String) -> R<()> {
        self.charge(|u, b| u.rule_option(b, selector.len()))?;
        self.rule_option(&p, "fallback-append", |o| o.fallback = Some(selector))
    }
    fn subscribe(&mut self, p: Resource<ResponsePlanRes>, selector: String) -> R<u32> {
        self.add_subscription(&p, selector, false)
    }
    fn subscribe_text(&mut self, p: Resource<ResponsePlanRes>, selector: String) -> R<u32> {
        self.add_subscription(&p, selector, true)
    }
    fn drop(&mut self, _: Resource<ResponsePlanRes>) -> R<()> {
        // Only lent (borrowed) to the guest, never owned by it; the host removes it.
        Ok(())
    }
}

impl t::HostElement for StoreState {
    fn tag(&mut self, e: Resource<ElementRes>) -> R<String> {
        Ok(self.table.get(&e)?.read()?.tag())
    }
    fn attribute(&mut self, e: Resource<ElementRes>, name: String) -> R<Option<String>> {
        Ok(self.table.get(&e)?.read()?.attribute(&name))
    }
    fn attributes(&mut self, e: Resource<ElementRes>) -> R<Vec<(String, String)>> {
        Ok(self.table.get(&e)?.read()?.attributes())
    }
    fn set_inner_html(&mut self, e: Resource<ElementRes>, html: String) -> R<()> {
        self.element_op(&e, HtmlOp::SetInnerHtml(html))
    }
    fn set_inner_text(&mut self, e: Resource<ElementRes>, text: String) -> R<()> {
        self.element_op(&e, HtmlOp::SetInnerText(text))
    }
    fn prepend_html(&mut self, e: Resource<ElementRes>, html: String) -> R<()> {
        self.element_op(&e, HtmlOp::PrependHtml(html))
    }
    fn append_html(&mut self, e: Resource<ElementRes>, html: String) -> R<()> {
        self.element_op(&e, HtmlOp::AppendHtml(html))
    }
    fn before_html(&mut self, e: Resource<ElementRes>, html: String) -> R<()> {
        self.element_op(&e, HtmlOp::BeforeHtml(html))
    }
    fn after_html(&mut self, e: Resource<ElementRes>, html: String) -> R<()> {
        self.element_op(&e, HtmlOp::AfterHtml(html))
    }
    fn replace_html(&mut self, e: Resource<ElementRes>, html: String) -> R<()> {
        self.element_op(&e, HtmlOp::ReplaceHtml(html))
    }
    fn remove(&mut self, e: Resource<ElementRes>) -> R<()> {
        self.element_op(&e, HtmlOp::Remove)
    }
    fn unwrap(&mut self, e: Resource<ElementRes>) -> R<()> {
        self.element_op(&e, HtmlOp::Unwrap)
    }
    fn set_attribute(&mut self, e: Resource<ElementRes>, name: String, value: String) -> R<()> {
        self.element_op(&e, HtmlOp::SetAttribute((name, value)))
    }
    fn remove_attribute(&mut self, e: Resource<ElementRes>, name: String) -> R<()> {
        self.element_op(&e, HtmlOp::RemoveAttribute(name))
    }
    fn add_class(&mut self, e: Resource<ElementRes>, class: String) -> R<()> {
        self.element_op(&e, HtmlOp::AddClass(class))
    }
    fn remove_class(&mut self, e: Resource<ElementRes>, class: String) -> R<()> {
        self.element_op(&e, HtmlOp::RemoveClass(class))
    }
    fn drop(&mut self, _: Resource<ElementRes>) -> R<()> {
        // Only lent (borrowed) to the guest, never owned by it; the host removes it.
        Ok(())
    }
}

impl t::HostTextNode for StoreState {
    fn text(&mut self, n: Resource<TextRes>) -> R<String> {
        Ok(self.table.get(&n)?.text.clone())
    }
    fn replace(&mut self, n: Resource<TextRes>, html: String) -> R<()> {
        let bytes = html.len();
        self.charge(|u, b| u.rule(b, bytes))?;
        self.table.get_mut(&n)?.replacement = Some(html);
        Ok(())
    }
    fn drop(&mut self, _: Resource<TextRes>) -> R<()> {
        // Only lent to the guest; the host removes it.
        Ok(())
    }
}

impl wit::content::Host for StoreState {
    fn fragment(&mut self, key: String) -> R<Option<String>> {
        Ok(self.services.fragment(&key))
    }
}

impl wit::analytics::Host for StoreState {
    fn track(&mut self, name: String, properties: Vec<(String, String)>) -> R<()> {
        self.record_event(&name, properties);
        Ok(())
    }
}

impl wit::campaigns::Host for StoreState {
    fn active(&mut self) -> R<Vec<Resource<CampaignRes>>> {
        let live: Vec<Arc<model::Campaign>> = self.services.active_campaigns().to_vec();
        live.into_iter()
            .map(|c| self.push_owned(CampaignRes(c)))
            .collect()
    }

    fn assign(&mut self, experiment: String) -> R<Option<Resource<AssignmentRes>>> {
        match self.services.assign(&experiment) {
            Some(a) => Ok(Some(self.push_owned(AssignmentRes(a))?)),
            None => Ok(None),
        }
    }

    fn impression(&mut self, id: String) -> R<()> {
        self.services.impression(&self.plugin, &id);
        Ok(())
    }
}

impl wit::campaigns::HostCampaign for StoreState {
    fn id(&mut self, c: Resource<CampaignRes>) -> R<String> {
        Ok(self.table.get(&c)?.0.id.clone())
    }
    fn name(&mut self, c: Resource<CampaignRes>) -> R<String> {
        Ok(self.table.get(&c)?.0.name.clone())
    }
    fn priority(&mut self, c: Resource<CampaignRes>) -> R<i32> {
        Ok(self.table.get(&c)?.0.priority)
    }
    fn starts_at(&mut self, c: Resource<CampaignRes>) -> R<i64> {
        Ok(self.table.get(&c)?.0.starts_at)
    }
    fn ends_at(&mut self, c: Resource<CampaignRes>) -> R<i64> {
        Ok(self.table.get(&c)?.0.ends_at)
    }
    fn param(&mut self, c: Resource<CampaignRes>, name: String) -> R<Option<String>> {
        Ok(self
            .table
            .get(&c)?
            .0
            .params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone()))
    }
    fn params(&mut self, c: Resource<CampaignRes>) -> R<Vec<(String, String)>> {
        Ok(self.table.get(&c)?.0.params.clone())
    }
    fn drop(&mut self, c: Resource<CampaignRes>) -> R<()> {
        self.drop_owned(c)
    }
}

impl wit::campaigns::HostAssignment for StoreState {
    fn experiment(&mut self, a: Resource<AssignmentRes>) -> R<String> {
        Ok(self.table.get(&a)?.0.experiment.clone())
    }
    fn variation(&mut self, a: Resource<AssignmentRes>) -> R<u32> {
        Ok(self.table.get(&a)?.0.variation)
    }
    fn key(&mut self, a: Resource<AssignmentRes>) -> R<String> {
        Ok(self.table.get(&a)?.0.key.clone())
    }
    fn value(&mut self, a: Resource<AssignmentRes>) -> R<String> {
        Ok(self.table.get(&a)?.0.value.clone())
    }
    fn in_experiment(&mut self, a: Resource<AssignmentRes>) -> R<bool> {
        Ok(self.table.get(&a)?.0.in_experiment)
    }
    fn drop(&mut self, a: Resource<AssignmentRes>) -> R<()> {
        self.drop_owned(a)
    }
}

impl wit::host::Host for StoreState {
    fn config(&mut self, key: String) -> R<Option<String>> {
        Ok(self.param(&key))
    }

    fn now_ms(&mut self) -> R<i64> {
        Ok(self.services.now_ms())
    }

    fn log(&mut self, level: t::Level, message: String) -> R<()> {
        let level = match level {
            t::Level::Debug => model::Level::Debug,
            t::Level::Info => model::Level::Info,
            t::Level::Warn => model::Level::Warn,
            t::Level::Error => model::Level::Error,
        };
        self.write_log(level, &message);
        Ok(())
    }
}

impl StoreState {
    /// An attribute of the visitor's profile as the rules saw it, by JSON pointer.
    fn profile_value(&self, pointer: &str) -> Option<&serde_json::Value> {
        self.services
            .attributes()?
            .pointer(pointer)
            .filter(|v| !v.is_null())
    }

    fn profile_strings(&self, pointer: &str) -> Vec<String> {
        self.profile_value(pointer)
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl wit::profile::Host for StoreState {
    fn customer_id(&mut self) -> R<Option<String>> {
        Ok(self
            .profile_value("/customer/id")
            .and_then(|v| v.as_str().map(str::to_owned)))
    }
    fn customer_attribute(&mut self, name: String) -> R<Option<String>> {
        // `id` is the customer's id, not an imported attribute.
        if name == "id" || name.contains('/') || name.contains('~') {
            return Ok(None);
        }
        Ok(self
            .profile_value(&format!("/customer/{name}"))
            .map(serde_json::Value::to_string))
    }
    fn top_categories(&mut self, limit: u32) -> R<Vec<(String, f64)>> {
        let mut scores: Vec<(String, f64)> = self
            .profile_value("/affinity")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scores.truncate(limit as usize);
        Ok(scores)
    }
    fn affinity(&mut self, category: String) -> R<f64> {
        Ok(self
            .profile_value("/affinity")
            .and_then(|m| m.get(&category))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0))
    }
    fn journey_stage(&mut self) -> R<Option<String>> {
        Ok(self
            .profile_value("/journey")
            .and_then(|v| v.as_str().map(str::to_owned)))
    }
    fn cart_items(&mut self) -> R<u32> {
        Ok(self
            .profile_value("/cart/items")
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
    }
    fn cart_value(&mut self) -> R<f64> {
        Ok(self
            .profile_value("/cart/value")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0))
    }
    fn cart_skus(&mut self) -> R<Vec<String>> {
        Ok(self.profile_strings("/cart/skus"))
    }
    fn cart_abandoned(&mut self) -> R<bool> {
        Ok(self
            .profile_value("/cart/abandoned")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false))
    }
    fn purchase_count(&mut self) -> R<u32> {
        Ok(self
            .profile_value("/purchases/count")
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
    }
    fn last_purchase_ms(&mut self) -> R<Option<i64>> {
        Ok(self
            .profile_value("/purchases/lastAt")
            .and_then(serde_json::Value::as_i64)
            .map(|s| s.saturating_mul(1000)))
    }
    fn purchased_categories(&mut self) -> R<Vec<String>> {
        Ok(self.profile_strings("/purchases/categories"))
    }
}
