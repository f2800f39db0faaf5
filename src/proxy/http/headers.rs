//! Header rules of the HTTP proxy: hop-by-hop removal (RFC 9110 7.6.1), Spoke's own
//! headers, and the responses the proxy makes itself (`x-spoke-error: <kind>` and a one-line
//! body, with the status each kind is answered with).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body;
use super::pool::Body;

pub const PEER_ID: HeaderName = HeaderName::from_static("x-spoke-peer-id");
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-spoke-orig-proto");
pub const ERROR: HeaderName = HeaderName::from_static("x-spoke-error");

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
