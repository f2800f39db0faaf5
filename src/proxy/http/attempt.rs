//! The attempt loop of one request: pick an endpoint, send over the pool within the per-try
//! timeout, and decide from the outcome and the route's policy whether to retry (another
//! endpoint, after a jittered backoff, within the retry budget).

use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::body::{self, ReqBody};
use super::forward::{ConnCtx, Info};
use super::pool::{Body, Dial, Key, SendError};
use super::retry::{self, Failure};
use crate::config::{EndpointAddr, Identity, RetryPolicy};
use crate::proxy::ProxyError;
use crate::snapshot::ClusterState;

fn upstream_uri(parts: &http::request::Parts, h2: bool, authority: &str) -> Uri {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if h2 && !authority.is_empty() {
        if let Ok(u) = format!("http://{authority}{pq}").parse() {
            return u;
        }
    }
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

pub type AttemptErr = (&'static str, String);

#[allow(clippy::too_many_arguments)]
pub async fn attempt_loop(
    conn: &ConnCtx,
    parts: &mut http::request::Parts,
    reqbody: &mut ReqBody,
    cluster: &ClusterState,
    policy: Option<&RetryPolicy>,
    per_try: Option<Duration>,
    h2: bool,
    upgrade: bool,
    meshed: Option<&Identity>,
    info: &mut Info,
) -> Result<Response<Incoming>, AttemptErr> {
    let shared = &conn.listener.shared;
    let pool = &shared.pool;
    let dial = Dial {
        timeout: cluster.config.connect_timeout,
        tls: shared.tls.as_deref(),
        metrics: &shared.metrics,
    };
    let max_connect = cluster.config.connect_attempts.max(1);
    let max_retries = policy.map(|p| p.attempts).unwrap_or(0);
    // Endpoints tried so far, on the stack (tries are bounded by the config's limits).
    let mut tried = [usize::MAX; 24];
    let mut n_tried = 0;
    let mut connect_failures = 0u32;
    let mut retries = 0u32;
    // A request hyper handed back unsent is reused as is (its body untouched).
    let mut carried: Option<Request<Body>> = None;
    loop {
        let Some(i) = cluster.endpoints.pick(&tried[..n_tried]).or_else(|| {
            n_tried = 0;
            cluster.endpoints.pick(&[])
        }) else {
            return Err((
                "no_healthy_endpoints",
                format!("cluster {} has no endpoints", cluster.config.name),
            ));
        };
        if n_tried == tried.len() {
            n_tried = 0;
        }
        tried[n_tried] = i;
        n_tried += 1;
        let addr = match cluster.endpoints.get(i).map(|e| &e.address) {
            Some(EndpointAddr::Ip(a)) => *a,
            Some(EndpointAddr::Host(h, p)) => match tokio::net::lookup_host((h.as_str(), *p))
                .await
                .ok()
                .and_then(|mut a| a.next())
            {
                Some(a) => a,
                None => return Err(("resolve_failed", format!("cannot resolve {h}:{p}"))),
            },
            None => return Err(("no_healthy_endpoints", "no endpoint".into())),
        };
        info.endpoint = Some(addr);
        let req = match carried.take() {
            Some(r) => r,
            None => {
                let Some(body) = reqbody.take() else {
                    return Err(("upstream_reset", "request body already sent".into()));
                };
                let mut b = Request::builder()
                    .method(parts.method.clone())
                    .uri(upstream_uri(parts, h2, &info.authority))
                    .version(if h2 {
                        Version::HTTP_2
                    } else {
                        Version::HTTP_11
                    });
                if let Some(h) = b.headers_mut() {
                    // A body that cannot be replayed means this is the only request built:
                    // its headers move instead of being copied.
                    *h = if reqbody.replayable() {
                        parts.headers.clone()
                    } else {
                        std::mem::take(&mut parts.headers)
                    };
                }
                match b.body(body) {
                    Ok(r) => r,
                    Err(e) => return Err(("bad_request", e.to_string())),
                }
            }
        };
        let key = Key {
            addr,
            tls: meshed.cloned(),
            h2,
        };
        let send = async {
            if upgrade {
                pool.send_upgrade(&key, req, &dial).await
            } else {
                pool.send(&key, req, &dial).await
            }
        };
        let outcome = match per_try {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| ()),
            None => Ok(send.await),
        };
        let failure = match outcome {
            Ok(Ok(resp)) => {
                if meshed.is_some() {
                    info.upstream_id = meshed.cloned();
                }
                let status = resp.status().as_u16();
                let grpc = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u8>().ok())
                    .filter(|c| *c != 0);
                let f = match grpc {
                    Some(c) => Some(Failure::Grpc(c)),
                    None if status >= 400 => Some(Failure::Status(status)),
                    None => None,
                };
                match (f, policy) {
                    (Some(f), Some(p))
                        if retry::covers(p, f) && reqbody.replayable() && retries < max_retries =>
                    {
                        if !retry_allowed(cluster, p, f, info, &shared.metrics) {
                            return Ok(resp);
                        }
                        drop(resp);
                        retries += 1;
                        info.retries = retries;
                        tokio::time::sleep(retry::backoff(p.backoff, retries)).await;
                        continue;
                    }
                    _ => return Ok(resp),
                }
            }
            Ok(Err(SendError::Connect(e, req))) => {
                count_connect_error(&shared.metrics, &cluster.config.name, &e);
                connect_failures += 1;
                carried = Some(*req);
                if connect_failures < max_connect {
                    continue;
                }
                // Connect tries are used up; a retry policy may still allow more.
                match policy {
                    Some(p) if retry::covers(p, Failure::Connect) && retries < max_retries => {
                        if !retry_allowed(cluster, p, Failure::Connect, info, &shared.metrics) {
                            return Err((e.kind(), e.to_string()));
                        }
                        retries += 1;
                        info.retries = retries;
                        tokio::time::sleep(retry::backoff(p.backoff, retries)).await;
                        continue;
                    }
                    _ => return Err((e.kind(), e.to_string())),
                }
            }
            Ok(Err(SendError::Http {
                error,
                unsent: Some(req),
            })) => {
                // Never written (a pooled connection had closed): safe to send elsewhere.
                tracing::debug!(error = %error, "request not sent; trying again");
                connect_failures += 1;
                carried = Some(*req);
                if connect_failures < max_connect + 1 {
                    continue;
                }
                return Err(("upstream_reset", error.to_string()));
            }
            Ok(Err(SendError::Http {
                error,
                unsent: None,
            })) => {
                if error_chain_has(&error, body::is_too_large) {
                    return Err((
                        "request_too_large",
                        "request body is larger than this listener accepts".into(),
                    ));
                }
                let f = if is_refused_stream(&error) {
                    Failure::RefusedStream
                } else {
                    Failure::Reset
                };
                (f, ("upstream_reset", error.to_string()))
            }
            Err(()) => (
                Failure::Timeout,
                (
                    "timeout",
                    "the upstream did not answer within the per-try timeout".to_string(),
                ),
            ),
        };
        let (f, err) = failure;
        match policy {
            Some(p)
                if retry::covers(p, f)
                    && retries < max_retries
                    && reqbody.replayable()
                    && (!f.maybe_processed()
                        || p.non_idempotent
                        || retry::is_idempotent(&parts.method)) =>
            {
                if !retry_allowed(cluster, p, f, info, &shared.metrics) {
                    return Err(err);
                }
                retries += 1;
                info.retries = retries;
                tokio::time::sleep(retry::backoff(p.backoff, retries)).await;
            }
            _ => return Err(err),
        }
    }
}

fn retry_allowed(
    cluster: &ClusterState,
    p: &RetryPolicy,
    f: Failure,
    info: &Info,
    metrics: &crate::metrics::Metrics,
) -> bool {
    if !cluster.budget.try_retry(p.budget_percent) {
        metrics
            .retries
            .with_label_values(&[&cluster.config.name, "budget_exhausted"])
            .inc();
        tracing::debug!(cluster = %cluster.config.name, "retry budget exhausted");
        return false;
    }
    metrics
        .retries
        .with_label_values(&[&cluster.config.name, f.reason()])
        .inc();
    tracing::debug!(cluster = %cluster.config.name, reason = f.reason(), endpoint = ?info.endpoint, "retrying request");
    true
}

fn count_connect_error(metrics: &crate::metrics::Metrics, cluster: &str, e: &ProxyError) {
    metrics
        .upstream_connect_errors
        .with_label_values(&[cluster, e.kind()])
        .inc();
    tracing::debug!(cluster, kind = e.kind(), error = %e, "upstream connect failed");
}

fn error_chain_has(e: &hyper::Error, pred: fn(&(dyn std::error::Error + 'static)) -> bool) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if pred(s) {
            return true;
        }
        src = s.source();
    }
    false
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        src = s.source();
    }
    false
}
