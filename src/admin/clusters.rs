//! What the balancer knows, for operators: `GET /clusters` (every endpoint with its real
//! state, load, latency estimate, outcome counts and ejections) and the `spoke_endpoints`
//! gauge, refreshed from the same numbers at each scrape.

use serde_json::{json, Value};

use crate::balance::{now_ms, EndpointState};
use crate::snapshot::{ClusterState, Live, Snapshot};

const STATES: [&str; 4] = ["healthy", "ejected", "unhealthy", "draining"];

/// `healthy`, `ejected` (outlier detection), `unhealthy` (active health checks).
fn state(ep: &EndpointState, now: u64) -> &'static str {
    if ep.is_unhealthy() {
        "unhealthy"
    } else if ep.ejected_for(now).is_some() {
        "ejected"
    } else {
        "healthy"
    }
}

fn endpoint(ep: &EndpointState, now: u64, weight: u32, priority: u32, st: &str) -> Value {
    let (ok, failed) = ep.counts();
    json!({
        "address": ep.address.to_string(),
        "weight": weight,
        "priority": priority,
        "state": st,
        "ejected_for_ms": ep.ejected_for(now),
        "times_ejected": ep.times_ejected(),
        "active_requests": ep.active(),
        "latency_ewma_ms": ep.ewma_ns() as f64 / 1e6,
        "successes": ok,
        "failures": failed,
    })
}

fn cluster(c: &ClusterState, now: u64) -> Value {
    // An unused cluster is shown as it would start, without making it live.
    let fresh;
    let live = match c.peek() {
        Some(l) => l,
        None => {
            fresh = Live::fresh(&c.config);
            &fresh
        }
    };
    let mut eps: Vec<Value> = c
        .config
        .endpoints
        .iter()
        .zip(&live.endpoints)
        .map(|(cfg, ep)| endpoint(ep, now, cfg.weight, cfg.priority, state(ep, now)))
        .collect();
    eps.extend(
        live.runtime
            .draining()
            .iter()
            .map(|ep| endpoint(ep, now, 0, 0, "draining")),
    );
    let rt = &live.runtime;
    use crate::balance::Limit::*;
    json!({
        "name": c.config.name,
        "lb": c.config.lb,
        "circuit_breaker": {
            "connections": rt.in_use(Connections),
            "pending": rt.in_use(Pending),
            "requests": rt.in_use(Requests),
            "retries": rt.in_use(Retries),
            "limits": c.config.circuit_breaker,
        },
        "endpoints": eps,
    })
}

/// The `/clusters` document, in config order.
pub fn document(snap: &Snapshot) -> Value {
    let now = now_ms();
    let list: Vec<Value> = snap
        .config
        .clusters
        .iter()
        .filter_map(|c| snap.cluster(&c.name))
        .map(|c| cluster(c, now))
        .collect();
    Value::Array(list)
}

/// Appends the `spoke_endpoints{cluster,state}` family for the current snapshot to a
/// scrape's text, in the exposition format prometheus' encoder writes (clusters in name
/// order). Written here rather than kept as gauge series: four series per cluster, for a
/// sidecar pushed a thousand clusters, held about 2 MiB between scrapes (and 1.4 MiB of
/// allocator pages after being emptied).
pub fn render_endpoints(snap: &Snapshot, out: &mut String) {
    use std::fmt::Write as _;
    let now = now_ms();
    let mut clusters: Vec<_> = snap.clusters().collect();
    if clusters.is_empty() {
        return;
    }
    clusters.sort_unstable_by(|a, b| a.config.name.cmp(&b.config.name));
    out.push_str("# HELP spoke_endpoints ");
    out.push_str(crate::metrics::ENDPOINTS_HELP);
    out.push_str("\n# TYPE spoke_endpoints gauge\n");
    for c in clusters {
        let mut counts = [0usize; 4];
        match c.peek() {
            Some(live) => {
                for ep in &live.endpoints {
                    let s = state(ep, now);
                    if let Some(k) = STATES.iter().position(|x| *x == s) {
                        counts[k] += 1;
                    }
                }
                counts[3] = live.runtime.draining().len();
            }
            // Unused: every endpoint is as it starts, in service.
            None => counts[0] = c.config.endpoints.len(),
        }
        for (s, n) in STATES.iter().zip(counts) {
            out.push_str("spoke_endpoints{cluster=\"");
            escape_label(&c.config.name, out);
            let _ = writeln!(out, "\",state=\"{s}\"}} {n}");
        }
    }
}

/// A label value as the exposition format quotes it.
fn escape_label(v: &str, out: &mut String) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
