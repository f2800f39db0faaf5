//! The accept loop of one listener: enforces the connection limit, stops at the start of a
//! drain, survives accept errors (out of file descriptors) with a backoff, and hands each
//! connection to its handler (by the listener's target) in a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use bytes::Bytes;

use super::detect::{detect, Detected, Prefixed};
use super::http::forward::{ConnCtx, Target};
use super::http::server;
use super::{capture, inbound, tcp, Shared};
use crate::config::{Capture, Listener, ListenerTarget, Protocol};
use crate::drain;
use crate::snapshot::ClusterState;

/// A listener's own metrics, whatever its protocol, fetched once.
pub struct ListenerCounters {
    pub opened: prometheus::IntCounter,
    pub active: prometheus::IntGauge,
    pub rx: prometheus::IntCounter,
    pub tx: prometheus::IntCounter,
}

/// A listener's fixed settings and shared state, handed to each of its connections.
pub struct ListenerCtx {
    pub counters: ListenerCounters,
    pub cfg: Listener,
    pub shared: Arc<Shared>,
    pub drain: drain::Watch,
    /// For `forward` listeners: the local app as a one-endpoint cluster (its name is the
    /// `inbound:<port>` metric label), made once and shared by every connection.
    pub local: Option<Arc<ClusterState>>,
}

impl ListenerCtx {
    pub fn new(cfg: Listener, shared: Arc<Shared>, drain: drain::Watch) -> Self {
        let local = match cfg.target {
            ListenerTarget::Forward(app) => Some(Arc::new(ClusterState::local(
                &format!("inbound:{}", app.port()),
                app,
            ))),
            _ => None,
        };
        let m = &shared.metrics;
        let labels = [cfg.name.as_str(), cfg.direction_str()];
        let flow = |f| {
            m.listener_bytes
                .with_label_values(&[labels[0], labels[1], f])
        };
        let counters = ListenerCounters {
            opened: m.listener_connections_opened.with_label_values(&labels),
            active: m.listener_connections_active.with_label_values(&labels),
            rx: flow("rx"),
            tx: flow("tx"),
        };
        ListenerCtx {
            counters,
            cfg,
            shared,
            drain,
            local,
        }
    }
}

/// Runs the accept loop until the drain starts; the socket closes when this returns, so
/// new connections are refused from then on.
pub async fn run(listener: TcpListener, ctx: Arc<ListenerCtx>) {
    let limit = Arc::new(Semaphore::new(ctx.cfg.max_connections as usize));
    let mut drain = ctx.drain.clone();
    let mut backoff = Duration::from_millis(5);
    let overflow = ctx
        .shared
        .metrics
        .listener_overflow
        .with_label_values(&[&ctx.cfg.name]);
    loop {
        let accepted = tokio::select! {
            _ = drain.draining() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: the connection waits in the backlog while we back off.
                tracing::warn!(listener = %ctx.cfg.name, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            overflow.inc();
            tracing::debug!(listener = %ctx.cfg.name, peer = %peer, "listener full, connection refused");
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let ctx = ctx.clone();
        let guard = ctx.drain.guard();
        ctx.counters.opened.inc();
        ctx.counters.active.inc();
        tokio::spawn(async move {
            handle(&ctx, sock, peer).await;
            ctx.counters.active.dec();
            drop(permit);
            drop(guard);
        });
    }
    tracing::info!(listener = %ctx.cfg.name, "listener stopped accepting");
}

// Each kind of connection is boxed where it is awaited, at its own size: inline, every
// connection's task would be as large as the largest kind (an HTTP server with its TLS
// handshake) for as long as it lives, which with 1,000 idle TCP connections is megabytes.
async fn handle(ctx: &Arc<ListenerCtx>, mut sock: TcpStream, peer: SocketAddr) {
    match &ctx.cfg.target {
        ListenerTarget::Routes => {
            let (found, prefix) = detect(&mut sock, ctx.cfg.detect_wait()).await;
            if found == Detected::Closed
                || (found == Detected::Timeout && ctx.cfg.idle_before_detect())
            {
                return;
            }
            let conn = Arc::new(ConnCtx {
                listener: ctx.clone(),
                peer,
                peer_id: None,
                target: Target::Outbound { default: None },
                h2: found == Detected::Http2,
                tls: false,
                trace_peer: Default::default(),
                request_counters: Default::default(),
            });
            Box::pin(server::serve(
                conn,
                Prefixed::new(prefix, sock),
                ctx.drain.clone(),
            ))
            .await
        }
        ListenerTarget::Cluster(cluster) => {
            to_cluster(ctx, sock, peer, cluster, ctx.cfg.protocol).await
        }
        ListenerTarget::Forward(app) => {
            // Made by `ListenerCtx::new` for every forward listener.
            let local = ctx.local.clone().unwrap_or_else(|| {
                Arc::new(ClusterState::local(
                    &format!("inbound:{}", app.port()),
                    *app,
                ))
            });
            Box::pin(inbound::serve(ctx, sock, peer, *app, local)).await
        }
        ListenerTarget::Capture(Capture::Outbound) => {
            Box::pin(capture::outbound(ctx, sock, peer)).await
        }
        ListenerTarget::Capture(Capture::Inbound) => {
            Box::pin(capture::inbound(ctx, sock, peer)).await
        }
    }
}

/// An outbound connection whose cluster is known (an explicit listener's, or the service
/// a captured destination maps to): opaque TCP straight away, or protocol detection first
/// and HTTP with `cluster` as the default route.
pub(super) async fn to_cluster(
    ctx: &Arc<ListenerCtx>,
    mut sock: TcpStream,
    peer: SocketAddr,
    cluster: &str,
    protocol: Protocol,
) {
    if matches!(protocol, Protocol::Tcp | Protocol::Opaque) {
        return Box::pin(tcp::outbound(ctx, sock, Bytes::new(), peer, cluster)).await;
    }
    let (found, prefix) = detect(&mut sock, ctx.cfg.detect_wait()).await;
    ctx.shared
        .metrics
        .protocol_detected
        .with_label_values(&[&ctx.cfg.name, found.as_str()])
        .inc();
    let h2 = match found {
        Detected::Closed => return,
        // Silent for the whole idle timeout: an idle connection, closed.
        Detected::Timeout if ctx.cfg.idle_before_detect() => return,
        Detected::Http2 => true,
        Detected::Http1 => false,
        // HTTP by config answers garbage with 400.
        _ if protocol == Protocol::Http => false,
        _ => return Box::pin(tcp::outbound(ctx, sock, prefix, peer, cluster)).await,
    };
    let conn = Arc::new(ConnCtx {
        listener: ctx.clone(),
        peer,
        peer_id: None,
        target: Target::Outbound {
            default: Some(cluster.to_string()),
        },
        h2,
        tls: false,
        trace_peer: Default::default(),
        request_counters: Default::default(),
    });
    Box::pin(server::serve(
        conn,
        Prefixed::new(prefix, sock),
        ctx.drain.clone(),
    ))
    .await
}
