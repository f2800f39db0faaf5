//! Kubernetes service discovery against the in-process test API server
//! (`support/kube_api.rs`, itself checked with kubectl in `tests/kube_api.rs`): the real
//! `spoke control --kubernetes` and a real sidecar show the cluster's Services as clusters,
//! follow endpoint changes, survive broken and expired watches (resuming, or relisting and
//! counting), and certify sidecars by ServiceAccount token through a TokenReview.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::time::Duration;

use kube_api::{KubeApi, Res};
use serde_json::{json, Value};
use support::mesh::*;
use support::*;

const BACKEND_8080: &str = "backend.default.svc:8080";
const SA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDp3ZWIifQ.c2lnbmF0dXJl";
const WEB_USER: &str = "system:serviceaccount:default:web";

/// `spoke control --kubernetes` on the test server, plus one sidecar with a fixed admin port.
struct Cluster {
    api: KubeApi,
    mesh: Mesh,
    control: Proc,
    cp: u16,
    cs: u16,
    _rt: tokio::runtime::Runtime,
}

fn start_cluster() -> Cluster {
    start_cluster_with(&[])
}

fn start_cluster_with(extra: &[&str]) -> Cluster {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(KubeApi::start());
    let c = spawn_control(api, rt, extra);
    wait_for("control ready", Duration::from_secs(15), || {
        get(c.cs, "/ready").is_some_and(|r| r.0 == 200)
    });
    c
}

fn spawn_control(api: KubeApi, rt: tokio::runtime::Runtime, extra: &[&str]) -> Cluster {
    let mesh = Mesh::new();
    let kc = api.kubeconfig(&mesh.dir.0);
    let (cp, cs) = (free_port(), free_port());
    let mut args = vec!["--kubernetes", "--kubeconfig", kc.to_str().unwrap()];
    args.extend_from_slice(extra);
    let control = mesh.control_with(cp, cs, &args);
    Cluster {
        api,
        mesh,
        control,
        cp,
        cs,
        _rt: rt,
    }
}

impl Cluster {
    /// A sidecar presenting `token`; returns it and its admin port.
    fn sidecar(&self, token: &str) -> (Proc, u16, u16) {
        let (admin, stats) = (free_port(), free_port());
        let tf = self.mesh.dir.0.join(format!("token-{admin}"));
        std::fs::write(&tf, token).unwrap();
        let cfg = self.mesh.dir.0.join(format!("proxy-{admin}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "node: {{ id: web-0 }}\nadmin: {{ address: 127.0.0.1:{admin} }}\nstats: {{ address: 127.0.0.1:{stats} }}\n\
                 control: {{ address: 127.0.0.1:{}, token_file: \"{}\", roots: \"{}\" }}\nlisteners: []\n",
                self.cp,
                tf.display(),
                self.mesh.ca.join("root.pem").display()
            ),
        )
        .unwrap();
        (
            spawn_spoke(&["proxy", "--config", cfg.to_str().unwrap()], false),
            admin,
            stats,
        )
    }

    fn control_metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&get(self.cs, "/metrics").unwrap().1, name, labels).unwrap_or(0.0)
    }
}

fn dump(admin: u16) -> Value {
    get(admin, "/config_dump")
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn kubernetes_services_reach_the_sidecar_and_follow_changes() {
    let c = start_cluster();
    let token = std::fs::read_to_string(&c.mesh.token).unwrap();
    let (_proxy, admin, stats) = c.sidecar(&token);
    wait_for("sidecar ready", Duration::from_secs(15), || {
        get(stats, "/ready").is_some_and(|r| r.0 == 200)
    });
    let d = dump(admin);
    let cluster = d["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == BACKEND_8080)
        .cloned();
    let cluster = cluster.unwrap_or_else(|| panic!("no {BACKEND_8080}: {d}"));
    assert_eq!(
        cluster["tls"], "spiffe://cluster.local/ns/default/sa/backend",
        "{cluster}"
    );
    assert_eq!(
        dump_endpoints(&d, BACKEND_8080),
        ["10.244.1.7:9090", "10.244.2.8:9090"]
    );
    let services = d["services"].as_array().unwrap();
    assert!(
        services.iter().any(|s| s["vip"] == "10.96.0.20:8080"
            && s["cluster"] == BACKEND_8080
            && s["protocol"] == "http"),
        "{d}"
    );
    assert!(
        services
            .iter()
            .any(|s| s["vip"] == "10.96.0.10:53" && s["cluster"] == "kube-dns.kube-system.svc:53"),
        "{d}"
    );

    // An endpoint made not ready, one terminating, one added: each reaches the sidecar.
    let set = |eps: Value| {
        c.api
            .modify(Res::EndpointSlices, "default", "backend-x7k2p", |s| {
                s["endpoints"] = eps
            });
    };
    let slice = c
        .api
        .get(Res::EndpointSlices, "default", "backend-x7k2p")
        .unwrap();
    let mut eps = slice["endpoints"].clone();
    eps[1]["conditions"] = json!({ "ready": false, "serving": false, "terminating": false });
    set(eps.clone());
    wait_for("not-ready endpoint gone", Duration::from_secs(5), || {
        dump_endpoints(&dump(admin), BACKEND_8080) == ["10.244.1.7:9090"]
    });
    eps[1]["conditions"] = json!({ "ready": true, "serving": true, "terminating": false });
    let mut added = eps[0].clone();
    added["addresses"] = json!(["10.244.3.5"]);
    added["targetRef"]["name"] = json!("backend-5d8c7b9f4-new01");
    let mut pod = kube_api::fixture("pods.json")["items"][0].clone();
    pod["metadata"]["name"] = json!("backend-5d8c7b9f4-new01");
    c.api.put(Res::Pods, pod);
    eps.as_array_mut().unwrap().push(added);
    set(eps.clone());
    wait_for("endpoint added", Duration::from_secs(5), || {
        dump_endpoints(&dump(admin), BACKEND_8080).len() == 3
    });
    eps[0]["conditions"] = json!({ "ready": false, "serving": true, "terminating": true });
    set(eps);
    wait_for(
        "terminating endpoint drained",
        Duration::from_secs(5),
        || dump_endpoints(&dump(admin), BACKEND_8080) == ["10.244.2.8:9090", "10.244.3.5:9090"],
    );

    // A broken watch is resumed from the last resourceVersion it saw (as client-go does):
    // nothing is lost, no relist is needed, and the sidecar keeps its config meanwhile.
    let relists = |r: &str| c.control_metric("spoke_control_kube_relists_total", &[r]);
    let before = relists("endpointslices");
    c.api.break_watches();
    c.api
        .modify(Res::EndpointSlices, "default", "backend-x7k2p", |s| {
            s["endpoints"][1]["conditions"]["ready"] = json!(false);
        });
    assert_eq!(dump_endpoints(&dump(admin), BACKEND_8080).len(), 2);
    wait_for(
        "change after a broken watch",
        Duration::from_secs(10),
        || dump_endpoints(&dump(admin), BACKEND_8080) == ["10.244.3.5:9090"],
    );
    assert_eq!(relists("endpointslices"), before);
    // Broken while the server lost its history: the resume gets 410, so a relist follows,
    // counted; changes made meanwhile arrive with it.
    c.api
        .break_watches_and_lose_history(Res::EndpointSlices, "default", "backend-x7k2p", |s| {
            s["endpoints"][1]["conditions"]["ready"] = json!(true);
        });
    wait_for(
        "relist after a broken watch and 410",
        Duration::from_secs(10),
        || relists("endpointslices") > before,
    );
    wait_for(
        "change made during the relist",
        Duration::from_secs(10),
        || dump_endpoints(&dump(admin), BACKEND_8080).len() == 2,
    );
    // An open watch told `410 Expired`: the same.
    let before = relists("services");
    c.api.expire_watches();
    c.api.delete(Res::Services, "kube-system", "kube-dns");
    wait_for("relist after 410", Duration::from_secs(10), || {
        relists("services") > before
    });
    wait_for("deleted Service gone", Duration::from_secs(10), || {
        let d = dump(admin);
        d["clusters"].as_array().is_some_and(|cs| {
            !cs.iter()
                .any(|c| c["name"] == "kube-dns.kube-system.svc:53")
        })
    });
    assert!(c.control_metric("spoke_control_kube_watch_errors_total", &["services"]) >= 1.0);
    assert_eq!(get(stats, "/ready").unwrap().0, 200);
    drop(c.control);
}

/// Without the RBAC to list pods the control plane serves nothing (it would push Services
/// without identities), says so, retries, and serves once the rule is granted.
#[test]
fn nothing_is_served_until_every_kind_is_listed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(KubeApi::start());
    api.forbid(Res::Pods, true);
    let c = spawn_control(api, rt, &[]);
    wait_for("a refused pod list", Duration::from_secs(10), || {
        get(c.cs, "/metrics").is_some_and(|(_, m)| {
            metric(&m, "spoke_control_kube_watch_errors_total", &["pods"]).unwrap_or(0.0) >= 1.0
        })
    });
    assert_eq!(get(c.cs, "/ready").unwrap().0, 503);
    assert!(status(c.cs)["version"].is_null());
    c.api.forbid(Res::Pods, false);
    wait_for(
        "ready once pods are listed",
        Duration::from_secs(15),
        || get(c.cs, "/ready").is_some_and(|r| r.0 == 200),
    );
}

#[test]
fn service_account_tokens_are_checked_with_a_token_review() {
    let c = start_cluster();
    c.api.allow_token(SA_TOKEN, WEB_USER);
    let (_good, _admin, stats) = c.sidecar(SA_TOKEN);
    wait_for(
        "sidecar with a ServiceAccount token ready",
        Duration::from_secs(15),
        || get(stats, "/ready").is_some_and(|r| r.0 == 200),
    );
    assert_eq!(acked(c.cs, "spiffe://cluster.local/ns/default/sa/web"), "1");
    assert!(c.control_metric("spoke_control_token_reviews_total", &["authenticated"]) >= 1.0);
    assert!(
        c.api
            .count("POST /apis/authentication.k8s.io/v1/tokenreviews", "")
            >= 1
    );
    // A token the API server does not authenticate gets nothing.
    let (_bad, _, bad_stats) = c.sidecar("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.Zm9yZ2Vk");
    wait_for("review rejected", Duration::from_secs(10), || {
        c.control_metric("spoke_control_token_reviews_total", &["rejected"]) >= 1.0
    });
    assert_eq!(get(bad_stats, "/ready").map(|r| r.0), Some(503));
}

#[test]
fn a_token_audience_keeps_the_api_servers_tokens_out() {
    let c = start_cluster_with(&["--token-audience", "spoke"]);
    c.api.allow_token_for(SA_TOKEN, WEB_USER, "spoke");
    let api_token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGkifQ.YXBp";
    c.api.allow_token(api_token, WEB_USER);
    let (_good, _, stats) = c.sidecar(SA_TOKEN);
    wait_for(
        "sidecar with a token for spoke ready",
        Duration::from_secs(15),
        || get(stats, "/ready").is_some_and(|r| r.0 == 200),
    );
    // The pod's default token (for the API server) is valid, but not for Spoke.
    let (_bad, _, bad_stats) = c.sidecar(api_token);
    wait_for(
        "token for another audience refused",
        Duration::from_secs(10),
        || c.control_metric("spoke_control_token_reviews_total", &["rejected"]) >= 1.0,
    );
    assert_eq!(get(bad_stats, "/ready").map(|r| r.0), Some(503));
}

#[tokio::test]
async fn a_csr_for_another_identity_than_the_reviewed_token_is_refused() {
    use spoke::control::pb::identity::identity_client::IdentityClient;
    use spoke::control::pb::identity::CertifyRequest;
    let api = KubeApi::start().await;
    api.allow_token(SA_TOKEN, WEB_USER);
    let m = Mesh::new();
    let kc = api.kubeconfig(&m.dir.0);
    let client = spoke::control::kube_client(Some(&kc)).await.unwrap();
    let settings = spoke::control::Settings {
        config_dir: Some(m.mesh.clone()),
        ca: spoke::ca::Ca::load(&m.ca).unwrap(),
        tokens: spoke::control::token::TokenKey::load_or_create(&m.ca).unwrap(),
        cert_ttl: Duration::from_secs(3600),
        kubernetes: Some(spoke::control::Kubernetes {
            client,
            token_audience: None,
        }),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = spoke::control::start(settings, l, s).await.unwrap();
    let roots = std::fs::read(m.ca.join("root.pem")).unwrap();
    let cid =
        spoke::config::Identity::parse(&spoke::control::control_identity("cluster.local")).unwrap();
    let ch = within(spoke::control::client::connect(
        &control.listen.to_string(),
        &cid,
        &roots,
    ))
    .await
    .unwrap();
    let mut ic = IdentityClient::new(ch);
    let csr_for = |uri: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    let ok = within(ic.certify(CertifyRequest {
        csr_pem: csr_for("spiffe://cluster.local/ns/default/sa/web"),
        token: SA_TOKEN.into(),
    }))
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    let e = within(ic.certify(CertifyRequest {
        csr_pem: csr_for("spiffe://cluster.local/ns/default/sa/backend"),
        token: SA_TOKEN.into(),
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = within(ic.certify(CertifyRequest {
        csr_pem: csr_for("spiffe://cluster.local/ns/default/sa/web"),
        token: "eyJub3QiOiJrbm93biJ9.e30.c2ln".into(),
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // HMAC bootstrap tokens keep working beside TokenReview.
    let hmac = std::fs::read_to_string(&m.token).unwrap();
    let ok = within(ic.certify(CertifyRequest {
        csr_pem: csr_for("spiffe://cluster.local/ns/default/sa/web"),
        token: hmac,
    }))
    .await;
    assert!(ok.is_ok(), "{ok:?}");
}
