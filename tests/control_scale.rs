//! The incremental control stream at scale, with a real `spoke control` and `spoke proxy`
//! over a mesh of 1,000 clusters: one endpoint change sends one cluster resource (checked on
//! the wire by a raw stream and on the control plane's byte counters), a removed cluster
//! reaches the sidecar, a NACK keeps the ACKed set (the next push resends what was refused),
//! a new stream gets the full set (or only the difference from what it says it holds), and
//! the sidecar routes correctly after incremental changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use prost::Message;
use spoke::control::held::Held;
use spoke::control::pb::ads::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use spoke::control::pb::ads::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use spoke::control::CONFIG_TYPE_URL;
use support::mesh::*;
use support::*;
use tokio::sync::mpsc;

const CLUSTERS: usize = 1000;

/// Clusters svc-1..svc-999 with 10 endpoints each, their routes and VIPs: the part of the
/// mesh that does not change.
fn big_mesh() -> String {
    let mut s = String::from("clusters:\n");
    for i in 1..CLUSTERS {
        let eps: Vec<String> = (1..=10)
            .map(|e| format!("{{ address: \"10.{}.{}.{e}:8080\" }}", 1 + i / 250, i % 250))
            .collect();
        s += &format!(
            "  - {{ name: svc-{i}, endpoints: [ {} ] }}\n",
            eps.join(", ")
        );
    }
    s += "routes:\n";
    for i in 1..CLUSTERS {
        s += &format!("  - {{ match: {{ host: svc-{i}.default.svc }}, cluster: svc-{i} }}\n");
    }
    s
}

/// The changing part: the cluster `backend` the sidecar's listener uses, and `extra`.
fn small_mesh(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "clusters:\n  - {{ name: backend, endpoints: [ {{ address: \"{backend}\" }} ] }}\n{extra}"
    )
}

/// A raw incremental stream, as a sidecar speaks it.
struct Raw {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Raw {
    async fn open(m: &Mesh, port: u16, held: &Held) -> Raw {
        let id = spoke::config::Identity::parse(&spoke::control::control_identity("cluster.local"))
            .unwrap();
        let roots = std::fs::read(m.ca.join("root.pem")).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let ch = within(async {
            loop {
                match spoke::control::client::connect(&addr, &id, &roots).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "raw".into(),
                cluster: String::new(),
            }),
            type_url: CONFIG_TYPE_URL.into(),
            initial_resource_versions: held.versions(),
            ..Default::default()
        })
        .await
        .unwrap();
        let token = std::fs::read_to_string(&m.token).unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        let rx = within(AggregatedDiscoveryServiceClient::new(ch).delta_aggregated_resources(req))
            .await
            .unwrap()
            .into_inner();
        Raw { tx, rx }
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(30), self.rx.message())
            .await
            .expect("a push within 30s")
            .unwrap()
            .unwrap()
    }

    async fn answer(&self, resp: &DeltaDiscoveryResponse, nack: Option<&str>) {
        let req = DeltaDiscoveryRequest {
            type_url: CONFIG_TYPE_URL.into(),
            response_nonce: resp.nonce.clone(),
            error_detail: nack.map(|m| Status {
                code: 3,
                message: m.into(),
            }),
            ..Default::default()
        };
        within(self.tx.send(req)).await.unwrap();
    }

    /// Receives a push, applies it onto `held` and ACKs it.
    async fn take(&mut self, held: &mut Held) -> DeltaDiscoveryResponse {
        let resp = self.recv().await;
        let staged = held.stage(&resp).unwrap();
        held.commit(staged);
        self.answer(&resp, None).await;
        resp
    }
}

fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

fn control_metric(stats: u16, name: &str) -> f64 {
    metric(&get(stats, "/metrics").unwrap().1, name, &[]).unwrap_or(0.0)
}

/// A `sa/web` sidecar with a known admin port and a TCP listener to `backend`.
fn sidecar(m: &Mesh, control: u16, listen: u16, stats: u16, admin: u16) -> Proc {
    let cfg = m.dir.0.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node: {{ id: web-0 }}\nadmin: {{ address: 127.0.0.1:{admin} }}\nstats: {{ address: 127.0.0.1:{stats} }}\n\
             control: {{ address: 127.0.0.1:{control}, token_file: \"{}\", roots: \"{}\" }}\n\
             listeners: [ {{ name: out, address: 127.0.0.1:{listen}, protocol: tcp, cluster: backend }} ]\n",
            m.token.display(),
            m.ca.join("root.pem").display()
        ),
    )
    .unwrap();
    spawn_spoke(&["proxy", "--config", cfg.to_str().unwrap()], false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_change_sends_one_cluster_and_removals_reach_the_sidecar() {
    let (a, b) = (named("a").await, named("b").await);
    let m = Mesh::new();
    std::fs::write(m.mesh.join("00-big.yaml"), big_mesh()).unwrap();
    m.write(&small_mesh(a, ""));
    let (cp, cs, lp, ps, ap) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _control = m.control(cp, cs);
    let _proxy = sidecar(&m, cp, lp, ps, ap);
    let mut held = Held::default();
    let mut raw = Raw::open(&m, cp, &held).await;
    let full = raw.take(&mut held).await;
    assert_eq!(
        full.resources.len(),
        CLUSTERS + 1,
        "every cluster and the mesh resource"
    );
    assert_eq!(full.system_version_info, "1");
    tokio::task::spawn_blocking(move || {
        wait_for("sidecar ready", Duration::from_secs(60), || {
            get(ps, "/ready").map(|r| r.0) == Some(200)
        })
    })
    .await
    .unwrap();
    assert_eq!(who(lp).as_deref(), Some("a"));
    let (bytes0, res0) = (
        control_metric(cs, "spoke_control_push_bytes_total"),
        control_metric(cs, "spoke_control_resources_sent_total"),
    );

    // One endpoint of one cluster changes: one small resource, on the wire and in metrics.
    m.write(&small_mesh(b, ""));
    let inc = raw.take(&mut held).await;
    assert_eq!(names(&inc), ["cluster/backend"]);
    assert!(inc.removed_resources.is_empty());
    assert!(inc.encoded_len() < 10 * 1024, "{} bytes", inc.encoded_len());
    tokio::task::spawn_blocking(move || {
        wait_for("routing to b", Duration::from_secs(30), || {
            who(lp).as_deref() == Some("b")
        })
    })
    .await
    .unwrap();
    wait_for("the sidecar's ACK", Duration::from_secs(10), || {
        status(cs)["sidecars"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["node_id"] == "web-0" && s["acked_version"] == "2")
    });
    let bytes = control_metric(cs, "spoke_control_push_bytes_total") - bytes0;
    let res = control_metric(cs, "spoke_control_resources_sent_total") - res0;
    assert_eq!(res, 2.0, "one resource to each of the two streams");
    assert!(bytes < 2.0 * 10.0 * 1024.0, "{bytes} bytes for two streams");

    // A cluster is added, then removed: the sidecar has it, then does not.
    let extra = "  - { name: extra, endpoints: [ { address: \"10.9.9.9:80\" } ] }\n";
    m.write(&small_mesh(b, extra));
    assert_eq!(names(&raw.take(&mut held).await), ["cluster/extra"]);
    let has_extra = move || get(ap, "/clusters").is_some_and(|r| r.1.contains("extra"));
    wait_for("extra on the sidecar", Duration::from_secs(30), has_extra);
    m.write(&small_mesh(b, ""));
    let gone = raw.take(&mut held).await;
    assert!(gone.resources.is_empty(), "{:?}", names(&gone));
    assert_eq!(gone.removed_resources, ["cluster/extra"]);
    wait_for(
        "extra gone from the sidecar",
        Duration::from_secs(30),
        || !has_extra(),
    );
    assert_eq!(who(lp).as_deref(), Some("b"));
    assert!(get(ap, "/clusters").unwrap().1.contains("svc-999"));

    // A new stream holding what `held` holds gets nothing but the version; an empty one
    // gets the full set, equal to what the increments built.
    let mut again = Raw::open(&m, cp, &held).await;
    let same = again.recv().await;
    assert!(same.resources.is_empty() && same.removed_resources.is_empty());
    assert_eq!(same.system_version_info, "4");
    let mut fresh_held = Held::default();
    let mut fresh = Raw::open(&m, cp, &fresh_held).await;
    let all = fresh.take(&mut fresh_held).await;
    assert_eq!(all.resources.len(), CLUSTERS + 1);
    let (mut x, mut y) = (
        held.remote(&Default::default()),
        fresh_held.remote(&Default::default()),
    );
    x.clusters.sort_by(|p, q| p.name.cmp(&q.name));
    y.clusters.sort_by(|p, q| p.name.cmp(&q.name));
    assert_eq!(x, y);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_keeps_the_acked_set_and_the_next_push_resends_what_was_refused() {
    let a = named("a").await;
    let m = Mesh::new();
    let svc = |n: usize, addr: &str| {
        format!("  - {{ name: svc-{n}, endpoints: [ {{ address: \"{addr}\" }} ] }}\n")
    };
    m.write(&small_mesh(
        a,
        &(svc(1, "10.0.0.1:80") + &svc(2, "10.0.0.2:80")),
    ));
    let (cp, cs) = (free_port(), free_port());
    let _control = m.control(cp, cs);
    let mut held = Held::default();
    let mut raw = Raw::open(&m, cp, &held).await;
    raw.take(&mut held).await;

    // svc-1 changes; the stream refuses it.
    m.write(&small_mesh(
        a,
        &(svc(1, "10.0.0.9:80") + &svc(2, "10.0.0.2:80")),
    ));
    let refused = raw.recv().await;
    assert_eq!(names(&refused), ["cluster/svc-1"]);
    raw.answer(&refused, Some("refused for the test")).await;
    wait_for("the NACK on /status", Duration::from_secs(10), || {
        status(cs)["sidecars"][0]["last_nack"] == "refused for the test"
    });
    assert_eq!(status(cs)["sidecars"][0]["acked_version"], "1");

    // svc-2 changes: the push carries svc-1 again, against the ACKed set.
    m.write(&small_mesh(
        a,
        &(svc(1, "10.0.0.9:80") + &svc(2, "10.0.0.8:80")),
    ));
    let next = raw.take(&mut held).await;
    let mut got = names(&next);
    got.sort();
    assert_eq!(got, ["cluster/svc-1", "cluster/svc-2"]);
    assert_eq!(next.system_version_info, "3");
    wait_for("version 3 ACKed", Duration::from_secs(10), || {
        status(cs)["sidecars"][0]["acked_version"] == "3"
    });
}
