//! The two small HTTP servers beside the proxy:
//! - stats (`0.0.0.0:15020`, read-only): `/metrics`, `/ready`, `/live`, for Prometheus and
//!   kubelet probes;
//! - admin (`127.0.0.1:15000`): `/config_dump`, `/clusters`, `/certs`, `/server_info`,
//!   `/listeners` (in `info`), and the mutating `POST /logging` and `POST /drain`, which
//!   answer 403 to any peer that is not on loopback.

mod info;

pub(crate) mod clusters;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain;
use crate::proxy::Shared;
use crate::telemetry::LogHandle;

/// What the admin and stats handlers need.
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub drain: drain::Trigger,
    pub log: Option<LogHandle>,
    /// When the proxy started (`/server_info` uptime).
    pub started: std::time::Instant,
    /// Each listener's config and bound address (`/listeners`).
    pub listeners: Vec<(crate::config::Listener, SocketAddr)>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// Serves HTTP/1.1 on `listener` with `handler` until the task is dropped.
async fn serve<F>(listener: TcpListener, state: Arc<AdminState>, handler: F)
where
    F: Fn(&AdminState, &Request<Incoming>, SocketAddr) -> Resp + Copy + Send + Sync + 'static,
{
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = handler(&state, &req, peer);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, peer = %peer, "admin connection ended with error");
            }
        });
    }
}

/// Runs the read-only stats server.
pub async fn serve_stats(listener: TcpListener, state: Arc<AdminState>) {
    serve(listener, state, stats_handler).await
}

/// Runs the admin server.
pub async fn serve_admin(listener: TcpListener, state: Arc<AdminState>) {
    serve(listener, state, admin_handler).await
}

fn ready(state: &AdminState) -> Resp {
    if state.drain.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if state.shared.readiness.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", state.shared.readiness.reason()),
        )
    }
}

fn metrics(state: &AdminState) -> Resp {
    let mut body = state.shared.metrics.render();
    clusters::render_endpoints(&state.shared.snapshot.load(), &mut body);
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn stats_handler(state: &AdminState, req: &Request<Incoming>, _peer: SocketAddr) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    match req.uri().path() {
        "/metrics" => metrics(state),
        "/ready" => ready(state),
        "/live" => text(StatusCode::OK, "live\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready, /live\n",
        ),
    }
}

/// Whether `peer` may use mutating endpoints: loopback only, IPv4-mapped IPv6 included.
pub fn is_local(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn admin_handler(state: &AdminState, req: &Request<Incoming>, peer: SocketAddr) -> Resp {
    let path = req.uri().path();
    let mutating = matches!(path, "/logging" | "/drain");
    if mutating {
        if !is_local(&peer) {
            tracing::warn!(peer = %peer, path, "admin: mutating request from non-loopback peer refused");
            return text(StatusCode::FORBIDDEN, "forbidden: loopback only\n");
        }
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    match path {
        "/" => text(
            StatusCode::OK,
            "spoke admin\n  GET  /config_dump[?format=yaml]\n  GET  /clusters\n  GET  /certs\n  GET  /server_info\n  GET  /listeners\n  GET  /metrics\n  GET  /ready\n  POST /logging?level=<filter>\n  POST /drain\n",
        ),
        "/config_dump" if req.uri().query() == Some("format=yaml") => {
            let mut r = text(StatusCode::OK, info::config_yaml(state));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/yaml"),
            );
            r
        }
        "/config_dump" => pretty(&info::config_dump(state)),
        "/certs" => pretty(&info::certs(state)),
        "/server_info" => pretty(&info::server_info(state)),
        "/listeners" => pretty(&info::listeners(state)),
        "/clusters" => clusters(state),
        "/metrics" => metrics(state),
        "/ready" => ready(state),
        "/live" => text(StatusCode::OK, "live\n"),
        "/logging" => logging(state, req),
        "/drain" => {
            tracing::info!(peer = %peer, "drain requested via admin");
            state.drain.start();
            text(StatusCode::OK, "draining\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found: GET / lists the endpoints\n"),
    }
}

fn pretty(v: &serde_json::Value) -> Resp {
    json(serde_json::to_string_pretty(v).unwrap_or_default() + "\n")
}

fn clusters(state: &AdminState) -> Resp {
    let snap = state.shared.snapshot.load_full();
    json(serde_json::to_string_pretty(&clusters::document(&snap)).unwrap_or_default() + "\n")
}

fn logging(state: &AdminState, req: &Request<Incoming>) -> Resp {
    let level = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "level")
            .map(|(_, v)| percent_decode(v))
    });
    let Some(level) = level else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: POST /logging?level=debug\n",
        );
    };
    let Some(log) = &state.log else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "logging is not managed by this process\n",
        );
    };
    match log.set_filter(&level) {
        Ok(()) => {
            tracing::info!(level = %level, "log level changed");
            text(StatusCode::OK, format!("log level: {level}\n"))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("bad level: {e}\n")),
    }
}

/// Decodes `%XX` escapes and `+` in a query value; bad escapes are kept as written.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_local() {
        for (a, want) in [
            ("127.0.0.1:1", true),
            ("127.8.9.1:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.1:1", false),
            ("[::ffff:10.0.0.1]:1", false),
            ("[fe80::1]:1", false),
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(is_local(&addr), want, "{a}");
        }
    }

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("info%2Cspoke%3Ddebug"), "info,spoke=debug");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
