//! Resilience with real upstreams on 127.0.0.1: least_request steering away from a slow
//! endpoint, outlier ejection of a failing one (and panic mode when all fail), circuit
//! breaker overflow and the bounded queue, failover between priority levels driven by
//! active health checks, state kept across a push, ring_hash stickiness, and requests
//! that upstreams never processed (GOAWAY every N requests, a draining peer sidecar)
//! sent again so that none fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::http::*;
use support::pki::*;
use support::*;
use tokio::net::TcpListener;

/// How a test app behaves, changed by the test while it runs.
struct Ctl {
    id: &'static str,
    status: AtomicU16,
    delay_ms: AtomicU64,
    healthy: AtomicBool,
    hits: AtomicUsize,
}

async fn handle(
    ctl: Arc<Ctl>,
    req: ::http::Request<hyper::body::Incoming>,
) -> Result<::http::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        let code = if ctl.healthy.load(SeqCst) { 200 } else { 503 };
        let mut r = ::http::Response::new(Full::new(Bytes::from_static(b"")));
        *r.status_mut() = ::http::StatusCode::from_u16(code).unwrap();
        return Ok(r);
    }
    ctl.hits.fetch_add(1, SeqCst);
    let delay = ctl.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut r = ::http::Response::new(Full::new(Bytes::from(format!("server: {}\n", ctl.id))));
    *r.status_mut() = ::http::StatusCode::from_u16(ctl.status.load(SeqCst)).unwrap();
    Ok(r)
}

/// An HTTP/1.1 + HTTP/2 app answering `server: <id>` with the status and delay it is set to.
async fn app(id: &'static str) -> (SocketAddr, Arc<Ctl>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let ctl = Arc::new(Ctl {
        id,
        status: AtomicU16::new(200),
        delay_ms: AtomicU64::new(0),
        healthy: AtomicBool::new(true),
        hits: AtomicUsize::new(0),
    });
    let c2 = ctl.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let ctl = c2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(ctl.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, ctl)
}

/// A proxy with listener `web` (HTTP) in front of cluster `c` with `extra` cluster fields.
async fn edge(endpoints: &[(SocketAddr, &str)], extra: &str) -> spoke::app::Running {
    proxy(&edge_yaml(endpoints, extra)).await
}

fn edge_yaml(endpoints: &[(SocketAddr, &str)], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, more)| format!("{{ address: \"{a}\"{more} }}"))
        .collect();
    format!(
        "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: c }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {} ]{extra} }} ]\n",
        eps.join(", ")
    )
}

/// Sends `n` GETs on one keep-alive connection; (status, server) of each.
async fn calls(addr: SocketAddr, n: usize, path: &str) -> Vec<(u16, String)> {
    let mut c = Client::connect(addr, false).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = within(c.get(path)).await.unwrap();
        out.push((r.status, r.field("server")));
    }
    out
}

async fn clusters_doc(p: &spoke::app::Running) -> serde_json::Value {
    serde_json::from_str(&within(http(p.admin, "GET", "/clusters")).await.1).unwrap()
}

fn state_of(doc: &serde_json::Value, addr: SocketAddr) -> String {
    doc[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .map(|e| e["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn metrics(p: &spoke::app::Running) -> String {
    within(http(p.stats, "GET", "/metrics")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_endpoint() {
    let (a, _) = app("a").await;
    let (b, _) = app("b").await;
    let (slow, slow_ctl) = app("slow").await;
    slow_ctl.delay_ms.store(50, SeqCst);
    let p = edge(&[(a, ""), (b, ""), (slow, "")], "").await;
    let addr = p.listener("web").unwrap();
    let workers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { calls(addr, 40, "/x").await }))
        .collect();
    let mut per = std::collections::HashMap::<String, usize>::new();
    for w in workers {
        for (status, server) in within(w).await.unwrap() {
            assert_eq!(status, 200);
            *per.entry(server).or_default() += 1;
        }
    }
    let total: usize = per.values().sum();
    let slow_share = per.get("slow").copied().unwrap_or(0) as f64 / total as f64;
    // A fair share would be a third; latency-aware picking keeps it far lower.
    assert!(
        slow_share < 0.12,
        "slow endpoint got {slow_share:.2} of {total}: {per:?}"
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_errors_stop() {
    let (a, _) = app("a").await;
    let (b, _) = app("b").await;
    let (bad, bad_ctl) = app("bad").await;
    bad_ctl.status.store(500, SeqCst);
    let p = edge(
        &[(a, ""), (b, ""), (bad, "")],
        ", lb: round_robin, outlier_detection: { consecutive_5xx: 3, base_ejection: 30s }",
    )
    .await;
    let out = calls(p.listener("web").unwrap(), 60, "/x").await;
    let errors = out.iter().filter(|(s, _)| *s == 500).count();
    assert_eq!(errors, 3, "errors until ejection: {out:?}");
    // After the ejection every request succeeds.
    assert!(out[12..].iter().all(|(s, _)| *s == 200), "{out:?}");
    let doc = clusters_doc(&p).await;
    assert_eq!(state_of(&doc, bad), "ejected", "{doc}");
    assert_eq!(state_of(&doc, a), "healthy");
    let m = metrics(&p).await;
    assert_eq!(
        metric(&m, "spoke_outlier_ejections_total", &["cluster=\"c\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "spoke_endpoints",
            &["cluster=\"c\"", "state=\"ejected\""]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn gateway_errors_eject_by_default_and_all_ejected_is_panic_mode() {
    let (a, a_ctl) = app("a").await;
    let (b, b_ctl) = app("b").await;
    a_ctl.status.store(503, SeqCst);
    b_ctl.status.store(503, SeqCst);
    let p = edge(
        &[(a, ""), (b, "")],
        ", outlier_detection: { max_ejection_percent: 100 }",
    )
    .await;
    let out = calls(p.listener("web").unwrap(), 30, "/x").await;
    // Both ejected after 5 gateway errors each; the proxy still sends (panic mode)
    // rather than answer no_healthy_endpoints, so the apps' own 503s come back.
    assert!(
        out.iter().all(|(s, srv)| *s == 503 && !srv.is_empty()),
        "{out:?}"
    );
    let doc = clusters_doc(&p).await;
    assert_eq!(
        (state_of(&doc, a), state_of(&doc, b)),
        ("ejected".into(), "ejected".into())
    );
    let m = metrics(&p).await;
    assert!(
        metric(&m, "spoke_lb_panic_total", &["cluster=\"c\""]).unwrap() >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn breaker_overflow_is_an_immediate_503_and_the_queue_is_bounded() {
    let (slow, ctl) = app("slow").await;
    ctl.delay_ms.store(1_000, SeqCst);
    let p = edge(
        &[(slow, "")],
        ", queue_timeout: 200ms, circuit_breaker: { max_requests: 3, max_connections: 1, max_pending: 1 }",
    )
    .await;
    let addr = p.listener("web").unwrap();
    let one = || {
        tokio::spawn(async move {
            let start = Instant::now();
            let r = within(Client::connect(addr, false).await.get("/x"))
                .await
                .unwrap();
            (r.status, r.header("x-spoke-error"), start.elapsed())
        })
    };
    // 1 holds the only connection; 2 waits in the queue; 3 finds the queue full.
    let first = one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = one();
    let (s3, k3, t3) = within(third).await.unwrap();
    assert_eq!((s3, k3.as_str()), (503, "circuit_open"));
    assert!(t3 < Duration::from_millis(100), "{t3:?}");
    let (s2, k2, t2) = within(second).await.unwrap();
    assert_eq!((s2, k2.as_str()), (503, "queue_timeout"));
    assert!(
        t2 >= Duration::from_millis(190) && t2 < Duration::from_millis(600),
        "{t2:?}"
    );
    assert_eq!(within(first).await.unwrap().0, 200);
    // max_requests: 3 in flight, the fourth is refused at once.
    let p = edge(&[(slow, "")], ", circuit_breaker: { max_requests: 3 }").await;
    let addr = p.listener("web").unwrap();
    let held: Vec<_> = (0..3).map(|_| one_at(addr)).collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = Instant::now();
    let r = within(Client::connect(addr, false).await.get("/x"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-spoke-error").as_str()),
        (503, "circuit_open")
    );
    assert!(start.elapsed() < Duration::from_millis(100));
    for h in held {
        assert_eq!(within(h).await.unwrap(), 200);
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            "spoke_circuit_breaker_overflow_total",
            &["limit=\"requests\""]
        ),
        Some(1.0),
        "{m}"
    );
}

fn one_at(addr: SocketAddr) -> tokio::task::JoinHandle<u16> {
    tokio::spawn(async move {
        within(Client::connect(addr, false).await.get("/x"))
            .await
            .unwrap()
            .status
    })
}

#[tokio::test]
async fn failover_to_priority_1_and_back_by_health_checks() {
    let (p0, p0_ctl) = app("p0").await;
    let (p1, _) = app("p1").await;
    let p = edge(
        &[(p0, ""), (p1, ", priority: 1")],
        ", health_check: { http: /healthz, interval: 50ms, timeout: 200ms, healthy: 2, unhealthy: 2 }",
    )
    .await;
    let addr = p.listener("web").unwrap();
    let servers = |out: Vec<(u16, String)>| out.into_iter().map(|(_, s)| s).collect::<Vec<_>>();
    assert!(servers(calls(addr, 10, "/x").await)
        .iter()
        .all(|s| s == "p0"));
    p0_ctl.healthy.store(false, SeqCst);
    let start = Instant::now();
    loop {
        if state_of(&clusters_doc(&p).await, p0) == "unhealthy" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "never marked unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(servers(calls(addr, 10, "/x").await)
        .iter()
        .all(|s| s == "p1"));
    p0_ctl.healthy.store(true, SeqCst);
    let start = Instant::now();
    while state_of(&clusters_doc(&p).await, p0) != "healthy" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "never healthy again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(servers(calls(addr, 10, "/x").await)
        .iter()
        .all(|s| s == "p0"));
}

#[tokio::test]
async fn a_dead_endpoint_is_not_shown_healthy() {
    let (a, _) = app("a").await;
    let dead = refused().await;
    let p = edge(
        &[(a, ""), (dead, "")],
        ", health_check: { interval: 50ms, timeout: 200ms, unhealthy: 2 }",
    )
    .await;
    let start = Instant::now();
    while state_of(&clusters_doc(&p).await, dead) != "unhealthy" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{}",
            clusters_doc(&p).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state_of(&clusters_doc(&p).await, a), "healthy");
    // Without health checks, passive detection gets there from the traffic itself.
    let p = edge(&[(a, ""), (dead, "")], ", lb: round_robin").await;
    let out = calls(p.listener("web").unwrap(), 20, "/x").await;
    assert!(out.iter().all(|(s, _)| *s == 200), "{out:?}");
    assert_eq!(state_of(&clusters_doc(&p).await, dead), "ejected");
}

#[tokio::test]
async fn an_ejection_survives_a_push_that_adds_an_endpoint() {
    let (a, _) = app("a").await;
    let (bad, bad_ctl) = app("bad").await;
    let (c, _) = app("c").await;
    bad_ctl.status.store(502, SeqCst);
    let extra = ", lb: round_robin, outlier_detection: { max_ejection_percent: 100 }";
    let p = edge(&[(a, ""), (bad, "")], extra).await;
    calls(p.listener("web").unwrap(), 12, "/x").await;
    assert_eq!(state_of(&clusters_doc(&p).await, bad), "ejected");
    let cfg = spoke::config::from_yaml(&edge_yaml(&[(a, ""), (bad, ""), (c, "")], extra)).unwrap();
    p.shared.store(spoke::snapshot::Snapshot::from_static(cfg));
    let doc = clusters_doc(&p).await;
    assert_eq!(state_of(&doc, bad), "ejected", "{doc}");
    assert_eq!(state_of(&doc, c), "healthy");
    let out = calls(p.listener("web").unwrap(), 20, "/x").await;
    assert!(
        out.iter().all(|(s, srv)| *s == 200 && srv != "bad"),
        "{out:?}"
    );
    assert!(out.iter().any(|(_, srv)| srv == "c"));
}

#[tokio::test]
async fn ring_hash_keeps_a_key_on_one_endpoint() {
    let (a, _) = app("a").await;
    let (b, _) = app("b").await;
    let (c, _) = app("c").await;
    let p = edge(
        &[(a, ""), (b, ""), (c, "")],
        ", lb: ring_hash, ring_hash: { header: x-user }",
    )
    .await;
    let addr = p.listener("web").unwrap();
    let mut client = Client::connect(addr, false).await;
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let u = format!("user-{user}");
        let first = within(client.send(req("GET", "/x", &[("x-user", &u)], "")))
            .await
            .unwrap();
        for _ in 0..3 {
            let again = within(client.send(req("GET", "/x", &[("x-user", &u)], "")))
                .await
                .unwrap();
            assert_eq!(again.field("server"), first.field("server"), "{u}");
        }
        seen.insert(first.field("server"));
    }
    assert_eq!(seen.len(), 3, "keys spread over every endpoint: {seen:?}");
}

/// An HTTP/2 app that ends every connection with GOAWAY after `every` requests, as nginx
/// does after 1,000 by default.
async fn rotating_h2_app(every: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let count = Arc::new(AtomicUsize::new(0));
                let full = Arc::new(tokio::sync::Notify::new());
                let (c2, f2) = (count.clone(), full.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    let (count, full) = (c2.clone(), f2.clone());
                    async move {
                        if count.fetch_add(1, SeqCst) + 1 == every {
                            full.notify_one();
                        }
                        Ok::<_, Infallible>(::http::Response::new(Full::new(Bytes::from_static(
                            b"ok\n",
                        ))))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = full.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_every_n_requests_loses_nothing() {
    let up = rotating_h2_app(50).await;
    let p = edge(&[(up, "")], "").await;
    let addr = p.listener("web").unwrap();
    // h2 in, h2 out: many streams in flight on the connection that the app rotates.
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(addr, true).await;
            let Client::H2(sender) = c else {
                unreachable!()
            };
            let mut streams = Vec::new();
            for _ in 0..250 {
                let mut s = sender.clone();
                let failed = failed.clone();
                streams.push(tokio::spawn(async move {
                    let r = s.send_request(req("GET", "http://app/x", &[], "")).await;
                    match r {
                        Ok(r) if r.status() == 200 => {}
                        other => {
                            if let Ok(r) = other {
                                use http_body_util::BodyExt;
                                let b = r.into_body().collect().await.map(|b| b.to_bytes());
                                eprintln!("failed: {b:?}");
                            }
                            failed.fetch_add(1, SeqCst);
                        }
                    }
                }));
            }
            for s in streams {
                within(s).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
    assert_eq!(failed.load(SeqCst), 0, "requests failed across GOAWAYs");
    let m = metrics(&p).await;
    assert_eq!(
        metric(&m, "spoke_requests_total", &["code=\"200\""]),
        Some(1000.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_peer_sidecar_under_load_loses_nothing() {
    let pki = Pki::new(TD);
    let (app_addr, _) = app("app").await;
    let backend = |name: &'static str| {
        let files = pki.issue(name, BACKEND);
        async move {
            proxy(&format!(
                "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app_addr}\" }} ]\n\
                 inbound: [ {{ port: {}, allow: [ \"{WEB}\" ] }} ]\ndrain_timeout: 5s\n",
                files.yaml(""),
                app_addr.port()
            ))
            .await
        }
    };
    let b1 = backend("b1").await;
    let b2 = backend("b2").await;
    let client = proxy(&format!(
        "{BASE}{}listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: http, cluster: backend }} ]\n\
         clusters: [ {{ name: backend, lb: round_robin, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ] }} ]\n",
        pki.issue("web", WEB).yaml(""),
        b1.listener("in").unwrap(),
        b2.listener("in").unwrap()
    ))
    .await;
    let addr = client.listener("out").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(addr, false).await;
                while !stop.load(SeqCst) {
                    match within(c.get("/x")).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, SeqCst),
                        _ => failed.fetch_add(1, SeqCst),
                    };
                }
            })
        })
        .collect();
    // Load flowing through both backends first (however slow the machine is).
    let served = |n: usize| {
        let ok = ok.clone();
        async move {
            while ok.load(SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    within(served(50)).await;
    // A rolling update: b1 drains (GOAWAY to its callers, stops accepting) and exits.
    let before = ok.load(SeqCst);
    within(b1.shutdown()).await;
    // And more after it, all through b2.
    within(served(before + 50)).await;
    stop.store(true, SeqCst);
    for w in workers {
        within(w).await.unwrap();
    }
    assert_eq!(
        failed.load(SeqCst),
        0,
        "requests failed while a peer drained"
    );
}
