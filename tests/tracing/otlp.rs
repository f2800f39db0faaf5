//! Test OTLP receivers on 127.0.0.1:0 built on the published OTLP types: a tonic
//! `TraceService` (gRPC) and a hyper `POST /v1/traces` (HTTP/protobuf), both recording every
//! span with its resource's `service.name`; and an app that echoes the trace headers it got.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
pub struct Rec {
    pub service: String,
    pub span: Span,
}

impl Rec {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// An attribute as text (strings as they are, integers in decimal).
    pub fn attr(&self, key: &str) -> Option<String> {
        spoke::trace::collect::text(&self.span.attributes, key)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Spans received so far, shared by a receiver and its test.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<Rec>>>);

impl Spans {
    fn record(&self, req: ExportTraceServiceRequest) {
        let mut v = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    v.push(Rec {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    pub fn all(&self) -> Vec<Rec> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until at least `n` spans arrived (10 s at most), then returns them all.
    pub async fn wait(&self, n: usize) -> Vec<Rec> {
        for _ in 0..200 {
            if self.0.lock().unwrap().len() >= n {
                // Let a straggler in, so "exactly n" checks see it.
                tokio::time::sleep(Duration::from_millis(150)).await;
                return self.all();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "only {} of {n} spans arrived: {:#?}",
            self.all().len(),
            self.all()
        );
    }

    /// Waits past the exporter's flush interval and returns what arrived.
    pub async fn settle(&self) -> Vec<Rec> {
        tokio::time::sleep(Duration::from_millis(600)).await;
        self.all()
    }
}

struct Grpc(Spans, Arc<AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.record(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A tonic OTLP/gRPC receiver; returns its address and what it records.
pub async fn grpc_receiver() -> (SocketAddr, Spans) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let spans = Spans::default();
    let svc = TraceServiceServer::new(Grpc(spans.clone(), Arc::default()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, spans)
}

async fn http_export(
    spans: Spans,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ok = req.method() == http::Method::POST
        && req.uri().path() == "/v1/traces"
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = body
        .ok()
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
    let mut resp = Response::new(Full::new(Bytes::from(
        ExportTraceServiceResponse::default().encode_to_vec(),
    )));
    match decoded {
        Some(r) if ok => spans.record(r),
        _ => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp.headers_mut()
        .insert("content-type", "application/x-protobuf".parse().unwrap());
    Ok(resp)
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf).
pub async fn http_receiver() -> (SocketAddr, Spans) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let spans = Spans::default();
    let s2 = spans.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let spans = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| http_export(spans.clone(), r));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, spans)
}

const ECHOED: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-spoke-trace",
];

/// An app that answers with the trace headers it received, one `name: value` line each
/// (`-` when absent); `/flaky` answers 503 while `fail` is above 0.
pub async fn trace_app(fail: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let fail = fail.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let fail = fail.clone();
                    async move {
                        let mut body = String::new();
                        for h in ECHOED {
                            let v = req.headers().get(*h).and_then(|v| v.to_str().ok());
                            body.push_str(&format!("{h}: {}\n", v.unwrap_or("-")));
                        }
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        if req.uri().path().starts_with("/flaky")
                            && fail
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                        {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    addr
}
