//! The Kubernetes-to-mesh mapping on objects in the API's own JSON shape.

use super::*;
use serde_json::json;

fn objects(endpoints: serde_json::Value, pods: &[(&str, &str)]) -> Objects {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "backend", "namespace": "default", "resourceVersion": "1" },
        "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                  "ports": [ { "name": "http", "port": 8080, "protocol": "TCP", "targetPort": 9090 },
                             { "name": "db", "port": 5432, "protocol": "TCP", "targetPort": 5432 },
                             { "name": "dns", "port": 53, "protocol": "UDP" } ] }
    }))
    .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": { "name": "backend-abc", "namespace": "default", "resourceVersion": "2",
                      "labels": { "kubernetes.io/service-name": "backend" } },
        "ports": [ { "name": "http", "port": 9090, "protocol": "TCP" },
                   { "name": "db", "port": 5432, "protocol": "TCP" } ],
        "endpoints": endpoints
    }))
    .unwrap();
    Objects {
        services: [("default/backend".to_string(), svc)].into(),
        slices: [("default/backend-abc".to_string(), slice)].into(),
        pods: pods
            .iter()
            .map(|(p, sa)| (format!("default/{p}"), sa.to_string()))
            .collect(),
    }
}

fn ep(ip: &str, pod: &str, ready: bool, terminating: bool) -> serde_json::Value {
    json!({ "addresses": [ip], "conditions": { "ready": ready, "serving": ready, "terminating": terminating },
            "targetRef": { "kind": "Pod", "namespace": "default", "name": pod } })
}

#[test]
fn each_tcp_port_is_a_cluster_with_its_vip() {
    let o = objects(
        json!([ep("10.1.0.7", "b-0", true, false)]),
        &[("b-0", "backend")],
    );
    let v = build(&o, "cluster.local");
    let names: Vec<_> = v.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["backend.default.svc:8080", "backend.default.svc:5432"]
    );
    assert_eq!(v.services.len(), 2);
    assert_eq!(v.services[0].vip, "10.96.0.20:8080");
    assert_eq!(v.services[0].protocol, Some(raw::Protocol::Http));
    assert_eq!(v.services[1].protocol, Some(raw::Protocol::Auto));
    let c = &v.clusters[0];
    assert_eq!(c.endpoints[0].address, "10.1.0.7:9090");
    assert_eq!(
        c.tls.as_ref().unwrap().identity,
        "spiffe://cluster.local/ns/default/sa/backend"
    );
    crate::config::validate(&v).unwrap();
}

#[test]
fn ports_declared_tcp_are_opaque() {
    let mut o = objects(
        json!([ep("10.1.0.7", "b-0", true, false)]),
        &[("b-0", "backend")],
    );
    let svc = o.services.get_mut("default/backend").unwrap();
    let ports = svc.spec.as_mut().unwrap().ports.as_mut().unwrap();
    ports[1].app_protocol = Some("opaque".into());
    ports[0].app_protocol = Some("tcp".into());
    let v = build(&o, "cluster.local");
    assert_eq!(v.services[0].protocol, Some(raw::Protocol::Opaque));
    assert_eq!(v.services[1].protocol, Some(raw::Protocol::Opaque));
    // The callee's side too: its pods' ports (the slice's) for the cluster's identity.
    assert_eq!(v.workloads.len(), 1);
    let w = &v.workloads[0];
    assert_eq!(w.identity, "spiffe://cluster.local/ns/default/sa/backend");
    let ports: Vec<_> = w.inbound.iter().map(|p| (p.port, p.protocol)).collect();
    let opaque = Some(raw::Protocol::Opaque);
    assert_eq!(ports, [(5432, opaque), (9090, opaque)]);
    crate::config::validate(&v).unwrap();
}

#[test]
fn not_ready_and_terminating_endpoints_are_left_out() {
    let o = objects(
        json!([
            ep("10.1.0.7", "b-0", true, false),
            ep("10.1.0.8", "b-1", false, false),
            ep("10.1.0.9", "b-2", false, true),
            { "addresses": ["10.1.0.10"] }
        ]),
        &[("b-0", "backend"), ("b-1", "backend"), ("b-2", "backend")],
    );
    let v = build(&o, "cluster.local");
    let addrs: Vec<_> = v.clusters[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    // No targetRef: an endpoint of no known pod is not sent under the pods' identity.
    assert_eq!(addrs, ["10.1.0.7:9090"]);
}

#[test]
fn differing_service_accounts_keep_the_most_common_one() {
    let o = objects(
        json!([
            ep("10.1.0.7", "b-0", true, false),
            ep("10.1.0.8", "b-1", true, false),
            ep("10.1.0.9", "x-0", true, false)
        ]),
        &[("b-0", "backend"), ("b-1", "backend"), ("x-0", "intruder")],
    );
    let v = build(&o, "td.example");
    let c = &v.clusters[0];
    assert_eq!(
        c.tls.as_ref().unwrap().identity,
        "spiffe://td.example/ns/default/sa/backend"
    );
    assert_eq!(c.endpoints.len(), 2);
}

#[test]
fn endpoints_of_unknown_pods_make_a_plaintext_cluster() {
    let o = objects(json!([ep("10.1.0.7", "gone", true, false)]), &[]);
    let v = build(&o, "cluster.local");
    assert!(v.clusters[0].tls.is_none());
    assert_eq!(v.clusters[0].endpoints.len(), 1);
}

#[test]
fn headless_services_are_skipped() {
    let mut o = objects(json!([]), &[]);
    for s in o.services.values_mut() {
        let spec = s.spec.as_mut().unwrap();
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
    }
    let v = build(&o, "cluster.local");
    assert!(v.clusters.is_empty() && v.services.is_empty());
}
