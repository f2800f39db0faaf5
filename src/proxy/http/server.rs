//! Serving one downstream HTTP connection with hyper: HTTP/1.1 behind the framing guard
//! (with upgrades), or HTTP/2 with stream limits and reset-flood protection. A drain sends
//! GOAWAY (or closes idle keep-alive connections) and lets requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::forward::{self, ConnCtx};
use super::guard::{Guard, Limits};
use crate::drain;

/// HTTP/2 server limits.
const MAX_CONCURRENT_STREAMS: u32 = 100;
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams a client may reset before they are accepted (rapid reset, CVE-2023-44487).
const MAX_PENDING_RESETS: usize = 20;
/// Streams we may reset for protocol errors before sending GOAWAY.
const MAX_LOCAL_RESETS: usize = 256;

pub async fn serve<S>(conn: Arc<ConnCtx>, io: S, mut drain: drain::Watch)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = conn.clone();
    let svc = service_fn(move |req| forward::handle(ctx.clone(), req));
    let idle = conn.listener.cfg.idle_timeout;
    if conn.h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_RESETS)
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(4 * 1024 * 1024)
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20));
        let c = b.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(c);
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, error = %e, "h2 connection ended with error");
                }
                return;
            }
            _ = drain.draining() => c.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = c.as_mut() => {}
            _ = drain.closing() => {}
        }
    } else {
        let limits = Limits {
            header_timeout: conn.listener.cfg.header_read_timeout,
            ..Limits::default()
        };
        let (guard, verdict) = Guard::new(io, limits);
        let c = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // The guard enforces head limits and the slowloris timeout first; hyper's own
            // header timer only closes keep-alive connections idle for the idle timeout.
            .header_read_timeout(idle)
            .max_buf_size(limits.max_header_bytes + 16 * 1024)
            .keep_alive(true)
            .serve_connection(TokioIo::new(guard), svc)
            .with_upgrades();
        tokio::pin!(c);
        let ended = tokio::select! {
            r = c.as_mut() => Some(r),
            _ = drain.draining() => {
                c.as_mut().graceful_shutdown();
                None
            }
        };
        let r = match ended {
            Some(r) => Some(r),
            None => tokio::select! {
                r = c.as_mut() => Some(r),
                _ = drain.closing() => None,
            },
        };
        if let Some(Err(e)) = r {
            tracing::debug!(peer = %conn.peer, error = %e, "h1 connection ended with error");
        }
        let v = *verdict.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = v {
            let direction = conn.listener.cfg.direction_str();
            let m = &conn.listener.shared.metrics;
            m.requests
                .with_label_values(&[direction, "none", &v.status.to_string()])
                .inc();
            tracing::info!(
                target: "access",
                listener = %conn.listener.cfg.name,
                direction,
                peer = %conn.peer,
                status = v.status,
                error = v.kind,
                detail = v.detail,
                "http request refused"
            );
        }
    }
}
