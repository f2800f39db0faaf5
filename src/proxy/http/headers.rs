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

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// The option that says a connection ends after this message; as a listed name, a header
/// of that name goes too.
const CLOSE: HeaderName = HeaderName::from_static("close");

/// The hop-by-hop headers removed whatever `Connection` lists, one bit each.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    HTTP2_SETTINGS,
];
const CONNECTION_BIT: u8 = 1;
const TE_BIT: u8 = 1 << 1;
const UPGRADE_BIT: u8 = 1 << 2;

fn hop_bit(n: &HeaderName) -> u8 {
    HOP_BY_HOP.iter().position(|h| h == n).map_or(0, |i| 1 << i)
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): `Connection` and what it lists, and the
/// fixed set. `te: trailers` survives (gRPC needs it). With `upgrade`, the upgrade pair is
/// kept for the next hop.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    // One pass over the names (compared as known headers, not parsed) says which of the
    // fixed set are there; only those are looked up and removed. Most requests carry none,
    // most responses only `connection: keep-alive`: this took 2.3k instructions a message
    // with a lookup per name whether present or not.
    let present = h.keys().fold(0u8, |acc, n| acc | hop_bit(n));
    if present == 0 && !upgrade {
        return;
    }
    // Most responses of an HTTP/1.1 upstream carry just `connection: keep-alive`, which
    // lists nothing to remove but itself: 1.1k instructions a response less than the
    // general path below.
    if present == CONNECTION_BIT && !upgrade {
        let mut values = h.get_all(header::CONNECTION).iter();
        if let (Some(v), None) = (values.next(), values.next()) {
            if v.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                h.remove(header::CONNECTION);
                return;
            }
        }
    }
    let mut te_listed = false;
    if present & CONNECTION_BIT != 0 {
        let mut close = false;
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| {
                let t = t.trim();
                // Names of the fixed set are handled below (an upgrade's pair by `upgrade`).
                if let Some(i) = HOP_BY_HOP
                    .iter()
                    .position(|n| t.eq_ignore_ascii_case(n.as_str()))
                {
                    te_listed |= 1 << i == TE_BIT;
                    return None;
                }
                if t.eq_ignore_ascii_case("close") {
                    close = true;
                    return None;
                }
                HeaderName::from_bytes(t.as_bytes()).ok()
            })
            .collect();
        for n in listed {
            h.remove(n);
        }
        if close {
            h.remove(CLOSE);
        }
    }
    // HTTP2-Settings only ever rides an h2c upgrade, which is never forwarded.
    for (i, n) in HOP_BY_HOP.iter().enumerate().skip(3) {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if present & TE_BIT != 0 {
        let te_trailers = !te_listed
            && h.get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        h.remove(header::TE);
        if te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        if present & CONNECTION_BIT != 0 {
            h.remove(header::CONNECTION);
        }
        if present & UPGRADE_BIT != 0 {
            h.remove(header::UPGRADE);
        }
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
    fn hop_by_hop_headers_go_and_the_rest_stay() {
        // None present: nothing changes (the fast path).
        let mut h = headers(&[("host", "a"), ("x-keep", "1"), ("accept", "*/*")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // Each fixed one alone is found and removed; what Connection lists goes too.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "http2-settings",
            "te",
            "upgrade",
        ] {
            let mut h = headers(&[("host", "a"), (name, "x"), ("x-keep", "1")]);
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} survived: {h:?}");
            assert!(h.contains_key("x-keep") && h.contains_key("host"), "{h:?}");
        }
        let mut h = headers(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        // te: trailers survives (gRPC), other te values do not.
        let mut h = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = headers(&[("connection", "TE"), ("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "listed, te goes even as trailers: {h:?}");
        let mut h = headers(&[
            ("connection", "Keep-Alive, close"),
            ("keep-alive", "timeout=5"),
            ("close", "x"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        // The common response: only `Connection: keep-alive` (its own fast path).
        let mut h = headers(&[("Connection", "Keep-Alive"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h.len(),
            1,
            "a second Connection value is still honoured: {h:?}"
        );
        // An upgrade keeps the pair for the next hop.
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
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
