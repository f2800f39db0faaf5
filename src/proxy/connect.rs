//! The one dial path to upstreams, for TCP and HTTP alike: resolve, connect within the
//! cluster's `connect_timeout`, and for meshed clusters complete mTLS and check that the
//! server is the expected identity. `connect_cluster` (opaque TCP) adds the balancer and
//! circuit breaker around it and tries the next endpoint on a failed connect, up to
//! `connect_attempts`; the HTTP pool dials through `dial` too. Every outcome reaches the
//! balancer and outlier detection through `ClusterState::record`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::error::ProxyError;
use super::io::Io;
use crate::balance::{now_ms, InFlight, Limit, Outcome, Slot};
use crate::config::{EndpointAddr, Identity};
use crate::metrics::Metrics;
use crate::snapshot::ClusterState;
use crate::tls::CertStore;

/// Which TLS client config (and so which ALPN) a meshed dial offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Opaque TCP: no application protocol.
    None,
    Http1,
    Http2,
}

/// What a dial needs besides the address.
pub struct DialCtx<'a> {
    pub timeout: Duration,
    /// Meshed: mTLS, and the server must be this identity.
    pub identity: Option<&'a Identity>,
    pub alpn: Alpn,
    pub certs: Option<&'a CertStore>,
    pub metrics: &'a Metrics,
}

/// A dialed upstream connection.
pub struct Dialed {
    pub io: Io,
    pub endpoint: SocketAddr,
    /// The server's verified identity, for meshed dials.
    pub peer_id: Option<Identity>,
}

/// An upstream TCP connection from `connect_cluster`, with what it holds while open.
pub struct Connected {
    pub io: Io,
    pub endpoint: SocketAddr,
    /// Connect tries it took, 1 when the first one worked.
    pub attempts: u32,
    pub peer_id: Option<Identity>,
    /// Counts the connection for `least_request` and `max_connections` until dropped.
    pub held: (InFlight, Slot),
}

/// Resolves an endpoint address (host names at connect time).
pub async fn resolve(addr: &EndpointAddr) -> Result<SocketAddr, ProxyError> {
    match addr {
        EndpointAddr::Ip(a) => Ok(*a),
        EndpointAddr::Host(h, p) => tokio::net::lookup_host((h.as_str(), *p))
            .await
            .map_err(|e| ProxyError::Resolve {
                endpoint: addr.to_string(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| ProxyError::Resolve {
                endpoint: addr.to_string(),
                reason: "no addresses".into(),
            }),
    }
}

/// Resolves, connects and (meshed) completes mTLS with the identity check, all within
/// `ctx.timeout`.
pub async fn dial(addr: &EndpointAddr, ctx: &DialCtx<'_>) -> Result<Dialed, ProxyError> {
    let attempt = async {
        let endpoint = resolve(addr).await?;
        let stream = TcpStream::connect(endpoint)
            .await
            .map_err(|e| ProxyError::from_connect(addr.to_string(), e))?;
        // Proxied bytes are forwarded as they come; batching is the endpoints' business.
        let _ = stream.set_nodelay(true);
        let Some(want) = ctx.identity else {
            return Ok(Dialed {
                io: Io::Plain(stream),
                endpoint,
                peer_id: None,
            });
        };
        let no_cert = |reason: &str| ProxyError::TlsFailed {
            endpoint: endpoint.to_string(),
            reason: reason.into(),
        };
        let store = ctx
            .certs
            .ok_or_else(|| no_cert("no workload certificate configured"))?;
        let current = store
            .current()
            .ok_or_else(|| no_cert("no workload certificate yet"))?;
        let cfg = match ctx.alpn {
            Alpn::None => current.client.clone(),
            Alpn::Http1 => current.client_h1.clone(),
            Alpn::Http2 => current.client_h2.clone(),
        };
        let (io, id) = tls_connect(stream, endpoint, want, cfg, ctx.metrics).await?;
        Ok(Dialed {
            io,
            endpoint,
            peer_id: Some(id),
        })
    };
    tokio::time::timeout(ctx.timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ProxyError::ConnectTimeout {
                endpoint: addr.to_string(),
            })
        })
}

/// Connects to one of the cluster's endpoints for an opaque TCP connection: the balancer
/// picks (`key` is the hash for `ring_hash`), a failed connect counts against the endpoint
/// and the next one is tried, up to `connect_attempts` tries.
pub async fn connect_cluster(
    cluster: &ClusterState,
    key: Option<u64>,
    metrics: &Metrics,
    certs: Option<&CertStore>,
) -> Result<Connected, ProxyError> {
    let cfg = &cluster.config;
    let Some(slot) = cluster
        .runtime()
        .take(Limit::Connections, &cfg.circuit_breaker)
    else {
        overflow(metrics, &cfg.name, Limit::Connections);
        return Err(ProxyError::CircuitOpen {
            cluster: cfg.name.clone(),
            limit: Limit::Connections.label(),
        });
    };
    let max = (cfg.connect_attempts as usize).min(cluster.endpoints().len());
    let mut tried: Vec<usize> = Vec::with_capacity(max);
    let mut last_err = None;
    let ctx = DialCtx {
        timeout: cfg.connect_timeout,
        identity: cfg.tls.as_ref(),
        alpn: Alpn::None,
        certs,
        metrics,
    };
    for attempt in 1..=max {
        let Some(picked) = cluster.pick(key, &tried) else {
            break;
        };
        if picked.panic {
            panicked(metrics, &cfg.name);
        }
        let i = picked.index;
        tried.push(i);
        let (Some(ep), Some(state)) = (cluster.endpoint(i), cluster.endpoints().get(i)) else {
            break;
        };
        let inflight = state.start();
        let started = Instant::now();
        match dial(&ep.address, &ctx).await {
            Ok(d) => {
                state.observe_latency(started.elapsed(), now_ms());
                cluster.record(i, Outcome::Success, metrics);
                return Ok(Connected {
                    io: d.io,
                    endpoint: d.endpoint,
                    attempts: attempt as u32,
                    peer_id: d.peer_id,
                    held: (inflight, slot),
                });
            }
            Err(e) => {
                cluster.record(i, Outcome::GatewayError, metrics);
                connect_failed(metrics, &cfg.name, &e, attempt, max);
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoHealthyEndpoints {
        cluster: cfg.name.clone(),
    }))
}

/// Counts and logs (at debug: the request's own event says if it failed) one failed
/// connect try.
pub fn connect_failed(metrics: &Metrics, cluster: &str, e: &ProxyError, attempt: usize, of: usize) {
    metrics
        .upstream_connect_errors
        .with_label_values(&[cluster, e.kind().label()])
        .inc();
    tracing::debug!(
        cluster,
        attempt,
        of,
        kind = e.kind().label(),
        error = %e,
        "upstream connect failed"
    );
}

pub fn overflow(metrics: &Metrics, cluster: &str, limit: Limit) {
    metrics
        .breaker_overflow
        .with_label_values(&[cluster, limit.label()])
        .inc();
    tracing::debug!(
        cluster,
        limit = limit.label(),
        "circuit breaker: over the limit"
    );
}

pub fn panicked(metrics: &Metrics, cluster: &str) {
    metrics.lb_panic.with_label_values(&[cluster]).inc();
    tracing::debug!(
        cluster,
        "no endpoint in service: picking among all (panic mode)"
    );
}

/// mTLS over a connected stream with `cfg` (which decides ALPN), then the identity check.
pub async fn tls_connect(
    stream: TcpStream,
    endpoint: SocketAddr,
    want: &Identity,
    cfg: Arc<rustls::ClientConfig>,
    metrics: &Metrics,
) -> Result<(Io, Identity), ProxyError> {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let fail = |reason: &'static str, detail: String| {
        metrics
            .tls_handshake_errors
            .with_label_values(&["outbound", reason])
            .inc();
        ProxyError::TlsFailed {
            endpoint: endpoint.to_string(),
            reason: detail,
        }
    };
    let tls = connector
        .connect(crate::tls::placeholder_name(), stream)
        .await
        .map_err(|e| fail(crate::tls::handshake_reason(&e), e.to_string()))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| fail("no_server_cert", "server sent no certificate".into()))?;
    let got = crate::tls::verify::spiffe_id(leaf).map_err(|e| fail(e.reason(), e.to_string()))?;
    if &got != want {
        tracing::warn!(
            endpoint = %endpoint,
            expected = %want,
            peer.id = %got,
            "upstream has the wrong identity"
        );
        return Err(fail(
            "wrong_identity",
            format!("server is {got}, expected {want}"),
        ));
    }
    Ok((Io::Client(Box::new(tls)), got))
}
