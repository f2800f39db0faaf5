//! What `/metrics` exports, as an operator's alerts see it: gauges only when their subject
//! exists (no certificate: no expiry gauge; no `control:`: no control gauge), connection and
//! byte counters for every listener whatever its protocol, the `listener` label on request
//! metrics, and the counters alerts divide by created at 0 before their first event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::http::*;
use support::pki::*;
use support::*;

async fn scrape(p: &spoke::app::Running) -> String {
    within(http(p.stats, "GET", "/metrics")).await.1
}

#[tokio::test]
async fn no_certificate_and_no_control_section_export_neither_gauge() {
    let app = echo().await;
    let p = proxy(&format!(
        "{BASE}listeners: [ {{ name: t, address: 127.0.0.1:0, protocol: tcp, cluster: c }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {{ address: \"{app}\" }} ] }} ]\n"
    ))
    .await;
    let m = scrape(&p).await;
    assert!(!m.contains("spoke_cert_expiry_timestamp_seconds"), "{m}");
    assert!(!m.contains("spoke_control_connected"), "{m}");
    assert!(!m.contains("spoke_tls_handshake_errors_total"), "{m}");
    // Known label sets exist at 0 before any traffic; a cluster's retry series come with
    // its first HTTP request (a thousand pushed clusters would otherwise be thousands of
    // series).
    assert!(!m.contains("spoke_retries_total{"), "{m}");
    for result in ["applied", "rejected"] {
        let want = format!("result=\"{result}\"");
        assert!(metric(&m, "spoke_config_updates_total", &[&want]).is_some());
    }
    // A TCP listener has connection and byte counters by listener.
    assert_eq!(
        within(roundtrip(p.listener("t").unwrap(), b"ping"))
            .await
            .unwrap(),
        b"ping"
    );
    let m = scrape(&p).await;
    let l = ["listener=\"t\"", "direction=\"outbound\""];
    assert_eq!(
        metric(&m, "spoke_listener_connections_opened_total", &l),
        Some(1.0)
    );
    let rx = [l[0], l[1], "flow=\"rx\""];
    let tx = [l[0], l[1], "flow=\"tx\""];
    assert_eq!(
        metric(&m, "spoke_listener_bytes_total", &rx),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "spoke_listener_bytes_total", &tx),
        Some(4.0),
        "{m}"
    );
}

#[tokio::test]
async fn http_listeners_count_connections_bytes_and_label_requests() {
    let (app, _seen) = start_app("a").await;
    let p = proxy(&format!(
        "{BASE}listeners: [ {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: app }} ]\n\
         clusters: [ {{ name: app, endpoints: [ {{ address: \"{app}\" }} ] }} ]\n"
    ))
    .await;
    let mut c = Client::connect(p.listener("web").unwrap(), false).await;
    for _ in 0..3 {
        assert_eq!(within(c.get("/echo")).await.unwrap().status, 200);
    }
    let m = scrape(&p).await;
    for reason in ["status", "reset", "connect_failure", "budget_exhausted"] {
        let want = format!("reason=\"{reason}\"");
        assert_eq!(
            metric(&m, "spoke_retries_total", &["cluster=\"app\"", &want]),
            Some(0.0),
            "{m}"
        );
    }
    let l = ["listener=\"web\"", "direction=\"outbound\""];
    assert_eq!(
        metric(&m, "spoke_listener_connections_opened_total", &l),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "spoke_listener_connections_active", &l),
        Some(1.0),
        "{m}"
    );
    for flow in ["flow=\"rx\"", "flow=\"tx\""] {
        let bytes = metric(&m, "spoke_listener_bytes_total", &[l[0], flow]).unwrap();
        assert!(bytes > 50.0, "{flow}: {bytes}\n{m}");
    }
    assert_eq!(
        metric(
            &m,
            "spoke_requests_total",
            &["listener=\"web\"", "cluster=\"app\"", "code=\"200\""]
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "spoke_request_duration_seconds_count",
            &["listener=\"web\""]
        ),
        Some(3.0)
    );
    drop(c);
    let start = std::time::Instant::now();
    loop {
        let m = scrape(&p).await;
        if metric(&m, "spoke_listener_connections_active", &l) == Some(0.0) {
            break;
        }
        assert!(
            start.elapsed() < T,
            "connection never counted as closed\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_certificate_brings_its_gauge_and_tls_counters_at_zero() {
    let pki = Pki::new("cluster.local");
    let files = pki.issue("web", WEB);
    let p = proxy(&format!(
        "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: 127.0.0.1:8080 }} ]\n\
         inbound: [ {{ port: 8080, allow: [ \"{BACKEND}\" ] }} ]\n",
        files.yaml("")
    ))
    .await;
    let m = scrape(&p).await;
    let expiry = metric(&m, "spoke_cert_expiry_timestamp_seconds", &[]).unwrap();
    assert!(expiry > 1.0e9, "{m}");
    assert!(!m.contains("spoke_control_connected"), "{m}");
    assert_eq!(
        metric(
            &m,
            "spoke_tls_handshake_errors_total",
            &["direction=\"inbound\"", "reason=\"unknown_ca\""]
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "spoke_authz_denied_total", &["port=\"8080\""]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "spoke_cert_reloads_total", &["result=\"rejected\""]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_control_section_brings_the_control_gauge() {
    let pki = Pki::new("cluster.local");
    let files = pki.issue("web", WEB);
    // Nothing listens at the control address: the gauge exists, at 0.
    let down = refused().await;
    let p = spoke::app::start(
        spoke::config::from_yaml(&format!(
            "{BASE}control: {{ address: \"{down}\", roots: \"{}\" }}\n",
            files.roots.display()
        ))
        .unwrap(),
        spoke::app::Options::default(),
    )
    .await
    .unwrap();
    let m = scrape(&p).await;
    assert_eq!(metric(&m, "spoke_control_connected", &[]), Some(0.0), "{m}");
    // Its certificate comes from the control plane, which is away: no expiry gauge yet.
    assert!(!m.contains("spoke_cert_expiry_timestamp_seconds"), "{m}");
}
