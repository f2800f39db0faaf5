//! Errors of the data plane and the one place that classifies them into kinds. A kind is
//! a fixed string used alike by metrics labels, log events and the `x-spoke-error` header.

use std::io;

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
}

impl ProxyError {
    /// The error's kind: a fixed label from a small closed set.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::ConnectRefused { .. } => "connect_refused",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::ConnectFailed { .. } => "connect_error",
            ProxyError::Resolve { .. } => "resolve_failed",
            ProxyError::NoHealthyEndpoints { .. } => "no_healthy_endpoints",
            ProxyError::UnknownCluster { .. } => "no_cluster",
            ProxyError::TlsFailed { .. } => "tls_failed",
        }
    }

    /// Whether trying another endpoint could help.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectRefused { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::ConnectFailed { .. }
                | ProxyError::Resolve { .. }
                | ProxyError::TlsFailed { .. }
        )
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
        assert_eq!(e.kind(), "connect_refused");
        let e = ProxyError::from_connect("a".into(), io::ErrorKind::TimedOut.into());
        assert_eq!(e.kind(), "connect_timeout");
        let e = ProxyError::from_connect("a".into(), io::ErrorKind::HostUnreachable.into());
        assert_eq!(e.kind(), "connect_error");
        assert!(e.is_connect_failure());
    }
}
