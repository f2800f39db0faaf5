//! Opaque TCP proxying for explicit outbound listeners: connect upstream (with mTLS for
//! meshed clusters), then copy both ways. Also holds the per-connection bookkeeping shared
//! with the inbound side: the active-connection gauge and the one access event per
//! connection (`target: "access"`).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::connect::connect_cluster;
use super::copy::{Copied, Counters, Ends};
use super::io::{splice, Io};
use super::listener::ListenerCtx;
use super::ProxyError;
use crate::config::Identity;
use crate::metrics::Metrics;

/// Counts a connection as opened and keeps `spoke_tcp_connections_active` right however
/// it ends.
pub struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    pub fn new(m: &Metrics, direction: &str, cluster: &str) -> Self {
        m.tcp_connections_opened
            .with_label_values(&[direction, cluster])
            .inc();
        let g = m
            .tcp_connections_active
            .with_label_values(&[direction, cluster]);
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn counters(ctx: &ListenerCtx, direction: &str, cluster: &str) -> Counters {
    let m = &ctx.shared.metrics;
    Counters {
        rx: m.tcp_bytes.with_label_values(&[direction, cluster, "rx"]),
        tx: m.tcp_bytes.with_label_values(&[direction, cluster, "tx"]),
        listener_rx: ctx.counters.rx.clone(),
        listener_tx: ctx.counters.tx.clone(),
    }
}

/// What one access event says about a connection.
pub struct Access<'a> {
    pub ctx: &'a ListenerCtx,
    pub peer: SocketAddr,
    pub peer_id: Option<&'a Identity>,
    pub cluster: &'a str,
    pub start: Instant,
}

impl Access<'_> {
    /// The access event of a connection that was proxied (if the listener logs them).
    pub fn done(&self, endpoint: &str, upstream_id: Option<&Identity>, c: &Copied) {
        if !self.ctx.cfg.access_log {
            return;
        }
        tracing::info!(
            target: "access",
            listener = %self.ctx.cfg.name,
            peer = %self.peer,
            peer_id = self.peer_id.map(|i| i.as_str()),
            cluster = self.cluster,
            endpoint,
            upstream_id = upstream_id.map(|i| i.as_str()),
            bytes_rx = c.rx,
            bytes_tx = c.tx,
            duration_us = self.start.elapsed().as_micros() as u64,
            outcome = c.outcome.as_str(),
            "tcp"
        );
    }

    /// The access event of a connection that ended before any byte was proxied.
    pub fn failed(&self, outcome: &str, error: &dyn std::fmt::Display) {
        if !self.ctx.cfg.access_log {
            return;
        }
        tracing::info!(
            target: "access",
            listener = %self.ctx.cfg.name,
            peer = %self.peer,
            peer_id = self.peer_id.map(|i| i.as_str()),
            cluster = self.cluster,
            bytes_rx = 0u64,
            bytes_tx = 0u64,
            duration_us = self.start.elapsed().as_micros() as u64,
            outcome,
            error = %error,
            "tcp"
        );
    }
}

/// An explicit outbound listener: everything goes to `cluster`. `prefix` holds bytes
/// already read from the client (by protocol detection); they go upstream first.
pub async fn outbound(
    ctx: &ListenerCtx,
    down: TcpStream,
    prefix: Bytes,
    peer: SocketAddr,
    cluster: &str,
) {
    let access = Access {
        ctx,
        peer,
        peer_id: None,
        cluster,
        start: Instant::now(),
    };
    let snapshot = ctx.shared.snapshot.load_full();
    let metrics = &ctx.shared.metrics;
    let _active = ActiveGuard::new(metrics, "outbound", cluster);
    let Some(state) = snapshot.cluster(cluster) else {
        let e = ProxyError::UnknownCluster {
            cluster: cluster.to_string(),
        };
        metrics
            .upstream_connect_errors
            .with_label_values(&[cluster, e.kind().label()])
            .inc();
        access.failed(e.kind().label(), &e);
        return;
    };
    // `ring_hash` on a TCP connection: the client's address is the only key there is.
    let key = (state.config.lb == crate::config::Lb::RingHash)
        .then(|| crate::balance::hash_ip(peer.ip()));
    // Boxed: the dial and TLS handshake state is freed once connected instead of staying
    // part of the connection's future for as long as it is open.
    match Box::pin(connect_cluster(
        state,
        key,
        metrics,
        ctx.shared.tls.as_deref(),
    ))
    .await
    {
        Ok(mut up) => {
            let counters = counters(ctx, "outbound", cluster);
            if !prefix.is_empty() {
                if let Err(e) = up.io.write_all(&prefix).await {
                    access.failed("upstream_error", &e);
                    return;
                }
                counters.add_rx(prefix.len() as u64);
            }
            let mut copied = splice(
                Io::Plain(down),
                up.io,
                ctx.cfg.idle_timeout,
                &counters,
                Ends::drain(ctx.drain.clone()),
            )
            .await;
            copied.rx += prefix.len() as u64;
            access.done(&up.endpoint.to_string(), up.peer_id.as_ref(), &copied);
        }
        Err(e) => {
            // One event per failed connection; each try was a debug event.
            tracing::warn!(listener = %ctx.cfg.name, cluster, kind = e.kind().label(), error = %e, "upstream connect failed");
            access.failed(e.kind().label(), &e)
        }
    }
}
