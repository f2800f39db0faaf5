//! Inbound connections (explicit `direction: inbound` listeners): apply the port's TLS
//! mode, terminate mTLS, take the peer's SPIFFE ID from its verified certificate, check the
//! port's allow list, and only then connect to the app. A refused peer never gets a byte
//! to the app.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::connect::connect_endpoint;
use super::io::{splice, Io};
use super::listener::ListenerCtx;
use super::tcp::{counters, Access, ActiveGuard};
use crate::config::{EndpointAddr, Identity, Protocol, TlsMode, DEFAULT_CONNECT_TIMEOUT};
use crate::snapshot::Allow;
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

pub async fn serve(ctx: &ListenerCtx, sock: TcpStream, peer: SocketAddr, app: SocketAddr) {
    let start = Instant::now();
    let shared = &ctx.shared;
    let metrics = &shared.metrics;
    let snapshot = shared.snapshot.load_full();
    let port = app.port();
    let cluster = format!("inbound:{port}");
    let policy = snapshot.inbound_policy(port, shared.tls.is_some());
    let hs_timeout = snapshot
        .config
        .tls
        .as_ref()
        .map(|t| t.handshake_timeout)
        .unwrap_or(crate::config::DEFAULT_HANDSHAKE_TIMEOUT);
    let _active = ActiveGuard::new(metrics, "inbound", &cluster);
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
        cluster: &cluster,
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
        let acceptor = tokio_rustls::TlsAcceptor::from(store.current().server.clone());
        let stream = match tokio::time::timeout(hs_timeout, acceptor.accept(sock)).await {
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
        (Io::Server(Box::new(stream)), id)
    } else {
        (Io::Plain(sock), None)
    };
    access.peer_id = peer_id.as_ref();

    let allowed = match &policy.allow {
        Allow::Any => true,
        Allow::Deny => false,
        Allow::Authenticated => peer_id.is_some() || !use_tls && policy.tls != TlsMode::Strict,
        Allow::List(rules) => peer_id
            .as_ref()
            .is_some_and(|id| rules.iter().any(|r| r.matches(id))),
    };
    if let Some(o) = &shared.observer {
        let _ = o.send(crate::proxy::AuthzEvent {
            port,
            peer_id: peer_id.as_ref().map(|i| i.to_string()),
            allowed,
        });
    }
    if !allowed {
        metrics
            .authz_denied
            .with_label_values(&[&port.to_string()])
            .inc();
        tracing::warn!(
            peer = %peer,
            peer.id = peer_id.as_ref().map(|i| i.as_str()).unwrap_or("(plaintext)"),
            port,
            "authz: connection denied"
        );
        access.failed("unauthorized", &"peer not allowed on this port");
        return;
    }

    let addr = EndpointAddr::Ip(app);
    match connect_endpoint(&addr, DEFAULT_CONNECT_TIMEOUT).await {
        Ok((stream, endpoint)) => {
            let counters = counters(metrics, "inbound", &cluster);
            let copied = splice(
                down,
                Io::Plain(stream),
                ctx.cfg.idle_timeout,
                &counters,
                ctx.drain.clone(),
            )
            .await;
            access.done(&endpoint.to_string(), None, &copied);
        }
        Err(e) => {
            metrics
                .upstream_connect_errors
                .with_label_values(&[&cluster, e.kind()])
                .inc();
            tracing::warn!(listener = %ctx.cfg.name, app = %app, error = %e, "app connect failed");
            access.failed(e.kind(), &e);
        }
    }
}
