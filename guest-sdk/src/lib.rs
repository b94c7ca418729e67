//! Write Veneer personalization plugins in Rust, against contract `veneer:plugin@0.2.2`.
//!
//! A plugin is a type implementing [`Plugin`], whose hooks all default to "do nothing", and
//! one [`export_plugin!`] line. Build it with `cargo build --target wasm32-wasip2 --release`
//! (the crate must be `crate-type = ["cdylib"]`; the component is
//! `target/wasm32-wasip2/release/<crate_name>.wasm`).
//!
//! ```no_run
//! use veneer_sdk::prelude::*;
//!
//! struct Hero;
//!
//! impl Plugin for Hero {
//!     fn on_response(_req: &Request, _resp: &Response, visitor: &Visitor) -> ResponsePlan {
//!         let mut plan = Plan::new();
//!         if visitor.in_segment("returning") {
//!             plan.select("#hero h1").set_inner_text("Welcome back");
//!         }
//!         plan.build()
//!     }
//! }
//!
//! export_plugin!(Hero);
//! ```
//!
//! The visitor, request and response are read through methods (`visitor.device()`,
//! `request.path()`, `response.header("content-type")`): the host answers each from its own
//! copy, so a plugin pays only for what it reads. Host services are plain functions:
//! [`content::fragment`], [`analytics::track`], [`campaigns::active`], [`campaigns::assign`],
//! [`campaigns::impression`], [`config`], [`now_ms`], [`log`].
//!
//! Components built with this SDK run on every Veneer host that supports contract 0.2 (see
//! `wit/CHANGELOG.md`); components built with the 0.1 SDK keep running on this host too.

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "wit/veneer.wit",
        world: "personalizer",
        pub_export_macro: true,
        default_bindings_module: "veneer_sdk::__bindings",
    });
}

use __bindings::veneer::plugin::types as wit;

pub use wit::{DeviceClass, Level};
// In the component the visitor, request, response and element are the host's resources; in
// a native build (a plugin crate's `cargo test`) they are the fake host's plain types, so the
// same plugin code compiles for both.
#[cfg(not(target_arch = "wasm32"))]
pub use testing::{Element, Request, Response, Visitor};
#[cfg(target_arch = "wasm32")]
pub use wit::{Element, Request, Response, Visitor};

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The plugin author's guide (`docs/plugin-guide.md`), compiled here so that every example in
/// it is a doctest CI runs.
#[cfg(doctest)]
#[doc = include_str!("../../docs/plugin-guide.md")]
pub struct PluginGuide;

impl Request {
    /// The value of cookie `name` in the request's `Cookie` header (the host's own cookies
    /// are never there).
    pub fn cookie(&self, name: &str) -> Option<String> {
        let header = self.header("cookie")?;
        text::cookie(&header, name).map(str::to_owned)
    }
}

/// Small text helpers every plugin needs, so none re-implements them.
pub mod text {
    /// `s` safe to put in HTML text or a quoted attribute value.
    pub fn escape_html(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
        out
    }

    /// `s` as a JSON string literal, quotes included (JSON operations take JSON text).
    pub fn json_string(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// The string a JSON string literal holds (`"gold"` → `gold`); `None` for other JSON
    /// (a number, an array...) or a malformed literal.
    pub fn json_string_value(json: &str) -> Option<String> {
        let inner = json.trim().strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                '/' => out.push('/'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex = |chars: &mut std::str::Chars<'_>| {
                        let h: String = chars.by_ref().take(4).collect();
                        u32::from_str_radix(&h, 16).ok().filter(|_| h.len() == 4)
                    };
                    let hi = hex(&mut chars)?;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        if chars.next()? != '\\' || chars.next()? != 'u' {
                            return None;
                        }
                        let lo = hex(&mut chars)?;
                        0x10000 + ((hi - 0xD800) << 10) + (lo.checked_sub(0xDC00)?)
                    } else {
                        hi
                    };
                    out.push(char::from_u32(code)?);
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// The value of cookie `name` in a `Cookie` header value.
    pub fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
        header.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn helpers_escape_and_find() {
            assert_eq!(
                escape_html(r#"<a href="x">&'</a>"#),
                "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
            );
            assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
            assert_eq!(cookie("a=1; cart=3; b=2", "cart"), Some("3"));
            assert_eq!(cookie("a=1", "cart"), None);
            assert_eq!(json_string_value(r#""gold""#).as_deref(), Some("gold"));
            assert_eq!(
                json_string_value(r#""a\"b\u00e9\ud83d\ude00""#).as_deref(),
                Some("a\"bé😀")
            );
            assert_eq!(json_string_value("1830"), None);
        }
    }
}

/// The contract version this SDK builds plugins for.
pub const CONTRACT_VERSION: &str = "0.2.2";

/// Live campaigns and experiment assignments for this visitor.
pub mod campaigns {
    #[cfg(target_arch = "wasm32")]
    pub use crate::__bindings::veneer::plugin::campaigns::{
        Assignment, Campaign, active, assign, impression,
    };
    #[cfg(not(target_arch = "wasm32"))]
    pub use crate::testing::{Assignment, Campaign};

    /// The campaigns live for this visitor at the request's instant, highest priority first.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn active() -> Vec<Campaign> {
        crate::testing::active()
    }

    /// The visitor's assignment in `experiment`, if it is running and targets them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn assign(experiment: &str) -> Option<Assignment> {
        crate::testing::assign(experiment)
    }

    /// Records that the visitor was shown campaign `id`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn impression(id: &str) {
        crate::testing::impression(id);
    }
}

/// What is known about the visitor beyond this request (contract 0.2.2): the customer they are
/// identified as, imported CRM attributes, category affinity, journey stage, cart and
/// purchases. Empty without the visitor's personalization consent, and for bots. In native
/// tests, [`testing::FakeHost::with_profile`](crate::testing::FakeHost::with_profile) sets it.
pub mod profile {
    #[cfg(target_arch = "wasm32")]
    use crate::__bindings::veneer::plugin::profile as host;
    #[cfg(not(target_arch = "wasm32"))]
    use crate::testing::profile_host as host;

    /// The customer the visitor is identified as, if any.
    pub fn customer_id() -> Option<String> {
        host::customer_id()
    }

    /// An imported CRM attribute of the customer, as JSON text (`"gold"`, `1830`).
    pub fn customer_attribute(name: &str) -> Option<String> {
        host::customer_attribute(name)
    }

    /// A CRM attribute that is a string (`"gold"` → `gold`).
    pub fn customer_text(name: &str) -> Option<String> {
        let json = customer_attribute(name)?;
        crate::text::json_string_value(&json)
    }

    /// Up to `limit` categories the visitor is interested in, strongest first, with their
    /// decayed page-view scores.
    pub fn top_categories(limit: u32) -> Vec<(String, f64)> {
        host::top_categories(limit)
    }

    /// The decayed page-view score of `category` (0 when none).
    pub fn affinity(category: &str) -> f64 {
        host::affinity(category)
    }

    /// The visitor's journey stage, when the tenant defines stages.
    pub fn journey_stage() -> Option<String> {
        host::journey_stage()
    }

    /// What sits in the visitor's cart.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Cart {
        /// Items (quantities summed).
        pub items: u32,
        /// Value.
        pub value: f64,
        /// Products.
        pub skus: Vec<String>,
        /// Items, and no change or purchase for the tenant's set time.
        pub abandoned: bool,
    }

    /// The visitor's cart.
    pub fn cart() -> Cart {
        Cart {
            items: host::cart_items(),
            value: host::cart_value(),
            skus: host::cart_skus(),
            abandoned: host::cart_abandoned(),
        }
    }

    /// Purchases so far.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Purchases {
        /// How many.
        pub count: u32,
        /// The last one, in milliseconds since the Unix epoch.
        pub last_ms: Option<i64>,
        /// Categories bought, most recent first.
        pub categories: Vec<String>,
    }

    /// The visitor's purchases.
    pub fn purchases() -> Purchases {
        Purchases {
            count: host::purchase_count(),
            last_ms: host::last_purchase_ms(),
            categories: host::purchased_categories(),
        }
    }
}

/// Tenant content fragments.
pub mod content {
    #[cfg(target_arch = "wasm32")]
    pub use crate::__bindings::veneer::plugin::content::fragment;

    /// The tenant's content fragment `key`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn fragment(key: &str) -> Option<String> {
        crate::testing::fragment(key)
    }
}

/// Analytics events.
pub mod analytics {
    /// Records an event with string properties; never blocks.
    pub fn track(name: &str, properties: &[(&str, &str)]) {
        #[cfg(target_arch = "wasm32")]
        {
            let props: Vec<(String, String)> = properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            crate::__bindings::veneer::plugin::analytics::track(name, &props);
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::track(name, properties);
    }
}

/// This plugin's configuration value for `key` (its `params` table in the tenant config).
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return __bindings::veneer::plugin::host::config(key);
    #[cfg(not(target_arch = "wasm32"))]
    testing::config(key)
}

/// The instant the host evaluates this request at, in milliseconds since the Unix epoch (the
/// clock campaigns use; a preview may set it in the future).
pub fn now_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    return __bindings::veneer::plugin::host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    testing::now_ms()
}

/// Writes a message to the host's log.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    __bindings::veneer::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    testing::log(level, message);
}

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        DeviceClass, Element, HeaderEdits, HtmlOp, Level, Plan, Plugin, Request, RequestAction,
        Response, ResponsePlan, RuleOptions, SyntheticResponse, Visitor, analytics, campaigns,
        config, content, export_plugin, log, now_ms, profile, text,
    };
}

/// A personalization plugin. Every hook has a default that leaves the request alone, so a
/// plugin implements only what its idea needs.
pub trait Plugin {
    /// Before the origin is contacted. Default: continue unchanged.
    fn on_request(_request: &Request, _visitor: &Visitor) -> RequestAction {
        RequestAction::Continue(HeaderEdits::default())
    }

    /// With the origin's response head. Default: change nothing.
    fn on_response(_request: &Request, _response: &Response, _visitor: &Visitor) -> ResponsePlan {
        ResponsePlan::default()
    }

    /// For each element matching subscription `subscription`: read it with
    /// `element.attribute(..)` and change it with `element.set_attribute(..)`,
    /// `element.add_class(..)`... Default: leave it alone. Streaming callbacks cannot yield
    /// to the host's other work, so one call may use at most 2 ms of CPU; past it the plugin faults
    /// and is cut off for the rest of the page.
    fn on_element(_subscription: u32, _element: &Element) {}

    /// For each whole text node inside a text subscription: replacement HTML, or `None` to
    /// keep the text. Default: keep it.
    fn on_text(_subscription: u32, _text: &str) -> Option<String> {
        None
    }
}

/// Header changes: `set` replaces every value of a header, `remove` deletes it.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Headers to set (name, value).
    pub set: Vec<(String, String)>,
    /// Header names to remove.
    pub remove: Vec<String>,
}

/// A response the plugin sends instead of contacting the origin.
#[derive(Debug, Clone)]
pub struct SyntheticResponse {
    /// Status code.
    pub status: u16,
    /// Headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl RequestAction {
    /// Go on to the origin unchanged.
    pub fn proceed() -> Self {
        RequestAction::Continue(HeaderEdits::default())
    }
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum RequestAction {
    /// Go on to the origin, with these edits to the request headers.
    Continue(HeaderEdits),
    /// Redirect the visitor: (status, location). Status must be 301, 302, 303, 307 or 308.
    Redirect((u16, String)),
    /// Answer the visitor directly.
    Respond(SyntheticResponse),
}

/// One operation on the HTML elements a [`Selection`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HtmlOp {
    /// Replace the element's content with this HTML.
    SetInnerHtml(String),
    /// Replace the element's content with this text (escaped by the host).
    SetInnerText(String),
    /// Insert HTML at the start of the element's content.
    PrependHtml(String),
    /// Insert HTML at the end of the element's content.
    AppendHtml(String),
    /// Insert HTML before the element.
    BeforeHtml(String),
    /// Insert HTML after the element.
    AfterHtml(String),
    /// Replace the whole element with this HTML.
    ReplaceHtml(String),
    /// Remove the element and its content.
    Remove,
    /// Remove the element's tags but keep its content.
    Unwrap,
    /// Set an attribute (name, value).
    SetAttribute(String, String),
    /// Remove an attribute.
    RemoveAttribute(String),
    /// Add a class.
    AddClass(String),
    /// Remove a class.
    RemoveClass(String),
}

/// One change to a JSON response body (RFC 6901 pointers; values are JSON texts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonOp {
    /// Set the value at the pointer.
    Set(String, String),
    /// Remove the value at the pointer.
    Remove(String),
    /// Append to the array at the pointer.
    Append(String, String),
}

/// How one HTML rule is placed and reported (contract 0.2.1); see [`Selection::first_only`],
/// [`Selection::track_applied`] and [`Selection::or_append_to`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// The rule applies to the first matching element only.
    pub first_only: bool,
    /// The event (name, properties) the host records the first time the rule applies.
    pub track_applied: Option<(String, Vec<(String, String)>)>,
    /// Where the rule's content goes if it matched nothing: appended to the first element
    /// matching this selector, when it ends.
    pub fallback_append: Option<String>,
}

/// How to change a response; build one with [`Plan`].
#[derive(Debug, Clone, Default)]
pub struct ResponsePlan {
    /// Response header changes.
    pub headers: HeaderEdits,
    /// Declarative rules (selector, operation), applied natively by the host in order.
    pub html: Vec<(String, HtmlOp)>,
    /// JSON operations (JSON responses only).
    pub json: Vec<JsonOp>,
    /// Subscriptions (selector, deliver text too); the index is the subscription id.
    pub subscribe: Vec<(String, bool)>,
    /// Placement and reporting of rules, by index into `html` (absent: every match).
    pub rule_options: std::collections::BTreeMap<usize, RuleOptions>,
}

impl ResponsePlan {
    /// What the host would refuse in this plan, found without the host: unbalanced brackets,
    /// parentheses or quotes in a selector (the CSS parser would quietly close them), each
    /// naming the rule and the offending part. [`testing::FakeHost`] checks every plan with it.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let rules = self.html.iter().map(|(s, _)| ("rule", s));
        let subscriptions = self.subscribe.iter().map(|(s, _)| ("subscription", s));
        let mut index = std::collections::HashMap::new();
        for (kind, selector) in rules.chain(subscriptions) {
            let i = index.entry(kind).or_insert(0usize);
            if let Err(why) = selector_balance(selector) {
                out.push(format!("{kind} {i}: selector {selector:?}: {why}"));
            }
            *i += 1;
        }
        for (i, o) in &self.rule_options {
            let Some(f) = &o.fallback_append else {
                continue;
            };
            if let Err(why) = selector_balance(f) {
                out.push(format!("fallback of rule {i}: selector {f:?}: {why}"));
            }
            let inserts = self.html.get(*i).is_some_and(|(_, op)| {
                matches!(
                    op,
                    HtmlOp::SetInnerHtml(_)
                        | HtmlOp::SetInnerText(_)
                        | HtmlOp::PrependHtml(_)
                        | HtmlOp::AppendHtml(_)
                        | HtmlOp::BeforeHtml(_)
                        | HtmlOp::AfterHtml(_)
                        | HtmlOp::ReplaceHtml(_)
                )
            });
            if !inserts {
                out.push(format!(
                    "rule {i}: or_append_to needs an operation that inserts HTML or text"
                ));
            }
        }
        out
    }

    /// The operations on elements matching exactly `selector`, in order.
    pub fn ops_on(&self, selector: &str) -> Vec<&HtmlOp> {
        self.html
            .iter()
            .filter(|(s, _)| s == selector)
            .map(|(_, op)| op)
            .collect()
    }
}

/// Checks that brackets, parentheses and quotes in a selector are closed, as the host does.
fn selector_balance(s: &str) -> Result<(), String> {
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut quote: Option<(char, usize)> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') => escaped = true,
            (Some((q, _)), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some((c, i)),
            (None, '[' | '(') => open.push((c, i)),
            (None, ']' | ')') => {
                let want = if c == ']' { '[' } else { '(' };
                match open.pop() {
                    Some((o, _)) if o == want => {}
                    _ => return Err(format!("unmatched '{c}' at byte {i}")),
                }
            }
            _ => {}
        }
    }
    if s.trim().is_empty() {
        return Err("empty".to_owned());
    }
    if let Some((q, i)) = quote {
        return Err(format!("unclosed {q} at byte {i} (`{}`)", &s[i..]));
    }
    if let Some((o, i)) = open.pop() {
        return Err(format!("unclosed '{o}' at byte {i} (`{}`)", &s[i..]));
    }
    Ok(())
}

/// Builds a [`ResponsePlan`]: `plan.select("h1").set_inner_text("Hi")`.
#[derive(Default)]
pub struct Plan {
    plan: ResponsePlan,
}

/// Operations on the elements matching one selector; see [`Plan::select`].
pub struct Selection<'p> {
    plan: &'p mut ResponsePlan,
    selector: String,
    /// The index of the rule this selection added last.
    last: Option<usize>,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Selects elements by CSS selector; chain operations on the result.
    pub fn select(&mut self, selector: &str) -> Selection<'_> {
        Selection {
            plan: &mut self.plan,
            selector: selector.to_owned(),
            last: None,
        }
    }

    /// Subscribes to elements matching `selector`; returns the id `on_element` will receive.
    pub fn subscribe(&mut self, selector: &str) -> u32 {
        self.push_subscription(selector, false)
    }

    /// Subscribes to elements matching `selector` and to their whole text nodes (`on_text`).
    pub fn subscribe_text(&mut self, selector: &str) -> u32 {
        self.push_subscription(selector, true)
    }

    fn push_subscription(&mut self, selector: &str, text: bool) -> u32 {
        self.plan.subscribe.push((selector.to_owned(), text));
        u32::try_from(self.plan.subscribe.len() - 1).unwrap_or(u32::MAX)
    }

    /// Sets a response header.
    pub fn set_header(&mut self, name: &str, value: &str) -> &mut Self {
        self.plan
            .headers
            .set
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes a response header.
    pub fn remove_header(&mut self, name: &str) -> &mut Self {
        self.plan.headers.remove.push(name.to_owned());
        self
    }

    /// Sets the JSON value at `pointer` (RFC 6901) to `json` (a JSON text).
    pub fn json_set(&mut self, pointer: &str, json: &str) -> &mut Self {
        self.plan
            .json
            .push(JsonOp::Set(pointer.to_owned(), json.to_owned()));
        self
    }

    /// Removes the JSON value at `pointer`.
    pub fn json_remove(&mut self, pointer: &str) -> &mut Self {
        self.plan.json.push(JsonOp::Remove(pointer.to_owned()));
        self
    }

    /// Appends `json` to the array at `pointer`.
    pub fn json_append(&mut self, pointer: &str, json: &str) -> &mut Self {
        self.plan
            .json
            .push(JsonOp::Append(pointer.to_owned(), json.to_owned()));
        self
    }

    /// Finishes the plan.
    pub fn build(&mut self) -> ResponsePlan {
        std::mem::take(&mut self.plan)
    }
}

macro_rules! ops {
    ($($(#[$doc:meta])* $name:ident($arg:ident) => $variant:ident;)*) => {
        impl Selection<'_> {
            $(
                $(#[$doc])*
                pub fn $name(&mut self, $arg: &str) -> &mut Self {
                    self.push(HtmlOp::$variant($arg.to_owned()))
                }
            )*
        }
    };
}

ops! {
    /// Replaces the content with HTML.
    set_inner_html(html) => SetInnerHtml;
    /// Replaces the content with text (escaped).
    set_inner_text(text) => SetInnerText;
    /// Inserts HTML at the start of the content.
    prepend_html(html) => PrependHtml;
    /// Inserts HTML at the end of the content.
    append_html(html) => AppendHtml;
    /// Inserts HTML before the element.
    before_html(html) => BeforeHtml;
    /// Inserts HTML after the element.
    after_html(html) => AfterHtml;
    /// Replaces the whole element.
    replace_html(html) => ReplaceHtml;
    /// Removes an attribute.
    remove_attribute(name) => RemoveAttribute;
    /// Adds a class.
    add_class(class) => AddClass;
    /// Removes a class.
    remove_class(class) => RemoveClass;
}

impl Selection<'_> {
    fn push(&mut self, op: HtmlOp) -> &mut Self {
        self.plan.html.push((self.selector.clone(), op));
        self.last = Some(self.plan.html.len() - 1);
        self
    }

    fn options(&mut self, call: &str) -> &mut RuleOptions {
        let Some(last) = self.last else {
            panic!(
                "select({:?}).{call}(): call it after an operation, e.g. .before_html(..).{call}(..)",
                self.selector
            );
        };
        self.plan.rule_options.entry(last).or_default()
    }

    /// Contract 0.2.1: the operation just added applies to the first matching element only.
    pub fn first_only(&mut self) -> &mut Self {
        self.options("first_only").first_only = true;
        self
    }

    /// Contract 0.2.1: the first time the operation just added applies, the host records
    /// event `name` with these properties (and `selector`, and `placement`: `target` or
    /// `fallback`) from this plugin, so "shown" events count only what was really placed.
    pub fn track_applied(&mut self, name: &str, properties: &[(&str, &str)]) -> &mut Self {
        let props = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.options("track_applied").track_applied = Some((name.to_owned(), props));
        self
    }

    /// Contract 0.2.1: if the operation just added (one that inserts HTML or text) matched
    /// nothing by the time the first element matching `selector` ends, its content is
    /// appended to that element instead: `plan.select("#promo").before_html(b).or_append_to("main")`.
    pub fn or_append_to(&mut self, selector: &str) -> &mut Self {
        self.options("or_append_to").fallback_append = Some(selector.to_owned());
        self
    }

    /// Removes the element.
    pub fn remove(&mut self) -> &mut Self {
        self.push(HtmlOp::Remove)
    }

    /// Removes the element's tags, keeping its content.
    pub fn unwrap(&mut self) -> &mut Self {
        self.push(HtmlOp::Unwrap)
    }

    /// Sets an attribute.
    pub fn set_attribute(&mut self, name: &str, value: &str) -> &mut Self {
        self.push(HtmlOp::SetAttribute(name.to_owned(), value.to_owned()))
    }
}

/// Glue between the [`Plugin`] trait and the contract; used by [`export_plugin!`].
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __glue {
    use super::*;
    use crate::__bindings::veneer::plugin::types::{RequestPlan, ResponsePlan as PlanHandle};

    /// Records a [`RequestAction`] on the host's request plan.
    pub fn apply_request(action: RequestAction, plan: &RequestPlan) {
        match action {
            RequestAction::Continue(edits) => {
                for name in &edits.remove {
                    plan.remove_header(name);
                }
                for (name, value) in &edits.set {
                    plan.set_header(name, value);
                }
            }
            RequestAction::Redirect((status, location)) => plan.redirect(status, &location),
            RequestAction::Respond(r) => plan.respond(r.status, &r.headers, &r.body),
        }
    }

    /// Records a [`ResponsePlan`] on the host's response plan.
    pub fn apply_response(built: ResponsePlan, plan: &PlanHandle) {
        for name in &built.headers.remove {
            plan.remove_header(name);
        }
        for (name, value) in &built.headers.set {
            plan.set_header(name, value);
        }
        for (i, (s, op)) in built.html.iter().enumerate() {
            match op {
                HtmlOp::SetInnerHtml(v) => plan.set_inner_html(s, v),
                HtmlOp::SetInnerText(v) => plan.set_inner_text(s, v),
                HtmlOp::PrependHtml(v) => plan.prepend_html(s, v),
                HtmlOp::AppendHtml(v) => plan.append_html(s, v),
                HtmlOp::BeforeHtml(v) => plan.before_html(s, v),
                HtmlOp::AfterHtml(v) => plan.after_html(s, v),
                HtmlOp::ReplaceHtml(v) => plan.replace_html(s, v),
                HtmlOp::Remove => plan.remove(s),
                HtmlOp::Unwrap => plan.unwrap(s),
                HtmlOp::SetAttribute(n, v) => plan.set_attribute(s, n, v),
                HtmlOp::RemoveAttribute(n) => plan.remove_attribute(s, n),
                HtmlOp::AddClass(c) => plan.add_class(s, c),
                HtmlOp::RemoveClass(c) => plan.remove_class(s, c),
            }
            if let Some(o) = built.rule_options.get(&i) {
                if o.first_only {
                    plan.first_only();
                }
                if let Some((name, props)) = &o.track_applied {
                    plan.track_applied(name, props);
                }
                if let Some(f) = &o.fallback_append {
                    plan.fallback_append(f);
                }
            }
        }
        for op in &built.json {
            match op {
                JsonOp::Set(p, v) => plan.json_set(p, v),
                JsonOp::Remove(p) => plan.json_remove(p),
                JsonOp::Append(p, v) => plan.json_append(p, v),
            }
        }
        for (selector, text) in &built.subscribe {
            if *text {
                plan.subscribe_text(selector);
            } else {
                plan.subscribe(selector);
            }
        }
    }
}

/// Exports a [`Plugin`] implementation as the component's hooks.
///
/// `export_plugin!(MyPlugin, deterministic)` also declares the plugin deterministic: its
/// answers depend only on the request's method, host and URL, the visitor's segments, device,
/// locale and consents, the response's status and content type, and what it reads through the
/// host (fragments, live campaigns, experiment assignments). The host then keeps its answers
/// and serves them again without calling it, for every visitor with the same inputs (its
/// events and impressions are still recorded for each). A plugin that reads anything else (the
/// visitor's id, country, visit count, referrer, UTM parameters or attributes, a request
/// header or cookie, another response header, the clock or the visitor's profile) must not
/// declare it; a contract 0.2 plugin that does anyway is not memoized for the requests where
/// it read them.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident, deterministic) => {
        $crate::export_plugin!($plugin);
        // Read by the host from the component (a custom section, outside the WIT contract:
        // hosts that do not know it ignore it).
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[unsafe(link_section = "veneer:traits")]
        static __VENEER_TRAITS: [u8; 14] = *b"deterministic\n";
    };
    ($plugin:ident) => {
        // Only the component has the host's resources to take; a native build tests the
        // plugin through `veneer_sdk::testing` instead.
        #[cfg(target_arch = "wasm32")]
        impl $crate::__bindings::exports::veneer::plugin::hooks::Guest for $plugin {
            fn on_request(
                request: &$crate::Request,
                visitor: &$crate::Visitor,
                plan: &$crate::__bindings::veneer::plugin::types::RequestPlan,
            ) {
                $crate::__glue::apply_request(
                    <$plugin as $crate::Plugin>::on_request(request, visitor),
                    plan,
                );
            }
            fn on_response(
                request: &$crate::Request,
                response: &$crate::Response,
                visitor: &$crate::Visitor,
                plan: &$crate::__bindings::veneer::plugin::types::ResponsePlan,
            ) {
                $crate::__glue::apply_response(
                    <$plugin as $crate::Plugin>::on_response(request, response, visitor),
                    plan,
                );
            }
            fn on_element(subscription: u32, element: &$crate::Element) {
                <$plugin as $crate::Plugin>::on_element(subscription, element)
            }
            fn on_text(
                subscription: u32,
                node: &$crate::__bindings::veneer::plugin::types::TextNode,
            ) {
                if let ::std::option::Option::Some(html) =
                    <$plugin as $crate::Plugin>::on_text(subscription, &node.text())
                {
                    node.replace(&html);
                }
            }
        }
        // Exported only in the component: a native build (`cargo test` of a plugin crate)
        // must not carry the component's export names, which a native linker refuses.
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::export!($plugin with_types_in $crate::__bindings);
    };
}
