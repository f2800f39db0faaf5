//! Dialing a cluster: pick an endpoint, connect within the cluster's `connect_timeout`, and
//! on a refused or timed-out connect try the next endpoint, up to `connect_attempts` tries.
//! Every failed try is counted and logged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::error::ProxyError;
use crate::config::EndpointAddr;
use crate::metrics::Metrics;
use crate::snapshot::ClusterState;

/// An upstream connection and which endpoint it reached.
pub struct Connected {
    pub stream: TcpStream,
    pub endpoint: SocketAddr,
    /// Connect tries it took, 1 when the first one worked.
    pub attempts: u32,
}

/// Connects to one of the cluster's endpoints.
pub async fn connect_cluster(
    cluster: &ClusterState,
    metrics: &Metrics,
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
        match connect_endpoint(&ep.address, cfg.connect_timeout).await {
            Ok((stream, endpoint)) => {
                return Ok(Connected {
                    stream,
                    endpoint,
                    attempts: attempt as u32,
                })
            }
            Err(e) => {
                metrics
                    .upstream_connect_errors
                    .with_label_values(&[&cfg.name, e.kind()])
                    .inc();
                tracing::warn!(
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
