//! Header rules of the HTTP proxy: hop-by-hop removal (RFC 9110 7.6.1), Spoke's own
//! headers, and the responses the proxy makes itself (`x-spoke-error: <kind>` and a one-line
//! body, with the status each kind is answered with).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;

use super::body;
use super::pool::Body;
use crate::proxy::ErrorKind;

pub const PEER_ID: HeaderName = HeaderName::from_static("x-spoke-peer-id");
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-spoke-orig-proto");
pub const ERROR: HeaderName = HeaderName::from_static("x-spoke-error");

/// An error response the proxy makes itself: the kind's status, `x-spoke-error: <kind>`
/// and a one-line body.
pub fn error_response(kind: ErrorKind, detail: &str) -> Response<Body> {
    let mut r = Response::new(body::full(format!("{detail}\n")));
    *r.status_mut() = kind.status();
    let h = r.headers_mut();
    h.insert(ERROR, HeaderValue::from_static(kind.label()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
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
    // HTTP2-Settings only ever rides an h2c upgrade, which is never forwarded.
    for n in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "http2-settings",
    ] {
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

/// Whether a request asks for an upgrade this hop tunnels: `Connection: upgrade` and an
/// `Upgrade` protocol named in `allowed` (compared case-insensitively, without a
/// `/version`). Offered protocols that are not allowed are removed from `Upgrade`; with
/// none left, the request goes on as plain HTTP/1.1. `h2c` is never allowed: HTTP/2 in a
/// byte tunnel would escape routing, per-request policy and metrics.
pub fn negotiate_upgrade(h: &mut HeaderMap, allowed: &[String]) -> bool {
    let asked = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asked {
        return false;
    }
    let ok = |p: &str| {
        let name = p.split('/').next().unwrap_or("").trim();
        !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    };
    let offered = || {
        h.get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    };
    let (total, good) = offered().fold((0, 0), |(t, g), p| (t + 1, g + usize::from(ok(p))));
    if good == 0 {
        return false;
    }
    if good < total {
        let kept = offered().filter(|p| ok(p)).collect::<Vec<_>>().join(", ");
        match HeaderValue::from_str(&kept) {
            Ok(v) => {
                h.insert(header::UPGRADE, v);
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        h
    }

    #[test]
    fn only_allowed_upgrades_survive() {
        let ws = vec!["websocket".to_string()];
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]);
        assert!(negotiate_upgrade(&mut h, &ws));
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert!(!negotiate_upgrade(&mut h, &ws));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        // h2c is refused even when listed; other offers are trimmed to the allowed ones.
        let both = vec!["h2c".to_string(), "websocket".to_string()];
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]);
        assert!(negotiate_upgrade(&mut h, &both));
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        // An Upgrade header without the connection option is not an upgrade request.
        let mut h = headers(&[("upgrade", "websocket")]);
        assert!(!negotiate_upgrade(&mut h, &ws));
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "foo/2")]);
        assert!(!negotiate_upgrade(&mut h, &ws));
        assert!(negotiate_upgrade(&mut h, &["foo".to_string()]));
    }
}
