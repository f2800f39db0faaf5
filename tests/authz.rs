//! Authorization that holds on every request, with real mTLS: a rules matrix (identity x
//! method x path x header, deny before allow, unauthenticated peers, path normalisation
//! tricks), revocation of open TCP connections and upgrade tunnels by a new policy, h2c
//! upgrades never tunnelled, outbound changes reaching open client connections, and a
//! policy revoked and restored through `spoke control` over one pooled HTTP/2 connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::http::*;
use support::mesh::*;
use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEV: &str = "spiffe://cluster.local/ns/dev/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";

/// An HTTP/1.1 keep-alive client over mTLS presenting `files` (or plaintext with `None`).
async fn client(addr: SocketAddr, pki: &Pki, files: Option<&Files>) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Some(files) = files else {
        return Client::over(tcp, false).await;
    };
    let tls = tokio_rustls::TlsConnector::from(client_config(Some(files), pki.root_pem()))
        .connect(spoke::tls::placeholder_name(), tcp)
        .await
        .unwrap();
    Client::over(tls, false).await
}

async fn metrics(p: &spoke::app::Running) -> String {
    within(http(p.stats, "GET", "/metrics")).await.1
}

const MATRIX: &str = r#"tls: permissive, rules: [
      { action: deny,  from: [ "spiffe://cluster.local/ns/dev/*" ] },
      { action: deny,  paths: [ { prefix: /api/admin } ] },
      { action: allow, from: [ "spiffe://cluster.local/ns/default/sa/web" ], methods: [ GET, HEAD ], paths: [ { prefix: /api/ } ] },
      { action: allow, from: [ authenticated ], headers: [ { name: x-debug, exact: "1" } ] },
      { action: allow, from: [ unauthenticated ], paths: [ { exact: /healthz } ] } ]"#;

#[tokio::test]
async fn rules_matrix_over_real_mtls() {
    let pki = Pki::new(TD);
    let (app, seen) = start_app("app").await;
    let server = proxy(&format!(
        "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n\
         inbound: [ {{ port: {}, {MATRIX} }} ]\n",
        pki.issue("backend", BACKEND).yaml(""),
        app.port()
    ))
    .await;
    let addr = server.listener("in").unwrap();
    let (web, dev, other) = (
        pki.issue("web", WEB),
        pki.issue("dev", DEV),
        pki.issue("other", OTHER),
    );
    // (caller, method, path, headers, status, path the app sees)
    type Case<'a> = (
        Option<&'a Files>,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
        &'a str,
    );
    let cases: &[Case] = &[
        (Some(&web), "GET", "/api/x", &[], 200, "/api/x"),
        (Some(&web), "POST", "/api/x", &[], 403, ""),
        (Some(&web), "HEAD", "/api", &[], 200, ""),
        (Some(&web), "GET", "/apix", &[], 403, ""),
        (Some(&web), "GET", "/api/admin/users", &[], 403, ""),
        // Normalisation: what the rules see is what the app gets.
        (Some(&web), "GET", "/api/./v1/../x", &[], 200, "/api/x"),
        (Some(&web), "GET", "/api/%76%31", &[], 200, "/api/v1"),
        (Some(&web), "GET", "/api/../admin", &[], 403, ""),
        (Some(&web), "GET", "/api/%2e%2e/admin", &[], 403, ""),
        (Some(&web), "GET", "/api/.%2E/api/admin", &[], 403, ""),
        (Some(&web), "GET", "/api%2F..%2Fadmin", &[], 400, ""),
        (Some(&web), "GET", "/api/x?next=/admin", &[], 200, "/api/x"),
        (Some(&other), "GET", "/api/x", &[], 403, ""),
        (
            Some(&other),
            "DELETE",
            "/anything",
            &[("x-debug", "1")],
            200,
            "/anything",
        ),
        (
            Some(&other),
            "GET",
            "/anything",
            &[("x-debug", "2")],
            403,
            "",
        ),
        // Deny rules come first: the header that lets others in does not help dev.
        (Some(&dev), "GET", "/api/x", &[("x-debug", "1")], 403, ""),
        (None, "GET", "/healthz", &[], 200, "/healthz"),
        (None, "GET", "/healthz/../api/x", &[], 403, ""),
        (None, "GET", "/api/x", &[("x-debug", "1")], 403, ""),
    ];
    let mut conns: Vec<(Option<&Files>, Client)> = Vec::new();
    let (mut denied, mut allowed) = (0, 0);
    for (who, method, path, headers, want, app_path) in cases {
        // One keep-alive connection per caller: a 403 leaves it open for what follows.
        let i = match conns
            .iter()
            .position(|(w, _)| w.map(|f| &f.cert) == who.map(|f| &f.cert))
        {
            Some(i) => i,
            None => {
                conns.push((*who, within(client(addr, &pki, *who)).await));
                conns.len() - 1
            }
        };
        let r = within(conns[i].1.send(req(method, path, headers, "")))
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(
            r.status, *want,
            "{who:?} {method} {path} {headers:?}: {}",
            r.body
        );
        match want {
            403 => {
                assert_eq!(r.header("x-spoke-error"), "unauthorized");
                denied += 1;
            }
            400 => assert_eq!(r.header("x-spoke-error"), "bad_request"),
            _ => allowed += 1,
        }
        if !app_path.is_empty() {
            assert_eq!(r.field("path"), *app_path, "{method} {path}");
        }
        if *want == 200 && method != &"HEAD" {
            let id = who.map(|_| r.field("peer-id")).unwrap_or_default();
            assert!(who.is_none() || id.starts_with("spiffe://"), "{id}");
        }
    }
    assert_eq!(conns.len(), 4, "one connection per caller");
    assert_eq!(
        seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        allowed
    );
    let port = format!("port=\"{}\"", app.port());
    assert_eq!(
        metric(
            &metrics(&server).await,
            "spoke_authz_denied_total",
            &[&port]
        ),
        Some(denied as f64)
    );
    // The rules are in the config dump as written.
    let dump = within(http(server.admin, "GET", "/config_dump")).await.1;
    assert!(
        dump.contains("x-debug") && dump.contains("unauthenticated"),
        "{dump}"
    );
}

/// Reads what arrives within `wait`: `None` if the connection stayed open and silent.
async fn closed_within(s: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut b = [0u8; 16];
    match tokio::time::timeout(wait, s.read(&mut b)).await {
        Err(_) => None,
        Ok(Ok(0)) | Ok(Err(_)) => Some(start.elapsed()),
        Ok(Ok(n)) => panic!("unexpected {n} bytes"),
    }
}

async fn echo_ok(s: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), msg: &[u8]) {
    within(s.write_all(msg)).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within(s.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn a_new_policy_closes_the_tcp_connections_it_no_longer_allows() {
    let pki = Pki::new(TD);
    let app = echo().await;
    let files = pki.issue("backend", BACKEND);
    let yaml = |policy: &str| {
        format!(
            "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n\
             inbound: [ {{ port: {}, protocol: tcp, {policy} }} ]\n",
            files.yaml(""),
            app.port()
        )
    };
    let store = |p: &spoke::app::Running, policy: &str| {
        let cfg = spoke::config::from_yaml(&yaml(policy)).unwrap();
        p.shared.store(spoke::snapshot::Snapshot::from_static(cfg));
    };
    let server = proxy(&yaml(&format!(
        "tls: permissive, rules: [ {{ action: allow, from: [ \"{WEB}\", \"{OTHER}\", unauthenticated ] }} ]"
    )))
    .await;
    let addr = server.listener("in").unwrap();
    let tls = |f: &Files| {
        let cfg = client_config(Some(f), pki.root_pem());
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(cfg)
                .connect(spoke::tls::placeholder_name(), tcp)
                .await
                .unwrap()
        }
    };
    let mut web = within(tls(&pki.issue("web", WEB))).await;
    let mut other = within(tls(&pki.issue("other", OTHER))).await;
    let mut plain = within(TcpStream::connect(addr)).await.unwrap();
    echo_ok(&mut web, b"web-1").await;
    echo_ok(&mut other, b"other-1").await;
    echo_ok(&mut plain, b"plain-1").await;

    // web loses its access: its connection closes within a second, the others flow on.
    store(
        &server,
        &format!("tls: permissive, rules: [ {{ action: allow, from: [ \"{OTHER}\", unauthenticated ] }} ]"),
    );
    let took = closed_within(&mut web, Duration::from_secs(1)).await;
    assert!(took.is_some(), "web's connection is still open");
    eprintln!("revoked after {took:?}");
    echo_ok(&mut other, b"other-2").await;
    echo_ok(&mut plain, b"plain-2").await;

    // The port turns strict: plaintext peers are cut, other (mTLS, allowed) is not.
    store(&server, &format!("tls: strict, allow: [ \"{OTHER}\" ]"));
    assert!(closed_within(&mut plain, Duration::from_secs(1))
        .await
        .is_some());
    echo_ok(&mut other, b"other-3").await;

    // A change that still allows what is open touches nothing.
    store(
        &server,
        &format!("tls: strict, allow: [ \"{OTHER}\", \"{WEB}\" ]"),
    );
    assert!(closed_within(&mut other, Duration::from_millis(300))
        .await
        .is_none());
    echo_ok(&mut other, b"other-4").await;
    let port = format!("port=\"{}\"", app.port());
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "spoke_authz_revoked_connections_total", &[&port]),
        Some(2.0),
        "{m}"
    );
    // New connections meet the new policy at accept.
    let mut dev = within(tls(&pki.issue("dev", DEV))).await;
    assert!(closed_within(&mut dev, Duration::from_secs(2))
        .await
        .is_some());
}

/// An app that would accept an h2c upgrade (101) and records every request head it gets.
async fn h2c_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h2 = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let heads = h2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    buf.drain(..end + 4);
                    let reply: &[u8] = if head.contains("upgrade: h2c") {
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                    };
                    heads.lock().unwrap().push(head);
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

const H2C: &[u8] = b"GET /h2c HTTP/1.1\r\nhost: backend\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";

#[tokio::test]
async fn h2c_upgrades_are_never_tunnelled() {
    let pki = Pki::new(TD);
    let (app, heads) = h2c_app().await;
    // Through both sidecars (h2 over mTLS between them), and through one edge proxy.
    let pair = Pair::start(&pki, app, &format!("allow: [ \"{WEB}\" ]"), "auto").await;
    let edge = proxy(&format!(
        "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, cluster: app }} ]\n\
         clusters: [ {{ name: app, endpoints: [ {{ address: \"{app}\" }} ] }} ]\n"
    ))
    .await;
    for entry in [pair.client.listener("out"), edge.listener("web")] {
        let mut s = within(TcpStream::connect(entry.unwrap())).await.unwrap();
        s.write_all(H2C).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let mut body = [0u8; 3];
        within(s.read_exact(&mut body)).await.unwrap();
        // The connection is still HTTP/1.1, and still checked: a smuggling shape after
        // the refused upgrade is refused as ever.
        s.write_all(b"GET /next HTTP/1.1\r\nhost: backend\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        within(s.read_exact(&mut body)).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: backend\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4, "{heads:?}");
    for h in &heads {
        assert!(
            !h.contains("upgrade") && !h.contains("http2-settings"),
            "the app saw {h}"
        );
    }
}

#[tokio::test]
async fn websocket_tunnels_work_and_are_revoked_with_their_caller() {
    let pki = Pki::new(TD);
    let (app, _) = start_app("app").await;
    let pair = Pair::start(
        &pki,
        app,
        &format!(
            "rules: [ {{ action: allow, from: [ \"{WEB}\" ], paths: [ {{ prefix: /ws }} ] }} ]"
        ),
        "auto",
    )
    .await;
    let open = || async {
        let (s, head) = websocket(pair.client.listener("out").unwrap(), "backend").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        s
    };
    let mut ws = open().await;
    echo_ok(&mut ws, b"frames through two sidecars").await;
    // A policy that still allows the tunnel's request leaves it alone...
    pair.set_policy(&format!(
        "rules: [ {{ action: allow, from: [ \"{WEB}\" ], methods: [ GET ] }} ]"
    ));
    assert!(closed_within(&mut ws, Duration::from_millis(300))
        .await
        .is_none());
    echo_ok(&mut ws, b"still allowed").await;
    // ...one that no longer does closes it within a second.
    pair.set_policy(&format!(
        "rules: [ {{ action: allow, from: [ \"{WEB}\" ], paths: [ {{ prefix: /api }} ] }} ]"
    ));
    assert!(closed_within(&mut ws, Duration::from_secs(1))
        .await
        .is_some());
    let m = metrics(&pair.server).await;
    assert_eq!(
        metric(&m, "spoke_authz_revoked_connections_total", &[]),
        Some(1.0),
        "{m}"
    );
    // And a new attempt meets the new policy.
    let (_s, head) = websocket(pair.client.listener("out").unwrap(), "backend").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
}

#[tokio::test]
async fn upgrades_follow_the_listener_and_route_lists() {
    let (app, _) = start_app("app").await;
    let yaml = |listener: &str, route: &str| {
        format!(
            "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: app{listener} }} ]\n\
             clusters: [ {{ name: app, endpoints: [ {{ address: \"{app}\" }} ] }} ]\n\
             routes: [ {{ match: {{ path_prefix: /ws }}, cluster: app{route} }} ]\n"
        )
    };
    let upgrade = |p: SocketAddr| async move { websocket(p, "app").await.1 };
    // No upgrades on the listener: the request goes on as plain HTTP, and the app's 101
    // (to a request that asked for nothing) is not passed on.
    let p = proxy(&yaml(", upgrades: []", "")).await;
    let head = upgrade(p.listener("web").unwrap()).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-spoke-error: upstream_protocol"), "{head}");
    // The route's own list wins over the listener's.
    let p = proxy(&yaml(", upgrades: []", ", upgrades: [ websocket ]")).await;
    assert!(upgrade(p.listener("web").unwrap())
        .await
        .starts_with("http/1.1 101"));
}

#[tokio::test]
async fn outbound_changes_reach_open_client_connections() {
    let (a, _) = start_app("a").await;
    let (b, _) = start_app("b").await;
    let yaml = |to: &str| {
        format!(
            "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, cluster: a }} ]\n\
             clusters: [ {{ name: a, endpoints: [ {{ address: \"{a}\" }} ] }}, {{ name: b, endpoints: [ {{ address: \"{b}\" }} ] }} ]\n\
             routes: [ {{ match: {{ path_prefix: /svc }}, cluster: {to} }} ]\n"
        )
    };
    let p = proxy(&yaml("a")).await;
    let addr = p.listener("web").unwrap();
    let mut h1 = Client::connect(addr, false).await;
    let mut h2 = Client::connect(addr, true).await;
    assert_eq!(within(h1.get("/svc")).await.unwrap().field("server"), "a");
    assert_eq!(
        within(h2.get("http://backend/svc"))
            .await
            .unwrap()
            .field("server"),
        "a"
    );
    let cfg = spoke::config::from_yaml(&yaml("b")).unwrap();
    p.shared.store(spoke::snapshot::Snapshot::from_static(cfg));
    // The very next request on each open connection follows the new route.
    assert_eq!(within(h1.get("/svc")).await.unwrap().field("server"), "b");
    assert_eq!(
        within(h2.get("http://backend/svc"))
            .await
            .unwrap()
            .field("server"),
        "b"
    );
}

/// Through `spoke control` and two sidecar processes: the backend's policy is revoked and
/// restored while web's requests ride one pooled HTTP/2 mTLS connection.
#[test]
fn revoked_and_restored_over_one_pooled_http2_connection() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, _) = rt.block_on(start_app("app"));
    let m = Mesh::new();
    let (cp, cs, in_port, bs, out_port, ws) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mesh = |inbound: &str| {
        format!(
            "clusters: [ {{ name: backend, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"127.0.0.1:{in_port}\" }} ] }} ]\n\
             workloads: [ {{ identity: \"{BACKEND}\", inbound: [ {{ port: {}, {inbound} }} ] }} ]\n",
            app.port()
        )
    };
    m.write(&mesh(&format!("allow: [ \"{WEB}\" ]")));
    let _control = m.control(cp, cs);
    let _backend = m.sidecar(
        "backend-0",
        BACKEND,
        cp,
        bs,
        &format!("[ {{ name: in, address: 127.0.0.1:{in_port}, direction: inbound, forward: \"{app}\" }} ]"),
    );
    let _web = m.sidecar(
        "web-0",
        WEB,
        cp,
        ws,
        &format!(
            "[ {{ name: out, address: 127.0.0.1:{out_port}, protocol: http, cluster: backend }} ]"
        ),
    );
    for port in [bs, ws] {
        wait_for("sidecar ready", Duration::from_secs(20), || {
            get(port, "/ready").map(|r| r.0) == Some(200)
        });
    }
    let call = || http_blocking(out_port, "GET", "/echo").map(|r| r.0);
    let opened = || {
        metric(
            &get(bs, "/metrics").unwrap().1,
            "spoke_tcp_connections_opened_total",
            &["direction=\"inbound\""],
        )
    };
    assert_eq!(call(), Some(200));
    assert_eq!(opened(), Some(1.0));

    // Revoked by a deny rule: the first request after the backend ACKs is refused.
    m.write(&mesh(&format!(
        "rules: [ {{ action: deny, from: [ \"{WEB}\" ] }}, {{ action: allow, from: [ authenticated ] }} ]"
    )));
    wait_for("backend ACKs version 2", Duration::from_secs(5), || {
        acked(cs, BACKEND) == "2"
    });
    let r = http_blocking(out_port, "GET", "/echo").unwrap();
    assert_eq!(r.0, 403, "{}", r.1);
    assert_eq!(call(), Some(403));

    // Restored: 200 again, on the same pooled connection.
    m.write(&mesh(&format!("allow: [ \"{WEB}\" ]")));
    wait_for("backend ACKs version 3", Duration::from_secs(5), || {
        acked(cs, BACKEND) == "3"
    });
    assert_eq!(call(), Some(200));
    assert_eq!(opened(), Some(1.0), "the pooled connection was replaced");
    let bm = get(bs, "/metrics").unwrap().1;
    let port = format!("port=\"{}\"", app.port());
    assert_eq!(metric(&bm, "spoke_authz_denied_total", &[&port]), Some(2.0));
}

#[test]
fn check_refuses_request_rules_on_tcp_ports() {
    let dir = TempDir::new("authz-check");
    let f = dir.0.join("p.yaml");
    std::fs::write(
        &f,
        "inbound:\n  - port: 5432\n    protocol: tcp\n    tls: permissive\n    rules:\n      - { action: allow, from: [ unauthenticated ] }\n      - { action: allow, methods: [ GET ] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(["check", f.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("inbound[0].rules[1]"), "{err}");
    assert!(!err.contains("rules[0]"), "{err}");
}
