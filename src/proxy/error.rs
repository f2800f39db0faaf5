//! Errors of the data plane and the one place that classifies them into kinds. A kind
//! (`ErrorKind`) is one closed enum: its label is used alike by metrics, log events and the
//! `x-spoke-error` header, and it says which status answers it, whether another endpoint
//! may be tried, and whether it counts against the endpoint (outlier detection).

use std::io;

use http::StatusCode;

/// Every error the proxy reports, for TCP and HTTP alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    // The downstream request, refused before it went anywhere.
    BadRequest,
    UriTooLong,
    HeadersTooLarge,
    TooManyHeaders,
    HeaderTimeout,
    RequestTooLarge,
    NoRoute,
    Unauthorized,
    // Config.
    NoCluster,
    // The cluster refused to take more (circuit breaking, bounded queueing).
    NoHealthyEndpoints,
    CircuitOpen,
    QueueTimeout,
    // The upstream.
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    ResolveFailed,
    TlsFailed,
    UpstreamReset,
    UpstreamProtocol,
    Timeout,
}

impl ErrorKind {
    /// The fixed label: `x-spoke-error`, the `kind` metric label, the access event.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::TooManyHeaders => "too_many_headers",
            ErrorKind::HeaderTimeout => "header_timeout",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NoCluster => "no_cluster",
            ErrorKind::NoHealthyEndpoints => "no_healthy_endpoints",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::ResolveFailed => "resolve_failed",
            ErrorKind::TlsFailed => "tls_failed",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::Timeout => "timeout",
        }
    }

    /// The status of a response the proxy makes for this error.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::HeadersTooLarge | ErrorKind::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ErrorKind::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
            ErrorKind::NoCluster
            | ErrorKind::NoHealthyEndpoints
            | ErrorKind::CircuitOpen
            | ErrorKind::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout | ErrorKind::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ConnectRefused
            | ErrorKind::ConnectError
            | ErrorKind::ResolveFailed
            | ErrorKind::TlsFailed
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
        }
    }

    /// The request never reached the endpoint: another endpoint may always be tried.
    pub const fn is_connect_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectRefused
                | ErrorKind::ConnectTimeout
                | ErrorKind::ConnectError
                | ErrorKind::ResolveFailed
                | ErrorKind::TlsFailed
        )
    }

    /// Counts against the endpoint it happened with (outlier detection): it failed to
    /// connect, broke the exchange, or did not answer in time.
    pub const fn is_endpoint_failure(self) -> bool {
        self.is_connect_failure()
            || matches!(
                self,
                ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol | ErrorKind::Timeout
            )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connection refused by {endpoint}")]
    ConnectRefused { endpoint: String },
    #[error("connect to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("connect to {endpoint} failed: {source}")]
    ConnectFailed {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve {endpoint}: {reason}")]
    Resolve { endpoint: String, reason: String },
    #[error("cluster {cluster} has no healthy endpoints")]
    NoHealthyEndpoints { cluster: String },
    #[error("cluster {cluster} is not in the current config")]
    UnknownCluster { cluster: String },
    #[error("TLS to {endpoint} failed: {reason}")]
    TlsFailed { endpoint: String, reason: String },
    #[error("cluster {cluster} is over its {limit} limit")]
    CircuitOpen {
        cluster: String,
        limit: &'static str,
    },
    #[error("no connection to cluster {cluster} within the queue timeout")]
    QueueTimeout { cluster: String },
    #[error("{endpoint} does not speak HTTP/2: it {reason}")]
    Http2Refused {
        endpoint: String,
        reason: &'static str,
    },
}

impl ProxyError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::ConnectRefused { .. } => ErrorKind::ConnectRefused,
            ProxyError::ConnectTimeout { .. } => ErrorKind::ConnectTimeout,
            ProxyError::ConnectFailed { .. } => ErrorKind::ConnectError,
            ProxyError::Resolve { .. } => ErrorKind::ResolveFailed,
            ProxyError::NoHealthyEndpoints { .. } => ErrorKind::NoHealthyEndpoints,
            ProxyError::UnknownCluster { .. } => ErrorKind::NoCluster,
            ProxyError::TlsFailed { .. } => ErrorKind::TlsFailed,
            ProxyError::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            ProxyError::QueueTimeout { .. } => ErrorKind::QueueTimeout,
            ProxyError::Http2Refused { .. } => ErrorKind::UpstreamProtocol,
        }
    }

    /// Whether trying another endpoint could help.
    pub fn is_connect_failure(&self) -> bool {
        self.kind().is_connect_failure()
    }

    pub fn from_connect(endpoint: String, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ProxyError::ConnectRefused { endpoint },
            io::ErrorKind::TimedOut => ProxyError::ConnectTimeout { endpoint },
            _ => ProxyError::ConnectFailed {
                endpoint,
                source: e,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_fixed_labels() {
        let e = ProxyError::from_connect("a".into(), io::ErrorKind::ConnectionRefused.into());
        assert_eq!(e.kind().label(), "connect_refused");
        let e = ProxyError::from_connect("a".into(), io::ErrorKind::TimedOut.into());
        assert_eq!(e.kind(), ErrorKind::ConnectTimeout);
        assert_eq!(e.kind().status(), StatusCode::GATEWAY_TIMEOUT);
        let e = ProxyError::from_connect("a".into(), io::ErrorKind::HostUnreachable.into());
        assert_eq!(e.kind().label(), "connect_error");
        assert!(e.is_connect_failure());
        assert!(!ErrorKind::CircuitOpen.is_endpoint_failure());
        assert_eq!(
            ErrorKind::CircuitOpen.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(ErrorKind::UpstreamReset.is_endpoint_failure());
    }
}
