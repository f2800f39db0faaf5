//! Serving one downstream HTTP connection with hyper: HTTP/1.1 behind the framing guard
//! (with upgrades), or HTTP/2 with stream limits and reset-flood protection. A drain sends
//! GOAWAY (or closes idle keep-alive connections) and lets requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::forward::{self, ConnCtx};
use super::guard::{Guard, Limits, Verdict};
use super::pool::Body;
use crate::drain;

/// HTTP/2 server limits.
const MAX_CONCURRENT_STREAMS: u32 = 100;
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams a client may reset before they are accepted (rapid reset, CVE-2023-44487). A
/// peer sidecar whose client went away cancels everything it had in flight on the shared
/// connection at once, and its h2 client opens the streams it had queued for a free slot
/// only to reset them in the same write: at the end of every h2load run of the two-hop
/// bench a busy inbound proxy saw more than 100 such streams. With h2's default of 20 (and
/// still with 100) it answered with GOAWAY (ENHANCE_YOUR_CALM) and failed every other
/// client's requests on the connection. 1,000 is nghttp2's initial burst for the same
/// defence. This bounds one burst only: h2 counts the reset streams waiting to be accepted,
/// not resets over time, so a client that paces its resets below the bound is not cut off
/// (as it was not at 20).
const MAX_PENDING_RESETS: usize = 1000;
/// Streams we may reset for protocol errors before sending GOAWAY.
const MAX_LOCAL_RESETS: usize = 256;

/// How a downstream HTTP/2 connection that ended in an error is counted and logged. A GOAWAY
/// the proxy sent itself (a flood defence, a protocol violation) is a decision about the
/// peer: `spoke_http2_goaway_sent_total` and a `warn` event. Anything else (the peer went
/// away, sent GOAWAY itself, an I/O error) is routine and stays at `debug`.
fn connection_error(conn: &ConnCtx, e: &hyper::Error) {
    let sent = super::attempt::h2_error(e)
        .filter(|h| h.is_go_away() && h.is_library())
        .and_then(|h| Some((h, h.reason()?)));
    let Some((h2e, reason)) = sent else {
        tracing::debug!(peer = %conn.peer, error = %e, "h2 connection ended with error");
        return;
    };
    let reason = format!("{reason:?}").to_ascii_lowercase();
    conn.listener
        .shared
        .metrics
        .http2_goaway_sent
        .with_label_values(&[&conn.listener.cfg.name, &reason])
        .inc();
    tracing::warn!(
        listener = %conn.listener.cfg.name,
        peer = %conn.peer,
        reason,
        // h2's own text: its debug data tells apart causes that share a code
        // (`too_many_resets`, `too_many_internal_resets`).
        error = %h2e,
        "HTTP/2 connection closed with GOAWAY"
    );
}

pub async fn serve<S>(conn: Arc<ConnCtx>, io: S, mut drain: drain::Watch)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = conn.listener.cfg.idle_timeout;
    let counters = &conn.listener.counters;
    let io = crate::proxy::counted::Counted::new(io, counters.rx.clone(), counters.tx.clone());
    if conn.h2 {
        let ctx = conn.clone();
        // Each stream's future is spawned as a task of its own, which moves it a few times
        // (into the stream, into the task cell, and when its stage changes): boxed, those
        // moves copy a pointer instead of the whole request future (a few KiB).
        let svc = service_fn(move |req| Box::pin(forward::handle(ctx.clone(), req)));
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
                    connection_error(&conn, &e);
                }
                return;
            }
            _ = drain.draining() => c.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    connection_error(&conn, &e);
                }
            }
            _ = drain.closing() => {}
        }
    } else {
        let limits = Limits {
            header_timeout: conn.listener.cfg.header_read_timeout,
            ..Limits::default()
        };
        let (guard, refusal) = Guard::new(io, limits);
        let ctx = conn.clone();
        let r2 = refusal.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let ctx = ctx.clone();
            let refusal = r2.clone();
            async move {
                if let Some(v) = refusal.verdict() {
                    if refusal.is_synthetic(req.uri().path()) {
                        return Ok(refused(&ctx, &v));
                    }
                }
                // The guard holds the bytes after an upgrade request until it knows
                // whether the connection switched protocols.
                let connect = req.method() == http::Method::CONNECT;
                let asked = connect || req.headers().contains_key(http::header::UPGRADE);
                let resp = forward::handle(ctx, req).await;
                if asked {
                    let status = resp.as_ref().map(|r| r.status()).ok();
                    refusal.decide_upgrade(status.is_some_and(|s| {
                        s == http::StatusCode::SWITCHING_PROTOCOLS || connect && s.is_success()
                    }));
                }
                resp
            }
        });
        let c = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // The guard enforces head limits and the slowloris timeout first; hyper's own
            // header timer only closes keep-alive connections idle for the idle timeout.
            .header_read_timeout(idle)
            .max_buf_size(limits.max_header_bytes + 16 * 1024)
            .keep_alive(true)
            // A client may half-close after its request (and the guard ends the stream
            // after a synthetic refusal request): still answer.
            .half_close(true)
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
    }
}

/// The response to a request the framing guard refused; the connection closes after it.
fn refused(conn: &ConnCtx, v: &Verdict) -> http::Response<Body> {
    let direction = conn.listener.cfg.direction_str();
    let m = &conn.listener.shared.metrics;
    m.requests
        .with_label_values(&[
            direction,
            "none",
            v.kind.status().as_str(),
            &conn.listener.cfg.name,
        ])
        .inc();
    m.upstream_rq_errors
        .with_label_values(&["none", v.kind.label()])
        .inc();
    if conn.listener.cfg.access_log {
        tracing::info!(
            target: "access",
            listener = %conn.listener.cfg.name,
            direction,
            peer = %conn.peer,
            status = v.status(),
            error = v.kind.label(),
            detail = v.detail,
            "http request refused"
        );
    }
    let mut r = forward::error_response(v.kind, v.detail);
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}
