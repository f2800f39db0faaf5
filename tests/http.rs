//! HTTP through Spoke with real hyper clients and apps: HTTP/1.1 and HTTP/2 (and
//! gRPC-shaped trailers), two meshed sidecars speaking HTTP/2 over mTLS, routing and splits,
//! retries, timeouts, headers, upgrades and request metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::*;
use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One proxy with an auto-detecting listener in front of `clusters` and `routes`.
async fn edge(
    default: &str,
    clusters: &[(&str, std::net::SocketAddr)],
    routes: &str,
) -> spoke::app::Running {
    let cl: Vec<String> = clusters
        .iter()
        .map(|(n, a)| format!("  - {{ name: {n}, endpoints: [ {{ address: \"{a}\" }} ] }}\n"))
        .collect();
    proxy(&format!(
        "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, cluster: {default} }} ]\nclusters:\n{}{routes}",
        cl.concat()
    ))
    .await
}

#[tokio::test]
async fn http1_and_http2_pass_through_with_their_version() {
    let (app, seen) = start_app("a").await;
    let p = edge("app", &[("app", app)], "").await;
    let addr = p.listener("web").unwrap();
    let mut c = Client::connect(addr, false).await;
    for i in 0..3 {
        let r = within(c.send(req(
            "POST",
            &format!("/echo/{i}"),
            &[
                ("x-custom", "1"),
                ("connection", "x-custom, keep-alive"),
                ("keep-alive", "timeout=5"),
            ],
            "hello",
        )))
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.field("version"), "HTTP/1.1");
        assert_eq!(r.field("host"), "backend");
        assert_eq!(r.field("body-len"), "5");
        // Hop-by-hop headers (and those named by Connection) do not cross the proxy.
        assert_eq!(r.field("x-custom"), "-");
        assert_eq!(r.field("connection"), "-");
    }
    let mut c2 = Client::connect(addr, true).await;
    let r = within(c2.get("http://backend:8080/echo")).await.unwrap();
    assert_eq!(r.field("version"), "HTTP/2.0");
    assert_eq!(r.field("authority"), "backend:8080");
    // gRPC shape: trailers and grpc-status survive.
    let r = within(c2.send(req(
        "POST",
        "http://backend/grpc",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        "\0\0\0\0\0",
    )))
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let t = r.trailers.expect("trailers");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    assert_eq!(t.get("grpc-message").unwrap(), "fine");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    let m = within(http(p.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(
            &m,
            "spoke_requests_total",
            &["cluster=\"app\"", "code=\"200\"", "direction=\"outbound\""]
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &m,
            "spoke_request_duration_seconds_count",
            &["cluster=\"app\""]
        ),
        Some(5.0)
    );
    assert!(m.contains("le=\"0.0005\""));
    assert_eq!(
        metric(&m, "spoke_protocol_detected_total", &["protocol=\"http1\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "spoke_protocol_detected_total", &["protocol=\"http2\""]),
        Some(1.0)
    );
}

#[tokio::test]
async fn auto_listener_still_proxies_opaque_tcp() {
    let up = echo().await;
    let p = edge("app", &[("app", up)], "").await;
    let addr = p.listener("web").unwrap();
    assert_eq!(
        within(roundtrip(addr, b"\x00\x01 not http at all"))
            .await
            .unwrap(),
        b"\x00\x01 not http at all"
    );
}

#[tokio::test]
async fn routing_by_path_host_header_and_404() {
    let (a, _) = start_app("a").await;
    let (b, _) = start_app("b").await;
    let (c, _) = start_app("c").await;
    let p = proxy(&format!(
        "{BASE}listeners:\n  - {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: a }}\n  - {{ name: routes-only, address: 127.0.0.1:0, protocol: http }}\n\
         clusters: [ {{ name: a, endpoints: [ {{ address: \"{a}\" }} ] }}, {{ name: b, endpoints: [ {{ address: \"{b}\" }} ] }}, {{ name: c, endpoints: [ {{ address: \"{c}\" }} ] }} ]\n\
         routes:\n  - {{ match: {{ path_prefix: /api }}, cluster: b }}\n  - {{ match: {{ host: \"shop.example\" }}, cluster: c }}\n  - {{ match: {{ headers: [ {{ name: x-canary, exact: \"1\" }} ], method: GET }}, cluster: c }}\n"
    ))
    .await;
    let mut cl = Client::connect(p.listener("web").unwrap(), false).await;
    assert_eq!(
        within(cl.get("/api/v1")).await.unwrap().header("x-server"),
        "b"
    );
    assert_eq!(
        within(cl.get("/apix")).await.unwrap().header("x-server"),
        "a"
    );
    assert_eq!(
        within(cl.send(req("GET", "/", &[("x-canary", "1")], "")))
            .await
            .unwrap()
            .header("x-server"),
        "c"
    );
    assert_eq!(
        within(cl.send(req("POST", "/", &[("x-canary", "1")], "")))
            .await
            .unwrap()
            .header("x-server"),
        "a"
    );
    let mut h2 = Client::connect(p.listener("web").unwrap(), true).await;
    assert_eq!(
        within(h2.get("http://shop.example:80/"))
            .await
            .unwrap()
            .header("x-server"),
        "c"
    );

    // Without a listener cluster, no match is a 404 the proxy makes itself.
    let mut r = Client::connect(p.listener("routes-only").unwrap(), false).await;
    assert_eq!(within(r.get("/api")).await.unwrap().header("x-server"), "b");
    let got = within(r.get("/elsewhere")).await.unwrap();
    assert_eq!(got.status, 404);
    assert_eq!(got.header("x-spoke-error"), "no_route");
    assert_eq!(got.body, "no route matches this request\n");
    let m = within(http(p.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(&m, "spoke_upstream_rq_errors_total", &["kind=\"no_route\""]),
        Some(1.0)
    );
}

#[tokio::test]
async fn weighted_split_follows_weights() {
    let (a, _) = start_app("a").await;
    let (b, _) = start_app("b").await;
    let p = edge(
        "a",
        &[("a", a), ("b", b)],
        "routes: [ { match: { path_prefix: / }, split: [ { cluster: a, weight: 90 }, { cluster: b, weight: 10 } ] } ]\n",
    )
    .await;
    let mut c = Client::connect(p.listener("web").unwrap(), false).await;
    let mut nb = 0;
    for _ in 0..400 {
        if within(c.get("/")).await.unwrap().header("x-server") == "b" {
            nb += 1;
        }
    }
    assert!((15..=70).contains(&nb), "b got {nb} of 400");
}

#[tokio::test]
async fn retries_hide_a_flaky_backend_within_budget() {
    let (a, seen) = start_app("a").await;
    let p = edge(
        "a",
        &[("a", a)],
        "routes: [ { match: { path_prefix: / }, cluster: a, retry: { attempts: 2, on: [\"503\"], backoff: 5ms } } ]\n",
    )
    .await;
    let mut c = Client::connect(p.listener("web").unwrap(), false).await;
    seen.flaky_left.store(2, Ordering::SeqCst);
    let r = within(c.get("/flaky")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    // Two attempts are the limit: three failures in a row come through.
    seen.flaky_left.store(3, Ordering::SeqCst);
    assert_eq!(within(c.get("/flaky")).await.unwrap().status, 503);
    // POST is not idempotent: not retried.
    seen.flaky_left.store(1, Ordering::SeqCst);
    let before = seen.requests.load(Ordering::SeqCst);
    assert_eq!(
        within(c.send(req("POST", "/flaky", &[], "x")))
            .await
            .unwrap()
            .status,
        503
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), before + 1);
    let m = within(http(p.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(
            &m,
            "spoke_retries_total",
            &["cluster=\"a\"", "reason=\"status\""]
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn grpc_unavailable_is_retried_over_http2() {
    let (a, seen) = start_app("a").await;
    let p = edge(
        "a",
        &[("a", a)],
        "routes: [ { match: { path_prefix: / }, cluster: a, retry: { attempts: 3, on: [unavailable], backoff: 1ms } } ]\n",
    )
    .await;
    let mut c = Client::connect(p.listener("web").unwrap(), true).await;
    seen.flaky_left.store(2, Ordering::SeqCst);
    let r = within(c.send(req(
        "POST",
        "http://a/grpc-unavailable",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        "\0\0\0\0\0",
    )))
    .await
    .unwrap();
    assert_eq!(r.header("grpc-status"), "0");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retry_budget_stops_hammering_a_failing_service() {
    let (a, seen) = start_app("a").await;
    let p = edge(
        "a",
        &[("a", a)],
        "routes: [ { match: { path_prefix: / }, cluster: a, retry: { attempts: 3, on: [5xx], budget_percent: 10, backoff: 1ms } } ]\n",
    )
    .await;
    let mut c = Client::connect(p.listener("web").unwrap(), false).await;
    for _ in 0..200 {
        assert_eq!(within(c.get("/status/500")).await.unwrap().status, 500);
    }
    // 200 requests: at most 10% plus the floor of 5/s over the 10 s window are retried.
    let total = seen.requests.load(Ordering::SeqCst);
    assert!(
        total <= 200 + 20 + 50,
        "{total} requests reached the failing app"
    );
    let m = within(http(p.stats, "GET", "/metrics")).await.1;
    assert!(
        metric(&m, "spoke_retries_total", &["reason=\"budget_exhausted\""]).unwrap_or(0.0) > 0.0
    );
}

#[tokio::test]
async fn timeouts_and_connect_failures_are_proxy_errors() {
    let (a, _) = start_app("a").await;
    let dead = refused().await;
    let p = proxy(&format!(
        "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: a }} ]\n\
         clusters: [ {{ name: a, endpoints: [ {{ address: \"{a}\" }} ] }}, {{ name: dead, endpoints: [ {{ address: \"{dead}\" }} ] }} ]\n\
         routes:\n  - {{ match: {{ path: /hang }}, cluster: a, timeout: 300ms }}\n  - {{ match: {{ path_prefix: /dead }}, cluster: dead }}\n"
    ))
    .await;
    let mut c = Client::connect(p.listener("web").unwrap(), false).await;
    let start = Instant::now();
    let r = within(c.get("/hang")).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-spoke-error").as_str()),
        (504, "timeout")
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let r = within(c.get("/dead")).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-spoke-error").as_str()),
        (502, "connect_refused")
    );
    let m = within(http(p.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(&m, "spoke_requests_total", &["code=\"504\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "spoke_upstream_rq_errors_total",
            &["cluster=\"dead\"", "kind=\"connect_refused\""]
        ),
        Some(1.0)
    );
}

/// Two sidecars: the client speaks HTTP/1.1 to its sidecar, the sidecars speak HTTP/2 over
/// mTLS on one connection, and the app gets HTTP/1.1 back with the caller's identity.
#[tokio::test]
async fn meshed_hop_is_http2_over_mtls_and_app_gets_its_version() {
    let pki = Pki::new(TD);
    let (app, seen) = start_app("app").await;
    let Pair { server, client, .. } =
        Pair::start(&pki, app, &format!("allow: [ \"{WEB}\" ]"), "auto").await;
    let out = client.listener("out").unwrap();
    for _ in 0..3 {
        let mut c = Client::connect(out, false).await;
        for _ in 0..5 {
            let r = within(c.send(req(
                "GET",
                "/echo",
                &[(
                    "x-spoke-peer-id",
                    "spiffe://cluster.local/ns/evil/sa/forged",
                )],
                "",
            )))
            .await
            .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.field("version"), "HTTP/1.1");
            assert_eq!(r.field("host"), "backend");
            assert_eq!(r.field("peer-id"), WEB);
            assert_eq!(r.field("orig-proto"), "-");
        }
    }
    let mut c = Client::connect(out, true).await;
    let r = within(c.get("http://backend/echo")).await.unwrap();
    assert_eq!(r.field("version"), "HTTP/2.0");
    assert_eq!(r.field("peer-id"), WEB);
    let r = within(c.send(req(
        "POST",
        "http://backend/grpc",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        "\0\0\0\0\0",
    )))
    .await
    .unwrap();
    assert_eq!(r.trailers.unwrap().get("grpc-status").unwrap(), "0");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 17);
    // 17 requests over 4 client connections crossed the mesh on one pooled connection.
    let m = within(http(server.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(
            &m,
            "spoke_tcp_connections_opened_total",
            &["direction=\"inbound\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "spoke_requests_total",
            &["direction=\"inbound\"", "code=\"200\""]
        ),
        Some(17.0)
    );
    let m = within(http(client.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(
            &m,
            "spoke_requests_total",
            &[
                "direction=\"outbound\"",
                "cluster=\"backend\"",
                "code=\"200\""
            ]
        ),
        Some(17.0)
    );
}

#[tokio::test]
async fn a_burst_on_an_empty_pool_dials_the_peer_sidecar_once() {
    // 40 requests arrive together while no connection to the peer exists: one mTLS
    // connection is dialed and all of them share it (before, each dialed its own).
    let pki = Pki::new(TD);
    let (app, seen) = start_app("app").await;
    let Pair { server, client, .. } =
        Pair::start(&pki, app, &format!("allow: [ \"{WEB}\" ]"), "auto").await;
    let out = client.listener("out").unwrap();
    let go = Arc::new(tokio::sync::Barrier::new(40));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(out, false).await;
            go.wait().await;
            within(c.get("http://backend/echo")).await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 40);
    let m = within(http(server.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(
            &m,
            "spoke_tcp_connections_opened_total",
            &["direction=\"inbound\""]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn denied_http_peer_gets_403() {
    let pki = Pki::new(TD);
    let (app, seen) = start_app("app").await;
    let Pair { server, client, .. } = Pair::start(
        &pki,
        app,
        &format!("protocol: http, allow: [ \"{BACKEND}\" ]"),
        "http",
    )
    .await;
    let mut c = Client::connect(client.listener("out").unwrap(), false).await;
    let r = within(c.get("/echo")).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-spoke-error").as_str()),
        (403, "unauthorized")
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    let m = within(http(server.stats, "GET", "/metrics")).await.1;
    assert_eq!(metric(&m, "spoke_authz_denied_total", &[]), Some(1.0));
}

#[tokio::test]
async fn websocket_upgrade_becomes_a_tunnel() {
    let (app, _) = start_app("app").await;
    let p = edge("app", &[("app", app)], "").await;
    let (mut s, head) = websocket(p.listener("web").unwrap(), "backend").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"raw frames after the upgrade").await.unwrap();
    let mut back = vec![0u8; 28];
    within(s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"raw frames after the upgrade");
}

#[tokio::test]
async fn request_size_limit_and_stream_idle_timeout() {
    let (a, seen) = start_app("a").await;
    let p = proxy(&format!(
        "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: a, max_request_bytes: 1000 }} ]\n\
         clusters: [ {{ name: a, endpoints: [ {{ address: \"{a}\" }} ] }} ]\n\
         routes: [ {{ match: {{ path_prefix: / }}, cluster: a, idle_timeout: 300ms }} ]\n"
    ))
    .await;
    let addr = p.listener("web").unwrap();
    let mut c = Client::connect(addr, false).await;
    let r = within(c.send(req("POST", "/echo", &[], &"x".repeat(1001))))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-spoke-error").as_str()),
        (413, "request_too_large")
    );
    let mut c = Client::connect(addr, false).await;
    let r = within(c.send(req("POST", "/echo", &[], &"x".repeat(1000))))
        .await
        .unwrap();
    assert_eq!((r.status, r.field("body-len").as_str()), (200, "1000"));
    // A chunked body (no length up front) that grows past the limit.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = "y".repeat(600);
    s.write_all(format!("POST /echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = within(s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("x-spoke-error: request_too_large"), "{text}");
    assert!(seen.requests.load(Ordering::SeqCst) <= 2);

    // A response stream that goes quiet is cut at the idle timeout: the client sees an error.
    let mut c = Client::connect(addr, false).await;
    let start = Instant::now();
    let r = within(c.get("/stall")).await;
    assert!(r.is_err(), "a stalled stream must not look complete");
    assert!(
        start.elapsed() >= Duration::from_millis(290) && start.elapsed() < Duration::from_secs(3)
    );
}

/// A real gRPC client and server (tonic, from the control plane's generated code) through
/// the proxy: unary calls, status codes, and `unavailable` retried.
#[tokio::test]
async fn real_grpc_through_the_proxy() {
    use spoke::control::pb::identity::identity_client::IdentityClient;
    use spoke::control::pb::identity::identity_server::{Identity, IdentityServer};
    use spoke::control::pb::identity::{CertifyRequest, CertifyResponse};
    use std::sync::atomic::AtomicU32;

    struct Svc(Arc<AtomicU32>);
    #[tonic::async_trait]
    impl Identity for Svc {
        async fn certify(
            &self,
            req: tonic::Request<CertifyRequest>,
        ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
            let r = req.into_inner();
            if r.token == "deny" {
                return Err(tonic::Status::permission_denied("no"));
            }
            // The first call of each "flaky" pair fails with UNAVAILABLE.
            if r.token == "flaky" && self.0.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                return Err(tonic::Status::unavailable("try again"));
            }
            Ok(tonic::Response::new(CertifyResponse {
                cert_chain_pem: format!("echo:{}", r.csr_pem),
                roots_pem: String::new(),
                not_after: 7,
            }))
        }
    }
    let calls = Arc::new(AtomicU32::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let svc = IdentityServer::new(Svc(calls.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let p = edge(
        "grpc",
        &[("grpc", up)],
        "routes: [ { match: { path_prefix: / }, cluster: grpc, retry: { attempts: 2, on: [unavailable], backoff: 1ms } } ]\n",
    )
    .await;
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{}", p.listener("web").unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut c = IdentityClient::new(ch);
    for i in 0..5 {
        let r = within(c.certify(CertifyRequest {
            csr_pem: format!("{i}"),
            token: "ok".into(),
        }))
        .await
        .unwrap()
        .into_inner();
        assert_eq!(
            (r.cert_chain_pem.as_str(), r.not_after),
            (format!("echo:{i}").as_str(), 7)
        );
    }
    let e = within(c.certify(CertifyRequest {
        csr_pem: String::new(),
        token: "deny".into(),
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // UNAVAILABLE is retried by the proxy: the client sees success.
    let r = within(c.certify(CertifyRequest {
        csr_pem: "x".into(),
        token: "flaky".into(),
    }))
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let m = within(http(p.stats, "GET", "/metrics")).await.1;
    assert_eq!(
        metric(&m, "spoke_retries_total", &["reason=\"grpc\""]),
        Some(1.0)
    );
}

/// curl, HTTP/1.1 and HTTP/2 with prior knowledge, through the proxy.
#[tokio::test]
async fn curl_http1_and_http2() {
    if !need(
        "curl_http1_and_http2",
        "curl (apt-get install curl; make test installs it as root)",
        have("curl"),
    ) {
        return;
    }
    let (app, _) = start_app("app").await;
    let p = edge("app", &[("app", app)], "").await;
    let url = format!("http://{}/echo", p.listener("web").unwrap());
    for (flag, want) in [
        ("--http1.1", "HTTP/1.1"),
        ("--http2-prior-knowledge", "HTTP/2.0"),
    ] {
        let u = url.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "5", flag, "-H", "host: backend", &u])
                .output()
                .expect("curl is needed (apt-get install curl; .ci/run installs it)")
        })
        .await
        .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains(&format!("version: {want}")), "{flag}: {body}");
    }
}
