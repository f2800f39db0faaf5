//! Opaque TCP proxying: connect upstream, then copy both ways. Emits one access event per
//! connection (`target: "access"`) with endpoint, bytes each way, duration and outcome.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::TcpStream;

use super::connect::{connect_cluster, connect_endpoint};
use super::copy::{self, Copied, Counters};
use super::listener::ListenerCtx;
use super::ProxyError;
use crate::metrics::Metrics;

/// Keeps `spoke_tcp_connections_active` right however the connection ends.
struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    fn new(m: &Metrics, direction: &str, cluster: &str) -> Self {
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

fn counters(m: &Metrics, direction: &str, cluster: &str) -> Counters {
    Counters {
        rx: m.tcp_bytes.with_label_values(&[direction, cluster, "rx"]),
        tx: m.tcp_bytes.with_label_values(&[direction, cluster, "tx"]),
    }
}

/// An explicit outbound listener: everything goes to `cluster`.
pub async fn outbound(ctx: &ListenerCtx, down: TcpStream, peer: SocketAddr, cluster: &str) {
    let start = Instant::now();
    let snapshot = ctx.shared.snapshot.load_full();
    let metrics = &ctx.shared.metrics;
    let _active = ActiveGuard::new(metrics, "outbound", cluster);
    let Some(state) = snapshot.cluster(cluster) else {
        let e = ProxyError::UnknownCluster {
            cluster: cluster.to_string(),
        };
        metrics
            .upstream_connect_errors
            .with_label_values(&[cluster, e.kind()])
            .inc();
        access_failed(ctx, peer, cluster, start, &e);
        return;
    };
    match connect_cluster(state, metrics).await {
        Ok(up) => {
            let copied = splice(ctx, down, up.stream, metrics, "outbound", cluster).await;
            access(ctx, peer, cluster, &up.endpoint.to_string(), start, &copied);
        }
        Err(e) => access_failed(ctx, peer, cluster, start, &e),
    }
}

/// An explicit inbound listener without TLS: forward to the app.
pub async fn inbound_plain(ctx: &ListenerCtx, down: TcpStream, peer: SocketAddr, app: SocketAddr) {
    let start = Instant::now();
    let metrics = &ctx.shared.metrics;
    let cluster = format!("inbound:{}", app.port());
    let _active = ActiveGuard::new(metrics, "inbound", &cluster);
    let addr = crate::config::EndpointAddr::Ip(app);
    let timeout = crate::config::DEFAULT_CONNECT_TIMEOUT;
    match connect_endpoint(&addr, timeout).await {
        Ok((stream, endpoint)) => {
            let copied = splice(ctx, down, stream, metrics, "inbound", &cluster).await;
            access(ctx, peer, &cluster, &endpoint.to_string(), start, &copied);
        }
        Err(e) => {
            metrics
                .upstream_connect_errors
                .with_label_values(&[&cluster, e.kind()])
                .inc();
            tracing::warn!(listener = %ctx.cfg.name, app = %app, error = %e, "app connect failed");
            access_failed(ctx, peer, &cluster, start, &e);
        }
    }
}

async fn splice(
    ctx: &ListenerCtx,
    mut down: TcpStream,
    mut up: TcpStream,
    metrics: &Metrics,
    direction: &str,
    cluster: &str,
) -> Copied {
    let counters = counters(metrics, direction, cluster);
    let (dr, dw) = down.split();
    let (ur, uw) = up.split();
    copy::bidirectional(
        dr,
        dw,
        ur,
        uw,
        ctx.cfg.idle_timeout,
        &counters,
        ctx.drain.clone(),
    )
    .await
}

fn access(
    ctx: &ListenerCtx,
    peer: SocketAddr,
    cluster: &str,
    endpoint: &str,
    start: Instant,
    c: &Copied,
) {
    tracing::info!(
        target: "access",
        listener = %ctx.cfg.name,
        peer = %peer,
        cluster,
        endpoint,
        bytes_rx = c.rx,
        bytes_tx = c.tx,
        duration_ms = start.elapsed().as_millis() as u64,
        outcome = c.outcome.as_str(),
        "tcp"
    );
}

fn access_failed(
    ctx: &ListenerCtx,
    peer: SocketAddr,
    cluster: &str,
    start: Instant,
    e: &ProxyError,
) {
    tracing::info!(
        target: "access",
        listener = %ctx.cfg.name,
        peer = %peer,
        cluster,
        bytes_rx = 0u64,
        bytes_tx = 0u64,
        duration_ms = start.elapsed().as_millis() as u64,
        outcome = e.kind(),
        error = %e,
        "tcp"
    );
}
