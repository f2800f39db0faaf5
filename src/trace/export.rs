//! The OTLP exporter: one task off the request path that drains the tracer's bounded
//! queue in batches (up to `BATCH` spans, or whatever arrived within `FLUSH`) and sends
//! each batch to the collector over gRPC (`TraceService/Export`, tonic) or HTTP
//! (`POST /v1/traces`, protobuf body, hyper). The collector's address and protocol are
//! read from the current settings for every batch, so a new snapshot redirects the export.
//! A failed or timed-out export drops its batch and counts the spans; requests never wait.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use tokio::sync::mpsc;

use super::span::str_kv;
use crate::config::{Collector, CollectorProtocol, Tracing};
use crate::proxy::Shared;

/// Spans per export call at most.
pub const BATCH: usize = 512;
/// How long a batch waits to fill once its first span is in.
pub const FLUSH: Duration = Duration::from_millis(100);

/// Starts the exporter of `shared`'s tracer (a no-op if one already runs).
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let rx = shared.tracer.take_receiver();
    tokio::spawn(async move {
        if let Some(rx) = rx {
            run(shared, rx).await
        }
    })
}

/// A connection to one collector, kept while the settings name it.
enum Transport {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(Box<Client<HttpConnector, Full<Bytes>>>, http::Uri),
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("bad collector address: {0}")]
    Address(String),
    #[error("timed out")]
    Timeout,
    #[error("grpc: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("http: {0}")]
    Http(String),
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<OtlpSpan>) {
    let tracer = &shared.tracer;
    let mut current: Option<(Collector, Transport)> = None;
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let Some(settings) = tracer.settings() else {
            tracer.metrics().trace_spans_dropped.inc_by(n);
            continue;
        };
        if current.as_ref().map(|(c, _)| c) != Some(&settings.collector) {
            current = match transport(&settings.collector) {
                Ok(t) => Some((settings.collector.clone(), t)),
                Err(e) => {
                    tracing::warn!(collector = %settings.collector.address, error = %e, "trace export failed");
                    tracer.metrics().trace_spans_dropped.inc_by(n);
                    continue;
                }
            };
        }
        let Some((collector, t)) = current.as_mut() else {
            continue;
        };
        let req = request(&settings, spans);
        let sent = tokio::time::timeout(collector.timeout, send(t, req)).await;
        match sent.unwrap_or(Err(ExportError::Timeout)) {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                tracer.metrics().trace_spans_exported.inc_by(n - rejected);
                tracer.metrics().trace_spans_dropped.inc_by(rejected);
                if failing {
                    tracing::info!(collector = %collector.address, "trace export recovered");
                    failing = false;
                }
            }
            Err(e) => {
                tracer.metrics().trace_spans_dropped.inc_by(n);
                if failing {
                    tracing::debug!(collector = %collector.address, error = %e, spans = n, "trace export failed");
                } else {
                    tracing::warn!(collector = %collector.address, error = %e, spans = n, "trace export failed; spans are dropped until it recovers");
                    failing = true;
                }
            }
        }
    }
}

fn transport(c: &Collector) -> Result<Transport, ExportError> {
    match c.protocol {
        CollectorProtocol::Grpc => {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", c.address))
                .map_err(|e| ExportError::Address(e.to_string()))?
                .connect_timeout(c.timeout)
                .timeout(c.timeout);
            Ok(Transport::Grpc(TraceServiceClient::new(ep.connect_lazy())))
        }
        CollectorProtocol::Http => {
            let uri: http::Uri = format!("http://{}/v1/traces", c.address)
                .parse()
                .map_err(|e: http::uri::InvalidUri| ExportError::Address(e.to_string()))?;
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(c.timeout));
            connector.set_nodelay(true);
            let client = Client::builder(TokioExecutor::new()).build(connector);
            Ok(Transport::Http(Box::new(client), uri))
        }
    }
}

/// One batch as an OTLP request: this sidecar's resource, Spoke's scope.
fn request(settings: &Tracing, spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![str_kv("service.name", settings.service_name.as_str())],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "spoke".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Sends one request; `Ok` holds the number of spans the collector rejected.
async fn send(t: &mut Transport, req: ExportTraceServiceRequest) -> Result<u64, ExportError> {
    match t {
        Transport::Grpc(client) => {
            let resp = client.export(req).await?.into_inner();
            Ok(resp
                .partial_success
                .map(|p| p.rejected_spans.max(0) as u64)
                .unwrap_or(0))
        }
        Transport::Http(client, uri) => {
            let body = Full::new(Bytes::from(req.encode_to_vec()));
            let r = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(body)
                .map_err(|e| ExportError::Http(e.to_string()))?;
            let resp = client
                .request(r)
                .await
                .map_err(|e| ExportError::Http(e.to_string()))?;
            if resp.status().is_success() {
                Ok(0)
            } else {
                Err(ExportError::Http(format!("status {}", resp.status())))
            }
        }
    }
}
