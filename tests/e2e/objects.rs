//! The Kubernetes objects of the end-to-end test, in the API's JSON shapes: the pods as the
//! real `spoke inject` makes them (with the status a kubelet would add), the Service
//! `backend` and its EndpointSlice, B's policy for the control plane's directory, and the
//! target Kubernetes SD would make of a pod.

use serde_json::{json, Value};

pub const VIP: &str = "10.96.0.20";
pub const NS: &str = "default";
pub const SLICE: &str = "backend-7xk2p";

/// A pod of the test: its name, ServiceAccount, app label, host number on the bridge and
/// the apps it runs.
pub struct PodSpec {
    pub name: &'static str,
    pub sa: &'static str,
    pub n: u8,
    pub apps: &'static [&'static str],
}

pub const PODS: [PodSpec; 4] = [
    PodSpec {
        name: "web",
        sa: "web",
        n: 2,
        apps: &["http:8080:web"],
    },
    PodSpec {
        name: "backend-1",
        sa: "backend",
        n: 3,
        apps: &["http:8080:backend-1", "banner:3306:backend-1"],
    },
    PodSpec {
        name: "backend-2",
        sa: "backend",
        n: 4,
        apps: &["http:8080:backend-2", "banner:3306:backend-2"],
    },
    PodSpec {
        name: "other",
        sa: "other",
        n: 5,
        apps: &["http:8080:other"],
    },
];

fn manifest(name: &str, sa: &str) -> String {
    let app = name.split('-').next().unwrap();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels: {{ app: {app} }}\n\
         spec:\n  serviceAccountName: {sa}\n  containers:\n    - name: app\n      image: registry.example/{app}:1\n      \
         ports: [ {{ name: http, containerPort: 8080, protocol: TCP }} ]\n"
    )
}

/// `pod` as the kubelet reports it once running at `ip` on the node `host`.
fn running(mut pod: Value, ip: &str, host: &str) -> Value {
    pod["spec"]["nodeName"] = json!("node-1");
    pod["status"] = json!({
        "phase": "Running",
        "conditions": [ { "type": "Ready", "status": "True", "lastProbeTime": null,
                          "lastTransitionTime": "2026-01-01T00:00:05Z" } ],
        "hostIP": host, "hostIPs": [ { "ip": host } ],
        "podIP": ip, "podIPs": [ { "ip": ip } ],
        "startTime": "2026-01-01T00:00:00Z",
        "qosClass": "Burstable"
    });
    pod
}

/// The pod as `spoke inject` makes it (control plane at `control`), running at `ip`.
pub fn injected_pod(p: &PodSpec, ip: &str, host: &str, control: &str) -> Value {
    let out = crate::support::spoke_with_stdin(
        &["inject", "--control-address", control],
        &manifest(p.name, p.sa),
    );
    assert!(out.status.success(), "spoke inject: {out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    running(serde_saphyr::from_str(&yaml).unwrap(), ip, host)
}

/// A pod without the sidecar (`legacy`, never injected) at `ip`: only served, never run.
/// Prometheus must leave it out.
pub fn plain_pod(ip: &str, host: &str) -> Value {
    let pod: Value = serde_saphyr::from_str(&manifest("legacy", "default")).unwrap();
    running(pod, ip, host)
}

/// The Service `backend`: HTTP on port 80 (to the pods' 8080) and a `tcp-` port (opaque).
pub fn backend_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "backend", "namespace": NS, "labels": { "app": "backend" } },
        "spec": {
            "type": "ClusterIP", "clusterIP": VIP, "clusterIPs": [VIP],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": { "app": "backend" }, "sessionAffinity": "None",
            "ports": [
                { "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" },
                { "name": "tcp-db", "port": 3306, "targetPort": 3306, "protocol": "TCP" }
            ]
        },
        "status": { "loadBalancer": {} }
    })
}

fn endpoint(ip: &str, pod: &str) -> Value {
    json!({
        "addresses": [ip],
        "conditions": { "ready": true, "serving": true, "terminating": false },
        "nodeName": "node-1",
        "targetRef": { "kind": "Pod", "namespace": NS, "name": pod }
    })
}

/// The EndpointSlice of `backend` with one endpoint per backend pod.
pub fn backend_slice(subnet: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": SLICE, "namespace": NS, "generateName": "backend-",
            "labels": { "kubernetes.io/service-name": "backend",
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io" }
        },
        "addressType": "IPv4",
        "ports": [ { "name": "http", "port": 8080, "protocol": "TCP" },
                   { "name": "tcp-db", "port": 3306, "protocol": "TCP" } ],
        "endpoints": [
            endpoint(&format!("{subnet}.3"), "backend-1"),
            endpoint(&format!("{subnet}.4"), "backend-2")
        ]
    })
}

/// The test's objects as the lists `kube_api::check_shapes` reads.
pub fn write_lists(dir: &std::path::Path, pods: &[Value], service: &Value, slice: &Value) {
    for (file, kind, items) in [
        ("pods.json", "PodList", pods.to_vec()),
        ("services.json", "ServiceList", vec![service.clone()]),
        (
            "endpointslices.json",
            "EndpointSliceList",
            vec![slice.clone()],
        ),
    ] {
        let version = items[0]["apiVersion"].clone();
        let list = json!({ "kind": kind, "apiVersion": version, "metadata": {}, "items": items });
        std::fs::write(dir.join(file), list.to_string()).unwrap();
    }
}

/// B's policy: only `web` may call its HTTP port. Its `tcp-db` port has no entry: the
/// control plane makes it opaque on B's side from the Service.
pub const MESH: &str =
    "workloads:\n  - identity: spiffe://cluster.local/ns/default/sa/backend\n    inbound:\n      \
    - { port: 8080, tls: strict, allow: [ spiffe://cluster.local/ns/default/sa/web ] }\n";

/// The container `name`'s args in an injected pod (init containers first).
pub fn args(pod: &Value, name: &str) -> Vec<String> {
    let spec = &pod["spec"];
    let all = [&spec["initContainers"], &spec["containers"]];
    let c = all
        .iter()
        .filter_map(|l| l.as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod}"));
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The target Kubernetes SD (role pod) makes of an injected pod's app port, with the meta
/// labels the deploy config's relabelling reads.
pub fn sd_labels(pod: &Value) -> Value {
    let m = &pod["metadata"];
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let labels = [
        ("__meta_kubernetes_namespace", &m["namespace"]),
        ("__meta_kubernetes_pod_name", &m["name"]),
        ("__meta_kubernetes_pod_ip", &pod["status"]["podIP"]),
        ("__meta_kubernetes_pod_phase", &pod["status"]["phase"]),
        ("__meta_kubernetes_pod_label_app", &m["labels"]["app"]),
        (
            "__meta_kubernetes_pod_annotation_spoke_dev_status",
            &m["annotations"]["spoke.dev/status"],
        ),
    ];
    // As Kubernetes SD, no label for what the pod does not have.
    let labels: serde_json::Map<String, Value> = labels
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!({ "targets": [format!("{ip}:8080")], "labels": labels })
}
