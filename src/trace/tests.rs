use std::sync::Arc;

use super::*;

fn tracer(yaml: &str) -> Tracer {
    let cfg = crate::config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    Tracer::new(&cfg, Arc::new(Metrics::new()))
}

const COLLECTOR: &str = "collector: { address: 127.0.0.1:4317 }";

#[test]
fn off_without_a_tracing_block() {
    let t = tracer("");
    assert!(!t.enabled());
    assert!(!t.metrics().render().contains("spoke_trace_spans"));
}

#[test]
fn ratio_zero_and_one() {
    let t = tracer(&format!("tracing: {{ sampling: 0, {COLLECTOR} }}\n"));
    assert!(t.enabled());
    assert!((0..1000).all(|_| !t.sample_new(None)));
    assert!((0..1000).all(|_| t.sample_new(Some(1.0))));
    let t = tracer(&format!("tracing: {{ sampling: 1.0, {COLLECTOR} }}\n"));
    assert!((0..1000).all(|_| t.sample_new(None)));
    assert!((0..1000).all(|_| !t.sample_new(Some(0.0))));
    let text = t.metrics().render();
    assert!(text.contains("spoke_trace_spans_dropped_total 0"));
    assert!(text.contains("spoke_trace_spans_exported_total 0"));
}

fn span() -> Span {
    Span {
        trace: [7; 16],
        id: [1, 2, 3, 4, 5, 6, 7, 8],
        parent: Some([9; 8]),
        format: Format::W3c,
        short: false,
        state: "vendor=x".into(),
        server: false,
        start_ns: 1_000,
        route: Some(span::RouteName::Index(3)),
        events: Vec::new(),
    }
}

fn outcome<'a>(status: u16, error: Option<&'static str>) -> span::Outcome<'a> {
    span::Outcome {
        method: "POST",
        path: "/api/x",
        authority: "backend:8080",
        status,
        peer: std::net::SocketAddr::from(([10, 1, 2, 3], 4242)),
        cluster: "backend",
        endpoint: Some(std::net::SocketAddr::from(([10, 0, 0, 7], 8080))),
        peer_id: Some("spiffe://cluster.local/ns/default/sa/backend"),
        retries: 0,
        error,
    }
}

#[test]
fn a_full_shard_drops_and_counts() {
    let t = tracer(&format!("tracing: {{ sampling: 1.0, {COLLECTOR} }}\n"));
    for _ in 0..QUEUE + 10 {
        t.record(&span(), &outcome(200, None));
    }
    assert_eq!(t.metrics().trace_spans_dropped.get(), 10);
    // Taken by the exporter, the shard has room again.
    let mut taken: Vec<Queued> = (0..t.shards()).map(|_| Queued::default()).collect();
    assert_eq!(t.take(&mut taken), QUEUE);
    t.record(&span(), &outcome(200, None));
    assert_eq!(t.metrics().trace_spans_dropped.get(), 10);
    assert_eq!(t.take(&mut taken), 1);
}

#[test]
fn spans_from_many_threads_are_all_taken_once() {
    let t = Arc::new(tracer(&format!(
        "tracing: {{ sampling: 1.0, {COLLECTOR} }}\n"
    )));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    t.record(&span(), &outcome(200, None));
                }
            })
        })
        .collect();
    let mut taken: Vec<Queued> = (0..t.shards()).map(|_| Queued::default()).collect();
    let mut n = 0;
    for th in threads {
        n += t.take(&mut taken);
        th.join()
            .unwrap_or_else(|_| panic!("a recording thread panicked"));
    }
    n += t.take(&mut taken);
    assert_eq!(n, 600);
    assert_eq!(t.metrics().trace_spans_dropped.get(), 0);
}

#[test]
fn the_mesh_block_reaches_the_sidecar_and_wins_over_its_own() {
    use crate::control::mesh::{merge_local, workload_view};
    let parse = |y: &str| crate::config::parse_yaml(y).unwrap_or_else(|e| panic!("{e}"));
    let local = parse("tracing: { sampling: 0.5, collector: { address: 10.0.0.1:4317 } }\n");
    let mesh =
        parse("tracing: { sampling: 1, collector: { address: 10.0.0.2:4318, protocol: http } }\n");
    let merged = merge_local(&local, workload_view(&mesh, None));
    assert_eq!(merged.tracing, mesh.tracing);
    let merged = merge_local(&local, workload_view(&parse(""), None));
    assert_eq!(merged.tracing, local.tracing);
}

#[test]
fn a_new_snapshot_turns_tracing_on_and_off() {
    let t = tracer("");
    let on = crate::config::from_yaml(&format!("tracing: {{ sampling: 1, {COLLECTOR} }}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    t.configure(&on);
    assert!(t.enabled() && t.sample_new(None));
    assert_eq!(
        t.settings().map(|s| s.collector.address.clone()).as_deref(),
        Some("127.0.0.1:4317")
    );
    t.configure(&crate::config::from_yaml("").unwrap_or_else(|e| panic!("{e}")));
    assert!(!t.enabled() && t.settings().is_none());
}

#[test]
fn a_finished_span_decodes_with_the_published_types() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use prost::Message;

    let mut s = span();
    let ep: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap_or_else(|e| panic!("{e}"));
    s.retry(1, "status", Some(ep));
    let outcome = span::Outcome {
        method: "POST",
        path: "/api/x",
        authority: "backend:8080",
        status: 503,
        peer: "[::1]:4242".parse().unwrap_or_else(|e| panic!("{e}")),
        cluster: "backend",
        endpoint: Some(ep),
        peer_id: Some("spiffe://cluster.local/ns/default/sa/backend"),
        retries: 1,
        error: None,
    };
    let mut framed = Vec::new();
    s.encode(&outcome, span::now_ns(), &mut framed);
    let mut req = Vec::new();
    wire::put_request_head(&mut req, "web", framed.len());
    req.extend_from_slice(&framed);
    let r = ExportTraceServiceRequest::decode(&req[..]).unwrap_or_else(|e| panic!("{e}"));
    let rs = &r.resource_spans[0];
    let scope = &rs.scope_spans[0];
    assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some("spoke"));
    let d = &scope.spans[0];
    assert_eq!(d.trace_id, vec![7; 16]);
    assert_eq!(d.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(d.parent_span_id, vec![9; 8]);
    assert_eq!(d.trace_state, "vendor=x");
    assert_eq!(d.name, "POST backend");
    assert_eq!(d.kind, SpanKind::Client as i32);
    assert_eq!(d.start_time_unix_nano, 1_000);
    assert!(d.end_time_unix_nano >= 1_000);
    assert_eq!(d.flags, 0x301);
    let a = |k: &str| collect::text(&d.attributes, k);
    assert_eq!(a("http.request.method").as_deref(), Some("POST"));
    assert_eq!(a("url.path").as_deref(), Some("/api/x"));
    assert_eq!(a("http.response.status_code").as_deref(), Some("503"));
    assert_eq!(a("network.peer.address").as_deref(), Some("::1"));
    assert_eq!(a("network.peer.port").as_deref(), Some("4242"));
    assert_eq!(a("server.address").as_deref(), Some("backend"));
    assert_eq!(a("spoke.route").as_deref(), Some("routes[3]"));
    assert_eq!(a("spoke.endpoint").as_deref(), Some("10.0.0.7:8080"));
    assert_eq!(a("spoke.retries").as_deref(), Some("1"));
    assert_eq!(
        a("spoke.peer_id").as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/backend")
    );
    assert_eq!(a("spoke.error"), None);
    let status = d.status.clone().unwrap_or_default();
    assert_eq!(status.code, 2, "5xx is an error");
    assert_eq!(status.message, "server error");
    assert_eq!(d.events.len(), 1);
    let ev = &d.events[0];
    assert_eq!(ev.name, "retry");
    assert!(ev.time_unix_nano > 0);
    assert_eq!(
        collect::text(&ev.attributes, "spoke.retry.reason").as_deref(),
        Some("status")
    );
    assert_eq!(
        collect::text(&ev.attributes, "spoke.try").as_deref(),
        Some("1")
    );
    assert_eq!(
        collect::text(&ev.attributes, "spoke.endpoint").as_deref(),
        Some("10.0.0.7:8080")
    );
    // The batch of one decodes back to the same bytes: nothing the types do not know.
    assert_eq!(r.encode_to_vec().len(), req.len());
}

#[test]
fn every_shape_of_span_encodes_to_its_summed_size_and_decodes() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let long = "/".repeat(20_000);
    let v6: std::net::SocketAddr = "[2001:db8::7]:8080"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut framed = Vec::new();
    let mut n = 0;
    for status in [200, 503] {
        for error in [None, Some("connect_refused")] {
            for parent in [None, Some([9; 8])] {
                for retries in 0..3 {
                    let mut s = span();
                    s.parent = parent;
                    s.state = if retries == 1 {
                        String::new()
                    } else {
                        "a=b".into()
                    };
                    s.route = [None, Some(span::RouteName::Default)][retries % 2];
                    for i in 0..retries {
                        s.retry(i as u32, "status", [None, Some(v6)][i % 2]);
                    }
                    let mut o = outcome(status, error);
                    if retries == 2 {
                        o.path = &long;
                        o.peer = v6;
                        o.authority = "";
                        o.endpoint = None;
                        o.peer_id = None;
                    }
                    // `encode` checks its summed size against what it wrote (debug builds).
                    s.encode(&o, span::now_ns(), &mut framed);
                    n += 1;
                }
            }
        }
    }
    let mut req = Vec::new();
    wire::put_request_head(&mut req, "web", framed.len());
    req.extend_from_slice(&framed);
    let r = ExportTraceServiceRequest::decode(&req[..]).unwrap_or_else(|e| panic!("{e}"));
    let spans = &r.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), n);
    assert!(spans
        .iter()
        .any(|s| s.events.len() == 2 && s.attributes.len() < 10));
    for s in spans {
        let a = |k: &str| collect::text(&s.attributes, k);
        let failed =
            a("http.response.status_code").as_deref() == Some("503") || a("spoke.error").is_some();
        let code = s.status.as_ref().map(|st| st.code);
        assert_eq!(code, Some(if failed { 2 } else { 0 }), "{s:?}");
    }
    assert_eq!(r.encode_to_vec().len(), req.len());
}
