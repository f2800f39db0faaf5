//! Validation of `clusters:`: endpoints (weights, failover priorities), the balancer and
//! its hash key, circuit breaker limits, outlier detection, active health checks and the
//! queue timeout.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::model::*;
use super::raw;
use super::validate::{endpoint_addr, Errors};

pub(super) fn clusters<'a>(
    e: &mut Errors,
    raw: impl ExactSizeIterator<Item = &'a raw::Cluster>,
) -> Vec<Arc<Cluster>> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, c) in raw.enumerate() {
        let p = format!("clusters[{i}]");
        e.name(&format!("{p}.name"), &c.name);
        if !names.insert(c.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("{:?} is defined twice", c.name),
            );
        }
        let tls = c
            .tls
            .as_ref()
            .and_then(|t| e.identity(&format!("{p}.tls.identity"), &t.identity));
        let connect_timeout = e.duration(
            &format!("{p}.connect_timeout"),
            &c.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        if connect_timeout.is_zero() {
            e.push(format!("{p}.connect_timeout"), "must be more than 0");
        }
        let connect_attempts = c.connect_attempts.unwrap_or(DEFAULT_CONNECT_ATTEMPTS);
        if !(1..=10).contains(&connect_attempts) {
            e.push(
                format!("{p}.connect_attempts"),
                format!("{connect_attempts} is not between 1 and 10"),
            );
        }
        let lb = c.lb.unwrap_or_default();
        let queue_timeout = e.duration(
            &format!("{p}.queue_timeout"),
            &c.queue_timeout,
            DEFAULT_QUEUE_TIMEOUT,
        );
        out.push(Arc::new(Cluster {
            name: c.name.clone(),
            lb,
            tls,
            connect_timeout,
            connect_attempts,
            endpoints: endpoints(e, &p, &c.endpoints),
            circuit_breaker: circuit_breaker(e, &p, c.circuit_breaker.as_ref()),
            outlier_detection: outlier(e, &p, c.outlier_detection.as_ref()),
            hash_on: hash_on(e, &p, lb, c.ring_hash.as_ref()),
            health_check: c
                .health_check
                .as_ref()
                .map(|h| health_check(e, &format!("{p}.health_check"), h)),
            queue_timeout,
        }));
    }
    out
}

fn endpoints(e: &mut Errors, p: &str, raw: &[raw::Endpoint]) -> Vec<Endpoint> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (j, ep) in raw.iter().enumerate() {
        let ep_path = format!("{p}.endpoints[{j}]");
        let weight = ep.weight.unwrap_or(1);
        if !(1..=10_000).contains(&weight) {
            e.push(
                format!("{ep_path}.weight"),
                format!("{weight} is not between 1 and 10000"),
            );
        }
        let priority = ep.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            e.push(
                format!("{ep_path}.priority"),
                format!("{priority} is more than {MAX_PRIORITY}"),
            );
        }
        match endpoint_addr(&ep.address) {
            Some(address) => {
                if !seen.insert(address.clone()) {
                    e.push(
                        format!("{ep_path}.address"),
                        format!("{:?} is listed twice", ep.address),
                    );
                }
                out.push(Endpoint {
                    address,
                    weight,
                    priority: priority.min(MAX_PRIORITY),
                });
            }
            None => e.push(
                format!("{ep_path}.address"),
                format!("{:?} is not host:port", ep.address),
            ),
        }
    }
    out
}

fn circuit_breaker(e: &mut Errors, p: &str, raw: Option<&raw::CircuitBreaker>) -> CircuitBreaker {
    let d = CircuitBreaker::default();
    let Some(cb) = raw else { return d };
    let mut get = |field: &str, v: Option<u32>, def: u32| {
        let v = v.unwrap_or(def);
        if v == 0 {
            e.push(
                format!("{p}.circuit_breaker.{field}"),
                "must be more than 0",
            );
        }
        v
    };
    CircuitBreaker {
        max_connections: get("max_connections", cb.max_connections, d.max_connections),
        max_pending: get("max_pending", cb.max_pending, d.max_pending),
        max_requests: get("max_requests", cb.max_requests, d.max_requests),
        max_retries: get("max_retries", cb.max_retries, d.max_retries),
    }
}

fn outlier(e: &mut Errors, p: &str, raw: Option<&raw::OutlierDetection>) -> OutlierDetection {
    let d = OutlierDetection::default();
    let Some(o) = raw else { return d };
    let pct = o.max_ejection_percent.unwrap_or(d.max_ejection_percent);
    if pct > 100 {
        e.push(
            format!("{p}.outlier_detection.max_ejection_percent"),
            format!("{pct} is more than 100"),
        );
    }
    // Off unless set: an app's 500s are answers, not outages; gateway errors are.
    let consecutive_5xx = o.consecutive_5xx.unwrap_or(d.consecutive_5xx);
    let base_ejection = e.duration(
        &format!("{p}.outlier_detection.base_ejection"),
        &o.base_ejection,
        d.base_ejection,
    );
    if base_ejection.is_zero() {
        e.push(
            format!("{p}.outlier_detection.base_ejection"),
            "must be more than 0",
        );
    }
    let max_ejection = e.duration(
        &format!("{p}.outlier_detection.max_ejection"),
        &o.max_ejection,
        d.max_ejection.max(base_ejection),
    );
    if max_ejection < base_ejection {
        e.push(
            format!("{p}.outlier_detection.max_ejection"),
            "must not be less than base_ejection",
        );
    }
    OutlierDetection {
        consecutive_5xx,
        consecutive_gateway_errors: o
            .consecutive_gateway_errors
            .unwrap_or(d.consecutive_gateway_errors),
        base_ejection,
        max_ejection,
        max_ejection_percent: pct.min(100),
    }
}

fn hash_on(e: &mut Errors, p: &str, lb: Lb, raw: Option<&raw::RingHash>) -> HashOn {
    let Some(r) = raw else {
        return HashOn::SourceIp;
    };
    if lb != Lb::RingHash {
        e.push(format!("{p}.ring_hash"), "needs lb: ring_hash");
    }
    match (&r.header, &r.cookie, r.source_ip) {
        (Some(h), None, None | Some(false)) => {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                e.push(
                    format!("{p}.ring_hash.header"),
                    format!("{h:?} is not a header name"),
                );
            }
            HashOn::Header(h.to_ascii_lowercase())
        }
        (None, Some(c), None | Some(false)) if !c.is_empty() => HashOn::Cookie(c.clone()),
        (None, None, _) => HashOn::SourceIp,
        _ => {
            e.push(
                format!("{p}.ring_hash"),
                "takes one of header, cookie or source_ip",
            );
            HashOn::SourceIp
        }
    }
}

fn health_check(e: &mut Errors, p: &str, h: &raw::HealthCheck) -> HealthCheck {
    if let Some(path) = &h.http {
        if !path.starts_with('/') {
            e.push(format!("{p}.http"), format!("{path:?} must start with /"));
        }
    }
    for (i, s) in h.expected_statuses.iter().enumerate() {
        if !(100..=599).contains(s) {
            e.push(
                format!("{p}.expected_statuses[{i}]"),
                format!("{s} is not an HTTP status"),
            );
        }
    }
    let interval = e.duration(
        &format!("{p}.interval"),
        &h.interval,
        Duration::from_secs(5),
    );
    let timeout = e.duration(&format!("{p}.timeout"), &h.timeout, Duration::from_secs(1));
    if interval < Duration::from_millis(10) {
        e.push(format!("{p}.interval"), "must be at least 10ms");
    }
    if timeout.is_zero() {
        e.push(format!("{p}.timeout"), "must be more than 0");
    }
    let mut threshold = |field: &str, v: Option<u32>, def: u32| {
        let v = v.unwrap_or(def);
        if v == 0 {
            e.push(format!("{p}.{field}"), "must be more than 0");
        }
        v.max(1)
    };
    HealthCheck {
        http: h.http.clone(),
        expected: if h.expected_statuses.is_empty() {
            vec![(200, 399)]
        } else {
            h.expected_statuses.iter().map(|s| (*s, *s)).collect()
        },
        interval,
        timeout,
        healthy: threshold("healthy", h.healthy, 2),
        unhealthy: threshold("unhealthy", h.unhealthy, 3),
    }
}
