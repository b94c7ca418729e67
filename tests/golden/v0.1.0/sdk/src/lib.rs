//! Write Veneer personalization plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`], whose hooks all default to "do nothing", and
//! one [`export_plugin!`] line. Build it with `cargo build --target wasm32-wasip2 --release`.
//!
//! ```ignore
//! use veneer_sdk::prelude::*;
//!
//! struct Hero;
//!
//! impl Plugin for Hero {
//!     fn on_response(req: &Request, resp: &Response, visitor: &Visitor) -> Plan {
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
//! Host services are plain functions: [`content::fragment`], [`analytics::track`],
//! [`campaigns::active`], [`campaigns::assign`], [`config`], [`log`].
//! The generated WIT bindings stay in a hidden module; only the types below are public.

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../../../../wit/v0.1.0",
        world: "personalizer",
        pub_export_macro: true,
        default_bindings_module: "veneer_sdk::__bindings",
    });
}

use __bindings::veneer::plugin::types as wit;

pub use wit::{
    Consent, DeviceClass, ElementInfo, HeaderEdits, HtmlOp, JsonOp, Level, RequestAction,
    RequestHead as Request, ResponseHead as Response, ResponsePlan, Subscription,
    SyntheticResponse, Visitor,
};

/// Live campaigns and experiment assignments for this visitor.
pub mod campaigns {
    pub use crate::__bindings::veneer::plugin::campaigns::{Assignment, Campaign, active, assign};

    /// Looks up a campaign parameter by name.
    pub fn param<'a>(campaign: &'a Campaign, name: &str) -> Option<&'a str> {
        campaign
            .params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Tenant content fragments.
pub mod content {
    pub use crate::__bindings::veneer::plugin::content::fragment;
}

/// Analytics events.
pub mod analytics {
    /// Records an event with string properties; never blocks.
    pub fn track(name: &str, properties: &[(&str, &str)]) {
        let props: Vec<(String, String)> = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        crate::__bindings::veneer::plugin::analytics::track(name, &props);
    }
}

/// This plugin's configuration value for `key` (its `params` table in the tenant config).
pub fn config(key: &str) -> Option<String> {
    __bindings::veneer::plugin::host::config(key)
}

/// Writes a message to the host's log.
pub fn log(level: Level, message: &str) {
    __bindings::veneer::plugin::host::log(level, message);
}

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        DeviceClass, ElementInfo, HtmlOp, Level, Plan, Plugin, Request, RequestAction, Response,
        ResponsePlan, Visitor, VisitorExt, analytics, campaigns, config, content, export_plugin,
        log,
    };
}

/// A personalization plugin. Every hook has a default that leaves the request alone, so a
/// plugin implements only what its idea needs.
pub trait Plugin {
    /// Before the origin is contacted. Default: continue unchanged.
    fn on_request(_request: &Request, _visitor: &Visitor) -> RequestAction {
        RequestAction::Continue(wit::HeaderEdits {
            set: Vec::new(),
            remove: Vec::new(),
        })
    }

    /// With the origin's response head. Default: change nothing.
    fn on_response(_request: &Request, _response: &Response, _visitor: &Visitor) -> ResponsePlan {
        Plan::new().build()
    }

    /// For each element matching subscription `subscription`. Default: no operations.
    fn on_element(_subscription: u32, _element: &ElementInfo) -> Vec<HtmlOp> {
        Vec::new()
    }

    /// For each whole text node inside a text subscription. Default: keep the text.
    fn on_text(_subscription: u32, _text: &str) -> Option<String> {
        None
    }
}

/// Convenience queries on [`Visitor`].
pub trait VisitorExt {
    /// Whether the visitor is in segment `name`.
    fn in_segment(&self, name: &str) -> bool;
    /// The value of UTM parameter `name` (without the `utm_` prefix).
    fn utm(&self, name: &str) -> Option<&str>;
}

impl VisitorExt for Visitor {
    fn in_segment(&self, name: &str) -> bool {
        self.segments.iter().any(|s| s == name)
    }

    fn utm(&self, name: &str) -> Option<&str> {
        self.utm
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Builds a [`ResponsePlan`]: `plan.select("h1").set_inner_text("Hi")`.
#[derive(Default)]
pub struct Plan {
    plan: ResponsePlan,
}

impl Default for ResponsePlan {
    fn default() -> Self {
        ResponsePlan {
            headers: wit::HeaderEdits {
                set: Vec::new(),
                remove: Vec::new(),
            },
            html: Vec::new(),
            json: Vec::new(),
            subscribe: Vec::new(),
        }
    }
}

/// Operations on the elements matching one selector; see [`Plan::select`].
pub struct Selection<'p> {
    plan: &'p mut ResponsePlan,
    selector: String,
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
        self.plan.subscribe.push(Subscription {
            selector: selector.to_owned(),
            text,
        });
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
            .push(JsonOp::Set((pointer.to_owned(), json.to_owned())));
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
            .push(JsonOp::Append((pointer.to_owned(), json.to_owned())));
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
        self.plan.html.push(wit::HtmlRule {
            selector: self.selector.clone(),
            op,
        });
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
        self.push(HtmlOp::SetAttribute((name.to_owned(), value.to_owned())))
    }
}

/// The value of attribute `name` on an element snapshot.
pub fn attribute<'a>(element: &'a ElementInfo, name: &str) -> Option<&'a str> {
    element
        .attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Exports a [`Plugin`] implementation as the component's hooks.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        impl $crate::__bindings::exports::veneer::plugin::hooks::Guest for $plugin {
            fn on_request(request: $crate::Request, visitor: $crate::Visitor) -> $crate::RequestAction {
                <$plugin as $crate::Plugin>::on_request(&request, &visitor)
            }
            fn on_response(
                request: $crate::Request,
                response: $crate::Response,
                visitor: $crate::Visitor,
            ) -> $crate::ResponsePlan {
                <$plugin as $crate::Plugin>::on_response(&request, &response, &visitor)
            }
            fn on_element(subscription: u32, element: $crate::ElementInfo) -> ::std::vec::Vec<$crate::HtmlOp> {
                <$plugin as $crate::Plugin>::on_element(subscription, &element)
            }
            fn on_text(subscription: u32, text: ::std::string::String) -> ::std::option::Option<::std::string::String> {
                <$plugin as $crate::Plugin>::on_text(subscription, &text)
            }
        }
        $crate::__bindings::export!($plugin with_types_in $crate::__bindings);
    };
}
