//! What one request carries through the stages.

use std::sync::Arc;

use jiff::Timestamp;

use super::identify::VisitorCtx;
use crate::app::{App, Tenant};

/// One request's context: its id, host and clock, and what the stages learned.
pub(super) struct RequestCtx {
    /// The host.
    pub(super) app: Arc<App>,
    /// The request id (the client's `x-request-id` if sane, else a new one).
    pub(super) id: String,
    /// The Host it was addressed to.
    pub(super) host: String,
    /// The peer is a trusted proxy (`trusted_proxies`): its forwarding headers are believed.
    pub(super) trusted: bool,
    /// The client's address: the peer's, or through trusted proxies the nearest untrusted
    /// address in `X-Forwarded-For`.
    pub(super) client_ip: Option<std::net::IpAddr>,
    /// The instant the request is evaluated at, read by every stage.
    pub(super) now: Timestamp,
    /// The tenant, once routed.
    pub(super) tenant: Option<Arc<Tenant>>,
    /// The visitor, once identified (the cookie is written from here).
    pub(super) visitor: Option<VisitorCtx>,
    /// The `outcome` label the request is counted under.
    pub(super) outcome: &'static str,
    /// The cache's answer (`HIT`, `MISS`, ...), when the tenant has a cache.
    pub(super) cache_status: Option<&'static str>,
    /// A preview link's settings: nothing is recorded and no cookie is written.
    pub(super) preview: Option<Arc<crate::preview::Preview>>,
    /// A message rendered by `veneer render` (no client): its recipient, channel and
    /// attributes stand in for the cookie and the request's facts.
    pub(super) message: Option<Arc<super::message::Message>>,
}

impl RequestCtx {
    /// The tenant's name for labels, `(unknown)` before routing.
    pub(super) fn tenant_name(&self) -> &str {
        self.tenant
            .as_ref()
            .map_or("(unknown)", |t| t.config.name.as_str())
    }
}
