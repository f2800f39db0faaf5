//! Active health checks: for clusters with `health_check:`, every endpoint is probed each
//! `interval` (with ±10% jitter, so a fleet of sidecars does not probe in step), by an HTTP
//! GET of the path or a plain connect (mTLS included for meshed clusters, through the one
//! dial path). `unhealthy` failures in a row take the endpoint out of balancing until
//! `healthy` successes in a row bring it back; each change is logged.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::connect::{dial, Alpn, DialCtx};
use super::Shared;
use crate::balance::{now_ms, EndpointState};
use crate::config::{Cluster, HealthCheck};

/// How often the scheduler looks for checks that are due.
const TICK: Duration = Duration::from_millis(50);

/// Runs the checks of whatever the current snapshot configures, until the proxy stops.
pub async fn run(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(TICK).await;
        let snapshot = shared.snapshot.load_full();
        let now = now_ms();
        for cluster in snapshot.clusters() {
            let Some(hc) = &cluster.config.health_check else {
                continue;
            };
            let every = hc.interval.as_millis() as u64;
            for (i, ep) in cluster.endpoints().iter().enumerate() {
                let jitter = fastrand::u64(..=every / 5);
                if !ep.claim_check(now, every - every / 10 + jitter) {
                    continue;
                }
                let (shared, cluster, ep) = (shared.clone(), cluster.clone(), ep.clone());
                tokio::spawn(async move {
                    let cfg = &cluster.config;
                    let Some(hc) = &cfg.health_check else { return };
                    let passed = probe(&shared, cfg, i, hc).await;
                    report(cfg, hc, &ep, passed);
                });
            }
        }
    }
}

fn report(cfg: &Cluster, hc: &HealthCheck, ep: &EndpointState, passed: Result<(), String>) {
    let ok = passed.is_ok();
    match ep.check_result(ok, hc.healthy, hc.unhealthy) {
        Some(true) => {
            tracing::info!(cluster = %cfg.name, endpoint = %ep.address, "health check: endpoint healthy again")
        }
        Some(false) => tracing::warn!(
            cluster = %cfg.name,
            endpoint = %ep.address,
            error = passed.err().unwrap_or_default(),
            "health check: endpoint unhealthy"
        ),
        None => {
            if let Err(e) = passed {
                tracing::debug!(cluster = %cfg.name, endpoint = %ep.address, error = %e, "health check failed");
            }
        }
    }
}

/// One check of endpoint `i`: `Err` says why it failed.
async fn probe(shared: &Shared, cfg: &Cluster, i: usize, hc: &HealthCheck) -> Result<(), String> {
    let Some(ep) = cfg.endpoints.get(i) else {
        return Err("endpoint gone".into());
    };
    let ctx = DialCtx {
        timeout: hc.timeout,
        identity: cfg.tls.as_ref(),
        alpn: if hc.http.is_some() {
            Alpn::Http1
        } else {
            Alpn::None
        },
        certs: shared.tls.as_deref(),
        metrics: &shared.metrics,
    };
    let check = async {
        let d = dial(&ep.address, &ctx).await.map_err(|e| e.to_string())?;
        let Some(path) = &hc.http else {
            return Ok(());
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(d.io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, ep.address.to_string())
            .header(http::header::USER_AGENT, "spoke-health-check")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let status = send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
            .as_u16();
        if hc
            .expected
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
        {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(hc.timeout, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", hc.timeout)))
}
