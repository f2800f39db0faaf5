//! The OTLP exporter: one task off the request path that takes the tracer's shards whole
//! (once a shard holds `BATCH` spans, or `FLUSH` after the first span) and sends them to
//! the collector over gRPC (`TraceService/Export`, tonic) or HTTP (`POST /v1/traces`,
//! protobuf body, hyper), at most `BATCH` spans per call. Spans arrive encoded and
//! framed, so a request is their bytes behind one request head (`wire`); the task wakes
//! once per batch, not per span.
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
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{wire, Queued};
use crate::config::{Collector, CollectorProtocol};
use crate::proxy::Shared;

/// Spans per export call at most.
pub const BATCH: usize = 512;
/// How long a batch waits to fill once its first span is in.
pub const FLUSH: Duration = Duration::from_millis(100);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Starts the exporter of `shared`'s tracer (a no-op if one already runs).
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let first = shared.tracer.take_exporter();
    tokio::spawn(async move {
        if first {
            run(shared).await
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

/// Spans taken from the tracer's shards, sent in requests of at most `BATCH` spans.
struct Taken {
    shards: Vec<Queued>,
    /// Per shard: the bytes already sent.
    at: Vec<usize>,
    /// Per shard, for the request being built: spans and bytes it takes.
    cut: Vec<(usize, usize)>,
}

// === impl Taken ===

impl Taken {
    fn new(shards: usize) -> Self {
        Taken {
            shards: (0..shards).map(|_| Queued::default()).collect(),
            at: vec![0; shards],
            cut: vec![(0, 0); shards],
        }
    }

    /// Takes what the tracer holds; returns how many spans.
    fn take(&mut self, tracer: &super::Tracer) -> usize {
        self.at.iter_mut().for_each(|a| *a = 0);
        tracer.take(&mut self.shards)
    }

    /// The next `ExportTraceServiceRequest` (this sidecar's resource, Spoke's scope, up to
    /// `BATCH` spans), written into `buf` and split off it, and its number of spans.
    fn next_request(&mut self, buf: &mut BytesMut, service: &str) -> Option<(Bytes, u64)> {
        let (mut room, mut spans_len) = (BATCH, 0);
        for ((q, at), cut) in self.shards.iter_mut().zip(&self.at).zip(&mut self.cut) {
            let n = q.spans.min(room);
            let len = if n == q.spans {
                q.bytes.len() - at
            } else {
                wire::framed_spans_len(&q.bytes[*at..], n)
            };
            *cut = (n, len);
            room -= n;
            spans_len += len;
        }
        if room == BATCH {
            return None;
        }
        buf.clear();
        buf.reserve(spans_len + 64 + service.len());
        wire::put_request_head(buf, service, spans_len);
        for ((q, at), (n, len)) in self.shards.iter_mut().zip(&mut self.at).zip(&self.cut) {
            buf.put_slice(&q.bytes[*at..*at + len]);
            *at += len;
            q.spans -= n;
        }
        Some((buf.split().freeze(), (BATCH - room) as u64))
    }
}

async fn run(shared: Arc<Shared>) {
    let tracer = &shared.tracer;
    let mut current: Option<(Collector, Transport)> = None;
    let mut failing = false;
    let mut taken = Taken::new(tracer.shards());
    // One request body buffer for the life of the exporter: a batch's body is split off it
    // and, once the transport has dropped it, the next batch reclaims the same allocation.
    // (A fresh ~200 KiB buffer per batch made glibc consolidate its free lists on every
    // free, a few % of the proxy's CPU at sampling 1.)
    let mut body_buf = BytesMut::new();
    loop {
        tracer.span_queued().await;
        tokio::select! {
            _ = tokio::time::sleep(FLUSH) => {}
            _ = tracer.batch_ready() => {}
        }
        let total = taken.take(tracer) as u64;
        if total == 0 {
            continue;
        }
        let Some(settings) = tracer.settings() else {
            tracer.metrics().trace_spans_dropped.inc_by(total);
            continue;
        };
        if current.as_ref().map(|(c, _)| c) != Some(&settings.collector) {
            current = match transport(&settings.collector) {
                Ok(t) => Some((settings.collector.clone(), t)),
                Err(e) => {
                    tracing::warn!(collector = %settings.collector.address, error = %e, "trace export failed");
                    tracer.metrics().trace_spans_dropped.inc_by(total);
                    continue;
                }
            };
        }
        let Some((collector, t)) = current.as_mut() else {
            continue;
        };
        while let Some((body, n)) = taken.next_request(&mut body_buf, &settings.service_name) {
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
    use crate::config::Tracing;

    fn settings() -> Tracing {
        let cfg = crate::config::from_yaml(
            "tracing: { sampling: 1, collector: { address: 127.0.0.1:4317 } }\nlisteners: []\n",
        )
        .expect("config");
        cfg.tracing.expect("tracing")
    }

    /// `Taken` over shards holding `counts[i]` spans each: span `k` of shard `i` has
    /// name `i.k`, padded with `k % 300` spaces (sizes vary, some frames take a
    /// two-byte length).
    fn taken(counts: &[usize]) -> Taken {
        let mut t = Taken::new(counts.len());
        for (i, (q, &n)) in t.shards.iter_mut().zip(counts).enumerate() {
            for k in 0..n {
                let name = format!("{i}.{k}{}", " ".repeat(k % 300));
                let mut span = Vec::new();
                wire::put_bytes(&mut span, 5, name.as_bytes());
                wire::put_span_frame(&mut q.bytes, span.len());
                q.bytes.extend_from_slice(&span);
            }
            q.spans = n;
        }
        t
    }

    #[test]
    fn the_next_batch_reuses_the_body_buffer_once_the_last_is_sent() {
        let s = settings();
        let mut buf = BytesMut::new();
        let mut req = || {
            taken(&[300])
                .next_request(&mut buf, &s.service_name)
                .expect("a request")
                .0
        };
        let first = req();
        let at = first.as_ptr();
        // Still held (in flight): the next batch cannot have that memory.
        let second = req();
        assert_ne!(second.as_ptr(), at);
        assert_eq!(first, second);
        drop((first, second));
        // Both sent and dropped: the buffer is taken back, not allocated again.
        let third = req();
        let reused = third.as_ptr();
        drop(third);
        let fourth = req();
        assert_eq!(fourth.as_ptr(), reused);
    }

    #[test]
    fn shards_go_out_in_requests_of_at_most_a_batch_every_span_once() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

        let s = settings();
        let mut buf = BytesMut::new();
        let counts = [400, 0, 700, 5];
        let mut t = taken(&counts);
        let mut sizes = Vec::new();
        let mut names = Vec::new();
        while let Some((body, n)) = t.next_request(&mut buf, &s.service_name) {
            let r = ExportTraceServiceRequest::decode(&body[..]).expect("decodes");
            let spans = &r.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len() as u64, n);
            names.extend(spans.iter().map(|s| s.name.trim_end().to_string()));
            sizes.push(n);
        }
        assert_eq!(sizes, vec![512, 512, 81]);
        let want: Vec<String> = counts
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |k| format!("{i}.{k}")))
            .collect();
        assert_eq!(names, want);
        assert!(t.shards.iter().all(|q| q.spans == 0));
        assert!(t.next_request(&mut buf, &s.service_name).is_none());
    }
}
