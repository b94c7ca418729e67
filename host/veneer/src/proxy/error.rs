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
    /// The origin could not be reached or broke the connection before answering.
    OriginUnreachable(String),
    /// The origin did not answer within `origin_timeout_ms`.
    OriginTimeout,
    /// The origin's body broke while Veneer buffered it (JSON patching).
    OriginBody(String),
}

/// Who caused a failure, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The client sent something Veneer will not serve.
    Client,
    /// The tenant's origin failed.
    Origin,
}

impl ProxyError {
    /// The status the client gets.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::BadTarget => StatusCode::BAD_REQUEST,
            ProxyError::OriginUnreachable(_) | ProxyError::OriginBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::OriginTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `outcome` label of `veneer_requests_total`.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            ProxyError::UnknownHost => "unknown_host",
            ProxyError::BadTarget => "bad_request",
            ProxyError::OriginUnreachable(_) => "origin_unreachable",
            ProxyError::OriginTimeout => "origin_timeout",
            ProxyError::OriginBody(_) => "origin_body_failed",
        }
    }

    /// Who caused it.
    pub(super) fn source(&self) -> Source {
        match self {
            ProxyError::UnknownHost | ProxyError::BadTarget => Source::Client,
            ProxyError::OriginUnreachable(_)
            | ProxyError::OriginTimeout
            | ProxyError::OriginBody(_) => Source::Origin,
        }
    }

    /// The `kind` label of `veneer_origin_errors_total`, for origin failures.
    pub(super) fn origin_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::OriginUnreachable(_) => Some("unreachable"),
            ProxyError::OriginTimeout => Some("timeout"),
            ProxyError::OriginBody(_) => Some("body"),
            ProxyError::UnknownHost | ProxyError::BadTarget => None,
        }
    }

    /// The short plain-text body the client gets.
    pub(super) fn message(&self, host: &str, request_id: &str) -> String {
        match self {
            ProxyError::UnknownHost => {
                format!("veneer: no site is configured for host {host:?}\n")
            }
            ProxyError::BadTarget => "veneer: malformed request target\n".to_owned(),
            ProxyError::OriginUnreachable(_) => format!(
                "veneer: the origin for {host} could not be reached (request {request_id})\n"
            ),
            ProxyError::OriginTimeout => format!(
                "veneer: the origin for {host} did not answer in time (request {request_id})\n"
            ),
            ProxyError::OriginBody(_) => {
                format!("veneer: the origin's response body failed (request {request_id})\n")
            }
        }
    }

    /// What went wrong, for the log.
    pub(super) fn detail(&self) -> &str {
        match self {
            ProxyError::OriginUnreachable(e) | ProxyError::OriginBody(e) => e,
            ProxyError::UnknownHost => "unknown host",
            ProxyError::BadTarget => "malformed request target",
            ProxyError::OriginTimeout => "origin timed out",
        }
    }
}
