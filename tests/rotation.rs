//! Certificate rotation: new files are picked up for new connections (plain rewrite and
//! Kubernetes' `..data` symlink swap), open connections are untouched, a broken set is
//! refused and the old one kept, and rotating both sidecars under a running iperf3 loses
//! no connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use spoke::ca::IssueOptions;
use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes a file atomically (temp + rename), as a careful rotator does.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rotate(pki: &Pki, files: &Files, id: &str) -> Vec<u8> {
    let issued = pki
        .ca
        .issue_custom(&IssueOptions::workload(id, Duration::from_secs(3600)))
        .unwrap();
    put(&files.key, &issued.key_pem);
    put(&files.cert, &issued.cert_pem);
    rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.as_ref().to_vec())
        .unwrap()
}

async fn wait_for_cert(addr: SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>, want: &[u8]) {
    let start = Instant::now();
    loop {
        if presented_cert(addr, cfg.clone()).await == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "rotation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn inbound(files: &Files, app: SocketAddr) -> spoke::app::Running {
    proxy(&format!(
        "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n",
        files.yaml("")
    ))
    .await
}

#[tokio::test]
async fn new_files_serve_new_connections_and_old_ones_stay() {
    let pki = Pki::new(TD);
    let files = pki.issue("backend", BACKEND);
    let first = leaf_der(&files);
    let server = inbound(&files, echo().await).await;
    let addr = server.listener("in").unwrap();
    let web = client_config(Some(&pki.issue("web", WEB)), pki.root_pem());
    assert_eq!(within(presented_cert(addr, web.clone())).await, first);

    // A long-lived connection opened before the rotation.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut live = tokio_rustls::TlsConnector::from(web.clone())
        .connect(spoke::tls::placeholder_name(), tcp)
        .await
        .unwrap();
    live.write_all(b"before").await.unwrap();
    let mut b = [0u8; 6];
    within(live.read_exact(&mut b)).await.unwrap();

    let second = rotate(&pki, &files, BACKEND);
    within(wait_for_cert(addr, web.clone(), &second)).await;
    live.write_all(b"after!").await.unwrap();
    within(live.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"after!");
    let m = within(http(server.stats, "GET", "/metrics")).await.1;
    assert!(metric(&m, "spoke_cert_reloads_total", &["result=\"applied\""]).unwrap() >= 1.0);
}

#[tokio::test]
async fn broken_files_are_refused_and_the_old_set_stays() {
    let pki = Pki::new(TD);
    let files = pki.issue("backend", BACKEND);
    let first = leaf_der(&files);
    let server = inbound(&files, echo().await).await;
    let addr = server.listener("in").unwrap();
    let web = client_config(Some(&pki.issue("web", WEB)), pki.root_pem());
    put(
        &files.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    let start = Instant::now();
    loop {
        let m = within(http(server.stats, "GET", "/metrics")).await.1;
        if metric(&m, "spoke_cert_reloads_total", &["result=\"rejected\""]).unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "broken rotation not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(within(presented_cert(addr, web.clone())).await, first);
    assert_eq!(
        within(tls_roundtrip(addr, web.clone(), b"still"))
            .await
            .unwrap(),
        b"still"
    );
    // An expired certificate is refused the same way.
    let now = time::OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .issue_custom(&IssueOptions {
            uris: vec![BACKEND.into()],
            dns: vec![],
            is_ca: false,
            not_before: now - time::Duration::hours(2),
            not_after: now - time::Duration::hours(1),
        })
        .unwrap();
    put(&files.key, &expired.key_pem);
    put(&files.cert, &expired.cert_pem);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(within(presented_cert(addr, web.clone())).await, first);
    // And a good set afterwards is taken.
    let third = rotate(&pki, &files, BACKEND);
    within(wait_for_cert(addr, web, &third)).await;
}

#[tokio::test]
async fn kubernetes_symlink_swap_is_seen() {
    // A Secret volume: cert.pem -> ..data/cert.pem, ..data -> ..<timestamp>/, swapped by
    // renaming a new ..data symlink over the old one.
    let pki = Pki::new(TD);
    let vol = TempDir::new("secret");
    let v = &vol.0;
    let write_gen = |name: &str, id: &str| {
        let issued = pki
            .ca
            .issue_custom(&IssueOptions::workload(id, Duration::from_secs(3600)))
            .unwrap();
        let d = v.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cert.pem"), &issued.cert_pem).unwrap();
        std::fs::write(d.join("key.pem"), &issued.key_pem).unwrap();
        std::fs::write(d.join("root.pem"), pki.root_pem()).unwrap();
        leaf_der(&Files {
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            roots: d.join("root.pem"),
        })
    };
    let first = write_gen("..2026_11_26_1", BACKEND);
    std::os::unix::fs::symlink("..2026_11_26_1", v.join("..data")).unwrap();
    for f in ["cert.pem", "key.pem", "root.pem"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), v.join(f)).unwrap();
    }
    let files = Files {
        cert: v.join("cert.pem"),
        key: v.join("key.pem"),
        roots: v.join("root.pem"),
    };
    let server = inbound(&files, echo().await).await;
    let addr = server.listener("in").unwrap();
    let web = client_config(Some(&pki.issue("web", WEB)), pki.root_pem());
    assert_eq!(within(presented_cert(addr, web.clone())).await, first);
    let second = write_gen("..2026_11_26_2", BACKEND);
    std::os::unix::fs::symlink("..2026_11_26_2", v.join("..data_tmp")).unwrap();
    std::fs::rename(v.join("..data_tmp"), v.join("..data")).unwrap();
    within(wait_for_cert(addr, web, &second)).await;
}

/// Both sidecars rotate several times while iperf3 pushes data through them and short
/// connections keep opening: no stream breaks, no connection fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_iperf3_loses_no_connection() {
    if !need(
        "rotation_under_iperf3_loses_no_connection",
        "iperf3 (apt-get install iperf3; make test installs it as root)",
        have("iperf3"),
    ) {
        return;
    }
    let pki = Pki::new(TD);
    let backend = pki.issue("backend", BACKEND);
    let web = pki.issue("web", WEB);
    let port = free_port();
    let mut server_proc = Command::new("iperf3")
        .args(["-s", "-p", &port.to_string(), "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let iperf_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let echo_addr = echo().await;
    let server = proxy(&format!(
        "{BASE}{}listeners:\n  - {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{iperf_addr}\" }}\n  - {{ name: in-echo, address: 127.0.0.1:0, direction: inbound, forward: \"{echo_addr}\" }}\n",
        backend.yaml("")
    ))
    .await;
    let client = proxy(&format!(
        "{BASE}{}listeners:\n  - {{ name: out, address: 127.0.0.1:0, protocol: tcp, cluster: iperf }}\n  - {{ name: out-echo, address: 127.0.0.1:0, protocol: tcp, cluster: echo }}\n\
         clusters:\n  - {{ name: iperf, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }}\n  - {{ name: echo, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }}\n",
        web.yaml(""),
        server.listener("in").unwrap(),
        server.listener("in-echo").unwrap()
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = client.listener("out").unwrap();
    let iperf = tokio::task::spawn_blocking(move || {
        Command::new("iperf3")
            .args([
                "-c",
                "127.0.0.1",
                "-p",
                &out.port().to_string(),
                "-t",
                "4",
                "-P",
                "4",
                "-J",
            ])
            .output()
            .unwrap()
    });
    let out_echo = client.listener("out-echo").unwrap();
    // New mTLS connections all along: every one must succeed, and some must complete after
    // each rotation (how many fit in the window depends on the machine's load, so the count
    // itself is not the test).
    let shorts = tokio::spawn(async move {
        let mut done = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            let n = done.len();
            let msg = format!("short {n}");
            let back = within(roundtrip(out_echo, msg.as_bytes())).await;
            assert_eq!(back.unwrap(), msg.as_bytes(), "short connection {n} failed");
            done.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done
    });
    let mut rotated = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        rotate(&pki, &backend, BACKEND);
        rotate(&pki, &web, WEB);
        rotated.push(Instant::now());
    }
    let result = within(iperf).await.unwrap();
    let _ = server_proc.kill();
    let _ = server_proc.wait();
    let json: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert!(
        json.get("error").is_none(),
        "iperf3 failed: {}",
        json["error"]
    );
    let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(bytes > 10.0 * 1024.0 * 1024.0, "only {bytes} bytes");
    let done = within(shorts).await.unwrap();
    for (i, r) in rotated.iter().enumerate() {
        assert!(
            done.iter().any(|d| d > r),
            "no new connection completed after rotation {i} ({} in all)",
            done.len()
        );
    }
    for p in [&server, &client] {
        let m = within(http(p.stats, "GET", "/metrics")).await.1;
        assert!(
            metric(&m, "spoke_cert_reloads_total", &["result=\"applied\""]).unwrap_or(0.0) >= 2.0,
            "{m}"
        );
        assert_eq!(
            metric(&m, "spoke_upstream_connect_errors_total", &[]),
            None,
            "{m}"
        );
        // Created at 0 for every known reason; none may have moved.
        let failed: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("spoke_tls_handshake_errors_total{") && !l.ends_with(" 0"))
            .collect();
        assert!(failed.is_empty(), "{m}");
    }
}
