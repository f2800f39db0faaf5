//! The attempt loop of one request: pick an endpoint, take a connection slot (HTTP/1.1,
//! bounded by the circuit breaker, waiting at most `queue_timeout`), send over the pool
//! within the per-try timeout, feed the outcome to the balancer and outlier detection,
//! and decide whether to go on: a request the upstream never processed (refused stream,
//! GOAWAY, a keep-alive connection closed under it) is sent again on a fresh connection
//! whatever the policy says and outside the budget; other failures are retried by the
//! route's policy (another endpoint, jittered backoff, within the retry budget and the
//! breaker's `max_retries`).

use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::body::{self, Hold, ReqBody};
use super::forward::{ConnCtx, Info};
use super::pool::{Body, Dial, Key, SendError};
use super::retry::{self, Failure};
use crate::balance::{now_ms, Limit, Outcome, Slot};
use crate::config::{AppProtocol, Identity, RetryPolicy};
use crate::proxy::connect::{self, overflow, panicked};
use crate::proxy::{ErrorKind, ProxyError};
use crate::snapshot::ClusterState;

/// Sends of a request the upstream never processed, beyond which it fails anyway.
const MAX_UNPROCESSED: u32 = 5;

fn upstream_uri(parts: &http::request::Parts, h2: bool, authority: &str) -> Uri {
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 && !authority.is_empty() {
        // Assembled from parts: the path shares the downstream URI's bytes and only the
        // authority is checked, where formatting `http://{authority}{pq}` and parsing it
        // back cost 1.5k instructions a request.
        let uri = &parts.uri;
        if uri.scheme() == Some(&Scheme::HTTP)
            && uri.authority().is_some_and(|a| a.as_str() == authority)
        {
            return uri.clone();
        }
        if let Ok(a) = Authority::try_from(authority) {
            let mut p = http::uri::Parts::default();
            p.scheme = Some(Scheme::HTTP);
            p.authority = Some(a);
            p.path_and_query = Some(pq.clone());
            if let Ok(u) = Uri::from_parts(p) {
                return u;
            }
        }
    }
    Uri::from(pq)
}

pub type AttemptErr = (ErrorKind, String);

/// One request's way to its upstream.
pub struct Target<'a> {
    pub cluster: &'a ClusterState,
    pub policy: Option<&'a RetryPolicy>,
    pub per_try: Option<Duration>,
    /// Speak HTTP/2 upstream.
    pub h2: bool,
    pub upgrade: bool,
    pub meshed: Option<&'a Identity>,
    /// The `ring_hash` key.
    pub key: Option<u64>,
    /// The local app behind an inbound port: how it speaks HTTP.
    pub app: Option<AppProtocol>,
}

/// What one send came to.
enum Step {
    Done(Response<Incoming>, Hold),
    /// Send the same request again at once (never processed, or never sent).
    Again,
    /// Failed: retry under the route's policy if it covers the failure.
    Failed(Failure, AttemptErr),
    Fatal(AttemptErr),
}

pub async fn attempt_loop(
    conn: &ConnCtx,
    parts: &mut http::request::Parts,
    reqbody: &mut ReqBody,
    t: &Target<'_>,
    info: &mut Info,
) -> Result<(Response<Incoming>, Hold), AttemptErr> {
    let shared = &conn.listener.shared;
    let cluster = t.cluster;
    let cfg = &cluster.config;
    let metrics = &shared.metrics;
    metrics.first_request(&cfg.name, cluster.runtime());
    let dial = Dial {
        timeout: cfg.connect_timeout,
        tls: shared.tls.as_deref(),
        metrics,
    };
    let max_connect = cfg.connect_attempts.max(1);
    let max_retries = t.policy.map(|p| p.attempts).unwrap_or(0);
    // Endpoints tried so far, on the stack (tries are bounded by the config's limits).
    let mut tried = [usize::MAX; 24];
    let mut n_tried = 0;
    let (mut connect_failures, mut unprocessed, mut retries) = (0u32, 0u32, 0u32);
    // Held from the first retry on: `max_retries` bounds requests in a retry.
    let mut retry_slot: Option<Slot> = None;
    // A request hyper handed back unsent is reused as is (its body untouched).
    let mut carried: Option<Request<Body>> = None;
    // Becomes HTTP/1.1 when a local app refuses HTTP/2 under `app_protocol: auto`.
    let mut h2 = t.h2;
    loop {
        let picked = cluster.pick(t.key, &tried[..n_tried]).or_else(|| {
            n_tried = 0;
            cluster.pick(t.key, &[])
        });
        let Some(picked) = picked else {
            return Err((
                ErrorKind::NoHealthyEndpoints,
                format!("cluster {} has no endpoints", cfg.name),
            ));
        };
        if picked.panic {
            panicked(metrics, &cfg.name);
        }
        let i = picked.index;
        if n_tried == tried.len() {
            n_tried = 0;
        }
        tried[n_tried] = i;
        n_tried += 1;
        let (Some(ep), Some(state)) = (cluster.endpoint(i), cluster.endpoints().get(i)) else {
            return Err((ErrorKind::NoHealthyEndpoints, "no endpoint".into()));
        };
        let addr = match connect::resolve(&ep.address).await {
            Ok(a) => a,
            Err(e) => {
                cluster.record(i, Outcome::GatewayError, metrics);
                return Err((e.kind(), e.to_string()));
            }
        };
        info.endpoint = Some(addr);
        let req = match carried.take() {
            Some(r) => r,
            None => build(parts, reqbody, h2, &info.authority)?,
        };
        // An HTTP/1.1 exchange holds a connection for its whole response: bounded.
        let conn_slot = if h2 {
            None
        } else {
            match cluster
                .runtime()
                .take_connection(&cfg.circuit_breaker, cfg.queue_timeout)
                .await
            {
                Ok(s) => Some(s),
                Err(Limit::Pending) => {
                    overflow(metrics, &cfg.name, Limit::Pending);
                    return Err((
                        ErrorKind::CircuitOpen,
                        format!("cluster {} has too many requests waiting", cfg.name),
                    ));
                }
                Err(limit) => {
                    overflow(metrics, &cfg.name, limit);
                    return Err((
                        ErrorKind::QueueTimeout,
                        format!(
                            "no connection to cluster {} within {:?}",
                            cfg.name, cfg.queue_timeout
                        ),
                    ));
                }
            }
        };
        let key = Key {
            addr,
            tls: t.meshed.cloned(),
            h2,
            probe: h2 && t.app.is_some(),
        };
        let inflight = state.start();
        let started = Instant::now();
        let send = async {
            if t.upgrade {
                shared.pool.send_upgrade(&key, req, &dial).await
            } else {
                shared.pool.send(&key, req, &dial).await
            }
        };
        let sent = match t.per_try {
            Some(d) => tokio::time::timeout(d, send).await.ok(),
            None => Some(send.await),
        };
        let step = match sent {
            Some(Ok(resp)) => {
                state.observe_latency(started.elapsed(), now_ms());
                if t.meshed.is_some() {
                    info.upstream_id = t.meshed.cloned();
                }
                let status = resp.status().as_u16();
                cluster.record(i, outcome_of(status), metrics);
                let hold = Hold {
                    inflight: Some(inflight),
                    conn: conn_slot,
                    request: None,
                };
                match (failure_of(&resp), t.policy) {
                    (Some(f), Some(p))
                        if retry::covers(p, f)
                            && reqbody.replayable()
                            && retries < max_retries
                            && claim_retry(cluster, p, f, info, metrics, &mut retry_slot) =>
                    {
                        drop((resp, hold));
                        retries += 1;
                        info.retries = retries;
                        crate::trace::retried(info, f.reason());
                        tokio::time::sleep(retry::backoff(p.backoff, retries)).await;
                        continue;
                    }
                    _ => Step::Done(resp, hold),
                }
            }
            Some(Err(SendError::Connect(e, req)))
                if matches!(e, ProxyError::Http2Refused { .. }) =>
            {
                // The request never left: the app refused the connection's preface.
                if t.app != Some(AppProtocol::Auto) {
                    tracing::warn!(cluster = %cfg.name, endpoint = %addr, error = %e, "the app refused HTTP/2 (app_protocol: http2)");
                    return Err((e.kind(), e.to_string()));
                }
                fall_back_to_http1(shared, cluster, addr, &e);
                h2 = false;
                // Requests built from here on (retries) carry the authority as HTTP/1 does.
                if let Ok(v) = http::HeaderValue::from_str(&info.authority) {
                    if !info.authority.is_empty() {
                        parts.headers.entry(http::header::HOST).or_insert(v);
                    }
                }
                carried = Some(into_http1(*req, &info.authority));
                Step::Again
            }
            Some(Err(SendError::Connect(e, req))) => {
                cluster.record(i, Outcome::GatewayError, metrics);
                connect_failures += 1;
                connect::connect_failed(
                    metrics,
                    &cfg.name,
                    &e,
                    connect_failures as usize,
                    max_connect as usize,
                );
                carried = Some(*req);
                if connect_failures < max_connect {
                    Step::Again
                } else {
                    Step::Failed(Failure::Connect, (e.kind(), e.to_string()))
                }
            }
            Some(Err(SendError::Http {
                error,
                unsent: Some(req),
                conn,
                ..
            })) => {
                // Never written (a pooled connection had closed): safe to send again.
                tracing::debug!(error = %error, "request not sent; trying again");
                shared.pool.evict(&key, conn);
                unprocessed += 1;
                carried = Some(*req);
                if unprocessed <= MAX_UNPROCESSED {
                    Step::Again
                } else {
                    Step::Fatal((ErrorKind::UpstreamReset, error.to_string()))
                }
            }
            Some(Err(SendError::Http {
                error,
                unsent: None,
                reused,
                conn,
            })) => {
                if error_chain_has(&error, body::is_too_large) {
                    return Err((
                        ErrorKind::RequestTooLarge,
                        "request body is larger than this listener accepts".into(),
                    ));
                }
                // Canceled, or dropped from hyper's queue when its HTTP/2 connection ended
                // after a GOAWAY: the request never got a stream.
                let dropped = error.is_canceled() || is_dispatch_gone(&error);
                let never_processed = is_unprocessed(&error)
                    || (dropped && (h2 || retry::is_idempotent(&parts.method)))
                    || (reused
                        && error.is_incomplete_message()
                        && retry::is_idempotent(&parts.method));
                if never_processed {
                    // GOAWAY past this stream, REFUSED_STREAM, or a keep-alive connection
                    // the server closed as the request went out: not the endpoint's fault
                    // and not a retry of work done.
                    shared.pool.evict(&key, conn);
                    unprocessed += 1;
                    if reqbody.replayable() && unprocessed <= MAX_UNPROCESSED {
                        tracing::debug!(cluster = %cfg.name, endpoint = %addr, error = %error, "request not processed upstream; sending it again");
                        continue;
                    }
                } else {
                    cluster.record(i, Outcome::GatewayError, metrics);
                }
                let f = if is_refused_stream(&error) {
                    Failure::RefusedStream
                } else {
                    Failure::Reset
                };
                Step::Failed(f, (ErrorKind::UpstreamReset, error.to_string()))
            }
            None => {
                cluster.record(i, Outcome::GatewayError, metrics);
                Step::Failed(
                    Failure::Timeout,
                    (
                        ErrorKind::Timeout,
                        "the upstream did not answer within the per-try timeout".to_string(),
                    ),
                )
            }
        };
        let (f, err) = match step {
            Step::Done(resp, hold) => return Ok((resp, hold)),
            Step::Again => continue,
            Step::Fatal(err) => return Err(err),
            Step::Failed(f, err) => (f, err),
        };
        let Some(p) = t.policy else {
            return Err(err);
        };
        let may = retry::covers(p, f)
            && retries < max_retries
            && (f == Failure::Connect || reqbody.replayable())
            && (!f.maybe_processed() || p.non_idempotent || retry::is_idempotent(&parts.method));
        if !may || !claim_retry(cluster, p, f, info, metrics, &mut retry_slot) {
            return Err(err);
        }
        retries += 1;
        info.retries = retries;
        crate::trace::retried(info, f.reason());
        tokio::time::sleep(retry::backoff(p.backoff, retries)).await;
    }
}

/// Builds the next attempt's request from the downstream request.
fn build(
    parts: &mut http::request::Parts,
    reqbody: &mut ReqBody,
    h2: bool,
    authority: &str,
) -> Result<Request<Body>, AttemptErr> {
    let Some(body) = reqbody.take() else {
        return Err((ErrorKind::UpstreamReset, "request body already sent".into()));
    };
    let mut b = Request::builder()
        .method(parts.method.clone())
        .uri(upstream_uri(parts, h2, authority))
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        });
    if let Some(h) = b.headers_mut() {
        // A body that cannot be replayed means this is the only request built: its
        // headers move instead of being copied.
        *h = if reqbody.replayable() {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
    }
    b.body(body)
        .map_err(|e| (ErrorKind::BadRequest, e.to_string()))
}

/// Remembers that the local app speaks only HTTP/1.1 (counted and logged once).
fn fall_back_to_http1(
    shared: &crate::proxy::Shared,
    cluster: &ClusterState,
    app: std::net::SocketAddr,
    e: &ProxyError,
) {
    if shared.app_http1.insert(app.port()) {
        shared
            .metrics
            .app_http1_fallbacks
            .with_label_values(&[&app.port().to_string()])
            .inc();
        tracing::warn!(cluster = %cluster.config.name, app = %app, error = %e, "the app does not speak HTTP/2: calling it with HTTP/1.1 from now on (app_protocol: auto)");
    }
}

/// The same request as HTTP/1.1: origin-form URI, the authority as `Host`.
fn into_http1(req: Request<Body>, authority: &str) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
    if !authority.is_empty() && !parts.headers.contains_key(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(authority) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    Request::from_parts(parts, body)
}

/// How a response counts for outlier detection.
fn outcome_of(status: u16) -> Outcome {
    match status {
        502..=504 => Outcome::GatewayError,
        500..=599 => Outcome::Error5xx,
        _ => Outcome::Success,
    }
}

/// A response the retry policy may want to retry.
fn failure_of(resp: &Response<Incoming>) -> Option<Failure> {
    // A constant name: looked up by a `&str`, the name would be parsed on every response.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let grpc = resp
        .headers()
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|c| *c != 0);
    let status = resp.status().as_u16();
    match grpc {
        Some(c) => Some(Failure::Grpc(c)),
        None if status >= 400 => Some(Failure::Status(status)),
        None => None,
    }
}

/// Takes what a retry needs: a `max_retries` slot (the first time) and the budget.
fn claim_retry(
    cluster: &ClusterState,
    p: &RetryPolicy,
    f: Failure,
    info: &Info,
    metrics: &crate::metrics::Metrics,
    slot: &mut Option<Slot>,
) -> bool {
    if slot.is_none() {
        *slot = cluster
            .runtime()
            .take(Limit::Retries, &cluster.config.circuit_breaker);
        if slot.is_none() {
            overflow(metrics, &cluster.config.name, Limit::Retries);
            return false;
        }
    }
    retry_allowed(cluster, p, f, info, metrics)
}

fn retry_allowed(
    cluster: &ClusterState,
    p: &RetryPolicy,
    f: Failure,
    info: &Info,
    metrics: &crate::metrics::Metrics,
) -> bool {
    if !cluster.runtime().budget.try_retry(p.budget_percent) {
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

/// The HTTP/2 error under a hyper error, if there is one.
pub(super) fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return Some(h2e);
        }
        src = s.source();
    }
    None
}

/// hyper dropped the request from its dispatch queue: the connection task ended first.
/// hyper names this case only in its message.
fn is_dispatch_gone(e: &hyper::Error) -> bool {
    e.is_user() && e.to_string() == "dispatch task is gone"
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// The upstream said it never processed the stream: REFUSED_STREAM, or a GOAWAY whose
/// last stream id is below it.
fn is_unprocessed(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|e| {
        e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> http::request::Parts {
        Request::builder()
            .uri(uri)
            .body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    #[test]
    fn upstream_uris_keep_the_path_and_take_the_authority_for_http2() {
        let p = parts("/a/b?x=1");
        assert_eq!(upstream_uri(&p, false, "svc:80"), "/a/b?x=1");
        assert_eq!(upstream_uri(&p, true, "svc:80"), "http://svc:80/a/b?x=1");
        // No authority: origin form even for HTTP/2 (the pool's connection has one).
        assert_eq!(upstream_uri(&p, true, ""), "/a/b?x=1");
        // An absolute-form request: its own authority is used as is, another replaces it.
        let p = parts("http://svc/a");
        assert_eq!(upstream_uri(&p, true, "svc"), "http://svc/a");
        assert_eq!(upstream_uri(&p, true, "other:8080"), "http://other:8080/a");
        assert_eq!(upstream_uri(&p, false, "svc"), "/a");
        let p = parts("https://svc/a");
        assert_eq!(upstream_uri(&p, true, "svc"), "http://svc/a");
        // An authority that is no authority: origin form, as before.
        let p = parts("/a");
        assert_eq!(upstream_uri(&p, true, "bad host"), "/a");
        assert_eq!(upstream_uri(&parts("*"), false, "svc"), "*");
    }
}
