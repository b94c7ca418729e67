//! The host's own model of what flows between it and a plugin.
//!
//! The proxy and the rewriter speak only these types. Each supported contract version has a
//! bindings module beside this one (`v0_1`, `v0_2`) that converts to and from them, so a new
//! contract version never ripples through the request flow, and an old one keeps working
//! exactly as it did. The shapes follow the 0.1.0 contract's records, which were the host's
//! model before versions existed.

use std::sync::Arc;

/// What kind of device the visitor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// A desktop or laptop browser.
    Desktop,
    /// A phone.
    Mobile,
    /// A tablet.
    Tablet,
    /// A crawler or other automated client.
    Bot,
}

/// What the visitor agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consent {
    /// Events may be recorded.
    pub analytics: bool,
    /// Content may be personalized.
    pub personalization: bool,
    /// Marketing campaigns may be shown.
    pub marketing: bool,
}

impl Consent {
    /// Consent for a purpose by name; unknown purposes are `false`.
    pub fn purpose(&self, purpose: &str) -> bool {
        match purpose {
            "analytics" => self.analytics,
            "personalization" => self.personalization,
            "marketing" => self.marketing,
            _ => false,
        }
    }
}

/// Everything the host knows about the visitor making a request.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// Stable pseudonymous id.
    pub id: String,
    /// The tenant's segments this visitor is in, in definition order.
    pub segments: Vec<String>,
    /// Device class.
    pub device: DeviceClass,
    /// ISO 3166 country code from the trusted geo header.
    pub country: Option<String>,
    /// Preferred locale from Accept-Language.
    pub locale: Option<String>,
    /// Visits including this one.
    pub visit_count: u32,
    /// First seen, seconds since the Unix epoch.
    pub first_seen: u64,
    /// `utm_*` parameters without the prefix.
    pub utm: Vec<(String, String)>,
    /// The Referer header.
    pub referrer: Option<String>,
    /// Consent flags.
    pub consent: Consent,
    /// The attributes the segment rules see (a JSON object), shared with the rules engine.
    pub attributes: Arc<serde_json::Value>,
}

/// The request as the visitor sent it (Veneer's own cookie removed).
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// HTTP method, upper case.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The Host the request was addressed to.
    pub host: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

/// The origin's response status and headers (names in lower case).
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

/// First value of header `name` in a lower-case header list.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Header changes: `set` replaces every value of a header, `remove` deletes it.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Headers to set (name, value).
    pub set: Vec<(String, String)>,
    /// Header names to remove.
    pub remove: Vec<String>,
}

/// A response a plugin sends instead of contacting the origin.
#[derive(Debug, Clone)]
pub struct SyntheticResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum RequestAction {
    /// Go on to the origin with these request header edits.
    Continue(HeaderEdits),
    /// Redirect: (status, location).
    Redirect((u16, String)),
    /// Answer directly.
    Respond(SyntheticResponse),
}

/// One operation on an HTML element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HtmlOp {
    /// Replace the content with HTML.
    SetInnerHtml(String),
    /// Replace the content with text.
    SetInnerText(String),
    /// Insert HTML at the start of the content.
    PrependHtml(String),
    /// Insert HTML at the end of the content.
    AppendHtml(String),
    /// Insert HTML before the element.
    BeforeHtml(String),
    /// Insert HTML after the element.
    AfterHtml(String),
    /// Replace the element.
    ReplaceHtml(String),
    /// Remove the element.
    Remove,
    /// Remove the tags, keep the content.
    Unwrap,
    /// Set an attribute (name, value).
    SetAttribute((String, String)),
    /// Remove an attribute.
    RemoveAttribute(String),
    /// Add a class.
    AddClass(String),
    /// Remove a class.
    RemoveClass(String),
}

/// Apply `op` to every element matching `selector`.
#[derive(Debug, Clone)]
pub struct HtmlRule {
    /// CSS selector.
    pub selector: String,
    /// Operation.
    pub op: HtmlOp,
}

/// One change to a JSON body; pointers are RFC 6901.
#[derive(Debug, Clone)]
pub enum JsonOp {
    /// Set (pointer, JSON text).
    Set((String, String)),
    /// Remove at pointer.
    Remove(String),
    /// Append (pointer, JSON text) to an array.
    Append((String, String)),
}

/// A subscription to element (and optionally text) callbacks.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// CSS selector.
    pub selector: String,
    /// Also deliver whole text nodes.
    pub text: bool,
}

/// How one HTML rule is placed and reported (contract 0.2.1); the default is "every match".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Apply to the first matching element only.
    pub first_only: bool,
    /// Record this event (name, properties) the first time the rule applies.
    pub on_apply: Option<(String, Vec<(String, String)>)>,
    /// If the rule matched nothing when the first element matching this selector ends, append
    /// its content there instead.
    pub fallback: Option<String>,
}

impl RuleOptions {
    /// Whether the rule is applied as plain rules are.
    pub fn is_plain(&self) -> bool {
        *self == RuleOptions::default()
    }
}

/// How to change a response.
#[derive(Debug, Clone, Default)]
pub struct ResponsePlan {
    /// Response header changes.
    pub headers: HeaderEdits,
    /// Declarative HTML rules, in order.
    pub html: Vec<HtmlRule>,
    /// Placement and reporting of rules, by index into `html` (absent: plain).
    pub rule_options: std::collections::BTreeMap<usize, RuleOptions>,
    /// Why the plan is invalid though each call was accepted (a rule option with no rule
    /// before it); checked when the plan is validated.
    pub misuse: Option<String>,
    /// JSON operations.
    pub json: Vec<JsonOp>,
    /// Element subscriptions; the index is the subscription id.
    pub subscribe: Vec<Subscription>,
}

/// A snapshot of an element, for `on-element`.
#[derive(Debug, Clone)]
pub struct ElementInfo {
    /// Tag name, lower case.
    pub tag: String,
    /// Attributes in document order, entities decoded.
    pub attributes: Vec<(String, String)>,
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// A campaign live for this visitor.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Higher wins.
    pub priority: i32,
    /// Start, seconds since the Unix epoch.
    pub starts_at: i64,
    /// End, seconds since the Unix epoch.
    pub ends_at: i64,
    /// Tenant-configured parameters.
    pub params: Vec<(String, String)>,
}

/// The visitor's assignment in an experiment.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Experiment key.
    pub experiment: String,
    /// Variation index (0 = control).
    pub variation: u32,
    /// Variation key.
    pub key: String,
    /// The variation's value as JSON text.
    pub value: String,
    /// Whether the visitor is in the experiment.
    pub in_experiment: bool,
}
