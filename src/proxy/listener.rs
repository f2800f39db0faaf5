//! The accept loop of one listener: enforces the connection limit, stops at the start of a
//! drain, survives accept errors (out of file descriptors) with a backoff, and hands each
//! connection to its handler in a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{inbound, tcp, Shared};
use crate::config::{Listener, ListenerTarget};
use crate::drain;

/// A listener's fixed settings and shared state, handed to each of its connections.
pub struct ListenerCtx {
    pub cfg: Listener,
    pub shared: Arc<Shared>,
    pub drain: drain::Watch,
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
        tokio::spawn(async move {
            handle(&ctx, sock, peer).await;
            drop(permit);
            drop(guard);
        });
    }
    tracing::info!(listener = %ctx.cfg.name, "listener stopped accepting");
}

async fn handle(ctx: &ListenerCtx, sock: TcpStream, peer: SocketAddr) {
    match &ctx.cfg.target {
        ListenerTarget::Cluster(cluster) => tcp::outbound(ctx, sock, peer, cluster).await,
        ListenerTarget::Forward(app) => inbound::serve(ctx, sock, peer, *app).await,
        ListenerTarget::Capture(_) => {
            // Refused at start-up until transparent capture lands; never reached.
            tracing::error!(listener = %ctx.cfg.name, "capture listeners are not supported");
        }
    }
}
