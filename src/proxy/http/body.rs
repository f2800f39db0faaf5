//! Request and response bodies: a request body kept for replay when it fits the retry
//! buffer (otherwise streamed once, its first frames put back in front), the listener's
//! request size limit, and a response body that counts an upstream failure mid-stream and
//! cuts a stream that stays idle too long.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use super::pool::{Body, BoxError};
use crate::balance::{InFlight, Slot};

/// A request body as the attempt loop sees it.
pub enum ReqBody {
    /// Fully read and small: every attempt gets a copy.
    Replay {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Streamed to the first attempt only.
    Once(Option<Body>),
}

impl ReqBody {
    pub fn replayable(&self) -> bool {
        matches!(self, ReqBody::Replay { .. })
    }

    /// The body for the next attempt; `None` when a streamed body was already used.
    pub fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Replay { data, trailers } => {
                if let Some(t) = trailers.clone() {
                    let frames = VecDeque::from([Frame::data(data.clone()), Frame::trailers(t)]);
                    Some(
                        Prefixed {
                            front: frames,
                            rest: None,
                        }
                        .boxed_unsync(),
                    )
                } else if data.is_empty() {
                    Some(Empty::new().map_err(|e| match e {}).boxed_unsync())
                } else {
                    Some(
                        Full::new(data.clone())
                            .map_err(|e| match e {})
                            .boxed_unsync(),
                    )
                }
            }
            ReqBody::Once(b) => b.take(),
        }
    }
}

fn boxed(b: Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// The error a body larger than the listener's `max_request_bytes` fails with.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct TooLarge(pub u64);

pub fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<TooLarge>().is_some()
        || e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
}

fn limited(b: Body, max: Option<u64>) -> Body {
    match max {
        Some(m) => http_body_util::Limited::new(b, m as usize).boxed_unsync(),
        None => b,
    }
}

/// Reads `body` for replay if it fits in `limit` bytes; otherwise streams it. A body over
/// `max` fails (`TooLarge` now, or mid-stream when streamed).
pub async fn prepare(
    mut body: Incoming,
    limit: usize,
    replay: bool,
    max: Option<u64>,
) -> Result<ReqBody, BoxError> {
    if !replay {
        return Ok(ReqBody::Once(Some(limited(boxed(body), max))));
    }
    if body.is_end_stream() {
        return Ok(ReqBody::Replay {
            data: Bytes::new(),
            trailers: None,
        });
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(ReqBody::Once(Some(limited(boxed(body), max))));
    }
    let mut front = VecDeque::new();
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            data.extend_from_slice(d);
        } else if let Some(t) = frame.trailers_ref() {
            trailers = Some(t.clone());
        }
        front.push_back(frame);
        if let Some(m) = max {
            if data.len() as u64 > m {
                return Err(Box::new(TooLarge(m)));
            }
        }
        if data.len() > limit {
            // Too big to keep: stream it, the frames read so far first.
            let b = Prefixed {
                front,
                rest: Some(body),
            }
            .boxed_unsync();
            return Ok(ReqBody::Once(Some(limited(b, max))));
        }
    }
    Ok(ReqBody::Replay {
        data: data.freeze(),
        trailers,
    })
}

pin_project_lite::pin_project! {
    /// Frames already read, then the rest of the stream.
    struct Prefixed {
        front: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Option<Incoming>,
    }
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(f) = this.front.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match this.rest.as_pin_mut() {
            Some(r) => r.poll_frame(cx).map_err(|e| Box::new(e) as BoxError),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// The error of a response stream cut by the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("response stream idle for {0:?}")]
pub struct StreamIdle(pub Duration);

/// Counts a response stream broken mid-way: `spoke_upstream_rq_errors_total{kind=
/// "upstream_reset"}` for the cluster.
pub struct ResetCount {
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub cluster: std::sync::Arc<crate::snapshot::ClusterState>,
}

impl ResetCount {
    fn inc(&self) {
        self.metrics
            .upstream_rq_errors
            .with_label_values(&[
                self.cluster.config.name.as_str(),
                crate::proxy::ErrorKind::UpstreamReset.label(),
            ])
            .inc();
    }
}

/// What a request holds until its response body ends: its place in the endpoint's
/// in-flight count (`least_request`) and its circuit breaker slots.
#[derive(Debug, Default)]
pub struct Hold {
    pub inflight: Option<InFlight>,
    /// An HTTP/1.1 upstream connection in use.
    pub conn: Option<Slot>,
    /// `max_requests`.
    pub request: Option<Slot>,
}

pin_project_lite::pin_project! {
    /// An upstream response body; a failure mid-stream is counted and passed on, so the
    /// client sees a broken response (never a complete-looking truncated one). A stream
    /// with no frame for `idle` is cut the same way. What the request holds is given back
    /// when the body ends (or is dropped).
    pub struct Observed {
        #[pin]
        inner: Incoming,
        reset: Option<ResetCount>,
        idle: Duration,
        #[pin]
        timer: tokio::time::Sleep,
        hold: Hold,
    }
}

impl Observed {
    pub fn boxed(inner: Incoming, reset: ResetCount, idle: Duration, hold: Hold) -> Body {
        Observed {
            inner,
            reset: Some(reset),
            idle,
            timer: tokio::time::sleep(idle),
            hold,
        }
        .boxed_unsync()
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                *this.hold = Hold::default();
                if let Some(c) = this.reset.take() {
                    c.inc();
                }
                tracing::debug!(error = %e, "upstream response body failed");
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(f))) => {
                let deadline = tokio::time::Instant::now() + *this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                *this.hold = Hold::default();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    if let Some(c) = this.reset.take() {
                        c.inc();
                    }
                    tracing::debug!(idle = ?this.idle, "response stream idle; cutting it");
                    return Poll::Ready(Some(Err(Box::new(StreamIdle(*this.idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A small complete body (proxy-made responses).
pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}
