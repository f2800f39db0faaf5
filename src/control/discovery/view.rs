//! What Kubernetes objects become in the mesh: a pure function from the watched Services,
//! EndpointSlices and pods' ServiceAccounts to clusters and services, so the mapping is
//! tested without any API server. One cluster per Service port, named
//! `<service>.<namespace>.svc:<port>`; its VIPs are the Service's cluster IPs at that port.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use crate::config::raw;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cluster's objects as last listed/watched, keyed by `namespace/name`.
#[derive(Default, Clone)]
pub struct Objects {
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    /// A pod's ServiceAccount name (only that is kept of a pod).
    pub pods: HashMap<String, String>,
}

/// The cluster name of one Service port.
pub fn cluster_name(service: &str, namespace: &str, port: i32) -> String {
    format!("{service}.{namespace}.svc:{port}")
}

/// The SPIFFE ID of a ServiceAccount.
pub fn identity(trust_domain: &str, namespace: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

/// Builds the Kubernetes part of the mesh: clusters and services, in a stable order.
pub fn build(objects: &Objects, trust_domain: &str) -> raw::File {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in objects.slices.values() {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let mut out = raw::File::default();
    for svc in objects.services.values() {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        // Headless and ExternalName Services have no VIP to capture: nothing to route.
        let vips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .fold(Vec::new(), |mut v, ip| {
                if !v.contains(&ip) {
                    v.push(ip);
                }
                v
            });
        if vips.is_empty() {
            continue;
        }
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for port in spec.ports.iter().flatten() {
            // Only TCP carries meshed traffic; a port out of range is bad input, skipped.
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") || number == 0 {
                continue;
            }
            let cluster = cluster_name(name, ns, port.port);
            let c = port_cluster(&cluster, port, slices, objects, trust_domain);
            if protocol(port) == raw::Protocol::Opaque {
                opaque_inbound(&mut out.workloads, &c);
            }
            out.clusters.push(Arc::new(c));
            for ip in &vips {
                out.services.push(raw::Service {
                    vip: SocketAddr::new(*ip, number).to_string(),
                    cluster: cluster.clone(),
                    protocol: Some(protocol(port)),
                });
            }
        }
    }
    for w in &mut out.workloads {
        w.inbound.sort_by_key(|p| p.port);
    }
    out.workloads.sort_by(|a, b| a.identity.cmp(&b.identity));
    out
}

/// A port declared opaque is opaque on the callee's side too: each identity behind the
/// cluster gets an inbound entry for its pods' port that sets only the protocol, so its
/// sidecar hands the connection to the app at once instead of waiting to detect a protocol
/// whose server speaks first. (`state::merge` adds these to the mesh's workloads only
/// where they change nothing else.)
fn opaque_inbound(workloads: &mut Vec<raw::Workload>, c: &raw::Cluster) {
    let Some(tls) = &c.tls else {
        return;
    };
    for e in &c.endpoints {
        let Ok(addr) = e.address.parse::<SocketAddr>() else {
            continue;
        };
        let i = match workloads.iter().position(|w| w.identity == tls.identity) {
            Some(i) => i,
            None => {
                workloads.push(raw::Workload {
                    identity: tls.identity.clone(),
                    inbound: Vec::new(),
                });
                workloads.len() - 1
            }
        };
        let w = &mut workloads[i];
        if !w.inbound.iter().any(|p| p.port == addr.port()) {
            w.inbound.push(raw::InboundPort {
                port: addr.port(),
                protocol: Some(raw::Protocol::Opaque),
                ..Default::default()
            });
        }
    }
}

/// `http` for ports declared HTTP or gRPC (appProtocol, else the port name's prefix, the
/// convention Istio uses); `opaque` for ports declared `tcp` (or `opaque`), so a protocol
/// whose server speaks first (MySQL, SMTP) gets its banner through at once instead of
/// waiting out protocol detection; else `auto` (sniffed).
fn protocol(port: &ServicePort) -> raw::Protocol {
    let declared = port
        .app_protocol
        .as_deref()
        .or(port.name.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    let head = declared.split('-').next().unwrap_or("");
    match head {
        "http" | "http2" | "grpc" | "h2c" | "kubernetes.io/h2c" | "grpc-web" => raw::Protocol::Http,
        "tcp" | "opaque" => raw::Protocol::Opaque,
        _ => raw::Protocol::Auto,
    }
}

/// One ready endpoint: where to dial and who should answer.
struct Ready {
    address: String,
    identity: Option<String>,
}

fn port_cluster(
    cluster: &str,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    objects: &Objects,
    td: &str,
) -> raw::Cluster {
    let mut ready = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(target) = slice_port(slice.ports.as_deref().unwrap_or(&[]), port) else {
            continue;
        };
        for ep in slice.endpoints.iter().filter(|e| is_ready(e)) {
            let id = pod_identity(ep, slice, objects, td);
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    ready.push(Ready {
                        address: SocketAddr::new(ip, target).to_string(),
                        identity: id.clone(),
                    });
                }
            }
        }
    }
    ready.sort_by(|a, b| a.address.cmp(&b.address));
    ready.dedup_by(|a, b| a.address == b.address);
    let identity = common_identity(&ready);
    if let Some(id) = &identity {
        let before = ready.len();
        ready.retain(|r| r.identity.as_deref() == Some(id.as_str()));
        if ready.len() < before {
            tracing::warn!(cluster, identity = %id, left_out = before - ready.len(), "endpoints of one Service port run as different ServiceAccounts; only the most common one's are used");
        }
    }
    raw::Cluster {
        name: cluster.to_string(),
        tls: identity.map(|identity| raw::ClusterTls { identity }),
        endpoints: ready
            .into_iter()
            .map(|r| raw::Endpoint {
                address: r.address,
                weight: None,
                priority: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// The slice's port for a Service port: matched by name (both empty when unnamed).
fn slice_port(ports: &[EndpointPort], svc: &ServicePort) -> Option<u16> {
    let want = svc.name.as_deref().unwrap_or("");
    ports
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == want)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Ready and not terminating. The API says an unset `ready` means ready; terminating
/// endpoints are left out so that the sidecars stop sending them new requests (drain).
fn is_ready(ep: &Endpoint) -> bool {
    let c = ep.conditions.as_ref();
    c.and_then(|c| c.ready).unwrap_or(true) && !c.and_then(|c| c.terminating).unwrap_or(false)
}

fn pod_identity(
    ep: &Endpoint,
    slice: &EndpointSlice,
    objects: &Objects,
    td: &str,
) -> Option<String> {
    let r = ep.target_ref.as_ref()?;
    if r.kind.as_deref() != Some("Pod") {
        return None;
    }
    let ns = r
        .namespace
        .as_deref()
        .or(slice.metadata.namespace.as_deref())
        .unwrap_or("default");
    let sa = objects.pods.get(&format!("{ns}/{}", r.name.as_deref()?))?;
    Some(identity(td, ns, sa))
}

/// The identity most ready endpoints share (ties broken by name, so the choice is stable);
/// `None` when no endpoint's pod is known, and the cluster is then plaintext.
fn common_identity(ready: &[Ready]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in ready {
        if let Some(id) = &r.identity {
            *counts.entry(id).or_default() += 1;
        }
    }
    let best = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(id, _)| id.to_string())
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
