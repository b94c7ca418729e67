//! The Veneer host: an edge personalization proxy running WebAssembly component plugins.
//!
//! Where things are:
//! - [`proxy`]: the request flow, top to bottom, in one function.
//! - [`plugin`]: the wasmtime runtime (the only module that touches wasmtime).
//! - [`rewrite`]: content codings, streaming HTML rewriting (the only module that touches
//!   lol-html) and JSON patches.
//! - [`visitor`]: the signed visitor cookie and request facts (device, locale, UTM, consent).
//! - [`app`]: tenants and shared state built from the [`config`].
//! - [`server`]: listeners; [`analytics`] and [`metrics`]: what the host reports.
//! - [`demo`]: the demo shop origin used by `veneer demo`.

pub mod admin;
pub mod admin_cli;
pub mod analytics;
pub mod app;
pub mod cache;
pub mod charset;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod demo;
pub mod dev;
pub mod email;
pub mod fleet;
pub mod framing;
pub mod geo;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod plugin;
pub mod plugin_run;
pub mod plugin_test;
pub mod preview;
pub mod private_dir;
pub mod profile;
pub mod profile_admin;
pub mod proxy;
pub mod render;
pub mod report;
pub mod rewrite;
pub mod scaffold;
pub mod sends;
pub mod server;
pub mod store;
pub mod tls;
pub mod visitor;
