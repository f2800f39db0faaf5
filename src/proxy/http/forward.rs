//! One HTTP request through the proxy: header hygiene, routing, the attempt loop with
//! retries, per-try and overall timeouts, metrics and the access event. Responses the proxy
//! makes itself carry `x-spoke-error: <kind>` and a one-line body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::attempt::{attempt_loop, Target as Attempt};
use super::body::{self, Observed};
pub use super::headers::{
    error_response, negotiate_upgrade, strip_hop_by_hop, ERROR, ORIG_PROTO, PEER_ID,
};
use super::pool::Body;
use super::retry;
use super::route;
use crate::balance::Limit;
use crate::config::{AppProtocol, Identity, RetryPolicy};
use crate::proxy::authorize::{self, Caller, Held, Refused};
use crate::proxy::connect::overflow;
use crate::proxy::listener::ListenerCtx;
use crate::proxy::ErrorKind;
use crate::snapshot::ClusterState;

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
    /// The downstream connection is mTLS (inbound): the peer proved `peer_id`.
    pub tls: bool,
    /// `peer` as span attributes, encoded at the connection's first sampled request
    /// (`trace::finish`), then copied into each of its spans.
    pub trace_peer: std::sync::OnceLock<Box<[u8]>>,
    /// The metric children of the connection's last request.
    pub request_counters: RequestCounters,
}

/// The `requests` and `request_duration` children a connection's last request was counted
/// in: the next request to the same cluster with the same status (nearly every one) skips
/// the vecs' label lookups (hashing four labels, a lock and a map, twice a request).
/// Never waited for: if another stream of the connection holds it, the lookups are made.
#[derive(Default)]
pub struct RequestCounters(std::sync::Mutex<Option<Children>>);

struct Children {
    cluster: String,
    code: u16,
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

impl RequestCounters {
    fn count(
        &self,
        metrics: &crate::metrics::Metrics,
        [direction, cluster, listener]: [&str; 3],
        code: StatusCode,
        seconds: f64,
    ) {
        let requests = || {
            metrics
                .requests
                .with_label_values(&[direction, cluster, code.as_str(), listener])
        };
        let duration = || {
            metrics
                .request_duration
                .with_label_values(&[direction, cluster, listener])
        };
        let Ok(mut held) = self.0.try_lock() else {
            requests().inc();
            duration().observe(seconds);
            return;
        };
        let c = match &mut *held {
            Some(c) if c.cluster == cluster => c,
            slot => slot.insert(Children {
                cluster: cluster.to_owned(),
                code: code.as_u16(),
                requests: requests(),
                duration: duration(),
            }),
        };
        if c.code != code.as_u16() {
            c.code = code.as_u16();
            c.requests = requests();
        }
        c.requests.inc();
        c.duration.observe(seconds);
    }
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

/// Per-request facts for logs and metrics.
pub struct Info {
    pub method: http::Method,
    pub authority: String,
    /// Shares the request URI's bytes: no copy per request.
    pub path: Option<http::uri::PathAndQuery>,
    /// The cluster the request went to; `None` (label `none`) before routing decided.
    pub cluster: Option<Arc<ClusterState>>,
    pub endpoint: Option<SocketAddr>,
    pub retries: u32,
    pub upstream_id: Option<Identity>,
    /// The request's span, when it is sampled.
    pub trace: Option<crate::trace::Span>,
    /// Why the upstream part failed (the last try's error), for the one failure event.
    pub error: Option<String>,
}

impl Info {
    /// The `cluster` metric label.
    pub fn cluster_label(&self) -> &str {
        self.cluster
            .as_ref()
            .map(|c| c.config.name.as_str())
            .unwrap_or("none")
    }
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
        path: parts.uri.path_and_query().cloned(),
        cluster: None,
        endpoint: None,
        retries: 0,
        upstream_id: None,
        trace: None,
        error: None,
    };
    info.trace = crate::trace::start(&conn, &mut parts.headers);
    let (resp, kind) = forward(&conn, &mut parts, incoming, &mut info).await;
    let cluster = info.cluster_label();
    let direction = conn.listener.cfg.direction_str();
    let metrics = &conn.listener.shared.metrics;
    let code = resp.status();
    let elapsed = start.elapsed();
    let listener = conn.listener.cfg.name.as_str();
    conn.request_counters.count(
        metrics,
        [direction, cluster, listener],
        code,
        elapsed.as_secs_f64(),
    );
    if let Some(k) = kind {
        metrics
            .upstream_rq_errors
            .with_label_values(&[cluster, k.label()])
            .inc();
    }
    // One event per failed request, whatever the log level of the access log: the tries
    // before it are debug events.
    if let Some(error) = &info.error {
        tracing::warn!(
            listener = %conn.listener.cfg.name,
            cluster,
            kind = kind.map(ErrorKind::label).unwrap_or("upstream"),
            status = code.as_u16(),
            tries = info.retries + 1,
            endpoint = info.endpoint.map(tracing::field::display),
            error = %error,
            "request failed"
        );
    }
    if conn.listener.cfg.access_log && crate::telemetry::access_direct() {
        // Written without an event (see `telemetry::access`): absent values are left out
        // rather than logged empty; order and quoting are the event's below.
        crate::telemetry::access_line("http", |f| {
            f.bare("listener", &conn.listener.cfg.name);
            f.str("direction", direction);
            f.addr("peer", conn.peer);
            f.opt_str("peer_id", conn.peer_id.as_ref().map(|i| i.as_str()));
            f.bare("method", info.method.as_str());
            f.opt_str(
                "authority",
                (!info.authority.is_empty()).then_some(info.authority.as_str()),
            );
            f.str(
                "path",
                info.path.as_ref().map(|p| p.as_str()).unwrap_or("/"),
            );
            f.int("status", code.as_u16());
            f.int("duration_us", elapsed.as_micros() as u64);
            f.str("cluster", cluster);
            if let Some(e) = info.endpoint {
                f.addr("endpoint", e);
            }
            f.opt_str("upstream_id", info.upstream_id.as_ref().map(|i| i.as_str()));
            f.int("retries", info.retries);
            f.opt_str("error", kind.map(ErrorKind::label));
            if let Some(s) = &info.trace {
                f.display("trace_id", &s.trace_id());
                f.display("span_id", &s.span_id());
            }
        });
    } else if conn.listener.cfg.access_log {
        // Spoke's logger is not installed: the line is an event for the subscriber in use.
        tracing::info!(
            target: "access",
            listener = %conn.listener.cfg.name,
            direction,
            peer = %conn.peer,
            peer_id = conn.peer_id.as_ref().map(|i| i.as_str()),
            method = %info.method,
            authority = (!info.authority.is_empty()).then_some(info.authority.as_str()),
            path = info.path.as_ref().map(|p| p.as_str()).unwrap_or("/"),
            status = code.as_u16(),
            duration_us = elapsed.as_micros() as u64,
            cluster,
            endpoint = info.endpoint.map(tracing::field::display),
            upstream_id = info.upstream_id.as_ref().map(|i| i.as_str()),
            retries = info.retries,
            error = kind.map(ErrorKind::label),
            trace_id = info.trace.as_ref().map(|s| tracing::field::display(s.trace_id())),
            span_id = info.trace.as_ref().map(|s| tracing::field::display(s.span_id())),
            "http"
        );
    }
    crate::trace::finish(&conn, &mut info, code.as_u16(), kind.map(ErrorKind::label));
    Ok(resp)
}

/// Returns the response and, for one the proxy made, its error kind.
async fn forward(
    conn: &ConnCtx,
    parts: &mut http::request::Parts,
    incoming: Incoming,
    info: &mut Info,
) -> (Response<Body>, Option<ErrorKind>) {
    let shared = &conn.listener.shared;
    let fail = |kind: ErrorKind, detail: &str| (error_response(kind, detail), Some(kind));
    // A tunnel opened for this request is re-checked against later policies: subscribe
    // before the decision so no policy stored after it goes unseen.
    let inbound_upgrade = matches!(conn.target, Target::Inbound { .. })
        && !conn.h2
        && parts.headers.contains_key(header::UPGRADE);
    let changes = inbound_upgrade.then(|| shared.changes());
    let snapshot = shared.snapshot.load_full();

    // Identity and protocol hints: never trust what the client sent.
    parts.headers.remove(PEER_ID);
    let orig_h1 = parts
        .headers
        .remove(ORIG_PROTO)
        .is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"));

    let (cluster, route): (Arc<ClusterState>, Option<&crate::config::Route>);
    let mut inbound_app = None;
    let mut app_protocol = AppProtocol::Auto;
    match &conn.target {
        Target::Inbound { app, local } => {
            info.cluster = Some(local.clone());
            let caller = Caller {
                addr: conn.peer,
                tls: conn.tls,
                id: conn.peer_id.as_ref(),
                port: app.port(),
            };
            match authorize::request(shared, caller, parts) {
                Ok(p) => app_protocol = p,
                Err(Refused::Denied) => {
                    return fail(
                        ErrorKind::Unauthorized,
                        "this identity may not make this request",
                    )
                }
                Err(Refused::BadPath(e)) => return fail(ErrorKind::BadRequest, &e.to_string()),
            }
            inbound_app = Some(*app);
            cluster = local.clone();
            route = None;
        }
        Target::Outbound { default } => {
            let Some(d) = route::route(
                &snapshot.config.routes,
                &snapshot.route_index,
                default.as_deref(),
                parts,
            ) else {
                return fail(ErrorKind::NoRoute, "no route matches this request");
            };
            let Some(c) = snapshot.cluster(d.cluster) else {
                return fail(
                    ErrorKind::NoCluster,
                    "the route's cluster is not in the current config",
                );
            };
            cluster = c.clone();
            info.cluster = Some(c.clone());
            route = d.route;
            crate::trace::on_route(info, &snapshot.config.routes, route);
        }
    }
    // What a later policy is checked against while a tunnel is open.
    let held = changes.map(|c| (c, Held::new(parts)));
    let upgrades = route
        .and_then(|r| r.upgrades.as_deref())
        .unwrap_or(&conn.listener.cfg.upgrades);
    let upgrade = !conn.h2 && negotiate_upgrade(&mut parts.headers, upgrades);
    let revocation = held.filter(|_| upgrade);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if inbound_app.is_some() {
        if let Some(id) = &conn.peer_id {
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                parts.headers.insert(PEER_ID, v);
            }
        }
    }

    // The upstream speaks HTTP/2 between sidecars; to the app as its port says (by default
    // what the original client spoke, unless the app was found to refuse HTTP/2); to
    // plaintext clusters what the client spoke; always HTTP/1 for upgrades.
    let meshed = cluster.config.tls.clone();
    let up_h2 = !upgrade
        && match (&inbound_app, &meshed) {
            (Some(_), _) => match app_protocol {
                AppProtocol::Http1 => false,
                AppProtocol::Http2 => true,
                AppProtocol::Auto => {
                    conn.h2
                        && !orig_h1
                        && inbound_app.is_some_and(|a| !shared.app_http1.contains(a.port()))
                }
            },
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
    // An empty body is kept for free, so a request the upstream never processed (GOAWAY,
    // refused stream) can always be sent again.
    let replay = !upgrade
        && (hyper::body::Body::is_end_stream(&incoming)
            || policy.is_some_and(|p| {
                p.attempts > 0
                    && (p.non_idempotent
                        || retry::is_idempotent(&parts.method)
                        || (grpc
                            && p.on
                                .iter()
                                .any(|o| matches!(o, crate::config::RetryOn::Grpc(_)))))
            }));
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
                ErrorKind::RequestTooLarge,
                "request body is larger than this listener accepts",
            );
        }
    }
    let mut reqbody = match body::prepare(incoming, REPLAY_LIMIT, replay, max_body).await {
        Ok(b) => b,
        Err(e) if body::is_too_large(&*e) => {
            return fail(
                ErrorKind::RequestTooLarge,
                "request body is larger than this listener accepts",
            );
        }
        Err(e) => {
            tracing::debug!(error = %e, "downstream request body failed");
            return fail(ErrorKind::BadRequest, "request body could not be read");
        }
    };

    // Without a route timeout, waiting for the response head is bounded by the stream
    // idle timeout, so a hung upstream always ends in a 504.
    let idle = route
        .map(|r| r.idle_timeout)
        .unwrap_or(crate::config::DEFAULT_STREAM_IDLE_TIMEOUT);
    let timeout = route.and_then(|r| r.timeout).unwrap_or(idle);
    let per_try = route.and_then(|r| r.per_try_timeout);
    let cb = &cluster.config.circuit_breaker;
    let Some(request_slot) = cluster.runtime().take(Limit::Requests, cb) else {
        overflow(&shared.metrics, &cluster.config.name, Limit::Requests);
        return fail(
            ErrorKind::CircuitOpen,
            "the cluster has too many requests in flight",
        );
    };
    cluster.runtime().budget.request();
    let target = Attempt {
        cluster: &cluster,
        policy,
        per_try,
        h2: up_h2,
        upgrade,
        meshed: meshed.as_ref(),
        key: hash_key(&cluster.config, parts, conn.peer),
        app: inbound_app.map(|_| app_protocol),
    };
    let attempts = async { attempt_loop(conn, parts, &mut reqbody, &target, info).await };
    let result = tokio::time::timeout(timeout, attempts)
        .await
        .unwrap_or_else(|_| {
            Err((
                ErrorKind::Timeout,
                "the upstream did not answer within the route timeout".to_string(),
            ))
        });
    let (mut resp, mut hold) = match result {
        Ok(r) => r,
        Err((kind, detail)) => {
            let r = fail(kind, &detail);
            info.error = Some(detail);
            return r;
        }
    };
    hold.request = Some(request_slot);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(down) = downstream_upgrade else {
            // Nothing was offered to switch to: an app must not answer 101 here.
            return fail(
                ErrorKind::UpstreamProtocol,
                "the upstream switched protocols without an upgrade being forwarded",
            );
        };
        let up = hyper::upgrade::on(&mut resp);
        let shared = conn.listener.shared.clone();
        let (peer, tls, peer_id) = (conn.peer, conn.tls, conn.peer_id.clone());
        let port = inbound_app.map(|a| a.port()).unwrap_or(0);
        tokio::spawn(async move {
            // The tunnel keeps its connection slot and in-flight count while it is open.
            let _hold = hold;
            let tunnel = async {
                match tokio::try_join!(down, up) {
                    Ok((d, u)) => {
                        let mut d = hyper_util::rt::TokioIo::new(d);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            };
            let Some((changes, held)) = revocation else {
                return tunnel.await;
            };
            let caller = Caller {
                addr: peer,
                tls,
                id: peer_id.as_ref(),
                port,
            };
            tokio::select! {
                _ = tunnel => {}
                _ = authorize::revoked(&shared, changes, caller, Some(&held)) => {}
            }
        });
        let (p, _) = resp.into_parts();
        return (
            Response::from_parts(p, body::full(bytes::Bytes::new())),
            None,
        );
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    rparts.headers.remove(ORIG_PROTO);
    // The error counter is looked up only if the stream does break.
    let reset = body::ResetCount {
        metrics: shared.metrics.clone(),
        cluster: cluster.clone(),
    };
    (
        Response::from_parts(rparts, Observed::boxed(rbody, reset, idle, hold)),
        None,
    )
}

/// The `ring_hash` key of a request: its header, cookie or client address, as the
/// cluster says (`None` for other balancers, or when the header or cookie is missing).
fn hash_key(
    c: &crate::config::Cluster,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Option<u64> {
    use crate::config::{HashOn, Lb};
    if c.lb != Lb::RingHash {
        return None;
    }
    match &c.hash_on {
        HashOn::SourceIp => Some(crate::balance::hash_ip(peer.ip())),
        HashOn::Header(h) => parts
            .headers
            .get(h.as_str())
            .map(|v| crate::balance::hash_parts(&[v.as_bytes()])),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| crate::balance::hash_parts(&[v.as_bytes()])),
    }
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
