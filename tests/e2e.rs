//! Issue 10's end-to-end test, as root: a control plane discovering pods from the test
//! Kubernetes API server (`support/kube_api.rs`), and pods as network namespaces on a
//! bridge on the host (`support/lab.rs`), each made by the real `spoke inject` (the pod
//! objects the API server serves are its output), running a small app, the capture rules
//! of its injected init step (`spoke redirect`) and its injected sidecar as uid 1337 with
//! a ServiceAccount token checked by TokenReview.
//!
//! It shows: a plain HTTP call to a Service VIP is captured and crosses the bridge as TLS
//! only (tcpdump on the bridge); the app behind it sees the caller's identity; a pod the
//! policy leaves out is denied; a server-speaks-first app works through a port declared
//! `tcp` (opaque); an endpoint taken out of the EndpointSlice gets no new requests; the
//! callee's `/metrics` counts all of it; and a real Prometheus scrapes every sidecar, through
//! `deploy/prometheus/prometheus.yml`'s relabelling.
//!
//! Everything (namespaces, the bridge, processes) is removed when the test ends, failed or
//! not; as another user, or without the tools, it says it was skipped and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_api::{KubeApi, Res};
use serde_json::{json, Value};
use support::lab::{can_run, Lab};
use support::mesh::{get, wait_for, Mesh};
use support::prometheus::{self, Prometheus};

const VIP: &str = "10.96.0.20";
const NS: &str = "default";
const AUDIENCE: &str = "spoke-control";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const CLUSTER: &str = "backend.default.svc:80";

/// A pod of the test: its name, ServiceAccount, app label, host number on the bridge and
/// the apps it runs.
struct PodSpec {
    name: &'static str,
    sa: &'static str,
    n: u8,
    apps: &'static [&'static str],
}

const PODS: [PodSpec; 4] = [
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

/// The pod as `spoke inject` makes it (control plane at `control`), with the status the
/// kubelet would give it at `ip`.
fn injected_pod(p: &PodSpec, ip: &str, host: &str, control: &str) -> Value {
    let app = p.name.split('-').next().unwrap();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {NS}\n  labels: {{ app: {app} }}\n\
         spec:\n  serviceAccountName: {}\n  containers:\n    - name: app\n      image: registry.example/{app}:1\n      \
         ports: [ {{ name: http, containerPort: 8080, protocol: TCP }} ]\n",
        p.name, p.sa
    );
    let out = support::spoke_with_stdin(&["inject", "--control-address", control], &manifest);
    assert!(out.status.success(), "spoke inject: {out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let mut pod: Value = serde_saphyr::from_str(&yaml).unwrap();
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

/// The Service `backend`: HTTP on port 80 (to the pods' 8080) and a `tcp-` port (opaque).
fn backend_service() -> Value {
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
fn backend_slice(subnet: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "backend-7xk2p", "namespace": NS, "generateName": "backend-",
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
fn write_lists(dir: &std::path::Path, pods: &[Value], service: &Value, slice: &Value) {
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

/// B's policy: only `web` may call it, on both ports (the database port opaque).
const MESH: &str = "workloads:\n  - identity: spiffe://cluster.local/ns/default/sa/backend\n    inbound:\n      \
    - { port: 8080, tls: strict, allow: [ spiffe://cluster.local/ns/default/sa/web ] }\n      \
    - { port: 3306, protocol: opaque, tls: strict, allow: [ spiffe://cluster.local/ns/default/sa/web ] }\n";

/// The container `name`'s args in an injected pod (init containers first).
fn args(pod: &Value, name: &str) -> Vec<String> {
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

/// tcpdump on an interface, writing every packet at once to a file.
struct Dump {
    file: std::path::PathBuf,
    child: std::process::Child,
}

impl Dump {
    fn start(interface: &str, file: std::path::PathBuf, filter: &str) -> Dump {
        let log = file.with_extension("log");
        let child = Command::new("tcpdump")
            .args([
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let dump = Dump { file, child };
        wait_for("tcpdump listening", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
        });
        dump
    }

    /// Stops the capture; every byte captured, and what tcpdump said.
    fn stop(mut self) -> (Vec<u8>, String) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.file.with_extension("log")).unwrap_or_default();
        (std::fs::read(&self.file).unwrap(), log)
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The endpoints of `cluster` in the sidecar's config dump (admin on 127.0.0.1:15000).
fn endpoints(lab: &Lab, ns: &str, cluster: &str) -> Vec<String> {
    let out = lab.client(ns, "http", "127.0.0.1", 15000, "/config_dump");
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let d: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    d["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == cluster)
        .and_then(|c| c["endpoints"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect()
}

/// A pod's sidecar metrics, fetched from the host over the bridge (as Prometheus does).
fn pod_metrics(subnet: &str, n: u8) -> String {
    let addr: SocketAddr = format!("{subnet}.{n}:15020").parse().unwrap();
    support::http_blocking_at(addr, "GET", "/metrics")
        .unwrap()
        .1
}

fn inbound(metrics: &str, code: &str) -> f64 {
    let labels = ["cluster=\"inbound:8080\"", &format!("code=\"{code}\"")];
    support::metric(metrics, "spoke_requests_total", &labels).unwrap_or(0.0)
}

/// Everything the test runs; dropping it stops it all (the lab last: namespaces go once
/// their processes have).
struct World {
    lab: Lab,
    api: KubeApi,
    pods: Vec<Value>,
    ns: Vec<String>,
    _control: support::Proc,
    _mesh: Mesh,
    _rt: tokio::runtime::Runtime,
}

fn start_world() -> World {
    let subnet = format!("10.251.{}", std::process::id() % 200 + 20);
    let mut lab = Lab::on_host(&subnet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mesh = Mesh::new();
    mesh.write(MESH);
    let control = format!("{subnet}.1:{}", support::free_port());
    let host = format!("{subnet}.1");
    let pods: Vec<Value> = PODS
        .iter()
        .map(|p| injected_pod(p, &format!("{subnet}.{}", p.n), &host, &control))
        .collect();
    let (service, slice) = (backend_service(), backend_slice(&subnet));
    write_lists(&lab.dir.0, &pods, &service, &slice);
    kube_api::check_shapes("a_mesh_of_pods_discovered_from_kubernetes", &lab.dir.0);
    let mut objects: Vec<(Res, Value)> = pods.iter().map(|p| (Res::Pods, p.clone())).collect();
    objects.push((Res::Services, service));
    objects.push((Res::EndpointSlices, slice));
    let api = rt.block_on(KubeApi::start_with(objects));
    let kc = api.kubeconfig(&mesh.dir.0);
    let control_stats = support::free_port();
    let extra = ["--kubernetes", "--kubeconfig", kc.to_str().unwrap()];
    let proc = mesh.control_on(
        &control,
        control_stats,
        &[&extra[..], &["--token-audience", AUDIENCE]].concat(),
    );
    wait_for("control plane ready", Duration::from_secs(15), || {
        get(control_stats, "/ready").is_some_and(|r| r.0 == 200)
    });
    let root = mesh.ca.join("root.pem");
    let mut ns = Vec::new();
    for (spec, pod) in PODS.iter().zip(&pods) {
        let name = lab.pod(spec.name, spec.n);
        start_pod(&mut lab, &api, &name, spec, pod, &root);
        ns.push(name);
    }
    World {
        lab,
        api,
        pods,
        ns,
        _control: proc,
        _mesh: mesh,
        _rt: rt,
    }
}

/// Runs the pod's injected parts in `ns`: the init step, the app, the sidecar with its
/// projected token (one the test API server's TokenReview knows, for `spoke-control`).
fn start_pod(
    lab: &mut Lab,
    api: &KubeApi,
    ns: &str,
    p: &PodSpec,
    pod: &Value,
    root: &std::path::Path,
) {
    let init = args(pod, "spoke-init");
    assert_eq!(init[0], "redirect", "{init:?}");
    let init: Vec<&str> = init[1..].iter().map(String::as_str).collect();
    let out = lab.redirect(ns, &init);
    assert!(out.status.success(), "spoke redirect: {out:?}");
    lab.apps(ns, p.apps);
    let token = format!("eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl", p.name);
    api.allow_token_for(
        &token,
        &format!("system:serviceaccount:{NS}:{}", p.sa),
        AUDIENCE,
    );
    let token_file = lab.file(&format!("{}.token", p.name), &token);
    let config = pod["metadata"]["annotations"]["spoke.dev/proxy-config"]
        .as_str()
        .unwrap()
        .replace("/var/run/secrets/spoke/token", token_file.to_str().unwrap())
        .replace("/etc/spoke/root.pem", root.to_str().unwrap());
    let proxy = args(pod, "spoke-proxy");
    assert_eq!(proxy[..3], ["proxy", "--config", "/etc/spoke/proxy.yaml"]);
    let extra: Vec<String> = proxy[3..]
        .iter()
        .map(|a| {
            a.replace("$(SPOKE_POD_NAME)", p.name)
                .replace("$(SPOKE_POD_NAMESPACE)", NS)
        })
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    lab.sidecar_with(ns, &config, &extra, Duration::from_secs(20));
}

#[test]
fn a_mesh_of_pods_discovered_from_kubernetes() {
    let test = "a_mesh_of_pods_discovered_from_kubernetes";
    if !can_run(test)
        || !support::need(
            test,
            "tcpdump (apt-get install tcpdump)",
            support::have("tcpdump"),
        )
    {
        return;
    }
    let started = Instant::now();
    let w = start_world();
    let (lab, subnet) = (&w.lab, w.lab.subnet.clone());
    let [web, _, _, other] = [0, 1, 2, 3].map(|i| w.ns[i].clone());
    assert_eq!(
        endpoints(lab, &web, CLUSTER),
        [format!("{subnet}.3:8080"), format!("{subnet}.4:8080")]
    );

    // A calls B's VIP with plain HTTP: captured, over mTLS to a backend pod, whose app sees
    // A's identity. On A's bridge port: a TLS handshake, never the request.
    let dump = Dump::start(
        &lab.port(PODS[0].n),
        lab.dir.0.join("bridge.pcap"),
        "tcp port 8080",
    );
    let marker = format!("/e2e-marker-{}", lab.tag);
    let mut served = [0u32; 2];
    let mut calls = 0;
    while (served[0] == 0 || served[1] == 0) && calls < 40 {
        let got = lab.client(&web, "http", VIP, 80, &marker);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with(&format!("peer={WEB_ID}")), "{got}");
        served[usize::from(got.contains("pod=backend-2"))] += 1;
        calls += 1;
    }
    assert!(
        served[0] > 0 && served[1] > 0,
        "one backend got all {calls}"
    );
    let (wire, said) = dump.stop();
    assert!(
        contains(&wire, &[0x16, 0x03]),
        "no TLS record on the bridge: {said}"
    );
    assert!(
        !contains(&wire, marker.as_bytes()),
        "the request crossed the bridge in plaintext"
    );
    assert!(
        !contains(&wire, b"HTTP/1.1"),
        "HTTP in plaintext on the bridge"
    );

    // C is not in B's policy: denied by B's sidecar, the app never sees it.
    let got = lab.client(&other, "http", VIP, 80, "/");
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");

    // The server speaks first through the opaque (`tcp-`) port: the banner comes at once.
    let start = Instant::now();
    let got = lab.client(&web, "banner", VIP, 3306, "ping");
    assert!(
        got.starts_with("HELLO from backend-") && got.ends_with("\nPING"),
        "{got}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // backend-2 leaves the EndpointSlice: A's sidecar drops it, and it gets no new request.
    w.api.modify(Res::EndpointSlices, NS, "backend-7xk2p", |s| {
        s["endpoints"].as_array_mut().unwrap().truncate(1);
    });
    wait_for("endpoint removed at A", Duration::from_secs(10), || {
        endpoints(lab, &web, CLUSTER) == [format!("{subnet}.3:8080")]
    });
    let before = inbound(&pod_metrics(&subnet, 4), "200");
    for _ in 0..10 {
        let got = lab.client(&web, "http", VIP, 80, "/after");
        assert!(got.contains("pod=backend-1 "), "{got}");
    }
    assert_eq!(inbound(&pod_metrics(&subnet, 4), "200"), before);

    // B's /metrics counts what it served, and the denial.
    let m1 = pod_metrics(&subnet, 3);
    let m2 = pod_metrics(&subnet, 4);
    assert_eq!(inbound(&m1, "200"), f64::from(served[0] + 10), "{m1}");
    assert_eq!(inbound(&m2, "200"), f64::from(served[1]), "{m2}");
    assert_eq!(inbound(&m1, "403") + inbound(&m2, "403"), 1.0, "{m1}\n{m2}");

    scraped_by_prometheus(&w, test);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    eprintln!("{test}: {took:?}");
}

/// A real Prometheus scrapes every sidecar, with the relabelling of
/// `deploy/prometheus/prometheus.yml`: through Kubernetes SD on the test API server when
/// its build has it; else (Debian's build) from static targets carrying the labels
/// Kubernetes SD would give the same pod objects, and the test says so.
fn scraped_by_prometheus(w: &World, test: &str) {
    let found = prometheus::find(&w.lab.dir.0);
    if !support::need(
        test,
        "prometheus (apt-get install prometheus)",
        found.is_some(),
    ) {
        return;
    }
    let found = found.unwrap();
    let deploy =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/prometheus.yml");
    let mut cfg: Value = serde_saphyr::from_str(&std::fs::read_to_string(deploy).unwrap()).unwrap();
    cfg["global"] = json!({ "scrape_interval": "1s", "scrape_timeout": "1s" });
    let jobs = cfg["scrape_configs"].as_array_mut().unwrap();
    jobs.retain(|j| j["job_name"] == "spoke-sidecars");
    let job = &mut jobs[0];
    if found.kubernetes_sd {
        job["kubernetes_sd_configs"][0]["api_server"] = json!(format!("http://{}", w.api.addr));
    } else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "{test}: {} has no Kubernetes service discovery (Debian's build); scraping static \
                 targets with the labels Kubernetes SD gives these pods instead: the kubernetes_sd_configs \
                 part is not checked here (see the README)\n",
                found.bin.display()
            )
            .as_bytes(),
        );
        let obj = job.as_object_mut().unwrap();
        obj.remove("kubernetes_sd_configs");
        let targets: Vec<Value> = w.pods.iter().map(sd_labels).collect();
        obj.insert("static_configs".into(), Value::Array(targets));
    }
    let p = Prometheus::start(&found.bin, &cfg.to_string(), &w.lab.dir.0);
    let up = p.wait_up("spoke-sidecars", PODS.len(), Duration::from_secs(20));
    let mut seen: Vec<(String, String)> = up
        .iter()
        .map(|t| {
            (
                t["labels"]["pod"].as_str().unwrap_or("").to_string(),
                t["scrapeUrl"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = PODS
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                format!("http://{}.{}:15020/metrics", w.lab.subnet, p.n),
            )
        })
        .collect();
    want.sort();
    assert_eq!(seen, want);
    // What it scraped is Spoke's metrics, under the labels the relabelling gives.
    let q = "sum(spoke_requests_total{job=\"spoke-sidecars\",namespace=\"default\",app=\"backend\",cluster=\"inbound:8080\",code=\"403\"})";
    wait_for(
        "the denial counted in prometheus",
        Duration::from_secs(10),
        || p.value(q) == Some(1.0),
    );
}

/// The target Kubernetes SD (role pod) makes of an injected pod's app port, with the meta
/// labels the deploy config's relabelling reads.
fn sd_labels(pod: &Value) -> Value {
    let m = &pod["metadata"];
    let ip = pod["status"]["podIP"].as_str().unwrap();
    json!({
        "targets": [format!("{ip}:8080")],
        "labels": {
            "__meta_kubernetes_namespace": m["namespace"],
            "__meta_kubernetes_pod_name": m["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_phase": pod["status"]["phase"],
            "__meta_kubernetes_pod_label_app": m["labels"]["app"],
            "__meta_kubernetes_pod_annotation_spoke_dev_status": m["annotations"]["spoke.dev/status"],
        }
    })
}
