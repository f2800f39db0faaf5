//! Distributed tracing end to end: two in-process sidecars meshed with real mTLS, an app
//! that echoes the trace headers it gets, and OTLP receivers (tonic gRPC, hyper HTTP, and
//! an independent Python one on PyPI's `opentelemetry-proto` + `grpcio`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "tracing/otlp.rs"]
mod otlp;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otlp::{grpc_receiver, http_receiver, trace_app, Rec};
use support::http::{req, Client, Got};
use support::pki::{Pki, BACKEND, WEB};
use support::{within, BASE};

const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SID: &str = "00f067aa0ba902b7";
const CLIENT: i32 = 3;
const SERVER: i32 = 2;

/// A web sidecar (listener `out`) meshed to a backend sidecar (listener `in`) in front of
/// `app`, both with the same `tracing:` line (empty: tracing off).
struct Traced {
    client: spoke::app::Running,
    server: spoke::app::Running,
    _pki: Pki,
}

impl Traced {
    async fn start(app: SocketAddr, tracing: &str) -> Traced {
        Self::start2(app, tracing, tracing).await
    }

    /// With a `tracing:` line for the client sidecar and another for the server sidecar.
    async fn start2(app: SocketAddr, client_tracing: &str, server_tracing: &str) -> Traced {
        let pki = Pki::new(support::pki::TD);
        let server = support::proxy(&format!(
            "{BASE}{}node: {{ id: backend-0 }}\n{server_tracing}\n\
             listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n\
             inbound: [ {{ port: {}, allow: [ \"{WEB}\" ] }} ]\n",
            pki.issue("backend", BACKEND).yaml(""),
            app.port()
        ))
        .await;
        let client = support::proxy(&format!(
            "{BASE}{}node: {{ id: web-0 }}\n{client_tracing}\n\
             listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: http, cluster: backend }} ]\n\
             clusters: [ {{ name: backend, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
             routes: [ {{ match: {{ path_prefix: /flaky }}, cluster: backend, retry: {{ attempts: 2, on: [\"503\"], backoff: 1ms, budget_percent: 100 }} }} ]\n",
            pki.issue("web", WEB).yaml(""),
            server.listener("in").unwrap()
        ))
        .await;
        Traced {
            client,
            server,
            _pki: pki,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        let addr = self.client.listener("out").unwrap();
        let mut c = within(Client::connect(addr, false)).await;
        within(c.send(req("GET", path, headers, ""))).await.unwrap()
    }

    fn dropped(&self) -> u64 {
        self.client.shared.metrics.trace_spans_dropped.get()
            + self.server.shared.metrics.trace_spans_dropped.get()
    }
}

fn tracing(sampling: &str, collector: SocketAddr, protocol: &str) -> String {
    format!(
        "tracing: {{ sampling: {sampling}, collector: {{ address: \"{collector}\", protocol: {protocol}, timeout: 1s }} }}"
    )
}

async fn app() -> SocketAddr {
    trace_app(Arc::new(AtomicUsize::new(0))).await
}

fn by_kind(spans: &[Rec], kind: i32) -> Vec<&Rec> {
    spans.iter().filter(|s| s.span.kind == kind).collect()
}

fn one(spans: &[Rec], kind: i32) -> &Rec {
    let v = by_kind(spans, kind);
    assert_eq!(v.len(), 1, "want one span of kind {kind}: {spans:#?}");
    v[0]
}

#[tokio::test]
async fn one_request_two_spans_linked_across_the_hop() {
    let (collector, spans) = grpc_receiver().await;
    let app = app().await;
    let t = Traced::start(app, &tracing("1.0", collector, "grpc")).await;
    let got = t.get("/hello?x=1", &[]).await;
    assert_eq!(got.status, 200);
    let spans = spans.wait(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = one(&spans, CLIENT);
    let server = one(&spans, SERVER);
    assert_eq!(client.trace_id(), server.trace_id());
    assert_eq!(client.parent(), "", "a new trace starts at the client span");
    assert_eq!(server.parent(), client.span_id());
    assert_eq!(
        (client.service.as_str(), server.service.as_str()),
        ("web-0", "backend-0")
    );
    // The app is called with the server span as parent.
    assert_eq!(
        got.field("traceparent"),
        format!("00-{}-{}-01", server.trace_id(), server.span_id())
    );
    for s in [client, server] {
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("url.path").as_deref(), Some("/hello"));
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("server.address").as_deref(), Some("backend"));
        assert_eq!(s.attr("spoke.retries").as_deref(), Some("0"));
        assert!(s.attr("network.peer.address").is_some());
        assert!(s.attr("spoke.endpoint").is_some());
        assert_eq!(s.span.status.as_ref().map(|s| s.code), Some(0));
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    assert_eq!(client.attr("spoke.cluster").as_deref(), Some("backend"));
    assert_eq!(client.attr("spoke.route").as_deref(), Some("default"));
    assert_eq!(client.attr("spoke.peer_id").as_deref(), Some(BACKEND));
    assert_eq!(server.attr("spoke.peer_id").as_deref(), Some(WEB));
    let exported = t.client.shared.metrics.render();
    assert_eq!(
        support::metric(&exported, "spoke_trace_spans_exported_total", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn incoming_w3c_context_is_continued() {
    let (collector, spans) = grpc_receiver().await;
    let t = Traced::start(app().await, &tracing("0", collector, "grpc")).await;
    // Sampling 0, but the caller sampled it: its decision wins.
    let tp = format!("00-{TID}-{SID}-01");
    let got = t
        .get(
            "/w3c",
            &[("traceparent", &tp), ("tracestate", "vendor=abc")],
        )
        .await;
    let spans = spans.wait(2).await;
    let client = one(&spans, CLIENT);
    let server = one(&spans, SERVER);
    assert_eq!(client.trace_id(), TID);
    assert_eq!(client.parent(), SID);
    assert_eq!(server.parent(), client.span_id());
    assert_eq!(client.span.trace_state, "vendor=abc");
    assert_eq!(got.field("tracestate"), "vendor=abc");
    assert_eq!(
        got.field("traceparent"),
        format!("00-{TID}-{}-01", server.span_id())
    );
}

#[tokio::test]
async fn unsampled_or_malformed_contexts() {
    let (collector, spans) = grpc_receiver().await;
    let t = Traced::start(app().await, &tracing("1.0", collector, "grpc")).await;
    // The caller decided not to sample: no spans, the header passes on untouched.
    let tp = format!("00-{TID}-{SID}-00");
    let got = t.get("/unsampled", &[("traceparent", &tp)]).await;
    assert_eq!(got.field("traceparent"), tp);
    assert!(spans.settle().await.is_empty());
    // A malformed header is ignored: a new trace (sampling 1), never an error.
    let got = t.get("/bad", &[("traceparent", "00-zz-yy-01")]).await;
    assert_eq!(got.status, 200);
    let spans = spans.wait(2).await;
    let client = one(&spans, CLIENT);
    assert_ne!(client.trace_id(), TID);
    assert_eq!(client.parent(), "");
    assert!(got.field("traceparent").contains(&client.trace_id()));
}

#[tokio::test]
async fn incoming_b3_context_is_continued_in_b3() {
    let (collector, spans) = grpc_receiver().await;
    let t = Traced::start(app().await, &tracing("0", collector, "grpc")).await;
    let got = t.get("/b3", &[("b3", &format!("{TID}-{SID}-1"))]).await;
    let all = spans.wait(2).await;
    let client = one(&all, CLIENT);
    let server = one(&all, SERVER);
    assert_eq!(client.trace_id(), TID);
    assert_eq!(client.parent(), SID);
    assert_eq!(server.parent(), client.span_id());
    assert_eq!(
        got.field("b3"),
        format!("{TID}-{}-1-{}", server.span_id(), client.span_id())
    );
    assert_eq!(got.field("traceparent"), "-", "the format it came in, only");

    // The multi-header form, with a 64-bit trace id.
    let short = &TID[16..];
    let got = t
        .get(
            "/b3multi",
            &[
                ("x-b3-traceid", short),
                ("x-b3-spanid", SID),
                ("x-b3-sampled", "1"),
            ],
        )
        .await;
    let all = spans.wait(4).await;
    let later: Vec<Rec> = all[2..].to_vec();
    let client = one(&later, CLIENT);
    let server = one(&later, SERVER);
    assert_eq!(client.trace_id(), format!("{}{short}", "0".repeat(16)));
    assert_eq!(client.parent(), SID);
    assert_eq!(server.parent(), client.span_id());
    assert_eq!(got.field("x-b3-traceid"), short);
    assert_eq!(got.field("x-b3-spanid"), server.span_id());
    assert_eq!(got.field("x-b3-parentspanid"), client.span_id());
    assert_eq!(got.field("x-b3-sampled"), "1");
}

#[tokio::test]
async fn a_retried_request_shows_its_tries() {
    let (collector, spans) = grpc_receiver().await;
    let fail = Arc::new(AtomicUsize::new(1));
    let t = Traced::start(trace_app(fail).await, &tracing("1.0", collector, "grpc")).await;
    let got = t.get("/flaky", &[]).await;
    assert_eq!(got.status, 200);
    let spans = spans.wait(3).await;
    let client = one(&spans, CLIENT);
    let servers = by_kind(&spans, SERVER);
    assert_eq!(servers.len(), 2, "one server span per try: {spans:#?}");
    for s in &servers {
        assert_eq!(s.trace_id(), client.trace_id());
        assert_eq!(s.parent(), client.span_id());
    }
    let codes: Vec<String> = servers
        .iter()
        .map(|s| s.attr("http.response.status_code").unwrap())
        .collect();
    assert!(codes.contains(&"503".to_string()) && codes.contains(&"200".to_string()));
    let failed = servers
        .iter()
        .find(|s| s.attr("http.response.status_code").as_deref() == Some("503"))
        .unwrap();
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(2),
        "5xx is an error"
    );
    assert_eq!(client.attr("spoke.retries").as_deref(), Some("1"));
    assert_eq!(client.attr("spoke.route").as_deref(), Some("routes[0]"));
    assert_eq!(client.span.events.len(), 1);
    let ev = &client.span.events[0];
    assert_eq!(ev.name, "retry");
    let reason = ev.attributes.iter().find(|a| a.key == "spoke.retry.reason");
    assert!(reason.is_some(), "{ev:?}");
}

#[tokio::test]
async fn sampling_zero_emits_nothing_and_one_everything_over_http() {
    let (collector, spans) = http_receiver().await;
    let zero = Traced::start(app().await, &tracing("0", collector, "http")).await;
    for _ in 0..20 {
        let got = zero.get("/zero", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.field("traceparent"),
            "-",
            "nothing is added when not sampled"
        );
    }
    assert!(spans.settle().await.is_empty());
    let all = Traced::start(app().await, &tracing("1", collector, "http")).await;
    for _ in 0..20 {
        assert_eq!(all.get("/one", &[]).await.status, 200);
    }
    let got = spans.wait(40).await;
    assert_eq!(got.len(), 40);
    assert_eq!(by_kind(&got, CLIENT).len(), 20);
    assert_eq!(all.dropped(), 0);
}

#[tokio::test]
async fn force_header_counts_only_from_a_meshed_peer() {
    let (collector, spans) = grpc_receiver().await;
    let t = Traced::start(app().await, &tracing("0", collector, "grpc")).await;
    // From the app (plaintext, not meshed): ignored, and not passed on.
    let got = t.get("/force", &[("x-spoke-trace", "force")]).await;
    assert_eq!(got.field("x-spoke-trace"), "-");
    assert!(spans.settle().await.is_empty());
    // From a peer with a verified mesh identity, straight to the inbound sidecar.
    let pki_files = t._pki.issue("caller", WEB);
    let cfg = support::pki::client_config(Some(&pki_files), t._pki.root_pem());
    let tcp = tokio::net::TcpStream::connect(t.server.listener("in").unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(spoke::tls::placeholder_name(), tcp)
        .await
        .unwrap();
    let mut c = Client::over(tls, false).await;
    let got = within(c.send(req("GET", "/force", &[("x-spoke-trace", "force")], "")))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let spans = spans.wait(1).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span.kind, SERVER);
    assert_eq!(got.field("x-spoke-trace"), "-");
}

#[tokio::test]
async fn a_dead_collector_changes_no_status_or_latency() {
    // Baseline: tracing off.
    let app = app().await;
    let off = Traced::start(app, "").await;
    let refused = support::refused().await;
    let dead = Traced::start(app, &tracing("1.0", refused, "grpc")).await;
    let hole = support::black_hole();
    let slow = Traced::start(app, &tracing("1.0", hole.addr, "http")).await;
    let time = |t: &Traced| {
        let addr = t.client.listener("out").unwrap();
        async move {
            let mut c = within(Client::connect(addr, false)).await;
            let mut worst = Duration::ZERO;
            let start = Instant::now();
            for _ in 0..100 {
                let s = Instant::now();
                let got = within(c.send(req("GET", "/x", &[], ""))).await.unwrap();
                assert_eq!(got.status, 200);
                worst = worst.max(s.elapsed());
            }
            (start.elapsed(), worst)
        }
    };
    let (base, _) = time(&off).await;
    let (with_dead, worst_dead) = time(&dead).await;
    let (with_slow, worst_slow) = time(&slow).await;
    // Generous bounds for a busy machine: the export never sits on the request path.
    for (total, worst) in [(with_dead, worst_dead), (with_slow, worst_slow)] {
        assert!(
            worst < Duration::from_millis(500),
            "a request took {worst:?}"
        );
        assert!(
            total < base * 3 + Duration::from_millis(300),
            "100 requests took {total:?} against {base:?} with tracing off"
        );
    }
    // The spans that could not be sent are counted.
    let mut dropped = (0, 0);
    for _ in 0..60 {
        dropped = (dead.dropped(), slow.dropped());
        if dropped.0 > 0 && dropped.1 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped.0 > 0 && dropped.1 > 0, "dropped {dropped:?}");
    let text = dead.client.shared.metrics.render();
    assert!(support::metric(&text, "spoke_trace_spans_dropped_total", &[]).unwrap() > 0.0);
    assert_eq!(
        support::metric(&text, "spoke_trace_spans_exported_total", &[]),
        Some(0.0)
    );
}

/// The Python receiver needs PyPI's `opentelemetry-proto` and `grpcio` (`.ci/run` installs
/// them). Missing under CI=true or SPOKE_REQUIRE_ALL=1 fails the test; elsewhere it is
/// skipped with the reason.
fn python_receiver() -> Option<std::process::Child> {
    use std::process::{Command, Stdio};
    let probe = Command::new("python3")
        .args([
            "-c",
            "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
        ])
        .output();
    let found = probe.as_ref().is_ok_and(|o| o.status.success());
    let what = "python3 with the PyPI packages opentelemetry-proto and grpcio \
                (pip install opentelemetry-proto grpcio; .ci/run installs them)";
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("python_opentelemetry_receiver_decodes_the_export: needs {what} (CI=true)");
    }
    if !support::need(
        "python_opentelemetry_receiver_decodes_the_export",
        what,
        found,
    ) {
        return None;
    }
    Some(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tracing/otlp_receiver.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start python3"),
    )
}

#[tokio::test]
async fn python_opentelemetry_receiver_decodes_the_export() {
    use std::io::BufRead;
    let Some(mut child) = python_receiver() else {
        return;
    };
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = within(rx.recv()).await.expect("receiver printed nothing");
    let port: u16 = first.strip_prefix("port ").unwrap().parse().unwrap();
    let collector: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = Traced::start(app().await, &tracing("1.0", collector, "grpc")).await;
    let tp = format!("00-{TID}-{SID}-01");
    assert_eq!(t.get("/py", &[("traceparent", &tp)]).await.status, 200);
    let mut spans = Vec::new();
    while spans.len() < 2 {
        let line = within(rx.recv()).await.expect("receiver stopped");
        spans.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    let client = spans.iter().find(|s| s["kind"] == CLIENT).unwrap();
    let server = spans.iter().find(|s| s["kind"] == SERVER).unwrap();
    assert_eq!(client["trace_id"], TID);
    assert_eq!(server["trace_id"], TID);
    assert_eq!(client["parent_span_id"], SID);
    assert_eq!(server["parent_span_id"], client["span_id"]);
    assert_eq!(client["service"], "web-0");
    assert_eq!(client["scope"], "spoke");
    assert_eq!(client["attributes"]["url.path"], "/py");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
}

/// Every log event of this test binary's proxies, as JSON lines.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogBuf;

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_event_carries_trace_and_span_ids() {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(|| LogBuf)
        .with_env_filter("access=info")
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    let (collector, spans) = grpc_receiver().await;
    let on = format!("{}\naccess_log: true", tracing("1.0", collector, "grpc"));
    let t = Traced::start(app().await, &on).await;
    assert_eq!(t.get("/logged", &[]).await.status, 200);
    let spans = spans.wait(2).await;
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).to_string();
    for s in [one(&spans, CLIENT), one(&spans, SERVER)] {
        let line = logs
            .lines()
            .find(|l| l.contains(&format!("\"span_id\":\"{}\"", s.span_id())))
            .unwrap_or_else(|| panic!("no access event with span {}: {logs}", s.span_id()));
        assert!(
            line.contains(&format!("\"trace_id\":\"{}\"", s.trace_id())),
            "{line}"
        );
        assert!(line.contains("/logged"), "{line}");
    }
}

#[tokio::test]
async fn a_listener_overrides_the_sampling_ratio() {
    let (collector, spans) = grpc_receiver().await;
    let app = app().await;
    let p = support::proxy(&format!(
        "{BASE}{}\n\
         listeners: [ {{ name: all, address: 127.0.0.1:0, protocol: http, cluster: app, tracing: {{ sampling: 1 }} }},\n\
                      {{ name: none, address: 127.0.0.1:0, protocol: http, cluster: app }} ]\n\
         clusters: [ {{ name: app, endpoints: [ {{ address: \"{app}\" }} ] }} ]\n",
        tracing("0", collector, "grpc")
    ))
    .await;
    for name in ["none", "all", "none", "all"] {
        let mut c = within(Client::connect(p.listener(name).unwrap(), false)).await;
        let got = within(c.send(req("GET", &format!("/{name}"), &[], "")))
            .await
            .unwrap();
        assert_eq!(got.status, 200);
    }
    let got = spans.wait(2).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got
        .iter()
        .all(|s| s.attr("url.path").as_deref() == Some("/all") && s.span.kind == CLIENT));
}

#[tokio::test]
async fn a_sidecar_that_does_not_trace_leaves_the_next_hop_nothing_to_follow() {
    let (collector, spans) = grpc_receiver().await;
    // The client sidecar has tracing off; the server sidecar samples every new trace.
    let t = Traced::start2(app().await, "", &tracing("1.0", collector, "grpc")).await;
    // Its meshed caller decided (by sending no context): the server starts no trace. And
    // the app's force header is stripped by the client sidecar even with tracing off.
    let got = t.get("/off", &[("x-spoke-trace", "force")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.field("x-spoke-trace"), "-");
    assert_eq!(got.field("traceparent"), "-");
    assert!(spans.settle().await.is_empty());
    // A sampled context from the app still reaches the server sidecar, which continues it.
    let tp = format!("00-{TID}-{SID}-01");
    let got = t.get("/off", &[("traceparent", &tp)]).await;
    let spans = spans.wait(1).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span.kind, SERVER);
    assert_eq!(spans[0].parent(), SID);
    assert_eq!(
        got.field("traceparent"),
        format!("00-{TID}-{}-01", spans[0].span_id())
    );
}
