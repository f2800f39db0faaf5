//! Dialing a cluster: pick an endpoint, connect within the cluster's `connect_timeout`, and
//! on a refused or timed-out connect try the next endpoint, up to `connect_attempts` tries.
//! Every failed try is counted and logged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::error::ProxyError;
use super::io::Io;
use crate::config::{EndpointAddr, Identity};
use crate::metrics::Metrics;
use crate::snapshot::ClusterState;
use crate::tls::CertStore;

/// An upstream connection and which endpoint it reached.
pub struct Connected {
    pub io: Io,
    pub endpoint: SocketAddr,
    /// Connect tries it took, 1 when the first one worked.
    pub attempts: u32,
    /// The server's verified identity, for meshed clusters.
    pub peer_id: Option<Identity>,
}

/// Connects to one of the cluster's endpoints; for a cluster with `tls.identity`, also
/// completes mTLS and checks that the server is that identity. A failed handshake or a
/// wrong identity is a failed try like a refused connect.
pub async fn connect_cluster(
    cluster: &ClusterState,
    metrics: &Metrics,
    tls: Option<&CertStore>,
) -> Result<Connected, ProxyError> {
    let cfg = &cluster.config;
    let set = &cluster.endpoints;
    let max = (cfg.connect_attempts as usize).min(set.len());
    let mut tried: Vec<usize> = Vec::with_capacity(max);
    let mut last_err = None;
    for attempt in 1..=max {
        let Some(i) = set.pick(&tried) else { break };
        tried.push(i);
        let Some(ep) = set.get(i) else { break };
        let tried = tokio::time::timeout(cfg.connect_timeout, async {
            let (stream, endpoint) = connect_endpoint(&ep.address, cfg.connect_timeout).await?;
            match (&cfg.tls, tls) {
                (None, _) => Ok((Io::Plain(stream), endpoint, None)),
                (Some(want), Some(store)) => {
                    let Some(c) = store.current() else {
                        return Err(ProxyError::TlsFailed {
                            endpoint: endpoint.to_string(),
                            reason: "no workload certificate yet".into(),
                        });
                    };
                    let cfg = c.client.clone();
                    let (io, id) = tls_connect(stream, endpoint, want, cfg, metrics).await?;
                    Ok((io, endpoint, Some(id)))
                }
                (Some(_), None) => Err(ProxyError::TlsFailed {
                    endpoint: endpoint.to_string(),
                    reason: "no workload certificate configured".into(),
                }),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(ProxyError::ConnectTimeout {
                endpoint: ep.address.to_string(),
            })
        });
        match tried {
            Ok((io, endpoint, peer_id)) => {
                return Ok(Connected {
                    io,
                    endpoint,
                    attempts: attempt as u32,
                    peer_id,
                })
            }
            Err(e) => {
                metrics
                    .upstream_connect_errors
                    .with_label_values(&[&cfg.name, e.kind()])
                    .inc();
                tracing::debug!(
                    cluster = %cfg.name,
                    endpoint = %ep.address,
                    attempt,
                    of = max,
                    kind = e.kind(),
                    error = %e,
                    "upstream connect failed"
                );
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoHealthyEndpoints {
        cluster: cfg.name.clone(),
    }))
}

/// mTLS over a connected stream with `cfg` (which decides ALPN), then the identity check.
pub async fn tls_connect(
    stream: TcpStream,
    endpoint: SocketAddr,
    want: &Identity,
    cfg: std::sync::Arc<rustls::ClientConfig>,
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

/// One connect try: resolve (for host names) and connect, both within `timeout`.
pub async fn connect_endpoint(
    addr: &EndpointAddr,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let name = addr.to_string();
    let attempt = async {
        let target = match addr {
            EndpointAddr::Ip(a) => *a,
            EndpointAddr::Host(h, p) => tokio::net::lookup_host((h.as_str(), *p))
                .await
                .map_err(|e| ProxyError::Resolve {
                    endpoint: name.clone(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| ProxyError::Resolve {
                    endpoint: name.clone(),
                    reason: "no addresses".into(),
                })?,
        };
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| ProxyError::from_connect(name.clone(), e))?;
        // Proxied bytes are forwarded as they come; batching is the endpoints' business.
        let _ = stream.set_nodelay(true);
        Ok((stream, target))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::ConnectTimeout { endpoint: name }),
    }
}
