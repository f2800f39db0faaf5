//! The control plane with real processes (`spoke control`, `spoke proxy`) and in-process
//! parts: pushes and ACKs, NACKs that keep the last good config, a control plane that is
//! down at start or killed mid-run, token-bound certificates, and config swaps under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::*;
use support::mesh::*;
use support::pki::{BACKEND, WEB};
use support::*;

fn backend_at(addr: std::net::SocketAddr) -> String {
    format!("clusters: [ {{ name: backend, endpoints: [ {{ address: \"{addr}\" }} ] }} ]\n")
}

#[test]
fn pushes_are_acked_invalid_ones_kept_out_and_nacks_keep_the_last_good() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(named("a"));
    let b = rt.block_on(named("b"));
    let m = Mesh::new();
    m.write(&backend_at(a));
    let (cp, cs, lp, ps) = (free_port(), free_port(), free_port(), free_port());
    let _control = m.control(cp, cs);
    let _proxy = m.proxy(cp, lp, ps);
    wait_for("proxy ready", Duration::from_secs(10), || {
        get(ps, "/ready").map(|r| r.0) == Some(200)
    });
    assert_eq!(who(lp).as_deref(), Some("a"));
    let s = status(cs);
    assert_eq!(s["sidecars"][0]["node_id"], "web-0");
    assert_eq!(s["sidecars"][0]["identity"], WEB);
    assert_eq!(s["sidecars"][0]["acked_version"], "1");

    // A change reaches the sidecar and is ACKed, well under a second.
    m.write(&backend_at(b));
    let took = wait_for("version 2 ACKed", Duration::from_secs(5), || {
        status(cs)["sidecars"][0]["acked_version"] == "2"
    });
    eprintln!("file change to ACK: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(who(lp).as_deref(), Some("b"));

    // An invalid change is refused by the control plane and never pushed.
    m.write(&format!(
        "{}routes: [ {{ match: {{ path_prefix: / }}, cluster: nowhere }} ]\n",
        backend_at(a)
    ));
    wait_for("config error on /status", Duration::from_secs(5), || {
        !status(cs)["config_error"].is_null()
    });
    let s = status(cs);
    assert_eq!(s["version"], "2");
    assert!(s["config_error"].to_string().contains("nowhere"), "{s}");
    assert_eq!(who(lp).as_deref(), Some("b"));

    // A change the sidecar cannot take (its listener's cluster disappears): NACK, and the
    // sidecar keeps serving version 2.
    m.write(&format!(
        "clusters: [ {{ name: other, endpoints: [ {{ address: \"{a}\" }} ] }} ]\n"
    ));
    wait_for("NACK on /status", Duration::from_secs(5), || {
        !status(cs)["sidecars"][0]["last_nack"].is_null()
    });
    let s = status(cs);
    assert!(
        s["sidecars"][0]["last_nack"]
            .as_str()
            .unwrap()
            .contains("backend"),
        "{s}"
    );
    assert_eq!(s["sidecars"][0]["acked_version"], "2");
    assert_eq!(who(lp).as_deref(), Some("b"));
    let metrics = get(ps, "/metrics").unwrap().1;
    assert_eq!(
        metric(
            &metrics,
            "spoke_config_updates_total",
            &["result=\"rejected\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "spoke_config_version", &["version=\"2\""]),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "spoke_control_connected", &[]), Some(1.0));
    assert!(metric(&metrics, "spoke_cert_expiry_timestamp_seconds", &[]).unwrap() > 1.0e9);

    // Fixed again: applied.
    m.write(&backend_at(a));
    wait_for("version 4 ACKed", Duration::from_secs(5), || {
        status(cs)["sidecars"][0]["acked_version"] == "4"
    });
    assert_eq!(who(lp).as_deref(), Some("a"));
    let cm = get(cs, "/metrics").unwrap().1;
    assert_eq!(metric(&cm, "spoke_control_sidecars", &[]), Some(1.0));
    assert!(metric(&cm, "spoke_control_nacks_total", &[]).unwrap() >= 1.0);
}

#[test]
fn control_plane_down_at_start_and_killed_mid_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(named("a"));
    let b = rt.block_on(named("b"));
    let m = Mesh::new();
    m.write(&backend_at(a));
    let (cp, cs, lp, ps) = (free_port(), free_port(), free_port(), free_port());
    let _proxy = m.proxy(cp, lp, ps);
    // No control plane: up, but not ready.
    wait_for("proxy stats", Duration::from_secs(10), || {
        get(ps, "/live").is_some()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(ps, "/ready").unwrap().0, 503);
    let control = m.control(cp, cs);
    wait_for("proxy ready", Duration::from_secs(20), || {
        get(ps, "/ready").map(|r| r.0) == Some(200)
    });
    assert_eq!(who(lp).as_deref(), Some("a"));
    // Killed: the sidecar keeps serving what it has.
    drop(control);
    wait_for("control disconnected", Duration::from_secs(5), || {
        metric(
            &get(ps, "/metrics").unwrap().1,
            "spoke_control_connected",
            &[],
        ) == Some(0.0)
    });
    for _ in 0..5 {
        assert_eq!(who(lp).as_deref(), Some("a"));
    }
    assert_eq!(get(ps, "/ready").unwrap().0, 200);
    // The config changes while it is away; when it returns, the sidecar gets the current state.
    m.write(&backend_at(b));
    let _control = m.control(cp, cs);
    wait_for("new state after reconnect", Duration::from_secs(20), || {
        who(lp).as_deref() == Some("b")
    });
}

async fn in_process_control(m: &Mesh) -> spoke::control::Running {
    let ca = spoke::ca::Ca::load(&m.ca).unwrap();
    let tokens = spoke::control::token::TokenKey::load_or_create(&m.ca).unwrap();
    let settings = spoke::control::Settings {
        config_dir: Some(m.mesh.clone()),
        ca,
        tokens,
        cert_ttl: Duration::from_secs(3600),
        kubernetes: None,
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    spoke::control::start(settings, l, s).await.unwrap()
}

#[tokio::test]
async fn certificates_are_bound_to_their_token() {
    use spoke::control::pb::identity::identity_client::IdentityClient;
    use spoke::control::pb::identity::CertifyRequest;
    let m = Mesh::new();
    m.write("clusters: []\n");
    let control = in_process_control(&m).await;
    let roots = std::fs::read(m.ca.join("root.pem")).unwrap();
    let control_id =
        spoke::config::Identity::parse(&spoke::control::control_identity("cluster.local")).unwrap();
    let channel = spoke::control::client::connect(&control.listen.to_string(), &control_id, &roots)
        .await
        .unwrap();
    let mut c = IdentityClient::new(channel);
    let csr_for = |uri: Option<&str>| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        if let Some(u) = uri {
            p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    let token = std::fs::read_to_string(&m.token).unwrap();
    // A CSR for the token's identity (or for none) is signed for exactly that identity.
    for csr in [csr_for(None), csr_for(Some(WEB))] {
        let r = c
            .certify(CertifyRequest {
                csr_pem: csr,
                token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let der =
            rustls::pki_types::pem::PemObject::from_pem_slice(r.cert_chain_pem.as_bytes()).unwrap();
        assert_eq!(spoke::tls::verify::spiffe_id(&der).unwrap().as_str(), WEB);
    }
    // A CSR for another identity is refused.
    let e = c
        .certify(CertifyRequest {
            csr_pem: csr_for(Some(BACKEND)),
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Expired, forged and garbage tokens are refused.
    let key = spoke::control::token::TokenKey::load_or_create(&m.ca).unwrap();
    let expired = key.issue(
        &spoke::config::Identity::parse(WEB).unwrap(),
        Duration::ZERO,
    );
    std::thread::sleep(Duration::from_millis(1100));
    let other_key = spoke::control::token::TokenKey::from_bytes(&[9u8; 32]);
    let forged = other_key.issue(
        &spoke::config::Identity::parse(WEB).unwrap(),
        Duration::from_secs(60),
    );
    for bad in [expired, forged, "garbage".to_string()] {
        let e = c
            .certify(CertifyRequest {
                csr_pem: csr_for(None),
                token: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    let cm = control.state.metrics.render();
    assert_eq!(
        metric(
            &cm,
            "spoke_control_certificates_total",
            &["result=\"issued\""]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &cm,
            "spoke_control_certificates_total",
            &["result=\"wrong_identity\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &cm,
            "spoke_control_certificates_total",
            &["result=\"bad_token\""]
        ),
        Some(3.0)
    );
}

/// Two sidecars with certificates and config from an in-process control plane; the route
/// split is rewritten ten times a second while HTTP traffic flows: nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swaps_under_load_lose_nothing() {
    let m = Mesh::new();
    let backend_token = m.token_for(BACKEND);
    let (v1, seen1) = start_app("v1").await;
    let (v2, seen2) = start_app("v2").await;
    // The backend sidecar: two inbound listeners (v1, v2), policy from the mesh.
    let roots = m.ca.join("root.pem");
    // No mesh file yet: the control plane holds both streams until the real one is written.
    let control = in_process_control(&m).await;
    let control_block = |token: &Path| {
        format!(
            "control: {{ address: \"{}\", token_file: \"{}\", roots: \"{}\" }}\n",
            control.listen,
            token.display(),
            roots.display()
        )
    };
    let backend = proxy(&format!(
        "node: {{ id: backend-0 }}\nadmin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n{}\
         listeners:\n  - {{ name: v1, address: 127.0.0.1:0, direction: inbound, forward: \"{v1}\" }}\n  - {{ name: v2, address: 127.0.0.1:0, direction: inbound, forward: \"{v2}\" }}\n",
        control_block(&backend_token)
    ))
    .await;
    let web = proxy(&format!(
        "node: {{ id: web-0 }}\nadmin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n{}\
         listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: http, cluster: backend }} ]\n",
        control_block(&m.token)
    ))
    .await;
    let mesh = |w1: u32, w2: u32| {
        format!(
            "clusters:\n  - {{ name: backend, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }}\n  - {{ name: backend-v2, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }}\n\
             routes: [ {{ match: {{ path_prefix: / }}, split: [ {{ cluster: backend, weight: {w1} }}, {{ cluster: backend-v2, weight: {w2} }} ] }} ]\n\
             workloads: [ {{ identity: \"{BACKEND}\", inbound: [ {{ port: {}, allow: [ \"{WEB}\" ] }}, {{ port: {}, allow: [ \"{WEB}\" ] }} ] }} ]\n",
            backend.listener("v1").unwrap(),
            backend.listener("v2").unwrap(),
            v1.port(),
            v2.port()
        )
    };
    m.write(&mesh(100, 0));
    let ready = |p: &spoke::app::Running| p.shared.readiness.is_ready();
    let start = Instant::now();
    while !(ready(&web) && ready(&backend)) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "sidecars not ready: web {} backend {}\n{}\n{}",
            web.shared.readiness.reason(),
            backend.shared.readiness.reason(),
            control.state.status_json(),
            web.shared
                .metrics
                .render()
                .lines()
                .filter(|l| l.contains("config") || l.contains("cert"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = web.listener("out").unwrap();
    // Only v1 while the split says 100/0.
    let mut c = Client::connect(out, false).await;
    for _ in 0..20 {
        assert_eq!(
            within(c.get("/echo")).await.unwrap().header("x-server"),
            "v1"
        );
    }
    // Traffic from 4 clients while the split flips 10 times a second for 3 seconds.
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (failures, done) = (failures.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(out, false).await;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                match c.get("/echo").await {
                    Ok(r) if r.status == 200 => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {:?}", other.map(|r| (r.status, r.body)));
                    }
                }
            }
        }));
    }
    for i in 0..30 {
        m.write(&mesh(
            if i % 2 == 0 { 50 } else { 100 },
            if i % 2 == 0 { 50 } else { 1 },
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    eprintln!("{n} requests during 30 swaps");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(n > 100, "{n}");
    assert!(
        seen2.requests.load(Ordering::SeqCst) > 0,
        "v2 never got traffic"
    );
    assert!(seen1.requests.load(Ordering::SeqCst) > 0);
    let version: u64 = control.state.mesh.borrow().version;
    assert!(version >= 20, "only {version} versions");
    let wm = web.shared.metrics.render();
    assert!(
        metric(&wm, "spoke_config_updates_total", &["result=\"applied\""]).unwrap() >= 20.0,
        "{wm}"
    );
    // No push was ever refused: the control plane sent nothing before its first load.
    let rejected = metric(&wm, "spoke_config_updates_total", &["result=\"rejected\""]);
    assert_eq!(rejected.unwrap_or(0.0), 0.0, "{wm}");
    let cm = control.state.metrics.render();
    assert_eq!(
        metric(&cm, "spoke_control_nacks_total", &[]),
        Some(0.0),
        "{cm}"
    );
}

/// Protocol faults on the stream: a wrong type_url is refused, a stale nonce is ignored, a
/// NACK is recorded, a missing or bad token is refused, and the server keeps serving.
#[tokio::test]
async fn stream_faults_are_survived() {
    use spoke::control::pb::ads::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient as Ads;
    use spoke::control::pb::ads::{DiscoveryRequest, Node, Status as PbStatus};
    let m = Mesh::new();
    m.write("clusters: [ { name: backend, endpoints: [] } ]\n");
    let control = in_process_control(&m).await;
    let roots = std::fs::read(m.ca.join("root.pem")).unwrap();
    let cid =
        spoke::config::Identity::parse(&spoke::control::control_identity("cluster.local")).unwrap();
    let token = std::fs::read_to_string(&m.token).unwrap();
    let open = |type_url: &'static str, tok: Option<String>| {
        let roots = roots.clone();
        let cid = cid.clone();
        let addr = control.listen.to_string();
        async move {
            let ch = spoke::control::client::connect(&addr, &cid, &roots)
                .await
                .unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(DiscoveryRequest {
                node: Some(Node {
                    id: "probe".into(),
                    cluster: String::new(),
                }),
                type_url: type_url.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            if let Some(t) = tok {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            (Ads::new(ch).stream_aggregated_resources(req).await, tx)
        }
    };
    // No token, a bad token: refused.
    assert_eq!(
        open(spoke::control::CONFIG_TYPE_URL, None)
            .await
            .0
            .err()
            .unwrap()
            .code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        open(spoke::control::CONFIG_TYPE_URL, Some("v1.bad.token".into()))
            .await
            .0
            .err()
            .unwrap()
            .code(),
        tonic::Code::Unauthenticated
    );
    // A wrong type_url: the stream ends with an error.
    let (r, _tx) = open(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        Some(token.clone()),
    )
    .await;
    let mut s = r.unwrap().into_inner();
    let e = within(s.message()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A good stream: a stale nonce is ignored, a NACK is recorded, an ACK clears it.
    let (r, tx) = open(spoke::control::CONFIG_TYPE_URL, Some(token.clone())).await;
    let mut s = r.unwrap().into_inner();
    let first = within(s.message()).await.unwrap().unwrap();
    assert_eq!(first.version_info, "1");
    let value: serde_json::Value = serde_json::from_slice(&first.resources[0].value).unwrap();
    assert_eq!(value["clusters"][0]["name"], "backend");
    let ack = |nonce: &str, version: &str, err: Option<&str>| DiscoveryRequest {
        version_info: version.into(),
        type_url: spoke::control::CONFIG_TYPE_URL.into(),
        response_nonce: nonce.into(),
        error_detail: err.map(|m| PbStatus {
            code: 3,
            message: m.into(),
        }),
        ..Default::default()
    };
    tx.send(ack("not-the-nonce", "1", Some("stale")))
        .await
        .unwrap();
    tx.send(ack(&first.nonce, "", Some("cannot apply: test")))
        .await
        .unwrap();
    let status =
        || serde_json::from_str::<serde_json::Value>(&control.state.status_json()).unwrap();
    let start = Instant::now();
    while status()["sidecars"][0]["last_nack"].is_null() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status()["sidecars"][0]["last_nack"], "cannot apply: test");
    tx.send(ack(&first.nonce, "1", None)).await.unwrap();
    let start = Instant::now();
    while status()["sidecars"][0]["acked_version"] != "1" {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(status()["sidecars"][0]["last_nack"].is_null());
    // An oversized message (over gRPC's 4 MiB limit) ends that stream, not the server.
    tx.send(DiscoveryRequest {
        resource_names: vec!["x".repeat(1024); 5 * 1024],
        type_url: spoke::control::CONFIG_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let end = within(async {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(!matches!(end, Ok(Some(_))));
    let (r, _tx) = open(spoke::control::CONFIG_TYPE_URL, Some(token.clone())).await;
    let mut s = r.unwrap().into_inner();
    assert_eq!(
        within(s.message()).await.unwrap().unwrap().version_info,
        "1"
    );
}

/// Removing an endpoint: the connection already open to it carries on; new ones go to the
/// endpoint that replaced it.
#[tokio::test]
async fn removed_endpoint_keeps_its_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Mesh::new();
    let a = echo().await;
    let b = named("b").await;
    m.write(&backend_at(a));
    let control = in_process_control(&m).await;
    let web = proxy(&format!(
        "node: {{ id: web-0 }}\nadmin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n\
         control: {{ address: \"{}\", token_file: \"{}\", roots: \"{}\" }}\n\
         listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: tcp, cluster: backend }} ]\n",
        control.listen,
        m.token.display(),
        m.ca.join("root.pem").display()
    ))
    .await;
    let start = Instant::now();
    while !web.shared.readiness.is_ready() {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = web.listener("out").unwrap();
    let mut live = within(tokio::net::TcpStream::connect(out)).await.unwrap();
    live.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    within(live.read_exact(&mut buf)).await.unwrap();
    m.write(&backend_at(b));
    let start = Instant::now();
    while web.shared.snapshot.load().version != "2" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "push not applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The open connection still reaches the removed endpoint...
    live.write_all(b"two").await.unwrap();
    within(live.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"two");
    // ...while a new one goes to its replacement.
    assert_eq!(within(roundtrip(out, b"")).await.unwrap(), b"b");
}

/// A control plane started on a directory without mesh files serves no stream until the
/// first file arrives: `/ready` is 503, `/status` has no version, and a connected sidecar
/// gets version 1 (the real config) as its first push, so it never NACKs a placeholder.
#[test]
fn streams_wait_for_the_first_mesh_file() {
    let m = Mesh::new();
    let (cp, cs, lp, ps) = (free_port(), free_port(), free_port(), free_port());
    let _control = m.control(cp, cs);
    wait_for("control /status", Duration::from_secs(10), || {
        get(cs, "/status").is_some()
    });
    assert_eq!(get(cs, "/ready").unwrap().0, 503);
    assert!(status(cs)["version"].is_null(), "{}", status(cs));
    let _proxy = m.proxy(cp, lp, ps);
    wait_for("sidecar connected", Duration::from_secs(10), || {
        status(cs)["sidecars"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(ps, "/ready").unwrap().0, 503, "no config yet");
    assert!(status(cs)["sidecars"][0]["sent_version"].is_null());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(async { echo().await });
    m.write(&backend_at(backend));
    wait_for("sidecar ready", Duration::from_secs(10), || {
        get(ps, "/ready").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(get(cs, "/ready").unwrap().0, 200);
    assert_eq!(acked(cs, WEB), "1");
    let (_, metrics) = get(ps, "/metrics").unwrap();
    assert_eq!(
        metric(&metrics, "spoke_config_updates_total", &["rejected"]).unwrap_or(0.0),
        0.0
    );
}
