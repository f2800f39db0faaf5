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
        peer_attrs: None,
        cluster: "backend",
        endpoint: Some(std::net::SocketAddr::from(([10, 0, 0, 7], 8080))),
        peer_id: Some("spiffe://cluster.local/ns/default/sa/backend"),
        retries: 0,
        error,
    }
}

#[test]
fn a_connections_cached_peer_attributes_encode_as_the_peer_does() {
    for peer in ["10.1.2.3:4242", "[::1]:4242", "[fe80::1]:1"] {
        let peer: std::net::SocketAddr = peer.parse().unwrap_or_else(|e| panic!("{e}"));
        let cached = span::peer_attrs(peer);
        let o = span::Outcome {
            peer,
            ..outcome(200, None)
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        span().encode(&o, 2_000, &mut a);
        span().encode(
            &span::Outcome {
                peer_attrs: Some(&cached),
                ..o
            },
            2_000,
            &mut b,
        );
        assert_eq!(a, b, "{peer}");
        let ip = peer.ip().to_string();
        assert!(a.windows(ip.len()).any(|w| w == ip.as_bytes()), "{peer}");
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
        peer_attrs: None,
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
fn every_shape_of_span_encodes_and_decodes() {
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

#[test]
fn the_one_pass_encoder_writes_the_bytes_the_summed_one_did() {
    let v4: std::net::SocketAddr = "10.200.30.4:65535"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let v6: std::net::SocketAddr = "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:8080"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    // A retry's reason is `'static`; a long one makes an event over 127 bytes.
    let long: &'static str = Box::leak("r".repeat(90).into_boxed_str());
    let reasons = ["status", "connect_refused", long];
    let state = "k=".to_string() + &"v".repeat(300);
    // Path lengths around the span's one/two/three-byte length boundaries.
    let paths: Vec<String> = [0, 1, 60, 127, 128, 500, 16_000, 16_200, 16_400, 40_000]
        .iter()
        .map(|&n| "/".repeat(n))
        .collect();
    let mut cases = 0;
    let (mut new, mut old) = (b"batch so far".to_vec(), b"batch so far".to_vec());
    let mut check = |s: &Span, o: &span::Outcome<'_>, end: u64| {
        s.encode(o, end, &mut new);
        reference::encode(s, o, end, &mut old);
        assert_eq!(new, old, "{s:?}");
        cases += 1;
    };
    for (i, path) in paths.iter().enumerate() {
        for status in [200, 404, 503] {
            for error in [None, Some("connect_refused")] {
                for retries in 0..4usize {
                    let mut s = span();
                    s.server = i % 2 == 0;
                    s.parent = [None, Some([9; 8])][retries % 2];
                    s.state = ["", "a=b", &state][(i + retries) % 3].to_string();
                    s.route = [
                        None,
                        Some(span::RouteName::Default),
                        Some(span::RouteName::Index(0)),
                        Some(span::RouteName::Index(123_456)),
                    ][(i + retries) % 4];
                    for k in 0..retries {
                        s.retry(
                            k as u32 * 100,
                            reasons[k % 3],
                            [None, Some(v4), Some(v6)][(i + k) % 3],
                        );
                    }
                    let mut o = outcome(status, error);
                    o.path = path;
                    o.retries = [0, 1, 300, u32::MAX][retries];
                    o.peer = [v4, v6][i % 2];
                    o.endpoint = [None, Some(v4), Some(v6)][(i + retries) % 3];
                    o.peer_id = [None, o.peer_id][retries % 2];
                    o.authority =
                        ["", "backend", "backend:8080", "[::1]:80", "h:x"][(i + retries) % 5];
                    o.method = ["GET", "POST", "PROPFIND"][retries % 3];
                    check(&s, &o, s.start_ns + 12_345);
                    // An end before the start (a clock step) is written as the start.
                    check(&s, &o, 0);
                }
            }
        }
    }
    assert!(cases > 400);
}

/// The encoder `Span::encode` replaced (sizes summed first, every attribute's key encoded
/// field by field), kept to hold the one-pass encoder to the same bytes.
mod reference {
    use crate::trace::span::{host_of, Outcome, Retry, RouteName, Span};
    use crate::trace::wire::{self, Small, Val};

    const KIND_SERVER: u64 = 2;
    const KIND_CLIENT: u64 = 3;
    const STATUS_ERROR: u64 = 2;

    /// Attributes of a span or event, written in one pass after their sizes are summed.
    struct Attrs<'a, const N: usize> {
        list: [(&'a str, Val<'a>); N],
        n: usize,
    }

    impl<'a, const N: usize> Attrs<'a, N> {
        fn new() -> Self {
            Attrs {
                list: [("", Val::Int(0)); N],
                n: 0,
            }
        }

        fn push(&mut self, key: &'a str, v: Val<'a>) {
            if self.n < N {
                self.list[self.n] = (key, v);
                self.n += 1;
            }
        }

        fn items(&self) -> &[(&'a str, Val<'a>)] {
            &self.list[..self.n]
        }

        fn len(&self, field_overhead: bool) -> usize {
            self.items()
                .iter()
                .map(|(k, v)| {
                    let l = wire::kv_len(k, *v);
                    if field_overhead {
                        wire::field_len(l)
                    } else {
                        l
                    }
                })
                .sum()
        }

        fn put(&self, buf: &mut Vec<u8>, field: u32) {
            for (k, v) in self.items() {
                wire::put_kv(buf, field, k, *v);
            }
        }
    }

    pub fn encode(this: &Span, o: &Outcome<'_>, end_ns: u64, buf: &mut Vec<u8>) {
        let peer_ip = Small::ip(o.peer.ip());
        let endpoint = o.endpoint.map(Small::socket);
        let route = this.route.map(|r| match r {
            RouteName::Index(i) => {
                let mut s = Small::new();
                s.push_str("routes[");
                s.push_u64(i as u64);
                s.push_str("]");
                s
            }
            RouteName::Default => {
                let mut s = Small::new();
                s.push_str("default");
                s
            }
        });
        let mut attrs = Attrs::<12>::new();
        attrs.push("http.request.method", Val::Str(o.method));
        attrs.push("url.path", Val::Str(o.path));
        attrs.push("http.response.status_code", Val::Int(i64::from(o.status)));
        attrs.push("network.peer.address", Val::Text(peer_ip.as_bytes()));
        attrs.push("network.peer.port", Val::Int(i64::from(o.peer.port())));
        attrs.push("spoke.cluster", Val::Str(o.cluster));
        attrs.push("spoke.retries", Val::Int(i64::from(o.retries)));
        let host = host_of(o.authority);
        if !host.is_empty() {
            attrs.push("server.address", Val::Str(host));
        }
        if let Some(r) = &route {
            attrs.push("spoke.route", Val::Text(r.as_bytes()));
        }
        if let Some(e) = &endpoint {
            attrs.push("spoke.endpoint", Val::Text(e.as_bytes()));
        }
        if let Some(id) = o.peer_id {
            attrs.push("spoke.peer_id", Val::Str(id));
        }
        if let Some(k) = o.error {
            attrs.push("spoke.error", Val::Str(k));
        }
        let kind = if this.server {
            KIND_SERVER
        } else {
            KIND_CLIENT
        };
        let failed = o.status >= 500 || o.error.is_some();
        let error = o.error.unwrap_or("server error");
        // `Status`: a message and code 2 (error), or empty (`STATUS_CODE_UNSET`).
        let status_len = if failed {
            wire::field_len(error.len()) + 2
        } else {
            0
        };
        let name_len = o.method.len() + 1 + o.cluster.len();
        let len = wire::field_len(this.trace.len())
            + wire::field_len(this.id.len())
            + if this.state.is_empty() {
                0
            } else {
                wire::field_len(this.state.len())
            }
            + this.parent.map_or(0, |p| wire::field_len(p.len()))
            + wire::field_len(name_len)
            + 1
            + wire::varint_len(kind)
            + 2 * 9
            + attrs.len(true)
            + this
                .events
                .iter()
                .map(|ev| wire::field_len(event(ev, None)))
                .sum::<usize>()
            + wire::field_len(status_len)
            // Field 16 has a two-byte tag.
            + 6;

        buf.reserve(wire::framed_span_len(len));
        wire::put_span_frame(buf, len);
        let at = buf.len();
        wire::put_bytes(buf, 1, &this.trace);
        wire::put_bytes(buf, 2, &this.id);
        if !this.state.is_empty() {
            wire::put_bytes(buf, 3, this.state.as_bytes());
        }
        if let Some(p) = &this.parent {
            wire::put_bytes(buf, 4, p);
        }
        // The name, `GET backend`, written in place.
        wire::put_len(buf, 5, name_len);
        buf.extend_from_slice(o.method.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(o.cluster.as_bytes());
        wire::put_uint(buf, 6, kind);
        wire::put_fixed64(buf, 7, this.start_ns);
        wire::put_fixed64(buf, 8, end_ns.max(this.start_ns));
        attrs.put(buf, 9);
        for ev in &this.events {
            event(ev, Some(buf));
        }
        wire::put_len(buf, 15, status_len);
        if failed {
            wire::put_bytes(buf, 2, error.as_bytes());
            wire::put_uint(buf, 3, STATUS_ERROR);
        }
        // Trace flags (sampled) and, bits 8 and 9, "the parent is known to be remote".
        let flags = 1 | 0x100 | if this.parent.is_some() { 0x200 } else { 0 };
        wire::put_fixed32(buf, 16, flags);
        debug_assert_eq!(buf.len() - at, len, "the span's summed size");
    }

    /// A retry as an `Event` (field 11 of `Span`): time, name, attributes. Returns the
    /// event's size; writes it too when given `buf`.
    fn event(ev: &Retry, buf: Option<&mut Vec<u8>>) -> usize {
        let endpoint = ev.endpoint.map(Small::socket);
        let mut attrs = Attrs::<3>::new();
        attrs.push("spoke.try", Val::Int(i64::from(ev.attempt)));
        attrs.push("spoke.retry.reason", Val::Str(ev.reason));
        if let Some(e) = &endpoint {
            attrs.push("spoke.endpoint", Val::Text(e.as_bytes()));
        }
        let len = 9 + wire::field_len(b"retry".len()) + attrs.len(true);
        if let Some(buf) = buf {
            wire::put_len(buf, 11, len);
            wire::put_fixed64(buf, 1, ev.time_ns);
            wire::put_bytes(buf, 2, b"retry");
            attrs.put(buf, 3);
        }
        len
    }
}
