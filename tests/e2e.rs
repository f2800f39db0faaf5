//! Issue 10's end-to-end test, as root: a control plane discovering pods from the test
//! Kubernetes API server (`support/kube_api.rs`), and pods as network namespaces on a
//! bridge the host joins (`support/lab.rs`), each made by the real `spoke inject` (the pod
//! objects the API server serves are its output), running a small app, the capture rules
//! of its injected init step (`spoke redirect`) and its injected sidecar as uid 1337 with
//! a ServiceAccount token checked by TokenReview.
//!
//! It shows: a plain HTTP call to a Service VIP is captured and crosses the bridge as TLS
//! only (tcpdump on the caller's bridge port); the app behind it sees the caller's identity;
//! a pod the policy leaves out is denied; a server-speaks-first app works through a Service
//! port named `tcp-...` (opaque on both sides, with no policy entry for it); an endpoint taken out of the EndpointSlice gets no new requests; the
//! callee's `/metrics` counts all of it; and a real Prometheus scrapes every sidecar, through
//! `deploy/prometheus/prometheus.yml`'s relabelling.
//!
//! Everything (namespaces, the bridge, processes) is removed when the test ends, failed or
//! not; as another user, or without the tools, it says it was skipped and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kube_api.rs"]
mod kube_api;
#[path = "e2e/objects.rs"]
mod objects;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube_api::{KubeApi, Res};
use objects::*;
use serde_json::{json, Value};
use support::dump_endpoints;
use support::lab::{can_run, Lab};
use support::mesh::{get, wait_for, Mesh};
use support::prometheus::{self, Prometheus};
use support::tcpdump::{contains, Dump};

const AUDIENCE: &str = "spoke-control";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const CLUSTER: &str = "backend.default.svc:80";

/// The endpoints of `cluster` in the sidecar's config dump (admin on 127.0.0.1:15000).
fn endpoints(lab: &Lab, ns: &str, cluster: &str) -> Vec<String> {
    let out = lab.client(ns, "http", "127.0.0.1", 15000, "/config_dump");
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let d: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    dump_endpoints(&d, cluster)
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

/// Everything the test runs; dropping it stops it all: the pods (their processes, then
/// their namespaces and the bridge), then the control plane and the API server.
struct World {
    lab: Lab,
    api: KubeApi,
    /// The pod objects served: `PODS`' injected ones, then `legacy` (not injected, not run).
    pods: Vec<Value>,
    /// The pods' namespaces, in `PODS` order.
    ns: Vec<String>,
    control_stats: u16,
    _control: support::Proc,
    _mesh: Mesh,
    _rt: tokio::runtime::Runtime,
}

/// A `10.251.<x>` /24 no interface on the host has yet (from the pid on, so parallel runs
/// start apart).
fn free_subnet() -> String {
    let used = support::lab::run(&["ip", "-4", "-o", "addr"]).stdout;
    let used = String::from_utf8_lossy(&used);
    (0..200)
        .map(|i| format!("10.251.{}", (std::process::id() + i) % 200 + 20))
        .find(|s| !used.contains(&format!(" {s}.")))
        .expect("no free 10.251.x.0/24 on this host")
}

fn start_world() -> World {
    let subnet = free_subnet();
    let mut lab = Lab::on_host(&subnet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mesh = Mesh::new();
    mesh.write(MESH);
    let control = format!("{subnet}.1:{}", support::free_port());
    let host = format!("{subnet}.1");
    let mut pods: Vec<Value> = PODS
        .iter()
        .map(|p| injected_pod(p, &format!("{subnet}.{}", p.n), &host, &control))
        .collect();
    pods.push(plain_pod(&format!("{subnet}.9"), &host));
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
        control_stats,
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
    let tcpdump = support::have("tcpdump");
    if !can_run(test) || !support::need(test, "tcpdump (apt-get install tcpdump)", tcpdump) {
        return;
    }
    let started = Instant::now();
    let w = start_world();
    let subnet = &w.lab.subnet;
    assert_eq!(
        endpoints(&w.lab, &w.ns[0], CLUSTER),
        [format!("{subnet}.3:8080"), format!("{subnet}.4:8080")]
    );
    // Every sidecar's certificate came through a TokenReview of its projected token.
    let control = get(w.control_stats, "/metrics").unwrap().1;
    let reviewed = ["result=\"authenticated\""];
    let reviews = support::metric(&control, "spoke_control_token_reviews_total", &reviewed);
    assert!(reviews >= Some(PODS.len() as f64), "{control}");

    let served = calls_cross_the_bridge_as_tls(&w);
    denied_and_opaque(&w);
    let after = removed_endpoint_gets_no_new_requests(&w);

    // B's /metrics counts what each backend pod served, and the denial.
    let m1 = pod_metrics(subnet, 3);
    let m2 = pod_metrics(subnet, 4);
    assert_eq!(inbound(&m1, "200"), f64::from(served[0] + after), "{m1}");
    assert_eq!(inbound(&m2, "200"), f64::from(served[1]), "{m2}");
    assert_eq!(inbound(&m1, "403") + inbound(&m2, "403"), 1.0, "{m1}\n{m2}");

    scraped_by_prometheus(&w, test);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    eprintln!("{test}: {took:?}");
}

/// A calls B's VIP with plain HTTP until both backend pods have answered: captured, over
/// mTLS to a backend pod, whose app sees A's identity. On A's bridge port: TLS records,
/// never the request. Returns how many calls each backend pod served.
fn calls_cross_the_bridge_as_tls(w: &World) -> [u32; 2] {
    let (lab, web) = (&w.lab, &w.ns[0]);
    let pcap = lab.dir.0.join("bridge.pcap");
    let dump = Dump::start(&lab.switch, &lab.port(PODS[0].n), pcap, "tcp port 8080");
    let marker = format!("/e2e-marker-{}", lab.tag);
    let mut served = [0u32; 2];
    let mut calls = 0;
    while (served[0] == 0 || served[1] == 0) && calls < 40 {
        let got = lab.client(web, "http", VIP, 80, &marker);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with(&format!("peer={WEB_ID}")), "{got}");
        served[usize::from(got.contains("pod=backend-2 "))] += 1;
        calls += 1;
    }
    assert!(
        served[0] > 0 && served[1] > 0,
        "one backend got all {calls}"
    );
    let (wire, said) = dump.stop();
    let tls = contains(&wire, &[0x16, 0x03]);
    assert!(tls, "no TLS handshake record on the bridge: {said}");
    let plain = contains(&wire, marker.as_bytes()) || contains(&wire, b"HTTP/1.1");
    assert!(!plain, "the request crossed the bridge in plaintext");
    served
}

/// C is not in B's policy: B's sidecar answers 403. And a server that speaks first works
/// through the Service's `tcp-` port (opaque): the banner comes at once.
fn denied_and_opaque(w: &World) {
    let (lab, web, other) = (&w.lab, &w.ns[0], &w.ns[3]);
    let got = lab.client(other, "http", VIP, 80, "/");
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    let start = Instant::now();
    let got = lab.client(web, "banner", VIP, 3306, "ping");
    let banner = got.starts_with("HELLO from backend-") && got.ends_with("\nPING");
    assert!(banner, "{got}");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// backend-2 leaves the EndpointSlice: A's sidecar drops it, and the next calls all go to
/// backend-1. Returns how many were made.
fn removed_endpoint_gets_no_new_requests(w: &World) -> u32 {
    let (lab, web, subnet) = (&w.lab, &w.ns[0], &w.lab.subnet);
    w.api.modify(Res::EndpointSlices, NS, SLICE, |s| {
        s["endpoints"].as_array_mut().unwrap().truncate(1);
    });
    wait_for("endpoint removed at A", Duration::from_secs(10), || {
        endpoints(lab, web, CLUSTER) == [format!("{subnet}.3:8080")]
    });
    let before = inbound(&pod_metrics(subnet, 4), "200");
    let calls = 10;
    for _ in 0..calls {
        let got = lab.client(web, "http", VIP, 80, "/after");
        assert!(got.contains("pod=backend-1 "), "{got}");
    }
    assert_eq!(inbound(&pod_metrics(subnet, 4), "200"), before);
    calls
}

/// A real Prometheus scrapes every sidecar, and not the pod without one, with the
/// relabelling of `deploy/prometheus/prometheus.yml`: through Kubernetes SD on the test API
/// server when its build has it; else (Debian's build) from static targets carrying the
/// labels Kubernetes SD would give the same pod objects, and the test says so.
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
    // Exactly the four injected pods: `legacy` is dropped by the relabelling.
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
    let dropped = p.dropped_pods("spoke-sidecars");
    assert!(dropped.contains(&"legacy".to_string()), "{dropped:?}");
    // What it scraped is Spoke's metrics, under the labels the relabelling gives.
    let q = "sum(spoke_requests_total{job=\"spoke-sidecars\",namespace=\"default\",app=\"backend\",cluster=\"inbound:8080\",code=\"403\"})";
    wait_for(
        "the denial counted in prometheus",
        Duration::from_secs(10),
        || p.value(q) == Some(1.0),
    );
}
