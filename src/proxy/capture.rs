//! Transparent capture: connections that iptables (`spoke redirect`) redirected to a
//! `capture:` listener. The destination the app or the peer meant comes from
//! `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST` for IPv6).
//!
//! Outbound, the destination's VIP:port picks a `services:` entry (one hash lookup in the
//! snapshot) and the connection goes on exactly as through an explicit outbound listener
//! of that cluster and protocol; any other destination passes through to the original
//! address as plain TCP, or is closed with `unknown_destination: deny`. Inbound, the
//! destination's port picks the `inbound:` policy and the app at `127.0.0.1:<port>`, and
//! the connection goes on as through an explicit inbound listener.
//!
//! A connection that was not redirected (someone dialled the capture port), or whose
//! destination is one of this proxy's own capture ports on this host (it would come
//! straight back, again and again), is closed, counted in
//! `spoke_capture_refused_total{listener,reason}` and logged at warn.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;

use super::connect::{dial, Alpn, DialCtx};
use super::copy::Ends;
use super::io::{splice, Io};
use super::listener::{to_cluster, ListenerCtx};
use super::tcp::{counters, Access, ActiveGuard};
use crate::config::{EndpointAddr, UnknownDestination};
use crate::snapshot::unmapped;

/// The `cluster` label (metrics, access events) of connections passed through to an
/// unknown destination.
pub const PASSTHROUGH: &str = "passthrough";

/// How long a passed-through connection may take to connect: the destination is anywhere
/// (not a cluster with a timeout of its own), and the app has its own deadline.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a captured connection was closed before anything was proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `SO_ORIGINAL_DST` failed: no conntrack entry, so no redirect happened.
    NoOriginalDst,
    /// The original destination is the capture listener itself: dialled directly.
    NotRedirected,
    /// The original destination is one of this proxy's capture ports on this host.
    Loop,
    /// No service has this destination, and the listener says `unknown_destination: deny`.
    UnknownDestination,
}

impl Refusal {
    /// Every reason (`metrics::CAPTURE_REFUSALS` holds their labels).
    pub const ALL: [Refusal; 4] = [
        Refusal::NoOriginalDst,
        Refusal::NotRedirected,
        Refusal::Loop,
        Refusal::UnknownDestination,
    ];

    /// The `reason` label and the access event's `outcome`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoOriginalDst => "no_original_dst",
            Refusal::NotRedirected => "not_redirected",
            Refusal::Loop => "loop",
            Refusal::UnknownDestination => "unknown_destination",
        }
    }
}

/// The connection's original destination, as the kernel's connection tracking recorded it
/// before the redirect.
pub fn original_dst(sock: &TcpStream) -> io::Result<SocketAddr> {
    let s = SockRef::from(sock);
    // An IPv4 connection on a dual-stack socket was NATed by iptables, not ip6tables.
    let v4 = match sock.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let addr = if v4 {
        s.original_dst_v4()?
    } else {
        s.original_dst_v6()?
    };
    addr.as_socket()
        .map(unmapped)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))
}

/// Whether `ip` is an address of this host (network namespace): only asked for
/// destinations on a capture port, so the bind it takes is rare.
fn is_this_host(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Where a captured connection was meant to go, or why it may not go on (and where it
/// was going, when that is known).
fn destination(
    ctx: &ListenerCtx,
    sock: &TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, (Refusal, Option<SocketAddr>)> {
    let listener = ctx.cfg.name.as_str();
    let dst = match original_dst(sock) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(listener, peer = %peer, error = %e, "captured connection has no original destination (not redirected by iptables?); closed");
            return Err((Refusal::NoOriginalDst, None));
        }
    };
    if sock.local_addr().ok().map(unmapped) == Some(dst) {
        tracing::warn!(listener, peer = %peer, dst.addr = %dst, "connection to the capture port itself (not redirected); closed");
        return Err((Refusal::NotRedirected, Some(dst)));
    }
    if ctx.shared.capture_ports.contains(&dst.port()) && is_this_host(dst.ip()) {
        tracing::warn!(listener, peer = %peer, dst.addr = %dst, "loop: the original destination is one of this proxy's capture ports; closed");
        return Err((Refusal::Loop, Some(dst)));
    }
    Ok(dst)
}

/// Closes a refused connection: counted, and an access event (with the original
/// destination, when there is one) when the listener logs them.
fn refuse(ctx: &ListenerCtx, peer: SocketAddr, why: Refusal, dst: Option<SocketAddr>) {
    ctx.shared
        .metrics
        .capture_refused
        .with_label_values(&[&ctx.cfg.name, why.label()])
        .inc();
    let access = Access {
        ctx,
        peer,
        peer_id: None,
        cluster: "none",
        start: Instant::now(),
    };
    match dst {
        Some(dst) => access.failed(
            why.label(),
            &format_args!("refused: original destination {dst}"),
        ),
        None => access.failed(why.label(), &"refused: no original destination"),
    }
}

/// A connection the app made, redirected to the outbound capture listener.
pub async fn outbound(ctx: &Arc<ListenerCtx>, sock: TcpStream, peer: SocketAddr) {
    let dst = match destination(ctx, &sock, peer) {
        Ok(d) => d,
        Err((why, dst)) => return refuse(ctx, peer, why, dst),
    };
    // Only the service's name and protocol are kept: an HTTP connection can live for
    // hours and must not hold this snapshot (each request loads the current one).
    let service = ctx
        .shared
        .snapshot
        .load()
        .service(dst)
        .map(|s| (s.cluster.clone(), s.protocol));
    let listener = ctx.cfg.name.as_str();
    match (service, ctx.cfg.unknown_destination.unwrap_or_default()) {
        (Some((cluster, protocol)), _) => {
            tracing::debug!(listener, peer = %peer, dst.addr = %dst, cluster = %cluster, protocol = ?protocol, "captured: service");
            to_cluster(ctx, sock, peer, &cluster, protocol).await
        }
        (None, UnknownDestination::Pass) => {
            tracing::debug!(listener, peer = %peer, dst.addr = %dst, "captured: unknown destination, passed through");
            passthrough(ctx, sock, peer, dst).await
        }
        (None, UnknownDestination::Deny) => {
            tracing::warn!(listener, peer = %peer, dst.addr = %dst, "captured: unknown destination denied");
            refuse(ctx, peer, Refusal::UnknownDestination, Some(dst))
        }
    }
}

/// A connection to this pod, redirected to the inbound capture listener: the original
/// port's policy and app.
pub async fn inbound(ctx: &Arc<ListenerCtx>, sock: TcpStream, peer: SocketAddr) {
    let dst = match destination(ctx, &sock, peer) {
        Ok(d) => d,
        Err((why, dst)) => return refuse(ctx, peer, why, dst),
    };
    let port = dst.port();
    let local = ctx.shared.snapshot.load().local_target(port);
    let app = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    tracing::debug!(listener = %ctx.cfg.name, peer = %peer, dst.addr = %dst, app = %app, "captured: inbound");
    super::inbound::serve(ctx, sock, peer, app, local).await
}

/// An unknown destination: on to the original address, unchanged, as plain TCP.
async fn passthrough(ctx: &ListenerCtx, down: TcpStream, peer: SocketAddr, dst: SocketAddr) {
    let metrics = &ctx.shared.metrics;
    let access = Access {
        ctx,
        peer,
        peer_id: None,
        cluster: PASSTHROUGH,
        start: Instant::now(),
    };
    let _active = ActiveGuard::new(metrics, "outbound", PASSTHROUGH);
    let to = DialCtx {
        timeout: PASSTHROUGH_CONNECT_TIMEOUT,
        identity: None,
        alpn: Alpn::None,
        certs: None,
        metrics,
    };
    match Box::pin(dial(&EndpointAddr::Ip(dst), &to)).await {
        Ok(up) => {
            let counters = counters(ctx, "outbound", PASSTHROUGH);
            let ends = Ends::drain(ctx.drain.clone());
            let copied = splice(
                Io::Plain(down),
                up.io,
                ctx.cfg.idle_timeout,
                &counters,
                ends,
            )
            .await;
            access.done(&up.endpoint.to_string(), None, &copied);
        }
        Err(e) => {
            metrics
                .upstream_connect_errors
                .with_label_values(&[PASSTHROUGH, e.kind().label()])
                .inc();
            tracing::warn!(listener = %ctx.cfg.name, dst.addr = %dst, kind = e.kind().label(), error = %e, "passthrough connect failed");
            access.failed(e.kind().label(), &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_metric_series() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, crate::metrics::CAPTURE_REFUSALS);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(unmapped(a), "10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(unmapped(b), b);
    }

    #[test]
    fn this_host() {
        assert!(is_this_host("127.0.0.1".parse().unwrap()));
        assert!(is_this_host("0.0.0.0".parse().unwrap()));
        // TEST-NET-3: never an address of a test machine.
        assert!(!is_this_host("203.0.113.77".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_connection_not_redirected_has_no_other_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without conntrack the kernel has nothing to say; with it, the destination is
        // the listener itself. Either way it must never be taken for another address.
        match original_dst(&s) {
            Ok(d) => assert_eq!(d, addr),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }
}
