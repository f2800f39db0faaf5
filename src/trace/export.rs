//! The OTLP exporter: one task off the request path that drains the tracer's bounded
//! queue in batches (up to `BATCH` spans, or whatever arrived within `FLUSH`) and sends
//! each batch to the collector over gRPC (`TraceService/Export`, tonic) or HTTP
//! (`POST /v1/traces`, protobuf body, hyper). Spans arrive encoded, so a batch is their
//! bytes behind one request head (`wire`); the task wakes once per batch, not per span.
//! The collector's address and protocol are read from the current settings for every
//! batch, so a new snapshot redirects the export. A failed or timed-out export drops its
//! batch and counts the spans; requests never wait.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{wire, Encoded};
use crate::config::{Collector, CollectorProtocol, Tracing};
use crate::proxy::Shared;

/// Spans per export call at most.
pub const BATCH: usize = 512;
/// How long a batch waits to fill once its first span is in.
pub const FLUSH: Duration = Duration::from_millis(100);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
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

/// Takes what is queued, up to a whole batch, without waiting.
fn drain(rx: &mut mpsc::Receiver<Encoded>, batch: &mut Vec<Encoded>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(s) => batch.push(s),
            Err(_) => return,
        }
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Encoded>) {
    let tracer = &shared.tracer;
    let mut current: Option<(Collector, Transport)> = None;
    let mut failing = false;
    let mut batch: Vec<Encoded> = Vec::with_capacity(BATCH);
    // One request body buffer for the life of the exporter: a batch's body is split off it
    // and, once the transport has dropped it, the next batch reclaims the same allocation.
    // (A fresh ~200 KiB buffer per batch made glibc consolidate its free lists on every
    // free, a few % of the proxy's CPU at sampling 1.)
    let mut body_buf = BytesMut::new();
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        loop {
            drain(&mut rx, &mut batch);
            if batch.len() >= BATCH || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tracer.batch_ready() => {}
            }
        }
        let n = batch.len() as u64;
        let Some(settings) = tracer.settings() else {
            tracer.metrics().trace_spans_dropped.inc_by(n);
            batch.clear();
            continue;
        };
        let body = request(&mut body_buf, &settings, &batch);
        batch.clear();
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
        let sent = tokio::time::timeout(collector.timeout, send(t, body)).await;
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
            Ok(Transport::Grpc(tonic::client::Grpc::new(ep.connect_lazy())))
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

/// One batch as an `ExportTraceServiceRequest` (this sidecar's resource, Spoke's scope,
/// the spans' bytes), written into `buf` and split off it.
fn request(buf: &mut BytesMut, settings: &Tracing, spans: &[Encoded]) -> Bytes {
    let service = settings.service_name.as_str();
    let spans_len: usize = spans.iter().map(|s| wire::framed_span_len(s)).sum();
    buf.clear();
    buf.reserve(spans_len + 64 + service.len());
    wire::put_request_head(buf, service, spans_len);
    for s in spans {
        wire::frame_span(buf, s);
    }
    buf.split().freeze()
}

/// Sends one request; `Ok` holds the number of spans the collector rejected.
async fn send(t: &mut Transport, body: Bytes) -> Result<u64, ExportError> {
    match t {
        Transport::Grpc(grpc) => {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
            let resp = grpc
                .unary(tonic::Request::new(body), path, Raw)
                .await?
                .into_inner();
            Ok(resp
                .partial_success
                .map(|p| p.rejected_spans.max(0) as u64)
                .unwrap_or(0))
        }
        Transport::Http(client, uri) => {
            let r = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body))
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

/// The gRPC codec of an export: the request is already encoded, the response is decoded
/// with the published OTLP types.
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Tracing {
        let cfg = crate::config::from_yaml(
            "tracing: { sampling: 1, collector: { address: 127.0.0.1:4317 } }\nlisteners: []\n",
        )
        .expect("config");
        cfg.tracing.expect("tracing")
    }

    #[test]
    fn the_next_batch_reuses_the_body_buffer_once_the_last_is_sent() {
        let s = settings();
        let spans: Vec<Encoded> = (0..300).map(|i| vec![i as u8; 400]).collect();
        let mut buf = BytesMut::new();
        let first = request(&mut buf, &s, &spans);
        let at = first.as_ptr();
        // Still held (in flight): the next batch cannot have that memory.
        let second = request(&mut buf, &s, &spans);
        assert_ne!(second.as_ptr(), at);
        assert_eq!(first, second);
        drop((first, second));
        // Both sent and dropped: the buffer is taken back, not allocated again.
        let third = request(&mut buf, &s, &spans);
        let reused = third.as_ptr();
        drop(third);
        let fourth = request(&mut buf, &s, &spans);
        assert_eq!(fourth.as_ptr(), reused);
    }
}
