//! One HTTP request through the proxy: header hygiene, routing, the attempt loop with
//! retries, per-try and overall timeouts, metrics and the access event. Responses the proxy
//! makes itself carry `x-spoke-error: <kind>` and a one-line body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::body::{self, Observed, ReqBody};
use super::pool::{Body, Dial, Key, SendError};
use super::retry::{self, Failure};
use super::route;
use crate::config::{EndpointAddr, Identity, RetryPolicy};
use crate::proxy::listener::ListenerCtx;
use crate::proxy::ProxyError;
use crate::snapshot::ClusterState;

pub const PEER_ID: HeaderName = HeaderName::from_static("x-spoke-peer-id");
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-spoke-orig-proto");
pub const ERROR: HeaderName = HeaderName::from_static("x-spoke-error");
/// Request bodies up to this size are kept so a retry can replay them.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// What every request on one downstream connection shares.
pub struct ConnCtx {
    pub listener: Arc<ListenerCtx>,
    pub peer: SocketAddr,
    /// The caller's verified identity (inbound mTLS).
    pub peer_id: Option<Identity>,
    pub target: Target,
    /// The downstream connection speaks HTTP/2.
    pub h2: bool,
    /// The peer failed authorization: every request gets 403.
    pub denied: bool,
}

pub enum Target {
    /// Outbound: routes, then the listener's cluster as default.
    Outbound { default: Option<String> },
    /// Inbound: the local app, as a one-endpoint cluster made once per connection.
    Inbound {
        app: SocketAddr,
        local: Arc<ClusterState>,
    },
}

/// An error response the proxy makes itself.
pub fn error_response(status: StatusCode, kind: &'static str, detail: &str) -> Response<Body> {
    let mut r = Response::new(body::full(format!("{detail}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(ERROR, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The status a proxy error kind is answered with.
pub fn status_of(kind: &str) -> StatusCode {
    match kind {
        "no_route" => StatusCode::NOT_FOUND,
        "unauthorized" => StatusCode::FORBIDDEN,
        "timeout" | "connect_timeout" => StatusCode::GATEWAY_TIMEOUT,
        "no_healthy_endpoints" | "no_cluster" | "circuit_open" => StatusCode::SERVICE_UNAVAILABLE,
        "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "bad_request" => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): `Connection` and what it lists, and the
/// fixed set. `te: trailers` survives (gRPC needs it). With `upgrade`, the upgrade pair is
/// kept for the next hop.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        if !(upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// Per-request facts for logs and metrics.
struct Info {
    method: http::Method,
    authority: String,
    path: String,
    cluster: String,
    endpoint: Option<SocketAddr>,
    retries: u32,
    upstream_id: Option<Identity>,
}

pub async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let start = Instant::now();
    let (mut parts, incoming) = req.into_parts();
    let mut info = Info {
        method: parts.method.clone(),
        authority: route::authority(&parts).unwrap_or("").to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string(),
        cluster: String::new(),
        endpoint: None,
        retries: 0,
        upstream_id: None,
    };
    let (resp, kind) = forward(&conn, &mut parts, incoming, &mut info).await;
    let direction = conn.listener.cfg.direction_str();
    let metrics = &conn.listener.shared.metrics;
    let code = resp.status();
    let elapsed = start.elapsed();
    metrics
        .requests
        .with_label_values(&[direction, &info.cluster, code.as_str()])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[direction, &info.cluster])
        .observe(elapsed.as_secs_f64());
    if let Some(k) = kind {
        metrics
            .upstream_rq_errors
            .with_label_values(&[&info.cluster, k])
            .inc();
    }
    tracing::info!(
        target: "access",
        listener = %conn.listener.cfg.name,
        direction,
        peer = %conn.peer,
        peer_id = conn.peer_id.as_ref().map(|i| i.as_str()).unwrap_or(""),
        method = %info.method,
        authority = %info.authority,
        path = %info.path,
        status = code.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        cluster = %info.cluster,
        endpoint = info.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        upstream_id = info.upstream_id.as_ref().map(|i| i.as_str()).unwrap_or(""),
        retries = info.retries,
        error = kind.unwrap_or(""),
        "http"
    );
    Ok(resp)
}

/// Returns the response and, for one the proxy made, its error kind.
async fn forward(
    conn: &ConnCtx,
    parts: &mut http::request::Parts,
    incoming: Incoming,
    info: &mut Info,
) -> (Response<Body>, Option<&'static str>) {
    let shared = &conn.listener.shared;
    if conn.denied {
        if let Target::Inbound { app, .. } = &conn.target {
            info.cluster = format!("inbound:{}", app.port());
        }
        return (
            error_response(
                StatusCode::FORBIDDEN,
                "unauthorized",
                "this identity may not call this service",
            ),
            Some("unauthorized"),
        );
    }
    let snapshot = shared.snapshot.load_full();
    let upgrade = !conn.h2 && parts.headers.contains_key(header::UPGRADE);
    strip_hop_by_hop(&mut parts.headers, upgrade);

    // Identity and protocol hints: never trust what the client sent.
    parts.headers.remove(PEER_ID);
    let orig_h1 = parts
        .headers
        .remove(ORIG_PROTO)
        .is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"));
    let fail = |kind: &'static str, detail: &str| {
        (error_response(status_of(kind), kind, detail), Some(kind))
    };

    let (cluster, route): (Arc<ClusterState>, Option<&crate::config::Route>);
    let mut inbound_app = None;
    match &conn.target {
        Target::Inbound { app, local } => {
            if let Some(id) = &conn.peer_id {
                if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                    parts.headers.insert(PEER_ID, v);
                }
            }
            info.cluster = format!("inbound:{}", app.port());
            inbound_app = Some(*app);
            cluster = local.clone();
            route = None;
        }
        Target::Outbound { default } => {
            let Some(d) = route::route(&snapshot.config.routes, default.as_deref(), parts) else {
                info.cluster = "none".into();
                return fail("no_route", "no route matches this request");
            };
            info.cluster = d.cluster.to_string();
            let Some(c) = snapshot.cluster(d.cluster) else {
                return fail(
                    "no_cluster",
                    "the route's cluster is not in the current config",
                );
            };
            cluster = c.clone();
            route = d.route;
        }
    }

    // The upstream speaks HTTP/2 between sidecars and to apps called with HTTP/2; HTTP/1
    // otherwise, and always for upgrades.
    let meshed = cluster.config.tls.clone();
    let up_h2 = !upgrade
        && match (&inbound_app, &meshed) {
            (Some(_), _) => conn.h2 && !orig_h1,
            (None, Some(_)) => true,
            (None, None) => conn.h2,
        };
    if meshed.is_some() && up_h2 && !conn.h2 {
        parts
            .headers
            .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
    }
    // HTTP/2 carries the authority in the URI; HTTP/1 in Host.
    let authority = info.authority.clone();
    if !up_h2 && !authority.is_empty() && !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if up_h2 {
        parts.headers.remove(header::HOST);
    }

    let policy: Option<&RetryPolicy> = route.and_then(|r| r.retry.as_ref());
    // gRPC calls are POSTs; a policy that names gRPC codes means to retry them.
    let grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let replay = !upgrade
        && policy.is_some_and(|p| {
            p.attempts > 0
                && (p.non_idempotent
                    || retry::is_idempotent(&parts.method)
                    || (grpc
                        && p.on
                            .iter()
                            .any(|o| matches!(o, crate::config::RetryOn::Grpc(_)))))
        });
    let downstream_upgrade = if upgrade {
        // Take the upgrade handle before the body is moved on.
        let mut probe = Request::from_parts(clone_parts(parts), ());
        probe
            .extensions_mut()
            .extend(std::mem::take(&mut parts.extensions));
        Some(hyper::upgrade::on(probe))
    } else {
        None
    };
    let max_body = conn.listener.cfg.max_request_bytes;
    if let Some(max) = max_body {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return fail(
                "request_too_large",
                "request body is larger than this listener accepts",
            );
        }
    }
    let mut reqbody = match body::prepare(incoming, REPLAY_LIMIT, replay, max_body).await {
        Ok(b) => b,
        Err(e) if body::is_too_large(&*e) => {
            return fail(
                "request_too_large",
                "request body is larger than this listener accepts",
            );
        }
        Err(e) => {
            tracing::debug!(error = %e, "downstream request body failed");
            return fail("bad_request", "request body could not be read");
        }
    };

    // Without a route timeout, waiting for the response head is bounded by the stream
    // idle timeout, so a hung upstream always ends in a 504.
    let idle = route
        .map(|r| r.idle_timeout)
        .unwrap_or(crate::config::DEFAULT_STREAM_IDLE_TIMEOUT);
    let timeout = Some(route.and_then(|r| r.timeout).unwrap_or(idle));
    let per_try = route.and_then(|r| r.per_try_timeout);
    cluster.budget.request();
    let attempts = async {
        attempt_loop(
            conn,
            parts,
            &mut reqbody,
            &cluster,
            policy,
            per_try,
            up_h2,
            upgrade,
            meshed.as_ref(),
            info,
        )
        .await
    };
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, attempts).await {
            Ok(r) => r,
            Err(_) => Err((
                "timeout",
                "the upstream did not answer within the route timeout".to_string(),
            )),
        },
        None => attempts.await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err((kind, detail)) => return fail(kind, &detail),
    };
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(down, up) {
                    Ok((d, u)) => {
                        let mut d = hyper_util::rt::TokioIo::new(d);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        let (p, _) = resp.into_parts();
        return (
            Response::from_parts(p, body::full(bytes::Bytes::new())),
            None,
        );
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    rparts.headers.remove(ORIG_PROTO);
    let reset = shared
        .metrics
        .upstream_rq_errors
        .with_label_values(&[&info.cluster, "upstream_reset"]);
    (
        Response::from_parts(rparts, Observed::boxed(rbody, reset, idle)),
        None,
    )
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut b = Request::builder()
        .method(p.method.clone())
        .uri(p.uri.clone())
        .version(p.version);
    if let Some(h) = b.headers_mut() {
        *h = p.headers.clone();
    }
    b.body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|_| Request::new(()).into_parts().0)
}

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

type AttemptErr = (&'static str, String);

#[allow(clippy::too_many_arguments)]
async fn attempt_loop(
    conn: &ConnCtx,
    parts: &http::request::Parts,
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
    let mut tried: Vec<usize> = Vec::new();
    let mut connect_failures = 0u32;
    let mut retries = 0u32;
    // A request hyper handed back unsent is reused as is (its body untouched).
    let mut carried: Option<Request<Body>> = None;
    loop {
        let Some(i) = cluster.endpoints.pick(&tried).or_else(|| {
            tried.clear();
            cluster.endpoints.pick(&[])
        }) else {
            return Err((
                "no_healthy_endpoints",
                format!("cluster {} has no endpoints", cluster.config.name),
            ));
        };
        tried.push(i);
        let ep = cluster.endpoints.get(i).map(|e| e.address.clone());
        let addr = match ep {
            Some(EndpointAddr::Ip(a)) => a,
            Some(EndpointAddr::Host(h, p)) => match tokio::net::lookup_host((h.as_str(), p))
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
                    *h = parts.headers.clone();
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
    tracing::warn!(cluster, kind = e.kind(), error = %e, "upstream connect failed");
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
