//! Every way a request can fail, mapped to its status, its outcome label and its source in one
//! place. Plugin faults are not here: they never fail a request (fail open).

use http::StatusCode;

/// Why Veneer answered a request itself instead of with the origin's (possibly personalized)
/// response.
#[derive(Debug)]
pub(super) enum ProxyError {
    /// No tenant serves this Host.
    UnknownHost,
    /// The request target cannot be sent on.
    BadTarget,
    /// The request breaks HTTP's rules in a way a proxy must not pass on (why, for the log).
    BadRequest(&'static str),
    /// The method is not served here; the `Allow` header value.
    MethodNotAllowed(String),
    /// The client's request body broke (bad chunked framing, cut short) while it was sent on.
    ClientBody(String),
    /// The request body is larger than the tenant's `max_body_bytes`.
    BodyTooLarge,
    /// The request body stalled longer than the tenant's `body_read_timeout_ms`.
    BodyTimeout,
    /// The client is over its request rate at this tenant; retry after this long.
    TooManyRequests(std::time::Duration),
    /// The origin could not be reached or broke the connection before answering.
    OriginUnreachable(String),
    /// The origin did not answer within `origin_timeout_ms`.
    OriginTimeout,
    /// The origin's body broke while Veneer buffered it (JSON patching).
    OriginBody(String),
    /// The tenant has `max_concurrent_requests` in flight already.
    TenantBusy,
    /// A beacon event that is not in the documented form (why, for the client).
    BadEvent(String),
    /// A beacon event posted from another site's page.
    CrossOrigin,
    /// A preview link that is altered, expired or for another site (why).
    BadPreview(&'static str),
    /// A `veneer dev` switch in the query that cannot be read (why, for the developer).
    BadDevSwitch(String),
}

/// Who caused a failure, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The client sent something Veneer will not serve.
    Client,
    /// The tenant's origin failed.
    Origin,
    /// The host itself (a tenant at its concurrency cap).
    Host,
}

impl ProxyError {
    /// The status the client gets.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::BadTarget | ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::OriginUnreachable(_) | ProxyError::OriginBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::OriginTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::TenantBusy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadEvent(_) | ProxyError::BadDevSwitch(_) => StatusCode::BAD_REQUEST,
            ProxyError::CrossOrigin | ProxyError::BadPreview(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The `outcome` label of `veneer_requests_total`.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            ProxyError::UnknownHost => "unknown_host",
            ProxyError::BadTarget | ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::ClientBody(_) => "bad_request_body",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::TooManyRequests(_) => "rate_limited",
            ProxyError::OriginUnreachable(_) => "origin_unreachable",
            ProxyError::OriginTimeout => "origin_timeout",
            ProxyError::OriginBody(_) => "origin_body_failed",
            ProxyError::TenantBusy => "tenant_busy",
            ProxyError::BadEvent(_) => "bad_event",
            ProxyError::CrossOrigin => "cross_origin_event",
            ProxyError::BadPreview(_) => "bad_preview",
            ProxyError::BadDevSwitch(_) => "bad_dev_switch",
        }
    }

    /// The label for `veneer_errors_total{source}`.
    pub(super) fn source_label(&self) -> &'static str {
        match self.source() {
            Source::Client => "client",
            Source::Origin => "origin",
            Source::Host => "host",
        }
    }

    /// Who caused it.
    pub(super) fn source(&self) -> Source {
        match self {
            ProxyError::UnknownHost
            | ProxyError::BadTarget
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::ClientBody(_)
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::TooManyRequests(_)
            | ProxyError::BadEvent(_)
            | ProxyError::CrossOrigin
            | ProxyError::BadPreview(_)
            | ProxyError::BadDevSwitch(_) => Source::Client,
            ProxyError::OriginUnreachable(_)
            | ProxyError::OriginTimeout
            | ProxyError::OriginBody(_) => Source::Origin,
            ProxyError::TenantBusy => Source::Host,
        }
    }

    /// The `kind` label of `veneer_origin_errors_total`, for origin failures.
    pub(super) fn origin_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::OriginUnreachable(_) => Some("unreachable"),
            ProxyError::OriginTimeout => Some("timeout"),
            ProxyError::OriginBody(_) => Some("body"),
            _ => None,
        }
    }

    /// The short plain-text body the client gets.
    pub(super) fn message(&self, host: &str, request_id: &str) -> String {
        match self {
            ProxyError::UnknownHost => {
                format!("veneer: no site is configured for host {host:?}\n")
            }
            ProxyError::BadTarget => "veneer: malformed request target\n".to_owned(),
            ProxyError::BadRequest(why) => {
                format!("veneer: bad request: {why} (request {request_id})\n")
            }
            ProxyError::MethodNotAllowed(allow) => {
                format!(
                    "veneer: method not allowed here; allowed: {allow} (request {request_id})\n"
                )
            }
            ProxyError::ClientBody(_) => {
                format!("veneer: the request body is malformed (request {request_id})\n")
            }
            ProxyError::BodyTooLarge => {
                format!("veneer: the request body is too large (request {request_id})\n")
            }
            ProxyError::BodyTimeout => {
                format!("veneer: the request body arrived too slowly (request {request_id})\n")
            }
            ProxyError::TooManyRequests(_) => {
                format!("veneer: too many requests; slow down (request {request_id})\n")
            }
            ProxyError::OriginUnreachable(_) => format!(
                "veneer: the origin for {host} could not be reached (request {request_id})\n"
            ),
            ProxyError::OriginTimeout => format!(
                "veneer: the origin for {host} did not answer in time (request {request_id})\n"
            ),
            ProxyError::OriginBody(_) => {
                format!("veneer: the origin's response body failed (request {request_id})\n")
            }
            ProxyError::TenantBusy => {
                format!("veneer: {host} is busy; try again shortly (request {request_id})\n")
            }
            ProxyError::BadEvent(why) => {
                format!("veneer: bad event: {why} (request {request_id})\n")
            }
            ProxyError::BadPreview(why) => format!("veneer: {why} (request {request_id})\n"),
            ProxyError::BadDevSwitch(why) => {
                format!("veneer dev: {why} (request {request_id})\n")
            }
            ProxyError::CrossOrigin => {
                format!(
                    "veneer: events are accepted from {host}'s own pages only (request {request_id})\n"
                )
            }
        }
    }

    /// What went wrong, for the log.
    pub(super) fn detail(&self) -> &str {
        match self {
            ProxyError::OriginUnreachable(e)
            | ProxyError::OriginBody(e)
            | ProxyError::ClientBody(e)
            | ProxyError::BadEvent(e)
            | ProxyError::BadDevSwitch(e) => e,
            ProxyError::CrossOrigin => "event from another origin",
            ProxyError::BadPreview(why) => why,
            ProxyError::BadRequest(why) => why,
            ProxyError::MethodNotAllowed(_) => "method not allowed",
            ProxyError::BodyTooLarge => "request body too large",
            ProxyError::BodyTimeout => "request body stalled",
            ProxyError::TooManyRequests(_) => "rate limited",
            ProxyError::UnknownHost => "unknown host",
            ProxyError::BadTarget => "malformed request target",
            ProxyError::OriginTimeout => "origin timed out",
            ProxyError::TenantBusy => "tenant at its concurrent-request cap",
        }
    }
}
