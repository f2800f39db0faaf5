//! Mutual TLS between two in-process sidecars with certificates from `spoke::ca`: the
//! two-hop path, identity checks both ways, authorization, and every kind of bad peer
//! certificate. In every bad case nothing reaches the app, the right metric moves, and the
//! proxy keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spoke::ca::IssueOptions;
use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo app that counts the bytes it received.
async fn counting_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n.fetch_add(k, Ordering::SeqCst);
                            if s.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (a, n)
}

/// The server-side sidecar: an inbound listener forwarding to `app` under `policy`.
async fn inbound_sidecar(
    files: &Files,
    app: SocketAddr,
    policy: &str,
    tls_extra: &str,
) -> spoke::app::Running {
    let yaml = format!(
        "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n{policy}",
        files.yaml(tls_extra)
    );
    proxy(&yaml).await
}

fn policy(port: u16, tls: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "inbound: [ {{ port: {port}, tls: {tls}, allow: [ {} ] }} ]\n",
        allow.join(", ")
    )
}

/// The client-side sidecar: an outbound TCP listener to a meshed cluster.
async fn outbound_sidecar(files: &Files, target: SocketAddr, expect: &str) -> spoke::app::Running {
    let yaml = format!(
        "{BASE}{}listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: tcp, cluster: backend }} ]\n\
         clusters: [ {{ name: backend, tls: {{ identity: \"{expect}\" }}, endpoints: [ {{ address: \"{target}\" }} ] }} ]\n",
        files.yaml("")
    );
    proxy(&yaml).await
}

async fn metrics_of(p: &spoke::app::Running) -> String {
    within(http(p.stats, "GET", "/metrics")).await.1
}

#[tokio::test]
async fn two_hops_of_mtls_carry_bytes_and_identity() {
    let pki = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    let server = inbound_sidecar(
        &pki.issue("backend", BACKEND),
        app,
        &policy(app.port(), "strict", &[WEB]),
        "",
    )
    .await;
    let client = outbound_sidecar(
        &pki.issue("web", WEB),
        server.listener("in").unwrap(),
        BACKEND,
    )
    .await;
    let out = client.listener("out").unwrap();
    for i in 0..5 {
        let msg = format!("through two hops {i}");
        assert_eq!(
            within(roundtrip(out, msg.as_bytes())).await.unwrap(),
            msg.as_bytes()
        );
    }
    let big = vec![42u8; 4 * 1024 * 1024];
    assert_eq!(within(roundtrip(out, &big)).await.unwrap(), big);
    assert_eq!(app_bytes.load(Ordering::SeqCst), big.len() + 5 * 18);
    let m = metrics_of(&server).await;
    assert_eq!(
        metric(
            &m,
            "spoke_tcp_connections_opened_total",
            &["direction=\"inbound\""]
        ),
        Some(6.0)
    );
    assert!(metric(&m, "spoke_cert_expiry_timestamp_seconds", &[]).unwrap() > 1.0e9);
    let m = metrics_of(&client).await;
    assert_eq!(
        metric(&m, "spoke_tcp_bytes_total", &["flow=\"rx\""]),
        Some((big.len() + 5 * 18) as f64)
    );
}

#[tokio::test]
async fn outbound_refuses_a_server_with_the_wrong_identity() {
    let pki = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    // The server is really `backend`, but the client expects `db`.
    let server = inbound_sidecar(&pki.issue("backend", BACKEND), app, "", "").await;
    let client = outbound_sidecar(
        &pki.issue("web", WEB),
        server.listener("in").unwrap(),
        "spiffe://cluster.local/ns/default/sa/db",
    )
    .await;
    let mut s = within(TcpStream::connect(client.listener("out").unwrap()))
        .await
        .unwrap();
    let _ = s.write_all(b"secret").await;
    assert!(within(read_all(&mut s)).await.is_empty());
    let m = metrics_of(&client).await;
    assert_eq!(
        metric(
            &m,
            "spoke_tls_handshake_errors_total",
            &["direction=\"outbound\"", "reason=\"wrong_identity\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "spoke_upstream_connect_errors_total",
            &["kind=\"tls_failed\""]
        ),
        Some(1.0)
    );
    // The server side completed a handshake but the client hung up before any byte.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app_bytes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn authorization_by_identity() {
    let pki = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    let roots = pki.root_pem().to_string();
    let server = inbound_sidecar(
        &pki.issue("backend", BACKEND),
        app,
        &policy(
            app.port(),
            "strict",
            &[WEB, "spiffe://cluster.local/ns/team/*"],
        ),
        "",
    )
    .await;
    let addr = server.listener("in").unwrap();
    let web = client_config(Some(&pki.issue("web", WEB)), &roots);
    assert_eq!(
        within(tls_roundtrip(addr, web.clone(), b"hi"))
            .await
            .unwrap(),
        b"hi"
    );
    let team = client_config(
        Some(&pki.issue("team", "spiffe://cluster.local/ns/team/sa/any")),
        &roots,
    );
    assert_eq!(
        within(tls_roundtrip(addr, team, b"ns")).await.unwrap(),
        b"ns"
    );
    assert_eq!(app_bytes.load(Ordering::SeqCst), 4);

    let intruder = client_config(Some(&pki.issue("intruder", INTRUDER)), &roots);
    let r = within(tls_roundtrip(addr, intruder, b"let me in")).await;
    assert!(
        r.map(|b| b.is_empty()).unwrap_or(true),
        "denied peer got data back"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        app_bytes.load(Ordering::SeqCst),
        4,
        "denied peer reached the app"
    );
    let m = metrics_of(&server).await;
    assert_eq!(
        metric(
            &m,
            "spoke_authz_denied_total",
            &[&format!("port=\"{}\"", app.port())]
        ),
        Some(1.0)
    );
    // Still serving.
    assert_eq!(
        within(tls_roundtrip(addr, web, b"again")).await.unwrap(),
        b"again"
    );
}

#[tokio::test]
async fn default_policy_deny_closes_ports_without_an_entry() {
    let pki = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    let server = inbound_sidecar(
        &pki.issue("backend", BACKEND),
        app,
        "default_policy: deny\n",
        "",
    )
    .await;
    let web = client_config(Some(&pki.issue("web", WEB)), pki.root_pem());
    let r = within(tls_roundtrip(server.listener("in").unwrap(), web, b"x")).await;
    assert!(r.map(|b| b.is_empty()).unwrap_or(true));
    assert_eq!(app_bytes.load(Ordering::SeqCst), 0);
    assert_eq!(
        metric(&metrics_of(&server).await, "spoke_authz_denied_total", &[]),
        Some(1.0)
    );
}

/// Each bad client certificate: refused with the right reason, nothing reaches the app.
#[tokio::test]
async fn bad_client_certificates_are_refused() {
    let pki = Pki::new(TD);
    let other = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    let server = inbound_sidecar(&pki.issue("backend", BACKEND), app, "", "").await;
    let addr = server.listener("in").unwrap();
    let roots = pki.root_pem().to_string();
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let opts = |uris: &[&str], dns: &[&str], is_ca: bool, nb, na| IssueOptions {
        uris: uris.iter().map(|s| s.to_string()).collect(),
        dns: dns.iter().map(|s| s.to_string()).collect(),
        is_ca,
        not_before: nb,
        not_after: na,
    };
    let cases: Vec<(&str, Option<Files>, &str)> = vec![
        ("no client certificate", None, "no_client_cert"),
        ("another CA", Some(other.issue("web", WEB)), "unknown_ca"),
        (
            "expired",
            Some(pki.issue_custom(
                "expired",
                &opts(&[WEB], &[], false, now - hour * 3, now - hour),
            )),
            "expired",
        ),
        (
            "not yet valid",
            Some(pki.issue_custom(
                "future",
                &opts(&[WEB], &[], false, now + hour, now + hour * 3),
            )),
            "not_yet_valid",
        ),
        (
            "CA:TRUE leaf",
            Some(pki.issue_custom("ca-leaf", &opts(&[WEB], &[], true, now - hour, now + hour))),
            "ca_leaf",
        ),
        (
            "two URI SANs",
            Some(pki.issue_custom(
                "two",
                &opts(&[WEB, BACKEND], &[], false, now - hour, now + hour),
            )),
            "bad_identity",
        ),
        (
            "DNS-only SAN",
            Some(pki.issue_custom(
                "dns",
                &opts(&[], &["web.default.svc"], false, now - hour, now + hour),
            )),
            "bad_identity",
        ),
        (
            "foreign trust domain",
            Some(pki.issue_custom(
                "foreign",
                &opts(
                    &["spiffe://evil.example/ns/default/sa/web"],
                    &[],
                    false,
                    now - hour,
                    now + hour,
                ),
            )),
            "foreign_trust_domain",
        ),
    ];
    for (what, files, reason) in cases {
        let cfg = client_config(files.as_ref(), &roots);
        let r = within(tls_roundtrip(addr, cfg, b"payload")).await;
        assert!(
            r.map(|b| b.is_empty()).unwrap_or(true),
            "{what}: got data back"
        );
        let m = metrics_of(&server).await;
        assert!(
            metric(
                &m,
                "spoke_tls_handshake_errors_total",
                &["direction=\"inbound\"", &format!("reason=\"{reason}\"")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{what}: no {reason} in\n{}",
            m.lines()
                .filter(|l| l.contains("handshake"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app_bytes.load(Ordering::SeqCst), 0);
    // A good peer still gets through.
    let web = client_config(Some(&pki.issue("web", WEB)), &roots);
    assert_eq!(
        within(tls_roundtrip(addr, web, b"ok")).await.unwrap(),
        b"ok"
    );
}

#[tokio::test]
async fn plaintext_and_tls_mismatches() {
    let pki = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    let (plain_app, plain_app_bytes) = counting_app().await;
    let files = pki.issue("backend", BACKEND);
    let strict = inbound_sidecar(&files, app, &policy(app.port(), "strict", &[]), "").await;
    // Plaintext to a strict port.
    let mut s = within(TcpStream::connect(strict.listener("in").unwrap()))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(within(read_all(&mut s)).await.is_empty());
    assert_eq!(
        metric(
            &metrics_of(&strict).await,
            "spoke_tls_handshake_errors_total",
            &["reason=\"plaintext\""]
        ),
        Some(1.0)
    );
    assert_eq!(app_bytes.load(Ordering::SeqCst), 0);

    // A ClientHello to a plaintext port.
    let plain = inbound_sidecar(
        &files,
        plain_app,
        &policy(plain_app.port(), "disabled", &[]),
        "",
    )
    .await;
    let web = client_config(Some(&pki.issue("web", WEB)), pki.root_pem());
    let r = within(tls_roundtrip(
        plain.listener("in").unwrap(),
        web.clone(),
        b"x",
    ))
    .await;
    assert!(r.is_err());
    assert_eq!(
        metric(
            &metrics_of(&plain).await,
            "spoke_tls_handshake_errors_total",
            &["reason=\"unexpected_tls\""]
        ),
        Some(1.0)
    );
    assert_eq!(plain_app_bytes.load(Ordering::SeqCst), 0);
    // ...while plaintext is served there.
    assert_eq!(
        within(roundtrip(plain.listener("in").unwrap(), b"plain"))
            .await
            .unwrap(),
        b"plain"
    );

    // Permissive takes both.
    let (p_app, p_app_bytes) = counting_app().await;
    let perm = inbound_sidecar(&files, p_app, &policy(p_app.port(), "permissive", &[]), "").await;
    let addr = perm.listener("in").unwrap();
    assert_eq!(within(roundtrip(addr, b"plain")).await.unwrap(), b"plain");
    assert_eq!(
        within(tls_roundtrip(addr, web, b"tls")).await.unwrap(),
        b"tls"
    );
    assert_eq!(p_app_bytes.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn stalled_handshake_is_closed_at_the_timeout() {
    let pki = Pki::new(TD);
    let (app, app_bytes) = counting_app().await;
    let server = inbound_sidecar(
        &pki.issue("backend", BACKEND),
        app,
        "",
        ", handshake_timeout: 300ms",
    )
    .await;
    let addr = server.listener("in").unwrap();
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let mut stalled = Vec::new();
    let start = Instant::now();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The first 5 bytes of a TLS record header, then nothing.
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        stalled.push(s);
    }
    for s in &mut stalled {
        let mut b = [0u8; 16];
        let n = within(s.read(&mut b)).await.unwrap_or(0);
        assert_eq!(n, 0);
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        metric(
            &metrics_of(&server).await,
            "spoke_tls_handshake_errors_total",
            &["reason=\"handshake_timeout\""]
        ),
        Some(20.0)
    );
    drop(stalled);
    // The proxy's side of each stalled connection was released.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    assert_eq!(app_bytes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn start_up_refuses_bad_certificate_files() {
    let pki = Pki::new(TD);
    let good = pki.issue("web", WEB);
    let other = Pki::new(TD).issue("x", WEB);
    let garbage = pki.write("garbage", "not a pem", "nor this", pki.root_pem());
    // cert from one key, key from another: mismatch.
    let mismatch = Files {
        key: other.key.clone(),
        ..good.clone()
    };
    // roots that did not sign the cert.
    let foreign_roots = Files {
        roots: other.roots.clone(),
        ..good.clone()
    };
    for (what, f) in [
        ("garbage", garbage),
        ("mismatch", mismatch),
        ("foreign roots", foreign_roots),
    ] {
        let yaml = format!("{BASE}{}", f.yaml(""));
        let cfg = spoke::config::from_yaml(&yaml).unwrap();
        let r = spoke::app::start(cfg, spoke::app::Options::default()).await;
        let e = r.err().unwrap_or_else(|| panic!("{what}: started"));
        assert_eq!(e.exit_code(), 2, "{what}: {e}");
    }
}
