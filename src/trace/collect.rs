//! A tiny in-process OTLP/gRPC receiver for `spoke demo`: it keeps the spans its sidecars
//! export and prints one trace as an indented tree (parent before child), so the demo can
//! show a trace without a collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;

use super::context::Hex;

/// Spans received, each with its resource's `service.name`.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<(String, Span)>>>);

struct Receiver(Collected);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Ok(mut v) = (self.0).0.lock() {
            for rs in req.into_inner().resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| text(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    v.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An attribute's value as text (strings as they are, integers in decimal).
pub fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// Serves OTLP/gRPC on `listener` until the process ends.
pub fn start(listener: TcpListener) -> Collected {
    let c = Collected::default();
    let svc = TraceServiceServer::new(Receiver(c.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    c
}

// === impl Collected ===

impl Collected {
    /// The spans of `trace`, once `n` of them arrived (or whatever came within `wait`).
    pub async fn trace(&self, trace: &[u8; 16], n: usize, wait: Duration) -> Vec<(String, Span)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let found: Vec<(String, Span)> = self
                .0
                .lock()
                .map(|v| {
                    v.iter()
                        .filter(|(_, s)| s.trace_id == trace)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if found.len() >= n || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One line per span, children indented under their parent.
pub fn render(spans: &[(String, Span)]) -> Vec<String> {
    let mut out = Vec::new();
    let ids: Vec<&[u8]> = spans.iter().map(|(_, s)| s.span_id.as_slice()).collect();
    let roots = spans
        .iter()
        .filter(|(_, s)| !ids.contains(&s.parent_span_id.as_slice()));
    for root in roots {
        walk(spans, root, 0, &mut out);
    }
    out
}

fn walk(
    spans: &[(String, Span)],
    (service, s): &(String, Span),
    depth: usize,
    out: &mut Vec<String>,
) {
    let kind = match s.kind {
        2 => "server",
        3 => "client",
        _ => "span",
    };
    let ms = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6;
    let a = |k: &str| text(&s.attributes, k).unwrap_or_else(|| "-".into());
    out.push(format!(
        "{:indent$}{kind} span {} (parent {}) {service}: {} -> {} in {ms:.2} ms; endpoint {}, peer {}, retries {}{}",
        "",
        Hex(&s.span_id),
        if s.parent_span_id.is_empty() {
            "none".to_string()
        } else {
            Hex(&s.parent_span_id).to_string()
        },
        s.name,
        a("http.response.status_code"),
        a("spoke.endpoint"),
        a("spoke.peer_id"),
        a("spoke.retries"),
        s.events
            .iter()
            .map(|e| format!(", event {}", e.name))
            .collect::<String>(),
        indent = 2 + 2 * depth,
    ));
    for child in spans.iter().filter(|(_, c)| c.parent_span_id == s.span_id) {
        walk(spans, child, depth + 1, out);
    }
}

/// `spoke demo`: sends one request with a sampled W3C context through an app's sidecar
/// connection and prints the spans the sidecars exported for it. Returns how many arrived.
pub async fn show_one(
    c: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    collected: &Collected,
) -> anyhow::Result<usize> {
    use http_body_util::BodyExt;
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    trace[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
    let caller = fastrand::u64(1..).to_be_bytes();
    let traceparent = format!("00-{}-{}-01", Hex(&trace), Hex(&caller));
    let req = http::Request::get("/hello")
        .header("host", "backend")
        .header("traceparent", &traceparent)
        .body(http_body_util::Empty::new())?;
    c.ready().await?;
    let resp = c.send_request(req).await?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    let spans = collected.trace(&trace, 2, Duration::from_secs(5)).await;
    println!();
    println!(
        "one traced request (the app sent traceparent {traceparent}; sampling is 0 otherwise): HTTP {status}, {} spans exported over OTLP to the demo's receiver",
        spans.len()
    );
    for line in render(&spans) {
        println!("{line}");
    }
    Ok(spans.len())
}
