//! Inbound connections (explicit `direction: inbound` listeners, and inbound capture once
//! the original destination has chosen the port): apply the port's TLS
//! mode, terminate mTLS, take the peer's SPIFFE ID from its verified certificate, then
//! either serve HTTP (each request authorized on its own, see `http::forward`) or check a
//! TCP connection against the port's policy before connecting to the app, and close it
//! when a later policy no longer allows it. A refused peer never gets a byte to the app.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::authorize::{self, Caller};
use super::connect::{dial, Alpn, DialCtx};
use super::copy::Ends;
use super::detect::{detect, Detected, Prefixed};
use super::http::forward::{ConnCtx, Target};
use super::http::server;
use super::io::{splice, Io};
use super::listener::ListenerCtx;
use super::tcp::{counters, Access, ActiveGuard};
use crate::config::{EndpointAddr, Identity, Protocol, TlsMode, DEFAULT_CONNECT_TIMEOUT};
use crate::snapshot::ClusterState;
use crate::tls;

/// What the first bytes said.
enum First {
    Tls,
    Plain,
    /// Nothing within the wait: a server-speaks-first protocol, or a stalled client.
    Silent,
    Closed,
}

async fn peek_first(sock: &TcpStream, wait: Duration) -> First {
    let mut b = [0u8; 2];
    match tokio::time::timeout(wait, sock.peek(&mut b)).await {
        Err(_) => First::Silent,
        Ok(Err(_)) | Ok(Ok(0)) => First::Closed,
        Ok(Ok(n)) if tls::looks_like_tls(&b[..n]) => First::Tls,
        Ok(Ok(_)) => First::Plain,
    }
}

/// Serves one inbound connection for the app at `app` (`local` is that app as a
/// one-endpoint cluster), under the `inbound:` policy of `app`'s port.
pub async fn serve(
    ctx: &Arc<ListenerCtx>,
    sock: TcpStream,
    peer: SocketAddr,
    app: SocketAddr,
    local: Arc<ClusterState>,
) {
    let start = Instant::now();
    let shared = &ctx.shared;
    let metrics = &shared.metrics;
    // Subscribed before the snapshot is loaded: no policy stored after it goes unseen.
    let changes = shared.changes();
    let snapshot = shared.snapshot.load_full();
    let port = app.port();
    let cluster = local.config.name.as_str();
    let policy = snapshot.inbound_policy(port, shared.tls.is_some());
    let hs_timeout = snapshot
        .config
        .tls
        .as_ref()
        .map(|t| t.handshake_timeout)
        .unwrap_or(crate::config::DEFAULT_HANDSHAKE_TIMEOUT);
    let _active = ActiveGuard::new(metrics, "inbound", cluster);
    let hs_error = |reason: &str| {
        metrics
            .tls_handshake_errors
            .with_label_values(&["inbound", reason])
            .inc();
    };
    let mut access = Access {
        ctx,
        peer,
        peer_id: None,
        cluster,
        start,
    };

    let opaque = matches!(policy.protocol, Protocol::Opaque | Protocol::Tcp)
        && policy.tls == TlsMode::Disabled;
    let first = match policy.tls {
        TlsMode::Strict => peek_first(&sock, hs_timeout).await,
        _ if opaque => First::Plain,
        _ => peek_first(&sock, ctx.cfg.detect_timeout).await,
    };
    let use_tls = match (policy.tls, first) {
        (_, First::Closed) => return,
        (TlsMode::Strict, First::Tls) | (TlsMode::Permissive, First::Tls) => true,
        (TlsMode::Strict, First::Silent) => {
            hs_error("handshake_timeout");
            access.failed("handshake_timeout", &"no TLS handshake within the timeout");
            return;
        }
        (TlsMode::Strict, First::Plain) => {
            hs_error("plaintext");
            tracing::debug!(peer = %peer, port, "plaintext refused on a strict mTLS port");
            access.failed("plaintext_refused", &"plaintext on a strict mTLS port");
            return;
        }
        (TlsMode::Disabled, First::Tls) => {
            hs_error("unexpected_tls");
            access.failed("unexpected_tls", &"TLS handshake on a plaintext port");
            return;
        }
        (TlsMode::Permissive | TlsMode::Disabled, First::Plain | First::Silent) => false,
    };

    let (down, peer_id): (Io, Option<Identity>) = if use_tls {
        let Some(store) = shared.tls.as_ref() else {
            hs_error("no_certificate");
            return;
        };
        let Some(current) = store.current() else {
            hs_error("no_certificate");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(current.server.clone());
        // Boxed: the handshake's state (a whole TLS session) is freed once it is done
        // instead of staying part of the connection's future.
        let accept = Box::pin(acceptor.accept(sock));
        let stream = match tokio::time::timeout(hs_timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = tls::handshake_reason(&e);
                hs_error(reason);
                tracing::info!(peer = %peer, port, reason, error = %e, "inbound TLS handshake failed");
                access.failed(reason, &e);
                return;
            }
            Err(_) => {
                hs_error("handshake_timeout");
                access.failed("handshake_timeout", &"TLS handshake timed out");
                return;
            }
        };
        let id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| tls::verify::spiffe_id(leaf).ok());
        // The verifier already insists on one SPIFFE ID; an mTLS peer without one must
        // never pass for an unauthenticated (plaintext) one.
        let Some(id) = id else {
            hs_error("no_identity");
            access.failed("no_identity", &"client certificate without a SPIFFE ID");
            return;
        };
        (Io::Server(Box::new(stream)), Some(id))
    } else {
        (Io::Plain(sock), None)
    };

    // What the app speaks: fixed by the port's protocol, or detected.
    let mut down = down;
    let (http, prefix) = match policy.protocol {
        Protocol::Tcp | Protocol::Opaque => (None, Bytes::new()),
        Protocol::Http | Protocol::Auto if down.alpn() == Some(b"h2") => (Some(true), Bytes::new()),
        p => {
            let (found, prefix) = detect(&mut down, ctx.cfg.detect_wait()).await;
            metrics
                .protocol_detected
                .with_label_values(&[&ctx.cfg.name, found.as_str()])
                .inc();
            match found {
                Detected::Closed => return,
                Detected::Timeout if ctx.cfg.idle_before_detect() => return,
                Detected::Http1 => (Some(false), prefix),
                Detected::Http2 => (Some(true), prefix),
                _ if p == Protocol::Http => (Some(false), prefix),
                _ => (None, prefix),
            }
        }
    };
    access.peer_id = peer_id.as_ref();

    if let Some(h2) = http {
        let conn = Arc::new(ConnCtx {
            listener: ctx.clone(),
            peer,
            peer_id: peer_id.clone(),
            target: Target::Inbound {
                app,
                local: local.clone(),
            },
            h2,
            tls: use_tls,
            trace_peer: Default::default(),
            request_counters: Default::default(),
        });
        Box::pin(server::serve(
            conn,
            Prefixed::new(prefix, down),
            ctx.drain.clone(),
        ))
        .await;
        return;
    }
    let caller = Caller {
        addr: peer,
        tls: use_tls,
        id: peer_id.as_ref(),
        port,
    };
    if !authorize::connection(shared, caller) {
        access.failed("unauthorized", &"peer not allowed on this port");
        return;
    }

    let addr = EndpointAddr::Ip(app);
    let to_app = DialCtx {
        timeout: DEFAULT_CONNECT_TIMEOUT,
        identity: None,
        alpn: Alpn::None,
        certs: None,
        metrics,
    };
    match Box::pin(dial(&addr, &to_app)).await {
        Ok(d) => {
            let (mut stream, endpoint) = (d.io, d.endpoint);
            let counters = counters(ctx, "inbound", cluster);
            if !prefix.is_empty() {
                if let Err(e) = stream.write_all(&prefix).await {
                    access.failed("upstream_error", &e);
                    return;
                }
                counters.add_rx(prefix.len() as u64);
            }
            let mut copied = splice(
                down,
                stream,
                ctx.cfg.idle_timeout,
                &counters,
                Ends {
                    drain: ctx.drain.clone(),
                    revoked: Box::pin(authorize::revoked(shared, changes, caller, None)),
                },
            )
            .await;
            copied.rx += prefix.len() as u64;
            access.done(&endpoint.to_string(), None, &copied);
        }
        Err(e) => {
            metrics
                .upstream_connect_errors
                .with_label_values(&[cluster, e.kind().label()])
                .inc();
            tracing::warn!(listener = %ctx.cfg.name, app = %app, error = %e, "app connect failed");
            access.failed(e.kind().label(), &e);
        }
    }
}
