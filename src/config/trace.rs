//! The `tracing:` block (sampling ratio, OTLP collector, service name) and the per-listener
//! sampling override, validated into typed values. The tracer itself is `crate::trace`.

use std::time::Duration;

use serde::Serialize;

use super::raw::{self, CollectorProtocol};
use super::validate::{endpoint_addr, Errors};

pub const DEFAULT_SAMPLING: f64 = 0.01;
pub const DEFAULT_COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Validated `tracing:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracing {
    /// Ratio of new traces sampled (a caller's decision always wins).
    pub sampling: f64,
    pub collector: Collector,
    /// The resource's `service.name`.
    pub service_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collector {
    /// `host:port`.
    pub address: String,
    pub protocol: CollectorProtocol,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::duration::format(*d))
}

fn ratio(e: &mut Errors, path: &str, v: f64) -> f64 {
    if (0.0..=1.0).contains(&v) {
        v
    } else {
        e.push(path, format!("{v} is not a ratio from 0.0 to 1.0"));
        0.0
    }
}

/// The top-level block; `None` when tracing is off.
pub(super) fn tracing(e: &mut Errors, f: &raw::File) -> Option<Tracing> {
    let t = f.tracing.as_ref()?;
    let sampling = ratio(
        e,
        "tracing.sampling",
        t.sampling.unwrap_or(DEFAULT_SAMPLING),
    );
    let Some(c) = &t.collector else {
        e.push(
            "tracing.collector",
            "is required: { address: host:port, protocol: grpc | http }",
        );
        return None;
    };
    if endpoint_addr(&c.address).is_none() {
        e.push(
            "tracing.collector.address",
            format!("{:?} is not host:port", c.address),
        );
    }
    let timeout = e.duration(
        "tracing.collector.timeout",
        &c.timeout,
        DEFAULT_COLLECTOR_TIMEOUT,
    );
    if timeout.is_zero() {
        e.push("tracing.collector.timeout", "must be more than 0");
    }
    let service_name = t
        .service_name
        .clone()
        .or_else(|| f.node.as_ref().and_then(|n| n.id.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "spoke".to_string());
    Some(Tracing {
        sampling,
        collector: Collector {
            address: c.address.clone(),
            protocol: c.protocol.unwrap_or_default(),
            timeout,
        },
        service_name,
    })
}

/// A listener's `tracing: { sampling }`.
pub(super) fn listener(
    e: &mut Errors,
    path: &str,
    t: &Option<raw::ListenerTracing>,
) -> Option<f64> {
    let s = t.as_ref()?.sampling?;
    Some(ratio(e, &format!("{path}.tracing.sampling"), s))
}

#[cfg(test)]
mod tests {
    use crate::config::{from_yaml, CollectorProtocol};

    #[test]
    fn tracing_block_and_listener_override() {
        let cfg = from_yaml(
            "node: { id: web-0 }\n\
             tracing: { sampling: 0.5, collector: { address: 127.0.0.1:4318, protocol: http } }\n\
             listeners: [ { name: a, address: 127.0.0.1:0, cluster: c, tracing: { sampling: 1 } } ]\n\
             clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = cfg.tracing.unwrap_or_else(|| panic!("no tracing"));
        assert_eq!(t.sampling, 0.5);
        assert_eq!(t.collector.protocol, CollectorProtocol::Http);
        assert_eq!(t.service_name, "web-0");
        assert_eq!(cfg.listeners[0].trace_sampling, Some(1.0));
    }

    #[test]
    fn bad_tracing_values_have_paths() {
        let Err(e) = from_yaml(
            "tracing: { sampling: 2, collector: { address: nope, timeout: 0s } }\n\
             listeners: [ { name: a, address: 127.0.0.1:0, cluster: c, tracing: { sampling: -1 } } ]\n\
             clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\n",
        ) else {
            panic!("accepted");
        };
        let text = e.to_string();
        for want in [
            "tracing.sampling: 2 is not a ratio",
            "tracing.collector.address: \"nope\" is not host:port",
            "tracing.collector.timeout: must be more than 0",
            "listeners[0].tracing.sampling: -1 is not a ratio",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        let Err(e) = from_yaml("tracing: { sampling: 0.1 }\n") else {
            panic!("accepted");
        };
        assert!(e.to_string().contains("tracing.collector: is required"));
    }
}
