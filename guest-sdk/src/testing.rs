//! A fake host for native tests: `cargo test` in a plugin crate calls the hooks without wasm.
//!
//! In a native build the SDK's [`Request`], [`Response`], [`Visitor`], [`Element`],
//! [`Campaign`] and [`Assignment`] are the plain types in this module (in the component they
//! are the host's), so a plugin's code compiles unchanged for both. Build them with the
//! `with_*` methods, describe the host with [`FakeHost`], call a hook through it and inspect
//! what came back: the plan, the events tracked, the impressions and the log.
//!
//! ```
//! use veneer_sdk::prelude::*;
//! use veneer_sdk::testing::FakeHost;
//!
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn on_response(_req: &Request, _resp: &Response, visitor: &Visitor) -> ResponsePlan {
//!         let mut plan = Plan::new();
//!         if visitor.in_segment("returning") {
//!             let name = config("name").unwrap_or_else(|| "friend".into());
//!             plan.select("h1").set_inner_text(&format!("Welcome back, {name}"));
//!             analytics::track("greeting_shown", &[("segment", "returning")]);
//!         }
//!         plan.build()
//!     }
//! }
//!
//! let mut host = FakeHost::new().with_config("name", "Ada");
//! let visitor = Visitor::new("v-1").with_segment("returning");
//! let plan = host.on_response::<Greeter>(&Request::get("/"), &Response::html(), &visitor);
//! assert_eq!(plan.ops_on("h1"), [&HtmlOp::SetInnerText("Welcome back, Ada".into())]);
//! assert_eq!(host.events()[0].name, "greeting_shown");
//!
//! // A first-time visitor gets the page as it is.
//! let plan = host.on_response::<Greeter>(&Request::get("/"), &Response::html(), &Visitor::new("v-2"));
//! assert!(plan.html.is_empty());
//! ```
//!
//! Outside a [`FakeHost`] call the host functions answer as an empty host would: no config,
//! no fragments, no campaigns, no assignments, the system clock, and events go nowhere.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{DeviceClass, HtmlOp, Level, Plugin, RequestAction, ResponsePlan};

fn find(list: &[(String, String)], name: &str) -> Option<String> {
    list.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// The request a hook sees (native stand-in for the host's resource).
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    host: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// A request with this method and path (query included) for host `example.com`.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            host: "example.com".to_owned(),
            headers: Vec::new(),
        }
    }

    /// A `GET` of `path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// The same request with a header added (names compare case-insensitively).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The same request for another host.
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// The method.
    pub fn method(&self) -> String {
        self.method.clone()
    }

    /// The path, with its query.
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// The host the visitor asked for.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        find(&self.headers, name)
    }

    /// Every header (lower-case names).
    pub fn headers(&self) -> Vec<(String, String)> {
        self.headers.clone()
    }
}

/// The origin's response head a hook sees (native stand-in for the host's resource).
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Response {
    /// A response with this status and no headers.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
        }
    }

    /// `200` with `content-type: text/html; charset=utf-8`.
    pub fn html() -> Self {
        Self::new(200).with_header("content-type", "text/html; charset=utf-8")
    }

    /// `200` with `content-type: application/json`.
    pub fn json() -> Self {
        Self::new(200).with_header("content-type", "application/json")
    }

    /// The same response with a header added.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        find(&self.headers, name)
    }

    /// Every header (lower-case names).
    pub fn headers(&self) -> Vec<(String, String)> {
        self.headers.clone()
    }
}

/// The visitor a hook sees (native stand-in for the host's resource). A new visitor is a
/// first visit on a desktop, in no segment, with every consent given.
#[derive(Debug, Clone)]
pub struct Visitor {
    id: String,
    segments: Vec<String>,
    device: DeviceClass,
    country: Option<String>,
    locale: Option<String>,
    visit_count: u32,
    first_seen: u64,
    utm: Vec<(String, String)>,
    referrer: Option<String>,
    consents: Option<Vec<String>>,
    attributes: Vec<(String, String)>,
}

impl Visitor {
    /// A first-time visitor with this id.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            segments: Vec::new(),
            device: DeviceClass::Desktop,
            country: None,
            locale: None,
            visit_count: 1,
            first_seen: 0,
            utm: Vec::new(),
            referrer: None,
            consents: None,
            attributes: Vec::new(),
        }
    }

    /// In segment `name` too.
    pub fn with_segment(mut self, name: &str) -> Self {
        self.segments.push(name.to_owned());
        self
    }

    /// On this device.
    pub fn with_device(mut self, device: DeviceClass) -> Self {
        self.device = device;
        self
    }

    /// From this country (ISO 3166 alpha-2).
    pub fn with_country(mut self, country: &str) -> Self {
        self.country = Some(country.to_owned());
        self
    }

    /// Preferring this locale.
    pub fn with_locale(mut self, locale: &str) -> Self {
        self.locale = Some(locale.to_owned());
        self
    }

    /// On visit number `count`, first seen at `first_seen` (seconds since the Unix epoch).
    pub fn with_visits(mut self, count: u32, first_seen: u64) -> Self {
        self.visit_count = count;
        self.first_seen = first_seen;
        self
    }

    /// Arrived with UTM parameter `name` (`source`, `campaign`, ...).
    pub fn with_utm(mut self, name: &str, value: &str) -> Self {
        self.utm.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Arrived from this referrer.
    pub fn with_referrer(mut self, referrer: &str) -> Self {
        self.referrer = Some(referrer.to_owned());
        self
    }

    /// Consenting to these purposes only (`analytics`, `marketing`, ...).
    pub fn with_consent(mut self, purposes: &[&str]) -> Self {
        self.consents = Some(purposes.iter().map(|p| (*p).to_owned()).collect());
        self
    }

    /// With a targeting attribute.
    pub fn with_attribute(mut self, name: &str, value: &str) -> Self {
        self.attributes.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The visitor's stable id.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// The segments the visitor is in.
    pub fn segments(&self) -> Vec<String> {
        self.segments.clone()
    }

    /// Whether the visitor is in segment `name`.
    pub fn in_segment(&self, name: &str) -> bool {
        self.segments.iter().any(|s| s == name)
    }

    /// The device class.
    pub fn device(&self) -> DeviceClass {
        self.device
    }

    /// The country, if known.
    pub fn country(&self) -> Option<String> {
        self.country.clone()
    }

    /// The preferred locale, if any.
    pub fn locale(&self) -> Option<String> {
        self.locale.clone()
    }

    /// Visits so far, this one included.
    pub fn visit_count(&self) -> u32 {
        self.visit_count
    }

    /// When the visitor was first seen (seconds since the Unix epoch).
    pub fn first_seen(&self) -> u64 {
        self.first_seen
    }

    /// UTM parameter `name` of the visit.
    pub fn utm(&self, name: &str) -> Option<String> {
        self.utm
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Every UTM parameter of the visit.
    pub fn utm_params(&self) -> Vec<(String, String)> {
        self.utm.clone()
    }

    /// The referrer, if any.
    pub fn referrer(&self) -> Option<String> {
        self.referrer.clone()
    }

    /// Whether the visitor consented to `purpose`.
    pub fn consents(&self, purpose: &str) -> bool {
        self.consents
            .as_ref()
            .is_none_or(|c| c.iter().any(|p| p == purpose))
    }

    /// Targeting attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// An element an `on_element` callback sees (native stand-in for the host's resource); it
/// records what the callback does to it ([`Element::changes`]).
#[derive(Debug)]
pub struct Element {
    tag: String,
    attributes: RefCell<Vec<(String, String)>>,
    changes: RefCell<Vec<HtmlOp>>,
}

impl Element {
    /// An element with this tag name and no attributes.
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_ascii_lowercase(),
            attributes: RefCell::new(Vec::new()),
            changes: RefCell::new(Vec::new()),
        }
    }

    /// The same element with an attribute.
    pub fn with_attribute(self, name: &str, value: &str) -> Self {
        self.attributes
            .borrow_mut()
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// What callbacks did to the element, in order.
    pub fn changes(&self) -> Vec<HtmlOp> {
        self.changes.borrow().clone()
    }

    fn record(&self, op: HtmlOp) {
        self.changes.borrow_mut().push(op);
    }

    fn put_attribute(&self, name: &str, value: Option<String>) {
        let mut attrs = self.attributes.borrow_mut();
        attrs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            attrs.push((name.to_ascii_lowercase(), v));
        }
    }

    /// The tag name (lower case).
    pub fn tag(&self) -> String {
        self.tag.clone()
    }

    /// Attribute `name`, as it is after earlier changes.
    pub fn attribute(&self, name: &str) -> Option<String> {
        find(&self.attributes.borrow(), name)
    }

    /// Every attribute.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.attributes.borrow().clone()
    }

    /// Replaces the content with HTML.
    pub fn set_inner_html(&self, html: &str) {
        self.record(HtmlOp::SetInnerHtml(html.to_owned()));
    }

    /// Replaces the content with text (escaped).
    pub fn set_inner_text(&self, text: &str) {
        self.record(HtmlOp::SetInnerText(text.to_owned()));
    }

    /// Inserts HTML at the start of the content.
    pub fn prepend_html(&self, html: &str) {
        self.record(HtmlOp::PrependHtml(html.to_owned()));
    }

    /// Inserts HTML at the end of the content.
    pub fn append_html(&self, html: &str) {
        self.record(HtmlOp::AppendHtml(html.to_owned()));
    }

    /// Inserts HTML before the element.
    pub fn before_html(&self, html: &str) {
        self.record(HtmlOp::BeforeHtml(html.to_owned()));
    }

    /// Inserts HTML after the element.
    pub fn after_html(&self, html: &str) {
        self.record(HtmlOp::AfterHtml(html.to_owned()));
    }

    /// Replaces the whole element.
    pub fn replace_html(&self, html: &str) {
        self.record(HtmlOp::ReplaceHtml(html.to_owned()));
    }

    /// Removes the element.
    pub fn remove(&self) {
        self.record(HtmlOp::Remove);
    }

    /// Removes the element's tags, keeping its content.
    pub fn unwrap(&self) {
        self.record(HtmlOp::Unwrap);
    }

    /// Sets an attribute.
    pub fn set_attribute(&self, name: &str, value: &str) {
        self.put_attribute(name, Some(value.to_owned()));
        self.record(HtmlOp::SetAttribute(name.to_owned(), value.to_owned()));
    }

    /// Removes an attribute.
    pub fn remove_attribute(&self, name: &str) {
        self.put_attribute(name, None);
        self.record(HtmlOp::RemoveAttribute(name.to_owned()));
    }

    /// Adds a class.
    pub fn add_class(&self, class: &str) {
        let mut classes = self.attribute("class").unwrap_or_default();
        if !classes.split_whitespace().any(|c| c == class) {
            if !classes.is_empty() {
                classes.push(' ');
            }
            classes.push_str(class);
        }
        self.put_attribute("class", Some(classes));
        self.record(HtmlOp::AddClass(class.to_owned()));
    }

    /// Removes a class.
    pub fn remove_class(&self, class: &str) {
        if let Some(classes) = self.attribute("class") {
            let kept: Vec<&str> = classes.split_whitespace().filter(|c| *c != class).collect();
            self.put_attribute("class", Some(kept.join(" ")));
        }
        self.record(HtmlOp::RemoveClass(class.to_owned()));
    }
}

/// A live campaign (native stand-in for the host's resource).
#[derive(Debug, Clone)]
pub struct Campaign {
    id: String,
    name: String,
    priority: i32,
    starts_at: i64,
    ends_at: i64,
    params: Vec<(String, String)>,
}

impl Campaign {
    /// A campaign with this id (and name), priority 0, live from the epoch to the end of time.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: id.to_owned(),
            priority: 0,
            starts_at: 0,
            ends_at: i64::MAX,
            params: Vec::new(),
        }
    }

    /// With a display name.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// With a priority (higher first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Live from `starts_at` (inclusive) to `ends_at` (exclusive), in seconds since the Unix
    /// epoch, as the contract gives them.
    pub fn with_window(mut self, starts_at: i64, ends_at: i64) -> Self {
        self.starts_at = starts_at;
        self.ends_at = ends_at;
        self
    }

    /// With a parameter.
    pub fn with_param(mut self, name: &str, value: &str) -> Self {
        self.params.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The campaign's id.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// Its display name.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Its priority (higher first).
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// When it starts (seconds since the Unix epoch).
    pub fn starts_at(&self) -> i64 {
        self.starts_at
    }

    /// When it ends (seconds since the Unix epoch).
    pub fn ends_at(&self) -> i64 {
        self.ends_at
    }

    /// Parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Every parameter.
    pub fn params(&self) -> Vec<(String, String)> {
        self.params.clone()
    }
}

/// An experiment assignment (native stand-in for the host's resource).
#[derive(Debug, Clone)]
pub struct Assignment {
    experiment: String,
    variation: u32,
    key: String,
    value: String,
    in_experiment: bool,
}

impl Assignment {
    /// The visitor is in `experiment`, on variation `variation` (whose value is its index as
    /// JSON until [`Assignment::with_value`] says otherwise).
    pub fn new(experiment: &str, variation: u32) -> Self {
        Self {
            experiment: experiment.to_owned(),
            variation,
            key: variation.to_string(),
            value: variation.to_string(),
            in_experiment: true,
        }
    }

    /// The variation's value (a JSON text).
    pub fn with_value(mut self, json: &str) -> Self {
        self.value = json.to_owned();
        self
    }

    /// The variation's key.
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = key.to_owned();
        self
    }

    /// The visitor falls outside the experiment's coverage and sees the control.
    pub fn not_in_experiment(mut self) -> Self {
        self.in_experiment = false;
        self
    }

    /// The experiment's key.
    pub fn experiment(&self) -> String {
        self.experiment.clone()
    }

    /// The variation's index.
    pub fn variation(&self) -> u32 {
        self.variation
    }

    /// The variation's key.
    pub fn key(&self) -> String {
        self.key.clone()
    }

    /// The variation's value (a JSON text).
    pub fn value(&self) -> String {
        self.value.clone()
    }

    /// Whether the visitor is in the experiment (not just shown the control).
    pub fn in_experiment(&self) -> bool {
        self.in_experiment
    }
}

/// An analytics event a plugin tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedEvent {
    /// The event's name.
    pub name: String,
    /// Its properties, in the order given.
    pub properties: Vec<(String, String)>,
}

impl TrackedEvent {
    /// Property `name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake host holds and records.
#[derive(Debug, Default, Clone)]
struct State {
    profile: Profile,
    config: BTreeMap<String, String>,
    fragments: BTreeMap<String, String>,
    campaigns: Vec<Campaign>,
    assignments: BTreeMap<String, Assignment>,
    now_ms: Option<i64>,
    events: Vec<TrackedEvent>,
    impressions: Vec<String>,
    logs: Vec<(Level, String)>,
}

thread_local! {
    static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// A host for native tests: the plugin's configuration, content, campaigns, assignments and
/// clock, and what the plugin recorded through it.
#[derive(Debug, Default)]
pub struct FakeHost {
    state: State,
}

impl FakeHost {
    /// A host with nothing configured, on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plugin parameter `key` (what `config(key)` returns).
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.state.config.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The visitor's profile (what [`profile`](crate::profile) answers).
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.state.profile = profile;
        self
    }

    /// Content fragment `key`.
    pub fn with_fragment(mut self, key: &str, html: &str) -> Self {
        self.state.fragments.insert(key.to_owned(), html.to_owned());
        self
    }

    /// A live campaign (`campaigns::active()` lists them by priority, highest first, then by
    /// the earlier start, as the host does).
    pub fn with_campaign(mut self, campaign: Campaign) -> Self {
        self.state.campaigns.push(campaign);
        self
    }

    /// The visitor's assignment in an experiment (`campaigns::assign(experiment)`).
    pub fn with_assignment(mut self, assignment: Assignment) -> Self {
        self.state
            .assignments
            .insert(assignment.experiment.clone(), assignment);
        self
    }

    /// The request's instant (what `now_ms()` returns).
    pub fn at_ms(mut self, now_ms: i64) -> Self {
        self.state.now_ms = Some(now_ms);
        self
    }

    fn call<R>(&mut self, hook: impl FnOnce() -> R) -> R {
        let state = std::mem::take(&mut self.state);
        CURRENT.with(|c| *c.borrow_mut() = Some(state));
        // Put the state back even if the hook panics, so a `should_panic` test's host is intact.
        struct Restore<'a>(&'a mut State);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(s) = CURRENT.with(|c| c.borrow_mut().take()) {
                    *self.0 = s;
                }
            }
        }
        let _restore = Restore(&mut self.state);
        hook()
    }

    /// Calls the plugin's `on_request`.
    pub fn on_request<P: Plugin>(&mut self, request: &Request, visitor: &Visitor) -> RequestAction {
        self.call(|| P::on_request(request, visitor))
    }

    /// Calls the plugin's `on_response`.
    pub fn on_response<P: Plugin>(
        &mut self,
        request: &Request,
        response: &Response,
        visitor: &Visitor,
    ) -> ResponsePlan {
        let plan = self.call(|| P::on_response(request, response, visitor));
        // What the host would refuse fails the test here, naming the part.
        let problems = plan.problems();
        assert!(
            problems.is_empty(),
            "the host would refuse this plan: {}",
            problems.join("; ")
        );
        plan
    }

    /// Calls the plugin's `on_element` for subscription `subscription`; see
    /// [`Element::changes`] for what it did.
    pub fn on_element<P: Plugin>(&mut self, subscription: u32, element: &Element) {
        self.call(|| P::on_element(subscription, element));
    }

    /// Calls the plugin's `on_text` for a whole text node.
    pub fn on_text<P: Plugin>(&mut self, subscription: u32, text: &str) -> Option<String> {
        self.call(|| P::on_text(subscription, text))
    }

    /// The events tracked so far.
    pub fn events(&self) -> &[TrackedEvent] {
        &self.state.events
    }

    /// The campaign impressions recorded so far (campaign ids, in order).
    pub fn impressions(&self) -> &[String] {
        &self.state.impressions
    }

    /// The log lines written so far.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.state.logs
    }

    /// Forgets what was recorded (events, impressions, logs), keeping the setup.
    pub fn clear(&mut self) {
        self.state.events.clear();
        self.state.impressions.clear();
        self.state.logs.clear();
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> R, outside: impl FnOnce() -> R) -> R {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(state) => f(state),
        None => outside(),
    })
}

pub(crate) fn config(key: &str) -> Option<String> {
    with(|s| s.config.get(key).cloned(), || None)
}

/// A visitor's profile for [`FakeHost::with_profile`]: what the host would know about them.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// The customer id.
    pub customer_id: Option<String>,
    /// Imported attributes, as JSON text (`("tier", "\"gold\"")`).
    pub customer_attributes: Vec<(String, String)>,
    /// Category scores.
    pub affinity: Vec<(String, f64)>,
    /// The journey stage.
    pub journey_stage: Option<String>,
    /// The cart.
    pub cart: crate::profile::Cart,
    /// Purchases.
    pub purchases: crate::profile::Purchases,
}

/// The `profile` interface in native tests.
pub(crate) mod profile_host {
    use super::with;

    pub(crate) fn customer_id() -> Option<String> {
        with(|s| s.profile.customer_id.clone(), || None)
    }
    pub(crate) fn customer_attribute(name: &str) -> Option<String> {
        with(
            |s| {
                s.profile
                    .customer_attributes
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            },
            || None,
        )
    }
    pub(crate) fn top_categories(limit: u32) -> Vec<(String, f64)> {
        with(
            |s| {
                let mut a = s.profile.affinity.clone();
                a.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
                a.truncate(limit as usize);
                a
            },
            Vec::new,
        )
    }
    pub(crate) fn affinity(category: &str) -> f64 {
        with(
            |s| {
                s.profile
                    .affinity
                    .iter()
                    .find(|(k, _)| k == category)
                    .map_or(0.0, |(_, v)| *v)
            },
            || 0.0,
        )
    }
    pub(crate) fn journey_stage() -> Option<String> {
        with(|s| s.profile.journey_stage.clone(), || None)
    }
    pub(crate) fn cart_items() -> u32 {
        with(|s| s.profile.cart.items, || 0)
    }
    pub(crate) fn cart_value() -> f64 {
        with(|s| s.profile.cart.value, || 0.0)
    }
    pub(crate) fn cart_skus() -> Vec<String> {
        with(|s| s.profile.cart.skus.clone(), Vec::new)
    }
    pub(crate) fn cart_abandoned() -> bool {
        with(|s| s.profile.cart.abandoned, || false)
    }
    pub(crate) fn purchase_count() -> u32 {
        with(|s| s.profile.purchases.count, || 0)
    }
    pub(crate) fn last_purchase_ms() -> Option<i64> {
        with(|s| s.profile.purchases.last_ms, || None)
    }
    pub(crate) fn purchased_categories() -> Vec<String> {
        with(|s| s.profile.purchases.categories.clone(), Vec::new)
    }
}

pub(crate) fn fragment(key: &str) -> Option<String> {
    with(|s| s.fragments.get(key).cloned(), || None)
}

pub(crate) fn now_ms() -> i64 {
    with(|s| s.now_ms.unwrap_or_else(now_ms_system), now_ms_system)
}

pub(crate) fn log(level: Level, message: &str) {
    with(|s| s.logs.push((level, message.to_owned())), || ());
}

pub(crate) fn track(name: &str, properties: &[(&str, &str)]) {
    let event = TrackedEvent {
        name: name.to_owned(),
        properties: properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    with(|s| s.events.push(event), || ());
}

pub(crate) fn active() -> Vec<Campaign> {
    with(
        |s| {
            let now = s.now_ms.unwrap_or_else(now_ms_system).div_euclid(1000);
            let mut live: Vec<Campaign> = s
                .campaigns
                .iter()
                .filter(|c| c.starts_at <= now && now < c.ends_at)
                .cloned()
                .collect();
            // As the host orders them: priority, then the earlier start.
            live.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(a.starts_at.cmp(&b.starts_at))
            });
            live
        },
        Vec::new,
    )
}

fn now_ms_system() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn assign(experiment: &str) -> Option<Assignment> {
    with(|s| s.assignments.get(experiment).cloned(), || None)
}

pub(crate) fn impression(id: &str) {
    with(|s| s.impressions.push(id.to_owned()), || ());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    struct Probe;

    impl Plugin for Probe {
        fn on_request(request: &Request, _visitor: &Visitor) -> RequestAction {
            if request.cookie("cart").is_some() {
                return RequestAction::Redirect((302, "/cart".into()));
            }
            RequestAction::proceed()
        }

        fn on_response(_req: &Request, _resp: &Response, visitor: &Visitor) -> ResponsePlan {
            let mut plan = Plan::new();
            for c in campaigns::active() {
                plan.select("#banner")
                    .set_inner_html(&c.param("banner").unwrap_or_default());
                campaigns::impression(&c.id());
            }
            if let Some(a) = campaigns::assign("headline") {
                plan.json_set("/headline", &a.value());
            }
            if let Some(f) = content::fragment("footer") {
                plan.select("footer").append_html(&f);
            }
            crate::log(Level::Info, &format!("visitor {}", visitor.id()));
            plan.build()
        }

        fn on_element(_subscription: u32, element: &Element) {
            if element
                .attribute("href")
                .is_some_and(|h| h.starts_with('/'))
            {
                element.add_class("tracked");
            }
        }
    }

    #[test]
    fn the_fake_host_answers_host_calls_and_records_what_the_plugin_did() {
        let xmas = Campaign::new("xmas")
            .with_window(1_000, 2_000)
            .with_param("banner", "<b>Merry</b>");
        let mut host = FakeHost::new()
            .with_campaign(xmas)
            .with_assignment(Assignment::new("headline", 1).with_value("\"B\""))
            .with_fragment("footer", "<p>f</p>")
            .at_ms(1_500_000);
        let plan =
            host.on_response::<Probe>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
        assert_eq!(
            plan.ops_on("#banner"),
            [&HtmlOp::SetInnerHtml("<b>Merry</b>".into())]
        );
        assert_eq!(
            plan.ops_on("footer"),
            [&HtmlOp::AppendHtml("<p>f</p>".into())]
        );
        assert_eq!(
            plan.json,
            [crate::JsonOp::Set("/headline".into(), "\"B\"".into())]
        );
        assert_eq!(host.impressions(), ["xmas"]);
        assert_eq!(host.logs(), [(Level::Info, "visitor v".to_owned())]);

        // After the campaign's end it is not active.
        let mut later = FakeHost::new()
            .with_campaign(Campaign::new("xmas").with_window(1_000, 2_000))
            .at_ms(2_000_000);
        let plan =
            later.on_response::<Probe>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
        assert!(plan.html.is_empty());
        assert!(later.impressions().is_empty());
    }

    #[test]
    fn requests_and_elements_behave_like_the_hosts() {
        let mut host = FakeHost::new();
        let action = host.on_request::<Probe>(
            &Request::get("/").with_header("Cookie", "a=1; cart=2"),
            &Visitor::new("v"),
        );
        assert!(matches!(action, RequestAction::Redirect((302, ref l)) if l == "/cart"));

        let link = Element::new("A")
            .with_attribute("href", "/p/1")
            .with_attribute("class", "x");
        host.on_element::<Probe>(0, &link);
        assert_eq!(link.changes(), [HtmlOp::AddClass("tracked".into())]);
        assert_eq!(link.attribute("class").as_deref(), Some("x tracked"));
        assert_eq!(link.tag(), "a");
        let other = Element::new("a").with_attribute("href", "https://elsewhere");
        host.on_element::<Probe>(0, &other);
        assert!(other.changes().is_empty());
    }

    struct Placed;

    impl Plugin for Placed {
        fn on_response(_req: &Request, _resp: &Response, _visitor: &Visitor) -> ResponsePlan {
            let mut plan = Plan::new();
            plan.select(&crate::config("slot").unwrap_or_else(|| "#promo".into()))
                .before_html("<b>Sale</b>")
                .first_only()
                .track_applied("promo_shown", &[("campaign", "sale")])
                .or_append_to("main");
            plan.select("h1").add_class("x");
            plan.build()
        }
    }

    #[test]
    fn rule_options_attach_to_the_operation_before_them() {
        let mut host = FakeHost::new();
        let plan =
            host.on_response::<Placed>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
        let options = &plan.rule_options[&0];
        assert!(options.first_only);
        assert_eq!(options.fallback_append.as_deref(), Some("main"));
        assert_eq!(
            options.track_applied,
            Some((
                "promo_shown".into(),
                vec![("campaign".into(), "sale".into())]
            ))
        );
        assert!(
            !plan.rule_options.contains_key(&1),
            "the next rule is plain"
        );
    }

    #[test]
    #[should_panic(
        expected = "the host would refuse this plan: rule 0: selector \"#promo[data-x\": unclosed '['"
    )]
    fn a_plan_the_host_would_refuse_fails_the_native_test() {
        let mut host = FakeHost::new().with_config("slot", "#promo[data-x");
        host.on_response::<Placed>(&Request::get("/"), &Response::html(), &Visitor::new("v"));
    }

    #[test]
    #[should_panic(expected = "call it after an operation")]
    fn an_option_with_no_operation_before_it_is_a_mistake_named_at_once() {
        Plan::new().select("#promo").first_only();
    }

    #[test]
    fn host_functions_outside_a_fake_host_answer_as_an_empty_host() {
        assert_eq!(crate::config("x"), None);
        assert!(crate::campaigns::active().is_empty());
        crate::analytics::track("nowhere", &[]);
        assert!(crate::now_ms() > 1_700_000_000_000);
    }
}
