//! Picking a route for an HTTP request: `routes:` in order, first match wins (host with or
//! without port, exact or prefix path, method, headers), then the listener's own cluster as
//! the default route. A weighted `split` picks its cluster per request.

use http::request::Parts;

use crate::config::{HeaderRule, PathMatch, Route, RouteAction};

/// Where one request goes.
pub struct Decision<'a> {
    pub cluster: &'a str,
    /// The matched route (timeouts, retry policy); `None` for the listener's default.
    pub route: Option<&'a Route>,
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the Host header.
pub fn authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn host_matches(want: &str, got: &str) -> bool {
    let got = got.to_ascii_lowercase();
    // A route host without a port matches the host on any port.
    let got_host = if want.contains(':') {
        got.as_str()
    } else {
        strip_port(&got)
    };
    match want.strip_prefix("*.") {
        Some(suffix) => {
            got_host.len() > suffix.len() + 1
                && got_host.ends_with(suffix)
                && got_host.as_bytes()[got_host.len() - suffix.len() - 1] == b'.'
        }
        None => got_host == want,
    }
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map(|i| &h[..=i]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn matches(route: &Route, parts: &Parts) -> bool {
    let m = &route.matches;
    if let Some(want) = &m.host {
        match authority(parts) {
            Some(got) if host_matches(want, got) => {}
            _ => return false,
        }
    }
    if let Some(p) = &m.path {
        let path = parts.uri.path();
        let ok = match p {
            PathMatch::Exact(x) => path == x,
            PathMatch::Prefix(x) => {
                path.starts_with(x.as_str())
                    && (x.ends_with('/')
                        || path.len() == x.len()
                        || path.as_bytes()[x.len()] == b'/')
            }
        };
        if !ok {
            return false;
        }
    }
    if let Some(method) = &m.method {
        if parts.method.as_str() != method {
            return false;
        }
    }
    m.headers.iter().all(|h| {
        let got = parts.headers.get_all(h.name.as_str());
        match &h.rule {
            HeaderRule::Present(want) => got.iter().next().is_some() == *want,
            HeaderRule::Exact(x) => got.iter().any(|v| v.as_bytes() == x.as_bytes()),
            HeaderRule::Prefix(x) => got.iter().any(|v| v.as_bytes().starts_with(x.as_bytes())),
        }
    })
}

fn pick_split(split: &[(String, u32)]) -> Option<&str> {
    let total: u64 = split.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = fastrand::u64(0..total);
    for (c, w) in split {
        if x < u64::from(*w) {
            return Some(c);
        }
        x -= u64::from(*w);
    }
    None
}

/// Routes a request; `None` means no route (404).
pub fn route<'a>(
    routes: &'a [Route],
    default: Option<&'a str>,
    parts: &Parts,
) -> Option<Decision<'a>> {
    for r in routes {
        if matches(r, parts) {
            let cluster = match &r.action {
                RouteAction::Cluster(c) => c.as_str(),
                RouteAction::Split(s) => pick_split(s)?,
            };
            return Some(Decision {
                cluster,
                route: Some(r),
            });
        }
    }
    default.map(|cluster| Decision {
        cluster,
        route: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, host: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn routes(yaml: &str) -> Vec<Route> {
        let cfg = crate::config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
        cfg.routes
    }

    #[test]
    fn first_match_wins_with_host_path_method_headers() {
        let r = routes(
            r#"
clusters: [ { name: a, endpoints: [] }, { name: b, endpoints: [] }, { name: c, endpoints: [] }, { name: d, endpoints: [] } ]
routes:
  - { match: { host: api.example, path_prefix: /v1, method: POST }, cluster: a }
  - { match: { path: /exact }, cluster: b }
  - { match: { headers: [ { name: x-canary, exact: "yes" } ] }, cluster: c }
  - { match: { host: "*.example", path_prefix: / }, cluster: d }
"#,
        );
        let go = |p: Parts| route(&r, Some("default"), &p).map(|d| d.cluster.to_string());
        assert_eq!(
            go(parts("POST", "/v1/x", Some("api.example:8080"), &[])),
            Some("a".into())
        );
        assert_eq!(
            go(parts("GET", "/v1/x", Some("api.example"), &[])),
            Some("d".into())
        );
        assert_eq!(
            go(parts("POST", "/v10", Some("api.example"), &[])),
            Some("d".into())
        );
        assert_eq!(go(parts("GET", "/exact", Some("x"), &[])), Some("b".into()));
        assert_eq!(
            go(parts("GET", "/exact/more", Some("x"), &[])),
            Some("default".into())
        );
        assert_eq!(
            go(parts("GET", "/", Some("x"), &[("x-canary", "yes")])),
            Some("c".into())
        );
        assert_eq!(
            go(parts("GET", "http://web.example/z", None, &[])),
            Some("d".into())
        );
        assert_eq!(
            go(parts("GET", "/", Some("example"), &[])),
            Some("default".into())
        );
        assert!(route(&r, None, &parts("GET", "/", Some("x"), &[])).is_none());
    }

    #[test]
    fn split_follows_weights() {
        let r = routes(
            r#"
clusters: [ { name: a, endpoints: [] }, { name: b, endpoints: [] } ]
routes: [ { match: { path_prefix: / }, split: [ { cluster: a, weight: 90 }, { cluster: b, weight: 10 } ] } ]
"#,
        );
        fastrand::seed(7);
        let p = parts("GET", "/", Some("x"), &[]);
        let b = (0..10_000)
            .filter(|_| route(&r, None, &p).map(|d| d.cluster) == Some("b"))
            .count();
        assert!((800..1200).contains(&b), "{b}");
    }
}
